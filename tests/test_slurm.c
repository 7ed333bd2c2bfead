/* examples/slurm/fl.sbatch on a real one-node Slurm cluster (tests/slurm_cluster.sh
 * starts munged, slurmctld and slurmd of its own, on ports of the test's, and stops
 * them): sbatch runs fl-server in one job step and three fl-client tasks in another,
 * each task takes its partition and certificate from SLURM_PROCID and SLURM_NTASKS, and
 * the federation runs to its end.  Needs root (the daemons run as root). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "testutil.h"

Test(slurm, sbatch_runs_server_and_clients_by_rank, .timeout = 300) {
  if (geteuid() != 0) cr_skip_test("the one-node Slurm cluster of this test needs root");
  cr_assert_eq(access("/usr/sbin/slurmctld", X_OK), 0, "no slurmctld: make deps installs it");
  char *dir = fl_test_tmpdir();
  int ctld = fl_test_free_port(), slurmd = fl_test_free_port(), fl = fl_test_free_port();
  cr_assert(ctld > 0 && slurmd > 0 && fl > 0);
  char cmd[4096], out[700];
  snprintf(out, sizeof out, "%s/job/job.out", dir);
  snprintf(cmd, sizeof cmd, "'%s/tests/slurm_cluster.sh' '%s' %d %d %d '%s' '%s' >'%s/run.log' 2>&1",
           fl_test_src_dir(), dir, ctld, slurmd, fl, fl_test_bin_dir(), fl_test_src_dir(), dir);
  int rc = fl_test_system(cmd);
  cr_assert_eq(rc, 0, "tests/slurm_cluster.sh failed (%d): see %s/run.log", rc, dir);
  for (int r = 0; r < 3; r++) {
    char want[160];
    snprintf(want, sizeof want, "launched by Slurm: rank %d of 3 (SLURM_PROCID), first partition "
             "%d, 3 partitions, first certificate client-%04d", r, r, r + 1);
    cr_assert_eq(fl_test_count(out, want), 1, "no '%s' in %s", want, out);
    snprintf(want, sizeof want, "[client-%04d] server says training is done after 2 rounds", r + 1);
    cr_assert_eq(fl_test_count(out, want), 1, "no '%s' in %s", want, out);
  }
  char slog[800];
  snprintf(slog, sizeof slog, "%s/job/fl/server.log", dir);
  cr_assert_eq(fl_test_count(slog, "round 2/2 done: 3/3 updates"), 1, "see %s", slog);
  cr_assert(fl_test_sanitizer_clean(out), "sanitizer report in %s", out);
  cr_assert(fl_test_sanitizer_clean(slog), "sanitizer report in %s", slog);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  fl_test_system(cmd);
  free(dir);
}
