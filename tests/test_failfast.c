/* Failing fast, with the reason: the real binaries given bad input exit at once with a
 * message naming the problem and an exit code, never hang (each run is bounded in time
 * by timeout(1)), and a client whose data does not fit the server's model says so, is
 * left out of the run, and exits non-zero naming the mismatch. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>

#include "testutil.h"

/* One bad input: the command line (after the binary; {DIR}, {CERTS} and the test's own
 * {KEY}s are replaced),
 * the exit code expected, and text the output must hold. */
typedef struct bad_input {
  const char *bin;
  const char *args;
  int code;
  const char *says;
} bad_input;

/* Copies fmt into out with each {KEY} of vars ("KEY", "value", ..., NULL) replaced. */
static void expand(char *out, size_t len, const char *fmt, const char *const *vars) {
  size_t n = 0;
  out[0] = 0;
  for (const char *p = fmt; *p && n + 1 < len;) {
    const char *with = NULL;
    for (const char *const *v = vars; *p == '{' && v && v[0]; v += 2) {
      size_t k = strlen(v[0]);
      if (strncmp(p + 1, v[0], k) == 0 && p[k + 1] == '}') {
        with = v[1];
        p += k + 2;
        break;
      }
    }
    if (with) n += (size_t)snprintf(out + n, len - n, "%s", with);
    else out[n++] = *p++, out[n] = 0;
    if (n >= len) n = len - 1;
  }
}

/* Runs each bad input under timeout(1) (30 s, scaled): a hang is exit code 124. */
static void run_table(const bad_input *t, size_t count, const char *dir, const char *const *more) {
  const char *vars[32] = {"DIR", dir, "CERTS", fl_test_certs_dir()};
  for (int i = 0; more && more[i] && i < 26; i++) vars[4 + i] = more[i];
  for (size_t i = 0; i < count; i++) {
    char args[4096], cmd[8192], out[700];
    expand(args, sizeof args, t[i].args, vars);
    snprintf(out, sizeof out, "%s/out-%zu.txt", dir, i);
    snprintf(cmd, sizeof cmd, "timeout %d %s/%s %s >%s 2>&1", (int)(30 * fl_test_time_scale()),
             fl_test_bin_dir(), t[i].bin, args, out);
    int rc = fl_test_system(cmd);
    char *text = fl_test_read_file(out, NULL);
    cr_expect_eq(rc, t[i].code, "%s %s: exit code %d, expected %d%s\n%s", t[i].bin, args, rc,
                 t[i].code, rc == 124 ? " (it hung)" : "", text ? text : "");
    cr_expect(text && strstr(text, t[i].says), "%s %s: the output does not say \"%s\":\n%s",
              t[i].bin, args, t[i].says, text ? text : "");
    free(text);
  }
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
}

#define TLS_ARGS "--ca {CERTS}/ca.crt --cert {CERTS}/server.crt --key {CERTS}/server.key"

/* Every setting the server sends to clients is checked before it listens. */
Test(failfast, server_settings_checked_at_start, .timeout = 120) {
  char *dir = fl_test_tmpdir();
  char ini[700];
  snprintf(ini, sizeof ini, "%s/adam.ini", dir);
  write_file(ini, "[train]\noptimizer = Adam\n");
  static const bad_input table[] = {
      {"fl-server", "--optimizer rmsprop", 2, "unknown optimizer 'rmsprop'"},
      {"fl-server", "--optimizer Adam", 2, "did you mean 'adam'?"},
      {"fl-server", "--config {DIR}/adam.ini", 2, "did you mean 'adam'?"},
      {"fl-server", "--lr 0", 2, "--lr"},
      {"fl-server", "--momentum 1", 2, "--momentum"},
      {"fl-server", "--model 'in:4 dense:x softmax'", 2, "--model"},
      {"fl-client", "--clients 3 --data x.csv", 2, "--clients 3 without --partition: every "
       "virtual client would train on all of --data"},
      {"fl-client", "--clients 3 --data x.csv --partition none --num-partitions 6", 2,
       "--partition none shares all of --data"},
      /* fl-train speaks like the others: --batch-size, --config, --version */
      {"fl-train", "--version", 0, "fl-train "},
      {"fl-train", "--batch-size 0", 2, "batch-size"},
      {"fl-train", "--config {DIR}/missing.ini", 2, "missing.ini: cannot open config file"},
      {"fl-train", "--optimizer rmsprop", 2, "--optimizer: 'rmsprop' is not one of"},
  };
  run_table(table, sizeof table / sizeof *table, dir, NULL);
  free(dir);
}

