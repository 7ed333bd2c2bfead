/* The HTTP endpoint of http.h: libmicrohttpd on its own thread, documents the loop
 * builds and hands over under a mutex.  See http.h for the threads and the limits. */
#include "http.h"

#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "netaddr.h"

#define N_DOCS FL_HTTP_DOCS

struct fl_http {
  struct MHD_Daemon *d[FL_LISTEN_MAX_ADDRS]; /* one per address of the host (netaddr.h) */
  int nd;
  uv_async_t async;          /* the HTTP thread asks the loop for fresh documents */
  int async_open;
  fl_http_build_cb build;
  void *arg;
  const char *page;
  int port;
  /* Shared by the two threads, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv;         /* a gen moved on */
  char *doc[N_DOCS];
  size_t len[N_DOCS];
  uint64_t gen[N_DOCS];      /* builds of each so far */
  uint64_t built_ms[N_DOCS]; /* when it was last built (CLOCK_MONOTONIC); 0: stale */
  unsigned want;             /* 1 << doc: asked of the loop */
};

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The loop's thread: builds what was asked outside the lock, swaps it in under it. */
static void on_async(uv_async_t *a) {
  fl_http *h = a->data;
  pthread_mutex_lock(&h->mu);
  unsigned want = h->want;
  h->want = 0;
  pthread_mutex_unlock(&h->mu);
  for (int i = 0; i < N_DOCS; i++) {
    if (!(want & 1u << i)) continue;
    char *doc = NULL;
    size_t len = 0;
    int rc = h->build(h->arg, i, &doc, &len);
    pthread_mutex_lock(&h->mu);
    if (rc == 0) {
      char *old = h->doc[i];
      h->doc[i] = doc;
      h->len[i] = len;
      doc = old;
      h->built_ms[i] = mono_ms();
    }
    h->gen[i]++; /* a failed build ends the wait too: the old document is served */
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    free(doc);
  }
}

void fl_http_invalidate(fl_http *h) {
  if (!h) return;
  pthread_mutex_lock(&h->mu);
  for (int i = 0; i < N_DOCS; i++) h->built_ms[i] = 0;
  pthread_mutex_unlock(&h->mu);
}

/* The HTTP thread: a copy of document i, fresh enough.  NULL when out of memory or none
 * was ever built (the loop did not answer in time). */
