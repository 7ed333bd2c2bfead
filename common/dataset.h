/* Datasets: loaded once, shared read-only by every trainer and thread.
 *
 * Samples are rows of a dense float32 matrix x[n][dim]; labels are y[n] (a class index
 * 0..num_classes-1 stored as float, or a real target for regression).  Subsets
 * (partitions, train/validation splits) are index arrays into one dataset, never copies.
 *
 * Loaders: IDX (plain or gzip; images scaled to [0,1]) and CSV with a header row.  Every
 * loader error names the file, the record or line, and the problem in err. */
#ifndef FL_DATASET_H
#define FL_DATASET_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_dataset {
  size_t n;            /* samples */
  size_t dim;          /* features per sample = channels * height * width */
  uint32_t channels, height, width; /* image shape (IDX); 1, 1, dim for tabular data */
  int num_classes;     /* classes (2 for binary 0/1 labels); 0 for a regression target */
  float *x;            /* [n][dim], owned */
  float *y;            /* [n], owned */
} fl_dataset;

/* A subset: indices into a dataset.  idx == NULL means all of it, in order. */
typedef struct fl_subset {
  const fl_dataset *data;
  const uint32_t *idx; /* [n] or NULL */
  size_t n;
} fl_subset;

/* IDX image file + IDX label file (each plain or gzip).  num_classes is 1 + max label.
 * On success *out owns its arrays (free with fl_dataset_free). */
int fl_dataset_load_idx(fl_dataset *out, const char *images_path, const char *labels_path,
                        char *err, size_t errlen);

/* CSV with a header row; label_column is a column name or a 0-based index as text
 * (NULL = the last column).  All other columns are numeric features.  num_classes is
 * 1 + max label when every label is a non-negative integer, else 0 (regression). */
int fl_dataset_load_csv(fl_dataset *out, const char *path, const char *label_column,
                        char *err, size_t errlen);

/* Loads by path: "a.csv" (label = last column, or "a.csv:COLUMN"), or an IDX pair given as
 * "IMAGES,LABELS", or the name "fashion-mnist:train" / "fashion-mnist:test" for the files
 * of the Debian package dataset-fashion-mnist. */
int fl_dataset_load(fl_dataset *out, const char *spec, char *err, size_t errlen);

/* Writes a dataset as CSV (header f0..f{dim-1},label). */
int fl_dataset_save_csv(const fl_dataset *d, const char *path, char *err, size_t errlen);

void fl_dataset_free(fl_dataset *d);

/* Feature standardisation from the statistics of one subset (the training data), applied
 * in place to a whole dataset.  mean/std are [dim] arrays the caller provides. */
void fl_dataset_stats(const fl_subset *s, float *mean, float *std);
void fl_dataset_standardize(fl_dataset *d, const float *mean, const float *std);

/* A seeded train/validation split of [0, n): writes n_val validation indices and
 * n - n_val training indices (both caller-allocated). */
void fl_split(size_t n, size_t n_val, uint64_t seed, uint32_t *train_idx, uint32_t *val_idx);

/* Partitions for simulation: every sample in exactly one of `parts` partitions,
 * deterministic from the seed.  scheme: "iid", "shards:S", "dirichlet:ALPHA",
 * "quantity:ALPHA".  On success *out is an array of `parts` subsets whose idx arrays
 * share one allocation; free with fl_partition_free. */
int fl_partition(const fl_dataset *d, const char *scheme, size_t parts, uint64_t seed,
                 fl_subset **out, char *err, size_t errlen);
void fl_partition_free(fl_subset *parts);

#endif
