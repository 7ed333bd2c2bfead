/* Server checkpoints: everything fl-server needs to continue a run after a crash.
 *
 *   magic "FLCKPT\0\0" | u32 version | u64 rounds completed | u64 model version |
 *   4 x u64 random generator state | u64 metrics file length | u32 strategy state length |
 *   strategy state | u32 privacy state length | privacy state | u32 best metric's name
 *   length | name | u64 best round | f64 best value | u64 model image length | model file
 *   image (modelfile.h) | u32 CRC-32 of all before
 * (version 1 has no privacy state, versions 1 and 2 no best round: read as empty and 0).  The model image carries the
 * run's feature transform when it has one (model file version 2), so a restart goes on
 * with the standardisation the weights were trained on.
 * Little-endian.  Written atomically after every completed round, so a restart finds
 * the last completed round or the one before it, never a torn file. */
#ifndef FL_CHECKPOINT_H
#define FL_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "modelfile.h"
#include "rng.h"

typedef struct checkpoint {
  uint64_t rounds;          /* rounds completed */
  uint64_t model_version;
  fl_rng rng;               /* the selection generator, as after the last round */
  uint64_t metrics_len;     /* bytes of the metrics file written by completed rounds */
  uint8_t *strategy;        /* the strategy's own state (may be empty) */
  size_t strategy_len;
  uint8_t *privacy;         /* differential privacy's accountant and clip (may be empty) */
  size_t privacy_len;
  char *best_metric;        /* --keep-best: the metric (NULL: none), the round of the best */
  uint64_t best_round;      /* model so far and its value */
  double best_value;
  char *spec;               /* the global model */
  uint64_t model_id;
  float *params;
  size_t n;
  fl_transform tf;          /* the features' standardisation; dim 0: none */
} checkpoint;

/* Writes c to path atomically. */
int checkpoint_save(const char *path, const checkpoint *c, char *err, size_t errlen);
/* Reads path into *c (its buffers malloc'd; free with checkpoint_free).  FL_ENOENT when
 * there is no checkpoint; FL_EFORMAT, FL_ETRUNC, FL_ECHECKSUM, FL_EVERSION otherwise. */
int checkpoint_load(const char *path, checkpoint *c, char *err, size_t errlen);
/* Decodes a checkpoint image (untrusted bytes). */
int checkpoint_decode(const uint8_t *b, size_t len, const char *name, checkpoint *c,
                      char *err, size_t errlen);
void checkpoint_free(checkpoint *c);

#endif
