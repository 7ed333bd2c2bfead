/* Model files: a versioned binary format for a model's spec and parameters.
 *
 *   magic "FLMODEL\0" | u32 format version | u32 spec length | spec bytes |
 *   u64 model id | u64 parameter count | float32 parameters | u32 CRC-32 of all before
 * All integers and floats little-endian.  Written atomically (temp file, fsync, rename);
 * loading refuses a corrupt, truncated, or mismatched file with a message in err. */
#ifndef FL_MODELFILE_H
#define FL_MODELFILE_H

#include <stddef.h>
#include <stdint.h>

#include "fileio.h"

#define FL_MODELFILE_VERSION 1u

int fl_modelfile_save(const char *path, const char *spec, uint64_t model_id,
                      const float *params, size_t num_params, char *err, size_t errlen);

/* Loads a whole file.  On success *spec (malloc'd string) and *params (malloc'd array of
 * *num_params floats) belong to the caller. */
int fl_modelfile_load(const char *path, char **spec, uint64_t *model_id, float **params,
                      size_t *num_params, char *err, size_t errlen);

/* The file image as three pieces (header, parameters, CRC) for fl_file_write_atomic_pieces,
 * without a copy of the parameters on little-endian hosts: pieces[1] may point into
 * params, pieces[2] into crc; *owned (malloc'd) must be freed after the pieces are used. */
int fl_modelfile_pieces(const char *spec, uint64_t model_id, const float *params,
                        size_t num_params, fl_piece pieces[3], uint8_t crc[4], void **owned);
/* The file image in memory: *out (malloc'd, *len bytes) belongs to the caller. */
int fl_modelfile_encode(const char *spec, uint64_t model_id, const float *params,
                        size_t num_params, uint8_t **out, size_t *len);
/* Checks and decodes a file image (untrusted bytes); name is used in messages.  Outputs
 * as fl_modelfile_load. */
int fl_modelfile_decode(const uint8_t *buf, size_t len, const char *name, char **spec,
                        uint64_t *model_id, float **params, size_t *num_params, char *err,
                        size_t errlen);

#endif
