/* common/msg.c: every Envelope body survives encode/decode, garbage is FL_EPROTO,
 * tensors round-trip through chunks of every awkward size, the receiver refuses every
 * kind of bad chunk, and version negotiation. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "frame.h"
#include "msg.h"
#include "rng.h"

static Fl__Envelope *roundtrip(const Fl__Envelope *env) {
  uint8_t *buf;
  size_t len;
  cr_assert_eq(fl_msg_encode(env, &buf, &len), 0);
  Fl__Envelope *out;
  cr_assert_eq(fl_msg_decode(buf, len, &out), 0, "%s", fl_msg_name(env));
  cr_assert_eq(out->body_case, env->body_case);
  cr_assert_str_eq(fl_msg_name(out), fl_msg_name(env));

  /* The framed form is the header plus the same bytes. */
  uint8_t *framed;
  size_t flen;
  cr_assert_eq(fl_msg_encode_framed(env, &framed, &flen), 0);
  cr_assert_eq(flen, len + FL_FRAME_HEADER);
  uint8_t h[FL_FRAME_HEADER];
  fl_frame_header(h, (uint32_t)len);
  cr_assert_eq(memcmp(framed, h, FL_FRAME_HEADER), 0);
  cr_assert_eq(memcmp(framed + FL_FRAME_HEADER, buf, len), 0);
  free(framed);
  free(buf);
  return out;
}

Test(msg, hello_welcome) {
  uint32_t versions[] = {1, 2};
  char *caps[] = {"train", "evaluate", "encoding:float32"};
  Fl__Hello h = FL__HELLO__INIT;
  h.protocol_version = 2;
  h.n_supported_versions = 2;
  h.supported_versions = versions;
  h.software_version = "fl 0.1.0";
  h.num_samples = 6000;
  h.n_capabilities = 3;
  h.capabilities = caps;
  Fl__Envelope e = FL__ENVELOPE__INIT;
  e.body_case = FL__ENVELOPE__BODY_HELLO;
  e.hello = &h;
  Fl__Envelope *o = roundtrip(&e);
  cr_assert_str_eq(fl_msg_name(o), "hello");
  cr_assert_eq(o->hello->protocol_version, 2);
  cr_assert_eq(o->hello->n_supported_versions, 2);
  cr_assert_eq(o->hello->supported_versions[1], 2);
  cr_assert_str_eq(o->hello->software_version, "fl 0.1.0");
  cr_assert_eq(o->hello->num_samples, 6000);
  cr_assert_eq(o->hello->n_capabilities, 3);
  cr_assert_str_eq(o->hello->capabilities[2], "encoding:float32");
  fl_msg_free(o);

  Fl__Welcome w = FL__WELCOME__INIT;
  w.protocol_version = 1;
  w.software_version = "fl 0.1.0";
  w.client_id = "client-0007";
  w.heartbeat_interval_ms = 5000;
  w.max_frame = FL_FRAME_DEFAULT_MAX;
  w.chunk_size = FL_CHUNK_DEFAULT;
  e.body_case = FL__ENVELOPE__BODY_WELCOME;
  e.welcome = &w;
  o = roundtrip(&e);
  cr_assert_str_eq(fl_msg_name(o), "welcome");
  cr_assert_str_eq(o->welcome->client_id, "client-0007");
  cr_assert_eq(o->welcome->heartbeat_interval_ms, 5000);
  cr_assert_eq(o->welcome->max_frame, FL_FRAME_DEFAULT_MAX);
  cr_assert_eq(o->welcome->chunk_size, FL_CHUNK_DEFAULT);
  fl_msg_free(o);
}

