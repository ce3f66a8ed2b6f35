/* ctl.c owns the control thread: the impetus-ctl Unix socket, the
 * Prometheus endpoint (metrics.c renders) and the delivery-rate samples;
 * suspend/resume write the queue layer's table (queue/suspend.c).
 *
 * Must never: block a worker (questions reach workers as ring_post
 * messages; the worker answers from its own loop and this thread waits at
 * most CTL_WORKER_WAIT_MS); walk messages to count them (counters.c keeps
 * totals; listings page); print a secret (conf_eval without
 * CONF_EVAL_SHOW_SECRETS masks them).
 * The control thread's I/O (every client served at once) is ctlsrv.c.
 * Threads: the control thread, except ctl_start/ctl_stop (main thread),
 * ctl_suspended (workers) and the run_* functions (each on its worker). */
#include "ctl_internal.h"

#include "buf.h"
#include "clock.h"
#include "cluster.h"
#include "ctl_adaptive.h"
#include "conf.h"
#include "counters.h"
#include "ctlcmd.h"
#include "dns.h"
#include "dq.h"
#include "logs.h"
#include "impetus_build.h"
#include "metrics.h"
#include "panic.h"
#include "ring.h"
#include "spool.h"
#include "suspend.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CTL_ARGS_MAX 32       /* words in one request */
#define RATE_SAMPLES 61       /* one per second: the last minute */

/* ------------------------------------------------------------ state */

static struct {
  struct engine_shared *sh;
  char config_path[4096];
  char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  int sock_fd, metrics_fd, stop_fd[2];
  char metrics_addr[300];
  pthread_t thread;
  bool running;
  struct logs_writer *log; /* this thread's paniclog lines */
  uint64_t start_mono_ms;
  /* delivered-recipient samples, one per second */
  uint64_t rate_t[RATE_SAMPLES], rate_d[RATE_SAMPLES];
  unsigned rate_n, rate_i;
} g = {.sock_fd = -1, .metrics_fd = -1, .stop_fd = {-1, -1}};

static uint64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ output */

/* One emitter for both formats: JSON, or indented "key: value" text in
 * which an array's objects print as one "- k=v k=v" line each. */
struct out {
  struct buf *b;
  bool json;
  int depth;
  bool comma[16];
  bool row[16];
};

static void json_str(struct buf *b, const char *s)
{
  buf_append_str(b, "\"");
  if (s)
    buf_append_json(b, s, strlen(s), 0);
  buf_append_str(b, "\"");
}

static void o_key(struct out *o, const char *key)
{
  if (o->json) {
    if (o->comma[o->depth])
      buf_append_str(o->b, ",");
    o->comma[o->depth] = true;
    if (key) {
      json_str(o->b, key);
      buf_append_str(o->b, ":");
    }
    return;
  }
  /* text form: an unnamed value (an array element) is shown as "-" */
  if (o->row[o->depth]) {
    buf_printf(o->b, " %s=", key ? key : "-");
    return;
  }
  for (int i = 1; i < o->depth; i++)
    buf_append_str(o->b, "  ");
  buf_printf(o->b, "%s: ", key ? key : "-");
}

static void o_end_scalar(struct out *o)
{
  if (!o->json && !o->row[o->depth])
    buf_append_str(o->b, "\n");
}

static void o_str(struct out *o, const char *key, const char *v)
{
  o_key(o, key);
  if (o->json)
    json_str(o->b, v ? v : "");
  else
    buf_append_str(o->b, v && *v ? v : "-");
  o_end_scalar(o);
}

static void o_u64(struct out *o, const char *key, uint64_t v)
{
  o_key(o, key);
  buf_printf(o->b, "%llu", (unsigned long long)v);
  o_end_scalar(o);
}

static void o_dbl(struct out *o, const char *key, double v)
{
  o_key(o, key);
  buf_printf(o->b, "%.1f", v);
  o_end_scalar(o);
}

static void o_bool(struct out *o, const char *key, bool v)
{
  o_key(o, key);
  buf_append_str(o->b, v ? (o->json ? "true" : "yes") : (o->json ? "false" : "no"));
  o_end_scalar(o);
}

static void o_open(struct out *o, const char *key, bool array)
{
  o_key(o, key);
  if (o->json)
    buf_append_str(o->b, array ? "[" : "{");
  else
    buf_append_str(o->b, "\n");
  o->depth++;
  o->comma[o->depth] = false;
  o->row[o->depth] = false;
}

static void o_close(struct out *o, bool array)
{
  if (o->json)
    buf_append_str(o->b, array ? "]" : "}");
  o->depth--;
}

/* An object inside an array: one text line. */
static void o_row_open(struct out *o)
{
  if (o->json) {
    o_key(o, NULL);
    buf_append_str(o->b, "{");
  } else {
    for (int i = 1; i < o->depth; i++)
      buf_append_str(o->b, "  ");
    buf_append_str(o->b, "-");
  }
  o->depth++;
  o->comma[o->depth] = false;
  o->row[o->depth] = true;
}

static void o_row_close(struct out *o)
{
  o->row[o->depth] = false;
  o->depth--;
  buf_append_str(o->b, o->json ? "}" : "\n");
}

/* ------------------------------------------------------------ worker questions */

enum wop { WOP_STATS, WOP_QUEUES, WOP_UNITS, WOP_HASTEN, WOP_LIMITS, WOP_FAIL, WOP_MX };

struct qrow {
  char binding[COUNTERS_NAME_MAX], domain[COUNTERS_NAME_MAX];
  uint64_t ready, deferred, conns, opening, idle;
  bool suspended;
};

struct mrow {
  char id[40];
  char binding[COUNTERS_NAME_MAX], domain[COUNTERS_NAME_MAX];
  char sender[256], rcpt[256];
  uint32_t nrcpt, attempts;
  uint64_t due_ms, created_ms, size;
  bool deferred;
};

