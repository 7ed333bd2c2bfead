/* Crashes, restarts, churn and stalled peers, with the real binaries over real TLS.
 *
 * - fl-server killed with SIGKILL at random moments, at least five times, restarted with
 *   --resume each time: every round is completed exactly once and the final model matches
 *   an uninterrupted run with the same seeds;
 * - SIGTERM: the server stops cleanly, clients wait, a restarted server continues;
 * - churn: six of twenty clients killed mid-run and restarted later;
 * - a client that never answers and one that stalls inside a frame are dropped while the
 *   round goes on with the others. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "conn.h"
#include "log.h"
#include "modelfile.h"
#include "msg.h"
#include "testutil.h"

/* A server of the run `tag` (its model and metrics files), logging to server-LOG.log. */
static pid_t start_server(fl_test_fed *s, const char *tag, const char *log_tag, const char *rounds,
                          int resume) {
  char log[64], out[600], metrics[600];
  snprintf(log, sizeof log, "server-%s.log", log_tag);
  snprintf(out, sizeof out, "%s/model-%s.bin", s->dir, tag);
  snprintf(metrics, sizeof metrics, "%s/metrics-%s.jsonl", s->dir, tag);
  return fl_test_fed_server(s, log, "--model", "2nn", "--rounds", rounds, "--clients-per-round",
                            "4", "--min-clients", "4", "--seed", "3", "--lr", "0.05",
                            "--batch-size", "20", "--epochs", "2", "--out", out, "--metrics",
                            metrics, "--idle-timeout", "10", "--heartbeat", "1",
                            resume ? "--resume" : NULL, NULL);
}

static pid_t start_clients(fl_test_fed *s, const char *tag, const char *n, const char *first) {
  char log[64];
  snprintf(log, sizeof log, "clients-%s.log", tag);
  return fl_test_fed_clients(s, log, "--clients", n, "--cert-index", first, "--data",
                             "fashion-mnist:train", "--max-samples", "4000", "--partition", "iid",
                             "--num-partitions", "4", "--partition-index", "0", "--seed", "9",
                             "--retry-base", "0.05", "--retry-max", "0.3", "--max-retries",
                             "100000", "--workers", "2", "--idle-timeout", "10", "--heartbeat",
                             "1", NULL);
}

static float *load_model(const char *path, size_t *n) {
  char err[512], *spec;
  uint64_t id;
  float *p;
  cr_assert_eq(fl_modelfile_load(path, &spec, &id, &p, n, err, sizeof err), 0, "%s", err);
  free(spec);
  return p;
}

