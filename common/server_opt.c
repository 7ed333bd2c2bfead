/* Server optimizers: how the round's aggregate delta moves the global model.
 *
 *   sgd         x += lr * delta                        (FedAvg with a server rate)
 *   fedavgm     v = momentum * v + delta; x += lr * v  (Hsu et al. 2019)
 *   fedadagrad  m = b1 m + (1-b1) delta; v += delta^2;                     x += eta m / (sqrt v + tau)
 *   fedadam     m = b1 m + (1-b1) delta; v = b2 v + (1-b2) delta^2;         x += eta m / (sqrt v + tau)
 *   fedyogi     m = b1 m + (1-b1) delta; v -= (1-b2) delta^2 sign(v - delta^2); x += eta m / (sqrt v + tau)
 *
 * The adaptive three are Algorithm 2 of Reddi et al. 2021, "Adaptive Federated
 * Optimization", with its defaults (b1 0.9, b2 0.99, tau 1e-3) and its initial state
 * m = 0, v = tau^2; like the paper, no bias correction.  The delta is the aggregate of
 * the clients' deltas (local minus global), so a positive rate moves the model the way
 * the clients moved it.
 *
 * Each step is computed in double from float state.  A step runs twice: first to check
 * that every new value is finite, writing nothing, then to apply it, so a poisoned or
 * overflowing aggregate leaves both the model and the moments as they were. */
#include <math.h>
#include <string.h>

#include "error.h"
#include "strategy_internal.h"

static int finite3(double x, double m, double v) { return isfinite((float)x) && isfinite((float)m) && isfinite((float)v); }

static int sgd_step(fl__opt *o, float *x, const float *d, int apply) {
  double lr = o->p[0];
  for (size_t i = 0; i < o->n; i++) {
    double nx = (double)x[i] + lr * d[i];
    if (!apply) {
      if (!isfinite((float)nx)) return FL_ENONFINITE;
    } else {
      x[i] = (float)nx;
    }
  }
  return 0;
}

static int avgm_step(fl__opt *o, float *x, const float *d, int apply) {
  double lr = o->p[0], beta = o->p[1];
  float *v = o->m[0];
  for (size_t i = 0; i < o->n; i++) {
    double nv = beta * v[i] + d[i], nx = (double)x[i] + lr * nv;
    if (!apply) {
      if (!finite3(nx, nv, 0)) return FL_ENONFINITE;
    } else {
      v[i] = (float)nv;
      x[i] = (float)nx;
    }
  }
  return 0;
}

enum { ADAGRAD, ADAM, YOGI };

static int adaptive_step(fl__opt *o, float *x, const float *d, int apply, int kind) {
  double eta = o->p[0], b1 = o->p[1], b2 = o->p[2], tau = o->p[3];
  float *m = o->m[0], *v = o->m[1];
  for (size_t i = 0; i < o->n; i++) {
    double g = d[i], g2 = g * g, nm = b1 * m[i] + (1 - b1) * g, nv;
    switch (kind) {
    case ADAGRAD: nv = v[i] + g2; break;
    case ADAM: nv = b2 * v[i] + (1 - b2) * g2; break;
    default: {
      double diff = v[i] - g2;
      nv = v[i] - (1 - b2) * g2 * (diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0);
    }
    }
    double nx = (double)x[i] + eta * nm / (sqrt(nv) + tau);
    if (!apply) {
      if (!finite3(nx, nm, nv)) return FL_ENONFINITE;
    } else {
      m[i] = (float)nm;
      v[i] = (float)nv;
      x[i] = (float)nx;
    }
  }
  return 0;
}

static int adagrad_step(fl__opt *o, float *x, const float *d, int apply) {
  return adaptive_step(o, x, d, apply, ADAGRAD);
}
static int adam_step(fl__opt *o, float *x, const float *d, int apply) {
  return adaptive_step(o, x, d, apply, ADAM);
}
static int yogi_step(fl__opt *o, float *x, const float *d, int apply) {
  return adaptive_step(o, x, d, apply, YOGI);
}

static void zero_init(fl__opt *o) {
  for (int k = 0; k < o->ops->moments; k++) memset(o->m[k], 0, o->n * sizeof(float));
}

/* m = 0, v = tau^2 (the paper's v_{-1} >= tau^2). */
static void adaptive_init(fl__opt *o) {
  float t2 = (float)(o->p[3] * o->p[3]);
  memset(o->m[0], 0, o->n * sizeof(float));
  for (size_t i = 0; i < o->n; i++) o->m[1][i] = t2;
}

static const fl__param sgd_params[] = {
    {"lr", 1.0, 0, 1e6, 0, "server learning rate (fl-server --server-lr sets its default)"},
    {NULL, 0, 0, 0, 0, NULL},
};
static const fl__param avgm_params[] = {
    {"lr", 1.0, 0, 1e6, 0, "server learning rate"},
    {"momentum", 0.9, 0, 0.999999, 0, "server momentum"},
    {NULL, 0, 0, 0, 0, NULL},
};
#define ADAPTIVE_PARAMS(eta)                                                          \
  {"eta", eta, 0, 1e6, 0, "server learning rate"},                                    \
  {"beta1", 0.9, 0, 0.999999, 0, "first-moment decay"},                               \
  {"beta2", 0.99, 0, 0.999999, 0, "second-moment decay (unused by fedadagrad)"},      \
  {"tau", 1e-3, 1e-12, 10, 0, "adaptivity: the larger, the closer to plain momentum"}, \
  {NULL, 0, 0, 0, 0, NULL}
static const fl__param adaptive_params[] = {ADAPTIVE_PARAMS(0.01)};

const fl__opt_ops fl__opt_sgd = {
    "sgd", "x += lr * delta: FedAvg's step", sgd_params, 0, NULL, sgd_step,
};
const fl__opt_ops fl__opt_fedavgm = {
    "fedavgm", "server momentum (Hsu et al. 2019)", avgm_params, 1, zero_init, avgm_step,
};
const fl__opt_ops fl__opt_fedadagrad = {
    "fedadagrad", "adaptive server optimizer, Adagrad (Reddi et al. 2021)", adaptive_params, 2,
    adaptive_init, adagrad_step,
};
const fl__opt_ops fl__opt_fedadam = {
    "fedadam", "adaptive server optimizer, Adam (Reddi et al. 2021)", adaptive_params, 2,
    adaptive_init, adam_step,
};
const fl__opt_ops fl__opt_fedyogi = {
    "fedyogi", "adaptive server optimizer, Yogi (Reddi et al. 2021)", adaptive_params, 2,
    adaptive_init, yogi_step,
};
