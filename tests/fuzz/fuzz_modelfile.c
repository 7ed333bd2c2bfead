/* libFuzzer target for the decoders of files the server reads back: model files
 * (--init-model, fl-predict, fl-export; with a feature transform) and checkpoints
 * (--resume).  When the first byte is odd the input's
 * trailing CRC-32 is recomputed first, so mutations also reach the checks behind it. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "checkpoint.h"
#include "fileio.h"
#include "modelfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int fix_crc = data[0] & 1, as_checkpoint = data[0] & 2;
  data++, size--;
  uint8_t *b = malloc(size ? size : 1);
  if (!b) return 0;
  memcpy(b, data, size);
  if (fix_crc && size >= 4) fl_put32(b + size - 4, (uint32_t)crc32_z(0, b, size - 4));
  char err[512];
  if (as_checkpoint) {
    checkpoint c;
    if (checkpoint_decode(b, size, "fuzz", &c, err, sizeof err) == 0) {
      if (!c.spec || (c.n && !c.params)) abort();
      checkpoint_free(&c);
    }
  } else {
    char *spec;
    uint64_t id;
    float *params;
    size_t n;
    fl_transform tf;
    if (fl_modelfile_decode_ex(b, size, "fuzz", &spec, &id, &params, &n, &tf, err,
                               sizeof err) == 0) {
      if (strlen(spec) > size) abort();
      for (size_t i = 0; i < tf.dim; i++)
        if (!(tf.std[i] > 0.0f)) abort();
      free(spec);
      free(params);
      fl_transform_free(&tf);
    }
  }
  free(b);
  return 0;
}
