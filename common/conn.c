/* Framed, mutually authenticated TLS connections on a libuv loop (see conn.h).
 *
 * Data path: libuv reads ciphertext into `in`; mbedTLS pulls it through bio_recv, and
 * what it decrypts lands in `pt`, which the frame decoder turns into frames.  Going out,
 * mbedTLS pushes records through bio_send into `out`, which flush() hands to uv_write in
 * one piece.  Nothing here blocks: an empty `in` is MBEDTLS_ERR_SSL_WANT_READ.
 *
 * One timer per connection serves every deadline (handshake, idle, heartbeat, stall,
 * close linger, deferred delivery after resume): it is armed at the earliest one and,
 * since reads and writes only ever push deadlines later, it may fire early and re-arm.
 *
 * Closing: a connection is marked CLOSING (no callback but on_close after that), its two
 * handles are uv_close()d, and when both close callbacks and any pending getaddrinfo
 * have come back, on_close runs and the memory is freed.  So a connection is never freed
 * under one of its own callbacks.
 *
 * Connecting: a name may resolve to several addresses (::1 and 127.0.0.1).  They are
 * tried in order; a failed one has its tcp handle closed and a fresh one made in the
 * close callback (tcp_cycled) for the next, since libuv connects a handle only once.
 * While that close is pending (tcp_cycling), close_handles leaves the tcp handle to
 * tcp_cycled, which closes the replacement at once.  An address that neither accepts
 * nor refuses (its packets dropped on the way) gets an equal share of what is left of
 * the handshake timeout, not all of it, so the next ones are still tried in time. */
#include "conn.h"

#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "frame.h"
#include "log.h"
#include "log_budget.h"
#include "netaddr.h"
#include "tls_internal.h"

#define IN_CAP (64u * 1024)     /* ciphertext read buffer, allocated while in use */
#define PT_CAP (16u * 1024)     /* plaintext of one TLS record */
#define RECORD_OVERHEAD 64u     /* per record: header, explicit nonce, tag (generous) */
#define CLOSE_LINGER_MS 2000u   /* a clean close waits this long for the queue to flush */
#define LISTEN_BACKLOG 4096

enum conn_state { ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSING };

/* A listener's handshakes in progress, shared with its connections (which may outlive
 * it): freed with the last reference. */
typedef struct hs_count {
  unsigned n, refs;
  unsigned refused;    /* connections closed for the cap since the last warning */
  uint64_t warned;     /* when that warning was */
  uint64_t crl_warned; /* when the last "CRL expired" error was */
  fl_log_budget log;   /* lines about connections that fail their handshake */
} hs_count;

static void hs_unref(hs_count *h) {
  if (h && --h->refs == 0) free(h);
}

struct fl_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_loop_t *loop;
  uv_getaddrinfo_t gai;
  uv_connect_t connect_req;
  mbedtls_ssl_context ssl;
  const fl_tls_config *tls;
  char *resume_key;    /* client: "host:port", under which the session is kept */
  int verified;        /* the peer's certificate chain was verified in this handshake */
  fl_tls_cert_ref peer_cert; /* the peer's certificate, for revocation (open connections) */
  char *peer_names;    /* client: the DNS names of the server's certificate, while verifying */
  int resumed;         /* the handshake resumed a session instead */
  fl_frame_decoder dec;
  fl_conn_options opt; /* opt.heartbeat points at our own copy */
  fl_conn_callbacks cb;
  void *data;
  enum conn_state state;
  int is_server;
  int paused;
  int need_process;    /* frames to deliver after a resume */
  int handles_closing, handles_closed, gai_pending;
  int above_high;      /* queue went above high_water; on_drain owed */
  int port;            /* connect: port to use once resolved */
  char *target;        /* connect: "host:port" as asked, for the errors */
  struct addrinfo *ai; /* connect: the resolved addresses, until one connects */
  const struct addrinfo *ai_next; /* the next of them to try */
  int tried;           /* addresses tried so far */
  uint64_t attempt_end; /* when the address being tried gives way to the next (0: never) */
  int tcp_cycling;     /* tcp is closing, to be replaced by a fresh handle for the next */
  int err;
  uint8_t *in;         /* ciphertext read from the socket, [in_off, in_len) unread */
  size_t in_off, in_len;
  uint8_t *pt;         /* decrypted bytes, [pt_off, pt_len) not yet framed */
  size_t pt_off, pt_len;
  uint8_t *out;        /* records waiting for flush() */
  size_t out_len, out_cap;
  size_t out_sent;     /* fl_conn_send payload bytes in out */
  uint64_t written;    /* fl_conn_send payload bytes written to the socket */
  int drain_at_empty;  /* such bytes were written since the last on_drain */
  size_t wq_bytes;     /* handed to uv_write, not yet completed */
  unsigned writes;     /* uv_write requests in flight */
  uint64_t started, last_rx, last_tx, stall_since, close_deadline;
  uint64_t frame_since;  /* a partial frame has waited to be completed since (0: none) */
  hs_count *hs;          /* server: the listener's count, while this handshake counts in it */
  uint64_t dec_frames;   /* frames decoded so far */
  uint64_t frame_mark;   /* dec_frames when frame_since was set */
  uint64_t bytes_in, bytes_out;
  char peer_id[65];
  int64_t peer_not_after; /* the peer certificate's end of validity (Unix time; 0: none) */
  char addr[64];
  char reason[640];
};

/* One socket per address of the host listened on (netaddr.h), one port. */
struct fl_listener {
  hs_count *hs;
  pthread_mutex_t mu;        /* tls may be replaced from another thread */
  const fl_tls_config *tls;  /* a reference of the listener's */
  fl_conn_options opt;
  fl_conn_callbacks cb;
  void *data;
  int port;
  int n, open;               /* sockets; handles not yet closed */
  uv_tcp_t tcp[];
};

typedef struct write_req {
  uv_write_t req;
  fl_conn *c;
  uint8_t *buf;
  size_t len;
  size_t sent;         /* fl_conn_send payload bytes among them */
} write_req;

static void timer_cb(uv_timer_t *t);
static void process(fl_conn *c);
static void connect_failed(fl_conn *c, int status);
static int flush(fl_conn *c);

void fl_conn_options_default(fl_conn_options *o) {
  memset(o, 0, sizeof *o);
  o->max_frame = FL_FRAME_DEFAULT_MAX;
  o->high_water = 1u << 20;
  o->handshake_timeout_ms = 10000;
  o->idle_timeout_ms = 60000;
  o->heartbeat_interval_ms = 15000;
  o->stall_timeout_ms = 60000;
  o->frame_timeout_ms = 60000;
  o->max_handshakes = 256;
}

long fl_conn_raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur == RLIM_INFINITY ? (long)1 << 30 : (long)rl.rlim_cur;
}

/* ---- closing ---- */

