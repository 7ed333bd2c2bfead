/* Model specs: parsing, presets, the canonical spec, the model id, initialisation and
 * the local (FedBN) tensors.
 *
 * fl_model_create turns a spec into a table of layers (layers.h): each token is parsed by
 * its layer type's own file, found in the table of layers.c, and here every tensor gets
 * its place in the flat parameter buffer once; training only reads that table.
 * Parameter layout: layer by layer, weights then bias (dense weights [out][in], conv
 * weights [K][C][F][F], batchnorm gamma then beta), then every layer's state (batchnorm:
 * running mean, running variance), layer by layer. */
#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "layers.h"
#include "rng.h"

#define MAX_TOKENS 256
#define MAX_TOKEN_LEN 64
#define MAX_PARAMS ((size_t)1 << 30)     /* 4 GiB of float32 */
#define MAX_WIDTH ((size_t)1 << 26)      /* floats per sample in one activation */

static const struct { const char *name, *spec; } presets[] = {
    {"logreg", "in:784 dense:10 softmax"},
    {"2nn", "in:784 dense:200 relu dense:200 relu dense:10 softmax"},
    {"cnn", "in:1x28x28 conv:32:5 relu pool:2 conv:64:5 relu pool:2 dense:512 relu "
            "dense:10 softmax"},
    {"mlp64", "in:100 dense:64 relu dense:1 sigmoid_bce"},
};

typedef struct builder {
  fl_model *m;
  char *canon;           /* canonical spec being built */
  size_t canon_len, canon_cap;
  uint32_t c, h, w;      /* current shape */
  int image;             /* current shape is an image (conv/pool allowed) */
} builder;

static int canon_add(builder *b, const char *tok) {
  size_t n = strlen(tok);
  if (b->canon_len + n + 2 > b->canon_cap) {
    size_t cap = (b->canon_cap + n + 2) * 2;
    char *p = realloc(b->canon, cap);
    if (!p) return FL_ENOMEM;
    b->canon = p;
    b->canon_cap = cap;
  }
  if (b->canon_len) b->canon[b->canon_len++] = ' ';
  memcpy(b->canon + b->canon_len, tok, n + 1);
  b->canon_len += n;
  return 0;
}

static int parse_input(builder *b, const char *tok, char *err, size_t errlen) {
  uint32_t d[3];
  if (strncmp(tok, "in:", 3) != 0)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: the first token must be in:D or in:CxHxW, not '%s'",
                tok);
  int n = fl__parse_dims(tok + 3, 'x', d, 3);
  if (n == 1) {
    b->c = 1, b->h = 1, b->w = d[0], b->image = 0;
  } else if (n == 3) {
    b->c = d[0], b->h = d[1], b->w = d[2], b->image = 1;
  } else {
    return fl_errf(err, errlen, FL_EINVAL, "model spec: bad input token '%s' (expected in:D or in:CxHxW)",
                tok);
  }
  fl_model *m = b->m;
  m->in_c = b->c, m->in_h = b->h, m->in_w = b->w;
  m->in_dim = (size_t)b->c * b->h * b->w;
  if (m->in_dim > MAX_WIDTH)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: input '%s' is too large", tok);
  m->max_width = m->in_dim;
  char buf[MAX_TOKEN_LEN + 8];
  if (b->image)
    snprintf(buf, sizeof buf, "in:%ux%ux%u", b->c, b->h, b->w);
  else
    snprintf(buf, sizeof buf, "in:%u", b->w);
  return canon_add(b, buf);
}

static int parse_head(builder *b, const char *tok, char *err, size_t errlen) {
  fl_model *m = b->m;
  size_t width = (size_t)b->c * b->h * b->w;
  const fl__head_ops *h = fl__head_find(tok);
  if (!h)
    return fl_errf(err, errlen, FL_EINVAL,
                "model spec: the last token must be a head (softmax, sigmoid_bce or mse), "
                "not '%s'", tok);
  if (width < h->min_width || width > h->max_width) {
    if (h->min_width == h->max_width)
      return fl_errf(err, errlen, FL_EINVAL,
                     "model spec: head '%s' needs %zu output%s, the last layer gives %zu (%s)",
                     tok, h->min_width, h->min_width == 1 ? "" : "s", width, h->width_hint);
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec: head '%s' needs at least %zu outputs, the last layer gives "
                   "%zu (%s)", tok, h->min_width, width, h->width_hint);
  }
  m->head = h;
  m->out_dim = width;
  return canon_add(b, tok);
}

