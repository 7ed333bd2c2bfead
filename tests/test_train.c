/* Training: bit-identical results for the same seed, N trainers on N threads equal to
 * sequential runs, divergence and bad data reported, ROC AUC with ties, and a small
 * Fashion-MNIST run that must learn (it fails if backprop is broken). */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "rng.h"
#include "train.h"

static void one_blas_thread(void) { openblas_set_num_threads(1); }

/* Synthetic classes: class k has its mean at feature k. */
static fl_dataset synthetic(size_t n, size_t dim, int classes, uint64_t seed) {
  fl_dataset d = {.n = n, .dim = dim, .channels = 1, .height = 1, .width = (uint32_t)dim,
                  .num_classes = classes};
  d.x = malloc(n * dim * sizeof *d.x);
  d.y = malloc(n * sizeof *d.y);
  fl_rng r;
  fl_rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++) {
    int k = (int)fl_rng_below(&r, (uint64_t)classes);
    d.y[i] = (float)k;
    for (size_t j = 0; j < dim; j++) d.x[i * dim + j] = fl_rng_normal(&r) + (j == (size_t)k) * 2.0f;
  }
  return d;
}

typedef struct job {
  const fl_model *m;
  const fl_subset *data;
  fl_train_config cfg;
  float *params;
  int rc;
} job;

static void *run_job(void *arg) {
  job *j = arg;
  fl_trainer *t = fl_trainer_create(j->m, j->cfg.batch_size);
  fl_model_init(j->m, j->params, j->cfg.seed);
  j->rc = t ? fl_train(t, j->params, j->data, &j->cfg, NULL, NULL, NULL) : FL_ENOMEM;
  fl_trainer_free(t);
  return NULL;
}

static fl_model *create(const char *spec) {
  fl_model *m = NULL;
  char err[256];
  cr_assert_eq(fl_model_create(spec, &m, err, sizeof err), 0, "%s", err);
  return m;
}

#define IMG_SPEC "in:1x12x12 conv:4:3 relu pool:2 dropout:0.1 dense:16 relu dense:4 softmax"

Test(train, same_seed_bit_identical, .init = one_blas_thread) {
  fl_dataset d = synthetic(300, 144, 4, 1);
  d.channels = 1, d.height = 12, d.width = 12;
  fl_subset s = {&d, NULL, d.n};
  fl_model *m = create(IMG_SPEC);
  size_t P = fl_model_num_params(m);
  job a = {m, &s, fl_train_config_default(), malloc(P * 4), 0}, b = a, c = a;
  b.params = malloc(P * 4);
  c.params = malloc(P * 4);
  a.cfg.epochs = b.cfg.epochs = c.cfg.epochs = 2;
  a.cfg.optimizer = b.cfg.optimizer = c.cfg.optimizer = FL_OPT_ADAM;
  a.cfg.lr = b.cfg.lr = c.cfg.lr = 1e-3f;
  c.cfg.seed = 2;
  run_job(&a);
  run_job(&b);
  run_job(&c);
  cr_assert_eq(a.rc, 0);
  cr_assert_eq(memcmp(a.params, b.params, P * 4), 0, "same seed, different weights");
  cr_assert_neq(memcmp(a.params, c.params, P * 4), 0, "different seeds, same weights");
  free(a.params); free(b.params); free(c.params);
  fl_model_free(m);
  fl_dataset_free(&d);
}

Test(train, threads_equal_sequential, .init = one_blas_thread, .timeout = 120) {
  enum { N = 4 };
  fl_dataset d = synthetic(256, 144, 4, 2);
  fl_model *m = create(IMG_SPEC);
  fl_model *m2 = create("in:144 dense:96 relu dense:64 tanh dense:4 softmax");
  size_t P = fl_model_num_params(m), P2 = fl_model_num_params(m2);
  uint32_t idx[N][128];
  fl_subset parts[N];
  job seq[N], par[N];
  for (int k = 0; k < N; k++) {
    for (int i = 0; i < 128; i++) idx[k][i] = (uint32_t)((i * 7 + k * 37) % 256);
    parts[k] = (fl_subset){&d, idx[k], 128};
    seq[k] = (job){k & 1 ? m2 : m, &parts[k], fl_train_config_default(), NULL, 0};
    seq[k].cfg.epochs = 2;
    seq[k].cfg.seed = 10 + (uint64_t)k;
    seq[k].cfg.batch_size = 16;
    fl_optimizer_parse(k < 2 ? "nesterov" : "adamw", &seq[k].cfg);
    seq[k].params = malloc((k & 1 ? P2 : P) * 4);
    par[k] = seq[k];
    par[k].params = malloc((k & 1 ? P2 : P) * 4);
    run_job(&seq[k]);
    cr_assert_eq(seq[k].rc, 0);
  }
  pthread_t th[N];
  for (int k = 0; k < N; k++) pthread_create(&th[k], NULL, run_job, &par[k]);
  for (int k = 0; k < N; k++) pthread_join(th[k], NULL);
  for (int k = 0; k < N; k++) {
    cr_assert_eq(par[k].rc, 0);
    cr_assert_eq(memcmp(seq[k].params, par[k].params, (k & 1 ? P2 : P) * 4), 0,
                 "thread %d differs from its sequential run", k);
    free(seq[k].params);
    free(par[k].params);
  }
  fl_model_free(m);
  fl_model_free(m2);
  fl_dataset_free(&d);
}

