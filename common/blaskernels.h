/* OpenBLAS's kernels for this CPU.
 *
 * Debian's OpenBLAS (0.3.21) picks its kernels for the CPU when it loads, and on a CPU
 * newer than it knows it falls back to its generic Prescott (SSE3) kernels: on an
 * Emerald Rapids Xeon (family 6, model 207) the sgemm of a cnn training step runs 3
 * times slower there than with its SkylakeX kernels.  OpenBLAS reads the choice only
 * from OPENBLAS_CORETYPE, before main, so a process that finds the fallback on a CPU with
 * AVX-512 (or AVX2 and FMA) runs itself again with the variable naming the better set. */
#ifndef FL_BLASKERNELS_H
#define FL_BLASKERNELS_H

/* Call first thing in main.  Returns when OpenBLAS has the kernels it should (or when
 * OPENBLAS_CORETYPE was set, by the user or by an earlier run of this process); else
 * execs /proc/self/exe with argv and OPENBLAS_CORETYPE set, and returns only if that
 * failed. */
void fl_blas_pick_kernels(char **argv);
/* The kernels OpenBLAS uses ("SkylakeX", "Haswell", "Prescott", ...). */
const char *fl_blas_kernels(void);

#endif
