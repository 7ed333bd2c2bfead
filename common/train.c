/* The training loop: a trainer's buffers and threads, a step through the layer table,
 * mini-batch epochs with seeded shuffling, and evaluation (loss, accuracy, ROC AUC).
 *
 * A step.  The layers that work sample by sample (activations, convolution, pooling,
 * dropout) run in segments: the runs of such layers between the points where the work
 * crosses samples (layers.h), which are a layer that runs over the whole batch (dense
 * and batchnorm in training, each thread a range of the layer's rows, between
 * barriers), and, in backward, a layer's parameter gradient, a sum over the batch.  A
 * segment cuts the batch into fixed chunks (the same cut for every segment of the step,
 * a function of the batch size and the thread count only) and the threads take the
 * chunks in turn from the segment's counter, each running its chunk through every layer
 * of the segment before it takes the next: a thread on a slower core takes fewer, and
 * the threads meet at the segment's end within a fraction of a chunk of each other (on
 * a KVM guest two vCPUs can differ in speed by a fifth, and a fixed split of the batch
 * left the faster one idle at every barrier).  The first segment also gathers its
 * chunks' samples; the last forward one, the turn, ends with the head's loss and, in
 * training, goes on with the head's gradient and back down the sample-wise layers below
 * it, so no barrier separates forward from backward there.  A convolution's weight
 * gradient is summed per chunk, into a buffer of the chunk's own, and at the parameter
 * gradient each thread adds the chunks' buffers up in chunk order for a range of the
 * layer's rows: which thread computed which chunk changes no bit.  Dense layers compute
 * their rows over the whole batch.  Then, unless the gradient is to be clipped, the
 * thread applies the optimizer step to those rows at once, while they are in its cache
 * (the fused step).  A barrier is skipped where nothing was written since the last one
 * (two whole-batch layers in a row).  Clipping by the global norm needs every gradient
 * first, so with clip_norm the step is a separate pass after the backward pass.  With
 * one thread the batch is one chunk, there are no barriers, and this is the plain
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

/* With threads, a segment of sample-wise layers is cut into up to CHUNKS_PER_THREAD
 * chunks a thread (fewer at a small batch): enough that the threads, taking chunks as
 * they finish the last one, end a segment within a fraction of a chunk of each other
 * when one core is slower than another (cnn at batch 64 on two threads: 32 chunks of
 * 2 samples; 8 chunks a thread left about 1.4 times the wait at the barriers, 4 about
 * 2.5 times).  A chunk keeps its own copy of the gradient of the layers without param_grad
 * (convolutions), summed up at each parameter gradient, so the chunks' copies together
 * are limited to CHUNK_GRAD_FLOATS floats (64 MB), with at least one chunk a thread:
 * memory that no longer grows with the dense layers, since the threads no longer keep a
 * whole gradient each. */
#define CHUNKS_PER_THREAD 16
#define CHUNK_GRAD_FLOATS ((size_t)16 << 20)

/* With threads, a dense layer in training runs by rows over the whole batch (row_split,
 * layers.h), each thread packing only its part of the weights.  A small one (at most
 * SMALL_ROWS weights: 200x200, say) gains little from halving its products by rows (a
 * throwaway instrumented build, `2nn` at batch 64: its row halves took 0.80-1.10 of the
 * whole product's time, against 0.65-0.69 for the 784x200 layer's), while its two
 * barriers cost more: it runs on each thread's samples instead, as the other layers do,
 * when the step's chunks are one a thread anyway for it: in a model without a layer
 * whose gradient is summed per chunk (a convolution's), whose many small chunks would
 * cut the layer's products into slivers. */