/* The handshake no longer counts in its listener's (done, or the connection ended). */
static void hs_release(fl_conn *c) {
  if (!c->hs) return;
  c->hs->n--;
  hs_unref(c->hs);
  c->hs = NULL;
}

static void finish(fl_conn *c) {
  if (c->handles_closed < 2 || c->gai_pending) return;
  hs_release(c);
  if (c->cb.on_close) c->cb.on_close(c, c->err, c->reason);
  mbedtls_ssl_free(&c->ssl);
  fl_tls_config_free((fl_tls_config *)c->tls); /* the connection's reference */
  fl_frame_decoder_free(&c->dec);
  free(c->resume_key);
  free(c->target);
  uv_freeaddrinfo(c->ai);
  free(c->peer_names);
  free(c->in);
  free(c->pt);
  free(c->out);
  free((void *)c->opt.heartbeat);
  free(c);
}

static void handle_closed(uv_handle_t *h) {
  fl_conn *c = h->data;
  c->handles_closed++;
  finish(c);
}

static void close_handles(fl_conn *c) {
  if (c->handles_closing) return;
  c->handles_closing = 1;
  /* A handle closing to make way for the next address: its replacement is closed when
   * it is made (tcp_cycled). */
  if (!c->tcp_cycling) uv_close((uv_handle_t *)&c->tcp, handle_closed);
  uv_close((uv_handle_t *)&c->timer, handle_closed);
}

/* Marks the connection closing; graceful: flush what is queued and send close_notify
 * first (bounded by CLOSE_LINGER_MS), otherwise close at once. */
static void begin_close(fl_conn *c, int err, const char *reason, int graceful) {
  if (c->state == ST_CLOSING) return;
  enum conn_state was = c->state;
  c->state = ST_CLOSING;
  c->err = err;
  snprintf(c->reason, sizeof c->reason, "%s", reason ? reason : "");
  uv_read_stop((uv_stream_t *)&c->tcp);
  if (c->gai_pending) uv_cancel((uv_req_t *)&c->gai);
  if (graceful && was == ST_OPEN) {
    mbedtls_ssl_close_notify(&c->ssl);
    flush(c);
  }
  if (graceful && c->writes > 0) {
    c->close_deadline = uv_now(c->loop) + CLOSE_LINGER_MS;
    uv_timer_start(&c->timer, timer_cb, CLOSE_LINGER_MS, 0);
    return;
  }
  close_handles(c);
}

static const char *who(const fl_conn *c) { return c->peer_id[0] ? c->peer_id : "-"; }

/* Anyone who reaches a listener can make connections that fail their handshake, as
 * fast as it likes: at most HS_LOG_LINES lines about them in each HS_LOG_WINDOW_MS per
 * listener (per I/O thread); the first left out says so, and the next window's first line
 * how many were. */
enum { HS_LOG_LINES = 10, HS_LOG_WINDOW_MS = 10000 };

static int hs_log_ok(fl_conn *c) {
  uint64_t n, in;
  int k = fl_log_budget_take(&c->hs->log, HS_LOG_LINES, uv_now(c->loop) / HS_LOG_WINDOW_MS, &n, &in);
  if (n)
    fl_warn("conn", "%llu more connections that failed before their handshake was complete "
            "were not logged", (unsigned long long)n);
  if (k == FL_LOG_FIRST_SKIP)
    fl_warn("conn", "%d connections failed before their handshake was complete within %d s; "
            "more are counted, not logged", HS_LOG_LINES, HS_LOG_WINDOW_MS / 1000);
  return k == FL_LOG_TAKE;
}

/* Ends the connection with an error, logged with the peer's address and identity. */
__attribute__((format(printf, 3, 4)))
static void fail(fl_conn *c, int err, const char *fmt, ...) {
  if (c->state == ST_CLOSING) return;
  char reason[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  if (!c->hs || hs_log_ok(c)) /* hs: an accepted connection still in its handshake */
    fl_warn("conn", "%s %s: %s (%s)", c->addr, who(c), reason, fl_err_name(err));
  begin_close(c, err, reason, 0);
}

void fl_conn_close(fl_conn *c, const char *reason) {
  if (!c || c->state == ST_CLOSING) return;
  fl_debug("conn", "%s %s: closing: %s", c->addr, who(c), reason ? reason : "");
  begin_close(c, 0, reason, 1);
}

/* ---- timers ---- */

static void consider(uint64_t *next, uint64_t t) {
  if (t < *next) *next = t;
}

static void rearm(fl_conn *c) {
  if (c->state == ST_CLOSING) return;
  uint64_t now = uv_now(c->loop), next = UINT64_MAX;
  if (c->need_process) next = now;
  if (c->state != ST_OPEN && c->opt.handshake_timeout_ms)
    consider(&next, c->started + c->opt.handshake_timeout_ms);
  if (c->state == ST_CONNECTING && c->attempt_end && !c->tcp_cycling)
    consider(&next, c->attempt_end);
  if (c->state == ST_OPEN) {
    if (c->opt.idle_timeout_ms && !c->paused) consider(&next, c->last_rx + c->opt.idle_timeout_ms);
    if (c->opt.heartbeat_interval_ms && c->opt.heartbeat)
      consider(&next, c->last_tx + c->opt.heartbeat_interval_ms);
    if (c->stall_since && c->opt.stall_timeout_ms)
      consider(&next, c->stall_since + c->opt.stall_timeout_ms);
    if (c->frame_since && c->opt.frame_timeout_ms && !c->paused)
      consider(&next, c->frame_since + c->opt.frame_timeout_ms);
  }
  if (next == UINT64_MAX)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, timer_cb, next > now ? next - now : 0, 0);
}

enum { SEND_FRAMED = 1, SEND_COUNTED = 2 }; /* a frame; bytes fl_conn_written counts */
static int send_frame(fl_conn *c, const uint8_t *payload, size_t len, int how);

