/* Tensor encodings (common/codec.c): float16 conversions against a reference and over every
 * half, round trips within each encoding's error bound, stochastic rounding unbiased,
 * top-k exact, chunks that tile the tensor within their byte budget, and every malformed
 * chunk refused before it is read. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "error.h"
#include "rng.h"

/* The half nearest to f (ties to even), computed in double from the candidates. */
static uint16_t ref_f16(float f) {
  double v = fabs((double)f);
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  if (isnan(f)) return sign | 0x7e00;
  uint16_t best = 0x7c00;
  double bestd = INFINITY;
  for (uint32_t h = 0; h < 0x7c00; h++) { /* every finite non-negative half */
    double d = fabs((double)fl_f16_to_f32((uint16_t)h) - v);
    if (d < bestd || (d == bestd && !(h & 1))) best = (uint16_t)h, bestd = d;
  }
  if (v >= 65520.0) best = 0x7c00;
  return sign | best;
}

Test(codec, f16_every_half_round_trips_and_rounding_is_nearest_even) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = fl_f16_to_f32((uint16_t)h);
    if (isnan(f)) continue;
    cr_assert_eq(fl_f32_to_f16(f), h, "half %04x -> %g -> %04x", h, (double)f, fl_f32_to_f16(f));
  }
  fl_rng r;
  fl_rng_seed(&r, 5);
  const float special[] = {65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.9802322e-8f, 5.9604645e-8f,
                           6.1035156e-05f, 6.0975552e-05f, 0.1f, -3.14159f, 1.0009765625f};
  for (size_t i = 0; i < sizeof special / sizeof *special; i++)
    cr_assert_eq(fl_f32_to_f16(special[i]), ref_f16(special[i]), "%.9g", (double)special[i]);
  for (int i = 0; i < 300; i++) {
    float f = (fl_rng_uniform(&r) - 0.5f) * powf(2.0f, (float)(int)fl_rng_below(&r, 40) - 28);
    cr_assert_eq(fl_f32_to_f16(f), ref_f16(f), "%.9g", (double)f);
  }
}

static fl_codec codec(const char *spec) {
  fl_codec c;
  char err[256];
  cr_assert_eq(fl_codec_parse(spec, &c, err, sizeof err), 0, "%s", err);
  return c;
}

/* Encodes x through the codec and decodes it back; checks the chunks on the way. */
static void round_trip(const char *spec, const float *x, size_t n, uint32_t chunk_bytes,
                       float *out, uint64_t seed) {
  fl_codec c = codec(spec);
  fl_encoder e;
  cr_assert_eq(fl_encoder_init(&e, &c, x, n, chunk_bytes, seed), 0);
  fl_decoder d;
  fl_decoder_init(&d, c.enc, n, c.enc == FL_ENC_TOPK ? fl_codec_topk_count(&c, n) : 0);
  uint8_t *buf = malloc(chunk_bytes);
  fl_chunk ch;
  int rc, done = 0;
  uint64_t chunks = 0;
  char err[256];
  for (size_t i = 0; i < n; i++) out[i] = NAN;
  while ((rc = fl_encoder_next(&e, &ch, buf)) == 1) {
    cr_assert_leq(ch.len, chunk_bytes);
    cr_assert(!done, "%s: chunk after completion", spec);
    int got = fl_decoder_check(&d, &ch, err, sizeof err);
    cr_assert_geq(got, 0, "%s: %s", spec, err);
    done = got;
    fl_chunk_decode(&ch, out);
    chunks++;
  }
  cr_assert_eq(rc, 0);
  cr_assert(done, "%s: never complete", spec);
  cr_assert_geq(chunks, 1);
  free(buf);
}

#define N 10007

