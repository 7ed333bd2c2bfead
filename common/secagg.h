/* Secure aggregation: the server learns the sum of the round's updates and nothing about
 * any one of them (Bonawitz et al. 2017, "Practical Secure Aggregation for
 * Privacy-Preserving Machine Learning"; with k neighbours instead of all, Bell et al. 2020,
 * SecAgg+).  The protocol's two sides as state machines without I/O: the caller moves
 * the messages (fl-server and libflclient over the protocol; the tests directly).
 *
 * Per round, among the n selected clients (indices 0..n-1, the order of their ids):
 *   0 keys      each client makes two X25519 key pairs, c (to seal shares) and s (to
 *               agree masks), and sends the public keys;
 *   1 shares    given its neighbours' keys (U1: those that sent theirs), it draws a
 *               self-mask seed b, splits b and its s secret key t-of-|neighbours| with
 *               Shamir, and sends each neighbour its two shares sealed with ChaCha20-
 *               Poly1305 under HKDF(X25519(c_u, c_v)), bound to the round and the pair;
 *   2 input     given the shares addressed to it and U2 (who sent shares), it sends
 *               y = x + PRG(b) + sum over neighbours v in U2 of +-PRG(s_uv) mod 2^bits,
 *               s_uv = HKDF(X25519(s_u, s_v)), + when u < v, - when u > v;
 *   3 unmask    given U3 (whose inputs arrived) and the dropped U2 \ U3, it reveals its
 *               share of b_u for each neighbour u in U3 and of s_u for each in U2 \ U3,
 *               and never both for the same u, whatever the server asks later.
 * The server sums the y it receives as they come (never holding one unmasked), then
 * rebuilds b for the survivors and s for the dropped from any t shares, checks each s
 * against the public key it was sent, and removes their masks: the sum of the x of U3.
 *
 * Ring: Z_(2^bits), bits 16 or 32, vectors of uint32 holding the elements.  The
 * caller encodes its values in the ring (fixed point) so that the sum of n of them cannot
 * wrap: see fl_secagg_scale. */
#ifndef FL_SECAGG_H
#define FL_SECAGG_H

#include <stddef.h>
#include <stdint.h>

#include "agree.h"
#include "csprng.h"
#include "shamir.h"

#define FL_SECAGG_MAX_N 10000

/* What every participant of a round agrees on (the server sends it). */
typedef struct fl_secagg_params {
  uint64_t round;       /* binds keys, shares and masks to the round (and its attempt) */
  uint32_t n;           /* participants */
  uint32_t threshold;   /* shares that rebuild a secret: t <= neighbours + 1 */
  uint32_t neighbors;   /* k: each client's neighbours (n - 1: all, plain SecAgg) */
  uint32_t bits;        /* 16 or 32 */
  uint64_t dim;         /* elements of an input */
  uint8_t graph_seed[32]; /* SecAgg+: the neighbour graph's permutation */
} fl_secagg_params;

/* Checks p (n, t, k, bits, dim in range); 0 or FL_EINVAL with the reason. */
int fl_secagg_params_check(const fl_secagg_params *p, char *err, size_t errlen);
/* The neighbours of i (ascending), k of them, into out; every client is the neighbour of
 * its neighbours.  k = n - 1 is everyone; fewer: a circulant graph over a permutation of
 * the indices drawn from graph_seed (each client and its k/2 successors and predecessors
 * in that order). */
uint32_t fl_secagg_neighbors(const fl_secagg_params *p, uint32_t i, uint32_t *out);

/* ---- one client ---- */

typedef struct fl_secagg_client fl_secagg_client;

/* Stage 0: a client of index me; its public keys in c_pub, s_pub.  0, FL_EINVAL (bad
 * parameters), FL_ENOMEM or FL_EIO (randomness). */
int fl_secagg_client_new(const fl_secagg_params *p, uint32_t me, fl_secagg_client **out,
                         uint8_t c_pub[32], uint8_t s_pub[32], char *err, size_t errlen);
void fl_secagg_client_free(fl_secagg_client *c);

/* Stage 1: the public keys of the clients that sent theirs (have[v] says which; its own
 * included).  Writes, for each neighbour v that has keys, a sealed pair of shares to
 * sealed + v * FL_SECAGG_SEALED and sets to[v]; 0, or FL_EFORMAT (a peer key that is not
 * a point), FL_ESTATE (too few neighbours left to reach the threshold). */
#define FL_SECAGG_SHARE_BYTES (8 * (1 + FL_SHAMIR_LIMBS))
#define FL_SECAGG_SEALED (2 * FL_SECAGG_SHARE_BYTES + FL_SEAL_OVERHEAD)
int fl_secagg_client_shares(fl_secagg_client *c, const uint8_t (*c_pub)[32],
                            const uint8_t (*s_pub)[32], const uint8_t *have, uint8_t *sealed,
                            uint8_t *to, char *err, size_t errlen);

