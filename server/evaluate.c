/* fl-server's evaluation of the new global model after a round's aggregation.
 *
 * Server-side: with --test-data, every --eval-every rounds and after the last, the model
 * is evaluated on the test set on libuv's thread pool (PH_EVALUATING).  Federated: every
 * --fed-eval-every rounds and after the last, each ready client is sent an EvalTask with
 * the model and answers with an EvalResult on its own data (PH_FED_EVAL); the phase ends
 * when all asked have answered or gone, or at --fed-eval-timeout (round.c decides).  The
 * results go into the round's statistics. */
#include <math.h>

#include "error.h"
#include "log.h"
#include "server_internal.h"

static void eval_work(uv_work_t *w) {
  server *s = w->data;
  fl_subset all = {&s->test, NULL, s->test.n};
  s->eval_rc = fl_evaluate(s->eval_trainer, s->global, &all, &s->eval_result);
}

/* Federated evaluation, when due: every ready client evaluates the new global model. */
void srv_begin_fed_eval(server *s) {
  s->ph = PH_FED_EVAL;
  s->r.fed_asked = s->r.fed_answered = 0;
  s->r.fed_loss = s->r.fed_acc = s->r.fed_auc = 0;
  s->r.fed_n = s->r.fed_auc_n = s->r.fed_acc_n = 0;
  int due = s->cfg->fed_eval_every > 0 &&
            (s->r.number % (uint64_t)s->cfg->fed_eval_every == 0 ||
             s->r.number == (uint64_t)s->cfg->rounds);
  if (due) {
    srv_downlink_prepare(s); /* the new model, encoded once */
    for (client *c = s->clients; c; c = c->next)
      if (c->ready && !c->closing) srv_send_eval_task(c);
    srv_arm_timer(s, s->cfg->fed_eval_timeout);
  }
  srv_advance(s);
}

static void eval_after(uv_work_t *w, int status) {
  server *s = w->data;
  (void)status;
  if (s->eval_rc == 0) {
    s->r.test_loss = s->eval_result.loss;
    s->r.test_acc = s->eval_result.accuracy;
    s->r.test_auc = s->eval_result.auc;
    s->r.tested = 1;
  } else {
    fl_error("server", "evaluating the global model failed: %s", fl_strerror(s->eval_rc));
  }
  srv_begin_fed_eval(s);
}

void srv_evaluate_test(server *s) {
  s->eval_work.data = s;
  uv_queue_work(&s->loop, &s->eval_work, eval_work, eval_after);
}

void srv_on_eval_result(client *c, const Fl__EvalResult *e) {
  server *s = c->srv;
  if (!c->eval_pending || s->ph != PH_FED_EVAL || e->round != s->r.number) {
    if (srv_client_log_ok(c))
      fl_warn("server", "%s: unexpected evaluation result for round %llu", c->id,
              (unsigned long long)e->round);
    return;
  }
  if (c->tx_active) { /* it cannot have evaluated a model it has not been sent */
    fl_warn("server", "%s (%s): evaluation result for round %llu before the model was "
            "delivered; closing the connection", c->id, fl_peer_addr(c->peer),
            (unsigned long long)e->round);
    srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "evaluation result before the model was delivered");
    srv_tx_done(c);
    c->closing = 1;
    fl_peer_close(c->peer, "protocol violation: evaluation result before the model");
    srv_advance(s); /* on_close counts its answer */
    return;
  }
  c->eval_pending = 0;
  s->r.fed_answered++;
  fl_debug("server", "round %llu: evaluation result from %s", (unsigned long long)s->r.number, c->id);
  const Fl__Metrics *m = e->metrics;
  if (m && m->num_examples > c->num_samples) {
    fl_warn("server", "round %llu: evaluation result of %s left out: %llu examples, but the "
            "client declared %llu when it joined", (unsigned long long)s->r.number, c->id,
            (unsigned long long)m->num_examples, (unsigned long long)c->num_samples);
  } else if (m && m->num_examples > 0 && isfinite(m->loss) && m->loss >= 0 &&
             (isnan(m->accuracy) || (m->accuracy >= 0 && m->accuracy <= 1))) {
    /* Weighted like an update: at most what it declared, and the round's weight cap. */
    double n = (double)m->num_examples;
    if (s->r.weight_cap >= 1 && n > s->r.weight_cap) n = floor(s->r.weight_cap);
    s->r.fed_loss += m->loss * n;
    s->r.fed_n += (uint64_t)n;
    if (!isnan(m->accuracy)) { /* NaN: a model without classes (a regression) */
      s->r.fed_acc += m->accuracy * n;
      s->r.fed_acc_n += (uint64_t)n;
    }
    /* a client's AUC (binary heads; 0 or NaN from one that has none) weighs as its
     * examples do */
    if (isfinite(m->auc) && m->auc > 0 && m->auc <= 1) {
      s->r.fed_auc += m->auc * n;
      s->r.fed_auc_n += (uint64_t)n;
    }
  } else if (m && m->num_examples > 0) {
    fl_warn("server", "round %llu: evaluation result of %s left out: loss %g, accuracy %g",
            (unsigned long long)s->r.number, c->id, m->loss, m->accuracy);
  }
  srv_advance(s);
}

void srv_on_eval_error(client *c, uint64_t round) {
  server *s = c->srv;
  if (!c->eval_pending || s->ph != PH_FED_EVAL || round != s->r.number) return;
  c->eval_pending = 0;
  s->r.fed_answered++;
  srv_advance(s);
}
