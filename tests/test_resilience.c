/* Crashes, restarts, churn and stalled peers, with the real binaries over real TLS.
 *
 * - fl-server killed with SIGKILL at random moments, at least five times, restarted with
 *   --resume each time: every round is completed exactly once and the final model matches
 *   an uninterrupted run with the same seeds;
 * - SIGTERM: the server stops cleanly, clients wait, a restarted server continues;
 * - churn: six of twenty clients killed mid-run and restarted later;
 * - a client that never answers and one that stalls inside a frame are dropped while the
 *   round goes on with the others. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "conn.h"
#include "log.h"
#include "modelfile.h"
#include "msg.h"
#include "testutil.h"

typedef struct setup {
  char *dir;
  char ca[512], cert[512], key[512], listen[64], addr[64];
  char *server, *client;
} setup;

static void setup_init(setup *s) {
  s->dir = fl_test_tmpdir();
  const char *certs = fl_test_certs_dir();
  snprintf(s->ca, sizeof s->ca, "%s/ca.crt", certs);
  snprintf(s->cert, sizeof s->cert, "%s/server.crt", certs);
  snprintf(s->key, sizeof s->key, "%s/server.key", certs);
  int port = fl_test_free_port();
  snprintf(s->listen, sizeof s->listen, "127.0.0.1:%d", port);
  snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", port);
  s->server = fl_test_bin("fl-server");
  s->client = fl_test_bin("fl-client");
}

static void setup_free(setup *s) {
  free(s->server);
  free(s->client);
  free(s->dir);
}

/* A server of the run `tag` (its model and metrics files), logging to server-LOG.log. */
static pid_t start_server(setup *s, const char *tag, const char *log_tag, const char *rounds,
                          int resume) {
  char log[600], out[600], metrics[600];
  snprintf(log, sizeof log, "%s/server-%s.log", s->dir, log_tag);
  snprintf(out, sizeof out, "%s/model-%s.bin", s->dir, tag);
  snprintf(metrics, sizeof metrics, "%s/metrics-%s.jsonl", s->dir, tag);
  char *argv[40] = {s->server, "--listen", s->listen, "--model", "2nn", "--rounds",
                    (char *)rounds, "--clients-per-round", "4", "--min-clients", "4",
                    "--seed", "3", "--lr", "0.05", "--batch-size", "20", "--epochs", "2", "--out", out,
                    "--metrics", metrics, "--ca", s->ca, "--cert", s->cert, "--key", s->key,
                    "--idle-timeout", "5", "--heartbeat", "1"};
  int n = 0;
  while (argv[n]) n++;
  if (resume) argv[n++] = "--resume";
  argv[n] = NULL;
  return fl_test_spawn(log, argv);
}

static pid_t start_clients(setup *s, const char *tag, const char *n, const char *first) {
  char log[600];
  snprintf(log, sizeof log, "%s/clients-%s.log", s->dir, tag);
  char *argv[] = {s->client, "--server", s->addr, "--server-name", "localhost", "--clients",
                  (char *)n, "--cert-index", (char *)first, "--data", "fashion-mnist:train",
                  "--max-samples", "4000", "--partition", "iid", "--num-partitions", "4",
                  "--partition-index", "0", "--seed", "9", "--certs-dir",
                  (char *)fl_test_certs_dir(), "--ca", s->ca, "--retry-base", "0.05",
                  "--retry-max", "0.3", "--max-retries", "100000", "--workers", "2",
                  "--idle-timeout", "5", "--heartbeat", "1", NULL};
  return fl_test_spawn(log, argv);
}

static float *load_model(const char *path, size_t *n) {
  char err[512], *spec;
  uint64_t id;
  float *p;
  cr_assert_eq(fl_modelfile_load(path, &spec, &id, &p, n, err, sizeof err), 0, "%s", err);
  free(spec);
  return p;
}

/* Rounds in a metrics file, in order; -1 if a line is not the next round. */
static int metrics_rounds(const char *path) {
  char *m = fl_test_read_file(path, NULL);
  if (!m) return 0;
  int expect = 1;
  for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
    const char *p = strstr(line, "\"round\":");
    if (!p || atoi(p + 8) != expect) {
      free(m);
      return -1;
    }
    expect++;
  }
  free(m);
  return expect - 1;
}

