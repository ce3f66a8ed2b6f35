/* worker.c owns the delivery workers: their threads and rings, the
 * scheduling pass over their queues, the outbound sessions (smtpc driven
 * over a net conn), per-recipient outcomes (logs, spool state, retries,
 * expiry, bounces) and graceful stop.
 *
 * Must never: block a worker on anything but its ring and the spool's
 * batched commit; touch another worker's queues or sessions (results cross
 * threads as posted messages); log a credential.
 * Threads: everything static runs on the worker's own loop thread, except
 * worker_submit_msg (the spool's hand-over thread) and the start/stop functions (main). */
#include "worker.h"

#include "auth.h"
#include "conf.h"
#include "counters.h"
#include "ctl.h"
#include "dns.h"
#include "dq.h"
#include "dsn.h"
#include "logs.h"
#include "outsess.h"
#include "panic.h"
#include "policy.h"
#include "ring.h"
#include "scheduler.h"
#include "smtpc.h"
#include "spool.h"
#include "throttle.h"
#include "tlskeys.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ROUTES_MAX 16          /* route candidates tried per attempt */
#define RES_INLINE 2           /* recipients whose results live in the session itself */
#define OPEN_DELAY_NS 10000000u /* a BDAT queue's backlog this old opens one more connection */
#define BODY_INFLIGHT 65536u   /* body bytes queued in the conn at most */
#define DSN_ORIG_MAX 65536u    /* bytes of the original read for a DSN */
#define RESULT_TEXT_MAX 256u   /* failure text kept for a DSN */
#define TLS_SLOTS 16           /* distinct TLS option sets per worker */
#define HOSTFAIL_MAX 256       /* remote addresses remembered as failing */
#define SMTPS_PORT 465         /* smtps:// routes without a port (RFC 8314) */

/* ------------------------------------------------------------ types */

/* Engine state of one message; lives in spool_msg->user. Changed only by
 * the message's home worker (units_left, bounces, retry record). */
struct emsg {
  struct emsg *next, *prev; /* home worker's list (for exit clean-up) */
  struct spool_msg *sm;
  unsigned home;
  uint32_t units_left;
  uint32_t units;         /* at submission: 1 means only the home worker reads sm */
  uint64_t next_retry_ms; /* earliest retry of its deferred units */
  uint32_t attempts;
  char id[SPOOL_ID_LEN + 1];
  uint32_t nbounce;
  struct bounce {
    uint32_t idx;
    int code;
    char enh[16];
    char text[RESULT_TEXT_MAX];
  } *bounce;
  bool bounces_on;
};

/* Outcomes of one unit's attempt, sent to the home worker. */
struct uresult {
  struct emsg *em;
  bool unit_done;       /* no recipient of the unit left pending */
  uint32_t attempts;
  uint64_t next_ms;     /* when unit_done is false */
  uint32_t n;
  struct rres {
    uint32_t idx;
    uint8_t state;      /* enum spool_rcpt_state */
    int code;
    char enh[16];
    char text[RESULT_TEXT_MAX];
  } r[];
};

struct route {
  struct sockaddr_storage sa;
  socklen_t salen;
  bool implicit_tls; /* smtps://: TLS handshake right after connect */
  char ip[64];
  char host[256];
};

/* One delivery connection of a queue: its route candidates, the outsess
 * of the current attempt, and the transactions in flight on it. */
struct session {
  struct worker *w;
  struct dq_queue *q;
  struct outsess *os;           /* the current attempt; NULL while resolving or after closed */
  /* Pipelining across transactions (RFC 2920 after a dot; RFC 3030 BDAT
   * up to Pipeline_Depth deep): the transactions in flight, each in its
   * own result slot: slots 0 and 1 live in the session (res_inline,
   * fin_buf), deeper ones in `deep`, allocated when a session first goes
   * deeper than two; a unit of more than RES_INLINE recipients uses
   * res_big[slot] (max_batch results, allocated at its first use): most
   * sessions need neither, and thousands of idle sessions stay small. */
  struct flight {
    struct dq_unit *u;          /* NULL: slot free */
    struct smtpc_txn txn;       /* outsess and smtpc read it until txn_done */
  } fl[SMTPC_PIPE_MAX];
  struct smtpc_result res_inline[2][RES_INLINE];
  struct smtpc_result fin_buf[2];
  struct smtpc_result *deep; /* (SMTPC_PIPE_MAX - 2) x (RES_INLINE + 1) */
  struct smtpc_result *res_big[SMTPC_PIPE_MAX];
  uint32_t max_batch;
  const char **rcpts;           /* max_batch pointers */
  uint32_t delivered;           /* successful transactions */
  uint32_t rcpts_tried;         /* RCPTs sent (Max_Recipients_Per_Connection) */
  uint64_t pool_key;
  bool parked, closing, connected, counted;
  bool ever_ready; /* reached READY once (no longer counted as opening) */
  int body_fd;     /* the spool file of the body being sent, or -1 */
  uint64_t bytes_prev, bytes_seen; /* bytes sent by earlier attempts / this one at its failure */
  char conn_id_s[32];
  struct route routes[ROUTES_MAX];
  unsigned nroutes, route_i;
  struct dns_req *dns;
  struct tls_ctx *tls;          /* for STARTTLS; NULL: TLS cannot be used */
  bool retry_plain;  /* the STARTTLS handshake failed: reconnect without it */
  bool plain_only;   /* this connection skips STARTTLS (TLS_Ifavailable_Fallback) */
  char detail[160];  /* why the handshake or the connect failed, for the log */
  bool charged;      /* this connection attempt already gave a unit its T */
  struct session *next_all, *prev_all; /* worker's session list */
};

struct worker {
  struct engine_shared *sh;
  unsigned idx;
  pthread_t thread;
  struct ring *ring;
  struct dns *dns;
  struct tls_slot {
    char *key;               /* the TLS options that built it */
    struct tls_ctx *ctx;     /* NULL: could not be built (logged once) */
  } tls[TLS_SLOTS];
  unsigned ntls;
  struct hostfail {
    char key[80];            /* "ip port" */
    uint64_t until_ms;       /* wall clock */
  } hostfail[HOSTFAIL_MAX],
    tlsfail[HOSTFAIL_MAX];   /* STARTTLS failed here: plaintext until then */
  unsigned nhostfail, ntlsfail;
  struct dq *dq;
  struct logs_writer *log;
  struct spool_txn *txn;
  bool txn_dirty;
  struct conf *conf;
  uint64_t conf_gen;
  struct auth *auth;        /* outbound_smtp_auth credentials (auth.c) */
  struct policy_worker *pw; /* this worker's Lua state (policy.c) */
  struct emsg *msgs;       /* messages this worker is home for */
  struct session *sessions;
  unsigned nsessions;
  unsigned fd_cap;         /* sessions this worker may hold (RLIMIT_NOFILE share) */
  bool fd_cap_logged;
  uint64_t next_conn;
  atomic_bool stop;
  atomic_bool stop_posted; /* worker_stop's wake-up post has returned */
  bool idle_counted;
  _Atomic uint64_t stop_deadline_ms;
  sem_t started;
  int start_err;
  char start_text[256];
};

/* Copy a string, cut to fit (never fails). */
__attribute__((noinline)) static void scopy(char *d, size_t n, const char *s)
{
  size_t l = s ? strnlen(s, n - 1) : 0;
  if (l)
    memcpy(d, s, l);
  d[l] = '\0';
}

static uint64_t wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_ms(const struct worker *w)
{
  return ring_now(w->ring) / 1000000u;
}

static const char *rcpt_domain(const char *addr)
{
  const char *at = strrchr(addr, '@');
  return at ? at + 1 : addr;
}

/* ------------------------------------------------------------ config */

/* Take up a newer configuration snapshot between events. */
static void refresh_conf(struct worker *w)
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

static const struct conf_view *view_for(struct worker *w, const char *binding, const char *domain)
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

static void load_limits(struct worker *w, struct dq_queue *q)
{
  struct dq_queue_state *st = dq_queue_state(q);
  if (st->conf_gen == w->conf_gen && st->conf_gen != 0)
    return;
  const struct conf_view *v = view_for(w, dq_queue_binding(q), dq_queue_domain(q));
  st->limits.max_outbound_connections = (uint32_t)conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS);
  st->limits.max_deliveries_per_connection =
    (uint32_t)conf_int(v, CONF_MAX_DELIVERIES_PER_CONNECTION);
  st->limits.max_recipients_per_batch = (uint32_t)conf_int(v, CONF_MAX_RECIPIENTS_PER_BATCH);
  int64_t rpc = conf_int(v, CONF_MAX_RECIPIENTS_PER_CONNECTION);
  st->limits.max_recipients_per_connection = rpc > 0 && rpc <= UINT32_MAX ? (uint32_t)rpc : 0;
  int64_t depth = conf_bool(v, CONF_USE_CHUNKING) ? conf_int(v, CONF_PIPELINE_DEPTH) : 1;
  st->limits.pipeline_depth = depth < 1 ? 1 : depth > SMTPC_PIPE_MAX ? SMTPC_PIPE_MAX : (uint32_t)depth;
  st->limits.suspend_delivery = conf_bool(v, CONF_SUSPEND_DELIVERY) ||
                                ctl_suspended(dq_queue_binding(q), dq_queue_domain(q));
  st->limits.msg_throttle = throttle_for(w->sh, w->conf, v, CONF_OUTBOUND_THROTTLE_MESSAGES);
  st->limits.conn_throttle = throttle_for(w->sh, w->conf, v, CONF_OUTBOUND_THROTTLE_CONNECTIONS);
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

