/* Connections served by several I/O threads, presented on one control loop (see
 * iothreads.h).
 *
 * Why SO_REUSEPORT listeners rather than one acceptor handing sockets out: an accepted
 * socket then never changes loops, conn.c needs no way to adopt one mid-life (only
 * fl_listen_fds, to listen on sockets we bound), and accepting costs no extra hop.  The
 * kernel hashes connections over the listeners, so the spread is even only on average.
 *
 * Messages.  Each I/O thread has a command queue (control -> I/O) under its mutex, woken
 * by its uv_async_t; the fl_io has one event queue (I/O -> control) under io->mu, woken
 * by the control loop's uv_async_t.  uv_async_send coalesces, so every wake-up drains
 * the whole queue.  Only frames (EV_FRAME) and sends (CMD_SEND) are allocated, with
 * their payload; every other message is embedded in its peer or thread, so the life of
 * a peer never depends on a malloc.  The two embedded messages that can be posted more
 * than once (EV_SENT, CMD_FLOW) are guarded by a "queued" flag under the thread mutex
 * and carry no data: the receiver reads the current state when it handles them.
 *
 * A peer's fields are split by owner: the I/O thread's (conn, out, conn_paused), the
 * control thread's (data, queued, paused, held, ...), and a few under th->mu (inbound
 * counters, the wanted pause state, the sent counter).  id and addr are written before
 * EV_OPEN is posted and only read after.
 *
 * Lifetime.  The I/O thread creates a peer when its handshake completes and posts
 * EV_OPEN.  When the connection ends it posts EV_CLOSE, its last event for that peer.
 * The control side delivers on_close after every frame before it, then posts
 * CMD_RELEASE, the last command for that peer; the I/O thread frees the peer when it
 * gets there, so no command still queued can touch freed memory. */
#include "iothreads.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "frame.h"
#include "log.h"
#include "netaddr.h"

/* Inbound backpressure: a peer's socket is not read while this much waits for control. */
#define RX_HIGH_FRAMES 4
#define RX_HIGH_BYTES (256u << 10)
#define RX_LOW_FRAMES 1
#define RX_LOW_BYTES (64u << 10)
#define MAX_THREADS 256

enum msg_kind {
  /* control -> I/O */
  CMD_SEND,           /* allocated with its payload */
  CMD_FLOW,           /* apply the wanted pause state */
  CMD_CLOSE,
  CMD_RELEASE,
  CMD_STOP_LISTENING,
  CMD_STOP,
  /* I/O -> control */
  EV_OPEN,
  EV_FRAME,           /* allocated with its payload */
  EV_SENT,            /* bytes written to the socket (in sent_pending) */
  EV_CLOSE,
};

typedef struct msg {
  struct msg *next;
  fl_peer *p;
  enum msg_kind kind;
  size_t len;
  uint8_t *data; /* the payload, allocated with the message */
} msg;

typedef struct msg_queue {
  msg *head, *tail;
} msg_queue;

typedef struct io_thread {
  fl_io *io;
  int index;
  uv_loop_t loop;
  uv_async_t wake;
  pthread_t tid;
  int started;
  pthread_mutex_t mu;  /* cmds, nconn, hs_failed, and the peers' shared fields */
  msg_queue cmds;
  int nconn;
  uint64_t hs_failed;  /* connections that ended in their handshake */
  msg stop_listening, stop;
  /* I/O thread only */
  fl_listener *listener;
  fl_peer *peers;      /* every peer not yet released */
  int stopping;
} io_thread;

struct fl_io {
  uv_async_t wake;     /* on the control loop; first: its close callback frees the io */
  uv_loop_t *control;
  fl_peer_callbacks cb;
  void *data;
  fl_conn_options opt; /* opt.heartbeat points at our own copy */
  int port;
  pthread_mutex_t mu;  /* events */
  msg_queue events;
  /* control thread only */
  int listening;
  size_t npeers;       /* opened and not yet ended on the control side */
  fl_peer *runq;       /* peers with held frames to deliver after a resume or close */
  int nthreads;
  io_thread th[];
};

