/* fl-server's user-level differential privacy: DP-FedAvg (McMahan et al. 2018, "Learning
 * Differentially Private Recurrent Language Models"), with adaptive clipping (Andrew et
 * al. 2021, "Differentially Private Learning with Adaptive Clipping") and an RDP
 * accountant (common/accountant.h).
 *
 * Each round:
 *   sampling   every ready client is selected independently with probability
 *              q = E / N (Poisson sampling, what the accountant assumes), E the expected
 *              count (--clients-per-round) and N the clients ready;
 *   clipping   each update is scaled to L2 norm at most S (by the server in central mode,
 *              by each client before secure aggregation), times its weight
 *              w = min(examples, unit) / unit in [0, 1], so that one user moves the sum
 *              by at most S;
 *   noise      Gaussian of deviation z S on the sum: added by the server (central), or by
 *              each client, deviation z S / sqrt(t), inside the secure sum (distributed:
 *              at least t inputs survive, so the sum's noise is at least z S and no party
 *              ever sees the sum without it);
 *   the mean   the noised sum over the fixed denominator q W (W: the weights of all N
 *              ready clients), the fixed-denominator estimator of the paper, which does
 *              not depend on who was sampled.
 * Adaptive clipping: each client's bit [norm <= S] goes into a sum with noise of
 * deviation sigma_b = max(E / 20, 1.2 z) (the paper's E / 20, raised for small rounds so the
 * bits never take more than a sixth of the budget: z_u <= 1.1 z); S moves to S exp(-0.2 (b - Q)), b the noised fraction, and
 * the update's noise multiplier becomes z_u = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that the
 * two releases together cost what one of multiplier z does.
 *
 * The accountant adds one round of the sampled Gaussian mechanism (q, z) per round whose
 * aggregate was computed; epsilon at --dp-delta goes into the log and the metrics, and
 * --dp-target-epsilon ends the run before a round would pass it.  In distributed mode
 * the server itself knows who was sampled, so against the server the guarantee is that of
 * the Gaussian mechanism without sampling (q = 1): reported as server_epsilon. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "accountant.h"
#include "csprng.h"
#include "error.h"
#include "fileio.h"
#include "log.h"
#include "server_internal.h"

#define CLIP_LR 0.2     /* adaptive clipping's learning rate (the paper's eta_C) */
#define BIT_SHARE 20.0  /* sigma_b = expected clients / BIT_SHARE (the paper's choice) */
#define BIT_FLOOR 1.2   /* ... and at least BIT_FLOOR z, so that z_u <= 1.1 z */

struct srv_privacy {
  fl_accountant acc, acc_server;
  int distributed, adaptive;
  double clip;           /* S this round */
  double z;              /* the noise multiplier the accountant counts */
  double z_update;       /* the updates' share of it (z without adaptive clipping) */
  double sigma_bit;      /* the clip bits' noise (adaptive) */
  double q;              /* this attempt's sampling rate */
  double expected;       /* q N */
  double denom;          /* q W */
  double *sum;           /* [n] central mode without secure aggregation: the clipped sum */
  double weights, bits;
  size_t count;
  fl_rng rng;
};

static double expected_count(const server *s, size_t ready) {
  double e = s->cfg->clients_per_round >= 1 ? s->cfg->clients_per_round
                                            : s->cfg->clients_per_round * (double)ready;
  return e < (double)ready ? e : (double)ready;
}

int srv_privacy_create(server *s, char *err, size_t len) {
  const server_config *cfg = s->cfg;
  if (!(cfg->dp_clip > 0)) return 0;
  struct srv_privacy *p = calloc(1, sizeof *p);
  if (!p) return fl_errf(err, len, FL_ENOMEM, "out of memory");
  s->dp = p;
  fl_accountant_init(&p->acc);
  fl_accountant_init(&p->acc_server);
  p->distributed = strcmp(cfg->dp_mode, "distributed") == 0;
  p->adaptive = cfg->dp_quantile > 0;
  p->clip = cfg->dp_clip;
  p->z = p->z_update = cfg->dp_noise;
  if (!s->cfg->secagg && !(p->sum = calloc(s->n, sizeof *p->sum)))
    return fl_errf(err, len, FL_ENOMEM, "out of memory for the private sum");
  fl_csprng r;
  uint8_t seed[8];
  if (fl_csprng_init(&r, "fl-server dp noise") || fl_csprng_bytes(&r, seed, sizeof seed)) {
    fl_csprng_free(&r);
    return fl_errf(err, len, FL_EIO, "no randomness for the noise");
  }
  fl_csprng_free(&r);
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)seed[i] << (8 * i);
  fl_rng_seed(&p->rng, v);
  fl_info("server", "differential privacy (%s): updates clipped to L2 norm %g%s, noise multiplier "
          "%g, Poisson sampling, epsilon at delta %g%s", cfg->dp_mode, cfg->dp_clip,
          p->adaptive ? " (adaptive)" : "", cfg->dp_noise, cfg->dp_delta,
          p->z > 0 ? "" : " (no noise: no guarantee)");
  return 0;
}

