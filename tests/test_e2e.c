/* End to end: the real fl-server and fl-client binaries over real TLS on loopback.
 *
 * - ten virtual clients on a Fashion-MNIST subset learn, and the metrics file has one
 *   valid line per round;
 * - the global model after a round equals the sample-weighted average of the clients'
 *   locally trained models, computed independently here with the training core;
 * - a server and three separate client processes complete a run. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "model.h"
#include "modelfile.h"
#include "rng.h"
#include "testutil.h"
#include "train.h"

Test(e2e, ten_clients_learn_fashion_mnist, .timeout = 600) {
  fl_test_fed r;
  fl_test_fed_init(&r);
  char clog[600];
  fl_test_fed_path(&r, "clients.log", clog, sizeof clog);
  pid_t s = fl_test_fed_server_ready(&r, "server.log", "--model", "2nn", "--rounds", "5",
                                     "--clients-per-round", "10", "--min-clients", "10",
                                     "--epochs", "1", "--batch-size", "10", "--lr", "0.05",
                                     "--test-data", "fashion-mnist:test", NULL);
  cr_assert_gt(s, 0, "no server (%s)", r.log);
  pid_t c = fl_test_fed_clients(&r, "clients.log", "--clients", "10", "--data",
                                "fashion-mnist:train", "--max-samples", "6000", "--partition",
                                "iid", "--workers", "2", NULL);
  int rc = fl_test_wait(s, 540);
  cr_assert_eq(rc, 0, "fl-server exited with %d (see %s)", rc, r.log);
  rc = fl_test_wait(c, 30);
  cr_assert_eq(rc, 0, "fl-client exited with %d (see %s)", rc, clog);

  char *m = fl_test_read_file(r.metrics, NULL);
  cr_assert_not_null(m, "no metrics file");
  double first = NAN, last = NAN;
  int lines = 0;
  for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
    lines++;
    cr_assert_eq(line[0], '{');
    cr_assert_eq(line[strlen(line) - 1], '}');
    cr_assert_eq(fl_test_json_num(line, "round"), lines, "%s", line);
    cr_assert_eq(fl_test_json_num(line, "clients_selected"), 10, "%s", line);
    cr_assert_eq(fl_test_json_num(line, "updates_accepted"), 10, "%s", line);
    cr_assert_eq(fl_test_json_num(line, "examples"), 6000, "%s", line);
    cr_assert(fl_test_json_num(line, "bytes_received") > 10 * 199210 * 4, "%s", line);
    cr_assert(fl_test_json_num(line, "bytes_sent") > 10 * 199210 * 4, "%s", line);
    cr_assert(fl_test_json_num(line, "seconds") > 0, "%s", line);
    double acc = fl_test_json_num(line, "test_accuracy");
    cr_assert(acc >= 0 && acc <= 1, "%s", line);
    if (lines == 1) first = acc;
    last = acc;
  }
  free(m);
  cr_assert_eq(lines, 5);
  cr_assert_gt(last, 0.70, "final test accuracy %.3f", last);
  cr_assert_gt(last, first, "accuracy did not rise: %.3f -> %.3f", first, last);
  cr_assert_eq(fl_test_count(r.log, "round 5/5 done"), 1);
  cr_assert(fl_test_sanitizer_clean(r.log), "sanitizer report in %s", r.log);
  cr_assert(fl_test_sanitizer_clean(clog), "sanitizer report in %s", clog);
  fl_test_fed_free(&r);
}

/* One round, three clients on IID partitions of 300 samples, deterministic training:
 * the server's model must equal the weighted average of the three locally trained
 * models, which this test computes itself. */
Test(e2e, global_model_is_weighted_average, .timeout = 300) {
  fl_test_fed r;
  fl_test_fed_init(&r);
  char clog[600];
  fl_test_fed_path(&r, "clients.log", clog, sizeof clog);
  pid_t s = fl_test_fed_server_ready(&r, "server.log", "--model", "2nn", "--rounds", "1",
                                     "--clients-per-round", "3", "--min-clients", "3",
                                     "--epochs", "2", "--batch-size", "16", "--lr", "0.05",
                                     "--seed", "11", NULL);
  cr_assert_gt(s, 0, "no server (%s)", r.log);
  pid_t c = fl_test_fed_clients(&r, "clients.log", "--clients", "3", "--data",
                                "fashion-mnist:train", "--max-samples", "301", "--partition",
                                "iid", "--seed", "5", NULL);
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", r.log);
  cr_assert_eq(fl_test_wait(c, 30), 0, "fl-client failed (see %s)", clog);

  char err[512], *spec;
  uint64_t id;
  float *got;
  size_t n;
  cr_assert_eq(fl_modelfile_load(r.model, &spec, &id, &got, &n, err, sizeof err), 0, "%s", err);

  /* The same computation, independently: initial model from the server's seed, each
   * client's partition and seed as the protocol defines them. */
  fl_model *m;
  cr_assert_eq(fl_model_create("2nn", &m, err, sizeof err), 0);
  cr_assert_eq(n, fl_model_num_params(m));
  cr_assert_eq(id, fl_model_id(m));
  fl_dataset d;
  cr_assert_eq(fl_dataset_load(&d, "fashion-mnist:train", err, sizeof err), 0, "%s", err);
  d.n = 301;
  fl_subset *parts;
  cr_assert_eq(fl_partition(&d, "iid", 3, 5, &parts, err, sizeof err), 0, "%s", err);
  float *global = malloc(n * sizeof *global), *local = malloc(n * sizeof *local);
  double *avg = calloc(n, sizeof *avg);
  fl_model_init(m, global, 11);
  uint64_t round_seed = 11ULL * 1000003ULL + 1; /* the server's seed for round 1 */
  double total = 0;
  fl_trainer *t = fl_trainer_create(m, 16);
  for (int k = 0; k < 3; k++) {
    fl_train_config cfg = fl_train_config_default();
    cfg.epochs = 2;
    cfg.batch_size = 16;
    cfg.lr = 0.05f;
    cfg.seed = fl_seed_mix(round_seed, (uint64_t)k);
    memcpy(local, global, n * sizeof *local);
    fl_eval ev;
    cr_assert_eq(fl_train(t, local, &parts[k], &cfg, NULL, NULL, &ev), 0);
    for (size_t i = 0; i < n; i++) avg[i] += (double)parts[k].n * local[i];
    total += (double)parts[k].n;
  }
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double diff = fabs(avg[i] / total - (double)got[i]);
    if (diff > worst) worst = diff;
  }
  cr_assert_lt(worst, 1e-6, "largest difference from the weighted average: %g", worst);
  /* And training did move the model. */
  double moved = 0;
  for (size_t i = 0; i < n; i++) moved = fmax(moved, fabs((double)got[i] - global[i]));
  cr_assert_gt(moved, 1e-3);

  fl_trainer_free(t);
  free(global);
  free(local);
  free(avg);
  free(got);
  free(spec);
  fl_partition_free(parts);
  fl_dataset_free(&d);
  fl_model_free(m);
  fl_test_fed_free(&r);
}

