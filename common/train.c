/* The training loop: a trainer's buffers and threads, a step through the layer table,
 * mini-batch epochs with seeded shuffling, and evaluation (loss, accuracy, ROC AUC).
 *
 * A step.  Each of the trainer's T threads gathers its slice of the batch (thread k takes
 * samples [B k/T, B (k+1)/T)) and runs it forward and backward through the layers that
 * work sample by sample (activations, convolution, pooling, dropout); the threads meet
 * where the work crosses samples (layers.h): at a layer that runs over the whole batch
 * (dense and batchnorm in training, each thread a range of the layer's rows), and before
 * a convolution's parameter gradient, a sum over the threads' samples.  At a parameter
 * gradient each thread takes a range of the layer's rows: dense computes them over the
 * whole batch, other layers' per-thread sums are added up; then, unless the gradient is
 * to be clipped, the thread applies the optimizer step to those rows at once, while they
 * are in its cache (the fused step).  A barrier is skipped where nothing was written
 * since the last one (two whole-batch layers in a row).  Clipping by the
 * global norm needs every gradient first, so with clip_norm the step is a separate pass
 * after the backward pass.  With one thread there are no barriers and this is the plain
 * sequential step.
 *
 * A trainer owns every buffer its threads need, so trainers on different threads share
 * nothing but the read-only model and dataset.  Batches are gathered row by row from the
 * subset's indices into one batch buffer; the dataset itself is never copied. */
#include "train.h"

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "layers.h"
#include "team.h"

#define MAX_THREADS 256

typedef struct counter { size_t correct; char pad[64 - sizeof(size_t)]; } counter;

struct fl_trainer {
  const fl_model *m;
  uint32_t max_batch;
  int T;                  /* threads */
  fl__team *team;         /* NULL with one thread */
  float **act;            /* [nlayers]: act[i] = output of layer i, [max_batch][out_size];
                           * NULL for a skipped ReLU */
  float **aux;            /* [nlayers]: [max_batch][aux_len] then [batch_len], or NULL */
  float **dout;           /* [nlayers]: where the gradient w.r.t. act[i] is (see drows) */
  float *dpp[2];          /* alternating gradient buffers [T][rows_per_thread][max_width] */
  size_t rows_per_thread; /* ceil(max_batch / T) */
  float **dedicated;      /* [nlayers]: a dout read across samples when T > 1, [max_batch][out_size] */
  char *skip;             /* [nlayers]: 1 for a ReLU the next layer does (takes_relu) */
  float *keep;            /* head state [max_batch][out_dim] */
  float *loss;            /* per-sample loss of fl_trainer_grad [max_batch] */
  float **grad;           /* [T] gradient buffers [num_trained]; grad[0] is the complete one,
                           * all zero between steps (the step zeroes what it reads) */
  float **scratch;        /* [T] layer scratch [max_scratch] */
  counter *counts;        /* [T] */
  float *m1, *m2;         /* optimizer state [num_trained] */
  float *xb, *yb;         /* gathered batch [max_batch][in_dim], [max_batch] */
  fl_rng drop_rng;
};

/* One pass over some samples (an epoch, an evaluation, one gradient), as all threads
 * see it. */
typedef struct run {
  fl_trainer *t;
  float *params;
  const fl_dataset *data;
  const uint32_t *perm;   /* [n] rows of data, or NULL for rows 0..n-1 */
  size_t n;
  uint32_t batch;
  int training, update_state, backward;
  const fl_train_config *cfg; /* the optimizer, or NULL: gradients only */
  int clip;               /* the step is a separate pass (clipping needs the whole gradient) */
  uint64_t step0;         /* optimizer steps taken before this run */
  float *loss;            /* [n] per-sample losses, in the order of perm */
  const float *frozen;    /* [num_params] mask of frozen parameters, or NULL */
  const float *frozen_ref; /* [num_params] their values, held after every step */
  float *scores;          /* [n] the binary head's logits (ROC AUC), or NULL */
  float clip_scale;       /* written by thread 0 between two barriers */
  atomic_int abort;       /* a non-finite loss or gradient norm: no update is applied */
} run;

