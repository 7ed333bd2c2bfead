/* Loading Fashion-MNIST train (60000 x 784) against a baseline measured in the same run:
 * only decompressing the two files with zlib, which any loader must do.  The gap is
 * the cost of parsing and converting to floats. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <zlib.h>

#include "dataset.h"

#define DIR "/usr/share/datasets/fashion-mnist/"
#define RUNS 3

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static size_t gunzip(const char *path, unsigned char *buf, size_t cap) {
  gzFile g = gzopen(path, "rb");
  if (!g) return 0;
  gzbuffer(g, 1 << 17);
  size_t n = 0;
  int r;
  while ((r = gzread(g, buf + n, (unsigned)(cap - n))) > 0) n += (size_t)r;
  gzclose(g);
  return n;
}

int main(void) {
  size_t cap = 60000 * 784 + 64;
  unsigned char *buf = malloc(cap);
  if (!buf) return 1;
  double base = 1e9, load = 1e9;
  for (int i = 0; i < RUNS; i++) {
    double t0 = now();
    size_t a = gunzip(DIR "train-images-idx3-ubyte.gz", buf, cap);
    size_t b = gunzip(DIR "train-labels-idx1-ubyte.gz", buf, cap);
    double t1 = now();
    if (a != 60000 * 784 + 16 || b != 60008) {
      fprintf(stderr, "bench-dataset: cannot read " DIR " (make deps)\n");
      return 1;
    }
    fl_dataset d;
    char err[256];
    if (fl_dataset_load(&d, "fashion-mnist:train", err, sizeof err) != 0) {
      fprintf(stderr, "bench-dataset: %s\n", err);
      return 1;
    }
    double t2 = now();
    fl_dataset_free(&d);
    if (t1 - t0 < base) base = t1 - t0;
    if (t2 - t1 < load) load = t2 - t1;
  }
  free(buf);
  printf("fashion-mnist:train load %.3f s; baseline gunzip only %.3f s; ratio %.2f "
         "(best of %d)\n", load, base, load / base, RUNS);
  return 0;
}
