/* Fully connected layer `dense:N`: y = x w^T + b, with w stored [out][in] (one row per
 * output unit) and b [out].  With threads (row_split, layers.h) each thread computes a
 * range of y's columns, of dx's columns and of w's rows, over the whole batch.
 *
 * The three matrix products go to OpenBLAS; the bias and its gradient are plain loops
 * over contiguous rows, which the compiler vectorises.  The weight gradient is a product
 * over the whole batch, computed by rows of w (param_grad), so several threads each take
 * their own rows with no sum across threads; with plain SGD that product writes straight
 * into the weights (alpha -lr, beta 1 - lr wd), and with momentum into the momentum
 * (kept scaled by the momentum, so beta 1), so the gradient is never stored and the
 * optimizer's pass streams less.  Other optimizers take the gradient rows to
 * fl__step_apply at once. */
#include <cblas.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "layers.h"

static int dense_parse(fl__layer *l, const char *tok, const char *args, int *image,
                       char *canon, size_t canon_len, char *err, size_t errlen) {
  uint32_t n;
  if (!args || fl__parse_dims(args, ':', &n, 1) != 1)
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: bad token '%s' (expected dense:N, N >= 1)", tok);
  if ((uint64_t)l->in_size * n > ((uint64_t)1 << 30))
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: '%s' takes the model over %zu parameters", tok,
                   (size_t)1 << 30);
  l->oc = 1, l->oh = 1, l->ow = n;
  l->w_len = l->in_size * n, l->b_len = n;
  l->fan_in = l->in_size, l->fan_out = n;
  *image = 0;
  snprintf(canon, canon_len, "dense:%u", n);
  return 0;
}

/* Columns [c0, c1) of y [B][out] = x [B][in] . w^T [in][out] + b */
static void dense_forward(const fl__layer *l, const fl__pass *p) {
  int B = p->B, in = (int)l->in_size, out = (int)l->out_size;
  uint32_t c0 = p->c0, c1 = p->c1;
  const float *w = p->params + l->w_off, *b = p->params + l->b_off;
  if (c1 <= c0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, (int)(c1 - c0), in, 1.0f, p->x, in,
              w + (size_t)c0 * in, in, 0.0f, p->y + c0, out);
  for (int i = 0; i < B; i++) {
    float *row = p->y + (size_t)i * out;
    for (uint32_t j = c0; j < c1; j++) row[j] += b[j];
  }
}

/* Columns [d0, d1) of dx [B][in] = dy [B][out] . w [out][in], from the weights before
 * this step's update */
static void dense_backward(const fl__layer *l, const fl__pass *p) {
  int in = (int)l->in_size, out = (int)l->out_size;
  uint32_t d0 = p->d0, d1 = p->d1;
  if (p->dx && d1 > d0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p->B, (int)(d1 - d0), out, 1.0f,
                p->dy, out, p->params + l->w_off + d0, in, 0.0f, p->dx + d0, in);
}

/* Rows [r0, r1) of dw [out][in] = dy^T [out][B] . x [B][in] and of db [out] = the column
 * sums of dy, over the whole batch. */
static int dense_param_grad(const fl__layer *l, const fl__pass *p, uint32_t r0, uint32_t r1) {
  int B = p->B, in = (int)l->in_size, out = (int)l->out_size, rows = (int)(r1 - r0);
  if (rows <= 0) return 1;
  const fl__step *s = p->step;
  float *db = p->grad + l->w_len;
  for (uint32_t j = r0; j < r1; j++) db[j] = 0.0f;
  for (int i = 0; i < B; i++) {
    const float *row = p->dy + (size_t)i * out;
    for (uint32_t j = r0; j < r1; j++) db[j] += row[j];
  }
  if (s && s->plain_sgd) {
    /* w = (1 - lr wd) w - lr dy^T x: the step itself (beta 1 when wd is 0, which OpenBLAS
     * applies without a separate scaling pass); then b -= lr (db + wd b) */
    float *w = p->params + l->w_off + (size_t)r0 * in, *b = p->params + l->b_off;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, in, B, -s->lr, p->dy + r0,
                out, p->x, in, 1.0f - s->lr * s->wd, w, in);
    for (uint32_t j = r0; j < r1; j++) b[j] -= s->lr * (db[j] + s->wd * b[j]);
    return 1;
  }
  if (s && s->kind == FL__MOMENTUM && !s->prox_ref) {
    /* m = momentum m + dy^T x straight from the product, so the weight gradient is never
     * stored; then m += wd w; w -= lr m.  These rows of m are kept multiplied by the
     * momentum between steps (by the finish: zero at the start of a run, and read by
     * nothing else), so the product adds with beta 1 and OpenBLAS makes no scaling pass.
     * The same operations as fl__step_apply's momentum, in the same order: the same bits
     * with every kernel set (OpenBLAS's SkylakeX small-matrix kernel folds a beta other
     * than 1 into the product with one rounding). */
    float *m = s->m + l->w_off + (size_t)r0 * in, *w = p->params + l->w_off + (size_t)r0 * in;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, in, B, 1.0f, p->dy + r0, out,
                p->x, in, 1.0f, m, in);
    fl__momentum_finish(w, m, s->lr, s->wd, s->mom, (size_t)rows * in);
    fl__step_apply(s, p->params, db + r0, l->b_off + r0, r1 - r0);
    return 1;
  }
  /* beta 1 onto rows the trainer keeps at zero between steps (layers.h): OpenBLAS would
   * zero-fill them in a pass of its own for beta 0 */
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, in, B, 1.0f, p->dy + r0, out,
              p->x, in, 1.0f, p->grad + (size_t)r0 * in, in);
  return 0;
}

const fl__layer_ops fl__dense_ops = {
    .name = "dense",
    .parse = dense_parse,
    .forward = dense_forward,
    .backward = dense_backward,
    .param_grad = dense_param_grad,
    .row_split = 1,
};