/* CSV files whose width or labels do not fit logreg:3:2. */
static void write_csvs(const char *dir) {
  char p[700];
  snprintf(p, sizeof p, "%s/fits.csv", dir);
  write_file(p, "a,b,c,label\n1,2,3,0\n4,5,6,1\n7,8,9,0\n1,1,1,1\n");
  snprintf(p, sizeof p, "%s/wide.csv", dir);
  write_file(p, "a,b,c,d,label\n1,2,3,4,0\n4,5,6,7,1\n");
  snprintf(p, sizeof p, "%s/labels.csv", dir);
  write_file(p, "a,b,c,label\n1,2,3,0\n4,5,6,7\n");
}

/* A client whose data has another width than the model's input tells the server, which
 * leaves it out for the rest of the run (a reconnection is refused with the reason) and
 * does not wait for it: the round timeout (10 minutes) never comes into play. */
Test(failfast, client_that_cannot_train_is_left_out, .timeout = 240) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  write_csvs(f.dir);
  char fits[700], wide[700], labels[700], log[700];
  fl_test_fed_path(&f, "fits.csv", fits, sizeof fits);
  fl_test_fed_path(&f, "wide.csv", wide, sizeof wide);
  fl_test_fed_path(&f, "labels.csv", labels, sizeof labels);
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--model", "logreg:3:2", "--rounds", "1",
                                     "--clients-per-round", "1", "--round-timeout", "600", NULL);
  cr_assert_gt(s, 0);
  char c2[700], k2[700];
  fl_test_client_cert(2, c2, k2, sizeof c2);

  /* Too wide: refused by the client itself, at its first task. */
  pid_t b = fl_test_fed_clients(&f, "wide.log", "--cert", c2, "--key", k2, "--data", wide, NULL);
  int rc = fl_test_wait(b, 60);
  fl_test_fed_path(&f, "wide.log", log, sizeof log);
  cr_assert(rc != 0 && rc != -1, "the client exited %d", rc);
  cr_assert(fl_test_count(log, "model 'in:3 dense:1 sigmoid_bce' takes 3 features, but --data"),
            "the client does not name the mismatch");
  fl_test_fed_path(&f, "server.log", log, sizeof log);
  cr_assert(fl_test_wait_for(log, "client-0002 cannot train this model", 30));
  cr_assert(fl_test_count(log, "left out for the rest of the run"));

  /* Back again (with data that fits, even): refused with the reason it gave. */
  b = fl_test_fed_clients(&f, "again.log", "--cert", c2, "--key", k2, "--data", fits, NULL);
  rc = fl_test_wait(b, 60);
  fl_test_fed_path(&f, "again.log", log, sizeof log);
  cr_assert(rc != 0 && rc != -1, "the excluded client exited %d", rc);
  cr_assert(fl_test_count(log, "left out of this run"));

  /* Labels beyond the model's outputs: the same, named by sample and label. */
  char c3[700], k3[700];
  fl_test_client_cert(3, c3, k3, sizeof c3);
  b = fl_test_fed_clients(&f, "labels.log", "--cert", c3, "--key", k3, "--data", labels, NULL);
  rc = fl_test_wait(b, 60);
  fl_test_fed_path(&f, "labels.log", log, sizeof log);
  cr_assert(rc != 0 && rc != -1, "the client exited %d", rc);
  cr_assert(fl_test_count(log, "has label 7"), "the client does not name the label");

  /* A client whose data fits completes the run. */
  char c1[700], k1[700];
  fl_test_client_cert(1, c1, k1, sizeof c1);
  pid_t a = fl_test_fed_clients(&f, "fits.log", "--cert", c1, "--key", k1, "--data", fits, NULL);
  cr_assert_eq(fl_test_wait(s, 120), 0, "the server did not finish the run");
  cr_assert_eq(fl_test_wait(a, 60), 0);
  cr_assert_eq(fl_test_metrics_rounds(f.metrics), 1);
  fl_test_fed_path(&f, "server.log", log, sizeof log);
  cr_assert(fl_test_sanitizer_clean(log), "sanitizer report in %s", log);
  fl_test_fed_path(&f, "wide.log", log, sizeof log);
  cr_assert(fl_test_sanitizer_clean(log), "sanitizer report in %s", log);
  fl_test_fed_free(&f);
}

