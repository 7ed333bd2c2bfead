/* Model specs: presets and their parameter counts, canonical specs, ids, parse errors
 * naming the bad token, seeded initialisation, and external models. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"

static fl_model *create(const char *spec) {
  fl_model *m = NULL;
  char err[256] = "";
  int rc = fl_model_create(spec, &m, err, sizeof err);
  cr_assert_eq(rc, 0, "%s: %s", spec, err);
  return m;
}

Test(model, preset_param_counts) {
  static const struct { const char *name; size_t params, in, out; } cases[] = {
      {"logreg", 7850, 784, 10},       {"2nn", 199210, 784, 10},
      {"cnn", 1663370, 784, 10},       {"mlp64", 6529, 100, 1},
      {"logreg:20:2", 21, 20, 1},      {"logreg:30:5", 155, 30, 5},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fl_model *m = create(cases[i].name);
    cr_expect_eq(fl_model_num_params(m), cases[i].params, "%s: %zu", cases[i].name,
                 fl_model_num_params(m));
    cr_expect_eq(fl_model_input_dim(m), cases[i].in);
    cr_expect_eq(fl_model_output_dim(m), cases[i].out);
    fl_model_free(m);
  }
}

Test(model, canonical_spec_and_id) {
  fl_model *a = create("2nn");
  fl_model *b = create(" in:784,dense:200  relu,dense:200 relu dense:10 , softmax ");
  fl_model *c = create("in:784 dense:200 relu dense:200 relu dense:1 mse");
  fl_model *d = create("logreg:784:2");
  cr_assert_str_eq(fl_model_spec(a), fl_model_preset("2nn"));
  cr_assert_str_eq(fl_model_spec(b), fl_model_spec(a));
  cr_assert_eq(fl_model_id(a), fl_model_id(b));
  cr_assert_neq(fl_model_id(a), fl_model_id(c));
  cr_assert_str_eq(fl_model_spec(d), "in:784 dense:1 sigmoid_bce");
  fl_model_free(a); fl_model_free(b); fl_model_free(c); fl_model_free(d);

  fl_model *e = create("in:10 dense:4 dropout:0.50 dense:2 softmax");
  cr_assert_str_eq(fl_model_spec(e), "in:10 dense:4 dropout:0.5 dense:2 softmax");
  fl_model_free(e);
  fl_model *f = create("in:3x8x8 conv:4:3 tanh pool:2 sigmoid dense:2 softmax");
  cr_assert_str_eq(fl_model_spec(f), "in:3x8x8 conv:4:3 tanh pool:2 sigmoid dense:2 softmax");
  cr_assert_eq(fl_model_num_params(f), 4 * 27 + 4 + 64 * 2 + 2);
  fl_model_free(f);
}

/* Model files and checkpoints carry the id: the layer table kept every id as it was
 * (values from the training core before it, commit 88d879d). */
