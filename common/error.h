/* Error codes shared by every fl component.
 *
 * Functions return 0 on success or a negative FL_E* code.  One X-macro list gives the
 * enum, fl_strerror() (a sentence) and fl_err_name() (the symbol), so every error has
 * both.  Add new codes at the end of the list. */
#ifndef FL_ERROR_H
#define FL_ERROR_H

#define FL_ERRNO_MAP(X)                                                     \
  X(NOMEM,     "out of memory")                                             \
  X(INVAL,     "invalid argument")                                          \
  X(IO,        "input/output error")                                        \
  X(NOENT,     "no such file")                                              \
  X(FORMAT,    "malformed data")                                            \
  X(TRUNC,     "data truncated")                                            \
  X(CHECKSUM,  "checksum mismatch")                                         \
  X(VERSION,   "unsupported version")                                       \
  X(MISMATCH,  "model does not match")                                      \
  X(RANGE,     "value out of range")                                        \
  X(TOOBIG,    "message too large")                                         \
  X(AGAIN,     "incomplete, more data needed")                              \
  X(PROTO,     "protocol violation")                                        \
  X(TLS,       "TLS failure")                                               \
  X(CERT,      "certificate rejected")                                      \
  X(TIMEDOUT,  "timed out")                                                 \
  X(CLOSED,    "connection closed")                                         \
  X(NONFINITE, "value is NaN or infinite")                                  \
  X(STATE,     "not allowed in the current state")                          \
  X(REFUSED,   "refused")                                                   \
  X(CONFIG,    "bad configuration")                                         \
  X(NET,       "network error")                                             \
  X(CERTREFUSED, "the peer refused this side's certificate")

/* Positions in the list: FL__POS_NOMEM = 1, ... */
enum fl__err_pos {
  FL__POS_BASE_ = 0,
#define X(name, msg) FL__POS_##name,
  FL_ERRNO_MAP(X)
#undef X
  FL__ERR_COUNT_
};

/* The codes: FL_ENOMEM = -1, FL_EINVAL = -2, ... */
enum fl_err {
  FL_OK = 0,
#define X(name, msg) FL_E##name = -FL__POS_##name,
  FL_ERRNO_MAP(X)
#undef X
};

/* A sentence for an error code ("out of memory"); never NULL. */
const char *fl_strerror(int err);
/* The code's symbol ("FL_ENOMEM"); never NULL. */
const char *fl_err_name(int err);

#include <stddef.h>
/* Formats a message into err (when err and errlen are non-zero) and returns code: the
 * one way every function that explains its failures writes the explanation. */
int fl_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
