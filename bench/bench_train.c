/* Training throughput against its own matrix products.
 *
 * For each model and batch size, trains on synthetic data with one BLAS thread and, in
 * the same run, times the bare sequence of cblas_sgemm calls that one training step
 * makes (same shapes, same transposes, same beta, same count, on buffers of the same
 * sizes).  The ratio of the two throughputs is the share of the step spent in BLAS: the
 * rest is our own code (bias, activations, softmax, im2col/col2im, pooling, optimizer,
 * batch gathering).  Runs alternate and the best of several is kept, so that other load
 * on the machine affects both sides alike. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "layers.h"
#include "rng.h"
#include "train.h"

typedef struct gemm {
  int ta, tb, M, N, K, reps;  /* reps: 1, or B for a conv's per-sample products */
  float beta;
  size_t sa, sb, sc;          /* per-repetition strides (0: the same operand) */
  float *a, *b, *c;
} gemm;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *filled(size_t n, fl_rng *r) {
  float *p = malloc(sizeof *p * n);
  if (!p) abort();
  for (size_t i = 0; i < n; i++) p[i] = fl_rng_uniform(r) - 0.5f;
  return p;
}

static void add(gemm *g, int *n, int ta, int tb, int M, int N, int K, float beta, int reps,
                size_t sa, size_t sb, size_t sc, fl_rng *r) {
  gemm *x = &g[(*n)++];
  *x = (gemm){ta, tb, M, N, K, reps, beta, sa, sb, sc, NULL, NULL, NULL};
  x->a = filled((size_t)M * K + sa * (reps - 1), r);
  x->b = filled((size_t)K * N + sb * (reps - 1), r);
  x->c = filled((size_t)M * N + sc * (reps - 1), r);
}

extern const fl__layer_ops fl__dense_ops, fl__conv_ops;

/* The products of one step, in the order dense.c and conv.c issue them. */
static int step_gemms(const fl_model *m, int B, gemm *g, fl_rng *r) {
  int n = 0;
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    int in = (int)l->in_size, out = (int)l->out_size;
    int HW = (int)(l->oh * l->ow), K = (int)l->oc, CFF = (int)l->fan_in;
    if (l->ops == &fl__dense_ops)
      add(g, &n, 0, 1, B, out, in, 0.0f, 1, 0, 0, 0, r);
    else if (l->ops == &fl__conv_ops)
      add(g, &n, 0, 0, K, HW, CFF, 0.0f, B, 0, 0, (size_t)K * HW, r);
  }
  for (int i = m->nlayers - 1; i >= 0; i--) {
    const fl__layer *l = &m->layers[i];
    int in = (int)l->in_size, out = (int)l->out_size;
    int HW = (int)(l->oh * l->ow), K = (int)l->oc, CFF = (int)l->fan_in;
    if (l->ops == &fl__dense_ops) {
      add(g, &n, 1, 0, out, in, B, 1.0f, 1, 0, 0, 0, r);
      if (i) add(g, &n, 0, 0, B, in, out, 0.0f, 1, 0, 0, 0, r);
    } else if (l->ops == &fl__conv_ops) {
      add(g, &n, 0, 1, K, CFF, HW, 1.0f, B, (size_t)K * HW, 0, 0, r);
      if (i) add(g, &n, 1, 0, CFF, HW, K, 0.0f, B, 0, (size_t)K * HW, 0, r);
    }
  }
  return n;
}

static void run_gemms(const gemm *g, int n) {
  for (int i = 0; i < n; i++) {
    const gemm *x = &g[i];
    int lda = x->ta ? x->M : x->K, ldb = x->tb ? x->K : x->N;
    for (int k = 0; k < x->reps; k++)
      cblas_sgemm(CblasRowMajor, x->ta ? CblasTrans : CblasNoTrans,
                  x->tb ? CblasTrans : CblasNoTrans, x->M, x->N, x->K, 1.0f,
                  x->a + x->sa * k, lda, x->b + x->sb * k, ldb, x->beta, x->c + x->sc * k,
                  x->N);
  }
}

