/* Strategies (strategy.h): the spec parser, the lists of aggregators and optimizers,
 * their composition, and the optimizer's saved state. */
#include "strategy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"
#include "error.h"
#include "strategy_internal.h"

static const fl__agg_ops *const aggregators[] = {
    &fl__agg_fedavg, &fl__agg_normbound, &fl__agg_median, &fl__agg_trimmed, &fl__agg_krum, NULL,
};
static const fl__opt_ops *const optimizers[] = {
    &fl__opt_sgd, &fl__opt_fedavgm, &fl__opt_fedadagrad, &fl__opt_fedadam, &fl__opt_fedyogi, NULL,
};

struct fl_strategy {
  fl__agg agg;
  fl__opt opt;
  char spec[512];
};

/* ---- parsing ---- */

static const fl__param *find_param(const fl__param *ps, const char *key, size_t keylen,
                                   int *index) {
  for (int i = 0; ps && ps[i].key; i++)
    if (strlen(ps[i].key) == keylen && strncmp(ps[i].key, key, keylen) == 0) {
      *index = i;
      return &ps[i];
    }
  return NULL;
}

static void list_keys(const fl__param *ps, char *out, size_t len) {
  size_t used = 0;
  out[0] = 0;
  for (int i = 0; ps && ps[i].key && used < len; i++)
    used += (size_t)snprintf(out + used, len - used, "%s%s", i ? ", " : "", ps[i].key);
  if (!out[0]) snprintf(out, len, "none");
}

/* "name[:k=v,...]" (len bytes of s) against a table of parameters: fills values[] with
 * the given values and the defaults. */
static int parse_params(const char *what, const fl__param *ps, const char *s, size_t len,
                        double *values, int *given, char *err, size_t errlen) {
  for (int i = 0; i < FL__STRATEGY_MAX_PARAMS; i++) given[i] = 0;
  for (int i = 0; ps && ps[i].key; i++) values[i] = ps[i].def;
  size_t i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && s[end] != ',') end++;
    const char *eq = memchr(s + i, '=', end - i);
    if (!eq || eq == s + i) {
      return fl_errf(err, errlen, FL_ECONFIG, "strategy '%s': expected KEY=VALUE, got '%.*s'",
                     what, (int)(end - i), s + i);
    }
    int idx;
    const fl__param *p = find_param(ps, s + i, (size_t)(eq - (s + i)), &idx);
    if (!p) {
      char keys[256];
      list_keys(ps, keys, sizeof keys);
      return fl_errf(err, errlen, FL_ECONFIG, "strategy '%s' has no parameter '%.*s' (it takes: %s)",
                     what, (int)(eq - (s + i)), s + i, keys);
    }
    char num[64];
    size_t vlen = (size_t)(s + end - (eq + 1));
    if (vlen == 0 || vlen >= sizeof num)
      return fl_errf(err, errlen, FL_ECONFIG, "strategy '%s': %s needs a number", what, p->key);
    memcpy(num, eq + 1, vlen);
    num[vlen] = 0;
    char *stop;
    double v = strtod(num, &stop);
    if (*stop || !isfinite(v))
      return fl_errf(err, errlen, FL_ECONFIG, "strategy '%s': %s=%s is not a number", what,
                     p->key, num);
    if (v < p->lo || v > p->hi || (p->integer && v != floor(v)))
      return fl_errf(err, errlen, FL_ECONFIG, "strategy '%s': %s=%s is out of range (%s %g to %g)",
                     what, p->key, num, p->integer ? "a whole number from" : "from", p->lo, p->hi);
    if (given[idx])
      return fl_errf(err, errlen, FL_ECONFIG, "strategy '%s': %s given twice", what, p->key);
    given[idx] = 1;
    values[idx] = v;
    i = end + 1;
  }
  for (int k = 0; ps && ps[k].key; k++)
    if (isnan(values[k]))
      return fl_errf(err, errlen, FL_ECONFIG, "strategy '%s' needs %s=VALUE (%s)", what,
                     ps[k].key, ps[k].help);
  return 0;
}

/* Splits "name[:params]" into the name and the parameter text. */
static void split_name(const char *s, size_t len, size_t *name_len, const char **params,
                       size_t *params_len) {
  const char *colon = memchr(s, ':', len);
  *name_len = colon ? (size_t)(colon - s) : len;
  *params = colon ? colon + 1 : s + len;
  *params_len = colon ? len - *name_len - 1 : 0;
}

