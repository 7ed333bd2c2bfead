/* fl-server's report of each round: one human-readable log line, and one JSON line in
 * the --metrics file (appended and flushed per round; the checkpoint records its length,
 * so --resume cuts it back to the rounds that were checkpointed).  The JSON line holds
 * the round's statistics as round_stats gathered them: selection, updates accepted,
 * refused (with the first MAX_REFUSALS reasons) and dropped, clients that could not
 * train (and their reasons), training and evaluation
 * results, bytes, fold passes, the strategy's errors, capped weights, the norm bound and
 * the applied aggregate's norm, time and the process's peak memory, and who took part:
 * the selected clients and the contributors (each with its example count and training
 * loss) by name up to MAX_PARTICIPANTS, then a summary of all contributors, so a line
 * stays small with thousands of clients.  A value that is unknown (no update, no
 * evaluation, not finite) is written as null. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "log.h"
#include "server_internal.h"

long srv_peak_rss_kib(void) {
  struct rusage ru;
  return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

double srv_cpu_seconds(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

void srv_json_str(FILE *f, const char *v) {
  fputc('"', f);
  for (; *v; v++) {
    if (*v == '"' || *v == '\\') fprintf(f, "\\%c", *v);
    else if ((unsigned char)*v < 0x20) fprintf(f, "\\u%04x", *v);
    else fputc(*v, f);
  }
  fputc('"', f);
}

static void json_num(FILE *f, const char *key, double v, int have) {
  fprintf(f, ",\"%s\":", key);
  if (have && isfinite(v)) fprintf(f, "%.6g", v);
  else fputs("null", f);
}

void srv_participants_begin(server *s, client *const *selected, size_t k) {
  round_stats *r = &s->r;
  r->n_selected_ids = 0;
  r->n_parts = 0;
  r->part_examples_min = UINT64_MAX;
  r->part_examples_max = 0;
  r->part_loss_min = INFINITY;
  r->part_loss_max = -INFINITY;
  for (size_t i = 0; i < k; i++) {
    selected[i]->progress = 0;
    if (r->n_selected_ids < MAX_PARTICIPANTS)
      snprintf(r->selected_ids[r->n_selected_ids++], sizeof r->selected_ids[0], "%s", selected[i]->id);
  }
}

void srv_participant_add(server *s, const ready_update *it) {
  round_stats *r = &s->r;
  if (r->n_parts < MAX_PARTICIPANTS) {
    participant *p = &r->parts[r->n_parts++];
    snprintf(p->client, sizeof p->client, "%s", it->client);
    p->examples = it->examples;
    p->loss = it->loss;
  }
  if (it->examples < r->part_examples_min) r->part_examples_min = it->examples;
  if (it->examples > r->part_examples_max) r->part_examples_max = it->examples;
  if (isfinite(it->loss) && it->loss < r->part_loss_min) r->part_loss_min = it->loss;
  if (isfinite(it->loss) && it->loss > r->part_loss_max) r->part_loss_max = it->loss;
  for (client *c = s->clients; c; c = c->next) /* it may be gone */
    if (!c->closing && strcmp(c->id, it->client) == 0) {
      c->rounds_in++;
      c->last_examples = it->examples;
      c->last_loss = it->loss;
      break;
    }
}

static void write_participants(FILE *f, const round_stats *r) {
  fputs(",\"selected\":[", f);
  for (size_t i = 0; i < r->n_selected_ids; i++) {
    if (i) fputc(',', f);
    srv_json_str(f, r->selected_ids[i]);
  }
  fputs("],\"contributors\":[", f);
  for (size_t i = 0; i < r->n_parts; i++) {
    fprintf(f, "%s{\"client\":", i ? "," : "");
    srv_json_str(f, r->parts[i].client);
    fprintf(f, ",\"examples\":%llu", (unsigned long long)r->parts[i].examples);
    json_num(f, "train_loss", r->parts[i].loss, 1);
    fputc('}', f);
  }
  /* accepted counts every contributor; the lists above stop at MAX_PARTICIPANTS */
  fprintf(f, "],\"participants\":{\"selected\":%zu,\"selected_listed\":%zu,\"contributors\":%zu,"
          "\"contributors_listed\":%zu", r->selected, r->n_selected_ids, r->accepted, r->n_parts);
  int any = r->accepted > 0 && r->part_examples_max >= r->part_examples_min;
  fputs(",\"examples_min\":", f);
  if (any) fprintf(f, "%llu", (unsigned long long)r->part_examples_min);
  else fputs("null", f);
  fputs(",\"examples_max\":", f);
  if (any) fprintf(f, "%llu", (unsigned long long)r->part_examples_max);
  else fputs("null", f);
  json_num(f, "train_loss_min", r->part_loss_min, any);
  json_num(f, "train_loss_max", r->part_loss_max, any);
  fputc('}', f);
}

