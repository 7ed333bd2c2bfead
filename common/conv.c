/* Convolution `conv:K:F[:sS][:pP]` on [B][C][H][W]: K filters of F x F, stride S
 * (default 1), zero padding P on every side (default "same": (F-1)/2 before and F/2
 * after, which keeps H x W at stride 1).  Output [B][K][OH][OW] with
 * OH = (H + pad_top + pad_bottom - F) / S + 1.  Weights w [K][C*F*F], bias b [K].
 *
 * A convolution is im2col + one sgemm per sample: the input patch under every output
 * pixel becomes a column of col [C*F*F][OH*OW], and y_b [K][OH*OW] = w . col.  Backward
 * recomputes col rather than keeping one per sample (which would cost B*C*F*F*OH*OW
 * floats), then reuses the same buffer for the input-gradient columns.  Both directions
 * go through a zero-padded copy of the image, so the copy loops have no edge cases.  The
 * weight gradient is summed over the pass's samples, a chunk of the batch (the trainer
 * adds the chunks' sums in chunk order). */
#include <cblas.h>
#include <stdio.h>
#include <string.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define CONV_AVX2 1
#endif

#include "error.h"
#include "layers.h"

enum { K_, F_, S_, PT, PB, PADDED }; /* l->arg: filters, kernel, stride, padding, explicit */

static int conv_parse(fl__layer *l, const char *tok, const char *args, int *image,
                      char *canon, size_t canon_len, char *err, size_t errlen) {
  uint32_t d[2], S = 1, P = 0;
  int strided = 0, padded = 0;
  char buf[72];
  if (!args || strlen(args) >= sizeof buf)
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: bad token '%s' (expected conv:K:F[:sS][:pP])", tok);
  /* K:F, then optional sS and pP */
  snprintf(buf, sizeof buf, "%s", args);
  char *opt = strchr(buf, ':');
  opt = opt ? strchr(opt + 1, ':') : NULL;
  if (opt) *opt++ = '\0';
  if (fl__parse_dims(buf, ':', d, 2) != 2)
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: bad token '%s' (expected conv:K:F[:sS][:pP])", tok);
  for (char *o = opt; o;) {
    char *next = strchr(o, ':');
    size_t len = next ? (size_t)(next - o) : strlen(o);
    uint32_t v;
    if (len >= 2 && o[0] == 's' && !strided && fl__parse_dim(o + 1, len - 1, &v) == 0 &&
        v <= 64) {
      S = v, strided = 1;
    } else if (len >= 2 && o[0] == 'p' && !padded && len <= 3) {
      v = 0;
      for (size_t i = 1; i < len; i++) {
        if (o[i] < '0' || o[i] > '9') return fl_errf(err, errlen, FL_EINVAL, "model spec: "
            "bad token '%s' (padding pP: P a whole number below F)", tok);
        v = v * 10 + (uint32_t)(o[i] - '0');
      }
      P = v, padded = 1;
    } else {
      return fl_errf(err, errlen, FL_EINVAL,
                     "model spec: bad token '%s' (expected conv:K:F[:sS][:pP], stride S in "
                     "1..64, padding P below F)", tok);
    }
    o = next ? next + 1 : NULL;
  }
  if (!*image)
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: '%s' needs an image input (in:CxHxW, before any dense layer)",
                   tok);
  if (d[1] > 64)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s': kernel size %u is too large",
                   tok, d[1]);
  if (padded && P >= d[1])
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: '%s': padding %u must be below the kernel size %u", tok, P,
                   d[1]);
  if (padded && d[1] % 2 == 1 && P == d[1] / 2) padded = 0; /* that is the default */
  uint32_t pt = padded ? P : (d[1] - 1) / 2, pb = padded ? P : d[1] / 2;
  if (l->h + pt + pb < d[1] || l->w + pt + pb < d[1])
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: '%s': a %ux%u kernel does not fit the padded %ux%u image",
                   tok, d[1], d[1], l->h + pt + pb, l->w + pt + pb);
  uint32_t oh = (l->h + pt + pb - d[1]) / S + 1, ow = (l->w + pt + pb - d[1]) / S + 1;
  l->arg[K_] = d[0], l->arg[F_] = d[1], l->arg[S_] = S;
  l->arg[PT] = pt, l->arg[PB] = pb, l->arg[PADDED] = (uint32_t)padded;
  l->fan_in = (size_t)l->c * d[1] * d[1], l->fan_out = (size_t)d[0] * d[1] * d[1];
  if ((uint64_t)l->fan_in * oh * ow > ((uint64_t)1 << 26))
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' needs too large an im2col buffer",
                   tok);
  l->oc = d[0], l->oh = oh, l->ow = ow;
  l->w_len = (size_t)d[0] * l->fan_in, l->b_len = d[0];
  l->scratch = l->fan_in * oh * ow + (size_t)l->c * (l->h + pt + pb) * (l->w + pt + pb);
  int n = snprintf(canon, canon_len, "conv:%u:%u", d[0], d[1]);
  if (S != 1 && n > 0 && (size_t)n < canon_len)
    n += snprintf(canon + n, canon_len - (size_t)n, ":s%u", S);
  if (padded && n > 0 && (size_t)n < canon_len)
    snprintf(canon + n, canon_len - (size_t)n, ":p%u", P);
  return 0;
}

