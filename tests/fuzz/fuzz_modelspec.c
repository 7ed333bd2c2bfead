/* libFuzzer target for model specs (the server sends one to every client, which builds
 * the model from it).  Any bytes: fl_model_create either refuses them with a message or
 * builds a model whose canonical spec builds the same model again, and whose layers fit
 * the flat buffer end to end (trained parameters first, then the state); an external
 * model has no layers and trains all of its parameters. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  char *spec = malloc(size + 1);
  if (!spec) return 0;
  memcpy(spec, data, size);
  spec[size] = '\0';
  fl_model *m = NULL, *again = NULL;
  char err[256] = "";
  if (fl_model_create(spec, &m, err, sizeof err) == 0) {
    if (fl_model_create(fl_model_spec(m), &again, err, sizeof err) != 0) abort();
    if (fl_model_id(again) != fl_model_id(m) || strcmp(fl_model_spec(again), fl_model_spec(m)))
      abort();
    size_t trained = 0, state = fl_model_num_trained(m);
    for (int i = 0; i < m->nlayers; i++) {
      const fl__layer *l = &m->layers[i];
      if (l->w_off != trained || l->b_off != trained + l->w_len) abort();
      if (l->b_len ? l->w_len % l->b_len != 0 : l->w_len != 0) abort();
      if (l->s_off != state) abort();
      if (l->out_size != (size_t)l->oc * l->oh * l->ow || l->out_size == 0) abort();
      if (i + 1 < m->nlayers && m->layers[i + 1].in_size != l->out_size) abort();
      trained += l->w_len + l->b_len;
      state += l->s_len;
    }
    if (fl_model_is_external(m)) { /* no layers: every parameter is trained, none state */
      if (m->nlayers != 0 || fl_model_num_trained(m) != fl_model_num_params(m)) abort();
    } else if (trained != fl_model_num_trained(m) || state != fl_model_num_params(m)) {
      abort();
    }
    if (fl_model_num_params(m) <= (1u << 16)) { /* initialise small ones */
      float *p = malloc(sizeof(float) * (fl_model_num_params(m) + 1));
      if (p) fl_model_init(m, p, 1);
      free(p);
    }
  } else if (!err[0]) {
    abort(); /* a refusal always says why */
  }
  fl_model_free(again);
  fl_model_free(m);
  free(spec);
  return 0;
}
