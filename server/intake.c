/* fl-server's update intake: which updates are taken, where they go, when they are folded.
 *
 * An Update header is checked first (round, selection, model, examples, encoding) and
 * refused with a reason the round's metrics list.  Memory does not grow with the clients
 * per round: --update-buffers update buffers (one model size each, two by default) are
 * all there is for incoming updates.  A client's Update is answered with Proceed once a
 * buffer is free; until then the client waits in line and sends nothing, so clients that
 * finish together cost no memory while they queue.  A complete update goes to the
 * strategy's fold on libuv's thread pool; updates that complete while a fold runs are
 * folded together in the next pass, and each buffer goes back to the first client in
 * line when its fold is over. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "error.h"
#include "log.h"
#include "server_internal.h"

static void send_proceed(client *c) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Proceed p = FL__PROCEED__INIT;
  p.round = c->task_round;
  env.body_case = FL__ENVELOPE__BODY_PROCEED;
  env.proceed = &p;
  srv_send(c, &env);
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

static void start_fold(server *s);

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
  srv_advance(s);
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

int srv_folds_idle(const server *s) { return !s->fold_busy && s->n_ready_bufs == 0; }

int srv_selected_now(const client *c) {
  const server *s = c->srv;
  return s->ph == PH_TRAINING && c->task_round == s->r.number && c->task_attempt == s->r.attempt;
}

/* The round waits for every selected client's answer: a complete update, a refused one,
 * or the client gone. */
void srv_count_answer(client *c) {
  if (c->counted || !srv_selected_now(c)) return;
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
  srv_send_error(c, FL__ERROR_CODE__ERROR_REFUSED, reason);
}

/* An Update header.  Refused, it leaves the client's state alone (an update it is still
 * sending goes on); accepted, the client is given a buffer and Proceed, or waits. */
void srv_on_update(client *c, const Fl__Update *u) {
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
  if (!srv_selected_now(c)) {
    refuse(c, "client was not selected for round %llu", (unsigned long long)s->r.number);
    return;
  }
  if (c->answered) {
    refuse(c, "second update for round %llu", (unsigned long long)s->r.number);
    return;
  }
  c->answered = 1;
  if (u->model_id != fl_model_id(s->model) || u->num_params != s->n) {
    srv_count_answer(c);
    refuse(c, "update is for model %016llx with %llu parameters, expected %016llx with %zu",
           (unsigned long long)u->model_id, (unsigned long long)u->num_params,
           (unsigned long long)fl_model_id(s->model), s->n);
    srv_advance(s); /* it may have been the round's last answer */
    return;
  }
  if (u->num_examples == 0 || u->encoding != FL__ENCODING__ENCODING_FLOAT32) {
    srv_count_answer(c);
    refuse(c, u->num_examples == 0 ? "update has no examples" : "unsupported update encoding %d",
           (int)u->encoding);
    srv_advance(s);
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

void srv_abort_rx(client *c) {
  if (c->rx == RX_UPDATE && c->buf) {
    float *b = c->buf;
    c->buf = NULL;
    release_buf(c->srv, b);
  }
  if (c->rx == RX_WAIT_BUF) unwait(c->srv, c);
  c->rx = RX_DISCARD;
}

void srv_on_chunk(client *c, const Fl__TensorChunk *ch) {
  server *s = c->srv;
  if (c->rx == RX_DISCARD) {
    uint64_t count = ch->data.len / 4;
    if (ch->offset + count >= ch->total) c->rx = RX_IDLE;
    return;
  }
  if (c->rx != RX_UPDATE) {
    const char *why = c->rx == RX_WAIT_BUF ? "tensor chunk before Proceed"
                                           : "tensor chunk without an update";
    fl_warn("server", "%s (%s): %s", c->id, fl_peer_addr(c->peer), why);
    srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, why);
    srv_abort_rx(c);
    fl_peer_close(c->peer, "protocol violation");
    c->closing = 1;
    return;
  }
  char err[160];
  int rc = fl_tensor_rx_add(&c->rxt, ch, err, sizeof err);
  if (rc < 0) {
    int last = ch->offset + ch->data.len / 4 >= ch->total;
    srv_abort_rx(c);
    srv_count_answer(c);
    refuse(c, "%s", err);
    if (last) c->rx = RX_IDLE;
    srv_advance(s); /* it may have been the round's last answer */
    return;
  }
  if (rc == 0) return;
  /* Complete and finite: fold it. */
  s->ready[s->n_ready_bufs] = c->buf;
  s->ready_w[s->n_ready_bufs++] = (double)c->upd_examples;
  c->buf = NULL;
  c->rx = RX_IDLE;
  srv_count_answer(c);
  s->r.accepted++;
  s->r.examples += c->upd_examples;
  if (isfinite(c->upd_loss)) s->r.loss_sum += c->upd_loss * (double)c->upd_examples;
  if (isfinite(c->upd_acc)) s->r.acc_sum += c->upd_acc * (double)c->upd_examples;
  if (isfinite(c->upd_seconds) && c->upd_seconds > s->r.slowest) s->r.slowest = c->upd_seconds;
  fl_debug("server", "round %llu: update from %s (%llu examples, loss %.4f)",
           (unsigned long long)s->r.number, c->id, (unsigned long long)c->upd_examples,
           c->upd_loss);
  start_fold(s);
  srv_advance(s);
}

void srv_close_intake(server *s) {
  for (client *c = s->clients; c; c = c->next) {
    if (c->rx != RX_UPDATE && c->rx != RX_WAIT_BUF) continue;
    int arriving = c->rx == RX_UPDATE;
    srv_abort_rx(c);
    refuse(c, "round %llu closed %s", (unsigned long long)s->r.number,
           arriving ? "while the update was arriving" : "before the update was taken");
  }
}
