/* Client selection (common/select.c): the round's target from clients_per_round, the
 * over-selection arithmetic, k never above the candidates, the same seed the same
 * clients whatever order they connected in, every candidate equally likely, and the
 * same draws as the server made before selection was its own function. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "select.h"

#define M 40

static char names[M][16];
static const char *ids[M];

/* Ids in a scrambled order ("client-07", "client-33", ...): neither sorted nor reversed. */
static void make_ids(void) {
  for (size_t i = 0; i < M; i++) {
    snprintf(names[i], sizeof names[i], "client-%02zu", (i * 17 + 5) % M);
    ids[i] = names[i];
  }
}

static size_t select_seed(const char *const *cand, size_t m, size_t target, double over,
                          uint64_t seed, size_t *chosen) {
  fl_rng r;
  fl_rng_seed2(&r, seed, 0x5e1ec7);
  return fl_select_clients(cand, m, target, over, &r, chosen);
}

/* chosen[0..m) holds each of 0..m-1 once. */
static void assert_permutation(const size_t *chosen, size_t m) {
  char seen[M] = {0};
  for (size_t i = 0; i < m; i++) {
    cr_assert_lt(chosen[i], m);
    cr_assert_eq(seen[chosen[i]], 0, "index %zu twice", chosen[i]);
    seen[chosen[i]] = 1;
  }
}

Test(select, target_count_or_fraction_of_ready) {
  cr_assert_eq(fl_select_target(10, 100), 10);
  cr_assert_eq(fl_select_target(10, 4), 4);      /* at most the ready clients */
  cr_assert_eq(fl_select_target(1, 1), 1);
  cr_assert_eq(fl_select_target(0.25, 10), 3);   /* 2.5 rounded up */
  cr_assert_eq(fl_select_target(0.5, 7), 4);     /* 3.5 rounded up */
  cr_assert_eq(fl_select_target(0.5, 8), 4);     /* exact */
  cr_assert_eq(fl_select_target(0.01, 10), 1);   /* at least one */
  cr_assert_eq(fl_select_target(0.5, 1), 1);
  cr_assert_eq(fl_select_target(10, 0), 0);      /* none ready */
  cr_assert_eq(fl_select_target(0.5, 0), 0);
}

Test(select, over_selection_arithmetic) {
  make_ids();
  size_t chosen[M];
  cr_assert_eq(select_seed(ids, M, 10, 0, 1, chosen), 10);
  cr_assert_eq(select_seed(ids, M, 10, 0.5, 1, chosen), 15);
  cr_assert_eq(select_seed(ids, M, 3, 0.1, 1, chosen), 4);    /* 3.3 rounded up */
  cr_assert_eq(select_seed(ids, M, 20, 1.0, 1, chosen), 40);  /* doubled */
  cr_assert_eq(select_seed(ids, M, 30, 0.5, 1, chosen), M);   /* 45 capped at 40 */
  cr_assert_eq(select_seed(ids, 12, 10, 0.5, 1, chosen), 12);
}

Test(select, never_more_than_the_candidates_and_each_once) {
  make_ids();
  size_t chosen[M];
  for (size_t m = 0; m <= M; m++)
    for (size_t target = 0; target <= M + 5; target += 3) {
      size_t k = select_seed(ids, m, target, 0.3, m * 100 + target, chosen);
      cr_assert_leq(k, m, "m %zu target %zu", m, target);
      assert_permutation(chosen, m);
    }
}

Test(select, same_seed_same_clients_other_seed_others) {
  make_ids();
  size_t a[M], b[M], c[M];
  size_t ka = select_seed(ids, M, 8, 0, 42, a);
  size_t kb = select_seed(ids, M, 8, 0, 42, b);
  size_t kc = select_seed(ids, M, 8, 0, 43, c);
  cr_assert_eq(ka, 8);
  cr_assert_eq(kb, 8);
  cr_assert_eq(kc, 8);
  cr_assert_arr_eq(a, b, sizeof a);
  cr_assert(memcmp(a, c, 8 * sizeof *a) != 0, "seeds 42 and 43 selected the same clients");
}

/* The candidates in another order (another connection order) select the same clients,
 * in the same draw order. */
