/* TLS transport benchmark: what common/conn.c costs against what the cipher costs.
 *
 *   - bare AEAD speed in one thread (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305),
 *     16 KiB records as TLS uses them;
 *   - 100 MiB sent as 1 MiB frames over TLS on loopback, client and server on two
 *     threads with their own loops, against the bare speed of the negotiated suite;
 *   - plain TCP over loopback (blocking sockets, two threads) for reference;
 *   - round-trip latency of a 64-byte frame over an established connection;
 *   - mutually authenticated handshakes per second (one client after another), full ones
 *     and ones that resume a session from a ticket, per second and per CPU-second of
 *     both ends (the figure that decides how fast a restarted server takes its clients
 *     back).
 * Needs FL_CERTS (make bench sets it). */
#include <arpa/inet.h>
#include <mbedtls/chachapoly.h>
#include <mbedtls/gcm.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "conn.h"
#include "error.h"
#include "log.h"
#include "tls.h"

#define TOTAL (100u << 20)
#define CHUNK (1u << 20)
#define RECORD 16384u
#define ROUND_TRIPS 2000
#define WARMUP 200

static double now_s(void) { return (double)uv_hrtime() / 1e9; }

/* CPU seconds of the calling thread: the bare cipher figures are per CPU second, so other
 * processes on a shared machine do not distort them. */
static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds used by the whole process (every thread) so far. */
static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* ---- bare AEAD ---- */

static double bare_gcm(int keybits, uint8_t *buf, uint8_t *out) {
  mbedtls_gcm_context g;
  uint8_t key[32] = {7}, iv[12] = {0}, aad[13] = {0}, tag[16];
  mbedtls_gcm_init(&g);
  mbedtls_gcm_setkey(&g, MBEDTLS_CIPHER_ID_AES, key, (unsigned)keybits);
  double t0 = thread_cpu_s();
  for (size_t off = 0; off < TOTAL; off += RECORD) {
    iv[11]++;
    mbedtls_gcm_crypt_and_tag(&g, MBEDTLS_GCM_ENCRYPT, RECORD, iv, 12, aad, 13, buf + off % CHUNK,
                              out, 16, tag);
  }
  double dt = thread_cpu_s() - t0;
  mbedtls_gcm_free(&g);
  return TOTAL / dt / 1e6;
}

static double bare_chachapoly(uint8_t *buf, uint8_t *out) {
  mbedtls_chachapoly_context c;
  uint8_t key[32] = {7}, iv[12] = {0}, aad[13] = {0}, tag[16];
  mbedtls_chachapoly_init(&c);
  mbedtls_chachapoly_setkey(&c, key);
  double t0 = thread_cpu_s();
  for (size_t off = 0; off < TOTAL; off += RECORD) {
    iv[11]++;
    mbedtls_chachapoly_encrypt_and_tag(&c, RECORD, iv, aad, 13, buf + off % CHUNK, out, tag);
  }
  double dt = thread_cpu_s() - t0;
  mbedtls_chachapoly_free(&c);
  return TOTAL / dt / 1e6;
}

/* ---- the server thread: counts bulk frames, echoes small ones ---- */

typedef struct server {
  uv_loop_t loop;
  uv_async_t stop;
  fl_listener *l;
  fl_tls_config *tls;
  int port;
  pthread_t th;
} server;

typedef struct srv_conn { uint64_t bytes; } srv_conn;

static void s_open(fl_conn *c) { fl_conn_set_data(c, calloc(1, sizeof(srv_conn))); }
static void s_frame(fl_conn *c, const uint8_t *d, size_t len) {
  srv_conn *s = fl_conn_data(c);
  if (len <= 256) {
    fl_conn_send(c, d, len);
    return;
  }
  s->bytes += len;
  if (s->bytes >= TOTAL) {
    s->bytes = 0;
    fl_conn_send(c, (const uint8_t *)"done", 4);
  }
}
static void s_close(fl_conn *c, int err, const char *reason) {
  (void)err, (void)reason;
  if (fl_conn_data(c) != fl_conn_loop(c)->data) free(fl_conn_data(c));
}
static const fl_conn_callbacks srv_cb = {s_open, s_frame, NULL, s_close};

