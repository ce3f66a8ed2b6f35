/* histo: a fixed-bucket latency histogram that several threads may feed
 * at once (relaxed atomics, no lock, no allocation), read as a snapshot by
 * any thread, e.g. to render a Prometheus histogram. The bucket bounds
 * (HISTO_BOUNDS_NS) suit disk and network waits: 50 us to 10 s. */
#pragma once

#include <stdint.h>

#define HISTO_BUCKETS 16 /* finite upper bounds; one more bucket is +Inf */

/* Upper bounds of the finite buckets, in ns, ascending. */
extern const uint64_t histo_bounds_ns[HISTO_BUCKETS];

/* All-zero is an empty histogram. Touch the fields only through
 * histo_observe / histo_read (atomic builtins; the header stays usable
 * from C++ benchmarks). */
struct histo {
  uint64_t bucket[HISTO_BUCKETS + 1]; /* not cumulative; [HISTO_BUCKETS] = +Inf */
  uint64_t sum_ns;
};

/* A snapshot; cumulative like Prometheus: le[i] = observations <= bound i. */
struct histo_snap {
  uint64_t le[HISTO_BUCKETS + 1]; /* [HISTO_BUCKETS] = count (+Inf) */
  uint64_t sum_ns;
};

/* Record one duration. Any thread. */
void histo_observe(struct histo *h, uint64_t ns);
/* Read h into out. Any thread; concurrent observations may or may not be
 * included, but out is always monotone across buckets. */
void histo_read(const struct histo *h, struct histo_snap *out);
