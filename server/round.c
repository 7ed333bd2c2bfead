/* The round state machine of fl-server.
 *
 * One libuv loop runs the rounds; I/O threads serve the connections (iothreads.h) and
 * bring every event to it.  A round goes WAITING (enough clients?) ->
 * TRAINING (tasks out, updates in, each update folded on the thread pool as soon as it
 * is complete) -> AGGREGATING (folds and sends drain, then the strategy applies the
 * aggregate) -> EVALUATING (server-side test data, on the thread pool) -> FED_EVAL
 * (clients evaluate) -> the metrics line, and the next round.  Every event that can move
 * a round on calls srv_advance(), the one place that decides what happens next.  This
 * file also starts the rounds (selection), runs the round timer, takes the signals and
 * says goodbye at the end. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"
#include "select.h"
#include "server_internal.h"

/* How long clients get to read Done and hang up before the server closes on them. */
#define LINGER_MS 5000
/* How long a stop (SIGTERM, SIGINT) may take before the process exits regardless. */
#define STOP_DEADLINE_MS 30000

static uint64_t now_ms(server *s) { return uv_now(&s->loop); }

/* Picks the round's clients at random from those ready (select.h: in id order, so that
 * the same seed picks the same clients whatever order they connected in). */
static void start_round(server *s) {
  srv_downlink_prepare(s); /* a failure is logged; clients then get float32 */
  client **ready = malloc(s->n_ready * sizeof *ready), **sel = malloc(s->n_ready * sizeof *sel);
  const char **ids = malloc(s->n_ready * sizeof *ids);
  size_t *chosen = malloc(s->n_ready * sizeof *chosen);
  if (!ready || !sel || !ids || !chosen) {
    fl_error("server", "out of memory selecting clients");
    goto done;
  }
  size_t m = 0;
  for (client *c = s->clients; c; c = c->next)
    if (c->ready && !c->closing) {
      ids[m] = c->id;
      ready[m++] = c;
    }
  size_t target = fl_select_target(s->cfg->clients_per_round, m);
  /* Differential privacy samples each client independently (what its accountant assumes). */
  size_t k = s->dp ? srv_privacy_select(s, m, chosen)
                   : fl_select_clients(ids, m, target, s->cfg->over_select, &s->rng, chosen);
  if (s->dp) target = k;
  if (k > s->max_selected) { /* a strategy that holds every update: the memory limit */
    fl_warn("server", "round %llu: selecting %zu clients, not %zu: strategy '%s' holds every "
            "update and --strategy-memory allows %zu", (unsigned long long)s->r.number,
            s->max_selected, k, s->cfg->strategy, s->max_selected);
    k = s->max_selected;
  }
  if (target > k) target = k;
  if (!s->r.timing) {
    s->r.t0 = now_ms(s);
    s->r.timing = 1;
  }
  s->r.attempt++;
  s->r.selected = k;
  s->r.target = target;
  s->r.answered = s->r.accepted = s->r.refused = s->r.dropped = s->r.received = 0;
  s->r.examples = 0;
  s->r.loss_sum = s->r.acc_sum = s->r.weight_sum = 0;
  s->r.slowest = 0;
  s->r.n_refusals = 0;
  s->r.failed = s->r.n_failures = 0;
  s->r.timed_out = 0;
  s->r.fold_passes = 0;
  s->r.fold_failed = s->r.abandoned = 0;
  s->r.weights_capped = 0;
  s->r.delta_norm = 0;
  fl_strategy_begin(s->strategy);
  for (size_t i = 0; i < k; i++) sel[i] = ready[chosen[i]];
  srv_intake_begin(s, sel, k);
  if (s->dp) srv_privacy_begin(s, ready, m, k);
  s->ph = PH_TRAINING;
  fl_info("server", "round %llu/%d: %zu of %zu ready clients selected%s%s",
          (unsigned long long)s->r.number, s->cfg->rounds, k, m,
          k > target ? " (over-selected)" : "", s->r.attempt > 1 ? " (retry)" : "");
  if (!s->dp && s->cfg->clients_per_round >= 1 && (double)target < s->cfg->clients_per_round &&
      !s->warned_few) {
    s->warned_few = 1; /* once a run: the start-up warning said why */
    fl_warn("server", "round %llu: %zu clients selected, fewer than --clients-per-round %g: "
            "only %zu are ready, and --min-clients %d lets a round start with them",
            (unsigned long long)s->r.number, k, s->cfg->clients_per_round, m,
            s->cfg->min_clients);
  }
  for (size_t i = 0; i < k; i++) {
    client *c = sel[i];
    c->task_round = s->r.number;
    c->task_attempt = s->r.attempt;
    c->answered = 0;
    c->counted = 0;
  }
  srv_arm_timer(s, s->cfg->round_timeout);
  /* Secure aggregation: each client's setup goes before its task (sel is then in id order). */
  char why[256];
  if (s->cfg->secagg && srv_secagg_begin(s, sel, k, why, sizeof why) != 0) {
    srv_secagg_end(s);
    fl_error("server", "round %llu: %s", (unsigned long long)s->r.number, why);
    s->r.abandoned = 1;
    s->ph = PH_AGGREGATING;
    srv_advance(s); /* the attempt fails */
    goto done;
  }
  for (size_t i = 0; i < k; i++) srv_send_train_task(sel[i]);
done:
  free(ready);
  free(sel);
  free(ids);
  free(chosen);
}

