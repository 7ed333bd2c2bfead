/* fl-client: one or many virtual clients, each a libflclient client (fl/client.h) with
 * its own TLS identity, connection and data, all on one libuv loop.
 *
 * The library carries the protocol, TLS, reconnection, heartbeats and chunking; this
 * file plugs the training core into it through the public API only, as any application
 * would.  The clients run with LOOP threading: their fit and evaluate callbacks (on the
 * loop) hand the task to fl-client's pool of training threads and return
 * FL_CLIENT_PENDING; the worker that trains completes the task with fl_client_task_done.
 * One throttle keeps the handshakes in flight few, however many clients there are.  The
 * process exits when every virtual client has finished: 0 when the server said training
 * is done to all of them, 1 when some gave up or were stopped (SIGINT, SIGTERM). */
#include "client.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "attack.h"
#include "blaskernels.h"
#include "error.h"
#include "fl/client.h"
#include "log.h"
#include "model.h"
#include "pool.h"
#include "rng.h"
#include "train.h"

/* Handshakes in flight at once (see fl_client_set_throttle). */
#define MAX_HANDSHAKES 32

typedef struct vclient {
  app *a;
  int index;
  char name[64];
  fl_client *fc;
  fl_subset train, test;
  int partition;             /* -1 when training on all of --data */
  int attacker;              /* simulation: sends the --attack's delta */
  /* FedBN (--fedbn): this client's own batchnorm tensors (fl_model_local_get) for the
   * model bn_model, none before its first fit; bn_lock because jobs run on the pool */
  uv_mutex_t bn_lock;
  float *bn;
  uint64_t bn_model;
} vclient;

/* A task on its way through the pool; freed by the worker that completes it. */
typedef struct job {
  pool_job base;             /* first: the pool hands back this pointer */
  vclient *v;
  fl_client_task *task;
  const fl_model *model;
  int train;
  fl_train_config tcfg;
  float *frozen;             /* [num_params] the server's --freeze, or NULL */
} job;

struct app {
  const client_config *cfg;
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  pool workers;
  fl_client_throttle *throttle;
  fl_dataset data, test;
  int have_test;
  unsigned encodings;        /* --encodings, FL_CLIENT_ENC_* */
  fl_attack attack;          /* simulation (--attack) */
  fl_dataset flipped;        /* --attack labelflip: data with flipped labels (x shared) */
  fl_subset *parts, *test_parts;
  fl_model *model;           /* built from the spec the server last sent */
  int fits;                  /* 1: --data fits model, -1: it does not (misfit says why) */
  char misfit[400];
  /* The server's feature standardisation, applied in place to data and test (whose
   * raw features raw_x and raw_test keep); tf_dim 0: none applied. */
  float *raw_x, *raw_test, *tf;
  size_t tf_dim;
  atomic_int running;        /* jobs handed to the pool and not completed */
  int train_threads;         /* threads of each training job (--train-threads) */
  char host[256];
  vclient *vcs;
  int n, started, finished, failed, shut_down;
};

/* ---- training and evaluation, on the pool's threads ---- */

static double seconds_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* Simulation (--attack): the trained weights become global + the attack's delta, which
 * the library then sends as the delta. */
static void attack(vclient *v, const job *j, float *params, const float *global, uint64_t n) {
  fl_rng r;
  fl_rng_seed2(&r, j->tcfg.seed, 0xa77ac);
  for (uint64_t i = 0; i < n; i++) params[i] -= global[i];
  fl_attack_delta(&v->a->attack, params, n, &r);
  for (uint64_t i = 0; i < n; i++) params[i] += global[i];
}

/* FedBN: before a fit or an evaluation, this client's own batchnorm tensors replace the
 * server's in params (from its first fit on; the server's until then). */
static void fedbn_load(vclient *v, const fl_model *m, float *params) {
  uv_mutex_lock(&v->bn_lock);
  if (v->bn && v->bn_model == fl_model_id(m)) fl_model_local_put(m, params, v->bn);
  uv_mutex_unlock(&v->bn_lock);
}

