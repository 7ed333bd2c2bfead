/* Inverted dropout `dropout:P`: in training each activation is kept with probability
 * 1 - P and scaled by 1/(1-P), so evaluation (which keeps everything) needs no scaling.
 *
 * The masks of a step are drawn before its forward pass, on one thread, in layer order
 * from the trainer's stream: the same draws whatever the number of threads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "layers.h"

/* The shortest %g form of p that reads back as the same float. */
static void format_prob(char *buf, size_t len, float p) {
  for (int prec = 1; prec <= 9; prec++) {
    snprintf(buf, len, "%.*g", prec, (double)p);
    if (strtof(buf, NULL) == p) return;
  }
}

static int dropout_parse(fl__layer *l, const char *tok, const char *args, int *image,
                         char *canon, size_t canon_len, char *err, size_t errlen) {
  (void)image;
  char *end;
  float p = args ? strtof(args, &end) : -1.0f;
  if (!args || end == args || *end || !(p >= 0.0f && p < 1.0f))
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: bad token '%s' (expected dropout:P, 0 <= P < 1)", tok);
  l->oc = l->c, l->oh = l->h, l->ow = l->w;
  l->farg = p;
  l->aux_len = p > 0.0f ? (size_t)l->oc * l->oh * l->ow : 0; /* the mask */
  char prob[32];
  format_prob(prob, sizeof prob, p);
  snprintf(canon, canon_len, "dropout:%s", prob);
  return 0;
}

/* mask [batch][n]: 0 or 1/(1-p) */
static void dropout_prepare(const fl__layer *l, const fl__pass *p, fl_rng *r) {
  if (!(l->farg > 0.0f)) return;
  float keep = 1.0f / (1.0f - l->farg), *mask = p->aux;
  for (size_t i = 0, n = (size_t)p->batch * l->out_size; i < n; i++)
    mask[i] = fl_rng_uniform(r) < l->farg ? 0.0f : keep;
}

static void dropout_forward(const fl__layer *l, const fl__pass *p) {
  size_t n = (size_t)p->B * l->out_size;
  if (p->training && l->farg > 0.0f) {
    const float *mask = p->aux;
    for (size_t i = 0; i < n; i++) p->y[i] = p->x[i] * mask[i];
  } else {
    memcpy(p->y, p->x, sizeof(float) * n);
  }
}

static void dropout_backward(const fl__layer *l, const fl__pass *p) {
  size_t n = (size_t)p->B * l->out_size;
  if (!p->dx) return;
  if (l->farg > 0.0f) {
    const float *mask = p->aux;
    for (size_t i = 0; i < n; i++) p->dx[i] = p->dy[i] * mask[i];
  } else {
    memcpy(p->dx, p->dy, sizeof(float) * n);
  }
}

const fl__layer_ops fl__dropout_ops = {
    .name = "dropout",
    .parse = dropout_parse,
    .prepare = dropout_prepare,
    .forward = dropout_forward,
    .backward = dropout_backward,
};