static void on_timer(uv_timer_t *t) {
  server *s = t->data;
  s->r.timed_out = 1;
  srv_advance(s);
}

void srv_arm_timer(server *s, double seconds) {
  s->r.timed_out = 0;
  uv_timer_start(&s->timer, on_timer, (uint64_t)(seconds * 1000.0 + 0.5), 0);
}

/* Ends the collection of updates: updates still arriving or waiting for a buffer are
 * refused (chunks already on their way are skipped).  Models still being sent finish
 * before the global model changes: aggregation waits for sends_pending, until the round's
 * deadline, when the clients that have not taken their model yet are dropped. */
static void close_collection(server *s) {
  if (!s->sends_pending) uv_timer_stop(&s->timer); /* else the round's deadline still holds
                                                   * for the models being sent */
  srv_close_intake(s);
}

void srv_begin_round_number(server *s, uint64_t number) {
  srv_client_logs_said(s); /* what the last round's budgets left out */
  s->r.number = number;
  s->r.attempt = 0;
  s->r.tested = 0;
  s->r.strategy_errors = 0;
  s->r.update_payload = s->r.update_raw = s->r.model_payload = s->r.model_raw = 0;
  s->r.bytes_in0 = s->bytes_in;
  s->r.bytes_out0 = s->bytes_out;
  s->r.cpu0 = srv_cpu_seconds();
  s->r.timing = 0; /* the wait for enough clients is not the round's time */
  s->ph = PH_WAITING;
}

/* The end of the goodbye: every connection still open is closed, and the timer with it,
 * so the loop ends once the connections are gone. */
void srv_end_linger(server *s) {
  if (s->lingered) return;
  s->lingered = 1;
  for (client *c = s->clients; c; c = c->next) fl_peer_close(c->peer, "server closing");
  uv_close((uv_handle_t *)&s->timer, NULL);
  uv_close((uv_handle_t *)&s->sa_timer, NULL);
  uv_close((uv_handle_t *)&s->upload_timer, NULL);
}

static void on_linger(uv_timer_t *t) { srv_end_linger(t->data); }

static void send_done(client *c, const char *reason, uint32_t reconnect_ms) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Done d = FL__DONE__INIT;
  d.reason = (char *)reason;
  d.reconnect_after_ms = reconnect_ms;
  d.rounds = c->srv->model_version;
  env.body_case = FL__ENVELOPE__BODY_DONE;
  env.done = &d;
  srv_send(c, &env);
}

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
  uv_close((uv_handle_t *)&s->sighup, NULL);
  if (s->clients) uv_timer_start(&s->timer, on_linger, LINGER_MS, 0);
  else srv_end_linger(s);
}

void srv_finish_run(server *s, const char *why) {
  srv_save_final_model(s);
  close_all(s, why, 0);
}

/* A signal: the round in flight is abandoned; the checkpoint of the last completed round
 * is what a restart with --resume continues from; clients are told to come back. */
static void stop_run(server *s) {
  if (srv_have_checkpoint(s))
    fl_info("server", "stopped after %llu completed rounds; checkpoint %s (restart with --resume)",
            (unsigned long long)s->model_version, s->checkpoint);
  else
    fl_info("server", "stopped before any round completed: no checkpoint was written (a "
            "restart begins the run again)");
  close_all(s, "server restarting", 2000);
}

/* The attempt cannot be applied (too few updates, timed out, the strategy failed): a new
 * selection, or after --max-attempts a wait for new clients. */
