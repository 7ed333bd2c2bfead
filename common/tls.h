/* TLS settings shared by every connection of a process (mbedTLS 2.28).
 *
 * TLS 1.2 only, ECDHE with AEAD suites only (AES-GCM, ChaCha20-Poly1305, the faster
 * first).  Mutual authentication: a server requires a client certificate signed by its
 * CA (optionally checked against a CRL); a client verifies the server certificate and
 * its host name.  An fl_tls_config is read-only once created and may be shared by
 * connections on several loops and threads. */
#ifndef FL_TLS_H
#define FL_TLS_H

#include <stddef.h>

typedef struct fl_tls_options {
  int is_server;
  const char *ca_file;     /* PEM CA certificate(s) that sign the peer */
  const char *cert_file;   /* own certificate (PEM); a client may give none (tests) */
  const char *key_file;    /* own private key (PEM, PKCS#8 or SEC1); with cert_file */
  const char *crl_file;    /* optional PEM CRL (server side: revoked clients) */
  const char *server_name; /* client: host name the server certificate must carry
                            * (NULL: the host given to fl_connect) */
  int verify_optional;     /* server: accept clients without a certificate (tests only) */
} fl_tls_options;

typedef struct fl_tls_config fl_tls_config;

/* Loads the files and builds the configuration; on error a message naming the file and
 * the problem goes to err.  Caller frees with fl_tls_config_free after every connection
 * using it is gone. */
int fl_tls_config_create(const fl_tls_options *opt, fl_tls_config **out, char *err,
                         size_t errlen);
void fl_tls_config_free(fl_tls_config *cfg);

#endif
