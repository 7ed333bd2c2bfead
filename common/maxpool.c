/* Max pooling `pool:2`: 2x2 windows, stride 2, [B][C][H][W] -> [B][C][H/2][W/2] (a
 * trailing odd row or column is dropped).  Forward records each window's winning input
 * offset in the layer's per-sample buffer; backward routes the gradient there. */
#include <stdio.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "error.h"
#include "layers.h"

static int maxpool_parse(fl__layer *l, const char *tok, const char *args, int *image,
                         char *canon, size_t canon_len, char *err, size_t errlen) {
  if (!args || strcmp(args, "2") != 0)
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: bad token '%s' (only pool:2 is supported)", tok);
  if (!*image)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' needs an image input (in:CxHxW)",
                   tok);
  if (l->h < 2 || l->w < 2)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' on a %ux%u image", tok, l->h,
                   l->w);
  l->oc = l->c, l->oh = l->h / 2, l->ow = l->w / 2;
  l->aux_len = (size_t)l->oc * l->oh * l->ow;
  snprintf(canon, canon_len, "pool:2");
  return 0;
}

static inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

/* One row of windows: y [OW]  a [OW]  r0, r1 [2 OW] (the window rows), their offset i0;
 * with rl, of max(x, 0).  Inlined with rl a constant, so each loop vectorises. */
static inline __attribute__((always_inline)) void pool_row(float *y, int32_t *a,
                                                           const float *r0, const float *r1,
                                                           int32_t i0, int W, int OW,
                                                           const int rl) {
  /* branch-free selects (first maximum wins), which the compiler vectorises */
  for (int ox = 0; ox < OW; ox++) {
    float xa = r0[2 * ox], xb = r0[2 * ox + 1], xc = r1[2 * ox], xd = r1[2 * ox + 1];
    if (rl) xa = relu(xa), xb = relu(xb), xc = relu(xc), xd = relu(xd);
    int32_t ia = i0 + 2 * ox, ic = ia + W;
    float top = xb > xa ? xb : xa, bot = xd > xc ? xd : xc;
    int32_t itop = xb > xa ? ia + 1 : ia, ibot = xd > xc ? ic + 1 : ic;
    y[ox] = bot > top ? bot : top;
    a[ox] = bot > top ? ibot : itop;
  }
}

#ifdef __SSE2__
/* pool_row four windows at a time with SSE2, the last four overlapping the previous ones
 * (a window's result depends on its inputs only, so writing it twice writes the same
 * bits) rather than leaving a scalar tail; OW >= 4.  The same selects as pool_row, lane
 * by lane: a comparison false (NaN included) keeps the earlier value. */
static inline __attribute__((always_inline)) void pool_row4(float *y, int32_t *a,
                                                            const float *r0, const float *r1,
                                                            int32_t i0, int W, int OW,
                                                            const int rl) {
  const __m128 zero = _mm_setzero_ps();
  const __m128i lane2 = _mm_setr_epi32(0, 2, 4, 6), wv = _mm_set1_epi32(W);
  for (int s = 0;; s += 4) {
    int ox = s + 4 <= OW ? s : OW - 4;
    __m128 p0 = _mm_loadu_ps(r0 + 2 * ox), p1 = _mm_loadu_ps(r0 + 2 * ox + 4);
    __m128 q0 = _mm_loadu_ps(r1 + 2 * ox), q1 = _mm_loadu_ps(r1 + 2 * ox + 4);
    __m128 xa = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(2, 0, 2, 0));
    __m128 xb = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(3, 1, 3, 1));
    __m128 xc = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(2, 0, 2, 0));
    __m128 xd = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(3, 1, 3, 1));
    if (rl) {
      xa = _mm_and_ps(xa, _mm_cmpgt_ps(xa, zero)), xb = _mm_and_ps(xb, _mm_cmpgt_ps(xb, zero));
      xc = _mm_and_ps(xc, _mm_cmpgt_ps(xc, zero)), xd = _mm_and_ps(xd, _mm_cmpgt_ps(xd, zero));
    }
    __m128 mt = _mm_cmpgt_ps(xb, xa), mb = _mm_cmpgt_ps(xd, xc);
    __m128 top = _mm_or_ps(_mm_and_ps(mt, xb), _mm_andnot_ps(mt, xa));
    __m128 bot = _mm_or_ps(_mm_and_ps(mb, xd), _mm_andnot_ps(mb, xc));
    __m128i ia = _mm_add_epi32(_mm_set1_epi32(i0 + 2 * ox), lane2);
    __m128i itop = _mm_sub_epi32(ia, _mm_castps_si128(mt)); /* + 1 where b won */
    __m128i ibot = _mm_sub_epi32(_mm_add_epi32(ia, wv), _mm_castps_si128(mb));
    __m128 m = _mm_cmpgt_ps(bot, top);
    __m128i mi = _mm_castps_si128(m);
    _mm_storeu_ps(y + ox, _mm_or_ps(_mm_and_ps(m, bot), _mm_andnot_ps(m, top)));
    _mm_storeu_si128((__m128i *)(a + ox),
                     _mm_or_si128(_mm_and_si128(mi, ibot), _mm_andnot_si128(mi, itop)));
    if (ox + 4 >= OW) break;
  }
}
#endif

