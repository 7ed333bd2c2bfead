/* Connections served by several I/O threads, presented on one control loop.
 *
 * TLS costs the server more CPU than anything else while it streams the global model to
 * many clients.  fl_io runs N I/O threads, each with its own libuv loop and its own
 * listener on the same port (SO_REUSEPORT: the kernel spreads accepted connections over
 * them).  The connections themselves are conn.h's fl_conn on those loops.  The
 * application sees each one as an fl_peer whose callbacks all run on the thread of the
 * control loop it gave to fl_io_listen, so round logic stays single-threaded.
 *
 * Threads: every fl_io_* and fl_peer_* function is for the control loop's thread only
 * (except fl_io_thread_connections, which any thread may call).  The two sides talk
 * through mutex-protected queues woken by uv_async_t; a frame crosses as one copy.
 *
 * Backpressure out: fl_peer_send copies the payload and returns at once; fl_peer_queued
 * counts the bytes sent from the control side that have not yet been written to the
 * socket, wherever they wait (the I/O thread's queue, the connection's).  Stream while
 * fl_peer_queued() < high_water and continue from on_drain, which fires once the count
 * falls below high_water / 2 after having reached high_water, and whenever it falls to
 * 0: all a peer was sent is then out, and its memory free.  The queue is bounded: a send
 * that would take it past the options' max_queued closes the peer (it does not read what
 * it is sent) and fails with FL_ECLOSED, so a peer that never reads costs bounded memory.
 * Backpressure in: while more than a few frames (or about 2 MiB) of a peer wait for the
 * control loop, its socket is not read; a slow control loop does not make memory grow.
 *
 * Handshakes that fail (refused certificates, garbage, timeouts) never reach the control
 * side: no peer is created before the handshake succeeded.  They are logged by conn.c.
 *
 * Ownership: the caller owns nothing of a peer.  It is freed after on_close returned
 * (never under another callback); after on_close no callback comes for it and it must not
 * be used.  No global mutable state: each fl_io owns its threads, loops and peers. */
#ifndef FL_IOTHREADS_H
#define FL_IOTHREADS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "conn.h"
#include "tls.h"

typedef struct fl_io fl_io;     /* N I/O threads with their loops and listeners */
typedef struct fl_peer fl_peer; /* the control-side handle of one connection */

/* All called on the control loop's thread. */
typedef struct fl_peer_callbacks {
  /* Handshake done; fl_peer_id() is valid.  fl_peer_data() is the fl_io's data until
   * the application sets its own. */
  void (*on_open)(fl_peer *p);
  /* One frame payload, valid during the call only. */
  void (*on_frame)(fl_peer *p, const uint8_t *payload, size_t len);
  /* fl_peer_queued() fell below high_water / 2 after having reached high_water, or
   * to 0. */
  void (*on_drain)(fl_peer *p);
  /* Once, whatever ended the connection (err 0: closed by us or cleanly by the peer),
   * after every frame that arrived before the end.  p is freed after it returns. */
  void (*on_close)(fl_peer *p, int err, const char *reason);
} fl_peer_callbacks;

/* Starts `threads` I/O threads (<= 0: one per core, uv_available_parallelism()), each
 * listening on host:port (a host name: on each of its addresses, netaddr.h; port 0: one
 * port picked by the kernel for all of them) with
 * the connection options opt (NULL: defaults).  Callbacks run on `control`, which the
 * caller runs; data is each new peer's data until set.  The listeners and connections
 * hold references of tls (tls.h): the caller may free its own at any time.
 * 0, FL_EINVAL, FL_ENOMEM or FL_ENET (cannot bind; logged). */
int fl_io_listen(uv_loop_t *control, int threads, const fl_tls_config *tls, const char *host,
                 int port, const fl_conn_options *opt, const fl_peer_callbacks *cb, void *data,
                 fl_io **out);
int fl_io_port(const fl_io *io);
int fl_io_threads(const fl_io *io);
/* Connections open (handshake done, not yet closed) on I/O thread i, as that thread
 * sees them.  For tests and statistics. */
int fl_io_thread_connections(fl_io *io, int i);
/* Connections thread i accepted that ended before their TLS handshake was complete
 * (a certificate refused, another protocol, the peer gone), since the start; any thread
 * may call it. */
uint64_t fl_io_thread_handshakes_failed(fl_io *io, int i);
/* Stops accepting.  From the call on no new peer is presented: connections whose
 * handshake completes later are closed without callbacks.  Peers already open go on. */
void fl_io_stop_listening(fl_io *io);
/* Stops the I/O threads and joins them, then frees everything; call it after every peer
 * had its on_close (a peer still open is closed without callbacks).  Waits for
 * handshakes in progress (at most handshake_timeout_ms).  One handle on the control loop
 * is closed: its memory is released when that loop runs again (as with uv_close). */
void fl_io_free(fl_io *io);

/* Queues one frame (payload copied).  0, FL_ETOOBIG (above max_frame) or FL_ECLOSED
 * (closed by either side, even if on_close has not come yet). */
int fl_peer_send(fl_peer *p, const uint8_t *payload, size_t len);
size_t fl_peer_queued(const fl_peer *p);
/* No on_frame until fl_peer_resume; frames already on their way are held, and the socket
 * is not read.  After a resume, held frames are delivered from the loop (never from
 * inside fl_peer_resume). */
void fl_peer_pause(fl_peer *p);
void fl_peer_resume(fl_peer *p);
/* Flushes what is queued, closes; on_close follows (frames still held are dropped). */
void fl_peer_close(fl_peer *p, const char *reason);

void *fl_peer_data(const fl_peer *p);
void fl_peer_set_data(fl_peer *p, void *data);
/* The peer certificate's CN; "1.2.3.4:5678" or "[::1]:5678".  Valid until on_close
 * returned. */
const char *fl_peer_id(const fl_peer *p);
const char *fl_peer_addr(const fl_peer *p);
/* The end of its certificate's validity, Unix time (conn.h's fl_conn_peer_not_after). */
int64_t fl_peer_not_after(const fl_peer *p);
/* 1 when its TLS handshake resumed a session (conn.h's fl_conn_resumed). */
int fl_peer_resumed(const fl_peer *p);
/* 1 when tls's CRL revokes the certificate the peer connected with (control thread). */
int fl_peer_revoked(const fl_peer *p, const fl_tls_config *tls);
/* Connections accepted from now on use tls (a reload); open ones keep theirs.  Control
 * thread. */
void fl_io_set_tls(fl_io *io, const fl_tls_config *tls);
/* The I/O thread serving this peer (0 .. threads-1). */
int fl_peer_thread(const fl_peer *p);

#endif