/* A layer token: its type's parse sets the shapes and sizes; here the tensors get their
 * place in the flat buffer (state offsets are fixed once every layer is known). */
static int parse_layer(builder *b, const char *tok, char *err, size_t errlen) {
  fl_model *m = b->m;
  const char *args;
  const fl__layer_ops *ops = fl__layer_find(tok, &args);
  if (!ops) {
    if (fl__head_find(tok))
      return fl_errf(err, errlen, FL_EINVAL, "model spec: head '%s' must be the last token", tok);
    if (strncmp(tok, "in:", 3) == 0)
      return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s': the input must be the first token only",
                  tok);
    return fl_errf(err, errlen, FL_EINVAL, "model spec: unknown token '%s'", tok);
  }
  fl__layer *l = &m->layers[m->nlayers++];
  memset(l, 0, sizeof *l);
  l->ops = ops;
  l->c = b->c, l->h = b->h, l->w = b->w;
  l->in_size = (size_t)b->c * b->h * b->w;
  char canon[MAX_TOKEN_LEN + 16];
  int rc = ops->parse(l, tok, args, &b->image, canon, sizeof canon, err, errlen);
  if (rc < 0) return rc;
  l->out_size = (size_t)l->oc * l->oh * l->ow;
  if (l->out_size > MAX_WIDTH)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' makes an activation of %zu values (limit %zu)",
                tok, l->out_size, MAX_WIDTH);
  if (l->w_len + l->b_len + l->s_len > MAX_PARAMS - m->num_params)
    return fl_errf(err, errlen, FL_EINVAL, "model spec: '%s' takes the model over %zu parameters", tok,
                MAX_PARAMS);
  l->w_off = m->num_trained, l->b_off = l->w_off + l->w_len;
  m->num_trained += l->w_len + l->b_len;
  m->num_params += l->w_len + l->b_len + l->s_len;
  if (l->out_size > m->max_width) m->max_width = l->out_size;
  if (l->scratch > m->max_scratch) m->max_scratch = l->scratch;
  if (ops->prepare) m->has_prepare = 1;
  b->c = l->oc, b->h = l->oh, b->w = l->ow;
  return canon_add(b, canon);
}

const char *fl_model_preset(const char *name) {
  for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
    if (strcmp(name, presets[i].name) == 0) return presets[i].spec;
  return NULL;
}

/* Expands a preset (or logreg:D:C) into buf; returns the spec to parse. */
static const char *expand_preset(const char *spec, char *buf, size_t len, char *err,
                                 size_t errlen, int *rc) {
  *rc = 0;
  const char *preset = fl_model_preset(spec);
  if (preset) return preset;
  if (strncmp(spec, "logreg:", 7) != 0) return spec;
  uint32_t d[2];
  if (fl__parse_dims(spec + 7, ':', d, 2) != 2 || d[1] < 2) {
    *rc = fl_errf(err, errlen, FL_EINVAL, "model spec: bad preset '%s' (expected logreg:D:C, C >= 2)", spec);
    return NULL;
  }
  if (d[1] == 2)
    snprintf(buf, len, "in:%u dense:1 sigmoid_bce", d[0]);
  else
    snprintf(buf, len, "in:%u dense:%u softmax", d[0], d[1]);
  return buf;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static uint64_t model_hash(const fl_model *m) {
  uint64_t h = fnv1a(0xcbf29ce484222325ULL, m->spec, strlen(m->spec));
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    if (!l->w_len) continue;
    /* state sizes only where there is state, so ids of models without any are as before */
    uint64_t sizes[3] = {l->w_len, l->b_len, l->s_len};
    for (int k = 0; k < (l->s_len ? 3 : 2); k++) {
      unsigned char le[8];
      for (int j = 0; j < 8; j++) le[j] = (unsigned char)(sizes[k] >> (8 * j));
      h = fnv1a(h, le, 8);
    }
  }
  return h;
}

/* "external:NAME:N": a model the training core does not know, by name and size (see
 * model.h).  No layers; its identity is the hash of the canonical spec. */
