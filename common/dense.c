/* Fully connected layer: y = x w^T + b, with w stored [out][in] (one row per unit).
 *
 * The three matrix products go to OpenBLAS; the bias and its gradient are plain loops
 * over contiguous rows, which the compiler vectorises. */
#include "layers.h"

#include <cblas.h>

void fl__dense_forward(float *y, const float *x, const float *w, const float *b,
                       int B, int in, int out) {
  /* y [B][out] = x [B][in] . w^T [in][out] */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, out, in, 1.0f, x, in, w, in,
              0.0f, y, out);
  for (int i = 0; i < B; i++) {
    float *row = y + (size_t)i * out;
    for (int j = 0; j < out; j++) row[j] += b[j];
  }
}

void fl__dense_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int B, int in, int out) {
  /* dw [out][in] += dy^T [out][B] . x [B][in] */
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, B, 1.0f, dy, out, x, in,
              1.0f, dw, in);
  for (int i = 0; i < B; i++) {
    const float *row = dy + (size_t)i * out;
    for (int j = 0; j < out; j++) db[j] += row[j];
  }
  /* dx [B][in] = dy [B][out] . w [out][in] */
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, in, out, 1.0f, dy, out, w, in,
                0.0f, dx, in);
}

void fl__dense_backward_sgd(float *dx, float *w, float *b, float *db, const float *dy,
                            const float *x, int B, int in, int out, float lr, float wd) {
  /* dx first: it needs the weights before the update */
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, in, out, 1.0f, dy, out, w, in,
                0.0f, dx, in);
  /* w [out][in] = (1 - lr wd) w - lr dy^T [out][B] . x [B][in]: the step itself (beta 1
   * when wd is 0, which OpenBLAS applies without a separate scaling pass) */
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, B, -lr, dy, out, x, in,
              1.0f - lr * wd, w, in);
  for (int i = 0; i < B; i++) {
    const float *row = dy + (size_t)i * out;
    for (int j = 0; j < out; j++) db[j] += row[j];
  }
  for (int j = 0; j < out; j++) {
    b[j] -= lr * (db[j] + wd * b[j]);
    db[j] = 0.0f;
  }
}
