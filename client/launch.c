/* Rank and size from the launcher's environment (see launch.h). */
#include "launch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "error.h"
#include "log.h"

typedef struct engine {
  const char *name, *rank_var, *size_var;
} engine;

static const engine engines[] = {
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
    {"PMI", "PMI_RANK", "PMI_SIZE"},
    {"Slurm", "SLURM_PROCID", "SLURM_NTASKS"},
    {"Kubernetes Indexed Job", "JOB_COMPLETION_INDEX", NULL},
};

static int number(const char *var, const char *v, int min, int *out, char *err, size_t errlen) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end || x < min || x > 10000000)
    return fl_errf(err, errlen, FL_ECONFIG, "%s='%s': expected a whole number from %d to 10000000",
                   var, v, min);
  *out = (int)x;
  return 0;
}

int launch_detect(launch_getenv get, void *ctx, launch_info *out, char *err, size_t errlen) {
  for (size_t i = 0; i < sizeof engines / sizeof *engines; i++) {
    const engine *e = &engines[i];
    const char *r = get(e->rank_var, ctx);
    if (!r || !*r) continue;
    *out = (launch_info){.engine = e->name, .rank_var = e->rank_var, .size_var = e->size_var};
    int rc = number(e->rank_var, r, 0, &out->rank, err, errlen);
    if (rc) return rc;
    if (!e->size_var) return 0;
    const char *s = get(e->size_var, ctx);
    if (!s || !*s)
      return fl_errf(err, errlen, FL_ECONFIG, "%s is set (%s) but %s is not", e->rank_var, r,
                     e->size_var);
    if ((rc = number(e->size_var, s, 1, &out->size, err, errlen)) != 0) return rc;
    if (out->rank >= out->size)
      return fl_errf(err, errlen, FL_ECONFIG, "%s=%d is not below %s=%d", e->rank_var, out->rank,
                     e->size_var, out->size);
    return 0;
  }
  return fl_errf(err, errlen, FL_ENOENT,
                 "no launcher variable is set (OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID or "
                 "JOB_COMPLETION_INDEX)");
}

int launch_resolve(client_config *cfg, launch_getenv get, void *ctx, char *err, size_t errlen) {
  int want_index = cfg->partition_index == FL_OPT_AUTO, want_parts = cfg->num_partitions == FL_OPT_AUTO;
  int want_cert = cfg->cert_index == FL_OPT_AUTO;
  if (!want_index && !want_parts && !want_cert) return 0;
  const char *which = want_index ? "--partition-index" : want_parts ? "--num-partitions" : "--cert-index";
  launch_info li;
  char why[400];
  int rc = launch_detect(get, ctx, &li, why, sizeof why);
  if (rc == FL_ENOENT)
    return fl_errf(err, errlen, FL_ECONFIG,
                   "%s auto: %s; run under mpirun, srun or a Kubernetes Indexed Job, or give "
                   "the number", which, why);
  if (rc) return fl_errf(err, errlen, rc, "%s auto: %s", which, why);
  long c = cfg->clients;
  if ((want_index || want_cert) && (long)li.rank * c > 10000000)
    return fl_errf(err, errlen, FL_ECONFIG, "%s auto: rank %d with --clients %ld is out of range",
                   which, li.rank, c);
  if (want_parts) {
    if (!li.size)
      return fl_errf(err, errlen, FL_ECONFIG,
                     "--num-partitions auto: %s gives this process's index (%s=%d) but not the "
                     "number of processes; give --num-partitions N (the Job's completions)",
                     li.engine, li.rank_var, li.rank);
    if ((long)li.size * c > 10000000)
      return fl_errf(err, errlen, FL_ECONFIG, "--num-partitions auto: %d processes of %ld clients is out of range",
                     li.size, c);
    cfg->num_partitions = (int)(li.size * c);
  }
  if (want_index) cfg->partition_index = (int)(li.rank * c);
  if (want_cert) cfg->cert_index = (int)(li.rank * c + 1);
  char size[32] = "", what[200] = "";
  if (li.size) snprintf(size, sizeof size, " of %d", li.size);
  int n = 0;
  if (want_index) n += snprintf(what + n, sizeof what - (size_t)n, ", first partition %d", cfg->partition_index);
  if (want_parts) n += snprintf(what + n, sizeof what - (size_t)n, ", %d partitions", cfg->num_partitions);
  if (want_cert)
    snprintf(what + n, sizeof what - (size_t)n, ", first certificate %s-%04d", cfg->cert_prefix,
             cfg->cert_index);
  fl_info("client", "launched by %s: rank %d%s (%s)%s", li.engine, li.rank, size, li.rank_var, what);
  return 0;
}
