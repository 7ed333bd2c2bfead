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

#endif
