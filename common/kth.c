/* The kth smallest of an array of floats (see kth.h). */
#include "kth.h"

/* Quickselect with a median-of-three pivot and a three-way partition, so runs of equal
 * values (common: clients that did not move a weight, or a delta's zeros) cost nothing
 * extra. */
void fl_kth_smallest(float *v, size_t n, size_t kth) {
  size_t lo = 0, hi = n; /* the kth is in [lo, hi) */
  while (hi - lo > 1) {
    float x = v[lo], y = v[lo + (hi - lo) / 2], z = v[hi - 1];
    float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
    size_t lt = lo, i = lo, gt = hi; /* [lo, lt) < pivot, [lt, i) == pivot, [gt, hi) > pivot */
    while (i < gt) {
      float t = v[i];
      if (t < pivot) {
        v[i++] = v[lt];
        v[lt++] = t;
      } else if (t > pivot) {
        v[i] = v[--gt];
        v[gt] = t;
      } else {
        i++;
      }
    }
    if (kth < lt) hi = lt;
    else if (kth >= gt) lo = gt;
    else return;
  }
}
