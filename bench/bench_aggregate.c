/* Aggregation throughput: how fast the FedAvg strategy (common/agg_mean.c) folds updates,
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
#include "blaskernels.h"
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

static fl_strategy *make(const char *spec, size_t n, double lr) {
  fl_strategy *s;
  char err[256];
  if (fl_strategy_create(spec, n, lr, &s, err, sizeof err) != 0) {
    fprintf(stderr, "bench-aggregate: %s\n", err);
    exit(1);
  }
  return s;
}

/* GB/s of `reps` folds of the k deltas, k per pass. */
static double time_fold(fl_strategy *s, float *const *delta, size_t k, size_t n, int reps) {
  fl_update u[MAX_K];
  char err[256];
  for (size_t j = 0; j < k; j++) u[j] = (fl_update){.client = "bench", .weight = 1.0 + (double)j, .delta = delta[j], .buf = NULL};
  fl_strategy_begin(s);
  double t0 = thread_cpu_s();
  for (int r = 0; r < reps; r++) fl_strategy_fold(s, u, k, err, sizeof err);
  double dt = thread_cpu_s() - t0;
  return (double)reps * (double)k * (double)n * 4 / dt / 1e9;
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
static double check(float *const *delta, size_t k, size_t n, float *ref, float *global) {
  fl_update u[MAX_K];
  double total = 0;
  char err[256];
  memset(ref, 0, n * sizeof *ref);
  memset(global, 0, n * sizeof *global);
  for (size_t j = 0; j < k; j++) {
    u[j] = (fl_update){.client = "bench", .weight = 1.0 + (double)j, .delta = delta[j], .buf = NULL};
    total += u[j].weight;
    cblas_saxpy((int)n, (float)u[j].weight, delta[j], 1, ref, 1);
  }
  fl_strategy *s = make("fedavg", n, total); /* server rate = total weight: global = the sum */
  fl_strategy_fold(s, u, k, err, sizeof err);
  if (fl_strategy_finish(s, global, NULL, err, sizeof err) != 0) {
    fprintf(stderr, "bench-aggregate: %s\n", err);
    exit(1);
  }
  fl_strategy_free(s);
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)global[i] - ref[i]) / (fabs(ref[i]) + 1e-6);
    if (d > worst) worst = d;
  }
  return worst;
}

/* ---- the strategies that need every update: one round of ROUND_CLIENTS ---- */

#define ROUND_CLIENTS 100

/* CPU seconds of one round with the strategy: ROUND_CLIENTS folds (the server hands over
 * its buffers) and the finish. */
static double time_round(const char *spec, float *const *pool, size_t n) {
  fl_strategy *s = make(spec, n, 1.0);
  float *global = calloc(n, sizeof *global);
  char err[256];
  double t0 = thread_cpu_s();
  for (size_t j = 0; j < ROUND_CLIENTS; j++) {
    float *b = fl_alloc_big(n * sizeof *b);
    if (!b || !global) {
      fprintf(stderr, "bench-aggregate: out of memory\n");
      exit(1);
    }
    memcpy(b, pool[j % 8], n * sizeof *b); /* the server's buffer, as it arrived */
    fl_update u = {.client = "bench", .weight = 1.0 + (double)(j % 5), .delta = b, .buf = b};
    if (fl_strategy_fold(s, &u, 1, err, sizeof err) != 0) {
      fprintf(stderr, "bench-aggregate: %s: %s\n", spec, err);
      exit(1);
    }
    free(u.buf); /* what the strategy did not keep */
  }
  if (fl_strategy_finish(s, global, NULL, err, sizeof err) != 0) {
    fprintf(stderr, "bench-aggregate: %s: %s\n", spec, err);
    exit(1);
  }
  double dt = thread_cpu_s() - t0;
  fl_strategy_free(s);
  free(global);
  return dt;
}

/* The copies into fresh buffers are in every row, the baseline's too. */
static void robust_table(void) {
  const sizes all[] = {{"2nn", 199210}, {"cnn", 1663370}};
  const char *specs[] = {"fedavg", "normbound:bound=10", "median", "trimmed:beta=0.1",
                         "krum:f=10,m=1", "krum:f=10,m=50"};
  printf("\nOne round of %d updates, CPU seconds (the delta copied into a fresh buffer per "
         "update, as it arrives, in every row)\n", ROUND_CLIENTS);
  printf("%-5s %-20s %9s %12s %12s\n", "model", "strategy", "seconds", "x fedavg", "model sizes");
  for (size_t m = 0; m < sizeof all / sizeof *all; m++) {
    size_t n = all[m].n;
    float *pool[8];
    for (size_t j = 0; j < 8; j++) {
      pool[j] = fl_alloc_big(n * sizeof(float));
      if (!pool[j]) {
        fprintf(stderr, "bench-aggregate: out of memory\n");
        exit(1);
      }
      for (size_t i = 0; i < n; i++)
        pool[j][i] = (float)(((i + 104729 * j) * 2654435761u) % 2001) * 1e-4f - 0.1f;
    }
    double base = 0;
    for (size_t q = 0; q < sizeof specs / sizeof *specs; q++) {
      double best = 1e30;
      for (int t = 0; t < 3; t++) {
        double dt = time_round(specs[q], pool, n);
        if (dt < best) best = dt;
      }
      if (q == 0) base = best;
      fl_strategy *s = make(specs[q], n, 1.0);
      printf("%-5s %-20s %9.3f %12.1f %12.0f\n", all[m].name, specs[q], best, best / base,
             fl_strategy_model_sizes(s, ROUND_CLIENTS));
      fl_strategy_free(s);
    }
    for (size_t j = 0; j < 8; j++) free(pool[j]);
  }
}

int main(int argc, char **argv) {
  (void)argc;
  fl_blas_pick_kernels(argv);
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
    fl_strategy *s = make("fedavg", n, 1.0);
    int ok = sum && ref && global && dx && dy;
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
      time_fold(s, delta, k, n, 1); /* touch every page once */
      time_saxpy(sum, delta, k, n, 1);
      time_daxpy(dy, dx, n, 1);
      double fold = 0, saxpy = 0, daxpy = 0;
      for (int t = 0; t < TRIALS; t++) {
        double f = time_fold(s, delta, k, n, reps), x = time_saxpy(sum, delta, k, n, reps);
        double d = time_daxpy(dy, dx, n, reps * (int)k);
        if (f > fold) fold = f;
        if (x > saxpy) saxpy = x;
        if (d > daxpy) daxpy = d;
      }
      double diff = check(delta, k, n, ref, global);
      double ratio = fold / saxpy;
      int target = k == TARGET_K;
      below += target && ratio < 0.7;
      printf("%-5s %10zu %8zu %9.2f %9.2f %7.2f %9.2f %11.2f %14.1e%s\n", all[m].name, n, k, fold,
             saxpy, ratio, daxpy, fold / daxpy, diff,
             !target ? "" : ratio < 0.7 ? "  <- target: below 0.7" : "  <- target");
    }
    fl_strategy_free(s);
    for (size_t j = 0; j < MAX_K; j++) free(delta[j]);
    free(sum);
    free(ref);
    free(global);
    free(dx);
    free(dy);
  }
  printf("target: fold / saxpy >= 0.7 at %d updates per pass (the server's default) for every size; %s\n",
         TARGET_K, below ? "NOT MET (see above)" : "met");
  robust_table();
  return 0;
}
