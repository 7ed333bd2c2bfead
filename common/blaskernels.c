#include "blaskernels.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *openblas_get_corename(void); /* OpenBLAS's own, not in cblas.h */

const char *fl_blas_kernels(void) { return openblas_get_corename(); }

/* The best kernel set OpenBLAS 0.3.21 has for what this CPU can do; NULL for none better
 * than the generic one. */
static const char *better_kernels(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return NULL;
}

void fl_blas_pick_kernels(char **argv) {
  if (getenv("OPENBLAS_CORETYPE")) return; /* chosen already: by the user, or by us */
  if (strcmp(openblas_get_corename(), "Prescott") != 0) return;
  const char *core = better_kernels();
  if (!core || setenv("OPENBLAS_CORETYPE", core, 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE"); /* could not: carry on with the generic kernels */
}
