/* The round state machine of fl-server.
 *
 * One libuv loop runs the rounds; I/O threads serve the connections (iothreads.h) and
 * bring every event to it.  A round goes WAITING (enough clients?) ->
 * TRAINING (tasks out, updates in, each update folded on the thread pool as soon as it
 * is complete) -> AGGREGATING (folds and sends drain, then the strategy applies the
 * aggregate) -> EVALUATING (server-side test data, on the thread pool) -> FED_EVAL
 * (clients evaluate) -> the metrics line, and the next round.  Every event that can move
 * a round on calls advance(), the one place that decides what happens next.
 *
 * Memory does not grow with the clients per round: the global model (one model size),
 * the strategy's double-precision sum (two) and --update-buffers update buffers (one
 * each, two by default) are all the model-sized memory there is.  A client's Update is
 * answered with Proceed once a buffer is free; until then the client waits and sends
 * nothing, so clients that finish together cost no memory while they queue.  Updates
 * that complete while a fold runs are folded together in the next pass.  Likewise at
 * most STREAMS_PER_THREAD clients per I/O thread are sent the model at once (each holds
 * up to a chunk of it, encrypted, until the client has read it); the others wait their
 * turn. */
#include "server.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "bigalloc.h"
#include "checkpoint.h"
#include "dataset.h"
#include "error.h"
#include "iothreads.h"
#include "log.h"
#include "model.h"
#include "modelfile.h"
#include "msg.h"
#include "rng.h"
#include "strategy.h"
#include "train.h"
#include "version.h"

#define STREAMS_PER_THREAD 4 /* enough to keep an I/O thread encrypting */
#define MAX_REFUSALS 64

typedef enum { RX_IDLE, RX_WAIT_BUF, RX_UPDATE, RX_DISCARD, RX_INIT } rx_state;
typedef enum { PH_WAITING, PH_TRAINING, PH_AGGREGATING, PH_EVALUATING, PH_FED_EVAL,
               PH_DONE } phase;

typedef struct client client;

struct client {
  server *srv;
  fl_peer *peer;
  client *prev, *next;       /* srv->clients */
  client *wait_next;         /* srv->waiting: its Update waits for an update buffer */
  char id[128];
  uint64_t num_samples;
  int ready;                 /* said hello, was welcomed */
  int closing;
  int can_params;            /* lists the "params" capability (see ask_init) */
  int no_params;             /* was asked for the initial parameters and did not give them */

  uint64_t task_round;       /* round (and attempt) this client was selected for */
  uint64_t task_attempt;
  int answered;              /* its update for the round has begun (a second is refused) */
  int counted;               /* its answer is in: update complete or refused, or dropped */
  int eval_pending;          /* owes an EvalResult */

  int tx_active;             /* streaming the global model, or waiting to */
  int tx_queued;             /* waiting in srv->tx_queue for a stream slot */
  client *tx_next;
  fl_tensor_tx tx;

  rx_state rx;
  fl_tensor_rx rxt;
  float *buf;                /* update buffer while RX_UPDATE */
  uint64_t upd_examples;
  double upd_loss, upd_acc, upd_seconds;
};

/* One pass of the strategy's fold over every update that was waiting for it. */
typedef struct fold_job {
  uv_work_t work;
  server *srv;
  size_t k;
  const float **bufs;  /* [k] */
  double *weights;     /* [k] */
  int rc;
} fold_job;

typedef struct refusal { char client[128]; char reason[160]; } refusal;

typedef struct round_stats {
  uint64_t number, attempt;
  size_t selected, target, answered, accepted, refused, dropped;
  uint64_t examples;
  double loss_sum, acc_sum;          /* weighted by examples */
  double slowest;                    /* longest local training time reported */
  double test_loss, test_acc;
  int tested;
  double fed_loss, fed_acc;
  uint64_t fed_n;
  size_t fed_asked, fed_answered;
  uint64_t bytes_in0, bytes_out0;
  uint64_t t0;                       /* the round's first selection */
  int timing;                        /* t0 is set */
  refusal refusals[MAX_REFUSALS];
  size_t n_refusals;
  size_t failed;                     /* selected clients whose training failed (their Error) */
  refusal failures[MAX_REFUSALS];
  size_t n_failures;
  int timed_out;
  size_t fold_passes;                /* each folds one or more updates */
} round_stats;

struct server {
  const server_config *cfg;
  uv_loop_t loop;
  uv_timer_t timer;             /* round and federated-evaluation timeouts */
  uv_signal_t sigint, sigterm;
  fl_tls_config *tls;
  fl_io *io;                     /* the I/O threads serving the clients */
  fl_conn_options copt;
  uint8_t *heartbeat;
  size_t heartbeat_len;

  fl_model *model;
  size_t n;                      /* parameters */
  float *global;
  uint64_t model_version;
  fl_strategy *strategy;
  fl_rng rng;
  fl_train_config train_cfg;

  fl_dataset test;
  int have_test;
  fl_trainer *eval_trainer;
  uv_work_t eval_work;
  fl_eval eval_result;
  int eval_rc;

  int n_bufs;                    /* update buffers in all (--update-buffers) */
  float *buf_mem;                /* [n_bufs * n] their memory */
  float **bufs;                  /* [n_bufs] the free ones first */
  int n_free;
  client *waiting, *waiting_tail; /* Updates waiting for a buffer, first come first */
  float **ready;                 /* [n_bufs] complete updates waiting for a fold */
  double *ready_w;               /* their weights */
  int n_ready_bufs;
  fold_job fold;                 /* the one fold under way, if fold_busy */
  int fold_busy;

  client *clients;
  size_t n_clients, n_ready;
  size_t sends_pending;          /* model streams not finished, queued ones too */
  size_t streams;                /* model streams under way (at most max_streams) */
  size_t max_streams;            /* STREAMS_PER_THREAD per I/O thread */
  client *tx_queue, *tx_queue_tail;
  int starting_streams;

  phase ph;
  round_stats r;
  uint64_t bytes_in, bytes_out;
  FILE *metrics;
  char *checkpoint;              /* path */
  uint64_t ready_events;         /* hellos so far: "new clients" for a stalled round */
  uint64_t ready_seen;           /* ready_events when the server began waiting for more */
  int waiting_for_more;
  uint64_t first_round;          /* 1, or the round after the checkpoint's */
  int need_init;                 /* an external model waits for a client's parameters */
  client *init_from;             /* the client asked for them */
  int init_waiting_logged;
  int stopping, exit_code;
  int lingered;                  /* the goodbye is over (see close_all) */
};

static void advance(server *s);
static void arm_timer(server *s, double seconds);
static void on_init_chunk(client *c, const Fl__TensorChunk *ch);
static void start_fold(server *s);
static void stop_run(server *s);
static void end_linger(server *s);

static uint64_t now_ms(server *s) { return uv_now(&s->loop); }

/* ---- sending ---- */

static int send_env(client *c, const Fl__Envelope *env) {
  uint8_t *buf;
  size_t len;
  int rc = fl_msg_encode(env, &buf, &len);
  if (rc) return rc;
  rc = fl_peer_send(c->peer, buf, len);
  if (rc == 0) c->srv->bytes_out += len + 4;
  free(buf);
  return rc;
}

static void send_error(client *c, Fl__ErrorCode code, const char *reason) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Error e = FL__ERROR__INIT;
  uint32_t versions[1] = {FL_PROTOCOL_VERSION};
  e.code = code;
  e.reason = (char *)reason;
  if (code == FL__ERROR_CODE__ERROR_VERSION) {
    e.n_supported_versions = 1;
    e.supported_versions = versions;
  }
  env.body_case = FL__ENVELOPE__BODY_ERROR;
  env.error = &e;
  send_env(c, &env);
}

static void pump_tx(client *c);