/* FedBN: after a fit, keeps what training made of the batchnorm tensors and puts the
 * global ones back in params, so their delta is zero. */
static int fedbn_keep(vclient *v, const fl_model *m, float *params, const float *global) {
  int rc = 0;
  uv_mutex_lock(&v->bn_lock);
  if (!v->bn || v->bn_model != fl_model_id(m)) {
    free(v->bn);
    v->bn = malloc(fl_model_local_size(m) * sizeof(float));
    v->bn_model = fl_model_id(m);
  }
  if (v->bn) {
    fl_model_local_get(m, params, v->bn);
    fl_model_local_copy(m, params, global);
  } else {
    rc = FL_ENOMEM;
  }
  uv_mutex_unlock(&v->bn_lock);
  return rc;
}

/* After each local epoch: the task's progress, which the heartbeats carry. */
static void on_epoch(void *arg, uint32_t epoch, const fl_eval *train) {
  job *j = arg;
  (void)train;
  fl_client_task_progress(j->task, (double)(epoch + 1) / (double)j->tcfg.epochs);
}

static void job_run(pool_job *pj) {
  job *j = (job *)pj;
  vclient *v = j->v;
  fl_client_task *t = j->task;
  int rc = 0;
  if (fl_client_task_cancelled(t)) { /* the server moved on while it waited */
    fl_client_task_done(t, FL_CLIENT_ECANCELED);
    goto out;
  }
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  fl_trainer *tr = fl_trainer_create_threads(j->model, j->train ? j->tcfg.batch_size : 256,
                                             v->a->train_threads);
  fl_eval ev = {0};
  float *params = fl_client_task_params(t);
  int fedbn = v->a->cfg->fedbn && fl_model_local_size(j->model) > 0;
  if (fedbn) fedbn_load(v, j->model, params);
  if (!tr) {
    rc = FL_ENOMEM;
  } else if (j->train) {
    j->tcfg.prox_ref = j->tcfg.prox_mu > 0 ? fl_client_task_global(t) : NULL;
    rc = fl_train(tr, params, &v->train, &j->tcfg, on_epoch, j, &ev);
    ev.n = v->train.n; /* the update's weight: every local example */
    if (rc == 0 && fedbn) rc = fedbn_keep(v, j->model, params, fl_client_task_global(t));
    if (rc == 0 && v->attacker) attack(v, j, params, fl_client_task_global(t), fl_client_task_num_params(t));
  } else {
    rc = fl_evaluate(tr, params, v->test.n ? &v->test : &v->train, &ev);
  }
  fl_trainer_free(tr);
  fl_client_metrics *m = fl_client_task_metrics(t);
  m->num_examples = ev.n;
  m->loss = ev.loss;
  m->accuracy = ev.accuracy;
  m->auc = ev.auc;
  m->seconds = seconds_since(&t0); /* the training alone, not the wait for a worker */
  fl_client_task_done(t, rc ? fl_client_task_error(t, FL_CLIENT_ECALLBACK, "local %s failed: %s",
                                                   j->train ? "training" : "evaluation",
                                                   fl_strerror(rc))
                            : 0);
out:
  atomic_fetch_sub(&v->a->running, 1);
  free(j->frozen);
  free(j);
}

/* ---- the library's callbacks, on the loop thread ---- */

/* Whether --data (and --test) fit the model: its input width, and labels its head can
 * take.  Checked once per model, over all of the data every virtual client shares. */
static int data_fits(app *a, char *err, size_t errlen) {
  if (!a->fits) {
    const fl_model *m = a->model;
    char why[300];
    fl_subset all = {&a->data, NULL, a->data.n}, test = {&a->test, NULL, a->test.n};
    int rc = fl_check_data(m, &all, why, sizeof why);
    if (rc == 0 && a->have_test && (rc = fl_check_data(m, &test, why, sizeof why)) != 0)
      snprintf(a->misfit, sizeof a->misfit, "--test %s does not fit model '%s': %s",
               a->cfg->test, fl_model_spec(m), why);
    else if (rc)
      snprintf(a->misfit, sizeof a->misfit, "--data %s does not fit model '%s': %s",
               a->cfg->data, fl_model_spec(m), why);
    a->fits = rc ? -1 : 1;
  }
  return a->fits > 0 ? 0 : fl_errf(err, errlen, FL_EMISMATCH, "%s", a->misfit);
}

