/* The weighted mean of the round's deltas, folded in as each update arrives (FedAvg), and
 * the same with each delta first clipped to an L2 norm bound (norm bounding, Sun et al.
 * 2019, "Can You Really Backdoor Federated Learning?").
 *
 * The running sum sum_k w_k * d_k is kept in double, whatever the number of clients per
 * round.  Each term is exact in double (a float times an integer weight below 2^29) and
 * the sum rounds only when one parameter's terms span a huge range of magnitudes, so the
 * float model it produces practically never depends on the order in which updates
 * arrive: a resumed or repeated run gives the same model, where a float sum would differ
 * in the last bits and training would amplify that to visible differences.  Memory: the
 * sum, two model sizes, whatever the number of updates. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"
#include "error.h"
#include "strategy_internal.h"

typedef struct mean {
  double *sum; /* [n] sum of weight_k * delta_k; its memory also holds the result */
} mean;

static int mean_init(fl__agg *a) {
  mean *m = calloc(1, sizeof *m);
  if (!m) return FL_ENOMEM;
  m->sum = fl_alloc_big((a->n ? a->n : 1) * sizeof *m->sum);
  if (!m->sum) {
    free(m);
    return FL_ENOMEM;
  }
  a->impl = m;
  return 0;
}

static void mean_begin(fl__agg *a) {
  mean *m = a->impl;
  memset(m->sum, 0, a->n * sizeof *m->sum);
}

/* The fold is all the work a round's aggregation does, and it is memory-bound: each pass
 * reads and writes the double sum (16 bytes a parameter) besides reading the deltas (4
 * each).  Folding the k updates that are waiting in one pass touches the sum once for
 * all of them, so a pass of two moves 24 bytes for two deltas where two passes move 40
 * (bench/bench_aggregate.c).  Built with -O3 (Makefile) so GCC vectorises it, and cloned
 * for AVX2 with a run-time pick.  Products are exact in double, so either path gives the
 * same sum but for the order of additions. */
__attribute__((target_clones("avx2", "default")))
static void fold_pass(double *restrict sum, size_t n, const float *const *d, const double *w,
                      size_t k) {
  const float *restrict a = d[0], *restrict b = k > 1 ? d[1] : NULL;
  const float *restrict c = k > 2 ? d[2] : NULL, *restrict e = k > 3 ? d[3] : NULL;
  double wa = w[0], wb = k > 1 ? w[1] : 0, wc = k > 2 ? w[2] : 0, we = k > 3 ? w[3] : 0;
  switch (k) {
  case 1:
    for (size_t i = 0; i < n; i++) sum[i] += wa * (double)a[i];
    break;
  case 2:
    for (size_t i = 0; i < n; i++) sum[i] += wa * (double)a[i] + wb * (double)b[i];
    break;
  case 3:
    for (size_t i = 0; i < n; i++)
      sum[i] += (wa * (double)a[i] + wb * (double)b[i]) + wc * (double)c[i];
    break;
  default:
    for (size_t i = 0; i < n; i++)
      sum[i] += (wa * (double)a[i] + wb * (double)b[i]) + (wc * (double)c[i] + we * (double)e[i]);
    break;
  }
}

#define PASS_MAX 4 /* deltas per pass: four streams in, one sum read and written */

/* Folds k updates with factors[j] multiplying update j's delta in the sum. */
static void fold_scaled(fl__agg *a, const fl_update *u, const double *factor, size_t k) {
  mean *m = a->impl;
  for (size_t i = 0; i < k; i += PASS_MAX) {
    size_t p = k - i < PASS_MAX ? k - i : PASS_MAX;
    const float *d[PASS_MAX];
    for (size_t j = 0; j < p; j++) d[j] = u[i + j].delta;
    fold_pass(m->sum, a->n, d, factor + i, p);
    for (size_t j = 0; j < p; j++) a->weight += u[i + j].weight;
    a->folded += p;
  }
}

/* Folds k updates, update j's delta times factor[j]: float32 ones in passes, encoded ones
 * straight from their chunks into the sum (never expanded). */
static void fold_factors(fl__agg *a, const fl_update *u, const double *factor, size_t k) {
  mean *m = a->impl;
  size_t i = 0;
  while (i < k) {
    if (u[i].enc != FL_ENC_FLOAT32) {
      fl_records_axpy(u[i].data, u[i].len, u[i].enc, a->n, factor[i], m->sum);
      a->weight += u[i].weight;
      a->folded++;
      i++;
      continue;
    }
    size_t run = 1; /* consecutive float32 updates, folded together */
    while (i + run < k && u[i + run].enc == FL_ENC_FLOAT32) run++;
    fold_scaled(a, u + i, factor + i, run);
    i += run;
  }
}

static int mean_fold(fl__agg *a, fl_update *u, size_t k, char *err, size_t errlen) {
  (void)err, (void)errlen;
  double w[64];
  for (size_t i = 0; i < k; i += 64) {
    size_t p = k - i < 64 ? k - i : 64;
    for (size_t j = 0; j < p; j++) w[j] = u[i + j].weight;
    fold_factors(a, u + i, w, p);
  }
  return 0;
}

/* Norm bounding: delta * min(1, bound / |delta|), then weighted as usual. */
static int bound_fold(fl__agg *a, fl_update *u, size_t k, char *err, size_t errlen) {
  (void)err, (void)errlen;
  double bound = a->p[0], w[64];
  for (size_t i = 0; i < k; i += 64) {
    size_t p = k - i < 64 ? k - i : 64;
    for (size_t j = 0; j < p; j++) {
      double norm = fl_update_norm(&u[i + j], a->n);
      w[j] = u[i + j].weight * (norm > bound ? bound / norm : 1.0);
    }
    fold_factors(a, u + i, w, p);
  }
  return 0;
}

/* sum / weight as floats, written over the sum itself: float i lies in bytes [4i, 4i+4),
 * within double i/2 <= i, which has been read by then. */
static int mean_result(fl__agg *a, const float **delta, char *err, size_t errlen) {
  mean *m = a->impl;
  if (!(a->weight > 0))
    return fl_errf(err, errlen, FL_ESTATE, "the updates' weights sum to %g", a->weight);
  double inv = 1.0 / a->weight;
  float *out = (float *)(void *)m->sum;
  for (size_t i = 0; i < a->n; i++) {
    double v = m->sum[i] * inv;
    out[i] = (float)v;
  }
  *delta = out;
  return 0;
}

static double mean_sizes(const fl__agg *a, size_t k) {
  (void)a, (void)k;
  return 2;
}

static void mean_free(fl__agg *a) {
  mean *m = a->impl;
  if (!m) return;
  free(m->sum);
  free(m);
  a->impl = NULL;
}

static const fl__param no_params[] = {{NULL, 0, 0, 0, 0, NULL}};

const fl__agg_ops fl__agg_fedavg = {
    "fedavg", "the mean of the deltas weighted by example count (McMahan et al. 2017)",
    no_params, 0, mean_init, mean_begin, mean_fold, mean_result, mean_sizes, NULL, mean_free,
};

static const fl__param bound_params[] = {
    {"bound", NAN, 1e-12, 1e12, 0, "each delta's L2 norm is clipped to this before averaging"},
    {NULL, 0, 0, 0, 0, NULL},
};

const fl__agg_ops fl__agg_normbound = {
    "normbound", "fedavg over deltas clipped to an L2 norm bound (Sun et al. 2019)", bound_params,
    0, mean_init, mean_begin, bound_fold, mean_result, mean_sizes, NULL, mean_free,
};
