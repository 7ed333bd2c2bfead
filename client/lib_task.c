/* libflclient: tasks, from the server's request to the client's answer.
 *
 * A TrainTask or EvalTask announces a model that follows in chunks; once it is complete
 * the task goes to the application (dispatch): on a thread of its own (WORKER threading)
 * or on the loop (LOOP).  One task at a time: a task that completes its model while
 * another is in the application's hands waits (queued), and the one in hand is told it
 * is no longer wanted, since the server has moved on.  The application's answer comes
 * back through flc__complete, from whatever thread, to the loop (the client's async),
 * where it becomes an Update (whose delta waits for Proceed), an EvalResult, Params, or
 * an Error telling the server why there is no answer.
 *
 * A task owns its buffers: the global model as received and the parameters being
 * trained (the delta once training is over; the global model is freed then), so a
 * connection that drops while the application trains does not pull memory from under
 * it, and an answer waiting for Proceed holds one model size. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "lib_internal.h"

static const char *task_what(int kind) {
  return kind == FL_CLIENT_TASK_FIT ? "training"
         : kind == FL_CLIENT_TASK_EVALUATE ? "evaluation" : "initial parameters";
}

static Fl__TaskKind wire_kind(int kind) {
  return kind == FL_CLIENT_TASK_FIT ? FL__TASK_KIND__TASK_TRAIN
         : kind == FL_CLIENT_TASK_EVALUATE ? FL__TASK_KIND__TASK_EVALUATE
                                           : FL__TASK_KIND__TASK_PARAMS;
}

void flc__task_free(fl_client_task *t) {
  if (t) free(t->ring);
  if (!t) return;
  if (t->params != t->global) free(t->params);
  free(t->global);
  for (size_t i = 0; i < t->n_extra; i++) free(t->extra[i].key);
  free(t->extra);
  free(t->model);
  free(t->fmean);
  free(t->freeze);
  free(t->frozen_at);
  free(t);
}

/* The server's feature standardisation into the task: 0, or -1 with the reason in why
 * (lengths that differ, a value that is not finite, a deviation that is not positive). */
static int take_transform(fl_client_task *t, size_t n_mean, const float *mean, size_t n_std,
                          const float *std, char *why, size_t whylen) {
  if (!n_mean && !n_std) return 0;
  if (n_mean != n_std) {
    snprintf(why, whylen, "feature standardisation with %zu means and %zu deviations", n_mean,
             n_std);
    return -1;
  }
  for (size_t j = 0; j < n_mean; j++)
    if (!isfinite(mean[j]) || !isfinite(std[j]) || !(std[j] > 0)) {
      snprintf(why, whylen, "feature standardisation: feature %zu has mean %g and deviation %g",
               j, (double)mean[j], (double)std[j]);
      return -1;
    }
  if (!(t->fmean = malloc(sizeof(float) * 2 * n_mean))) {
    snprintf(why, whylen, "out of memory");
    return -1;
  }
  t->fstd = t->fmean + n_mean;
  memcpy(t->fmean, mean, sizeof(float) * n_mean);
  memcpy(t->fstd, std, sizeof(float) * n_mean);
  t->fdim = n_mean;
  return 0;
}

size_t fl_client_task_feature_transform(const fl_client_task *t, const float **mean,
                                        const float **std) {
  *mean = t->fmean;
  *std = t->fstd;
  return t->fdim;
}

static fl_client_task *task_new(fl_client *c, int kind, uint64_t round, uint64_t model_id,
                                uint64_t n, const char *model) {
  fl_client_task *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  size_t bytes = (size_t)(n ? n : 1) * sizeof(float);
  if (kind != FLC__TASK_PARAMS) t->global = malloc(bytes);
  t->params = kind == FL_CLIENT_TASK_EVALUATE ? t->global : malloc(bytes);
  t->model = strdup(model ? model : "");
  if ((kind != FLC__TASK_PARAMS && !t->global) || !t->params || !t->model) {
    flc__task_free(t);
    return NULL;
  }
  t->c = c;
  t->kind = kind;
  t->round = round;
  t->model_id = model_id;
  t->n = n;
  t->cfg.round = round;
  t->cfg.optimizer = t->optimizer;
  t->cfg.freeze = "";
  t->metrics.loss = t->metrics.accuracy = t->metrics.auc = t->metrics.seconds = NAN;
  atomic_init(&t->cancelled, 0);
  return t;
}

