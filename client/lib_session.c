/* libflclient: a run of a client on a libuv loop.
 *
 * The client connects (through its throttle, if it has one), says Hello with the model it
 * declares, and once Welcome comes does what the server asks (lib_task.c).  A failed
 * connection is retried after base * 2^attempt seconds (at most max, jittered between half
 * and all of it) until max_retries attempts in a row failed, unless a certificate was
 * refused (by either side: another CA, a name the server's certificate does not carry,
 * revoked, expired), which no retry fixes: the run ends at once with the reason; Done with reconnect_after
 * comes back after that long, spread over [1, 1.5] times it so that a restarted server is
 * not met by every client in the same instant; Done without it ends the run.
 *
 * Finishing (finish()): the connection is closed, the task the application holds is told
 * it is no longer wanted, and once it has returned and the connection is gone, the
 * client's handles close; their close callbacks end the run and call the finish callback,
 * the last thing the library does with the client. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "lib_internal.h"
#include "version.h"

static void schedule_reconnect(fl_client *c, double delay_s);
static void finish(fl_client *c, int status);

int flc__send(fl_client *c, const Fl__Envelope *env) {
  if (!c->conn) return FL_ECLOSED;
  uint8_t *buf;
  size_t len;
  int rc = fl_msg_encode(env, &buf, &len);
  if (rc) return rc;
  rc = fl_conn_send(c->conn, buf, len);
  free(buf);
  return rc;
}

void flc__send_error(fl_client *c, Fl__ErrorCode code, const char *reason, uint64_t round,
                     Fl__TaskKind task) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Error e = FL__ERROR__INIT;
  e.code = code;
  e.reason = (char *)reason;
  e.round = round;
  e.task = task;
  env.body_case = FL__ENVELOPE__BODY_ERROR;
  env.error = &e;
  flc__send(c, &env);
}

/* ---- the connection ---- */

