/* Secure aggregation's two sides (secagg.h). */
#include "secagg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "prg.h"
#include "rng.h"

/* ---- parameters and the neighbour graph ---- */

int fl_secagg_params_check(const fl_secagg_params *p, char *err, size_t errlen) {
  if (p->n < 2 || p->n > FL_SECAGG_MAX_N)
    return fl_errf(err, errlen, FL_EINVAL, "secure aggregation needs 2 to %d clients, not %u",
                   FL_SECAGG_MAX_N, p->n);
  if (p->neighbors < 1 || p->neighbors > p->n - 1)
    return fl_errf(err, errlen, FL_EINVAL, "%u neighbours among %u clients", p->neighbors, p->n);
  if (p->neighbors < p->n - 1 && p->neighbors % 2)
    return fl_errf(err, errlen, FL_EINVAL, "SecAgg+ needs an even number of neighbours, not %u",
                   p->neighbors);
  if (p->threshold < 1 || p->threshold > p->neighbors + 1)
    return fl_errf(err, errlen, FL_EINVAL, "threshold %u with %u neighbours (at most %u)",
                   p->threshold, p->neighbors, p->neighbors + 1);
  if (p->bits != 16 && p->bits != 32)
    return fl_errf(err, errlen, FL_EINVAL, "a ring of %u bits (16 or 32)", p->bits);
  if (p->dim == 0 || p->dim > (1ULL << 32))
    return fl_errf(err, errlen, FL_EINVAL, "inputs of %llu elements", (unsigned long long)p->dim);
  return 0;
}

/* The circulant graph's order: a permutation of 0..n-1 from the seed (Fisher-Yates). */
static void graph_order(const fl_secagg_params *p, uint32_t *perm, uint32_t *pos) {
  fl_rng r;
  uint64_t seed = 0;
  for (int i = 0; i < 8; i++) seed |= (uint64_t)p->graph_seed[i] << (8 * i);
  fl_rng_seed2(&r, seed, p->round);
  for (uint32_t i = 0; i < p->n; i++) perm[i] = i;
  for (uint32_t i = p->n - 1; i > 0; i--) {
    uint32_t j = (uint32_t)fl_rng_below(&r, (uint64_t)i + 1), t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  for (uint32_t i = 0; i < p->n; i++) pos[perm[i]] = i;
}

static int by_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

uint32_t fl_secagg_neighbors(const fl_secagg_params *p, uint32_t i, uint32_t *out) {
  uint32_t k = 0;
  if (p->neighbors >= p->n - 1) {
    for (uint32_t v = 0; v < p->n; v++)
      if (v != i) out[k++] = v;
    return k;
  }
  uint32_t *perm = malloc(2 * (size_t)p->n * sizeof *perm);
  if (!perm) return 0;
  uint32_t *pos = perm + p->n;
  graph_order(p, perm, pos);
  for (uint32_t d = 1; d <= p->neighbors / 2; d++) {
    out[k++] = perm[(pos[i] + d) % p->n];
    out[k++] = perm[(pos[i] + p->n - d) % p->n];
  }
  free(perm);
  qsort(out, k, sizeof *out, by_u32);
  return k;
}

/* ---- labels: everything derived is bound to the round and the pair ---- */

static size_t label(uint8_t *out, const char *what, uint64_t round, uint32_t a, uint32_t b) {
  size_t n = strlen(what);
  memcpy(out, what, n);
  for (int i = 0; i < 8; i++) out[n + i] = (uint8_t)(round >> (8 * i));
  for (int i = 0; i < 4; i++) out[n + 8 + i] = (uint8_t)(a >> (8 * i));
  for (int i = 0; i < 4; i++) out[n + 12 + i] = (uint8_t)(b >> (8 * i));
  return n + 16;
}

/* The mask seed of the pair {u, v}, from one's s secret and the other's s public key. */
static int pair_seed(const uint8_t secret[32], const uint8_t peer_pub[32], uint64_t round, uint32_t u,
                     uint32_t v, uint8_t seed[32]) {
  uint8_t lab[64];
  size_t n = label(lab, "fl secagg mask", round, u < v ? u : v, u < v ? v : u);
  return fl_x25519_derive(secret, peer_pub, lab, n, seed);
}

/* The key sealing u's shares for v (one message per key: a nonce of zero is fine), from
 * the pair's agreed c secret (one agreement serves both directions). */
static int seal_key(const uint8_t shared[32], uint64_t round, uint32_t from, uint32_t to,
                    uint8_t key[32], uint8_t *ad, size_t *ad_len) {
  *ad_len = label(ad, "fl secagg shares", round, from, to);
  return fl_hkdf_key(shared, ad, *ad_len, key);
}

static void put_share(uint8_t *p, const fl_share *s) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(s->x >> (8 * i));
  for (int l = 0; l < FL_SHAMIR_LIMBS; l++)
    for (int i = 0; i < 8; i++) p[8 + 8 * l + i] = (uint8_t)(s->y[l] >> (8 * i));
}

