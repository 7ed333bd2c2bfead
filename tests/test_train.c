/* Training: bit-identical results for the same seed, N trainers on N threads equal to
 * sequential runs, a trainer's own threads (same bits on every run whichever thread takes
 * which chunk of samples, the gradients of one thread up to rounding), optimizer steps fused into the backward pass equal to the
 * separate pass, divergence and bad data reported, ROC AUC with ties, and a small
 * Fashion-MNIST run that must learn (it fails if backprop is broken). */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "rng.h"
#include "testutil.h"
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

static int job_threads = 1; /* of each job's trainer */

static void *run_job(void *arg) {
  job *j = arg;
  fl_trainer *t = fl_trainer_create_threads(j->m, j->cfg.batch_size, job_threads);
  fl_model_init(j->m, j->params, j->cfg.seed);
  j->rc = t ? fl_train(t, j->params, j->data, &j->cfg, NULL, NULL, NULL) : FL_ENOMEM;
  fl_trainer_free(t);
  return NULL;
}

/* Runs a and then b on trainers of T threads; both must succeed. */
static void run_both(job *a, job *b, int T) {
  job_threads = T;
  run_job(a);
  run_job(b);
  job_threads = 1;
  cr_assert_eq(a->rc, 0);
  cr_assert_eq(b->rc, 0);
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

#define MIXED_SPEC                                                                  \
  "in:1x12x12 conv:4:3 batchnorm relu pool:2 conv:3:3:s2:p1 tanh avgpool:global "    \
  "dropout:0.2 dense:8 batchnorm relu dense:4 softmax"

/* With T threads each thread runs a slice of the batch; the gradient is the one thread's
 * up to the order of float sums (dense products split by rows, conv sums per thread):
 * within 1e-5 of the largest gradient.  A race between threads (a thread overwriting
 * rows another still reads) shows as differences of the gradients' own size. */
Test(train, threads_gradients_match_one_thread, .init = one_blas_thread, .timeout = 120) {
  static const char *specs[] = {"2nn", IMG_SPEC, MIXED_SPEC, "cnn",
                                "in:30 batchnorm dense:20 sigmoid dropout:0.3 dense:1 mse"};
  for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
    fl_model *m = create(specs[s]);
    size_t P = fl_model_num_params(m), D = fl_model_input_dim(m);
    const int B = 13; /* not a multiple of the thread counts */
    fl_rng r;
    fl_rng_seed(&r, 4);
    float *w = malloc(P * 4), *x = malloc((size_t)B * D * 4), y[13];
    float *g1 = calloc(P, 4);
    fl_model_init(m, w, 2);
    for (size_t i = 0; i < (size_t)B * D; i++) x[i] = fl_rng_normal(&r);
    for (int i = 0; i < B; i++) y[i] = strstr(specs[s], "mse") ? fl_rng_normal(&r) : (float)(i % 4);
    fl_trainer *t1 = fl_trainer_create(m, B);
    double l1, lt;
    cr_assert_eq(fl_trainer_grad(t1, w, x, y, B, 1, 9, g1, &l1), 0);
    float gmax = 0;
    for (size_t i = 0; i < P; i++) gmax = fmaxf(gmax, fabsf(g1[i]));
    for (int T = 2; T <= 4; T++) {
      fl_trainer *t = fl_trainer_create_threads(m, B, T);
      cr_assert_eq(fl_trainer_threads(t), T);
      for (int rep = 0; rep < 3; rep++) {
        float *g = calloc(P, 4);
        cr_assert_eq(fl_trainer_grad(t, w, x, y, B, 1, 9, g, &lt), 0);
        cr_assert(fabs(lt - l1) <= 1e-6 * fabs(l1), "%s, %d threads: loss %.9g, one thread %.9g",
                  specs[s], T, lt, l1);
        float worst = 0;
        size_t at = 0;
        for (size_t i = 0; i < P; i++)
          if (fabsf(g[i] - g1[i]) > worst) worst = fabsf(g[i] - g1[i]), at = i;
        cr_assert(worst <= 1e-5f * gmax, "%s, %d threads: gradient %zu is %g, one thread %g",
                  specs[s], T, at, g[at], g1[at]);
        free(g);
      }
      fl_trainer_free(t);
    }
    fl_trainer_free(t1);
    free(w), free(x), free(g1);
    fl_model_free(m);
  }
}

/* The threads take a segment's chunks of samples as they come free, so which thread
 * computes which chunk changes from call to call (more so with more threads than cores);
 * a convolution's gradient is summed per chunk and the chunks in chunk order, so the
 * bits must not change.  In training and in evaluation mode (where the dense layers and
 * batchnorm work sample by sample too), against one thread within 1e-5 of the largest
 * gradient, and with a batch smaller than the chunks two threads may cut (16). */