void srv_privacy_free(server *s) {
  if (!s->dp) return;
  free(s->dp->sum);
  free(s->dp);
  s->dp = NULL;
}

int srv_privacy_allows_round(server *s, size_t ready) {
  struct srv_privacy *p = s->dp;
  if (!p || !(s->cfg->dp_target_epsilon > 0) || ready == 0) return 1;
  fl_accountant next = p->acc;
  fl_accountant_add(&next, expected_count(s, ready) / (double)ready, p->z, 1);
  double eps = fl_accountant_epsilon(&next, s->cfg->dp_delta, NULL);
  if (eps <= s->cfg->dp_target_epsilon) return 1;
  fl_info("server", "round %llu would take epsilon to %.4g, past --dp-target-epsilon %g: ending "
          "the run", (unsigned long long)s->r.number, eps, s->cfg->dp_target_epsilon);
  return 0;
}

size_t srv_privacy_select(server *s, size_t m, size_t *chosen) {
  double q = m ? expected_count(s, m) / (double)m : 0;
  size_t k = 0;
  for (size_t i = 0; i < m; i++)
    if (fl_rng_uniform(&s->rng) < q) chosen[k++] = i;
  s->dp->q = q;
  return k;
}

void srv_privacy_begin(server *s, client *const *ready, size_t m, size_t selected) {
  struct srv_privacy *p = s->dp;
  double unit = s->r.unit_weight, w = 0;
  for (size_t i = 0; i < m; i++) {
    double x = s->uniform_weights ? 1 : (double)ready[i]->num_samples;
    w += (x < unit ? x : unit) / unit;
  }
  p->expected = p->q * (double)m;
  p->denom = p->q * w;
  p->weights = p->bits = 0;
  p->count = 0;
  if (p->sum) memset(p->sum, 0, s->n * sizeof *p->sum);
  /* Adaptive clipping spends part of the noise on the bits. */
  p->sigma_bit = p->adaptive ? fmax(p->expected / BIT_SHARE, BIT_FLOOR * p->z) : 0;
  p->z_update = p->z;
  if (p->adaptive && p->z > 0) {
    double r = pow(p->z, -2) - pow(2 * p->sigma_bit, -2);
    p->z_update = 1 / sqrt(r); /* r > 0: sigma_bit >= 1.2 z */
  }
  s->r.dp_clip = p->clip;
  fl_debug("server", "round %llu: %zu of %zu clients sampled (q %.4g), clip %g", (unsigned long long)s->r.number,
           selected, m, p->q, p->clip);
}

void srv_privacy_client(const server *s, uint32_t threshold, double *clip, double *noise,
                        double *bit_noise, int *clip_bit) {
  const struct srv_privacy *p = s->dp;
  *clip = *noise = *bit_noise = 0;
  *clip_bit = 0;
  if (!p) return;
  *clip = p->clip;
  *clip_bit = p->adaptive;
  if (p->distributed && threshold > 0) {
    double r = sqrt((double)threshold);
    *noise = p->z_update * p->clip / r;
    *bit_noise = p->sigma_bit / r;
  }
}

void srv_privacy_fold(server *s, const fl_update *u, double weight) {
  struct srv_privacy *p = s->dp;
  double norm = fl_update_norm(u, s->n), unit = s->r.unit_weight;
  double shrink = norm > p->clip ? p->clip / norm : 1;
  double w = (weight < unit ? weight : unit) / unit, a = w * shrink;
  if (u->enc == FL_ENC_FLOAT32) {
    for (size_t i = 0; i < s->n; i++) p->sum[i] += a * (double)u->delta[i];
  } else {
    fl_records_axpy(u->data, u->len, u->enc, s->n, a, p->sum);
  }
  p->weights += w;
  p->bits += norm <= p->clip;
  p->count++;
}

int srv_privacy_mean(server *s, double *sum, double weights, double bits, size_t contributors,
                     float *mean, char *err, size_t len) {
  struct srv_privacy *p = s->dp;
  if (!sum) sum = p->sum, weights = p->weights, bits = p->bits, contributors = p->count;
  (void)weights;
  if (!(p->denom > 0)) return fl_errf(err, len, FL_ESTATE, "no clients to average over");
  /* Central mode: the server adds the noise (distributed: the clients did). */
  if (!p->distributed) {
    double sd = p->z_update * p->clip;
    if (sd > 0)
      for (size_t i = 0; i < s->n; i++) sum[i] += sd * fl_rng_normal(&p->rng);
    if (p->adaptive) bits += p->sigma_bit * fl_rng_normal(&p->rng);
  }
  for (size_t i = 0; i < s->n; i++) mean[i] = (float)(sum[i] / p->denom);
  if (p->adaptive) {
    double b = bits / p->expected;
    s->r.dp_within = b;
    p->clip *= exp(-CLIP_LR * (b - s->cfg->dp_quantile));
  }
  if (p->z > 0) {
    fl_accountant_add(&p->acc, p->q, p->z, 1);
    fl_accountant_add(&p->acc_server, 1.0, p->z, 1);
  }
  (void)contributors;
  return 0;
}

