/* TLS configuration shared by every connection of a process (see tls.h).
 *
 * Everything here is set up once and then only read, so one fl_tls_config serves
 * connections on several loops and threads.  The one piece of mbedTLS state that changes
 * in use is the CTR-DRBG: this mbedTLS is built with MBEDTLS_THREADING_C (pthread), which
 * gives the DRBG and the entropy pool their own mutex; without it we lock around the DRBG.
 * Keys are only read: mbedTLS copies an ECKEY's group for each signature or
 * verification, so its lazily built tables never live in the shared key.
 *
 * Every configuration has its own DRBG, but they all seed from one entropy source for
 * the process: mbedTLS's entropy context is ~37 KB here (Debian builds in the HAVEGE
 * state), and fl-client --clients 10000 holds one configuration per virtual client.
 *
 * Resumption: the server's ticket callbacks seal and open its session state with
 * ticket.h, bound to a digest of the CA certificates and re-checked against the
 * certificate's validity and the CRL when opened.  A client keeps a few sessions, one per
 * server, serialized (mbedtls_ssl_session_save: about 1.5 KB with the ticket and the
 * server certificate), since a simulation keeps one per virtual client. */
#include "tls.h"
#include "tls_internal.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <stdatomic.h>

#include "error.h"
#include "log.h"
#include "ticket.h"

#define CACHE_SLOTS 4 /* servers whose sessions a client keeps */
#define ANCHORS_LEN 32

typedef struct cached_session {
  char *server;        /* "host:port" */
  uint8_t *blob;       /* mbedtls_ssl_session_save() */
  size_t len;
  uint64_t used;       /* the cache's tick when last kept: the oldest goes first */
} cached_session;

typedef struct session_cache {
  pthread_mutex_t mu;
  uint64_t tick;
  cached_session slot[CACHE_SLOTS];
} session_cache;

struct fl_tls_config {
  atomic_int refs;              /* the creator's, and one per connection using it */
  int is_server;
  char *server_name;
  int have_entropy;             /* holds a reference to the shared entropy source */
  mbedtls_ctr_drbg_context drbg;
#if !defined(MBEDTLS_THREADING_C)
  pthread_mutex_t rng_lock;
#endif
  mbedtls_x509_crt ca;
  mbedtls_x509_crt cert;
  mbedtls_x509_crl crl;
  int have_cert, have_crl;
  mbedtls_pk_context key;
  mbedtls_ssl_config conf;
  int verify_optional;
  /* server: session tickets (the keys shared with the configurations reloaded from this
   * one, ticket_refs counting them) */
  fl_ticket_keys *tickets;
  atomic_int *ticket_refs;
  uint8_t anchors[ANCHORS_LEN]; /* SHA-256 over the CA certificates */
  /* client: kept sessions (NULL unless resume_sessions) */
  session_cache *cache;
};

/* ChaCha20-Poly1305 first: with mbedTLS 2.28 on x86-64 it is faster than AES-GCM
 * (bench/bench_tls.c measures both; ~380 vs ~290 MB/s on the reference machine). */
static const int suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    0,
};

static const mbedtls_ecp_group_id curves[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_NONE,
};

/* The shared entropy source, created by its first user and freed by its last. */
static pthread_mutex_t entropy_lock = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context entropy;
static unsigned entropy_users;

static void entropy_ref(void) {
  pthread_mutex_lock(&entropy_lock);
  if (entropy_users++ == 0) mbedtls_entropy_init(&entropy);
  pthread_mutex_unlock(&entropy_lock);
}

static void entropy_unref(void) {
  pthread_mutex_lock(&entropy_lock);
  if (--entropy_users == 0) mbedtls_entropy_free(&entropy);
  pthread_mutex_unlock(&entropy_lock);
}

/* The DRBGs' entropy callback (at seeding and reseeding, from any thread). */
static int entropy_func(void *ctx, unsigned char *out, size_t len) {
  (void)ctx;
  pthread_mutex_lock(&entropy_lock);
  int r = mbedtls_entropy_func(&entropy, out, len);
  pthread_mutex_unlock(&entropy_lock);
  return r;
}

static int rng(void *ctx, unsigned char *out, size_t len) {
  fl_tls_config *cfg = ctx;
#if defined(MBEDTLS_THREADING_C)
  return mbedtls_ctr_drbg_random(&cfg->drbg, out, len);
#else
  pthread_mutex_lock(&cfg->rng_lock);
  int r = mbedtls_ctr_drbg_random(&cfg->drbg, out, len);
  pthread_mutex_unlock(&cfg->rng_lock);
  return r;
#endif
}