Test(resilience, sigkill_and_resume_match_an_uninterrupted_run, .timeout = 600) {
  fl_test_fed s;
  fl_test_fed_init(&s);
  char path[600];

  /* The reference: one uninterrupted run. */
  pid_t c = start_clients(&s, "ref", "4", "1");
  pid_t srv = start_server(&s, "ref", "ref", "30", 0);
  cr_assert_eq(fl_test_wait(srv, 240), 0, "reference server failed (%s)", s.dir);
  cr_assert_eq(fl_test_wait(c, 30), 0, "reference clients failed (%s)", s.dir);

  /* The same run, killed at random moments and resumed each time. */
  c = start_clients(&s, "kill", "4", "1");
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  srand((unsigned)now.tv_nsec);
  int kills = 0, finished = 0;
  for (int life = 0; life < 40 && !finished; life++) {
    char life_log[64], life_path[700];
    snprintf(life_log, sizeof life_log, "kill-life%d", life);
    snprintf(life_path, sizeof life_path, "%s/server-%s.log", s.dir, life_log);
    srv = start_server(&s, "kill", life_log, "30", 1);
    int rc;
    if (kills < 5) {
      /* Each life completes a round, then dies at any moment: writing that round's
       * checkpoint, training, folding, evaluating the next. */
      fl_test_wait_for(life_path, "/30 done", 120);
      usleep((useconds_t)(rand() % 200000));
      kill(srv, SIGKILL);
      rc = fl_test_wait(srv, 30);
      if (rc == 128 + SIGKILL) {
        kills++;
        continue;
      }
    } else {
      rc = fl_test_wait(srv, 240);
    }
    cr_assert_eq(rc, 0, "server life %d exited with %d (%s)", life, rc, s.dir);
    finished = 1;
  }
  cr_assert(finished, "the run never completed (%s)", s.dir);
  cr_assert_geq(kills, 5);
  cr_assert_eq(fl_test_wait(c, 30), 0, "clients failed (%s)", s.dir);

  int resumed = 0;
  for (int life = 0; life <= kills; life++) {
    snprintf(path, sizeof path, "%s/server-kill-life%d.log", s.dir, life);
    cr_assert_eq(fl_test_count(path, "checkpoint failed"), 0, "%s", path);
    cr_assert_eq(fl_test_count(path, "corrupt"), 0, "%s", path);
    cr_assert(fl_test_sanitizer_clean(path), "%s", path);
    resumed += fl_test_count(path, "resuming from");
  }
  cr_assert_geq(resumed, 1, "never resumed from a checkpoint (%s)", s.dir);
  snprintf(path, sizeof path, "%s/metrics-kill.jsonl", s.dir);
  cr_assert_eq(fl_test_metrics_rounds(path), 30, "rounds lost or run twice: %s", path);

  size_t na, nb;
  snprintf(path, sizeof path, "%s/model-ref.bin", s.dir);
  float *a = load_model(path, &na);
  snprintf(path, sizeof path, "%s/model-kill.bin", s.dir);
  float *b = load_model(path, &nb);
  cr_assert_eq(na, nb);
  double worst = 0;
  for (size_t i = 0; i < na; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
  cr_assert_lt(worst, 1e-5, "resumed model differs by %g", worst);
  free(a);
  free(b);
  fl_test_fed_free(&s);
}

Test(resilience, sigterm_stops_cleanly_and_resume_continues, .timeout = 300) {
  fl_test_fed s;
  fl_test_fed_init(&s);
  char log[600], metrics[600], clog[600];
  snprintf(log, sizeof log, "%s/server-term.log", s.dir);
  snprintf(metrics, sizeof metrics, "%s/metrics-term.jsonl", s.dir);
  snprintf(clog, sizeof clog, "%s/clients-term.log", s.dir);
  pid_t c = start_clients(&s, "term", "4", "1");
  pid_t srv = start_server(&s, "term", "term", "6", 0);
  cr_assert(fl_test_wait_for(log, "round 2/6 done", 120), "no round 2 (%s)", log);
  /* The clients are frozen first, so the server cannot finish the run before the signal
   * lands, however fast it is: at most the round in flight completes. */
  kill(c, SIGSTOP);
  kill(srv, SIGTERM);
  cr_assert_eq(fl_test_wait(srv, 60), 0, "SIGTERM: server did not exit 0 (%s)", log);
  kill(c, SIGCONT);
  cr_assert_eq(fl_test_count(log, "stopped after"), 1);
  int done = fl_test_metrics_rounds(metrics);
  cr_assert(done >= 2 && done < 6, "%d rounds before the stop", done);
  /* The clients were told to come back (or found the server gone); they keep trying. */
  cr_assert(fl_test_wait_for(clog, "reconnecting", 60), "clients do not reconnect (%s)", clog);
  cr_assert(fl_test_running(c), "clients exited while the server was down");
  srv = start_server(&s, "term", "term", "6", 1);
  cr_assert_eq(fl_test_wait(srv, 240), 0, "resumed server failed (%s)", log);
  cr_assert_eq(fl_test_wait(c, 30), 0, "clients failed (%s)", clog);
  cr_assert_eq(fl_test_metrics_rounds(metrics), 6);
  cr_assert_eq(fl_test_count(log, "resuming from"), 1);
  cr_assert(fl_test_sanitizer_clean(log));
  fl_test_fed_free(&s);
}

static pid_t start_group(fl_test_fed *s, const char *tag, const char *n, const char *first,
                         const char *part, const char *crash_round) {
  char log[64];
  snprintf(log, sizeof log, "clients-%s.log", tag);
  return fl_test_fed_clients(s, log, "--clients", n, "--cert-index", first, "--data",
                             "fashion-mnist:train", "--max-samples", "20000", "--partition", "iid",
                             "--num-partitions", "20", "--partition-index", part, "--retry-base",
                             "0.05", "--retry-max", "0.5", "--max-retries", "100000", "--workers",
                             "2", "--sim-crash-round", crash_round, NULL);
}

/* Twenty clients in two processes; the six of one process die (SIGKILL) the moment round
 * 2's tasks reach them, so they are selected and unanswered: round 2 completes without
 * them and the log names each one.  The server needs all twenty to start a round
 * (--min-clients 20), so it cannot run ahead while they are gone, whatever the machine's
 * speed; once they are restarted every later round takes an update from each of them. */
Test(resilience, churn_thirty_percent_killed_and_restarted, .timeout = 600) {
  fl_test_fed s;
  fl_test_fed_init(&s);
  pid_t srv = fl_test_fed_server_ready(&s, "server.log", "--model", "2nn", "--rounds", "5",
                                       "--clients-per-round", "20", "--min-clients", "20",
                                       "--min-updates", "4", "--round-timeout", "600", "--epochs",
                                       "1", "--seed", "5", "--log-level", "debug", NULL);
  cr_assert_gt(srv, 0, "no server (%s)", s.log);
  pid_t a = start_group(&s, "a", "14", "1", "0", "0");
  pid_t b = start_group(&s, "b", "6", "15", "14", "2");
  cr_assert_eq(fl_test_wait(b, 240), 128 + SIGKILL, "clients b did not die in round 2 (%s)", s.dir);
  cr_assert(fl_test_wait_for(s.log, "round 2/5 done", 240), "no round 2 (%s)", s.log);
  pid_t b2 = start_group(&s, "b2", "6", "15", "14", "0");
  cr_assert_eq(fl_test_wait(srv, 300), 0, "server failed (%s)", s.log);
  cr_assert_eq(fl_test_wait(a, 60), 0, "clients a failed (%s)", s.dir);
  cr_assert_eq(fl_test_wait(b2, 60), 0, "restarted clients b failed (%s)", s.dir);

  cr_assert_eq(fl_test_metrics_rounds(s.metrics), 5);
  char *r2 = fl_test_metrics_line(s.metrics, 2);
  cr_assert_not_null(r2);
  cr_assert_eq(fl_test_json_num(r2, "clients_dropped"), 6, "%s", r2);
  cr_assert_eq(fl_test_json_num(r2, "updates_accepted"), 14, "%s", r2);
  free(r2);
  for (int r = 3; r <= 5; r++) {
    char *line = fl_test_metrics_line(s.metrics, r);
    cr_assert_not_null(line);
    cr_assert_eq(fl_test_json_num(line, "updates_accepted"), 20, "%s", line);
    free(line);
  }
  for (int i = 15; i <= 20; i++) {
    char who[96];
    snprintf(who, sizeof who, "round 2: client-%04d dropped out", i);
    cr_assert_eq(fl_test_count(s.log, who), 1, "%s not logged (%s)", who, s.log);
    /* Back after the restart: an update in each later round. */
    for (int r = 3; r <= 5; r++) {
      snprintf(who, sizeof who, "round %d: update from client-%04d (", r, i);
      cr_assert_eq(fl_test_count(s.log, who), 1, "no '%s' (%s)", who, s.log);
    }
  }
  cr_assert(fl_test_sanitizer_clean(s.log));
  fl_test_fed_free(&s);
}

/* ---- peers that stall ---- */

typedef struct staller {
  fl_conn *conn;
  int half_frame;  /* 1: after hello, half a frame header, then nothing */
  int closed;
  char reason[256];
} staller;

static void st_open(fl_conn *c) {
  staller *p = fl_conn_data(c);
  cr_assert_eq(fl_test_send_hello(c, NULL, 100, NULL, 0), 0);
  if (p->half_frame) {
    const uint8_t half[2] = {0, 0};
    fl_conn_send_raw(c, half, sizeof half);
  }
}
static void st_frame(fl_conn *c, const uint8_t *p, size_t n) { (void)c; (void)p; (void)n; }
static void st_drain(fl_conn *c) { (void)c; }
static void st_close(fl_conn *c, int err, const char *reason) {
  staller *p = fl_conn_data(c);
  (void)err;
  p->closed = 1;
  snprintf(p->reason, sizeof p->reason, "%s", reason ? reason : "");
}
static const fl_conn_callbacks st_cb = {st_open, st_frame, st_drain, st_close};

static void st_tick(uv_timer_t *t) {
  staller *p = t->data;
  if (p[0].closed && p[1].closed) uv_close((uv_handle_t *)t, NULL);
}

Test(resilience, silent_and_stalled_clients_are_dropped, .timeout = 300) {
  fl_log_set_level(FL_LOG_ERROR);
  fl_test_fed s;
  fl_test_fed_init(&s);
  pid_t srv = fl_test_fed_server_ready(&s, "server.log", "--model", "logreg", "--rounds", "1",
                                       "--clients-per-round", "4", "--min-clients", "4",
                                       "--round-timeout", "120", "--idle-timeout", "4",
                                       "--heartbeat", "0.4", NULL);
  cr_assert_gt(srv, 0, "no server (%s)", s.log);
  char clog[600];
  fl_test_fed_path(&s, "clients.log", clog, sizeof clog);
  pid_t good = fl_test_fed_clients(&s, "clients.log", "--clients", "2", "--data",
                                   "fashion-mnist:train", "--max-samples", "2000", "--partition",
                                   "iid", "--heartbeat", "0.4", "--idle-timeout", "4", NULL);
  /* The silent peers come once the good clients are in: the round starts the moment
   * they are ready too, however long the good ones took to load their data. */
  cr_assert(fl_test_wait_for_while(s.log, "; 2 clients ready", srv, 120), "good clients never ready (%s)", s.log);

  uv_loop_t loop;
  uv_loop_init(&loop);
  staller p[2] = {{.half_frame = 0}, {.half_frame = 1}};
  fl_tls_config *tls[2];
  fl_conn_options opt;
  fl_conn_options_default(&opt); /* no heartbeat payload: these peers stay silent */
  for (int i = 0; i < 2; i++) {
    char cert[600], key[600], err[512];
    fl_test_client_cert(21 + i, cert, key, sizeof cert);
    cr_assert_eq(fl_test_client_tls(cert, key, &tls[i], err, sizeof err), 0, "%s", err);
        cr_assert_eq(fl_connect(&loop, tls[i], "127.0.0.1", s.port, &opt, &st_cb, &p[i], &p[i].conn), 0);
  }
  uv_timer_t tick;
  uv_timer_init(&loop, &tick);
  tick.data = p;
  uv_timer_start(&tick, st_tick, 50, 50);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 2; i++) fl_tls_config_free(tls[i]);
  uv_loop_close(&loop);

  cr_assert_eq(fl_test_wait(srv, 120), 0, "server failed (%s)", s.log);
  cr_assert_eq(fl_test_wait(good, 30), 0, "good clients failed (%s)", clog);
  cr_assert_eq(fl_test_count(s.metrics, "\"updates_accepted\":2"), 1, "%s", s.metrics);
  cr_assert_eq(fl_test_count(s.metrics, "\"clients_dropped\":2"), 1, "%s", s.metrics);
  cr_assert_eq(fl_test_count(s.log, "timed out with"), 0, "the round waited for its timeout");
  cr_assert_geq(fl_test_count(s.log, "client-0021 dropped out"), 1);
  cr_assert_geq(fl_test_count(s.log, "client-0022 dropped out"), 1);
  cr_assert(fl_test_sanitizer_clean(s.log));
  fl_test_fed_free(&s);
}

