/* Export to ONNX and to NumPy .npy files (export.h).
 *
 * The ONNX model is a tree of protobuf-c messages built in an arena (every piece one
 * allocation on a list, freed together), packed once and written atomically.  Tensor
 * data is copied into raw_data little-endian, as ONNX stores it. */
#include "export.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fileio.h"
#include "layers.h"
#include "onnx.pb-c.h"

#define OPSET 13
#define IR_VERSION 7 /* the IR of opset 13 (ONNX 1.8) */
#define BN_EPS 1e-5f /* batchnorm.c's */

/* ---- the tensors of a model ---- */

static void tensor(fl_tensor_info *t, int layer, const char *type, const char *part,
                   size_t off, size_t size, int rank, size_t d0, size_t d1, size_t d2,
                   size_t d3) {
  snprintf(t->name, sizeof t->name, "l%d_%s.%s", layer, type, part);
  t->rank = rank;
  t->shape[0] = d0, t->shape[1] = d1, t->shape[2] = d2, t->shape[3] = d3;
  t->offset = off;
  t->size = size;
}

size_t fl_model_tensors(const fl_model *m, fl_tensor_info *out, size_t max) {
  size_t n = 0;
  fl_tensor_info t;
#define ADD(...) (tensor(&t, __VA_ARGS__), n < max ? (void)(out[n] = t) : (void)0, n++)
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    const char *ty = l->ops->name;
    if (!l->w_len) continue;
    if (strcmp(ty, "conv") == 0) {
      size_t K = l->b_len, F = l->arg[1];
      ADD(i, ty, "weight", l->w_off, l->w_len, 4, K, l->c, F, F);
    } else if (strcmp(ty, "dense") == 0) {
      ADD(i, ty, "weight", l->w_off, l->w_len, 2, l->b_len, l->w_len / l->b_len, 0, 0);
    } else {
      ADD(i, ty, "weight", l->w_off, l->w_len, 1, l->w_len, 0, 0, 0);
    }
    ADD(i, ty, "bias", l->b_off, l->b_len, 1, l->b_len, 0, 0, 0);
  }
  for (int i = 0; i < m->nlayers; i++) {
    const fl__layer *l = &m->layers[i];
    if (!l->s_len) continue; /* batchnorm: running mean, running variance */
    ADD(i, l->ops->name, "running_mean", l->s_off, l->s_len / 2, 1, l->s_len / 2, 0, 0, 0);
    ADD(i, l->ops->name, "running_var", l->s_off + l->s_len / 2, l->s_len / 2, 1,
        l->s_len / 2, 0, 0, 0);
  }
#undef ADD
  return n;
}

/* ---- .npy ---- */

static int write_npy(const char *dir, const char *name, const float *data, int rank,
                     const size_t *shape, char *err, size_t errlen) {
  char path[4096], head[256], dims[160] = "";
  size_t count = 1;
  for (int k = 0; k < rank; k++) {
    size_t used = strlen(dims);
    snprintf(dims + used, sizeof dims - used, "%zu,%s", shape[k], k + 1 < rank ? " " : "");
    count *= shape[k];
  }
  if (rank > 1) dims[strlen(dims) - 1] = 0; /* (a, b) but (a,) */
  int h = snprintf(head, sizeof head, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }",
                   dims);
  /* magic, version 1.0, header length, header padded with spaces to a multiple of 64
   * (with its newline), as the format asks */
  size_t total = 10 + (size_t)h + 1, pad = (64 - total % 64) % 64;
  uint8_t pre[10 + sizeof head + 64];
  memcpy(pre, "\x93NUMPY\x01\x00", 8);
  size_t hl = (size_t)h + pad + 1;
  pre[8] = (uint8_t)(hl & 0xff), pre[9] = (uint8_t)(hl >> 8);
  memcpy(pre + 10, head, (size_t)h);
  memset(pre + 10 + h, ' ', pad);
  pre[10 + hl - 1] = '\n';
  snprintf(path, sizeof path, "%s/%s.npy", dir, name);
  fl_piece pieces[2] = {{pre, 10 + hl}, {data, count * sizeof(float)}};
  return fl_file_write_atomic_pieces(path, pieces, 2, err, errlen);
}