static void get_share(const uint8_t *p, fl_share *s) {
  s->x = 0;
  for (int i = 0; i < 8; i++) s->x |= (uint64_t)p[i] << (8 * i);
  for (int l = 0; l < FL_SHAMIR_LIMBS; l++) {
    s->y[l] = 0;
    for (int i = 0; i < 8; i++) s->y[l] |= (uint64_t)p[8 + 8 * l + i] << (8 * i);
  }
}

/* ---- the client ---- */

struct fl_secagg_client {
  fl_secagg_params p;
  uint32_t me;
  fl_csprng rng;
  fl_x25519 c_key, s_key;
  uint8_t b[32];                  /* the self-mask seed */
  uint32_t k, *nbr;               /* neighbours, ascending */
  uint8_t *in_u2;                 /* [n] who sent shares (stage 2) */
  uint8_t (*ps)[32];             /* [k] the neighbours' s public keys (stage 1) */
  uint8_t *has;                   /* [k] the neighbour sent keys */
  uint8_t (*seed)[32];            /* [k] pair mask seeds with the neighbours in U2 */
  uint8_t (*cshared)[32];         /* [k] the c secrets agreed with the neighbours (stage 1) */
  fl_share *got_b, *got_s;        /* [k] the shares each neighbour sent */
  fl_share own_b;                 /* its own share of b (a survivor reveals it too) */
  uint8_t *opened;                /* [k] the neighbour's shares opened */
  uint8_t *revealed;              /* [k] 0, 1 (its b), 2 (its s) */
  int stage;                      /* 0 keys sent, 1 shares sent, 2 shares taken, 3 revealed */
  int me_in_u2;
};

void fl_secagg_client_free(fl_secagg_client *c) {
  if (!c) return;
  fl_csprng_free(&c->rng);
  free(c->nbr);
  free(c->in_u2);
  free(c->ps);
  free(c->has);
  free(c->seed);
  if (c->cshared) memset(c->cshared, 0, (c->k ? c->k : 1) * sizeof *c->cshared);
  free(c->cshared);
  free(c->got_b);
  free(c->got_s);
  free(c->revealed);
  free(c->opened);
  memset(c, 0, sizeof *c); /* the secrets go with it */
  free(c);
}

