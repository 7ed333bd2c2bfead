/* fl-server's connections: a client record per peer, from open to close.
 *
 * A peer that opened (its TLS handshake done) gets a client record in the server's list;
 * a second connection with the same certificate name replaces the first.  Hello is
 * answered with Welcome (protocol version, heartbeat interval, frame and chunk sizes,
 * the model) and makes the client ready for rounds, unless it declares another model
 * (external.c); every other frame is decoded here and
 * dispatched to the file its message belongs to.  A client that breaks the protocol is
 * told why and closed; heartbeats only keep the connection alive (conn.h drops peers
 * that fall silent).  A client that says it cannot train this model at all
 * (ERROR_INCOMPATIBLE: its data does not fit) is left out of the rest of the run: its
 * connection closes, and a later Hello with the same certificate name is refused with
 * the reason it gave.  When a peer closes, its part in the round is settled (stream
 * abandoned, update buffer released, answer counted as dropped) before its record is
 * freed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "server_internal.h"
#include "version.h"

void srv_count_sent(client *c, size_t bytes) {
  c->srv->bytes_out += bytes;
  if (c->srv->status) srv_status_io(c, 0, bytes);
}

int srv_send(client *c, const Fl__Envelope *env) {
  uint8_t *buf;
  size_t len;
  int rc = fl_msg_encode(env, &buf, &len);
  if (rc) return rc;
  rc = fl_peer_send(c->peer, buf, len);
  if (rc == 0) srv_count_sent(c, len + 4);
  free(buf);
  return rc;
}

void srv_send_error(client *c, Fl__ErrorCode code, const char *reason) {
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
  srv_send(c, &env);
}

int srv_cert_expired(client *c, int64_t now) {
  int64_t end = fl_peer_not_after(c->peer);
  if (c->closing || end <= 0 || now <= end) return 0;
  char when[32];
  time_t t = (time_t)end;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  fl_warn("server", "%s (%s): its certificate expired at %s while it was connected; closing",
          c->id, fl_peer_addr(c->peer), when);
  srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "your certificate has expired");
  c->closing = 1;
  fl_peer_close(c->peer, "certificate expired");
  return 1;
}

size_t srv_clients_available(server *s) {
  size_t n = 0;
  int64_t now = (int64_t)time(NULL);
  for (client *c = s->clients; c; c = c->next)
    if (c->ready && !c->closing && !srv_cert_expired(c, now)) n++;
  return n;
}

void srv_excluded_free(server *s) {
  while (s->excluded) {
    excluded *e = s->excluded;
    s->excluded = e->next;
    free(e);
  }
  s->n_excluded = 0;
}

static const excluded *find_excluded(const server *s, const char *id) {
  for (const excluded *e = s->excluded; e; e = e->next)
    if (strcmp(e->client, id) == 0) return e;
  return NULL;
}

/* The client cannot train this model: its answer to the task is in, and it leaves. */
static void exclude(client *c, const Fl__Error *e) {
  server *s = c->srv;
  const char *reason = e->reason && e->reason[0] ? e->reason : "(no reason given)";
  fl_warn("server", "%s cannot train this model: %s; it is left out for the rest of the run",
          c->id, reason);
  if (!find_excluded(s, c->id)) {
    excluded *x = calloc(1, sizeof *x);
    if (x) {
      snprintf(x->client, sizeof x->client, "%s", c->id);
      snprintf(x->reason, sizeof x->reason, "%s", reason);
      x->next = s->excluded;
      s->excluded = x;
      s->n_excluded++;
    }
  }
  c->closing = 1; /* never selected again, even by the round its answer completes */
  fl_peer_close(c->peer, "it cannot train this model");
  if (c == s->init_from) srv_init_failed(c, reason);
  if (e->task == FL__TASK_KIND__TASK_TRAIN) srv_on_train_error(c, e->round, reason);
  else if (e->task == FL__TASK_KIND__TASK_EVALUATE) srv_on_eval_error(c, e->round);
  srv_advance(s);
}

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
    if (srv_id_log_ok(c))
      fl_warn("server", "%s connected again from %s; closing its older connection", c->id,
              fl_peer_addr(peer));
    old->closing = 1;
    fl_peer_close(old->peer, "replaced by a newer connection of the same client");
  }
  if (srv_id_log_ok(c))
    fl_info("server", "%s connected from %s%s", c->id, fl_peer_addr(peer),
            fl_peer_resumed(peer) ? " (TLS session resumed)" : "");
}