static void timer_cb(uv_timer_t *t) {
  fl_conn *c = t->data;
  uint64_t now = uv_now(c->loop);
  if (c->state == ST_CLOSING) { /* the clean close did not flush in time */
    close_handles(c);
    return;
  }
  if (c->need_process) {
    c->need_process = 0;
    if (c->state == ST_OPEN) process(c);
    if (c->state == ST_CLOSING) return;
  }
  if (c->state != ST_OPEN) {
    if (c->state == ST_CONNECTING && c->attempt_end && !c->tcp_cycling && now >= c->attempt_end &&
        now - c->started < c->opt.handshake_timeout_ms) {
      c->attempt_end = 0;
      connect_failed(c, UV_ETIMEDOUT); /* on to the next address */
      return;
    }
    if (c->opt.handshake_timeout_ms && now - c->started >= c->opt.handshake_timeout_ms) {
      char tried[340] = "";
      if (c->tried > 1 && c->state != ST_HANDSHAKE)
        snprintf(tried, sizeof tried, " (%d addresses of %s tried)", c->tried, c->target);
      fail(c, FL_ETIMEDOUT, "%s timed out after %u ms%s",
           c->state == ST_HANDSHAKE ? "handshake" : "connect", c->opt.handshake_timeout_ms, tried);
      return;
    }
  } else {
    if (c->opt.idle_timeout_ms && !c->paused && now - c->last_rx >= c->opt.idle_timeout_ms) {
      fail(c, FL_ETIMEDOUT, "idle: nothing received for %u ms", c->opt.idle_timeout_ms);
      return;
    }
    if (c->frame_since && c->opt.frame_timeout_ms && !c->paused &&
        now - c->frame_since >= c->opt.frame_timeout_ms) {
      fail(c, FL_ETIMEDOUT, "frame not completed within %u ms (%u of %u payload bytes)",
           c->opt.frame_timeout_ms, c->dec.hdr_have < FL_FRAME_HEADER ? 0 : c->dec.have,
           c->dec.hdr_have < FL_FRAME_HEADER ? 0 : c->dec.len);
      return;
    }
    if (c->stall_since && c->opt.stall_timeout_ms &&
        now - c->stall_since >= c->opt.stall_timeout_ms) {
      fail(c, FL_ETIMEDOUT, "stalled: peer left %zu bytes unread for %u ms",
           fl_conn_queued(c), c->opt.stall_timeout_ms);
      return;
    }
    if (c->opt.heartbeat_interval_ms && c->opt.heartbeat &&
        now - c->last_tx >= c->opt.heartbeat_interval_ms) {
      if (c->opt.heartbeat_refresh) c->opt.heartbeat_refresh(c);
      if (send_frame(c, c->opt.heartbeat, c->opt.heartbeat_len, SEND_FRAMED) < 0) return;
      c->last_tx = now; /* even if the queue was full and nothing went out yet */
    }
  }
  rearm(c);
}

/* ---- bytes to and from mbedTLS ---- */

/* Room for `more` bytes of records.  A new buffer is sized to what is asked (send_frame
 * asks for a whole frame's records at once): a server that sends a small message to a
 * thousand clients at once holds a thousand small buffers until the writes complete,
 * not a thousand 16 KiB ones. */
static int out_reserve(fl_conn *c, size_t more) {
  if (c->out_cap - c->out_len >= more) return 0;
  size_t cap = c->out_cap ? c->out_cap : (more + 255) & ~(size_t)255;
  while (cap - c->out_len < more) cap *= 2;
  uint8_t *p = realloc(c->out, cap);
  if (!p) return FL_ENOMEM;
  c->out = p;
  c->out_cap = cap;
  return 0;
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len) {
  fl_conn *c = ctx;
  if (out_reserve(c, len) < 0) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  memcpy(c->out + c->out_len, buf, len);
  c->out_len += len;
  return (int)len;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len) {
  fl_conn *c = ctx;
  size_t avail = c->in_len - c->in_off;
  if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  if (len > avail) len = avail;
  memcpy(buf, c->in + c->in_off, len);
  c->in_off += len;
  return (int)len;
}

static void write_cb(uv_write_t *req, int status) {
  write_req *w = req->data;
  fl_conn *c = w->c;
  c->wq_bytes -= w->len;
  c->writes--;
  if (status == 0) {
    c->bytes_out += w->len;
    c->written += w->sent;
    if (w->sent) c->drain_at_empty = 1;
  }
  free(w->buf);
  free(w);
  if (c->state == ST_CLOSING) {
    if (c->writes == 0) close_handles(c);
    return;
  }
  if (status < 0) {
    fail(c, FL_ENET, "write failed: %s", uv_strerror(status));
    return;
  }
  size_t q = fl_conn_queued(c);
  if (q <= c->opt.high_water) c->stall_since = 0;
  if ((c->above_high && q < c->opt.high_water / 2) || (q == 0 && (c->above_high || c->drain_at_empty))) {
    c->above_high = 0;
    c->drain_at_empty = 0;
    if (c->cb.on_drain) c->cb.on_drain(c);
  }
}

/* Hands the records mbedTLS produced to libuv (ownership of `out` moves to the request). */
static int flush(fl_conn *c) {
  if (c->out_len == 0 || c->handles_closing) return 0;
  write_req *w = malloc(sizeof *w);
  if (!w) return FL_ENOMEM;
  w->c = c;
  w->buf = c->out;
  w->len = c->out_len;
  w->sent = c->out_sent;
  c->out_sent = 0;
  w->req.data = w;
  c->out = NULL;
  c->out_len = c->out_cap = 0;
  uv_buf_t b = uv_buf_init((char *)w->buf, (unsigned)w->len);
  int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
  if (r < 0) {
    free(w->buf);
    free(w);
    fail(c, FL_ENET, "write failed: %s", uv_strerror(r));
    return FL_ENET;
  }
  c->writes++;
  c->wq_bytes += w->len;
  c->last_tx = uv_now(c->loop);
  if (c->wq_bytes > c->opt.high_water) {
    c->above_high = 1;
    if (!c->stall_since && c->state == ST_OPEN) {
      c->stall_since = uv_now(c->loop);
      rearm(c);
    }
  }
  return 0;
}

static void tls_reason(int r, char *out, size_t n) {
  char msg[160];
  mbedtls_strerror(r, msg, sizeof msg);
  snprintf(out, n, "%s (-0x%04x)", msg, (unsigned)-r);
}

/* The CN of a certificate's subject, made printable. */
/* An X.509 time as Unix time (UTC; days from the civil date). */
static int64_t x509_epoch(const mbedtls_x509_time *t) {
  int64_t y = t->year, m = t->mon, d = t->day;
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400, yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  int64_t days = era * 146097 + doe - 719468;
  return days * 86400 + t->hour * 3600 + t->min * 60 + t->sec;
}

static void cert_cn(const mbedtls_x509_crt *crt, char *out, size_t n) {
  out[0] = '\0';
  for (const mbedtls_x509_name *name = &crt->subject; name; name = name->next) {
    if (name->oid.p && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &name->oid) == 0) {
      size_t len = name->val.len < n - 1 ? name->val.len : n - 1;
      for (size_t i = 0; i < len; i++) {
        unsigned char ch = name->val.p[i];
        out[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
      }
      out[len] = '\0';
      return;
    }
  }
}

/* The DNS names of a certificate's subjectAltName, comma-separated (mbedTLS 2.28 checks
 * a server's name against those, and its CN, only). */
static void cert_dns_names(const mbedtls_x509_crt *crt, char *out, size_t n) {
  size_t used = 0;
  out[0] = '\0';
  for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next) {
    if (s->buf.tag != (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2) || used + 4 >= n) continue;
    used += (size_t)snprintf(out + used, n - used, "%s%.*s", used ? ", " : "", (int)s->buf.len,
                             (const char *)s->buf.p);
    if (used >= n) used = n - 1;
  }
}