Test(train, divergence_reported, .init = one_blas_thread) {
  fl_dataset d = synthetic(64, 8, 2, 3);
  for (size_t i = 0; i < d.n; i++) d.y[i] *= 1000.0f;
  fl_subset s = {&d, NULL, d.n};
  fl_model *m = create("in:8 dense:8 dense:1 mse");
  float w[200];
  fl_model_init(m, w, 1);
  fl_trainer *t = fl_trainer_create(m, 8);
  fl_train_config c = fl_train_config_default();
  c.lr = 1e3f;
  c.batch_size = 8;
  c.epochs = 5;
  cr_assert_eq(fl_train(t, w, &s, &c, NULL, NULL, NULL), FL_ENONFINITE);
  fl_trainer_free(t);
  fl_model_free(m);
  fl_dataset_free(&d);
}

Test(train, bad_data_refused) {
  fl_dataset d = synthetic(16, 8, 3, 4);
  fl_subset s = {&d, NULL, d.n};
  fl_model *m = create("in:9 dense:3 softmax"), *b = create("in:8 dense:1 sigmoid_bce");
  char err[256] = "";
  cr_assert_eq(fl_check_data(m, &s, err, sizeof err), FL_EMISMATCH);
  cr_assert(strstr(err, "8 features") != NULL, "%s", err);
  cr_assert_eq(fl_check_data(b, &s, err, sizeof err), FL_EINVAL); /* label 2 */
  cr_assert(strstr(err, "sigmoid_bce") != NULL, "%s", err);
  fl_trainer *t = fl_trainer_create(m, 4);
  float w[64] = {0};
  fl_train_config c = fl_train_config_default();
  cr_assert_eq(fl_train(t, w, &s, &c, NULL, NULL, NULL), FL_EINVAL); /* batch 32 > 4 */
  c.batch_size = 4;
  cr_assert_eq(fl_train(t, w, &s, &c, NULL, NULL, NULL), FL_EMISMATCH);
  fl_trainer_free(t);
  fl_model_free(m);
  fl_model_free(b);
  fl_dataset_free(&d);
}

/* fl_train applies plain SGD inside the backward pass (no separate optimizer step);
 * clip_norm far above any gradient norm forces the separate fl_optimizer_step path with
 * the same update, so the two must agree up to rounding. */
Test(train, fused_sgd_matches_optimizer_step, .init = one_blas_thread) {
  fl_dataset d = synthetic(200, 144, 4, 3);
  d.channels = 1, d.height = 12, d.width = 12;
  fl_subset s = {&d, NULL, d.n};
  fl_model *m = create(IMG_SPEC);
  size_t P = fl_model_num_params(m);
  for (int wd = 0; wd < 2; wd++) {
    job a = {m, &s, fl_train_config_default(), malloc(P * 4), 0}, b = a;
    b.params = malloc(P * 4);
    a.cfg.lr = b.cfg.lr = 0.05f;
    a.cfg.batch_size = b.cfg.batch_size = 7; /* a short last batch */
    a.cfg.epochs = b.cfg.epochs = 2;
    a.cfg.weight_decay = b.cfg.weight_decay = wd ? 1e-2f : 0.0f;
    b.cfg.clip_norm = 1e30f;
    run_job(&a);
    run_job(&b);
    cr_assert_eq(a.rc, 0);
    cr_assert_eq(b.rc, 0);
    float maxdiff = 0.0f;
    for (size_t i = 0; i < P; i++) maxdiff = fmaxf(maxdiff, fabsf(a.params[i] - b.params[i]));
    cr_assert(maxdiff < 1e-4f, "wd %d: fused and separate SGD differ by %g", wd, maxdiff);
    free(a.params); free(b.params);
  }
  fl_model_free(m);
  fl_dataset_free(&d);
}

