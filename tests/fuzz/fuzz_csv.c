/* libFuzzer target for the CSV dataset parser.  The first byte picks the label column
 * and class-count options; the rest is the file.  The parser must never read past the
 * buffer, and on success every value must be finite and every class label in range. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static const char *labels[] = {NULL, "0", "1", "label", "y"};
  static const int classes[] = {0, -1, 3, 10};
  const char *label = labels[data[0] % 5];
  int num_classes = classes[(data[0] / 5) % 4];
  char err[256];
  fl_dataset d;
  if (fl_dataset_parse_csv(&d, (const char *)data + 1, size - 1, "fuzz.csv", label,
                           num_classes, err, sizeof err) == 0) {
    if (d.n == 0 || d.dim == 0) abort();
    for (size_t i = 0; i < d.n * d.dim; i++)
      if (!isfinite(d.x[i])) abort();
    for (size_t i = 0; i < d.n; i++)
      if (d.num_classes > 0 && !(d.y[i] >= 0 && d.y[i] < d.num_classes)) abort();
    fl_dataset_free(&d);
  }
  return 0;
}