Test(msg, train_task_update_eval) {
  Fl__TrainConfig__ExtraEntry x1 = FL__TRAIN_CONFIG__EXTRA_ENTRY__INIT, x2 = x1;
  x1.key = "server_lr";
  x1.value = 1.0;
  x2.key = "beta1";
  x2.value = 0.9;
  Fl__TrainConfig__ExtraEntry *extra[] = {&x1, &x2};
  Fl__TrainConfig c = FL__TRAIN_CONFIG__INIT;
  c.epochs = 2;
  c.batch_size = 32;
  c.lr = 0.05f;
  c.optimizer = "momentum";
  c.momentum = 0.9f;
  c.weight_decay = 1e-4f;
  c.prox_mu = 0.01f;
  c.clip_norm = 5.0f;
  c.seed = 0xdeadbeefcafeULL;
  c.n_extra = 2;
  c.extra = extra;
  Fl__TrainTask t = FL__TRAIN_TASK__INIT;
  t.round = 17;
  t.model_version = 16;
  t.model_id = 0x0123456789abcdefULL;
  t.model_spec = "mlp:784-128-10";
  t.num_params = 101770;
  t.config = &c;
  Fl__Envelope e = FL__ENVELOPE__INIT;
  e.body_case = FL__ENVELOPE__BODY_TRAIN_TASK;
  e.train_task = &t;
  Fl__Envelope *o = roundtrip(&e);
  Fl__TrainTask *ot = o->train_task;
  cr_assert_eq(ot->round, 17);
  cr_assert_eq(ot->model_id, 0x0123456789abcdefULL);
  cr_assert_str_eq(ot->model_spec, "mlp:784-128-10");
  cr_assert_eq(ot->num_params, 101770);
  cr_assert_eq(ot->encoding, FL__ENCODING__ENCODING_FLOAT32);
  cr_assert_not_null(ot->config);
  cr_assert_eq(ot->config->batch_size, 32);
  cr_assert_float_eq(ot->config->lr, 0.05f, 0);
  cr_assert_str_eq(ot->config->optimizer, "momentum");
  cr_assert_eq(ot->config->seed, 0xdeadbeefcafeULL);
  cr_assert_eq(ot->config->n_extra, 2);
  cr_assert_str_eq(ot->config->extra[1]->key, "beta1");
  cr_assert_float_eq(ot->config->extra[1]->value, 0.9, 0);
  fl_msg_free(o);

  Fl__Metrics m = FL__METRICS__INIT;
  m.loss = 0.3821;
  m.accuracy = 0.8875;
  m.auc = 0.97;
  m.num_examples = 6000;
  m.seconds = 1.25;
  Fl__Update u = FL__UPDATE__INIT;
  u.round = 17;
  u.model_id = t.model_id;
  u.num_params = 101770;
  u.num_examples = 6000;
  u.metrics = &m;
  e.body_case = FL__ENVELOPE__BODY_UPDATE;
  e.update = &u;
  o = roundtrip(&e);
  cr_assert_eq(o->update->num_examples, 6000);
  cr_assert_not_null(o->update->metrics);
  cr_assert_float_eq(o->update->metrics->accuracy, 0.8875, 0);
  cr_assert_float_eq(o->update->metrics->seconds, 1.25, 0);
  fl_msg_free(o);

  Fl__EvalTask et = FL__EVAL_TASK__INIT;
  et.round = 18;
  et.model_version = 18;
  et.model_id = 99;
  et.num_params = 101770;
  e.body_case = FL__ENVELOPE__BODY_EVAL_TASK;
  e.eval_task = &et;
  o = roundtrip(&e);
  cr_assert_eq(o->eval_task->round, 18);
  cr_assert_eq(o->eval_task->num_params, 101770);
  fl_msg_free(o);

  Fl__EvalResult er = FL__EVAL_RESULT__INIT;
  er.round = 18;
  er.metrics = &m;
  e.body_case = FL__ENVELOPE__BODY_EVAL_RESULT;
  e.eval_result = &er;
  o = roundtrip(&e);
  cr_assert_eq(o->eval_result->round, 18);
  cr_assert_float_eq(o->eval_result->metrics->loss, 0.3821, 0);
  fl_msg_free(o);
}