static void stop_cb(uv_async_t *a) {
  server *s = a->data;
  fl_listener_close(s->l);
  uv_close((uv_handle_t *)a, NULL);
}
static void *server_main(void *arg) {
  server *s = arg;
  uv_run(&s->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* ---- the client side, on the main thread's loop ---- */

enum phase { P_BULK, P_PING, P_HANDSHAKE };
typedef struct client {
  uv_loop_t loop;
  fl_tls_config *tls;
  int port;
  enum phase phase;
  fl_conn *c;
  int closed, open;
  char why[256];       /* how the last connection ended */
  uint64_t sent;
  uint8_t *chunk;
  double t0, t1;
  double rtt[ROUND_TRIPS + WARMUP];
  int trips;
  double trip_start;
  int handshakes, resumed;
  double hs_until;
  char cipher[80];
} client;

static void bulk_more(fl_conn *c, client *k) {
  while (k->sent < TOTAL && fl_conn_queued(c) < (1u << 20)) {
    if (fl_conn_send(c, k->chunk, CHUNK) < 0) return;
    k->sent += CHUNK;
  }
}

static void c_open(fl_conn *c) {
  client *k = fl_conn_data(c);
  k->open = 1;
  snprintf(k->cipher, sizeof k->cipher, "%s", fl_conn_cipher(c));
  if (k->phase == P_BULK) {
    k->t0 = now_s();
    bulk_more(c, k);
  } else if (k->phase == P_PING) {
    k->trip_start = now_s();
    fl_conn_send(c, k->chunk, 64);
  } else {
    k->handshakes++;
    k->resumed += fl_conn_resumed(c);
    fl_conn_close(c, "handshake done");
  }
}
static void c_frame(fl_conn *c, const uint8_t *d, size_t len) {
  client *k = fl_conn_data(c);
  (void)d;
  if (k->phase == P_BULK && len == 4) {
    k->t1 = now_s();
    fl_conn_close(c, "bulk done");
  } else if (k->phase == P_PING) {
    double t = now_s();
    k->rtt[k->trips++] = t - k->trip_start;
    if (k->trips == ROUND_TRIPS + WARMUP) {
      fl_conn_close(c, "ping done");
      return;
    }
    k->trip_start = t;
    fl_conn_send(c, k->chunk, 64);
  }
}
static void c_drain(fl_conn *c) {
  client *k = fl_conn_data(c);
  if (k->phase == P_BULK) bulk_more(c, k);
}
static void c_close(fl_conn *c, int err, const char *reason) {
  client *k = fl_conn_data(c);
  snprintf(k->why, sizeof k->why, "%s%s", reason ? reason : "closed",
           err ? "" : " (closed cleanly)");
  k->closed = 1;
}
static const fl_conn_callbacks cli_cb = {c_open, c_frame, c_drain, c_close};

static const char *phase_name(enum phase p) {
  return p == P_BULK ? "bulk transfer" : p == P_PING ? "round trips" : "handshakes";
}

/* One connection of the current phase; on failure says what went wrong on stderr. */
static int run_one(client *k) {
  k->closed = k->open = 0;
  k->why[0] = 0;
  int rc = fl_connect(&k->loop, k->tls, "127.0.0.1", k->port, NULL, &cli_cb, k, &k->c);
  if (rc < 0) {
    fprintf(stderr, "bench-tls: %s: cannot start a connection: %s\n", phase_name(k->phase),
            fl_strerror(rc));
    return -1;
  }
  while (!k->closed) uv_run(&k->loop, UV_RUN_ONCE);
  if (!k->open) {
    fprintf(stderr, "bench-tls: %s: the connection failed before its handshake completed: %s\n",
            phase_name(k->phase), k->why);
    return -1;
  }
  return 0;
}

/* ---- plain TCP reference: blocking sockets on two threads ---- */

static int tcp_listen_fd;
static void *tcp_server(void *arg) {
  (void)arg;
  int fd = accept(tcp_listen_fd, NULL, NULL);
  uint8_t *buf = malloc(CHUNK);
  uint64_t got = 0;
  while (got < TOTAL) {
    ssize_t n = read(fd, buf, CHUNK);
    if (n <= 0) break;
    got += (uint64_t)n;
  }
  ssize_t w = write(fd, "k", 1);
  (void)w;
  close(fd);
  free(buf);
  return NULL;
}
static double plain_tcp(uint8_t *chunk) {
  tcp_listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  bind(tcp_listen_fd, (struct sockaddr *)&a, sizeof a);
  listen(tcp_listen_fd, 1);
  getsockname(tcp_listen_fd, (struct sockaddr *)&a, &len);
  pthread_t th;
  pthread_create(&th, NULL, tcp_server, NULL);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  connect(fd, (struct sockaddr *)&a, sizeof a);
  double t0 = now_s();
  for (uint64_t sent = 0; sent < TOTAL;) {
    ssize_t n = write(fd, chunk, CHUNK);
    if (n <= 0) break;
    sent += (uint64_t)n;
  }
  char ack;
  ssize_t r = read(fd, &ack, 1);
  (void)r;
  double dt = now_s() - t0;
  close(fd);
  pthread_join(th, NULL);
  close(tcp_listen_fd);
  return TOTAL / dt / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(void) {
  fl_log_set_level(FL_LOG_WARN);
  const char *dir = getenv("FL_CERTS");
  if (!dir) dir = "build/test-certs";
  char ca[1024], scrt[1024], skey[1024], ccrt[1024], ckey[1024], err[512];
  snprintf(ca, sizeof ca, "%s/ca.crt", dir);
  snprintf(scrt, sizeof scrt, "%s/server.crt", dir);
  snprintf(skey, sizeof skey, "%s/server.key", dir);
  snprintf(ccrt, sizeof ccrt, "%s/client-0001.crt", dir);
  snprintf(ckey, sizeof ckey, "%s/client-0001.key", dir);

  uint8_t *chunk = malloc(CHUNK), *out = malloc(RECORD);
  for (size_t i = 0; i < CHUNK; i++) chunk[i] = (uint8_t)(i * 131 + 7);

  double aes128 = 0, aes256 = 0, chacha = 0; /* best of 3 */
  for (int i = 0; i < 3; i++) {
    double a = bare_gcm(128, chunk, out), b = bare_gcm(256, chunk, out), c = bare_chachapoly(chunk, out);
    if (a > aes128) aes128 = a;
    if (b > aes256) aes256 = b;
    if (c > chacha) chacha = c;
  }

  server s;
  memset(&s, 0, sizeof s);
  fl_tls_options so = {.is_server = 1, .ca_file = ca, .cert_file = scrt, .key_file = skey,
                       .ticket_lifetime = 3600};
  if (fl_tls_config_create(&so, &s.tls, err, sizeof err) < 0) {
    fprintf(stderr, "bench: %s\n", err);
    return 1;
  }
  uv_loop_init(&s.loop);
  s.loop.data = NULL;
  uv_async_init(&s.loop, &s.stop, stop_cb);
  s.stop.data = &s;
  int rc = fl_listen(&s.loop, s.tls, "127.0.0.1", 0, NULL, &srv_cb, NULL, &s.l);
  if (rc < 0) {
    fprintf(stderr, "bench-tls: cannot listen on 127.0.0.1: %s\n", fl_strerror(rc));
    return 1;
  }
  s.port = fl_listener_port(s.l);
  pthread_create(&s.th, NULL, server_main, &s);

  static client k;
  uv_loop_init(&k.loop);
  fl_tls_options co = {.ca_file = ca, .cert_file = ccrt, .key_file = ckey, .server_name = "localhost"};
  if (fl_tls_config_create(&co, &k.tls, err, sizeof err) < 0) {
    fprintf(stderr, "bench: %s\n", err);
    return 1;
  }
  k.port = s.port;
  k.chunk = chunk;

  k.phase = P_BULK; /* best of 3 */
  double tls_mbs = 0, cpu_bulk = 0;
  for (int i = 0; i < 3; i++) {
    k.sent = 0;
    k.t1 = 0;
    double cpu0 = cpu_s();
    if (run_one(&k) < 0) return 1;
    if (k.t1 == 0) {
      fprintf(stderr, "bench-tls: bulk transfer: the connection ended before the server "
              "acknowledged the 100 MiB (%llu MiB sent): %s\n",
              (unsigned long long)(k.sent >> 20), k.why);
      return 1;
    }
    double mbs = TOTAL / (k.t1 - k.t0) / 1e6;
    if (mbs > tls_mbs) {
      tls_mbs = mbs;
      cpu_bulk = cpu_s() - cpu0;
    }
  }

  k.phase = P_PING;
  k.trips = 0;
  if (run_one(&k) < 0) return 1;
  if (k.trips < ROUND_TRIPS + WARMUP) {
    fprintf(stderr, "bench-tls: round trips: the connection ended after %d of %d: %s\n",
            k.trips, ROUND_TRIPS + WARMUP, k.why);
    return 1;
  }
  qsort(k.rtt + WARMUP, ROUND_TRIPS, sizeof(double), cmp_double);
  double median = k.rtt[WARMUP + ROUND_TRIPS / 2] * 1e6;
  double p99 = k.rtt[WARMUP + ROUND_TRIPS * 99 / 100] * 1e6;

  /* Full handshakes (this client keeps no session), then resumed ones (a client that
   * keeps its session: after the first, every one resumes). */
  k.phase = P_HANDSHAKE;
  double h0 = now_s(), cpu0 = cpu_s();
  while (now_s() - h0 < 2.0)
    if (run_one(&k) < 0) return 1;
  double hs = k.handshakes / (now_s() - h0), hs_cpu = k.handshakes / (cpu_s() - cpu0);
  if (k.resumed) {
    fprintf(stderr, "bench-tls: %d handshakes resumed by a client that keeps no session\n", k.resumed);
    return 1;
  }
  fl_tls_config *keep = k.tls;
  co.resume_sessions = 1;
  if (fl_tls_config_create(&co, &k.tls, err, sizeof err) < 0) {
    fprintf(stderr, "bench: %s\n", err);
    return 1;
  }
  if (run_one(&k) < 0) return 1; /* the full handshake that gives the ticket */
  k.handshakes = k.resumed = 0;
  h0 = now_s();
  cpu0 = cpu_s();
  while (now_s() - h0 < 2.0)
    if (run_one(&k) < 0) return 1;
  double rs = k.handshakes / (now_s() - h0), rs_cpu = k.handshakes / (cpu_s() - cpu0);
  if (k.resumed != k.handshakes) {
    fprintf(stderr, "bench-tls: only %d of %d handshakes of a client keeping its session resumed\n",
            k.resumed, k.handshakes);
    return 1;
  }
  fl_tls_config_free(k.tls);
  k.tls = keep;

  uv_async_send(&s.stop);
  pthread_join(s.th, NULL);
  uv_loop_close(&s.loop);
  uv_run(&k.loop, UV_RUN_DEFAULT);
  uv_loop_close(&k.loop);

  double tcp = plain_tcp(chunk);

  double bare = strstr(k.cipher, "CHACHA") ? chacha : strstr(k.cipher, "256") ? aes256 : aes128;
  printf("TLS transport benchmark (mbedTLS 2.28, libuv, loopback, %ld CPUs)\n",
         sysconf(_SC_NPROCESSORS_ONLN));
  printf("  %-52s %10s\n", "measure", "value");
  printf("  %-52s %7.0f MB/s\n", "bare AES-128-GCM encrypt, 16 KiB records, per CPU-s", aes128);
  printf("  %-52s %7.0f MB/s\n", "bare AES-256-GCM encrypt, 16 KiB records, per CPU-s", aes256);
  printf("  %-52s %7.0f MB/s\n", "bare ChaCha20-Poly1305 encrypt, 16 KiB rec, per CPU-s", chacha);
  printf("  %-52s %s\n", "faster AEAD on this machine (listed first in tls.c)",
         chacha > aes128 ? "ChaCha20-Poly1305" : "AES-128-GCM");
  printf("  %-52s %s\n", "negotiated suite", k.cipher);
  printf("  %-52s %7.0f MB/s\n", "TLS: 100 MiB as 1 MiB frames, 2 threads (best of 3)", tls_mbs);
  printf("  %-52s %7.2f   (wall clock; both ends share these CPUs)\n",
         "ratio TLS / bare negotiated cipher", tls_mbs / bare);
  /* Encrypting and decrypting 100 MiB alone would take 2 * TOTAL / bare CPU seconds: the
   * transport's cost per byte, independent of how many free cores the two ends found. */
  printf("  %-52s %7.2f s (%.0f%% of it crypto)\n", "TLS: CPU time of both ends for 100 MiB", cpu_bulk,
         100.0 * 2 * TOTAL / 1e6 / bare / cpu_bulk);
  printf("  %-52s %7.2f   (target >= 0.8)\n", "ratio per CPU-second: TLS / bare cipher",
         2 * TOTAL / 1e6 / cpu_bulk / bare);
  double load[3] = {0};
  if (getloadavg(load, 3) < 0) load[0] = -1;
  printf("  %-52s %7.2f   (other processes share the CPUs)\n", "load average (1 min)", load[0]);
  printf("  %-52s %7.0f MB/s\n", "plain TCP loopback, 100 MiB, 2 threads (reference)", tcp);
  printf("  %-52s %7.1f us\n", "round trip, 64-byte frame, median", median);
  printf("  %-52s %7.1f us\n", "round trip, 64-byte frame, p99", p99);
  printf("  %-52s %7.0f /s\n", "mutual-auth handshakes, sequential", hs);
  printf("  %-52s %7.0f /s\n", "  per CPU-second of both ends", hs_cpu);
  printf("  %-52s %7.0f /s\n", "resumed handshakes (session ticket), sequential", rs);
  printf("  %-52s %7.0f /s\n", "  per CPU-second of both ends", rs_cpu);
  printf("  %-52s %7.1f   (target >= 5)\n", "ratio per CPU-second: resumed / full", rs_cpu / hs_cpu);

  fl_tls_config_free(k.tls);
  fl_tls_config_free(s.tls);
  free(chunk);
  free(out);
  return 0;
}
