/* mpsc.c owns the lock-free MPSC queue. Producers: any thread. Consumer:
 * one thread. Never allocates, never blocks, never spins on a lock. */
#include "mpsc.h"

#include <stddef.h>

void mpsc_init(struct mpsc *q)
{
  atomic_store_explicit(&q->stub.next, NULL, memory_order_relaxed);
  atomic_store_explicit(&q->head, &q->stub, memory_order_relaxed);
  q->tail = &q->stub;
  atomic_store(&q->armed, 0);
}

static void link_node(struct mpsc *q, struct mpsc_node *n)
{
  atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
  struct mpsc_node *prev = atomic_exchange_explicit(&q->head, n, memory_order_acq_rel);
  atomic_store_explicit(&prev->next, n, memory_order_release);
}

bool mpsc_push(struct mpsc *q, struct mpsc_node *n)
{
  link_node(q, n);
  /* Dekker pairing with mpsc_arm: both sides fence between their store
   * and their load, so either the consumer's re-check sees n, or we see
   * armed == 1 and wake it. */
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&q->armed) == 0)
    return false;
  return atomic_exchange(&q->armed, 0) == 1;
}

struct mpsc_node *mpsc_pop(struct mpsc *q)
{
  struct mpsc_node *tail = q->tail;
  struct mpsc_node *next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (tail == &q->stub) {
    if (next == NULL)
      return NULL;
    q->tail = next;
    tail = next;
    next = atomic_load_explicit(&next->next, memory_order_acquire);
  }
  if (next != NULL) {
    q->tail = next;
    return tail;
  }
  if (tail != atomic_load_explicit(&q->head, memory_order_acquire))
    return NULL; /* a producer is between its exchange and its link */
  link_node(q, &q->stub);
  next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (next != NULL) {
    q->tail = next;
    return tail;
  }
  return NULL;
}

struct mpsc_node *mpsc_arm(struct mpsc *q)
{
  atomic_store(&q->armed, 1);
  atomic_thread_fence(memory_order_seq_cst);
  struct mpsc_node *n = mpsc_pop(q);
  if (n != NULL)
    atomic_store(&q->armed, 0);
  return n;
}
