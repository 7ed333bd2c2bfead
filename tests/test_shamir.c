/* Shamir sharing (common/shamir.c): any t of n shares give the secret back, in any order;
 * t - 1 shares of two different secrets look alike; bad shares are refused. */
#include <criterion/criterion.h>
#include <string.h>

#include "error.h"
#include "shamir.h"

static fl_csprng rng;
static void setup(void) { cr_assert_eq(fl_csprng_init(&rng, "test"), 0); }
static void teardown(void) { fl_csprng_free(&rng); }

Test(shamir, any_t_shares_reconstruct, .init = setup, .fini = teardown) {
  uint8_t secret[32], got[32];
  for (int t = 1; t <= 7; t++) {
    int n = t + 4;
    fl_csprng_bytes(&rng, secret, sizeof secret);
    secret[31] = 0xff; /* the top byte too */
    fl_share s[16], pick[16];
    cr_assert_eq(fl_shamir_split(secret, t, n, s, &rng), 0);
    for (int start = 0; start + t <= n; start++) {
      for (int i = 0; i < t; i++) pick[i] = s[(start + 3 * i) % n]; /* scattered, distinct */
      int distinct = 1;
      for (int i = 0; i < t; i++)
        for (int j = 0; j < i; j++) distinct &= pick[i].x != pick[j].x;
      if (!distinct) continue;
      cr_assert_eq(fl_shamir_combine(pick, t, got), 0);
      cr_assert(memcmp(got, secret, 32) == 0, "t %d from %d", t, start);
    }
    cr_assert_eq(fl_shamir_combine(s, n, got), 0); /* more than t also works */
    cr_assert(memcmp(got, secret, 32) == 0);
  }
}

Test(shamir, fewer_than_t_reveal_nothing_and_bad_shares_refused, .init = setup, .fini = teardown) {
  uint8_t a[32] = {1}, got[32];
  fl_share s[5];
  cr_assert_eq(fl_shamir_split(a, 3, 5, s, &rng), 0);
  /* Two shares of a 3-of-5 sharing: the interpolation through them is not the secret
   * (it fails or gives something else, with overwhelming probability). */
  int rc = fl_shamir_combine(s, 2, got);
  cr_assert(rc != 0 || memcmp(got, a, 32) != 0);
  fl_share dup[3] = {s[0], s[0], s[1]};
  cr_assert_eq(fl_shamir_combine(dup, 3, got), FL_EINVAL);
  fl_share big[3] = {s[0], s[1], s[2]};
  big[1].y[2] = FL_SHAMIR_P;
  cr_assert_eq(fl_shamir_combine(big, 3, got), FL_EINVAL);
  fl_share zero[3] = {s[0], s[1], s[2]};
  zero[0].x = 0;
  cr_assert_eq(fl_shamir_combine(zero, 3, got), FL_EINVAL);
  /* A share changed by a large amount usually gives limbs that cannot be a secret (a
   * small change can pass: callers check the result against a public key). */
  int refused = 0;
  for (int trial = 0; trial < 20; trial++) {
    fl_share bad[3] = {s[0], s[1], s[2]};
    bad[2].y[trial % FL_SHAMIR_LIMBS] = (bad[2].y[trial % FL_SHAMIR_LIMBS] + (1ULL << 60) + 977 * (uint64_t)trial) % FL_SHAMIR_P;
    refused += fl_shamir_combine(bad, 3, got) == FL_EFORMAT;
  }
  cr_assert_geq(refused, 18);
  cr_assert_eq(fl_shamir_split(a, 0, 5, s, &rng), FL_EINVAL);
  cr_assert_eq(fl_shamir_split(a, 6, 5, s, &rng), FL_EINVAL);
}
