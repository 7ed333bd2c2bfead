/* fl-server's insides: the state the server's files share and what they call on each
 * other.  Nothing outside server/ includes this header (main.c uses server.h).
 *
 * The files, one idea each:
 *   server.c     set-up and tear-down (server_create, server_run, server_free)
 *   round.c      the round state machine: srv_advance() decides what happens next;
 *                round starts and retries, the timer, signals, the goodbye
 *   sessions.c   connection events: open, hello, frame dispatch, close; the client list
 *   intake.c     update intake and admission: Update headers, update buffers, the queue
 *                of clients waiting for Proceed, refusals, folds on the thread pool
 *   broadcast.c  model broadcast: TrainTask and EvalTask, model streams and their turns
 *   downlink.c   the global model encoded once per version for a compressed downlink
 *   evaluate.c   server-side test evaluation and federated evaluation
 *   metrics.c    the round's log line and its metrics JSON line
 *   persist.c    the checkpoint, --resume and the final model file
 *   status.c     what an operator watches (--http): totals across rounds, the round
 *                history, the Prometheus exposition and the /status JSON, built on the
 *                loop thread and handed to http.c, whose own thread serves them
 *   external.c   the model clients declare; an external model's initial parameters
 *   secagg.c     secure aggregation's stages: keys, shares, masked inputs, unmasking
 *   privacy.c    differential privacy: sampling, clipping, noise, the accountant
 *   private.c    the aggregate of a round the strategy sees only as one sum (secure
 *                aggregation, differential privacy), on the thread pool
 * Client selection is common/select.h, a pure function; the aggregation strategy is
 * common/strategy.h.
 *
 * Threads: everything here runs on the control loop's thread (s->loop; iothreads.h
 * brings every connection event to it), except two jobs on libuv's thread pool: the fold
 * (intake.c; calls the strategy's fold on the update buffers it was handed, which no one
 * else touches until it is over), the strategy's finish (round.c; applies the aggregate to
 * s->global while the round is in PH_APPLYING: no fold under way, no model stream
 * reading s->global) and the test evaluation (evaluate.c; reads s->global and s->test,
 * writes s->eval_result and s->eval_rc, while the round is in PH_EVALUATING and nothing
 * else reads or writes them).  The strategy's begin runs on the loop thread while none
 * of these jobs runs.  Their after-callbacks run on the loop thread.
 *
 * Ownership: the server owns every client record (malloc'd in sessions.c when a peer
 * opens, freed in its on_close); a client's peer belongs to iothreads.h and is valid until
 * on_close returns.  Each update buffer (fl_alloc_big, one model size) is at any time in
 * exactly one place: s->bufs (free), client->buf (arriving), s->ready (waiting for a
 * fold), s->fold (being folded), or the strategy, which may keep it (fl_update.buf; the
 * server then allocates a new one for its pool). */
#ifndef FL_SERVER_INTERNAL_H
#define FL_SERVER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "config.h"
#include "dataset.h"
#include "iothreads.h"
#include "log.h"
#include "log_budget.h"
#include "modelfile.h"
#include "model.h"
#include "msg.h"
#include "rng.h"
#include "server.h"
#include "strategy.h"
#include "train.h"

#define STREAMS_PER_THREAD 4 /* model streams at once per I/O thread: enough to keep it encrypting */
#define MAX_REFUSALS 64      /* refusals a round's metrics line lists (it counts them all) */
#define MAX_PARTICIPANTS 32  /* clients a round's metrics line names (it summarises them all) */

/* Where a client's update is: none under way, waiting for an update buffer (no Proceed
 * yet), arriving into its buffer, or being skipped to its last chunk; or the initial
 * parameters it was asked for arriving into the global model (external.c). */
typedef enum { RX_IDLE, RX_WAIT_BUF, RX_UPDATE, RX_DISCARD, RX_INIT } rx_state;
typedef enum { PH_WAITING, PH_TRAINING, PH_AGGREGATING, PH_UNMASKING, PH_SUMMING,
               PH_APPLYING, PH_EVALUATING, PH_FED_EVAL, PH_DONE } phase;