static uint64_t queue_key(struct dq_queue *q)
{
  return (uint64_t)(uintptr_t)dq_queue_state(q)->user;
}

static struct sched_retry retry_policy(struct worker *w, struct dq_queue *q)
{
  const struct conf_view *v = view_for(w, dq_queue_binding(q), dq_queue_domain(q));
  struct sched_retry p = {
    .retry_interval_s = (uint32_t)conf_interval(v, CONF_RETRY_INTERVAL),
    .max_retry_interval_s = (uint32_t)conf_interval(v, CONF_MAX_RETRY_INTERVAL),
    .max_retries = (int32_t)conf_int(v, CONF_MAX_RETRIES),
    .message_expiration_s = (uint32_t)conf_interval(v, CONF_MESSAGE_EXPIRATION),
  };
  return p;
}

/* ------------------------------------------------------------ home side */

static void commit_soon(struct worker *w)
{
  w->txn_dirty = true;
}

static void drop_pickup_dsn(struct worker *w, struct emsg *em)
{
  struct spool_msg *sm = em->sm;
  struct dsn_rcpt *r = util_xcalloc(em->nbounce, sizeof *r);
  for (uint32_t i = 0; i < em->nbounce; i++) {
    r[i].rcpt = sm->rcpt[em->bounce[i].idx];
    r[i].code = em->bounce[i].code;
    r[i].status = em->bounce[i].enh[0] ? em->bounce[i].enh : NULL;
    r[i].diag = em->bounce[i].text;
  }
  char *orig = util_xmalloc(DSN_ORIG_MAX);
  ssize_t got = 0;
  int fd = spool_open_body(w->sh->spool, sm);
  if (fd >= 0) {
    size_t want = sm->body_size < DSN_ORIG_MAX ? (size_t)sm->body_size : DSN_ORIG_MAX;
    got = pread(fd, orig, want, (off_t)sm->body_off);
    spool_close_body(w->sh->spool, fd);
  }
  if (got < 0)
    got = 0;
  uint64_t now = wall_ms();
  char unique[64];
  snprintf(unique, sizeof unique, "%s.%u", em->id, w->idx);
  struct dsn_params p = {.reporting_mta = w->sh->hostname, .sender = sm->sender,
                         .queue_id = em->id, .arrival_ms = sm->created_ms, .now_ms = now,
                         .unique = unique};
  struct buf b = {0};
  if (dsn_envelope(&b, sm->sender) == 0 && dsn_build(&b, &p, r, em->nbounce, orig, (size_t)got) == 0) {
    char tmp[4200], fin[4200];
    snprintf(tmp, sizeof tmp, "%s/.dsn-%s", w->sh->pickup_dir, em->id);
    snprintf(fin, sizeof fin, "%s/dsn-%s", w->sh->pickup_dir, em->id);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = out >= 0 && write(out, buf_head(&b), buf_avail(&b)) == (ssize_t)buf_avail(&b) &&
              fsync(out) == 0;
    if (out >= 0)
      close(out);
    if (ok && rename(tmp, fin) == 0) {
      logs_panic(w->log, now, "dsn", "bounce for %s queued to <%s> (%u recipients)", em->id,
                 sm->sender, em->nbounce);
    } else {
      unlink(tmp);
      logs_panic(w->log, now, "dsn", "could not write the bounce for %s: %s", em->id,
                 strerror(errno));
    }
  }
  buf_done(&b, 0);
  free(orig);
  free(r);
}

static void emsg_unlink(struct worker *w, struct emsg *em)
{
  if (em->prev)
    em->prev->next = em->next;
  else
    w->msgs = em->next;
  if (em->next)
    em->next->prev = em->prev;
}

/* Apply a unit's results to its message (home worker only). */
static void apply_result(struct worker *w, struct uresult *res)
{
  struct emsg *em = res->em;
  struct spool_msg *sm = em->sm;
  for (uint32_t i = 0; i < res->n; i++) {
    struct rres *r = &res->r[i];
    if (r->state == SPOOL_RCPT_PENDING)
      continue;
    spool_txn_rcpt(w->txn, sm, r->idx, (enum spool_rcpt_state)r->state);
    if (r->state == SPOOL_RCPT_FAILED && em->bounces_on) {
      em->bounce = util_xrealloc(em->bounce, (em->nbounce + 1) * sizeof *em->bounce);
      struct bounce *b = &em->bounce[em->nbounce++];
      b->idx = r->idx;
      b->code = r->code;
      scopy(b->enh, sizeof b->enh, r->enh);
      scopy(b->text, sizeof b->text, r->text);
    }
  }
  if (res->unit_done) {
    em->units_left--;
  } else {
    if (res->attempts > em->attempts)
      em->attempts = res->attempts;
    if (em->next_retry_ms == 0 || res->next_ms < em->next_retry_ms)
      em->next_retry_ms = res->next_ms;
    spool_txn_retry(w->txn, sm, em->attempts, em->next_retry_ms);
    if (em->units == 1) /* its only unit waits on this thread: out of the journal */
      spool_txn_spill(w->txn, sm);
  }
  commit_soon(w);
  if (em->units_left == 0) {
    if (em->nbounce > 0)
      drop_pickup_dsn(w, em);
    emsg_unlink(w, em);
    sm->user = NULL;
    spool_txn_remove(w->txn, sm); /* frees sm after the commit */
    free(em->bounce);
    free(em);
  }
  free(res);
}

struct result_post {
  struct worker *home;
  struct uresult *res;
};

static void run_result_post(void *arg)
{
  struct result_post *p = arg;
  apply_result(p->home, p->res);
  free(p);
}

static void post_result(struct worker *w, struct uresult *res)
{
  struct worker *home = w->sh->workers[res->em->home];
  if (home == w) {
    apply_result(w, res);
    return;
  }
  struct result_post *p = util_xmalloc(sizeof *p);
  p->home = home;
  p->res = res;
  ring_post(home->ring, run_result_post, p);
}

/* ------------------------------------------------------------ outcomes */

static void fill_logs_msg(struct logs_msg *m, char *msgid, size_t cap, const struct emsg *em,
                          uint32_t idx)
{
  const struct spool_msg *sm = em->sm;
  snprintf(msgid, cap, "%s.%u", em->id, idx);
  m->msgid = msgid;
  m->batchid = em->id;
  m->rcpt = sm->rcpt[idx];
  m->sender = sm->sender;
  m->binding_group = sm->binding_group ? sm->binding_group : "";
  m->binding = sm->binding ? sm->binding : "default";
  m->size = sm->body_size;
  m->received_ms = sm->created_ms;
}

static void requeue_unit(struct worker *w, struct dq_queue *q, struct dq_unit *u);

/* Finish a unit's attempt: results[i] per recipient (NULL: every
 * recipient gets `all`). Logs D/T/P/B, re-queues the transient ones with
 * back-off (or fails them at expiry), and reports to the home worker. */
