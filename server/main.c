/* fl-server: the aggregation daemon.  Flags and an INI file (--config) configure it;
 * it logs to stderr with levels and exits 0 once the configured rounds are done. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "conn.h"
#include "error.h"
#include "log.h"
#include "server.h"
#include "version.h"

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
          "  --version                    print the version\n");
  fl_options_help(server_options, f);
}

int main(int argc, char **argv) {
  server_config cfg;
  char err[1024] = "";
  signal(SIGPIPE, SIG_IGN);
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--version") == 0) {
      printf("fl-server %s\n", FL_VERSION);
      return 0;
    }
  fl_options_init(server_options, &cfg);
  int rc = fl_options_parse_args(server_options, &cfg, argc, argv, 1, err, sizeof err);
  if (rc == 1) {
    usage(stdout);
    fl_options_free(server_options, &cfg);
    return 0;
  }
  if (rc == 0) rc = server_config_check(&cfg, err, sizeof err);
  if (rc) {
    fprintf(stderr, "fl-server: %s\n", err);
    fl_options_free(server_options, &cfg);
    return 2;
  }
  fl_log_set_level(fl_log_level_parse(cfg.log_level));
  fl_debug("server", "open-file limit %ld", fl_conn_raise_fd_limit());
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