static void *alloc_floats(size_t rows, size_t cols) {
  if (cols && rows > SIZE_MAX / sizeof(float) / cols) return NULL;
  size_t n = rows * cols;
  return malloc(sizeof(float) * (n ? n : 1));
}

static int cores(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

fl_trainer *fl_trainer_create(const fl_model *m, uint32_t max_batch) {
  return fl_trainer_create_threads(m, max_batch, 1);
}

fl_trainer *fl_trainer_create_threads(const fl_model *m, uint32_t max_batch, int threads) {
  if (!m || max_batch == 0 || threads < 0) return NULL;
  if (threads == 0) threads = cores();
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if ((uint32_t)threads > max_batch) threads = (int)max_batch; /* a sample each at least */
  fl_trainer *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->m = m;
  t->max_batch = max_batch;
  t->T = threads;
  size_t nl = (size_t)m->nlayers, P = m->num_trained;
  t->act = calloc(nl ? nl : 1, sizeof *t->act);
  t->aux = calloc(nl ? nl : 1, sizeof *t->aux);
  t->dout = calloc(nl ? nl : 1, sizeof *t->dout);
  t->dedicated = calloc(nl ? nl : 1, sizeof *t->dedicated);
  t->skip = calloc(nl ? nl : 1, 1);
  t->grad = calloc((size_t)threads, sizeof *t->grad);
  t->scratch = calloc((size_t)threads, sizeof *t->scratch);
  t->counts = calloc((size_t)threads, sizeof *t->counts);
  if (!t->act || !t->aux || !t->dout || !t->dedicated || !t->skip || !t->grad ||
      !t->scratch || !t->counts)
    goto fail;
  for (size_t i = 0; i + 1 < nl; i++)
    t->skip[i] = m->layers[i].ops->is_relu && m->layers[i + 1].ops->takes_relu &&
                 !m->layers[i + 1].ops->channel_split;
  t->rows_per_thread = (max_batch + (uint32_t)threads - 1) / (uint32_t)threads;
  for (int k = 0; k < 2; k++)
    if (!(t->dpp[k] = alloc_floats(t->rows_per_thread * (size_t)threads, m->max_width)))
      goto fail;
  for (size_t i = 0; i < nl; i++) {
    const fl__layer *l = &m->layers[i];
    if (!t->skip[i] && !(t->act[i] = alloc_floats(max_batch, l->out_size))) goto fail;
    if (l->aux_len || l->batch_len) {
      if (l->aux_len && max_batch > (SIZE_MAX / sizeof(float) - l->batch_len) / l->aux_len)
        goto fail;
      if (!(t->aux[i] = alloc_floats(1, (size_t)max_batch * l->aux_len + l->batch_len)))
        goto fail;
    }
  }
  /* Layer i+1's backward reads dout[i+1] and writes dout[i]: alternate two buffers, in
   * which each thread has a region of its own (a thread may be a layer ahead of another,
   * writing rows of another width).  With threads, a dout that is read across samples
   * (by a param_grad layer, or around a channel_split one) is a buffer of its own, whole
   * batch in order.  A skipped ReLU has no gradient buffer of its own: the layer after
   * it writes the one before it, which must not be the buffer it reads. */
  for (size_t i = nl; i-- > 0;) {
    const fl__layer_ops *ops = m->layers[i].ops;
    if (t->skip[i]) {
      t->dout[i] = t->dout[i + 1];
      continue;
    }
    int across = ops->param_grad || ops->channel_split ||
                 (i + 1 < nl && (m->layers[i + 1].ops->channel_split ||
                                 m->layers[i + 1].ops->row_split));
    if (threads > 1 && across) {
      if (!(t->dedicated[i] = alloc_floats(max_batch, m->layers[i].out_size))) goto fail;
      t->dout[i] = t->dedicated[i];
    } else {
      t->dout[i] = i + 1 < nl && t->dout[i + 1] == t->dpp[0] ? t->dpp[1] : t->dpp[0];
    }
  }
  for (int k = 0; k < threads; k++)
    if (!(t->grad[k] = alloc_floats(1, P)) || !(t->scratch[k] = alloc_floats(1, m->max_scratch)))
      goto fail;
  if (!(t->keep = alloc_floats(max_batch, m->out_dim)) ||
      !(t->loss = alloc_floats(1, max_batch)) || !(t->m1 = alloc_floats(1, P)) ||
      !(t->m2 = alloc_floats(1, P)) || !(t->xb = alloc_floats(max_batch, m->in_dim)) ||
      !(t->yb = alloc_floats(1, max_batch)))
    goto fail;
  if (threads > 1 && !(t->team = fl__team_create(threads))) goto fail;
  return t;
fail:
  fl_trainer_free(t);
  return NULL;
}

void fl_trainer_free(fl_trainer *t) {
  if (!t) return;
  fl__team_free(t->team);
  for (int i = 0; i < t->m->nlayers; i++) {
    if (t->act) free(t->act[i]);
    if (t->aux) free(t->aux[i]);
    if (t->dedicated) free(t->dedicated[i]);
  }
  for (int k = 0; k < t->T; k++) {
    if (t->grad) free(t->grad[k]);
    if (t->scratch) free(t->scratch[k]);
  }
  free(t->act);
  free(t->aux);
  free(t->dout);
  free(t->dedicated);
  free(t->skip);
  free(t->grad);
  free(t->scratch);
  free(t->counts);
  free(t->dpp[0]);
  free(t->dpp[1]);
  free(t->keep);
  free(t->loss);
  free(t->m1);
  free(t->m2);
  free(t->xb);
  free(t->yb);
  free(t);
}

int fl_trainer_threads(const fl_trainer *t) { return t->T; }

static void barrier(const fl_trainer *t) {
  if (t->team) fl__team_sync(t->team);
}

static const float *layer_input(const fl_trainer *t, int i) {
  return i ? t->act[i - 1] : t->xb;
}

static const float *logits(const fl_trainer *t) {
  return layer_input(t, t->m->nlayers);
}

/* Thread k's rows of dout[i], starting at sample s0. */
static float *drows(const fl_trainer *t, int i, int k, int s0) {
  if (t->dedicated[i]) return t->dout[i] + (size_t)s0 * t->m->layers[i].out_size;
  return t->dout[i] + (size_t)k * t->rows_per_thread * t->m->max_width;
}

/* The optimizer step to rows [r0, r1) of layer l: weights, then bias. */
static void apply_rows(const fl__step *s, float *params, float *g, const fl__layer *l,
                       uint32_t r0, uint32_t r1) {
  size_t row = l->w_len / l->b_len;
  fl__step_apply(s, params, g + l->w_off + r0 * row, l->w_off + r0 * row, (r1 - r0) * row);
  fl__step_apply(s, params, g + l->b_off + r0, l->b_off + r0, r1 - r0);
}

/* grad[0] += grad[1] + ... + grad[T-1] over rows [r0, r1) of layer l, in thread order. */
static void reduce_rows(const fl_trainer *t, const fl__layer *l, uint32_t r0, uint32_t r1) {
  size_t row = l->w_len / l->b_len;
  const size_t off[2] = {l->w_off + r0 * row, l->b_off + r0};
  const size_t len[2] = {(r1 - r0) * row, r1 - r0};
  for (int part = 0; part < 2; part++) {
    float *restrict g0 = t->grad[0] + off[part];
    for (int k = 1; k < t->T; k++) {
      const float *restrict gk = t->grad[k] + off[part];
      for (size_t i = 0; i < len[part]; i++) g0[i] += gk[i];
    }
  }
}

/* What thread k works on in one step: samples [s0, s0 + nb) of the B of the batch,
 * which are perm[off + s0 ..] of the data. */
typedef struct slice {
  int k, B, s0, nb;
  size_t off;
  fl__pass base;          /* what every pass of the step shares */
  fl__step step;          /* the optimizer step's constants */
  const fl__step *fused;  /* &step when layers take it as their gradients complete */
} slice;

/* The pass of layer i on the slice's own samples, or with whole = 1 on the whole batch
 * and the thread's range of channels (channel_split layers) or rows (row_split).  After
 * a ReLU the trainer skips, x is the ReLU's input and dx the gradient w.r.t. it. */
static fl__pass layer_pass(const run *r, const slice *sl, int i, int whole) {
  const fl_trainer *t = r->t;
  const fl__layer *l = &t->m->layers[i];
  const int xi = i && t->skip[i - 1] ? i - 1 : i; /* x is layer xi's input */
  const size_t s0 = whole ? 0 : (size_t)sl->s0;
  fl__pass p = sl->base;
  float *aux = t->aux[i];
  p.relu_in = xi != i;
  p.scratch = t->scratch[sl->k];
  p.batch_aux = aux ? aux + (size_t)t->max_batch * l->aux_len : NULL;
  p.x = layer_input(t, xi) + s0 * l->in_size;
  p.y = t->act[i] + s0 * l->out_size;
  p.aux = aux ? aux + s0 * l->aux_len : NULL;
  if (whole) {
    p.B = sl->B;
    p.dy = t->dout[i], p.dx = xi ? t->dout[xi - 1] : NULL, p.grad = t->grad[0];
    p.c0 = fl__split((uint32_t)l->b_len, sl->k, t->T);
    p.c1 = fl__split((uint32_t)l->b_len, sl->k + 1, t->T);
    p.d0 = fl__split((uint32_t)l->in_size, sl->k, t->T);
    p.d1 = fl__split((uint32_t)l->in_size, sl->k + 1, t->T);
  } else {
    p.B = sl->nb;
    p.dy = drows(t, i, sl->k, sl->s0);
    p.dx = xi ? drows(t, xi - 1, sl->k, sl->s0) : NULL;
    p.grad = t->grad[sl->k];
    p.c0 = 0, p.c1 = (uint32_t)l->b_len, p.d0 = 0, p.d1 = (uint32_t)l->in_size;
  }
  return p;
}

/* Layer i runs over the whole batch, each thread a part of it (layers.h). */
static int whole_batch(const run *r, int i) {
  const fl__layer_ops *ops = r->t->m->layers[i].ops;
  return r->training && (ops->channel_split || (r->t->T > 1 && ops->row_split));
}

/* The slice's samples into the batch buffers, and the step's dropout masks (thread 0,
 * for the whole batch, in layer order). */
static void gather(run *r, slice *sl) {
  fl_trainer *t = r->t;
  const fl_dataset *d = r->data;
  for (int i = sl->s0; i < sl->s0 + sl->nb; i++) {
    size_t row = r->perm ? r->perm[sl->off + (size_t)i] : sl->off + (size_t)i;
    memcpy(t->xb + (size_t)i * d->dim, d->x + row * d->dim, sizeof(float) * d->dim);
    t->yb[i] = d->y[row];
  }
  if (!r->training || !t->m->has_prepare) return;
  if (sl->k == 0)
    for (int i = 0; i < t->m->nlayers; i++) {
      const fl__layer *l = &t->m->layers[i];
      fl__pass p = sl->base;
      p.B = sl->B, p.aux = t->aux[i];
      if (l->ops->prepare) l->ops->prepare(l, &p, &t->drop_rng);
    }
  barrier(t);
}

/* Every layer, then the head's loss; a non-finite loss marks the run aborted. */
static void forward(run *r, slice *sl) {
  fl_trainer *t = r->t;
  const fl_model *m = t->m;
  int synced = 0; /* no thread has written anything since the last barrier */
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    int whole = whole_batch(r, i);
    if (t->skip[i]) continue;
    if (whole && !synced) barrier(t);
    fl__pass p = layer_pass(r, sl, i, whole);
    l->ops->forward(l, &p);
    if (whole) barrier(t);
    synced = whole;
  }
  const int C = (int)m->out_dim, s0 = sl->s0, nb = sl->nb;
  const float *z = logits(t) + (size_t)s0 * C;
  float *loss = r->loss + sl->off + (size_t)s0, *keep = t->keep + (size_t)s0 * C;
  m->head->forward(loss, keep, z, t->yb + s0, nb, C);
  t->counts[sl->k].correct += m->head->correct(keep, z, t->yb + s0, nb, C);
  if (r->scores) memcpy(r->scores + sl->off + (size_t)s0, z, sizeof(float) * (size_t)nb);
  for (int i = 0; i < nb; i++)
    if (!isfinite(loss[i])) atomic_store(&r->abort, 1);
}