/* Why a file mbedTLS could not read cannot be read, from the system ("No such file or
 * directory", "Permission denied", "Is a directory"), or NULL when it can be. */
static const char *unreadable(const char *file) {
  struct stat st;
  if (stat(file, &st) != 0) return strerror(errno);
  if (S_ISDIR(st.st_mode)) return strerror(EISDIR);
  int fd = open(file, O_RDONLY);
  if (fd < 0) return strerror(errno);
  close(fd);
  return NULL;
}

/* "what 'file': mbedTLS reason"; FL_ENOENT when mbedTLS could not read it. */
static int load_error(char *err, size_t errlen, const char *what, const char *file, int r) {
  char msg[160];
  if (r == MBEDTLS_ERR_X509_FILE_IO_ERROR || r == MBEDTLS_ERR_PK_FILE_IO_ERROR) {
    if (err && errlen) snprintf(err, errlen, "%s '%s': cannot be read", what, file);
    return FL_ENOENT;
  }
  mbedtls_strerror(r, msg, sizeof msg);
  if (err && errlen) snprintf(err, errlen, "%s '%s': %s (-0x%04x)", what, file, msg, -r);
  return FL_ECONFIG;
}

/* A file mbedTLS is about to load, checked first: mbedTLS reads a directory as a file of
 * absurd length (and asks for that much memory).  0, or FL_ENOENT with the system's
 * reason ("No such file or directory", "Permission denied", "Is a directory"). */
static int check_readable(char *err, size_t errlen, const char *what, const char *file) {
  const char *why = unreadable(file);
  if (!why) return 0;
  if (err && errlen) snprintf(err, errlen, "%s '%s': %s", what, file, why);
  return FL_ENOENT;
}

/* A file mbedTLS failed to load: the system's reason when it cannot be read at all,
 * mbedTLS's otherwise (a file it could read but not parse). */
static int file_error(char *err, size_t errlen, const char *what, const char *file, int r) {
  int rc = check_readable(err, errlen, what, file);
  return rc ? rc : load_error(err, errlen, what, file, r);
}

/* Signs once with our key (catches a key the parser accepted but cannot use) and warns
 * when our certificate does not verify against the CA; only a warning, since it may come
 * from another CA than the peer's. */
static int check_own(fl_tls_config *cfg, char *err, size_t errlen) {
  if (!cfg->have_cert) return 0;
  unsigned char hash[32], sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
  memset(hash, 0x5a, sizeof hash);
  size_t sig_len = 0;
  int r = mbedtls_pk_sign(&cfg->key, MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &sig_len, rng, cfg);
  if (r != 0) return load_error(err, errlen, "signing with the key of", "(own certificate)", r);
  uint32_t flags = 0;
  if (mbedtls_x509_crt_verify(&cfg->cert, &cfg->ca, cfg->have_crl ? &cfg->crl : NULL, NULL,
                              &flags, NULL, NULL) != 0) {
    char why[256];
    mbedtls_x509_crt_verify_info(why, sizeof why, "", flags);
    for (char *p = why; *p; p++)
      if (*p == '\n') *p = ' ';
    fl_warn("tls", "own certificate does not verify against the CA: %s", why);
  }
  return 0;
}

/* ---- server: session tickets ---- */

static void digest_anchors(fl_tls_config *cfg) {
  mbedtls_sha256_context h;
  mbedtls_sha256_init(&h);
  mbedtls_sha256_starts_ret(&h, 0);
  for (const mbedtls_x509_crt *c = &cfg->ca; c && c->raw.len; c = c->next)
    mbedtls_sha256_update_ret(&h, c->raw.p, c->raw.len);
  mbedtls_sha256_finish_ret(&h, cfg->anchors);
  mbedtls_sha256_free(&h);
}

/* Ticket state: the CA digest, then the session as mbedtls_ssl_session_save writes it
 * (master secret, suite, peer certificate). */
