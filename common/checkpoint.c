/* Server checkpoints (format in checkpoint.h). */
#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "fileio.h"
#include "modelfile.h"

#define MAGIC "FLCKPT\0\0"
#define VERSION 3u /* 2 added the privacy state, 3 the best round; 1 and 2 are still read */
/* magic, version, rounds, model version, rng, metrics length, strategy length */
#define HEAD_LEN (8 + 4 + 8 + 8 + 32 + 8 + 4)

int checkpoint_save(const char *path, const checkpoint *c, char *err, size_t errlen) {
  fl_piece pc[5];
  uint8_t model_crc[4], crc[4];
  void *owned;
  int rc;
  size_t name_len = c->best_metric ? strlen(c->best_metric) : 0;
  if (name_len > 255) return fl_errf(err, errlen, FL_EINVAL, "%s: metric name too long", path);
  if (c->tf.dim) { /* an image of its own (a copy of the parameters), in one piece */
    uint8_t *img;
    size_t img_len;
    rc = fl_modelfile_encode_ex(c->spec, c->model_id, c->params, c->n, &c->tf, &img, &img_len);
    owned = img;
    pc[1] = (fl_piece){img, img_len}, pc[2] = pc[3] = (fl_piece){NULL, 0};
  } else {
    rc = fl_modelfile_pieces(c->spec, c->model_id, c->params, c->n, pc + 1, model_crc, &owned);
  }
  if (rc) return fl_errf(err, errlen, rc, "%s: cannot encode the model: %s", path, fl_strerror(rc));
  size_t model_len = pc[1].len + pc[2].len + pc[3].len;
  size_t head_len = HEAD_LEN + c->strategy_len + 4 + c->privacy_len + 4 + name_len + 16 + 8;
  uint8_t *head = malloc(head_len);
  if (!head) {
    free(owned);
    return fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", path);
  }
  memcpy(head, MAGIC, 8);
  fl_put32(head + 8, VERSION);
  fl_put64(head + 12, c->rounds);
  fl_put64(head + 20, c->model_version);
  for (int i = 0; i < 4; i++) fl_put64(head + 28 + 8 * i, c->rng.s[i]);
  fl_put64(head + 60, c->metrics_len);
  fl_put32(head + 68, (uint32_t)c->strategy_len);
  if (c->strategy_len) memcpy(head + HEAD_LEN, c->strategy, c->strategy_len);
  uint8_t *q = head + HEAD_LEN + c->strategy_len;
  fl_put32(q, (uint32_t)c->privacy_len);
  if (c->privacy_len) memcpy(q + 4, c->privacy, c->privacy_len);
  q += 4 + c->privacy_len;
  fl_put32(q, (uint32_t)name_len);
  if (name_len) memcpy(q + 4, c->best_metric, name_len);
  q += 4 + name_len;
  uint64_t best_bits;
  memcpy(&best_bits, &c->best_value, 8);
  fl_put64(q, c->best_round);
  fl_put64(q + 8, best_bits);
  fl_put64(q + 16, model_len);
  pc[0] = (fl_piece){head, head_len};
  uLong sum = 0;
  for (int i = 0; i < 4; i++)
    if (pc[i].len) sum = crc32_z(sum, pc[i].data, pc[i].len); /* crc32_z(c, NULL, 0) resets */
  fl_put32(crc, (uint32_t)sum);
  pc[4] = (fl_piece){crc, 4};
  rc = fl_file_write_atomic_pieces(path, pc, 5, err, errlen);
  free(head);
  free(owned);
  return rc;
}

