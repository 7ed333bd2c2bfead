/* Session-ticket keys: sealing, opening, rotation and the key file (see ticket.h). */
#include "ticket.h"

#include <errno.h>
#include <mbedtls/chachapoly.h>
#include <mbedtls/platform_util.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zlib.h>

#include "error.h"
#include "fileio.h"
#include "log.h"

#define NAME_LEN 4
#define NONCE_LEN 12
#define TAG_LEN 16
#define KEY_LEN 32
#define HEAD_LEN (NAME_LEN + NONCE_LEN + 2)
#define MAGIC "FLTKEYS1"
#define REC_LEN (NAME_LEN + 8 + KEY_LEN)
#define MAX_KEYS 2

typedef struct key {
  uint8_t name[NAME_LEN];
  uint64_t created;
  uint8_t key[KEY_LEN];
} key;

struct fl_ticket_keys {
  pthread_mutex_t mu;
  char *path;                /* NULL: in memory only */
  uint32_t lifetime;
  fl_ticket_rng rng;
  void *rng_ctx;
  fl_ticket_clock clock;
  void *clock_ctx;
  key keys[MAX_KEYS];        /* [0] seals; [1] is the one before, still opening */
  int n;
};

static uint64_t system_clock(void *ctx) {
  (void)ctx;
  return (uint64_t)time(NULL);
}

static uint64_t now(const fl_ticket_keys *k) { return k->clock(k->clock_ctx); }

/* ---- the key file ---- */

static int save_file(const fl_ticket_keys *k, char *err, size_t errlen) {
  uint8_t img[8 + 4 + MAX_KEYS * REC_LEN + 4];
  size_t off = 0;
  memcpy(img, MAGIC, 8);
  fl_put32(img + 8, (uint32_t)k->n);
  off = 12;
  for (int i = 0; i < k->n; i++) {
    memcpy(img + off, k->keys[i].name, NAME_LEN);
    fl_put64(img + off + NAME_LEN, k->keys[i].created);
    memcpy(img + off + NAME_LEN + 8, k->keys[i].key, KEY_LEN);
    off += REC_LEN;
  }
  fl_put32(img + off, (uint32_t)crc32_z(0, img, off));
  off += 4;
  int rc = fl_file_write_private(k->path, img, off, err, errlen);
  mbedtls_platform_zeroize(img, sizeof img);
  return rc;
}

static int load_file(fl_ticket_keys *k, char *err, size_t errlen) {
  struct stat st;
  if (stat(k->path, &st) != 0) {
    if (errno == ENOENT) return FL_ENOENT;
    return fl_errf(err, errlen, FL_EIO, "ticket key file %s: %s", k->path, strerror(errno));
  }
  if (st.st_mode & 077)
    return fl_errf(err, errlen, FL_ECONFIG,
                   "ticket key file %s may be read by others (mode %04o): it opens every "
                   "session ticket; chmod 600 it or delete it to start with new keys",
                   k->path, (unsigned)(st.st_mode & 07777));
  uint8_t *b;
  size_t len;
  int rc = fl_file_read(k->path, &b, &len, err, errlen);
  if (rc) return rc;
  uint32_t n = len >= 12 ? fl_get32(b + 8) : 0;
  if (len < 12 + 4 || memcmp(b, MAGIC, 8) != 0 || n < 1 || n > MAX_KEYS ||
      len != 12 + (size_t)n * REC_LEN + 4) {
    rc = fl_errf(err, errlen, FL_EFORMAT,
                 "ticket key file %s: not a key file of this version (%zu bytes); delete it "
                 "to start with new keys", k->path, len);
  } else if (fl_get32(b + len - 4) != (uint32_t)crc32_z(0, b, len - 4)) {
    rc = fl_errf(err, errlen, FL_ECHECKSUM,
                 "ticket key file %s: CRC-32 mismatch (corrupt); delete it to start with new "
                 "keys", k->path);
  } else {
    k->n = (int)n;
    for (uint32_t i = 0; i < n; i++) {
      const uint8_t *r = b + 12 + i * REC_LEN;
      memcpy(k->keys[i].name, r, NAME_LEN);
      k->keys[i].created = fl_get64(r + NAME_LEN);
      memcpy(k->keys[i].key, r + NAME_LEN + 8, KEY_LEN);
    }
  }
  mbedtls_platform_zeroize(b, len);
  free(b);
  return rc;
}