/* ---- stragglers ---- */

/* Six clients with size-skewed data, four updates needed: the round closes once the
 * four fastest are in, and the two slowest are refused as stale. */
Test(resilience, over_selection_closes_rounds_without_the_slowest, .timeout = 300) {
  fl_test_fed s;
  fl_test_fed_init(&s);
  char clog[600];
  fl_test_fed_path(&s, "clients.log", clog, sizeof clog);
  pid_t srv = fl_test_fed_server_ready(&s, "server.log", "--model", "2nn", "--rounds", "3",
                                       "--clients-per-round", "4", "--over-select", "0.5",
                                       "--min-clients", "6", "--epochs", "2", NULL);
  cr_assert_gt(srv, 0, "no server (%s)", s.log);
  pid_t c = fl_test_fed_clients(&s, "clients.log", "--clients", "6", "--data",
                                "fashion-mnist:train", "--max-samples", "12000", "--partition",
                                "quantity:0.5", "--seed", "4", "--workers", "2", NULL);
  cr_assert_eq(fl_test_wait(srv, 240), 0, "server failed (%s)", s.log);
  cr_assert_eq(fl_test_wait(c, 30), 0, "clients failed (%s)", clog);
  cr_assert_eq(fl_test_metrics_rounds(s.metrics), 3);
  cr_assert_eq(fl_test_count(s.metrics, "\"clients_selected\":6"), 3, "%s", s.metrics);
  cr_assert_eq(fl_test_count(s.metrics, "\"updates_accepted\":4"), 3, "%s", s.metrics);
  cr_assert_eq(fl_test_count(s.log, "closing the round without the 2 slowest clients"), 3);
  cr_assert_geq(fl_test_count(s.log, "stale update for round"), 1, "no late update was refused (%s)", s.log);
  cr_assert(fl_test_sanitizer_clean(s.log));
  fl_test_fed_free(&s);
}

