/* common/iothreads.c over real TLS on loopback: a server fl_io with two I/O threads
 * whose callbacks run on the test's own loop (the control loop), and fl_connect clients
 * on a loop of their own in another thread.  Frames both ways in order, connections
 * spread over the threads, pause and resume, closing from either side with frames in
 * flight, streams under backpressure both ways, refused handshakes, shutdown. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "conn.h"
#include "error.h"
#include "iothreads.h"
#include "testutil.h"
#include "tls.h"

/* Criterion's asserts are not thread-safe: callbacks check with this. */
#define CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
      abort();                                                                    \
    }                                                                             \
  } while (0)

#define MAX_CLIENTS 64
#define CHUNK (1u << 20)

static fl_tls_config *tls_cfg(int server, const char *cert, const char *name) {
  const char *d = fl_test_certs_dir();
  char ca[1024], crt[1024], key[1024];
  snprintf(ca, sizeof ca, "%s/ca.crt", d);
  snprintf(crt, sizeof crt, "%s/%s.crt", d, cert ? cert : "");
  snprintf(key, sizeof key, "%s/%s.key", d, cert ? cert : "");
  fl_tls_options o = {.is_server = server, .ca_file = ca, .cert_file = cert ? crt : NULL,
                      .key_file = cert ? key : NULL, .server_name = name};
  fl_tls_config *cfg = NULL;
  char err[512];
  cr_assert_eq(fl_tls_config_create(&o, &cfg, err, sizeof err), 0, "tls config: %s", err);
  return cfg;
}

static void fill(uint8_t *buf, size_t len, uint64_t idx) {
  uint32_t *w = (uint32_t *)buf;
  for (size_t i = 0; i < len / 4; i++) w[i] = (uint32_t)(idx * 2654435761u + i);
}

static int check_fill(const uint8_t *buf, size_t len, uint64_t idx) {
  const uint32_t *w = (const uint32_t *)buf;
  size_t n = len / 4;
  return w[0] == (uint32_t)(idx * 2654435761u) && w[n / 2] == (uint32_t)(idx * 2654435761u + n / 2) &&
         w[n - 1] == (uint32_t)(idx * 2654435761u + n - 1);
}

/* A small frame: [seq u32][size-dependent filler]. */
static size_t seq_frame(uint8_t *buf, uint32_t seq) {
  size_t len = 4 + (seq * 37u) % 3000u;
  memcpy(buf, &seq, 4);
  for (size_t i = 4; i < len; i++) buf[i] = (uint8_t)(seq + i);
  return len;
}

static int seq_ok(const uint8_t *d, size_t len, uint32_t want) {
  uint32_t seq;
  if (len < 4) return 0;
  memcpy(&seq, d, 4);
  if (seq != want || len != 4 + (seq * 37u) % 3000u) return 0;
  for (size_t i = 4; i < len; i++)
    if (d[i] != (uint8_t)(seq + i)) return 0;
  return 1;
}

/* ---- clients, on their own loop and thread ---- */

enum cmode {
  C_ECHO,  /* after "go": send nframes numbered frames, expect them back in order, close */
  C_BURST, /* at open: send nframes numbered frames; close on "done" */
  C_SINK,  /* receive `total` bytes of 1 MiB pattern frames, then close */
  C_PUSH,  /* send `total` bytes of 1 MiB frames under backpressure; close on "done" */
};

typedef struct clients clients;
typedef struct cli {
  clients *side;
  fl_conn *c;
  int opened, closed, err;
  char reason[256];
  uint32_t sent, echoed;
  int order_ok;
  uint64_t frames, bytes, pushed;
} cli;

struct clients {
  uv_loop_t loop;
  uv_timer_t tick;
  pthread_t tid;
  fl_tls_config *tls;
  int port, n;
  enum cmode mode;
  uint32_t nframes;
  uint64_t total;
  uint8_t *chunk;
  uint64_t bytes_out; /* C_PUSH: TLS bytes written so far (read by the test thread) */
  int stop;           /* set by the test thread: close what is open and end */
  cli c[MAX_CLIENTS];
};