int checkpoint_decode(const uint8_t *b, size_t len, const char *name, checkpoint *c,
                      char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  if (len < 8 || memcmp(b, MAGIC, 8) != 0) {
    snprintf(err, errlen, "%s: not an fl checkpoint (bad magic)", name);
    return FL_EFORMAT;
  }
  if (len < HEAD_LEN + 8 + 4) {
    snprintf(err, errlen, "%s: truncated checkpoint (%zu bytes)", name, len);
    return FL_ETRUNC;
  }
  uint32_t version = fl_get32(b + 8);
  if (version < 1 || version > VERSION) {
    snprintf(err, errlen, "%s: checkpoint format version %u; this build reads versions 1 to %u",
             name, version, VERSION);
    return FL_EVERSION;
  }
  uint32_t stored = fl_get32(b + len - 4), actual = (uint32_t)crc32_z(0, b, len - 4);
  if (stored != actual) {
    snprintf(err, errlen, "%s: corrupt or truncated checkpoint: CRC-32 mismatch (stored %08x, computed %08x)",
             name, stored, actual);
    return FL_ECHECKSUM;
  }
  size_t slen = fl_get32(b + 68);
  if (slen > len - (HEAD_LEN + 8 + 4)) {
    snprintf(err, errlen, "%s: strategy state of %zu bytes overruns the file", name, slen);
    return FL_EFORMAT;
  }
  const uint8_t *p = b + HEAD_LEN + slen;
  size_t plen = 0;
  if (version >= 2) {
    if (len - (HEAD_LEN + 8 + 4) - slen < 4 ||
        (plen = fl_get32(p)) > len - (HEAD_LEN + 8 + 4) - slen - 4) {
      snprintf(err, errlen, "%s: privacy state overruns the file", name);
      return FL_EFORMAT;
    }
    p += 4 + plen;
  }
  uint64_t best_round = 0, best_bits = 0;
  const uint8_t *best_name = NULL;
  size_t best_len = 0;
  if (version >= 3) {
    size_t left = (size_t)(b + len - p);
    if (left < 4 || (best_len = fl_get32(p)) > 255 || left - 4 < best_len + 16 + 8 + 4) {
      snprintf(err, errlen, "%s: the best round overruns the file", name);
      return FL_EFORMAT;
    }
    best_name = p + 4;
    p += 4 + best_len;
    best_round = fl_get64(p), best_bits = fl_get64(p + 8);
    p += 16;
  }
  size_t before = (size_t)(p - b);
  uint64_t mlen = fl_get64(p);
  if (mlen != len - (before + 8 + 4)) {
    snprintf(err, errlen, "%s: model image of %llu bytes does not fit the file", name,
             (unsigned long long)mlen);
    return FL_EFORMAT;
  }
  int rc = fl_modelfile_decode_ex(p + 8, (size_t)mlen, name, &c->spec, &c->model_id,
                                  &c->params, &c->n, &c->tf, err, errlen);
  if (rc) return rc;
  if (slen) {
    c->strategy = malloc(slen);
    if (!c->strategy) {
      checkpoint_free(c);
      snprintf(err, errlen, "%s: out of memory", name);
      return FL_ENOMEM;
    }
    memcpy(c->strategy, b + HEAD_LEN, slen);
    c->strategy_len = slen;
  }
  if (plen) {
    c->privacy = malloc(plen);
    if (!c->privacy) {
      checkpoint_free(c);
      snprintf(err, errlen, "%s: out of memory", name);
      return FL_ENOMEM;
    }
    memcpy(c->privacy, b + HEAD_LEN + slen + 4, plen);
    c->privacy_len = plen;
  }
  c->rounds = fl_get64(b + 12);
  c->model_version = fl_get64(b + 20);
  for (int i = 0; i < 4; i++) c->rng.s[i] = fl_get64(b + 28 + 8 * i);
  c->metrics_len = fl_get64(b + 60);
  if (best_len) {
    if (!(c->best_metric = malloc(best_len + 1))) {
      checkpoint_free(c);
      snprintf(err, errlen, "%s: out of memory", name);
      return FL_ENOMEM;
    }
    memcpy(c->best_metric, best_name, best_len);
    c->best_metric[best_len] = '\0';
  }
  c->best_round = best_round;
  memcpy(&c->best_value, &best_bits, 8);
  return 0;
}

int checkpoint_load(const char *path, checkpoint *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  uint8_t *buf;
  size_t len;
  int rc = fl_file_read(path, &buf, &len, err, errlen);
  if (rc) return rc;
  rc = checkpoint_decode(buf, len, path, c, err, errlen);
  free(buf);
  return rc;
}

void checkpoint_free(checkpoint *c) {
  free(c->strategy);
  free(c->privacy);
  free(c->spec);
  free(c->params);
  free(c->best_metric);
  fl_transform_free(&c->tf);
  memset(c, 0, sizeof *c);
}
