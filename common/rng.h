/* A small seeded random generator of our own (xoshiro256**, seeded with splitmix64).
 *
 * No global state: each user owns an fl_rng, so results never depend on threads or on
 * the C library.  The same seed gives the same sequence on every machine. */
#ifndef FL_RNG_H
#define FL_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_rng { uint64_t s[4]; } fl_rng;

void fl_rng_seed(fl_rng *r, uint64_t seed);
/* An independent stream derived from a seed and a stream number (e.g. a client index). */
void fl_rng_seed2(fl_rng *r, uint64_t seed, uint64_t stream);
uint64_t fl_rng_u64(fl_rng *r);
/* Mixes a seed with a stream number into a new seed (e.g. a round's training seed with a
 * client's partition index), so related runs get unrelated random numbers. */
uint64_t fl_seed_mix(uint64_t seed, uint64_t stream);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t fl_rng_below(fl_rng *r, uint64_t n);
/* Uniform float in [0, 1). */
float fl_rng_uniform(fl_rng *r);
/* Standard normal (Box-Muller; no cached second value, so the state is the whole story). */
float fl_rng_normal(fl_rng *r);
/* Gamma(shape, 1) (Marsaglia-Tsang), for Dirichlet draws. */
double fl_rng_gamma(fl_rng *r, double shape);
/* Fisher-Yates shuffle of an array of n uint32_t. */
void fl_rng_shuffle_u32(fl_rng *r, uint32_t *a, size_t n);

#endif
