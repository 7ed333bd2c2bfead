/* Training throughput against its own matrix products, for every optimizer, and the
 * speed-up of a trainer's threads.
 *
 * For each model, optimizer and batch size, trains on synthetic data with one thread and,
 * in the same run, times the bare sequence of cblas_sgemm calls that one training step
 * makes (same shapes, same transposes, same beta, same count, on buffers of the same
 * sizes; OpenBLAS single-threaded).  The ratio of the two throughputs is the share of the
 * step spent in BLAS: the rest is our own code (bias, activations, softmax, im2col and
 * col2im, pooling, the optimizer, batch gathering).  Both are timed in CPU time of the
 * thread, so that other load on a shared machine (which takes the CPU away, not the work)
 * affects neither side.  The ratio is the median over pairs of adjacent runs (a training
 * run, then the products' run) of each pair's ratio: what slows the machine for a moment
 * (a neighbour's load on the shared caches, the host's clock) slows both runs of a pair,
 * while the best of each side, taken apart, pairs one side's luckiest moment with the
 * other's (on this VM that put cnn's ratio anywhere from 0.85 to 0.99 in runs whose
 * paired medians were 0.78 to 0.84).  The throughput columns are the best runs.
 *
 * The last columns train the same case with a 2-thread trainer and with a 1-thread one,
 * in wall-clock time (threads pay off only in wall time), best of alternating runs:
 * samples per second with 2 threads and its ratio to 1 thread; and the CPU time of the
 * process for the 2-thread run over the 1-thread run's (best of the runs each): the
 * threads' overhead (barriers spin before they sleep, so waiting costs CPU too), which
 * on a machine whose other load takes cores away is the steadier sign of how well the
 * work splits: 1.05 means two threads would run 2 / 1.05 = 1.9 times as fast on two
 * idle cores.  And what the machine itself gives two threads of this work: two 1-thread
 * trainers, each on its own copy of the parameters, trained at once ("pair": twice the
 * samples over their wall time, over one trainer alone's rate).  On a VM whose two vCPUs
 * share a physical core, or whose host takes one away at times, this is well below 2,
 * and a 2-thread trainer cannot beat it: the threads' speed-up is then to be read
 * against the pair's.
 *
 * The column "pass" is the optimizer's own cost: fl_optimizer_step over all the
 * parameters, as a separate pass (what clipping needs), timed like the products and
 * given as a share of the sgemm-only time.  The fused step does this work on each layer
 * as its gradient is produced; when the pass alone costs more than a ninth of the
 * products, a ratio of 0.9 needs the fused step to do the optimizer's work in less time
 * than its own bare pass over the weights and state takes. */
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "blaskernels.h"
#include "layers.h"
#include "rng.h"
#include "train.h"

typedef struct gemm {
  int ta, tb, M, N, K, reps;  /* reps: 1, or B for a conv's per-sample products */
  float beta;
  size_t sa, sb, sc;          /* per-repetition strides (0: the same operand) */
  float *a, *b, *c;
} gemm;

