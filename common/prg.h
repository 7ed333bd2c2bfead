/* Masks for secure aggregation: a 32-byte seed expanded by ChaCha20 (mbedTLS) into a
 * stream of ring elements, added to or subtracted from a vector in Z_(2^bits), bits 16 or
 * 32.  The same seed gives the same stream everywhere, so two clients that agreed on a
 * seed mask with +stream and -stream and the masks cancel in the sum.  A stream can be
 * taken in any number of pieces (offset), so a vector is masked chunk by chunk. */
#ifndef FL_PRG_H
#define FL_PRG_H

#include <stddef.h>
#include <stdint.h>

/* v[i] += sign * stream[offset + i] mod 2^bits, for i < n; v holds ring elements as
 * uint32 (the high bits beyond `bits` are kept zero).  sign is +1 or -1. */
void fl_prg_mask(const uint8_t seed[32], uint64_t offset, uint32_t *v, size_t n, int bits, int sign);

#endif
