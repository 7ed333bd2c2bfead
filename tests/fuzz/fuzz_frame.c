/* libFuzzer target for everything that reads untrusted protocol bytes: the frame
 * decoder (fed the input whole and in splits derived from the input, which must give
 * the same frames), fl_msg_decode on every frame and on the raw input, re-encoding of
 * whatever decodes, version negotiation on a Hello, and the tensor receiver on chunks.
 *
 *   make fuzz FUZZ_SECONDS=60          seeds: tests/fuzz/corpus/frame (make fuzz-corpus) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "frame.h"
#include "msg.h"
#include "rng.h"

#define MAX_FRAME (64u << 10)
#define MAX_VALUES 256

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

/* A tensor being received across the chunk frames of one stream. */
typedef struct stream {
  fl_tensor_rx rx;
  int active;
  float dst[MAX_VALUES];
} stream;

static void take_chunk(stream *s, const Fl__TensorChunk *c) {
  if (!s->active) {
    /* The expected encoding from the total's low bits: every decoder, and chunks in
     * another encoding than expected. */
    fl_tensor_rx_init_enc(&s->rx, s->dst, c->total <= MAX_VALUES ? c->total : MAX_VALUES,
                          (fl_enc)(c->total & 3), 0);
    s->active = 1;
  }
  char err[128];
  int rc = fl_tensor_rx_add(&s->rx, c, err, sizeof err);
  CHECK(rc == 0 || rc == 1 || rc == FL_EPROTO || rc == FL_EFORMAT || rc == FL_ENONFINITE);
  CHECK(s->rx.have <= s->rx.total);
  if (rc != 0) s->active = 0;
}

static void take_payload(stream *s, const uint8_t *p, size_t n) {
  Fl__Envelope *env;
  int rc = fl_msg_decode(p, n, &env);
  CHECK(rc == 0 || rc == FL_EPROTO);
  if (rc) return;
  CHECK(strcmp(fl_msg_name(env), "unknown") != 0);

  /* Whatever decodes must encode and decode again to the same kind of message. */
  uint8_t *buf;
  size_t len;
  CHECK(fl_msg_encode(env, &buf, &len) == 0);
  Fl__Envelope *again;
  CHECK(fl_msg_decode(buf, len, &again) == 0);
  CHECK(again->body_case == env->body_case);
  fl_msg_free(again);
  free(buf);

  uint32_t v;
  if (env->body_case == FL__ENVELOPE__BODY_HELLO) {
    rc = fl_version_negotiate(env->hello, &v);
    CHECK(rc == 0 ? v == FL_PROTOCOL_VERSION : rc == FL_EVERSION && v == 0);
  } else if (env->body_case == FL__ENVELOPE__BODY_CHUNK) {
    take_chunk(s, env->chunk);
  }
  fl_msg_free(env);
}

/* What a decoding pass saw, to compare the whole and the split feeds. */
typedef struct summary {
  uint64_t hash, frames;
  int err;
} summary;

static void mix(summary *m, const uint8_t *p, size_t n) {
  m->hash = (m->hash ^ n) * 0x100000001b3ULL;
  for (size_t i = 0; i < n; i++) m->hash = (m->hash ^ p[i]) * 0x100000001b3ULL;
}

/* seed == 0: the whole input in one piece; otherwise pieces of 1..64 bytes. */
static summary run(const uint8_t *data, size_t size, uint64_t seed, int decode_msgs) {
  summary m = {0xcbf29ce484222325ULL, 0, 0};
  stream *s = calloc(1, sizeof *s);
  CHECK(s);
  fl_rng rng;
  fl_rng_seed(&rng, seed);
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, MAX_FRAME);
  size_t pos = 0;
  while (pos < size) {
    size_t piece = size - pos;
    if (seed) piece = 1 + fl_rng_below(&rng, piece < 64 ? piece : 64);
    /* Each piece in its own allocation, so ASan sees any read past it. */
    uint8_t *copy = malloc(piece);
    CHECK(copy);
    memcpy(copy, data + pos, piece);
    size_t off = 0;
    while (off < piece) {
      const uint8_t *frame;
      size_t flen;
      int rc = fl_frame_decode(&d, copy + off, piece - off, &frame, &flen);
      if (rc < 0) {
        CHECK(rc == FL_ETOOBIG);
        m.err = rc;
        break;
      }
      CHECK((size_t)rc <= piece - off && d.cap <= MAX_FRAME);
      off += (size_t)rc;
      if (frame) {
        CHECK(flen <= MAX_FRAME);
        m.frames++;
        mix(&m, frame, flen);
        if (decode_msgs) take_payload(s, frame, flen);
      } else {
        CHECK(off == piece);
      }
    }
    free(copy);
    if (m.err) break;
    pos += piece;
  }
  if (m.err) {
    const uint8_t *frame;
    size_t flen;
    CHECK(fl_frame_decode(&d, data, size, &frame, &flen) == m.err && !frame);
  }
  fl_frame_decoder_free(&d);
  free(s);
  return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  stream *s = calloc(1, sizeof *s);
  CHECK(s);
  take_payload(s, data, size);
  free(s);

  summary whole = run(data, size, 0, 1);
  uint64_t seed = 1;
  for (size_t i = 0; i < size && i < 8; i++) seed = seed * 131 + data[i];
  summary split = run(data, size, seed, 0);
  CHECK(whole.frames == split.frames && whole.hash == split.hash && whole.err == split.err);
  return 0;
}
