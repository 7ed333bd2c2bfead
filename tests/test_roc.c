/* The streaming ROC AUC (common/roc.c): exact up to FL_ROC_EXACT pairs (fl_auc's value
 * bit for bit), and past that binned, within 1e-4 of the exact value. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "rng.h"
#include "roc.h"
#include "train.h"

static void pairs(float *s, float *y, size_t n, uint64_t seed) {
  fl_rng r;
  fl_rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++) {
    y[i] = (float)(fl_rng_uniform(&r) < 0.3);
    s[i] = (float)(fl_rng_normal(&r) + (y[i] > 0.5f ? 0.8 : 0.0));
  }
}

Test(roc, exact_while_it_keeps_every_pair) {
  size_t n = 5000;
  float *s = malloc(sizeof *s * n), *y = malloc(sizeof *y * n);
  pairs(s, y, n, 1);
  s[7] = s[8], y[7] = 1, y[8] = 0; /* a tie */
  fl_roc r = {0};
  for (size_t off = 0; off < n; off += 333)
    cr_assert_eq(fl_roc_add(&r, s + off, y + off, n - off < 333 ? n - off : 333), 0);
  cr_assert(fl_roc_exact(&r));
  cr_assert_eq(fl_roc_auc(&r), fl_auc(s, y, n));
  fl_roc_free(&r);
  fl_roc e = {0};
  cr_assert_eq(fl_roc_auc(&e), 0.5);
  free(s);
  free(y);
}

Test(roc, binned_past_the_exact_limit, .timeout = 60) {
  size_t n = FL_ROC_EXACT + FL_ROC_EXACT / 2;
  float *s = malloc(sizeof *s * n), *y = malloc(sizeof *y * n);
  cr_assert(s && y);
  pairs(s, y, n, 2);
  fl_roc r = {0};
  for (size_t off = 0; off < n; off += 65536)
    cr_assert_eq(fl_roc_add(&r, s + off, y + off, n - off < 65536 ? n - off : 65536), 0);
  cr_assert_not(fl_roc_exact(&r));
  double exact = fl_auc(s, y, n), binned = fl_roc_auc(&r);
  cr_assert(exact > 0.6 && exact < 0.8, "%g", exact);
  cr_assert_lt(fabs(exact - binned), 1e-4, "exact %.6f binned %.6f", exact, binned);
  fl_roc_free(&r);
  free(s);
  free(y);
}
