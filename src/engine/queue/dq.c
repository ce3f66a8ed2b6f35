/* dq.c owns a worker's delivery queues: the (binding, domain) table, the
 * ready lists, the active round-robin list and the deferred min-heap.
 * Worker thread only; never logs, never reads a clock; allocates only when
 * a queue is created or the heap grows. */
#include "dq.h"
#include "dlist.h"
#include "fifo.h"
#include "hash.h"
#include "panic.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct dq_queue {
  struct dq_queue *hnext;               /* hash chain */
  struct dlist_node alink;              /* active list (has ready units) */
  bool active;
  char *binding;
  char *domain;                         /* lower case */
  uint64_t cred;                        /* credential identity (0: none) */
  struct dq_unit *head, *tail;          /* ready units, oldest first */
  size_t nready;
  size_t ndeferred;
  struct dq_queue_state st;
};

struct dq {
  struct dq_queue **tab;
  size_t tabsize; /* power of two */
  size_t nqueues;
  struct dlist active;                  /* queues with ready units (dq_queue.alink) */
  size_t nactive;
  struct dq_unit **heap;
  size_t nheap, heapcap;
  size_t nready;
};

struct dq_unit *dq_unit_new(uint32_t n)
{
  struct dq_unit *u = util_xcalloc(1, sizeof *u + (size_t)n * sizeof u->rcpt[0]);
  u->nrcpt = n;
  return u;
}

void dq_unit_free(struct dq_unit *u)
{
  free(u);
}

struct dq *dq_new(void)
{
  struct dq *d = util_xcalloc(1, sizeof *d);
  d->tabsize = 64;
  d->tab = util_xcalloc(d->tabsize, sizeof *d->tab);
  return d;
}

static uint64_t qhash(const char *binding, const char *domain, uint64_t cred)
{
  char tmp[616];
  size_t w = 0;
  for (const char *s = binding; *s && w < 280; s++)
    tmp[w++] = *s;
  tmp[w++] = '\0';
  for (const char *s = domain; *s && w < sizeof tmp - 8; s++)
    tmp[w++] = (char)((*s >= 'A' && *s <= 'Z') ? *s + 32 : *s);
  for (int i = 0; i < 8; i++)
    tmp[w++] = (char)(cred >> (8 * i));
  return hash_sip(hash_process_key(), tmp, w);
}

void dq_free(struct dq *d, void (*free_unit)(void *arg, struct dq_unit *u), void *arg)
{
  if (d == NULL)
    return;
  for (size_t i = 0; i < d->nheap; i++) {
    if (free_unit)
      free_unit(arg, d->heap[i]);
    else
      free(d->heap[i]);
  }
  for (size_t i = 0; i < d->tabsize; i++) {
    for (struct dq_queue *q = d->tab[i], *n; q; q = n) {
      n = q->hnext;
      for (struct dq_unit *u = q->head, *un; u; u = un) {
        un = u->next;
        if (free_unit)
          free_unit(arg, u);
        else
          free(u);
      }
      free(q->binding);
      free(q->domain);
      free(q);
    }
  }
  free(d->tab);
  free(d->heap);
  free(d);
}

static void grow_table(struct dq *d)
{
  size_t ns = d->tabsize * 2;
  struct dq_queue **nt = util_xcalloc(ns, sizeof *nt);
  for (size_t i = 0; i < d->tabsize; i++) {
    for (struct dq_queue *q = d->tab[i], *n; q; q = n) {
      n = q->hnext;
      size_t b = qhash(q->binding, q->domain, q->cred) & (ns - 1);
      q->hnext = nt[b];
      nt[b] = q;
    }
  }
  free(d->tab);
  d->tab = nt;
  d->tabsize = ns;
}

struct dq_queue *dq_queue(struct dq *d, const char *binding, const char *domain)
{
  return dq_queue_cred(d, binding, domain, 0);
}

