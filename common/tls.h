/* TLS settings shared by every connection of a process (mbedTLS 2.28).
 *
 * TLS 1.2 only, ECDHE with AEAD suites only (AES-GCM, ChaCha20-Poly1305, the faster
 * first).  Mutual authentication: a server requires a client certificate signed by its
 * CA (optionally checked against a CRL); a client verifies the server certificate and
 * its host name.  An fl_tls_config may be shared by connections on several loops and
 * threads: it is read-only once created, but for the client's session cache and the
 * server's ticket keys, which have their own locks.
 *
 * Session resumption (RFC 5077 session tickets): a server with a ticket lifetime hands
 * each client a ticket (ticket.h) holding its session, peer certificate included; a
 * client that keeps sessions offers it when it reconnects, and both skip the public-key
 * work.  A ticket opens only within the lifetime of the full handshake it came from,
 * under the same CA certificates, and only while the client's certificate is still
 * within its validity and not in the CRL: a resumed connection has the same identity,
 * and no more rights, than a full handshake would give it at that moment. */
#ifndef FL_TLS_H
#define FL_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_tls_options {
  int is_server;
  const char *ca_file;     /* PEM CA certificate(s) that sign the peer */
  const char *cert_file;   /* own certificate (PEM); a client may give none (tests) */
  const char *key_file;    /* own private key (PEM, PKCS#8 or SEC1); with cert_file */
  const char *crl_file;    /* optional PEM CRL (server side: revoked clients) */
  const char *server_name; /* client: host name the server certificate must carry
                            * (NULL: the host given to fl_connect) */
  int verify_optional;     /* server: accept clients without a certificate (tests only) */
  /* Server: session tickets.  ticket_lifetime in seconds (0: none; at most
   * FL_TICKET_MAX_LIFETIME); the keys rotate every lifetime.  ticket_key_file keeps them
   * (mode 0600) so clients resume after a restart; NULL: in memory. */
  unsigned ticket_lifetime;
  const char *ticket_key_file;
  uint64_t (*ticket_clock)(void *ctx); /* tests: the keys' clock (NULL: the system's) */
  void *ticket_clock_ctx;
  /* Client: keep the session of each server ("host:port") and offer it on reconnect. */
  int resume_sessions;
} fl_tls_options;

typedef struct fl_tls_config fl_tls_config;

/* Loads the files and builds the configuration; on error a message naming the file and
 * the problem goes to err.  The configuration is reference-counted: the caller holds one
 * reference, and every connection made with it holds one until it is freed (conn.h), so
 * the caller may drop its own with fl_tls_config_free while connections still use it. */
int fl_tls_config_create(const fl_tls_options *opt, fl_tls_config **out, char *err,
                         size_t errlen);
/* Server: a new configuration from opt's files (a renewed certificate and key, a new
 * CRL) that keeps old's session-ticket keys, so clients still resume across it.  The
 * caller owns the new one's reference; old is unchanged (connections made with it keep
 * it).  Same errors as fl_tls_config_create. */
int fl_tls_config_reload(const fl_tls_config *old, const fl_tls_options *opt,
                         fl_tls_config **out, char *err, size_t errlen);
/* Another reference (any thread). */
void fl_tls_config_ref(const fl_tls_config *cfg);
/* Drops a reference; the last one frees it (any thread). */
void fl_tls_config_free(fl_tls_config *cfg);

/* What identifies a peer's certificate for revocation: its issuer (a digest of its
 * name) and serial number.  All zero: no certificate. */
typedef struct fl_tls_cert_ref {
  uint8_t issuer[32];
  uint8_t serial[32];
  size_t serial_len;
} fl_tls_cert_ref;
/* 1 when cfg's CRL revokes the certificate ref names. */
int fl_tls_config_revokes(const fl_tls_config *cfg, const fl_tls_cert_ref *ref);

#endif
