/* TLS session resumption over real sockets on loopback (common/tls.c, common/conn.c):
 * a client's second connection resumes, and both ends know the peer's identity; tickets
 * expire after their lifetime; a restarted server with the same key file resumes its
 * clients, but not one whose certificate was revoked in between, nor any after its CA
 * certificates changed; a server without tickets never resumes. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "conn.h"
#include "error.h"
#include "testutil.h"
#include "tls.h"

typedef struct side {
  int opened, closed, err, resumed;
  char id[65], reason[256];
} side;

typedef struct ctx {
  uv_loop_t loop;
  fl_tls_config *srv_tls;
  fl_listener *l;
  side srv[16];
  int nsrv;
  side cli;
  fl_conn *cli_conn;
} ctx;

static uint64_t clock_now;
static uint64_t test_clock(void *c) {
  (void)c;
  return clock_now;
}

static const char *cpath(const char *file) {
  static char buf[8][1024];
  static int i;
  char *p = buf[i++ % 8];
  snprintf(p, 1024, "%s/%s", fl_test_certs_dir(), file);
  return p;
}

static void s_open(fl_conn *c) {
  ctx *t = fl_conn_data(c);
  side *s = &t->srv[t->nsrv < 16 ? t->nsrv++ : 15];
  memset(s, 0, sizeof *s);
  s->opened = 1;
  s->resumed = fl_conn_resumed(c);
  snprintf(s->id, sizeof s->id, "%s", fl_conn_peer_id(c));
}
static void s_frame(fl_conn *c, const uint8_t *d, size_t len) {
  (void)c, (void)d, (void)len;
}
static void s_close(fl_conn *c, int err, const char *reason) {
  (void)c, (void)err, (void)reason;
}
static void c_open(fl_conn *c) {
  ctx *t = fl_conn_data(c);
  t->cli.opened = 1;
  t->cli.resumed = fl_conn_resumed(c);
  snprintf(t->cli.id, sizeof t->cli.id, "%s", fl_conn_peer_id(c));
  fl_conn_close(c, "test: one handshake");
}
static void c_close(fl_conn *c, int err, const char *reason) {
  ctx *t = fl_conn_data(c);
  t->cli.closed = 1;
  t->cli.err = err;
  snprintf(t->cli.reason, sizeof t->cli.reason, "%s", reason ? reason : "");
}
static const fl_conn_callbacks srv_cb = {s_open, s_frame, NULL, s_close};
static const fl_conn_callbacks cli_cb = {c_open, NULL, NULL, c_close};

/* A server configuration with tickets (lifetime 0: none) and this key file and CRL. */
static fl_tls_config *server_tls(unsigned lifetime, const char *keys, const char *crl,
                                 const char *ca) {
  fl_tls_options o = {.is_server = 1, .ca_file = ca ? ca : cpath("ca.crt"),
                      .cert_file = cpath("server.crt"), .key_file = cpath("server.key"),
                      .crl_file = crl, .ticket_lifetime = lifetime, .ticket_key_file = keys,
                      .ticket_clock = test_clock};
  fl_tls_config *cfg;
  char err[512];
  cr_assert_eq(fl_tls_config_create(&o, &cfg, err, sizeof err), 0, "server tls: %s", err);
  return cfg;
}

static fl_tls_config *client_tls(const char *crt, const char *key) {
  fl_tls_options o = {.ca_file = cpath("ca.crt"), .cert_file = crt, .key_file = key,
                      .server_name = "localhost", .resume_sessions = 1};
  fl_tls_config *cfg;
  char err[512];
  cr_assert_eq(fl_tls_config_create(&o, &cfg, err, sizeof err), 0, "client tls: %s", err);
  return cfg;
}

static void start(ctx *t, fl_tls_config *srv, int port) {
  t->srv_tls = srv;
  cr_assert_eq(fl_listen(&t->loop, srv, "127.0.0.1", port, NULL, &srv_cb, t, &t->l), 0);
}

static void stop(ctx *t) {
  fl_listener_close(t->l);
  uv_run(&t->loop, UV_RUN_NOWAIT);
  fl_tls_config_free(t->srv_tls);
  t->l = NULL;
  t->srv_tls = NULL;
}

