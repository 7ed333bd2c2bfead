/* Helpers shared by the dataset loaders (dataset.c, idx.c, csv.c); not a public API. */
#ifndef FL_DATASET_INTERNAL_H
#define FL_DATASET_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Reads a whole file, gunzipping it if it is gzip (zlib reads plain files unchanged).
 * On success *buf (malloc'd, *len bytes, plus one spare zero byte) belongs to the caller. */
int fl__read_file(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen);

#endif