static void finish_unit(struct worker *w, struct dq_queue *q, struct dq_unit *u,
                        const struct smtpc_result *results, const struct smtpc_result *all,
                        const char *conn_id, const char *remote_ip, uint64_t bytes)
{
  struct emsg *em = u->msg;
  uint64_t now = wall_ms();
  struct sched_retry pol = retry_policy(w, q);
  uint32_t failures = u->attempts + 1;
  uint64_t next_ms = 0;
  enum sched_verdict verdict = SCHED_RETRY;
  bool any_temp = false;
  for (uint32_t i = 0; i < u->nrcpt; i++) {
    const struct smtpc_result *r = results ? &results[i] : all;
    if (r->outcome != SMTPC_OUT_OK && r->outcome != SMTPC_OUT_PERMANENT)
      any_temp = true;
  }
  if (any_temp)
    verdict = sched_after_tempfail(&pol, failures, em->sm->created_ms, now, &next_ms);

  struct uresult *res = util_xcalloc(1, sizeof *res + u->nrcpt * sizeof res->r[0]);
  res->em = em;
  res->n = u->nrcpt;
  uint32_t keep = 0;
  for (uint32_t i = 0; i < u->nrcpt; i++) {
    const struct smtpc_result *r = results ? &results[i] : all;
    struct rres *o = &res->r[i];
    /* Momentum's error text starts with the reply code: "550 5.1.1 ..." */
    char full[SMTPC_TEXT_MAX + 32];
    if (r->code >= 100 && r->code < 1000 && !(r->text[0] >= '0' && r->text[0] <= '9')) {
      /* "%d %s %s" without printf (every delivery comes here) */
      size_t k = 0, n;
      full[k++] = (char)('0' + r->code / 100);
      full[k++] = (char)('0' + r->code / 10 % 10);
      full[k++] = (char)('0' + r->code % 10);
      if (r->enhanced[0]) {
        full[k++] = ' ';
        n = strnlen(r->enhanced, sizeof r->enhanced);
        memcpy(full + k, r->enhanced, n);
        k += n;
      }
      full[k++] = ' ';
      n = strnlen(r->text, sizeof r->text); /* fits: full has 32 bytes more */
      memcpy(full + k, r->text, n);
      full[k + n] = '\0';
    } else if (r->code > 0 && !(r->text[0] >= '0' && r->text[0] <= '9'))
      snprintf(full, sizeof full, "%d%s%s %s", r->code, r->enhanced[0] ? " " : "", r->enhanced,
               r->text);
    else
      scopy(full, sizeof full, r->text);
    o->idx = u->rcpt[i];
    char msgid[64];
    struct logs_msg m;
    fill_logs_msg(&m, msgid, sizeof msgid, em, u->rcpt[i]);
    struct logs_attempt a = {.conn_id = conn_id, .remote_ip = remote_ip, .retries = u->attempts,
                             .stage = r->stage, .bytes_sent = bytes, .text = full};
    struct luam_outcome lo = {.domain = dq_queue_domain(q), .binding = dq_queue_binding(q),
                              .remote_ip = remote_ip, .code = r->code, .text = full,
                              .retries = u->attempts};
    if (r->outcome == SMTPC_OUT_OK) {
      o->state = SPOOL_RCPT_DELIVERED;
      logs_delivery(w->log, now, &m, &a);
      policy_outcome(w->pw, LUAM_HOOK_LOG_DELIVERY, w->sh->spool, em->sm, &lo);
      atomic_fetch_add(&w->sh->delivered, 1);
      continue;
    }
    bool perm = r->outcome == SMTPC_OUT_PERMANENT;
    const char *text = full;
    char expired[RESULT_TEXT_MAX];
    if (!perm && verdict != SCHED_RETRY) {
      /* Momentum logs the remote reason as T, then the expiry as P. */
      logs_transient(w->log, now, &m, &a);
      perm = true;
      snprintf(expired, sizeof expired, "%s",
               verdict == SCHED_EXPIRED_TIME ? SCHED_EXPIRED_TIME_TEXT : SCHED_EXPIRED_RETRIES_TEXT);
      text = expired;
      a.text = text;
      a.stage = 21;
      o->code = 554;
      snprintf(o->enh, sizeof o->enh, "5.4.7");
    } else {
      o->code = r->code;
      scopy(o->enh, sizeof o->enh, r->enhanced);
    }
    scopy(o->text, sizeof o->text, text);
    if (perm) {
      o->state = SPOOL_RCPT_FAILED;
      a.bounce_class = logs_bounce_class(o->code, o->enh[0] ? o->enh : NULL);
      logs_permanent(w->log, now, &m, &a);
      logs_bounce(w->log, now, &m, &a);
      atomic_fetch_add(&w->sh->failed, 1);
      lo.code = o->code;
      lo.text = text;
      policy_outcome(w->pw, LUAM_HOOK_LOG_PERMANENT_FAILURE, w->sh->spool, em->sm, &lo);
    } else {
      o->state = SPOOL_RCPT_PENDING;
      logs_transient(w->log, now, &m, &a);
      policy_outcome(w->pw, LUAM_HOOK_LOG_TRANSIENT_FAILURE, w->sh->spool, em->sm, &lo);
      u->rcpt[keep++] = u->rcpt[i];
    }
  }
  if (keep > 0) {
    u->nrcpt = keep;
    u->attempts = failures;
    u->due_ms = next_ms;
    res->unit_done = false;
    res->attempts = failures;
    res->next_ms = u->due_ms;
    atomic_fetch_add(&w->sh->deferred, 1);
    requeue_unit(w, q, u); /* credentials resolved again for the retry */
  } else {
    res->unit_done = true;
    dq_unit_free(u);
  }
  for (uint32_t i = 0; i < res->n; i++) /* console and metrics counters (ctl.c) */
    counters_add(w->idx, dq_queue_binding(q), dq_queue_domain(q),
                 res->r[i].state == SPOOL_RCPT_DELIVERED ? COUNTERS_DELIVERED
                 : res->r[i].state == SPOOL_RCPT_FAILED  ? COUNTERS_PERMANENT
                                                         : COUNTERS_TRANSIENT, 1);
  post_result(w, res);
}

/* ------------------------------------------------------------ sessions */

/* A delivery session drives one outsess (net/outsess.c, the only SMTP
 * session driver) per connection attempt: outsess moves bytes and smtpc
 * events, this code decides which unit goes next, reuse, routes and
 * outcomes. */

static bool tls_fallback(struct session *s);
static void session_try_connect(struct session *s);
static void schedule(struct worker *w);
static bool expire_if_due(struct worker *w, struct dq_queue *q, struct dq_unit *u);

static uint64_t session_bytes(const struct session *s)
{
  return s->bytes_prev + (s->os ? outsess_bytes_sent(s->os) : 0);
}

static const char *session_ip(const struct session *s)
{
  return s->route_i < s->nroutes ? s->routes[s->route_i].ip : NULL;
}

/* QUIT an idle pooled connection (to free its fd, or at stop). */
static void quit_parked(struct session *s)
{
  sched_pool_remove(&dq_queue_state(s->q)->pool, s);
  s->parked = false;
  outsess_quit(s->os);
}

static uint16_t route_port(const struct route *r)
{
  return r->sa.ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)&r->sa)->sin6_port)
                                     : ntohs(((const struct sockaddr_in *)&r->sa)->sin_port);
}

/* End the connection now (no QUIT); its `closed` callback follows. */
static void session_close(struct session *s)
{
  if (s->closing)
    return;
  s->closing = true;
  if (s->parked) {
    sched_pool_remove(&dq_queue_state(s->q)->pool, s);
    s->parked = false;
  }
  if (s->os)
    outsess_abort(s->os); /* `closed` frees the session */
}

/* The body file of the transaction being sent is no longer read. */
static void body_close(struct session *s)
{
  if (s->body_fd >= 0)
    spool_close_body(s->w->sh->spool, s->body_fd);
  s->body_fd = -1;
}

static void session_free(struct session *s)
{
  struct worker *w = s->w;
  if (s->dns)
    dns_cancel(s->dns);
  if (s->parked)
    sched_pool_remove(&dq_queue_state(s->q)->pool, s);
  if (s->counted) {
    sched_conn_closed(&dq_queue_state(s->q)->acct);
    if (!s->ever_ready)
      dq_queue_state(s->q)->opening--;
  }
  body_close(s);
  if (s->prev_all)
    s->prev_all->next_all = s->next_all;
  else
    w->sessions = s->next_all;
  if (s->next_all)
    s->next_all->prev_all = s->prev_all;
  w->nsessions--;
  free(s->deep);
  for (unsigned i = 0; i < SMTPC_PIPE_MAX; i++)
    free(s->res_big[i]);
  free(s->rcpts);
  free(s);
}

/* A failure without a transaction: it costs unit u, or, for a connection
 * that never became READY, one waiting unit of the queue (so each failed
 * connection attempt costs one unit a T and its back-off, and a dead
 * destination does not spin). */
static void charge_unit(struct session *s, struct dq_unit *u, enum smtpc_outcome out, int code,
                        const char *text, uint8_t stage)
{
  if (u == NULL && !s->ever_ready && !atomic_load(&s->w->stop))
    u = dq_pop(s->w->dq, s->q);
  if (u == NULL)
    return;
  struct smtpc_result all = {.outcome = out, .code = code, .stage = stage};
  scopy(all.text, sizeof all.text, text);
  s->charged = true;
  finish_unit(s->w, s->q, u, NULL, &all, s->conn_id_s, session_ip(s), session_bytes(s));
}

/* Slot `slot` of s's result slots: its final reply, and its results for a
 * transaction of nrcpt recipients (not zeroed: smtpc clears what a
 * transaction uses). */
static struct smtpc_result *slot_final(struct session *s, unsigned slot)
{
  if (slot < 2)
    return &s->fin_buf[slot];
  if (s->deep == NULL)
    s->deep = util_xmalloc((SMTPC_PIPE_MAX - 2) * (RES_INLINE + 1) * sizeof *s->deep);
  return s->deep + (size_t)(slot - 2) * (RES_INLINE + 1) + RES_INLINE;
}

static struct smtpc_result *result_slots(struct session *s, unsigned slot, uint32_t nrcpt)
{
  if (nrcpt > RES_INLINE) {
    if (s->res_big[slot] == NULL)
      s->res_big[slot] = util_xmalloc((size_t)s->max_batch * sizeof *s->res_big[slot]);
    return s->res_big[slot];
  }
  if (slot < 2)
    return s->res_inline[slot];
  (void)slot_final(s, slot); /* allocates deep */
  return s->deep + (size_t)(slot - 2) * (RES_INLINE + 1);
}

/* Transactions of s in flight (begun, final reply not yet in). */
static unsigned inflight(const struct session *s)
{
  unsigned n = 0;
  for (unsigned k = 0; k < SMTPC_PIPE_MAX; k++)
    n += s->fl[k].u != NULL;
  return n;
}

/* A slot no transaction in flight uses. */
static unsigned free_slot(const struct session *s)
{
  for (unsigned k = 0; k < SMTPC_PIPE_MAX; k++)
    if (s->fl[k].u == NULL)
      return k;
  util_panic("worker: more transactions in flight than result slots");
}

/* Begin u's transaction on s (READY). 1: started; 0: u could not start
 * (its recipients were failed or deferred), the caller picks the next one;
 * -1: the session cannot take a transaction now (u is queued again). */