/* mbedTLS calls this for each certificate of the peer's chain it verifies: only in a
 * full handshake.  It changes nothing of the verification. */
static int verify_seen(void *ctx, mbedtls_x509_crt *crt, int depth, uint32_t *flags) {
  (void)flags;
  fl_conn *c = ctx;
  c->verified = 1;
  if (depth == 0 && !c->is_server && (*flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)) {
    free(c->peer_names); /* what cert_advice names */
    if ((c->peer_names = malloc(200)) != NULL) cert_dns_names(crt, c->peer_names, 200);
  }
  return 0;
}

/* What to do about a certificate problem that retrying will not fix: the client's own
 * verification of the server (flags), or the server's alert refusing the client's
 * certificate.  "" when there is nothing to say. */
static void cert_advice(const fl_conn *c, uint32_t flags, int alert, char *out, size_t n) {
  out[0] = '\0';
  if (c->is_server) return;
  if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) {
    const char *names = c->peer_names ? c->peer_names : "";
    snprintf(out, n, "; the server's certificate does not carry the name '%s'%s%s%s: connect "
             "by a name it carries, or pass --server-name NAME (or reissue it with that name: "
             "certs/gen.sh ... HOST)", c->ssl.hostname ? c->ssl.hostname : "?",
             names[0] ? " (it names " : "", names, names[0] ? ")" : "");
  } else if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) {
    snprintf(out, n, "; the server's certificate is not signed by the CA given (--ca): use the "
             "ca.crt of the federation that server belongs to");
  } else if (flags & MBEDTLS_X509_BADCERT_EXPIRED) {
    snprintf(out, n, "; the server's certificate has expired: its operator must issue a new one");
  } else if (flags & MBEDTLS_X509_BADCERT_FUTURE) {
    snprintf(out, n, "; the server's certificate is not valid yet: check this machine's clock");
  } else if (flags & MBEDTLS_X509_BADCERT_REVOKED) {
    snprintf(out, n, "; the server's certificate is revoked (--crl)");
  } else if (alert) {
    const char *what = alert == MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED ? "it is revoked"
                       : alert == MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED ? "it has expired (or is not valid yet: check the clocks)"
                       : alert == MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA ? "it is not signed by the server's CA"
                       : "it is not one the server accepts";
    snprintf(out, n, "; the server refuses this client's certificate: %s: ask the federation's "
             "operator for a valid certificate and key (--cert, --key)", what);
  }
}

/* Alerts a server sends when it refuses the client's certificate. */
static int cert_alert(int alert) {
  return alert == MBEDTLS_SSL_ALERT_MSG_BAD_CERT || alert == MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT ||
         alert == MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED || alert == MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED ||
         alert == MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN || alert == MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA ||
         alert == MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED;
}

static void handshake_failed(fl_conn *c, int r) {
  char why[200], cert[300] = "", advice[400];
  tls_reason(r, why, sizeof why);
  uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
  int err = FL_ETLS;
  /* Name the certificate the peer presented, if it got that far (it is not verified, so
   * it only goes into the reason, never into peer_id). */
  char presented[96] = "";
  if (c->ssl.session_negotiate && c->ssl.session_negotiate->peer_cert) {
    char cn[65];
    cert_cn(c->ssl.session_negotiate->peer_cert, cn, sizeof cn);
    snprintf(presented, sizeof presented, " (presented CN=%s)", cn);
  }
  if (flags != 0 && flags != (uint32_t)-1) {
    char info[256];
    mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
    size_t l = strlen(info);
    while (l && info[l - 1] == '\n') info[--l] = '\0';
    for (char *p = info; *p; p++)
      if (*p == '\n') *p = ';';
    snprintf(cert, sizeof cert, "; certificate%s: %s", presented, info);
    err = FL_ECERT;
  }
  if (r == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED || r == MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE)
    err = FL_ECERT;
  /* Our CRL expired while we run: no client can be verified.  Said as an error, at most
   * once a minute per listener, naming the cure (a fresh CRL, as at start-up). */
  if (flags != (uint32_t)-1 && (flags & MBEDTLS_X509_BADCRL_EXPIRED) && c->hs) {
    uint64_t now = uv_now(c->loop);
    if (!c->hs->crl_warned || now - c->hs->crl_warned >= 60000) {
      c->hs->crl_warned = now;
      fl_error("conn", "the CRL has expired: every client is refused until a fresh CRL is "
               "installed (--crl) and reloaded (SIGHUP)");
    }
  }
  int alert = 0;
  if (r == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE && c->ssl.in_msg && cert_alert(c->ssl.in_msg[1])) {
    alert = c->ssl.in_msg[1];
    err = FL_ECERTREFUSED;
  }
  cert_advice(c, err == FL_ECERT ? flags : 0, alert, advice, sizeof advice);
  /* The next attempt is a full handshake, whatever went wrong with this one. */
  if (c->resume_key) fl__tls_session_forget(c->tls, c->resume_key);
  fail(c, err, "handshake failed: %s%s%s", why, cert, advice);
}

static void handshake_done(fl_conn *c) {
  const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&c->ssl);
  if (peer)
    cert_cn(peer, c->peer_id, sizeof c->peer_id);
  else
    c->peer_id[0] = '\0';
  c->peer_not_after = peer ? x509_epoch(&peer->valid_to) : 0;
  /* A full handshake verified the peer's certificate just now; a resumed one took the
   * certificate from the session (server: from the ticket, checked as it was opened). */
  c->resumed = peer && !c->verified;
  hs_release(c);
  fl__tls_cert_ref(peer, &c->peer_cert);
  if (c->resume_key) fl__tls_session_keep(c->tls, c->resume_key, &c->ssl);
  c->state = ST_OPEN;
  c->last_rx = c->last_tx = uv_now(c->loop);
  fl_debug("conn", "%s %s: open, %s%s", c->addr, who(c), mbedtls_ssl_get_ciphersuite(&c->ssl),
           c->resumed ? ", session resumed" : "");
  if (c->cb.on_open) c->cb.on_open(c);
  if (c->state == ST_OPEN) rearm(c);
}

/* Decrypts and delivers frames until mbedTLS wants more ciphertext, or we are paused or
 * closing.  Plaintext mbedTLS still holds is drained even if the socket has nothing new. */
