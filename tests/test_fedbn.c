/* FedBN through the real binaries: fl-client --fedbn keeps a model's batchnorm layers
 * local.  Two rounds of two clients, computed independently here with the training core:
 *   - the server's batchnorm tensors never move (every client sends a zero delta for
 *     them, and the server does nothing special);
 *   - in round 2 each client trains with its own batchnorm layers from round 1, not the
 *     server's (the test also computes the run where they took the server's, and checks
 *     that it is far from what the server got, so the comparison can tell them apart);
 *   - without --fedbn the batchnorm tensors are averaged like any other parameter. */
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

#define SPEC "in:784 dense:16 batchnorm relu dense:10 softmax"
#define ROUNDS 2
#define CLIENTS 2
#define SAMPLES 201

/* Runs a server and one fl-client process of CLIENTS virtual clients; returns the final
 * global model (malloc'd, n floats). */
static float *federate(int fedbn, size_t *n) {
  char *dir = fl_test_tmpdir(), log[600], clog[600], out[600], listen[64], ca[600],
       cert[600], key[600];
  int port = fl_test_free_port();
  snprintf(log, sizeof log, "%s/server.log", dir);
  snprintf(clog, sizeof clog, "%s/clients.log", dir);
  snprintf(out, sizeof out, "%s/model.bin", dir);
  snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
  snprintf(ca, sizeof ca, "%s/ca.crt", fl_test_certs_dir());
  snprintf(cert, sizeof cert, "%s/server.crt", fl_test_certs_dir());
  snprintf(key, sizeof key, "%s/server.key", fl_test_certs_dir());
  char *server = fl_test_bin("fl-server"), *client = fl_test_bin("fl-client");
  char *sargv[] = {server, "--listen", listen, "--model", SPEC, "--rounds", "2",
                   "--clients-per-round", "2", "--min-clients", "2", "--epochs", "1",
                   "--batch-size", "16", "--lr", "0.05", "--seed", "11", "--out", out,
                   "--ca", ca, "--cert", cert, "--key", key, NULL};
  char *cargv[] = {client, "--server", listen, "--server-name", "localhost", "--clients", "2",
                   "--data", "fashion-mnist:train", "--max-samples", "201", "--partition",
                   "iid", "--seed", "5", "--train-threads", "1", "--certs-dir",
                   (char *)fl_test_certs_dir(), "--ca", ca, fedbn ? "--fedbn" : NULL, NULL};
  pid_t s = fl_test_spawn(log, sargv);
  pid_t c = fl_test_spawn(clog, cargv);
  cr_assert_eq(fl_test_wait(s, 240), 0, "fl-server failed (see %s)", log);
  cr_assert_eq(fl_test_wait(c, 30), 0, "fl-client failed (see %s)", clog);
  cr_assert(fl_test_sanitizer_clean(log), "sanitizer report in %s", log);
  cr_assert(fl_test_sanitizer_clean(clog), "sanitizer report in %s", clog);
  if (fedbn) cr_assert_eq(fl_test_count(clog, "FedBN"), 1, "%s", clog);
  char err[512], *spec;
  uint64_t id;
  float *got;
  cr_assert_eq(fl_modelfile_load(out, &spec, &id, &got, n, err, sizeof err), 0, "%s", err);
  free(spec);
  free(server);
  free(client);
  free(dir);
  return got;
}

/* The same federation computed here.  own_bn: clients train with their own batchnorm
 * tensors from their previous round (FedBN); fedbn: they send no change for them. */