static int bench(const char *spec, const char *opt, int B, int steps, int rounds,
                 double target) {
  char err[256];
  fl_model *m;
  if (fl_model_create(spec, &m, err, sizeof err) < 0) {
    fprintf(stderr, "bench-train: %s\n", err);
    return 1;
  }
  fl_rng r;
  fl_rng_seed(&r, 42);
  size_t n = (size_t)B * steps, D = fl_model_input_dim(m), P = fl_model_num_params(m);
  fl_dataset d = {.n = n, .dim = D, .channels = m->in_c, .height = m->in_h,
                  .width = m->in_w, .num_classes = (int)fl_model_output_dim(m)};
  d.x = malloc(sizeof(float) * n * D);
  d.y = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n * D; i++) d.x[i] = fl_rng_uniform(&r);
  for (size_t i = 0; i < n; i++) d.y[i] = (float)fl_rng_below(&r, (uint64_t)d.num_classes);
  fl_subset s = {&d, NULL, n};
  float *params = malloc(sizeof(float) * P);
  fl_model_init(m, params, 1);
  fl_trainer *t = fl_trainer_create(m, (uint32_t)B);
  fl_train_config cfg = fl_train_config_default();
  fl_optimizer_parse(opt, &cfg);
  cfg.lr = 0.01f;
  cfg.batch_size = (uint32_t)B;

  gemm g[64];
  int ng = step_gemms(m, B, g, &r);
  double best_train = 1e30, best_gemm = 1e30;
  for (int k = 0; k < rounds; k++) {
    double t0 = now();
    if (fl_train(t, params, &s, &cfg, NULL, NULL, NULL) < 0) {
      fprintf(stderr, "bench-train: training failed\n");
      return 1;
    }
    double t1 = now();
    for (int i = 0; i < steps; i++) run_gemms(g, ng);
    double t2 = now();
    if (t1 - t0 < best_train) best_train = t1 - t0;
    if (t2 - t1 < best_gemm) best_gemm = t2 - t1;
  }
  double train_sps = n / best_train, gemm_sps = n / best_gemm, ratio = train_sps / gemm_sps;
  printf("%-6s %-9s %6d %16.0f %18.0f %8.3f %8.2f   %s\n", strchr(spec, ' ') ? "?" : spec,
         opt, B, train_sps, gemm_sps, ratio, target, ratio >= target ? "ok" : "BELOW");
  for (int i = 0; i < ng; i++) free(g[i].a), free(g[i].b), free(g[i].c);
  fl_trainer_free(t);
  free(params);
  free(d.x);
  free(d.y);
  fl_model_free(m);
  return 0;
}

/* Optional arguments MODEL BATCH run that one case (for profiling). */
/* Optional arguments MODEL OPTIMIZER BATCH run that one case (for profiling). */
int main(int argc, char **argv) {
  openblas_set_num_threads(1);
  if (argc == 4)
    return bench(argv[1], argv[2], atoi(argv[3]), 3000 / atoi(argv[3]) + 1, 10, 0.0);
  printf("training throughput vs the same step's bare sgemm calls (1 BLAS thread, synthetic\n"
         "data, best of several alternating runs; ratio = train / sgemm-only)\n\n");
  printf("%-6s %-9s %6s %16s %18s %8s %8s\n", "model", "optimizer", "batch",
         "train samples/s", "sgemm-only samp/s", "ratio", "target");
  int rc = 0;
  static const char *const opts[] = {"sgd", "momentum"};
  for (int o = 0; o < 2; o++) {
    rc |= bench("2nn", opts[o], 10, 300, 7, 0.8);
    rc |= bench("2nn", opts[o], 32, 120, 7, 0.8);
    rc |= bench("2nn", opts[o], 64, 60, 7, 0.8);
  }
  rc |= bench("cnn", "sgd", 64, 6, 4, 0.7);
  rc |= bench("cnn", "momentum", 64, 6, 4, 0.7);
  return rc;
}
