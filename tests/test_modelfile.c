/* Model files: round trip, byte order, and refusal of every kind of damage. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "modelfile.h"
#include "testutil.h"

static char dir[64], path[128], err[512];

static void make_dir(void) {
  strcpy(dir, "/tmp/fl-test-modelfile-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/m.flm", dir);
}

static void remove_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  fl_test_system(cmd);
}

TestSuite(modelfile, .init = make_dir, .fini = remove_dir);

#define SPEC "mlp:784-64-10"
#define NP 300

static float params[NP];

static void save_sample(void) {
  for (int i = 0; i < NP; i++) params[i] = (float)i * 0.25f - 3.0f;
  cr_assert_eq(fl_modelfile_save(path, SPEC, 0x1122334455667788ull, params, NP, err,
                                 sizeof err), 0, "%s", err);
}

static size_t slurp(uint8_t *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f);
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

static void spill(const uint8_t *buf, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f);
  cr_assert_eq(fwrite(buf, 1, n, f), n);
  fclose(f);
}

static int load(char **spec, float **w, size_t *n) {
  uint64_t id;
  err[0] = 0;
  return fl_modelfile_load(path, spec, &id, w, n, err, sizeof err);
}

Test(modelfile, round_trip_little_endian) {
  save_sample();
  char *spec;
  float *w;
  size_t n;
  uint64_t id;
  cr_assert_eq(fl_modelfile_load(path, &spec, &id, &w, &n, err, sizeof err), 0, "%s", err);
  cr_assert_str_eq(spec, SPEC);
  cr_assert_eq(id, 0x1122334455667788ull);
  cr_assert_eq(n, NP);
  cr_assert_eq(memcmp(w, params, sizeof params), 0);
  free(spec);
  free(w);

  static uint8_t b[4096];
  size_t len = slurp(b, sizeof b), sl = strlen(SPEC);
  cr_assert_eq(len, 8 + 4 + 4 + sl + 8 + 8 + 4 * NP + 4);
  cr_assert_eq(memcmp(b, "FLMODEL\0", 8), 0);
  cr_assert(b[8] == 1 && b[9] == 0 && b[12] == sl && b[13] == 0);
  cr_assert(b[16 + sl] == 0x88 && b[16 + sl + 7] == 0x11);
  /* params[1] = -2.75f = 0xc0300000, stored low byte first. */
  const uint8_t *p1 = b + 16 + sl + 16 + 4;
  cr_assert(p1[0] == 0 && p1[1] == 0 && p1[2] == 0x30 && p1[3] == 0xc0);
  uint32_t crc = (uint32_t)crc32(0, b, (unsigned)(len - 4));
  cr_assert(b[len - 4] == (crc & 0xff) && b[len - 1] == crc >> 24);
}

Test(modelfile, empty_model) {
  cr_assert_eq(fl_modelfile_save(path, "", 0, NULL, 0, err, sizeof err), 0, "%s", err);
  char *spec;
  float *w;
  size_t n;
  cr_assert_eq(load(&spec, &w, &n), 0, "%s", err);
  cr_assert(n == 0 && spec[0] == 0);
  free(spec);
  free(w);
}

Test(modelfile, every_flipped_byte_is_refused) {
  save_sample();
  static uint8_t b[4096], c[4096];
  size_t len = slurp(b, sizeof b), sl = strlen(SPEC);
  for (size_t i = 0; i < len; i++) {
    memcpy(c, b, len);
    c[i] ^= (uint8_t)(1u << (i % 8));
    spill(c, len);
    char *spec = (char *)1;
    float *w = (float *)1;
    size_t n = 1;
    int rc = load(&spec, &w, &n);
    cr_assert_lt(rc, 0, "flip at %zu accepted", i);
    cr_assert(spec == NULL && w == NULL && n == 0);
    cr_assert_not_null(strstr(err, path), "%s", err);
    if (i < 8) cr_assert_eq(rc, FL_EFORMAT, "byte %zu: %s", i, err);
    else if (i < 12) cr_assert_eq(rc, FL_EVERSION, "byte %zu: %s", i, err);
    else if (i >= 16 && (i < 16 + sl + 8 || i >= 16 + sl + 16))
      cr_assert_eq(rc, FL_ECHECKSUM, "byte %zu: %s", i, err);
  }
}