static float *simulate(const fl_model *m, int fedbn, int own_bn) {
  char err[512];
  size_t n = fl_model_num_params(m), nb = fl_model_local_size(m);
  fl_dataset d;
  cr_assert_eq(fl_dataset_load(&d, "fashion-mnist:train", err, sizeof err), 0, "%s", err);
  d.n = SAMPLES;
  fl_subset *parts;
  cr_assert_eq(fl_partition(&d, "iid", CLIENTS, 5, &parts, err, sizeof err), 0, "%s", err);
  float *global = malloc(n * sizeof *global), *local = malloc(n * sizeof *local);
  float *bn[CLIENTS];
  double *avg = malloc(n * sizeof *avg);
  fl_model_init(m, global, 11);
  fl_trainer *t = fl_trainer_create(m, 16);
  for (int k = 0; k < CLIENTS; k++) bn[k] = NULL;
  for (int round = 1; round <= ROUNDS; round++) {
    double total = 0;
    memset(avg, 0, n * sizeof *avg);
    for (int k = 0; k < CLIENTS; k++) {
      fl_train_config cfg = fl_train_config_default();
      cfg.epochs = 1, cfg.batch_size = 16, cfg.lr = 0.05f;
      cfg.seed = fl_seed_mix(11ULL * 1000003ULL + (uint64_t)round, (uint64_t)k);
      memcpy(local, global, n * sizeof *local);
      if (own_bn && bn[k]) fl_model_local_put(m, local, bn[k]);
      cr_assert_eq(fl_train(t, local, &parts[k], &cfg, NULL, NULL, NULL), 0);
      if (!bn[k]) bn[k] = malloc(nb * sizeof(float));
      fl_model_local_get(m, local, bn[k]);
      if (fedbn) fl_model_local_copy(m, local, global);
      for (size_t i = 0; i < n; i++) avg[i] += (double)parts[k].n * local[i];
      total += (double)parts[k].n;
    }
    for (size_t i = 0; i < n; i++) global[i] = (float)(avg[i] / total);
  }
  for (int k = 0; k < CLIENTS; k++) free(bn[k]);
  fl_trainer_free(t);
  free(local);
  free(avg);
  fl_partition_free(parts);
  fl_dataset_free(&d);
  return global;
}

static double max_diff(const float *a, const float *b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
  return worst;
}

Test(fedbn, batchnorm_layers_stay_on_the_clients, .timeout = 600) {
  char err[512];
  fl_model *m;
  cr_assert_eq(fl_model_create(SPEC, &m, err, sizeof err), 0, "%s", err);
  size_t n, P = fl_model_num_params(m), nb = fl_model_local_size(m);
  float *got = federate(1, &n);
  cr_assert_eq(n, P);

  /* the server's batchnorm tensors are the initial ones, bit for bit */
  float *init = malloc(P * sizeof *init), *a = malloc(nb * sizeof *a), *b = malloc(nb * sizeof *b);
  fl_model_init(m, init, 11);
  fl_model_local_get(m, init, a);
  fl_model_local_get(m, got, b);
  cr_assert_eq(memcmp(a, b, nb * sizeof *a), 0, "the server's batchnorm tensors moved");

  float *want = simulate(m, 1, 1), *wrong = simulate(m, 1, 0);
  double diff = max_diff(got, want, P), off = max_diff(got, wrong, P);
  cr_log_info("FedBN: %g from the computation, %g from taking the server's batchnorm", diff, off);
  /* The server averages in double and rounds once per round (a few 1e-8 here); taking
   * the server's batchnorm in round 2 moves the result by about 1e-3. */
  cr_assert_lt(diff, 1e-5, "largest difference from the FedBN computation: %g", diff);
  cr_assert_gt(off, 50 * 1e-5, "taking the server's batchnorm would differ only by %g", off);
  cr_assert_gt(max_diff(got, init, P), 1e-3, "training did not move the model");
  free(want);
  free(wrong);
  free(got);

  /* without FedBN the running statistics are averaged like any parameter */
  got = federate(0, &n);
  fl_model_local_get(m, got, b);
  cr_assert_gt(max_diff(a, b, nb), 1e-3, "without --fedbn the batchnorm tensors stayed");
  want = simulate(m, 0, 0);
  diff = max_diff(got, want, P);
  cr_assert_lt(diff, 1e-5, "largest difference from the plain FedAvg computation: %g", diff);
  free(want);
  free(got);
  free(init);
  free(a);
  free(b);
  fl_model_free(m);
}