static int ticket_write(void *p, const mbedtls_ssl_session *session, unsigned char *start,
                        const unsigned char *end, size_t *tlen, uint32_t *lifetime) {
  fl_tls_config *cfg = p;
  *tlen = 0;
  *lifetime = fl_ticket_lifetime(cfg->tickets);
  size_t need = 0;
  mbedtls_ssl_session_save(session, NULL, 0, &need);
  uint8_t *state = malloc(ANCHORS_LEN + need);
  if (!state) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  memcpy(state, cfg->anchors, ANCHORS_LEN);
  int r = mbedtls_ssl_session_save(session, state + ANCHORS_LEN, need, &need);
  /* The session's start on the keys' clock (the same as mbedTLS's but in tests): its
   * full handshake, however many resumptions ago, bounds the ticket's life. */
  time_t t = time(NULL);
  uint64_t age = t > session->start ? (uint64_t)(t - session->start) : 0;
  uint64_t began = fl_ticket_now(cfg->tickets) - age;
  if (r == 0 && fl_ticket_seal(cfg->tickets, began, state, ANCHORS_LEN + need, start,
                               (size_t)(end - start), tlen) != 0)
    r = MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
  mbedtls_platform_zeroize(state, ANCHORS_LEN + need);
  free(state);
  return r;
}

static void digest(const unsigned char *p, size_t len, uint8_t out[32]) {
  mbedtls_sha256_ret(p, len, out, 0);
}

void fl__tls_cert_ref(const mbedtls_x509_crt *crt, fl_tls_cert_ref *out) {
  memset(out, 0, sizeof *out);
  if (!crt || crt->serial.len == 0 || crt->serial.len > sizeof out->serial) return;
  digest(crt->issuer_raw.p, crt->issuer_raw.len, out->issuer);
  memcpy(out->serial, crt->serial.p, crt->serial.len);
  out->serial_len = crt->serial.len;
}

int fl_tls_config_revokes(const fl_tls_config *cfg, const fl_tls_cert_ref *ref) {
  if (!cfg || !cfg->have_crl || !ref || !ref->serial_len) return 0;
  for (const mbedtls_x509_crl *crl = &cfg->crl; crl && crl->version; crl = crl->next) {
    uint8_t issuer[32];
    digest(crl->issuer_raw.p, crl->issuer_raw.len, issuer);
    if (memcmp(issuer, ref->issuer, sizeof issuer) != 0) continue;
    for (const mbedtls_x509_crl_entry *e = &crl->entry; e && e->serial.len; e = e->next)
      if (e->serial.len == ref->serial_len && memcmp(e->serial.p, ref->serial, ref->serial_len) == 0)
        return 1;
  }
  return 0;
}

static int revoked(const fl_tls_config *cfg, const mbedtls_x509_crt *crt) {
  if (!cfg->have_crl) return 0;
  for (const mbedtls_x509_crl *crl = &cfg->crl; crl && crl->version; crl = crl->next)
    if (crl->issuer_raw.len == crt->issuer_raw.len &&
        memcmp(crl->issuer_raw.p, crt->issuer_raw.p, crt->issuer_raw.len) == 0 &&
        mbedtls_x509_crt_is_revoked(crt, crl))
      return 1;
  return 0;
}

/* Bytes from the network: a ticket we cannot open, or whose client may no longer connect,
 * is refused, and the handshake goes on as a full one (which checks everything anew). */
static int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf, size_t len) {
  fl_tls_config *cfg = p;
  uint64_t began;
  uint8_t *state;
  size_t state_len;
  int rc = fl_ticket_open(cfg->tickets, buf, len, &began, &state, &state_len);
  if (rc == FL_ETIMEDOUT) {
    fl_debug("tls", "session ticket expired: full handshake");
    return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
  }
  if (rc) return MBEDTLS_ERR_SSL_INVALID_MAC;
  if (state_len < ANCHORS_LEN || memcmp(state, cfg->anchors, ANCHORS_LEN) != 0) {
    fl_debug("tls", "session ticket from before a change of CA certificates: full handshake");
    return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
  }
  int r = mbedtls_ssl_session_load(session, state + ANCHORS_LEN, state_len - ANCHORS_LEN);
  mbedtls_platform_zeroize(state, state_len);
  if (r != 0) return MBEDTLS_ERR_SSL_INVALID_MAC;
  const mbedtls_x509_crt *crt = session->peer_cert;
  if (!crt) return cfg->verify_optional ? 0 : MBEDTLS_ERR_SSL_INVALID_MAC;
  const char *why = NULL;
  if (mbedtls_x509_time_is_past(&crt->valid_to)) why = "expired";
  else if (mbedtls_x509_time_is_future(&crt->valid_from)) why = "not yet valid";
  else if (revoked(cfg, crt)) why = "revoked";
  if (why) {
    fl_info("tls", "session ticket of a client whose certificate is %s: refused", why);
    return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
  }
  return 0;
}

/* ---- client: kept sessions ---- */

