/* libflclient: the frozen parameters a client keeps between tasks (fl-server --freeze).
 *
 * A TrainTask that names frozen runs also gives their identity (frozen_id: fl_runs_id of
 * the runs and of the model's values there).  A client sent such a model whole keeps its
 * values over the runs, once it has checked that they are what the id names, and says
 * so in its next Hello (frozen_held); within a connection the server knows it from the
 * model it sent.  The server then leaves the runs out of the models it sends this client
 * (model_frozen_left_out), and the client fills them in from what it keeps.
 *
 * The values are kept once per process: every client holding the same ones shares one
 * copy (a simulation of a thousand virtual clients keeps one, not a thousand), counted
 * by reference and freed with the last holder.  Copies are shared only when their runs
 * and values are equal, byte for byte, not merely their ids: a server could pick values
 * whose 64-bit hash another server's have, and the clients of one must never train on
 * the other's. */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lib_internal.h"

struct flc_frozen {
  uint64_t id;
  uint64_t *at;              /* [2 runs.n] */
  fl_runs runs;              /* at's */
  float *vals;               /* [nvals] the values over the runs, in order */
  size_t nvals;
  unsigned refs;             /* clients holding it */
  struct flc_frozen *next;
};

static pthread_mutex_t kept_mu = PTHREAD_MUTEX_INITIALIZER;
static flc_frozen *kept;     /* every copy some client holds */

static size_t count(const fl_runs *r) {
  size_t n = 0;
  for (size_t k = 0; k < r->n; k++) n += (size_t)(r->at[2 * k + 1] - r->at[2 * k]);
  return n;
}

/* Whether f holds x's values over the runs r. */
static int holds(const flc_frozen *f, const fl_runs *r, const float *x) {
  if (f->runs.n != r->n || memcmp(f->at, r->at, 2 * r->n * sizeof *r->at) != 0) return 0;
  const float *v = f->vals;
  for (size_t k = 0; k < r->n; k++) {
    size_t len = (size_t)(r->at[2 * k + 1] - r->at[2 * k]);
    if (memcmp(v, x + r->at[2 * k], len * sizeof *v) != 0) return 0;
    v += len;
  }
  return 1;
}

static flc_frozen *copy_of(uint64_t id, const fl_runs *r, const float *x) {
  flc_frozen *f = calloc(1, sizeof *f);
  size_t n = count(r);
  if (!f || !(f->at = malloc(2 * r->n * sizeof *f->at)) ||
      !(f->vals = malloc((n ? n : 1) * sizeof *f->vals))) {
    if (f) free(f->at);
    free(f);
    return NULL;
  }
  memcpy(f->at, r->at, 2 * r->n * sizeof *f->at);
  f->runs = (fl_runs){f->at, r->n};
  f->nvals = n;
  float *v = f->vals;
  for (size_t k = 0; k < r->n; k++) {
    size_t len = (size_t)(r->at[2 * k + 1] - r->at[2 * k]);
    memcpy(v, x + r->at[2 * k], len * sizeof *v);
    v += len;
  }
  f->id = id;
  return f;
}

void flc__frozen_drop(fl_client *c) {
  flc_frozen *f = c->frozen;
  if (!f) return;
  c->frozen = NULL;
  pthread_mutex_lock(&kept_mu);
  int last = --f->refs == 0;
  if (last)
    for (flc_frozen **p = &kept; *p; p = &(*p)->next)
      if (*p == f) {
        *p = f->next;
        break;
      }
  pthread_mutex_unlock(&kept_mu);
  if (last) {
    free(f->at);
    free(f->vals);
    free(f);
  }
}

void flc__frozen_keep(fl_client *c, uint64_t id, const fl_runs *r, const float *x) {
  if (!c->frozen_cache || !id || !r->n || fl_runs_id(r, x) != id) return;
  if (c->frozen && c->frozen->id == id && holds(c->frozen, r, x)) return;
  flc__frozen_drop(c);
  pthread_mutex_lock(&kept_mu);
  flc_frozen *f = kept;
  while (f && !(f->id == id && holds(f, r, x))) f = f->next;
  if (f) {
    f->refs++;
  } else if ((f = copy_of(id, r, x))) { /* without memory for it, nothing is kept */
    f->refs = 1;
    f->next = kept;
    kept = f;
  }
  pthread_mutex_unlock(&kept_mu);
  c->frozen = f;
  if (f)
    flc__log(c, FL_CLIENT_LOG_DEBUG, "keeps the %zu frozen parameters (id %016" PRIx64 ")",
             f->nvals, id);
}

uint64_t flc__frozen_held(const fl_client *c) { return c->frozen ? c->frozen->id : 0; }

const fl_runs *flc__frozen_runs(const fl_client *c, uint64_t id) {
  return c->frozen && id && c->frozen->id == id ? &c->frozen->runs : NULL;
}

void flc__frozen_fill(const fl_client *c, float *x) {
  const flc_frozen *f = c->frozen;
  const float *v = f->vals;
  for (size_t k = 0; k < f->runs.n; k++) {
    size_t len = (size_t)(f->runs.at[2 * k + 1] - f->runs.at[2 * k]);
    memcpy(x + f->runs.at[2 * k], v, len * sizeof *v);
    v += len;
  }
}
