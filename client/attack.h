/* Attacks, for simulations only: what a Byzantine client does to the federation, so that
 * tests and the robustness benchmark can measure what a strategy withstands.  Never used
 * by a real data owner's client; fl-client's --help marks the options that way.
 *
 *   signflip[:K]   sends -K times its honest delta (K = 1)
 *   scale[:K]      sends K times its honest delta (K = 10)
 *   noise[:S]      sends Gaussian noise of standard deviation S instead (S = 1)
 *   constant[:C]   sends a delta of C in every parameter (C = 1)
 *   labelflip      trains honestly on flipped labels (class y becomes C-1-y)
 *
 * Which clients attack: a fraction of the simulation's partitions, drawn with the
 * simulation's seed so that every process of a simulation split over several agrees,
 * or a list of partition numbers. */
#ifndef FL_ATTACK_H
#define FL_ATTACK_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "rng.h"

typedef enum { FL_ATTACK_NONE, FL_ATTACK_SIGNFLIP, FL_ATTACK_SCALE, FL_ATTACK_NOISE,
               FL_ATTACK_CONSTANT, FL_ATTACK_LABELFLIP } fl_attack_mode;

typedef struct fl_attack {
  fl_attack_mode mode;
  double param;
} fl_attack;

/* "MODE[:PARAM]" into *a.  0 or FL_ECONFIG with a message. */
int fl_attack_parse(const char *spec, fl_attack *a, char *err, size_t errlen);

/* Whether partition p of `parts` attacks: spec is a fraction with a decimal point ("0.2":
 * that share of the partitions, drawn with seed) or a list of partitions ("0" or "0,5,9").  0 or 1 in *yes; FL_ECONFIG with a
 * message for a bad spec. */
int fl_attack_chosen(const char *spec, size_t p, size_t parts, uint64_t seed, int *yes,
                     char *err, size_t errlen);

/* Turns an honest delta[0..n) into the attack's (the delta attacks; labelflip leaves it). */
void fl_attack_delta(const fl_attack *a, float *delta, size_t n, fl_rng *rng);

/* The label flip of a classification data set: a copy of d whose labels are flipped
 * (the features are shared with d, not copied: free only the copy's y).  FL_ENOMEM. */
int fl_attack_flip_labels(const fl_dataset *d, fl_dataset *out);

#endif
