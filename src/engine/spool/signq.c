/* signq.c owns the messages being signed off the ingest thread
 * (on_sign_prep / on_sign_async): a checked message that must be signed
 * leaves the batch being built (signq_defer keeps a copy of its file and
 * its pickup name, or its submission), goes out in a group
 * (signq_launch), and once the group's signatures are done
 * (spool_sign_done, from a signer thread) its journal entries go into the
 * batch then being built (signq_collect): so exactly once, with the
 * signature, and durable before the engine sees the message. The pickup
 * file stays claimed meanwhile, under its tomb (Pickup_Claim = rename; a
 * crash requeues it: recover_tombs) or in the claimed directory
 * (exchange: wait_work lets no exchange hand it back before it is
 * written; a crash leaves it there for the next exchange); a submission
 * gets no reply. It never writes the journal itself, never removes a
 * pickup file, never logs.
 * Threads: spool_sign_done from any thread; everything else on the ingest
 * thread (signq_init/signq_free with spool_open/spool_close). */
#include "spool_int.h"

/* Messages launched and not yet signed before the ingest thread waits
 * (back-pressure: memory for the copies, and a bound on how far taking
 * runs ahead of the signers), and the same in bytes. */
#define SIGNQ_MAX_MSGS_PER_BATCH 4u
#define SIGNQ_MAX_BYTES (64u * 1024u * 1024u)
/* Messages per group: small enough that the first signed ones are
 * committed soon, big enough that a group costs little per message. */
#define SIGNQ_GROUP 32u

struct sitem {
  struct spool_msg *msg;
  char *name;            /* its pickup name (owned; the file is under its tomb), or NULL */
  struct spool_sub *sub; /* a submission, or NULL */
  uint8_t *data;         /* a copy of what was taken (owned) */
  size_t len;
  struct pinfo pi;
  struct buf hdr;        /* what prep appended, then the signer's fields */
};

struct spool_sign_group {
  struct spool_sign_group *next;
  struct spool *sp;
  struct sitem *it;
  size_t n, cap, bytes;
  struct spool_sign_job *jobs;
  bool done; /* under signq.mu */
};

struct signq {
  pthread_mutex_t mu;
  pthread_cond_t cond;                 /* a group is done */
  struct spool_sign_group *build;      /* being filled (ingest thread) */
  struct spool_sign_group *head, *tail; /* launched, oldest first (the list under mu) */
  size_t pending, pending_bytes;       /* launched and not done (under mu) */
  atomic_size_t ready;                 /* done and not collected */
};

void signq_init(struct spool *sp)
{
  if (!sp->p.on_sign_async || !sp->p.on_sign_prep)
    return;
  struct signq *q = util_xcalloc(1, sizeof(*q));
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cond, NULL);
  sp->signq = q;
}

static void group_free(struct spool *sp, struct spool_sign_group *g, bool dropped)
{
  for (size_t i = 0; g && i < g->n; i++) {
    struct sitem *x = &g->it[i];
    if (dropped) { /* never written: the tomb stays (recovery requeues it) */
      spool_msg_free(x->msg);
      free(x->name);
      if (x->sub)
        sub_finish(sp, x->sub, -ESHUTDOWN, NULL, NULL);
    }
    free(x->data);
    buf_done(&x->hdr, 0);
  }
  if (g) {
    free(g->it);
    free(g->jobs);
    free(g);
  }
}

bool signq_ready(const struct spool *sp)
{
  return sp->signq && atomic_load_explicit(&sp->signq->ready, memory_order_acquire) > 0;
}

bool signq_busy(const struct spool *sp)
{
  return sp->signq && (sp->signq->head || (sp->signq->build && sp->signq->build->n));
}

void signq_wait_all(struct spool *sp)
{
  struct signq *q = sp->signq;
  if (!q)
    return;
  pthread_mutex_lock(&q->mu);
  while (q->pending > 0)
    pthread_cond_wait(&q->cond, &q->mu);
  pthread_mutex_unlock(&q->mu);
}

void signq_throttle(struct spool *sp)
{
  struct signq *q = sp->signq;
  if (!q)
    return;
  size_t max = (size_t)sp->p.batch_max * SIGNQ_MAX_MSGS_PER_BATCH;
  pthread_mutex_lock(&q->mu);
  while (q->pending > 0 && (q->pending >= max || q->pending_bytes >= SIGNQ_MAX_BYTES))
    pthread_cond_wait(&q->cond, &q->mu);
  pthread_mutex_unlock(&q->mu);
}

