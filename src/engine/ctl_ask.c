/* ctl_ask.c owns the console's questions to the delivery workers: a
 * request (struct ctl_wq) with one part per worker, posted to each
 * worker's ring and answered from the worker's own loop (queue and unit
 * rows, totals, hastening, failing a message's units, suspensions taking
 * effect, an MX lookup), and the control thread's bounded wait for them.
 * Must never: block a worker or make it wait for the control thread (a
 * late answer lands in a request kept alive by its reference count);
 * wait longer than CTL_WORKER_WAIT_MS. Threads: ctl_wq_new/run/unref on
 * the control thread; run_part and what it calls on each worker's thread. */
#include "ctl_internal.h"

#include "buf.h"
#include "clock.h"
#include "dns.h"
#include "dq.h"
#include "panic.h"
#include "ring.h"
#include "spool.h"
#include "suspend.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

void ctl_wq_unref(struct ctl_wq *q)
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

static bool match_q(const struct ctl_wq *q, const char *binding, const char *domain)
{
  return (!q->binding[0] || !strcmp(q->binding, binding)) &&
         (!q->domain[0] || !strcasecmp(q->domain, domain));
}

struct visit {
  struct ctl_wpart *p;
  struct dq *d;
  size_t cap;
};

static void visit_queue(void *arg, struct dq_queue *dqq)
{
  struct visit *v = arg;
  struct ctl_wpart *p = v->p;
  const struct ctl_wq *q = p->q;
  if (!match_q(q, dq_queue_binding(dqq), dq_queue_domain(dqq)))
    return;
  struct dq_queue_state *st = dq_queue_state(dqq);
  if (q->op == CTL_WOP_LIMITS) {
    st->conf_gen = 0; /* load_limits reads the configuration and ctl_suspended again */
    if (suspend_active(dq_queue_binding(dqq), dq_queue_domain(dqq)))
      st->limits.suspend_delivery = true; /* at once, before the next load_limits */
    p->hastened++;
    return;
  }
  UTIL_GROW(p->qrows, p->nq, v->cap, 16);
  struct ctl_qrow *r = &p->qrows[p->nq++];
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

static bool unit_matches(const struct ctl_wq *q, struct dq_unit *u, const struct spool_msg **sm,
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
  struct ctl_wpart *p = v->p;
  const struct spool_msg *sm;
  const char *id;
  if (!unit_matches(p->q, u, &sm, &id))
    return true;
  UTIL_GROW(p->mrows, p->nm, v->cap, 16);
  struct ctl_mrow *r = &p->mrows[p->nm++];
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
  struct ctl_wpart *p = arg;
  const struct spool_msg *sm;
  const char *id;
  return unit_matches(p->q, u, &sm, &id);
}

struct collect {
  struct ctl_wpart *p;
  struct dq_unit **u;
  size_t n, cap;
};

static bool collect_unit(void *arg, struct dq_unit *u, bool deferred)
{
  (void)deferred;
  struct collect *c = arg;
  if (!pick_unit(c->p, u))
    return true;
  UTIL_GROW(c->u, c->n, c->cap, 8);
  c->u[c->n++] = u;
  return true;
}

/* message fail: take the message's queued units out and fail them. */
static void fail_units(struct ctl_wpart *p, struct worker *w, struct dq *d)
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

static void part_done(struct ctl_wpart *p)
{
  struct ctl_wq *q = p->q;
  pthread_mutex_lock(&q->mu);
  q->pending--;
  pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
  ctl_wq_unref(q);
}

static void on_mx(void *arg, const struct dns_result *res)
{
  struct ctl_wpart *p = arg;
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
  struct ctl_wpart *p = arg;
  struct ctl_wq *q = p->q;
  struct worker *w = q->nparts ? q->sh->workers[p->idx] : NULL;
  struct dq *d = w ? worker_dq(w) : NULL;
  if (d) {
    struct visit v = {.p = p, .d = d};
    switch (q->op) {
    case CTL_WOP_STATS:
      p->ready = dq_total_ready(d);
      p->deferred = dq_total_deferred(d);
      p->queues = dq_queue_count(d);
      p->active = dq_active_count(d);
      p->sessions = worker_nsessions(w);
      p->inflight = ring_ops_inflight(worker_ring(w));
      p->timers = ring_timer_count(worker_ring(w));
      break;
    case CTL_WOP_QUEUES:
    case CTL_WOP_LIMITS:
      dq_foreach(d, visit_queue, &v);
      break;
    case CTL_WOP_UNITS:
      if (q->limit)
        dq_foreach_unit(d, visit_unit, &v);
      break;
    case CTL_WOP_HASTEN:
      p->hastened = dq_hasten(d, pick_unit, p, clock_wall_ms());
      break;
    case CTL_WOP_FAIL:
      fail_units(p, w, d);
      break;
    case CTL_WOP_MX:
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

struct ctl_wq *ctl_wq_new(struct engine_shared *sh, enum ctl_wop op)
{
  unsigned n = sh->nworkers;
  struct ctl_wq *q = util_xcalloc(1, sizeof *q + n * sizeof q->parts[0]);
  atomic_init(&q->refs, 1);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  q->sh = sh;
  q->op = op;
  q->nparts = n;
  q->limit = CTL_PAGE_MAX;
  for (unsigned i = 0; i < n; i++) {
    q->parts[i].q = q;
    q->parts[i].idx = i;
  }
  return q;
}

int ctl_wq_run(struct ctl_wq *q)
{
  q->pending = q->nparts;
  for (unsigned i = 0; i < q->nparts; i++) {
    atomic_fetch_add(&q->refs, 1);
    ring_post(worker_ring(q->sh->workers[i]), run_part, &q->parts[i]);
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
