/* Internal to the training core: the table of layer types, the layer record an fl_model
 * keeps for each token of its spec, and what a layer's kernels are given to run.
 * Nothing outside common/ includes this header (the benchmarks and tests excepted).
 *
 * A layer type is one file defining an fl__layer_ops, plus one entry in the table in
 * layers.c: its file parses its token, sets its shapes, sizes and buffers, initialises
 * its tensors and runs forward and backward.  model.c and train.c know no layer by name.
 *
 * Parameters.  A layer's trained tensors are weights [rows][row_len] followed by a bias
 * [rows] (rows = b_len; dense: one row per output unit, conv: per filter, batchnorm: per
 * channel), all in the model's flat buffer, layer by layer.  After every layer's trained
 * tensors come the layers' state (batchnorm's running statistics): part of the model
 * (sent, averaged, saved like any parameter) but never given a gradient or touched by an
 * optimizer.
 *
 * Passes.  A training step splits its batch over the trainer's threads: layers that work
 * sample by sample run on chunks of the batch (fixed cuts; a thread takes the next
 * chunk free and runs it through a run of such layers, train.c), and layers whose work
 * crosses samples synchronise:
 *   - a parameter gradient is a sum over the whole batch.  A layer with param_grad
 *     (dense) computes it after the backward of every chunk, for a range of rows over the
 *     whole batch; a layer without one (conv) writes its chunk's part into the chunk's
 *     own gradient buffer in backward, and the trainer sums the chunks' buffers in chunk
 *     order;
 *   - a channel_split layer (batchnorm in training) runs forward and backward over the
 *     whole batch, each thread a range of channels, between two barriers;
 *   - a row_split layer (dense in training) runs over the whole batch too: forward for
 *     a range of its rows (output units), backward for a range of dx's columns, then,
 *     after a barrier, param_grad for the same rows.  Each thread reads and packs only
 *     its part of the weights in every product, where a split of the samples would have
 *     every thread pack all of them (for a small layer at a small batch, the packing is
 *     a good part of the product).  A small one in a model without convolutions runs on
 *     each thread's samples instead, param_grad still by rows (train.c, SMALL_ROWS).
 * With one thread all of this is the plain sequential pass (the batch is one chunk).
 * A forward and the backward of the same samples see the same cut (the same x, the same
 * aux), so aux may hold what is relative to the pass's samples (maxpool's offsets).
 *
 * Kernel conventions (as in llm.c): outputs first, then inputs, then sizes; a shape
 * comment on every pointer.  Backward OVERWRITES dx (one producer each), which is NULL
 * when nobody needs it (the first layer), and OVERWRITES the parameter gradient rows it
 * owns, except param_grad, which ADDS to the whole gradient: the trainer keeps that
 * buffer at zero between steps (the optimizer step zeroes what it reads), so a product
 * can accumulate into it with beta 1 and no zero-filling pass. */
#ifndef FL_LAYERS_H
#define FL_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "rng.h"

typedef struct fl__layer fl__layer;
typedef struct fl__step fl__step;

/* What a layer's forward, backward or param_grad runs on. */
typedef struct fl__pass {
  int B;                 /* samples: a chunk of the batch, or the whole batch
                          * (channel_split, row_split, param_grad) */
  int batch;             /* samples in the whole batch (the mean loss is over these) */
  int training;          /* dropout on, batchnorm on batch statistics */
  int update_state;      /* fl_train: batchnorm updates its running statistics */
  const float *x;        /* [B][in_size] */
  float *y;              /* [B][out_size] */
  const float *dy;       /* [B][out_size] (backward) */
  float *dx;             /* [B][in_size] or NULL */
  float *params;         /* [num_params] the whole flat buffer; forward writes only the
                          * layer's state, param_grad only its rows when it takes the step */
  float *grad;           /* [w_len + b_len] the layer's gradient, weights then bias: in the
                          * backward of a layer without param_grad the chunk's own (or the
                          * whole gradient's part with one thread), in param_grad and
                          * channel_split layers the part of the whole gradient */
  void *aux;             /* [B][aux_len] these samples' rows of the layer's buffer */
  float *batch_aux;      /* [batch_len] the layer's per-batch buffer */
  float *scratch;        /* [scratch] the thread's own */
  uint32_t c0, c1;       /* channel_split, row_split: this thread's channels (rows);
                          * [0, rows) otherwise */
  uint32_t d0, d1;       /* row_split: this thread's columns of dx; [0, in_size) otherwise */
  const fl__step *step;  /* param_grad: the optimizer step to apply, or NULL */
  int relu_in;           /* takes_relu layers: x is the input of the ReLU before this layer
                          * (which the trainer skips), dx the gradient w.r.t. it */
} fl__pass;

