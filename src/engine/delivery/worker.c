/* worker.c: the delivery worker threads. Owns each worker's thread, ring,
 * DNS resolver, log writer, spool transaction and configuration
 * reference; the loop (scheduling pass, commit, log flush, sleep until
 * the next due unit or throttle end); the per-queue limits read from the
 * configuration; graceful stop; the console's read-only hooks.
 *
 * Must never: block the loop on anything but its ring and the spool's
 * batched commit; touch another worker's queues or sessions; decide an
 * outcome (outcome.c) or drive a session (session.c, outsess).
 * Threads: worker_start/stop/join/free_leftovers on the main thread;
 * everything else on the worker's own loop thread. */
#include "delivery.h"

#include "adaptive_conf.h"
#include "adaptive_queue.h"
#include "auth.h"
#include "clock.h"
#include "cluster.h"
#include "ctl.h"
#include "conf.h"
#include "dns.h"
#include "logs.h"
#include "outsess.h"
#include "panic.h"
#include "policy.h"
#include "suspend.h"
#include "throttle.h"
#include "tls.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define OPEN_DELAY_NS 10000000u /* a BDAT queue's backlog this old opens one more connection */
/* One transaction at a time (DATA): the units a busy connection can carry
 * within DRAIN_NS wait for it rather than wake or open another (at most
 * COVER_MAX each) */
#define DRAIN_NS 50000000u
#define COVER_MAX 16u
#define QUEUEING_X 8u /* see data_queueing */

/* Not inlined: callers pass fields shorter than n - 1, which strnlen
 * must not be checked against. */
__attribute__((noinline)) void delivery_copy(char *d, size_t n, const char *s)
{
  size_t l = s ? strnlen(s, n - 1) : 0;
  if (l)
    memcpy(d, s, l);
  d[l] = '\0';
}

static struct session *first_session(struct worker *w)
{
  return w->sessions.head ? DLIST_ENTRY(w->sessions.head, struct session, link) : NULL;
}

static struct session *next_session(struct session *s)
{
  return s->link.next ? DLIST_ENTRY(s->link.next, struct session, link) : NULL;
}

static uint64_t mono_ms(const struct worker *w)
{
  return ring_now(w->ring) / 1000000u;
}

/* ------------------------------------------------------------ config */

/* Take up a newer configuration snapshot between events. */
void worker_refresh_conf(struct worker *w)
{
  uint64_t gen = atomic_load(&w->sh->conf_gen);
  if (gen == w->conf_gen && w->conf)
    return;
  /* The main thread keeps the previous snapshot alive for one reload
   * period; we take our own reference here. */
  struct conf *c = conf_ref(atomic_load(&w->sh->conf));
  conf_unref(w->conf);
  w->conf = c;
  w->conf_gen = gen;
}

const struct conf_view *worker_view(struct worker *w, const char *binding, const char *domain)
{
  const struct conf_view *v = conf_view_get(w->conf, binding, domain);
  return v ? v : conf_view_get(w->conf, NULL, domain);
}

static struct throttle *throttle_for(struct engine_shared *sh, struct conf *c,
                                     const struct conf_view *v, enum conf_opt o)
{
  struct conf_throttle t = conf_throttle(v, o);
  if (t.n == 0)
    return NULL;
  struct throttle_spec spec = {.n = t.n, .per_s = t.per ? t.per : 1};
  /* One bucket per scope that set the option (Momentum's by-reference
   * fallback): the scope's name is stable across reloads. */
  return throttle_registry_get(sh->throttles, conf_scope_name(c, t.scope), conf_opt_name(o), &spec);
}

/* A cluster bucket for throttle option o: one per scope that set it, as
 * for the local throttles (the scope's name is the same on every node
 * with the same configuration). */
static struct cluster_bucket *cluster_bucket_for(struct worker *w, const struct conf_view *v,
                                                 enum conf_opt o)
{
  struct conf_throttle t = conf_throttle(v, o);
  if (t.n == 0)
    return NULL;
  char key[512];
  snprintf(key, sizeof key, "%s|%s", conf_scope_name(w->conf, t.scope), conf_opt_name(o));
  return cluster_bucket(w->sh->cluster, key, t.n, t.per ? t.per : 1);
}

