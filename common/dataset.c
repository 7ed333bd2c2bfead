/* Datasets: reading files, choosing a loader from a spec, freeing, feature
 * standardisation and train/validation splits.  The parsers live in idx.c and csv.c. */
#include "dataset.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "bigalloc.h"
#include "dataset_internal.h"
#include "error.h"
#include "rng.h"

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

int fl__read_file(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen) {
  *buf = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fl_errf(err, errlen, errno == ENOENT ? FL_ENOENT : FL_EIO,
                           "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    close(fd);
    return fl_errf(err, errlen, FL_EIO, "%s: cannot read: %s", path,
                           S_ISDIR(st.st_mode) ? "is a directory" : strerror(errno));
  }
  gzFile g = gzdopen(fd, "rb");
  if (!g) {
    close(fd);
    return fl_errf(err, errlen, FL_ENOMEM, "%s: cannot open: out of memory", path);
  }
  gzbuffer(g, 1 << 17);
  /* Start from the size the gzip trailer records (mod 2^32), else the file size, and
   * double if that was short. */
  size_t cap = st.st_size > 0 ? (size_t)st.st_size + 2 : 1 << 16, n = 0;
  uint8_t head[2], tail[4];
  if (st.st_size >= 18 && pread(fd, head, 2, 0) == 2 && head[0] == 0x1f && head[1] == 0x8b &&
      pread(fd, tail, 4, st.st_size - 4) == 4) {
    size_t isize = (size_t)tail[0] | (size_t)tail[1] << 8 | (size_t)tail[2] << 16 |
                   (size_t)tail[3] << 24;
    if (isize + 2 > cap) cap = isize + 2;
  }
  uint8_t *b = NULL;
  int rc = 0;
  for (;;) {
    if (!b || cap - n < 2) {
      if (b) {
        if (cap > SIZE_MAX / 2) {
          rc = fl_errf(err, errlen, FL_ENOMEM, "%s: too large to read", path);
          goto fail;
        }
        cap *= 2;
      }
      uint8_t *nb = b ? realloc(b, cap) : fl_alloc_big(cap); /* see idx.c */
      if (!nb) {
        rc = fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory reading %zu bytes",
                             path, cap);
        goto fail;
      }
      b = nb;
    }
    size_t want = cap - n - 1;
    if (want > INT_MAX) want = INT_MAX;
    int r = gzread(g, b + n, (unsigned)want);
    if (r <= 0) break;
    n += (size_t)r;
  }
  int zerr;
  const char *zmsg = gzerror(g, &zerr);
  if (zerr == Z_BUF_ERROR) {
    rc = fl_errf(err, errlen, FL_ETRUNC,
                         "%s: truncated: compressed data ends early (after %zu bytes)", path, n);
    goto fail;
  }
  if (zerr != Z_OK) {
    rc = fl_errf(err, errlen, zerr == Z_ERRNO ? FL_EIO : FL_EFORMAT,
                         "%s: cannot read: %s", path,
                         zerr == Z_ERRNO ? strerror(errno) : zmsg);
    goto fail;
  }
  gzclose(g);
  b[n] = 0;
  *buf = b;
  *len = n;
  return 0;
fail:
  gzclose(g);
  free(b);
  return rc;
}

static int ends_with(const char *s, size_t len, const char *suffix) {
  size_t k = strlen(suffix);
  return len >= k && strncmp(s + len - k, suffix, k) == 0;
}

static int is_csv_path(const char *s, size_t len) {
  return ends_with(s, len, ".csv") || ends_with(s, len, ".csv.gz");
}