/* The chunks of a tensor this client does not take are skipped up to its end. */
static void discard_from(fl_client *c, uint64_t offset, uint64_t total) {
  c->discarding = offset < total;
  c->discard_total = total;
}

__attribute__((format(printf, 5, 6)))
static void refuse_task(fl_client *c, int kind, uint64_t round, uint64_t total,
                        const char *fmt, ...) {
  char reason[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  flc__log(c, FL_CLIENT_LOG_ERROR, "round %" PRIu64 ": cannot take the %s task: %s", round,
           task_what(kind), reason);
  flc__send_error(c, FL__ERROR_CODE__ERROR_REFUSED, reason, round, wire_kind(kind));
  discard_from(c, 0, total);
}

/* A task must be for the model this client declared, or, without a declaration, for
 * the server's.  0, or a reason in why. */
static int check_model(fl_client *c, uint64_t model_id, uint64_t n, char *why, size_t len) {
  if (c->model_spec && (model_id != c->model_id || n != c->num_params)) {
    snprintf(why, len, "the task is for model %016" PRIx64 " with %" PRIu64 " parameters, but "
             "this client declares '%s' (%016" PRIx64 ", %" PRIu64 " parameters)", model_id, n,
             c->model_spec, c->model_id, c->num_params);
    return -1;
  }
  if (!c->model_spec && (n == 0 || n > FLC__MAX_PARAMS)) {
    snprintf(why, len, "a model of %" PRIu64 " parameters (this client takes 1 to %" PRIu64 ")",
             n, FLC__MAX_PARAMS);
    return -1;
  }
  return 0;
}

/* The frozen runs the server lets the delta leave out, checked: runs that are not the
 * model's are left unused (the delta goes whole, which every server takes). */
static void take_frozen_runs(fl_client *c, fl_client_task *t, const Fl__TrainConfig *k) {
  char why[160];
  if (!k->n_frozen_runs) return;
  if (fl_runs_check(k->frozen_runs, k->n_frozen_runs, t->n, why, sizeof why) != 0) {
    flc__log(c, FL_CLIENT_LOG_WARN, "round %" PRIu64 ": the server's frozen runs are not the "
             "model's (%s); the update will be sent whole", t->round, why);
    return;
  }
  if (!(t->frozen_at = malloc(k->n_frozen_runs * sizeof *t->frozen_at))) return;
  memcpy(t->frozen_at, k->frozen_runs, k->n_frozen_runs * sizeof *t->frozen_at);
  t->frozen = (fl_runs){t->frozen_at, k->n_frozen_runs / 2};
}

/* A task whose model leaves out the frozen runs: the runs this client keeps for its
 * frozen_id, or NULL when it keeps none that fit a model of n parameters.  Then it has
 * nothing to fill them with, and cannot tell where the model's chunks end: it says so and
 * connects again, and its new Hello tells the server what it keeps (a server sends such a
 * model only to a client that said it keeps them). */
static const fl_runs *left_out_runs(fl_client *c, int kind, uint64_t round, uint64_t id,
                                    uint64_t n) {
  const fl_runs *r = flc__frozen_runs(c, id);
  char why[160];
  if (r && fl_runs_check(r->at, 2 * r->n, n, why, sizeof why) == 0) return r;
  snprintf(why, sizeof why, "the model leaves out frozen parameters (id %016" PRIx64 ") that "
           "this client does not keep", id);
  flc__log(c, FL_CLIENT_LOG_ERROR, "round %" PRIu64 ": cannot take the %s task: %s; "
           "reconnecting", round, task_what(kind), why);
  flc__send_error(c, FL__ERROR_CODE__ERROR_REFUSED, why, round, wire_kind(kind));
  fl_conn_close(c->conn, "model without the frozen parameters this client keeps");
  return NULL;
}

/* A new task's model is about to arrive; an unfinished earlier one is dropped.  With
 * left_out, its chunks leave those runs out, and they hold the values the client keeps. */
static void begin_receive(fl_client *c, fl_client_task *t, int encoding, const fl_runs *left_out) {
  if (c->rx) {
    flc__log(c, FL_CLIENT_LOG_WARN,
             "new task for round %" PRIu64 " before the last one's model arrived; dropping that one",
             t->round);
    flc__task_free(c->rx);
  }
  /* The model in the encoding the task names (the server sends compressed models to a
   * client that offered the encoding); an unknown one fails on the first chunk. */
  fl_tensor_rx_init_enc(&t->rx, t->global, t->n,
                        encoding >= 0 && encoding < FL_ENC_COUNT ? (fl_enc)encoding : FL_ENC_FLOAT32, 0);
  if (left_out) {
    fl_tensor_rx_skip(&t->rx, left_out);
    flc__frozen_fill(c, t->global);
    t->model_left_out = 1;
  }
  c->rx = t;
}

void flc__on_train_task(fl_client *c, const Fl__TrainTask *m) {
  char why[400];
  c->discarding = 0;
  const fl_runs *left_out = NULL;
  if (m->model_frozen_left_out &&
      !(left_out = left_out_runs(c, FL_CLIENT_TASK_FIT, m->round, m->frozen_id, m->num_params)))
    return;
  /* where its model's chunks end, for a refusal to skip them */
  const uint64_t end = left_out ? fl_runs_end(left_out, m->num_params) : m->num_params;
  if (check_model(c, m->model_id, m->num_params, why, sizeof why) != 0) {
    refuse_task(c, FL_CLIENT_TASK_FIT, m->round, end, "%s", why);
    return;
  }
  if (m->model_spec && m->model_spec[0] &&
      (!c->server_spec || strcmp(c->server_spec, m->model_spec) != 0)) {
    char *spec = strdup(m->model_spec);
    if (spec) {
      free(c->server_spec);
      c->server_spec = spec;
      c->server_model_id = m->model_id;
      c->server_num_params = m->num_params;
    }
  }
  fl_client_task *t = task_new(c, FL_CLIENT_TASK_FIT, m->round, m->model_id, m->num_params,
                               c->model_spec ? c->model_spec : c->server_spec);
  if (t && m->config) {
    const Fl__TrainConfig *k = m->config;
    t->cfg.epochs = k->epochs;
    t->cfg.batch_size = k->batch_size;
    t->cfg.lr = k->lr;
    snprintf(t->optimizer, sizeof t->optimizer, "%s", k->optimizer ? k->optimizer : "");
    if ((t->freeze = strdup(k->freeze ? k->freeze : ""))) t->cfg.freeze = t->freeze;
    take_frozen_runs(c, t, k);
    t->cfg.momentum = k->momentum;
    t->cfg.weight_decay = k->weight_decay;
    t->cfg.prox_mu = k->prox_mu;
    t->cfg.clip_norm = k->clip_norm;
    t->cfg.seed = k->seed;
    if (k->n_extra) {
      t->extra = calloc(k->n_extra, sizeof *t->extra);
      for (size_t i = 0; t->extra && i < k->n_extra; i++) {
        if (!(t->extra[i].key = strdup(k->extra[i]->key ? k->extra[i]->key : ""))) break;
        t->extra[i].value = k->extra[i]->value;
        t->n_extra++;
      }
      if (t->n_extra < k->n_extra) {
        flc__task_free(t);
        t = NULL;
      }
    }
  }
  if (!t) {
    refuse_task(c, FL_CLIENT_TASK_FIT, m->round, end,
                "out of memory for a model of %" PRIu64 " parameters", m->num_params);
    return;
  }
  if (take_transform(t, m->n_feature_mean, m->feature_mean, m->n_feature_std, m->feature_std,
                     why, sizeof why) != 0) {
    flc__task_free(t);
    refuse_task(c, FL_CLIENT_TASK_FIT, m->round, end, "%s", why);
    return;
  }
  t->frozen_id = m->frozen_id;
  begin_receive(c, t, (int)m->encoding, left_out);
  flc__log(c, FL_CLIENT_LOG_DEBUG, "round %" PRIu64 ": training task received", m->round);
}

void flc__on_eval_task(fl_client *c, const Fl__EvalTask *m) {
  char why[400];
  c->discarding = 0;
  const fl_runs *left_out = NULL;
  if (m->model_frozen_left_out &&
      !(left_out = left_out_runs(c, FL_CLIENT_TASK_EVALUATE, m->round, m->frozen_id,
                                 m->num_params)))
    return;
  const uint64_t end = left_out ? fl_runs_end(left_out, m->num_params) : m->num_params;
  if (!c->evaluate) {
    refuse_task(c, FL_CLIENT_TASK_EVALUATE, m->round, end,
                "this client does not evaluate (no evaluate callback)");
    return;
  }
  if (check_model(c, m->model_id, m->num_params, why, sizeof why) != 0) {
    refuse_task(c, FL_CLIENT_TASK_EVALUATE, m->round, end, "%s", why);
    return;
  }
  if (!c->model_spec && c->server_spec &&
      (m->model_id != c->server_model_id || m->num_params != c->server_num_params)) {
    refuse_task(c, FL_CLIENT_TASK_EVALUATE, m->round, end,
                "evaluation of model %016" PRIx64 " (%" PRIu64 " parameters), but the server's "
                "model is '%s' (%016" PRIx64 ")", m->model_id, m->num_params, c->server_spec,
                c->server_model_id);
    return;
  }
  fl_client_task *t = task_new(c, FL_CLIENT_TASK_EVALUATE, m->round, m->model_id,
                               m->num_params, c->model_spec ? c->model_spec : c->server_spec);
  if (!t) {
    refuse_task(c, FL_CLIENT_TASK_EVALUATE, m->round, end, "out of memory");
    return;
  }
  if (take_transform(t, m->n_feature_mean, m->feature_mean, m->n_feature_std, m->feature_std,
                     why, sizeof why) != 0) {
    flc__task_free(t);
    refuse_task(c, FL_CLIENT_TASK_EVALUATE, m->round, end, "%s", why);
    return;
  }
  begin_receive(c, t, (int)m->encoding, left_out);
}

static void submit(fl_client *c, fl_client_task *t);

void flc__on_params_request(fl_client *c, const Fl__ParamsRequest *m) {
  const char *why = !c->model_spec ? "this client declares no model"
                    : !c->get_params ? "this client has no get_params callback"
                    : m->model_id != c->model_id || m->num_params != c->num_params
                        ? "the request is for another model than this client declares"
                        : NULL;
  if (why) {
    flc__log(c, FL_CLIENT_LOG_WARN, "cannot give the initial parameters: %s", why);
    flc__send_error(c, FL__ERROR_CODE__ERROR_REFUSED, why, 0, FL__TASK_KIND__TASK_PARAMS);
    return;
  }
  fl_client_task *t = task_new(c, FLC__TASK_PARAMS, 0, c->model_id, c->num_params, c->model_spec);
  if (!t) {
    flc__send_error(c, FL__ERROR_CODE__ERROR_CANNOT_TRAIN, "out of memory", 0,
                    FL__TASK_KIND__TASK_PARAMS);
    return;
  }
  flc__log(c, FL_CLIENT_LOG_INFO, "the server asks for the initial parameters");
  submit(c, t);
}

void flc__on_chunk(fl_client *c, const Fl__TensorChunk *ch) {
  if (c->discarding) {
    if (ch->offset + ch->data.len / 4 >= c->discard_total) c->discarding = 0;
    return;
  }
  fl_client_task *t = c->rx;
  if (!t) {
    flc__log(c, FL_CLIENT_LOG_WARN, "tensor chunk without a task; ignored");
    return;
  }
  char err[200];
  int rc = fl_tensor_rx_add(&t->rx, ch, err, sizeof err);
  if (rc < 0) {
    flc__log(c, FL_CLIENT_LOG_ERROR, "round %" PRIu64 ": bad model from the server: %s",
             t->round, err);
    flc__send_error(c, FL__ERROR_CODE__ERROR_PROTOCOL, err, t->round, wire_kind(t->kind));
    c->rx = NULL;
    discard_from(c, ch->offset + ch->data.len / 4, fl_runs_end(&t->rx.dec.skip, t->n));
    flc__task_free(t);
    return;
  }
  if (rc == 0) return;
  c->rx = NULL;
  if (c->log && c->log_level <= FL_CLIENT_LOG_DEBUG) /* the server logs the same for its copy */
    flc__log(c, FL_CLIENT_LOG_DEBUG, "round %" PRIu64 ": model in, %s, crc32 of its float32 "
             "values %08lx", t->round, fl_enc_name((int)t->rx.dec.enc),
             crc32_z(0, (const Bytef *)t->global, t->n * sizeof *t->global));
  /* a whole model's frozen values, kept for the models after it */
  if (t->kind == FL_CLIENT_TASK_FIT && !t->model_left_out && t->frozen.n)
    flc__frozen_keep(c, t->frozen_id, &t->frozen, t->global);
  if (t->params != t->global) memcpy(t->params, t->global, t->n * sizeof *t->params);
  submit(c, t);
}

/* ---- the application ---- */

/* A callback's result as a status: 0, or a negative code with a reason. */
static int normalize(fl_client_task *t, int rc, const char *what) {
  if (rc == 0) return 0;
  if (rc > 0) {
    snprintf(t->reason, sizeof t->reason,
             "%s returned %d, which is neither 0, FL_CLIENT_PENDING nor an error code", what, rc);
    return FL_CLIENT_ECALLBACK;
  }
  if (!t->reason[0])
    snprintf(t->reason, sizeof t->reason, "%s failed: %s (%d)", what, fl_client_strerror(rc), rc);
  return rc;
}

/* After a fit that succeeded, the application's own model gives the trained weights. */
static int after_app(fl_client_task *t, int rc) {
  fl_client *c = t->c;
  if (rc == 0 && t->kind == FL_CLIENT_TASK_FIT && c->set_params)
    rc = normalize(t, c->get_params(c, t->params, t->n), "get_params");
  return rc;
}

/* Any thread: the task's result goes to the loop.  t is the loop's from here on. */
static void complete(fl_client_task *t, int status) {
  fl_client *c = t->c;
  t->seconds = (double)(uv_hrtime() - t->t0) * 1e-9;
  t->status = status;
  atomic_store(&c->progress, 1000000u);
  pthread_mutex_lock(&c->mu);
  t->next = c->done;
  c->done = t;
  uv_async_send(&c->async); /* open: the client does not finish while it holds a task */
  pthread_mutex_unlock(&c->mu);
}

static int call_app(fl_client_task *t) {
  fl_client *c = t->c;
  if (t->kind == FLC__TASK_PARAMS) return normalize(t, c->get_params(c, t->params, t->n), "get_params");
  int rc;
  if (c->set_params && (rc = normalize(t, c->set_params(c, t->global, t->n), "set_params")) != 0)
    return rc;
  int fit = t->kind == FL_CLIENT_TASK_FIT;
  rc = fit ? c->fit(c, t) : c->evaluate(c, t);
  if (rc == FL_CLIENT_PENDING) return rc;
  return after_app(t, normalize(t, rc, fit ? "fit" : "evaluate"));
}

static void *task_thread(void *arg) {
  fl_client_task *t = arg;
  int rc = call_app(t);
  if (rc != FL_CLIENT_PENDING) complete(t, rc);
  return NULL;
}

static void dispatch(fl_client *c, fl_client_task *t) {
  c->active = t;
  t->t0 = uv_hrtime();
  atomic_store(&c->progress, 0);
  if (c->threading == FL_CLIENT_THREAD_WORKER) {
    if (pthread_create(&t->thread, NULL, task_thread, t) == 0) {
      t->threaded = 1;
      return;
    }
    complete(t, fl_client_task_error(t, FL_CLIENT_ENOMEM, "cannot start a thread for the task"));
    return;
  }
  int rc = call_app(t);
  if (rc != FL_CLIENT_PENDING) complete(t, rc);
}

/* One task in the application's hands at a time. */
static void submit(fl_client *c, fl_client_task *t) {
  t->gen = c->gen;
  if (!c->active) {
    dispatch(c, t);
    return;
  }
  atomic_store(&c->active->cancelled, 1);
  if (c->queued) {
    flc__log(c, FL_CLIENT_LOG_DEBUG, "round %" PRIu64 ": %s task superseded before it started",
             c->queued->round, task_what(c->queued->kind));
    flc__task_free(c->queued);
  }
  c->queued = t;
  flc__log(c, FL_CLIENT_LOG_DEBUG,
           "round %" PRIu64 ": %s task waits for the round %" PRIu64 " task to return", t->round,
           task_what(t->kind), c->active->round);
}

void fl_client_task_done(fl_client_task *t, int status) {
  if (!t) return;
  if (status == FL_CLIENT_PENDING) status = FL_CLIENT_EINVAL; /* not a result */
  complete(t, after_app(t, normalize(t, status, t->kind == FL_CLIENT_TASK_FIT ? "fit" : "evaluate")));
}

/* ---- the answer ---- */

/* Sends the Error that tells the server this task has no answer. */
__attribute__((format(printf, 3, 4)))
static void fail_task(fl_client *c, fl_client_task *t, const char *fmt, ...) {
  char reason[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  flc__log(c, FL_CLIENT_LOG_ERROR, "round %" PRIu64 ": %s failed: %s", t->round,
           task_what(t->kind), reason);
  flc__send_error(c, FL__ERROR_CODE__ERROR_CANNOT_TRAIN, reason, t->round, wire_kind(t->kind));
}

static Fl__Metrics metrics_of(const fl_client_task *t) {
  Fl__Metrics m = FL__METRICS__INIT;
  m.loss = t->metrics.loss;
  m.accuracy = t->metrics.accuracy;
  m.auc = t->metrics.auc;
  m.num_examples = t->metrics.num_examples;
  m.seconds = isfinite(t->metrics.seconds) ? t->metrics.seconds : t->seconds;
  return m;
}

/* The trained weights become the delta; 0, or the index of a value that is not finite. */
static int make_delta(fl_client_task *t, uint64_t *bad) {
  for (uint64_t i = 0; i < t->n; i++) {
    float d = t->params[i] - t->global[i];
    if (!isfinite(t->params[i]) || !isfinite(d)) {
      *bad = i;
      return -1;
    }
    t->params[i] = d;
  }
  free(t->global);
  t->global = NULL;
  return 0;
}

static int all_finite(const float *v, uint64_t n, uint64_t *bad) {
  for (uint64_t i = 0; i < n; i++)
    if (!isfinite(v[i])) {
      *bad = i;
      return 0;
    }
  return 1;
}

/* Error feedback (Seide et al. 2014; Karimireddy et al. 2019): a lossy update first takes
 * back what earlier ones left out, and what it leaves out in turn is kept for the next.
 * The residual is the client's, across rounds and reconnections (a model of another size
 * starts it over).  Encoding is deterministic for the seed, so the dry run here leaves
 * out exactly what the stream will. */
static int feed_back(fl_client *c, fl_client_task *t, uint64_t seed, const fl_runs *skip) {
  if (c->uplink.enc == FL_ENC_FLOAT32 || c->uplink.enc == FL_ENC_FLOAT16) return 0;
  if (c->residual_n != t->n) {
    free(c->residual);
    c->residual = calloc(t->n ? t->n : 1, sizeof *c->residual);
    c->residual_n = c->residual ? t->n : 0;
    if (!c->residual) return FL_CLIENT_ENOMEM;
  }
  for (uint64_t i = 0; i < t->n; i++) t->params[i] += c->residual[i];
  fl_encoder e;
  uint8_t *buf = malloc(c->chunk_bytes < 8 ? 8 : c->chunk_bytes);
  int rc = buf ? fl_encoder_init(&e, &c->uplink, t->params, t->n, c->chunk_bytes, seed) : FL_ENOMEM;
  fl_chunk ch;
  if (rc == 0) { /* the server sees 0 where no chunk goes */
    if (skip) fl_encoder_skip(&e, skip);
    memset(c->residual, 0, t->n * sizeof *c->residual);
  }
  while (rc == 0 && (rc = fl_encoder_next(&e, &ch, buf)) == 1) {
    fl_chunk_decode(&ch, c->residual); /* what the server will see ... */
    rc = 0;
  }
  free(buf);
  if (rc < 0) return FL_CLIENT_ENOMEM;
  for (uint64_t i = 0; i < t->n; i++) c->residual[i] = t->params[i] - c->residual[i]; /* ... and not */
  return 0;
}

/* Streams t's tensor (its tx set up) once the server takes it. */
static void stream(fl_client *c, fl_client_task *t, int go) {
  flc__task_free(c->tx); /* an older answer still waiting or streaming is superseded */
  c->tx = t;
  t->go = go;
  flc__pump(c);
}

/* The seed of an update's stochastic rounding: its round and the client's name. */
static uint64_t update_seed(const fl_client *c, const fl_client_task *t) {
  uint64_t h = 1469598103934665603ULL;
  for (const char *p = c->name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ULL;
  return fl_seed_mix(h, t->round);
}

static void answer(fl_client *c, fl_client_task *t) {
  /* A fit overtaken by a newer task that still succeeded is sent all the same: the
   * server refuses it if its round is over, and counts it (a straggler) either way.
   * Anything else cancelled, or meant for a connection that is gone, is dropped. */
  int cancelled = atomic_load(&t->cancelled);
  int wanted = t->gen == c->gen && c->conn && c->state == FLC_READY &&
               (!cancelled || (t->kind == FL_CLIENT_TASK_FIT && t->status == 0));
  if (!wanted) {
    flc__log(c, FL_CLIENT_LOG_DEBUG, "round %" PRIu64 ": the %s result is no longer wanted",
             t->round, task_what(t->kind));
    flc__task_free(t);
    return;
  }
  if (t->status == FL_CLIENT_EINCOMPATIBLE) {
    const char *why = t->reason[0] ? t->reason : fl_client_strerror(t->status);
    flc__errf(c, FL_CLIENT_EINCOMPATIBLE, "cannot train the server's model: %s", why);
    flc__log(c, FL_CLIENT_LOG_WARN, "round %" PRIu64 ": cannot train the server's model; "
             "telling the server and stopping", t->round);
    flc__send_error(c, FL__ERROR_CODE__ERROR_INCOMPATIBLE, why, t->round, wire_kind(t->kind));
    flc__task_free(t);
    flc__finish(c, FL_CLIENT_EINCOMPATIBLE);
    return;
  }
  if (t->status != 0) {
    fail_task(c, t, "%s", t->reason[0] ? t->reason : fl_client_strerror(t->status));
    flc__task_free(t);
    return;
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Metrics m = metrics_of(t);
  uint64_t bad;
  if (t->kind == FL_CLIENT_TASK_EVALUATE) {
    Fl__EvalResult r = FL__EVAL_RESULT__INIT;
    r.round = t->round;
    r.metrics = &m;
    env.body_case = FL__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &r;
    flc__log(c, FL_CLIENT_LOG_DEBUG, "round %" PRIu64 ": evaluated %" PRIu64 " examples, accuracy %.4f",
             t->round, t->metrics.num_examples, t->metrics.accuracy);
    flc__send(c, &env);
    flc__task_free(t);
    return;
  }
  if (t->kind == FLC__TASK_PARAMS) {
    if (!all_finite(t->params, t->n, &bad)) {
      fail_task(c, t, "get_params gave a value that is NaN or infinite (index %" PRIu64 ")", bad);
      flc__task_free(t);
      return;
    }
    Fl__Params p = FL__PARAMS__INIT;
    p.model_id = t->model_id;
    p.num_params = t->n;
    p.encoding = FL__ENCODING__ENCODING_FLOAT32;
    env.body_case = FL__ENVELOPE__BODY_PARAMS;
    env.params = &p;
    if (flc__send(c, &env) != 0) {
      flc__task_free(t);
      return;
    }
    flc__log(c, FL_CLIENT_LOG_INFO, "sending the initial parameters (%" PRIu64 " values)", t->n);
    fl_tensor_tx_init(&t->tx, t->params, t->n, c->chunk_bytes);
    stream(c, t, 1);
    return;
  }
  if (t->metrics.num_examples == 0 || t->metrics.num_examples > c->num_examples) {
    if (t->metrics.num_examples == 0)
      fail_task(c, t, "fit reported no examples (set fl_client_metrics.num_examples)");
    else
      fail_task(c, t, "fit reported %" PRIu64 " examples, more than the %" PRIu64 " announced "
                "when joining (fl_client_set_num_examples)", t->metrics.num_examples,
                c->num_examples);
    flc__task_free(t);
    return;
  }
  if (make_delta(t, &bad) != 0) {
    fail_task(c, t, "trained parameter %" PRIu64 " is NaN or infinite", bad);
    flc__task_free(t);
    return;
  }
  /* A round aggregated securely: the secure aggregation masks and sends it (when the
   * shares it needs are in). */
  if (flc__secagg_take(c, t)) return;
  /* The delta in this connection's encoding, with error feedback when it is lossy, and
   * without the frozen parameters when the server offered and the delta leaves them at
   * 0 (one that moves them goes whole, and the server refuses it by name). */
  const fl_runs *skip = t->frozen.n && fl_runs_zero(&t->frozen, t->params) ? &t->frozen : NULL;
  if (t->frozen.n && !skip)
    flc__log(c, FL_CLIENT_LOG_WARN, "round %" PRIu64 ": the update changes frozen parameters "
             "(--freeze %s); sending it whole", t->round, t->freeze ? t->freeze : "");
  uint64_t seed = update_seed(c, t);
  if (feed_back(c, t, seed, skip) != 0 ||
      fl_tensor_tx_init_codec(&t->tx, &c->uplink, t->params, t->n, c->chunk_bytes, seed) != 0) {
    fail_task(c, t, "out of memory for encoding the update");
    flc__task_free(t);
    return;
  }
  if (skip) fl_tensor_tx_skip(&t->tx, skip);
  flc__send_update(c, t, c->uplink.enc);
}

void flc__send_update(fl_client *c, fl_client_task *t, fl_enc enc) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Metrics m = metrics_of(t);
  Fl__Update u = FL__UPDATE__INIT;
  u.round = t->round;
  u.model_id = t->model_id;
  u.num_params = t->n;
  u.num_examples = t->metrics.num_examples;
  u.metrics = &m;
  u.encoding = (Fl__Encoding)enc;
  u.frozen_left_out = t->tx.enc.skip.n > 0;
  env.body_case = FL__ENVELOPE__BODY_UPDATE;
  env.update = &u;
  flc__log(c, FL_CLIENT_LOG_INFO,
           "round %" PRIu64 ": trained on %" PRIu64 " examples in %.2f s, loss %.4f, accuracy %.4f",
           t->round, t->metrics.num_examples, m.seconds, t->metrics.loss, t->metrics.accuracy);
  if (flc__send(c, &env) != 0) {
    flc__task_free(t);
    return;
  }
  stream(c, t, 0);
}

void flc__on_completed(fl_client *c, fl_client_task *list) {
  fl_client_task *rev = NULL;
  while (list) { /* oldest first */
    fl_client_task *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  while (rev) {
    fl_client_task *t = rev;
    rev = rev->next;
    if (t->threaded) pthread_join(t->thread, NULL);
    if (c->active == t) c->active = NULL;
    answer(c, t);
  }
  if (!c->active && c->queued) {
    fl_client_task *t = c->queued;
    c->queued = NULL;
    dispatch(c, t);
  }
}

void flc__drop_tasks(fl_client *c) {
  if (c->active) atomic_store(&c->active->cancelled, 1);
  flc__task_free(c->rx);
  flc__task_free(c->queued);
  flc__task_free(c->tx);
  c->rx = c->queued = c->tx = NULL;
  c->discarding = 0;
  flc__secagg_reset(c); /* a round's secure aggregation does not outlive its connection */
}

void flc__pump(fl_client *c) {
  while (c->tx && c->tx->go && c->conn && fl_conn_queued(c->conn) < c->copt.high_water) {
    uint8_t *buf;
    size_t len;
    int rc = fl_tensor_tx_next(&c->tx->tx, &buf, &len);
    if (rc > 0) {
      rc = fl_conn_send(c->conn, buf, len);
      free(buf);
      if (rc == 0) continue;
    } else if (rc < 0) {
      flc__log(c, FL_CLIENT_LOG_ERROR, "encoding the %s failed: %s", task_what(c->tx->kind),
               fl_strerror(rc));
    }
    flc__task_free(c->tx); /* sent, or the connection is gone */
    c->tx = NULL;
  }
}

void flc__on_proceed(fl_client *c, const Fl__Proceed *p) {
  if (!c->tx || c->tx->go || c->tx->kind != FL_CLIENT_TASK_FIT || c->tx->round != p->round) {
    flc__log(c, FL_CLIENT_LOG_WARN,
             "server says proceed for round %" PRIu64 ", but no update of that round waits", p->round);
    return;
  }
  c->tx->go = 1;
  flc__pump(c);
}

/* ---- accessors ---- */

int fl_client_task_kind(const fl_client_task *t) { return t->kind; }
fl_client *fl_client_task_client(const fl_client_task *t) { return t->c; }
const fl_client_fit_config *fl_client_task_config(const fl_client_task *t) { return &t->cfg; }
uint64_t fl_client_task_num_params(const fl_client_task *t) { return t->n; }
const char *fl_client_task_model(const fl_client_task *t) { return t->model; }
float *fl_client_task_params(fl_client_task *t) { return t->params; }
const float *fl_client_task_global(const fl_client_task *t) { return t->global; }
fl_client_metrics *fl_client_task_metrics(fl_client_task *t) { return &t->metrics; }
int fl_client_task_cancelled(const fl_client_task *t) {
  return atomic_load(&((fl_client_task *)t)->cancelled);
}

void fl_client_task_progress(fl_client_task *t, double fraction) {
  if (!t) return;
  if (!(fraction >= 0)) fraction = 0; /* NaN too */
  if (fraction > 1) fraction = 1;
  atomic_store(&t->c->progress, (unsigned)(fraction * 1e6 + 0.5));
}

double fl_client_task_extra(const fl_client_task *t, const char *key, double dflt) {
  for (size_t i = 0; key && i < t->n_extra; i++)
    if (strcmp(t->extra[i].key, key) == 0) return t->extra[i].value;
  return dflt;
}

int fl_client_task_error(fl_client_task *t, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->reason, sizeof t->reason, fmt, ap);
  va_end(ap);
  return code;
}