#define SMALL_ROWS ((size_t)1 << 16)

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
  float *dpp[2];          /* alternating gradient buffers [max_batch][max_width]: samples
                           * [s0, s0 + n) at row s0, packed at the layer's width */
  float **dedicated;      /* [nlayers]: a dout read across samples when T > 1, [max_batch][out_size] */
  char *skip;             /* [nlayers]: 1 for a ReLU the next layer does (takes_relu) */
  char *by_rows;          /* [nlayers]: a row_split layer that runs by rows in training
                           * (T > 1; see SMALL_ROWS) */
  float *keep;            /* head state [max_batch][out_dim] */
  float *loss;            /* per-sample loss of fl_trainer_grad [max_batch] */
  float *grad;            /* [num_trained] the gradient, all zero between steps (the step
                           * zeroes what it reads) */
  int max_chunks;         /* chunks of a segment: 1 with one thread, else in [T, max_batch] */
  size_t *cg_off;         /* [nlayers] a layer's gradient in a chunk's (T > 1, layers with
                           * parameters and no param_grad) */
  size_t cg_len;          /* floats of a chunk's gradient: those layers' trained tensors */
  float *cgrad;           /* [max_chunks][cg_len] the chunks' gradients (T > 1), or NULL */
  int max_segs;           /* segments a step may have */
  atomic_uint *next;      /* [2][max_segs] the next chunk of each segment of a step, a set
                           * for even steps of a run and one for odd (see step) */
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
  int chunks;             /* the cut of a batch (see run_all) */
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
  t->by_rows = calloc(nl ? nl : 1, 1);
  t->cg_off = calloc(nl ? nl : 1, sizeof *t->cg_off);
  t->scratch = calloc((size_t)threads, sizeof *t->scratch);
  t->counts = calloc((size_t)threads, sizeof *t->counts);
  t->max_segs = 2 * m->nlayers + 2; /* forward: one before each whole-batch layer and the
                                     * last; backward: one per layer at most */
  t->next = calloc(2 * (size_t)t->max_segs, sizeof *t->next);
  if (!t->act || !t->aux || !t->dout || !t->dedicated || !t->skip || !t->by_rows ||
      !t->cg_off || !t->scratch || !t->counts || !t->next)
    goto fail;
  for (size_t i = 0; i + 1 < nl; i++)
    t->skip[i] = m->layers[i].ops->is_relu && m->layers[i + 1].ops->takes_relu &&
                 !m->layers[i + 1].ops->channel_split;
  for (int k = 0; k < 2; k++)
    if (!(t->dpp[k] = alloc_floats(max_batch, m->max_width))) goto fail;
  for (size_t i = 0; i < nl; i++) {
    const fl__layer *l = &m->layers[i];
    if (!t->skip[i] && !(t->act[i] = alloc_floats(max_batch, l->out_size))) goto fail;
    if (l->aux_len || l->batch_len) {
      if (l->aux_len && max_batch > (SIZE_MAX / sizeof(float) - l->batch_len) / l->aux_len)
        goto fail;
      if (!(t->aux[i] = alloc_floats(1, (size_t)max_batch * l->aux_len + l->batch_len)))
        goto fail;
    }
    if (l->b_len && !l->ops->param_grad) t->cg_off[i] = t->cg_len, t->cg_len += l->w_len + l->b_len;
  }
  for (size_t i = 0; i < nl; i++)
    t->by_rows[i] = threads > 1 && m->layers[i].ops->row_split &&
                    !(t->cg_len == 0 && m->layers[i].w_len <= SMALL_ROWS);
  /* Layer i+1's backward reads dout[i+1] and writes dout[i]: alternate two buffers, in
   * which each chunk of samples has rows of its own (a thread may be a layer ahead of
   * another, on another chunk, writing rows of another width).  With threads, a dout that
   * is read across samples (by a param_grad layer, or around a channel_split one) is a
   * buffer of its own, whole batch in order.  A skipped ReLU has no gradient buffer of
   * its own: the layer after it writes the one before it, which must not be the buffer
   * it reads. */
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
  t->max_chunks = 1;
  if (threads > 1) {
    size_t n = (size_t)CHUNKS_PER_THREAD * (size_t)threads;
    if (t->cg_len && n * t->cg_len > CHUNK_GRAD_FLOATS) n = CHUNK_GRAD_FLOATS / t->cg_len;
    if (n < (size_t)threads) n = (size_t)threads;
    if (n > max_batch) n = max_batch;
    t->max_chunks = (int)n;
    if (t->cg_len && !(t->cgrad = alloc_floats(n, t->cg_len))) goto fail;
  }
  for (int k = 0; k < threads; k++)
    if (!(t->scratch[k] = alloc_floats(1, m->max_scratch))) goto fail;
  if (!(t->grad = alloc_floats(1, P)) || !(t->keep = alloc_floats(max_batch, m->out_dim)) ||
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
  for (int k = 0; k < t->T; k++)
    if (t->scratch) free(t->scratch[k]);
  free(t->act);
  free(t->aux);
  free(t->dout);
  free(t->dedicated);
  free(t->skip);
  free(t->by_rows);
  free(t->cg_off);
  free(t->cgrad);
  free(t->next);
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

/* The rows of dout[i] of the samples from s0 on. */
static float *drows(const fl_trainer *t, int i, int s0) {
  return t->dout[i] + (size_t)s0 * (t->dedicated[i] ? t->m->layers[i].out_size : t->m->max_width);
}

/* The optimizer step to rows [r0, r1) of layer l: weights, then bias. */
static void apply_rows(const fl__step *s, float *params, float *g, const fl__layer *l,
                       uint32_t r0, uint32_t r1) {
  size_t row = l->w_len / l->b_len;
  fl__step_apply(s, params, g + l->w_off + r0 * row, l->w_off + r0 * row, (r1 - r0) * row);
  fl__step_apply(s, params, g + l->b_off + r0, l->b_off + r0, r1 - r0);
}

/* Rows [r0, r1) of layer i's gradient = the sum of the n chunks' gradients of a step, in
 * chunk order (whichever thread computed which chunk: the same bits). */
static void reduce_chunks(const fl_trainer *t, int i, int n, uint32_t r0, uint32_t r1) {
  const fl__layer *l = &t->m->layers[i];
  size_t row = l->w_len / l->b_len;
  const size_t off[2] = {r0 * row, l->w_len + r0}; /* in the layer's tensors */
  const size_t len[2] = {(r1 - r0) * row, r1 - r0};
  for (int part = 0; part < 2; part++) {
    float *restrict g = t->grad + l->w_off + off[part];
    const float *c0 = t->cgrad + t->cg_off[i] + off[part];
    memcpy(g, c0, sizeof(float) * len[part]);
    for (int c = 1; c < n; c++) {
      const float *restrict gc = c0 + (size_t)c * t->cg_len;
      for (size_t j = 0; j < len[part]; j++) g[j] += gc[j];
    }
  }
}

/* What thread k works on in one step of the B samples perm[off..off+B): whole-batch
 * layers' rows by k, and in a segment, one chunk after another: chunk c of n, samples
 * [s0, s0 + nb). */
typedef struct slice {
  int k, B;
  size_t off;
  int parity;             /* of the step in the run: its set of counters */
  int segs;               /* segments run so far in the step */
  int n;                  /* chunks of the step's segments */
  int c, s0, nb;          /* the current chunk */
  fl__pass base;          /* what every pass of the step shares */
  fl__step step;          /* the optimizer step's constants */
  const fl__step *fused;  /* &step when layers take it as their gradients complete */
} slice;

/* The pass of layer i on the current chunk, or with whole = 1 on the whole batch and
 * the thread's range of channels (channel_split layers) or rows (row_split).  After a
 * ReLU the trainer skips, x is the ReLU's input and dx the gradient w.r.t. it.  A
 * chunk's gradient of a layer without param_grad is the chunk's own (with threads) or
 * the gradient itself (one thread, whose one chunk is the batch). */
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
  p.grad = t->grad + l->w_off;
  if (whole) {
    p.B = sl->B;
    p.dy = t->dout[i], p.dx = xi ? t->dout[xi - 1] : NULL;
    p.c0 = fl__split((uint32_t)l->b_len, sl->k, t->T);
    p.c1 = fl__split((uint32_t)l->b_len, sl->k + 1, t->T);
    p.d0 = fl__split((uint32_t)l->in_size, sl->k, t->T);
    p.d1 = fl__split((uint32_t)l->in_size, sl->k + 1, t->T);
  } else {
    p.B = sl->nb;
    p.dy = drows(t, i, sl->s0);
    p.dx = xi ? drows(t, xi - 1, sl->s0) : NULL;
    if (t->cgrad && l->b_len && !l->ops->param_grad)
      p.grad = t->cgrad + (size_t)sl->c * t->cg_len + t->cg_off[i];
    p.c0 = 0, p.c1 = (uint32_t)l->b_len, p.d0 = 0, p.d1 = (uint32_t)l->in_size;
  }
  return p;
}

