/* Fused output heads: softmax cross-entropy, sigmoid binary cross-entropy, squared error.
 *
 * Fusing the last activation with its loss gives the simple gradient (p - y) and lets
 * the loss be computed stably: log-sum-exp with the maximum subtracted for softmax, and
 * softplus(z) - y*z = max(z, 0) - y*z + log1p(exp(-|z|)) for the binary head, so no
 * logit, however large, produces an overflow or log(0). */
#include "layers.h"

#include <math.h>

void fl__softmax_forward(float *loss, float *keep, const float *z, const float *y, int B,
                         int C) {
  for (int i = 0; i < B; i++) {
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

void fl__softmax_backward(float *dz, const float *keep, const float *y, int B, int C) {
  float scale = 1.0f / (float)B;
  for (int i = 0; i < B; i++) {
    const float *pi = keep + (size_t)i * C;
    float *di = dz + (size_t)i * C;
    for (int j = 0; j < C; j++) di[j] = pi[j] * scale;
    di[(int)y[i]] -= scale;
  }
}

void fl__bce_forward(float *loss, float *keep, const float *z, const float *y, int B) {
  for (int i = 0; i < B; i++) {
    float zi = z[i], e = expf(-fabsf(zi));
    loss[i] = (zi > 0.0f ? zi : 0.0f) - y[i] * zi + log1pf(e);
    keep[i] = zi >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  }
}

void fl__bce_backward(float *dz, const float *keep, const float *y, int B) {
  float scale = 1.0f / (float)B;
  for (int i = 0; i < B; i++) dz[i] = (keep[i] - y[i]) * scale;
}

void fl__mse_forward(float *loss, float *keep, const float *z, const float *y, int B) {
  for (int i = 0; i < B; i++) {
    keep[i] = z[i] - y[i];
    loss[i] = keep[i] * keep[i];
  }
}

void fl__mse_backward(float *dz, const float *keep, int B) {
  float scale = 2.0f / (float)B;
  for (int i = 0; i < B; i++) dz[i] = keep[i] * scale;
}
