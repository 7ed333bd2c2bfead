/* The log's line budget: how many lines a peer may cause in a period. */
#ifndef FL_LOG_BUDGET_H
#define FL_LOG_BUDGET_H

#include <stdint.h>

/* A budget of lines for what others can make happen again and again (a peer's refused
 * messages, connections that fail their handshake): at most burst lines in each period,
 * a number that only grows (a round, or the time in windows).  Not thread-safe: one
 * budget per thread. */
typedef struct fl_log_budget {
  uint64_t period;          /* the period used and dropped count in */
  unsigned used;            /* lines taken in it */
  uint64_t dropped;         /* and lines left out */
} fl_log_budget;

enum { FL_LOG_SKIP = 0, FL_LOG_TAKE = 1, FL_LOG_FIRST_SKIP = 2 };
/* Whether a line may go to the log in period: FL_LOG_TAKE, FL_LOG_SKIP, or
 * FL_LOG_FIRST_SKIP for the first line the period leaves out (say that the rest are
 * counted).  When period is a new one after lines were left out, *dropped and *in get
 * their count and period first (say how many), else *dropped is 0. */
int fl_log_budget_take(fl_log_budget *b, unsigned burst, uint64_t period, uint64_t *dropped,
                       uint64_t *in);
/* The lines left out and not yet said, and their period, as fl_log_budget_take gives them
 * (at the end of what the budget is for); clears them. */
uint64_t fl_log_budget_flush(fl_log_budget *b, uint64_t *in);

#endif