static void process(fl_conn *c) {
  while (c->state == ST_OPEN && !c->paused) {
    if (c->pt_off < c->pt_len) {
      const uint8_t *frame;
      size_t flen;
      int n = fl_frame_decode(&c->dec, c->pt + c->pt_off, c->pt_len - c->pt_off, &frame, &flen);
      if (n < 0) {
        if (n == FL_ETOOBIG)
          fail(c, n, "framing: peer announced a %u-byte frame, limit %u", c->dec.len,
               c->opt.max_frame);
        else
          fail(c, n, "framing: %s", fl_strerror(n));
        return;
      }
      c->pt_off += (size_t)n;
      if (frame) c->dec_frames++;
      if (frame && c->cb.on_frame) c->cb.on_frame(c, frame, flen);
      continue;
    }
    if (!c->pt && !(c->pt = malloc(PT_CAP))) {
      fail(c, FL_ENOMEM, "no memory for the receive buffer");
      return;
    }
    int r = mbedtls_ssl_read(&c->ssl, c->pt, PT_CAP);
    if (r > 0) {
      c->pt_off = 0;
      c->pt_len = (size_t)r;
      continue;
    }
    c->pt_off = c->pt_len = 0;
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) break;
    if (r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || r == 0) {
      if (fl_frame_decoder_partial(&c->dec)) {
        fail(c, FL_ETRUNC, "truncated frame: peer closed after %u of %u payload bytes",
             c->dec.hdr_have < FL_FRAME_HEADER ? 0 : c->dec.have,
             c->dec.hdr_have < FL_FRAME_HEADER ? 0 : c->dec.len);
        return;
      }
      fl_debug("conn", "%s %s: peer closed", c->addr, who(c));
      begin_close(c, 0, "closed by peer", 1);
      return;
    }
    char why[200];
    tls_reason(r, why, sizeof why);
    fail(c, FL_ETLS, "TLS read failed: %s", why);
    return;
  }
  if (c->state != ST_CLOSING) flush(c);
  /* A frame begun and not complete: its deadline runs from the first of its bytes (a
   * frame completed and the next one begun in the same read restart it). */
  if (c->state == ST_OPEN) {
    int partial = fl_frame_decoder_partial(&c->dec);
    if (!partial) {
      c->frame_since = 0;
    } else if (!c->frame_since || c->dec_frames != c->frame_mark) {
      c->frame_since = uv_now(c->loop);
      c->frame_mark = c->dec_frames;
      rearm(c);
    }
  }
  if (c->pt && c->pt_off == c->pt_len) {
    free(c->pt);
    c->pt = NULL;
    c->pt_off = c->pt_len = 0;
  }
  /* Nor the ciphertext buffer, once mbedTLS took all of it (a resumed connection gets
   * here from its timer, not from read_cb, and may read nothing more for long). */
  if (c->in && c->in_off == c->in_len) {
    free(c->in);
    c->in = NULL;
    c->in_off = c->in_len = 0;
  }
  /* Nor a frame buffer: one 256 KiB tensor chunk would otherwise stay with the
   * connection for good, and a server holds thousands of mostly idle ones. */
  if (c->state == ST_OPEN && c->pt_off == c->pt_len && c->dec.buf &&
      !c->dec.failed && !fl_frame_decoder_partial(&c->dec))
    fl_frame_decoder_free(&c->dec);
}

/* New ciphertext arrived (or the handshake starts): move the state machine on. */
static void drive(fl_conn *c) {
  if (c->state == ST_HANDSHAKE) {
    int r = mbedtls_ssl_handshake(&c->ssl);
    flush(c);
    if (c->state == ST_CLOSING) return;
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) return;
    if (r != 0) {
      handshake_failed(c, r);
      return;
    }
    handshake_done(c);
  }
  if (c->state == ST_OPEN) process(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  fl_conn *c = h->data;
  if (!c->in) {
    c->in = malloc(IN_CAP);
    c->in_off = c->in_len = 0;
  }
  if (!c->in) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  if (c->in_off == c->in_len) {
    c->in_off = c->in_len = 0;
  } else if (c->in_off > 0) {
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  *buf = uv_buf_init((char *)c->in + c->in_len, (unsigned)(IN_CAP - c->in_len));
}

/* Idle connections hold no read buffers, nor do closing ones, which read no more: a
 * server saying goodbye to thousands at once would otherwise hold one each. */
static void release_read_buffers(fl_conn *c) {
  if (c->in && (c->in_off == c->in_len || c->state == ST_CLOSING)) {
    free(c->in);
    c->in = NULL;
    c->in_off = c->in_len = 0;
  }
  if (c->pt && c->state == ST_CLOSING) {
    free(c->pt);
    c->pt = NULL;
    c->pt_off = c->pt_len = 0;
  }
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  fl_conn *c = s->data;
  if (c->state == ST_CLOSING) {
    release_read_buffers(c);
    return;
  }
  if (nread > 0) {
    c->in_len += (size_t)nread;
    c->bytes_in += (uint64_t)nread;
    c->last_rx = uv_now(c->loop);
    drive(c);
  } else if (nread == UV_EOF) {
    if (c->state == ST_HANDSHAKE)
      fail(c, FL_ECLOSED, "peer closed the connection during the handshake");
    else if (fl_frame_decoder_partial(&c->dec))
      fail(c, FL_ETRUNC, "truncated frame: connection ended inside a frame");
    else
      fail(c, FL_ECLOSED, "peer closed the connection without close_notify");
  } else if (nread == UV_ENOBUFS) {
    fail(c, FL_ENOMEM, "no memory for the read buffer");
  } else if (nread < 0) {
    fail(c, FL_ENET, "read failed: %s", nread == UV_ECONNRESET ? "connection reset by peer"
                                                               : uv_strerror((int)nread));
  }
  release_read_buffers(c); /* nread 0 (EAGAIN) included */
}

/* ---- creating connections ---- */

static fl_conn *conn_new(uv_loop_t *loop, const fl_tls_config *tls, const fl_conn_options *opt,
                         const fl_conn_callbacks *cb, void *data) {
  fl_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->loop = loop;
  if (opt)
    c->opt = *opt;
  else
    fl_conn_options_default(&c->opt);
  if (!c->opt.max_frame) c->opt.max_frame = FL_FRAME_DEFAULT_MAX;
  if (!c->opt.high_water) c->opt.high_water = 1u << 20;
  c->opt.heartbeat = NULL;
  if (opt && opt->heartbeat) {
    uint8_t *hb = malloc(opt->heartbeat_len ? opt->heartbeat_len : 1);
    if (!hb) goto fail_mem;
    memcpy(hb, opt->heartbeat, opt->heartbeat_len);
    c->opt.heartbeat = hb;
  }
  if (cb) c->cb = *cb;
  c->data = data;
  c->is_server = fl__tls_is_server(tls);
  c->tls = tls; /* its reference is taken once nothing below can fail */
  /* The loop's cached time is stale when the caller worked long before connecting
   * (fl-client loading 10,000 identities): the handshake deadline would have passed. */
  uv_update_time(loop);
  c->started = c->last_rx = c->last_tx = uv_now(loop);
  snprintf(c->addr, sizeof c->addr, "?");
  fl_frame_decoder_init(&c->dec, c->opt.max_frame);
  mbedtls_ssl_init(&c->ssl);
  if (mbedtls_ssl_setup(&c->ssl, fl__tls_ssl_config(tls)) != 0) goto fail_ssl;
  mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
  mbedtls_ssl_set_verify(&c->ssl, verify_seen, c);
  uv_tcp_init(loop, &c->tcp);
  uv_timer_init(loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  fl_tls_config_ref(tls);
  return c;

fail_ssl:
  mbedtls_ssl_free(&c->ssl);
  fl_frame_decoder_free(&c->dec);
fail_mem:
  free((void *)c->opt.heartbeat);
  free(c);
  return NULL;
}

static void on_connection(uv_stream_t *server, int status) {
  fl_listener *l = server->data;
  if (status < 0) {
    fl_warn("conn", "accept on port %d failed: %s", l->port, uv_strerror(status));
    return;
  }
  pthread_mutex_lock(&l->mu);
  fl_conn *c = conn_new(server->loop, l->tls, &l->opt, &l->cb, l->data);
  pthread_mutex_unlock(&l->mu);
  if (!c) {
    uv_tcp_t *t = malloc(sizeof *t); /* take the connection off the queue, then drop it */
    if (t && uv_tcp_init(server->loop, t) == 0) {
      if (uv_accept(server, (uv_stream_t *)t) == 0) fl_warn("conn", "out of memory: dropping a new connection");
      uv_close((uv_handle_t *)t, (uv_close_cb)free);
    } else {
      free(t);
    }
    return;
  }
  c->state = ST_HANDSHAKE;
  int r = uv_accept(server, (uv_stream_t *)&c->tcp);
  if (r < 0) {
    fail(c, FL_ENET, "accept failed: %s", uv_strerror(r));
    return;
  }
  if (l->opt.max_handshakes && l->hs->n >= l->opt.max_handshakes) {
    /* Too many handshakes at once: this one is closed at once (no TLS work spent on it);
     * the warning comes at most once a second, with the count since the last. */
    uint64_t now = uv_now(server->loop);
    l->hs->refused++;
    if (!l->hs->warned || now - l->hs->warned >= 1000) {
      fl_warn("conn", "port %d: %u handshakes in progress, the most allowed; %u new "
              "connections closed", l->port, l->hs->n, l->hs->refused);
      l->hs->refused = 0;
      l->hs->warned = now;
    }
    snprintf(c->reason, sizeof c->reason, "too many handshakes in progress");
    c->err = FL_EREFUSED;
    c->state = ST_CLOSING;
    close_handles(c);
    return;
  }
  c->hs = l->hs;
  l->hs->n++;
  l->hs->refs++;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
    fl_addr_name((struct sockaddr *)&ss, c->addr, sizeof c->addr);
  uv_tcp_nodelay(&c->tcp, 1);
  r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  if (r < 0) {
    fail(c, FL_ENET, "read failed: %s", uv_strerror(r));
    return;
  }
  rearm(c);
  drive(c);
}

/* A write to a socket the peer has reset raises SIGPIPE, which by default ends the
 * process; it must end that one connection (libuv then reports EPIPE).  Only a default
 * disposition is changed: a program that set its own handler keeps it. */
static void ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL && !(sa.sa_flags & SA_SIGINFO)) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
  }
}

