/* Internal to the training core: the layer table behind an fl_model and the kernels that
 * run it.  model.c builds the table, train.c drives it, dense.c / conv.c / activation.c /
 * loss.c hold the kernels.  Nothing outside common/ includes this header.
 *
 * Kernel conventions (as in llm.c): outputs first, then inputs, then sizes; a shape
 * comment on every pointer; B is the batch size.  Backward kernels ADD into parameter
 * gradients (zeroed once per step by the caller) and OVERWRITE the input gradient dx,
 * which has exactly one producer.  dx may be NULL when nobody needs it (first layer). */
#ifndef FL_LAYERS_H
#define FL_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "rng.h"

enum fl__layer_kind {
  FL__DENSE, FL__CONV, FL__POOL, FL__RELU, FL__SIGMOID, FL__TANH, FL__DROPOUT
};

enum fl__head_kind { FL__SOFTMAX, FL__SIGMOID_BCE, FL__MSE };

typedef struct fl__layer {
  int kind;
  uint32_t c, h, w;       /* input shape (per sample); c = h = 1 for flat input */
  uint32_t oc, oh, ow;    /* output shape */
  size_t in_size, out_size; /* c*h*w, oc*oh*ow */
  uint32_t filters, ksize; /* conv: K filters of F x F */
  float p;                /* dropout probability */
  size_t w_off, w_len;    /* weights in the flat buffer (0 length if none) */
  size_t b_off, b_len;    /* bias */
  size_t fan_in, fan_out; /* for initialisation */
  int he_init;            /* followed by ReLU: He, else Xavier */
} fl__layer;

struct fl_model {
  char *spec;             /* canonical */
  fl__layer *layers;      /* [nlayers] */
  int nlayers;
  int head;               /* enum fl__head_kind */
  uint32_t in_c, in_h, in_w;
  size_t in_dim, out_dim, num_params;
  size_t max_width;       /* largest per-sample activation (input included) */
  size_t max_col;         /* largest conv scratch per sample (floats, see conv.c) */
  uint64_t id;
};

/* dense.c.  Weights are w[out][in] (row-major, one row per output unit), bias b[out].
 * y [B][out]  x [B][in]  w [out][in]  b [out] */
void fl__dense_forward(float *y, const float *x, const float *w, const float *b,
                       int B, int in, int out);
/* dx [B][in] or NULL  dw [out][in]  db [out]  dy [B][out]  x [B][in]  w [out][in] */
void fl__dense_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int B, int in, int out);
/* Backward fused with a plain SGD step (no momentum, clipping or proximal term): the
 * weight-gradient product goes straight into the weights, w = (1 - lr wd) w - lr dy^T x,
 * so the weight gradient is never stored and no optimizer pass streams it.  The bias
 * gradient is accumulated in db [out] (zero on entry), applied, and db zeroed again.
 * dx as above, from the weights before the update.  The same update as
 * fl_optimizer_step, up to rounding. */
void fl__dense_backward_sgd(float *dx, float *w, float *b, float *db, const float *dy,
                            const float *x, int B, int in, int out, float lr, float wd);

/* conv.c.  Input [B][C][H][W], weights w[K][C*F*F], bias b[K], output [B][K][H][W]
 * (stride 1, same padding: (F-1)/2 before, F/2 after).  col is scratch of
 * C*F*F*H*W + C*(H+F-1)*(W+F-1) floats (the columns, then one zero-padded image). */
void fl__conv_forward(float *y, float *col, const float *x, const float *w, const float *b,
                      int B, int C, int H, int W, int K, int F);
void fl__conv_backward(float *dx, float *dw, float *db, float *col, const float *dy,
                       const float *x, const float *w, int B, int C, int H, int W, int K,
                       int F);
/* 2x2 max-pool, stride 2: [B][C][H][W] -> [B][C][H/2][W/2] (a trailing odd row or
 * column is dropped).  arg [B][C][H/2][W/2] records the winning input offset. */
void fl__pool_forward(float *y, int32_t *arg, const float *x, int B, int C, int H, int W);
void fl__pool_backward(float *dx, const float *dy, const int32_t *arg, int B, int C, int H,
                       int W);

/* activation.c.  n = B * features.  Backward kernels read the forward output y. */
void fl__relu_forward(float *y, const float *x, size_t n);
void fl__relu_backward(float *dx, const float *dy, const float *y, size_t n);
void fl__sigmoid_forward(float *y, const float *x, size_t n);
void fl__sigmoid_backward(float *dx, const float *dy, const float *y, size_t n);
void fl__tanh_forward(float *y, const float *x, size_t n);
void fl__tanh_backward(float *dx, const float *dy, const float *y, size_t n);
/* Inverted dropout: mask[i] is 0 or 1/(1-p), drawn from r. */
void fl__dropout_forward(float *y, float *mask, const float *x, float p, fl_rng *r,
                         size_t n);
void fl__dropout_backward(float *dx, const float *dy, const float *mask, size_t n);

/* loss.c.  Fused heads on logits z [B][C] (C = 1 for sigmoid_bce and mse), labels
 * y [B].  Forward writes each sample's loss into loss [B] and keeps what backward needs
 * in keep [B][C] (probabilities for softmax and sigmoid_bce, z - y for mse).  Backward
 * writes the gradient of the MEAN loss over the batch into dz [B][C]. */
void fl__softmax_forward(float *loss, float *keep, const float *z, const float *y, int B,
                         int C);
void fl__softmax_backward(float *dz, const float *keep, const float *y, int B, int C);
void fl__bce_forward(float *loss, float *keep, const float *z, const float *y, int B);
void fl__bce_backward(float *dz, const float *keep, const float *y, int B);
void fl__mse_forward(float *loss, float *keep, const float *z, const float *y, int B);
void fl__mse_backward(float *dz, const float *keep, int B);

/* optim.c: fl_optimizer_step that also zeroes g as it reads it, ready for the next
 * step's accumulation. */
struct fl_train_config;
int fl__optimizer_step_zero(const struct fl_train_config *cfg, float *w, float *g, float *m,
                            float *v, size_t n, uint64_t step);

#endif