typedef struct geom {
  int C, H, W, K, F, S, pt, pb, OH, OW, Hp, Wp;
} geom;

static geom geometry(const fl__layer *l) {
  geom g = {(int)l->c, (int)l->h, (int)l->w, (int)l->arg[K_], (int)l->arg[F_],
            (int)l->arg[S_], (int)l->arg[PT], (int)l->arg[PB], (int)l->oh, (int)l->ow, 0, 0};
  g.Hp = g.H + g.pt + g.pb, g.Wp = g.W + g.pt + g.pb;
  return g;
}

/* GCC turns a loop of small fixed-size copies into one call to memcpy, which for the
 * few floats of an image row costs more than the copy. */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define NO_LIBCALLS
#endif

/* d [n] = s [n] (n >= 4), four floats at a time, the last four overlapping the previous
 * ones rather than leaving a scalar tail; d and s do not overlap. */
static inline void copy_row(float *restrict d, const float *restrict s, int n) {
  int i = 0;
  if (n >= 8) { /* eight at a time: one AVX move in the avx2 clones */
    for (; i + 8 <= n; i += 8) memcpy(d + i, s + i, 8 * sizeof(float));
    if (i < n) memcpy(d + n - 8, s + n - 8, 8 * sizeof(float));
    return;
  }
  for (; i + 4 <= n; i += 4) memcpy(d + i, s + i, 4 * sizeof(float));
  if (i < n) memcpy(d + n - 4, s + n - 4, 4 * sizeof(float));
}

/* xp [C][Hp][Wp] = x [C][H][W] with pt zero rows/columns before and pb after: every
 * float of xp is written once (the zeros of a row around its copy, whole rows of zeros
 * above and below), with no clearing pass first. */
NO_LIBCALLS static void pad_image(float *restrict xp, const float *restrict x, const geom *g) {
  int H = g->H, W = g->W, Wp = g->Wp, pt = g->pt, pb = g->pb;
  for (int c = 0; c < g->C; c++) {
    float *img = xp + (size_t)c * g->Hp * Wp;
    memset(img, 0, sizeof(float) * (size_t)pt * Wp);
    for (int y = 0; y < H; y++) {
      const float *src = x + ((size_t)c * H + y) * W;
      float *dst = img + (size_t)(y + pt) * Wp;
      for (int i = 0; i < pt; i++) dst[i] = 0.0f;
      if (W >= 4)
        copy_row(dst + pt, src, W);
      else
        for (int i = 0; i < W; i++) dst[pt + i] = src[i];
      for (int i = pt + W; i < Wp; i++) dst[i] = 0.0f;
    }
    memset(img + (size_t)(H + pt) * Wp, 0, sizeof(float) * (size_t)pb * Wp);
  }
}

/* col [C*F*F][OH*OW]  xp [C][Hp][Wp] (padded): every row of a column block is a copy of
 * OW floats (contiguous at stride 1), with no edge cases. */
NO_LIBCALLS __attribute__((target_clones("avx2", "default"))) static void im2col(
    float *restrict col, const float *restrict xp, const geom *g) {
  int F = g->F, S = g->S, OH = g->OH, OW = g->OW, Hp = g->Hp, Wp = g->Wp;
  for (int c = 0; c < g->C; c++)
    for (int ky = 0; ky < F; ky++)
      for (int kx = 0; kx < F; kx++) {
        float *row = col + (size_t)((c * F + ky) * F + kx) * OH * OW;
        const float *src = xp + ((size_t)c * Hp + ky) * Wp + kx;
        if (S == 1 && OW >= 4) {
          for (int oy = 0; oy < OH; oy++) copy_row(row + oy * OW, src + oy * Wp, OW);
        } else if (S == 1) {
          for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) row[oy * OW + ox] = src[oy * Wp + ox];
        } else {
          for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) row[oy * OW + ox] = src[oy * S * Wp + ox * S];
        }
      }
}

/* dx [C][H][W] = the columns of dcol [C*F*F][OH*OW] summed back onto their pixels,
 * through the padded scratch image xp [C][Hp][Wp] */