Test(train, threads_chunks_same_bits, .init = one_blas_thread, .timeout = 120) {
  static const char *spec =
      "in:1x12x12 conv:6:3 relu pool:2 conv:8:3 batchnorm relu dense:12 relu dense:4 softmax";
  fl_model *m = create(spec);
  size_t P = fl_model_num_params(m), D = fl_model_input_dim(m);
  static const int batches[] = {37, 5};
  for (int bi = 0; bi < 2; bi++) {
    const int B = batches[bi];
    fl_rng r;
    fl_rng_seed(&r, 11);
    float *w = malloc(P * 4), *x = malloc((size_t)B * D * 4), *y = malloc((size_t)B * 4);
    fl_model_init(m, w, 3);
    for (size_t i = 0; i < (size_t)B * D; i++) x[i] = fl_rng_normal(&r);
    for (int i = 0; i < B; i++) y[i] = (float)(i % 4);
    for (int training = 0; training < 2; training++) {
      float *g1 = calloc(P, 4), *first = malloc(P * 4);
      double l1, lt;
      fl_trainer *t1 = fl_trainer_create(m, (uint32_t)B);
      cr_assert_eq(fl_trainer_grad(t1, w, x, y, (uint32_t)B, training, 5, g1, &l1), 0);
      fl_trainer_free(t1);
      float gmax = 0;
      for (size_t i = 0; i < P; i++) gmax = fmaxf(gmax, fabsf(g1[i]));
      for (int T = 2; T <= 4; T++) {
        fl_trainer *t = fl_trainer_create_threads(m, (uint32_t)B, T);
        for (int rep = 0; rep < 12; rep++) {
          float *g = calloc(P, 4);
          cr_assert_eq(fl_trainer_grad(t, w, x, y, (uint32_t)B, training, 5, g, &lt), 0);
          if (rep == 0) {
            memcpy(first, g, P * 4);
            float worst = 0;
            for (size_t i = 0; i < P; i++) worst = fmaxf(worst, fabsf(g[i] - g1[i]));
            cr_assert(worst <= 1e-5f * gmax, "batch %d, training %d, %d threads: off by %g",
                      B, training, T, worst);
          }
          cr_assert_eq(memcmp(g, first, P * 4), 0,
                       "batch %d, training %d, %d threads: call %d gives other bits", B,
                       training, T, rep);
          free(g);
        }
        fl_trainer_free(t);
      }
      free(g1), free(first);
    }
    free(w), free(x), free(y);
  }
  fl_model_free(m);
}

/* A model of dense layers only, one above SMALL_ROWS weights (train.c: split by rows
 * with threads) and two below (on each thread's samples). */
#define DENSE_SPEC "in:144 dense:480 relu dense:64 tanh dense:4 softmax"

/* The same thread count gives the same bits, run after run (batchnorm, dropout, conv
 * sums, dense layers by rows and by samples, the fused optimizer steps and the clipping
 * pass included). */
Test(train, threads_same_bits_every_run, .init = one_blas_thread, .timeout = 120) {
  fl_dataset d = synthetic(145, 144, 4, 6); /* the last batch of 16 has 1 sample: a thread
                                             * with none */
  fl_subset s = {&d, NULL, d.n};
  for (int spec = 0; spec < 2; spec++) {
    fl_model *m = create(spec ? DENSE_SPEC : MIXED_SPEC);
    size_t P = fl_model_num_params(m);
    for (int T = 2; T <= 3; T++)
      for (int clip = 0; clip < 2; clip++) {
        job a = {m, &s, fl_train_config_default(), malloc(P * 4), 0}, b = a;
        b.params = malloc(P * 4);
        fl_optimizer_parse("adamw", &a.cfg);
        a.cfg.lr = 1e-3f, a.cfg.batch_size = 16, a.cfg.epochs = 2, a.cfg.weight_decay = 0.01f;
        a.cfg.clip_norm = clip ? 0.5f : 0.0f;
        b.cfg = a.cfg;
        run_both(&a, &b, T);
        cr_assert_eq(memcmp(a.params, b.params, P * 4), 0, "%s, %d threads, clip %d: runs differ",
                     fl_model_spec(m), T, clip);
        free(a.params), free(b.params);
      }
    fl_model_free(m);
  }
  fl_dataset_free(&d);
}

/* Every optimizer applies its step to each layer's rows as soon as their gradient is
 * complete (fused); clipping by the global norm needs the whole gradient first and takes
 * the separate pass.  clip_norm 1e30 forces the separate pass with a factor of exactly
 * 1, so the two must agree, and they agree to the bit: the fused step is the same
 * element-wise arithmetic (optim.c) on the same gradient bits, only earlier, and which
 * thread updates which rows changes no operation.  (Plain SGD inside the dense
 * layer's product differs by rounding: the test above this one.) */