/* y [B][C][H/2][W/2]  arg [B][C][H/2][W/2] (offsets into this slice's x)  x [B][C][H][W]
 * (with p->relu_in, the windows are of max(x, 0), as the ReLU layer computes it) */
static void maxpool_forward(const fl__layer *l, const fl__pass *p) {
  int C = (int)l->c, H = (int)l->h, W = (int)l->w, OH = H / 2, OW = W / 2;
  int32_t *arg = p->aux;
  for (int bc = 0; bc < p->B * C; bc++) {
    const float *xp = p->x + (size_t)bc * H * W;
    float *yp = p->y + (size_t)bc * OH * OW;
    int32_t *ap = arg + (size_t)bc * OH * OW;
    int32_t base = (int32_t)((size_t)bc * H * W);
    for (int oy = 0; oy < OH; oy++) {
      const float *r0 = xp + (size_t)2 * oy * W, *r1 = r0 + W;
      int32_t i0 = base + 2 * oy * W;
#ifdef __SSE2__
      if (OW >= 4) {
        if (p->relu_in)
          pool_row4(yp + oy * OW, ap + oy * OW, r0, r1, i0, W, OW, 1);
        else
          pool_row4(yp + oy * OW, ap + oy * OW, r0, r1, i0, W, OW, 0);
        continue;
      }
#endif
      if (p->relu_in) {
        pool_row(yp + oy * OW, ap + oy * OW, r0, r1, i0, W, OW, 1);
      } else {
        pool_row(yp + oy * OW, ap + oy * OW, r0, r1, i0, W, OW, 0);
      }
    }
  }
}

/* With p->relu_in, dx is the gradient w.r.t. the ReLU's input: the ReLU passes a
 * gradient where its output is > 0, and at a window's winner that output is the pooled
 * value y; everywhere else both layers give 0. */
static void maxpool_backward(const fl__layer *l, const fl__pass *p) {
  int C = (int)l->c, H = (int)l->h, W = (int)l->w, OH = H / 2, OW = W / 2;
  const int32_t *arg = p->aux;
  int rl = p->relu_in;
  float *dx = p->dx;
  if (!dx) return;
  /* Each channel's image is cleared (one memset, while it stays in L1) and then gets its
   * winners: no separate pass over the whole of dx. */
  for (int bc = 0; bc < p->B * C; bc++) {
    float *dp = dx + (size_t)bc * H * W;
    const float *gp = p->dy + (size_t)bc * OH * OW;
    const int32_t *ap = arg + (size_t)bc * OH * OW;
    const float *yp = p->y + (size_t)bc * OH * OW;
    memset(dp, 0, sizeof(float) * (size_t)H * W);
    for (int o = 0; o < OH * OW; o++) {
      float gv = gp[o];
      dx[ap[o]] = !rl || yp[o] > 0.0f ? gv : 0.0f;
    }
  }
}

const fl__layer_ops fl__maxpool_ops = {
    .name = "pool",
    .parse = maxpool_parse,
    .forward = maxpool_forward,
    .backward = maxpool_backward,
    .takes_relu = 1,
};