int fl_export_npy(const fl_model *m, const float *params, const float *mean,
                  const float *std, const char *dir, char *err, size_t errlen) {
  size_t n = fl_model_tensors(m, NULL, 0);
  fl_tensor_info *t = malloc(sizeof *t * (n ? n : 1));
  if (!t) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  fl_model_tensors(m, t, n);
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = write_npy(dir, t[i].name, params + t[i].offset, t[i].rank, t[i].shape, err, errlen);
  size_t D = m->in_dim;
  if (rc == 0 && mean) rc = write_npy(dir, "input.mean", mean, 1, &D, err, errlen);
  if (rc == 0 && std) rc = write_npy(dir, "input.std", std, 1, &D, err, errlen);
  free(t);
  return rc;
}

/* ---- ONNX ---- */

typedef union block { union block *next; max_align_t align; } block;

typedef struct builder {
  block *blocks;            /* every allocation, freed together */
  int oom;
  Onnx__NodeProto **nodes;
  size_t n_nodes, cap_nodes;
  Onnx__TensorProto **inits;
  size_t n_inits, cap_inits;
  char cur[64];             /* the value the next node reads */
  int serial;
} builder;

static void *balloc(builder *b, size_t size) {
  block *k = calloc(1, sizeof(block) + size);
  if (!k) {
    b->oom = 1;
    return NULL;
  }
  k->next = b->blocks;
  b->blocks = k;
  return k + 1;
}

static char *bstr(builder *b, const char *s) {
  char *p = balloc(b, strlen(s) + 1);
  if (p) strcpy(p, s);
  return p;
}

static int push(builder *b, void ***arr, size_t *n, size_t *cap, void *item) {
  if (!item) return -1;
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    void **p = realloc(*arr, c * sizeof *p);
    if (!p) {
      b->oom = 1;
      return -1;
    }
    *arr = p, *cap = c;
  }
  (*arr)[(*n)++] = item;
  return 0;
}

/* A float32 initializer named name with the given dims, copied from data. */
static void init_float(builder *b, const char *name, const float *data, int rank,
                       const size_t *shape) {
  Onnx__TensorProto *t = balloc(b, sizeof *t);
  int64_t *dims = balloc(b, sizeof(int64_t) * (size_t)(rank ? rank : 1));
  if (!t || !dims) return;
  onnx__tensor_proto__init(t);
  size_t count = 1;
  for (int k = 0; k < rank; k++) dims[k] = (int64_t)shape[k], count *= shape[k];
  uint8_t *raw = balloc(b, count * 4);
  if (!raw) return;
  for (size_t i = 0; i < count; i++) {
    uint32_t u;
    memcpy(&u, &data[i], 4);
    fl_put32(raw + 4 * i, u);
  }
  t->n_dims = (size_t)rank, t->dims = dims;
  t->has_data_type = 1, t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  t->name = bstr(b, name);
  t->has_raw_data = 1, t->raw_data.len = count * 4, t->raw_data.data = raw;
  push(b, (void ***)&b->inits, &b->n_inits, &b->cap_inits, t);
}

static void init_int64(builder *b, const char *name, const int64_t *v, size_t n) {
  Onnx__TensorProto *t = balloc(b, sizeof *t);
  int64_t *dims = balloc(b, sizeof(int64_t)), *data = balloc(b, sizeof(int64_t) * n);
  if (!t || !dims || !data) return;
  onnx__tensor_proto__init(t);
  dims[0] = (int64_t)n;
  memcpy(data, v, sizeof(int64_t) * n);
  t->n_dims = 1, t->dims = dims;
  t->has_data_type = 1, t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
  t->name = bstr(b, name);
  t->n_int64_data = n, t->int64_data = data;
  push(b, (void ***)&b->inits, &b->n_inits, &b->cap_inits, t);
}

/* An attribute named name of the given type, its value left to the caller. */
static Onnx__AttributeProto *attr_new(builder *b, const char *name,
                                      Onnx__AttributeProto__AttributeType type) {
  Onnx__AttributeProto *a = balloc(b, sizeof *a);
  if (!a) return NULL;
  onnx__attribute_proto__init(a);
  a->name = bstr(b, name);
  a->has_type = 1, a->type = type;
  return a;
}