struct dq_queue *dq_queue_cred(struct dq *d, const char *binding, const char *domain, uint64_t cred)
{
  if (binding == NULL)
    binding = "default";
  if (domain == NULL)
    domain = "";
  size_t b = qhash(binding, domain, cred) & (d->tabsize - 1);
  for (struct dq_queue *q = d->tab[b]; q; q = q->hnext)
    if (q->cred == cred && !strcmp(q->binding, binding) && !strcasecmp(q->domain, domain))
      return q;
  /* the pair's shared connection count lives in its cred-0 queue (made
   * first: the table may grow under it) */
  struct sched_acct *pair = cred ? dq_queue_cred(d, binding, domain, 0)->st.pair : NULL;
  if (d->nqueues + 1 > d->tabsize)
    grow_table(d);
  b = qhash(binding, domain, cred) & (d->tabsize - 1);
  struct dq_queue *q = util_xcalloc(1, sizeof *q);
  q->st.pair = pair ? pair : &q->st.pair_acct;
  q->cred = cred;
  q->binding = util_xstrdup(binding);
  q->domain = util_xstrdup(domain);
  for (char *p = q->domain; *p; p++)
    if (*p >= 'A' && *p <= 'Z')
      *p = (char)(*p + 32);
  q->hnext = d->tab[b];
  d->tab[b] = q;
  d->nqueues++;
  return q;
}

const char *dq_queue_binding(const struct dq_queue *q) { return q->binding; }
const char *dq_queue_domain(const struct dq_queue *q) { return q->domain; }
uint64_t dq_queue_cred_id(const struct dq_queue *q) { return q->cred; }
struct dq_queue_state *dq_queue_state(struct dq_queue *q) { return &q->st; }
size_t dq_queue_ready(const struct dq_queue *q) { return q->nready; }
size_t dq_queue_deferred(const struct dq_queue *q) { return q->ndeferred; }

static void activate(struct dq *d, struct dq_queue *q)
{
  if (q->active)
    return;
  q->active = true;
  d->nactive++;
  dlist_push_back(&d->active, &q->alink);
}

static void deactivate(struct dq *d, struct dq_queue *q)
{
  if (!q->active)
    return;
  q->active = false;
  d->nactive--;
  dlist_remove(&d->active, &q->alink);
}

static void ready_append(struct dq *d, struct dq_queue *q, struct dq_unit *u)
{
  FIFO_PUSH(q->head, q->tail, u);
  q->nready++;
  d->nready++;
  activate(d, q);
}

/* ---- the deferred heap (by due_ms) ---- */

static void heap_set(struct dq *d, size_t i, struct dq_unit *u)
{
  d->heap[i] = u;
  u->heap_idx = (uint32_t)(i + 1);
}

static void sift_up(struct dq *d, size_t i)
{
  struct dq_unit *u = d->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (d->heap[p]->due_ms <= u->due_ms)
      break;
    heap_set(d, i, d->heap[p]);
    i = p;
  }
  heap_set(d, i, u);
}

static void sift_down(struct dq *d, size_t i)
{
  struct dq_unit *u = d->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= d->nheap)
      break;
    if (c + 1 < d->nheap && d->heap[c + 1]->due_ms < d->heap[c]->due_ms)
      c++;
    if (u->due_ms <= d->heap[c]->due_ms)
      break;
    heap_set(d, i, d->heap[c]);
    i = c;
  }
  heap_set(d, i, u);
}

static void heap_push(struct dq *d, struct dq_unit *u)
{
  if (d->nheap == d->heapcap) {
    d->heapcap = d->heapcap ? d->heapcap * 2 : 64;
    d->heap = util_xrealloc(d->heap, d->heapcap * sizeof *d->heap);
  }
  d->heap[d->nheap] = u;
  sift_up(d, d->nheap++);
}

static struct dq_unit *heap_pop(struct dq *d)
{
  struct dq_unit *top = d->heap[0];
  top->heap_idx = 0;
  if (--d->nheap > 0) {
    d->heap[0] = d->heap[d->nheap];
    sift_down(d, 0);
  }
  return top;
}

/* ---- public ---- */

void dq_push(struct dq *d, struct dq_queue *q, struct dq_unit *u, uint64_t now_ms)
{
  u->q = q;
  if (u->due_ms <= now_ms) {
    ready_append(d, q, u);
  } else {
    q->ndeferred++;
    heap_push(d, u);
  }
}