/* Gives free stream slots to the clients queued for one.  Not re-entered: a stream that
 * ends inside pump_tx below leaves its slot to this loop. */
static void start_streams(server *s) {
  if (s->starting_streams) return;
  s->starting_streams = 1;
  while (s->tx_queue && s->streams < s->max_streams) {
    client *c = s->tx_queue;
    s->tx_queue = c->tx_next;
    if (!s->tx_queue) s->tx_queue_tail = NULL;
    c->tx_next = NULL;
    c->tx_queued = 0;
    s->streams++;
    pump_tx(c);
  }
  s->starting_streams = 0;
}

static void tx_done(client *c) {
  server *s = c->srv;
  if (!c->tx_active) return;
  c->tx_active = 0;
  s->sends_pending--;
  if (c->tx_queued) {
    client **p = &s->tx_queue, *prev = NULL;
    while (*p != c) {
      prev = *p;
      p = &(*p)->tx_next;
    }
    *p = c->tx_next;
    if (s->tx_queue_tail == c) s->tx_queue_tail = prev;
    c->tx_next = NULL;
    c->tx_queued = 0;
    return;
  }
  s->streams--;
  start_streams(s);
}

/* Streams model chunks while less than high_water of them waits to be written;
 * on_drain continues. */
static void pump_tx(client *c) {
  while (c->tx_active && !c->tx_queued && fl_peer_queued(c->peer) < c->srv->copt.high_water) {
    uint8_t *buf;
    size_t len;
    int rc = fl_tensor_tx_next(&c->tx, &buf, &len);
    if (rc < 0) {
      fl_error("server", "%s: encoding a model chunk failed: %s", c->id, fl_strerror(rc));
      tx_done(c);
      fl_peer_close(c->peer, "internal error");
      return;
    }
    if (rc == 0) {
      /* All queued; the stream keeps its slot until all is written (on_drain at 0), so
       * a client that reads slowly holds the server's memory for one stream, not more. */
      if (fl_peer_queued(c->peer) > 0) return;
      tx_done(c);
      advance(c->srv);
      return;
    }
    rc = fl_peer_send(c->peer, buf, len);
    if (rc == 0) c->srv->bytes_out += len + 4;
    free(buf);
    if (rc) {
      tx_done(c);
      return;
    }
  }
}

static void start_tx(client *c) {
  server *s = c->srv;
  fl_tensor_tx_init(&c->tx, s->global, s->n, (uint32_t)s->cfg->chunk_kib * 1024u);
  c->tx_active = 1;
  c->tx_queued = 1;
  s->sends_pending++;
  if (s->tx_queue_tail) s->tx_queue_tail->tx_next = c;
  else s->tx_queue = c;
  s->tx_queue_tail = c;
  start_streams(s);
}

static void send_train_task(client *c) {
  server *s = c->srv;
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__TrainTask t = FL__TRAIN_TASK__INIT;
  Fl__TrainConfig tc = FL__TRAIN_CONFIG__INIT;
  const server_config *cfg = s->cfg;
  tc.epochs = (uint32_t)cfg->epochs;
  tc.batch_size = (uint32_t)cfg->batch_size;
  tc.lr = (float)cfg->lr;
  tc.optimizer = cfg->optimizer;
  tc.momentum = (float)cfg->momentum;
  tc.weight_decay = (float)cfg->weight_decay;
  tc.prox_mu = (float)cfg->prox_mu;
  tc.clip_norm = (float)cfg->clip_norm;
  tc.seed = cfg->seed * 1000003ULL + s->r.number;
  t.round = s->r.number;
  t.model_version = s->model_version;
  t.model_id = fl_model_id(s->model);
  t.model_spec = (char *)fl_model_spec(s->model);
  t.num_params = s->n;
  t.config = &tc;
  t.encoding = FL__ENCODING__ENCODING_FLOAT32;
  env.body_case = FL__ENVELOPE__BODY_TRAIN_TASK;
  env.train_task = &t;
  if (send_env(c, &env) == 0) start_tx(c);
}

static void send_eval_task(client *c) {
  server *s = c->srv;
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__EvalTask t = FL__EVAL_TASK__INIT;
  t.round = s->r.number;
  t.model_version = s->model_version;
  t.model_id = fl_model_id(s->model);
  t.num_params = s->n;
  t.encoding = FL__ENCODING__ENCODING_FLOAT32;
  env.body_case = FL__ENVELOPE__BODY_EVAL_TASK;
  env.eval_task = &t;
  if (send_env(c, &env) == 0) {
    c->eval_pending = 1;
    s->r.fed_asked++;
    start_tx(c);
  }
}

static void send_done(client *c, const char *reason, uint32_t reconnect_ms) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Done d = FL__DONE__INIT;
  d.reason = (char *)reason;
  d.reconnect_after_ms = reconnect_ms;
  d.rounds = c->srv->model_version;
  env.body_case = FL__ENVELOPE__BODY_DONE;
  env.done = &d;
  send_env(c, &env);
}

/* ---- update buffers and folding ---- */

static void send_proceed(client *c) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Proceed p = FL__PROCEED__INIT;
  p.round = c->task_round;
  env.body_case = FL__ENVELOPE__BODY_PROCEED;
  env.proceed = &p;
  send_env(c, &env);
}

/* The client's update may come: it gets buffer buf and a Proceed. */
static void take_update(client *c, float *buf) {
  c->buf = buf;
  c->rx = RX_UPDATE;
  fl_tensor_rx_init(&c->rxt, buf, c->srv->n, 1);
  send_proceed(c);
}

static void release_buf(server *s, float *buf) {
  client *c = s->waiting;
  if (c) { /* straight to the update that has waited longest */
    s->waiting = c->wait_next;
    if (!s->waiting) s->waiting_tail = NULL;
    c->wait_next = NULL;
    take_update(c, buf);
    return;
  }
  s->bufs[s->n_free++] = buf;
}

static void unwait(server *s, client *c) {
  client **p = &s->waiting, *prev = NULL;
  while (*p && *p != c) {
    prev = *p;
    p = &(*p)->wait_next;
  }
  if (!*p) return;
  *p = c->wait_next;
  if (s->waiting_tail == c) s->waiting_tail = prev;
  c->wait_next = NULL;
}

static void fold_work(uv_work_t *w) {
  fold_job *j = w->data;
  fl_strategy *st = j->srv->strategy;
  j->rc = st->ops->fold(st, j->bufs, j->weights, j->k);
}

static void fold_after(uv_work_t *w, int status) {
  fold_job *j = w->data;
  server *s = j->srv;
  (void)status;
  if (j->rc) fl_error("server", "folding %zu updates failed: %s", j->k, fl_strerror(j->rc));
  for (size_t i = 0; i < j->k; i++) release_buf(s, (float *)j->bufs[i]);
  s->fold_busy = 0;
  start_fold(s);
  advance(s);
}

/* Folds every complete update that is waiting, in one pass. */
static void start_fold(server *s) {
  if (s->fold_busy || s->n_ready_bufs == 0) return;
  fold_job *j = &s->fold;
  j->k = (size_t)s->n_ready_bufs;
  for (int i = 0; i < s->n_ready_bufs; i++) {
    j->bufs[i] = s->ready[i];
    j->weights[i] = s->ready_w[i];
  }
  s->n_ready_bufs = 0;
  s->fold_busy = 1;
  s->r.fold_passes++;
  j->srv = s;
  j->work.data = j;
  uv_queue_work(&s->loop, &j->work, fold_work, fold_after);
}

/* ---- updates ---- */

static int selected_now(const client *c) {
  const server *s = c->srv;
  return s->ph == PH_TRAINING && c->task_round == s->r.number && c->task_attempt == s->r.attempt;
}

/* The round waits for every selected client's answer: a complete update, a refused one,
 * or the client gone. */
