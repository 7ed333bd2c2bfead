/* Simulated attacks (attack.h). */
#include "attack.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static const struct {
  const char *name;
  fl_attack_mode mode;
  double def;
} modes[] = {
    {"signflip", FL_ATTACK_SIGNFLIP, 1}, {"scale", FL_ATTACK_SCALE, 10},
    {"noise", FL_ATTACK_NOISE, 1},       {"constant", FL_ATTACK_CONSTANT, 1},
    {"labelflip", FL_ATTACK_LABELFLIP, 0},
};

int fl_attack_parse(const char *spec, fl_attack *a, char *err, size_t errlen) {
  const char *colon = strchr(spec, ':');
  size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
  for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
    if (strlen(modes[i].name) != len || strncmp(spec, modes[i].name, len) != 0) continue;
    a->mode = modes[i].mode;
    a->param = modes[i].def;
    if (colon) {
      char *end;
      a->param = strtod(colon + 1, &end);
      if (end == colon + 1 || *end || !isfinite(a->param) || a->mode == FL_ATTACK_LABELFLIP)
        return fl_errf(err, errlen, FL_ECONFIG, "--attack %s: '%s' is not a number %s", modes[i].name,
                       colon + 1, a->mode == FL_ATTACK_LABELFLIP ? "(labelflip takes none)" : "");
    }
    return 0;
  }
  return fl_errf(err, errlen, FL_ECONFIG,
                 "--attack: unknown attack '%s' (signflip[:K], scale[:K], noise[:S], constant[:C], labelflip)",
                 spec);
}

int fl_attack_chosen(const char *spec, size_t p, size_t parts, uint64_t seed, int *yes, char *err,
                     size_t errlen) {
  *yes = 0;
  char *end;
  double f = strtod(spec, &end);
  if (strchr(spec, '.')) { /* a fraction ("0.2"); a bare number is a partition */
    if (*end || !(f >= 0 && f < 1))
      return fl_errf(err, errlen, FL_ECONFIG, "--attack-clients: a fraction must be from 0 to "
                     "below 1, got '%s'", spec);
    size_t k = (size_t)llround(f * (double)parts);
    uint32_t *perm = malloc(parts * sizeof *perm);
    if (!perm) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
    for (size_t i = 0; i < parts; i++) perm[i] = (uint32_t)i;
    fl_rng r;
    fl_rng_seed2(&r, seed, 0xa77ac);
    for (size_t i = 0; i < k; i++) { /* the first k of a seeded shuffle */
      size_t j = i + (size_t)fl_rng_below(&r, parts - i);
      uint32_t t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
      if (perm[i] == p) *yes = 1;
    }
    free(perm);
    return 0;
  }
  for (const char *s = spec; *s;) { /* a list of partitions */
    long v = strtol(s, &end, 10);
    if (end == s || v < 0 || (*end && *end != ','))
      return fl_errf(err, errlen, FL_ECONFIG,
                     "--attack-clients: expected a fraction below 1 or a list of partitions "
                     "(0,5,9), got '%s'", spec);
    if ((size_t)v == p) *yes = 1;
    s = *end ? end + 1 : end;
  }
  return 0;
}

void fl_attack_delta(const fl_attack *a, float *d, size_t n, fl_rng *rng) {
  float k = (float)a->param;
  switch (a->mode) {
  case FL_ATTACK_SIGNFLIP:
    for (size_t i = 0; i < n; i++) d[i] = -k * d[i];
    break;
  case FL_ATTACK_SCALE:
    for (size_t i = 0; i < n; i++) d[i] = k * d[i];
    break;
  case FL_ATTACK_NOISE:
    for (size_t i = 0; i < n; i++) d[i] = k * fl_rng_normal(rng);
    break;
  case FL_ATTACK_CONSTANT:
    for (size_t i = 0; i < n; i++) d[i] = k;
    break;
  default:
    break;
  }
}

int fl_attack_flip_labels(const fl_dataset *d, fl_dataset *out) {
  *out = *d;
  out->y = malloc((d->n ? d->n : 1) * sizeof *out->y);
  if (!out->y) return FL_ENOMEM;
  int c = d->num_classes > 1 ? d->num_classes : 2;
  for (size_t i = 0; i < d->n; i++) out->y[i] = (float)(c - 1) - d->y[i];
  return 0;
}