static void c_push_more(cli *k) {
  clients *s = k->side;
  while (k->pushed < s->total && fl_conn_queued(k->c) < (1u << 20)) {
    fill(s->chunk, CHUNK, k->pushed / CHUNK);
    if (fl_conn_send(k->c, s->chunk, CHUNK) < 0) return;
    k->pushed += CHUNK;
  }
}

static void c_open(fl_conn *c) {
  cli *k = fl_conn_data(c);
  clients *s = k->side;
  k->opened = 1;
  k->order_ok = 1;
  if (s->mode == C_BURST) {
    uint8_t buf[3100];
    for (; k->sent < s->nframes; k->sent++) CHECK(fl_conn_send(c, buf, seq_frame(buf, k->sent)) == 0);
  }
  if (s->mode == C_PUSH) c_push_more(k);
}

static void c_frame(fl_conn *c, const uint8_t *d, size_t len) {
  cli *k = fl_conn_data(c);
  clients *s = k->side;
  k->frames++;
  k->bytes += len;
  int done = len == 4 && memcmp(d, "done", 4) == 0;
  switch (s->mode) {
  case C_ECHO:
    if (len == 2 && memcmp(d, "go", 2) == 0) {
      uint8_t buf[3100];
      for (; k->sent < s->nframes; k->sent++) CHECK(fl_conn_send(c, buf, seq_frame(buf, k->sent)) == 0);
      return;
    }
    if (!seq_ok(d, len, k->echoed)) k->order_ok = 0;
    if (++k->echoed == s->nframes) fl_conn_close(c, "all echoed");
    return;
  case C_SINK:
    if (len != CHUNK || !check_fill(d, len, k->frames - 1)) k->order_ok = 0;
    if (k->bytes == s->total) fl_conn_close(c, "stream received");
    return;
  case C_BURST:
  case C_PUSH:
    if (done) fl_conn_close(c, "done");
    return;
  }
}

static void c_drain(fl_conn *c) {
  cli *k = fl_conn_data(c);
  if (k->side->mode == C_PUSH) c_push_more(k);
}

static void c_close(fl_conn *c, int err, const char *reason) {
  cli *k = fl_conn_data(c);
  CHECK(!k->closed);
  k->closed = 1;
  k->err = err;
  snprintf(k->reason, sizeof k->reason, "%s", reason);
}

static const fl_conn_callbacks cli_cb = {c_open, c_frame, c_drain, c_close};

static int clients_done(clients *s) {
  for (int i = 0; i < s->n; i++)
    if (!s->c[i].closed) return 0;
  return 1;
}

static void c_tick(uv_timer_t *t) {
  clients *s = t->data;
  if (s->mode == C_PUSH && s->n > 0 && s->c[0].c && !s->c[0].closed)
    __atomic_store_n(&s->bytes_out, fl_conn_bytes_out(s->c[0].c), __ATOMIC_RELAXED);
  if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
    for (int i = 0; i < s->n; i++)
      if (!s->c[i].closed) fl_conn_close(s->c[i].c, "test over");
  }
  if (clients_done(s)) uv_close((uv_handle_t *)&s->tick, NULL);
}

