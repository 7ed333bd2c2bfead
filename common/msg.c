/* Protocol messages (see msg.h): Envelope encode/decode with protobuf-c, the small
 * messages everyone builds the same way, version negotiation, and tensors streamed as
 * little-endian float32 TensorChunks. */
#include "msg.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "frame.h"

/* Chunk data is IEEE-754 binary32, little-endian.  On a little-endian host with IEEE
 * floats that is the in-memory layout and a chunk is a memcpy; elsewhere each value is
 * assembled from bytes.  Both paths are compiled everywhere (plain if, not #if), so the
 * portable one cannot rot unseen. */
_Static_assert(sizeof(float) == 4 && sizeof(uint32_t) == 4, "float must be 32 bits");
_Static_assert(FLT_RADIX == 2 && FLT_MANT_DIG == 24 && FLT_MAX_EXP == 128,
               "float must be IEEE-754 binary32");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FL_HOST_LE 1
#else
#define FL_HOST_LE 0
#endif

int fl_msg_encode(const Fl__Envelope *env, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  if (!env || env->body_case == FL__ENVELOPE__BODY__NOT_SET) return FL_EINVAL;
  size_t n = fl__envelope__get_packed_size(env);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return FL_ENOMEM;
  *len = fl__envelope__pack(env, buf);
  *out = buf;
  return 0;
}

int fl_msg_encode_framed(const Fl__Envelope *env, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  if (!env || env->body_case == FL__ENVELOPE__BODY__NOT_SET) return FL_EINVAL;
  size_t n = fl__envelope__get_packed_size(env);
  if (n > UINT32_MAX) return FL_ETOOBIG;
  uint8_t *buf = malloc(FL_FRAME_HEADER + n);
  if (!buf) return FL_ENOMEM;
  fl_frame_header(buf, (uint32_t)n);
  *len = FL_FRAME_HEADER + fl__envelope__pack(env, buf + FL_FRAME_HEADER);
  *out = buf;
  return 0;
}

/* protobuf-c keeps fields it does not know, and accepts a field number of 0 (or above
 * the protobuf maximum) when the tag is written in more bytes than needed; such a
 * message would not survive being packed again, so it is refused here.  Walks every
 * sub-message through the descriptors; our schema has no recursion, so depth is small. */
#define MAX_FIELD_NUMBER 536870911u

static int fields_valid(const ProtobufCMessage *m) {
  for (unsigned i = 0; i < m->n_unknown_fields; i++)
    if (m->unknown_fields[i].tag == 0 || m->unknown_fields[i].tag > MAX_FIELD_NUMBER) return 0;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = (const char *)m;
  for (unsigned f = 0; f < d->n_fields; f++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[f];
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n;
      ProtobufCMessage **sub;
      memcpy(&n, base + fd->quantifier_offset, sizeof n);
      memcpy(&sub, base + fd->offset, sizeof sub);
      for (size_t k = 0; k < n; k++)
        if (!fields_valid(sub[k])) return 0;
    } else {
      if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t which;
        memcpy(&which, base + fd->quantifier_offset, sizeof which);
        if (which != fd->id) continue;
      }
      ProtobufCMessage *sub;
      memcpy(&sub, base + fd->offset, sizeof sub);
      if (sub && !fields_valid(sub)) return 0;
    }
  }
  return 1;
}

/* protobuf-c allocates per field: a 4 MiB payload of tiny repeated fields would take
 * around 100 MiB of heap.  Unpacking goes through an allocator with a budget instead
 * (twice the payload plus 64 KiB: a tensor chunk needs the payload once, a control
 * message a few KiB); each allocation also pays for malloc's bookkeeping.  It uses
 * malloc and free, so the result is freed with the default allocator. */
typedef struct budget { size_t left; } budget;

static void *budget_alloc(void *data, size_t size) {
  budget *b = data;
  size_t cost = size + 16;
  if (cost < size || cost > b->left) return NULL;
  b->left -= cost;
  return malloc(size);
}

static void budget_free(void *data, void *p) {
  (void)data;
  free(p);
}

int fl_msg_decode(const uint8_t *payload, size_t len, Fl__Envelope **env) {
  static const uint8_t empty[1];
  budget b = {len <= SIZE_MAX / 4 ? 2 * len + (64u << 10) : SIZE_MAX};
  ProtobufCAllocator alloc = {budget_alloc, budget_free, &b};
  *env = fl__envelope__unpack(&alloc, len, payload ? payload : empty);
  if (!*env) return FL_EPROTO;
  if ((*env)->body_case == FL__ENVELOPE__BODY__NOT_SET || !fields_valid(&(*env)->base)) {
    fl__envelope__free_unpacked(*env, NULL);
    *env = NULL;
    return FL_EPROTO;
  }
  return 0;
}

