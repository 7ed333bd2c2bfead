/* Table-driven configuration: one table of options serves command-line flags, INI files
 * (parsed with inih) and --help, so a setting has one name everywhere.
 *
 * A flag --round-timeout and an INI key round_timeout (or round-timeout) in the option's
 * section set the same field.  Flags override the file: call fl_options_init, then
 * fl_options_parse_args, which reads --config FILE first and applies the other flags
 * after it.  Every refused value gets a message naming the flag or the file and line. */
#ifndef FL_OPTIONS_H
#define FL_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

typedef enum {
  FL_OPTT_STR,    /* char * (malloc'd; NULL when the default is NULL) */
  FL_OPTT_INT,    /* int, range-checked */
  FL_OPTT_U64,    /* unsigned long long, range-checked */
  FL_OPTT_DOUBLE, /* double, range-checked, finite */
  FL_OPTT_BOOL,   /* int 0/1: a flag without value sets 1; "true/false/yes/no/on/off/1/0" */
  FL_OPTT_FLAG,   /* like BOOL but never takes a value on the command line */
  FL_OPTT_LOGLEVEL, /* char *, one of debug, info, warn, error, off */
  FL_OPTT_INT_AUTO, /* int like FL_OPTT_INT, or the word "auto": FL_OPT_AUTO */
} fl_opt_type;

#define FL_OPT_AUTO (-1) /* an FL_OPTT_INT_AUTO option set to "auto" */

typedef struct fl_option {
  const char *name;    /* "round-timeout" */
  const char *section; /* INI section, e.g. "round" */
  fl_opt_type type;
  size_t offset;       /* of the field in the config struct */
  const char *def;     /* default as text, or NULL */
  const char *arg;     /* placeholder in --help, e.g. "SECONDS" */
  const char *help;
  double min, max;     /* numeric range (ignored when min == max) */
} fl_option;

/* Sets every field to its default. */
int fl_options_init(const fl_option *opts, void *cfg);
/* Frees the strings the table owns in cfg. */
void fl_options_free(const fl_option *opts, void *cfg);

/* Parses argv (argv[0] is the program).  "--help"/"-h" returns 1 (caller prints help).
 * "--config FILE" (if config_ok) loads the INI file before the other flags are applied.
 * Positional arguments are refused.  0, 1 or FL_ECONFIG with a message in err. */
int fl_options_parse_args(const fl_option *opts, void *cfg, int argc, char **argv,
                          int config_ok, char *err, size_t errlen);
/* Loads an INI file: unknown sections or keys and bad values are errors. */
int fl_options_parse_ini(const fl_option *opts, void *cfg, const char *path, char *err,
                         size_t errlen);
/* Sets one option by name from text (the same checks as a flag). */
int fl_options_set(const fl_option *opts, void *cfg, const char *name, const char *value,
                   char *err, size_t errlen);
void fl_options_help(const fl_option *opts, FILE *f);

/* The start of every fl binary's main: --version, --config and flags, --help (usage,
 * then the option table), then the binary's own cross-field check.  Returns -1 when the
 * program should go on (cfg then holds the options; the caller frees it), else the exit
 * code: 0 after --help or --version, 2 after a refused option (message on stderr, cfg
 * already freed). */
int fl_options_cli(const char *prog, const fl_option *opts, void *cfg, int argc, char **argv,
                   void (*usage)(FILE *f),
                   int (*check)(const void *cfg, char *err, size_t errlen));

/* Heartbeats must come at least twice per idle timeout, or idle peers get dropped. */
int fl_options_check_heartbeat(double heartbeat, double idle_timeout, char *err, size_t errlen);

/* Splits "HOST:PORT" or "[V6ADDR]:PORT" (port 0-65535); 0 or FL_ECONFIG. */
int fl_split_host_port(const char *s, char *host, size_t hostlen, int *port);

#endif