struct fl_peer {
  io_thread *th;
  char id[65];
  int64_t not_after;
  char addr[64];
  int resumed;
  fl_tls_cert_ref cert;  /* its certificate, for revocation */
  /* I/O thread only */
  fl_conn *conn;       /* NULL once the connection ended */
  msg_queue out;       /* CMD_SEND not yet handed to conn */
  uint64_t written;    /* fl_conn_written when last reported */
  int conn_paused;
  fl_peer *io_prev, *io_next;
  char end_reason[256];
  int end_err;
  /* under th->mu */
  size_t rx_frames, rx_bytes; /* EV_FRAME posted, not yet consumed by control */
  int throttled;       /* rx above the high mark: the socket is not read */
  int app_paused;      /* the control side wants no frames */
  int flow_queued;
  size_t sent_pending; /* bytes written to the socket, not yet told to control */
  int sent_queued;
  /* control thread only */
  void *data;
  size_t queued;
  int above_high;      /* queued reached high_water: on_drain owed */
  int paused;
  int closing;         /* fl_peer_close called (or hidden) */
  int ended;           /* EV_CLOSE arrived */
  int hidden;          /* opened after fl_io_stop_listening: never shown */
  int scheduled;
  fl_peer *run_next;
  msg_queue held;      /* EV_FRAME and EV_CLOSE not yet delivered */
  char close_reason[256];
  /* embedded messages */
  msg m_open, m_sent, m_close_ev, m_flow, m_close_cmd, m_release;
};

/* ---- queues ---- */

static void q_push(msg_queue *q, msg *m) {
  m->next = NULL;
  if (q->tail)
    q->tail->next = m;
  else
    q->head = m;
  q->tail = m;
}

static msg *q_pop(msg_queue *q) {
  msg *m = q->head;
  if (m) {
    q->head = m->next;
    if (!q->head) q->tail = NULL;
  }
  return m;
}

static msg *q_take(msg_queue *q) {
  msg *m = q->head;
  q->head = q->tail = NULL;
  return m;
}

static int allocated(const msg *m) { return m->kind == CMD_SEND || m->kind == EV_FRAME; }

static void free_msgs(msg *m) {
  while (m) {
    msg *next = m->next;
    if (allocated(m)) free(m);
    m = next;
  }
}

static msg *msg_new(enum msg_kind kind, fl_peer *p, const uint8_t *payload, size_t len) {
  msg *m = malloc(sizeof *m + len);
  if (!m) return NULL;
  m->kind = kind;
  m->p = p;
  m->len = len;
  m->data = (uint8_t *)(m + 1);
  if (len) memcpy(m->data, payload, len);
  return m;
}

static void embed(msg *m, enum msg_kind kind, fl_peer *p) {
  memset(m, 0, sizeof *m);
  m->kind = kind;
  m->p = p;
}

/* Control -> I/O thread. */
static void post_cmd(io_thread *th, msg *m) {
  pthread_mutex_lock(&th->mu);
  q_push(&th->cmds, m);
  pthread_mutex_unlock(&th->mu);
  uv_async_send(&th->wake);
}

/* I/O thread -> control. */
static void post_ev(fl_io *io, msg *m) {
  pthread_mutex_lock(&io->mu);
  q_push(&io->events, m);
  pthread_mutex_unlock(&io->mu);
  uv_async_send(&io->wake);
}

/* ---- the I/O side ---- */

static io_thread *thread_of(const fl_conn *c) { return fl_conn_loop(c)->data; }

/* Tells control about bytes written to the socket (coalesced into one EV_SENT). */
static void report_sent(fl_peer *p, size_t n) {
  io_thread *th = p->th;
  pthread_mutex_lock(&th->mu);
  p->sent_pending += n;
  int post = !p->sent_queued;
  p->sent_queued = 1;
  pthread_mutex_unlock(&th->mu);
  if (post) post_ev(th->io, &p->m_sent);
}

/* Hands queued frames to the connection while its own queue has room (all of them when
 * closing); conn's on_drain calls again. */
static void feed(fl_peer *p, int all) {
  size_t high = p->th->io->opt.high_water;
  while (p->conn && p->out.head && (all || fl_conn_queued(p->conn) <= high)) {
    msg *m = q_pop(&p->out);
    fl_conn_send(p->conn, m->data, m->len); /* on failure conn ends: on_close follows */
    free(m);
  }
}