static int create_external(const char *spec, fl_model **out, char *err, size_t errlen) {
  const char *name = spec + 9, *colon = strrchr(name, ':');
  size_t len = colon ? (size_t)(colon - name) : 0;
  const char *ok = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
  unsigned long long n = 0;
  int digits = colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1) &&
               strlen(colon + 1) <= 10;
  if (digits) n = strtoull(colon + 1, NULL, 10);
  if (len == 0 || len > 64 || strspn(name, ok) < len || !digits || n == 0 || n > MAX_PARAMS)
    return fl_errf(err, errlen, FL_EINVAL,
                   "model spec '%s': an external model is external:NAME:N, NAME 1 to 64 of "
                   "A-Z a-z 0-9 . _ - and N parameters from 1 to %zu", spec, MAX_PARAMS);
  fl_model *m = calloc(1, sizeof *m);
  if (!m || asprintf(&m->spec, "external:%.*s:%llu", (int)len, name, n) < 0) {
    free(m);
    return FL_ENOMEM;
  }
  m->num_params = m->num_trained = (size_t)n;
  m->id = model_hash(m);
  *out = m;
  return 0;
}

int fl_model_is_external(const fl_model *m) { return m->nlayers == 0; }

int fl_model_create(const char *spec, fl_model **out, char *err, size_t errlen) {
  char expanded[96];
  int rc;
  *out = NULL;
  if (!spec) return fl_errf(err, errlen, FL_EINVAL, "model spec: missing");
  if (strncmp(spec, "external:", 9) == 0) return create_external(spec, out, err, errlen);
  const char *s = expand_preset(spec, expanded, sizeof expanded, err, errlen, &rc);
  if (!s) return rc;

  builder b = {0};
  b.m = calloc(1, sizeof *b.m);
  if (!b.m) return FL_ENOMEM;
  b.m->layers = calloc(MAX_TOKENS, sizeof *b.m->layers);
  if (!b.m->layers) { rc = FL_ENOMEM; goto fail; }

  /* Tokens are split on spaces and commas; the last one is the head. */
  char toks[MAX_TOKENS][MAX_TOKEN_LEN + 1];
  int ntok = 0;
  for (const char *p = s;;) {
    while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
    if (!*p) break;
    size_t n = strcspn(p, " ,\t\n");
    if (n > MAX_TOKEN_LEN) {
      rc = fl_errf(err, errlen, FL_EINVAL, "model spec: token '%.*s...' is too long", 16, p);
      goto fail;
    }
    if (ntok == MAX_TOKENS) {
      rc = fl_errf(err, errlen, FL_EINVAL, "model spec: more than %d tokens", MAX_TOKENS);
      goto fail;
    }
    memcpy(toks[ntok], p, n);
    toks[ntok++][n] = '\0';
    p += n;
  }
  if (ntok < 2) {
    rc = ntok ? fl_errf(err, errlen, FL_EINVAL, "model spec '%s': needs an input and a head (e.g. "
                     "'in:784 dense:10 softmax') or a preset (logreg, 2nn, cnn, mlp64)",
                     toks[0])
              : fl_errf(err, errlen, FL_EINVAL, "model spec: empty");
    goto fail;
  }
  if ((rc = parse_input(&b, toks[0], err, errlen)) < 0) goto fail;
  for (int i = 1; i < ntok - 1; i++)
    if ((rc = parse_layer(&b, toks[i], err, errlen)) < 0) goto fail;
  if ((rc = parse_head(&b, toks[ntok - 1], err, errlen)) < 0) goto fail;

  fl_model *m = b.m;
  size_t state = m->num_trained; /* state after every trained parameter */
  for (int i = 0; i < m->nlayers; i++) {
    fl__layer *l = &m->layers[i];
    l->s_off = state;
    state += l->s_len;
    l->he_init = i + 1 < m->nlayers && m->layers[i + 1].ops->relu;
  }
  m->spec = b.canon;
  m->id = model_hash(m);
  *out = m;
  return 0;
fail:
  free(b.canon);
  fl_model_free(b.m);
  return rc;
}

void fl_model_free(fl_model *m) {
  if (!m) return;
  free(m->spec);
  free(m->layers);
  free(m);
}

const char *fl_model_spec(const fl_model *m) { return m->spec; }
size_t fl_model_num_params(const fl_model *m) { return m->num_params; }
size_t fl_model_num_trained(const fl_model *m) { return m->num_trained; }
size_t fl_model_input_dim(const fl_model *m) { return m->in_dim; }
size_t fl_model_output_dim(const fl_model *m) { return m->out_dim; }
uint64_t fl_model_id(const fl_model *m) { return m->id; }

