/* Tensor encodings (codec.h). */
#include "codec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kth.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* ---- little-endian fields ---- */

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void putf(uint8_t *p, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  put32(p, u);
}
static float getf(const uint8_t *p) {
  uint32_t u = get32(p);
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* ---- half floats ---- */

uint16_t fl_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00 : 0x7c00); /* NaN, inf */
  if (a >= 0x477ff000u) return sign | 0x7c00; /* 65520 and up round to infinity */
  if (a < 0x38800000u) { /* below 2^-14: a multiple of 2^-24, rounded to nearest even */
    float v;
    memcpy(&v, &a, 4);
    return sign | (uint16_t)lrintf(v * 16777216.0f); /* exact scaling; 1024 is 2^-14 itself */
  }
  uint32_t h = ((a >> 23) - 112) << 10 | (a >> 13 & 0x3ff), rest = a & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* a carry moves the exponent */
  return sign | (uint16_t)h;
}

float fl_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = h >> 10 & 0x1f, m = h & 0x3ff, bits;
  if (e == 0) {
    float v = (float)m * 5.9604644775390625e-8f; /* 2^-24 */
    return sign ? -v : v;
  }
  bits = e == 31 ? sign | 0x7f800000u | m << 13 : sign | (e + 112) << 23 | m << 13;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

#ifdef HAVE_X86
/* F16C and AVX on the CPU, and AVX state saved by the OS (cpuid leaf 1, xgetbv). */
static int have_f16c(void) {
  static int v = -1;
  if (v < 0) {
    unsigned a, b, c, d;
    v = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && (c & bit_AVX) && (c & bit_OSXSAVE)) {
      unsigned lo, hi;
      __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      v = (lo & 6) == 6;
    }
  }
  return v;
}

__attribute__((target("avx,f16c"))) static void f16_encode_x86(const float *x, uint8_t *out,
                                                               size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)(void *)(out + 2 * i), h); /* little-endian halves */
  }
  for (; i < n; i++) {
    uint16_t h = fl_f32_to_f16(x[i]);
    out[2 * i] = (uint8_t)h, out[2 * i + 1] = (uint8_t)(h >> 8);
  }
}

__attribute__((target("avx,f16c"))) static void f16_decode_x86(const uint8_t *in, float *dst,
                                                               size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i))));
  for (; i < n; i++) dst[i] = fl_f16_to_f32((uint16_t)(in[2 * i] | in[2 * i + 1] << 8));
}

__attribute__((target("avx,f16c"))) static void f16_axpy_x86(const uint8_t *in, double w,
                                                             double *sum, size_t n) {
  size_t i = 0;
  __m256d vw = _mm256_set1_pd(w);
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i)));
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    _mm256_storeu_pd(sum + i, _mm256_add_pd(_mm256_loadu_pd(sum + i), _mm256_mul_pd(vw, lo)));
    _mm256_storeu_pd(sum + i + 4, _mm256_add_pd(_mm256_loadu_pd(sum + i + 4), _mm256_mul_pd(vw, hi)));
  }
  for (; i < n; i++) sum[i] += w * (double)fl_f16_to_f32((uint16_t)(in[2 * i] | in[2 * i + 1] << 8));
}
#endif

static void f16_encode(const float *x, uint8_t *out, size_t n) {
#ifdef HAVE_X86
  if (have_f16c()) {
    f16_encode_x86(x, out, n);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) {
    uint16_t h = fl_f32_to_f16(x[i]);
    out[2 * i] = (uint8_t)h, out[2 * i + 1] = (uint8_t)(h >> 8);
  }
}

static void f16_decode(const uint8_t *in, float *dst, size_t n) {
#ifdef HAVE_X86
  if (have_f16c()) {
    f16_decode_x86(in, dst, n);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) dst[i] = fl_f16_to_f32((uint16_t)(in[2 * i] | in[2 * i + 1] << 8));
}

/* ---- configuration ---- */

static const char *const names[FL_ENC_ALL] = {"float32", "float16", "int8", "topk", "ring16",
                                              "ring32"};

const char *fl_enc_name(int enc) {
  return enc >= 0 && enc < FL_ENC_ALL ? names[enc] : "unknown";
}