/* The gradient of layer i's rows [r0, r1) over the whole batch, and the fused step on
 * them (every thread's backward of the layer is done). */
static void param_rows(run *r, slice *sl, int i, uint32_t r0, uint32_t r1) {
  fl_trainer *t = r->t;
  const fl__layer *l = &t->m->layers[i];
  int applied = 0;
  if (l->ops->param_grad) {
    fl__pass q = layer_pass(r, sl, i, 1);
    q.step = sl->fused;
    applied = l->ops->param_grad(l, &q, r0, r1);
  } else if (t->T > 1) {
    reduce_rows(t, l, r0, r1);
  }
  if (!applied && sl->fused) apply_rows(sl->fused, r->params, t->grad[0], l, r0, r1);
}

/* The head's gradient, then every layer from the last; 0, or -1 when the run aborted. */
static int backward(run *r, slice *sl) {
  fl_trainer *t = r->t;
  const fl_model *m = t->m;
  const int L = m->nlayers, C = (int)m->out_dim, T = t->T, k = sl->k;
  m->head->backward(drows(t, L - 1, k, sl->s0), t->keep + (size_t)sl->s0 * C,
                    t->yb + sl->s0, sl->nb, sl->B, C);
  int synced = 0; /* as in forward */
  for (int i = L - 1; i >= 0; i--) {
    const fl__layer *l = &m->layers[i];
    int whole = whole_batch(r, i);
    if (t->skip[i]) continue;
    if (whole) {
      if (!synced) barrier(t);
      if (atomic_load(&r->abort)) return -1;
      fl__pass p = layer_pass(r, sl, i, 1);
      l->ops->backward(l, &p);
      if (l->ops->channel_split) { /* its rows are its channels: complete where computed */
        if (l->b_len && sl->fused) apply_rows(sl->fused, r->params, t->grad[0], l, p.c0, p.c1);
        barrier(t);
        synced = 1;
        continue;
      }
      /* row_split: every thread's dx is read from the weights before any is updated,
       * and is complete for the layer below */
      if (p.dx) barrier(t);
      synced = p.dx != NULL;
      if (l->b_len) param_rows(r, sl, i, p.c0, p.c1);
      continue;
    }
    fl__pass p = layer_pass(r, sl, i, 0);
    l->ops->backward(l, &p);
    synced = 0;
    if (!l->b_len) continue;
    barrier(t); /* every thread's part of this layer is done */
    if (atomic_load(&r->abort)) return -1;
    param_rows(r, sl, i, fl__split((uint32_t)l->b_len, k, T),
               fl__split((uint32_t)l->b_len, k + 1, T));
  }
  return 0;
}

