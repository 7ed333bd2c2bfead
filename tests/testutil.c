/* Helpers shared by the tests (see testutil.h). */
#include "testutil.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *env_or(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return v && *v ? v : fallback;
}

const char *fl_test_src_dir(void) { return env_or("FL_SRC_DIR", "."); }
const char *fl_test_bin_dir(void) { return env_or("FL_BIN_DIR", "build"); }
const char *fl_test_certs_dir(void) { return env_or("FL_CERTS", "build/test-certs"); }

char *fl_test_bin(const char *name) {
  char *p = malloc(4096);
  if (p) snprintf(p, 4096, "%s/%s", fl_test_bin_dir(), name);
  return p;
}

int fl_test_system(const char *cmd) {
  int st = system(cmd);
  if (st == -1 || !WIFEXITED(st)) return -1;
  return WEXITSTATUS(st);
}

double fl_test_time_scale(void) {
  const char *v = getenv("FL_TEST_TIME_SCALE");
  double s = v ? strtod(v, NULL) : 1.0;
  return s >= 1.0 ? s : 1.0;
}

/* ---- ports ---- */

static int bind_free(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

/* The ports no one else is handed: [lo, hi) outside the kernel's ephemeral range. */
static void test_port_range(int *lo, int *hi) {
  int e_lo = 32768, e_hi = 60999;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f) {
    if (fscanf(f, "%d %d", &e_lo, &e_hi) != 2) e_lo = 32768, e_hi = 60999;
    fclose(f);
  }
  if (e_lo - 10000 >= 2000) {
    *lo = 10000;
    *hi = e_lo;
  } else {
    *lo = e_hi + 1;
    *hi = 65536;
  }
}

int fl_test_free_port(void) {
  int lo, hi;
  test_port_range(&lo, &hi);
  int fd = open("/tmp/fl-test-ports", O_RDWR | O_CREAT, 0666);
  if (fd < 0) return -1;
  flock(fd, LOCK_EX);
  unsigned next = 0;
  if (pread(fd, &next, sizeof next, 0) != (ssize_t)sizeof next) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    next = (unsigned)(t.tv_nsec ^ getpid()); /* a fresh file: start anywhere */
  }
  int port = -1;
  for (int tries = 0; tries < hi - lo && port < 0; tries++) {
    int p = lo + (int)(next++ % (unsigned)(hi - lo));
    if (bind_free(p)) port = p;
  }
  if (pwrite(fd, &next, sizeof next, 0) != (ssize_t)sizeof next) port = -1;
  flock(fd, LOCK_UN);
  close(fd);
  return port;
}

/* ---- certificates ---- */

const char *fl_test_extra_certs(void) {
  static char dir[1024];
  snprintf(dir, sizeof dir, "%s/extra", fl_test_certs_dir());
  char probe[1100];
  snprintf(probe, sizeof probe, "%s/other/client-0001.crt", dir);
  struct stat st;
  if (stat(probe, &st) == 0) return dir;
  char tmp[1100], cmd[4096];
  snprintf(tmp, sizeof tmp, "%s/extra.XXXXXX", fl_test_certs_dir());
  cr_assert_not_null(mkdtemp(tmp));
  snprintf(cmd, sizeof cmd, "%s/tests/mkcerts_extra.sh '%s' '%s' '%s'", fl_test_src_dir(),
           fl_test_certs_dir(), tmp, fl_test_src_dir());
  cr_assert_eq(fl_test_system(cmd), 0, "tests/mkcerts_extra.sh failed");
  if (rename(tmp, dir) != 0) { /* another test process made them first */
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    fl_test_system(cmd);
  }
  return dir;
}

void fl_test_client_cert(int index, char *crt, char *key, size_t len) {
  snprintf(crt, len, "%s/client-%04d.crt", fl_test_certs_dir(), index);
  snprintf(key, len, "%s/client-%04d.key", fl_test_certs_dir(), index);
}

/* ---- processes and logs ---- */

char *fl_test_tmpdir(void) {
  char tmpl[] = "/tmp/fl-test-XXXXXX";
  if (!mkdtemp(tmpl)) return NULL;
  return strdup(tmpl);
}

