/* The log's line budget (fl_log_budget, log.h): burst lines a period, the first one left
 * out flagged, the count left out given back once when the next period starts, or by a
 * flush. */
#include <criterion/criterion.h>

#include "log_budget.h"

Test(log, budget_takes_burst_lines_a_period_and_counts_the_rest) {
  fl_log_budget b = {0};
  uint64_t n, in;
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(fl_log_budget_take(&b, 3, 7, &n, &in), FL_LOG_TAKE);
    cr_assert_eq(n, 0);
  }
  cr_assert_eq(fl_log_budget_take(&b, 3, 7, &n, &in), FL_LOG_FIRST_SKIP);
  for (int i = 0; i < 5; i++) cr_assert_eq(fl_log_budget_take(&b, 3, 7, &n, &in), FL_LOG_SKIP);
  /* a new period: the six left out in period 7 come back once, and lines are taken again */
  cr_assert_eq(fl_log_budget_take(&b, 3, 9, &n, &in), FL_LOG_TAKE);
  cr_assert(n == 6 && in == 7, "%llu in %llu", (unsigned long long)n, (unsigned long long)in);
  cr_assert_eq(fl_log_budget_take(&b, 3, 9, &n, &in), FL_LOG_TAKE);
  cr_assert_eq(n, 0);
  cr_assert_eq(fl_log_budget_take(&b, 3, 9, &n, &in), FL_LOG_TAKE);
  cr_assert_eq(fl_log_budget_take(&b, 3, 9, &n, &in), FL_LOG_FIRST_SKIP);
  cr_assert_eq(fl_log_budget_flush(&b, &in), 1);
  cr_assert_eq(in, 9);
  cr_assert_eq(fl_log_budget_flush(&b, &in), 0);
  /* flushed: the next period has nothing to report */
  cr_assert_eq(fl_log_budget_take(&b, 3, 10, &n, &in), FL_LOG_TAKE);
  cr_assert_eq(n, 0);
  /* a burst of 0 takes nothing */
  fl_log_budget z = {0};
  cr_assert_eq(fl_log_budget_take(&z, 0, 1, &n, &in), FL_LOG_FIRST_SKIP);
}
