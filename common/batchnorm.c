/* Batch normalisation `batchnorm` (Ioffe and Szegedy 2015): each channel (of an image)
 * or feature (of a vector) is normalised by its mean and variance, then scaled and
 * shifted by trained parameters: y = gamma (x - mean) / sqrt(var + eps) + beta.
 *
 * In training the mean and (biased) variance are the batch's, over its samples and, for
 * an image, every pixel of the channel; each step also moves the running statistics
 * toward them (running = 0.9 running + 0.1 batch, the variance unbiased, as PyTorch
 * does).  Evaluation normalises with the running statistics, so a prediction does not
 * depend on the other samples of its batch.
 *
 * Tensors: gamma [C] (the weights, initialised to 1) and beta [C] (the bias, 0) are
 * trained; the running mean [C] and variance [C] (0 and 1 at first) are the layer's
 * state: in the model's flat buffer after every trained parameter, so they travel,
 * average and save with the model, but no optimizer touches them.  The layer is `local`:
 * with FedBN (train.h) all four stay on each client.
 *
 * In training the statistics cross samples, so the layer runs over the whole batch with
 * each thread taking a range of channels (channel_split); sums are taken in double over
 * the samples in order, so the result does not depend on the number of threads. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "layers.h"

#define EPS 1e-5
#define MOMENTUM 0.1f

enum { C_, HW_ }; /* l->arg: channels, values per channel per sample */

static int batchnorm_parse(fl__layer *l, const char *tok, const char *args, int *image,
                           char *canon, size_t canon_len, char *err, size_t errlen) {
  if (args)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' takes no argument", tok);
  uint32_t C = *image ? l->c : l->w, HW = *image ? l->h * l->w : 1;
  l->arg[C_] = C, l->arg[HW_] = HW;
  l->oc = l->c, l->oh = l->h, l->ow = l->w;
  l->w_len = C, l->b_len = C, l->s_len = 2 * (size_t)C;
  l->aux_len = (size_t)l->oc * l->oh * l->ow; /* x-hat */
  l->batch_len = 2 * (size_t)C;      /* the batch's mean and 1/std per channel */
  snprintf(canon, canon_len, "batchnorm");
  return 0;
}

static void batchnorm_init(const fl__layer *l, float *params, fl_rng *r) {
  (void)r;
  size_t C = l->arg[C_];
  for (size_t c = 0; c < C; c++) {
    params[l->w_off + c] = 1.0f;     /* gamma */
    params[l->b_off + c] = 0.0f;     /* beta */
    params[l->s_off + c] = 0.0f;     /* running mean */
    params[l->s_off + C + c] = 1.0f; /* running variance */
  }
}

/* x [B][C][HW] -> y, xhat [B][C][HW] */
static void batchnorm_forward(const fl__layer *l, const fl__pass *p) {
  size_t C = l->arg[C_], HW = l->arg[HW_];
  const float *gamma = p->params + l->w_off, *beta = p->params + l->b_off;
  float *rmean = p->params + l->s_off, *rvar = rmean + C, *xhat = p->aux;
  if (!p->training) { /* per sample, with the running statistics */
    for (int b = 0; b < p->B; b++)
      for (size_t c = 0; c < C; c++) {
        float m = rmean[c], is = (float)(1.0 / sqrt((double)rvar[c] + EPS));
        size_t o = ((size_t)b * C + c) * HW;
        for (size_t i = 0; i < HW; i++) {
          xhat[o + i] = (p->x[o + i] - m) * is;
          p->y[o + i] = gamma[c] * xhat[o + i] + beta[c];
        }
      }
    return;
  }
  double N = (double)p->B * (double)HW;
  for (uint32_t c = p->c0; c < p->c1; c++) {
    double s = 0.0, ss = 0.0;
    for (int b = 0; b < p->B; b++) {
      const float *x = p->x + ((size_t)b * C + c) * HW;
      for (size_t i = 0; i < HW; i++) s += x[i];
    }
    double mean = s / N;
    for (int b = 0; b < p->B; b++) {
      const float *x = p->x + ((size_t)b * C + c) * HW;
      for (size_t i = 0; i < HW; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    }
    double var = ss / N;
    float m = (float)mean, is = (float)(1.0 / sqrt(var + EPS));
    for (int b = 0; b < p->B; b++) {
      size_t o = ((size_t)b * C + c) * HW;
      for (size_t i = 0; i < HW; i++) {
        xhat[o + i] = (p->x[o + i] - m) * is;
        p->y[o + i] = gamma[c] * xhat[o + i] + beta[c];
      }
    }
    p->batch_aux[c] = m;
    p->batch_aux[C + c] = is;
    if (p->update_state) {
      float unbiased = (float)(N > 1.0 ? var * N / (N - 1.0) : var);
      rmean[c] = (1.0f - MOMENTUM) * rmean[c] + MOMENTUM * m;
      rvar[c] = (1.0f - MOMENTUM) * rvar[c] + MOMENTUM * unbiased;
    }
  }
}

/* Training: over the whole batch for channels [c0, c1), with the batch statistics:
 *   dbeta = sum dy, dgamma = sum dy xhat,
 *   dx = gamma / std / N (N dy - dbeta - xhat dgamma).
 * Evaluation mode (fl_trainer_grad without training): the running statistics are
 * constants, so dx = gamma / std dy, and the parameter gradients are these samples' sums. */
static void batchnorm_backward(const fl__layer *l, const fl__pass *p) {
  size_t C = l->arg[C_], HW = l->arg[HW_];
  const float *gamma = p->params + l->w_off, *xhat = p->aux;
  float *dgamma = p->grad, *dbeta = p->grad + l->w_len;
  if (!p->training) {
    const float *rvar = p->params + l->s_off + C;
    for (size_t c = 0; c < C; c++) dgamma[c] = dbeta[c] = 0.0f;
    for (int b = 0; b < p->B; b++)
      for (size_t c = 0; c < C; c++) {
        float k = gamma[c] * (float)(1.0 / sqrt((double)rvar[c] + EPS));
        size_t o = ((size_t)b * C + c) * HW;
        for (size_t i = 0; i < HW; i++) {
          dgamma[c] += p->dy[o + i] * xhat[o + i];
          dbeta[c] += p->dy[o + i];
          if (p->dx) p->dx[o + i] = k * p->dy[o + i];
        }
      }
    return;
  }
  double N = (double)p->B * (double)HW;
  for (uint32_t c = p->c0; c < p->c1; c++) {
    double sd = 0.0, sdx = 0.0;
    for (int b = 0; b < p->B; b++) {
      size_t o = ((size_t)b * C + c) * HW;
      for (size_t i = 0; i < HW; i++) {
        sd += p->dy[o + i];
        sdx += (double)p->dy[o + i] * xhat[o + i];
      }
    }
    dbeta[c] = (float)sd;
    dgamma[c] = (float)sdx;
    if (!p->dx) continue;
    float k = (float)(gamma[c] * p->batch_aux[C + c] / N), n = (float)N;
    float db = (float)sd, dg = (float)sdx;
    for (int b = 0; b < p->B; b++) {
      size_t o = ((size_t)b * C + c) * HW;
      for (size_t i = 0; i < HW; i++)
        p->dx[o + i] = k * (n * p->dy[o + i] - db - xhat[o + i] * dg);
    }
  }
}

const fl__layer_ops fl__batchnorm_ops = {
    .name = "batchnorm",
    .parse = batchnorm_parse,
    .init = batchnorm_init,
    .forward = batchnorm_forward,
    .backward = batchnorm_backward,
    .channel_split = 1,
    .local = 1,
};