static void count_answer(client *c) {
  if (c->counted || !selected_now(c)) return;
  c->counted = 1;
  c->srv->r.answered++;
}

static void refuse(client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refuse(client *c, const char *fmt, ...) {
  server *s = c->srv;
  char reason[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  fl_warn("server", "round %llu: refused update from %s: %s", (unsigned long long)s->r.number,
          c->id, reason);
  s->r.refused++;
  if (s->r.n_refusals < MAX_REFUSALS) {
    refusal *f = &s->r.refusals[s->r.n_refusals++];
    snprintf(f->client, sizeof f->client, "%s", c->id);
    snprintf(f->reason, sizeof f->reason, "%s", reason);
  }
  send_error(c, FL__ERROR_CODE__ERROR_REFUSED, reason);
}

/* An Update header.  Refused, it leaves the client's state alone (an update it is still
 * sending goes on); accepted, the client is given a buffer and Proceed, or waits. */
static void on_update(client *c, const Fl__Update *u) {
  server *s = c->srv;
  if (u->round < s->r.number || (u->round == s->r.number && s->ph != PH_TRAINING)) {
    refuse(c, "stale update for round %llu, which is closed (the current round is %llu)",
           (unsigned long long)u->round, (unsigned long long)s->r.number);
    return;
  }
  if (u->round != s->r.number) {
    refuse(c, "update for round %llu, but the current round is %llu",
           (unsigned long long)u->round, (unsigned long long)s->r.number);
    return;
  }
  if (!selected_now(c)) {
    refuse(c, "client was not selected for round %llu", (unsigned long long)s->r.number);
    return;
  }
  if (c->answered) {
    refuse(c, "second update for round %llu", (unsigned long long)s->r.number);
    return;
  }
  c->answered = 1;
  if (u->model_id != fl_model_id(s->model) || u->num_params != s->n) {
    count_answer(c);
    refuse(c, "update is for model %016llx with %llu parameters, expected %016llx with %zu",
           (unsigned long long)u->model_id, (unsigned long long)u->num_params,
           (unsigned long long)fl_model_id(s->model), s->n);
    advance(s); /* it may have been the round's last answer */
    return;
  }
  if (u->num_examples == 0 || u->encoding != FL__ENCODING__ENCODING_FLOAT32) {
    count_answer(c);
    refuse(c, u->num_examples == 0 ? "update has no examples" : "unsupported update encoding %d",
           (int)u->encoding);
    advance(s);
    return;
  }
  c->upd_examples = u->num_examples;
  c->upd_loss = u->metrics ? u->metrics->loss : NAN;
  c->upd_acc = u->metrics ? u->metrics->accuracy : NAN;
  c->upd_seconds = u->metrics ? u->metrics->seconds : 0;
  if (s->n_free > 0) {
    take_update(c, s->bufs[--s->n_free]);
  } else {
    fl_debug("server", "round %llu: %s waits for an update buffer", (unsigned long long)s->r.number,
             c->id);
    c->rx = RX_WAIT_BUF;
    if (s->waiting_tail) s->waiting_tail->wait_next = c;
    else s->waiting = c;
    s->waiting_tail = c;
  }
}

static void abort_rx(client *c) {
  if (c->rx == RX_UPDATE && c->buf) {
    float *b = c->buf;
    c->buf = NULL;
    release_buf(c->srv, b);
  }
  if (c->rx == RX_WAIT_BUF) unwait(c->srv, c);
  c->rx = RX_DISCARD;
}

static void on_chunk(client *c, const Fl__TensorChunk *ch) {
  server *s = c->srv;
  if (c->rx == RX_DISCARD) {
    uint64_t count = ch->data.len / 4;
    if (ch->offset + count >= ch->total) c->rx = RX_IDLE;
    return;
  }
  if (c->rx == RX_INIT) {
    on_init_chunk(c, ch);
    return;
  }
  if (c->rx != RX_UPDATE) {
    const char *why = c->rx == RX_WAIT_BUF ? "tensor chunk before Proceed"
                                           : "tensor chunk without an update";
    fl_warn("server", "%s (%s): %s", c->id, fl_peer_addr(c->peer), why);
    send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, why);
    abort_rx(c);
    fl_peer_close(c->peer, "protocol violation");
    c->closing = 1;
    return;
  }
  char err[160];
  int rc = fl_tensor_rx_add(&c->rxt, ch, err, sizeof err);
  if (rc < 0) {
    int last = ch->offset + ch->data.len / 4 >= ch->total;
    abort_rx(c);
    count_answer(c);
    refuse(c, "%s", err);
    if (last) c->rx = RX_IDLE;
    advance(s); /* it may have been the round's last answer */
    return;
  }
  if (rc == 0) return;
  /* Complete and finite: fold it. */
  s->ready[s->n_ready_bufs] = c->buf;
  s->ready_w[s->n_ready_bufs++] = (double)c->upd_examples;
  c->buf = NULL;
  c->rx = RX_IDLE;
  count_answer(c);
  s->r.accepted++;
  s->r.examples += c->upd_examples;
  if (isfinite(c->upd_loss)) s->r.loss_sum += c->upd_loss * (double)c->upd_examples;
  if (isfinite(c->upd_acc)) s->r.acc_sum += c->upd_acc * (double)c->upd_examples;
  if (isfinite(c->upd_seconds) && c->upd_seconds > s->r.slowest) s->r.slowest = c->upd_seconds;
  fl_debug("server", "round %llu: update from %s (%llu examples, loss %.4f)",
           (unsigned long long)s->r.number, c->id, (unsigned long long)c->upd_examples,
           c->upd_loss);
  start_fold(s);
  advance(s);
}

/* ---- connections ---- */

static client *find_client(server *s, const char *id, const client *except) {
  for (client *c = s->clients; c; c = c->next)
    if (c != except && !c->closing && strcmp(c->id, id) == 0) return c;
  return NULL;
}

static void on_open(fl_peer *peer) {
  client *c = fl_peer_data(peer);
  snprintf(c->id, sizeof c->id, "%s", fl_peer_id(peer));
  client *old = find_client(c->srv, c->id, c);
  if (old) {
    fl_warn("server", "%s connected again from %s; closing its older connection", c->id,
            fl_peer_addr(peer));
    old->closing = 1;
    fl_peer_close(old->peer, "replaced by a newer connection of the same client");
  }
  fl_info("server", "%s connected from %s", c->id, fl_peer_addr(peer));
}

/* ---- the model clients declare, and initial parameters from a client ----
 *
 * A client may declare the model it trains (libflclient: an external model by name and
 * size, or a spec); one that declares another model than the server's is refused, and so
 * is one that declares none when the server trains an external model, which only the
 * clients' own code can train.  An external model without --init-model or a checkpoint
 * takes its initial parameters from a client: the server asks one that lists the
 * "params" capability, and the next one if it fails, refuses or stays silent for
 * --round-timeout; no round starts before. */

static int model_disagrees(const server *s, const Fl__Hello *h, char *why, size_t len) {
  int declared = h->model_spec && h->model_spec[0];
  if (declared && (h->model_id != fl_model_id(s->model) || h->num_params != s->n)) {
    snprintf(why, len, "the client declares model '%.100s' (%llu parameters), but this "
             "federation trains '%.100s' (%zu parameters)", h->model_spec,
             (unsigned long long)h->num_params, fl_model_spec(s->model), s->n);
    return 1;
  }
  if (!declared && fl_model_is_external(s->model)) {
    snprintf(why, len, "this federation trains the external model '%.100s', and the client "
             "declares no model (an external model is trained by the clients' own code, "
             "which declares it through libflclient)", fl_model_spec(s->model));
    return 1;
  }
  return 0;
}

/* Asks a client for the initial parameters, unless one is on it. */
static void ask_init(server *s) {
  if (s->init_from && s->r.timed_out) {
    fl_warn("server", "%s did not send the initial parameters within --round-timeout; asking another client",
            s->init_from->id);
    s->init_from->no_params = 1;
    if (s->init_from->rx == RX_INIT) s->init_from->rx = RX_DISCARD; /* late chunks go nowhere */
    s->init_from = NULL;
  }
  if (s->init_from) return;
  client *pick = NULL;
  for (client *c = s->clients; c; c = c->next)
    if (c->ready && !c->closing && c->can_params && !c->no_params && c->rx == RX_IDLE &&
        (!pick || strcmp(c->id, pick->id) < 0))
      pick = c;
  if (!pick) {
    if (!s->init_waiting_logged)
      fl_info("server", "external model %s: waiting for a client that can give the initial parameters (or use --init-model)",
              fl_model_spec(s->model));
    s->init_waiting_logged = 1;
    return;
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__ParamsRequest r = FL__PARAMS_REQUEST__INIT;
  r.model_id = fl_model_id(s->model);
  r.num_params = s->n;
  env.body_case = FL__ENVELOPE__BODY_PARAMS_REQUEST;
  env.params_request = &r;
  if (send_env(pick, &env) != 0) return;
  fl_info("server", "asking %s for the initial parameters of %s", pick->id, fl_model_spec(s->model));
  s->init_from = pick;
  s->init_waiting_logged = 0;
  arm_timer(s, s->cfg->round_timeout);
}

/* The asked client failed to give them: another will be asked. */
static void init_failed(client *c, const char *why) {
  server *s = c->srv;
  fl_warn("server", "initial parameters from %s refused: %s", c->id, why);
  c->no_params = 1;
  if (c->rx == RX_INIT) c->rx = RX_DISCARD;
  if (s->init_from == c) {
    s->init_from = NULL;
    uv_timer_stop(&s->timer);
  }
}

static void on_params(client *c, const Fl__Params *p) {
  server *s = c->srv;
  if (c != s->init_from || c->rx != RX_IDLE) {
    fl_warn("server", "%s (%s): parameters nobody asked for", c->id, fl_peer_addr(c->peer));
    send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "parameters nobody asked for");
    c->closing = 1;
    fl_peer_close(c->peer, "protocol violation");
    return;
  }
  if (p->model_id != fl_model_id(s->model) || p->num_params != s->n ||
      p->encoding != FL__ENCODING__ENCODING_FLOAT32) {
    char why[160];
    snprintf(why, sizeof why, "parameters of model %016llx (%llu values, encoding %d), expected %016llx (%zu, float32)",
             (unsigned long long)p->model_id, (unsigned long long)p->num_params, (int)p->encoding,
             (unsigned long long)fl_model_id(s->model), s->n);
    send_error(c, FL__ERROR_CODE__ERROR_REFUSED, why);
    init_failed(c, why);
    c->rx = RX_DISCARD;
    advance(s);
    return;
  }
  c->rx = RX_INIT;
  fl_tensor_rx_init(&c->rxt, s->global, s->n, 1);
}

/* A chunk of the initial parameters. */
static void on_init_chunk(client *c, const Fl__TensorChunk *ch) {
  server *s = c->srv;
  if (c != s->init_from || !s->need_init) { /* never written over the model once it is in */
    c->rx = ch->offset + ch->data.len / 4 >= ch->total ? RX_IDLE : RX_DISCARD;
    return;
  }
  char err[160];
  int rc = fl_tensor_rx_add(&c->rxt, ch, err, sizeof err);
  if (rc < 0) {
    c->rx = ch->offset + ch->data.len / 4 >= ch->total ? RX_IDLE : RX_DISCARD;
    send_error(c, FL__ERROR_CODE__ERROR_REFUSED, err);
    init_failed(c, err);
    advance(s);
    return;
  }
  if (rc == 0) return;
  c->rx = RX_IDLE;
  s->need_init = 0;
  s->init_from = NULL;
  uv_timer_stop(&s->timer);
  fl_info("server", "initial model from %s (%zu parameters)", c->id, s->n);
  advance(s);
}

/* A client's Error about a task it was given is its answer: the round, the evaluation or
 * the request for initial parameters goes on without it. */
static void on_client_error(client *c, const Fl__Error *e) {
  server *s = c->srv;
  const char *reason = e->reason ? e->reason : "";
  fl_warn("server", "%s reports an error: %s", c->id, reason);
  if (e->task == FL__TASK_KIND__TASK_TRAIN && selected_now(c) && e->round == c->task_round &&
      !c->answered && !c->counted) {
    count_answer(c);
    s->r.failed++;
    if (s->r.n_failures < MAX_REFUSALS) {
      refusal *f = &s->r.failures[s->r.n_failures++];
      snprintf(f->client, sizeof f->client, "%s", c->id);
      snprintf(f->reason, sizeof f->reason, "%s", reason);
    }
    fl_warn("server", "round %llu: %s could not train: %s", (unsigned long long)s->r.number, c->id,
            reason);
    advance(s); /* it may have been the round's last answer */
  } else if (e->task == FL__TASK_KIND__TASK_EVALUATE && c->eval_pending && s->ph == PH_FED_EVAL &&
             e->round == s->r.number) {
    c->eval_pending = 0;
    s->r.fed_answered++;
    advance(s);
  } else if (e->task == FL__TASK_KIND__TASK_PARAMS && c == s->init_from) {
    init_failed(c, reason);
    advance(s);
  }
}

static void on_hello(client *c, const Fl__Hello *h) {
  server *s = c->srv;
  uint32_t chosen;
  if (c->ready) {
    send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "second hello");
    return;
  }
  if (fl_version_negotiate(h, &chosen) != 0) {
    char reason[160];
    snprintf(reason, sizeof reason,
             "protocol version %u is not supported; this server speaks version %u",
             h->protocol_version, FL_PROTOCOL_VERSION);
    fl_warn("server", "%s (%s): %s", c->id, fl_peer_addr(c->peer), reason);
    send_error(c, FL__ERROR_CODE__ERROR_VERSION, reason);
    c->closing = 1;
    fl_peer_close(c->peer, "incompatible protocol version");
    return;
  }
  char why[512];
  if (model_disagrees(s, h, why, sizeof why)) {
    fl_warn("server", "%s (%s): refused: %s", c->id, fl_peer_addr(c->peer), why);
    send_error(c, FL__ERROR_CODE__ERROR_MODEL, why);
    c->closing = 1;
    fl_peer_close(c->peer, "model disagreement");
    return;
  }
  for (size_t i = 0; i < h->n_capabilities; i++)
    if (strcmp(h->capabilities[i], "params") == 0) c->can_params = 1;
  c->num_samples = h->num_samples;
  c->ready = 1;
  s->n_ready++;
  s->ready_events++;
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Welcome w = FL__WELCOME__INIT;
  w.protocol_version = chosen;
  w.software_version = FL_VERSION;
  w.client_id = c->id;
  w.heartbeat_interval_ms = s->copt.heartbeat_interval_ms;
  w.max_frame = s->copt.max_frame;
  w.chunk_size = (uint32_t)s->cfg->chunk_kib * 1024u;
  w.model_spec = (char *)fl_model_spec(s->model);
  w.model_id = fl_model_id(s->model);
  w.num_params = s->n;
  env.body_case = FL__ENVELOPE__BODY_WELCOME;
  env.welcome = &w;
  send_env(c, &env);
  fl_info("server", "%s ready (%llu samples, client %s); %zu clients ready", c->id,
          (unsigned long long)h->num_samples, h->software_version, s->n_ready);
  advance(s);
}