static int start_txn(struct session *s, struct dq_unit *u)
{
  struct worker *w = s->w;
  struct emsg *em = u->msg;
  struct spool_msg *sm = em->sm;
  unsigned slot = free_slot(s);
  struct flight *f = &s->fl[slot];
  if (u->nrcpt > s->max_batch)
    util_panic("unit of %u recipients over the batch size %u", u->nrcpt, s->max_batch);
  for (uint32_t i = 0; i < u->nrcpt; i++)
    s->rcpts[i] = sm->rcpt[u->rcpt[i]];
  f->txn = (struct smtpc_txn){.mail_from = sm->sender, .rcpts = s->rcpts, .nrcpt = u->nrcpt,
                              .size = sm->body_size,
                              .flags = (sm->flags & SPOOL_MSG_F_8BIT) ? SMTPC_TXN_8BIT : 0,
                              .results = result_slots(s, slot, u->nrcpt),
                              .final = slot_final(s, slot)};
  struct outsess_body body = {.fd = -1, .off = sm->body_off, .len = sm->body_size,
                              .mem = sm->body_mem};
  if (sm->body_mem == NULL) {
    int fd = spool_open_body(w->sh->spool, sm);
    if (fd < 0) {
      char t[128];
      snprintf(t, sizeof t, "451 4.3.0 [internal] spool open failed: %s", strerror(-fd));
      charge_unit(s, u, SMTPC_OUT_TRANSIENT, 0, t, 1);
      return 0;
    }
    s->body_fd = body.fd = fd;
  }
  f->u = u; /* before outsess_send: its answer may come at once */
  int rc = outsess_send(s->os, &f->txn, &body, f);
  if (rc == -EBUSY) { /* a stale READY: the session ended or moved on */
    f->u = NULL;
    body_close(s);
    dq_unpop(w->dq, u);
    return -1;
  }
  if (rc < 0) {
    char t[128];
    snprintf(t, sizeof t, "554 5.1.3 [internal] unusable transaction (%s)", strerror(-rc));
    f->u = NULL;
    body_close(s);
    charge_unit(s, u, SMTPC_OUT_PERMANENT, 554, t, 1);
    return 0;
  }
  s->rcpts_tried += u->nrcpt;
  return 1;
}

/* Start the next units of s's queue on s until one starts; false when
 * none could (queue empty, throttled, all expired or failed). */
static bool start_some(struct session *s)
{
  struct worker *w = s->w;
  struct dq_queue_state *st = dq_queue_state(s->q);
  for (int guard = 0; guard < 64; guard++) {
    struct dq_unit *u = dq_pop(w->dq, s->q);
    if (u == NULL)
      break;
    if (expire_if_due(w, s->q, u))
      continue;
    uint64_t wait = sched_msg_take(&st->limits, ring_now(w->ring));
    if (wait) {
      dq_unpop(w->dq, u);
      st->blocked_until_ns = ring_now(w->ring) + wait;
      break;
    }
    int r = start_txn(s, u);
    if (r != 0)
      return r > 0;
  }
  return false;
}

/* Whether s may carry one more transaction; `inflight` transactions not
 * yet counted in s->delivered are counted as delivered. */
static bool session_reusable(struct session *s, uint32_t n_inflight)
{
  struct dq_queue_state *st = dq_queue_state(s->q);
  uint32_t max_rcpts = st->limits.max_recipients_per_connection; /* per queue, not per message */
  return !atomic_load(&s->w->stop) && sched_conn_reusable(&st->limits, s->delivered + n_inflight) &&
         !(max_rcpts > 0 && s->rcpts_tried >= max_rcpts) && !st->limits.suspend_delivery;
}

/* READY: the next transaction on this connection, or park it idle. */
static void begin_next(struct session *s)
{
  struct worker *w = s->w;
  struct dq_queue_state *st = dq_queue_state(s->q);
  if (!session_reusable(s, 0)) {
    outsess_quit(s->os);
    return;
  }
  if (start_some(s) || smtpc_state(outsess_smtpc(s->os)) != SMTPC_ST_IDLE)
    return; /* started, or a stale READY: the session is not idle */
  /* idle: smtpc's Idle_Timeout QUITs it if nothing comes */
  if (sched_pool_put(&st->pool, s->pool_key, s, ring_now(w->ring)) == 0)
    s->parked = true;
  else
    outsess_quit(s->os);
}

/* ------------------------------------------------------------ session callbacks */

/* READY (pipelined: the transaction in flight is fully sent, its dot or
 * its last BDAT chunk, and the next may follow at once; nothing to send:
 * the plain READY after the final replies parks or QUITs the connection). */
static void on_ready(void *arg, bool pipelined)
{
  struct session *s = arg;
  if (pipelined) {
    unsigned n = inflight(s);
    if (n > 0 && session_reusable(s, n))
      (void)start_some(s);
    return;
  }
  if (!s->ever_ready) {
    s->ever_ready = true;
    struct dq_queue_state *st = dq_queue_state(s->q);
    st->opening--;
    uint32_t x = smtpc_extensions(outsess_smtpc(s->os));
    st->no_chunking = !(x & SMTPC_EXT_CHUNKING) || !(x & SMTPC_EXT_PIPELINING);
  }
  begin_next(s);
}

static void on_body_done(void *arg, void *txn_arg)
{
  (void)txn_arg;
  body_close(arg);
}

static void on_txn_done(void *arg, void *txn_arg, const struct smtpc_txn *txn)
{
  struct session *s = arg;
  struct flight *f = txn_arg;
  struct dq_unit *u = f->u;
  f->u = NULL;
  if (u == NULL)
    return;
  struct smtpc_result *results = f->txn.results;
  /* A recipient whose RCPT was accepted takes the final reply (the one
   * after the dot): a 4xx/5xx there is not a delivery. */
  for (uint32_t i = 0; i < u->nrcpt; i++)
    if (results[i].outcome == SMTPC_OUT_OK)
      results[i] = *txn->final;
  bool ok = false;
  for (uint32_t i = 0; i < u->nrcpt; i++)
    ok |= results[i].outcome == SMTPC_OUT_OK;
  if (ok)
    s->delivered++;
  finish_unit(s->w, s->q, u, results, NULL, s->conn_id_s, session_ip(s), session_bytes(s));
}

static void on_failed(void *arg, const struct smtpc_event *ev, const char *detail)
{
  struct session *s = arg;
  struct worker *w = s->w;
  s->bytes_seen = outsess_bytes_sent(s->os);
  if (!s->connected) {
    /* the connect failed (conn's error or smtpc's Connect_Timeout):
     * on_closed tries the next route or charges a unit */
    scopy(s->detail, sizeof s->detail, detail[0] ? detail : ev->text);
    counters_event(w->idx, COUNTERS_CONN_FAILED);
    session_close(s);
    return;
  }
  if (detail[0])
    scopy(s->detail, sizeof s->detail, detail);
  if ((ev->flags & SMTPC_F_TLS_FAILED) && tls_fallback(s))
    return; /* no outcome: on_closed reconnects in plaintext */
  if (ev->flags & SMTPC_F_AUTH_REJECTED) { /* loudly, once per connection; no secret */
    const struct smtpc_auth *cr = auth_creds(w->auth, dq_queue_cred_id(s->q));
    enum smtpc_auth_type t = cr ? cr->type : SMTPC_AUTH_PLAIN;
    logs_panic(w->log, wall_ms(), "outbound_smtp_auth",
               "AUTH %s as \"%s\" rejected by %s (%s/%s, connection %s): %d %s; "
               "mail is deferred until the credentials are fixed or it expires",
               t == SMTPC_AUTH_LOGIN ? "LOGIN" : t == SMTPC_AUTH_XOAUTH2 ? "XOAUTH2" : "PLAIN",
               cr && cr->user ? cr->user : "", s->routes[s->route_i].ip, dq_queue_binding(s->q),
               dq_queue_domain(s->q), s->conn_id_s, ev->code, ev->text);
  }
  /* every transaction in flight had its txn_done already (outsess's
   * contract): what is left is a failure before any transaction */
  enum smtpc_outcome out =
    ev->kind == SMTPC_FAIL_PERMANENT ? SMTPC_OUT_PERMANENT : SMTPC_OUT_TRANSIENT;
  char text[SMTPC_TEXT_MAX];
  scopy(text, sizeof text, ev->text[0] ? ev->text : ev->doing);
  if ((ev->flags & SMTPC_F_TLS_FAILED) && s->detail[0]) {
    /* "TLS handshake failed: certificate verify failed: ..." */
    const char *d = s->detail;
    if (!strncmp(d, "TLS handshake: ", 15))
      d += 15;
    size_t l = strlen(text);
    snprintf(text + l, sizeof text - l, ": %s", d);
  }
  charge_unit(s, NULL, out, ev->code, text, ev->stage);
  if (ev->flags & SMTPC_F_AUTH_REJECTED) /* metrics: impetus_auth_total{result="failed"} */
    counters_event(w->idx, COUNTERS_AUTH_FAILED);
  session_close(s);
}

static void on_note(void *arg, enum outsess_note what)
{
  struct session *s = arg;
  switch (what) {
  case OUTSESS_CONNECTED:
    s->connected = true;
    counters_event(s->w->idx, COUNTERS_CONN_OPENED);
    break;
  case OUTSESS_TLS_OK:
    counters_event(s->w->idx, COUNTERS_TLS_OK);
    break;
  case OUTSESS_TLS_FAILED:
    counters_event(s->w->idx, COUNTERS_TLS_FAILED);
    break;
  case OUTSESS_AUTH_OK:
    counters_event(s->w->idx, COUNTERS_AUTH_OK);
    break;
  default:
    util_panic("worker: outsess note %d not handled", what);
  }
}

