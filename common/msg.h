/* Protocol messages: protobuf-c Envelopes in frames, and tensors streamed in chunks.
 *
 * fl_msg_decode unpacks one frame payload from an untrusted peer with limits checked
 * (an unknown or empty body is FL_EPROTO); fl_msg_encode packs an Envelope into a
 * caller-provided or malloc'd buffer.  A tensor (model or delta) follows its header
 * message as TensorChunk envelopes: fl_tensor_tx produces them one at a time so a sender
 * can stop at backpressure and continue later; fl_tensor_rx checks each chunk (offset in
 * order, total as announced, encoding supported, values finite when asked) and writes
 * the values into a caller-provided float array. */
#ifndef FL_MSG_H
#define FL_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "fl.pb-c.h"

#define FL_PROTOCOL_VERSION 1u
#define FL_CHUNK_DEFAULT (1u << 20) /* bytes of tensor data per chunk */

/* Packs env; *out is malloc'd (caller frees), *len its size.  0 or FL_ENOMEM. */
int fl_msg_encode(const Fl__Envelope *env, uint8_t **out, size_t *len);
/* Unpacks a payload; on success *env is the caller's to free with fl_msg_free. */
int fl_msg_decode(const uint8_t *payload, size_t len, Fl__Envelope **env);
void fl_msg_free(Fl__Envelope *env);
/* "hello", "train_task", ... for logs. */
const char *fl_msg_name(const Fl__Envelope *env);

/* Streams values[0..n) as TensorChunk frames of at most chunk_bytes of data. */
typedef struct fl_tensor_tx {
  const float *values;
  uint64_t n, next;
  uint32_t chunk_values;
} fl_tensor_tx;
void fl_tensor_tx_init(fl_tensor_tx *tx, const float *values, uint64_t n, uint32_t chunk_bytes);
/* Encodes the next chunk envelope into *out (malloc'd, caller frees).  Returns 1 when a
 * chunk was produced, 0 when the tensor is complete, or FL_E*. */
int fl_tensor_tx_next(fl_tensor_tx *tx, uint8_t **out, size_t *len);

typedef struct fl_tensor_rx {
  float *dst;        /* [total] destination, caller-owned */
  uint64_t total, have;
  int check_finite;  /* refuse NaN or infinity with FL_ENONFINITE */
} fl_tensor_rx;
void fl_tensor_rx_init(fl_tensor_rx *rx, float *dst, uint64_t total, int check_finite);
/* Takes one chunk.  Returns 1 when the tensor is complete, 0 when more chunks are
 * expected, or FL_E* (FL_EPROTO out of order / wrong total / bad length, FL_EFORMAT
 * unsupported encoding, FL_ENONFINITE) with the reason in err. */
int fl_tensor_rx_add(fl_tensor_rx *rx, const Fl__TensorChunk *chunk, char *err, size_t errlen);

#endif
