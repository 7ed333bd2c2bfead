/* Strategies through the real binaries (fl-server --strategy, fl-client --attack):
 *
 * - a FedAdam run killed after round 3 and resumed ends within 1e-5 of an uninterrupted
 *   one: the server optimizer's moments are in the checkpoint;
 * - with a sign-flipping attacker among five clients, median and Krum keep learning while
 *   FedAvg is pulled away;
 * - a poisoned update (3e38 in every parameter, finite) is refused by the default norm
 *   bound and the round goes on; with the bound off, the aggregate it makes cannot be
 *   applied, so the global model is never adopted nor checkpointed non-finite, and
 *   SIGTERM still ends the server. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "modelfile.h"
#include "testutil.h"

static float *load_model(const char *path, size_t *n) {
  char err[512], *spec;
  uint64_t id;
  float *p;
  cr_assert_eq(fl_modelfile_load(path, &spec, &id, &p, n, err, sizeof err), 0, "%s", err);
  free(spec);
  return p;
}

/* Four clients of one process on IID partitions of 2000 samples: logreg, all selected
 * every round. */
static pid_t clients(fl_test_fed *f, const char *log, const char *crash_round) {
  return fl_test_fed_clients(f, log, "--clients", "4", "--data", "fashion-mnist:train",
                             "--max-samples", "2000", "--partition", "iid", "--seed", "3",
                             "--retry-base", "0.05", "--retry-max", "0.5", "--max-retries",
                             "100000", "--sim-crash-round", crash_round, NULL);
}

static pid_t adam_server(fl_test_fed *f, const char *log, const char *out, int resume) {
  return fl_test_fed_server(f, log, "--model", "logreg", "--rounds", "6", "--clients-per-round",
                            "4", "--min-clients", "4", "--seed", "2", "--lr", "0.05",
                            "--strategy", "fedadam:eta=0.01", "--out", out,
                            resume ? "--resume" : NULL, NULL);
}

Test(strategies, fedadam_killed_and_resumed_matches_uninterrupted, .timeout = 600) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char ref[700], cut[700], slog[700];
  fl_test_fed_path(&f, "ref.bin", ref, sizeof ref);
  fl_test_fed_path(&f, "cut.bin", cut, sizeof cut);

  pid_t s = adam_server(&f, "ref.log", ref, 0);
  pid_t c = clients(&f, "ref-clients.log", "0");
  cr_assert_eq(fl_test_wait(s, 300), 0, "reference run failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  remove(f.metrics);

  /* The clients die the moment round 4's tasks reach them, so the server cannot get past
   * round 3, whatever its speed; it is killed waiting for them and resumed. */
  fl_test_fed_path(&f, "cut.log", slog, sizeof slog);
  char ckpt[720];
  snprintf(ckpt, sizeof ckpt, "%s.ckpt", cut);
  s = adam_server(&f, "cut.log", cut, 0);
  c = clients(&f, "cut-clients.log", "4");
  cr_assert_eq(fl_test_wait(c, 300), 128 + SIGKILL, "the clients did not die in round 4 (%s)", f.dir);
  cr_assert(fl_test_wait_for(slog, "round 3/6 done", 60), "%s", slog);
  kill(s, SIGKILL);
  fl_test_wait(s, 30);
  s = adam_server(&f, "cut2.log", cut, 1);
  c = clients(&f, "cut2-clients.log", "0");
  cr_assert_eq(fl_test_wait(s, 300), 0, "resumed run failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  char log2[700];
  fl_test_fed_path(&f, "cut2.log", log2, sizeof log2);
  cr_assert_eq(fl_test_count(log2, "resuming from"), 1, "%s", log2);
  cr_assert_eq(fl_test_count(log2, "round 4/6:"), 1, "did not resume at round 4 (%s)", log2);

  size_t na, nb;
  float *a = load_model(ref, &na), *b = load_model(cut, &nb);
  cr_assert_eq(na, nb);
  double worst = 0;
  for (size_t i = 0; i < na; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
  cr_assert_lt(worst, 1e-5, "the resumed FedAdam model differs by %g", worst);
  free(a);
  free(b);
  fl_test_fed_free(&f);
}

/* Final test accuracy of 4 rounds of logreg over 5 clients, client 0 flipping its delta
 * 20-fold; the norm bound is off so that only the strategy stands in the way. */
static double attacked_run(const char *strategy) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", "logreg", "--rounds", "4",
                               "--clients-per-round", "5", "--min-clients", "5", "--seed", "4",
                               "--lr", "0.05", "--strategy", strategy, "--max-update-norm", "0",
                               "--test-data", "fashion-mnist:test", NULL);
  pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "5", "--data",
                                "fashion-mnist:train", "--max-samples", "5000", "--partition",
                                "iid", "--seed", "3", "--attack", "signflip:20",
                                "--attack-clients", "0", NULL);
  cr_assert_eq(fl_test_wait(s, 300), 0, "%s: server failed (%s)", strategy, f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0, "%s: clients failed (%s)", strategy, f.dir);
  char clog[700];
  fl_test_fed_path(&f, "clients.log", clog, sizeof clog);
  cr_assert_eq(fl_test_count(clog, "SIMULATION: attacks with signflip:20"), 1, "%s", clog);
  char *last = fl_test_metrics_line(f.metrics, 4);
  cr_assert_not_null(last);
  double acc = fl_test_json_num(last, "test_accuracy");
  free(last);
  fl_test_fed_free(&f);
  return acc;
}

