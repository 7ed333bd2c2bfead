/* fl_alloc_big: large arrays on 2 MiB boundaries (huge-page candidates), small ones as
 * malloc gives them; all usable and released with free(). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"

Test(bigalloc, large_arrays_are_huge_page_aligned_and_usable) {
  size_t sizes[] = {0, 1, 4096, (2u << 20) - 1, 2u << 20, (6u << 20) + 12345};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    uint8_t *p = fl_alloc_big(sizes[i]);
    cr_assert_not_null(p, "size %zu", sizes[i]);
    if (sizes[i] >= (2u << 20))
      cr_assert_eq((uintptr_t)p % (2u << 20), 0, "size %zu not 2 MiB aligned", sizes[i]);
    if (sizes[i]) {
      memset(p, 0xa5, sizes[i]);
      cr_assert_eq(p[0], 0xa5);
      cr_assert_eq(p[sizes[i] - 1], 0xa5);
    }
    free(p);
  }
}
