/* Optimizer steps against values worked out by hand: SGD, momentum, Nesterov, Adam,
 * AdamW, L2 weight decay, gradient-norm clipping and the proximal term. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "error.h"
#include "train.h"

/* w = [1, -2], g = [0.5, 0.25], lr = 0.1 unless a test says otherwise. */
static fl_train_config cfg_for(const char *opt) {
  fl_train_config c = fl_train_config_default();
  cr_assert_eq(fl_optimizer_parse(opt, &c), 0);
  c.lr = 0.1f;
  return c;
}

static void steps(const fl_train_config *c, float *w, int n_steps) {
  float m[2] = {0}, v[2] = {0};
  for (int s = 1; s <= n_steps; s++) {
    float g[2] = {0.5f, 0.25f};
    cr_assert_eq(fl_optimizer_step(c, w, g, m, v, 2, (uint64_t)s), 0);
  }
}

#define NEAR(a, b) cr_assert_float_eq((a), (b), 1e-5, "%.7f vs %.7f", (double)(a), (double)(b))

Test(optim, sgd) {
  fl_train_config c = cfg_for("sgd");
  float w[2] = {1.0f, -2.0f};
  steps(&c, w, 1);
  NEAR(w[0], 0.95); NEAR(w[1], -2.025);
}

Test(optim, sgd_weight_decay) {
  fl_train_config c = cfg_for("sgd");
  c.weight_decay = 0.1f; /* g = [0.6, 0.05] */
  float w[2] = {1.0f, -2.0f};
  steps(&c, w, 1);
  NEAR(w[0], 0.94); NEAR(w[1], -2.005);
}

Test(optim, momentum_two_steps) {
  fl_train_config c = cfg_for("momentum");
  cr_assert_float_eq(c.momentum, 0.9f, 1e-7);
  float w[2] = {1.0f, -2.0f};
  /* m1 = g, w1 = w - 0.1 g; m2 = 0.9 g + g = 1.9 g, w2 = w1 - 0.19 g */
  steps(&c, w, 2);
  NEAR(w[0], 0.855); NEAR(w[1], -2.0725);
}

Test(optim, nesterov) {
  fl_train_config c = cfg_for("nesterov");
  float w[2] = {1.0f, -2.0f};
  /* m = g; step direction g + 0.9 m = 1.9 g */
  steps(&c, w, 1);
  NEAR(w[0], 0.905); NEAR(w[1], -2.0475);
}

Test(optim, adam) {
  fl_train_config c = cfg_for("adam");
  float w[2] = {1.0f, -2.0f};
  /* bias-corrected m^ = g, v^ = g^2 while g is constant: each step moves lr * sign(g) */
  steps(&c, w, 2);
  NEAR(w[0], 0.8); NEAR(w[1], -2.2);
}

Test(optim, adam_l2) {
  fl_train_config c = cfg_for("adam");
  c.weight_decay = 0.1f;
  float w[2] = {1.0f, -2.0f};
  /* step 1: g = [0.6, 0.05] -> w = [0.9, -2.1]; step 2: g = [0.59, 0.04], worked through
   * m = [0.113, 0.0085], v = [7.0774e-4, 4.125e-6] with bias corrections 0.19, 0.001999 */
  steps(&c, w, 2);
  NEAR(w[0], 0.8000473); NEAR(w[1], -2.1988125);
}

Test(optim, adamw) {
  fl_train_config c = cfg_for("adamw");
  c.weight_decay = 0.1f;
  float w[2] = {1.0f, -2.0f};
  /* w *= 1 - 0.01 -> [0.99, -1.98]; then the Adam step of lr * sign(g) */
  steps(&c, w, 1);
  NEAR(w[0], 0.89); NEAR(w[1], -2.08);
}

Test(optim, clipping) {
  fl_train_config c = cfg_for("sgd");
  c.lr = 1.0f;
  c.clip_norm = 1.0f;
  float w[2] = {1.0f, -2.0f}, g[2] = {3.0f, 4.0f}; /* norm 5 -> [0.6, 0.8] */
  cr_assert_eq(fl_optimizer_step(&c, w, g, NULL, NULL, 2, 1), 0);
  NEAR(w[0], 0.4); NEAR(w[1], -2.8);
  float w2[2] = {1.0f, -2.0f}, g2[2] = {0.3f, 0.4f}; /* norm 0.5: unchanged */
  cr_assert_eq(fl_optimizer_step(&c, w2, g2, NULL, NULL, 2, 1), 0);
  NEAR(w2[0], 0.7); NEAR(w2[1], -2.4);
}

Test(optim, clipping_nonfinite) {
  fl_train_config c = cfg_for("sgd");
  c.clip_norm = 1.0f;
  float w[2] = {1.0f, -2.0f}, g[2] = {INFINITY, 0.0f};
  cr_assert_eq(fl_optimizer_step(&c, w, g, NULL, NULL, 2, 1), FL_ENONFINITE);
  NEAR(w[0], 1.0);
}

Test(optim, proximal_gradient) {
  fl_train_config c = cfg_for("sgd");
  c.lr = 1.0f;
  c.prox_mu = 0.5f;
  float ref[2] = {0.5f, 1.0f};
  c.prox_ref = ref;
  float w[2] = {1.0f, -2.0f}, g[2] = {0.0f, 1.0f};
  /* g += mu (w - ref) = [0.25, -1.5] -> [0.25, -0.5] */
  cr_assert_eq(fl_optimizer_step(&c, w, g, NULL, NULL, 2, 1), 0);
  NEAR(g[0], 0.25); NEAR(g[1], -0.5);
  NEAR(w[0], 0.75); NEAR(w[1], -1.5);
}

Test(optim, parse_and_names) {
  fl_train_config c = fl_train_config_default();
  cr_assert_eq(c.optimizer, FL_OPT_SGD);
  cr_assert_float_eq(c.lr, 0.01f, 1e-9);
  cr_assert_eq(c.batch_size, 32);
  cr_assert_eq(c.epochs, 1);
  cr_assert_eq(c.seed, 1);
  cr_assert_eq(fl_optimizer_parse("adamw", &c), 0);
  cr_assert_str_eq(fl_optimizer_name(c.optimizer), "adamw");
  cr_assert_eq(fl_optimizer_parse("adamx", &c), FL_EINVAL);
  cr_assert_str_eq(fl_optimizer_name(FL_OPT_SGD), "sgd");
  cr_assert_str_eq(fl_optimizer_name(FL_OPT_ADAM), "adam");
}