Test(train, fused_steps_equal_separate_pass, .init = one_blas_thread, .timeout = 120) {
  fl_dataset d = synthetic(120, 144, 4, 8);
  fl_subset s = {&d, NULL, d.n};
  for (int spec = 0; spec < 2; spec++) {
    fl_model *m = create(spec ? DENSE_SPEC : MIXED_SPEC);
    size_t P = fl_model_num_params(m);
    float *ref = malloc(P * 4);
    fl_model_init(m, ref, 5);
    static const struct { const char *opt; float lr, wd, prox; } cases[] = {
        {"momentum", 0.02f, 0, 0},    {"momentum", 0.02f, 1e-3f, 0}, {"nesterov", 0.02f, 1e-3f, 0},
        {"adam", 1e-3f, 0, 0},        {"adam", 1e-3f, 1e-2f, 0},     {"adamw", 1e-3f, 1e-2f, 0},
        {"sgd", 0.05f, 1e-3f, 0.1f},  {"adam", 1e-3f, 0, 0.1f},      {"nesterov", 0.02f, 0, 0.1f},
    };
    for (int T = 1; T <= 2; T++)
      for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        job a = {m, &s, fl_train_config_default(), malloc(P * 4), 0}, b = a;
        b.params = malloc(P * 4);
        fl_optimizer_parse(cases[c].opt, &a.cfg);
        a.cfg.lr = cases[c].lr, a.cfg.weight_decay = cases[c].wd, a.cfg.prox_mu = cases[c].prox;
        a.cfg.prox_ref = cases[c].prox > 0 ? ref : NULL;
        a.cfg.batch_size = 9, a.cfg.epochs = 2; /* a short last batch */
        b.cfg = a.cfg;
        b.cfg.clip_norm = 1e30f;
        run_both(&a, &b, T);
        size_t differ = 0;
        for (size_t i = 0; i < P; i++) differ += a.params[i] != b.params[i];
        cr_assert_eq(differ, 0, "%s: %s wd %g prox %g, %d threads: %zu of %zu weights differ",
                     fl_model_spec(m), cases[c].opt, (double)cases[c].wd, (double)cases[c].prox,
                     T, differ, P);
        free(a.params), free(b.params);
      }
    free(ref);
    fl_model_free(m);
  }
  fl_dataset_free(&d);
}

/* The suite runs OpenBLAS's Haswell kernels (Makefile: TEST_BLAS), the binaries the
 * SkylakeX ones where the CPU has AVX-512, and those run small products through a
 * kernel of their own that folds beta C into the product with one rounding: the fused
 * momentum step once took beta = momentum there and differed from the separate pass
 * (189 of MIXED_SPEC's 267 weights), unseen by the test above.  So that test runs again,
 * in a process of its own with the SkylakeX kernels. */
Test(train, fused_steps_equal_separate_pass_with_skylakex_kernels, .timeout = 240) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) cr_skip_test("no AVX-512 here: no SkylakeX kernels");
  char self[PATH_MAX], log[PATH_MAX + 16];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  cr_assert_gt(n, 0);
  self[n] = '\0';
  char *dir = fl_test_tmpdir();
  snprintf(log, sizeof log, "%s/child.log", dir);
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1); /* this test's own process only */
  unsetenv("BXFI_MAP"); /* Criterion's sandbox: the child is a runner of its own */
  char *argv[] = {self, "--filter", "train/fused_steps_equal_separate_pass", NULL};
  pid_t pid = fl_test_spawn(log, argv);
  int rc = fl_test_wait(pid, 200);
  cr_assert_eq(rc, 0, "with the SkylakeX kernels: exit %d (see %s)", rc, log);
  cr_assert_eq(fl_test_count(log, "Passing: 1 "), 1, "with the SkylakeX kernels (see %s)", log);
  free(dir);
}

Test(train, threads_divergence_and_evaluation, .init = one_blas_thread) {
  fl_dataset d = synthetic(64, 8, 2, 3);
  fl_subset s = {&d, NULL, d.n};
  fl_model *m = create("in:8 dense:8 batchnorm dense:1 mse");
  float w[200], w2[200];
  fl_model_init(m, w, 1);
  memcpy(w2, w, sizeof w);
  fl_trainer *t1 = fl_trainer_create(m, 16), *t = fl_trainer_create_threads(m, 16, 2);
  fl_train_config c = fl_train_config_default();
  c.batch_size = 16;
  fl_eval e1, e2;
  cr_assert_eq(fl_train(t, w, &s, &c, NULL, NULL, NULL), 0);
  cr_assert_eq(fl_evaluate(t1, w, &s, &e1), 0);
  cr_assert_eq(fl_evaluate(t, w, &s, &e2), 0);
  cr_assert_eq(e1.n, e2.n);
  cr_assert(fabs(e1.loss - e2.loss) <= 1e-6 * e1.loss, "%g vs %g", e1.loss, e2.loss);
  for (size_t i = 0; i < d.n; i++) d.y[i] *= 1000.0f;
  c.lr = 1e3f;
  c.epochs = 5;
  cr_assert_eq(fl_train(t, w2, &s, &c, NULL, NULL, NULL), FL_ENONFINITE);
  fl_trainer_free(t1);
  fl_trainer_free(t);
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
