/* A privacy accountant: Rényi differential privacy (RDP, Mironov 2017) of the sampled
 * Gaussian mechanism (Mironov, Talwar and Zhang 2019), composed over rounds and turned
 * into an (epsilon, delta) guarantee.
 *
 * The mechanism: each round includes every client independently with probability q
 * (Poisson sampling: fl-server selects that way when differential privacy is on), each
 * included client's update is clipped to L2 norm S, and Gaussian noise of standard
 * deviation z * S is added to the sum.  Its RDP at order alpha is log(A_alpha) / (alpha - 1)
 * with A_alpha = E_{x ~ N(0, s^2)} [((1 - q) + q exp((2x - 1) / (2 s^2)))^alpha], s = z:
 * summed in closed form over the binomial expansion for whole orders, and with the
 * two-sided series of the paper's section 3.3 for fractional ones.  RDP adds up over
 * rounds; the guarantee is the classic conversion epsilon = min over the orders of
 * rdp(alpha) + log(1 / delta) / (alpha - 1) (Mironov 2017, Proposition 3).
 *
 * With the orders below this gives epsilon 3.01 at delta 1e-5 for TF Privacy's DP-SGD
 * MNIST tutorial (q = 256 / 60000, z = 1.1, 14063 steps). */
#ifndef FL_ACCOUNTANT_H
#define FL_ACCOUNTANT_H

#include <stddef.h>
#include <stdint.h>

#define FL_ACCOUNTANT_ORDERS 69

typedef struct fl_accountant {
  double orders[FL_ACCOUNTANT_ORDERS];
  double rdp[FL_ACCOUNTANT_ORDERS];   /* accumulated over the rounds so far */
  uint64_t rounds;
} fl_accountant;

/* No rounds yet; the orders 1.25, 1.5, 1.75, 2, 3, ..., 64, 128, 256, 512. */
void fl_accountant_init(fl_accountant *a);
/* Adds `rounds` rounds of the sampled Gaussian mechanism with sampling rate q (0..1]
 * and noise multiplier z (> 0).  FL_EINVAL for values out of range. */
int fl_accountant_add(fl_accountant *a, double q, double z, uint64_t rounds);
/* The smallest epsilon the orders give at delta (0 < delta < 1); the order that gave it
 * in *order (may be NULL).  Infinity before a round with noise, 0 before any round. */
double fl_accountant_epsilon(const fl_accountant *a, double delta, double *order);

/* RDP of one round at order alpha > 1. */
double fl_rdp_sampled_gaussian(double q, double z, double alpha);

#endif
