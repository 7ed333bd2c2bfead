/* fl-train: the centralized baseline.  Trains one model on one dataset with the same
 * training core the federated clients use, prints one line per epoch and the final test
 * accuracy, and optionally saves the model file. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blaskernels.h"
#include "dataset.h"
#include "error.h"
#include "log.h"
#include "model.h"
#include "modelfile.h"
#include "options.h"
#include "train.h"

/* fl-train's options: the same table-driven flags and INI file (--config) as fl-server
 * and fl-client, so a setting has one name everywhere (--batch-size, not --batch). */
typedef struct train_options {
  char *model, *init, *freeze, *data, *test, *out, *optimizer, *momentum, *log_level;
  int epochs, batch_size, threads, standardize;
  double lr, weight_decay, val_split;
  unsigned long long seed;
} train_options;

#define O(name, sec, type, field, def, arg, help, lo, hi) \
  {name, sec, type, offsetof(train_options, field), def, arg, help, lo, hi}

static const fl_option train_opts[] = {
  O("model", "model", FL_OPTT_STR, model, NULL, "SPEC", "model spec or preset: logreg, logreg:D:C, 2nn, cnn, mlp64, or tokens such as 'in:784 dense:200 relu dense:10 softmax' (default: 2nn, or --init's)", 0, 0),
  O("init", "model", FL_OPTT_STR, init, NULL, "FILE", "start from this model file (fine-tuning) instead of random weights; its spec is the model's (--model, if given, must be the same) and its feature standardisation, if any, is applied", 0, 0),
  O("freeze", "train", FL_OPTT_STR, freeze, NULL, "LAYERS", "train only the other layers (transfer learning): 'head', 'all-but-head' or layer positions from 0 as in the spec without in:, such as 0,2-3 (fl-export --list names them l<I>_...)", 0, 0),
  O("seed", "model", FL_OPTT_U64, seed, "1", "N", "seed for initialisation, shuffling, dropout and the split", 0, 0),
  O("data", "data", FL_OPTT_STR, data, "fashion-mnist:train", "SPEC", "training data: fashion-mnist:train, a.csv, a.csv:COLUMN or IMAGES,LABELS", 0, 0),
  O("test", "data", FL_OPTT_STR, test, "fashion-mnist:test", "SPEC", "test data, or 'none'", 0, 0),
  O("val-split", "data", FL_OPTT_DOUBLE, val_split, "0", "X", "fraction in [0, 1) of the training data held out for validation", 0, 1),
  O("standardize", "data", FL_OPTT_BOOL, standardize, "false", NULL, "standardise features with the training part's mean and std (saved in the --out model file: fl-predict applies them)", 0, 0),
  O("epochs", "train", FL_OPTT_INT, epochs, "10", "N", "passes over the training data", 1, 100000),
  O("batch-size", "train", FL_OPTT_INT, batch_size, "64", "N", "mini-batch size", 1, 65536),
  O("lr", "train", FL_OPTT_DOUBLE, lr, "0.05", "X", "learning rate", 0, 1e6),
  O("optimizer", "train", FL_OPTT_STR, optimizer, "sgd", "NAME", "sgd, momentum, nesterov, adam, adamw", 0, 0),
  O("momentum", "train", FL_OPTT_STR, momentum, NULL, "X", "SGD momentum in [0, 1) (default 0, 0.9 for momentum and nesterov)", 0, 0),
  O("weight-decay", "train", FL_OPTT_DOUBLE, weight_decay, "0", "X", "L2 weight decay; decoupled for adamw", 0, 1e6),
  O("threads", "train", FL_OPTT_INT, threads, "0", "N", "training threads, each step's batch split over them (0: one per core); the same count gives bit-identical reruns", 0, 256),
  O("out", "output", FL_OPTT_STR, out, NULL, "FILE", "save the trained model file here", 0, 0),
  O("log-level", "output", FL_OPTT_LOGLEVEL, log_level, "info", "LEVEL", "debug, info, warn, error or off", 0, 0),
  {0},
};

