/* CSV streams (common/csv.c): read in batches of any size, they give the rows the whole
 * file loader gives; a file without labels, a missing header, a wrong width, a ragged
 * row and a bad field are each named. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "error.h"
#include "testutil.h"

static char *write_tmp(const char *text) {
  char *dir = fl_test_tmpdir(), *path = malloc(700);
  snprintf(path, 700, "%s/d.csv", dir);
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  free(dir);
  return path;
}

Test(csv_stream, batches_give_the_loaders_rows) {
  char text[20000];
  size_t at = (size_t)sprintf(text, "\xef\xbb\xbf" "a, b ,c,label\r\n");
  for (int i = 0; i < 300; i++)
    at += (size_t)sprintf(text + at, "%d.5,%d,\"%g\",%d\n%s", i, -i, i * 0.25, i % 3,
                          i % 50 == 0 ? "\n" : "");
  char *path = write_tmp(text), err[512];
  fl_dataset d;
  cr_assert_eq(fl_dataset_load_csv(&d, path, NULL, err, sizeof err), 0, "%s", err);
  for (size_t batch = 1; batch <= 301; batch += 37) {
    fl_csv_stream *s;
    cr_assert_eq(fl_csv_stream_open(&s, path, NULL, 3, err, sizeof err), 0, "%s", err);
    cr_assert(fl_csv_stream_has_labels(s));
    float *x = malloc(sizeof *x * 3 * batch), *y = malloc(sizeof *y * batch);
    size_t n, row = 0;
    do {
      cr_assert_eq(fl_csv_stream_read(s, x, y, batch, &n, err, sizeof err), 0, "%s", err);
      cr_assert_leq(row + n, d.n);
      cr_assert_eq(memcmp(x, d.x + row * 3, sizeof *x * 3 * n), 0, "batch %zu row %zu", batch, row);
      cr_assert_eq(memcmp(y, d.y + row, sizeof *y * n), 0);
      row += n;
    } while (n);
    cr_assert_eq(row, 300);
    free(x);
    free(y);
    fl_csv_stream_close(s);
  }
  /* a named label column in the middle */
  fl_csv_stream *s;
  cr_assert_eq(fl_csv_stream_open(&s, path, "b", 3, err, sizeof err), 0, "%s", err);
  float x[6], y[2];
  size_t n;
  cr_assert_eq(fl_csv_stream_read(s, x, y, 2, &n, err, sizeof err), 0, "%s", err);
  cr_assert_eq(n, 2);
  cr_assert(y[1] == -1.0f && x[3] == 1.5f && x[4] == 0.25f && x[5] == 1.0f);
  fl_csv_stream_close(s);
  fl_dataset_free(&d);
  free(path);
}

Test(csv_stream, without_labels) {
  char *path = write_tmp("a,b\n1,2\n3,4\n"), err[512];
  fl_csv_stream *s;
  cr_assert_eq(fl_csv_stream_open(&s, path, NULL, 2, err, sizeof err), 0, "%s", err);
  cr_assert_not(fl_csv_stream_has_labels(s));
  float x[4], y[2];
  size_t n;
  cr_assert_eq(fl_csv_stream_read(s, x, y, 2, &n, err, sizeof err), 0);
  cr_assert(n == 2 && x[3] == 4.0f && y[0] == 0.0f);
  fl_csv_stream_close(s);
  free(path);
}

static void fails(const char *text, size_t features, int code, const char *msg) {
  char *path = write_tmp(text), err[512] = "";
  fl_csv_stream *s;
  int rc = fl_csv_stream_open(&s, path, NULL, features, err, sizeof err);
  if (rc == 0) {
    float x[64], y[8];
    size_t n;
    do rc = fl_csv_stream_read(s, x, y, 8, &n, err, sizeof err);
    while (rc == 0 && n);
    fl_csv_stream_close(s);
  }
  cr_assert_eq(rc, code, "%s: %s", text, err);
  cr_assert_not_null(strstr(err, msg), "%s", err);
  cr_assert_not_null(strstr(err, path), "%s", err);
  free(path);
}

Test(csv_stream, bad_files_are_named) {
  fails("", 2, FL_EFORMAT, "empty file");
  fails("1,2,0\n3,4,1\n", 2, FL_EFORMAT, ":1: the first row is all numbers");
  fails("1,2\n3,4\n", 2, FL_EFORMAT, "no header row");
  fails("a,b,c,d\n1,2,3,4\n", 2, FL_EMISMATCH, "4 columns, but the model takes 2 features");
  fails("a,b,y\n1,2,0\n1,2\n", 2, FL_EFORMAT, ":3: ragged row: 2 fields, expected 3");
  fails("a,b,y\n1,2,0\n1,inf,0\n", 2, FL_ENONFINITE, ":3: column 'b' (1): not a finite");
}

/* The whole-file loader refuses a file without a header row too. */
Test(csv_stream, loader_refuses_a_missing_header) {
  fl_dataset d;
  char err[512];
  const char *text = "0.5,2,1\n1,2,0\n";
  cr_assert_eq(fl_dataset_parse_csv(&d, text, strlen(text), "t.csv", NULL, 0, err, sizeof err),
               FL_EFORMAT);
  cr_assert_not_null(strstr(err, "t.csv:1: the first row is all numbers"), "%s", err);
}
