/* Framed, mutually authenticated TLS connections on a libuv loop.
 *
 * Ciphertext that libuv reads is fed to mbedTLS through in-memory BIO callbacks; records
 * mbedTLS produces are written with uv_write.  Nothing blocks the loop.  The layer speaks
 * frames (frame.h): on_frame gets each payload; fl_conn_send sends one.
 *
 * Liveness: when nothing was sent for heartbeat_interval_ms the connection sends the
 * heartbeat payload given in the options; a peer from which nothing arrives for
 * idle_timeout_ms is dropped.  Backpressure: fl_conn_queued() says how many bytes wait to
 * be written; senders stream while it is below high_water and continue from on_drain; a
 * peer that leaves more than high_water unread for stall_timeout_ms is dropped.
 *
 * Hostile peers: a frame begun must be complete within frame_timeout_ms (a peer that
 * drips one byte at a time is dropped), and a listener handshakes at most max_handshakes
 * connections at once (more are closed as soon as they are accepted).
 *
 * Resumption: with a client configuration that keeps sessions (tls.h), fl_connect offers
 * the session kept for its host:port, and keeps the new one once the handshake is done;
 * fl_conn_resumed() says which kind of handshake took place.
 *
 * Ownership: the caller owns nothing of a connection; the layer frees it after on_close
 * returns (never inside another of its callbacks).  Every failure is logged with the
 * peer's address and identity and ends that connection alone.  No global mutable state:
 * each loop (and thread) owns its connections.  The one process-wide effect: fl_listen and
 * fl_connect set SIGPIPE to ignored when it is at its default, so a peer that resets
 * ends its connection rather than the process. */
#ifndef FL_CONN_H
#define FL_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tls.h"

typedef struct fl_conn fl_conn;
typedef struct fl_listener fl_listener;

typedef struct fl_conn_callbacks {
  /* Handshake done and the peer authenticated; fl_conn_peer_id() is valid. */
  void (*on_open)(fl_conn *c);
  /* One frame payload, valid during the call only. */
  void (*on_frame)(fl_conn *c, const uint8_t *payload, size_t len);
  /* The write queue fell below high_water / 2 after having been above it, or became
   * empty after frames of fl_conn_send were written (fl_conn_written moved on). */
  void (*on_drain)(fl_conn *c);
  /* Called once, whatever ended the connection (err 0: closed by us or cleanly by the
   * peer).  The connection is freed after it returns.  A server also gets it for an
   * accepted connection whose handshake failed (without on_open before). */
  void (*on_close)(fl_conn *c, int err, const char *reason);
} fl_conn_callbacks;

typedef struct fl_conn_options {
  uint32_t max_frame;            /* largest payload accepted (default FL_FRAME_DEFAULT_MAX) */
  size_t high_water;             /* default 1 MiB */
  uint32_t handshake_timeout_ms; /* default 10 s */
  uint32_t idle_timeout_ms;      /* nothing received for this long: drop; default 60 s */
  uint32_t heartbeat_interval_ms;/* default 15 s; 0 = never */
  uint32_t stall_timeout_ms;     /* write queue stuck above high_water: drop; default 60 s */
  size_t max_queued;             /* iothreads.h: a peer with more than this waiting to be
                                  * written is closed (0: 4 x high_water + 2 x max_frame) */
  uint32_t frame_timeout_ms;     /* a frame begun must be complete within this; 0 = no
                                  * limit; default 60 s */
  uint32_t max_handshakes;       /* server: handshakes in progress at once per listener;
                                  * more are closed as they are accepted; default 256 */
  int recv_buffer;               /* client: > 0 fixes the socket's receive buffer at this
                                  * many bytes (SO_RCVBUF; the kernel then never grows it,
                                  * so a peer that stops reading holds at most this much);
                                  * 0: the kernel's autotuning (default) */
  const uint8_t *heartbeat;      /* payload sent as heartbeat (copied); NULL = none */
  size_t heartbeat_len;
  /* Called on the connection's loop just before each heartbeat goes out; it may replace
   * the payload with fl_conn_set_heartbeat (a client reports its progress so).  NULL:
   * the payload stays as given. */
  void (*heartbeat_refresh)(fl_conn *c);
} fl_conn_options;

/* Fills in the defaults above. */
void fl_conn_options_default(fl_conn_options *o);

/* Raises the process's open-file limit (RLIMIT_NOFILE) to its hard limit: a server or a
 * simulation holds one descriptor per connection, and the usual soft limit is 1024.
 * Returns the limit now in force (-1 if it cannot be read). */
long fl_conn_raise_fd_limit(void);

/* Server: listens on host:port ("0.0.0.0", "::", "127.0.0.1", or a host name, resolved
 * now, blocking: on every address it has, all on one port; see netaddr.h) and
 * handshakes every accepted connection; callbacks and data are given to each one.
 * port 0 = any; the bound port is available from fl_listener_port(). */
