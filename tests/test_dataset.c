/* Datasets: IDX and CSV loading (good and bad files), specs, round trips,
 * standardisation and splits. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "dataset.h"
#include "error.h"
#include "testutil.h"

#define FMNIST "/usr/share/datasets/fashion-mnist/"

static char dir[64];
static char err[512];

static void make_dir(void) {
  strcpy(dir, "/tmp/fl-test-dataset-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  fl_test_system(cmd);
}

TestSuite(dataset, .init = make_dir, .fini = remove_dir);

static const char *path_of(const char *name) {
  static char buf[4][256];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

/* Writes bytes to dir/name, gzip-compressed when gz is set; returns the path. */
static const char *put(const char *name, const void *data, size_t len, int gz) {
  const char *p = path_of(name);
  if (gz) {
    gzFile g = gzopen(p, "wb");
    cr_assert_not_null(g);
    if (len) cr_assert_eq(gzwrite(g, data, (unsigned)len), (int)len);
    cr_assert_eq(gzclose(g), Z_OK);
  } else {
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
  }
  return p;
}

static const char *put_text(const char *name, const char *text) {
  return put(name, text, strlen(text), 0);
}

static void be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* An IDX image file of n images of r x c (pixel i = i % 256) and its label file
 * (label i = i % 3), in buffers of the exact size. */
static size_t idx_images(uint8_t *b, uint32_t n, uint32_t r, uint32_t c) {
  be32(b, 0x803), be32(b + 4, n), be32(b + 8, r), be32(b + 12, c);
  for (size_t i = 0; i < (size_t)n * r * c; i++) b[16 + i] = (uint8_t)i;
  return 16 + (size_t)n * r * c;
}
static size_t idx_labels(uint8_t *b, uint32_t n) {
  be32(b, 0x801), be32(b + 4, n);
  for (uint32_t i = 0; i < n; i++) b[8 + i] = (uint8_t)(i % 3);
  return 8 + n;
}

