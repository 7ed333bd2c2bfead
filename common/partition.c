/* Partitioners for simulated federations (see fl_partition in dataset.h).
 *
 * Every scheme produces the same thing: a permutation of the sample indices in which
 * partition p is the contiguous run of count[p] entries after partitions 0..p-1.  That
 * permutation is the one idx allocation the subsets point into. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "dataset_internal.h"
#include "error.h"
#include "rng.h"

enum kind { IID, SHARDS, DIRICHLET, QUANTITY };

typedef struct plan {
  const fl_dataset *d;
  size_t parts;
  fl_rng rng;
  uint32_t *perm;   /* [n] the output order */
  size_t *count;    /* [parts] */
  char *err;
  size_t errlen;
} plan;

static int parse_scheme(const char *s, enum kind *k, size_t *shards, double *alpha, char *err,
                        size_t errlen) {
  const char *arg = NULL;
  if (s && strcmp(s, "iid") == 0) {
    *k = IID;
    return 0;
  }
  if (s && strncmp(s, "shards:", 7) == 0) *k = SHARDS, arg = s + 7;
  else if (s && strncmp(s, "dirichlet:", 10) == 0) *k = DIRICHLET, arg = s + 10;
  else if (s && strncmp(s, "quantity:", 9) == 0) *k = QUANTITY, arg = s + 9;
  else
    return fl_errf(err, errlen, FL_EINVAL,
                           "unknown partition scheme '%s' (expected iid, shards:S, "
                           "dirichlet:ALPHA or quantity:ALPHA)", s ? s : "(null)");
  char *end;
  errno = 0;
  if (*k == SHARDS) {
    unsigned long long v = strtoull(arg, &end, 10);
    if (arg[0] < '0' || arg[0] > '9' || *end || errno || v == 0 || v > UINT32_MAX)
      return fl_errf(err, errlen, FL_EINVAL,
                             "partition scheme '%s': S must be a whole number of shards "
                             "per partition, 1 or more", s);
    *shards = (size_t)v;
    return 0;
  }
  *alpha = strtod(arg, &end);
  if (!*arg || *end || errno || !isfinite(*alpha) || !(*alpha > 0))
    return fl_errf(err, errlen, FL_EINVAL,
                           "partition scheme '%s': ALPHA must be a number > 0", s);
  return 0;
}

static void identity(uint32_t *a, size_t n) {
  for (size_t i = 0; i < n; i++) a[i] = (uint32_t)i;
}

/* Splits total into counts proportional to w by rounding the running sum, which keeps
 * the sum exact without sorting remainders. */
static void apportion(const double *w, size_t k, size_t total, size_t *cnt) {
  double sum = 0, acc = 0;
  for (size_t i = 0; i < k; i++) sum += w[i];
  size_t prev = 0;
  for (size_t i = 0; i < k; i++) {
    acc += w[i];
    size_t cum = i + 1 == k ? total : (size_t)floor(acc / sum * (double)total + 0.5);
    if (cum > total) cum = total;
    if (cum < prev) cum = prev;
    cnt[i] = cum - prev;
    prev = cum;
  }
}

/* Dirichlet(alpha) weights.  With a tiny alpha every Gamma draw can underflow to 0; the
 * limit of that distribution is all mass on one partition, so that is what we give.
 * With a huge alpha the sum can overflow; that limit is equal shares. */
static void dirichlet(fl_rng *r, double alpha, double *w, size_t k) {
  double sum = 0;
  for (size_t i = 0; i < k; i++) sum += w[i] = fl_rng_gamma(r, alpha);
  if (sum > 0 && isfinite(sum)) return;
  for (size_t i = 0; i < k; i++) w[i] = sum > 0 ? 1 : 0;
  if (sum == 0) w[fl_rng_below(r, k)] = 1;
}

static size_t largest(const size_t *a, size_t k) {
  size_t m = 0;
  for (size_t i = 1; i < k; i++)
    if (a[i] > a[m]) m = i;
  return m;
}

