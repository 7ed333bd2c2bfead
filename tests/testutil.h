/* Helpers shared by the tests: where the source tree and the built binaries are, free
 * ports, and running commands. */
#ifndef FL_TESTUTIL_H
#define FL_TESTUTIL_H

/* The source tree (FL_SRC_DIR, set by make test; "." otherwise). */
const char *fl_test_src_dir(void);
/* The directory with the built binaries (FL_BIN_DIR; "build" otherwise). */
const char *fl_test_bin_dir(void);
/* The test certificates made by certs/gen.sh (FL_CERTS; "build/test-certs" otherwise). */
const char *fl_test_certs_dir(void);
/* Runs a shell command; returns its exit status (or -1 if it could not run). */
int fl_test_system(const char *cmd);
/* A TCP port on 127.0.0.1 that the kernel says is free right now (bind to port 0). */
int fl_test_free_port(void);

#endif

#include <stddef.h>
#include <sys/types.h>

/* A fresh temporary directory (malloc'd path; the caller frees it). */
char *fl_test_tmpdir(void);
/* Starts argv[0] (a path) with stdout and stderr appended to log; returns the pid.  The
 * child is killed when the test process exits. */
pid_t fl_test_spawn(const char *log, char *const argv[]);
/* Waits up to timeout_s for pid: its exit status, 128+signal if killed by one, or -1 on
 * timeout (the process is then killed with SIGKILL and reaped). */
int fl_test_wait(pid_t pid, double timeout_s);
/* 1 while pid is running (not yet exited). */
int fl_test_running(pid_t pid);
/* The whole file as a NUL-terminated string (malloc'd), or NULL. */
char *fl_test_read_file(const char *path, size_t *len);
/* Counts the occurrences of needle in the file (0 if it cannot be read). */
int fl_test_count(const char *path, const char *needle);
/* 1 when the log holds no AddressSanitizer, LeakSanitizer or UBSan report. */
int fl_test_sanitizer_clean(const char *log);
/* Waits up to timeout_s until the file contains needle; 1 if it did. */
int fl_test_wait_for(const char *path, const char *needle, double timeout_s);
/* A path in the build directory: fl_test_bin("fl-server") (static buffer per call site
 * is not safe; the result is malloc'd). */
char *fl_test_bin(const char *name);