static void listener_closed(uv_handle_t *h) {
  fl_listener *l = h->data;
  if (--l->open > 0) return;
  fl_tls_config_free((fl_tls_config *)l->tls);
  pthread_mutex_destroy(&l->mu);
  hs_unref(l->hs);
  free(l);
}

/* A listener on n sockets (the handles are initialized, not yet opened). */
static fl_listener *listener_new(uv_loop_t *loop, const fl_tls_config *tls, int n,
                                 const fl_conn_options *opt, const fl_conn_callbacks *cb,
                                 void *data) {
  fl_listener *l = calloc(1, sizeof *l + (size_t)n * sizeof l->tcp[0]);
  if (!l) return NULL;
  l->hs = calloc(1, sizeof *l->hs);
  if (!l->hs) {
    free(l);
    return NULL;
  }
  l->hs->refs = 1;
  pthread_mutex_init(&l->mu, NULL);
  fl_tls_config_ref(tls);
  l->tls = tls;
  if (opt)
    l->opt = *opt;
  else
    fl_conn_options_default(&l->opt);
  if (cb) l->cb = *cb;
  l->data = data;
  l->n = l->open = n;
  for (int i = 0; i < n; i++) {
    uv_tcp_init(loop, &l->tcp[i]);
    l->tcp[i].data = l;
  }
  return l;
}

void fl_listener_close(fl_listener *l) {
  if (!l) return;
  for (int i = 0; i < l->n; i++) uv_close((uv_handle_t *)&l->tcp[i], listener_closed);
}

int fl_listen_fds(uv_loop_t *loop, const fl_tls_config *tls, const uv_os_sock_t *fds, int n,
                  const fl_conn_options *opt, const fl_conn_callbacks *cb, void *data,
                  fl_listener **out) {
  *out = NULL;
  int bad = !loop || !tls || !fds || n < 1 || !fl__tls_is_server(tls);
  fl_listener *l = bad ? NULL : listener_new(loop, tls, n, opt, cb, data);
  if (!l) {
    for (int i = 0; fds && i < n; i++) close(fds[i]);
    return bad ? FL_EINVAL : FL_ENOMEM;
  }
  ignore_sigpipe();
  int r = 0, i = 0;
  for (; i < n && r == 0; i++) { /* each handle owns its fd once opened */
    r = uv_tcp_open(&l->tcp[i], fds[i]);
    if (r < 0) close(fds[i]);
  }
  for (; i < n; i++) close(fds[i]);
  for (i = 0; i < n && r == 0; i++) {
    r = uv_listen((uv_stream_t *)&l->tcp[i], LISTEN_BACKLOG, on_connection);
    if (r < 0) fl_error("conn", "cannot listen on socket %d: %s", (int)fds[i], uv_strerror(r));
  }
  if (r < 0) {
    fl_listener_close(l);
    return FL_ENET;
  }
  /* Every socket has the port (netaddr.h): the first says which (port 0 picked one). */
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getsockname(&l->tcp[0], (struct sockaddr *)&ss, &len) == 0)
    l->port = fl_addr_port((struct sockaddr *)&ss);
  fl_debug("conn", "listening on port %d (%d socket%s)", l->port, n, n == 1 ? "" : "s");
  *out = l;
  return 0;
}