/* The separate step for clipping: the proximal term and the global norm (thread 0),
 * then the update, each thread a range of the parameters. */
static void clipped_step(run *r, slice *sl) {
  fl_trainer *t = r->t;
  const size_t P = t->m->num_trained;
  barrier(t);
  if (atomic_load(&r->abort)) return;
  if (sl->k == 0) {
    if (r->cfg->prox_mu > 0.0f && r->cfg->prox_ref)
      fl__prox_add(t->grad[0], r->params, r->cfg->prox_ref, r->cfg->prox_mu, 0, P);
    r->clip_scale = fl__clip_scale(t->grad[0], P, r->cfg->clip_norm);
    if (isnan(r->clip_scale)) atomic_store(&r->abort, 1);
  }
  barrier(t);
  if (atomic_load(&r->abort)) return;
  sl->step.scale = r->clip_scale;
  size_t a = fl__split((uint32_t)P, sl->k, t->T), b = fl__split((uint32_t)P, sl->k + 1, t->T);
  fl__step_apply(&sl->step, r->params, t->grad[0] + a, a, b - a);
}

/* Thread k's part of one step on the B samples perm[off..off+B). */
static void step(run *r, int k, size_t off, int B, uint64_t stepno) {
  fl_trainer *t = r->t;
  slice sl = {.k = k, .B = B, .off = off};
  sl.s0 = (int)fl__split((uint32_t)B, k, t->T);
  sl.nb = (int)fl__split((uint32_t)B, k + 1, t->T) - sl.s0;
  sl.base = (fl__pass){.batch = B, .training = r->training, .update_state = r->update_state,
                       .params = r->params};
  if (r->cfg) {
    fl__step_init(&sl.step, r->cfg, t->m1, t->m2, stepno, !r->clip);
    sl.step.zero_grad = 1;
    if (!r->clip) sl.fused = &sl.step;
  }
  gather(r, &sl);
  forward(r, &sl);
  if (r->backward && backward(r, &sl) == 0 && r->clip) clipped_step(r, &sl);
  barrier(t); /* the batch buffers are free and the update is complete */
  if (r->frozen) { /* frozen parameters back as they were, each thread a range */
    size_t P = t->m->num_params;
    size_t a = fl__split((uint32_t)P, k, t->T), b = fl__split((uint32_t)P, k + 1, t->T);
    for (size_t i = a; i < b; i++)
      if (r->frozen[i] != 0.0f) r->params[i] = r->frozen_ref[i];
    barrier(t);
  }
}