typedef struct client client;

struct client {
  server *srv;
  fl_peer *peer;
  client *prev, *next;       /* srv->clients */
  client *wait_next;         /* srv->waiting: its Update waits for an update buffer */
  char id[128];
  uint64_t num_samples;
  int ready;                 /* said hello, was welcomed */
  int closing;
  int can_params;            /* lists the "params" capability (external.c) */
  int no_params;             /* was asked for the initial parameters and did not give them */

  uint64_t task_round;       /* round (and attempt) this client was selected for */
  uint64_t task_attempt;
  int answered;              /* its update for the round has begun (a second is refused) */
  int counted;               /* its answer is in: update complete or refused, or dropped */
  int eval_pending;          /* owes an EvalResult */
  fl_codec uplink;           /* its updates' encoding (the server's, if it offered it) */
  int down_cached;           /* it takes the server's compressed downlink */
  int keeps_frozen;          /* lists "frozen-cache": keeps the frozen values it is sent */
  uint64_t frozen_held;      /* the frozen_id of the values it keeps (0: none) */
  int model_left_out;        /* its current task's model leaves the frozen runs out */
  int stream_cached;         /* the model stream under way sends those frames */
  size_t frame_next;         /* the next frame of the cached model it is sent */

  int tx_active;             /* streaming the global model, or waiting to */
  int tx_queued;             /* waiting in srv->tx_queue for a stream slot */
  client *tx_next;
  fl_tensor_tx tx;

  rx_state rx;
  fl_tensor_rx rxt;
  float *buf;                /* its update buffer (the pool's) while RX_UPDATE */
  uint64_t rx_deadline;      /* RX_UPDATE: loop time (ms) by which its update must be in */
  uint8_t *data;             /* where its update goes: buf, or a buffer of its own when an
                              * update in float32 needs more than the pool's buffers hold */
  size_t data_len, data_cap; /* bytes written (encoded updates: chunk records), and room */
  uint64_t upd_examples;
  double upd_loss, upd_acc, upd_seconds;
  int upd_left_out;          /* its delta leaves out the frozen runs */
  int sa_index;              /* its index in the attempt's secure aggregation, -1: none */
  /* What the status page shows (status.c). */
  uint64_t joined_ms, heard_ms; /* uv_now when it connected, when a frame last came */
  float progress;            /* of its current task, from its heartbeats */
  uint64_t rounds_in;        /* rounds its update was accepted in */
  uint64_t last_examples;    /* its last accepted update's */
  double last_loss;
};

/* A complete update waiting for its fold, with what the round's statistics need once the
 * strategy took it (the client may be gone by then). */
typedef struct ready_update {
  float *buf;                /* the pool's buffer this update holds */
  uint8_t *data;             /* its values: buf, or a buffer of its own (freed after the fold) */
  size_t len;                /* encoded: bytes of chunk records */
  fl_enc enc;
  int kept;                  /* the strategy took data (a float32 update) */
  double weight;             /* after the weight policy */
  uint64_t examples;         /* as the client reported them */
  double loss, acc, seconds;
  int sa_index;              /* a masked input of the secure aggregation, or -1 */
  char client[128];
} ready_update;

/* One pass of the strategy's fold over every update that was waiting for it.  Updates
 * whose norm exceeds the round's bound are left out of the fold and refused after it. */
typedef struct fold_job {
  uv_work_t work;
  server *srv;
  size_t k;
  ready_update *items;       /* [k] */
  fl_update *u;              /* [k] */
  double *norm;              /* [k] each update's L2 norm (when the round bounds it) */
  double bound;              /* the round's norm bound, 0: none */
  int rc;
  char err[256];
} fold_job;