Test(msg, chunk_heartbeat_error_done) {
  float v[3] = {1.5f, -2.0f, 0.125f};
  Fl__TensorChunk c = FL__TENSOR_CHUNK__INIT;
  c.offset = 4096;
  c.total = 8192;
  c.data.data = (uint8_t *)v;
  c.data.len = sizeof v;
  Fl__Envelope e = FL__ENVELOPE__INIT;
  e.body_case = FL__ENVELOPE__BODY_CHUNK;
  e.chunk = &c;
  Fl__Envelope *o = roundtrip(&e);
  cr_assert_eq(o->chunk->offset, 4096);
  cr_assert_eq(o->chunk->total, 8192);
  cr_assert_eq(o->chunk->data.len, sizeof v);
  fl_msg_free(o);

  uint8_t *buf;
  size_t len;
  cr_assert_eq(fl_msg_heartbeat(42, 0.5f, &buf, &len), 0);
  cr_assert_eq(fl_msg_decode(buf, len, &o), 0);
  cr_assert_str_eq(fl_msg_name(o), "heartbeat");
  cr_assert_eq(o->heartbeat->seq, 42);
  cr_assert_float_eq(o->heartbeat->progress, 0.5f, 0);
  fl_msg_free(o);
  free(buf);

  cr_assert_eq(fl_msg_error(FL__ERROR_CODE__ERROR_VERSION, "no common version", &buf, &len), 0);
  cr_assert_eq(fl_msg_decode(buf, len, &o), 0);
  cr_assert_str_eq(fl_msg_name(o), "error");
  cr_assert_eq(o->error->code, FL__ERROR_CODE__ERROR_VERSION);
  cr_assert_str_eq(o->error->reason, "no common version");
  cr_assert_eq(o->error->n_supported_versions, 1);
  cr_assert_eq(o->error->supported_versions[0], FL_PROTOCOL_VERSION);
  fl_msg_free(o);
  free(buf);

  cr_assert_eq(fl_msg_error(FL__ERROR_CODE__ERROR_OVERLOADED, NULL, &buf, &len), 0);
  cr_assert_eq(fl_msg_decode(buf, len, &o), 0);
  cr_assert_eq(o->error->code, FL__ERROR_CODE__ERROR_OVERLOADED);
  cr_assert_str_eq(o->error->reason, "");
  cr_assert_eq(o->error->n_supported_versions, 0);
  fl_msg_free(o);
  free(buf);

  Fl__Done d = FL__DONE__INIT;
  d.reason = "training complete";
  d.rounds = 50;
  d.reconnect_after_ms = 0;
  e.body_case = FL__ENVELOPE__BODY_DONE;
  e.done = &d;
  o = roundtrip(&e);
  cr_assert_str_eq(o->done->reason, "training complete");
  cr_assert_eq(o->done->rounds, 50);
  fl_msg_free(o);

  Fl__Proceed pr = FL__PROCEED__INIT;
  pr.round = 12;
  e.body_case = FL__ENVELOPE__BODY_PROCEED;
  e.proceed = &pr;
  o = roundtrip(&e);
  cr_assert_eq(o->proceed->round, 12);
  cr_assert_str_eq(fl_msg_name(o), "proceed");
  fl_msg_free(o);
}

/* What libflclient added: model declarations in Hello and Welcome, the initial
 * parameters' request and answer, and an Error that names the task it gives up. */
