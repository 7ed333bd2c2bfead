/* Aggregation throughput: how fast the FedAvg strategy (server/fedavg.c) folds updates,
 * against a bare cblas_saxpy over the same bytes in the same run.
 *
 * A fold is sum += weight * delta over the model's parameters, a saxpy but for the sum
 * being double (so the model does not depend on arrival order), so OpenBLAS's saxpy is
 * the yardstick: the ratio fold / saxpy should be >= 0.7.  The fold moves 20 bytes per
 * parameter (float in, double read and written) where saxpy moves 12, so once the data
 * outgrows a cache the ratio is bounded near 0.6; cblas_daxpy (24 bytes per parameter)
 * is shown as the reference with a double accumulator.  The figures are GB/s of update
 * data folded (4 bytes per parameter), per CPU second of the thread (other processes on a
 * shared machine do not count), best of several trials, the kinds interleaved.  Sizes:
 * 2nn, cnn and a large 16M-parameter model. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strategy.h"

#define TRIALS 7
#define BYTES_PER_TRIAL (512.0 * 1024 * 1024) /* update data folded per trial */

static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct sizes {
  const char *name;
  size_t n;
} sizes;

/* Best GB/s of `reps` folds into the strategy. */
static double time_fold(fl_strategy *s, const float *delta, int reps) {
  s->ops->begin(s);
  double t0 = thread_cpu_s();
  for (int r = 0; r < reps; r++) s->ops->fold(s, delta, 1.0 + r % 3);
  double dt = thread_cpu_s() - t0;
  return (double)reps * (double)s->n * 4 / dt / 1e9;
}

static double time_saxpy(float *sum, const float *delta, size_t n, int reps) {
  double t0 = thread_cpu_s();
  for (int r = 0; r < reps; r++) cblas_saxpy((int)n, (float)(1.0 + r % 3), delta, 1, sum, 1);
  double dt = thread_cpu_s() - t0;
  return (double)reps * (double)n * 4 / dt / 1e9;
}

static double time_daxpy(double *sum, const double *delta, size_t n, int reps) {
  double t0 = thread_cpu_s();
  for (int r = 0; r < reps; r++) cblas_daxpy((int)n, 1.0 + r % 3, delta, 1, sum, 1);
  double dt = thread_cpu_s() - t0;
  return (double)reps * (double)n * 4 / dt / 1e9;
}

/* The strategy's aggregate against the same saxpys done by hand in float: the
 * largest relative difference (0 or float rounding). */
static double check(fl_strategy *s, const float *delta, float *ref, float *global) {
  size_t n = s->n;
  memset(ref, 0, n * sizeof *ref);
  memset(global, 0, n * sizeof *global);
  s->ops->begin(s);
  for (int r = 0; r < 3; r++) {
    s->ops->fold(s, delta, 1.0 + r);
    cblas_saxpy((int)n, (float)(1.0 + r), delta, 1, ref, 1);
  }
  s->ops->finish(s, global, 6.0); /* server_lr = total weight: global = the sum */
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)global[i] - ref[i]) / (fabs(ref[i]) + 1e-6);
    if (d > worst) worst = d;
  }
  return worst;
}

int main(void) {
  openblas_set_num_threads(1); /* a fold runs on one thread of the server's pool */
  const sizes all[] = {{"2nn", 199210}, {"cnn", 1663370}, {"16M", 16u << 20}};
  printf("FedAvg fold vs cblas_saxpy, GB/s of update data per CPU second (best of %d)\n", TRIALS);
  printf("%-5s %12s %9s %9s %7s %9s %11s %14s\n", "model", "parameters", "fold", "saxpy",
         "ratio", "daxpy", "fold/daxpy", "max rel. diff");
  int below = 0;
  for (size_t k = 0; k < sizeof all / sizeof *all; k++) {
    size_t n = all[k].n;
    float *delta = malloc(n * sizeof *delta), *sum = calloc(n, sizeof *sum);
    float *ref = malloc(n * sizeof *ref), *global = malloc(n * sizeof *global);
    double *dx = malloc(n * sizeof *dx), *dy = calloc(n, sizeof *dy);
    fl_strategy *s = fl_fedavg_create(n);
    if (!delta || !sum || !ref || !global || !dx || !dy || !s) {
      fprintf(stderr, "bench-aggregate: out of memory for %zu parameters\n", n);
      return 1;
    }
    for (size_t i = 0; i < n; i++) {
      delta[i] = (float)((i * 2654435761u) % 2001) * 1e-3f - 1.0f;
      dx[i] = delta[i];
    }
    int reps = (int)(BYTES_PER_TRIAL / ((double)n * 4));
    if (reps < 4) reps = 4;
    time_fold(s, delta, 1); /* touch every page once */
    time_saxpy(sum, delta, n, 1);
    time_daxpy(dy, dx, n, 1);
    double fold = 0, saxpy = 0, daxpy = 0;
    for (int t = 0; t < TRIALS; t++) {
      double f = time_fold(s, delta, reps), x = time_saxpy(sum, delta, n, reps);
      double d = time_daxpy(dy, dx, n, reps);
      if (f > fold) fold = f;
      if (x > saxpy) saxpy = x;
      if (d > daxpy) daxpy = d;
    }
    double diff = check(s, delta, ref, global);
    double ratio = fold / saxpy;
    below += ratio < 0.7;
    printf("%-5s %12zu %9.2f %9.2f %7.2f %9.2f %11.2f %14.1e%s\n", all[k].name, n, fold, saxpy,
           ratio, daxpy, fold / daxpy, diff, ratio < 0.7 ? "  (below the 0.7 target)" : "");
    s->ops->free(s);
    free(delta);
    free(sum);
    free(ref);
    free(global);
    free(dx);
    free(dy);
  }
  printf("target: fold / saxpy >= 0.7 for every size; %s\n",
         below ? "NOT MET (see above)" : "met");
  return 0;
}