/* Layer i runs over the whole batch, each thread a part of it (layers.h). */
static int whole_batch(const run *r, int i) {
  const fl__layer_ops *ops = r->t->m->layers[i].ops;
  return r->training && (ops->channel_split || r->t->by_rows[i]);
}

/* A segment: what each chunk of the batch goes through between two barriers, in this
 * order.  Its layers are sample-wise (none runs over the whole batch).  Every segment of
 * a step cuts the batch into the same chunks. */
typedef struct seg {
  int gather;             /* the chunk's samples into the batch buffers (the first) */
  int f0, f1;             /* forward through layers [f0, f1) */
  int head;               /* the head's loss (the last forward segment) */
  int back;               /* then the head's gradient (with backward: the turn) */
  int b1, b0;             /* then backward through layers b1 - 1 down to b0 */
} seg;

/* The chunk's samples into the batch buffers. */
static void gather(run *r, const slice *sl) {
  fl_trainer *t = r->t;
  const fl_dataset *d = r->data;
  for (int i = sl->s0; i < sl->s0 + sl->nb; i++) {
    size_t row = r->perm ? r->perm[sl->off + (size_t)i] : sl->off + (size_t)i;
    memcpy(t->xb + (size_t)i * d->dim, d->x + row * d->dim, sizeof(float) * d->dim);
    t->yb[i] = d->y[row];
  }
}

