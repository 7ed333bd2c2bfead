/* Aggregation throughput: how fast the FedAvg strategy (common/fedavg.c) folds updates,
 * against a bare cblas_saxpy over the same bytes in the same run.
 *
 * A fold is sum += weight * delta over the model's parameters, a saxpy but for the sum
 * being double (so the model does not depend on arrival order), so OpenBLAS's saxpy is
 * the yardstick: the ratio fold / saxpy should be >= 0.7.  A fold of one update moves 20
 * bytes per parameter (float in, double read and written) where saxpy moves 12, so once
 * the data outgrows a cache one update per pass is bounded near 0.6.  The server folds
 * every update that completed while the previous fold ran in one pass (it holds
 * --update-buffers of them, 2 by default), so under load -- the only time aggregation
 * throughput matters -- a pass carries 2 updates: 24 bytes per parameter for 2 deltas.
 * Shown: passes of 1, 2 and 4 distinct updates, each against saxpys of the same updates;
 * the target is read at 2, the server's default.  cblas_daxpy (24 bytes per parameter)
 * is the reference with a double accumulator.  Every array, the fold's and the
 * baselines', comes from fl_alloc_big as the server's do (huge pages from 2 MiB on), so
 * all run on the same kind of memory.  Figures are GB/s of update data folded (4 bytes
 * per parameter), per CPU second of the thread (other processes on a shared machine do
 * not count), best of several trials, the kinds interleaved.  Sizes: 2nn, cnn and a
 * large 16M-parameter model. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bigalloc.h"
#include "strategy.h"

#define TRIALS 7
#define MAX_K 4      /* updates per fold pass, at most */
#define TARGET_K 2   /* the server's default --update-buffers */
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

/* GB/s of `reps` folds of the k deltas, k per pass. */
static double time_fold(fl_strategy *s, float *const *delta, size_t k, int reps) {
  double w[MAX_K];
  for (size_t j = 0; j < k; j++) w[j] = 1.0 + (double)j;
  s->ops->begin(s);
  double t0 = thread_cpu_s();
  for (int r = 0; r < reps; r++) s->ops->fold(s, (const float *const *)delta, w, k);
  double dt = thread_cpu_s() - t0;
  return (double)reps * (double)k * (double)s->n * 4 / dt / 1e9;
}

/* The same bytes through saxpy: each of the k deltas added to a float sum. */
static double time_saxpy(float *sum, float *const *delta, size_t k, size_t n, int reps) {
  double t0 = thread_cpu_s();
  for (int r = 0; r < reps; r++)
    for (size_t j = 0; j < k; j++) cblas_saxpy((int)n, (float)(1.0 + (double)j), delta[j], 1, sum, 1);
  double dt = thread_cpu_s() - t0;
  return (double)reps * (double)k * (double)n * 4 / dt / 1e9;
}

static double time_daxpy(double *sum, const double *delta, size_t n, int reps) {
  double t0 = thread_cpu_s();
  for (int r = 0; r < reps; r++) cblas_daxpy((int)n, 1.0 + r % 3, delta, 1, sum, 1);
  double dt = thread_cpu_s() - t0;
  return (double)reps * (double)n * 4 / dt / 1e9;
}

/* The strategy's aggregate of the k deltas, folded k at a time, against the same saxpys
 * done by hand in float: the largest relative difference (0 or float rounding). */
static double check(fl_strategy *s, float *const *delta, size_t k, float *ref, float *global) {
  size_t n = s->n;
  double w[MAX_K], total = 0;
  memset(ref, 0, n * sizeof *ref);
  memset(global, 0, n * sizeof *global);
  s->ops->begin(s);
  for (size_t j = 0; j < k; j++) {
    w[j] = 1.0 + (double)j;
    total += w[j];
    cblas_saxpy((int)n, (float)w[j], delta[j], 1, ref, 1);
  }
  s->ops->fold(s, (const float *const *)delta, w, k);
  s->ops->finish(s, global, total); /* server_lr = total weight: global = the sum */
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
  const size_t ks[] = {1, 2, 4};
  printf("FedAvg fold vs cblas_saxpy, GB/s of update data per CPU second (best of %d)\n", TRIALS);
  printf("%-5s %10s %8s %9s %9s %7s %9s %11s %14s\n", "model", "parameters", "updates",
         "fold", "saxpy", "ratio", "daxpy", "fold/daxpy", "max rel. diff");
  int below = 0;
  for (size_t m = 0; m < sizeof all / sizeof *all; m++) {
    size_t n = all[m].n;
    float *delta[MAX_K], *sum = fl_alloc_big(n * sizeof *sum);
    float *ref = malloc(n * sizeof *ref), *global = malloc(n * sizeof *global);
    double *dx = fl_alloc_big(n * sizeof *dx), *dy = fl_alloc_big(n * sizeof *dy);
    fl_strategy *s = fl_fedavg_create(n);
    int ok = sum && ref && global && dx && dy && s;
    for (size_t j = 0; j < MAX_K; j++) ok &= (delta[j] = fl_alloc_big(n * sizeof(float))) != NULL;
    if (!ok) {
      fprintf(stderr, "bench-aggregate: out of memory for %zu parameters\n", n);
      return 1;
    }
    for (size_t j = 0; j < MAX_K; j++)
      for (size_t i = 0; i < n; i++)
        delta[j][i] = (float)(((i + 7919 * j) * 2654435761u) % 2001) * 1e-3f - 1.0f;
    for (size_t i = 0; i < n; i++) {
      dx[i] = delta[0][i];
      sum[i] = 0;
      dy[i] = 0;
    }
    for (size_t q = 0; q < sizeof ks / sizeof *ks; q++) {
      size_t k = ks[q];
      int reps = (int)(BYTES_PER_TRIAL / ((double)n * 4 * (double)k));
      if (reps < 4) reps = 4;
      time_fold(s, delta, k, 1); /* touch every page once */
      time_saxpy(sum, delta, k, n, 1);
      time_daxpy(dy, dx, n, 1);
      double fold = 0, saxpy = 0, daxpy = 0;
      for (int t = 0; t < TRIALS; t++) {
        double f = time_fold(s, delta, k, reps), x = time_saxpy(sum, delta, k, n, reps);
        double d = time_daxpy(dy, dx, n, reps * (int)k);
        if (f > fold) fold = f;
        if (x > saxpy) saxpy = x;
        if (d > daxpy) daxpy = d;
      }
      double diff = check(s, delta, k, ref, global);
      double ratio = fold / saxpy;
      int target = k == TARGET_K;
      below += target && ratio < 0.7;
      printf("%-5s %10zu %8zu %9.2f %9.2f %7.2f %9.2f %11.2f %14.1e%s\n", all[m].name, n, k, fold,
             saxpy, ratio, daxpy, fold / daxpy, diff,
             !target ? "" : ratio < 0.7 ? "  <- target: below 0.7" : "  <- target");
    }
    s->ops->free(s);
    for (size_t j = 0; j < MAX_K; j++) free(delta[j]);
    free(sum);
    free(ref);
    free(global);
    free(dx);
    free(dy);
  }
  printf("target: fold / saxpy >= 0.7 at %d updates per pass (the server's default) for every size; %s\n",
         TARGET_K, below ? "NOT MET (see above)" : "met");
  return 0;
}
