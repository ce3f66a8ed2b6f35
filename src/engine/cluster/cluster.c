/* cluster.c owns the node's Redis client thread, its connection
 * (cluster_conn.c: synchronous, with timeouts, plaintext or TLS; AUTH and
 * SELECT from the URL), the registry of buckets and caps, their
 * local balances, and the wake-ups of workers waiting for them.
 *
 * Threads: the client thread alone talks to Redis and writes the
 * thread-only fields below. Workers touch buckets and caps only through
 * atomics (cluster_take, cluster_cap_*) and post requests through an MPSC
 * queue + eventfd; answers come back as a ring message on their ring.
 * Must never: block a worker (no lock, no syscall on the hot path except
 * one eventfd write per request), hold the registry mutex while talking
 * to Redis, log more than once per failure or mode change. */
#include "cluster.h"

#include "buf.h"
#include "cluster_calc.h"
#include "cluster_conn.h"
#include "cluster_scripts.h"
#include "clock.h"
#include "logs.h"
#include "mpsc.h"
#include "panic.h"
#include "ring.h"
#include "tls.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 100u           /* the client's longest sleep */
#define LINGER_MS 100u         /* an unused lease is given back after this while
                                * other nodes want leases of the cap... */
#define LINGER_ALONE_MS 2000u  /* ...and after this while nobody else does */
#define IDLE_RETURN_MS 1000u   /* unused tokens are given back after this */
#define WAIT_BACKSTOP_NS 500000000u /* a waiting worker asks again after this */
#define CMD_TIMEOUT_MS 1000u   /* connect and command timeout */
#define NODES_MAX 64           /* nodes remembered for the console */
#define GRACE_MS 2000u         /* Redis away: nodes above their local share close
                                * connections before the others open up to theirs */
#define RESYNC_MAX_MS 15000u   /* Redis back: nodes not back by then count as gone */

enum item_kind { IT_BUCKET, IT_CAP };

/* What buckets and caps share: the request node (pushed at most once
 * until the client pops it), the registry link, the waiting workers. */
struct item {
  struct mpsc_node node;
  atomic_bool queued;
  enum item_kind kind;
  struct cluster *c;
  char *key;                /* the caller's key */
  char *rkey;               /* the Redis key (prefix) */
  struct item *next;        /* registry (written before publication) */
  _Atomic uint64_t waiters; /* bit (worker % 64) per waiting worker */
  bool dirty;               /* client thread: asked since the last pass */
};

struct cluster_bucket {
  struct item it;
  uint32_t n, per_s;
  struct clcalc_gcra g;
  _Atomic int64_t tokens;   /* local balance */
  _Atomic uint32_t low;     /* refill at this balance */
  _Atomic uint64_t used;    /* tokens taken, all time */
  _Atomic uint64_t fb_tat;  /* local GCRA while Redis is away (open) */
  _Atomic uint64_t fb_iv;   /* its interval (ns) */
  /* client thread only */
  uint64_t used_seen, used_acc, rate_at_ms, last_use_ms, retry_at_ms;
  double rate, peak;  /* recent rate, and its peak decaying by half a second */
  uint32_t last_grant;
  _Atomic uint64_t granted_total, returned_total;
  _Atomic uint32_t want_pub; /* console */
};

struct cluster_cap {
  struct item it;
  uint32_t limit;
  _Atomic uint32_t in_use;   /* connections holding a lease here */
  _Atomic uint32_t granted;  /* leases Redis holds for this node */
  _Atomic uint32_t local_limit; /* open mode without Redis */
  _Atomic uint32_t waiting;  /* refused acquires since the last pass */
  _Atomic uint32_t shed;     /* connections to close */
  _Atomic uint32_t share, others, total; /* last answer, for the console */
  /* client thread only */
  uint32_t rheld; /* what Redis holds for this node, as last answered */
  uint64_t renew_at_ms, spare_since_ms;
};

struct wk {
  struct ring_msg msg; /* first: the wake-up message */
  struct cluster *c;
  struct ring *ring;   /* under c->wk_lock */
  void (*fn)(void *arg);
  void *arg;
  atomic_bool posted;
};

struct cluster {
  struct clcalc_url url;
  char node[300];       /* node_name#pid-nonce: this incarnation */
  char node_name[256];
  uint64_t ttl_ms;
  enum cluster_failure_mode mode;
  struct logs_writer *log;
  pthread_t th;
  int efd;
  atomic_bool stop;
  struct mpsc q;
  pthread_mutex_t reg_lock;   /* registry inserts and lookups */
  _Atomic(struct item *) items;
  unsigned nworkers;
  pthread_mutex_t wk_lock;    /* worker rings (attach/detach vs. posting) */
  struct wk *wk;
  atomic_bool up;
  _Atomic uint32_t nodes;
  _Atomic uint64_t round_trips, failures, mode_changes, waits;
  struct tls_ctx *tls;        /* rediss://: made at start (a bad CA file fails it) */
  /* client thread only */
  struct clconn *rc;
  char sha_gcra[48], sha_lease[48], sha_nodes[48];
  uint32_t nfail;
  uint64_t next_try_ms, next_hb_ms;
  bool logged_down, ever_up;
  uint64_t down_at_ms;        /* when the connection was lost */
  bool grace_done;            /* local shares in full force */
  uint32_t nodes_before;      /* nodes seen before the outage */
  bool resync;                /* back: nodes still re-registering their leases */
  uint64_t resync_until_ms;
  pthread_mutex_t view_lock;  /* nodes_seen for the console */
  char nodes_seen[NODES_MAX][128];
  unsigned nnodes_seen;
};