static void attempt_failed(server *s, const char *why) {
  srv_secagg_end(s);
  if (s->stopping) {
    stop_run(s);
    return;
  }
  if (s->r.attempt >= (uint64_t)s->cfg->max_attempts) {
    fl_warn("server", "round %llu: %llu attempts failed (the last: %s); waiting for new clients",
            (unsigned long long)s->r.number, (unsigned long long)s->r.attempt, why);
    s->waiting_for_more = 1;
    s->ready_seen = s->ready_events;
    s->r.attempt = 0;
  } else {
    fl_warn("server", "round %llu: %s; retrying with a new selection",
            (unsigned long long)s->r.number, why);
  }
  s->ph = PH_WAITING;
  srv_advance(s);
}

/* The updates an attempt needs to be applied. */
static size_t updates_needed(const server *s) {
  size_t need = (size_t)s->cfg->min_updates, strat = fl_strategy_min_updates(s->strategy);
  return need > strat ? need : strat;
}

static void apply_work(uv_work_t *w) {
  apply_job *j = w->data;
  server *s = j->srv;
  j->rc = fl_strategy_finish(s->strategy, s->global, &j->delta_norm, j->err, sizeof j->err);
}

static void apply_after(uv_work_t *w, int status) {
  apply_job *j = w->data;
  server *s = j->srv;
  (void)status;
  srv_secagg_end(s);
  if (j->rc) {
    s->r.strategy_errors++;
    fl_error("server", "round %llu: the strategy could not apply the aggregate: %s; the global "
             "model is unchanged", (unsigned long long)s->r.number, j->err);
    attempt_failed(s, "the aggregate was not applied");
    return;
  }
  s->r.delta_norm = j->delta_norm;
  s->model_version++;
  if (s->frozen_ref)
    for (size_t i = 0; i < s->n; i++)
      if (s->frozen[i] != 0.0f) s->global[i] = s->frozen_ref[i];
  if (s->dp) {
    double server_eps;
    s->r.epsilon = srv_privacy_epsilon(s, &server_eps);
    fl_info("server", "round %llu: epsilon %.4g at delta %g%s", (unsigned long long)s->r.number,
            s->r.epsilon, s->cfg->dp_delta, "");
    if (isfinite(server_eps))
      fl_info("server", "round %llu: against the server itself (it knows who was sampled) "
              "epsilon %.4g", (unsigned long long)s->r.number, server_eps);
  }
  if (s->have_test && (s->r.number % (uint64_t)s->cfg->eval_every == 0 ||
                       s->r.number == (uint64_t)s->cfg->rounds)) {
    s->ph = PH_EVALUATING;
    srv_evaluate_test(s); /* on the thread pool; federated evaluation follows */
    return;
  }
  srv_begin_fed_eval(s);
}

static void start_apply(server *s) {
  s->ph = PH_APPLYING;
  s->apply.srv = s;
  s->apply.work.data = &s->apply;
  s->apply.err[0] = 0;
  uv_queue_work(&s->loop, &s->apply.work, apply_work, apply_after);
}

