/* Models: a sequence of layers described by a spec string.
 *
 * A spec defines every shape, so a server that holds no data can build the model from
 * the spec alone.  Grammar (tokens separated by spaces or commas):
 *   in:D | in:CxHxW            input shape (first token)
 *   dense:N  conv:K:F (FxF kernel, K filters, stride 1, same padding)  pool:2
 *   relu  sigmoid  tanh  dropout:P
 *   softmax | sigmoid_bce | mse   the head (last token; fused loss)
 * Presets expand to specs: logreg, 2nn, cnn, mlp64 (see fl_model_preset in model.c).
 *
 * "external:NAME:N" is a model the training core does not know: N parameters a client's
 * own code trains (libflclient), NAME 1 to 64 of A-Z a-z 0-9 . _ -.  It has a spec, an
 * id and a parameter count like any model, and no layers: it cannot be trained or
 * evaluated here, and fl_model_init zeroes it.
 *
 * An fl_model is immutable once created and may be shared by any number of threads.
 * Parameters live outside it, in one flat float buffer of fl_model_num_params() floats;
 * the order of tensors in that buffer (layer by layer, weights then bias) is part of the
 * model's identity, fl_model_id(). */
#ifndef FL_MODEL_H
#define FL_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_model fl_model;

/* Builds a model from a spec or a preset name.  On error returns FL_E* and writes a
 * message naming the bad token into err.  Caller frees with fl_model_free. */
int fl_model_create(const char *spec, fl_model **out, char *err, size_t errlen);
void fl_model_free(fl_model *m);

/* 1 for an "external:NAME:N" model (no layers). */
int fl_model_is_external(const fl_model *m);

/* The canonical spec (presets expanded, one space between tokens); owned by the model. */
const char *fl_model_spec(const fl_model *m);
size_t fl_model_num_params(const fl_model *m);
size_t fl_model_input_dim(const fl_model *m);
/* Output width: classes for softmax, 1 for sigmoid_bce and mse. */
size_t fl_model_output_dim(const fl_model *m);
/* 64-bit identity: a hash of the canonical spec and of every tensor's size and order. */
uint64_t fl_model_id(const fl_model *m);

/* The spec a fixed preset name ("logreg", "2nn", "cnn", "mlp64") expands to, or NULL.
 * (fl_model_create also accepts "logreg:D:C".)  Static storage. */
const char *fl_model_preset(const char *name);

/* He (ReLU layers) / Xavier (others) initialisation into params, biases zero; the same
 * seed gives bit-identical weights.  An external model's parameters become zero. */
void fl_model_init(const fl_model *m, float *params, uint64_t seed);

#endif
