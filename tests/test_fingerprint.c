/* Same seed, same bits, across changes of the training core's structure.
 *
 * Each case trains a model on synthetic data with a fixed seed (one thread) and hashes
 * the weights and the last epoch's training loss.  The expected hashes were produced by
 * the training core as it was before its layers moved into a table of operations (commit
 * 88d879d, one BLAS thread): a refactoring that keeps these hashes changes no result.
 * Cases with clip_norm 1e30 take the separate optimizer pass (clipping needs the whole
 * gradient first) with a clip factor of exactly 1, so they pin that pass too.
 *
 * The bits also depend on OpenBLAS's kernels, which it picks for the CPU at run time: the
 * hashes were recorded with its Haswell kernels (OpenBLAS 0.3.21 on this project's AMD
 * EPYC machine).  `make test` asks OpenBLAS for those kernels on every CPU with AVX2 and
 * FMA (OPENBLAS_CORETYPE=Haswell); where OpenBLAS still uses others the test says so and
 * skips rather than compare bits it cannot reproduce. */
#include <cblas.h>
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "train.h"

char *openblas_get_corename(void); /* OpenBLAS's own, not in cblas.h */
#define RECORDED_CORE "Haswell"

static void one_blas_thread(void) { openblas_set_num_threads(1); }

typedef struct fp_case {
  const char *spec, *optimizer;
  uint32_t batch, samples, epochs;
  float lr, wd, clip, prox;
  uint64_t expect;
} fp_case;

#define IMG "in:1x12x12 conv:4:3 relu pool:2 dropout:0.1 dense:16 relu dense:4 softmax"
#define ACT "in:20 dense:16 tanh dropout:0.3 dense:8 sigmoid dense:1 mse"
#define BCE "in:1x9x9 conv:3:2 sigmoid conv:2:3 tanh pool:2 dense:6 dropout:0.5 dense:1 sigmoid_bce"

static const fp_case cases[] = {
    {"2nn", "sgd", 10, 120, 2, 0.05f, 0, 0, 0, 0x438a59249eae6b8bULL},
    {"2nn", "sgd", 32, 100, 1, 0.05f, 1e-3f, 0, 0, 0xb64c05f0047a6d08ULL},
    {"2nn", "momentum", 10, 120, 2, 0.02f, 0, 0, 0, 0x1b158e44c349aa7aULL},
    {"2nn", "momentum", 10, 120, 2, 0.02f, 0, 1e30f, 0, 0x1b158e44c349aa7aULL},
    {"2nn", "nesterov", 16, 100, 1, 0.02f, 1e-3f, 0, 0, 0xbcd167079026a349ULL},
    {"2nn", "adam", 10, 100, 1, 1e-3f, 0, 0, 0, 0x94a59e8080236ae0ULL},
    {"2nn", "adam", 10, 100, 1, 1e-3f, 0, 1e30f, 0, 0x94a59e8080236ae0ULL},
    {"2nn", "adamw", 64, 150, 1, 1e-3f, 1e-2f, 0, 0, 0x33186dad4e4af40eULL},
    {"2nn", "momentum", 10, 100, 1, 0.02f, 0, 0.5f, 0, 0x4a17d4ae76c62780ULL},
    {"2nn", "sgd", 10, 100, 1, 0.05f, 0, 0, 0.1f, 0x03074e4e566c271cULL},
    {"2nn", "adam", 10, 100, 1, 1e-3f, 0, 0, 0.1f, 0x4ef33edda0a9ccd7ULL},
    {"logreg", "sgd", 16, 100, 2, 0.1f, 0, 0, 0, 0xab746e0d47ce0e6cULL},
    {"logreg", "adamw", 16, 100, 2, 1e-2f, 1e-2f, 0, 0, 0xa0038cfc1cba4c15ULL},
    {"cnn", "sgd", 8, 24, 1, 0.02f, 0, 0, 0, 0xd0ad1a2a0fae14e0ULL},
    {"cnn", "momentum", 8, 24, 1, 0.01f, 1e-3f, 0, 0, 0x2e8833caaac32610ULL},
    {"cnn", "adam", 8, 24, 1, 1e-3f, 0, 0, 0, 0x1731b0965b9e44bbULL},
    {IMG, "sgd", 7, 60, 2, 0.05f, 0, 0, 0, 0x7d4fc64247ab5837ULL},
    {IMG, "nesterov", 7, 60, 2, 0.02f, 0, 0, 0, 0xf306b374e82a9441ULL},
    {IMG, "adam", 7, 60, 2, 1e-3f, 0, 0, 0, 0xd3dda73c88d3959eULL},
    {ACT, "sgd", 5, 50, 3, 0.05f, 0, 0, 0, 0xbcf2f08d261e03bfULL},
    {ACT, "adamw", 5, 50, 3, 1e-2f, 1e-2f, 0, 0, 0x9b0559bccdce6ac4ULL},
    {BCE, "momentum", 4, 40, 2, 0.02f, 0, 0, 0, 0x07a613da0e4f08c4ULL},
    {BCE, "adam", 4, 40, 2, 1e-3f, 0, 0, 0, 0x2eabb800d43fac5cULL},
    {"mlp64", "sgd", 10, 80, 2, 0.05f, 0, 0, 0, 0x38f7ebe26b03a8b4ULL},
};

