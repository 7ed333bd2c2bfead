/* Secure aggregation through the real fl-server, over real TLS.
 *
 * Scripted clients live in this test, on its own libuv loop, and speak the protocol with
 * common/secagg.h's client state machine; each knows exactly what it sends, so the test
 * knows the sum the server must find.  A plan says, per round and attempt, which clients
 * drop out and at which stage (they close their connection on the message that starts
 * it, and connect again at once, as a new client, for the next attempt):
 *   - keys:    on its SecAggSetup, before sending keys;
 *   - shares:  on its neighbours' keys, before sending shares;
 *   - input:   on the shares addressed to it, before sending its masked input;
 *   - unmask:  on the request to reveal, before revealing.
 * Every model a client receives is checked against the last one plus the weighted mean of
 * the deltas of the clients whose inputs were summed (the survivors), within the fixed
 * point's bound: so a round applied wrongly fails the next round's first model.
 *
 * - up to n - t dropouts at each stage: every round completes in one attempt;
 * - more than n - t at a stage: the attempt fails, logged with the stage and the
 *   threshold, and the retry (everyone back) completes the round;
 * - SecAgg+ (4 neighbours of 10): the same sums, with dropouts;
 * - a client sending a key that is no usable point, or shares of the wrong size, is left
 *   out, named, and the round completes without it;
 * - the masked input a client sends (what the server receives) is indistinguishable from
 *   uniform bytes for two different inputs, while the unmasked ones are far from it;
 * - the server process never holds one client's unmasked update: its memory, read while
 *   it waits between rounds, holds no run of that update's values (found in a run
 *   without secure aggregation, the control). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <uv.h>

#include "codec.h"
#include "conn.h"
#include "model.h"
#include "modelfile.h"
#include "msg.h"
#include "secagg.h"
#include "testutil.h"

#define MAXC 12
#define MAXROUND 8

typedef enum { DROP_NONE, DROP_KEYS, DROP_SHARES, DROP_INPUT, DROP_UNMASK } stage;
typedef enum { BAD_NONE, BAD_KEY, BAD_SHARES } misdeed;

typedef struct run run;
typedef struct sac {
  run *r;
  int index;                 /* client-000(index+1) */
  fl_tls_config *tls;
  fl_conn *conn;
  uint64_t examples;         /* declared and claimed */
  /* the round in hand */
  uint64_t round, attempt, model_id, n;
  fl_test_model model;
  int have_model, have_shares, sent_input, left_out;
  fl_secagg_client *sa;
  fl_secagg_params p;
  double clip, scale, cap;
  uint32_t *ring;            /* the masked input, kept until it is sent */
  int done;
} sac;

struct run {
  uv_loop_t loop;
  uv_timer_t deadline;
  int n;
  int secagg;                /* the server runs --secagg */
  int ended;                 /* some client was told Done */
  sac c[MAXC];
  stage (*plan)(const run *r, int index, uint64_t round, uint64_t attempt);
  misdeed (*bad)(const run *r, int index, uint64_t round);
  /* the model of the last round seen, and who was summed in it (per round) */
  float *prev;
  uint64_t prev_round;
  int summed[MAXROUND + 1][MAXC];
  double scale_of[MAXROUND + 1];
  double cap_of[MAXROUND + 1];   /* the unit weight the server announced */
  int checks;                /* models verified */
  double worst;              /* largest error seen, over the bound */
  fl_test_fed f;             /* the server's port, files and log */
  pid_t server;
  void (*after_round)(run *r, uint64_t round); /* when round's result was verified */
  uint32_t *masked_copy[2];  /* the uniformity test: what client 0 sent in rounds 1, 2 */
  uint32_t *plain_copy[2];   /* and what it was before masking */
  size_t masked_len;
};

/* The delta client i sends in round r. */
static float delta_of(int i, uint64_t r, uint64_t j) {
  return 0.001f * (float)(i + 1) + 0.0001f * (float)((j * 7 + r * 3 + (uint64_t)i) % 13) - 0.0006f;
}

static void send_env(sac *c, const Fl__Envelope *env) {
  cr_assert_eq(fl_test_send(c->conn, env), 0);
}

static void reset_round(sac *c) {
  fl_secagg_client_free(c->sa);
  c->sa = NULL;
  free(c->ring);
  c->ring = NULL;
  c->have_model = c->have_shares = c->sent_input = c->left_out = 0;
}

static void connect_client(sac *c);

