/* Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
 * Byzantine Tolerant Gradient Descent"): with at most f Byzantine clients among k, each
 * delta is scored by the sum of its squared distances to its k - f - 2 nearest others;
 * the m best-scored deltas are averaged, unweighted (m = 1 is Krum).  Needs k >= 2f + 3.
 *
 * The k(k-1)/2 distances are the cost: one pass over all k deltas per block of
 * coordinates, each block's partial sums accumulated in double.  Like the median, it
 * keeps the update buffers (k model sizes) and writes its result over the first. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "strategy_internal.h"

typedef struct krum {
  float **kept;
  size_t cap;
} krum;

static int krum_init(fl__agg *a) {
  krum *k = calloc(1, sizeof *k);
  if (!k) return FL_ENOMEM;
  a->impl = k;
  return 0;
}

static void drop_all(fl__agg *a) {
  krum *k = a->impl;
  for (size_t i = 0; i < a->folded; i++) free(k->kept[i]);
}

static void krum_begin(fl__agg *a) { drop_all(a); }

static int krum_fold(fl__agg *a, fl_update *u, size_t n, char *err, size_t errlen) {
  krum *k = a->impl;
  if (a->folded + n > k->cap) {
    size_t cap = k->cap ? k->cap * 2 : 16;
    while (cap < a->folded + n) cap *= 2;
    float **nk = realloc(k->kept, cap * sizeof *nk);
    if (!nk) return fl_errf(err, errlen, FL_ENOMEM, "out of memory keeping %zu updates", cap);
    k->kept = nk;
    k->cap = cap;
  }
  for (size_t i = 0; i < n; i++) {
    float *kept = fl__agg_keep(&u[i], a->n);
    if (!kept) return fl_errf(err, errlen, FL_ENOMEM, "out of memory keeping an update");
    k->kept[a->folded++] = kept;
    a->weight += u[i].weight;
  }
  return 0;
}

static int by_value(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

#define BLOCK 4096 /* coordinates per pass over the pairs: the k blocks stay in cache */
#define LANES 16   /* partial sums of a distance, one vector of them with AVX-512 */

/* |p - q|^2 over w coordinates: LANES running float sums, coordinate c into sum c mod
 * LANES, then the sums and the tail in double in a fixed order.  The lanes are written
 * out, so every clone (AVX-512, AVX2, SSE2) computes the same bits; a single running sum
 * would be a chain of dependent additions the compiler may not reorder. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static double sq_dist(const float *restrict p, const float *restrict q, size_t w) {
  float s[LANES] = {0};
  size_t c = 0;
  for (; c + LANES <= w; c += LANES)
    for (int l = 0; l < LANES; l++) {
      float t = p[c + l] - q[c + l];
      s[l] += t * t;
    }
  double sum = 0;
  for (int l = 0; l < LANES; l++) sum += s[l];
  for (; c < w; c++) {
    double t = (double)p[c] - q[c];
    sum += t * t;
  }
  return sum;
}

/* d[i*k + j] = |delta_i - delta_j|^2. */
static void distances(float *const *x, size_t k, size_t n, double *d) {
  memset(d, 0, k * k * sizeof *d);
  for (size_t b = 0; b < n; b += BLOCK) {
    size_t w = n - b < BLOCK ? n - b : BLOCK;
    for (size_t i = 0; i < k; i++)
      for (size_t j = i + 1; j < k; j++) d[i * k + j] += sq_dist(x[i] + b, x[j] + b, w);
  }
  for (size_t i = 0; i < k; i++)
    for (size_t j = 0; j < i; j++) d[i * k + j] = d[j * k + i];
}

static int krum_result(fl__agg *a, const float **delta, char *err, size_t errlen) {
  krum *kr = a->impl;
  size_t k = a->folded, f = (size_t)a->p[0], m = (size_t)a->p[1], n = a->n;
  if (k < 2 * f + 3)
    return fl_errf(err, errlen, FL_ESTATE, "krum with f=%zu needs at least %zu updates, the round has %zu",
                   f, 2 * f + 3, k);
  if (m > k - f) m = k - f;
  double *d = malloc(k * k * sizeof *d), *row = malloc(k * sizeof *row);
  double *score = malloc(k * sizeof *score);
  size_t *best = malloc(k * sizeof *best);
  if (!d || !row || !score || !best) {
    free(d), free(row), free(score), free(best);
    return fl_errf(err, errlen, FL_ENOMEM, "out of memory for %zu x %zu distances", k, k);
  }
  distances(kr->kept, k, n, d);
  size_t near = k - f - 2;
  for (size_t i = 0; i < k; i++) {
    size_t r = 0;
    for (size_t j = 0; j < k; j++)
      if (j != i) row[r++] = d[i * k + j];
    qsort(row, r, sizeof *row, by_value);
    double s = 0;
    for (size_t j = 0; j < near; j++) s += row[j];
    score[i] = s;
  }
  /* The m lowest scores, ties to the earlier update. */
  for (size_t i = 0; i < k; i++) best[i] = i;
  for (size_t i = 0; i < m; i++)
    for (size_t j = i + 1; j < k; j++)
      if (score[best[j]] < score[best[i]] ||
          (score[best[j]] == score[best[i]] && best[j] < best[i])) {
        size_t t = best[i];
        best[i] = best[j];
        best[j] = t;
      }
  /* Their mean, over the first kept buffer (read in the same pass as it is written). */
  float *out = kr->kept[0];
  for (size_t c = 0; c < n; c++) {
    double s = 0;
    for (size_t i = 0; i < m; i++) s += kr->kept[best[i]][c];
    out[c] = (float)(s / (double)m);
  }
  free(d), free(row), free(score), free(best);
  *delta = out;
  return 0;
}

static double krum_sizes(const fl__agg *a, size_t k) {
  (void)a;
  return (double)k;
}

static size_t krum_min(const fl__agg *a) { return 2 * (size_t)a->p[0] + 3; }

static void krum_free(fl__agg *a) {
  krum *k = a->impl;
  if (!k) return;
  drop_all(a);
  free(k->kept);
  free(k);
  a->impl = NULL;
}

static const fl__param krum_params[] = {
    {"f", 1, 0, 1e6, 1, "Byzantine clients tolerated; a round needs 2f+3 updates"},
    {"m", 1, 1, 1e6, 1, "deltas averaged (1: Krum, more: Multi-Krum)"},
    {NULL, 0, 0, 0, 0, NULL},
};

const fl__agg_ops fl__agg_krum = {
    "krum", "Krum / Multi-Krum: the mean of the m deltas closest to their neighbours "
            "(Blanchard et al. 2017)",
    krum_params, 1, krum_init, krum_begin, krum_fold, krum_result, krum_sizes, krum_min, krum_free,
};