void srv_write_metrics(server *s, double seconds) {
  round_stats *r = &s->r;
  double w = r->weight_sum; /* losses weigh as their updates did */
  double loss = w > 0 ? r->loss_sum / w : NAN, acc = w > 0 ? r->acc_sum / w : NAN;
  double fl = r->fed_n ? r->fed_loss / (double)r->fed_n : NAN;
  double fa = r->fed_acc_n ? r->fed_acc / (double)r->fed_acc_n : NAN;
  double fauc = r->fed_auc_n ? r->fed_auc / (double)r->fed_auc_n : NAN;
  char test[128] = "", fed[128] = "";
  if (r->tested) snprintf(test, sizeof test, ", test loss %.4f acc %.4f", r->test_loss, r->test_acc);
  if (r->tested && r->test_auc > 0)
    snprintf(test + strlen(test), sizeof test - strlen(test), " auc %.4f", r->test_auc);
  if (r->fed_n) snprintf(fed, sizeof fed, ", federated eval loss %.4f acc %.4f", fl, fa);
  if (r->fed_auc_n) snprintf(fed + strlen(fed), sizeof fed - strlen(fed), " auc %.4f", fauc);
  char failed[48] = "", priv[96] = "";
  if (r->failed) snprintf(failed, sizeof failed, ", %zu failed", r->failed);
  if (s->dp) snprintf(priv, sizeof priv, ", epsilon %.4g", r->epsilon);
  if (s->cfg->secagg)
    snprintf(priv + strlen(priv), sizeof priv - strlen(priv), ", secure sum of %zu", r->sa_inputs);
  fl_info("server", "round %llu/%d done: %zu/%zu updates (%zu refused, %zu dropped%s), %llu examples, "
          "train loss %.4f%s%s%s, %.2f s",
          (unsigned long long)r->number, s->cfg->rounds, r->accepted, r->selected, r->refused,
          r->dropped, failed, (unsigned long long)r->examples, loss, test, fed, priv, seconds);
  if (s->status) srv_status_round_done(s, seconds, loss, acc);
  if (!s->metrics) return;
  FILE *f = s->metrics;
  fprintf(f, "{\"round\":%llu,\"run\":\"%s\",\"attempts\":%llu,\"clients_selected\":%zu,\"updates_accepted\":%zu,"
          "\"updates_refused\":%zu,\"clients_dropped\":%zu,\"refusals\":[",
          (unsigned long long)r->number, s->run_id, (unsigned long long)r->attempt, r->selected, r->accepted,
          r->refused, r->dropped);
  for (size_t i = 0; i < r->n_refusals; i++) {
    fprintf(f, "%s{\"client\":", i ? "," : "");
    srv_json_str(f, r->refusals[i].client);
    fputs(",\"reason\":", f);
    srv_json_str(f, r->refusals[i].reason);
    fputc('}', f);
  }
  fprintf(f, "],\"clients_failed\":%zu,\"failures\":[", r->failed);
  for (size_t i = 0; i < r->n_failures; i++) {
    fprintf(f, "%s{\"client\":", i ? "," : "");
    srv_json_str(f, r->failures[i].client);
    fputs(",\"reason\":", f);
    srv_json_str(f, r->failures[i].reason);
    fputc('}', f);
  }
  fprintf(f, "],\"examples\":%llu", (unsigned long long)r->examples);
  json_num(f, "train_loss", loss, w > 0);
  json_num(f, "train_accuracy", acc, w > 0);
  json_num(f, "test_loss", r->test_loss, r->tested);
  json_num(f, "test_accuracy", r->test_acc, r->tested);
  json_num(f, "test_auc", r->test_auc, r->tested && r->test_auc > 0);
  json_num(f, "fed_eval_loss", fl, r->fed_n > 0);
  json_num(f, "fed_eval_accuracy", fa, r->fed_acc_n > 0);
  json_num(f, "fed_eval_auc", fauc, r->fed_auc_n > 0);
  fprintf(f, ",\"fed_eval_clients\":%zu", r->fed_answered);
  fprintf(f, ",\"bytes_received\":%llu,\"bytes_sent\":%llu",
          (unsigned long long)(s->bytes_in - r->bytes_in0),
          (unsigned long long)(s->bytes_out - r->bytes_out0));
  /* Tensor bytes each way as they went (frames of the model, chunk data of the updates),
   * and as float32 would have been: the compression. */
  fprintf(f, ",\"update_bytes\":%llu,\"update_bytes_raw\":%llu,\"model_bytes\":%llu,"
          "\"model_bytes_raw\":%llu",
          (unsigned long long)r->update_payload, (unsigned long long)r->update_raw,
          (unsigned long long)r->model_payload, (unsigned long long)r->model_raw);
  json_num(f, "update_compression", (double)r->update_raw / (double)r->update_payload,
           r->update_payload > 0);
  json_num(f, "model_compression", (double)r->model_raw / (double)r->model_payload,
           r->model_payload > 0);
  fprintf(f, ",\"fold_passes\":%zu,\"strategy_errors\":%zu,\"weights_capped\":%zu",
          r->fold_passes, r->strategy_errors, r->weights_capped);
  json_num(f, "update_norm_bound", r->norm_bound, r->norm_bound > 0 && !s->cfg->secagg && !s->dp);
  json_num(f, "aggregate_norm", r->delta_norm, r->accepted > 0);
  if (s->cfg->secagg)
    fprintf(f, ",\"secagg\":{\"clients\":%zu,\"keys\":%zu,\"shares\":%zu,\"inputs\":%zu,"
            "\"revealed\":%zu,\"unmask_seconds\":%.6g}", r->sa_n, r->sa_keys, r->sa_shared,
            r->sa_inputs, r->sa_revealed, r->sa_seconds);
  if (s->dp) {
    double server_eps;
    srv_privacy_epsilon(s, &server_eps);
    json_num(f, "dp_clip", r->dp_clip, 1);
    json_num(f, "dp_noise", s->cfg->dp_noise, 1);
    json_num(f, "dp_within_clip", r->dp_within, s->cfg->dp_quantile > 0);
    json_num(f, "epsilon", r->epsilon, 1);
    json_num(f, "server_epsilon", server_eps, 1);
    json_num(f, "dp_delta", s->cfg->dp_delta, 1);
  }
  write_participants(f, r);
  json_num(f, "seconds", seconds, 1);
  double cpu = srv_cpu_seconds();
  json_num(f, "cpu_seconds", cpu - r->cpu0, cpu >= 0 && r->cpu0 >= 0);
  json_num(f, "slowest_client_seconds", r->slowest, r->accepted > 0);
  fprintf(f, ",\"peak_rss_kib\":%ld", srv_peak_rss_kib());
  fputs("}\n", f);
  fflush(f);
}