/* Thread k's part of a whole run, batch after batch. */
static void run_thread(void *arg, int k) {
  run *r = arg;
  uint64_t stepno = r->step0;
  for (size_t off = 0; off < r->n; off += r->batch) {
    int B = (int)(r->n - off < r->batch ? r->n - off : r->batch);
    step(r, k, off, B, ++stepno);
    /* training stops at a non-finite loss (read after the step's last barrier: every
     * thread agrees); evaluation goes on and reports it */
    if (r->backward && atomic_load(&r->abort)) break;
  }
}

static void run_all(run *r) {
  for (int k = 0; k < r->t->T; k++) r->t->counts[k].correct = 0;
  if (r->t->team)
    fl__team_run(r->t->team, run_thread, r);
  else
    run_thread(r, 0);
}

static size_t correct_total(const fl_trainer *t) {
  size_t c = 0;
  for (int k = 0; k < t->T; k++) c += t->counts[k].correct;
  return c;
}

/* The sum of the losses, batch by batch (each batch's sum in order, in double): the same
 * value whatever the number of threads. */
static double loss_sum(const float *loss, size_t n, uint32_t batch) {
  double sum = 0.0;
  for (size_t off = 0; off < n; off += batch) {
    double s = 0.0;
    for (size_t i = off; i < n && i < off + batch; i++) s += loss[i];
    sum += s;
  }
  return sum;
}