static void on_eval_result(client *c, const Fl__EvalResult *e) {
  server *s = c->srv;
  if (!c->eval_pending || s->ph != PH_FED_EVAL || e->round != s->r.number) {
    fl_warn("server", "%s: unexpected evaluation result for round %llu", c->id,
            (unsigned long long)e->round);
    return;
  }
  c->eval_pending = 0;
  s->r.fed_answered++;
  if (e->metrics && e->metrics->num_examples > 0 && isfinite(e->metrics->loss)) {
    double n = (double)e->metrics->num_examples;
    s->r.fed_loss += e->metrics->loss * n;
    s->r.fed_acc += e->metrics->accuracy * n;
    s->r.fed_n += e->metrics->num_examples;
  }
  advance(s);
}

static void on_frame(fl_peer *peer, const uint8_t *payload, size_t len) {
  client *c = fl_peer_data(peer);
  server *s = c->srv;
  s->bytes_in += len + 4;
  if (c->closing) return;
  Fl__Envelope *env;
  int rc = fl_msg_decode(payload, len, &env);
  if (rc) {
    fl_warn("server", "%s (%s): undecodable message of %zu bytes: %s", c->id,
            fl_peer_addr(peer), len, fl_strerror(rc));
    send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "undecodable message");
    c->closing = 1;
    fl_peer_close(peer, "undecodable message");
    return;
  }
  if (!c->ready && env->body_case != FL__ENVELOPE__BODY_HELLO &&
      env->body_case != FL__ENVELOPE__BODY_HEARTBEAT) {
    fl_warn("server", "%s: %s before hello", c->id, fl_msg_name(env));
    send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "expected hello first");
    c->closing = 1;
    fl_peer_close(peer, "protocol violation: no hello");
    fl_msg_free(env);
    return;
  }
  switch (env->body_case) {
  case FL__ENVELOPE__BODY_HELLO: on_hello(c, env->hello); break;
  case FL__ENVELOPE__BODY_UPDATE: on_update(c, env->update); break;
  case FL__ENVELOPE__BODY_CHUNK: on_chunk(c, env->chunk); break;
  case FL__ENVELOPE__BODY_EVAL_RESULT: on_eval_result(c, env->eval_result); break;
  case FL__ENVELOPE__BODY_HEARTBEAT: break;
  case FL__ENVELOPE__BODY_ERROR: on_client_error(c, env->error); break;
  case FL__ENVELOPE__BODY_PARAMS: on_params(c, env->params); break;
  case FL__ENVELOPE__BODY_DONE:
    fl_info("server", "%s says goodbye: %s", c->id, env->done->reason);
    c->closing = 1;
    fl_peer_close(peer, "client left");
    break;
  default:
    fl_warn("server", "%s: unexpected %s message", c->id, fl_msg_name(env));
    send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "unexpected message");
    break;
  }
  fl_msg_free(env);
}