/* The head's loss on the chunk; a non-finite loss marks the run aborted. */
static void head_forward(run *r, const slice *sl) {
  fl_trainer *t = r->t;
  const fl_model *m = t->m;
  const int C = (int)m->out_dim, s0 = sl->s0, nb = sl->nb;
  const float *z = logits(t) + (size_t)s0 * C;
  float *loss = r->loss + sl->off + (size_t)s0, *keep = t->keep + (size_t)s0 * C;
  m->head->forward(loss, keep, z, t->yb + s0, nb, C);
  t->counts[sl->k].correct += m->head->correct(keep, z, t->yb + s0, nb, C);
  if (r->scores) memcpy(r->scores + sl->off + (size_t)s0, z, sizeof(float) * (size_t)nb);
  for (int i = 0; i < nb; i++)
    if (!isfinite(loss[i])) atomic_store(&r->abort, 1);
}

/* Runs the segment on chunks taken from its counter until none is left (a thread may
 * get none).  Every thread runs the same segments in the same order, so the step's
 * segment number names the same counter for all. */
static void run_segment(run *r, slice *sl, const seg *g) {
  fl_trainer *t = r->t;
  const fl_model *m = t->m;
  const int C = (int)m->out_dim;
  atomic_uint *next = t->next + (size_t)sl->parity * t->max_segs + sl->segs++;
  for (;;) {
    unsigned c = atomic_fetch_add_explicit(next, 1, memory_order_relaxed);
    if (c >= (unsigned)sl->n) break;
    sl->c = (int)c;
    sl->s0 = (int)fl__split((uint32_t)sl->B, (int)c, sl->n);
    sl->nb = (int)fl__split((uint32_t)sl->B, (int)c + 1, sl->n) - sl->s0;
    if (g->gather) gather(r, sl);
    for (int i = g->f0; i < g->f1; i++) {
      if (t->skip[i]) continue;
      fl__pass p = layer_pass(r, sl, i, 0);
      m->layers[i].ops->forward(&m->layers[i], &p);
    }
    if (g->head) head_forward(r, sl);
    if (g->back)
      m->head->backward(drows(t, m->nlayers - 1, sl->s0), t->keep + (size_t)sl->s0 * C,
                        t->yb + sl->s0, sl->nb, sl->B, C);
    for (int i = g->b1 - 1; i >= g->b0; i--) {
      if (t->skip[i]) continue;
      fl__pass p = layer_pass(r, sl, i, 0);
      m->layers[i].ops->backward(&m->layers[i], &p);
    }
  }
}