struct wpart {
  struct wq *q;
  unsigned idx;
  uint64_t ready, deferred, queues, active, sessions, inflight, timers;
  struct qrow *qrows;
  size_t nq;
  struct mrow *mrows;
  size_t nm;
  size_t hastened;
  struct buf mx; /* WOP_MX: "pref host addr,addr" lines */
};

struct wq {
  _Atomic int refs;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned pending;
  enum wop op;
  char binding[COUNTERS_NAME_MAX]; /* filters; "" = any */
  char domain[COUNTERS_NAME_MAX];
  char id[40];
  size_t limit; /* rows per worker at most */
  unsigned nparts;
  struct wpart parts[];
};

static void wq_unref(struct wq *q)
{
  if (atomic_fetch_sub(&q->refs, 1) != 1)
    return;
  for (unsigned i = 0; i < q->nparts; i++) {
    free(q->parts[i].qrows);
    free(q->parts[i].mrows);
    buf_done(&q->parts[i].mx, 0);
  }
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->cv);
  free(q);
}

static bool match_q(const struct wq *q, const char *binding, const char *domain)
{
  return (!q->binding[0] || !strcmp(q->binding, binding)) &&
         (!q->domain[0] || !strcasecmp(q->domain, domain));
}

struct visit {
  struct wpart *p;
  struct dq *d;
  size_t cap;
};

static void visit_queue(void *arg, struct dq_queue *dqq)
{
  struct visit *v = arg;
  struct wpart *p = v->p;
  const struct wq *q = p->q;
  if (!match_q(q, dq_queue_binding(dqq), dq_queue_domain(dqq)))
    return;
  struct dq_queue_state *st = dq_queue_state(dqq);
  if (q->op == WOP_LIMITS) {
    st->conf_gen = 0; /* load_limits reads the configuration and ctl_suspended again */
    if (suspend_active(dq_queue_binding(dqq), dq_queue_domain(dqq)))
      st->limits.suspend_delivery = true; /* at once, before the next load_limits */
    p->hastened++;
    return;
  }
  if (p->nq == v->cap) {
    v->cap = v->cap ? v->cap * 2 : 16;
    p->qrows = util_xrealloc(p->qrows, v->cap * sizeof *p->qrows);
  }
  struct qrow *r = &p->qrows[p->nq++];
  memset(r, 0, sizeof *r);
  snprintf(r->binding, sizeof r->binding, "%s", dq_queue_binding(dqq));
  snprintf(r->domain, sizeof r->domain, "%s", dq_queue_domain(dqq));
  r->ready = dq_queue_ready(dqq);
  r->deferred = dq_queue_deferred(dqq);
  r->conns = st->acct.conns;
  r->opening = st->opening;
  r->idle = st->pool.n;
  r->suspended = st->limits.suspend_delivery;
}

static bool unit_matches(const struct wq *q, struct dq_unit *u, const struct spool_msg **sm,
                         const char **id)
{
  *sm = worker_unit_msg(u, id);
  if (q->id[0] && strcmp(q->id, *id))
    return false;
  return match_q(q, dq_queue_binding(u->q), dq_queue_domain(u->q));
}

static bool visit_unit(void *arg, struct dq_unit *u, bool deferred)
{
  struct visit *v = arg;
  struct wpart *p = v->p;
  const struct spool_msg *sm;
  const char *id;
  if (!unit_matches(p->q, u, &sm, &id))
    return true;
  if (p->nm == v->cap) {
    v->cap = v->cap ? v->cap * 2 : 16;
    p->mrows = util_xrealloc(p->mrows, v->cap * sizeof *p->mrows);
  }
  struct mrow *r = &p->mrows[p->nm++];
  memset(r, 0, sizeof *r);
  snprintf(r->id, sizeof r->id, "%s", id);
  snprintf(r->binding, sizeof r->binding, "%s", dq_queue_binding(u->q));
  snprintf(r->domain, sizeof r->domain, "%s", dq_queue_domain(u->q));
  snprintf(r->sender, sizeof r->sender, "%s", sm->sender);
  snprintf(r->rcpt, sizeof r->rcpt, "%s", u->nrcpt ? sm->rcpt[u->rcpt[0]] : "");
  r->nrcpt = u->nrcpt;
  r->attempts = u->attempts;
  r->due_ms = u->due_ms;
  r->created_ms = sm->created_ms;
  r->size = sm->body_size;
  r->deferred = deferred;
  return p->nm < p->q->limit;
}

static bool pick_unit(void *arg, struct dq_unit *u)
{
  struct wpart *p = arg;
  const struct spool_msg *sm;
  const char *id;
  return unit_matches(p->q, u, &sm, &id);
}

struct collect {
  struct wpart *p;
  struct dq_unit **u;
  size_t n, cap;
};

static bool collect_unit(void *arg, struct dq_unit *u, bool deferred)
{
  (void)deferred;
  struct collect *c = arg;
  if (!pick_unit(c->p, u))
    return true;
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 8;
    c->u = util_xrealloc(c->u, c->cap * sizeof *c->u);
  }
  c->u[c->n++] = u;
  return true;
}

/* message fail: take the message's queued units out and fail them. */
static void fail_units(struct wpart *p, struct worker *w, struct dq *d)
{
  struct collect c = {.p = p};
  dq_foreach_unit(d, collect_unit, &c);
  for (size_t i = 0; i < c.n; i++) {
    dq_remove(d, c.u[i]);
    worker_admin_fail(w, c.u[i]);
  }
  p->hastened = c.n;
  free(c.u);
}

static void part_done(struct wpart *p)
{
  struct wq *q = p->q;
  pthread_mutex_lock(&q->mu);
  q->pending--;
  pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
  wq_unref(q);
}

static void on_mx(void *arg, const struct dns_result *res)
{
  struct wpart *p = arg;
  if (res->status != DNS_OK) {
    buf_printf(&p->mx, "! %s\n", res->text[0] ? res->text : dns_status_name(res->status));
  } else {
    for (unsigned i = 0; i < res->nhosts; i++) {
      const struct dns_host *h = &res->hosts[i];
      buf_printf(&p->mx, "%u %s%s", h->pref, h->name, res->implicit_mx ? " (no MX: A/AAAA)" : "");
      for (unsigned j = 0; j < h->naddr; j++) {
        char ip[64];
        inet_ntop(h->addr[j].family, h->addr[j].a, ip, sizeof ip);
        buf_printf(&p->mx, "%s%s", j ? "," : " ", ip);
      }
      buf_append_str(&p->mx, "\n");
    }
  }
  part_done(p);
}

