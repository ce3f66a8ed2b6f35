/* metrics: renders the Prometheus text exposition (format 0.0.4) from
 * the counters (counters.h) and a snapshot the control thread gathered
 * from the workers. Label cardinality is bounded: the METRICS_TOP_N
 * (binding, domain) pairs with the most traffic get their own labels, the
 * rest are summed under domain="other".
 * Threads: the control thread. */
#pragma once

#include "spool.h"

#include <stdbool.h>
#include <stdint.h>

struct buf;

#define METRICS_TOP_N 20

struct metrics_worker {
  uint64_t ready, deferred, queues, sessions, ring_inflight, ring_timers;
};

struct adaptive;

struct metrics_input {
  unsigned nworkers;
  uint64_t uptime_s;
  bool workers_answered;
  struct metrics_worker *w; /* nworkers entries */
  struct spool_stats spool;
  struct adaptive *adaptive; /* adaptive delivery's counts; NULL: none */
};

/* Append the exposition text to out. Never fails (panics on OOM). */
void metrics_render(struct buf *out, const struct metrics_input *in);