Test(select, independent_of_connection_order) {
  make_ids();
  const char *rev[M], *sorted[M];
  for (size_t i = 0; i < M; i++) rev[i] = ids[M - 1 - i];
  for (size_t i = 0; i < M; i++) sorted[(i * 17 + 5) % M] = ids[i]; /* undoes make_ids */
  for (uint64_t seed = 1; seed <= 20; seed++) {
    size_t a[M], b[M], c[M];
    size_t k = select_seed(ids, M, 7, 0.2, seed, a);
    cr_assert_eq(select_seed(rev, M, 7, 0.2, seed, b), k);
    cr_assert_eq(select_seed(sorted, M, 7, 0.2, seed, c), k);
    for (size_t i = 0; i < k; i++) {
      cr_assert_str_eq(ids[a[i]], rev[b[i]], "seed %llu, pick %zu", (unsigned long long)seed, i);
      cr_assert_str_eq(ids[a[i]], sorted[c[i]], "seed %llu, pick %zu", (unsigned long long)seed, i);
    }
  }
}

Test(select, no_candidates_draws_nothing) {
  fl_rng r, before;
  fl_rng_seed(&r, 7);
  before = r;
  size_t chosen[1] = {12345};
  cr_assert_eq(fl_select_clients(NULL, 0, 5, 0.5, &r, chosen), 0);
  cr_assert_arr_eq(r.s, before.s, sizeof r.s);
  cr_assert_eq(chosen[0], 12345);
}

Test(select, one_candidate) {
  const char *one[1] = {"only"};
  size_t chosen[1];
  for (size_t target = 1; target <= 3; target++) {
    cr_assert_eq(select_seed(one, 1, target, 0, target, chosen), 1);
    cr_assert_eq(chosen[0], 0);
  }
  cr_assert_eq(select_seed(one, 1, 1, 2.0, 9, chosen), 1);
  cr_assert_eq(fl_select_target(0.1, 1), 1);
}

/* A client that connected twice under one id: the two keep their order among the
 * candidates, so the selection still depends only on the seed. */
Test(select, equal_ids_keep_their_order) {
  const char *twice[4] = {"b", "a", "b", "c"};
  size_t chosen[4];
  size_t k = select_seed(twice, 4, 4, 0, 3, chosen);
  cr_assert_eq(k, 4);
  /* Sorted, the candidates are a(1) b(0) b(2) c(3); the draw permutes that order. */
  fl_rng r;
  fl_rng_seed2(&r, 3, 0x5e1ec7);
  size_t want[4] = {1, 0, 2, 3};
  for (size_t i = 0; i < 4; i++) {
    size_t j = i + (size_t)fl_rng_below(&r, 4 - i);
    size_t t = want[i];
    want[i] = want[j];
    want[j] = t;
  }
  cr_assert_arr_eq(chosen, want, sizeof want);
}

/* Every candidate is selected about k/m of the time (a fixed seed: the counts are the
 * same on every run). */
Test(select, every_candidate_equally_likely) {
  make_ids();
  enum { m = 10, k = 3, draws = 30000 };
  size_t count[m] = {0}, chosen[m];
  fl_rng r;
  fl_rng_seed(&r, 2024);
  for (int d = 0; d < draws; d++) {
    cr_assert_eq(fl_select_clients(ids, m, k, 0, &r, chosen), k);
    for (size_t i = 0; i < k; i++) count[chosen[i]]++;
  }
  double expect = (double)draws * k / m; /* 9000; one standard deviation is about 80 */
  for (size_t i = 0; i < m; i++)
    cr_assert(count[i] > expect * 0.95 && count[i] < expect * 1.05, "candidate %zu: %zu of %d",
              i, count[i], draws);
}

/* What fl-server did before selection was its own function: sort the candidates by id,
 * then a partial Fisher-Yates over the sorted array.  A checkpoint holds the generator's
 * state, so a run resumed by a newer server selects what the older one would have. */
static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

Test(select, same_draws_as_the_sorted_array_fisher_yates) {
  make_ids();
  for (uint64_t seed = 1; seed <= 50; seed++) {
    size_t m = 1 + seed % M, target = 1 + seed % 9;
    double over = (double)(seed % 4) * 0.25;
    size_t chosen[M];
    size_t k = select_seed(ids, m, target, over, seed, chosen);

    const char *ref[M];
    memcpy(ref, ids, m * sizeof *ref);
    qsort(ref, m, sizeof *ref, cmp_str);
    fl_rng r;
    fl_rng_seed2(&r, seed, 0x5e1ec7);
    size_t want = (size_t)ceil((double)target * (1.0 + over)); /* exact: over is k/4 */
    if (want > m) want = m;
    cr_assert_eq(k, want, "seed %llu", (unsigned long long)seed);
    for (size_t i = 0; i < k; i++) {
      size_t j = i + (size_t)fl_rng_below(&r, m - i);
      const char *t = ref[i];
      ref[i] = ref[j];
      ref[j] = t;
      cr_assert_str_eq(ids[chosen[i]], ref[i], "seed %llu, pick %zu", (unsigned long long)seed, i);
    }
  }
}
