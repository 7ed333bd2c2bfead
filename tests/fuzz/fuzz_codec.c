/* libFuzzer target for the tensor decoder (common/codec.c): a stream of chunks as a peer
 * could send them.  The input's first bytes give the encoding, the tensor's length
 * (at most 4096), the most topk pairs and up to three runs the sender leaves out (frozen
 * parameters; bad runs are refused by fl_runs_check, as a client does); then each chunk
 * is a header (offset, count, scale, zero point, payload length) and its payload.  Every
 * chunk the decoder accepts is decoded and added into a sum: nothing may be read or
 * written outside the tensor, no accepted chunk may reach into a run, and every value
 * that comes out must be finite. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static uint32_t take32(const uint8_t **p, size_t *n) {
  uint32_t v = 0;
  for (int i = 0; i < 4 && *n; i++, (*p)++, (*n)--) v |= (uint32_t)**p << (8 * i);
  return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  fl_enc enc = (fl_enc)(data[0] % FL_ENC_COUNT);
  uint64_t total = ((uint64_t)data[1] << 8 | data[2]) % 4097;
  uint64_t max_pairs = data[3] % 64;
  size_t nruns = data[3] >> 6; /* 0-3 runs, each two 16-bit bounds */
  data += 4, size -= 4;
  uint64_t at[6];
  if (size < 4 * nruns) return 0;
  for (size_t k = 0; k < 2 * nruns; k++, data += 2, size -= 2)
    at[k] = (uint64_t)data[0] | (uint64_t)data[1] << 8;
  char err[256];
  const fl_runs runs = {at, nruns};
  if (nruns && fl_runs_check(at, 2 * nruns, total, err, sizeof err) != 0) return 0;
  float *dst = malloc((total ? total : 1) * sizeof *dst);
  double *sum = calloc(total ? total : 1, sizeof *sum);
  fl_decoder d;
  fl_decoder_init(&d, enc, total, max_pairs);
  if (nruns) fl_decoder_skip(&d, &runs);
  while (size >= 4) {
    fl_chunk ch = {enc, 0, 0, total, 0, 0, NULL, 0};
    ch.offset = take32(&data, &size);
    ch.count = take32(&data, &size);
    uint32_t s = take32(&data, &size), z = take32(&data, &size);
    memcpy(&ch.scale, &s, 4);
    memcpy(&ch.zero, &z, 4);
    size_t len = take32(&data, &size) % 8193;
    if (len > size) len = size;
    ch.data = data;
    ch.len = len;
    data += len, size -= len;
    int rc = fl_decoder_check(&d, &ch, err, sizeof err);
    if (rc < 0) break;
    for (size_t k = 0; k < nruns; k++)
      if (ch.count && ch.offset < at[2 * k + 1] && ch.offset + ch.count > at[2 * k]) abort();
    fl_chunk_decode(&ch, dst);
    fl_chunk_axpy(&ch, 0.5, sum);
    for (uint64_t i = ch.offset; i < ch.offset + ch.count; i++)
      if (!isfinite(dst[i]) || !isfinite(sum[i])) abort();
    if (rc == 1) break;
  }
  free(dst);
  free(sum);
  return 0;
}
