/* Convolution (stride 1, same padding) and 2x2 max-pooling on [B][C][H][W] tensors.
 *
 * A convolution is im2col + one sgemm per sample: the input patch under every output
 * pixel becomes a column of col [C*F*F][H*W], and y_b [K][H*W] = w [K][C*F*F] . col.
 * Backward recomputes col rather than keeping one per sample (which would cost
 * B*C*F*F*H*W floats), then reuses the same buffer for the input-gradient columns.
 * Both directions go through a zero-padded copy of the image, so the copy loops have no
 * edge cases. */
#include "layers.h"

#include <cblas.h>
#include <string.h>

/* xp [C][H+F-1][W+F-1] = x [C][H][W] with (F-1)/2 zero rows/columns before, F/2 after */
static void pad_image(float *xp, const float *x, int C, int H, int W, int F) {
  int Hp = H + F - 1, Wp = W + F - 1, p = (F - 1) / 2;
  memset(xp, 0, sizeof(float) * (size_t)C * Hp * Wp);
  for (int c = 0; c < C; c++)
    for (int y = 0; y < H; y++) {
      const float *src = x + ((size_t)c * H + y) * W;
      float *dst = xp + ((size_t)c * Hp + y + p) * Wp + p;
      for (int i = 0; i < W; i++) dst[i] = src[i];
    }
}

/* col [C*F*F][H*W]  xp [C][H+F-1][W+F-1] (padded): every row of a column block is a
 * straight copy of W floats, with no edge cases. */
static void im2col(float *col, const float *xp, int C, int H, int W, int F) {
  int Hp = H + F - 1, Wp = W + F - 1;
  for (int c = 0; c < C; c++)
    for (int ky = 0; ky < F; ky++)
      for (int kx = 0; kx < F; kx++) {
        float *row = col + (size_t)((c * F + ky) * F + kx) * H * W;
        const float *src = xp + ((size_t)c * Hp + ky) * Wp + kx;
        for (int oy = 0; oy < H; oy++)
          for (int ox = 0; ox < W; ox++) row[oy * W + ox] = src[oy * Wp + ox];
      }
}

/* dx [C][H][W] = the columns of dcol [C*F*F][H*W] summed back onto their pixels, through
 * the padded scratch image xp [C][H+F-1][W+F-1] */
static void col2im(float *dx, float *xp, const float *dcol, int C, int H, int W, int F) {
  int Hp = H + F - 1, Wp = W + F - 1, p = (F - 1) / 2;
  memset(xp, 0, sizeof(float) * (size_t)C * Hp * Wp);
  for (int c = 0; c < C; c++)
    for (int ky = 0; ky < F; ky++)
      for (int kx = 0; kx < F; kx++) {
        const float *row = dcol + (size_t)((c * F + ky) * F + kx) * H * W;
        float *dst = xp + ((size_t)c * Hp + ky) * Wp + kx;
        for (int oy = 0; oy < H; oy++)
          for (int ox = 0; ox < W; ox++) dst[oy * Wp + ox] += row[oy * W + ox];
      }
  for (int c = 0; c < C; c++)
    for (int y = 0; y < H; y++) {
      const float *src = xp + ((size_t)c * Hp + y + p) * Wp + p;
      float *d = dx + ((size_t)c * H + y) * W;
      for (int i = 0; i < W; i++) d[i] = src[i];
    }
}

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

void fl__conv_forward(float *y, float *col, const float *x, const float *w, const float *b,
                      int B, int C, int H, int W, int K, int F) {
  int HW = H * W, CFF = C * F * F;
  float *xp = col + (size_t)CFF * HW;
  for (int i = 0; i < B; i++) {
    float *yb = y + (size_t)i * K * HW;
    pad_image(xp, x + (size_t)i * C * HW, C, H, W, F);
    im2col(col, xp, C, H, W, F);
    /* yb [K][HW] = w [K][CFF] . col [CFF][HW] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, HW, CFF, 1.0f, w, CFF, col,
                HW, 0.0f, yb, HW);
    for (int k = 0; k < K; k++) {
      float *r = yb + (size_t)k * HW, bk = b[k];
      for (int j = 0; j < HW; j++) r[j] += bk;
    }
  }
}

void fl__conv_backward(float *dx, float *dw, float *db, float *col, const float *dy,
                       const float *x, const float *w, int B, int C, int H, int W, int K,
                       int F) {
  int HW = H * W, CFF = C * F * F;
  float *xp = col + (size_t)CFF * HW;
  for (int i = 0; i < B; i++) {
    const float *dyb = dy + (size_t)i * K * HW;
    for (int k = 0; k < K; k++) db[k] += row_sum(dyb + (size_t)k * HW, HW);
    pad_image(xp, x + (size_t)i * C * HW, C, H, W, F);
    im2col(col, xp, C, H, W, F);
    /* dw [K][CFF] += dyb [K][HW] . col^T [HW][CFF] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, CFF, HW, 1.0f, dyb, HW, col, HW,
                1.0f, dw, CFF);
    if (!dx) continue;
    /* dcol [CFF][HW] = w^T [CFF][K] . dyb [K][HW], into the col buffer */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CFF, HW, K, 1.0f, w, CFF, dyb, HW,
                0.0f, col, HW);
    col2im(dx + (size_t)i * C * HW, xp, col, C, H, W, F);
  }
}

void fl__pool_forward(float *y, int32_t *arg, const float *x, int B, int C, int H, int W) {
  int OH = H / 2, OW = W / 2;
  for (int bc = 0; bc < B * C; bc++) {
    const float *xp = x + (size_t)bc * H * W;
    float *yp = y + (size_t)bc * OH * OW;
    int32_t *ap = arg + (size_t)bc * OH * OW;
    int32_t base = (int32_t)((size_t)bc * H * W);
    for (int oy = 0; oy < OH; oy++) {
      const float *r0 = xp + (size_t)2 * oy * W, *r1 = r0 + W;
      int32_t i0 = base + 2 * oy * W;
      /* branch-free selects (first maximum wins), which the compiler vectorises */
      for (int ox = 0; ox < OW; ox++) {
        float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], d = r1[2 * ox + 1];
        int32_t ia = i0 + 2 * ox, ic = ia + W;
        float top = b > a ? b : a, bot = d > c ? d : c;
        int32_t itop = b > a ? ia + 1 : ia, ibot = d > c ? ic + 1 : ic;
        yp[oy * OW + ox] = bot > top ? bot : top;
        ap[oy * OW + ox] = bot > top ? ibot : itop;
      }
    }
  }
}

void fl__pool_backward(float *dx, const float *dy, const int32_t *arg, int B, int C, int H,
                       int W) {
  int OH = H / 2, OW = W / 2;
  /* Every 2x2 window is written whole (zeros, then the winner), so no separate pass
   * clears dx; only a trailing odd row or column needs clearing first. */
  if ((H | W) & 1) memset(dx, 0, sizeof(float) * (size_t)B * C * H * W);
  for (int bc = 0; bc < B * C; bc++) {
    float *dp = dx + (size_t)bc * H * W;
    const float *gp = dy + (size_t)bc * OH * OW;
    const int32_t *ap = arg + (size_t)bc * OH * OW;
    for (int oy = 0; oy < OH; oy++) {
      float *r0 = dp + (size_t)2 * oy * W, *r1 = r0 + W;
      for (int ox = 0; ox < OW; ox++) {
        r0[2 * ox] = r0[2 * ox + 1] = r1[2 * ox] = r1[2 * ox + 1] = 0.0f;
        dx[ap[oy * OW + ox]] = gp[oy * OW + ox];
      }
    }
  }
}
