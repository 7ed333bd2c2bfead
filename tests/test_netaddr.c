/* common/netaddr.c: a host name with several addresses is listened on at every one of
 * them, on one port; an address the host lacks is skipped with a warning; when none
 * binds, the error names each.  Then the real fl-server on such a name serves a client
 * that connects to its IPv6 address and one that connects to its IPv4 address.
 *
 * The names come from a private /etc/hosts (fl_test_private_hosts: a mount namespace
 * of the test's own; needs root, the test skips otherwise): "dualhost" is ::1 and
 * 127.0.0.1, "halfhost" 192.0.2.1 (TEST-NET-1, no address of this host) and 127.0.0.1,
 * "nohost" 192.0.2.1 and 198.51.100.1. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "netaddr.h"
#include "testutil.h"

#define HOSTS "::1 dualhost\n127.0.0.1 dualhost\n192.0.2.1 halfhost\n127.0.0.1 halfhost\n" \
              "192.0.2.1 nohost\n198.51.100.1 nohost\n"

/* The names above, or the test skips saying why; dualhost must resolve to ::1, then
 * 127.0.0.1, as on most hosts with IPv6 loopback (getaddrinfo sorts IPv6 first). */
static void private_hosts(void) {
  char why[300], got[200];
  if (fl_test_private_hosts(HOSTS, why, sizeof why) < 0) cr_skip_test("%s", why);
  fl_test_resolve("dualhost", got, sizeof got);
  if (strcmp(got, "::1, 127.0.0.1") != 0)
    cr_skip_test("dualhost resolves to '%s' here, not to ::1 then 127.0.0.1", got);
}

/* Connects a plain TCP socket to addr: 0, or the errno. */
static int tcp_reaches(const struct sockaddr_storage *addr) {
  int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  socklen_t len = addr->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  int r = connect(fd, (const struct sockaddr *)addr, len) == 0 ? 0 : errno;
  close(fd);
  return r;
}

/* GET / from the server at ip:port: the status code of the answer (0: none). */
static int http_get(const char *ip, int port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
  struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
  if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
  } else {
    cr_assert_eq(inet_pton(AF_INET, ip, &a4->sin_addr), 1);
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  socklen_t len = ss.ss_family == AF_INET6 ? sizeof *a6 : sizeof *a4;
  int code = 0;
  if (fd >= 0 && connect(fd, (struct sockaddr *)&ss, len) == 0) {
    const char req[] = "GET / HTTP/1.1\r\nHost: dualhost\r\nConnection: close\r\n\r\n";
    char buf[64] = "";
    if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1) && read(fd, buf, sizeof buf - 1) > 0)
      sscanf(buf, "HTTP/1.%*d %d", &code);
  }
  if (fd >= 0) close(fd);
  return code;
}

/* fl_listen_set_bind with what it logs (stderr) in log (malloc'd). */
static int bind_logged(fl_listen_set *s, const char *host, int port, char *err, size_t errlen,
                       char **log) {
  char *dir = fl_test_tmpdir(), path[600];
  snprintf(path, sizeof path, "%s/log", dir);
  free(dir);
  fflush(stderr);
  int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  cr_assert(saved >= 0 && fd >= 0);
  dup2(fd, 2);
  close(fd);
  int r = fl_listen_set_bind(s, host, port, err, errlen);
  dup2(saved, 2);
  close(saved);
  *log = fl_test_read_file(path, NULL);
  cr_assert_not_null(*log);
  return r;
}

Test(netaddr, a_name_is_listened_on_at_each_address_on_one_port, .timeout = 20) {
  private_hosts();
  fl_listen_set s;
  char err[512];
  cr_assert_eq(fl_listen_set_bind(&s, "dualhost", 0, err, sizeof err), 2, "%s", err);
  cr_assert(s.named && s.v6only);
  cr_assert_gt(s.port, 0);
  char names[200], want[200];
  fl_listen_set_names(&s, names, sizeof names);
  snprintf(want, sizeof want, "[::1]:%d, 127.0.0.1:%d", s.port, s.port);
  cr_assert_str_eq(names, want);
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(listen(s.fd[i], 4), 0);
    cr_assert_eq(tcp_reaches(&s.addr[i]), 0, "%s: %s", names, strerror(tcp_reaches(&s.addr[i])));
  }
  fl_listen_set_close(&s);
  cr_assert_eq(s.fd[0], -1);
}

Test(netaddr, an_address_the_host_lacks_is_a_warning, .timeout = 20) {
  private_hosts();
  fl_listen_set s;
  char err[512], *log;
  cr_assert_eq(bind_logged(&s, "halfhost", 0, err, sizeof err, &log), 1, "%s", err);
  char want[300];
  snprintf(want, sizeof want, "not listening on 192.0.2.1:%d, an address of 'halfhost': "
           "address not available (listening on 127.0.0.1:%d)", s.port, s.port);
  cr_assert_not_null(strstr(log, want), "log '%s' lacks '%s'", log, want);
  cr_assert_not_null(strstr(log, "WARN"), "%s", log);
  fl_listen_set_close(&s);
  free(log);
}