static void drop(sac *c, const char *why) {
  (void)why;
  reset_round(c);
  fl_conn_close(c->conn, "dropping out");
}

static stage plan_of(sac *c) {
  return c->r->plan ? c->r->plan(c->r, c->index, c->round, c->attempt) : DROP_NONE;
}

static misdeed bad_of(sac *c) { return c->r->bad ? c->r->bad(c->r, c->index, c->round) : BAD_NONE; }

/* Checks a new round's model against the previous one plus the weighted mean of the
 * summed deltas (the mean of the survivors of the round before). */
static void check_model(run *r, uint64_t round, const float *model, uint64_t n) {
  if (r->prev && round == r->prev_round + 1) {
    uint64_t pr = r->prev_round;
    double cap = 0, wsum = 0, *sum = calloc(n, sizeof *sum);
    int k = 0;
    for (int i = 0; i < r->n; i++)
      if ((double)r->c[i].examples > cap) cap = (double)r->c[i].examples;
    if (r->secagg) cap = r->cap_of[pr]; /* private rounds cap weights at 1 unit */
    for (int i = 0; i < r->n; i++) {
      if (!r->summed[pr][i]) continue;
      double w = fmin((double)r->c[i].examples, cap) / cap;
      for (uint64_t j = 0; j < n; j++) sum[j] += w * (double)delta_of(i, pr, j);
      wsum += w;
      k++;
    }
    cr_assert_gt(k, 0, "round %llu: no client was summed", (unsigned long long)pr);
    /* quantization: each element within 1/scale (stochastic) of its value, so the sum
     * within k/scale and the weights' sum too; float rounding besides */
    double q = r->secagg ? (double)k / r->scale_of[pr] : 0;
    for (uint64_t j = 0; j < n; j++) {
      double mean = sum[j] / wsum, want = (double)r->prev[j] + mean;
      double bound = q * (1 + fabs(mean)) / (wsum - q) + 1e-6 * (1 + fabs(want));
      double err = fabs((double)model[j] - want);
      if (err / bound > r->worst) r->worst = err / bound;
      cr_assert_leq(err, bound, "round %llu value %llu: %.9g, expected %.9g (bound %.3g)",
                    (unsigned long long)round, (unsigned long long)j, model[j], want, bound);
    }
    free(sum);
    r->checks++;
    if (r->after_round) r->after_round(r, pr);
  }
  if (!r->prev || round != r->prev_round) {
    free(r->prev);
    r->prev = malloc(n * sizeof *r->prev);
    memcpy(r->prev, model, n * sizeof *model);
    r->prev_round = round;
  }
}

/* The update goes out once the model and the shares are in (plain: the model). */
static void try_input(sac *c) {
  run *r = c->r;
  if (!c->have_model || c->sent_input || c->left_out) return;
  if (r->secagg && !c->have_shares) return;
  Fl__Encoding enc = FL__ENCODING__ENCODING_FLOAT32;
  if (r->secagg) {
    uint64_t dim = c->p.dim;
    c->ring = malloc(dim * sizeof *c->ring);
    double w = (double)(c->examples < c->cap ? c->examples : c->cap) / c->cap;
    uint32_t keep = c->p.bits == 32 ? 0xffffffffu : 0xffffu;
    for (uint64_t j = 0; j < dim; j++) {
      double v = j < c->n ? w * delta_of(c->index, c->round, j) : w;
      if (j < c->n) v = v > c->clip ? c->clip : v < -c->clip ? -c->clip : v;
      c->ring[j] = (uint32_t)(int64_t)nearbyint(v * c->scale) & keep;
    }
    if (c->index == 0 && c->round <= 2 && c->attempt == 1) {
      free(r->plain_copy[c->round - 1]);
      r->plain_copy[c->round - 1] = malloc(dim * sizeof(uint32_t));
      memcpy(r->plain_copy[c->round - 1], c->ring, dim * sizeof(uint32_t));
    }
    char err[256];
    cr_assert_eq(fl_secagg_client_mask(c->sa, c->ring, err, sizeof err), 0, "%s", err);
    if (c->index == 0 && c->round <= 2 && c->attempt == 1) {
      free(r->masked_copy[c->round - 1]);
      r->masked_copy[c->round - 1] = malloc(dim * sizeof(uint32_t));
      memcpy(r->masked_copy[c->round - 1], c->ring, dim * sizeof(uint32_t));
      r->masked_len = dim;
    }
    enc = c->p.bits == 32 ? FL__ENCODING__ENCODING_RING32 : FL__ENCODING__ENCODING_RING16;
  }
  cr_assert_eq(fl_test_send_update(c->conn, c->round, c->model_id, c->n, c->examples, enc,
                                   c->examples), 0);
  c->sent_input = 1;
}

