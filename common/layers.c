/* The table of layer types.  Adding a layer type: its file, which defines
 * `const fl__layer_ops fl__NAME_ops` (see layers.h), and NAME in the list below. */
#include "layers.h"

#include <string.h>

#define LAYERS(X) \
  X(dense) X(conv) X(maxpool) X(avgpool) X(batchnorm) X(relu) X(sigmoid) X(tanh) X(dropout)

#define DECLARE(name) extern const fl__layer_ops fl__##name##_ops;
LAYERS(DECLARE)
#undef DECLARE

#define ENTRY(name) &fl__##name##_ops,
static const fl__layer_ops *const table[] = {LAYERS(ENTRY)};
#undef ENTRY

const fl__layer_ops *fl__layer_find(const char *tok, const char **args) {
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    size_t n = strlen(table[i]->name);
    if (strncmp(tok, table[i]->name, n) != 0) continue;
    if (tok[n] == '\0') {
      *args = NULL;
      return table[i];
    }
    if (tok[n] == ':') {
      *args = tok + n + 1;
      return table[i];
    }
  }
  return NULL;
}

int fl__parse_dim(const char *s, size_t len, uint32_t *out) {
  uint64_t v = 0;
  if (len == 0 || len > 9) return -1;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v == 0 || v > (1u << 24)) return -1;
  *out = (uint32_t)v;
  return 0;
}

int fl__parse_dims(const char *s, char sep, uint32_t *out, int n) {
  int k = 0;
  for (;;) {
    const char *e = strchr(s, sep);
    size_t len = e ? (size_t)(e - s) : strlen(s);
    if (k == n || fl__parse_dim(s, len, &out[k]) < 0) return -1;
    k++;
    if (!e) return k;
    s = e + 1;
  }
}