Test(strategies, median_and_krum_withstand_a_sign_flipper, .timeout = 900) {
  double fedavg = attacked_run("fedavg"), median = attacked_run("median");
  double krum = attacked_run("krum:f=1,m=3");
  cr_assert_gt(median, 0.65, "median under attack: %.3f", median);
  cr_assert_gt(krum, 0.65, "krum under attack: %.3f", krum);
  cr_assert_lt(fedavg, median - 0.1, "fedavg %.3f was not pulled away (median %.3f)", fedavg, median);
}

static pid_t poisoned(fl_test_fed *f, const char *log, const char *norm) {
  pid_t s = fl_test_fed_server(f, log, "--model", "logreg", "--rounds", "2",
                               "--clients-per-round", "2", "--min-clients", "2", "--seed", "4",
                               "--server-lr", "3", "--max-update-norm", norm, "--max-attempts",
                               "2", NULL);
  return s;
}

Test(strategies, a_poisoned_update_is_refused_or_never_applied, .timeout = 600) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char slog[700], clog[700];
  /* The default bound (10x the model's norm): refused, the other client's update goes in. */
  pid_t s = poisoned(&f, "bounded.log", "10x");
  pid_t c = fl_test_fed_clients(&f, "bounded-clients.log", "--clients", "2", "--data",
                                "fashion-mnist:train", "--max-samples", "2000", "--partition",
                                "iid", "--attack", "constant:3e38", "--attack-clients", "0", NULL);
  cr_assert_eq(fl_test_wait(s, 300), 0, "server failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  fl_test_fed_path(&f, "bounded.log", slog, sizeof slog);
  cr_assert_eq(fl_test_count(slog, "exceeds the bound"), 2, "%s", slog);
  size_t n;
  float *m = load_model(f.model, &n);
  for (size_t i = 0; i < n; i++) cr_assert(isfinite(m[i]));
  free(m);

  /* No bound: the aggregate would overflow, so it is never applied; no round completes,
   * nothing is checkpointed, and the server still stops on SIGTERM. */
  fl_test_fed g;
  fl_test_fed_init(&g);
  s = poisoned(&g, "free.log", "0");
  c = fl_test_fed_clients(&g, "free-clients.log", "--clients", "2", "--data",
                          "fashion-mnist:train", "--max-samples", "2000", "--partition", "iid",
                          "--attack", "constant:3e38", "--attack-clients", "0", "--max-retries",
                          "100000", NULL);
  fl_test_fed_path(&g, "free.log", slog, sizeof slog);
  fl_test_fed_path(&g, "free-clients.log", clog, sizeof clog);
  cr_assert(fl_test_wait_for(slog, "waiting for new clients", 300), "%s", slog);
  cr_assert_eq(fl_test_count(slog, "could not apply the aggregate"), 2, "%s", slog);
  cr_assert_eq(fl_test_count(slog, "round 1/2 done"), 0);
  char ckpt[720];
  snprintf(ckpt, sizeof ckpt, "%s.ckpt", g.model);
  struct stat st;
  cr_assert_neq(stat(ckpt, &st), 0, "a checkpoint was written (%s)", ckpt);
  kill(s, SIGTERM);
  cr_assert_eq(fl_test_wait(s, 60), 0, "SIGTERM: %s", slog);
  kill(c, SIGTERM);
  fl_test_wait(c, 60);
  cr_assert(fl_test_sanitizer_clean(slog));
  fl_test_fed_free(&f);
  fl_test_fed_free(&g);
}

/* --max-weight: four clients of 1500 examples each, capped at 1000 examples outright
 * (the share cap, a whole typical round, is far above). */
Test(strategies, an_absolute_weight_cap_holds_every_update, .timeout = 600) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", "logreg", "--rounds", "2",
                               "--clients-per-round", "4", "--min-clients", "4", "--epochs", "1",
                               "--max-weight", "1000", NULL);
  pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "4", "--data",
                                "fashion-mnist:train", "--max-samples", "6000", "--partition",
                                "iid", "--num-partitions", "4", "--seed", "1", NULL);
  cr_assert_eq(fl_test_wait(s, 300), 0, "server failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(c, 60), 0, "clients failed (%s)", f.dir);
  cr_assert_eq(fl_test_count(f.log, "capped to 1000 (--max-weight)"), 8, "%s", f.log);
  for (int r = 1; r <= 2; r++) {
    char *line = fl_test_metrics_line(f.metrics, r);
    cr_assert_eq(fl_test_json_num(line, "weights_capped"), 4, "%s", line);
    free(line);
  }
  fl_test_fed_free(&f);
}

/* A strategy that holds every update is refused at start when a round's updates would
 * not fit --strategy-memory, with the sizes in the message. */
Test(strategies, a_round_that_does_not_fit_strategy_memory_is_refused, .timeout = 120) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", "2nn", "--strategy", "median",
                               "--clients-per-round", "100", "--strategy-memory", "16", NULL);
  cr_assert_neq(fl_test_wait(s, 60), 0, "the server started (%s)", f.dir);
  cr_assert_eq(fl_test_count(f.log, "above --strategy-memory 16 MiB"), 1, "%s", f.log);
  fl_test_fed_free(&f);
}