static const fl__agg_ops *find_agg(const char *name, size_t len) {
  for (int i = 0; aggregators[i]; i++)
    if (strlen(aggregators[i]->name) == len && strncmp(aggregators[i]->name, name, len) == 0)
      return aggregators[i];
  return NULL;
}

static const fl__opt_ops *find_opt(const char *name, size_t len) {
  for (int i = 0; optimizers[i]; i++)
    if (strlen(optimizers[i]->name) == len && strncmp(optimizers[i]->name, name, len) == 0)
      return optimizers[i];
  return NULL;
}

static void all_names(char *out, size_t len) {
  size_t used = 0;
  for (int i = 0; aggregators[i]; i++)
    used += (size_t)snprintf(out + used, len - used, "%s%s", i ? ", " : "", aggregators[i]->name);
  for (int i = 0; optimizers[i] && used < len; i++)
    used += (size_t)snprintf(out + used, len - used, ", %s", optimizers[i]->name);
}

static size_t canonical(char *out, size_t len, const char *name, const fl__param *ps,
                        const double *v) {
  size_t used = (size_t)snprintf(out, len, "%s", name);
  for (int i = 0; ps && ps[i].key && used < len; i++)
    used += (size_t)snprintf(out + used, len - used, "%c%s=%.15g", i ? ',' : ':', ps[i].key, v[i]);
  return used;
}

int fl_strategy_create(const char *spec, size_t n, double server_lr, fl_strategy **out,
                       char *err, size_t errlen) {
  int given[FL__STRATEGY_MAX_PARAMS];
  *out = NULL;
  if (!spec || !*spec) spec = "fedavg";
  const char *plus = strchr(spec, '+');
  size_t first_len = plus ? (size_t)(plus - spec) : strlen(spec);
  size_t nl, pl;
  const char *params;
  split_name(spec, first_len, &nl, &params, &pl);
  const fl__agg_ops *agg = find_agg(spec, nl);
  const fl__opt_ops *opt = NULL;
  const char *opt_spec = NULL;
  size_t opt_len = 0;
  if (agg) {
    if (plus) {
      opt_spec = plus + 1;
      opt_len = strlen(opt_spec);
    }
  } else if (!plus && find_opt(spec, nl)) { /* an optimizer alone: over the weighted mean */
    agg = &fl__agg_fedavg;
    opt_spec = spec;
    opt_len = first_len;
    params = spec + first_len;
    pl = 0;
  } else {
    char names[512];
    all_names(names, sizeof names);
    return fl_errf(err, errlen, FL_ECONFIG, "unknown strategy '%.*s' (known: %s)", (int)nl, spec,
                   names);
  }
  fl_strategy *s = calloc(1, sizeof *s);
  if (!s) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  s->agg.ops = agg;
  s->agg.n = n;
  char what[64];
  snprintf(what, sizeof what, "%s", agg->name);
  int rc = parse_params(what, agg->params, params, pl, s->agg.p, given, err, errlen);
  if (rc) goto fail;
  opt = &fl__opt_sgd;
  const char *oparams = "";
  size_t opl = 0;
  if (opt_spec) {
    size_t onl;
    split_name(opt_spec, opt_len, &onl, &oparams, &opl);
    opt = find_opt(opt_spec, onl);
    if (!opt) {
      char names[256] = "";
      size_t used = 0;
      for (int i = 0; optimizers[i]; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                 optimizers[i]->name);
      rc = fl_errf(err, errlen, FL_ECONFIG, "unknown server optimizer '%.*s' after '+' (known: %s)",
                   (int)onl, opt_spec, names);
      goto fail;
    }
  }
  s->opt.ops = opt;
  s->opt.n = n;
  snprintf(what, sizeof what, "%s", opt->name);
  rc = parse_params(what, opt->params, oparams, opl, s->opt.p, given, err, errlen);
  if (rc) goto fail;
  if (opt == &fl__opt_sgd && !given[0]) s->opt.p[0] = server_lr;
  rc = agg->init(&s->agg);
  if (rc) {
    fl_errf(err, errlen, rc, "strategy '%s': %s for a model of %zu parameters", agg->name,
            fl_strerror(rc), n);
    goto fail;
  }
  for (int i = 0; i < opt->moments; i++) {
    s->opt.m[i] = fl_alloc_big((n ? n : 1) * sizeof(float));
    if (!s->opt.m[i]) {
      rc = fl_errf(err, errlen, FL_ENOMEM, "server optimizer '%s': out of memory for its state",
                   opt->name);
      goto fail;
    }
  }
  if (opt->init) opt->init(&s->opt);
  size_t used = canonical(s->spec, sizeof s->spec, agg->name, agg->params, s->agg.p);
  if (used < sizeof s->spec) {
    s->spec[used++] = '+';
    s->spec[used] = 0;
    canonical(s->spec + used, sizeof s->spec - used, opt->name, opt->params, s->opt.p);
  }
  fl_strategy_begin(s);
  *out = s;
  return 0;
fail:
  fl_strategy_free(s);
  return rc;
}

