/* common/conn.c and common/tls.c over real sockets on loopback: mutual authentication and
 * every way a peer is refused, frames both ways, a 100 MiB stream under backpressure,
 * misbehaving peers that must end alone, idle timeout, heartbeats, stalled readers.
 * Each test runs its own uv loop with server and client in it. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "conn.h"
#include "error.h"
#include "frame.h"
#include "testutil.h"
#include "tls.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif

enum mode { M_ECHO, M_STREAM, M_PUMP_TO, M_BURST };

typedef struct test_ctx test_ctx;
typedef struct peer {
  test_ctx *t;
  fl_conn *c;
  int opened, closed, err;
  char reason[256], id[65];
  uint64_t frames, bytes, hb;
  int pause_after_open;  /* client: never read (a stalled reader) */
  int ping;              /* client: keep one frame in flight to an echo server */
  int pause_after_first; /* client: pause after the first frame (the test resumes it) */
  uint64_t opened_at, closed_at; /* loop time of on_open and on_close */
  /* streaming sender */
  uint64_t sent, total;
  size_t max_queued;
  uint8_t *chunk;
} peer;

#define MAX_PEERS 16
struct test_ctx {
  uv_loop_t loop;
  uv_timer_t tick;
  fl_tls_config *srv_tls;
  fl_listener *l;
  enum mode mode;
  char pump_to[65];      /* M_PUMP_TO: stream frames to the peer with this id */
  peer srv[MAX_PEERS];
  int nsrv;
  peer cli[MAX_PEERS];
  int ncli;
  fl_tls_config *cli_tls[MAX_PEERS];
  int ncli_tls;
  int shared_tls; /* the configurations belong to the caller */
};

static const char *certs(void) { return fl_test_certs_dir(); }

static fl_tls_config *tls_cfg(int server, const char *ca, const char *cert, const char *key,
                              const char *crl, const char *name) {
  fl_tls_options o = {.is_server = server, .ca_file = ca, .cert_file = cert, .key_file = key,
                      .crl_file = crl, .server_name = name};
  fl_tls_config *cfg = NULL;
  char err[512];
  int r = fl_tls_config_create(&o, &cfg, err, sizeof err);
  cr_assert_eq(r, 0, "tls config: %s", err);
  return cfg;
}

static char *path(const char *dir, const char *file) {
  static char buf[8][1024];
  static int i;
  char *p = buf[i++ % 8];
  snprintf(p, 1024, "%s/%s", dir, file);
  return p;
}

/* Invariants checked in callbacks and helpers, which also run on other threads than the
 * test's own (Criterion's asserts are not thread-safe): report and abort. */
#define CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
      abort();                                                                    \
    }                                                                             \
  } while (0)

/* ---- callbacks ---- */

static peer *srv_peer(test_ctx *t, fl_conn *c) {
  for (int i = 0; i < t->nsrv; i++)
    if (t->srv[i].c == c) return &t->srv[i];
  CHECK(t->nsrv < MAX_PEERS);
  peer *p = &t->srv[t->nsrv++];
  p->t = t;
  p->c = c;
  return p;
}

static void fill_chunk(uint8_t *buf, size_t len, uint64_t idx) {
  uint32_t *w = (uint32_t *)buf;
  for (size_t i = 0; i < len / 4; i++) w[i] = (uint32_t)(idx * 2654435761u + i);
}

static void s_open(fl_conn *c);
static void stream_more(peer *p, size_t high_water) {
  const size_t chunk = 1u << 20;
  while (p->sent < p->total && fl_conn_queued(p->c) < high_water) {
    fill_chunk(p->chunk, chunk, p->sent / chunk);
    int r = fl_conn_send(p->c, p->chunk, chunk);
    if (r < 0) return;
    p->sent += chunk;
    if (fl_conn_queued(p->c) > p->max_queued) p->max_queued = fl_conn_queued(p->c);
  }
}

static void s_open(fl_conn *c) {
  test_ctx *t = fl_conn_data(c);
  peer *p = srv_peer(t, c);
  p->opened = 1;
  p->opened_at = uv_now(fl_conn_loop(c));
  snprintf(p->id, sizeof p->id, "%s", fl_conn_peer_id(c));
  if (t->mode == M_PUMP_TO && strcmp(p->id, t->pump_to) == 0) {
    p->total = UINT64_MAX / 2;
    p->chunk = malloc(1u << 20);
    stream_more(p, 256u << 10);
  }
  if (t->mode == M_BURST) {
    for (uint8_t i = 0; i < 5; i++) CHECK(fl_conn_send(c, &i, 1) == 0);
  }
}

