/* CSV datasets: a header row naming the columns, then one sample per line.  One column
 * is the label, every other column a numeric feature.  Fields are separated by commas;
 * surrounding spaces and double quotes are dropped (a quoted field cannot hold a comma);
 * lines may end in CRLF; empty lines are skipped.  The parser works on a caller's buffer
 * and never reads past its length.  A stream (fl_csv_stream) reads the same format a
 * batch of rows at a time, from a plain or gzip file, in memory bounded by its longest
 * line. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "dataset.h"
#include "dataset_internal.h"
#include "error.h"

/* Longest numeric field accepted (digits of a float32 fit many times over). */
#define FIELD_MAX 127
/* Labels are classes only when exactly representable as float32 integers. */
#define LABEL_INT_MAX 16777216.0

typedef struct span { const char *p; size_t len; } span;

typedef struct parser {
  const char *name;
  char *err;
  size_t errlen;
  span *cols;          /* header names */
  size_t ncols;
} parser;

/* Drops blanks and one pair of surrounding double quotes. */
static span trim(span s) {
  while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) s.p++, s.len--;
  while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t')) s.len--;
  if (s.len >= 2 && s.p[0] == '"' && s.p[s.len - 1] == '"') s.p++, s.len -= 2;
  return s;
}

/* The line starting at *pos, without its "\n" or "\r\n"; advances *pos past it. */
static span next_line(const char *buf, size_t len, size_t *pos) {
  const char *p = buf + *pos;
  const char *nl = memchr(p, '\n', len - *pos);
  size_t k = nl ? (size_t)(nl - p) : len - *pos;
  *pos += nl ? k + 1 : k;
  if (k && p[k - 1] == '\r') k--;
  return (span){p, k};
}

static size_t count_fields(span line) {
  size_t n = 1;
  for (const char *p = line.p, *end = line.p + line.len; (p = memchr(p, ',', (size_t)(end - p)));
       p++)
    n++;
  return n;
}

/* Short decimals ("0", "255", "-1.25", "4e-3") without strtof: a mantissa of at most
 * 2^24 is exact as a float, and so is 10^k for k <= 10, so one IEEE multiply or divide
 * rounds correctly and gives strtof's result.  Returns 0 to leave the field to strtof. */
static int fast_float(const char *p, size_t len, float *out) {
  static const float pow10[] = {1e0f, 1e1f, 1e2f, 1e3f, 1e4f, 1e5f,
                                1e6f, 1e7f, 1e8f, 1e9f, 1e10f};
  size_t i = 0;
  int neg = 0, scale = 0, digits = 0;
  uint32_t m = 0;
  if (i < len && (p[i] == '-' || p[i] == '+')) neg = p[i++] == '-';
  for (int frac = 0; i < len; i++) {
    if (p[i] == '.' && !frac) {
      frac = 1;
      continue;
    }
    if (p[i] < '0' || p[i] > '9') break;
    m = m * 10 + (uint32_t)(p[i] - '0');
    if (m > (1u << 24)) return 0;
    scale -= frac;
    digits++;
  }
  if (!digits) return 0;
  if (i < len && (p[i] == 'e' || p[i] == 'E')) {
    int eneg = 0, e = 0, edigits = 0;
    if (++i < len && (p[i] == '-' || p[i] == '+')) eneg = p[i++] == '-';
    for (; i < len && p[i] >= '0' && p[i] <= '9' && edigits < 3; i++, edigits++)
      e = e * 10 + (p[i] - '0');
    if (!edigits) return 0;
    scale += eneg ? -e : e;
  }
  if (i != len || scale < -10 || scale > 10) return 0;
  float f = (float)m;
  f = scale < 0 ? f / pow10[-scale] : f * pow10[scale];
  *out = neg ? -f : f;
  return 1;
}

/* Parses one field: a feature as a finite float32 (exactly as strtof would), a label
 * as a double (so that 3.0000001 is not mistaken for the class 3). */