Test(msg, model_declarations_params_and_task_errors) {
  Fl__Hello h = FL__HELLO__INIT;
  h.protocol_version = FL_PROTOCOL_VERSION;
  h.model_spec = "external:toy:8";
  h.model_id = 0xfeedULL;
  h.num_params = 8;
  Fl__Envelope e = FL__ENVELOPE__INIT;
  e.body_case = FL__ENVELOPE__BODY_HELLO;
  e.hello = &h;
  Fl__Envelope *o = roundtrip(&e);
  cr_assert_str_eq(o->hello->model_spec, "external:toy:8");
  cr_assert_eq(o->hello->model_id, 0xfeedULL);
  cr_assert_eq(o->hello->num_params, 8);
  fl_msg_free(o);

  Fl__Welcome w = FL__WELCOME__INIT;
  w.model_spec = "in:784 dense:10 softmax";
  w.model_id = 7;
  w.num_params = 7850;
  e.body_case = FL__ENVELOPE__BODY_WELCOME;
  e.welcome = &w;
  o = roundtrip(&e);
  cr_assert_str_eq(o->welcome->model_spec, "in:784 dense:10 softmax");
  cr_assert_eq(o->welcome->num_params, 7850);
  fl_msg_free(o);

  Fl__ParamsRequest r = FL__PARAMS_REQUEST__INIT;
  r.model_id = 9;
  r.num_params = 21;
  e.body_case = FL__ENVELOPE__BODY_PARAMS_REQUEST;
  e.params_request = &r;
  o = roundtrip(&e);
  cr_assert_str_eq(fl_msg_name(o), "params_request");
  cr_assert_eq(o->params_request->model_id, 9);
  cr_assert_eq(o->params_request->num_params, 21);
  fl_msg_free(o);

  Fl__Params p = FL__PARAMS__INIT;
  p.model_id = 9;
  p.num_params = 21;
  e.body_case = FL__ENVELOPE__BODY_PARAMS;
  e.params = &p;
  o = roundtrip(&e);
  cr_assert_str_eq(fl_msg_name(o), "params");
  cr_assert_eq(o->params->num_params, 21);
  cr_assert_eq(o->params->encoding, FL__ENCODING__ENCODING_FLOAT32);
  fl_msg_free(o);

  Fl__Error err = FL__ERROR__INIT;
  err.code = FL__ERROR_CODE__ERROR_CANNOT_TRAIN;
  err.reason = "no data today";
  err.round = 4;
  err.task = FL__TASK_KIND__TASK_TRAIN;
  e.body_case = FL__ENVELOPE__BODY_ERROR;
  e.error = &err;
  o = roundtrip(&e);
  cr_assert_eq(o->error->code, FL__ERROR_CODE__ERROR_CANNOT_TRAIN);
  cr_assert_eq(o->error->round, 4);
  cr_assert_eq(o->error->task, FL__TASK_KIND__TASK_TRAIN);
  fl_msg_free(o);
}

