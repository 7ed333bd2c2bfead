/* fl-predict, fl-export and fl-train --init as a user runs them, as real binaries:
 * predictions per row and the metrics of labelled data (the same loss, accuracy and AUC
 * fl-train reports for the same model and data), a model file's standardisation applied,
 * unlabelled data, bad data named, memory that does not grow with a CSV's rows, ONNX
 * files that Debian's onnx checker accepts and that a NumPy evaluator independent of fl
 * (tests/onnx_check.py) runs to fl-predict's outputs within 1e-5, .npy files per tensor,
 * and fine-tuning from a model file. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dataset.h"
#include "modelfile.h"
#include "rng.h"
#include "testutil.h"

static int run(const char *dir, const char *bin, const char *args) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "%s/%s %s >%s/out.txt 2>%s/err.txt", fl_test_bin_dir(), bin, args,
           dir, dir);
  return fl_test_system(cmd);
}

static char *slurp(const char *dir, const char *name) {
  char path[700];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  char *s = fl_test_read_file(path, NULL);
  cr_assert_not_null(s, "%s is missing", path);
  return s;
}

static int has(const char *dir, const char *name, const char *needle) {
  char *s = slurp(dir, name);
  int yes = strstr(s, needle) != NULL;
  free(s);
  return yes;
}

/* Two Gaussian blobs in 6 dimensions on scales far from 1 (so standardisation matters),
 * with or without the label column, or without a header. */
static void write_blobs(const char *path, int n, uint64_t seed, int label, int header) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fl_rng r;
  fl_rng_seed(&r, seed);
  if (header) {
    for (int j = 0; j < 6; j++) fprintf(f, "%sx%d", j ? "," : "", j);
    fputs(label ? ",label\n" : "\n", f);
  }
  for (int i = 0; i < n; i++) {
    int y = i % 2;
    for (int j = 0; j < 6; j++)
      fprintf(f, "%s%.5f", j ? "," : "", 100.0 * j + 10.0 * fl_rng_normal(&r) + (y ? 8.0 : 0.0));
    if (label) fprintf(f, ",%d", y);
    fputc('\n', f);
  }
  fclose(f);
}

static double after(const char *s, const char *key) {
  const char *p = strstr(s, key);
  cr_assert_not_null(p, "no '%s' in: %s", key, s);
  return strtod(p + strlen(key), NULL);
}

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

/* fl-train with --standardize saves the mean and deviation with the weights; fl-predict
 * applies them and reports what fl-train measured on the same test set. */
Test(predict, reports_what_fl_train_measured, .timeout = 120) {
  char *dir = fl_test_tmpdir();
  char args[4096];
  char train[600], test[600], model[600], pred[600], rep[600];
  snprintf(train, sizeof train, "%s/train.csv", dir);
  snprintf(test, sizeof test, "%s/test.csv", dir);
  snprintf(model, sizeof model, "%s/m.flm", dir);
  snprintf(pred, sizeof pred, "%s/pred.csv", dir);
  snprintf(rep, sizeof rep, "%s/report.json", dir);
  write_blobs(train, 1000, 1, 1, 1);
  write_blobs(test, 300, 2, 1, 1);
  snprintf(args, sizeof args,
           "--model 'in:6 dense:16 relu dense:1 sigmoid_bce' --data %s --test %s --epochs 3 "
           "--optimizer adam --lr 0.01 --standardize --out %s", train, test, model);
  cr_assert_eq(run(dir, "fl-train", args), 0);
  char *tr = slurp(dir, "out.txt");
  const char *last = strstr(tr, "epoch 3/3");
  cr_assert_not_null(last, "%s", tr);
  const char *te = strstr(last, "test loss ");
  cr_assert_not_null(te, "%s", tr);
  double t_loss = after(te, "test loss "), t_acc = after(te, "acc "), t_auc = after(te, "auc ");
  free(tr);
  cr_assert(t_acc > 0.6 && t_acc < 1.0, "the test should be neither trivial nor hopeless: %g",
            t_acc);

  snprintf(args, sizeof args, "--model %s --data %s --out %s --report %s", model, test, pred,
           rep);
  cr_assert_eq(run(dir, "fl-predict", args), 0);
  char *out = slurp(dir, "out.txt"), *json = slurp(dir, "report.json");
  cr_assert_lt(fabs(after(out, "loss ") - t_loss), 1e-4, "%s vs %g", out, t_loss);
  cr_assert_lt(fabs(after(out, "accuracy ") - t_acc), 1e-4, "%s vs %g", out, t_acc);
  cr_assert_lt(fabs(after(out, "auc ") - t_auc), 1e-4, "%s vs %g", out, t_auc);
  cr_assert_not_null(strstr(out, "confusion matrix (rows: true class, columns: predicted)"));
  cr_assert_eq(after(json, "\"samples\":"), 300);
  cr_assert_lt(fabs(after(json, "\"accuracy\":") - t_acc), 1e-4);
  /* the confusion matrix adds up to the accuracy */
  const char *cm = strstr(json, "\"confusion\":[[");
  cr_assert_not_null(cm, "%s", json);
  long a, b, c, d;
  cr_assert_eq(sscanf(cm, "\"confusion\":[[%ld,%ld],[%ld,%ld]]", &a, &b, &c, &d), 4);
  cr_assert_eq(a + b + c + d, 300);
  cr_assert_lt(fabs((double)(a + d) / 300.0 - t_acc), 1e-4);
  free(out);
  free(json);

  char *p = slurp(dir, "pred.csv");
  cr_assert_eq(strncmp(p, "p1,predicted,label\n", 19), 0, "%.40s", p);
  cr_assert_eq(count_lines(p), 301);
  free(p);

  /* The same file without its label column: predictions only, the same ones. */
  snprintf(test, sizeof test, "%s/nolabel.csv", dir);
  write_blobs(test, 300, 2, 0, 1);
  snprintf(args, sizeof args, "--model %s --data %s", model, test);
  cr_assert_eq(run(dir, "fl-predict", args), 0);
  char *o = slurp(dir, "out.txt"), *e = slurp(dir, "err.txt");
  cr_assert_eq(strncmp(o, "p1,predicted\n", 13), 0, "%.40s", o);
  cr_assert_eq(count_lines(o), 301);
  cr_assert_null(strstr(e, "accuracy"), "%s", e);
  p = slurp(dir, "pred.csv");
  const char *p1 = strchr(p, '\n') + 1, *o1 = strchr(o, '\n') + 1;
  size_t k = strcspn(o1, "\n");
  cr_assert(k > 3 && strncmp(p1, o1, k) == 0 && p1[k] == ',', "%.40s vs %.40s", p1, o1);
  free(p);
  free(o);
  free(e);
  free(dir);
}

