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

static void put_f32le(uint8_t *p, float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  p[0] = (uint8_t)u;
  p[1] = (uint8_t)(u >> 8);
  p[2] = (uint8_t)(u >> 16);
  p[3] = (uint8_t)(u >> 24);
}

static float get_f32le(const uint8_t *p) {
  uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
               (uint32_t)p[3] << 24;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

void fl_tensor_tx_init(fl_tensor_tx *tx, const float *values, uint64_t n, uint32_t chunk_bytes) {
  memset(tx, 0, sizeof *tx);
  tx->values = values;
  tx->n = n;
  tx->chunk_values = chunk_bytes / 4 ? chunk_bytes / 4 : 1;
}

int fl_tensor_tx_next(fl_tensor_tx *tx, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  /* An empty tensor is one empty chunk, so a receiver always sees a chunk complete it. */
  if (tx->next == tx->n && (tx->n > 0 || tx->sent)) return 0;
  uint64_t k = tx->n - tx->next < tx->chunk_values ? tx->n - tx->next : tx->chunk_values;

  Fl__TensorChunk c = FL__TENSOR_CHUNK__INIT;
  c.offset = tx->next;
  c.total = tx->n;
  c.encoding = FL__ENCODING__ENCODING_FLOAT32;
  c.data.len = (size_t)k * 4;
  uint8_t *tmp = NULL;
  if (FL_HOST_LE) {
    c.data.data = k ? (uint8_t *)(tx->values + tx->next) : NULL;
  } else if (k) {
    tmp = malloc(c.data.len);
    if (!tmp) return FL_ENOMEM;
    for (uint64_t i = 0; i < k; i++) put_f32le(tmp + 4 * i, tx->values[tx->next + i]);
    c.data.data = tmp;
  }
  Fl__Envelope env = FL__ENVELOPE__INIT;
  env.body_case = FL__ENVELOPE__BODY_CHUNK;
  env.chunk = &c;
  int rc = fl_msg_encode(&env, out, len);
  free(tmp);
  if (rc) return rc;
  tx->next += k;
  tx->sent++;
  return 1;
}

void fl_tensor_rx_init(fl_tensor_rx *rx, float *dst, uint64_t total, int check_finite) {
  memset(rx, 0, sizeof *rx);
  rx->dst = dst;
  rx->total = total;
  rx->check_finite = check_finite;
}

static const char *encoding_name(int e) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&fl__encoding__descriptor, e);
  return v ? v->name : "unknown";
}

#define REJECT(code, ...) \
  do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); return (code); } while (0)

int fl_tensor_rx_add(fl_tensor_rx *rx, const Fl__TensorChunk *chunk, char *err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  if (rx->chunks > 0 && rx->have == rx->total)
    REJECT(FL_EPROTO, "chunk after the tensor of %" PRIu64 " values was complete", rx->total);
  if (chunk->total != rx->total)
    REJECT(FL_EPROTO, "chunk says the tensor has %" PRIu64 " values, expected %" PRIu64,
           chunk->total, rx->total);
  if (chunk->offset != rx->have)
    REJECT(FL_EPROTO, "chunk at offset %" PRIu64 ", expected %" PRIu64, chunk->offset, rx->have);
  if (chunk->encoding != FL__ENCODING__ENCODING_FLOAT32)
    REJECT(FL_EFORMAT, "encoding %s (%d) not supported", encoding_name((int)chunk->encoding),
           (int)chunk->encoding);
  size_t bytes = chunk->data.len;
  if (bytes % 4)
    REJECT(FL_EPROTO, "chunk data of %zu bytes is not whole float32 values", bytes);
  uint64_t k = bytes / 4;
  if (k > rx->total - rx->have)
    REJECT(FL_EPROTO, "chunk of %" PRIu64 " values at %" PRIu64 " overruns the tensor of %" PRIu64,
           k, rx->have, rx->total);
  if (k == 0 && rx->total > 0)
    REJECT(FL_EPROTO, "empty chunk at offset %" PRIu64, rx->have);

  const uint8_t *src = chunk->data.data;
  float *dst = rx->dst + rx->have;
  if (rx->check_finite) {
    for (uint64_t i = 0; i < k; i++) {
      float v = get_f32le(src + 4 * i);
      if (!isfinite(v))
        REJECT(FL_ENONFINITE, "value %" PRIu64 " is %s", rx->have + i, isnan(v) ? "NaN" : "infinite");
      dst[i] = v;
    }
  } else if (FL_HOST_LE) {
    if (k) memcpy(dst, src, bytes);
  } else {
    for (uint64_t i = 0; i < k; i++) dst[i] = get_f32le(src + 4 * i);
  }
  rx->have += k;
  rx->chunks++;
  return rx->have == rx->total;
}
