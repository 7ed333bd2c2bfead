/* fl-predict: uses a trained model.  Reads a model file (what fl-server --out or
 * fl-train --out wrote) and a data set, writes one CSV row of predictions per sample,
 * and, when the data has labels, reports the loss, the accuracy, the ROC AUC of a binary
 * head and the confusion matrix.
 *
 * A CSV file is streamed a batch at a time (fl_csv_stream): memory does not grow with
 * its rows, so files larger than memory are fine.  Other data sets (IDX pairs,
 * fashion-mnist:*) are loaded whole, as training loads them.  The model file's feature
 * transform, if it has one, is applied to every row first. */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blaskernels.h"
#include "dataset.h"
#include "error.h"
#include "log.h"
#include "model.h"
#include "modelfile.h"
#include "roc.h"
#include "train.h"

static const char usage[] =
    "usage: fl-predict --model FILE --data DATA [options]\n"
    "Predicts with a trained model file, one CSV row per sample; with labels in the data,\n"
    "also reports loss, accuracy, ROC AUC (binary heads) and the confusion matrix.\n"
    "\n"
    "  --model FILE         a model file (fl-server --out, fl-train --out)\n"
    "  --data SPEC          a.csv, a.csv.gz, a.csv:COLUMN (the label column), IMAGES,LABELS,\n"
    "                       or fashion-mnist:test.  A CSV needs a header row; it has the\n"
    "                       model's input width in feature columns, plus one for a label\n"
    "                       (the last, or COLUMN) when there is one.  CSV files are read\n"
    "                       a batch at a time, so their size does not matter\n"
    "  --out FILE           predictions CSV (default '-': standard output)\n"
    "  --report FILE        the metrics as one JSON line, when the data has labels\n"
    "  --batch N            rows per forward pass (default 256)\n"
    "  --threads N          threads per forward pass (default 1; 0: one per core)\n"
    "  --log-level LEVEL    debug, info, warn, error, off (default info)\n"
    "  --help               this text\n"
    "\n"
    "Columns of the predictions: softmax heads p0..p{C-1} (class probabilities) and\n"
    "'predicted' (the most probable class); sigmoid_bce heads p1 (the probability of\n"
    "class 1) and 'predicted' (1 when p1 > 0.5); mse heads 'value'.  With labels, a last\n"
    "column 'label'.  The report goes to standard output, or to standard error when the\n"
    "predictions do.\n";

enum { OPT_MODEL = 256, OPT_DATA, OPT_OUT, OPT_REPORT, OPT_BATCH, OPT_THREADS, OPT_LOG,
       OPT_HELP };

static const struct option options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"data", required_argument, NULL, OPT_DATA},
    {"out", required_argument, NULL, OPT_OUT},
    {"report", required_argument, NULL, OPT_REPORT},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"log-level", required_argument, NULL, OPT_LOG},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static int parse_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi,
                     uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (!*s || *end || errno || s[0] == '-' || v < lo || v > hi) {
    fprintf(stderr, "fl-predict: --%s: '%s' is not a whole number in [%llu, %llu]\n", flag, s,
            (unsigned long long)lo, (unsigned long long)hi);
    return -1;
  }
  *out = v;
  return 0;
}

/* Where rows come from: a CSV stream, or a data set in memory. */
typedef struct source {
  fl_csv_stream *csv;
  fl_dataset data;
  size_t next;        /* the data set's next row */
  int labels;
} source;

static int source_open(source *s, const char *spec, size_t features, char *err,
                       size_t errlen) {
  memset(s, 0, sizeof *s);
  const char *colon = strrchr(spec, ':');
  size_t len = strlen(spec);
  const char *label = NULL;
  if (colon && colon[1] && (colon - spec >= 4) &&
      (strncmp(colon - 4, ".csv", 4) == 0 || (colon - spec >= 7 && strncmp(colon - 7, ".csv.gz", 7) == 0)))
    label = colon + 1, len = (size_t)(colon - spec);
  int is_csv = (len >= 4 && strncmp(spec + len - 4, ".csv", 4) == 0) ||
               (len >= 7 && strncmp(spec + len - 7, ".csv.gz", 7) == 0);
  if (!is_csv) {
    int rc = fl_dataset_load(&s->data, spec, err, errlen);
    if (rc < 0) return rc;
    if (s->data.dim != features)
      return fl_errf(err, errlen, FL_EMISMATCH, "%s: %zu features per sample, the model "
                     "takes %zu", spec, s->data.dim, features);
    s->labels = 1;
    return 0;
  }
  char *path = strndup(spec, len);
  if (!path) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  int rc = fl_csv_stream_open(&s->csv, path, label, features, err, errlen);
  free(path);
  if (rc < 0) return rc;
  s->labels = fl_csv_stream_has_labels(s->csv);
  return 0;
}

