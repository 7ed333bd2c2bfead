/* Writes the seed corpus for fuzz_frame: one frame of each Envelope body, a whole
 * tensor as a stream of chunk frames, a stream with every message in protocol order, a
 * zero-length frame and an oversized length.  Rerun with `make fuzz-corpus`; the files
 * are small and committed in tests/fuzz/corpus/frame/, beside regress-* inputs that once
 * found bugs (kept by hand, not generated).
 *
 *   gen_corpus DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "msg.h"

static const char *dir;
static uint8_t stream[1 << 14];
static size_t stream_len;

static void write_file(const char *name, const uint8_t *p, size_t n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

/* Frames a payload, writes it as its own seed and appends it to the stream seed. */
static void emit_payload(const char *name, uint8_t *payload, size_t n) {
  uint8_t frame[4096];
  if (FL_FRAME_HEADER + n > sizeof frame || stream_len + FL_FRAME_HEADER + n > sizeof stream) {
    fprintf(stderr, "%s: too big for a seed\n", name);
    exit(1);
  }
  fl_frame_header(frame, (uint32_t)n);
  memcpy(frame + FL_FRAME_HEADER, payload, n);
  if (name) write_file(name, frame, FL_FRAME_HEADER + n);
  memcpy(stream + stream_len, frame, FL_FRAME_HEADER + n);
  stream_len += FL_FRAME_HEADER + n;
  free(payload);
}