/* The strategy's finish on the thread pool. */
typedef struct apply_job {
  uv_work_t work;
  server *srv;
  int rc;
  double delta_norm;
  char err[256];
} apply_job;

typedef struct refusal { char client[128]; char reason[160]; } refusal;
typedef struct participant { char client[128]; uint64_t examples; double loss; } participant;

/* A client that said it cannot train this model (ERROR_INCOMPATIBLE): left out of the
 * rest of the run, by its certificate name. */
typedef struct excluded {
  struct excluded *next;
  char client[128];
  char reason[400];
} excluded;

typedef struct round_stats {
  uint64_t number, attempt;
  size_t selected, target, answered, accepted, refused, dropped;
  uint64_t examples;
  double loss_sum, acc_sum;          /* weighted as the updates were */
  double weight_sum;                 /* of the folded updates */
  double slowest;                    /* longest local training time reported */
  double test_loss, test_acc;
  double test_auc;                   /* ROC AUC of a binary head; 0 when there is none */
  int tested;
  double fed_loss, fed_acc;
  uint64_t fed_n;
  double fed_auc;                    /* AUC weighted by the examples of the clients that
                                      * reported one (binary heads) */
  uint64_t fed_auc_n;
  uint64_t fed_acc_n;            /* the examples of results with an accuracy (regression has none) */
  size_t fed_asked, fed_answered;
  uint64_t bytes_in0, bytes_out0;
  double cpu0;                       /* the process's CPU seconds when the round began */
  uint64_t t0;                       /* the round's first selection */
  int timing;                        /* t0 is set */
  refusal refusals[MAX_REFUSALS];
  size_t n_refusals;
  size_t failed;                     /* selected clients that reported they cannot train */
  refusal failures[MAX_REFUSALS];    /* who, and their reasons */
  size_t n_failures;
  int timed_out;
  size_t fold_passes;                /* each folds one or more updates */
  uint64_t update_payload, update_raw; /* tensor bytes of the updates received, and as float32 */
  uint64_t model_payload, model_raw;   /* the same for the models sent */
  size_t received;                   /* complete, finite updates (folded or to be) */
  int fold_failed;                   /* the strategy refused a fold: the attempt is void */
  int abandoned;                     /* closed without enough updates: the attempt is void */
  size_t strategy_errors;            /* failed folds and finishes, all attempts of the round */
  double weight_cap;                 /* the weight policy's cap this attempt (0: none) */
  double unit_weight;                /* a private round's weights are min(weight, unit) /
                                      * unit, in [0, 1] (the cap, or the most declared) */
  size_t weights_capped;             /* updates whose weight the cap lowered */
  double norm_bound;                 /* updates with a larger L2 norm are refused (0: none) */
  double delta_norm;                 /* the applied aggregate's L2 norm */
  /* secure aggregation (secagg.c): the clients of each stage this attempt */
  size_t sa_n, sa_keys, sa_shared, sa_inputs, sa_revealed;
  double sa_seconds;                 /* unmasking's time on the pool */
  /* differential privacy (privacy.c) */
  double dp_clip;                    /* the bound this attempt's updates were clipped to */
  double dp_within;                  /* the share of updates within it (noised) */
  double epsilon;                    /* after this round */
  /* who took part (metrics.c): the first MAX_PARTICIPANTS of the attempt's selected
   * clients and of its contributors by name, every contributor in the summary */
  char selected_ids[MAX_PARTICIPANTS][128];
  size_t n_selected_ids;
  participant parts[MAX_PARTICIPANTS];
  size_t n_parts;
  uint64_t part_examples_min, part_examples_max;
  double part_loss_min, part_loss_max;
} round_stats;