Test(msg, garbage_and_empty_are_eproto) {
  Fl__Envelope *o = (Fl__Envelope *)1;
  cr_assert_eq(fl_msg_decode(NULL, 0, &o), FL_EPROTO, "an empty payload has no body");
  cr_assert_null(o);
  static const uint8_t garbage[][8] = {
      {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, /* endless varint */
      {0x0a, 0x7f, 0x08, 0x01},                         /* hello longer than the payload */
      {0x0f},                                           /* wire type 7 */
      {0x22, 0x02, 0x22, 0x05},                         /* chunk whose data overruns */
      {0x08, 0x01},                                     /* field 1 as varint, not message */
  };
  static const size_t lens[] = {8, 4, 1, 4, 2};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    cr_assert_eq(fl_msg_decode(garbage[i], lens[i], &o), FL_EPROTO, "garbage %zu", i);
    cr_assert_null(o);
  }
  /* Only an unknown field: a valid message without a body. */
  static const uint8_t unknown[] = {0xa0, 0x06, 0x01}; /* field 100, varint 1 */
  cr_assert_eq(fl_msg_decode(unknown, sizeof unknown, &o), FL_EPROTO);
  /* Unknown fields beside a body are fine (a newer peer), but never field number 0,
   * which protobuf-c lets through when the tag is overlong: here inside a Welcome,
   * and inside TrainTask.config.extra[0]. */
  static const uint8_t newer[] = {0x12, 0x02, 0x08, 0x01, 0xa0, 0x06, 0x01};
  cr_assert_eq(fl_msg_decode(newer, sizeof newer, &o), 0);
  fl_msg_free(o);
  static const uint8_t tag0[] = {0x12, 0x05, 0x08, 0x01, 0x80, 0x00, 0x01};
  cr_assert_eq(fl_msg_decode(tag0, sizeof tag0, &o), FL_EPROTO);
  cr_assert_null(o);
  static const uint8_t deep_ok[] = {0x1a, 0x06, 0x32, 0x04, 0x52, 0x02, 0x0a, 0x00};
  cr_assert_eq(fl_msg_decode(deep_ok, sizeof deep_ok, &o), 0);
  cr_assert_eq(o->train_task->config->n_extra, 1);
  fl_msg_free(o);
  static const uint8_t deep_tag0[] = {0x1a, 0x09, 0x32, 0x07, 0x52, 0x05, 0x0a, 0x00, 0x80, 0x00, 0x01};
  cr_assert_eq(fl_msg_decode(deep_tag0, sizeof deep_tag0, &o), FL_EPROTO);
  static const uint8_t huge_field[] = {0x12, 0x08, 0x08, 0x01, 0xf8, 0xff, 0xff, 0xff, 0x7f, 0x01};
  cr_assert_eq(fl_msg_decode(huge_field, sizeof huge_field, &o), FL_EPROTO);
  fl_msg_free(NULL);

  /* Encoding an envelope without a body is a caller bug. */
  Fl__Envelope e = FL__ENVELOPE__INIT;
  uint8_t *buf;
  size_t len;
  cr_assert_eq(fl_msg_encode(&e, &buf, &len), FL_EINVAL);
  cr_assert_null(buf);
  cr_assert_str_eq(fl_msg_name(&e), "none");
  cr_assert_str_eq(fl_msg_name(NULL), "null");
}

Test(msg, random_bytes_never_crash) {
  fl_rng rng;
  fl_rng_seed(&rng, 7);
  uint8_t buf[64];
  for (int t = 0; t < 20000; t++) {
    size_t n = fl_rng_below(&rng, sizeof buf + 1);
    for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)fl_rng_u64(&rng);
    Fl__Envelope *o;
    int rc = fl_msg_decode(buf, n, &o);
    cr_assert(rc == 0 || rc == FL_EPROTO);
    cr_assert((rc == 0) == (o != NULL));
    fl_msg_free(o);
  }
}

static size_t put_varint(uint8_t *o, uint64_t v) {
  size_t i = 0;
  for (; v >= 0x80; v >>= 7) o[i++] = (uint8_t)(v | 0x80);
  o[i++] = (uint8_t)v;
  return i;
}

/* Tiny repeated fields would make protobuf-c allocate many times the payload. */
Test(msg, decode_heap_is_bounded) {
  size_t count = 32768, n = 0;
  uint8_t *p = malloc(2 * count + 16);
  p[n++] = 0x0a; /* hello */
  n += put_varint(p + n, 2 * count);
  for (size_t i = 0; i < count; i++) {
    p[n++] = 0x2a; /* capabilities: "" */
    p[n++] = 0x00;
  }
  Fl__Envelope *o;
  cr_assert_eq(fl_msg_decode(p, n, &o), FL_EPROTO);
  cr_assert_null(o);
  /* The same shape at a sane size is fine. */
  n = 0;
  p[n++] = 0x0a;
  n += put_varint(p + n, 2 * 100);
  for (size_t i = 0; i < 100; i++) {
    p[n++] = 0x2a;
    p[n++] = 0x00;
  }
  cr_assert_eq(fl_msg_decode(p, n, &o), 0);
  cr_assert_eq(o->hello->n_capabilities, 100);
  fl_msg_free(o);
  free(p);
}

