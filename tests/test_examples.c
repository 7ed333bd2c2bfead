/* libflclient as a user gets it: `make install` into a stage (the Makefile's, DESTDIR),
 * and the examples (examples/libflclient) built against it with pkg-config, then run
 * against the real fl-server over TLS.
 *
 * - the stage holds the header, libflclient.so.1 (and the .so link), libflclient.a and
 *   flclient.pc for the install prefix; the examples build warning-free (-Werror), the C
 *   one linked to libflclient.so.1;
 * - three C clients (hand-written logistic regression) train external:logreg20:21 from
 *   initial parameters one of them gives, and converge: the federated evaluation's
 *   accuracy rises to above 0.85 and the training loss falls; a client of another size
 *   is refused, and its message names both models;
 * - two C++ clients (linear regression, fits completed from std::threads) train
 *   external:linreg10:11 from an --init-model, and the evaluation loss falls five-fold;
 * - linked to the static library beside a file of its own that defines names libfl uses
 *   inside (fl_strerror, fl_conn_send), the C example links and runs: nothing but
 *   fl_client_* comes out of libflclient.a;
 * - the symbol check (client/check-symbols.sh) passes on the installed libraries and
 *   fails, naming the symbol, when the list and the library differ. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "modelfile.h"
#include "testutil.h"

static const char *env_or(const char *name, const char *dflt) {
  const char *v = getenv(name);
  return v && *v ? v : dflt;
}

static const char *stage(void) { return env_or("FL_STAGE", "build/stage"); }
static const char *prefix(void) { return env_or("FL_PREFIX", "/usr/local"); }

/* STAGE + dir (the install's libdir or includedir). */
static void staged(char *out, size_t len, const char *var, const char *suffix, const char *file) {
  char dflt[512];
  snprintf(dflt, sizeof dflt, "%s/%s", prefix(), suffix);
  snprintf(out, len, "%s%s%s%s", stage(), env_or(var, dflt), file ? "/" : "", file ? file : "");
}

/* The compiler flags of the build under test: examples run with the same sanitizers. */
static const char *san_flags(void) {
  static char buf[256];
  const char *s = getenv("FL_SANITIZER");
  if (!s || !*s) return "";
  snprintf(buf, sizeof buf, "-fsanitize=%s -fno-omit-frame-pointer -fno-sanitize-recover=all", s);
  return buf;
}

/* Runs a shell command (output appended to log) with pkg-config looking at the stage,
 * outside of any make's jobserver. */
static int run_sh(const char *cmd, const char *log) {
  char pc[700], full[8192];
  staged(pc, sizeof pc, "FL_LIBDIR", "lib", "pkgconfig");
  setenv("PKG_CONFIG_PATH", pc, 1);
  setenv("PKG_CONFIG_SYSROOT_DIR", stage(), 1);
  unsetenv("MAKEFLAGS");
  unsetenv("MFLAGS");
  unsetenv("MAKELEVEL");
  snprintf(full, sizeof full, "{ %s ; } >>%s 2>&1", cmd, log);
  return fl_test_system(full);
}

static void build_examples(const fl_test_fed *f) {
  char log[700], cmd[4096];
  fl_test_fed_path(f, "build.log", log, sizeof log);
  snprintf(cmd, sizeof cmd,
           "make -s -C %s/examples/libflclient O=%s CC=cc CXX=g++ "
           "CFLAGS=\"-O2 -g -Wall -Wextra -Werror %s\" CXXFLAGS=\"-O2 -g -Wall -Wextra -Werror %s\"",
           fl_test_src_dir(), f->dir, san_flags(), san_flags());
  cr_assert_eq(run_sh(cmd, log), 0, "the examples did not build (%s)", log);
  char libdir[700];
  staged(libdir, sizeof libdir, "FL_LIBDIR", "lib", NULL);
  setenv("LD_LIBRARY_PATH", libdir, 1);
}

