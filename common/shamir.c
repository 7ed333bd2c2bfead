/* Shamir secret sharing over GF(2^61 - 1) (shamir.h). */
#include "shamir.h"

#include <string.h>

#include "error.h"

#define P FL_SHAMIR_P
#define LIMB_BYTES 7 /* 5 limbs of 56 bits hold 35 bytes >= 32 */

static uint64_t mod_p(unsigned __int128 v) {
  uint64_t lo = (uint64_t)(v & P), hi = (uint64_t)(v >> 61);
  uint64_t r = lo + (hi & P) + (hi >> 61);
  r = (r & P) + (r >> 61);
  return r >= P ? r - P : r;
}
static uint64_t add_p(uint64_t a, uint64_t b) { uint64_t r = a + b; return r >= P ? r - P : r; }
static uint64_t sub_p(uint64_t a, uint64_t b) { return a >= b ? a - b : a + P - b; }
static uint64_t mul_p(uint64_t a, uint64_t b) { return mod_p((unsigned __int128)a * b); }
static uint64_t pow_p(uint64_t a, uint64_t e) {
  uint64_t r = 1;
  for (; e; e >>= 1, a = mul_p(a, a))
    if (e & 1) r = mul_p(r, a);
  return r;
}
static uint64_t inv_p(uint64_t a) { return pow_p(a, P - 2); } /* Fermat */

/* A uniformly random field element (rejection sampling of 61-bit values). */
static int random_elem(fl_csprng *rng, uint64_t *out) {
  for (;;) {
    uint8_t b[8];
    if (fl_csprng_bytes(rng, b, sizeof b)) return FL_EIO;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)b[i] << (8 * i);
    v &= P;
    if (v < P) {
      *out = v;
      return 0;
    }
  }
}

int fl_shamir_split(const uint8_t secret[32], int t, int n, fl_share *shares, fl_csprng *rng) {
  if (t < 1 || n < t) return FL_EINVAL;
  for (int i = 0; i < n; i++) shares[i].x = (uint64_t)i + 1;
  return fl_shamir_split_at(secret, t, NULL, n, shares, rng);
}

int fl_shamir_split_at(const uint8_t secret[32], int t, const uint64_t *xs, int n, fl_share *shares,
                       fl_csprng *rng) {
  if (t < 1 || n < t) return FL_EINVAL;
  uint8_t padded[FL_SHAMIR_LIMBS * LIMB_BYTES] = {0};
  memcpy(padded, secret, 32);
  for (int i = 0; i < n; i++) {
    if (xs) shares[i].x = xs[i];
    if (shares[i].x == 0 || shares[i].x >= P) return FL_EINVAL;
    memset(shares[i].y, 0, sizeof shares[i].y);
  }
  for (int l = 0; l < FL_SHAMIR_LIMBS; l++) {
    uint64_t a0 = 0;
    for (int b = 0; b < LIMB_BYTES; b++) a0 |= (uint64_t)padded[l * LIMB_BYTES + b] << (8 * b);
    /* Horner's rule from the top coefficient down, for every x at once: y = a0 + x (a1 +
     * x (a2 + ...)).  Coefficients are drawn one at a time and never stored. */
    for (int i = 0; i < n; i++) shares[i].y[l] = 0;
    for (int d = t - 1; d >= 1; d--) {
      uint64_t a;
      int rc = random_elem(rng, &a);
      if (rc) return rc;
      for (int i = 0; i < n; i++) shares[i].y[l] = mul_p(add_p(shares[i].y[l], a), shares[i].x);
    }
    for (int i = 0; i < n; i++) shares[i].y[l] = add_p(shares[i].y[l], a0);
  }
  return 0;
}

int fl_shamir_combine(const fl_share *s, int k, uint8_t secret[32]) {
  if (k < 1) return FL_EINVAL;
  for (int i = 0; i < k; i++) {
    if (s[i].x == 0 || s[i].x >= P) return FL_EINVAL;
    for (int l = 0; l < FL_SHAMIR_LIMBS; l++)
      if (s[i].y[l] >= P) return FL_EINVAL;
    for (int j = 0; j < i; j++)
      if (s[j].x == s[i].x) return FL_EINVAL;
  }
  uint64_t acc[FL_SHAMIR_LIMBS] = {0};
  for (int i = 0; i < k; i++) { /* Lagrange basis at 0: prod x_j / (x_j - x_i) */
    uint64_t num = 1, den = 1;
    for (int j = 0; j < k; j++) {
      if (j == i) continue;
      num = mul_p(num, s[j].x);
      den = mul_p(den, sub_p(s[j].x, s[i].x));
    }
    uint64_t lambda = mul_p(num, inv_p(den));
    for (int l = 0; l < FL_SHAMIR_LIMBS; l++) acc[l] = add_p(acc[l], mul_p(s[i].y[l], lambda));
  }
  uint8_t padded[FL_SHAMIR_LIMBS * LIMB_BYTES] = {0};
  for (int l = 0; l < FL_SHAMIR_LIMBS; l++) {
    if (acc[l] >> (8 * LIMB_BYTES)) return FL_EFORMAT;
    for (int b = 0; b < LIMB_BYTES; b++) padded[l * LIMB_BYTES + b] = (uint8_t)(acc[l] >> (8 * b));
  }
  for (size_t b = 32; b < sizeof padded; b++)
    if (padded[b]) return FL_EFORMAT;
  memcpy(secret, padded, 32);
  return 0;
}
