/* libflclient: a client's life outside a run: new, free, and the setters that configure
 * it.  Every setter checks its arguments and says what is wrong in fl_client_errmsg. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lib_internal.h"
#include "model.h"

#define MAX_NAME 64

int fl_client_new(fl_client **out) {
  if (!out) return FL_CLIENT_EINVAL;
  *out = NULL;
  fl_client *c = calloc(1, sizeof *c);
  if (!c) return FL_CLIENT_ENOMEM;
  if (pthread_mutex_init(&c->mu, NULL) != 0) {
    free(c);
    return FL_CLIENT_ENOMEM;
  }
  snprintf(c->name, sizeof c->name, "client");
  c->max_retries = 20;
  c->retry_base = 0.2;
  c->retry_max = 30;
  c->heartbeat = 15;
  c->idle_timeout = 120;
  c->threading = FL_CLIENT_THREAD_WORKER;
  c->encodings = FL_CLIENT_ENC_ALL;
  c->frozen_cache = 1;
  c->log_level = FL_CLIENT_LOG_INFO;
  c->state = FLC_IDLE;
  *out = c;
  return 0;
}

int fl_client_free(fl_client *c) {
  if (!c) return 0;
  if (c->running) return flc__errf(c, FL_CLIENT_ESTATE, "fl_client_free: the client is running");
  if (c->throttle) c->throttle->holders--;
  fl_tls_config_free(c->tls);
  free(c->host);
  free(c->model_spec);
  free(c->fs_sum);
  free(c->fs_sq);
  free(c->server_spec);
  free(c->residual);
  flc__frozen_drop(c);
  flc__secagg_reset(c);
  pthread_mutex_destroy(&c->mu);
  free(c);
  return 0;
}

void fl_client_set_data(fl_client *c, void *data) { c->data = data; }
void *fl_client_get_data(const fl_client *c) { return c->data; }
const char *fl_client_name(const fl_client *c) { return c->name; }
const char *fl_client_model(const fl_client *c) { return c->model_spec; }
uint64_t fl_client_num_params(const fl_client *c) { return c->model_spec ? c->num_params : 0; }

/* Configuration changes only while the client is not running. */
#define CONFIGURABLE(c, what)                                                              \
  do {                                                                                     \
    if (!(c)) return FL_CLIENT_EINVAL;                                                     \
    if ((c)->running)                                                                      \
      return flc__errf((c), FL_CLIENT_ESTATE, "%s: not while the client runs", (what));   \
  } while (0)

/* "HOST:PORT" or "[V6ADDR]:PORT", port 1-65535. */
int fl_client_set_server(fl_client *c, const char *host_port) {
  CONFIGURABLE(c, "fl_client_set_server");
  if (!host_port) return flc__errf(c, FL_CLIENT_EINVAL, "fl_client_set_server: no address");
  const char *colon = strrchr(host_port, ':');
  const char *h = host_port, *he = colon;
  if (colon && *h == '[') {
    if (he - h < 2 || he[-1] != ']') colon = NULL;
    h++;
    he--;
  } else if (colon && memchr(host_port, ':', (size_t)(colon - host_port))) {
    colon = NULL; /* an IPv6 address needs its brackets */
  }
  char *end = NULL;
  long port = colon && colon[1] ? strtol(colon + 1, &end, 10) : -1;
  if (!colon || he <= h || !end || *end || port < 1 || port > 65535)
    return flc__errf(c, FL_CLIENT_EINVAL,
                     "fl_client_set_server: expected HOST:PORT or [IPV6]:PORT with a port from "
                     "1 to 65535, got '%s'", host_port);
  char *host = strndup(h, (size_t)(he - h));
  if (!host) return FL_CLIENT_ENOMEM;
  free(c->host);
  c->host = host;
  c->port = (int)port;
  return 0;
}

int fl_client_set_tls(fl_client *c, const char *ca_file, const char *cert_file,
                      const char *key_file, const char *server_name) {
  CONFIGURABLE(c, "fl_client_set_tls");
  if (!ca_file || !cert_file || !key_file)
    return flc__errf(c, FL_CLIENT_EINVAL,
                     "fl_client_set_tls: the CA file, the certificate and its key are required");
  fl_tls_options o = {.is_server = 0, .ca_file = ca_file, .cert_file = cert_file,
                      .key_file = key_file, .server_name = server_name,
                      .resume_sessions = 1}; /* a returning client skips the public-key work */
  fl_tls_config *tls;
  char err[400];
  int rc = fl_tls_config_create(&o, &tls, err, sizeof err);
  if (rc) {
    int code = rc == FL_ENOENT ? FL_CLIENT_ENOENT : rc == FL_ENOMEM ? FL_CLIENT_ENOMEM
                                                                    : FL_CLIENT_ETLS;
    return flc__errf(c, code, "fl_client_set_tls: %s", err[0] ? err : fl_strerror(rc));
  }
  fl_tls_config_free(c->tls);
  c->tls = tls;
  return 0;
}