struct server {
  const server_config *cfg;
  uv_loop_t loop;
  uv_timer_t timer;             /* round and federated-evaluation timeouts */
  uv_signal_t sigint, sigterm, sighup;
  uv_timer_t stop_timer;         /* after a signal: the process ends by this deadline */
  int stop_timer_on;
  fl_tls_config *tls;            /* new connections' (SIGHUP replaces it: server.c) */
  char *ticket_keys;             /* the session-ticket key file, or NULL */
  fl_io *io;                     /* the I/O threads serving the clients */
  fl_conn_options copt;
  uint8_t *heartbeat;
  size_t heartbeat_len;

  fl_model *model;
  size_t n;                      /* parameters */
  float *global;
  uint64_t model_version;
  fl_strategy *strategy;
  fl_rng rng;
  fl_codec uplink, downlink;     /* --uplink, --downlink */
  size_t buf_bytes;              /* an update buffer: room for one --uplink update */
  /* The global model encoded for the compressed downlink, once per model version (the
   * frames every client taking it is sent; downlink.c). */
  uint8_t **down_frame;
  size_t *down_len, down_count, down_cap;
  uint8_t *down_in_run;          /* [down_cap] 1: the frame lies inside a frozen run */
  size_t down_out;               /* frames outside the frozen runs */
  uint64_t down_version;
  int down_valid;

  fl_dataset test;
  int have_test;
  fl_trainer *eval_trainer;
  uv_work_t eval_work;
  fl_eval eval_result;
  int eval_rc;

  int n_bufs;                    /* update buffers in all (--update-buffers) */
  float **bufs;                  /* [n_bufs] the free ones first */
  int n_free;
  client *waiting, *waiting_tail; /* Updates waiting for a buffer, first come first */
  ready_update *ready;           /* [n_bufs] complete updates waiting for a fold */
  int n_ready_bufs;
  fold_job fold;                 /* the one fold under way, if fold_busy */
  int fold_busy;
  apply_job apply;               /* the strategy's finish, in PH_APPLYING */
  int uniform_weights;           /* --weights uniform */
  size_t max_selected;           /* clients a round may select (--strategy-memory) */
  double norm_ratio, norm_abs;   /* --max-update-norm: RATIOx of the model's norm, or absolute */

  client *clients;
  size_t n_clients, n_ready;
  excluded *excluded;            /* left out of the run (sessions.c), newest first */
  struct id_log *id_logs;        /* [id_logs_cap] log budgets by identity (idlog.c) */
  size_t id_logs_n, id_logs_cap;
  size_t n_excluded;
  size_t sends_pending;          /* model streams not finished, queued ones too */
  size_t streams;                /* model streams under way (at most max_streams) */
  size_t max_streams;            /* STREAMS_PER_THREAD per I/O thread */
  client *tx_queue, *tx_queue_tail;
  int starting_streams;

  struct srv_secagg *sa;         /* this attempt's secure aggregation (secagg.c), or NULL */
  uv_timer_t sa_timer;           /* its stages' timeouts */
  uv_timer_t upload_timer;       /* the earliest deadline of an update given Proceed */
  uint64_t upload_due;           /* when it is due (loop time, ms) */
  struct srv_privacy *dp;        /* differential privacy (privacy.c), or NULL */
  uv_work_t sum_work;            /* private.c's job */

