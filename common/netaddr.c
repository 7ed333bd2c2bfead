/* IP socket addresses and a listener's bound sockets (see netaddr.h).
 *
 * Why not let the kernel pick the port for each address on its own: a client that finds
 * the name's first address refused moves to the next one with the same port, so every
 * address must have it.  With port 0 the first address that binds picks it; should it be
 * taken on a later address (another program there), the whole set is bound again on a
 * new one, a few times. */
#include "netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "error.h"
#include "log.h"

#define PORT_TRIES 8 /* port 0: sets bound before giving up on one port for all */

void fl_addr_name(const struct sockaddr *sa, char *out, size_t n) {
  char ip[64] = "?";
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    uv_ip4_name(a, ip, sizeof ip);
    snprintf(out, n, "%s:%d", ip, ntohs(a->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(a, ip, sizeof ip);
    snprintf(out, n, "[%s]:%d", ip, ntohs(a->sin6_port));
  } else {
    snprintf(out, n, "?");
  }
}

int fl_addr_port(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  return ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

void fl_addr_set_port(struct sockaddr_storage *ss, int port) {
  if (ss->ss_family == AF_INET6)
    ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

int fl_addr_same(const struct sockaddr *a, const struct sockaddr *b) {
  if (a->sa_family != b->sa_family) return 0;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  return 0;
}

static socklen_t addr_len(const struct sockaddr_storage *ss) {
  return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* The distinct addresses of host, with port, in the resolver's order: how many, or
 * FL_EINVAL naming host and why in err. */
static int resolve(const char *host, int port, struct sockaddr_storage *out, int max,
                   char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0) return 1;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) == 0) return 1;
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int r = getaddrinfo(host, NULL, &hints, &res);
  if (r != 0 || !res) {
    snprintf(err, errlen, "cannot listen on '%s': %s", host,
             r ? (r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r)) : "no address");
    if (res) freeaddrinfo(res);
    return FL_EINVAL;
  }
  int n = 0;
  for (const struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        ai->ai_addrlen > sizeof *out)
      continue;
    memset(&out[n], 0, sizeof out[n]);
    memcpy(&out[n], ai->ai_addr, ai->ai_addrlen);
    fl_addr_set_port(&out[n], port);
    int seen = 0;
    for (int i = 0; i < n && !seen; i++)
      seen = fl_addr_same((struct sockaddr *)&out[i], (struct sockaddr *)&out[n]);
    if (!seen) n++;
  }
  freeaddrinfo(res);
  if (n == 0) {
    snprintf(err, errlen, "cannot listen on '%s': not an IP address", host);
    return FL_EINVAL;
  }
  return n;
}

/* A socket bound to ss: 0, or a negative errno. */
static int bind_socket(const struct sockaddr_storage *ss, int v6only, int reuseport, int *fd_out) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int on = 1, v6 = v6only;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
      (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) ||
      (ss->ss_family == AF_INET6 &&
       setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) != 0) ||
      bind(fd, (const struct sockaddr *)ss, addr_len(ss)) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  *fd_out = fd;
  return 0;
}

/* The host has no such address (or no such family): another of its addresses may do. */
static int not_here(int e) { return e == -EADDRNOTAVAIL || e == -EAFNOSUPPORT; }

void fl_listen_set_close(fl_listen_set *s) {
  for (int i = 0; i < s->n; i++) {
    if (s->fd[i] >= 0) close(s->fd[i]);
    s->fd[i] = -1;
  }
}

/* One try at binding every address of cand on port (0: the first to bind picks it for
 * all).  tried[i] gets the address as tried, errs[i] 0 (bound or not tried) or why it
 * did not bind.  Returns the number bound, or the negative errno of the failure that
 * ends the try (nothing of s stays open then). */
