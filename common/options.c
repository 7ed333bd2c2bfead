/* Table-driven flags, INI files and --help (see options.h). */
#include "options.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "log.h"
#include "version.h"

#define FIELD(cfg, o, type) ((type *)((char *)(cfg) + (o)->offset))

/* Compares option names treating '-' and '_' alike. */
static int name_eq(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
    if (x != y) return 0;
  }
  return *a == *b;
}

static const fl_option *find(const fl_option *opts, const char *name) {
  for (const fl_option *o = opts; o->name; o++)
    if (name_eq(o->name, name)) return o;
  return NULL;
}

static int parse_bool(const char *v, int *out) {
  static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(v, yes[i]) == 0) { *out = 1; return 0; }
    if (strcasecmp(v, no[i]) == 0) { *out = 0; return 0; }
  }
  return -1;
}

static int set_value(const fl_option *o, void *cfg, const char *v, char *err, size_t errlen) {
  char *end;
  int ranged = o->min != o->max;
  switch (o->type) {
  case FL_OPTT_LOGLEVEL:
    if (fl_log_level_parse(v) < 0) {
      snprintf(err, errlen, "%s: unknown level '%s' (debug, info, warn, error, off)", o->name, v);
      return FL_ECONFIG;
    }
    /* fall through */
  case FL_OPTT_STR: {
    char **p = FIELD(cfg, o, char *);
    char *copy = v ? strdup(v) : NULL;
    if (v && !copy) return FL_ENOMEM;
    free(*p);
    *p = copy;
    return 0;
  }
  case FL_OPTT_BOOL:
  case FL_OPTT_FLAG:
    if (parse_bool(v, FIELD(cfg, o, int)) != 0) {
      snprintf(err, errlen, "%s: expected true or false, got '%s'", o->name, v);
      return FL_ECONFIG;
    }
    return 0;
  case FL_OPTT_INT_AUTO:
    if (strcasecmp(v, "auto") == 0) {
      *FIELD(cfg, o, int) = FL_OPT_AUTO;
      return 0;
    }
    /* fall through */
  case FL_OPTT_INT:
  case FL_OPTT_U64: {
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || (o->type == FL_OPTT_U64 && x < 0) ||
        (o->type != FL_OPTT_U64 && (x < -2147483647LL || x > 2147483647LL))) {
      snprintf(err, errlen, "%s: expected a whole number%s, got '%s'", o->name,
               o->type == FL_OPTT_INT_AUTO ? " or auto" : "", v);
      return FL_ECONFIG;
    }
    if (ranged && (x < o->min || x > o->max)) {
      snprintf(err, errlen, "%s: %lld is out of range [%.0f, %.0f]", o->name, x, o->min, o->max);
      return FL_ECONFIG;
    }
    if (o->type != FL_OPTT_U64) *FIELD(cfg, o, int) = (int)x;
    else *FIELD(cfg, o, unsigned long long) = (unsigned long long)x;
    return 0;
  }
  case FL_OPTT_DOUBLE: {
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) {
      snprintf(err, errlen, "%s: expected a number, got '%s'", o->name, v);
      return FL_ECONFIG;
    }
    if (ranged && (x < o->min || x > o->max)) {
      snprintf(err, errlen, "%s: %g is out of range [%g, %g]", o->name, x, o->min, o->max);
      return FL_ECONFIG;
    }
    *FIELD(cfg, o, double) = x;
    return 0;
  }
  }
  return FL_EINVAL;
}

int fl_options_init(const fl_option *opts, void *cfg) {
  char err[256];
  for (const fl_option *o = opts; o->name; o++) {
    if (o->type == FL_OPTT_STR || o->type == FL_OPTT_LOGLEVEL) *FIELD(cfg, o, char *) = NULL;
    if (o->def && set_value(o, cfg, o->def, err, sizeof err) != 0) return FL_EINVAL;
  }
  return 0;
}

void fl_options_free(const fl_option *opts, void *cfg) {
  for (const fl_option *o = opts; o->name; o++)
    if (o->type == FL_OPTT_STR || o->type == FL_OPTT_LOGLEVEL) {
      free(*FIELD(cfg, o, char *));
      *FIELD(cfg, o, char *) = NULL;
    }
}

int fl_options_set(const fl_option *opts, void *cfg, const char *name, const char *value,
                   char *err, size_t errlen) {
  const fl_option *o = find(opts, name);
  if (!o) {
    snprintf(err, errlen, "unknown option '%s'", name);
    return FL_ECONFIG;
  }
  return set_value(o, cfg, value, err, errlen);
}

typedef struct ini_ctx {
  const fl_option *opts;
  void *cfg;
  const char *path;
  char *err;
  size_t errlen;
  int rc;
} ini_ctx;

/* inih reports the line of the first key a handler refused as ini_parse_file's result. */
static int on_ini_key(void *user, const char *section, const char *name, const char *value) {
  ini_ctx *x = user;
  const fl_option *o = find(x->opts, name);
  char why[512];
  if (!o || (section[0] && o->section && strcmp(section, o->section) != 0)) {
    if (o) snprintf(why, sizeof why, "'%s' belongs in section [%s], not [%s]", name, o->section, section);
    else snprintf(why, sizeof why, "unknown key '%s'", name);
    if (!x->rc) snprintf(x->err, x->errlen, "%s", why);
    x->rc = FL_ECONFIG;
    return 0;
  }
  if (set_value(o, x->cfg, value, why, sizeof why) != 0) {
    if (!x->rc) snprintf(x->err, x->errlen, "%s", why);
    x->rc = FL_ECONFIG;
    return 0;
  }
  return 1;
}

