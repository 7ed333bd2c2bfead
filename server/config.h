/* fl-server configuration: one table serves flags, the INI file and --help. */
#ifndef FL_SERVER_CONFIG_H
#define FL_SERVER_CONFIG_H

#include "options.h"

typedef struct server_config {
  /* [server] */
  char *listen;            /* HOST:PORT */
  char *log_level;
  char *out;               /* final model file */
  char *metrics;           /* JSON lines, one per round */
  char *checkpoint;        /* state after the last completed round (default: OUT.ckpt) */
  char *keep_best;         /* a metric: the best global model by it goes to OUT.best */
  int resume;              /* continue from the checkpoint */
  int force;               /* start over even when a checkpoint exists (it is removed) */
  char *http;              /* status page, /metrics and /status: HOST:PORT or PORT (NULL: off) */
  int http_timeout;        /* seconds an HTTP connection may idle */
  int http_connections;    /* HTTP connections at once */
  /* [model] */
  char *model;
  char *init_model;
  int standardize;         /* feature standardisation from the clients' statistics */
  char *freeze;            /* layers not trained (fl_model_freeze_mask), or NULL */
  unsigned long long seed;
  /* [round] */
  int rounds;
  double clients_per_round; /* >= 1: a count; < 1: a fraction of connected clients */
  int min_clients;
  int min_updates;
  double round_timeout;     /* seconds */
  double server_lr;
  char *strategy;           /* strategy.h's spec */
  int strategy_memory_mib;  /* limit on what a strategy holding every update may hold */
  char *weights;            /* examples | uniform */
  double max_weight;        /* absolute cap on one update's weight, in examples (0: none) */
  double max_weight_share;  /* cap on one update's weight, in typical rounds (0: none) */
  char *max_update_norm;    /* "RATIOx" of the model's norm, an absolute bound, or 0 */
  char *uplink;             /* codec.h spec of the updates clients send */
  char *downlink;           /* codec.h spec of the models sent to clients */
  double over_select;       /* select this fraction more clients than needed */
  int max_attempts;         /* failed attempts of a round before waiting for new clients */
  int update_buffers;       /* updates received and folded at once */
  double upload_grace;      /* seconds a client given Proceed has to deliver its update, */
  double min_upload_kibps;  /* plus its size at this rate (KiB/s) */
  /* [privacy] */
  int secagg;               /* secure aggregation (secagg.c) */
  int secagg_threshold;     /* shares that rebuild a secret (0: 2/3 of a neighbourhood, + 1) */
  int secagg_neighbors;     /* SecAgg+: neighbours of each client (0: all) */
  double secagg_clip;       /* each weighted update value is clipped to [-clip, clip] */
  double secagg_timeout;    /* seconds each key, share and unmasking stage waits */
  double dp_clip;           /* user-level differential privacy: L2 bound of an update (0: off) */
  double dp_noise;          /* noise multiplier z: deviation z * clip on the sum */
  char *dp_mode;            /* central | distributed */
  double dp_delta;
  double dp_target_epsilon; /* stop before a round would pass it (0: never) */
  double dp_quantile;       /* adaptive clipping's target quantile (0: a fixed clip) */
  /* [train]: sent to clients each round */
  int epochs;
  int batch_size;
  double lr;
  char *optimizer;
  double momentum;
  double weight_decay;
  double prox_mu;
  double clip_norm;
  /* [eval] */
  char *test_data;
  int eval_every;
  int eval_threads;          /* evaluating on --test-data (0: one per core) */
  int fed_eval_every;
  double fed_eval_timeout;
  /* [tls] */
  char *ca;
  char *cert;
  char *key;
  char *crl;
  int ticket_lifetime;      /* seconds; 0: no session resumption */
  char *ticket_keys;        /* key file (default: CHECKPOINT.tickets; "none": in memory) */
  /* [net] */
  int chunk_kib;
  int max_frame_mib;
  double heartbeat;         /* seconds */
  double idle_timeout;      /* seconds */
  double frame_timeout;     /* seconds to complete a frame once begun */
  int max_handshakes;       /* TLS handshakes in progress at once, per I/O thread */
  int io_threads;           /* TLS I/O threads (0: one per core) */
} server_config;

extern const fl_option server_options[];

/* Cross-field checks after parsing; a message in err. */
/* The index of a --keep-best metric name, or -1 (metrics.c). */
int srv_metric_find(const char *name);
int server_config_check(const server_config *c, char *err, size_t errlen);
/* --http: "PORT" or ":PORT" (127.0.0.1), or "HOST:PORT".  FL_ECONFIG if neither. */
int server_http_address(const char *spec, char *host, size_t hostlen, int *port);
/* --max-update-norm: "Rx" gives *ratio R, a number *bound (0 = none).  FL_ECONFIG if
 * neither. */
int server_norm_bound(const char *spec, double *ratio, double *bound);

#endif