#define CLIENT "--data {DIR}/fits.csv --ca {CERTS}/ca.crt "
#define C1 "--cert {CERTS}/client-0001.crt --key {CERTS}/client-0001.key "

/* A certificate refused by either side is reported at once, with what to do, and the
 * client exits: no retrying for minutes.  The server goes on serving. */
Test(failfast, refused_certificates_are_reported_at_once, .timeout = 240) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  write_csvs(f.dir);
  const char *x = fl_test_extra_certs();
  char crl[1100], port[16];
  snprintf(crl, sizeof crl, "%s/crl.pem", x);
  snprintf(port, sizeof port, "%d", f.port);
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--model", "logreg:3:2", "--rounds", "1",
                                     "--crl", crl, NULL);
  cr_assert_gt(s, 0);
  static const bad_input table[] = {
      {"fl-client", "--server 127.0.0.1:{PORT} " CLIENT C1, 1,
       "does not carry the name '127.0.0.1'"},
      {"fl-client", "--server 127.0.0.1:{PORT} " CLIENT C1, 1, "pass --server-name"},
      {"fl-client", "--server 127.0.0.1:{PORT} --server-name elsewhere.example " CLIENT C1, 1,
       "does not carry the name 'elsewhere.example'"},
      {"fl-client", "--server localhost:{PORT} " CLIENT
       "--cert {X}/revoked.crt --key {X}/revoked.key", 1,
       "the server refuses this client's certificate: it is revoked"},
      {"fl-client", "--server localhost:{PORT} " CLIENT
       "--cert {X}/expired.crt --key {X}/expired.key", 1, "it has expired"},
      {"fl-client", "--server localhost:{PORT} " CLIENT
       "--cert {X}/other/client-0001.crt --key {X}/other/client-0001.key", 1,
       "not signed by the server's CA"},
      {"fl-client", "--server localhost:{PORT} --data {DIR}/fits.csv --ca {X}/other/ca.crt " C1, 1,
       "not signed by the CA given (--ca)"},
  };
  const char *vars[] = {"PORT", port, "X", x, NULL};
  run_table(table, sizeof table / sizeof *table, f.dir, vars);
  cr_assert(fl_test_running(s), "the server did not survive the refused clients");
  kill(s, SIGTERM);
  cr_assert_eq(fl_test_wait(s, 30), 0);
  cr_assert(fl_test_sanitizer_clean(f.log), "sanitizer report in %s", f.log);
  fl_test_fed_free(&f);
}

/* Files that cannot be read are named with the system's reason; outputs that cannot be
 * written are refused before the server listens. */
Test(failfast, unreadable_files_named_with_the_reason, .timeout = 120) {
  char *dir = fl_test_tmpdir();
  static const bad_input table[] = {
      {"fl-server", "--listen 127.0.0.1:0 " TLS_ARGS " --ca {DIR}/none/ca.crt", 1,
       "CA file '{DIR}/none/ca.crt': No such file or directory"},
      {"fl-server", "--listen 127.0.0.1:0 " TLS_ARGS " --cert {DIR}/none.crt", 1,
       "certificate file '{DIR}/none.crt': No such file or directory"},
      {"fl-server", "--listen 127.0.0.1:0 " TLS_ARGS " --key {DIR}", 1,
       "key file '{DIR}': Is a directory"},
      {"fl-server", "--listen 127.0.0.1:0 " TLS_ARGS " --crl {DIR}/crl.pem", 1,
       "CRL file '{DIR}/crl.pem': No such file or directory"},
      {"fl-server", "--listen 127.0.0.1:0 " TLS_ARGS " --metrics {DIR}/no/m.jsonl", 1,
       "--metrics {DIR}/no/m.jsonl: cannot open for appending: No such file or directory"},
      {"fl-server", "--listen 127.0.0.1:0 " TLS_ARGS " --out {DIR}/no/model.bin", 1,
       "--out {DIR}/no/model.bin: directory {DIR}/no: No such file or directory"},
      {"fl-server", "--listen nosuch.invalid:0 " TLS_ARGS " --out {DIR}/m.bin", 1,
       "cannot listen on 'nosuch.invalid'"},
      {"fl-client", "--server localhost:1 --data {DIR}/none.csv --ca {CERTS}/ca.crt", 1,
       "{DIR}/none.csv: cannot open: No such file or directory"},
  };
  /* The expected text has {DIR} too. */
  bad_input t[sizeof table / sizeof *table];
  char says[sizeof table / sizeof *table][1024];
  const char *vars[] = {"DIR", dir, NULL};
  for (size_t i = 0; i < sizeof table / sizeof *table; i++) {
    t[i] = table[i];
    expand(says[i], sizeof says[i], table[i].says, vars);
    t[i].says = says[i];
  }
  run_table(t, sizeof t / sizeof *t, dir, NULL);
  free(dir);
}