static void on_open(fl_conn *conn) {
  fl_client *c = fl_conn_data(conn);
  if (c->handshaking == conn) {
    c->handshaking = NULL;
    flc__throttle_release(c);
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Hello h = FL__HELLO__INIT;
  uint32_t versions[1] = {FL_PROTOCOL_VERSION};
  char *caps[10];
  size_t ncaps = 0;
  caps[ncaps++] = "train";
  caps[ncaps++] = "encoding:float32";
  if (c->encodings & FL_CLIENT_ENC_FLOAT16) caps[ncaps++] = "encoding:float16";
  if (c->encodings & FL_CLIENT_ENC_INT8) caps[ncaps++] = "encoding:int8";
  if (c->encodings & FL_CLIENT_ENC_TOPK) caps[ncaps++] = "encoding:topk";
  if (c->evaluate) caps[ncaps++] = "evaluate";
  if (c->get_params && c->model_spec) caps[ncaps++] = "params";
  caps[ncaps++] = "secagg";
  if (c->frozen_cache) caps[ncaps++] = "frozen-cache";
  char software[64];
  snprintf(software, sizeof software, "libflclient %s (fl %s)", fl_client_version(), FL_VERSION);
  h.protocol_version = FL_PROTOCOL_VERSION;
  h.n_supported_versions = 1;
  h.supported_versions = versions;
  h.software_version = software;
  h.num_samples = c->num_examples;
  h.frozen_held = flc__frozen_held(c);
  h.n_capabilities = ncaps;
  h.capabilities = caps;
  Fl__FeatureStats fs = FL__FEATURE_STATS__INIT;
  if (c->fs_dim) {
    fs.count = c->fs_count;
    fs.n_sum = fs.n_sum_sq = c->fs_dim;
    fs.sum = c->fs_sum;
    fs.sum_sq = c->fs_sq;
    h.feature_stats = &fs;
  }
  if (c->model_spec) {
    h.model_spec = c->model_spec;
    h.model_id = c->model_id;
    h.num_params = c->num_params;
  }
  env.body_case = FL__ENVELOPE__BODY_HELLO;
  env.hello = &h;
  flc__log(c, FL_CLIENT_LOG_DEBUG, "connected to %s:%d (%s)", c->host, c->port,
           fl_conn_cipher(conn));
  c->state = FLC_JOINING;
  flc__send(c, &env);
}

/* The server's model, as its Welcome names it, against the declaration. */
static int on_welcome(fl_client *c, const Fl__Welcome *w) {
  if (w->model_spec && w->model_spec[0]) {
    char *spec = strdup(w->model_spec);
    if (!spec) return FL_CLIENT_ENOMEM;
    free(c->server_spec);
    c->server_spec = spec;
    c->server_model_id = w->model_id;
    c->server_num_params = w->num_params;
    if (c->model_spec && (w->model_id != c->model_id || w->num_params != c->num_params))
      return flc__errf(c, FL_CLIENT_EMODEL,
                       "the server trains '%s' (%llu parameters), but this client declares "
                       "'%s' (%llu parameters)", w->model_spec,
                       (unsigned long long)w->num_params, c->model_spec,
                       (unsigned long long)c->num_params);
  }
  fl_codec up = {(fl_enc)w->update_encoding, w->update_stochastic, w->update_topk_fraction};
  if ((int)up.enc < 0 || (int)up.enc >= FL_ENC_COUNT || !(c->encodings & (1u << up.enc)) ||
      (up.enc == FL_ENC_TOPK && !(up.fraction > 0 && up.fraction <= 1)))
    return flc__errf(c, FL_CLIENT_EPROTO, "the server asks for updates in encoding %d (fraction "
                     "%g), which this client did not offer", (int)w->update_encoding,
                     w->update_topk_fraction);
  c->uplink = up;
  c->state = FLC_READY;
  c->attempts = 0;
  c->chunk_bytes = w->chunk_size && w->chunk_size < FL_CHUNK_DEFAULT ? w->chunk_size
                                                                      : FL_CHUNK_DEFAULT;
  char enc[48];
  fl_codec_format(&c->uplink, enc, sizeof enc);
  flc__log(c, FL_CLIENT_LOG_INFO, "joined the federation as %s (protocol %u%s%s, updates in %s)",
           w->client_id ? w->client_id : "?", w->protocol_version,
           c->server_spec ? ", model " : "", c->server_spec ? c->server_spec : "", enc);
  return 0;
}

static void on_server_error(fl_client *c, const Fl__Error *e) {
  const char *reason = e->reason && e->reason[0] ? e->reason : "(no reason given)";
  flc__log(c, FL_CLIENT_LOG_WARN, "server says: %s", reason);
  if (e->code == FL__ERROR_CODE__ERROR_VERSION) {
    flc__errf(c, FL_CLIENT_EVERSION, "the server refused this client's protocol: %s", reason);
    finish(c, FL_CLIENT_EVERSION);
  } else if (e->code == FL__ERROR_CODE__ERROR_MODEL) {
    flc__errf(c, FL_CLIENT_EMODEL, "the server refused this client's model: %s", reason);
    finish(c, FL_CLIENT_EMODEL);
  } else if (e->code == FL__ERROR_CODE__ERROR_INCOMPATIBLE) {
    flc__errf(c, FL_CLIENT_EINCOMPATIBLE, "the server refuses this client: %s", reason);
    finish(c, FL_CLIENT_EINCOMPATIBLE);
  } else if (e->code == FL__ERROR_CODE__ERROR_REFUSED && c->tx) {
    flc__task_free(c->tx); /* the refused update: nothing more of it is sent */
    c->tx = NULL;
  }
}

static void on_done(fl_client *c, const Fl__Done *d) {
  const char *reason = d->reason ? d->reason : "";
  if (d->reconnect_after_ms) {
    flc__log(c, FL_CLIENT_LOG_INFO, "server going away (%s); reconnecting in %u ms", reason,
             d->reconnect_after_ms);
    c->attempts = 0;
    flc__drop_tasks(c);
    fl_conn_close(c->conn, "server asked to reconnect later");
    schedule_reconnect(c, d->reconnect_after_ms / 1000.0 * (1.0 + 0.5 * fl_rng_uniform(&c->rng)));
    return;
  }
  flc__log(c, FL_CLIENT_LOG_INFO, "server says training is done after %llu rounds (%s)",
           (unsigned long long)d->rounds, reason);
  c->errmsg[0] = '\0';
  finish(c, 0);
}

static void on_frame(fl_conn *conn, const uint8_t *payload, size_t len) {
  fl_client *c = fl_conn_data(conn);
  if (c->state == FLC_FINISHING || c->conn != conn) return;
  Fl__Envelope *env;
  int rc = fl_msg_decode(payload, len, &env);
  if (rc) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "undecodable message from the server (%zu bytes): %s", len,
             fl_strerror(rc));
    fl_conn_close(conn, "undecodable message");
    return;
  }
  if (c->state == FLC_JOINING && env->body_case != FL__ENVELOPE__BODY_WELCOME &&
      env->body_case != FL__ENVELOPE__BODY_ERROR && env->body_case != FL__ENVELOPE__BODY_DONE &&
      env->body_case != FL__ENVELOPE__BODY_HEARTBEAT) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "%s message before the server's welcome", fl_msg_name(env));
    fl_conn_close(conn, "protocol violation");
    fl_msg_free(env);
    return;
  }
  switch (env->body_case) {
  case FL__ENVELOPE__BODY_WELCOME:
    if (c->state != FLC_JOINING) {
      flc__log(c, FL_CLIENT_LOG_WARN, "second welcome from the server; ignored");
    } else if ((rc = on_welcome(c, env->welcome)) != 0) {
      flc__log(c, FL_CLIENT_LOG_ERROR, "%s", c->errmsg);
      finish(c, rc);
    }
    break;
  case FL__ENVELOPE__BODY_TRAIN_TASK: flc__on_train_task(c, env->train_task); break;
  case FL__ENVELOPE__BODY_EVAL_TASK: flc__on_eval_task(c, env->eval_task); break;
  case FL__ENVELOPE__BODY_PARAMS_REQUEST: flc__on_params_request(c, env->params_request); break;
  case FL__ENVELOPE__BODY_CHUNK: flc__on_chunk(c, env->chunk); break;
  case FL__ENVELOPE__BODY_PROCEED: flc__on_proceed(c, env->proceed); break;
  case FL__ENVELOPE__BODY_SECAGG_SETUP: flc__on_secagg_setup(c, env->secagg_setup); break;
  case FL__ENVELOPE__BODY_SECAGG_PEERS: flc__on_secagg_peers(c, env->secagg_peers); break;
  case FL__ENVELOPE__BODY_SECAGG_SHARES: flc__on_secagg_shares(c, env->secagg_shares); break;
  case FL__ENVELOPE__BODY_SECAGG_UNMASK: flc__on_secagg_unmask(c, env->secagg_unmask); break;
  case FL__ENVELOPE__BODY_HEARTBEAT: break;
  case FL__ENVELOPE__BODY_ERROR: on_server_error(c, env->error); break;
  case FL__ENVELOPE__BODY_DONE: on_done(c, env->done); break;
  default:
    flc__log(c, FL_CLIENT_LOG_WARN, "unexpected %s message from the server", fl_msg_name(env));
    break;
  }
  fl_msg_free(env);
}

