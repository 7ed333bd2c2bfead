/* Memory for large arrays that are streamed through again and again: the aggregation sum
 * and the update buffers of the server.
 *
 * fl_alloc_big aligns such an array to 2 MiB and asks the kernel for transparent huge
 * pages for it (MADV_HUGEPAGE; Debian's default THP mode only gives them on request).  A
 * fold streams three or more arrays at once, and with 4 KiB pages the TLB misses cost
 * it a quarter of its speed at 16 M parameters (bench/bench_aggregate.c).  Arrays under
 * 2 MiB get plain malloc: a huge page would only round them up.  The memory is not
 * initialised; release it with free(). */
#ifndef FL_BIGALLOC_H
#define FL_BIGALLOC_H

#include <stddef.h>

void *fl_alloc_big(size_t bytes);

#endif