static int number(const parser *ps, span f, size_t line, size_t col, int is_label,
                  double *v) {
  span t = trim(f);
  const char *what = NULL;
  int code = FL_EFORMAT;
  char tmp[FIELD_MAX + 1];
  float fv;
  if (!is_label && fast_float(t.p, t.len, &fv)) {
    *v = fv;
    return 0;
  }
  if (t.len == 0) what = "empty field";
  else if (t.len > FIELD_MAX) what = "field too long to be a number";
  else {
    memcpy(tmp, t.p, t.len);
    tmp[t.len] = 0;
    char *end;
    *v = is_label ? strtod(tmp, &end) : strtof(tmp, &end);
    if (end != tmp + t.len) what = "not a number";
    else if (!isfinite(*v) || !isfinite((float)*v))
      what = "not a finite float32 number", code = FL_ENONFINITE;
  }
  if (!what) return 0;
  span c = ps->cols[col];
  return fl_errf(ps->err, ps->errlen, code, "%s:%zu: column '%.*s' (%zu): %s: '%.*s'",
                         ps->name, line, (int)(c.len > 64 ? 64 : c.len), c.p, col, what,
                         (int)(f.len > 64 ? 64 : f.len), f.p);
}

/* Finds the label column by name, else by 0-based index; NULL means the last. */
static int label_index(const parser *ps, const char *label, size_t *out) {
  if (!label) {
    *out = ps->ncols - 1;
    return 0;
  }
  size_t k = strlen(label);
  for (size_t i = 0; i < ps->ncols; i++)
    if (ps->cols[i].len == k && memcmp(ps->cols[i].p, label, k) == 0) {
      *out = i;
      return 0;
    }
  char *end;
  errno = 0;
  unsigned long long i = strtoull(label, &end, 10);
  if (k && *end == 0 && label[0] >= '0' && label[0] <= '9' && errno == 0) {
    if (i < ps->ncols) {
      *out = (size_t)i;
      return 0;
    }
    return fl_errf(ps->err, ps->errlen, FL_EINVAL,
                           "%s: label column index %llu, but the header has %zu columns "
                           "(0..%zu)", ps->name, i, ps->ncols, ps->ncols - 1);
  }
  return fl_errf(ps->err, ps->errlen, FL_EINVAL,
                         "%s: no column named '%s' in the header (%zu columns)", ps->name,
                         label, ps->ncols);
}

/* 1 when every header field reads as a number: the file then has no header row, and
 * taking its first sample for column names would silently lose it. */
static int header_is_numbers(const parser *ps) {
  for (size_t i = 0; i < ps->ncols; i++) {
    span c = ps->cols[i];
    char tmp[FIELD_MAX + 1], *end;
    float f;
    if (fast_float(c.p, c.len, &f)) continue;
    if (c.len == 0 || c.len > FIELD_MAX) return 0;
    memcpy(tmp, c.p, c.len);
    tmp[c.len] = 0;
    (void)strtod(tmp, &end);
    if (end != tmp + c.len) return 0;
  }
  return 1;
}

static int no_header(const parser *ps) {
  return fl_errf(ps->err, ps->errlen, FL_EFORMAT,
                 "%s:1: the first row is all numbers: the file has no header row (add a "
                 "first line naming the columns, such as f0,f1,...,label; the first sample "
                 "would otherwise be read as column names)", ps->name);
}

/* The header's fields into ps->cols (malloc'd). */
static int split_header(parser *ps, span head) {
  ps->ncols = count_fields(head);
  if (ps->ncols < 2)
    return fl_errf(ps->err, ps->errlen, FL_EFORMAT,
                   "%s:1: header has one column; need features and a label", ps->name);
  ps->cols = malloc(ps->ncols * sizeof *ps->cols);
  if (!ps->cols) return fl_errf(ps->err, ps->errlen, FL_ENOMEM, "%s: out of memory", ps->name);
  for (size_t i = 0, at = 0; i < ps->ncols; i++) {
    const char *p = head.p + at;
    const char *c = memchr(p, ',', head.len - at);
    size_t k = c ? (size_t)(c - p) : head.len - at;
    ps->cols[i] = trim((span){p, k});
    at += k + 1;
  }
  return header_is_numbers(ps) ? no_header(ps) : 0;
}

