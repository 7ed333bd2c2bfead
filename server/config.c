/* fl-server's options: names, defaults, ranges and help, in one table. */
#include "config.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "log.h"
#include "codec.h"
#include "model.h"
#include "strategy.h"
#include "train.h"

#define O(name, sec, type, field, def, arg, help, lo, hi) \
  {name, sec, type, offsetof(server_config, field), def, arg, help, lo, hi}

const fl_option server_options[] = {
  O("listen", "server", FL_OPTT_STR, listen, "0.0.0.0:7700", "HOST:PORT", "address to listen on", 0, 0),
  O("log-level", "server", FL_OPTT_LOGLEVEL, log_level, "info", "LEVEL", "debug, info, warn or error", 0, 0),
  O("out", "server", FL_OPTT_STR, out, "fl-model.bin", "FILE", "final global model file", 0, 0),
  O("metrics", "server", FL_OPTT_STR, metrics, NULL, "FILE", "append one JSON line per round", 0, 0),
  O("checkpoint", "server", FL_OPTT_STR, checkpoint, NULL, "FILE", "checkpoint written after every round (default: OUT.ckpt)", 0, 0),
  O("keep-best", "server", FL_OPTT_STR, keep_best, NULL, "METRIC", "also keep the best global model seen by METRIC in OUT.best (test_loss, test_accuracy, test_auc, fed_eval_loss, fed_eval_accuracy, fed_eval_auc, train_loss; a loss is best lowest)", 0, 0),
  O("resume", "server", FL_OPTT_BOOL, resume, "false", NULL, "continue from the checkpoint, if there is one", 0, 0),
  O("force", "server", FL_OPTT_BOOL, force, "false", NULL, "start a new run even though a checkpoint of an earlier one exists (it is removed); without --resume or --force, fl-server refuses to start over an existing checkpoint", 0, 0),
  O("http", "server", FL_OPTT_STR, http, NULL, "HOST:PORT|PORT", "serve a status page (/), Prometheus metrics (/metrics) and JSON (/status) over HTTP; a bare PORT binds 127.0.0.1 (off by default)", 0, 0),
  O("http-timeout", "server", FL_OPTT_INT, http_timeout, "10", "SECONDS", "close an HTTP connection idle this long", 1, 86400),
  O("http-connections", "server", FL_OPTT_INT, http_connections, "32", "N", "HTTP connections at once (a quarter of them per address)", 1, 10000),
  O("model", "model", FL_OPTT_STR, model, "2nn", "SPEC", "model spec or preset (logreg, 2nn, cnn, mlp64), or external:NAME:N (a model the clients train with their own code, libflclient)", 0, 0),
  O("init-model", "model", FL_OPTT_STR, init_model, NULL, "FILE", "start from this model file instead of a seeded initialisation", 0, 0),
  O("standardize", "model", FL_OPTT_BOOL, standardize, "false", NULL, "standardise the features: before round 1 the clients that agree (fl-client --share-feature-stats) send each feature's count, sum and sum of squares, the server combines them and sends every client the means and deviations with its tasks; --test-data and the model files get the same transform", 0, 0),
  O("freeze", "model", FL_OPTT_STR, freeze, NULL, "LAYERS", "transfer learning: layers the clients do not train ('head', 'all-but-head', or positions from 0 as in the spec without in:, such as 0,2-3); an update that changes them is refused", 0, 0),
  O("seed", "model", FL_OPTT_U64, seed, "1", "N", "seed for initialisation, client selection and local training", 0, 0),
  O("rounds", "round", FL_OPTT_INT, rounds, "10", "N", "rounds to run", 1, 1e9),
  O("clients-per-round", "round", FL_OPTT_DOUBLE, clients_per_round, "10", "N|FRACTION", "clients selected each round: a count, or a fraction (< 1) of those connected", 1e-9, 1e9),
  O("min-clients", "round", FL_OPTT_INT, min_clients, "1", "N", "connected clients needed before a round starts", 1, 1e9),
  O("min-updates", "round", FL_OPTT_INT, min_updates, "1", "N", "updates needed for a round to count when it times out", 1, 1e9),
  O("round-timeout", "round", FL_OPTT_DOUBLE, round_timeout, "600", "SECONDS", "time a round waits for its updates", 0.01, 1e9),
  O("server-lr", "round", FL_OPTT_DOUBLE, server_lr, "1", "RATE", "learning rate of the default server optimizer (sgd) applied to the aggregate", 0, 1e6),
  O("strategy", "round", FL_OPTT_STR, strategy, "fedavg", "SPEC", "aggregation strategy: AGGREGATOR[:k=v,...][+OPTIMIZER[:k=v,...]] (listed above)", 0, 0),
  O("strategy-memory", "round", FL_OPTT_INT, strategy_memory_mib, "2048", "MIB", "memory a strategy that holds every update (median, trimmed, krum) may use; rounds select at most what fits", 1, 1 << 30),
  O("weights", "round", FL_OPTT_STR, weights, "examples", "examples|uniform", "weight of an update in the mean: its example count (at most what the client declared), or 1", 0, 0),
  O("max-weight", "round", FL_OPTT_DOUBLE, max_weight, "0", "N", "no update weighs more than N examples, whatever it declares (with --max-weight-share, the lower cap wins); 0 = no absolute cap", 0, 1e18),
  O("max-weight-share", "round", FL_OPTT_DOUBLE, max_weight_share, "1", "F", "no update weighs more than F typical rounds (clients per round x the median example count the round's clients declared); 0 = no cap", 0, 1e9),
  O("uplink", "round", FL_OPTT_STR, uplink, "float32", "ENC", "encoding of the clients' updates: float32, float16, int8[:stochastic] or topk:FRACTION (lossy ones with error feedback on the clients); a client that does not offer it sends float32", 0, 0),
  O("downlink", "round", FL_OPTT_STR, downlink, "float32", "ENC", "encoding of the models sent to clients: float32, float16 or int8 (encoded once per model; every client trains from the same decoded model)", 0, 0),
  O("max-update-norm", "round", FL_OPTT_STR, max_update_norm, "10x", "BOUND|Rx|0", "refuse an update whose L2 norm exceeds BOUND, or R times the global model's norm (at least R); 0 = no bound", 0, 0),
  O("over-select", "round", FL_OPTT_DOUBLE, over_select, "0", "FRACTION", "select this fraction more clients and close the round once enough updates arrived", 0, 10),
  O("update-buffers", "round", FL_OPTT_INT, update_buffers, "2", "N", "updates received and folded at once (one model size of memory each)", 1, 64),
  O("upload-grace", "round", FL_OPTT_DOUBLE, upload_grace, "30", "SECONDS", "a client told to send its update has this long to deliver it, plus its size at --min-upload-rate; then its update buffer goes to the next client", 0.01, 1e9),
  O("min-upload-rate", "round", FL_OPTT_DOUBLE, min_upload_kibps, "64", "KIBPS", "the slowest upload (KiB/s) an update's deadline allows for (see --upload-grace)", 0.001, 1e9),
  O("max-attempts", "round", FL_OPTT_INT, max_attempts, "3", "N", "failed attempts at a round before waiting for new clients", 1, 1000000),
  O("secagg", "privacy", FL_OPTT_BOOL, secagg, "false", NULL, "secure aggregation: the server learns the sum of each round's updates and nothing about any one of them (fedavg only)", 0, 0),
  O("secagg-threshold", "privacy", FL_OPTT_INT, secagg_threshold, "0", "T", "shares that rebuild a client's secrets; T - 1 colluding with the server learn nothing (0 = two thirds of a neighbourhood, plus one)", 0, 10000),
  O("secagg-neighbors", "privacy", FL_OPTT_INT, secagg_neighbors, "0", "K", "SecAgg+: each client pairs with K others (even) rather than all (0 = all)", 0, 10000),
  O("secagg-clip", "privacy", FL_OPTT_DOUBLE, secagg_clip, "1", "C", "each weighted update value is clipped to [-C, C] before it is put in fixed point", 1e-6, 1e6),
  O("secagg-timeout", "privacy", FL_OPTT_DOUBLE, secagg_timeout, "60", "SECONDS", "time each stage of secure aggregation (keys, shares, unmasking) waits for the clients", 0.01, 1e9),
  O("dp-clip", "privacy", FL_OPTT_DOUBLE, dp_clip, "0", "S", "user-level differential privacy (DP-FedAvg): each update is clipped to L2 norm S (the initial bound with --dp-quantile; 0 = off)", 0, 1e9),
  O("dp-noise", "privacy", FL_OPTT_DOUBLE, dp_noise, "0", "Z", "noise multiplier: Gaussian noise of deviation Z x S on the sum of the clipped updates", 0, 1e6),
  O("dp-mode", "privacy", FL_OPTT_STR, dp_mode, "central", "central|distributed", "who adds the noise: the server, or each client its share before secure aggregation (needs --secagg), so no party sees an un-noised sum", 0, 0),
  O("dp-delta", "privacy", FL_OPTT_DOUBLE, dp_delta, "1e-5", "DELTA", "the delta of the (epsilon, delta) guarantee the accountant reports", 1e-300, 0.5),
  O("dp-target-epsilon", "privacy", FL_OPTT_DOUBLE, dp_target_epsilon, "0", "EPSILON", "end the run before a round would take epsilon past this (0 = never)", 0, 1e9),
  O("dp-quantile", "privacy", FL_OPTT_DOUBLE, dp_quantile, "0", "Q", "adaptive clipping (Andrew et al. 2021): move the bound towards the Q quantile of the update norms (0 = a fixed bound)", 0, 1),
  O("epochs", "train", FL_OPTT_INT, epochs, "1", "N", "local epochs per round", 1, 1e6),
  O("batch-size", "train", FL_OPTT_INT, batch_size, "10", "N", "local mini-batch size", 1, 1e6),
  O("lr", "train", FL_OPTT_DOUBLE, lr, "0.05", "RATE", "local learning rate", 0, 1e6),
  O("optimizer", "train", FL_OPTT_STR, optimizer, "sgd", "NAME", "local optimizer: sgd, momentum, nesterov, adam, adamw", 0, 0),
  O("momentum", "train", FL_OPTT_DOUBLE, momentum, "0", "M", "SGD momentum (momentum/nesterov default 0.9)", 0, 1),
  O("weight-decay", "train", FL_OPTT_DOUBLE, weight_decay, "0", "L2", "local weight decay", 0, 1e6),
  O("prox-mu", "train", FL_OPTT_DOUBLE, prox_mu, "0", "MU", "FedProx proximal term", 0, 1e6),
  O("clip-norm", "train", FL_OPTT_DOUBLE, clip_norm, "0", "NORM", "local gradient-norm clipping (0 = off)", 0, 1e9),
  O("test-data", "eval", FL_OPTT_STR, test_data, NULL, "DATA", "server-side test data (e.g. fashion-mnist:test, a CSV, IMAGES,LABELS)", 0, 0),
  O("eval-every", "eval", FL_OPTT_INT, eval_every, "1", "N", "evaluate on the test data every N rounds (and after the last)", 1, 1e9),
  O("eval-threads", "eval", FL_OPTT_INT, eval_threads, "0", "N", "threads evaluating the global model on the test data, each batch split over them (0 = one per core; the round waits for the evaluation)", 0, 256),
  O("fed-eval-every", "eval", FL_OPTT_INT, fed_eval_every, "0", "N", "federated evaluation on the clients every N rounds (0 = never)", 0, 1e9),
  O("fed-eval-timeout", "eval", FL_OPTT_DOUBLE, fed_eval_timeout, "120", "SECONDS", "time a federated evaluation waits", 0.01, 1e9),
  O("ca", "tls", FL_OPTT_STR, ca, "certs/out/ca.crt", "FILE", "CA certificate that signs client certificates", 0, 0),
  O("cert", "tls", FL_OPTT_STR, cert, "certs/out/server.crt", "FILE", "server certificate", 0, 0),
  O("key", "tls", FL_OPTT_STR, key, "certs/out/server.key", "FILE", "server private key", 0, 0),
  O("crl", "tls", FL_OPTT_STR, crl, NULL, "FILE", "certificate revocation list", 0, 0),
  O("ticket-lifetime", "tls", FL_OPTT_INT, ticket_lifetime, "86400", "SECONDS", "clients resume their TLS session for this long after a full handshake, skipping its public-key work (session tickets; the ticket key rotates as often; 0 = never)", 0, 604800),
  O("ticket-keys", "tls", FL_OPTT_STR, ticket_keys, NULL, "FILE", "session-ticket keys, kept (mode 0600) so clients resume after a restart (default: the checkpoint's path + .tickets; 'none': in memory only)", 0, 0),
  O("chunk-kib", "net", FL_OPTT_INT, chunk_kib, "64", "KIB", "tensor data per chunk message, both ways (memory per connection grows with it)", 1, 1024),
  O("max-frame-mib", "net", FL_OPTT_INT, max_frame_mib, "4", "MIB", "largest frame accepted", 1, 1024),
  O("heartbeat", "net", FL_OPTT_DOUBLE, heartbeat, "15", "SECONDS", "heartbeat interval on idle connections", 0.01, 1e6),
  O("idle-timeout", "net", FL_OPTT_DOUBLE, idle_timeout, "120", "SECONDS", "drop a peer silent this long", 0.05, 1e9),
  O("frame-timeout", "net", FL_OPTT_DOUBLE, frame_timeout, "60", "SECONDS", "drop a peer that begins a frame and does not complete it within this", 0.01, 1e6),
  O("max-handshakes", "net", FL_OPTT_INT, max_handshakes, "256", "N", "TLS handshakes in progress at once per I/O thread; further connections are closed as they arrive", 1, 1000000),
  O("io-threads", "net", FL_OPTT_INT, io_threads, "0", "N", "threads doing the TLS and socket I/O (0 = one per core)", 0, 256),
  {0},
};

