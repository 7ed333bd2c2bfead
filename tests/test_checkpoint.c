/* Checkpoints: round trip, and refusal of a flipped byte, a truncated file and a file
 * that is not a checkpoint. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "error.h"
#include "fileio.h"
#include "testutil.h"

#include <zlib.h>

static checkpoint sample(float *p, size_t n, uint8_t *state) {
  checkpoint c = {0};
  c.rounds = 7;
  c.model_version = 7;
  fl_rng_seed(&c.rng, 42);
  c.metrics_len = 1234;
  c.strategy = state;
  c.strategy_len = 3;
  static uint8_t privacy[5] = {1, 2, 3, 4, 5};
  c.privacy = privacy;
  c.privacy_len = sizeof privacy;
  c.spec = "in:4 dense:2 softmax";
  c.model_id = 0xabcdef;
  for (size_t i = 0; i < n; i++) p[i] = (float)i * 0.5f - 1.0f;
  c.params = p;
  c.n = n;
  return c;
}

/* A fresh directory (the caller frees it) and path the checkpoint's file in it. */
static char *ckpt_path(char *path, size_t n) {
  char *dir = fl_test_tmpdir();
  snprintf(path, n, "%s/run.ckpt", dir);
  return dir;
}

/* c saved to path and read back into d. */
static void save_load(const char *path, const checkpoint *c, checkpoint *d) {
  char err[512];
  cr_assert_eq(checkpoint_save(path, c, err, sizeof err), 0, "%s", err);
  cr_assert_eq(checkpoint_load(path, d, err, sizeof err), 0, "%s", err);
}

Test(checkpoint, round_trip_and_corruption) {
  char path[600], err[512];
  char *dir = ckpt_path(path, sizeof path);
  float p[10];
  uint8_t st[3] = {9, 8, 7};
  checkpoint c = sample(p, 10, st), d;
  cr_assert_eq(checkpoint_load(path, &d, err, sizeof err), FL_ENOENT);
  save_load(path, &c, &d);
  cr_assert_eq(d.rounds, 7);
  cr_assert_eq(d.model_version, 7);
  cr_assert_eq(d.metrics_len, 1234);
  cr_assert_eq(memcmp(d.rng.s, c.rng.s, sizeof d.rng.s), 0);
  cr_assert_eq(d.strategy_len, 3);
  cr_assert_eq(memcmp(d.strategy, st, 3), 0);
  cr_assert_eq(d.privacy_len, 5);
  cr_assert_eq(memcmp(d.privacy, c.privacy, 5), 0);
  cr_assert_str_eq(d.spec, c.spec);
  cr_assert_eq(d.model_id, 0xabcdef);
  cr_assert_eq(d.n, 10);
  cr_assert_eq(memcmp(d.params, p, sizeof p), 0);
  checkpoint_free(&d);

  uint8_t *b;
  size_t len;
  cr_assert_eq(fl_file_read(path, &b, &len, err, sizeof err), 0);
  for (size_t i = 0; i < len; i++) { /* every flipped byte is refused */
    b[i] ^= 0x20;
    cr_assert_neq(checkpoint_decode(b, len, "x", &d, err, sizeof err), 0, "flip at %zu", i);
    b[i] ^= 0x20;
  }
  for (size_t cut = 0; cut < len; cut++)
    cr_assert_neq(checkpoint_decode(b, cut, "x", &d, err, sizeof err), 0, "cut at %zu", cut);
  cr_assert_eq(checkpoint_decode(b, len, "x", &d, err, sizeof err), 0);
  checkpoint_free(&d);
  memcpy(b, "FLMODEL", 7);
  cr_assert_eq(checkpoint_decode(b, len, "x.ckpt", &d, err, sizeof err), FL_EFORMAT);
  cr_assert(strstr(err, "x.ckpt: not an fl checkpoint"), "%s", err);
  free(b);
  free(dir);
}

/* A run's feature transform travels in the checkpoint's model image (version 2), and a
 * flipped byte in it is refused like any other. */
