/* fl-server --http through the real binaries: a federation of fl-server and fl-client on
 * loopback, watched over HTTP.
 *
 * - /metrics during a run: promtool (Debian's prometheus) accepts the exposition, and
 *   the counters say what the log says; /status holds the configuration, the round, the
 *   clients with their state and progress, and the history; "/" is the HTML page;
 * - client progress: each local epoch moves the progress the heartbeats carry, and the
 *   server sees every step (its debug log) and shows it in /status;
 * - a real Prometheus scrapes the server and its query API gives the round count, and
 *   headless Chromium renders the page (a chart, a row per client; a screenshot is kept
 *   in build/), while the clients are stopped between rounds so what they see is known;
 * - bad requests (unknown path, POST, a body, oversized headers, a slow request,
 *   connections beyond the limit) get clean answers or are dropped, and the federation
 *   finishes unaffected. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert(fd >= 0);
  struct timeval tv = {(time_t)(30 * fl_test_time_scale()), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect to %d: %s", port, strerror(errno));
  return fd;
}

static void send_all(int fd, const char *buf, size_t len) {
  while (len) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n <= 0) return; /* the server may close on us mid-request (too large) */
    buf += n;
    len -= (size_t)n;
  }
}

/* Reads to EOF: the whole answer (malloc'd).  NULL when the server closed without one. */
static char *read_all(int fd) {
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (len + 1 >= cap) buf = realloc(buf, cap *= 2);
    ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
    if (n <= 0) break;
    len += (size_t)n;
  }
  buf[len] = 0;
  if (!len) {
    free(buf);
    return NULL;
  }
  return buf;
}

/* Sends a raw request; the answer's status code (0: closed without an answer), its
 * body in *body (malloc'd, or NULL). */
static int raw(int port, const char *req, size_t len, char **body) {
  int fd = connect_to(port);
  send_all(fd, req, len);
  char *all = read_all(fd);
  close(fd);
  if (body) *body = NULL;
  if (!all) return 0;
  int code = 0;
  sscanf(all, "HTTP/1.%*d %d", &code);
  char *b = strstr(all, "\r\n\r\n");
  if (body && b) *body = strdup(b + 4);
  free(all);
  return code;
}

static int get(int port, const char *path, char **body) {
  char req[512];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
  return raw(port, req, (size_t)n, body);
}

