/* fl-train: the centralized baseline.  Trains one model on one dataset with the same
 * training core the federated clients use, prints one line per epoch and the final test
 * accuracy, and optionally saves the model file. */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dataset.h"
#include "error.h"
#include "log.h"
#include "model.h"
#include "modelfile.h"
#include "train.h"

static const char usage[] =
    "usage: fl-train [options]\n"
    "Trains a model centrally (the baseline for federated runs) and reports accuracy.\n"
    "\n"
    "  --model SPEC|PRESET  model spec or preset: logreg, logreg:D:C, 2nn, cnn, mlp64, or\n"
    "                       tokens such as 'in:784 dense:200 relu dense:10 softmax'\n"
    "                       (default 2nn)\n"
    "  --data SPEC          training data for fl_dataset_load: fashion-mnist:train, a.csv,\n"
    "                       a.csv:COLUMN or IMAGES,LABELS (default fashion-mnist:train)\n"
    "  --test SPEC          test data, or 'none' (default fashion-mnist:test)\n"
    "  --epochs N           passes over the training data (default 10)\n"
    "  --batch N            mini-batch size (default 64)\n"
    "  --lr X               learning rate (default 0.05)\n"
    "  --optimizer NAME     sgd, momentum, nesterov, adam, adamw (default sgd)\n"
    "  --momentum X         SGD momentum in [0, 1) (default 0, 0.9 for momentum/nesterov)\n"
    "  --weight-decay X     L2 weight decay; decoupled for adamw (default 0)\n"
    "  --seed N             seed for initialisation, shuffling, dropout, split (default 1)\n"
    "  --val-split X        fraction in [0, 1) of the training data held out for\n"
    "                       validation (default 0)\n"
    "  --standardize        standardise features with the training part's mean and std\n"
    "                       (saved in the --out model file: fl-predict applies them)\n"
    "  --init FILE          start from this model file (fine-tuning) instead of random\n"
    "                       weights; its spec is the model's (--model, if given, must be\n"
    "                       the same) and its feature standardisation, if any, is applied\n"
    "  --freeze LAYERS      train only the other layers (transfer learning): 'head', 'all-but-\n"
    "                       head' or layer positions from 0 as in the spec without in:,\n"
    "                       such as 0,2-3 (fl-export --list names them l<I>_...)\n"
    "  --threads N          training threads, each step's batch split over them (default\n"
    "                       0: one per core); the same count gives bit-identical reruns\n"
    "  --out FILE           save the trained model file here\n"
    "  --log-level LEVEL    debug, info, warn, error, off (default info)\n"
    "  --help               this text\n"
    "\n"
    "Prints one line per epoch (train loss/accuracy as running means over the epoch,\n"
    "validation and test after it, seconds) and ends with 'final test accuracy: X'.\n";

enum { OPT_MODEL = 256, OPT_DATA, OPT_TEST, OPT_EPOCHS, OPT_BATCH, OPT_LR, OPT_OPTIMIZER,
       OPT_MOMENTUM, OPT_WD, OPT_SEED, OPT_VAL, OPT_STD, OPT_THREADS, OPT_OUT, OPT_LOG,
       OPT_INIT, OPT_FREEZE, OPT_HELP };

static const struct option options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"data", required_argument, NULL, OPT_DATA},
    {"test", required_argument, NULL, OPT_TEST},
    {"epochs", required_argument, NULL, OPT_EPOCHS},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"lr", required_argument, NULL, OPT_LR},
    {"optimizer", required_argument, NULL, OPT_OPTIMIZER},
    {"momentum", required_argument, NULL, OPT_MOMENTUM},
    {"weight-decay", required_argument, NULL, OPT_WD},
    {"seed", required_argument, NULL, OPT_SEED},
    {"val-split", required_argument, NULL, OPT_VAL},
    {"standardize", no_argument, NULL, OPT_STD},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"out", required_argument, NULL, OPT_OUT},
    {"log-level", required_argument, NULL, OPT_LOG},
    {"init", required_argument, NULL, OPT_INIT},
    {"freeze", required_argument, NULL, OPT_FREEZE},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static int bad_value(const char *flag, const char *value, const char *want) {
  fprintf(stderr, "fl-train: --%s: '%s' is not %s\n", flag, value, want);
  return -1;
}