Test(resilience, sigkill_and_resume_match_an_uninterrupted_run, .timeout = 600) {
  setup s;
  setup_init(&s);
  char path[600];

  /* The reference: one uninterrupted run. */
  pid_t c = start_clients(&s, "ref", "4", "1");
  pid_t srv = start_server(&s, "ref", "ref", "30", 0);
  cr_assert_eq(fl_test_wait(srv, 240), 0, "reference server failed (%s)", s.dir);
  cr_assert_eq(fl_test_wait(c, 30), 0, "reference clients failed (%s)", s.dir);

  /* The same run, killed at random moments and resumed each time. */
  c = start_clients(&s, "kill", "4", "1");
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  srand((unsigned)now.tv_nsec);
  int kills = 0, finished = 0;
  for (int life = 0; life < 40 && !finished; life++) {
    char life_log[64], life_path[700];
    snprintf(life_log, sizeof life_log, "kill-life%d", life);
    snprintf(life_path, sizeof life_path, "%s/server-%s.log", s.dir, life_log);
    srv = start_server(&s, "kill", life_log, "30", 1);
    int rc;
    if (kills < 5) {
      /* Each life completes a round, then dies at any moment: writing that round's
       * checkpoint, training, folding, evaluating the next. */
      fl_test_wait_for(life_path, "/30 done", 120);
      usleep((useconds_t)(rand() % 200000));
      kill(srv, SIGKILL);
      rc = fl_test_wait(srv, 30);
      if (rc == 128 + SIGKILL) {
        kills++;
        continue;
      }
    } else {
      rc = fl_test_wait(srv, 240);
    }
    cr_assert_eq(rc, 0, "server life %d exited with %d (%s)", life, rc, s.dir);
    finished = 1;
  }
  cr_assert(finished, "the run never completed (%s)", s.dir);
  cr_assert_geq(kills, 5);
  cr_assert_eq(fl_test_wait(c, 30), 0, "clients failed (%s)", s.dir);

  int resumed = 0;
  for (int life = 0; life <= kills; life++) {
    snprintf(path, sizeof path, "%s/server-kill-life%d.log", s.dir, life);
    cr_assert_eq(fl_test_count(path, "checkpoint failed"), 0, "%s", path);
    cr_assert_eq(fl_test_count(path, "corrupt"), 0, "%s", path);
    cr_assert(fl_test_sanitizer_clean(path), "%s", path);
    resumed += fl_test_count(path, "resuming from");
  }
  cr_assert_geq(resumed, 1, "never resumed from a checkpoint (%s)", s.dir);
  snprintf(path, sizeof path, "%s/metrics-kill.jsonl", s.dir);
  cr_assert_eq(metrics_rounds(path), 30, "rounds lost or run twice: %s", path);

  size_t na, nb;
  snprintf(path, sizeof path, "%s/model-ref.bin", s.dir);
  float *a = load_model(path, &na);
  snprintf(path, sizeof path, "%s/model-kill.bin", s.dir);
  float *b = load_model(path, &nb);
  cr_assert_eq(na, nb);
  double worst = 0;
  for (size_t i = 0; i < na; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
  cr_assert_lt(worst, 1e-5, "resumed model differs by %g", worst);
  free(a);
  free(b);
  setup_free(&s);
}

Test(resilience, sigterm_stops_cleanly_and_resume_continues, .timeout = 300) {
  setup s;
  setup_init(&s);
  char log[600], metrics[600], clog[600];
  snprintf(log, sizeof log, "%s/server-term.log", s.dir);
  snprintf(metrics, sizeof metrics, "%s/metrics-term.jsonl", s.dir);
  snprintf(clog, sizeof clog, "%s/clients-term.log", s.dir);
  pid_t c = start_clients(&s, "term", "4", "1");
  pid_t srv = start_server(&s, "term", "term", "6", 0);
  cr_assert(fl_test_wait_for(log, "round 2/6 done", 120), "no round 2 (%s)", log);
  kill(srv, SIGTERM);
  cr_assert_eq(fl_test_wait(srv, 60), 0, "SIGTERM: server did not exit 0 (%s)", log);
  cr_assert_eq(fl_test_count(log, "stopped after"), 1);
  int done = metrics_rounds(metrics);
  cr_assert(done >= 2 && done < 6, "%d rounds before the stop", done);
  /* The clients were told to come back; they are still running. */
  cr_assert(fl_test_wait_for(clog, "reconnecting", 10));
  usleep(500000);
  cr_assert(fl_test_running(c), "clients exited while the server was down");
  srv = start_server(&s, "term", "term", "6", 1);
  cr_assert_eq(fl_test_wait(srv, 240), 0, "resumed server failed (%s)", log);
  cr_assert_eq(fl_test_wait(c, 30), 0, "clients failed (%s)", clog);
  cr_assert_eq(metrics_rounds(metrics), 6);
  cr_assert_eq(fl_test_count(log, "resuming from"), 1);
  cr_assert(fl_test_sanitizer_clean(log));
  setup_free(&s);
}

static pid_t start_group(setup *s, const char *tag, const char *n, const char *first,
                         const char *part) {
  char log[600];
  snprintf(log, sizeof log, "%s/clients-%s.log", s->dir, tag);
  char *argv[] = {s->client, "--server", s->addr, "--server-name", "localhost", "--clients",
                  (char *)n, "--cert-index", (char *)first, "--data", "fashion-mnist:train",
                  "--max-samples", "20000", "--partition", "iid", "--num-partitions", "20",
                  "--partition-index", (char *)part, "--certs-dir", (char *)fl_test_certs_dir(),
                  "--ca", s->ca, "--retry-base", "0.05", "--retry-max", "0.5", "--max-retries",
                  "100000", "--workers", "2", NULL};
  return fl_test_spawn(log, argv);
}

/* Twenty clients; six of them (one process) killed as round 2 starts and restarted after
 * round 4: every round completes, and the log names the clients that dropped. */
Test(resilience, churn_thirty_percent_killed_and_restarted, .timeout = 600) {
  setup s;
  setup_init(&s);
  char log[600], metrics[600], out[600];
  snprintf(log, sizeof log, "%s/server.log", s.dir);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", s.dir);
  snprintf(out, sizeof out, "%s/model.bin", s.dir);
  char *argv[] = {s.server, "--listen", s.listen, "--model", "2nn", "--rounds", "6",
                  "--clients-per-round", "10", "--min-clients", "10", "--min-updates", "4",
                  "--round-timeout", "60", "--epochs", "3", "--seed", "5", "--out", out,
                  "--metrics", metrics, "--ca", s.ca, "--cert", s.cert, "--key", s.key, NULL};
  pid_t srv = fl_test_spawn(log, argv);
  pid_t a = start_group(&s, "a", "14", "1", "0");
  pid_t b = start_group(&s, "b", "6", "15", "14");
  cr_assert(fl_test_wait_for(log, "round 2/6:", 120), "no round 2 (%s)", log);
  kill(b, SIGKILL);
  fl_test_wait(b, 10);
  cr_assert(fl_test_wait_for(log, "round 4/6 done", 240), "no round 4 (%s)", log);
  b = start_group(&s, "b2", "6", "15", "14");
  cr_assert_eq(fl_test_wait(srv, 300), 0, "server failed (%s)", log);
  cr_assert_eq(fl_test_wait(a, 30), 0, "clients a failed (%s)", s.dir);
  cr_assert_eq(fl_test_wait(b, 30), 0, "clients b failed (%s)", s.dir);

  cr_assert_eq(metrics_rounds(metrics), 6);
  cr_assert_geq(fl_test_count(log, "dropped out"), 1, "no client dropped mid-round (%s)", log);
  int named = 0;
  for (int i = 15; i <= 20; i++) {
    char who[64];
    snprintf(who, sizeof who, "client-%04d (127.0.0.1", i);
    named += fl_test_count(log, who) > 0;
  }
  cr_assert_eq(named, 6, "the log names %d of the 6 killed clients", named);
  cr_assert(fl_test_sanitizer_clean(log));
  setup_free(&s);
}

/* ---- peers that stall ---- */

typedef struct staller {
  fl_conn *conn;
  int half_frame;  /* 1: after hello, half a frame header, then nothing */
  int closed;
  char reason[256];
} staller;

static void st_open(fl_conn *c) {
  staller *p = fl_conn_data(c);
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Hello h = FL__HELLO__INIT;
  h.protocol_version = FL_PROTOCOL_VERSION;
  h.num_samples = 100;
  env.body_case = FL__ENVELOPE__BODY_HELLO;
  env.hello = &h;
  uint8_t *buf;
  size_t len;
  cr_assert_eq(fl_msg_encode(&env, &buf, &len), 0);
  fl_conn_send(c, buf, len);
  free(buf);
  if (p->half_frame) {
    const uint8_t half[2] = {0, 0};
    fl_conn_send_raw(c, half, sizeof half);
  }
}
static void st_frame(fl_conn *c, const uint8_t *p, size_t n) { (void)c; (void)p; (void)n; }
static void st_drain(fl_conn *c) { (void)c; }
static void st_close(fl_conn *c, int err, const char *reason) {
  staller *p = fl_conn_data(c);
  (void)err;
  p->closed = 1;
  snprintf(p->reason, sizeof p->reason, "%s", reason ? reason : "");
}
static const fl_conn_callbacks st_cb = {st_open, st_frame, st_drain, st_close};

static void st_tick(uv_timer_t *t) {
  staller *p = t->data;
  if (p[0].closed && p[1].closed) uv_close((uv_handle_t *)t, NULL);
}

Test(resilience, silent_and_stalled_clients_are_dropped, .timeout = 300) {
  fl_log_set_level(FL_LOG_ERROR);
  setup s;
  setup_init(&s);
  char log[600], metrics[600], out[600];
  snprintf(log, sizeof log, "%s/server.log", s.dir);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", s.dir);
  snprintf(out, sizeof out, "%s/model.bin", s.dir);
  char *argv[] = {s.server, "--listen", s.listen, "--model", "logreg", "--rounds", "1",
                  "--clients-per-round", "4", "--min-clients", "4", "--round-timeout", "120",
                  "--idle-timeout", "1.5", "--heartbeat", "0.3", "--out", out, "--metrics",
                  metrics, "--ca", s.ca, "--cert", s.cert, "--key", s.key, NULL};
  pid_t srv = fl_test_spawn(log, argv);
  cr_assert(fl_test_wait_for(log, "listening on", 30));
  char clog[600];
  snprintf(clog, sizeof clog, "%s/clients.log", s.dir);
  char *cargv[] = {s.client, "--server", s.addr, "--server-name", "localhost", "--clients", "2",
                   "--data", "fashion-mnist:train", "--max-samples", "2000", "--partition",
                   "iid", "--certs-dir", (char *)fl_test_certs_dir(), "--ca", s.ca,
                   "--heartbeat", "0.3", "--idle-timeout", "1.5", NULL};
  pid_t good = fl_test_spawn(clog, cargv);

  uv_loop_t loop;
  uv_loop_init(&loop);
  staller p[2] = {{.half_frame = 0}, {.half_frame = 1}};
  fl_tls_config *tls[2];
  fl_conn_options opt;
  fl_conn_options_default(&opt); /* no heartbeat payload: these peers stay silent */
  for (int i = 0; i < 2; i++) {
    char cert[600], key[600], err[512];
    snprintf(cert, sizeof cert, "%s/client-%04d.crt", fl_test_certs_dir(), 21 + i);
    snprintf(key, sizeof key, "%s/client-%04d.key", fl_test_certs_dir(), 21 + i);
    fl_tls_options t = {.ca_file = s.ca, .cert_file = cert, .key_file = key,
                        .server_name = "localhost"};
    cr_assert_eq(fl_tls_config_create(&t, &tls[i], err, sizeof err), 0, "%s", err);
    int port = atoi(strrchr(s.addr, ':') + 1);
    cr_assert_eq(fl_connect(&loop, tls[i], "127.0.0.1", port, &opt, &st_cb, &p[i], &p[i].conn), 0);
  }
  uv_timer_t tick;
  uv_timer_init(&loop, &tick);
  tick.data = p;
  uv_timer_start(&tick, st_tick, 50, 50);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 2; i++) fl_tls_config_free(tls[i]);
  uv_loop_close(&loop);

  cr_assert_eq(fl_test_wait(srv, 120), 0, "server failed (%s)", log);
  cr_assert_eq(fl_test_wait(good, 30), 0, "good clients failed (%s)", clog);
  cr_assert_eq(fl_test_count(metrics, "\"updates_accepted\":2"), 1, "%s", metrics);
  cr_assert_eq(fl_test_count(metrics, "\"clients_dropped\":2"), 1, "%s", metrics);
  cr_assert_eq(fl_test_count(log, "timed out with"), 0, "the round waited for its timeout");
  cr_assert_geq(fl_test_count(log, "client-0021 dropped out"), 1);
  cr_assert_geq(fl_test_count(log, "client-0022 dropped out"), 1);
  cr_assert(fl_test_sanitizer_clean(log));
  setup_free(&s);
}