/* Sends values through tx, decodes each chunk and feeds rx; returns chunks used. */
static uint64_t tensor_roundtrip(const float *values, uint64_t n, uint32_t chunk_bytes) {
  float *dst = malloc((n ? n : 1) * sizeof *dst);
  fl_tensor_tx tx;
  fl_tensor_tx_init(&tx, values, n, chunk_bytes);
  fl_tensor_rx rx;
  fl_tensor_rx_init(&rx, dst, n);
  uint64_t chunks = 0;
  int done = 0;
  uint8_t *buf;
  size_t len;
  int rc;
  while ((rc = fl_tensor_tx_next(&tx, &buf, &len)) == 1) {
    cr_assert_not(done, "a chunk after the receiver completed");
    cr_assert_leq(len, (size_t)chunk_bytes + 32, "chunk of %zu bytes", len);
    Fl__Envelope *e;
    cr_assert_eq(fl_msg_decode(buf, len, &e), 0);
    cr_assert_eq(e->body_case, FL__ENVELOPE__BODY_CHUNK);
    char err[128];
    int r = fl_tensor_rx_add(&rx, e->chunk, err, sizeof err);
    cr_assert_geq(r, 0, "%s", err);
    done = r;
    fl_msg_free(e);
    free(buf);
    chunks++;
  }
  cr_assert_eq(rc, 0);
  cr_assert_null(buf);
  cr_assert(done, "receiver never completed (n=%llu)", (unsigned long long)n);
  cr_assert_eq(fl_tensor_tx_next(&tx, &buf, &len), 0, "tx keeps saying done");
  cr_assert(n == 0 || memcmp(dst, values, n * sizeof *dst) == 0);
  free(dst);
  return chunks;
}

Test(msg, tensor_roundtrip_sizes) {
  enum { CHUNK = 64 }; /* bytes: 16 values */
  float v[4 * CHUNK];
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) v[i] = (float)i * 0.5f - 7.25f;
  cr_assert_eq(tensor_roundtrip(v, 0, CHUNK), 1, "empty tensor: one empty chunk");
  cr_assert_eq(tensor_roundtrip(v, 1, CHUNK), 1);
  cr_assert_eq(tensor_roundtrip(v, 15, CHUNK), 1);
  cr_assert_eq(tensor_roundtrip(v, 16, CHUNK), 1);
  cr_assert_eq(tensor_roundtrip(v, 17, CHUNK), 2);
  cr_assert_eq(tensor_roundtrip(v, 200, CHUNK), 13);
  /* chunk_bytes below one value still moves one value per chunk. */
  cr_assert_eq(tensor_roundtrip(v, 5, 3), 5);
  cr_assert_eq(tensor_roundtrip(v, 5, 0), 5);
  cr_assert_eq(tensor_roundtrip(v, 5, 6), 5);
}

Test(msg, tensor_roundtrip_megabytes, .timeout = 60) {
  uint64_t n = 3u << 20 >> 2; /* 3 MiB of float32 */
  float *v = malloc(n * sizeof *v);
  fl_rng rng;
  fl_rng_seed(&rng, 3);
  for (uint64_t i = 0; i < n; i++) v[i] = fl_rng_normal(&rng);
  cr_assert_eq(tensor_roundtrip(v, n, 4096), n * 4 / 4096);
  cr_assert_eq(tensor_roundtrip(v, n, 4093), (n + 1022) / 1023);
  cr_assert_eq(tensor_roundtrip(v, n, FL_CHUNK_DEFAULT), 3);
  free(v);
}

Test(msg, tensor_chunk_is_little_endian) {
  float one = 1.0f; /* 0x3f800000 */
  fl_tensor_tx tx;
  fl_tensor_tx_init(&tx, &one, 1, 4);
  uint8_t *buf;
  size_t len;
  cr_assert_eq(fl_tensor_tx_next(&tx, &buf, &len), 1);
  Fl__Envelope *e;
  cr_assert_eq(fl_msg_decode(buf, len, &e), 0);
  cr_assert_eq(e->chunk->data.len, 4);
  static const uint8_t want[4] = {0x00, 0x00, 0x80, 0x3f};
  cr_assert_eq(memcmp(e->chunk->data.data, want, 4), 0);
  cr_assert_eq(e->chunk->encoding, FL__ENCODING__ENCODING_FLOAT32);
  fl_msg_free(e);
  free(buf);
}

