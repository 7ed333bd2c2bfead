/* Models: a sequence of layers described by a spec string.
 *
 * A spec defines every shape, so a server that holds no data can build the model from
 * the spec alone.  Grammar (tokens separated by spaces or commas):
 *   in:D | in:CxHxW            input shape (first token)
 *   dense:N                    fully connected, N outputs
 *   conv:K:F[:sS][:pP]         K filters of FxF, stride S (default 1), zero padding P on
 *                              each side (P < F; default "same": (F-1)/2 before, F/2
 *                              after); output (H + padding - F) / S + 1 per side
 *   pool:2                     2x2 max pooling, stride 2
 *   avgpool:F[:sS] | avgpool:global   FxF average pooling, stride S (default F); or one
 *                              window over the whole image
 *   batchnorm                  batch normalisation per channel (image) or feature
 *   relu  sigmoid  tanh  dropout:P
 *   softmax | sigmoid_bce | mse   the head (last token; fused loss)
 * conv, pool and avgpool need an image (in:CxHxW, before any dense layer).
 * Presets expand to specs: logreg, 2nn, cnn, mlp64 (see fl_model_preset in model.c).
 *
 * "external:NAME:N" is a model the training core does not know: N parameters a client's
 * own code trains (libflclient), NAME 1 to 64 of A-Z a-z 0-9 . _ -.  It has a spec, an
 * id and a parameter count like any model, and no layers: it cannot be trained or
 * evaluated here, and fl_model_init zeroes it.
 *
 * An fl_model is immutable once created and may be shared by any number of threads.
 * Parameters live outside it, in one flat float buffer of fl_model_num_params() floats:
 * first the trained parameters, layer by layer, weights then bias (batchnorm: its scale
 * gamma, then its shift beta), fl_model_num_trained() floats in all; then the state of
 * the layers that keep one, layer by layer (batchnorm: running mean, running variance).
 * State is part of the model like any parameter (sent to clients, averaged from their
 * deltas, saved in model files and checkpoints) but has no gradient: training updates
 * it from the batches it sees, no optimizer touches it, and evaluation uses it.  The
 * order and sizes of all tensors are part of the model's identity, fl_model_id(). */
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
/* The parameters an optimizer trains: the first fl_model_num_trained() of the buffer. */
size_t fl_model_num_trained(const fl_model *m);
size_t fl_model_input_dim(const fl_model *m);
/* Output width: classes for softmax, 1 for sigmoid_bce and mse. */
size_t fl_model_output_dim(const fl_model *m);
/* 64-bit identity: a hash of the canonical spec and of every tensor's size and order. */
uint64_t fl_model_id(const fl_model *m);

/* The spec a fixed preset name ("logreg", "2nn", "cnn", "mlp64") expands to, or NULL.
 * (fl_model_create also accepts "logreg:D:C".)  Static storage. */
const char *fl_model_preset(const char *name);

/* He (ReLU layers) / Xavier (others) initialisation into params, biases zero, batchnorm
 * scale 1, shift 0, running mean 0 and variance 1; the same seed gives bit-identical
 * weights.  An external model's parameters become zero. */
void fl_model_init(const fl_model *m, float *params, uint64_t seed);

/* Transfer learning: the parameters of some layers are frozen (not trained).  layers is
 * "head" (the last layer with parameters), "all-but-head" (every other one), or a comma
 * list of layer positions and ranges as in the spec without its input token, from 0
 * ("0,2-3"; the positions of fl-export's tensor names).  Writes mask [num_params]: 1.0
 * for every tensor of a frozen layer (trained and state), 0.0 elsewhere, and returns how
 * many parameters are frozen; FL_EINVAL with a message in err for a bad list, a
 * position past the last layer or a layer without parameters. */
long long fl_model_freeze_mask(const fl_model *m, const char *layers, float *mask, char *err,
                               size_t errlen);

/* FedBN (Li et al. 2021): the tensors of the batchnorm layers (scale, shift, running
 * statistics) are local to each client.  fl_model_local_size() floats hold them all
 * (0 for a model without batchnorm); get copies them out of params [num_params] into
 * local, put copies local into params and leaves every other parameter alone. */
size_t fl_model_local_size(const fl_model *m);
void fl_model_local_get(const fl_model *m, const float *params, float *local);
void fl_model_local_put(const fl_model *m, float *params, const float *local);
/* Copies the local tensors from src to dst, both [num_params]. */
void fl_model_local_copy(const fl_model *m, float *dst, const float *src);

#endif