static Onnx__AttributeProto *attr_ints(builder *b, const char *name, const int64_t *v,
                                       size_t n) {
  Onnx__AttributeProto *a = attr_new(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
  int64_t *ints = balloc(b, sizeof(int64_t) * n);
  if (!a || !ints) return NULL;
  memcpy(ints, v, sizeof(int64_t) * n);
  a->n_ints = n, a->ints = ints;
  return a;
}

static Onnx__AttributeProto *attr_int(builder *b, const char *name, int64_t v) {
  Onnx__AttributeProto *a = attr_new(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
  if (a) a->has_i = 1, a->i = v;
  return a;
}

static Onnx__AttributeProto *attr_float(builder *b, const char *name, float v) {
  Onnx__AttributeProto *a = attr_new(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
  if (a) a->has_f = 1, a->f = v;
  return a;
}

/* A node reading b->cur then the extra inputs, writing `out` (or a fresh name), which
 * becomes b->cur.  attrs: n_attrs attributes (NULL entries mean out of memory). */
static void node(builder *b, const char *op, const char *const *extra, size_t n_extra,
                 Onnx__AttributeProto **attrs, size_t n_attrs, const char *out) {
  Onnx__NodeProto *nd = balloc(b, sizeof *nd);
  char **in = balloc(b, sizeof(char *) * (1 + n_extra)), **outs = balloc(b, sizeof(char *));
  Onnx__AttributeProto **at = balloc(b, sizeof *at * (n_attrs ? n_attrs : 1));
  char name[48], next[64];
  if (!nd || !in || !outs || !at) return;
  onnx__node_proto__init(nd);
  snprintf(name, sizeof name, "%s_%d", op, b->serial++);
  if (out)
    snprintf(next, sizeof next, "%s", out);
  else
    snprintf(next, sizeof next, "%s_out", name);
  in[0] = bstr(b, b->cur);
  for (size_t i = 0; i < n_extra; i++) in[1 + i] = bstr(b, extra[i]);
  outs[0] = bstr(b, next);
  for (size_t i = 0; i < n_attrs; i++) {
    if (!attrs[i]) b->oom = 1;
    at[i] = attrs[i];
  }
  nd->n_input = 1 + n_extra, nd->input = in;
  nd->n_output = 1, nd->output = outs;
  nd->name = bstr(b, name);
  nd->op_type = bstr(b, op);
  nd->n_attribute = n_attrs, nd->attribute = at;
  push(b, (void ***)&b->nodes, &b->n_nodes, &b->cap_nodes, nd);
  snprintf(b->cur, sizeof b->cur, "%s", next);
}

/* A graph input or output: float32 [N][width], N symbolic. */
static Onnx__ValueInfoProto *value_info(builder *b, const char *name, size_t width) {
  Onnx__ValueInfoProto *v = balloc(b, sizeof *v);
  Onnx__TypeProto *tp = balloc(b, sizeof *tp);
  Onnx__TypeProto__Tensor *tt = balloc(b, sizeof *tt);
  Onnx__TensorShapeProto *sh = balloc(b, sizeof *sh);
  Onnx__TensorShapeProto__Dimension *d0 = balloc(b, sizeof *d0), *d1 = balloc(b, sizeof *d1);
  Onnx__TensorShapeProto__Dimension **dims = balloc(b, 2 * sizeof *dims);
  if (!v || !tp || !tt || !sh || !d0 || !d1 || !dims) return NULL;
  onnx__value_info_proto__init(v);
  onnx__type_proto__init(tp);
  onnx__type_proto__tensor__init(tt);
  onnx__tensor_shape_proto__init(sh);
  onnx__tensor_shape_proto__dimension__init(d0);
  onnx__tensor_shape_proto__dimension__init(d1);
  d0->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
  d0->dim_param = bstr(b, "N");
  d1->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
  d1->dim_value = (int64_t)width;
  dims[0] = d0, dims[1] = d1;
  sh->n_dim = 2, sh->dim = dims;
  tt->has_elem_type = 1, tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  tt->shape = sh;
  tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
  tp->tensor_type = tt;
  v->name = bstr(b, name);
  v->type = tp;
  return v;
}

/* The nodes of layer i, reading and updating b->cur; *image says whether the current
 * value is [N][C][H][W] (else [N][D]).  0, or -1 for a layer type this file does not
 * know (a new layer type needs its ONNX form here). */
static int layer_nodes(builder *b, const fl_model *m, const float *params, int i,
                        const fl_tensor_info *t, size_t nt, int *image) {
  const fl__layer *l = &m->layers[i];
  const char *ty = l->ops->name;
  const char *names[4];
  size_t k = 0;
  for (size_t j = 0; j < nt; j++) /* this layer's tensors, in buffer order */
    if (strncmp(t[j].name, "l", 1) == 0 && atoi(t[j].name + 1) == i) {
      init_float(b, t[j].name, params + t[j].offset, t[j].rank, t[j].shape);
      if (k < 4) names[k++] = t[j].name;
    }
  if (strcmp(ty, "dense") == 0) {
    if (*image) node(b, "Flatten", NULL, 0, (Onnx__AttributeProto *[]){attr_int(b, "axis", 1)},
                     1, NULL);
    *image = 0;
    node(b, "Gemm", names, 2, (Onnx__AttributeProto *[]){attr_int(b, "transB", 1)}, 1, NULL);
  } else if (strcmp(ty, "conv") == 0) {
    int64_t F = l->arg[1], S = l->arg[2], pt = l->arg[3], pb = l->arg[4];
    Onnx__AttributeProto *a[] = {attr_ints(b, "kernel_shape", (int64_t[]){F, F}, 2),
                                 attr_ints(b, "strides", (int64_t[]){S, S}, 2),
                                 attr_ints(b, "pads", (int64_t[]){pt, pt, pb, pb}, 4)};
    node(b, "Conv", names, 2, a, 3, NULL);
  } else if (strcmp(ty, "pool") == 0) {
    Onnx__AttributeProto *a[] = {attr_ints(b, "kernel_shape", (int64_t[]){2, 2}, 2),
                                 attr_ints(b, "strides", (int64_t[]){2, 2}, 2)};
    node(b, "MaxPool", NULL, 0, a, 2, NULL);
  } else if (strcmp(ty, "avgpool") == 0) {
    if (l->arg[4]) {
      node(b, "GlobalAveragePool", NULL, 0, NULL, 0, NULL);
    } else {
      Onnx__AttributeProto *a[] = {
          attr_ints(b, "kernel_shape", (int64_t[]){l->arg[0], l->arg[1]}, 2),
          attr_ints(b, "strides", (int64_t[]){l->arg[2], l->arg[3]}, 2)};
      node(b, "AveragePool", NULL, 0, a, 2, NULL);
    }
  } else if (strcmp(ty, "batchnorm") == 0) {
    node(b, "BatchNormalization", names, 4,
         (Onnx__AttributeProto *[]){attr_float(b, "epsilon", BN_EPS)}, 1, NULL);
  } else if (strcmp(ty, "relu") == 0) {
    node(b, "Relu", NULL, 0, NULL, 0, NULL);
  } else if (strcmp(ty, "sigmoid") == 0) {
    node(b, "Sigmoid", NULL, 0, NULL, 0, NULL);
  } else if (strcmp(ty, "tanh") == 0) {
    node(b, "Tanh", NULL, 0, NULL, 0, NULL);
  } else if (strcmp(ty, "dropout") != 0) { /* dropout: the identity at inference */
    return -1;
  }
  return 0;
}

static void builder_free(builder *b) {
  for (block *k = b->blocks, *next; k; k = next) {
    next = k->next;
    free(k);
  }
  free(b->nodes);
  free(b->inits);
}

int fl_export_onnx(const fl_model *m, const float *params, const float *mean,
                   const float *std, const char *path, char *err, size_t errlen) {
  if (fl_model_is_external(m))
    return fl_errf(err, errlen, FL_EINVAL,
                   "%s: an external model has no layers to export (its parameters can go to "
                   ".npy only through its own code)", path);
  builder b = {0};
  uint8_t *buf = NULL;
  int rc = 0;
  size_t nt = fl_model_tensors(m, NULL, 0);
  fl_tensor_info *t = malloc(sizeof *t * (nt ? nt : 1));
  if (!t) return fl_errf(err, errlen, FL_ENOMEM, "out of memory");
  fl_model_tensors(m, t, nt);

  snprintf(b.cur, sizeof b.cur, "input");
  if (mean && std) {
    size_t D = m->in_dim;
    init_float(&b, "input.mean", mean, 1, &D);
    init_float(&b, "input.std", std, 1, &D);
    node(&b, "Sub", (const char *[]){"input.mean"}, 1, NULL, 0, NULL);
    node(&b, "Div", (const char *[]){"input.std"}, 1, NULL, 0, NULL);
  }
  /* an image model's spec starts in:CxHxW */
  const char *spec = fl_model_spec(m), *sp = strchr(spec, ' ');
  int image = memchr(spec, 'x', sp ? (size_t)(sp - spec) : strlen(spec)) != NULL;
  if (image) {
    init_int64(&b, "input.shape",
               (int64_t[]){-1, (int64_t)m->in_c, (int64_t)m->in_h, (int64_t)m->in_w}, 4);
    node(&b, "Reshape", (const char *[]){"input.shape"}, 1, NULL, 0, NULL);
  }
  for (int i = 0; i < m->nlayers; i++)
    if (layer_nodes(&b, m, params, i, t, nt, &image) < 0) {
      rc = fl_errf(err, errlen, FL_EINVAL, "%s: layer %d (%s) has no ONNX form in this "
                   "build", path, i, m->layers[i].ops->name);
      goto out;
    }
  if (image) node(&b, "Flatten", NULL, 0, (Onnx__AttributeProto *[]){attr_int(&b, "axis", 1)},
                  1, NULL);
  const char *head = m->head->name;
  if (strcmp(head, "softmax") == 0)
    node(&b, "Softmax", NULL, 0, (Onnx__AttributeProto *[]){attr_int(&b, "axis", 1)}, 1,
         "output");
  else if (strcmp(head, "sigmoid_bce") == 0)
    node(&b, "Sigmoid", NULL, 0, NULL, 0, "output");
  else
    node(&b, "Identity", NULL, 0, NULL, 0, "output");

  Onnx__GraphProto *g = balloc(&b, sizeof *g);
  Onnx__ModelProto *mp = balloc(&b, sizeof *mp);
  Onnx__OperatorSetIdProto *ops = balloc(&b, sizeof *ops);
  Onnx__OperatorSetIdProto **opsv = balloc(&b, sizeof *opsv);
  Onnx__ValueInfoProto **in = balloc(&b, sizeof *in), **out = balloc(&b, sizeof *out);
  if (!g || !mp || !ops || !opsv || !in || !out || b.oom) goto nomem;
  in[0] = value_info(&b, "input", m->in_dim);
  out[0] = value_info(&b, "output", m->out_dim);
  onnx__graph_proto__init(g);
  onnx__model_proto__init(mp);
  onnx__operator_set_id_proto__init(ops);
  ops->domain = bstr(&b, "");
  ops->has_version = 1, ops->version = OPSET;
  opsv[0] = ops;
  g->name = bstr(&b, "fl");
  g->doc_string = bstr(&b, fl_model_spec(m));
  g->n_node = b.n_nodes, g->node = b.nodes;
  g->n_initializer = b.n_inits, g->initializer = b.inits;
  g->n_input = 1, g->input = in;
  g->n_output = 1, g->output = out;
  mp->has_ir_version = 1, mp->ir_version = IR_VERSION;
  mp->n_opset_import = 1, mp->opset_import = opsv;
  mp->producer_name = bstr(&b, "fl");
  mp->producer_version = bstr(&b, "1");
  mp->graph = g;
  if (b.oom || !in[0] || !out[0]) goto nomem;

  size_t len = onnx__model_proto__get_packed_size(mp);
  if (!(buf = malloc(len ? len : 1))) goto nomem;
  onnx__model_proto__pack(mp, buf);
  rc = fl_file_write_atomic(path, buf, len, err, errlen);
  goto out;
nomem:
  rc = fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory building the ONNX model", path);
out:
  free(buf);
  free(t);
  builder_free(&b);
  return rc;
}
