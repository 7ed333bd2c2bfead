/* libflclient: the client's side of secure aggregation (common/secagg.h).
 *
 * A round aggregated securely begins with the server's SecAggSetup: the client makes its
 * keys and sends them at once, while its fit runs.  The peers' keys come back; it sends
 * its sealed shares; the shares addressed to it and the list of who shared come back.
 * When both the fit and the shares are in, the update is put in fixed point (clipped,
 * weighted; with distributed differential privacy, clipped to an L2 norm and noised
 * first), masked, and sent as ring elements.  Last, the server names the survivors, and
 * the client reveals one share per neighbour: never both shares of one, whatever it is
 * asked (secagg.c refuses).  Everything from the server is checked before use: a
 * message of another round, of the wrong size, or out of order is ignored and logged.
 *
 * The three stages that take time run on libuv's thread pool, not on the loop: sealing
 * the shares (a key agreement with every neighbour), opening those received (another),
 * and the masking (k + 1 keystreams of the model's size).  Each holds up heartbeats, and
 * a loop shared by many clients (a simulation) would do every client's in turn, keeping
 * those the server waits for past its deadline.  One job runs at a time, each stage
 * starting when the server's answer to the one before comes; while it runs the round's
 * state is the job's to read: a reset (a new round, a lost connection) hands the state
 * to the job, which frees it and drops its results when it comes back, and the run does
 * not finish before it has. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "csprng.h"
#include "error.h"
#include "lib_internal.h"

/* What SecAggSetup said, for the encoding. */
struct flc_secagg_cfg {
  fl_secagg_params p;
  uint64_t task_round;
  uint32_t index;
  double clip, scale, weight_cap, dp_clip, dp_noise, bit_noise;
  int stochastic, clip_bit;
  int shares_in;            /* stage 2 reached */
  uint8_t *bad;             /* [n] senders whose shares did not open */
};

/* A stage in flight.  orphan: the round's state, once a reset gave it up. */
typedef enum { JOB_SHARE, JOB_OPEN, JOB_MASK } job_kind;
struct flc_sa_job {
  uv_work_t work;
  job_kind kind;
  fl_client *c;
  struct fl_secagg_client *sa, *orphan;
  uint64_t round;           /* the protocol round, for the message it answers with */
  uint32_t n;
  /* JOB_SHARE: the peers' keys (have: who sent them) in, the sealed shares (to: for
   * whom) out.  JOB_OPEN: have is U2, sealed the shares received; bad out. */
  uint8_t (*cp)[32], (*sp)[32], *have, *sealed, *to, *bad;
  fl_client_task *t;        /* JOB_MASK: its ring elements, masked in place */
  fl_enc enc;
  int rc;
  char err[256];
};

static void job_free(struct flc_sa_job *j) {
  free(j->cp), free(j->sp), free(j->have), free(j->sealed), free(j->to), free(j->bad);
  free(j);
}

static void job_work(uv_work_t *w);
static void job_done(uv_work_t *w, int status);

/* Puts j (its inputs set) on the thread pool: 0, or -1 (logged, j freed). */
static int start_job(fl_client *c, struct flc_sa_job *j, const char *what) {
  j->c = c;
  j->sa = c->sa;
  j->work.data = j;
  int rc = uv_queue_work(c->loop, &j->work, job_work, job_done);
  if (rc < 0) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: cannot start %s: %s", what, uv_strerror(rc));
    if (j->t) flc__task_free(j->t);
    job_free(j);
    return -1;
  }
  c->sa_job = j;
  c->sa_jobs++;
  return 0;
}

/* A message for a stage that cannot start while another runs (the server's order
 * forbids it): 1 when it is to be ignored. */
static int busy(fl_client *c, const char *what) {
  if (!c->sa_job) return 0;
  flc__log(c, FL_CLIENT_LOG_WARN, "secure aggregation: %s while this client's last stage is "
           "still running; ignored", what);
  return 1;
}

