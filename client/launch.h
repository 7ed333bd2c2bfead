/* Where a client process stands in a job that a cluster engine launched: its rank and
 * the number of processes, from the variables the engine sets.
 *
 *   Open MPI (mpirun)          OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE
 *   MPICH, Intel MPI (PMI)     PMI_RANK, PMI_SIZE
 *   Slurm (srun)               SLURM_PROCID, SLURM_NTASKS
 *   Kubernetes Indexed Job     JOB_COMPLETION_INDEX (the size is not in the environment)
 *
 * looked for in that order: mpirun inside a Slurm allocation sets both, and the MPI rank
 * is the one that tells its processes apart.  fl-client's `--partition-index auto`,
 * `--num-partitions auto` and `--cert-index auto` take their values from here. */
#ifndef FL_CLIENT_LAUNCH_H
#define FL_CLIENT_LAUNCH_H

#include <stddef.h>

#include "config.h"

typedef struct launch_info {
  int rank;            /* 0 .. size-1 */
  int size;            /* 0 when the launcher does not say (Kubernetes) */
  const char *engine;  /* "Slurm", ... (static) */
  const char *rank_var, *size_var; /* the variables read (static; size_var may be NULL) */
} launch_info;

/* Reads a variable (getenv, or a test's table); NULL when unset. */
typedef const char *(*launch_getenv)(const char *name, void *ctx);

/* 0 and *out filled; FL_ENOENT when no launcher variable is set; FL_ECONFIG for a value
 * that is not a number in range (the message names the variable and its value). */
int launch_detect(launch_getenv get, void *ctx, launch_info *out, char *err, size_t errlen);

/* Replaces the "auto" values of cfg (FL_OPT_AUTO) with those of the launch: with
 * --clients C, process r of S takes partitions r*C .. r*C+C-1 of S*C and the
 * certificates numbered from r*C+1.  A clear error when "auto" is given and no launcher
 * variable is set, or the launcher cannot give the size.  0 when nothing was "auto". */
int launch_resolve(client_config *cfg, launch_getenv get, void *ctx, char *err, size_t errlen);

#endif