static void on_drain(fl_conn *conn) {
  fl_client *c = fl_conn_data(conn);
  if (c->conn == conn) flc__pump(c);
}

static void on_close(fl_conn *conn, int err, const char *reason) {
  fl_client *c = fl_conn_data(conn);
  if (c->handshaking == conn) {
    c->handshaking = NULL;
    flc__throttle_release(c);
  }
  if (c->conn != conn) return; /* an older connection, already given up */
  c->conn = NULL;
  flc__drop_tasks(c);
  if (c->state == FLC_FINISHING) {
    flc__maybe_finished(c);
    return;
  }
  if (c->state == FLC_BACKOFF) return; /* already scheduled (Done with reconnect) */
  if (err == FL_ECERT || err == FL_ECERTREFUSED) {
    /* A certificate the server or this client refuses stays refused: no retrying. */
    flc__errf(c, FL_CLIENT_ETLS, "cannot connect to %s:%d: %s", c->host, c->port,
              reason ? reason : fl_strerror(err));
    flc__log(c, FL_CLIENT_LOG_DEBUG, "a certificate was refused: no retrying");
    finish(c, FL_CLIENT_ETLS);
    return;
  }
  flc__log(c, FL_CLIENT_LOG_WARN, "connection to %s:%d lost: %s%s%s", c->host, c->port,
           reason ? reason : "closed", err ? ": " : "", err ? fl_strerror(err) : "");
  schedule_reconnect(c, -1);
}

/* Before each heartbeat: the payload carries the task's progress, re-encoded only when it
 * moved (the application reports it from any thread: fl_client_task_progress). */
static void refresh_heartbeat(fl_conn *conn) {
  fl_client *c = fl_conn_data(conn);
  unsigned p = atomic_load(&c->progress);
  if (p == c->progress_sent) return;
  uint8_t *buf;
  size_t len;
  if (fl_msg_heartbeat(++c->heartbeat_seq, (float)(p / 1e6), &buf, &len) != 0) return;
  if (fl_conn_set_heartbeat(conn, buf, len) == 0) c->progress_sent = p;
  free(buf);
}

static const fl_conn_callbacks conn_callbacks = {on_open, on_frame, on_drain, on_close};

