/* libFuzzer target for the IDX parser.  The first two bytes give the length of the
 * image file; the labels file is the rest.  On success the shape must fit the data. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  size_t split = (size_t)data[0] << 8 | data[1];
  data += 2, size -= 2;
  if (split > size) split = size;
  char err[256];
  fl_dataset d;
  if (fl_dataset_parse_idx(&d, data, split, "images", data + split, size - split, "labels",
                           err, sizeof err) == 0) {
    if (d.n * d.dim + 16 != split || d.n + 8 != size - split) abort();
    for (size_t i = 0; i < d.n * d.dim; i++)
      if (!(d.x[i] >= 0 && d.x[i] <= 1)) abort();
    fl_dataset_free(&d);
  }
  return 0;
}
