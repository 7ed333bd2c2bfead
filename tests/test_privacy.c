/* Secure aggregation and differential privacy through the real binaries (fl-server with
 * its [privacy] options, fl-client on Fashion-MNIST):
 *
 * - secure aggregation gives the model plain FedAvg gives, within the fixed point's
 *   rounding, and every round's sum is a secure one of all its clients;
 * - the composition (secure aggregation, int8 updates and distributed noise) learns and
 *   reports its epsilon;
 * - central DP with adaptive clipping adds noise of the size its multiplier says, reports
 *   an epsilon that grows round by round and moves its clipping bound; --dp-target-epsilon ends the run before the
 *   budget would be overspent;
 * - options that cannot work together are refused at start with the reason. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelfile.h"
#include "testutil.h"

#define ROUNDS 3
#define CLIENTS 6

/* Runs logreg, CLIENTS clients in one process, ROUNDS rounds (or what the extra flags
 * say), with the extra server flags; 0 when the server ended well. */
static int run(fl_test_fed *f, const char *const *extra, const char *rounds) {
  const char *argv[40] = {"--model", "logreg", "--rounds", rounds, "--clients-per-round", "6",
                          "--min-clients", "6", "--epochs", "1", "--batch-size", "20", "--lr",
                          "0.1", "--seed", "2", "--test-data", "fashion-mnist:test"};
  int argc = 0;
  while (argv[argc]) argc++;
  for (int i = 0; extra && extra[i]; i++) argv[argc++] = extra[i];
#define A(i) (char *)argv[i]
  pid_t s = fl_test_fed_server(f, "server.log", A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7),
                               A(8), A(9), A(10), A(11), A(12), A(13), A(14), A(15), A(16),
                               A(17), A(18), A(19), A(20), A(21), A(22), A(23), A(24), A(25),
                               A(26), A(27), A(28), A(29), NULL);
#undef A
  pid_t c = fl_test_fed_clients(f, "clients.log", "--clients", "6", "--data",
                                "fashion-mnist:train", "--max-samples", "6000", "--partition",
                                "iid", "--num-partitions", "6", "--seed", "1", NULL);
  int rc = fl_test_wait(s, 600);
  fl_test_wait(c, 60);
  cr_assert(fl_test_sanitizer_clean(f->log), "sanitizer report in %s", f->log);
  return rc;
}

static float *load(const char *path, size_t *n) {
  char err[512], *spec;
  uint64_t id;
  float *w;
  cr_assert_eq(fl_modelfile_load(path, &spec, &id, &w, n, err, sizeof err), 0, "%s", err);
  free(spec);
  return w;
}

Test(privacy, secure_aggregation_gives_the_plain_model, .timeout = 900) {
  fl_test_fed plain, sec;
  fl_test_fed_init(&plain);
  fl_test_fed_init(&sec);
  cr_assert_eq(run(&plain, NULL, "3"), 0, "plain run failed (%s)", plain.dir);
  const char *extra[] = {"--secagg", NULL};
  cr_assert_eq(run(&sec, extra, "3"), 0, "secure run failed (%s)", sec.dir);

  cr_assert_eq(fl_test_count(sec.log, "secure sum of 6"), ROUNDS, "%s", sec.log);
  for (int r = 1; r <= ROUNDS; r++) {
    char *line = fl_test_metrics_line(sec.metrics, r);
    cr_assert_not_null(strstr(line, "\"secagg\":{"), "%s", line);
    cr_assert_eq(fl_test_json_num(line, "inputs"), CLIENTS, "%s", line);
    free(line);
  }
  /* The same model: each round differs by the fixed point's rounding only (about
   * clients / scale per value, scale ~ 2^31 / (clients * clip)), far below 1e-4. */
  size_t n1, n2;
  float *a = load(plain.model, &n1), *b = load(sec.model, &n2);
  cr_assert_eq(n1, n2);
  double worst = 0, norm = 0;
  for (size_t i = 0; i < n1; i++) {
    worst = fmax(worst, fabs((double)a[i] - b[i]));
    norm = fmax(norm, fabs((double)a[i]));
  }
  cr_log_info("secure vs plain: largest difference %.3g (largest weight %.3g)", worst, norm);
  cr_assert_lt(worst, 1e-4, "secure and plain models differ by %.3g", worst);
  cr_assert_gt(norm, 1e-3, "the model did not move");
  char *p = fl_test_metrics_line(plain.metrics, ROUNDS), *s = fl_test_metrics_line(sec.metrics, ROUNDS);
  double pa = fl_test_json_num(p, "test_accuracy"), sa = fl_test_json_num(s, "test_accuracy");
  cr_assert_lt(fabs(pa - sa), 0.005, "accuracy plain %.4f, secure %.4f", pa, sa);
  cr_assert_gt(sa, 0.6, "%s", s);
  free(p);
  free(s);
  free(a);
  free(b);
  fl_test_fed_free(&plain);
  fl_test_fed_free(&sec);
}

