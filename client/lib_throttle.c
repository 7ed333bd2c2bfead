/* libflclient: handshakes in flight at once, shared by the clients of one loop.
 *
 * A TLS handshake costs both sides about 10 ms of CPU; a thousand started together all
 * finish late, past the handshake timeout, and retry.  A client takes a slot before it
 * connects and gives it back when its handshake is over (on_open or on_close); a client
 * that finds no slot waits in a first-come queue and connects when one frees. */
#include <stdlib.h>

#include "lib_internal.h"

fl_client_throttle *fl_client_throttle_new(int max_handshakes) {
  fl_client_throttle *t = calloc(1, sizeof *t);
  if (t) t->max = max_handshakes > 0 ? max_handshakes : 1;
  return t;
}

int fl_client_throttle_free(fl_client_throttle *t) {
  if (!t) return 0;
  if (t->holders > 0) return FL_CLIENT_ESTATE;
  free(t);
  return 0;
}

int flc__throttle_acquire(fl_client *c) {
  fl_client_throttle *t = c->throttle;
  if (!t) return 1;
  if (t->used < t->max) {
    t->used++;
    return 1;
  }
  c->throttle_next = NULL;
  if (t->tail) t->tail->throttle_next = c;
  else t->head = c;
  t->tail = c;
  c->throttle_queued = 1;
  return 0;
}

void flc__throttle_release(fl_client *c) {
  fl_client_throttle *t = c->throttle;
  if (!t) return;
  t->used--;
  while (t->head && t->used < t->max) {
    fl_client *next = t->head;
    t->head = next->throttle_next;
    if (!t->head) t->tail = NULL;
    next->throttle_next = NULL;
    next->throttle_queued = 0;
    t->used++;
    flc__start_connect(next);
  }
}

void flc__throttle_leave(fl_client *c) {
  fl_client_throttle *t = c->throttle;
  if (!t || !c->throttle_queued) return;
  fl_client *prev = NULL;
  for (fl_client *p = t->head; p; prev = p, p = p->throttle_next) {
    if (p != c) continue;
    if (prev) prev->throttle_next = p->throttle_next;
    else t->head = p->throttle_next;
    if (t->tail == p) t->tail = prev;
    break;
  }
  c->throttle_next = NULL;
  c->throttle_queued = 0;
}