static void usage(FILE *f) {
  fputs("usage: fl-train [--config FILE] [OPTION...]\n"
        "Trains a model centrally (the baseline for federated runs) and reports accuracy.\n"
        "Prints one line per epoch (train loss/accuracy as running means over the epoch,\n"
        "validation and test after it, seconds) and ends with 'final test accuracy: X'.\n"
        "Every option is a flag or a key of the INI file's section shown.\n"
        "\n"
        "  --config FILE                INI file with any of the options below\n"
        "  --help                       this text\n"
        "  --version                    print the version\n"
        "\n", f);
}

/* A momentum given as text: a number in [0, 1). */
static int parse_momentum(const char *s, float *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (!*s || *end || errno || !isfinite(v) || v < 0 || v >= 1) return -1;
  *out = (float)v;
  return 0;
}

static int check(const void *p, char *err, size_t errlen) {
  const train_options *o = p;
  fl_train_config c = fl_train_config_default();
  float m;
  if (fl_optimizer_parse(o->optimizer, &c) < 0) {
    snprintf(err, errlen, "--optimizer: '%s' is not one of sgd, momentum, nesterov, adam, adamw",
             o->optimizer);
    return FL_ECONFIG;
  }
  if (o->momentum && parse_momentum(o->momentum, &m) < 0) {
    snprintf(err, errlen, "--momentum: '%s' is not a number in [0, 1)", o->momentum);
    return FL_ECONFIG;
  }
  if (o->val_split >= 1) {
    snprintf(err, errlen, "--val-split: %g leaves no training data (a fraction below 1)", o->val_split);
    return FL_ECONFIG;
  }
  return 0;
}

/* The old spelling --batch (and --batch=N) still works, with a warning. */
static void rename_batch(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--batch") == 0) {
      argv[i] = "--batch-size";
    } else if (strncmp(argv[i], "--batch=", 8) == 0) {
      static char buf[64];
      snprintf(buf, sizeof buf, "--batch-size=%s", argv[i] + 8);
      argv[i] = buf;
    } else {
      continue;
    }
    fprintf(stderr, "fl-train: --batch is spelled --batch-size now (as in fl-server)\n");
  }
}

typedef struct run {
  fl_trainer *t;
  const float *params;
  const fl_subset *val, *test;
  int binary;
  double t0;
  uint32_t epochs;
  fl_eval last_test;
} run;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void print_eval(const char *name, const fl_subset *s, fl_trainer *t,
                       const float *params, int binary, fl_eval *keep) {
  fl_eval e;
  if (!s) {
    printf("  %s -", name);
    return;
  }
  if (fl_evaluate(t, params, s, &e) < 0) {
    printf("  %s loss nan", name);
    return;
  }
  printf("  %s loss %.4f acc %.4f", name, e.loss, e.accuracy);
  if (binary) printf(" auc %.4f", e.auc);
  if (keep) *keep = e;
}

/* After each epoch: the trainer is idle between epochs, so evaluating with it is safe. */
static void on_epoch(void *arg, uint32_t epoch, const fl_eval *train) {
  run *r = arg;
  printf("epoch %u/%u  train loss %.4f acc %.4f", epoch + 1, r->epochs, train->loss,
         train->accuracy);
  print_eval("val", r->val, r->t, r->params, r->binary, NULL);
  print_eval("test", r->test, r->t, r->params, r->binary, &r->last_test);
  printf("  %.1fs\n", now() - r->t0);
  fflush(stdout);
  r->t0 = now();
}

