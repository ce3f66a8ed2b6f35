/* scheduler (prefix sched_): the delivery scheduler's decisions as pure functions and small
 * per-queue structures. Time is always passed in, never read here, so
 * every rule is unit-testable.
 *
 * - Retry back-off: Retry_Interval doubling, capped by Max_Retry_Interval,
 *   bounded by Max_Retries and Message_Expiration.
 * - Per-queue accounting for a (binding, routing domain) queue:
 *   Max_Outbound_Connections, Max_Deliveries_Per_Connection,
 *   Max_Recipients_Per_Batch, Suspend_Delivery, throttles.
 * - The idle-connection pool of a queue, keyed by route + binding +
 *   credential identity (a keyed hash; never the password).
 * - Queue ownership: hash of (binding, routing domain) -> worker index.
 *
 * A queue and its pool belong to one worker thread: nothing here locks,
 * except throttle buckets (lock-free, shared; see throttle.h). */
#pragma once

#include "throttle.h"

struct cluster_bucket;
struct cluster_cap;

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- retries and expiry ---- */

#define SCHED_MAX_RETRIES_AUTO (-1) /* "auto": expire by Message_Expiration only */
#define SCHED_MAX_RETRIES_NONE (-2) /* "none": the same, spelled as Momentum does */

struct sched_retry {
  uint32_t retry_interval_s;     /* Retry_Interval (default 1200) */
  uint32_t max_retry_interval_s; /* Max_Retry_Interval (default 43200) */
  int32_t max_retries;           /* N >= 0, or SCHED_MAX_RETRIES_AUTO/_NONE */
  uint32_t message_expiration_s; /* Message_Expiration (default 86400) */
};

#define SCHED_RETRY_DEFAULTS \
  { .retry_interval_s = 1200, .max_retry_interval_s = 43200, \
    .max_retries = SCHED_MAX_RETRIES_AUTO, .message_expiration_s = 86400 }

enum sched_verdict {
  SCHED_RETRY,           /* try again at *next_s */
  SCHED_EXPIRED_TIME,    /* Message_Expiration passed: fail permanently */
  SCHED_EXPIRED_RETRIES, /* Max_Retries used up: fail permanently */
};

/* Texts Momentum logs for the two expiries (stage 21 in the bouncelog). */
#define SCHED_EXPIRED_TIME_TEXT "554 5.4.7 [internal] exceeded max time without delivery"
#define SCHED_EXPIRED_RETRIES_TEXT "554 5.4.7 [internal] exceeded max retries without delivery"

/* The wait after the n-th consecutive transient failure (n >= 1):
 * R, 2R, 4R, ... capped at the maximum interval. Never fails. */
uint64_t sched_backoff_s(const struct sched_retry *p, uint32_t failures);

/* Decide after the failures-th transient failure (failures >= 1) of a
 * message received at received_ms, at now_ms (wall-clock milliseconds):
 * retry (*next_ms set, never later than the expiry instant) or expire. */
enum sched_verdict sched_after_tempfail(const struct sched_retry *p, uint32_t failures,
                                        uint64_t received_ms, uint64_t now_ms, uint64_t *next_ms);

/* True when a message received at received_ms has expired at now_ms (to
 * be checked when a deferred unit comes due, before attempting it). */
bool sched_expired(const struct sched_retry *p, uint64_t received_ms, uint64_t now_ms);

/* ---- per-queue limits and accounting ---- */

/* A queue's cluster-wide limits (cluster.h), shared with the other nodes
 * through Redis; all NULL without a cluster stanza. */
struct sched_cluster {
  struct cluster_cap *conns;        /* Cluster_Max_Outbound_Connections */
  struct cluster_cap *server;       /* Cluster_Server_Max_Outbound_Connections */
  struct cluster_bucket *conn_rate; /* Cluster_Outbound_Throttle_Connections */
  struct cluster_bucket *msg_rate;  /* Cluster_Outbound_Throttle_Messages */
  unsigned worker;                  /* the worker woken when leases or tokens come */
  bool host_waited;                 /* a Host cluster cap held a connection back */
};

struct sched_limits {
  uint32_t max_outbound_connections;      /* 0 = unlimited (default 32) */
  uint32_t max_deliveries_per_connection; /* 0 = unlimited (default 0) */
  uint32_t max_recipients_per_batch;      /* default 100; 0 treated as 1 */
  uint32_t max_recipients_per_connection; /* RCPTs per connection; 0 = unlimited */
  uint32_t pipeline_depth;                /* BDAT: transactions a connection takes at once (1 = none) */
  bool suspend_delivery;
  struct throttle *msg_throttle;  /* shared bucket or NULL (unlimited) */
  struct throttle *conn_throttle; /* shared bucket or NULL (unlimited) */
  struct sched_cluster cluster;
};

struct sched_acct {
  uint32_t conns; /* connecting + open connections of this queue */
};

enum sched_open {
  SCHED_OPEN_OK,        /* counted: call sched_conn_closed when it ends */
  SCHED_OPEN_SUSPENDED, /* Suspend_Delivery */
  SCHED_OPEN_FULL,      /* Max_Outbound_Connections reached: wait for a close */
  SCHED_OPEN_THROTTLED, /* connection throttle: *wait_ns until asking again */
  SCHED_OPEN_CLUSTER,   /* a cluster limit: woken when it allows, *wait_ns at the latest */
};

