/* Aggregation strategies.
 *
 * A strategy turns the round's client deltas into a new global model.  The server calls
 * begin once per round attempt, fold for the accepted updates (on a worker thread, never
 * two folds at once; one call may carry several updates), then finish on the loop thread.  FedAvg folds each delta into a
 * running weighted sum, so its memory does not grow with the clients per round;
 * strategies that need every update at once (median, trimmed mean, Krum) keep what fold
 * gives them and do their work in finish.  State that must survive a restart belongs in
 * the strategy's state and will be checkpointed with the global model. */
#ifndef FL_STRATEGY_H
#define FL_STRATEGY_H

#include <stddef.h>

typedef struct fl_strategy fl_strategy;

typedef struct fl_strategy_ops {
  const char *name;
  /* A new round (or a retried one): forget anything folded so far. */
  void (*begin)(fl_strategy *s);
  /* k accepted deltas, each [0..n) with its weight (the client's example count), folded
   * in one pass: the server hands over every update that completed while the previous
   * fold ran.  The delta buffers are only borrowed for the call. */
  int (*fold)(fl_strategy *s, const float *const *deltas, const double *weights, size_t k);
  /* Applies the aggregate to global[0..n) with the server learning rate.  FL_ESTATE when
   * nothing was folded. */
  int (*finish)(fl_strategy *s, float *global, double server_lr);
  void (*free)(fl_strategy *s);
} fl_strategy_ops;

struct fl_strategy {
  const fl_strategy_ops *ops;
  size_t n;        /* parameters */
  size_t folded;   /* updates folded this round */
  double weight;   /* sum of weights folded this round */
};

/* Creates a strategy by name ("fedavg") for models of n parameters; NULL if the name is
 * unknown or memory ran out (err says which). */
fl_strategy *fl_strategy_create(const char *name, size_t n, char *err, size_t errlen);

/* FedAvg: w += server_lr * sum(n_k * d_k) / sum(n_k). */
fl_strategy *fl_fedavg_create(size_t n);

#endif
