/* Federated averaging of deltas, folded in as each update arrives.
 *
 * The running sum is kept in float, scaled by the weight of each update; one extra model
 * sized buffer is all FedAvg holds, however many clients a round has. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "strategy.h"

typedef struct fedavg {
  fl_strategy base;
  float *sum; /* [n] sum of weight_k * delta_k */
} fedavg;

static void fedavg_begin(fl_strategy *s) {
  fedavg *f = (fedavg *)s;
  memset(f->sum, 0, s->n * sizeof *f->sum);
  s->folded = 0;
  s->weight = 0;
}

static int fedavg_fold(fl_strategy *s, const float *delta, double weight) {
  fedavg *f = (fedavg *)s;
  float w = (float)weight;
  float *restrict sum = f->sum;
  for (size_t i = 0; i < s->n; i++) sum[i] += w * delta[i];
  s->folded++;
  s->weight += weight;
  return 0;
}

static int fedavg_finish(fl_strategy *s, float *global, double server_lr) {
  fedavg *f = (fedavg *)s;
  if (s->folded == 0 || s->weight <= 0) return FL_ESTATE;
  float scale = (float)(server_lr / s->weight);
  for (size_t i = 0; i < s->n; i++) global[i] += scale * f->sum[i];
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
  f->sum = calloc(n ? n : 1, sizeof *f->sum);
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