void signq_launch(struct spool *sp)
{
  struct signq *q = sp->signq;
  struct spool_sign_group *g = q ? q->build : NULL;
  if (!g || !g->n)
    return;
  q->build = NULL;
  g->jobs = util_xmalloc(g->n * sizeof(*g->jobs));
  for (size_t i = 0; i < g->n; i++) {
    struct sitem *x = &g->it[i];
    g->jobs[i] = (struct spool_sign_job){x->msg, x->data + x->msg->body_off,
                                         (size_t)x->msg->body_size, &x->hdr};
  }
  pthread_mutex_lock(&q->mu);
  if (q->tail)
    q->tail->next = g;
  else
    q->head = g;
  q->tail = g;
  q->pending += g->n;
  q->pending_bytes += g->bytes;
  pthread_mutex_unlock(&q->mu);
  sp->p.on_sign_async(sp->p.arg, g->jobs, g->n, g); /* g may be done (not freed) on return */
}

int signq_defer(struct spool *sp, const char *name, const uint8_t *data, size_t len,
                const struct pinfo *pi, struct spool_msg *m, const struct buf *hdr)
{
  struct signq *q = sp->signq;
  if (!q->build) {
    q->build = util_xcalloc(1, sizeof(*q->build));
    q->build->sp = sp;
  }
  struct spool_sign_group *g = q->build;
  if (g->n == g->cap) {
    g->cap = g->cap ? g->cap * 2 : SIGNQ_GROUP;
    g->it = util_xrealloc(g->it, g->cap * sizeof(*g->it));
  }
  struct sitem *x = &g->it[g->n++];
  *x = (struct sitem){.msg = m, .name = (char *)(uintptr_t)name, .sub = sp->take_sub,
                      .len = len, .pi = *pi};
  if (sp->take_sub) { /* the submission's bytes are its own: keep them */
    x->data = sp->take_sub->data;
    sp->take_sub->data = NULL;
  } else { /* the read-ahead arena (or rbuf) is reused by the next files */
    x->data = util_xmalloc(len ? len : 1);
    memcpy(x->data, data, len);
  }
  buf_append(&x->hdr, hdr->data, hdr->len);
  g->bytes += len;
  sp->round_signing++;
  if (g->n >= SIGNQ_GROUP)
    signq_launch(sp);
  return 4;
}

void spool_sign_done(struct spool_sign_group *g)
{
  struct spool *sp = g->sp;
  struct signq *q = sp->signq;
  pthread_mutex_lock(&q->mu);
  g->done = true;
  q->pending -= g->n;
  q->pending_bytes -= g->bytes;
  atomic_fetch_add_explicit(&q->ready, 1, memory_order_release);
  pthread_cond_broadcast(&q->cond);
  /* wake the ingest thread (wait_work) without asking for a listing;
   * under mu: spool_close waits for pending to reach 0 before closing it */
  uint64_t one = 1;
  ssize_t r = write(sp->wake_fd, &one, sizeof(one));
  (void)r;
  pthread_mutex_unlock(&q->mu);
}

size_t signq_collect(struct spool *sp, struct jbatch *bt)
{
  struct signq *q = sp->signq;
  if (!q || !atomic_load_explicit(&q->ready, memory_order_acquire))
    return 0;
  struct spool_sign_group *done = NULL, **dt = &done;
  size_t n = 0, groups = 0;
  pthread_mutex_lock(&q->mu);
  struct spool_sign_group *prev = NULL;
  for (struct spool_sign_group *g = q->head, *next; g; g = next) {
    next = g->next;
    if (!g->done) {
      prev = g;
      continue;
    }
    if (prev)
      prev->next = next;
    else
      q->head = next;
    if (q->tail == g)
      q->tail = prev;
    g->next = NULL;
    *dt = g;
    dt = &g->next;
    n += g->n;
    groups++;
  }
  atomic_fetch_sub_explicit(&q->ready, groups, memory_order_relaxed);
  pthread_mutex_unlock(&q->mu);
  if (!n)
    return 0;
  bt->c = util_xrealloc(bt->c, (bt->n + n) * sizeof(*bt->c));
  for (struct spool_sign_group *g = done, *next; g; g = next) {
    next = g->next;
    for (size_t i = 0; i < g->n; i++) {
      struct sitem *x = &g->it[i];
      struct jtake *t = &bt->c[bt->n++];
      jrn_emit(sp, x->name, x->data, &x->pi, x->msg, false, x->hdr.data, x->hdr.len, t);
      t->name = x->name;
      t->sub = x->sub;
    }
    group_free(sp, g, false);
  }
  return n;
}

void signq_free(struct spool *sp)
{
  struct signq *q = sp->signq;
  if (!q)
    return;
  signq_wait_all(sp); /* no signer still writes into a group */
  group_free(sp, q->build, true);
  for (struct spool_sign_group *g = q->head, *next; g; g = next) {
    next = g->next;
    group_free(sp, g, true);
  }
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->cond);
  free(q);
  sp->signq = NULL;
}