/* Runs on worker p->idx's own thread. */
static void run_part(void *arg)
{
  struct wpart *p = arg;
  struct wq *q = p->q;
  struct worker *w = q->nparts ? g.sh->workers[p->idx] : NULL;
  struct dq *d = w ? worker_dq(w) : NULL;
  if (d) {
    struct visit v = {.p = p, .d = d};
    switch (q->op) {
    case WOP_STATS:
      p->ready = dq_total_ready(d);
      p->deferred = dq_total_deferred(d);
      p->queues = dq_queue_count(d);
      p->active = dq_active_count(d);
      p->sessions = worker_nsessions(w);
      p->inflight = ring_ops_inflight(worker_ring(w));
      p->timers = ring_timer_count(worker_ring(w));
      break;
    case WOP_QUEUES:
    case WOP_LIMITS:
      dq_foreach(d, visit_queue, &v);
      break;
    case WOP_UNITS:
      if (q->limit)
        dq_foreach_unit(d, visit_unit, &v);
      break;
    case WOP_HASTEN:
      p->hastened = dq_hasten(d, pick_unit, p, clock_wall_ms());
      break;
    case WOP_FAIL:
      fail_units(p, w, d);
      break;
    case WOP_MX:
      if (p->idx == 0) { /* one worker asks its resolver; the answer completes the part */
        dns_resolve(worker_dns(w), q->domain, true, on_mx, p);
        return;
      }
      break;
    default:
      util_panic("ctl: unknown worker op %d", (int)q->op);
    }
  }
  part_done(p);
}

static struct wq *wq_new(enum wop op)
{
  unsigned n = g.sh->nworkers;
  struct wq *q = util_xcalloc(1, sizeof *q + n * sizeof q->parts[0]);
  atomic_init(&q->refs, 1);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  q->op = op;
  q->nparts = n;
  q->limit = CTL_PAGE_MAX;
  for (unsigned i = 0; i < n; i++) {
    q->parts[i].q = q;
    q->parts[i].idx = i;
  }
  return q;
}

/* Ask every worker; 0 when all answered, -ETIMEDOUT otherwise (the
 * request stays alive until the late workers have answered). */
static int wq_run(struct wq *q)
{
  q->pending = q->nparts;
  for (unsigned i = 0; i < q->nparts; i++) {
    atomic_fetch_add(&q->refs, 1);
    ring_post(worker_ring(g.sh->workers[i]), run_part, &q->parts[i]);
  }
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += CTL_WORKER_WAIT_MS / 1000;
  int rc = 0;
  pthread_mutex_lock(&q->mu);
  while (q->pending > 0 && rc == 0)
    rc = pthread_cond_timedwait(&q->cv, &q->mu, &until);
  int left = (int)q->pending;
  pthread_mutex_unlock(&q->mu);
  return left ? -ETIMEDOUT : 0;
}

/* ------------------------------------------------------------ rates */

static void rate_sample(void)
{
  uint64_t t[COUNTERS_KINDS];
  counters_totals(t);
  uint64_t now = mono_ms();
  if (g.rate_n && now - g.rate_t[(g.rate_i + RATE_SAMPLES - 1) % RATE_SAMPLES] < 1000)
    return;
  g.rate_t[g.rate_i] = now;
  g.rate_d[g.rate_i] = t[COUNTERS_DELIVERED];
  g.rate_i = (g.rate_i + 1) % RATE_SAMPLES;
  if (g.rate_n < RATE_SAMPLES)
    g.rate_n++;
}

/* Delivered recipients per second over the last minute (or less): from
 * the oldest sample to now, so a run shorter than two samples has a rate. */
static double rate_recent(void)
{
  if (g.rate_n < 1)
    return 0;
  uint64_t t[COUNTERS_KINDS];
  counters_totals(t);
  unsigned oldest = (g.rate_i + RATE_SAMPLES - g.rate_n) % RATE_SAMPLES;
  uint64_t dt = mono_ms() - g.rate_t[oldest];
  if (dt < 100) /* too short a window to mean anything */
    return 0;
  return (double)(t[COUNTERS_DELIVERED] - g.rate_d[oldest]) * 1000.0 / (double)dt;
}

/* ------------------------------------------------------------ commands */

struct req {
  int argc;
  char *argv[CTL_ARGS_MAX];
  struct out o;
  struct buf err;
};

static int fail(struct req *r, const char *fmt, ...) IMPETUS_PRINTF(2, 3);
static int fail(struct req *r, const char *fmt, ...)
{
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  buf_reset(&r->err);
  buf_append_str(&r->err, text);
  return -EINVAL;
}

static void stats_totals(struct wq *q, struct wpart *t)
{
  memset(t, 0, sizeof *t);
  for (unsigned i = 0; i < q->nparts; i++) {
    t->ready += q->parts[i].ready;
    t->deferred += q->parts[i].deferred;
    t->queues += q->parts[i].queues;
    t->active += q->parts[i].active;
    t->sessions += q->parts[i].sessions;
  }
}

