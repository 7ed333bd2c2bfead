/* common/ticket.c: tickets open as sealed and not otherwise (every flipped byte, every
 * truncation), expire after their lifetime, keys rotate and the old one opens for one
 * more lifetime, and the key file keeps the keys across a restart, private, refusing
 * one that others may read and one that is corrupt.  Time is a clock of the test's. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "testutil.h"
#include "ticket.h"

static uint64_t clock_now;
static uint64_t test_clock(void *ctx) {
  (void)ctx;
  return clock_now;
}

/* Not random: a counter, so a failure reproduces. */
static int counter_rng(void *ctx, unsigned char *out, size_t len) {
  unsigned *n = ctx;
  for (size_t i = 0; i < len; i++) out[i] = (unsigned char)((*n)++ * 167u + 13u);
  return 0;
}

static unsigned rng_state;

static fl_ticket_keys *keys(const char *path, uint32_t lifetime) {
  fl_ticket_keys *k;
  char err[512] = "";
  int rc = fl_ticket_keys_create(path, lifetime, counter_rng, &rng_state, test_clock, NULL, &k,
                                 err, sizeof err);
  cr_assert_eq(rc, 0, "fl_ticket_keys_create: %s", err);
  return k;
}

static size_t seal(fl_ticket_keys *k, uint64_t start, const char *state, uint8_t *out) {
  size_t len;
  cr_assert_eq(fl_ticket_seal(k, start, (const uint8_t *)state, strlen(state), out, 512, &len), 0);
  cr_assert_eq(len, FL_TICKET_OVERHEAD + strlen(state));
  return len;
}

/* Opens a copy (opening decrypts in place). */
static int open_copy(fl_ticket_keys *k, const uint8_t *t, size_t len, char *state_out) {
  uint8_t buf[512];
  memcpy(buf, t, len);
  uint64_t start;
  uint8_t *state;
  size_t slen;
  int rc = fl_ticket_open(k, buf, len, &start, &state, &slen);
  if (rc == 0 && state_out) {
    memcpy(state_out, state, slen);
    state_out[slen] = 0;
  }
  return rc;
}

Test(ticket, opens_what_it_sealed_and_nothing_else) {
  clock_now = 1000000;
  fl_ticket_keys *k = keys(NULL, 3600);
  uint8_t t[512];
  size_t len = seal(k, clock_now - 5, "session state", t);
  char got[512];
  cr_assert_eq(open_copy(k, t, len, got), 0);
  cr_assert_str_eq(got, "session state");
  uint8_t buf[512];
  memcpy(buf, t, len);
  uint64_t start;
  uint8_t *state;
  size_t slen;
  cr_assert_eq(fl_ticket_open(k, buf, len, &start, &state, &slen), 0);
  cr_assert_eq(start, clock_now - 5);
  for (size_t i = 0; i < len; i++)
    for (int bit = 0; bit < 8; bit++) {
      memcpy(buf, t, len);
      buf[i] ^= (uint8_t)(1u << bit);
      cr_assert_eq(fl_ticket_open(k, buf, len, &start, &state, &slen), FL_EFORMAT,
                   "byte %zu bit %d flipped and the ticket still opened", i, bit);
    }
  for (size_t n = 0; n < len; n++)
    cr_assert_eq(open_copy(k, t, n, NULL), FL_EFORMAT, "truncated to %zu bytes", n);
  cr_assert_eq(fl_ticket_seal(k, clock_now, t, 100, t, FL_TICKET_OVERHEAD + 99, &len), FL_ETOOBIG);
  /* Another server's keys open none of ours. */
  fl_ticket_keys *other = keys(NULL, 3600);
  len = seal(k, clock_now, "x", t);
  cr_assert_eq(open_copy(other, t, len, NULL), FL_EFORMAT);
  fl_ticket_keys_free(other);
  fl_ticket_keys_free(k);
}

Test(ticket, expire_after_their_lifetime_from_the_full_handshake) {
  clock_now = 5000000;
  fl_ticket_keys *k = keys(NULL, 600);
  uint8_t t[512];
  size_t len = seal(k, clock_now, "s", t);
  clock_now += 600;
  cr_assert_eq(open_copy(k, t, len, NULL), 0, "valid for the whole lifetime");
  clock_now += 1;
  cr_assert_eq(open_copy(k, t, len, NULL), FL_ETIMEDOUT);
  /* A ticket re-sealed later for the same session keeps the session's start. */
  len = seal(k, clock_now - 601, "s", t);
  cr_assert_eq(open_copy(k, t, len, NULL), FL_ETIMEDOUT);
  /* A start in the future (a clock set back) opens nothing. */
  len = seal(k, clock_now + 10, "s", t);
  cr_assert_eq(open_copy(k, t, len, NULL), FL_ETIMEDOUT);
  fl_ticket_keys_free(k);
}

