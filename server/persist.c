/* What fl-server keeps on disk: the checkpoint after every completed round (global
 * model, round, model version, the selection generator, the metrics file's length and
 * the strategy's state, such as a server optimizer's moments),
 * --resume from it, the final model file (--out) and the best one (--keep-best).  Files are written atomically and
 * checksummed (checkpoint.h, modelfile.h), so a crash leaves the previous one whole. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "checkpoint.h"
#include "error.h"
#include "log.h"
#include "modelfile.h"
#include "server_internal.h"

/* The directory a file goes into exists and takes new files: "" or the reason. */
static int dir_writable(const char *path, const char *what, char *err, size_t errlen) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  if (access(dir, W_OK | X_OK) != 0) {
    snprintf(err, errlen, "%s %s: directory %s: %s", what, path, dir, strerror(errno));
    return FL_EIO;
  }
  return 0;
}

int srv_have_checkpoint(const server *s) { return access(s->checkpoint, F_OK) == 0; }

int srv_check_outputs(server *s, char *err, size_t errlen) {
  const server_config *cfg = s->cfg;
  int rc = dir_writable(cfg->out, "--out", err, errlen);
  if (rc == 0) rc = dir_writable(s->checkpoint, "checkpoint", err, errlen);
  if (rc) return rc;
  if (cfg->resume || !srv_have_checkpoint(s)) return 0;
  if (!cfg->force) {
    snprintf(err, errlen, "checkpoint %s exists: an earlier run was here; continue it with "
             "--resume, or start a new run over it with --force", s->checkpoint);
    return FL_ECONFIG;
  }
  if (unlink(s->checkpoint) != 0) {
    snprintf(err, errlen, "--force: cannot remove the checkpoint %s: %s", s->checkpoint,
             strerror(errno));
    return FL_EIO;
  }
  fl_warn("server", "--force: removed the checkpoint of an earlier run, %s", s->checkpoint);
  return 0;
}

/* After every completed round: all a restart needs to continue from the next one. */
void srv_save_checkpoint(server *s) {
  /* The strategy never applies a non-finite step (strategy.h); a model that is not
   * finite all the same is never written over the last good checkpoint. */
  for (size_t i = 0; i < s->n; i++)
    if (!isfinite(s->global[i])) {
      fl_error("server", "round %llu: the global model has a non-finite value (parameter "
               "%zu); the checkpoint is not written", (unsigned long long)s->r.number, i);
      return;
    }
  checkpoint c = {0};
  c.rounds = s->r.number;
  c.model_version = s->model_version;
  c.rng = s->rng;
  c.metrics_len = s->metrics ? (uint64_t)ftello(s->metrics) : 0;
  c.spec = (char *)fl_model_spec(s->model);
  c.model_id = fl_model_id(s->model);
  c.params = s->global;
  c.n = s->n;
  c.tf = srv_transform(s);
  if (s->have_best) {
    c.best_metric = (char *)s->cfg->keep_best;
    c.best_round = s->best_round, c.best_value = s->best_value;
  }
  char err[512];
  int rc = fl_strategy_save(s->strategy, &c.strategy, &c.strategy_len);
  if (rc) {
    fl_error("server", "round %llu: checkpoint failed: the strategy's state: %s",
             (unsigned long long)s->r.number, fl_strerror(rc));
    return;
  }
  rc = srv_privacy_save(s, &c.privacy, &c.privacy_len);
  if (rc) {
    free(c.strategy);
    fl_error("server", "round %llu: checkpoint failed: the privacy accountant: %s",
             (unsigned long long)s->r.number, fl_strerror(rc));
    return;
  }
  rc = checkpoint_save(s->checkpoint, &c, err, sizeof err);
  free(c.strategy);
  free(c.privacy);
  if (rc) fl_error("server", "round %llu: checkpoint failed: %s", (unsigned long long)s->r.number, err);
  else fl_debug("server", "round %llu: checkpoint written to %s", (unsigned long long)s->r.number, s->checkpoint);
}