static void s_frame(fl_conn *c, const uint8_t *d, size_t len) {
  test_ctx *t = fl_conn_data(c);
  peer *p = srv_peer(t, c);
  p->frames++;
  p->bytes += len;
  if (len == 2 && memcmp(d, "hb", 2) == 0) p->hb++;
  if ((t->mode == M_ECHO || t->mode == M_PUMP_TO) && !(len == 2 && memcmp(d, "hb", 2) == 0)) fl_conn_send(c, d, len);
  if (t->mode == M_STREAM) {
    /* Check each 1 MiB chunk against the pattern (first, middle and last words). */
    const uint32_t *w = (const uint32_t *)d;
    uint64_t idx = p->frames - 1;
    size_t n = len / 4;
    CHECK(len == 1u << 20);
    CHECK(w[0] == (uint32_t)(idx * 2654435761u));
    CHECK(w[n / 2] == (uint32_t)(idx * 2654435761u + n / 2));
    CHECK(w[n - 1] == (uint32_t)(idx * 2654435761u + n - 1));
    if (p->bytes == 100u << 20) fl_conn_send(c, (const uint8_t *)"done", 4);
  }
}

static void s_drain(fl_conn *c) {
  test_ctx *t = fl_conn_data(c);
  peer *p = srv_peer(t, c);
  if (p->chunk) stream_more(p, 256u << 10);
}

static void s_close(fl_conn *c, int err, const char *reason) {
  test_ctx *t = fl_conn_data(c);
  peer *p = srv_peer(t, c);
  CHECK(p->closed == 0); /* on_close once */
  p->closed = 1;
  p->closed_at = uv_now(fl_conn_loop(c));
  p->err = err;
  snprintf(p->reason, sizeof p->reason, "%s", reason);
  free(p->chunk);
  p->chunk = NULL;
  p->c = (fl_conn *)(uintptr_t)1; /* a freed connection must not match again */
}


static void c_open(fl_conn *c) {
  peer *p = fl_conn_data(c);
  p->opened = 1;
  snprintf(p->id, sizeof p->id, "%s", fl_conn_peer_id(c));
  if (p->pause_after_open) fl_conn_pause(c);
  if (p->ping) fl_conn_send(c, (const uint8_t *)"ping", 4);
  if (p->total) stream_more(p, 1u << 20);
}

static void c_frame(fl_conn *c, const uint8_t *d, size_t len) {
  peer *p = fl_conn_data(c);
  p->frames++;
  p->bytes += len;
  if (p->ping && len == 4 && memcmp(d, "ping", 4) == 0) fl_conn_send(c, d, len);
  if (p->pause_after_first) {
    CHECK(len == 1);
    CHECK(d[0] == p->frames - 1);
    if (p->frames == 1) fl_conn_pause(c);
  }
  if (p->total && len == 4 && memcmp(d, "done", 4) == 0) fl_conn_close(c, "stream done");
}

static void c_drain(fl_conn *c) {
  peer *p = fl_conn_data(c);
  if (p->total) {
    stream_more(p, 1u << 20);
  }
}

static void c_close(fl_conn *c, int err, const char *reason) {
  peer *p = fl_conn_data(c);
  CHECK(p->closed == 0); /* on_close once */
  p->closed = 1;
  p->err = err;
  snprintf(p->reason, sizeof p->reason, "%s", reason);
}

static const fl_conn_callbacks srv_cb = {s_open, s_frame, s_drain, s_close};
static const fl_conn_callbacks cli_cb = {c_open, c_frame, c_drain, c_close};

/* ---- harness ---- */

static void tick(uv_timer_t *tm) { (void)tm; }

static void ctx_init(test_ctx *t, const char *crl, const fl_conn_options *sopt) {
  memset(t, 0, sizeof *t);
  cr_assert_eq(uv_loop_init(&t->loop), 0);
  uv_timer_init(&t->loop, &t->tick);
  uv_timer_start(&t->tick, tick, 5, 5);
  const char *d = certs();
  t->srv_tls = tls_cfg(1, path(d, "ca.crt"), path(d, "server.crt"), path(d, "server.key"), crl, NULL);
  cr_assert_eq(fl_listen(&t->loop, t->srv_tls, "127.0.0.1", 0, sopt, &srv_cb, t, &t->l), 0);
  cr_assert_gt(fl_listener_port(t->l), 0);
}

static peer *client(test_ctx *t, fl_tls_config *tls, const fl_conn_options *opt) {
  CHECK(t->ncli < MAX_PEERS);
  peer *p = &t->cli[t->ncli++];
  p->t = t;
  t->cli_tls[t->ncli_tls++] = tls;
  CHECK(fl_connect(&t->loop, tls, "127.0.0.1", fl_listener_port(t->l), opt, &cli_cb, p,
                   &p->c) == 0);
  return p;
}

static fl_tls_config *client_tls(const char *name) {
  const char *d = certs();
  char crt[64], key[64];
  snprintf(crt, sizeof crt, "%s.crt", name);
  snprintf(key, sizeof key, "%s.key", name);
  return tls_cfg(0, path(d, "ca.crt"), path(d, crt), path(d, key), NULL, "localhost");
}

