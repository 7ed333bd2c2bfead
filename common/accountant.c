/* The RDP accountant of the sampled Gaussian mechanism (accountant.h). */
#include "accountant.h"

#include <math.h>
#include <string.h>

#include "error.h"

/* log(e^a + e^b), with -inf as the log of 0. */
static double log_add(double a, double b) {
  if (a == -INFINITY) return b;
  if (b == -INFINITY) return a;
  double m = a > b ? a : b;
  return m + log1p(exp(-fabs(a - b)));
}

/* log(e^a - e^b) for a >= b. */
static double log_sub(double a, double b) {
  if (b == -INFINITY) return a;
  if (a <= b) return -INFINITY;
  return a + log1p(-exp(b - a));
}

/* log(erfc(x)), accurate where erfc underflows (the asymptotic series of erfc). */
static double log_erfc(double x) {
  if (x < 25) return log(erfc(x));
  double x2 = x * x;
  return -x2 - log(x) - 0.5 * log(M_PI) +
         log1p(-1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2 * x2 * x2));
}

/* log of the generalised binomial coefficient |C(alpha, i)| and its sign. */
static double log_binom(double alpha, double i, int *sign) {
  double g1 = lgamma(alpha + 1), g2 = lgamma(i + 1);
  int s3;
  double g3 = lgamma_r(alpha - i + 1, &s3);
  *sign = s3;
  return g1 - g2 - g3;
}

/* Whole orders: A = sum_k C(a, k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 z^2)). */
static double log_a_whole(double q, double z, long a) {
  double r = -INFINITY;
  for (long k = 0; k <= a; k++) {
    int s;
    double t = log_binom((double)a, (double)k, &s) + (double)k * log(q) +
               (double)(a - k) * log1p(-q) + ((double)k * (double)k - (double)k) / (2 * z * z);
    r = log_add(r, t);
  }
  return r;
}

/* Fractional orders: the integral splits at z0, where the two Gaussians of the mixture
 * weigh the same, and each side is a binomial series in its smaller term (Mironov, Talwar
 * and Zhang 2019, section 3.3).  Terms alternate in sign past i = alpha; the series stops
 * once they are negligible. */
static double log_a_frac(double q, double z, double alpha) {
  double pos = -INFINITY, neg = -INFINITY;
  double z0 = z * z * log(1 / q - 1) + 0.5;
  for (int i = 0; i < 100000; i++) {
    double j = alpha - i;
    int sign;
    double lc = log_binom(alpha, i, &sign);
    double t0 = lc + i * log(q) + j * log1p(-q), t1 = lc + j * log(q) + i * log1p(-q);
    double e0 = log(0.5) + log_erfc((i - z0) / (M_SQRT2 * z));
    double e1 = log(0.5) + log_erfc((z0 - j) / (M_SQRT2 * z));
    double s0 = t0 + ((double)i * i - i) / (2 * z * z) + e0;
    double s1 = t1 + (j * j - j) / (2 * z * z) + e1;
    double term = log_add(s0, s1);
    if (sign > 0) pos = log_add(pos, term);
    else neg = log_add(neg, term);
    if (i > alpha && s0 < -30 && s1 < -30) break;
  }
  return log_sub(pos, neg);
}

double fl_rdp_sampled_gaussian(double q, double z, double alpha) {
  if (q <= 0) return 0;
  if (q >= 1) return alpha / (2 * z * z); /* the Gaussian mechanism itself */
  double la = alpha == floor(alpha) ? log_a_whole(q, z, (long)alpha) : log_a_frac(q, z, alpha);
  return la / (alpha - 1);
}

void fl_accountant_init(fl_accountant *a) {
  memset(a, 0, sizeof *a);
  size_t k = 0;
  for (double o = 1.25; o < 2; o += 0.25) a->orders[k++] = o;
  for (int o = 2; o <= 64; o++) a->orders[k++] = o;
  const double big[] = {128, 256, 512};
  for (size_t i = 0; i < sizeof big / sizeof *big; i++) a->orders[k++] = big[i];
}

int fl_accountant_add(fl_accountant *a, double q, double z, uint64_t rounds) {
  if (!(q >= 0 && q <= 1) || !(z > 0) || !isfinite(z)) return FL_EINVAL;
  for (size_t i = 0; i < FL_ACCOUNTANT_ORDERS; i++)
    a->rdp[i] += (double)rounds * fl_rdp_sampled_gaussian(q, z, a->orders[i]);
  a->rounds += rounds;
  return 0;
}

double fl_accountant_epsilon(const fl_accountant *a, double delta, double *order) {
  if (order) *order = 0;
  if (a->rounds == 0) return 0;
  double best = INFINITY;
  for (size_t i = 0; i < FL_ACCOUNTANT_ORDERS; i++) {
    double e = a->rdp[i] + log(1 / delta) / (a->orders[i] - 1);
    if (e < best) {
      best = e;
      if (order) *order = a->orders[i];
    }
  }
  return best;
}