int fl_listen(uv_loop_t *loop, const fl_tls_config *tls, const char *host, int port,
              const fl_conn_options *opt, const fl_conn_callbacks *cb, void *data,
              fl_listener **out);
/* Like fl_listen, on n sockets the caller created and bound to one port (not yet
 * listening): lets several loops accept on one port with SO_REUSEPORT (see
 * iothreads.h).  The listener owns the fds from the call on, also when it fails (they
 * are then closed). */
int fl_listen_fds(uv_loop_t *loop, const fl_tls_config *tls, const uv_os_sock_t *fds, int n,
                  const fl_conn_options *opt, const fl_conn_callbacks *cb, void *data,
                  fl_listener **out);
int fl_listener_port(const fl_listener *l);
/* New connections accepted from now on use tls (a reload: renewed certificate, new CRL);
 * those already made keep theirs.  The listener takes a reference of tls and drops the
 * old one's.  Any thread. */
void fl_listener_set_tls(fl_listener *l, const fl_tls_config *tls);
/* Stops accepting; connections already accepted go on.  Frees the listener. */
void fl_listener_close(fl_listener *l);

/* Client: resolves and connects to host:port, then handshakes; callbacks as above (a
 * failed connect or handshake ends in on_close with an error).  A name with several
 * addresses (::1 and 127.0.0.1) has them tried in the resolver's order until one
 * connects, each on a fresh socket, all within handshake_timeout_ms; the error after
 * the last says how many were tried.  fl_conn_peer_addr() is the address connected to
 * (while connecting, the one being tried).  *out is valid at once.
 * The server certificate must carry the config's server_name, or host when that is NULL.
 * Returns a negative FL_E* only for bad arguments or no memory (then no callback). */
int fl_connect(uv_loop_t *loop, const fl_tls_config *tls, const char *host, int port,
               const fl_conn_options *opt, const fl_conn_callbacks *cb, void *data,
               fl_conn **out);

/* Encrypts and queues one frame (payload is copied).  0, FL_ETOOBIG (len above this
 * connection's max_frame), FL_ECLOSED, or FL_ESTATE before on_open. */
int fl_conn_send(fl_conn *c, const uint8_t *payload, size_t len);
/* Encrypts and queues bytes as they are, without a frame header (tests and protocol
 * tools: lets a peer misbehave on purpose).  Returns as fl_conn_send. */
int fl_conn_send_raw(fl_conn *c, const uint8_t *bytes, size_t len);
size_t fl_conn_queued(const fl_conn *c);
/* Payload bytes of fl_conn_send frames written to the socket so far. */
uint64_t fl_conn_written(const fl_conn *c);
/* Stops / resumes delivering frames and reading from the socket (receive backpressure).
 * The idle timeout does not run while paused.  After a resume, frames already decrypted
 * are delivered first, from the loop (never from inside fl_conn_resume). */
void fl_conn_pause(fl_conn *c);
void fl_conn_resume(fl_conn *c);
/* Flushes what is queued, sends TLS close_notify, closes; on_close follows. */
void fl_conn_close(fl_conn *c, const char *reason);

void *fl_conn_data(const fl_conn *c);
/* Replaces the heartbeat payload (copied; the loop's thread).  0 or FL_ENOMEM (the old
 * payload stays). */
int fl_conn_set_heartbeat(fl_conn *c, const uint8_t *payload, size_t len);
void fl_conn_set_data(fl_conn *c, void *data);
/* The peer certificate's CN ("" before the handshake). */
const char *fl_conn_peer_id(const fl_conn *c);
/* The end of the peer certificate's validity, as Unix time (0 before the handshake or
 * without a certificate): a connection outlives the check at its handshake. */
int64_t fl_conn_peer_not_after(const fl_conn *c);
/* What identifies the peer's certificate for revocation (zero before the handshake). */
const fl_tls_cert_ref *fl_conn_peer_cert(const fl_conn *c);
/* "1.2.3.4:5678" or "[::1]:5678". */
const char *fl_conn_peer_addr(const fl_conn *c);
/* 1 when the handshake resumed an earlier session (tls.h) instead of a full handshake:
 * the peer's identity then comes from that session. */
int fl_conn_resumed(const fl_conn *c);
uint64_t fl_conn_bytes_in(const fl_conn *c);  /* TLS bytes received */
uint64_t fl_conn_bytes_out(const fl_conn *c); /* TLS bytes sent */
uv_loop_t *fl_conn_loop(const fl_conn *c);
/* The negotiated cipher suite ("TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256"), or ""
 * before the handshake.  Static string. */
const char *fl_conn_cipher(const fl_conn *c);

#endif