int fl_secagg_client_new(const fl_secagg_params *p, uint32_t me, fl_secagg_client **out,
                         uint8_t c_pub[32], uint8_t s_pub[32], char *err, size_t errlen) {
  *out = NULL;
  int rc = fl_secagg_params_check(p, err, errlen);
  if (rc) return rc;
  if (me >= p->n) return fl_errf(err, errlen, FL_EINVAL, "client index %u of %u", me, p->n);
  fl_secagg_client *c = calloc(1, sizeof *c);
  if (!c) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  c->p = *p;
  c->me = me;
  if (fl_csprng_init(&c->rng, "fl secagg client")) {
    free(c);
    return fl_errf(err, errlen, FL_EIO, "no randomness from the kernel");
  }
  c->nbr = malloc(p->n * sizeof *c->nbr);
  c->in_u2 = calloc(p->n, 1);
  if (c->nbr) c->k = fl_secagg_neighbors(p, me, c->nbr);
  size_t k = c->k ? c->k : 1;
  c->revealed = calloc(k, 1);
  c->opened = calloc(k, 1);
  c->has = calloc(k, 1);
  c->ps = calloc(k, sizeof *c->ps);
  c->seed = calloc(k, sizeof *c->seed);
  c->cshared = calloc(k, sizeof *c->cshared);
  c->got_b = calloc(k, sizeof *c->got_b);
  c->got_s = calloc(k, sizeof *c->got_s);
  if (!c->nbr || !c->k || !c->in_u2 || !c->revealed || !c->opened || !c->has || !c->ps || !c->seed ||
      !c->cshared || !c->got_b || !c->got_s) {
    fl_secagg_client_free(c);
    return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  }
  if (fl_x25519_generate(&c->c_key, &c->rng) || fl_x25519_generate(&c->s_key, &c->rng) ||
      fl_csprng_bytes(&c->rng, c->b, sizeof c->b)) {
    fl_secagg_client_free(c);
    return fl_errf(err, errlen, FL_EIO, "cannot make keys");
  }
  memcpy(c_pub, c->c_key.pub, 32);
  memcpy(s_pub, c->s_key.pub, 32);
  *out = c;
  return 0;
}

int fl_secagg_client_shares(fl_secagg_client *c, const uint8_t (*c_pub)[32],
                            const uint8_t (*s_pub)[32], const uint8_t *have, uint8_t *sealed,
                            uint8_t *to, char *err, size_t errlen) {
  if (c->stage != 0) return fl_errf(err, errlen, FL_ESTATE, "shares asked twice");
  uint32_t m = 0;
  uint64_t *xs = malloc((c->k + 1) * sizeof *xs);
  uint32_t *who = malloc((c->k + 1) * sizeof *who);
  fl_share *sb = malloc((c->k + 1) * sizeof *sb), *ss = malloc((c->k + 1) * sizeof *ss);
  int rc = 0;
  if (!xs || !who || !sb || !ss) {
    rc = fl_errf(err, errlen, FL_ENOMEM, "out of memory");
    goto done;
  }
  for (uint32_t i = 0; i < c->k; i++)
    if (have[c->nbr[i]]) {
      uint32_t v = c->nbr[i];
      c->has[i] = 1;
      memcpy(c->ps[i], s_pub[v], 32);
      who[m] = v;
      xs[m++] = (uint64_t)v + 1;
    }
  if (m + 1 < c->p.threshold) {
    rc = fl_errf(err, errlen, FL_ESTATE, "%u of %u neighbours sent keys, the threshold is %u", m,
                 c->k, c->p.threshold);
    goto done;
  }
  xs[m] = (uint64_t)c->me + 1; /* its own shares, last */
  if ((rc = fl_shamir_split_at(c->b, (int)c->p.threshold, xs, (int)m + 1, sb, &c->rng)) != 0 ||
      (rc = fl_shamir_split_at(c->s_key.secret, (int)c->p.threshold, xs, (int)m + 1, ss, &c->rng)) != 0) {
    rc = fl_errf(err, errlen, rc, "cannot share the secrets");
    goto done;
  }
  c->own_b = sb[m];
  memset(to, 0, c->p.n);
  for (uint32_t i = 0, j = 0; i < c->k && j < m; i++) {
    if (!c->has[i]) continue;
    uint32_t v = who[j];
    uint8_t key[32], ad[64], plain[2 * FL_SECAGG_SHARE_BYTES];
    size_t ad_len;
    if (fl_x25519_agree(c->c_key.secret, c_pub[v], c->cshared[i])) {
      rc = fl_errf(err, errlen, FL_EFORMAT, "client %u's public key is not a point", v);
      goto done;
    }
    if (seal_key(c->cshared[i], c->p.round, c->me, v, key, ad, &ad_len)) {
      rc = fl_errf(err, errlen, FL_EIO, "cannot derive a sealing key");
      goto done;
    }
    put_share(plain, &sb[j]);
    put_share(plain + FL_SECAGG_SHARE_BYTES, &ss[j]);
    if (fl_seal(key, ad, ad_len, plain, sizeof plain, sealed + (size_t)v * FL_SECAGG_SEALED)) {
      rc = fl_errf(err, errlen, FL_EIO, "sealing failed");
      goto done;
    }
    memset(plain, 0, sizeof plain);
    to[v] = 1;
    j++;
  }
  c->stage = 1;
done:
  if (sb) memset(sb, 0, (c->k + 1) * sizeof *sb);
  if (ss) memset(ss, 0, (c->k + 1) * sizeof *ss);
  free(xs);
  free(who);
  free(sb);
  free(ss);
  return rc;
}