Test(privacy, secagg_int8_and_distributed_noise_compose, .timeout = 900) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  const char *extra[] = {"--secagg", "--uplink", "int8", "--dp-clip", "1", "--dp-noise", "0.05",
                         "--dp-mode", "distributed", NULL};
  cr_assert_eq(run(&f, extra, "3"), 0, "run failed (%s)", f.dir);
  cr_assert_eq(fl_test_count(f.log, "16-bit ring"), ROUNDS, "%s", f.log);
  double prev = 0;
  for (int r = 1; r <= ROUNDS; r++) {
    char *line = fl_test_metrics_line(f.metrics, r);
    cr_assert_eq(fl_test_json_num(line, "inputs"), CLIENTS, "%s", line);
    double eps = fl_test_json_num(line, "epsilon");
    cr_assert(isfinite(eps) && eps > prev, "round %d: epsilon %.3f after %.3f: %s", r, eps, prev, line);
    prev = eps;
    free(line);
  }
  char *m = fl_test_metrics_line(f.metrics, ROUNDS);
  double acc = fl_test_json_num(m, "test_accuracy");
  cr_log_info("secagg + int8 + distributed noise z=0.05: accuracy %.4f, epsilon %.1f", acc, prev);
  cr_assert_gt(acc, 0.5, "%s", m);
  free(m);
  fl_test_fed_free(&f);
}

Test(privacy, central_noise_with_adaptive_clipping_and_a_budget, .timeout = 900) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  /* Each round spends about the same; the budget holds three rounds of the five asked. */
  const char *probe[] = {"--dp-clip", "0.5", "--dp-noise", "1", "--dp-quantile", "0.5", NULL};
  cr_assert_eq(run(&f, probe, "3"), 0, "run failed (%s)", f.dir);
  double eps[ROUNDS + 1] = {0}, clip[ROUNDS + 1] = {0};
  for (int r = 1; r <= ROUNDS; r++) {
    char *line = fl_test_metrics_line(f.metrics, r);
    eps[r] = fl_test_json_num(line, "epsilon");
    clip[r] = fl_test_json_num(line, "dp_clip");
    cr_assert(isfinite(eps[r]) && eps[r] > eps[r - 1], "%s", line);
    cr_assert(isfinite(fl_test_json_num(line, "dp_within_clip")), "%s", line);
    free(line);
  }
  cr_assert_neq(clip[1], clip[ROUNDS], "the clipping bound never moved: %.4f", clip[1]);
  /* The noise is sized right: on the mean of six clients of equal weight, each coordinate
   * carries Gaussian noise of deviation z_u S / 6 (z_u <= 1.1 z: adaptive clipping's
   * share), so the applied step's norm is that times sqrt(7850) (within a percent or two:
   * 7850 coordinates), plus at most S of clipped signal. */
  for (int r = 1; r <= ROUNDS; r++) {
    char *line = fl_test_metrics_line(f.metrics, r);
    double step = fl_test_json_num(line, "aggregate_norm");
    double lo = 1.0 * clip[r] / 6 * sqrt(7850.0), hi = 1.1 * clip[r] / 6 * sqrt(7850.0);
    cr_assert(step > 0.9 * lo - clip[r] && step < 1.1 * hi + clip[r],
              "round %d: step norm %.3f, the noise alone should give %.3f..%.3f: %s", r, step, lo,
              hi, line);
    free(line);
  }
  /* The same run with a budget between the second and the third round's epsilon. */
  fl_test_fed_init(&f);
  char target[32];
  snprintf(target, sizeof target, "%.6f", (eps[2] + eps[3]) / 2);
  const char *budget[] = {"--dp-clip", "0.5", "--dp-noise", "1", "--dp-quantile", "0.5",
                          "--dp-target-epsilon", target, NULL};
  cr_assert_eq(run(&f, budget, "5"), 0, "budget run failed (%s)", f.dir);
  cr_assert_eq(fl_test_metrics_rounds(f.metrics), 2, "rounds run within epsilon %s (%s)", target,
               f.dir);
  cr_assert_eq(fl_test_count(f.log, "round 3 would take epsilon to"), 1, "%s", f.log);
  fl_test_fed_free(&f);
}

