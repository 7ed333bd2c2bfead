/* common/frame.c: every stream gives the same frames whether fed whole, one byte at a
 * time or in random splits; each piece sits right before a guard page so any read past
 * it crashes; oversized lengths fail before anything is buffered, and stay failed. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "frame.h"
#include "rng.h"

/* A region whose last usable byte is followed by a PROT_NONE page. */
typedef struct guarded {
  uint8_t *map;
  size_t map_len, usable;
} guarded;

static void guarded_init(guarded *g, size_t max_piece) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  g->usable = (max_piece + page - 1) / page * page;
  if (g->usable == 0) g->usable = page;
  g->map_len = g->usable + page;
  g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(g->map, MAP_FAILED);
  cr_assert_eq(mprotect(g->map + g->usable, page, PROT_NONE), 0);
}

static void guarded_free(guarded *g) { munmap(g->map, g->map_len); }

/* Copies a piece so that it ends exactly at the guard page. */
static const uint8_t *guarded_place(guarded *g, const uint8_t *p, size_t n) {
  cr_assert_leq(n, g->usable);
  uint8_t *at = g->map + g->usable - n;
  if (n) memcpy(at, p, n);
  return at;
}

/* What a decoder produced: frames as (len, bytes) records back to back, and the result
 * of the first failing call (0 if none). */
typedef struct record {
  uint8_t *buf;
  size_t len, cap;
  int nframes, err;
} record;

static void record_add(record *r, const uint8_t *p, size_t n) {
  if (r->len + n + 8 > r->cap) {
    r->cap = (r->len + n + 8) * 2;
    r->buf = realloc(r->buf, r->cap);
    cr_assert_not_null(r->buf);
  }
  uint64_t n64 = n;
  memcpy(r->buf + r->len, &n64, 8);
  if (n) memcpy(r->buf + r->len + 8, p, n);
  r->len += 8 + n;
  r->nframes++;
}

/* Feeds in[0..n) in pieces: split == 0 whole, split == 1 byte by byte, otherwise
 * random piece lengths from the seed. */
static record feed(const uint8_t *in, size_t n, uint32_t max_len, int split, uint64_t seed) {
  guarded g;
  guarded_init(&g, n);
  fl_rng rng;
  fl_rng_seed(&rng, seed);
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, max_len);
  record r = {0};
  size_t pos = 0;
  while (pos < n && !r.err) {
    size_t piece = n - pos;
    if (split == 1) piece = 1;
    else if (split > 1) piece = 1 + fl_rng_below(&rng, piece < 64 ? piece : 64);
    const uint8_t *p = guarded_place(&g, in + pos, piece);
    while (piece > 0) {
      const uint8_t *frame;
      size_t flen;
      int rc = fl_frame_decode(&d, p, piece, &frame, &flen);
      if (rc < 0) {
        r.err = rc;
        break;
      }
      cr_assert_leq((size_t)rc, piece);
      if (frame) record_add(&r, frame, flen);
      else cr_assert_eq((size_t)rc, piece, "need more but not all consumed");
      p += rc;
      piece -= (size_t)rc;
      pos += (size_t)rc;
    }
    cr_assert_leq(d.cap, max_len);
  }
  fl_frame_decoder_free(&d);
  guarded_free(&g);
  return r;
}

static void check_all_splits(const uint8_t *in, size_t n, uint32_t max_len,
                             int want_frames, int want_err) {
  record whole = feed(in, n, max_len, 0, 0);
  cr_assert_eq(whole.nframes, want_frames, "whole: %d frames, want %d", whole.nframes, want_frames);
  cr_assert_eq(whole.err, want_err, "whole: %s", fl_err_name(whole.err));
  for (int s = 1; s < 12; s++) {
    record r = feed(in, n, max_len, s, (uint64_t)s * 7919);
    cr_assert_eq(r.nframes, whole.nframes, "split %d", s);
    cr_assert_eq(r.err, whole.err, "split %d", s);
    cr_assert_eq(r.len, whole.len, "split %d", s);
    cr_assert(r.len == 0 || memcmp(r.buf, whole.buf, r.len) == 0, "split %d differs", s);
    free(r.buf);
  }
  free(whole.buf);
}

/* Appends a frame with payload bytes p[i] = seed + i. */
static size_t put_frame(uint8_t *out, uint32_t len, uint8_t seed) {
  fl_frame_header(out, len);
  for (uint32_t i = 0; i < len; i++) out[FL_FRAME_HEADER + i] = (uint8_t)(seed + i);
  return FL_FRAME_HEADER + len;
}

Test(frame, header_is_big_endian) {
  uint8_t h[4];
  fl_frame_header(h, 0x01020304u);
  cr_assert(h[0] == 1 && h[1] == 2 && h[2] == 3 && h[3] == 4);
  fl_frame_header(h, 0);
  cr_assert(!h[0] && !h[1] && !h[2] && !h[3]);
}

