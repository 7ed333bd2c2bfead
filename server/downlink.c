/* fl-server's compressed downlink: the global model encoded once per model version.
 *
 * With --downlink float16 or int8 the model is encoded when a round (or a federated
 * evaluation) first needs it, and every client that offered the encoding is sent those
 * same frames: the encoding costs one pass per model, not one per client.  The server then
 * replaces its global model by the decoded values, so that a client sent float32 (one that
 * did not offer the encoding) trains from exactly the model the others decode, and the
 * deltas of all of them are taken against it.  Memory: the frames, about half (float16) or
 * a quarter (int8) of a model size.
 *
 * With --freeze, the model is chunked at the frozen runs' bounds (fl_encoder_split): a
 * frame lies inside a run or outside all of them, and the frames outside are the stream
 * that leaves the runs out, for the clients that keep the frozen values (broadcast.c).
 * Those values are then what the clients decode, so the id the tasks give them
 * (frozen_id) is taken over the decoded model: float16, and int8 without stochastic
 * rounding, round a frame of frozen values the same way every time, and so the id stays
 * the same from one model version to the next. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "log.h"
#include "server_internal.h"

void srv_downlink_free(server *s) {
  for (size_t i = 0; i < s->down_count; i++) free(s->down_frame[i]);
  free(s->down_frame);
  free(s->down_len);
  free(s->down_in_run);
  s->down_frame = NULL;
  s->down_len = NULL;
  s->down_in_run = NULL;
  s->down_count = s->down_cap = s->down_out = 0;
  s->down_valid = 0;
}

static int keep_frame(server *s, uint8_t *buf, size_t len, int in_run) {
  if (s->down_count == s->down_cap) {
    size_t cap = s->down_cap ? 2 * s->down_cap : 64;
    uint8_t **f = realloc(s->down_frame, cap * sizeof *f);
    if (!f) return FL_ENOMEM;
    s->down_frame = f;
    size_t *l = realloc(s->down_len, cap * sizeof *l);
    if (!l) return FL_ENOMEM;
    s->down_len = l;
    uint8_t *r = realloc(s->down_in_run, cap * sizeof *r);
    if (!r) return FL_ENOMEM;
    s->down_in_run = r;
    s->down_cap = cap;
  }
  s->down_frame[s->down_count] = buf;
  s->down_in_run[s->down_count] = (uint8_t)in_run;
  s->down_len[s->down_count++] = len;
  s->down_out += !in_run;
  return 0;
}

/* Whether position i lies in a frozen run; *ri: the first run not behind the last
 * position asked (positions are asked in increasing order). */
static int in_frozen_run(const server *s, size_t *ri, uint64_t i) {
  const fl_runs *r = &s->frozen_runs;
  while (*ri < r->n && r->at[2 * *ri + 1] <= i) (*ri)++;
  return *ri < r->n && r->at[2 * *ri] <= i;
}

int srv_downlink_prepare(server *s) {
  if (s->downlink.enc == FL_ENC_FLOAT32) return 0;
  if (s->down_valid && s->down_version == s->model_version) return 0;
  for (size_t i = 0; i < s->down_count; i++) free(s->down_frame[i]);
  s->down_count = s->down_out = 0;
  s->down_valid = 0;
  uint32_t chunk = (uint32_t)s->cfg->chunk_kib * 1024u;
  fl_encoder e;
  int rc = fl_encoder_init(&e, &s->downlink, s->global, s->n, chunk, s->model_version);
  if (rc == 0 && s->frozen_runs.n) fl_encoder_split(&e, &s->frozen_runs);
  uint8_t *payload = malloc(chunk < 8 ? 8 : chunk);
  if (!payload) rc = FL_ENOMEM;
  fl_chunk ch;
  size_t ri = 0;
  while (rc == 0 && (rc = fl_encoder_next(&e, &ch, payload)) == 1) {
    uint8_t *frame;
    size_t len;
    rc = fl_msg_chunk(&ch, &frame, &len);
    if (rc == 0 && (rc = keep_frame(s, frame, len, in_frozen_run(s, &ri, ch.offset))) != 0)
      free(frame);
    /* The encoder has read this chunk's values: they become what the clients decode. */
    if (rc == 0) fl_chunk_decode(&ch, s->global);
  }
  free(payload);
  /* what every client is sent now, whole or without the runs, float32 or encoded */
  if (s->frozen_runs.n) s->frozen_id = fl_runs_id(&s->frozen_runs, s->global);
  if (rc < 0) {
    fl_error("server", "encoding the model for the %s downlink failed: %s", fl_enc_name(s->downlink.enc),
             fl_strerror(rc));
    return rc;
  }
  s->down_version = s->model_version;
  s->down_valid = 1;
  if (fl__log_level <= FL_LOG_DEBUG) /* what the clients decode: they log the same */
    fl_debug("server", "model version %llu encoded as %s in %zu frames, crc32 of its float32 "
             "values %08lx", (unsigned long long)s->model_version, fl_enc_name(s->downlink.enc),
             s->down_count, crc32_z(0, (const Bytef *)s->global, s->n * sizeof *s->global));
  return 0;
}

size_t srv_downlink_skip_runs(const server *s, size_t i) {
  while (i < s->down_count && s->down_in_run[i]) i++;
  return i;
}

const uint8_t *srv_downlink_frame(const server *s, size_t i, size_t *len) {
  if (!s->down_valid || i >= s->down_count) return NULL;
  *len = s->down_len[i];
  return s->down_frame[i];
}
