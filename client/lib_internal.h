/* libflclient's insides, shared by its files (never installed).
 *
 *   lib_error.c     error names and sentences, the version, errmsg and logging
 *   lib_config.c    a client's life outside a run: new, free, the setters
 *   lib_session.c   a run: connecting, backoff, the messages from the server, finishing
 *   lib_task.c      tasks: receiving the model, calling the application, the answer
 *   lib_throttle.c  handshakes in flight, shared by the clients of one loop
 *   lib_nolog.c     libfl's logging, silenced inside the library
 *
 * Internal functions carry the prefix flc__; the version script exports fl_client_*
 * only, and the committed list libflclient.symbols is checked against the build.
 *
 * Threads: everything here runs on the loop thread, except what says otherwise: the
 * application's callbacks on a task's own thread (WORKER threading), and the completion
 * of a task (flc__complete), which hands it to the loop through the client's mutex and
 * its uv_async. */
#ifndef FL_CLIENT_LIB_INTERNAL_H
#define FL_CLIENT_LIB_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "conn.h"
#include "fl/client.h"
#include "codec.h"
#include "msg.h"
#include "secagg.h"
#include "rng.h"
#include "tls.h"

/* Not an application task: the server asked for the initial parameters. */
#define FLC__TASK_PARAMS 3
/* The largest model a client that declared none accepts from a server (4 GiB). */
#define FLC__MAX_PARAMS ((uint64_t)1 << 30)

typedef enum {
  FLC_IDLE,       /* not running */
  FLC_CONNECTING, /* connecting, handshaking or waiting for a handshake slot */
  FLC_JOINING,    /* said hello, waits for Welcome */
  FLC_READY,      /* welcomed: takes tasks */
  FLC_BACKOFF,    /* waits to reconnect */
  FLC_FINISHING   /* closing down; the finish callback follows */
} flc_state;

typedef struct flc_extra { char *key; double value; } flc_extra;
typedef struct flc_frozen flc_frozen; /* frozen values, kept across tasks (lib_frozen.c) */

struct fl_client_task {
  fl_client *c;
  int kind;                  /* FL_CLIENT_TASK_FIT, _EVALUATE, FLC__TASK_PARAMS */
  uint64_t gen;              /* the connection it came on */
  uint64_t round, model_id, n;
  char *model;               /* the model's spec, as fl_client_task_model gives it */
  fl_client_fit_config cfg;
  char optimizer[32];
  char *freeze;              /* cfg.freeze, owned */
  uint64_t *frozen_at;       /* the server's frozen runs (TrainConfig.frozen_runs), owned */
  fl_runs frozen;            /* frozen_at's: left out of a delta that is zero over them */
  uint64_t frozen_id;        /* the task's (TrainTask.frozen_id): what the runs hold */
  int model_left_out;        /* its model came without the frozen runs (filled in) */
  flc_extra *extra;          /* [n_extra] the strategy's settings */
  size_t n_extra;
  float *global;             /* [n] the model as received (fit, evaluate); NULL after */
  float *params;             /* [n] fit: trained weights, then the delta; evaluate: global */
  uint32_t *ring;            /* secure aggregation: the masked input (lib_secagg.c) */
  fl_tensor_rx rx;
  fl_tensor_tx tx;
  int go;                    /* the answer's tensor may be sent (Proceed came) */
  fl_client_metrics metrics;
  float *fmean, *fstd;       /* [fdim] the server's feature standardisation, or NULL */
  size_t fdim;
  atomic_int cancelled;
  int status;
  char reason[256];          /* fl_client_task_error's */
  uint64_t t0;               /* uv_hrtime at dispatch */
  double seconds;
  pthread_t thread;
  int threaded;
  fl_client_task *next;      /* the client's list of completed tasks */
};

struct fl_client_throttle {
  int max, used;
  int holders;               /* clients configured with it */
  fl_client *head, *tail;    /* waiting for a slot */
};

struct fl_client {
  /* Configuration (the owning thread, while not running). */
  void *data;
  char name[64];
  char *host;
  int port;
  fl_tls_config *tls;
  char *model_spec;          /* declared, canonical; NULL when none */
  double *fs_sum, *fs_sq;    /* [fs_dim] feature statistics for the Hello, or NULL */
  size_t fs_dim;
  uint64_t fs_count;
  uint64_t model_id, num_params;
  uint64_t num_examples;
  unsigned max_retries;
  double retry_base, retry_max;
  double heartbeat, idle_timeout;
  int threading;
  fl_client_throttle *throttle;
  fl_client_task_cb fit, evaluate;
  fl_client_get_params_cb get_params;
  fl_client_set_params_cb set_params;
  fl_client_log_cb log;
  int log_level;
  fl_client_finish_cb finish;
  char errmsg[512];