void fl_model_init(const fl_model *m, float *params, uint64_t seed) {
  if (fl_model_is_external(m)) {
    memset(params, 0, m->num_params * sizeof *params);
    return;
  }
  fl_rng r;
  fl_rng_seed(&r, seed);
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    if (l->ops->init) {
      l->ops->init(l, params, &r);
      continue;
    }
    if (!l->w_len) continue;
    double var = l->he_init ? 2.0 / (double)l->fan_in
                            : 2.0 / (double)(l->fan_in + l->fan_out);
    float sd = (float)sqrt(var);
    float *w = params + l->w_off;
    for (size_t j = 0; j < l->w_len; j++) w[j] = sd * fl_rng_normal(&r);
    memset(params + l->b_off, 0, sizeof(float) * l->b_len);
  }
}

/* The local layers' tensors, in layer order: weights, bias, state. */
static size_t local_copy(const fl_model *m, float *dst_params, const float *src_params,
                         float *dst_local, const float *src_local) {
  size_t k = 0;
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    if (!l->ops->local) continue;
    const size_t off[3] = {l->w_off, l->b_off, l->s_off}, len[3] = {l->w_len, l->b_len, l->s_len};
    for (int t = 0; t < 3; t++) {
      if (dst_local) memcpy(dst_local + k, src_params + off[t], sizeof(float) * len[t]);
      if (dst_params) memcpy(dst_params + off[t], src_local + k, sizeof(float) * len[t]);
      k += len[t];
    }
  }
  return k;
}

size_t fl_model_local_size(const fl_model *m) {
  return local_copy(m, NULL, NULL, NULL, NULL);
}

void fl_model_local_get(const fl_model *m, const float *params, float *local) {
  local_copy(m, NULL, params, local, NULL);
}

void fl_model_local_put(const fl_model *m, float *params, const float *local) {
  local_copy(m, params, NULL, NULL, local);
}

void fl_model_local_copy(const fl_model *m, float *dst, const float *src) {
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    if (!l->ops->local) continue;
    memcpy(dst + l->w_off, src + l->w_off, sizeof(float) * (l->w_len + l->b_len));
    memcpy(dst + l->s_off, src + l->s_off, sizeof(float) * l->s_len);
  }
}

static void freeze_layer(const fl__layer *l, float *mask) {
  for (size_t i = 0; i < l->w_len; i++) mask[l->w_off + i] = 1.0f;
  for (size_t i = 0; i < l->b_len; i++) mask[l->b_off + i] = 1.0f;
  for (size_t i = 0; i < l->s_len; i++) mask[l->s_off + i] = 1.0f;
}

long long fl_model_freeze_mask(const fl_model *m, const char *layers, float *mask, char *err,
                               size_t errlen) {
  memset(mask, 0, m->num_params * sizeof *mask);
  int head = -1;
  for (int i = 0; i < m->nlayers; i++)
    if (m->layers[i].w_len) head = i;
  if (head < 0)
    return fl_errf(err, errlen, FL_EINVAL, "--freeze: model '%s' has no layer with parameters",
                   m->spec);
  if (strcmp(layers, "head") == 0 || strcmp(layers, "all-but-head") == 0) {
    int but = layers[0] == 'a';
    for (int i = 0; i < m->nlayers; i++)
      if (m->layers[i].w_len && (i == head) != but) freeze_layer(&m->layers[i], mask);
  } else {
    for (const char *p = layers; *p;) {
      char *end;
      long a = strtol(p, &end, 10), b = a;
      if (end == p || a < 0) goto bad;
      if (*end == '-') {
        const char *q = end + 1;
        b = strtol(q, &end, 10);
        if (end == q || b < a) goto bad;
      }
      if (*end && *end != ',') goto bad;
      if (b >= m->nlayers)
        return fl_errf(err, errlen, FL_EINVAL, "--freeze: layer %ld, but model '%s' has layers "
                       "0..%d", b, m->spec, m->nlayers - 1);
      for (long i = a; i <= b; i++) {
        if (!m->layers[i].w_len)
          return fl_errf(err, errlen, FL_EINVAL, "--freeze: layer %ld (%s) has no parameters", i,
                         m->layers[i].ops->name);
        freeze_layer(&m->layers[i], mask);
      }
      p = *end ? end + 1 : end;
    }
  }
  long long n = 0;
  for (size_t i = 0; i < m->num_params; i++) n += mask[i] != 0.0f;
  if (n == 0) return fl_errf(err, errlen, FL_EINVAL, "--freeze '%s' freezes nothing", layers);
  return n;
bad:
  return fl_errf(err, errlen, FL_EINVAL, "--freeze: '%s' is not head, all-but-head or a list "
                 "of layer positions such as 0,2-3", layers);
}
