/* The binaries run OpenBLAS's best kernels for the CPU (common/blaskernels.h): fl-train,
 * started without OPENBLAS_CORETYPE (which `make test` sets for the rest of the suite),
 * names in its log kernels other than the generic Prescott ones on any CPU with AVX2 and
 * FMA, whether OpenBLAS knew the CPU or the binary ran itself again to choose; and it
 * keeps the kernels a user names. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* The kernels fl-train's log names, trained one epoch on a small CSV, with `env` before
 * the command; "" if the line is missing. */
static void kernels_of(const char *dir, const char *env, char out[64]) {
  char cmd[4096], log[600];
  snprintf(log, sizeof log, "%s/train.log", dir);
  snprintf(cmd, sizeof cmd,
           "env -u OPENBLAS_CORETYPE %s %s/fl-train --model 'in:4 dense:3 softmax' --data %s/d.csv "
           "--test none --epochs 1 --batch-size 4 --threads 1 >%s 2>&1",
           env, fl_test_bin_dir(), dir, log);
  cr_assert_eq(fl_test_system(cmd), 0, "fl-train failed: see %s", log);
  char *text = fl_test_read_file(log, NULL);
  cr_assert_not_null(text);
  const char *p = strstr(text, "OpenBLAS's ");
  out[0] = '\0';
  if (p) sscanf(p + strlen("OpenBLAS's "), "%63s", out);
  free(text);
}

Test(blas, binaries_pick_kernels_for_the_cpu, .timeout = 60) {
  char *dir = fl_test_tmpdir();
  char path[600];
  snprintf(path, sizeof path, "%s/d.csv", dir);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs("a,b,c,d,label\n", f);
  for (int i = 0; i < 32; i++) fprintf(f, "%d,%d,%d,%d,%d\n", i % 5, i % 3, i % 7, i % 2, i % 3);
  fclose(f);

  char chosen[64], asked[64];
  kernels_of(dir, "", chosen);
  cr_assert_neq(chosen[0], '\0', "fl-train did not name its kernels");
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    cr_assert_neq(strcmp(chosen, "Prescott"), 0,
                  "this CPU has AVX2 and FMA, and fl-train ran OpenBLAS's generic Prescott kernels");
  cr_log_info("fl-train chose OpenBLAS's %s kernels", chosen);

  /* A user's choice stands: no second guess, no second run. */
  kernels_of(dir, "OPENBLAS_CORETYPE=Prescott", asked);
  cr_assert_str_eq(asked, "Prescott");
  free(dir);
}