/* ---- keys ---- */

/* A key is too old to seal after one lifetime, and to open after two. */
static int expired(const fl_ticket_keys *k, const key *key, uint64_t t, uint32_t lifetimes) {
  return key->created <= t && t - key->created >= (uint64_t)lifetimes * k->lifetime;
}

/* Called with the mutex held (or before the keys are shared).  A new key takes over
 * sealing; the one it replaces still opens. */
static int rotate(fl_ticket_keys *k, uint64_t t) {
  key fresh;
  if (k->rng(k->rng_ctx, fresh.name, NAME_LEN) != 0 || k->rng(k->rng_ctx, fresh.key, KEY_LEN) != 0)
    return FL_EIO;
  fresh.created = t;
  if (k->n > 0) k->keys[1] = k->keys[0];
  k->keys[0] = fresh;
  k->n = k->n > 0 ? 2 : 1;
  if (k->n == 2 && expired(k, &k->keys[1], t, 2)) k->n = 1;
  mbedtls_platform_zeroize(&fresh, sizeof fresh);
  return 0;
}

/* A rotation while serving: a key file that cannot be written is reported, and the new
 * key serves all the same (until a restart, which then finds the older keys). */
static int rotate_serving(fl_ticket_keys *k, uint64_t t) {
  int rc = rotate(k, t);
  if (rc || !k->path) return rc;
  char err[512];
  if (save_file(k, err, sizeof err) != 0)
    fl_warn("tls", "%s; the new session-ticket key is in memory only", err);
  else
    fl_debug("tls", "new session-ticket key, written to %s", k->path);
  return 0;
}

int fl_ticket_keys_create(const char *path, uint32_t lifetime_s, fl_ticket_rng rng,
                          void *rng_ctx, fl_ticket_clock clock, void *clock_ctx,
                          fl_ticket_keys **out, char *err, size_t errlen) {
  *out = NULL;
  if (lifetime_s < 1 || lifetime_s > FL_TICKET_MAX_LIFETIME || !rng)
    return fl_errf(err, errlen, FL_EINVAL, "session-ticket lifetime %u s: must be 1 to %u",
                   lifetime_s, FL_TICKET_MAX_LIFETIME);
  fl_ticket_keys *k = calloc(1, sizeof *k);
  if (!k) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  pthread_mutex_init(&k->mu, NULL);
  k->lifetime = lifetime_s;
  k->rng = rng;
  k->rng_ctx = rng_ctx;
  k->clock = clock ? clock : system_clock;
  k->clock_ctx = clock_ctx;
  int rc = 0;
  if (path && !(k->path = strdup(path))) {
    rc = fl_errf(err, errlen, FL_ENOMEM, "out of memory");
    goto fail;
  }
  uint64_t t = now(k);
  if (k->path) {
    rc = load_file(k, err, errlen);
    if (rc && rc != FL_ENOENT) goto fail;
    rc = 0;
    /* Keys a restart kept too long are dropped; the file is rewritten below if so. */
    int kept = 0;
    for (int i = 0; i < k->n; i++)
      if (!expired(k, &k->keys[i], t, 2)) k->keys[kept++] = k->keys[i];
    if (kept > 0 && k->keys[0].created > t) k->keys[0].created = t; /* clock went back */
    k->n = kept;
    if (k->n > 0) fl_info("tls", "session-ticket keys from %s", k->path);
  }
  if (k->n == 0 || expired(k, &k->keys[0], t, 1)) {
    if (rotate(k, t) != 0) {
      rc = fl_errf(err, errlen, FL_EIO, "no random bytes for a session-ticket key");
      goto fail;
    }
    if (k->path && (rc = save_file(k, err, errlen)) != 0) goto fail;
  }
  *out = k;
  return 0;
fail:
  fl_ticket_keys_free(k);
  return rc;
}

