/* A federated client whose model and training loop are its own: logistic regression,
 * written here by hand (no part of fl's training core), federated through libflclient.
 *
 * Each client makes its own data: D features drawn around a per-client offset (so that
 * the clients' data differ), labelled by a rule every client shares (a fixed weight
 * vector, from --task-seed) with some label noise, split 80/20 into training and test
 * examples.  The federation learns the rule none of them could see whole.
 *
 * The model lives in this program's own structure (struct model); the library asks for
 * it and hands it back through the get_params / set_params callbacks, and calls fit and
 * evaluate on a thread of its own while it keeps the connection alive.  SIGINT or
 * SIGTERM stops the client from another thread (fl_client_stop).
 *
 *   fl-server --model external:logreg20:21 --fed-eval-every 1 ...
 *   logreg --server HOST:PORT --ca ca.crt --cert client-0001.crt --key client-0001.key
 *          [--server-name NAME] [--seed N] [--samples N] [--features D] [--task-seed N]
 *
 * Build: cc -std=c99 $(pkg-config --cflags flclient) -o logreg logreg.c
 *           $(pkg-config --libs flclient) -lpthread -lm */
#define _POSIX_C_SOURCE 200809L
#include <fl/client.h>

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FEATURES 1000

/* The model: weights w[0..d) and bias b, laid out as the federation's flat parameters
 * [w0, ..., w(d-1), b]. */
struct model {
  int d;
  float w[MAX_FEATURES];
  float b;
};

struct data {
  int n, d;
  float *x; /* [n][d] */
  float *y; /* [n] 0 or 1 */
};

struct client {
  struct model model;
  struct data train, test;
};

/* ---- data ---- */