static void route_key(const struct route *r, char *out, size_t n)
{
  snprintf(out, n, "%s %u", r->ip, route_port(r));
}

/* Remember r in a table of remote addresses (HOSTFAIL_MAX entries; the
 * one expiring first makes room) until `until` (wall clock, ms). */
static void mark_route(struct hostfail *tab, unsigned *n, const struct route *r, uint64_t until)
{
  char key[80];
  route_key(r, key, sizeof key);
  unsigned slot = *n, oldest = 0;
  for (unsigned i = 0; i < *n; i++) {
    if (!strcmp(tab[i].key, key)) {
      slot = i;
      break;
    }
    if (tab[i].until_ms < tab[oldest].until_ms)
      oldest = i;
  }
  if (slot == *n) {
    if (*n < HOSTFAIL_MAX)
      (*n)++;
    else
      slot = oldest;
  }
  scopy(tab[slot].key, sizeof tab[slot].key, key);
  tab[slot].until_ms = until;
}

static bool route_marked(const struct hostfail *tab, unsigned n, const struct route *r, uint64_t now)
{
  char key[80];
  route_key(r, key, sizeof key);
  for (unsigned i = 0; i < n; i++)
    if (!strcmp(tab[i].key, key))
      return tab[i].until_ms > now;
  return false;
}