int fl_codec_parse(const char *spec, fl_codec *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  const char *colon = strchr(spec, ':');
  size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
  const char *arg = colon ? colon + 1 : NULL;
  for (int e = 0; e < FL_ENC_COUNT; e++) {
    if (strlen(names[e]) != len || strncmp(spec, names[e], len) != 0) continue;
    c->enc = (fl_enc)e;
    if (e == FL_ENC_TOPK) {
      char *end;
      c->fraction = arg ? strtod(arg, &end) : NAN;
      if (!arg || end == arg || *end || !(c->fraction > 0 && c->fraction <= 1))
        return fl_errf(err, errlen, FL_ECONFIG,
                       "encoding '%s': topk needs the fraction sent, above 0 and at most 1 "
                       "(e.g. topk:0.01)", spec);
    } else if (e == FL_ENC_INT8 && arg) {
      if (strcmp(arg, "stochastic") != 0)
        return fl_errf(err, errlen, FL_ECONFIG,
                       "encoding '%s': int8 takes only ':stochastic' (unbiased rounding)", spec);
      c->stochastic = 1;
    } else if (arg) {
      return fl_errf(err, errlen, FL_ECONFIG, "encoding '%s': %s takes no parameter", spec, names[e]);
    }
    return 0;
  }
  return fl_errf(err, errlen, FL_ECONFIG,
                 "unknown encoding '%s' (float32, float16, int8[:stochastic], topk:FRACTION)", spec);
}

void fl_codec_format(const fl_codec *c, char *out, size_t len) {
  if (c->enc == FL_ENC_TOPK) snprintf(out, len, "topk:%g", c->fraction);
  else if (c->enc == FL_ENC_INT8 && c->stochastic) snprintf(out, len, "int8:stochastic");
  else snprintf(out, len, "%s", fl_enc_name(c->enc));
}

uint64_t fl_codec_topk_count(const fl_codec *c, uint64_t n) {
  if (n == 0) return 0;
  uint64_t k = (uint64_t)ceil(c->fraction * (double)n);
  return k < 1 ? 1 : k > n ? n : k;
}

static size_t value_bytes(fl_enc e) {
  switch (e) {
  case FL_ENC_FLOAT32: case FL_ENC_RING32: return 4;
  case FL_ENC_FLOAT16: case FL_ENC_RING16: return 2;
  case FL_ENC_INT8: return 1;
  default: return 8;
  }
}

uint64_t fl_codec_max_bytes(const fl_codec *c, uint64_t n) {
  return c->enc == FL_ENC_TOPK ? 8 * fl_codec_topk_count(c, n) : value_bytes(c->enc) * n;
}

/* ---- runs left out ---- */

int fl_runs_check(const uint64_t *at, size_t n, uint64_t total, char *err, size_t errlen) {
  if (n % 2)
    return fl_errf(err, errlen, FL_EPROTO, "%zu run bounds, not start and end pairs", n);
  uint64_t prev = 0;
  for (size_t i = 0; i < n; i += 2) {
    if (at[i] < prev || at[i] >= at[i + 1] || at[i + 1] > total)
      return fl_errf(err, errlen, FL_EPROTO, "run [%llu, %llu) is empty, out of order or "
                     "beyond the %llu values", (unsigned long long)at[i],
                     (unsigned long long)at[i + 1], (unsigned long long)total);
    prev = at[i + 1];
  }
  return 0;
}

int fl_runs_of_mask(const float *mask, uint64_t total, uint64_t **at, size_t *n) {
  *at = NULL, *n = 0;
  size_t runs = 0;
  for (uint64_t i = 0; i < total; i++) runs += mask[i] != 0.0f && (i == 0 || mask[i - 1] == 0.0f);
  if (!runs) return 0;
  if (!(*at = malloc(2 * runs * sizeof **at))) return FL_ENOMEM;
  for (uint64_t i = 0; i < total; i++) {
    if (mask[i] == 0.0f) continue;
    uint64_t j = i;
    while (j < total && mask[j] != 0.0f) j++;
    (*at)[2 * *n] = i, (*at)[2 * *n + 1] = j;
    (*n)++;
    i = j;
  }
  return 0;
}