/* The step's forward pass: runs of sample-wise layers as segments, a whole-batch layer
 * between barriers, and the turn: the last segment, which ends with the head's loss and,
 * with backward, goes on to the head's gradient and back through the sample-wise layers
 * below it, down to the first with a parameter gradient (whose rows are then summed).
 * Returns the lowest layer the turn ran backward (nlayers if none). */
static int forward(run *r, slice *sl) {
  fl_trainer *t = r->t;
  const fl_model *m = t->m;
  const int L = m->nlayers;
  int synced = 0; /* no thread has written anything since the last barrier */
  int first = 1, i = 0;
  for (;;) {
    int j = i, work = 0; /* [i, j): sample-wise layers */
    for (; j < L && !whole_batch(r, j); j++) work |= !t->skip[j];
    if (j == L) break;
    if (work || first) {
      run_segment(r, sl, &(seg){.gather = first, .f0 = i, .f1 = j, .b1 = j, .b0 = j});
      synced = first = 0;
    }
    const fl__layer *l = &m->layers[j];
    if (!synced) barrier(t);
    fl__pass p = layer_pass(r, sl, j, 1);
    l->ops->forward(l, &p);
    barrier(t);
    synced = 1;
    i = j + 1;
  }
  seg g = {.gather = first, .f0 = i, .f1 = L, .head = 1, .back = r->backward, .b1 = L,
           .b0 = L};
  if (r->backward)
    while (g.b0 > i && !m->layers[--g.b0].b_len) {
    }
  run_segment(r, sl, &g);
  return g.b0;
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
  } else if (t->cgrad) {
    reduce_chunks(t, i, sl->n, r0, r1);
  }
  if (!applied && sl->fused) apply_rows(sl->fused, r->params, t->grad, l, r0, r1);
}

/* After a segment whose last layer i has parameters: its rows, once every chunk is
 * done; 0, or -1 when the run aborted. */
static int seg_rows(run *r, slice *sl, int i) {
  const fl__layer *l = &r->t->m->layers[i];
  barrier(r->t);
  if (atomic_load(&r->abort)) return -1;
  param_rows(r, sl, i, fl__split((uint32_t)l->b_len, sl->k, r->t->T),
             fl__split((uint32_t)l->b_len, sl->k + 1, r->t->T));
  return 0;
}

/* The rest of the backward pass, from the turn's lowest layer `top` down: whole-batch
 * layers between barriers, runs of sample-wise layers as segments that end at a layer
 * with parameters; 0, or -1 when the run aborted. */
static int backward(run *r, slice *sl, int top) {
  fl_trainer *t = r->t;
  const fl_model *m = t->m;
  if (top < m->nlayers && m->layers[top].b_len && seg_rows(r, sl, top) < 0) return -1;
  int synced = 0; /* as in forward */
  for (int i = top - 1; i >= 0;) {
    const fl__layer *l = &m->layers[i];
    if (whole_batch(r, i)) {
      if (!synced) barrier(t);
      if (atomic_load(&r->abort)) return -1;
      fl__pass p = layer_pass(r, sl, i, 1);
      l->ops->backward(l, &p);
      if (l->ops->channel_split) { /* its rows are its channels: complete where computed */
        if (l->b_len && sl->fused) apply_rows(sl->fused, r->params, t->grad, l, p.c0, p.c1);
        barrier(t);
        synced = 1;
      } else {
        /* row_split: every thread's dx is read from the weights before any is updated,
         * and is complete for the layer below */
        if (p.dx) barrier(t);
        synced = p.dx != NULL;
        if (l->b_len) param_rows(r, sl, i, p.c0, p.c1);
      }
      i--;
      continue;
    }
    /* layers i down to b: sample-wise, and b has parameters, is the first, or is above a
     * whole-batch layer */
    int b = i, work = !t->skip[i];
    while (!m->layers[b].b_len && b > 0 && !whole_batch(r, b - 1)) work |= !t->skip[--b];
    if (work) {
      run_segment(r, sl, &(seg){.f0 = 0, .f1 = 0, .b1 = i + 1, .b0 = b});
      synced = 0;
    }
    if (m->layers[b].b_len && seg_rows(r, sl, b) < 0) return -1;
    i = b - 1;
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
      fl__prox_add(t->grad, r->params, r->cfg->prox_ref, r->cfg->prox_mu, 0, P);
    r->clip_scale = fl__clip_scale(t->grad, P, r->cfg->clip_norm);
    if (isnan(r->clip_scale)) atomic_store(&r->abort, 1);
  }
  barrier(t);
  if (atomic_load(&r->abort)) return;
  sl->step.scale = r->clip_scale;
  size_t a = fl__split((uint32_t)P, sl->k, t->T), b = fl__split((uint32_t)P, sl->k + 1, t->T);
  fl__step_apply(&sl->step, r->params, t->grad + a, a, b - a);
}

