/* fl-client: one or many virtual clients, each with its own TLS identity, connection and
 * data, on one libuv loop.
 *
 * A client says hello, then does what the server asks: a TrainTask (followed by the
 * global model in chunks) is trained on a worker thread and answered with an Update; the
 * delta follows in chunks once the server says Proceed (or is dropped if it refuses the
 * update); an EvalTask is answered with an EvalResult.  A dropped connection
 * is retried with exponential backoff and jitter; Done ends the client.  The process
 * exits when every virtual client is done (0) or has given up (1). */
#include "client.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "error.h"
#include "log.h"
#include "model.h"
#include "msg.h"
#include "pool.h"
#include "rng.h"
#include "train.h"
#include "version.h"

typedef enum { VC_CONNECTING, VC_READY, VC_BACKOFF, VC_DONE, VC_FAILED } vc_state;

/* Handshakes in flight at once.  A TLS handshake costs both sides ~10 ms of CPU; a
 * thousand started together all finish late, past the handshake timeout, and retry.  A
 * few dozen keep both sides busy and each one quick. */
#define MAX_HANDSHAKES 32

typedef struct vclient vclient;

/* One task from the server: the model it came with, the work, and the answer.  A job
 * owns its buffers, so a client whose connection dropped while a worker trains can
 * take the next task at once; the stale job is freed when it finishes. */
typedef struct job {
  pool_job base;       /* first: the pool hands back this pointer */
  vclient *vc;
  uint64_t gen;        /* the connection generation that asked for it */
  int train;           /* 1 train, 0 evaluate */
  uint64_t round, model_id, n;
  fl_train_config tcfg;
  float *global;       /* [n] the model as received */
  float *local;        /* [n] trained weights, then the delta (train only) */
  float *bn;           /* FedBN: the client's own batchnorm tensors going in, the trained
                        * ones coming out */
  int bn_own;          /* bn holds the client's own (none before its first round) */
  fl_tensor_rx rx;
  fl_tensor_tx tx;
  int go;              /* the server said Proceed: the delta may be sent */
  int rc;
  fl_eval result;
  double seconds;
} job;

struct vclient {
  app *a;
  int index;
  char name[64];
  fl_tls_config *tls;
  fl_conn *conn;
  uint64_t gen;        /* bumps on every new connection */
  vc_state state;
  int attempts;
  fl_conn *handshaking; /* the connection holding one of the MAX_HANDSHAKES slots */
  vclient *queue_next;  /* app.queue: waiting for a slot */
  uv_timer_t retry;
  fl_rng rng;          /* backoff jitter */
  fl_subset train, test;
  int partition;       /* -1 when training on all of --data */
  uint32_t chunk_bytes; /* tensor data per chunk, as the server's Welcome asks */
  job *rx;             /* task whose model is arriving */
  job *tx;             /* update waiting for Proceed, or being sent */
  float *bn;           /* FedBN: this client's batchnorm tensors (fl_model_local_get) */
  uint64_t bn_model;   /* the model id they are for */
};

struct app {
  const client_config *cfg;
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  pool workers;
  fl_dataset data, test;
  int have_test;
  fl_subset *parts, *test_parts;
  fl_model *model;      /* cached for the spec the server last sent */
  char host[256];
  int port;
  fl_conn_options copt;
  uint8_t *heartbeat;
  size_t heartbeat_len;
  vclient *vcs;
  int n, finished, failed, stopping;
  int open_conns, running, shut_down;
  int handshakes;       /* slots in use */
  int train_threads;    /* threads of each training job */
  vclient *queue, *queue_tail;
  uint32_t chunk_bytes;
};

static void connect_vc(vclient *v);
static void start_connect(vclient *v);

/* ---- sending ---- */

static int send_env(vclient *v, const Fl__Envelope *env) {
  uint8_t *buf;
  size_t len;
  int rc = fl_msg_encode(env, &buf, &len);
  if (rc) return rc;
  rc = fl_conn_send(v->conn, buf, len);
  free(buf);
  return rc;
}

