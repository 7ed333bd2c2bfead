/* Federated averaging of deltas, folded in as each update arrives.
 *
 * The running sum sum_k n_k * d_k is kept in double, whatever the number of clients per
 * round.  Each term is exact in double (a float times an integer weight below 2^29) and
 * the sum rounds only when one parameter's terms span a huge range of magnitudes, so the
 * float model it produces practically never depends on the order in which updates
 * arrive: a resumed or repeated run gives the same model, where a float sum would differ
 * in the last bits and training would amplify that to visible differences. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"
#include "error.h"
#include "strategy.h"

typedef struct fedavg {
  fl_strategy base;
  double *sum; /* [n] sum of weight_k * delta_k */
} fedavg;

static void fedavg_begin(fl_strategy *s) {
  fedavg *f = (fedavg *)s;
  memset(f->sum, 0, s->n * sizeof *f->sum);
  s->folded = 0;
  s->weight = 0;
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

static int fedavg_fold(fl_strategy *s, const float *const *deltas, const double *weights,
                       size_t k) {
  fedavg *f = (fedavg *)s;
  for (size_t i = 0; i < k; i += PASS_MAX) {
    size_t m = k - i < PASS_MAX ? k - i : PASS_MAX;
    fold_pass(f->sum, s->n, deltas + i, weights + i, m);
    for (size_t j = 0; j < m; j++) s->weight += weights[i + j];
    s->folded += m;
  }
  return 0;
}

static int fedavg_finish(fl_strategy *s, float *global, double server_lr) {
  fedavg *f = (fedavg *)s;
  if (s->folded == 0 || s->weight <= 0) return FL_ESTATE;
  double scale = server_lr / s->weight;
  const double *restrict sum = f->sum;
  size_t n = s->n;
  for (size_t i = 0; i < n; i++) global[i] = (float)((double)global[i] + scale * sum[i]);
  return 0;
}

static void fedavg_free(fl_strategy *s) {
  if (!s) return;
  free(((fedavg *)s)->sum);
  free(s);
}

static const fl_strategy_ops fedavg_ops = {
  "fedavg", fedavg_begin, fedavg_fold, fedavg_finish, fedavg_free,
};

fl_strategy *fl_fedavg_create(size_t n) {
  fedavg *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->sum = fl_alloc_big((n ? n : 1) * sizeof *f->sum); /* zeroed by begin */
  if (!f->sum) {
    free(f);
    return NULL;
  }
  f->base.ops = &fedavg_ops;
  f->base.n = n;
  return &f->base;
}

fl_strategy *fl_strategy_create(const char *name, size_t n, char *err, size_t errlen) {
  fl_strategy *s = NULL;
  if (strcmp(name, "fedavg") == 0) s = fl_fedavg_create(n);
  else {
    snprintf(err, errlen, "unknown strategy '%s' (fedavg)", name);
    return NULL;
  }
  if (!s) snprintf(err, errlen, "out of memory for strategy '%s' (%zu parameters)", name, n);
  return s;
}