Test(codec, round_trips_within_each_bound) {
  static float x[N], y[N];
  fl_rng r;
  fl_rng_seed(&r, 1);
  for (int i = 0; i < N; i++) x[i] = fl_rng_normal(&r) * 0.01f * (1 + i % 7);
  round_trip("float32", x, N, 4096, y, 1);
  cr_assert(memcmp(x, y, sizeof x) == 0, "float32 is not exact");
  round_trip("float16", x, N, 4096, y, 1);
  for (int i = 0; i < N; i++)
    if (fabsf(x[i]) >= 6.103515625e-05f) /* the normal half range */
      cr_assert_leq(fabsf(y[i] - x[i]), ldexpf(fabsf(x[i]), -11), "float16 at %d: %g vs %g", i,
                    (double)y[i], (double)x[i]);
  /* int8: within half a quantisation step of its chunk. */
  uint32_t cb = 1000;
  round_trip("int8", x, N, cb, y, 1);
  for (int c0 = 0; c0 < N; c0 += (int)cb) {
    int c1 = c0 + (int)cb < N ? c0 + (int)cb : N;
    float lo = x[c0], hi = x[c0];
    for (int i = c0; i < c1; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
    float step = (hi - lo) / 255;
    for (int i = c0; i < c1; i++)
      cr_assert_leq(fabsf(y[i] - x[i]), step / 2 * (1 + 1e-5f) + 1e-12f, "int8 at %d", i);
  }
  /* topk 1 %: exactly ceil(n / 100) values, the largest, exact; the rest 0. */
  round_trip("topk:0.01", x, N, 4096, y, 1);
  size_t sent = 0;
  float smallest_sent = INFINITY, largest_unsent = 0;
  for (int i = 0; i < N; i++) {
    if (y[i] != 0) {
      cr_assert_eq(y[i], x[i]);
      sent++;
      smallest_sent = fminf(smallest_sent, fabsf(x[i]));
    } else {
      largest_unsent = fmaxf(largest_unsent, fabsf(x[i]));
    }
  }
  cr_assert_eq(sent, (N + 99) / 100);
  cr_assert_geq(smallest_sent, largest_unsent);
}

Test(codec, stochastic_int8_is_unbiased) {
  /* A chunk of 0, 1 and values between: the mean of many stochastic roundings converges
   * to the value, where nearest rounding stays off by up to half a step. */
  float x[8] = {0, 1, 0.1f, 0.3337f, 0.5f, 0.77f, 0.9f, 0.0041f}, y[8];
  double mean[8] = {0};
  const int trials = 20000;
  for (int t = 0; t < trials; t++) {
    round_trip("int8:stochastic", x, 8, 64, y, (uint64_t)t + 1);
    for (int i = 0; i < 8; i++) {
      cr_assert_leq(fabsf(y[i] - x[i]), 1.0f / 255 + 1e-6f);
      mean[i] += y[i];
    }
  }
  for (int i = 0; i < 8; i++) {
    mean[i] /= trials;
    /* the standard error of the mean is below (1/255) / 2 / sqrt(trials) = 1.4e-5 */
    cr_assert_lt(fabs(mean[i] - x[i]), 8e-5, "value %g: mean %.7f", (double)x[i], mean[i]);
  }
}

Test(codec, topk_ties_constant_and_empty) {
  float x[10] = {1, -1, 1, 0.5f, 1, 0, 0, -1, 0.2f, 1}, y[10];
  round_trip("topk:0.3", x, 10, 16, y, 1); /* 3 of six tied at magnitude 1: the first three */
  cr_assert(y[0] == 1 && y[1] == -1 && y[2] == 1);
  for (int i = 3; i < 10; i++) cr_assert_eq(y[i], 0);
  float c[5] = {2, 2, 2, 2, 2};
  round_trip("int8", c, 5, 64, y, 1);
  for (int i = 0; i < 5; i++) cr_assert_eq(y[i], 2);
  for (int e = 0; e < FL_ENC_COUNT; e++) { /* an empty tensor is one empty chunk */
    const char *specs[] = {"float32", "float16", "int8", "topk:0.5"};
    round_trip(specs[e], NULL, 0, 64, y, 1);
  }
}

Test(codec, axpy_adds_what_decode_gives) {
  static float x[N], y[N];
  static double sum[N];
  fl_rng r;
  fl_rng_seed(&r, 2);
  for (int i = 0; i < N; i++) x[i] = fl_rng_normal(&r);
  const char *specs[] = {"float32", "float16", "int8", "topk:0.05"};
  for (int s = 0; s < 4; s++) {
    fl_codec c = codec(specs[s]);
    fl_encoder e;
    cr_assert_eq(fl_encoder_init(&e, &c, x, N, 2048, 3), 0);
    uint8_t buf[2048];
    fl_chunk ch;
    for (int i = 0; i < N; i++) sum[i] = 1;
    while (fl_encoder_next(&e, &ch, buf) == 1) {
      fl_chunk_decode(&ch, y);
      fl_chunk_axpy(&ch, 2.5, sum);
    }
    for (int i = 0; i < N; i++)
      cr_assert_eq(sum[i], 1 + 2.5 * (double)y[i], "%s at %d", specs[s], i);
  }
}

/* The norm of stored records (the server's norm bound) is the norm of what they decode
 * to: int8's is summed from exact integer sums, the others in four lanes. */
Test(codec, records_sumsq_is_the_decoded_sum_of_squares) {
  static float x[N], y[N];
  static uint8_t recs[N * 8 + 64 * FL_CHUNK_RECORD_HEAD];
  fl_rng r;
  fl_rng_seed(&r, 4);
  for (int i = 0; i < N; i++) x[i] = fl_rng_normal(&r) * 0.02f + 0.003f;
  const char *specs[] = {"float32", "float16", "int8", "int8:stochastic", "topk:0.05"};
  for (int s = 0; s < 5; s++) {
    fl_codec c = codec(specs[s]);
    fl_encoder e;
    cr_assert_eq(fl_encoder_init(&e, &c, x, N, 1000, 3), 0);
    uint8_t buf[8000];
    fl_chunk ch;
    size_t len = 0;
    memset(y, 0, sizeof y);
    while (fl_encoder_next(&e, &ch, buf) == 1) {
      cr_assert_leq(len + fl_chunk_record_size(&ch), sizeof recs);
      fl_chunk_record_put(&ch, recs + len);
      len += fl_chunk_record_size(&ch);
      fl_chunk_decode(&ch, y);
    }
    double want = 0;
    for (int i = 0; i < N; i++) want += (double)y[i] * y[i];
    double got = fl_records_sumsq(recs, len, c.enc, N);
    /* int8's decoded values are rounded to float (2^-24 relatively); its sums are not */
    double tol = c.enc == FL_ENC_INT8 ? 1e-6 : 1e-12;
    cr_assert(want > 0 && fabs(got - want) <= tol * want, "%s: %.12g vs decoded %.12g",
              specs[s], got, want);
  }
}

Test(codec, encoder_refuses_what_it_cannot_carry) {
  float big[3] = {1, 70000, 2}, inf[2] = {1, INFINITY};
  fl_codec c = codec("float16");
  fl_encoder e;
  uint8_t buf[64];
  fl_chunk ch;
  cr_assert_eq(fl_encoder_init(&e, &c, big, 3, 64, 1), 0);
  cr_assert_eq(fl_encoder_next(&e, &ch, buf), FL_ERANGE);
  c = codec("int8");
  cr_assert_eq(fl_encoder_init(&e, &c, inf, 2, 64, 1), 0);
  cr_assert_eq(fl_encoder_next(&e, &ch, buf), FL_ERANGE);
  c = codec("topk:0.5");
  cr_assert_eq(fl_encoder_init(&e, &c, inf, 2, 64, 1), FL_ERANGE);
}

static void bad(const char *spec, const char *needle) {
  fl_codec c;
  char err[256];
  cr_assert_eq(fl_codec_parse(spec, &c, err, sizeof err), FL_ECONFIG, "%s accepted", spec);
  cr_assert(strstr(err, needle), "%s: %s", spec, err);
}

Test(codec, specs) {
  bad("int4", "unknown encoding 'int4'");
  bad("topk", "topk needs the fraction");
  bad("topk:0", "above 0 and at most 1");
  bad("topk:1.5", "above 0 and at most 1");
  bad("int8:fast", "only ':stochastic'");
  bad("float16:2", "takes no parameter");
  fl_codec c = codec("topk:0.01");
  char out[64];
  fl_codec_format(&c, out, sizeof out);
  cr_assert_str_eq(out, "topk:0.01");
  cr_assert_eq(fl_codec_topk_count(&c, 199210), 1993);
  cr_assert_eq(fl_codec_max_bytes(&c, 199210), 8 * 1993);
  c = codec("int8:stochastic");
  cr_assert(c.stochastic);
}

/* Each malformed chunk is refused with its reason, before anything reads it. */
static void refused(fl_decoder *d, fl_chunk ch, int code, const char *needle) {
  char err[256] = "";
  fl_decoder before = *d;
  cr_assert_eq(fl_decoder_check(d, &ch, err, sizeof err), code, "accepted: wanted '%s'", needle);
  cr_assert(strstr(err, needle), "'%s' lacks '%s'", err, needle);
  *d = before;
}

Test(codec, decoder_refuses_malformed_chunks) {
  uint8_t b[64] = {0};
  fl_decoder d;
  fl_decoder_init(&d, FL_ENC_FLOAT32, 10, 0);
  refused(&d, (fl_chunk){FL_ENC_FLOAT16, 0, 2, 10, 0, 0, b, 4}, FL_EPROTO, "expected float32");
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 0, 2, 11, 0, 0, b, 8}, FL_EPROTO, "announces 11 values");
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 1, 2, 10, 0, 0, b, 8}, FL_EPROTO, "offset 1, expected 0");
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 0, 0, 10, 0, 0, b, 0}, FL_EPROTO, "covers 0 values");
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 0, 11, 10, 0, 0, b, 44}, FL_EPROTO, "covers 11 values");
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 0, 2, 10, 0, 0, b, 7}, FL_EPROTO, "expected 8");
  float nan = NAN;
  memcpy(b + 4, &nan, 4);
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 0, 2, 10, 0, 0, b, 8}, FL_ENONFINITE, "value 1 is not finite");
  memset(b, 0, sizeof b);
  cr_assert_eq(fl_decoder_check(&d, &(fl_chunk){FL_ENC_FLOAT32, 0, 10, 10, 0, 0, b, 40}, NULL, 0), 1);
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 10, 1, 10, 0, 0, b, 4}, FL_EPROTO, "after the tensor was complete");

  fl_decoder_init(&d, FL_ENC_FLOAT16, 4, 0);
  b[1] = 0x7c; /* +inf as a half */
  refused(&d, (fl_chunk){FL_ENC_FLOAT16, 0, 4, 4, 0, 0, b, 8}, FL_ENONFINITE, "value 0 is not finite");
  memset(b, 0, sizeof b);
  fl_decoder_init(&d, FL_ENC_INT8, 4, 0);
  refused(&d, (fl_chunk){FL_ENC_INT8, 0, 4, 4, NAN, 0, b, 4}, FL_ENONFINITE, "do not give finite");
  refused(&d, (fl_chunk){FL_ENC_INT8, 0, 4, 4, 3e38f, 0, b, 4}, FL_ENONFINITE, "do not give finite");
  refused(&d, (fl_chunk){FL_ENC_INT8, 0, 4, 4, -1, 0, b, 4}, FL_ENONFINITE, "do not give finite");

  /* topk pairs: index 5 then 3 (out of order), then beyond the range, then too many. */
  fl_decoder_init(&d, FL_ENC_TOPK, 100, 2);
  uint8_t p[32] = {5, 0, 0, 0, 0, 0, 128, 63, 3, 0, 0, 0, 0, 0, 128, 63};
  refused(&d, (fl_chunk){FL_ENC_TOPK, 0, 10, 100, 0, 0, p, 16}, FL_EPROTO, "out of order");
  p[8] = 12;
  refused(&d, (fl_chunk){FL_ENC_TOPK, 0, 10, 100, 0, 0, p, 16}, FL_EPROTO, "outside [0, 10)");
  refused(&d, (fl_chunk){FL_ENC_TOPK, 0, 10, 100, 0, 0, p, 15}, FL_EPROTO, "not whole pairs");
  p[8] = 7;
  p[16] = 8;
  p[22] = 128, p[23] = 63;
  refused(&d, (fl_chunk){FL_ENC_TOPK, 0, 10, 100, 0, 0, p, 24}, FL_EPROTO, "more than the 2 topk pairs");
  p[12] = 0, p[13] = 0, p[14] = 0xc0, p[15] = 0x7f; /* NaN */
  refused(&d, (fl_chunk){FL_ENC_TOPK, 0, 10, 100, 0, 0, p, 16}, FL_ENONFINITE, "value 7 is not finite");
}

