/* Partitioners: every sample in exactly one partition, same seed same result, and the
 * label or size skew each scheme promises. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "error.h"

static char err[256];

/* n samples of dim 1 with labels i % classes (so sorted by label only after a sort). */
static fl_dataset synth(size_t n, int classes) {
  fl_dataset d = {.n = n, .dim = 1, .channels = 1, .height = 1, .width = 1,
                  .num_classes = classes};
  d.x = calloc(n, sizeof(float));
  d.y = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) d.y[i] = (float)(i % (size_t)classes);
  return d;
}

static fl_subset *split(const fl_dataset *d, const char *scheme, size_t parts, uint64_t seed) {
  fl_subset *p;
  int rc = fl_partition(d, scheme, parts, seed, &p, err, sizeof err);
  cr_assert_eq(rc, 0, "%s: %s", scheme, err);
  return p;
}

/* Every index appears in exactly one partition; no partition is empty. */
static void check_exact_cover(const fl_dataset *d, const fl_subset *p, size_t parts) {
  char *seen = calloc(d->n, 1);
  for (size_t q = 0; q < parts; q++) {
    cr_assert_gt(p[q].n, 0, "partition %zu empty", q);
    cr_assert_eq(p[q].data, d);
    for (size_t i = 0; i < p[q].n; i++) {
      cr_assert_lt(p[q].idx[i], d->n);
      seen[p[q].idx[i]]++;
      if (i) cr_assert_lt(p[q].idx[i - 1], p[q].idx[i]);
    }
  }
  for (size_t i = 0; i < d->n; i++) cr_assert_eq(seen[i], 1, "sample %zu", i);
  free(seen);
}

static int same(const fl_subset *a, const fl_subset *b, size_t parts) {
  for (size_t q = 0; q < parts; q++)
    if (a[q].n != b[q].n || memcmp(a[q].idx, b[q].idx, a[q].n * sizeof *a[q].idx)) return 0;
  return 1;
}

static size_t distinct_labels(const fl_subset *s, int classes) {
  int seen[64] = {0};
  size_t k = 0;
  for (size_t i = 0; i < s->n; i++) {
    int c = (int)s->data->y[s->idx[i]];
    if (c < classes && !seen[c]++) k++;
  }
  return k;
}

/* Mean over partitions of the share of the partition's most common label. */
static double mean_top_share(const fl_subset *p, size_t parts, int classes) {
  double sum = 0;
  for (size_t q = 0; q < parts; q++) {
    size_t h[64] = {0}, top = 0;
    for (size_t i = 0; i < p[q].n; i++) h[(int)p[q].data->y[p[q].idx[i]]]++;
    for (int c = 0; c < classes; c++)
      if (h[c] > top) top = h[c];
    sum += (double)top / (double)p[q].n;
  }
  return sum / (double)parts;
}

Test(partition, every_scheme_covers_exactly_and_is_deterministic) {
  fl_dataset d = synth(3001, 10);
  const char *schemes[] = {"iid", "shards:2", "dirichlet:0.3", "quantity:0.5", "dirichlet:0.001",
                           "quantity:0.01", "quantity:1e308", "dirichlet:1e308"};
  for (size_t s = 0; s < sizeof schemes / sizeof *schemes; s++) {
    for (size_t parts = 1; parts <= 37; parts += 12) {
      fl_subset *a = split(&d, schemes[s], parts, 7), *b = split(&d, schemes[s], parts, 7);
      check_exact_cover(&d, a, parts);
      cr_assert(same(a, b, parts), "%s: same seed, different result", schemes[s]);
      fl_subset *c = split(&d, schemes[s], parts, 8);
      if (parts > 1) cr_assert(!same(a, c, parts), "%s: seed ignored", schemes[s]);
      fl_partition_free(a);
      fl_partition_free(b);
      fl_partition_free(c);
    }
  }
  fl_dataset_free(&d);
}

Test(partition, iid_sizes_equal_within_one) {
  fl_dataset d = synth(1003, 10);
  fl_subset *p = split(&d, "iid", 10, 1);
  for (int q = 0; q < 10; q++) cr_assert(p[q].n == 100 || p[q].n == 101);
  cr_assert_lt(mean_top_share(p, 10, 10), 0.25);
  fl_partition_free(p);
  fl_dataset_free(&d);
}

