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
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bigalloc.h"
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

static void on_upload_timer(uv_timer_t *t);

/* The upload timer fires at the earliest deadline of an update under way (it may fire
 * early: the deadlines are checked then).  A scan of every client, so only when it fires
 * or the round closes; a new deadline only brings it forward. */
static void arm_upload_timer(server *s) {
  if (uv_is_closing((uv_handle_t *)&s->upload_timer)) return;
  uint64_t next = UINT64_MAX, now = uv_now(&s->loop);
  for (client *c = s->clients; c; c = c->next)
    if (c->rx == RX_UPDATE && c->rx_deadline < next) next = c->rx_deadline;
  s->upload_due = next;
  if (next == UINT64_MAX) uv_timer_stop(&s->upload_timer);
  else uv_timer_start(&s->upload_timer, on_upload_timer, next > now ? next - now : 0, 0);
}

static void upload_deadline(server *s, uint64_t at) {
  if (uv_is_closing((uv_handle_t *)&s->upload_timer)) return;
  if (uv_is_active((uv_handle_t *)&s->upload_timer) && s->upload_due <= at) return;
  uint64_t now = uv_now(&s->loop);
  s->upload_due = at;
  uv_timer_start(&s->upload_timer, on_upload_timer, at > now ? at - now : 0, 0);
}