static void send_error(vclient *v, Fl__ErrorCode code, const char *reason) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Error e = FL__ERROR__INIT;
  e.code = code;
  e.reason = (char *)reason;
  env.body_case = FL__ENVELOPE__BODY_ERROR;
  env.error = &e;
  send_env(v, &env);
}

static void job_free(job *j) {
  if (!j) return;
  free(j->global);
  free(j->local);
  free(j->bn);
  free(j);
}

static void pump_tx(vclient *v) {
  while (v->tx && v->tx->go && fl_conn_queued(v->conn) < v->a->copt.high_water) {
    uint8_t *buf;
    size_t len;
    int rc = fl_tensor_tx_next(&v->tx->tx, &buf, &len);
    if (rc > 0) {
      rc = fl_conn_send(v->conn, buf, len);
      free(buf);
      if (rc == 0) continue;
    } else if (rc < 0) {
      fl_error(v->name, "encoding the update failed: %s", fl_strerror(rc));
    }
    job_free(v->tx); /* sent, or the connection is gone */
    v->tx = NULL;
  }
}

/* ---- the virtual client's life ---- */

/* Shuts the loop down once every client has finished and every connection is closed. */
static void check_all_finished(app *a) {
  if (a->finished < a->n || a->open_conns > 0 || a->running > 0 || a->shut_down) return;
  a->shut_down = 1;
  fl_info("client", "all %d clients finished (%d gave up)", a->n, a->failed);
  pool_stop(&a->workers);
  uv_close((uv_handle_t *)&a->sigint, NULL);
  uv_close((uv_handle_t *)&a->sigterm, NULL);
  for (int i = 0; i < a->n; i++) uv_close((uv_handle_t *)&a->vcs[i].retry, NULL);
}

static void finish_vc(vclient *v, vc_state st) {
  if (v->state == VC_DONE || v->state == VC_FAILED) return;
  v->state = st;
  v->a->finished++;
  if (st == VC_FAILED) v->a->failed++;
  uv_timer_stop(&v->retry);
  if (v->conn) fl_conn_close(v->conn, st == VC_DONE ? "done" : "giving up");
  check_all_finished(v->a);
}

static void on_retry(uv_timer_t *t) { connect_vc(t->data); }

static void schedule_reconnect(vclient *v, double delay_s) {
  const client_config *cfg = v->a->cfg;
  if (v->a->stopping) {
    finish_vc(v, VC_FAILED);
    return;
  }
  if (v->attempts >= cfg->max_retries) {
    fl_error(v->name, "giving up after %d failed connection attempts", v->attempts);
    finish_vc(v, VC_FAILED);
    return;
  }
  if (delay_s < 0) {
    double d = cfg->retry_base * pow(2.0, v->attempts);
    if (d > cfg->retry_max) d = cfg->retry_max;
    delay_s = d * (0.5 + 0.5 * fl_rng_uniform(&v->rng)); /* jitter: 50-100% */
  }
  v->attempts++;
  v->state = VC_BACKOFF;
  fl_info(v->name, "reconnecting in %.2f s (attempt %d of %d)", delay_s, v->attempts,
          cfg->max_retries);
  uv_timer_start(&v->retry, on_retry, (uint64_t)(delay_s * 1000.0), 0);
}

/* ---- training and evaluation on the workers ---- */

static double seconds_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) * 1e-9;
}