static void emit(const char *name, Fl__Envelope *e) {
  uint8_t *p;
  size_t n;
  if (fl_msg_encode(e, &p, &n) != 0) exit(1);
  emit_payload(name, p, n);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  dir = argv[1];
  Fl__Envelope e = FL__ENVELOPE__INIT;

  uint32_t versions[] = {1, 2};
  char *caps[] = {"train", "evaluate", "encoding:float32", "params"};
  Fl__Hello hello = FL__HELLO__INIT;
  hello.protocol_version = 2;
  hello.n_supported_versions = 2;
  hello.supported_versions = versions;
  hello.software_version = "fl 0.1.0";
  hello.num_samples = 6000;
  hello.n_capabilities = 4;
  hello.capabilities = caps;
  hello.model_spec = "external:toy:10";
  hello.model_id = 0x1234abcd;
  hello.num_params = 10;
  e.body_case = FL__ENVELOPE__BODY_HELLO;
  e.hello = &hello;
  emit("hello", &e);

  Fl__Welcome welcome = FL__WELCOME__INIT;
  welcome.protocol_version = 1;
  welcome.software_version = "fl 0.1.0";
  welcome.client_id = "client-0001";
  welcome.heartbeat_interval_ms = 5000;
  welcome.max_frame = FL_FRAME_DEFAULT_MAX;
  welcome.chunk_size = 16;
  welcome.model_spec = "external:toy:10";
  welcome.model_id = 0x1234abcd;
  welcome.num_params = 10;
  e.body_case = FL__ENVELOPE__BODY_WELCOME;
  e.welcome = &welcome;
  emit("welcome", &e);

  Fl__TrainConfig__ExtraEntry extra = FL__TRAIN_CONFIG__EXTRA_ENTRY__INIT;
  extra.key = "server_lr";
  extra.value = 1.0;
  Fl__TrainConfig__ExtraEntry *extras[] = {&extra};
  Fl__TrainConfig cfg = FL__TRAIN_CONFIG__INIT;
  cfg.epochs = 1;
  cfg.batch_size = 32;
  cfg.lr = 0.05f;
  cfg.optimizer = "sgd";
  cfg.clip_norm = 5.0f;
  cfg.seed = 42;
  cfg.n_extra = 1;
  cfg.extra = extras;
  Fl__TrainTask task = FL__TRAIN_TASK__INIT;
  task.round = 3;
  task.model_version = 2;
  task.model_id = 0x1234abcd;
  task.model_spec = "mlp:4-2";
  task.num_params = 10;
  task.config = &cfg;
  e.body_case = FL__ENVELOPE__BODY_TRAIN_TASK;
  e.train_task = &task;
  emit("train_task", &e);

  /* Feature standardisation and frozen layers: statistics in a Hello, the transform and
   * the frozen layers in a task. */
  double sums[2] = {12.5, -3}, squares[2] = {80.25, 9};
  Fl__FeatureStats stats = FL__FEATURE_STATS__INIT;
  stats.count = 10;
  stats.n_sum = stats.n_sum_sq = 2;
  stats.sum = sums;
  stats.sum_sq = squares;
  hello.feature_stats = &stats;
  e.body_case = FL__ENVELOPE__BODY_HELLO;
  e.hello = &hello;
  emit("hello_feature_stats", &e);
  hello.feature_stats = NULL;
  float means[2] = {1.25f, -0.3f}, stds[2] = {2.5f, 0.9f};
  task.n_feature_mean = task.n_feature_std = 2;
  task.feature_mean = means;
  task.feature_std = stds;
  cfg.freeze = "all-but-head";
  e.body_case = FL__ENVELOPE__BODY_TRAIN_TASK;
  e.train_task = &task;
  emit("train_task_standardized", &e);
  task.n_feature_mean = task.n_feature_std = 0;
  cfg.freeze = "";

  /* Ten values in chunks of four: offsets 0, 4, 8. */
  float values[10] = {0.5f, -1.0f, 2.25f, 0, 1e-3f, -7.5f, 3, 4, 5, 6};
  fl_tensor_tx tx;
  fl_tensor_tx_init(&tx, values, 10, 16);
  uint8_t *p;
  size_t n;
  for (int i = 0; fl_tensor_tx_next(&tx, &p, &n) == 1; i++)
    emit_payload(i == 0 ? "chunk" : NULL, p, n);
  write_file("stream_task", stream, stream_len);

  Fl__Metrics m = FL__METRICS__INIT;
  m.loss = 0.4;
  m.accuracy = 0.87;
  m.num_examples = 6000;
  m.seconds = 1.5;
  Fl__Update up = FL__UPDATE__INIT;
  up.round = 3;
  up.model_id = 0x1234abcd;
  up.num_params = 10;
  up.num_examples = 6000;
  up.metrics = &m;
  e.body_case = FL__ENVELOPE__BODY_UPDATE;
  e.update = &up;
  emit("update", &e);

  Fl__EvalTask et = FL__EVAL_TASK__INIT;
  et.round = 4;
  et.model_version = 3;
  et.model_id = 0x1234abcd;
  et.num_params = 10;
  e.body_case = FL__ENVELOPE__BODY_EVAL_TASK;
  e.eval_task = &et;
  emit("eval_task", &e);

  Fl__EvalResult er = FL__EVAL_RESULT__INIT;
  er.round = 4;
  er.metrics = &m;
  e.body_case = FL__ENVELOPE__BODY_EVAL_RESULT;
  e.eval_result = &er;
  emit("eval_result", &e);

  if (fl_msg_heartbeat(7, 0.25f, &p, &n)) return 1;
  emit_payload("heartbeat", p, n);
  if (fl_msg_error(FL__ERROR_CODE__ERROR_VERSION, "no common version", &p, &n)) return 1;
  emit_payload("error", p, n);

  Fl__Done done = FL__DONE__INIT;
  done.reason = "training complete";
  done.rounds = 5;
  e.body_case = FL__ENVELOPE__BODY_DONE;
  e.done = &done;
  emit("done", &e);

  Fl__Proceed proceed = FL__PROCEED__INIT;
  proceed.round = 5;
  e.body_case = FL__ENVELOPE__BODY_PROCEED;
  e.proceed = &proceed;
  emit("proceed", &e);

  Fl__ParamsRequest preq = FL__PARAMS_REQUEST__INIT;
  preq.model_id = 0x1234abcd;
  preq.num_params = 10;
  e.body_case = FL__ENVELOPE__BODY_PARAMS_REQUEST;
  e.params_request = &preq;
  emit("params_request", &e);

  Fl__Params params = FL__PARAMS__INIT;
  params.model_id = 0x1234abcd;
  params.num_params = 10;
  e.body_case = FL__ENVELOPE__BODY_PARAMS;
  e.params = &params;
  emit("params", &e);

  Fl__Error task_error = FL__ERROR__INIT;
  task_error.code = FL__ERROR_CODE__ERROR_CANNOT_TRAIN;
  task_error.reason = "fit failed: no data";
  task_error.round = 5;
  task_error.task = FL__TASK_KIND__TASK_TRAIN;
  e.body_case = FL__ENVELOPE__BODY_ERROR;
  e.error = &task_error;
  emit("error_task", &e);

  /* Secure aggregation, in the order of its stages. */
  uint8_t key[32], sealed[80], graph[16];
  memset(key, 9, sizeof key);
  memset(sealed, 0xa5, sizeof sealed);
  memset(graph, 3, sizeof graph);
  Fl__SecAggSetup setup = FL__SEC_AGG_SETUP__INIT;
  setup.round = 5;
  setup.index = 1;
  setup.n = 3;
  setup.threshold = 2;
  setup.neighbors = 2;
  setup.bits = 32;
  setup.dim = 8;
  setup.graph_seed = (ProtobufCBinaryData){sizeof graph, graph};
  setup.clip = 1;
  setup.scale = 1 << 20;
  setup.weight_cap = 100;
  e.body_case = FL__ENVELOPE__BODY_SECAGG_SETUP;
  e.secagg_setup = &setup;
  emit("secagg_setup", &e);
  Fl__SecAggKeys keys = FL__SEC_AGG_KEYS__INIT;
  keys.round = 5;
  keys.c_pub = keys.s_pub = (ProtobufCBinaryData){sizeof key, key};
  e.body_case = FL__ENVELOPE__BODY_SECAGG_KEYS;
  e.secagg_keys = &keys;
  emit("secagg_keys", &e);
  uint32_t idx[] = {0, 2};
  ProtobufCBinaryData pubs[] = {{sizeof key, key}, {sizeof key, key}};
  Fl__SecAggPeers peers = FL__SEC_AGG_PEERS__INIT;
  peers.round = 5;
  peers.n_index = peers.n_c_pub = peers.n_s_pub = 2;
  peers.index = idx;
  peers.c_pub = peers.s_pub = pubs;
  e.body_case = FL__ENVELOPE__BODY_SECAGG_PEERS;
  e.secagg_peers = &peers;
  emit("secagg_peers", &e);
  ProtobufCBinaryData seals[] = {{sizeof sealed, sealed}, {sizeof sealed, sealed}};
  Fl__SecAggShares shares = FL__SEC_AGG_SHARES__INIT;
  shares.round = 5;
  shares.n_peer = shares.n_sealed = shares.n_u2 = 2;
  shares.peer = shares.u2 = idx;
  shares.sealed = seals;
  e.body_case = FL__ENVELOPE__BODY_SECAGG_SHARES;
  e.secagg_shares = &shares;
  emit("secagg_shares", &e);
  Fl__SecAggUnmask unmask = FL__SEC_AGG_UNMASK__INIT;
  unmask.round = 5;
  unmask.n_survivors = 2;
  unmask.survivors = idx;
  e.body_case = FL__ENVELOPE__BODY_SECAGG_UNMASK;
  e.secagg_unmask = &unmask;
  emit("secagg_unmask", &e);
  uint32_t kinds[] = {1, 2};
  Fl__SecAggReveal reveal = FL__SEC_AGG_REVEAL__INIT;
  reveal.round = 5;
  reveal.n_peer = reveal.n_kind = reveal.n_share = 2;
  reveal.peer = idx;
  reveal.kind = kinds;
  reveal.share = pubs;
  e.body_case = FL__ENVELOPE__BODY_SECAGG_REVEAL;
  e.secagg_reveal = &reveal;
  emit("secagg_reveal", &e);
  write_file("stream_all", stream, stream_len);

  uint8_t odd[2 * FL_FRAME_HEADER];
  fl_frame_header(odd, 0);
  fl_frame_header(odd + FL_FRAME_HEADER, 0xffffffffu);
  write_file("empty_then_oversized", odd, sizeof odd);
  return 0;
}
