/* libflclient: federate your own C or C++ training code.
 *
 * A client joins an fl-server over mutually authenticated TLS and, each round it is
 * selected for, trains the global model with YOUR code and sends back the weight delta.
 * The library carries everything else: the protocol, TLS, reconnection with exponential
 * backoff and jitter, heartbeats, models and deltas streamed in bounded chunks, waiting
 * for the server's Proceed before an update's delta is sent, and the server's Done (end
 * of training, or "come back later").
 *
 * A minimal client (error checks left out):
 *
 *     static int fit(fl_client *c, fl_client_task *t) {
 *       float *w = fl_client_task_params(t);          // the global model, in place
 *       my_train(w, fl_client_task_num_params(t), fl_client_task_config(t)->lr);
 *       fl_client_metrics *m = fl_client_task_metrics(t);
 *       m->num_examples = my_count;                   // the weight of this update
 *       m->loss = my_loss;
 *       return 0;
 *     }
 *     ...
 *     fl_client *c;
 *     fl_client_new(&c);
 *     fl_client_set_server(c, "coordinator.example.org:7700");
 *     fl_client_set_tls(c, "ca.crt", "client-0001.crt", "client-0001.key", NULL);
 *     fl_client_set_model(c, "my-logreg", 21);        // name and parameter count
 *     fl_client_set_num_examples(c, my_count);        // local training examples
 *     fl_client_on_fit(c, fit);
 *     int rc = fl_client_run(c);                      // until the server says done
 *     if (rc) fprintf(stderr, "%s\n", fl_client_errmsg(c));
 *     fl_client_free(c);
 *
 * Build with `pkg-config --cflags --libs flclient` (shared library libflclient.so.1, or
 * `pkg-config --static` with libflclient.a).
 *
 * Parameters.  A model is one flat array of float (IEEE-754 binary32) values; the
 * federation agrees on its length and on what each position means.  The server averages
 * the clients' deltas (their trained parameters minus the global ones they started
 * from), weighted by the example counts they report.
 *
 * Models.  A client declares the model it trains, by name and parameter count
 * (fl_client_set_model: "external:NAME:N"), or by a spec of the project's training core
 * (fl_client_set_model_spec).  The server runs an external model with
 * `fl-server --model external:NAME:N`, refuses a client whose declaration differs (the
 * client then ends with FL_CLIENT_EMODEL and fl_client_errmsg names both models), and
 * takes its initial parameters from --init-model or, by default, from the first client
 * able to give them (the get_params callback).  A client that declares nothing takes
 * whatever model the server trains (fl_client_task_model names it).
 *
 * Errors.  Functions return 0 or a negative FL_CLIENT_E* code; fl_client_strerror gives
 * a sentence and fl_client_err_name the symbol.  After a failed call on a client,
 * fl_client_errmsg(c) says what went wrong in words (naming the file, the value, the
 * server's reason).  A callback that fails returns a negative code (fl_client_task_error
 * records a reason); the library reports it to the server, which goes on with the round
 * without this client's update, and the client waits for its next task.
 *
 * Threads.  A client runs on one libuv loop: its own (fl_client_run) or the caller's
 * (fl_client_start).  Every function takes the client from one thread at a time, the
 * loop's while it runs, except these, which any thread may call at any time:
 * fl_client_stop, fl_client_task_done, fl_client_task_cancelled, and the task accessors
 * (on a task the caller still holds).  The callbacks of one client are never called
 * concurrently: it handles one task at a time; a task that arrives while another runs
 * waits for it (and the running one is told it is no longer wanted, see
 * fl_client_task_cancelled).  Which thread calls which callback:
 *   - FL_CLIENT_THREAD_WORKER (the default): set_params, fit, evaluate and get_params
 *     run on a thread the library starts for the task, so the loop keeps answering
 *     heartbeats while a fit takes minutes;
 *   - FL_CLIENT_THREAD_LOOP: they run on the loop thread.  Many clients on one loop (a
 *     simulation) use this: fit hands the task to the application's own threads and
 *     returns FL_CLIENT_PENDING; fl_client_task_done completes it later, from any thread.
 *   - log and finish run on the loop thread, always.
 * When set_params is given, get_params after a fit that returned FL_CLIENT_PENDING runs
 * inside fl_client_task_done, on the thread that calls it.  The library keeps no global state of its own: clients
 * are independent, on one loop or many (the TLS random generators of all of them seed
 * from one entropy source, behind a lock).  It writes nothing to stderr and installs no
 * signal handler; the one process-wide effect is that connecting sets SIGPIPE to
 * ignored when it is at its default, so a server that resets a connection ends that
 * connection, not the process.
 *
 * Memory.  The caller owns the client (fl_client_new / fl_client_free).  Strings given to
 * setters are copied.  A task and its buffers belong to the library: the application
 * uses them from the callback's start until it returns, or, after FL_CLIENT_PENDING,
 * until it calls fl_client_task_done.  Pointers a callback receives are valid during
 * that call only unless said otherwise. */