static double seconds(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
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

static double process_cpu(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

/* Trains once; the time on clock, and the process's CPU time into *cpu if not NULL. */
static double train_time(fl_trainer *t, float *params, const fl_subset *s,
                         const fl_train_config *cfg, clockid_t clock, double *cpu) {
  double c0 = process_cpu(), t0 = seconds(clock);
  if (fl_train(t, params, s, cfg, NULL, NULL, NULL) < 0) {
    fprintf(stderr, "bench-train: training failed\n");
    exit(1);
  }
  double t1 = seconds(clock);
  if (cpu) *cpu = process_cpu() - c0;
  return t1 - t0;
}

/* Two 1-thread trainers at once, one per thread: the wall time until both are done. */
typedef struct pair_job {
  fl_trainer *t;
  float *params;
  const fl_subset *s;
  const fl_train_config *cfg;
  pthread_barrier_t *start;
} pair_job;

static void *pair_run(void *arg) {
  pair_job *j = arg;
  pthread_barrier_wait(j->start);
  if (fl_train(j->t, j->params, j->s, j->cfg, NULL, NULL, NULL) < 0) {
    fprintf(stderr, "bench-train: training failed\n");
    exit(1);
  }
  return NULL;
}

static double pair_time(fl_trainer *a, fl_trainer *b, float *pa, float *pb,
                        const fl_subset *s, const fl_train_config *cfg) {
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, 3);
  pair_job ja = {a, pa, s, cfg, &start}, jb = {b, pb, s, cfg, &start};
  pthread_t ta, tb;
  if (pthread_create(&ta, NULL, pair_run, &ja) || pthread_create(&tb, NULL, pair_run, &jb)) {
    fprintf(stderr, "bench-train: cannot start a thread\n");
    exit(1);
  }
  pthread_barrier_wait(&start);
  double t0 = seconds(CLOCK_MONOTONIC);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  double t = seconds(CLOCK_MONOTONIC) - t0;
  pthread_barrier_destroy(&start);
  return t;
}

#define MAX_ROUNDS 16

/* The median of v [n] (sorted in place), n >= 1. */
static double median(double *v, int n) {
  for (int i = 1; i < n; i++) /* insertion sort: a few values */
    for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
      double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One row of the table; returns 1 if a figure is below its target. */
static int bench(const char *spec, const char *opt, int B, int steps, int rounds,
                 double target, double thread_target) {
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
  fl_trainer *t1 = fl_trainer_create(m, (uint32_t)B);
  fl_trainer *t2 = fl_trainer_create_threads(m, (uint32_t)B, 2);
  fl_trainer *t1b = fl_trainer_create(m, (uint32_t)B);
  float *params_b = malloc(sizeof(float) * P);
  fl_train_config cfg = fl_train_config_default();
  if (fl_optimizer_parse(opt, &cfg) < 0 || !t1 || !t2 || !t1b || !params_b) {
    fprintf(stderr, "bench-train: cannot set up %s %s\n", spec, opt);
    return 1;
  }
  cfg.lr = strstr(opt, "adam") ? 1e-4f : 0.001f;
  cfg.batch_size = (uint32_t)B;

  gemm g[64];
  int ng = step_gemms(m, B, g, &r);
  float *pw = filled(P, &r), *pg = filled(P, &r), *pm = calloc(P, sizeof *pm),
        *pv = calloc(P, sizeof *pv), *gsave = malloc(P * sizeof *gsave);
  if (!pm || !pv || !gsave) abort();
  memcpy(gsave, pg, P * sizeof *pg);
  double train = 1e30, gemm_cpu = 1e30, pass_cpu = 1e30, wall1 = 1e30, wall2 = 1e30,
         cpu1 = 1e30, cpu2 = 1e30, wallp = 1e30;
  double paired[2 * MAX_ROUNDS];
  int npaired = 0;
  if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
  for (int k = 0; k < rounds; k++) {
    double c1, c2, t0;
    for (int rep = 0; rep < 2; rep++) { /* two pairs a round */
      double a = train_time(t1, params, &s, &cfg, CLOCK_THREAD_CPUTIME_ID, NULL);
      t0 = seconds(CLOCK_THREAD_CPUTIME_ID);
      for (int i = 0; i < steps; i++) run_gemms(g, ng);
      double b = seconds(CLOCK_THREAD_CPUTIME_ID) - t0;
      paired[npaired++] = b / a;
      if (a < train) train = a;
      if (b < gemm_cpu) gemm_cpu = b;
    }
    t0 = seconds(CLOCK_THREAD_CPUTIME_ID); /* the gradient is read, not changed, by a step */
    for (int i = 0; i < steps; i++) fl_optimizer_step(&cfg, pw, pg, pm, pv, P, (uint64_t)i + 1);
    double p = seconds(CLOCK_THREAD_CPUTIME_ID) - t0;
    if (p < pass_cpu) pass_cpu = p;
    memcpy(pg, gsave, P * sizeof *pg);
    double w2 = train_time(t2, params, &s, &cfg, CLOCK_MONOTONIC, &c2);
    double w1 = train_time(t1, params, &s, &cfg, CLOCK_MONOTONIC, &c1);
    memcpy(params_b, params, sizeof(float) * P);
    double wp = pair_time(t1, t1b, params, params_b, &s, &cfg);
    if (wp < wallp) wallp = wp;
    if (w1 < wall1) wall1 = w1;
    if (w2 < wall2) wall2 = w2;
    if (c1 < cpu1) cpu1 = c1;
    if (c2 < cpu2) cpu2 = c2;
  }
  double ratio = median(paired, npaired), speedup = wall1 / wall2;
  int below = ratio < target || (thread_target > 0 && speedup < thread_target);
  char tt[16] = "";
  if (thread_target > 0) snprintf(tt, sizeof tt, "%.2f", thread_target);
  printf("%-5s %-9s %5d %12.0f %12.0f %7.3f %6.2f %6.3f %12.0f %7.2f %6s %6.3f %6.2f   %s\n",
         strchr(spec, ' ') ? "?" : spec, opt, B, n / train, n / gemm_cpu, ratio, target,
         pass_cpu / gemm_cpu, n / wall2, speedup, tt, cpu2 / cpu1, 2.0 * wall1 / wallp,
         below ? "BELOW" : "ok");
  fflush(stdout);
  for (int i = 0; i < ng; i++) free(g[i].a), free(g[i].b), free(g[i].c);
  free(pw), free(pg), free(pm), free(pv), free(gsave);
  fl_trainer_free(t1);
  fl_trainer_free(t2);
  fl_trainer_free(t1b);
  free(params_b);
  free(params);
  free(d.x);
  free(d.y);
  fl_model_free(m);
  return below;
}

/* Optional arguments MODEL OPTIMIZER BATCH run that one case (for profiling). */
int main(int argc, char **argv) {
  fl_blas_pick_kernels(argv);
  openblas_set_num_threads(1);
  if (argc == 4) {
    int B = atoi(argv[3]) > 0 ? atoi(argv[3]) : 1, cnn = strcmp(argv[1], "cnn") == 0;
    return bench(argv[1], argv[2], B, cnn ? 6 : 3000 / B + 1, cnn ? 4 : 10, 0.0, 0.0);
  }
  printf("training throughput vs the same step's bare sgemm calls, for every optimizer\n"
         "(synthetic data; 1 thread: samples per CPU-second of the thread, best of several\n"
         "alternating runs; ratio = train / sgemm-only, the median of its ratio in adjacent\n"
         "pairs of runs; 2 threads: samples per wall-clock second of a 2-thread trainer,\n"
         "its ratio to a 1-thread trainer's, and the process CPU time of the 2-thread run\n"
         "over the 1-thread run's; pass = the optimizer's separate pass over all\n"
         "parameters, over the sgemm-only time; pair = two 1-thread trainers at once over\n"
         "one alone: what the machine gives two threads of this work)\n\n");
  printf("%-5s %-9s %5s %12s %12s %7s %6s %6s %12s %7s %6s %6s %6s\n", "model", "optimizer",
         "batch", "train/cpu-s", "sgemm/cpu-s", "ratio", "target", "pass", "2 thr samp/s",
         "x 1 thr", "target", "cpu x", "pair");
  static const char *const opts[] = {"sgd", "momentum", "nesterov", "adam", "adamw"};
  int below = 0;
  for (int o = 0; o < 5; o++) {
    below += bench("2nn", opts[o], 10, 300, 9, 0.9, 0.0);
    below += bench("2nn", opts[o], 32, 120, 9, 0.9, 0.0);
    below += bench("2nn", opts[o], 64, 60, 9, 0.9, 1.8);
    below += bench("cnn", opts[o], 64, 6, 4, 0.9, 1.8);
  }
  printf("\n%d figure%s below target\n", below, below == 1 ? "" : "s");
  return 0;
}