static int source_read(source *s, float *x, float *y, size_t max, size_t *n, char *err,
                       size_t errlen) {
  if (s->csv) return fl_csv_stream_read(s->csv, x, y, max, n, err, errlen);
  size_t k = s->data.n - s->next < max ? s->data.n - s->next : max;
  memcpy(x, s->data.x + s->next * s->data.dim, sizeof(float) * k * s->data.dim);
  memcpy(y, s->data.y + s->next, sizeof(float) * k);
  s->next += k;
  *n = k;
  return 0;
}

static void source_close(source *s) {
  fl_csv_stream_close(s->csv);
  fl_dataset_free(&s->data);
}

/* What the labelled rows add up to. */
typedef struct tally {
  size_t n, correct;
  double loss;
  size_t C;           /* classes (2 for a binary head; 0 for regression) */
  uint64_t *confusion; /* [C][C]: true class, predicted class */
  fl_roc roc;
  double sq;          /* regression: squared error */
} tally;

static void report(FILE *f, const tally *t, int binary) {
  fprintf(f, "samples %zu  loss %.6f", t->n, t->n ? t->loss / (double)t->n : 0.0);
  if (t->C) fprintf(f, "  accuracy %.4f", t->n ? (double)t->correct / (double)t->n : 0.0);
  if (binary)
    fprintf(f, "  auc %.4f%s", fl_roc_auc(&t->roc), fl_roc_exact(&t->roc) ? "" : " (binned)");
  if (!t->C) fprintf(f, "  rmse %.6f", t->n ? sqrt(t->sq / (double)t->n) : 0.0);
  fputc('\n', f);
  if (!t->C) return;
  fprintf(f, "confusion matrix (rows: true class, columns: predicted)\n%8s", "");
  for (size_t j = 0; j < t->C; j++) fprintf(f, " %9zu", j);
  fputc('\n', f);
  for (size_t i = 0; i < t->C; i++) {
    fprintf(f, "%8zu", i);
    for (size_t j = 0; j < t->C; j++)
      fprintf(f, " %9llu", (unsigned long long)t->confusion[i * t->C + j]);
    fputc('\n', f);
  }
}

static int write_report_json(const char *path, const tally *t, int binary, char *err,
                             size_t errlen) {
  FILE *f = fopen(path, "w");
  if (!f) return fl_errf(err, errlen, FL_EIO, "%s: cannot create: %s", path, strerror(errno));
  fprintf(f, "{\"samples\":%zu,\"loss\":%.9g", t->n, t->n ? t->loss / (double)t->n : 0.0);
  if (t->C) fprintf(f, ",\"accuracy\":%.9g", t->n ? (double)t->correct / (double)t->n : 0.0);
  if (binary) fprintf(f, ",\"auc\":%.9g", fl_roc_auc(&t->roc));
  if (!t->C) fprintf(f, ",\"rmse\":%.9g", t->n ? sqrt(t->sq / (double)t->n) : 0.0);
  if (t->C) {
    fputs(",\"confusion\":[", f);
    for (size_t i = 0; i < t->C; i++) {
      fputs(i ? ",[" : "[", f);
      for (size_t j = 0; j < t->C; j++)
        fprintf(f, "%s%llu", j ? "," : "", (unsigned long long)t->confusion[i * t->C + j]);
      fputc(']', f);
    }
    fputc(']', f);
  }
  fputs("}\n", f);
  if (fclose(f) != 0)
    return fl_errf(err, errlen, FL_EIO, "%s: cannot write: %s", path, strerror(errno));
  return 0;
}