/* Makes sure the cached model is the one the task names.  FL_EMISMATCH when this
 * client can never train it (the reason in err). */
static int use_model(app *a, const char *spec, uint64_t n, char *err, size_t errlen) {
  if (!spec || !spec[0]) return fl_errf(err, errlen, FL_EPROTO, "the server named no model");
  if (!a->model || strcmp(fl_model_spec(a->model), spec) != 0) {
    if (atomic_load(&a->running) > 0 && a->model)
      return fl_errf(err, errlen, FL_ESTATE, "model changed while other clients still train");
    fl_model *m;
    int rc = fl_model_create(spec, &m, err, errlen);
    if (rc) return rc;
    fl_model_free(a->model);
    a->model = m;
    a->fits = 0;
  }
  if (fl_model_is_external(a->model))
    return fl_errf(err, errlen, FL_EMISMATCH,
                   "'%s' is an external model: fl-client trains models of the training core "
                   "only (an application built on libflclient trains it)", spec);
  if (fl_model_num_params(a->model) != n)
    return fl_errf(err, errlen, FL_EPROTO,
                   "the task has %llu parameters, but spec '%s' gives %zu", (unsigned long long)n,
                   spec, fl_model_num_params(a->model));
  if (fl_model_input_dim(a->model) != a->data.dim)
    return fl_errf(err, errlen, FL_EMISMATCH, "model '%s' takes %zu features, but --data %s "
                   "has %zu", spec, fl_model_input_dim(a->model), a->cfg->data, a->data.dim);
  return data_fits(a, err, errlen);
}

static void standardize(float *x, const float *raw, size_t n, size_t dim, const float *mean,
                        const float *std) {
  for (size_t i = 0; i < n * dim; i++) {
    size_t j = i % dim;
    x[i] = dim && std ? (raw[i] - mean[j]) / std[j] : raw[i];
  }
}

/* The task's feature standardisation (fl-server --standardize) on the local data: the
 * same for every task of a run, so it is applied once, in place, while no job runs (the
 * raw features are kept to apply another after a server's restart). */
static int use_transform(app *a, fl_client_task *t, char *err, size_t errlen) {
  const float *mean, *std;
  size_t dim = fl_client_task_feature_transform(t, &mean, &std);
  if (dim == a->tf_dim && (!dim || (memcmp(a->tf, mean, dim * sizeof *mean) == 0 &&
                                    memcmp(a->tf + dim, std, dim * sizeof *std) == 0)))
    return 0;
  if (dim && dim != a->data.dim)
    return fl_errf(err, errlen, FL_EMISMATCH, "the server standardises %zu features, the local "
                   "data has %zu", dim, a->data.dim);
  if (atomic_load(&a->running) > 0)
    return fl_errf(err, errlen, FL_ESTATE, "feature standardisation changed while other "
                   "clients still train");
  size_t nx = a->data.n * a->data.dim, nt = a->have_test ? a->test.n * a->test.dim : 0;
  if (!a->raw_x) {
    if (!(a->raw_x = malloc(sizeof(float) * (nx ? nx : 1))) ||
        (nt && !(a->raw_test = malloc(sizeof(float) * nt))))
      return fl_errf(err, errlen, FL_ENOMEM, "out of memory for the raw features");
    memcpy(a->raw_x, a->data.x, sizeof(float) * nx);
    if (nt) memcpy(a->raw_test, a->test.x, sizeof(float) * nt);
  }
  float *tf = dim ? malloc(sizeof(float) * 2 * dim) : NULL;
  if (dim && !tf) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  if (dim) {
    memcpy(tf, mean, sizeof(float) * dim);
    memcpy(tf + dim, std, sizeof(float) * dim);
  }
  free(a->tf);
  a->tf = tf;
  a->tf_dim = dim;
  standardize(a->data.x, a->raw_x, a->data.n, a->data.dim, tf, tf ? tf + dim : NULL);
  if (nt) standardize(a->test.x, a->raw_test, a->test.n, a->test.dim, tf, tf ? tf + dim : NULL);
  if (dim) fl_info("client", "features standardised with the federation's means and deviations");
  return 0;
}

