/* A federation across hosts: network namespaces on this machine (tests/netns.sh), a
 * server "host" and four client "hosts" on one switch, each with its own address in
 * 10.213.0.0/24, a network that exists only inside the namespaces the test made (no
 * link to the machine's own namespace, no route out).  The server certificate names the
 * server host (fl-server.test and its address); each client host runs its own fl-client
 * with its own certificate.
 *
 * Midway the switch port of client host 3 goes down, as if its cable were pulled.  The
 * order of events is fixed without relying on speed: client 3 stops itself (SIGSTOP,
 * --sim-stop-round 2) when given round 2's task, so round 2 cannot end without it; the
 * test then takes its link down and lets it continue.  Client 3 now trains and answers
 * into a dead link; the server hears nothing from it, drops it (idle timeout), closes
 * round 2 with the other three and waits: --min-clients 4 keeps it from going on until
 * client 3 is back.  The link comes up, client 3 reconnects (resuming its TLS session)
 * and contributes to rounds 3 and 4.  Needs root; the namespaces are removed when the
 * test ends, failed or not, and ones a killed run left behind are removed first. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define IP "/usr/sbin/ip"
#define PREFIX "fltest"
#define SERVER_ADDR "10.213.0.1"

static char ns[64]; /* this run's namespaces are ns-* */

static int netns(const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s/tests/netns.sh' %s", fl_test_src_dir(), args);
  return fl_test_system(cmd);
}

static void remove_namespaces(void) {
  if (!ns[0]) return;
  char args[128];
  snprintf(args, sizeof args, "down %s", ns);
  netns(args);
}