static uint64_t mono_ms(void)
{
  return clock_mono_ns() / 1000000u;
}

/* ------------------------------------------------------------ requests and wake-ups */

static void kick_thread(struct cluster *c)
{
  uint64_t one = 1;
  ssize_t w = write(c->efd, &one, sizeof one);
  (void)w; /* EAGAIN: a wake-up is pending anyway */
}

static void kick(struct item *it)
{
  if (!atomic_exchange(&it->queued, true)) {
    mpsc_push(&it->c->q, &it->node);
    kick_thread(it->c);
  }
}

static void wake_run(struct ring_msg *m)
{
  struct wk *w = (struct wk *)(void *)m;
  atomic_store(&w->posted, false);
  if (w->fn)
    w->fn(w->arg);
}

/* Client thread: wake the workers whose bits are in `bits`. */
static void wake_bits(struct cluster *c, uint64_t bits)
{
  if (bits == 0)
    return;
  pthread_mutex_lock(&c->wk_lock);
  for (unsigned i = 0; i < c->nworkers; i++) {
    struct wk *w = &c->wk[i];
    if (!(bits & (1ull << (i % 64))) || w->ring == NULL)
      continue;
    if (!atomic_exchange(&w->posted, true))
      ring_post_msg(w->ring, &w->msg);
  }
  pthread_mutex_unlock(&c->wk_lock);
}

static void wake_item(struct item *it)
{
  wake_bits(it->c, atomic_exchange(&it->waiters, 0));
}

static void wake_all(struct cluster *c)
{
  for (struct item *it = atomic_load(&c->items); it; it = it->next)
    atomic_store(&it->waiters, 0);
  wake_bits(c, ~0ull);
}

void cluster_attach(struct cluster *c, unsigned idx, struct ring *r, void (*wake)(void *arg),
                    void *arg)
{
  if (c == NULL || idx >= c->nworkers)
    return;
  pthread_mutex_lock(&c->wk_lock);
  c->wk[idx].ring = r;
  c->wk[idx].fn = wake;
  c->wk[idx].arg = arg;
  atomic_store(&c->wk[idx].posted, false);
  pthread_mutex_unlock(&c->wk_lock);
}

bool cluster_up(const struct cluster *c)
{
  return atomic_load(&c->up);
}

/* ------------------------------------------------------------ registry */

static struct item *find(struct cluster *c, enum item_kind k, const char *key)
{
  for (struct item *it = atomic_load(&c->items); it; it = it->next)
    if (it->kind == k && !strcmp(it->key, key))
      return it;
  return NULL;
}

static void publish(struct cluster *c, struct item *it, enum item_kind k, const char *key,
                    const char *prefix)
{
  it->kind = k;
  it->c = c;
  it->key = util_xstrdup(key);
  size_t n = strlen(prefix) + strlen(key) + 16;
  it->rkey = util_xmalloc(n);
  snprintf(it->rkey, n, "impetus:%s:%s", prefix, key);
  it->next = atomic_load(&c->items);
  atomic_store(&c->items, it);
}

struct cluster_bucket *cluster_bucket(struct cluster *c, const char *key, uint32_t n,
                                      uint32_t per_s)
{
  if (n == 0)
    return NULL;
  if (per_s == 0)
    per_s = 1;
  char k[600];
  snprintf(k, sizeof k, "%s|%u/%u", key, n, per_s);
  pthread_mutex_lock(&c->reg_lock);
  struct cluster_bucket *b = (struct cluster_bucket *)find(c, IT_BUCKET, k);
  if (b == NULL) {
    b = util_xcalloc(1, sizeof *b);
    b->n = n;
    b->per_s = per_s;
    clcalc_gcra_params(n, per_s, &b->g);
    b->rate = -1;
    atomic_store(&b->fb_iv, clcalc_local_interval_ns(n, per_s, atomic_load(&c->nodes)));
    atomic_store(&b->low, clcalc_low_water(clcalc_batch(-1, &b->g)));
    publish(c, &b->it, IT_BUCKET, k, "thr");
  }
  pthread_mutex_unlock(&c->reg_lock);
  return b;
}

struct cluster_cap *cluster_cap(struct cluster *c, const char *key, uint32_t limit)
{
  if (limit == 0)
    return NULL;
  char k[600];
  snprintf(k, sizeof k, "%s|%u", key, limit);
  pthread_mutex_lock(&c->reg_lock);
  struct cluster_cap *cap = (struct cluster_cap *)find(c, IT_CAP, k);
  if (cap == NULL) {
    cap = util_xcalloc(1, sizeof *cap);
    cap->limit = limit;
    atomic_store(&cap->local_limit, clcalc_local_share(limit, atomic_load(&c->nodes)));
    /* the key of the leases is the cap's key without its limit, so nodes
     * configured with different limits still count the same connections */
    publish(c, &cap->it, IT_CAP, k, "cap");
    char *bar = strrchr(cap->it.rkey, '|');
    if (bar)
      *bar = '\0';
  }
  pthread_mutex_unlock(&c->reg_lock);
  return cap;
}

/* ------------------------------------------------------------ worker side (lock-free) */

static uint64_t bit_of(unsigned idx)
{
  return 1ull << (idx % 64);
}

static int take_balance(struct cluster_bucket *b)
{
  int64_t t = atomic_load(&b->tokens);
  while (t > 0) {
    if (atomic_compare_exchange_weak(&b->tokens, &t, t - 1)) {
      atomic_fetch_add_explicit(&b->used, 1, memory_order_relaxed);
      if ((uint64_t)(t - 1) <= atomic_load_explicit(&b->low, memory_order_relaxed))
        kick(&b->it); /* prefetch: the answer comes before the balance is gone */
      return 0;
    }
  }
  return -EAGAIN;
}

