/* Layer kernels against direct implementations: convolution with stride and padding,
 * average pooling, batch normalisation in training (batch statistics, running statistics
 * updated) and in evaluation (running statistics); and the layer table's promise that a
 * model names no layer outside its file (tokens resolve through the table). */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "rng.h"
#include "train.h"

static void one_blas_thread(void) { openblas_set_num_threads(1); }

static fl_model *create(const char *spec) {
  fl_model *m = NULL;
  char err[256];
  cr_assert_eq(fl_model_create(spec, &m, err, sizeof err), 0, "%s: %s", spec, err);
  return m;
}

static float *randn(size_t n, fl_rng *r) {
  float *p = malloc(n * sizeof *p);
  for (size_t i = 0; i < n; i++) p[i] = fl_rng_normal(r);
  return p;
}

/* Runs layer 0 of the model forward on B samples (one thread, all channels). */
static void forward0(const fl_model *m, float *params, const float *x, float *y, int B,
                     int training) {
  const fl__layer *l = &m->layers[0];
  float *aux = calloc((size_t)B * l->aux_len + l->batch_len + 1, sizeof(float));
  float *scratch = calloc(l->scratch + 1, sizeof(float));
  fl__pass p = {.B = B, .batch = B, .training = training, .update_state = training,
                .x = x, .y = y, .params = params, .aux = aux,
                .batch_aux = aux + (size_t)B * l->aux_len, .scratch = scratch, .c0 = 0,
                .c1 = (uint32_t)l->b_len};
  l->ops->forward(l, &p);
  free(aux);
  free(scratch);
}

/* conv:K:F with stride S and padding (pt before, pb after) against the definition. */
static void check_conv(const char *spec, int C, int H, int W, int K, int F, int S, int pt,
                       int pb) {
  enum { B = 2 };
  fl_model *m = create(spec);
  const fl__layer *l = &m->layers[0];
  int OH = (H + pt + pb - F) / S + 1, OW = (W + pt + pb - F) / S + 1;
  cr_assert_eq(l->oh, (uint32_t)OH, "%s: height %u, expected %d", spec, l->oh, OH);
  cr_assert_eq(l->ow, (uint32_t)OW, "%s: width %u, expected %d", spec, l->ow, OW);
  fl_rng r;
  fl_rng_seed(&r, 9);
  float *x = randn((size_t)B * C * H * W, &r), *params = randn(fl_model_num_params(m), &r);
  float *y = malloc(sizeof(float) * B * l->out_size);
  forward0(m, params, x, y, B, 1);
  const float *w = params + l->w_off, *b = params + l->b_off;
  for (int n = 0; n < B; n++)
    for (int k = 0; k < K; k++)
      for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++) {
          double s = b[k];
          for (int c = 0; c < C; c++)
            for (int ky = 0; ky < F; ky++)
              for (int kx = 0; kx < F; kx++) {
                int iy = oy * S + ky - pt, ix = ox * S + kx - pt;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += (double)w[((k * C + c) * F + ky) * F + kx] *
                     x[((n * C + c) * H + iy) * W + ix];
              }
          float got = y[((n * K + k) * OH + oy) * OW + ox];
          cr_assert(fabs(got - s) < 1e-4 * (1 + fabs(s)), "%s: y[%d][%d][%d][%d] = %g, expected %g",
                    spec, n, k, oy, ox, (double)got, s);
        }
  free(x), free(params), free(y);
  fl_model_free(m);
}

Test(layers, conv_matches_naive, .init = one_blas_thread) {
  check_conv("in:3x5x6 conv:4:3 dense:2 softmax", 3, 5, 6, 4, 3, 1, 1, 1);
  check_conv("in:2x6x5 conv:3:4 dense:2 softmax", 2, 6, 5, 3, 4, 1, 1, 2);
  check_conv("in:2x7x7 conv:3:3:s2 dense:2 softmax", 2, 7, 7, 3, 3, 2, 1, 1);
  check_conv("in:1x6x6 conv:2:3:s2:p1 dense:2 softmax", 1, 6, 6, 2, 3, 2, 1, 1);
  check_conv("in:2x5x6 conv:3:4:s3:p2 dense:2 softmax", 2, 5, 6, 3, 4, 3, 2, 2);
  check_conv("in:3x8x8 conv:2:5:p0 dense:2 softmax", 3, 8, 8, 2, 5, 1, 0, 0);
  check_conv("in:1x9x7 conv:2:2:s2:p0 dense:2 softmax", 1, 9, 7, 2, 2, 2, 0, 0);
}