/* --resume: the global model, round, generator and metrics as the checkpoint left them. */
int srv_resume(server *s, uint64_t *next_round, char *err, size_t errlen) {
  checkpoint c;
  int rc = checkpoint_load(s->checkpoint, &c, err, errlen);
  if (rc == FL_ENOENT) {
    fl_info("server", "--resume: no checkpoint at %s yet; starting from round 1", s->checkpoint);
    return 0;
  }
  if (rc) return rc;
  if (c.model_id != fl_model_id(s->model) || c.n != s->n) {
    snprintf(err, errlen, "checkpoint %s holds model '%s' (%zu parameters), but --model is '%s' (%zu parameters)",
             s->checkpoint, c.spec, c.n, fl_model_spec(s->model), s->n);
    checkpoint_free(&c);
    return FL_EMISMATCH;
  }
  if (c.strategy_len) { /* (checkpoints before strategies had state hold none) */
    char why[512];
    rc = fl_strategy_load(s->strategy, c.strategy, c.strategy_len, why, sizeof why);
    if (rc) {
      snprintf(err, errlen, "checkpoint %s: %s", s->checkpoint, why);
      checkpoint_free(&c);
      return rc;
    }
  }
  char why[512];
  rc = srv_privacy_load(s, c.privacy, c.privacy_len, why, sizeof why);
  if (rc) {
    snprintf(err, errlen, "checkpoint %s: %s", s->checkpoint, why);
    checkpoint_free(&c);
    return rc;
  }
  if (c.tf.dim && c.tf.dim != fl_model_input_dim(s->model)) {
    snprintf(err, errlen, "checkpoint %s: a feature transform of %zu features for a model of %zu",
             s->checkpoint, c.tf.dim, fl_model_input_dim(s->model));
    checkpoint_free(&c);
    return FL_EFORMAT;
  }
  if (c.tf.dim) { /* the standardisation the weights were trained on, whatever else says */
    free(s->tf_mean);
    s->tf_mean = c.tf.mean, s->tf_std = c.tf.std, s->tf_dim = c.tf.dim;
    c.tf = (fl_transform){0};
    fl_info("server", "--resume: the features' standardisation from the checkpoint");
  } else if (s->tf_dim || s->cfg->standardize) {
    fl_warn("server", "--resume: the checkpoint holds no feature standardisation (it was "
            "written before the first round, or by an older fl-server); %s",
            s->tf_dim ? "--init-model's is used" : "it is computed again from the clients' "
            "statistics before the next round");
  }
  if (c.best_metric && s->cfg->keep_best && strcmp(c.best_metric, s->cfg->keep_best) == 0 &&
      isfinite(c.best_value)) { /* a later round must beat it to replace OUT.best */
    s->have_best = 1, s->best_value = c.best_value, s->best_round = c.best_round;
    fl_info("server", "--resume: the best %s so far is round %llu's (%.6g)", c.best_metric,
            (unsigned long long)c.best_round, c.best_value);
  } else if (c.best_metric && s->cfg->keep_best) {
    fl_warn("server", "--resume: the checkpoint's best model was kept by %s, not --keep-best "
            "%s; the next round's model replaces it", c.best_metric, s->cfg->keep_best);
  }
  memcpy(s->global, c.params, s->n * sizeof *s->global);
  s->need_init = 0;
  s->model_version = c.model_version;
  s->rng = c.rng;
  *next_round = c.rounds + 1;
  if (s->cfg->metrics && truncate(s->cfg->metrics, (off_t)c.metrics_len) != 0) {
    snprintf(err, errlen, "--metrics %s: cannot cut it back to the %llu bytes of the checkpointed rounds",
             s->cfg->metrics, (unsigned long long)c.metrics_len);
    checkpoint_free(&c);
    return FL_EIO;
  }
  fl_info("server", "resuming from %s: %llu rounds completed", s->checkpoint,
          (unsigned long long)c.rounds);
  checkpoint_free(&c);
  return 0;
}

void srv_save_final_model(server *s) {
  char err[512];
  fl_transform tf = srv_transform(s);
  int rc = fl_modelfile_save_ex(s->cfg->out, fl_model_spec(s->model), fl_model_id(s->model),
                                s->global, s->n, &tf, err, sizeof err);
  if (rc) {
    fl_error("server", "writing the final model failed: %s", err);
    s->exit_code = 1;
  } else {
    double cpu = srv_cpu_seconds();
    fl_info("server", "final model (%llu rounds) written to %s; peak memory %ld KiB, CPU %.3f s",
            (unsigned long long)s->model_version, s->cfg->out, srv_peak_rss_kib(), cpu);
  }
}

void srv_keep_best(server *s) {
  if (!s->cfg->keep_best) return;
  int k = srv_metric_find(s->cfg->keep_best);
  double v;
  if (k < 0 || !srv_metric_value(s, k, &v) || !isfinite(v)) return;
  int lower = srv_metric_lower_is_better(k);
  if (s->have_best && (lower ? v >= s->best_value : v <= s->best_value)) return;
  char path[4096], err[512];
  snprintf(path, sizeof path, "%s.best", s->cfg->out);
  fl_transform tf = srv_transform(s);
  int rc = fl_modelfile_save_ex(path, fl_model_spec(s->model), fl_model_id(s->model),
                                s->global, s->n, &tf, err, sizeof err);
  if (rc) {
    fl_error("server", "round %llu: --keep-best: %s", (unsigned long long)s->r.number, err);
    return;
  }
  s->have_best = 1;
  s->best_value = v;
  s->best_round = s->r.number;
  fl_info("server", "round %llu: best %s so far (%.6g): model written to %s",
          (unsigned long long)s->r.number, s->cfg->keep_best, v, path);
}
