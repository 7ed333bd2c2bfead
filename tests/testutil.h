/* Helpers shared by the tests: where the source tree, the built binaries and the test
 * certificates are, ports that nothing else takes, spawning the real binaries, waiting on
 * what they log, clients scripted by a test itself, and reading the metrics.
 *
 * Waiting: every wait here is for an event (a process exits, a line appears in a log)
 * with a deadline that only catches hangs.  Deadlines are multiplied by FL_TEST_TIME_SCALE
 * (default 1) for machines far slower than the ones the suite was written on; nothing
 * in the suite depends on how fast the machine is. */
#ifndef FL_TESTUTIL_H
#define FL_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "conn.h"
#include "msg.h"

/* The source tree (FL_SRC_DIR, set by make test; "." otherwise). */
const char *fl_test_src_dir(void);
/* The directory with the built binaries (FL_BIN_DIR; "build" otherwise). */
const char *fl_test_bin_dir(void);
/* The test certificates made by certs/gen.sh (FL_CERTS; "build/test-certs" otherwise). */
const char *fl_test_certs_dir(void);
/* A path in the build directory, e.g. fl_test_bin("fl-server") (malloc'd). */
char *fl_test_bin(const char *name);
/* Runs a shell command; returns its exit status (or -1 if it could not run). */
int fl_test_system(const char *cmd);

/* A TCP port on 127.0.0.1 for a listener of this test alone: taken from a range the
 * kernel never hands out as an ephemeral port (below ip_local_port_range), through a
 * counter shared by every test process on the machine (a locked file in /tmp), and
 * checked free by binding it.  So neither another test nor an outgoing connection can
 * take it between this call and the listener's bind, nor while a server restarts on it.
 * -1 if none could be found. */
int fl_test_free_port(void);

/* Gives this process, and what it starts from now on, an /etc/hosts of its own: the
 * machine's, then lines ("::1 dualhost\n127.0.0.1 dualhost\n"), bind-mounted over
 * /etc/hosts in a private mount namespace.  Host names then resolve as the test needs,
 * and the machine's file is never touched.  Call it first in a test (Criterion runs each
 * test in a process of its own; a thread started before keeps the machine's file).
 * 0, or -1 with the reason in why (not root, no mount namespace): the test skips. */
int fl_test_private_hosts(const char *lines, char *why, size_t whylen);
/* The addresses getaddrinfo gives for host (as a client asks: any family, TCP), in its
 * order, comma-separated ("::1, 127.0.0.1"); "" when it does not resolve. */
void fl_test_resolve(const char *host, char *out, size_t len);

/* The extra certificates of tests/mkcerts_extra.sh (expired, revoked with a CRL, another
 * CA), made once per certificate directory, in FL_CERTS/extra (returned; a static
 * buffer).  Fails the test when the script does. */
const char *fl_test_extra_certs(void);
/* The paths of the test certificate client-NNNN (index from 1) and of its key. */
void fl_test_client_cert(int index, char *crt, char *key, size_t len);

/* FL_TEST_TIME_SCALE (default 1): deadlines in the suite are multiplied by it. */
double fl_test_time_scale(void);

/* A fresh temporary directory (malloc'd path; the caller frees it). */
char *fl_test_tmpdir(void);
/* Starts argv[0] (a path) with stdout and stderr appended to log; returns the pid.  The
 * child is killed when the test process exits. */
pid_t fl_test_spawn(const char *log, char *const argv[]);
/* Waits up to timeout_s (scaled) for pid: its exit status, 128+signal if killed by one,
 * or -1 on timeout (the process is then killed with SIGKILL and reaped). */
int fl_test_wait(pid_t pid, double timeout_s);
/* 1 while pid is running (not yet exited). */
int fl_test_running(pid_t pid);
/* Waits up to timeout_s (scaled) until pid is stopped (SIGSTOP); 1 if it is. */
int fl_test_wait_stopped(pid_t pid, double timeout_s);
/* The whole file as a NUL-terminated string (malloc'd), or NULL. */
char *fl_test_read_file(const char *path, size_t *len);
/* Counts the occurrences of needle in the file (0 if it cannot be read). */
int fl_test_count(const char *path, const char *needle);
/* 1 when the log holds no AddressSanitizer, LeakSanitizer or UBSan report. */
int fl_test_sanitizer_clean(const char *log);
/* Waits up to timeout_s (scaled) until the file contains needle; 1 if it did. */
int fl_test_wait_for(const char *path, const char *needle, double timeout_s);
/* Waits up to timeout_s (scaled) until the file contains needle at least n times. */
int fl_test_wait_count(const char *path, const char *needle, int n, double timeout_s);
/* Like fl_test_wait_for, but gives up early (0) when pid exits first. */
int fl_test_wait_for_while(const char *path, const char *needle, pid_t pid, double timeout_s);