Test(predict, bad_data_is_named) {
  char *dir = fl_test_tmpdir();
  char path[600], model[600], args[4096];
  snprintf(model, sizeof model, "%s/m.flm", dir);
  snprintf(path, sizeof path, "%s/train.csv", dir);
  write_blobs(path, 200, 1, 1, 1);
  snprintf(args, sizeof args, "--model 'in:6 dense:1 sigmoid_bce' --data %s --test none "
           "--epochs 1 --out %s", path, model);
  cr_assert_eq(run(dir, "fl-train", args), 0);

  /* no header row: refused by fl-predict and fl-train alike */
  snprintf(path, sizeof path, "%s/nohead.csv", dir);
  write_blobs(path, 20, 1, 1, 0);
  snprintf(args, sizeof args, "--model %s --data %s", model, path);
  cr_assert_eq(run(dir, "fl-predict", args), 1);
  cr_assert(has(dir, "err.txt", "nohead.csv:1: the first row is all numbers: the file has no "
                                "header row"));
  snprintf(args, sizeof args, "--model 'in:6 dense:1 sigmoid_bce' --data %s --test none", path);
  cr_assert_neq(run(dir, "fl-train", args), 0);
  cr_assert(has(dir, "err.txt", "no header row"));

  /* wrong width */
  snprintf(path, sizeof path, "%s/wide.csv", dir);
  FILE *f = fopen(path, "w");
  fputs("a,b,c\n1,2,3\n", f);
  fclose(f);
  snprintf(args, sizeof args, "--model %s --data %s", model, path);
  cr_assert_eq(run(dir, "fl-predict", args), 1);
  cr_assert(has(dir, "err.txt", "3 columns, but the model takes 6 features"));

  /* a label the head cannot have, and a bad field, by row and line */
  snprintf(path, sizeof path, "%s/badlabel.csv", dir);
  f = fopen(path, "w");
  fputs("a,b,c,d,e,f,y\n1,2,3,4,5,6,1\n1,2,3,4,5,6,2\n", f);
  fclose(f);
  snprintf(args, sizeof args, "--model %s --data %s", model, path);
  cr_assert_eq(run(dir, "fl-predict", args), 1);
  cr_assert(has(dir, "err.txt", "data row 2: label 2 is not a class of the model (0..1)"));
  f = fopen(path, "w");
  fputs("a,b,c,d,e,f,y\n1,2,3,4,5,6,1\n1,2,x,4,5,6,0\n", f);
  fclose(f);
  cr_assert_eq(run(dir, "fl-predict", args), 1);
  cr_assert(has(dir, "err.txt", "badlabel.csv:3: column 'c' (2): not a number"));

  cr_assert_eq(run(dir, "fl-predict", "--data x.csv"), 2);
  cr_assert(has(dir, "err.txt", "--model is required"));
  snprintf(args, sizeof args, "--model %s/missing.flm --data %s", dir, path);
  cr_assert_eq(run(dir, "fl-predict", args), 1);
  cr_assert(has(dir, "err.txt", "missing.flm"));
  free(dir);
}

/* Peak memory of one run of a binary (KiB), from wait4. */
static long peak_kib(const char *bin, char *const argv[]) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    dup2(fd, 1);
    execv(bin, argv);
    _exit(127);
  }
  int st;
  struct rusage ru;
  cr_assert_eq(wait4(pid, &st, 0, &ru), pid);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed", bin);
  return ru.ru_maxrss;
}

/* A CSV of 80 MB (1.4 million rows): fl-predict streams it, so its peak memory is far
 * below what holding the rows would take (the floats alone are 45 MB). */
Test(predict, memory_does_not_grow_with_rows, .timeout = 300) {
  if (strstr(fl_test_bin_dir(), "san-")) cr_skip_test("sanitizer builds measure their shadow");
  char *dir = fl_test_tmpdir();
  char small[600], big[600], model[600], args[4096];
  snprintf(model, sizeof model, "%s/m.flm", dir);
  snprintf(small, sizeof small, "%s/small.csv", dir);
  snprintf(big, sizeof big, "%s/big.csv", dir);
  write_blobs(small, 200, 1, 1, 1);
  snprintf(args, sizeof args, "--model 'in:6 dense:4 relu dense:3 softmax' --data %s "
           "--test none --epochs 1 --out %s", small, model);
  /* labels 0/1 fit a 3-class softmax */
  cr_assert_eq(run(dir, "fl-train", args), 0);
  FILE *f = fopen(big, "w");
  fputs("a,b,c,d,e,f,y\n", f);
  for (int i = 0; i < 1400000; i++) fprintf(f, "%d.25,1.5,-2,%d,0.125,7,%d\n", i % 97, i % 13, i % 3);
  fclose(f);
  char *bin = fl_test_bin("fl-predict");
  char *argv_big[] = {bin, "--model", model, "--data", big, NULL};
  long kib = peak_kib(bin, argv_big);
  cr_assert_lt(kib, 40 * 1024, "fl-predict peaked at %ld KiB on an 80 MB CSV", kib);
  cr_log_info("fl-predict peaked at %ld KiB on an 80 MB CSV", kib);
  free(bin);
  free(dir);
}

