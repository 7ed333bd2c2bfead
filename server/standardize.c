/* Feature standardisation without sharing data (fl-server --standardize).
 *
 * Clients whose owners agree (fl-client --share-feature-stats) send each feature's
 * count, sum and sum of squares in their Hello.  Before round 1 the server adds up those
 * of every client connected (each client once, however often it reconnects) and fixes
 * the transform: mean = sum / count and deviation = sqrt(sum_sq / count - mean^2) (1 for
 * a constant feature, which is then only centred).  Every TrainTask and EvalTask then
 * carries it, the clients train and evaluate on standardised features, the server's
 * --test-data is standardised the same way, and the model files it writes carry the
 * transform (modelfile.h), so fl-predict and the ONNX export apply it to raw features.
 * A model file given to --init-model that carries a transform fixes it from the start. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "server_internal.h"

/* Checks a client's statistics against the model; 0, or -1 with the reason in why. */
static int stats_ok(const server *s, const Fl__FeatureStats *f, char *why, size_t len) {
  size_t D = fl_model_input_dim(s->model);
  if (f->n_sum != D || f->n_sum_sq != D) {
    snprintf(why, len, "%zu sums and %zu sums of squares for a model of %zu features",
             f->n_sum, f->n_sum_sq, D);
    return -1;
  }
  if (f->count == 0) {
    snprintf(why, len, "statistics of 0 samples");
    return -1;
  }
  for (size_t j = 0; j < D; j++)
    if (!isfinite(f->sum[j]) || !isfinite(f->sum_sq[j]) || f->sum_sq[j] < 0) {
      snprintf(why, len, "feature %zu: sum %g, sum of squares %g", j, f->sum[j], f->sum_sq[j]);
      return -1;
    }
  return 0;
}

void srv_standardize_hello(client *c, const Fl__Hello *h) {
  server *s = c->srv;
  if (!s->cfg->standardize || s->tf_dim || !h->feature_stats) return;
  for (size_t i = 0; i < s->fs_n; i++)
    if (strcmp(s->fs_ids[i], c->id) == 0) return; /* counted on an earlier connection */
  char why[256];
  if (stats_ok(s, h->feature_stats, why, sizeof why) != 0) {
    fl_warn("server", "%s: feature statistics ignored: %s", c->id, why);
    return;
  }
  size_t D = fl_model_input_dim(s->model);
  char **ids = realloc(s->fs_ids, (s->fs_n + 1) * sizeof *ids);
  if (ids) s->fs_ids = ids;
  if (!s->fs_sum) {
    s->fs_sum = calloc(D, sizeof *s->fs_sum);
    s->fs_sq = calloc(D, sizeof *s->fs_sq);
  }
  if (!ids || !s->fs_sum || !s->fs_sq || !(ids[s->fs_n] = strdup(c->id))) {
    fl_error("server", "%s: feature statistics ignored: out of memory", c->id);
    return;
  }
  s->fs_n++;
  const Fl__FeatureStats *f = h->feature_stats;
  for (size_t j = 0; j < D; j++) s->fs_sum[j] += f->sum[j], s->fs_sq[j] += f->sum_sq[j];
  s->fs_count += f->count;
  fl_debug("server", "%s: feature statistics of %llu samples", c->id,
           (unsigned long long)f->count);
}

int srv_standardize_ready(server *s) {
  if (!s->cfg->standardize || s->tf_dim) return 1;
  if (!s->fs_count) {
    if (!s->fs_waiting_logged)
      fl_warn("server", "--standardize: waiting for a client's feature statistics (clients "
              "send them with --share-feature-stats)");
    s->fs_waiting_logged = 1;
    return 0;
  }
  size_t D = fl_model_input_dim(s->model);
  float *t = malloc(2 * D * sizeof *t);
  if (!t) {
    fl_error("server", "--standardize: out of memory");
    return 0;
  }
  double n = (double)s->fs_count;
  for (size_t j = 0; j < D; j++) {
    double mean = s->fs_sum[j] / n, var = s->fs_sq[j] / n - mean * mean;
    double sd = var > 1e-12 * (1.0 + mean * mean) ? sqrt(var) : 1.0;
    t[j] = (float)mean;
    t[D + j] = (float)sd;
  }
  s->tf_mean = t, s->tf_std = t + D, s->tf_dim = D;
  fl_transform tf = srv_transform(s);
  if (s->have_test) fl_transform_apply(&tf, s->test.x, s->test.n);
  fl_info("server", "features standardised: means and deviations of %zu features from %zu "
          "client%s (%llu samples)", D, s->fs_n, s->fs_n == 1 ? "" : "s",
          (unsigned long long)s->fs_count);
  return 1;
}

fl_transform srv_transform(const server *s) {
  return (fl_transform){s->tf_dim, s->tf_mean, s->tf_std};
}

void srv_standardize_free(server *s) {
  for (size_t i = 0; i < s->fs_n; i++) free(s->fs_ids[i]);
  free(s->fs_ids);
  free(s->fs_sum);
  free(s->fs_sq);
  free(s->tf_mean);
}
