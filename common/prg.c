/* Seed expansion into ring elements (prg.h). */
#include "prg.h"

#include <string.h>

#include <mbedtls/chacha20.h>

#define BLOCK 64 /* ChaCha20 block: 16 words */

void fl_prg_mask(const uint8_t seed[32], uint64_t offset, uint32_t *v, size_t n, int bits, int sign) {
  uint32_t keep = bits >= 32 ? 0xffffffffu : (1u << bits) - 1;
  /* Element i is keystream word i: block i / 16, word i % 16 of it. */
  uint64_t block = offset / 16;
  size_t skip = (size_t)(offset % 16), done = 0;
  uint8_t nonce[12] = {0};
  uint8_t ks[BLOCK * 16];
  mbedtls_chacha20_context c;
  mbedtls_chacha20_init(&c);
  mbedtls_chacha20_setkey(&c, seed);
  while (done < n) {
    size_t words = sizeof ks / 4 - skip;
    if (words > n - done) words = n - done;
    size_t need = (skip + words + 15) / 16 * BLOCK;
    /* The block counter is 32 bits: streams longer than 2^36 elements would repeat, far
     * beyond any model. */
    mbedtls_chacha20_starts(&c, nonce, (uint32_t)block);
    memset(ks, 0, need);
    mbedtls_chacha20_update(&c, need, ks, ks);
    for (size_t i = 0; i < words; i++) {
      const uint8_t *p = ks + 4 * (skip + i);
      uint32_t w = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
      v[done + i] = (sign > 0 ? v[done + i] + w : v[done + i] - w) & keep;
    }
    done += words;
    block += (skip + words) / 16;
    skip = (skip + words) % 16;
  }
  mbedtls_chacha20_free(&c);
}
