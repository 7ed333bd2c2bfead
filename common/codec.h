/* Tensor encodings: how a stream of float32 values (a model, a delta) travels in chunks,
 * independent of the protocol that carries the chunks (msg.h maps them to TensorChunk).
 *
 *   float32          4 bytes a value, exact
 *   float16          2 bytes a value, IEEE half rounded to nearest even (relative error
 *                    at most 2^-11 for values in the normal half range)
 *   int8[:stochastic] 1 byte a value, affine per chunk: x = zero + scale * q, q in 0..255,
 *                    scale = (max - min) / 255, zero = min of the chunk; rounding to the
 *                    nearest step (error at most scale / 2), or stochastic (unbiased:
 *                    E[x'] = x, error below one step)
 *   topk:F           the F fraction of values largest in magnitude, as (uint32 index,
 *                    float32 value) pairs in increasing index order; the rest are 0
 *
 * Every encoding's chunks tile the tensor: chunk i covers [offset, offset + count) and
 * the next starts where it ends, so a receiver completes when the last covers the end.
 * A dense chunk carries one value per position; a topk chunk carries the pairs whose
 * indices lie in its range.  A chunk holds at most chunk_bytes of payload.
 *
 * The encoder works on the caller's array (borrowed until the last chunk) and writes each
 * chunk's payload into a caller's buffer; the decoder checks every chunk from an
 * untrusted peer (position, length, index order, finite values) before anything reads
 * it, and never allocates.  fl_chunk_decode writes a checked chunk's values into the
 * full tensor; fl_chunk_axpy adds them, times a weight, into a double sum (the server's
 * fold reads a compressed update without ever expanding it). */
#ifndef FL_CODEC_H
#define FL_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

/* The numbers are the protocol's (fl.proto's Encoding). */
typedef enum { FL_ENC_FLOAT32 = 0, FL_ENC_FLOAT16 = 1, FL_ENC_INT8 = 2, FL_ENC_TOPK = 3,
               FL_ENC_RING16 = 4, FL_ENC_RING32 = 5 } fl_enc;
/* The encodings of values; the ring ones carry secure aggregation's masked inputs (ring
 * elements, not values: decode gives them as numbers, nothing more) and are never asked
 * for by fl_codec_parse. */
#define FL_ENC_COUNT 4
#define FL_ENC_ALL 6

/* A configured encoding. */
typedef struct fl_codec {
  fl_enc enc;
  int stochastic;      /* int8: stochastic rounding */
  double fraction;     /* topk: share of the values sent, (0, 1] */
} fl_codec;

/* "float32", "float16", "int8", "int8:stochastic", "topk:0.01".  0 or FL_ECONFIG with a
 * message naming what is allowed. */
int fl_codec_parse(const char *spec, fl_codec *c, char *err, size_t errlen);
/* "float32", "float16", "int8", "topk"; "unknown" for anything else. */
const char *fl_enc_name(int enc);
/* The spec in canonical form ("topk:0.01"). */
void fl_codec_format(const fl_codec *c, char *out, size_t len);
/* Values a topk stream of n values carries: ceil(fraction * n), at least 1 (0 when n is 0). */
uint64_t fl_codec_topk_count(const fl_codec *c, uint64_t n);
/* An upper bound on the payload bytes of a whole tensor of n values in this encoding
 * (what a receiver must be ready to hold). */
uint64_t fl_codec_max_bytes(const fl_codec *c, uint64_t n);

/* One chunk: its place, its int8 parameters, its payload (borrowed). */
typedef struct fl_chunk {
  fl_enc enc;
  uint64_t offset, count;   /* positions [offset, offset + count) of the tensor */
  uint64_t total;           /* the tensor's length */
  float scale, zero;        /* int8 */
  const uint8_t *data;      /* payload: count values, or len / 8 topk pairs */
  size_t len;
} fl_chunk;

/* Runs of a tensor its chunks leave out (frozen parameters, zero by agreement): runs[2 i]
 * and runs[2 i + 1] are the start and end of run i, [start, end); the runs increase and
 * do not overlap.  The chunks then cover the other positions in order, none reaching into
 * a run; a tensor they leave nothing of is sent as one empty chunk at its end. */
typedef struct fl_runs {
  const uint64_t *at;      /* [2 n], borrowed */
  size_t n;
} fl_runs;

/* 0 when n uint64s at[] are the runs of a tensor of total values (an even count; each
 * start below its end, the end at most total and at most the next start), else FL_EPROTO
 * with the reason in err. */
int fl_runs_check(const uint64_t *at, size_t n, uint64_t total, char *err, size_t errlen);
/* The runs of the positions where mask[0..total) is not 0: their bounds into *at
 * (malloc'd; NULL when there are none), their count into *n.  0, or FL_ENOMEM. */
int fl_runs_of_mask(const float *mask, uint64_t total, uint64_t **at, size_t *n);
/* Whether x is zero over every run. */
int fl_runs_zero(const fl_runs *r, const float *x);
/* The identity of the runs and of x's values over them (their bits): a 64-bit FNV-1a
 * hash, never 0.  Two models with the same id hold the same values there, barring a
 * collision of the hash (which a peer could force: an id names values, it does not
 * prove them). */
uint64_t fl_runs_id(const fl_runs *r, const float *x);
/* The position after the last one the chunks cover (total, or the start of a run that
 * ends the tensor). */
uint64_t fl_runs_end(const fl_runs *r, uint64_t total);

