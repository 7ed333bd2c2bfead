/* What an operator watches (--http HOST:PORT): the totals of the run so far, the round
 * history, and the two documents the HTTP endpoint (http.h) serves, built here on the
 * loop's thread from the server's state:
 *
 *   /metrics  the Prometheus text exposition: fl_ prefix, counters end in _total, base
 *             units (seconds, bytes); round durations as a histogram
 *   /status   JSON: the server, its configuration, the round under way (with the
 *             selected clients' mean progress), the totals, the last HISTORY rounds, and
 *             each client (up to MAX_LISTED): identity, address, state, when last heard
 *             from, rounds taken part in, its last update's examples and loss, progress
 *
 * The page at "/" (status_page.c) reads /status.  Counters count from this process's
 * start (a restart resets them, as Prometheus expects of counters); rounds completed
 * counts those this process completed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "http.h"
#include "log.h"
#include "server_internal.h"
#include "version.h"

#define HISTORY 1000     /* rounds /status lists (the page's chart) */
#define MAX_LISTED 5000  /* clients /status lists (it counts them all) */

/* Refusals by kind: the label of fl_updates_refused_total.  The first entry whose
 * needle the reason contains names it; "other" otherwise. */
static const struct { const char *needle, *kind; } refusal_kinds[] = {
    {"stale update", "stale"},
    {"but the current round", "wrong_round"},
    {"not selected", "not_selected"},
    {"second update", "duplicate"},
    {"is for model", "wrong_model"},
    {"no examples", "no_examples"},
    {"in encoding", "wrong_encoding"},
    {"claims", "too_many_examples"},
    {"norm", "norm_bound"},
    {"closed", "round_closed"},
    {"too large", "too_large"},
    {"takes more than", "too_large"},
    {"no room", "no_room"},
    {"secure", "secure_aggregation"},
    {"mask", "secure_aggregation"},
    {"non-finite", "non_finite"},
    {"NaN", "non_finite"},
};
#define N_KINDS (sizeof refusal_kinds / sizeof refusal_kinds[0] + 1) /* + other */

static const double buckets[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])

typedef struct past_round {
  uint64_t number;
  double train_loss, train_acc, test_loss, test_acc, seconds;
  size_t selected, accepted;
} past_round;

struct srv_status {
  fl_http *http;
  uint64_t started_ms;
  time_t started;
  uint64_t rounds, selected, accepted, dropped, failed, fold_passes;
  uint64_t refused[N_KINDS];
  uint64_t hist[N_BUCKETS];  /* cumulative: rounds that took at most buckets[i] */
  double seconds_sum;
  double train_loss, train_acc, test_loss, test_acc; /* the last round's (NAN: none) */
  int threads;               /* I/O threads */
  uint64_t *thread_in, *thread_out; /* [threads] frame bytes each way */
  past_round *past;          /* [HISTORY] a ring */
  size_t n_past, next_past;
};

static const char *phase_names[] = {"waiting", "training", "aggregating", "unmasking", "summing",
                                    "applying", "evaluating", "federated_evaluation", "done"};

/* ---- totals ---- */

void srv_status_refused(server *s, const char *reason) {
  size_t k = N_KINDS - 1;
  for (size_t i = 0; i + 1 < N_KINDS; i++)
    if (strstr(reason, refusal_kinds[i].needle)) {
      k = i;
      break;
    }
  s->status->refused[k]++;
}

void srv_status_io(client *c, size_t in, size_t out) {
  struct srv_status *st = c->srv->status;
  int t = fl_peer_thread(c->peer);
  if (t < 0 || t >= st->threads) return;
  st->thread_in[t] += in;
  st->thread_out[t] += out;
}

void srv_status_round_done(server *s, double seconds, double train_loss, double train_acc) {
  struct srv_status *st = s->status;
  const round_stats *r = &s->r;
  st->rounds++;
  st->selected += r->selected;
  st->accepted += r->accepted;
  st->dropped += r->dropped;
  st->failed += r->failed;
  st->fold_passes += r->fold_passes;
  for (size_t i = 0; i < N_BUCKETS; i++)
    if (seconds <= buckets[i]) st->hist[i]++;
  st->seconds_sum += seconds;
  st->train_loss = train_loss;
  st->train_acc = train_acc;
  if (r->tested) {
    st->test_loss = r->test_loss;
    st->test_acc = r->test_acc;
  }
  past_round *p = &st->past[st->next_past];
  *p = (past_round){r->number, train_loss, train_acc, r->tested ? r->test_loss : NAN,
                    r->tested ? r->test_acc : NAN, seconds, r->selected, r->accepted};
  st->next_past = (st->next_past + 1) % HISTORY;
  if (st->n_past < HISTORY) st->n_past++;
  fl_http_invalidate(st->http); /* the next request sees the round's end */
}