/* Runs the loop until cond holds or ms (times FL_TEST_TIME_SCALE) of loop time pass. */
#define RUN_UNTIL(t, cond, ms)                                                     \
  do {                                                                             \
    uint64_t until_ = uv_now(&(t)->loop) + (uint64_t)((ms) * fl_test_time_scale()); \
    while (!(cond) && uv_now(&(t)->loop) < until_) uv_run(&(t)->loop, UV_RUN_ONCE); \
  } while (0)

static int all_closed(test_ctx *t) {
  for (int i = 0; i < t->ncli; i++)
    if (!t->cli[i].closed) return 0;
  for (int i = 0; i < t->nsrv; i++)
    if (!t->srv[i].closed) return 0;
  return 1;
}

/* Closes whatever is still open, waits for every on_close, and checks no handle leaks. */
static void ctx_done(test_ctx *t) {
  fl_listener_close(t->l);
  for (int i = 0; i < t->ncli; i++)
    if (!t->cli[i].closed) fl_conn_close(t->cli[i].c, "test over");
  for (int i = 0; i < t->nsrv; i++)
    if (!t->srv[i].closed) fl_conn_close(t->srv[i].c, "test over");
  RUN_UNTIL(t, all_closed(t), 5000);
  CHECK(all_closed(t)); /* connections still open at the end */
  uv_close((uv_handle_t *)&t->tick, NULL);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&t->loop) == 0); /* no handle left on the loop */
  if (t->shared_tls) return;
  for (int i = 0; i < t->ncli_tls; i++) {
    int dup = 0;
    for (int j = 0; j < i; j++) dup |= t->cli_tls[j] == t->cli_tls[i];
    if (!dup) fl_tls_config_free(t->cli_tls[i]);
  }
  fl_tls_config_free(t->srv_tls);
}

/* ---- tests ---- */

Test(conn, handshake_and_frames_both_ways, .timeout = 20) {
  test_ctx t;
  ctx_init(&t, NULL, NULL);
  t.mode = M_ECHO;
  peer *p = client(&t, client_tls("client-0001"), NULL);
  RUN_UNTIL(&t, p->opened && t.nsrv && t.srv[0].opened, 5000);
  cr_assert(p->opened, "client not open: %s", p->reason);
  cr_assert_str_eq(p->id, "localhost");
  cr_assert_str_eq(t.srv[0].id, "client-0001");
  cr_assert_str_eq(fl_conn_peer_id(p->c), "localhost");
  cr_assert_eq(strncmp(fl_conn_peer_addr(p->c), "127.0.0.1:", 10), 0, "%s", fl_conn_peer_addr(p->c));

  size_t sizes[] = {0, 1, 3, 16380, 16381, 16384, 100000, 1u << 20};
  uint8_t *buf = malloc(1u << 20);
  for (size_t i = 0; i < (1u << 20); i++) buf[i] = (uint8_t)(i * 7 + 1);
  uint64_t want = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    cr_assert_eq(fl_conn_send(p->c, buf, sizes[i]), 0);
    want += sizes[i];
  }
  RUN_UNTIL(&t, p->frames == 8, 5000);
  cr_assert_eq(t.srv[0].frames, 8);
  cr_assert_eq(t.srv[0].bytes, want);
  cr_assert_eq(p->frames, 8);
  cr_assert_eq(p->bytes, want);
  cr_assert_gt(fl_conn_bytes_out(p->c), want);
  cr_assert_gt(fl_conn_bytes_in(p->c), want);
  cr_assert_eq(fl_conn_send(p->c, buf, FL_FRAME_DEFAULT_MAX + 1), FL_ETOOBIG);
  free(buf);

  fl_conn_close(p->c, "bye");
  RUN_UNTIL(&t, all_closed(&t), 5000);
  cr_assert_eq(p->err, 0, "%s", p->reason);
  cr_assert_eq(t.srv[0].err, 0, "server: %s", t.srv[0].reason);
  cr_assert_str_eq(t.srv[0].reason, "closed by peer");
  ctx_done(&t);
}

/* The server refuses (or the client refuses) and says why. */
static void expect_refused(fl_tls_config *cli, const char *crl, int server_side,
                           const char *why) {
  test_ctx t;
  ctx_init(&t, crl, NULL);
  peer *p = client(&t, cli, NULL);
  RUN_UNTIL(&t, p->closed && t.nsrv && t.srv[0].closed, 5000);
  cr_assert(p->closed && t.nsrv && t.srv[0].closed);
  cr_assert_eq(t.srv[0].opened, 0);
  peer *judge = server_side ? &t.srv[0] : p;
  cr_assert_eq(judge->err, FL_ECERT, "err %s: %s", fl_err_name(judge->err), judge->reason);
  cr_assert_not_null(strstr(judge->reason, why), "reason '%s' lacks '%s'", judge->reason, why);
  peer *other = server_side ? p : &t.srv[0];
  cr_assert_neq(other->err, 0);
  ctx_done(&t);
}