static void job_run(pool_job *pj) {
  job *j = (job *)pj;
  vclient *v = j->vc;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const fl_model *model = v->a->model;
  int fedbn = v->a->cfg->fedbn && fl_model_local_size(model) > 0;
  uint32_t batch = j->train ? j->tcfg.batch_size : 256;
  fl_trainer *t = fl_trainer_create_threads(model, batch, v->a->train_threads);
  if (!t || (fedbn && !j->bn && !(j->bn = malloc(fl_model_local_size(model) * sizeof(float))))) {
    fl_trainer_free(t);
    j->rc = FL_ENOMEM;
    return;
  }
  if (j->train) {
    memcpy(j->local, j->global, j->n * sizeof(float));
    /* FedBN: train with this client's own batchnorm layers (the server's in its first
     * round), keep what training made of them, and send no change for them */
    if (fedbn && j->bn_own) fl_model_local_put(model, j->local, j->bn);
    j->tcfg.prox_ref = j->tcfg.prox_mu > 0 ? j->global : NULL;
    j->rc = fl_train(t, j->local, &v->train, &j->tcfg, NULL, NULL, &j->result);
    if (j->rc == 0 && fedbn) {
      fl_model_local_get(model, j->local, j->bn);
      fl_model_local_copy(model, j->local, j->global);
    }
    if (j->rc == 0) /* the delta: local minus the global weights it started from */
      for (uint64_t i = 0; i < j->n; i++) j->local[i] -= j->global[i];
  } else {
    const fl_subset *s = v->test.n ? &v->test : &v->train;
    if (fedbn && j->bn_own) fl_model_local_put(model, j->global, j->bn);
    j->rc = fl_evaluate(t, j->global, s, &j->result);
  }
  fl_trainer_free(t);
  j->seconds = seconds_since(&t0);
}

