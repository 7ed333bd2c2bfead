/* certs/gen.sh: every certificate chains to its CA, one from an unrelated CA does not,
 * private keys are 0600, a re-run keeps the CA unless --force is given and keeps the
 * server certificate's names unless others are given, and --revoke writes a CRL that
 * lists the revoked certificate (and openssl then refuses it). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "testutil.h"

static int sh(const char *fmt, const char *a, const char *b) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, fmt, a, b);
  return fl_test_system(cmd);
}

Test(certs, chain_and_foreign_ca, .timeout = 60) {
  char dir[] = "/tmp/fl-certs-XXXXXX", other[] = "/tmp/fl-certs-XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  cr_assert_not_null(mkdtemp(other));
  const char *src = fl_test_src_dir();
  char gen[1024];
  snprintf(gen, sizeof gen, "%s/certs/gen.sh", src);

  cr_assert_eq(sh("%s --quiet --out %s --clients 3 node7.example", gen, dir), 0);
  cr_assert_eq(sh("%s --quiet --out %s --clients 1", gen, other), 0);

  const char *names[] = {"server", "client-0001", "client-0002", "client-0003"};
  for (int i = 0; i < 4; i++) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "openssl verify -CAfile %s/ca.crt %s/%s.crt >/dev/null 2>&1",
             dir, dir, names[i]);
    cr_assert_eq(fl_test_system(cmd), 0, "%s does not chain to its CA", names[i]);
    char key[1024];
    snprintf(key, sizeof key, "%s/%s.key", dir, names[i]);
    struct stat st;
    cr_assert_eq(stat(key, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "%s has mode %o", key, st.st_mode & 0777);
  }
  /* The client's identity is its CN; the server names every host it was given. */
  cr_assert_eq(sh("openssl x509 -noout -subject -in %s/client-0002.crt | grep -q 'CN *= *client-0002'%s",
                  dir, ""), 0);
  cr_assert_eq(sh("openssl x509 -noout -text -in %s/server.crt | grep -q 'DNS:node7.example'%s",
                  dir, ""), 0);
  cr_assert_eq(sh("openssl x509 -noout -text -in %s/server.crt | grep -q 'IP Address:127.0.0.1'%s",
                  dir, ""), 0);

  /* A certificate from an unrelated CA must not verify. */
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "openssl verify -CAfile %s/ca.crt %s/client-0001.crt >/dev/null 2>&1",
           dir, other);
  cr_assert_neq(fl_test_system(cmd), 0, "a foreign certificate verified");

  /* Re-running keeps the CA; --force replaces it. */
  cr_assert_eq(sh("cp %s/ca.crt %s/ca.before", dir, dir), 0);
  cr_assert_eq(sh("%s --quiet --out %s --clients 1", gen, dir), 0);
  cr_assert_eq(sh("cmp -s %s/ca.crt %s/ca.before", dir, dir), 0, "re-run replaced the CA");
  cr_assert_eq(sh("%s --quiet --force --out %s --clients 1", gen, dir), 0);
  cr_assert_neq(sh("cmp -s %s/ca.crt %s/ca.before", dir, dir), 0, "--force kept the CA");

  sh("rm -rf %s %s", dir, other);
}

Test(certs, rerun_keeps_names_and_revoke_writes_a_crl, .timeout = 60) {
  char dir[] = "/tmp/fl-certs-XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  char gen[1024];
  snprintf(gen, sizeof gen, "%s/certs/gen.sh", fl_test_src_dir());
  cr_assert_eq(sh("%s --quiet --out %s --clients 2 node7.example 10.1.2.3", gen, dir), 0);
  /* Without host names: the names it had, not just localhost. */
  cr_assert_eq(sh("%s --quiet --out %s --clients 2", gen, dir), 0);
  cr_assert_eq(sh("openssl x509 -noout -text -in %s/server.crt | grep -q 'DNS:node7.example'%s",
                  dir, ""), 0, "a re-run dropped the server's host name");
  cr_assert_eq(sh("openssl x509 -noout -text -in %s/server.crt | grep -q 'IP Address:10.1.2.3'%s",
                  dir, ""), 0, "a re-run dropped the server's address");
  /* Other names given: those. */
  cr_assert_eq(sh("%s --quiet --out %s --clients 2 node8.example", gen, dir), 0);
  cr_assert_eq(sh("openssl x509 -noout -text -in %s/server.crt | grep -q 'DNS:node8.example'%s",
                  dir, ""), 0);
  cr_assert_neq(sh("openssl x509 -noout -text -in %s/server.crt | grep -q 'node7'%s", dir, ""), 0);

  /* --revoke: a CRL that openssl checks client-0002 against, and not client-0001. */
  cr_assert_eq(sh("%s --quiet --out %s --revoke client-0002", gen, dir), 0);
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "openssl verify -crl_check -CAfile %s/ca.crt -CRLfile %s/crl.pem "
           "%s/client-0002.crt >/dev/null 2>&1", dir, dir, dir);
  cr_assert_neq(fl_test_system(cmd), 0, "the revoked certificate verified");
  snprintf(cmd, sizeof cmd, "openssl verify -crl_check -CAfile %s/ca.crt -CRLfile %s/crl.pem "
           "%s/client-0001.crt >/dev/null 2>&1", dir, dir, dir);
  cr_assert_eq(fl_test_system(cmd), 0, "a certificate not revoked does not verify");
  /* Again: it says so and the CRL stays; an unknown name is refused. */
  cr_assert_eq(sh("%s --quiet --out %s --revoke client-0002", gen, dir), 0);
  cr_assert_neq(sh("%s --quiet --out %s --revoke client-0009 2>/dev/null", gen, dir), 0);
  sh("rm -rf %s%s", dir, "");
}