#ifndef FL_CLIENT_PUBLIC_H
#define FL_CLIENT_PUBLIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FL_CLIENT_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define FL_CLIENT_PRINTF(f, a)
#endif

/* ---- version ---- */

#define FL_CLIENT_VERSION_MAJOR 1
#define FL_CLIENT_VERSION_MINOR 1
#define FL_CLIENT_VERSION_PATCH 0
/* The library's version as "MAJOR.MINOR.PATCH" (static string).  The soname changes
 * with MAJOR only. */
const char *fl_client_version(void);

/* ---- errors ----
 *
 * Codes are negative and never change value; new ones are added at the end. */
#define FL_CLIENT_ERRNO_MAP(X)                                                        \
  X(NOMEM, -1, "out of memory")                                                       \
  X(INVAL, -2, "invalid argument")                                                    \
  X(STATE, -3, "not allowed in the client's current state")                           \
  X(CONFIG, -4, "the client is not configured for this (see fl_client_errmsg)")       \
  X(NOENT, -5, "no such file")                                                        \
  X(TLS, -6, "TLS set-up failed")                                                     \
  X(GAVEUP, -7, "gave up connecting to the server")                                   \
  X(VERSION, -8, "the server speaks no protocol version this library speaks")         \
  X(MODEL, -9, "the server trains another model than this client declares")           \
  X(PROTO, -10, "the server broke the protocol")                                      \
  X(STOPPED, -11, "stopped by fl_client_stop")                                        \
  X(CALLBACK, -12, "a callback failed")                                               \
  X(CANCELED, -13, "the task is no longer wanted")                                    \
  X(NONFINITE, -14, "a value is NaN or infinite")                                     \
  X(IO, -15, "input/output error")                                                   \
  X(INCOMPATIBLE, -16, "this client cannot train the server's model (its data does not fit it)")

enum fl_client_errno {
  FL_CLIENT_OK = 0,
  /* Not an error: fit or evaluate returns it to say "fl_client_task_done follows". */
  FL_CLIENT_PENDING = 1,
#define FL_CLIENT__ERR(name, value, msg) FL_CLIENT_E##name = (value),
  FL_CLIENT_ERRNO_MAP(FL_CLIENT__ERR)
#undef FL_CLIENT__ERR
};

/* A sentence for an error code; never NULL ("unknown error" for codes it does not know). */
const char *fl_client_strerror(int err);
/* The code's name ("FL_CLIENT_ENOMEM"); never NULL. */
const char *fl_client_err_name(int err);

/* ---- the client ---- */

typedef struct fl_client fl_client;
typedef struct fl_client_task fl_client_task;
typedef struct fl_client_throttle fl_client_throttle;
struct uv_loop_s; /* uv_loop_t, from <uv.h> */

