/* The kth smallest of an array of floats, found in place (quickselect).
 *
 * One pass on average, no allocation: the order-statistic strategies (coordinate-wise
 * median, trimmed mean) use it on each coordinate's values, the top-k codec on the
 * magnitudes of a delta. */
#ifndef FL_KTH_H
#define FL_KTH_H

#include <stddef.h>

/* Puts the kth smallest of v[0..n) at v[kth] (kth < n), smaller or equal ones before it
 * and larger or equal ones after it, in no particular order.  Reorders v.  The values
 * are finite (the callers check): with a NaN among them the order is undefined. */
void fl_kth_smallest(float *v, size_t n, size_t kth);

#endif
