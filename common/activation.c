/* Element-wise layers: ReLU, sigmoid, tanh and inverted dropout.
 *
 * Each backward kernel uses the forward output (or the dropout mask), so no input copy
 * is kept.  The sigmoid never evaluates exp of a large positive number. */
#include "layers.h"

#include <math.h>

void fl__relu_forward(float *y, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    y[i] = v > 0.0f ? v : 0.0f;
  }
}

void fl__relu_backward(float *dx, const float *dy, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float d = dy[i]; /* loaded unconditionally, so the select vectorises */
    dx[i] = y[i] > 0.0f ? d : 0.0f;
  }
}

void fl__sigmoid_forward(float *y, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float e = expf(-fabsf(x[i]));
    y[i] = x[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  }
}

void fl__sigmoid_backward(float *dx, const float *dy, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

void fl__tanh_forward(float *y, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
}

void fl__tanh_backward(float *dx, const float *dy, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

void fl__dropout_forward(float *y, float *mask, const float *x, float p, fl_rng *r,
                         size_t n) {
  float keep = 1.0f / (1.0f - p);
  for (size_t i = 0; i < n; i++) {
    mask[i] = fl_rng_uniform(r) < p ? 0.0f : keep;
    y[i] = x[i] * mask[i];
  }
}

void fl__dropout_backward(float *dx, const float *dy, const float *mask, size_t n) {
  for (size_t i = 0; i < n; i++) dx[i] = dy[i] * mask[i];
}
