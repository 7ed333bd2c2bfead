/* Optimizers over one flat parameter buffer: SGD (momentum, Nesterov), Adam and AdamW,
 * with L2 weight decay, a proximal term and global gradient-norm clipping.
 *
 * Every optimizer is one loop over the flat buffers, so the same code updates a dense
 * layer, a convolution or (on the server) a whole aggregated model. */
#include "train.h"

#include <math.h>
#include <string.h>

#include "error.h"

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

/* Adds the proximal gradient mu (w - ref) and returns the factor that brings the global
 * norm down to clip_norm (1 when off or already below). */
static float prox_and_clip(const fl_train_config *cfg, const float *w, float *g, size_t n) {
  if (cfg->prox_mu > 0.0f && cfg->prox_ref) {
    const float mu = cfg->prox_mu, *ref = cfg->prox_ref;
    for (size_t i = 0; i < n; i++) g[i] += mu * (w[i] - ref[i]);
  }
  if (!(cfg->clip_norm > 0.0f)) return 1.0f;
  double ss = 0.0;
  for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
  double norm = sqrt(ss);
  if (!isfinite(norm)) return NAN;
  return norm > cfg->clip_norm ? (float)(cfg->clip_norm / norm) : 1.0f;
}

/* The step; with zero_grad the gradient is left zeroed for the next accumulation, in the
 * same pass that reads it (the trainer's step then never makes a separate memset pass
 * over all parameters). */
static int step_impl(const fl_train_config *cfg, float *restrict w, float *restrict g,
                     float *restrict m, float *restrict v, size_t n, uint64_t step,
                     int zero_grad) {
  float scale = prox_and_clip(cfg, w, g, n);
  if (isnan(scale)) return FL_ENONFINITE;
  const float lr = cfg->lr, wd = cfg->weight_decay;
  if (cfg->optimizer == FL_OPT_SGD) {
    const float mom = cfg->momentum;
    if (mom == 0.0f) {
      for (size_t i = 0; i < n; i++) {
        w[i] -= lr * (g[i] * scale + wd * w[i]);
        if (zero_grad) g[i] = 0.0f;
      }
    } else if (cfg->nesterov) {
      for (size_t i = 0; i < n; i++) {
        float gi = g[i] * scale + wd * w[i];
        if (zero_grad) g[i] = 0.0f;
        m[i] = mom * m[i] + gi;
        w[i] -= lr * (gi + mom * m[i]);
      }
    } else {
      for (size_t i = 0; i < n; i++) {
        m[i] = mom * m[i] + g[i] * scale + wd * w[i];
        if (zero_grad) g[i] = 0.0f;
        w[i] -= lr * m[i];
      }
    }
    return 0;
  }
  /* Adam; AdamW decays the weights directly instead of adding wd*w to the gradient. */
  const float b1 = cfg->beta1, b2 = cfg->beta2, eps = cfg->eps;
  const float l2 = cfg->optimizer == FL_OPT_ADAMW ? 0.0f : wd;
  const float decay = cfg->optimizer == FL_OPT_ADAMW ? 1.0f - lr * wd : 1.0f;
  const double t = (double)(step ? step : 1);
  const float step_size = (float)(lr / (1.0 - pow(b1, t)));
  const float inv_bc2 = (float)(1.0 / sqrt(1.0 - pow(b2, t)));
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] * scale + l2 * w[i];
    if (zero_grad) g[i] = 0.0f;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    w[i] = w[i] * decay - step_size * m[i] / (sqrtf(v[i]) * inv_bc2 + eps);
  }
  return 0;
}

int fl_optimizer_step(const fl_train_config *cfg, float *w, float *g, float *m, float *v,
                      size_t n, uint64_t step) {
  return step_impl(cfg, w, g, m, v, n, step, 0);
}

int fl__optimizer_step_zero(const fl_train_config *cfg, float *w, float *g, float *m,
                            float *v, size_t n, uint64_t step) {
  return step_impl(cfg, w, g, m, v, n, step, 1);
}