/* A new client, not configured, in *out (the caller's, freed with fl_client_free).
 * 0 or FL_CLIENT_ENOMEM. */
int fl_client_new(fl_client **out);
/* Frees the client and everything it holds.  Not while it runs (between a successful
 * fl_client_start and its finish callback, or inside fl_client_run): then it frees
 * nothing and returns FL_CLIENT_ESTATE.  NULL is fine (0). */
int fl_client_free(fl_client *c);

/* What went wrong in the last call on c that failed, or the reason the last run ended
 * ("" if none).  Owned by the client, valid until its next call. */
const char *fl_client_errmsg(const fl_client *c);

/* An opaque pointer for the application (NULL at first). */
void fl_client_set_data(fl_client *c, void *data);
void *fl_client_get_data(const fl_client *c);

/* ---- configuration: before the client runs; each returns 0 or FL_CLIENT_E* ---- */

/* The server: "HOST:PORT" or "[IPV6]:PORT" (copied).  FL_CLIENT_EINVAL for anything
 * else. */
int fl_client_set_server(fl_client *c, const char *host_port);
/* The TLS files (PEM), read now: ca_file signs the server's certificate; cert_file and
 * key_file are this client's identity (the server knows the client by the certificate's
 * CN).  server_name is the name the server's certificate must carry (NULL: the host of
 * fl_client_set_server; mbedTLS checks DNS names only, so a client that connects by IP
 * address names the server here).  FL_CLIENT_ENOENT or FL_CLIENT_ETLS with the file and
 * the problem in fl_client_errmsg. */
int fl_client_set_tls(fl_client *c, const char *ca_file, const char *cert_file,
                      const char *key_file, const char *server_name);
/* The name this client logs under (copied, at most 63 bytes kept; default "client"). */
int fl_client_set_name(fl_client *c, const char *name);
/* Declares an external model: NAME (1 to 64 of A-Z a-z 0-9 . _ -) with num_params
 * parameters (1 to 2^30), known to the server as "external:NAME:NUM_PARAMS". */
int fl_client_set_model(fl_client *c, const char *name, uint64_t num_params);
/* Declares a model of the project's training core by its spec or preset ("2nn",
 * "in:784 dense:10 softmax"); FL_CLIENT_EINVAL with the reason for a bad spec. */
int fl_client_set_model_spec(fl_client *c, const char *spec);
/* The model this client declared, as the server knows it ("external:NAME:N"), or NULL;
 * and its parameter count (0 when none was declared).  Owned by the client. */
const char *fl_client_model(const fl_client *c);
uint64_t fl_client_num_params(const fl_client *c);
/* The local training examples, announced when joining (required, 1 or more).  Each
 * update carries its own count (fl_client_metrics.num_examples), its weight in the
 * average; the server refuses one that claims more than announced here, and caps any
 * client's weight by what the round's clients announced. */
int fl_client_set_num_examples(fl_client *c, uint64_t n);
/* Per-feature statistics of the local training data (count samples; sum and sum_sq
 * [dim] each, copied), sent when joining so that a server that standardises features
 * (fl-server --standardize) can compute their mean and deviation over the federation;
 * no sample is sent.  Set them only when the data's owner agrees to share these
 * aggregates.  FL_CLIENT_EINVAL unless count and dim are 1 or more and every value is
 * finite (sum_sq >= 0).  Since 1.1. */
int fl_client_set_feature_stats(fl_client *c, uint64_t count, const double *sum,
                                const double *sum_sq, size_t dim);
/* Reconnection: after a failed attempt or a lost connection the client waits
 * base_s * 2^attempt seconds (at most max_s), each delay drawn between half and all of
 * that, and gives up (FL_CLIENT_EGAVEUP) after max_retries failed attempts in a row.
 * A certificate refused by either side (the server's does not carry the name connected
 * to, is not signed by the CA, is revoked or expired; or the server refuses this
 * client's) is not retried: the client finishes at once with FL_CLIENT_ETLS, and
 * fl_client_errmsg says what to do.  Defaults: 20, 0.2 s, 30 s.  EINVAL unless
 * 0 < base_s <= max_s. */