/* Frozen runs left out (fl_encoder_skip, fl_decoder_skip): one at the start, two that
 * touch in the middle and one at the end.  In every encoding the chunks cover exactly the
 * other positions, in order, within their byte budget and without reaching into a run;
 * the decoder, told the same runs, takes them all and completes on the last; the records
 * decode to 0 over the runs; and float32 carries the other values exactly. */
Test(codec, chunks_leave_the_runs_out) {
  enum { M = 1000 };
  static float x[M], y[M];
  const uint64_t at[] = {0, 7, 100, 300, 300, 301, 950, M};
  const fl_runs runs = {at, 4};
  fl_rng r;
  fl_rng_seed(&r, 3);
  for (int i = 0; i < M; i++) x[i] = 1.0f + fl_rng_uniform(&r); /* none is 0 */
  for (int k = 0; k < 4; k++)
    for (uint64_t i = at[2 * k]; i < at[2 * k + 1]; i++) x[i] = 0.0f;
  cr_assert(fl_runs_zero(&runs, x));
  cr_assert_eq(fl_runs_end(&runs, M), 950);
  const char *specs[] = {"float32", "float16", "int8", "topk:0.5"};
  for (size_t s = 0; s < sizeof specs / sizeof *specs; s++) {
    fl_codec c = codec(specs[s]);
    fl_encoder e;
    cr_assert_eq(fl_encoder_init(&e, &c, x, M, 48, 1), 0);
    fl_encoder_skip(&e, &runs);
    fl_decoder d;
    fl_decoder_init(&d, c.enc, M, c.enc == FL_ENC_TOPK ? fl_codec_topk_count(&c, M) : 0);
    fl_decoder_skip(&d, &runs);
    uint8_t buf[48], recs[65536];
    size_t len = 0;
    uint64_t covered = 0, expect = 7;
    fl_chunk ch;
    int rc, done = 0;
    char err[256];
    while ((rc = fl_encoder_next(&e, &ch, buf)) == 1) {
      cr_assert(!done, "%s: chunk after completion", specs[s]);
      cr_assert_eq(ch.offset, expect, "%s: chunk at %llu", specs[s], (unsigned long long)ch.offset);
      for (int k = 0; k < 4; k++)
        cr_assert(ch.offset + ch.count <= at[2 * k] || ch.offset >= at[2 * k + 1],
                  "%s: chunk [%llu, +%llu) reaches into run %d", specs[s],
                  (unsigned long long)ch.offset, (unsigned long long)ch.count, k);
      done = fl_decoder_check(&d, &ch, err, sizeof err);
      cr_assert_geq(done, 0, "%s: %s", specs[s], err);
      covered += ch.count;
      expect = ch.offset + ch.count;
      expect = expect == 100 ? 301 : expect == 950 ? M : expect;
      cr_assert_leq(len + fl_chunk_record_size(&ch), sizeof recs);
      fl_chunk_record_put(&ch, recs + len);
      len += fl_chunk_record_size(&ch);
    }
    cr_assert_eq(rc, 0);
    cr_assert(done, "%s: never complete", specs[s]);
    cr_assert_eq(covered, M - 7 - 201 - 50, "%s", specs[s]);
    for (int i = 0; i < M; i++) y[i] = 7.0f;
    fl_records_decode(recs, len, c.enc, M, y);
    for (int k = 0; k < 4; k++)
      for (uint64_t i = at[2 * k]; i < at[2 * k + 1]; i++)
        cr_assert_eq(y[i], 0.0f, "%s: %g at %llu", specs[s], (double)y[i], (unsigned long long)i);
    if (c.enc == FL_ENC_FLOAT32) cr_assert(memcmp(x, y, sizeof x) == 0, "float32 is not exact");
  }
}