/* Connects; the caller holds a handshake slot (or there is no throttle). */
void flc__start_connect(fl_client *c) {
  c->state = FLC_CONNECTING;
  c->gen++;
  c->progress_sent = 0; /* the new connection's heartbeat is copt's: progress 0 */
  int rc = fl_connect(c->loop, c->tls, c->host, c->port, &c->copt, &conn_callbacks, c, &c->conn);
  if (rc == 0) {
    c->handshaking = c->conn;
    return;
  }
  c->conn = NULL;
  flc__throttle_release(c);
  flc__log(c, FL_CLIENT_LOG_WARN, "cannot connect to %s:%d: %s", c->host, c->port,
           fl_strerror(rc));
  schedule_reconnect(c, -1);
}

static void connect_now(fl_client *c) {
  c->state = FLC_CONNECTING;
  if (flc__throttle_acquire(c)) flc__start_connect(c);
}

static void on_retry(uv_timer_t *t) { connect_now(t->data); }

static void schedule_reconnect(fl_client *c, double delay_s) {
  if (c->state == FLC_FINISHING) return;
  if (c->attempts >= c->max_retries) {
    flc__errf(c, FL_CLIENT_EGAVEUP, "gave up after %u failed connection attempts to %s:%d",
              c->attempts, c->host, c->port);
    flc__log(c, FL_CLIENT_LOG_ERROR, "giving up after %u failed connection attempts",
             c->attempts);
    finish(c, FL_CLIENT_EGAVEUP);
    return;
  }
  if (delay_s < 0) {
    double d = c->retry_base * pow(2.0, c->attempts);
    if (d > c->retry_max) d = c->retry_max;
    delay_s = d * (0.5 + 0.5 * fl_rng_uniform(&c->rng)); /* jitter: 50-100% */
  }
  c->attempts++;
  c->state = FLC_BACKOFF;
  flc__log(c, FL_CLIENT_LOG_INFO, "reconnecting in %.2f s (attempt %u of %u)", delay_s,
           c->attempts, c->max_retries);
  uv_timer_start(&c->retry, on_retry, (uint64_t)(delay_s * 1000.0), 0);
}

/* ---- finishing ---- */

static void finish(fl_client *c, int status) {
  if (c->state == FLC_FINISHING) return;
  c->state = FLC_FINISHING;
  c->status = status;
  uv_timer_stop(&c->retry);
  flc__throttle_leave(c);
  flc__drop_tasks(c);
  if (c->conn) {
    if (status == FL_CLIENT_ESTOPPED) {
      Fl__Envelope env = FL__ENVELOPE__INIT;
      Fl__Done d = FL__DONE__INIT;
      d.reason = "client stopping";
      env.body_case = FL__ENVELOPE__BODY_DONE;
      env.done = &d;
      flc__send(c, &env);
    }
    fl_conn_close(c->conn, status == 0 ? "done" : fl_client_strerror(status));
  }
  flc__maybe_finished(c);
}

void flc__finish(fl_client *c, int status) { finish(c, status); }

static void on_handle_closed(uv_handle_t *h) {
  fl_client *c = h->data;
  if (--c->handles_open > 0) return;
  /* The run is over: nothing of the library refers to c after the finish callback. */
  free(c->heartbeat_msg);
  c->heartbeat_msg = NULL;
  c->loop = NULL;
  c->running = 0;
  c->state = FLC_IDLE;
  pthread_mutex_lock(&c->mu);
  c->stop_requested = 0;
  pthread_mutex_unlock(&c->mu);
  int status = c->status;
  if (c->status_out) *c->status_out = status;
  c->status_out = NULL;
  if (c->finish) c->finish(c, status);
}

/* Closes the handles once the connection is gone and the application holds no task. */
void flc__maybe_finished(fl_client *c) {
  if (c->state != FLC_FINISHING || c->conn || c->active || c->sa_jobs || c->handles_closing) return;
  c->handles_closing = 1;
  pthread_mutex_lock(&c->mu);
  c->accepting = 0;
  pthread_mutex_unlock(&c->mu);
  uv_close((uv_handle_t *)&c->retry, on_handle_closed);
  uv_close((uv_handle_t *)&c->async, on_handle_closed);
}