/* A client that says hello, keeps its connection alive and answers every task with an
 * update for another model, which the server refuses: no attempt of a round that needs
 * its update can succeed.  After the server waits for new clients it sends a second
 * hello as a probe: the server's Error answer comes after anything it sent before, so a
 * task that arrived before that answer would show the server still trying. */
typedef struct refuser {
  fl_conn *conn;
  int tasks;           /* TrainTasks received */
  int probe_sent, probe_answered;
  int tasks_at_probe;
  int closed;
} refuser;

static void rf_hello(fl_conn *c) { cr_assert_eq(fl_test_send_hello(c, NULL, 100, NULL, 0), 0); }

static void rf_open(fl_conn *c) { rf_hello(c); }

static void rf_frame(fl_conn *c, const uint8_t *p, size_t n) {
  refuser *r = fl_conn_data(c);
  Fl__Envelope *env;
  cr_assert_eq(fl_msg_decode(p, n, &env), 0);
  if (env->body_case == FL__ENVELOPE__BODY_TRAIN_TASK) {
    r->tasks++;
    const Fl__TrainTask *t = env->train_task;
    cr_assert_eq(fl_test_send_update(c, t->round, t->model_id ^ 0x5a5a, t->num_params, 100,
                                     FL__ENCODING__ENCODING_FLOAT32, 0), 0);
  } else if (env->body_case == FL__ENVELOPE__BODY_ERROR && r->probe_sent &&
             strstr(env->error->reason, "second hello")) {
    r->probe_answered = 1;
    r->tasks_at_probe = r->tasks;
  }
  fl_msg_free(env);
}