static void job_done(pool_job *pj) {
  job *j = (job *)pj;
  vclient *v = j->vc;
  v->a->running--;
  if (j->train && j->rc == 0 && j->bn) { /* FedBN: the client's batchnorm layers now */
    free(v->bn);
    v->bn = j->bn;
    v->bn_model = j->model_id;
    j->bn = NULL;
  }
  if (v->state == VC_DONE || v->state == VC_FAILED || j->gen != v->gen || !v->conn) {
    job_free(j); /* the connection it was for is gone */
    check_all_finished(v->a);
    return;
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Metrics m = FL__METRICS__INIT;
  m.loss = j->result.loss;
  m.accuracy = j->result.accuracy;
  m.auc = j->result.auc;
  m.num_examples = j->result.n;
  m.seconds = j->seconds;
  if (j->rc) {
    char reason[160];
    snprintf(reason, sizeof reason, "local %s failed: %s", j->train ? "training" : "evaluation",
             fl_strerror(j->rc));
    fl_error(v->name, "round %llu: %s", (unsigned long long)j->round, reason);
    send_error(v, FL__ERROR_CODE__ERROR_INTERNAL, reason);
    job_free(j);
    return;
  }
  if (!j->train) {
    Fl__EvalResult r = FL__EVAL_RESULT__INIT;
    r.round = j->round;
    r.metrics = &m;
    env.body_case = FL__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &r;
    fl_debug(v->name, "round %llu: evaluated %zu examples, accuracy %.4f",
             (unsigned long long)j->round, j->result.n, m.accuracy);
    send_env(v, &env);
    job_free(j);
    return;
  }
  Fl__Update u = FL__UPDATE__INIT;
  u.round = j->round;
  u.model_id = j->model_id;
  u.num_params = j->n;
  u.num_examples = v->train.n;
  u.metrics = &m;
  u.encoding = FL__ENCODING__ENCODING_FLOAT32;
  env.body_case = FL__ENVELOPE__BODY_UPDATE;
  env.update = &u;
  fl_info(v->name, "round %llu: trained on %zu examples in %.2f s, loss %.4f, accuracy %.4f",
          (unsigned long long)j->round, v->train.n, j->seconds, m.loss, m.accuracy);
  if (send_env(v, &env) != 0) {
    job_free(j);
    return;
  }
  job_free(v->tx); /* an older update still waiting or streaming is superseded */
  v->tx = j;
  fl_tensor_tx_init(&j->tx, j->local, j->n, v->chunk_bytes);
}

/* The server takes the update for this round now. */
static void on_proceed(vclient *v, const Fl__Proceed *p) {
  if (!v->tx || v->tx->go || v->tx->round != p->round) {
    fl_warn(v->name, "server says proceed for round %llu, but no update of that round waits",
            (unsigned long long)p->round);
    return;
  }
  v->tx->go = 1;
  pump_tx(v);
}

/* ---- messages from the server ---- */

/* Makes sure the cached model is the one the server names. */
static int use_model(vclient *v, const char *spec, uint64_t id, uint64_t n, char *err,
                     size_t errlen) {
  app *a = v->a;
  if (spec && spec[0] && (!a->model || strcmp(fl_model_spec(a->model), spec) != 0)) {
    if (a->running > 0 && a->model) {
      snprintf(err, errlen, "model changed while other clients still train");
      return FL_ESTATE;
    }
    fl_model *m;
    int rc = fl_model_create(spec, &m, err, errlen);
    if (rc) return rc;
    fl_model_free(a->model);
    a->model = m;
  }
  if (!a->model) {
    snprintf(err, errlen, "task names no model");
    return FL_EPROTO;
  }
  if (fl_model_id(a->model) != id || fl_model_num_params(a->model) != n) {
    snprintf(err, errlen, "task is for model %016llx with %llu parameters, but spec '%s' gives %016llx with %zu",
             (unsigned long long)id, (unsigned long long)n, fl_model_spec(a->model),
             (unsigned long long)fl_model_id(a->model), fl_model_num_params(a->model));
    return FL_EMISMATCH;
  }
  if (fl_model_input_dim(a->model) != a->data.dim) {
    snprintf(err, errlen, "model '%s' takes %zu features, but the local data has %zu",
             fl_model_spec(a->model), fl_model_input_dim(a->model), a->data.dim);
    return FL_EMISMATCH;
  }
  return 0;
}

/* A new job whose model is about to arrive; an unfinished earlier one is dropped. */
static job *begin_receive(vclient *v, int train, uint64_t round, uint64_t model_id, uint64_t n) {
  if (v->rx) {
    fl_warn(v->name, "new task for round %llu before the last one's model arrived; dropping that one",
            (unsigned long long)round);
    job_free(v->rx);
    v->rx = NULL;
  }
  job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->global = malloc((n ? n : 1) * sizeof(float));
  j->local = train ? malloc((n ? n : 1) * sizeof(float)) : NULL;
  if (!j->global || (train && !j->local)) {
    job_free(j);
    return NULL;
  }
  j->base.run = job_run;
  j->base.done = job_done;
  j->vc = v;
  j->train = train;
  j->round = round;
  j->model_id = model_id;
  j->n = n;
  if (v->a->cfg->fedbn && v->bn && v->bn_model == model_id) {
    size_t nb = fl_model_local_size(v->a->model) * sizeof(float);
    if (!(j->bn = malloc(nb))) {
      job_free(j);
      return NULL;
    }
    memcpy(j->bn, v->bn, nb);
    j->bn_own = 1;
  }
  fl_tensor_rx_init(&j->rx, j->global, n, 1);
  v->rx = j;
  return j;
}

static void on_train_task(vclient *v, const Fl__TrainTask *t) {
  char err[512];
  fl_train_config tcfg = fl_train_config_default();
  int rc = use_model(v, t->model_spec, t->model_id, t->num_params, err, sizeof err);
  const Fl__TrainConfig *c = t->config;
  if (rc == 0 && c) {
    if (c->optimizer && c->optimizer[0] && fl_optimizer_parse(c->optimizer, &tcfg) != 0) {
      snprintf(err, sizeof err, "unknown optimizer '%s'", c->optimizer);
      rc = FL_EINVAL;
    }
    if (c->epochs) tcfg.epochs = c->epochs;
    if (c->batch_size) tcfg.batch_size = c->batch_size;
    if (c->lr > 0) tcfg.lr = c->lr;
    if (c->momentum > 0) tcfg.momentum = c->momentum;
    tcfg.weight_decay = c->weight_decay;
    tcfg.prox_mu = c->prox_mu;
    tcfg.clip_norm = c->clip_norm;
    /* Every client of a round trains with its own seed, derived from the round's. */
    tcfg.seed = fl_seed_mix(c->seed, (uint64_t)(v->partition >= 0 ? v->partition : v->index));
  }
  job *j = NULL;
  if (rc == 0) {
    j = begin_receive(v, 1, t->round, t->model_id, t->num_params);
    if (!j) {
      rc = FL_ENOMEM;
      snprintf(err, sizeof err, "out of memory for a model of %llu parameters",
               (unsigned long long)t->num_params);
    }
  }
  if (rc) {
    fl_error(v->name, "round %llu: cannot take the task: %s", (unsigned long long)t->round, err);
    send_error(v, FL__ERROR_CODE__ERROR_REFUSED, err);
    return;
  }
  j->tcfg = tcfg;
  fl_debug(v->name, "round %llu: task received", (unsigned long long)t->round);
}

static void on_eval_task(vclient *v, const Fl__EvalTask *t) {
  char err[512];
  int rc = use_model(v, NULL, t->model_id, t->num_params, err, sizeof err);
  if (rc == 0 && !begin_receive(v, 0, t->round, t->model_id, t->num_params)) {
    rc = FL_ENOMEM;
    snprintf(err, sizeof err, "out of memory");
  }
  if (rc) {
    fl_error(v->name, "round %llu: cannot evaluate: %s", (unsigned long long)t->round, err);
    send_error(v, FL__ERROR_CODE__ERROR_REFUSED, err);
  }
}

static void on_chunk(vclient *v, const Fl__TensorChunk *ch) {
  job *j = v->rx;
  if (!j) {
    fl_warn(v->name, "tensor chunk without a task; ignored");
    return;
  }
  char err[160];
  int rc = fl_tensor_rx_add(&j->rx, ch, err, sizeof err);
  if (rc < 0) {
    fl_error(v->name, "round %llu: bad model from the server: %s", (unsigned long long)j->round, err);
    send_error(v, FL__ERROR_CODE__ERROR_PROTOCOL, err);
    job_free(j);
    v->rx = NULL;
    return;
  }
  if (rc == 0) return;
  v->rx = NULL;
  j->gen = v->gen;
  v->a->running++;
  pool_submit(&v->a->workers, &j->base);
}

static void on_frame(fl_conn *conn, const uint8_t *payload, size_t len) {
  vclient *v = fl_conn_data(conn);
  Fl__Envelope *env;
  int rc = fl_msg_decode(payload, len, &env);
  if (rc) {
    fl_error(v->name, "undecodable message from the server (%zu bytes): %s", len, fl_strerror(rc));
    fl_conn_close(conn, "undecodable message");
    return;
  }
  switch (env->body_case) {
  case FL__ENVELOPE__BODY_WELCOME:
    v->state = VC_READY;
    v->attempts = 0;
    v->chunk_bytes = env->welcome->chunk_size && env->welcome->chunk_size < v->a->chunk_bytes
                         ? env->welcome->chunk_size
                         : v->a->chunk_bytes;
    fl_info(v->name, "joined the federation as %s (protocol %u)", env->welcome->client_id,
            env->welcome->protocol_version);
    break;
  case FL__ENVELOPE__BODY_TRAIN_TASK: on_train_task(v, env->train_task); break;
  case FL__ENVELOPE__BODY_EVAL_TASK: on_eval_task(v, env->eval_task); break;
  case FL__ENVELOPE__BODY_CHUNK: on_chunk(v, env->chunk); break;
  case FL__ENVELOPE__BODY_HEARTBEAT: break;
  case FL__ENVELOPE__BODY_PROCEED: on_proceed(v, env->proceed); break;
  case FL__ENVELOPE__BODY_ERROR:
    fl_warn(v->name, "server says: %s", env->error->reason);
    if (env->error->code == FL__ERROR_CODE__ERROR_VERSION) finish_vc(v, VC_FAILED);
    if (env->error->code == FL__ERROR_CODE__ERROR_REFUSED && v->tx) {
      job_free(v->tx); /* the refused update: nothing more of it is sent */
      v->tx = NULL;
    }
    break;
  case FL__ENVELOPE__BODY_DONE:
    if (env->done->reconnect_after_ms) {
      fl_info(v->name, "server going away (%s); reconnecting in %u ms", env->done->reason,
              env->done->reconnect_after_ms);
      v->attempts = 0;
      fl_conn_close(conn, "server asked to reconnect later");
      /* Spread over [after, 1.5 after]: a restarted server is not met by every client
       * of the federation in the same instant. */
      schedule_reconnect(v, env->done->reconnect_after_ms / 1000.0 *
                                (1.0 + 0.5 * fl_rng_uniform(&v->rng)));
    } else {
      fl_info(v->name, "server says training is done after %llu rounds (%s)",
              (unsigned long long)env->done->rounds, env->done->reason);
      finish_vc(v, VC_DONE);
    }
    break;
  default:
    fl_warn(v->name, "unexpected %s message from the server", fl_msg_name(env));
    break;
  }
  fl_msg_free(env);
}

/* Gives the slot of conn's finished handshake to the next client in the queue. */
static void handshake_over(vclient *v, fl_conn *conn) {
  app *a = v->a;
  if (v->handshaking != conn) return;
  v->handshaking = NULL;
  a->handshakes--;
  while (a->queue && a->handshakes < MAX_HANDSHAKES) {
    vclient *next = a->queue;
    a->queue = next->queue_next;
    if (!a->queue) a->queue_tail = NULL;
    next->queue_next = NULL;
    if (next->state == VC_CONNECTING) start_connect(next);
  }
}

static void on_open(fl_conn *conn) {
  vclient *v = fl_conn_data(conn);
  app *a = v->a;
  handshake_over(v, conn);
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Hello h = FL__HELLO__INIT;
  uint32_t versions[1] = {FL_PROTOCOL_VERSION};
  char *caps[] = {"train", "evaluate", "encoding:float32"};
  h.protocol_version = FL_PROTOCOL_VERSION;
  h.n_supported_versions = 1;
  h.supported_versions = versions;
  h.software_version = FL_VERSION;
  h.num_samples = v->train.n;
  h.n_capabilities = 3;
  h.capabilities = caps;
  env.body_case = FL__ENVELOPE__BODY_HELLO;
  env.hello = &h;
  fl_debug(v->name, "connected to %s:%d", a->host, a->port);
  send_env(v, &env);
}

static void on_drain(fl_conn *conn) { pump_tx(fl_conn_data(conn)); }

static void on_close(fl_conn *conn, int err, const char *reason) {
  vclient *v = fl_conn_data(conn);
  v->a->open_conns--;
  handshake_over(v, conn);
  if (v->conn == conn) v->conn = NULL;
  job_free(v->rx);
  job_free(v->tx);
  v->rx = v->tx = NULL;
  if (v->state == VC_DONE || v->state == VC_FAILED) {
    check_all_finished(v->a);
    return;
  }
  if (v->state == VC_BACKOFF) return; /* already scheduled (Done with reconnect) */
  fl_warn(v->name, "connection to %s:%d lost: %s%s%s", v->a->host, v->a->port,
          reason ? reason : "closed", err ? ": " : "", err ? fl_strerror(err) : "");
  schedule_reconnect(v, -1);
}

static const fl_conn_callbacks callbacks = {on_open, on_frame, on_drain, on_close};

static void connect_vc(vclient *v) {
  app *a = v->a;
  v->state = VC_CONNECTING;
  if (a->handshakes >= MAX_HANDSHAKES) {
    if (a->queue_tail) a->queue_tail->queue_next = v;
    else a->queue = v;
    a->queue_tail = v;
    return;
  }
  start_connect(v);
}

static void start_connect(vclient *v) {
  app *a = v->a;
  v->gen++;
  int rc = fl_connect(&a->loop, v->tls, a->host, a->port, &a->copt, &callbacks, v, &v->conn);
  if (rc == 0) {
    a->open_conns++;
    a->handshakes++;
    v->handshaking = v->conn;
  }
  if (rc) {
    v->conn = NULL;
    fl_warn(v->name, "cannot connect to %s:%d: %s", a->host, a->port, fl_strerror(rc));
    schedule_reconnect(v, -1);
  }
}

static void on_signal(uv_signal_t *h, int signum) {
  app *a = h->data;
  fl_warn("client", "%s: leaving", signum == SIGINT ? "SIGINT" : "SIGTERM");
  a->stopping = 1;
  for (int i = 0; i < a->n; i++) finish_vc(&a->vcs[i], VC_FAILED);
}

/* ---- set-up ---- */

static int load_data(app *a, char *err, size_t errlen) {
  const client_config *cfg = a->cfg;
  int rc = fl_dataset_load(&a->data, cfg->data, err, errlen);
  if (rc) return rc;
  if (cfg->max_samples && a->data.n > cfg->max_samples) a->data.n = cfg->max_samples;
  if (cfg->test) {
    rc = fl_dataset_load(&a->test, cfg->test, err, errlen);
    if (rc) return rc;
    a->have_test = 1;
    if (cfg->max_samples && a->test.n > cfg->max_samples) a->test.n = cfg->max_samples;
    if (a->test.dim != a->data.dim) {
      snprintf(err, errlen, "--test has %zu features but --data has %zu", a->test.dim, a->data.dim);
      return FL_EMISMATCH;
    }
  }
  if (cfg->partition) {
    size_t parts = (size_t)(cfg->num_partitions ? cfg->num_partitions : cfg->clients);
    rc = fl_partition(&a->data, cfg->partition, parts, cfg->seed, &a->parts, err, errlen);
    if (rc) return rc;
    if (a->have_test) {
      rc = fl_partition(&a->test, "iid", parts, cfg->seed, &a->test_parts, err, errlen);
      if (rc) return rc;
    }
  }
  return 0;
}

int app_create(const client_config *cfg, app **out, char *err, size_t errlen) {
  app *a = calloc(1, sizeof *a);
  if (!a) return FL_ENOMEM;
  a->cfg = cfg;
  int rc = FL_ECONFIG;
  if (fl_split_host_port(cfg->server, a->host, sizeof a->host, &a->port) != 0 || a->port == 0) {
    snprintf(err, errlen, "--server: expected HOST:PORT, got '%s'", cfg->server);
    free(a);
    return rc;
  }
  uv_loop_init(&a->loop);
  rc = load_data(a, err, errlen);
  if (rc) goto fail;

  fl_conn_options_default(&a->copt);
  a->copt.heartbeat_interval_ms = (uint32_t)(cfg->heartbeat * 1000);
  a->copt.idle_timeout_ms = (uint32_t)(cfg->idle_timeout * 1000);
  a->chunk_bytes = FL_CHUNK_DEFAULT;
  a->copt.high_water = FL_CHUNK_DEFAULT;
  rc = fl_msg_heartbeat(0, 0, &a->heartbeat, &a->heartbeat_len);
  if (rc) goto fail;
  a->copt.heartbeat = a->heartbeat;
  a->copt.heartbeat_len = a->heartbeat_len;

  a->n = cfg->clients;
  a->vcs = calloc((size_t)a->n, sizeof *a->vcs);
  rc = FL_ENOMEM;
  if (!a->vcs) goto fail;
  for (int i = 0; i < a->n; i++) {
    vclient *v = &a->vcs[i];
    v->a = a;
    v->index = i;
    v->partition = cfg->partition ? cfg->partition_index + i : -1;
    v->chunk_bytes = FL_CHUNK_DEFAULT; /* until the server's Welcome names its size */
    fl_rng_seed2(&v->rng, (uint64_t)time(NULL) ^ (uint64_t)uv_os_getpid(), (uint64_t)i);
    char cert[1024], key[1024];
    if (cfg->cert) {
      snprintf(cert, sizeof cert, "%s", cfg->cert);
      snprintf(key, sizeof key, "%s", cfg->key);
      snprintf(v->name, sizeof v->name, "client");
    } else {
      snprintf(cert, sizeof cert, "%s/%s-%04d.crt", cfg->certs_dir, cfg->cert_prefix, cfg->cert_index + i);
      snprintf(key, sizeof key, "%s/%s-%04d.key", cfg->certs_dir, cfg->cert_prefix, cfg->cert_index + i);
      snprintf(v->name, sizeof v->name, "%s-%04d", cfg->cert_prefix, cfg->cert_index + i);
    }
    fl_tls_options topt = {.is_server = 0, .ca_file = cfg->ca, .cert_file = cert, .key_file = key,
                           .server_name = cfg->server_name ? cfg->server_name : a->host};
    rc = fl_tls_config_create(&topt, &v->tls, err, errlen);
    if (rc) goto fail;
    if (v->partition >= 0) {
      v->train = a->parts[v->partition];
      if (a->have_test) v->test = a->test_parts[v->partition];
    } else {
      v->train = (fl_subset){&a->data, NULL, a->data.n};
      if (a->have_test) v->test = (fl_subset){&a->test, NULL, a->test.n};
    }
    if (v->train.n == 0) {
      snprintf(err, errlen, "%s: partition %d of --data is empty", v->name, v->partition);
      rc = FL_EINVAL;
      goto fail;
    }
    uv_timer_init(&a->loop, &v->retry);
    v->retry.data = v;
  }
  int cores = (int)uv_available_parallelism();
  int workers = cfg->workers ? cfg->workers : cores;
  if (workers > a->n) workers = a->n;
  /* one client: all the cores for its job; a simulation: a core for each worker's job */
  a->train_threads = cfg->train_threads ? cfg->train_threads
                                        : (cores / workers > 1 ? cores / workers : 1);
  rc = pool_start(&a->workers, &a->loop, workers);
  if (rc) {
    snprintf(err, errlen, "cannot start %d worker threads", workers);
    goto fail;
  }
  uv_signal_init(&a->loop, &a->sigint);
  uv_signal_init(&a->loop, &a->sigterm);
  a->sigint.data = a->sigterm.data = a;
  uv_signal_start(&a->sigint, on_signal, SIGINT);
  uv_signal_start(&a->sigterm, on_signal, SIGTERM);
  fl_info("client", "%d client%s, %zu training samples%s, %d worker%s of %d training thread%s%s, "
          "server %s:%d", a->n, a->n == 1 ? "" : "s", a->data.n,
          cfg->partition ? " (partitioned)" : "", workers, workers == 1 ? "" : "s",
          a->train_threads, a->train_threads == 1 ? "" : "s", cfg->fedbn ? ", FedBN" : "",
          a->host, a->port);
  *out = a;
  return 0;
fail:
  app_free(a);
  return rc;
}

int app_run(app *a) {
  for (int i = 0; i < a->n; i++) connect_vc(&a->vcs[i]);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  return a->failed ? FL_ECLOSED : 0;
}

static void close_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void app_free(app *a) {
  if (!a) return;
  if (uv_loop_alive(&a->loop)) {
    uv_walk(&a->loop, close_handle, NULL);
    uv_run(&a->loop, UV_RUN_DEFAULT);
  }
  uv_loop_close(&a->loop);
  for (int i = 0; a->vcs && i < a->n; i++) {
    fl_tls_config_free(a->vcs[i].tls);
    free(a->vcs[i].bn);
    job_free(a->vcs[i].rx);
    job_free(a->vcs[i].tx);
  }
  free(a->vcs);
  if (a->parts) fl_partition_free(a->parts);
  if (a->test_parts) fl_partition_free(a->test_parts);
  fl_dataset_free(&a->data);
  if (a->have_test) fl_dataset_free(&a->test);
  fl_model_free(a->model);
  free(a->heartbeat);
  free(a);
}