static void check_avgpool(const char *spec, int C, int H, int W, int FH, int FW, int S) {
  enum { B = 2 };
  fl_model *m = create(spec);
  const fl__layer *l = &m->layers[0];
  int OH = (H - FH) / S + 1, OW = (W - FW) / S + 1;
  cr_assert_eq(l->oh, (uint32_t)OH);
  cr_assert_eq(l->ow, (uint32_t)OW);
  fl_rng r;
  fl_rng_seed(&r, 10);
  float *x = randn((size_t)B * C * H * W, &r), *y = malloc(sizeof(float) * B * l->out_size);
  forward0(m, NULL, x, y, B, 1);
  for (int n = 0; n < B * C; n++)
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        double s = 0;
        for (int ky = 0; ky < FH; ky++)
          for (int kx = 0; kx < FW; kx++) s += x[(n * H + oy * S + ky) * W + ox * S + kx];
        s /= FH * FW;
        cr_assert(fabs(y[(n * OH + oy) * OW + ox] - s) < 1e-5, "%s", spec);
      }
  free(x), free(y);
  fl_model_free(m);
}

Test(layers, avgpool_matches_naive) {
  check_avgpool("in:2x6x6 avgpool:2 dense:2 softmax", 2, 6, 6, 2, 2, 2);
  check_avgpool("in:1x7x7 avgpool:3:s2 dense:2 softmax", 1, 7, 7, 3, 3, 2);
  check_avgpool("in:3x5x5 avgpool:2 dense:2 softmax", 3, 5, 5, 2, 2, 2); /* trailing cut */
  check_avgpool("in:2x3x4 avgpool:global dense:2 softmax", 2, 3, 4, 3, 4, 3);
}

/* Training: every channel comes out with mean 0 and variance 1 (gamma 1, beta 0), and
 * the running statistics move a tenth of the way to the batch's (variance unbiased).
 * Evaluation: the running statistics, sample by sample. */
Test(layers, batchnorm_statistics) {
  enum { B = 4, C = 3, HW = 5 };
  fl_model *m = create("in:3x1x5 batchnorm dense:2 softmax");
  const fl__layer *l = &m->layers[0];
  cr_assert_eq(l->w_len, C);
  cr_assert_eq(l->s_len, 2 * C);
  cr_assert_eq(l->s_off, fl_model_num_trained(m));
  float *params = calloc(fl_model_num_params(m), sizeof(float));
  fl_model_init(m, params, 1);
  for (int c = 0; c < C; c++) {
    cr_assert_eq(params[l->w_off + c], 1.0f);
    cr_assert_eq(params[l->s_off + C + c], 1.0f);
  }
  fl_rng r;
  fl_rng_seed(&r, 11);
  float x[B * C * HW], y[B * C * HW];
  for (int i = 0; i < B * C * HW; i++) x[i] = 3.0f + 2.0f * fl_rng_normal(&r);
  forward0(m, params, x, y, B, 1);
  for (int c = 0; c < C; c++) {
    double mx = 0, my = 0, vx = 0, vy = 0;
    for (int b = 0; b < B; b++)
      for (int i = 0; i < HW; i++) mx += x[(b * C + c) * HW + i], my += y[(b * C + c) * HW + i];
    mx /= B * HW, my /= B * HW;
    for (int b = 0; b < B; b++)
      for (int i = 0; i < HW; i++) {
        double dx = x[(b * C + c) * HW + i] - mx, dy = y[(b * C + c) * HW + i] - my;
        vx += dx * dx, vy += dy * dy;
      }
    cr_assert(fabs(my) < 1e-5, "channel %d mean %g", c, my);
    cr_assert(fabs(vy / (B * HW) - 1.0) < 1e-3, "channel %d variance %g", c, vy / (B * HW));
    cr_assert_float_eq(params[l->s_off + c], 0.1 * mx, 1e-5);
    cr_assert_float_eq(params[l->s_off + C + c], 0.9 + 0.1 * vx / (B * HW - 1), 1e-5);
  }
  /* evaluation: (x - running mean) / sqrt(running var + eps) * gamma + beta */
  for (int c = 0; c < C; c++) {
    params[l->w_off + c] = 0.5f + (float)c;   /* gamma */
    params[l->b_off + c] = -1.0f + (float)c;  /* beta */
  }
  forward0(m, params, x, y, 1, 0);
  for (int c = 0; c < C; c++)
    for (int i = 0; i < HW; i++) {
      double want = (x[c * HW + i] - params[l->s_off + c]) /
                        sqrt(params[l->s_off + C + c] + 1e-5) * (0.5 + c) - 1.0 + c;
      cr_assert_float_eq(y[c * HW + i], want, 1e-5);
    }
  free(params);
  fl_model_free(m);
}

