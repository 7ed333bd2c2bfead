/* Every error code has a distinct name and a sentence. */
#include <criterion/criterion.h>
#include <string.h>

#include "error.h"

Test(error, every_code_has_name_and_sentence) {
  for (int e = 0; e > -FL__ERR_COUNT_; e--) {
    cr_assert_str_neq(fl_strerror(e), "unknown error", "code %d", e);
    cr_assert_str_neq(fl_err_name(e), "FL_EUNKNOWN", "code %d", e);
    for (int f = e - 1; f > -FL__ERR_COUNT_; f--)
      cr_assert_str_neq(fl_err_name(e), fl_err_name(f));
  }
  cr_assert_str_eq(fl_err_name(FL_ENOMEM), "FL_ENOMEM");
  cr_assert_str_eq(fl_strerror(FL_ETIMEDOUT), "timed out");
  cr_assert_str_eq(fl_strerror(1), "unknown error");
  cr_assert_str_eq(fl_strerror(-FL__ERR_COUNT_), "unknown error");
}