Test(conn, refuses_client_without_certificate, .timeout = 20) {
  const char *d = certs();
  expect_refused(tls_cfg(0, path(d, "ca.crt"), NULL, NULL, NULL, "localhost"), NULL, 1,
                 "certificate");
}

Test(conn, refuses_certificate_from_another_ca, .timeout = 30) {
  const char *x = fl_test_extra_certs();
  expect_refused(tls_cfg(0, path(certs(), "ca.crt"), path(x, "other/client-0001.crt"),
                         path(x, "other/client-0001.key"), NULL, "localhost"),
                 NULL, 1, "not correctly signed");
}

Test(conn, refuses_expired_certificate, .timeout = 30) {
  const char *x = fl_test_extra_certs();
  expect_refused(tls_cfg(0, path(certs(), "ca.crt"), path(x, "expired.crt"), path(x, "expired.key"),
                         NULL, "localhost"),
                 NULL, 1, "expired");
}

Test(conn, refuses_revoked_certificate, .timeout = 30) {
  const char *x = fl_test_extra_certs();
  expect_refused(tls_cfg(0, path(certs(), "ca.crt"), path(x, "revoked.crt"), path(x, "revoked.key"),
                         NULL, "localhost"),
                 path(x, "crl.pem"), 1, "revoked");
}

Test(conn, client_refuses_wrong_server_name, .timeout = 20) {
  const char *d = certs();
  expect_refused(tls_cfg(0, path(d, "ca.crt"), path(d, "client-0001.crt"),
                         path(d, "client-0001.key"), NULL, "wrong.example"),
                 NULL, 0, "Common Name");
}

Test(conn, config_errors_name_the_file) {
  fl_tls_options o = {.is_server = 1, .ca_file = "/nonexistent/ca.crt",
                      .cert_file = "x.crt", .key_file = "x.key"};
  fl_tls_config *cfg = NULL;
  char err[512];
  cr_assert_eq(fl_tls_config_create(&o, &cfg, err, sizeof err), FL_ENOENT);
  cr_assert_null(cfg);
  cr_assert_not_null(strstr(err, "/nonexistent/ca.crt"), "%s", err);
  const char *d = certs();
  o.ca_file = path(d, "ca.crt");
  o.cert_file = path(d, "server.crt");
  o.key_file = path(d, "client-0001.key");
  cr_assert_eq(fl_tls_config_create(&o, &cfg, err, sizeof err), FL_ECONFIG);
  cr_assert_not_null(strstr(err, "client-0001.key"), "%s", err);
  o.key_file = path(d, "server.key");
  o.crl_file = path(d, "ca.key");
  cr_assert_eq(fl_tls_config_create(&o, &cfg, err, sizeof err), FL_ECONFIG);
  cr_assert_not_null(strstr(err, "CRL"), "%s", err);
}

static int s_client_exit = -1;
static void s_client_done(uv_process_t *proc, int64_t status, int sig) {
  (void)sig;
  s_client_exit = (int)status;
  uv_close((uv_handle_t *)proc, NULL);
}

Test(conn, openssl_s_client_without_certificate_is_refused, .timeout = 20) {
  test_ctx t;
  ctx_init(&t, NULL, NULL);
  char port[32], connect[64];
  snprintf(port, sizeof port, "%d", fl_listener_port(t.l));
  snprintf(connect, sizeof connect, "127.0.0.1:%s", port);
  char *args[] = {"openssl", "s_client", "-connect", connect, "-CAfile", path(certs(), "ca.crt"),
                  "-servername", "localhost", NULL};
  uv_stdio_container_t io[3] = {{.flags = UV_IGNORE}, {.flags = UV_IGNORE}, {.flags = UV_IGNORE}};
  uv_process_options_t po = {.file = "openssl", .args = args, .stdio_count = 3, .stdio = io,
                             .exit_cb = s_client_done};
  uv_process_t proc;
  cr_assert_eq(uv_spawn(&t.loop, &proc, &po), 0);
  RUN_UNTIL(&t, s_client_exit >= 0 && t.nsrv && t.srv[0].closed, 8000);
  cr_assert(t.nsrv && t.srv[0].closed);
  cr_assert_eq(t.srv[0].opened, 0);
  cr_assert_eq(t.srv[0].err, FL_ECERT, "%s: %s", fl_err_name(t.srv[0].err), t.srv[0].reason);
  cr_assert_neq(s_client_exit, 0, "s_client succeeded");
  ctx_done(&t);
}

static long maxrss_kib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