Test(privacy, options_that_cannot_work_are_refused_at_start, .timeout = 120) {
  static const char *const cases[][8] = {
      {"--dp-mode", "distributed", "--dp-clip", "1", "--dp-noise", "1", NULL},
      {"--secagg", "--strategy", "median", NULL},
      {"--secagg", "--secagg-neighbors", "3", NULL},
      {"--secagg", "--secagg-threshold", "1", NULL},
      {"--dp-noise", "1", NULL},
      {"--secagg", "--uplink", "topk:0.1", NULL},
  };
  static const char *const says[] = {"add --secagg", "--secagg", "even", "--secagg-threshold 1",
                                     "need --dp-clip", "--secagg"};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fl_test_fed f;
    fl_test_fed_init(&f);
    const char *const *c = cases[i];
    pid_t s = fl_test_fed_server(&f, "server.log", "--model", "logreg", (char *)c[0], (char *)c[1],
                                 (char *)c[2], (char *)c[3], (char *)c[4], (char *)c[5], NULL);
    int rc = fl_test_wait(s, 60);
    cr_assert_neq(rc, 0, "case %zu was accepted (%s)", i, f.log);
    cr_assert_gt(fl_test_count(f.log, says[i]), 0, "case %zu: no '%s' in %s", i, says[i], f.log);
    fl_test_fed_free(&f);
  }
}

/* The accountant lives in the checkpoint: a private run stopped after two rounds and
 * resumed reports, for its third round, the epsilon of three rounds run in one go; a
 * private run cannot resume from a checkpoint that holds no accountant. */
Test(privacy, the_accountant_survives_a_restart, .timeout = 900) {
  fl_test_fed whole, parts;
  fl_test_fed_init(&whole);
  fl_test_fed_init(&parts);
  const char *dp[] = {"--dp-clip", "0.5", "--dp-noise", "0.8", "--dp-quantile", "0.5", NULL};
  cr_assert_eq(run(&whole, dp, "3"), 0, "run failed (%s)", whole.dir);
  char *line = fl_test_metrics_line(whole.metrics, 3);
  double want = fl_test_json_num(line, "epsilon");
  free(line);

  char ckpt[700];
  fl_test_fed_path(&parts, "run.ckpt", ckpt, sizeof ckpt);
  const char *first[] = {"--dp-clip", "0.5", "--dp-noise", "0.8", "--dp-quantile", "0.5",
                         "--checkpoint", ckpt, NULL};
  cr_assert_eq(run(&parts, first, "2"), 0, "first part failed (%s)", parts.dir);
  line = fl_test_metrics_line(parts.metrics, 2);
  double clip2 = fl_test_json_num(line, "dp_clip"), within2 = fl_test_json_num(line, "dp_within_clip");
  free(line);
  const char *second[] = {"--dp-clip", "0.5", "--dp-noise", "0.8", "--dp-quantile", "0.5",
                          "--checkpoint", ckpt, "--resume", NULL};
  cr_assert_eq(run(&parts, second, "3"), 0, "resumed part failed (%s)", parts.dir);
  cr_assert_eq(fl_test_count(parts.log, "the privacy accountant goes on from 2 rounds"), 1, "%s",
               parts.log);
  line = fl_test_metrics_line(parts.metrics, 3);
  double got = fl_test_json_num(line, "epsilon"), clip3 = fl_test_json_num(line, "dp_clip");
  cr_assert_float_eq(got, want, 1e-9, "epsilon after a restart %.6f, in one run %.6f", got, want);
  /* The adaptive bound goes on from where round 2 left it: S exp(-0.2 (b - 0.5)). */
  double next = clip2 * exp(-0.2 * (within2 - 0.5));
  cr_assert_float_eq(clip3, next, 1e-4 * next, "clip %.6f after %.6f (within %.4f)", clip3, clip2, within2);
  free(line);
  fl_test_fed_free(&whole);

  /* Now without an accountant in the checkpoint: a plain run's. */
  fl_test_fed_init(&whole);
  fl_test_fed_path(&whole, "plain.ckpt", ckpt, sizeof ckpt);
  const char *plain[] = {"--checkpoint", ckpt, NULL};
  cr_assert_eq(run(&whole, plain, "1"), 0, "plain run failed (%s)", whole.dir);
  const char *refused[] = {"--dp-clip", "0.5", "--dp-noise", "0.8", "--checkpoint", ckpt,
                           "--resume", NULL};
  cr_assert_neq(run(&whole, refused, "2"), 0, "a private run resumed a plain checkpoint");
  cr_assert_eq(fl_test_count(whole.log, "holds no privacy accountant"), 1, "%s", whole.log);
  fl_test_fed_free(&whole);
  fl_test_fed_free(&parts);
}