/* ---- stragglers ---- */

/* Six clients with size-skewed data, four updates needed: the round closes once the
 * four fastest are in, and the two slowest are refused as stale. */
Test(resilience, over_selection_closes_rounds_without_the_slowest, .timeout = 300) {
  setup s;
  setup_init(&s);
  char log[600], metrics[600], out[600], clog[600];
  snprintf(log, sizeof log, "%s/server.log", s.dir);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", s.dir);
  snprintf(out, sizeof out, "%s/model.bin", s.dir);
  snprintf(clog, sizeof clog, "%s/clients.log", s.dir);
  char *argv[] = {s.server, "--listen", s.listen, "--model", "2nn", "--rounds", "3",
                  "--clients-per-round", "4", "--over-select", "0.5", "--min-clients", "6",
                  "--epochs", "2", "--out", out, "--metrics", metrics, "--ca", s.ca,
                  "--cert", s.cert, "--key", s.key, NULL};
  pid_t srv = fl_test_spawn(log, argv);
  char *cargv[] = {s.client, "--server", s.addr, "--server-name", "localhost", "--clients", "6",
                   "--data", "fashion-mnist:train", "--max-samples", "12000", "--partition",
                   "quantity:0.5", "--seed", "4", "--certs-dir", (char *)fl_test_certs_dir(),
                   "--ca", s.ca, "--workers", "2", NULL};
  pid_t c = fl_test_spawn(clog, cargv);
  cr_assert_eq(fl_test_wait(srv, 240), 0, "server failed (%s)", log);
  cr_assert_eq(fl_test_wait(c, 30), 0, "clients failed (%s)", clog);
  cr_assert_eq(metrics_rounds(metrics), 3);
  cr_assert_eq(fl_test_count(metrics, "\"clients_selected\":6"), 3, "%s", metrics);
  cr_assert_eq(fl_test_count(metrics, "\"updates_accepted\":4"), 3, "%s", metrics);
  cr_assert_eq(fl_test_count(log, "closing the round without the 2 slowest clients"), 3);
  cr_assert_geq(fl_test_count(log, "stale update for round"), 1, "no late update was refused (%s)", log);
  cr_assert(fl_test_sanitizer_clean(log));
  setup_free(&s);
}

