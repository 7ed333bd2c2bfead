/* Worker threads for local training (see pool.h). */
#include "pool.h"

#include <cblas.h>
#include <stdlib.h>

#include "error.h"

static void *worker(void *arg) {
  pool *p = arg;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (!p->todo && !p->stopping) pthread_cond_wait(&p->cv, &p->mu);
    if (p->stopping) {
      pthread_mutex_unlock(&p->mu);
      return NULL;
    }
    pool_job *j = p->todo;
    p->todo = j->next;
    if (!p->todo) p->todo_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    j->run(j);
  }
}

int pool_start(pool *p, int n) {
  *p = (pool){0};
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->threads = calloc((size_t)n, sizeof *p->threads);
  if (!p->threads) return FL_ENOMEM;
  openblas_set_num_threads(1);
  for (int i = 0; i < n; i++) {
    if (pthread_create(&p->threads[i], NULL, worker, p) != 0) break;
    p->n_threads++;
  }
  return p->n_threads ? 0 : FL_EIO;
}

void pool_submit(pool *p, pool_job *j) {
  j->next = NULL;
  pthread_mutex_lock(&p->mu);
  if (p->todo_tail) p->todo_tail->next = j;
  else p->todo = j;
  p->todo_tail = j;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

void pool_stop(pool *p) {
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
  free(p->threads);
  p->threads = NULL;
  p->n_threads = 0;
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}