/* --keep-best's metrics: name, whether lower is better. */
static const struct { const char *name; int lower; } best_metrics[] = {
    {"test_loss", 1},     {"test_accuracy", 0},     {"test_auc", 0},  {"fed_eval_loss", 1},
    {"fed_eval_accuracy", 0}, {"fed_eval_auc", 0}, {"train_loss", 1},
};

int srv_metric_find(const char *name) {
  for (int k = 0; k < (int)(sizeof best_metrics / sizeof best_metrics[0]); k++)
    if (strcmp(name, best_metrics[k].name) == 0) return k;
  return -1;
}

int srv_metric_value(const server *s, int k, double *v) {
  const round_stats *r = &s->r;
  switch (k) {
  case 0: *v = r->test_loss; return r->tested;
  case 1: *v = r->test_acc; return r->tested;
  case 2: *v = r->test_auc; return r->tested && r->test_auc > 0;
  case 3: *v = r->fed_n ? r->fed_loss / (double)r->fed_n : 0; return r->fed_n > 0;
  case 4: *v = r->fed_acc_n ? r->fed_acc / (double)r->fed_acc_n : 0; return r->fed_acc_n > 0;
  case 5: *v = r->fed_auc_n ? r->fed_auc / (double)r->fed_auc_n : 0; return r->fed_auc_n > 0;
  case 6: *v = r->weight_sum > 0 ? r->loss_sum / r->weight_sum : 0; return r->weight_sum > 0;
  }
  return 0;
}

int srv_metric_lower_is_better(int k) { return best_metrics[k].lower; }
