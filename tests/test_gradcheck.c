/* Finite-difference gradient checks: every layer type and every head, small random
 * shapes.  Analytic gradients from fl_trainer_grad against central differences of the
 * loss (float forward passes, h = 1e-3, tolerance well above float rounding).  Batchnorm
 * is checked in training (batch statistics) and evaluation (running statistics). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "rng.h"
#include "train.h"

#define BATCH 3

static void check_mode(const char *spec, uint64_t seed, int training) {
  fl_model *m = NULL;
  char err[256];
  cr_assert_eq(fl_model_create(spec, &m, err, sizeof err), 0, "%s", err);
  size_t P = fl_model_num_params(m), D = fl_model_input_dim(m), C = fl_model_output_dim(m);
  fl_trainer *t = fl_trainer_create(m, BATCH);
  cr_assert_not_null(t);
  float *w = malloc(P * sizeof *w), *g = calloc(P, sizeof *g);
  float x[BATCH * 256], y[BATCH];
  cr_assert(D <= 256);
  fl_rng r;
  fl_rng_seed(&r, seed);
  fl_model_init(m, w, seed);
  /* non-zero biases, so that their gradients flow through every path */
  for (size_t i = 0; i < P; i++)
    if (w[i] == 0.0f) w[i] = 0.1f * fl_rng_normal(&r);
  for (size_t i = 0; i < BATCH * D; i++) x[i] = fl_rng_normal(&r);
  for (int i = 0; i < BATCH; i++)
    y[i] = strstr(spec, "softmax") ? (float)fl_rng_below(&r, C)
           : strstr(spec, "bce")   ? (float)(i & 1)
                                   : fl_rng_normal(&r);
  double loss, lp, lm;
  cr_assert_eq(fl_trainer_grad(t, w, x, y, BATCH, training, 5, g, &loss), 0);
  cr_assert(isfinite(loss));
  const float h = 1e-3f;
  double worst = 0;
  size_t nonzero = 0;
  /* trained parameters only: the state (batchnorm's running statistics) has no gradient */
  size_t Pt = fl_model_num_trained(m);
  for (size_t i = Pt; i < P; i++) cr_assert_eq(g[i], 0.0f);
  for (size_t i = 0; i < Pt; i++) {
    float keep = w[i];
    w[i] = keep + h;
    cr_assert_eq(fl_trainer_grad(t, w, x, y, BATCH, training, 5, NULL, &lp), 0);
    w[i] = keep - h;
    cr_assert_eq(fl_trainer_grad(t, w, x, y, BATCH, training, 5, NULL, &lm), 0);
    w[i] = keep;
    double num = (lp - lm) / (2.0 * (double)h), ana = g[i];
    double diff = fabs(num - ana) / (1e-2 + fabs(num) + fabs(ana));
    if (diff > worst) worst = diff;
    nonzero += fabs(ana) > 1e-6;
    cr_expect(fabs(num - ana) < 2e-3 + 2e-2 * fabs(num), "%s: param %zu: analytic %g numeric %g",
              spec, i, ana, num);
  }
  cr_expect(nonzero > Pt / 3, "%s: only %zu of %zu gradients non-zero", spec, nonzero, Pt);
  /* gradients accumulate: a second pass doubles them */
  float *g2 = malloc(P * sizeof *g2);
  memcpy(g2, g, P * sizeof *g);
  cr_assert_eq(fl_trainer_grad(t, w, x, y, BATCH, training, 5, g2, &loss), 0);
  for (size_t i = 0; i < P; i++) cr_assert_float_eq(g2[i], 2.0f * g[i], 1e-6);
  free(g2);
  free(w);
  free(g);
  fl_trainer_free(t);
  fl_model_free(m);
}

static void check_spec(const char *spec, uint64_t seed) { check_mode(spec, seed, 1); }

