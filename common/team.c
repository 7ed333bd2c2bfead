/* The thread team behind a multi-threaded trainer (see team.h): a mutex and condition
 * variables start and finish a run; barriers inside a run are a counter and a phase
 * word, spun on, then waited on with futex. */
#include "team.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A member that arrives first waits in three stages.  It spins a few microseconds (the
 * usual imbalance between threads on idle cores), then yields for some tens of
 * microseconds (sched_yield returns at once on an idle core, and gives the core away
 * where other work, maybe the member it waits for, is queued on it), then sleeps on a
 * futex, whose wake-up costs tens of microseconds, in a VM more.  Spinning alone for as
 * long made two threads slower than one on a loaded 2-core machine: the spinner held
 * the core its partner was waiting for. */
#define SPINS 200
#define YIELDS 100

struct fl__team {
  int n;
  pthread_t *threads;
  pthread_mutex_t mu;
  pthread_cond_t start, done;
  unsigned long run;        /* bumped by each fl__team_run */
  int pending;              /* members of the current run still working */
  int stop;
  void (*fn)(void *, int);
  void *arg;
  _Atomic unsigned arrived; /* members at the current barrier */
  _Atomic unsigned phase;   /* bumped when a barrier opens; the futex word */
  _Atomic int sleepers;
};

typedef struct member { fl__team *t; int k; } member;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void futex_wait(_Atomic unsigned *addr, unsigned val) {
  syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic unsigned *addr) {
  syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

void fl__team_sync(fl__team *t) {
  if (t->n == 1) return;
  unsigned ph = atomic_load(&t->phase);
  if (atomic_fetch_add(&t->arrived, 1) == (unsigned)t->n - 1) {
    atomic_store(&t->arrived, 0); /* before the phase opens: the next barrier starts at 0 */
    atomic_store(&t->phase, ph + 1);
    if (atomic_load(&t->sleepers) > 0) futex_wake_all(&t->phase);
    return;
  }
  for (int i = 0; i < SPINS; i++) {
    if (atomic_load(&t->phase) != ph) return;
    cpu_relax();
  }
  for (int i = 0; i < YIELDS; i++) {
    if (atomic_load(&t->phase) != ph) return;
    sched_yield();
  }
  /* A sleeper is counted before it checks the phase again, and the opener checks for
   * sleepers after it moved the phase (both sequentially consistent): either the opener
   * sees it and wakes it, or it sees the new phase, and FUTEX_WAIT returns at once if the
   * phase moved in between. */
  atomic_fetch_add(&t->sleepers, 1);
  while (atomic_load(&t->phase) == ph) futex_wait(&t->phase, ph);
  atomic_fetch_sub(&t->sleepers, 1);
}

static void *worker(void *arg) {
  member *me = arg;
  fl__team *t = me->t;
  unsigned long seen = 0;
  for (;;) {
    pthread_mutex_lock(&t->mu);
    while (t->run == seen && !t->stop) pthread_cond_wait(&t->start, &t->mu);
    if (t->stop) {
      pthread_mutex_unlock(&t->mu);
      free(me);
      return NULL;
    }
    seen = t->run;
    void (*fn)(void *, int) = t->fn;
    void *fn_arg = t->arg;
    pthread_mutex_unlock(&t->mu);
    fn(fn_arg, me->k);
    pthread_mutex_lock(&t->mu);
    if (--t->pending == 0) pthread_cond_signal(&t->done);
    pthread_mutex_unlock(&t->mu);
  }
}

fl__team *fl__team_create(int n) {
  if (n < 1) return NULL;
  fl__team *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->n = 1;
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->start, NULL);
  pthread_cond_init(&t->done, NULL);
  if (n > 1 && !(t->threads = calloc((size_t)n - 1, sizeof *t->threads))) goto fail;
  for (int k = 1; k < n; k++) {
    member *me = malloc(sizeof *me);
    if (!me) goto fail;
    *me = (member){t, k};
    if (pthread_create(&t->threads[k - 1], NULL, worker, me) != 0) {
      free(me);
      goto fail;
    }
    t->n++;
  }
  return t;
fail:
  fl__team_free(t);
  return NULL;
}

void fl__team_free(fl__team *t) {
  if (!t) return;
  pthread_mutex_lock(&t->mu);
  t->stop = 1;
  pthread_cond_broadcast(&t->start);
  pthread_mutex_unlock(&t->mu);
  for (int k = 1; k < t->n; k++) pthread_join(t->threads[k - 1], NULL);
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->start);
  pthread_cond_destroy(&t->done);
  free(t->threads);
  free(t);
}

int fl__team_size(const fl__team *t) { return t->n; }

void fl__team_run(fl__team *t, void (*fn)(void *arg, int k), void *arg) {
  if (t->n > 1) {
    pthread_mutex_lock(&t->mu);
    t->fn = fn, t->arg = arg;
    t->pending = t->n - 1;
    t->run++;
    pthread_cond_broadcast(&t->start);
    pthread_mutex_unlock(&t->mu);
  }
  fn(arg, 0);
  if (t->n > 1) {
    pthread_mutex_lock(&t->mu);
    while (t->pending > 0) pthread_cond_wait(&t->done, &t->mu);
    pthread_mutex_unlock(&t->mu);
  }
}
