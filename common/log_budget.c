/* The log's line budget (log_budget.h). */
#include "log_budget.h"

uint64_t fl_log_budget_flush(fl_log_budget *b, uint64_t *in) {
  uint64_t n = b->dropped;
  *in = b->period;
  b->dropped = 0;
  return n;
}

int fl_log_budget_take(fl_log_budget *b, unsigned burst, uint64_t period, uint64_t *dropped,
                       uint64_t *in) {
  *dropped = 0;
  if (period != b->period) {
    *dropped = fl_log_budget_flush(b, in);
    b->period = period, b->used = 0;
  }
  if (b->used < burst) {
    b->used++;
    return FL_LOG_TAKE;
  }
  return b->dropped++ == 0 ? FL_LOG_FIRST_SKIP : FL_LOG_SKIP;
}