static void export_and_check(const char *dir, const char *spec, const char *data,
                             const char *extra) {
  char args[4096], model[600], onnx[600], npy[600], pred[600], cmd[8192];
  snprintf(model, sizeof model, "%s/m.flm", dir);
  snprintf(onnx, sizeof onnx, "%s/m.onnx", dir);
  static int serial;
  snprintf(npy, sizeof npy, "%s/npy%d", dir, serial++);
  snprintf(pred, sizeof pred, "%s/pred.csv", dir);
  snprintf(args, sizeof args, "--model '%s' --data %s --test none --epochs 2 --lr 0.02 %s "
           "--out %s", spec, data, extra, model);
  cr_assert_eq(run(dir, "fl-train", args), 0, "fl-train %s failed", spec);
  snprintf(args, sizeof args, "--model %s --data %s --out %s", model, data, pred);
  cr_assert_eq(run(dir, "fl-predict", args), 0, "fl-predict on %s failed", spec);
  snprintf(args, sizeof args, "--model %s --onnx %s --npy %s", model, onnx, npy);
  cr_assert_eq(run(dir, "fl-export", args), 0, "fl-export of %s failed", spec);
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/onnx_check.py %s %s %s %s >%s/check.txt 2>&1",
           fl_test_src_dir(), onnx, data, pred, npy, dir);
  int rc = fl_test_system(cmd);
  char *c = slurp(dir, "check.txt");
  cr_assert_eq(rc, 0, "%s: %s", spec, c);
  cr_assert_not_null(strstr(c, "onnx_check: ok"), "%s", c);
  free(c);
}

/* Every layer type and head, through ONNX: the checker accepts each file, and NumPy
 * running the graph gives fl-predict's outputs. */
Test(predict, onnx_export_runs_to_fl_predicts_outputs, .timeout = 300) {
  char *dir = fl_test_tmpdir();
  char path[600];
  snprintf(path, sizeof path, "%s/blobs.csv", dir);
  write_blobs(path, 300, 4, 1, 1);
  export_and_check(dir, "in:6 dense:16 relu dense:1 sigmoid_bce", path, "--standardize");
  export_and_check(dir, "in:6 dense:8 batchnorm tanh dropout:0.3 dense:4 sigmoid dense:3 softmax",
                   path, "--standardize");
  export_and_check(dir, "in:6 dense:8 relu dense:1 mse", path, "");

  /* images: 2x6x6 = 72 features */
  snprintf(path, sizeof path, "%s/img.csv", dir);
  FILE *f = fopen(path, "w");
  for (int j = 0; j < 72; j++) fprintf(f, "p%d,", j);
  fputs("label\n", f);
  fl_rng r;
  fl_rng_seed(&r, 5);
  for (int i = 0; i < 120; i++) {
    for (int j = 0; j < 72; j++) fprintf(f, "%.4f,", fl_rng_uniform(&r) + (i % 3) * 0.1 * (j % 5));
    fprintf(f, "%d\n", i % 3);
  }
  fclose(f);
  export_and_check(dir, "in:2x6x6 conv:4:3 batchnorm relu pool:2 conv:3:2 tanh avgpool:global "
                        "dense:3 softmax", path, "");
  export_and_check(dir, "in:2x6x6 conv:3:4:s2 relu avgpool:2:s1 dense:5 sigmoid dense:3 softmax",
                   path, "");
  export_and_check(dir, "in:2x6x6 conv:2:3:s1:p0 avgpool:2 dense:1 mse", path, "");
  free(dir);
}

/* fl-train --init starts from a model file: its weights (with a learning rate of 0 the
 * fine-tuned file holds exactly the same ones) and its standardisation, which the
 * fine-tuned file keeps; a small learning rate keeps what was learned. */
Test(predict, fl_train_fine_tunes_a_model_file, .timeout = 120) {
  char *dir = fl_test_tmpdir();
  char train[600], m1[600], m2[600], args[4096];
  snprintf(train, sizeof train, "%s/train.csv", dir);
  snprintf(m1, sizeof m1, "%s/m1.flm", dir);
  snprintf(m2, sizeof m2, "%s/m2.flm", dir);
  write_blobs(train, 1000, 1, 1, 1);
  snprintf(args, sizeof args, "--model 'in:6 dense:8 relu dense:1 sigmoid_bce' --data %s "
           "--test none --epochs 5 --optimizer adam --lr 0.01 --standardize --out %s", train, m1);
  cr_assert_eq(run(dir, "fl-train", args), 0);
  snprintf(args, sizeof args, "--init %s --data %s --test none --epochs 1 --optimizer adam "
           "--lr 0 --out %s", m1, train, m2);
  cr_assert_eq(run(dir, "fl-train", args), 0);
  char err[512], *spec[2];
  uint64_t id[2];
  float *w[2];
  size_t n[2];
  fl_transform tf[2];
  const char *files[2] = {m1, m2};
  for (int k = 0; k < 2; k++)
    cr_assert_eq(fl_modelfile_load_ex(files[k], &spec[k], &id[k], &w[k], &n[k], &tf[k], err,
                                      sizeof err), 0, "%s", err);
  cr_assert_str_eq(spec[1], "in:6 dense:8 relu dense:1 sigmoid_bce");
  cr_assert_eq(n[0], n[1]);
  cr_assert_eq(memcmp(w[0], w[1], n[0] * sizeof(float)), 0, "--init did not start from m1");
  cr_assert_eq(tf[1].dim, 6);
  cr_assert_eq(memcmp(tf[0].mean, tf[1].mean, 6 * sizeof(float)), 0);
  cr_assert_eq(memcmp(tf[0].std, tf[1].std, 6 * sizeof(float)), 0);
  for (int k = 0; k < 2; k++) {
    fl_transform_free(&tf[k]);
    free(spec[k]);
    free(w[k]);
  }
  snprintf(args, sizeof args, "--init %s --data %s --test %s --epochs 1 --optimizer adam "
           "--lr 0.0001 --out %s", m1, train, train, m2);
  cr_assert_eq(run(dir, "fl-train", args), 0);
  char *o = slurp(dir, "out.txt");
  cr_assert_gt(after(o, "final test accuracy: "), 0.75, "%s", o);
  free(o);

  snprintf(args, sizeof args, "--init %s --model 'in:6 dense:9 relu dense:1 sigmoid_bce' "
           "--data %s --test none", m1, train);
  cr_assert_neq(run(dir, "fl-train", args), 0);
  cr_assert(has(dir, "err.txt", "holds the model 'in:6 dense:8 relu dense:1 sigmoid_bce'"));
  snprintf(args, sizeof args, "--init %s --standardize --data %s --test none", m1, train);
  cr_assert_neq(run(dir, "fl-train", args), 0);
  cr_assert(has(dir, "err.txt", "drop --standardize"));
  free(dir);
}

