/* ROC AUC over a stream of (score, label) pairs, in memory independent of their number.
 *
 * The first FL_ROC_EXACT pairs are kept as they are, and their AUC is exact (ties share
 * their average rank, as fl_auc).  Past that every pair goes into a histogram of 2^20
 * bins ordered like the scores (a float's sign, exponent and top 11 mantissa bits): two
 * scores that share a bin, that is within about 1 part in 2048 of each other, count as
 * a tie, which moves the AUC by at most the share of positive-negative pairs that do.
 * Memory: 8 MiB of pairs, then 16 MiB of bins, allocated as needed. */
#ifndef FL_ROC_H
#define FL_ROC_H

#include <stddef.h>
#include <stdint.h>

#define FL_ROC_EXACT ((size_t)1 << 20)

typedef struct fl_roc {
  float *score, *label;   /* [FL_ROC_EXACT] the pairs kept */
  size_t n;               /* pairs seen */
  uint64_t *bins;         /* [2^20][2] negatives, positives; NULL while exact */
} fl_roc;

/* Adds n pairs (label > 0.5 is a positive).  0 or FL_ENOMEM. */
int fl_roc_add(fl_roc *r, const float *score, const float *label, size_t n);
/* 1 while every pair seen is kept (the AUC is exact). */
int fl_roc_exact(const fl_roc *r);
/* The AUC; 0.5 when either class is absent. */
double fl_roc_auc(const fl_roc *r);
void fl_roc_free(fl_roc *r);

#endif