Test(gradcheck, dense_tanh_softmax) { check_spec("in:5 dense:4 tanh dense:3 softmax", 1); }
Test(gradcheck, dense_sigmoid_bce) { check_spec("in:5 dense:4 sigmoid dense:1 sigmoid_bce", 2); }
Test(gradcheck, dense_relu_mse) { check_spec("in:4 dense:6 relu dense:1 mse", 3); }
Test(gradcheck, dropout) { check_spec("in:6 dense:5 dropout:0.4 dense:3 softmax", 4); }
Test(gradcheck, conv_relu_pool) {
  check_spec("in:2x6x6 conv:3:3 relu pool:2 dense:3 softmax", 5);
}
Test(gradcheck, conv_stacked_even_kernel_odd_pool) {
  check_spec("in:1x5x5 conv:2:2 tanh conv:3:3 sigmoid pool:2 dense:2 softmax", 6);
}
Test(gradcheck, conv_kernel_larger_than_image) {
  check_spec("in:2x3x3 conv:2:5 conv:2:1 dense:1 sigmoid_bce", 7);
}
Test(gradcheck, conv_stride) { check_spec("in:2x7x7 conv:3:3:s2 tanh dense:3 softmax", 8); }
Test(gradcheck, conv_stride_padding) {
  check_spec("in:1x6x6 conv:2:3:s2:p1 tanh conv:2:2:p0 dense:2 softmax", 9);
}
Test(gradcheck, conv_even_kernel_wide_padding_stride3) {
  check_spec("in:2x5x6 conv:3:4:s3:p2 sigmoid dense:2 softmax", 10);
}
Test(gradcheck, avgpool) { check_spec("in:2x6x6 conv:3:3 avgpool:2 dense:3 softmax", 11); }
Test(gradcheck, avgpool_overlapping_windows) {
  check_spec("in:1x7x7 avgpool:3:s2 dense:2 softmax", 12);
}
Test(gradcheck, avgpool_global) {
  check_spec("in:3x4x5 conv:2:3 avgpool:global dense:2 softmax", 13);
}
Test(gradcheck, batchnorm_dense) {
  check_spec("in:5 dense:4 batchnorm tanh dense:3 softmax", 14);
}
Test(gradcheck, batchnorm_conv) {
  check_spec("in:2x5x5 conv:3:3 batchnorm sigmoid pool:2 dense:2 softmax", 15);
}
Test(gradcheck, batchnorm_first_and_last) {
  check_spec("in:6 batchnorm dense:2 batchnorm softmax", 16);
}
Test(gradcheck, batchnorm_evaluation_mode) {
  check_mode("in:2x4x4 conv:3:3 batchnorm tanh dense:4 batchnorm dense:2 softmax", 17, 0);
}

/* The heads stay finite and exact for logits far outside exp's range. */
Test(gradcheck, heads_numerically_stable) {
  float z[3] = {1000.0f, 0.0f, -1000.0f}, y = 0.0f, loss, keep[3], dz[3];
  fl__softmax_forward(&loss, keep, z, &y, 1, 3);
  cr_assert_float_eq(loss, 0.0f, 1e-6);
  y = 2.0f;
  fl__softmax_forward(&loss, keep, z, &y, 1, 3);
  cr_assert_float_eq(loss, 2000.0f, 1e-2);
  fl__softmax_backward(dz, keep, &y, 1, 1, 3);
  cr_assert_float_eq(dz[0], 1.0f, 1e-6);
  cr_assert_float_eq(dz[2], -1.0f, 1e-6);
  float zb[2] = {200.0f, -200.0f}, yb[2] = {0.0f, 0.0f}, lb[2], kb[2];
  fl__bce_forward(lb, kb, zb, yb, 2, 1);
  cr_assert_float_eq(lb[0], 200.0f, 1e-3);
  cr_assert_float_eq(lb[1], 0.0f, 1e-6);
  cr_assert(isfinite(kb[0]) && isfinite(kb[1]));
}
