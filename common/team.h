/* A team of threads that run one function together and meet at barriers: the threads a
 * trainer splits each training step over (train.c).  Internal to the training core.
 *
 * fl__team_run runs fn(arg, k) on all n members at once, the calling thread being member
 * 0 and n - 1 threads of the team the others, and returns when every member has
 * returned.  Inside fn, fl__team_sync is a barrier of all n members: everything a member
 * wrote before it is visible to every member after it.  A barrier spins briefly (the
 * work between two barriers of a step is short: a layer), yields, and then sleeps on a
 * futex, so a member that waits long costs no CPU (team.c says why in this order).
 *
 * Threads: fl__team_run is called by one thread at a time (the trainer's caller); the
 * team owns its threads, which sleep between runs and are joined by fl__team_free. */
#ifndef FL_TEAM_H
#define FL_TEAM_H

typedef struct fl__team fl__team;

/* A team of n >= 1 members (n - 1 threads started).  NULL if a thread cannot start. */
fl__team *fl__team_create(int n);
void fl__team_free(fl__team *t);
int fl__team_size(const fl__team *t);
void fl__team_run(fl__team *t, void (*fn)(void *arg, int k), void *arg);
void fl__team_sync(fl__team *t);

#endif
