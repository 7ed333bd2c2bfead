/* Compressed updates and models through the real binaries (fl-server --uplink/--downlink,
 * fl-client --encodings):
 *
 * - int8 updates and float16 models: the run learns, and the metrics show the bytes each
 *   way shrink about 4x and 2x;
 * - top-k updates (with the clients' error feedback) learn too;
 * - a client that offers float32 alone takes part beside clients that compress, and is
 *   never asked for anything else. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Runs 2nn, 10 clients in one process (or 8 + 2 offering float32 alone when mixed), 4
 * rounds; returns the metrics of the last round (malloc'd). */
static char *run(fl_test_fed *f, const char *uplink, const char *downlink, int mixed) {
  pid_t s = fl_test_fed_server(f, "server.log", "--model", "2nn", "--rounds", "4",
                               "--clients-per-round", "10", "--min-clients", "10", "--epochs", "1",
                               "--batch-size", "10", "--lr", "0.05", "--seed", "2", "--uplink",
                               uplink, "--downlink", downlink, "--test-data", "fashion-mnist:test",
                               NULL);
  pid_t a = fl_test_fed_clients(f, "clients.log", "--clients", mixed ? "8" : "10", "--data",
                                "fashion-mnist:train", "--max-samples", "10000", "--partition",
                                "iid", "--num-partitions", "10", "--seed", "1", NULL);
  pid_t b = -1;
  if (mixed)
    b = fl_test_fed_clients(f, "plain.log", "--clients", "2", "--cert-index", "9", "--data",
                            "fashion-mnist:train", "--max-samples", "10000", "--partition", "iid",
                            "--num-partitions", "10", "--partition-index", "8", "--seed", "1",
                            "--encodings", "float32", NULL);
  cr_assert_eq(fl_test_wait(s, 600), 0, "server failed (%s)", f->dir);
  cr_assert_eq(fl_test_wait(a, 60), 0, "clients failed (%s)", f->dir);
  if (b > 0) cr_assert_eq(fl_test_wait(b, 60), 0, "float32 clients failed (%s)", f->dir);
  cr_assert_eq(fl_test_metrics_rounds(f->metrics), 4);
  for (int r = 1; r <= 4; r++) {
    char *line = fl_test_metrics_line(f->metrics, r);
    cr_assert_eq(fl_test_json_num(line, "updates_accepted"), 10, "%s", line);
    free(line);
  }
  return fl_test_metrics_line(f->metrics, 4);
}

Test(compression, int8_updates_float16_models, .timeout = 900) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char *m = run(&f, "int8", "float16", 0);
  double acc = fl_test_json_num(m, "test_accuracy");
  double up = fl_test_json_num(m, "update_compression"), down = fl_test_json_num(m, "model_compression");
  cr_assert_gt(acc, 0.72, "test accuracy %.3f: %s", acc, m);
  cr_assert(up > 3.8 && up < 4.01, "update compression %.3f: %s", up, m);
  cr_assert(down > 1.9 && down < 2.01, "model compression %.3f: %s", down, m);
  char log[700];
  fl_test_fed_path(&f, "clients.log", log, sizeof log);
  cr_assert_eq(fl_test_count(log, "updates in int8"), 10, "%s", log);
  free(m);
  fl_test_fed_free(&f);
}

Test(compression, topk_updates_with_error_feedback, .timeout = 900) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char *m = run(&f, "topk:0.1", "float32", 0);
  double acc = fl_test_json_num(m, "test_accuracy"), up = fl_test_json_num(m, "update_compression");
  cr_assert_gt(acc, 0.65, "test accuracy %.3f: %s", acc, m);
  cr_assert(up > 4.5 && up < 5.01, "update compression %.3f: %s", up, m); /* 8 bytes a tenth */
  double down = fl_test_json_num(m, "model_compression"); /* float32 frames: just their headers */
  cr_assert(down > 0.99 && down <= 1, "%s", m);
  free(m);
  fl_test_fed_free(&f);
}

Test(compression, a_float32_client_takes_part, .timeout = 900) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char *m = run(&f, "int8", "float16", 1);
  char plog[700];
  fl_test_fed_path(&f, "plain.log", plog, sizeof plog);
  cr_assert_eq(fl_test_count(f.log, "does not offer int8 and float16: it sends and gets float32"),
               2, "%s", f.log);
  cr_assert_eq(fl_test_count(plog, "updates in float32"), 2, "%s", plog);
  cr_assert_eq(fl_test_count(f.log, "refused update"), 0, "%s", f.log);
  /* 8 int8 updates and 2 float32 ones: 40 units of raw data in 8 + 8. */
  double up = fl_test_json_num(m, "update_compression");
  cr_assert(up > 2.4 && up < 2.51, "update compression %.3f: %s", up, m);
  free(m);
  fl_test_fed_free(&f);
}

/* The model a client decodes is bit for bit the model the server keeps and computes the
 * deltas against (item 4): both log the crc32 of its float32 values, the server once per
 * model version, each client once per task. */
Test(compression, clients_decode_the_servers_model_exactly, .timeout = 900) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  pid_t s = fl_test_fed_server(&f, "server.log", "--model", "2nn", "--rounds", "3",
                               "--clients-per-round", "4", "--min-clients", "4", "--epochs", "1",
                               "--batch-size", "10", "--lr", "0.05", "--seed", "2", "--uplink",
                               "int8", "--downlink", "float16", "--log-level", "debug", NULL);
  pid_t a = fl_test_fed_clients(&f, "clients.log", "--clients", "4", "--data",
                                "fashion-mnist:train", "--max-samples", "400", "--partition",
                                "iid", "--seed", "1", "--log-level", "debug", NULL);
  cr_assert_eq(fl_test_wait(s, 600), 0, "server failed (%s)", f.dir);
  cr_assert_eq(fl_test_wait(a, 60), 0, "clients failed (%s)", f.dir);
  char clog[700];
  fl_test_fed_path(&f, "clients.log", clog, sizeof clog);
  size_t len;
  char *text = fl_test_read_file(f.log, &len);
  cr_assert(text, "%s", f.log);
  unsigned long sent[16];
  int nsent = 0;
  for (char *p = text; (p = strstr(p, "encoded as float16 in ")) != NULL; p++) {
    char *c = strstr(p, "values ");
    cr_assert(c && nsent < 16, "%s", f.log);
    sent[nsent++] = strtoul(c + 7, NULL, 16);
  }
  free(text);
  cr_assert_geq(nsent, 3, "the server logged %d float16 models (%s)", nsent, f.log);
  for (int i = 1; i < nsent; i++) cr_assert_neq(sent[i], sent[i - 1], "%s", f.log);
  text = fl_test_read_file(clog, &len);
  cr_assert(text, "%s", clog);
  int got = 0;
  for (char *p = text; (p = strstr(p, "model in, float16, crc32 of its float32 values ")) != NULL; p++) {
    unsigned long crc = strtoul(p + strlen("model in, float16, crc32 of its float32 values "), NULL, 16);
    int known = 0;
    for (int i = 0; i < nsent; i++) known |= crc == sent[i];
    cr_assert(known, "a client decoded a model (crc32 %08lx) the server never kept (%s, %s)", crc,
              f.log, clog);
    got++;
  }
  free(text);
  cr_assert_geq(got, 12, "only %d models logged by the clients (%s)", got, clog);
  fl_test_fed_free(&f);
}