/* A chunk over caller-held bytes. */
static Fl__TensorChunk chunk(uint64_t offset, uint64_t total, const void *data, size_t len) {
  Fl__TensorChunk c = FL__TENSOR_CHUNK__INIT;
  c.offset = offset;
  c.total = total;
  c.data.data = (uint8_t *)data;
  c.data.len = len;
  return c;
}

Test(msg, tensor_rx_rejects) {
  float dst[8], v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  char err[160];
  fl_tensor_rx rx;

  fl_tensor_rx_init(&rx, dst, 8);
  Fl__TensorChunk c = chunk(0, 8, v, 16);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), 0);
  c = chunk(8, 8, v, 16); /* skips ahead */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "offset 8, expected 4"), "%s", err);
  c = chunk(0, 8, v, 16); /* goes back */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  c = chunk(4, 9, v, 16); /* total changed */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "announces 9 values, the tensor has 8"), "%s", err);
  c = chunk(4, 8, v, 20); /* one value too many */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "covers 5 values at 4 of 8"), "%s", err);
  c = chunk(4, 8, v, 15); /* not whole values */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "not whole float32 values"), "%s", err);
  c = chunk(4, 8, v, 0); /* no progress */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  c = chunk(4, 8, v, 16);
  c.count = 3; /* says another count than its data holds */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  c.count = 0;
  c.encoding = FL__ENCODING__ENCODING_INT8_AFFINE;
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EFORMAT);
  cr_assert(strstr(err, "ENCODING_INT8_AFFINE") && strstr(err, "expected ENCODING_FLOAT32"), "%s", err);
  c.encoding = (Fl__Encoding)77; /* unknown on the wire */
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, NULL, 0), FL_EFORMAT);
  cr_assert_eq(rx.have, 4, "failed chunks change nothing");
  /* The good continuation still works, and nothing may follow completion. */
  c = chunk(4, 8, v + 4, 16);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), 1, "%s", err);
  cr_assert_eq(memcmp(dst, v, sizeof v), 0);
  c = chunk(8, 8, v, 0);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
  cr_assert(strstr(err, "complete"), "%s", err);

  /* A huge announced chunk against a small tensor: refused, not written. */
  fl_tensor_rx_init(&rx, dst, 2);
  c = chunk(0, 2, v, 32);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);

  /* An empty tensor takes exactly one empty chunk. */
  fl_tensor_rx_init(&rx, NULL, 0);
  c = chunk(0, 0, NULL, 0);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), 1);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_EPROTO);
}

Test(msg, tensor_rx_nonfinite) {
  float dst[4], v[4] = {1, 2, NAN, 4};
  char err[160];
  fl_tensor_rx rx;
  fl_tensor_rx_init(&rx, dst, 4);
  Fl__TensorChunk c = chunk(0, 4, v, 8);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), 0);
  c = chunk(2, 4, v + 2, 8);
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_ENONFINITE);
  cr_assert(strstr(err, "value 2 is not finite"), "%s", err);
  v[2] = -INFINITY;
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_ENONFINITE);
  v[2] = INFINITY;
  cr_assert_eq(fl_tensor_rx_add(&rx, &c, err, sizeof err), FL_ENONFINITE);
}

