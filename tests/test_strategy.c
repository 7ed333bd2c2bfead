/* Strategies (common/strategy.h): the weighted mean folded in passes of any size, the
 * robust aggregators on inputs whose answer is known, each server optimizer against
 * steps computed by hand, spec errors that name what is wrong, the refusal of a
 * non-finite aggregate, and the optimizer state saved and restored. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"
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

static fl_strategy *make(const char *spec, size_t n) {
  fl_strategy *s;
  char err[256];
  int rc = fl_strategy_create(spec, n, 1.0, &s, err, sizeof err);
  cr_assert_eq(rc, 0, "%s: %s", spec, err);
  return s;
}

/* Updates whose buffers are the strategy's to keep (as the server's are). */
static fl_update owned(const float *values, size_t n, double weight) {
  float *b = fl_alloc_big(n * sizeof *b);
  cr_assert_not_null(b);
  memcpy(b, values, n * sizeof *b);
  return (fl_update){.client = "client", .weight = weight, .delta = b, .buf = b};
}

static void fold(fl_strategy *s, fl_update *u, size_t k) {
  char err[256];
  cr_assert_eq(fl_strategy_fold(s, u, k, err, sizeof err), 0, "%s", err);
  for (size_t i = 0; i < k; i++) free(u[i].buf); /* what the strategy did not keep */
}

static void finish(fl_strategy *s, float *global) {
  char err[256];
  cr_assert_eq(fl_strategy_finish(s, global, NULL, err, sizeof err), 0, "%s", err);
}

/* ---- the weighted mean ---- */

/* The model after folding the K deltas in passes of `per` updates. */
static void aggregate(size_t per, float *global) {
  fl_strategy *s = make("fedavg", N);
  for (size_t k = 0; k < K; k += per) {
    size_t m = K - k < per ? K - k : per;
    fl_update u[K];
    for (size_t j = 0; j < m; j++) u[j] = (fl_update){.client = "c", .weight = weights[k + j], .delta = deltas[k + j], .buf = NULL};
    fold(s, u, m);
  }
  cr_assert_eq(fl_strategy_folded(s), K);
  for (int i = 0; i < N; i++) global[i] = 0.5f;
  finish(s, global);
  fl_strategy_free(s);
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
  fl_strategy *s = make("fedavg", N);
  static float g[N];
  char err[128];
  cr_assert_eq(fl_strategy_finish(s, g, NULL, err, sizeof err), FL_ESTATE);
  fl_strategy_free(s);
}

Test(strategy, normbound_clips_each_delta_before_the_mean) {
  float a[2] = {3, 4}, b[2] = {0.3f, 0.4f}; /* norms 5 and 0.5 */
  fl_strategy *s = make("normbound:bound=1", 2);
  fl_update u[2] = {{.client = "a", .weight = 1, .delta = a, .buf = NULL}, {.client = "b", .weight = 1, .delta = b, .buf = NULL}};
  fold(s, u, 2);
  float g[2] = {0, 0};
  finish(s, g);
  /* a clipped to (0.6, 0.8), b unchanged: the mean is (0.45, 0.6). */
  cr_assert_float_eq(g[0], 0.45f, 1e-6);
  cr_assert_float_eq(g[1], 0.6f, 1e-6);
  fl_strategy_free(s);
}

/* ---- robust aggregators ---- */

Test(strategy, median_odd_and_even_unweighted) {
  float v[5][3] = {{1, -5, 0}, {2, 10, 0}, {100, 0, 0}, {3, -1, 0}, {-50, 2, 1}};
  fl_strategy *s = make("median", 3);
  cr_assert(fl_strategy_needs_all(s));
  fl_update u[5];
  for (int i = 0; i < 5; i++) u[i] = owned(v[i], 3, 1 + 1000.0 * i); /* weights ignored */
  fold(s, u, 3);
  fold(s, u + 3, 2);
  for (int i = 0; i < 5; i++) cr_assert_null(u[i].buf, "median copied instead of keeping");
  float g[3] = {0, 0, 0};
  finish(s, g);
  cr_assert_float_eq(g[0], 2, 1e-6);
  cr_assert_float_eq(g[1], 0, 1e-6);
  cr_assert_float_eq(g[2], 0, 1e-6);
  /* A new round: four updates, the mean of the middle two. */
  fl_strategy_begin(s);
  for (int i = 0; i < 4; i++) u[i] = owned(v[i], 3, 1);
  fold(s, u, 4);
  float h[3] = {0, 0, 0};
  finish(s, h);
  cr_assert_float_eq(h[0], 2.5f, 1e-6);
  cr_assert_float_eq(h[1], -0.5f, 1e-6);
  fl_strategy_free(s);
}