int fl_test_private_hosts(const char *lines, char *why, size_t whylen) {
  if (geteuid() != 0) {
    snprintf(why, whylen, "needs root: a private /etc/hosts is bind-mounted in a mount "
             "namespace of the test's own");
    return -1;
  }
  char *dir = fl_test_tmpdir();
  if (!dir) {
    snprintf(why, whylen, "no temporary directory: %s", strerror(errno));
    return -1;
  }
  char path[600], cmd[1400];
  snprintf(path, sizeof path, "%s/hosts", dir);
  free(dir);
  snprintf(cmd, sizeof cmd, "cat /etc/hosts > '%s' 2>/dev/null", path);
  fl_test_system(cmd); /* no file of the machine's: only the lines given */
  FILE *f = fopen(path, "a");
  if (!f || fputs("\n", f) < 0 || fputs(lines, f) < 0 || fclose(f) != 0) {
    snprintf(why, whylen, "cannot write %s", path);
    return -1;
  }
  /* Private first: a bind mount in a namespace that shares its mounts with the
   * machine's would replace the machine's /etc/hosts too. */
  if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
      mount(path, "/etc/hosts", NULL, MS_BIND, NULL) != 0) {
    snprintf(why, whylen, "no private mount namespace for /etc/hosts here: %s", strerror(errno));
    return -1;
  }
  return 0;
}

void fl_test_resolve(const char *host, char *out, size_t len) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  size_t used = 0;
  out[0] = '\0';
  if (getaddrinfo(host, NULL, &hints, &res) != 0) return;
  for (struct addrinfo *ai = res; ai && used + 1 < len; ai = ai->ai_next) {
    char ip[INET6_ADDRSTRLEN] = "?";
    const void *a = ai->ai_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
    inet_ntop(ai->ai_family, a, ip, sizeof ip);
    used += (size_t)snprintf(out + used, len - used, "%s%s", used ? ", " : "", ip);
  }
  freeaddrinfo(res);
}

pid_t fl_test_spawn(const char *log, char *const argv[]) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* A test that fails an assertion exits at once: its servers and clients go with it. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd >= 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
  }
  int null = open("/dev/null", O_RDONLY);
  if (null >= 0) dup2(null, 0);
  execv(argv[0], argv);
  fprintf(stderr, "exec %s failed\n", argv[0]);
  _exit(127);
}

static double mono(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int fl_test_wait(pid_t pid, double timeout_s) {
  double end = mono() + timeout_s * fl_test_time_scale();
  int st;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) break;
    if (r < 0) return -1;
    if (mono() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    usleep(20000);
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

int fl_test_running(pid_t pid) {
  int st;
  return waitpid(pid, &st, WNOHANG) == 0;
}

static char proc_state(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
  return p && p[1] == ' ' ? p[2] : 0;
}

int fl_test_wait_stopped(pid_t pid, double timeout_s) {
  double end = mono() + timeout_s * fl_test_time_scale();
  do {
    if (proc_state(pid) == 'T') return 1;
    usleep(20000);
  } while (mono() < end);
  return proc_state(pid) == 'T';
}

char *fl_test_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
    n += got;
    if (cap - n - 1 == 0) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) {
        free(buf);
        buf = NULL;
      } else {
        buf = nb;
      }
    }
  }
  fclose(f);
  if (!buf) return NULL;
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

int fl_test_count(const char *path, const char *needle) {
  char *s = fl_test_read_file(path, NULL);
  if (!s) return 0;
  int n = 0;
  for (char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
  free(s);
  return n;
}

int fl_test_sanitizer_clean(const char *log) {
  return fl_test_count(log, "ERROR: AddressSanitizer") == 0 &&
         fl_test_count(log, "ERROR: LeakSanitizer") == 0 &&
         fl_test_count(log, "runtime error:") == 0;
}

int fl_test_wait_count(const char *path, const char *needle, int n, double timeout_s) {
  double end = mono() + timeout_s * fl_test_time_scale();
  do {
    if (fl_test_count(path, needle) >= n) return 1;
    usleep(20000);
  } while (mono() < end);
  return fl_test_count(path, needle) >= n;
}

int fl_test_wait_for(const char *path, const char *needle, double timeout_s) {
  return fl_test_wait_count(path, needle, 1, timeout_s);
}

int fl_test_wait_for_while(const char *path, const char *needle, pid_t pid, double timeout_s) {
  double end = mono() + timeout_s * fl_test_time_scale();
  do {
    if (fl_test_count(path, needle) > 0) return 1;
    siginfo_t si = {0};
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == pid)
      break; /* exited (left unreaped for fl_test_wait) */
    usleep(20000);
  } while (mono() < end);
  return fl_test_count(path, needle) > 0;
}