static int cmd_summary(struct req *r)
{
  struct wq *q = wq_new(WOP_STATS);
  int rc = wq_run(q);
  struct wpart t;
  stats_totals(q, &t);
  wq_unref(q);
  if (rc < 0)
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  uint64_t c[COUNTERS_KINDS];
  counters_totals(c);
  struct spool_stats ss;
  spool_get_stats(g.sh->spool, &ss);
  uint64_t up = (mono_ms() - g.start_mono_ms) / 1000;
  struct out *o = &r->o;
  o_str(o, "version", IMPETUS_VERSION);
  o_u64(o, "uptime_s", up);
  o_u64(o, "workers", g.sh->nworkers);
  o_u64(o, "concurrency", t.sessions);
  o_u64(o, "active_queue", t.ready);
  o_u64(o, "delayed_queue", t.deferred);
  o_u64(o, "total_queue", t.ready + t.deferred);
  o_u64(o, "queues", t.queues);
  o_u64(o, "messages_received", ss.ingested);
  o_u64(o, "received", c[COUNTERS_RECEIVED]);
  o_u64(o, "delivered", c[COUNTERS_DELIVERED]);
  o_u64(o, "transient_failures", c[COUNTERS_TRANSIENT]);
  o_u64(o, "failed", c[COUNTERS_PERMANENT]);
  o_dbl(o, "delivery_rate_1m", rate_recent());
  o_dbl(o, "delivery_rate_avg", up ? (double)c[COUNTERS_DELIVERED] / (double)up : 0);
  o_u64(o, "spool_rejected", ss.rejected);
  o_u64(o, "spool_syncs", ss.syncs);
  o_u64(o, "lua_hook_errors", counters_event_total(COUNTERS_LUA_ERRORS));
  return 0;
}

static void emit_qrow(struct out *o, const struct qrow *x)
{
  o_row_open(o);
  o_str(o, "binding", x->binding);
  o_str(o, "domain", x->domain);
  o_u64(o, "active", x->ready);
  o_u64(o, "delayed", x->deferred);
  o_u64(o, "connections", x->conns);
  o_u64(o, "idle", x->idle);
  o_bool(o, "suspended", x->suspended);
  o_row_close(o);
}

/* counters for a binding and/or domain */
struct csum {
  const char *binding, *domain;
  uint64_t c[COUNTERS_KINDS];
};

static void csum_add(void *arg, const char *binding, const char *domain, const uint64_t c[])
{
  struct csum *s = arg;
  if ((s->binding && strcmp(s->binding, binding)) || (s->domain && strcasecmp(s->domain, domain)))
    return;
  for (unsigned k = 0; k < COUNTERS_KINDS; k++)
    s->c[k] += c[k];
}

static void emit_counts(struct out *o, const char *binding, const char *domain)
{
  struct csum s = {.binding = binding, .domain = domain};
  counters_foreach(csum_add, &s);
  for (unsigned k = 0; k < COUNTERS_KINDS; k++)
    o_u64(o, counters_kind_name(k), s.c[k]);
}

static int cmd_binding_summary(struct req *r, const char *name)
{
  struct wq *q = wq_new(WOP_QUEUES);
  if (name)
    snprintf(q->binding, sizeof q->binding, "%s", name);
  if (wq_run(q) < 0) {
    wq_unref(q);
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  }
  /* group queue rows by binding */
  struct brow {
    const char *name;
    uint64_t queues, ready, deferred, conns;
  } *b = NULL;
  size_t nb = 0;
  struct conf *c = conf_ref(atomic_load(&g.sh->conf));
  size_t nconf = conf_binding_count(c);
  b = util_xcalloc(nconf + 1 + 64, sizeof *b);
  size_t cap = nconf + 1 + 64;
  if (!name || !strcmp(name, "default"))
    b[nb++].name = "default";
  for (size_t i = 0; i < nconf; i++) {
    const char *bn = conf_binding_name(c, (int)i);
    if (bn && strcmp(bn, "default") && (!name || !strcmp(name, bn)))
      b[nb++].name = bn;
  }
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nq; j++) {
      struct qrow *x = &q->parts[i].qrows[j];
      size_t k;
      for (k = 0; k < nb; k++)
        if (!strcmp(b[k].name, x->binding))
          break;
      if (k == nb) {
        if (nb == cap)
          continue;
        b[nb++].name = x->binding;
      }
      b[k].queues++;
      b[k].ready += x->ready;
      b[k].deferred += x->deferred;
      b[k].conns += x->conns;
    }
  if (name && nb == 0) {
    free(b);
    conf_unref(c);
    wq_unref(q);
    return fail(r, "no binding '%s'", name);
  }
  struct out *o = &r->o;
  o_open(o, "bindings", true);
  for (size_t k = 0; k < nb; k++) {
    o_row_open(o);
    o_str(o, "binding", b[k].name);
    int id = conf_binding_id(c, b[k].name);
    o_str(o, "group", id >= 0 ? conf_binding_group(c, id) : NULL);
    o_u64(o, "queues", b[k].queues);
    o_u64(o, "active", b[k].ready);
    o_u64(o, "delayed", b[k].deferred);
    o_u64(o, "connections", b[k].conns);
    emit_counts(o, b[k].name, NULL);
    o_bool(o, "suspended", suspend_active(b[k].name, ""));
    o_row_close(o);
  }
  o_close(o, true);
  free(b);
  conf_unref(c);
  wq_unref(q);
  return 0;
}

