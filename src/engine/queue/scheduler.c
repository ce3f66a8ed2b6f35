/* scheduler.c owns the scheduler's pure decisions (back-off, expiry, batch
 * sizes), per-queue connection accounting, the per-queue idle pool and the
 * queue -> worker hash, and asks the cluster's local balances (lock-free;
 * at most an eventfd write to its client thread) for cluster-wide limits.
 * Never reads a clock, never logs, never allocates.
 * Queue structures: the owning worker thread only. */
#include "scheduler.h"
#include "cluster.h"
#include "hash.h"
#include "panic.h"

#include <errno.h>
#include <string.h>

uint64_t sched_backoff_s(const struct sched_retry *p, uint32_t failures)
{
  uint64_t cap = p->max_retry_interval_s ? p->max_retry_interval_s : UINT32_MAX;
  uint64_t r = p->retry_interval_s;
  if (r == 0)
    r = 1;
  if (r >= cap)
    return cap;
  for (uint32_t i = 1; i < failures; i++) {
    r *= 2;
    if (r >= cap)
      return cap;
  }
  return r;
}

bool sched_expired(const struct sched_retry *p, uint64_t received_ms, uint64_t now_ms)
{
  return now_ms >= received_ms + (uint64_t)p->message_expiration_s * 1000u;
}

enum sched_verdict sched_after_tempfail(const struct sched_retry *p, uint32_t failures,
                                        uint64_t received_ms, uint64_t now_ms, uint64_t *next_ms)
{
  if (p->max_retries >= 0 && failures > (uint32_t)p->max_retries)
    return SCHED_EXPIRED_RETRIES;
  if (sched_expired(p, received_ms, now_ms))
    return SCHED_EXPIRED_TIME;
  uint64_t next = now_ms + sched_backoff_s(p, failures) * 1000u;
  uint64_t expiry = received_ms + (uint64_t)p->message_expiration_s * 1000u;
  /* Come back at the expiry instant at the latest, so an expired message
   * is failed on time rather than at its next (later) retry. */
  *next_ms = next < expiry ? next : expiry;
  return SCHED_RETRY;
}

enum sched_open sched_conn_open(const struct sched_limits *l, struct sched_acct *a,
                                uint64_t now_ns, uint64_t *wait_ns)
{
  if (l->suspend_delivery)
    return SCHED_OPEN_SUSPENDED;
  if (l->max_outbound_connections && a->conns >= l->max_outbound_connections)
    return SCHED_OPEN_FULL;
  if (l->conn_throttle) {
    uint64_t w = throttle_take(l->conn_throttle, now_ns);
    if (w) {
      *wait_ns = w;
      return SCHED_OPEN_THROTTLED;
    }
  }
  a->conns++;
  return SCHED_OPEN_OK;
}

void sched_conn_closed(struct sched_acct *a)
{
  if (a->conns > 0)
    a->conns--;
}

bool sched_conn_reusable(const struct sched_limits *l, uint32_t delivered)
{
  return l->max_deliveries_per_connection == 0 || delivered < l->max_deliveries_per_connection;
}

uint64_t sched_msg_take(const struct sched_limits *l, uint64_t now_ns)
{
  uint64_t wait = 0;
  if (l->cluster.msg_rate && cluster_take(l->cluster.msg_rate, l->cluster.worker, now_ns, &wait) < 0)
    return wait ? wait : 1;
  uint64_t w = l->msg_throttle ? throttle_take(l->msg_throttle, now_ns) : 0;
  if (w && l->cluster.msg_rate)
    cluster_give_back(l->cluster.msg_rate, 1); /* the local throttle binds: not used */
  return w;
}

bool sched_cluster_any(const struct sched_limits *l)
{
  return l->cluster.conns || l->cluster.server || l->cluster.conn_rate || l->cluster.msg_rate ||
         l->cluster.host_waited;
}

enum sched_open sched_cluster_open(const struct sched_limits *l, struct sched_leases *held,
                                   uint64_t now_ns, uint64_t *wait_ns)
{
  const struct sched_cluster *c = &l->cluster;
  *held = (struct sched_leases){0};
  struct cluster_cap *caps[2] = {c->conns, c->server};
  for (int i = 0; i < 2; i++) {
    if (caps[i] == NULL)
      continue;
    if (cluster_cap_acquire(caps[i], c->worker, wait_ns) < 0) {
      sched_cluster_closed(held);
      return SCHED_OPEN_CLUSTER;
    }
    held->cap[i] = caps[i];
  }
  if (c->conn_rate && cluster_take(c->conn_rate, c->worker, now_ns, wait_ns) < 0) {
    sched_cluster_closed(held);
    return SCHED_OPEN_CLUSTER;
  }
  return SCHED_OPEN_OK;
}

bool sched_cluster_host(struct sched_limits *l, struct cluster_cap *cap, struct sched_leases *held,
                        uint64_t *wait_ns)
{
  if (held->cap[SCHED_LEASE_HOST] != cap && held->cap[SCHED_LEASE_HOST]) {
    cluster_cap_release(held->cap[SCHED_LEASE_HOST]);
    held->cap[SCHED_LEASE_HOST] = NULL;
  }
  if (cap == NULL || held->cap[SCHED_LEASE_HOST] == cap)
    return true;
  if (cluster_cap_acquire(cap, l->cluster.worker, wait_ns) < 0) {
    l->cluster.host_waited = true; /* woken with the queues under cluster limits */
    return false;
  }
  held->cap[SCHED_LEASE_HOST] = cap;
  return true;
}