static void on_drain(fl_peer *peer) { pump_tx(fl_peer_data(peer)); }

static void on_close(fl_peer *peer, int err, const char *reason) {
  client *c = fl_peer_data(peer);
  server *s = c->srv;
  if (c->ready || err)
    FL_LOG(err ? FL_LOG_WARN : FL_LOG_INFO, "server", "%s (%s) disconnected: %s", c->id[0] ? c->id : "?",
           fl_peer_addr(peer), reason ? reason : "closed");
  tx_done(c);
  abort_rx(c);
  if (selected_now(c) && !c->counted) {
    count_answer(c);
    s->r.dropped++;
    fl_warn("server", "round %llu: %s dropped out", (unsigned long long)s->r.number, c->id);
  }
  if (c->eval_pending && s->ph == PH_FED_EVAL) s->r.fed_answered++;
  if (s->init_from == c) {
    s->init_from = NULL;
    uv_timer_stop(&s->timer);
  }
  if (c->ready) s->n_ready--;
  if (c->prev) c->prev->next = c->next;
  else s->clients = c->next;
  if (c->next) c->next->prev = c->prev;
  s->n_clients--;
  free(c);
  if (s->ph == PH_DONE && !s->clients) end_linger(s);
  advance(s);
}

/* A new peer carries the server as its data (fl_io_listen's); on_open swaps in a client
 * record.  Peers whose handshake failed never reach the server. */
static void on_accepted_open(fl_peer *peer) {
  server *s = fl_peer_data(peer);
  client *c = calloc(1, sizeof *c);
  if (!c) {
    fl_peer_close(peer, "server out of memory");
    return;
  }
  c->srv = s;
  c->peer = peer;
  c->next = s->clients;
  if (s->clients) s->clients->prev = c;
  s->clients = c;
  s->n_clients++;
  fl_peer_set_data(peer, c);
  on_open(peer);
}

static const fl_peer_callbacks peer_cb = {on_accepted_open, on_frame, on_drain, on_close};

/* ---- rounds ---- */

static int by_id(const void *a, const void *b) {
  return strcmp((*(client *const *)a)->id, (*(client *const *)b)->id);
}

static size_t round_size(const server *s) {
  double k = s->cfg->clients_per_round;
  size_t want = k < 1 ? (size_t)ceil(k * (double)s->n_ready) : (size_t)k;
  if (want < 1) want = 1;
  return want < s->n_ready ? want : s->n_ready;
}

/* Picks the round's clients at random from those ready, in id order so that the same
 * seed picks the same clients whatever order they connected in. */
static void start_round(server *s) {
  client **ready = malloc(s->n_ready * sizeof *ready);
  if (!ready) {
    fl_error("server", "out of memory selecting clients");
    return;
  }
  size_t m = 0;
  for (client *c = s->clients; c; c = c->next)
    if (c->ready && !c->closing) ready[m++] = c;
  qsort(ready, m, sizeof *ready, by_id);
  size_t target = round_size(s);
  size_t k = (size_t)ceil((double)target * (1.0 + s->cfg->over_select));
  if (k > m) k = m;
  if (target > k) target = k;
  for (size_t i = 0; i < k; i++) { /* partial Fisher-Yates */
    size_t j = i + (size_t)fl_rng_below(&s->rng, m - i);
    client *t = ready[i];
    ready[i] = ready[j];
    ready[j] = t;
  }
  if (!s->r.timing) {
    s->r.t0 = now_ms(s);
    s->r.timing = 1;
  }
  s->r.attempt++;
  s->r.selected = k;
  s->r.target = target;
  s->r.answered = s->r.accepted = s->r.refused = s->r.dropped = 0;
  s->r.examples = 0;
  s->r.loss_sum = s->r.acc_sum = 0;
  s->r.slowest = 0;
  s->r.n_refusals = 0;
  s->r.failed = s->r.n_failures = 0;
  s->r.timed_out = 0;
  s->r.fold_passes = 0;
  s->strategy->ops->begin(s->strategy);
  s->ph = PH_TRAINING;
  fl_info("server", "round %llu/%d: %zu of %zu ready clients selected%s%s",
          (unsigned long long)s->r.number, s->cfg->rounds, k, m,
          k > target ? " (over-selected)" : "", s->r.attempt > 1 ? " (retry)" : "");
  for (size_t i = 0; i < k; i++) {
    client *c = ready[i];
    c->task_round = s->r.number;
    c->task_attempt = s->r.attempt;
    c->answered = 0;
    c->counted = 0;
    send_train_task(c);
  }
  free(ready);
  arm_timer(s, s->cfg->round_timeout);
}

static void on_timer(uv_timer_t *t) {
  server *s = t->data;
  s->r.timed_out = 1;
  advance(s);
}

static void arm_timer(server *s, double seconds) {
  s->r.timed_out = 0;
  uv_timer_start(&s->timer, on_timer, (uint64_t)(seconds * 1000.0 + 0.5), 0);
}

/* Ends the collection of updates: updates still arriving or waiting for a buffer are
 * refused (chunks already on their way are skipped).  Models still being sent finish
 * before the global model changes: aggregation waits for sends_pending. */