/* Every encoding through TensorChunk messages and back, as a peer would see it. */
Test(msg, tensor_every_encoding) {
  enum { N = 3001 };
  static float v[N], out[N];
  for (int i = 0; i < N; i++) v[i] = (float)((i * 37) % 101) / 100.0f - 0.5f;
  const char *specs[] = {"float32", "float16", "int8", "int8:stochastic", "topk:0.1"};
  for (size_t s = 0; s < sizeof specs / sizeof *specs; s++) {
    fl_codec cd;
    char err[160];
    cr_assert_eq(fl_codec_parse(specs[s], &cd, err, sizeof err), 0);
    fl_tensor_tx tx;
    cr_assert_eq(fl_tensor_tx_init_codec(&tx, &cd, v, N, 1000, 7), 0);
    fl_tensor_rx rx;
    fl_tensor_rx_init_enc(&rx, out, N, cd.enc, cd.enc == FL_ENC_TOPK ? fl_codec_topk_count(&cd, N) : 0);
    uint8_t *buf;
    size_t len;
    int rc, done = 0;
    while ((rc = fl_tensor_tx_next(&tx, &buf, &len)) == 1) {
      Fl__Envelope *e;
      cr_assert_eq(fl_msg_decode(buf, len, &e), 0);
      free(buf);
      int r = fl_tensor_rx_add(&rx, e->chunk, err, sizeof err);
      fl_msg_free(e);
      cr_assert_geq(r, 0, "%s: %s", specs[s], err);
      done = r;
    }
    cr_assert_eq(rc, 0);
    cr_assert(done, "%s never completed", specs[s]);
    cr_assert_eq(rx.payload, tx.payload);
    double worst = 0;
    for (int i = 0; i < N; i++) worst = fmax(worst, fabs((double)out[i] - v[i]));
    double bound = cd.enc == FL_ENC_FLOAT32 ? 0 : cd.enc == FL_ENC_FLOAT16 ? 1e-3 :
                   cd.enc == FL_ENC_INT8 ? 1.0 / 255 : 0.5;
    cr_assert_leq(worst, bound, "%s: off by %g", specs[s], worst);
  }
}

static Fl__Hello hello(uint32_t newest, uint32_t *versions, size_t n) {
  Fl__Hello h = FL__HELLO__INIT;
  h.protocol_version = newest;
  h.supported_versions = versions;
  h.n_supported_versions = n;
  return h;
}

Test(msg, version_negotiation) {
  uint32_t chosen = 99;
  Fl__Hello h = hello(FL_PROTOCOL_VERSION, NULL, 0);
  cr_assert_eq(fl_version_negotiate(&h, &chosen), 0);
  cr_assert_eq(chosen, FL_PROTOCOL_VERSION);

  uint32_t newer[] = {FL_PROTOCOL_VERSION + 1, FL_PROTOCOL_VERSION};
  h = hello(FL_PROTOCOL_VERSION + 1, newer, 2);
  cr_assert_eq(fl_version_negotiate(&h, &chosen), 0, "a newer client that still speaks ours");
  cr_assert_eq(chosen, FL_PROTOCOL_VERSION);

  h = hello(FL_PROTOCOL_VERSION + 1, NULL, 0);
  cr_assert_eq(fl_version_negotiate(&h, &chosen), FL_EVERSION, "only a newer version");
  cr_assert_eq(chosen, 0);

  uint32_t only_new[] = {FL_PROTOCOL_VERSION + 1, FL_PROTOCOL_VERSION + 2};
  h = hello(FL_PROTOCOL_VERSION + 2, only_new, 2);
  cr_assert_eq(fl_version_negotiate(&h, &chosen), FL_EVERSION);

  h = hello(0, NULL, 0);
  cr_assert_eq(fl_version_negotiate(&h, &chosen), FL_EVERSION, "no version at all");
  cr_assert_eq(fl_version_negotiate(NULL, &chosen), FL_EVERSION);
}

/* Every body the schema defines has a name: logs, and the frame fuzzer, rely on it. */
Test(msg, every_body_has_a_name) {
  const ProtobufCMessageDescriptor *d = &fl__envelope__descriptor;
  unsigned bodies = 0;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) continue;
    Fl__Envelope env = FL__ENVELOPE__INIT;
    env.body_case = (Fl__Envelope__BodyCase)f->id;
    cr_assert_str_neq(fl_msg_name(&env), "unknown", "body %s (field %u)", f->name, f->id);
    bodies++;
  }
  cr_assert_geq(bodies, 19);
}
