/* fl-server's log budgets per client identity (a certificate's name), which outlive its
 * connections: a client that reconnects again and again gets no fresh budget.
 *
 * Two budgets an identity (log_budget.h): lines about its messages, by round (refusals,
 * error reports, unexpected messages: srv_client_log_ok), and lines about its
 * connections, by minute (connected, refused at hello, ready, goodbye, disconnected:
 * srv_id_log_ok).  Each budget's notices (lines start being left out; how many were)
 * come once a period at most, whatever the client does: the count of a round's message
 * lines when the round ends, that of a minute's connection lines with the identity's
 * next one.  The identities live in an open-addressing table that only grows, with
 * one entry for each identity that ever connected: as many as the CA gave certificates
 * to, at most. */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server_internal.h"

enum {
  CLIENT_LOG_LINES = 20,  /* a round, about its messages */
  ID_LOG_LINES = 12,      /* a minute, about its connections: four whole ones */
  ID_LOG_WINDOW_MS = 60000
};

struct id_log {
  char id[128];           /* "" for a free slot */
  fl_log_budget msgs, conns;
};

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ULL;
  return h;
}

/* The slot of id in a table of cap (a power of two) slots: its own, or the free one
 * where it goes. */
static struct id_log *slot(struct id_log *t, size_t cap, const char *id) {
  size_t i = (size_t)hash(id) & (cap - 1);
  while (t[i].id[0] && strcmp(t[i].id, id) != 0) i = (i + 1) & (cap - 1);
  return &t[i];
}

/* The entry of the client's identity, added if new; NULL when out of memory. */
static struct id_log *entry(client *c) {
  server *s = c->srv;
  const char *id = c->id[0] ? c->id : "?";
  if (2 * (s->id_logs_n + 1) > s->id_logs_cap) { /* at most half full */
    size_t cap = s->id_logs_cap ? 2 * s->id_logs_cap : 64;
    struct id_log *t = calloc(cap, sizeof *t);
    if (!t) return NULL;
    for (size_t i = 0; i < s->id_logs_cap; i++)
      if (s->id_logs[i].id[0]) *slot(t, cap, s->id_logs[i].id) = s->id_logs[i];
    free(s->id_logs);
    s->id_logs = t, s->id_logs_cap = cap;
  }
  struct id_log *e = slot(s->id_logs, s->id_logs_cap, id);
  if (!e->id[0]) {
    snprintf(e->id, sizeof e->id, "%s", id);
    s->id_logs_n++;
  }
  return e;
}

int srv_client_log_ok(client *c) {
  struct id_log *e = entry(c);
  if (!e) return 1;
  uint64_t n, round; /* n is 0: srv_client_logs_said says it when a round ends */
  int k = fl_log_budget_take(&e->msgs, CLIENT_LOG_LINES, c->srv->r.number, &n, &round);
  if (k == FL_LOG_FIRST_SKIP)
    fl_warn("server", "%s: %d lines about its messages this round; the rest of the round's "
            "are counted, not logged", c->id, CLIENT_LOG_LINES);
  return k == FL_LOG_TAKE;
}

int srv_id_log_ok(client *c) {
  struct id_log *e = entry(c);
  if (!e) return 1;
  uint64_t n, in;
  int k = fl_log_budget_take(&e->conns, ID_LOG_LINES, uv_now(&c->srv->loop) / ID_LOG_WINDOW_MS,
                             &n, &in);
  if (n)
    fl_warn("server", "%s: %llu more lines about its connections were not logged", c->id,
            (unsigned long long)n);
  if (k == FL_LOG_FIRST_SKIP)
    fl_warn("server", "%s: %d lines about its connections within a minute; more are counted, "
            "not logged", c->id, ID_LOG_LINES);
  return k == FL_LOG_TAKE;
}

void srv_client_logs_said(server *s) {
  for (size_t i = 0; i < s->id_logs_cap; i++) {
    struct id_log *e = &s->id_logs[i];
    uint64_t round, n = e->id[0] ? fl_log_budget_flush(&e->msgs, &round) : 0;
    if (n)
      fl_warn("server", "%s: %llu more lines about its messages in round %llu were not logged",
              e->id, (unsigned long long)n, (unsigned long long)round);
  }
}

void srv_id_logs_free(server *s) {
  srv_client_logs_said(s);
  free(s->id_logs);
  s->id_logs = NULL;
  s->id_logs_n = s->id_logs_cap = 0;
}