void flc__secagg_reset(fl_client *c) {
  if (c->sa_job) { /* the job still reads the state: it frees it when it comes back */
    c->sa_job->orphan = c->sa;
    c->sa_job = NULL;
  } else {
    fl_secagg_client_free(c->sa);
  }
  c->sa = NULL;
  if (c->sa_cfg) free(c->sa_cfg->bad);
  free(c->sa_cfg);
  c->sa_cfg = NULL;
  if (c->sa_task) flc__task_free(c->sa_task);
  c->sa_task = NULL;
}

static int ours(const fl_client *c, uint64_t round, const char *what) {
  if (c->sa && c->sa_cfg->p.round == round) return 1;
  flc__log((fl_client *)c, FL_CLIENT_LOG_WARN, "secure aggregation: %s for protocol round %" PRIu64
           " that this client is not in; ignored", what, round);
  return 0;
}

void flc__on_secagg_setup(fl_client *c, const Fl__SecAggSetup *m) {
  flc__secagg_reset(c);
  struct flc_secagg_cfg *g = calloc(1, sizeof *g);
  if (!g) return;
  g->p = (fl_secagg_params){.round = m->round, .n = m->n, .threshold = m->threshold,
                            .neighbors = m->neighbors, .bits = m->bits, .dim = m->dim};
  if (m->graph_seed.len == sizeof g->p.graph_seed)
    memcpy(g->p.graph_seed, m->graph_seed.data, sizeof g->p.graph_seed);
  g->task_round = m->task_round;
  g->index = m->index;
  g->clip = m->clip;
  g->scale = m->scale;
  g->clip_bit = m->clip_bit;
  g->bit_noise = m->bit_noise;
  g->weight_cap = m->weight_cap >= 1 ? m->weight_cap : 1;
  g->stochastic = m->stochastic;
  g->dp_clip = m->dp_clip;
  g->dp_noise = m->dp_noise;
  g->bad = calloc(m->n ? m->n : 1, 1);
  uint8_t cpub[32], spub[32];
  char err[256];
  /* the largest element a value may become, and the room the ring gives it */
  double top = (m->clip > 1 ? m->clip : 1) * m->scale, room = ldexp(1.0, (int)m->bits - 1);
  int rc = !g->bad || !(m->clip > 0) || !isfinite(m->clip) || !(m->scale >= 1) ||
                   !(top < room) || !(m->dp_clip >= 0) || !isfinite(m->dp_clip) ||
                   !(m->dp_noise >= 0) || !isfinite(m->dp_noise) || !(m->bit_noise >= 0) ||
                   !isfinite(m->bit_noise)
               ? FL_EINVAL
               : fl_secagg_client_new(&g->p, m->index, &c->sa, cpub, spub, err, sizeof err);
  if (rc) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: the server's setup is unusable: %s",
             rc == FL_EINVAL && !c->sa ? "bad clip, scale or noise" : err);
    free(g->bad);
    free(g);
    return;
  }
  c->sa_cfg = g;
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__SecAggKeys k = FL__SEC_AGG_KEYS__INIT;
  k.round = m->round;
  k.c_pub = (ProtobufCBinaryData){32, cpub};
  k.s_pub = (ProtobufCBinaryData){32, spub};
  env.body_case = FL__ENVELOPE__BODY_SECAGG_KEYS;
  env.secagg_keys = &k;
  flc__send(c, &env);
  flc__log(c, FL_CLIENT_LOG_DEBUG, "secure aggregation: round %" PRIu64 ", client %u of %u, keys sent",
           g->task_round, m->index, m->n);
}