/* ---- federations ---- */

void fl_test_fed_init(fl_test_fed *f) {
  memset(f, 0, sizeof *f);
  f->dir = fl_test_tmpdir();
  const char *certs = fl_test_certs_dir();
  snprintf(f->ca, sizeof f->ca, "%s/ca.crt", certs);
  snprintf(f->cert, sizeof f->cert, "%s/server.crt", certs);
  snprintf(f->key, sizeof f->key, "%s/server.key", certs);
  f->port = fl_test_free_port();
  snprintf(f->listen, sizeof f->listen, "127.0.0.1:%d", f->port);
  snprintf(f->model, sizeof f->model, "%s/model.bin", f->dir);
  snprintf(f->metrics, sizeof f->metrics, "%s/metrics.jsonl", f->dir);
  snprintf(f->log, sizeof f->log, "%s/server.log", f->dir);
  f->server = fl_test_bin("fl-server");
  f->client = fl_test_bin("fl-client");
}

void fl_test_fed_free(fl_test_fed *f) {
  free(f->server);
  free(f->client);
  free(f->dir);
  memset(f, 0, sizeof *f);
}

void fl_test_fed_path(const fl_test_fed *f, const char *name, char *out, size_t len) {
  snprintf(out, len, "%s/%s", f->dir, name);
}

#define MAX_ARGS 128

/* argv = fixed[] then the NULL-terminated extra[] (NULL: none). */
static pid_t spawn_with(const fl_test_fed *f, const char *log, char **fixed, int nfixed,
                        const char *const *extra) {
  char *argv[MAX_ARGS];
  int n = 0;
  for (int i = 0; i < nfixed; i++) argv[n++] = fixed[i];
  for (int i = 0; extra && extra[i] && n < MAX_ARGS - 1; i++) argv[n++] = (char *)extra[i];
  argv[n] = NULL;
  char path[700];
  fl_test_fed_path(f, log, path, sizeof path);
  return fl_test_spawn(path, argv);
}

/* The NULL-terminated arguments of ap into out[MAX_ARGS]. */
static void collect(va_list ap, const char **out) {
  int n = 0;
  const char *a;
  while ((a = va_arg(ap, const char *)) && n < MAX_ARGS - 1) out[n++] = a;
  out[n] = NULL;
}

/* Declares extra[MAX_ARGS]: a variadic function's NULL-terminated arguments after last. */
#define EXTRA_ARGS(extra, last)                                                    \
  const char *extra[MAX_ARGS];                                                     \
  do {                                                                             \
    va_list ap_;                                                                   \
    va_start(ap_, last);                                                           \
    collect(ap_, extra);                                                           \
    va_end(ap_);                                                                   \
  } while (0)

static pid_t server_list(fl_test_fed *f, const char *log, const char *const *extra) {
  char *fixed[] = {f->server, "--listen", f->listen, "--ca", f->ca, "--cert", f->cert,
                   "--key", f->key, "--out", f->model, "--metrics", f->metrics};
  return spawn_with(f, log, fixed, (int)(sizeof fixed / sizeof *fixed), extra);
}

pid_t fl_test_fed_server(fl_test_fed *f, const char *log, ...) {
  EXTRA_ARGS(extra, log);
  return server_list(f, log, extra);
}

pid_t fl_test_fed_server_ready_list(fl_test_fed *f, const char *log, const char *const *extra) {
  pid_t pid = server_list(f, log, extra);
  char path[700];
  fl_test_fed_path(f, log, path, sizeof path);
  if (!fl_test_wait_for_while(path, "[server] listening on", pid, 60)) return -1;
  return pid;
}

pid_t fl_test_fed_server_ready(fl_test_fed *f, const char *log, ...) {
  EXTRA_ARGS(extra, log);
  return fl_test_fed_server_ready_list(f, log, extra);
}

pid_t fl_test_fed_clients(fl_test_fed *f, const char *log, ...) {
  char *fixed[] = {f->client, "--server", f->listen, "--server-name", "localhost", "--ca", f->ca,
                   "--certs-dir", (char *)fl_test_certs_dir()};
  EXTRA_ARGS(extra, log);
  return spawn_with(f, log, fixed, (int)(sizeof fixed / sizeof *fixed), extra);
}

