/* Optimizers over one flat parameter buffer: SGD (momentum, Nesterov), Adam and AdamW,
 * with L2 weight decay, a proximal term and global gradient-norm clipping.
 *
 * Every optimizer is one element-wise loop over a range of the flat buffers, so the same
 * code updates all parameters at once (fl_optimizer_step, the trainer when it clips) or
 * one layer's rows as soon as their gradient is complete (the trainer's fused steps),
 * with the same bits either way. */
#include "train.h"

#include <math.h>
#include <string.h>

#include "error.h"
#include "layers.h"

fl_train_config fl_train_config_default(void) {
  fl_train_config c;
  memset(&c, 0, sizeof c);
  c.optimizer = FL_OPT_SGD;
  c.lr = 0.01f;
  c.beta1 = 0.9f;
  c.beta2 = 0.999f;
  c.eps = 1e-8f;
  c.epochs = 1;
  c.batch_size = 32;
  c.seed = 1;
  return c;
}

int fl_optimizer_parse(const char *name, fl_train_config *cfg) {
  if (!name) return FL_EINVAL;
  if (strcmp(name, "sgd") == 0) {
    cfg->optimizer = FL_OPT_SGD, cfg->momentum = 0.0f, cfg->nesterov = 0;
  } else if (strcmp(name, "momentum") == 0) {
    cfg->optimizer = FL_OPT_SGD, cfg->momentum = 0.9f, cfg->nesterov = 0;
  } else if (strcmp(name, "nesterov") == 0) {
    cfg->optimizer = FL_OPT_SGD, cfg->momentum = 0.9f, cfg->nesterov = 1;
  } else if (strcmp(name, "adam") == 0) {
    cfg->optimizer = FL_OPT_ADAM;
  } else if (strcmp(name, "adamw") == 0) {
    cfg->optimizer = FL_OPT_ADAMW;
  } else {
    return FL_EINVAL;
  }
  return 0;
}

const char *fl_optimizer_name(fl_optimizer_kind k) {
  switch (k) {
  case FL_OPT_SGD: return "sgd";
  case FL_OPT_ADAM: return "adam";
  case FL_OPT_ADAMW: return "adamw";
  }
  return "unknown";
}

void fl__step_init(fl__step *s, const fl_train_config *cfg, float *m, float *v,
                   uint64_t step, int prox) {
  memset(s, 0, sizeof *s);
  s->lr = cfg->lr, s->wd = cfg->weight_decay, s->mom = cfg->momentum;
  s->scale = 1.0f;
  s->m = m, s->v = v;
  if (prox && cfg->prox_mu > 0.0f && cfg->prox_ref)
    s->prox_mu = cfg->prox_mu, s->prox_ref = cfg->prox_ref;
  if (cfg->optimizer == FL_OPT_SGD) {
    s->kind = cfg->momentum == 0.0f ? FL__SGD : cfg->nesterov ? FL__NESTEROV : FL__MOMENTUM;
    s->plain_sgd = s->kind == FL__SGD && !s->prox_ref;
    return;
  }
  /* Adam; AdamW decays the weights directly instead of adding wd*w to the gradient. */
  s->kind = FL__ADAM;
  s->b1 = cfg->beta1, s->b2 = cfg->beta2, s->eps = cfg->eps;
  s->l2 = cfg->optimizer == FL_OPT_ADAMW ? 0.0f : s->wd;
  s->decay = cfg->optimizer == FL_OPT_ADAMW ? 1.0f - s->lr * s->wd : 1.0f;
  const double t = (double)(step ? step : 1);
  s->step_size = (float)(s->lr / (1.0 - pow(s->b1, t)));
  s->inv_bc2 = (float)(1.0 / sqrt(1.0 - pow(s->b2, t)));
}

/* The update of n parameters from their gradient (the proximal term added to it when
 * prox, a constant in every call so that each loop is compiled without the test).  The
 * arithmetic of each optimizer is written once, in the order the reference formulas of
 * train.h give, so any path through it gives the same bits. */
