/* Scale: one fl-server and one `fl-client --clients 1000` process, 1000 mutually
 * authenticated TLS connections on loopback, 100 clients per round of 2nn, 5 rounds of
 * 60 samples per client.  Every round must collect its 100 updates and both processes
 * must end cleanly.
 *
 * The certificates (1000 clients) are made by the Makefile into FL_SCALE_CERTS.
 * FL_TEST_SCALE_CLIENTS=N (make test SCALE_TEST_CLIENTS=N) runs fewer clients, the
 * rounds then a tenth of them each. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define ROUNDS 5
#define SAMPLES_PER_CLIENT 60

static int scale_clients(void) {
  const char *v = getenv("FL_TEST_SCALE_CLIENTS");
  int n = v && *v ? atoi(v) : 1000;
  return n >= 10 ? n : 10;
}

static const char *scale_certs(void) {
  const char *v = getenv("FL_SCALE_CERTS");
  return v && *v ? v : "build/scale-certs";
}

/* The value of "key":N in a JSON line (-1 when absent). */
static long json_int(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

Test(scale, thousand_clients_five_rounds, .timeout = 900) {
  int n = scale_clients(), k = n / 10;
  char *dir = fl_test_tmpdir();
  cr_assert_not_null(dir);
  const char *certs = scale_certs();
  char slog[600], clog[600], metrics[600], out[600], ca[600], cert[600], key[600];
  char listen[64], nstr[16], kstr[16], rounds[16], samples[24], ready[64], finished[64];
  snprintf(slog, sizeof slog, "%s/server.log", dir);
  snprintf(clog, sizeof clog, "%s/clients.log", dir);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
  snprintf(out, sizeof out, "%s/model.bin", dir);
  snprintf(ca, sizeof ca, "%s/ca.crt", certs);
  snprintf(cert, sizeof cert, "%s/server.crt", certs);
  snprintf(key, sizeof key, "%s/server.key", certs);
  snprintf(listen, sizeof listen, "127.0.0.1:%d", fl_test_free_port());
  snprintf(nstr, sizeof nstr, "%d", n);
  snprintf(kstr, sizeof kstr, "%d", k);
  snprintf(rounds, sizeof rounds, "%d", ROUNDS);
  snprintf(samples, sizeof samples, "%d", n * SAMPLES_PER_CLIENT);
  snprintf(ready, sizeof ready, "; %d clients ready", n);
  snprintf(finished, sizeof finished, "all %d clients finished (0 gave up)", n);
  char *server = fl_test_bin("fl-server"), *client = fl_test_bin("fl-client");

  char *sargv[] = {server, "--listen", listen, "--model", "2nn", "--rounds", rounds,
                   "--clients-per-round", kstr, "--min-clients", nstr, "--epochs", "1",
                   "--batch-size", "20", "--metrics", metrics, "--out", out, "--ca", ca,
                   "--cert", cert, "--key", key, NULL};
  char *cargv[] = {client, "--server", listen, "--server-name", "localhost", "--clients", nstr,
                   "--workers", "2", "--data", "fashion-mnist:train", "--max-samples", samples,
                   "--partition", "iid", "--num-partitions", nstr, "--certs-dir", (char *)certs,
                   "--ca", ca, NULL};
  pid_t s = fl_test_spawn(slog, sargv);
  cr_assert(fl_test_wait_for(slog, "listening on", 60), "fl-server did not start (see %s)", slog);
  pid_t c = fl_test_spawn(clog, cargv);
  int rc = fl_test_wait(s, 840);
  if (rc != 0) fl_test_wait(c, 1); /* kills it */
  cr_assert_eq(rc, 0, "fl-server exited with %d (see %s)", rc, slog);
  rc = fl_test_wait(c, 60);
  cr_assert_eq(rc, 0, "fl-client exited with %d (see %s)", rc, clog);

  cr_assert_eq(fl_test_count(slog, ready), 1, "never %d clients ready (see %s)", n, slog);
  cr_assert_eq(fl_test_count(clog, finished), 1, "see %s", clog);
  char *m = fl_test_read_file(metrics, NULL);
  cr_assert_not_null(m, "no metrics file");
  int lines = 0;
  for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
    lines++;
    cr_assert_eq(json_int(line, "round"), lines, "%s", line);
    cr_assert_eq(json_int(line, "clients_selected"), k, "%s", line);
    cr_assert_eq(json_int(line, "updates_accepted"), k, "%s", line);
    cr_assert_eq(json_int(line, "examples"), (long)k * SAMPLES_PER_CLIENT, "%s", line);
    cr_assert_gt(json_int(line, "peak_rss_kib"), 0, "%s", line);
    cr_assert_gt(fl_test_json_num(line, "cpu_seconds"), 0, "%s", line);
  }
  free(m);
  cr_assert_eq(lines, ROUNDS, "%d metrics lines (see %s)", lines, metrics);
  cr_assert(fl_test_sanitizer_clean(slog), "sanitizer report in %s", slog);
  cr_assert(fl_test_sanitizer_clean(clog), "sanitizer report in %s", clog);
  free(server);
  free(client);
  free(dir);
}