void fl_msg_free(Fl__Envelope *env) {
  if (env) fl__envelope__free_unpacked(env, NULL);
}

const char *fl_msg_name(const Fl__Envelope *env) {
  if (!env) return "null";
  switch (env->body_case) {
  case FL__ENVELOPE__BODY__NOT_SET: return "none";
  case FL__ENVELOPE__BODY_HELLO: return "hello";
  case FL__ENVELOPE__BODY_WELCOME: return "welcome";
  case FL__ENVELOPE__BODY_TRAIN_TASK: return "train_task";
  case FL__ENVELOPE__BODY_CHUNK: return "chunk";
  case FL__ENVELOPE__BODY_UPDATE: return "update";
  case FL__ENVELOPE__BODY_EVAL_TASK: return "eval_task";
  case FL__ENVELOPE__BODY_EVAL_RESULT: return "eval_result";
  case FL__ENVELOPE__BODY_HEARTBEAT: return "heartbeat";
  case FL__ENVELOPE__BODY_ERROR: return "error";
  case FL__ENVELOPE__BODY_DONE: return "done";
  case FL__ENVELOPE__BODY_PROCEED: return "proceed";
  case FL__ENVELOPE__BODY_PARAMS_REQUEST: return "params_request";
  case FL__ENVELOPE__BODY_PARAMS: return "params";
  case FL__ENVELOPE__BODY_SECAGG_SETUP: return "secagg_setup";
  case FL__ENVELOPE__BODY_SECAGG_KEYS: return "secagg_keys";
  case FL__ENVELOPE__BODY_SECAGG_PEERS: return "secagg_peers";
  case FL__ENVELOPE__BODY_SECAGG_SHARES: return "secagg_shares";
  case FL__ENVELOPE__BODY_SECAGG_UNMASK: return "secagg_unmask";
  case FL__ENVELOPE__BODY_SECAGG_REVEAL: return "secagg_reveal";
  default: return "unknown";
  }
}

int fl_msg_heartbeat(uint64_t seq, float progress, uint8_t **out, size_t *len) {
  Fl__Heartbeat hb = FL__HEARTBEAT__INIT;
  hb.seq = seq;
  hb.progress = progress;
  Fl__Envelope env = FL__ENVELOPE__INIT;
  env.body_case = FL__ENVELOPE__BODY_HEARTBEAT;
  env.heartbeat = &hb;
  return fl_msg_encode(&env, out, len);
}