  phase ph;
  round_stats r;
  uint64_t bytes_in, bytes_out;
  FILE *metrics;
  char run_id[40];               /* this run's, on every metrics line ("run") */
  char *checkpoint;              /* path */
  uint64_t ready_events;         /* hellos so far: "new clients" for a stalled round */
  uint64_t ready_seen;           /* ready_events when the server began waiting for more */
  int waiting_for_more;
  int warned_few;                /* a round selected fewer than --clients-per-round */
  uint64_t first_round;          /* 1, or the round after the checkpoint's */
  int need_init;                 /* an external model waits for a client's parameters */
  client *init_from;             /* the client asked for them (external.c) */
  int init_waiting_logged;
  int stopping, exit_code;
  /* Feature standardisation (standardize.c): the clients' statistics until the
   * transform is fixed, then the transform sent with every task (tf_dim 0: none). */
  double *fs_sum, *fs_sq;       /* [in_dim] */
  uint64_t fs_count;
  char **fs_ids;                /* [fs_n] clients whose statistics are counted */
  size_t fs_n;
  int fs_waiting_logged;
  float *tf_mean, *tf_std;      /* [tf_dim], one allocation (tf_mean) */
  float *frozen;                /* --freeze: [n] 1 where a parameter is frozen, or NULL */
  float *frozen_ref;            /* [n] the global model they hold, restored after every
                                 * round (a lossy encoding's rounding cannot move them) */
  uint64_t *frozen_at;          /* their runs (codec.h), offered to clients to leave out of
                                 * their deltas (TrainConfig.frozen_runs), or NULL */
  fl_runs frozen_runs;          /* frozen_at's; none with secure aggregation */
  uint64_t frozen_id;           /* fl_runs_id of frozen_runs over the values the clients
                                 * are sent there (frozen_ref's, or with a compressed
                                 * downlink the decoded model's); 0: no runs.  A client that
                                 * keeps them is sent models without them (broadcast.c) */
  size_t tf_dim;
  int have_best;                /* --keep-best: best_value holds a round's value */
  double best_value;
  uint64_t best_round;
  int lingered;                  /* the goodbye is over (see close_all in round.c) */
  struct srv_status *status;     /* --http (status.c), or NULL */
};

/* ---- round.c ---- */

/* Decides what happens next; called after every event that can move a round on. */
void srv_advance(server *s);
/* Round `number` begins: the server waits for enough clients. */
void srv_begin_round_number(server *s, uint64_t number);
/* Arms the round's timer (round or federated-evaluation timeout); it sets r.timed_out. */
void srv_arm_timer(server *s, double seconds);
/* Writes the final model and says goodbye to every client. */
void srv_finish_run(server *s, const char *why);
/* The goodbye is over: what is still open is closed. */
void srv_end_linger(server *s);
/* SIGINT and SIGTERM (h->data is the server). */
void srv_on_signal(uv_signal_t *h, int signum);

/* ---- sessions.c ---- */

/* The callbacks of every peer (fl_io_listen's data is the server). */
extern const fl_peer_callbacks srv_peer_callbacks;
/* Counts bytes sent to the client (the server's and its I/O thread's totals). */
void srv_count_sent(client *c, size_t bytes);
/* Sends env to the client and counts its bytes.  0 or FL_E* (fl_peer_send's). */
int srv_send(client *c, const Fl__Envelope *env);
/* 1 when the client's certificate has expired (now: Unix time) since its handshake: it is told, closed
 * and logged (a connection outlives the check at the handshake). */
int srv_cert_expired(client *c, int64_t now);
/* Ready clients, not closing, whose certificate is still valid (those expired are closed). */
size_t srv_clients_available(server *s);
/* Sends an Error; with ERROR_VERSION it lists the versions this server speaks. */
void srv_send_error(client *c, Fl__ErrorCode code, const char *reason);
/* Frees the list of clients left out of the run. */
void srv_excluded_free(server *s);

/* ---- idlog.c ---- */

/* Whether a line about a message of this client may go to the log: a refusal, its error
 * report, an unexpected message or evaluation result (what a client can send again and
 * again without being closed).  At most 20 a round per identity, so that no client can
 * flood the log, reconnecting or not; what it sent is counted all the same.  The first
 * line left out says so, and srv_client_logs_said, when the round ends, how many were. */
int srv_client_log_ok(client *c);
/* Logs, for each identity whose lines the round left out, how many (and forgets them). */
void srv_client_logs_said(server *s);
/* The same for lines about its connections (connected, refused at hello, ready, goodbye,
 * disconnected): at most 12 a minute per identity, the count left out said with the
 * identity's next line after the minute. */
int srv_id_log_ok(client *c);
void srv_id_logs_free(server *s);

/* ---- intake.c ---- */

/* An Update header: refused, or the client gets an update buffer and Proceed, or waits
 * for one. */