static void rf_drain(fl_conn *c) { (void)c; }
static void rf_close(fl_conn *c, int err, const char *reason) {
  refuser *r = fl_conn_data(c);
  (void)err;
  (void)reason;
  r->closed = 1;
}
static const fl_conn_callbacks rf_cb = {rf_open, rf_frame, rf_drain, rf_close};

/* A round that cannot get its updates is retried with a new selection; after
 * --max-attempts it waits for a new client instead of spinning, then completes. */
Test(resilience, failed_rounds_retry_then_wait_for_new_clients, .timeout = 300) {
  fl_log_set_level(FL_LOG_ERROR);
  fl_test_fed s;
  fl_test_fed_init(&s);
  pid_t srv = fl_test_fed_server_ready(&s, "server.log", "--model", "logreg", "--rounds", "2",
                                       "--clients-per-round", "2", "--min-clients", "2",
                                       "--min-updates", "2", "--round-timeout", "600",
                                       "--max-attempts", "2", "--log-level", "debug", NULL);
  cr_assert_gt(srv, 0, "no server (%s)", s.log);
  pid_t good = fl_test_fed_clients(&s, "clients.log", "--clients", "1", "--data",
                                   "fashion-mnist:train", "--max-samples", "500", NULL);

  uv_loop_t loop;
  uv_loop_init(&loop);
  refuser rf = {0};
  fl_tls_config *tls;
  char cert[600], key[600], err[512];
  fl_test_client_cert(23, cert, key, sizeof cert);
  cr_assert_eq(fl_test_client_tls(cert, key, &tls, err, sizeof err), 0, "%s", err);
  fl_conn_options opt;
  fl_conn_options_default(&opt);
  uint8_t *hb;
  size_t hb_len;
  cr_assert_eq(fl_msg_heartbeat(0, 0, &hb, &hb_len), 0);
  opt.heartbeat = hb;
  opt.heartbeat_len = hb_len;
  opt.heartbeat_interval_ms = 200;
    cr_assert_eq(fl_connect(&loop, tls, "127.0.0.1", s.port, &opt, &rf_cb, &rf, &rf.conn), 0);
  /* Until the server gives up on the round and waits; then the probe. */
  while (!fl_test_count(s.log, "waiting for new clients") && fl_test_running(srv) && !rf.closed)
    uv_run(&loop, UV_RUN_NOWAIT), usleep(10000);
  cr_assert(fl_test_count(s.log, "waiting for new clients"), "the server never waited (%s)", s.log);
  rf.probe_sent = 1;
  rf_hello(rf.conn);
  while (!rf.probe_answered && !rf.closed) uv_run(&loop, UV_RUN_ONCE);
  cr_assert(rf.probe_answered, "no answer to the probe (%s)", s.log);
  cr_assert_eq(rf.tasks_at_probe, 2, "the refusing client got %d tasks, not 2 (%s)",
               rf.tasks_at_probe, s.log);
  cr_assert_eq(fl_test_count(s.log, "round 1/2: "), 2, "the server kept retrying (%s)", s.log);
  fl_conn_close(rf.conn, "leaving");
  while (!rf.closed) uv_run(&loop, UV_RUN_ONCE);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  fl_tls_config_free(tls);
  free(hb);

  /* A new client arrives: the round is tried again and the run completes. */
  pid_t good2 = fl_test_fed_clients(&s, "clients2.log", "--clients", "1", "--cert-index", "2",
                                    "--data", "fashion-mnist:train", "--max-samples", "500", NULL);
  cr_assert_eq(fl_test_wait(srv, 120), 0, "server failed (%s)", s.log);
  cr_assert_eq(fl_test_wait(good, 30), 0);
  cr_assert_eq(fl_test_wait(good2, 30), 0);
  cr_assert_eq(fl_test_count(s.log, "retrying with a new selection"), 1, "%s", s.log);
  cr_assert_eq(fl_test_count(s.log, "refused update from client-0023"), 2, "%s", s.log);
  cr_assert_eq(fl_test_count(s.log, "round 1/2: "), 3, "%s", s.log);
  cr_assert_eq(fl_test_metrics_rounds(s.metrics), 2);
  cr_assert(fl_test_sanitizer_clean(s.log));
  fl_test_fed_free(&s);
}
