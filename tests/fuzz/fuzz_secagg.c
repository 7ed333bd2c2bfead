/* libFuzzer target for secure aggregation's untrusted bytes (common/secagg.c, agree.c):
 * one of four clients is the fuzzer.  Its public keys, the sealed shares it addresses to
 * the three honest clients, its masked input and the shares it reveals all come from the
 * input; the honest clients and the server run the real state machines around it, as
 * fl-server and libflclient do (a key the server's check refuses leaves the client out).
 * Every call must return one of its documented codes; the sanitizers catch the rest.
 *
 *   make fuzz FUZZ_SECONDS=60 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agree.h"
#include "error.h"
#include "secagg.h"

#define N 4
#define BAD (N - 1) /* the fuzzer's client */
#define DIM 8

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

typedef struct cursor {
  const uint8_t *p;
  size_t n;
} cursor;

/* The next len bytes of the input, zeros once it runs out. */
static void take(cursor *c, uint8_t *out, size_t len) {
  size_t k = c->n < len ? c->n : len;
  memcpy(out, c->p, k);
  memset(out + k, 0, len - k);
  c->p += k;
  c->n -= k;
}

static uint8_t take_byte(cursor *c) {
  uint8_t b;
  take(c, &b, 1);
  return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cursor in = {data, size};
  char err[256];
  fl_secagg_params p = {.round = 7, .n = N, .threshold = 3, .neighbors = N - 1, .bits = 16,
                        .dim = DIM};
  uint8_t c_pub[N][32], s_pub[N][32], have[N] = {0};
  fl_secagg_client *c[N] = {0};
  fl_secagg_server *srv = NULL;
  uint8_t *sealed = calloc((size_t)N * N, FL_SECAGG_SEALED); /* [from][to] */
  uint8_t *to_me = calloc(N, FL_SECAGG_SEALED);
  uint8_t *shares = calloc(N, FL_SECAGG_SHARE_BYTES);
  CHECK(sealed && to_me && shares);
  CHECK(fl_secagg_server_new(&p, &srv, err, sizeof err) == 0);

  /* Stage 0: keys; the server forwards only keys that pass its check. */
  for (uint32_t u = 0; u < BAD; u++)
    CHECK(fl_secagg_client_new(&p, u, &c[u], c_pub[u], s_pub[u], err, sizeof err) == 0);
  take(&in, c_pub[BAD], 32);
  take(&in, s_pub[BAD], 32);
  for (uint32_t u = 0; u < N; u++) {
    have[u] = u != BAD || (fl_x25519_check(c_pub[u]) == 0 && fl_x25519_check(s_pub[u]) == 0);
    if (have[u]) CHECK(fl_secagg_server_keys(srv, u, c_pub[u], s_pub[u]) == 0);
  }

  /* Stage 1: shares; the fuzzer's are its bytes. */
  uint8_t in_u2[N];
  for (uint32_t u = 0; u < N; u++) {
    uint8_t to[N] = {0};
    in_u2[u] = have[u];
    if (u == BAD) {
      for (uint32_t v = 0; v < N; v++) take(&in, sealed + ((size_t)u * N + v) * FL_SECAGG_SEALED, FL_SECAGG_SEALED);
      continue;
    }
    uint8_t *mine = calloc(N, FL_SECAGG_SEALED);
    CHECK(mine);
    int rc = fl_secagg_client_shares(c[u], (const uint8_t(*)[32])c_pub, (const uint8_t(*)[32])s_pub,
                                     have, mine, to, err, sizeof err);
    CHECK(rc == 0);
    for (uint32_t v = 0; v < N; v++)
      if (to[v]) memcpy(sealed + ((size_t)u * N + v) * FL_SECAGG_SEALED, mine + (size_t)v * FL_SECAGG_SEALED, FL_SECAGG_SEALED);
    free(mine);
  }
  CHECK(fl_secagg_server_set_u2(srv, in_u2) == 0);

  /* Stage 2: each honest client takes the shares addressed to it, then masks its input. */
  for (uint32_t v = 0; v < BAD; v++) {
    for (uint32_t u = 0; u < N; u++)
      memcpy(to_me + (size_t)u * FL_SECAGG_SEALED, sealed + ((size_t)u * N + v) * FL_SECAGG_SEALED, FL_SECAGG_SEALED);
    uint8_t bad[N] = {0};
    int rc = fl_secagg_client_take_shares(c[v], in_u2, to_me, bad, err, sizeof err);
    CHECK(rc == 0 || rc == FL_EPROTO || rc == FL_ESTATE);
    if (rc) goto out;
    for (uint32_t u = 0; u < BAD; u++) CHECK(!bad[u]); /* honest shares always open */
    uint32_t x[DIM];
    for (uint32_t j = 0; j < DIM; j++) x[j] = v + j;
    CHECK(fl_secagg_client_mask(c[v], x, err, sizeof err) == 0);
    if (take_byte(&in) & 1) continue; /* this honest client drops before its input */
    CHECK(fl_secagg_server_input(srv, v, 0, x, DIM) == 0);
    CHECK(fl_secagg_server_input_done(srv, v) == 0);
  }
  if (have[BAD]) {
    uint32_t y[DIM];
    take(&in, (uint8_t *)y, sizeof y);
    uint8_t off = take_byte(&in);
    int rc = fl_secagg_server_input(srv, BAD, off % DIM, y, DIM - off % DIM);
    CHECK(rc == 0 || rc == FL_ESTATE || rc == FL_EINVAL);
    if (rc == 0) CHECK(fl_secagg_server_input_done(srv, BAD) == 0);
  }

  /* Stage 3: the survivors reveal; the fuzzer reveals what it likes. */
  const uint8_t *u3 = fl_secagg_server_u3(srv);
  for (uint32_t v = 0; v < N; v++) {
    if (!u3[v]) continue;
    uint8_t kind[N] = {0};
    if (v == BAD) {
      for (uint32_t u = 0; u < N; u++) kind[u] = take_byte(&in) % 4;
      take(&in, shares, (size_t)N * FL_SECAGG_SHARE_BYTES);
    } else {
      int rc = fl_secagg_client_reveal(c[v], u3, kind, shares, err, sizeof err);
      CHECK(rc == 0 || rc == FL_EREFUSED);
      if (rc) continue;
    }
    int rc = fl_secagg_server_reveal(srv, v, kind, shares);
    CHECK(rc == 0 || rc == FL_EINVAL || rc == FL_EFORMAT || rc == FL_ESTATE);
  }
  uint32_t sum[DIM];
  int rc = fl_secagg_server_unmask(srv, sum, err, sizeof err);
  CHECK(rc == 0 || rc == FL_ESTATE || rc == FL_EFORMAT);

out:
  for (uint32_t u = 0; u < BAD; u++) fl_secagg_client_free(c[u]);
  fl_secagg_server_free(srv);
  free(sealed);
  free(to_me);
  free(shares);
  return 0;
}