static void send_values(sac *c) {
  run *r = c->r;
  fl_tensor_tx tx;
  float *plain = NULL;
  if (r->secagg) {
    fl_codec ring = {c->p.bits == 32 ? FL_ENC_RING32 : FL_ENC_RING16, 0, 0};
    cr_assert_eq(fl_tensor_tx_init_codec(&tx, &ring, (const float *)(const void *)c->ring, c->p.dim, 65536, 0), 0);
  } else {
    plain = malloc(c->n * sizeof *plain);
    for (uint64_t j = 0; j < c->n; j++) plain[j] = delta_of(c->index, c->round, j);
    fl_tensor_tx_init(&tx, plain, c->n, 65536);
  }
  fl_test_send_tensor(c->conn, &tx);
  free(plain);
  /* The server sums it with the others unless the client drops before unmasking...
   * which does not take it out: only the stages before the input do. */
  r->summed[c->round][c->index] = 1;
}

static void on_setup(sac *c, const Fl__SecAggSetup *m) {
  reset_round(c);
  c->round = m->task_round;
  c->attempt = m->round & 0xfffff;
  c->r->summed[c->round][c->index] = 0;
  if (plan_of(c) == DROP_KEYS) {
    drop(c, "keys");
    return;
  }
  c->p = (fl_secagg_params){.round = m->round, .n = m->n, .threshold = m->threshold,
                            .neighbors = m->neighbors, .bits = m->bits, .dim = m->dim};
  memcpy(c->p.graph_seed, m->graph_seed.data, sizeof c->p.graph_seed);
  c->clip = m->clip;
  c->scale = m->scale;
  c->cap = m->weight_cap;
  c->r->scale_of[c->round] = m->scale;
  c->r->cap_of[c->round] = m->weight_cap;
  /* The unit weight is the median client's examples (one of the declared counts). */
  int known = 0;
  for (int i = 0; i < c->r->n; i++) known |= (double)c->r->c[i].examples == m->weight_cap;
  cr_assert(known, "weight cap %g is no client's example count", m->weight_cap);
  uint8_t cp[32], sp[32];
  char err[256];
  cr_assert_eq(fl_secagg_client_new(&c->p, m->index, &c->sa, cp, sp, err, sizeof err), 0, "%s", err);
  if (bad_of(c) == BAD_KEY) {
    memset(cp, 0, sizeof cp); /* the point of order 4 at u = 0: no usable key */
    c->left_out = 1;
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__SecAggKeys k = FL__SEC_AGG_KEYS__INIT;
  k.round = m->round;
  k.c_pub = (ProtobufCBinaryData){32, cp};
  k.s_pub = (ProtobufCBinaryData){32, sp};
  env.body_case = FL__ENVELOPE__BODY_SECAGG_KEYS;
  env.secagg_keys = &k;
  send_env(c, &env);
}

static void on_peers(sac *c, const Fl__SecAggPeers *m) {
  cr_assert_not_null(c->sa);
  if (plan_of(c) == DROP_SHARES) {
    drop(c, "shares");
    return;
  }
  uint32_t n = c->p.n;
  uint8_t (*cp)[32] = calloc(n, 32), (*sp)[32] = calloc(n, 32), *have = calloc(n, 1);
  uint8_t *sealed = malloc((size_t)n * FL_SECAGG_SEALED), *to = calloc(n, 1);
  for (size_t i = 0; i < m->n_index; i++) {
    memcpy(cp[m->index[i]], m->c_pub[i].data, 32);
    memcpy(sp[m->index[i]], m->s_pub[i].data, 32);
    have[m->index[i]] = 1;
  }
  char err[256];
  cr_assert_eq(fl_secagg_client_shares(c->sa, (const uint8_t(*)[32])cp, (const uint8_t(*)[32])sp,
                                       have, sealed, to, err, sizeof err), 0, "%s", err);
  uint32_t *peer = malloc(n * sizeof *peer);
  ProtobufCBinaryData *blobs = malloc(n * sizeof *blobs);
  size_t k = 0;
  for (uint32_t v = 0; v < n; v++)
    if (to[v]) {
      peer[k] = v;
      blobs[k++] = (ProtobufCBinaryData){FL_SECAGG_SEALED, sealed + (size_t)v * FL_SECAGG_SEALED};
    }
  if (bad_of(c) == BAD_SHARES && k > 0) {
    blobs[0].len = FL_SECAGG_SEALED - 1; /* one share cut short */
    c->left_out = 1;
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__SecAggShares sh = FL__SEC_AGG_SHARES__INIT;
  sh.round = m->round;
  sh.n_peer = sh.n_sealed = k;
  sh.peer = peer;
  sh.sealed = blobs;
  env.body_case = FL__ENVELOPE__BODY_SECAGG_SHARES;
  env.secagg_shares = &sh;
  send_env(c, &env);
  free(cp), free(sp), free(have), free(sealed), free(to), free(peer), free(blobs);
}

static void on_shares(sac *c, const Fl__SecAggShares *m) {
  cr_assert_not_null(c->sa);
  if (plan_of(c) == DROP_INPUT) {
    drop(c, "input");
    return;
  }
  uint32_t n = c->p.n;
  uint8_t *u2 = calloc(n, 1), *sealed = calloc(n, FL_SECAGG_SEALED);
  for (size_t i = 0; i < m->n_u2; i++) u2[m->u2[i]] = 1;
  for (size_t i = 0; i < m->n_peer; i++)
    memcpy(sealed + (size_t)m->peer[i] * FL_SECAGG_SEALED, m->sealed[i].data, FL_SECAGG_SEALED);
  char err[256];
  cr_assert_eq(fl_secagg_client_take_shares(c->sa, u2, sealed, NULL, err, sizeof err), 0, "%s", err);
  free(u2);
  free(sealed);
  c->have_shares = 1;
  try_input(c);
}

static void on_unmask(sac *c, const Fl__SecAggUnmask *m) {
  cr_assert_not_null(c->sa);
  if (plan_of(c) == DROP_UNMASK) {
    drop(c, "unmask");
    return;
  }
  uint32_t n = c->p.n;
  uint8_t *u3 = calloc(n, 1), *kind = calloc(n, 1), *share = calloc(n, FL_SECAGG_SHARE_BYTES);
  for (size_t i = 0; i < m->n_survivors; i++) u3[m->survivors[i]] = 1;
  char err[256];
  cr_assert_eq(fl_secagg_client_reveal(c->sa, u3, kind, share, err, sizeof err), 0, "%s", err);
  uint32_t *peer = malloc(n * sizeof *peer), *kinds = malloc(n * sizeof *kinds);
  ProtobufCBinaryData *blobs = malloc(n * sizeof *blobs);
  size_t k = 0;
  for (uint32_t u = 0; u < n; u++)
    if (kind[u]) {
      peer[k] = u;
      kinds[k] = kind[u];
      blobs[k++] = (ProtobufCBinaryData){FL_SECAGG_SHARE_BYTES, share + (size_t)u * FL_SECAGG_SHARE_BYTES};
    }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__SecAggReveal rv = FL__SEC_AGG_REVEAL__INIT;
  rv.round = m->round;
  rv.n_peer = rv.n_kind = rv.n_share = k;
  rv.peer = peer;
  rv.kind = kinds;
  rv.share = blobs;
  env.body_case = FL__ENVELOPE__BODY_SECAGG_REVEAL;
  env.secagg_reveal = &rv;
  send_env(c, &env);
  free(u3), free(kind), free(share), free(peer), free(kinds), free(blobs);
}

static void on_frame(fl_conn *conn, const uint8_t *p, size_t len) {
  sac *c = fl_conn_data(conn);
  run *r = c->r;
  Fl__Envelope *env;
  cr_assert_eq(fl_msg_decode(p, len, &env), 0);
  switch (env->body_case) {
  case FL__ENVELOPE__BODY_SECAGG_SETUP: on_setup(c, env->secagg_setup); break;
  case FL__ENVELOPE__BODY_SECAGG_PEERS: on_peers(c, env->secagg_peers); break;
  case FL__ENVELOPE__BODY_SECAGG_SHARES: on_shares(c, env->secagg_shares); break;
  case FL__ENVELOPE__BODY_SECAGG_UNMASK: on_unmask(c, env->secagg_unmask); break;
  case FL__ENVELOPE__BODY_TRAIN_TASK: {
    Fl__TrainTask *t = env->train_task;
    cr_assert_leq(t->round, MAXROUND);
    if (!r->secagg) {
      reset_round(c);
      c->attempt = 1;
    }
    c->round = t->round;
    c->model_id = t->model_id;
    c->n = t->num_params;
    fl_test_model_expect(&c->model, c->n);
    break;
  }
  case FL__ENVELOPE__BODY_CHUNK:
    if (fl_test_model_add(&c->model, env->chunk)) {
      check_model(r, c->round, c->model.values, c->n);
      c->have_model = 1;
      try_input(c);
    }
    break;
  case FL__ENVELOPE__BODY_PROCEED: send_values(c); break;
  case FL__ENVELOPE__BODY_ERROR:
    cr_assert(c->left_out, "client %d: unexpected error from the server: %s", c->index,
              env->error->reason);
    break;
  case FL__ENVELOPE__BODY_DONE:
    c->done = 1;
    r->ended = 1;
    fl_conn_close(conn, "done");
    break;
  default: break;
  }
  fl_msg_free(env);
}

static void on_open(fl_conn *conn) {
  sac *c = fl_conn_data(conn);
  char *caps[] = {"train", "encoding:float32", "secagg"};
  cr_assert_eq(fl_test_send_hello(conn, "test", c->examples, caps, 3), 0);
}

static void on_drain(fl_conn *conn) { (void)conn; }

static int all_done(const run *r) {
  for (int i = 0; i < r->n; i++)
    if (!r->c[i].done) return 0;
  return 1;
}

static void on_close(fl_conn *conn, int err, const char *reason) {
  sac *c = fl_conn_data(conn);
  (void)err;
  (void)reason;
  c->conn = NULL;
  /* A client that dropped out of the last round comes back to a server that has ended:
   * the run is over for it too. */
  if (c->r->ended) c->done = 1;
  if (c->done) {
    uv_handle_t *deadline = (uv_handle_t *)&c->r->deadline;
    if (all_done(c->r) && !uv_is_closing(deadline)) uv_close(deadline, NULL);
    return;
  }
  connect_client(c); /* dropped out: back at once, for the next attempt */
}

static const fl_conn_callbacks cbs = {on_open, on_frame, on_drain, on_close};

static void connect_client(sac *c) {
  fl_conn_options opt;
  fl_conn_options_default(&opt);
  cr_assert_eq(fl_connect(&c->r->loop, c->tls, "127.0.0.1", c->r->f.port, &opt, &cbs, c, &c->conn), 0);
}

static void on_deadline(uv_timer_t *t) {
  run *r = t->data;
  for (int i = 0; i < r->n; i++) {
    r->c[i].done = 1;
    if (r->c[i].conn) fl_conn_close(r->c[i].conn, "test deadline");
  }
  cr_assert_fail("the run did not end in time (server log %s)", r->f.log);
}

/* A run of n scripted clients, with secure aggregation or without, and its federation's
 * files; run_free frees it. */
static run *run_new(int n, int secagg) {
  run *r = calloc(1, sizeof *r);
  r->n = n;
  r->secagg = secagg;
  fl_test_fed_init(&r->f);
  return r;
}

/* Runs fl-server (logreg, the given rounds and extra flags) with r's scripted clients
 * until the server says Done to all of them. */
static void play(run *r, int rounds, const char *const *extra) {
  const char *log = r->f.log;
  char nclients[16], nrounds[16];
  snprintf(nclients, sizeof nclients, "%d", r->n);
  snprintf(nrounds, sizeof nrounds, "%d", rounds);
  const char *argv[40] = {"--model", "logreg", "--rounds", nrounds, "--clients-per-round",
                          nclients, "--min-clients", nclients, "--seed", "3",
                          "--log-level", "debug", "--update-buffers", "4"};
  int argc = 0;
  while (argv[argc]) argc++;
  for (int i = 0; extra && extra[i]; i++) argv[argc++] = extra[i];
  argv[argc] = NULL;
  r->server = fl_test_fed_server_ready_list(&r->f, "server.log", argv);
  cr_assert_gt(r->server, 0, "fl-server did not start (%s)", log);
  uv_loop_init(&r->loop);
  uv_timer_init(&r->loop, &r->deadline);
  r->deadline.data = r;
  uv_timer_start(&r->deadline, on_deadline, (uint64_t)(240000 * fl_test_time_scale()), 0);
  for (int i = 0; i < r->n; i++) {
    sac *c = &r->c[i];
    char cert[600], key[600], err[512];
    fl_test_client_cert(i + 1, cert, key, sizeof cert);
    cr_assert_eq(fl_test_client_tls(cert, key, &c->tls, err, sizeof err), 0, "%s", err);
    c->r = r;
    c->index = i;
    c->examples = 100 + 10 * (uint64_t)i;
    connect_client(c);
  }
  uv_run(&r->loop, UV_RUN_DEFAULT);
  int rc = fl_test_wait(r->server, 60);
  cr_assert_eq(rc, 0, "fl-server exited with %d (log %s)", rc, log);
  cr_assert(fl_test_sanitizer_clean(log), "sanitizer report in %s", log);
  /* The final model: the last round's mean on the model of that round. */
  char err[512], *spec;
  uint64_t id;
  size_t n;
  float *final;
  cr_assert_eq(fl_modelfile_load(r->f.model, &spec, &id, &final, &n, err, sizeof err), 0, "%s", err);
  check_model(r, (uint64_t)rounds + 1, final, n);
  free(spec);
  free(final);
  cr_assert_eq(r->checks, rounds, "%d of %d rounds verified", r->checks, rounds);
  cr_log_info("%d rounds verified; the largest error was %.3g of its bound", r->checks, r->worst);
  for (int i = 0; i < r->n; i++) {
    reset_round(&r->c[i]);
    fl_tls_config_free(r->c[i].tls);
    fl_test_model_free(&r->c[i].model);
  }
  uv_loop_close(&r->loop);
}

static void run_free(run *r) {
  free(r->prev);
  fl_test_fed_free(&r->f);
  for (int i = 0; i < 2; i++) {
    free(r->masked_copy[i]);
    free(r->plain_copy[i]);
  }
  free(r);
}

/* ---- up to n - t dropouts at each stage ---- */

/* Rounds 2..5 each lose three of six clients at one stage: keys, shares, input, unmask. */
static stage plan_within(const run *r, int i, uint64_t round, uint64_t attempt) {
  (void)r;
  (void)attempt;
  static const stage at[] = {DROP_NONE, DROP_NONE, DROP_KEYS, DROP_SHARES, DROP_INPUT, DROP_UNMASK};
  static const int who[6][3] = {{-1}, {-1}, {0, 1, 2}, {3, 4, 5}, {1, 3, 5}, {0, 2, 4}};
  if (round > 5) return DROP_NONE;
  for (int k = 0; k < 3; k++)
    if (who[round][k] == i) return at[round];
  return DROP_NONE;
}

Test(secagg_run, dropouts_at_each_stage_up_to_n_minus_t, .timeout = 600) {
  run *r = run_new(6, 1);
  r->plan = plan_within;
  static const char *const extra[] = {"--secagg", "--secagg-threshold", "3", NULL};
  play(r, 5, extra);
  /* one attempt each, and the stages' counts as planned */
  static const int keys[] = {0, 6, 3, 6, 6, 6}, shares[] = {0, 6, 3, 3, 6, 6},
                   inputs[] = {0, 6, 3, 3, 3, 6}, revealed[] = {0, 6, 3, 3, 3, 3};
  for (int round = 1; round <= 5; round++) {
    char *line = fl_test_metrics_line(r->f.metrics, round);
    cr_assert_not_null(line, "no metrics for round %d", round);
    cr_assert_eq(fl_test_json_num(line, "attempts"), 1, "round %d: %s", round, line);
    char want[160];
    snprintf(want, sizeof want, "\"secagg\":{\"clients\":6,\"keys\":%d,\"shares\":%d,\"inputs\":%d,"
             "\"revealed\":%d", keys[round], shares[round], inputs[round], revealed[round]);
    cr_assert(strstr(line, want), "round %d: expected %s in %s", round, want, line);
    free(line);
  }
  cr_assert_eq(fl_test_count(r->f.log, "sent no keys in time"), 0); /* they dropped, not stalled */
  run_free(r);
}

/* ---- more than n - t: the attempt fails, the retry completes ---- */

static stage plan_beyond(const run *r, int i, uint64_t round, uint64_t attempt) {
  (void)r;
  static const stage at[] = {DROP_NONE, DROP_KEYS, DROP_SHARES, DROP_INPUT, DROP_UNMASK};
  if (attempt != 1 || round > 4) return DROP_NONE;
  return i < 3 ? at[round] : DROP_NONE; /* three of six, the threshold is four */
}

Test(secagg_run, too_many_dropouts_fail_the_attempt_and_the_retry_completes, .timeout = 600) {
  run *r = run_new(6, 1);
  r->plan = plan_beyond;
  static const char *const extra[] = {"--secagg", "--secagg-threshold", "4", NULL};
  play(r, 4, extra);
  for (int round = 1; round <= 4; round++) {
    char *line = fl_test_metrics_line(r->f.metrics, round);
    cr_assert_not_null(line);
    cr_assert_eq(fl_test_json_num(line, "attempts"), 2, "round %d: %s", round, line);
    free(line);
  }
  cr_assert_eq(fl_test_count(r->f.log, "3 of 6 clients sent keys, the threshold is 4"), 1, "%s", r->f.log);
  cr_assert_eq(fl_test_count(r->f.log, "3 of 6 clients sent their shares, the threshold is 4"), 1);
  cr_assert_eq(fl_test_count(r->f.log, "3 masked inputs, the threshold is 4"), 1);
  cr_assert_eq(fl_test_count(r->f.log, "shares, 4 needed"), 1, "%s", r->f.log);
  cr_assert_eq(fl_test_count(r->f.log, "retrying with a new selection"), 4);
  run_free(r);
}

/* ---- SecAgg+: four neighbours of ten ---- */

static stage plan_plus(const run *r, int i, uint64_t round, uint64_t attempt) {
  (void)r;
  (void)attempt;
  if (round == 2 && (i == 2 || i == 7)) return DROP_INPUT;
  if (round == 3 && i == 5) return DROP_UNMASK;
  return DROP_NONE;
}

Test(secagg_run, secagg_plus_with_four_neighbours, .timeout = 600) {
  run *r = run_new(10, 1);
  r->plan = plan_plus;
  static const char *const extra[] = {"--secagg", "--secagg-neighbors", "4", "--secagg-threshold",
                                      "3", NULL};
  play(r, 3, extra);
  cr_assert_eq(fl_test_count(r->f.log, "among 10 clients, 4 neighbours each, threshold 3"), 3);
  run_free(r);
}

/* ---- malformed keys and shares ---- */

static misdeed bad_round1(const run *r, int i, uint64_t round) {
  (void)r;
  if (round != 1) return BAD_NONE;
  return i == 0 ? BAD_KEY : i == 1 ? BAD_SHARES : BAD_NONE;
}

Test(secagg_run, a_bad_key_or_share_leaves_its_client_out, .timeout = 600) {
  run *r = run_new(6, 1);
  r->bad = bad_round1;
  static const char *const extra[] = {"--secagg", "--secagg-threshold", "3", NULL};
  play(r, 2, extra);
  cr_assert_eq(fl_test_count(r->f.log, "client-0001 left out: a public key that is not a usable X25519 point"), 1,
               "%s", r->f.log);
  cr_assert_eq(fl_test_count(r->f.log, "client-0002 left out: a sealed share of the wrong size"), 1);
  char *line = fl_test_metrics_line(r->f.metrics, 1);
  cr_assert(strstr(line, "\"keys\":5,\"shares\":4,\"inputs\":4"), "%s", line);
  cr_assert_eq(fl_test_json_num(line, "attempts"), 1);
  free(line);
  run_free(r);
}

/* ---- what the server sees of one input ---- */

/* Pearson's chi-square of the bytes against 256 equal bins. */
static double chi2_bytes(const uint8_t *b, size_t len) {
  double count[256] = {0};
  for (size_t i = 0; i < len; i++) count[b[i]]++;
  double e = (double)len / 256, x = 0;
  for (int i = 0; i < 256; i++) x += (count[i] - e) * (count[i] - e) / e;
  return x;
}

/* Two samples' byte histograms against each other (chi-square of homogeneity). */
static double chi2_two(const uint8_t *a, const uint8_t *b, size_t len) {
  double ca[256] = {0}, cb[256] = {0}, x = 0;
  for (size_t i = 0; i < len; i++) ca[a[i]]++, cb[b[i]]++;
  for (int i = 0; i < 256; i++)
    if (ca[i] + cb[i] > 0) x += (ca[i] - cb[i]) * (ca[i] - cb[i]) / (ca[i] + cb[i]);
  return x;
}

Test(secagg_run, a_masked_input_looks_uniform, .timeout = 600) {
  run *r = run_new(4, 1);
  static const char *const extra[] = {"--secagg", NULL};
  play(r, 2, extra);
  cr_assert(r->masked_copy[0] && r->masked_copy[1]);
  size_t len = r->masked_len * 4;
  /* 255 degrees of freedom: mean 255, deviation 22.6; 400 is beyond six deviations, a
   * false alarm less than once in a million runs. */
  double m1 = chi2_bytes((uint8_t *)r->masked_copy[0], len), m2 = chi2_bytes((uint8_t *)r->masked_copy[1], len);
  double two = chi2_two((uint8_t *)r->masked_copy[0], (uint8_t *)r->masked_copy[1], len);
  double p1 = chi2_bytes((uint8_t *)r->plain_copy[0], len);
  cr_log_info("chi-square of the masked inputs %.1f and %.1f, of each other %.1f; of the unmasked one %.1f",
              m1, m2, two, p1);
  cr_assert_lt(m1, 400, "round 1's masked input is not uniform: chi-square %.1f", m1);
  cr_assert_lt(m2, 400, "round 2's masked input is not uniform: chi-square %.1f", m2);
  cr_assert_lt(two, 400, "the two masked inputs differ in distribution: chi-square %.1f", two);
  /* the control: the same test tells the unmasked input from uniform at once */
  cr_assert_gt(p1, 10000, "the unmasked input passes for uniform (%.1f): the test cannot tell", p1);
  /* and the inputs really differ (other deltas, another round) */
  cr_assert_neq(memcmp(r->plain_copy[0], r->plain_copy[1], len), 0);
  run_free(r);
}

/* ---- the server's memory ---- */

/* Whether the process's writable memory holds the pattern. */
static int memory_holds(pid_t pid, const uint8_t *pat, size_t len) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
  FILE *maps = fopen(path, "r");
  snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
  FILE *mem = fopen(path, "rb");
  cr_assert(maps && mem, "cannot read the server's memory");
  char line[512];
  int found = 0;
  while (!found && fgets(line, sizeof line, maps)) {
    unsigned long lo, hi;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[0] != 'r' || perms[1] != 'w') continue;
    /* Reservations of terabytes (a sanitizer's shadow) hold no heap data; the rest is read
     * in pieces that overlap by len - 1 bytes, so no run is cut in two. */
    if (hi - lo > (1ul << 33)) continue;
    size_t piece = 16u << 20;
    uint8_t *buf = malloc(piece + len);
    if (!buf) continue;
    for (unsigned long at = lo; !found && at < hi; at += piece) {
      size_t want = hi - at < piece + len - 1 ? hi - at : piece + len - 1;
      if (fseeko(mem, (off_t)at, SEEK_SET) != 0) break;
      size_t got = fread(buf, 1, want, mem);
      if (got >= len && memmem(buf, got, pat, len)) found = 1;
      clearerr(mem);
      if (got < want) break;
    }
    free(buf);
  }
  fclose(maps);
  fclose(mem);
  return found;
}

