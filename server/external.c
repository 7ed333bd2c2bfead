/* The model clients declare, and an external model's initial parameters.
 *
 * A client may declare the model it trains (libflclient: an external model by name and
 * size, "external:NAME:N", or a training-core spec) in its Hello; one that declares
 * another model than the server's is refused with ERROR_MODEL, and so is one that
 * declares none when the server trains an external model, which only the clients' own
 * code can train.
 *
 * An external model without --init-model or a checkpoint takes its initial parameters
 * from a client, as Flower does: the server asks one that lists the "params" capability
 * (the smallest id among those ready), takes its Params straight into the global model
 * (each value checked finite), and asks the next one if that client refuses, sends
 * something else, leaves, or stays silent for --round-timeout.  No round starts before
 * (round.c waits while s->need_init).  A client never asked, or no longer asked, cannot
 * write into the global model: its chunks are skipped. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "server_internal.h"

int srv_model_disagrees(const server *s, const Fl__Hello *h, char *why, size_t len) {
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

void srv_ask_init(server *s) {
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
  if (srv_send(pick, &env) != 0) return;
  fl_info("server", "asking %s for the initial parameters of %s", pick->id, fl_model_spec(s->model));
  s->init_from = pick;
  s->init_waiting_logged = 0;
  srv_arm_timer(s, s->cfg->round_timeout);
}

void srv_init_failed(client *c, const char *why) {
  server *s = c->srv;
  fl_warn("server", "initial parameters from %s refused: %s", c->id, why);
  c->no_params = 1;
  if (c->rx == RX_INIT) c->rx = RX_DISCARD;
  if (s->init_from == c) {
    s->init_from = NULL;
    uv_timer_stop(&s->timer);
  }
}

void srv_init_client_gone(client *c) {
  server *s = c->srv;
  if (s->init_from != c) return;
  s->init_from = NULL;
  uv_timer_stop(&s->timer);
}

void srv_on_params(client *c, const Fl__Params *p) {
  server *s = c->srv;
  if (c != s->init_from || c->rx != RX_IDLE) {
    fl_warn("server", "%s (%s): parameters nobody asked for", c->id, fl_peer_addr(c->peer));
    srv_send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, "parameters nobody asked for");
    c->closing = 1;
    fl_peer_close(c->peer, "protocol violation");
    return;
  }
  if (p->model_id != fl_model_id(s->model) || p->num_params != s->n ||
      p->encoding != FL__ENCODING__ENCODING_FLOAT32) {
    char why[200];
    snprintf(why, sizeof why, "parameters of model %016llx (%llu values, encoding %d), expected %016llx (%zu, float32)",
             (unsigned long long)p->model_id, (unsigned long long)p->num_params, (int)p->encoding,
             (unsigned long long)fl_model_id(s->model), s->n);
    srv_send_error(c, FL__ERROR_CODE__ERROR_REFUSED, why);
    srv_init_failed(c, why);
    c->rx = RX_DISCARD;
    srv_advance(s);
    return;
  }
  c->rx = RX_INIT;
  fl_tensor_rx_init(&c->rxt, s->global, s->n);
}

void srv_on_init_chunk(client *c, const Fl__TensorChunk *ch) {
  server *s = c->srv;
  int last = ch->offset + ch->data.len / 4 >= ch->total;
  if (c != s->init_from || !s->need_init) { /* never written over the model once it is in */
    c->rx = last ? RX_IDLE : RX_DISCARD;
    return;
  }
  char err[160];
  int rc = fl_tensor_rx_add(&c->rxt, ch, err, sizeof err);
  if (rc < 0) {
    srv_send_error(c, FL__ERROR_CODE__ERROR_REFUSED, err);
    srv_init_failed(c, err);
    c->rx = last ? RX_IDLE : RX_DISCARD;
    srv_advance(s);
    return;
  }
  if (rc == 0) return;
  c->rx = RX_IDLE;
  s->need_init = 0;
  s->init_from = NULL;
  uv_timer_stop(&s->timer);
  fl_info("server", "initial model from %s (%zu parameters)", c->id, s->n);
  srv_advance(s);
}