/* After a federation on a binary task: the server's metrics carry the test AUC and the
 * clients' federated-evaluation AUC (weighted by their examples), fl-predict on the
 * model file the server wrote reports the test AUC the server logged (the server
 * evaluating on two threads, fl-predict on one), and --keep-best test_auc kept the
 * model of the round with the highest one. */
Test(predict, auc_reaches_the_server_and_fl_predict_uses_its_model, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char train[700], test[700], args[4096];
  fl_test_fed_path(&f, "train.csv", train, sizeof train);
  fl_test_fed_path(&f, "test.csv", test, sizeof test);
  write_blobs(train, 900, 1, 1, 1);
  write_blobs(test, 300, 2, 1, 1);
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", "in:6 dense:8 relu dense:1 sigmoid_bce",
                               "--rounds", "2", "--clients-per-round", "3", "--min-clients", "3",
                               "--fed-eval-every", "1", "--test-data", test, "--lr", "0.0005",
                               "--keep-best", "test_auc", "--eval-threads", "2", NULL);
  pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "3", "--data", train,
                                "--partition", "iid", "--seed", "1", NULL);
  char clog[700];
  fl_test_fed_path(&f, "clients.log", clog, sizeof clog);
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", f.log);
  cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (see %s)", clog);
  char *first = fl_test_metrics_line(f.metrics, 1);
  cr_assert_not_null(first);
  double auc1 = fl_test_json_num(first, "test_auc");
  free(first);
  char *line = fl_test_metrics_line(f.metrics, 2);
  cr_assert_not_null(line, "no round 2 in %s", f.metrics);
  double test_auc = fl_test_json_num(line, "test_auc"), fed_auc = fl_test_json_num(line, "fed_eval_auc");
  cr_assert(test_auc > 0.5 && test_auc <= 1.0, "%s", line);
  cr_assert(fed_auc > 0.5 && fed_auc <= 1.0, "%s", line);
  cr_assert_eq(fl_test_json_num(line, "fed_eval_clients"), 3, "%s", line);
  free(line);
  cr_assert_gt(fl_test_count(f.log, "federated eval loss"), 0);
  cr_assert_gt(fl_test_count(f.log, " auc 0."), 0, "the round line names no AUC (%s)", f.log);
  cr_assert_eq(fl_test_count(f.log, "300 samples, evaluated on 2 threads"), 1, "%s", f.log);

  snprintf(args, sizeof args, "--model %s --data %s --out %s/pred.csv --threads 1", f.model,
           test, f.dir);
  cr_assert_eq(run(f.dir, "fl-predict", args), 0);
  char *o = slurp(f.dir, "out.txt");
  cr_assert_lt(fabs(after(o, "auc ") - test_auc), 1e-4, "%s vs %g", o, test_auc);
  free(o);
  snprintf(args, sizeof args, "--model %s.best --data %s --out %s/pred.csv", f.model, test, f.dir);
  cr_assert_eq(run(f.dir, "fl-predict", args), 0);
  o = slurp(f.dir, "out.txt");
  double best = fmax(auc1, test_auc);
  cr_assert_lt(fabs(after(o, "auc ") - best), 1e-4, "%s vs %g", o, best);
  free(o);
  cr_assert_gt(fl_test_count(f.log, "best test_auc so far"), 0);
  cr_assert_eq(run(f.dir, "fl-server", "--keep-best accuracy"), 2);
  cr_assert(has(f.dir, "err.txt", "--keep-best: 'accuracy' is not one of"));
  fl_test_fed_free(&f);
}

/* --standardize: the clients send per-feature counts, sums and sums of squares (never a
 * sample), the server combines them into the means and deviations of all their data,
 * the clients train on standardised features, and the model file carries the transform,
 * so fl-predict on raw features reproduces the server's test metrics. */