/* The socket is read unless control paused the peer or too much waits for it. */
static void apply_flow(fl_peer *p) {
  io_thread *th = p->th;
  pthread_mutex_lock(&th->mu);
  int want = p->app_paused || p->throttled;
  pthread_mutex_unlock(&th->mu);
  if (!p->conn || want == p->conn_paused) return;
  p->conn_paused = want;
  if (want)
    fl_conn_pause(p->conn);
  else
    fl_conn_resume(p->conn);
}

static void io_open(fl_conn *c) {
  io_thread *th = thread_of(c);
  if (th->stopping) {
    fl_conn_close(c, "server shutting down");
    return;
  }
  fl_peer *p = calloc(1, sizeof *p);
  if (!p) {
    fl_conn_close(c, "server out of memory");
    return;
  }
  p->th = th;
  p->conn = c;
  snprintf(p->id, sizeof p->id, "%s", fl_conn_peer_id(c));
  p->not_after = fl_conn_peer_not_after(c);
  snprintf(p->addr, sizeof p->addr, "%s", fl_conn_peer_addr(c));
  p->resumed = fl_conn_resumed(c);
  p->cert = *fl_conn_peer_cert(c);
  embed(&p->m_open, EV_OPEN, p);
  embed(&p->m_sent, EV_SENT, p);
  embed(&p->m_close_ev, EV_CLOSE, p);
  embed(&p->m_flow, CMD_FLOW, p);
  embed(&p->m_close_cmd, CMD_CLOSE, p);
  embed(&p->m_release, CMD_RELEASE, p);
  p->io_next = th->peers;
  if (th->peers) th->peers->io_prev = p;
  th->peers = p;
  fl_conn_set_data(c, p);
  pthread_mutex_lock(&th->mu);
  th->nconn++;
  pthread_mutex_unlock(&th->mu);
  post_ev(th->io, &p->m_open);
}

static void io_frame(fl_conn *c, const uint8_t *payload, size_t len) {
  fl_peer *p = fl_conn_data(c);
  io_thread *th = p->th;
  msg *m = msg_new(EV_FRAME, p, payload, len);
  if (!m) {
    fl_conn_close(c, "server out of memory");
    return;
  }
  /* Counted before it is posted: control may consume it at once. */
  pthread_mutex_lock(&th->mu);
  p->rx_frames++;
  p->rx_bytes += len;
  if (p->rx_frames >= RX_HIGH_FRAMES || p->rx_bytes >= RX_HIGH_BYTES) p->throttled = 1;
  pthread_mutex_unlock(&th->mu);
  post_ev(th->io, m);
  apply_flow(p);
}

/* The connection wrote some of its queue: tell control, and hand it more. */
static void io_drain(fl_conn *c) {
  fl_peer *p = fl_conn_data(c);
  uint64_t w = fl_conn_written(c);
  if (w != p->written) report_sent(p, (size_t)(w - p->written));
  p->written = w;
  feed(p, 0);
}

static void io_close(fl_conn *c, int err, const char *reason) {
  io_thread *th = thread_of(c);
  fl_peer *p = fl_conn_data(c);
  if ((void *)p == (void *)th) { /* its handshake failed: no peer, conn logged it */
    pthread_mutex_lock(&th->mu);
    th->hs_failed++;
    pthread_mutex_unlock(&th->mu);
    return;
  }
  p->conn = NULL;
  free_msgs(q_take(&p->out));
  p->end_err = err;
  snprintf(p->end_reason, sizeof p->end_reason, "%s", reason ? reason : "");
  pthread_mutex_lock(&th->mu);
  th->nconn--;
  pthread_mutex_unlock(&th->mu);
  post_ev(th->io, &p->m_close_ev);
}

static const fl_conn_callbacks io_conn_cb = {io_open, io_frame, io_drain, io_close};

static void release(io_thread *th, fl_peer *p) {
  if (p->io_prev)
    p->io_prev->io_next = p->io_next;
  else
    th->peers = p->io_next;
  if (p->io_next) p->io_next->io_prev = p->io_prev;
  free_msgs(q_take(&p->out));
  free_msgs(q_take(&p->held));
  free(p);
}