typedef struct fl__layer_ops {
  const char *name; /* the token ("relu") or its part before the first ':' ("dense") */
  /* Parses tok (args: the text after "name:", or NULL when there is none).  On entry the
   * layer holds its input shape (c, h, w; *image says whether it is an image); sets the
   * output shape (oc, oh, ow), w_len, b_len, s_len, aux_len, batch_len, scratch, fan_in,
   * fan_out and arg/farg, may change *image, and writes its canonical token into canon.
   * 0 or FL_EINVAL with a message naming tok in err. */
  int (*parse)(fl__layer *l, const char *tok, const char *args, int *image, char *canon,
               size_t canon_len, char *err, size_t errlen);
  /* Initialises the layer's tensors in params (trained and state).  NULL: weights drawn
   * N(0, 2/fan_in) before a ReLU (He), N(0, 2/(fan_in+fan_out)) otherwise (Xavier), bias
   * zero. */
  void (*init)(const fl__layer *l, float *params, fl_rng *r);
  /* Once per training step, on one thread, before any forward: draws what the step needs
   * for all `batch` samples (dropout masks), in layer order from the trainer's stream. */
  void (*prepare)(const fl__layer *l, const fl__pass *p, fl_rng *r);
  void (*forward)(const fl__layer *l, const fl__pass *p);
  void (*backward)(const fl__layer *l, const fl__pass *p);
  /* The parameter gradient for rows [r0, r1) over the whole batch into p->grad, or, when
   * p->step allows it, the step itself straight into the weights (returns 1; the
   * trainer then applies no step to these rows).  NULL: backward accumulates it. */
  int (*param_grad)(const fl__layer *l, const fl__pass *p, uint32_t r0, uint32_t r1);
  int channel_split;  /* in training, runs over the whole batch by ranges of channels,
                       * which are its rows (b_len) */
  int row_split;      /* in training with threads, may run over the whole batch (the
                       * trainer decides): forward by ranges of rows (c0, c1), backward by
                       * ranges of dx's columns (d0, d1); needs param_grad */
  int relu;           /* a layer before this one is initialised for a ReLU (He) */
  int is_relu;        /* the layer is y = x > 0 ? x : 0, element by element, and nothing
                       * else (no state, no buffers) */
  int takes_relu;     /* given p->relu_in, the layer does the work of an is_relu layer just
                       * before it too, with the same bits: forward on max(x, 0) of its x,
                       * backward writing the ReLU's dx.  The trainer then skips the ReLU
                       * (its output and gradient buffers are not used) and saves a pass
                       * over the activations each way. */
  int local;          /* FedBN: the layer's tensors stay on each client */
} fl__layer_ops;

struct fl__layer {
  const fl__layer_ops *ops;
  uint32_t c, h, w;          /* input shape per sample; c = h = 1 for a vector */
  uint32_t oc, oh, ow;       /* output shape */
  size_t in_size, out_size;  /* c*h*w, oc*oh*ow */
  size_t w_off, w_len;       /* weights in the flat buffer [rows][w_len / rows] */
  size_t b_off, b_len;       /* bias [rows]; rows = b_len */
  size_t s_off, s_len;       /* state (after all trained parameters) */
  size_t aux_len;            /* floats per sample kept from forward for backward */
  size_t batch_len;          /* floats per batch kept from forward for backward */
  size_t scratch;            /* floats of scratch per thread */
  size_t fan_in, fan_out;    /* default initialisation */
  int he_init;               /* followed by a ReLU */
  uint32_t arg[8];           /* the layer's own settings (its file names them) */
  float farg;
};

struct fl_model {
  char *spec;                /* canonical */
  fl__layer *layers;         /* [nlayers] */
  int nlayers;
  const struct fl__head_ops *head;
  uint32_t in_c, in_h, in_w;
  size_t in_dim, out_dim;
  size_t num_trained;        /* parameters an optimizer updates: [0, num_trained) */
  size_t num_params;         /* num_trained + state */
  size_t max_width;          /* largest per-sample activation (input included) */
  size_t max_scratch;        /* largest per-thread scratch of a layer */
  int has_prepare;           /* some layer draws per step (dropout) */
  uint64_t id;
};

