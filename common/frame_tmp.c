/* STUB: a minimal implementation of frame.h so the transport builds and is tested before
 * the real common/frame.c lands.  Drop this file when it does (same symbols). */
#include "frame.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

void fl_frame_decoder_init(fl_frame_decoder *d, uint32_t max_len) {
  memset(d, 0, sizeof *d);
  d->max_len = max_len;
}

void fl_frame_decoder_free(fl_frame_decoder *d) {
  free(d->buf);
  d->buf = NULL;
  d->cap = 0;
}

int fl_frame_decode(fl_frame_decoder *d, const uint8_t *in, size_t in_len,
                    const uint8_t **frame, size_t *frame_len) {
  *frame = NULL;
  *frame_len = 0;
  if (d->failed) return FL_EPROTO;
  if (in_len > INT_MAX) in_len = INT_MAX;
  size_t used = 0;
  if (d->hdr_have < FL_FRAME_HEADER) {
    while (d->hdr_have < FL_FRAME_HEADER && used < in_len) d->hdr[d->hdr_have++] = in[used++];
    if (d->hdr_have < FL_FRAME_HEADER) return (int)used;
    d->len = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
             (uint32_t)d->hdr[2] << 8 | d->hdr[3];
    d->have = 0;
    if (d->len > d->max_len) {
      d->failed = 1;
      return FL_ETOOBIG;
    }
    if (d->len > d->cap) {
      uint8_t *nb = realloc(d->buf, d->len);
      if (!nb) {
        d->failed = 1;
        return FL_ENOMEM;
      }
      d->buf = nb;
      d->cap = d->len;
    }
  }
  size_t take = d->len - d->have;
  if (take > in_len - used) take = in_len - used;
  if (take) memcpy(d->buf + d->have, in + used, take);
  d->have += (uint32_t)take;
  used += take;
  if (d->have == d->len) {
    *frame = d->len ? d->buf : d->hdr;
    *frame_len = d->len;
    d->hdr_have = 0;
    d->have = 0;
  }
  return (int)used;
}

void fl_frame_header(uint8_t out[FL_FRAME_HEADER], uint32_t len) {
  out[0] = (uint8_t)(len >> 24);
  out[1] = (uint8_t)(len >> 16);
  out[2] = (uint8_t)(len >> 8);
  out[3] = (uint8_t)len;
}
