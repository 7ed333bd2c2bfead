/* Average pooling on [B][C][H][W]: `avgpool:F` (F x F windows, stride F),
 * `avgpool:F:sS` (stride S) and `avgpool:global` (one window over the whole image, as
 * before a network's classifier).  Output [B][C][OH][OW], OH = (H - F) / S + 1: windows
 * never leave the image (no padding), so a trailing row or column that no window
 * reaches is dropped, as max pooling does. */
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "layers.h"

enum { FH, FW, SH, SW, GLOBAL }; /* l->arg */

static int avgpool_parse(fl__layer *l, const char *tok, const char *args, int *image,
                         char *canon, size_t canon_len, char *err, size_t errlen) {
  uint32_t F, S;
  if (!*image)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' needs an image input (in:CxHxW)",
                   tok);
  if (args && strcmp(args, "global") == 0) {
    l->arg[FH] = l->h, l->arg[FW] = l->w, l->arg[SH] = l->h, l->arg[SW] = l->w;
    l->arg[GLOBAL] = 1;
    snprintf(canon, canon_len, "avgpool:global");
  } else {
    const char *s = args ? strchr(args, ':') : NULL;
    if (!args || fl__parse_dim(args, s ? (size_t)(s - args) : strlen(args), &F) < 0 ||
        (s && (s[1] != 's' || fl__parse_dim(s + 2, strlen(s + 2), &S) < 0)))
      return fl_errf(err, errlen, FL_EINVAL,
                     "model spec: bad token '%s' (expected avgpool:F, avgpool:F:sS or "
                     "avgpool:global)", tok);
    if (!s) S = F;
    if (F > l->h || F > l->w)
      return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s': a %ux%u window on a %ux%u image",
                     tok, F, F, l->h, l->w);
    l->arg[FH] = l->arg[FW] = F, l->arg[SH] = l->arg[SW] = S;
    if (S == F)
      snprintf(canon, canon_len, "avgpool:%u", F);
    else
      snprintf(canon, canon_len, "avgpool:%u:s%u", F, S);
  }
  l->oc = l->c;
  l->oh = (l->h - l->arg[FH]) / l->arg[SH] + 1;
  l->ow = (l->w - l->arg[FW]) / l->arg[SW] + 1;
  return 0;
}

/* y [B][C][OH][OW] = the mean of each window of x [B][C][H][W] */
static void avgpool_forward(const fl__layer *l, const fl__pass *p) {
  int H = (int)l->h, W = (int)l->w, OH = (int)l->oh, OW = (int)l->ow;
  int fh = (int)l->arg[FH], fw = (int)l->arg[FW], sh = (int)l->arg[SH], sw = (int)l->arg[SW];
  float inv = 1.0f / (float)(fh * fw);
  for (int bc = 0; bc < p->B * (int)l->c; bc++) {
    const float *x = p->x + (size_t)bc * H * W;
    float *y = p->y + (size_t)bc * OH * OW;
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        float s = 0.0f;
        for (int ky = 0; ky < fh; ky++) {
          const float *r = x + (size_t)(oy * sh + ky) * W + ox * sw;
          for (int kx = 0; kx < fw; kx++) s += r[kx];
        }
        y[oy * OW + ox] = s * inv;
      }
  }
}

/* dx [B][C][H][W]: each window's dy / (F*F) spread over it (summed where windows
 * overlap; zero where none reaches) */
static void avgpool_backward(const fl__layer *l, const fl__pass *p) {
  int H = (int)l->h, W = (int)l->w, OH = (int)l->oh, OW = (int)l->ow;
  int fh = (int)l->arg[FH], fw = (int)l->arg[FW], sh = (int)l->arg[SH], sw = (int)l->arg[SW];
  float inv = 1.0f / (float)(fh * fw);
  if (!p->dx) return;
  memset(p->dx, 0, sizeof(float) * (size_t)p->B * l->in_size);
  for (int bc = 0; bc < p->B * (int)l->c; bc++) {
    float *dx = p->dx + (size_t)bc * H * W;
    const float *dy = p->dy + (size_t)bc * OH * OW;
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        float g = dy[oy * OW + ox] * inv;
        for (int ky = 0; ky < fh; ky++) {
          float *r = dx + (size_t)(oy * sh + ky) * W + ox * sw;
          for (int kx = 0; kx < fw; kx++) r[kx] += g;
        }
      }
  }
}

const fl__layer_ops fl__avgpool_ops = {
    .name = "avgpool",
    .parse = avgpool_parse,
    .forward = avgpool_forward,
    .backward = avgpool_backward,
};
