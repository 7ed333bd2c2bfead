/* fl-client configuration: one table serves flags, the INI file and --help. */
#ifndef FL_CLIENT_CONFIG_H
#define FL_CLIENT_CONFIG_H

#include "options.h"

typedef struct client_config {
  /* [client] */
  char *server;          /* HOST:PORT */
  char *server_name;     /* host name the server certificate must carry */
  int clients;           /* virtual clients in this process */
  int workers;           /* training jobs at once */
  int train_threads;     /* threads per training job (0: cores / workers) */
  int fedbn;             /* keep batchnorm layers local */
  int frozen_cache;      /* keep frozen values, to be sent models without them */
  int share_feature_stats; /* send per-feature count, sum, sum of squares in the Hello */
  char *log_level;
  int max_retries;
  double retry_base;     /* seconds */
  double retry_max;      /* seconds */
  double heartbeat;      /* seconds */
  double idle_timeout;   /* seconds */
  /* [tls] */
  char *ca;
  char *cert;
  char *key;
  char *certs_dir;       /* with --clients: DIR/PREFIX-NNNN.{crt,key} */
  char *cert_prefix;
  int cert_index;        /* number of the first virtual client's certificate */
  /* [data] */
  char *data;
  char *test;
  unsigned long long max_samples;
  char *partition;
  int num_partitions;
  int partition_index;
  unsigned long long seed;
  char *encodings;       /* offered to the server: a list, or "all" */
  /* [simulation] */
  int sim_crash_round;   /* the process kills itself when given this round's task */
  int sim_stop_round;    /* the process stops itself (SIGSTOP) when given this round's task */
  char *attack;          /* attack.h's MODE[:PARAM] */
  char *attack_clients;  /* a fraction of the partitions, or a list */
} client_config;

extern const fl_option client_options[];

int client_config_check(const client_config *c, char *err, size_t errlen);

#endif
