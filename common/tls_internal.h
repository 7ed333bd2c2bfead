/* What conn.c needs from an fl_tls_config; not part of the public interface.
 * Internal symbols carry the double prefix fl__. */
#ifndef FL_TLS_INTERNAL_H
#define FL_TLS_INTERNAL_H

#include <mbedtls/ssl.h>

#include "tls.h"

/* The shared mbedTLS configuration; read-only, valid as long as the fl_tls_config. */
const mbedtls_ssl_config *fl__tls_ssl_config(const fl_tls_config *cfg);
int fl__tls_is_server(const fl_tls_config *cfg);
/* Client: the name the server certificate must carry, or NULL (use the connect host). */
const char *fl__tls_server_name(const fl_tls_config *cfg);

/* Client with resume_sessions (otherwise these do nothing).  server is "host:port".
 * Before the handshake: offers the session kept for server, if any (1 if offered).
 * After it: keeps the session ssl now has (a resumed one keeps its ticket).  After a
 * failed handshake: forgets it, so the next attempt is a full handshake. */
int fl__tls_keeps_sessions(const fl_tls_config *cfg);
int fl__tls_session_offer(const fl_tls_config *cfg, const char *server, mbedtls_ssl_context *ssl);
void fl__tls_session_keep(const fl_tls_config *cfg, const char *server,
                          const mbedtls_ssl_context *ssl);
void fl__tls_session_forget(const fl_tls_config *cfg, const char *server);

/* The revocation identity of a certificate (tls.h). */
void fl__tls_cert_ref(const mbedtls_x509_crt *crt, fl_tls_cert_ref *out);

#endif
