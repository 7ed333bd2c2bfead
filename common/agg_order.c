/* Coordinate-wise order statistics of the round's deltas: the median (Yin et al. 2018,
 * "Byzantine-Robust Distributed Learning") and the trimmed mean, which drops the beta
 * fraction of largest and of smallest values of every coordinate and averages the rest.
 * Both are unweighted, as in the papers: a client's example count cannot buy it more
 * influence.
 *
 * They need every update at once: fold keeps the update buffers the server hands over
 * (no copy), and result works through the coordinates in blocks, gathering each block of
 * k deltas into a small tile so that every coordinate's k values lie together.  Memory:
 * k model sizes for k updates.  The result is written over the first update's buffer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kth.h"
#include "strategy_internal.h"

typedef struct order {
  float **kept;    /* [cap] the round's deltas */
  size_t cap;
} order;

static int order_init(fl__agg *a) {
  order *o = calloc(1, sizeof *o);
  if (!o) return FL_ENOMEM;
  a->impl = o;
  return 0;
}

static void drop_all(fl__agg *a) {
  order *o = a->impl;
  for (size_t i = 0; i < a->folded; i++) free(o->kept[i]);
}

static void order_begin(fl__agg *a) { drop_all(a); }

static int order_fold(fl__agg *a, fl_update *u, size_t k, char *err, size_t errlen) {
  order *o = a->impl;
  if (a->folded + k > o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 16;
    while (cap < a->folded + k) cap *= 2;
    float **nk = realloc(o->kept, cap * sizeof *nk);
    if (!nk) return fl_errf(err, errlen, FL_ENOMEM, "out of memory keeping %zu updates", cap);
    o->kept = nk;
    o->cap = cap;
  }
  for (size_t i = 0; i < k; i++) {
    float *kept = fl__agg_keep(&u[i], a->n);
    if (!kept) return fl_errf(err, errlen, FL_ENOMEM, "out of memory keeping an update");
    o->kept[a->folded++] = kept;
    a->weight += u[i].weight;
  }
  return 0;
}

/* The mean of the values of ranks [t, k - t) of v[0..k) (reordered). */
static float trimmed_one(float *v, size_t k, size_t t) {
  if (t > 0) {
    fl_kth_smallest(v, k, t);
    fl_kth_smallest(v + t, k - t, k - 2 * t - 1);
  }
  double s = 0;
  for (size_t i = t; i < k - t; i++) s += v[i];
  return (float)(s / (double)(k - t - t));
}

static float median_one(float *v, size_t k) {
  size_t h = k / 2;
  fl_kth_smallest(v, k, h);
  if (k & 1) return v[h];
  float below = v[0];
  for (size_t i = 1; i < h; i++) below = v[i] > below ? v[i] : below;
  return (float)(((double)below + v[h]) / 2);
}

#define BLOCK 64 /* coordinates per tile */

/* trim < 0: the median; else the mean without `trim` values at each end. */
static int order_result(fl__agg *a, const float **delta, long trim, char *err, size_t errlen) {
  order *o = a->impl;
  size_t k = a->folded, n = a->n;
  float *tile = malloc(k * BLOCK * sizeof *tile);
  if (!tile) return fl_errf(err, errlen, FL_ENOMEM, "out of memory for %zu updates", k);
  float *out = o->kept[0];
  for (size_t b = 0; b < n; b += BLOCK) {
    size_t w = n - b < BLOCK ? n - b : BLOCK;
    for (size_t j = 0; j < k; j++) {
      const float *src = o->kept[j] + b;
      for (size_t c = 0; c < w; c++) tile[c * k + j] = src[c];
    }
    for (size_t c = 0; c < w; c++)
      out[b + c] = trim < 0 ? median_one(tile + c * k, k) : trimmed_one(tile + c * k, k, (size_t)trim);
  }
  free(tile);
  *delta = out;
  return 0;
}

static int median_result(fl__agg *a, const float **delta, char *err, size_t errlen) {
  return order_result(a, delta, -1, err, errlen);
}

static int trimmed_result(fl__agg *a, const float **delta, char *err, size_t errlen) {
  size_t k = a->folded, t = (size_t)floor(a->p[0] * (double)k);
  if (2 * t >= k)
    return fl_errf(err, errlen, FL_ESTATE, "trimming %zu of %zu updates at each end leaves none",
                   t, k);
  return order_result(a, delta, (long)t, err, errlen);
}

static double order_sizes(const fl__agg *a, size_t k) {
  (void)a;
  return (double)k;
}

static size_t trimmed_min(const fl__agg *a) {
  /* k - 2 floor(beta k) >= 1 holds for every k >= 1 when beta < 0.5. */
  (void)a;
  return 1;
}

static void order_free(fl__agg *a) {
  order *o = a->impl;
  if (!o) return;
  drop_all(a);
  free(o->kept);
  free(o);
  a->impl = NULL;
}

static const fl__param no_params[] = {{NULL, 0, 0, 0, 0, NULL}};

const fl__agg_ops fl__agg_median = {
    "median", "coordinate-wise median of the deltas, unweighted (Yin et al. 2018)", no_params, 1,
    order_init, order_begin, order_fold, median_result, order_sizes, NULL, order_free,
};

static const fl__param trimmed_params[] = {
    {"beta", 0.1, 0, 0.499, 0, "fraction of the largest and of the smallest values dropped per coordinate"},
    {NULL, 0, 0, 0, 0, NULL},
};

const fl__agg_ops fl__agg_trimmed = {
    "trimmed", "coordinate-wise trimmed mean of the deltas, unweighted (Yin et al. 2018)",
    trimmed_params, 1, order_init, order_begin, order_fold, trimmed_result, order_sizes,
    trimmed_min, order_free,
};