/* Derives the pair's mask seed with neighbour i, then opens the shares it sent c: 0, 1
 * when they do not open (left out), or an error. */
static int open_from(fl_secagg_client *c, uint32_t i, const uint8_t *sealed, char *err,
                     size_t errlen) {
  uint32_t u = c->nbr[i];
  uint8_t key[32], ad[64], plain[2 * FL_SECAGG_SHARE_BYTES];
  size_t ad_len;
  if (!c->has[i]) return fl_errf(err, errlen, FL_EPROTO, "client %u is in U2 without keys", u);
  if (pair_seed(c->s_key.secret, c->ps[i], c->p.round, c->me, u, c->seed[i]))
    return fl_errf(err, errlen, FL_EFORMAT, "client %u's public key is not a point", u);
  if (seal_key(c->cshared[i], c->p.round, u, c->me, key, ad, &ad_len) ||
      fl_open(key, ad, ad_len, sealed, FL_SECAGG_SEALED, plain))
    return 1;
  get_share(plain, &c->got_b[i]);
  get_share(plain + FL_SECAGG_SHARE_BYTES, &c->got_s[i]);
  memset(plain, 0, sizeof plain);
  if (c->got_b[i].x != (uint64_t)c->me + 1 || c->got_s[i].x != (uint64_t)c->me + 1) return 1;
  c->opened[i] = 1;
  return 0;
}

int fl_secagg_client_take_shares(fl_secagg_client *c, const uint8_t *in_u2, const uint8_t *sealed,
                                 uint8_t *bad, char *err, size_t errlen) {
  if (c->stage != 1) return fl_errf(err, errlen, FL_ESTATE, "shares taken before being sent");
  if (!in_u2[c->me]) return fl_errf(err, errlen, FL_ESTATE, "this client is not among U2");
  if (bad) memset(bad, 0, c->p.n);
  for (uint32_t i = 0; i < c->k; i++) {
    if (!in_u2[c->nbr[i]]) continue;
    int rc = open_from(c, i, sealed + (size_t)c->nbr[i] * FL_SECAGG_SEALED, err, errlen);
    if (rc < 0) return rc;
    if (rc && bad) bad[c->nbr[i]] = 1;
  }
  memcpy(c->in_u2, in_u2, c->p.n);
  c->me_in_u2 = 1;
  c->stage = 2;
  return 0;
}

int fl_secagg_client_mask_part(fl_secagg_client *c, uint64_t offset, uint32_t *x, size_t len,
                               char *err, size_t errlen) {
  if (c->stage != 2) return fl_errf(err, errlen, FL_ESTATE, "masking before the shares are in");
  if (offset > c->p.dim || len > c->p.dim - offset)
    return fl_errf(err, errlen, FL_EINVAL, "elements %llu..%llu of %llu", (unsigned long long)offset,
                   (unsigned long long)(offset + len), (unsigned long long)c->p.dim);
  fl_prg_mask(c->b, offset, x, len, (int)c->p.bits, +1);
  for (uint32_t i = 0; i < c->k; i++) {
    uint32_t v = c->nbr[i];
    if (!c->in_u2[v]) continue;
    fl_prg_mask(c->seed[i], offset, x, len, (int)c->p.bits, c->me < v ? +1 : -1);
  }
  return 0;
}