int fl_msg_error(Fl__ErrorCode code, const char *reason, uint8_t **out, size_t *len) {
  uint32_t versions[] = {FL_PROTOCOL_VERSION};
  Fl__Error e = FL__ERROR__INIT;
  e.code = code;
  e.reason = (char *)(reason ? reason : "");
  if (code == FL__ERROR_CODE__ERROR_VERSION) {
    e.n_supported_versions = sizeof versions / sizeof versions[0];
    e.supported_versions = versions;
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  env.body_case = FL__ENVELOPE__BODY_ERROR;
  env.error = &e;
  return fl_msg_encode(&env, out, len);
}

/* The client speaks protocol_version and everything in supported_versions; we speak
 * only FL_PROTOCOL_VERSION, so that is the answer if the client speaks it at all. */
int fl_version_negotiate(const Fl__Hello *hello, uint32_t *chosen) {
  *chosen = 0;
  if (!hello) return FL_EVERSION;
  int ok = hello->protocol_version == FL_PROTOCOL_VERSION;
  for (size_t i = 0; !ok && i < hello->n_supported_versions; i++)
    ok = hello->supported_versions[i] == FL_PROTOCOL_VERSION;
  if (!ok) return FL_EVERSION;
  *chosen = FL_PROTOCOL_VERSION;
  return 0;
}

/* ---- tensors ---- */

int fl_msg_chunk(const fl_chunk *ch, uint8_t **out, size_t *len) {
  Fl__TensorChunk c = FL__TENSOR_CHUNK__INIT;
  c.offset = ch->offset;
  c.total = ch->total;
  c.count = ch->count;
  c.encoding = (Fl__Encoding)ch->enc;
  c.scale = ch->scale;
  c.zero_point = ch->zero;
  c.data.data = ch->len ? (uint8_t *)ch->data : NULL; /* only read by the packer */
  c.data.len = ch->len;
  Fl__Envelope env = FL__ENVELOPE__INIT;
  env.body_case = FL__ENVELOPE__BODY_CHUNK;
  env.chunk = &c;
  return fl_msg_encode(&env, out, len);
}

void fl_tensor_tx_init(fl_tensor_tx *tx, const float *values, uint64_t n, uint32_t chunk_bytes) {
  const fl_codec f32 = {FL_ENC_FLOAT32, 0, 0};
  fl_tensor_tx_init_codec(tx, &f32, values, n, chunk_bytes, 0); /* float32 cannot fail here */
}

int fl_tensor_tx_init_codec(fl_tensor_tx *tx, const fl_codec *c, const float *values, uint64_t n,
                            uint32_t chunk_bytes, uint64_t seed) {
  tx->payload = 0;
  return fl_encoder_init(&tx->enc, c, values, n, chunk_bytes, seed);
}

int fl_tensor_tx_next(fl_tensor_tx *tx, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  uint8_t *buf = malloc(tx->enc.chunk_bytes < 8 ? 8 : tx->enc.chunk_bytes);
  if (!buf) return FL_ENOMEM;
  fl_chunk ch;
  int rc = fl_encoder_next(&tx->enc, &ch, buf);
  if (rc == 1) {
    int erc = fl_msg_chunk(&ch, out, len);
    if (erc) rc = erc;
    else tx->payload += ch.len;
  }
  free(buf);
  return rc;
}

void fl_tensor_tx_skip(fl_tensor_tx *tx, const fl_runs *r) { fl_encoder_skip(&tx->enc, r); }

void fl_tensor_rx_skip(fl_tensor_rx *rx, const fl_runs *r) {
  fl_decoder_skip(&rx->dec, r);
  rx->have = rx->dec.next;
  for (size_t k = 0; rx->dst && k < r->n; k++)
    memset(rx->dst + r->at[2 * k], 0, (r->at[2 * k + 1] - r->at[2 * k]) * sizeof *rx->dst);
}

void fl_tensor_rx_init(fl_tensor_rx *rx, float *dst, uint64_t total) {
  fl_tensor_rx_init_enc(rx, dst, total, FL_ENC_FLOAT32, 0);
}

void fl_tensor_rx_init_enc(fl_tensor_rx *rx, float *dst, uint64_t total, fl_enc enc,
                           uint64_t max_pairs) {
  memset(rx, 0, sizeof *rx);
  fl_decoder_init(&rx->dec, enc, total, max_pairs);
  rx->dst = dst;
  rx->total = total;
}

static const char *encoding_name(int e) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&fl__encoding__descriptor, e);
  return v ? v->name : "unknown";
}

int fl_tensor_rx_check(fl_tensor_rx *rx, const Fl__TensorChunk *chunk, fl_chunk *view, char *err,
                       size_t errlen) {
  if (err && errlen) err[0] = '\0';
  if ((int)chunk->encoding != (int)rx->dec.enc)
    return fl_errf(err, errlen, FL_EFORMAT, "chunk in encoding %s (%d), expected %s",
                   encoding_name((int)chunk->encoding), (int)chunk->encoding,
                   encoding_name((int)rx->dec.enc));
  *view = (fl_chunk){(fl_enc)chunk->encoding, chunk->offset, chunk->count, chunk->total,
                     chunk->scale, chunk->zero_point, chunk->data.data, chunk->data.len};
  /* A dense chunk's count is its number of values: a count of 0 means "as the data says". */
  size_t vb = view->enc == FL_ENC_FLOAT32 ? 4 : view->enc == FL_ENC_FLOAT16 ? 2 :
              view->enc == FL_ENC_INT8 ? 1 : 0;
  if (vb && view->count == 0) {
    if (view->len % vb)
      return fl_errf(err, errlen, FL_EPROTO, "chunk data of %zu bytes is not whole %s values",
                     view->len, fl_enc_name(view->enc));
    view->count = view->len / vb;
  }
  int rc = fl_decoder_check(&rx->dec, view, err, errlen);
  if (rc < 0) return rc;
  rx->have = rx->dec.next;
  rx->chunks++;
  rx->payload += view->len;
  return rc;
}

int fl_tensor_rx_add(fl_tensor_rx *rx, const Fl__TensorChunk *chunk, char *err, size_t errlen) {
  fl_chunk view;
  int rc = fl_tensor_rx_check(rx, chunk, &view, err, errlen);
  if (rc >= 0 && rx->dst) fl_chunk_decode(&view, rx->dst);
  return rc;
}
