/* The training loop: a trainer's buffers, forward and backward through the layer table,
 * mini-batch epochs with seeded shuffling, and evaluation (loss, accuracy, ROC AUC).
 *
 * A trainer owns every buffer one thread needs, so trainers on different threads share
 * nothing but the read-only model and dataset.  Batches are gathered row by row from the
 * subset's indices into one batch buffer; the dataset itself is never copied. */
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "layers.h"

struct fl_trainer {
  const fl_model *m;
  uint32_t max_batch;
  const float *x;         /* input of the current pass [B][in_dim] */
  float **act;            /* [nlayers]: act[i] = output of layer i, [max_batch][out_size] */
  void **aux;             /* [nlayers]: pool argmax (int32) or dropout mask, else NULL */
  float *dact[2];         /* ping-pong activation gradients [max_batch][max_width] */
  float *col;             /* conv im2col scratch [max_col] */
  float *loss;            /* per-sample loss [max_batch] */
  float *keep;            /* head state [max_batch][out_dim] */
  float *grad, *m1, *m2;  /* gradient and optimizer state [num_params] */
  float *xb, *yb;         /* gathered batch [max_batch][in_dim], [max_batch] */
  fl_rng drop_rng;
};

static void *alloc_floats(size_t rows, size_t cols) {
  if (cols && rows > SIZE_MAX / sizeof(float) / cols) return NULL;
  size_t n = rows * cols;
  return malloc(sizeof(float) * (n ? n : 1));
}

fl_trainer *fl_trainer_create(const fl_model *m, uint32_t max_batch) {
  if (!m || max_batch == 0) return NULL;
  fl_trainer *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->m = m;
  t->max_batch = max_batch;
  size_t nl = (size_t)m->nlayers, P = m->num_params;
  t->act = calloc(nl ? nl : 1, sizeof *t->act);
  t->aux = calloc(nl ? nl : 1, sizeof *t->aux);
  if (!t->act || !t->aux) goto fail;
  for (size_t i = 0; i < nl; i++) {
    const fl__layer *l = &m->layers[i];
    if (!(t->act[i] = alloc_floats(max_batch, l->out_size))) goto fail;
    if (l->kind == FL__POOL || l->kind == FL__DROPOUT)
      if (!(t->aux[i] = alloc_floats(max_batch, l->out_size))) goto fail;
  }
  for (int k = 0; k < 2; k++)
    if (!(t->dact[k] = alloc_floats(max_batch, m->max_width))) goto fail;
  if (!(t->col = alloc_floats(1, m->max_col)) ||
      !(t->loss = alloc_floats(1, max_batch)) ||
      !(t->keep = alloc_floats(max_batch, m->out_dim)) ||
      !(t->grad = alloc_floats(1, P)) || !(t->m1 = alloc_floats(1, P)) ||
      !(t->m2 = alloc_floats(1, P)) || !(t->xb = alloc_floats(max_batch, m->in_dim)) ||
      !(t->yb = alloc_floats(1, max_batch)))
    goto fail;
  return t;
fail:
  fl_trainer_free(t);
  return NULL;
}

void fl_trainer_free(fl_trainer *t) {
  if (!t) return;
  for (int i = 0; t->act && i < t->m->nlayers; i++) free(t->act[i]);
  for (int i = 0; t->aux && i < t->m->nlayers; i++) free(t->aux[i]);
  free(t->act);
  free(t->aux);
  free(t->dact[0]);
  free(t->dact[1]);
  free(t->col);
  free(t->loss);
  free(t->keep);
  free(t->grad);
  free(t->m1);
  free(t->m2);
  free(t->xb);
  free(t->yb);
  free(t);
}

static const float *layer_input(const fl_trainer *t, int i) {
  return i ? t->act[i - 1] : t->x;
}

static const float *logits(const fl_trainer *t) {
  return layer_input(t, t->m->nlayers);
}

/* Runs every layer and the head on B samples; returns the sum of their losses. */
static double forward(fl_trainer *t, const float *params, const float *x, const float *y,
                      int B, int training) {
  const fl_model *m = t->m;
  t->x = x;
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    const float *in = layer_input(t, i);
    float *out = t->act[i];
    size_t n = (size_t)B * l->out_size;
    switch (l->kind) {
    case FL__DENSE:
      fl__dense_forward(out, in, params + l->w_off, params + l->b_off, B, (int)l->in_size,
                        (int)l->out_size);
      break;
    case FL__CONV:
      fl__conv_forward(out, t->col, in, params + l->w_off, params + l->b_off, B, (int)l->c,
                       (int)l->h, (int)l->w, (int)l->filters, (int)l->ksize);
      break;
    case FL__POOL:
      fl__pool_forward(out, t->aux[i], in, B, (int)l->c, (int)l->h, (int)l->w);
      break;
    case FL__RELU: fl__relu_forward(out, in, n); break;
    case FL__SIGMOID: fl__sigmoid_forward(out, in, n); break;
    case FL__TANH: fl__tanh_forward(out, in, n); break;
    case FL__DROPOUT:
      if (training && l->p > 0.0f)
        fl__dropout_forward(out, t->aux[i], in, l->p, &t->drop_rng, n);
      else
        memcpy(out, in, sizeof(float) * n);
      break;
    }
  }
  const float *z = logits(t);
  switch (m->head) {
  case FL__SOFTMAX: fl__softmax_forward(t->loss, t->keep, z, y, B, (int)m->out_dim); break;
  case FL__SIGMOID_BCE: fl__bce_forward(t->loss, t->keep, z, y, B); break;
  case FL__MSE: fl__mse_forward(t->loss, t->keep, z, y, B); break;
  }
  double sum = 0.0;
  for (int i = 0; i < B; i++) sum += t->loss[i];
  return sum;
}