Test(predict, federated_standardisation, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char train[700], test[700], args[4096];
  fl_test_fed_path(&f, "train.csv", train, sizeof train);
  fl_test_fed_path(&f, "test.csv", test, sizeof test);
  write_blobs(train, 900, 1, 1, 1);
  write_blobs(test, 300, 2, 1, 1);
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", "in:6 dense:8 relu dense:1 sigmoid_bce",
                               "--rounds", "3", "--clients-per-round", "3", "--min-clients", "3",
                               "--fed-eval-every", "1", "--test-data", test, "--standardize",
                               "--optimizer", "adam", "--lr", "0.01", "--epochs", "2", NULL);
  pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "3", "--data", train,
                                "--partition", "dirichlet:0.5", "--seed", "1",
                                "--share-feature-stats", NULL);
  char clog[700];
  fl_test_fed_path(&f, "clients.log", clog, sizeof clog);
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", f.log);
  cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (see %s)", clog);
  cr_assert_eq(fl_test_count(f.log, "features standardised: means and deviations of 6 features "
                                    "from 3 clients (900 samples)"), 1, "see %s", f.log);
  cr_assert_gt(fl_test_count(clog, "features standardised with the federation's"), 0);
  cr_assert(fl_test_sanitizer_clean(f.log) && fl_test_sanitizer_clean(clog));
  char *line = fl_test_metrics_line(f.metrics, 3);
  cr_assert_not_null(line);
  double test_auc = fl_test_json_num(line, "test_auc"), acc = fl_test_json_num(line, "test_accuracy");
  cr_assert_gt(test_auc, 0.85, "standardised features should separate the blobs: %s", line);
  free(line);

  /* the transform is the whole training set's, though no client sent a sample */
  char err[512], *spec;
  uint64_t id;
  float *w;
  size_t n;
  fl_transform tf;
  cr_assert_eq(fl_modelfile_load_ex(f.model, &spec, &id, &w, &n, &tf, err, sizeof err), 0, "%s", err);
  cr_assert_eq(tf.dim, 6);
  fl_dataset d;
  cr_assert_eq(fl_dataset_load_csv(&d, train, NULL, err, sizeof err), 0, "%s", err);
  float mean[6], sd[6];
  fl_subset all = {&d, NULL, d.n};
  fl_dataset_stats(&all, mean, sd);
  for (int j = 0; j < 6; j++) {
    cr_assert_lt(fabsf(tf.mean[j] - mean[j]), 1e-3f * (1.0f + fabsf(mean[j])), "mean %d", j);
    cr_assert_lt(fabsf(tf.std[j] - sd[j]), 1e-3f * sd[j], "deviation %d", j);
  }
  fl_dataset_free(&d);
  fl_transform_free(&tf);
  free(spec);
  free(w);

  snprintf(args, sizeof args, "--model %s --data %s --out %s/pred.csv", f.model, test, f.dir);
  cr_assert_eq(run(f.dir, "fl-predict", args), 0);
  char *o = slurp(f.dir, "out.txt");
  cr_assert_lt(fabs(after(o, "auc ") - test_auc), 1e-4, "%s vs %g", o, test_auc);
  cr_assert_lt(fabs(after(o, "accuracy ") - acc), 1e-4, "%s vs %g", o, acc);
  free(o);
  fl_test_fed_free(&f);
}

/* The log names of part `part` of a run in two parts (server0.log, clients0.log, ...):
 * names relative to f's directory and full paths. */
static void part_logs(const fl_test_fed *f, int part, char *sname, char *cname, size_t nlen,
                      char *slog, char *clog, size_t len) {
  snprintf(sname, nlen, "server%d.log", part);
  snprintf(cname, nlen, "clients%d.log", part);
  fl_test_fed_path(f, sname, slog, len);
  fl_test_fed_path(f, cname, clog, len);
}

/* Waits for a part's server and clients: both exit 0 with no sanitizer report. */
static void part_done(pid_t s, pid_t c, const char *slog, const char *clog) {
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", slog);
  cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (see %s)", clog);
  cr_assert(fl_test_sanitizer_clean(slog) && fl_test_sanitizer_clean(clog));
}

/* A restart with --resume goes on with the standardisation of the checkpoint: the clients
 * of the second part do not share statistics (a server that had to compute the
 * transform again would wait for them for ever), and the final model file carries the
 * first part's transform, bit for bit. */
Test(predict, standardisation_survives_a_restart, .timeout = 600) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char train[700], test[700], slog[700], clog[700], ckpt[700], err[512];
  fl_test_fed_path(&f, "train.csv", train, sizeof train);
  fl_test_fed_path(&f, "test.csv", test, sizeof test);
  fl_test_fed_path(&f, "run.ckpt", ckpt, sizeof ckpt);
  write_blobs(train, 600, 1, 1, 1);
  write_blobs(test, 300, 2, 1, 1);
  fl_transform first = {0};
  for (int part = 0; part < 2; part++) {
    char slog_name[32], clog_name[32];
    part_logs(&f, part, slog_name, clog_name, sizeof slog_name, slog, clog, sizeof slog);
    pid_t s = fl_test_fed_server(&f, slog_name, "--model", "in:6 dense:8 relu dense:1 sigmoid_bce",
                                 "--rounds", part ? "3" : "2", "--clients-per-round", "2",
                                 "--min-clients", "2", "--test-data", test, "--standardize",
                                 "--checkpoint", ckpt, "--optimizer", "adam", "--lr", "0.01",
                                 part ? "--resume" : NULL, NULL);
    pid_t c = fl_test_fed_clients(&f, clog_name, "--clients", "2", "--data", train,
                                  "--partition", "iid", "--seed", "1",
                                  part ? NULL : "--share-feature-stats", NULL);
    part_done(s, c, slog, clog);
    char *spec;
    uint64_t id;
    float *w;
    size_t n;
    fl_transform tf;
    cr_assert_eq(fl_modelfile_load_ex(f.model, &spec, &id, &w, &n, &tf, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tf.dim, 6, "part %d", part + 1);
    free(spec), free(w);
    if (!part) {
      first = tf;
      continue;
    }
    cr_assert_eq(fl_test_count(slog, "--resume: the features' standardisation from the checkpoint"),
                 1, "see %s", slog);
    cr_assert_eq(fl_test_count(slog, "features standardised: means and deviations"), 0, "%s", slog);
    cr_assert_eq(memcmp(tf.mean, first.mean, 6 * sizeof *tf.mean), 0);
    cr_assert_eq(memcmp(tf.std, first.std, 6 * sizeof *tf.std), 0);
    fl_transform_free(&tf);
  }
  char *line = fl_test_metrics_line(f.metrics, 3);
  cr_assert_not_null(line, "no metrics for round 3 (%s)", f.metrics);
  cr_assert_gt(fl_test_json_num(line, "test_auc"), 0.85, "test data standardised after the restart: %s", line);
  free(line);
  fl_transform_free(&first);
  fl_test_fed_free(&f);
}