/* Decides what happens next; called after every event that can move a round on. */
void srv_advance(server *s) {
  switch (s->ph) {
  case PH_WAITING:
    if (s->stopping) {
      stop_run(s);
      return;
    }
    if (s->need_init) { /* an external model's initial parameters, from a client */
      srv_ask_init(s);
      return;
    }
    if (s->waiting_for_more && s->ready_events == s->ready_seen) return;
    if (srv_clients_available(s) >= (size_t)s->cfg->min_clients) {
      s->waiting_for_more = 0;
      if (!srv_standardize_ready(s)) return;
      if (s->r.attempt == 0 && !srv_privacy_allows_round(s, s->n_ready)) {
        srv_finish_run(s, "privacy budget reached");
        return;
      }
      start_round(s);
    }
    return;
  case PH_TRAINING: {
    char why[300];
    int st = srv_secagg_step(s, why, sizeof why);
    if (st < 0) { /* too few clients left for secure aggregation */
      close_collection(s);
      fl_warn("server", "round %llu: %s", (unsigned long long)s->r.number, why);
      s->r.abandoned = 1;
      s->ph = PH_AGGREGATING;
    } else if (st > 0 && !s->r.timed_out && !s->stopping) {
      return;
    } else if (s->r.answered >= s->r.selected ||
        (s->r.selected > s->r.target && s->r.received >= s->r.target)) {
      if (s->r.answered < s->r.selected)
        fl_info("server", "round %llu: %zu updates in; closing the round without the %zu slowest clients",
                (unsigned long long)s->r.number, s->r.received, s->r.selected - s->r.answered);
      close_collection(s);
      s->ph = PH_AGGREGATING;
    } else if (s->r.timed_out || s->stopping) {
      close_collection(s);
      if (s->r.received >= updates_needed(s) && !s->stopping)
        fl_warn("server", "round %llu: timed out with %zu of %zu updates; aggregating those",
                (unsigned long long)s->r.number, s->r.received, s->r.selected);
      else
        s->r.abandoned = 1; /* nothing folded this attempt is applied */
      s->ph = PH_AGGREGATING;
    } else {
      return;
    }
  }
    /* fall through */
  case PH_AGGREGATING: {
    if (s->sends_pending) {
      if (!s->r.timed_out && !s->stopping) return;
      srv_drop_streams(s, s->stopping ? "the server is stopping"
                                      : "did not take the model before the round's deadline (--round-timeout)");
    }
    if (!srv_folds_idle(s)) return;
    uv_timer_stop(&s->timer);
    char why[160];
    if (s->r.fold_failed) {
      attempt_failed(s, "the strategy could not fold its updates");
      return;
    }
    if (s->r.abandoned || s->r.accepted < updates_needed(s)) {
      snprintf(why, sizeof why, "%zu of %zu selected clients sent an update that was accepted (%zu needed)",
               s->r.accepted, s->r.selected, updates_needed(s));
      attempt_failed(s, why);
      return;
    }
    if (s->sa) { /* the survivors reveal, then the sum is unmasked */
      if (srv_secagg_unmask_begin(s, why, sizeof why) != 0) {
        attempt_failed(s, why);
        return;
      }
      s->ph = PH_UNMASKING;
      srv_advance(s);
      return;
    }
    if (srv_private_round(s)) {
      srv_private_start(s, start_apply, attempt_failed);
      return;
    }
    /* The aggregate is applied off the loop: median and Krum take a while. */
    start_apply(s);
    return;
  }
  case PH_UNMASKING:
    if (srv_secagg_unmask_waiting(s) && !s->stopping) return;
    if (s->stopping) {
      attempt_failed(s, "stopping");
      return;
    }
    s->r.sa_revealed = srv_secagg_revealed(s);
    srv_private_start(s, start_apply, attempt_failed);
    return;
  case PH_SUMMING:
  case PH_APPLYING:
  case PH_EVALUATING:
    return;
  case PH_FED_EVAL:
    if ((s->r.fed_answered < s->r.fed_asked || s->sends_pending) && !s->r.timed_out && !s->stopping)
      return;
    uv_timer_stop(&s->timer);
    /* No evaluation model stream outlives the phase: the next round's tasks would
     * start a second stream for the same client. */
    if (s->sends_pending)
      srv_drop_streams(s, s->stopping ? "the server is stopping"
                                      : "did not take the evaluation model in time (--fed-eval-timeout)");
    for (client *c = s->clients; c; c = c->next) c->eval_pending = 0;
    srv_write_metrics(s, (double)(now_ms(s) - s->r.t0) / 1000.0);
    srv_keep_best(s);
    srv_save_checkpoint(s);
    if (s->r.number >= (uint64_t)s->cfg->rounds) {
      srv_finish_run(s, "training complete");
      return;
    }
    if (s->stopping) {
      stop_run(s);
      return;
    }
    srv_begin_round_number(s, s->r.number + 1);
    srv_advance(s);
    return;
  case PH_DONE:
    return;
  }
}

/* The stop took longer than any step may: the process ends anyway. */
static void on_stop_deadline(uv_timer_t *t) {
  server *s = t->data;
  fl_error("server", "still not stopped %d s after the signal (phase %d); exiting now",
           STOP_DEADLINE_MS / 1000, (int)s->ph);
  _exit(1);
}

void srv_on_signal(uv_signal_t *h, int signum) {
  server *s = h->data;
  if (s->stopping) {
    fl_warn("server", "%s again: exiting now", signum == SIGINT ? "SIGINT" : "SIGTERM");
    _exit(1);
  }
  fl_warn("server", "%s: stopping after the current step", signum == SIGINT ? "SIGINT" : "SIGTERM");
  s->stopping = 1;
  /* The current step (a fold, the strategy's finish, the goodbye) is bounded, but the
   * process must end whatever a client does: a deadline that does not keep the loop up. */
  uv_timer_init(&s->loop, &s->stop_timer);
  s->stop_timer.data = s;
  uv_timer_start(&s->stop_timer, on_stop_deadline, STOP_DEADLINE_MS, 0);
  uv_unref((uv_handle_t *)&s->stop_timer);
  s->stop_timer_on = 1;
  alarm(STOP_DEADLINE_MS / 1000 + 10); /* and should the loop itself be stuck */
  srv_advance(s);
}