static void close_collection(server *s) {
  uv_timer_stop(&s->timer);
  for (client *c = s->clients; c; c = c->next) {
    if (c->rx != RX_UPDATE && c->rx != RX_WAIT_BUF) continue;
    int arriving = c->rx == RX_UPDATE;
    abort_rx(c);
    refuse(c, "round %llu closed %s", (unsigned long long)s->r.number,
           arriving ? "while the update was arriving" : "before the update was taken");
  }
}

static void eval_work(uv_work_t *w) {
  server *s = w->data;
  fl_subset all = {&s->test, NULL, s->test.n};
  s->eval_rc = fl_evaluate(s->eval_trainer, s->global, &all, &s->eval_result);
}

/* Federated evaluation, when due: every ready client evaluates the new global model. */
static void begin_fed_eval(server *s) {
  s->ph = PH_FED_EVAL;
  s->r.fed_asked = s->r.fed_answered = 0;
  s->r.fed_loss = s->r.fed_acc = 0;
  s->r.fed_n = 0;
  int due = s->cfg->fed_eval_every > 0 &&
            (s->r.number % (uint64_t)s->cfg->fed_eval_every == 0 ||
             s->r.number == (uint64_t)s->cfg->rounds);
  if (due) {
    for (client *c = s->clients; c; c = c->next)
      if (c->ready && !c->closing) send_eval_task(c);
    arm_timer(s, s->cfg->fed_eval_timeout);
  }
  advance(s);
}

static void eval_after(uv_work_t *w, int status) {
  server *s = w->data;
  (void)status;
  if (s->eval_rc == 0) {
    s->r.test_loss = s->eval_result.loss;
    s->r.test_acc = s->eval_result.accuracy;
    s->r.tested = 1;
  } else {
    fl_error("server", "evaluating the global model failed: %s", fl_strerror(s->eval_rc));
  }
  begin_fed_eval(s);
}

