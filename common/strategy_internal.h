/* The two halves of a strategy (see strategy.h), as the files that implement them see
 * each other: an aggregator (agg_mean.c, agg_order.c, agg_krum.c) and a server optimizer
 * (server_opt.c), each a table of operations with its parameters, composed by
 * strategy.c.  A new aggregator or optimizer is one file and one entry in strategy.c's
 * lists. */
#ifndef FL_STRATEGY_INTERNAL_H
#define FL_STRATEGY_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "strategy.h"

#define FL__STRATEGY_MAX_PARAMS 6

/* A parameter: its key, default (NAN: the key must be given), range and help. */
typedef struct fl__param {
  const char *key;
  double def, lo, hi;
  int integer;          /* only whole numbers */
  const char *help;
} fl__param;

typedef struct fl__agg fl__agg;
typedef struct fl__agg_ops {
  const char *name;
  const char *help;
  const fl__param *params;   /* terminated by {NULL} */
  int needs_all;             /* keeps every update until result */
  /* a->n and a->p[] are set; allocates what the aggregator needs. */
  int (*init)(fl__agg *a);
  void (*begin)(fl__agg *a);
  /* Folds (or keeps) k updates; counts a->folded and a->weight. */
  int (*fold)(fl__agg *a, fl_update *u, size_t k, char *err, size_t errlen);
  /* The aggregate delta[0..n) in memory the aggregator owns, valid until begin. */
  int (*result)(fl__agg *a, const float **delta, char *err, size_t errlen);
  double (*model_sizes)(const fl__agg *a, size_t k);
  size_t (*min_updates)(const fl__agg *a);
  void (*free)(fl__agg *a);
} fl__agg_ops;

struct fl__agg {
  const fl__agg_ops *ops;
  size_t n;
  double p[FL__STRATEGY_MAX_PARAMS];   /* parameter values, in the order of ops->params */
  size_t folded;
  double weight;
  void *impl;
};

typedef struct fl__opt fl__opt;
typedef struct fl__opt_ops {
  const char *name;
  const char *help;
  const fl__param *params;
  int moments;               /* model-sized state arrays: 0, 1 or 2 */
  /* Sets up the moments (o->m[0..moments) are allocated, n floats each). */
  void (*init)(fl__opt *o);
  /* One server step.  apply 0: computes the new model without writing anything and
   * returns FL_ENONFINITE if a value would not be finite; apply 1: writes the new model
   * into global and the new moments. */
  int (*step)(fl__opt *o, float *global, const float *delta, int apply);
} fl__opt_ops;

struct fl__opt {
  const fl__opt_ops *ops;
  size_t n;
  double p[FL__STRATEGY_MAX_PARAMS];
  float *m[2];               /* moments */
  uint64_t t;                /* steps applied */
};

extern const fl__agg_ops fl__agg_fedavg, fl__agg_normbound, fl__agg_median, fl__agg_trimmed,
    fl__agg_krum;
extern const fl__opt_ops fl__opt_sgd, fl__opt_fedavgm, fl__opt_fedadagrad, fl__opt_fedadam,
    fl__opt_fedyogi;

/* Helpers shared by the aggregators. */
/* Keeps u's values as n floats of the aggregator's own: a float32 update's buffer (taken
 * from the update, u->buf = NULL), or a decoded copy of an encoded one.  NULL: out of
 * memory. */
float *fl__agg_keep(fl_update *u, size_t n);

#endif
