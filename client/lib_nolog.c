/* libflclient: libfl's logging (common/log.h), silenced inside the library.
 *
 * The transport the library builds on logs to stderr through one process-wide level;
 * a library must not write to the application's stderr or keep such state.  Linked in
 * place of common/log.c, this drops those lines: everything they say reaches the
 * application anyway, through the library's own messages (lib_error.c's flc__log, to
 * the callback the application gives), built from the error codes and reasons the
 * transport returns. */
#include "log.h"

/* Read only: nothing in the library sets it, so no line is ever formatted. */
int fl__log_level = FL_LOG_OFF;

void fl__log(int level, const char *tag, const char *fmt, ...) {
  (void)level;
  (void)tag;
  (void)fmt;
}