int fl_secagg_client_mask(fl_secagg_client *c, uint32_t *x, char *err, size_t errlen) {
  return fl_secagg_client_mask_part(c, 0, x, (size_t)c->p.dim, err, errlen);
}

int fl_secagg_client_reveal(fl_secagg_client *c, const uint8_t *in_u3, uint8_t *kind,
                            uint8_t *share, char *err, size_t errlen) {
  if (c->stage < 2) return fl_errf(err, errlen, FL_EREFUSED, "unmasking before this client's input");
  if (!in_u3[c->me]) return fl_errf(err, errlen, FL_EREFUSED, "this client is not among the survivors");
  uint32_t alive = 0;
  for (uint32_t i = 0; i < c->k; i++) {
    uint32_t u = c->nbr[i];
    if (in_u3[u] && !c->in_u2[u])
      return fl_errf(err, errlen, FL_EREFUSED, "client %u is said to have survived without "
                     "having sent its shares", u);
    alive += in_u3[u];
    /* Never both shares of one client: a survivor's s, or a dropped one's b, once the
     * other was given, would let the server unmask that client's input alone. */
    if (c->in_u2[u] && c->revealed[i] && c->revealed[i] != (in_u3[u] ? 1 : 2))
      return fl_errf(err, errlen, FL_EREFUSED, "the server asks for client %u's %s share after "
                     "its %s share: refused", u, in_u3[u] ? "self-mask" : "key",
                     in_u3[u] ? "key" : "self-mask");
  }
  if (alive + 1 < c->p.threshold)
    return fl_errf(err, errlen, FL_EREFUSED, "only %u of this client's neighbours survived, "
                   "fewer than the threshold %u", alive, c->p.threshold);
  memset(kind, 0, c->p.n);
  for (uint32_t i = 0; i < c->k; i++) {
    uint32_t u = c->nbr[i];
    if (!c->in_u2[u] || !c->opened[i]) continue;
    kind[u] = in_u3[u] ? 1 : 2;
    put_share(share + (size_t)u * FL_SECAGG_SHARE_BYTES, in_u3[u] ? &c->got_b[i] : &c->got_s[i]);
    c->revealed[i] = kind[u];
  }
  kind[c->me] = 1; /* a survivor's own self-mask share (never its key's) */
  put_share(share + (size_t)c->me * FL_SECAGG_SHARE_BYTES, &c->own_b);
  c->stage = 3;
  return 0;
}

/* ---- the server ---- */

struct fl_secagg_server {
  fl_secagg_params p;
  uint8_t (*c_pub)[32], (*s_pub)[32];
  uint8_t *has_keys, *in_u2, *in_u3, *inputs_started;
  uint32_t *sum;                  /* [dim] the masked inputs so far */
  fl_share *b_shares, *s_shares;  /* [n * n]: shares of u revealed by v at u * n + v */
  uint8_t *b_have, *s_have;       /* [n * n] */
};

void fl_secagg_server_free(fl_secagg_server *s) {
  if (!s) return;
  free(s->c_pub);
  free(s->s_pub);
  free(s->has_keys);
  free(s->in_u2);
  free(s->in_u3);
  free(s->inputs_started);
  free(s->sum);
  free(s->b_shares);
  free(s->s_shares);
  free(s->b_have);
  free(s->s_have);
  free(s);
}