static int cmd_domain(struct req *r, const char *binding, const char *name)
{
  struct wq *q = wq_new(WOP_QUEUES);
  snprintf(q->domain, sizeof q->domain, "%s", name);
  if (binding)
    snprintf(q->binding, sizeof q->binding, "%s", binding);
  if (wq_run(q) < 0) {
    wq_unref(q);
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  }
  struct conf *c = conf_ref(atomic_load(&g.sh->conf));
  const struct conf_view *v = conf_view_get(c, binding, name);
  if (v == NULL)
    v = conf_view_get(c, NULL, name);
  struct out *o = &r->o;
  o_str(o, "domain", name);
  struct conf_addr gw = conf_addr(v, CONF_GATEWAY);
  char route[300];
  if (gw.host) {
    snprintf(route, sizeof route, "%s:%u", gw.host, gw.port ? gw.port : 25);
    o_str(o, "route", "gateway");
    o_open(o, "hosts", true);
    o_key(o, NULL);
    if (o->json)
      json_str(o->b, route);
    else
      buf_printf(o->b, "  - %s\n", route);
    o_close(o, true);
  } else {
    o_str(o, "route", "mx");
    struct wq *mq = wq_new(WOP_MX);
    snprintf(mq->domain, sizeof mq->domain, "%s", name);
    int rc = wq_run(mq);
    o_open(o, "hosts", true);
    if (rc < 0) {
      o_key(o, NULL);
      if (o->json)
        json_str(o->b, "! DNS did not answer in time");
      else
        buf_append_str(o->b, "  - ! DNS did not answer in time\n");
    } else {
      buf_append(&mq->parts[0].mx, "", 1);
      char *save = NULL;
      for (char *l = strtok_r((char *)mq->parts[0].mx.data, "\n", &save); l;
           l = strtok_r(NULL, "\n", &save)) {
        o_key(o, NULL);
        if (o->json)
          json_str(o->b, l);
        else
          buf_printf(o->b, "  - %s\n", l);
      }
    }
    o_close(o, true);
    wq_unref(mq);
  }
  o_str(o, "auth_type", conf_str(v, CONF_OUTBOUND_SMTP_AUTH_TYPE)); /* the table's word */
  o_str(o, "auth_user", conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER));
  o_str(o, "auth_pass", conf_str(v, CONF_OUTBOUND_SMTP_AUTH_PASS) ? "********" : NULL);
  o_u64(o, "max_outbound_connections", (uint64_t)conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS));
  uint64_t ready = 0, deferred = 0, conns = 0;
  o_open(o, "queues", true);
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nq; j++) {
      struct qrow *x = &q->parts[i].qrows[j];
      ready += x->ready;
      deferred += x->deferred;
      conns += x->conns;
      emit_qrow(o, x);
    }
  o_close(o, true);
  o_u64(o, "active", ready);
  o_u64(o, "delayed", deferred);
  o_u64(o, "connections", conns);
  emit_counts(o, binding, name);
  o_bool(o, "suspended", suspend_active(binding ? binding : "default", name));
  conf_unref(c);
  wq_unref(q);
  return 0;
}

static void fmt_time(char *out, size_t n, uint64_t ms)
{
  if (ms == 0) {
    snprintf(out, n, "now");
    return;
  }
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void emit_mrow(struct out *o, const struct mrow *m)
{
  char due[40], created[40];
  fmt_time(due, sizeof due, m->deferred ? m->due_ms : 0);
  fmt_time(created, sizeof created, m->created_ms);
  o_row_open(o);
  o_str(o, "id", m->id);
  o_str(o, "binding", m->binding);
  o_str(o, "domain", m->domain);
  o_str(o, "from", m->sender);
  o_str(o, "to", m->rcpt);
  o_u64(o, "recipients", m->nrcpt);
  o_u64(o, "attempts", m->attempts);
  o_str(o, "state", m->deferred ? "delayed" : "active");
  o_str(o, "next_attempt", due);
  o_str(o, "received", created);
  o_u64(o, "size", m->size);
  o_row_close(o);
}

/* mailq / showqueue: page `page` (from 1) of `per` rows. */
static int list_units(struct req *r, const char *binding, const char *domain, const char *id,
                      size_t page, size_t per)
{
  if (per == 0 || per > CTL_PAGE_MAX)
    per = CTL_PAGE_MAX > 100 ? 100 : CTL_PAGE_MAX;
  if (page == 0)
    page = 1;
  size_t skip = (page - 1) * per;
  if (skip + per > 100000)
    return fail(r, "page too far: at most 100000 rows are listed; filter by domain or binding");
  struct wq *q = wq_new(WOP_UNITS);
  if (binding)
    snprintf(q->binding, sizeof q->binding, "%s", binding);
  if (domain)
    snprintf(q->domain, sizeof q->domain, "%s", domain);
  if (id)
    snprintf(q->id, sizeof q->id, "%s", id);
  q->limit = skip + per + 1;
  if (wq_run(q) < 0) {
    wq_unref(q);
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  }
  struct out *o = &r->o;
  size_t seen = 0, shown = 0;
  bool more = false;
  o_u64(o, "page", page);
  o_u64(o, "per_page", per);
  o_open(o, "messages", true);
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nm; j++, seen++) {
      if (seen < skip)
        continue;
      if (shown == per) {
        more = true;
        break;
      }
      emit_mrow(o, &q->parts[i].mrows[j]);
      shown++;
    }
  o_close(o, true);
  o_u64(o, "shown", shown);
  o_bool(o, "more", more);
  wq_unref(q);
  return 0;
}

static int cmd_message_details(struct req *r, const char *id)
{
  struct wq *q = wq_new(WOP_UNITS);
  snprintf(q->id, sizeof q->id, "%s", id);
  if (wq_run(q) < 0) {
    wq_unref(q);
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  }
  const struct mrow *first = NULL;
  for (unsigned i = 0; i < q->nparts && !first; i++)
    if (q->parts[i].nm)
      first = &q->parts[i].mrows[0];
  if (first == NULL) {
    wq_unref(q);
    return fail(r, "message %s is not queued (unknown, done, or in a session right now)", id);
  }
  struct out *o = &r->o;
  char created[40];
  fmt_time(created, sizeof created, first->created_ms);
  o_str(o, "id", id);
  o_str(o, "from", first->sender);
  o_str(o, "received", created);
  o_u64(o, "size", first->size);
  o_open(o, "units", true);
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nm; j++)
      emit_mrow(o, &q->parts[i].mrows[j]);
  o_close(o, true);
  wq_unref(q);
  return 0;
}

static int hasten(struct req *r, const char *binding, const char *domain, const char *id)
{
  struct wq *q = wq_new(WOP_HASTEN);
  if (binding)
    snprintf(q->binding, sizeof q->binding, "%s", binding);
  if (domain)
    snprintf(q->domain, sizeof q->domain, "%s", domain);
  if (id)
    snprintf(q->id, sizeof q->id, "%s", id);
  if (wq_run(q) < 0) {
    wq_unref(q);
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  }
  size_t n = 0;
  for (unsigned i = 0; i < q->nparts; i++)
    n += q->parts[i].hastened;
  wq_unref(q);
  o_u64(&r->o, "rescheduled", n);
  return 0;
}