Test(train, auc_with_ties) {
  float s1[4] = {0.1f, 0.4f, 0.35f, 0.8f}, l1[4] = {0, 0, 1, 1};
  cr_assert_float_eq(fl_auc(s1, l1, 4), 0.75, 1e-12);
  float s2[4] = {0.5f, 0.5f, 0.5f, 0.5f}, l2[4] = {0, 1, 0, 1};
  cr_assert_float_eq(fl_auc(s2, l2, 4), 0.5, 1e-12);
  float s3[5] = {0.2f, 0.2f, 0.9f, 0.1f, 0.9f}, l3[5] = {1, 0, 1, 0, 0};
  /* pairs (pos, neg): (0.2,0.2) .5, (0.2,0.1) 1, (0.2,0.9) 0, (0.9,0.2) 1, (0.9,0.1) 1,
   * (0.9,0.9) .5 -> 4 / 6 */
  cr_assert_float_eq(fl_auc(s3, l3, 5), 4.0 / 6.0, 1e-12);
  float l4[4] = {1, 1, 1, 1};
  cr_assert_float_eq(fl_auc(s1, l4, 4), 0.5, 1e-12);
}

Test(train, binary_evaluate_auc, .init = one_blas_thread) {
  fl_dataset d = synthetic(400, 10, 2, 5);
  fl_subset s = {&d, NULL, d.n};
  fl_model *m = create("mlp64");
  fl_model_free(m);
  m = create("logreg:10:2");
  float w[11];
  fl_model_init(m, w, 3);
  fl_trainer *t = fl_trainer_create(m, 32);
  fl_train_config c = fl_train_config_default();
  c.lr = 0.1f;
  c.epochs = 3;
  fl_eval last, ev;
  cr_assert_eq(fl_train(t, w, &s, &c, NULL, NULL, &last), 0);
  cr_assert_eq(fl_evaluate(t, w, &s, &ev), 0);
  cr_assert_eq(ev.n, 400);
  cr_assert(ev.accuracy > 0.8, "accuracy %g", ev.accuracy);
  cr_assert(ev.auc > 0.85 && ev.auc <= 1.0, "auc %g", ev.auc);
  cr_assert(ev.loss < 0.5, "loss %g", ev.loss);
  fl_trainer_free(t);
  fl_model_free(m);
  fl_dataset_free(&d);
}

static void count_epochs(void *arg, uint32_t epoch, const fl_eval *e) {
  int *n = arg;
  cr_assert_eq(epoch, (uint32_t)*n);
  cr_assert(e->n > 0 && isfinite(e->loss));
  (*n)++;
}

Test(train, fashion_mnist_2nn_learns, .init = one_blas_thread, .timeout = 120) {
  fl_dataset tr, te;
  char err[256];
  cr_assert_eq(fl_dataset_load(&tr, "fashion-mnist:train", err, sizeof err), 0, "%s", err);
  cr_assert_eq(fl_dataset_load(&te, "fashion-mnist:test", err, sizeof err), 0, "%s", err);
  uint32_t *ti = malloc(3000 * sizeof *ti), *vi = malloc(1000 * sizeof *vi);
  for (uint32_t i = 0; i < 3000; i++) ti[i] = i * 20; /* spread over the whole file */
  for (uint32_t i = 0; i < 1000; i++) vi[i] = i * 10;
  fl_subset train = {&tr, ti, 3000}, test = {&te, vi, 1000};
  fl_model *m = create("2nn");
  size_t P = fl_model_num_params(m);
  float *w = malloc(P * sizeof *w);
  fl_model_init(m, w, 1);
  fl_trainer *t = fl_trainer_create(m, 32);
  fl_train_config c = fl_train_config_default();
  fl_optimizer_parse("momentum", &c);
  c.lr = 0.05f;
  c.epochs = 2;
  fl_eval before, after, last;
  int epochs = 0;
  cr_assert_eq(fl_evaluate(t, w, &test, &before), 0);
  cr_assert_eq(fl_train(t, w, &train, &c, count_epochs, &epochs, &last), 0);
  cr_assert_eq(epochs, 2);
  cr_assert_eq(fl_evaluate(t, w, &test, &after), 0);
  cr_assert(after.accuracy > 0.72, "test accuracy %.3f after 2 epochs (%.3f before)",
            after.accuracy, before.accuracy);
  cr_assert(after.loss < before.loss * 0.5, "loss %.3f -> %.3f", before.loss, after.loss);
  cr_assert(last.accuracy > 0.65, "train accuracy %.3f", last.accuracy);
  free(w);
  free(ti);
  free(vi);
  fl_trainer_free(t);
  fl_model_free(m);
  fl_dataset_free(&tr);
  fl_dataset_free(&te);
}