int fl_client_set_name(fl_client *c, const char *name) {
  CONFIGURABLE(c, "fl_client_set_name");
  if (!name || !name[0]) return flc__errf(c, FL_CLIENT_EINVAL, "fl_client_set_name: empty name");
  snprintf(c->name, sizeof c->name, "%s", name);
  return 0;
}

/* Takes the model m as this client's declaration. */
static int declare(fl_client *c, const fl_model *m) {
  char *spec = strdup(fl_model_spec(m));
  if (!spec) return FL_CLIENT_ENOMEM;
  free(c->model_spec);
  c->model_spec = spec;
  c->model_id = fl_model_id(m);
  c->num_params = fl_model_num_params(m);
  return 0;
}

int fl_client_set_model(fl_client *c, const char *name, uint64_t num_params) {
  CONFIGURABLE(c, "fl_client_set_model");
  size_t len = name ? strlen(name) : 0;
  if (len == 0 || len > MAX_NAME || strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                 "0123456789._-") != len)
    return flc__errf(c, FL_CLIENT_EINVAL,
                     "fl_client_set_model: the name must be 1 to %d of A-Z a-z 0-9 . _ -, got '%s'",
                     MAX_NAME, name ? name : "(null)");
  if (num_params < 1 || num_params > FLC__MAX_PARAMS)
    return flc__errf(c, FL_CLIENT_EINVAL,
                     "fl_client_set_model: %llu parameters (from 1 to %llu)",
                     (unsigned long long)num_params, (unsigned long long)FLC__MAX_PARAMS);
  char spec[MAX_NAME + 40], err[256];
  snprintf(spec, sizeof spec, "external:%s:%llu", name, (unsigned long long)num_params);
  fl_model *m;
  int rc = fl_model_create(spec, &m, err, sizeof err);
  if (rc) return flc__errf(c, flc__code(rc), "fl_client_set_model: %s", err);
  rc = declare(c, m);
  fl_model_free(m);
  return rc;
}

int fl_client_set_model_spec(fl_client *c, const char *spec) {
  CONFIGURABLE(c, "fl_client_set_model_spec");
  if (!spec) return flc__errf(c, FL_CLIENT_EINVAL, "fl_client_set_model_spec: no spec");
  fl_model *m;
  char err[256];
  int rc = fl_model_create(spec, &m, err, sizeof err);
  if (rc) return flc__errf(c, rc == FL_ENOMEM ? FL_CLIENT_ENOMEM : FL_CLIENT_EINVAL,
                           "fl_client_set_model_spec: %s", err);
  rc = declare(c, m);
  fl_model_free(m);
  return rc;
}

int fl_client_set_num_examples(fl_client *c, uint64_t n) {
  CONFIGURABLE(c, "fl_client_set_num_examples");
  c->num_examples = n;
  return 0;
}

int fl_client_set_feature_stats(fl_client *c, uint64_t count, const double *sum,
                                const double *sum_sq, size_t dim) {
  CONFIGURABLE(c, "fl_client_set_feature_stats");
  if (!count || !dim || !sum || !sum_sq || dim > ((size_t)1 << 24))
    return flc__errf(c, FL_CLIENT_EINVAL, "fl_client_set_feature_stats: count and dim must "
                     "be 1 or more (dim at most 2^24), sum and sum_sq given");
  for (size_t j = 0; j < dim; j++)
    if (!isfinite(sum[j]) || !isfinite(sum_sq[j]) || sum_sq[j] < 0)
      return flc__errf(c, FL_CLIENT_EINVAL, "fl_client_set_feature_stats: feature %zu: sum "
                       "%g, sum of squares %g", j, sum[j], sum_sq[j]);
  double *s = malloc(sizeof *s * dim), *q = malloc(sizeof *q * dim);
  if (!s || !q) {
    free(s);
    free(q);
    return flc__errf(c, FL_CLIENT_ENOMEM, "fl_client_set_feature_stats: out of memory");
  }
  memcpy(s, sum, sizeof *s * dim);
  memcpy(q, sum_sq, sizeof *q * dim);
  free(c->fs_sum);
  free(c->fs_sq);
  c->fs_sum = s, c->fs_sq = q, c->fs_dim = dim, c->fs_count = count;
  return 0;
}

