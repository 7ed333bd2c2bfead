/* Helpers shared by the tests (see testutil.h). */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *env_or(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return v && *v ? v : fallback;
}

const char *fl_test_src_dir(void) { return env_or("FL_SRC_DIR", "."); }
const char *fl_test_bin_dir(void) { return env_or("FL_BIN_DIR", "build"); }
const char *fl_test_certs_dir(void) { return env_or("FL_CERTS", "build/test-certs"); }

int fl_test_system(const char *cmd) {
  int st = system(cmd);
  if (st == -1 || !WIFEXITED(st)) return -1;
  return WEXITSTATUS(st);
}

int fl_test_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

#include <fcntl.h>
#include <sys/prctl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

char *fl_test_tmpdir(void) {
  char tmpl[] = "/tmp/fl-test-XXXXXX";
  if (!mkdtemp(tmpl)) return NULL;
  return strdup(tmpl);
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
  double end = mono() + timeout_s;
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
      if (!nb) { free(buf); buf = NULL; }
      else buf = nb;
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

int fl_test_wait_for(const char *path, const char *needle, double timeout_s) {
  double end = mono() + timeout_s;
  do {
    if (fl_test_count(path, needle) > 0) return 1;
    usleep(20000);
  } while (mono() < end);
  return 0;
}

char *fl_test_bin(const char *name) {
  char *p = malloc(4096);
  if (p) snprintf(p, 4096, "%s/%s", fl_test_bin_dir(), name);
  return p;
}

int fl_test_running(pid_t pid) {
  int st;
  return waitpid(pid, &st, WNOHANG) == 0;
}