/* Failure mode open without Redis: a local GCRA at this node's share. */
static uint64_t take_local(struct cluster_bucket *b, uint64_t now_ns)
{
  uint64_t iv = atomic_load(&b->fb_iv);
  uint64_t tat = atomic_load(&b->fb_tat);
  for (;;) {
    if (now_ns < tat)
      return tat - now_ns;
    if (atomic_compare_exchange_weak(&b->fb_tat, &tat, now_ns + iv)) {
      atomic_fetch_add_explicit(&b->used, 1, memory_order_relaxed);
      return 0;
    }
  }
}

int cluster_take(struct cluster_bucket *b, unsigned idx, uint64_t now_ns, uint64_t *wait_ns)
{
  struct cluster *c = b->it.c;
  if (take_balance(b) == 0)
    return 0;
  if (!atomic_load(&c->up) && c->mode == CLUSTER_FAIL_OPEN) {
    uint64_t w = take_local(b, now_ns);
    if (w == 0)
      return 0;
    atomic_fetch_add_explicit(&c->waits, 1, memory_order_relaxed);
    *wait_ns = w;
    return -EAGAIN;
  }
  atomic_fetch_or(&b->it.waiters, bit_of(idx));
  if (take_balance(b) == 0) /* filled between the first look and the bit */
    return 0;
  kick(&b->it);
  atomic_fetch_add_explicit(&c->waits, 1, memory_order_relaxed);
  *wait_ns = WAIT_BACKSTOP_NS;
  return -EAGAIN;
}

void cluster_give_back(struct cluster_bucket *b, uint32_t n)
{
  atomic_fetch_add(&b->tokens, n); /* `used` stays: it only grows */
}

static int acquire_once(struct cluster_cap *cap)
{
  struct cluster *c = cap->it.c;
  uint32_t u = atomic_load(&cap->in_use);
  for (;;) {
    uint32_t lim;
    if (atomic_load(&c->up))
      lim = atomic_load(&cap->granted);
    else if (c->mode == CLUSTER_FAIL_OPEN)
      lim = atomic_load(&cap->local_limit);
    else
      lim = 0; /* closed: no new connection until Redis is back */
    if (u >= lim)
      return -EAGAIN;
    if (atomic_compare_exchange_weak(&cap->in_use, &u, u + 1))
      return 0;
  }
}

int cluster_cap_acquire(struct cluster_cap *cap, unsigned idx, uint64_t *wait_ns)
{
  if (acquire_once(cap) == 0)
    return 0;
  struct cluster *c = cap->it.c;
  atomic_fetch_or(&cap->it.waiters, bit_of(idx));
  if (acquire_once(cap) == 0)
    return 0;
  atomic_fetch_add(&cap->waiting, 1);
  kick(&cap->it);
  atomic_fetch_add_explicit(&c->waits, 1, memory_order_relaxed);
  *wait_ns = WAIT_BACKSTOP_NS;
  return -EAGAIN;
}

bool cluster_cap_wanted(const struct cluster_cap *cap)
{
  return atomic_load(&cap->it.waiters) != 0;
}

bool cluster_cap_full(const struct cluster_cap *cap)
{
  return atomic_load(&cap->in_use) >= atomic_load(&cap->granted);
}

void cluster_cap_release(struct cluster_cap *cap)
{
  uint32_t u = atomic_load(&cap->in_use);
  while (u > 0 && !atomic_compare_exchange_weak(&cap->in_use, &u, u - 1))
    ;
  if (atomic_load(&cap->it.waiters))
    kick(&cap->it); /* a worker of this node waits: the lease is free here */
}

bool cluster_cap_shed(struct cluster_cap *cap)
{
  uint32_t s = atomic_load(&cap->shed);
  while (s > 0) {
    if (atomic_compare_exchange_weak(&cap->shed, &s, s - 1)) {
      /* the lease goes with the connection: no new one takes its place */
      uint32_t g = atomic_load(&cap->granted);
      while (g > 0 && !atomic_compare_exchange_weak(&cap->granted, &g, g - 1))
        ;
      return true;
    }
  }
  return false;
}

/* ------------------------------------------------------------ Redis (client thread) */

