/* Cryptographic random bytes (csprng.h). */
#include "csprng.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "error.h"

/* CTR-DRBG's entropy source: the kernel's generator. */
static int kernel_entropy(void *ctx, unsigned char *out, size_t len) {
  (void)ctx;
  while (len > 0) {
    ssize_t got = getrandom(out, len, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    out += got;
    len -= (size_t)got;
  }
  return 0;
}

int fl_csprng_init(fl_csprng *r, const char *label) {
  mbedtls_ctr_drbg_init(&r->drbg);
  const unsigned char *pers = (const unsigned char *)(label ? label : "fl");
  if (mbedtls_ctr_drbg_seed(&r->drbg, kernel_entropy, NULL, pers, strlen((const char *)pers)) != 0) {
    mbedtls_ctr_drbg_free(&r->drbg);
    return FL_EIO;
  }
  return 0;
}

int fl_csprng_bytes(fl_csprng *r, uint8_t *out, size_t len) {
  while (len > 0) { /* the DRBG gives at most MBEDTLS_CTR_DRBG_MAX_REQUEST at a time */
    size_t n = len < MBEDTLS_CTR_DRBG_MAX_REQUEST ? len : MBEDTLS_CTR_DRBG_MAX_REQUEST;
    if (mbedtls_ctr_drbg_random(&r->drbg, out, n) != 0) return FL_EIO;
    out += n;
    len -= n;
  }
  return 0;
}

int fl_csprng_mbedtls(void *p_rng, unsigned char *out, size_t len) {
  return fl_csprng_bytes(p_rng, out, len) ? -1 : 0;
}

void fl_csprng_free(fl_csprng *r) { mbedtls_ctr_drbg_free(&r->drbg); }