Test(netaddr, when_no_address_binds_the_error_names_each, .timeout = 20) {
  private_hosts();
  fl_listen_set s;
  char err[512];
  int port = fl_test_free_port();
  cr_assert_eq(fl_listen_set_bind(&s, "nohost", port, err, sizeof err), FL_ENET);
  char want[300];
  snprintf(want, sizeof want, "cannot listen on nohost port %d: 192.0.2.1:%d: address not "
           "available; 198.51.100.1:%d: address not available", port, port, port);
  cr_assert_str_eq(err, want);
  cr_assert_eq(s.n, 0);
}

/* Numeric addresses bind as they always did, and say so as they always did. */
Test(netaddr, a_numeric_address_is_taken_as_it_is, .timeout = 20) {
  fl_listen_set s, again;
  char err[512];
  cr_assert_eq(fl_listen_set_bind(&s, "127.0.0.1", 0, err, sizeof err), 1, "%s", err);
  cr_assert(!s.named && !s.v6only);
  cr_assert_eq(listen(s.fd[0], 4), 0); /* SO_REUSEADDR shares a port until one listens */
  char want[300];
  snprintf(want, sizeof want, "cannot listen on 127.0.0.1 port %d: address already in use", s.port);
  cr_assert_eq(fl_listen_set_bind(&again, "127.0.0.1", s.port, err, sizeof err), FL_ENET);
  cr_assert_str_eq(err, want);
  fl_listen_set_close(&s);
  cr_assert_eq(fl_listen_set_bind(&s, "nosuch.invalid", 0, err, sizeof err), FL_EINVAL);
  cr_assert_not_null(strstr(err, "cannot listen on 'nosuch.invalid'"), "%s", err);
}

/* fl-server --listen dualhost:PORT: one client joins at [::1]:PORT, the other at
 * 127.0.0.1:PORT; the round needs both.  Its status page (--http dualhost:PORT)
 * answers at both addresses too. */
Test(netaddr, server_on_a_name_serves_each_address, .timeout = 120) {
  private_hosts();
  fl_test_fed f;
  fl_test_fed_init(&f);
  char listen[64], v6[64], v4[64], http[64];
  int http_port = fl_test_free_port();
  snprintf(listen, sizeof listen, "dualhost:%d", f.port);
  snprintf(http, sizeof http, "dualhost:%d", http_port);
  snprintf(v6, sizeof v6, "[::1]:%d", f.port);
  snprintf(v4, sizeof v4, "127.0.0.1:%d", f.port);
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--listen", listen, "--model", "logreg",
                                     "--rounds", "1", "--clients-per-round", "2",
                                     "--min-clients", "2", "--http", http, NULL);
  cr_assert_gt(s, 0, "no server (%s)", f.log);
  char want[200];
  snprintf(want, sizeof want, "listening on dualhost port %d ([::1]:%d, 127.0.0.1:%d)", f.port,
           f.port, f.port);
  cr_assert_eq(fl_test_count(f.log, want), 1, "%s lacks '%s'", f.log, want);
  /* The server waits for its two clients: the page is there until they come. */
  cr_assert_eq(http_get("::1", http_port), 200, "no status page at [::1]:%d", http_port);
  cr_assert_eq(http_get("127.0.0.1", http_port), 200, "no status page at 127.0.0.1:%d", http_port);
  pid_t c6 = fl_test_fed_clients(&f, "v6.log", "--server", v6, "--cert-index", "1", "--data",
                                 "fashion-mnist:train", "--max-samples", "200", NULL);
  pid_t c4 = fl_test_fed_clients(&f, "v4.log", "--server", v4, "--cert-index", "2", "--data",
                                 "fashion-mnist:train", "--max-samples", "200", NULL);
  cr_assert_eq(fl_test_wait(s, 90), 0, "fl-server failed (%s)", f.log);
  cr_assert_eq(fl_test_wait(c6, 30), 0, "the client at %s failed (%s)", v6, f.dir);
  cr_assert_eq(fl_test_wait(c4, 30), 0, "the client at %s failed (%s)", v4, f.dir);
  cr_assert_eq(fl_test_count(f.metrics, "\"updates_accepted\":2"), 1, "%s", f.metrics);
  cr_assert(fl_test_sanitizer_clean(f.log), "sanitizer report in %s", f.log);
  fl_test_fed_free(&f);
}

/* fl-server on a name none of whose addresses this host has: it exits, naming each. */
Test(netaddr, server_names_each_address_it_cannot_listen_on, .timeout = 60) {
  private_hosts();
  fl_test_fed f;
  fl_test_fed_init(&f);
  char listen[64];
  snprintf(listen, sizeof listen, "nohost:%d", f.port);
  pid_t s = fl_test_fed_server(&f, "server.log", "--listen", listen, "--model", "logreg", NULL);
  char want[300];
  cr_assert_eq(fl_test_wait(s, 30), 1, "fl-server did not fail (%s)", f.log);
  snprintf(want, sizeof want, "cannot listen on nohost port %d: 192.0.2.1:%d: address not "
           "available; 198.51.100.1:%d: address not available", f.port, f.port,
           f.port);
  cr_assert_eq(fl_test_count(f.log, want), 1, "%s lacks '%s'", f.log, want);
  fl_test_fed_free(&f);
}
