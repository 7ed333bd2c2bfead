/* FedAvg (common/fedavg.c): a pass over several updates gives what one pass per update
 * gives, and both give the example-weighted average of the deltas. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "error.h"
#include "rng.h"
#include "strategy.h"

#define N 1037 /* not a multiple of any vector width */
#define K 7    /* more than one pass of the widest fold */

static float deltas[K][N];
static double weights[K];

static void fill(void) {
  fl_rng r;
  fl_rng_seed(&r, 99);
  for (int k = 0; k < K; k++) {
    weights[k] = (double)(10 + 37 * k);
    for (int i = 0; i < N; i++) deltas[k][i] = (float)(fl_rng_uniform(&r) * 2.0 - 1.0) * 1e-2f;
  }
}

/* The model after folding the K deltas in passes of `per` updates. */
static void aggregate(size_t per, float *global) {
  fl_strategy *s = fl_fedavg_create(N);
  cr_assert_not_null(s);
  s->ops->begin(s);
  const float *ptrs[K];
  for (int k = 0; k < K; k++) ptrs[k] = deltas[k];
  for (size_t k = 0; k < K; k += per) {
    size_t m = K - k < per ? K - k : per;
    cr_assert_eq(s->ops->fold(s, ptrs + k, weights + k, m), 0);
  }
  cr_assert_eq(s->folded, K);
  for (int i = 0; i < N; i++) global[i] = 0.5f;
  cr_assert_eq(s->ops->finish(s, global, 1.0), 0);
  s->ops->free(s);
}

Test(strategy, fold_in_passes_of_any_size_is_the_weighted_average) {
  fill();
  double total = 0;
  for (int k = 0; k < K; k++) total += weights[k];
  static float by[K + 1][N];
  for (size_t per = 1; per <= K; per++) aggregate(per, by[per]);
  for (int i = 0; i < N; i++) {
    double want = 0;
    for (int k = 0; k < K; k++) want += weights[k] * deltas[k][i];
    want = 0.5 + want / total;
    for (size_t per = 1; per <= K; per++) {
      cr_assert_float_eq(by[per][i], want, 1e-7, "passes of %zu, parameter %d: %.9g, want %.9g",
                         per, i, by[per][i], want);
      cr_assert_eq(by[per][i], by[1][i], "passes of %zu differ from one at a time at %d", per, i);
    }
  }
}

Test(strategy, nothing_folded_is_a_state_error) {
  fl_strategy *s = fl_fedavg_create(N);
  float g[N] = {0};
  s->ops->begin(s);
  cr_assert_eq(s->ops->finish(s, g, 1.0), FL_ESTATE);
  s->ops->free(s);
}

Test(strategy, unknown_name_is_named) {
  char err[128];
  cr_assert_null(fl_strategy_create("krum", 10, err, sizeof err));
  cr_assert_str_eq(err, "unknown strategy 'krum' (fedavg)");
}