static void on_hello(client *c, const Fl__Hello *h) {
  server *s = c->srv;
  uint32_t chosen;
  if (c->ready) {
    srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "second hello");
    return;
  }
  if (fl_version_negotiate(h, &chosen) != 0) {
    char reason[160];
    snprintf(reason, sizeof reason,
             "protocol version %u is not supported; this server speaks version %u",
             h->protocol_version, FL_PROTOCOL_VERSION);
    if (srv_id_log_ok(c)) fl_warn("server", "%s (%s): %s", c->id, fl_peer_addr(c->peer), reason);
    srv_send_error(c, FL__ERROR_CODE__ERROR_VERSION, reason);
    c->closing = 1;
    fl_peer_close(c->peer, "incompatible protocol version");
    return;
  }
  char why[700];
  const excluded *x = find_excluded(s, c->id);
  if (x) {
    snprintf(why, sizeof why, "%s is left out of this run: it said it cannot train this model (%s)",
             c->id, x->reason);
    if (srv_id_log_ok(c)) fl_warn("server", "%s (%s): refused: %s", c->id, fl_peer_addr(c->peer), why);
    srv_send_error(c, FL__ERROR_CODE__ERROR_INCOMPATIBLE, why);
    c->closing = 1;
    fl_peer_close(c->peer, "left out of the run");
    return;
  }
  if (srv_model_disagrees(s, h, why, sizeof why)) {
    if (srv_id_log_ok(c)) fl_warn("server", "%s (%s): refused: %s", c->id, fl_peer_addr(c->peer), why);
    srv_send_error(c, FL__ERROR_CODE__ERROR_MODEL, why);
    c->closing = 1;
    fl_peer_close(c->peer, "model disagreement");
    return;
  }
  int speaks[FL_ENC_COUNT] = {1}; /* float32, whatever it lists */
  int secagg = 0;
  for (size_t i = 0; i < h->n_capabilities; i++) {
    const char *cap = h->capabilities[i];
    if (strcmp(cap, "params") == 0) c->can_params = 1;
    if (strcmp(cap, "secagg") == 0) secagg = 1;
    if (strcmp(cap, "frozen-cache") == 0) c->keeps_frozen = 1;
    for (int e = 0; e < FL_ENC_COUNT; e++)
      if (strncmp(cap, "encoding:", 9) == 0 && strcmp(cap + 9, fl_enc_name(e)) == 0) speaks[e] = 1;
  }
  if (s->cfg->secagg && !secagg) {
    const char *why = "this server aggregates updates securely (--secagg), and the client does "
                      "not speak secure aggregation (no 'secagg' capability)";
    if (srv_id_log_ok(c)) fl_warn("server", "%s (%s): refused: %s", c->id, fl_peer_addr(c->peer), why);
    srv_send_error(c, FL__ERROR_CODE__ERROR_VERSION, why);
    c->closing = 1;
    fl_peer_close(c->peer, "no secure aggregation");
    return;
  }
  /* The configured encodings where the client offered them, float32 otherwise: a client
   * is never asked for an encoding it did not list. */
  const fl_codec f32 = {FL_ENC_FLOAT32, 0, 0};
  c->uplink = speaks[s->uplink.enc] ? s->uplink : f32;
  c->down_cached = s->downlink.enc != FL_ENC_FLOAT32 && speaks[s->downlink.enc];
  if ((c->uplink.enc != s->uplink.enc || (s->downlink.enc != FL_ENC_FLOAT32 && !c->down_cached)) &&
      srv_id_log_ok(c))
    fl_info("server", "%s does not offer %s%s%s: it sends and gets float32 instead", c->id,
            c->uplink.enc != s->uplink.enc ? fl_enc_name(s->uplink.enc) : "",
            c->uplink.enc != s->uplink.enc && !c->down_cached && s->downlink.enc != FL_ENC_FLOAT32 ? " and " : "",
            s->downlink.enc != FL_ENC_FLOAT32 && !c->down_cached ? fl_enc_name(s->downlink.enc) : "");
  c->num_samples = h->num_samples;
  c->frozen_held = c->keeps_frozen ? h->frozen_held : 0;
  srv_standardize_hello(c, h);
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
  w.update_encoding = (Fl__Encoding)c->uplink.enc;
  w.update_topk_fraction = c->uplink.fraction;
  w.update_stochastic = c->uplink.stochastic;
  env.body_case = FL__ENVELOPE__BODY_WELCOME;
  env.welcome = &w;
  srv_send(c, &env);
  if (srv_id_log_ok(c))
    fl_info("server", "%s ready (%llu samples, client %.64s); %zu clients ready", c->id,
            (unsigned long long)h->num_samples, h->software_version, s->n_ready);
  srv_advance(s);
}

/* A client's Error about a task it was given is its answer to it: the round, the
 * evaluation or the request for initial parameters goes on without it. */
static void on_client_error(client *c, const Fl__Error *e) {
  if (e->code == FL__ERROR_CODE__ERROR_INCOMPATIBLE) {
    exclude(c, e);
    return;
  }
  /* It may not hold the frozen values it said it keeps: its next model goes whole. */
  if (c->model_left_out) c->frozen_held = 0;
  char reason[200]; /* the peer's words, bounded (the log escapes what they hold) */
  snprintf(reason, sizeof reason, "%s", e->reason ? e->reason : "");
  if (srv_client_log_ok(c)) fl_warn("server", "%s reports an error: %s", c->id, reason);
  switch (e->task) {
  case FL__TASK_KIND__TASK_TRAIN: srv_on_train_error(c, e->round, reason); break;
  case FL__TASK_KIND__TASK_EVALUATE: srv_on_eval_error(c, e->round); break;
  case FL__TASK_KIND__TASK_PARAMS:
    if (c == c->srv->init_from) {
      srv_init_failed(c, reason);
      srv_advance(c->srv);
    }
    break;
  default: break;
  }
}

