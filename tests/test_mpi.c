/* `mpirun -n 3 fl-client ... --partition-index auto --num-partitions auto --cert-index
 * auto`: Open MPI's mpirun (Debian's openmpi-bin) launches three client processes on
 * this machine, each takes its partition and certificate from its MPI rank, and a real
 * fl-server runs its rounds with all three.  fl-client does not link MPI: it only reads
 * the variables mpirun sets. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define MPIRUN "/usr/bin/mpirun"

Test(mpi, mpirun_clients_take_their_rank, .timeout = 300) {
  cr_assert_eq(access(MPIRUN, X_OK), 0, "no %s: make deps installs openmpi-bin", MPIRUN);
  fl_test_fed f;
  fl_test_fed_init(&f);
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--model", "logreg", "--rounds", "2",
                                     "--clients-per-round", "3", "--min-clients", "3", NULL);
  cr_assert_gt(s, 0, "no server (%s)", f.dir);
  char addr[64], log[700];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", f.port);
  fl_test_fed_path(&f, "mpirun.log", log, sizeof log);
  /* As root Open MPI wants to be told; --oversubscribe: three processes on two cores. */
  char *argv[] = {MPIRUN, "--allow-run-as-root", "--oversubscribe", "-n", "3", f.client,
                  "--server", addr, "--server-name", "localhost", "--ca", f.ca, "--certs-dir",
                  (char *)fl_test_certs_dir(), "--data", "fashion-mnist:train", "--max-samples",
                  "600", "--partition", "iid", "--partition-index", "auto", "--num-partitions",
                  "auto", "--cert-index", "auto", "--workers", "1", NULL};
  pid_t m = fl_test_spawn(log, argv);
  int rc = fl_test_wait(s, 240);
  cr_assert_eq(rc, 0, "fl-server exited with %d (see %s)", rc, f.log);
  rc = fl_test_wait(m, 60);
  cr_assert_eq(rc, 0, "mpirun exited with %d (see %s)", rc, log);
  for (int r = 0; r < 3; r++) {
    char want[128];
    snprintf(want, sizeof want, "launched by Open MPI: rank %d of 3 (OMPI_COMM_WORLD_RANK), "
             "first partition %d, 3 partitions, first certificate client-%04d", r, r, r + 1);
    cr_assert_eq(fl_test_count(log, want), 1, "no '%s' in %s", want, log);
    snprintf(want, sizeof want, "client-%04d ready (200 samples", r + 1);
    cr_assert_eq(fl_test_count(f.log, want), 1, "no '%s' in %s", want, f.log);
  }
  cr_assert_eq(fl_test_count(f.log, "round 2/2 done: 3/3 updates"), 1, "see %s", f.log);
  cr_assert(fl_test_sanitizer_clean(f.log), "sanitizer report in %s", f.log);
  cr_assert(fl_test_sanitizer_clean(log), "sanitizer report in %s", log);
  fl_test_fed_free(&f);
}
