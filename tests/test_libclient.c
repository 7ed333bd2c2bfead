/* libflclient (client/include/fl/client.h), in this process, against the real fl-server
 * over real TLS.
 *
 * - every error code has a name and a sentence; the setters refuse bad arguments and say
 *   why; a client without its configuration does not start;
 * - stopped before it runs, a client returns at once; without a server it gives up after
 *   its retries;
 * - three clients of an external model on one loop (LOOP threading, one throttle): the
 *   server takes the initial parameters from the first, and the final model is exactly
 *   the initial one plus each round's example-weighted average of the deltas the fits
 *   made; one client completes its fits from another thread (FL_CLIENT_PENDING);
 * - a fit that fails is reported to the server (clients_failed, its reason) and the round
 *   closes without it, at once, not at its timeout; the client trains the next round; a
 *   fit that claims more examples than its client announced is not sent but reported;
 * - a fit on a worker thread that lasts longer than the server's idle timeout keeps the
 *   connection: the loop goes on sending heartbeats;
 * - fl_client_stop from another thread cancels the fit in hand and ends the run;
 * - a client that declares another model, or none for an external model, is refused
 *   with a message that names both models. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "fl/client.h"
#include "model.h"
#include "modelfile.h"
#include "testutil.h"

#define MAXC 4

/* ---- a harness: clients of the test on one loop, their log in a file ---- */

typedef struct harness harness;
typedef struct tclient {
  harness *h;
  int index;                 /* client-000(index+1) */
  fl_client *c;
  int status, finished;
  uint64_t examples;         /* its fits' weight */
  int fail_round;            /* its fit fails in this round (0: never) */
  int overclaim_round;       /* its fit claims more examples than announced in this round */
  int pending;               /* its fits complete from another thread */
  double sleep_s;            /* its fit lasts this long */
  int until_cancelled;       /* its fit runs until it is cancelled */
  int fits, evals;
  int fit_on_loop_thread, fit_off_loop_thread;
  atomic_int fit_started, saw_cancel;
  pthread_t helpers[16];
  int n_helpers;
} tclient;

struct harness {
  fl_test_fed f;
  uv_loop_t loop;
  uv_timer_t deadline;
  pthread_t loop_thread;
  tclient t[MAXC];
  int n, finished, timed_out;
  int deadline_on;           /* h_run's deadline timer is open */
  FILE *log;
  char log_path[700];
};

static void h_log(fl_client *c, int level, const char *msg) {
  tclient *t = fl_client_get_data(c);
  fprintf(t->h->log, "%d [%s] %s\n", level, fl_client_name(c), msg);
  fflush(t->h->log);
}

static void h_finish(fl_client *c, int status) {
  tclient *t = fl_client_get_data(c);
  t->status = status;
  t->finished = 1;
  if (++t->h->finished == t->h->n && t->h->deadline_on) {
    t->h->deadline_on = 0;
    uv_close((uv_handle_t *)&t->h->deadline, NULL);
  }
}

static void on_deadline(uv_timer_t *tm) {
  harness *h = tm->data;
  h->timed_out = 1;
  for (int i = 0; i < h->n; i++) fl_client_stop(h->t[i].c);
}

static void h_init(harness *h) {
  memset(h, 0, sizeof *h);
  fl_test_fed_init(&h->f);
  cr_assert_eq(uv_loop_init(&h->loop), 0);
  fl_test_fed_path(&h->f, "lib.log", h->log_path, sizeof h->log_path);
  h->log = fopen(h->log_path, "a");
  cr_assert_not_null(h->log);
  h->loop_thread = pthread_self();
}

/* A client of certificate index+1, configured for the harness's server. */
static fl_client *h_client(harness *h, int index) {
  tclient *t = &h->t[h->n++];
  t->h = h;
  t->index = index;
  t->examples = 10 * (uint64_t)(index + 1);
  cr_assert_eq(fl_client_new(&t->c), 0);
  fl_client *c = t->c;
  char addr[64], cert[600], key[600], name[32];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", h->f.port);
  snprintf(cert, sizeof cert, "%s/client-%04d.crt", fl_test_certs_dir(), index + 1);
  snprintf(key, sizeof key, "%s/client-%04d.key", fl_test_certs_dir(), index + 1);
  snprintf(name, sizeof name, "client-%04d", index + 1);
  fl_client_set_data(c, t);
  cr_assert_eq(fl_client_set_server(c, addr), 0, "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_set_tls(c, h->f.ca, cert, key, "localhost"), 0, "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_set_name(c, name), 0);
  cr_assert_eq(fl_client_set_reconnect(c, 50, 0.05, 0.5), 0);
  cr_assert_eq(fl_client_set_num_examples(c, t->examples), 0);
  cr_assert_eq(fl_client_on_log(c, h_log, FL_CLIENT_LOG_DEBUG), 0);
  cr_assert_eq(fl_client_on_finish(c, h_finish), 0);
  return c;
}

