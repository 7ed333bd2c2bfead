/* A small pool of worker threads for local training and evaluation.
 *
 * libuv's own thread pool also resolves host names; long training jobs there would hold
 * up reconnects, so fl-client trains on threads of its own.  A job's run function runs
 * on a worker; its done function runs on the loop thread afterwards.  Jobs are owned by
 * the caller and must stay valid until done has been called. */
#ifndef FL_CLIENT_POOL_H
#define FL_CLIENT_POOL_H

#include <pthread.h>
#include <uv.h>

typedef struct pool_job pool_job;
struct pool_job {
  void (*run)(pool_job *j);  /* on a worker thread */
  void (*done)(pool_job *j); /* on the loop thread */
  pool_job *next;
};

typedef struct pool {
  uv_async_t async;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pool_job *todo, *todo_tail, *finished;
  pthread_t *threads;
  int n_threads, stopping;
} pool;

/* Starts n worker threads whose jobs report back on loop.  0 or FL_E*. */
int pool_start(pool *p, uv_loop_t *loop, int n);
void pool_submit(pool *p, pool_job *j);
/* Waits for the workers to finish their current jobs and exit; closes the async handle
 * (run the loop once more afterwards to complete the close). */
void pool_stop(pool *p);

#endif