/* Lines of the log that hold both a and b. */
static int lines_with(const char *path, const char *a, const char *b) {
  char *s = fl_test_read_file(path, NULL);
  if (!s) return 0;
  int n = 0;
  char *save = NULL;
  for (char *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
    n += strstr(l, a) && strstr(l, b);
  free(s);
  return n;
}

Test(netns, clients_on_four_hosts_one_link_down_and_back, .timeout = 600,
     .fini = remove_namespaces) {
  if (geteuid() != 0) cr_skip_test("network namespaces need root");
  cr_assert_eq(access(IP, X_OK), 0, "no %s (iproute2)", IP);
  netns("stale " PREFIX);
  snprintf(ns, sizeof ns, PREFIX "%d", (int)getpid());
  char args[512];
  snprintf(args, sizeof args, "up %s srv=" SERVER_ADDR "/24 c1=10.213.0.11/24 "
           "c2=10.213.0.12/24 c3=10.213.0.13/24 c4=10.213.0.14/24", ns);
  cr_assert_eq(netns(args), 0, "tests/netns.sh %s failed", args);

  char *dir = fl_test_tmpdir(), cmd[2048];
  snprintf(cmd, sizeof cmd, "'%s/certs/gen.sh' --out '%s/certs' --clients 4 --quiet "
           "fl-server.test " SERVER_ADDR, fl_test_src_dir(), dir);
  cr_assert_eq(fl_test_system(cmd), 0, "certs/gen.sh failed");
  char ca[600], crt[600], key[600], out[600], metrics[600], slog[600];
  snprintf(ca, sizeof ca, "%s/certs/ca.crt", dir);
  snprintf(crt, sizeof crt, "%s/certs/server.crt", dir);
  snprintf(key, sizeof key, "%s/certs/server.key", dir);
  snprintf(out, sizeof out, "%s/model.bin", dir);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
  snprintf(slog, sizeof slog, "%s/server.log", dir);
  char *server = fl_test_bin("fl-server"), *client = fl_test_bin("fl-client");
  /* How long silence takes to count as a dead link: short, for the test's sake, but
   * many heartbeats long (slower machines: FL_TEST_TIME_SCALE). */
  char idle[32];
  snprintf(idle, sizeof idle, "%g", 3 * fl_test_time_scale());
  char srv_ns[80];
  snprintf(srv_ns, sizeof srv_ns, "%s-srv", ns);
  /* The server's port is its host's own: nothing else listens in that namespace. */
  char *sargv[] = {IP, "netns", "exec", srv_ns, server, "--listen", SERVER_ADDR ":7700",
                   "--model", "logreg", "--rounds", "4", "--clients-per-round", "4",
                   "--min-clients", "4", "--heartbeat", "0.5", "--idle-timeout", idle,
                   "--round-timeout", "600", "--log-level", "debug", "--ca", ca, "--cert", crt,
                   "--key", key, "--out", out, "--metrics", metrics, NULL};
  pid_t s = fl_test_spawn(slog, sargv);
  cr_assert(fl_test_wait_for_while(slog, "[server] listening on", s, 60), "no server (%s)", slog);

  pid_t c[5];
  char clog[5][600];
  for (int k = 1; k <= 4; k++) {
    char cns[80], ccrt[600], ckey[600], idx[8];
    snprintf(cns, sizeof cns, "%s-c%d", ns, k);
    snprintf(ccrt, sizeof ccrt, "%s/certs/client-%04d.crt", dir, k);
    snprintf(ckey, sizeof ckey, "%s/certs/client-%04d.key", dir, k);
    snprintf(idx, sizeof idx, "%d", k - 1);
    snprintf(clog[k], sizeof clog[k], "%s/client-%d.log", dir, k);
    char *cargv[48] = {IP, "netns", "exec", cns, client, "--server", SERVER_ADDR ":7700",
                       "--server-name", "fl-server.test", "--ca", ca, "--cert", ccrt, "--key",
                       ckey, "--data", "fashion-mnist:train", "--max-samples", "800",
                       "--partition", "iid", "--num-partitions", "4", "--partition-index", idx,
                       "--heartbeat", "0.5", "--idle-timeout", idle, "--retry-base", "0.2",
                       "--retry-max", "1", "--max-retries", "100000", "--workers", "1", NULL};
    if (k == 3) {
      int n = 0;
      while (cargv[n]) n++;
      cargv[n++] = "--sim-stop-round";
      cargv[n++] = "2";
      cargv[n] = NULL;
    }
    c[k] = fl_test_spawn(clog[k], cargv);
  }

  /* Round 1 with all four; client 3 holds round 2. */
  cr_assert(fl_test_wait_stopped(c[3], 240), "client 3 never stopped at round 2 (%s, %s)",
            clog[3], slog);
  cr_assert_eq(fl_test_count(slog, "round 1: update from client-0003"), 1, "see %s", slog);
  cr_assert_eq(fl_test_count(slog, "round 1/4 done: 4/4 updates"), 1, "see %s", slog);
  for (int k = 1; k <= 4; k++) {
    char want[64];
    snprintf(want, sizeof want, "client-%04d connected from 10.213.0.1%d:", k, k);
    cr_assert_geq(fl_test_count(slog, want), 1, "no '%s' in %s", want, slog);
  }

  snprintf(args, sizeof args, "link %s c3 down", ns);
  cr_assert_eq(netns(args), 0);
  kill(c[3], SIGCONT);

  /* The server hears nothing more from client 3: dropped, round 2 ends with three. */
  cr_assert(fl_test_wait_for_while(slog, "round 2: client-0003 dropped out", s, 120),
            "the server did not drop client 3 (%s)", slog);
  cr_assert_eq(lines_with(slog, "client-0003 (10.213.0.13:", "disconnected: idle: nothing received"), 1,
               "no idle drop of client 3 in %s", slog);
  cr_assert(fl_test_wait_for_while(slog, "round 2/4 done: 3/4 updates (0 refused, 1 dropped)", s, 60),
            "see %s", slog);
  char *m2 = fl_test_metrics_line(metrics, 2);
  cr_assert_not_null(m2, "no metrics for round 2");
  cr_assert_eq(fl_test_json_num(m2, "clients_dropped"), 1, "%s", m2);
  cr_assert_eq(fl_test_json_num(m2, "updates_accepted"), 3, "%s", m2);
  free(m2);
  cr_assert(fl_test_running(s), "the server ended without client 3 (%s)", slog);
  cr_assert_eq(fl_test_count(slog, "client-0003 ready"), 1, "client 3 came back through a dead link");

  snprintf(args, sizeof args, "link %s c3 up", ns);
  cr_assert_eq(netns(args), 0);

  /* Back: it joins again and trains rounds 3 and 4. */
  cr_assert(fl_test_wait_count(slog, "client-0003 ready", 2, 120), "client 3 did not rejoin (%s, %s)",
            slog, clog[3]);
  int rc = fl_test_wait(s, 240);
  cr_assert_eq(rc, 0, "fl-server exited with %d (see %s)", rc, slog);
  cr_assert_eq(fl_test_count(slog, "round 3: update from client-0003"), 1, "see %s", slog);
  cr_assert_eq(fl_test_count(slog, "round 4: update from client-0003"), 1, "see %s", slog);
  for (int r = 3; r <= 4; r++) {
    char *m = fl_test_metrics_line(metrics, r);
    cr_assert_not_null(m, "no metrics for round %d", r);
    cr_assert_eq(fl_test_json_num(m, "updates_accepted"), 4, "%s", m);
    free(m);
  }
  cr_assert_eq(fl_test_metrics_rounds(metrics), 4);
  cr_assert_eq(lines_with(slog, "client-0003 connected from 10.213.0.13:", "(TLS session resumed)"), 1,
               "client 3 did not resume its TLS session when it came back (%s)", slog);
  for (int k = 1; k <= 4; k++) {
    rc = fl_test_wait(c[k], 60);
    cr_assert_eq(rc, 0, "client %d exited with %d (see %s)", k, rc, clog[k]);
    cr_assert(fl_test_sanitizer_clean(clog[k]), "sanitizer report in %s", clog[k]);
  }
  cr_assert(fl_test_sanitizer_clean(slog), "sanitizer report in %s", slog);
  free(server);
  free(client);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  fl_test_system(cmd);
  free(dir);
}