/* Starts every client and runs the loop until all have finished (or the deadline). */
static void h_run(harness *h, double timeout_s) {
  uv_timer_init(&h->loop, &h->deadline);
  h->deadline.data = h;
  h->deadline_on = 1;
  uv_timer_start(&h->deadline, on_deadline, (uint64_t)(timeout_s * fl_test_time_scale() * 1000), 0);
  for (int i = 0; i < h->n; i++)
    cr_assert_eq(fl_client_start(h->t[i].c, &h->loop), 0, "%s", fl_client_errmsg(h->t[i].c));
  uv_run(&h->loop, UV_RUN_DEFAULT);
  cr_assert(!h->timed_out, "the clients did not finish in time (log %s)", h->log_path);
}

static void h_free(harness *h) {
  for (int i = 0; i < h->n; i++) {
    for (int k = 0; k < h->t[i].n_helpers; k++) pthread_join(h->t[i].helpers[k], NULL);
    cr_assert_eq(fl_client_free(h->t[i].c), 0);
  }
  cr_assert_eq(uv_loop_close(&h->loop), 0, "handles left on the loop");
  fclose(h->log);
  fl_test_fed_free(&h->f);
}

/* ---- the clients' training: deterministic arithmetic, checkable exactly ---- */

/* Round r's fit of client k adds this to every parameter. */
static float fit_step(int k, uint64_t round) { return 0.01f * (float)(k + 1) + 0.001f * (float)round; }

static float init_value(uint64_t i) { return 0.5f + 0.01f * (float)i; }

static int get_init(fl_client *c, float *params, uint64_t n) {
  (void)c;
  for (uint64_t i = 0; i < n; i++) params[i] = init_value(i);
  return 0;
}

static int set_noop(fl_client *c, const float *params, uint64_t n) {
  (void)c, (void)params, (void)n;
  return 0;
}

static int do_fit(tclient *t, fl_client_task *task) {
  const fl_client_fit_config *cfg = fl_client_task_config(task);
  if (t->until_cancelled) {
    atomic_store(&t->fit_started, 1);
    for (int i = 0; i < 60000 && !fl_client_task_cancelled(task); i++) usleep(1000);
    atomic_store(&t->saw_cancel, fl_client_task_cancelled(task));
    return FL_CLIENT_ECANCELED;
  }
  if (t->sleep_s > 0) usleep((useconds_t)(t->sleep_s * 1e6));
  if (cfg->round == (uint64_t)t->fail_round)
    return fl_client_task_error(task, FL_CLIENT_ECALLBACK, "no data today (round %llu)",
                                (unsigned long long)cfg->round);
  float *p = fl_client_task_params(task);
  const float *g = fl_client_task_global(task);
  uint64_t n = fl_client_task_num_params(task);
  for (uint64_t i = 0; i < n; i++) {
    if (p[i] != g[i]) return fl_client_task_error(task, FL_CLIENT_EINVAL, "params do not start at the global model");
    p[i] += fit_step(t->index, cfg->round);
  }
  fl_client_metrics *m = fl_client_task_metrics(task);
  m->num_examples = cfg->round == (uint64_t)t->overclaim_round ? 1000 : t->examples;
  m->loss = 1.0 / (double)cfg->round;
  m->accuracy = 0.5;
  return 0;
}

static void *pending_fit(void *arg) {
  fl_client_task *task = arg;
  tclient *t = fl_client_get_data(fl_client_task_client(task));
  fl_client_task_done(task, do_fit(t, task));
  return NULL;
}

static int t_fit(fl_client *c, fl_client_task *task) {
  tclient *t = fl_client_get_data(c);
  t->fits++;
  if (pthread_equal(pthread_self(), t->h->loop_thread)) t->fit_on_loop_thread++;
  else t->fit_off_loop_thread++;
  if (t->pending && t->n_helpers < 16) {
    cr_assert_eq(pthread_create(&t->helpers[t->n_helpers++], NULL, pending_fit, task), 0);
    return FL_CLIENT_PENDING;
  }
  return do_fit(t, task);
}

