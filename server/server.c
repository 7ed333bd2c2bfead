/* fl-server's set-up and tear-down: server_create builds everything the configuration
 * names (model, global parameters, update buffers, strategy, test data, checkpoint path
 * and --resume, metrics file, TLS, listener, timer and signals), server_run starts the
 * first round and runs the loop until the goodbye is over, server_free releases it all.
 * What happens in between is in the files server_internal.h lists; srv_advance()
 * (round.c) decides what happens next.
 *
 * The model-sized memory is allocated here, once, and does not grow with the clients per
 * round: the global model (one model size), the strategy's double-precision sum (two)
 * and --update-buffers update buffers (one each, two by default). */
#include <cblas.h>
#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bigalloc.h"
#include "error.h"
#include "log.h"
#include "modelfile.h"
#include "server_internal.h"

/* A strategy that holds every update needs a model size per client of the round: a count
 * of clients per round that does not fit --strategy-memory is refused here; with a
 * fraction, rounds select at most what fits (s->max_selected). */
static int check_strategy_memory(server *s, char *err, size_t errlen) {
  const server_config *cfg = s->cfg;
  s->max_selected = (size_t)-1;
  if (!fl_strategy_needs_all(s->strategy)) return 0;
  double model = (double)s->n * sizeof(float), limit = (double)cfg->strategy_memory_mib * 1048576.0;
  double fixed = fl_strategy_model_sizes(s->strategy, 0) * model;
  s->max_selected = limit > fixed ? (size_t)((limit - fixed) / model) : 0;
  if (s->max_selected < fl_strategy_min_updates(s->strategy)) {
    snprintf(err, errlen, "--strategy %s needs at least %zu updates of %.1f MiB at once, more than "
             "--strategy-memory %d MiB allows", cfg->strategy, fl_strategy_min_updates(s->strategy),
             model / 1048576.0, cfg->strategy_memory_mib);
    return FL_ECONFIG;
  }
  if (cfg->clients_per_round >= 1) {
    size_t k = (size_t)ceil(cfg->clients_per_round * (1.0 + cfg->over_select));
    if (k > s->max_selected) {
      snprintf(err, errlen, "--strategy %s holds every update of a round: %zu clients per round "
               "(with over-selection) x %.1f MiB is %.0f MiB, above --strategy-memory %d MiB; "
               "select fewer clients or raise the limit", cfg->strategy, k, model / 1048576.0,
               fl_strategy_model_sizes(s->strategy, k) * model / 1048576.0, cfg->strategy_memory_mib);
      return FL_ECONFIG;
    }
  }
  return 0;
}

/* SIGHUP: the CA, certificate, key and CRL files are read again (a renewed certificate,
 * a client revoked with certs/gen.sh --revoke).  New connections use them; open ones
 * stay, but for clients whose certificate the new CRL revokes, which are disconnected.
 * Files that do not load leave everything as it was, and say why. */
static void on_sighup(uv_signal_t *h, int signum) {
  (void)signum;
  server *s = h->data;
  const server_config *cfg = s->cfg;
  if (s->stopping || s->ph == PH_DONE) return;
  fl_tls_options topt = {.is_server = 1, .ca_file = cfg->ca, .cert_file = cfg->cert,
                         .key_file = cfg->key, .crl_file = cfg->crl,
                         .ticket_lifetime = (unsigned)cfg->ticket_lifetime,
                         .ticket_key_file = s->ticket_keys};
  char err[512];
  fl_tls_config *tls;
  if (fl_tls_config_reload(s->tls, &topt, &tls, err, sizeof err) != 0) {
    fl_error("server", "SIGHUP: %s; keeping the certificate, key and CRL loaded before", err);
    return;
  }
  fl_io_set_tls(s->io, tls);
  fl_tls_config_free(s->tls); /* connections made with it keep it while they last */
  s->tls = tls;
  size_t revoked = 0;
  for (client *c = s->clients; c; c = c->next) {
    if (c->closing || !fl_peer_revoked(c->peer, tls)) continue;
    fl_warn("server", "%s (%s): its certificate is revoked (--crl %s): disconnected", c->id,
            fl_peer_addr(c->peer), cfg->crl);
    srv_send_error(c, FL__ERROR_CODE__ERROR_REFUSED, "this client's certificate is revoked");
    c->closing = 1;
    fl_peer_close(c->peer, "certificate revoked");
    revoked++;
  }
  fl_info("server", "SIGHUP: reloaded CA %s, certificate %s, key %s%s%s; %zu connected client%s "
          "revoked", cfg->ca, cfg->cert, cfg->key, cfg->crl ? ", CRL " : "",
          cfg->crl ? cfg->crl : "", revoked, revoked == 1 ? "" : "s");
}