static pid_t start_example(fl_test_fed *f, const char *prog, int cert, const char *log,
                           const char *extra1, const char *extra2) {
  char path[700], addr[64], c[600], k[600], seed[16], name[32];
  snprintf(path, sizeof path, "%s/%s", f->dir, prog);
  snprintf(addr, sizeof addr, "127.0.0.1:%d", f->port);
  snprintf(c, sizeof c, "%s/client-%04d.crt", fl_test_certs_dir(), cert);
  snprintf(k, sizeof k, "%s/client-%04d.key", fl_test_certs_dir(), cert);
  snprintf(seed, sizeof seed, "%d", cert);
  snprintf(name, sizeof name, "client-%04d", cert);
  char logp[700];
  fl_test_fed_path(f, log, logp, sizeof logp);
  char *argv[] = {path, "--server", addr, "--server-name", "localhost", "--ca", f->ca, "--cert", c,
                  "--key", k, "--seed", seed, "--name", name, (char *)extra1, (char *)extra2, NULL};
  return fl_test_spawn(logp, argv);
}

Test(examples, built_against_a_staged_install_they_federate, .timeout = 600) {
  /* The installed files. */
  char p[700];
  const char *files[] = {"libflclient.so.1", "libflclient.so", "libflclient.a",
                         "pkgconfig/flclient.pc"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    staged(p, sizeof p, "FL_LIBDIR", "lib", files[i]);
    cr_assert_eq(access(p, R_OK), 0, "not installed: %s", p);
  }
  staged(p, sizeof p, "FL_LIBDIR", "lib", "libflclient.so");
  char target[64] = "";
  cr_assert_gt(readlink(p, target, sizeof target - 1), 0, "%s is not a link", p);
  cr_assert_str_eq(target, "libflclient.so.1");
  staged(p, sizeof p, "FL_LIBDIR", "lib", "pkgconfig/flclient.pc");
  char want[600];
  snprintf(want, sizeof want, "prefix=%s\n", prefix());
  cr_assert_eq(fl_test_count(p, want), 1, "%s has another prefix", p);
  staged(p, sizeof p, "FL_INCLUDEDIR", "include", "fl/client.h");
  cr_assert_eq(access(p, R_OK), 0, "not installed: %s", p);

  fl_test_fed f;
  fl_test_fed_init(&f);
  build_examples(&f);
  char cmd[2048], log[700];
  fl_test_fed_path(&f, "readelf.log", log, sizeof log);
  snprintf(cmd, sizeof cmd, "readelf -d %s/logreg | grep -q \"NEEDED.*libflclient.so.1\"", f.dir);
  cr_assert_eq(run_sh(cmd, log), 0, "logreg is not linked to libflclient.so.1");

  /* Logistic regression in C: initial parameters from a client. */
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--model", "external:logreg20:21",
                                     "--rounds", "8", "--clients-per-round", "3", "--min-clients",
                                     "3", "--fed-eval-every", "1", "--lr", "0.1", "--batch-size",
                                     "16", NULL);
  cr_assert_gt(s, 0, "no server (%s)", f.log);
  pid_t other = start_example(&f, "logreg", 4, "other.log", "--features", "5");
  pid_t c[3];
  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof name, "logreg%d.log", i + 1);
    c[i] = start_example(&f, "logreg", i + 1, name, NULL, NULL);
  }
  cr_assert_eq(fl_test_wait(other, 60), 1, "a client of another model was not refused");
  cr_assert_eq(fl_test_wait(s, 400), 0, "fl-server failed (%s)", f.log);
  for (int i = 0; i < 3; i++) {
    char name[32], path[700];
    snprintf(name, sizeof name, "logreg%d.log", i + 1);
    fl_test_fed_path(&f, name, path, sizeof path);
    cr_assert_eq(fl_test_wait(c[i], 60), 0, "client %d failed (%s)", i + 1, path);
    cr_assert_eq(fl_test_count(path, "logreg: training is done"), 1, "%s", path);
    cr_assert(fl_test_sanitizer_clean(path), "sanitizer report in %s", path);
  }
  fl_test_fed_path(&f, "other.log", log, sizeof log);
  cr_assert_eq(fl_test_count(log, "FL_CLIENT_EMODEL"), 1, "%s", log);
  cr_assert_geq(fl_test_count(log, "'external:logreg5:6' (6 parameters), but this federation trains 'external:logreg20:21' (21 parameters)"), 1, "%s", log);
  cr_assert(fl_test_sanitizer_clean(log), "sanitizer report in %s", log);
  cr_assert_eq(fl_test_count(f.log, "initial model from client-000"), 1, "%s", f.log);
  cr_assert_eq(fl_test_metrics_rounds(f.metrics), 8, "%s", f.metrics);
  char *first = fl_test_metrics_line(f.metrics, 1), *last = fl_test_metrics_line(f.metrics, 8);
  double acc1 = fl_test_json_num(first, "fed_eval_accuracy"), acc8 = fl_test_json_num(last, "fed_eval_accuracy");
  double loss1 = fl_test_json_num(first, "train_loss"), loss8 = fl_test_json_num(last, "train_loss");
  cr_assert_eq(fl_test_json_num(last, "updates_accepted"), 3, "%s", last);
  cr_assert_gt(acc8, 0.85, "final federated accuracy %.3f (%s)", acc8, f.metrics);
  cr_assert_gt(acc8, acc1, "accuracy did not rise: %.3f -> %.3f", acc1, acc8);
  cr_assert_lt(loss8, loss1, "training loss did not fall: %.4f -> %.4f", loss1, loss8);
  free(first);
  free(last);
  cr_assert(fl_test_sanitizer_clean(f.log));

  /* Linear regression in C++: the initial model from --init-model. */
  fl_test_fed g;
  fl_test_fed_init(&g);
  char init[700], err[256];
  fl_test_fed_path(&g, "init.bin", init, sizeof init);
  fl_model *m;
  cr_assert_eq(fl_model_create("external:linreg10:11", &m, err, sizeof err), 0, "%s", err);
  float zeros[11] = {0};
  cr_assert_eq(fl_modelfile_save(init, fl_model_spec(m), fl_model_id(m), zeros, 11, err, sizeof err), 0, "%s", err);
  fl_model_free(m);
  snprintf(cmd, sizeof cmd, "cp %s/linreg %s/linreg", f.dir, g.dir);
  cr_assert_eq(run_sh(cmd, log), 0);
  s = fl_test_fed_server_ready(&g, "server.log", "--model", "external:linreg10:11", "--init-model",
                               init, "--rounds", "8", "--clients-per-round", "2", "--min-clients",
                               "2", "--fed-eval-every", "1", "--lr", "0.02", "--batch-size", "16",
                               NULL);
  cr_assert_gt(s, 0, "no server (%s)", g.log);
  pid_t d[2];
  for (int i = 0; i < 2; i++) {
    char name[32];
    snprintf(name, sizeof name, "linreg%d.log", i + 1);
    d[i] = start_example(&g, "linreg", i + 1, name, NULL, NULL);
  }
  cr_assert_eq(fl_test_wait(s, 400), 0, "fl-server failed (%s)", g.log);
  for (int i = 0; i < 2; i++) {
    char name[32], path[700];
    snprintf(name, sizeof name, "linreg%d.log", i + 1);
    fl_test_fed_path(&g, name, path, sizeof path);
    cr_assert_eq(fl_test_wait(d[i], 60), 0, "client %d failed (%s)", i + 1, path);
    cr_assert_eq(fl_test_count(path, "linreg: training is done"), 1, "%s", path);
    cr_assert(fl_test_sanitizer_clean(path), "sanitizer report in %s", path);
  }
  cr_assert_eq(fl_test_count(g.log, "initial model from"), 1, "%s", g.log);
  first = fl_test_metrics_line(g.metrics, 1);
  last = fl_test_metrics_line(g.metrics, 8);
  cr_assert(first && last, "%s", g.metrics);
  loss1 = fl_test_json_num(first, "fed_eval_loss");
  loss8 = fl_test_json_num(last, "fed_eval_loss");
  cr_assert_lt(loss8 * 5, loss1, "evaluation loss %.4f -> %.4f (%s)", loss1, loss8, g.metrics);
  free(first);
  free(last);
  cr_assert(fl_test_sanitizer_clean(g.log));
  fl_test_fed_free(&g);
  fl_test_fed_free(&f);
}