static int scanned, found_plain, found_fixed;

/* After round 1 (before the server moves on past round 2's start): client 0's delta of
 * round 1, as float32 and as its fixed-point elements, 64 values in a row. */
static void scan_after(run *r, uint64_t round) {
  if (round != 1) return;
  float v[64];
  uint32_t e[64];
  sac *c = &r->c[0];
  for (int j = 0; j < 64; j++) {
    v[j] = delta_of(0, 1, 100 + (uint64_t)j);
    double cap = 0;
    for (int i = 0; i < r->n; i++)
      if ((double)r->c[i].examples > cap) cap = (double)r->c[i].examples;
    if (r->secagg) cap = r->cap_of[1];
    double w = fmin((double)c->examples, cap) / cap;
    e[j] = r->secagg ? (uint32_t)(int64_t)nearbyint(w * v[j] * r->scale_of[1]) : 0;
  }
  found_plain = memory_holds(r->server, (const uint8_t *)v, sizeof v);
  found_fixed = r->secagg ? memory_holds(r->server, (const uint8_t *)e, sizeof e) : 0;
  scanned = 1;
}

static void memory_run(int secagg) {
  run *r = run_new(3, secagg);
  r->after_round = scan_after;
  scanned = found_plain = found_fixed = 0;
  static const char *const with[] = {"--secagg", "--secagg-threshold", "2", NULL};
  play(r, 2, secagg ? with : NULL);
  cr_assert(scanned);
  run_free(r);
}

Test(secagg_run, the_server_never_holds_one_unmasked_update, .timeout = 600) {
  memory_run(0); /* the control: without secure aggregation, the update is in memory */
  cr_assert(found_plain, "the scan did not find a plain update in the server's memory: it cannot tell");
  memory_run(1);
  cr_assert(!found_plain, "client-0001's delta, as float32, is in the server's memory");
  cr_assert(!found_fixed, "client-0001's delta, in fixed point, is in the server's memory");
}