Test(checkpoint, transform_round_trip) {
  char path[600], err[512];
  char *dir = ckpt_path(path, sizeof path);
  float p[10], mean[4] = {1, -2, 0.5f, 3}, sd[4] = {2, 1, 0.25f, 7};
  uint8_t st[3] = {9, 8, 7};
  checkpoint c = sample(p, 10, st), d;
  c.tf = (fl_transform){4, mean, sd};
  save_load(path, &c, &d);
  cr_assert_eq(d.tf.dim, 4);
  cr_assert_eq(memcmp(d.tf.mean, mean, sizeof mean), 0);
  cr_assert_eq(memcmp(d.tf.std, sd, sizeof sd), 0);
  cr_assert_eq(memcmp(d.params, p, sizeof p), 0);
  cr_assert_eq(d.rounds, 7);
  checkpoint_free(&d);
  uint8_t *b;
  size_t len;
  cr_assert_eq(fl_file_read(path, &b, &len, err, sizeof err), 0);
  for (size_t i = len - 4 - 32 - 4; i < len; i++) { /* the transform and the CRCs */
    b[i] ^= 0x20;
    cr_assert_neq(checkpoint_decode(b, len, "x", &d, err, sizeof err), 0, "flip at %zu", i);
    b[i] ^= 0x20;
  }
  free(b);
  /* without one, dim 0 */
  c.tf = (fl_transform){0};
  save_load(path, &c, &d);
  cr_assert_eq(d.tf.dim, 0);
  checkpoint_free(&d);
  free(dir);
}

/* Versions 1 (before the privacy state) and 2 (before the best round) still read, with
 * none; a version from the future is refused by name. */
Test(checkpoint, older_versions_still_read) {
  char path[600], err[512];
  char *dir = ckpt_path(path, sizeof path);
  float p[4];
  uint8_t st[3] = {9, 8, 7};
  checkpoint c = sample(p, 4, st), d;
  c.privacy_len = 0;
  cr_assert_eq(checkpoint_save(path, &c, err, sizeof err), 0, "%s", err);
  uint8_t *b;
  size_t len;
  cr_assert_eq(fl_file_read(path, &b, &len, err, sizeof err), 0);
  /* Version 2: the same bytes without the best round (an empty name, round and value:
   * 4 + 16 bytes after the empty privacy state), version field 2, new CRC. */
  size_t at = 72 + 3 + 4; /* the head, the strategy state, the privacy length */
  memmove(b + at, b + at + 20, len - at - 20);
  len -= 20;
  fl_put32(b + 8, 2);
  fl_put32(b + len - 4, (uint32_t)crc32_z(0, b, len - 4));
  cr_assert_eq(checkpoint_decode(b, len, "v2", &d, err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.best_round, 0);
  cr_assert_null(d.best_metric);
  cr_assert_eq(d.strategy_len, 3);
  cr_assert_eq(memcmp(d.params, p, sizeof p), 0);
  checkpoint_free(&d);
  /* Version 1: also without the privacy length. */
  at = 72 + 3;
  memmove(b + at, b + at + 4, len - at - 4);
  len -= 4;
  fl_put32(b + 8, 1);
  fl_put32(b + len - 4, (uint32_t)crc32_z(0, b, len - 4));
  cr_assert_eq(checkpoint_decode(b, len, "v1", &d, err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.privacy_len, 0);
  cr_assert_eq(d.strategy_len, 3);
  cr_assert_eq(memcmp(d.params, p, sizeof p), 0);
  checkpoint_free(&d);
  fl_put32(b + 8, 4);
  fl_put32(b + len - 4, (uint32_t)crc32_z(0, b, len - 4));
  cr_assert_eq(checkpoint_decode(b, len, "v4", &d, err, sizeof err), FL_EVERSION);
  cr_assert(strstr(err, "version 4"), "%s", err);
  free(b);
  free(dir);
}

/* --keep-best's metric, round and value survive, to the bit. */
Test(checkpoint, best_round_round_trip) {
  char path[600];
  char *dir = ckpt_path(path, sizeof path);
  float p[4];
  uint8_t st[3] = {9, 8, 7};
  checkpoint c = sample(p, 4, st), d;
  c.best_metric = "test_accuracy", c.best_round = 5, c.best_value = 0.8746123456789;
  save_load(path, &c, &d);
  cr_assert_str_eq(d.best_metric, "test_accuracy");
  cr_assert_eq(d.best_round, 5);
  cr_assert(d.best_value == c.best_value);
  cr_assert_eq(memcmp(d.privacy, c.privacy, c.privacy_len), 0);
  checkpoint_free(&d);
  free(dir);
}