static char *copy_doc(fl_http *h, int i, size_t *len) {
  pthread_mutex_lock(&h->mu);
  uint64_t now = mono_ms();
  if (!h->built_ms[i] || now - h->built_ms[i] >= FL_HTTP_FRESH_MS) {
    uint64_t want = h->gen[i] + 1;
    h->want |= 1u << i;
    uv_async_send(&h->async);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += (long)FL_HTTP_WAIT_MS * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    while (h->gen[i] < want)
      if (pthread_cond_timedwait(&h->cv, &h->mu, &until) == ETIMEDOUT) break;
  }
  char *out = NULL;
  if (h->doc[i] && (out = malloc(h->len[i] + 1)) != NULL) {
    memcpy(out, h->doc[i], h->len[i]);
    *len = h->len[i];
  }
  pthread_mutex_unlock(&h->mu);
  return out;
}

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned code, const char *type,
                              void *body, size_t len, enum MHD_ResponseMemoryMode mode,
                              const char *allow) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
  if (!r) {
    if (mode == MHD_RESPMEM_MUST_FREE) free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
  if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
  enum MHD_Result rc = MHD_queue_response(conn, code, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result plain(struct MHD_Connection *conn, unsigned code, const char *text,
                             const char *allow) {
  return answer(conn, code, "text/plain; charset=utf-8", (void *)text, strlen(text),
                MHD_RESPMEM_PERSISTENT, allow);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_len, void **state) {
  fl_http *h = cls;
  (void)version;
  (void)upload;
  int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0, head = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
  if (!*state) { /* the first call: headers only; answer now, whatever the body */
    *state = h;
    if (!get && !head)
      return plain(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD: this endpoint is read-only\n",
                   "GET, HEAD");
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if ((cl && strcmp(cl, "0") != 0) ||
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
      return plain(conn, MHD_HTTP_CONTENT_TOO_LARGE, "a GET carries no body\n", NULL);
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0)
      return answer(conn, MHD_HTTP_OK, "text/html; charset=utf-8", (void *)h->page, strlen(h->page),
                    MHD_RESPMEM_PERSISTENT, NULL);
    int i = strcmp(url, "/metrics") == 0 ? FL_HTTP_METRICS : strcmp(url, "/status") == 0 ? FL_HTTP_STATUS : -1;
    if (i < 0) return plain(conn, MHD_HTTP_NOT_FOUND, "not found: try /, /metrics or /status\n", NULL);
    size_t len = 0;
    char *doc = copy_doc(h, i, &len);
    if (!doc) return plain(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready yet\n", NULL);
    return answer(conn, MHD_HTTP_OK,
                  i == FL_HTTP_METRICS ? "text/plain; version=0.0.4; charset=utf-8" : "application/json",
                  doc, len, MHD_RESPMEM_MUST_FREE, NULL);
  }
  *upload_len = 0; /* a body after an answer is dropped */
  return MHD_YES;
}

static void mhd_log(void *arg, const char *fmt, va_list ap) {
  (void)arg;
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
  fl_debug("http", "%s", msg);
}

int fl_http_start(uv_loop_t *loop, const fl_http_options *o, fl_http **out, char *err, size_t errlen) {
  *out = NULL;
  fl_http *h = calloc(1, sizeof *h);
  if (!h) return FL_ENOMEM;
  h->async.data = h;
  h->build = o->build;
  h->arg = o->arg;
  h->page = o->page;
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  int rc = FL_EIO;
  if (uv_async_init(loop, &h->async, on_async) != 0) {
    snprintf(err, errlen, "--http: libuv cannot create an async handle");
    goto fail;
  }
  h->async.data = h;
  h->async_open = 1;
  uv_unref((uv_handle_t *)&h->async); /* the loop ends with the run, whatever HTTP does */

  /* libmicrohttpd binds one address per daemon: a host name with several addresses
   * gets a daemon on each.  Which of them this host has, and the port (0: picked), come
   * from binding them as fl-server's own listeners do; the probe sockets are closed and
   * each daemon binds its address again on that port. */
  fl_listen_set set;
  char why[1024];
  int n = fl_listen_set_bind(&set, o->host, o->port, why, sizeof why);
  if (n < 0) {
    snprintf(err, errlen, "--http: %s", why);
    rc = n == FL_EINVAL ? FL_ECONFIG : FL_EIO;
    goto fail;
  }
  fl_listen_set_close(&set);
  unsigned conns = o->max_connections / (unsigned)n ? o->max_connections / (unsigned)n : 1;
  unsigned per_ip = conns / 4 ? conns / 4 : 1;
  for (int i = 0; i < n; i++) {
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (set.addr[i].ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->d[i] = MHD_start_daemon(flags, (uint16_t)set.port, NULL, NULL, on_request, h,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&set.addr[i],
                               MHD_OPTION_CONNECTION_LIMIT, conns,
                               MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
                               MHD_OPTION_CONNECTION_TIMEOUT, o->timeout_s,
                               MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)FL_HTTP_MEMORY,
                               MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                               MHD_OPTION_END);
    if (!h->d[i]) {
      char name[80];
      fl_addr_name((struct sockaddr *)&set.addr[i], name, sizeof name);
      snprintf(err, errlen, "--http: cannot listen on %s:%d (%s: in use, or not an address of "
               "this host)", o->host, o->port, name);
      goto fail;
    }
    h->nd++;
  }
  h->port = set.port;
  *out = h;
  return 0;
fail:
  fl_http_free(h);
  return rc;
}

int fl_http_port(const fl_http *h) { return h->port; }

static void on_closed(uv_handle_t *a) {
  fl_http *h = a->data;
  for (int i = 0; i < N_DOCS; i++) free(h->doc[i]);
  pthread_mutex_destroy(&h->mu);
  pthread_cond_destroy(&h->cv);
  free(h);
}

void fl_http_free(fl_http *h) {
  if (!h) return;
  for (int i = 0; i < h->nd; i++) MHD_stop_daemon(h->d[i]); /* joins its thread: nothing
                                                             * sends on async after */
  h->nd = 0;
  if (h->async_open) {
    uv_close((uv_handle_t *)&h->async, on_closed);
    return;
  }
  on_closed((uv_handle_t *)&h->async);
}