Test(conn, stream_100mib_with_backpressure, .timeout = 60) {
  test_ctx t;
  fl_conn_options o;
  fl_conn_options_default(&o);
  ctx_init(&t, NULL, &o);
  t.mode = M_STREAM;
  long rss0 = maxrss_kib();
  peer *p = &t.cli[0];
  p->total = 100u << 20;
  p->chunk = malloc(1u << 20);
  client(&t, client_tls("client-0001"), &o);
  uint64_t t0 = uv_hrtime();
  RUN_UNTIL(&t, p->closed, 50000);
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  cr_assert(p->closed);
  cr_assert_eq(p->err, 0, "%s", p->reason);
  cr_assert_eq(t.srv[0].bytes, 100u << 20);
  long grew = maxrss_kib() - rss0;
  fprintf(stderr, "stream: 100 MiB in %.2f s (%.0f MiB/s), queue peak %zu KiB, RSS +%ld KiB\n",
          secs, 100 / secs, p->max_queued >> 10, grew);
  /* The sender stops at high_water: the queue holds at most that plus one frame. */
  cr_assert_leq(p->max_queued, o.high_water + (1u << 20) + (64u << 10));
  if (!UNDER_ASAN) cr_assert_lt(grew, 24 * 1024, "RSS grew by %ld KiB", grew);
  free(p->chunk);
  p->chunk = NULL;
  ctx_done(&t);
}

/* Raw garbage, a truncated frame, an oversized length: each ends its own connection
 * while a well-behaved client on the same server keeps exchanging frames. */
static uv_tcp_t raw;
static uv_connect_t raw_req;
static uv_write_t raw_wr;
static int raw_done;
static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  static char buf[4096];
  (void)h, (void)s;
  *b = uv_buf_init(buf, sizeof buf);
}
static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0) {
    uv_close((uv_handle_t *)s, NULL);
    raw_done = 1;
  }
}
static void raw_connected(uv_connect_t *req, int status) {
  cr_assert_eq(status, 0);
  static char garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n\x01\x02\x03 not TLS at all";
  uv_buf_t b = uv_buf_init(garbage, sizeof garbage);
  uv_write(&raw_wr, req->handle, &b, 1, NULL);
  uv_read_start(req->handle, raw_alloc, raw_read);
}

static peer *find_srv(test_ctx *t, const char *id) {
  for (int i = 0; i < t->nsrv; i++)
    if (strcmp(t->srv[i].id, id) == 0) return &t->srv[i];
  return NULL;
}