/* A round that cannot get its updates is retried with a new selection; after
 * --max-attempts it waits for a new client instead of spinning, then completes. */
Test(resilience, failed_rounds_retry_then_wait_for_new_clients, .timeout = 300) {
  fl_log_set_level(FL_LOG_ERROR);
  setup s;
  setup_init(&s);
  char log[600], metrics[600], out[600], clog[600];
  snprintf(log, sizeof log, "%s/server.log", s.dir);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", s.dir);
  snprintf(out, sizeof out, "%s/model.bin", s.dir);
  snprintf(clog, sizeof clog, "%s/clients.log", s.dir);
  char *argv[] = {s.server, "--listen", s.listen, "--model", "logreg", "--rounds", "2",
                  "--clients-per-round", "2", "--min-clients", "2", "--min-updates", "2",
                  "--round-timeout", "1", "--max-attempts", "2", "--out", out, "--metrics",
                  metrics, "--ca", s.ca, "--cert", s.cert, "--key", s.key, NULL};
  pid_t srv = fl_test_spawn(log, argv);
  cr_assert(fl_test_wait_for(log, "listening on", 30));
  char *cargv[] = {s.client, "--server", s.addr, "--server-name", "localhost", "--clients", "1",
                   "--data", "fashion-mnist:train", "--max-samples", "500", "--certs-dir",
                   (char *)fl_test_certs_dir(), "--ca", s.ca, NULL};
  pid_t good = fl_test_spawn(clog, cargv);

  /* A client that says hello, keeps its connection alive, and never trains. */
  uv_loop_t loop;
  uv_loop_init(&loop);
  staller p[2] = {{.half_frame = 0}, {.closed = 1}};
  fl_tls_config *tls;
  char cert[600], key[600], err[512];
  snprintf(cert, sizeof cert, "%s/client-%04d.crt", fl_test_certs_dir(), 23);
  snprintf(key, sizeof key, "%s/client-%04d.key", fl_test_certs_dir(), 23);
  fl_tls_options t = {.ca_file = s.ca, .cert_file = cert, .key_file = key,
                      .server_name = "localhost"};
  cr_assert_eq(fl_tls_config_create(&t, &tls, err, sizeof err), 0, "%s", err);
  fl_conn_options opt;
  fl_conn_options_default(&opt);
  uint8_t *hb;
  size_t hb_len;
  cr_assert_eq(fl_msg_heartbeat(0, 0, &hb, &hb_len), 0);
  opt.heartbeat = hb;
  opt.heartbeat_len = hb_len;
  opt.heartbeat_interval_ms = 200;
  int port = atoi(strrchr(s.addr, ':') + 1);
  cr_assert_eq(fl_connect(&loop, tls, "127.0.0.1", port, &opt, &st_cb, &p[0], &p[0].conn), 0);
  /* Run until the server gives up on the round and waits, then leave. */
  while (!fl_test_count(log, "waiting for new clients") && fl_test_running(srv))
    uv_run(&loop, UV_RUN_NOWAIT), usleep(10000);
  cr_assert(fl_test_count(log, "waiting for new clients"), "the server never waited (%s)", log);
  usleep(1500000); /* longer than a round timeout: no attempt may start meanwhile */
  cr_assert_eq(fl_test_count(log, "round 1/2: "), 2, "the server kept retrying (%s)", log);
  fl_conn_close(p[0].conn, "leaving");
  while (!p[0].closed) uv_run(&loop, UV_RUN_ONCE);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  fl_tls_config_free(tls);
  free(hb);

  /* A new client arrives: the round is tried again and the run completes. */
  char clog2[600];
  snprintf(clog2, sizeof clog2, "%s/clients2.log", s.dir);
  char *c2argv[] = {s.client, "--server", s.addr, "--server-name", "localhost", "--clients", "1",
                    "--cert-index", "2", "--data", "fashion-mnist:train", "--max-samples", "500",
                    "--certs-dir", (char *)fl_test_certs_dir(), "--ca", s.ca, NULL};
  pid_t good2 = fl_test_spawn(clog2, c2argv);
  cr_assert_eq(fl_test_wait(srv, 120), 0, "server failed (%s)", log);
  cr_assert_eq(fl_test_wait(good, 30), 0);
  cr_assert_eq(fl_test_wait(good2, 30), 0);
  cr_assert_geq(fl_test_count(log, "retrying with a new selection"), 1);
  cr_assert_eq(fl_test_count(log, "round 1/2: "), 3, "%s", log);
  cr_assert_eq(metrics_rounds(metrics), 2);
  cr_assert(fl_test_sanitizer_clean(log));
  setup_free(&s);
}