int fl_trainer_grad(fl_trainer *t, const float *params, const float *x, const float *y,
                    uint32_t n, int training, uint64_t seed, float *grad, double *loss) {
  if (n == 0 || n > t->max_batch) return FL_EINVAL;
  const fl_model *m = t->m;
  fl_dataset d = {.n = n, .dim = m->in_dim, .x = (float *)x, .y = (float *)y};
  run r = {.t = t, .params = (float *)params, .data = &d, .n = n, .batch = n,
           .training = training, .backward = grad != NULL, .loss = t->loss};
  fl_rng_seed(&t->drop_rng, seed);
  if (grad) memset(t->grad[0], 0, sizeof(float) * m->num_trained);
  run_all(&r);
  double sum = loss_sum(t->loss, n, n);
  *loss = sum / n;
  if (!isfinite(sum)) return FL_ENONFINITE;
  if (grad)
    for (size_t i = 0; i < m->num_trained; i++) grad[i] += t->grad[0][i];
  return 0;
}

int fl_trainer_predict(fl_trainer *t, const float *params, const float *x, const float *y,
                       uint32_t n, float *out, float *score, float *loss) {
  if (n == 0 || n > t->max_batch) return FL_EINVAL;
  const fl_model *m = t->m;
  const size_t C = m->out_dim;
  fl_dataset d = {.n = n, .dim = m->in_dim, .x = (float *)x, .y = (float *)y};
  run r = {.t = t, .params = (float *)params, .data = &d, .n = n, .batch = n,
           .loss = t->loss};
  run_all(&r);
  /* keep holds the probabilities (softmax, sigmoid_bce) or the residual z - y (mse) */
  if (m->head->regression)
    memcpy(out, logits(t), sizeof(float) * n * C);
  else
    memcpy(out, t->keep, sizeof(float) * n * C);
  if (score) memcpy(score, logits(t), sizeof(float) * n * C);
  if (loss) memcpy(loss, t->loss, sizeof(float) * n);
  for (uint32_t i = 0; i < n; i++)
    if (!isfinite(t->loss[i])) return FL_ENONFINITE;
  return 0;
}

