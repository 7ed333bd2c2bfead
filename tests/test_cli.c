/* The command lines of fl-train, fl-server and fl-client, run as real binaries:
 * --help documents, bad flags and values are refused with a message naming them, INI
 * files are read (flags override them, bad keys are named with file and line), and
 * fl-train trains a CSV model end to end, with one thread or several. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modelfile.h"
#include "rng.h"
#include "testutil.h"

/* Runs a binary from the build directory with arguments; output to dir/out.txt. */
static int run(const char *dir, const char *bin, const char *args) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "%s/%s %s >%s/out.txt 2>&1", fl_test_bin_dir(), bin, args, dir);
  return fl_test_system(cmd);
}

static int out_has(const char *dir, const char *needle) {
  char path[600];
  snprintf(path, sizeof path, "%s/out.txt", dir);
  return fl_test_count(path, needle) > 0;
}

Test(cli, help_documents_every_binary) {
  char *dir = fl_test_tmpdir();
  cr_assert_eq(run(dir, "fl-server", "--help"), 0);
  cr_assert(out_has(dir, "--clients-per-round"));
  cr_assert(out_has(dir, "--resume"));
  cr_assert(out_has(dir, "--config FILE"));
  cr_assert_eq(run(dir, "fl-client", "--help"), 0);
  cr_assert(out_has(dir, "--partition"));
  cr_assert(out_has(dir, "--clients N"));
  cr_assert_eq(run(dir, "fl-train", "--help"), 0);
  cr_assert(out_has(dir, "--val-split"));
  free(dir);
}

Test(cli, bad_flags_and_values_are_named) {
  char *dir = fl_test_tmpdir();
  cr_assert_eq(run(dir, "fl-server", "--bogus 1"), 2);
  cr_assert(out_has(dir, "unknown option '--bogus'"));
  cr_assert_eq(run(dir, "fl-server", "--rounds ten"), 2);
  cr_assert(out_has(dir, "rounds: expected a whole number, got 'ten'"));
  cr_assert_eq(run(dir, "fl-server", "--rounds 0"), 2);
  cr_assert(out_has(dir, "out of range"));
  cr_assert_eq(run(dir, "fl-server", "--update-buffers 0"), 2);
  cr_assert(out_has(dir, "update-buffers") && out_has(dir, "out of range"));
  cr_assert_eq(run(dir, "fl-server", "--clients-per-round 2.5"), 2);
  cr_assert(out_has(dir, "clients-per-round"));
  cr_assert_eq(run(dir, "fl-server", "--log-level loud"), 2);
  cr_assert(out_has(dir, "unknown level 'loud'"));
  cr_assert_eq(run(dir, "fl-server", "--rounds"), 2);
  cr_assert(out_has(dir, "needs a value"));
  cr_assert_eq(run(dir, "fl-client", "--server 127.0.0.1:1"), 2);
  cr_assert(out_has(dir, "--data is required"));
  cr_assert_eq(run(dir, "fl-client", "--data x.csv --server nowhere"), 2);
  cr_assert(out_has(dir, "expected HOST:PORT"));
  cr_assert_eq(run(dir, "fl-client", "--data x.csv --partition iid --partition-index 5 --num-partitions 3"), 2);
  cr_assert(out_has(dir, "needs 6 partitions"));
  cr_assert_neq(run(dir, "fl-train", "--epochs -1"), 0);
  cr_assert(out_has(dir, "--epochs"));
  cr_assert_neq(run(dir, "fl-train", "--model dense:10"), 0);
  free(dir);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
}

Test(cli, config_file_read_and_overridden) {
  char *dir = fl_test_tmpdir();
  char ini[600], args[2048];
  snprintf(ini, sizeof ini, "%s/bad.ini", dir);
  write_file(ini, "[round]\nrounds = 3\n\n[round]\nclients_per_rounds = 4\n");
  snprintf(args, sizeof args, "--config %s", ini);
  cr_assert_eq(run(dir, "fl-server", args), 2);
  cr_assert(out_has(dir, "bad.ini:5: unknown key 'clients_per_rounds'"));

  write_file(ini, "[train]\nrounds = 3\n");
  cr_assert_eq(run(dir, "fl-server", args), 2);
  cr_assert(out_has(dir, "bad.ini:2: 'rounds' belongs in section [round], not [train]"));

  /* A good file whose bad TLS paths show the file was read and the flag won. */
  snprintf(ini, sizeof ini, "%s/good.ini", dir);
  write_file(ini, "[model]\nmodel = logreg\n[tls]\nca = /nonexistent/from-file.crt\n");
  snprintf(args, sizeof args, "--config %s --listen 127.0.0.1:0 --ca /nonexistent/from-flag.crt", ini);
  cr_assert_eq(run(dir, "fl-server", args), 1);
  cr_assert(out_has(dir, "from-flag.crt"), "the flag did not override the file");
  snprintf(args, sizeof args, "--config %s --listen 127.0.0.1:0", ini);
  cr_assert_eq(run(dir, "fl-server", args), 1);
  cr_assert(out_has(dir, "from-file.crt"), "the file was not read");

  snprintf(args, sizeof args, "--config %s/missing.ini", dir);
  cr_assert_eq(run(dir, "fl-client", args), 2);
  cr_assert(out_has(dir, "missing.ini: cannot open config file"));
  free(dir);
}