/* A small generator of our own (xorshift64*), so the example needs nothing else. */
static double uniform(unsigned long long *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return (double)((*s * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static double gaussian(unsigned long long *s) {
  double u = uniform(s), v = uniform(s);
  return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static int make_data(struct client *cl, int n, int d, unsigned long long seed,
                     unsigned long long task_seed) {
  float rule[MAX_FEATURES];
  unsigned long long ts = task_seed * 2654435761ULL + 1, s = seed * 0x9E3779B97F4A7C15ULL + 7;
  for (int j = 0; j < d; j++) rule[j] = (float)gaussian(&ts);
  float shift[MAX_FEATURES];
  for (int j = 0; j < d; j++) shift[j] = (float)(0.5 * gaussian(&s));
  int n_test = n / 5, n_train = n - n_test;
  struct data *sets[2] = {&cl->train, &cl->test};
  int sizes[2] = {n_train, n_test};
  for (int k = 0; k < 2; k++) {
    struct data *ds = sets[k];
    ds->n = sizes[k];
    ds->d = d;
    ds->x = malloc((size_t)ds->n * (size_t)d * sizeof *ds->x);
    ds->y = malloc((size_t)ds->n * sizeof *ds->y);
    if (!ds->x || !ds->y) return -1;
    for (int i = 0; i < ds->n; i++) {
      double z = 0.3; /* the rule's bias */
      for (int j = 0; j < d; j++) {
        float v = shift[j] + (float)gaussian(&s);
        ds->x[(size_t)i * d + j] = v;
        z += rule[j] * v;
      }
      int label = z > 0;
      if (uniform(&s) < 0.05) label = !label; /* 5% label noise */
      ds->y[i] = (float)label;
    }
  }
  return 0;
}

/* ---- the model: logistic regression, by hand ---- */

static double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

static double predict(const struct model *m, const float *x) {
  double z = m->b;
  for (int j = 0; j < m->d; j++) z += (double)m->w[j] * x[j];
  return sigmoid(z);
}

/* Mean log loss and accuracy over a data set. */
static void measure(const struct model *m, const struct data *ds, double *loss, double *acc) {
  double l = 0;
  int right = 0;
  for (int i = 0; i < ds->n; i++) {
    double p = predict(m, ds->x + (size_t)i * ds->d);
    double y = ds->y[i];
    l -= y * log(p + 1e-12) + (1 - y) * log(1 - p + 1e-12);
    right += (p > 0.5) == (y > 0.5);
  }
  *loss = ds->n ? l / ds->n : 0;
  *acc = ds->n ? (double)right / ds->n : 0;
}

/* Mini-batch SGD on the log loss, with FedProx's proximal term when the server asks. */
static void train(struct model *m, const struct data *ds, const fl_client_fit_config *cfg,
                  const float *global, const fl_client_task *task) {
  int epochs = cfg->epochs ? (int)cfg->epochs : 1;
  int batch = cfg->batch_size ? (int)cfg->batch_size : 16;
  double lr = cfg->lr > 0 ? cfg->lr : 0.1, mu = cfg->prox_mu;
  float gw[MAX_FEATURES];
  unsigned long long s = cfg->seed + 1;
  int *order = malloc((size_t)ds->n * sizeof *order);
  if (!order) return;
  for (int i = 0; i < ds->n; i++) order[i] = i;
  for (int e = 0; e < epochs && !fl_client_task_cancelled(task); e++) {
    for (int i = ds->n - 1; i > 0; i--) { /* shuffle */
      int k = (int)(uniform(&s) * (i + 1));
      int t = order[i];
      order[i] = order[k];
      order[k] = t;
    }
    for (int start = 0; start < ds->n; start += batch) {
      int end = start + batch < ds->n ? start + batch : ds->n;
      double gb = 0;
      memset(gw, 0, sizeof(float) * (size_t)m->d);
      for (int i = start; i < end; i++) {
        const float *x = ds->x + (size_t)order[i] * ds->d;
        double err = predict(m, x) - ds->y[order[i]];
        for (int j = 0; j < m->d; j++) gw[j] += (float)(err * x[j]);
        gb += err;
      }
      double scale = lr / (end - start);
      for (int j = 0; j < m->d; j++)
        m->w[j] -= (float)(scale * gw[j] + lr * mu * (m->w[j] - global[j]));
      m->b -= (float)(scale * gb + lr * mu * (m->b - global[m->d]));
    }
  }
  free(order);
}

/* ---- the library's callbacks ---- */

/* The model as flat parameters, and back. */
static int get_params(fl_client *c, float *params, uint64_t n) {
  struct client *cl = fl_client_get_data(c);
  if (n != (uint64_t)cl->model.d + 1) return FL_CLIENT_EINVAL;
  memcpy(params, cl->model.w, sizeof(float) * (size_t)cl->model.d);
  params[cl->model.d] = cl->model.b;
  return 0;
}

static int set_params(fl_client *c, const float *params, uint64_t n) {
  struct client *cl = fl_client_get_data(c);
  if (n != (uint64_t)cl->model.d + 1) return FL_CLIENT_EINVAL;
  memcpy(cl->model.w, params, sizeof(float) * (size_t)cl->model.d);
  cl->model.b = params[cl->model.d];
  return 0;
}

/* set_params has loaded the global model; get_params reads the result back. */
static int fit(fl_client *c, fl_client_task *task) {
  struct client *cl = fl_client_get_data(c);
  train(&cl->model, &cl->train, fl_client_task_config(task), fl_client_task_global(task), task);
  fl_client_metrics *m = fl_client_task_metrics(task);
  m->num_examples = (uint64_t)cl->train.n;
  measure(&cl->model, &cl->train, &m->loss, &m->accuracy);
  if (!isfinite(m->loss))
    return fl_client_task_error(task, FL_CLIENT_ECALLBACK, "the loss diverged (lr %g)",
                                (double)fl_client_task_config(task)->lr);
  return 0;
}

static int evaluate(fl_client *c, fl_client_task *task) {
  struct client *cl = fl_client_get_data(c);
  fl_client_metrics *m = fl_client_task_metrics(task);
  m->num_examples = (uint64_t)cl->test.n;
  measure(&cl->model, &cl->test, &m->loss, &m->accuracy);
  return 0;
}

static void log_line(fl_client *c, int level, const char *msg) {
  static const char *const names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  fprintf(stderr, "%-5s [%s] %s\n", names[level < 0 ? 0 : level > 3 ? 3 : level],
          fl_client_name(c), msg);
}

/* ---- stopping from another thread ---- */

struct stopper {
  fl_client *c;
  sigset_t set;
};

/* Waits for SIGINT or SIGTERM (blocked in every other thread) and stops the client;
 * SIGUSR1 just ends the wait once the client is done. */
static void *wait_for_signal(void *arg) {
  struct stopper *st = arg;
  int sig = 0;
  sigwait(&st->set, &sig);
  if (sig != SIGUSR1) {
    fprintf(stderr, "logreg: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    fl_client_stop(st->c);
  }
  return NULL;
}

/* ---- main ---- */

static void usage(void) {
  fprintf(stderr,
          "usage: logreg --server HOST:PORT --ca FILE --cert FILE --key FILE [--server-name NAME]\n"
          "              [--name NAME] [--seed N] [--samples N] [--features D] [--task-seed N]\n"
          "              [--model-name NAME]\n");
}

int main(int argc, char **argv) {
  const char *server = NULL, *ca = NULL, *cert = NULL, *key = NULL, *server_name = NULL;
  const char *name = "logreg", *model_name = NULL;
  unsigned long long seed = 1, task_seed = 42;
  int samples = 1000, d = 20;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) { usage(); return 2; }
    i++;
    if (strcmp(a, "--server") == 0) server = v;
    else if (strcmp(a, "--ca") == 0) ca = v;
    else if (strcmp(a, "--cert") == 0) cert = v;
    else if (strcmp(a, "--key") == 0) key = v;
    else if (strcmp(a, "--server-name") == 0) server_name = v;
    else if (strcmp(a, "--name") == 0) name = v;
    else if (strcmp(a, "--model-name") == 0) model_name = v;
    else if (strcmp(a, "--seed") == 0) seed = strtoull(v, NULL, 10);
    else if (strcmp(a, "--task-seed") == 0) task_seed = strtoull(v, NULL, 10);
    else if (strcmp(a, "--samples") == 0) samples = atoi(v);
    else if (strcmp(a, "--features") == 0) d = atoi(v);
    else { usage(); return 2; }
  }
  if (!server || !ca || !cert || !key || samples < 5 || d < 1 || d > MAX_FEATURES) {
    usage();
    return 2;
  }

  static struct client cl; /* the model's weights: a few KiB */
  cl.model.d = d;          /* initial model: all zero */
  if (make_data(&cl, samples, d, seed, task_seed) != 0) {
    fprintf(stderr, "logreg: out of memory\n");
    return 1;
  }
  char model[80];
  snprintf(model, sizeof model, "%s", model_name ? model_name : "");
  if (!model_name) snprintf(model, sizeof model, "logreg%d", d);

  fl_client *c;
  int rc = fl_client_new(&c);
  if (rc) {
    fprintf(stderr, "logreg: %s\n", fl_client_strerror(rc));
    return 1;
  }
  fl_client_set_data(c, &cl);
  if ((rc = fl_client_set_server(c, server)) != 0 ||
      (rc = fl_client_set_tls(c, ca, cert, key, server_name)) != 0 ||
      (rc = fl_client_set_name(c, name)) != 0 ||
      (rc = fl_client_set_model(c, model, (uint64_t)d + 1)) != 0 ||
      (rc = fl_client_set_num_examples(c, (uint64_t)cl.train.n)) != 0 ||
      (rc = fl_client_on_params(c, get_params, set_params)) != 0 ||
      (rc = fl_client_on_fit(c, fit)) != 0 || (rc = fl_client_on_evaluate(c, evaluate)) != 0 ||
      (rc = fl_client_on_log(c, log_line, FL_CLIENT_LOG_INFO)) != 0) {
    fprintf(stderr, "logreg: %s\n", fl_client_errmsg(c));
    fl_client_free(c);
    return 1;
  }

  /* Signals go to the stopper thread only: blocked here, before any thread starts. */
  struct stopper st;
  st.c = c;
  sigemptyset(&st.set);
  sigaddset(&st.set, SIGINT);
  sigaddset(&st.set, SIGTERM);
  sigaddset(&st.set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &st.set, NULL);
  pthread_t stopper;
  pthread_create(&stopper, NULL, wait_for_signal, &st);

  fprintf(stderr, "logreg: %d training and %d test examples, %d features, model external:%s:%d\n",
          cl.train.n, cl.test.n, d, model, d + 1);
  rc = fl_client_run(c); /* until the server says training is done */
  if (rc) fprintf(stderr, "logreg: %s: %s\n", fl_client_err_name(rc), fl_client_errmsg(c));
  else fprintf(stderr, "logreg: training is done\n");

  pthread_kill(stopper, SIGUSR1);
  pthread_join(stopper, NULL);
  double loss, acc;
  measure(&cl.model, &cl.test, &loss, &acc);
  fprintf(stderr, "logreg: the model this client holds: test loss %.4f, accuracy %.4f\n", loss, acc);
  fl_client_free(c);
  free(cl.train.x);
  free(cl.train.y);
  free(cl.test.x);
  free(cl.test.y);
  return rc ? 1 : 0;
}