Test(conn, bad_peers_end_alone, .timeout = 30) {
  test_ctx t;
  fl_conn_options so;
  fl_conn_options_default(&so);
  so.max_frame = 64u << 10;
  ctx_init(&t, NULL, &so);
  t.mode = M_ECHO;
  peer *good = &t.cli[0];
  good->ping = 1;
  client(&t, client_tls("client-0001"), NULL);
  RUN_UNTIL(&t, good->frames > 10, 5000);
  cr_assert_gt(good->frames, 10);

  /* 1. Not TLS at all. */
  uv_tcp_init(&t.loop, &raw);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", fl_listener_port(t.l), &a);
  cr_assert_eq(uv_tcp_connect(&raw_req, &raw, (struct sockaddr *)&a, raw_connected), 0);
  /* 2. A truncated frame, then a clean close.  3. A frame far above max_frame. */
  peer *trunc = client(&t, client_tls("client-0002"), NULL);
  peer *big = client(&t, client_tls("client-0003"), NULL);
  RUN_UNTIL(&t, trunc->opened && big->opened, 5000);
  uint8_t hdr_and_part[14] = {0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  cr_assert_eq(fl_conn_send_raw(trunc->c, hdr_and_part, sizeof hdr_and_part), 0);
  fl_conn_close(trunc->c, "leaving mid-frame");
  uint8_t huge[4] = {0x40, 0, 0, 0};
  cr_assert_eq(fl_conn_send_raw(big->c, huge, 4), 0);

  RUN_UNTIL(&t, raw_done && trunc->closed && big->closed, 5000);
  cr_assert(raw_done && trunc->closed && big->closed);
  peer *st = find_srv(&t, "client-0002"), *sb = find_srv(&t, "client-0003");
  cr_assert(st && sb);
  RUN_UNTIL(&t, st->closed && sb->closed, 2000);
  cr_assert_eq(st->err, FL_ETRUNC, "%s: %s", fl_err_name(st->err), st->reason);
  cr_assert_eq(sb->err, FL_ETOOBIG, "%s: %s", fl_err_name(sb->err), sb->reason);
  int tls_failed = 0;
  for (int i = 0; i < t.nsrv; i++)
    if (t.srv[i].closed && t.srv[i].err == FL_ETLS && !t.srv[i].opened) tls_failed++;
  cr_assert_eq(tls_failed, 1, "the garbage connection did not fail its handshake");

  uint64_t before = good->frames;
  RUN_UNTIL(&t, good->frames > before + 50, 5000);
  cr_assert_gt(good->frames, before + 50, "the good client stopped");
  cr_assert_eq(good->closed, 0);
  cr_assert_eq(find_srv(&t, "client-0001")->closed, 0);
  ctx_done(&t);
}

Test(conn, idle_timeout_drops_silent_peer, .timeout = 20) {
  test_ctx t;
  fl_conn_options so;
  fl_conn_options_default(&so);
  so.idle_timeout_ms = 300;
  ctx_init(&t, NULL, &so);
  fl_conn_options co;
  fl_conn_options_default(&co);
  co.heartbeat_interval_ms = 0;
  peer *p = client(&t, client_tls("client-0001"), &co);
  RUN_UNTIL(&t, p->opened, 5000);
  RUN_UNTIL(&t, t.nsrv && t.srv[0].closed, 20000);
  cr_assert(t.srv[0].closed);
  cr_assert_eq(t.srv[0].err, FL_ETIMEDOUT, "%s", t.srv[0].reason);
  cr_assert_not_null(strstr(t.srv[0].reason, "idle"));
  /* Never before the timeout (its timer starts with the last byte received, at or before
   * on_open); after it, as soon as the loop gets to it, which a busy machine delays. */
  uint64_t waited = t.srv[0].closed_at - t.srv[0].opened_at;
  cr_assert_geq(waited, 300, "dropped after %llu ms", (unsigned long long)waited);
  cr_assert_lt(waited, 20000, "dropped after %llu ms", (unsigned long long)waited);
  RUN_UNTIL(&t, p->closed, 2000);
  cr_assert(p->closed);
  cr_assert_neq(p->err, 0);
  ctx_done(&t);
}

Test(conn, heartbeats_keep_idle_connection_alive, .timeout = 20) {
  test_ctx t;
  fl_conn_options o;
  fl_conn_options_default(&o);
  /* Heartbeats every 50 ms, dropped after 1 s of silence: 20 times the interval, so a
   * busy machine that delays the loop does not make a live peer look silent. */
  o.idle_timeout_ms = 1000;
  o.heartbeat_interval_ms = 50;
  o.heartbeat = (const uint8_t *)"hb";
  o.heartbeat_len = 2;
  ctx_init(&t, NULL, &o);
  t.mode = M_ECHO;
  peer *p = client(&t, client_tls("client-0001"), &o);
  RUN_UNTIL(&t, p->opened, 5000);
  /* 60 heartbeats each way take at least 3 s: three idle timeouts. */
  RUN_UNTIL(&t, p->closed || (t.nsrv && t.srv[0].hb >= 60 && p->frames >= 60), 60000);
  cr_assert_eq(p->closed, 0, "%s", p->reason);
  cr_assert_eq(t.srv[0].closed, 0, "%s", t.srv[0].reason);
  cr_assert_geq(t.srv[0].hb, 60, "only %llu heartbeats", (unsigned long long)t.srv[0].hb);
  cr_assert_geq(p->frames, 60); /* the server's heartbeats */
  ctx_done(&t);
}

Test(conn, stalled_reader_dropped_others_continue, .timeout = 30) {
  test_ctx t;
  fl_conn_options so;
  fl_conn_options_default(&so);
  so.high_water = 256u << 10;
  so.stall_timeout_ms = 300;
  ctx_init(&t, NULL, &so);
  t.mode = M_PUMP_TO;
  snprintf(t.pump_to, sizeof t.pump_to, "client-0002");
  peer *good = &t.cli[0];
  good->ping = 1;
  client(&t, client_tls("client-0001"), NULL);
  peer *stall = &t.cli[1];
  stall->pause_after_open = 1;
  client(&t, client_tls("client-0002"), NULL);
  RUN_UNTIL(&t, find_srv(&t, "client-0002") && find_srv(&t, "client-0002")->closed, 10000);
  peer *s = find_srv(&t, "client-0002");
  cr_assert(s && s->closed);
  cr_assert_eq(s->err, FL_ETIMEDOUT, "%s", s->reason);
  cr_assert_not_null(strstr(s->reason, "stalled"), "%s", s->reason);
  uint64_t before = good->frames;
  RUN_UNTIL(&t, good->frames > before + 50, 5000);
  cr_assert_gt(good->frames, before + 50);
  cr_assert_eq(find_srv(&t, "client-0001")->closed, 0);
  ctx_done(&t);
}

Test(conn, pause_delivers_buffered_frames_after_resume, .timeout = 20) {
  test_ctx t;
  ctx_init(&t, NULL, NULL);
  t.mode = M_BURST;
  peer *p = &t.cli[0];
  p->pause_after_first = 1;
  client(&t, client_tls("client-0001"), NULL);
  RUN_UNTIL(&t, p->frames >= 1, 5000);
  /* Paused: nothing may come however long the loop runs (only the test resumes it). */
  uint64_t t0 = uv_now(&t.loop);
  RUN_UNTIL(&t, uv_now(&t.loop) - t0 >= 50, 1000);
  cr_assert_eq(p->frames, 1, "frames delivered while paused");
  fl_conn_resume(p->c);
  RUN_UNTIL(&t, p->frames == 5, 5000);
  cr_assert_eq(p->frames, 5);
  ctx_done(&t);
}

Test(conn, ipv6_loopback, .timeout = 20) {
  test_ctx t;
  memset(&t, 0, sizeof t);
  cr_assert_eq(uv_loop_init(&t.loop), 0);
  uv_timer_init(&t.loop, &t.tick);
  uv_timer_start(&t.tick, tick, 5, 5);
  const char *d = certs();
  t.srv_tls = tls_cfg(1, path(d, "ca.crt"), path(d, "server.crt"), path(d, "server.key"), NULL, NULL);
  if (fl_listen(&t.loop, t.srv_tls, "::1", 0, NULL, &srv_cb, &t, &t.l) < 0) {
    fl_tls_config_free(t.srv_tls);
    uv_close((uv_handle_t *)&t.tick, NULL);
    uv_run(&t.loop, UV_RUN_DEFAULT);
    uv_loop_close(&t.loop);
    cr_skip_test("no IPv6 loopback here");
  }
  peer *p = &t.cli[t.ncli++];
  p->t = &t;
  t.cli_tls[t.ncli_tls++] = client_tls("client-0004");
  cr_assert_eq(fl_connect(&t.loop, t.cli_tls[0], "::1", fl_listener_port(t.l), NULL, &cli_cb, p,
                          &p->c), 0);
  RUN_UNTIL(&t, p->opened || p->closed, 5000);
  cr_assert(p->opened, "%s", p->reason);
  cr_assert_eq(strncmp(fl_conn_peer_addr(p->c), "[::1]:", 6), 0, "%s", fl_conn_peer_addr(p->c));
  cr_assert_str_eq(t.srv[0].id, "client-0004");
  ctx_done(&t);
}

/* Several loops on several threads share one server and one client configuration:
 * concurrent handshakes and traffic (the DRBG and the key tables are shared). */
typedef struct thread_job {
  fl_tls_config *srv, *cli;
  int opened, frames;
} thread_job;

static void *thread_main(void *arg) {
  thread_job *j = arg;
  test_ctx *t = calloc(1, sizeof *t);
  uv_loop_init(&t->loop);
  uv_timer_init(&t->loop, &t->tick);
  uv_timer_start(&t->tick, tick, 5, 5);
  t->srv_tls = j->srv;
  t->shared_tls = 1;
  t->mode = M_ECHO;
  if (fl_listen(&t->loop, t->srv_tls, "127.0.0.1", 0, NULL, &srv_cb, t, &t->l) == 0) {
    for (int i = 0; i < 4; i++) {
      peer *p = &t->cli[t->ncli];
      p->ping = 1;
      client(t, j->cli, NULL);
      RUN_UNTIL(t, p->closed || p->frames >= 20, 5000);
      j->opened += p->opened;
      j->frames += (int)p->frames;
      if (!p->closed) fl_conn_close(p->c, "next");
    }
  }
  ctx_done(t);
  free(t);
  return NULL;
}

Test(conn, loops_on_threads_share_configs, .timeout = 30) {
  const char *d = certs();
  thread_job jobs[3];
  fl_tls_config *srv = tls_cfg(1, path(d, "ca.crt"), path(d, "server.crt"), path(d, "server.key"),
                               NULL, NULL);
  fl_tls_config *cli = client_tls("client-0005");
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    jobs[i] = (thread_job){.srv = srv, .cli = cli};
    cr_assert_eq(pthread_create(&th[i], NULL, thread_main, &jobs[i]), 0);
  }
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(jobs[i].opened, 4, "thread %d: %d of 4 connections opened", i, jobs[i].opened);
    cr_assert_geq(jobs[i].frames, 80);
  }
  fl_tls_config_free(cli);
  fl_tls_config_free(srv);
}

