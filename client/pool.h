/* A small pool of worker threads for fl-client's local training and evaluation.
 *
 * libuv's own thread pool also resolves host names; long training jobs there would hold
 * up reconnects, so fl-client trains on threads of its own.  A job's run function runs
 * on a worker and owns the job from then on (it completes its libflclient task with
 * fl_client_task_done, from that worker).  Each worker trains with one BLAS thread: N
 * workers use N cores, deterministically. */
#ifndef FL_CLIENT_POOL_H
#define FL_CLIENT_POOL_H

#include <pthread.h>

typedef struct pool_job pool_job;
struct pool_job {
  void (*run)(pool_job *j); /* on a worker thread */
  pool_job *next;
};

typedef struct pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pool_job *todo, *todo_tail;
  pthread_t *threads;
  int n_threads, stopping;
} pool;

/* Starts n worker threads.  0 or FL_E*. */
int pool_start(pool *p, int n);
/* Queues j; a worker runs it.  Any thread. */
void pool_submit(pool *p, pool_job *j);
/* Lets the workers finish their current jobs and exit, and joins them (jobs still
 * queued are not run). */
void pool_stop(pool *p);

#endif
