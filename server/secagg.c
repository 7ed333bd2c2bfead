/* fl-server's side of secure aggregation (common/secagg.h holds the protocol's state
 * machines; this file moves their messages and decides when each stage is over).
 *
 * An attempt of a round with --secagg runs, among its k selected clients (indexed in the
 * order of their ids):
 *   KEYS    every client is sent its SecAggSetup (before its TrainTask) and answers with
 *           its two public keys, checked here (32 bytes, a point of the curve, not of
 *           small order) before anyone else sees them;
 *   SHARES  U1, the clients whose keys came, are each sent their neighbours' keys and
 *           answer with one sealed pair of shares per neighbour in U1, all of them;
 *   INPUT   U2, the clients whose shares came, are each sent the shares addressed to them;
 *           they send their masked inputs as ring-encoded Updates through the usual
 *           intake (Proceed, update buffers), and each complete one is added into the
 *           running sum on the thread pool (srv_secagg_fold): no unmasked input exists;
 *   UNMASK  U3, the clients whose inputs came, are asked to reveal: shares of the self
 *           masks of U3 and of the keys of U2 \ U3 (the dropped), which
 *           fl_secagg_server_unmask uses to remove every mask from the sum (private.c).
 * KEYS, SHARES and UNMASK wait at most --secagg-timeout each for the clients that have not
 * answered; INPUT is the round's --round-timeout.  A stage ends with fewer clients than
 * the threshold: the attempt fails (logged) and the round is retried.  A client that
 * sends a malformed key, share set or reveal is left out of the attempt from that
 * stage on, named in the log; it cannot stall a stage beyond its timeout.
 *
 * The server never holds one client's unmasked input: it sees masked inputs (uniform in
 * the ring) and, at the end, the sum. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "agree.h"
#include "csprng.h"
#include "error.h"
#include "log.h"
#include "secagg.h"
#include "server_internal.h"

typedef enum { SA_KEYS, SA_SHARES, SA_INPUT, SA_UNMASK } sa_stage;

struct srv_secagg {
  fl_secagg_params p;
  fl_secagg_server *st;
  sa_stage stage;
  int timed_out;             /* the stage's timer fired */
  uint32_t k;                /* neighbours of each client */
  client **who;              /* [n] the clients, NULL once gone or left out */
  uint32_t *nbr;             /* [n * k] each client's neighbours, ascending */
  uint8_t *keys, *u2, *asked, *revealed; /* [n] flags */
  uint8_t (*cpub)[32], (*spub)[32];
  uint8_t *sealed;           /* [n * k] sealed pairs of shares: u's for its i-th neighbour
                              * at u * k + i */
  uint8_t *kind, *share;     /* [n], [n * FL_SECAGG_SHARE_BYTES]: one reveal, decoded */
  double clip, scale, weight_cap;
  int clip_bit;
  size_t n_keys, n_shared, n_asked, n_revealed;
};

static const char *stage_name(sa_stage st) {
  static const char *const names[] = {"keys", "shares", "masked inputs", "unmasking"};
  return names[st];
}

static void on_stage_timer(uv_timer_t *t) {
  server *s = t->data;
  if (!s->sa) return;
  s->sa->timed_out = 1;
  srv_advance(s);
}

static void arm(server *s) {
  s->sa->timed_out = 0;
  s->sa_timer.data = s;
  uv_timer_start(&s->sa_timer, on_stage_timer, (uint64_t)(s->cfg->secagg_timeout * 1000.0 + 0.5), 0);
}