/* Thread k's part of one step on the B samples perm[off..off+B), the run's step number
 * j (from 0).  The segments' counters of even steps are one set, of odd steps another:
 * thread 0 clears the next step's set at the start of this one, when every thread is
 * past the last step's final barrier and done with that set, and the next step uses it
 * only after this step's final barrier. */
static void step(run *r, int k, size_t off, int B, uint64_t j) {
  fl_trainer *t = r->t;
  slice sl = {.k = k, .B = B, .off = off, .parity = (int)(j & 1)};
  sl.n = r->chunks < B ? r->chunks : B; /* chunk c is [B c/n, B (c+1)/n) */
  sl.base = (fl__pass){.batch = B, .training = r->training, .update_state = r->update_state,
                       .params = r->params};
  if (r->cfg) {
    fl__step_init(&sl.step, r->cfg, t->m1, t->m2, r->step0 + j + 1, !r->clip);
    sl.step.zero_grad = 1;
    if (!r->clip) sl.fused = &sl.step;
  }
  if (k == 0)
    for (int s = 0; s < t->max_segs; s++)
      atomic_store_explicit(&t->next[(size_t)(1 - sl.parity) * t->max_segs + s], 0,
                            memory_order_relaxed);
  if (r->training && t->m->has_prepare) { /* the dropout masks: thread 0, for the whole
                                           * batch, in layer order */
    if (k == 0)
      for (int i = 0; i < t->m->nlayers; i++) {
        const fl__layer *l = &t->m->layers[i];
        fl__pass p = sl.base;
        p.B = B, p.aux = t->aux[i];
        if (l->ops->prepare) l->ops->prepare(l, &p, &t->drop_rng);
      }
    barrier(t);
  }
  int top = forward(r, &sl);
  if (r->backward && backward(r, &sl, top) == 0 && r->clip) clipped_step(r, &sl);
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
  uint64_t j = 0;
  for (size_t off = 0; off < r->n; off += r->batch, j++) {
    int B = (int)(r->n - off < r->batch ? r->n - off : r->batch);
    step(r, k, off, B, j);
    /* training stops at a non-finite loss (read after the step's last barrier: every
     * thread agrees); evaluation goes on and reports it */
    if (r->backward && atomic_load(&r->abort)) break;
  }
}

static void run_all(run *r) {
  fl_trainer *t = r->t;
  for (int k = 0; k < t->T; k++) t->counts[k].correct = 0;
  for (size_t s = 0; s < 2 * (size_t)t->max_segs; s++) atomic_store(&t->next[s], 0);
  /* One cut for every segment of a step, since a layer may keep in aux what its backward
   * reads relative to the pass's samples (maxpool's offsets into x): max_chunks, or one
   * chunk a thread when a dense layer works sample by sample (outside training), whose
   * product wants the rows together */
  r->chunks = t->max_chunks;
  for (int i = 0; i < t->m->nlayers; i++) {
    const fl__layer_ops *ops = t->m->layers[i].ops;
    if (!t->skip[i] && !whole_batch(r, i) && (ops->param_grad || ops->row_split))
      r->chunks = t->T;
  }
  if (t->team)
    fl__team_run(t->team, run_thread, r);
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
  if (grad) memset(t->grad, 0, sizeof(float) * m->num_trained);
  run_all(&r);
  double sum = loss_sum(t->loss, n, n);
  *loss = sum / n;
  if (!isfinite(sum)) return FL_ENONFINITE;
  if (grad)
    for (size_t i = 0; i < m->num_trained; i++) grad[i] += t->grad[i];
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
  memset(t->grad, 0, sizeof(float) * P); /* from here on each step leaves it zeroed */
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