static inline __attribute__((always_inline)) void
apply(const fl__step *s, float *restrict w, float *restrict g, float *restrict m,
      float *restrict v, const float *restrict ref, size_t n, const int prox, const int zero) {
  const float lr = s->lr, wd = s->wd, scale = s->scale, mu = s->prox_mu, mom = s->mom;
  /* the gradient of w[i], read once; with zero, g[i] is left 0 for the next step */
#define GRAD(i) (prox ? g[i] + mu * (w[i] - ref[i]) : g[i])
#define TAKE(gi, i) float gi = GRAD(i); if (zero) g[i] = 0.0f
  switch (s->kind) {
  case FL__SGD:
    for (size_t i = 0; i < n; i++) {
      TAKE(gi, i);
      w[i] -= lr * (gi * scale + wd * w[i]);
    }
    break;
  case FL__NESTEROV:
    for (size_t i = 0; i < n; i++) {
      TAKE(g0, i);
      float gi = g0 * scale + wd * w[i];
      m[i] = mom * m[i] + gi;
      w[i] -= lr * (gi + mom * m[i]);
    }
    break;
  case FL__MOMENTUM:
    for (size_t i = 0; i < n; i++) {
      TAKE(gi, i);
      m[i] = mom * m[i] + gi * scale + wd * w[i];
      w[i] -= lr * m[i];
    }
    break;
  default: {
    const float b1 = s->b1, b2 = s->b2, eps = s->eps, l2 = s->l2, decay = s->decay;
    const float step_size = s->step_size, inv_bc2 = s->inv_bc2;
    for (size_t i = 0; i < n; i++) {
      TAKE(g0, i);
      float gi = g0 * scale + l2 * w[i];
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      w[i] = w[i] * decay - step_size * m[i] / (sqrtf(v[i]) * inv_bc2 + eps);
    }
    break;
  }
  }
#undef TAKE
#undef GRAD
}

/* Element-wise, so wider vectors change no bit: each lane does the same IEEE operations
 * (square root and division are correctly rounded at every width, and optim.c is built
 * with -ffp-contract=off, so no multiply-add is fused).  Built with -fno-math-errno so
 * that sqrtf vectorises (Makefile); cloned for AVX2 and AVX-512 with a run-time pick, as
 * Adam's square root and division are its cost once the data are in cache. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void step_apply(const fl__step *s, float *w, float *g, size_t off, size_t n) {
  float *m = s->m ? s->m + off : NULL, *v = s->v ? s->v + off : NULL;
  const float *ref = s->prox_ref ? s->prox_ref + off : NULL;
  if (s->zero_grad) {
    if (ref) apply(s, w + off, g, m, v, ref, n, 1, 1);
    else apply(s, w + off, g, m, v, NULL, n, 0, 1);
  } else {
    if (ref) apply(s, w + off, g, m, v, ref, n, 1, 0);
    else apply(s, w + off, g, m, v, NULL, n, 0, 0);
  }
}

/* m [n] holds momentum m + g (the product added the gradient to the momentum the last
 * call left scaled): m += wd w; w -= lr m; then m is left as momentum m, the product's
 * next beta of 1 (OpenBLAS scales C in a pass of its own for any other beta, or, in its
 * SkylakeX small-matrix kernel, folds beta C into the product with one rounding).  The
 * same roundings as fl__step_apply's momentum: the same bits. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void momentum_finish(float *restrict w, float *restrict m, float lr, float wd,
                            float mom, size_t n) {
  for (size_t i = 0; i < n; i++) { /* wd w even when wd is 0: the sign of a zero m */
    float mi = m[i] + wd * w[i];
    w[i] -= lr * mi;
    m[i] = mom * mi;
  }
}

/* The clones are static functions: clang (the fuzz builds) resolves only those. */
void fl__step_apply(const fl__step *s, float *w, float *g, size_t off, size_t n) {
  step_apply(s, w, g, off, n);
}

void fl__momentum_finish(float *w, float *m, float lr, float wd, float mom, size_t n) {
  momentum_finish(w, m, lr, wd, mom, n);
}

void fl__prox_add(float *g, const float *w, const float *ref, float mu, size_t off, size_t n) {
  for (size_t i = off; i < off + n; i++) g[i] += mu * (w[i] - ref[i]);
}

float fl__clip_scale(const float *g, size_t n, float clip) {
  double ss = 0.0;
  for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
  double norm = sqrt(ss);
  if (!isfinite(norm)) return NAN;
  return norm > clip ? (float)(clip / norm) : 1.0f;
}

int fl_optimizer_step(const fl_train_config *cfg, float *w, float *g, float *m, float *v,
                      size_t n, uint64_t step) {
  if (cfg->prox_mu > 0.0f && cfg->prox_ref) fl__prox_add(g, w, cfg->prox_ref, cfg->prox_mu, 0, n);
  float scale = cfg->clip_norm > 0.0f ? fl__clip_scale(g, n, cfg->clip_norm) : 1.0f;
  if (isnan(scale)) return FL_ENONFINITE;
  fl__step s;
  fl__step_init(&s, cfg, m, v, step, 0);
  s.scale = scale;
  fl__step_apply(&s, w, g, 0, n);
  return 0;
}