/* --listen and --server take host names. */
Test(failfast, host_names_resolve, .timeout = 240) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  write_csvs(f.dir);
  char fits[700], addr[64];
  fl_test_fed_path(&f, "fits.csv", fits, sizeof fits);
  snprintf(addr, sizeof addr, "localhost:%d", f.port);
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--listen", addr, "--model", "logreg:3:2",
                                     "--rounds", "1", "--clients-per-round", "1", NULL);
  cr_assert_gt(s, 0, "the server does not listen on %s", addr);
  pid_t c = fl_test_fed_clients(&f, "client.log", "--server", addr, "--clients", "1", "--data",
                                fits, NULL);
  cr_assert_eq(fl_test_wait(s, 120), 0);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  fl_test_fed_free(&f);
}

/* A new run does not start over the checkpoint of an earlier one unless told to; each
 * run's metrics lines carry its own run identifier; a server stopped before its first
 * round says there is nothing to resume. */
Test(failfast, checkpoint_runs_and_stops, .timeout = 240) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  write_csvs(f.dir);
  char fits[700], log[700];
  fl_test_fed_path(&f, "fits.csv", fits, sizeof fits);

  /* Stopped before round 1: no checkpoint is written, and none is claimed. */
  pid_t s = fl_test_fed_server_ready(&f, "stopped.log", "--model", "logreg:3:2", NULL);
  cr_assert_gt(s, 0);
  kill(s, SIGTERM);
  cr_assert_eq(fl_test_wait(s, 30), 0);
  fl_test_fed_path(&f, "stopped.log", log, sizeof log);
  cr_assert(fl_test_count(log, "no checkpoint was written"));
  /* (and it said that its rounds may start with fewer clients than they select) */
  cr_assert(fl_test_count(log, "--clients-per-round 10 with --min-clients 1: a round starts as "
                               "soon as 1 client is ready"));
  cr_assert_eq(fl_test_count(log, "restart with --resume"), 0);

  /* A run of one round: its checkpoint stays. */
  const char *run[] = {"--model", "logreg:3:2", "--rounds", "1", "--clients-per-round", "1"};
  s = fl_test_fed_server_ready(&f, "run1.log", run[0], run[1], run[2], run[3], run[4], run[5], NULL);
  pid_t c = fl_test_fed_clients(&f, "c1.log", "--clients", "1", "--data", fits, NULL);
  cr_assert_eq(fl_test_wait(s, 120), 0);
  cr_assert_eq(fl_test_wait(c, 60), 0);

  /* A second run over it is refused, with both ways out. */
  s = fl_test_fed_server(&f, "run2.log", run[0], run[1], run[2], run[3], run[4], run[5], NULL);
  cr_assert_eq(fl_test_wait(s, 30), 1);
  fl_test_fed_path(&f, "run2.log", log, sizeof log);
  cr_assert(fl_test_count(log, "exists: an earlier run was here; continue it with --resume, "
                               "or start a new run over it with --force"));

  /* --force starts over; the metrics file now holds two runs, told apart. */
  s = fl_test_fed_server_ready(&f, "run3.log", run[0], run[1], run[2], run[3], run[4], run[5],
                               "--force", NULL);
  cr_assert_gt(s, 0);
  c = fl_test_fed_clients(&f, "c3.log", "--clients", "1", "--data", fits, NULL);
  cr_assert_eq(fl_test_wait(s, 120), 0);
  cr_assert_eq(fl_test_wait(c, 60), 0);
  char *m = fl_test_read_file(f.metrics, NULL);
  cr_assert_not_null(m);
  char *nl = strchr(m, '\n');
  cr_assert(nl && strchr(nl + 1, '\n'), "expected two lines:\n%s", m);
  const char *r1 = strstr(m, "\"run\":\""), *r2 = strstr(nl + 1, "\"run\":\"");
  cr_assert(r1 && r2 && r1 < nl, "a line without its run:\n%s", m);
  cr_assert_neq(strncmp(r1, r2, strcspn(r1 + 7, "\"") + 7), 0, "two runs, one identifier:\n%s", m);
  free(m);
  fl_test_fed_free(&f);
}

