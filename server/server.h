/* The aggregation server: connections, rounds, aggregation, evaluation, metrics. */
#ifndef FL_SERVER_H
#define FL_SERVER_H

#include "config.h"

typedef struct server server;

/* Builds everything the configuration names (model, data, TLS, listener); on error a
 * message in err.  The configuration must outlive the server. */
int server_create(const server_config *cfg, server **out, char *err, size_t errlen);
/* Runs rounds until the configured number is done or a signal stops it; writes the final
 * model.  0 on success, FL_E* otherwise. */
int server_run(server *s);
void server_free(server *s);

#endif
