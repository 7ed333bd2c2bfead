/* Secure aggregation's state machines (common/secagg.c), with n clients and the server in
 * this process: the unmasked sum is exactly the sum of the survivors' inputs, with and
 * without dropouts at every stage, for plain SecAgg and SecAgg+; more dropouts than the
 * threshold allows fail cleanly; a masked input looks uniform whatever the input; a client
 * never reveals both shares of one peer; altered shares do not open; fixed point fits. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "rng.h"
#include "secagg.h"

#define DIM 1000

typedef struct sim {
  fl_secagg_params p;
  fl_secagg_client **c;
  fl_secagg_server *s;
  uint8_t (*cpub)[32], (*spub)[32];
  uint8_t *have, *u2, *sealed_by;     /* sealed_by[u * n * SEALED + v * SEALED] */
  uint32_t **x;                       /* inputs */
} sim;

/* drop[u]: the stage before which client u drops (0: keys ... 4: reveal), 5: never. */
static int run(uint32_t n, uint32_t k, uint32_t t, uint32_t bits, const int *drop, uint32_t *sum,
               uint32_t *want, char *err) {
  sim m;
  memset(&m, 0, sizeof m);
  m.p = (fl_secagg_params){.round = 77, .n = n, .threshold = t, .neighbors = k, .bits = bits, .dim = DIM};
  for (int i = 0; i < 32; i++) m.p.graph_seed[i] = (uint8_t)(i * 3 + 1);
  uint32_t keep = bits == 32 ? 0xffffffffu : 0xffffu;
  m.c = calloc(n, sizeof *m.c);
  m.cpub = calloc(n, 32);
  m.spub = calloc(n, 32);
  m.have = calloc(n, 1);
  m.u2 = calloc(n, 1);
  m.sealed_by = calloc((size_t)n * n, FL_SECAGG_SEALED);
  m.x = calloc(n, sizeof *m.x);
  cr_assert_eq(fl_secagg_server_new(&m.p, &m.s, err, 256), 0, "%s", err);
  fl_rng r;
  fl_rng_seed(&r, 5);
  memset(want, 0, DIM * sizeof *want);
  /* 0: keys */
  for (uint32_t u = 0; u < n; u++) {
    m.x[u] = malloc(DIM * sizeof **m.x);
    for (int i = 0; i < DIM; i++) m.x[u][i] = (uint32_t)fl_rng_below(&r, 1ULL << 32) & keep;
    if (drop[u] <= 0) continue;
    cr_assert_eq(fl_secagg_client_new(&m.p, u, &m.c[u], m.cpub[u], m.spub[u], err, 256), 0, "%s", err);
    cr_assert_eq(fl_secagg_server_keys(m.s, u, m.cpub[u], m.spub[u]), 0);
    m.have[u] = 1;
  }
  /* 1: shares (the server relays each sealed pair to its addressee) */
  uint8_t *to = malloc(n);
  uint8_t *sealed = malloc((size_t)n * FL_SECAGG_SEALED);
  for (uint32_t u = 0; u < n; u++) {
    if (drop[u] <= 1) continue;
    int rc = fl_secagg_client_shares(m.c[u], (const uint8_t(*)[32])m.cpub, (const uint8_t(*)[32])m.spub,
                                     m.have, sealed, to, err, 256);
    if (rc) return rc;
    m.u2[u] = 1;
    for (uint32_t v = 0; v < n; v++)
      if (to[v]) memcpy(m.sealed_by + ((size_t)v * n + u) * FL_SECAGG_SEALED,
                        sealed + (size_t)v * FL_SECAGG_SEALED, FL_SECAGG_SEALED);
  }
  fl_secagg_server_set_u2(m.s, m.u2);
  /* 2: masked inputs */
  for (uint32_t u = 0; u < n; u++) {
    if (drop[u] <= 2) continue;
    cr_assert_eq(fl_secagg_client_take_shares(m.c[u], m.u2, m.sealed_by + (size_t)u * n * FL_SECAGG_SEALED,
                                              NULL, err, 256), 0, "%s", err);
    uint32_t *y = malloc(DIM * sizeof *y);
    memcpy(y, m.x[u], DIM * sizeof *y);
    cr_assert_eq(fl_secagg_client_mask_part(m.c[u], 0, y, 400, err, 256), 0, "%s", err);
    cr_assert_eq(fl_secagg_client_mask_part(m.c[u], 400, y + 400, DIM - 400, err, 256), 0);
    cr_assert_eq(fl_secagg_server_input(m.s, u, 0, y, 600), 0);
    cr_assert_eq(fl_secagg_server_input(m.s, u, 600, y + 600, DIM - 600), 0);
    cr_assert_eq(fl_secagg_server_input_done(m.s, u), 0);
    for (int i = 0; i < DIM; i++) want[i] = (want[i] + m.x[u][i]) & keep;
    free(y);
  }
  /* 3: unmasking */
  const uint8_t *u3 = fl_secagg_server_u3(m.s);
  uint8_t *kind = malloc(n), *share = malloc((size_t)n * FL_SECAGG_SHARE_BYTES);
  for (uint32_t v = 0; v < n; v++) {
    if (drop[v] <= 3 || !u3[v]) continue;
    int rc = fl_secagg_client_reveal(m.c[v], u3, kind, share, err, 256);
    if (rc == 0) fl_secagg_server_reveal(m.s, v, kind, share);
  }
  int rc = fl_secagg_server_unmask(m.s, sum, err, 256);
  for (uint32_t u = 0; u < n; u++) {
    fl_secagg_client_free(m.c[u]);
    free(m.x[u]);
  }
  fl_secagg_server_free(m.s);
  free(m.c), free(m.cpub), free(m.spub), free(m.have), free(m.u2), free(m.sealed_by), free(m.x);
  free(to), free(sealed), free(kind), free(share);
  return rc;
}