int fl_client_set_reconnect(fl_client *c, unsigned max_retries, double base_s, double max_s);
/* Liveness: a heartbeat after interval_s seconds without sending; the connection is
 * dropped (and retried) after idle_timeout_s seconds without hearing from the server.
 * Defaults 15 s and 120 s.  EINVAL unless 0 < 2 * interval_s <= idle_timeout_s. */
int fl_client_set_heartbeat(fl_client *c, double interval_s, double idle_timeout_s);

/* The tensor encodings this client offers the server, a bitwise or of the flags below
 * (default all).  The server chooses, per connection, how the client's updates travel
 * (float32, or compressed: then the library adds error feedback to lossy encodings, the
 * part of each update left out is kept and sent with the next) and how models come; a
 * client offering FL_CLIENT_ENC_FLOAT32 alone always sends and gets float32.  float32 is
 * always offered.  EINVAL for an unknown flag. */
enum fl_client_encoding {
  FL_CLIENT_ENC_FLOAT32 = 1,
  FL_CLIENT_ENC_FLOAT16 = 2,
  FL_CLIENT_ENC_INT8 = 4,
  FL_CLIENT_ENC_TOPK = 8,
  FL_CLIENT_ENC_ALL = 15
};
int fl_client_set_encodings(fl_client *c, unsigned flags);

/* Whether the client keeps the frozen parameters of a model it is sent whole (a server
 * run with --freeze), so that the server leaves them out of the models it sends it after
 * that (default on).  A process keeps one copy of them, however many of its clients hold
 * them.  With it off, every model comes whole. */
int fl_client_set_frozen_cache(fl_client *c, int on);

enum fl_client_threading {
  FL_CLIENT_THREAD_WORKER = 0, /* callbacks on a thread of the library's (default) */
  FL_CLIENT_THREAD_LOOP = 1    /* callbacks on the loop thread */
};
int fl_client_set_threading(fl_client *c, int mode);

/* Handshakes in flight at once, shared by many clients on one loop: a thousand TLS
 * handshakes started together all finish late, past the handshake timeout, where a few
 * dozen at a time each finish quickly.  Created and freed by the caller; every client
 * given it must run on the same loop, and it must outlive them.  fl_client_throttle_new
 * returns NULL when out of memory (max < 1 is taken as 1); freeing a throttle that
 * clients still hold is FL_CLIENT_ESTATE. */
fl_client_throttle *fl_client_throttle_new(int max_handshakes);
int fl_client_throttle_free(fl_client_throttle *t);
int fl_client_set_throttle(fl_client *c, fl_client_throttle *t);

/* ---- callbacks ---- */

/* The round's training settings, as the server chose them.  A zero (or "") means the
 * server did not set it: use your own default.  Filled by the library; read only.
 * Fields are only ever added at the end. */
typedef struct fl_client_fit_config {
  uint64_t round;
  uint32_t epochs;
  uint32_t batch_size;
  float lr;
  const char *optimizer; /* "sgd", "momentum", "nesterov", "adam", "adamw", or "" */
  float momentum;
  float weight_decay;
  float prox_mu;         /* FedProx: add mu/2 ||w - global||^2 to the loss; 0 = off */
  float clip_norm;       /* gradient-norm clipping; 0 = off */
  uint64_t seed;         /* the round's seed, the same for every client */
  /* Since 1.1: layers the server froze (fl-server --freeze: "all-but-head", "0,2-3";
   * "" for none): their parameters must come back unchanged (a zero delta), or the
   * server refuses the update.  Unchanged, the library leaves them out of the update
   * (the server lists their positions), which then carries only the trained layers. */
  const char *freeze;
} fl_client_fit_config;