/* --keep-best across a restart: the best round of the first part, from the checkpoint,
 * still has to be beaten.  The second part trains with a step size 100 times larger, so
 * its round may well be worse; whichever it is, OUT.best changes only if it beat the
 * best of rounds 1 to 3. */
Test(predict, keep_best_survives_a_restart, .timeout = 600) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char train[700], test[700], slog[700], clog[700], ckpt[700], best[700], needle[128];
  fl_test_fed_path(&f, "train.csv", train, sizeof train);
  fl_test_fed_path(&f, "test.csv", test, sizeof test);
  fl_test_fed_path(&f, "run.ckpt", ckpt, sizeof ckpt);
  snprintf(best, sizeof best, "%s.best", f.model);
  write_blobs(train, 600, 1, 1, 1);
  write_blobs(test, 300, 2, 1, 1);
  char *kept = NULL;
  size_t kept_len = 0;
  for (int part = 0; part < 2; part++) {
    char slog_name[32], clog_name[32];
    part_logs(&f, part, slog_name, clog_name, sizeof slog_name, slog, clog, sizeof slog);
    pid_t s = fl_test_fed_server(&f, slog_name, "--model", "in:6 dense:8 relu dense:1 sigmoid_bce",
                                 "--rounds", part ? "4" : "3", "--clients-per-round", "2",
                                 "--min-clients", "2", "--test-data", test, "--checkpoint", ckpt,
                                 "--keep-best", "test_loss", "--lr", part ? "0.05" : "0.0005",
                                 "--max-update-norm", "0", part ? "--resume" : NULL, NULL);
    pid_t c = fl_test_fed_clients(&f, clog_name, "--clients", "2", "--data", train,
                                  "--partition", "iid", "--seed", "1", NULL);
    part_done(s, c, slog, clog);
    if (!part) cr_assert_not_null(kept = fl_test_read_file(best, &kept_len), "no %s", best);
  }
  double loss[5], low = INFINITY;
  int at = 0;
  for (int r = 1; r <= 4; r++) {
    char *line = fl_test_metrics_line(f.metrics, r);
    cr_assert_not_null(line, "no round %d in %s", r, f.metrics);
    loss[r] = fl_test_json_num(line, "test_loss");
    free(line);
    if (r <= 3 && loss[r] < low) low = loss[r], at = r;
  }
  snprintf(needle, sizeof needle, "--resume: the best test_loss so far is round %d's", at);
  cr_assert_eq(fl_test_count(slog, needle), 1, "'%s' not in %s", needle, slog);
  size_t len;
  char *now = fl_test_read_file(best, &len);
  cr_assert_not_null(now);
  int replaced = fl_test_count(slog, "round 4: best test_loss so far");
  if (loss[4] < low) {
    cr_assert_eq(replaced, 1, "round 4's loss %g beat %g (%s)", loss[4], low, slog);
  } else {
    cr_assert_eq(replaced, 0, "round 4's loss %g did not beat %g (%s)", loss[4], low, slog);
    cr_assert(len == kept_len && memcmp(now, kept, len) == 0, "%s changed", best);
  }
  free(now);
  free(kept);
  fl_test_fed_free(&f);
}

/* examples/tabular/run.sh (make tabular) end to end on the breast-cancer table: the
 * federation of 5 non-IID clients with federated standardisation, and fl-train on all
 * the data, both scored by fl-predict. */
Test(predict, tabular_example, .timeout = 300) {
  const char *table = getenv("FL_TABULAR_CSV");
  if (!table || access(table, R_OK) != 0) cr_skip_test("no breast-cancer table (make test extracts it)");
  char *dir = fl_test_tmpdir();
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "FL_BIN_DIR=%s FL_TABULAR_DIR=%s FL_TABULAR_CSV=%s %s/examples/tabular/run.sh "
           ">%s/out.txt 2>&1", fl_test_bin_dir(), dir, table, fl_test_src_dir(), dir);
  int rc = fl_test_system(cmd);
  char *o = slurp(dir, "out.txt");
  cr_assert_eq(rc, 0, "%s", o);
  cr_assert_not_null(strstr(o, "from 5 clients"), "%s", o);
  const char *fed = strstr(o, "\nfederated "), *cen = strstr(o, "\ncentral ");
  cr_assert(fed && cen, "%s", o);
  double fa, facc, ca, cacc;
  cr_assert_eq(sscanf(fed, "\nfederated %lf %lf", &fa, &facc), 2, "%s", o);
  cr_assert_eq(sscanf(cen, "\ncentral %lf %lf", &ca, &cacc), 2, "%s", o);
  cr_assert(fa > 0.95 && facc > 0.9 && ca > 0.95 && cacc > 0.9, "%s", o);
  free(o);
  free(dir);
}

/* The update bytes the server took in round r, and their size as float32 values. */
static void update_bytes(const char *metrics, int r, double *bytes, double *raw) {
  char *line = fl_test_metrics_line(metrics, r);
  cr_assert_not_null(line, "no round %d in %s", r, metrics);
  *bytes = fl_test_json_num(line, "update_bytes");
  *raw = fl_test_json_num(line, "update_bytes_raw");
  free(line);
}

#define FREEZE_MODEL "in:6 dense:8 relu dense:1 sigmoid_bce" /* 56 + 9 parameters */

/* The freeze tests' data (train) and initial model (init), trained by fl-train with
 * flags. */
static void freeze_start(fl_test_fed *f, char *train, char *init, size_t len, const char *flags) {
  char args[4096];
  fl_test_fed_path(f, "train.csv", train, len);
  fl_test_fed_path(f, "init.flm", init, len);
  write_blobs(train, 600, 1, 1, 1);
  snprintf(args, sizeof args, "--model '" FREEZE_MODEL "' --data %s --test none --standardize "
           "--out %s %s", train, init, flags);
  cr_assert_eq(run(f->dir, "fl-train", args), 0);
}

/* The model files init and final: the first 56 parameters (the first layer) moved or
 * not, as first_moves says, and the last 9 (the head) the other way; with tf_dim, the
 * final model's standardisation is that wide. */