/* ---- federations of the real binaries ----
 *
 * One server on a port of the test's own (fl_test_free_port), the test certificates, and
 * a fresh directory for logs, models and metrics:
 *
 *   fl_test_fed f;
 *   fl_test_fed_init(&f);
 *   pid_t s = fl_test_fed_server(&f, "server.log", "--model", "2nn", "--rounds", "3", NULL);
 *   pid_t c = fl_test_fed_clients(&f, "clients.log", "--clients", "4", ..., NULL);
 *   cr_assert_eq(fl_test_wait(s, 240), 0);
 *   ...
 *   fl_test_fed_free(&f);
 *
 * The server gets --listen, --ca, --cert, --key, --out DIR/model.bin and --metrics
 * DIR/metrics.jsonl before the extra arguments (later flags win, so a test may repeat
 * --out or --metrics); clients get --server, --server-name localhost, --ca and
 * --certs-dir.  Log names are relative to the directory. */
typedef struct fl_test_fed {
  char *dir;                        /* the run's directory (malloc'd) */
  char ca[512], cert[512], key[512];
  int port;
  char listen[64];                  /* 127.0.0.1:PORT */
  char model[600], metrics[600];    /* DIR/model.bin, DIR/metrics.jsonl */
  char log[600];                    /* DIR/server.log, the server's log by convention */
  char *server, *client;            /* paths of the binaries */
} fl_test_fed;

void fl_test_fed_init(fl_test_fed *f);
void fl_test_fed_free(fl_test_fed *f);
/* DIR/name in out. */
void fl_test_fed_path(const fl_test_fed *f, const char *name, char *out, size_t len);
/* Starts fl-server with the extra arguments (NULL-terminated); does not wait. */
pid_t fl_test_fed_server(fl_test_fed *f, const char *log, ...) __attribute__((sentinel));
/* Starts fl-server and waits until it listens (60 s); -1 if it never did. */
pid_t fl_test_fed_server_ready(fl_test_fed *f, const char *log, ...) __attribute__((sentinel));
/* The same with the extra arguments in a NULL-terminated array (borrowed; NULL: none). */
pid_t fl_test_fed_server_ready_list(fl_test_fed *f, const char *log, const char *const *extra);
/* Starts one fl-client process with the extra arguments (NULL-terminated). */
pid_t fl_test_fed_clients(fl_test_fed *f, const char *log, ...) __attribute__((sentinel));

/* ---- scripted clients ----
 *
 * A test that plays a client itself (one that misbehaves, or whose every message the
 * test must know) speaks the real protocol over real TLS with conn.h and msg.h, on a
 * libuv loop of its own.  These build and send its messages and take in its models. */

/* A TLS configuration for a client with certificate crt (key `key`), trusting the test
 * CA, that expects the server to be named "localhost".  *out is the caller's to free
 * (fl_tls_config_free).  0, or a negative FL_E* code with the reason in err. */
int fl_test_client_tls(const char *crt, const char *key, fl_tls_config **out, char *err,
                       size_t errlen);
/* Encodes env (borrowed) and sends it on c: 0, or fl_msg_encode's error (nothing sent). */
int fl_test_send(fl_conn *c, const Fl__Envelope *env);
/* A Hello of this protocol version, declaring num_samples; software (NULL: none) and
 * caps[0..ncaps) are borrowed.  As fl_test_send. */
int fl_test_send_hello(fl_conn *c, const char *software, uint64_t num_samples,
                       char **caps, size_t ncaps);
/* An Update header: num_params values of the delta in encoding enc are to follow on
 * Proceed, weighed as `examples`.  With metrics_examples > 0 it carries metrics (loss 1
 * over that many examples), with 0 none.  As fl_test_send. */
int fl_test_send_update(fl_conn *c, uint64_t round, uint64_t model_id, uint64_t num_params,
                        uint64_t examples, Fl__Encoding enc, uint64_t metrics_examples);
/* Sends every chunk tx still has, until it is complete or cannot encode. */
void fl_test_send_tensor(fl_conn *c, fl_tensor_tx *tx);

/* A model arriving in chunks after its task. */
typedef struct fl_test_model {
  float *values;   /* [n] malloc'd, kept after the model is in; NULL before the first */
  uint64_t n;
  fl_tensor_rx rx;
  int receiving;   /* a model is on its way */
} fl_test_model;

/* A task announced a model of n values: a fresh array (the last one freed), and the
 * model is on its way. */
void fl_test_model_expect(fl_test_model *m, uint64_t n);
/* Takes one of its chunks (borrowed); fails the test on a chunk the receiver refuses.
 * 1 when this chunk completed the model on its way, else 0. */
int fl_test_model_add(fl_test_model *m, const Fl__TensorChunk *chunk);
/* Frees the values (m may be all zero). */
void fl_test_model_free(fl_test_model *m);

/* ---- the metrics file: one JSON object per line ---- */

/* "key":X of a JSON line; NAN when absent or null. */
double fl_test_json_num(const char *line, const char *key);
/* The rounds of a metrics file if they are 1, 2, ... in order; -1 if a line is not the
 * next round; 0 for no file. */
int fl_test_metrics_rounds(const char *path);
/* The line of round r (malloc'd), or NULL. */
char *fl_test_metrics_line(const char *path, int round);

#endif
