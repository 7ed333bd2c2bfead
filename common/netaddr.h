/* IP socket addresses: naming them, and binding a listener's sockets for a host.
 *
 * A host to listen on is a numeric address ("0.0.0.0", "::", "127.0.0.1"), taken as it
 * is, or a name, which may resolve to several addresses ("localhost": ::1 and
 * 127.0.0.1).  Clients resolving that name try its addresses in the resolver's order, so
 * a listener must be on every one of them: fl_listen_set_bind binds one socket on each
 * distinct address, all on one port.  conn.c (one loop) and iothreads.c (one listener
 * per I/O thread, SO_REUSEPORT) both listen through it.
 *
 * Blocking: fl_listen_set_bind resolves names with getaddrinfo, on the calling thread
 * (a listener starts once, at start-up).  No global state. */
#ifndef FL_NETADDR_H
#define FL_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* Addresses of one host listened on; more are ignored (a host name rarely has two). */
#define FL_LISTEN_MAX_ADDRS 16

/* "1.2.3.4:5678" or "[::1]:5678" ("?" for another family). */
void fl_addr_name(const struct sockaddr *sa, char *out, size_t n);
/* The port of an AF_INET or AF_INET6 address (host order). */
int fl_addr_port(const struct sockaddr *sa);
void fl_addr_set_port(struct sockaddr_storage *ss, int port);
/* 1 when a and b are the same address and port (and IPv6 scope). */
int fl_addr_same(const struct sockaddr *a, const struct sockaddr *b);

/* Sockets bound (not yet listening) on every address of a host, on one port. */
typedef struct fl_listen_set {
  int n;         /* addresses bound */
  int port;      /* the port they share */
  int named;     /* the host was a name (resolved), not a numeric address */
  int v6only;    /* the host has several addresses: an IPv6 socket takes IPv6 only */
  struct sockaddr_storage addr[FL_LISTEN_MAX_ADDRS];
  int fd[FL_LISTEN_MAX_ADDRS]; /* bound to addr[i]; -1 once closed or handed over */
} fl_listen_set;

/* Resolves host (blocking) and binds one socket (SO_REUSEADDR) on each of its distinct
 * addresses, on port; with port 0, on the port the first one bound got.  An address the
 * host does not have (EADDRNOTAVAIL; EAFNOSUPPORT: no IPv6 here) is skipped with a
 * warning naming it, as long as one address binds; any other failure (in use, no
 * permission) is an error.  Returns the number bound (>= 1; the caller owns s->fd and
 * closes them with fl_listen_set_close or hands them over), FL_EINVAL (host does not
 * resolve to an IP address) or FL_ENET (not one address could be bound), with err
 * naming host, and then each address with its failure. */
int fl_listen_set_bind(fl_listen_set *s, const char *host, int port, char *err, size_t errlen);
/* One more socket bound on s->addr[i] and s->port with SO_REUSEPORT, so that several
 * loops accept on it (iothreads.h); s's own sockets must be closed by then (they do not
 * set SO_REUSEPORT, and so keep a port that another process uses an error).  0 and the
 * socket in *fd, or a negative errno. */
int fl_listen_set_again(const fl_listen_set *s, int i, int *fd);
/* Closes the sockets of s not handed over. */
void fl_listen_set_close(fl_listen_set *s);
/* "127.0.0.1:7700" or, for several, "[::1]:7700, 127.0.0.1:7700", into out. */
void fl_listen_set_names(const fl_listen_set *s, char *out, size_t n);

#endif
