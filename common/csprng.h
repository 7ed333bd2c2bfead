/* Cryptographic random bytes for the protocols that need secrets of their own (secure
 * aggregation's keys, masks and polynomials): mbedTLS's CTR-DRBG (AES-256), seeded from
 * the kernel (getrandom).  One generator per owner, no global state; a generator is not
 * thread-safe (give each thread its own). */
#ifndef FL_CSPRNG_H
#define FL_CSPRNG_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/ctr_drbg.h>

typedef struct fl_csprng {
  mbedtls_ctr_drbg_context drbg;
} fl_csprng;

/* Seeds from the kernel; label personalises the stream (may be NULL).  0 or FL_EIO. */
int fl_csprng_init(fl_csprng *r, const char *label);
/* 0 or FL_EIO. */
int fl_csprng_bytes(fl_csprng *r, uint8_t *out, size_t len);
void fl_csprng_free(fl_csprng *r);
/* The mbedTLS-style callback (p_rng is an fl_csprng). */
int fl_csprng_mbedtls(void *p_rng, unsigned char *out, size_t len);

#endif