/* Adds the gradient of the batch's mean loss to grad; forward must have run (training).
 * With sgd (= params, writable) it instead takes a plain SGD step (learning rate lr, L2
 * decay wd) layer by layer, each layer's parameters updated once its input gradient no
 * longer needs them, and leaves grad zeroed as fl__optimizer_step_zero does: dense
 * weights are updated inside the gradient product itself (fl__dense_backward_sgd), so
 * their gradient is never stored. */
static void backward(fl_trainer *t, const float *params, float *grad, const float *y,
                     int B, float *sgd, float lr, float wd) {
  const fl_model *m = t->m;
  int p = 0;
  float *dout = t->dact[p];
  switch (m->head) {
  case FL__SOFTMAX: fl__softmax_backward(dout, t->keep, y, B, (int)m->out_dim); break;
  case FL__SIGMOID_BCE: fl__bce_backward(dout, t->keep, y, B); break;
  case FL__MSE: fl__mse_backward(dout, t->keep, B); break;
  }
  for (int i = m->nlayers - 1; i >= 0; i--) {
    const fl__layer *l = &m->layers[i];
    const float *in = layer_input(t, i), *out = t->act[i];
    float *din = i ? t->dact[p ^ 1] : NULL;
    size_t n = (size_t)B * l->out_size;
    switch (l->kind) {
    case FL__DENSE:
      if (sgd)
        fl__dense_backward_sgd(din, sgd + l->w_off, sgd + l->b_off, grad + l->b_off, dout,
                               in, B, (int)l->in_size, (int)l->out_size, lr, wd);
      else
        fl__dense_backward(din, grad + l->w_off, grad + l->b_off, dout, in,
                           params + l->w_off, B, (int)l->in_size, (int)l->out_size);
      break;
    case FL__CONV:
      fl__conv_backward(din, grad + l->w_off, grad + l->b_off, t->col, dout, in,
                        params + l->w_off, B, (int)l->c, (int)l->h, (int)l->w,
                        (int)l->filters, (int)l->ksize);
      if (sgd) /* weights then bias, contiguous: fl_optimizer_step's plain SGD update */
        for (size_t k = l->w_off; k < l->b_off + l->b_len; k++) {
          sgd[k] -= lr * (grad[k] + wd * sgd[k]);
          grad[k] = 0.0f;
        }
      break;
    case FL__POOL:
      if (din) fl__pool_backward(din, dout, t->aux[i], B, (int)l->c, (int)l->h, (int)l->w);
      break;
    case FL__RELU: if (din) fl__relu_backward(din, dout, out, n); break;
    case FL__SIGMOID: if (din) fl__sigmoid_backward(din, dout, out, n); break;
    case FL__TANH: if (din) fl__tanh_backward(din, dout, out, n); break;
    case FL__DROPOUT:
      if (din) {
        if (l->p > 0.0f)
          fl__dropout_backward(din, dout, t->aux[i], n);
        else
          memcpy(din, dout, sizeof(float) * n);
      }
      break;
    }
    if (!din) break;
    p ^= 1;
    dout = din;
  }
}

/* Correct predictions among the B samples of the last forward pass. */
static size_t count_correct(const fl_trainer *t, const float *y, int B) {
  const fl_model *m = t->m;
  size_t correct = 0;
  if (m->head == FL__SOFTMAX) {
    int C = (int)m->out_dim;
    for (int i = 0; i < B; i++) {
      const float *pi = t->keep + (size_t)i * C;
      int best = 0;
      for (int j = 1; j < C; j++)
        if (pi[j] > pi[best]) best = j;
      correct += best == (int)y[i];
    }
  } else if (m->head == FL__SIGMOID_BCE) {
    const float *z = logits(t);
    for (int i = 0; i < B; i++) correct += (z[i] > 0.0f) == (y[i] > 0.5f);
  }
  return correct;
}

int fl_trainer_grad(fl_trainer *t, const float *params, const float *x, const float *y,
                    uint32_t n, int training, uint64_t seed, float *grad, double *loss) {
  if (n == 0 || n > t->max_batch) return FL_EINVAL;
  fl_rng_seed(&t->drop_rng, seed);
  double sum = forward(t, params, x, y, (int)n, training);
  *loss = sum / n;
  if (!isfinite(sum)) return FL_ENONFINITE;
  if (grad) backward(t, params, grad, y, (int)n, NULL, 0.0f, 0.0f);
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
    int ok = isfinite(v);
    if (m->head == FL__SOFTMAX)
      ok = ok && v >= 0.0f && v < (float)m->out_dim && v == floorf(v);
    else if (m->head == FL__SIGMOID_BCE)
      ok = v == 0.0f || v == 1.0f;
    if (!ok) {
      if (err && errlen)
        snprintf(err, errlen, "sample %zu has label %g, which the model's %s head cannot "
                 "take", r, (double)v,
                 m->head == FL__SOFTMAX ? "softmax"
                 : m->head == FL__SIGMOID_BCE ? "sigmoid_bce" : "mse");
      return FL_EINVAL;
    }
  }
  return 0;
}

