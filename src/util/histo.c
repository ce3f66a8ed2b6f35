/* histo.c owns the fixed-bucket latency histogram (histo.h). Never
 * allocates, never locks, never logs; any thread may observe or read. */
#include "histo.h"

#include <stddef.h>

const uint64_t histo_bounds_ns[HISTO_BUCKETS] = {
  50000ull,     100000ull,    250000ull,     500000ull,     1000000ull,    2500000ull,
  5000000ull,   10000000ull,  25000000ull,   50000000ull,   100000000ull,  250000000ull,
  500000000ull, 1000000000ull, 2500000000ull, 10000000000ull,
};

void histo_observe(struct histo *h, uint64_t ns)
{
  size_t lo = 0, hi = HISTO_BUCKETS; /* first bound >= ns, or HISTO_BUCKETS */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (histo_bounds_ns[mid] < ns)
      lo = mid + 1;
    else
      hi = mid;
  }
  __atomic_fetch_add(&h->bucket[lo], 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&h->sum_ns, ns, __ATOMIC_RELAXED);
}

void histo_read(const struct histo *h, struct histo_snap *out)
{
  uint64_t run = 0;
  for (size_t i = 0; i <= HISTO_BUCKETS; i++) {
    run += __atomic_load_n(&h->bucket[i], __ATOMIC_RELAXED);
    out->le[i] = run;
  }
  out->sum_ns = __atomic_load_n(&h->sum_ns, __ATOMIC_RELAXED);
}
