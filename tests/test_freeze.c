/* Frozen layers (fl_model_freeze_mask, fl_train_config.frozen): the parameters of a
 * frozen layer, batchnorm's running statistics included, end training bit for bit as
 * they began, with one thread or several and with every optimizer path (plain SGD fused
 * into the dense product, Adam, clipping); the others train.  Bad lists are named. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"
#include "rng.h"
#include "train.h"

#define SPEC "in:4 dense:8 batchnorm relu dense:3 softmax"

static void blobs(fl_dataset *d, size_t n) {
  memset(d, 0, sizeof *d);
  d->n = n, d->dim = 4, d->channels = d->height = 1, d->width = 4, d->num_classes = 3;
  d->x = malloc(sizeof(float) * n * 4);
  d->y = malloc(sizeof(float) * n);
  fl_rng r;
  fl_rng_seed(&r, 3);
  for (size_t i = 0; i < n; i++) {
    d->y[i] = (float)(i % 3);
    for (int j = 0; j < 4; j++) d->x[i * 4 + j] = (float)fl_rng_normal(&r) + (float)(i % 3) * (j == (int)(i % 3));
  }
}

static void check(const char *layers, const char *opt, float clip, int threads) {
  fl_model *m;
  char err[256];
  cr_assert_eq(fl_model_create(SPEC, &m, err, sizeof err), 0, "%s", err);
  size_t P = fl_model_num_params(m);
  float *w = malloc(sizeof *w * P), *w0 = malloc(sizeof *w0 * P), *mask = malloc(sizeof *mask * P);
  fl_model_init(m, w, 7);
  memcpy(w0, w, sizeof *w * P);
  long long nf = fl_model_freeze_mask(m, layers, mask, err, sizeof err);
  cr_assert_gt(nf, 0, "%s", err);
  fl_dataset d;
  blobs(&d, 300);
  fl_subset all = {&d, NULL, d.n};
  fl_train_config cfg = fl_train_config_default();
  cr_assert_eq(fl_optimizer_parse(opt, &cfg), 0);
  cfg.lr = 0.05f, cfg.epochs = 2, cfg.batch_size = 16, cfg.clip_norm = clip, cfg.frozen = mask;
  fl_trainer *t = fl_trainer_create_threads(m, 16, threads);
  cr_assert_eq(fl_train(t, w, &all, &cfg, NULL, NULL, NULL), 0);
  size_t changed = 0;
  for (size_t i = 0; i < P; i++) {
    if (mask[i] != 0.0f) cr_assert_eq(memcmp(&w[i], &w0[i], sizeof *w), 0, "%s: frozen %zu moved", layers, i);
    else changed += w[i] != w0[i];
  }
  cr_assert_gt(changed, 0, "%s: nothing trained", layers);
  fl_trainer_free(t);
  fl_dataset_free(&d);
  free(w);
  free(w0);
  free(mask);
  fl_model_free(m);
}

Test(freeze, frozen_layers_do_not_move) {
  check("0-1", "sgd", 0, 1);
  check("0-1", "sgd", 0, 2);
  check("head", "adam", 0, 2);
  check("all-but-head", "momentum", 1.0f, 2);
  check("1", "adam", 0, 1); /* batchnorm alone: its running statistics too */
}

Test(freeze, bad_lists_are_named) {
  fl_model *m;
  char err[256];
  cr_assert_eq(fl_model_create(SPEC, &m, err, sizeof err), 0);
  float *mask = malloc(sizeof *mask * fl_model_num_params(m));
  cr_assert_eq(fl_model_freeze_mask(m, "2", mask, err, sizeof err), FL_EINVAL);
  cr_assert_not_null(strstr(err, "layer 2 (relu) has no parameters"), "%s", err);
  cr_assert_eq(fl_model_freeze_mask(m, "9", mask, err, sizeof err), FL_EINVAL);
  cr_assert_not_null(strstr(err, "has layers 0..3"), "%s", err);
  cr_assert_eq(fl_model_freeze_mask(m, "x", mask, err, sizeof err), FL_EINVAL);
  cr_assert_eq(fl_model_freeze_mask(m, "1-0", mask, err, sizeof err), FL_EINVAL);
  cr_assert_eq(fl_model_freeze_mask(m, "head", mask, err, sizeof err), 27);
  free(mask);
  fl_model_free(m);
}