/* `make install` into a stage (the Makefile's, DESTDIR) holds a man page for every
 * binary, the server's systemd unit and the client's template unit naming the installed
 * binaries, and example configurations whose paths are those of the install; `make
 * uninstall` with the same DESTDIR leaves nothing of it behind. */
Test(failfast, staged_install_and_uninstall, .timeout = 120) {
  const char *stage = getenv("FL_STAGE") ? getenv("FL_STAGE") : "build/stage";
  const char *prefix = getenv("FL_PREFIX") ? getenv("FL_PREFIX") : "/usr/local";
  char p[2048], cmd[8192];
  const char *bins[] = {"fl-server", "fl-client", "fl-train"};
  for (int i = 0; i < 3; i++) {
    snprintf(cmd, sizeof cmd, "man -l %s%s/share/man/man1/%s.1 2>/dev/null | grep -q -- "
             "--config", stage, prefix, bins[i]);
    cr_assert_eq(fl_test_system(cmd), 0, "no man page for %s documenting --config", bins[i]);
  }
  const char *more[] = {"fl-predict", "fl-export", "fl-plot"};
  for (int i = 0; i < 3; i++) {
    snprintf(cmd, sizeof cmd, "man -l %s%s/share/man/man1/%s.1 2>/dev/null | grep -q '^NAME'",
             stage, prefix, more[i]);
    cr_assert_eq(fl_test_system(cmd), 0, "no man page for %s", more[i]);
  }
  snprintf(p, sizeof p, "%s%s/lib/systemd/system/fl-server.service", stage, prefix);
  snprintf(cmd, sizeof cmd, "ExecStart=%s/bin/fl-server", prefix);
  cr_assert(fl_test_count(p, cmd), "%s does not start the installed fl-server", p);
  cr_assert(fl_test_count(p, "ExecReload="), "%s cannot be reloaded", p);
  snprintf(p, sizeof p, "%s%s/lib/systemd/system/fl-client@.service", stage, prefix);
  snprintf(cmd, sizeof cmd, "ExecStart=%s/bin/fl-client --config", prefix);
  cr_assert(fl_test_count(p, cmd) && fl_test_count(p, "%i"), "%s is no template of fl-client", p);
  snprintf(p, sizeof p, "%s%s/share/fl/examples/server.ini", stage, prefix);
  cr_assert(fl_test_count(p, "ca = /etc/fl/certs/ca.crt"), "%s names no installed CA", p);
  /* The installed example is read as it is (here: up to its missing CA). */
  snprintf(cmd, sizeof cmd, "timeout 30 %s/fl-server --config %s --listen 127.0.0.1:0 2>&1 | "
           "grep -q \"CA file '/etc/fl/certs/ca.crt'\"", fl_test_bin_dir(), p);
  cr_assert_eq(fl_test_system(cmd), 0, "the installed server.ini is not read as installed");

  char *copy = fl_test_tmpdir();
  snprintf(cmd, sizeof cmd, "cp -a %s/. %s/ && make -s -C %s uninstall DESTDIR=%s PREFIX=%s "
           "NO_DEPS=1 >/dev/null 2>&1", stage, copy, fl_test_src_dir(), copy, prefix);
  cr_assert_eq(fl_test_system(cmd), 0, "make uninstall failed");
  snprintf(cmd, sizeof cmd, "test -z \"$(find %s \\( -type f -o -type l \\) ! -name .installed)\"", copy);
  cr_assert_eq(fl_test_system(cmd), 0, "make uninstall left files in %s", copy);
  free(copy);
}

/* Revocation over a deployment's life: certs/gen.sh --revoke writes the CRL, SIGHUP makes
 * fl-server reload it (with its certificate and key), the revoked client still connected
 * is disconnected and, refused when it comes back, exits at once saying so; the healthy
 * one stays connected, and new clients are accepted under the reloaded files. */