/* What a fit or evaluation reports.  The library sets num_examples to 0 and the others
 * to NaN (reported as "none") before calling; a fit must set num_examples (the weight of
 * its update: 0, or more than fl_client_set_num_examples announced, is an error).
 * Fields are only ever added at the end. */
typedef struct fl_client_metrics {
  uint64_t num_examples; /* examples trained on (fit) or evaluated */
  double loss;           /* mean loss */
  double accuracy;       /* in [0, 1] */
  double auc;            /* ROC AUC, binary tasks */
  double seconds;        /* wall time of the work; NaN: the library's measure, from the
                          * call of fit or evaluate to its completion */
} fl_client_metrics;

/* fit and evaluate: 0 when the task is done (its result in the task), FL_CLIENT_PENDING
 * when fl_client_task_done will complete it later, or a negative code when it failed. */
typedef int (*fl_client_task_cb)(fl_client *c, fl_client_task *task);
/* get_params: writes the client's current parameters into params [n] (n is the declared
 * count); 0 or a negative code.  set_params: loads params [n] into the client's model. */
typedef int (*fl_client_get_params_cb)(fl_client *c, float *params, uint64_t n);
typedef int (*fl_client_set_params_cb)(fl_client *c, const float *params, uint64_t n);
/* message is one line without a newline, valid during the call. */
typedef void (*fl_client_log_cb)(fl_client *c, int level, const char *message);
/* The client has finished: status 0 when the server said training is done, else why it
 * ended (FL_CLIENT_ESTOPPED, FL_CLIENT_EGAVEUP, ...; fl_client_errmsg says more).  Called
 * after its last handle on the loop is closed and its last task completed: the client
 * may be freed (or started again) from inside the callback. */
typedef void (*fl_client_finish_cb)(fl_client *c, int status);

/* Trains the task's parameters (required). */
int fl_client_on_fit(fl_client *c, fl_client_task_cb fit);
/* Evaluates the global model on local test data (optional: without it the client answers
 * the server's evaluation requests with an error). */
int fl_client_on_evaluate(fl_client *c, fl_client_task_cb evaluate);
/* The parameters in the application's own structures (optional).  get_params gives the
 * initial parameters when the server asks for them (an external model without
 * --init-model).  With set_params too, the model lives in the application's structures:
 * set_params loads the global model before each fit and evaluate, on the thread that
 * then calls them, and get_params reads the trained parameters back after a fit.
 * Without set_params, fit and evaluate work on fl_client_task_params() directly.
 * set_params without get_params is FL_CLIENT_EINVAL. */
int fl_client_on_params(fl_client *c, fl_client_get_params_cb get_params,
                        fl_client_set_params_cb set_params);

enum fl_client_log_level {
  FL_CLIENT_LOG_DEBUG = 0,
  FL_CLIENT_LOG_INFO = 1,
  FL_CLIENT_LOG_WARN = 2,
  FL_CLIENT_LOG_ERROR = 3
};
/* Messages at min_level and above go to log (NULL, the default: the library is silent). */
int fl_client_on_log(fl_client *c, fl_client_log_cb log, int min_level);
/* Called when a client started with fl_client_start finishes (fl_client_run also calls
 * it, before it returns). */
int fl_client_on_finish(fl_client *c, fl_client_finish_cb finish);

/* ---- running ---- */

/* Runs the client on a loop of its own until it finishes; returns its status (as the
 * finish callback gets it).  Returns at once with FL_CLIENT_ECONFIG when the server, the
 * TLS files, the example count or the fit callback are missing. */
int fl_client_run(fl_client *c);
/* Starts the client on the caller's libuv loop (a uv_loop_t *) and returns: the caller
 * runs the loop; the finish callback says when the client is done.  0, or
 * FL_CLIENT_ECONFIG / FL_CLIENT_ESTATE (already running) / FL_CLIENT_ENOMEM. */