NO_LIBCALLS static void col2im(float *dx, float *xp, const float *dcol, const geom *g) {
  int F = g->F, S = g->S, OH = g->OH, OW = g->OW, Hp = g->Hp, Wp = g->Wp;
  memset(xp, 0, sizeof(float) * (size_t)g->C * Hp * Wp);
  for (int c = 0; c < g->C; c++)
    for (int ky = 0; ky < F; ky++)
      for (int kx = 0; kx < F; kx++) {
        const float *row = dcol + (size_t)((c * F + ky) * F + kx) * OH * OW;
        float *dst = xp + ((size_t)c * Hp + ky) * Wp + kx;
        if (S == 1) {
          for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) dst[oy * Wp + ox] += row[oy * OW + ox];
        } else {
          for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) dst[oy * S * Wp + ox * S] += row[oy * OW + ox];
        }
      }
  for (int c = 0; c < g->C; c++)
    for (int y = 0; y < g->H; y++) {
      const float *src = xp + ((size_t)c * Hp + y + g->pt) * Wp + g->pt;
      float *d = dx + ((size_t)c * g->H + y) * g->W;
      if (g->W >= 4)
        copy_row(d, src, g->W);
      else
        for (int i = 0; i < g->W; i++) d[i] = src[i];
    }
}

#ifdef CONV_AVX2
/* col2im at stride 1 as a gather, for AVX2: dx [C][H][W] from dcol [C*F*F][OH*OW], each
 * pixel's contributions summed in a register in the order col2im adds them ((ky, kx)
 * ascending, from +0), and written once.  A contribution from outside dcol's row (ox < 0
 * or >= OW) is a masked-off lane, which loads +0; adding +0 changes no sum here, since a
 * sum that starts at +0 is never -0 (x + +0 == x for every other x, NaN and infinities
 * included), so every pixel gets the bits of col2im's sum.  Eight pixels of a row a
 * vector; four channels at once, whose geometry is the same, keep four sums in flight. */
__attribute__((target("avx2"))) static void col2im_s1_avx2(float *restrict dx,
                                                           const float *restrict dcol,
                                                           const geom *g) {
  int C = g->C, F = g->F, H = g->H, W = g->W, OH = g->OH, OW = g->OW, pt = g->pt;
  size_t OHW = (size_t)OH * OW, FF = (size_t)F * F;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  /* dcol's element for channel c, kernel (ky, kx), output row oy and lane 0 of the chunk
   * at x0 (ox = x0 + pt - kx); lanes outside [0, OW) are masked off and never read.  The
   * address of lane 0 may then be a little before dcol or past its end, which C's pointer
   * arithmetic does not allow, so it is computed as an integer (the load reads only the
   * lanes inside) */
#define DCOL_AT(c, ky, kx, oy)                                                          \
  ((const float *)((uintptr_t)dcol +                                                  \
                   sizeof(float) * (uintptr_t)(((ptrdiff_t)(c) * (ptrdiff_t)FF +          \
                                                (ptrdiff_t)(ky) * F + (kx)) *           \
                                                   (ptrdiff_t)OHW +                     \
                                               (ptrdiff_t)(oy) * OW + (x0 + pt - (kx)))))
  __m256i kmask[64];
  for (int x0 = 0; x0 < W; x0 += 8) {
    /* lanes x0 + j of this chunk: inside the image row, and ox = x0 + j + pt - kx inside
     * [0, OW) for kernel column kx */
    __m256i in_row = _mm256_cmpgt_epi32(_mm256_set1_epi32(W - x0), lane);
    for (int kx = 0; kx < F; kx++) {
      __m256i ox = _mm256_add_epi32(lane, _mm256_set1_epi32(x0 + pt - kx));
      __m256i ok = _mm256_and_si256(_mm256_cmpgt_epi32(ox, _mm256_set1_epi32(-1)),
                                    _mm256_cmpgt_epi32(_mm256_set1_epi32(OW), ox));
      kmask[kx] = _mm256_and_si256(ok, in_row);
    }
    int full = x0 + 8 <= W;
    int c = 0;
    for (; c + 4 <= C; c += 4)
      for (int y = 0; y < H; y++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int ky = 0; ky < F; ky++) {
          int oy = y + pt - ky;
          if (oy < 0 || oy >= OH) continue;
          for (int kx = 0; kx < F; kx++) {
            __m256i m = kmask[kx];
            a0 = _mm256_add_ps(a0, _mm256_maskload_ps(DCOL_AT(c, ky, kx, oy), m));
            a1 = _mm256_add_ps(a1, _mm256_maskload_ps(DCOL_AT(c + 1, ky, kx, oy), m));
            a2 = _mm256_add_ps(a2, _mm256_maskload_ps(DCOL_AT(c + 2, ky, kx, oy), m));
            a3 = _mm256_add_ps(a3, _mm256_maskload_ps(DCOL_AT(c + 3, ky, kx, oy), m));
          }
        }
        float *d = dx + ((size_t)c * H + y) * W + x0;
        size_t HW = (size_t)H * W;
        if (full) {
          _mm256_storeu_ps(d, a0), _mm256_storeu_ps(d + HW, a1);
          _mm256_storeu_ps(d + 2 * HW, a2), _mm256_storeu_ps(d + 3 * HW, a3);
        } else {
          _mm256_maskstore_ps(d, in_row, a0), _mm256_maskstore_ps(d + HW, in_row, a1);
          _mm256_maskstore_ps(d + 2 * HW, in_row, a2);
          _mm256_maskstore_ps(d + 3 * HW, in_row, a3);
        }
      }
    for (; c < C; c++)
      for (int y = 0; y < H; y++) {
        __m256 a0 = _mm256_setzero_ps();
        for (int ky = 0; ky < F; ky++) {
          int oy = y + pt - ky;
          if (oy < 0 || oy >= OH) continue;
          for (int kx = 0; kx < F; kx++)
            a0 = _mm256_add_ps(a0, _mm256_maskload_ps(DCOL_AT(c, ky, kx, oy), kmask[kx]));
        }
        _mm256_maskstore_ps(dx + ((size_t)c * H + y) * W + x0, in_row, a0);
      }
  }