Test(examples, static_library_keeps_its_insides_to_itself, .timeout = 300) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  char clash[700], log[700], lib[700], cmd[4096];
  fl_test_fed_path(&f, "clash.c", clash, sizeof clash);
  fl_test_fed_path(&f, "build.log", log, sizeof log);
  staged(lib, sizeof lib, "FL_LIBDIR", "lib", "libflclient.a");
  FILE *fp = fopen(clash, "w");
  cr_assert_not_null(fp);
  fputs("/* Names libfl uses inside libflclient, defined by the application. */\n"
        "const char *fl_strerror(int e) { (void)e; return \"the application's own\"; }\n"
        "int fl_conn_send(void) { return 0; }\n", fp);
  fclose(fp);
  snprintf(cmd, sizeof cmd,
           "cc -std=c99 -Wall -Wextra -Werror %s $(pkg-config --cflags flclient) -o %s/logreg-static "
           "%s/examples/libflclient/logreg.c %s %s $(pkg-config --static --libs flclient | sed "
           "s/-lflclient//) && ! readelf -d %s/logreg-static | grep -q libflclient",
           san_flags(), f.dir, fl_test_src_dir(), clash, lib, f.dir);
  cr_assert_eq(run_sh(cmd, log), 0, "linking the static library failed (%s)", log);

  /* It runs: against a server of another model it is refused, and says so. */
  char olog[700];
  fl_test_fed_path(&f, "static.log", olog, sizeof olog);
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--model", "external:logreg3:4", NULL);
  cr_assert_gt(s, 0, "no server (%s)", f.log);
  pid_t c = start_example(&f, "logreg-static", 1, "static.log", NULL, NULL);
  cr_assert_eq(fl_test_wait(c, 60), 1, "%s", olog);
  cr_assert_eq(fl_test_count(olog, "FL_CLIENT_EMODEL"), 1, "%s", olog);
  cr_assert(fl_test_sanitizer_clean(olog), "sanitizer report in %s", olog);
  fl_test_wait(s, 1);
  fl_test_fed_free(&f);
}

