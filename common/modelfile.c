/* Model files (format in modelfile.h).  The file image is built in memory and written
 * atomically (fileio.h), so a reader sees either the old file or the new one. */
#include "modelfile.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "fileio.h"

#define MAGIC "FLMODEL\0"
#define MAGIC_LEN 8
/* magic, version, spec length | model id, parameter count | CRC */
#define HEAD_LEN (MAGIC_LEN + 4 + 4)
#define MID_LEN 16
#define TAIL_LEN 4

int fl_modelfile_pieces(const char *spec, uint64_t model_id, const float *params,
                        size_t num_params, fl_piece pieces[3], uint8_t crc[4], void **owned) {
  size_t spec_len = strlen(spec);
  if (spec_len > UINT32_MAX) return FL_EINVAL;
  size_t head = HEAD_LEN + spec_len + MID_LEN;
  if (num_params > (SIZE_MAX - head - TAIL_LEN) / 4) return FL_EINVAL;
  /* Little-endian hosts write the parameters from where they are. */
  const uint32_t probe = 1;
  int little = *(const uint8_t *)&probe == 1;
  uint8_t *buf = malloc(head + (little ? 0 : 4 * num_params));
  if (!buf) return FL_ENOMEM;
  uint8_t *p = buf;
  memcpy(p, MAGIC, MAGIC_LEN);
  fl_put32(p + MAGIC_LEN, FL_MODELFILE_VERSION);
  fl_put32(p + MAGIC_LEN + 4, (uint32_t)spec_len);
  p += HEAD_LEN;
  memcpy(p, spec, spec_len);
  p += spec_len;
  fl_put64(p, model_id);
  fl_put64(p + 8, num_params);
  const uint8_t *body = (const uint8_t *)params;
  if (!little) {
    uint8_t *q = buf + head;
    for (size_t i = 0; i < num_params; i++, q += 4) {
      uint32_t bits;
      memcpy(&bits, &params[i], 4);
      fl_put32(q, bits);
    }
    body = buf + head;
  }
  uLong c = crc32_z(0, buf, head);
  if (num_params) c = crc32_z(c, body, 4 * num_params); /* crc32_z(c, NULL, 0) resets */
  fl_put32(crc, (uint32_t)c);
  pieces[0] = (fl_piece){buf, head};
  pieces[1] = (fl_piece){body, 4 * num_params};
  pieces[2] = (fl_piece){crc, TAIL_LEN};
  *owned = buf;
  return 0;
}

int fl_modelfile_encode(const char *spec, uint64_t model_id, const float *params,
                        size_t num_params, uint8_t **out, size_t *out_len) {
  fl_piece pc[3];
  uint8_t crc[4];
  void *owned;
  int rc = fl_modelfile_pieces(spec, model_id, params, num_params, pc, crc, &owned);
  if (rc) return rc;
  size_t size = pc[0].len + pc[1].len + pc[2].len;
  uint8_t *buf = malloc(size);
  if (!buf) {
    free(owned);
    return FL_ENOMEM;
  }
  size_t at = 0;
  for (int i = 0; i < 3; i++) {
    memcpy(buf + at, pc[i].data, pc[i].len);
    at += pc[i].len;
  }
  free(owned);
  *out = buf;
  *out_len = size;
  return 0;
}

int fl_modelfile_save(const char *path, const char *spec, uint64_t model_id,
                      const float *params, size_t num_params, char *err, size_t errlen) {
  fl_piece pc[3];
  uint8_t crc[4];
  void *owned;
  int rc = fl_modelfile_pieces(spec, model_id, params, num_params, pc, crc, &owned);
  if (rc)
    return fl_errf(err, errlen, rc, "%s: cannot encode the model (%zu parameters): %s", path,
                   num_params, fl_strerror(rc));
  rc = fl_file_write_atomic_pieces(path, pc, 3, err, errlen);
  free(owned);
  return rc;
}