static int t_evaluate(fl_client *c, fl_client_task *task) {
  tclient *t = fl_client_get_data(c);
  t->evals++;
  fl_client_metrics *m = fl_client_task_metrics(task);
  m->num_examples = 5;
  m->loss = fl_client_task_params(task)[0];
  m->accuracy = 0.25;
  return 0;
}

/* ---- tests ---- */

Test(libclient, errors_have_names_and_sentences) {
#define X(name, value, msg)                                                                  \
  cr_assert_str_eq(fl_client_strerror(value), msg);                                          \
  cr_assert_str_eq(fl_client_err_name(value), "FL_CLIENT_E" #name);                          \
  cr_assert_eq(FL_CLIENT_E##name, value);
  FL_CLIENT_ERRNO_MAP(X)
#undef X
  cr_assert_str_eq(fl_client_err_name(0), "FL_CLIENT_OK");
  cr_assert_str_eq(fl_client_err_name(FL_CLIENT_PENDING), "FL_CLIENT_PENDING");
  cr_assert_str_eq(fl_client_strerror(-1000), "unknown error");
  cr_assert_str_eq(fl_client_err_name(77), "FL_CLIENT_EUNKNOWN");
  char v[32];
  snprintf(v, sizeof v, "%d.%d.%d", FL_CLIENT_VERSION_MAJOR, FL_CLIENT_VERSION_MINOR,
           FL_CLIENT_VERSION_PATCH);
  cr_assert_str_eq(fl_client_version(), v);
}

Test(libclient, setters_check_their_arguments) {
  fl_client *c;
  cr_assert_eq(fl_client_new(&c), 0);
  const char *bad[] = {"nohost", "host:", "host:0", "host:70000", ":80", "::1:80", "[::1:80",
                       "host:80x", "[]:80"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    cr_assert_eq(fl_client_set_server(c, bad[i]), FL_CLIENT_EINVAL, "%s accepted", bad[i]);
    cr_assert(strstr(fl_client_errmsg(c), bad[i]), "%s", fl_client_errmsg(c));
  }
  cr_assert_eq(fl_client_set_server(c, "[::1]:7700"), 0);
  cr_assert_eq(fl_client_set_server(c, "coordinator.example.org:7700"), 0);

  cr_assert_eq(fl_client_set_model(c, "", 4), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_set_model(c, "two words", 4), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_set_model(c, "a:b", 4), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_set_model(c, "toy", 0), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_set_model(c, "toy", ((uint64_t)1 << 30) + 1), FL_CLIENT_EINVAL);
  char long_name[70];
  memset(long_name, 'x', 65);
  long_name[65] = 0;
  cr_assert_eq(fl_client_set_model(c, long_name, 4), FL_CLIENT_EINVAL);
  cr_assert_null(fl_client_model(c));
  cr_assert_eq(fl_client_set_model(c, "my-model_1.0", 21), 0);
  cr_assert_str_eq(fl_client_model(c), "external:my-model_1.0:21");
  cr_assert_eq(fl_client_num_params(c), 21);
  cr_assert_eq(fl_client_set_model_spec(c, "bogus layers"), FL_CLIENT_EINVAL);
  cr_assert(strstr(fl_client_errmsg(c), "bogus"), "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_set_model_spec(c, "2nn"), 0);
  cr_assert_str_eq(fl_client_model(c), "in:784 dense:200 relu dense:200 relu dense:10 softmax");
  cr_assert_eq(fl_client_num_params(c), 199210);

  char missing[700];
  snprintf(missing, sizeof missing, "%s/no-such-ca.crt", fl_test_certs_dir());
  char cert[600], key[600];
  snprintf(cert, sizeof cert, "%s/client-0001.crt", fl_test_certs_dir());
  snprintf(key, sizeof key, "%s/client-0001.key", fl_test_certs_dir());
  cr_assert_eq(fl_client_set_tls(c, missing, cert, key, NULL), FL_CLIENT_ENOENT);
  cr_assert(strstr(fl_client_errmsg(c), "no-such-ca.crt"), "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_set_tls(c, cert, cert, cert, NULL), FL_CLIENT_ETLS, "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_set_tls(c, NULL, cert, key, NULL), FL_CLIENT_EINVAL);

  cr_assert_eq(fl_client_set_heartbeat(c, 10, 15), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_set_heartbeat(c, 1, 2), 0);
  cr_assert_eq(fl_client_set_reconnect(c, 3, 0, 1), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_set_reconnect(c, 3, 2, 1), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_set_threading(c, 7), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_on_params(c, NULL, set_noop), FL_CLIENT_EINVAL);
  cr_assert_eq(fl_client_on_params(c, get_init, NULL), 0);
  cr_assert_eq(fl_client_set_name(c, ""), FL_CLIENT_EINVAL);
  cr_assert_str_eq(fl_client_name(c), "client");

  /* Incomplete: the run says what is missing. */
  cr_assert_eq(fl_client_run(c), FL_CLIENT_ECONFIG);
  cr_assert(strstr(fl_client_errmsg(c), "fl_client_set_tls"), "%s", fl_client_errmsg(c));
  char ca[600];
  snprintf(ca, sizeof ca, "%s/ca.crt", fl_test_certs_dir());
  cr_assert_eq(fl_client_set_tls(c, ca, cert, key, "localhost"), 0, "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_run(c), FL_CLIENT_ECONFIG);
  cr_assert(strstr(fl_client_errmsg(c), "fl_client_on_fit"), "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_on_fit(c, t_fit), 0);
  cr_assert_eq(fl_client_run(c), FL_CLIENT_ECONFIG);
  cr_assert(strstr(fl_client_errmsg(c), "fl_client_set_num_examples"), "%s", fl_client_errmsg(c));

  fl_client_throttle *th = fl_client_throttle_new(2);
  cr_assert_eq(fl_client_set_throttle(c, th), 0);
  cr_assert_eq(fl_client_throttle_free(th), FL_CLIENT_ESTATE);
  cr_assert_eq(fl_client_free(c), 0);
  cr_assert_eq(fl_client_throttle_free(th), 0);
  cr_assert_eq(fl_client_free(NULL), 0);
}

Test(libclient, stopped_before_it_runs_it_returns_at_once, .timeout = 60) {
  harness h;
  h_init(&h); /* a port nobody listens on: the client must not even try */
  fl_client *c = h_client(&h, 0);
  cr_assert_eq(fl_client_on_fit(c, t_fit), 0);
  fl_client_stop(c);
  cr_assert_eq(fl_client_run(c), FL_CLIENT_ESTOPPED);
  cr_assert_eq(fl_test_count(h.log_path, "connection"), 0, "it tried to connect (%s)", h.log_path);
  /* The stop was used up: a second run tries to connect. */
  cr_assert_eq(fl_client_set_reconnect(c, 1, 0.01, 0.01), 0);
  cr_assert_eq(fl_client_run(c), FL_CLIENT_EGAVEUP);
  h_free(&h);
}

Test(libclient, gives_up_without_a_server, .timeout = 60) {
  harness h;
  h_init(&h);
  fl_client *c = h_client(&h, 0);
  cr_assert_eq(fl_client_on_fit(c, t_fit), 0);
  cr_assert_eq(fl_client_set_reconnect(c, 3, 0.01, 0.02), 0);
  int rc = fl_client_run(c);
  cr_assert_eq(rc, FL_CLIENT_EGAVEUP, "%s", fl_client_err_name(rc));
  cr_assert(strstr(fl_client_errmsg(c), "gave up after 3 failed connection attempts"), "%s",
            fl_client_errmsg(c));
  cr_assert_eq(fl_test_count(h.log_path, "reconnecting in"), 3, "%s", h.log_path);
  cr_assert_eq(h.t[0].status, FL_CLIENT_EGAVEUP, "the finish callback ran too");
  h_free(&h);
}

/* Three clients on one loop train an external model; the final model is checked
 * against the arithmetic of their fits. */
Test(libclient, external_model_federation_on_one_loop, .timeout = 240) {
  harness h;
  h_init(&h);
  const int rounds = 3;
  pid_t s = fl_test_fed_server_ready(&h.f, "server.log", "--model", "external:toy:8", "--rounds",
                                     "3", "--clients-per-round", "3", "--min-clients", "3",
                                     "--fed-eval-every", "1", NULL);
  cr_assert_gt(s, 0, "no server (%s)", h.f.log);
  fl_client_throttle *th = fl_client_throttle_new(1);
  for (int k = 0; k < 3; k++) {
    fl_client *c = h_client(&h, k);
    cr_assert_eq(fl_client_set_model(c, "toy", 8), 0);
    cr_assert_eq(fl_client_set_threading(c, FL_CLIENT_THREAD_LOOP), 0);
    cr_assert_eq(fl_client_set_throttle(c, th), 0);
    cr_assert_eq(fl_client_on_fit(c, t_fit), 0);
    cr_assert_eq(fl_client_on_evaluate(c, t_evaluate), 0);
    cr_assert_eq(fl_client_on_params(c, get_init, NULL), 0);
  }
  h.t[1].pending = 1;
  h_run(&h, 180);
  cr_assert_eq(fl_test_wait(s, 60), 0, "fl-server failed (%s)", h.f.log);
  for (int k = 0; k < 3; k++) {
    cr_assert_eq(h.t[k].status, 0, "client %d: %s", k, fl_client_errmsg(h.t[k].c));
    cr_assert_eq(h.t[k].fits, rounds);
    cr_assert_eq(h.t[k].evals, rounds);
    cr_assert_eq(h.t[k].fit_on_loop_thread, rounds, "LOOP threading calls fit on the loop");
  }
  cr_assert_eq(fl_test_count(h.f.log, "initial model from client-000"), 1, "%s", h.f.log);

  char err[512], *spec;
  uint64_t id;
  float *got;
  size_t n;
  cr_assert_eq(fl_modelfile_load(h.f.model, &spec, &id, &got, &n, err, sizeof err), 0, "%s", err);
  cr_assert_str_eq(spec, "external:toy:8");
  cr_assert_eq(n, 8);
  double total = 10 + 20 + 30;
  for (size_t i = 0; i < n; i++) {
    double want = init_value(i);
    for (int r = 1; r <= rounds; r++) {
      double avg = 0;
      for (int k = 0; k < 3; k++) avg += 10.0 * (k + 1) * fit_step(k, (uint64_t)r);
      want += avg / total;
    }
    cr_assert(fabs(want - got[i]) < 1e-5, "parameter %zu: %.7f, expected %.7f", i, got[i], want);
  }
  for (int r = 1; r <= rounds; r++) {
    char *line = fl_test_metrics_line(h.f.metrics, r);
    cr_assert_not_null(line, "no round %d in %s", r, h.f.metrics);
    cr_assert_eq(fl_test_json_num(line, "updates_accepted"), 3, "%s", line);
    cr_assert_eq(fl_test_json_num(line, "examples"), 60, "%s", line);
    cr_assert_eq(fl_test_json_num(line, "fed_eval_clients"), 3, "%s", line);
    cr_assert(fabs(fl_test_json_num(line, "train_loss") - 1.0 / r) < 1e-6, "%s", line);
    free(line);
  }
  free(spec);
  free(got);
  cr_assert(fl_test_sanitizer_clean(h.f.log));
  h_free(&h);
  cr_assert_eq(fl_client_throttle_free(th), 0);
}

/* The initial model for an external model from --init-model. */
static void write_init_model(harness *h, const char *spec, char *path, size_t len) {
  fl_model *m;
  char err[256];
  cr_assert_eq(fl_model_create(spec, &m, err, sizeof err), 0, "%s", err);
  size_t n = fl_model_num_params(m);
  float *p = calloc(n, sizeof *p);
  fl_test_fed_path(&h->f, "init.bin", path, len);
  cr_assert_eq(fl_modelfile_save(path, fl_model_spec(m), fl_model_id(m), p, n, err, sizeof err), 0, "%s", err);
  free(p);
  fl_model_free(m);
}

Test(libclient, failing_fit_is_reported_and_the_round_goes_on, .timeout = 240) {
  harness h;
  h_init(&h);
  char init[700];
  write_init_model(&h, "external:toy:8", init, sizeof init);
  pid_t s = fl_test_fed_server_ready(&h.f, "server.log", "--model", "external:toy:8",
                                     "--init-model", init, "--rounds", "3",
                                     "--clients-per-round", "3", "--min-clients", "3",
                                     "--round-timeout", "600", NULL);
  cr_assert_gt(s, 0, "no server (%s)", h.f.log);
  for (int k = 0; k < 3; k++) {
    fl_client *c = h_client(&h, k);
    cr_assert_eq(fl_client_set_model(c, "toy", 8), 0);
    cr_assert_eq(fl_client_on_fit(c, t_fit), 0); /* WORKER threading, the default */
  }
  h.t[1].fail_round = 2;
  h.t[2].overclaim_round = 3; /* the library itself refuses to send that */
  h_run(&h, 180);
  cr_assert_eq(fl_test_wait(s, 60), 0, "fl-server failed (%s)", h.f.log);
  for (int k = 0; k < 3; k++) {
    cr_assert_eq(h.t[k].status, 0, "client %d: %s", k, fl_client_errmsg(h.t[k].c));
    cr_assert_eq(h.t[k].fits, 3, "client %d trained %d rounds", k, h.t[k].fits);
    cr_assert_eq(h.t[k].fit_off_loop_thread, 3, "WORKER threading calls fit off the loop");
  }
  char *r2 = fl_test_metrics_line(h.f.metrics, 2), *r3 = fl_test_metrics_line(h.f.metrics, 3);
  cr_assert(r2 && r3, "%s", h.f.metrics);
  cr_assert_eq(fl_test_json_num(r2, "updates_accepted"), 2, "%s", r2);
  cr_assert_eq(fl_test_json_num(r2, "clients_failed"), 1, "%s", r2);
  cr_assert(strstr(r2, "\"failures\":[{\"client\":\"client-0002\",\"reason\":\"no data today (round 2)\"}]"),
            "%s", r2);
  cr_assert_eq(fl_test_json_num(r3, "updates_accepted"), 2, "%s", r3);
  cr_assert_eq(fl_test_json_num(r3, "clients_failed"), 1, "%s", r3);
  cr_assert(strstr(r3, "\"client\":\"client-0003\",\"reason\":\"fit reported 1000 examples, "
                       "more than the 30 announced when joining (fl_client_set_num_examples)\""),
            "%s", r3);
  cr_assert_eq(fl_test_count(h.f.log, "timed out with"), 0, "the round waited for its timeout (%s)",
               h.f.log);
  cr_assert_eq(fl_test_count(h.f.log, "client-0002 could not train: no data today (round 2)"), 1,
               "%s", h.f.log);
  cr_assert_eq(fl_test_count(h.log_path, "round 2: training failed: no data today (round 2)"), 1,
               "%s", h.log_path);
  cr_assert_eq(fl_test_count(h.f.log, "initial model from"), 1, "%s", h.f.log);
  free(r2);
  free(r3);
  h_free(&h);
}

Test(libclient, long_fit_on_a_worker_keeps_the_connection, .timeout = 240) {
  harness h;
  h_init(&h);
  char init[700], idle[32], beat[32];
  write_init_model(&h, "external:toy:8", init, sizeof init);
  /* Idle timeouts of ten heartbeats (scaled like every wait of the suite), and a fit of
   * two and a half idle timeouts, the server's and the client's. */
  double hb = 0.3 * fl_test_time_scale(), to = 10 * hb;
  snprintf(idle, sizeof idle, "%g", to);
  snprintf(beat, sizeof beat, "%g", hb);
  pid_t s = fl_test_fed_server_ready(&h.f, "server.log", "--model", "external:toy:8",
                                     "--init-model", init, "--rounds", "1",
                                     "--clients-per-round", "1", "--idle-timeout", idle,
                                     "--heartbeat", beat, NULL);
  cr_assert_gt(s, 0, "no server (%s)", h.f.log);
  fl_client *c = h_client(&h, 0);
  cr_assert_eq(fl_client_set_model(c, "toy", 8), 0);
  cr_assert_eq(fl_client_set_heartbeat(c, hb, to), 0);
  cr_assert_eq(fl_client_on_fit(c, t_fit), 0);
  h.t[0].sleep_s = 2.5 * to;
  h_run(&h, 90);
  cr_assert_eq(fl_test_wait(s, 60), 0, "fl-server failed (%s)", h.f.log);
  cr_assert_eq(h.t[0].status, 0, "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_test_count(h.f.metrics, "\"updates_accepted\":1"), 1, "%s", h.f.metrics);
  cr_assert_eq(fl_test_count(h.log_path, "joined the federation"), 1, "it joined again (%s)", h.log_path);
  cr_assert_eq(fl_test_count(h.f.log, "dropped out"), 0, "%s", h.f.log);
  h_free(&h);
}

typedef struct runner { fl_client *c; int rc; } runner;

static void *run_thread(void *arg) {
  runner *r = arg;
  r->rc = fl_client_run(r->c);
  return NULL;
}

Test(libclient, stop_from_another_thread_cancels_the_fit, .timeout = 120) {
  harness h;
  h_init(&h);
  char init[700];
  write_init_model(&h, "external:toy:8", init, sizeof init);
  pid_t s = fl_test_fed_server_ready(&h.f, "server.log", "--model", "external:toy:8",
                                     "--init-model", init, "--rounds", "1",
                                     "--clients-per-round", "1", NULL);
  cr_assert_gt(s, 0, "no server (%s)", h.f.log);
  fl_client *c = h_client(&h, 0);
  cr_assert_eq(fl_client_set_model(c, "toy", 8), 0);
  cr_assert_eq(fl_client_on_fit(c, t_fit), 0);
  h.t[0].until_cancelled = 1;
  runner r = {c, 1};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, run_thread, &r), 0);
  double waited = 0;
  while (!atomic_load(&h.t[0].fit_started) && waited < 60 * fl_test_time_scale()) {
    usleep(10000);
    waited += 0.01;
  }
  cr_assert(atomic_load(&h.t[0].fit_started), "the fit never started (%s)", h.log_path);
  fl_client_stop(c);
  fl_client_stop(c); /* any number of times */
  pthread_join(th, NULL);
  cr_assert_eq(r.rc, FL_CLIENT_ESTOPPED, "%s", fl_client_err_name(r.rc));
  cr_assert(atomic_load(&h.t[0].saw_cancel), "the fit was not told");
  cr_assert(fl_test_wait_for(h.f.log, "client-0001 says goodbye: client stopping", 30), "%s",
            h.f.log);
  fl_test_wait(s, 1); /* the server waits for clients that never come: killed */
  h_free(&h);
}

Test(libclient, a_client_of_another_model_is_refused, .timeout = 120) {
  harness h;
  h_init(&h);
  pid_t s = fl_test_fed_server_ready(&h.f, "server.log", "--model", "external:toy:8", NULL);
  cr_assert_gt(s, 0, "no server (%s)", h.f.log);
  fl_client *other = h_client(&h, 0), *none = h_client(&h, 1);
  cr_assert_eq(fl_client_set_model(other, "other", 8), 0);
  cr_assert_eq(fl_client_on_fit(other, t_fit), 0);
  cr_assert_eq(fl_client_on_fit(none, t_fit), 0);
  h_run(&h, 60);
  cr_assert_eq(h.t[0].status, FL_CLIENT_EMODEL, "%s", fl_client_err_name(h.t[0].status));
  cr_assert_eq(h.t[1].status, FL_CLIENT_EMODEL, "%s", fl_client_err_name(h.t[1].status));
  const char *m = fl_client_errmsg(other);
  cr_assert(strstr(m, "'external:other:8'") && strstr(m, "'external:toy:8'"), "%s", m);
  cr_assert(strstr(fl_client_errmsg(none), "declares no model"), "%s", fl_client_errmsg(none));
  cr_assert_eq(fl_test_count(h.f.log, "refused: the client declares model 'external:other:8' (8 parameters), but this federation trains 'external:toy:8' (8 parameters)"), 1, "%s", h.f.log);
  cr_assert_eq(h.t[0].fits + h.t[1].fits, 0);
  fl_test_wait(s, 1);
  h_free(&h);
}

/* ---- error feedback: top-k updates lose nothing over time, across a reconnection ---- */

#define EF_N 8
#define EF_ROUNDS 6

typedef struct ef_state {
  harness *h;
  atomic_int round4_started, restarted;
  pid_t server;
  int restarts;
  uv_timer_t poll;
} ef_state;

static ef_state ef;

/* Every fit adds the same step to every parameter: 0.01 (i + 1). */
static float ef_step(uint64_t i) { return 0.01f * (float)(i + 1); }

/* The first fit of round 4 waits until the server it trains for has been replaced. */
static int ef_fit(fl_client *c, fl_client_task *task) {
  (void)c;
  const fl_client_fit_config *cfg = fl_client_task_config(task);
  if (cfg->round == 4 && !atomic_load(&ef.restarted)) {
    atomic_store(&ef.round4_started, 1);
    while (!atomic_load(&ef.restarted)) usleep(10000);
  }
  float *p = fl_client_task_params(task);
  for (uint64_t i = 0; i < EF_N; i++) p[i] += ef_step(i);
  fl_client_task_metrics(task)->num_examples = 10;
  return 0;
}

static int ef_init(fl_client *c, float *params, uint64_t n) {
  (void)c;
  for (uint64_t i = 0; i < n; i++) params[i] = 0;
  return 0;
}

static pid_t ef_server(harness *h, const char *log, int resume) {
  return fl_test_fed_server_ready(&h->f, log, "--model", "external:ef:8", "--rounds", "6",
                                  "--clients-per-round", "1", "--uplink", "topk:0.25",
                                  "--max-update-norm", "0", resume ? "--resume" : NULL, NULL);
}

/* On the loop thread: once round 4's fit waits, the server is stopped (SIGTERM) and a new
 * one resumes from its checkpoint; then the fit may go on. */
static void ef_poll(uv_timer_t *tm) {
  (void)tm;
  if (ef.restarts || !atomic_load(&ef.round4_started)) return;
  ef.restarts = 1;
  kill(ef.server, SIGTERM);
  cr_assert_eq(fl_test_wait(ef.server, 60), 0, "the first server did not stop cleanly");
  ef.server = ef_server(ef.h, "server2.log", 1);
  cr_assert_gt(ef.server, 0, "the second server did not start");
  atomic_store(&ef.restarted, 1);
  uv_timer_stop(&ef.poll);
  uv_close((uv_handle_t *)&ef.poll, NULL);
}

/* The model the server should end with: what top-2-of-8 with error feedback sends each
 * round, summed (the largest magnitudes, the first by index among equal ones). */
static void ef_expected(double *model) {
  double residual[EF_N] = {0};
  for (int i = 0; i < EF_N; i++) model[i] = 0;
  for (int r = 0; r < EF_ROUNDS; r++) {
    float x[EF_N];
    for (int i = 0; i < EF_N; i++) x[i] = (float)(residual[i] + ef_step((uint64_t)i));
    for (int pick = 0; pick < 2; pick++) {
      int best = -1;
      for (int i = 0; i < EF_N; i++)
        if (x[i] != 0 && (best < 0 || fabsf(x[i]) > fabsf(x[best]))) best = i;
      model[best] += x[best];
      x[best] = 0;
    }
    for (int i = 0; i < EF_N; i++) residual[i] = x[i];
  }
}

Test(libclient, topk_error_feedback_survives_a_reconnection, .timeout = 240) {
  harness h;
  h_init(&h);
  memset(&ef, 0, sizeof ef);
  ef.h = &h;
  ef.server = ef_server(&h, "server.log", 0);
  cr_assert_gt(ef.server, 0, "no server (%s)", h.f.dir);
  fl_client *c = h_client(&h, 0);
  cr_assert_eq(fl_client_set_model(c, "ef", EF_N), 0);
  cr_assert_eq(fl_client_on_fit(c, ef_fit), 0);
  cr_assert_eq(fl_client_on_params(c, ef_init, NULL), 0);
  uv_timer_init(&h.loop, &ef.poll);
  uv_timer_start(&ef.poll, ef_poll, 20, 20);
  h_run(&h, 180);
  cr_assert_eq(fl_test_wait(ef.server, 60), 0, "the second server failed (%s)", h.f.dir);
  cr_assert_eq(h.t[0].status, 0, "%s", fl_client_errmsg(c));
  cr_assert_eq(ef.restarts, 1);
  char log2[700];
  fl_test_fed_path(&h.f, "server2.log", log2, sizeof log2);
  cr_assert_eq(fl_test_count(log2, "resuming from"), 1, "%s", log2);

  double want[EF_N];
  ef_expected(want);
  char err[512], *spec;
  uint64_t id;
  float *got;
  size_t n;
  cr_assert_eq(fl_modelfile_load(h.f.model, &spec, &id, &got, &n, err, sizeof err), 0, "%s", err);
  cr_assert_eq(n, EF_N);
  int moved = 0;
  for (int i = 0; i < EF_N; i++) {
    cr_assert(fabs(got[i] - want[i]) < 1e-5, "parameter %d: %.6f, expected %.6f", i, got[i], want[i]);
    moved += got[i] > 0;
  }
  /* Without error feedback only the two largest steps would ever be sent. */
  cr_assert_geq(moved, 5, "only %d parameters moved", moved);
  free(spec);
  free(got);
  h_free(&h);
}
