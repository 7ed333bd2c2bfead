/* fl-server: the aggregation daemon.  Flags and an INI file (--config) configure it;
 * it logs to stderr with levels and exits 0 once the configured rounds are done. */
#include <signal.h>
#include <stdio.h>

#include "blaskernels.h"
#include "config.h"
#include "conn.h"
#include "error.h"
#include "log.h"
#include "server.h"
#include "strategy.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: fl-server [--config FILE] [OPTION...]\n"
          "\n"
          "Runs federated averaging rounds over mutually authenticated TLS: waits for\n"
          "clients, sends the global model to the clients selected for a round, folds\n"
          "their weight deltas in as they arrive, evaluates, and writes the final model.\n"
          "Every option can be given as a flag or as a key in the INI section shown\n"
          "(flags override the file), e.g.\n"
          "\n"
          "  [round]\n"
          "  rounds = 20\n"
          "  clients_per_round = 10\n"
          "\n"
          "  --config FILE                INI file with any of the options below\n"
          "  --help                       this text\n"
          "  --version                    print the version\n"
          "\n");
  fl_strategy_help(f);
  fprintf(f, "\n");
}

static int check(const void *cfg, char *err, size_t errlen) {
  return server_config_check(cfg, err, errlen);
}

int main(int argc, char **argv) {
  fl_blas_pick_kernels(argv);
  server_config cfg;
  char err[1024] = "";
  signal(SIGPIPE, SIG_IGN);
  int rc = fl_options_cli("fl-server", server_options, &cfg, argc, argv, usage, check);
  if (rc >= 0) return rc;
  fl_log_set_level(fl_log_level_parse(cfg.log_level));
  fl_debug("server", "open-file limit %ld; OpenBLAS's %s kernels", fl_conn_raise_fd_limit(),
           fl_blas_kernels());
  server *s;
  rc = server_create(&cfg, &s, err, sizeof err);
  if (rc) {
    fl_error("server", "%s", err);
    fl_options_free(server_options, &cfg);
    return 1;
  }
  rc = server_run(s);
  server_free(s);
  fl_options_free(server_options, &cfg);
  return rc ? 1 : 0;
}