int fl_secagg_server_new(const fl_secagg_params *p, fl_secagg_server **out, char *err,
                         size_t errlen) {
  *out = NULL;
  int rc = fl_secagg_params_check(p, err, errlen);
  if (rc) return rc;
  fl_secagg_server *s = calloc(1, sizeof *s);
  if (!s) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  s->p = *p;
  size_t n = p->n;
  s->c_pub = calloc(n, 32);
  s->s_pub = calloc(n, 32);
  s->has_keys = calloc(n, 1);
  s->in_u2 = calloc(n, 1);
  s->in_u3 = calloc(n, 1);
  s->inputs_started = calloc(n, 1);
  s->sum = calloc(p->dim, sizeof *s->sum);
  /* Shares are kept only for the pairs of the graph: n * n slots is fine for the few
   * hundred clients a round holds; SecAgg+ rounds of thousands use the same layout. */
  s->b_shares = calloc(n * n, sizeof *s->b_shares);
  s->s_shares = calloc(n * n, sizeof *s->s_shares);
  s->b_have = calloc(n * n, 1);
  s->s_have = calloc(n * n, 1);
  if (!s->c_pub || !s->s_pub || !s->has_keys || !s->in_u2 || !s->in_u3 || !s->inputs_started ||
      !s->sum || !s->b_shares || !s->s_shares || !s->b_have || !s->s_have) {
    fl_secagg_server_free(s);
    return fl_errf(err, errlen, FL_ENOMEM, "out of memory for %zu clients and %llu elements", n,
                   (unsigned long long)p->dim);
  }
  *out = s;
  return 0;
}

int fl_secagg_server_keys(fl_secagg_server *s, uint32_t u, const uint8_t c_pub[32],
                          const uint8_t s_pub[32]) {
  if (u >= s->p.n || s->has_keys[u]) return FL_ESTATE;
  memcpy(s->c_pub[u], c_pub, 32);
  memcpy(s->s_pub[u], s_pub, 32);
  s->has_keys[u] = 1;
  return 0;
}

int fl_secagg_server_set_u2(fl_secagg_server *s, const uint8_t *in_u2) {
  for (uint32_t u = 0; u < s->p.n; u++) s->in_u2[u] = in_u2[u] && s->has_keys[u];
  return 0;
}

int fl_secagg_server_input(fl_secagg_server *s, uint32_t u, uint64_t offset, const uint32_t *y,
                           size_t len) {
  if (u >= s->p.n || !s->in_u2[u] || s->in_u3[u]) return FL_ESTATE;
  if (offset > s->p.dim || len > s->p.dim - offset) return FL_EINVAL;
  s->inputs_started[u] = 1;
  uint32_t keep = s->p.bits == 32 ? 0xffffffffu : 0xffffu, *sum = s->sum + offset;
  for (size_t i = 0; i < len; i++) sum[i] = (sum[i] + y[i]) & keep;
  return 0;
}

int fl_secagg_server_input_done(fl_secagg_server *s, uint32_t u) {
  if (u >= s->p.n || !s->in_u2[u] || s->in_u3[u]) return FL_ESTATE;
  s->in_u3[u] = 1;
  return 0;
}

const uint8_t *fl_secagg_server_u3(const fl_secagg_server *s) { return s->in_u3; }

int fl_secagg_server_reveal(fl_secagg_server *s, uint32_t v, const uint8_t *kind,
                            const uint8_t *share) {
  if (v >= s->p.n || !s->in_u3[v]) return FL_ESTATE;
  size_t n = s->p.n;
  for (uint32_t u = 0; u < n; u++) {
    if (!kind[u] || !s->in_u2[u]) continue;
    int want = s->in_u3[u] ? 1 : 2;
    if (kind[u] != want) continue; /* the wrong kind is of no use: ignored */
    fl_share sh;
    get_share(share + (size_t)u * FL_SECAGG_SHARE_BYTES, &sh);
    if (sh.x != (uint64_t)v + 1) continue; /* a share is at its holder's point */
    if (want == 1) {
      s->b_shares[u * n + v] = sh;
      s->b_have[u * n + v] = 1;
    } else {
      s->s_shares[u * n + v] = sh;
      s->s_have[u * n + v] = 1;
    }
  }
  return 0;
}