Test(dataset, fashion_mnist_train_and_test) {
  if (access(FMNIST "train-images-idx3-ubyte.gz", R_OK) != 0)
    cr_skip_test("dataset-fashion-mnist is not installed");
  fl_dataset d;
  cr_assert_eq(fl_dataset_load(&d, "fashion-mnist:train", err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.n, 60000);
  cr_assert_eq(d.dim, 784);
  cr_assert(d.channels == 1 && d.height == 28 && d.width == 28);
  cr_assert_eq(d.num_classes, 10);
  const float first[] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
  for (int i = 0; i < 10; i++) cr_assert_eq(d.y[i], first[i], "label %d", i);
  float lo = 1, hi = 0;
  for (size_t i = 0; i < d.n * d.dim; i++) {
    if (d.x[i] < lo) lo = d.x[i];
    if (d.x[i] > hi) hi = d.x[i];
  }
  cr_assert(lo == 0.0f && hi == 1.0f, "pixels in [%g, %g]", lo, hi);
  fl_dataset_free(&d);

  cr_assert_eq(fl_dataset_load(&d, "fashion-mnist:test", err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.n, 10000);
  const float first_test[] = {9, 2, 1, 1, 6, 1, 4, 6};
  for (int i = 0; i < 8; i++) cr_assert_eq(d.y[i], first_test[i], "label %d", i);
  fl_dataset_free(&d);
}

Test(dataset, idx_plain_and_gzip) {
  static uint8_t img[16 + 5 * 2 * 3], lab[8 + 5];
  size_t il = idx_images(img, 5, 2, 3), ll = idx_labels(lab, 5);
  for (int gz = 0; gz < 2; gz++) {
    const char *ip = put(gz ? "i.gz" : "i", img, il, gz), *lp = put(gz ? "l.gz" : "l", lab, ll, gz);
    char spec[600];
    snprintf(spec, sizeof spec, "%s,%s", ip, lp);
    fl_dataset d;
    cr_assert_eq(fl_dataset_load(&d, spec, err, sizeof err), 0, "%s", err);
    cr_assert(d.n == 5 && d.dim == 6 && d.height == 2 && d.width == 3 && d.channels == 1);
    cr_assert_eq(d.num_classes, 3);
    for (size_t i = 0; i < 30; i++) cr_assert_eq(d.x[i], (float)i / 255.0f);
    cr_assert_eq(d.y[4], 1.0f);
    fl_dataset_free(&d);
  }
}

/* Loads the IDX pair and checks the error code and that err contains want. */
static void idx_fails(const uint8_t *img, size_t il, const uint8_t *lab, size_t ll, int code,
                      const char *want) {
  const char *ip = put("bad-images", img, il, 0), *lp = put("bad-labels", lab, ll, 0);
  fl_dataset d;
  err[0] = 0;
  int rc = fl_dataset_load_idx(&d, ip, lp, err, sizeof err);
  cr_assert_eq(rc, code, "got %s: %s", fl_err_name(rc), err);
  cr_assert_not_null(strstr(err, want), "'%s' lacks '%s'", err, want);
  cr_assert_null(d.x);
}

Test(dataset, idx_errors) {
  static uint8_t img[16 + 4 * 4], lab[8 + 4], bad[64];
  size_t il = idx_images(img, 4, 2, 2), ll = idx_labels(lab, 4);
  idx_fails(img, il - 5, lab, ll, FL_ETRUNC, "header says 4 images, file holds 2 complete");
  idx_fails(img, il, lab, ll - 1, FL_ETRUNC, "header says 4 labels, file holds 3");
  idx_fails(img, 10, lab, ll, FL_ETRUNC, "IDX header needs 16");
  idx_fails(img, 0, lab, ll, FL_EFORMAT, "empty file");
  memcpy(bad, img, il);
  bad[0] = 0x1f;
  idx_fails(bad, il, lab, ll, FL_EFORMAT, "not an IDX file");
  memcpy(bad, img, il);
  bad[2] = 0x0d;
  idx_fails(bad, il, lab, ll, FL_EFORMAT, "0x0d (float32) is not supported");
  idx_fails(lab, ll, img, il, FL_EFORMAT, "is it a label file?");
  memcpy(bad, img, il);
  bad[il] = 7;
  idx_fails(bad, il + 1, lab, ll, FL_EFORMAT, "1 unexpected bytes after the last of 4");
  ll = idx_labels(lab, 3);
  idx_fails(img, il, lab, ll, FL_EFORMAT, "holds 4 images but");
  idx_fails(img, il, lab, 0, FL_EFORMAT, "bad-labels: empty file");
  il = idx_images(img, 0, 2, 2);
  idx_fails(img, il, lab, ll, FL_EFORMAT, "holds no records");
  il = idx_images(img, 1, 0, 2);
  idx_fails(img, il, lab, ll, FL_EFORMAT, "images of 0x2 pixels");

  fl_dataset d;
  int rc = fl_dataset_load_idx(&d, path_of("missing"), path_of("bad-labels"), err, sizeof err);
  cr_assert_eq(rc, FL_ENOENT);
  cr_assert_not_null(strstr(err, "missing: cannot open: No such file"), "%s", err);
}

Test(dataset, idx_truncated_gzip_stream) {
  static uint8_t img[16 + 50 * 100], lab[8 + 50];
  size_t il = idx_images(img, 50, 10, 10), ll = idx_labels(lab, 50);
  const char *ip = put("i.gz", img, il, 1), *lp = put("l.gz", lab, ll, 1);
  FILE *f = fopen(ip, "rb");
  uint8_t z[8192];
  size_t zl = fread(z, 1, sizeof z, f);
  fclose(f);
  ip = put("cut.gz", z, zl / 2, 0);
  fl_dataset d;
  cr_assert_eq(fl_dataset_load_idx(&d, ip, lp, err, sizeof err), FL_ETRUNC, "%s", err);
  cr_assert_not_null(strstr(err, "cut.gz: truncated"), "%s", err);
}

static int csv_load(fl_dataset *d, const char *text, const char *label) {
  err[0] = 0;
  return fl_dataset_load_csv(d, put_text("t.csv", text), label, err, sizeof err);
}

Test(dataset, csv_basic) {
  fl_dataset d;
  cr_assert_eq(csv_load(&d, "a,b,label\n1,2,0\n3.5,-4e2,2\r\n\n 5 , \"6\" ,1", NULL), 0, "%s",
               err);
  cr_assert(d.n == 3 && d.dim == 2 && d.num_classes == 3);
  cr_assert(d.channels == 1 && d.height == 1 && d.width == 2);
  cr_assert(d.x[2] == 3.5f && d.x[3] == -400.0f && d.x[5] == 6.0f);
  cr_assert(d.y[0] == 0 && d.y[1] == 2 && d.y[2] == 1);
  fl_dataset_free(&d);

  /* By name and by index; the remaining columns keep their order. */
  cr_assert_eq(csv_load(&d, "y,a,b\n0.5,1,2\n1.5,3,4\n", "y"), 0, "%s", err);
  cr_assert(d.num_classes == 0 && d.y[1] == 1.5f && d.x[0] == 1 && d.x[3] == 4);
  fl_dataset_free(&d);
  cr_assert_eq(csv_load(&d, "a,y,b\n1,7,2\n", "1"), 0, "%s", err);
  cr_assert(d.num_classes == 8 && d.x[0] == 1 && d.x[1] == 2);
  fl_dataset_free(&d);

  char spec[300];
  snprintf(spec, sizeof spec, "%s:a", path_of("t.csv"));
  cr_assert_eq(fl_dataset_load(&d, spec, err, sizeof err), 0, "%s", err);
  cr_assert(d.y[0] == 1 && d.x[0] == 7);
  fl_dataset_free(&d);
}

/* Loads text as CSV and checks the error code and that err contains want. */
static void csv_fails(const char *text, const char *label, int classes, int code,
                      const char *want) {
  fl_dataset d;
  err[0] = 0;
  int rc = fl_dataset_load_csv_classes(&d, put_text("bad.csv", text), label, classes, err,
                                       sizeof err);
  cr_assert_eq(rc, code, "got %s: %s", fl_err_name(rc), err);
  cr_assert_not_null(strstr(err, want), "'%s' lacks '%s'", err, want);
  cr_assert_null(d.x);
}

Test(dataset, csv_errors) {
  csv_fails("a,b,c\n1,2,3\n4,x5,6\n", NULL, 0, FL_EFORMAT,
            "bad.csv:3: column 'b' (1): not a number: 'x5'");
  csv_fails("a,b,c\n1,2,3\n4,5\n", NULL, 0, FL_EFORMAT,
            "bad.csv:3: ragged row: 2 fields, expected 3");
  csv_fails("a,b,c\n1,2,3,4\n", NULL, 0, FL_EFORMAT, ":2: ragged row: 4 fields, expected 3");
  csv_fails("", NULL, 0, FL_EFORMAT, "bad.csv: empty file");
  csv_fails("\n\r\n", NULL, 0, FL_EFORMAT, "empty file");
  csv_fails("a,b\n", NULL, 0, FL_EFORMAT, "no data rows");
  csv_fails("a\n1\n", NULL, 0, FL_EFORMAT, "header has one column");
  csv_fails("a,b\n1,,\n", NULL, 0, FL_EFORMAT, "ragged");
  csv_fails("a,b\n1,\n", NULL, 0, FL_EFORMAT, "column 'b' (1): empty field");
  csv_fails("a,b\nnan,1\n", NULL, 0, FL_ENONFINITE, "column 'a' (0): not a finite");
  csv_fails("a,b\n1e39,1\n", NULL, 0, FL_ENONFINITE, "not a finite float32");
  csv_fails("a,b\n1,0\n2,-1\n3,2\n", NULL, 0, FL_ERANGE, "bad.csv:3: label out of range: -1");
  csv_fails("a,b\n1,0\n2,10\n", NULL, 10, FL_ERANGE,
            ":3: label out of range: '10' is not a class index 0..9");
  csv_fails("a,b\n1,0.5\n", NULL, 10, FL_ERANGE, "label out of range");
  csv_fails("a,b\n1,0\n", "zz", 0, FL_EINVAL, "no column named 'zz'");
  csv_fails("a,b\n1,0\n", "5", 0, FL_EINVAL, "index 5, but the header has 2 columns");

  fl_dataset d;
  cr_assert_eq(fl_dataset_load_csv(&d, path_of("nope.csv"), NULL, err, sizeof err), FL_ENOENT);
  cr_assert_not_null(strstr(err, "nope.csv: cannot open"), "%s", err);
  cr_assert_eq(fl_dataset_load(&d, "what.txt", err, sizeof err), FL_EINVAL);
  cr_assert_not_null(strstr(err, "unknown form"), "%s", err);
  cr_assert_eq(fl_dataset_load(&d, "fashion-mnist:valid", err, sizeof err), FL_EINVAL);
}

Test(dataset, csv_label_kinds) {
  fl_dataset d;
  /* Negative integers are fine as a regression target when asked for. */
  cr_assert_eq(fl_dataset_load_csv_classes(&d, put_text("r.csv", "a,b\n1,-1\n2,3\n"), NULL, -1,
                                           err, sizeof err), 0, "%s", err);
  cr_assert(d.num_classes == 0 && d.y[0] == -1);
  fl_dataset_free(&d);
  /* Non-integer labels make a regression target. */
  cr_assert_eq(csv_load(&d, "a,b\n1,-1.5\n2,3\n", NULL), 0, "%s", err);
  cr_assert_eq(d.num_classes, 0);
  fl_dataset_free(&d);
  cr_assert_eq(fl_dataset_load_csv_classes(&d, put_text("c.csv", "a,b\n1,1\n2,0\n"), NULL, 5,
                                           err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.num_classes, 5);
  fl_dataset_free(&d);
}

Test(dataset, csv_round_trip_gives_identical_floats) {
  fl_dataset a = {.n = 50, .dim = 7, .channels = 1, .height = 1, .width = 7, .num_classes = 4};
  a.x = malloc(a.n * a.dim * sizeof(float));
  a.y = malloc(a.n * sizeof(float));
  uint32_t s = 12345;
  for (size_t i = 0; i < a.n * a.dim; i++) {
    s = s * 1103515245u + 12345u;
    uint32_t bits = (s & 0x7fffffffu) % 0x7f000000u; /* any finite positive float */
    memcpy(&a.x[i], &bits, 4);
    if (i % 2) a.x[i] = -a.x[i];
  }
  for (size_t i = 0; i < a.n; i++) a.y[i] = (float)(i % 4);
  const char *p = path_of("rt.csv");
  cr_assert_eq(fl_dataset_save_csv(&a, p, err, sizeof err), 0, "%s", err);
  fl_dataset b;
  cr_assert_eq(fl_dataset_load(&b, p, err, sizeof err), 0, "%s", err);
  cr_assert(b.n == a.n && b.dim == a.dim && b.num_classes == 4);
  cr_assert_eq(memcmp(a.x, b.x, a.n * a.dim * sizeof(float)), 0);
  cr_assert_eq(memcmp(a.y, b.y, a.n * sizeof(float)), 0);
  fl_dataset_free(&a);
  fl_dataset_free(&b);
}

Test(dataset, standardize_uses_subset_stats_and_keeps_constant_features) {
  /* Feature 0: 1,2,3,4 (mean 2.5, std sqrt(1.25)); feature 1 constant 7. */
  float x[] = {1, 7, 2, 7, 3, 7, 4, 7, 100, 7};
  float y[5] = {0};
  fl_dataset d = {.n = 5, .dim = 2, .x = x, .y = y};
  uint32_t first4[] = {0, 1, 2, 3};
  fl_subset s = {.data = &d, .idx = first4, .n = 4};
  float mean[2], std[2];
  fl_dataset_stats(&s, mean, std);
  cr_assert_float_eq(mean[0], 2.5f, 1e-6);
  cr_assert_float_eq(std[0], sqrtf(1.25f), 1e-6);
  cr_assert(mean[1] == 7.0f && std[1] == 0.0f);
  fl_dataset_standardize(&d, mean, std);
  for (int i = 0; i < 5; i++) cr_assert_eq(x[2 * i + 1], 0.0f);
  cr_assert_float_eq(x[0], -1.5f / sqrtf(1.25f), 1e-6);
  float sum = 0, sq = 0;
  for (int i = 0; i < 4; i++) sum += x[2 * i], sq += x[2 * i] * x[2 * i];
  cr_assert_float_eq(sum, 0.0f, 1e-5);
  cr_assert_float_eq(sq / 4, 1.0f, 1e-5);
  fl_subset all = {.data = &d, .idx = NULL, .n = 5};
  fl_dataset_stats(&all, mean, std);
  cr_assert(isfinite(mean[0]) && std[1] == 0.0f);
}

Test(dataset, split_is_seeded_disjoint_and_complete) {
  enum { N = 1000, V = 137 };
  static uint32_t tr[N - V], va[V], tr2[N], va2[V];
  fl_split(N, V, 42, tr, va);
  char seen[N] = {0};
  for (int i = 0; i < V; i++) seen[va[i]]++;
  for (int i = 0; i < N - V; i++) seen[tr[i]]++;
  for (int i = 0; i < N; i++) cr_assert_eq(seen[i], 1, "index %d", i);
  for (int i = 1; i < V; i++) cr_assert_lt(va[i - 1], va[i]);
  fl_split(N, V, 42, tr2, va2);
  cr_assert_eq(memcmp(va, va2, sizeof va), 0);
  fl_split(N, V, 43, tr2, va2);
  cr_assert_neq(memcmp(va, va2, sizeof va), 0);
  fl_split(N, 0, 1, tr2, va2);
  for (int i = 0; i < N; i++) cr_assert_eq(tr2[i], (uint32_t)i);
}

/* A copy of len bytes ending right before a PROT_NONE page, so reading past the end of
 * the input crashes the test (picohttpparser's trick).  Free with unguard. */
static uint8_t *guarded(const void *data, size_t len, size_t *map_len) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = (len + page - 1) / page + 1;
  *map_len = pages * page;
  uint8_t *m = mmap(NULL, *map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(m, MAP_FAILED);
  cr_assert_eq(mprotect(m + *map_len - page, page, PROT_NONE), 0);
  uint8_t *p = m + *map_len - page - len;
  memcpy(p, data, len);
  return p;
}

static void unguard(uint8_t *p, size_t len, size_t map_len) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  munmap(p + len + page - map_len, map_len);
}

/* Every prefix of a CSV file, placed against a guard page, parses or fails cleanly; the
 * prefixes that end after a complete row parse to the rows so far. */
Test(dataset, csv_prefixes_never_over_read) {
  const char *text = "\"a\", b ,label\r\n1.5,-2,1\r\n\n3,4e-3,0\n5,6,2";
  size_t len = strlen(text);
  for (size_t k = 0; k <= len; k++) {
    size_t ml;
    uint8_t *p = guarded(text, k, &ml);
    fl_dataset d;
    int rc = fl_dataset_parse_csv(&d, (const char *)p, k, "mem.csv", NULL, 0, err, sizeof err);
    if (rc == 0) {
      cr_assert(d.n >= 1 && d.n <= 3 && d.dim == 2, "prefix %zu", k);
      cr_assert_eq(d.x[0], 1.5f);
      fl_dataset_free(&d);
    } else {
      cr_assert(rc == FL_EFORMAT, "prefix %zu: %s", k, err);
      cr_assert_not_null(strstr(err, "mem.csv"), "%s", err);
    }
    unguard(p, k, ml);
  }
  size_t ml;
  uint8_t *p = guarded(text, len, &ml);
  fl_dataset d;
  cr_assert_eq(fl_dataset_parse_csv(&d, (const char *)p, len, "mem.csv", "b", 0, err,
                                    sizeof err), 0, "%s", err);
  cr_assert(d.n == 3 && d.x[5] == 2.0f && d.y[2] == 6.0f && d.y[1] == 4e-3f && d.num_classes == 0);
  fl_dataset_free(&d);
  unguard(p, len, ml);
}

Test(dataset, idx_prefixes_never_over_read) {
  static uint8_t img[16 + 3 * 4], lab[8 + 3];
  size_t il = idx_images(img, 3, 2, 2), ll = idx_labels(lab, 3), ml1, ml2;
  uint8_t *l = guarded(lab, ll, &ml2);
  for (size_t k = 0; k <= il; k++) {
    uint8_t *p = guarded(img, k, &ml1);
    fl_dataset d;
    int rc = fl_dataset_parse_idx(&d, p, k, "img", l, ll, "lab", err, sizeof err);
    cr_assert_eq(rc == 0, k == il, "prefix %zu: %s", k, err);
    if (rc == 0) fl_dataset_free(&d);
    unguard(p, k, ml1);
  }
  unguard(l, ll, ml2);
}

Test(dataset, csv_gzip) {
  const char *text = "a,b\n1,0\n2,1\n";
  put("z.csv.gz", text, strlen(text), 1);
  fl_dataset d;
  cr_assert_eq(fl_dataset_load(&d, path_of("z.csv.gz"), err, sizeof err), 0, "%s", err);
  cr_assert(d.n == 2 && d.num_classes == 2);
  fl_dataset_free(&d);
}

/* Features parse to exactly what strtof gives, for the short decimals the parser reads
 * itself and the long ones it leaves to strtof. */
Test(dataset, csv_features_match_strtof) {
  enum { N = 4000 };
  static char text[N * 40 + 16], fields[N][32];
  uint32_t s = 99;
  size_t at = (size_t)sprintf(text, "f,label\n");
  for (int i = 0; i < N; i++) {
    s = s * 1103515245u + 12345u;
    uint32_t r = s >> 8;
    switch (i % 6) {
    case 0: sprintf(fields[i], "%u", r % 20000000u); break;
    case 1: sprintf(fields[i], "-%u.%u", r % 1000u, (r >> 10) % 100000u); break;
    case 2: sprintf(fields[i], "%ue-%u", r % 17000000u, (r >> 5) % 14u); break;
    case 3: sprintf(fields[i], "%.9g", (double)(r % 100000u) * 1.37e-5); break;
    case 4: sprintf(fields[i], "0.%07u", r % 10000000u); break;
    default: sprintf(fields[i], "%u.%uE+%u", r % 99u, (r >> 7) % 999999u, (r >> 3) % 12u);
    }
    at += (size_t)sprintf(text + at, "%s,0\n", fields[i]);
  }
  fl_dataset d;
  cr_assert_eq(fl_dataset_parse_csv(&d, text, at, "mem.csv", NULL, 0, err, sizeof err), 0,
               "%s", err);
  cr_assert_eq(d.n, N);
  for (int i = 0; i < N; i++) {
    float want = strtof(fields[i], NULL);
    cr_assert_eq(memcmp(&d.x[i], &want, 4), 0, "'%s': %.9g vs %.9g", fields[i],
                 (double)d.x[i], (double)want);
  }
  fl_dataset_free(&d);
}