static int bind_all(fl_listen_set *s, const struct sockaddr_storage *cand, int k, int port,
                    struct sockaddr_storage *tried, int *errs) {
  s->n = 0;
  s->port = port;
  for (int i = 0; i < k; i++) errs[i] = 0;
  for (int i = 0; i < k; i++) {
    tried[i] = cand[i];
    fl_addr_set_port(&tried[i], s->port);
    int fd, e = bind_socket(&tried[i], s->v6only, 0, &fd);
    if (e == 0 && s->port == 0) {
      struct sockaddr_storage got;
      socklen_t len = sizeof got;
      if (getsockname(fd, (struct sockaddr *)&got, &len) != 0) {
        e = -errno;
        close(fd);
      } else {
        s->port = fl_addr_port((struct sockaddr *)&got);
        fl_addr_set_port(&tried[i], s->port);
      }
    }
    if (e < 0) {
      errs[i] = e;
      if (not_here(e)) continue;
      fl_listen_set_close(s);
      s->n = 0;
      return e;
    }
    s->addr[s->n] = tried[i];
    s->fd[s->n++] = fd;
  }
  return s->n;
}

int fl_listen_set_bind(fl_listen_set *s, const char *host, int port, char *err, size_t errlen) {
  char scratch[2];
  if (!err || !errlen) {
    err = scratch;
    errlen = sizeof scratch;
  }
  memset(s, 0, sizeof *s);
  struct sockaddr_storage cand[FL_LISTEN_MAX_ADDRS], tried[FL_LISTEN_MAX_ADDRS];
  int errs[FL_LISTEN_MAX_ADDRS];
  int k = resolve(host, port, cand, FL_LISTEN_MAX_ADDRS, err, errlen);
  if (k < 0) return k;
  struct sockaddr_storage probe;
  s->named = uv_ip4_addr(host, 0, (struct sockaddr_in *)&probe) != 0 &&
             uv_ip6_addr(host, 0, (struct sockaddr_in6 *)&probe) != 0;
  s->v6only = k > 1; /* "::" alone keeps taking IPv4 too; beside an IPv4 address it must not */
  int r = 0;
  for (int t = 0; t < PORT_TRIES; t++) {
    r = bind_all(s, cand, k, port, tried, errs);
    if (!(r == -EADDRINUSE && port == 0 && k > 1)) break; /* a port we picked: pick again */
  }
  char name[80];
  if (r > 0) {
    char names[512];
    fl_listen_set_names(s, names, sizeof names);
    for (int i = 0; i < k; i++) {
      if (!errs[i]) continue;
      fl_addr_name((struct sockaddr *)&tried[i], name, sizeof name);
      fl_warn("listen", "not listening on %s, an address of '%s': %s (listening on %s)", name,
              host, uv_strerror(errs[i]), names);
    }
    err[0] = '\0';
    return r;
  }
  if (k == 1) { /* the message as it always was: "...: address already in use" */
    snprintf(err, errlen, "cannot listen on %s port %d: %s", host, port, uv_strerror(errs[0]));
    return FL_ENET;
  }
  size_t used = (size_t)snprintf(err, errlen, "cannot listen on %s port %d:", host, port);
  for (int i = 0; i < k && used + 1 < errlen; i++) {
    if (!errs[i]) continue;
    fl_addr_name((struct sockaddr *)&tried[i], name, sizeof name);
    used += (size_t)snprintf(err + used, errlen - used, "%s %s: %s", err[used - 1] == ':' ? "" : ";",
                             name, uv_strerror(errs[i]));
  }
  return FL_ENET;
}

int fl_listen_set_again(const fl_listen_set *s, int i, int *fd) {
  return bind_socket(&s->addr[i], s->v6only, 1, fd);
}

void fl_listen_set_names(const fl_listen_set *s, char *out, size_t n) {
  size_t used = 0;
  out[0] = '\0';
  for (int i = 0; i < s->n && used + 1 < n; i++) {
    char name[80];
    fl_addr_name((const struct sockaddr *)&s->addr[i], name, sizeof name);
    used += (size_t)snprintf(out + used, n - used, "%s%s", i ? ", " : "", name);
  }
}
