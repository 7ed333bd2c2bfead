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
 * state), and fl-client --clients 10000 holds one configuration per virtual client. */
#include "tls.h"
#include "tls_internal.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include "error.h"
#include "log.h"

struct fl_tls_config {
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

/* "what 'file': mbedTLS reason"; a missing or unreadable file is FL_ENOENT. */
static int load_error(char *err, size_t errlen, const char *what, const char *file, int r) {
  char msg[160];
  mbedtls_strerror(r, msg, sizeof msg);
  if (err && errlen) snprintf(err, errlen, "%s '%s': %s (-0x%04x)", what, file, msg, -r);
  return r == MBEDTLS_ERR_X509_FILE_IO_ERROR || r == MBEDTLS_ERR_PK_FILE_IO_ERROR
             ? FL_ENOENT : FL_ECONFIG;
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

int fl_tls_config_create(const fl_tls_options *opt, fl_tls_config **out, char *err,
                         size_t errlen) {
  if (err && errlen) err[0] = '\0';
  *out = NULL;
  if (!opt || !opt->ca_file || (opt->is_server && (!opt->cert_file || !opt->key_file)) ||
      (!opt->cert_file != !opt->key_file)) {
    if (err && errlen)
      snprintf(err, errlen, "a CA file is required, and a certificate with its key%s",
               opt && opt->is_server ? "" : " (or neither, on a client)");
    return FL_EINVAL;
  }
  fl_tls_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg) return FL_ENOMEM;
  cfg->is_server = opt->is_server;
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
  if ((r = mbedtls_x509_crt_parse_file(&cfg->ca, opt->ca_file)) != 0) {
    rc = load_error(err, errlen, "CA file", opt->ca_file, r);
    goto fail;
  }
  if (opt->crl_file) {
    if ((r = mbedtls_x509_crl_parse_file(&cfg->crl, opt->crl_file)) != 0) {
      rc = load_error(err, errlen, "CRL file", opt->crl_file, r);
      goto fail;
    }
    cfg->have_crl = 1;
  }
  if (opt->cert_file) {
    if ((r = mbedtls_x509_crt_parse_file(&cfg->cert, opt->cert_file)) != 0) {
      rc = load_error(err, errlen, "certificate file", opt->cert_file, r);
      goto fail;
    }
    if ((r = mbedtls_pk_parse_keyfile(&cfg->key, opt->key_file, NULL)) != 0) {
      rc = load_error(err, errlen, "key file", opt->key_file, r);
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
  fl_debug("tls", "%s configuration ready (CA %s%s%s)", opt->is_server ? "server" : "client",
           opt->ca_file, cfg->have_crl ? ", CRL " : "", cfg->have_crl ? opt->crl_file : "");
  *out = cfg;
  return 0;

fail:
  fl_tls_config_free(cfg);
  return rc;
}

void fl_tls_config_free(fl_tls_config *cfg) {
  if (!cfg) return;
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