int fl_check_data(const fl_model *m, const fl_subset *s, char *err, size_t errlen) {
  const fl_dataset *d = s->data;
  if (!d || d->dim != m->in_dim) {
    if (err && errlen)
      snprintf(err, errlen, "data has %zu features per sample, the model expects %zu",
               d ? d->dim : 0, m->in_dim);
    return FL_EMISMATCH;
  }
  for (size_t i = 0; i < s->n; i++) {
    size_t r = s->idx ? s->idx[i] : i;
    if (r >= d->n) {
      if (err && errlen) snprintf(err, errlen, "subset index %zu is out of range", r);
      return FL_EINVAL;
    }
    float v = d->y[r];
    if (!m->head->label_ok(v, m->out_dim)) {
      if (err && errlen)
        snprintf(err, errlen, "sample %zu has label %g, which the model's %s head cannot "
                 "take", r, (double)v, m->head->name);
      return FL_EINVAL;
    }
  }
  return 0;
}

static int check_config(const fl_trainer *t, const fl_train_config *c) {
  if (!c || c->batch_size == 0 || c->batch_size > t->max_batch) return FL_EINVAL;
  if (!(c->lr >= 0.0f) || !isfinite(c->lr) || !(c->momentum >= 0.0f && c->momentum < 1.0f))
    return FL_EINVAL;
  if (c->optimizer != FL_OPT_SGD &&
      !(c->beta1 >= 0.0f && c->beta1 < 1.0f && c->beta2 >= 0.0f && c->beta2 < 1.0f &&
        c->eps > 0.0f))
    return FL_EINVAL;
  if (!(c->weight_decay >= 0.0f) || !(c->clip_norm >= 0.0f) || !(c->prox_mu >= 0.0f))
    return FL_EINVAL;
  if (c->prox_mu > 0.0f && !c->prox_ref) return FL_EINVAL;
  return 0;
}

