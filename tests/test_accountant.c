/* The RDP accountant (common/accountant.c): the published epsilon of TF Privacy's DP-SGD
 * MNIST tutorial, and the closed forms checked against a direct numerical integration of
 * the Rényi divergence (independent of the series they sum) at whole and fractional
 * orders. */
#include <criterion/criterion.h>
#include <math.h>

#include "accountant.h"
#include "error.h"

/* RDP by quadrature: log of the integral of N(x; 0, z^2) ((1-q) + q e^((2x-1)/(2z^2)))^a,
 * summed on a fine grid in log space, over (alpha - 1). */
static double rdp_by_quadrature(double q, double z, double a) {
  double lo = -30 * z, hi = a + 30 * z, h = z / 400, acc = -INFINITY;
  for (double x = lo; x <= hi; x += h) {
    double ratio = log((1 - q) + q * exp((2 * x - 1) / (2 * z * z)));
    double lf = -x * x / (2 * z * z) - log(z * sqrt(2 * M_PI)) + a * ratio + log(h);
    double m = acc > lf ? acc : lf;
    acc = m == -INFINITY ? lf : m + log(exp(acc - m) + exp(lf - m));
  }
  return acc / (a - 1);
}

Test(accountant, matches_numerical_integration) {
  const double cases[][3] = {{0.01, 1.0, 2},  {0.01, 1.0, 2.5}, {0.01, 1.0, 10.5}, {0.01, 1.0, 32},
                             {0.1, 2.0, 1.5}, {0.1, 2.0, 7},    {0.05, 0.8, 3.25}, {0.2, 1.5, 12},
                             {1.0, 1.3, 4.5}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    double q = cases[i][0], z = cases[i][1], a = cases[i][2];
    double got = fl_rdp_sampled_gaussian(q, z, a), want = rdp_by_quadrature(q, z, a);
    cr_assert(fabs(got - want) <= 1e-6 * fabs(want) + 1e-12,
              "q %g z %g alpha %g: %.12g, quadrature %.12g", q, z, a, got, want);
  }
}

Test(accountant, tf_privacy_mnist_tutorial) {
  /* DP-SGD on MNIST: 60000 examples, batches of 256, noise 1.1, 60 epochs, delta 1e-5:
   * TF Privacy reports epsilon 3.01 with this (classic) conversion. */
  fl_accountant a;
  fl_accountant_init(&a);
  cr_assert_eq(fl_accountant_add(&a, 256.0 / 60000, 1.1, 14063), 0);
  double order, eps = fl_accountant_epsilon(&a, 1e-5, &order);
  cr_assert(fabs(eps - 3.01) < 0.01, "epsilon %.4f at order %g", eps, order);
}

Test(accountant, composes_and_orders) {
  fl_accountant a, b;
  fl_accountant_init(&a);
  fl_accountant_init(&b);
  cr_assert_eq(fl_accountant_epsilon(&a, 1e-5, NULL), 0);
  for (int r = 0; r < 100; r++) fl_accountant_add(&a, 0.1, 1.0, 1);
  fl_accountant_add(&b, 0.1, 1.0, 100);
  cr_assert_float_eq(fl_accountant_epsilon(&a, 1e-5, NULL), fl_accountant_epsilon(&b, 1e-5, NULL), 1e-9);
  /* More rounds, less noise or a smaller delta: a larger epsilon. */
  double e100 = fl_accountant_epsilon(&b, 1e-5, NULL);
  fl_accountant_add(&b, 0.1, 1.0, 100);
  cr_assert_gt(fl_accountant_epsilon(&b, 1e-5, NULL), e100);
  cr_assert_gt(fl_accountant_epsilon(&b, 1e-9, NULL), fl_accountant_epsilon(&b, 1e-5, NULL));
  fl_accountant c;
  fl_accountant_init(&c);
  fl_accountant_add(&c, 0.1, 0.5, 100);
  cr_assert_gt(fl_accountant_epsilon(&c, 1e-5, NULL), e100);
  cr_assert_eq(fl_accountant_add(&c, 1.5, 1.0, 1), FL_EINVAL);
  cr_assert_eq(fl_accountant_add(&c, 0.5, 0, 1), FL_EINVAL);
}