static void freeze_result(const char *init, const char *final, int first_moves, int tf_dim) {
  char err[512], *spec[2];
  uint64_t id[2];
  float *w[2];
  size_t n[2];
  fl_transform tf[2];
  const char *files[2] = {init, final};
  for (int k = 0; k < 2; k++)
    cr_assert_eq(fl_modelfile_load_ex(files[k], &spec[k], &id[k], &w[k], &n[k], &tf[k], err,
                                      sizeof err), 0, "%s", err);
  int first = memcmp(w[0], w[1], 56 * sizeof(float)) != 0;
  int head = memcmp(w[0] + 56, w[1] + 56, 9 * sizeof(float)) != 0;
  cr_assert(first == first_moves && head == !first_moves, "the first layer %s, the head %s",
            first ? "moved" : "did not move", head ? "moved" : "did not move");
  if (tf_dim) cr_assert_eq(tf[1].dim, tf_dim, "the server kept --init-model's standardisation");
  for (int k = 0; k < 2; k++) {
    fl_transform_free(&tf[k]);
    free(spec[k]);
    free(w[k]);
  }
}

/* fl-server --freeze all-but-head from a model fl-train made: the clients train the head
 * only, the final model's other layers are the initial ones bit for bit, and a client
 * whose update changes a frozen parameter (here a simulated attacker adding noise) is
 * refused by name while the others' updates count.  The honest clients leave the frozen
 * parameters out: their updates carry the head's 9 values, not all 65. */
Test(predict, federated_freeze, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char train[700], init[700];
  freeze_start(&f, train, init, sizeof train, "--epochs 2 --optimizer adam --lr 0.01");
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", FREEZE_MODEL, "--init-model", init,
                               "--freeze", "all-but-head", "--rounds", "2",
                               "--clients-per-round", "3", "--min-clients", "3", "--min-updates", "1",
                               "--optimizer", "adam", "--lr", "0.01", NULL);
  pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "3", "--data", train,
                                "--partition", "iid", "--seed", "1", "--attack", "noise:0.1",
                                "--attack-clients", "2", NULL);
  char clog[700];
  fl_test_fed_path(&f, "clients.log", clog, sizeof clog);
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", f.log);
  cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (see %s)", clog);
  cr_assert_eq(fl_test_count(f.log, "--freeze all-but-head: 56 of 65 parameters frozen"), 1);
  cr_assert_eq(fl_test_count(f.log, "changes frozen parameter"), 2, "see %s", f.log);
  cr_assert_eq(fl_test_count(f.metrics, "\"updates_accepted\":2"), 2, "see %s", f.metrics);
  cr_assert_eq(fl_test_count(clog, "the update changes frozen parameters"), 2, "see %s", clog);
  for (int r = 1; r <= 2; r++) {
    double bytes, raw;
    update_bytes(f.metrics, r, &bytes, &raw);
    cr_assert(bytes == 2 * 9 * 4 && raw == 2 * 65 * 4, "round %d: %g bytes for %g (%s)", r, bytes,
              raw, f.metrics);
  }
  freeze_result(init, f.model, 0, 6);
  fl_test_fed_free(&f);
}

/* The models fl-server --freeze sends: whole the first time a client is sent one, then
 * without the frozen parameters, which the client keeps (one copy for the process's three
 * virtual clients) and fills in, for training and for federated evaluation alike: the
 * head's 9 values a client instead of all 65, as float32 and as the int8 downlink (whose
 * frames split at the frozen run, the head's chunk the same in both streams).  The same
 * federation with every model sent whole (fl-client --frozen-cache=false) ends with the
 * same model, bit for bit, after the same evaluations: what the clients filled in is what
 * the server sends. */
Test(predict, federated_freeze_sends_the_frozen_values_once, .timeout = 600) {
  char train[700], init[700];
  fl_test_fed first;
  fl_test_fed_init(&first);
  freeze_start(&first, train, init, sizeof train, "--epochs 1 --lr 0.01");
  const char *downlinks[] = {"float32", "int8"};
  for (int dl = 0; dl < 2; dl++) {
    const double vb = dl ? 1 : 4; /* bytes a value */
    fl_test_fed f[2];
    float *w[2];
    size_t n[2];
    double loss[2][3];
    for (int k = 0; k < 2; k++) { /* 0: the clients keep the frozen values; 1: they do not */
      fl_test_fed_init(&f[k]);
      pid_t s = fl_test_fed_server(&f[k], "server.log", "--model", FREEZE_MODEL,
                                   "--init-model", init, "--freeze", "all-but-head",
                                   "--downlink", downlinks[dl], "--rounds", "3",
                                   "--clients-per-round", "3", "--min-clients", "3",
                                   "--fed-eval-every", "1", "--lr", "0.05", NULL);
      pid_t c = fl_test_fed_clients(&f[k], "clients.log", "--clients", "3", "--data", train,
                                    "--partition", "iid", "--seed", "1",
                                    k ? "--frozen-cache=false" : "--frozen-cache", NULL);
      char clog[700];
      fl_test_fed_path(&f[k], "clients.log", clog, sizeof clog);
      cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", f[k].log);
      cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (see %s)", clog);
      for (int r = 1; r <= 3; r++) {
        char *line = fl_test_metrics_line(f[k].metrics, r);
        cr_assert_not_null(line, "no round %d in %s", r, f[k].metrics);
        double bytes = fl_test_json_num(line, "model_bytes");
        double raw = fl_test_json_num(line, "model_bytes_raw");
        loss[k][r - 1] = fl_test_json_num(line, "fed_eval_loss");
        free(line);
        /* a training and an evaluation model to each of the 3 clients a round; a chunk's
         * frame adds less than 64 bytes to its values, and a whole model is one chunk of
         * the frozen run and one of the head */
        cr_assert(raw == 6 * 65 * 4, "round %d: %g bytes raw (%s)", r, raw, f[k].metrics);
        if (k == 1 || r == 1) /* the first training models go whole */
          cr_assert(bytes > (k ? 6 : 3) * 65 * vb, "%s, round %d: %g model bytes (%s)",
                    downlinks[dl], r, bytes, f[k].metrics);
        if (k == 0)
          cr_assert(bytes < (r == 1 ? 3 * (65 * vb + 128) + 3 * (9 * vb + 64)
                                    : 6 * (9 * vb + 64)),
                    "%s, round %d: %g model bytes (%s)", downlinks[dl], r, bytes, f[k].metrics);
      }
      char err[512], *spec;
      uint64_t id;
      fl_transform tf;
      cr_assert_eq(fl_modelfile_load_ex(f[k].model, &spec, &id, &w[k], &n[k], &tf, err,
                                        sizeof err), 0, "%s", err);
      fl_transform_free(&tf);
      free(spec);
    }
    cr_assert(n[0] == 65 && n[1] == 65 && memcmp(w[0], w[1], 65 * sizeof(float)) == 0,
              "%s: the final models differ (%s, %s)", downlinks[dl], f[0].model, f[1].model);
    for (int r = 0; r < 3; r++)
      cr_assert(loss[0][r] == loss[1][r], "%s, round %d: federated evaluation loss %.9g, whole "
                "models %.9g", downlinks[dl], r + 1, loss[0][r], loss[1][r]);
    if (!dl) freeze_result(init, f[0].model, 0, 6);
    for (int k = 0; k < 2; k++) {
      free(w[k]);
      fl_test_fed_free(&f[k]);
    }
  }
  fl_test_fed_free(&first);
}