static void *clients_main(void *arg) {
  clients *s = arg;
  for (int i = 0; i < s->n; i++) {
    s->c[i].side = s;
    CHECK(fl_connect(&s->loop, s->tls, "127.0.0.1", s->port, NULL, &cli_cb, &s->c[i], &s->c[i].c) == 0);
  }
  uv_run(&s->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* n clients of one kind, connecting to port from a new thread. */
static clients *clients_start(int n, enum cmode mode, int port, fl_tls_config *tls) {
  clients *s = calloc(1, sizeof *s);
  cr_assert_not_null(s);
  s->n = n;
  s->mode = mode;
  s->port = port;
  s->tls = tls;
  s->chunk = malloc(CHUNK);
  cr_assert_eq(uv_loop_init(&s->loop), 0);
  uv_timer_init(&s->loop, &s->tick);
  s->tick.data = s;
  uv_timer_start(&s->tick, c_tick, 5, 5);
  return s;
}

static void clients_run(clients *s) { cr_assert_eq(pthread_create(&s->tid, NULL, clients_main, s), 0); }

/* Waits for the client thread (telling it to close what is still open). */
static void clients_join(clients *s, int stop) {
  if (stop) __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
  pthread_join(s->tid, NULL);
  cr_assert_eq(uv_loop_close(&s->loop), 0);
}

static void clients_free(clients *s) {
  free(s->chunk);
  free(s);
}

/* ---- the server side, on the test's loop ---- */

enum smode { S_ECHO, S_PAUSE, S_CLOSE_ON_FIRST, S_STREAM, S_SINK };

typedef struct srv srv;
typedef struct speer {
  srv *t;
  fl_peer *p;
  int opened, closed, err, thread;
  char reason[256], id[65];
  uint32_t frames;
  uint64_t bytes;
  int order_ok, paused, close_called, frame_after_close, frame_while_paused, frame_in_resume;
  uint64_t sent;
  size_t max_queued;
  int all_written;           /* on_drain saw everything sent written out */
  uv_timer_t timer;
  int timer_on;
} speer;

struct srv {
  uv_loop_t loop;
  uv_timer_t tick;
  fl_tls_config *tls;
  fl_io *io;
  enum smode mode;
  uint32_t nframes;
  uint64_t total;
  uint8_t *chunk;
  int in_resume;
  speer peers[MAX_CLIENTS];
  int npeers, nclosed;
};

static void stream_more(speer *sp) {
  srv *t = sp->t;
  while (sp->sent < t->total && fl_peer_queued(sp->p) < (1u << 20)) {
    fill(t->chunk, CHUNK, sp->sent / CHUNK);
    CHECK(fl_peer_send(sp->p, t->chunk, CHUNK) == 0);
    sp->sent += CHUNK;
    if (fl_peer_queued(sp->p) > sp->max_queued) sp->max_queued = fl_peer_queued(sp->p);
  }
}

static void resume_later(uv_timer_t *tm) {
  speer *sp = tm->data;
  if (sp->closed) return;
  sp->paused = 0;
  sp->t->in_resume = 1;
  fl_peer_resume(sp->p);
  sp->t->in_resume = 0;
}

static void s_open(fl_peer *p) {
  srv *t = fl_peer_data(p);
  CHECK(t->npeers < MAX_CLIENTS);
  speer *sp = &t->peers[t->npeers++];
  sp->t = t;
  sp->p = p;
  sp->opened = 1;
  sp->order_ok = 1;
  sp->thread = fl_peer_thread(p);
  snprintf(sp->id, sizeof sp->id, "%s", fl_peer_id(p));
  fl_peer_set_data(p, sp);
  if (t->mode == S_PAUSE || t->mode == S_SINK) {
    fl_peer_pause(p);
    sp->paused = 1;
  }
  if (t->mode == S_PAUSE) {
    uv_timer_init(&t->loop, &sp->timer);
    sp->timer.data = sp;
    sp->timer_on = 1;
    uv_timer_start(&sp->timer, resume_later, 300, 0);
  }
  if (t->mode == S_STREAM) stream_more(sp);
}

static void s_frame(fl_peer *p, const uint8_t *d, size_t len) {
  speer *sp = fl_peer_data(p);
  srv *t = sp->t;
  if (sp->close_called) sp->frame_after_close = 1;
  if (sp->paused) sp->frame_while_paused = 1;
  if (t->in_resume) sp->frame_in_resume = 1;
  switch (t->mode) {
  case S_ECHO:
  case S_PAUSE:
    if (!seq_ok(d, len, sp->frames)) sp->order_ok = 0;
    sp->frames++;
    if (t->mode == S_ECHO) CHECK(fl_peer_send(p, d, len) == 0);
    if (t->mode == S_PAUSE && sp->frames == t->nframes) CHECK(fl_peer_send(p, (const uint8_t *)"done", 4) == 0);
    return;
  case S_CLOSE_ON_FIRST:
    sp->frames++;
    fl_peer_close(p, "enough");
    sp->close_called = 1;
    CHECK(fl_peer_send(p, d, len) == FL_ECLOSED);
    return;
  case S_SINK:
    if (len != CHUNK || !check_fill(d, len, sp->frames)) sp->order_ok = 0;
    sp->frames++;
    sp->bytes += len;
    if (sp->bytes == t->total) CHECK(fl_peer_send(p, (const uint8_t *)"done", 4) == 0);
    return;
  case S_STREAM:
    return;
  }
}

static void s_drain(fl_peer *p) {
  speer *sp = fl_peer_data(p);
  if (sp->t->mode != S_STREAM) return;
  stream_more(sp);
  if (sp->sent == sp->t->total && fl_peer_queued(p) == 0) sp->all_written = 1;
}

static void s_close(fl_peer *p, int err, const char *reason) {
  speer *sp = fl_peer_data(p);
  CHECK(!sp->closed);
  sp->closed = 1;
  sp->err = err;
  snprintf(sp->reason, sizeof sp->reason, "%s", reason);
  sp->p = NULL;
  sp->t->nclosed++;
  if (sp->timer_on) uv_close((uv_handle_t *)&sp->timer, NULL);
  sp->timer_on = 0;
}

static const fl_peer_callbacks srv_cb = {s_open, s_frame, s_drain, s_close};

static void tick(uv_timer_t *t) { (void)t; }

static void srv_init(srv *t, int threads, enum smode mode) {
  memset(t, 0, sizeof *t);
  t->mode = mode;
  t->chunk = malloc(CHUNK);
  cr_assert_eq(uv_loop_init(&t->loop), 0);
  uv_timer_init(&t->loop, &t->tick);
  uv_timer_start(&t->tick, tick, 5, 5);
  t->tls = tls_cfg(1, "server", NULL);
  cr_assert_eq(fl_io_listen(&t->loop, threads, t->tls, "127.0.0.1", 0, NULL, &srv_cb, t, &t->io), 0);
  cr_assert_gt(fl_io_port(t->io), 0);
  cr_assert_eq(fl_io_threads(t->io), threads);
}

/* Runs the loop until cond holds or ms (times FL_TEST_TIME_SCALE) of loop time pass. */
#define RUN_UNTIL(t, cond, ms)                                                     \
  do {                                                                             \
    uint64_t until_ = uv_now(&(t)->loop) + (uint64_t)((ms) * fl_test_time_scale()); \
    while (!(cond) && uv_now(&(t)->loop) < until_) uv_run(&(t)->loop, UV_RUN_ONCE); \
  } while (0)

/* Closes what is still open, frees the io and checks that nothing is left on the loop. */
static void srv_done(srv *t) {
  for (int i = 0; i < t->npeers; i++)
    if (!t->peers[i].closed) fl_peer_close(t->peers[i].p, "test over");
  RUN_UNTIL(t, t->nclosed == t->npeers, 5000);
  cr_assert_eq(t->nclosed, t->npeers, "peers still open at the end");
  fl_io_free(t->io);
  uv_close((uv_handle_t *)&t->tick, NULL);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  cr_assert_eq(uv_loop_close(&t->loop), 0, "handles left on the control loop");
  fl_tls_config_free(t->tls);
  free(t->chunk);
}

/* ---- tests ---- */

Test(iothreads, many_clients_frames_both_ways_over_two_threads, .timeout = 60) {
  srv t;
  srv_init(&t, 2, S_ECHO);
  fl_tls_config *ctls = tls_cfg(0, "client-0001", "localhost");
  const int n = 50;
  clients *s = clients_start(n, C_ECHO, fl_io_port(t.io), ctls);
  s->nframes = 40;
  clients_run(s);
  RUN_UNTIL(&t, t.npeers == n, 30000);
  cr_assert_eq(t.npeers, n, "%d of %d clients opened", t.npeers, n);
  /* Every connection is counted by the thread that serves it; the kernel spread them. */
  int on0 = fl_io_thread_connections(t.io, 0), on1 = fl_io_thread_connections(t.io, 1);
  int seen[2] = {0, 0};
  for (int i = 0; i < n; i++) seen[t.peers[i].thread]++;
  cr_assert_eq(on0 + on1, n, "%d + %d connections", on0, on1);
  cr_assert_eq(on0, seen[0]);
  cr_assert_gt(on0, 0, "no connection on I/O thread 0");
  cr_assert_gt(on1, 0, "no connection on I/O thread 1");
  cr_assert_str_eq(t.peers[0].id, "client-0001");
  cr_assert_eq(strncmp(fl_peer_addr(t.peers[0].p), "127.0.0.1:", 10), 0);
  for (int i = 0; i < n; i++) cr_assert_eq(fl_peer_send(t.peers[i].p, (const uint8_t *)"go", 2), 0);
  RUN_UNTIL(&t, t.nclosed == n, 30000);
  cr_assert_eq(t.nclosed, n);
  clients_join(s, 0);
  for (int i = 0; i < n; i++) {
    speer *sp = &t.peers[i];
    cr_assert(sp->order_ok, "server: frames of peer %d out of order", i);
    cr_assert_eq(sp->frames, 40);
    cr_assert_eq(sp->err, 0, "peer %d: %s", i, sp->reason);
    cr_assert_str_eq(sp->reason, "closed by peer");
    cli *k = &s->c[i];
    cr_assert(k->opened && k->closed && k->err == 0, "client %d: %s", i, k->reason);
    cr_assert(k->order_ok, "client %d: echoes out of order", i);
    cr_assert_eq(k->echoed, 40);
  }
  cr_assert_eq(fl_io_thread_connections(t.io, 0) + fl_io_thread_connections(t.io, 1), 0);
  clients_free(s);
  srv_done(&t);
  fl_tls_config_free(ctls);
}

Test(iothreads, pause_holds_frames_until_resume, .timeout = 30) {
  srv t;
  srv_init(&t, 2, S_PAUSE);
  t.nframes = 200;
  fl_tls_config *ctls = tls_cfg(0, "client-0002", "localhost");
  clients *s = clients_start(3, C_BURST, fl_io_port(t.io), ctls);
  s->nframes = 200;
  clients_run(s);
  RUN_UNTIL(&t, t.nclosed == 3, 20000);
  cr_assert_eq(t.nclosed, 3);
  clients_join(s, 0);
  for (int i = 0; i < 3; i++) {
    speer *sp = &t.peers[i];
    cr_assert_eq(sp->frames, 200, "peer %d: %u frames", i, sp->frames);
    cr_assert(sp->order_ok);
    cr_assert_not(sp->frame_while_paused, "on_frame while paused");
    cr_assert_not(sp->frame_in_resume, "on_frame from inside fl_peer_resume");
    cr_assert_eq(s->c[i].err, 0, "%s", s->c[i].reason);
  }
  clients_free(s);
  srv_done(&t);
  fl_tls_config_free(ctls);
}

/* The server closes on the first of many frames still in flight: no frame after that,
 * on_close once with our reason, the client sees the close. */
Test(iothreads, close_from_control_with_frames_in_flight, .timeout = 30) {
  srv t;
  srv_init(&t, 2, S_CLOSE_ON_FIRST);
  fl_tls_config *ctls = tls_cfg(0, "client-0003", "localhost");
  clients *s = clients_start(8, C_BURST, fl_io_port(t.io), ctls);
  s->nframes = 500;
  clients_run(s);
  RUN_UNTIL(&t, t.nclosed == 8, 20000);
  cr_assert_eq(t.nclosed, 8);
  clients_join(s, 0);
  for (int i = 0; i < 8; i++) {
    speer *sp = &t.peers[i];
    cr_assert_eq(sp->frames, 1);
    cr_assert_not(sp->frame_after_close);
    cr_assert_eq(sp->err, 0, "%s", sp->reason);
    cr_assert_str_eq(sp->reason, "enough");
    cr_assert(s->c[i].closed);
  }
  clients_free(s);
  srv_done(&t);
  fl_tls_config_free(ctls);
}

/* 64 MiB from the control loop to a client: fl_peer_queued stays bounded, and falls to
 * 0 (with an on_drain) once all is written. */
Test(iothreads, stream_to_client_with_backpressure, .timeout = 60) {
  srv t;
  srv_init(&t, 2, S_STREAM);
  t.total = 64u << 20;
  fl_tls_config *ctls = tls_cfg(0, "client-0004", "localhost");
  clients *s = clients_start(2, C_SINK, fl_io_port(t.io), ctls);
  s->total = t.total;
  clients_run(s);
  RUN_UNTIL(&t, t.nclosed == 2, 50000);
  cr_assert_eq(t.nclosed, 2);
  clients_join(s, 0);
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(s->c[i].bytes, t.total, "client %d got %llu bytes", i, (unsigned long long)s->c[i].bytes);
    cr_assert(s->c[i].order_ok, "client %d: stream corrupted", i);
    /* The sender stops at high_water (1 MiB): at most that plus one frame. */
    cr_assert_leq(t.peers[i].max_queued, (1u << 20) + CHUNK, "queued %zu", t.peers[i].max_queued);
    cr_assert(t.peers[i].all_written, "peer %d: no on_drain with nothing left to write", i);
    cr_assert_eq(t.peers[i].err, 0, "%s", t.peers[i].reason);
  }
  clients_free(s);
  srv_done(&t);
  fl_tls_config_free(ctls);
}

/* A client pushes 64 MiB to a peer the control side keeps paused: the I/O thread stops
 * reading, so the client is held back instead of the server buffering it all. */
Test(iothreads, inbound_backpressure_while_control_is_paused, .timeout = 60) {
  srv t;
  srv_init(&t, 2, S_SINK);
  t.total = 64u << 20;
  fl_tls_config *ctls = tls_cfg(0, "client-0005", "localhost");
  clients *s = clients_start(1, C_PUSH, fl_io_port(t.io), ctls);
  s->total = t.total;
  clients_run(s);
  RUN_UNTIL(&t, t.npeers == 1, 10000);
  cr_assert_eq(t.npeers, 1);
  uint64_t until = uv_now(&t.loop) + 700;
  RUN_UNTIL(&t, 0, until - uv_now(&t.loop));
  uint64_t out = __atomic_load_n(&s->bytes_out, __ATOMIC_RELAXED);
  fprintf(stderr, "inbound: %llu KiB written by the client while the server was paused\n",
          (unsigned long long)(out >> 10));
  /* Kernel socket buffers take some MiB; the rest must wait for the resume. */
  cr_assert_lt(out, 32u << 20, "the client wrote %llu bytes to a paused server", (unsigned long long)out);
  cr_assert_eq(t.peers[0].frames, 0);
  t.peers[0].paused = 0;
  fl_peer_resume(t.peers[0].p);
  RUN_UNTIL(&t, t.nclosed == 1, 50000);
  clients_join(s, 0);
  cr_assert_eq(t.peers[0].bytes, t.total);
  cr_assert(t.peers[0].order_ok);
  cr_assert_not(t.peers[0].frame_while_paused);
  cr_assert_eq(s->c[0].err, 0, "%s", s->c[0].reason);
  clients_free(s);
  srv_done(&t);
  fl_tls_config_free(ctls);
}

/* A refused handshake never reaches the control side; a good client still gets in. */
Test(iothreads, refused_handshake_is_not_presented, .timeout = 30) {
  srv t;
  srv_init(&t, 2, S_ECHO);
  fl_tls_config *bad = tls_cfg(0, NULL, "localhost");
  clients *s = clients_start(4, C_ECHO, fl_io_port(t.io), bad);
  clients_run(s);
  clients_join(s, 0); /* every client ends by itself: refused */
  for (int i = 0; i < 4; i++) {
    cr_assert_not(s->c[i].opened);
    cr_assert_neq(s->c[i].err, 0);
  }
  clients_free(s);
  RUN_UNTIL(&t, 0, 200);
  cr_assert_eq(t.npeers, 0);
  fl_tls_config_free(bad);

  fl_tls_config *good = tls_cfg(0, "client-0006", "localhost");
  s = clients_start(1, C_ECHO, fl_io_port(t.io), good);
  s->nframes = 3;
  clients_run(s);
  RUN_UNTIL(&t, t.npeers == 1, 10000);
  cr_assert_eq(t.npeers, 1);
  fl_peer_send(t.peers[0].p, (const uint8_t *)"go", 2);
  RUN_UNTIL(&t, t.nclosed == 1, 10000);
  clients_join(s, 0);
  cr_assert_eq(s->c[0].echoed, 3);
  clients_free(s);
  srv_done(&t);
  fl_tls_config_free(good);
}

/* After fl_io_stop_listening new clients are refused; open peers go on. */
Test(iothreads, stop_listening_keeps_open_peers, .timeout = 30) {
  srv t;
  srv_init(&t, 2, S_ECHO);
  fl_tls_config *ctls = tls_cfg(0, "client-0007", "localhost");
  clients *s = clients_start(4, C_ECHO, fl_io_port(t.io), ctls);
  s->nframes = 10;
  clients_run(s);
  RUN_UNTIL(&t, t.npeers == 4, 10000);
  cr_assert_eq(t.npeers, 4);
  fl_io_stop_listening(t.io);
  /* A late client is never presented to the control side (whether its handshake gets
   * anywhere depends on when the I/O threads close their sockets) and gets no echo. */
  clients *late = clients_start(1, C_ECHO, fl_io_port(t.io), ctls);
  late->nframes = 1;
  clients_run(late);
  clients_join(late, 0); /* it ends by itself: the server closes it */
  cr_assert_eq(late->c[0].echoed, 0);
  clients_free(late);
  for (int i = 0; i < 4; i++) fl_peer_send(t.peers[i].p, (const uint8_t *)"go", 2);
  RUN_UNTIL(&t, t.nclosed == 4, 10000);
  clients_join(s, 0);
  for (int i = 0; i < 4; i++) cr_assert_eq(s->c[i].echoed, 10);
  cr_assert_eq(t.npeers, 4);
  clients_free(s);
  srv_done(&t);
  fl_tls_config_free(ctls);
}

/* fl_io_free with peers still open: they are closed without callbacks, nothing leaks. */
Test(iothreads, free_with_peers_open, .timeout = 30) {
  srv t;
  srv_init(&t, 3, S_ECHO);
  fl_tls_config *ctls = tls_cfg(0, "client-0008", "localhost");
  clients *s = clients_start(6, C_ECHO, fl_io_port(t.io), ctls);
  s->nframes = 10;
  clients_run(s);
  RUN_UNTIL(&t, t.npeers == 6, 10000);
  cr_assert_eq(t.npeers, 6);
  fl_io_free(t.io);
  clients_join(s, 0); /* the server closed them all */
  for (int i = 0; i < 6; i++) cr_assert(s->c[i].closed);
  cr_assert_eq(t.nclosed, 0);
  clients_free(s);
  uv_close((uv_handle_t *)&t.tick, NULL);
  uv_run(&t.loop, UV_RUN_DEFAULT);
  cr_assert_eq(uv_loop_close(&t.loop), 0);
  fl_tls_config_free(t.tls);
  free(t.chunk);
  fl_tls_config_free(ctls);
}

/* SO_REUSEPORT must not let a second server share a port that is in use. */
Test(iothreads, port_in_use_is_an_error, .timeout = 20) {
  srv t;
  srv_init(&t, 2, S_ECHO);
  fl_io *other = NULL;
  cr_assert_eq(fl_io_listen(&t.loop, 2, t.tls, "127.0.0.1", fl_io_port(t.io), NULL, &srv_cb, &t,
                            &other), FL_ENET);
  cr_assert_null(other);
  srv_done(&t);
}
