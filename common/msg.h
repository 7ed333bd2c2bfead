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

#include "codec.h"
#include "fl.pb-c.h"

/* 2: encodings other than float32 (TensorChunk count, scale, zero point; Welcome's update
 * encoding). */
#define FL_PROTOCOL_VERSION 2u
#define FL_CHUNK_DEFAULT (1u << 20) /* bytes of tensor data per chunk */

/* Packs env; *out is malloc'd (caller frees), *len its size.  0 or FL_ENOMEM
 * (FL_EINVAL for a NULL env or one without a body). */
int fl_msg_encode(const Fl__Envelope *env, uint8_t **out, size_t *len);
/* The same, with the 4-byte frame header in front: *out is a whole frame ready to send
 * (malloc'd, caller frees).  0, FL_ENOMEM, FL_EINVAL or FL_ETOOBIG. */
int fl_msg_encode_framed(const Fl__Envelope *env, uint8_t **out, size_t *len);
/* Unpacks a payload (payload may be NULL when len is 0).  On success *env is the
 * caller's to free with fl_msg_free; on error (FL_EPROTO: not a valid Envelope, or no
 * body) *env is NULL.  Field values are not checked beyond what protobuf guarantees:
 * enums may hold unknown values and sub-messages may be NULL.  Decoding takes at most
 * about twice len plus 64 KiB of heap; a payload that would need more is FL_EPROTO. */
int fl_msg_decode(const uint8_t *payload, size_t len, Fl__Envelope **env);
/* Frees an Envelope from fl_msg_decode; NULL is fine. */
void fl_msg_free(Fl__Envelope *env);
/* "hello", "train_task", ... for logs ("none" without a body, "null" for NULL). */
const char *fl_msg_name(const Fl__Envelope *env);

/* Encoded Envelope{Heartbeat{seq, progress}}; *out malloc'd, caller frees.  0 or FL_ENOMEM. */
int fl_msg_heartbeat(uint64_t seq, float progress, uint8_t **out, size_t *len);
/* Encoded Envelope{Error{code, reason}}; with FL__ERROR_CODE__ERROR_VERSION it lists the
 * versions this build speaks.  reason may be NULL.  *out malloc'd, caller frees. */
int fl_msg_error(Fl__ErrorCode code, const char *reason, uint8_t **out, size_t *len);

/* Server side of the handshake: picks the protocol version for a client's Hello.  The
 * client speaks hello->protocol_version and every supported_versions entry (so a Hello
 * with only protocol_version speaks just that one).  Sets *chosen and returns 0, or
 * returns FL_EVERSION (*chosen = 0) when it speaks no version we do; the server then
 * answers fl_msg_error(FL__ERROR_CODE__ERROR_VERSION, ...) and closes. */
int fl_version_negotiate(const Fl__Hello *hello, uint32_t *chosen);

/* Encoded Envelope{TensorChunk} of one chunk of a codec's encoder (codec.h; its payload
 * borrowed for the call); *out malloc'd, caller frees.  0 or FL_ENOMEM.  fl_tensor_tx
 * sends a whole tensor this way; a sender that keeps the chunks (fl-server's encoded
 * downlink) calls it for each. */
int fl_msg_chunk(const fl_chunk *ch, uint8_t **out, size_t *len);

/* Streams values[0..n) as TensorChunk frames of at most chunk_bytes of data, in an
 * encoding (codec.h).  An empty tensor (n = 0) is sent as one empty chunk, so the
 * receiver always completes on a chunk.  values is borrowed: keep it alive and unchanged
 * until the last chunk has been produced.  A tx holds no memory of its own. */
typedef struct fl_tensor_tx {
  fl_encoder enc;
  uint64_t payload;  /* tensor data bytes produced so far */
} fl_tensor_tx;
/* float32. */
void fl_tensor_tx_init(fl_tensor_tx *tx, const float *values, uint64_t n, uint32_t chunk_bytes);
/* Any encoding; seed drives int8's stochastic rounding.  0, or FL_ENOMEM (topk's
 * threshold needs a pass over a copy of the magnitudes) or FL_ERANGE (a value topk
 * cannot carry). */
int fl_tensor_tx_init_codec(fl_tensor_tx *tx, const fl_codec *c, const float *values, uint64_t n,
                            uint32_t chunk_bytes, uint64_t seed);
/* Encodes the next chunk envelope (a payload, without frame header) into *out
 * (malloc'd, caller frees).  Returns 1 when a chunk was produced, 0 when the tensor is
 * complete, or FL_E* (FL_ERANGE: a value the encoding cannot carry). */
int fl_tensor_tx_next(fl_tensor_tx *tx, uint8_t **out, size_t *len);
/* Leaves the runs r (checked, borrowed, zero in values by agreement) out of the chunks;
 * before the first chunk. */
void fl_tensor_tx_skip(fl_tensor_tx *tx, const fl_runs *r);

/* The receiving side: checks each chunk from the peer (codec.h's decoder: place, length,
 * encoding, finite values) and decodes it into a caller-provided float array. */
typedef struct fl_tensor_rx {
  fl_decoder dec;
  float *dst;        /* [total] destination, caller-owned; NULL: check only */
  uint64_t have, total;
  uint64_t chunks;   /* chunks accepted so far */
  uint64_t payload;  /* tensor data bytes accepted so far */
} fl_tensor_rx;
/* float32 into dst. */
void fl_tensor_rx_init(fl_tensor_rx *rx, float *dst, uint64_t total);
/* In encoding enc, at most max_pairs topk pairs (0: total); dst may be NULL when the
 * caller keeps the chunks encoded (fl_tensor_rx_check). */
void fl_tensor_rx_init_enc(fl_tensor_rx *rx, float *dst, uint64_t total, fl_enc enc,
                           uint64_t max_pairs);
/* Takes one chunk (borrowed; nothing of it is kept) into dst.  Returns 1 when the tensor
 * is complete, 0 when more chunks are expected, or FL_E* with the reason in err (may be
 * NULL): FL_EPROTO (out of place, past the end, the wrong total or length, an empty
 * chunk, a chunk after completion), FL_EFORMAT (another encoding than expected),
 * FL_ENONFINITE (naming the value).  After an error the transfer is broken. */
int fl_tensor_rx_add(fl_tensor_rx *rx, const Fl__TensorChunk *chunk, char *err, size_t errlen);
/* Expects the chunks to leave the runs r (checked, borrowed) out, and sets dst to 0 over
 * them; before the first chunk. */
void fl_tensor_rx_skip(fl_tensor_rx *rx, const fl_runs *r);
/* The same checks without decoding: *view is the chunk as codec.h sees it (its data
 * borrowed from chunk), for a caller that keeps updates encoded. */
int fl_tensor_rx_check(fl_tensor_rx *rx, const Fl__TensorChunk *chunk, fl_chunk *view, char *err,
                       size_t errlen);

#endif
