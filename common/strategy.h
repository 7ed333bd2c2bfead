/* Aggregation strategies: how a round's client updates become the next global model.
 *
 * A strategy is an aggregator and a server optimizer, made from one spec string:
 *
 *     AGGREGATOR[:key=value,...][+OPTIMIZER[:key=value,...]]     or   OPTIMIZER[:...]
 *
 * e.g. "fedavg", "fedadam:eta=0.01,tau=0.001", "trimmed:beta=0.1",
 * "krum:f=2,m=5+fedavgm:momentum=0.9".  The aggregator turns the round's updates into
 * one aggregate delta (the weighted mean, a coordinate-wise median, ...); the optimizer
 * applies that delta to the global model (plain steps, or the adaptive server optimizers
 * of Reddi et al. 2021, whose moments are the strategy's state).  fl_strategy_help lists
 * every name with its parameters, defaults and ranges.
 *
 * Calls, all from one thread at a time (the server runs fold and finish on its thread
 * pool, never two at once, and begin on its loop):
 *   begin   once per round attempt: forget what was folded;
 *   fold    k accepted updates (the server hands over every update that completed while
 *           the previous fold ran);
 *   finish  computes the aggregate and applies it to the global model, only if every
 *           value is finite (otherwise nothing changes and the error says why).
 * The optimizer's state (moments, step count) changes only in a finish that succeeds.
 *
 * Memory: fl_strategy_model_sizes says how many model sizes of memory a strategy holds
 * for a round of k updates: 2 for the weighted mean (a double sum), whatever k; k for the
 * aggregators that need every update at once (median, trimmed mean, Krum), which keep
 * the update buffers fold gives them instead of copying them; plus 1 or 2 for the
 * optimizer's moments.
 *
 * State that must survive a restart (the optimizer's moments) is saved by
 * fl_strategy_save and restored by fl_strategy_load; a resumed run then continues exactly
 * where an uninterrupted one would be. */
#ifndef FL_STRATEGY_H
#define FL_STRATEGY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "codec.h"

typedef struct fl_strategy fl_strategy;

/* One accepted update, as the server hands it to fold.  A float32 update is delta[0..n)
 * (local minus global weights), already checked finite; buf is the memory behind it
 * (from fl_alloc_big, freed with free()): a strategy that keeps the update takes it by
 * setting buf to NULL, and frees it itself later; otherwise the buffer goes back to the
 * server after the call.  An update in another encoding (codec.h) is the records of its
 * checked chunks, data[0..len), borrowed for the call: a strategy that needs it later
 * decodes it into memory of its own. */
typedef struct fl_update {
  const char *client;  /* the client's identity (borrowed for the call) */
  double weight;       /* > 0: its weight after the server's weight policy */
  fl_enc enc;
  const float *delta;  /* FL_ENC_FLOAT32: [n] */
  float *buf;          /* FL_ENC_FLOAT32: the buffer behind delta, NULL once a strategy kept it */
  const uint8_t *data; /* other encodings: chunk records */
  size_t len;
} fl_update;

/* The update's values into dst[0..n). */
void fl_update_decode(const fl_update *u, float *dst, size_t n);
/* Its L2 norm. */
double fl_update_norm(const fl_update *u, size_t n);

/* Parses spec and creates the strategy for models of n parameters; server_lr is the rate
 * of the sgd optimizer when the spec does not set it (fl-server's --server-lr).  0, or
 * FL_ECONFIG with a message naming the bad name, key or value and what is allowed
 * (FL_ENOMEM when the memory is not there).  The caller frees *out with
 * fl_strategy_free. */
int fl_strategy_create(const char *spec, size_t n, double server_lr, fl_strategy **out,
                       char *err, size_t errlen);
void fl_strategy_free(fl_strategy *s);

/* The spec as parsed, in canonical form with every parameter
 * ("trimmed:beta=0.1+fedadam:eta=0.01,beta1=0.9,beta2=0.99,tau=0.001"). */
const char *fl_strategy_spec(const fl_strategy *s);
/* 1 when the aggregator needs every update of the round at once (median, trimmed mean,
 * Krum): its memory grows with the clients per round. */
int fl_strategy_needs_all(const fl_strategy *s);
/* Model sizes (n floats) of memory held for a round of k updates. */
double fl_strategy_model_sizes(const fl_strategy *s, size_t k);
/* The fewest updates a round needs to aggregate at all (Krum: 2f + 3; 1 otherwise). */
size_t fl_strategy_min_updates(const fl_strategy *s);

void fl_strategy_begin(fl_strategy *s);
/* 0, or a negative FL_E* with a message; after an error the round's aggregate is lost
 * (the caller abandons the attempt).  Updates whose buf a strategy kept stay kept. */
int fl_strategy_fold(fl_strategy *s, fl_update *u, size_t k, char *err, size_t errlen);
/* Updates folded since begin, and the sum of their weights. */
size_t fl_strategy_folded(const fl_strategy *s);
double fl_strategy_weight(const fl_strategy *s);
/* Computes the round's aggregate and applies it to global[0..n) with the optimizer, only
 * if the aggregate and every new value are finite: 0, or FL_ESTATE (nothing folded, or
 * fewer updates than the aggregator needs), FL_ENONFINITE or FL_ENOMEM with a message,
 * and then global and the optimizer's state are unchanged.  Runs in the time of a few
 * passes over the model (median and Krum: more, see their files), on the caller's thread.
 * The aggregate delta's L2 norm goes to *delta_norm (may be NULL). */
int fl_strategy_finish(fl_strategy *s, float *global, double *delta_norm, char *err,
                       size_t errlen);

/* The optimizer's state as bytes (malloc'd into *out; free it), and back.  load refuses
 * (FL_EMISMATCH, with a message) state saved by another spec or model size. */
int fl_strategy_save(const fl_strategy *s, uint8_t **out, size_t *len);
int fl_strategy_load(fl_strategy *s, const uint8_t *state, size_t len, char *err,
                     size_t errlen);

/* Every aggregator and optimizer with its parameters, for --help. */
void fl_strategy_help(FILE *f);

#endif