Test(e2e, server_and_three_client_processes, .timeout = 300) {
  fl_test_fed r;
  fl_test_fed_init(&r);
  pid_t s = fl_test_fed_server_ready(&r, "server.log", "--model", "logreg", "--rounds", "3",
                                     "--clients-per-round", "3", "--min-clients", "3",
                                     "--fed-eval-every", "2", NULL);
  cr_assert_gt(s, 0, "no server (%s)", r.log);
  pid_t c[3];
  char logs[3][600];
  for (int i = 0; i < 3; i++) {
    char cert[600], key[600], idx[8], name[32];
    fl_test_client_cert(i + 1, cert, key, sizeof cert);
    snprintf(idx, sizeof idx, "%d", i);
    snprintf(name, sizeof name, "client%d.log", i);
    fl_test_fed_path(&r, name, logs[i], sizeof logs[i]);
    c[i] = fl_test_fed_clients(&r, name, "--cert", cert, "--key", key, "--data",
                               "fashion-mnist:train", "--max-samples", "3000", "--partition",
                               "iid", "--num-partitions", "3", "--partition-index", idx, NULL);
  }
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", r.log);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(fl_test_wait(c[i], 30), 0, "client %d failed (see %s)", i, logs[i]);
    cr_assert_eq(fl_test_count(logs[i], "training is done"), 1);
    cr_assert(fl_test_sanitizer_clean(logs[i]));
  }
  cr_assert_eq(fl_test_count(r.metrics, "\"updates_accepted\":3"), 3);
  /* Federated evaluation in rounds 2 and 3 (every 2nd, and the last), by all three. */
  cr_assert_eq(fl_test_count(r.metrics, "\"fed_eval_clients\":3"), 2, "%s", r.metrics);
  cr_assert_eq(fl_test_count(r.metrics, "\"fed_eval_accuracy\":null"), 1, "%s", r.metrics);
  cr_assert(fl_test_sanitizer_clean(r.log));
  fl_test_fed_free(&r);
}

/* --init-model starts from a pretrained model file (here one fl-train made), and a file
 * for another model is refused with a message naming both. */
Test(e2e, init_model_from_fl_train, .timeout = 300) {
  fl_test_fed r;
  fl_test_fed_init(&r);
  char pre[600], tlog[600], cmd[2048];
  snprintf(pre, sizeof pre, "%s/pretrained.bin", r.dir);
  snprintf(tlog, sizeof tlog, "%s/train.log", r.dir);
  snprintf(cmd, sizeof cmd, "%s/fl-train --model logreg --epochs 2 --batch-size 64 --lr 0.1 --out %s >%s 2>&1",
           fl_test_bin_dir(), pre, tlog);
  cr_assert_eq(fl_test_system(cmd), 0, "fl-train failed (%s)", tlog);

  pid_t bad = fl_test_fed_server(&r, "server.log", "--model", "2nn", "--init-model", pre, NULL);
  cr_assert_eq(fl_test_wait(bad, 30), 1);
  cr_assert_eq(fl_test_count(r.log, "pretrained.bin holds model 'in:784 dense:10 softmax'"), 1, "%s", r.log);

  /* One round with a tiny step: the model is still the pretrained one's quality. */
  pid_t s = fl_test_fed_server_ready(&r, "server.log", "--model", "logreg", "--init-model", pre,
                                     "--rounds", "1", "--clients-per-round", "1", "--lr",
                                     "0.0001", "--test-data", "fashion-mnist:test", NULL);
  cr_assert_gt(s, 0, "no server (%s)", r.log);
  char clog[600];
  fl_test_fed_path(&r, "client.log", clog, sizeof clog);
  pid_t c = fl_test_fed_clients(&r, "client.log", "--clients", "1", "--data",
                                "fashion-mnist:train", "--max-samples", "100", NULL);
  cr_assert_eq(fl_test_wait(s, 120), 0, "server failed (%s)", r.log);
  cr_assert_eq(fl_test_wait(c, 30), 0, "client failed (%s)", clog);
  char *m = fl_test_read_file(r.metrics, NULL);
  cr_assert_not_null(m);
  double acc = fl_test_json_num(m, "test_accuracy");
  free(m);
  cr_assert_gt(acc, 0.75, "a pretrained start should test well above chance: %.3f", acc);
  cr_assert_eq(fl_test_count(r.log, "initial model from"), 1);
  fl_test_fed_free(&r);
}
