/* The test binary's entry point: Criterion's own, except that every test's timeout (a
 * hang detector, never a speed requirement) is multiplied by FL_TEST_TIME_SCALE, like
 * every wait in testutil.h, for machines far slower than the ones the suite was written
 * on. */
#include <criterion/criterion.h>
#include <criterion/internal/ordered-set.h>

#include "testutil.h"

int main(int argc, char *argv[]) {
  struct criterion_test_set *tests = criterion_initialize();
  double scale = fl_test_time_scale();
  FOREACH_SET(struct criterion_suite_set *suite, tests->suites) {
    FOREACH_SET(struct criterion_test *t, suite->tests) {
      if (t->data->timeout > 0) t->data->timeout *= scale;
    }
  }
  int failed = 0;
  if (criterion_handle_args(argc, argv, true)) failed = !criterion_run_all_tests(tests);
  criterion_finalize(tests);
  return failed;
}
