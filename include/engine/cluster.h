/* cluster (prefix cluster_): limits shared by a fleet of Impetus nodes
 * through Redis (Cluster_Max_Outbound_Connections,
 * Cluster_Server_Max_Outbound_Connections, Cluster_Outbound_Throttle_*).
 *
 * One Redis client per node, on a thread of its own. Workers never wait
 * for Redis: they take from local balances with atomics (lock-free) and,
 * when a balance is empty, post a request (MPSC queue + eventfd) and get
 * a wake-up on their ring (ring_post_msg) when the answer has come.
 *
 * - Rate limits ("N/S"): GCRA in Redis, updated by a server-side script
 *   (EVALSHA) on the server's clock. A node takes tokens in batches sized
 *   to its recent rate (CLCALC_HORIZON_MS) and gives back what it did not
 *   use within a second.
 * - Connection caps: leases held per node in Redis with a TTL
 *   (lease_ttl), renewed while held; a dead node's leases lapse. Nodes
 *   that want more than is free share the cap fairly: a node above
 *   ceil(limit / wanting nodes) is told to close connections.
 * - Redis away: reconnect with back-off; failure_mode open lets each node
 *   go on with a local share (limit / nodes seen), closed holds what needs
 *   a cluster limit. Each failure and mode change is logged once and
 *   counted.
 *
 * Threads: cluster_new/cluster_free/cluster_attach from the main thread;
 * cluster_bucket/cluster_cap (registry, a mutex) at queue set-up on any
 * thread; take/acquire/release/shed on any thread, lock-free. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct logs_writer;
struct ring;
struct cluster;
struct cluster_bucket;
struct cluster_cap;

enum cluster_failure_mode { CLUSTER_FAIL_OPEN, CLUSTER_FAIL_CLOSED };

struct cluster_params {
  const char *url;       /* redis[s]://[[user]:pass@]host[:port][/db] */
  const char *tls_ca_file;   /* rediss://: CAs the server's certificate must chain to;
                              * NULL: the system's store */
  const char *tls_cert_file; /* rediss://: a client certificate (Redis asks for one
                              * unless tls-auth-clients is no); NULL: none */
  const char *tls_key_file;  /* its key; NULL: in tls_cert_file */
  bool tls_verify;           /* check the chain and the host name (false only when
                              * the operator said so) */
  const char *node_name; /* NULL: the host name */
  unsigned lease_ttl_s;  /* 0: 10 */
  enum cluster_failure_mode failure_mode;
  unsigned nworkers;     /* rings that may attach (0..nworkers-1) */
  struct logs_writer *log; /* the cluster thread's own writer; NULL: no log lines */
};

/* Start the client thread (it connects in the background). NULL with a
 * reason in err on a bad URL, unusable TLS files, or when the thread
 * cannot start. */
struct cluster *cluster_new(const struct cluster_params *p, char *err, size_t errlen);
/* Stop the thread, give back every lease and unused token (best effort,
 * one short round), free everything. NULL ok. */
void cluster_free(struct cluster *c);
/* Worker idx's ring: wake(arg) runs on it after an answer this worker
 * waited for (at most one wake-up queued at a time). */
void cluster_attach(struct cluster *c, unsigned idx, struct ring *r, void (*wake)(void *arg),
                    void *arg);
/* Whether the client holds a working connection now. */
bool cluster_up(const struct cluster *c);

/* The node's bucket for a throttle ("n per per_s"), by key (e.g. the
 * scope that set the option); made on first use, lives as long as c. */
struct cluster_bucket *cluster_bucket(struct cluster *c, const char *key, uint32_t n,
                                      uint32_t per_s);
/* Take one token for worker idx. 0: taken. -EAGAIN: none now; *wait_ns
 * is the longest to wait before asking again (the worker is woken sooner
 * when tokens come). */
int cluster_take(struct cluster_bucket *b, unsigned idx, uint64_t now_ns, uint64_t *wait_ns);

/* Give back n tokens taken but not used (to the local balance). */
void cluster_give_back(struct cluster_bucket *b, uint32_t n);

/* The node's side of a connection cap (limit >= 1), by key. */
struct cluster_cap *cluster_cap(struct cluster *c, const char *key, uint32_t limit);
/* May worker idx open one more connection? 0: yes, a lease is held for it
 * (cluster_cap_release when it closes). -EAGAIN: not now (woken when a
 * lease comes; ask again after *wait_ns at the latest). */
int cluster_cap_acquire(struct cluster_cap *cap, unsigned idx, uint64_t *wait_ns);
/* Whether a worker of this node waits for a lease of cap now. */
bool cluster_cap_wanted(const struct cluster_cap *cap);
/* Whether this node's connections use every lease it holds of cap (a
 * refused acquire may then free one by closing an idle connection). */
bool cluster_cap_full(const struct cluster_cap *cap);
/* A connection counted by cluster_cap_acquire has closed. */
void cluster_cap_release(struct cluster_cap *cap);
/* True (once per connection to close) when this node holds more of the
 * cap than it may: the caller closes one connection instead of reusing it. */
bool cluster_cap_shed(struct cluster_cap *cap);

struct cluster_stats {
  bool up;
  uint32_t nodes;          /* nodes seen alive (heartbeats) */
  uint64_t round_trips;    /* Redis commands sent */
  uint64_t failures;       /* failed connects and commands */
  uint64_t mode_changes;   /* up -> down and back */
  uint64_t waits;          /* takes and acquires that had to wait */
  uint64_t tokens_granted, tokens_returned;
  uint64_t leases_held;    /* now, all caps */
};
void cluster_stats(const struct cluster *c, struct cluster_stats *out);
/* Append the Prometheus lines of the stats (impetus_cluster_*). */
void cluster_metrics(const struct cluster *c, struct buf *out);
/* Append a text view for the console: node, state, nodes seen, and each
 * bucket and cap whose key contains `filter` (NULL: all): the cluster
 * value, this node's share and holdings. */
void cluster_describe(struct cluster *c, const char *filter, struct buf *out);