int main(int argc, char **argv) {
  fl_blas_pick_kernels(argv);
  train_options o;
  rename_batch(argc, argv);
  int rc = fl_options_cli("fl-train", train_opts, &o, argc, argv, usage, check);
  if (rc >= 0) return rc;
  rc = 1;
  fl_log_set_level(fl_log_level_parse(o.log_level));
  const char *model_spec = o.model ? o.model : "2nn", *data_spec = o.data, *test_spec = o.test;
  const char *out_path = o.out, *opt_name = o.optimizer;
  const char *init_path = o.init, *freeze = o.freeze;
  int model_given = o.model != NULL;
  fl_train_config cfg = fl_train_config_default();
  fl_optimizer_parse(o.optimizer, &cfg);
  float momentum = -1.0f;
  if (o.momentum) parse_momentum(o.momentum, &momentum);
  uint64_t seed = o.seed, threads = (uint64_t)o.threads;
  int standardize = o.standardize;
  double val_split = o.val_split;
  cfg.lr = (float)o.lr;
  if (momentum >= 0.0f) cfg.momentum = momentum;
  cfg.weight_decay = (float)o.weight_decay;
  cfg.seed = seed;
  cfg.epochs = (uint32_t)o.epochs;
  cfg.batch_size = (uint32_t)o.batch_size;
  openblas_set_num_threads(1); /* the trainer's own threads each run their products */

  char err[512] = "";
  fl_model *m = NULL;
  fl_dataset train = {0}, test = {0};
  fl_trainer *t = NULL;
  float *params = NULL, *mean = NULL, *sd = NULL, *init_params = NULL, *frozen = NULL;
  char *init_spec = NULL;
  fl_transform init_tf = {0};
  size_t init_n = 0;
  uint64_t init_id = 0;
  uint32_t *tr_idx = NULL, *val_idx = NULL;
  int have_test = strcmp(test_spec, "none") != 0;

  if (init_path) {
    if (fl_modelfile_load_ex(init_path, &init_spec, &init_id, &init_params, &init_n, &init_tf,
                             err, sizeof err) < 0) {
      fprintf(stderr, "fl-train: --init: %s\n", err);
      rc = 2;
      goto out;
    }
    if (!model_given) model_spec = init_spec;
  }
  if (fl_model_create(model_spec, &m, err, sizeof err) < 0) {
    fprintf(stderr, "fl-train: --model: %s\n", err);
    goto out;
  }
  if (init_path && (fl_model_id(m) != init_id || fl_model_num_params(m) != init_n)) {
    fprintf(stderr, "fl-train: --init: %s holds the model '%s', not --model '%s'\n", init_path,
            init_spec, fl_model_spec(m));
    goto out;
  }
  if (init_tf.dim && standardize) {
    fprintf(stderr, "fl-train: --init: %s carries its own feature standardisation, which "
            "fine-tuning keeps: drop --standardize\n", init_path);
    goto out;
  }
  if (fl_dataset_load(&train, data_spec, err, sizeof err) < 0) {
    fprintf(stderr, "fl-train: --data: %s\n", err);
    goto out;
  }
  if (have_test && fl_dataset_load(&test, test_spec, err, sizeof err) < 0) {
    fprintf(stderr, "fl-train: --test: %s\n", err);
    goto out;
  }
  fl_info("train", "model %s (%zu parameters), %zu training samples%s, OpenBLAS's %s kernels",
          fl_model_spec(m), fl_model_num_params(m), train.n, have_test ? "" : ", no test set",
          fl_blas_kernels());

  size_t n_val = (size_t)llround(val_split * (double)train.n);
  if (n_val >= train.n) {
    fprintf(stderr, "fl-train: --val-split: leaves no training data\n");
    goto out;
  }
  tr_idx = malloc(sizeof *tr_idx * (train.n - n_val));
  val_idx = malloc(sizeof *val_idx * (n_val ? n_val : 1));
  if (!tr_idx || !val_idx) goto nomem;
  fl_split(train.n, n_val, seed, tr_idx, val_idx);
  fl_subset tr = {&train, tr_idx, train.n - n_val}, val = {&train, val_idx, n_val};
  fl_subset te = {&test, NULL, test.n};

  if (init_tf.dim) {
    if (init_tf.dim != train.dim || (have_test && test.dim != train.dim)) {
      fprintf(stderr, "fl-train: --init: its feature standardisation has %zu features, the "
              "data %zu\n", init_tf.dim, train.dim);
      goto out;
    }
    fl_transform_apply(&init_tf, train.x, train.n);
    if (have_test) fl_transform_apply(&init_tf, test.x, test.n);
  }
  if (standardize) {
    mean = malloc(sizeof *mean * train.dim);
    sd = malloc(sizeof *sd * train.dim);
    if (!mean || !sd) goto nomem;
    fl_dataset_stats(&tr, mean, sd);
    for (size_t j = 0; j < train.dim; j++) /* a constant feature is only centred */
      if (!(sd[j] > 0.0f)) sd[j] = 1.0f;
    fl_dataset_standardize(&train, mean, sd);
    if (have_test) {
      if (test.dim != train.dim) {
        fprintf(stderr, "fl-train: --test has %zu features, --data has %zu\n", test.dim,
                train.dim);
        goto out;
      }
      fl_dataset_standardize(&test, mean, sd);
    }
  }
  if (fl_check_data(m, &tr, err, sizeof err) < 0) {
    fprintf(stderr, "fl-train: --data does not fit --model: %s\n", err);
    goto out;
  }
  if (have_test && fl_check_data(m, &te, err, sizeof err) < 0) {
    fprintf(stderr, "fl-train: --test does not fit --model: %s\n", err);
    goto out;
  }

  size_t P = fl_model_num_params(m);
  params = malloc(sizeof *params * (P ? P : 1));
  t = fl_trainer_create_threads(m, cfg.batch_size, (int)threads);
  if (!params || !t) goto nomem;
  if (freeze) {
    if (!(frozen = malloc(sizeof *frozen * (P ? P : 1)))) goto nomem;
    long long nf = fl_model_freeze_mask(m, freeze, frozen, err, sizeof err);
    if (nf < 0) {
      fprintf(stderr, "fl-train: %s\n", err);
      goto out;
    }
    cfg.frozen = frozen;
    fl_info("train", "--freeze %s: %lld of %zu parameters frozen", freeze, nf, P);
  }
  if (init_path) {
    memcpy(params, init_params, sizeof *params * P);
    fl_info("train", "fine-tuning %s", init_path);
  } else {
    fl_model_init(m, params, seed);
  }

  run r = {t, params, n_val ? &val : NULL, have_test ? &te : NULL,
           strstr(fl_model_spec(m), "sigmoid_bce") != NULL, now(), cfg.epochs, {.n = 0}};
  fl_info("train", "%s lr %g momentum %g weight decay %g, batch %u, %u epochs, seed %llu, "
          "%d thread%s", opt_name, (double)cfg.lr, (double)cfg.momentum,
          (double)cfg.weight_decay, cfg.batch_size, cfg.epochs, (unsigned long long)seed,
          fl_trainer_threads(t), fl_trainer_threads(t) == 1 ? "" : "s");
  int trc = fl_train(t, params, &tr, &cfg, on_epoch, &r, NULL);
  if (trc < 0) {
    fprintf(stderr, "fl-train: training failed: %s%s\n", fl_strerror(trc),
            trc == FL_ENONFINITE ? " (try a smaller --lr)" : "");
    goto out;
  }
  if (have_test) printf("final test accuracy: %.4f\n", r.last_test.accuracy);
  if (out_path) {
    /* the standardisation the weights expect goes with them */
    fl_transform tf = {0};
    if (standardize) tf = (fl_transform){train.dim, mean, sd};
    if (init_tf.dim) tf = init_tf;
    if (fl_modelfile_save_ex(out_path, fl_model_spec(m), fl_model_id(m), params, P, &tf, err,
                             sizeof err) < 0) {
      fprintf(stderr, "fl-train: --out: %s\n", err);
      goto out;
    }
    fl_info("train", "saved %s", out_path);
  }
  rc = 0;
  goto out;
nomem:
  fprintf(stderr, "fl-train: %s\n", fl_strerror(FL_ENOMEM));
out:
  fl_trainer_free(t);
  free(params);
  free(mean);
  free(sd);
  free(tr_idx);
  free(val_idx);
  fl_dataset_free(&train);
  fl_dataset_free(&test);
  fl_model_free(m);
  free(init_params);
  free(frozen);
  free(init_spec);
  fl_transform_free(&init_tf);
  fl_options_free(train_opts, &o);
  return rc;
}