Test(failfast, revoke_and_sighup, .timeout = 240) {
  fl_test_fed f;
  fl_test_fed_init(&f);
  write_csvs(f.dir);
  char certs[700], gen[1024], cmd[4096], fits[700];
  fl_test_fed_path(&f, "certs", certs, sizeof certs);
  fl_test_fed_path(&f, "fits.csv", fits, sizeof fits);
  snprintf(gen, sizeof gen, "%s/certs/gen.sh", fl_test_src_dir());
  snprintf(cmd, sizeof cmd, "%s --quiet --out %s --clients 4 && %s --quiet --out %s --crl", gen,
           certs, gen, certs);
  cr_assert_eq(fl_test_system(cmd), 0);
  char ca[800], crt[800], key[800], crl[800];
  snprintf(ca, sizeof ca, "%s/ca.crt", certs);
  snprintf(crt, sizeof crt, "%s/server.crt", certs);
  snprintf(key, sizeof key, "%s/server.key", certs);
  snprintf(crl, sizeof crl, "%s/crl.pem", certs);
  pid_t s = fl_test_fed_server_ready(&f, "server.log", "--ca", ca, "--cert", crt, "--key", key,
                                     "--crl", crl, "--model", "logreg:3:2", "--rounds", "1",
                                     "--clients-per-round", "3", "--min-clients", "3", NULL);
  cr_assert_gt(s, 0);
  char c[4][800], k[4][800];
  for (int i = 0; i < 4; i++) {
    snprintf(c[i], sizeof c[i], "%s/client-%04d.crt", certs, i + 1);
    snprintf(k[i], sizeof k[i], "%s/client-%04d.key", certs, i + 1);
  }
  /* client-0001 and client-0002 connect; the round waits for a third client. */
  pid_t a = fl_test_fed_clients(&f, "c1.log", "--ca", ca, "--cert", c[0], "--key", k[0],
                                "--data", fits, NULL);
  pid_t b = fl_test_fed_clients(&f, "c2.log", "--ca", ca, "--cert", c[1], "--key", k[1],
                                "--data", fits, NULL);
  cr_assert(fl_test_wait_for(f.log, "client-0001 ready", 60));
  cr_assert(fl_test_wait_for(f.log, "client-0002 ready", 60));

  snprintf(cmd, sizeof cmd, "%s --quiet --out %s --revoke client-0002", gen, certs);
  cr_assert_eq(fl_test_system(cmd), 0);
  kill(s, SIGHUP);
  cr_assert(fl_test_wait_for(f.log, "SIGHUP: reloaded", 30));
  cr_assert(fl_test_count(f.log, "client-0002 (") &&
            fl_test_count(f.log, "its certificate is revoked"));
  int rc = fl_test_wait(b, 60);
  char clog[700];
  fl_test_fed_path(&f, "c2.log", clog, sizeof clog);
  cr_assert(rc != 0 && rc != -1, "the revoked client exited %d", rc);
  cr_assert(fl_test_count(clog, "the server refuses this client's certificate: it is revoked"));

  /* client-0001 stayed connected; two more are accepted under the reloaded files, and
   * the three complete the run. */
  cr_assert_eq(fl_test_count(f.log, "client-0001 (127.0.0.1"), 0, "client-0001 was disconnected");
  pid_t d = fl_test_fed_clients(&f, "c3.log", "--ca", ca, "--cert", c[2], "--key", k[2],
                                "--data", fits, NULL);
  pid_t e = fl_test_fed_clients(&f, "c4.log", "--ca", ca, "--cert", c[3], "--key", k[3],
                                "--data", fits, NULL);
  cr_assert_eq(fl_test_wait(s, 120), 0);
  cr_assert_eq(fl_test_wait(a, 60), 0);
  cr_assert_eq(fl_test_wait(d, 60), 0);
  cr_assert_eq(fl_test_wait(e, 60), 0);
  cr_assert_eq(fl_test_count(f.log, "client-0001 connected from"), 1, "client-0001 reconnected");
  cr_assert(fl_test_sanitizer_clean(f.log), "sanitizer report in %s", f.log);
  cr_assert(fl_test_sanitizer_clean(clog), "sanitizer report in %s", clog);
  fl_test_fed_free(&f);
}