void srv_on_update(client *c, const Fl__Update *u);
/* A TensorChunk of the client's update. */
void srv_on_chunk(client *c, const Fl__TensorChunk *ch);
/* 1 while c is selected for the attempt in training. */
int srv_selected_now(const client *c);
/* The client's answer for the round is in (update complete or refused, or it is gone). */
void srv_count_answer(client *c);
/* Gives back the client's update buffer, or its place in the queue for one; the rest of
 * its update is skipped. */
void srv_abort_rx(client *c);
/* The round stops taking updates: those arriving or waiting for a buffer are refused. */
void srv_close_intake(server *s);
/* No fold under way and none waiting. */
int srv_folds_idle(const server *s);
/* Bytes of room one update of total values in encoding u needs. */
size_t srv_update_room(const server *s, const fl_codec *u, uint64_t total);
/* A new attempt: the weight cap and the norm bound of its updates, from the selected
 * clients and the global model. */
void srv_intake_begin(server *s, client *const *selected, size_t k);

/* A selected client reports it cannot train this round (its Error about the task): that
 * is its answer. */
void srv_on_train_error(client *c, uint64_t round, const char *reason);

/* ---- external.c ---- */

/* 1, with the reason in why, when the model the client's Hello declares is not the
 * server's, or when it declares none and the server trains an external model. */
int srv_model_disagrees(const server *s, const Fl__Hello *h, char *why, size_t len);
/* While s->need_init: asks a client for the initial parameters, unless one is on it. */
void srv_ask_init(server *s);
/* Params from a client, and the chunks that follow it (rx RX_INIT). */
void srv_on_params(client *c, const Fl__Params *p);
void srv_on_init_chunk(client *c, const Fl__TensorChunk *ch);
/* The client asked refuses or fails: another will be asked. */
void srv_init_failed(client *c, const char *why);
/* The client leaves: if it was the one asked, another will be. */
void srv_init_client_gone(client *c);

/* ---- secagg.c ---- */

/* The attempt's secure aggregation among the k selected clients (sel is sorted by id:
 * the order gives their indices): each is sent its SecAggSetup (before its TrainTask).
 * 0, or FL_E* with the reason in why (the attempt cannot run). */
int srv_secagg_begin(server *s, client **sel, size_t k, char *why, size_t len);
/* Ends it (a new attempt, the run's end). */
void srv_secagg_end(server *s);
void srv_secagg_on_keys(client *c, const Fl__SecAggKeys *m);
void srv_secagg_on_shares(client *c, const Fl__SecAggShares *m);
void srv_secagg_on_reveal(client *c, const Fl__SecAggReveal *m);
/* The client is gone (or excluded): it leaves the stages it had not finished. */
void srv_secagg_client_gone(client *c);
/* In PH_TRAINING: moves the stages of keys and shares on.  1 while they are not over
 * (no update can be taken yet), 0 once masked inputs may come, -1 when the attempt
 * cannot go on (too few clients left; logged, with the reason in why). */
int srv_secagg_step(server *s, char *why, size_t len);
/* Whether c may send its masked input now, and its ring encoding and length. */
int srv_secagg_input_ok(const client *c, fl_enc *enc, uint64_t *dim, char *why, size_t len);
/* On the thread pool (a fold): adds a complete masked input into the sum. */
int srv_secagg_fold(server *s, const ready_update *it, char *err, size_t len);
/* After the inputs: asks the survivors to reveal (PH_UNMASKING).  0, or -1 when too few
 * survived (logged, with the reason in why). */
int srv_secagg_unmask_begin(server *s, char *why, size_t len);
/* In PH_UNMASKING: 1 while reveals are still due and the stage has time. */
int srv_secagg_unmask_waiting(const server *s);
/* The survivors that revealed their shares. */
size_t srv_secagg_revealed(const server *s);
/* On the thread pool: the unmasked sum, decoded: sum[0..n) of the weighted values, the
 * weights' sum, and the clip bits' (adaptive clipping).  0 or FL_E* with the reason. */
