/* Key agreement between clients (common/agree.c) and masks (common/prg.c): both sides of a
 * pair derive the same key, another label gives another; sealed messages open only with
 * the right key and associated data; a small-order peer key is refused; pairwise masks
 * cancel in the sum, in any chunking, in Z_2^32 and Z_2^16. */
#include <criterion/criterion.h>
#include <string.h>

#include "agree.h"
#include "error.h"
#include "prg.h"

Test(agree, both_sides_derive_the_same_key) {
  fl_csprng rng;
  cr_assert_eq(fl_csprng_init(&rng, "test"), 0);
  fl_x25519 a, b;
  cr_assert_eq(fl_x25519_generate(&a, &rng), 0);
  cr_assert_eq(fl_x25519_generate(&b, &rng), 0);
  uint8_t pub[32];
  cr_assert_eq(fl_x25519_public(a.secret, pub), 0);
  cr_assert(memcmp(pub, a.pub, 32) == 0, "public key from the secret differs");
  uint8_t k1[32], k2[32], k3[32];
  const uint8_t label[] = "round 7 mask", other[] = "round 8 mask";
  cr_assert_eq(fl_x25519_derive(a.secret, b.pub, label, sizeof label, k1), 0);
  cr_assert_eq(fl_x25519_derive(b.secret, a.pub, label, sizeof label, k2), 0);
  cr_assert(memcmp(k1, k2, 32) == 0);
  cr_assert_eq(fl_x25519_derive(a.secret, b.pub, other, sizeof other, k3), 0);
  cr_assert(memcmp(k1, k3, 32) != 0);
  uint8_t zero[32] = {0}; /* a small-order point: the shared secret would be 0 */
  cr_assert_eq(fl_x25519_derive(a.secret, zero, label, sizeof label, k3), FL_EFORMAT);

  const uint8_t msg[] = "share of client-0007 for client-0003", ad[] = "r7:7->3";
  uint8_t sealed[sizeof msg + FL_SEAL_OVERHEAD], opened[sizeof msg];
  cr_assert_eq(fl_seal(k1, ad, sizeof ad, msg, sizeof msg, sealed), 0);
  cr_assert_eq(fl_open(k2, ad, sizeof ad, sealed, sizeof sealed, opened), 0);
  cr_assert(memcmp(opened, msg, sizeof msg) == 0);
  cr_assert_eq(fl_open(k3, ad, sizeof ad, sealed, sizeof sealed, opened), FL_ECHECKSUM);
  const uint8_t ad2[] = "r7:7->4";
  cr_assert_eq(fl_open(k2, ad2, sizeof ad2, sealed, sizeof sealed, opened), FL_ECHECKSUM);
  sealed[3] ^= 1;
  cr_assert_eq(fl_open(k2, ad, sizeof ad, sealed, sizeof sealed, opened), FL_ECHECKSUM);
  fl_csprng_free(&rng);
}

#define N 1000

Test(agree, pairwise_masks_cancel_in_any_chunking) {
  uint8_t seed[32], other[32];
  for (int i = 0; i < 32; i++) seed[i] = (uint8_t)(i * 7 + 1), other[i] = (uint8_t)(i * 13 + 5);
  for (int bits = 16; bits <= 32; bits += 16) {
    uint32_t keep = bits == 32 ? 0xffffffffu : 0xffffu;
    static uint32_t x[N], y[N], whole[N], pieces[N];
    for (int i = 0; i < N; i++) x[i] = (uint32_t)(i * 2654435761u) & keep, y[i] = (uint32_t)(i * 40503u) & keep;
    memcpy(whole, x, sizeof x);
    fl_prg_mask(seed, 0, whole, N, bits, +1);
    memcpy(pieces, x, sizeof x); /* the same stream taken in ragged pieces */
    for (size_t off = 0; off < N;) {
      size_t len = 1 + (off * 37) % 61;
      if (len > N - off) len = N - off;
      fl_prg_mask(seed, off, pieces + off, len, bits, +1);
      off += len;
    }
    cr_assert(memcmp(whole, pieces, sizeof whole) == 0, "%d bits: chunking changed the mask", bits);
    int changed = 0;
    for (int i = 0; i < N; i++) {
      changed += whole[i] != x[i];
      cr_assert_leq(whole[i], keep);
    }
    cr_assert_geq(changed, N - 2);
    /* Two clients: u adds the pair's stream, v subtracts it; the sum is x + y. */
    fl_prg_mask(other, 0, y, N, bits, -1);
    fl_prg_mask(other, 0, y, N, bits, +1); /* a mask and its removal */
    uint32_t u[N], v[N];
    memcpy(u, x, sizeof u);
    memcpy(v, y, sizeof v);
    fl_prg_mask(seed, 0, u, N, bits, +1);
    fl_prg_mask(seed, 0, v, N, bits, -1);
    for (int i = 0; i < N; i++) cr_assert_eq((u[i] + v[i]) & keep, (x[i] + y[i]) & keep);
  }
}
