/* A read-only HTTP endpoint beside a libuv loop: libmicrohttpd serves three documents,
 * "/" (a page given once), "/metrics" and "/status" (built on the loop's thread when a
 * request wants them fresh), and answers everything else with a clean 4xx.
 *
 * Threads: libmicrohttpd runs on a thread of its own (its internal polling thread, one
 * for every connection).  The loop's state is never read there: a request that finds its
 * document older than FL_HTTP_FRESH_MS (or marked stale) asks the loop for a new one (a
 * uv_async) and waits at most FL_HTTP_WAIT_MS for it under the endpoint's mutex, then
 * serves a copy of the newest it has.  So a slow or hostile HTTP peer costs the loop at
 * most one build of each document per FL_HTTP_FRESH_MS, and nothing is built while no
 * one asks; a busy loop makes answers staler, never the loop slower.
 * Why not libmicrohttpd's external select driven by libuv (uv_poll on its sockets)?  The
 * parsing of requests and the writing of answers would then run on the loop's thread,
 * and MHD's set of sockets changes with every connection, which uv_poll handles would
 * have to follow; a thread with one mutex is simpler and keeps HTTP off the rounds.
 *
 * Limits (a peer cannot hold the endpoint): at most max_connections at once and a
 * quarter of them per address (a host name with several addresses has a daemon on each,
 * and they share max_connections), FL_HTTP_MEMORY bytes of request per connection (larger
 * headers get 431), and a connection idle for timeout_s is closed.  Methods other than
 * GET and HEAD get 405, unknown paths 404, a request with a body 413.
 *
 * Ownership: fl_http_start returns an endpoint the caller frees with fl_http_free on the
 * loop's thread, before the loop's last run (its async handle closes there). */
#ifndef FL_SERVER_HTTP_H
#define FL_SERVER_HTTP_H

#include <stddef.h>
#include <uv.h>

#define FL_HTTP_FRESH_MS 100
#define FL_HTTP_WAIT_MS 500
#define FL_HTTP_MEMORY (32 * 1024)

typedef struct fl_http fl_http;

/* The documents built on the loop's thread. */
enum { FL_HTTP_METRICS, FL_HTTP_STATUS, FL_HTTP_DOCS };

/* On the loop's thread: document doc (FL_HTTP_METRICS or FL_HTTP_STATUS), malloc'd
 * (ownership passes to the endpoint), and its length.  0, or FL_E* (the endpoint keeps
 * what it had). */
typedef int (*fl_http_build_cb)(void *arg, int doc, char **out, size_t *len);

typedef struct fl_http_options {
  const char *host;          /* numeric address or name to bind ("127.0.0.1", "::"); a
                              * name: each of its addresses (netaddr.h) */
  int port;                  /* 0: any (fl_http_port says which) */
  unsigned max_connections;  /* at once, every peer together */
  unsigned timeout_s;        /* an idle connection is closed after this long */
  const char *page;          /* "/": static, NUL-terminated, outlives the endpoint */
  fl_http_build_cb build;
  void *arg;
} fl_http_options;

/* Binds and starts serving.  0, or FL_E* with the reason in err. */
int fl_http_start(uv_loop_t *loop, const fl_http_options *o, fl_http **out, char *err, size_t errlen);
int fl_http_port(const fl_http *h);
/* Any thread: the documents are stale (a round ended): the next request waits for new
 * ones.  NULL is ignored. */
void fl_http_invalidate(fl_http *h);
/* Stops the HTTP thread, then closes the async handle; the endpoint is freed when it
 * has closed (the loop must run once more).  NULL is ignored. */
void fl_http_free(fl_http *h);

#endif