int fl_dataset_load(fl_dataset *out, const char *spec, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (!spec || !*spec) return fl_errf(err, errlen, FL_EINVAL, "empty dataset spec");
  if (strncmp(spec, "fashion-mnist:", 14) == 0) {
    const char *part = spec + 14, *stem;
    if (strcmp(part, "train") == 0) stem = "train";
    else if (strcmp(part, "test") == 0) stem = "t10k";
    else
      return fl_errf(err, errlen, FL_EINVAL,
                             "dataset '%s': fashion-mnist has 'train' and 'test', not '%s'",
                             spec, part);
    char img[256], lab[256];
    snprintf(img, sizeof img, "%s/%s-images-idx3-ubyte.gz", FASHION_DIR, stem);
    snprintf(lab, sizeof lab, "%s/%s-labels-idx1-ubyte.gz", FASHION_DIR, stem);
    return fl_dataset_load_idx(out, img, lab, err, errlen);
  }
  size_t len = strlen(spec);
  if (is_csv_path(spec, len)) return fl_dataset_load_csv(out, spec, NULL, err, errlen);
  const char *colon = strrchr(spec, ':');
  if (colon && colon[1] && is_csv_path(spec, (size_t)(colon - spec))) {
    size_t k = (size_t)(colon - spec);
    char *path = malloc(k + 1);
    if (!path) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
    memcpy(path, spec, k);
    path[k] = 0;
    int rc = fl_dataset_load_csv(out, path, colon + 1, err, errlen);
    free(path);
    return rc;
  }
  const char *comma = strchr(spec, ',');
  if (comma) {
    if (strchr(comma + 1, ','))
      return fl_errf(err, errlen, FL_EINVAL,
                             "dataset '%s': an IDX pair is IMAGES,LABELS (two paths)", spec);
    size_t k = (size_t)(comma - spec);
    char *img = malloc(k + 1);
    if (!img) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
    memcpy(img, spec, k);
    img[k] = 0;
    int rc = fl_dataset_load_idx(out, img, comma + 1, err, errlen);
    free(img);
    return rc;
  }
  return fl_errf(err, errlen, FL_EINVAL,
                         "dataset '%s': unknown form; expected FILE.csv, FILE.csv:LABEL_COLUMN, "
                         "IMAGES,LABELS (IDX files) or fashion-mnist:train|test", spec);
}

void fl_dataset_free(fl_dataset *d) {
  if (!d) return;
  free(d->x);
  free(d->y);
  memset(d, 0, sizeof *d);
}

/* Features are summed in blocks so each pass reads rows contiguously while the
 * accumulators (doubles, for 60k-sample sums) stay on the stack. */
#define STAT_BLOCK 64

void fl_dataset_stats(const fl_subset *s, float *mean, float *std) {
  const fl_dataset *d = s->data;
  size_t dim = d->dim, n = s->n;
  for (size_t j0 = 0; j0 < dim; j0 += STAT_BLOCK) {
    size_t w = dim - j0 < STAT_BLOCK ? dim - j0 : STAT_BLOCK;
    double sum[STAT_BLOCK] = {0}, sq[STAT_BLOCK] = {0};
    for (size_t i = 0; i < n; i++) {
      const float *row = d->x + (size_t)(s->idx ? s->idx[i] : i) * dim + j0;
      for (size_t j = 0; j < w; j++) sum[j] += row[j];
    }
    for (size_t j = 0; j < w; j++) sum[j] = n ? sum[j] / (double)n : 0.0;
    for (size_t i = 0; i < n; i++) {
      const float *row = d->x + (size_t)(s->idx ? s->idx[i] : i) * dim + j0;
      for (size_t j = 0; j < w; j++) {
        double c = row[j] - sum[j];
        sq[j] += c * c;
      }
    }
    for (size_t j = 0; j < w; j++) {
      mean[j0 + j] = (float)sum[j];
      std[j0 + j] = n ? (float)sqrt(sq[j] / (double)n) : 0.0f;
    }
  }
}

/* A constant feature (std 0) is only centred: dividing would make it NaN. */
void fl_dataset_standardize(fl_dataset *d, const float *mean, const float *std) {
  size_t dim = d->dim;
  for (size_t i = 0; i < d->n; i++) {
    float *row = d->x + i * dim;
    for (size_t j = 0; j < dim; j++) {
      float c = row[j] - mean[j];
      row[j] = std[j] > 0.0f ? c / std[j] : c;
    }
  }
}

/* Selection sampling (Knuth's Algorithm S): each index joins the validation set with
 * probability (still needed) / (still left), which picks exactly n_val of them, keeps
 * both lists sorted and needs no scratch memory. */
void fl_split(size_t n, size_t n_val, uint64_t seed, uint32_t *train_idx, uint32_t *val_idx) {
  assert(n_val <= n && n <= UINT32_MAX);
  fl_rng r;
  fl_rng_seed(&r, seed);
  size_t nv = 0, nt = 0;
  for (size_t i = 0; i < n; i++) {
    if (fl_rng_below(&r, n - i) < n_val - nv) val_idx[nv++] = (uint32_t)i;
    else train_idx[nt++] = (uint32_t)i;
  }
}