int fl_client_start(fl_client *c, struct uv_loop_s *loop);
/* Asks the client to finish: from any thread, at any time, any number of times.  It
 * tells the server it leaves, drops the task in flight (fl_client_task_cancelled turns
 * true) and finishes with FL_CLIENT_ESTOPPED once that task has returned.  Called before
 * the client runs, the next run finishes at once. */
void fl_client_stop(fl_client *c);

/* The name given to fl_client_set_name ("client" by default). */
const char *fl_client_name(const fl_client *c);

/* ---- tasks: what fit and evaluate work on ---- */

enum fl_client_task_kind { FL_CLIENT_TASK_FIT = 1, FL_CLIENT_TASK_EVALUATE = 2 };
int fl_client_task_kind(const fl_client_task *t);
fl_client *fl_client_task_client(const fl_client_task *t);
/* The round and, for a fit, its training settings. */
const fl_client_fit_config *fl_client_task_config(const fl_client_task *t);
/* A setting of the server's strategy by name, or dflt when it sent none. */
double fl_client_task_extra(const fl_client_task *t, const char *key, double dflt);
/* The parameter count and the model's name as the server knows it (the client's
 * declaration, or the server's own spec: what a client that declares nothing builds). */
uint64_t fl_client_task_num_params(const fl_client_task *t);
const char *fl_client_task_model(const fl_client_task *t);
/* The parameters to work on [num_params].  Fit: they hold the global model on entry;
 * train them in place (unless get_params gives the result).  Evaluate: the global
 * model. */
float *fl_client_task_params(fl_client_task *t);
/* The global model as the server sent it [num_params], read only (FedProx's reference). */
const float *fl_client_task_global(const fl_client_task *t);
/* Where the result goes. */
fl_client_metrics *fl_client_task_metrics(fl_client_task *t);
/* The server's feature standardisation for this task: the model takes
 * (x - mean[j]) / std[j] for feature j.  Returns the feature count and points *mean and
 * *std at [count] floats (every std > 0) owned by the task; 0 (and NULLs) when the
 * server standardises nothing.  Since 1.1. */
size_t fl_client_task_feature_transform(const fl_client_task *t, const float **mean,
                                        const float **std);
/* 1 once the result is no longer wanted (a newer task came, the connection dropped,
 * the client is stopping): a long fit may return early with any error code, and the
 * task is dropped quietly.  A fit that returns 0 after a newer task came is still sent
 * (the server refuses it if its round is over).  Any thread. */
int fl_client_task_cancelled(const fl_client_task *t);
/* The fraction of the task done so far, in [0, 1] (clamped): the heartbeats carry it to
 * the server, which shows it on its status page.  The library sets 0 when the task is
 * handed over and 1 when it completes.  Any thread.  (Since 1.1.) */
void fl_client_task_progress(fl_client_task *t, double fraction);
/* Records why the task failed (sent to the server, and logged) and returns code, for
 * `return fl_client_task_error(t, FL_CLIENT_ECALLBACK, "...", ...);`.  A failure that
 * will not go away (the local data does not fit the server's model: another number of
 * features, labels beyond its outputs) is FL_CLIENT_EINCOMPATIBLE: the server is told
 * (ERROR_INCOMPATIBLE), leaves this client out of the rest of the run, and the client
 * finishes with FL_CLIENT_EINCOMPATIBLE, fl_client_errmsg naming the mismatch. */
int fl_client_task_error(fl_client_task *t, int code, const char *fmt, ...)
    FL_CLIENT_PRINTF(3, 4);
/* Completes a task whose callback returned FL_CLIENT_PENDING, from any thread, exactly
 * once, also when it was cancelled (the client does not finish before): status 0 (the
 * result is in the task) or a negative code.  The task must not be touched afterwards. */
void fl_client_task_done(fl_client_task *t, int status);

#ifdef __cplusplus
}
#endif

#endif