/* u's position among v's neighbours, or -1. */
static int64_t nbr_pos(const struct srv_secagg *a, uint32_t v, uint32_t u) {
  const uint32_t *l = a->nbr + (size_t)v * a->k;
  size_t lo = 0, hi = a->k;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (l[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return lo < a->k && l[lo] == u ? (int64_t)lo : -1;
}

static int by_id(const void *x, const void *y) {
  return strcmp((*(client *const *)x)->id, (*(client *const *)y)->id);
}

void srv_secagg_end(server *s) {
  struct srv_secagg *a = s->sa;
  if (!a) return;
  uv_timer_stop(&s->sa_timer);
  for (uint32_t i = 0; i < a->p.n; i++)
    if (a->who[i]) a->who[i]->sa_index = -1;
  fl_secagg_server_free(a->st);
  free(a->who);
  free(a->nbr);
  free(a->keys);
  free(a->u2);
  free(a->asked);
  free(a->revealed);
  free(a->cpub);
  free(a->spub);
  free(a->sealed);
  free(a->kind);
  free(a->share);
  free(a);
  s->sa = NULL;
}

/* The client leaves the attempt (gone, or left out for what it sent). */
static void leave(server *s, uint32_t i) {
  struct srv_secagg *a = s->sa;
  client *c = a->who[i];
  if (!c) return;
  a->who[i] = NULL;
  c->sa_index = -1;
  srv_count_answer(c); /* it sends no input this attempt (one it sends is refused) */
}

static void leave_out(client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void leave_out(client *c, const char *fmt, ...) {
  server *s = c->srv;
  char reason[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  fl_warn("server", "round %llu: secure aggregation: %s left out: %s",
          (unsigned long long)s->r.number, c->id, reason);
  srv_send_error(c, FL__ERROR_CODE__ERROR_REFUSED, reason);
  leave(s, (uint32_t)c->sa_index);
}

void srv_secagg_client_gone(client *c) {
  server *s = c->srv;
  if (!s->sa || c->sa_index < 0) return;
  s->sa->who[c->sa_index] = NULL;
  c->sa_index = -1;
}

int srv_secagg_begin(server *s, client **sel, size_t k, char *why, size_t len) {
  const server_config *cfg = s->cfg;
  srv_secagg_end(s);
  qsort(sel, k, sizeof *sel, by_id);
  struct srv_secagg *a = calloc(1, sizeof *a);
  if (!a) return fl_errf(why, len, FL_ENOMEM, "out of memory");
  s->sa = a;
  uint32_t n = (uint32_t)k;
  a->p.n = n;
  a->p.round = (s->r.number << 20) | (s->r.attempt & 0xfffff);
  a->k = n > 1 ? n - 1 : 1;
  if (cfg->secagg_neighbors > 0 && (uint32_t)cfg->secagg_neighbors < a->k) a->k = (uint32_t)cfg->secagg_neighbors;
  a->p.neighbors = a->k;
  uint32_t hood = a->k + 1; /* a client and its neighbours */
  a->p.threshold = cfg->secagg_threshold > 0 ? (uint32_t)cfg->secagg_threshold : 2 * hood / 3 + 1;
  if (a->p.threshold > hood) a->p.threshold = hood;
  a->p.bits = s->uplink.enc == FL_ENC_INT8 ? 16 : 32;
  double noise, bit_noise, dp_clip;
  srv_privacy_client(s, a->p.threshold, &dp_clip, &noise, &bit_noise, &a->clip_bit);
  a->p.dim = (uint64_t)s->n + 1 + (uint64_t)a->clip_bit;
  fl_csprng rng;
  if (fl_csprng_init(&rng, "fl-server secagg") ||
      fl_csprng_bytes(&rng, a->p.graph_seed, sizeof a->p.graph_seed)) {
    fl_csprng_free(&rng);
    return fl_errf(why, len, FL_EIO, "no randomness for the neighbour graph");
  }
  fl_csprng_free(&rng);
  int rc = fl_secagg_server_new(&a->p, &a->st, why, len);
  if (rc) return rc;
  /* The per-value clip: --secagg-clip, or with differential privacy the L2 bound plus six
   * deviations of the client's noise (a value beyond it is as good as never). */
  a->clip = dp_clip > 0 ? dp_clip + 6 * noise : cfg->secagg_clip;
  double lim = a->clip > 1 ? a->clip : 1; /* the weight and the clip bit need 1 */
  if (a->clip_bit && 1 + 6 * bit_noise > lim) lim = 1 + 6 * bit_noise;
  rc = fl_secagg_scale(a->p.bits, n, lim, a->p.bits == 16 ? 127.0 / lim : 0, &a->scale, why, len);
  if (rc) return rc;
  a->weight_cap = s->r.unit_weight;
  a->who = calloc(n, sizeof *a->who);
  a->nbr = malloc((size_t)n * a->k * sizeof *a->nbr);
  a->keys = calloc(n, 1), a->u2 = calloc(n, 1), a->asked = calloc(n, 1), a->revealed = calloc(n, 1);
  a->cpub = calloc(n, 32), a->spub = calloc(n, 32);
  a->sealed = malloc((size_t)n * a->k * FL_SECAGG_SEALED);
  a->kind = calloc(n, 1);
  a->share = malloc((size_t)n * FL_SECAGG_SHARE_BYTES);
  if (!a->who || !a->nbr || !a->keys || !a->u2 || !a->asked || !a->revealed || !a->cpub ||
      !a->spub || !a->sealed || !a->kind || !a->share)
    return fl_errf(why, len, FL_ENOMEM, "out of memory for the secure aggregation of %u clients", n);
  for (uint32_t i = 0; i < n; i++) fl_secagg_neighbors(&a->p, i, a->nbr + (size_t)i * a->k);
  s->r.sa_n = n;
  s->r.sa_keys = s->r.sa_shared = s->r.sa_inputs = s->r.sa_revealed = 0;
  s->r.sa_seconds = 0;
  for (uint32_t i = 0; i < n; i++) {
    client *c = sel[i];
    a->who[i] = c;
    c->sa_index = (int)i;
    Fl__Envelope env = FL__ENVELOPE__INIT;
    Fl__SecAggSetup m = FL__SEC_AGG_SETUP__INIT;
    m.round = a->p.round;
    m.index = i;
    m.n = n;
    m.threshold = a->p.threshold;
    m.neighbors = a->p.neighbors;
    m.bits = a->p.bits;
    m.dim = a->p.dim;
    m.graph_seed = (ProtobufCBinaryData){sizeof a->p.graph_seed, a->p.graph_seed};
    m.clip = a->clip;
    m.scale = a->scale;
    m.weight_cap = a->weight_cap;
    m.stochastic = a->p.bits == 16; /* 8 bits a value: unbiased rounding matters */
    m.dp_clip = dp_clip;
    m.dp_noise = noise;
    m.task_round = s->r.number;
    m.clip_bit = a->clip_bit;
    m.bit_noise = bit_noise;
    env.body_case = FL__ENVELOPE__BODY_SECAGG_SETUP;
    env.secagg_setup = &m;
    srv_send(c, &env);
  }
  a->stage = SA_KEYS;
  arm(s);
  fl_info("server", "round %llu: secure aggregation among %u clients, %u neighbours each, "
          "threshold %u, %u-bit ring, values clipped to %g at scale %g",
          (unsigned long long)s->r.number, n, a->k, a->p.threshold, a->p.bits, a->clip, a->scale);
  return 0;
}

/* The message's client and round are this attempt's, in the stage that takes it. */
static int expected(client *c, uint64_t round, sa_stage stage, const char *what) {
  server *s = c->srv;
  struct srv_secagg *a = s->sa;
  /* (after its stage, the secrets are on the thread pool: nothing more is taken) */
  phase ph = stage == SA_UNMASK ? PH_UNMASKING : PH_TRAINING;
  if (!a || c->sa_index < 0 || round != a->p.round || s->ph != ph) {
    fl_debug("server", "%s: %s for no secure aggregation it is in (protocol round %" PRIu64
             "); ignored", c->id, what, round);
    return 0;
  }
  if (a->stage != stage) {
    leave_out(c, "%s during the stage of %s", what, stage_name(a->stage));
    srv_advance(c->srv);
    return 0;
  }
  return 1;
}

void srv_secagg_on_keys(client *c, const Fl__SecAggKeys *m) {
  if (!expected(c, m->round, SA_KEYS, "keys")) return;
  struct srv_secagg *a = c->srv->sa;
  uint32_t u = (uint32_t)c->sa_index;
  if (a->keys[u]) {
    leave_out(c, "sent its keys twice");
  } else if (m->c_pub.len != 32 || m->s_pub.len != 32) {
    leave_out(c, "public keys of %zu and %zu bytes (32 each)", m->c_pub.len, m->s_pub.len);
  } else if (fl_x25519_check(m->c_pub.data) || fl_x25519_check(m->s_pub.data)) {
    leave_out(c, "a public key that is not a usable X25519 point");
  } else {
    memcpy(a->cpub[u], m->c_pub.data, 32);
    memcpy(a->spub[u], m->s_pub.data, 32);
    fl_secagg_server_keys(a->st, u, a->cpub[u], a->spub[u]);
    a->keys[u] = 1;
    a->n_keys++;
  }
  srv_advance(c->srv);
}

void srv_secagg_on_shares(client *c, const Fl__SecAggShares *m) {
  if (!expected(c, m->round, SA_SHARES, "shares")) return;
  struct srv_secagg *a = c->srv->sa;
  uint32_t u = (uint32_t)c->sa_index, want = 0;
  if (a->u2[u]) {
    leave_out(c, "sent its shares twice");
    srv_advance(c->srv);
    return;
  }
  for (uint32_t i = 0; i < a->k; i++) want += a->keys[a->nbr[(size_t)u * a->k + i]];
  uint8_t *got = calloc(a->k, 1);
  const char *bad = !got ? "out of memory"
                    : m->n_peer != m->n_sealed || m->n_peer != want ? "not one sealed pair for each neighbour with keys"
                                                                    : NULL;
  for (size_t j = 0; !bad && j < m->n_peer; j++) {
    int64_t i = m->peer[j] < a->p.n ? nbr_pos(a, u, m->peer[j]) : -1;
    if (i < 0 || !a->keys[m->peer[j]] || got[i]) bad = "a share for a client that is not a neighbour with keys, or twice";
    else if (m->sealed[j].len != FL_SECAGG_SEALED) bad = "a sealed share of the wrong size";
    else {
      got[i] = 1;
      memcpy(a->sealed + ((size_t)u * a->k + (size_t)i) * FL_SECAGG_SEALED, m->sealed[j].data,
             FL_SECAGG_SEALED);
    }
  }
  free(got);
  if (bad) {
    leave_out(c, "%s", bad);
  } else {
    a->u2[u] = 1;
    a->n_shared++;
  }
  srv_advance(c->srv);
}

void srv_secagg_on_reveal(client *c, const Fl__SecAggReveal *m) {
  if (!expected(c, m->round, SA_UNMASK, "a reveal")) return;
  server *s = c->srv;
  struct srv_secagg *a = s->sa;
  uint32_t v = (uint32_t)c->sa_index;
  if (!a->asked[v] || a->revealed[v]) {
    leave_out(c, "a reveal it was not asked for");
    srv_advance(s);
    return;
  }
  memset(a->kind, 0, a->p.n);
  const char *bad = m->n_peer != m->n_kind || m->n_peer != m->n_share || m->n_peer > a->k + 1
                        ? "a malformed reveal" : NULL;
  for (size_t j = 0; !bad && j < m->n_peer; j++) {
    uint32_t u = m->peer[j];
    if (u >= a->p.n || (u != v && nbr_pos(a, v, u) < 0) || a->kind[u])
      bad = "a share of a client that is not a neighbour, or twice";
    else if ((m->kind[j] != 1 && m->kind[j] != 2) || m->share[j].len != FL_SECAGG_SHARE_BYTES)
      bad = "a share of an unknown kind or size";
    else {
      a->kind[u] = (uint8_t)m->kind[j];
      memcpy(a->share + (size_t)u * FL_SECAGG_SHARE_BYTES, m->share[j].data, FL_SECAGG_SHARE_BYTES);
    }
  }
  if (bad) {
    leave_out(c, "%s", bad);
    srv_advance(s);
    return;
  }
  for (size_t j = 0; j < m->n_bad_senders && j < a->k; j++) {
    uint32_t u = m->bad_senders[j];
    client *w = u < a->p.n ? a->who[u] : NULL;
    fl_warn("server", "round %llu: secure aggregation: %s says the shares client %u (%s) sent it "
            "do not open", (unsigned long long)s->r.number, c->id, u, w ? w->id : "gone");
  }
  fl_secagg_server_reveal(a->st, v, a->kind, a->share);
  a->revealed[v] = 1;
  a->n_revealed++;
  srv_advance(s);
}

/* Sends each member of U1 its neighbours' keys (and its own). */
static void send_peers(server *s) {
  struct srv_secagg *a = s->sa;
  uint32_t *idx = malloc((a->k + 1) * sizeof *idx);
  ProtobufCBinaryData *cp = malloc((a->k + 1) * sizeof *cp), *sp = malloc((a->k + 1) * sizeof *sp);
  for (uint32_t u = 0; idx && cp && sp && u < a->p.n; u++) {
    if (!a->who[u] || !a->keys[u]) continue;
    size_t m = 0;
    for (uint32_t i = 0; i <= a->k; i++) {
      uint32_t v = i < a->k ? a->nbr[(size_t)u * a->k + i] : u;
      if (!a->keys[v]) continue;
      idx[m] = v;
      cp[m] = (ProtobufCBinaryData){32, a->cpub[v]};
      sp[m++] = (ProtobufCBinaryData){32, a->spub[v]};
    }
    Fl__Envelope env = FL__ENVELOPE__INIT;
    Fl__SecAggPeers p = FL__SEC_AGG_PEERS__INIT;
    p.round = a->p.round;
    p.n_index = p.n_c_pub = p.n_s_pub = m;
    p.index = idx;
    p.c_pub = cp;
    p.s_pub = sp;
    env.body_case = FL__ENVELOPE__BODY_SECAGG_PEERS;
    env.secagg_peers = &p;
    srv_send(a->who[u], &env);
  }
  free(idx);
  free(cp);
  free(sp);
}

/* Sends each member of U2 the shares addressed to it, and which of its neighbours are
 * in U2 (itself included). */
static void send_shares(server *s) {
  struct srv_secagg *a = s->sa;
  uint32_t *peer = malloc((a->k + 1) * sizeof *peer), *u2 = malloc((a->k + 1) * sizeof *u2);
  ProtobufCBinaryData *blobs = malloc((a->k + 1) * sizeof *blobs);
  for (uint32_t v = 0; peer && u2 && blobs && v < a->p.n; v++) {
    if (!a->who[v] || !a->u2[v]) continue;
    size_t m = 0, q = 0;
    for (uint32_t i = 0; i < a->k; i++) {
      uint32_t u = a->nbr[(size_t)v * a->k + i];
      if (!a->u2[u]) continue;
      u2[q++] = u;
      int64_t j = nbr_pos(a, u, v); /* v among u's neighbours: the graph is symmetric */
      peer[m] = u;
      blobs[m++] = (ProtobufCBinaryData){FL_SECAGG_SEALED,
                                         a->sealed + ((size_t)u * a->k + (size_t)j) * FL_SECAGG_SEALED};
    }
    u2[q++] = v;
    Fl__Envelope env = FL__ENVELOPE__INIT;
    Fl__SecAggShares sh = FL__SEC_AGG_SHARES__INIT;
    sh.round = a->p.round;
    sh.n_peer = sh.n_sealed = m;
    sh.peer = peer;
    sh.sealed = blobs;
    sh.n_u2 = q;
    sh.u2 = u2;
    env.body_case = FL__ENVELOPE__BODY_SECAGG_SHARES;
    env.secagg_shares = &sh;
    srv_send(a->who[v], &env);
  }
  free(peer);
  free(u2);
  free(blobs);
}

/* Clients of the stage that have not answered and are still there. */
static size_t pending(const struct srv_secagg *a, const uint8_t *member, const uint8_t *done) {
  size_t p = 0;
  for (uint32_t u = 0; u < a->p.n; u++) p += a->who[u] && (!member || member[u]) && !done[u];
  return p;
}

int srv_secagg_step(server *s, char *why, size_t len) {
  struct srv_secagg *a = s->sa;
  if (!a) return 0;
  unsigned long long round = (unsigned long long)s->r.number;
  if (a->stage == SA_KEYS) {
    if (pending(a, NULL, a->keys) > 0 && !a->timed_out) return 1;
    s->r.sa_keys = a->n_keys;
    if (a->n_keys < a->p.threshold) {
      fl_errf(why, len, FL_ESTATE, "secure aggregation: %zu of %u clients sent keys, the threshold is %u%s",
              a->n_keys, a->p.n, a->p.threshold, a->timed_out ? " (--secagg-timeout)" : "");
      return -1;
    }
    for (uint32_t u = 0; u < a->p.n; u++)
      if (a->who[u] && !a->keys[u]) {
        fl_warn("server", "round %llu: secure aggregation: %s sent no keys in time", round, a->who[u]->id);
        leave(s, u);
      }
    send_peers(s);
    a->stage = SA_SHARES;
    arm(s);
    fl_debug("server", "round %llu: secure aggregation: %zu clients sent keys", round, a->n_keys);
    return 1;
  }
  if (a->stage == SA_SHARES) {
    if (pending(a, a->keys, a->u2) > 0 && !a->timed_out) return 1;
    s->r.sa_shared = a->n_shared;
    if (a->n_shared < a->p.threshold) {
      fl_errf(why, len, FL_ESTATE, "secure aggregation: %zu of %u clients sent their shares, the "
              "threshold is %u%s", a->n_shared, a->p.n, a->p.threshold,
              a->timed_out ? " (--secagg-timeout)" : "");
      return -1;
    }
    for (uint32_t u = 0; u < a->p.n; u++)
      if (a->who[u] && !a->u2[u]) {
        fl_warn("server", "round %llu: secure aggregation: %s sent no shares in time", round, a->who[u]->id);
        leave(s, u);
      }
    fl_secagg_server_set_u2(a->st, a->u2);
    send_shares(s);
    a->stage = SA_INPUT;
    uv_timer_stop(&s->sa_timer);
    fl_debug("server", "round %llu: secure aggregation: %zu clients sent shares", round, a->n_shared);
    return 0;
  }
  return 0;
}

int srv_secagg_input_ok(const client *c, fl_enc *enc, uint64_t *dim, char *why, size_t len) {
  const struct srv_secagg *a = c->srv->sa;
  if (c->sa_index < 0 || !a->u2[c->sa_index])
    return fl_errf(why, len, FL_EREFUSED, "the client is not among those of this round's secure "
                   "aggregation whose shares were taken");
  if (a->stage != SA_INPUT)
    return fl_errf(why, len, FL_EREFUSED, "a masked input during the stage of %s", stage_name(a->stage));
  *enc = a->p.bits == 16 ? FL_ENC_RING16 : FL_ENC_RING32;
  *dim = a->p.dim;
  return 0;
}

int srv_secagg_fold(server *s, const ready_update *it, char *err, size_t len) {
  struct srv_secagg *a = s->sa;
  size_t pos = 0;
  fl_chunk ch;
  uint32_t *tmp = NULL;
  size_t cap = 0;
  int rc = 0;
  while (!rc && fl_chunk_record_next(it->data, it->len, &pos, it->enc, a->p.dim, &ch)) {
    if (ch.count > cap) {
      free(tmp);
      cap = (size_t)ch.count;
      if (!(tmp = malloc(cap * sizeof *tmp))) return fl_errf(err, len, FL_ENOMEM, "out of memory");
    }
    fl_chunk_ring(&ch, tmp);
    rc = fl_secagg_server_input(a->st, (uint32_t)it->sa_index, ch.offset, tmp, (size_t)ch.count);
  }
  free(tmp);
  if (!rc) rc = fl_secagg_server_input_done(a->st, (uint32_t)it->sa_index);
  if (rc) return fl_errf(err, len, rc, "the masked input of %s does not fit the sum", it->client);
  return 0;
}

int srv_secagg_unmask_begin(server *s, char *why, size_t len) {
  struct srv_secagg *a = s->sa;
  const uint8_t *u3 = fl_secagg_server_u3(a->st);
  size_t n3 = 0;
  for (uint32_t u = 0; u < a->p.n; u++) n3 += u3[u];
  s->r.sa_inputs = n3;
  if (n3 < a->p.threshold)
    return fl_errf(why, len, FL_ESTATE, "secure aggregation: %zu masked inputs, the threshold is %u",
                   n3, a->p.threshold);
  uint32_t *surv = malloc((a->k + 1) * sizeof *surv);
  if (!surv) return fl_errf(why, len, FL_ENOMEM, "out of memory");
  a->stage = SA_UNMASK;
  for (uint32_t v = 0; v < a->p.n; v++) {
    if (!u3[v] || !a->who[v]) continue;
    size_t q = 0;
    for (uint32_t i = 0; i < a->k; i++)
      if (u3[a->nbr[(size_t)v * a->k + i]]) surv[q++] = a->nbr[(size_t)v * a->k + i];
    surv[q++] = v;
    Fl__Envelope env = FL__ENVELOPE__INIT;
    Fl__SecAggUnmask m = FL__SEC_AGG_UNMASK__INIT;
    m.round = a->p.round;
    m.n_survivors = q;
    m.survivors = surv;
    env.body_case = FL__ENVELOPE__BODY_SECAGG_UNMASK;
    env.secagg_unmask = &m;
    srv_send(a->who[v], &env);
    a->asked[v] = 1;
    a->n_asked++;
  }
  free(surv);
  arm(s);
  fl_debug("server", "round %llu: secure aggregation: %zu masked inputs; %zu survivors asked to reveal",
           (unsigned long long)s->r.number, n3, a->n_asked);
  return 0;
}

int srv_secagg_unmask_waiting(const server *s) {
  const struct srv_secagg *a = s->sa;
  return pending(a, a->asked, a->revealed) > 0 && !a->timed_out;
}

size_t srv_secagg_revealed(const server *s) { return s->sa ? s->sa->n_revealed : 0; }

int srv_secagg_result(server *s, double *sum, double *weights, double *bits, char *err, size_t len) {
  struct srv_secagg *a = s->sa;
  uint64_t dim = a->p.dim;
  size_t n = s->n, n3 = s->r.sa_inputs;
  uint32_t *ring = malloc(dim * sizeof *ring);
  if (!ring) return fl_errf(err, len, FL_ENOMEM, "out of memory");
  int rc = fl_secagg_server_unmask(a->st, ring, err, len);
  if (!rc) {
    /* Each value was at most clip (the weight and the bit at most lim) in magnitude: a sum
     * beyond n3 of them, plus rounding, means a client sent a bad input or share. */
    double lim = a->clip > 1 ? a->clip : 1, slack = (double)n3 / a->scale;
    double most = (double)n3 * a->clip + slack;
    for (size_t i = 0; i < n && !rc; i++) {
      sum[i] = fl_secagg_decode(ring[i], a->p.bits, a->scale);
      if (!(fabs(sum[i]) <= most))
        rc = fl_errf(err, len, FL_ERANGE, "the unmasked sum is corrupt (value %zu is %g, beyond "
                     "what %zu clients can add up to): a client sent a bad masked input", i, sum[i], n3);
    }
    *weights = fl_secagg_decode(ring[n], a->p.bits, a->scale);
    *bits = a->clip_bit ? fl_secagg_decode(ring[n + 1], a->p.bits, a->scale) : 0;
    if (!rc && !(*weights > 0 && *weights <= (double)n3 * lim + slack))
      rc = fl_errf(err, len, FL_ERANGE, "the unmasked sum is corrupt (the weights add up to %g from "
                   "%zu clients): a client sent a bad masked input", *weights, n3);
  }
  free(ring);
  return rc;
}
