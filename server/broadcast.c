/* fl-server's model broadcast: tasks out, and the global model streamed after them.
 *
 * A TrainTask or EvalTask is followed by the global model as TensorChunk frames.  At most
 * STREAMS_PER_THREAD clients per I/O thread are sent the model at once (each holds up to
 * a chunk of it, encrypted, until the client has read it); the others wait their turn in
 * the server's tx queue, first come first.  A stream produces chunks while less than the
 * connection's high water waits to be written and continues on drain; it keeps its turn
 * until all of it is written, so a client that reads slowly holds one stream's worth of
 * the server's memory.  The global model does not change while streams are pending:
 * aggregation waits for sends_pending to reach 0.  A client that offered the compressed
 * --downlink is sent the frames encoded once for everyone (downlink.c); the others the
 * global model as float32, which downlink.c made equal to what the frames decode to. */
#include <stdlib.h>

#include "error.h"
#include "log.h"
#include "server_internal.h"

/* Gives free stream slots to the clients queued for one.  Not re-entered: a stream that
 * ends inside srv_pump_tx below leaves its slot to this loop. */
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
    srv_pump_tx(c);
  }
  s->starting_streams = 0;
}

void srv_tx_done(client *c) {
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
void srv_pump_tx(client *c) {
  while (c->tx_active && !c->tx_queued && fl_peer_queued(c->peer) < c->srv->copt.high_water) {
    uint8_t *buf = NULL;
    size_t len;
    int rc;
    if (c->stream_cached) { /* the frames encoded once for every client (downlink.c) */
      if (c->model_left_out) c->frame_next = srv_downlink_skip_runs(c->srv, c->frame_next);
      const uint8_t *f = srv_downlink_frame(c->srv, c->frame_next, &len);
      rc = f != NULL;
      if (f) {
        c->frame_next++;
        c->srv->r.model_payload += len; /* frame bytes, as below */
        rc = fl_peer_send(c->peer, f, len);
        if (rc == 0) srv_count_sent(c, len + 4);
        if (rc) {
          srv_tx_done(c);
          return;
        }
        continue;
      }
    } else {
      rc = fl_tensor_tx_next(&c->tx, &buf, &len);
      if (rc == 1) c->srv->r.model_payload += len;
    }
    if (rc < 0) {
      fl_error("server", "%s: encoding a model chunk failed: %s", c->id, fl_strerror(rc));
      srv_tx_done(c);
      fl_peer_close(c->peer, "internal error");
      return;
    }
    if (rc == 0) {
      /* All queued; the stream keeps its slot until all is written (on_drain at 0), so
       * a client that reads slowly holds the server's memory for one stream, not more. */
      if (fl_peer_queued(c->peer) > 0) return;
      srv_tx_done(c);
      srv_advance(c->srv);
      return;
    }
    rc = fl_peer_send(c->peer, buf, len);
    if (rc == 0) srv_count_sent(c, len + 4);
    free(buf);
    if (rc) {
      srv_tx_done(c);
      return;
    }
  }
}

/* The deadline of the phase that sent the models has passed: every client still being
 * sent its model, or waiting for its turn, has not taken it in time.  It is closed (the
 * global model may change once no stream reads it, and a half-sent model cannot be
 * taken back); it may connect again. */
void srv_drop_streams(server *s, const char *why) {
  int starting = s->starting_streams;
  s->starting_streams = 1; /* the slots freed below go to no one: all of them are dropped */
  for (client *c = s->clients; c; c = c->next) {
    if (!c->tx_active) continue;
    fl_warn("server", "round %llu: %s dropped: %s", (unsigned long long)s->r.number, c->id, why);
    if (c->task_round == s->r.number && c->task_attempt == s->r.attempt && !c->counted) {
      c->counted = 1;
      s->r.dropped++;
    }
    srv_tx_done(c);
    srv_abort_rx(c);
    c->eval_pending = 0;
    if (!c->closing) {
      c->closing = 1;
      fl_peer_close(c->peer, why);
    }
  }
  s->starting_streams = starting;
}

/* Whether c is sent the frames of the compressed downlink: it offered the encoding, and
 * the frames of this model version are there (encoding them may have failed). */
static int cached_now(const client *c) {
  const server *s = c->srv;
  return c->down_cached && s->down_valid && s->down_version == s->model_version;
}

static Fl__Encoding model_encoding(const client *c) {
  return cached_now(c) ? (Fl__Encoding)c->srv->downlink.enc : FL__ENCODING__ENCODING_FLOAT32;
}

/* Whether c's next model leaves out the frozen runs: it keeps the values the clients are
 * sent there (it said so in its Hello, or was sent a whole model on this connection), and
 * something is left of the model without them (in the encoded frames, a frame outside the
 * runs: a model wholly frozen goes whole). */
static int leaves_frozen_out(const client *c) {
  const server *s = c->srv;
  return s->frozen_id && c->frozen_held == s->frozen_id && (!cached_now(c) || s->down_out);
}

static void start_tx(client *c) {
  server *s = c->srv;
  if (c->tx_active) { /* never two streams for one client: the counters and the queue
                       * would count it twice (the phases end streams before new ones) */
    fl_error("server", "%s: a model stream is still under way; closing the connection", c->id);
    srv_tx_done(c);
    c->closing = 1;
    fl_peer_close(c->peer, "model stream still under way");
    return;
  }
  s->r.model_raw += (uint64_t)s->n * 4;
  c->stream_cached = cached_now(c);
  c->frame_next = 0;
  fl_tensor_tx_init(&c->tx, s->global, s->n, (uint32_t)s->cfg->chunk_kib * 1024u);
  if (c->model_left_out)
    fl_tensor_tx_skip(&c->tx, &s->frozen_runs);
  else if (c->keeps_frozen && s->frozen_id)
    c->frozen_held = s->frozen_id; /* it keeps them from this whole model */
  c->tx_active = 1;
  c->tx_queued = 1;
  s->sends_pending++;
  if (s->tx_queue_tail) s->tx_queue_tail->tx_next = c;
  else s->tx_queue = c;
  s->tx_queue_tail = c;
  start_streams(s);
}

void srv_send_train_task(client *c) {
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
  tc.freeze = cfg->freeze ? cfg->freeze : (char *)"";
  tc.n_frozen_runs = 2 * s->frozen_runs.n; /* the client may leave them out of its delta */
  tc.frozen_runs = s->frozen_at;
  t.round = s->r.number;
  t.model_version = s->model_version;
  t.model_id = fl_model_id(s->model);
  t.model_spec = (char *)fl_model_spec(s->model);
  t.num_params = s->n;
  t.config = &tc;
  t.encoding = model_encoding(c);
  t.n_feature_mean = t.n_feature_std = s->tf_dim;
  t.feature_mean = s->tf_mean;
  t.feature_std = s->tf_std;
  t.frozen_id = s->frozen_id;
  t.model_frozen_left_out = c->model_left_out = leaves_frozen_out(c);
  env.body_case = FL__ENVELOPE__BODY_TRAIN_TASK;
  env.train_task = &t;
  if (srv_send(c, &env) == 0) start_tx(c);
}

void srv_send_eval_task(client *c) {
  server *s = c->srv;
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__EvalTask t = FL__EVAL_TASK__INIT;
  t.round = s->r.number;
  t.model_version = s->model_version;
  t.model_id = fl_model_id(s->model);
  t.num_params = s->n;
  t.encoding = model_encoding(c);
  t.n_feature_mean = t.n_feature_std = s->tf_dim;
  t.feature_mean = s->tf_mean;
  t.feature_std = s->tf_std;
  t.frozen_id = s->frozen_id;
  t.model_frozen_left_out = c->model_left_out = leaves_frozen_out(c);
  env.body_case = FL__ENVELOPE__BODY_EVAL_TASK;
  env.eval_task = &t;
  if (srv_send(c, &env) == 0) {
    fl_debug("server", "round %llu: %s evaluates the model", (unsigned long long)s->r.number, c->id);
    c->eval_pending = 1;
    s->r.fed_asked++;
    start_tx(c);
  }
}