/* One connection: open (then closed by the client) or refused; waits for the client's
 * on_close, and for the server's on_open when it opened. */
static side connect_once(ctx *t, fl_tls_config *cli, int port) {
  memset(&t->cli, 0, sizeof t->cli);
  int before = t->nsrv;
  cr_assert_eq(fl_connect(&t->loop, cli, "127.0.0.1", port, NULL, &cli_cb, t, &t->cli_conn), 0);
  uint64_t until = uv_now(&t->loop) + (uint64_t)(20000 * fl_test_time_scale());
  while (!(t->cli.closed && (!t->cli.opened || t->nsrv > before)) && uv_now(&t->loop) < until)
    uv_run(&t->loop, UV_RUN_ONCE);
  cr_assert(t->cli.closed, "the connection did not end");
  return t->cli;
}

static void ctx_init(ctx *t) {
  memset(t, 0, sizeof *t);
  cr_assert_eq(uv_loop_init(&t->loop), 0);
}

static void ctx_done(ctx *t) {
  if (t->l) stop(t);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  cr_assert_eq(uv_loop_close(&t->loop), 0);
}

Test(resume, second_connection_resumes_with_the_same_identity, .timeout = 60) {
  ctx t;
  ctx_init(&t);
  clock_now = (uint64_t)time(NULL);
  start(&t, server_tls(3600, NULL, NULL, NULL), 0);
  int port = fl_listener_port(t.l);
  fl_tls_config *c1 = client_tls(cpath("client-0001.crt"), cpath("client-0001.key"));
  fl_tls_config *c2 = client_tls(cpath("client-0002.crt"), cpath("client-0002.key"));

  side a = connect_once(&t, c1, port);
  cr_assert(a.opened, "first connection refused: %s", a.reason);
  cr_assert_not(a.resumed, "the first connection cannot resume");
  cr_assert_not(t.srv[0].resumed);
  cr_assert_str_eq(t.srv[0].id, "client-0001");
  for (int i = 1; i <= 3; i++) {
    side b = connect_once(&t, c1, port);
    cr_assert(b.opened, "connection %d refused: %s", i + 1, b.reason);
    cr_assert(b.resumed, "connection %d of the same client did not resume", i + 1);
    cr_assert(t.srv[i].resumed, "the server did not see connection %d resumed", i + 1);
    cr_assert_str_eq(t.srv[i].id, "client-0001", "identity after resumption");
    cr_assert_str_eq(b.id, "localhost", "the server's identity after resumption");
  }
  /* Another identity has a session of its own, not client-0001's. */
  side d = connect_once(&t, c2, port);
  cr_assert(d.opened);
  cr_assert_not(d.resumed);
  cr_assert_str_eq(t.srv[4].id, "client-0002");
  d = connect_once(&t, c2, port);
  cr_assert(d.resumed);
  cr_assert_str_eq(t.srv[5].id, "client-0002");
  ctx_done(&t);
  fl_tls_config_free(c1);
  fl_tls_config_free(c2);
}

Test(resume, tickets_expire_after_their_lifetime, .timeout = 60) {
  ctx t;
  ctx_init(&t);
  clock_now = (uint64_t)time(NULL);
  start(&t, server_tls(600, NULL, NULL, NULL), 0);
  int port = fl_listener_port(t.l);
  fl_tls_config *c = client_tls(cpath("client-0003.crt"), cpath("client-0003.key"));
  cr_assert_not(connect_once(&t, c, port).resumed);
  /* The ticket counts from the full handshake; mbedTLS dates it by the system clock,
   * which may tick a second or two while a slow machine handshakes: a margin of 10 s
   * each side (the exact boundary is test_ticket.c's). */
  clock_now += 590;
  cr_assert(connect_once(&t, c, port).resumed, "resumption refused within the lifetime");
  clock_now += 21; /* the full handshake is now more than a lifetime ago */
  side s = connect_once(&t, c, port);
  cr_assert(s.opened, "%s", s.reason);
  cr_assert_not(s.resumed, "a ticket resumed after its lifetime");
  cr_assert_str_eq(t.srv[2].id, "client-0003");
  /* That full handshake gave a new ticket. */
  cr_assert(connect_once(&t, c, port).resumed);
  ctx_done(&t);
  fl_tls_config_free(c);
}