/* Split at the runs, an encoder sends every position, no chunk crosses a run's bound, and
 * the chunks outside the runs are, byte for byte, the ones that leave the runs out (for
 * int8 their scales and zero points too): the stream that skips the runs is the split
 * one without its chunks inside them.  (Runs of nonzero values here: what is split at
 * need not be zero.) */
Test(codec, chunks_split_at_the_runs) {
  enum { M = 1000 };
  static float x[M];
  const uint64_t at[] = {0, 7, 100, 300, 300, 301, 950, M};
  const fl_runs runs = {at, 4};
  fl_rng r;
  fl_rng_seed(&r, 4);
  for (int i = 0; i < M; i++) x[i] = fl_rng_uniform(&r) - 0.5f;
  const char *specs[] = {"float32", "float16", "int8"};
  for (size_t s = 0; s < sizeof specs / sizeof *specs; s++) {
    fl_codec c = codec(specs[s]);
    fl_encoder split, skip;
    cr_assert_eq(fl_encoder_init(&split, &c, x, M, 48, 1), 0);
    cr_assert_eq(fl_encoder_init(&skip, &c, x, M, 48, 1), 0);
    fl_encoder_split(&split, &runs);
    fl_encoder_skip(&skip, &runs);
    fl_decoder d;
    fl_decoder_init(&d, c.enc, M, 0);
    uint8_t a[48], b[48];
    fl_chunk ch, sk;
    uint64_t expect = 0, inside = 0;
    int rc, done = 0;
    char err[256];
    while ((rc = fl_encoder_next(&split, &ch, a)) == 1) {
      cr_assert_eq(ch.offset, expect, "%s: chunk at %llu", specs[s], (unsigned long long)ch.offset);
      int in = 0;
      for (int k = 0; k < 4; k++) {
        cr_assert(ch.offset + ch.count <= at[2 * k] || ch.offset >= at[2 * k + 1] ||
                      (ch.offset >= at[2 * k] && ch.offset + ch.count <= at[2 * k + 1]),
                  "%s: chunk [%llu, +%llu) crosses a bound of run %d", specs[s],
                  (unsigned long long)ch.offset, (unsigned long long)ch.count, k);
        in |= ch.offset >= at[2 * k] && ch.offset < at[2 * k + 1];
      }
      done = fl_decoder_check(&d, &ch, err, sizeof err);
      cr_assert_geq(done, 0, "%s: %s", specs[s], err);
      expect = ch.offset + ch.count;
      if (in) {
        inside += ch.count;
        continue;
      }
      cr_assert_eq(fl_encoder_next(&skip, &sk, b), 1, "%s: the skipping stream ended first",
                   specs[s]);
      cr_assert(sk.offset == ch.offset && sk.count == ch.count && sk.len == ch.len &&
                    memcmp(a, b, ch.len) == 0 && sk.scale == ch.scale && sk.zero == ch.zero,
                "%s: the chunk at %llu differs from the skipping stream's", specs[s],
                (unsigned long long)ch.offset);
    }
    cr_assert_eq(rc, 0);
    cr_assert(done, "%s: never complete", specs[s]);
    cr_assert_eq(inside, 7 + 201 + 50, "%s", specs[s]);
    cr_assert_eq(fl_encoder_next(&skip, &sk, b), 0, "%s: the skipping stream has more", specs[s]);
  }
}