static void log_line(struct cluster *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(struct cluster *c, const char *fmt, ...)
{
  if (c->log == NULL)
    return;
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  logs_panic(c->log, clock_wall_ms(), "cluster", "%s", text);
  logs_writer_flush(c->log);
}

static void disconnect(struct cluster *c, const char *reason)
{
  char why[256]; /* reason may point into the context freed below */
  snprintf(why, sizeof why, "%s", reason ? reason : "?");
  if (c->rc) {
    clconn_free(c->rc);
    c->rc = NULL;
  }
  atomic_fetch_add(&c->failures, 1);
  c->nfail++;
  c->next_try_ms = mono_ms() + clcalc_backoff_ms(c->nfail);
  if (atomic_exchange(&c->up, false)) {
    atomic_fetch_add(&c->mode_changes, 1);
    uint32_t nodes = atomic_load(&c->nodes);
    c->down_at_ms = mono_ms();
    c->grace_done = false;
    c->nodes_before = nodes;
    c->resync = false;
    /* the local shares, for failure_mode open: first no more than was
     * granted (the fleet's sum is within the limit) while nodes above
     * their share close connections, then the share itself */
    for (struct item *it = atomic_load(&c->items); it; it = it->next) {
      if (it->kind == IT_CAP) {
        struct cluster_cap *cap = (struct cluster_cap *)it;
        uint32_t share = clcalc_local_share(cap->limit, nodes);
        uint32_t g = atomic_load(&cap->granted), in_use = atomic_load(&cap->in_use);
        atomic_store(&cap->local_limit, g < share ? g : share);
        if (c->mode == CLUSTER_FAIL_OPEN)
          atomic_store(&cap->shed, in_use > share ? in_use - share : 0);
      } else {
        struct cluster_bucket *b = (struct cluster_bucket *)it;
        atomic_store(&b->fb_iv, clcalc_local_interval_ns(b->n, b->per_s, nodes));
      }
    }
    wake_all(c); /* open: they go on locally; closed: they wait with a backstop */
  }
  if (!c->logged_down) {
    c->logged_down = true;
    log_line(c, "redis %s:%u unavailable (%s); failure_mode %s: %s; reconnecting with back-off",
             c->url.host, c->url.port, why, c->mode == CLUSTER_FAIL_OPEN ? "open" : "closed",
             c->mode == CLUSTER_FAIL_OPEN
               ? "each limit goes on locally at this node's share (limit / nodes seen)"
               : "new connections and messages under a cluster limit wait");
  }
}

static redisReply *command(struct cluster *c, int argc, const char **argv, const size_t *lens)
{
  if (c->rc == NULL)
    return NULL;
  atomic_fetch_add_explicit(&c->round_trips, 1, memory_order_relaxed);
  char why[300];
  redisReply *r = clconn_command(c->rc, argc, argv, lens, why, sizeof why);
  if (r == NULL)
    disconnect(c, why);
  return r;
}

static bool load_script(struct cluster *c, const char *src, char *sha)
{
  const char *argv[] = {"SCRIPT", "LOAD", src};
  size_t lens[] = {6, 4, strlen(src)};
  redisReply *r = command(c, 3, argv, lens);
  if (r == NULL)
    return false;
  bool ok = r->type == REDIS_REPLY_STRING && r->len < 48;
  if (ok)
    snprintf(sha, 48, "%s", r->str);
  else
    disconnect(c, r->type == REDIS_REPLY_ERROR ? r->str : "SCRIPT LOAD refused");
  freeReplyObject(r);
  return ok;
}

/* A command whose error reply ends the connection, the reason led by
 * `what` ("AUTH refused: WRONGPASS ..."). */
static bool simple(struct cluster *c, const char *what, int argc, const char **argv)
{
  size_t lens[4];
  for (int i = 0; i < argc; i++)
    lens[i] = strlen(argv[i]);
  redisReply *r = command(c, argc, argv, lens);
  if (r == NULL)
    return false;
  bool ok = r->type != REDIS_REPLY_ERROR;
  if (!ok) {
    char why[300];
    snprintf(why, sizeof why, "%s refused: %s", what, r->str);
    disconnect(c, why);
  }
  freeReplyObject(r);
  return ok;
}

static void try_connect(struct cluster *c)
{
  char why[300];
  struct clconn_params cp = {.host = c->url.host, .port = c->url.port, .tls = c->tls,
                             .timeout_ms = CMD_TIMEOUT_MS};
  c->rc = clconn_open(&cp, why, sizeof why);
  if (c->rc == NULL) {
    disconnect(c, why);
    return;
  }
  if (c->url.pass[0]) {
    /* AUTH user pass (Redis 6 ACLs) or AUTH pass (requirepass) */
    const char *a[] = {"AUTH", c->url.user, c->url.pass};
    bool ok = c->url.user[0] ? simple(c, "AUTH", 3, a)
                             : (a[1] = c->url.pass, simple(c, "AUTH", 2, a));
    if (!ok)
      return;
  }
  if (c->url.db) {
    char db[16];
    snprintf(db, sizeof db, "%d", c->url.db);
    const char *a[] = {"SELECT", db};
    if (!simple(c, "SELECT", 2, a))
      return;
  }
  if (!load_script(c, CLUSTER_LUA_GCRA, c->sha_gcra) ||
      !load_script(c, CLUSTER_LUA_LEASE, c->sha_lease) ||
      !load_script(c, CLUSTER_LUA_NODES, c->sha_nodes))
    return;
  c->nfail = 0;
  c->logged_down = false;
  c->next_hb_ms = 0;
  /* until the nodes seen before are back (or count as gone), nobody grows
   * past its local share: the others' connections may not be in Redis yet */
  c->resync = c->ever_up;
  c->resync_until_ms = mono_ms() + RESYNC_MAX_MS;
  for (struct item *it = atomic_load(&c->items); it; it = it->next)
    if (it->kind == IT_CAP) {
      struct cluster_cap *cap = (struct cluster_cap *)it;
      uint32_t g = atomic_load(&cap->granted), in_use = atomic_load(&cap->in_use);
      atomic_store(&cap->granted, g < in_use ? g : in_use); /* no new one before Redis answers */
      cap->rheld = 0; /* Redis may have restarted empty: all sent again */
    }
  atomic_store(&c->up, true);
  if (c->ever_up)
    atomic_fetch_add(&c->mode_changes, 1);
  log_line(c, "%s redis%s %s:%u/%d as node %s (lease_ttl %llu s, failure_mode %s)",
           c->ever_up ? "reconnected to" : "connected to", c->tls ? " over TLS" : "",
           c->url.host, c->url.port, c->url.db,
           c->node, (unsigned long long)(c->ttl_ms / 1000),
           c->mode == CLUSTER_FAIL_OPEN ? "open" : "closed");
  c->ever_up = true;
  /* everything is sent again: leases re-registered, balances refilled */
  for (struct item *it = atomic_load(&c->items); it; it = it->next) {
    it->dirty = true;
    if (it->kind == IT_CAP)
      ((struct cluster_cap *)it)->renew_at_ms = 0;
    else
      ((struct cluster_bucket *)it)->retry_at_ms = 0;
  }
  wake_all(c);
}

/* EVALSHA sha 1..3 keys + args; integers of an array reply into out[]. */
static int evalsha(struct cluster *c, const char *sha, int nkeys, const char **keys, int nargs,
                   const char **args, long long *out, int nout)
{
  const char *argv[16];
  size_t lens[16];
  char nk[8];
  snprintf(nk, sizeof nk, "%d", nkeys);
  int argc = 0;
  argv[argc++] = "EVALSHA";
  argv[argc++] = sha;
  argv[argc++] = nk;
  for (int i = 0; i < nkeys; i++)
    argv[argc++] = keys[i];
  for (int i = 0; i < nargs; i++)
    argv[argc++] = args[i];
  for (int i = 0; i < argc; i++)
    lens[i] = strlen(argv[i]);
  redisReply *r = command(c, argc, argv, lens);
  if (r == NULL)
    return -EIO;
  int rc = 0;
  if (r->type == REDIS_REPLY_ERROR) {
    /* NOSCRIPT (script cache flushed): reconnecting loads them again */
    disconnect(c, r->str);
    rc = -EIO;
  } else if (r->type == REDIS_REPLY_ARRAY && out) {
    for (int i = 0; i < nout && (size_t)i < r->elements; i++)
      out[i] = r->element[i]->type == REDIS_REPLY_INTEGER ? r->element[i]->integer : 0;
  } else if (r->type == REDIS_REPLY_ARRAY && out == NULL) {
    /* the node list */
    pthread_mutex_lock(&c->view_lock);
    c->nnodes_seen = 0;
    for (size_t i = 0; i < r->elements && i < NODES_MAX; i++)
      if (r->element[i]->type == REDIS_REPLY_STRING)
        snprintf(c->nodes_seen[c->nnodes_seen++], sizeof c->nodes_seen[0], "%s",
                 r->element[i]->str);
    pthread_mutex_unlock(&c->view_lock);
    atomic_store(&c->nodes, (uint32_t)(r->elements ? r->elements : 1));
  }
  freeReplyObject(r);
  return rc;
}

static void heartbeat(struct cluster *c, bool leave)
{
  char ttl[24];
  snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)c->ttl_ms);
  const char *keys[] = {"impetus:nodes"};
  const char *args[] = {c->node, ttl, leave ? "1" : "0"};
  evalsha(c, c->sha_nodes, 1, keys, 3, args, NULL, 0);
}

