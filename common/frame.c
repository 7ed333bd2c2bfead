/* Length-prefixed frames (see frame.h): an incremental decoder that holds at most one
 * frame and never reads past the bytes it is given.
 *
 * States, from the fields: hdr_have < 4 reads the header; hdr_have == 4 and have < len
 * reads the payload; hdr_have == 4 and have == len means the frame was handed out by
 * the previous call and the next call starts a new one. */
#include "frame.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Consumed counts are returned as int: a header plus the largest payload must fit. */
#define MAX_LEN_LIMIT ((uint32_t)INT_MAX - FL_FRAME_HEADER)

void fl_frame_decoder_init(fl_frame_decoder *d, uint32_t max_len) {
  memset(d, 0, sizeof *d);
  d->max_len = max_len < MAX_LEN_LIMIT ? max_len : MAX_LEN_LIMIT;
}

void fl_frame_decoder_free(fl_frame_decoder *d) {
  free(d->buf);
  fl_frame_decoder_init(d, d->max_len);
}

void fl_frame_header(uint8_t out[FL_FRAME_HEADER], uint32_t len) {
  out[0] = (uint8_t)(len >> 24);
  out[1] = (uint8_t)(len >> 16);
  out[2] = (uint8_t)(len >> 8);
  out[3] = (uint8_t)len;
}

static int fail(fl_frame_decoder *d, int err) {
  d->failed = err;
  return err;
}

/* Makes room for a payload of d->len bytes: exactly that, never more. */
static int reserve(fl_frame_decoder *d) {
  if (d->len <= d->cap) return 0;
  uint8_t *p = realloc(d->buf, d->len);
  if (!p) return FL_ENOMEM;
  d->buf = p;
  d->cap = d->len;
  return 0;
}

int fl_frame_decode(fl_frame_decoder *d, const uint8_t *in, size_t in_len,
                    const uint8_t **frame, size_t *frame_len) {
  *frame = NULL;
  *frame_len = 0;
  if (d->failed) return d->failed;
  if (d->hdr_have == FL_FRAME_HEADER && d->have == d->len) d->hdr_have = d->have = d->len = 0;

  size_t used = 0;
  if (d->hdr_have < FL_FRAME_HEADER) {
    while (d->hdr_have < FL_FRAME_HEADER) {
      if (used == in_len) return (int)used;
      d->hdr[d->hdr_have++] = in[used++];
    }
    /* The header just completed: check the length before buffering anything. */
    d->len = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
             (uint32_t)d->hdr[2] << 8 | d->hdr[3];
    if (d->len > d->max_len) return fail(d, FL_ETOOBIG);
    int rc = reserve(d);
    if (rc) return fail(d, rc);
  }

  size_t want = d->len - d->have, take = in_len - used < want ? in_len - used : want;
  if (take) memcpy(d->buf + d->have, in + used, take);
  d->have += (uint32_t)take;
  used += take;
  if (d->have == d->len) {
    /* A zero-length frame still needs a non-NULL pointer to say "a frame is here". */
    *frame = d->len ? d->buf : d->hdr;
    *frame_len = d->len;
  }
  return (int)used;
}

int fl_frame_decoder_partial(const fl_frame_decoder *d) {
  if (d->hdr_have == 0) return 0;
  return !(d->hdr_have == FL_FRAME_HEADER && d->have == d->len);
}