Test(frame, single_frame_every_split) {
  uint8_t buf[FL_FRAME_HEADER + 300];
  size_t n = put_frame(buf, 300, 11);
  check_all_splits(buf, n, 1024, 1, 0);
  record r = feed(buf, n, 1024, 1, 0);
  uint64_t len;
  memcpy(&len, r.buf, 8);
  cr_assert_eq(len, 300);
  cr_assert_eq(memcmp(r.buf + 8, buf + 4, 300), 0);
  free(r.buf);
}

Test(frame, many_frames_in_one_buffer) {
  static const uint32_t lens[] = {5, 0, 1, 0, 0, 1000, 4, 3, 4096, 2, 0};
  size_t total = 0;
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) total += FL_FRAME_HEADER + lens[i];
  uint8_t *buf = malloc(total), *p = buf;
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
    p += put_frame(p, lens[i], (uint8_t)(i * 31));
  check_all_splits(buf, total, 4096, (int)(sizeof lens / sizeof lens[0]), 0);

  /* The frames come out in order with their own contents. */
  record r = feed(buf, total, 4096, 0, 0);
  size_t off = 0;
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    uint64_t len;
    memcpy(&len, r.buf + off, 8);
    cr_assert_eq(len, lens[i], "frame %zu", i);
    for (uint32_t j = 0; j < lens[i]; j++)
      cr_assert_eq(r.buf[off + 8 + j], (uint8_t)(i * 31 + j));
    off += 8 + len;
  }
  free(r.buf);
  free(buf);
}

Test(frame, zero_length_frames) {
  uint8_t buf[3 * FL_FRAME_HEADER];
  for (int i = 0; i < 3; i++) put_frame(buf + i * FL_FRAME_HEADER, 0, 0);
  check_all_splits(buf, sizeof buf, 0, 3, 0);

  fl_frame_decoder d;
  fl_frame_decoder_init(&d, 16);
  const uint8_t *f;
  size_t fl;
  cr_assert_eq(fl_frame_decode(&d, buf, sizeof buf, &f, &fl), 4);
  cr_assert_not_null(f, "a zero-length frame must still be reported");
  cr_assert_eq(fl, 0);
  cr_assert_null(d.buf, "nothing to buffer for an empty frame");
  fl_frame_decoder_free(&d);
}

Test(frame, largest_allowed_frame) {
  uint8_t buf[FL_FRAME_HEADER + 64];
  size_t n = put_frame(buf, 64, 1);
  check_all_splits(buf, n, 64, 1, 0);
}

Test(frame, oversized_fails_before_buffering) {
  uint8_t buf[FL_FRAME_HEADER + 65];
  size_t n = put_frame(buf, 65, 1);
  check_all_splits(buf, n, 64, 0, FL_ETOOBIG);

  /* A huge announced length: no allocation of that size, not even a start on it. */
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, FL_FRAME_DEFAULT_MAX);
  uint8_t hdr[FL_FRAME_HEADER + 8];
  fl_frame_header(hdr, 0xfffffff0u);
  memset(hdr + FL_FRAME_HEADER, 0x41, 8);
  const uint8_t *f;
  size_t fl;
  cr_assert_eq(fl_frame_decode(&d, hdr, 3, &f, &fl), 3);
  cr_assert_null(f);
  cr_assert_eq(fl_frame_decode(&d, hdr + 3, sizeof hdr - 3, &f, &fl), FL_ETOOBIG);
  cr_assert_null(f);
  cr_assert_eq(d.cap, 0);
  cr_assert_null(d.buf);
  cr_assert_eq(d.have, 0);
  fl_frame_decoder_free(&d);
}

Test(frame, failure_is_sticky) {
  uint8_t buf[2 * FL_FRAME_HEADER + 4];
  fl_frame_header(buf, 100);
  put_frame(buf + FL_FRAME_HEADER, 4, 0);
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, 50);
  const uint8_t *f;
  size_t fl;
  cr_assert_eq(fl_frame_decode(&d, buf, sizeof buf, &f, &fl), FL_ETOOBIG);
  /* A perfectly good frame afterwards is still refused. */
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(fl_frame_decode(&d, buf + FL_FRAME_HEADER, sizeof buf - FL_FRAME_HEADER, &f, &fl),
                 FL_ETOOBIG);
    cr_assert_null(f);
  }
  cr_assert_eq(fl_frame_decode(&d, buf, 0, &f, &fl), FL_ETOOBIG);
  fl_frame_decoder_free(&d);
}