void fl_strategy_free(fl_strategy *s) {
  if (!s) return;
  if (s->agg.ops && s->agg.ops->free) s->agg.ops->free(&s->agg);
  free(s->opt.m[0]);
  free(s->opt.m[1]);
  free(s);
}

const char *fl_strategy_spec(const fl_strategy *s) { return s->spec; }
int fl_strategy_needs_all(const fl_strategy *s) { return s->agg.ops->needs_all; }

double fl_strategy_model_sizes(const fl_strategy *s, size_t k) {
  return s->agg.ops->model_sizes(&s->agg, k) + s->opt.ops->moments;
}

size_t fl_strategy_min_updates(const fl_strategy *s) {
  return s->agg.ops->min_updates ? s->agg.ops->min_updates(&s->agg) : 1;
}

void fl_strategy_begin(fl_strategy *s) {
  s->agg.ops->begin(&s->agg); /* sees what was folded, to release it */
  s->agg.folded = 0;
  s->agg.weight = 0;
}

int fl_strategy_fold(fl_strategy *s, fl_update *u, size_t k, char *err, size_t errlen) {
  for (size_t i = 0; i < k; i++)
    if (!(u[i].weight > 0) || !isfinite(u[i].weight))
      return fl_errf(err, errlen, FL_EINVAL, "update from %s has weight %g", u[i].client,
                     u[i].weight);
  return s->agg.ops->fold(&s->agg, u, k, err, errlen);
}

size_t fl_strategy_folded(const fl_strategy *s) { return s->agg.folded; }
double fl_strategy_weight(const fl_strategy *s) { return s->agg.weight; }

int fl_strategy_finish(fl_strategy *s, float *global, double *delta_norm, char *err,
                       size_t errlen) {
  if (s->agg.folded == 0) return fl_errf(err, errlen, FL_ESTATE, "no update was folded");
  size_t need = fl_strategy_min_updates(s);
  if (s->agg.folded < need)
    return fl_errf(err, errlen, FL_ESTATE, "%s needs at least %zu updates, the round has %zu",
                   s->agg.ops->name, need, s->agg.folded);
  const float *delta;
  int rc = s->agg.ops->result(&s->agg, &delta, err, errlen);
  if (rc) return rc;
  double sq = 0;
  for (size_t i = 0; i < s->agg.n; i++) sq += (double)delta[i] * (double)delta[i];
  if (!isfinite(sq))
    return fl_errf(err, errlen, FL_ENONFINITE, "the %s aggregate is not finite", s->agg.ops->name);
  if (delta_norm) *delta_norm = sqrt(sq);
  if (s->opt.ops->step(&s->opt, global, delta, 0) != 0)
    return fl_errf(err, errlen, FL_ENONFINITE,
                   "the %s step would make the global model non-finite; not applied",
                   s->opt.ops->name);
  s->opt.ops->step(&s->opt, global, delta, 1);
  s->opt.t++;
  return 0;
}

/* ---- state ---- */

#define STATE_MAGIC "FLSTRAT1"

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/*   magic | u64 spec length | spec | u64 n | u64 steps | moments as float32, LE */
int fl_strategy_save(const fl_strategy *s, uint8_t **out, size_t *len) {
  size_t sl = strlen(s->spec), n = s->opt.n, mom = (size_t)s->opt.ops->moments;
  size_t total = 8 + 8 + sl + 8 + 8 + mom * n * 4;
  uint8_t *b = malloc(total), *p = b;
  if (!b) return FL_ENOMEM;
  memcpy(p, STATE_MAGIC, 8);
  put64(p + 8, sl);
  memcpy(p + 16, s->spec, sl);
  p += 16 + sl;
  put64(p, n);
  put64(p + 8, s->opt.t);
  p += 16;
  for (size_t m = 0; m < mom; m++)
    for (size_t i = 0; i < n; i++, p += 4) {
      uint32_t u;
      memcpy(&u, &s->opt.m[m][i], 4);
      p[0] = (uint8_t)u, p[1] = (uint8_t)(u >> 8), p[2] = (uint8_t)(u >> 16), p[3] = (uint8_t)(u >> 24);
    }
  *out = b;
  *len = total;
  return 0;
}