static int gcra(struct cluster *c, struct cluster_bucket *b, uint32_t want, uint32_t min,
                uint64_t ret, long long out[2])
{
  char t[40], tau[40], w[16], m[16], r[24];
  snprintf(t, sizeof t, "%.3f", b->g.t_us);
  snprintf(tau, sizeof tau, "%.0f", b->g.tau_us);
  snprintf(w, sizeof w, "%u", want);
  snprintf(m, sizeof m, "%u", min);
  snprintf(r, sizeof r, "%llu", (unsigned long long)ret);
  const char *keys[] = {b->it.rkey};
  const char *args[] = {t, tau, w, m, r};
  return evalsha(c, c->sha_gcra, 1, keys, 5, args, out, 2);
}

static int lease(struct cluster *c, struct cluster_cap *cap, uint32_t want, long long out[4])
{
  char kh[700], ke[700], kw[700];
  snprintf(kh, sizeof kh, "%s:h", cap->it.rkey);
  snprintf(ke, sizeof ke, "%s:e", cap->it.rkey);
  snprintf(kw, sizeof kw, "%s:w", cap->it.rkey);
  char lim[16], w[16], ttl[24];
  snprintf(lim, sizeof lim, "%u", cap->limit);
  snprintf(w, sizeof w, "%u", want);
  snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)c->ttl_ms);
  const char *keys[] = {kh, ke, kw};
  const char *args[] = {c->node, lim, w, ttl};
  return evalsha(c, c->sha_lease, 3, keys, 4, args, out, 4);
}