int srv_secagg_result(server *s, double *sum, double *weights, double *bits, char *err, size_t len);

/* ---- privacy.c ---- */

int srv_privacy_create(server *s, char *err, size_t len);
void srv_privacy_free(server *s);
/* 1 when another round stays within --dp-target-epsilon (else the run ends). */
int srv_privacy_allows_round(server *s, size_t ready);
/* Poisson sampling: each of the m candidates with probability q = expected / m, into
 * chosen (increasing); the count. */
size_t srv_privacy_select(server *s, size_t m, size_t *chosen);
/* A new attempt: the denominator of the mean (q times the weights of all ready clients)
 * and what secure aggregation's clients must do (their noise). */
void srv_privacy_begin(server *s, client *const *ready, size_t m, size_t selected);
/* What a client adds before secure aggregation (distributed mode; 0 otherwise): noise on
 * each value, and on the clip bit; the clip, and whether the bit is wanted. */
void srv_privacy_client(const server *s, uint32_t threshold, double *clip, double *noise,
                        double *bit_noise, int *clip_bit);
/* On the thread pool (a fold, central mode): the update clipped and added, weighted. */
void srv_privacy_fold(server *s, const fl_update *u, double weight);
/* On the thread pool: the noised mean delta from the sum of the clipped, weighted updates
 * (central noise added unless the clients added theirs), into mean[n]; the clip moves
 * (adaptive) and the accountant counts the round.  0 or FL_E*. */
int srv_privacy_mean(server *s, double *sum, double weights, double bits, size_t contributors,
                     float *mean, char *err, size_t len);
/* The round was applied: epsilon so far (the accountant). */
double srv_privacy_epsilon(const server *s, double *server_epsilon);
/* The accountants and the clipping bound, for the checkpoint (nothing when DP is off). */
int srv_privacy_save(const server *s, uint8_t **out, size_t *len);
/* --resume: restores them; refuses a private run resumed from a checkpoint without them. */
int srv_privacy_load(server *s, const uint8_t *b, size_t len, char *err, size_t errlen);

/* ---- private.c ---- */

/* 1 when the round's aggregate comes as one sum (secure aggregation or differential
 * privacy) rather than from the strategy's folds. */
int srv_private_round(const server *s);
/* Folds into the private sum on the thread pool (instead of the strategy's fold). */
int srv_private_fold(server *s, const ready_update *it, const fl_update *u, char *err, size_t len);
/* After the folds: the sum becomes the mean delta, folded into the strategy as one
 * update, on the thread pool (PH_SUMMING); then the strategy applies it (PH_APPLYING).
 * apply starts the strategy's finish. */
void srv_private_start(server *s, void (*apply)(server *s), void (*fail)(server *s, const char *why));

/* ---- broadcast.c ---- */

/* TrainTask, then the global model (when the client's turn to stream comes). */
void srv_send_train_task(client *c);
/* EvalTask, then the global model; the client owes an EvalResult. */
void srv_send_eval_task(client *c);
/* Streams more of the model to c, up to the connection's high water (on_drain). */
void srv_pump_tx(client *c);
/* c's model stream is over or abandoned: its turn goes to the next in line. */
void srv_tx_done(client *c);
/* The phase's deadline passed: clients still waiting for or taking their model are
 * closed (logged with why), so that no stream holds the round. */
void srv_drop_streams(server *s, const char *why);

/* ---- downlink.c ---- */

/* With a compressed --downlink: encodes the global model once for its version, and makes
 * s->global the decoded values, so every client (those sent float32 too) trains from
 * exactly the model the others got.  Call before any model stream of a round or of a
 * federated evaluation starts.  0, or FL_E* (logged). */