int fl_modelfile_decode_ex(const uint8_t *b, size_t size, const char *path, char **spec,
                           uint64_t *model_id, float **params, size_t *num_params,
                           fl_transform *tf, char *err, size_t errlen) {
  if (tf) memset(tf, 0, sizeof *tf);
  if (size < MAGIC_LEN || memcmp(b, MAGIC, MAGIC_LEN) != 0)
    return fl_errf(err, errlen, FL_EFORMAT, "%s: not an fl model file (bad magic)", path);
  if (size < HEAD_LEN + MID_LEN + TAIL_LEN)
    return fl_errf(err, errlen, FL_ETRUNC,
                    "%s: truncated: %zu bytes, a model file has at least %d", path, size,
                    HEAD_LEN + MID_LEN + TAIL_LEN);
  uint32_t version = fl_get32(b + MAGIC_LEN);
  if (version != 1 && version != FL_MODELFILE_VERSION_TRANSFORM)
    return fl_errf(err, errlen, FL_EVERSION,
                    "%s: model file format version %u; this build reads versions 1 and %u",
                    path, version, FL_MODELFILE_VERSION_TRANSFORM);
  size_t spec_len = fl_get32(b + MAGIC_LEN + 4);
  uint64_t count = 0;
  /* The length the header declares (without a transform), or 0 if it cannot be
   * computed from what is there. */
  size_t declared = 0;
  if (spec_len <= size - (HEAD_LEN + MID_LEN + TAIL_LEN)) {
    count = fl_get64(b + HEAD_LEN + spec_len + 8);
    size_t fixed = HEAD_LEN + MID_LEN + TAIL_LEN + spec_len;
    if (count <= (SIZE_MAX - fixed) / 4) declared = fixed + 4 * (size_t)count;
  }
  uint32_t stored = fl_get32(b + size - TAIL_LEN);
  uint32_t actual = (uint32_t)crc32_z(0, b, size - TAIL_LEN);
  if (stored != actual) {
    if (declared == 0 || declared > size)
      return fl_errf(err, errlen, FL_ETRUNC,
                      "%s: truncated or corrupt: the header declares a %u-byte spec and "
                      "%llu parameters, more than the file's %zu bytes hold", path,
                      (unsigned)spec_len, (unsigned long long)count, size);
    return fl_errf(err, errlen, FL_ECHECKSUM,
                    "%s: corrupt: CRC-32 mismatch (stored %08x, computed %08x)", path, stored,
                    actual);
  }
  /* Version 2: u32 D | float32 mean[D] | float32 std[D] between parameters and CRC. */
  uint64_t dim = 0;
  if (version == FL_MODELFILE_VERSION_TRANSFORM && declared && declared <= size - 4) {
    dim = fl_get32(b + (declared - TAIL_LEN));
    if (dim == 0 || declared + 4 + 8 * dim != size)
      return fl_errf(err, errlen, FL_EFORMAT,
                     "%s: feature transform of %llu features inconsistent with the file "
                     "length %zu bytes", path, (unsigned long long)dim, size);
  } else if (declared != size) {
    return fl_errf(err, errlen, FL_EFORMAT,
                    "%s: parameter count %llu inconsistent with the file length %zu bytes",
                    path, (unsigned long long)count, size);
  }
  if (memchr(b + HEAD_LEN, 0, spec_len))
    return fl_errf(err, errlen, FL_EFORMAT, "%s: model spec contains a NUL byte", path);

  char *s = malloc(spec_len + 1);
  float *w = malloc(count ? (size_t)count * sizeof *w : 1);
  float *t = dim && tf ? malloc(2 * (size_t)dim * sizeof *t) : NULL;
  if (!s || !w || (dim && tf && !t)) {
    free(s);
    free(w);
    free(t);
    return fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", path);
  }
  memcpy(s, b + HEAD_LEN, spec_len);
  s[spec_len] = 0;
  const uint8_t *p = b + HEAD_LEN + spec_len + MID_LEN;
  for (size_t i = 0; i < count; i++, p += 4) {
    uint32_t bits = fl_get32(p);
    memcpy(&w[i], &bits, 4);
  }
  if (t) {
    p += 4;
    for (size_t i = 0; i < 2 * dim; i++, p += 4) {
      uint32_t bits = fl_get32(p);
      memcpy(&t[i], &bits, 4);
      /* a mean must be finite, a deviation finite and positive */
      if (!isfinite(t[i]) || (i >= dim && !(t[i] > 0.0f))) {
        double v = t[i];
        free(s);
        free(w);
        free(t);
        return fl_errf(err, errlen, FL_EFORMAT,
                       "%s: feature transform: %s of feature %zu is %g", path,
                       i < dim ? "mean" : "deviation", (size_t)(i % dim), v);
      }
    }
    tf->dim = (size_t)dim, tf->mean = t, tf->std = t + dim;
  }
  *spec = s;
  *model_id = fl_get64(b + HEAD_LEN + spec_len);
  *params = w;
  *num_params = (size_t)count;
  return 0;
}