int server_create(const server_config *cfg, server **out, char *err, size_t errlen) {
  server *s = calloc(1, sizeof *s);
  if (!s) return FL_ENOMEM;
  s->cfg = cfg;
  int rc = uv_loop_init(&s->loop);
  if (rc) {
    snprintf(err, errlen, "libuv: %s", uv_strerror(rc));
    free(s);
    return FL_EIO;
  }
  fl_rng_seed2(&s->rng, cfg->seed, 0x5e1ec7);
  openblas_set_num_threads(1);

  rc = fl_model_create(cfg->model, &s->model, err, errlen);
  if (rc) goto fail;
  s->n = fl_model_num_params(s->model);
  s->global = malloc(s->n * sizeof *s->global);
  s->n_bufs = cfg->update_buffers;
  s->bufs = calloc((size_t)s->n_bufs, sizeof *s->bufs);
  s->ready = calloc((size_t)s->n_bufs, sizeof *s->ready);
  s->fold.items = calloc((size_t)s->n_bufs, sizeof *s->fold.items);
  s->fold.u = calloc((size_t)s->n_bufs, sizeof *s->fold.u);
  s->fold.norm = calloc((size_t)s->n_bufs, sizeof *s->fold.norm);
  rc = FL_ENOMEM;
  if (!s->global || !s->bufs || !s->ready || !s->fold.items || !s->fold.u || !s->fold.norm) {
    snprintf(err, errlen, "out of memory for a model of %zu parameters", s->n);
    goto fail;
  }
  /* The encodings (validated by server_config_check) and the room one update needs: a
   * compressed --uplink makes every buffer smaller. */
  fl_codec_parse(cfg->uplink, &s->uplink, NULL, 0);
  fl_codec_parse(cfg->downlink, &s->downlink, NULL, 0);
  s->buf_bytes = srv_update_room(s, &s->uplink, s->n);
  if (cfg->secagg) { /* masked inputs: ring elements, the model and two more */
    fl_codec ring = {s->uplink.enc == FL_ENC_INT8 ? FL_ENC_RING16 : FL_ENC_RING32, 0, 0};
    size_t room = srv_update_room(s, &ring, s->n + 2);
    if (room > s->buf_bytes) s->buf_bytes = room;
  }
  /* One allocation each: a strategy that keeps an update takes its buffer with it. */
  for (int i = 0; i < s->n_bufs; i++) {
    float *b = fl_alloc_big((s->buf_bytes + sizeof(float) - 1) / sizeof(float) * sizeof *b);
    if (!b) {
      snprintf(err, errlen, "out of memory for %d update buffers of %zu parameters", s->n_bufs, s->n);
      goto fail;
    }
    s->bufs[s->n_free++] = b;
  }
  if (cfg->init_model) {
    char *spec = NULL;
    float *params = NULL;
    uint64_t id;
    size_t n;
    fl_transform tf;
    rc = fl_modelfile_load_ex(cfg->init_model, &spec, &id, &params, &n, &tf, err, errlen);
    if (rc) goto fail;
    if (tf.dim == fl_model_input_dim(s->model)) { /* the transform its weights expect */
      s->tf_mean = tf.mean, s->tf_std = tf.std, s->tf_dim = tf.dim;
      fl_info("server", "feature standardisation from %s", cfg->init_model);
    } else {
      fl_transform_free(&tf);
    }
    if (id != fl_model_id(s->model) || n != s->n) {
      snprintf(err, errlen, "--init-model %s holds model '%s' (%zu parameters), but --model is '%s' (%zu parameters)",
               cfg->init_model, spec, n, fl_model_spec(s->model), s->n);
      free(spec);
      free(params);
      rc = FL_EMISMATCH;
      goto fail;
    }
    memcpy(s->global, params, n * sizeof *params);
    free(spec);
    free(params);
    fl_info("server", "initial model from %s", cfg->init_model);
  } else {
    fl_model_init(s->model, s->global, cfg->seed);
  }
  rc = fl_strategy_create(cfg->strategy, s->n, cfg->server_lr, &s->strategy, err, errlen);
  if (rc) goto fail;
  rc = check_strategy_memory(s, err, errlen);
  if (rc) goto fail;
  rc = srv_privacy_create(s, err, errlen);
  if (rc) goto fail;
  s->uniform_weights = strcmp(cfg->weights, "uniform") == 0;
  server_norm_bound(cfg->max_update_norm, &s->norm_ratio, &s->norm_abs);
  fl_info("server", "strategy %s; update weights: %s, capped at %g typical rounds; update norm "
          "bound: %s", fl_strategy_spec(s->strategy), cfg->weights, cfg->max_weight_share,
          cfg->max_update_norm);
  if (cfg->freeze) {
    if (fl_model_is_external(s->model)) {
      snprintf(err, errlen, "--freeze: the layers of the external model '%s' are its clients' "
               "code's", fl_model_spec(s->model));
      rc = FL_ECONFIG;
      goto fail;
    }
    if (!(s->frozen = malloc(sizeof *s->frozen * (s->n ? s->n : 1)))) {
      rc = FL_ENOMEM;
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
    long long nf = fl_model_freeze_mask(s->model, cfg->freeze, s->frozen, err, errlen);
    if (nf < 0) {
      rc = FL_ECONFIG;
      goto fail;
    }
    fl_info("server", "--freeze %s: %lld of %zu parameters frozen", cfg->freeze, nf, s->n);
    /* Clients leave them out of their deltas, but not out of a secure sum's masked
     * inputs, which cover every position. */
    if (!cfg->secagg && fl_runs_of_mask(s->frozen, s->n, &s->frozen_at, &s->frozen_runs.n)) {
      rc = FL_ENOMEM;
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
    s->frozen_runs.at = s->frozen_at;
  }
  if (cfg->standardize && fl_model_is_external(s->model)) {
    snprintf(err, errlen, "--standardize: the features of the external model '%s' are its "
             "clients' code's to standardise", fl_model_spec(s->model));
    rc = FL_ECONFIG;
    goto fail;
  }
  if (cfg->test_data && fl_model_is_external(s->model)) {
    snprintf(err, errlen, "--test-data: the server cannot evaluate the external model '%s' "
             "(its clients' code does: --fed-eval-every)", fl_model_spec(s->model));
    rc = FL_ECONFIG;
    goto fail;
  }
  /* An external model without --init-model takes its initial parameters from a client
   * (external.c), unless --resume finds a checkpoint. */
  s->need_init = fl_model_is_external(s->model) && !cfg->init_model;
  if (cfg->test_data) {
    rc = fl_dataset_load(&s->test, cfg->test_data, err, errlen);
    if (rc) goto fail;
    if (s->test.dim != fl_model_input_dim(s->model)) {
      snprintf(err, errlen, "--test-data %s has %zu features, but model '%s' takes %zu",
               cfg->test_data, s->test.dim, fl_model_spec(s->model), fl_model_input_dim(s->model));
      rc = FL_EMISMATCH;
      goto fail;
    }
    s->have_test = 1;
    /* the round waits for the evaluation, and the clients are idle meanwhile: all the
     * cores asked for (OpenBLAS stays on one thread; the trainer's threads split it) */
    s->eval_trainer = fl_trainer_create_threads(s->model, 256, cfg->eval_threads);
    if (!s->eval_trainer) {
      rc = FL_ENOMEM;
      snprintf(err, errlen, "--eval-threads %d: cannot start the evaluation's threads or "
               "allocate its workspace", cfg->eval_threads);
      goto fail;
    }
    int et = fl_trainer_threads(s->eval_trainer);
    fl_info("server", "--test-data %s: %zu samples, evaluated on %d thread%s", cfg->test_data,
            s->test.n, et, et == 1 ? "" : "s");
  }
  s->first_round = 1;
  if (cfg->checkpoint) s->checkpoint = strdup(cfg->checkpoint);
  else if (asprintf(&s->checkpoint, "%s.ckpt", cfg->out) < 0) s->checkpoint = NULL;
  if (!s->checkpoint) {
    rc = FL_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if ((rc = srv_check_outputs(s, err, errlen)) != 0) goto fail;
  if (cfg->resume) {
    rc = srv_resume(s, &s->first_round, err, errlen);
    if (rc) goto fail;
  }
  if (s->have_test) { /* the checkpoint's standardisation, or --init-model's, if any */
    fl_transform tf = srv_transform(s);
    fl_transform_apply(&tf, s->test.x, s->test.n);
  }
  if (s->frozen) {
    if (!(s->frozen_ref = malloc(sizeof *s->frozen_ref * (s->n ? s->n : 1)))) {
      rc = FL_ENOMEM;
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
    memcpy(s->frozen_ref, s->global, sizeof *s->frozen_ref * s->n);
    if (s->frozen_runs.n) s->frozen_id = fl_runs_id(&s->frozen_runs, s->frozen_ref);
  }
  if (cfg->metrics) {
    s->metrics = fopen(cfg->metrics, "a");
    if (!s->metrics) {
      snprintf(err, errlen, "--metrics %s: cannot open for appending: %s", cfg->metrics,
               strerror(errno));
      rc = FL_EIO;
      goto fail;
    }
  }
  /* A run's identity: when it started and the process, so that the lines of each run in
   * a metrics file that several runs appended to can be told apart. */
  {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char when[24];
    strftime(when, sizeof when, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(s->run_id, sizeof s->run_id, "%s-%ld", when, (long)getpid());
  }

  /* Ticket keys live next to the checkpoint: a restart with --resume finds both. */
  char *keys = NULL;
  if (cfg->ticket_lifetime > 0 && !(cfg->ticket_keys && strcmp(cfg->ticket_keys, "none") == 0)) {
    if (cfg->ticket_keys) keys = strdup(cfg->ticket_keys);
    else if (asprintf(&keys, "%s.tickets", s->checkpoint) < 0) keys = NULL;
    if (!keys) {
      rc = FL_ENOMEM;
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
  }
  fl_tls_options topt = {.is_server = 1, .ca_file = cfg->ca, .cert_file = cfg->cert,
                         .key_file = cfg->key, .crl_file = cfg->crl,
                         .ticket_lifetime = (unsigned)cfg->ticket_lifetime,
                         .ticket_key_file = keys};
  rc = fl_tls_config_create(&topt, &s->tls, err, errlen);
  s->ticket_keys = keys;
  if (rc) goto fail;

  fl_conn_options_default(&s->copt);
  s->copt.max_frame = (uint32_t)cfg->max_frame_mib << 20;
  s->copt.high_water = (size_t)cfg->chunk_kib * 1024u;
  s->copt.heartbeat_interval_ms = (uint32_t)(cfg->heartbeat * 1000);
  s->copt.idle_timeout_ms = (uint32_t)(cfg->idle_timeout * 1000);
  s->copt.frame_timeout_ms = (uint32_t)(cfg->frame_timeout * 1000);
  s->copt.max_handshakes = (uint32_t)cfg->max_handshakes;
  if (s->copt.handshake_timeout_ms > s->copt.idle_timeout_ms)
    s->copt.handshake_timeout_ms = s->copt.idle_timeout_ms;
  if (s->copt.stall_timeout_ms > s->copt.idle_timeout_ms)
    s->copt.stall_timeout_ms = s->copt.idle_timeout_ms;
  rc = fl_msg_heartbeat(0, 0, &s->heartbeat, &s->heartbeat_len);
  if (rc) goto fail;
  s->copt.heartbeat = s->heartbeat;
  s->copt.heartbeat_len = s->heartbeat_len;

  char host[256];
  int port;
  if (fl_split_host_port(cfg->listen, host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "--listen: expected HOST:PORT, got '%s'", cfg->listen);
    rc = FL_ECONFIG;
    goto fail;
  }
  rc = fl_io_listen(&s->loop, cfg->io_threads, s->tls, host, port, &s->copt,
                    &srv_peer_callbacks, s, &s->io);
  if (rc) {
    snprintf(err, errlen, "cannot listen on %s: %s (the line above says why)", cfg->listen,
             fl_strerror(rc));
    goto fail;
  }
  s->max_streams = STREAMS_PER_THREAD * (size_t)fl_io_threads(s->io);
  rc = srv_status_create(s, err, errlen);
  if (rc) goto fail;
  uv_timer_init(&s->loop, &s->timer);
  s->timer.data = s;
  uv_timer_init(&s->loop, &s->sa_timer);
  s->sa_timer.data = s;
  uv_timer_init(&s->loop, &s->upload_timer);
  s->upload_timer.data = s;
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  uv_signal_init(&s->loop, &s->sighup);
  s->sigint.data = s->sigterm.data = s->sighup.data = s;
  uv_signal_start(&s->sighup, on_sighup, SIGHUP);
  uv_signal_start(&s->sigint, srv_on_signal, SIGINT);
  uv_signal_start(&s->sigterm, srv_on_signal, SIGTERM);
  fl_info("server", "listening on %s:%d; model %s (%zu parameters, id %016llx); %d rounds of %g clients",
          host, fl_io_port(s->io), fl_model_spec(s->model), s->n,
          (unsigned long long)fl_model_id(s->model), cfg->rounds, cfg->clients_per_round);
  fl_info("server", "run %s (\"run\" of its metrics lines)", s->run_id);
  if (cfg->clients_per_round >= 1 && cfg->min_clients < cfg->clients_per_round && !cfg->dp_clip)
    fl_warn("server", "--clients-per-round %g with --min-clients %d: a round starts as soon as "
            "%d client%s ready, with fewer than %g if that is all there is; give --min-clients "
            "%g to wait for them", cfg->clients_per_round, cfg->min_clients, cfg->min_clients,
            cfg->min_clients == 1 ? " is" : "s are", cfg->clients_per_round, cfg->clients_per_round);
  *out = s;
  return 0;
fail:
  server_free(s);
  return rc;
}

int server_run(server *s) {
  srv_begin_round_number(s, s->first_round);
  if (s->first_round > (uint64_t)s->cfg->rounds) {
    fl_info("server", "all %d rounds were already completed", s->cfg->rounds);
    srv_finish_run(s, "training complete");
  } else {
    srv_advance(s);
  }
  uv_run(&s->loop, UV_RUN_DEFAULT);
  return s->exit_code ? FL_EIO : 0;
}

void server_free(server *s) {
  if (!s) return;
  if (s->stop_timer_on) uv_close((uv_handle_t *)&s->stop_timer, NULL);
  srv_status_free(s); /* joins the HTTP thread (before the I/O threads it counts) */
  fl_io_free(s->io); /* joins the I/O threads */
  if (uv_loop_alive(&s->loop)) uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  fl_tls_config_free(s->tls);
  free(s->ticket_keys);
  if (s->metrics) fclose(s->metrics);
  fl_strategy_free(s->strategy);
  srv_secagg_end(s);
  srv_privacy_free(s);
  srv_downlink_free(s);
  fl_trainer_free(s->eval_trainer);
  if (s->have_test) fl_dataset_free(&s->test);
  srv_standardize_free(s);
  free(s->frozen);
  free(s->frozen_ref);
  free(s->frozen_at);
  for (int i = 0; s->bufs && i < s->n_free; i++) free(s->bufs[i]);
  free(s->bufs);
  free(s->ready);
  free(s->fold.items);
  free(s->fold.u);
  free(s->fold.norm);
  free(s->global);
  free(s->heartbeat);
  free(s->checkpoint);
  fl_model_free(s->model);
  srv_excluded_free(s);
  srv_id_logs_free(s);
  free(s);
}
