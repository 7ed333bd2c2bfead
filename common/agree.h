/* Key agreement between two clients that only talk through the server (secure
 * aggregation): X25519 key pairs, a shared secret turned into a 32-byte key by HKDF-SHA256
 * with a label that binds it to its use and round, and messages sealed with
 * ChaCha20-Poly1305 under such a key, so the server that forwards them can neither read
 * nor alter them.  All from mbedTLS. */
#ifndef FL_AGREE_H
#define FL_AGREE_H

#include <stddef.h>
#include <stdint.h>

#include "csprng.h"

#define FL_X25519_BYTES 32
#define FL_SEAL_OVERHEAD 16 /* the Poly1305 tag */

typedef struct fl_x25519 {
  uint8_t secret[FL_X25519_BYTES];   /* little-endian scalar */
  uint8_t pub[FL_X25519_BYTES];      /* u coordinate */
} fl_x25519;

/* A fresh key pair.  0 or FL_EIO. */
int fl_x25519_generate(fl_x25519 *k, fl_csprng *rng);
/* The public key of a secret (a secret reconstructed from shares is checked this way). */
int fl_x25519_public(const uint8_t secret[FL_X25519_BYTES], uint8_t pub[FL_X25519_BYTES]);
/* key = HKDF-SHA256(X25519(secret, peer), salt = none, info = label): 0, or FL_EFORMAT for
 * a peer key that is not a point or gives the all-zero secret (a small-order point). */
int fl_x25519_derive(const uint8_t secret[FL_X25519_BYTES], const uint8_t peer[FL_X25519_BYTES],
                     const uint8_t *label, size_t label_len, uint8_t key[32]);
/* The two halves of fl_x25519_derive, for a shared secret that keys several labels (one
 * agreement, the costly part, instead of one per key): shared = X25519(secret, peer), 0
 * or FL_EFORMAT as above; key = HKDF-SHA256(shared, info = label), 0 or FL_EIO. */
int fl_x25519_agree(const uint8_t secret[FL_X25519_BYTES], const uint8_t peer[FL_X25519_BYTES],
                    uint8_t shared[FL_X25519_BYTES]);
int fl_hkdf_key(const uint8_t shared[FL_X25519_BYTES], const uint8_t *label, size_t label_len,
                uint8_t key[32]);

/* 0 when pub can be agreed with (a point of the curve, not of small order), else
 * FL_EFORMAT: what a server checks before forwarding a client's key to others. */
int fl_x25519_check(const uint8_t pub[FL_X25519_BYTES]);

/* out[0 .. len + FL_SEAL_OVERHEAD) = ChaCha20-Poly1305(key, nonce 0, ad, in): each key
 * seals one message only.  0 or FL_EIO. */
int fl_seal(const uint8_t key[32], const uint8_t *ad, size_t ad_len, const uint8_t *in, size_t len,
            uint8_t *out);
/* The reverse: 0, or FL_ECHECKSUM when the message was altered or sealed for someone
 * else (out then holds nothing usable). */
int fl_open(const uint8_t key[32], const uint8_t *ad, size_t ad_len, const uint8_t *in, size_t len,
            uint8_t *out);

#endif
