/* The aggregate of a round the server computes as one sum: secure aggregation's unmasked
 * sum, and differential privacy's clipped and noised one.  The strategy never sees an
 * individual update in such a round: updates go into the sum as they are folded
 * (secagg.c's masked inputs, privacy.c's clipped updates), and once the folds are over a
 * job on the thread pool turns the sum into the mean delta, which the strategy folds as
 * one update (weight: the round's weights, in examples) and applies as usual, so server
 * optimizers (fedavg+fedadam, ...) work unchanged.
 *
 *   secure aggregation alone   mean = sum of w u / sum of w (both from the secure sum)
 *   differential privacy       mean = (sum of w clip(u) + noise) / (q W)  (privacy.c)
 *
 * (w: an update's weight over the round's unit, in [0, 1].) */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "server_internal.h"

typedef struct sum_job {
  server *srv;
  void (*apply)(server *s);
  void (*fail)(server *s, const char *why);
  int rc;
  double seconds;
  char err[256];
} sum_job;

int srv_private_round(const server *s) { return s->sa != NULL || s->dp != NULL; }

int srv_private_fold(server *s, const ready_update *it, const fl_update *u, char *err, size_t len) {
  if (it->sa_index >= 0) return srv_secagg_fold(s, it, err, len);
  srv_privacy_fold(s, u, it->weight);
  return 0;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void sum_work(uv_work_t *w) {
  sum_job *j = w->data;
  server *s = j->srv;
  size_t n = s->n;
  double t0 = now_s(), weights = 0, bits = 0;
  double *sum = NULL;
  float *mean = malloc(n * sizeof *mean);
  j->rc = 0;
  if (!mean) {
    j->rc = fl_errf(j->err, sizeof j->err, FL_ENOMEM, "out of memory for the mean");
    return;
  }
  if (s->sa) {
    if (!(sum = malloc(n * sizeof *sum)))
      j->rc = fl_errf(j->err, sizeof j->err, FL_ENOMEM, "out of memory for the sum");
    else
      j->rc = srv_secagg_result(s, sum, &weights, &bits, j->err, sizeof j->err);
  }
  if (!j->rc && s->dp) {
    j->rc = srv_privacy_mean(s, sum, weights, bits, s->r.sa_inputs, mean, j->err, sizeof j->err);
  } else if (!j->rc) {
    for (size_t i = 0; i < n; i++) mean[i] = (float)(sum[i] / weights);
  }
  j->seconds = now_s() - t0;
  /* The mean goes to the strategy as one update; its weight is the round's, in examples. */
  if (!j->rc) {
    fl_update u = {.client = "the round's sum", .delta = mean, .weight = s->r.weight_sum > 0 ? s->r.weight_sum : 1};
    j->rc = fl_strategy_fold(s->strategy, &u, 1, j->err, sizeof j->err);
  }
  free(sum);
  free(mean);
}

static void sum_after(uv_work_t *w, int status) {
  sum_job *j = w->data;
  server *s = j->srv;
  (void)status;
  s->r.sa_seconds = j->seconds;
  sum_job done = *j;
  free(j);
  if (done.rc) {
    char why[300];
    snprintf(why, sizeof why, "the round's sum could not be computed: %s", done.err);
    done.fail(s, why);
    return;
  }
  done.apply(s);
}

void srv_private_start(server *s, void (*apply)(server *s), void (*fail)(server *s, const char *why)) {
  sum_job *j = calloc(1, sizeof *j);
  if (!j) {
    fail(s, "out of memory for the round's sum");
    return;
  }
  *j = (sum_job){.srv = s, .apply = apply, .fail = fail};
  s->ph = PH_SUMMING;
  s->sum_work.data = j;
  uv_queue_work(&s->loop, &s->sum_work, sum_work, sum_after);
}
