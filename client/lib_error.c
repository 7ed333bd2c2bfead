/* libflclient: error names and sentences (from FL_CLIENT_ERRNO_MAP in fl/client.h), the
 * version, a client's error message, and its logging through the caller's callback. */
#include <stdarg.h>
#include <stdio.h>

#include "error.h"
#include "lib_internal.h"

const char *fl_client_version(void) {
#define STR_(x) #x
#define STR(x) STR_(x)
  return STR(FL_CLIENT_VERSION_MAJOR) "." STR(FL_CLIENT_VERSION_MINOR) "." STR(
      FL_CLIENT_VERSION_PATCH);
#undef STR
#undef STR_
}

const char *fl_client_strerror(int err) {
  switch (err) {
  case FL_CLIENT_OK: return "success";
  case FL_CLIENT_PENDING: return "the task completes later (fl_client_task_done)";
#define X(name, value, msg) case value: return msg;
    FL_CLIENT_ERRNO_MAP(X)
#undef X
  default: return "unknown error";
  }
}

const char *fl_client_err_name(int err) {
  switch (err) {
  case FL_CLIENT_OK: return "FL_CLIENT_OK";
  case FL_CLIENT_PENDING: return "FL_CLIENT_PENDING";
#define X(name, value, msg) case value: return "FL_CLIENT_E" #name;
    FL_CLIENT_ERRNO_MAP(X)
#undef X
  default: return "FL_CLIENT_EUNKNOWN";
  }
}

const char *fl_client_errmsg(const fl_client *c) { return c ? c->errmsg : ""; }

int flc__errf(fl_client *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

/* Formats only what the application's threshold lets through. */
void flc__log(fl_client *c, int level, const char *fmt, ...) {
  if (!c->log || level < c->log_level) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  c->log(c, level, line);
}

int flc__code(int fl_err) {
  switch (fl_err) {
  case 0: return 0;
  case FL_ENOMEM: return FL_CLIENT_ENOMEM;
  case FL_ENOENT: return FL_CLIENT_ENOENT;
  case FL_EIO: return FL_CLIENT_EIO;
  case FL_EVERSION: return FL_CLIENT_EVERSION;
  case FL_EMISMATCH: return FL_CLIENT_EMODEL;
  case FL_ENONFINITE: return FL_CLIENT_ENONFINITE;
  case FL_ESTATE: return FL_CLIENT_ESTATE;
  case FL_ETLS:
  case FL_ECERT:
  case FL_ECERTREFUSED: return FL_CLIENT_ETLS;
  case FL_ECONFIG: return FL_CLIENT_ECONFIG;
  case FL_EPROTO:
  case FL_EFORMAT:
  case FL_ETOOBIG: return FL_CLIENT_EPROTO;
  default: return FL_CLIENT_EINVAL;
  }
}
