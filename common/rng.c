/* Seeded random numbers: xoshiro256** seeded through splitmix64 (see rng.h). */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void fl_rng_seed(fl_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

uint64_t fl_seed_mix(uint64_t seed, uint64_t stream) {
  uint64_t x = seed ^ (stream * 0xd1342543de82ef95ULL + 0x2545f4914f6cdd1dULL);
  return splitmix64(&x);
}

void fl_rng_seed2(fl_rng *r, uint64_t seed, uint64_t stream) {
  fl_rng_seed(r, fl_seed_mix(seed, stream));
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t fl_rng_u64(fl_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

uint64_t fl_rng_below(fl_rng *r, uint64_t n) {
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = fl_rng_u64(r); while (x >= limit);
  return x % n;
}

float fl_rng_uniform(fl_rng *r) { return (float)(fl_rng_u64(r) >> 40) * 0x1.0p-24f; }

static double uniform_open(fl_rng *r) { /* (0, 1) */
  return ((double)(fl_rng_u64(r) >> 11) + 0.5) * 0x1.0p-53;
}

float fl_rng_normal(fl_rng *r) {
  double u1 = uniform_open(r), u2 = uniform_open(r);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

double fl_rng_gamma(fl_rng *r, double shape) {
  if (shape < 1.0) { /* boost: Gamma(a) = Gamma(a + 1) * U^(1/a) */
    double g = fl_rng_gamma(r, shape + 1.0);
    return g * pow(uniform_open(r), 1.0 / shape);
  }
  double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = fl_rng_normal(r);
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    double u = uniform_open(r);
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v;
  }
}

void fl_rng_shuffle_u32(fl_rng *r, uint32_t *a, size_t n) {
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)fl_rng_below(r, i);
    uint32_t t = a[i - 1];
    a[i - 1] = a[j];
    a[j] = t;
  }
}
