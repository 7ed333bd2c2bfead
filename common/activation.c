/* Element-wise activations `relu`, `sigmoid`, `tanh`: three layer types that differ only
 * in their function and its derivative, so they share this file.
 *
 * Each backward kernel uses the forward output, so no input copy is kept.  The sigmoid
 * never evaluates exp of a large positive number. */
#include <math.h>
#include <stdio.h>

#include "error.h"
#include "layers.h"

static int activation_parse(fl__layer *l, const char *tok, const char *args, int *image,
                            char *canon, size_t canon_len, char *err, size_t errlen) {
  (void)image;
  if (args)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' takes no argument", tok);
  l->oc = l->c, l->oh = l->h, l->ow = l->w;
  snprintf(canon, canon_len, "%s", tok);
  return 0;
}

static size_t count(const fl__layer *l, const fl__pass *p) {
  return (size_t)p->B * l->out_size;
}

static void relu_forward(const fl__layer *l, const fl__pass *p) {
  const float *x = p->x;
  float *y = p->y;
  for (size_t i = 0, n = count(l, p); i < n; i++) {
    float v = x[i];
    y[i] = v > 0.0f ? v : 0.0f;
  }
}

static void relu_backward(const fl__layer *l, const fl__pass *p) {
  const float *dy = p->dy, *y = p->y;
  float *dx = p->dx;
  if (!dx) return;
  for (size_t i = 0, n = count(l, p); i < n; i++) {
    float d = dy[i]; /* loaded unconditionally, so the select vectorises */
    dx[i] = y[i] > 0.0f ? d : 0.0f;
  }
}

static void sigmoid_forward(const fl__layer *l, const fl__pass *p) {
  const float *x = p->x;
  float *y = p->y;
  for (size_t i = 0, n = count(l, p); i < n; i++) {
    float e = expf(-fabsf(x[i]));
    y[i] = x[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  }
}

static void sigmoid_backward(const fl__layer *l, const fl__pass *p) {
  const float *dy = p->dy, *y = p->y;
  float *dx = p->dx;
  if (!dx) return;
  for (size_t i = 0, n = count(l, p); i < n; i++) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

static void tanh_forward(const fl__layer *l, const fl__pass *p) {
  const float *x = p->x;
  float *y = p->y;
  for (size_t i = 0, n = count(l, p); i < n; i++) y[i] = tanhf(x[i]);
}

static void tanh_backward(const fl__layer *l, const fl__pass *p) {
  const float *dy = p->dy, *y = p->y;
  float *dx = p->dx;
  if (!dx) return;
  for (size_t i = 0, n = count(l, p); i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

const fl__layer_ops fl__relu_ops = {
    .name = "relu",
    .parse = activation_parse,
    .forward = relu_forward,
    .backward = relu_backward,
    .relu = 1,
    .is_relu = 1,
};

const fl__layer_ops fl__sigmoid_ops = {
    .name = "sigmoid",
    .parse = activation_parse,
    .forward = sigmoid_forward,
    .backward = sigmoid_backward,
};

const fl__layer_ops fl__tanh_ops = {
    .name = "tanh",
    .parse = activation_parse,
    .forward = tanh_forward,
    .backward = tanh_backward,
};
