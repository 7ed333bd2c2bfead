/* Levelled logging to stderr: "2026-11-28T16:51:23.123Z INFO  [tag] message".
 *
 * One process-wide threshold, set once at start-up (fl_log_set_level) before threads
 * start.  FL_LOG checks the level before it formats anything, so a disabled debug line
 * costs one comparison.  Lines are written with one write() each, so lines from several
 * threads never interleave. */
#ifndef FL_LOG_H
#define FL_LOG_H

enum fl_log_level { FL_LOG_DEBUG = 0, FL_LOG_INFO, FL_LOG_WARN, FL_LOG_ERROR, FL_LOG_OFF };

extern int fl__log_level;

/* Parses "debug", "info", "warn", "error", "off"; returns the level or -1. */
int fl_log_level_parse(const char *s);
void fl_log_set_level(int level);
void fl__log(int level, const char *tag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define FL_LOG(level, tag, ...) \
  do { if ((level) >= fl__log_level) fl__log((level), (tag), __VA_ARGS__); } while (0)
#define fl_debug(tag, ...) FL_LOG(FL_LOG_DEBUG, tag, __VA_ARGS__)
#define fl_info(tag, ...)  FL_LOG(FL_LOG_INFO, tag, __VA_ARGS__)
#define fl_warn(tag, ...)  FL_LOG(FL_LOG_WARN, tag, __VA_ARGS__)
#define fl_error(tag, ...) FL_LOG(FL_LOG_ERROR, tag, __VA_ARGS__)

#endif