void dq_unpop(struct dq *d, struct dq_unit *u)
{
  struct dq_queue *q = u->q;
  u->next = q->head;
  q->head = u;
  if (q->tail == NULL)
    q->tail = u;
  q->nready++;
  d->nready++;
  activate(d, q);
}

struct dq_unit *dq_pop(struct dq *d, struct dq_queue *q)
{
  struct dq_unit *u = q->head;
  if (u == NULL)
    return NULL;
  q->head = u->next;
  if (q->head == NULL) {
    q->tail = NULL;
    deactivate(d, q);
  }
  u->next = NULL;
  q->nready--;
  d->nready--;
  return u;
}

size_t dq_promote(struct dq *d, uint64_t now_ms)
{
  size_t n = 0;
  while (d->nheap > 0 && d->heap[0]->due_ms <= now_ms) {
    struct dq_unit *u = heap_pop(d);
    u->q->ndeferred--;
    ready_append(d, u->q, u);
    n++;
  }
  return n;
}

uint64_t dq_next_due(const struct dq *d)
{
  return d->nheap ? d->heap[0]->due_ms : UINT64_MAX;
}

struct dq_queue *dq_next_active(struct dq *d)
{
  if (d->active.head == NULL)
    return NULL;
  struct dq_queue *q = DLIST_ENTRY(d->active.head, struct dq_queue, alink);
  if (d->active.head != d->active.tail) { /* rotate: the next call starts with another queue */
    deactivate(d, q);
    activate(d, q);
  }
  return q;
}

size_t dq_total_ready(const struct dq *d) { return d->nready; }
size_t dq_total_deferred(const struct dq *d) { return d->nheap; }
size_t dq_queue_count(const struct dq *d) { return d->nqueues; }
size_t dq_active_count(const struct dq *d) { return d->nactive; }

void dq_foreach(struct dq *d, void (*fn)(void *arg, struct dq_queue *q), void *arg)
{
  for (size_t i = 0; i < d->tabsize; i++)
    for (struct dq_queue *q = d->tab[i]; q; q = q->hnext)
      fn(arg, q);
}

/* ---- console (ctl.c): listing and hastening units ---- */

bool dq_foreach_unit(struct dq *d, bool (*fn)(void *arg, struct dq_unit *u, bool deferred),
                     void *arg)
{
  for (size_t i = 0; i < d->tabsize; i++)
    for (struct dq_queue *q = d->tab[i]; q; q = q->hnext)
      for (struct dq_unit *u = q->head; u; u = u->next)
        if (!fn(arg, u, false))
          return false;
  for (size_t i = 0; i < d->nheap; i++)
    if (!fn(arg, d->heap[i], true))
      return false;
  return true;
}

size_t dq_hasten(struct dq *d, bool (*pick)(void *arg, struct dq_unit *u), void *arg,
                 uint64_t now_ms)
{
  size_t n = 0;
  for (size_t i = 0; i < d->nheap; i++)
    if (pick(arg, d->heap[i])) {
      d->heap[i]->due_ms = now_ms;
      n++;
    }
  for (size_t i = d->nheap / 2 + 1; n > 0 && i-- > 0;)
    sift_down(d, i);
  dq_promote(d, now_ms);
  return n;
}

void dq_remove(struct dq *d, struct dq_unit *u)
{
  struct dq_queue *q = u->q;
  if (u->heap_idx) {
    size_t i = u->heap_idx - 1;
    u->heap_idx = 0;
    q->ndeferred--;
    if (i != --d->nheap) {
      struct dq_unit *x = d->heap[d->nheap];
      heap_set(d, i, x);
      sift_up(d, i);
      sift_down(d, x->heap_idx - 1);
    }
    return;
  }
  struct dq_unit **pp = &q->head, *prev = NULL;
  while (*pp && *pp != u) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  if (*pp == NULL)
    return; /* not queued here */
  *pp = u->next;
  if (q->tail == u)
    q->tail = prev;
  u->next = NULL;
  q->nready--;
  d->nready--;
  if (q->head == NULL)
    deactivate(d, q);
}
