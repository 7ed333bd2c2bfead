/* Max pooling `pool:2`: 2x2 windows, stride 2, [B][C][H][W] -> [B][C][H/2][W/2] (a
 * trailing odd row or column is dropped).  Forward records each window's winning input
 * offset in the layer's per-sample buffer; backward routes the gradient there. */
#include <stdio.h>
#include <string.h>

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
