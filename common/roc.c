/* Streaming ROC AUC (roc.h): exact pairs, then an order-preserving histogram. */
#include "roc.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "train.h"

#define BIN_BITS 20
#define NBINS ((size_t)1 << BIN_BITS)

/* The float's bits mapped so that unsigned order is the floats' order, cut to a bin. */
static size_t bin_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
  return u >> (32 - BIN_BITS);
}

static void bin_add(fl_roc *r, float score, float label) {
  r->bins[2 * bin_of(score) + (label > 0.5f)]++;
}

int fl_roc_add(fl_roc *r, const float *score, const float *label, size_t n) {
  for (size_t i = 0; i < n; i++, r->n++) {
    if (r->n < FL_ROC_EXACT) {
      if (!r->score) {
        r->score = malloc(sizeof(float) * FL_ROC_EXACT);
        r->label = malloc(sizeof(float) * FL_ROC_EXACT);
        if (!r->score || !r->label) return FL_ENOMEM;
      }
      r->score[r->n] = score[i], r->label[r->n] = label[i];
      continue;
    }
    if (!r->bins) {
      if (!(r->bins = calloc(2 * NBINS, sizeof *r->bins))) return FL_ENOMEM;
      for (size_t k = 0; k < FL_ROC_EXACT; k++) bin_add(r, r->score[k], r->label[k]);
    }
    bin_add(r, score[i], label[i]);
  }
  return 0;
}

int fl_roc_exact(const fl_roc *r) { return r->bins == NULL; }

double fl_roc_auc(const fl_roc *r) {
  if (!r->bins) return r->n ? fl_auc(r->score, r->label, r->n) : 0.5;
  /* Mann-Whitney over the bins in order: a positive beats every negative in lower bins
   * and ties half of those in its own. */
  double neg_below = 0.0, pos = 0.0, neg = 0.0, u = 0.0;
  for (size_t b = 0; b < NBINS; b++) {
    double nb = (double)r->bins[2 * b], pb = (double)r->bins[2 * b + 1];
    u += pb * (neg_below + nb / 2.0);
    neg_below += nb;
    pos += pb, neg += nb;
  }
  return pos == 0.0 || neg == 0.0 ? 0.5 : u / (pos * neg);
}

void fl_roc_free(fl_roc *r) {
  free(r->score);
  free(r->label);
  free(r->bins);
  memset(r, 0, sizeof *r);
}