/* ---- /metrics ---- */

static void head(FILE *f, const char *name, const char *type, const char *help) {
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void value(FILE *f, const char *name, double v) {
  if (isnan(v)) fprintf(f, "%s NaN\n", name);
  else fprintf(f, "%s %.17g\n", name, v);
}

static void metric(FILE *f, const char *name, const char *type, const char *help, double v) {
  head(f, name, type, help);
  value(f, name, v);
}

static long resident_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = -1, rss = -1;
  if (!f) return -1;
  if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = -1;
  fclose(f);
  return rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE);
}

static void write_metrics(server *s, FILE *f) {
  struct srv_status *st = s->status;
  const round_stats *r = &s->r;
  metric(f, "fl_rounds_planned", "gauge", "Rounds the run is configured for.", s->cfg->rounds);
  metric(f, "fl_rounds_completed_total", "counter", "Rounds this process completed.", (double)st->rounds);
  metric(f, "fl_round", "gauge", "The round under way (or the last one).", (double)r->number);
  metric(f, "fl_round_attempt", "gauge", "Attempt of the round under way.", (double)r->attempt);
  head(f, "fl_round_phase", "gauge", "1 for the phase the round is in.");
  for (int i = 0; i <= PH_DONE; i++)
    fprintf(f, "fl_round_phase{phase=\"%s\"} %d\n", phase_names[i], s->ph == (phase)i);
  metric(f, "fl_round_clients_selected", "gauge", "Clients selected for the attempt under way.", (double)r->selected);
  metric(f, "fl_round_updates_accepted", "gauge", "Updates accepted so far in the attempt under way.", (double)r->accepted);
  metric(f, "fl_clients_connected", "gauge", "Connections open (TLS handshake done).", (double)s->n_clients);
  uint64_t hs_failed = 0;
  for (int i = 0; i < fl_io_threads(s->io); i++) hs_failed += fl_io_thread_handshakes_failed(s->io, i);
  metric(f, "fl_handshakes_failed_total", "counter", "Connections that ended before their TLS "
         "handshake was complete (the log names at most 10 in 10 s per I/O thread).", (double)hs_failed);
  metric(f, "fl_clients_ready", "gauge", "Clients that said hello and take tasks.", (double)s->n_ready);
  metric(f, "fl_clients_selected_total", "counter", "Clients selected, over completed rounds.", (double)st->selected);
  metric(f, "fl_updates_accepted_total", "counter", "Updates folded into the global model.", (double)st->accepted);
  head(f, "fl_updates_refused_total", "counter", "Updates refused, by kind of reason.");
  for (size_t i = 0; i < N_KINDS; i++)
    fprintf(f, "fl_updates_refused_total{reason=\"%s\"} %llu\n",
            i + 1 < N_KINDS ? refusal_kinds[i].kind : "other", (unsigned long long)st->refused[i]);
  metric(f, "fl_clients_dropped_total", "counter", "Selected clients that left before answering, over completed rounds.", (double)st->dropped);
  metric(f, "fl_clients_failed_total", "counter", "Selected clients that reported they could not train, over completed rounds.", (double)st->failed);
  metric(f, "fl_received_bytes_total", "counter", "Bytes of frames received from clients.", (double)s->bytes_in);
  metric(f, "fl_sent_bytes_total", "counter", "Bytes of frames sent to clients.", (double)s->bytes_out);
  metric(f, "fl_fold_passes_total", "counter", "Passes of the strategy's fold, over completed rounds.", (double)st->fold_passes);
  head(f, "fl_round_duration_seconds", "histogram", "Time from a round's first selection to its end.");
  for (size_t i = 0; i < N_BUCKETS; i++)
    fprintf(f, "fl_round_duration_seconds_bucket{le=\"%g\"} %llu\n", buckets[i], (unsigned long long)st->hist[i]);
  fprintf(f, "fl_round_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)st->rounds);
  fprintf(f, "fl_round_duration_seconds_sum %.17g\n", st->seconds_sum);
  fprintf(f, "fl_round_duration_seconds_count %llu\n", (unsigned long long)st->rounds);
  metric(f, "fl_train_loss", "gauge", "Mean training loss of the last round's updates (weighted as they were).", st->train_loss);
  metric(f, "fl_train_accuracy", "gauge", "Mean training accuracy of the last round's updates.", st->train_acc);
  metric(f, "fl_test_loss", "gauge", "Loss of the global model on the server's test data, last evaluated.", st->test_loss);
  metric(f, "fl_test_accuracy", "gauge", "Accuracy of the global model on the server's test data, last evaluated.", st->test_acc);
  metric(f, "fl_model_parameters", "gauge", "Parameters of the global model.", (double)s->n);
  metric(f, "fl_resident_memory_bytes", "gauge", "Resident memory of the server process.", (double)resident_bytes());
  long peak = srv_peak_rss_kib();
  metric(f, "fl_peak_resident_memory_bytes", "gauge", "Peak resident memory of the server process.", peak < 0 ? NAN : (double)peak * 1024);
  metric(f, "fl_start_time_seconds", "gauge", "When the server started, in seconds since the epoch.", (double)st->started);
  if (s->dp) metric(f, "fl_privacy_epsilon", "gauge", "Epsilon spent so far (differential privacy).", r->epsilon);
  int threads = fl_io_threads(s->io);
  head(f, "fl_io_thread_connections", "gauge", "Connections each TLS I/O thread holds.");
  for (int i = 0; i < threads; i++)
    fprintf(f, "fl_io_thread_connections{thread=\"%d\"} %d\n", i, fl_io_thread_connections(s->io, i));
  /* the ready clients each thread serves, as the loop sees them */
  int *ready = calloc((size_t)threads, sizeof *ready);
  if (ready) {
    for (client *c = s->clients; c; c = c->next) {
      int t = fl_peer_thread(c->peer);
      if (c->ready && t >= 0 && t < threads) ready[t]++;
    }
    head(f, "fl_io_thread_clients_ready", "gauge", "Ready clients on each TLS I/O thread.");
    for (int i = 0; i < threads; i++) fprintf(f, "fl_io_thread_clients_ready{thread=\"%d\"} %d\n", i, ready[i]);
    free(ready);
  }
  head(f, "fl_io_thread_received_bytes_total", "counter", "Bytes of frames received on each TLS I/O thread.");
  for (int i = 0; i < st->threads; i++)
    fprintf(f, "fl_io_thread_received_bytes_total{thread=\"%d\"} %llu\n", i, (unsigned long long)st->thread_in[i]);
  head(f, "fl_io_thread_sent_bytes_total", "counter", "Bytes of frames sent on each TLS I/O thread.");
  for (int i = 0; i < st->threads; i++)
    fprintf(f, "fl_io_thread_sent_bytes_total{thread=\"%d\"} %llu\n", i, (unsigned long long)st->thread_out[i]);
}

/* ---- /status ---- */

static void jnum(FILE *f, const char *key, double v) {
  fprintf(f, "\"%s\":", key);
  if (isfinite(v)) fprintf(f, "%.6g", v);
  else fputs("null", f);
}

static void jstr(FILE *f, const char *key, const char *v) {
  fprintf(f, "\"%s\":", key);
  if (v) srv_json_str(f, v);
  else fputs("null", f);
}

static const char *client_state(const server *s, const client *c) {
  if (c->closing) return "leaving";
  if (!c->ready) return "joining";
  if (c == s->init_from) return "sending initial parameters";
  if (srv_selected_now(c) && !c->counted) {
    if (c->tx_active) return "receiving model";
    if (c->rx == RX_UPDATE) return "sending update";
    if (c->rx == RX_WAIT_BUF) return "waiting to send";
    return "training";
  }
  if (c->eval_pending) return c->tx_active ? "receiving model" : "evaluating";
  if (srv_selected_now(c)) return "done";
  return "idle";
}

static void write_config(const server *s, FILE *f) {
  const server_config *c = s->cfg;
  fputc('{', f);
  jstr(f, "listen", c->listen); fputc(',', f);
  jstr(f, "model", fl_model_spec(s->model)); fputc(',', f);
  fprintf(f, "\"parameters\":%zu,\"rounds\":%d,", s->n, c->rounds);
  jnum(f, "clients_per_round", c->clients_per_round); fputc(',', f);
  fprintf(f, "\"min_clients\":%d,\"min_updates\":%d,", c->min_clients, c->min_updates);
  jnum(f, "round_timeout", c->round_timeout); fputc(',', f);
  jstr(f, "strategy", fl_strategy_spec(s->strategy)); fputc(',', f);
  jstr(f, "weights", c->weights); fputc(',', f);
  jstr(f, "uplink", c->uplink); fputc(',', f);
  jstr(f, "downlink", c->downlink); fputc(',', f);
  fprintf(f, "\"epochs\":%d,\"batch_size\":%d,", c->epochs, c->batch_size);
  jnum(f, "lr", c->lr); fputc(',', f);
  jstr(f, "optimizer", c->optimizer); fputc(',', f);
  fprintf(f, "\"secure_aggregation\":%s,", c->secagg ? "true" : "false");
  jnum(f, "dp_clip", c->dp_clip); fputc(',', f);
  jnum(f, "dp_noise", c->dp_noise); fputc(',', f);
  jstr(f, "test_data", c->test_data); fputc(',', f);
  fprintf(f, "\"eval_every\":%d,\"fed_eval_every\":%d,", c->eval_every, c->fed_eval_every);
  jstr(f, "metrics", c->metrics); fputc(',', f);
  jstr(f, "out", c->out); fputc(',', f);
  fprintf(f, "\"io_threads\":%d}", fl_io_threads(s->io));
}

static void write_status(server *s, FILE *f) {
  struct srv_status *st = s->status;
  const round_stats *r = &s->r;
  uint64_t now = uv_now(&s->loop);
  fputs("{\"server\":{", f);
  jstr(f, "version", FL_VERSION);
  fprintf(f, ",\"started\":%lld,", (long long)st->started);
  jnum(f, "uptime_seconds", (double)(now - st->started_ms) / 1000.0);
  fputs(",\"config\":", f);
  write_config(s, f);
  /* the round: the selected clients' mean progress, an answer counting as done */
  double done = 0;
  size_t in_round = 0;
  for (client *c = s->clients; c; c = c->next)
    if (srv_selected_now(c) && !c->counted) {
      done += c->progress;
      in_round++;
    }
  double progress = s->ph == PH_TRAINING && r->selected
                        ? ((double)r->answered + done) / (double)r->selected
                        : s->ph == PH_WAITING ? 0 : 1;
  fputs("},\"round\":{", f);
  fprintf(f, "\"number\":%llu,\"attempt\":%llu,\"phase\":\"%s\",\"selected\":%zu,\"target\":%zu,"
          "\"answered\":%zu,\"accepted\":%zu,\"refused\":%zu,\"dropped\":%zu,\"training\":%zu,",
          (unsigned long long)r->number, (unsigned long long)r->attempt, phase_names[s->ph],
          r->selected, r->target, r->answered, r->accepted, r->refused, r->dropped, in_round);
  jnum(f, "progress", progress > 1 ? 1 : progress);
  fputc(',', f);
  jnum(f, "elapsed_seconds", r->timing ? (double)(now - r->t0) / 1000.0 : 0);
  uint64_t refused = 0;
  for (size_t i = 0; i < N_KINDS; i++) refused += st->refused[i];
  fprintf(f, "},\"totals\":{\"rounds_completed\":%llu,\"updates_accepted\":%llu,\"updates_refused\":%llu,"
          "\"clients_dropped\":%llu,\"bytes_received\":%llu,\"bytes_sent\":%llu},",
          (unsigned long long)st->rounds, (unsigned long long)st->accepted,
          (unsigned long long)refused, (unsigned long long)st->dropped,
          (unsigned long long)s->bytes_in, (unsigned long long)s->bytes_out);
  fputs("\"history\":[", f);
  size_t first = (st->next_past + HISTORY - st->n_past) % HISTORY;
  for (size_t i = 0; i < st->n_past; i++) {
    const past_round *p = &st->past[(first + i) % HISTORY];
    fprintf(f, "%s{\"round\":%llu,", i ? "," : "", (unsigned long long)p->number);
    jnum(f, "train_loss", p->train_loss); fputc(',', f);
    jnum(f, "train_accuracy", p->train_acc); fputc(',', f);
    jnum(f, "test_loss", p->test_loss); fputc(',', f);
    jnum(f, "test_accuracy", p->test_acc); fputc(',', f);
    jnum(f, "seconds", p->seconds);
    fprintf(f, ",\"selected\":%zu,\"accepted\":%zu}", p->selected, p->accepted);
  }
  fprintf(f, "],\"clients_connected\":%zu,\"clients_ready\":%zu,\"clients_listed\":%zu,\"clients\":[",
          s->n_clients, s->n_ready, s->n_clients < MAX_LISTED ? s->n_clients : (size_t)MAX_LISTED);
  size_t listed = 0;
  for (client *c = s->clients; c && listed < MAX_LISTED; c = c->next, listed++) {
    fputs(listed ? ",{" : "{", f);
    jstr(f, "id", c->id[0] ? c->id : NULL); fputc(',', f);
    jstr(f, "address", fl_peer_addr(c->peer)); fputc(',', f);
    jstr(f, "state", client_state(s, c)); fputc(',', f);
    fprintf(f, "\"selected\":%s,", srv_selected_now(c) ? "true" : "false");
    jnum(f, "connected_seconds", (double)(now - c->joined_ms) / 1000.0); fputc(',', f);
    jnum(f, "last_heard_seconds_ago", (double)(now - c->heard_ms) / 1000.0); fputc(',', f);
    fprintf(f, "\"examples_declared\":%llu,\"rounds\":%llu,", (unsigned long long)c->num_samples,
            (unsigned long long)c->rounds_in);
    fputs("\"last_examples\":", f);
    if (c->rounds_in) fprintf(f, "%llu,", (unsigned long long)c->last_examples);
    else fputs("null,", f);
    jnum(f, "last_loss", c->rounds_in ? c->last_loss : NAN); fputc(',', f);
    jnum(f, "progress", c->progress);
    fputc('}', f);
  }
  fputs("]}\n", f);
}

static int build(void *arg, int doc, char **out, size_t *len) {
  server *s = arg;
  FILE *f = open_memstream(out, len);
  if (!f) return FL_ENOMEM;
  if (doc == FL_HTTP_METRICS) write_metrics(s, f);
  else write_status(s, f);
  if (fclose(f) != 0) {
    free(*out);
    *out = NULL;
    return FL_ENOMEM;
  }
  return 0;
}

/* ---- set-up ---- */

extern const char srv_status_page[];

int srv_status_create(server *s, char *err, size_t errlen) {
  const server_config *c = s->cfg;
  if (!c->http || !c->http[0]) return 0;
  char host[256];
  int port;
  if (server_http_address(c->http, host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "--http: expected HOST:PORT or PORT, got '%s'", c->http);
    return FL_ECONFIG;
  }
  struct srv_status *st = calloc(1, sizeof *st);
  int threads = fl_io_threads(s->io);
  if (!st || !(st->past = calloc(HISTORY, sizeof *st->past)) ||
      !(st->thread_in = calloc((size_t)threads, sizeof *st->thread_in)) ||
      !(st->thread_out = calloc((size_t)threads, sizeof *st->thread_out))) {
    if (st) {
      free(st->past);
      free(st->thread_in);
    }
    free(st);
    snprintf(err, errlen, "out of memory");
    return FL_ENOMEM;
  }
  st->threads = threads;
  st->started_ms = uv_now(&s->loop);
  st->started = time(NULL);
  st->train_loss = st->train_acc = st->test_loss = st->test_acc = NAN;
  s->status = st;
  fl_http_options o = {.host = host, .port = port, .max_connections = (unsigned)c->http_connections,
                       .timeout_s = (unsigned)c->http_timeout, .page = srv_status_page,
                       .build = build, .arg = s};
  int rc = fl_http_start(&s->loop, &o, &st->http, err, errlen);
  if (rc) {
    srv_status_free(s);
    return rc;
  }
  fl_info("server", "status page on http://%s%s%s:%d/ (metrics at /metrics, JSON at /status)",
          strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", fl_http_port(st->http));
  return 0;
}

void srv_status_free(server *s) {
  struct srv_status *st = s->status;
  if (!st) return;
  fl_http_free(st->http);
  free(st->past);
  free(st->thread_in);
  free(st->thread_out);
  free(st);
  s->status = NULL;
}
