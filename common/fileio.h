/* Whole-file reads and atomic writes, for model files and checkpoints.
 *
 * fl_file_write_atomic writes to a temporary file beside the target, fsyncs it, renames
 * it over the target and fsyncs the directory: a reader (or a process restarted after a
 * crash at any moment) sees the old file or the new one, never a mix. */
#ifndef FL_FILEIO_H
#define FL_FILEIO_H

#include <stddef.h>
#include <stdint.h>

int fl_file_write_atomic(const char *path, const void *buf, size_t len, char *err,
                         size_t errlen);

/* The same, readable by the owner alone (mode 0600): keys and other secrets. */
int fl_file_write_private(const char *path, const void *buf, size_t len, char *err,
                          size_t errlen);

/* A piece of a file written from several buffers, so large parts (model parameters) are
 * written from where they are instead of copied into one image. */
typedef struct fl_piece {
  const void *data;
  size_t len;
} fl_piece;
int fl_file_write_atomic_pieces(const char *path, const fl_piece *pieces, size_t n, char *err,
                                size_t errlen);
/* Reads a whole regular file; *buf (malloc'd, *len bytes) belongs to the caller. */
int fl_file_read(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen);

/* Little-endian integers in byte buffers. */
static inline void fl_put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void fl_put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t fl_get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t fl_get64(const uint8_t *p) {
  return fl_get32(p) | (uint64_t)fl_get32(p + 4) << 32;
}

#endif
