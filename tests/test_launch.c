/* client/launch.c: the rank and size of every launcher (Open MPI, PMI, Slurm, a
 * Kubernetes Indexed Job) and which wins when several are set; what --partition-index,
 * --num-partitions and --cert-index auto become, with one or more clients per process;
 * and the errors: auto with no launcher variable, a rank without its size, values that
 * are not numbers or out of range.  The environment is a table of the test's. */
#include <criterion/criterion.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "launch.h"

typedef struct var { const char *name, *value; } var;

static const char *lookup(const char *name, void *ctx) {
  for (const var *v = ctx; v->name; v++)
    if (strcmp(v->name, name) == 0) return v->value;
  return NULL;
}

static launch_info detect_ok(var *env) {
  launch_info li;
  char err[256] = "";
  cr_assert_eq(launch_detect(lookup, env, &li, err, sizeof err), 0, "%s", err);
  return li;
}

Test(launch, each_launcher_gives_rank_and_size) {
  var slurm[] = {{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {0}};
  launch_info li = detect_ok(slurm);
  cr_assert_eq(li.rank, 3);
  cr_assert_eq(li.size, 8);
  cr_assert_str_eq(li.engine, "Slurm");
  var ompi[] = {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {0}};
  li = detect_ok(ompi);
  cr_assert_eq(li.rank, 0);
  cr_assert_eq(li.size, 2);
  cr_assert_str_eq(li.engine, "Open MPI");
  var pmi[] = {{"PMI_RANK", "5"}, {"PMI_SIZE", "6"}, {0}};
  li = detect_ok(pmi);
  cr_assert_eq(li.rank, 5);
  cr_assert_eq(li.size, 6);
  var k8s[] = {{"JOB_COMPLETION_INDEX", "7"}, {0}};
  li = detect_ok(k8s);
  cr_assert_eq(li.rank, 7);
  cr_assert_eq(li.size, 0, "Kubernetes does not say how many pods");
  cr_assert_str_eq(li.engine, "Kubernetes Indexed Job");
}

/* mpirun inside a Slurm allocation: the MPI rank tells the processes apart. */
Test(launch, mpi_inside_slurm_takes_the_mpi_rank) {
  var env[] = {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"OMPI_COMM_WORLD_RANK", "2"},
               {"OMPI_COMM_WORLD_SIZE", "4"}, {0}};
  launch_info li = detect_ok(env);
  cr_assert_eq(li.rank, 2);
  cr_assert_eq(li.size, 4);
}

Test(launch, bad_values_are_named) {
  char err[256];
  launch_info li;
  var none[] = {{"HOME", "/root"}, {0}};
  cr_assert_eq(launch_detect(lookup, none, &li, err, sizeof err), FL_ENOENT);
  cr_assert(strstr(err, "SLURM_PROCID") && strstr(err, "OMPI_COMM_WORLD_RANK"), "%s", err);
  var nosize[] = {{"SLURM_PROCID", "1"}, {0}};
  cr_assert_eq(launch_detect(lookup, nosize, &li, err, sizeof err), FL_ECONFIG);
  cr_assert(strstr(err, "SLURM_NTASKS"), "%s", err);
  var text[] = {{"PMI_RANK", "one"}, {"PMI_SIZE", "2"}, {0}};
  cr_assert_eq(launch_detect(lookup, text, &li, err, sizeof err), FL_ECONFIG);
  cr_assert(strstr(err, "PMI_RANK='one'"), "%s", err);
  var over[] = {{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {0}};
  cr_assert_eq(launch_detect(lookup, over, &li, err, sizeof err), FL_ECONFIG);
  cr_assert(strstr(err, "not below"), "%s", err);
  var neg[] = {{"SLURM_PROCID", "-1"}, {"SLURM_NTASKS", "4"}, {0}};
  cr_assert_eq(launch_detect(lookup, neg, &li, err, sizeof err), FL_ECONFIG);
  var zero[] = {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "0"}, {0}};
  cr_assert_eq(launch_detect(lookup, zero, &li, err, sizeof err), FL_ECONFIG);
}

static client_config parse(const char *const *args) {
  client_config c;
  char err[512];
  char *argv[32] = {"fl-client"};
  int argc = 1;
  for (; args[argc - 1]; argc++) argv[argc] = (char *)args[argc - 1];
  cr_assert_eq(fl_options_init(client_options, &c), 0);
  cr_assert_eq(fl_options_parse_args(client_options, &c, argc, argv, 0, err, sizeof err), 0, "%s", err);
  return c;
}

