/* fl-client's options: names, defaults, ranges and help, in one table. */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "log.h"

#define O(name, sec, type, field, def, arg, help, lo, hi) \
  {name, sec, type, offsetof(client_config, field), def, arg, help, lo, hi}

const fl_option client_options[] = {
  O("server", "client", FL_OPTT_STR, server, "127.0.0.1:7700", "HOST:PORT", "the fl-server to join", 0, 0),
  O("server-name", "client", FL_OPTT_STR, server_name, NULL, "NAME", "name the server certificate must carry (default: the host of --server)", 0, 0),
  O("clients", "client", FL_OPTT_INT, clients, "1", "N", "virtual clients in this process, each with its own connection, identity and data", 1, 1000000),
  O("workers", "client", FL_OPTT_INT, workers, "0", "N", "virtual clients training at once (0 = one per core, at most --clients)", 0, 1024),
  O("train-threads", "client", FL_OPTT_INT, train_threads, "0", "N", "threads each training job splits its batches over (0 = the cores divided by the workers: all of them for one client, 1 in a simulation)", 0, 1024),
  O("share-feature-stats", "client", FL_OPTT_BOOL, share_feature_stats, "false", NULL, "send the count, sum and sum of squares of each feature of the local training data when joining (no sample), for a server that standardises features (fl-server --standardize)", 0, 0),
  O("fedbn", "client", FL_OPTT_BOOL, fedbn, "false", NULL, "FedBN: keep the model's batchnorm layers local (this client's own scale, shift and statistics; their delta is zero)", 0, 0),
  O("frozen-cache", "client", FL_OPTT_BOOL, frozen_cache, "true", NULL, "keep the frozen parameters of a model sent whole (fl-server --freeze), so that the server sends later models without them (one copy for all the virtual clients of the process); false: every model comes whole", 0, 0),
  O("log-level", "client", FL_OPTT_LOGLEVEL, log_level, "info", "LEVEL", "debug, info, warn or error", 0, 0),
  O("max-retries", "client", FL_OPTT_INT, max_retries, "20", "N", "failed connection attempts in a row before a client gives up", 0, 1000000),
  O("retry-base", "client", FL_OPTT_DOUBLE, retry_base, "0.2", "SECONDS", "first reconnect delay (doubles each attempt, with jitter)", 0.001, 3600),
  O("retry-max", "client", FL_OPTT_DOUBLE, retry_max, "30", "SECONDS", "longest reconnect delay", 0.001, 86400),
  O("heartbeat", "client", FL_OPTT_DOUBLE, heartbeat, "15", "SECONDS", "heartbeat interval on idle connections", 0.01, 1e6),
  O("idle-timeout", "client", FL_OPTT_DOUBLE, idle_timeout, "120", "SECONDS", "reconnect when the server is silent this long", 0.05, 1e9),
  O("ca", "tls", FL_OPTT_STR, ca, "certs/out/ca.crt", "FILE", "CA certificate that signs the server certificate", 0, 0),
  O("cert", "tls", FL_OPTT_STR, cert, NULL, "FILE", "client certificate (one client)", 0, 0),
  O("key", "tls", FL_OPTT_STR, key, NULL, "FILE", "client private key (one client)", 0, 0),
  O("certs-dir", "tls", FL_OPTT_STR, certs_dir, "certs/out", "DIR", "where PREFIX-NNNN.crt/.key are, when --cert is not given", 0, 0),
  O("cert-prefix", "tls", FL_OPTT_STR, cert_prefix, "client", "PREFIX", "certificate file prefix in --certs-dir", 0, 0),
  O("cert-index", "tls", FL_OPTT_INT_AUTO, cert_index, "1", "N|auto", "number NNNN of the first virtual client's certificate (auto: rank x clients + 1, the rank from mpirun, srun or a Kubernetes Indexed Job)", 0, 9999999),
  O("data", "data", FL_OPTT_STR, data, NULL, "DATA", "training data: a CSV (FILE or FILE:LABEL_COLUMN), IMAGES,LABELS (IDX), or fashion-mnist:train", 0, 0),
  O("test", "data", FL_OPTT_STR, test, NULL, "DATA", "local test data for federated evaluation (default: the training data)", 0, 0),
  O("max-samples", "data", FL_OPTT_U64, max_samples, "0", "N", "use only the first N samples of --data and --test (0 = all)", 0, 1e15),
  O("partition", "data", FL_OPTT_STR, partition, NULL, "SCHEME", "simulate: each virtual client trains on one partition of --data (iid, shards:S, dirichlet:A, quantity:A; none: each on all of it); needed with --clients N > 1, and a real client leaves it out", 0, 0),
  O("num-partitions", "data", FL_OPTT_INT_AUTO, num_partitions, "0", "N|auto", "partitions of --data (default: --clients; auto: processes of the launch x clients)", 0, 10000000),
  O("partition-index", "data", FL_OPTT_INT_AUTO, partition_index, "0", "I|auto", "partition of the first virtual client (client k trains on I+k; auto: rank x clients, the rank from OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID or JOB_COMPLETION_INDEX)", 0, 10000000),
  O("seed", "data", FL_OPTT_U64, seed, "1", "N", "partitioning seed (the same on every client of a simulation)", 0, 0),
  O("encodings", "client", FL_OPTT_STR, encodings, "all", "LIST", "tensor encodings offered to the server (all, or a comma list of float32, float16, int8, topk): it picks how updates and models travel", 0, 0),
  O("sim-crash-round", "simulation", FL_OPTT_INT, sim_crash_round, "0", "R", "SIMULATION ONLY (tests of churn): the whole process kills itself with SIGKILL when one of its clients is given round R's task (0 = never)", 0, 1000000000),
  O("sim-stop-round", "simulation", FL_OPTT_INT, sim_stop_round, "0", "R", "SIMULATION ONLY (tests of network failures): the whole process stops itself with SIGSTOP when one of its clients is given round R's task, until SIGCONT (0 = never)", 0, 1000000000),
  O("attack", "simulation", FL_OPTT_STR, attack, NULL, "MODE[:X]", "SIMULATION ONLY (robustness tests): the clients chosen by --attack-clients attack: signflip[:K], scale[:K], noise[:S], constant[:C] or labelflip", 0, 0),
  O("attack-clients", "simulation", FL_OPTT_STR, attack_clients, NULL, "FRACTION|LIST", "SIMULATION ONLY: which partitions attack, a fraction drawn with --seed (0.2) or a list (0,5,9)", 0, 0),
  {0},
};

