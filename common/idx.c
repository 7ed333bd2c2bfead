/* IDX files (the MNIST format): a big-endian header (0, 0, type code, number of
 * dimensions, then one u32 per dimension) followed by the elements.  Images are
 * [count][rows][columns] unsigned bytes, labels [count] unsigned bytes.  The parser
 * works on a caller's buffer and never reads past its length. */
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"
#include "dataset.h"
#include "dataset_internal.h"
#include "error.h"

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *type_name(unsigned t) {
  switch (t) {
  case 0x08: return "unsigned byte";
  case 0x09: return "signed byte";
  case 0x0b: return "16-bit integer";
  case 0x0c: return "32-bit integer";
  case 0x0d: return "float32";
  case 0x0e: return "float64";
  default:   return "unknown type";
  }
}

/* Checks the header of one IDX file holding `ndims`-dimensional unsigned bytes; fills
 * dims and the number of header bytes. */
static int header(const uint8_t *b, size_t len, const char *name, unsigned ndims,
                  const char *what, uint32_t *dims, size_t *hdr, char *err, size_t errlen) {
  if (len == 0)
    return fl_errf(err, errlen, FL_EFORMAT, "%s: empty file (expected IDX %s)",
                           name, what);
  if (len < 4)
    return fl_errf(err, errlen, FL_ETRUNC,
                           "%s: truncated: %zu bytes, an IDX header needs at least 4", name, len);
  if (b[0] != 0 || b[1] != 0)
    return fl_errf(err, errlen, FL_EFORMAT,
                           "%s: not an IDX file (magic 0x%08x; expected 0x%08x for %s)", name,
                           be32(b), 0x800u | ndims, what);
  if (b[2] != 0x08)
    return fl_errf(err, errlen, FL_EFORMAT,
                           "%s: IDX element type 0x%02x (%s) is not supported; only unsigned "
                           "byte (0x08) is", name, b[2], type_name(b[2]));
  if (b[3] != ndims)
    return fl_errf(err, errlen, FL_EFORMAT,
                           "%s: IDX file with %u dimensions (magic 0x%08x), expected %u for %s "
                           "(magic 0x%08x)%s", name, b[3], be32(b), ndims, what, 0x800u | ndims,
                           ndims == 3 && b[3] == 1 ? "; is it a label file?"
                           : ndims == 1 && b[3] == 3 ? "; is it an image file?" : "");
  *hdr = 4 + 4 * (size_t)ndims;
  if (len < *hdr)
    return fl_errf(err, errlen, FL_ETRUNC,
                           "%s: truncated: %zu bytes, the IDX header needs %zu", name, len, *hdr);
  for (unsigned i = 0; i < ndims; i++) dims[i] = be32(b + 4 + 4 * i);
  if (dims[0] == 0)
    return fl_errf(err, errlen, FL_EFORMAT, "%s: holds no records", name);
  return 0;
}

/* Checks that the data after the header is exactly `count` records of `rec` bytes. */
static int body(size_t len, size_t hdr, const char *name, uint32_t count, size_t rec,
                const char *what, char *err, size_t errlen) {
  size_t have = len - hdr, found = have / rec;
  if (found < count)
    return fl_errf(err, errlen, FL_ETRUNC,
                           "%s: truncated: header says %u %s, file holds %zu complete ones "
                           "(%zu of %zu data bytes)", name, count, what, found, have,
                           (size_t)count * rec);
  if (have > (size_t)count * rec)
    return fl_errf(err, errlen, FL_EFORMAT,
                           "%s: %zu unexpected bytes after the last of %u %s", name,
                           have - (size_t)count * rec, count, what);
  return 0;
}

int fl_dataset_parse_idx(fl_dataset *out, const uint8_t *images, size_t images_len,
                         const char *images_name, const uint8_t *labels, size_t labels_len,
                         const char *labels_name, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  uint32_t idims[3], ldims[1];
  size_t ihdr, lhdr;
  int rc = header(images, images_len, images_name, 3, "images", idims, &ihdr, err, errlen);
  if (rc) return rc;
  rc = header(labels, labels_len, labels_name, 1, "labels", ldims, &lhdr, err, errlen);
  if (rc) return rc;
  uint32_t n = idims[0], rows = idims[1], cols = idims[2];
  if (rows == 0 || cols == 0)
    return fl_errf(err, errlen, FL_EFORMAT, "%s: images of %ux%u pixels", images_name,
                           rows, cols);
  size_t dim = (size_t)rows * cols;
  if (dim > SIZE_MAX / sizeof(float) / n)
    return fl_errf(err, errlen, FL_EFORMAT,
                           "%s: header claims %u images of %ux%u, too large", images_name, n,
                           rows, cols);
  rc = body(images_len, ihdr, images_name, n, dim, "images", err, errlen);
  if (rc) return rc;
  rc = body(labels_len, lhdr, labels_name, ldims[0], 1, "labels", err, errlen);
  if (rc) return rc;
  if (ldims[0] != n)
    return fl_errf(err, errlen, FL_EFORMAT,
                           "%s holds %u images but %s holds %u labels", images_name, n,
                           labels_name, ldims[0]);

  /* On huge pages: 60000 Fashion-MNIST images are 188 MB of floats, and faulting that in
   * 4 KiB at a time cost more than decompressing it (bench/bench_dataset.c). */
  out->x = fl_alloc_big((size_t)n * dim * sizeof(float));
  out->y = malloc((size_t)n * sizeof(float));
  if (!out->x || !out->y) {
    fl_dataset_free(out);
    return fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory for %u images",
                           images_name, n);
  }
  /* A table gives exactly k/255 for every byte, at the cost of one load. */
  float scale[256];
  for (int k = 0; k < 256; k++) scale[k] = (float)k / 255.0f;
  const uint8_t *px = images + ihdr;
  for (size_t i = 0, total = (size_t)n * dim; i < total; i++) out->x[i] = scale[px[i]];
  unsigned max = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint8_t l = labels[lhdr + i];
    out->y[i] = l;
    if (l > max) max = l;
  }
  out->n = n;
  out->dim = dim;
  out->channels = 1;
  out->height = rows;
  out->width = cols;
  out->num_classes = (int)max + 1;
  return 0;
}

int fl_dataset_load_idx(fl_dataset *out, const char *images_path, const char *labels_path,
                        char *err, size_t errlen) {
  uint8_t *img = NULL, *lab = NULL;
  size_t img_len, lab_len;
  memset(out, 0, sizeof *out);
  int rc = fl__read_file(images_path, &img, &img_len, err, errlen);
  if (rc) goto done;
  rc = fl__read_file(labels_path, &lab, &lab_len, err, errlen);
  if (rc) goto done;
  rc = fl_dataset_parse_idx(out, img, img_len, images_path, lab, lab_len, labels_path, err,
                            errlen);
done:
  free(img);
  free(lab);
  return rc;
}