/* fl_train keeps the running statistics in the state part of the buffer and never gives
 * it to the optimizer: with lr 0 the trained parameters stay, the state moves. */
Test(layers, batchnorm_state_is_not_trained, .init = one_blas_thread) {
  fl_model *m = create("in:6 dense:5 batchnorm relu dense:3 softmax");
  size_t P = fl_model_num_params(m), Pt = fl_model_num_trained(m);
  cr_assert_eq(P, Pt + 10);
  fl_dataset d = {.n = 40, .dim = 6, .num_classes = 3};
  fl_rng r;
  fl_rng_seed(&r, 12);
  d.x = randn(40 * 6, &r);
  d.y = malloc(40 * sizeof(float));
  for (int i = 0; i < 40; i++) {
    d.y[i] = (float)(i % 3);
    for (int j = 0; j < 6; j++) d.x[i * 6 + j] += 5.0f + 2.0f * (j == i % 3);
  }
  fl_subset s = {&d, NULL, d.n};
  float *w = malloc(P * sizeof *w), *w0 = malloc(P * sizeof *w0);
  fl_model_init(m, w, 1);
  memcpy(w0, w, P * sizeof *w);
  fl_trainer *t = fl_trainer_create(m, 8);
  fl_train_config c = fl_train_config_default();
  fl_optimizer_parse("adamw", &c);
  c.lr = 0.0f, c.weight_decay = 0.5f, c.batch_size = 8;
  cr_assert_eq(fl_train(t, w, &s, &c, NULL, NULL, NULL), 0);
  cr_assert_eq(memcmp(w, w0, Pt * sizeof *w), 0, "lr 0 changed a trained parameter");
  cr_assert_neq(memcmp(w + Pt, w0 + Pt, (P - Pt) * sizeof *w), 0, "running statistics stayed");
  for (size_t i = Pt; i < P; i++) cr_assert(isfinite(w[i]));
  /* and with a learning rate the model learns through it */
  c.lr = 0.01f, c.weight_decay = 0, c.epochs = 30;
  fl_eval before, after;
  cr_assert_eq(fl_evaluate(t, w, &s, &before), 0);
  cr_assert_eq(fl_train(t, w, &s, &c, NULL, NULL, NULL), 0);
  cr_assert_eq(fl_evaluate(t, w, &s, &after), 0);
  cr_assert(after.loss < before.loss * 0.5, "loss %g -> %g", before.loss, after.loss);
  cr_assert(after.accuracy > 0.9, "accuracy %g", after.accuracy);
  fl_trainer_free(t);
  free(w), free(w0);
  fl_dataset_free(&d);
  fl_model_free(m);
}

/* FedBN's local tensors: exactly the batchnorm layers' gamma, beta and statistics. */
Test(layers, local_tensors_are_the_batchnorm_layers) {
  fl_model *m = create("in:1x6x6 conv:2:3 batchnorm relu dense:4 batchnorm dense:2 softmax");
  size_t P = fl_model_num_params(m), n = fl_model_local_size(m);
  cr_assert_eq(n, 4 * 2 + 4 * 4);
  float *a = malloc(P * sizeof *a), *b = malloc(P * sizeof *b), *loc = malloc(n * sizeof *loc);
  for (size_t i = 0; i < P; i++) a[i] = (float)i, b[i] = -1.0f;
  fl_model_local_get(m, a, loc);
  fl_model_local_put(m, b, loc);
  size_t copied = 0;
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    int local = strcmp(l->ops->name, "batchnorm") == 0;
    const size_t off[3] = {l->w_off, l->b_off, l->s_off}, len[3] = {l->w_len, l->b_len, l->s_len};
    for (int k = 0; k < 3; k++)
      for (size_t j = off[k]; j < off[k] + len[k]; j++) {
        cr_assert_eq(b[j], local ? a[j] : -1.0f, "param %zu of layer %d", j, i);
        copied += local;
      }
  }
  cr_assert_eq(copied, n);
  size_t untouched = 0;
  for (size_t i = 0; i < P; i++) untouched += b[i] == -1.0f;
  cr_assert_eq(untouched, P - n);
  fl_model *plain = create("2nn");
  cr_assert_eq(fl_model_local_size(plain), 0);
  fl_model_free(plain);
  free(a), free(b), free(loc);
  fl_model_free(m);
}

