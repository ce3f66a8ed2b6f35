/* mpsc: an intrusive lock-free multi-producer single-consumer queue
 * (Vyukov's node-based design). Producers on any thread push; exactly one
 * consumer thread pops. No allocation: the caller embeds a struct
 * mpsc_node in its object and owns the object; the queue only links it.
 *
 * Wake-up is not done here: pair the queue with an armed flag and an
 * eventfd (see mpsc_push's return value and mpsc_arm). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus /* for C++ benchmarks that include this header */
extern "C++" {
#include <atomic>
}
#define UTIL_ATOMIC(T) std::atomic<T>
#else
#include <stdatomic.h>
#define UTIL_ATOMIC(T) _Atomic(T)
#endif

struct mpsc_node {
  UTIL_ATOMIC(struct mpsc_node *) next;
};

struct mpsc {
  UTIL_ATOMIC(struct mpsc_node *) head; /* producers swap themselves in here */
  struct mpsc_node *tail;           /* consumer only */
  struct mpsc_node stub;
  UTIL_ATOMIC(int) armed; /* consumer asleep (or about to be): wake it */
};

/* Make q empty. Not thread-safe: before any producer sees q. */
void mpsc_init(struct mpsc *q);
/* Append n (any thread). Returns true when the consumer had armed the
 * queue before sleeping: the caller must then wake it (e.g. eventfd). */
bool mpsc_push(struct mpsc *q, struct mpsc_node *n);
/* Take the oldest node (consumer thread only), or NULL when the queue is
 * empty or a producer is half-way through a push (its push then returns
 * true once the consumer has armed, so nothing is missed). */
struct mpsc_node *mpsc_pop(struct mpsc *q);
/* Consumer, before it sleeps: arm, then pop once more; sleep only when
 * that pop returns NULL. Returns the popped node, if any. */
struct mpsc_node *mpsc_arm(struct mpsc *q);

#define MPSC_CONTAINER(ptr, type, member) \
  ((type *)(void *)((char *)(ptr) - offsetof(type, member)))