int fl_strategy_load(fl_strategy *s, const uint8_t *b, size_t len, char *err, size_t errlen) {
  if (len < 16 || memcmp(b, STATE_MAGIC, 8) != 0)
    return fl_errf(err, errlen, FL_EFORMAT, "strategy state: bad magic");
  uint64_t sl = get64(b + 8);
  if (sl > len - 16 || len - 16 - sl < 16)
    return fl_errf(err, errlen, FL_ETRUNC, "strategy state: truncated");
  const char *spec = (const char *)b + 16;
  if (sl != strlen(s->spec) || memcmp(spec, s->spec, sl) != 0)
    return fl_errf(err, errlen, FL_EMISMATCH,
                   "the checkpoint was made with strategy '%.*s', but this run's is '%s'",
                   (int)(sl < 200 ? sl : 200), spec, s->spec);
  const uint8_t *p = b + 16 + sl;
  uint64_t n = get64(p), t = get64(p + 8);
  p += 16;
  size_t mom = (size_t)s->opt.ops->moments;
  if (n != s->opt.n)
    return fl_errf(err, errlen, FL_EMISMATCH, "strategy state is for %llu parameters, the model has %zu",
                   (unsigned long long)n, s->opt.n);
  if ((size_t)(b + len - p) != mom * n * 4)
    return fl_errf(err, errlen, FL_EFORMAT, "strategy state: %zu bytes of moments, expected %zu",
                   (size_t)(b + len - p), mom * (size_t)n * 4);
  for (size_t m = 0; m < mom; m++)
    for (size_t i = 0; i < n; i++, p += 4) {
      uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
      memcpy(&s->opt.m[m][i], &u, 4);
    }
  s->opt.t = t;
  return 0;
}

/* ---- help ---- */

static void help_params(FILE *f, const fl__param *ps) {
  for (int i = 0; ps && ps[i].key; i++) {
    if (isnan(ps[i].def))
      fprintf(f, "        %-9s %s (required; %g to %g)\n", ps[i].key, ps[i].help, ps[i].lo, ps[i].hi);
    else
      fprintf(f, "        %-9s %s (default %g; %g to %g)\n", ps[i].key, ps[i].help, ps[i].def,
              ps[i].lo, ps[i].hi);
  }
}

void fl_strategy_help(FILE *f) {
  fprintf(f, "Strategies (--strategy AGGREGATOR[:key=value,...][+OPTIMIZER[:key=value,...]],\n"
             "or an optimizer alone over fedavg's weighted mean):\n  aggregators:\n");
  for (int i = 0; aggregators[i]; i++) {
    fprintf(f, "    %-11s %s%s\n", aggregators[i]->name, aggregators[i]->help,
            aggregators[i]->needs_all ? " [holds every update of the round: memory grows with "
                                        "the clients per round]" : "");
    help_params(f, aggregators[i]->params);
  }
  fprintf(f, "  server optimizers:\n");
  for (int i = 0; optimizers[i]; i++) {
    fprintf(f, "    %-11s %s\n", optimizers[i]->name, optimizers[i]->help);
    help_params(f, optimizers[i]->params);
  }
}

float *fl__agg_keep(fl_update *u, size_t n) {
  if (u->enc == FL_ENC_FLOAT32) {
    float *b = u->buf;
    u->buf = NULL;
    return b;
  }
  float *b = fl_alloc_big((n ? n : 1) * sizeof *b); /* encoded: a float copy of its own */
  if (b) fl_update_decode(u, b, n);
  return b;
}

void fl_update_decode(const fl_update *u, float *dst, size_t n) {
  if (u->enc == FL_ENC_FLOAT32) memcpy(dst, u->delta, n * sizeof *dst);
  else fl_records_decode(u->data, u->len, u->enc, n, dst);
}

double fl_update_norm(const fl_update *u, size_t n) {
  if (u->enc != FL_ENC_FLOAT32) return sqrt(fl_records_sumsq(u->data, u->len, u->enc, n));
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)u->delta[i] * (double)u->delta[i];
  return sqrt(s);
}