int fl_dataset_parse_csv(fl_dataset *out, const char *buf, size_t len, const char *name,
                         const char *label_column, int num_classes, char *err, size_t errlen) {
  parser ps = {.name = name, .err = err, .errlen = errlen};
  int rc = 0;
  memset(out, 0, sizeof *out);
  size_t pos = 0;
  if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) pos = 3;
  size_t blank = pos;
  while (blank < len && (buf[blank] == ' ' || buf[blank] == '\t' || buf[blank] == '\r' ||
                         buf[blank] == '\n'))
    blank++;
  if (blank == len)
    return fl_errf(err, errlen, FL_EFORMAT, "%s: empty file (expected a header row)",
                           name);

  span head = next_line(buf, len, &pos);
  if (trim(head).len == 0)
    return fl_errf(err, errlen, FL_EFORMAT, "%s:1: empty header row", name);
  size_t lab = 0;
  if ((rc = split_header(&ps, head)) < 0 || (rc = label_index(&ps, label_column, &lab)) < 0)
    goto fail;

  /* A data row holds at least ncols one-byte fields and ncols - 1 commas, which bounds
   * the rows by the bytes left, so the arrays are allocated once. */
  size_t dim = ps.ncols - 1, rest = len - pos, max_rows = rest / (2 * ps.ncols - 1) + 1;
  if (max_rows > UINT32_MAX) max_rows = UINT32_MAX;
  out->x = malloc((max_rows * dim + 1) * sizeof(float));
  out->y = malloc(max_rows * sizeof(float));
  if (!out->x || !out->y) {
    rc = fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", name);
    goto fail;
  }

  size_t n = 0, line = 1, neg_line = 0;
  int all_int = 1;
  double max = 0, neg = 0;
  while (pos < len) {
    span l = next_line(buf, len, &pos);
    line++;
    if (trim(l).len == 0) continue;
    size_t nf = count_fields(l);
    if (nf != ps.ncols) {
      rc = fl_errf(err, errlen, FL_EFORMAT,
                           "%s:%zu: ragged row: %zu fields, expected %zu as in the header", name,
                           line, nf, ps.ncols);
      goto fail;
    }
    if (n == max_rows) {
      rc = fl_errf(err, errlen, FL_ETOOBIG, "%s:%zu: more than %zu rows", name, line,
                           max_rows);
      goto fail;
    }
    float *row = out->x + n * dim;
    for (size_t i = 0, at = 0; i < ps.ncols; i++) {
      const char *p = l.p + at;
      const char *c = memchr(p, ',', l.len - at);
      size_t k = c ? (size_t)(c - p) : l.len - at;
      at += k + 1;
      double v = 0;
      rc = number(&ps, (span){p, k}, line, i, i == lab, &v);
      if (rc) goto fail;
      if (i != lab) {
        *row++ = (float)v;
        continue;
      }
      out->y[n] = (float)v;
      int integral = v == floor(v) && fabs(v) < LABEL_INT_MAX;
      if (num_classes > 0 && (!integral || v < 0 || v >= num_classes)) {
        rc = fl_errf(err, errlen, FL_ERANGE,
                             "%s:%zu: label out of range: '%.*s' is not a class index "
                             "0..%d", name, line, (int)(k > 64 ? 64 : k), p, num_classes - 1);
        goto fail;
      }
      if (!integral) all_int = 0;
      if (integral && v < 0 && !neg_line) neg = v, neg_line = line;
      if (v > max) max = v;
    }
    n++;
  }
  if (n == 0) {
    rc = fl_errf(err, errlen, FL_EFORMAT, "%s: no data rows after the header", name);
    goto fail;
  }
  if (num_classes == 0 && all_int) {
    if (neg_line) {
      rc = fl_errf(err, errlen, FL_ERANGE,
                           "%s:%zu: label out of range: %g; integer labels are class indices "
                           "and must be >= 0", name, neg_line, neg);
      goto fail;
    }
    num_classes = (int)max + 1;
  }
  out->num_classes = num_classes > 0 ? num_classes : 0;
  out->n = n;
  out->dim = dim;
  out->channels = 1;
  out->height = 1;
  out->width = (uint32_t)dim;
  /* Give back what the row bound over-reserved. */
  float *x = realloc(out->x, (n * dim + 1) * sizeof(float));
  float *y = realloc(out->y, n * sizeof(float));
  if (x) out->x = x;
  if (y) out->y = y;
  free(ps.cols);
  return 0;
fail:
  free(ps.cols);
  fl_dataset_free(out);
  return rc;
}

int fl_dataset_load_csv_classes(fl_dataset *out, const char *path, const char *label_column,
                                int num_classes, char *err, size_t errlen) {
  uint8_t *buf;
  size_t len;
  memset(out, 0, sizeof *out);
  int rc = fl__read_file(path, &buf, &len, err, errlen);
  if (rc) return rc;
  rc = fl_dataset_parse_csv(out, (const char *)buf, len, path, label_column, num_classes, err,
                            errlen);
  free(buf);
  return rc;
}