int srv_downlink_prepare(server *s);
/* The i-th frame of the encoded model (NULL past the last). */
const uint8_t *srv_downlink_frame(const server *s, size_t i, size_t *len);
/* The first frame from i on outside the frozen runs (down_count when none is left). */
size_t srv_downlink_skip_runs(const server *s, size_t i);
void srv_downlink_free(server *s);

/* ---- evaluate.c ---- */

/* Evaluates the global model on the test data on the thread pool; federated
 * evaluation follows. */
void srv_evaluate_test(server *s);
/* The federated-evaluation phase: when due, ready clients evaluate the global model. */
void srv_begin_fed_eval(server *s);
void srv_on_eval_result(client *c, const Fl__EvalResult *e);
/* The client reports it cannot evaluate this round: its answer. */
void srv_on_eval_error(client *c, uint64_t round);

/* ---- metrics.c ---- */

/* The round's log line, and its line in the metrics file (--metrics). */
void srv_write_metrics(server *s, double seconds);
/* The process's peak resident memory; -1 if unknown. */
long srv_peak_rss_kib(void);
/* The CPU time the process has used, user and system, all threads; -1 if unknown. */
double srv_cpu_seconds(void);

/* The attempt's selected clients (their progress starts at 0), and a contribution the
 * strategy took: the round's participants. */
void srv_participants_begin(server *s, client *const *selected, size_t k);
void srv_participant_add(server *s, const ready_update *it);
/* A JSON string, escaped. */
void srv_json_str(FILE *f, const char *v);

/* ---- status.c ---- */

/* --http: the totals, and the HTTP server on its thread (http.h).  0, or FL_E* with a
 * message in err.  Free with srv_status_free before the loop's last run. */
int srv_status_create(server *s, char *err, size_t errlen);
void srv_status_free(server *s);
/* A round is done (from srv_write_metrics): the totals and the history move on. */
void srv_status_round_done(server *s, double seconds, double train_loss, double train_acc);
/* A refusal, counted by its kind. */
void srv_status_refused(server *s, const char *reason);
/* Bytes received from and sent to c, counted for its I/O thread. */
void srv_status_io(client *c, size_t in, size_t out);

/* ---- persist.c ---- */

/* Writes the checkpoint of the round just completed; a failure is logged. */
void srv_save_checkpoint(server *s);
/* Before anything is written: the directories of --out and the checkpoint exist and are
 * writable, and a new run (no --resume) does not start over the checkpoint of an earlier
 * one unless --force (which removes it).  0 or FL_E* with a message in err. */
int srv_check_outputs(server *s, char *err, size_t errlen);
/* 1 when the checkpoint file exists (a restart with --resume continues from it). */
int srv_have_checkpoint(const server *s);
/* --resume: the state the checkpoint holds (*next_round the round after it); no
 * checkpoint yet is not an error.  0 or FL_E* with a message in err. */
int srv_resume(server *s, uint64_t *next_round, char *err, size_t errlen);
/* Writes the final model (--out); a failure is logged and sets the exit code. */
void srv_save_final_model(server *s);
/* ---- feature standardisation (standardize.c) ---- */
/* A client's statistics from its Hello, counted once per client before the transform
 * is fixed; bad ones are ignored with a warning naming the client. */
void srv_standardize_hello(client *c, const Fl__Hello *h);
/* Before a round starts: 1 when it may (the transform is fixed, or none is wanted),
 * 0 while --standardize still waits for the clients' statistics. */
int srv_standardize_ready(server *s);
/* The transform as the model file keeps it (dim 0: none). */
fl_transform srv_transform(const server *s);
void srv_standardize_free(server *s);
/* --keep-best: after a round's metrics, writes the global model to OUT.best when the
 * round's value of the metric is the best so far (a round without it is skipped). */
void srv_keep_best(server *s);
/* The value of --keep-best metric number k for the round that ends; 0 when the round
 * has none (metrics.c). */
int srv_metric_value(const server *s, int k, double *v);
int srv_metric_lower_is_better(int k);

#endif