static int submit(vclient *v, fl_client_task *t, int train, const fl_train_config *tcfg,
                  const char *freeze) {
  app *a = v->a;
  char err[512];
  int rc = use_model(a, fl_client_task_model(t), fl_client_task_num_params(t), err, sizeof err);
  if (rc == 0) rc = use_transform(a, t, err, sizeof err);
  if (rc) return fl_client_task_error(t, rc == FL_EMISMATCH ? FL_CLIENT_EINCOMPATIBLE
                                                            : FL_CLIENT_ECALLBACK, "%s", err);
  job *j = calloc(1, sizeof *j);
  if (!j) return fl_client_task_error(t, FL_CLIENT_ENOMEM, "out of memory");
  j->base.run = job_run;
  j->v = v;
  j->task = t;
  j->model = a->model;
  j->train = train;
  if (tcfg) j->tcfg = *tcfg;
  if (freeze && freeze[0]) { /* the server's --freeze: those layers are not trained */
    size_t P = fl_model_num_params(a->model);
    j->frozen = malloc(sizeof *j->frozen * (P ? P : 1));
    if (!j->frozen) {
      free(j);
      return fl_client_task_error(t, FL_CLIENT_ENOMEM, "out of memory");
    }
    if (fl_model_freeze_mask(a->model, freeze, j->frozen, err, sizeof err) < 0) {
      free(j->frozen);
      free(j);
      return fl_client_task_error(t, FL_CLIENT_ECALLBACK, "%s", err);
    }
    j->tcfg.frozen = j->frozen;
  }
  atomic_fetch_add(&a->running, 1);
  pool_submit(&a->workers, &j->base);
  return FL_CLIENT_PENDING;
}

static int on_fit(fl_client *fc, fl_client_task *t) {
  vclient *v = fl_client_get_data(fc);
  const client_config *cfg = v->a->cfg;
  const fl_client_fit_config *k = fl_client_task_config(t);
  if (cfg->sim_crash_round > 0 && k->round == (uint64_t)cfg->sim_crash_round) {
    fl_warn(v->name, "round %llu: --sim-crash-round: the process kills itself now",
            (unsigned long long)k->round);
    raise(SIGKILL);
  }
  if (cfg->sim_stop_round > 0 && k->round == (uint64_t)cfg->sim_stop_round) {
    fl_warn(v->name, "round %llu: --sim-stop-round: the process stops itself until SIGCONT",
            (unsigned long long)k->round);
    raise(SIGSTOP);
    fl_warn(v->name, "round %llu: continued", (unsigned long long)k->round);
  }
  /* The server's settings over the training core's defaults (0: not set). */
  fl_train_config tcfg = fl_train_config_default();
  if (k->optimizer[0] && fl_optimizer_parse(k->optimizer, &tcfg) != 0)
    return fl_client_task_error(t, FL_CLIENT_ECALLBACK, "unknown optimizer '%s'", k->optimizer);
  if (k->epochs) tcfg.epochs = k->epochs;
  if (k->batch_size) tcfg.batch_size = k->batch_size;
  if (k->lr > 0) tcfg.lr = k->lr;
  if (k->momentum > 0) tcfg.momentum = k->momentum;
  tcfg.weight_decay = k->weight_decay;
  tcfg.prox_mu = k->prox_mu;
  tcfg.clip_norm = k->clip_norm;
  /* Every client of a round trains with its own seed, derived from the round's. */
  tcfg.seed = fl_seed_mix(k->seed, (uint64_t)(v->partition >= 0 ? v->partition : v->index));
  fl_debug(v->name, "round %llu: training", (unsigned long long)k->round);
  return submit(v, t, 1, &tcfg, k->freeze);
}