double srv_privacy_epsilon(const server *s, double *server_epsilon) {
  const struct srv_privacy *p = s->dp;
  if (server_epsilon)
    *server_epsilon = p && p->distributed ? fl_accountant_epsilon(&p->acc_server, s->cfg->dp_delta, NULL) : NAN;
  if (!p) return NAN;
  return p->z > 0 ? fl_accountant_epsilon(&p->acc, s->cfg->dp_delta, NULL) : INFINITY;
}

/* ---- the checkpoint's privacy state ----
 *
 *   "FLDP" | u32 orders | f64 clip | u64 rounds | f64 rdp[orders] (the accountant) |
 *   u64 rounds | f64 rdp[orders] (the server's accountant, distributed mode)
 * little-endian, doubles as their IEEE bits. */
#define STATE_LEN (4 + 4 + 8 + 2 * (8 + 8 * FL_ACCOUNTANT_ORDERS))

static uint8_t *put_double(uint8_t *b, double v) {
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  fl_put64(b, u);
  return b + 8;
}

static const uint8_t *get_double(const uint8_t *b, double *v) {
  uint64_t u = fl_get64(b);
  memcpy(v, &u, sizeof u);
  return b + 8;
}

int srv_privacy_save(const server *s, uint8_t **out, size_t *len) {
  const struct srv_privacy *p = s->dp;
  *out = NULL;
  *len = 0;
  if (!p) return 0;
  uint8_t *b = malloc(STATE_LEN), *q = b;
  if (!b) return FL_ENOMEM;
  memcpy(q, "FLDP", 4);
  fl_put32(q + 4, FL_ACCOUNTANT_ORDERS);
  q = put_double(q + 8, p->clip);
  const fl_accountant *acc[2] = {&p->acc, &p->acc_server};
  for (int k = 0; k < 2; k++) {
    fl_put64(q, acc[k]->rounds);
    q += 8;
    for (int i = 0; i < FL_ACCOUNTANT_ORDERS; i++) q = put_double(q, acc[k]->rdp[i]);
  }
  *out = b;
  *len = STATE_LEN;
  return 0;
}

int srv_privacy_load(server *s, const uint8_t *b, size_t len, char *err, size_t errlen) {
  struct srv_privacy *p = s->dp;
  if (!p) {
    if (len)
      fl_warn("server", "--resume: the checkpoint holds a privacy accountant, but differential "
              "privacy is off now: its epsilon is no longer reported");
    return 0;
  }
  if (!len)
    return fl_errf(err, errlen, FL_EMISMATCH, "the checkpoint holds no privacy accountant (the run "
                   "before was not private, or is older): resuming would count epsilon from 0; "
                   "start a new run instead");
  if (len != STATE_LEN || memcmp(b, "FLDP", 4) != 0 || fl_get32(b + 4) != FL_ACCOUNTANT_ORDERS)
    return fl_errf(err, errlen, FL_EFORMAT, "the checkpoint's privacy state is not one this "
                   "build reads (%zu bytes)", len);
  double clip;
  const uint8_t *q = get_double(b + 8, &clip);
  fl_accountant acc[2];
  for (int k = 0; k < 2; k++) {
    fl_accountant_init(&acc[k]);
    acc[k].rounds = fl_get64(q);
    q += 8;
    for (int i = 0; i < FL_ACCOUNTANT_ORDERS; i++) {
      q = get_double(q, &acc[k].rdp[i]);
      if (!(acc[k].rdp[i] >= 0)) /* NaN too; +inf is a spent budget, kept as it is */
        return fl_errf(err, errlen, FL_EFORMAT, "the checkpoint's privacy accountant is corrupt");
    }
  }
  if (!(clip > 0) || !isfinite(clip))
    return fl_errf(err, errlen, FL_EFORMAT, "the checkpoint's clipping bound %g is not positive", clip);
  p->acc = acc[0];
  p->acc_server = acc[1];
  if (p->adaptive) p->clip = clip; /* a fixed bound is the configuration's */
  fl_info("server", "--resume: the privacy accountant goes on from %llu rounds (epsilon %.4g at "
          "delta %g)%s", (unsigned long long)p->acc.rounds,
          p->z > 0 ? fl_accountant_epsilon(&p->acc, s->cfg->dp_delta, NULL) : INFINITY,
          s->cfg->dp_delta, p->adaptive ? ", adaptive clipping bound restored" : "");
  return 0;
}
