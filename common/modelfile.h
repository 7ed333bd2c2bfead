/* Model files: a versioned binary format for a model's spec and parameters, and the
 * transform its inputs need (feature standardisation), if any.
 *
 *   magic "FLMODEL\0" | u32 format version | u32 spec length | spec bytes |
 *   u64 model id | u64 parameter count | float32 parameters |
 *   (version 2 only) u32 feature count D | float32 mean[D] | float32 std[D] |
 *   u32 CRC-32 of all before
 * All integers and floats little-endian.  Version 1 has no transform; version 2 is
 * written only for a model trained on standardised features, x' = (x - mean) / std,
 * which whoever uses the model applies to raw features first (fl-predict and the ONNX
 * export do).  Written atomically (temp file, fsync, rename); loading refuses a
 * corrupt, truncated, or mismatched file with a message in err.  README.md ("The model
 * file") describes the same for users. */
#ifndef FL_MODELFILE_H
#define FL_MODELFILE_H

#include <stddef.h>
#include <stdint.h>

#include "fileio.h"

#define FL_MODELFILE_VERSION 1u
#define FL_MODELFILE_VERSION_TRANSFORM 2u

/* A feature transform: x' = (x - mean) / std per feature.  dim 0: none. */
typedef struct fl_transform {
  size_t dim;
  float *mean, *std;   /* [dim] each; one allocation (mean) when loaded */
} fl_transform;
/* Frees what a load allocated. */
void fl_transform_free(fl_transform *tf);
/* Applies it in place to n rows x [n][dim] (nothing when dim is 0). */
void fl_transform_apply(const fl_transform *tf, float *x, size_t n);

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

/* The file image with a transform in memory (tf NULL or tf->dim 0: version 1, as
 * fl_modelfile_encode): *out (malloc'd, *len bytes) belongs to the caller. */
int fl_modelfile_encode_ex(const char *spec, uint64_t model_id, const float *params,
                           size_t num_params, const fl_transform *tf, uint8_t **out,
                           size_t *len);
/* With a transform (tf NULL or tf->dim 0: the version 1 file of fl_modelfile_save).
 * The caller keeps tf. */
int fl_modelfile_save_ex(const char *path, const char *spec, uint64_t model_id,
                         const float *params, size_t num_params, const fl_transform *tf,
                         char *err, size_t errlen);
/* Versions 1 and 2.  tf (may be NULL: the transform is then dropped unread) gets
 * the file's transform, dim 0 when there is none; it belongs to the caller
 * (fl_transform_free).  fl_modelfile_decode and fl_modelfile_load are these with tf
 * NULL. */
int fl_modelfile_decode_ex(const uint8_t *buf, size_t len, const char *name, char **spec,
                           uint64_t *model_id, float **params, size_t *num_params,
                           fl_transform *tf, char *err, size_t errlen);
int fl_modelfile_load_ex(const char *path, char **spec, uint64_t *model_id, float **params,
                         size_t *num_params, fl_transform *tf, char *err, size_t errlen);

#endif