Test(strategy, trimmed_mean_drops_the_extremes) {
  /* 10 updates, beta 0.2: two dropped at each end of every coordinate. */
  float v[10][2];
  for (int i = 0; i < 10; i++) v[i][0] = (float)i, v[i][1] = 7;
  v[0][0] = -1e6f;
  v[9][0] = 1e6f;
  fl_strategy *s = make("trimmed:beta=0.2", 2);
  fl_update u[10];
  for (int i = 0; i < 10; i++) u[i] = owned(v[i], 2, 1);
  fold(s, u, 10);
  float g[2] = {0, 0};
  finish(s, g);
  cr_assert_float_eq(g[0], (2 + 3 + 4 + 5 + 6 + 7) / 6.0f, 1e-5); /* ranks 2..7 */
  cr_assert_float_eq(g[1], 7, 1e-6);
  fl_strategy_free(s);
}

Test(strategy, krum_picks_the_cluster_and_multikrum_averages) {
  /* Six honest deltas near (1, 1), two attackers far away; f = 2 needs 7 updates. */
  float v[8][2] = {{1, 1}, {1.1f, 0.9f}, {0.9f, 1.1f}, {1, 1.2f}, {1.2f, 1}, {0.95f, 1},
                   {-40, 50}, {60, -70}};
  fl_strategy *s = make("krum:f=2,m=1", 2);
  cr_assert_eq(fl_strategy_min_updates(s), 7);
  fl_update u[8];
  for (int i = 0; i < 8; i++) u[i] = owned(v[i], 2, 1);
  fold(s, u, 8);
  float g[2] = {0, 0};
  finish(s, g);
  cr_assert(fabsf(g[0] - 1) < 0.25f && fabsf(g[1] - 1) < 0.25f, "krum chose (%g, %g)", g[0], g[1]);
  fl_strategy_free(s);

  s = make("krum:f=2,m=6", 2);
  for (int i = 0; i < 8; i++) u[i] = owned(v[i], 2, 1);
  fold(s, u, 8);
  g[0] = g[1] = 0;
  finish(s, g);
  /* The six honest ones, averaged. */
  cr_assert_float_eq(g[0], (1 + 1.1f + 0.9f + 1 + 1.2f + 0.95f) / 6, 1e-5);
  cr_assert_float_eq(g[1], (1 + 0.9f + 1.1f + 1.2f + 1 + 1) / 6, 1e-5);
  fl_strategy_free(s);
}

/* Krum's distances on long vectors (two blocks of 4096 coordinates and a tail that is not
 * a multiple of the vector lanes) against the definition computed here in double: the
 * same m updates chosen, their mean to the bit.  The coordinates fall in four parts: the
 * second block, the upper half of every 16 in the first, the last 13 (past the last 16
 * lanes) and the rest.  Updates 0-2 spread a little over all of them, 7 and 8 much, and
 * update 3 + p as much as 7 but only in part p: a distance that missed any part would
 * choose that update (checked by breaking each in turn). */