int main(int argc, char **argv) {
  fl_blas_pick_kernels(argv);
  const char *model_path = NULL, *data_spec = NULL, *out_path = "-", *report_path = NULL;
  uint64_t batch = 256, threads = 1;
  int c, rc = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
    const char *name = c >= OPT_MODEL && c <= OPT_HELP ? options[c - OPT_MODEL].name : "";
    int bad = 0;
    switch (c) {
    case OPT_MODEL: model_path = optarg; break;
    case OPT_DATA: data_spec = optarg; break;
    case OPT_OUT: out_path = optarg; break;
    case OPT_REPORT: report_path = optarg; break;
    case OPT_BATCH: bad = parse_u64(name, optarg, 1, 65536, &batch); break;
    case OPT_THREADS: bad = parse_u64(name, optarg, 0, 256, &threads); break;
    case OPT_LOG:
      if (fl_log_level_parse(optarg) < 0) {
        fprintf(stderr, "fl-predict: --log-level: '%s' is not one of debug, info, warn, "
                "error, off\n", optarg);
        bad = 1;
      } else {
        fl_log_set_level(fl_log_level_parse(optarg));
      }
      break;
    case OPT_HELP: fputs(usage, stdout); return 0;
    default: fputs("fl-predict: see --help\n", stderr); return 2;
    }
    if (bad) return 2;
  }
  if (optind < argc) {
    fprintf(stderr, "fl-predict: unexpected argument '%s' (see --help)\n", argv[optind]);
    return 2;
  }
  if (!model_path || !data_spec) {
    fprintf(stderr, "fl-predict: %s is required (see --help)\n",
            model_path ? "--data" : "--model");
    return 2;
  }
  openblas_set_num_threads(1);

  char err[512] = "";
  char *spec = NULL;
  uint64_t id;
  float *params = NULL, *x = NULL, *y = NULL, *out = NULL, *score = NULL, *loss = NULL;
  size_t P;
  fl_transform tf = {0};
  fl_model *m = NULL;
  fl_trainer *t = NULL;
  source src = {0};
  tally ta = {0};
  FILE *of = NULL;
  if (fl_modelfile_load_ex(model_path, &spec, &id, &params, &P, &tf, err, sizeof err) < 0) {
    fprintf(stderr, "fl-predict: --model: %s\n", err);
    goto done;
  }
  if (fl_model_create(spec, &m, err, sizeof err) < 0) {
    fprintf(stderr, "fl-predict: --model: %s: %s\n", model_path, err);
    goto done;
  }
  if (fl_model_is_external(m)) {
    fprintf(stderr, "fl-predict: --model: %s is an external model (%s): only the code that "
            "trained it can predict with it\n", model_path, spec);
    goto done;
  }
  if (fl_model_id(m) != id || fl_model_num_params(m) != P) {
    fprintf(stderr, "fl-predict: --model: %s: its parameters do not match its spec '%s'\n",
            model_path, spec);
    goto done;
  }
  size_t D = fl_model_input_dim(m), C = fl_model_output_dim(m);
  if (tf.dim && tf.dim != D) {
    fprintf(stderr, "fl-predict: --model: %s: its feature transform has %zu features, the "
            "model %zu\n", model_path, tf.dim, D);
    goto done;
  }
  const char *head = strrchr(fl_model_spec(m), ' ') + 1;
  int softmax = strcmp(head, "softmax") == 0, binary = strcmp(head, "sigmoid_bce") == 0;
  if (source_open(&src, data_spec, D, err, sizeof err) < 0) {
    fprintf(stderr, "fl-predict: --data: %s\n", err);
    goto done;
  }
  x = malloc(sizeof *x * batch * D);
  y = malloc(sizeof *y * batch);
  out = malloc(sizeof *out * batch * C);
  score = malloc(sizeof *score * batch * C);
  loss = malloc(sizeof *loss * batch);
  ta.C = softmax ? C : binary ? 2 : 0;
  if (ta.C) ta.confusion = calloc(ta.C * ta.C, sizeof *ta.confusion);
  t = fl_trainer_create_threads(m, (uint32_t)batch, (int)threads);
  if (!x || !y || !out || !score || !loss || (ta.C && !ta.confusion) || !t) {
    fprintf(stderr, "fl-predict: %s\n", fl_strerror(FL_ENOMEM));
    goto done;
  }
  of = strcmp(out_path, "-") == 0 ? stdout : fopen(out_path, "w");
  if (!of) {
    fprintf(stderr, "fl-predict: --out: %s: cannot create: %s\n", out_path, strerror(errno));
    goto done;
  }
  setvbuf(of, NULL, _IOFBF, 1 << 16);
  if (softmax)
    for (size_t j = 0; j < C; j++) fprintf(of, "p%zu,", j);
  fputs(softmax ? "predicted" : binary ? "p1,predicted" : "value", of);
  fputs(src.labels ? ",label\n" : "\n", of);

  fl_info("predict", "model %s (%zu parameters%s), data %s%s", fl_model_spec(m), P,
          tf.dim ? ", standardised inputs" : "", data_spec,
          src.labels ? " with labels" : " without labels");
  for (size_t row = 1;;) {
    size_t n;
    if (source_read(&src, x, y, batch, &n, err, sizeof err) < 0) {
      fprintf(stderr, "fl-predict: --data: %s\n", err);
      goto done;
    }
    if (n == 0) break;
    for (size_t i = 0; src.labels && ta.C && i < n; i++) {
      float v = y[i];
      if (!(v >= 0.0f && v < (float)ta.C && v == floorf(v))) {
        fprintf(stderr, "fl-predict: --data: %s: data row %zu: label %g is not a class of "
                "the model (0..%zu)\n", data_spec, row + i, (double)v, ta.C - 1);
        goto done;
      }
    }
    if (!src.labels) memset(y, 0, sizeof *y * n);
    fl_transform_apply(&tf, x, n);
    int prc = fl_trainer_predict(t, params, x, y, (uint32_t)n, out, score, loss);
    if (prc < 0 && prc != FL_ENONFINITE) {
      fprintf(stderr, "fl-predict: %s\n", fl_strerror(prc));
      goto done;
    }
    for (size_t i = 0; i < n; i++) {
      const float *o = out + i * C;
      size_t pred = 0;
      if (softmax) {
        for (size_t j = 0; j < C; j++) {
          fprintf(of, "%.9g,", (double)o[j]);
          if (o[j] > o[pred]) pred = j;
        }
        fprintf(of, "%zu", pred);
      } else if (binary) {
        pred = score[i] > 0.0f; /* the head's own rule (p1 > 0.5 up to rounding) */
        fprintf(of, "%.9g,%zu", (double)o[0], pred);
      } else {
        fprintf(of, "%.9g", (double)o[0]);
      }
      if (src.labels) {
        fprintf(of, ",%.9g", (double)y[i]);
        ta.loss += loss[i];
        if (ta.C) {
          size_t truth = (size_t)y[i];
          ta.correct += pred == truth;
          ta.confusion[truth * ta.C + pred]++;
        } else {
          ta.sq += ((double)o[0] - y[i]) * ((double)o[0] - y[i]);
        }
      }
      fputc('\n', of);
    }
    if (src.labels) {
      ta.n += n;
      if (binary && fl_roc_add(&ta.roc, score, y, n) < 0) {
        fprintf(stderr, "fl-predict: %s\n", fl_strerror(FL_ENOMEM));
        goto done;
      }
    }
    row += n;
  }
  if (fflush(of) != 0 || ferror(of)) {
    fprintf(stderr, "fl-predict: --out: %s: cannot write: %s\n", out_path, strerror(errno));
    goto done;
  }
  if (src.labels) {
    report(of == stdout ? stderr : stdout, &ta, binary);
    if (report_path && write_report_json(report_path, &ta, binary, err, sizeof err) < 0) {
      fprintf(stderr, "fl-predict: --report: %s\n", err);
      goto done;
    }
  } else if (report_path) {
    fprintf(stderr, "fl-predict: --report: the data has no labels, so there is nothing to "
            "report\n");
  }
  rc = 0;
done:
  if (of && of != stdout && fclose(of) != 0 && rc == 0) {
    fprintf(stderr, "fl-predict: --out: %s: cannot write: %s\n", out_path, strerror(errno));
    rc = 1;
  }
  source_close(&src);
  fl_trainer_free(t);
  fl_roc_free(&ta.roc);
  free(ta.confusion);
  free(x);
  free(y);
  free(out);
  free(score);
  free(loss);
  free(params);
  free(spec);
  fl_transform_free(&tf);
  fl_model_free(m);
  return rc;
}
