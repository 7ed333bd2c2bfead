/* libFuzzer target for the CSV stream (fl-predict's reader of files of any size).  The
 * first byte picks the feature count, the label column and the batch size; the rest is
 * the file, given through a memfd so the stream reads it as it reads any file (plain or
 * gzip).  On success every feature must be finite and rows must come in batches no
 * larger than asked. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static const char *labels[] = {NULL, "0", "label", "2"};
  size_t features = 1 + data[0] % 4, batch = 1 + (data[0] >> 4) % 5;
  const char *label = labels[(data[0] >> 2) % 4];
  int fd = memfd_create("fuzz.csv", 0);
  if (fd < 0) return 0;
  if (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) {
    close(fd);
    return 0;
  }
  lseek(fd, 0, SEEK_SET);
  char err[256];
  fl_csv_stream *s;
  if (fl_csv_stream_open_fd(&s, fd, "fuzz.csv", label, features, err, sizeof err) != 0)
    return 0;
  float x[5 * 4], y[5];
  size_t n;
  while (fl_csv_stream_read(s, x, y, batch, &n, err, sizeof err) == 0 && n) {
    if (n > batch) abort();
    for (size_t i = 0; i < n * features; i++)
      if (!isfinite(x[i])) abort();
  }
  fl_csv_stream_close(s);
  return 0;
}