int fl_dataset_load_csv(fl_dataset *out, const char *path, const char *label_column,
                        char *err, size_t errlen) {
  return fl_dataset_load_csv_classes(out, path, label_column, 0, err, errlen);
}

int fl_dataset_save_csv(const fl_dataset *d, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "w");
  if (!f)
    return fl_errf(err, errlen, errno == ENOENT ? FL_ENOENT : FL_EIO,
                           "%s: cannot create: %s", path, strerror(errno));
  setvbuf(f, NULL, _IOFBF, 1 << 16);
  for (size_t j = 0; j < d->dim; j++) fprintf(f, "f%zu,", j);
  fputs("label\n", f);
  for (size_t i = 0; i < d->n; i++) {
    const float *row = d->x + i * d->dim;
    for (size_t j = 0; j < d->dim; j++) fprintf(f, "%.9g,", (double)row[j]);
    fprintf(f, "%.9g\n", (double)d->y[i]);
  }
  int bad = ferror(f);
  if (fclose(f) != 0 || bad)
    return fl_errf(err, errlen, FL_EIO, "%s: cannot write: %s", path, strerror(errno));
  return 0;
}

/* ---- streaming: a batch of rows at a time, memory bounded by the longest line ---- */

/* Longest line a stream accepts (a row of about a million features). */
#define STREAM_LINE_MAX ((size_t)64 << 20)

struct fl_csv_stream {
  parser ps;
  char *name;          /* a copy, ps.name */
  gzFile g;
  char *head;          /* the header line, which ps.cols point into */
  char *line;          /* the current line [cap] */
  size_t cap;
  size_t lineno;       /* of the last line read */
  size_t features;     /* feature columns */
  size_t lab;          /* label column, or SIZE_MAX when there is none */
  int eof;
};

/* The next line into s->line (without its newline): its length, or -1 at the end of
 * the file, or an FL_E* code (< -1) with a message. */
static long long stream_line(fl_csv_stream *s, char *err, size_t errlen) {
  size_t n = 0;
  if (s->eof) return -1;
  for (;;) {
    if (s->cap - n < 2) {
      if (s->cap >= STREAM_LINE_MAX)
        return fl_errf(err, errlen, FL_ETOOBIG, "%s:%zu: line longer than %zu bytes",
                       s->ps.name, s->lineno + 1, STREAM_LINE_MAX);
      size_t cap = s->cap ? s->cap * 2 : 4096;
      char *p = realloc(s->line, cap);
      if (!p) return fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", s->ps.name);
      s->line = p, s->cap = cap;
    }
    if (!gzgets(s->g, s->line + n, (int)(s->cap - n > INT_MAX ? INT_MAX : s->cap - n))) {
      int zerr;
      const char *msg = gzerror(s->g, &zerr);
      if (zerr != Z_OK && zerr != Z_STREAM_END)
        return fl_errf(err, errlen, zerr == Z_BUF_ERROR ? FL_ETRUNC : FL_EIO,
                       "%s:%zu: cannot read: %s", s->ps.name, s->lineno + 1,
                       zerr == Z_BUF_ERROR ? "compressed data ends early" : msg);
      s->eof = 1;
      if (n == 0) return -1;
      break;
    }
    n += strlen(s->line + n);
    if (n && s->line[n - 1] == '\n') break;
  }
  s->lineno++;
  if (n && s->line[n - 1] == '\n') n--;
  if (n && s->line[n - 1] == '\r') n--;
  s->line[n] = 0;
  if (memchr(s->line, 0, n))
    return fl_errf(err, errlen, FL_EFORMAT, "%s:%zu: a NUL byte in the line", s->ps.name,
                   s->lineno);
  return (long long)n;
}

void fl_csv_stream_close(fl_csv_stream *s) {
  if (!s) return;
  if (s->g) gzclose(s->g);
  free(s->ps.cols);
  free(s->name);
  free(s->head);
  free(s->line);
  free(s);
}