/* May the queue open one more connection at now_ns? On OK the connection
 * is counted (and a connection-throttle token taken). */
enum sched_open sched_conn_open(const struct sched_limits *l, struct sched_acct *a,
                                uint64_t now_ns, uint64_t *wait_ns);
/* A connection counted by sched_conn_open has closed. */
void sched_conn_closed(struct sched_acct *a);

/* The cluster leases one connection holds (all-zero: none). */
#define SCHED_LEASE_HOST 2 /* cap[] index of the MX host's lease */
struct sched_leases {
  struct cluster_cap *cap[3]; /* the domain's, the server's, the MX host's */
};

/* After sched_conn_open said OK: may the connection open as far as the
 * cluster-wide limits go? OK: its leases are in *held (give them back
 * with sched_cluster_closed). CLUSTER: not now (nothing held; undo the
 * sched_conn_open); the worker is woken when a lease or a token comes,
 * *wait_ns at the latest. Lock-free; never waits for Redis. */
enum sched_open sched_cluster_open(const struct sched_limits *l, struct sched_leases *held,
                                   uint64_t now_ns, uint64_t *wait_ns);
/* Host "mx" { Cluster_Max_Outbound_Connections }: before a connection of
 * l's queue goes to an MX host whose fleet-wide cap is `cap` (NULL: none),
 * a lease of it into held (the lease of a host tried before is given back
 * first). false: not now (nothing more held; ask again after *wait_ns at
 * the latest: the worker is woken when a lease comes). Lock-free. */
bool sched_cluster_host(struct sched_limits *l, struct cluster_cap *cap, struct sched_leases *held,
                        uint64_t *wait_ns);
/* The connection holding these leases has closed. */
void sched_cluster_closed(struct sched_leases *held);
/* True when this connection should close instead of taking more work: its
 * node holds more of a cluster cap than its fair share (or than Redis
 * granted after an outage). Says true once per connection to close. */
bool sched_cluster_shed(struct sched_leases *held);
/* Whether a connection holding these leases should close rather than wait
 * idle: another queue of this node waits for a lease it holds (a server's
 * or an MX host's cap spans queues). */
bool sched_cluster_wanted(const struct sched_leases *held);
/* Whether the queue has any cluster-wide limit. */
bool sched_cluster_any(const struct sched_limits *l);

/* May a connection that has made `delivered` successful deliveries carry
 * another transaction (Max_Deliveries_Per_Connection)? */
bool sched_conn_reusable(const struct sched_limits *l, uint32_t delivered);

/* Message throttles (the cluster's, then the local one): 0 when a message
 * may start now (tokens taken), else the nanoseconds to wait (for the
 * cluster's: at the latest; the worker is woken when tokens come). */
uint64_t sched_msg_take(const struct sched_limits *l, uint64_t now_ns);

/* How many transactions a unit of nrcpt recipients needs. */
size_t sched_batches(const struct sched_limits *l, size_t nrcpt);
/* Recipients in transaction i (0-based) of a unit of nrcpt recipients. */
size_t sched_batch_size(const struct sched_limits *l, size_t nrcpt, size_t i);

/* ---- connection reuse ---- */

/* Identity of a credential set: a keyed hash (process key) of type, user
 * and password, 0 when there are no credentials. Equal identities mean
 * equal credentials; the value reveals nothing usable about the password
 * outside this process. NULL fields count as empty. */
uint64_t sched_cred_identity(const char *type, const char *user, const char *pass);
/* Pool key: route (e.g. "10.0.0.1:25"), binding name, credential identity. */
uint64_t sched_pool_key(const char *route, const char *binding, uint64_t cred_id);

#define SCHED_POOL_MAX 64

struct sched_pool_slot {
  uint64_t key;
  uint64_t idle_since_ns;
  void *conn; /* owned by the caller; the pool only remembers it */
};

/* Idle connections of one queue. All-zero is an empty pool. */
struct sched_pool {
  uint32_t n;
  struct sched_pool_slot slot[SCHED_POOL_MAX];
};

/* Park an idle connection. Returns 0, or -ENOSPC when full (close it). */
int sched_pool_put(struct sched_pool *p, uint64_t key, void *conn, uint64_t now_ns);
/* Take the most recently parked idle connection with exactly this key, or
 * NULL: a connection is reused only for the same credentials. */
void *sched_pool_take(struct sched_pool *p, uint64_t key);
/* Forget conn if it is parked (it closed on its own). True if it was. */
bool sched_pool_remove(struct sched_pool *p, void *conn);
/* Remove and return one connection idle for at least idle_ns (to be
 * closed: Idle_Timeout), or NULL when none. */
void *sched_pool_expire(struct sched_pool *p, uint64_t now_ns, uint64_t idle_ns);

/* ---- ownership ---- */

/* The worker (0..nworkers-1) owning the queue (binding, routing domain).
 * The domain is compared case-insensitively. nworkers >= 1. */
unsigned sched_owner(const char *binding, const char *domain, unsigned nworkers);