Test(partition, shards_give_few_labels_per_partition) {
  fl_dataset d = synth(6000, 10);
  fl_subset *p = split(&d, "shards:2", 100, 3);
  for (int q = 0; q < 100; q++) {
    cr_assert_eq(p[q].n, 60);
    size_t k = distinct_labels(&p[q], 10);
    cr_assert(k >= 1 && k <= 2, "partition %d has %zu labels", q, k);
  }
  fl_partition_free(p);
  /* Shards that straddle class boundaries: still at most 2 per shard. */
  fl_dataset e = synth(6007, 10);
  p = split(&e, "shards:2", 30, 3);
  for (int q = 0; q < 30; q++) cr_assert_leq(distinct_labels(&p[q], 10), 4);
  fl_partition_free(p);
  fl_dataset_free(&d);
  fl_dataset_free(&e);
}

Test(partition, dirichlet_small_alpha_skews_labels) {
  fl_dataset d = synth(5000, 10);
  fl_subset *iid = split(&d, "iid", 20, 5), *skew = split(&d, "dirichlet:0.1", 20, 5);
  fl_subset *mild = split(&d, "dirichlet:100", 20, 5);
  double t_iid = mean_top_share(iid, 20, 10), t_skew = mean_top_share(skew, 20, 10);
  double t_mild = mean_top_share(mild, 20, 10);
  cr_assert_lt(t_iid, 0.2, "iid top share %g", t_iid);
  cr_assert_gt(t_skew, 0.5, "dirichlet:0.1 top share %g", t_skew);
  cr_assert_lt(t_mild, 0.25, "dirichlet:100 top share %g", t_mild);
  fl_partition_free(iid);
  fl_partition_free(skew);
  fl_partition_free(mild);
  fl_dataset_free(&d);
}

Test(partition, quantity_skews_sizes_not_labels) {
  fl_dataset d = synth(10000, 10);
  fl_subset *p = split(&d, "quantity:0.3", 20, 9);
  size_t lo = d.n, hi = 0;
  for (int q = 0; q < 20; q++) {
    if (p[q].n < lo) lo = p[q].n;
    if (p[q].n > hi) hi = p[q].n;
  }
  cr_assert_gt(hi, 5 * lo, "sizes %zu..%zu", lo, hi);
  /* The large partitions hold all labels in about equal measure. */
  for (int q = 0; q < 20; q++)
    if (p[q].n >= 1000) cr_assert_lt(mean_top_share(&p[q], 1, 10), 0.2);
  fl_partition_free(p);
  fl_dataset_free(&d);
}

static void fails(const fl_dataset *d, const char *scheme, size_t parts, const char *want) {
  fl_subset *p = (fl_subset *)1;
  err[0] = 0;
  int rc = fl_partition(d, scheme, parts, 1, &p, err, sizeof err);
  cr_assert_eq(rc, FL_EINVAL, "%s/%zu: %s", scheme, parts, fl_err_name(rc));
  cr_assert_null(p);
  cr_assert_not_null(strstr(err, want), "'%s' lacks '%s'", err, want);
}

Test(partition, errors) {
  fl_dataset d = synth(100, 10);
  fails(&d, "random", 4, "unknown partition scheme 'random'");
  fails(&d, NULL, 4, "unknown partition scheme");
  fails(&d, "shards:0", 4, "S must be");
  fails(&d, "shards:-1", 4, "S must be");
  fails(&d, "shards:2x", 4, "S must be");
  fails(&d, "shards:", 4, "S must be");
  fails(&d, "dirichlet:0", 4, "ALPHA must be a number > 0");
  fails(&d, "dirichlet:-1", 4, "ALPHA must be");
  fails(&d, "dirichlet:", 4, "ALPHA must be");
  fails(&d, "quantity:inf", 4, "ALPHA must be");
  fails(&d, "iid", 0, "zero partitions");
  fails(&d, "iid", 101, "101 partitions of 100 samples");
  fails(&d, "shards:3", 40, "needs 120 shards");
  d.num_classes = 0;
  fails(&d, "dirichlet:1", 4, "needs class labels");
  fl_dataset_free(&d);
}