static void check(uint32_t n, uint32_t k, uint32_t t, uint32_t bits, const int *drop) {
  static uint32_t sum[DIM], want[DIM];
  char err[256] = "";
  int rc = run(n, k, t, bits, drop, sum, want, err);
  cr_assert_eq(rc, 0, "n %u k %u t %u: %s", n, k, t, err);
  cr_assert(memcmp(sum, want, sizeof sum) == 0, "n %u k %u t %u: the unmasked sum differs", n, k, t);
}

Test(secagg, sum_without_dropouts) {
  int none[40];
  for (int i = 0; i < 40; i++) none[i] = 5;
  check(8, 7, 5, 32, none);   /* plain SecAgg */
  check(8, 7, 5, 16, none);
  check(40, 8, 5, 32, none);  /* SecAgg+: 8 neighbours of 40 */
}

Test(secagg, dropouts_at_every_stage) {
  /* 12 clients, all neighbours, threshold 7: up to 5 may drop, some at each stage. */
  int drop[12] = {5, 0, 5, 1, 5, 2, 5, 3, 5, 3, 5, 5};
  check(12, 11, 7, 32, drop);
  /* SecAgg+: 30 clients, 10 neighbours, threshold 6, a few dropping at each stage. */
  int d2[30];
  for (int i = 0; i < 30; i++) d2[i] = i % 7 == 3 ? i % 4 : 5;
  check(30, 10, 6, 32, d2);
}

Test(secagg, too_many_dropouts_fail_cleanly) {
  /* 6 of 10 drop after sharing, threshold 6: the survivors hold 4 shares of each secret. */
  int drop[10] = {5, 5, 5, 5, 2, 2, 2, 2, 2, 2};
  static uint32_t sum[DIM], want[DIM];
  char err[256] = "";
  int rc = run(10, 9, 6, 32, drop, sum, want, err);
  cr_assert(rc == FL_ESTATE || rc == FL_EREFUSED, "rc %d: %s", rc, err);
}

Test(secagg, masked_inputs_look_uniform) {
  /* Two very different inputs (all zeros, all the same large value): the bytes of their
   * masked versions both pass a chi-square test of uniformity over 256 byte values. */
  fl_secagg_params p = {.round = 3, .n = 3, .threshold = 2, .neighbors = 2, .bits = 32, .dim = 20000};
  fl_secagg_client *c[3];
  uint8_t cp[3][32], sp[3][32], have[3] = {1, 1, 1}, u2[3] = {1, 1, 1}, to[3];
  uint8_t sealed[3][3 * FL_SECAGG_SEALED], box[3][3 * FL_SECAGG_SEALED];
  char err[256];
  for (int u = 0; u < 3; u++) cr_assert_eq(fl_secagg_client_new(&p, (uint32_t)u, &c[u], cp[u], sp[u], err, 256), 0);
  for (int u = 0; u < 3; u++) {
    cr_assert_eq(fl_secagg_client_shares(c[u], (const uint8_t(*)[32])cp, (const uint8_t(*)[32])sp, have,
                                         sealed[u], to, err, 256), 0, "%s", err);
    for (int v = 0; v < 3; v++)
      memcpy(box[v] + u * FL_SECAGG_SEALED, sealed[u] + v * FL_SECAGG_SEALED, FL_SECAGG_SEALED);
  }
  for (int u = 0; u < 3; u++) cr_assert_eq(fl_secagg_client_take_shares(c[u], u2, box[u], NULL, err, 256), 0, "%s", err);
  static uint32_t y[20000];
  for (int input = 0; input < 2; input++) {
    for (int i = 0; i < 20000; i++) y[i] = input ? 0x7fffffffu : 0;
    cr_assert_eq(fl_secagg_client_mask(c[input], y, err, 256), 0);
    double count[256] = {0}, chi = 0, e = 80000.0 / 256;
    const uint8_t *b = (const uint8_t *)y;
    for (int i = 0; i < 80000; i++) count[b[i]]++;
    for (int v = 0; v < 256; v++) chi += (count[v] - e) * (count[v] - e) / e;
    /* 255 degrees of freedom: the 0.9999 quantile is about 350. */
    cr_assert_lt(chi, 350, "input %d: chi-square %.1f", input, chi);
  }
  for (int u = 0; u < 3; u++) fl_secagg_client_free(c[u]);
}

