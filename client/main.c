/* fl-client: trains on local data for an fl-server, as one client or as many virtual
 * clients (simulation).  Flags or an INI file (--config) configure it. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "blaskernels.h"
#include "client.h"
#include "config.h"
#include "error.h"
#include "launch.h"
#include "log.h"

/* A simulation holds a descriptor per virtual client, and the usual soft limit is 1024:
 * raises it to the hard limit.  The limit now in force, or -1. */
static long raise_fd_limit(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return -1;
  if (r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &r) != 0 && getrlimit(RLIMIT_NOFILE, &r) != 0) return -1;
  }
  return r.rlim_cur == RLIM_INFINITY ? (long)1 << 30 : (long)r.rlim_cur;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: fl-client --data DATA [--server HOST:PORT] [OPTION...]\n"
          "\n"
          "Joins an fl-server over mutually authenticated TLS and trains the global model\n"
          "on local data each round it is selected for, sending back only the weight delta.\n"
          "With --clients N it runs N virtual clients (own connection, certificate and data\n"
          "partition each) to simulate a federation on one machine.  Every option can be\n"
          "given as a flag or as a key in the INI section shown (flags override the file).\n"
          "\n"
          "  --config FILE                INI file with any of the options below\n"
          "  --help                       this text\n"
          "  --version                    print the version\n");
}

static int check(const void *cfg, char *err, size_t errlen) {
  return client_config_check(cfg, err, errlen);
}

static const char *env(const char *name, void *ctx) {
  (void)ctx;
  return getenv(name);
}

int main(int argc, char **argv) {
  fl_blas_pick_kernels(argv);
  client_config cfg;
  char err[1024] = "";
  signal(SIGPIPE, SIG_IGN);
  int rc = fl_options_cli("fl-client", client_options, &cfg, argc, argv, usage, check);
  if (rc >= 0) return rc;
  fl_log_set_level(fl_log_level_parse(cfg.log_level));
  if (launch_resolve(&cfg, env, NULL, err, sizeof err) != 0 ||
      client_config_check(&cfg, err, sizeof err) != 0) {
    fl_error("client", "%s", err);
    fl_options_free(client_options, &cfg);
    return 2;
  }
  long fds = raise_fd_limit();
  if (fds >= 0 && fds < (long)cfg.clients + 64)
    fl_warn("client", "open-file limit %ld is too low for %d clients (raise it with ulimit -n)",
            fds, cfg.clients);
  app *a;
  rc = app_create(&cfg, &a, err, sizeof err);
  if (rc) {
    fl_error("client", "%s", err);
    fl_options_free(client_options, &cfg);
    return 1;
  }
  rc = app_run(a);
  app_free(a);
  fl_options_free(client_options, &cfg);
  return rc ? 1 : 0;
}