int fl_client_set_reconnect(fl_client *c, unsigned max_retries, double base_s, double max_s) {
  CONFIGURABLE(c, "fl_client_set_reconnect");
  if (!(base_s > 0) || !(max_s >= base_s) || !isfinite(max_s))
    return flc__errf(c, FL_CLIENT_EINVAL,
                     "fl_client_set_reconnect: need 0 < base (%g s) <= max (%g s)", base_s, max_s);
  c->max_retries = max_retries;
  c->retry_base = base_s;
  c->retry_max = max_s;
  return 0;
}

int fl_client_set_heartbeat(fl_client *c, double interval_s, double idle_timeout_s) {
  CONFIGURABLE(c, "fl_client_set_heartbeat");
  /* Both become milliseconds in 32 bits. */
  if (!(interval_s >= 0.001) || !(idle_timeout_s >= 2 * interval_s) || idle_timeout_s > 4e6)
    return flc__errf(c, FL_CLIENT_EINVAL,
                     "fl_client_set_heartbeat: the idle timeout (%g s) must be at least twice the "
                     "heartbeat interval (%g s), which must be at least 1 ms, and at most 4e6 s",
                     idle_timeout_s, interval_s);
  c->heartbeat = interval_s;
  c->idle_timeout = idle_timeout_s;
  return 0;
}

int fl_client_set_encodings(fl_client *c, unsigned flags) {
  CONFIGURABLE(c, "fl_client_set_encodings");
  if (flags & ~(unsigned)FL_CLIENT_ENC_ALL)
    return flc__errf(c, FL_CLIENT_EINVAL, "fl_client_set_encodings: unknown flags 0x%x",
                     flags & ~(unsigned)FL_CLIENT_ENC_ALL);
  c->encodings = flags | FL_CLIENT_ENC_FLOAT32;
  return 0;
}

int fl_client_set_frozen_cache(fl_client *c, int on) {
  CONFIGURABLE(c, "fl_client_set_frozen_cache");
  c->frozen_cache = on != 0;
  if (!on) flc__frozen_drop(c);
  return 0;
}

int fl_client_set_threading(fl_client *c, int mode) {
  CONFIGURABLE(c, "fl_client_set_threading");
  if (mode != FL_CLIENT_THREAD_WORKER && mode != FL_CLIENT_THREAD_LOOP)
    return flc__errf(c, FL_CLIENT_EINVAL, "fl_client_set_threading: unknown mode %d", mode);
  c->threading = mode;
  return 0;
}

int fl_client_set_throttle(fl_client *c, fl_client_throttle *t) {
  CONFIGURABLE(c, "fl_client_set_throttle");
  if (c->throttle) c->throttle->holders--;
  c->throttle = t;
  if (t) t->holders++;
  return 0;
}

int fl_client_on_fit(fl_client *c, fl_client_task_cb fit) {
  CONFIGURABLE(c, "fl_client_on_fit");
  c->fit = fit;
  return 0;
}

int fl_client_on_evaluate(fl_client *c, fl_client_task_cb evaluate) {
  CONFIGURABLE(c, "fl_client_on_evaluate");
  c->evaluate = evaluate;
  return 0;
}

int fl_client_on_params(fl_client *c, fl_client_get_params_cb get_params,
                        fl_client_set_params_cb set_params) {
  CONFIGURABLE(c, "fl_client_on_params");
  if (set_params && !get_params)
    return flc__errf(c, FL_CLIENT_EINVAL,
                     "fl_client_on_params: set_params needs get_params (to read the trained "
                     "weights back)");
  c->get_params = get_params;
  c->set_params = set_params;
  return 0;
}

int fl_client_on_log(fl_client *c, fl_client_log_cb log, int min_level) {
  CONFIGURABLE(c, "fl_client_on_log");
  c->log = log;
  c->log_level = min_level;
  return 0;
}

int fl_client_on_finish(fl_client *c, fl_client_finish_cb finish) {
  CONFIGURABLE(c, "fl_client_on_finish");
  c->finish = finish;
  return 0;
}