  /* A run (the loop thread). */
  uv_loop_t *loop;
  int running;
  flc_state state;
  int status;                /* how the run ends */
  int *status_out;           /* fl_client_run's copy */
  fl_conn_options copt;
  uint8_t *heartbeat_msg;
  size_t heartbeat_len;
  atomic_uint progress;      /* the task's fraction done, in millionths (any thread) */
  unsigned progress_sent;    /* what the heartbeat payload carries (the loop's) */
  uint64_t heartbeat_seq;
  fl_conn *conn;
  uint64_t gen;              /* bumps with every connection */
  unsigned attempts;
  uv_timer_t retry;
  uv_async_t async;
  int handles_open;
  int handles_closing;
  fl_rng rng;                /* backoff jitter */
  uint32_t chunk_bytes;      /* tensor data per chunk, as the Welcome asks */
  unsigned encodings;        /* FL_CLIENT_ENC_* offered in the Hello */
  int frozen_cache;          /* keeps frozen values across tasks (fl_client_set_frozen_cache) */
  flc_frozen *frozen;        /* the ones it keeps, or NULL */
  fl_codec uplink;           /* the encoding of this connection's updates (the Welcome's) */
  float *residual;           /* error feedback: what lossy updates left out so far (across
                              * rounds and connections, for residual_n parameters) */
  uint64_t residual_n;
  /* Secure aggregation of the round in hand (lib_secagg.c). */
  struct fl_secagg_client *sa;
  struct flc_secagg_cfg *sa_cfg;
  fl_client_task *sa_task;   /* its fit, waiting for the shares */
  struct flc_sa_job *sa_job; /* its stage running on libuv's thread pool */
  int sa_jobs;               /* jobs not back yet, this round's or a reset one's */
  char *server_spec;         /* the server's model, from its Welcome or last TrainTask */
  uint64_t server_model_id, server_num_params;
  fl_client_task *rx;        /* its model is arriving */
  fl_client_task *active;    /* handed to the application, not completed yet */
  fl_client_task *queued;    /* arrived while active ran */
  fl_client_task *tx;        /* an answer waiting for Proceed or being sent */
  uint64_t discard_total;    /* chunks of a refused task are skipped until this offset */
  int discarding;
  fl_conn *handshaking;      /* the connection holding a throttle slot */
  int throttle_queued;
  fl_client *throttle_next;

  /* Shared with other threads, under mu. */
  pthread_mutex_t mu;
  int accepting;             /* the async handle is open */
  int stop_requested;
  fl_client_task *done;      /* completed tasks, newest first */
};

/* lib_error.c */
int flc__errf(fl_client *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void flc__log(fl_client *c, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The public code for an FL_E* code of libfl. */
int flc__code(int fl_err);

/* lib_session.c */
int flc__send(fl_client *c, const Fl__Envelope *env);
void flc__send_error(fl_client *c, Fl__ErrorCode code, const char *reason, uint64_t round,
                     Fl__TaskKind task);
void flc__start_connect(fl_client *c);
void flc__maybe_finished(fl_client *c);
/* Ends the run with status (errmsg set by the caller): the connection closes once what
 * is queued on it is sent. */
void flc__finish(fl_client *c, int status);

/* lib_task.c */
void flc__on_train_task(fl_client *c, const Fl__TrainTask *t);
void flc__on_eval_task(fl_client *c, const Fl__EvalTask *t);
void flc__on_params_request(fl_client *c, const Fl__ParamsRequest *r);
void flc__on_chunk(fl_client *c, const Fl__TensorChunk *ch);
void flc__on_proceed(fl_client *c, const Fl__Proceed *p);
void flc__pump(fl_client *c);
/* Takes the completed tasks the async brought, newest first (loop thread). */
void flc__on_completed(fl_client *c, fl_client_task *list);
/* Drops what the connection was doing: the active task is cancelled, the others freed. */
void flc__drop_tasks(fl_client *c);
/* Sends the Update of fit t, whose tensor (t->tx) is ready, in encoding enc. */
void flc__send_update(fl_client *c, fl_client_task *t, fl_enc enc);

/* ---- lib_secagg.c: secure aggregation's client side ---- */
void flc__on_secagg_setup(fl_client *c, const Fl__SecAggSetup *m);
void flc__on_secagg_peers(fl_client *c, const Fl__SecAggPeers *m);
void flc__on_secagg_shares(fl_client *c, const Fl__SecAggShares *m);
void flc__on_secagg_unmask(fl_client *c, const Fl__SecAggUnmask *m);
/* 1 when the fit t belongs to a securely aggregated round: the secure aggregation owns
 * it and sends it masked once it can. */
int flc__secagg_take(fl_client *c, fl_client_task *t);
/* Forgets the round (the connection is gone, or a new round began). */
void flc__secagg_reset(fl_client *c);
void flc__task_free(fl_client_task *t);

/* lib_frozen.c: keeps x's values over the runs r when fl_runs_id says they are id's (and
 * caching is on), in place of what the client kept before; drops what it keeps; the id it
 * keeps (0: none); its runs if it keeps id's values, else NULL; writes them into x. */
void flc__frozen_keep(fl_client *c, uint64_t id, const fl_runs *r, const float *x);
void flc__frozen_drop(fl_client *c);
uint64_t flc__frozen_held(const fl_client *c);
const fl_runs *flc__frozen_runs(const fl_client *c, uint64_t id);
void flc__frozen_fill(const fl_client *c, float *x);

/* lib_throttle.c: 1 when c may handshake now, else c waits and starts when a slot
 * frees; release gives c's slot back; leave takes c out of the queue. */
int flc__throttle_acquire(fl_client *c);
void flc__throttle_release(fl_client *c);
void flc__throttle_leave(fl_client *c);

#endif