/* A tensor its runs leave nothing of is one empty chunk at its end. */
Test(codec, a_tensor_all_left_out_is_one_empty_chunk) {
  const uint64_t at[] = {0, 4, 4, 10};
  const fl_runs runs = {at, 2};
  float x[10] = {0};
  fl_codec c = codec("int8");
  fl_encoder e;
  cr_assert_eq(fl_encoder_init(&e, &c, x, 10, 64, 1), 0);
  fl_encoder_skip(&e, &runs);
  fl_decoder d;
  fl_decoder_init(&d, c.enc, 10, 0);
  fl_decoder_skip(&d, &runs);
  uint8_t buf[64];
  fl_chunk ch;
  cr_assert_eq(fl_encoder_next(&e, &ch, buf), 1);
  cr_assert(ch.offset == 10 && ch.count == 0 && ch.len == 0);
  cr_assert_eq(fl_decoder_check(&d, &ch, NULL, 0), 1);
  cr_assert_eq(fl_encoder_next(&e, &ch, buf), 0);
  cr_assert_eq(fl_runs_end(&runs, 10), 0);
}

/* A decoder told the runs refuses a whole stream, a chunk reaching into a run, and a
 * chunk that skips more than a run; bad runs from a peer are named. */
Test(codec, runs_are_checked) {
  uint8_t b[64] = {0};
  const uint64_t at[] = {0, 2, 6, 8};
  const fl_runs runs = {at, 2};
  fl_decoder d;
  fl_decoder_init(&d, FL_ENC_FLOAT32, 10, 0);
  fl_decoder_skip(&d, &runs);
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 0, 10, 10, 0, 0, b, 40}, FL_EPROTO, "offset 0, expected 2");
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 2, 5, 10, 0, 0, b, 20}, FL_EPROTO,
          "covers 5 values at 2, into the positions left out from 6");
  cr_assert_eq(fl_decoder_check(&d, &(fl_chunk){FL_ENC_FLOAT32, 2, 4, 10, 0, 0, b, 16}, NULL, 0), 0);
  refused(&d, (fl_chunk){FL_ENC_FLOAT32, 9, 1, 10, 0, 0, b, 4}, FL_EPROTO, "offset 9, expected 8");
  cr_assert_eq(fl_decoder_check(&d, &(fl_chunk){FL_ENC_FLOAT32, 8, 2, 10, 0, 0, b, 8}, NULL, 0), 1);

  char err[256];
  const uint64_t odd[] = {0, 2, 4}, empty[] = {3, 3}, back[] = {4, 6, 5, 7}, past[] = {8, 11};
  cr_assert_eq(fl_runs_check(odd, 3, 10, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "3 run bounds"), "%s", err);
  cr_assert_eq(fl_runs_check(empty, 2, 10, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "run [3, 3)"), "%s", err);
  cr_assert_eq(fl_runs_check(back, 4, 10, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "run [5, 7)"), "%s", err);
  cr_assert_eq(fl_runs_check(past, 2, 10, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "beyond the 10 values"), "%s", err);
  cr_assert_eq(fl_runs_check(at, 4, 10, err, sizeof err), 0);

  const float mask[10] = {1, 1, 0, 0, 1, 0, 1, 1, 1, 1};
  uint64_t *got;
  size_t n;
  cr_assert_eq(fl_runs_of_mask(mask, 10, &got, &n), 0);
  cr_assert_eq(n, 3);
  const uint64_t want[] = {0, 2, 4, 5, 6, 10};
  cr_assert(memcmp(got, want, sizeof want) == 0);
  free(got);
  cr_assert_eq(fl_runs_of_mask(mask + 2, 2, &got, &n), 0);
  cr_assert(n == 0 && got == NULL);
}