int fl_listen(uv_loop_t *loop, const fl_tls_config *tls, const char *host, int port,
              const fl_conn_options *opt, const fl_conn_callbacks *cb, void *data,
              fl_listener **out) {
  *out = NULL;
  if (!loop || !tls || !host || port < 0 || port > 65535 || !fl__tls_is_server(tls))
    return FL_EINVAL;
  fl_listen_set set;
  char why[1024];
  int n = fl_listen_set_bind(&set, host, port, why, sizeof why);
  if (n < 0) {
    fl_error("conn", "%s", why);
    return n;
  }
  int r = fl_listen_fds(loop, tls, set.fd, set.n, opt, cb, data, out);
  if (r < 0) return r;
  char names[512];
  fl_listen_set_names(&set, names, sizeof names);
  if (set.named)
    fl_info("conn", "listening on %s port %d (%s)", host, set.port, names);
  else
    fl_info("conn", "listening on %s port %d", host, set.port);
  return 0;
}

int fl_listener_port(const fl_listener *l) { return l->port; }

void fl_listener_set_tls(fl_listener *l, const fl_tls_config *tls) {
  fl_tls_config_ref(tls);
  pthread_mutex_lock(&l->mu);
  const fl_tls_config *old = l->tls;
  l->tls = tls;
  pthread_mutex_unlock(&l->mu);
  fl_tls_config_free((fl_tls_config *)old);
}

const fl_tls_cert_ref *fl_conn_peer_cert(const fl_conn *c) { return &c->peer_cert; }

static void connect_next(fl_conn *c);

/* The first address from `from` on worth trying (IPv4 or IPv6, not one listed before
 * it), or NULL. */
static const struct addrinfo *usable_from(const fl_conn *c, const struct addrinfo *from) {
  for (const struct addrinfo *ai = from; ai; ai = ai->ai_next) {
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        ai->ai_addrlen > sizeof(struct sockaddr_storage))
      continue;
    int seen = 0;
    for (const struct addrinfo *e = c->ai; e != ai && !seen; e = e->ai_next)
      seen = e->ai_family == ai->ai_family && e->ai_addrlen == ai->ai_addrlen &&
             fl_addr_same(e->ai_addr, ai->ai_addr);
    if (!seen) return ai;
  }
  return NULL;
}

/* The next address worth trying, or NULL. */
static const struct addrinfo *next_addr(fl_conn *c) {
  c->ai_next = usable_from(c, c->ai_next);
  return c->ai_next;
}

/* When the attempt starting now gives way to the next address: an equal share of what
 * is left of the handshake timeout for it and each address after it; 0 (never) for the
 * last, which the handshake timeout itself ends, or with no timeout. */
static uint64_t attempt_deadline(const fl_conn *c) {
  if (!c->opt.handshake_timeout_ms) return 0;
  uint64_t now = uv_now(c->loop), end = c->started + c->opt.handshake_timeout_ms;
  int left = 0; /* after this one */
  for (const struct addrinfo *ai = usable_from(c, c->ai_next); ai; ai = usable_from(c, ai->ai_next))
    left++;
  if (!left || now >= end) return 0;
  return now + (end - now) / (uint64_t)(left + 1);
}

/* The fresh handle for the next address is there (or the connection is closing). */
static void tcp_cycled(uv_handle_t *h) {
  fl_conn *c = h->data;
  c->tcp_cycling = 0;
  uv_tcp_init(c->loop, &c->tcp);
  c->tcp.data = c;
  if (c->state != ST_CLOSING) {
    connect_next(c);
  } else if (c->handles_closing) { /* close_handles left this one to us */
    uv_close((uv_handle_t *)&c->tcp, handle_closed);
  }
}

/* The address being tried did not connect: on to the next one, on a fresh handle (libuv
 * connects a handle once, and a socket whose connect failed cannot be used again); after
 * the last, the connection fails saying how many were tried. */
static void connect_failed(fl_conn *c, int status) {
  if (!next_addr(c)) {
    if (c->tried == 1)
      fail(c, FL_ENET, "connect failed: %s", uv_strerror(status));
    else
      fail(c, FL_ENET, "connect failed: %d addresses of %s tried, the last: %s", c->tried,
           c->target, uv_strerror(status));
    return;
  }
  fl_debug("conn", "%s: connect failed: %s; trying the next address of %s", c->addr,
           uv_strerror(status), c->target);
  c->tcp_cycling = 1;
  uv_close((uv_handle_t *)&c->tcp, tcp_cycled);
}

static void connect_cb(uv_connect_t *req, int status) {
  fl_conn *c = req->data;
  if (status == UV_ECANCELED || c->state == ST_CLOSING) return;
  if (status < 0) {
    connect_failed(c, status);
    return;
  }
  uv_freeaddrinfo(c->ai); /* c->addr says which one it was */
  c->ai = NULL;
  c->ai_next = NULL;
  uv_tcp_nodelay(&c->tcp, 1);
  c->state = ST_HANDSHAKE;
  int r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  if (r < 0) {
    fail(c, FL_ENET, "read failed: %s", uv_strerror(r));
    return;
  }
  drive(c);
}

/* Starts connecting the (fresh) handle to the next address (next_addr() is not NULL). */
static void connect_next(fl_conn *c) {
  const struct addrinfo *ai = next_addr(c);
  c->ai_next = ai->ai_next;
  c->tried++;
  c->attempt_end = attempt_deadline(c);
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
  fl_addr_set_port(&ss, c->port);
  fl_addr_name((struct sockaddr *)&ss, c->addr, sizeof c->addr);
  c->connect_req.data = c;
  /* A fixed receive buffer is set before connecting: the window the SYN announces is then
   * sized from it.  Shrunk afterwards, the buffer holds less than the window promised,
   * and the kernel drops the peer's segments, the acknowledgements they carry included. */
  if (c->opt.recv_buffer > 0) {
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), size = c->opt.recv_buffer;
    if (fd < 0) { /* no such family here (IPv6): another address may do */
      connect_failed(c, -errno);
      return;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) != 0) {
      fail(c, FL_ENET, "cannot set the receive buffer to %d bytes: %s", size, strerror(errno));
      close(fd);
      return;
    }
    int r = uv_tcp_open(&c->tcp, fd); /* the handle owns fd from here */
    if (r < 0) {
      close(fd);
      fail(c, FL_ENET, "cannot use the socket: %s", uv_strerror(r));
      return;
    }
  }
  int r = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&ss, connect_cb);
  if (r < 0)
    connect_failed(c, r);
  else
    rearm(c); /* the attempt's end */
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  fl_conn *c = req->data;
  c->gai_pending = 0;
  if (c->state == ST_CLOSING) {
    uv_freeaddrinfo(res);
    finish(c);
    return;
  }
  if (status < 0 || !res) {
    fail(c, FL_ENET, "cannot resolve %s: %s", c->addr, uv_strerror(status));
    uv_freeaddrinfo(res);
    return;
  }
  c->ai = res; /* freed once connected, or with the connection */
  c->ai_next = res;
  if (!next_addr(c)) {
    fail(c, FL_ENET, "cannot resolve %s: no IPv4 or IPv6 address", c->addr);
    return;
  }
  c->state = ST_CONNECTING;
  connect_next(c);
}