/* A server restarted from its checkpoint leaves out the frozen values its clients kept
 * from the run before: the fl-client process stops itself at round 3's task
 * (--sim-stop-round) while the first server is killed and a second resumes; it then
 * connects again with a Hello naming the values it keeps, and every model the second
 * server sends leaves them out (its round 3 stops the clients again, one by one: the test
 * continues them each time).  The run ends with all its rounds. */
Test(predict, frozen_values_kept_across_a_server_restart, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char train[700], init[700], ck[700], log2[700], clog[700];
  freeze_start(&f, train, init, sizeof train, "--epochs 1 --lr 0.01");
  fl_test_fed_path(&f, "ck.bin", ck, sizeof ck);
  fl_test_fed_path(&f, "server2.log", log2, sizeof log2);
  fl_test_fed_path(&f, "clients.log", clog, sizeof clog);
#define RESTART_SERVER(log, ...)                                                             \
  fl_test_fed_server(&f, log, "--model", FREEZE_MODEL, "--init-model", init, "--freeze",      \
                     "all-but-head", "--rounds", "4", "--clients-per-round", "3",             \
                     "--min-clients", "3", "--lr", "0.05", "--checkpoint", ck, __VA_ARGS__)
  pid_t s = RESTART_SERVER("server.log", NULL);
  pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "3", "--data", train,
                                "--partition", "iid", "--seed", "1", "--sim-stop-round", "3",
                                "--retry-base", "0.1", "--retry-max", "1", NULL);
  cr_assert(fl_test_wait_stopped(c, 120), "the clients never stopped at round 3 (%s)", f.log);
  kill(s, SIGKILL);
  waitpid(s, NULL, 0);
  s = RESTART_SERVER("server2.log", "--resume", NULL);
#undef RESTART_SERVER
  /* the second server's round 3 stops each client again on its way: go on each time */
  int st = 0;
  kill(c, SIGCONT);
  while (waitpid(s, &st, WNOHANG) == 0)
    if (fl_test_wait_stopped(c, 1)) kill(c, SIGCONT);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the resumed fl-server failed (see %s)", log2);
  cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (see %s)", clog);
  cr_assert_eq(fl_test_count(log2, "resuming from"), 1, "%s", log2);
  for (int r = 1; r <= 4; r++) {
    char *line = fl_test_metrics_line(f.metrics, r);
    cr_assert_not_null(line, "no round %d in %s", r, f.metrics);
    double bytes = fl_test_json_num(line, "model_bytes");
    free(line);
    /* round 1: three whole models; after it (round 3 from the second server) the head's
     * 9 values in a frame of less than 64 bytes more */
    cr_assert(r == 1 ? bytes > 3 * 65 * 4 : bytes < 3 * (9 * 4 + 64),
              "round %d: %g model bytes (%s)", r, bytes, f.metrics);
  }
  fl_test_fed_free(&f);
}

/* fl-server --freeze head with int8 updates: the frozen run ends the model, so each
 * client's update is the first layer's 56 values, one byte each, and the stream ends
 * before the model does; the first layer trains and the head stays as it was. */
Test(predict, federated_freeze_head_int8, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char train[700], init[700];
  freeze_start(&f, train, init, sizeof train, "--epochs 1 --lr 0.01");
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", FREEZE_MODEL, "--init-model", init,
                               "--freeze", "head", "--uplink", "int8", "--rounds", "2",
                               "--clients-per-round", "3", "--min-clients", "3", "--lr", "0.05",
                               NULL);
  pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "3", "--data", train,
                                "--partition", "iid", "--seed", "1", NULL);
  char clog[700];
  fl_test_fed_path(&f, "clients.log", clog, sizeof clog);
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", f.log);
  cr_assert_eq(fl_test_wait(c, 60), 0, "fl-client failed (see %s)", clog);
  cr_assert_eq(fl_test_count(f.metrics, "\"updates_accepted\":3"), 2, "see %s", f.metrics);
  for (int r = 1; r <= 2; r++) {
    double bytes, raw;
    update_bytes(f.metrics, r, &bytes, &raw);
    cr_assert(bytes == 3 * 56 && raw == 3 * 65 * 4, "round %d: %g bytes for %g (%s)", r, bytes,
              raw, f.metrics);
  }
  freeze_result(init, f.model, 1, 0);
  fl_test_fed_free(&f);
}