int fl_csv_stream_open_fd(fl_csv_stream **out, int fd, const char *name,
                          const char *label_column, size_t features, char *err,
                          size_t errlen) {
  *out = NULL;
  fl_csv_stream *s = calloc(1, sizeof *s);
  int rc;
  if (!s) {
    close(fd);
    return fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", name);
  }
  if (!(s->name = strdup(name))) {
    free(s);
    close(fd);
    return fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", name);
  }
  s->ps = (parser){.name = s->name, .err = err, .errlen = errlen};
  s->features = features;
  s->lab = SIZE_MAX;
  if (!(s->g = gzdopen(fd, "rb"))) {
    close(fd);
    rc = fl_errf(err, errlen, FL_ENOMEM, "%s: cannot open: out of memory", name);
    goto fail;
  }
  gzbuffer(s->g, 1 << 17);
  long long len;
  do {
    if ((len = stream_line(s, err, errlen)) < -1) {
      rc = (int)len;
      goto fail;
    }
    if (len == -1) {
      rc = fl_errf(err, errlen, FL_EFORMAT, "%s: empty file (expected a header row)", name);
      goto fail;
    }
  } while (trim((span){s->line, (size_t)len}).len == 0);
  size_t off = (size_t)len >= 3 && memcmp(s->line, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
  if (!(s->head = malloc((size_t)len - off + 1))) {
    rc = fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  memcpy(s->head, s->line + off, (size_t)len - off + 1);
  span head = {s->head, (size_t)len - off};
  size_t ncols = count_fields(head);
  /* A file of exactly `features` columns has no label (unless one is named). */
  if (ncols == features && !label_column) {
    s->ps.ncols = ncols;
    if (!(s->ps.cols = malloc(ncols * sizeof *s->ps.cols))) {
      rc = fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", name);
      goto fail;
    }
    for (size_t i = 0, at = 0; i < ncols; i++) {
      const char *p = head.p + at, *c = memchr(p, ',', head.len - at);
      size_t k = c ? (size_t)(c - p) : head.len - at;
      s->ps.cols[i] = trim((span){p, k});
      at += k + 1;
    }
    if (header_is_numbers(&s->ps)) {
      rc = no_header(&s->ps);
      goto fail;
    }
  } else {
    if ((rc = split_header(&s->ps, head)) < 0 ||
        (rc = label_index(&s->ps, label_column, &s->lab)) < 0)
      goto fail;
    if (s->ps.ncols != features + 1) {
      rc = fl_errf(err, errlen, FL_EMISMATCH,
                   "%s:1: %zu columns, but the model takes %zu features (the file needs "
                   "%zu columns, or %zu with a label)", name, s->ps.ncols, features,
                   features, features + 1);
      goto fail;
    }
  }
  *out = s;
  return 0;
fail:
  fl_csv_stream_close(s);
  return rc;
}

int fl_csv_stream_open(fl_csv_stream **out, const char *path, const char *label_column,
                       size_t features, char *err, size_t errlen) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fl_errf(err, errlen, errno == ENOENT ? FL_ENOENT : FL_EIO, "%s: cannot open: %s",
                   path, strerror(errno));
  return fl_csv_stream_open_fd(out, fd, path, label_column, features, err, errlen);
}

int fl_csv_stream_has_labels(const fl_csv_stream *s) { return s->lab != SIZE_MAX; }

size_t fl_csv_stream_line(const fl_csv_stream *s) { return s->lineno; }

int fl_csv_stream_read(fl_csv_stream *s, float *x, float *y, size_t max, size_t *n,
                       char *err, size_t errlen) {
  s->ps.err = err, s->ps.errlen = errlen;
  *n = 0;
  while (*n < max) {
    long long len = stream_line(s, err, errlen);
    if (len == -1) break;
    if (len < 0) return (int)len;
    span l = {s->line, (size_t)len};
    if (trim(l).len == 0) continue;
    size_t nf = count_fields(l);
    if (nf != s->ps.ncols)
      return fl_errf(err, errlen, FL_EFORMAT,
                     "%s:%zu: ragged row: %zu fields, expected %zu as in the header",
                     s->ps.name, s->lineno, nf, s->ps.ncols);
    float *row = x + *n * s->features;
    y[*n] = 0.0f;
    for (size_t i = 0, at = 0; i < s->ps.ncols; i++) {
      const char *p = l.p + at, *c = memchr(p, ',', l.len - at);
      size_t k = c ? (size_t)(c - p) : l.len - at;
      at += k + 1;
      double v = 0;
      int rc = number(&s->ps, (span){p, k}, s->lineno, i, i == s->lab, &v);
      if (rc) return rc;
      if (i == s->lab)
        y[*n] = (float)v;
      else
        *row++ = (float)v;
    }
    (*n)++;
  }
  return 0;
}
