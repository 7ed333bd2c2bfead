/* Local training and evaluation with the shared core.
 *
 * An fl_trainer holds everything its threads need to train one model: activations,
 * gradients and optimizer state (flat buffers with the parameters' layout), a batch
 * buffer.  No global mutable state: N trainers on N threads give the same results as
 * running them one after another.
 *
 * Threads.  A trainer made with fl_trainer_create_threads(..., T) splits every batch
 * over T threads of its own (see train.c): a single client
 * or fl-train uses all its cores, where a simulation of many virtual clients runs one
 * single-threaded trainer per worker instead.  Determinism: the same seed, data, batch
 * size and thread count give bit-identical weights, although the threads share a step's
 * work out dynamically (which thread computes which chunk of samples depends on timing):
 * the chunks are fixed by the batch size and thread count, and a convolution's gradient
 * is summed per chunk and over the chunks in chunk order.  A different thread count cuts
 * the batch into other chunks, so sums a convolution's gradient in another order, and
 * splits dense products into other shapes, which OpenBLAS may round differently, so its
 * weights differ by rounding; batchnorm's statistics and the dropout masks do not depend
 * on it.  One thread gives the bits the training core gave before it had threads.
 *
 * OpenBLAS must run single-threaded (openblas_set_num_threads(1), which fl-train,
 * fl-client and the tests do): each of a trainer's threads, and each trainer, then runs
 * its matrix products on its own thread (Debian's pthread OpenBLAS runs a call on the
 * calling thread; tests/test_train.c checks that threads give sequential results). */
#ifndef FL_TRAIN_H
#define FL_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "model.h"

typedef enum { FL_OPT_SGD = 0, FL_OPT_ADAM, FL_OPT_ADAMW } fl_optimizer_kind;

typedef struct fl_train_config {
  fl_optimizer_kind optimizer;
  float lr;
  float momentum;      /* SGD */
  int nesterov;        /* SGD */
  float beta1, beta2, eps; /* Adam/AdamW */
  float weight_decay;  /* L2 added to the gradient (SGD, Adam) or decoupled (AdamW) */
  float clip_norm;     /* global gradient-norm clipping; 0 = off */
  float prox_mu;       /* proximal term mu/2 ||w - prox_ref||^2; 0 = off */
  const float *prox_ref; /* [num_params] reference weights, or NULL */
  uint32_t epochs;
  uint32_t batch_size;
  uint64_t seed;       /* shuffling and dropout */
  const float *frozen; /* [num_params] 1 where a parameter is frozen (fl_model_freeze_mask):
                        * it ends every step as it began, state included; or NULL */
} fl_train_config;

/* Defaults: SGD, lr 0.01, no momentum, beta1 0.9, beta2 0.999, eps 1e-8, 1 epoch,
 * batch 32, seed 1. */
fl_train_config fl_train_config_default(void);
/* "sgd", "momentum" (SGD with 0.9), "nesterov", "adam", "adamw"; 0 or FL_EINVAL. */
int fl_optimizer_parse(const char *name, fl_train_config *cfg);
const char *fl_optimizer_name(fl_optimizer_kind k);

typedef struct fl_eval {
  double loss;      /* mean loss */
  double accuracy;  /* classification accuracy (0 for regression) */
  double auc;       /* ROC AUC for binary tasks, else 0 */
  size_t n;         /* samples evaluated */
} fl_eval;

typedef struct fl_trainer fl_trainer;

/* A trainer for model m (not owned; must outlive the trainer) whose batches hold up to
 * max_batch samples, on the calling thread only.  NULL on out-of-memory. */
fl_trainer *fl_trainer_create(const fl_model *m, uint32_t max_batch);
/* The same with `threads` threads (0: one per core this process may run on; at most
 * max_batch), threads - 1 of them started here and joined by fl_trainer_free.  NULL on
 * out-of-memory or if a thread cannot start.  A trainer is used by one thread at a time. */
fl_trainer *fl_trainer_create_threads(const fl_model *m, uint32_t max_batch, int threads);
int fl_trainer_threads(const fl_trainer *t);
void fl_trainer_free(fl_trainer *t);