Test(strategy, krum_on_long_vectors_matches_the_definition) {
  enum { KN = 9, F = 2, M = 3, LEN = 2 * 4096 + 1037 };
  static float v[KN][LEN];
  fl_rng r;
  fl_rng_seed(&r, 5);
  size_t len[4] = {0};
#define PART(c) ((c) >= LEN - 13 ? 2 : (c) >= 4096 && (c) < 8192 ? 0 : (c) < 4096 && (c) % 16 >= 8 ? 1 : 3)
  for (int c = 0; c < LEN; c++) len[PART(c)]++;
  for (int i = 0; i < KN; i++)
    for (int c = 0; c < LEN; c++) {
      int part = PART(c);
      double spread = i < 3 ? (1.0 + 0.05 * i) / 4 : i < 7 ? (i - 3 == part ? 3.0 : 0.0) : 2.5;
      double sc = sqrt(spread / (double)len[part]) * 1e2; /* spread: that part's share */
      v[i][c] = (float)(0.5 + sc * (fl_rng_uniform(&r) - 0.5));
    }
#undef PART
  double score[KN];
  for (int i = 0; i < KN; i++) {
    double d[KN];
    int nd = 0;
    for (int j = 0; j < KN; j++) {
      if (j == i) continue;
      double s2 = 0;
      for (int c = 0; c < LEN; c++) s2 += ((double)v[i][c] - v[j][c]) * ((double)v[i][c] - v[j][c]);
      d[nd++] = s2;
    }
    for (int a = 0; a < nd; a++) /* ascending */
      for (int b = a + 1; b < nd; b++)
        if (d[b] < d[a]) {
          double t = d[a];
          d[a] = d[b], d[b] = t;
        }
    score[i] = 0;
    for (int a = 0; a < KN - F - 2; a++) score[i] += d[a];
  }
  int best[KN];
  for (int i = 0; i < KN; i++) best[i] = i;
  for (int a = 0; a < M; a++)
    for (int b = a + 1; b < KN; b++)
      if (score[best[b]] < score[best[a]]) {
        int t = best[a];
        best[a] = best[b], best[b] = t;
      }
  char spec[64];
  snprintf(spec, sizeof spec, "krum:f=%d,m=%d", F, M);
  fl_strategy *s = make(spec, LEN);
  fl_update u[KN];
  for (int i = 0; i < KN; i++) u[i] = owned(v[i], LEN, 1 + i);
  fold(s, u, KN);
  static float g[LEN];
  finish(s, g);
  for (int c = 0; c < LEN; c++) {
    double want = 0;
    for (int a = 0; a < M; a++) want += v[best[a]][c];
    float w = (float)(want / M);
    cr_assert(g[c] == w, "coordinate %d: %g, the mean of updates %d %d %d is %g", c,
              (double)g[c], best[0], best[1], best[2], (double)w);
  }
  fl_strategy_free(s);
}

Test(strategy, krum_with_too_few_updates_fails_and_keeps_the_model) {
  float v[2] = {1, 1};
  fl_strategy *s = make("krum:f=2", 2);
  fl_update u[4];
  for (int i = 0; i < 4; i++) u[i] = owned(v, 2, 1);
  fold(s, u, 4);
  float g[2] = {5, 5};
  char err[256];
  cr_assert_eq(fl_strategy_finish(s, g, NULL, err, sizeof err), FL_ESTATE);
  cr_assert(strstr(err, "needs at least 7 updates"), "%s", err);
  cr_assert(g[0] == 5 && g[1] == 5);
  fl_strategy_free(s); /* frees the kept buffers */
}

/* ---- server optimizers, against steps computed by hand ---- */

/* Two rounds on one parameter from x = 1: deltas 0.5, then -0.25.  want[r] = x, m, v
 * after round r, from the formulas in server_opt.c evaluated in double by hand (python):
 * eta 0.1, beta1 0.9, beta2 0.99, tau 1e-3, v starting at tau^2. */
static void two_steps(const char *spec, const double want[2][3], int moments) {
  fl_strategy *s = make(spec, 1);
  float x = 1;
  const float d[2] = {0.5f, -0.25f};
  for (int r = 0; r < 2; r++) {
    fl_strategy_begin(s);
    fl_update u = {.client = "c", .weight = 3, .delta = &d[r], .buf = NULL};
    fold(s, &u, 1);
    finish(s, &x);
    cr_assert_float_eq(x, want[r][0], 1e-6 * fabs(want[r][0]), "%s round %d: x %.9g want %.9g",
                       spec, r + 1, x, want[r][0]);
    uint8_t *st;
    size_t len;
    cr_assert_eq(fl_strategy_save(s, &st, &len), 0);
    if (moments > 0) {
      float m, v;
      memcpy(&m, st + len - 4 * (size_t)moments, 4); /* little-endian machine */
      cr_assert_float_eq(m, want[r][1], 1e-6 * fabs(want[r][1]) + 1e-9, "%s m", spec);
      if (moments > 1) {
        memcpy(&v, st + len - 4, 4);
        cr_assert_float_eq(v, want[r][2], 1e-6 * fabs(want[r][2]), "%s v", spec);
      }
    }
    free(st);
  }
  fl_strategy_free(s);
}