Test(secagg, a_client_never_reveals_both_shares) {
  fl_secagg_params p = {.round = 9, .n = 4, .threshold = 2, .neighbors = 3, .bits = 32, .dim = 10};
  fl_secagg_client *c[4];
  uint8_t cp[4][32], sp[4][32], have[4] = {1, 1, 1, 1}, u2[4] = {1, 1, 1, 1}, to[4];
  uint8_t sealed[4][4 * FL_SECAGG_SEALED], box[4][4 * FL_SECAGG_SEALED];
  char err[256];
  for (int u = 0; u < 4; u++) cr_assert_eq(fl_secagg_client_new(&p, (uint32_t)u, &c[u], cp[u], sp[u], err, 256), 0);
  for (int u = 0; u < 4; u++) {
    cr_assert_eq(fl_secagg_client_shares(c[u], (const uint8_t(*)[32])cp, (const uint8_t(*)[32])sp, have,
                                         sealed[u], to, err, 256), 0);
    for (int v = 0; v < 4; v++)
      memcpy(box[v] + u * FL_SECAGG_SEALED, sealed[u] + v * FL_SECAGG_SEALED, FL_SECAGG_SEALED);
  }
  /* An altered share does not open: left out and named, nothing else changes. */
  uint8_t altered[4 * FL_SECAGG_SEALED], bad[4];
  memcpy(altered, box[0], sizeof altered);
  altered[1 * FL_SECAGG_SEALED + 5] ^= 1;
  cr_assert_eq(fl_secagg_client_take_shares(c[0], u2, altered, bad, err, 256), 0, "%s", err);
  cr_assert(bad[1] && !bad[2] && !bad[3]);
  uint8_t kind[4], share[4 * FL_SECAGG_SHARE_BYTES];
  uint8_t all[4] = {1, 1, 1, 1}, without3[4] = {1, 1, 1, 0};
  cr_assert_eq(fl_secagg_client_reveal(c[0], all, kind, share, err, 256), 0, "%s", err);
  cr_assert_eq(kind[3], 1, "client 3 survived: its self-mask share");
  cr_assert_eq(kind[1], 0, "client 1's shares did not open: none of them is revealed");
  /* The server now claims client 3 dropped, to get its key share too: refused. */
  cr_assert_eq(fl_secagg_client_reveal(c[0], without3, kind, share, err, 256), FL_EREFUSED);
  cr_assert(strstr(err, "client 3's key share after its self-mask share"), "%s", err);
  for (int u = 0; u < 4; u++) fl_secagg_client_free(c[u]);
}

Test(secagg, fixed_point_fits) {
  double scale;
  char err[256];
  cr_assert_eq(fl_secagg_scale(32, 100, 1.0, 0, &scale, err, sizeof err), 0, "%s", err);
  /* 100 elements of magnitude up to scale + 1: their sum stays below 2^31, and the scale
   * leaves at most a few elements of room. */
  cr_assert_lt(100.0 * (scale + 1), ldexp(1.0, 31));
  cr_assert_gt(100.0 * (scale + 1) + 300, ldexp(1.0, 31));
  cr_assert_eq(fl_secagg_scale(16, 10, 1.0, 127, &scale, err, sizeof err), 0);
  cr_assert_eq(scale, 127); /* the int8 composition: 8 bits an element */
  cr_assert_eq(fl_secagg_scale(16, 500, 1.0, 127, &scale, err, sizeof err), 0);
  cr_assert_lt(500.0 * (scale + 1), 32768.0); /* fewer levels when 500 share 16 bits */
  cr_assert_eq(fl_secagg_scale(16, 40000, 1.0, 0, &scale, err, sizeof err), FL_EINVAL);
  cr_assert_eq(fl_secagg_decode(0xffffu, 16, 2.0), -0.5);
  cr_assert_eq(fl_secagg_decode(0x80000000u, 32, 1.0), -2147483648.0);
  cr_assert_eq(fl_secagg_decode(7, 32, 4.0), 1.75);
}
