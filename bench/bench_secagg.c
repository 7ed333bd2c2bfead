/* Secure aggregation's two costly primitives, per CPU second of this thread: an X25519 key
 * agreement with its HKDF (fl_x25519_derive, what a client does 2k + 2 times a round with
 * k neighbours) and a mask expansion over a 2nn-sized input (fl_prg_mask, ChaCha20 over
 * 199,211 ring elements, k + 1 times a round), and what they make per client and round
 * for SecAgg with 99 neighbours and SecAgg+ with 40.  Best of several trials.  No target:
 * these are the figures behind bench-privacy's round times (README, Figures). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "agree.h"
#include "csprng.h"
#include "prg.h"

#define TRIALS 5
#define AGREEMENTS 200
#define MASKS 20
#define DIM 199211 /* a 2nn update (199,210 parameters) and its weight */

static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void) {
  fl_csprng rng;
  fl_x25519 a, b;
  if (fl_csprng_init(&rng, "bench secagg") || fl_x25519_generate(&a, &rng) ||
      fl_x25519_generate(&b, &rng)) {
    fprintf(stderr, "bench-secagg: cannot make key pairs\n");
    return 1;
  }
  fl_csprng_free(&rng);
  uint32_t *v = calloc(DIM, sizeof *v);
  if (!v) {
    fprintf(stderr, "bench-secagg: out of memory\n");
    return 1;
  }
  double agree = 1e9, mask = 1e9;
  uint8_t key[32] = {0};
  for (int t = 0; t < TRIALS; t++) {
    double t0 = thread_cpu_s();
    for (int i = 0; i < AGREEMENTS; i++) {
      if (fl_x25519_derive(a.secret, b.pub, (const uint8_t *)"bench", 5, key)) {
        fprintf(stderr, "bench-secagg: key agreement failed\n");
        return 1;
      }
      a.secret[0] ^= key[0] & 0xf8; /* a different secret each time, kept a valid scalar */
    }
    double t1 = thread_cpu_s();
    for (int i = 0; i < MASKS; i++) fl_prg_mask(key, 0, v, DIM, 32, i % 2 ? -1 : 1);
    double t2 = thread_cpu_s();
    if ((t1 - t0) / AGREEMENTS < agree) agree = (t1 - t0) / AGREEMENTS;
    if ((t2 - t1) / MASKS < mask) mask = (t2 - t1) / MASKS;
  }
  printf("Secure aggregation's primitives, CPU of one thread, best of %d\n", TRIALS);
  printf("  X25519 key agreement + HKDF (fl_x25519_derive)     %8.3f ms\n", 1e3 * agree);
  printf("  mask expansion, %d ring elements (fl_prg_mask)  %8.3f ms\n", DIM, 1e3 * mask);
  const int neighbours[] = {99, 40}; /* SecAgg of 100 clients; SecAgg+ of bench-privacy */
  for (size_t i = 0; i < sizeof neighbours / sizeof neighbours[0]; i++) {
    int k = neighbours[i];
    printf("  per client and round, %2d neighbours: %3d agreements + %3d masks = %6.3f s\n", k,
           2 * k + 2, k + 1, (2 * k + 2) * agree + (k + 1) * mask);
  }
  /* An even number of masks from one seed, signs alternating: they cancel, as a pair of
   * neighbours' masks do in the sum. */
  for (size_t i = 0; i < DIM; i++)
    if (v[i]) {
      fprintf(stderr, "bench-secagg: masks of one seed with opposite signs did not cancel\n");
      return 1;
    }
  free(v);
  return 0;
}