int fl_runs_zero(const fl_runs *r, const float *x) {
  for (size_t k = 0; k < r->n; k++)
    for (uint64_t i = r->at[2 * k]; i < r->at[2 * k + 1]; i++)
      if (x[i] != 0.0f) return 0;
  return 1;
}

/* FNV-1a over the low `bytes` bytes of v, little-endian first */
static uint64_t fnv1a(uint64_t h, uint64_t v, int bytes) {
  for (int b = 0; b < bytes; b++) {
    h ^= (v >> (8 * b)) & 0xff;
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t fl_runs_id(const fl_runs *r, const float *x) {
  uint64_t h = fnv1a(0xcbf29ce484222325ULL, r->n, 8);
  for (size_t k = 0; k < r->n; k++) {
    h = fnv1a(fnv1a(h, r->at[2 * k], 8), r->at[2 * k + 1], 8);
    for (uint64_t i = r->at[2 * k]; i < r->at[2 * k + 1]; i++) {
      uint32_t bits;
      memcpy(&bits, &x[i], sizeof bits);
      h = fnv1a(h, bits, 4);
    }
  }
  return h ? h : 1;
}

uint64_t fl_runs_end(const fl_runs *r, uint64_t total) {
  uint64_t end = total;
  for (size_t k = r->n; k > 0 && r->at[2 * k - 1] == end; k--) end = r->at[2 * k - 2];
  return end;
}

/* Moves *at past the runs that hold it (*ri: the first run not behind it) and returns
 * where the stretch of positions sent from *at ends: the next run's start, or total. */
static uint64_t stretch(const fl_runs *r, size_t *ri, uint64_t *at, uint64_t total) {
  while (*ri < r->n && r->at[2 * *ri] <= *at) {
    if (r->at[2 * *ri + 1] > *at) *at = r->at[2 * *ri + 1];
    (*ri)++;
  }
  return *ri < r->n ? r->at[2 * *ri] : total;
}

/* With runs split at rather than skipped: where the stretch from at ends, the next bound
 * of a run after it (its start, or its end when at is inside it), or total. */
static uint64_t next_bound(const fl_runs *r, size_t *ri, uint64_t at, uint64_t total) {
  while (*ri < r->n && r->at[2 * *ri + 1] <= at) (*ri)++;
  if (*ri == r->n) return total;
  return r->at[2 * *ri] > at ? r->at[2 * *ri] : r->at[2 * *ri + 1];
}

/* The end of the stretch the next chunk may cover (past a skipped run first). */
static void encoder_stretch(fl_encoder *e) {
  e->stop = e->split ? next_bound(&e->skip, &e->ri, e->next, e->n)
                     : stretch(&e->skip, &e->ri, &e->next, e->n);
}

/* ---- encoding ---- */

int fl_encoder_init(fl_encoder *e, const fl_codec *c, const float *x, uint64_t n,
                    uint32_t chunk_bytes, uint64_t seed) {
  memset(e, 0, sizeof *e);
  e->c = *c;
  e->x = x;
  e->n = n;
  e->stop = n;
  e->empty = n == 0;
  e->chunk_bytes = chunk_bytes ? chunk_bytes : 1;
  fl_rng_seed2(&e->rng, seed, 0xc0dec);
  if (c->enc != FL_ENC_TOPK || n == 0) return 0;
  uint64_t k = fl_codec_topk_count(c, n);
  float *mag = malloc(n * sizeof *mag);
  if (!mag) return FL_ENOMEM;
  for (uint64_t i = 0; i < n; i++) {
    if (!isfinite(x[i])) {
      free(mag);
      return FL_ERANGE;
    }
    mag[i] = fabsf(x[i]);
  }
  fl_kth_smallest(mag, n, n - k); /* the kth largest magnitude */
  e->threshold = mag[n - k];
  uint64_t above = 0;
  for (uint64_t i = 0; i < n; i++) above += fabsf(x[i]) > e->threshold;
  e->at_threshold = k - above; /* the first ties by index fill the count */
  free(mag);
  return 0;
}

static int encode_int8(fl_encoder *e, fl_chunk *out, uint8_t *buf, uint64_t off, uint64_t cnt) {
  const float *x = e->x + off;
  if (cnt == 0) return 0; /* the empty tensor's one chunk */
  double lo = INFINITY, hi = -INFINITY;
  for (uint64_t i = 0; i < cnt; i++) {
    if (!isfinite(x[i])) return FL_ERANGE;
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
  }
  float zero = (float)lo, scale = (float)((hi - lo) / 255.0);
  if (!isfinite(scale) || !isfinite(zero + 255.0f * scale)) return FL_ERANGE;
  for (uint64_t i = 0; i < cnt; i++) {
    double q = scale > 0 ? ((double)x[i] - zero) / scale : 0;
    q = e->c.stochastic ? floor(q + (double)fl_rng_uniform(&e->rng)) : nearbyint(q);
    buf[i] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
  }
  out->scale = scale;
  out->zero = zero;
  return 0;
}

static void encoder_runs(fl_encoder *e, const fl_runs *r, int split) {
  e->skip = *r;
  e->ri = 0;
  e->next = 0;
  e->split = split;
  encoder_stretch(e);
}

void fl_encoder_skip(fl_encoder *e, const fl_runs *r) {
  encoder_runs(e, r, 0);
  e->empty = e->next >= e->n;
}

void fl_encoder_split(fl_encoder *e, const fl_runs *r) { encoder_runs(e, r, 1); }

int fl_encoder_next(fl_encoder *e, fl_chunk *out, uint8_t *buf) {
  memset(out, 0, sizeof *out);
  out->enc = e->c.enc;
  out->total = e->n;
  out->offset = e->next;
  out->data = buf;
  if (e->next >= e->n && (!e->empty || e->sent > 0)) return 0;
  e->sent++;
  if (e->c.enc == FL_ENC_TOPK) {
    uint64_t budget = e->chunk_bytes / 8 ? e->chunk_bytes / 8 : 1, pairs = 0, i = e->next;
    for (; i < e->stop && pairs < budget; i++) {
      float a = fabsf(e->x[i]);
      int take = a > e->threshold || (a == e->threshold && e->at_threshold > 0);
      if (!take) continue;
      if (!(a > e->threshold)) e->at_threshold--; /* one of the ties */
      put32(buf + 8 * pairs, (uint32_t)i);
      putf(buf + 8 * pairs + 4, e->x[i]);
      pairs++;
    }
    out->count = i - e->next;
    out->len = 8 * pairs;
    e->next = i;
    encoder_stretch(e);
    return 1;
  }
  size_t vb = value_bytes(e->c.enc);
  uint64_t cnt = e->chunk_bytes / vb ? e->chunk_bytes / vb : 1; /* at least one value */
  if (cnt > e->stop - e->next) cnt = e->stop - e->next;
  const float *x = e->x + e->next;
  switch (e->c.enc) {
  case FL_ENC_FLOAT32: /* any value, as it is: the receiver judges it */
    for (uint64_t i = 0; i < cnt; i++) putf(buf + 4 * i, x[i]);
    break;
  case FL_ENC_RING16:
  case FL_ENC_RING32: { /* x holds uint32 ring elements */
    const uint32_t *r = (const uint32_t *)(const void *)e->x + e->next;
    for (uint64_t i = 0; i < cnt; i++) {
      if (vb == 4) put32(buf + 4 * i, r[i]);
      else buf[2 * i] = (uint8_t)r[i], buf[2 * i + 1] = (uint8_t)(r[i] >> 8);
    }
    break;
  }
  case FL_ENC_FLOAT16:
    f16_encode(x, buf, cnt);
    for (uint64_t i = 0; i < cnt; i++)
      if ((buf[2 * i + 1] & 0x7c) == 0x7c) return FL_ERANGE; /* infinite or NaN as a half */
    break;
  default: {
    int rc = encode_int8(e, out, buf, e->next, cnt);
    if (rc) return rc;
  }
  }
  out->count = cnt;
  out->len = cnt * vb;
  e->next += cnt;
  encoder_stretch(e);
  return 1;
}

/* ---- decoding ---- */

void fl_decoder_init(fl_decoder *d, fl_enc enc, uint64_t total, uint64_t max_pairs) {
  memset(d, 0, sizeof *d);
  d->enc = enc;
  d->total = total;
  d->stop = total;
  d->empty = total == 0;
  d->max_pairs = max_pairs ? max_pairs : total;
}

void fl_decoder_skip(fl_decoder *d, const fl_runs *r) {
  d->skip = *r;
  d->ri = 0;
  d->next = 0;
  d->stop = stretch(&d->skip, &d->ri, &d->next, d->total);
  d->empty = d->next >= d->total;
}

int fl_decoder_check(fl_decoder *d, const fl_chunk *ch, char *err, size_t errlen) {
  if (ch->enc != d->enc)
    return fl_errf(err, errlen, FL_EPROTO, "chunk in encoding %s, expected %s", fl_enc_name(ch->enc),
                   fl_enc_name(d->enc));
  if (ch->total != d->total)
    return fl_errf(err, errlen, FL_EPROTO, "chunk announces %llu values, the tensor has %llu",
                   (unsigned long long)ch->total, (unsigned long long)d->total);
  if (d->next >= d->total && (!d->empty || d->chunks > 0))
    return fl_errf(err, errlen, FL_EPROTO, "chunk after the tensor was complete");
  if (ch->offset != d->next)
    return fl_errf(err, errlen, FL_EPROTO, "chunk at offset %llu, expected %llu",
                   (unsigned long long)ch->offset, (unsigned long long)d->next);
  if (ch->count > d->stop - d->next && d->stop < d->total)
    return fl_errf(err, errlen, FL_EPROTO, "chunk covers %llu values at %llu, into the "
                   "positions left out from %llu", (unsigned long long)ch->count,
                   (unsigned long long)ch->offset, (unsigned long long)d->stop);
  if (ch->count > d->stop - d->next || (ch->count == 0 && !d->empty))
    return fl_errf(err, errlen, FL_EPROTO, "chunk covers %llu values at %llu of %llu",
                   (unsigned long long)ch->count, (unsigned long long)ch->offset,
                   (unsigned long long)d->total);
  const uint8_t *p = ch->data;
  switch (ch->enc) {
  case FL_ENC_RING16:
  case FL_ENC_RING32:
  case FL_ENC_FLOAT32:
  case FL_ENC_FLOAT16:
  case FL_ENC_INT8: {
    size_t vb = value_bytes(ch->enc);
    if (ch->len != ch->count * vb)
      return fl_errf(err, errlen, FL_EPROTO, "chunk of %llu %s values holds %zu bytes, expected %llu",
                     (unsigned long long)ch->count, fl_enc_name(ch->enc), ch->len,
                     (unsigned long long)(ch->count * vb));
    if (ch->enc == FL_ENC_FLOAT32) {
      for (uint64_t i = 0; i < ch->count; i++)
        if (!isfinite(getf(p + 4 * i)))
          return fl_errf(err, errlen, FL_ENONFINITE, "value %llu is not finite",
                         (unsigned long long)(ch->offset + i));
    } else if (ch->enc == FL_ENC_FLOAT16) {
      for (uint64_t i = 0; i < ch->count; i++)
        if ((p[2 * i + 1] & 0x7c) == 0x7c)
          return fl_errf(err, errlen, FL_ENONFINITE, "value %llu is not finite",
                         (unsigned long long)(ch->offset + i));
    } else if (ch->enc == FL_ENC_INT8 &&
               (!isfinite(ch->scale) || !isfinite(ch->zero) || ch->scale < 0 ||
               !isfinite(ch->zero + 255.0f * ch->scale))) {
      return fl_errf(err, errlen, FL_ENONFINITE, "int8 chunk at %llu: scale %g and zero point %g "
                     "do not give finite values", (unsigned long long)ch->offset,
                     (double)ch->scale, (double)ch->zero);
    }
    break;
  }
  case FL_ENC_TOPK: {
    if (ch->len % 8)
      return fl_errf(err, errlen, FL_EPROTO, "topk chunk of %zu bytes is not whole pairs", ch->len);
    uint64_t pairs = ch->len / 8;
    if (pairs > d->max_pairs - d->pairs)
      return fl_errf(err, errlen, FL_EPROTO, "more than the %llu topk pairs allowed",
                     (unsigned long long)d->max_pairs);
    uint64_t prev = ch->offset, end = ch->offset + ch->count;
    for (uint64_t i = 0; i < pairs; i++) {
      uint64_t idx = get32(p + 8 * i);
      if (idx < prev || idx >= end)
        return fl_errf(err, errlen, FL_EPROTO, "topk index %llu out of order or outside [%llu, %llu)",
                       (unsigned long long)idx, (unsigned long long)ch->offset,
                       (unsigned long long)end);
      prev = idx + 1;
      if (!isfinite(getf(p + 8 * i + 4)))
        return fl_errf(err, errlen, FL_ENONFINITE, "value %llu is not finite", (unsigned long long)idx);
    }
    d->pairs += pairs;
    break;
  }
  default:
    return fl_errf(err, errlen, FL_EPROTO, "unknown encoding %d", (int)ch->enc);
  }
  d->next += ch->count;
  d->stop = stretch(&d->skip, &d->ri, &d->next, d->total);
  d->chunks++;
  return d->next == d->total;
}

void fl_chunk_decode(const fl_chunk *ch, float *dst) {
  float *out = dst + ch->offset;
  const uint8_t *p = ch->data;
  switch (ch->enc) {
  case FL_ENC_FLOAT32:
    for (uint64_t i = 0; i < ch->count; i++) out[i] = getf(p + 4 * i);
    break;
  case FL_ENC_FLOAT16:
    f16_decode(p, out, ch->count);
    break;
  case FL_ENC_INT8:
    for (uint64_t i = 0; i < ch->count; i++) out[i] = ch->zero + ch->scale * (float)p[i];
    break;
  case FL_ENC_TOPK:
    memset(out, 0, ch->count * sizeof *out);
    for (size_t i = 0; i < ch->len / 8; i++) dst[get32(p + 8 * i)] = getf(p + 8 * i + 4);
    break;
  case FL_ENC_RING16:
    for (uint64_t i = 0; i < ch->count; i++) out[i] = (float)(p[2 * i] | p[2 * i + 1] << 8);
    break;
  case FL_ENC_RING32:
    for (uint64_t i = 0; i < ch->count; i++) out[i] = (float)get32(p + 4 * i);
    break;
  }
}

void fl_chunk_ring(const fl_chunk *ch, uint32_t *dst) {
  const uint8_t *p = ch->data;
  for (uint64_t i = 0; i < ch->count; i++)
    dst[i] = ch->enc == FL_ENC_RING16 ? (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) : get32(p + 4 * i);
}

void fl_chunk_axpy(const fl_chunk *ch, double w, double *sum) {
  /* Locals, not ch's fields: stores into sum may alias ch as far as the compiler knows
   * (-fno-strict-aliasing), which would keep these loops from being vectorised. */
  double *s = sum + ch->offset;
  const uint8_t *p = ch->data;
  const uint64_t n = ch->count;
  const float zero = ch->zero, scale = ch->scale;
  switch (ch->enc) {
  case FL_ENC_FLOAT32:
    for (uint64_t i = 0; i < n; i++) s[i] += w * (double)getf(p + 4 * i);
    break;
  case FL_ENC_FLOAT16:
#ifdef HAVE_X86
    if (have_f16c()) {
      f16_axpy_x86(p, w, s, n);
      break;
    }
#endif
    for (uint64_t i = 0; i < n; i++)
      s[i] += w * (double)fl_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    break;
  case FL_ENC_INT8:
    for (uint64_t i = 0; i < n; i++) s[i] += w * (double)(zero + scale * (float)p[i]);
    break;
  case FL_ENC_TOPK: {
    const size_t pairs = ch->len / 8;
    for (size_t i = 0; i < pairs; i++) sum[get32(p + 8 * i)] += w * (double)getf(p + 8 * i + 4);
    break;
  }
  default: /* ring elements are not values */
    break;
  }
}

/* ---- records ---- */

static void put64(uint8_t *p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

size_t fl_chunk_record_size(const fl_chunk *ch) { return FL_CHUNK_RECORD_HEAD + ch->len; }

void fl_chunk_record_put(const fl_chunk *ch, uint8_t *dst) {
  put64(dst, ch->offset);
  put64(dst + 8, ch->count);
  putf(dst + 16, ch->scale);
  putf(dst + 20, ch->zero);
  put32(dst + 24, (uint32_t)ch->len);
  if (ch->len) memcpy(dst + FL_CHUNK_RECORD_HEAD, ch->data, ch->len);
}

int fl_chunk_record_next(const uint8_t *recs, size_t len, size_t *pos, fl_enc enc, uint64_t total,
                         fl_chunk *ch) {
  if (*pos + FL_CHUNK_RECORD_HEAD > len) return 0;
  const uint8_t *p = recs + *pos;
  *ch = (fl_chunk){enc, get64(p), get64(p + 8), total, getf(p + 16), getf(p + 20),
                   p + FL_CHUNK_RECORD_HEAD, get32(p + 24)};
  *pos += FL_CHUNK_RECORD_HEAD + ch->len;
  return 1;
}

void fl_records_decode(const uint8_t *recs, size_t len, fl_enc enc, uint64_t total, float *dst) {
  size_t pos = 0;
  uint64_t covered = 0; /* the records come in order; between them, positions left out */
  fl_chunk ch;
  while (fl_chunk_record_next(recs, len, &pos, enc, total, &ch)) {
    if (ch.offset > covered) memset(dst + covered, 0, (ch.offset - covered) * sizeof *dst);
    fl_chunk_decode(&ch, dst);
    covered = ch.offset + ch.count;
  }
  if (total > covered) memset(dst + covered, 0, (total - covered) * sizeof *dst);
}

void fl_records_axpy(const uint8_t *recs, size_t len, fl_enc enc, uint64_t total, double w,
                     double *sum) {
  size_t pos = 0;
  fl_chunk ch;
  while (fl_chunk_record_next(recs, len, &pos, enc, total, &ch)) fl_chunk_axpy(&ch, w, sum);
}

double fl_records_sumsq(const uint8_t *recs, size_t len, fl_enc enc, uint64_t total) {
  size_t pos = 0;
  fl_chunk ch;
  double s = 0;
  float tmp[256];
  while (fl_chunk_record_next(recs, len, &pos, enc, total, &ch)) {
    if (enc == FL_ENC_TOPK) {
      for (size_t i = 0; i < ch.len / 8; i++) {
        double v = getf(ch.data + 8 * i + 4);
        s += v * v;
      }
      continue;
    }
    if (enc == FL_ENC_INT8) { /* sum (z + s q)^2 from the exact integer sums of q and q^2 */
      uint64_t q1 = 0, q2 = 0;
      for (uint64_t i = 0; i < ch.count; i++) {
        q1 += ch.data[i];
        q2 += (uint32_t)ch.data[i] * ch.data[i];
      }
      double z = ch.zero, sc = ch.scale;
      s += (double)ch.count * z * z + 2 * z * sc * (double)q1 + sc * sc * (double)q2;
      continue;
    }
    /* Dense: decode a piece at a time into a small buffer (a chunk's own offsets), summed
     * in four lanes (one chain of dependent additions would bound the speed). */
    for (uint64_t at = 0; at < ch.count; at += 256) {
      uint64_t k = ch.count - at < 256 ? ch.count - at : 256;
      size_t vb = value_bytes(enc);
      fl_chunk piece = ch;
      piece.offset = 0;
      piece.count = k;
      piece.data = ch.data + at * vb;
      piece.len = k * vb;
      fl_chunk_decode(&piece, tmp);
      double lane[4] = {0, 0, 0, 0};
      uint64_t i = 0;
      for (; i + 4 <= k; i += 4)
        for (int j = 0; j < 4; j++) lane[j] += (double)tmp[i + j] * tmp[i + j];
      for (; i < k; i++) lane[0] += (double)tmp[i] * tmp[i];
      s += (lane[0] + lane[1]) + (lane[2] + lane[3]);
    }
  }
  return s;
}