static int parse_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi,
                     uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (!*s || *end || errno || s[0] == '-' || v < lo || v > hi) {
    char want[96];
    snprintf(want, sizeof want, "a whole number in [%llu, %llu]", (unsigned long long)lo,
             (unsigned long long)hi);
    return bad_value(flag, s, want);
  }
  *out = v;
  return 0;
}

/* A finite number in [lo, hi) (hi_open) or [lo, hi]. */
static int parse_float(const char *flag, const char *s, double lo, double hi, int hi_open,
                       float *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi || (hi_open && v == hi)) {
    char want[96];
    snprintf(want, sizeof want, "a number in [%g, %g%c", lo, hi, hi_open ? ')' : ']');
    return bad_value(flag, s, want);
  }
  *out = (float)v;
  return 0;
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
  const char *model_spec = "2nn", *data_spec = "fashion-mnist:train";
  const char *test_spec = "fashion-mnist:test", *out_path = NULL, *opt_name = "sgd";
  const char *init_path = NULL, *freeze = NULL;
  int model_given = 0;
  fl_train_config cfg = fl_train_config_default();
  float lr = 0.05f, momentum = -1.0f, wd = 0.0f, val_split = 0.0f;
  uint64_t epochs = 10, batch = 64, seed = 1, threads = 0;
  int standardize = 0, c, rc = 1;

  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
    const char *name = c >= OPT_MODEL && c <= OPT_HELP ? options[c - OPT_MODEL].name : "";
    int bad = 0;
    switch (c) {
    case OPT_MODEL: model_spec = optarg, model_given = 1; break;
    case OPT_INIT: init_path = optarg; break;
    case OPT_FREEZE: freeze = optarg; break;
    case OPT_DATA: data_spec = optarg; break;
    case OPT_TEST: test_spec = optarg; break;
    case OPT_EPOCHS: bad = parse_u64(name, optarg, 1, 100000, &epochs); break;
    case OPT_BATCH: bad = parse_u64(name, optarg, 1, 65536, &batch); break;
    case OPT_LR: bad = parse_float(name, optarg, 0.0, 1e6, 0, &lr); break;
    case OPT_OPTIMIZER:
      opt_name = optarg;
      if (fl_optimizer_parse(optarg, &cfg) < 0)
        bad = bad_value(name, optarg, "one of sgd, momentum, nesterov, adam, adamw");
      break;
    case OPT_MOMENTUM: bad = parse_float(name, optarg, 0.0, 1.0, 1, &momentum); break;
    case OPT_WD: bad = parse_float(name, optarg, 0.0, 1e6, 0, &wd); break;
    case OPT_SEED: bad = parse_u64(name, optarg, 0, UINT64_MAX, &seed); break;
    case OPT_VAL: bad = parse_float(name, optarg, 0.0, 1.0, 1, &val_split); break;
    case OPT_STD: standardize = 1; break;
    case OPT_THREADS: bad = parse_u64(name, optarg, 0, 256, &threads); break;
    case OPT_OUT: out_path = optarg; break;
    case OPT_LOG:
      if (fl_log_level_parse(optarg) < 0)
        bad = bad_value(name, optarg, "one of debug, info, warn, error, off");
      else
        fl_log_set_level(fl_log_level_parse(optarg));
      break;
    case OPT_HELP: fputs(usage, stdout); return 0;
    default: fputs("fl-train: see --help\n", stderr); return 2;
    }
    if (bad) return 2;
  }
  if (optind < argc) {
    fprintf(stderr, "fl-train: unexpected argument '%s' (see --help)\n", argv[optind]);
    return 2;
  }
  cfg.lr = lr;
  if (momentum >= 0.0f) cfg.momentum = momentum;
  cfg.weight_decay = wd;
  cfg.seed = seed;
  cfg.epochs = (uint32_t)epochs;
  cfg.batch_size = (uint32_t)batch;
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
      return 2;
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
  fl_info("train", "model %s (%zu parameters), %zu training samples%s", fl_model_spec(m),
          fl_model_num_params(m), train.n, have_test ? "" : ", no test set");

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
  return rc;
}