static void refuse(client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A client told to send its update did not deliver it in time: its buffer goes to the
 * next in line, and the update is refused (what still comes of it is skipped). */
static void on_upload_timer(uv_timer_t *t) {
  server *s = t->data;
  uint64_t now = uv_now(&s->loop);
  int any = 0;
  for (client *c = s->clients; c; c = c->next) {
    if (c->rx != RX_UPDATE || c->rx_deadline > now) continue;
    size_t got = (size_t)c->rxt.payload;
    srv_abort_rx(c);
    srv_count_answer(c);
    refuse(c, "update not delivered in time after Proceed (%zu of %zu bytes; --upload-grace, "
           "--min-upload-rate)", got, c->data_cap);
    any = 1;
  }
  arm_upload_timer(s);
  if (any) srv_advance(s);
}

/* The client's update may come: it gets buffer buf and a Proceed.  A float32 update
 * is decoded into it; an encoded one is kept as its chunks' records (codec.h), which
 * the fold reads without expanding.  A float32 update of a client that does not speak the
 * server's compressed --uplink needs more than the pool's buffers (sized for that
 * encoding) and gets a buffer of its own for as long as its update lives. */
static void take_update(client *c, float *buf) {
  server *s = c->srv;
  /* A masked input of secure aggregation: ring elements, the model and its extras. */
  fl_codec ring = {FL_ENC_FLOAT32, 0, 0};
  uint64_t total = s->n;
  char why[160];
  int masked = s->sa && srv_secagg_input_ok(c, &ring.enc, &total, why, sizeof why) == 0;
  const fl_codec *enc = masked ? &ring : &c->uplink;
  size_t need = srv_update_room(s, enc, total);
  c->buf = buf;
  c->data = (uint8_t *)buf;
  if (need > s->buf_bytes && !(c->data = fl_alloc_big(need))) {
    fl_error("server", "out of memory for %s's update of %zu bytes", c->id, need);
    c->data = (uint8_t *)buf;
    need = s->buf_bytes; /* it will not fit, and be refused as too large */
  }
  c->data_cap = need;
  c->data_len = 0;
  c->rx = RX_UPDATE;
  /* Its deadline: the grace, and the update's size at the slowest rate allowed. */
  double secs = s->cfg->upload_grace + (double)need / 1024.0 / s->cfg->min_upload_kibps;
  c->rx_deadline = uv_now(&s->loop) + (uint64_t)(secs * 1000.0);
  upload_deadline(s, c->rx_deadline);
  if (enc->enc == FL_ENC_FLOAT32)
    fl_tensor_rx_init(&c->rxt, need >= s->n * sizeof(float) ? (float *)(void *)c->data : NULL, s->n);
  else
    fl_tensor_rx_init_enc(&c->rxt, NULL, total, enc->enc,
                          enc->enc == FL_ENC_TOPK ? fl_codec_topk_count(enc, total) : 0);
  if (c->upd_left_out && !masked) fl_tensor_rx_skip(&c->rxt, &s->frozen_runs);
  send_proceed(c);
}

/* Room for one update of total values in encoding u: float32 values, or the records of
 * the chunks an honest client sends (the largest payload, a record head per chunk of the
 * server's size, and one more). */
size_t srv_update_room(const server *s, const fl_codec *u, uint64_t total) {
  if (u->enc == FL_ENC_FLOAT32) return total * sizeof(float);
  uint64_t payload = fl_codec_max_bytes(u, total), chunk = (uint64_t)s->cfg->chunk_kib * 1024u;
  uint64_t per = u->enc == FL_ENC_TOPK ? chunk / 8 * 8 : chunk; /* payload of a full chunk */
  uint64_t chunks = payload / per + 2;
  return (size_t)(payload + FL_CHUNK_RECORD_HEAD * chunks);
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

/* On the thread pool: each update's norm against the round's bound, then one fold of
 * those within it. */
static void fold_work(uv_work_t *w) {
  fold_job *j = w->data;
  server *s = j->srv;
  size_t n = s->n, m = 0;
  int private = srv_private_round(s);
  j->rc = 0;
  for (size_t i = 0; i < j->k; i++) {
    ready_update *it = &j->items[i];
    fl_update u = {.client = it->client, .weight = it->weight, .enc = it->enc};
    if (it->enc == FL_ENC_FLOAT32) {
      u.delta = (const float *)(const void *)it->data;
      u.buf = (float *)(void *)it->data;
    } else {
      u.data = it->data;
      u.len = it->len;
    }
    if (private) { /* into the round's one sum; the strategy sees only that (private.c) */
      if (!j->rc) j->rc = srv_private_fold(s, it, &u, j->err, sizeof j->err);
      continue;
    }
    if (j->bound > 0) {
      j->norm[i] = fl_update_norm(&u, n);
      if (!(j->norm[i] <= j->bound)) continue; /* refused after the fold */
    }
    j->u[m++] = u;
  }
  if (private) return;
  j->rc = m ? fl_strategy_fold(j->srv->strategy, j->u, m, j->err, sizeof j->err) : 0;
  /* What the strategy kept is no longer the job's to give back. */
  for (size_t i = 0, q = 0; i < j->k && q < m; i++)
    if (j->u[q].client == j->items[i].client) {
      if (j->u[q].enc == FL_ENC_FLOAT32 && !j->u[q].buf) j->items[i].kept = 1;
      q++;
    }
}

/* A buffer for the pool in place of one the strategy kept. */
static float *replacement(server *s) {
  float *b = fl_alloc_big(s->n * sizeof *b);
  if (!b) fl_error("server", "out of memory for an update buffer; %d left", s->n_bufs - 1);
  return b;
}

static void refuse_gone(server *s, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fold_after(uv_work_t *w, int status) {
  fold_job *j = w->data;
  server *s = j->srv;
  (void)status;
  if (j->rc) {
    s->r.fold_failed = 1;
    s->r.strategy_errors++;
    fl_error("server", "round %llu: the strategy could not fold %zu updates: %s; this attempt "
             "cannot be applied", (unsigned long long)s->r.number, j->k, j->err);
  }
  for (size_t i = 0; i < j->k; i++) {
    ready_update *it = &j->items[i];
    int over = j->bound > 0 && !(j->norm[i] <= j->bound);
    if (over) {
      refuse_gone(s, it->client, "update norm %.4g exceeds the bound %.4g (--max-update-norm)",
                  j->norm[i], j->bound);
    } else if (!j->rc) {
      s->r.accepted++;
      s->r.examples = it->examples > UINT64_MAX - s->r.examples ? UINT64_MAX : s->r.examples + it->examples;
      s->r.weight_sum += it->weight;
      if (isfinite(it->loss)) s->r.loss_sum += it->loss * it->weight;
      if (isfinite(it->acc)) s->r.acc_sum += it->acc * it->weight;
      if (isfinite(it->seconds) && it->seconds > s->r.slowest) s->r.slowest = it->seconds;
      srv_participant_add(s, it);
    }
    /* The pool's buffer goes back, or one in its place if the strategy kept it; a buffer
     * of the update's own is freed unless the strategy kept it. */
    float *b = it->buf;
    int own = it->data != (uint8_t *)it->buf;
    if (it->kept) {
      if (!own) b = replacement(s); /* the strategy took the pool's buffer */
    } else if (own) {
      free(it->data);
    }
    if (b) release_buf(s, b);
    else s->n_bufs--;
  }
  s->fold_busy = 0;
  start_fold(s);
  srv_advance(s);
}

/* Folds every complete update that is waiting, in one pass. */
static void start_fold(server *s) {
  if (s->fold_busy || s->n_ready_bufs == 0) return;
  fold_job *j = &s->fold;
  j->k = (size_t)s->n_ready_bufs;
  for (int i = 0; i < s->n_ready_bufs; i++) j->items[i] = s->ready[i];
  s->n_ready_bufs = 0;
  s->fold_busy = 1;
  s->r.fold_passes++;
  j->srv = s;
  j->bound = srv_private_round(s) ? 0 : s->r.norm_bound; /* (a masked norm means nothing;
                                                            * DP clips instead) */
  j->err[0] = 0;
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

/* Counts and logs a refusal of the round's; the client is told when it is still there. */
static void note_refusal(server *s, const char *id, const char *reason, int log) {
  if (log)
    fl_warn("server", "round %llu: refused update from %s: %s", (unsigned long long)s->r.number,
            id, reason);
  s->r.refused++;
  if (s->status) srv_status_refused(s, reason);
  if (s->r.n_refusals < MAX_REFUSALS) {
    refusal *f = &s->r.refusals[s->r.n_refusals++];
    snprintf(f->client, sizeof f->client, "%s", id);
    snprintf(f->reason, sizeof f->reason, "%s", reason);
  }
}

static void refuse(client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refuse(client *c, const char *fmt, ...) {
  char reason[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  note_refusal(c->srv, c->id, reason, srv_client_log_ok(c));
  srv_send_error(c, FL__ERROR_CODE__ERROR_REFUSED, reason);
}

/* A refusal after the update came in whole (its fold), when the client may have left. */
static void refuse_gone(server *s, const char *id, const char *fmt, ...) {
  char reason[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  note_refusal(s, id, reason, 1); /* one a client a round at most: its folded update */
  for (client *c = s->clients; c; c = c->next)
    if (!c->closing && strcmp(c->id, id) == 0) srv_send_error(c, FL__ERROR_CODE__ERROR_REFUSED, reason);
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
  if (srv_cert_expired(c, (int64_t)time(NULL))) return; /* on_close counts it as dropped */
  c->answered = 1;
  if (u->model_id != fl_model_id(s->model) || u->num_params != s->n) {
    srv_count_answer(c);
    refuse(c, "update is for model %016llx with %llu parameters, expected %016llx with %zu",
           (unsigned long long)u->model_id, (unsigned long long)u->num_params,
           (unsigned long long)fl_model_id(s->model), s->n);
    srv_advance(s); /* it may have been the round's last answer */
    return;
  }
  fl_enc want = c->uplink.enc;
  uint64_t dim;
  char why[160];
  if (s->sa && srv_secagg_input_ok(c, &want, &dim, why, sizeof why) != 0) {
    srv_count_answer(c);
    refuse(c, "%s", why);
    srv_advance(s);
    return;
  }
  if (u->num_examples == 0 || (int)u->encoding != (int)want) {
    srv_count_answer(c);
    if (u->num_examples == 0) refuse(c, "update has no examples");
    else refuse(c, "update in encoding %s (%d), but this connection's updates are %s",
                fl_enc_name((int)u->encoding), (int)u->encoding, fl_enc_name(want));
    srv_advance(s);
    return;
  }
  if (u->frozen_left_out && !s->frozen_runs.n) {
    srv_count_answer(c);
    refuse(c, "update leaves out frozen parameters, but this server offered none to leave out%s",
           s->frozen ? " (secure aggregation sums whole deltas)" : "");
    srv_advance(s);
    return;
  }
  if (u->num_examples > c->num_samples) {
    srv_count_answer(c);
    refuse(c, "update claims %llu examples, but the client declared %llu when it joined",
           (unsigned long long)u->num_examples, (unsigned long long)c->num_samples);
    srv_advance(s);
    return;
  }
  c->upd_examples = u->num_examples;
  c->upd_left_out = u->frozen_left_out;
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
    if (c->data != (uint8_t *)b) free(c->data);
    c->buf = NULL;
    c->data = NULL;
    release_buf(c->srv, b);
  }
  if (c->rx == RX_WAIT_BUF) unwait(c->srv, c);
  c->rx = RX_DISCARD;
}

/* Whether ch is the last chunk of the client's update: it reaches the update's end, or
 * the frozen runs its client leaves out at the end. */
static int last_chunk(const client *c, const Fl__TensorChunk *ch) {
  uint64_t count = ch->count ? ch->count : ch->data.len / 4;
  uint64_t end = c->upd_left_out ? fl_runs_end(&c->srv->frozen_runs, ch->total) : ch->total;
  return ch->offset + count >= end;
}

void srv_on_chunk(client *c, const Fl__TensorChunk *ch) {
  server *s = c->srv;
  if (c->rx == RX_DISCARD) {
    if (last_chunk(c, ch)) c->rx = RX_IDLE;
    return;
  }
  if (c->rx == RX_INIT) {
    srv_on_init_chunk(c, ch);
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
  int rc;
  if (c->rxt.dec.enc == FL_ENC_FLOAT32) {
    rc = c->rxt.dst ? fl_tensor_rx_add(&c->rxt, ch, err, sizeof err)
                    : fl_errf(err, sizeof err, FL_ENOMEM, "no room on the server for the update");
  } else { /* kept encoded: the checked chunk's record */
    fl_chunk view;
    rc = fl_tensor_rx_check(&c->rxt, ch, &view, err, sizeof err);
    if (rc >= 0 && c->data_len + fl_chunk_record_size(&view) > c->data_cap)
      rc = fl_errf(err, sizeof err, FL_EPROTO, "update in %s takes more than the %zu bytes its "
                   "encoding needs (chunks smaller than the server's %d KiB?)",
                   fl_enc_name(view.enc), c->data_cap, s->cfg->chunk_kib);
    if (rc >= 0) {
      fl_chunk_record_put(&view, c->data + c->data_len);
      c->data_len += fl_chunk_record_size(&view);
    }
  }
  if (rc < 0) {
    int last = last_chunk(c, ch);
    srv_abort_rx(c);
    srv_count_answer(c);
    refuse(c, "%s", err);
    if (last) c->rx = RX_IDLE;
    srv_advance(s); /* it may have been the round's last answer */
    return;
  }
  if (rc == 0) return;
  /* --freeze: a float32 delta must leave the frozen parameters alone (an encoded one is
   * checked by its encoding's decoder only). */
  if (s->frozen && c->rxt.dec.enc == FL_ENC_FLOAT32 && c->buf) {
    for (size_t i = 0; i < s->n; i++)
      if (s->frozen[i] != 0.0f && c->buf[i] != 0.0f) {
        srv_abort_rx(c);
        srv_count_answer(c);
        refuse(c, "the update changes frozen parameter %zu (--freeze %s)", i, s->cfg->freeze);
        c->rx = RX_IDLE;
        srv_advance(s);
        return;
      }
  }
  /* Complete and finite: fold it, with the weight the policy gives it. */
  ready_update *it = &s->ready[s->n_ready_bufs++];
  double weight = s->uniform_weights ? 1.0 : (double)c->upd_examples;
  if (s->r.weight_cap > 0 && weight > s->r.weight_cap) {
    fl_info("server", "round %llu: %s's weight %.0f capped to %.0f (%s)",
            (unsigned long long)s->r.number, c->id, weight, s->r.weight_cap,
            s->r.weight_cap == s->cfg->max_weight ? "--max-weight" : "--max-weight-share");
    weight = s->r.weight_cap;
    s->r.weights_capped++;
  }
  *it = (ready_update){c->buf, c->data, c->data_len, c->rxt.dec.enc, 0, weight, c->upd_examples,
                       c->upd_loss, c->upd_acc, c->upd_seconds, c->sa_index, ""};
  snprintf(it->client, sizeof it->client, "%s", c->id);
  s->r.update_payload += c->rxt.payload;
  s->r.update_raw += (uint64_t)c->rxt.total * sizeof(float);
  c->buf = NULL;
  c->data = NULL;
  c->rx = RX_IDLE;
  srv_count_answer(c);
  s->r.received++;
  fl_debug("server", "round %llu: update from %s (%llu examples, loss %.4f)",
           (unsigned long long)s->r.number, c->id, (unsigned long long)c->upd_examples,
           c->upd_loss);
  start_fold(s);
  srv_advance(s);
}

static int by_value(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The weight cap: no update weighs more than --max-weight-share times a typical round,
 * the round's target times the median example count its clients declared (a median, so
 * that a client declaring an absurd count cannot raise the cap for itself), nor more than
 * --max-weight examples.  The norm
 * bound: --max-update-norm, absolute or a multiple of the global model's norm. */
void srv_intake_begin(server *s, client *const *selected, size_t k) {
  srv_participants_begin(s, selected, k);
  s->r.weight_cap = 0;
  double share = s->cfg->max_weight_share;
  if (share > 0 && k > 0 && !s->uniform_weights) {
    uint64_t *v = malloc(k * sizeof *v);
    if (v) {
      for (size_t i = 0; i < k; i++) v[i] = selected[i]->num_samples;
      qsort(v, k, sizeof *v, by_value);
      double median = k & 1 ? (double)v[k / 2] : ((double)v[k / 2 - 1] + (double)v[k / 2]) / 2;
      s->r.weight_cap = share * (double)s->r.target * median;
      if (s->r.weight_cap < 1) s->r.weight_cap = 1;
      free(v);
    }
  }
  double most = s->cfg->max_weight;
  if (most > 0 && !s->uniform_weights && (s->r.weight_cap == 0 || most < s->r.weight_cap))
    s->r.weight_cap = most;
  /* A private round's unit weight (DP-FedAvg's cap w^): the median client's examples, so
   * that a typical client weighs about 1 and none more than 1 (the sensitivity the noise
   * and the fixed point are sized for).  Example counts travel in the clear. */
  s->r.unit_weight = 1;
  if (!s->uniform_weights && k > 0) {
    uint64_t *v = malloc(k * sizeof *v);
    if (v) {
      for (size_t i = 0; i < k; i++) v[i] = selected[i]->num_samples;
      qsort(v, k, sizeof *v, by_value);
      s->r.unit_weight = (double)v[k / 2];
      free(v);
    } else {
      for (size_t i = 0; i < k; i++)
        if ((double)selected[i]->num_samples > s->r.unit_weight) s->r.unit_weight = (double)selected[i]->num_samples;
    }
    if (s->r.unit_weight < 1) s->r.unit_weight = 1;
  }
  s->r.norm_bound = s->norm_abs;
  if (s->norm_ratio > 0) {
    double sq = 0;
    for (size_t i = 0; i < s->n; i++) sq += (double)s->global[i] * (double)s->global[i];
    double norm = sqrt(sq);
    s->r.norm_bound = s->norm_ratio * (norm > 1.0 ? norm : 1.0);
  }
}

void srv_close_intake(server *s) {
  /* Those waiting first: a buffer given back below must not reach one of them (it would
   * be told Proceed, then refused). */
  for (client *c = s->clients; c; c = c->next) {
    if (c->rx != RX_WAIT_BUF) continue;
    srv_abort_rx(c);
    refuse(c, "round %llu closed before the update was taken", (unsigned long long)s->r.number);
  }
  for (client *c = s->clients; c; c = c->next) {
    if (c->rx != RX_UPDATE) continue;
    srv_abort_rx(c);
    refuse(c, "round %llu closed while the update was arriving", (unsigned long long)s->r.number);
  }
  arm_upload_timer(s);
}

void srv_on_train_error(client *c, uint64_t round, const char *reason) {
  server *s = c->srv;
  if (!srv_selected_now(c) || round != c->task_round || c->answered || c->counted) return;
  srv_count_answer(c);
  s->r.failed++;
  if (s->r.n_failures < MAX_REFUSALS) {
    refusal *f = &s->r.failures[s->r.n_failures++];
    snprintf(f->client, sizeof f->client, "%s", c->id);
    snprintf(f->reason, sizeof f->reason, "%s", reason);
  }
  fl_warn("server", "round %llu: %s could not train: %s", (unsigned long long)s->r.number, c->id,
          reason);
  srv_advance(s); /* it may have been the round's last answer */
}