int fl_train(fl_trainer *t, float *params, const fl_subset *data, const fl_train_config *cfg,
             fl_epoch_cb progress, void *arg, fl_eval *last) {
  const fl_model *m = t->m;
  size_t n = data->n, P = m->num_trained;
  int rc = check_config(t, cfg);
  if (rc < 0) return rc;
  if ((rc = fl_check_data(m, data, NULL, 0)) < 0) return rc;
  if (last) memset(last, 0, sizeof *last);
  if (n == 0) return 0;
  if (n > UINT32_MAX) return FL_ERANGE;
  uint32_t *perm = malloc(sizeof *perm * n);
  float *loss = alloc_floats(1, n);
  if (!perm || !loss) {
    free(perm);
    free(loss);
    return FL_ENOMEM;
  }
  float *ref = NULL;
  if (cfg->frozen) {
    if (!(ref = alloc_floats(1, m->num_params))) {
      free(perm);
      free(loss);
      return FL_ENOMEM;
    }
    memcpy(ref, params, sizeof(float) * m->num_params);
  }
  memset(t->grad[0], 0, sizeof(float) * P); /* from here on each step leaves it zeroed */
  memset(t->m1, 0, sizeof(float) * P);
  memset(t->m2, 0, sizeof(float) * P);
  fl_rng_seed2(&t->drop_rng, cfg->seed, UINT64_MAX);
  run r = {.t = t, .params = params, .data = data->data, .perm = perm, .n = n,
           .batch = cfg->batch_size, .training = 1, .update_state = 1, .backward = 1,
           .cfg = cfg, .clip = cfg->clip_norm > 0.0f, .loss = loss, .frozen = cfg->frozen,
           .frozen_ref = ref};
  for (uint32_t e = 0; e < cfg->epochs; e++) {
    for (size_t i = 0; i < n; i++) perm[i] = data->idx ? data->idx[i] : (uint32_t)i;
    fl_rng sh;
    fl_rng_seed2(&sh, cfg->seed, e);
    fl_rng_shuffle_u32(&sh, perm, n);
    run_all(&r);
    if (atomic_load(&r.abort)) {
      rc = FL_ENONFINITE;
      break;
    }
    r.step0 += (n + cfg->batch_size - 1) / cfg->batch_size;
    double sum = loss_sum(loss, n, cfg->batch_size);
    fl_eval ev = {sum / n, m->head->regression ? 0.0 : (double)correct_total(t) / n, 0.0, n};
    if (last) *last = ev;
    if (progress) progress(arg, e, &ev);
  }
  free(perm);
  free(loss);
  free(ref);
  return rc;
}

typedef struct scored { float score, label; } scored;

static int by_score(const void *a, const void *b) {
  float x = ((const scored *)a)->score, y = ((const scored *)b)->score;
  return (x > y) - (x < y);
}

/* Mann-Whitney U: the rank sum of the positives, ties given their average rank. */
static double auc_sorted(const scored *s, size_t n) {
  double pos = 0.0, rank_sum = 0.0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    double npos = 0.0;
    while (j < n && s[j].score == s[i].score) npos += s[j++].label > 0.5f;
    rank_sum += npos * (double)(i + 1 + j) / 2.0; /* ranks i+1 .. j */
    pos += npos;
    i = j;
  }
  double neg = (double)n - pos;
  if (pos == 0.0 || neg == 0.0) return 0.5;
  return (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg);
}

double fl_auc(const float *scores, const float *labels, size_t n) {
  scored *s = malloc(sizeof *s * (n ? n : 1));
  if (!s) return NAN;
  for (size_t i = 0; i < n; i++) s[i] = (scored){scores[i], labels[i]};
  qsort(s, n, sizeof *s, by_score);
  double auc = auc_sorted(s, n);
  free(s);
  return auc;
}

int fl_evaluate(fl_trainer *t, const float *params, const fl_subset *data, fl_eval *out) {
  const fl_model *m = t->m;
  size_t n = data->n;
  int rc = fl_check_data(m, data, NULL, 0);
  memset(out, 0, sizeof *out);
  if (rc < 0) return rc;
  if (n == 0) return 0;
  if (n > UINT32_MAX) return FL_ERANGE;
  float *loss = alloc_floats(1, n), *scores = NULL;
  scored *s = NULL;
  if (!loss || (m->head->binary && (!(scores = alloc_floats(1, n)) ||
                                    !(s = malloc(sizeof *s * n))))) {
    free(loss);
    free(scores);
    return FL_ENOMEM;
  }
  uint32_t batch = t->max_batch < 256 ? t->max_batch : 256;
  run r = {.t = t, .params = (float *)params, .data = data->data, .perm = data->idx, .n = n,
           .batch = batch, .loss = loss, .scores = scores};
  run_all(&r);
  double sum = loss_sum(loss, n, batch);
  out->n = n;
  out->loss = sum / n;
  out->accuracy = m->head->regression ? 0.0 : (double)correct_total(t) / n;
  if (s) {
    for (size_t i = 0; i < n; i++)
      s[i] = (scored){scores[i], data->data->y[data->idx ? data->idx[i] : i]};
    qsort(s, n, sizeof *s, by_score);
    out->auc = auc_sorted(s, n);
    free(s);
  }
  free(scores);
  free(loss);
  return isfinite(sum) ? 0 : FL_ENONFINITE;
}