/* Tasks completed on other threads, and stop requests. */
static void on_async(uv_async_t *a) {
  fl_client *c = a->data;
  pthread_mutex_lock(&c->mu);
  fl_client_task *list = c->done;
  c->done = NULL;
  int stop = c->stop_requested;
  pthread_mutex_unlock(&c->mu);
  if (stop && c->state != FLC_FINISHING) {
    flc__log(c, FL_CLIENT_LOG_INFO, "stopping");
    flc__errf(c, FL_CLIENT_ESTOPPED, "stopped by fl_client_stop");
    finish(c, FL_CLIENT_ESTOPPED);
  }
  if (list) flc__on_completed(c, list);
  flc__maybe_finished(c);
}

void fl_client_stop(fl_client *c) {
  if (!c) return;
  pthread_mutex_lock(&c->mu);
  c->stop_requested = 1;
  if (c->accepting) uv_async_send(&c->async);
  pthread_mutex_unlock(&c->mu);
}

/* ---- starting ---- */

int fl_client_start(fl_client *c, uv_loop_t *loop) {
  if (!c || !loop) return FL_CLIENT_EINVAL;
  if (c->running) return flc__errf(c, FL_CLIENT_ESTATE, "fl_client_start: the client runs already");
  if (!c->host)
    return flc__errf(c, FL_CLIENT_ECONFIG, "no server to join: call fl_client_set_server");
  if (!c->tls)
    return flc__errf(c, FL_CLIENT_ECONFIG, "no TLS identity: call fl_client_set_tls");
  if (!c->fit) return flc__errf(c, FL_CLIENT_ECONFIG, "no fit callback: call fl_client_on_fit");
  if (!c->num_examples)
    return flc__errf(c, FL_CLIENT_ECONFIG, "no local examples announced: call "
                     "fl_client_set_num_examples (the server refuses updates that claim more)");
  c->errmsg[0] = '\0';
  fl_conn_options_default(&c->copt);
  c->copt.heartbeat_interval_ms = (uint32_t)(c->heartbeat * 1000);
  c->copt.idle_timeout_ms = (uint32_t)(c->idle_timeout * 1000);
  c->copt.high_water = FL_CHUNK_DEFAULT;
  if (c->copt.handshake_timeout_ms > c->copt.idle_timeout_ms)
    c->copt.handshake_timeout_ms = c->copt.idle_timeout_ms;
  if (c->copt.stall_timeout_ms > c->copt.idle_timeout_ms)
    c->copt.stall_timeout_ms = c->copt.idle_timeout_ms;
  if (fl_msg_heartbeat(0, 0, &c->heartbeat_msg, &c->heartbeat_len) != 0)
    return flc__errf(c, FL_CLIENT_ENOMEM, "out of memory");
  c->copt.heartbeat = c->heartbeat_msg;
  c->copt.heartbeat_len = c->heartbeat_len;
  c->copt.heartbeat_refresh = refresh_heartbeat;
  c->progress_sent = 0;
  atomic_store(&c->progress, 0);
  if (uv_timer_init(loop, &c->retry) != 0 || uv_async_init(loop, &c->async, on_async) != 0) {
    free(c->heartbeat_msg);
    c->heartbeat_msg = NULL;
    return flc__errf(c, FL_CLIENT_ENOMEM, "libuv: cannot create the client's handles");
  }
  c->retry.data = c->async.data = c;
  c->handles_open = 2;
  c->handles_closing = 0;
  c->loop = loop;
  c->running = 1;
  c->status = 0;
  c->attempts = 0;
  c->chunk_bytes = FL_CHUNK_DEFAULT;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  fl_rng_seed2(&c->rng, (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)getpid(),
               (uint64_t)(uintptr_t)c);
  pthread_mutex_lock(&c->mu);
  c->accepting = 1;
  int stop = c->stop_requested;
  pthread_mutex_unlock(&c->mu);
  if (stop) { /* stopped before it ran: finish from the loop, not inside this call */
    c->state = FLC_CONNECTING;
    uv_async_send(&c->async);
    return 0;
  }
  connect_now(c);
  return 0;
}

int fl_client_run(fl_client *c) {
  if (!c) return FL_CLIENT_EINVAL;
  uv_loop_t *loop = malloc(sizeof *loop);
  if (!loop) return FL_CLIENT_ENOMEM;
  if (uv_loop_init(loop) != 0) {
    free(loop);
    return flc__errf(c, FL_CLIENT_ENOMEM, "libuv: cannot create a loop");
  }
  int status = 0;
  int rc = fl_client_start(c, loop);
  if (rc == 0) {
    c->status_out = &status;
    uv_run(loop, UV_RUN_DEFAULT); /* ends once the client has finished */
    rc = status;                  /* c may be freed by now, by its finish callback */
  }
  uv_loop_close(loop);
  free(loop);
  return rc;
}