static long peak_rss_kib(void) {
  struct rusage ru;
  return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

static void json_str(FILE *f, const char *v) {
  fputc('"', f);
  for (; *v; v++) {
    if (*v == '"' || *v == '\\') fprintf(f, "\\%c", *v);
    else if ((unsigned char)*v < 0x20) fprintf(f, "\\u%04x", *v);
    else fputc(*v, f);
  }
  fputc('"', f);
}

static void json_num(FILE *f, const char *key, double v, int have) {
  fprintf(f, ",\"%s\":", key);
  if (have && isfinite(v)) fprintf(f, "%.6g", v);
  else fputs("null", f);
}

static void write_metrics(server *s, double seconds) {
  round_stats *r = &s->r;
  double ex = (double)r->examples;
  double loss = ex > 0 ? r->loss_sum / ex : NAN, acc = ex > 0 ? r->acc_sum / ex : NAN;
  double fl = r->fed_n ? r->fed_loss / (double)r->fed_n : NAN;
  double fa = r->fed_n ? r->fed_acc / (double)r->fed_n : NAN;
  char test[96] = "", fed[96] = "";
  if (r->tested) snprintf(test, sizeof test, ", test loss %.4f acc %.4f", r->test_loss, r->test_acc);
  if (r->fed_n) snprintf(fed, sizeof fed, ", federated eval loss %.4f acc %.4f", fl, fa);
  char failed[48] = "";
  if (r->failed) snprintf(failed, sizeof failed, ", %zu failed", r->failed);
  fl_info("server", "round %llu/%d done: %zu/%zu updates (%zu refused, %zu dropped%s), %llu examples, "
          "train loss %.4f%s%s, %.2f s",
          (unsigned long long)r->number, s->cfg->rounds, r->accepted, r->selected, r->refused,
          r->dropped, failed, (unsigned long long)r->examples, loss, test, fed, seconds);
  if (!s->metrics) return;
  FILE *f = s->metrics;
  fprintf(f, "{\"round\":%llu,\"attempts\":%llu,\"clients_selected\":%zu,\"updates_accepted\":%zu,"
          "\"updates_refused\":%zu,\"clients_dropped\":%zu,\"refusals\":[",
          (unsigned long long)r->number, (unsigned long long)r->attempt, r->selected, r->accepted,
          r->refused, r->dropped);
  for (size_t i = 0; i < r->n_refusals; i++) {
    fprintf(f, "%s{\"client\":", i ? "," : "");
    json_str(f, r->refusals[i].client);
    fputs(",\"reason\":", f);
    json_str(f, r->refusals[i].reason);
    fputc('}', f);
  }
  fprintf(f, "],\"clients_failed\":%zu,\"failures\":[", r->failed);
  for (size_t i = 0; i < r->n_failures; i++) {
    fprintf(f, "%s{\"client\":", i ? "," : "");
    json_str(f, r->failures[i].client);
    fputs(",\"reason\":", f);
    json_str(f, r->failures[i].reason);
    fputc('}', f);
  }
  fprintf(f, "],\"examples\":%llu", (unsigned long long)r->examples);
  json_num(f, "train_loss", loss, ex > 0);
  json_num(f, "train_accuracy", acc, ex > 0);
  json_num(f, "test_loss", r->test_loss, r->tested);
  json_num(f, "test_accuracy", r->test_acc, r->tested);
  json_num(f, "fed_eval_loss", fl, r->fed_n > 0);
  json_num(f, "fed_eval_accuracy", fa, r->fed_n > 0);
  fprintf(f, ",\"fed_eval_clients\":%zu", r->fed_answered);
  fprintf(f, ",\"bytes_received\":%llu,\"bytes_sent\":%llu",
          (unsigned long long)(s->bytes_in - r->bytes_in0),
          (unsigned long long)(s->bytes_out - r->bytes_out0));
  fprintf(f, ",\"fold_passes\":%zu", r->fold_passes);
  json_num(f, "seconds", seconds, 1);
  json_num(f, "slowest_client_seconds", r->slowest, r->accepted > 0);
  fprintf(f, ",\"peak_rss_kib\":%ld", peak_rss_kib());
  fputs("}\n", f);
  fflush(f);
}

/* After every completed round: all a restart needs to continue from the next one. */
static void save_checkpoint(server *s) {
  checkpoint c = {0};
  c.rounds = s->r.number;
  c.model_version = s->model_version;
  c.rng = s->rng;
  c.metrics_len = s->metrics ? (uint64_t)ftello(s->metrics) : 0;
  c.spec = (char *)fl_model_spec(s->model);
  c.model_id = fl_model_id(s->model);
  c.params = s->global;
  c.n = s->n;
  char err[512];
  int rc = checkpoint_save(s->checkpoint, &c, err, sizeof err);
  if (rc) fl_error("server", "round %llu: checkpoint failed: %s", (unsigned long long)s->r.number, err);
  else fl_debug("server", "round %llu: checkpoint written to %s", (unsigned long long)s->r.number, s->checkpoint);
}

/* --resume: the global model, round, generator and metrics as the checkpoint left them. */
static int resume(server *s, uint64_t *next_round, char *err, size_t errlen) {
  checkpoint c;
  int rc = checkpoint_load(s->checkpoint, &c, err, errlen);
  if (rc == FL_ENOENT) {
    fl_info("server", "--resume: no checkpoint at %s yet; starting from round 1", s->checkpoint);
    return 0;
  }
  if (rc) return rc;
  if (c.model_id != fl_model_id(s->model) || c.n != s->n) {
    snprintf(err, errlen, "checkpoint %s holds model '%s' (%zu parameters), but --model is '%s' (%zu parameters)",
             s->checkpoint, c.spec, c.n, fl_model_spec(s->model), s->n);
    checkpoint_free(&c);
    return FL_EMISMATCH;
  }
  memcpy(s->global, c.params, s->n * sizeof *s->global);
  s->need_init = 0;
  s->model_version = c.model_version;
  s->rng = c.rng;
  *next_round = c.rounds + 1;
  if (s->cfg->metrics && truncate(s->cfg->metrics, (off_t)c.metrics_len) != 0) {
    snprintf(err, errlen, "--metrics %s: cannot cut it back to the %llu bytes of the checkpointed rounds",
             s->cfg->metrics, (unsigned long long)c.metrics_len);
    checkpoint_free(&c);
    return FL_EIO;
  }
  fl_info("server", "resuming from %s: %llu rounds completed", s->checkpoint,
          (unsigned long long)c.rounds);
  checkpoint_free(&c);
  return 0;
}

static void begin_round_number(server *s, uint64_t number) {
  s->r.number = number;
  s->r.attempt = 0;
  s->r.tested = 0;
  s->r.bytes_in0 = s->bytes_in;
  s->r.bytes_out0 = s->bytes_out;
  s->r.timing = 0; /* the wait for enough clients is not the round's time */
  s->ph = PH_WAITING;
}

/* How long clients get to read Done and hang up before the server closes on them. */
#define LINGER_MS 5000

/* The end of the goodbye: every connection still open is closed, and the timer with it,
 * so the loop ends once the connections are gone. */
static void end_linger(server *s) {
  if (s->lingered) return;
  s->lingered = 1;
  for (client *c = s->clients; c; c = c->next) fl_peer_close(c->peer, "server closing");
  uv_close((uv_handle_t *)&s->timer, NULL);
}

static void on_linger(uv_timer_t *t) { end_linger(t->data); }

/* Says goodbye to every client (reconnect_ms > 0: come back later) and stops listening.
 * Clients hang up when they read Done; the server does not close first, because closing
 * a socket with unread data (a late update still arriving) resets the connection, and a
 * reset can destroy the Done frame before the client reads it. */
static void close_all(server *s, const char *why, uint32_t reconnect_ms) {
  s->ph = PH_DONE;
  uv_timer_stop(&s->timer);
  for (client *c = s->clients; c; c = c->next) {
    if (c->closing) continue;
    c->closing = 1; /* from now on its frames are read and dropped */
    if (c->ready) send_done(c, why, reconnect_ms);
    else fl_peer_close(c->peer, why);
  }
  fl_io_stop_listening(s->io);
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  if (s->clients) uv_timer_start(&s->timer, on_linger, LINGER_MS, 0);
  else end_linger(s);
}

static void finish_run(server *s, const char *why) {
  char err[512];
  int rc = fl_modelfile_save(s->cfg->out, fl_model_spec(s->model), fl_model_id(s->model),
                             s->global, s->n, err, sizeof err);
  if (rc) {
    fl_error("server", "writing the final model failed: %s", err);
    s->exit_code = 1;
  } else {
    fl_info("server", "final model (%llu rounds) written to %s; peak memory %ld KiB",
            (unsigned long long)s->model_version, s->cfg->out, peak_rss_kib());
  }
  close_all(s, why, 0);
}

/* A signal: the round in flight is abandoned; the checkpoint of the last completed round
 * is what a restart with --resume continues from; clients are told to come back. */
static void stop_run(server *s) {
  fl_info("server", "stopped after %llu completed rounds; checkpoint %s (restart with --resume)",
          (unsigned long long)s->model_version, s->checkpoint);
  close_all(s, "server restarting", 2000);
}

static int folds_idle(const server *s) { return !s->fold_busy && s->n_ready_bufs == 0; }

/* Decides what happens next; called after every event that can move a round on. */
static void advance(server *s) {
  switch (s->ph) {
  case PH_WAITING:
    if (s->stopping) {
      stop_run(s);
      return;
    }
    if (s->need_init) {
      ask_init(s);
      return;
    }
    if (s->waiting_for_more && s->ready_events == s->ready_seen) return;
    if (s->n_ready >= (size_t)s->cfg->min_clients) {
      s->waiting_for_more = 0;
      start_round(s);
    }
    return;
  case PH_TRAINING:
    if (s->r.answered >= s->r.selected ||
        (s->r.selected > s->r.target && s->r.accepted >= s->r.target)) {
      if (s->r.answered < s->r.selected)
        fl_info("server", "round %llu: %zu updates in; closing the round without the %zu slowest clients",
                (unsigned long long)s->r.number, s->r.accepted, s->r.selected - s->r.answered);
      close_collection(s);
      s->ph = PH_AGGREGATING;
    } else if (s->r.timed_out || s->stopping) {
      close_collection(s);
      if (s->r.accepted >= (size_t)s->cfg->min_updates && !s->stopping) {
        fl_warn("server", "round %llu: timed out with %zu of %zu updates; aggregating those",
                (unsigned long long)s->r.number, s->r.accepted, s->r.selected);
      } else {
        s->r.accepted = 0; /* abandoned: nothing folded this attempt is applied */
      }
      s->ph = PH_AGGREGATING;
    } else {
      return;
    }
    /* fall through */
  case PH_AGGREGATING:
    if (!folds_idle(s) || s->sends_pending) return;
    if (s->r.accepted == 0 || s->r.accepted < (size_t)s->cfg->min_updates) {
      if (s->stopping) {
        stop_run(s);
        return;
      }
      if (s->r.attempt >= (uint64_t)s->cfg->max_attempts) {
        fl_warn("server", "round %llu: %llu attempts failed (%zu of %zu clients answered, %d updates needed); waiting for new clients",
                (unsigned long long)s->r.number, (unsigned long long)s->r.attempt, s->r.accepted,
                s->r.selected, s->cfg->min_updates);
        s->waiting_for_more = 1;
        s->ready_seen = s->ready_events;
        s->r.attempt = 0;
      } else {
        fl_warn("server", "round %llu: only %zu of %zu clients answered (%d needed); retrying with a new selection",
                (unsigned long long)s->r.number, s->r.accepted, s->r.selected, s->cfg->min_updates);
      }
      s->ph = PH_WAITING;
      advance(s);
      return;
    }
    s->strategy->ops->finish(s->strategy, s->global, s->cfg->server_lr);
    s->model_version++;
    if (s->have_test && (s->r.number % (uint64_t)s->cfg->eval_every == 0 ||
                         s->r.number == (uint64_t)s->cfg->rounds)) {
      s->ph = PH_EVALUATING;
      s->eval_work.data = s;
      uv_queue_work(&s->loop, &s->eval_work, eval_work, eval_after);
      return;
    }
    begin_fed_eval(s);
    return;
  case PH_EVALUATING:
    return;
  case PH_FED_EVAL:
    if (s->r.fed_answered < s->r.fed_asked && !s->r.timed_out && !s->stopping) return;
    uv_timer_stop(&s->timer);
    for (client *c = s->clients; c; c = c->next) c->eval_pending = 0;
    write_metrics(s, (double)(now_ms(s) - s->r.t0) / 1000.0);
    save_checkpoint(s);
    if (s->r.number >= (uint64_t)s->cfg->rounds) {
      finish_run(s, "training complete");
      return;
    }
    if (s->stopping) {
      stop_run(s);
      return;
    }
    begin_round_number(s, s->r.number + 1);
    advance(s);
    return;
  case PH_DONE:
    return;
  }
}

static void on_signal(uv_signal_t *h, int signum) {
  server *s = h->data;
  if (s->stopping) return;
  fl_warn("server", "%s: stopping after the current step", signum == SIGINT ? "SIGINT" : "SIGTERM");
  s->stopping = 1;
  advance(s);
}

/* ---- set-up ---- */

int server_create(const server_config *cfg, server **out, char *err, size_t errlen) {
  server *s = calloc(1, sizeof *s);
  if (!s) return FL_ENOMEM;
  s->cfg = cfg;
  int rc = uv_loop_init(&s->loop);
  if (rc) {
    snprintf(err, errlen, "libuv: %s", uv_strerror(rc));
    free(s);
    return FL_EIO;
  }
  fl_rng_seed2(&s->rng, cfg->seed, 0x5e1ec7);
  openblas_set_num_threads(1);

  rc = fl_model_create(cfg->model, &s->model, err, errlen);
  if (rc) goto fail;
  s->n = fl_model_num_params(s->model);
  s->global = malloc(s->n * sizeof *s->global);
  s->n_bufs = cfg->update_buffers;
  s->buf_mem = fl_alloc_big((size_t)s->n_bufs * s->n * sizeof(float));
  s->bufs = calloc((size_t)s->n_bufs, sizeof *s->bufs);
  s->ready = calloc((size_t)s->n_bufs, sizeof *s->ready);
  s->ready_w = calloc((size_t)s->n_bufs, sizeof *s->ready_w);
  s->fold.bufs = calloc((size_t)s->n_bufs, sizeof *s->fold.bufs);
  s->fold.weights = calloc((size_t)s->n_bufs, sizeof *s->fold.weights);
  rc = FL_ENOMEM;
  if (!s->global || !s->buf_mem || !s->bufs || !s->ready || !s->ready_w || !s->fold.bufs ||
      !s->fold.weights) {
    snprintf(err, errlen, "out of memory for a model of %zu parameters", s->n);
    goto fail;
  }
  for (int i = 0; i < s->n_bufs; i++) s->bufs[s->n_free++] = s->buf_mem + (size_t)i * s->n;
  if (cfg->init_model) {
    char *spec = NULL;
    float *params = NULL;
    uint64_t id;
    size_t n;
    rc = fl_modelfile_load(cfg->init_model, &spec, &id, &params, &n, err, errlen);
    if (rc) goto fail;
    if (id != fl_model_id(s->model) || n != s->n) {
      snprintf(err, errlen, "--init-model %s holds model '%s' (%zu parameters), but --model is '%s' (%zu parameters)",
               cfg->init_model, spec, n, fl_model_spec(s->model), s->n);
      free(spec);
      free(params);
      rc = FL_EMISMATCH;
      goto fail;
    }
    memcpy(s->global, params, n * sizeof *params);
    free(spec);
    free(params);
    fl_info("server", "initial model from %s", cfg->init_model);
  } else {
    fl_model_init(s->model, s->global, cfg->seed);
  }
  s->strategy = fl_strategy_create(cfg->strategy, s->n, err, errlen);
  if (!s->strategy) {
    rc = FL_ECONFIG;
    goto fail;
  }
  if (cfg->test_data && fl_model_is_external(s->model)) {
    snprintf(err, errlen, "--test-data: the server cannot evaluate the external model '%s' "
             "(its clients' code does: --fed-eval-every)", fl_model_spec(s->model));
    rc = FL_ECONFIG;
    goto fail;
  }
  s->need_init = fl_model_is_external(s->model) && !cfg->init_model;
  if (cfg->test_data) {
    rc = fl_dataset_load(&s->test, cfg->test_data, err, errlen);
    if (rc) goto fail;
    if (s->test.dim != fl_model_input_dim(s->model)) {
      snprintf(err, errlen, "--test-data %s has %zu features, but model '%s' takes %zu",
               cfg->test_data, s->test.dim, fl_model_spec(s->model), fl_model_input_dim(s->model));
      rc = FL_EMISMATCH;
      goto fail;
    }
    s->have_test = 1;
    s->eval_trainer = fl_trainer_create(s->model, 256);
    if (!s->eval_trainer) {
      rc = FL_ENOMEM;
      snprintf(err, errlen, "out of memory for the evaluation workspace");
      goto fail;
    }
  }
  s->first_round = 1;
  if (cfg->checkpoint) s->checkpoint = strdup(cfg->checkpoint);
  else if (asprintf(&s->checkpoint, "%s.ckpt", cfg->out) < 0) s->checkpoint = NULL;
  if (!s->checkpoint) {
    rc = FL_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (cfg->resume) {
    rc = resume(s, &s->first_round, err, errlen);
    if (rc) goto fail;
  }
  if (cfg->metrics) {
    s->metrics = fopen(cfg->metrics, "a");
    if (!s->metrics) {
      snprintf(err, errlen, "--metrics %s: cannot open for appending", cfg->metrics);
      rc = FL_EIO;
      goto fail;
    }
  }

  fl_tls_options topt = {.is_server = 1, .ca_file = cfg->ca, .cert_file = cfg->cert,
                         .key_file = cfg->key, .crl_file = cfg->crl};
  rc = fl_tls_config_create(&topt, &s->tls, err, errlen);
  if (rc) goto fail;

  fl_conn_options_default(&s->copt);
  s->copt.max_frame = (uint32_t)cfg->max_frame_mib << 20;
  s->copt.high_water = (size_t)cfg->chunk_kib * 1024u;
  s->copt.heartbeat_interval_ms = (uint32_t)(cfg->heartbeat * 1000);
  s->copt.idle_timeout_ms = (uint32_t)(cfg->idle_timeout * 1000);
  if (s->copt.handshake_timeout_ms > s->copt.idle_timeout_ms)
    s->copt.handshake_timeout_ms = s->copt.idle_timeout_ms;
  if (s->copt.stall_timeout_ms > s->copt.idle_timeout_ms)
    s->copt.stall_timeout_ms = s->copt.idle_timeout_ms;
  rc = fl_msg_heartbeat(0, 0, &s->heartbeat, &s->heartbeat_len);
  if (rc) goto fail;
  s->copt.heartbeat = s->heartbeat;
  s->copt.heartbeat_len = s->heartbeat_len;

  char host[256];
  int port;
  if (fl_split_host_port(cfg->listen, host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "--listen: expected HOST:PORT, got '%s'", cfg->listen);
    rc = FL_ECONFIG;
    goto fail;
  }
  rc = fl_io_listen(&s->loop, cfg->io_threads, s->tls, host, port, &s->copt, &peer_cb, s,
                    &s->io);
  if (rc) {
    snprintf(err, errlen, "cannot listen on %s: %s", cfg->listen, fl_strerror(rc));
    goto fail;
  }
  s->max_streams = STREAMS_PER_THREAD * (size_t)fl_io_threads(s->io);
  uv_timer_init(&s->loop, &s->timer);
  s->timer.data = s;
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  s->sigint.data = s->sigterm.data = s;
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  fl_info("server", "listening on %s:%d; model %s (%zu parameters, id %016llx); %d rounds of %g clients",
          host, fl_io_port(s->io), fl_model_spec(s->model), s->n,
          (unsigned long long)fl_model_id(s->model), cfg->rounds, cfg->clients_per_round);
  *out = s;
  return 0;
fail:
  server_free(s);
  return rc;
}

int server_run(server *s) {
  begin_round_number(s, s->first_round);
  if (s->first_round > (uint64_t)s->cfg->rounds) {
    fl_info("server", "all %d rounds were already completed", s->cfg->rounds);
    finish_run(s, "training complete");
  } else {
    advance(s);
  }
  uv_run(&s->loop, UV_RUN_DEFAULT);
  return s->exit_code ? FL_EIO : 0;
}

void server_free(server *s) {
  if (!s) return;
  fl_io_free(s->io); /* joins the I/O threads */
  if (uv_loop_alive(&s->loop)) uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  fl_tls_config_free(s->tls);
  if (s->metrics) fclose(s->metrics);
  if (s->strategy) s->strategy->ops->free(s->strategy);
  fl_trainer_free(s->eval_trainer);
  if (s->have_test) fl_dataset_free(&s->test);
  free(s->buf_mem);
  free(s->bufs);
  free(s->ready);
  free(s->ready_w);
  free(s->fold.bufs);
  free(s->fold.weights);
  free(s->global);
  free(s->heartbeat);
  free(s->checkpoint);
  fl_model_free(s->model);
  free(s);
}
