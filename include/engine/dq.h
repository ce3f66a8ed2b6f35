/* dq: one worker's delivery queues. A delivery unit is the recipients of
 * one message that share a routing domain; units wait in the queue of
 * their (binding, routing domain), ready (due now) or deferred (in a
 * min-heap by due time). Queues that have ready units sit on an active
 * list that the worker walks round-robin, so one busy domain cannot starve
 * the others.
 *
 * Thread-confined: a struct dq and everything in it belong to one worker
 * thread (units arrive from other threads through the worker's inbox, not
 * through here). Never logs, never reads a clock. */
#pragma once

#include "scheduler.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dq;
struct dq_queue;

struct dq_unit {
  struct dq_unit *next;  /* ready list; owned by dq while queued */
  struct dq_queue *q;    /* set by dq_push */
  void *msg;             /* the engine's message (spool_msg); not owned */
  uint64_t due_ms;       /* wall-clock ms of the next attempt; 0 = now */
  uint32_t heap_idx;     /* position + 1 in the deferred heap; 0 = not there */
  uint32_t attempts;     /* failed attempts so far (the next one's "retries") */
  uint32_t nrcpt;        /* recipients in rcpt[] */
  uint32_t rcpt[];       /* indices into the message's recipients */
};

/* A unit for n recipients (rcpt[] uninitialised). Panics on OOM. */
struct dq_unit *dq_unit_new(uint32_t n);
void dq_unit_free(struct dq_unit *u);

/* Per-queue state the worker uses; the rest is private. */
struct dq_queue_state {
  struct sched_limits limits; /* refreshed by the worker on config change */
  uint64_t conf_gen;          /* snapshot generation the limits came from */
  struct sched_acct acct;     /* connections of this queue */
  /* Connections of every queue of this (binding, domain), whatever their
   * credentials: what Max_Outbound_Connections caps (the receiver counts
   * connections per sender, not per password). Points into the queue of
   * the pair without credentials (cred 0), which dq creates alongside. */
  struct sched_acct *pair;
  struct sched_acct pair_acct; /* the storage `pair` points to (cred 0 queues) */
  uint32_t opening;           /* of which not READY yet (connecting, EHLO...) */
  bool no_chunking;           /* its last session found no CHUNKING: one transaction at a time */
  uint64_t backlog_since_ns;  /* BDAT: units beyond what its connections take, since (mono) */
  /* One transaction at a time (DATA): the shortest time from a
   * transaction's start to its final reply on this queue's connections
   * over the last one to two TXN_WINDOW_NS (the peer's own round trips,
   * without the queueing that more connections add); 0 unknown */
  uint64_t txn_ns;
  uint64_t txn_win_min_ns, txn_win_ns; /* the current window's shortest, its start (mono) */
  uint64_t txn_last_ns;       /* when txn_ns last had news (mono) */
  uint64_t txn_avg_ns;        /* the same times' 1/8 running average (queueing shows here) */
  struct sched_pool pool;     /* its idle connections */
  uint64_t blocked_until_ns;  /* throttled / host failure: not before (mono) */
  void *user;                 /* the worker's */
  /* adaptive delivery (adaptive_queue.c) */
  uint64_t adaptive_gen;      /* adaptive generation its limits reflect */
  uint64_t adaptive_until_ms; /* ... until this instant (wall clock) */
  char mx_host[256];          /* MX host of its last connection; "" unknown */
};

struct dq *dq_new(void);
/* Free every queue; units still queued are passed to free_unit (may be
 * NULL: then they are just freed). NULL ok. */
void dq_free(struct dq *d, void (*free_unit)(void *arg, struct dq_unit *u), void *arg);

/* The queue for (binding, domain), created on first use. The domain is
 * matched case-insensitively. Never NULL. */
struct dq_queue *dq_queue(struct dq *d, const char *binding, const char *domain);
/* The queue for (binding, domain, credential identity): messages whose
 * effective AUTH credentials differ wait in different queues, so their
 * connections (pool, sessions) are never shared. cred 0 = no AUTH. */
struct dq_queue *dq_queue_cred(struct dq *d, const char *binding, const char *domain, uint64_t cred);
uint64_t dq_queue_cred_id(const struct dq_queue *q);
const char *dq_queue_binding(const struct dq_queue *q);
const char *dq_queue_domain(const struct dq_queue *q);
struct dq_queue_state *dq_queue_state(struct dq_queue *q);
/* Units waiting in q: ready (active) and deferred (delayed). */
size_t dq_queue_ready(const struct dq_queue *q);
size_t dq_queue_deferred(const struct dq_queue *q);

/* Queue u in q: ready when u->due_ms <= now_ms, else deferred. */
void dq_push(struct dq *d, struct dq_queue *q, struct dq_unit *u, uint64_t now_ms);
/* Put u back at the head of its queue's ready list (it could not start). */
void dq_unpop(struct dq *d, struct dq_unit *u);
/* Take the oldest ready unit of q, or NULL. */
struct dq_unit *dq_pop(struct dq *d, struct dq_queue *q);

/* Move every deferred unit due at now_ms to its ready list; returns how
 * many moved. */
size_t dq_promote(struct dq *d, uint64_t now_ms);
/* The earliest deferred due time, or UINT64_MAX when none. */
uint64_t dq_next_due(const struct dq *d);

/* The next queue with ready units, round-robin (the queue moves to the
 * back of the active list), or NULL when none has any. */
struct dq_queue *dq_next_active(struct dq *d);

/* Totals for this worker (console summary). */
size_t dq_total_ready(const struct dq *d);
size_t dq_total_deferred(const struct dq *d);
size_t dq_queue_count(const struct dq *d);
/* Queues that have ready units right now. */
size_t dq_active_count(const struct dq *d);
/* Visit every queue (e.g. to refresh limits after a reload). */
void dq_foreach(struct dq *d, void (*fn)(void *arg, struct dq_queue *q), void *arg);

/* Console (ctl.c): visit ready units, then deferred ones, until fn
 * returns false (then false is returned). Worker thread. */
bool dq_foreach_unit(struct dq *d, bool (*fn)(void *arg, struct dq_unit *u, bool deferred),
                     void *arg);
/* Make every deferred unit that pick() selects due at now_ms and move it
 * to its ready list (flush, message retry). Returns how many. */
size_t dq_hasten(struct dq *d, bool (*pick)(void *arg, struct dq_unit *u), void *arg,
                 uint64_t now_ms);
/* Take a queued unit (ready or deferred) out of its queue (message fail).
 * No-op when it is not queued. */
void dq_remove(struct dq *d, struct dq_unit *u);