/* One bucket: refill below the low water, give back what lies unused. */
static void pass_bucket(struct cluster *c, struct cluster_bucket *b, uint64_t now, uint64_t *next)
{
  uint64_t used = atomic_load(&b->used);
  b->used_acc += used - b->used_seen;
  if (used != b->used_seen)
    b->last_use_ms = now;
  b->used_seen = used;
  if (b->rate_at_ms == 0)
    b->rate_at_ms = now;
  else if (now - b->rate_at_ms >= TICK_MS) {
    b->rate = clcalc_rate(b->rate, b->used_acc, now - b->rate_at_ms);
    b->peak = clcalc_peak(b->peak, b->rate, now - b->rate_at_ms);
    b->used_acc = 0;
    b->rate_at_ms = now;
  }
  bool waiting = atomic_load(&b->it.waiters) != 0;
  /* a pause (an ingest batch, a queue held back) must not shrink the
   * batch to a token a round trip when mail flows again: sized to the
   * decaying peak, and doubled while workers still wait */
  uint32_t want = clcalc_batch(b->rate < 0 ? b->rate : b->peak, &b->g);
  if (waiting)
    want = clcalc_ramp(want, b->last_grant, &b->g);
  atomic_store(&b->low, clcalc_low_water(want));
  atomic_store(&b->want_pub, want);
  int64_t tokens = atomic_load(&b->tokens);
  bool recent = b->last_use_ms && now - b->last_use_ms < IDLE_RETURN_MS;
  if (tokens > 0 && !recent && !waiting) {
    int64_t ret = atomic_exchange(&b->tokens, 0);
    if (ret > 0) {
      long long out[2] = {0, 0};
      if (gcra(c, b, 0, 0, (uint64_t)ret, out) == 0)
        atomic_fetch_add(&b->returned_total, (uint64_t)ret);
    }
    return;
  }
  if (tokens > (int64_t)clcalc_low_water(want) || !(waiting || b->it.dirty || recent))
    return;
  if (now < b->retry_at_ms) {
    if (b->retry_at_ms < *next)
      *next = b->retry_at_ms;
    return;
  }
  uint32_t ask = tokens > 0 && (uint32_t)tokens < want ? want - (uint32_t)tokens : want;
  long long out[2] = {0, 0};
  if (gcra(c, b, ask, clcalc_min_batch(ask), 0, out) < 0)
    return;
  b->it.dirty = false;
  b->last_grant = out[0] > 0 ? (uint32_t)out[0] : 0;
  if (out[0] > 0) {
    atomic_fetch_add(&b->tokens, out[0]);
    atomic_fetch_add(&b->granted_total, (uint64_t)out[0]);
    /* less than asked: the bucket binds; ask again when another
     * minimum batch has accrued, not at once */
    b->retry_at_ms = (uint64_t)out[0] < ask
                       ? now + (uint64_t)(clcalc_min_batch(ask) * b->g.t_us / 1000.0)
                       : 0;
    wake_item(&b->it);
  } else {
    uint64_t wms = (uint64_t)(out[1] > 0 ? out[1] : 0) / 1000u;
    b->retry_at_ms = now + (wms ? wms : 1);
    if (b->retry_at_ms < *next)
      *next = b->retry_at_ms;
  }
}

/* One cap: hold what is in use plus what was asked for; give back spare
 * leases after LINGER_MS; renew every third of the TTL. */
static void pass_cap(struct cluster *c, struct cluster_cap *cap, uint64_t now, uint64_t *next)
{
  uint32_t in_use = atomic_load(&cap->in_use);
  uint32_t waiting = atomic_exchange(&cap->waiting, 0);
  uint32_t allow = atomic_load(&cap->granted), held = cap->rheld;
  uint32_t desired = clcalc_cap_desired(cap->limit, in_use, waiting, atomic_load(&cap->share),
                                        atomic_load(&cap->others) > 0);
  /* Redis back: until the nodes seen before have re-registered the leases
   * of their open connections, nobody grows. Each node's connections fit
   * in what it held before the outage or in its local share, so their sum
   * fits the cap; growing to one's share could overtake a node whose
   * connections Redis does not know yet (seen: 11 of 10) */
  if (c->resync && desired > in_use)
    desired = in_use;
  bool ask = false;
  if (desired > allow && (waiting || cap->it.dirty || now >= cap->renew_at_ms))
    ask = true;
  if (desired < held) {
    uint64_t linger = atomic_load(&cap->others) ? LINGER_MS : LINGER_ALONE_MS;
    if (cap->spare_since_ms == 0)
      cap->spare_since_ms = now;
    if (now - cap->spare_since_ms >= linger)
      ask = true;
    else if (cap->spare_since_ms + linger < *next)
      *next = cap->spare_since_ms + linger;
  } else
    cap->spare_since_ms = 0;
  if ((held > 0 || desired > 0) && now >= cap->renew_at_ms)
    ask = true;
  if (!ask) {
    if (held > 0 && cap->renew_at_ms < *next)
      *next = cap->renew_at_ms;
    else if (atomic_load(&cap->it.waiters) && allow > in_use)
      wake_item(&cap->it); /* a local release freed one */
    return;
  }
  long long out[4] = {0, 0, 0, 0};
  if (lease(c, cap, desired, out) < 0)
    return;
  cap->it.dirty = false;
  cap->spare_since_ms = 0;
  uint32_t now_held = out[0] > 0 ? (uint32_t)out[0] : 0;
  cap->rheld = now_held;
  atomic_store(&cap->granted, now_held);
  atomic_store(&cap->share, out[1] > 0 ? (uint32_t)out[1] : 0);
  atomic_store(&cap->others, out[2] > 0 ? (uint32_t)out[2] : 0);
  atomic_store(&cap->total, out[3] > 0 ? (uint32_t)out[3] : 0);
  atomic_store(&cap->shed, clcalc_cap_shed(atomic_load(&cap->in_use), now_held,
                                           out[1] > 0 ? (uint32_t)out[1] : 0, out[2] > 0));
  cap->renew_at_ms = now + c->ttl_ms / 3;
  if (now_held > atomic_load(&cap->in_use))
    wake_item(&cap->it);
}

static void drain_requests(struct cluster *c)
{
  uint64_t v;
  ssize_t r = read(c->efd, &v, sizeof v);
  (void)r;
  struct mpsc_node *n;
  while ((n = mpsc_pop(&c->q)) != NULL) {
    struct item *it = (struct item *)(void *)n;
    atomic_store(&it->queued, false);
    it->dirty = true;
  }
}