int fl_modelfile_decode(const uint8_t *b, size_t size, const char *path, char **spec,
                        uint64_t *model_id, float **params, size_t *num_params, char *err,
                        size_t errlen) {
  return fl_modelfile_decode_ex(b, size, path, spec, model_id, params, num_params, NULL, err,
                                errlen);
}

void fl_transform_free(fl_transform *tf) {
  free(tf->mean); /* mean and std share one allocation */
  memset(tf, 0, sizeof *tf);
}

void fl_transform_apply(const fl_transform *tf, float *x, size_t n) {
  if (!tf->dim) return;
  for (size_t i = 0; i < n; i++, x += tf->dim)
    for (size_t j = 0; j < tf->dim; j++) x[j] = (x[j] - tf->mean[j]) / tf->std[j];
}

int fl_modelfile_encode_ex(const char *spec, uint64_t model_id, const float *params,
                           size_t num_params, const fl_transform *tf, uint8_t **out,
                           size_t *out_len) {
  uint8_t *img = NULL, *buf = NULL;
  size_t len;
  int rc = fl_modelfile_encode(spec, model_id, params, num_params, &img, &len);
  if (rc || !tf || !tf->dim) {
    *out = img, *out_len = rc ? 0 : len;
    return rc;
  }
  size_t D = tf->dim;
  if (D > (SIZE_MAX - len - 4) / 8 || !(buf = malloc(len + 4 + 8 * D))) {
    free(img);
    return FL_ENOMEM;
  }
  size_t at = len - TAIL_LEN;
  memcpy(buf, img, at);
  free(img);
  fl_put32(buf + MAGIC_LEN, FL_MODELFILE_VERSION_TRANSFORM);
  fl_put32(buf + at, (uint32_t)D);
  at += 4;
  for (size_t i = 0; i < 2 * D; i++, at += 4) {
    uint32_t bits;
    memcpy(&bits, i < D ? &tf->mean[i] : &tf->std[i - D], 4);
    fl_put32(buf + at, bits);
  }
  fl_put32(buf + at, (uint32_t)crc32_z(0, buf, at));
  *out = buf, *out_len = at + TAIL_LEN;
  return 0;
}

int fl_modelfile_save_ex(const char *path, const char *spec, uint64_t model_id,
                         const float *params, size_t num_params, const fl_transform *tf,
                         char *err, size_t errlen) {
  if (!tf || !tf->dim)
    return fl_modelfile_save(path, spec, model_id, params, num_params, err, errlen);
  uint8_t *img;
  size_t len;
  int rc = fl_modelfile_encode_ex(spec, model_id, params, num_params, tf, &img, &len);
  if (rc)
    return fl_errf(err, errlen, rc, "%s: cannot encode the model (%zu parameters): %s", path,
                   num_params, fl_strerror(rc));
  rc = fl_file_write_atomic(path, img, len, err, errlen);
  free(img);
  return rc;
}

int fl_modelfile_load(const char *path, char **spec, uint64_t *model_id, float **params,
                      size_t *num_params, char *err, size_t errlen) {
  *spec = NULL;
  *params = NULL;
  *num_params = 0;
  uint8_t *buf;
  size_t size;
  int rc = fl_file_read(path, &buf, &size, err, errlen);
  if (rc) return rc;
  rc = fl_modelfile_decode(buf, size, path, spec, model_id, params, num_params, err, errlen);
  free(buf);
  return rc;
}

int fl_modelfile_load_ex(const char *path, char **spec, uint64_t *model_id, float **params,
                         size_t *num_params, fl_transform *tf, char *err, size_t errlen) {
  *spec = NULL;
  *params = NULL;
  *num_params = 0;
  if (tf) memset(tf, 0, sizeof *tf);
  uint8_t *buf;
  size_t size;
  int rc = fl_file_read(path, &buf, &size, err, errlen);
  if (rc) return rc;
  rc = fl_modelfile_decode_ex(buf, size, path, spec, model_id, params, num_params, tf, err,
                              errlen);
  free(buf);
  return rc;
}