static int split_iid(plan *p) {
  size_t n = p->d->n;
  identity(p->perm, n);
  fl_rng_shuffle_u32(&p->rng, p->perm, n);
  for (size_t i = 0; i < p->parts; i++) p->count[i] = n / p->parts + (i < n % p->parts);
  return 0;
}

typedef struct keyed { float y; uint32_t i; } keyed;

static int by_label(const void *a, const void *b) {
  const keyed *x = a, *y = b;
  if (x->y != y->y) return x->y < y->y ? -1 : 1;
  return x->i < y->i ? -1 : x->i > y->i;
}

static int split_shards(plan *p, size_t per_part) {
  size_t n = p->d->n, parts = p->parts;
  if (per_part > n / parts)
    return fl_errf(p->err, p->errlen, FL_EINVAL,
                           "shards:%zu with %zu partitions needs %zu shards of at least one "
                           "sample, but the dataset has %zu samples", per_part, parts,
                           parts * per_part, n);
  size_t ns = parts * per_part;
  keyed *sorted = malloc(n * sizeof *sorted);
  uint32_t *order = malloc(ns * sizeof *order);
  if (!sorted || !order) {
    free(sorted);
    free(order);
    return fl_errf(p->err, p->errlen, FL_ENOMEM, "partition: out of memory");
  }
  for (size_t i = 0; i < n; i++) sorted[i] = (keyed){p->d->y[i], (uint32_t)i};
  qsort(sorted, n, sizeof *sorted, by_label);
  identity(order, ns);
  fl_rng_shuffle_u32(&p->rng, order, ns);
  size_t base = n / ns, extra = n % ns, out = 0;
  for (size_t q = 0; q < parts; q++) {
    p->count[q] = 0;
    for (size_t s = 0; s < per_part; s++) {
      size_t k = order[q * per_part + s];
      size_t start = k * base + (k < extra ? k : extra), len = base + (k < extra);
      for (size_t i = 0; i < len; i++) p->perm[out++] = sorted[start + i].i;
      p->count[q] += len;
    }
  }
  free(sorted);
  free(order);
  return 0;
}

/* Gives each empty partition one sample of the largest one; cnt is [rows][parts] and
 * the sample comes from that partition's largest row. */
static void fill_empty(size_t *cnt, size_t rows, size_t parts, size_t *total) {
  for (size_t q = 0; q < parts; q++) {
    if (total[q]) continue;
    size_t big = largest(total, parts), row = 0;
    for (size_t r = 1; r < rows; r++)
      if (cnt[r * parts + big] > cnt[row * parts + big]) row = r;
    cnt[row * parts + big]--;
    cnt[row * parts + q]++;
    total[big]--;
    total[q]++;
  }
}

static int split_dirichlet(plan *p, double alpha) {
  const fl_dataset *d = p->d;
  size_t n = d->n, parts = p->parts, k = d->num_classes > 0 ? (size_t)d->num_classes : 0;
  if (k == 0)
    return fl_errf(p->err, p->errlen, FL_EINVAL,
                           "dirichlet partitioning needs class labels, but the dataset has a "
                           "regression target");
  for (size_t i = 0; i < n; i++)
    if (!(d->y[i] >= 0 && d->y[i] < (float)k && d->y[i] == floorf(d->y[i])))
      return fl_errf(p->err, p->errlen, FL_ERANGE,
                             "dirichlet partitioning: sample %zu has label %g, not a class "
                             "0..%zu", i, (double)d->y[i], k - 1);
  size_t *cnt = calloc(k * parts, sizeof *cnt), *start = calloc(k + 1, sizeof *start);
  size_t *total = calloc(parts, sizeof *total);
  uint32_t *bycls = malloc(n * sizeof *bycls);
  size_t *fill = calloc(k, sizeof *fill);
  double *w = malloc(parts * sizeof *w);
  int rc = 0;
  if (!cnt || !start || !total || !bycls || !fill || !w) {
    rc = fl_errf(p->err, p->errlen, FL_ENOMEM, "partition: out of memory");
    goto done;
  }
  /* Counting sort by class, then each class in random order. */
  for (size_t i = 0; i < n; i++) start[(size_t)d->y[i] + 1]++;
  for (size_t c = 0; c < k; c++) start[c + 1] += start[c];
  for (size_t i = 0; i < n; i++) {
    size_t c = (size_t)d->y[i];
    bycls[start[c] + fill[c]++] = (uint32_t)i;
  }
  for (size_t c = 0; c < k; c++) {
    fl_rng_shuffle_u32(&p->rng, bycls + start[c], start[c + 1] - start[c]);
    dirichlet(&p->rng, alpha, w, parts);
    apportion(w, parts, start[c + 1] - start[c], cnt + c * parts);
    for (size_t q = 0; q < parts; q++) total[q] += cnt[c * parts + q];
  }
  fill_empty(cnt, k, parts, total);
  size_t out = 0;
  for (size_t q = 0; q < parts; q++) {
    for (size_t c = 0; c < k; c++) {
      size_t m = cnt[c * parts + q];
      memcpy(p->perm + out, bycls + start[c], m * sizeof *bycls);
      start[c] += m;
      out += m;
    }
    p->count[q] = total[q];
  }
done:
  free(cnt);
  free(start);
  free(total);
  free(bycls);
  free(fill);
  free(w);
  return rc;
}