void flc__on_secagg_peers(fl_client *c, const Fl__SecAggPeers *m) {
  if (!ours(c, m->round, "peers' keys") || busy(c, "peers' keys")) return;
  uint32_t n = c->sa_cfg->p.n;
  struct flc_sa_job *j = calloc(1, sizeof *j);
  if (j) {
    *j = (struct flc_sa_job){.kind = JOB_SHARE, .round = m->round, .n = n};
    j->cp = calloc(n, 32), j->sp = calloc(n, 32), j->have = calloc(n, 1);
    j->sealed = malloc((size_t)n * FL_SECAGG_SEALED), j->to = calloc(n, 1);
  }
  if (!j || !j->cp || !j->sp || !j->have || !j->sealed || !j->to) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: out of memory");
    if (j) job_free(j);
    return;
  }
  int ok = m->n_index == m->n_c_pub && m->n_index == m->n_s_pub && m->n_index <= n;
  for (size_t i = 0; ok && i < m->n_index; i++) {
    uint32_t v = m->index[i];
    ok = v < n && !j->have[v] && m->c_pub[i].len == 32 && m->s_pub[i].len == 32;
    if (!ok) break;
    memcpy(j->cp[v], m->c_pub[i].data, 32);
    memcpy(j->sp[v], m->s_pub[i].data, 32);
    j->have[v] = 1;
  }
  if (!ok) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: malformed peer keys from the server");
    job_free(j);
    return;
  }
  start_job(c, j, "sharing");
}

/* On the loop: the sealed shares go to the server. */
static void send_shares(fl_client *c, const struct flc_sa_job *j) {
  uint32_t *peer = malloc(j->n * sizeof *peer);
  ProtobufCBinaryData *blobs = malloc(j->n * sizeof *blobs);
  if (!peer || !blobs) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: out of memory");
  } else {
    size_t k = 0;
    for (uint32_t v = 0; v < j->n; v++)
      if (j->to[v]) {
        peer[k] = v;
        blobs[k++] = (ProtobufCBinaryData){FL_SECAGG_SEALED, j->sealed + (size_t)v * FL_SECAGG_SEALED};
      }
    Fl__Envelope env = FL__ENVELOPE__INIT;
    Fl__SecAggShares sh = FL__SEC_AGG_SHARES__INIT;
    sh.round = j->round;
    sh.n_peer = k;
    sh.peer = peer;
    sh.n_sealed = k;
    sh.sealed = blobs;
    env.body_case = FL__ENVELOPE__BODY_SECAGG_SHARES;
    env.secagg_shares = &sh;
    flc__send(c, &env);
  }
  free(peer);
  free(blobs);
}

static void try_send(fl_client *c);

void flc__on_secagg_shares(fl_client *c, const Fl__SecAggShares *m) {
  if (!ours(c, m->round, "shares") || busy(c, "shares")) return;
  uint32_t n = c->sa_cfg->p.n;
  struct flc_sa_job *j = calloc(1, sizeof *j);
  if (j) {
    *j = (struct flc_sa_job){.kind = JOB_OPEN, .round = m->round, .n = n};
    j->have = calloc(n, 1), j->sealed = calloc(n, FL_SECAGG_SEALED), j->bad = calloc(n, 1);
  }
  if (!j || !j->have || !j->sealed || !j->bad) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: out of memory");
    if (j) job_free(j);
    return;
  }
  uint8_t *u2 = j->have;
  int ok = m->n_peer == m->n_sealed && m->n_u2 <= n;
  for (size_t i = 0; ok && i < m->n_u2; i++) ok = m->u2[i] < n && !u2[m->u2[i]] && (u2[m->u2[i]] = 1);
  for (size_t i = 0; ok && i < m->n_peer; i++) {
    ok = m->peer[i] < n && m->sealed[i].len == FL_SECAGG_SEALED;
    if (ok) memcpy(j->sealed + (size_t)m->peer[i] * FL_SECAGG_SEALED, m->sealed[i].data, FL_SECAGG_SEALED);
  }
  if (!ok) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: malformed shares from the server");
    job_free(j);
    return;
  }
  start_job(c, j, "opening the shares");
}

/* On the loop: the shares are open; the input goes once the fit is in too. */
static void shares_open(fl_client *c, const struct flc_sa_job *j) {
  struct flc_secagg_cfg *g = c->sa_cfg;
  memcpy(g->bad, j->bad, j->n);
  for (uint32_t u = 0; u < j->n; u++)
    if (g->bad[u])
      flc__log(c, FL_CLIENT_LOG_WARN, "secure aggregation: the shares client %u sent do not open", u);
  g->shares_in = 1;
  try_send(c);
}