static void io_command(io_thread *th, msg *m) {
  fl_peer *p = m->p;
  switch (m->kind) {
  case CMD_SEND:
    if (!p->conn) {
      free(m);
      return;
    }
    q_push(&p->out, m);
    feed(p, 0);
    return;
  case CMD_FLOW:
    pthread_mutex_lock(&th->mu);
    p->flow_queued = 0;
    pthread_mutex_unlock(&th->mu);
    apply_flow(p);
    return;
  case CMD_CLOSE:
    if (!p->conn) return;
    feed(p, 1); /* what control sent before closing goes out first */
    fl_conn_close(p->conn, p->close_reason);
    return;
  case CMD_RELEASE:
    release(th, p);
    return;
  case CMD_STOP_LISTENING:
  case CMD_STOP:
    pthread_mutex_lock(&th->mu); /* fl_io_set_tls reads it from the control thread */
    if (th->listener) fl_listener_close(th->listener);
    th->listener = NULL;
    pthread_mutex_unlock(&th->mu);
    if (m->kind == CMD_STOP_LISTENING) return;
    th->stopping = 1;
    for (fl_peer *q = th->peers; q; q = q->io_next)
      if (q->conn) fl_conn_close(q->conn, "server shutting down");
    uv_close((uv_handle_t *)&th->wake, NULL);
    return;
  default:
    return;
  }
}

static void io_wake(uv_async_t *a) {
  io_thread *th = a->data;
  pthread_mutex_lock(&th->mu);
  msg *m = q_take(&th->cmds);
  pthread_mutex_unlock(&th->mu);
  while (m) {
    msg *next = m->next; /* read first: handling may free or re-post m */
    io_command(th, m);
    m = next;
  }
}