Test(ticket, keys_rotate_and_the_old_one_opens_one_lifetime_more) {
  clock_now = 7000000;
  const uint32_t life = 100;
  fl_ticket_keys *k = keys(NULL, life);
  uint8_t a[512], b[512];
  clock_now += life - 1;
  size_t alen = seal(k, clock_now, "a", a); /* the first key, at the end of its turn */
  clock_now += 1;
  size_t blen = seal(k, clock_now, "b", b); /* due: a new key */
  cr_assert_neq(memcmp(a, b, 4), 0, "the key name did not change at rotation");
  cr_assert_eq(open_copy(k, a, alen, NULL), 0, "the previous key must still open");
  clock_now += life - 1; /* the first key is 2 lifetimes - 1 old, a's session 1 lifetime */
  cr_assert_eq(open_copy(k, a, alen, NULL), 0);
  cr_assert_eq(open_copy(k, b, blen, NULL), 0);
  clock_now += 1;
  cr_assert_neq(open_copy(k, a, alen, NULL), 0, "a ticket of a key 2 lifetimes old opened");
  fl_ticket_keys_free(k);
}

Test(ticket, key_file_survives_a_restart_and_stays_private) {
  char *dir = fl_test_tmpdir();
  char path[600], err[512];
  snprintf(path, sizeof path, "%s/keys", dir);
  clock_now = 9000000;
  fl_ticket_keys *k = keys(path, 3600);
  struct stat st;
  cr_assert_eq(stat(path, &st), 0, "no key file written");
  cr_assert_eq(st.st_mode & 0777, 0600, "key file mode %o", st.st_mode & 0777);
  uint8_t t[512];
  size_t len = seal(k, clock_now, "kept", t);
  fl_ticket_keys_free(k);

  clock_now += 60; /* the restart */
  k = keys(path, 3600);
  char got[512];
  cr_assert_eq(open_copy(k, t, len, got), 0, "a restarted server must open its tickets");
  cr_assert_str_eq(got, "kept");
  fl_ticket_keys_free(k);

  /* Keys that a restart kept past two lifetimes are not used again. */
  clock_now += 2 * 3600;
  k = keys(path, 3600);
  cr_assert_eq(open_copy(k, t, len, NULL), FL_EFORMAT);
  fl_ticket_keys_free(k);

  fl_ticket_keys *bad = NULL;
  cr_assert_eq(chmod(path, 0644), 0);
  int rc = fl_ticket_keys_create(path, 3600, counter_rng, &rng_state, test_clock, NULL, &bad,
                                 err, sizeof err);
  cr_assert_eq(rc, FL_ECONFIG);
  cr_assert_null(bad);
  cr_assert(strstr(err, path) && strstr(err, "chmod 600"), "%s", err);

  cr_assert_eq(chmod(path, 0600), 0);
  FILE *f = fopen(path, "r+b");
  cr_assert_not_null(f);
  fseek(f, 20, SEEK_SET);
  fputc(0x55, f);
  fclose(f);
  rc = fl_ticket_keys_create(path, 3600, counter_rng, &rng_state, test_clock, NULL, &bad, err,
                             sizeof err);
  cr_assert_eq(rc, FL_ECHECKSUM, "%s", err);
  cr_assert(strstr(err, path), "%s", err);

  f = fopen(path, "wb");
  fputs("not keys", f);
  fclose(f);
  rc = fl_ticket_keys_create(path, 3600, counter_rng, &rng_state, test_clock, NULL, &bad, err,
                             sizeof err);
  cr_assert_eq(rc, FL_EFORMAT, "%s", err);

  snprintf(path, sizeof path, "%s/no/such/dir/keys", dir);
  rc = fl_ticket_keys_create(path, 3600, counter_rng, &rng_state, test_clock, NULL, &bad, err,
                             sizeof err);
  cr_assert_lt(rc, 0);
  cr_assert(strstr(err, path), "%s", err);
  cr_assert_eq(fl_ticket_keys_create(NULL, 0, counter_rng, &rng_state, NULL, NULL, &bad, err,
                                     sizeof err), FL_EINVAL);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  fl_test_system(cmd);
  free(dir);
}
