/* Client selection: which of the ready clients a round sends its task to.
 *
 * Pure functions of their arguments and of a random generator the caller owns (fl-server
 * checkpoints its state, so a resumed run selects what an uninterrupted one would).  The
 * candidates are put in id order before the draw, so the same generator state selects
 * the same clients whatever order they connected in.  No allocation, no global state.
 *
 * Over-selection: a round may ask for more clients than it needs (--over-select) and
 * close once enough updates arrived, so the slowest selected clients do not hold it up. */
#ifndef FL_SELECT_H
#define FL_SELECT_H

#include <stddef.h>

#include "rng.h"

/* The clients a round needs: clients_per_round >= 1 is a count, below 1 a fraction of
 * the `ready` clients, rounded up.  At least 1 and at most `ready` (so 0 when none is). */
size_t fl_select_target(double clients_per_round, size_t ready);

/* Selects k = ceil(target * (1 + over_select)) of the m candidates (at most m), each
 * subset of that size equally likely.  ids[0..m) are the candidates' ids (borrowed for
 * the call; equal ids keep their order in ids).  chosen[0..m) receives a permutation of
 * 0..m-1 whose first k entries are the selected candidates' indices, in the order drawn.
 * Draws k numbers from rng (none when m is 0).  Returns k; a target above k is met by
 * all k. */
size_t fl_select_clients(const char *const *ids, size_t m, size_t target, double over_select,
                         fl_rng *rng, size_t *chosen);

#endif
