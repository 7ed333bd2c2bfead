/* Levelled logging to stderr (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int fl__log_level = FL_LOG_INFO;

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

int fl_log_level_parse(const char *s) {
  static const char *const words[] = {"debug", "info", "warn", "error", "off"};
  for (int i = 0; i < 5; i++)
    if (strcasecmp(s, words[i]) == 0) return i;
  if (strcasecmp(s, "warning") == 0) return FL_LOG_WARN;
  return -1;
}

void fl_log_set_level(int level) { fl__log_level = level; }

void fl__log(int level, const char *tag, const char *fmt, ...) {
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000,
                   level_names[level < 0 ? 0 : level > 3 ? 3 : level], tag);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  size_t len = (size_t)n + ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m
                                                                     : sizeof line - (size_t)n - 2);
  /* One event, one line: control characters in the message (a peer's strings end up
   * here) are escaped, so that nothing can forge a line of its own or move the cursor. */
  char out[sizeof line * 4 + 2];
  size_t o = (size_t)n;
  memcpy(out, line, (size_t)n);
  for (size_t i = (size_t)n; i < len; i++) {
    unsigned char ch = (unsigned char)line[i];
    if (ch == '\\' && i + 1 < len && line[i + 1] == 'x') {
      memcpy(out + o, "\\\\", 2); /* a literal \x stays distinguishable from an escape */
      o += 2;
    } else if (ch < 0x20 || ch == 0x7f) {
      static const char hex[] = "0123456789abcdef";
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[ch >> 4];
      out[o++] = hex[ch & 15];
    } else {
      out[o++] = (char)ch;
    }
  }
  out[o++] = '\n';
  ssize_t w = write(STDERR_FILENO, out, o);
  (void)w;
}