/* ---- names with several addresses ---- */

/* "dualhost" resolves to ::1, then 127.0.0.1 (a private /etc/hosts: testutil.h), or the
 * test skips saying why. */
static void dual_hosts(void) {
  char why[300], got[200];
  if (fl_test_private_hosts("::1 dualhost\n127.0.0.1 dualhost\n", why, sizeof why) < 0)
    cr_skip_test("%s", why);
  fl_test_resolve("dualhost", got, sizeof got);
  if (strcmp(got, "::1, 127.0.0.1") != 0)
    cr_skip_test("dualhost resolves to '%s' here, not to ::1 then 127.0.0.1", got);
}

/* A server on 127.0.0.1 alone, a client given the name: ::1 refuses, 127.0.0.1 takes it
 * (with the kernel's receive buffer, and with a fixed one: a fresh socket each time). */
Test(conn, client_tries_each_address_of_a_name, .timeout = 20) {
  dual_hosts();
  test_ctx t;
  ctx_init(&t, NULL, NULL);
  t.mode = M_ECHO;
  fl_tls_config *tls = client_tls("client-0001");
  fl_conn_options fixed;
  fl_conn_options_default(&fixed);
  fixed.recv_buffer = 128 << 10;
  for (int i = 0; i < 2; i++) {
    peer *p = &t.cli[t.ncli++];
    p->t = &t;
    p->ping = 1;
    t.cli_tls[t.ncli_tls++] = tls;
    cr_assert_eq(fl_connect(&t.loop, tls, "dualhost", fl_listener_port(t.l), i ? &fixed : NULL,
                            &cli_cb, p, &p->c), 0);
    RUN_UNTIL(&t, p->closed || p->frames >= 3, 5000);
    cr_assert(p->opened, "client %d: %s", i, p->reason);
    cr_assert_geq(p->frames, 3);
    cr_assert_eq(strncmp(fl_conn_peer_addr(p->c), "127.0.0.1:", 10), 0, "%s", fl_conn_peer_addr(p->c));
  }
  ctx_done(&t);
}