static int cmd_message_fail(struct req *r, const char *id)
{
  struct wq *q = wq_new(WOP_FAIL);
  snprintf(q->id, sizeof q->id, "%s", id);
  if (wq_run(q) < 0) {
    wq_unref(q);
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  }
  size_t n = 0;
  for (unsigned i = 0; i < q->nparts; i++)
    n += q->parts[i].hastened;
  wq_unref(q);
  if (n == 0)
    return fail(r, "message %s has no queued unit (unknown, done, or in a session right now)", id);
  o_str(&r->o, "id", id);
  o_u64(&r->o, "failed_units", n);
  return 0;
}

static int cmd_suspend(struct req *r, bool on, const char *binding, const char *domain)
{
  int rc = suspend_set(binding ? binding : "", domain ? domain : "", on);
  if (rc == -ENOSPC)
    return fail(r, "too many suspensions (%d)", SUSPEND_MAX);
  if (rc == -ENOENT)
    return fail(r, "%s%s%s%s is not suspended from the console", binding ? "binding " : "",
                binding ? binding : "", binding && domain ? " domain " : domain ? "domain " : "",
                domain ? domain : "");
  struct wq *q = wq_new(WOP_LIMITS);
  if (binding)
    snprintf(q->binding, sizeof q->binding, "%s", binding);
  if (domain)
    snprintf(q->domain, sizeof q->domain, "%s", domain);
  rc = wq_run(q);
  size_t n = 0;
  for (unsigned i = 0; i < q->nparts; i++)
    n += q->parts[i].hastened;
  wq_unref(q);
  if (rc < 0)
    return fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  o_str(&r->o, "binding", binding ? binding : "*");
  o_str(&r->o, "domain", domain ? domain : "*");
  o_bool(&r->o, "suspended", on);
  o_u64(&r->o, "queues", n);
  return 0;
}

static int cmd_config_eval(struct req *r, int argc, char **argv)
{
  struct ctlcmd_eval e;
  char why[256];
  if (ctlcmd_eval_args(argc, argv, &e, why, sizeof why) < 0)
    return fail(r, "config eval: %s", why);
  struct conf *c = conf_ref(atomic_load(&g.sh->conf));
  struct buf out = {0};
  int rc = conf_eval(c, e.group, e.binding, e.domain, e.option, 0, &out); /* secrets masked */
  buf_append(&out, "", 1);
  if (rc < 0)
    fail(r, "%s", (const char *)buf_head(&out));
  else
    o_str(&r->o, "value", (const char *)buf_head(&out));
  buf_done(&out, 0);
  conf_unref(c);
  return rc < 0 ? -EINVAL : 0;
}

static int cmd_config_reload(struct req *r)
{
  struct conf_error err;
  struct conf *c = conf_load(g.config_path, &err);
  if (c == NULL) {
    char text[6000];
    return fail(r, "not reloaded: %s", conf_error_str(&err, text, sizeof text));
  }
  conf_unref(c);
  uint64_t gen = atomic_load(&g.sh->conf_gen);
  kill(getpid(), SIGHUP);
  /* the main thread swaps the snapshot: wait for it briefly */
  uint64_t until = mono_ms() + 2000;
  while (atomic_load(&g.sh->conf_gen) == gen && mono_ms() < until) {
    struct timespec ts = {.tv_nsec = 5000000};
    nanosleep(&ts, NULL);
  }
  o_str(&r->o, "config", g.config_path);
  o_bool(&r->o, "reloaded", atomic_load(&g.sh->conf_gen) != gen);
  o_u64(&r->o, "generation", atomic_load(&g.sh->conf_gen));
  return 0;
}

/* cluster [FILTER]: the cluster client's view (cluster.h): Redis, nodes
 * seen, and per cap and throttle whose key contains FILTER (a domain, a
 * binding, a scope) the cluster value and this node's share. */
static int cmd_cluster(struct req *r, const char *filter)
{
  if (g.sh->cluster == NULL)
    return fail(r, "no cluster stanza: Cluster_* limits are not shared (docs/cluster.md)");
  struct buf text = {0};
  cluster_describe(g.sh->cluster, filter, &text);
  buf_append(&text, "", 1);
  o_str(&r->o, "cluster", (const char *)buf_head(&text));
  buf_done(&text, 0);
  return 0;
}