/* Copies samples idx[0..B) of d into the batch buffers. */
static void gather(fl_trainer *t, const fl_dataset *d, const uint32_t *idx, int B) {
  size_t dim = d->dim;
  for (int i = 0; i < B; i++) {
    memcpy(t->xb + (size_t)i * dim, d->x + (size_t)idx[i] * dim, sizeof(float) * dim);
    t->yb[i] = d->y[idx[i]];
  }
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
  size_t n = data->n, P = m->num_params;
  int rc = check_config(t, cfg);
  if (rc < 0) return rc;
  if ((rc = fl_check_data(m, data, NULL, 0)) < 0) return rc;
  if (last) memset(last, 0, sizeof *last);
  if (n == 0) return 0;
  if (n > UINT32_MAX) return FL_ERANGE;
  uint32_t *perm = malloc(sizeof *perm * n);
  if (!perm) return FL_ENOMEM;
  memset(t->grad, 0, sizeof(float) * P); /* from here on each step leaves it zeroed */
  memset(t->m1, 0, sizeof(float) * P);
  memset(t->m2, 0, sizeof(float) * P);
  fl_rng_seed2(&t->drop_rng, cfg->seed, UINT64_MAX);
  uint64_t step = 0;
  /* Plain SGD (momentum 0 takes fl_optimizer_step's plain branch, Nesterov or not; no
   * clipping or proximal term, which need the whole gradient first) is applied inside
   * backward: a separate optimizer pass would stream the weights and the full gradient
   * (written by the products, then read, then zeroed) once more, which at small batches
   * costs a large share of the step.  Same update, up to rounding. */
  const int sgd_fused = cfg->optimizer == FL_OPT_SGD && cfg->momentum == 0.0f &&
                        !(cfg->prox_mu > 0.0f) && !(cfg->clip_norm > 0.0f);
  for (uint32_t e = 0; e < cfg->epochs; e++) {
    for (size_t i = 0; i < n; i++) perm[i] = data->idx ? data->idx[i] : (uint32_t)i;
    fl_rng r;
    fl_rng_seed2(&r, cfg->seed, e);
    fl_rng_shuffle_u32(&r, perm, n);
    double sum = 0.0;
    size_t correct = 0;
    for (size_t off = 0; off < n; off += cfg->batch_size) {
      int B = (int)(n - off < cfg->batch_size ? n - off : cfg->batch_size);
      gather(t, data->data, perm + off, B);
      double s = forward(t, params, t->xb, t->yb, B, 1);
      if (!isfinite(s)) { rc = FL_ENONFINITE; goto out; }
      sum += s;
      correct += count_correct(t, t->yb, B);
      ++step;
      if (sgd_fused) {
        backward(t, params, t->grad, t->yb, B, params, cfg->lr, cfg->weight_decay);
      } else {
        backward(t, params, t->grad, t->yb, B, NULL, 0.0f, 0.0f);
        rc = fl__optimizer_step_zero(cfg, params, t->grad, t->m1, t->m2, P, step);
        if (rc < 0) goto out;
      }
    }
    fl_eval ev = {sum / n, m->head == FL__MSE ? 0.0 : (double)correct / n, 0.0, n};
    if (last) *last = ev;
    if (progress) progress(arg, e, &ev);
  }
out:
  free(perm);
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
  scored *s = NULL;
  if (m->head == FL__SIGMOID_BCE && !(s = malloc(sizeof *s * n))) return FL_ENOMEM;
  uint32_t idx[256];
  double sum = 0.0;
  size_t correct = 0;
  for (size_t off = 0; off < n;) {
    int B = (int)(n - off < t->max_batch ? n - off : t->max_batch);
    if (B > 256) B = 256;
    for (int i = 0; i < B; i++)
      idx[i] = data->idx ? data->idx[off + i] : (uint32_t)(off + i);
    gather(t, data->data, idx, B);
    sum += forward(t, params, t->xb, t->yb, B, 0);
    correct += count_correct(t, t->yb, B);
    if (s) {
      const float *z = logits(t);
      for (int i = 0; i < B; i++) s[off + i] = (scored){z[i], t->yb[i]};
    }
    off += (size_t)B;
  }
  out->n = n;
  out->loss = sum / n;
  out->accuracy = m->head == FL__MSE ? 0.0 : (double)correct / n;
  if (s) {
    qsort(s, n, sizeof *s, by_score);
    out->auc = auc_sorted(s, n);
    free(s);
  }
  return isfinite(sum) ? 0 : FL_ENONFINITE;
}