/* Cluster_* options of q (docs/cluster.md): connection caps per domain
 * within the scope that set them (so per binding and domain when set in
 * a binding scope), the server cap per scope, throttles per scope. */
static void load_cluster_limits(struct worker *w, struct dq_queue *q, const struct conf_view *v)
{
  struct sched_cluster *cl = &dq_queue_state(q)->limits.cluster;
  *cl = (struct sched_cluster){.worker = w->idx};
  if (w->sh->cluster == NULL)
    return;
  char key[600];
  int64_t n = conf_int(v, CONF_CLUSTER_MAX_OUTBOUND_CONNECTIONS);
  if (n > 0) {
    snprintf(key, sizeof key, "conn|%s|%s",
             conf_scope_name(w->conf, conf_scope(v, CONF_CLUSTER_MAX_OUTBOUND_CONNECTIONS)),
             dq_queue_domain(q));
    cl->conns = cluster_cap(w->sh->cluster, key, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
  }
  n = conf_int(v, CONF_CLUSTER_SERVER_MAX_OUTBOUND_CONNECTIONS);
  if (n > 0) {
    snprintf(key, sizeof key, "server|%s",
             conf_scope_name(w->conf, conf_scope(v, CONF_CLUSTER_SERVER_MAX_OUTBOUND_CONNECTIONS)));
    cl->server = cluster_cap(w->sh->cluster, key, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
  }
  cl->msg_rate = cluster_bucket_for(w, v, CONF_CLUSTER_OUTBOUND_THROTTLE_MESSAGES);
  cl->conn_rate = cluster_bucket_for(w, v, CONF_CLUSTER_OUTBOUND_THROTTLE_CONNECTIONS);
}

struct cluster_cap *worker_cluster_host_cap(struct worker *w, const char *mx_host)
{
  if (w->sh->cluster == NULL)
    return NULL;
  const struct conf_view *v = adaptive_conf_host(w->conf, mx_host);
  int64_t n = v ? conf_int(v, CONF_HOST_CLUSTER_MAX_OUTBOUND_CONNECTIONS) : 0;
  if (n <= 0)
    return NULL;
  /* every node names the host alike: lower case, no trailing dot */
  char key[300];
  size_t len = strlen(mx_host);
  if (len > 0 && mx_host[len - 1] == '.')
    len--;
  int k = snprintf(key, sizeof key, "host|%.*s", (int)len, mx_host);
  for (int i = 5; i < k && i < (int)sizeof key; i++)
    key[i] = (char)tolower((unsigned char)key[i]);
  return cluster_cap(w->sh->cluster, key, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
}

/* The cluster client has leases or tokens this worker waited for: its
 * queues held by a cluster limit look again now. */
static void unblock_cluster(void *arg, struct dq_queue *q)
{
  (void)arg;
  struct dq_queue_state *st = dq_queue_state(q);
  if (sched_cluster_any(&st->limits))
    st->blocked_until_ns = 0;
}

static void cluster_wake(void *arg)
{
  struct worker *w = arg;
  dq_foreach(w->dq, unblock_cluster, NULL);
}

static void load_limits(struct worker *w, struct dq_queue *q)
{
  struct dq_queue_state *st = dq_queue_state(q);
  uint64_t now = clock_wall_ms();
  if (st->conf_gen == w->conf_gen && st->conf_gen != 0 && !adaptive_queue_stale(w->sh, st, now))
    return;
  const struct conf_view *v = worker_view(w, dq_queue_binding(q), dq_queue_domain(q));
  st->limits.max_outbound_connections = (uint32_t)conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS);
  st->limits.max_deliveries_per_connection =
    (uint32_t)conf_int(v, CONF_MAX_DELIVERIES_PER_CONNECTION);
  st->limits.max_recipients_per_batch = (uint32_t)conf_int(v, CONF_MAX_RECIPIENTS_PER_BATCH);
  int64_t rpc = conf_int(v, CONF_MAX_RECIPIENTS_PER_CONNECTION);
  st->limits.max_recipients_per_connection = rpc > 0 && rpc <= UINT32_MAX ? (uint32_t)rpc : 0;
  int64_t depth = conf_bool(v, CONF_USE_CHUNKING) ? conf_int(v, CONF_PIPELINE_DEPTH) : 1;
  st->limits.pipeline_depth = depth < 1 ? 1 : depth > SMTPC_PIPE_MAX ? SMTPC_PIPE_MAX : (uint32_t)depth;
  st->limits.suspend_delivery = conf_bool(v, CONF_SUSPEND_DELIVERY) ||
                                suspend_active(dq_queue_binding(q), dq_queue_domain(q));
  st->limits.msg_throttle = throttle_for(w->sh, w->conf, v, CONF_OUTBOUND_THROTTLE_MESSAGES);
  st->limits.conn_throttle = throttle_for(w->sh, w->conf, v, CONF_OUTBOUND_THROTTLE_CONNECTIONS);
  adaptive_queue_limits(w->sh, v, dq_queue_binding(q), dq_queue_domain(q), st, now);
  load_cluster_limits(w, q, v);
  st->conf_gen = w->conf_gen;
  /* the pool key: route + binding + credential identity */
  char route[300];
  struct conf_addr gw = conf_addr(v, CONF_GATEWAY);
  if (gw.host)
    snprintf(route, sizeof route, "%s:%s:%u", gw.implicit_tls ? "gws" : "gw", gw.host, gw.port);
  else
    snprintf(route, sizeof route, "mx:%s", dq_queue_domain(q));
  uint64_t key = sched_pool_key(route, dq_queue_binding(q), dq_queue_cred_id(q));
  st->user = (void *)(uintptr_t)key;
}

uint64_t worker_queue_key(struct dq_queue *q)
{
  return (uint64_t)(uintptr_t)dq_queue_state(q)->user;
}

struct sched_retry worker_retry_policy(struct worker *w, struct dq_queue *q)
{
  const struct conf_view *v = worker_view(w, dq_queue_binding(q), dq_queue_domain(q));
  struct sched_retry p = {
    .retry_interval_s = (uint32_t)conf_interval(v, CONF_RETRY_INTERVAL),
    .max_retry_interval_s = (uint32_t)conf_interval(v, CONF_MAX_RETRY_INTERVAL),
    .max_retries = (int32_t)conf_int(v, CONF_MAX_RETRIES),
    .message_expiration_s = (uint32_t)conf_interval(v, CONF_MESSAGE_EXPIRATION),
  };
  adaptive_queue_retry(w->sh, v, dq_queue_binding(q), dq_queue_domain(q), dq_queue_state(q),
                       clock_wall_ms(), &p);
  return p;
}


/* ------------------------------------------------------------ scheduling */

/* q's (binding, domain) is at Max_Outbound_Connections and q, of other
 * credentials, has no connection: QUIT an idle one of another credential
 * set of the pair, so q does not wait for its Idle_Timeout. */
static void quit_idle_sibling(struct worker *w, struct dq_queue *q)
{
  struct sched_acct *pair = dq_queue_state(q)->pair;
  for (struct session *s = first_session(w); s; s = next_session(s))
    if (s->parked && !s->closing && s->q != q && dq_queue_state(s->q)->pair == pair) {
      session_quit_parked(s);
      return;
    }
}

bool worker_quit_idle_holder(struct worker *w, struct dq_queue *q, struct cluster_cap *cap)
{
  if (cap == NULL || !cluster_cap_full(cap))
    return false;
  for (struct session *s = first_session(w); s; s = next_session(s))
    if (s->parked && !s->closing && s->q != q)
      for (int i = 0; i < 3; i++)
        if (s->leases.cap[i] == cap) {
          session_quit_parked(s);
          return true;
        }
  return false;
}

/* q's connections neither idle in its pool nor still opening. */
static uint32_t busy_conns(const struct dq_queue_state *st)
{
  uint32_t idle_or_opening = st->opening + st->pool.n;
  return st->acct.conns > idle_or_opening ? st->acct.conns - idle_or_opening : 0;
}

/* One transaction at a time (DATA): how many waiting units each busy or
 * opening connection of q is left to take before another connection is
 * woken from the pool or opened. A DATA connection takes the next unit
 * behind its dot, about one per transaction time (session.c keeps the
 * shortest lately seen: the peer's, without the queueing more connections
 * add), while a connection woken for a lone envelope costs one more send
 * per message and more completions on both sides: each takes what it can
 * carry in DRAIN_NS (at most COVER_MAX), one against a peer slower than
 * that (so a slow peer still gets every connection its backlog can keep
 * busy, up to Max_Outbound_Connections) or when none of its transactions
 * ended for TXN_WINDOW_NS (a stalled connection holds no units back). */
static uint32_t data_cover(const struct dq_queue_state *st, uint64_t now_ns)
{
  /* nothing finished for a while: its busy connections may be stuck (or
   * it was idle), they cover nothing */
  if (st->txn_ns == 0 || now_ns - st->txn_last_ns > TXN_WINDOW_NS)
    return 1;
  uint64_t c = DRAIN_NS / st->txn_ns;
  return c < 1 ? 1 : c > COVER_MAX ? COVER_MAX : (uint32_t)c;
}

/* One transaction at a time (DATA): q's transactions take QUEUEING_X times
 * its shortest lately on average. Then they wait in a queue (the peer's
 * CPU, or ours) that another connection would only lengthen, not for round
 * trips that another connection would overlap: no new one opens (idle ones
 * still wake). Not when none ended lately (a stall, or idle). */
static bool data_queueing(const struct dq_queue_state *st, uint64_t now_ns)
{
  return st->txn_ns && now_ns - st->txn_last_ns <= TXN_WINDOW_NS &&
         st->txn_avg_ns > QUEUEING_X * st->txn_ns;
}

static void schedule(struct worker *w)
{
  uint64_t now_ms = clock_wall_ms();
  uint64_t now_ns = ring_now(w->ring);
  dq_promote(w->dq, now_ms);
  if (atomic_load(&w->stop))
    return;
  size_t turns = dq_active_count(w->dq);
  for (size_t t = 0; t < turns; t++) {
    struct dq_queue *q = dq_next_active(w->dq);
    if (q == NULL)
      break;
    if (dq_queue_cred_id(q) == AUTH_CRED_UNUSABLE) { /* due: resolve again (handover.c) */
      struct dq_unit *u;
      for (size_t n = dq_queue_ready(q); n > 0 && (u = dq_pop(w->dq, q)) != NULL; n--)
        handover_requeue(w, dq_queue(w->dq, dq_queue_binding(q), dq_queue_domain(q)), u);
      continue;
    }
    load_limits(w, q);
    struct dq_queue_state *st = dq_queue_state(q);
    if (st->blocked_until_ns > now_ns || st->limits.suspend_delivery)
      continue; /* suspended: not even an idle connection takes a unit */
    for (int guard = 0; guard < 1024 && dq_queue_ready(q) > 0; guard++) {
      uint32_t per = st->no_chunking ? 1 : st->limits.pipeline_depth;
      /* units each busy or opening connection is left to take before
       * another connection is woken or opened */
      uint32_t cover = st->no_chunking ? data_cover(st, now_ns) : per;
      if (st->no_chunking && dq_queue_ready(q) <= (size_t)(busy_conns(st) + st->opening) * cover) {
        st->backlog_since_ns = 0;
        break; /* the busy (and opening) connections take these, each behind its dot */
      }
      /* an idle connection of this queue first (same credentials: the
       * pool key includes their identity) */
      struct session *idle = sched_pool_take(&st->pool, worker_queue_key(q));
      if (idle) {
        idle->parked = false;
        session_begin_next(idle);
        if (idle->parked)
          break; /* throttled, or nothing it could take */
        continue;
      }
      /* connections still opening will take the waiting units; with BDAT
       * so will the busy ones, Pipeline_Depth each, as their replies come
       * in (sooner than a new connection's greeting), and with DATA
       * `cover` each: open only for units beyond that (before the first
       * READY BDAT is assumed) */
      bool ramp = per > 1 || st->no_chunking;
      size_t taken = ramp ? (size_t)(st->opening + busy_conns(st)) * cover : st->opening;
      if (dq_queue_ready(q) <= taken) {
        st->backlog_since_ns = 0;
        break;
      }
      if (st->no_chunking && st->acct.conns > 0 && data_queueing(st, now_ns)) {
        st->backlog_since_ns = 0;
        break; /* more connections would wait in the same queue */
      }
      if (ramp && st->acct.conns > 0) {
        /* BDAT connections drain Pipeline_Depth units per round trip, DATA
         * ones `cover` in DRAIN_NS: a burst is usually gone within a few.
         * Only a backlog that lasts
         * OPEN_DELAY gets another connection, one per OPEN_DELAY (each
         * new connection costs both sides a handshake, TLS and AUTH;
         * receivers dislike connection storms) */
        if (st->backlog_since_ns == 0)
          st->backlog_since_ns = now_ns;
        if (now_ns - st->backlog_since_ns < OPEN_DELAY_NS)
          break;
        st->backlog_since_ns = now_ns;
      }
      uint32_t maxc = st->limits.max_outbound_connections;
      if (w->nsessions >= w->fd_cap && (maxc == 0 || st->pair->conns < maxc)) {
        /* out of file descriptors for new sessions: they wait for one to
         * end; an idle connection of another queue is closed to make room
         * (checked before sched_conn_open, which counts the connection) */
        if (!w->fd_cap_logged)
          logs_panic(w->log, now_ms, "engine",
                     "worker %u: %u connections open, the RLIMIT_NOFILE share of this worker; "
                     "new connections wait (raise ulimit -n)", w->idx, w->nsessions);
        w->fd_cap_logged = true;
        for (struct session *s = first_session(w); s; s = next_session(s))
          if (s->parked && !s->closing) {
            session_quit_parked(s);
            break;
          }
        break;
      }
      uint64_t wait = 0;
      /* Max_Outbound_Connections counts the (binding, domain)'s connections
       * whatever their credentials (st->pair) */
      enum sched_open o = sched_conn_open(&st->limits, st->pair, now_ns, &wait);
      struct sched_leases leases = {0};
      if (o == SCHED_OPEN_OK && sched_cluster_any(&st->limits) &&
          (o = sched_cluster_open(&st->limits, &leases, now_ns, &wait)) != SCHED_OPEN_OK)
        sched_conn_closed(st->pair); /* not opened after all */
      if (o != SCHED_OPEN_OK) {
        if (o == SCHED_OPEN_THROTTLED || o == SCHED_OPEN_CLUSTER)
          st->blocked_until_ns = now_ns + wait;
        if (o == SCHED_OPEN_FULL && st->acct.conns == 0)
          quit_idle_sibling(w, q); /* this credential set has none: free one */
        if (o == SCHED_OPEN_CLUSTER && !worker_quit_idle_holder(w, q, st->limits.cluster.server))
          worker_quit_idle_holder(w, q, st->limits.cluster.conns);
        break;
      }
      st->acct.conns++; /* this queue's own (pair already counted) */
      session_open(w, q, &leases);
    }
  }
}

/* Sessions this worker may hold: each needs its socket. New messages are
 * read from memory or the journal's shared fds; only a retried message's
 * own body file is open while its transaction runs, and the spool's commits
 * open a few files at a time. Leave a quarter of the limit for those and
 * for the other threads (logs, ingest), and share the rest between the
 * workers. Past it, sessions wait (EMFILE is handled the same way). */
static unsigned fd_cap_compute(unsigned nworkers)
{
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
    return UINT32_MAX;
  unsigned open_now = 0;
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    while (readdir(d))
      open_now++;
    closedir(d);
  }
  uint64_t lim = rl.rlim_cur;
  uint64_t reserve = 64 + lim / 4;
  if (lim <= open_now + reserve)
    return 1;
  uint64_t cap = (lim - open_now - reserve) / (nworkers ? nworkers : 1);
  return cap < 1 ? 1 : cap > UINT32_MAX ? UINT32_MAX : (unsigned)cap;
}

/* How long the loop may sleep: until the next deferred unit or the end of
 * a throttle wait. */
struct next_wake {
  uint64_t now_ns, at_ns;
};

static void min_blocked(void *arg, struct dq_queue *q)
{
  struct next_wake *nw = arg;
  struct dq_queue_state *st = dq_queue_state(q);
  if (dq_queue_ready(q) > 0 && st->blocked_until_ns > nw->now_ns && st->blocked_until_ns < nw->at_ns)
    nw->at_ns = st->blocked_until_ns;
}

static int64_t sleep_ns(struct worker *w)
{
  struct next_wake nw = {.now_ns = ring_now(w->ring), .at_ns = UINT64_MAX};
  if (dq_active_count(w->dq) > 0)
    dq_foreach(w->dq, min_blocked, &nw);
  uint64_t due = dq_next_due(w->dq);
  int64_t t = 1000000000; /* at most 1 s: stop requests, config reloads */
  if (due != UINT64_MAX) {
    uint64_t now = clock_wall_ms();
    int64_t d = due > now ? (int64_t)(due - now) * 1000000 : 0;
    if (d < t)
      t = d;
  }
  if (nw.at_ns != UINT64_MAX) {
    int64_t d = (int64_t)(nw.at_ns - nw.now_ns);
    if (d < t)
      t = d;
  }
  return t < 0 ? 0 : t;
}


/* ------------------------------------------------------------ thread */

static void drop_unit(void *arg, struct dq_unit *u)
{
  (void)arg;
  dq_unit_free(u);
}

static void commit(struct worker *w)
{
  if (!w->txn_dirty)
    return;
  w->txn_dirty = false;
  int rc = spool_txn_commit(w->txn);
  if (rc < 0)
    logs_panic(w->log, clock_wall_ms(), "spool", "commit failed: %s", strerror(-rc));
}

static void *worker_main(void *arg)
{
  struct worker *w = arg;
  int err = 0;
  w->ring = ring_new(NULL, &err);
  if (w->ring == NULL) {
    w->start_err = err;
    snprintf(w->start_text, sizeof w->start_text, "io_uring: %s", strerror(-err));
    sem_post(&w->started);
    return NULL;
  }
  struct dns_params dp = {.servers = w->sh->resolver};
  w->dns = dns_new(w->ring, &dp, w->start_text, sizeof w->start_text);
  if (w->dns == NULL) {
    w->start_err = -EINVAL;
    sem_post(&w->started);
    return NULL;
  }
  w->dq = dq_new();
  w->log = logs_writer_new(w->sh->logs);
  w->txn = spool_txn_new(w->sh->spool);
  w->fd_cap = fd_cap_compute(w->sh->nworkers);
  worker_refresh_conf(w);
  w->auth = auth_new();
  w->pw = policy_worker_new(w->sh->policy, w->ring, w->log, w->conf, w->idx);
  cluster_attach(w->sh->cluster, w->idx, w->ring, cluster_wake, w);
  sem_post(&w->started);

  for (;;) {
    worker_refresh_conf(w);
    policy_worker_refresh(w->pw, w->conf);
    if (w->idx == 0)
      adaptive_queue_sweep(w->sh, w->log, clock_wall_ms());
    schedule(w);
    commit(w);
    logs_writer_flush(w->log);
    if (atomic_load(&w->stop)) {
      /* graceful stop: idle sessions go, busy ones finish until the deadline */
      for (struct session *s = first_session(w); s; s = next_session(s))
        if (s->parked && !s->closing)
          session_quit_parked(s);
      if (w->nsessions == 0) {
        if (!w->idle_counted) {
          w->idle_counted = true;
          atomic_fetch_add(&w->sh->idle_workers, 1);
        }
        /* stop_posted: the main thread is done with our ring (its
         * wake-up write), so ring_free cannot race with it (TSan) */
        if (atomic_load(&w->sh->idle_workers) == w->sh->nworkers &&
            atomic_load(&w->stop_posted)) {
          /* nobody makes new results now: apply those already posted */
          while (ring_run_once(w->ring, 0) > 0)
            ;
          break;
        }
      }
      if (mono_ms(w) >= atomic_load(&w->stop_deadline_ms)) {
        for (struct session *s = first_session(w), *n; s; s = n) {
          n = next_session(s);
          /* abandoned: its recipients stay pending on disk */
          for (unsigned k = 0; k < SMTPC_PIPE_MAX; k++) {
            dq_unit_free(s->fl[k].u);
            s->fl[k].u = NULL;
          }
          if (s->os == NULL)
            session_free(s); /* still resolving its route */
          else
            session_close(s);
        }
      }
    }
    int64_t nap = sleep_ns(w);
    if (atomic_load(&w->stop) && nap > 10000000)
      nap = 10000000; /* stopping: look at the other workers often */
    int rc = ring_run_once(w->ring, nap);
    if (rc < 0 && rc != -EINTR && rc != -ETIME)
      logs_panic(w->log, clock_wall_ms(), "worker", "ring: %s", strerror(-rc));
  }
  commit(w);
  /* everything below is loop-thread state: free it here */
  dq_free(w->dq, drop_unit, NULL);
  w->dq = NULL;
  policy_worker_free(w->pw);
  auth_drop_pending(w->auth, handover_drop_post);
  auth_free(w->auth);
  spool_txn_free(w->txn);
  logs_writer_free(w->log);
  dns_free(w->dns);
  for (unsigned i = 0; i < w->ntls; i++) {
    tls_ctx_free(w->tls[i].ctx);
    free(w->tls[i].key);
  }
  conf_unref(w->conf);
  cluster_attach(w->sh->cluster, w->idx, NULL, NULL, NULL); /* no wake-up for a freed ring */
  ring_free(w->ring);
  w->ring = NULL;
  return NULL;
}

struct worker *worker_start(struct engine_shared *sh, unsigned idx, char *err, size_t errlen)
{
  struct worker *w = util_xcalloc(1, sizeof *w);
  w->sh = sh;
  w->idx = idx;
  sem_init(&w->started, 0, 0);
  sh->workers[idx] = w;
  int rc = pthread_create(&w->thread, NULL, worker_main, w);
  if (rc != 0) {
    snprintf(err, errlen, "worker thread: %s", strerror(rc));
    free(w);
    sh->workers[idx] = NULL;
    return NULL;
  }
  char tname[16];
  snprintf(tname, sizeof tname, "imp-worker-%u", idx % 100u);
  pthread_setname_np(w->thread, tname);
  while (sem_wait(&w->started) < 0 && errno == EINTR)
    ;
  if (w->start_err) {
    snprintf(err, errlen, "worker %u: %s", idx, w->start_text);
    pthread_join(w->thread, NULL);
    ring_free(w->ring);
    free(w);
    sh->workers[idx] = NULL;
    return NULL;
  }
  return w;
}

static void wake_noop(void *arg)
{
  (void)arg;
}

void worker_stop(struct worker *w, uint64_t deadline_ms)
{
  atomic_store(&w->stop_deadline_ms, deadline_ms);
  atomic_store(&w->stop, true);
  ring_post(w->ring, wake_noop, NULL);
  atomic_store(&w->stop_posted, true);
}

void worker_join(struct worker *w)
{
  if (w == NULL)
    return;
  pthread_join(w->thread, NULL);
  sem_destroy(&w->started);
}

void worker_free_leftovers(struct engine_shared *sh)
{
  for (unsigned i = 0; i < sh->nworkers; i++) {
    struct worker *w = sh->workers[i];
    if (w == NULL)
      continue;
    for (struct dlist_node *l = w->msgs.head, *n; l; l = n) {
      n = l->next;
      struct emsg *em = DLIST_ENTRY(l, struct emsg, link);
      spool_msg_free(em->sm);
      free(em->bounce);
      free(em);
    }
    free(w);
    sh->workers[i] = NULL;
  }
}


/* ------------------------------------------------------------ console hooks (ctl.c) */

struct ring *worker_ring(struct worker *w) { return w->ring; }
struct dq *worker_dq(struct worker *w) { return w->dq; }
struct dns *worker_dns(struct worker *w) { return w->dns; }
unsigned worker_nsessions(const struct worker *w) { return w->nsessions; }

const struct spool_msg *worker_unit_msg(const struct dq_unit *u, const char **id)
{
  const struct emsg *em = u->msg;
  *id = em->id;
  return em->sm;
}

