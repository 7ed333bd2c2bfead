/* Client selection for a round (see select.h): id order, then a partial Fisher-Yates. */
#include "select.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t fl_select_target(double clients_per_round, size_t ready) {
  double k = clients_per_round;
  size_t want = k < 1 ? (size_t)ceil(k * (double)ready) : (size_t)k;
  if (want < 1) want = 1;
  return want < ready ? want : ready;
}

/* Id order; equal ids (a client that connected twice) in their order among the candidates. */
static int by_id(const void *a, const void *b, void *arg) {
  const char *const *ids = arg;
  size_t i = *(const size_t *)a, j = *(const size_t *)b;
  int c = strcmp(ids[i], ids[j]);
  return c ? c : (i > j) - (i < j);
}

size_t fl_select_clients(const char *const *ids, size_t m, size_t target, double over_select,
                         fl_rng *rng, size_t *chosen) {
  if (m == 0) return 0;
  for (size_t i = 0; i < m; i++) chosen[i] = i;
  qsort_r(chosen, m, sizeof *chosen, by_id, (void *)ids);
  size_t k = (size_t)ceil((double)target * (1.0 + over_select));
  if (k > m) k = m;
  for (size_t i = 0; i < k; i++) { /* partial Fisher-Yates */
    size_t j = i + (size_t)fl_rng_below(rng, m - i);
    size_t t = chosen[i];
    chosen[i] = chosen[j];
    chosen[j] = t;
  }
  return k;
}