typedef struct fl_encoder {
  fl_codec c;
  const float *x;
  uint64_t n, next;
  fl_runs skip;             /* positions left out (fl_encoder_skip), or split at */
  int split;                /* fl_encoder_split: the runs are sent, in chunks of their own */
  size_t ri;                /* the first run not behind next */
  uint64_t stop;            /* the end of the stretch next is in: a run's start (or, split,
                             * its end), or n */
  int empty;                /* nothing to send: one empty chunk */
  uint32_t chunk_bytes;
  fl_rng rng;               /* stochastic rounding */
  float threshold;          /* topk: values of larger magnitude are sent ... */
  uint64_t at_threshold;    /* ... and this many more of exactly this magnitude */
  uint64_t sent;            /* chunks produced */
} fl_encoder;

/* Prepares x[0..n) for sending (for the ring encodings x holds uint32 ring elements, cast); for topk it finds the magnitude threshold (a pass over a
 * temporary copy of the magnitudes: FL_ENOMEM if that cannot be allocated).  seed drives
 * stochastic rounding.  A chunk holds at most chunk_bytes of payload, and at least one value
 * (or topk pair) whatever chunk_bytes is. */
int fl_encoder_init(fl_encoder *e, const fl_codec *c, const float *x, uint64_t n,
                    uint32_t chunk_bytes, uint64_t seed);
/* The next chunk, its payload written to buf (at least chunk_bytes, and at least 8).  1 when a chunk was
 * produced, 0 when the tensor is complete (an empty tensor is one empty chunk first),
 * FL_ERANGE when a value cannot be encoded (not finite, or beyond float16's range; float32
 * carries any value as it is). */
int fl_encoder_next(fl_encoder *e, fl_chunk *out, uint8_t *buf);
/* Leaves the runs r (checked, borrowed) out of the chunks, before the first is made. */
void fl_encoder_skip(fl_encoder *e, const fl_runs *r);
/* Sends every position, but no chunk crosses a bound of the runs r (checked, borrowed):
 * a chunk lies wholly inside a run or wholly outside all of them, and the chunks outside
 * are the ones fl_encoder_skip with r would make (the same values, scales and bits when
 * the encoding rounds deterministically; not topk), so dropping the others gives that
 * stream.  Before the first chunk is made. */
void fl_encoder_split(fl_encoder *e, const fl_runs *r);

/* The receiving side of one tensor. */
typedef struct fl_decoder {
  fl_enc enc;
  uint64_t total, next;     /* positions covered so far */
  fl_runs skip;             /* positions the sender leaves out (fl_decoder_skip) */
  size_t ri;                /* as in fl_encoder */
  uint64_t stop;
  int empty;
  uint64_t pairs, max_pairs; /* topk: pairs received, and the most accepted */
  uint64_t chunks;
} fl_decoder;

/* Expects a tensor of total values in encoding enc; a topk stream may carry at most
 * max_pairs pairs (0: total). */
void fl_decoder_init(fl_decoder *d, fl_enc enc, uint64_t total, uint64_t max_pairs);
/* Checks the next chunk: 1 when it completes the tensor, 0 when more are expected, or
 * FL_EPROTO (out of place, wrong length, pairs out of order or beyond the range, more
 * pairs than allowed, another encoding) or FL_ENONFINITE (a value that is not finite, or
 * int8 parameters that make one), with the reason in err.  Only a checked chunk may be
 * decoded. */
int fl_decoder_check(fl_decoder *d, const fl_chunk *ch, char *err, size_t errlen);
/* Expects the chunks to leave the runs r (checked, borrowed) out, before the first comes. */
void fl_decoder_skip(fl_decoder *d, const fl_runs *r);

/* dst[offset .. offset + count) = the chunk's values (topk: 0 where no pair is). */
void fl_chunk_decode(const fl_chunk *ch, float *dst);
/* sum[i] += w * value for every value the chunk carries (not ring elements). */
void fl_chunk_axpy(const fl_chunk *ch, double w, double *sum);
/* A ring chunk's elements, dst[0 .. count) (dst is the chunk's piece, not the tensor). */
void fl_chunk_ring(const fl_chunk *ch, uint32_t *dst);

/* ---- chunks kept encoded ----
 *
 * A receiver that keeps a tensor encoded (the server's update buffers) stores each checked
 * chunk as a record: u64 offset, u64 count, f32 scale, f32 zero point, u32 payload length,
 * then the payload, little-endian.  Records are written only after fl_decoder_check
 * accepted the chunk, and read back only by the process that wrote them. */
#define FL_CHUNK_RECORD_HEAD 28
/* Bytes the chunk takes as a record. */
size_t fl_chunk_record_size(const fl_chunk *ch);
/* Writes the record of ch at dst (fl_chunk_record_size bytes of room). */
void fl_chunk_record_put(const fl_chunk *ch, uint8_t *dst);
/* The record at *pos of recs[0..len) as a chunk of a tensor of total values in encoding
 * enc (its data points into recs); advances *pos.  1, or 0 at the end. */
int fl_chunk_record_next(const uint8_t *recs, size_t len, size_t *pos, fl_enc enc, uint64_t total,
                         fl_chunk *ch);
/* Over all the records of a tensor: dst = the values (0 where a topk stream sends none,
 * and where no chunk was: the runs a sender left out);
 * sum += w * values; the sum of the squared values. */
void fl_records_decode(const uint8_t *recs, size_t len, fl_enc enc, uint64_t total, float *dst);
void fl_records_axpy(const uint8_t *recs, size_t len, fl_enc enc, uint64_t total, double w,
                     double *sum);
double fl_records_sumsq(const uint8_t *recs, size_t len, fl_enc enc, uint64_t total);

/* IEEE half conversions (round to nearest even), for tests and tools. */
uint16_t fl_f32_to_f16(float f);
float fl_f16_to_f32(uint16_t h);

#endif