Test(launch, auto_options_take_rank_and_size) {
  const char *args[] = {"--data", "x.csv", "--partition", "iid", "--partition-index", "auto",
                        "--num-partitions", "auto", "--cert-index", "auto", NULL};
  client_config c = parse(args);
  cr_assert_eq(c.partition_index, FL_OPT_AUTO);
  char err[512] = "";
  var env[] = {{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "5"}, {0}};
  cr_assert_eq(launch_resolve(&c, lookup, env, err, sizeof err), 0, "%s", err);
  cr_assert_eq(c.partition_index, 2);
  cr_assert_eq(c.num_partitions, 5);
  cr_assert_eq(c.cert_index, 3, "rank 2 takes certificate 0003");
  cr_assert_eq(client_config_check(&c, err, sizeof err), 0, "%s", err);
  fl_options_free(client_options, &c);

  /* Four virtual clients per process: rank 2 holds partitions 8..11 of 20. */
  const char *args4[] = {"--data", "x.csv", "--clients", "4", "--partition", "iid",
                         "--partition-index", "auto", "--num-partitions", "auto",
                         "--cert-index", "auto", NULL};
  c = parse(args4);
  cr_assert_eq(launch_resolve(&c, lookup, env, err, sizeof err), 0, "%s", err);
  cr_assert_eq(c.partition_index, 8);
  cr_assert_eq(c.num_partitions, 20);
  cr_assert_eq(c.cert_index, 9);
  cr_assert_eq(client_config_check(&c, err, sizeof err), 0, "%s", err);
  fl_options_free(client_options, &c);

  /* Kubernetes: the index from the Job, the number of pods from the flag. */
  const char *argsk[] = {"--data", "x.csv", "--partition", "iid", "--partition-index", "auto",
                         "--num-partitions", "4", "--cert-index", "auto", NULL};
  c = parse(argsk);
  var k8s[] = {{"JOB_COMPLETION_INDEX", "3"}, {0}};
  cr_assert_eq(launch_resolve(&c, lookup, k8s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(c.partition_index, 3);
  cr_assert_eq(c.num_partitions, 4);
  cr_assert_eq(c.cert_index, 4);
  fl_options_free(client_options, &c);
}

Test(launch, auto_without_a_launcher_is_a_clear_error) {
  const char *args[] = {"--data", "x.csv", "--partition", "iid", "--partition-index", "auto",
                        "--num-partitions", "auto", NULL};
  client_config c = parse(args);
  char err[512] = "";
  var none[] = {{0}};
  cr_assert_eq(launch_resolve(&c, lookup, none, err, sizeof err), FL_ECONFIG);
  cr_assert(strstr(err, "--partition-index auto") && strstr(err, "no launcher variable"), "%s", err);
  var k8s[] = {{"JOB_COMPLETION_INDEX", "0"}, {0}};
  cr_assert_eq(launch_resolve(&c, lookup, k8s, err, sizeof err), FL_ECONFIG);
  cr_assert(strstr(err, "--num-partitions") && strstr(err, "JOB_COMPLETION_INDEX"), "%s", err);
  fl_options_free(client_options, &c);
  /* Nothing auto: nothing needed from the environment. */
  const char *plain[] = {"--data", "x.csv", "--partition", "iid", "--partition-index", "1",
                         "--num-partitions", "3", NULL};
  c = parse(plain);
  cr_assert_eq(launch_resolve(&c, lookup, none, err, sizeof err), 0);
  cr_assert_eq(c.partition_index, 1);
  fl_options_free(client_options, &c);
  const char *bad[] = {"--data", "x.csv", "--partition-index", "automatic", NULL};
  cr_assert_eq(fl_options_init(client_options, &c), 0);
  char *argv[] = {"fl-client", (char *)bad[0], (char *)bad[1], (char *)bad[2], (char *)bad[3]};
  cr_assert_eq(fl_options_parse_args(client_options, &c, 5, argv, 0, err, sizeof err), FL_ECONFIG);
  cr_assert(strstr(err, "whole number or auto"), "%s", err);
  fl_options_free(client_options, &c);
}