/* ---- scripted clients ---- */

int fl_test_client_tls(const char *crt, const char *key, fl_tls_config **out, char *err,
                       size_t errlen) {
  char ca[1024];
  snprintf(ca, sizeof ca, "%s/ca.crt", fl_test_certs_dir());
  fl_tls_options t = {.ca_file = ca, .cert_file = crt, .key_file = key,
                      .server_name = "localhost"};
  return fl_tls_config_create(&t, out, err, errlen);
}

int fl_test_send(fl_conn *c, const Fl__Envelope *env) {
  uint8_t *buf;
  size_t len;
  int rc = fl_msg_encode(env, &buf, &len);
  if (rc != 0) return rc;
  fl_conn_send(c, buf, len);
  free(buf);
  return 0;
}

int fl_test_send_hello(fl_conn *c, const char *software, uint64_t num_samples,
                       char **caps, size_t ncaps) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Hello h = FL__HELLO__INIT;
  h.protocol_version = FL_PROTOCOL_VERSION;
  if (software) h.software_version = (char *)software;
  h.num_samples = num_samples;
  h.n_capabilities = ncaps;
  h.capabilities = caps;
  env.body_case = FL__ENVELOPE__BODY_HELLO;
  env.hello = &h;
  return fl_test_send(c, &env);
}

int fl_test_send_update(fl_conn *c, uint64_t round, uint64_t model_id, uint64_t num_params,
                        uint64_t examples, Fl__Encoding enc, uint64_t metrics_examples) {
  Fl__Envelope env = FL__ENVELOPE__INIT;
  Fl__Update u = FL__UPDATE__INIT;
  Fl__Metrics m = FL__METRICS__INIT;
  m.loss = 1.0;
  m.num_examples = metrics_examples;
  u.round = round;
  u.model_id = model_id;
  u.num_params = num_params;
  u.num_examples = examples;
  u.encoding = enc;
  u.metrics = metrics_examples ? &m : NULL;
  env.body_case = FL__ENVELOPE__BODY_UPDATE;
  env.update = &u;
  return fl_test_send(c, &env);
}

void fl_test_send_tensor(fl_conn *c, fl_tensor_tx *tx) {
  uint8_t *buf;
  size_t len;
  while (fl_tensor_tx_next(tx, &buf, &len) == 1) {
    fl_conn_send(c, buf, len);
    free(buf);
  }
}

void fl_test_model_expect(fl_test_model *m, uint64_t n) {
  free(m->values);
  m->values = malloc(n * sizeof *m->values);
  m->n = n;
  fl_tensor_rx_init(&m->rx, m->values, n);
  m->receiving = 1;
}

int fl_test_model_add(fl_test_model *m, const Fl__TensorChunk *chunk) {
  char err[160];
  int rc = fl_tensor_rx_add(&m->rx, chunk, err, sizeof err);
  cr_assert_geq(rc, 0, "%s", err);
  if (rc != 1 || !m->receiving) return 0;
  m->receiving = 0;
  return 1;
}

void fl_test_model_free(fl_test_model *m) {
  free(m->values);
  m->values = NULL;
}

/* ---- metrics ---- */

double fl_test_json_num(const char *line, const char *key) {
  char pat[128];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  if (!p || strncmp(p + strlen(pat), "null", 4) == 0) return NAN;
  return strtod(p + strlen(pat), NULL);
}

int fl_test_metrics_rounds(const char *path) {
  char *m = fl_test_read_file(path, NULL);
  if (!m) return 0;
  int expect = 1;
  char *save = NULL;
  for (char *line = strtok_r(m, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (fl_test_json_num(line, "round") != expect) {
      free(m);
      return -1;
    }
    expect++;
  }
  free(m);
  return expect - 1;
}

char *fl_test_metrics_line(const char *path, int round) {
  char *m = fl_test_read_file(path, NULL);
  if (!m) return NULL;
  char *save = NULL, *found = NULL;
  for (char *line = strtok_r(m, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
    if (fl_test_json_num(line, "round") == round) {
      free(found);
      found = strdup(line);
    }
  free(m);
  return found;
}