static void *io_main(void *arg) {
  io_thread *th = arg;
  uv_run(&th->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* ---- the control side ---- */

/* The control loop stays alive while the io listens or a peer is known to it. */
static void update_ref(fl_io *io) {
  if (io->listening || io->npeers)
    uv_ref((uv_handle_t *)&io->wake);
  else
    uv_unref((uv_handle_t *)&io->wake);
}

static void schedule(fl_peer *p) {
  fl_io *io = p->th->io;
  if (!p->scheduled) {
    p->scheduled = 1;
    p->run_next = io->runq;
    io->runq = p;
  }
  uv_async_send(&io->wake);
}

static void unschedule(fl_peer *p) {
  if (!p->scheduled) return;
  for (fl_peer **q = &p->th->io->runq; *q; q = &(*q)->run_next) {
    if (*q == p) {
      *q = p->run_next;
      break;
    }
  }
  p->scheduled = 0;
}

/* Asks the I/O thread to apply the peer's wanted pause state (one request in flight). */
static void post_flow_locked(fl_peer *p) {
  if (p->flow_queued) return;
  p->flow_queued = 1;
  q_push(&p->th->cmds, &p->m_flow);
}

/* A frame left the inbound queue: below the low mark the socket is read again. */
static void consumed(fl_peer *p, size_t len) {
  io_thread *th = p->th;
  int wake = 0;
  pthread_mutex_lock(&th->mu);
  p->rx_frames--;
  p->rx_bytes -= len;
  if (p->throttled && p->rx_frames <= RX_LOW_FRAMES && p->rx_bytes <= RX_LOW_BYTES) {
    p->throttled = 0;
    wake = !p->flow_queued;
    post_flow_locked(p);
  }
  pthread_mutex_unlock(&th->mu);
  if (wake) uv_async_send(&th->wake);
}

/* Delivers held frames in order (while not paused; dropped once closing), then on_close. */
static void deliver(fl_peer *p) {
  fl_io *io = p->th->io;
  msg *m;
  while ((m = p->held.head)) {
    if (m->kind == EV_FRAME) {
      if (p->paused && !p->closing) return;
      q_pop(&p->held);
      if (!p->closing && io->cb.on_frame) io->cb.on_frame(p, m->data, m->len);
      consumed(p, m->len);
      free(m);
      continue;
    }
    q_pop(&p->held); /* EV_CLOSE, the last event for p */
    unschedule(p);
    if (!p->hidden && io->cb.on_close) io->cb.on_close(p, p->end_err, p->end_reason);
    io->npeers--;
    post_cmd(p->th, &p->m_release);
    update_ref(io);
    return;
  }
}

static void dispatch(fl_io *io, msg *m) {
  fl_peer *p = m->p;
  switch (m->kind) {
  case EV_OPEN:
    io->npeers++;
    update_ref(io);
    p->data = io->data;
    if (!io->listening) { /* opened after fl_io_stop_listening: never shown */
      p->hidden = 1;
      fl_peer_close(p, "no longer accepting connections");
      return;
    }
    if (io->cb.on_open) io->cb.on_open(p);
    return;
  case EV_SENT: {
    pthread_mutex_lock(&p->th->mu);
    size_t n = p->sent_pending;
    p->sent_pending = 0;
    p->sent_queued = 0;
    pthread_mutex_unlock(&p->th->mu);
    p->queued = n < p->queued ? p->queued - n : 0;
    if (!p->closing && !p->ended &&
        ((p->above_high && p->queued < io->opt.high_water / 2) || p->queued == 0)) {
      p->above_high = 0;
      if (io->cb.on_drain) io->cb.on_drain(p);
    }
    return;
  }
  case EV_CLOSE:
    p->ended = 1;
    /* fall through */
  case EV_FRAME:
    q_push(&p->held, m);
    deliver(p);
    return;
  default:
    return;
  }
}

static void ctl_wake(uv_async_t *a) {
  fl_io *io = a->data;
  pthread_mutex_lock(&io->mu);
  msg *m = q_take(&io->events);
  pthread_mutex_unlock(&io->mu);
  while (m) {
    msg *next = m->next; /* read first: handling may re-post m (EV_SENT) */
    dispatch(io, m);
    m = next;
  }
  fl_peer *p;
  while ((p = io->runq)) {
    io->runq = p->run_next;
    p->scheduled = 0;
    deliver(p);
  }
}

/* ---- peers ---- */

int fl_peer_send(fl_peer *p, const uint8_t *payload, size_t len) {
  if (p->closing || p->ended) return FL_ECLOSED;
  fl_io *io = p->th->io;
  if (len > io->opt.max_frame) return FL_ETOOBIG;
  if (p->queued + len > io->opt.max_queued) { /* it does not read what it is sent */
    fl_warn("io", "%s (%s): %zu bytes wait to be written, more than %zu: the peer does not "
            "read; closing", p->id, p->addr, p->queued + len, io->opt.max_queued);
    fl_peer_close(p, "the peer does not read what it is sent (output queue full)");
    return FL_ECLOSED;
  }
  msg *m = msg_new(CMD_SEND, p, payload, len);
  if (!m) return FL_ENOMEM;
  p->queued += len;
  if (p->queued >= io->opt.high_water) p->above_high = 1;
  post_cmd(p->th, m);
  return 0;
}

size_t fl_peer_queued(const fl_peer *p) { return p->queued; }

static void set_paused(fl_peer *p, int paused) {
  io_thread *th = p->th;
  p->paused = paused;
  pthread_mutex_lock(&th->mu);
  p->app_paused = paused;
  int wake = !p->flow_queued;
  post_flow_locked(p);
  pthread_mutex_unlock(&th->mu);
  if (wake) uv_async_send(&th->wake);
}

void fl_peer_pause(fl_peer *p) {
  if (p->paused || p->closing || p->ended) return;
  set_paused(p, 1);
}

void fl_peer_resume(fl_peer *p) {
  if (!p->paused || p->closing) return;
  if (!p->ended) set_paused(p, 0);
  p->paused = 0;
  if (p->held.head) schedule(p);
}

void fl_peer_close(fl_peer *p, const char *reason) {
  if (p->closing) return;
  p->closing = 1;
  snprintf(p->close_reason, sizeof p->close_reason, "%s", reason ? reason : "");
  if (!p->ended) post_cmd(p->th, &p->m_close_cmd);
  if (p->held.head) schedule(p);
}

void *fl_peer_data(const fl_peer *p) { return p->data; }
void fl_peer_set_data(fl_peer *p, void *data) { p->data = data; }
const char *fl_peer_id(const fl_peer *p) { return p->id; }
int64_t fl_peer_not_after(const fl_peer *p) { return p->not_after; }
int fl_peer_resumed(const fl_peer *p) { return p->resumed; }
int fl_peer_revoked(const fl_peer *p, const fl_tls_config *tls) {
  return fl_tls_config_revokes(tls, &p->cert);
}

void fl_io_set_tls(fl_io *io, const fl_tls_config *tls) {
  for (int i = 0; i < io->nthreads; i++) {
    io_thread *th = &io->th[i];
    pthread_mutex_lock(&th->mu);
    if (th->listener) fl_listener_set_tls(th->listener, tls);
    pthread_mutex_unlock(&th->mu);
  }
}
const char *fl_peer_addr(const fl_peer *p) { return p->addr; }
int fl_peer_thread(const fl_peer *p) { return p->th->index; }

/* ---- the io ---- */

/* Closes what thread_init made, on a thread that was never started. */
static void thread_teardown(io_thread *th) {
  if (th->listener) fl_listener_close(th->listener);
  th->listener = NULL;
  uv_close((uv_handle_t *)&th->wake, NULL);
  uv_run(&th->loop, UV_RUN_DEFAULT);
  uv_loop_close(&th->loop);
  pthread_mutex_destroy(&th->mu);
}

/* Thread i's loop and its listener on fds (n sockets, one per address; owned from the
 * call on). */
static int thread_init(fl_io *io, int i, const fl_tls_config *tls, const int *fds, int n) {
  io_thread *th = &io->th[i];
  th->io = io;
  th->index = i;
  int r = uv_loop_init(&th->loop);
  if (r < 0) {
    for (int k = 0; k < n; k++) close(fds[k]);
    return FL_ENOMEM;
  }
  th->loop.data = th;
  pthread_mutex_init(&th->mu, NULL);
  uv_async_init(&th->loop, &th->wake, io_wake);
  th->wake.data = th;
  embed(&th->stop_listening, CMD_STOP_LISTENING, NULL);
  embed(&th->stop, CMD_STOP, NULL);
  r = fl_listen_fds(&th->loop, tls, fds, n, &io->opt, &io_conn_cb, th, &th->listener);
  if (r < 0) {
    thread_teardown(th);
    return r;
  }
  return 0;
}

static void io_closed(uv_handle_t *h) { free(h->data); }

int fl_io_listen(uv_loop_t *control, int threads, const fl_tls_config *tls, const char *host,
                 int port, const fl_conn_options *opt, const fl_peer_callbacks *cb, void *data,
                 fl_io **out) {
  *out = NULL;
  if (!control || !tls || !host || port < 0 || port > 65535) return FL_EINVAL;
  if (threads <= 0) threads = (int)uv_available_parallelism();
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  /* SO_REUSEPORT would let us share the port with a listener of another process (of the
   * same user) that set it too: a plain bind of every address first keeps "address in
   * use" an error.  It also picks the port when port is 0, and finds the addresses of a
   * name that this host has; the threads' sockets then bind to those, on that port. */
  fl_listen_set set;
  char why[1024];
  int rc = fl_listen_set_bind(&set, host, port, why, sizeof why);
  if (rc < 0) {
    fl_error("iothreads", "%s", why);
    return rc;
  }
  fl_listen_set_close(&set);

  fl_io *io = calloc(1, sizeof *io + (size_t)threads * sizeof(io_thread));
  if (!io) return FL_ENOMEM;
  io->control = control;
  io->data = data;
  if (cb) io->cb = *cb;
  if (opt)
    io->opt = *opt;
  else
    fl_conn_options_default(&io->opt);
  if (!io->opt.high_water) io->opt.high_water = 1u << 20;
  if (!io->opt.max_frame) io->opt.max_frame = FL_FRAME_DEFAULT_MAX;
  if (!io->opt.max_queued) io->opt.max_queued = 4 * io->opt.high_water + 2 * (size_t)io->opt.max_frame;
  io->opt.heartbeat = NULL;
  if (opt && opt->heartbeat) {
    uint8_t *hb = malloc(opt->heartbeat_len ? opt->heartbeat_len : 1);
    if (!hb) {
      free(io);
      return FL_ENOMEM;
    }
    memcpy(hb, opt->heartbeat, opt->heartbeat_len);
    io->opt.heartbeat = hb;
  }

  io->port = set.port;
  int r = 0, n = 0;
  rc = 0;
  for (; n < threads; n++) {
    int fds[FL_LISTEN_MAX_ADDRS], k = 0;
    for (; k < set.n && (r = fl_listen_set_again(&set, k, &fds[k])) == 0; k++) {}
    if (r < 0) {
      char name[80];
      fl_addr_name((struct sockaddr *)&set.addr[k], name, sizeof name);
      fl_error("iothreads", "cannot listen on %s port %d: %s: %s", host, io->port, name,
               uv_strerror(r));
      while (k > 0) close(fds[--k]);
      rc = FL_ENET;
      break;
    }
    rc = thread_init(io, n, tls, fds, set.n);
    if (rc < 0) break;
  }
  if (rc < 0) {
    for (int i = 0; i < n; i++) thread_teardown(&io->th[i]);
    free((void *)io->opt.heartbeat);
    free(io);
    return rc;
  }
  io->nthreads = threads;
  pthread_mutex_init(&io->mu, NULL);
  uv_async_init(control, &io->wake, ctl_wake);
  io->wake.data = io;
  io->listening = 1;
  for (int i = 0; i < threads; i++) {
    if (pthread_create(&io->th[i].tid, NULL, io_main, &io->th[i]) != 0) {
      fl_error("iothreads", "cannot start I/O thread %d of %d", i + 1, threads);
      for (int j = i; j < threads; j++) thread_teardown(&io->th[j]);
      io->nthreads = i;
      fl_io_free(io);
      return FL_ENOMEM;
    }
    io->th[i].started = 1;
  }
  char names[512] = "", list[500];
  if (set.named) { /* which addresses the name stood for */
    fl_listen_set_names(&set, list, sizeof list);
    snprintf(names, sizeof names, " (%s)", list);
  }
  fl_info("iothreads", "listening on %s port %d%s with %d I/O thread%s", host, io->port, names,
          threads, threads == 1 ? "" : "s");
  *out = io;
  return 0;
}

int fl_io_port(const fl_io *io) { return io->port; }
int fl_io_threads(const fl_io *io) { return io->nthreads; }

int fl_io_thread_connections(fl_io *io, int i) {
  if (i < 0 || i >= io->nthreads) return 0;
  io_thread *th = &io->th[i];
  pthread_mutex_lock(&th->mu);
  int n = th->nconn;
  pthread_mutex_unlock(&th->mu);
  return n;
}

uint64_t fl_io_thread_handshakes_failed(fl_io *io, int i) {
  if (i < 0 || i >= io->nthreads) return 0;
  io_thread *th = &io->th[i];
  pthread_mutex_lock(&th->mu);
  uint64_t n = th->hs_failed;
  pthread_mutex_unlock(&th->mu);
  return n;
}

void fl_io_stop_listening(fl_io *io) {
  if (!io || !io->listening) return;
  io->listening = 0;
  for (int i = 0; i < io->nthreads; i++) post_cmd(&io->th[i], &io->th[i].stop_listening);
  update_ref(io);
}

void fl_io_free(fl_io *io) {
  if (!io) return;
  io->listening = 0;
  for (int i = 0; i < io->nthreads; i++) post_cmd(&io->th[i], &io->th[i].stop);
  for (int i = 0; i < io->nthreads; i++) {
    io_thread *th = &io->th[i];
    pthread_join(th->tid, NULL);
    if (uv_loop_close(&th->loop) != 0) fl_warn("iothreads", "I/O thread %d left handles open", i);
  }
  /* Whatever control did not get to: events, and peers not released. */
  free_msgs(q_take(&io->events));
  for (int i = 0; i < io->nthreads; i++) {
    io_thread *th = &io->th[i];
    free_msgs(q_take(&th->cmds));
    while (th->peers) release(th, th->peers);
    pthread_mutex_destroy(&th->mu);
  }
  pthread_mutex_destroy(&io->mu);
  free((void *)io->opt.heartbeat);
  uv_close((uv_handle_t *)&io->wake, io_closed);
}