/* Stage 2: the sealed shares addressed to it (in_u2[u] set for each u in U2, the clients
 * whose shares reached the server; sealed + u * FL_SECAGG_SEALED).  A neighbour's shares
 * that do not open (altered, or sealed for someone else) are left out and named in bad[u]
 * (may be NULL): its masks still apply, it is only not helped to recover.  FL_ESTATE when
 * the client itself is not in U2, FL_EPROTO for a U2 member that sent no keys. */
int fl_secagg_client_take_shares(fl_secagg_client *c, const uint8_t *in_u2, const uint8_t *sealed,
                                 uint8_t *bad, char *err, size_t errlen);
/* Masks x[0..dim) in place (ring elements): + its self mask and the pairwise masks with its
 * neighbours in U2.  Only after take_shares. */
int fl_secagg_client_mask(fl_secagg_client *c, uint32_t *x, char *err, size_t errlen);
/* Masks a piece x[0..len) of the input that starts at element offset (the same result as
 * masking it whole). */
int fl_secagg_client_mask_part(fl_secagg_client *c, uint64_t offset, uint32_t *x, size_t len,
                               char *err, size_t errlen);

/* Stage 3: the server names the survivors (in_u3[u]) and the dropped (in U2 and not in
 * U3).  For each neighbour u the client reveals one share: of b_u if u survived, of s_u
 * if it dropped, written to share + u * FL_SECAGG_SHARE_BYTES with kind[u] = 1 (b) or 2
 * (s), 0 for none.  FL_EREFUSED (nothing revealed) when the request is unsafe: a client
 * it has already revealed the other share of, U3 with fewer than t of its neighbours, U3
 * holding a client not in U2, itself not in U3. */
int fl_secagg_client_reveal(fl_secagg_client *c, const uint8_t *in_u3, uint8_t *kind,
                            uint8_t *share, char *err, size_t errlen);

/* ---- the server ---- */

typedef struct fl_secagg_server fl_secagg_server;

int fl_secagg_server_new(const fl_secagg_params *p, fl_secagg_server **out, char *err,
                         size_t errlen);
void fl_secagg_server_free(fl_secagg_server *s);
/* Stage 0: client u's public keys (untrusted: checked when used). */
int fl_secagg_server_keys(fl_secagg_server *s, uint32_t u, const uint8_t c_pub[32],
                          const uint8_t s_pub[32]);
/* Stage 2 starts: the clients that sent shares (U2). */
int fl_secagg_server_set_u2(fl_secagg_server *s, const uint8_t *in_u2);
/* Stage 2: a masked input of u in U2, added into the running sum (the input is not kept).
 * Inputs may come in pieces (offset, len); FL_ESTATE for u not in U2 or twice. */
int fl_secagg_server_input(fl_secagg_server *s, uint32_t u, uint64_t offset, const uint32_t *y,
                           size_t len);
/* u's input is complete: u joins U3. */
int fl_secagg_server_input_done(fl_secagg_server *s, uint32_t u);
/* The survivors (U3) to announce. */
const uint8_t *fl_secagg_server_u3(const fl_secagg_server *s);
/* Stage 3: the shares client v revealed (kind[u], share + u * FL_SECAGG_SHARE_BYTES, as
 * fl_secagg_client_reveal wrote them).  A share of the wrong kind is ignored. */
int fl_secagg_server_reveal(fl_secagg_server *s, uint32_t v, const uint8_t *kind,
                            const uint8_t *share);
/* Removes every mask: sum[0..dim) = the sum of the inputs of U3.  0, or FL_ESTATE (a
 * secret with fewer than t shares), FL_EFORMAT (shares that do not rebuild a secret, or an
 * s that does not match its public key), with the reason. */
int fl_secagg_server_unmask(fl_secagg_server *s, uint32_t *sum, char *err, size_t errlen);

/* ---- fixed point ----
 *
 * A value v in [-lim, lim] becomes the element round(v * scale) mod 2^bits (to nearest, or
 * stochastically: floor(v * scale + u), u uniform in [0, 1), which is unbiased).  Each
 * element is then at most lim * scale + 1 in magnitude, so with
 *     scale <= (2^(bits-1) / n - 2) / lim
 * the sum of n of them stays strictly inside the signed range (-2^(bits-1), 2^(bits-1))
 * and decodes without wrapping: sum / scale is the sum of the values to within n / scale
 * (n / (2 scale) rounding to nearest).  fl_secagg_scale gives the largest such scale, at
 * most `most` (0: no limit; the int8 composition asks 127 / lim, so that an element never
 * needs more than 8 bits), or FL_EINVAL when n values cannot fit even at scale 1. */
int fl_secagg_scale(uint32_t bits, uint32_t n, double lim, double most, double *scale, char *err,
                    size_t errlen);
/* The signed value of a sum element (two's complement in 2^bits) over scale. */
double fl_secagg_decode(uint32_t element, uint32_t bits, double scale);

#endif