static int on_evaluate(fl_client *fc, fl_client_task *t) {
  return submit(fl_client_get_data(fc), t, 0, NULL, NULL);
}

static void on_log(fl_client *fc, int level, const char *msg) {
  vclient *v = fl_client_get_data(fc);
  FL_LOG(level, v->name, "%s", msg); /* the library's levels are fl's */
}

/* Shuts the loop down once every client has finished. */
static void check_all_finished(app *a) {
  if (a->finished < a->started || a->shut_down) return;
  a->shut_down = 1;
  fl_info("client", "all %d clients finished (%d gave up)", a->n, a->failed);
  pool_stop(&a->workers); /* every task was completed: the library waited for them */
  uv_close((uv_handle_t *)&a->sigint, NULL);
  uv_close((uv_handle_t *)&a->sigterm, NULL);
}

static void on_finish(fl_client *fc, int status) {
  vclient *v = fl_client_get_data(fc);
  app *a = v->a;
  a->finished++;
  if (status) {
    a->failed++;
    if (status != FL_CLIENT_ESTOPPED && status != FL_CLIENT_EGAVEUP)
      fl_error(v->name, "%s", fl_client_errmsg(fc));
  }
  check_all_finished(a);
}

static void on_signal(uv_signal_t *h, int signum) {
  app *a = h->data;
  fl_warn("client", "%s: leaving", signum == SIGINT ? "SIGINT" : "SIGTERM");
  for (int i = 0; i < a->n; i++) fl_client_stop(a->vcs[i].fc);
}

/* ---- set-up ---- */

