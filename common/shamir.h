/* Shamir's t-of-n secret sharing of 32-byte secrets over the prime field of p = 2^61 - 1.
 *
 * A secret is cut into five 56-bit limbs; each limb is the constant term of its own random
 * polynomial of degree t - 1, and a share is the five polynomials' values at the share's
 * x (1, 2, ...).  Any t shares with distinct x give the secret back (Lagrange interpolation
 * at 0); fewer give no information about it.  Shares from a peer are untrusted: combine
 * refuses values outside the field and duplicate x, and a reconstruction whose limbs do
 * not fit 56 bits (a wrong share) is refused; one that fits may still be wrong, which the
 * caller detects with what it knows of the secret (a public key, a commitment). */
#ifndef FL_SHAMIR_H
#define FL_SHAMIR_H

#include <stddef.h>
#include <stdint.h>

#include "csprng.h"

#define FL_SHAMIR_LIMBS 5
#define FL_SHAMIR_P ((1ULL << 61) - 1)

typedef struct fl_share {
  uint64_t x;                       /* 1 .. p-1 */
  uint64_t y[FL_SHAMIR_LIMBS];      /* < p */
} fl_share;

/* shares[i] gets x = i + 1, for i < n; 1 <= t <= n < p.  0, FL_EINVAL or FL_EIO. */
int fl_shamir_split(const uint8_t secret[32], int t, int n, fl_share *shares, fl_csprng *rng);
/* The same at chosen points: shares[i] gets x = xs[i] (distinct, 1 .. p-1), i < m. */
int fl_shamir_split_at(const uint8_t secret[32], int t, const uint64_t *xs, int m, fl_share *shares,
                       fl_csprng *rng);
/* The secret from k shares (k at least the threshold they were made with; with fewer the
 * result is wrong or refused).  0, or FL_EINVAL (x = 0, duplicate x, y outside the field,
 * k < 1) or FL_EFORMAT (the result does not fit: a wrong share). */
int fl_shamir_combine(const fl_share *shares, int k, uint8_t secret[32]);

#endif