Test(examples, symbol_check_catches_a_change_of_the_abi) {
  char dir[600], so[700], a[700], list[700], log[700], cmd[4096];
  char *tmp = fl_test_tmpdir();
  snprintf(dir, sizeof dir, "%s", tmp);
  free(tmp);
  staged(so, sizeof so, "FL_LIBDIR", "lib", "libflclient.so.1");
  staged(a, sizeof a, "FL_LIBDIR", "lib", "libflclient.a");
  snprintf(log, sizeof log, "%s/check.log", dir);
  snprintf(list, sizeof list, "%s/client/libflclient.symbols", fl_test_src_dir());
  const char *check = "client/check-symbols.sh";
  snprintf(cmd, sizeof cmd, "cd %s && %s %s %s %s", fl_test_src_dir(), check, list, so, a);
  cr_assert_eq(run_sh(cmd, log), 0, "the installed libraries fail the check (%s)", log);

  /* A list that lacks a function the library exports, and one that names a function it
   * does not. */
  char less[700], more[700];
  snprintf(less, sizeof less, "%s/less.symbols", dir);
  snprintf(more, sizeof more, "%s/more.symbols", dir);
  snprintf(cmd, sizeof cmd, "grep -v '^fl_client_stop$' %s > %s && (cat %s; echo fl_client_bogus) > %s",
           list, less, list, more);
  cr_assert_eq(run_sh(cmd, log), 0);
  snprintf(cmd, sizeof cmd, "cd %s && %s %s %s %s", fl_test_src_dir(), check, less, so, a);
  cr_assert_neq(run_sh(cmd, log), 0, "a missing symbol passed");
  cr_assert_eq(fl_test_count(log, "exported but not listed: fl_client_stop"), 1, "%s", log);
  snprintf(cmd, sizeof cmd, "cd %s && %s %s %s", fl_test_src_dir(), check, more, so);
  cr_assert_neq(run_sh(cmd, log), 0, "an extra symbol passed");
  cr_assert_eq(fl_test_count(log, "listed but not exported: fl_client_bogus"), 1, "%s", log);

  /* Nothing of libfl, protobuf-c's generated code or the sanitizers is exported. */
  snprintf(cmd, sizeof cmd, "nm -D --defined-only %s | awk '$2 != \"A\"' | grep -v ' fl_client_'", so);
  cr_assert_neq(run_sh(cmd, log), 0, "%s exports more than fl_client_* (%s)", so, log);
}