/* Host_Failure_Retry: remember that connecting to r failed. */
static void host_failed(struct session *s, const struct route *r)
{
  struct worker *w = s->w;
  const struct conf_view *v = view_for(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  uint64_t until = wall_ms() + (uint64_t)conf_interval(v, CONF_HOST_FAILURE_RETRY) * 1000u;
  mark_route(w->hostfail, &w->nhostfail, r, until);
}

static bool host_is_failing(struct worker *w, const struct route *r, uint64_t now)
{
  return route_marked(w->hostfail, w->nhostfail, r, now);
}

/* TLS_Ifavailable_Fallback: an opportunistic STARTTLS handshake failed.
 * When the scope allows it, the attempt is not a failure: the session
 * closes and on_closed reconnects at once to the same address without
 * STARTTLS, and the address skips STARTTLS for TLS_Failure_Retry (this
 * worker's memory; a restart forgets it). True when that happens. Never
 * for smtps:// (implicit TLS) or TLS = required. */
static bool tls_fallback(struct session *s)
{
  struct worker *w = s->w;
  const struct route *r = &s->routes[s->route_i];
  const struct conf_view *v = view_for(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  if (r->implicit_tls || s->plain_only || inflight(s) > 0 || atomic_load(&w->stop) ||
      conf_enum(v, CONF_TLS) != 1 || !conf_bool(v, CONF_TLS_IFAVAILABLE_FALLBACK))
    return false;
  uint64_t now = wall_ms();
  uint64_t keep = (uint64_t)conf_interval(v, CONF_TLS_FAILURE_RETRY);
  bool known = route_marked(w->tlsfail, w->ntlsfail, r, now);
  if (keep > 0)
    mark_route(w->tlsfail, &w->ntlsfail, r, now + keep * 1000u);
  if (!known) /* once per address and TLS_Failure_Retry period */
    logs_panic(w->log, now, "tls",
               "STARTTLS to %s port %u (%s) failed: %s; retrying in plaintext "
               "(TLS_Ifavailable_Fallback), no STARTTLS to it for %llu s (TLS_Failure_Retry)",
               r->ip, route_port(r), r->host[0] ? r->host : "-",
               s->detail[0] ? s->detail : "handshake failed", (unsigned long long)keep);
  s->retry_plain = true;
  session_close(s);
  return true;
}

/* Addresses that failed within Host_Failure_Retry go last (stable), so
 * they are used only when nothing better is left. */
static void order_routes(struct session *s)
{
  if (s->w->nhostfail == 0)
    return;
  uint64_t now = wall_ms();
  struct route tmp[ROUTES_MAX];
  unsigned n = 0;
  for (int pass = 0; pass < 2; pass++)
    for (unsigned i = 0; i < s->nroutes; i++)
      if (host_is_failing(s->w, &s->routes[i], now) == (pass == 1))
        tmp[n++] = s->routes[i];
  memcpy(s->routes, tmp, n * sizeof tmp[0]);
}


/* The transactions whose final replies cannot come any more (the
 * connection went away under them without smtpc ending them): transient,
 * their bodies may not have arrived. */
static void fail_inflight(struct session *s, const char *text)
{
  for (unsigned k = 0; k < SMTPC_PIPE_MAX; k++) {
    struct dq_unit *u = s->fl[k].u;
    if (u == NULL)
      continue;
    s->fl[k].u = NULL;
    struct smtpc_result all = {.outcome = SMTPC_OUT_TRANSIENT, .stage = 9};
    scopy(all.text, sizeof all.text, text);
    finish_unit(s->w, s->q, u, NULL, &all, s->conn_id_s, session_ip(s), session_bytes(s));
  }
}

static void on_closed(void *arg)
{
  struct session *s = arg;
  s->os = NULL; /* freed by outsess */
  s->bytes_prev += s->bytes_seen;
  s->bytes_seen = 0;
  body_close(s);
  if (s->retry_plain && !atomic_load(&s->w->stop)) {
    /* TLS_Ifavailable_Fallback: the same address again, without STARTTLS */
    s->retry_plain = false;
    s->plain_only = true;
    s->detail[0] = '\0';
    session_try_connect(s);
    return;
  }
  fail_inflight(s, "451 4.4.2 [internal] connection lost before the reply to the end of data");
  if (!s->connected && s->route_i < s->nroutes)
    host_failed(s, &s->routes[s->route_i]);
  if (!s->connected && s->route_i + 1 < s->nroutes && !atomic_load(&s->w->stop)) {
    s->route_i++;
    s->plain_only = false;
    session_try_connect(s);
    return;
  }
  if (!s->ever_ready && !s->charged) {
    char text[300];
    if (s->connected)
      snprintf(text, sizeof text, "451 4.4.1 [internal] no route to the destination could be used "
               "(connection lost)");
    else
      snprintf(text, sizeof text, "451 4.4.1 [internal] no route to the destination could be used "
               "(connection failed: %s)", s->detail[0] ? s->detail : "?");
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0, text, 0);
  }
  session_free(s);
}

static const struct outsess_cbs session_cbs = {
  .ready = on_ready,
  .txn_done = on_txn_done,
  .failed = on_failed,
  .closed = on_closed,
  .body_done = on_body_done,
  .note = on_note,
};

/* Momentum's TLS_Protocols ("+ALL:-SSLv3:-TLSv1.0:-TLSv1.1") as the
 * lowest version net's tls accepts. */
static const char *lowest_protocol(const char *p)
{
  if (p == NULL)
    return "TLSv1.2";
  if (strstr(p, "-TLSv1.2"))
    return "TLSv1.3";
  if (strstr(p, "-TLSv1.1"))
    return "TLSv1.2";
  if (strstr(p, "-TLSv1.0"))
    return "TLSv1.1";
  return "TLSv1";
}

/* The TLS context for a view's TLS options (one per distinct option set,
 * built on first use, kept for the worker's life). NULL when it cannot be
 * built: logged once, and STARTTLS then fails (TLS "required") or the
 * session goes on in plaintext (TLS "ifavailable"). */
static struct tls_ctx *tls_for(struct worker *w, const struct conf_view *v)
{
  int verify = conf_enum(v, CONF_TLS_VERIFY);
  const char *ca = conf_str(v, CONF_TLS_CA), *cert = conf_str(v, CONF_TLS_CERTIFICATE);
  const char *key = conf_str(v, CONF_TLS_KEY), *ciphers = conf_str(v, CONF_TLS_CIPHERS);
  const char *protos = lowest_protocol(conf_str(v, CONF_TLS_PROTOCOLS));
  if (cert && !strcmp(cert, "none"))
    cert = key = NULL;
  char k[4096];
  snprintf(k, sizeof k, "%d\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s", verify, ca ? ca : "", cert ? cert : "",
           key ? key : "", ciphers ? ciphers : "", protos);
  for (unsigned i = 0; i < w->ntls; i++)
    if (!strcmp(w->tls[i].key, k))
      return w->tls[i].ctx;
  struct tls_params tp = {.verify = verify == 2 ? TLS_VERIFY_HOST : verify == 1 ? TLS_VERIFY_CA : TLS_VERIFY_NO,
                          .ca_file = ca, .cert_file = cert, .key_file = key, .ciphers = ciphers,
                          .protocols = protos};
  /* read as root at start-up (tlskeys.c); else the worker reads the paths */
  tp.cert_pem = tlskeys_get(cert, &tp.cert_pem_len);
  if (tp.cert_pem && key) {
    tp.key_pem = tlskeys_get(key, &tp.key_pem_len);
    if (tp.key_pem == NULL)
      tp.cert_pem = NULL;
  }
  char err[256];
  struct tls_ctx *ctx = tls_ctx_new(&tp, err, sizeof err);
  if (ctx == NULL)
    logs_panic(w->log, wall_ms(), "tls", "cannot set up TLS (verify %d, ca %s, certificate %s): %s",
               verify, ca ? ca : "-", cert ? cert : "-", err);
  if (w->ntls == TLS_SLOTS)
    return ctx; /* unusual: more distinct option sets than slots; not cached */
  w->tls[w->ntls].key = util_xstrdup(k);
  w->tls[w->ntls].ctx = ctx;
  w->ntls++;
  return ctx;
}


/* The smtpc parameters of s's next connection (the route at route_i).
 * False when the smtps route has no
 * usable TLS context. */
static bool session_params(struct session *s, struct smtpc_params *p)
{
  struct worker *w = s->w;
  const struct conf_view *v = view_for(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  const char *ehlo = conf_str(v, CONF_EHLO_HOSTNAME);
  /* XXX: "__message__" (Momentum: the sender's domain) goes out as it is:
   * the connection is opened before any unit is assigned to it */
  if (ehlo == NULL || !strcmp(ehlo, "__hostname__"))
    ehlo = w->sh->hostname;
  int tls = conf_enum(v, CONF_TLS);
  const struct route *r = &s->routes[s->route_i];
  *p = (struct smtpc_params){
    .ehlo_name = ehlo,
    .tls = tls == 2 ? SMTPC_TLS_REQUIRED : tls == 1 ? SMTPC_TLS_IFAVAILABLE : SMTPC_TLS_NO,
    .implicit_tls = r->implicit_tls,
    .max_rcpts = s->max_batch,
    .auth_allow_plaintext = conf_bool(v, CONF_OUTBOUND_SMTP_AUTH_ALLOW_PLAINTEXT),
    .chunking = conf_bool(v, CONF_USE_CHUNKING),
    .pipeline_depth = (uint32_t)conf_int(v, CONF_PIPELINE_DEPTH),
    .timeouts = {
      .connect = (uint32_t)conf_interval(v, CONF_CONNECT_TIMEOUT),
      .ehlo = (uint32_t)conf_interval(v, CONF_EHLO_TIMEOUT),
      .mailfrom = (uint32_t)conf_interval(v, CONF_MAILFROM_TIMEOUT),
      .rcptto = (uint32_t)conf_interval(v, CONF_RCPTTO_TIMEOUT),
      .data = (uint32_t)conf_interval(v, CONF_DATA_TIMEOUT),
      .body = (uint32_t)conf_interval(v, CONF_BODY_TIMEOUT),
      .idle = (uint32_t)conf_interval(v, CONF_IDLE_TIMEOUT),
      .rset = (uint32_t)conf_interval(v, CONF_RSET_TIMEOUT),
    },
  };
  if (r->implicit_tls) {
    /* smtps://: TLS is the transport whatever TLS says; TLS_Verify and
     * the other TLS options apply */
    s->tls = tls_for(w, v);
    if (s->tls == NULL)
      return false;
  } else {
    if (p->tls == SMTPC_TLS_IFAVAILABLE && conf_bool(v, CONF_TLS_IFAVAILABLE_FALLBACK) &&
        (s->plain_only || route_marked(w->tlsfail, w->ntlsfail, r, wall_ms()))) {
      p->tls = SMTPC_TLS_NO; /* its STARTTLS failed lately: plaintext */
      s->plain_only = true;
    }
    s->tls = p->tls != SMTPC_TLS_NO ? tls_for(w, v) : NULL;
    if (s->tls == NULL && p->tls == SMTPC_TLS_IFAVAILABLE)
      p->tls = SMTPC_TLS_NO;
  }
  /* the queue's credentials (auth.c resolved them per unit); smtpc copies
   * and later wipes them */
  const struct smtpc_auth *cr = auth_creds(w->auth, dq_queue_cred_id(s->q));
  if (cr)
    p->auth = *cr;
  return true;
}

static void session_try_connect(struct session *s)
{
  struct worker *w = s->w;
  if (s->route_i >= s->nroutes) {
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0, "451 4.4.4 [internal] no usable route", 0);
    session_free(s);
    return;
  }
  struct route *r = &s->routes[s->route_i];
  struct smtpc_params sp;
  if (!session_params(s, &sp)) {
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0,
                "451 4.7.5 [internal] TLS cannot be set up for the smtps route (see the paniclog)", 0);
    session_free(s);
    return;
  }
  const struct conf_view *v = view_for(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  struct conf_addr bind = conf_addr(v, CONF_BIND_ADDRESS);
  struct sockaddr_storage src;
  socklen_t srclen = 0;
  memset(&src, 0, sizeof src);
  if (bind.host && strcmp(bind.host, "*")) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&src;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;
    if (inet_pton(AF_INET, bind.host, &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET;
      srclen = sizeof *s4;
    } else if (inet_pton(AF_INET6, bind.host, &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6;
      srclen = sizeof *s6;
    }
  }
  struct outsess_params op = {
    .dst = (struct sockaddr *)&r->sa, .dstlen = r->salen,
    .src = srclen ? (struct sockaddr *)&src : NULL, .srclen = srclen,
    .connect_timeout_ns = (uint64_t)conf_interval(v, CONF_CONNECT_TIMEOUT) * 1000000000u,
    .tls = s->tls,
    .tls_host = r->host[0] ? r->host : NULL,
    .port = route_port(r),
    .smtp = sp,
    .send_window = BODY_INFLIGHT,
  };
  s->connected = false;
  s->closing = false;
  s->charged = false;
  s->detail[0] = '\0';
  snprintf(s->conn_id_s, sizeof s->conn_id_s, "%u.%llu", w->idx, (unsigned long long)++w->next_conn);
  int err = 0;
  s->os = outsess_new(w->ring, &op, &session_cbs, s, &err);
  if (s->os == NULL) {
    char t[160];
    if (err == -EINVAL)
      snprintf(t, sizeof t, "451 4.3.5 [internal] unusable session settings");
    else
      snprintf(t, sizeof t, "451 4.4.0 [internal] cannot open a connection from %s: %s",
               bind.host ? bind.host : "*", strerror(-err));
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0, t, 0);
    session_free(s);
  }
}

static void add_route(struct session *s, const struct dns_host *h, uint16_t port, bool implicit_tls)
{
  for (unsigned a = 0; a < h->naddr && s->nroutes < ROUTES_MAX; a++) {
    struct route *r = &s->routes[s->nroutes++];
    r->salen = dns_sockaddr(&h->addr[a], port, &r->sa);
    r->implicit_tls = implicit_tls;
    scopy(r->host, sizeof r->host, h->name ? h->name : "");
    if (h->addr[a].family == AF_INET)
      inet_ntop(AF_INET, h->addr[a].a, r->ip, sizeof r->ip);
    else
      inet_ntop(AF_INET6, h->addr[a].a, r->ip, sizeof r->ip);
  }
}

struct route_spec {
  char host[256];
  uint16_t port;
  bool mx;
  bool implicit_tls;
};

/* Parse one Routes entry: "host", "host:port", "smtp://host:port?...",
 * "smtps://host[:port]" (implicit TLS, port 465 unless given), "__mx__". */
static bool parse_route(const char *e, const char *domain, uint16_t defport, struct route_spec *out)
{
  memset(out, 0, sizeof *out);
  out->port = defport;
  if (!strcmp(e, "__mx__")) {
    scopy(out->host, sizeof out->host, domain);
    out->mx = true;
    return true;
  }
  if (!strncasecmp(e, "smtps://", 8)) {
    e += 8;
    out->implicit_tls = true;
    out->port = SMTPS_PORT;
  } else if (!strncasecmp(e, "smtp://", 7)) {
    e += 7;
  }
  size_t n = strcspn(e, "/?");
  char hp[300];
  if (n >= sizeof hp)
    return false;
  memcpy(hp, e, n);
  hp[n] = '\0';
  char *colon = strrchr(hp, ':');
  if (hp[0] == '[') {
    char *rb = strchr(hp, ']');
    if (!rb)
      return false;
    *rb = '\0';
    if (rb[1] == ':')
      out->port = (uint16_t)atoi(rb + 2);
    scopy(out->host, sizeof out->host, hp + 1);
  } else {
    if (colon && strchr(hp, ':') == colon) {
      *colon = '\0';
      out->port = (uint16_t)atoi(colon + 1);
    }
    scopy(out->host, sizeof out->host, hp);
  }
  const char *port = strstr(e, "port=");
  if (port)
    out->port = (uint16_t)atoi(port + 5);
  return out->host[0] != '\0';
}

struct resolve_ctx {
  struct session *s;
  struct route_spec spec[ROUTES_MAX];
  unsigned nspec, i;
  enum dns_status worst;
  char text[160];
};

static void resolve_next(struct resolve_ctx *rc);

static void on_resolved(void *arg, const struct dns_result *res)
{
  struct resolve_ctx *rc = arg;
  struct session *s = rc->s;
  s->dns = NULL;
  if (res->status == DNS_OK) {
    for (unsigned h = 0; h < res->nhosts; h++)
      if (res->hosts[h].status == DNS_OK)
        add_route(s, &res->hosts[h], rc->spec[rc->i].port, rc->spec[rc->i].implicit_tls);
  } else {
    rc->worst = res->status;
    scopy(rc->text, sizeof rc->text, res->text);
  }
  rc->i++;
  resolve_next(rc);
}

static void resolve_next(struct resolve_ctx *rc)
{
  struct session *s = rc->s;
  if (rc->i < rc->nspec && s->nroutes < ROUTES_MAX) {
    s->dns = dns_resolve(s->w->dns, rc->spec[rc->i].host, rc->spec[rc->i].mx, on_resolved, rc);
    return;
  }
  if (s->nroutes == 0) {
    bool perm = dns_status_permanent(rc->worst) && rc->nspec == 1;
    char t[240];
    snprintf(t, sizeof t, "%s [internal] %s: %s",
             rc->worst == DNS_NULLMX ? "556 5.1.10" : perm ? "550 5.1.2" : "451 4.4.3",
             rc->worst == DNS_NULLMX ? "domain accepts no mail (null MX)" : "route lookup failed",
             rc->text[0] ? rc->text : dns_status_name(rc->worst));
    free(rc);
    charge_unit(s, NULL, perm ? SMTPC_OUT_PERMANENT : SMTPC_OUT_TRANSIENT, perm ? 550 : 0, t, 0);
    session_free(s);
    return;
  }
  free(rc);
  s->route_i = 0;
  order_routes(s);
  session_try_connect(s);
}

/* A new connection for queue q; it takes units from the queue once READY. */
static void session_open(struct worker *w, struct dq_queue *q)
{
  struct dq_queue_state *st = dq_queue_state(q);
  struct session *s = util_xcalloc(1, sizeof *s);
  s->w = w;
  s->q = q;
  s->counted = true;
  st->opening++;
  s->body_fd = -1;
  s->pool_key = queue_key(q);
  s->max_batch = st->limits.max_recipients_per_batch ? st->limits.max_recipients_per_batch : 100;
  s->rcpts = util_xcalloc(s->max_batch, sizeof *s->rcpts);
  s->next_all = w->sessions;
  if (w->sessions)
    w->sessions->prev_all = s;
  w->sessions = s;
  w->nsessions++;

  const struct conf_view *v = view_for(w, dq_queue_binding(q), dq_queue_domain(q));
  uint16_t defport = (uint16_t)conf_int(v, CONF_REMOTE_SMTP_PORT);
  struct resolve_ctx *rc = util_xcalloc(1, sizeof *rc);
  rc->s = s;
  struct conf_addr gw = conf_addr(v, CONF_GATEWAY);
  size_t nroutes = 0;
  const char *const *routes = conf_list(v, CONF_ROUTES, &nroutes);
  if (gw.host) {
    scopy(rc->spec[0].host, sizeof rc->spec[0].host, gw.host);
    rc->spec[0].implicit_tls = gw.implicit_tls;
    rc->spec[0].port = gw.port ? gw.port : gw.implicit_tls ? SMTPS_PORT : defport;
    rc->nspec = 1;
  } else if (routes && nroutes > 0) {
    for (size_t i = 0; i < nroutes && rc->nspec < ROUTES_MAX; i++)
      if (parse_route(routes[i], dq_queue_domain(q), defport, &rc->spec[rc->nspec]))
        rc->nspec++;
  } else {
    scopy(rc->spec[0].host, sizeof rc->spec[0].host, dq_queue_domain(q));
    rc->spec[0].port = defport;
    rc->spec[0].mx = true;
    rc->nspec = 1;
  }
  resolve_next(rc);
}

/* ------------------------------------------------------------ scheduling */

/* Expire units that came due past their message's expiry. */
static bool expire_if_due(struct worker *w, struct dq_queue *q, struct dq_unit *u)
{
  struct emsg *em = u->msg;
  struct sched_retry pol = retry_policy(w, q);
  uint64_t now = wall_ms();
  if (!sched_expired(&pol, em->sm->created_ms, now) || u->attempts == 0)
    return false;
  struct smtpc_result all = {.outcome = SMTPC_OUT_PERMANENT, .code = 554, .stage = 21};
  snprintf(all.enhanced, sizeof all.enhanced, "5.4.7");
  scopy(all.text, sizeof all.text, SCHED_EXPIRED_TIME_TEXT);
  finish_unit(w, q, u, NULL, &all, NULL, NULL, 0);
  return true;
}

static void schedule(struct worker *w)
{
  uint64_t now_ms = wall_ms();
  uint64_t now_ns = ring_now(w->ring);
  dq_promote(w->dq, now_ms);
  if (atomic_load(&w->stop))
    return;
  size_t turns = dq_active_count(w->dq);
  for (size_t t = 0; t < turns; t++) {
    struct dq_queue *q = dq_next_active(w->dq);
    if (q == NULL)
      break;
    load_limits(w, q);
    struct dq_queue_state *st = dq_queue_state(q);
    if (st->blocked_until_ns > now_ns || st->limits.suspend_delivery)
      continue; /* suspended: not even an idle connection takes a unit */
    for (int guard = 0; guard < 1024 && dq_queue_ready(q) > 0; guard++) {
      /* an idle connection of this queue first (same credentials: the
       * pool key includes their identity) */
      struct session *idle = sched_pool_take(&st->pool, queue_key(q));
      if (idle) {
        idle->parked = false;
        begin_next(idle);
        if (idle->parked)
          break; /* throttled, or nothing it could take */
        continue;
      }
      /* connections still opening will take the waiting units; with BDAT
       * so will the busy ones, Pipeline_Depth each, as their replies come
       * in (sooner than a new connection's greeting): open only for units
       * beyond that (before the first READY BDAT is assumed) */
      uint32_t per = st->no_chunking ? 1 : st->limits.pipeline_depth;
      uint32_t idle_or_opening = st->opening + st->pool.n;
      uint32_t busy = st->acct.conns > idle_or_opening ? st->acct.conns - idle_or_opening : 0;
      if (dq_queue_ready(q) <= (per > 1 ? (st->opening + busy) * per : st->opening)) {
        st->backlog_since_ns = 0;
        break;
      }
      if (per > 1 && st->acct.conns > 0) {
        /* BDAT connections drain Pipeline_Depth units per round trip: a
         * burst is usually gone within a few. Only a backlog that lasts
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
      if (w->nsessions >= w->fd_cap && (maxc == 0 || st->acct.conns < maxc)) {
        /* out of file descriptors for new sessions: they wait for one to
         * end; an idle connection of another queue is closed to make room
         * (checked before sched_conn_open, which counts the connection) */
        if (!w->fd_cap_logged)
          logs_panic(w->log, now_ms, "engine",
                     "worker %u: %u connections open, the RLIMIT_NOFILE share of this worker; "
                     "new connections wait (raise ulimit -n)", w->idx, w->nsessions);
        w->fd_cap_logged = true;
        for (struct session *s = w->sessions; s; s = s->next_all)
          if (s->parked && !s->closing) {
            quit_parked(s);
            break;
          }
        break;
      }
      uint64_t wait = 0;
      enum sched_open o = sched_conn_open(&st->limits, &st->acct, now_ns, &wait);
      if (o != SCHED_OPEN_OK) {
        if (o == SCHED_OPEN_THROTTLED)
          st->blocked_until_ns = now_ns + wait;
        break;
      }
      session_open(w, q);
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
    uint64_t now = wall_ms();
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

/* ------------------------------------------------------------ inbox */

/* A delivery unit on its way to its worker. The first unit of a message
 * also carries the message to its home worker (home), which lists it
 * there before the unit is queued: posted first, it is run before any
 * result of the message's other units can reach that ring. */
struct unit_post {
  struct ring_msg msg;
  struct worker *w;
  struct dq_unit *u;
  struct emsg *home;
  char binding[SPOOL_NAME_MAX + 1];
};

/* The unit's credentials are known: queue it with its identity. */
static void unit_ready(void *arg, uint64_t cred)
{
  struct unit_post *p = arg;
  struct worker *w = p->w;
  struct dq_unit *u = p->u;
  struct emsg *em = u->msg;
  const char *dom = rcpt_domain(em->sm->rcpt[u->rcpt[0]]);
  struct dq_queue *q = dq_queue_cred(w->dq, p->binding, dom, cred);
  dq_push(w->dq, q, u, wall_ms());
  free(p);
}

static void run_unit_post(struct ring_msg *m)
{
  struct unit_post *p = (struct unit_post *)(void *)m;
  struct worker *w = p->w;
  struct emsg *home = p->home;
  if (home) {
    home->next = w->msgs;
    if (w->msgs)
      w->msgs->prev = home;
    w->msgs = home;
  }
  refresh_conf(w);
  policy_worker_refresh(w->pw, w->conf);
  struct dq_unit *u = p->u;
  struct emsg *em = u->msg;
  uint64_t cred = 0;
  if (auth_resolve(w->auth, w->pw, w->conf, w->sh->spool, em->sm, p->binding,
                   rcpt_domain(em->sm->rcpt[u->rcpt[0]]), &cred, unit_ready, p) == 0)
    unit_ready(p, cred);
}

/* A deferred unit goes back to a queue: with outbound_smtp_auth on, its
 * credentials are resolved again (Lua hook, context, a reloaded
 * configuration), so a fixed password applies from the next retry. */
static void requeue_unit(struct worker *w, struct dq_queue *q, struct dq_unit *u)
{
  if (!auth_enabled(w->auth, w->conf)) {
    dq_push(w->dq, q, u, wall_ms());
    return;
  }
  struct unit_post *p = util_xcalloc(1, sizeof *p);
  p->w = w;
  p->u = u; /* p->home NULL: the message is listed here already */
  scopy(p->binding, sizeof p->binding, dq_queue_binding(q));
  struct emsg *em = u->msg;
  uint64_t cred = 0;
  if (auth_resolve(w->auth, w->pw, w->conf, w->sh->spool, em->sm, p->binding,
                   rcpt_domain(em->sm->rcpt[u->rcpt[0]]), &cred, unit_ready, p) == 0)
    unit_ready(p, cred);
}

/* ------------------------------------------------------------ ingest side */

static int cmp_dom(const void *a, const void *b, void *arg)
{
  const struct spool_msg *sm = arg;
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  int c = strcasecmp(rcpt_domain(sm->rcpt[x]), rcpt_domain(sm->rcpt[y]));
  return c ? c : (x > y) - (x < y);
}

/* A post of a received message waits for worker_submit_flush (its R
 * record first); a recovered one (no R) goes at once. */
static void submit_post(struct engine_shared *sh, bool received, struct unit_post *p)
{
  p->msg.fn = run_unit_post;
  if (!received) {
    ring_post_msg(p->w->ring, &p->msg);
    return;
  }
  if (sh->npend == sh->cappend) {
    sh->cappend = sh->cappend ? 2 * sh->cappend : 1024;
    sh->pend = util_xrealloc(sh->pend, sh->cappend * sizeof *sh->pend);
  }
  sh->pend[sh->npend++] = p;
}

void worker_submit_msg(struct engine_shared *sh, struct spool_msg *sm, bool received)
{
  struct conf *c = conf_ref(atomic_load(&sh->conf));
  struct emsg *em = util_xcalloc(1, sizeof *em);
  em->sm = sm;
  sm->user = em;
  spool_msg_id_str(sm, em->id);
  em->attempts = sm->attempts;
  uint64_t now = wall_ms();

  /* the binding: x-binding, else the first binding of x-binding-group,
   * else default; an unknown name is logged and mail goes to default */
  const char *binding = sm->binding;
  if (binding && conf_binding_id(c, binding) < 0) {
    logs_panic(sh->handover_log, now, "binding", "message %s: unknown binding \"%s\", using default",
               em->id, binding);
    binding = NULL;
  }
  if (binding == NULL && sm->binding_group) {
    for (size_t i = 0; i < conf_binding_count(c); i++) {
      const char *g = conf_binding_group(c, (int)i);
      if (g && !strcmp(g, sm->binding_group)) {
        binding = conf_binding_name(c, (int)i);
        break;
      }
    }
    if (binding == NULL)
      logs_panic(sh->handover_log, now, "binding",
                 "message %s: unknown binding group \"%s\", using default", em->id,
                 sm->binding_group);
  }
  if (binding == NULL)
    binding = "default";
  if (sm->binding == NULL || strcmp(sm->binding, binding))
    spool_msg_set_binding(sm, binding);
  const char *group = NULL;
  int bid = conf_binding_id(c, binding);
  if (bid >= 0)
    group = conf_binding_group(c, bid);
  if (group && (sm->binding_group == NULL || strcmp(sm->binding_group, group)))
    spool_msg_set_binding_group(sm, group);

  if (received) {
    for (uint32_t i = 0; i < sm->nrcpt; i++) {
      char msgid[64];
      struct logs_msg m;
      fill_logs_msg(&m, msgid, sizeof msgid, em, i);
      logs_reception(sh->handover_log, sm->created_ms ? sm->created_ms : now, &m, NULL, "internal");
      counters_add(sh->nworkers, binding, rcpt_domain(sm->rcpt[i]), COUNTERS_RECEIVED, 1);
    }
    /* the R records go out with the batch (the spool's on_batch_end) */
  }

  /* pending recipients grouped by domain (on the stack for the usual few) */
  uint32_t idx_small[16];
  struct unit_post *posts_small[16];
  uint32_t *idx = sm->nrcpt <= 16 ? idx_small : util_xmalloc(sm->nrcpt * sizeof *idx);
  uint32_t n = 0;
  for (uint32_t i = 0; i < sm->nrcpt; i++)
    if (sm->rcpt_state[i] == SPOOL_RCPT_PENDING)
      idx[n++] = i;
  qsort_r(idx, n, sizeof *idx, cmp_dom, sm);

  struct unit_post **posts = n <= 16 ? posts_small : util_xmalloc(n * sizeof *posts);
  uint32_t nposts = 0;
  for (uint32_t i = 0; i < n;) {
    const char *dom = rcpt_domain(sm->rcpt[idx[i]]);
    uint32_t j = i;
    while (j < n && !strcasecmp(rcpt_domain(sm->rcpt[idx[j]]), dom))
      j++;
    const struct conf_view *v = conf_view_get(c, binding, dom);
    if (v == NULL)
      v = conf_view_get(c, NULL, dom);
    uint32_t batch = (uint32_t)conf_int(v, CONF_MAX_RECIPIENTS_PER_BATCH);
    if (batch == 0)
      batch = 100;
    unsigned owner = sched_owner(binding, dom, sh->nworkers);
    for (uint32_t k = i; k < j; k += batch) {
      uint32_t cnt = j - k < batch ? j - k : batch;
      struct dq_unit *u = dq_unit_new(cnt);
      memcpy(u->rcpt, idx + k, cnt * sizeof *idx);
      u->msg = em;
      u->attempts = sm->attempts;
      u->due_ms = sm->next_attempt_ms;
      struct unit_post *p = util_xmalloc(sizeof *p);
      p->w = sh->workers[owner];
      p->u = u;
      p->home = NULL;
      scopy(p->binding, sizeof p->binding, binding);
      posts[nposts++] = p;
    }
    i = j;
  }
  if (idx != idx_small)
    free(idx);
  const struct conf_view *gv = conf_view_get(c, binding, NULL);
  em->bounces_on = sm->sender[0] != '\0' && gv && conf_bool(gv, CONF_GENERATE_BOUNCES);
  em->units_left = nposts;
  em->units = nposts;
  conf_unref(c);
  if (nposts == 0) {
    /* nothing pending (recovered with every recipient final) */
    struct spool_txn *t = spool_txn_new(sh->spool);
    spool_txn_remove(t, sm);
    spool_txn_commit(t);
    spool_txn_free(t);
    free(em);
    if (posts != posts_small)
      free(posts);
    return;
  }
  /* the first post lists the message on its home ring before any of its
   * results can arrive there */
  em->home = (unsigned)(posts[0]->w->idx);
  posts[0]->home = em;
  for (uint32_t i = 0; i < nposts; i++)
    submit_post(sh, received, posts[i]);
  if (posts != posts_small)
    free(posts);
}

void worker_submit_flush(struct engine_shared *sh)
{
  logs_writer_flush(sh->handover_log);
  for (size_t i = 0; i < sh->npend; i++)
    ring_post_msg(sh->pend[i]->w->ring, &sh->pend[i]->msg);
  sh->npend = 0;
}

/* ------------------------------------------------------------ thread */

static void drop_unit(void *arg, struct dq_unit *u)
{
  (void)arg;
  dq_unit_free(u);
}

static void drop_unit_post(void *arg)
{
  struct unit_post *p = arg;
  dq_unit_free(p->u);
  free(p);
}

static void commit(struct worker *w)
{
  if (!w->txn_dirty)
    return;
  w->txn_dirty = false;
  int rc = spool_txn_commit(w->txn);
  if (rc < 0)
    logs_panic(w->log, wall_ms(), "spool", "commit failed: %s", strerror(-rc));
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
  refresh_conf(w);
  w->auth = auth_new();
  w->pw = policy_worker_new(w->sh->policy, w->ring, w->log, w->conf, w->idx);
  sem_post(&w->started);

  for (;;) {
    refresh_conf(w);
    policy_worker_refresh(w->pw, w->conf);
    schedule(w);
    commit(w);
    logs_writer_flush(w->log);
    if (atomic_load(&w->stop)) {
      /* graceful stop: idle sessions go, busy ones finish until the deadline */
      for (struct session *s = w->sessions; s; s = s->next_all)
        if (s->parked && !s->closing)
          quit_parked(s);
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
        for (struct session *s = w->sessions, *n; s; s = n) {
          n = s->next_all;
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
      logs_panic(w->log, wall_ms(), "worker", "ring: %s", strerror(-rc));
  }
  commit(w);
  /* everything below is loop-thread state: free it here */
  dq_free(w->dq, drop_unit, NULL);
  w->dq = NULL;
  policy_worker_free(w->pw);
  auth_drop_pending(w->auth, drop_unit_post);
  auth_free(w->auth);
  spool_txn_free(w->txn);
  logs_writer_free(w->log);
  dns_free(w->dns);
  for (unsigned i = 0; i < w->ntls; i++) {
    tls_ctx_free(w->tls[i].ctx);
    free(w->tls[i].key);
  }
  conf_unref(w->conf);
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
    for (struct emsg *em = w->msgs, *n; em; em = n) {
      n = em->next;
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

/* Fail a unit taken out of its queue (dq_remove) permanently, as the
 * administrator asked: logged P and B, bounced like any permanent failure. */
void worker_admin_fail(struct worker *w, struct dq_unit *u)
{
  struct smtpc_result all = {.outcome = SMTPC_OUT_PERMANENT, .code = 554, .stage = 0};
  scopy(all.enhanced, sizeof all.enhanced, "5.0.0");
  scopy(all.text, sizeof all.text, "554 5.0.0 [admin] failed by the administrator");
  finish_unit(w, u->q, u, NULL, &all, "", NULL, 0);
}

