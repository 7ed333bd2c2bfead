/* Fused output heads, the spec's last token: softmax cross-entropy, sigmoid binary
 * cross-entropy, squared error.
 *
 * Fusing the last activation with its loss gives the simple gradient (p - y) and lets
 * the loss be computed stably: log-sum-exp with the maximum subtracted for softmax, and
 * softplus(z) - y*z = max(z, 0) - y*z + log1p(exp(-|z|)) for the binary head, so no
 * logit, however large, produces an overflow or log(0).  Each kernel works on n samples
 * of a batch (a thread's slice); backward takes the batch size B for the mean. */
#include <math.h>
#include <string.h>

#include "layers.h"

void fl__softmax_forward(float *loss, float *keep, const float *z, const float *y, int n,
                         int C) {
  for (int i = 0; i < n; i++) {
    const float *zi = z + (size_t)i * C;
    float *pi = keep + (size_t)i * C;
    float mx = zi[0];
    for (int j = 1; j < C; j++) mx = zi[j] > mx ? zi[j] : mx;
    float s = 0.0f;
    for (int j = 0; j < C; j++) {
      pi[j] = expf(zi[j] - mx);
      s += pi[j];
    }
    float inv = 1.0f / s;
    for (int j = 0; j < C; j++) pi[j] *= inv;
    loss[i] = logf(s) + mx - zi[(int)y[i]];
  }
}

void fl__softmax_backward(float *dz, const float *keep, const float *y, int n, int B, int C) {
  float scale = 1.0f / (float)B;
  for (int i = 0; i < n; i++) {
    const float *pi = keep + (size_t)i * C;
    float *di = dz + (size_t)i * C;
    for (int j = 0; j < C; j++) di[j] = pi[j] * scale;
    di[(int)y[i]] -= scale;
  }
}

static size_t softmax_correct(const float *keep, const float *z, const float *y, int n,
                              int C) {
  (void)z;
  size_t correct = 0;
  for (int i = 0; i < n; i++) {
    const float *pi = keep + (size_t)i * C;
    int best = 0;
    for (int j = 1; j < C; j++)
      if (pi[j] > pi[best]) best = j;
    correct += best == (int)y[i];
  }
  return correct;
}

static int softmax_label_ok(float v, size_t C) {
  return isfinite(v) && v >= 0.0f && v < (float)C && v == floorf(v);
}

void fl__bce_forward(float *loss, float *keep, const float *z, const float *y, int n, int C) {
  (void)C;
  for (int i = 0; i < n; i++) {
    float zi = z[i], e = expf(-fabsf(zi));
    loss[i] = (zi > 0.0f ? zi : 0.0f) - y[i] * zi + log1pf(e);
    keep[i] = zi >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  }
}

static void bce_backward(float *dz, const float *keep, const float *y, int n, int B, int C) {
  (void)C;
  float scale = 1.0f / (float)B;
  for (int i = 0; i < n; i++) dz[i] = (keep[i] - y[i]) * scale;
}

static size_t bce_correct(const float *keep, const float *z, const float *y, int n, int C) {
  (void)keep, (void)C;
  size_t correct = 0;
  for (int i = 0; i < n; i++) correct += (z[i] > 0.0f) == (y[i] > 0.5f);
  return correct;
}

static int bce_label_ok(float v, size_t C) {
  (void)C;
  return v == 0.0f || v == 1.0f;
}

static void mse_forward(float *loss, float *keep, const float *z, const float *y, int n,
                        int C) {
  (void)C;
  for (int i = 0; i < n; i++) {
    keep[i] = z[i] - y[i];
    loss[i] = keep[i] * keep[i];
  }
}

static void mse_backward(float *dz, const float *keep, const float *y, int n, int B, int C) {
  (void)y, (void)C;
  float scale = 2.0f / (float)B;
  for (int i = 0; i < n; i++) dz[i] = keep[i] * scale;
}

static size_t mse_correct(const float *keep, const float *z, const float *y, int n, int C) {
  (void)keep, (void)z, (void)y, (void)n, (void)C;
  return 0;
}

static int mse_label_ok(float v, size_t C) {
  (void)C;
  return isfinite(v);
}

static const fl__head_ops heads[] = {
    {"softmax", 2, SIZE_MAX, "use sigmoid_bce for a binary task", fl__softmax_forward,
     fl__softmax_backward, softmax_correct, softmax_label_ok, 0, 0},
    {"sigmoid_bce", 1, 1, "add dense:1", fl__bce_forward, bce_backward, bce_correct,
     bce_label_ok, 0, 1},
    {"mse", 1, 1, "add dense:1", mse_forward, mse_backward, mse_correct, mse_label_ok, 1, 0},
};

const fl__head_ops *fl__head_find(const char *tok) {
  for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++)
    if (strcmp(tok, heads[i].name) == 0) return &heads[i];
  return NULL;
}
