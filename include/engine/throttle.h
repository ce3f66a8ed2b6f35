/* throttle: Outbound_Throttle_Messages / Outbound_Throttle_Connections.
 *
 * A spec is "N" (N per second) or "N/S" (N per S seconds); "0" or unset
 * means unlimited. A bucket is a GCRA ("virtual scheduling") limiter: one
 * atomic 64-bit theoretical-arrival-time, advanced by compare-and-swap, so
 * workers that share a bucket never take a lock. Strict pacing: takes are
 * spaced S/N apart, so no half-open window of S seconds ever sees more than
 * N takes (no burst above the rate, which is what "not exceeded" means).
 *
 * Sharing by reference (Momentum's rule): a throttle set in a broad scope
 * is ONE bucket for every narrower scope that falls back to it. The
 * registry hands out buckets keyed by the identity of the scope the
 * configuration lookup found the option in, so two queues whose lookups
 * land on the same stanza get the same bucket. */
#pragma once

#include <stdint.h>

#ifdef __cplusplus /* for C++ benchmarks that include this header */
extern "C++" {
#include <atomic>
}
#ifndef THROTTLE_ATOMIC
#define THROTTLE_ATOMIC(T) std::atomic<T>
#endif
#else
#include <stdatomic.h>
#ifndef THROTTLE_ATOMIC
#define THROTTLE_ATOMIC(T) _Atomic(T)
#endif
#endif

struct throttle_spec {
  uint32_t n;     /* events per period; 0 = unlimited */
  uint32_t per_s; /* period in seconds (>= 1) */
};

/* Parse "N" or "N/S" (spaces allowed around '/'). Returns 0, or -EINVAL
 * (out unchanged) on anything else, on S == 0, or on N or S over 10^9. */
int throttle_parse(const char *s, struct throttle_spec *out);

struct throttle {
  THROTTLE_ATOMIC(uint64_t) tat_ns; /* next instant a take is allowed */
  uint64_t interval_ns;    /* per_s * 1e9 / n; 0 = unlimited */
};

/* Prepare a bucket for spec (all-zero spec: unlimited). */
void throttle_init(struct throttle *t, const struct throttle_spec *spec);
/* Take one event at now_ns (monotonic). Returns 0 when allowed (the event
 * is counted), else the nanoseconds to wait before asking again (nothing
 * counted). Any thread; lock-free. */
uint64_t throttle_take(struct throttle *t, uint64_t now_ns);

struct throttle_registry;

struct throttle_registry *throttle_registry_new(void);
void throttle_registry_free(struct throttle_registry *r);
/* The shared bucket for (scope identity, option name, spec); created on
 * first use. scope_id is whatever names the stanza the option was found
 * in (e.g. "binding_group:g1"); buckets with the same key are one bucket.
 * A different spec for the same scope (after a reload) is a new bucket.
 * Returns NULL for an unlimited spec. Takes a mutex: call it when a queue
 * is set up or its configuration changes, never per message. Buckets live
 * as long as the registry. */
struct throttle *throttle_registry_get(struct throttle_registry *r, const char *scope_id,
                                       const char *option, const struct throttle_spec *spec);
