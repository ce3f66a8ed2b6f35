/* mpsc: intrusive lock-free multi-producer single-consumer queue
 * (Vyukov's node-based queue). Any thread may push; exactly one thread
 * (the owner) pops. Nodes are embedded in the caller's objects; the queue
 * never allocates. Push is wait-free (one atomic exchange); pop may report
 * empty for an instant while a producer is between its two steps, so a
 * consumer must be woken after each push (see ring_post). */
#pragma once

#include <stddef.h>

#ifdef __cplusplus
/* C++ code (benchmarks) only embeds these; every access is in mpsc.c.
 * std::atomic cannot appear inside extern "C", and the layout is the same. */
#define MPSC_ATOMIC(T) T
#else
#include <stdatomic.h>
#define MPSC_ATOMIC(T) _Atomic(T)
#endif

struct mpsc_node {
  MPSC_ATOMIC(struct mpsc_node *) next;
};

struct mpsc {
  MPSC_ATOMIC(struct mpsc_node *) head; /* producers swap themselves in here */
  struct mpsc_node *tail;           /* consumer only */
  struct mpsc_node stub;
};

/* Initialise an empty queue; not thread-safe (before sharing it). */
void mpsc_init(struct mpsc *q);
/* Append n; safe from any thread. */
void mpsc_push(struct mpsc *q, struct mpsc_node *n);
/* Remove the oldest node; NULL when empty (or a push is half-done).
 * Consumer thread only. */
struct mpsc_node *mpsc_pop(struct mpsc *q);
