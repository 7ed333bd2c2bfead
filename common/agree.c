/* X25519, HKDF and ChaCha20-Poly1305 between clients (agree.h). */
#include "agree.h"

#include <string.h>

#include <mbedtls/chachapoly.h>
#include <mbedtls/ecdh.h>
#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>

#include "error.h"

/* A deterministic generator for the blinding mbedTLS asks for: X25519 here is computed
 * with the Montgomery ladder, which needs no randomness, so any bytes do. */
static int no_rng(void *ctx, unsigned char *out, size_t len) {
  (void)ctx;
  memset(out, 0x5a, len);
  return 0;
}

static int load_group(mbedtls_ecp_group *g) {
  mbedtls_ecp_group_init(g);
  return mbedtls_ecp_group_load(g, MBEDTLS_ECP_DP_CURVE25519) ? FL_EIO : 0;
}

int fl_x25519_public(const uint8_t secret[FL_X25519_BYTES], uint8_t pub[FL_X25519_BYTES]) {
  mbedtls_ecp_group g;
  mbedtls_mpi d;
  mbedtls_ecp_point q;
  mbedtls_mpi_init(&d);
  mbedtls_ecp_point_init(&q);
  int rc = load_group(&g);
  size_t len;
  if (!rc && (mbedtls_mpi_read_binary_le(&d, secret, FL_X25519_BYTES) ||
              mbedtls_ecp_mul(&g, &q, &d, &g.G, no_rng, NULL) ||
              mbedtls_ecp_point_write_binary(&g, &q, MBEDTLS_ECP_PF_UNCOMPRESSED, &len, pub,
                                             FL_X25519_BYTES) || len != FL_X25519_BYTES))
    rc = FL_EFORMAT;
  mbedtls_mpi_free(&d);
  mbedtls_ecp_point_free(&q);
  mbedtls_ecp_group_free(&g);
  return rc;
}

int fl_x25519_generate(fl_x25519 *k, fl_csprng *rng) {
  mbedtls_ecp_group g;
  mbedtls_mpi d;
  mbedtls_ecp_point q;
  mbedtls_mpi_init(&d);
  mbedtls_ecp_point_init(&q);
  int rc = load_group(&g);
  size_t len;
  if (!rc && (mbedtls_ecdh_gen_public(&g, &d, &q, fl_csprng_mbedtls, rng) ||
              mbedtls_mpi_write_binary_le(&d, k->secret, FL_X25519_BYTES) ||
              mbedtls_ecp_point_write_binary(&g, &q, MBEDTLS_ECP_PF_UNCOMPRESSED, &len, k->pub,
                                             FL_X25519_BYTES) || len != FL_X25519_BYTES))
    rc = FL_EIO;
  mbedtls_mpi_free(&d);
  mbedtls_ecp_point_free(&q);
  mbedtls_ecp_group_free(&g);
  return rc;
}

int fl_x25519_agree(const uint8_t secret[FL_X25519_BYTES], const uint8_t peer[FL_X25519_BYTES],
                    uint8_t shared[FL_X25519_BYTES]) {
  mbedtls_ecp_group g;
  mbedtls_mpi d, z;
  mbedtls_ecp_point q;
  mbedtls_mpi_init(&d);
  mbedtls_mpi_init(&z);
  mbedtls_ecp_point_init(&q);
  uint8_t zero[FL_X25519_BYTES] = {0};
  int rc = load_group(&g);
  if (!rc && (mbedtls_mpi_read_binary_le(&d, secret, FL_X25519_BYTES) ||
              mbedtls_ecp_point_read_binary(&g, &q, peer, FL_X25519_BYTES) ||
              mbedtls_ecp_check_pubkey(&g, &q) ||
              mbedtls_ecdh_compute_shared(&g, &z, &q, &d, no_rng, NULL) ||
              mbedtls_mpi_write_binary_le(&z, shared, FL_X25519_BYTES) ||
              memcmp(shared, zero, FL_X25519_BYTES) == 0))
    rc = FL_EFORMAT;
  if (rc) memset(shared, 0, FL_X25519_BYTES);
  mbedtls_mpi_free(&d);
  mbedtls_mpi_free(&z);
  mbedtls_ecp_point_free(&q);
  mbedtls_ecp_group_free(&g);
  return rc;
}

int fl_hkdf_key(const uint8_t shared[FL_X25519_BYTES], const uint8_t *label, size_t label_len,
                uint8_t key[32]) {
  return mbedtls_hkdf(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), NULL, 0, shared,
                      FL_X25519_BYTES, label, label_len, key, 32) ? FL_EIO : 0;
}

int fl_x25519_derive(const uint8_t secret[FL_X25519_BYTES], const uint8_t peer[FL_X25519_BYTES],
                     const uint8_t *label, size_t label_len, uint8_t key[32]) {
  uint8_t shared[FL_X25519_BYTES];
  int rc = fl_x25519_agree(secret, peer, shared);
  if (!rc) rc = fl_hkdf_key(shared, label, label_len, key);
  memset(shared, 0, sizeof shared);
  return rc;
}

int fl_x25519_check(const uint8_t pub[FL_X25519_BYTES]) {
  /* Any clamped scalar will do: a small-order point gives the all-zero secret with every
   * one of them (they are multiples of the cofactor), a point off the curve fails to load. */
  static const uint8_t probe[FL_X25519_BYTES] = {0x48, 0x1f, 0x2a, 0x77, 0x05, 0x93, 0xc1, 0x0e,
                                                 0x6d, 0x52, 0xb8, 0x34, 0xe9, 0x80, 0x1c, 0x47,
                                                 0x2b, 0x9a, 0x63, 0xd0, 0x15, 0x7e, 0xa4, 0x38,
                                                 0xcf, 0x61, 0x0b, 0x8e, 0x53, 0x26, 0xf9, 0x5c};
  uint8_t key[32];
  static const uint8_t label[] = "fl x25519 check";
  int rc = fl_x25519_derive(probe, pub, label, sizeof label - 1, key);
  memset(key, 0, sizeof key);
  return rc;
}

int fl_seal(const uint8_t key[32], const uint8_t *ad, size_t ad_len, const uint8_t *in, size_t len,
            uint8_t *out) {
  mbedtls_chachapoly_context c;
  uint8_t nonce[12] = {0};
  mbedtls_chachapoly_init(&c);
  int rc = mbedtls_chachapoly_setkey(&c, key) ||
           mbedtls_chachapoly_encrypt_and_tag(&c, len, nonce, ad, ad_len, in, out, out + len);
  mbedtls_chachapoly_free(&c);
  return rc ? FL_EIO : 0;
}

int fl_open(const uint8_t key[32], const uint8_t *ad, size_t ad_len, const uint8_t *in, size_t len,
            uint8_t *out) {
  if (len < FL_SEAL_OVERHEAD) return FL_ECHECKSUM;
  mbedtls_chachapoly_context c;
  uint8_t nonce[12] = {0};
  mbedtls_chachapoly_init(&c);
  int rc = mbedtls_chachapoly_setkey(&c, key);
  if (!rc)
    rc = mbedtls_chachapoly_auth_decrypt(&c, len - FL_SEAL_OVERHEAD, nonce, ad, ad_len,
                                         in + len - FL_SEAL_OVERHEAD, in, out);
  mbedtls_chachapoly_free(&c);
  return rc ? FL_ECHECKSUM : 0;
}