/* pool:2 forward and backward against the definition, bit for bit: the window's first
 * maximum in the order (0,0) (0,1) (1,0) (1,1), with the same comparisons (a NaN where
 * the window starts is kept, a later NaN never wins, -0 and +0 keep the first), of
 * max(x, 0) when the ReLU before it is folded in (relu_in); dx the output gradient at
 * each window's winner (none where the folded ReLU's output is 0), 0 elsewhere, the
 * trailing odd row and column included.  Values from a few levels, so windows tie. */
static void check_maxpool(int C, int H, int W, int relu_in) {
  enum { B = 3 };
  char spec[96];
  snprintf(spec, sizeof spec, "in:%dx%dx%d pool:2 dense:2 softmax", C, H, W);
  fl_model *m = create(spec);
  const fl__layer *l = &m->layers[0];
  int OH = H / 2, OW = W / 2;
  size_t n = (size_t)B * C * H * W, on = (size_t)B * C * OH * OW;
  fl_rng r;
  fl_rng_seed(&r, (uint64_t)(H * 131 + W * 7 + relu_in));
  float *x = malloc(n * sizeof *x), *y = malloc(on * sizeof *y), *dy = randn(on, &r);
  float *dx = malloc(n * sizeof *dx);
  static const float levels[] = {-1.0f, -0.0f, 0.0f, 0.5f, 1.0f, 2.0f, NAN};
  for (size_t i = 0; i < n; i++) x[i] = levels[fl_rng_below(&r, 7)];
  for (size_t i = 0; i < n; i++) dx[i] = 99.0f; /* every element must be written */
  int32_t *arg = calloc(on + 1, sizeof *arg);
  fl__pass p = {.B = B, .batch = B, .training = 1, .x = x, .y = y, .aux = arg, .dy = dy,
                .dx = dx, .relu_in = relu_in, .c0 = 0, .c1 = 0};
  l->ops->forward(l, &p);
  l->ops->backward(l, &p);
  float *want_dx = calloc(n, sizeof *want_dx);
  for (int bc = 0; bc < B * C; bc++)
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        size_t i0 = ((size_t)bc * H + 2 * oy) * W + 2 * ox, at[4] = {i0, i0 + 1, i0 + W, i0 + W + 1};
        float v[4];
        for (int k = 0; k < 4; k++) v[k] = relu_in ? (x[at[k]] > 0.0f ? x[at[k]] : 0.0f) : x[at[k]];
        float top = v[1] > v[0] ? v[1] : v[0], bot = v[3] > v[2] ? v[3] : v[2];
        size_t itop = v[1] > v[0] ? at[1] : at[0], ibot = v[3] > v[2] ? at[3] : at[2];
        float want = bot > top ? bot : top;
        size_t win = bot > top ? ibot : itop, o = ((size_t)bc * OH + oy) * OW + ox;
        cr_assert(memcmp(&y[o], &want, sizeof want) == 0,
                  "%s relu_in %d: y[%zu] = %g, expected %g", spec, relu_in, o, (double)y[o],
                  (double)want);
        want_dx[win] = !relu_in || want > 0.0f ? dy[o] : 0.0f;
      }
  for (size_t i = 0; i < n; i++)
    cr_assert(memcmp(&dx[i], &want_dx[i], sizeof *dx) == 0,
              "%s relu_in %d: dx[%zu] = %g, expected %g", spec, relu_in, i, (double)dx[i],
              (double)want_dx[i]);
  free(x), free(y), free(dy), free(dx), free(arg), free(want_dx);
  fl_model_free(m);
}

Test(layers, maxpool_matches_definition) {
  static const int dims[][3] = {{1, 2, 2},  {2, 4, 6},   {1, 5, 7},   {3, 28, 28},
                                {2, 14, 14}, {1, 3, 9},   {2, 7, 34},  {1, 9, 65},
                                {1, 6, 17}, {2, 2, 40}};
  for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
    for (int rl = 0; rl <= 1; rl++) check_maxpool(dims[i][0], dims[i][1], dims[i][2], rl);
}