Test(modelfile, truncated_magic_version_count) {
  save_sample();
  static uint8_t b[4096];
  size_t len = slurp(b, sizeof b), sl = strlen(SPEC);
  char *spec;
  float *w;
  size_t n;
  for (size_t cut = 0; cut < len; cut += cut < 40 ? 1 : 97) {
    spill(b, cut);
    int rc = load(&spec, &w, &n);
    cr_assert(rc == FL_ETRUNC || (cut < 8 && rc == FL_EFORMAT), "cut %zu: %s", cut, err);
  }
  spill(b, len - 1);
  cr_assert_eq(load(&spec, &w, &n), FL_ETRUNC);
  cr_assert_not_null(strstr(err, "truncated"), "%s", err);

  b[8] = 3;
  spill(b, len);
  cr_assert_eq(load(&spec, &w, &n), FL_EVERSION);
  cr_assert_not_null(strstr(err, "format version 3; this build reads versions 1 and 2"), "%s",
                     err);
  b[8] = 1;
  memcpy(b, "GGUF", 4);
  spill(b, len);
  cr_assert_eq(load(&spec, &w, &n), FL_EFORMAT);
  cr_assert_not_null(strstr(err, "not an fl model file"), "%s", err);
  memcpy(b, "FLMO", 4);

  /* A consistent CRC over a count that does not match the length. */
  b[16 + sl + 8] = (NP - 2) & 0xff;
  b[16 + sl + 9] = (NP - 2) >> 8;
  uint32_t crc = (uint32_t)crc32(0, b, (unsigned)(len - 4));
  for (int i = 0; i < 4; i++) b[len - 4 + i] = (uint8_t)(crc >> (8 * i));
  spill(b, len);
  cr_assert_eq(load(&spec, &w, &n), FL_EFORMAT);
  cr_assert_not_null(strstr(err, "parameter count 298 inconsistent with the file length"),
                     "%s", err);

  remove(path);
  cr_assert_eq(load(&spec, &w, &n), FL_ENOENT);
}

Test(modelfile, atomic_write_leaves_no_temp_file) {
  save_sample();
  save_sample(); /* replaces the existing file */
  DIR *dd = opendir(dir);
  int files = 0;
  for (struct dirent *e; (e = readdir(dd));)
    if (e->d_name[0] != '.') {
      files++;
      cr_assert_str_eq(e->d_name, "m.flm");
    }
  closedir(dd);
  cr_assert_eq(files, 1);

  char bad[200];
  snprintf(bad, sizeof bad, "%s/no/such/dir/m.flm", dir);
  int rc = fl_modelfile_save(bad, SPEC, 1, params, NP, err, sizeof err);
  cr_assert_eq(rc, FL_ENOENT, "%s", err);
  cr_assert_not_null(strstr(err, bad), "%s", err);
}

/* Version 2 carries the feature transform; version 1 readers' API drops it; a bad
 * deviation is refused by name. */
Test(modelfile, transform_round_trip_and_checks) {
  float mean[3] = {1.5f, -2.0f, 0.0f}, sd[3] = {0.5f, 3.0f, 1.0f};
  fl_transform tf = {3, mean, sd}, got;
  cr_assert_eq(fl_modelfile_save_ex(path, SPEC, 42, params, NP, &tf, err, sizeof err), 0, "%s",
               err);
  char *spec;
  float *w;
  size_t n;
  uint64_t id;
  cr_assert_eq(fl_modelfile_load_ex(path, &spec, &id, &w, &n, &got, err, sizeof err), 0, "%s",
               err);
  cr_assert_eq(n, NP);
  cr_assert_eq(id, 42);
  cr_assert_eq(got.dim, 3);
  cr_assert_arr_eq(got.mean, mean, sizeof mean);
  cr_assert_arr_eq(got.std, sd, sizeof sd);
  cr_assert_arr_eq(w, params, sizeof params);
  float x[6] = {2.0f, 1.0f, 5.0f, 1.5f, -2.0f, -1.0f};
  fl_transform_apply(&got, x, 2);
  cr_assert_float_eq(x[0], 1.0f, 1e-6);
  cr_assert_float_eq(x[1], 1.0f, 1e-6);
  cr_assert_float_eq(x[2], 5.0f, 1e-6);
  cr_assert_float_eq(x[3], 0.0f, 1e-6);
  fl_transform_free(&got);
  free(spec);
  free(w);
  cr_assert_eq(load(&spec, &w, &n), 0, "%s", err); /* the version 1 API reads it too */
  free(spec);
  free(w);

  sd[1] = 0.0f;
  cr_assert_eq(fl_modelfile_save_ex(path, SPEC, 42, params, NP, &tf, err, sizeof err), 0);
  cr_assert_eq(fl_modelfile_load_ex(path, &spec, &id, &w, &n, &got, err, sizeof err),
               FL_EFORMAT);
  cr_assert_not_null(strstr(err, "deviation of feature 1 is 0"), "%s", err);
}