/* u's secret from the shares revealed for it (at least t). */
static int rebuild(const fl_secagg_server *s, uint32_t u, int self_mask, uint8_t secret[32],
                   char *err, size_t errlen) {
  size_t n = s->p.n;
  fl_share *pool = malloc(n * sizeof *pool);
  if (!pool) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  int k = 0;
  for (uint32_t v = 0; v < n; v++)
    if ((self_mask ? s->b_have : s->s_have)[u * n + v])
      pool[k++] = (self_mask ? s->b_shares : s->s_shares)[u * n + v];
  int rc = 0, t = (int)s->p.threshold;
  uint8_t other[32];
  if (k < t)
    rc = fl_errf(err, errlen, FL_ESTATE, "client %u's %s: %d shares, %u needed", u,
                 self_mask ? "self mask" : "key", k, s->p.threshold);
  else if (fl_shamir_combine(pool, t, secret))
    rc = fl_errf(err, errlen, FL_EFORMAT, "client %u's %s: the shares do not rebuild a secret", u,
                 self_mask ? "self mask" : "key");
  /* With more than t shares, the last t must give the same secret: shares that do not lie
   * on one polynomial (a client that dealt bad ones) are caught, not unmasked with. */
  else if (k > t && (fl_shamir_combine(pool + (k - t), t, other) || memcmp(other, secret, 32) != 0))
    rc = fl_errf(err, errlen, FL_EFORMAT, "client %u's %s: the shares revealed for it are "
                 "inconsistent (it dealt bad shares, or a neighbour revealed one)", u,
                 self_mask ? "self mask" : "key");
  memset(other, 0, sizeof other);
  free(pool);
  return rc;
}

int fl_secagg_server_unmask(fl_secagg_server *s, uint32_t *sum, char *err, size_t errlen) {
  size_t n = s->p.n;
  int bits = (int)s->p.bits, rc = 0;
  uint32_t *nbr = malloc(n * sizeof *nbr);
  if (!nbr) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  memcpy(sum, s->sum, s->p.dim * sizeof *sum);
  for (uint32_t u = 0; u < n && !rc; u++) {
    if (!s->in_u2[u]) continue;
    uint8_t secret[32];
    if (s->in_u3[u]) { /* a survivor: its self mask goes */
      rc = rebuild(s, u, 1, secret, err, errlen);
      if (!rc) fl_prg_mask(secret, 0, sum, s->p.dim, bits, -1);
    } else { /* dropped after sharing: its pair masks with the survivors go */
      rc = rebuild(s, u, 0, secret, err, errlen);
      uint8_t pub[32];
      if (!rc && (fl_x25519_public(secret, pub) || memcmp(pub, s->s_pub[u], 32) != 0))
        rc = fl_errf(err, errlen, FL_EFORMAT, "client %u's rebuilt key does not match its public key", u);
      uint32_t k = rc ? 0 : fl_secagg_neighbors(&s->p, u, nbr);
      for (uint32_t i = 0; i < k && !rc; i++) {
        uint32_t v = nbr[i];
        if (!s->in_u3[v]) continue;
        uint8_t seed[32];
        if (pair_seed(secret, s->s_pub[v], s->p.round, u, v, seed))
          rc = fl_errf(err, errlen, FL_EFORMAT, "client %u's public key is not a point", v);
        else /* v added +PRG when v < u, -PRG when v > u: undo it */
          fl_prg_mask(seed, 0, sum, s->p.dim, bits, v < u ? -1 : +1);
      }
    }
    memset(secret, 0, sizeof secret);
  }
  free(nbr);
  return rc;
}

int fl_secagg_scale(uint32_t bits, uint32_t n, double lim, double most, double *scale, char *err,
                    size_t errlen) {
  double room = n ? ldexp(1.0, (int)bits - 1) / (double)n - 2 : 0;
  if (!(lim > 0) || !isfinite(lim) || room / lim < 1)
    return fl_errf(err, errlen, FL_EINVAL, "the sum of %u values of up to %g does not fit a "
                   "%u-bit ring", n, lim, bits);
  double sc = room / lim;
  *scale = most > 0 && most < sc ? (most >= 1 ? most : 1) : sc;
  return 0;
}

double fl_secagg_decode(uint32_t element, uint32_t bits, double scale) {
  int64_t v = bits == 32 ? (int64_t)(int32_t)element : (int64_t)(int16_t)(uint16_t)element;
  return (double)v / scale;
}