/* FNV-1a over the little-endian bit patterns of the floats, then the loss's double. */
static uint64_t fingerprint(const float *w, size_t n, double loss) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &w[i], 4);
    for (int k = 0; k < 4; k++) h = (h ^ ((u >> (8 * k)) & 0xff)) * 0x100000001b3ULL;
  }
  uint64_t u;
  memcpy(&u, &loss, 8);
  for (int k = 0; k < 8; k++) h = (h ^ ((u >> (8 * k)) & 0xff)) * 0x100000001b3ULL;
  return h;
}

/* Inputs N(0,1) plus 2 at the feature of the sample's class; labels for the model's head. */
static void synthetic(fl_dataset *d, const fl_model *m, size_t n, uint64_t seed) {
  size_t dim = fl_model_input_dim(m), out = fl_model_output_dim(m);
  const char *spec = fl_model_spec(m);
  int classes = out > 1 ? (int)out : 2;
  memset(d, 0, sizeof *d);
  d->n = n, d->dim = dim, d->num_classes = classes;
  d->x = malloc(n * dim * sizeof *d->x);
  d->y = malloc(n * sizeof *d->y);
  fl_rng r;
  fl_rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++) {
    int k = (int)fl_rng_below(&r, (uint64_t)classes);
    for (size_t j = 0; j < dim; j++)
      d->x[i * dim + j] = fl_rng_normal(&r) + (j == (size_t)k) * 2.0f;
    d->y[i] = strstr(spec, " mse") ? (float)k * 0.5f - 0.25f : (float)k;
  }
}

static uint64_t run_case(const fp_case *c) {
  fl_model *m = NULL;
  char err[256];
  cr_assert_eq(fl_model_create(c->spec, &m, err, sizeof err), 0, "%s", err);
  size_t P = fl_model_num_params(m);
  fl_dataset d;
  synthetic(&d, m, c->samples, 7);
  fl_subset s = {&d, NULL, d.n};
  float *w = malloc(P * sizeof *w), *ref = malloc(P * sizeof *ref);
  fl_model_init(m, w, 3);
  for (size_t i = 0; i < P; i++) ref[i] = w[i] * 0.5f;
  fl_train_config cfg = fl_train_config_default();
  cr_assert_eq(fl_optimizer_parse(c->optimizer, &cfg), 0);
  cfg.batch_size = c->batch;
  cfg.epochs = c->epochs;
  cfg.lr = c->lr;
  cfg.weight_decay = c->wd;
  cfg.clip_norm = c->clip;
  cfg.prox_mu = c->prox;
  cfg.prox_ref = c->prox > 0 ? ref : NULL;
  cfg.seed = 11;
  fl_trainer *t = fl_trainer_create(m, c->batch);
  fl_eval last;
  cr_assert_eq(fl_train(t, w, &s, &cfg, NULL, NULL, &last), 0, "%s %s", c->spec, c->optimizer);
  uint64_t h = fingerprint(w, P, last.loss);
  fl_trainer_free(t);
  free(w);
  free(ref);
  fl_dataset_free(&d);
  fl_model_free(m);
  return h;
}

Test(fingerprint, same_bits_as_before_the_layer_table, .init = one_blas_thread,
     .timeout = 300) {
  const char *core = openblas_get_corename();
  if (strcmp(core, RECORDED_CORE) != 0)
    cr_skip_test("OpenBLAS uses its %s kernels here; the hashes were recorded with %s",
                 core, RECORDED_CORE);
  int bad = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const fp_case *c = &cases[i];
    uint64_t h = run_case(c);
    if (h != c->expect) {
      bad++;
      cr_log_error("case %zu (%s, %s, batch %u, clip %g, prox %g): 0x%016" PRIx64
                   "ULL, expected 0x%016" PRIx64 "ULL", i, c->spec, c->optimizer, c->batch,
                   (double)c->clip, (double)c->prox, h, c->expect);
    }
  }
  cr_assert_eq(bad, 0, "%d of %zu cases changed their weights", bad,
               sizeof cases / sizeof cases[0]);
}