static void *client_main(void *arg)
{
  struct cluster *c = arg;
  while (!atomic_load(&c->stop)) {
    drain_requests(c);
    uint64_t now = mono_ms();
    uint64_t next = now + TICK_MS;
    if (c->rc == NULL && now >= c->next_try_ms)
      try_connect(c);
    if (c->rc) {
      /* leases before the heartbeat: once others see this node back, its
       * connections are in Redis (they end their resync on seeing it) */
      for (struct item *it = atomic_load(&c->items); it && c->rc; it = it->next) {
        if (it->kind == IT_BUCKET)
          pass_bucket(c, (struct cluster_bucket *)it, now, &next);
        else
          pass_cap(c, (struct cluster_cap *)it, now, &next);
      }
      if (c->rc && now >= c->next_hb_ms) {
        heartbeat(c, false);
        c->next_hb_ms = now + (c->resync ? 250u : c->ttl_ms / 3);
        if (c->resync && (atomic_load(&c->nodes) >= c->nodes_before || now >= c->resync_until_ms))
          c->resync = false;
      }
    } else {
      if (c->next_try_ms < next)
        next = c->next_try_ms;
      if (!c->grace_done && now >= c->down_at_ms + GRACE_MS) {
        c->grace_done = true;
        uint32_t nodes = c->nodes_before;
        for (struct item *it = atomic_load(&c->items); it; it = it->next)
          if (it->kind == IT_CAP) {
            struct cluster_cap *cap = (struct cluster_cap *)it;
            atomic_store(&cap->local_limit, clcalc_local_share(cap->limit, nodes));
          }
        wake_all(c);
      }
    }
    now = mono_ms();
    int timeout = next > now ? (int)(next - now) : 0;
    if (timeout > (int)TICK_MS)
      timeout = TICK_MS;
    struct pollfd pfd = {.fd = c->efd, .events = POLLIN};
    if (timeout > 0)
      (void)poll(&pfd, 1, timeout);
  }
  /* leaving: leases and unused tokens back, then off the node list */
  if (c->rc) {
    for (struct item *it = atomic_load(&c->items); it && c->rc; it = it->next) {
      if (it->kind == IT_CAP) {
        struct cluster_cap *cap = (struct cluster_cap *)it;
        long long out[4];
        if (cap->rheld > 0 && lease(c, cap, 0, out) == 0)
          cap->rheld = 0;
      } else {
        struct cluster_bucket *b = (struct cluster_bucket *)it;
        int64_t ret = atomic_exchange(&b->tokens, 0);
        long long out[2];
        if (ret > 0 && gcra(c, b, 0, 0, (uint64_t)ret, out) == 0)
          atomic_fetch_add(&b->returned_total, (uint64_t)ret);
      }
    }
    if (c->rc)
      heartbeat(c, true);
  }
  return NULL;
}

/* ------------------------------------------------------------ life cycle */

struct cluster *cluster_new(const struct cluster_params *p, char *err, size_t errlen)
{
  struct clcalc_url u;
  if (clcalc_url_parse(p->url, &u) < 0) {
    snprintf(err, errlen, "cluster: redis: '%s' is not redis://[[user]:pass@]host[:port][/db]",
             p->url ? p->url : "");
    return NULL;
  }
  struct tls_ctx *tls = NULL;
  if (u.tls) {
    /* the server's certificate is checked against tls_ca_file (or the
     * system's store) and must name the URL's host, unless tls_verify is
     * false; a client certificate when Redis asks for one (its default) */
    struct tls_params tp = {
      .verify = p->tls_verify ? TLS_VERIFY_HOST : TLS_VERIFY_NO,
      .ca_file = p->tls_ca_file,
      .cert_file = p->tls_cert_file,
      .key_file = p->tls_key_file,
      .max_handshakes = 1,
      .cache_slots = 4,
    };
    char why[400];
    tls = tls_ctx_new(&tp, why, sizeof why);
    if (tls == NULL) {
      snprintf(err, errlen, "cluster: redis: TLS: %s", why);
      return NULL;
    }
  }
  struct cluster *c = util_xcalloc(1, sizeof *c);
  c->url = u;
  c->tls = tls;
  if (p->node_name && *p->node_name)
    snprintf(c->node_name, sizeof c->node_name, "%s", p->node_name);
  else if (gethostname(c->node_name, sizeof c->node_name - 1) != 0)
    snprintf(c->node_name, sizeof c->node_name, "localhost");
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(c->node, sizeof c->node, "%s#%d-%04lx", c->node_name, (int)getpid(),
           (unsigned long)((ts.tv_nsec ^ (long)getpid() * 2654435761u) & 0xffff));
  c->ttl_ms = (uint64_t)(p->lease_ttl_s ? p->lease_ttl_s : 10) * 1000u;
  c->mode = p->failure_mode;
  c->log = p->log;
  c->nworkers = p->nworkers;
  c->wk = util_xcalloc(c->nworkers ? c->nworkers : 1, sizeof *c->wk);
  for (unsigned i = 0; i < c->nworkers; i++) {
    c->wk[i].msg.fn = wake_run;
    c->wk[i].c = c;
  }
  atomic_store(&c->nodes, 1);
  mpsc_init(&c->q);
  pthread_mutex_init(&c->reg_lock, NULL);
  pthread_mutex_init(&c->wk_lock, NULL);
  pthread_mutex_init(&c->view_lock, NULL);
  c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->efd < 0) {
    snprintf(err, errlen, "cluster: eventfd: %s", strerror(errno));
    tls_ctx_free(c->tls);
    free(c->wk);
    free(c);
    return NULL;
  }
  int rc = pthread_create(&c->th, NULL, client_main, c);
  if (rc != 0) {
    snprintf(err, errlen, "cluster: thread: %s", strerror(rc));
    close(c->efd);
    tls_ctx_free(c->tls);
    free(c->wk);
    free(c);
    return NULL;
  }
  pthread_setname_np(c->th, "imp-cluster");
  return c;
}