/* Trains params in place on the subset for cfg->epochs epochs; optimizer state starts
 * fresh each call.  Each layer's parameters take their optimizer step as soon as the
 * backward pass has their gradient, except with clip_norm: clipping by the global norm
 * needs the whole gradient, so the step is then a separate pass over all parameters.
 * Layers with state (batchnorm) update it in params as they train.  Each epoch visits the subset in an order shuffled from cfg->seed and
 * the epoch number; the last batch of an epoch may be short.  progress (may be NULL) is
 * called after each epoch with that epoch's running mean training loss/accuracy; it may
 * call fl_evaluate with the same trainer and params.  Fills *last with
 * the last epoch's mean training loss/accuracy.  0 or FL_E* (FL_ENONFINITE if the loss
 * diverges). */
typedef void (*fl_epoch_cb)(void *arg, uint32_t epoch, const fl_eval *train);
int fl_train(fl_trainer *t, float *params, const fl_subset *data, const fl_train_config *cfg,
             fl_epoch_cb progress, void *arg, fl_eval *last);

/* Evaluates params on the subset (no dropout; batchnorm uses its running statistics).
 * auc is 0.5 when the subset holds only one class. */
int fl_evaluate(fl_trainer *t, const float *params, const fl_subset *data, fl_eval *out);

/* Checks that a subset fits the model: feature count equals the input size, labels are
 * class indices below the output width (softmax), 0 or 1 (sigmoid_bce), or finite (mse).
 * fl_train and fl_evaluate call it; 0 or FL_EMISMATCH / FL_EINVAL with a message in err. */
int fl_check_data(const fl_model *m, const fl_subset *data, char *err, size_t errlen);

/* One forward pass, and a backward pass when grad != NULL, on n <= max_batch samples
 * x [n][input_dim] with labels y [n].  Writes the batch's mean loss to *loss and ADDS the
 * gradient of that mean loss to grad [num_params] (nothing to the state's entries).
 * training != 0 applies dropout with masks drawn from seed and normalises batchnorm with
 * the batch's statistics (the running statistics are not updated: params is read
 * only).  Used for gradient checks and gradient-based aggregation. */
int fl_trainer_grad(fl_trainer *t, const float *params, const float *x, const float *y,
                    uint32_t n, int training, uint64_t seed, float *grad, double *loss);

/* Inference on n <= max_batch samples x [n][input_dim] with labels y [n] (zeros when
 * there are none: every head accepts 0): out [n][output_dim] receives what the model
 * predicts (softmax: class probabilities; sigmoid_bce: the probability of class 1; mse:
 * the value), score [n][output_dim] (may be NULL) the logits before the head, and loss
 * [n] (may be NULL) each sample's loss against y.  No dropout, batchnorm on its running
 * statistics.  0, FL_EINVAL (n out of range) or FL_ENONFINITE (a loss is not finite;
 * the outputs are written all the same). */
int fl_trainer_predict(fl_trainer *t, const float *params, const float *x, const float *y,
                       uint32_t n, float *out, float *score, float *loss);

/* One optimizer step over n parameters w with gradient g, as configured in cfg (the
 * proximal term, clipping and weight decay included; epochs/batch/seed unused).  The
 * proximal term is added to g in place.  m and v [n] hold the optimizer state and
 * must be zero before step 1: m is the momentum or Adam's first moment (unused, may be
 * NULL, for plain SGD), v Adam's second moment (may be NULL for SGD).  step counts from 1
 * (Adam's bias correction).  Order: g += mu (w - prox_ref); g *= min(1, clip/||g||);
 * then SGD: g += wd w; m = momentum m + g; w -= lr (nesterov ? g + momentum m : m)
 * (m = g when momentum is 0); Adam: g += wd w, AdamW: w *= 1 - lr wd; then
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; w -= lr m^ / (sqrt(v^) + eps).
 * 0, or FL_ENONFINITE if the gradient norm is NaN/inf (checked only when clipping). */
int fl_optimizer_step(const fl_train_config *cfg, float *w, float *g, float *m, float *v,
                      size_t n, uint64_t step);

/* ROC AUC of scores against 0/1 labels (both [n]), tied scores sharing their average
 * rank; 0.5 when either class is absent. */
double fl_auc(const float *scores, const float *labels, size_t n);

#endif