#undef DCOL_AT
}
#endif

/* Eight partial sums, so the reduction vectorises without reassociation flags. */
static float row_sum(const float *r, int n) {
  float acc[8] = {0};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; u++) acc[u] += r[j + u];
  float s = 0.0f;
  for (; j < n; j++) s += r[j];
  for (int u = 0; u < 8; u++) s += acc[u];
  return s;
}

static void conv_forward(const fl__layer *l, const fl__pass *p) {
  geom g = geometry(l);
  int OHW = g.OH * g.OW, CFF = g.C * g.F * g.F, K = g.K;
  float *col = p->scratch, *xp = col + (size_t)CFF * OHW;
  const float *w = p->params + l->w_off, *b = p->params + l->b_off;
  for (int i = 0; i < p->B; i++) {
    float *yb = p->y + (size_t)i * K * OHW;
    pad_image(xp, p->x + (size_t)i * l->in_size, &g);
    im2col(col, xp, &g);
    /* yb [K][OHW] = w [K][CFF] . col [CFF][OHW] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, OHW, CFF, 1.0f, w, CFF, col,
                OHW, 0.0f, yb, OHW);
    for (int k = 0; k < K; k++) {
      float *r = yb + (size_t)k * OHW, bk = b[k];
      for (int j = 0; j < OHW; j++) r[j] += bk;
    }
  }
}

/* dw [K][CFF] and db [K] = the sums over these samples (written, not added to);
 * dx per sample through col2im. */
static void conv_backward(const fl__layer *l, const fl__pass *p) {
  geom g = geometry(l);
  int OHW = g.OH * g.OW, CFF = g.C * g.F * g.F, K = g.K;
  float *col = p->scratch, *xp = col + (size_t)CFF * OHW;
  const float *w = p->params + l->w_off;
  float *dw = p->grad, *db = p->grad + l->w_len;
  memset(dw, 0, sizeof(float) * (l->w_len + l->b_len)); /* dw, then db right after it */
#ifdef CONV_AVX2
  int avx2 = g.F <= 64 && __builtin_cpu_supports("avx2");
#endif
  for (int i = 0; i < p->B; i++) {
    const float *dyb = p->dy + (size_t)i * K * OHW;
    for (int k = 0; k < K; k++) db[k] += row_sum(dyb + (size_t)k * OHW, OHW);
    pad_image(xp, p->x + (size_t)i * l->in_size, &g);
    im2col(col, xp, &g);
    /* dw [K][CFF] += dyb [K][OHW] . col^T [OHW][CFF] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, CFF, OHW, 1.0f, dyb, OHW, col,
                OHW, 1.0f, dw, CFF);
    if (!p->dx) continue;
    /* dcol [CFF][OHW] = w^T [CFF][K] . dyb [K][OHW], into the col buffer */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CFF, OHW, K, 1.0f, w, CFF, dyb, OHW,
                0.0f, col, OHW);
#ifdef CONV_AVX2
    if (avx2 && g.S == 1) {
      col2im_s1_avx2(p->dx + (size_t)i * l->in_size, col, &g);
      continue;
    }
#endif
    col2im(p->dx + (size_t)i * l->in_size, xp, col, &g);
  }
}

const fl__layer_ops fl__conv_ops = {
    .name = "conv",
    .parse = conv_parse,
    .forward = conv_forward,
    .backward = conv_backward,
};