void cluster_free(struct cluster *c)
{
  if (c == NULL)
    return;
  atomic_store(&c->stop, true);
  kick_thread(c);
  pthread_join(c->th, NULL);
  clconn_free(c->rc);
  tls_ctx_free(c->tls);
  for (struct item *it = atomic_load(&c->items), *n; it; it = n) {
    n = it->next;
    free(it->key);
    free(it->rkey);
    free(it);
  }
  close(c->efd);
  pthread_mutex_destroy(&c->reg_lock);
  pthread_mutex_destroy(&c->wk_lock);
  pthread_mutex_destroy(&c->view_lock);
  free(c->wk);
  util_wipe(&c->url, sizeof c->url); /* the password */
  free(c);
}

/* ------------------------------------------------------------ console and metrics */

void cluster_stats(const struct cluster *c, struct cluster_stats *out)
{
  memset(out, 0, sizeof *out);
  out->up = atomic_load(&c->up);
  out->nodes = atomic_load(&c->nodes);
  out->round_trips = atomic_load(&c->round_trips);
  out->failures = atomic_load(&c->failures);
  out->mode_changes = atomic_load(&c->mode_changes);
  out->waits = atomic_load(&c->waits);
  for (struct item *it = atomic_load(&c->items); it; it = it->next) {
    if (it->kind == IT_CAP)
      out->leases_held += atomic_load(&((struct cluster_cap *)it)->granted);
    else {
      out->tokens_granted += atomic_load(&((struct cluster_bucket *)it)->granted_total);
      out->tokens_returned += atomic_load(&((struct cluster_bucket *)it)->returned_total);
    }
  }
}

void cluster_metrics(const struct cluster *c, struct buf *b)
{
  if (c == NULL)
    return;
  struct cluster_stats s;
  cluster_stats(c, &s);
  const struct {
    const char *name, *type, *help;
    uint64_t v;
  } m[] = {
    {"impetus_cluster_up", "gauge", "1 while the Redis connection works", s.up},
    {"impetus_cluster_nodes", "gauge", "Nodes seen alive through Redis", s.nodes},
    {"impetus_cluster_round_trips_total", "counter", "Redis commands sent", s.round_trips},
    {"impetus_cluster_failures_total", "counter", "Failed Redis connects and commands", s.failures},
    {"impetus_cluster_mode_changes_total", "counter", "Changes between Redis up and down",
     s.mode_changes},
    {"impetus_cluster_waits_total", "counter",
     "Connections and messages that waited for a cluster limit", s.waits},
    {"impetus_cluster_tokens_granted_total", "counter", "Throttle tokens granted by Redis",
     s.tokens_granted},
    {"impetus_cluster_tokens_returned_total", "counter", "Unused throttle tokens given back",
     s.tokens_returned},
    {"impetus_cluster_leases_held", "gauge", "Connection leases this node holds", s.leases_held},
  };
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", m[i].name, m[i].help, m[i].name,
               m[i].type, m[i].name, (unsigned long long)m[i].v);
}

void cluster_describe(struct cluster *c, const char *filter, struct buf *b)
{
  struct cluster_stats s;
  cluster_stats(c, &s);
  buf_printf(b, "node %s: redis%s %s:%u/%d %s, failure_mode %s, lease_ttl %llu s\n", c->node,
             c->tls ? " (TLS)" : "", c->url.host, c->url.port, c->url.db, s.up ? "up" : "DOWN",
             c->mode == CLUSTER_FAIL_OPEN ? "open" : "closed",
             (unsigned long long)(c->ttl_ms / 1000));
  pthread_mutex_lock(&c->view_lock);
  buf_printf(b, "nodes seen: %u", s.nodes);
  for (unsigned i = 0; i < c->nnodes_seen; i++)
    buf_printf(b, "%s%s", i ? ", " : " (", c->nodes_seen[i]);
  buf_printf(b, "%s\n", c->nnodes_seen ? ")" : "");
  pthread_mutex_unlock(&c->view_lock);
  buf_printf(b, "round trips %llu, failures %llu, mode changes %llu, waits %llu\n",
             (unsigned long long)s.round_trips, (unsigned long long)s.failures,
             (unsigned long long)s.mode_changes, (unsigned long long)s.waits);
  for (struct item *it = atomic_load(&c->items); it; it = it->next) {
    if (filter && *filter && !strstr(it->key, filter))
      continue;
    if (it->kind == IT_CAP) {
      struct cluster_cap *cap = (struct cluster_cap *)it;
      buf_printf(b, "cap %s: cluster limit %u, held in the cluster %u, this node holds %u "
                 "(in use %u), share %u, other nodes wanting %u, local share without redis %u\n",
                 it->key, cap->limit, atomic_load(&cap->total), atomic_load(&cap->granted),
                 atomic_load(&cap->in_use), atomic_load(&cap->share), atomic_load(&cap->others),
                 atomic_load(&cap->local_limit));
    } else {
      struct cluster_bucket *bk = (struct cluster_bucket *)it;
      buf_printf(b, "throttle %s: cluster rate %u/%u s, this node's batch %u, balance %lld, "
                 "granted %llu, returned %llu\n",
                 it->key, bk->n, bk->per_s, atomic_load(&bk->want_pub),
                 (long long)atomic_load(&bk->tokens),
                 (unsigned long long)atomic_load(&bk->granted_total),
                 (unsigned long long)atomic_load(&bk->returned_total));
    }
  }
}