void fl_ticket_keys_free(fl_ticket_keys *k) {
  if (!k) return;
  pthread_mutex_destroy(&k->mu);
  free(k->path);
  mbedtls_platform_zeroize(k, sizeof *k);
  free(k);
}

uint32_t fl_ticket_lifetime(const fl_ticket_keys *k) { return k->lifetime; }
uint64_t fl_ticket_now(const fl_ticket_keys *k) { return now(k); }

/* ---- tickets ---- */

static void put16be(uint8_t *p, size_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static void put64be(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get64be(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}

int fl_ticket_seal(fl_ticket_keys *k, uint64_t start, const uint8_t *state, size_t len,
                   uint8_t *out, size_t cap, size_t *olen) {
  *olen = 0;
  if (len > 65535 - 8 || cap < FL_TICKET_OVERHEAD + len) return FL_ETOOBIG;
  key use;
  pthread_mutex_lock(&k->mu);
  uint64_t t = now(k);
  int rc = expired(k, &k->keys[0], t, 1) ? rotate_serving(k, t) : 0;
  use = k->keys[0];
  pthread_mutex_unlock(&k->mu);
  if (rc) return rc;
  uint8_t *nonce = out + NAME_LEN, *body = out + HEAD_LEN;
  memcpy(out, use.name, NAME_LEN);
  if (k->rng(k->rng_ctx, nonce, NONCE_LEN) != 0) {
    mbedtls_platform_zeroize(&use, sizeof use);
    return FL_EIO;
  }
  put16be(out + NAME_LEN + NONCE_LEN, 8 + len);
  put64be(body, start);
  memcpy(body + 8, state, len);
  mbedtls_chachapoly_context cp;
  mbedtls_chachapoly_init(&cp);
  int r = mbedtls_chachapoly_setkey(&cp, use.key);
  if (r == 0)
    r = mbedtls_chachapoly_encrypt_and_tag(&cp, 8 + len, nonce, out, HEAD_LEN, body, body,
                                           body + 8 + len);
  mbedtls_chachapoly_free(&cp);
  mbedtls_platform_zeroize(&use, sizeof use);
  if (r != 0) return FL_EIO;
  *olen = FL_TICKET_OVERHEAD + len;
  return 0;
}

int fl_ticket_open(fl_ticket_keys *k, uint8_t *buf, size_t len, uint64_t *start,
                   uint8_t **state, size_t *state_len) {
  *state = NULL;
  *state_len = 0;
  *start = 0;
  if (len < FL_TICKET_OVERHEAD) return FL_EFORMAT;
  size_t body_len = (size_t)buf[NAME_LEN + NONCE_LEN] << 8 | buf[NAME_LEN + NONCE_LEN + 1];
  if (body_len < 8 || HEAD_LEN + body_len + TAG_LEN != len) return FL_EFORMAT;
  key use;
  int found = 0;
  pthread_mutex_lock(&k->mu);
  uint64_t t = now(k);
  for (int i = 0; i < k->n && !found; i++)
    if (memcmp(k->keys[i].name, buf, NAME_LEN) == 0 && !expired(k, &k->keys[i], t, 2)) {
      use = k->keys[i];
      found = 1;
    }
  pthread_mutex_unlock(&k->mu);
  if (!found) return FL_EFORMAT;
  uint8_t *body = buf + HEAD_LEN;
  mbedtls_chachapoly_context cp;
  mbedtls_chachapoly_init(&cp);
  int r = mbedtls_chachapoly_setkey(&cp, use.key);
  if (r == 0)
    r = mbedtls_chachapoly_auth_decrypt(&cp, body_len, buf + NAME_LEN, buf, HEAD_LEN,
                                        body + body_len, body, body);
  mbedtls_chachapoly_free(&cp);
  mbedtls_platform_zeroize(&use, sizeof use);
  if (r != 0) return FL_EFORMAT;
  uint64_t s = get64be(body);
  if (s > t || t - s > k->lifetime) return FL_ETIMEDOUT;
  *start = s;
  *state = body + 8;
  *state_len = body_len - 8;
  return 0;
}