/* The value of an unlabelled metric in an exposition; NAN if absent. */
static double metric(const char *text, const char *name) {
  size_t n = strlen(name);
  for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
    if (strncmp(p, name, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
  return NAN;
}

static int have(const char *cmd) {
  char c[256];
  snprintf(c, sizeof c, "command -v %s >/dev/null 2>&1", cmd);
  return fl_test_system(c) == 0;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert(f, "%s", path);
  fputs(text, f);
  fclose(f);
}

/* A federation of three clients of one process, 2nn, with the status page on a port of
 * the test's own; epochs sets how many steps each task's progress takes. */
static pid_t server(fl_test_fed *f, int http, const char *rounds, const char *epochs, int tight) {
  char h[32];
  snprintf(h, sizeof h, "127.0.0.1:%d", http);
  /* tight: an HTTP connection may idle 1 s, 8 at once (2 per address) */
  return fl_test_fed_server(f, "server.log", "--model", "2nn", "--rounds", rounds, "--clients-per-round",
                            "3", "--min-clients", "3", "--epochs", epochs, "--seed", "5",
                            "--idle-timeout", "600", "--log-level", "debug", "--http", h,
                            tight ? "--http-timeout" : NULL, "1", "--http-connections", "8", NULL);
}

static pid_t clients(fl_test_fed *f) {
  return fl_test_fed_clients(f, "clients.log", "--clients", "3", "--data", "fashion-mnist:train",
                             "--max-samples", "1500", "--partition", "iid", "--seed", "3",
                             "--heartbeat", "0.02", "--idle-timeout", "60", NULL);
}

Test(status, metrics_status_page_and_progress, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  int http = fl_test_free_port();
  pid_t s = server(&f, http, "4", "5", 0);
  pid_t c = clients(&f);
  cr_assert(fl_test_wait_for_while(f.log, "status page on http://127.0.0.1:", s, 30),
            "no status page (%s)", f.dir);

  /* Progress: five epochs, five steps a task, each seen by the server. */
  cr_assert(fl_test_wait_for_while(f.log, "20% of its task done", s, 120),
            "no progress reached the server (%s)", f.dir);
  cr_assert(fl_test_wait_for_while(f.log, "60% of its task done", s, 120));
  cr_assert(fl_test_wait_for_while(f.log, "round 2/4 done", s, 120), "(%s)", f.dir);
  /* The clients stop, so the run cannot end while the documents are read. */
  kill(c, SIGSTOP);
  cr_assert(fl_test_wait_stopped(c, 30));

  /* /metrics: what the log said, in a form promtool accepts. */
  char *m = NULL;
  cr_assert_eq(get(http, "/metrics", &m), 200);
  cr_assert(m);
  cr_assert_geq(metric(m, "fl_rounds_completed_total"), 2, "%s", m);
  cr_assert_eq(metric(m, "fl_rounds_planned"), 4);
  cr_assert_eq(metric(m, "fl_clients_connected"), 3);
  cr_assert_geq(metric(m, "fl_updates_accepted_total"), 6);
  cr_assert_gt(metric(m, "fl_received_bytes_total"), 0);
  cr_assert_gt(metric(m, "fl_resident_memory_bytes"), 0);
  cr_assert_geq(metric(m, "fl_round_duration_seconds_count"), 2);
  cr_assert(strstr(m, "fl_round_duration_seconds_bucket{le=\"+Inf\"}"));
  cr_assert(strstr(m, "fl_updates_refused_total{reason=\"stale\"} 0"));
  cr_assert(strstr(m, "fl_io_thread_connections{thread=\"0\"}"));
  cr_assert(strstr(m, "fl_io_thread_received_bytes_total{thread=\"0\"}"));
  cr_assert(strstr(m, "fl_io_thread_sent_bytes_total{thread=\"0\"}"));
  cr_assert(isfinite(metric(m, "fl_train_loss")));
  char mpath[700], cmd[1600];
  fl_test_fed_path(&f, "metrics.txt", mpath, sizeof mpath);
  write_file(mpath, m);
  free(m);
  if (have("promtool")) {
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s > %s.check 2>&1", mpath, mpath);
    cr_assert_eq(fl_test_system(cmd), 0, "promtool check metrics refused %s (see %s.check)", mpath, mpath);
  } else {
    cr_log_warn("promtool is not installed (Debian: prometheus): the exposition was not checked by it");
  }

  /* /status: configuration, round, clients, history. */
  char *j = NULL;
  cr_assert_eq(get(http, "/status", &j), 200);
  cr_assert(j);
  cr_assert(strstr(j, "\"config\":{\"listen\":\"127.0.0.1:"), "%s", j);
  cr_assert(strstr(j, "\"strategy\":\"fedavg"), "%s", j);
  cr_assert_eq(fl_test_json_num(j, "rounds"), 4, "%s", j);
  cr_assert_geq(fl_test_json_num(j, "rounds_completed"), 2);
  cr_assert_eq(fl_test_json_num(j, "clients_connected"), 3);
  cr_assert(strstr(j, "\"history\":[{\"round\":1,"), "%s", j);
  cr_assert(strstr(j, "\"id\":\"client-0001\""), "%s", j);
  cr_assert(strstr(j, "\"address\":\"127.0.0.1:"));
  cr_assert(strstr(j, "\"state\":"));
  cr_assert(strstr(j, "\"last_heard_seconds_ago\":"));
  cr_assert(strstr(j, "\"rounds\":"));
  cr_assert(strstr(j, "\"last_examples\":"));
  cr_assert(strstr(j, "\"last_loss\":"));
  cr_assert(strstr(j, "\"progress\":"));
  cr_assert(strstr(j, "\"phase\":"));
  free(j);

  /* "/": the page, whole, with nothing fetched from elsewhere; HEAD has no body. */
  char *page = NULL;
  cr_assert_eq(get(http, "/", &page), 200);
  cr_assert(page && strstr(page, "<svg id=\"chart\"") && strstr(page, "fetch(\"/status\""));
  cr_assert_null(strstr(page, "src=\"http"));
  cr_assert_null(strstr(page, "href=\"http"));
  free(page);
  const char head[] = "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  char *hb = NULL;
  cr_assert_eq(raw(http, head, sizeof head - 1, &hb), 200);
  cr_assert(!hb || !*hb, "HEAD answered with a body");
  free(hb);

  kill(c, SIGCONT);
  cr_assert_eq(fl_test_wait(s, 240), 0, "server failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  cr_assert_eq(fl_test_metrics_rounds(f.metrics), 4);
  /* Participants in the metrics line: who was selected, who contributed, with what. */
  char *line = fl_test_metrics_line(f.metrics, 4);
  cr_assert(line && strstr(line, "\"selected\":[\"client-000"), "%s", line);
  cr_assert(strstr(line, "\"contributors\":[{\"client\":\"client-000"));
  cr_assert(strstr(line, "\"examples\":500"), "%s", line);
  cr_assert(strstr(line, "\"participants\":{\"selected\":3,\"selected_listed\":3,\"contributors\":3"));
  free(line);

  /* fl-plot draws the run, twice overlaid, and says what is wrong with a file that is no
   * metrics file. */
  if (have("gnuplot")) {
    char png[700], cmd[4096], bad[700];
    fl_test_fed_path(&f, "plot.png", png, sizeof png);
    fl_test_fed_path(&f, "clients.log", bad, sizeof bad);
    char *plot = fl_test_bin("fl-plot");
    snprintf(cmd, sizeof cmd, "%s -o %s -t 'two runs' a=%s b=%s > %s.out 2>&1", plot, png, f.metrics, f.metrics, png);
    cr_assert_eq(fl_test_system(cmd), 0, "fl-plot failed (%s.out)", png);
    char *img = fl_test_read_file(png, NULL);
    cr_assert(img && memcmp(img, "\x89PNG", 4) == 0, "%s is not a PNG", png);
    free(img);
    snprintf(cmd, sizeof cmd, "%s -o %s.bad.png %s > %s.bad 2>&1", plot, png, bad, png);
    cr_assert_neq(fl_test_system(cmd), 0);
    char badout[720];
    snprintf(badout, sizeof badout, "%s.bad", png);
    cr_assert(fl_test_count(badout, "holds no rounds"), "(%s)", badout);
    free(plot);
  } else {
    cr_log_warn("gnuplot is not installed (Debian: gnuplot-nox): fl-plot was not tried");
  }
  cr_assert(fl_test_sanitizer_clean(f.log));
  fl_test_fed_free(&f);
}

/* Waits (with a deadline) until the Prometheus query's first value is want. */
static int prometheus_says(int port, const char *query, double want, pid_t prom) {
  char cmd[1024];
  double until = 120 * fl_test_time_scale();
  struct timespec t0, now, pause = {0, 200 * 1000000L};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do {
    snprintf(cmd, sizeof cmd, "curl -sf 'http://127.0.0.1:%d/api/v1/query?query=%s' | "
             "grep -q '\"value\":\\[[0-9.]*,\"%g\"\\]'", port, query, want);
    if (fl_test_system(cmd) == 0) return 1;
    if (!fl_test_running(prom)) return 0;
    nanosleep(&pause, NULL); /* the next scrape */
    clock_gettime(CLOCK_MONOTONIC, &now);
  } while ((double)(now.tv_sec - t0.tv_sec) < until);
  return 0;
}

Test(status, prometheus_scrapes_and_chromium_renders, .timeout = 400) {
  int prom_ok = have("prometheus") && have("curl");
  const char *chromium = have("chromium") ? "chromium" : have("chromium-browser") ? "chromium-browser" : NULL;
  if (!prom_ok && !chromium)
    cr_skip_test("neither prometheus (and curl) nor chromium is installed (Debian: prometheus, "
                 "chromium; make deps installs them)");
  fl_test_fed f;
  fl_test_fed_init(&f);
  int http = fl_test_free_port();
  pid_t s = server(&f, http, "4", "1", 0);
  pid_t c = clients(&f);
  /* After round 2 the clients stop: the server waits in round 3 with 2 rounds done and
   * 3 clients connected, which is what Prometheus and the page must show. */
  cr_assert(fl_test_wait_for_while(f.log, "round 2/4 done", s, 180), "(%s)", f.dir);
  kill(c, SIGSTOP);
  cr_assert(fl_test_wait_stopped(c, 30));

  if (prom_ok) {
    int pport = fl_test_free_port();
    char cfg[700], data[700], plog[32] = "prometheus.log";
    fl_test_fed_path(&f, "prometheus.yml", cfg, sizeof cfg);
    fl_test_fed_path(&f, "prometheus-data", data, sizeof data);
    char yml[512];
    snprintf(yml, sizeof yml, "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\n"
             "scrape_configs:\n  - job_name: fl\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n", http);
    write_file(cfg, yml);
    char *prom = strdup("/usr/bin/prometheus");
    if (fl_test_system("test -x /usr/bin/prometheus") != 0) {
      free(prom);
      prom = strdup("prometheus");
    }
    char a1[800], a2[800], a3[64];
    snprintf(a1, sizeof a1, "--config.file=%s", cfg);
    snprintf(a2, sizeof a2, "--storage.tsdb.path=%s", data);
    snprintf(a3, sizeof a3, "--web.listen-address=127.0.0.1:%d", pport);
    char lp[700];
    fl_test_fed_path(&f, plog, lp, sizeof lp);
    char *argv[] = {prom, a1, a2, a3, NULL};
    pid_t p = fl_test_spawn(lp, argv);
    int ok = prometheus_says(pport, "fl_rounds_completed_total", 2, p) &&
             prometheus_says(pport, "fl_clients_connected", 3, p) &&
             prometheus_says(pport, "sum(fl_round_phase)", 1, p);
    kill(p, SIGTERM);
    fl_test_wait(p, 60);
    free(prom);
    cr_assert(ok, "Prometheus never reported 2 rounds and 3 clients (log: %s)", lp);
  } else {
    cr_log_warn("prometheus or curl is not installed: no Prometheus scrape was tried");
  }

  if (chromium) {
    char dom[700], shot[700], cmd[3000];
    fl_test_fed_path(&f, "dom.html", dom, sizeof dom);
    char *b = fl_test_bin("status-page.png");
    snprintf(shot, sizeof shot, "%s", b);
    free(b);
    /* --virtual-time-budget lets the page's fetch of /status and its drawing finish
     * before the DOM is dumped. */
    const char *flags = "--headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                        "--no-first-run --disable-extensions --virtual-time-budget=10000 "
                        "--window-size=1000,1100";
    snprintf(cmd, sizeof cmd, "cd %s && HOME=%s %s %s --dump-dom http://127.0.0.1:%d/ > %s 2>chromium.log",
             f.dir, f.dir, chromium, flags, http, dom);
    if (fl_test_system(cmd) != 0) {
      char clog[700];
      fl_test_fed_path(&f, "chromium.log", clog, sizeof clog);
      char *t = fl_test_read_file(clog, NULL);
      size_t tl = t ? strlen(t) : 0;
      cr_assert_fail("chromium failed: %s", t ? t + (tl > 1500 ? tl - 1500 : 0) : "(no log)");
    }
    snprintf(cmd, sizeof cmd, "cd %s && HOME=%s %s %s --screenshot=%s http://127.0.0.1:%d/ 2>>chromium.log",
             f.dir, f.dir, chromium, flags, shot, http);
    cr_assert_eq(fl_test_system(cmd), 0, "chromium's screenshot failed (%s/chromium.log)", f.dir);
    char *d = fl_test_read_file(dom, NULL);
    cr_assert(d, "%s", dom);
    cr_assert(strstr(d, "data-loaded=\"2\""), "the page did not load /status (%s)", dom);
    cr_assert_eq(fl_test_count(dom, "<tr class=\"client\">"), 3, "a row per client (%s)", dom);
    cr_assert(strstr(d, "class=\"acc\" data-points=\"2\"") || strstr(d, "data-points=\"2\""),
              "the chart has no accuracy line of 2 rounds (%s)", dom);
    cr_assert(strstr(d, "<path d=\"M"), "no chart (%s)", dom);
    free(d);
    FILE *png = fopen(shot, "rb");
    cr_assert(png, "no screenshot at %s", shot);
    fclose(png);
  } else {
    cr_log_warn("chromium is not installed: the page was not rendered");
  }

  kill(c, SIGCONT);
  cr_assert_eq(fl_test_wait(s, 240), 0, "server failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  cr_assert_eq(fl_test_metrics_rounds(f.metrics), 4);
  fl_test_fed_free(&f);
}

Test(status, bad_requests_leave_the_federation_alone, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  int http = fl_test_free_port();
  /* one second of idle per HTTP connection; 8 connections, 2 per address */
  pid_t s = server(&f, http, "4", "1", 1);
  cr_assert(fl_test_wait_for_while(f.log, "status page on http://127.0.0.1:", s, 30), "(%s)",
            f.dir);
  /* The bad requests come while the server waits for its clients (none started yet, so
   * the run cannot end before the checks do); the clients start while idle connections
   * hold every HTTP slot, and the rounds must go on. */

  /* A second server cannot take the same HTTP port, nor a malformed address: it says so. */
  fl_test_fed g;
  fl_test_fed_init(&g);
  char h[32];
  snprintf(h, sizeof h, "127.0.0.1:%d", http);
  pid_t s2 = fl_test_fed_server(&g, "server.log", "--http", h, NULL);
  cr_assert_eq(fl_test_wait(s2, 30), 1);
  cr_assert(fl_test_count(g.log, "--http: cannot listen on 127.0.0.1 port "), "(%s)", g.log);
  s2 = fl_test_fed_server(&g, "server.log", "--http", "no:port:here", NULL);
  int rc2 = fl_test_wait(s2, 30);
  cr_assert(rc2 > 0 && rc2 < 128, "exit %d", rc2);
  cr_assert(fl_test_count(g.log, "--http: expected HOST:PORT or PORT"), "(%s)", g.log);
  fl_test_fed_free(&g);

  char *body = NULL;
  cr_assert_eq(get(http, "/nothing-here", &body), 404);
  free(body);
  cr_assert_eq(get(http, "/metrics/../etc/passwd", NULL), 404);
  const char post[] = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
  cr_assert_eq(raw(http, post, sizeof post - 1, NULL), 405);
  const char put[] = "DELETE /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  cr_assert_eq(raw(http, put, sizeof put - 1, NULL), 405);
  const char body_get[] = "GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd";
  cr_assert_eq(raw(http, body_get, sizeof body_get - 1, NULL), 413);
  const char chunked[] = "GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  cr_assert_eq(raw(http, chunked, sizeof chunked - 1, NULL), 413);
  char longurl[40100];
  int ln = snprintf(longurl, 64, "GET /");
  memset(longurl + ln, 'a', 40000);
  ln += 40000;
  ln += snprintf(longurl + ln, 64, " HTTP/1.1\r\nHost: x\r\n\r\n");
  int lc = raw(http, longurl, (size_t)ln, NULL);
  cr_assert(lc == 414 || lc == 431 || lc == 0, "a 40 KB path got %d", lc);
  const char junk[] = "\x01\x02 not http at all\r\n\r\n";
  int jc = raw(http, junk, sizeof junk - 1, NULL);
  cr_assert(jc == 0 || (jc >= 400 && jc < 500), "junk got %d", jc);

  /* 64 KiB of headers: 431, or the connection dropped. */
  size_t big = 64 * 1024;
  char *huge = malloc(big + 256);
  int n = snprintf(huge, 256, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
  memset(huge + n, 'a', big);
  memcpy(huge + n + big, "\r\n\r\n", 5);
  int hc = raw(http, huge, (size_t)n + big + 4, NULL);
  free(huge);
  cr_assert(hc == 0 || hc == 431 || hc == 413 || hc == 400, "oversized headers got %d", hc);

  /* A slow request is dropped after --http-timeout: the server closes it. */
  int slow = connect_to(http);
  send_all(slow, "GET /metr", 9);
  char tmp[256];
  ssize_t got = recv(slow, tmp, sizeof tmp, 0); /* EOF (or an error answer) when dropped */
  cr_assert(got >= 0, "the slow request was not dropped: %s", strerror(errno));
  close(slow);

  /* More idle connections than the limit: the rest are refused, the rounds go on. */
  int idle[12];
  for (int i = 0; i < 12; i++) idle[i] = connect_to(http);
  pid_t c = clients(&f);
  cr_assert(fl_test_wait_for_while(f.log, "round 2/4 done", s, 180), "the rounds stopped (%s)",
            f.dir);
  for (int i = 0; i < 12; i++) close(idle[i]);

  cr_assert_eq(fl_test_wait(s, 240), 0, "server failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  cr_assert_eq(fl_test_metrics_rounds(f.metrics), 4);
  cr_assert_eq(fl_test_count(f.log, "ERROR"), 0);
  cr_assert(fl_test_sanitizer_clean(f.log));
  fl_test_fed_free(&f);
}

/* Connections to the federation's port that are not TLS fail their handshake; the log
 * names at most 10 of them in 10 s (hostile::failed_handshakes_do_not_flood_the_log), and
 * /metrics counts every one: 25 here, polled until the server's I/O thread has closed the
 * last (never more).  Then the federation runs its round. */
Test(status, failed_handshakes_are_counted, .timeout = 300) {
  enum { JUNK = 25 };
  fl_test_fed f;
  fl_test_fed_init(&f);
  int http = fl_test_free_port();
  pid_t s = server(&f, http, "1", "1", 0);
  cr_assert(fl_test_wait_for_while(f.log, "status page on http://127.0.0.1:", s, 30), "(%s)", f.dir);
  const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < JUNK; i++) raw(f.port, junk, sizeof junk - 1, NULL);
  double n = 0;
  for (int tries = 0; tries < 600 * fl_test_time_scale(); tries++) {
    char *body = NULL;
    cr_assert_eq(get(http, "/metrics", &body), 200);
    n = metric(body, "fl_handshakes_failed_total");
    free(body);
    cr_assert(n <= JUNK, "%g failed handshakes counted for %d", n, JUNK);
    if (n == JUNK) break;
    usleep(100 * 1000); /* polling for the count: the closes are the I/O thread's */
  }
  cr_assert_eq(n, JUNK, "%g failed handshakes counted for %d", n, JUNK);
  cr_assert_geq(fl_test_count(f.log, "handshake failed"), 1, "(%s)", f.log);
  pid_t c = clients(&f);
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (%s)", f.log);
  cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (%s)", f.dir);
  fl_test_fed_free(&f);
}