int fl_connect(uv_loop_t *loop, const fl_tls_config *tls, const char *host, int port,
               const fl_conn_options *opt, const fl_conn_callbacks *cb, void *data,
               fl_conn **out) {
  *out = NULL;
  if (!loop || !tls || !host || port <= 0 || port > 65535 || fl__tls_is_server(tls))
    return FL_EINVAL;
  ignore_sigpipe();
  fl_conn *c = conn_new(loop, tls, opt, cb, data);
  if (!c) return FL_ENOMEM;
  const char *name = fl__tls_server_name(tls);
  char target[300];
  snprintf(target, sizeof target, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
  c->target = strdup(target);
  if (!c->target || mbedtls_ssl_set_hostname(&c->ssl, name ? name : host) != 0) {
    c->handles_closing = 1; /* never started: close quietly */
    c->state = ST_CLOSING;
    c->cb.on_close = NULL;
    uv_close((uv_handle_t *)&c->tcp, handle_closed);
    uv_close((uv_handle_t *)&c->timer, handle_closed);
    return FL_ENOMEM;
  }
  if (fl__tls_keeps_sessions(tls)) {
    char key[300];
    snprintf(key, sizeof key, "%s:%d", host, port);
    c->resume_key = strdup(key); /* without memory for it, the session is just not kept */
    if (c->resume_key) fl__tls_session_offer(tls, key, &c->ssl);
  }
  c->port = port;
  c->state = ST_RESOLVING;
  snprintf(c->addr, sizeof c->addr, "%s:%d", host, port);
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  c->gai.data = c;
  *out = c;
  int r = uv_getaddrinfo(loop, &c->gai, gai_cb, host, service, &hints);
  if (r < 0) {
    fail(c, FL_ENET, "cannot resolve %s: %s", host, uv_strerror(r));
    return 0;
  }
  c->gai_pending = 1;
  rearm(c);
  return 0;
}

/* ---- sending ---- */

static int ssl_write_all(fl_conn *c, const uint8_t *p, size_t len) {
  while (len > 0) {
    int r = mbedtls_ssl_write(&c->ssl, p, len);
    if (r < 0) {
      char why[200];
      tls_reason(r, why, sizeof why);
      fail(c, FL_ETLS, "TLS write failed: %s", why);
      return FL_ECLOSED;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

/* framed: header + payload; otherwise the bytes as they are.  One record never carries
 * the 4-byte header alone: it travels with the start of the payload. */
static int send_frame(fl_conn *c, const uint8_t *payload, size_t len, int how) {
  int framed = how & SEND_FRAMED;
  if (c->state == ST_CLOSING) return FL_ECLOSED;
  if (c->state != ST_OPEN) return FL_ESTATE;
  if (framed && len > c->opt.max_frame) return FL_ETOOBIG;
  size_t total = len + (framed ? FL_FRAME_HEADER : 0);
  if (out_reserve(c, total + (total / PT_CAP + 2) * RECORD_OVERHEAD) < 0) {
    fail(c, FL_ENOMEM, "no memory to queue %zu bytes", total);
    return FL_ECLOSED;
  }
  if (framed) {
    uint8_t first[PT_CAP];
    size_t head = len < PT_CAP - FL_FRAME_HEADER ? len : PT_CAP - FL_FRAME_HEADER;
    fl_frame_header(first, (uint32_t)len);
    if (head) memcpy(first + FL_FRAME_HEADER, payload, head);
    if (ssl_write_all(c, first, FL_FRAME_HEADER + head) < 0) return FL_ECLOSED;
    payload += head;
    len -= head;
  }
  if (ssl_write_all(c, payload, len) < 0) return FL_ECLOSED;
  if (how & SEND_COUNTED) c->out_sent += total - (framed ? FL_FRAME_HEADER : 0);
  return flush(c) < 0 ? FL_ECLOSED : 0;
}

int fl_conn_send(fl_conn *c, const uint8_t *payload, size_t len) {
  return send_frame(c, payload, len, SEND_FRAMED | SEND_COUNTED);
}

int fl_conn_send_raw(fl_conn *c, const uint8_t *bytes, size_t len) {
  return send_frame(c, bytes, len, 0);
}

uint64_t fl_conn_written(const fl_conn *c) { return c->written; }

size_t fl_conn_queued(const fl_conn *c) { return c->wq_bytes + c->out_len; }

/* ---- receive backpressure and accessors ---- */

void fl_conn_pause(fl_conn *c) {
  if (c->state == ST_CLOSING || c->paused) return;
  c->paused = 1;
  uv_read_stop((uv_stream_t *)&c->tcp);
  rearm(c);
}

void fl_conn_resume(fl_conn *c) {
  if (c->state == ST_CLOSING || !c->paused) return;
  c->paused = 0;
  c->last_rx = uv_now(c->loop); /* the silence while paused was ours */
  if (c->frame_since) c->frame_since = c->last_rx; /* and so was the wait for the frame */
  if (c->state == ST_HANDSHAKE || c->state == ST_OPEN) {
    int r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (r < 0) {
      fail(c, FL_ENET, "read failed: %s", uv_strerror(r));
      return;
    }
  }
  /* Frames already decrypted go first, from the loop rather than from inside this call. */
  c->need_process = 1;
  rearm(c);
}

void *fl_conn_data(const fl_conn *c) { return c->data; }
void fl_conn_set_data(fl_conn *c, void *data) { c->data = data; }

int fl_conn_set_heartbeat(fl_conn *c, const uint8_t *payload, size_t len) {
  uint8_t *hb = malloc(len ? len : 1);
  if (!hb) return FL_ENOMEM;
  memcpy(hb, payload, len);
  free((void *)c->opt.heartbeat);
  c->opt.heartbeat = hb;
  c->opt.heartbeat_len = len;
  return 0;
}
const char *fl_conn_peer_id(const fl_conn *c) { return c->peer_id; }
int64_t fl_conn_peer_not_after(const fl_conn *c) { return c->peer_not_after; }
const char *fl_conn_peer_addr(const fl_conn *c) { return c->addr; }
int fl_conn_resumed(const fl_conn *c) { return c->resumed; }
uint64_t fl_conn_bytes_in(const fl_conn *c) { return c->bytes_in; }
uint64_t fl_conn_bytes_out(const fl_conn *c) { return c->bytes_out; }
uv_loop_t *fl_conn_loop(const fl_conn *c) { return c->loop; }
const char *fl_conn_cipher(const fl_conn *c) {
  const char *s = mbedtls_ssl_get_ciphersuite(&c->ssl);
  return s ? s : "";
}