int flc__secagg_take(fl_client *c, fl_client_task *t) {
  if (!c->sa || c->sa_cfg->task_round != t->round) return 0;
  if (c->sa_task) flc__task_free(c->sa_task);
  c->sa_task = t;
  try_send(c);
  return 1;
}

/* The update as ring elements: the delta (clipped to dp_clip in L2 and noised, with
 * differential privacy), times the weight, each value clipped to [-clip, clip] and put in
 * fixed point; then the weight itself (in [0, 1]); with adaptive clipping, last, whether
 * the delta's norm was within dp_clip (plus noise).  Masked, it goes out as the round's
 * Update. */
static void try_send(fl_client *c) {
  struct flc_secagg_cfg *g = c->sa_cfg;
  fl_client_task *t = c->sa_task;
  if (!t || !g->shares_in || c->sa_job) return;
  c->sa_task = NULL;
  uint64_t n = t->n, dim = g->p.dim;
  if (dim != n + 1 + (uint64_t)g->clip_bit) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: inputs of %" PRIu64 " elements for a "
             "model of %" PRIu64 "; nothing sent", dim, n);
    flc__task_free(t);
    return;
  }
  t->ring = malloc(dim * sizeof *t->ring);
  fl_csprng rng;
  if (!t->ring || fl_csprng_init(&rng, "fl secagg noise")) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: out of memory");
    flc__task_free(t);
    return;
  }
  uint8_t seed[8];
  fl_csprng_bytes(&rng, seed, sizeof seed);
  fl_csprng_free(&rng);
  fl_rng r;
  uint64_t s = 0;
  for (int i = 0; i < 8; i++) s |= (uint64_t)seed[i] << (8 * i);
  fl_rng_seed(&r, s);
  double shrink = 1, norm = 0;
  if (g->dp_clip > 0) {
    double sq = 0;
    for (uint64_t i = 0; i < n; i++) sq += (double)t->params[i] * t->params[i];
    norm = sqrt(sq);
    if (norm > g->dp_clip) shrink = g->dp_clip / norm;
  }
  double w = (double)(t->metrics.num_examples < g->weight_cap ? t->metrics.num_examples : g->weight_cap) /
             g->weight_cap;
  double lim = g->clip > 1 ? g->clip : 1; /* the weight and the bit may need 1 */
  uint32_t keep = g->p.bits == 32 ? 0xffffffffu : 0xffffu;
  for (uint64_t i = 0; i < dim; i++) {
    double v;
    if (i < n) {
      v = w * shrink * t->params[i];
      if (g->dp_noise > 0) v += g->dp_noise * fl_rng_normal(&r);
      v = v > g->clip ? g->clip : v < -g->clip ? -g->clip : v;
    } else if (i == n) {
      v = w;
    } else {
      v = (norm <= g->dp_clip ? 1.0 : 0.0) + g->bit_noise * fl_rng_normal(&r);
      v = v > lim ? lim : v < -lim ? -lim : v;
    }
    double q = v * g->scale;
    q = g->stochastic ? floor(q + fl_rng_uniform(&r)) : nearbyint(q);
    t->ring[i] = (uint32_t)(int64_t)q & keep;
  }
  struct flc_sa_job *j = calloc(1, sizeof *j);
  if (!j) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: out of memory");
    flc__task_free(t);
    return;
  }
  *j = (struct flc_sa_job){.kind = JOB_MASK, .t = t,
                           .enc = g->p.bits == 32 ? FL_ENC_RING32 : FL_ENC_RING16};
  start_job(c, j, "masking");
}

static void job_work(uv_work_t *w) {
  struct flc_sa_job *j = w->data;
  switch (j->kind) {
  case JOB_SHARE:
    j->rc = fl_secagg_client_shares(j->sa, (const uint8_t(*)[32])j->cp, (const uint8_t(*)[32])j->sp,
                                    j->have, j->sealed, j->to, j->err, sizeof j->err);
    break;
  case JOB_OPEN:
    j->rc = fl_secagg_client_take_shares(j->sa, j->have, j->sealed, j->bad, j->err, sizeof j->err);
    break;
  case JOB_MASK:
    j->rc = fl_secagg_client_mask(j->sa, j->t->ring, j->err, sizeof j->err);
    break;
  }
}