int fl_options_parse_ini(const fl_option *opts, void *cfg, const char *path, char *err,
                         size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "%s: cannot open config file: %s", path, strerror(errno));
    return FL_ECONFIG;
  }
  ini_ctx x = {opts, cfg, path, err, errlen, 0};
  char why[512] = "";
  x.err = why;
  x.errlen = sizeof why;
  int line = ini_parse_file(f, on_ini_key, &x);
  fclose(f);
  if (x.rc) {
    snprintf(err, errlen, "%s:%d: %s", path, line, why);
    return x.rc;
  }
  if (line != 0) {
    snprintf(err, errlen, "%s:%d: syntax error", path, line);
    return FL_ECONFIG;
  }
  return 0;
}

/* Splits "--name=value" / "--name value"; returns the option or NULL (err set). */
static const fl_option *flag_at(const fl_option *opts, int argc, char **argv, int *i,
                                const char **value, char *name, size_t namelen, char *err,
                                size_t errlen) {
  const char *a = argv[*i];
  if (strncmp(a, "--", 2) != 0 || !a[2]) {
    snprintf(err, errlen, "unexpected argument '%s' (options start with --)", a);
    return NULL;
  }
  const char *eq = strchr(a + 2, '=');
  size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
  if (n >= namelen) n = namelen - 1;
  memcpy(name, a + 2, n);
  name[n] = 0;
  const fl_option *o = find(opts, name);
  if (!o) {
    snprintf(err, errlen, "unknown option '--%s' (see --help)", name);
    return NULL;
  }
  if (eq) {
    *value = eq + 1;
  } else if (o->type == FL_OPTT_FLAG || o->type == FL_OPTT_BOOL) {
    *value = "1";
  } else if (*i + 1 < argc) {
    *value = argv[++*i];
  } else {
    snprintf(err, errlen, "option '--%s' needs a value (%s)", name, o->arg ? o->arg : "VALUE");
    return NULL;
  }
  return o;
}

int fl_options_parse_args(const fl_option *opts, void *cfg, int argc, char **argv,
                          int config_ok, char *err, size_t errlen) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    if (config_ok && (strcmp(argv[i], "--config") == 0 || strncmp(argv[i], "--config=", 9) == 0)) {
      const char *path = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : NULL);
      if (!path || !*path) {
        snprintf(err, errlen, "option '--config' needs a value (FILE)");
        return FL_ECONFIG;
      }
      int rc = fl_options_parse_ini(opts, cfg, path, err, errlen);
      if (rc) return rc;
    }
  }
  for (int i = 1; i < argc; i++) {
    if (config_ok && strcmp(argv[i], "--config") == 0) { i++; continue; }
    if (config_ok && strncmp(argv[i], "--config=", 9) == 0) continue;
    char name[64], why[512];
    const char *value = NULL;
    const fl_option *o = flag_at(opts, argc, argv, &i, &value, name, sizeof name, err, errlen);
    if (!o) return FL_ECONFIG;
    if (set_value(o, cfg, value, why, sizeof why) != 0) {
      snprintf(err, errlen, "--%s", why);
      return FL_ECONFIG;
    }
  }
  return 0;
}

void fl_options_help(const fl_option *opts, FILE *f) {
  const char *section = NULL;
  for (const fl_option *o = opts; o->name; o++) {
    if (o->section && (!section || strcmp(section, o->section) != 0)) {
      section = o->section;
      fprintf(f, "\n[%s]\n", section);
    }
    char left[64];
    snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
    fprintf(f, "  %-28s %s", left, o->help);
    if (o->def && o->type != FL_OPTT_FLAG) fprintf(f, " (default %s)", o->def);
    fputc('\n', f);
  }
}

int fl_split_host_port(const char *s, char *host, size_t hostlen, int *port) {
  const char *colon = strrchr(s, ':');
  if (!colon) return FL_ECONFIG;
  const char *h = s, *he = colon;
  if (*h == '[' && he > h && he[-1] == ']') { /* [::1]:7700 */
    h++;
    he--;
  }
  size_t n = (size_t)(he - h);
  if (n == 0 || n >= hostlen) return FL_ECONFIG;
  memcpy(host, h, n);
  host[n] = 0;
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || p < 0 || p > 65535) return FL_ECONFIG;
  *port = (int)p;
  return 0;
}

int fl_options_check_heartbeat(double heartbeat, double idle_timeout, char *err, size_t errlen) {
  if (heartbeat * 2 <= idle_timeout) return 0;
  return fl_errf(err, errlen, FL_ECONFIG,
                 "--idle-timeout (%g s) must be at least twice --heartbeat (%g s)", idle_timeout,
                 heartbeat);
}

int fl_options_cli(const char *prog, const fl_option *opts, void *cfg, int argc, char **argv,
                   void (*usage)(FILE *f),
                   int (*check)(const void *cfg, char *err, size_t errlen)) {
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--version") == 0) {
      printf("%s %s\n", prog, FL_VERSION);
      return 0;
    }
  char err[1024] = "";
  fl_options_init(opts, cfg);
  int rc = fl_options_parse_args(opts, cfg, argc, argv, 1, err, sizeof err);
  if (rc == 1) {
    usage(stdout);
    fl_options_help(opts, stdout);
    fl_options_free(opts, cfg);
    return 0;
  }
  if (rc == 0) rc = check(cfg, err, sizeof err);
  if (rc == 0) return -1;
  fprintf(stderr, "%s: %s\n", prog, err);
  fl_options_free(opts, cfg);
  return 2;
}