Test(frame, truncated_stream_needs_more) {
  uint8_t buf[FL_FRAME_HEADER + 100];
  size_t n = put_frame(buf, 100, 9);
  for (size_t cut = 0; cut < n; cut++) {
    record r = feed(buf, cut, 1000, 0, 0);
    cr_assert_eq(r.nframes, 0, "cut at %zu", cut);
    cr_assert_eq(r.err, 0);
    free(r.buf);
    r = feed(buf, cut, 1000, 1, 0);
    cr_assert_eq(r.nframes, 0, "cut at %zu", cut);
    free(r.buf);
  }

  /* The rest arriving later completes the frame. */
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, 1000);
  const uint8_t *f;
  size_t fl;
  cr_assert_eq(fl_frame_decode(&d, buf, 50, &f, &fl), 50);
  cr_assert_null(f);
  cr_assert_eq(fl_frame_decode(&d, buf + 50, 0, &f, &fl), 0);
  cr_assert_null(f);
  cr_assert_eq(fl_frame_decode(&d, buf + 50, n - 50, &f, &fl), (int)(n - 50));
  cr_assert_not_null(f);
  cr_assert_eq(fl, 100);
  cr_assert_eq(memcmp(f, buf + 4, 100), 0);
  fl_frame_decoder_free(&d);
}

Test(frame, stops_right_after_a_frame) {
  uint8_t buf[2 * FL_FRAME_HEADER + 10];
  size_t n = put_frame(buf, 3, 1);
  n += put_frame(buf + n, 7, 2);
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, 100);
  const uint8_t *f;
  size_t fl;
  cr_assert_eq(fl_frame_decode(&d, buf, n, &f, &fl), 7);
  cr_assert_eq(fl, 3);
  cr_assert_eq(fl_frame_decode(&d, buf + 7, n - 7, &f, &fl), 11);
  cr_assert_eq(fl, 7);
  cr_assert_eq(f[0], 2);
  cr_assert_eq(fl_frame_decode(&d, buf + n, 0, &f, &fl), 0);
  cr_assert_null(f);
  fl_frame_decoder_free(&d);
}

Test(frame, buffer_grows_only_to_largest_frame) {
  uint8_t buf[3 * FL_FRAME_HEADER + 700];
  size_t n = put_frame(buf, 100, 0);
  n += put_frame(buf + n, 500, 0);
  n += put_frame(buf + n, 100, 0);
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, 1 << 20);
  const uint8_t *f;
  size_t fl, pos = 0;
  uint32_t caps[3];
  for (int i = 0; i < 3; i++) {
    int rc = fl_frame_decode(&d, buf + pos, n - pos, &f, &fl);
    cr_assert_gt(rc, 0);
    cr_assert_not_null(f);
    pos += (size_t)rc;
    caps[i] = d.cap;
  }
  cr_assert(caps[0] == 100 && caps[1] == 500 && caps[2] == 500);
  fl_frame_decoder_free(&d);
  cr_assert_null(d.buf);
  cr_assert_eq(d.max_len, 1u << 20);
}

Test(frame, random_streams) {
  fl_rng rng;
  fl_rng_seed(&rng, 42);
  for (int t = 0; t < 30; t++) {
    int nf = (int)fl_rng_below(&rng, 20);
    uint8_t *buf = malloc((size_t)nf * (FL_FRAME_HEADER + 300) + 1);
    size_t n = 0;
    for (int i = 0; i < nf; i++)
      n += put_frame(buf + n, (uint32_t)fl_rng_below(&rng, 300), (uint8_t)fl_rng_u64(&rng));
    check_all_splits(buf, n, 300, nf, 0);
    free(buf);
  }
}

/* A peer that closes now would cut a frame off: after a header byte, inside a payload;
 * not before the first byte, nor right after a whole frame was handed out. */
Test(frame, partial_tells_whether_a_frame_is_cut_off) {
  fl_frame_decoder d;
  fl_frame_decoder_init(&d, 64);
  const uint8_t in[] = {0, 0, 0, 2, 'h', 'i', 0};
  const uint8_t *f;
  size_t flen;
  cr_assert_eq(fl_frame_decoder_partial(&d), 0);
  cr_assert_eq(fl_frame_decode(&d, in, 3, &f, &flen), 3);
  cr_assert_eq(fl_frame_decoder_partial(&d), 1);
  cr_assert_eq(fl_frame_decode(&d, in + 3, 2, &f, &flen), 2);
  cr_assert_eq(fl_frame_decoder_partial(&d), 1);
  cr_assert_eq(fl_frame_decode(&d, in + 5, 2, &f, &flen), 1);
  cr_assert_not_null(f);
  cr_assert_eq(fl_frame_decoder_partial(&d), 0);
  cr_assert_eq(fl_frame_decode(&d, in + 6, 1, &f, &flen), 1);
  cr_assert_null(f);
  cr_assert_eq(fl_frame_decoder_partial(&d), 1);
  fl_frame_decoder_free(&d);
}