/* Every address refuses: the error names the name, how many were tried, the last error. */
Test(conn, client_error_names_the_addresses_tried, .timeout = 20) {
  dual_hosts();
  test_ctx t;
  ctx_init(&t, NULL, NULL);
  int port = fl_test_free_port();
  peer *p = &t.cli[t.ncli++];
  p->t = &t;
  t.cli_tls[t.ncli_tls++] = client_tls("client-0001");
  cr_assert_eq(fl_connect(&t.loop, t.cli_tls[0], "dualhost", port, NULL, &cli_cb, p, &p->c), 0);
  RUN_UNTIL(&t, p->closed, 5000);
  cr_assert(p->closed);
  cr_assert_eq(p->err, FL_ENET, "%s: %s", fl_err_name(p->err), p->reason);
  char want[200];
  snprintf(want, sizeof want, "connect failed: 2 addresses of dualhost:%d tried, the last: "
           "connection refused", port);
  cr_assert_str_eq(p->reason, want);
  ctx_done(&t);
}

/* The first address of the name drops the connection attempt instead of refusing it (a
 * listener on [::1] at the server's port whose accept queue is full: the kernel drops
 * further SYNs): the client gives it half the handshake timeout, not all of it, and
 * connects to 127.0.0.1 within the rest. */
Test(conn, client_moves_on_from_an_address_that_never_answers, .timeout = 60) {
  dual_hosts();
  test_ctx t;
  ctx_init(&t, NULL, NULL);
  t.mode = M_ECHO;
  int port = fl_listener_port(t.l);
  struct sockaddr_in6 a6;
  memset(&a6, 0, sizeof a6);
  a6.sin6_family = AF_INET6;
  a6.sin6_port = htons((uint16_t)port);
  a6.sin6_addr = in6addr_loopback;
  int hole = socket(AF_INET6, SOCK_STREAM, 0), filler = socket(AF_INET6, SOCK_STREAM, 0);
  cr_assert(hole >= 0 && filler >= 0);
  cr_assert_eq(bind(hole, (struct sockaddr *)&a6, sizeof a6), 0, "bind [::1]:%d: %s", port,
               strerror(errno));
  cr_assert_eq(listen(hole, 0), 0);
  /* one connection fills a queue of 0 (never accepted); the next SYN is dropped */
  cr_assert_eq(connect(filler, (struct sockaddr *)&a6, sizeof a6), 0, "%s", strerror(errno));
  fl_conn_options o;
  fl_conn_options_default(&o);
  o.handshake_timeout_ms = (unsigned)(8000 * fl_test_time_scale());
  peer *p = &t.cli[t.ncli++];
  p->t = &t;
  p->ping = 1;
  t.cli_tls[t.ncli_tls++] = client_tls("client-0001");
  uint64_t t0 = uv_now(&t.loop);
  cr_assert_eq(fl_connect(&t.loop, t.cli_tls[0], "dualhost", port, &o, &cli_cb, p, &p->c), 0);
  RUN_UNTIL(&t, p->closed || p->frames >= 3, 30000);
  cr_assert(p->opened, "not connected: %s", p->reason);
  cr_assert_geq(p->frames, 3);
  cr_assert_eq(strncmp(fl_conn_peer_addr(p->c), "127.0.0.1:", 10), 0, "%s", fl_conn_peer_addr(p->c));
  /* [::1] had its share: half of the timeout, not less */
  cr_assert_geq(uv_now(&t.loop) - t0, o.handshake_timeout_ms / 2);
  close(filler);
  close(hole);
  ctx_done(&t);
}