static int dispatch(struct req *r)
{
  int ac = r->argc;
  char **av = r->argv;
  char why[512];
  if (ctlcmd_check(ac, av, why, sizeof why) < 0)
    return fail(r, "%s\ncommands:\n%s", why, ctlcmd_usage);
#define IS(i, w) (ac > (i) && !strcasecmp(av[i], (w)))
  if (IS(0, "summary") && ac == 1)
    return cmd_summary(r);
  if (IS(0, "cluster") && ac <= 2)
    return cmd_cluster(r, ac == 2 ? av[1] : NULL);
  if (IS(0, "version") && ac == 1) {
    o_str(&r->o, "version", IMPETUS_VERSION);
    return 0;
  }
  if (IS(0, "shutdown") && ac == 1) {
    o_str(&r->o, "shutdown", "stopping (graceful)");
    kill(getpid(), SIGTERM);
    return 0;
  }
  if (IS(0, "reopen") && IS(1, "logs") && ac == 2) {
    /* here rather than by SIGUSR1, to know whether every file reopened */
    char failed[1024];
    if (logs_reopen_wait(g.sh->logs, failed, sizeof failed) < 0) {
      logs_panic(g.log, clock_wall_ms(), "logs", "reopen failed: %s; still writing to the old file",
                 failed);
      logs_writer_flush(g.log);
      return fail(r, "reopen failed: %s (still writing to the old file)", failed);
    }
    o_bool(&r->o, "reopened", true);
    return 0;
  }
  if (IS(0, "config") && IS(1, "eval"))
    return cmd_config_eval(r, ac - 2, av + 2);
  if (IS(0, "adaptive")) /* ctl_adaptive.c */
    return ctl_adaptive(g.sh, r->o.json, ac - 1, av + 1, r->o.b, &r->err);
  if (IS(0, "config") && IS(1, "reload") && ac == 2)
    return cmd_config_reload(r);
  if (IS(0, "binding") && IS(1, "summary") && ac <= 3)
    return cmd_binding_summary(r, ac == 3 ? av[2] : NULL);
  if (IS(0, "domain") && ac == 2)
    return cmd_domain(r, NULL, av[1]);
  if (IS(0, "showqueue") && IS(1, "binding") && ac == 4)
    return cmd_domain(r, av[2], av[3]) < 0 ? -EINVAL : list_units(r, av[2], av[3], NULL, 1, 0);
  if (IS(0, "showqueue") && ac == 2)
    return cmd_domain(r, NULL, av[1]) < 0 ? -EINVAL : list_units(r, NULL, av[1], NULL, 1, 0);
  if (IS(0, "mailq")) {
    const char *b = NULL, *d = NULL;
    size_t page = 1, per = 0;
    for (int i = 1; i < ac; i++) {
      if (i + 1 < ac && !strcmp(av[i], "-d"))
        d = av[++i];
      else if (i + 1 < ac && !strcmp(av[i], "-b"))
        b = av[++i];
      else if (i + 1 < ac && !strcmp(av[i], "-p"))
        page = strtoul(av[++i], NULL, 10);
      else if (i + 1 < ac && !strcmp(av[i], "-n"))
        per = strtoul(av[++i], NULL, 10);
      else
        return fail(r, "usage: mailq [-d DOMAIN] [-b BINDING] [-p PAGE] [-n PER_PAGE]");
    }
    return list_units(r, b, d, NULL, page, per);
  }
  if (IS(0, "message") && IS(1, "details") && ac == 3)
    return cmd_message_details(r, av[2]);
  if (IS(0, "message") && IS(1, "retry") && ac == 3)
    return hasten(r, NULL, NULL, av[2]);
  if (IS(0, "message") && IS(1, "fail") && ac == 3)
    return cmd_message_fail(r, av[2]);
  if (IS(0, "flush") && IS(1, "domain") && ac == 3)
    return hasten(r, NULL, av[2], NULL);
  if (IS(0, "flush") && IS(1, "binding") && ac == 3)
    return hasten(r, av[2], NULL, NULL);
  if ((IS(0, "suspend") || IS(0, "resume")) && ac == 3 && (IS(1, "domain") || IS(1, "binding")))
    return cmd_suspend(r, IS(0, "suspend"), IS(1, "binding") ? av[2] : NULL,
                       IS(1, "domain") ? av[2] : NULL);
  if ((IS(0, "suspend") || IS(0, "resume")) && ac == 5 && IS(1, "binding") && IS(3, "domain"))
    return cmd_suspend(r, IS(0, "suspend"), av[2], av[4]);
#undef IS
  return fail(r, "unknown command\ncommands:\n%s", ctlcmd_usage);
}

/* ------------------------------------------------------------ answers
 * (ctlsrv.c does the I/O: every client is served concurrently) */

void ctl_answer(char *line, struct buf *out)
{
  struct buf body = {0};
  struct req r = {.o = {.b = &body}};
  char *save = NULL;
  char *fmt = strtok_r(line, "\t", &save);
  r.o.json = fmt && !strcmp(fmt, "json");
  for (char *w; r.argc < CTL_ARGS_MAX && (w = strtok_r(NULL, "\t", &save));)
    r.argv[r.argc++] = w;
  if (r.o.json)
    buf_append_str(&body, "{");
  int rc = dispatch(&r);
  if (r.o.json)
    buf_append_str(&body, "}\n");
  if (rc < 0) {
    buf_append(&r.err, "", 1);
    buf_append_str(out, "ERR\n");
    if (r.o.json) {
      buf_append_str(out, "{\"error\":");
      json_str(out, (const char *)buf_head(&r.err));
      buf_append_str(out, "}\n");
    } else {
      buf_printf(out, "%s\n", (const char *)buf_head(&r.err));
    }
  } else {
    buf_append_str(out, "OK\n");
    buf_append(out, buf_head(&body), buf_avail(&body));
  }
  buf_done(&body, 0);
  buf_done(&r.err, 0);
}

void ctl_http_answer(const char *req, struct buf *out)
{
  if (strncmp(req, "GET /metrics", 12) != 0 ||
      (req[12] != ' ' && req[12] != '?' && req[12] != '\r' && req[12] != '\n')) {
    buf_append_str(out, "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
                        "Content-Length: 10\r\n\r\nnot found\n");
    return;
  }
  struct metrics_input in = {.nworkers = g.sh->nworkers, .adaptive = g.sh->adaptive,
                             .uptime_s = (mono_ms() - g.start_mono_ms) / 1000};
  struct wq *q = wq_new(WOP_STATS);
  in.workers_answered = wq_run(q) == 0;
  in.w = util_xcalloc(q->nparts ? q->nparts : 1, sizeof *in.w);
  for (unsigned i = 0; i < q->nparts; i++) {
    in.w[i].ready = q->parts[i].ready;
    in.w[i].deferred = q->parts[i].deferred;
    in.w[i].queues = q->parts[i].queues;
    in.w[i].sessions = q->parts[i].sessions;
    in.w[i].ring_inflight = q->parts[i].inflight;
    in.w[i].ring_timers = q->parts[i].timers;
  }
  wq_unref(q);
  spool_get_stats(g.sh->spool, &in.spool);
  struct buf body = {0};
  metrics_render(&body, &in);
  cluster_metrics(g.sh->cluster, &body);
  free(in.w);
  buf_printf(out,
             "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
             "Content-Length: %zu\r\n\r\n",
             buf_avail(&body));
  buf_append(out, buf_head(&body), buf_avail(&body));
  buf_done(&body, 0);
}

void ctl_tick(void)
{
  rate_sample();
}

static void *ctl_main(void *arg)
{
  (void)arg;
  ctlsrv_run(g.stop_fd[0], g.sock_fd, g.metrics_fd);
  return NULL;
}

