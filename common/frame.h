/* Length-prefixed frames on a byte stream.
 *
 * A frame is a 4-byte big-endian payload length N followed by N payload bytes (one
 * protobuf-encoded fl.Envelope).  The decoder is incremental: fed any split of the stream,
 * down to one byte at a time, it yields the same frames in the same order.  It holds at
 * most one frame: a length above max_len is an error before any payload is buffered.
 * It owns one buffer (grown up to the largest frame seen, at most max_len); never shared
 * between threads. */
#ifndef FL_FRAME_H
#define FL_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FL_FRAME_HEADER 4u
#define FL_FRAME_DEFAULT_MAX (4u << 20) /* 4 MiB: a 1 MiB tensor chunk plus headroom */

typedef struct fl_frame_decoder {
  uint32_t max_len;  /* largest payload accepted */
  uint8_t hdr[FL_FRAME_HEADER];
  uint32_t hdr_have; /* header bytes seen so far */
  uint32_t len;      /* payload length of the frame being read */
  uint32_t have;     /* payload bytes buffered so far */
  uint8_t *buf;      /* payload buffer, owned */
  uint32_t cap;
  int failed;        /* sticky: after an error the decoder refuses everything (the FL_E*) */
} fl_frame_decoder;

/* max_len is capped at INT_MAX - 4 so that a consumed count always fits the int result. */
void fl_frame_decoder_init(fl_frame_decoder *d, uint32_t max_len);
/* Frees the buffer; the decoder is then as after init (same max_len) and may be reused. */
void fl_frame_decoder_free(fl_frame_decoder *d);

/* Consumes bytes from in[0..in_len).  Returns the number of bytes consumed (>= 0) or a
 * negative FL_E* (FL_ETOOBIG for a length above max_len; the decoder then stays failed).
 * When a whole frame is complete it stops consuming right after it and sets *frame and
 * *frame_len to the payload (valid until the next call); otherwise *frame is NULL and all
 * of the input was consumed ("need more").  Call again with the rest of the input.
 * A zero-length frame is a frame: *frame is then a non-NULL pointer and *frame_len 0.
 * A failed decoder returns its error again on every call (FL_ENOMEM is sticky too). */
int fl_frame_decode(fl_frame_decoder *d, const uint8_t *in, size_t in_len,
                    const uint8_t **frame, size_t *frame_len);

/* 1 when the decoder holds part of a frame (a peer that closes now cut a frame off). */
int fl_frame_decoder_partial(const fl_frame_decoder *d);

/* Writes the 4-byte header for a payload of len bytes into out. */
void fl_frame_header(uint8_t out[FL_FRAME_HEADER], uint32_t len);

#endif