/* --partition splits --data ("none" shares all of it, as no --partition does). */
static int partitioned(const client_config *cfg) {
  return cfg->partition && strcmp(cfg->partition, "none") != 0;
}

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
  if (partitioned(cfg)) {
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

/* One virtual client: its data, identity and settings, as a libflclient client. */
static int setup_vc(app *a, vclient *v, int i, char *err, size_t errlen) {
  const client_config *cfg = a->cfg;
  if (uv_mutex_init(&v->bn_lock) != 0) return fl_errf(err, errlen, FL_ENOMEM, "cannot create a lock");
  v->a = a; /* from here on app_free destroys the lock */
  v->index = i;
  v->partition = partitioned(cfg) ? cfg->partition_index + i : -1;
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
  if (v->partition >= 0) {
    v->train = a->parts[v->partition];
    if (a->have_test) v->test = a->test_parts[v->partition];
    if (cfg->attack) {
      size_t parts = (size_t)(cfg->num_partitions ? cfg->num_partitions : cfg->clients);
      int rc = fl_attack_chosen(cfg->attack_clients, (size_t)v->partition, parts, cfg->seed,
                                &v->attacker, err, errlen);
      if (rc) return rc;
      if (v->attacker) {
        fl_warn(v->name, "SIMULATION: attacks with %s", cfg->attack);
        if (a->attack.mode == FL_ATTACK_LABELFLIP) v->train.data = &a->flipped;
      }
    }
  } else {
    v->train = (fl_subset){&a->data, NULL, a->data.n};
    if (a->have_test) v->test = (fl_subset){&a->test, NULL, a->test.n};
  }
  if (v->train.n == 0)
    return fl_errf(err, errlen, FL_EINVAL, "%s: partition %d of --data is empty", v->name, v->partition);
  int rc = fl_client_new(&v->fc);
  if (rc) return fl_errf(err, errlen, FL_ENOMEM, "%s", fl_client_strerror(rc));
  fl_client *fc = v->fc;
  fl_client_set_data(fc, v);
  if (cfg->share_feature_stats) { /* this client's own training samples */
    size_t dim = a->data.dim;
    double *sum = calloc(dim ? dim : 1, sizeof *sum), *sq = calloc(dim ? dim : 1, sizeof *sq);
    if (!sum || !sq) {
      free(sum);
      free(sq);
      return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < v->train.n; i++) {
      const float *row = a->data.x + (size_t)(v->train.idx ? v->train.idx[i] : i) * dim;
      for (size_t j = 0; j < dim; j++) sum[j] += row[j], sq[j] += (double)row[j] * row[j];
    }
    rc = fl_client_set_feature_stats(fc, v->train.n, sum, sq, dim);
    free(sum);
    free(sq);
    if (rc) return fl_errf(err, errlen, FL_ECONFIG, "%s: %s", v->name, fl_client_errmsg(fc));
  }
  if ((rc = fl_client_set_server(fc, cfg->server)) != 0 ||
      (rc = fl_client_set_tls(fc, cfg->ca, cert, key, cfg->server_name)) != 0 ||
      (rc = fl_client_set_name(fc, v->name)) != 0 ||
      (rc = fl_client_set_num_examples(fc, v->train.n)) != 0 ||
      (rc = fl_client_set_reconnect(fc, (unsigned)cfg->max_retries, cfg->retry_base,
                                    cfg->retry_max)) != 0 ||
      (rc = fl_client_set_heartbeat(fc, cfg->heartbeat, cfg->idle_timeout)) != 0 ||
      (rc = fl_client_set_threading(fc, FL_CLIENT_THREAD_LOOP)) != 0 ||
      (rc = fl_client_set_encodings(fc, a->encodings)) != 0 ||
      (rc = fl_client_set_frozen_cache(fc, cfg->frozen_cache)) != 0 ||
      (rc = fl_client_set_throttle(fc, a->throttle)) != 0 ||
      (rc = fl_client_on_fit(fc, on_fit)) != 0 ||
      (rc = fl_client_on_evaluate(fc, on_evaluate)) != 0 ||
      (rc = fl_client_on_log(fc, on_log, fl__log_level)) != 0 ||
      (rc = fl_client_on_finish(fc, on_finish)) != 0)
    return fl_errf(err, errlen, FL_ECONFIG, "%s: %s", v->name, fl_client_errmsg(fc));
  return 0;
}

/* --encodings: "all", or a comma list of encoding names. */
static int parse_encodings(const char *spec, unsigned *out, char *err, size_t errlen) {
  static const struct { const char *name; unsigned flag; } known[] = {
      {"float32", FL_CLIENT_ENC_FLOAT32}, {"float16", FL_CLIENT_ENC_FLOAT16},
      {"int8", FL_CLIENT_ENC_INT8}, {"topk", FL_CLIENT_ENC_TOPK}};
  if (strcmp(spec, "all") == 0) {
    *out = FL_CLIENT_ENC_ALL;
    return 0;
  }
  *out = FL_CLIENT_ENC_FLOAT32;
  for (const char *p = spec; *p;) {
    size_t len = strcspn(p, ",");
    size_t k = 0;
    while (k < 4 && !(strlen(known[k].name) == len && strncmp(p, known[k].name, len) == 0)) k++;
    if (k == 4)
      return fl_errf(err, errlen, FL_ECONFIG, "--encodings: unknown encoding '%.*s' (all, or "
                     "float32, float16, int8, topk)", (int)len, p);
    *out |= known[k].flag;
    p += len + (p[len] == ',');
  }
  return 0;
}

int app_create(const client_config *cfg, app **out, char *err, size_t errlen) {
  app *a = calloc(1, sizeof *a);
  if (!a) return FL_ENOMEM;
  a->cfg = cfg;
  int rc = FL_EIO;
  if (uv_loop_init(&a->loop) != 0) {
    free(a);
    return fl_errf(err, errlen, rc, "libuv: cannot create a loop");
  }
  rc = parse_encodings(cfg->encodings, &a->encodings, err, errlen);
  if (rc == 0) rc = load_data(a, err, errlen);
  if (rc) goto fail;
  if (cfg->attack) {
    rc = fl_attack_parse(cfg->attack, &a->attack, err, errlen);
    if (rc) goto fail;
    if (a->attack.mode == FL_ATTACK_LABELFLIP && (rc = fl_attack_flip_labels(&a->data, &a->flipped))) {
      snprintf(err, errlen, "out of memory for flipped labels");
      goto fail;
    }
  }
  a->n = cfg->clients;
  a->vcs = calloc((size_t)a->n, sizeof *a->vcs);
  a->throttle = fl_client_throttle_new(MAX_HANDSHAKES);
  rc = FL_ENOMEM;
  if (!a->vcs || !a->throttle) goto fail;
  for (int i = 0; i < a->n; i++)
    if ((rc = setup_vc(a, &a->vcs[i], i, err, errlen)) != 0) goto fail;
  int cores = (int)uv_available_parallelism();
  int workers = cfg->workers ? cfg->workers : cores;
  if (workers > a->n) workers = a->n;
  /* one client: all the cores for its job; a simulation: a core for each worker's job */
  a->train_threads = cfg->train_threads ? cfg->train_threads
                                        : (cores / workers > 1 ? cores / workers : 1);
  rc = pool_start(&a->workers, workers);
  if (rc) {
    snprintf(err, errlen, "cannot start %d worker threads", workers);
    goto fail;
  }
  uv_signal_init(&a->loop, &a->sigint);
  uv_signal_init(&a->loop, &a->sigterm);
  a->sigint.data = a->sigterm.data = a;
  uv_signal_start(&a->sigint, on_signal, SIGINT);
  uv_signal_start(&a->sigterm, on_signal, SIGTERM);
  char split[160] = "";
  if (partitioned(cfg)) {
    int parts = cfg->num_partitions ? cfg->num_partitions : cfg->clients;
    size_t mine = 0;
    for (int i = 0; i < a->n; i++) mine += a->vcs[i].train.n;
    snprintf(split, sizeof split, " (partitions %d..%d of %d by %s: %zu of them)",
             cfg->partition_index, cfg->partition_index + a->n - 1, parts, cfg->partition, mine);
  } else if (a->n > 1) {
    snprintf(split, sizeof split, " (--partition none: each client trains on all of them)");
  }
  fl_info("client", "%d client%s, %zu training samples%s, %d worker%s of %d training thread%s%s, "
          "OpenBLAS's %s kernels, server %s", a->n, a->n == 1 ? "" : "s", a->data.n, split, workers,
          workers == 1 ? "" : "s", a->train_threads, a->train_threads == 1 ? "" : "s",
          cfg->fedbn ? ", FedBN" : "", fl_blas_kernels(), cfg->server);
  *out = a;
  return 0;
fail:
  app_free(a);
  return rc;
}

int app_run(app *a) {
  for (int i = 0; i < a->n; i++) {
    int rc = fl_client_start(a->vcs[i].fc, &a->loop);
    if (rc) {
      fl_error(a->vcs[i].name, "cannot start: %s", fl_client_errmsg(a->vcs[i].fc));
      for (int k = 0; k < i; k++) fl_client_stop(a->vcs[k].fc);
      a->failed++;
      break;
    }
    a->started++;
  }
  if (a->started == 0) check_all_finished(a);
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
    fl_client_free(a->vcs[i].fc);
    if (a->vcs[i].a) uv_mutex_destroy(&a->vcs[i].bn_lock);
    free(a->vcs[i].bn);
  }
  free(a->vcs);
  fl_client_throttle_free(a->throttle);
  if (a->parts) fl_partition_free(a->parts);
  if (a->test_parts) fl_partition_free(a->test_parts);
  fl_dataset_free(&a->data);
  free(a->flipped.y); /* its x is data's */
  if (a->have_test) fl_dataset_free(&a->test);
  fl_model_free(a->model);
  free(a->raw_x);
  free(a->raw_test);
  free(a->tf);
  free(a);
}