/* layers.c: the table.  The ops whose name matches tok (tok == name, or tok begins with
 * name and ':'), or NULL; *args is then the text after the ':' or NULL. */
const fl__layer_ops *fl__layer_find(const char *tok, const char **args);

/* The split of n items over T threads: thread k takes [n*k/T, n*(k+1)/T). */
static inline uint32_t fl__split(uint32_t n, int k, int T) {
  return (uint32_t)((uint64_t)n * (uint64_t)k / (uint64_t)T);
}

/* Helpers for parse functions (layers.c).  A decimal integer in [1, 2^24] that fills
 * s[0..len) exactly: 0, or -1. */
int fl__parse_dim(const char *s, size_t len, uint32_t *out);
/* Up to n dims separated by sep: how many were read, or -1 on a malformed part. */
int fl__parse_dims(const char *s, char sep, uint32_t *out, int n);

/* ---- heads (loss.c): the fused last activation and loss, the spec's last token ---- */

typedef struct fl__head_ops {
  const char *name;
  size_t min_width, max_width;  /* outputs of the last layer it accepts */
  const char *width_hint;       /* said when the width is wrong */
  /* loss [n]  keep [n][C]  z [n][C]  y [n]: per-sample loss, and what backward needs */
  void (*forward)(float *loss, float *keep, const float *z, const float *y, int n, int C);
  /* dz [n][C]: the gradient of the MEAN loss over a batch of B samples, for n of them */
  void (*backward)(float *dz, const float *keep, const float *y, int n, int B, int C);
  /* Correct predictions among n samples (0 for regression). */
  size_t (*correct)(const float *keep, const float *z, const float *y, int n, int C);
  /* A label this head can train on (C outputs). */
  int (*label_ok)(float y, size_t C);
  int regression;               /* accuracy is meaningless */
  int binary;                   /* the logit is a score for ROC AUC */
} fl__head_ops;

const fl__head_ops *fl__head_find(const char *tok);

/* The kernels of the heads, exposed for the tests (loss.c).  z [B][C], y [B]. */
void fl__softmax_forward(float *loss, float *keep, const float *z, const float *y, int n,
                         int C);
void fl__softmax_backward(float *dz, const float *keep, const float *y, int n, int B, int C);
void fl__bce_forward(float *loss, float *keep, const float *z, const float *y, int n, int C);

/* ---- the optimizer step as the trainer applies it (optim.c) ---- */

/* One step's constants.  The trainer applies it to ranges of the trained parameters as
 * their gradients are complete (a layer's rows), or to all of them after clipping. */
struct fl__step {
  int kind;                  /* FL__SGD, FL__MOMENTUM, FL__NESTEROV, FL__ADAM */
  int plain_sgd;             /* SGD without momentum or proximal term: a layer may fold it
                              * into its gradient product (dense) */
  float lr, wd, mom;
  float b1, b2, eps, l2, decay, step_size, inv_bc2;
  float scale;               /* clipping factor (1 when fused: no clipping) */
  int zero_grad;             /* leave the gradient read at 0 (the trainer's invariant) */
  float prox_mu;             /* fused proximal term (0: none, or added before clipping) */
  const float *prox_ref;     /* [num_trained] */
  float *m, *v;              /* [num_trained] optimizer state */
};
enum { FL__SGD, FL__MOMENTUM, FL__NESTEROV, FL__ADAM };

struct fl_train_config;
/* The constants of step number `step` (from 1) of cfg; prox: fold the proximal term into
 * fl__step_apply (0 when it was added to the gradient before clipping). */
void fl__step_init(fl__step *s, const struct fl_train_config *cfg, float *m, float *v,
                   uint64_t step, int prox);
/* Updates w[off, off+n) (and the optimizer state at the same offsets) from their
 * gradient g [n], which it then zeroes if s->zero_grad. */
void fl__step_apply(const fl__step *s, float *w, float *g, size_t off, size_t n);
/* The rest of a momentum step once m [n] holds (momentum m) + g: m += wd w; w -= lr m;
 * and m left multiplied by the momentum for the next step's product (beta 1). */
void fl__momentum_finish(float *w, float *m, float lr, float wd, float mom, size_t n);
/* g[i] += mu (w[i] - ref[i]) over [off, off+n). */
void fl__prox_add(float *g, const float *w, const float *ref, float mu, size_t off, size_t n);
/* The factor that brings the norm of g [n] down to clip (1 when below; NaN when the norm
 * is not finite). */
float fl__clip_scale(const float *g, size_t n, float clip);

#endif