int client_config_check(const client_config *c, char *err, size_t errlen) {
  char host[256];
  int port;
  if (fl_split_host_port(c->server, host, sizeof host, &port) != 0 || port == 0) {
    snprintf(err, errlen, "--server: expected HOST:PORT with a port from 1 to 65535, got '%s'", c->server);
    return FL_ECONFIG;
  }
  if (!c->data) {
    snprintf(err, errlen, "--data is required (the local training data)");
    return FL_ECONFIG;
  }
  if ((c->cert == NULL) != (c->key == NULL)) {
    snprintf(err, errlen, "--cert and --key go together");
    return FL_ECONFIG;
  }
  if (c->cert && c->clients > 1) {
    snprintf(err, errlen, "--cert names one identity; with --clients %d use --certs-dir", c->clients);
    return FL_ECONFIG;
  }
  int shared = c->partition && strcmp(c->partition, "none") == 0;
  if (c->clients > 1 && !c->partition) {
    snprintf(err, errlen, "--clients %d without --partition: every virtual client would train on "
             "all of --data; split it (--partition iid, shards:S, dirichlet:ALPHA or "
             "quantity:ALPHA), or give --partition none to share it on purpose", c->clients);
    return FL_ECONFIG;
  }
  if (shared && (c->num_partitions || c->partition_index || c->attack)) {
    snprintf(err, errlen, "--partition none shares all of --data: no --num-partitions, "
             "--partition-index or --attack with it");
    return FL_ECONFIG;
  }
  int parts = c->num_partitions ? c->num_partitions : c->clients;
  if (!c->partition && (c->num_partitions || c->partition_index)) {
    snprintf(err, errlen, "--num-partitions and --partition-index need --partition");
    return FL_ECONFIG;
  }
  /* "auto" values are checked once the launch resolved them (launch.h). */
  int autos = c->num_partitions == FL_OPT_AUTO || c->partition_index == FL_OPT_AUTO;
  if (c->partition && !autos && c->partition_index + c->clients > parts) {
    snprintf(err, errlen, "--partition-index %d with %d clients needs %d partitions, but --num-partitions is %d",
             c->partition_index, c->clients, c->partition_index + c->clients, parts);
    return FL_ECONFIG;
  }
  if ((c->attack == NULL) != (c->attack_clients == NULL)) {
    snprintf(err, errlen, "--attack and --attack-clients go together");
    return FL_ECONFIG;
  }
  if (c->attack && !c->partition) {
    snprintf(err, errlen, "--attack simulates attackers among partitions: it needs --partition");
    return FL_ECONFIG;
  }
  return fl_options_check_heartbeat(c->heartbeat, c->idle_timeout, err, errlen);
}