Test(model, ids_unchanged_by_the_layer_table) {
  static const struct { const char *spec; uint64_t id; } cases[] = {
      {"logreg", 0x6c96ed763b448217ULL},
      {"2nn", 0x3b4dc9aabad3f938ULL},
      {"cnn", 0x30e919d0bfb92faaULL},
      {"mlp64", 0x770f9f5fe11c6707ULL},
      {"in:3x8x8 conv:4:3 tanh pool:2 sigmoid dense:2 softmax", 0x7e33f6197eb8c9c6ULL},
      {"in:10 dense:4 dropout:0.5 dense:2 softmax", 0x184cd35bd7d70527ULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fl_model *m = create(cases[i].spec);
    cr_expect_eq(fl_model_id(m), cases[i].id, "%s", cases[i].spec);
    fl_model_free(m);
  }
}

Test(model, new_layers_canonical_and_sizes) {
  static const struct { const char *spec, *canon; size_t trained, params, out; } cases[] = {
      /* conv with stride and padding: 28 -> (28 + 1 + 2 - 4) / 2 + 1 = 14 */
      {"in:1x28x28 conv:8:4:s2 dense:2 softmax", "in:1x28x28 conv:8:4:s2 dense:2 softmax",
       8 * 16 + 8 + 8 * 14 * 14 * 2 + 2, 0, 2},
      /* p2 on a 5x5 kernel is the default padding: the same model */
      {"in:1x8x8 conv:2:5:p2:s1 dense:2 softmax", "in:1x8x8 conv:2:5 dense:2 softmax",
       2 * 25 + 2 + 2 * 64 * 2 + 2, 0, 2},
      {"in:1x8x8 conv:2:5:p0 dense:2 softmax", "in:1x8x8 conv:2:5:p0 dense:2 softmax",
       2 * 25 + 2 + 2 * 16 * 2 + 2, 0, 2},
      {"in:1x8x8 conv:2:3:p0:s3 dense:2 softmax", "in:1x8x8 conv:2:3:s3:p0 dense:2 softmax",
       2 * 9 + 2 + 2 * 4 * 2 + 2, 0, 2},
      {"in:2x9x9 avgpool:3 dense:2 softmax", "in:2x9x9 avgpool:3 dense:2 softmax",
       2 * 9 * 2 + 2, 0, 2},
      {"in:2x9x9 avgpool:3:s3 dense:2 softmax", "in:2x9x9 avgpool:3 dense:2 softmax",
       2 * 9 * 2 + 2, 0, 2},
      {"in:2x9x9 avgpool:3:s2 dense:2 softmax", "in:2x9x9 avgpool:3:s2 dense:2 softmax",
       2 * 16 * 2 + 2, 0, 2},
      {"in:4x5x7 avgpool:global dense:3 softmax", "in:4x5x7 avgpool:global dense:3 softmax",
       4 * 3 + 3, 0, 3},
      /* batchnorm: gamma and beta trained, running mean and variance after them */
      {"in:3x4x4 conv:5:3 batchnorm relu dense:2 softmax",
       "in:3x4x4 conv:5:3 batchnorm relu dense:2 softmax",
       5 * 27 + 5 + 10 + 80 * 2 + 2, 10, 2},
      {"in:10 dense:6 batchnorm dense:1 mse", "in:10 dense:6 batchnorm dense:1 mse",
       66 + 12 + 7, 12, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fl_model *m = create(cases[i].spec);
    cr_expect_str_eq(fl_model_spec(m), cases[i].canon);
    cr_expect_eq(fl_model_num_trained(m), cases[i].trained, "%s: %zu trained", cases[i].spec,
                 fl_model_num_trained(m));
    cr_expect_eq(fl_model_num_params(m), cases[i].trained + cases[i].params);
    cr_expect_eq(fl_model_output_dim(m), cases[i].out);
    fl_model *again = create(fl_model_spec(m));
    cr_expect_eq(fl_model_id(again), fl_model_id(m));
    fl_model_free(again);
    fl_model_free(m);
  }
  /* the state's sizes are part of the id */
  fl_model *a = create("in:4 dense:4 batchnorm dense:2 softmax");
  fl_model *b = create("in:4 dense:4 dense:2 softmax");
  cr_expect_neq(fl_model_id(a), fl_model_id(b));
  fl_model_free(a);
  fl_model_free(b);
}

Test(model, parse_errors_name_the_token) {
  static const struct { const char *spec, *needle; } cases[] = {
      {"", "empty"},
      {"2nm", "2nm"},
      {"dense:10 softmax", "dense:10"},
      {"in:784 dense:0 softmax", "dense:0"},
      {"in:784 dense:x softmax", "dense:x"},
      {"in:784 dense:10", "dense:10"},
      {"in:784 dens:10 softmax", "dens:10"},
      {"in:784 conv:8:3 dense:10 softmax", "conv:8:3"},
      {"in:1x28x28 conv:8 relu dense:10 softmax", "conv:8"},
      {"in:1x28x28 pool:3 dense:10 softmax", "pool:3"},
      {"in:784 pool:2 dense:10 softmax", "pool:2"},
      {"in:784 dropout:1.5 dense:10 softmax", "dropout:1.5"},
      {"in:784 softmax dense:10 softmax", "softmax"},
      {"in:784 dense:1 softmax", "softmax"},
      {"in:784 dense:2 sigmoid_bce", "sigmoid_bce"},
      {"in:784 in:3 dense:2 softmax", "in:3"},
      {"in:1x2 dense:2 softmax", "in:1x2"},
      {"logreg:10:1", "logreg:10:1"},
      {"in:65536 dense:65536 softmax", "dense:65536"},
      {"in:1x8x8 conv:2:3:s0 dense:2 softmax", "conv:2:3:s0"},
      {"in:1x8x8 conv:2:3:s2:s2 dense:2 softmax", "conv:2:3:s2:s2"},
      {"in:1x8x8 conv:2:3:p3 dense:2 softmax", "conv:2:3:p3"},
      {"in:1x8x8 conv:2:3:x1 dense:2 softmax", "conv:2:3:x1"},
      {"in:1x8x8 conv:2:3:p dense:2 softmax", "conv:2:3:p"},
      {"in:1x4x4 conv:2:9:p0 dense:2 softmax", "conv:2:9:p0"},
      {"in:1x8x8 avgpool:9 dense:2 softmax", "avgpool:9"},
      {"in:1x8x8 avgpool:0 dense:2 softmax", "avgpool:0"},
      {"in:1x8x8 avgpool:2:2 dense:2 softmax", "avgpool:2:2"},
      {"in:1x8x8 avgpool dense:2 softmax", "avgpool"},
      {"in:64 avgpool:2 dense:2 softmax", "avgpool:2"},
      {"in:64 batchnorm:0.1 dense:2 softmax", "batchnorm:0.1"},
      {"in:64 relu:2 dense:2 softmax", "relu:2"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fl_model *m = (fl_model *)1;
    char err[256] = "";
    int rc = fl_model_create(cases[i].spec, &m, err, sizeof err);
    cr_expect_eq(rc, FL_EINVAL, "'%s' accepted", cases[i].spec);
    cr_expect_null(m);
    cr_expect(strstr(err, cases[i].needle) != NULL, "'%s': message '%s' lacks '%s'",
              cases[i].spec, err, cases[i].needle);
  }
}

Test(model, init_seeded_he_and_xavier) {
  fl_model *m = create("in:400 dense:300 relu dense:200 softmax");
  size_t n = fl_model_num_params(m);
  float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  fl_model_init(m, a, 7);
  fl_model_init(m, b, 7);
  cr_assert_eq(memcmp(a, b, n * sizeof *a), 0);
  fl_model_init(m, b, 8);
  cr_assert_neq(memcmp(a, b, n * sizeof *a), 0);
  /* layer 1: He, var 2/400; bias zero; layer 2: Xavier, var 2/(300+200) */
  double s = 0;
  for (size_t i = 0; i < 120000; i++) s += (double)a[i] * a[i];
  cr_expect_float_eq(s / 120000, 2.0 / 400, 2.0 / 400 * 0.05);
  for (size_t i = 120000; i < 120300; i++) cr_assert_eq(a[i], 0.0f);
  s = 0;
  for (size_t i = 120300; i < 180300; i++) s += (double)a[i] * a[i];
  cr_expect_float_eq(s / 60000, 2.0 / 500, 2.0 / 500 * 0.05);
  for (size_t i = 180300; i < n; i++) cr_assert_eq(a[i], 0.0f);
  free(a);
  free(b);
  fl_model_free(m);
}

/* external:NAME:N: a model only its clients' own code trains (libflclient), known to the
 * server by its name and size. */
Test(model, external_models) {
  fl_model *m = create("external:my-model_1.0:21");
  cr_assert(fl_model_is_external(m));
  cr_assert_str_eq(fl_model_spec(m), "external:my-model_1.0:21");
  cr_assert_eq(fl_model_num_params(m), 21);
  fl_model *same = create("external:my-model_1.0:21"), *bigger = create("external:my-model_1.0:22"),
           *other = create("external:my-model_1.1:21"), *core = create("logreg");
  cr_assert_eq(fl_model_id(m), fl_model_id(same));
  cr_assert_neq(fl_model_id(m), fl_model_id(bigger));
  cr_assert_neq(fl_model_id(m), fl_model_id(other));
  cr_assert(!fl_model_is_external(core));
  float p[21];
  memset(p, 0x7f, sizeof p);
  fl_model_init(m, p, 3);
  for (int i = 0; i < 21; i++) cr_assert_eq(p[i], 0.0f);
  const char *bad[] = {"external:", "external:toy", "external:toy:", "external:toy:0",
                       "external::5", "external:t y:5", "external:toy:12x",
                       "external:toy:1073741825", "external:toy:99999999999",
                       "external:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx:4"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    fl_model *b = NULL;
    char err[256] = "";
    cr_expect_eq(fl_model_create(bad[i], &b, err, sizeof err), FL_EINVAL, "'%s' accepted", bad[i]);
    cr_expect_null(b);
    cr_expect(strstr(err, "external:NAME:N"), "'%s': %s", bad[i], err);
  }
  fl_model_free(m);
  fl_model_free(same);
  fl_model_free(bigger);
  fl_model_free(other);
  fl_model_free(core);
}
