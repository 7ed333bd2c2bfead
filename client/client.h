/* The virtual clients of one fl-client process (see client.c). */
#ifndef FL_CLIENT_H
#define FL_CLIENT_H

#include "config.h"

typedef struct app app;

/* Loads the data, certificates and partitions the configuration names; on error a
 * message in err.  The configuration must outlive the app. */
int app_create(const client_config *cfg, app **out, char *err, size_t errlen);
/* Connects every virtual client and serves the server until all are done.  0 when every
 * client finished normally, FL_ECLOSED when some gave up. */
int app_run(app *a);
void app_free(app *a);

#endif