static void on_frame(fl_peer *peer, const uint8_t *payload, size_t len) {
  client *c = fl_peer_data(peer);
  server *s = c->srv;
  s->bytes_in += len + 4;
  if (s->status) srv_status_io(c, len + 4, 0);
  c->heard_ms = uv_now(&s->loop);
  if (c->closing) return;
  Fl__Envelope *env;
  int rc = fl_msg_decode(payload, len, &env);
  if (rc) {
    if (srv_id_log_ok(c))
      fl_warn("server", "%s (%s): undecodable message of %zu bytes: %s", c->id,
              fl_peer_addr(peer), len, fl_strerror(rc));
    srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "undecodable message");
    c->closing = 1;
    fl_peer_close(peer, "undecodable message");
    return;
  }
  if (!c->ready && env->body_case != FL__ENVELOPE__BODY_HELLO &&
      env->body_case != FL__ENVELOPE__BODY_HEARTBEAT) {
    if (srv_id_log_ok(c)) fl_warn("server", "%s: %s before hello", c->id, fl_msg_name(env));
    srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "expected hello first");
    c->closing = 1;
    fl_peer_close(peer, "protocol violation: no hello");
    fl_msg_free(env);
    return;
  }
  switch (env->body_case) {
  case FL__ENVELOPE__BODY_HELLO: on_hello(c, env->hello); break;
  case FL__ENVELOPE__BODY_UPDATE: srv_on_update(c, env->update); break;
  case FL__ENVELOPE__BODY_CHUNK: srv_on_chunk(c, env->chunk); break;
  case FL__ENVELOPE__BODY_EVAL_RESULT: srv_on_eval_result(c, env->eval_result); break;
  case FL__ENVELOPE__BODY_HEARTBEAT: { /* its progress in the current task */
    float p = env->heartbeat->progress;
    if (p >= 0 && p <= 1 && p != c->progress) { /* (NaN is ignored) */
      c->progress = p;
      fl_debug("server", "%s: %.0f%% of its task done", c->id, 100.0 * p);
    }
    break;
  }
  case FL__ENVELOPE__BODY_ERROR: on_client_error(c, env->error); break;
  case FL__ENVELOPE__BODY_PARAMS: srv_on_params(c, env->params); break;
  case FL__ENVELOPE__BODY_SECAGG_KEYS: srv_secagg_on_keys(c, env->secagg_keys); break;
  case FL__ENVELOPE__BODY_SECAGG_SHARES: srv_secagg_on_shares(c, env->secagg_shares); break;
  case FL__ENVELOPE__BODY_SECAGG_REVEAL: srv_secagg_on_reveal(c, env->secagg_reveal); break;
  case FL__ENVELOPE__BODY_DONE:
    if (srv_id_log_ok(c))
      fl_info("server", "%s says goodbye: %.200s", c->id, env->done->reason ? env->done->reason : "");
    c->closing = 1;
    fl_peer_close(peer, "client left");
    break;
  default:
    if (srv_client_log_ok(c)) fl_warn("server", "%s: unexpected %s message", c->id, fl_msg_name(env));
    srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "unexpected message");
    break;
  }
  fl_msg_free(env);
}

static void on_drain(fl_peer *peer) { srv_pump_tx(fl_peer_data(peer)); }

static void on_close(fl_peer *peer, int err, const char *reason) {
  client *c = fl_peer_data(peer);
  server *s = c->srv;
  if ((c->ready || err) && srv_id_log_ok(c))
    FL_LOG(err ? FL_LOG_WARN : FL_LOG_INFO, "server", "%s (%s) disconnected: %s", c->id[0] ? c->id : "?",
           fl_peer_addr(peer), reason ? reason : "closed");
  srv_tx_done(c);
  srv_abort_rx(c);
  srv_secagg_client_gone(c);
  if (srv_selected_now(c) && !c->counted) {
    srv_count_answer(c);
    s->r.dropped++;
    fl_warn("server", "round %llu: %s dropped out", (unsigned long long)s->r.number, c->id);
  }
  if (c->eval_pending && s->ph == PH_FED_EVAL) s->r.fed_answered++;
  srv_init_client_gone(c);
  if (c->ready) s->n_ready--;
  if (c->prev) c->prev->next = c->next;
  else s->clients = c->next;
  if (c->next) c->next->prev = c->prev;
  s->n_clients--;
  free(c);
  if (s->ph == PH_DONE && !s->clients) srv_end_linger(s);
  srv_advance(s);
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
  c->sa_index = -1;
  c->joined_ms = c->heard_ms = uv_now(&s->loop);
  c->last_loss = NAN;
  c->next = s->clients;
  if (s->clients) s->clients->prev = c;
  s->clients = c;
  s->n_clients++;
  fl_peer_set_data(peer, c);
  on_open(peer);
}

const fl_peer_callbacks srv_peer_callbacks = {on_accepted_open, on_frame, on_drain, on_close};