static cached_session *find_slot(session_cache *sc, const char *server) {
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (sc->slot[i].server && strcmp(sc->slot[i].server, server) == 0) return &sc->slot[i];
  return NULL;
}

static void clear_slot(cached_session *s) {
  free(s->server);
  if (s->blob) mbedtls_platform_zeroize(s->blob, s->len);
  free(s->blob);
  memset(s, 0, sizeof *s);
}

int fl__tls_session_offer(const fl_tls_config *cfg, const char *server, mbedtls_ssl_context *ssl) {
  session_cache *sc = cfg->cache;
  if (!sc) return 0;
  mbedtls_ssl_session s;
  mbedtls_ssl_session_init(&s);
  int offered = 0;
  pthread_mutex_lock(&sc->mu);
  cached_session *slot = find_slot(sc, server);
  if (slot && mbedtls_ssl_session_load(&s, slot->blob, slot->len) == 0) {
    /* The server said how long its ticket lasts: one past it is not worth sending. */
    time_t t = time(NULL);
    if (s.ticket_lifetime && (t < s.start || (uint64_t)(t - s.start) > s.ticket_lifetime))
      clear_slot(slot);
    else
      offered = mbedtls_ssl_set_session(ssl, &s) == 0;
  }
  pthread_mutex_unlock(&sc->mu);
  mbedtls_ssl_session_free(&s);
  return offered;
}

void fl__tls_session_keep(const fl_tls_config *cfg, const char *server,
                          const mbedtls_ssl_context *ssl) {
  session_cache *sc = cfg->cache;
  if (!sc) return;
  mbedtls_ssl_session s;
  mbedtls_ssl_session_init(&s);
  uint8_t *blob = NULL;
  size_t len = 0;
  if (mbedtls_ssl_get_session(ssl, &s) == 0 && s.ticket_len > 0) {
    mbedtls_ssl_session_save(&s, NULL, 0, &len);
    blob = malloc(len ? len : 1);
    if (blob && mbedtls_ssl_session_save(&s, blob, len, &len) != 0) {
      free(blob);
      blob = NULL;
    }
  }
  mbedtls_ssl_session_free(&s);
  pthread_mutex_lock(&sc->mu);
  cached_session *slot = find_slot(sc, server);
  if (!blob) { /* no ticket this time: nothing to resume */
    if (slot) clear_slot(slot);
  } else {
    char *name = slot ? NULL : strdup(server);
    if (!slot && name) {
      slot = &sc->slot[0];
      for (int i = 1; i < CACHE_SLOTS; i++)
        if (sc->slot[i].used < slot->used) slot = &sc->slot[i];
      clear_slot(slot);
      slot->server = name;
    }
    if (slot) {
      if (slot->blob) mbedtls_platform_zeroize(slot->blob, slot->len);
      free(slot->blob);
      slot->blob = blob;
      slot->len = len;
      slot->used = ++sc->tick;
      blob = NULL;
    }
  }
  pthread_mutex_unlock(&sc->mu);
  if (blob) {
    mbedtls_platform_zeroize(blob, len);
    free(blob);
  }
}

void fl__tls_session_forget(const fl_tls_config *cfg, const char *server) {
  session_cache *sc = cfg->cache;
  if (!sc) return;
  pthread_mutex_lock(&sc->mu);
  cached_session *slot = find_slot(sc, server);
  if (slot) clear_slot(slot);
  pthread_mutex_unlock(&sc->mu);
}

/* ---- the configuration ---- */

/* A configuration from opt; a reload's shares the ticket keys of shared_tickets. */
static int create(const fl_tls_options *opt, const fl_tls_config *shared_tickets,
                  fl_tls_config **out, char *err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  *out = NULL;
  if (!opt || !opt->ca_file || (opt->is_server && (!opt->cert_file || !opt->key_file)) ||
      (!opt->cert_file != !opt->key_file)) {
    if (err && errlen)
      snprintf(err, errlen, "a CA file is required, and a certificate with its key%s",
               opt && opt->is_server ? "" : " (or neither, on a client)");
    return FL_EINVAL;
  }
  if (opt->is_server && opt->ticket_lifetime > FL_TICKET_MAX_LIFETIME) {
    if (err && errlen)
      snprintf(err, errlen, "session-ticket lifetime %u s: at most %u (7 days)",
               opt->ticket_lifetime, FL_TICKET_MAX_LIFETIME);
    return FL_EINVAL;
  }
  fl_tls_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg) return FL_ENOMEM;
  atomic_init(&cfg->refs, 1);
  cfg->is_server = opt->is_server;
  cfg->verify_optional = opt->is_server && opt->verify_optional;
  entropy_ref();
  cfg->have_entropy = 1;
  mbedtls_ctr_drbg_init(&cfg->drbg);