/* On the loop: the stage's result goes on, unless the round was reset meanwhile. */
static void job_done(uv_work_t *w, int status) {
  static const char *const what[] = {"cannot share: ", "", ""};
  struct flc_sa_job *j = w->data;
  fl_client *c = j->c;
  fl_client_task *t = j->t;
  if (j->orphan || c->sa_job != j) {
    fl_secagg_client_free(j->orphan);
    if (t) flc__task_free(t);
  } else if (status < 0 || j->rc != 0) {
    c->sa_job = NULL;
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: %s%s", what[j->kind],
             status < 0 ? uv_strerror(status) : j->err);
    if (t) flc__task_free(t);
  } else {
    c->sa_job = NULL;
    if (j->kind == JOB_SHARE) {
      send_shares(c, j);
    } else if (j->kind == JOB_OPEN) {
      shares_open(c, j);
    } else {
      fl_codec ring = {j->enc, 0, 0};
      fl_tensor_tx_init_codec(&t->tx, &ring, (const float *)(const void *)t->ring,
                              c->sa_cfg->p.dim, c->chunk_bytes, 0);
      flc__send_update(c, t, ring.enc);
    }
  }
  job_free(j);
  c->sa_jobs--;
  flc__maybe_finished(c);
}

void flc__on_secagg_unmask(fl_client *c, const Fl__SecAggUnmask *m) {
  if (!ours(c, m->round, "unmasking")) return;
  if (c->sa_job) { /* the server went on without this client's input */
    flc__log(c, FL_CLIENT_LOG_WARN, "secure aggregation: asked to unmask before this client's "
             "input was masked; ignored");
    return;
  }
  struct flc_secagg_cfg *g = c->sa_cfg;
  uint32_t n = g->p.n;
  uint8_t *u3 = calloc(n, 1), *kind = calloc(n, 1), *share = calloc(n, FL_SECAGG_SHARE_BYTES);
  uint32_t *peer = malloc(n * sizeof *peer), *kinds = malloc(n * sizeof *kinds), *bad = malloc(n * sizeof *bad);
  ProtobufCBinaryData *blobs = malloc(n * sizeof *blobs);
  char err[256] = "";
  int ok = u3 && kind && share && peer && kinds && bad && blobs && m->n_survivors <= n;
  for (size_t i = 0; ok && i < m->n_survivors; i++) ok = m->survivors[i] < n && (u3[m->survivors[i]] = 1);
  if (!ok) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: a malformed unmasking request");
  } else if (fl_secagg_client_reveal(c->sa, u3, kind, share, err, sizeof err) != 0) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "secure aggregation: %s", err);
  } else {
    size_t k = 0, nb = 0;
    for (uint32_t u = 0; u < n; u++) {
      if (kind[u]) {
        peer[k] = u;
        kinds[k] = kind[u];
        blobs[k++] = (ProtobufCBinaryData){FL_SECAGG_SHARE_BYTES, share + (size_t)u * FL_SECAGG_SHARE_BYTES};
      }
      if (g->bad[u]) bad[nb++] = u;
    }
    Fl__Envelope env = FL__ENVELOPE__INIT;
    Fl__SecAggReveal rv = FL__SEC_AGG_REVEAL__INIT;
    rv.round = m->round;
    rv.n_peer = rv.n_kind = rv.n_share = k;
    rv.peer = peer;
    rv.kind = kinds;
    rv.share = blobs;
    rv.n_bad_senders = nb;
    rv.bad_senders = bad;
    env.body_case = FL__ENVELOPE__BODY_SECAGG_REVEAL;
    env.secagg_reveal = &rv;
    flc__send(c, &env);
  }
  free(u3), free(kind), free(share), free(peer), free(kinds), free(bad), free(blobs);
}