void sched_cluster_closed(struct sched_leases *held)
{
  for (int i = 0; i < 3; i++)
    if (held->cap[i]) {
      cluster_cap_release(held->cap[i]);
      held->cap[i] = NULL;
    }
}

bool sched_cluster_wanted(const struct sched_leases *held)
{
  for (int i = 0; i < 3; i++)
    if (held->cap[i] && cluster_cap_wanted(held->cap[i]))
      return true;
  return false;
}

bool sched_cluster_shed(struct sched_leases *held)
{
  for (int i = 0; i < 3; i++)
    if (held->cap[i] && cluster_cap_shed(held->cap[i]))
      return true;
  return false;
}

static size_t per_batch(const struct sched_limits *l)
{
  return l->max_recipients_per_batch ? l->max_recipients_per_batch : 1;
}

size_t sched_batches(const struct sched_limits *l, size_t nrcpt)
{
  size_t b = per_batch(l);
  return nrcpt == 0 ? 0 : (nrcpt + b - 1) / b;
}

size_t sched_batch_size(const struct sched_limits *l, size_t nrcpt, size_t i)
{
  size_t b = per_batch(l);
  size_t start = i * b;
  if (start >= nrcpt)
    return 0;
  return nrcpt - start < b ? nrcpt - start : b;
}

static void feed(uint8_t *scratch, size_t *w, size_t cap, const char *s)
{
  size_t n = s ? strlen(s) : 0;
  /* Length-prefixed so ("ab","c") and ("a","bc") differ. */
  for (int i = 0; i < 4 && *w < cap; i++)
    scratch[(*w)++] = (uint8_t)(n >> (8 * i));
  for (size_t i = 0; i < n && *w < cap; i++)
    scratch[(*w)++] = (uint8_t)s[i];
}

uint64_t sched_cred_identity(const char *type, const char *user, const char *pass)
{
  if ((user == NULL || !*user) && (pass == NULL || !*pass))
    return 0;
  uint8_t scratch[1536];
  size_t w = 0;
  feed(scratch, &w, sizeof scratch, type);
  feed(scratch, &w, sizeof scratch, user);
  feed(scratch, &w, sizeof scratch, pass);
  uint64_t h = hash_sip(hash_process_key(), scratch, w);
  util_wipe(scratch, w);
  return h ? h : 1;
}

uint64_t sched_pool_key(const char *route, const char *binding, uint64_t cred_id)
{
  uint8_t scratch[1024];
  size_t w = 0;
  feed(scratch, &w, sizeof scratch, route);
  feed(scratch, &w, sizeof scratch, binding);
  for (int i = 0; i < 8 && w < sizeof scratch; i++)
    scratch[w++] = (uint8_t)(cred_id >> (8 * i));
  return hash_sip(hash_process_key(), scratch, w);
}

int sched_pool_put(struct sched_pool *p, uint64_t key, void *conn, uint64_t now_ns)
{
  if (p->n >= SCHED_POOL_MAX)
    return -ENOSPC;
  p->slot[p->n++] = (struct sched_pool_slot){.key = key, .idle_since_ns = now_ns, .conn = conn};
  return 0;
}

static void *remove_at(struct sched_pool *p, uint32_t i)
{
  void *c = p->slot[i].conn;
  memmove(&p->slot[i], &p->slot[i + 1], (p->n - i - 1) * sizeof p->slot[0]);
  p->n--;
  return c;
}

void *sched_pool_take(struct sched_pool *p, uint64_t key)
{
  for (uint32_t i = p->n; i-- > 0;)
    if (p->slot[i].key == key)
      return remove_at(p, i);
  return NULL;
}

bool sched_pool_remove(struct sched_pool *p, void *conn)
{
  for (uint32_t i = 0; i < p->n; i++)
    if (p->slot[i].conn == conn) {
      remove_at(p, i);
      return true;
    }
  return false;
}

void *sched_pool_expire(struct sched_pool *p, uint64_t now_ns, uint64_t idle_ns)
{
  for (uint32_t i = 0; i < p->n; i++)
    if (now_ns - p->slot[i].idle_since_ns >= idle_ns)
      return remove_at(p, i);
  return NULL;
}

unsigned sched_owner(const char *binding, const char *domain, unsigned nworkers)
{
  uint8_t scratch[512];
  size_t w = 0;
  for (const char *s = binding ? binding : "default"; *s && w < 255; s++)
    scratch[w++] = (uint8_t)*s;
  scratch[w++] = 0;
  for (const char *s = domain; s && *s && w < sizeof scratch; s++)
    scratch[w++] = (uint8_t)((*s >= 'A' && *s <= 'Z') ? *s + 32 : *s);
  return nworkers <= 1 ? 0 : (unsigned)(hash_sip(hash_process_key(), scratch, w) % nworkers);
}