Test(strategy, sgd_and_fedavgm_steps) {
  const double sgd[2][3] = {{1.25, 0, 0}, {1.125, 0, 0}};          /* x += 0.5 d */
  two_steps("fedavg+sgd:lr=0.5", sgd, 0);
  /* v1 = 0.5, x1 = 1.5; v2 = 0.9 * 0.5 - 0.25 = 0.2, x2 = 1.7 */
  const double avgm[2][3] = {{1.5, 0.5, 0}, {1.7, 0.2, 0}};
  two_steps("fedavgm:lr=1,momentum=0.9", avgm, 1);
}

Test(strategy, adaptive_steps_by_hand) {
  const double adagrad[2][3] = {{1.00998001999998, 0.05, 0.250001},
                                {1.0135513344883091, 0.02, 0.312501}};
  const double adam[2][3] = {{1.0980201901209485, 0.05, 0.00250099},
                             {1.1333019936980475, 0.02, 0.0031009801}};
  const double yogi[2][3] = {{1.0980199980004, 0.05, 0.002501},
                             {1.1331628095165456, 0.02, 0.003126}};
  two_steps("fedadagrad:eta=0.1,beta1=0.9,tau=0.001", adagrad, 2);
  two_steps("fedadam:eta=0.1,beta1=0.9,beta2=0.99,tau=0.001", adam, 2);
  two_steps("fedyogi:eta=0.1,beta1=0.9,beta2=0.99,tau=0.001", yogi, 2);
}

/* ---- what must be refused ---- */

Test(strategy, non_finite_aggregate_changes_nothing) {
  float big[2] = {3e38f, 3e38f};
  fl_strategy *s = make("fedadam", 2);
  uint8_t *before, *after;
  size_t lb, la;
  cr_assert_eq(fl_strategy_save(s, &before, &lb), 0);
  fl_update u[2] = {{.client = "a", .weight = 1, .delta = big, .buf = NULL}, {.client = "b", .weight = 1, .delta = big, .buf = NULL}};
  fold(s, u, 2);
  float g[2] = {3e38f, 1};
  char err[256];
  cr_assert_eq(fl_strategy_finish(s, g, NULL, err, sizeof err), FL_ENONFINITE, "%s", err);
  cr_assert(g[0] == 3e38f && g[1] == 1, "the model changed");
  cr_assert_eq(fl_strategy_save(s, &after, &la), 0);
  cr_assert(lb == la && memcmp(before, after, lb) == 0, "the moments changed");
  free(before);
  free(after);
  fl_strategy_free(s);
}

static void refused(const char *spec, const char *needle) {
  fl_strategy *s;
  char err[512];
  cr_assert_eq(fl_strategy_create(spec, 10, 1.0, &s, err, sizeof err), FL_ECONFIG, "%s accepted", spec);
  cr_assert(strstr(err, needle), "%s: '%s' lacks '%s'", spec, err, needle);
}

Test(strategy, bad_specs_name_the_problem) {
  refused("fedsgd", "unknown strategy 'fedsgd' (known: fedavg, normbound, median");
  refused("trimmed:gamma=0.1", "has no parameter 'gamma' (it takes: beta)");
  refused("trimmed:beta=0.7", "beta=0.7 is out of range (from 0 to 0.499)");
  refused("krum:f=1.5", "f=1.5 is out of range (a whole number from 0 to");
  refused("normbound", "needs bound=VALUE");
  refused("fedadam:eta=abc", "eta=abc is not a number");
  refused("fedadam:eta=0.1,eta=0.2", "eta given twice");
  refused("median+adam", "unknown server optimizer 'adam'");
  refused("median:beta", "expected KEY=VALUE");
}

Test(strategy, canonical_spec_and_memory) {
  fl_strategy *s = make("trimmed:beta=0.25+fedadam:eta=0.05", 4);
  cr_assert_str_eq(fl_strategy_spec(s),
                   "trimmed:beta=0.25+fedadam:eta=0.05,beta1=0.9,beta2=0.99,tau=0.001");
  cr_assert_float_eq(fl_strategy_model_sizes(s, 100), 102, 1e-9);
  fl_strategy_free(s);
  s = make("fedyogi", 4);
  cr_assert_float_eq(fl_strategy_model_sizes(s, 100), 4, 1e-9); /* sum 2 + moments 2 */
  cr_assert_eq(fl_strategy_needs_all(s), 0);
  fl_strategy_free(s);
}

