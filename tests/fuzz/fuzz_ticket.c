/* libFuzzer target for session tickets, the bytes a client gives back to the server
 * (common/ticket.c).  Input starting with 'S': the rest is sealed, then opened, and must
 * come back whole; a byte of it is then flipped and it must not open.  Otherwise the input
 * is opened as a ticket as it is and must be refused (it carries no valid tag). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ticket.h"

static int rng(void *ctx, unsigned char *out, size_t len) {
  unsigned *n = ctx;
  for (size_t i = 0; i < len; i++) out[i] = (unsigned char)((*n)++ * 167u + 13u);
  return 0;
}

static uint64_t fixed_clock(void *ctx) {
  (void)ctx;
  return 1700000000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fl_ticket_keys *k;
  static unsigned state;
  char err[256];
  if (!k && fl_ticket_keys_create(NULL, 3600, rng, &state, fixed_clock, NULL, &k, err, sizeof err))
    abort();
  uint8_t buf[70000];
  uint64_t start;
  uint8_t *st;
  size_t st_len;
  if (size > 1 && data[0] == 'S' && size - 1 <= 4096) {
    size_t len;
    if (fl_ticket_seal(k, 1700000000 - 10, data + 1, size - 1, buf, sizeof buf, &len) != 0) abort();
    uint8_t copy[70000];
    memcpy(copy, buf, len);
    if (fl_ticket_open(k, buf, len, &start, &st, &st_len) != 0) abort();
    if (start != 1700000000 - 10 || st_len != size - 1 || memcmp(st, data + 1, st_len) != 0) abort();
    copy[(data[1] * 31u) % len] ^= 0x40;
    if (fl_ticket_open(k, copy, len, &start, &st, &st_len) == 0) abort();
    return 0;
  }
  if (size > sizeof buf) return 0;
  memcpy(buf, data, size);
  if (fl_ticket_open(k, buf, size, &start, &st, &st_len) == 0) abort();
  return 0;
}