/* The local training settings go to every client in each TrainTask: a value a client
 * cannot use would fail every client of every round, so each is checked here, before the
 * server listens.  The optimizer is one of the training core's unless the clients train
 * an external model with their own code (they interpret the name). */
static int check_train_settings(const server_config *c, char *err, size_t errlen) {
  char why[512];
  fl_model *m;
  if (fl_model_create(c->model, &m, why, sizeof why) != 0) {
    snprintf(err, errlen, "--model: %s", why);
    return FL_ECONFIG;
  }
  int external = fl_model_is_external(m);
  fl_model_free(m);
  fl_train_config t = fl_train_config_default();
  if (!external && fl_optimizer_parse(c->optimizer, &t) != 0) {
    const char *known[] = {"sgd", "momentum", "nesterov", "adam", "adamw"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
      if (strcasecmp(c->optimizer, known[i]) == 0) {
        snprintf(err, errlen, "--optimizer: unknown optimizer '%s' (names are lower case: "
                 "did you mean '%s'?)", c->optimizer, known[i]);
        return FL_ECONFIG;
      }
    snprintf(err, errlen, "--optimizer: unknown optimizer '%s' (known: sgd, momentum, "
             "nesterov, adam, adamw)", c->optimizer);
    return FL_ECONFIG;
  }
  if (c->momentum >= 1) {
    snprintf(err, errlen, "--momentum: must be below 1 (the training core refuses %g)", c->momentum);
    return FL_ECONFIG;
  }
  if (!(c->lr > 0)) {
    snprintf(err, errlen, "--lr: the local learning rate must be above 0, got %g", c->lr);
    return FL_ECONFIG;
  }
  return 0;
}

int server_config_check(const server_config *c, char *err, size_t errlen) {
  char host[256];
  int port;
  if (fl_split_host_port(c->listen, host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "--listen: expected HOST:PORT, got '%s'", c->listen);
    return FL_ECONFIG;
  }
  int rc = check_train_settings(c, err, errlen);
  if (rc) return rc;
  if (c->http && server_http_address(c->http, host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "--http: expected HOST:PORT or PORT, got '%s'", c->http);
    return FL_ECONFIG;
  }
  if (c->keep_best && srv_metric_find(c->keep_best) < 0) {
    snprintf(err, errlen, "--keep-best: '%s' is not one of test_loss, test_accuracy, "
             "test_auc, fed_eval_loss, fed_eval_accuracy, fed_eval_auc, train_loss",
             c->keep_best);
    return FL_ECONFIG;
  }
  if (strcmp(c->weights, "examples") != 0 && strcmp(c->weights, "uniform") != 0) {
    snprintf(err, errlen, "--weights: expected 'examples' or 'uniform', got '%s'", c->weights);
    return FL_ECONFIG;
  }
  double ratio, bound;
  if (server_norm_bound(c->max_update_norm, &ratio, &bound) != 0) {
    snprintf(err, errlen, "--max-update-norm: expected a bound (e.g. 50), a multiple of the "
             "model's norm (e.g. 10x) or 0, got '%s'", c->max_update_norm);
    return FL_ECONFIG;
  }
  fl_codec up, down;
  char why[512];
  if (fl_codec_parse(c->uplink, &up, why, sizeof why) != 0) {
    snprintf(err, errlen, "--uplink: %s", why);
    return FL_ECONFIG;
  }
  if (fl_codec_parse(c->downlink, &down, why, sizeof why) != 0) {
    snprintf(err, errlen, "--downlink: %s", why);
    return FL_ECONFIG;
  }
  if (down.enc == FL_ENC_TOPK) {
    snprintf(err, errlen, "--downlink: a model cannot be sent as top-k (float32, float16 or int8)");
    return FL_ECONFIG;
  }
  fl_strategy *st;
  if (fl_strategy_create(c->strategy, 1, c->server_lr, &st, why, sizeof why) != 0) {
    snprintf(err, errlen, "--strategy: %s", why);
    return FL_ECONFIG;
  }
  int plain = strstr(fl_strategy_spec(st), "+sgd:") != NULL;
  fl_strategy_free(st);
  if (!plain && c->server_lr != 1) {
    snprintf(err, errlen, "--server-lr is the rate of the default server optimizer (sgd); "
             "strategy '%s' has its own (set it in the spec, e.g. fedadam:eta=0.01)", c->strategy);
    return FL_ECONFIG;
  }
  if (c->clients_per_round >= 1 && c->clients_per_round != (int)c->clients_per_round) {
    snprintf(err, errlen, "--clients-per-round: %g is neither a whole count nor a fraction below 1",
             c->clients_per_round);
    return FL_ECONFIG;
  }
  if (strcmp(c->dp_mode, "central") != 0 && strcmp(c->dp_mode, "distributed") != 0) {
    snprintf(err, errlen, "--dp-mode: expected 'central' or 'distributed', got '%s'", c->dp_mode);
    return FL_ECONFIG;
  }
  int dp = c->dp_clip > 0;
  if (!dp && (c->dp_noise > 0 || c->dp_target_epsilon > 0 || c->dp_quantile > 0)) {
    snprintf(err, errlen, "--dp-noise, --dp-target-epsilon and --dp-quantile need --dp-clip "
             "(the bound on each update's norm)");
    return FL_ECONFIG;
  }
  if (dp && strcmp(c->dp_mode, "distributed") == 0 && !c->secagg) {
    snprintf(err, errlen, "--dp-mode distributed: the clients' noise only hides an update "
             "inside a secure sum: add --secagg");
    return FL_ECONFIG;
  }
  if (c->dp_target_epsilon > 0 && !(c->dp_noise > 0)) {
    snprintf(err, errlen, "--dp-target-epsilon: without noise (--dp-noise) epsilon is infinite");
    return FL_ECONFIG;
  }
  if (c->secagg || dp) {
    const char *what = c->secagg ? "--secagg" : "--dp-clip";
    if (strncmp(c->strategy, "fedavg", 6) != 0 || (c->strategy[6] && c->strategy[6] != '+')) {
      snprintf(err, errlen, "%s: the server gets only a (noised) sum of the updates, so the "
               "aggregator must be fedavg (a server optimizer may follow, e.g. fedavg+fedadam), "
               "not '%s'", what, c->strategy);
      return FL_ECONFIG;
    }
  }
  if (c->secagg) {
    if (up.enc != FL_ENC_FLOAT32 && up.enc != FL_ENC_INT8) {
      snprintf(err, errlen, "--secagg: updates travel as ring elements: --uplink float32 (a "
               "32-bit ring) or int8 (a 16-bit ring, 8 bits a value), not %s", c->uplink);
      return FL_ECONFIG;
    }
    if (c->secagg_neighbors % 2) {
      snprintf(err, errlen, "--secagg-neighbors: SecAgg+'s graph needs an even count, not %d",
               c->secagg_neighbors);
      return FL_ECONFIG;
    }
    if (c->secagg_threshold == 1) {
      snprintf(err, errlen, "--secagg-threshold 1 would let the server rebuild any client's "
               "secrets from one share (at least 2)");
      return FL_ECONFIG;
    }
  }
  if (c->clients_per_round >= 1 && c->min_updates > c->clients_per_round) {
    snprintf(err, errlen, "--min-updates %d exceeds --clients-per-round %g", c->min_updates,
             c->clients_per_round);
    return FL_ECONFIG;
  }
  return fl_options_check_heartbeat(c->heartbeat, c->idle_timeout, err, errlen);
}

int server_http_address(const char *spec, char *host, size_t hostlen, int *port) {
  const char *p = spec[0] == ':' ? spec + 1 : spec;
  char *end;
  long v = strtol(p, &end, 10);
  if (end != p && !*end && v >= 0 && v <= 65535) {
    snprintf(host, hostlen, "127.0.0.1");
    *port = (int)v;
    return 0;
  }
  return fl_split_host_port(spec, host, hostlen, port) == 0 ? 0 : FL_ECONFIG;
}

int server_norm_bound(const char *spec, double *ratio, double *bound) {
  char *end;
  double v = strtod(spec, &end);
  *ratio = *bound = 0;
  if (end == spec || !isfinite(v) || v < 0) return FL_ECONFIG;
  if (*end == 'x' && end[1] == 0) *ratio = v;
  else if (*end == 0) *bound = v;
  else return FL_ECONFIG;
  return 0;
}