Test(resume, server_without_tickets_never_resumes, .timeout = 60) {
  ctx t;
  ctx_init(&t);
  start(&t, server_tls(0, NULL, NULL, NULL), 0);
  int port = fl_listener_port(t.l);
  fl_tls_config *c = client_tls(cpath("client-0004.crt"), cpath("client-0004.key"));
  for (int i = 0; i < 3; i++) {
    side s = connect_once(&t, c, port);
    cr_assert(s.opened, "%s", s.reason);
    cr_assert_not(s.resumed);
    cr_assert_str_eq(t.srv[i].id, "client-0004");
  }
  ctx_done(&t);
  fl_tls_config_free(c);
}

/* A server restarts with the same key file: its clients resume, but the CRL it now has
 * refuses the revoked one's ticket, and its full handshake too. */
Test(resume, restart_keeps_tickets_but_a_revoked_client_cannot_resume, .timeout = 60) {
  const char *x = fl_test_extra_certs();
  char *dir = fl_test_tmpdir();
  char keys[600], crl[1200], rcrt[1200], rkey[1200];
  snprintf(keys, sizeof keys, "%s/tickets", dir);
  snprintf(crl, sizeof crl, "%s/crl.pem", x);
  snprintf(rcrt, sizeof rcrt, "%s/revoked.crt", x);
  snprintf(rkey, sizeof rkey, "%s/revoked.key", x);
  clock_now = (uint64_t)time(NULL);
  ctx t;
  ctx_init(&t);
  int port = fl_test_free_port();
  cr_assert_gt(port, 0);
  fl_tls_config *good = client_tls(cpath("client-0005.crt"), cpath("client-0005.key"));
  fl_tls_config *bad = client_tls(rcrt, rkey);

  start(&t, server_tls(3600, keys, NULL, NULL), port); /* before the revocation */
  side s = connect_once(&t, bad, port);
  cr_assert(s.opened, "%s", s.reason);
  cr_assert_str_eq(t.srv[0].id, "revoked-client");
  cr_assert(connect_once(&t, bad, port).resumed);
  cr_assert(connect_once(&t, good, port).opened);
  stop(&t);

  clock_now += 30;
  start(&t, server_tls(3600, keys, crl, NULL), port); /* restarted with the CRL */
  s = connect_once(&t, good, port);
  cr_assert(s.opened, "%s", s.reason);
  cr_assert(s.resumed, "a client did not resume with the restarted server");
  cr_assert_str_eq(t.srv[t.nsrv - 1].id, "client-0005");
  int before = t.nsrv;
  s = connect_once(&t, bad, port);
  cr_assert_not(s.opened, "a revoked client got a connection (resumed: %d)", s.resumed);
  cr_assert_eq(t.nsrv, before, "the server opened a connection for a revoked client");
  cr_assert_eq(s.err, FL_ECERTREFUSED, "%s", s.reason);
  /* Its session is forgotten: the next attempt offers no ticket, and is refused too. */
  s = connect_once(&t, bad, port);
  cr_assert_not(s.opened);
  stop(&t);

  /* New CA certificates (the old CA plus another): no ticket of before opens. */
  char cas[700], cmd[4000];
  snprintf(cas, sizeof cas, "%s/cas.pem", dir);
  snprintf(cmd, sizeof cmd, "cat '%s' '%s/other/ca.crt' > '%s'", cpath("ca.crt"), x, cas);
  cr_assert_eq(fl_test_system(cmd), 0);
  start(&t, server_tls(3600, keys, NULL, cas), port);
  s = connect_once(&t, good, port);
  cr_assert(s.opened, "%s", s.reason);
  cr_assert_not(s.resumed, "a ticket of the old CA certificates resumed");
  cr_assert(connect_once(&t, good, port).resumed);
  ctx_done(&t);
  fl_tls_config_free(good);
  fl_tls_config_free(bad);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  fl_test_system(cmd);
  free(dir);
}