/* Two Gaussian blobs in 10 dimensions: logistic regression separates them. */
static void write_blobs(const char *path, int n, uint64_t seed) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fl_rng r;
  fl_rng_seed(&r, seed);
  for (int j = 0; j < 10; j++) fprintf(f, "x%d,", j);
  fprintf(f, "label\n");
  for (int i = 0; i < n; i++) {
    int y = i % 2;
    for (int j = 0; j < 10; j++) fprintf(f, "%.5f,", fl_rng_normal(&r) + (y ? 1.0 : -1.0));
    fprintf(f, "%d\n", y);
  }
  fclose(f);
}

Test(cli, fl_train_on_csv_writes_a_model, .timeout = 60) {
  char *dir = fl_test_tmpdir();
  char train[600], test[600], model[600], args[4096];
  snprintf(train, sizeof train, "%s/train.csv", dir);
  snprintf(test, sizeof test, "%s/test.csv", dir);
  snprintf(model, sizeof model, "%s/m.bin", dir);
  write_blobs(train, 1000, 1);
  write_blobs(test, 400, 2);
  snprintf(args, sizeof args,
           "--model logreg:10:2 --data %s --test %s --epochs 5 --batch-size 16 --lr 0.1 --val-split 0.2 --out %s",
           train, test, model);
  cr_assert_eq(run(dir, "fl-train", args), 0);
  cr_assert(out_has(dir, "epoch 5/5"));
  char path[700];
  snprintf(path, sizeof path, "%s/out.txt", dir);
  char *out = fl_test_read_file(path, NULL);
  const char *fin = strstr(out, "final test accuracy: ");
  cr_assert_not_null(fin, "%s", out);
  double acc = strtod(fin + 21, NULL);
  cr_assert_gt(acc, 0.9, "accuracy %g", acc);
  free(out);

  char err[512], *spec;
  uint64_t id;
  float *p;
  size_t n;
  cr_assert_eq(fl_modelfile_load(model, &spec, &id, &p, &n, err, sizeof err), 0, "%s", err);
  cr_assert_eq(n, 11);
  free(spec);
  free(p);

  /* Bad data names the file and the line. */
  snprintf(path, sizeof path, "%s/bad.csv", dir);
  write_file(path, "a,b,label\n1,2,0\n3,x,1\n");
  snprintf(args, sizeof args, "--model logreg:2:2 --data %s --test none", path);
  cr_assert_neq(run(dir, "fl-train", args), 0);
  cr_assert(out_has(dir, "bad.csv:3"));
  free(dir);
}

static float *load_params(const char *path, size_t *n) {
  char err[512], *spec;
  uint64_t id;
  float *p;
  cr_assert_eq(fl_modelfile_load(path, &spec, &id, &p, n, err, sizeof err), 0, "%s", err);
  free(spec);
  return p;
}

/* --threads 2 splits each batch over two threads: the same bits on every run, and the
 * same model as one thread up to rounding. */
Test(cli, fl_train_threads_deterministic, .timeout = 120) {
  char *dir = fl_test_tmpdir();
  char train[600], model[3][600], args[4096];
  snprintf(train, sizeof train, "%s/train.csv", dir);
  write_blobs(train, 600, 3);
  const char *threads[3] = {"2", "2", "1"};
  for (int k = 0; k < 3; k++) {
    snprintf(model[k], sizeof model[k], "%s/m%d.bin", dir, k);
    snprintf(args, sizeof args,
             "--model 'in:10 dense:16 batchnorm relu dropout:0.2 dense:1 sigmoid_bce' "
             "--data %s --test none --epochs 3 --batch-size 32 --optimizer momentum --lr 0.02 "
             "--threads %s --out %s", train, threads[k], model[k]);
    cr_assert_eq(run(dir, "fl-train", args), 0);
    cr_assert(out_has(dir, k < 2 ? ", 2 threads" : ", 1 thread"));
  }
  size_t n[3];
  float *p[3];
  for (int k = 0; k < 3; k++) p[k] = load_params(model[k], &n[k]);
  cr_assert_eq(n[0], n[1]);
  cr_assert_eq(memcmp(p[0], p[1], n[0] * sizeof(float)), 0, "two runs with 2 threads differ");
  double worst = 0;
  for (size_t i = 0; i < n[0]; i++) worst = fmax(worst, fabs((double)p[0][i] - p[2][i]));
  cr_assert_lt(worst, 1e-3, "1 and 2 threads differ by %g", worst);
  for (int k = 0; k < 3; k++) free(p[k]);
  cr_assert_eq(run(dir, "fl-train", "--threads 257"), 2);
  cr_assert(out_has(dir, "--threads"));
  free(dir);
}