/* ------------------------------------------------------------ start/stop */

/* mkdir -p of the directory part of path (mode 0755 for new ones: an
 * engine that drops root must still reach its spool and logs below). */
static void make_parent(const char *path)
{
  if (path == NULL)
    return;
  char d[4096];
  snprintf(d, sizeof d, "%s", path);
  char *slash = strrchr(d, '/');
  if (slash == NULL || slash == d)
    return;
  *slash = '\0';
  for (char *p = d + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(d, 0755);
      *p = '/';
    }
  mkdir(d, 0755);
}

void ctl_prepare_paths(struct conf *c)
{
  static const struct {
    const char *stanza;
    enum conf_opt opt;
  } logs[] = {{"ec_logger", CONF_EC_LOGGER_MAINLOG}, {"ec_logger", CONF_EC_LOGGER_PANICLOG},
              {"ec_logger", CONF_EC_LOGGER_JSONLOG}, {"bounce_logger", CONF_BOUNCE_LOGGER_BOUNCELOG}};
  for (size_t i = 0; i < UTIL_ARRAY_LEN(logs); i++) {
    const struct conf_stanza *st = conf_stanza_first(c, logs[i].stanza);
    if (st)
      make_parent(conf_str(conf_stanza_view(st), logs[i].opt));
  }
  const struct conf_stanza *cl = conf_stanza_first(c, "control_listener");
  const struct conf_stanza *ls = cl ? conf_stanza_child(cl, "listen") : NULL;
  if (ls)
    make_parent(conf_stanza_instance(ls));
  make_parent(conf_str(conf_global(c), CONF_SPOOL_SECRET_KEY_FILE)); /* NULL: beside the spool */
}

static int open_unix(const char *path, unsigned mode, char *err, size_t errlen)
{
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    snprintf(err, errlen, "control socket path too long: %s", path);
    return -ENAMETOOLONG;
  }
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "control socket: %s", strerror(errno));
    return -errno;
  }
  /* a socket left by a previous run that nobody answers on is stale */
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    close(fd);
    snprintf(err, errlen, "control socket %s: another impetus is running", path);
    return -EADDRINUSE;
  }
  unlink(path);
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (rc < 0 || chmod(path, mode) < 0 || listen(fd, 64) < 0) {
    int e = errno;
    snprintf(err, errlen, "control socket %s: %s", path, strerror(e));
    close(fd);
    return -e;
  }
  return fd;
}

static int open_tcp(const char *host, unsigned port, char *err, size_t errlen)
{
  struct sockaddr_storage ss = {0};
  socklen_t sl;
  struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    sl = sizeof *a4;
  } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    sl = sizeof *a6;
  } else {
    snprintf(err, errlen, "Metrics_Listener: '%s' is not an IP address", host);
    return -EINVAL;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0) {
    int e = errno;
    snprintf(err, errlen, "Metrics_Listener %s:%u: %s", host, port, strerror(e));
    if (fd >= 0)
      close(fd);
    return -e;
  }
  return fd;
}

int ctl_open(struct engine_shared *sh, const char *config_path, char *err, size_t errlen)
{
  g.sh = sh;
  g.start_mono_ms = mono_ms();
  snprintf(g.config_path, sizeof g.config_path, "%s", config_path);
  struct conf *c = atomic_load(&sh->conf);
  const struct conf_view *gv = conf_global(c);
  unsigned mode = 0600;
  const struct conf_stanza *cl = conf_stanza_first(c, "control_listener");
  const struct conf_stanza *ls = cl ? conf_stanza_child(cl, "listen") : NULL;
  if (ls) {
    snprintf(g.sock_path, sizeof g.sock_path, "%s", conf_stanza_instance(ls));
    if (conf_is_set(conf_stanza_view(ls), CONF_LISTEN_FILE_MODE))
      mode = (unsigned)conf_int(conf_stanza_view(ls), CONF_LISTEN_FILE_MODE);
  } else {
    snprintf(g.sock_path, sizeof g.sock_path, "%s/impetus.sock", conf_str(gv, CONF_SPOOLBASE));
  }
  int fd = open_unix(g.sock_path, mode, err, errlen);
  if (fd < 0)
    return fd;
  g.sock_fd = fd;
  struct conf_addr ma = conf_addr(gv, CONF_METRICS_LISTENER);
  if (ma.host) {
    fd = open_tcp(ma.host, ma.port ? ma.port : 9911, err, errlen);
    if (fd < 0) {
      close(g.sock_fd);
      unlink(g.sock_path);
      g.sock_fd = -1;
      return fd;
    }
    g.metrics_fd = fd;
  }
  return 0;
}

int ctl_start(char *err, size_t errlen)
{
  if (g.sock_fd < 0) {
    snprintf(err, errlen, "control thread: ctl_open was not called");
    return -EINVAL;
  }
  if (pipe2(g.stop_fd, O_CLOEXEC) < 0) {
    snprintf(err, errlen, "control thread: %s", strerror(errno));
    return -errno;
  }
  g.log = logs_writer_new(g.sh->logs);
  int rc = pthread_create(&g.thread, NULL, ctl_main, NULL);
  if (rc != 0) {
    snprintf(err, errlen, "control thread: %s", strerror(rc));
    return -rc;
  }
  g.running = true;
  return 0;
}

void ctl_stop(void)
{
  if (g.running) {
    (void)!write(g.stop_fd[1], "x", 1);
    pthread_join(g.thread, NULL);
    g.running = false;
  }
  logs_writer_free(g.log);
  g.log = NULL;
  if (g.sock_fd >= 0) {
    close(g.sock_fd);
    unlink(g.sock_path);
    g.sock_fd = -1;
  }
  if (g.metrics_fd >= 0)
    close(g.metrics_fd);
  g.metrics_fd = -1;
  for (int i = 0; i < 2; i++)
    if (g.stop_fd[i] >= 0)
      close(g.stop_fd[i]);
  g.stop_fd[0] = g.stop_fd[1] = -1;
}
