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

/* CSV with a header row (a first row of numbers only is refused as a missing header,
 * FL_EFORMAT); label_column is a column name or a 0-based index as text
 * (NULL = the last column).  All other columns are numeric features.  num_classes is
 * 1 + max label when every label is a non-negative integer, else 0 (regression). */
int fl_dataset_load_csv(fl_dataset *out, const char *path, const char *label_column,
                        char *err, size_t errlen);

/* Like fl_dataset_load_csv with an explicit class count.  num_classes > 0: every label
 * must be an integer in [0, num_classes), else FL_ERANGE "label out of range" naming
 * the line.  num_classes == 0: inferred as above, and a negative integer label among
 * integer labels is FL_ERANGE too (integer labels are read as class indices).
 * num_classes < 0: a regression target, any finite value. */
int fl_dataset_load_csv_classes(fl_dataset *out, const char *path, const char *label_column,
                                int num_classes, char *err, size_t errlen);

/* The parsers behind the loaders, on a caller's buffer (not NUL-terminated; never read
 * past len).  name is used only in error messages.  Same results and ownership as the
 * loaders. */
int fl_dataset_parse_csv(fl_dataset *out, const char *buf, size_t len, const char *name,
                         const char *label_column, int num_classes, char *err, size_t errlen);
int fl_dataset_parse_idx(fl_dataset *out, const uint8_t *images, size_t images_len,
                         const char *images_name, const uint8_t *labels, size_t labels_len,
                         const char *labels_name, char *err, size_t errlen);

/* A CSV file read a batch of rows at a time (plain or gzip), in memory bounded by its
 * longest line whatever its number of rows: for predicting on files larger than memory.
 * The format is the one above.  The file has `features` feature columns and, when the
 * header has one more, a label: label_column (a name or a 0-based index as text), or the
 * last column when it is NULL; a file of exactly `features` columns has no label (when
 * label_column is NULL).  Any other width is FL_EMISMATCH naming both counts. */
typedef struct fl_csv_stream fl_csv_stream;
/* On success *out belongs to the caller (fl_csv_stream_close).  The _fd form takes
 * ownership of fd (closed even on failure); name (copied) is used in messages. */
int fl_csv_stream_open(fl_csv_stream **out, const char *path, const char *label_column,
                       size_t features, char *err, size_t errlen);
int fl_csv_stream_open_fd(fl_csv_stream **out, int fd, const char *name,
                          const char *label_column, size_t features, char *err,
                          size_t errlen);
int fl_csv_stream_has_labels(const fl_csv_stream *s);
/* Reads up to max rows: features into x [max][features], labels into y [max] (0 without
 * a label column); *n rows were read, 0 at the end of the file.  Values are checked as
 * in the loaders (finite numbers; labels are not range-checked).  0 or FL_E* with a
 * message naming the file, line and column. */
int fl_csv_stream_read(fl_csv_stream *s, float *x, float *y, size_t max, size_t *n,
                       char *err, size_t errlen);
/* The number of the last line read (1 is the header). */
size_t fl_csv_stream_line(const fl_csv_stream *s);
void fl_csv_stream_close(fl_csv_stream *s);

/* Loads by path: "a.csv" (label = last column, or "a.csv:COLUMN"), or an IDX pair given as
 * "IMAGES,LABELS", or the name "fashion-mnist:train" / "fashion-mnist:test" for the files
 * of the Debian package dataset-fashion-mnist.  A path ending in .csv or .csv.gz (before
 * an optional ":COLUMN") is CSV; otherwise a comma makes an IDX pair; anything else is
 * FL_EINVAL.  Every loader leaves *out zeroed on failure. */
int fl_dataset_load(fl_dataset *out, const char *spec, char *err, size_t errlen);

/* Writes a dataset as CSV (header f0..f{dim-1},label; values as %.9g, so loading the
 * file gives back the same floats). */
int fl_dataset_save_csv(const fl_dataset *d, const char *path, char *err, size_t errlen);

void fl_dataset_free(fl_dataset *d);

/* Feature standardisation from the statistics of one subset (the training data), applied
 * in place to a whole dataset.  mean/std are [dim] arrays the caller provides; std is
 * the population standard deviation.  A feature with std 0 is only centred. */
void fl_dataset_stats(const fl_subset *s, float *mean, float *std);
void fl_dataset_standardize(fl_dataset *d, const float *mean, const float *std);

/* A seeded train/validation split of [0, n): writes n_val validation indices and
 * n - n_val training indices (both caller-allocated), each list in ascending order.
 * n_val <= n <= UINT32_MAX. */
void fl_split(size_t n, size_t n_val, uint64_t seed, uint32_t *train_idx, uint32_t *val_idx);

/* Partitions for simulation: every sample in exactly one of `parts` partitions,
 * deterministic from the seed.  scheme: "iid", "shards:S", "dirichlet:ALPHA",
 * "quantity:ALPHA".  On success *out is an array of `parts` subsets whose idx arrays
 * share one allocation; free with fl_partition_free.
 *   iid              seeded shuffle, sizes equal to within one
 *   shards:S         samples sorted by label (stable) and cut into parts*S shards of equal
 *                    size (to within one); each partition gets S random shards
 *                    (McMahan et al. 2017); needs parts*S <= n
 *   dirichlet:ALPHA  label skew: for each class, shares over partitions ~ Dir(ALPHA);
 *                    needs class labels.  A partition left empty gets one sample from
 *                    the largest partition, so none is empty
 *   quantity:ALPHA   size skew: sizes ~ Dir(ALPHA), labels iid; empty ones fixed alike
 * Indices within a partition are in ascending order.  parts must be 1..n; ALPHA > 0;
 * S >= 1; else FL_EINVAL with a message in err. */
int fl_partition(const fl_dataset *d, const char *scheme, size_t parts, uint64_t seed,
                 fl_subset **out, char *err, size_t errlen);
void fl_partition_free(fl_subset *parts);

#endif
