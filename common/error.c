/* Names and sentences for the FL_E* error codes (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static const char *const messages[] = {
  "success",
#define X(name, msg) msg,
  FL_ERRNO_MAP(X)
#undef X
};

static const char *const names[] = {
  "FL_OK",
#define X(name, msg) "FL_E" #name,
  FL_ERRNO_MAP(X)
#undef X
};

const char *fl_strerror(int err) {
  if (err > 0 || -err >= FL__ERR_COUNT_) return "unknown error";
  return messages[-err];
}

const char *fl_err_name(int err) {
  if (err > 0 || -err >= FL__ERR_COUNT_) return "FL_EUNKNOWN";
  return names[-err];
}

int fl_errf(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}
