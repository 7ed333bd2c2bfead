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