#if !defined(MBEDTLS_THREADING_C)
  pthread_mutex_init(&cfg->rng_lock, NULL);
#endif
  mbedtls_x509_crt_init(&cfg->ca);
  mbedtls_x509_crt_init(&cfg->cert);
  mbedtls_x509_crl_init(&cfg->crl);
  mbedtls_pk_init(&cfg->key);
  mbedtls_ssl_config_init(&cfg->conf);

  int rc, r;
  if (opt->server_name && !(cfg->server_name = strdup(opt->server_name))) {
    rc = FL_ENOMEM;
    goto fail;
  }
  static const char pers[] = "fl-tls";
  r = mbedtls_ctr_drbg_seed(&cfg->drbg, entropy_func, NULL,
                            (const unsigned char *)pers, sizeof pers - 1);
  if (r != 0) {
    rc = load_error(err, errlen, "seeding the random generator from", "entropy", r);
    goto fail;
  }
  if ((rc = check_readable(err, errlen, "CA file", opt->ca_file)) != 0) goto fail;
  if ((r = mbedtls_x509_crt_parse_file(&cfg->ca, opt->ca_file)) != 0) {
    rc = file_error(err, errlen, "CA file", opt->ca_file, r);
    goto fail;
  }
  if (opt->crl_file) {
    if ((rc = check_readable(err, errlen, "CRL file", opt->crl_file)) != 0) goto fail;
    if ((r = mbedtls_x509_crl_parse_file(&cfg->crl, opt->crl_file)) != 0) {
      rc = file_error(err, errlen, "CRL file", opt->crl_file, r);
      goto fail;
    }
    cfg->have_crl = 1;
    /* An expired CRL makes every client's verification fail (mbedTLS: "The CRL is
     * expired"): refused here as it would be at run time, with the date. */
    for (const mbedtls_x509_crl *crl = &cfg->crl; crl && crl->version; crl = crl->next)
      if (crl->next_update.year && mbedtls_x509_time_is_past(&crl->next_update)) {
        const mbedtls_x509_time *t = &crl->next_update;
        snprintf(err, errlen, "CRL file %s expired on %04d-%02d-%02dT%02d:%02d:%02dZ (its next "
                 "update): every client would be refused; install a fresh CRL", opt->crl_file,
                 t->year, t->mon, t->day, t->hour, t->min, t->sec);
        rc = FL_ECERT;
        goto fail;
      }
  }
  if (opt->cert_file) {
    if ((rc = check_readable(err, errlen, "certificate file", opt->cert_file)) != 0) goto fail;
    if ((r = mbedtls_x509_crt_parse_file(&cfg->cert, opt->cert_file)) != 0) {
      rc = file_error(err, errlen, "certificate file", opt->cert_file, r);
      goto fail;
    }
    if ((rc = check_readable(err, errlen, "key file", opt->key_file)) != 0) goto fail;
    if ((r = mbedtls_pk_parse_keyfile(&cfg->key, opt->key_file, NULL)) != 0) {
      rc = file_error(err, errlen, "key file", opt->key_file, r);
      goto fail;
    }
    if ((r = mbedtls_pk_check_pair(&cfg->cert.pk, &cfg->key)) != 0) {
      rc = load_error(err, errlen, "key file (does not match the certificate)",
                      opt->key_file, r);
      goto fail;
    }
    cfg->have_cert = 1;
  }

  mbedtls_ssl_config *c = &cfg->conf;
  r = mbedtls_ssl_config_defaults(c, opt->is_server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                  MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
  if (r != 0) {
    rc = load_error(err, errlen, "TLS defaults for", "config", r);
    goto fail;
  }
  mbedtls_ssl_conf_min_version(c, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_max_version(c, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(c, suites);
  mbedtls_ssl_conf_curves(c, curves);
  mbedtls_ssl_conf_rng(c, rng, cfg);
  mbedtls_ssl_conf_renegotiation(c, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
  mbedtls_ssl_conf_authmode(c, opt->is_server && opt->verify_optional ? MBEDTLS_SSL_VERIFY_OPTIONAL
                                                                      : MBEDTLS_SSL_VERIFY_REQUIRED);
  mbedtls_ssl_conf_ca_chain(c, &cfg->ca, cfg->have_crl ? &cfg->crl : NULL);
  if (cfg->have_cert && (r = mbedtls_ssl_conf_own_cert(c, &cfg->cert, &cfg->key)) != 0) {
    rc = load_error(err, errlen, "certificate", opt->cert_file, r);
    goto fail;
  }
  if ((rc = check_own(cfg, err, errlen)) < 0) goto fail;
  if (opt->is_server && shared_tickets) { /* a reload: the keys go on */
    digest_anchors(cfg);
    cfg->tickets = shared_tickets->tickets;
    cfg->ticket_refs = shared_tickets->ticket_refs;
    atomic_fetch_add(cfg->ticket_refs, 1);
    mbedtls_ssl_conf_session_tickets_cb(c, ticket_write, ticket_parse, cfg);
  } else if (opt->is_server && opt->ticket_lifetime) {
    digest_anchors(cfg);
    if (!(cfg->ticket_refs = malloc(sizeof *cfg->ticket_refs))) {
      rc = FL_ENOMEM;
      goto fail;
    }
    atomic_init(cfg->ticket_refs, 1);
    rc = fl_ticket_keys_create(opt->ticket_key_file, opt->ticket_lifetime, rng, cfg,
                               opt->ticket_clock, opt->ticket_clock_ctx, &cfg->tickets, err, errlen);
    if (rc) goto fail;
    mbedtls_ssl_conf_session_tickets_cb(c, ticket_write, ticket_parse, cfg);
  }
  if (!opt->is_server) {
    mbedtls_ssl_conf_session_tickets(c, opt->resume_sessions ? MBEDTLS_SSL_SESSION_TICKETS_ENABLED
                                                             : MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
    if (opt->resume_sessions) {
      if (!(cfg->cache = calloc(1, sizeof *cfg->cache))) {
        rc = FL_ENOMEM;
        goto fail;
      }
      pthread_mutex_init(&cfg->cache->mu, NULL);
    }
  }
  fl_debug("tls", "%s configuration ready (CA %s%s%s)", opt->is_server ? "server" : "client",
           opt->ca_file, cfg->have_crl ? ", CRL " : "", cfg->have_crl ? opt->crl_file : "");
  *out = cfg;
  return 0;

fail:
  fl_tls_config_free(cfg);
  return rc;
}

int fl_tls_config_create(const fl_tls_options *opt, fl_tls_config **out, char *err,
                         size_t errlen) {
  return create(opt, NULL, out, err, errlen);
}

int fl_tls_config_reload(const fl_tls_config *old, const fl_tls_options *opt,
                         fl_tls_config **out, char *err, size_t errlen) {
  if (!old || !opt || !old->is_server || !opt->is_server) return FL_EINVAL;
  return create(opt, old->tickets ? old : NULL, out, err, errlen);
}

void fl_tls_config_ref(const fl_tls_config *cfg) {
  if (cfg) atomic_fetch_add(&((fl_tls_config *)cfg)->refs, 1);
}

void fl_tls_config_free(fl_tls_config *cfg) {
  if (!cfg || atomic_fetch_sub(&cfg->refs, 1) > 1) return;
  if (cfg->ticket_refs && atomic_fetch_sub(cfg->ticket_refs, 1) == 1) {
    fl_ticket_keys_free(cfg->tickets);
    free(cfg->ticket_refs);
  }
  if (cfg->cache) {
    for (int i = 0; i < CACHE_SLOTS; i++) clear_slot(&cfg->cache->slot[i]);
    pthread_mutex_destroy(&cfg->cache->mu);
    free(cfg->cache);
  }
  mbedtls_ssl_config_free(&cfg->conf);
  mbedtls_pk_free(&cfg->key);
  mbedtls_x509_crl_free(&cfg->crl);
  mbedtls_x509_crt_free(&cfg->cert);
  mbedtls_x509_crt_free(&cfg->ca);
  mbedtls_ctr_drbg_free(&cfg->drbg);
  if (cfg->have_entropy) entropy_unref();
#if !defined(MBEDTLS_THREADING_C)
  pthread_mutex_destroy(&cfg->rng_lock);
#endif
  free(cfg->server_name);
  free(cfg);
}

const mbedtls_ssl_config *fl__tls_ssl_config(const fl_tls_config *cfg) { return &cfg->conf; }
int fl__tls_is_server(const fl_tls_config *cfg) { return cfg->is_server; }
const char *fl__tls_server_name(const fl_tls_config *cfg) { return cfg->server_name; }
int fl__tls_keeps_sessions(const fl_tls_config *cfg) { return cfg->cache != NULL; }