Test(strategy, state_round_trip_and_mismatch) {
  float d[3] = {0.1f, -0.2f, 0.3f}, g[3] = {1, 2, 3}, h[3] = {1, 2, 3};
  fl_strategy *a = make("fedadam", 3), *b = make("fedadam", 3);
  fl_update u = {.client = "c", .weight = 1, .delta = d, .buf = NULL};
  fold(a, &u, 1);
  finish(a, g);
  uint8_t *st;
  size_t len;
  cr_assert_eq(fl_strategy_save(a, &st, &len), 0);
  char err[256];
  cr_assert_eq(fl_strategy_load(b, st, len, err, sizeof err), 0, "%s", err);
  /* One more round on both: the restored one moves exactly like the original. */
  memcpy(h, g, sizeof g);
  fl_strategy_begin(a);
  fold(a, &u, 1);
  finish(a, g);
  fold(b, &u, 1);
  finish(b, h);
  cr_assert(memcmp(g, h, sizeof g) == 0);
  fl_strategy *c = make("fedyogi", 3);
  cr_assert_eq(fl_strategy_load(c, st, len, err, sizeof err), FL_EMISMATCH);
  cr_assert(strstr(err, "made with strategy 'fedavg+fedadam"), "%s", err);
  cr_assert_eq(fl_strategy_load(b, st, len - 1, err, sizeof err), FL_EFORMAT, "%s", err);
  free(st);
  fl_strategy_free(a);
  fl_strategy_free(b);
  fl_strategy_free(c);
}

/* ---- encoded updates (codec.h records) ---- */

/* x[0..n) encoded with spec, as chunk records in a malloc'd buffer. */
static uint8_t *records(const char *spec, const float *x, size_t n, size_t *len) {
  fl_codec c;
  char err[128];
  cr_assert_eq(fl_codec_parse(spec, &c, err, sizeof err), 0, "%s", err);
  fl_encoder e;
  cr_assert_eq(fl_encoder_init(&e, &c, x, n, 256, 1), 0);
  uint8_t *out = malloc(16 * n + 1024), buf[256];
  size_t used = 0;
  fl_chunk ch;
  while (fl_encoder_next(&e, &ch, buf) == 1) {
    fl_chunk_record_put(&ch, out + used);
    used += fl_chunk_record_size(&ch);
  }
  *len = used;
  return out;
}

Test(strategy, encoded_updates_fold_as_their_decoded_values) {
  fill();
  const char *specs[] = {"float16", "int8", "topk:0.2"};
  const char *strats[] = {"fedavg", "median", "normbound:bound=0.05"};
  for (size_t e = 0; e < 3; e++) {
    for (size_t st = 0; st < 3; st++) {
      /* The strategy on the encoded updates, and on their decoded float32 copies. */
      fl_strategy *a = make(strats[st], N), *b = make(strats[st], N);
      static float dec[K][N];
      uint8_t *rec[K];
      fl_update ua[K], ub[K];
      for (int k = 0; k < K; k++) {
        size_t len;
        rec[k] = records(specs[e], deltas[k], N, &len);
        ua[k] = (fl_update){.client = "c", .weight = weights[k], .enc = (fl_enc)0, .data = rec[k], .len = len};
        fl_codec c;
        fl_codec_parse(specs[e], &c, NULL, 0);
        ua[k].enc = c.enc;
        fl_update_decode(&ua[k], dec[k], N);
        ub[k] = owned(dec[k], N, weights[k]);
      }
      char err[128];
      cr_assert_eq(fl_strategy_fold(a, ua, K, err, sizeof err), 0, "%s", err);
      fold(b, ub, K);
      static float ga[N], gb[N];
      for (int i = 0; i < N; i++) ga[i] = gb[i] = 0.5f;
      finish(a, ga);
      finish(b, gb);
      for (int i = 0; i < N; i++)
        cr_assert_float_eq(ga[i], gb[i], 1e-7, "%s on %s at %d: %g vs %g", strats[st], specs[e], i,
                           (double)ga[i], (double)gb[i]);
      for (int k = 0; k < K; k++) free(rec[k]);
      fl_strategy_free(a);
      fl_strategy_free(b);
    }
  }
}