static int split_quantity(plan *p, double alpha) {
  size_t n = p->d->n, parts = p->parts;
  double *w = malloc(parts * sizeof *w);
  if (!w) return fl_errf(p->err, p->errlen, FL_ENOMEM, "partition: out of memory");
  dirichlet(&p->rng, alpha, w, parts);
  apportion(w, parts, n, p->count);
  free(w);
  for (size_t q = 0; q < parts; q++) {
    if (p->count[q]) continue;
    p->count[largest(p->count, parts)]--;
    p->count[q]++;
  }
  identity(p->perm, n);
  fl_rng_shuffle_u32(&p->rng, p->perm, n);
  return 0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int fl_partition(const fl_dataset *d, const char *scheme, size_t parts, uint64_t seed,
                 fl_subset **out, char *err, size_t errlen) {
  *out = NULL;
  enum kind kind = IID;
  size_t shards = 0;
  double alpha = 0;
  int rc = parse_scheme(scheme, &kind, &shards, &alpha, err, errlen);
  if (rc) return rc;
  size_t n = d->n;
  if (parts == 0)
    return fl_errf(err, errlen, FL_EINVAL, "partition '%s': zero partitions", scheme);
  if (parts > n)
    return fl_errf(err, errlen, FL_EINVAL,
                           "partition '%s': %zu partitions of %zu samples would leave some "
                           "empty", scheme, parts, n);
  if (n > UINT32_MAX)
    return fl_errf(err, errlen, FL_EINVAL, "partition: %zu samples is too many", n);

  /* One block: the subsets, then every index, so fl_partition_free is one free(). */
  fl_subset *subs = malloc(parts * sizeof *subs + n * sizeof(uint32_t));
  plan p = {.d = d, .parts = parts, .err = err, .errlen = errlen};
  p.count = malloc(parts * sizeof *p.count);
  if (!subs || !p.count) {
    rc = fl_errf(err, errlen, FL_ENOMEM, "partition: out of memory");
    goto fail;
  }
  p.perm = (uint32_t *)(subs + parts);
  fl_rng_seed(&p.rng, seed);
  switch (kind) {
  case IID:       rc = split_iid(&p); break;
  case SHARDS:    rc = split_shards(&p, shards); break;
  case DIRICHLET: rc = split_dirichlet(&p, alpha); break;
  case QUANTITY:  rc = split_quantity(&p, alpha); break;
  }
  if (rc) goto fail;
  size_t at = 0;
  for (size_t q = 0; q < parts; q++) {
    qsort(p.perm + at, p.count[q], sizeof *p.perm, cmp_u32);
    subs[q] = (fl_subset){.data = d, .idx = p.perm + at, .n = p.count[q]};
    at += p.count[q];
  }
  free(p.count);
  *out = subs;
  return 0;
fail:
  free(p.count);
  free(subs);
  return rc;
}

void fl_partition_free(fl_subset *parts) { free(parts); }
