/* ingest.c owns the batches of spool_start's pipeline: building a batch
 * from pickup files (claim.c claims them, take.c turns each into a journal
 * entry) and submissions, writing it to the journal, group commit, then
 * removing the batch's pickup files and handing its messages over; the
 * three threads (ingest, commit, unlink), spool_ingest, start/stop and the
 * counters. It never removes a pickup file before its message is durable,
 * never writes a secret, never logs.
 * Threads: spool_ingest on one thread at a time (the ingest thread);
 * spool_kick, spool_last_error and spool_get_stats from any thread. */
#include "spool_int.h"
#include "spool_test.h"

int syncfs_counted(struct spool *sp)
{
  return sync_timed(sp, sp->queue_fd, 2);
}

void spool_get_stats(const struct spool *sp, struct spool_stats *out)
{
  out->ingested = atomic_load_explicit(&sp->st_ingested, memory_order_relaxed);
  out->rejected = atomic_load_explicit(&sp->st_rejected, memory_order_relaxed);
  out->batches = atomic_load_explicit(&sp->st_batches, memory_order_relaxed);
  out->syncs = atomic_load_explicit(&sp->st_syncs, memory_order_relaxed);
  out->recovered = atomic_load_explicit(&sp->st_recovered, memory_order_relaxed);
  out->ring_reads = atomic_load_explicit(&sp->st_ring_reads, memory_order_relaxed);
  out->ctx_loads = atomic_load_explicit(&sp->st_ctx_loads, memory_order_relaxed);
  histo_read(&sp->st_sync_lat, &out->sync_latency);
}

bool (*spool_test_keep_pickup)(const char *name);
void (*spool_test_before_forget)(void);

/* Where t's claimed pickup file is in claim_fd: its tomb ".c.<message
 * id>" (claim_prep) with Pickup_Claim = rename, else its own name in the
 * claimed directory. out: SPOOL_ID_LEN + 4 bytes. */
static const char *claimed_at(const struct spool *sp, const struct jtake *t, char *out)
{
  if (sp->exchange)
    return t->name;
  char id[SPOOL_ID_LEN + 1];
  snprintf(out, SPOOL_ID_LEN + 4, ".c.%s", spool_msg_id_str(t->msg, id));
  return out;
}

/* t's pickup file could not be removed (err): it goes to bad/, its message stays queued. */
static void forget_failed(struct spool *sp, const struct jtake *t, const char *at, int err)
{
  char why[256], id[SPOOL_ID_LEN + 1];
  snprintf(why, sizeof(why), "queued as %s, but the pickup file could not be removed (%s)",
           spool_msg_id_str(t->msg, id), strerror(err));
  to_bad(sp, sp->claim_fd, at, t->name, why, id);
}

/* A pickup file whose message is durable in the journal is removed: one
 * unlink where it was claimed (claimed_at: it was claimed before it was
 * read, so that holds exactly the file read; a name a producer reuses
 * afterwards holds another file, which is never touched). */
static void jrn_forget_pickup(struct spool *sp, const struct jtake *t)
{
  if (!t->name)
    return; /* a submission: no pickup file */
  if (spool_test_keep_pickup && spool_test_keep_pickup(t->name))
    return; /* as if the process died here */
  char tb[SPOOL_ID_LEN + 4];
  const char *at = claimed_at(sp, t, tb);
  if (unlinkat(sp->claim_fd, at, 0) == 0 || errno == ENOENT)
    return;
  forget_failed(sp, t, at, errno);
}

/* Remove a durable batch's pickup files: one ring
 * submission of unlinks, else, and for what the ring could not do,
 * unlinkat calls. */
static void jrn_forget_all(struct spool *sp, struct jbatch *bt)
{
  if (spool_test_before_forget)
    spool_test_before_forget();
  size_t files = 0;
  for (size_t i = 0; i < bt->n; i++)
    files += bt->c[i].name != NULL;
  if (files == 0)
    return;
  struct iobatch *ib = iobatch_get(&sp->iunlink, &sp->iunlink_tried, sp->p.batch_max, false);
  if (ib && !spool_test_keep_pickup && files <= ib->cap) {
    char **names = util_xmalloc(files * sizeof(*names));
    char (*tb)[SPOOL_ID_LEN + 4] = sp->exchange ? NULL : util_xmalloc(files * sizeof(*tb));
    size_t *who = util_xmalloc(files * sizeof(*who));
    unsigned nu = 0;
    for (size_t i = 0; i < bt->n; i++) {
      if (!bt->c[i].name)
        continue;
      names[nu] = (char *)(uintptr_t)claimed_at(sp, &bt->c[i], tb ? tb[nu] : NULL);
      who[nu++] = i;
    }
    int r = iobatch_unlink(ib, sp->claim_fd, names, nu);
    for (unsigned k = 0; k < nu; k++) {
      int res = r == 0 ? ib->res[k] : -ECANCELED;
      if (res == -ECANCELED) /* the ring failed before it */
        jrn_forget_pickup(sp, &bt->c[who[k]]);
      else if (res < 0 && res != -ENOENT)
        forget_failed(sp, &bt->c[who[k]], names[k], -res);
    }
    free(who);
    free(tb);
    free(names);
    return;
  }
  for (size_t i = 0; i < bt->n; i++)
    jrn_forget_pickup(sp, &bt->c[i]);
}

/* A batch that could not be made durable: its pickup files go back
 * under their names for the next round (unclaim_at; with Pickup_Claim =
 * exchange they stay in the claimed directory, which the next exchange
 * puts back under the pickup name), and what reached the segment is
 * retired so it can never be taken for mail. */
static void jrn_batch_fail(struct spool *sp, struct jbatch *bt, bool put, int err)
{
  struct buf done = {0};
  uint32_t *unpin = util_xmalloc(bt->n * sizeof(*unpin));
  for (size_t i = 0; i < bt->n; i++) {
    if (bt->c[i].name && !sp->exchange) {
      char tb[SPOOL_ID_LEN + 4];
      unclaim_at(sp, claimed_at(sp, &bt->c[i], tb), bt->c[i].name, false); /* read whole */
    }
    if (bt->c[i].sub)
      sub_finish(sp, bt->c[i].sub, err < 0 ? err : -EIO, NULL, NULL);
    rec_done(&done, bt->c[i].msg);
    unpin[i] = bt->seg;
    spool_msg_free(bt->c[i].msg);
    free(bt->c[i].name);
  }
  if (put)
    jrn_retire(sp, &done, unpin, (uint32_t)bt->n);
  buf_done(&done, 0);
  free(unpin);
  free(bt->c);
  free(bt);
}

/* A durable batch: remove its pickup files, then hand the messages over. */
static void jrn_batch_done(struct spool *sp, struct jbatch *bt)
{
  for (size_t i = 0; i < bt->n; i++) {
    struct spool_msg *m = bt->c[i].msg;
    m->jseg = bt->seg;
    m->body_off += bt->base + bt->c[i].at;
    m->ctx_off += (uint32_t)(bt->base + bt->c[i].at);
  }
  jrn_forget_all(sp, bt);
  for (size_t i = 0; i < bt->n; i++)
    free(bt->c[i].name);
  atomic_fetch_add_explicit(&sp->st_ingested, bt->n, memory_order_relaxed);
  atomic_fetch_add_explicit(&sp->st_batches, 1, memory_order_relaxed);
  for (size_t i = 0; i < bt->n; i++) {
    char id[SPOOL_ID_LEN + 1];
    if (bt->c[i].sub)
      spool_msg_id_str(bt->c[i].msg, id); /* before the engine owns the message */
    sp->p.on_msg(sp->p.arg, bt->c[i].msg);
    if (bt->c[i].sub)
      sub_finish(sp, bt->c[i].sub, 0, id, NULL);
  }
  if (sp->p.on_batch_end)
    sp->p.on_batch_end(sp->p.arg);
  free(bt->c);
  free(bt);
}

/* Append the batches from `list` on (under qlock) and wake the taker. */
static void jq_put(struct jqueue *q, struct jbatch *list)
{
  struct jbatch *last = list;
  while (last->next)
    last = last->next;
  if (q->tail)
    q->tail->next = list;
  else
    q->head = list;
  q->tail = last;
  pthread_cond_signal(&q->cond);
}

/* Wait (under qlock) for batches and take them all; NULL once the queue
 * is stopped and empty. */
static struct jbatch *jq_take(struct spool *sp, struct jqueue *q)
{
  while (!q->head && !q->stop)
    pthread_cond_wait(&q->cond, &sp->qlock);
  struct jbatch *list = q->head;
  q->head = q->tail = NULL;
  return list;
}

/* nb batches left the pipeline (under qlock). */
static void jq_finished(struct spool *sp, unsigned nb)
{
  sp->inflight -= nb;
  if (sp->inflight == 0)
    pthread_cond_broadcast(&sp->qdrained);
}

/* Stop the thread taking from q once it has emptied it, and join it. */
static void jq_stop(struct spool *sp, struct jqueue *q, pthread_t th)
{
  pthread_mutex_lock(&sp->qlock);
  q->stop = true;
  pthread_cond_signal(&q->cond);
  pthread_mutex_unlock(&sp->qlock);
  pthread_join(th, NULL);
}

/* Bytes in the batch being built. */
static size_t batch_len(const struct spool *sp) { return sp->jbuf.len + sp->jrefbytes; }

/* The ring's slot for files of about avg bytes (0: do not use the ring). */
static size_t slot_for(uint64_t avg)
{
  if (avg <= PRE_BUF / 2)
    return PRE_BUF;
  if (avg > SLOT_MAX / 2)
    return 0;
  return ((size_t)avg * 2 + 4095) & ~(size_t)4095;
}

/* Append the batch (jbuf with the jrefs bodies in their places) with one
 * pwritev, as jrn_put does. */
static int jrn_put_batch(struct spool *sp, uint32_t npins, uint32_t *seg, uint64_t *off)
{
  if (sp->njrefs == 0)
    return jrn_put(sp, sp->jbuf.data, sp->jbuf.len, npins, seg, off);
  if (2 * sp->njrefs + 1 > sp->capjiov) {
    sp->capjiov = 2 * sp->njrefs + 1;
    sp->jiov = util_xrealloc(sp->jiov, sp->capjiov * sizeof(*sp->jiov));
  }
  int cnt = 0;
  size_t prev = 0;
  for (size_t i = 0; i < sp->njrefs; i++) {
    const struct jref *j = &sp->jrefs[i];
    if (j->at > prev)
      sp->jiov[cnt++] = (struct iovec){sp->jbuf.data + prev, j->at - prev};
    sp->jiov[cnt++] = (struct iovec){(void *)(uintptr_t)j->p, j->len};
    prev = j->at;
  }
  if (sp->jbuf.len > prev)
    sp->jiov[cnt++] = (struct iovec){sp->jbuf.data + prev, sp->jbuf.len - prev};
  return jrn_putv(sp, sp->jiov, cnt, batch_len(sp), npins, seg, off);
}

/* One journal round over the pending names: read and parse up to
 * batch_max files (or JRN_BATCH_BYTES) into one buffer and append it with
 * one write. Then make it durable with one sync, remove the pickup files
 * and hand the messages over, here or (pipelined) on the commit and unlink threads. */
static long ingest_journal(struct spool *sp)
{
  size_t max = sp->p.sync == SPOOL_SYNC_ALWAYS ? 1 : sp->p.batch_max;
  signq_throttle(sp); /* not too far ahead of the signers */
  sp->round_signing = 0;
  struct jbatch *bt = util_xcalloc(1, sizeof(*bt));
  /* malloc + memset, not calloc: jemalloc zeroes a reused large extent
   * (512 x 56 bytes: 32 KB) with madvise(MADV_DONTNEED), one system call,
   * TLB shootdown and 8 page faults per batch (issue 21: ~95 % of the
   * engine's madvise calls under SMTP injection) */
  bt->c = util_xmalloc(max * sizeof(*bt->c));
  memset(bt->c, 0, max * sizeof(*bt->c));
  sp->jbuf.len = sp->jbuf.off = 0;
  sp->njrefs = sp->jrefbytes = 0;
  iobatch_get(&sp->iread, &sp->iread_tried, sp->p.batch_max, true);
  /* Keep the inotify queue short while a long listing is taken (a burst
   * of renames would overflow it, and every name whose event was lost is
   * then checked for a writer). */
  if (read_events(sp))
    sp->scan_due = true;
  size_t used = 0; /* arena bytes holding this batch's files */
  /* Submissions first (their senders wait for the reply): the same
   * checks, records and group commit as pickup files. */
  /* With on_sign_batch they are signed together, on the signer pool. */
  size_t sub0 = bt->n;
  sp->deferring = sp->p.on_sign_batch != NULL;
  for (struct spool_sub *s = sub_take(sp, max), *next; s; s = next) {
    next = s->next;
    s->next = NULL;
    struct pinfo pi = {0, 0, 0};
    sp->sub_why[0] = 0;
    sp->take_sub = s;
    int r = bt->n < max ? jrn_take_data(sp, NULL, NULL, 0, s->data, s->len, &pi, -1, false,
                                        &bt->c[bt->n])
                        : 1;
    sp->take_sub = NULL;
    if (r == 4) /* being signed (signq.c): it has its reply once written */
      continue;
    if (r == 0) {
      bt->c[bt->n].name = NULL;
      bt->c[bt->n++].sub = s;
    } else {
      sub_finish(sp, s, -EBADMSG, NULL, sp->sub_why[0] ? sp->sub_why : "rejected");
    }
  }
  sp->deferring = false;
  jrn_flush_deferred(sp);
  for (size_t i = sub0; i < bt->n; i++) { /* copied into the batch */
    free(bt->c[i].sub->data);
    bt->c[i].sub->data = NULL;
  }
  /* messages handed to the signers (round_signing) count toward max */
  while (bt->n + sp->round_signing < max && sp->inames < sp->nnames &&
         batch_len(sp) < JRN_BATCH_BYTES) {
    size_t k = sp->nnames - sp->inames;
    if (k > max - bt->n - sp->round_signing)
      k = max - bt->n - sp->round_signing;
    /* read ahead about what fits in the batch's bytes, going by the last
     * batch's files */
    size_t fit = (JRN_BATCH_BYTES - batch_len(sp)) / (sp->avg_file ? sp->avg_file : 1) + 1;
    if (k > fit)
      k = fit;
    if (k > RING_SUB)
      k = RING_SUB;
    size_t slot = slot_for(sp->avg_file);
    struct iobatch *ib = sp->iread;
    if (ib && slot) {
      if (k > ib->cap)
        k = ib->cap;
      if (used + k * slot > ib->bufcap) {
        if (used == 0) { /* nothing of this batch is in it yet */
          free(ib->buf);
          ib->bufcap = k * slot;
          ib->buf = util_xmalloc(ib->bufcap);
        } else if ((k = (ib->bufcap - used) / slot) == 0) {
          break; /* the arena is full: write this batch */
        }
      }
      /* files renamed in are claimed (by the exchange, or renamed to
       * their tombs here), then read; files not renamed in are read
       * under a read lease and claimed under it (issue 18 items 2 and 3).
       * The tomb renames queue an IN_MOVED_TO each: during a burst of
       * renames in they, and the producers' own, would fill the inotify
       * queue (16,384 events by default), and every name whose event the
       * kernel drops takes the slower path of a file written in place.
       * Reading the events per group keeps the queue short. */
      if (read_events(sp))
        sp->scan_due = true;
      claim_group(sp, ib, sp->names + sp->inames, k);
      lease_group(sp, sp->names + sp->inames, k);
      int rr = iobatch_read(ib, sp->claim_fd, sp->names + sp->inames, (unsigned)k,
                            atomic_load_explicit(&sp->noatime, memory_order_relaxed) ? O_NOATIME
                                                                                      : 0,
                            ib->buf + used, slot, slot > PRE_BUF);
      lease_group_done(sp, sp->names + sp->inames, ib->pre, k);
      if (rr == 0) {
        used += k * slot;
        /* With on_sign_batch the group's messages are checked first, then
         * signed together, then written. */
        sp->deferring = sp->p.on_sign_batch != NULL;
        for (size_t j = 0; j < k && batch_len(sp) < JRN_BATCH_BYTES; j++) {
          struct pname *pn = &sp->names[sp->inames++];
          int r = jrn_take_pre(sp, pn, &ib->pre[j], slot, slot > PRE_BUF, &bt->c[bt->n]);
          if (r == 0)
            atomic_fetch_add_explicit(&sp->st_ring_reads, 1, memory_order_relaxed);
          if (r == 2)
            r = jrn_take(sp, pn, &bt->c[bt->n]);
          if (r == 3)
            sp->busy = true; /* its writer's IN_CLOSE_WRITE (or the rescan) brings it back */
          if (r == 0)
            bt->c[bt->n++].name = pn->name;
          else if (r != 4) /* 4: being signed, the name goes with it (signq.c) */
            free(pn->name);
        }
        sp->deferring = false;
        jrn_flush_deferred(sp);
        continue;
      }
    }
    struct pname *pn = &sp->names[sp->inames++];
    int r = jrn_take(sp, pn, &bt->c[bt->n]);
    if (r == 3)
      sp->busy = true;
    if (r == 0)
      bt->c[bt->n++].name = pn->name;
    else if (r != 4)
      free(pn->name);
  }
  signq_launch(sp);      /* what this round took to be signed */
  signq_collect(sp, bt); /* and what the signers finished: written in this batch */
  long n = (long)bt->n;
  if (n == 0) {
    free(bt->c);
    free(bt);
    atomic_store(&sp->last_err, 0);
    return 0;
  }
  sp->avg_file = batch_len(sp) / (size_t)n;
  int r = jrn_put_batch(sp, (uint32_t)n, &bt->seg, &bt->base);
  if (r == 0 && sp->pipelined) {
    pthread_mutex_lock(&sp->qlock);
    sp->inflight++;
    jq_put(&sp->syncq, bt);
    pthread_mutex_unlock(&sp->qlock);
    atomic_store(&sp->last_err, 0);
    return n;
  }
  bool put = r == 0;
  if (r == 0)
    r = jrn_sync(sp, bt->seg);
  if (r < 0) {
    jrn_batch_fail(sp, bt, put, r);
    names_clear(sp);
    sp->scan_due = true;
    atomic_store(&sp->last_err, r);
    return r;
  }
  jrn_batch_done(sp, bt);
  atomic_store(&sp->last_err, 0);
  return n;
}

/* The commit thread: one sync for every batch queued meanwhile (group
 * commit across batches), then it queues them for the unlink thread, which
 * removes their pickup files and hands their messages over. */
static void *commit_thread(void *arg)
{
  struct spool *sp = arg;
  pthread_mutex_lock(&sp->qlock);
  struct jbatch *list;
  while ((list = jq_take(sp, &sp->syncq)) != NULL) {
    pthread_mutex_unlock(&sp->qlock);
    unsigned nb = 0;
    int r = 0;
    uint32_t synced = 0; /* batches are in segment order; one sync per segment */
    for (struct jbatch *b = list; b && r == 0; b = b->next)
      if (b->seg != synced)
        r = jrn_sync(sp, synced = b->seg);
    if (r < 0) {
      for (struct jbatch *b = list, *next; b; b = next) {
        next = b->next;
        nb++;
        jrn_batch_fail(sp, b, true, r);
      }
      atomic_store(&sp->commit_err, r);
    }
    pthread_mutex_lock(&sp->qlock);
    if (r == 0) /* durable: on to the unlink thread, in order */
      jq_put(&sp->unlinkq, list);
    jq_finished(sp, nb);
  }
  pthread_mutex_unlock(&sp->qlock);
  return NULL;
}

/* The unlink thread: durable batches, in commit order, lose their pickup
 * files, then their messages are handed over (on_msg, on_batch_end). */
static void *unlink_thread(void *arg)
{
  struct spool *sp = arg;
  pthread_mutex_lock(&sp->qlock);
  struct jbatch *list;
  while ((list = jq_take(sp, &sp->unlinkq)) != NULL) {
    pthread_mutex_unlock(&sp->qlock);
    unsigned nb = 0;
    for (struct jbatch *b = list, *next; b; b = next) {
      next = b->next;
      nb++;
      jrn_batch_done(sp, b);
    }
    pthread_mutex_lock(&sp->qlock);
    jq_finished(sp, nb);
  }
  pthread_mutex_unlock(&sp->qlock);
  return NULL;
}

/* Before the ingest thread lists pickup/ again: every batch it handed to
 * the commit thread is done, so no file still being committed is listed. */
void wait_drained(struct spool *sp)
{
  if (!sp->pipelined)
    return;
  pthread_mutex_lock(&sp->qlock);
  while (sp->inflight > 0)
    pthread_cond_wait(&sp->qdrained, &sp->qlock);
  pthread_mutex_unlock(&sp->qlock);
}

long spool_ingest(struct spool *sp, int timeout_ms)
{
  if (!wait_work(sp, timeout_ms))
    return 0;
  int ce = atomic_exchange(&sp->commit_err, 0);
  if (ce < 0) { /* the commit thread could not sync: those files stay in pickup/ */
    wait_drained(sp);
    names_clear(sp);
    sp->scan_due = true;
    return ce;
  }
  return ingest_journal(sp);
}

void spool_kick(struct spool *sp)
{
  atomic_store(&sp->kick, 1);
  uint64_t one = 1;
  ssize_t r = write(sp->wake_fd, &one, sizeof(one));
  (void)r;
}

int spool_last_error(const struct spool *sp)
{
  return atomic_load(&sp->last_err);
}

static void *ingest_thread(void *arg)
{
  struct spool *sp = arg;
  bool reported = false;
  while (!atomic_load(&sp->stop)) {
    long r = spool_ingest(sp, 500);
    if (r < 0) {
      if (!reported) {
        char why[256];
        snprintf(why, sizeof(why), "%s: ingestion stopped (%s); retrying every second",
                 is_disk_full((int)r) ? "spool disk full" : "spool error", strerror((int)-r));
        report_bad(sp, "", why);
        reported = true;
      }
      struct pollfd pfd = {.fd = sp->wake_fd, .events = POLLIN};
      if (poll(&pfd, 1, 1000) > 0)
        drain_fd(sp->wake_fd);
      sp->scan_due = true;
    } else if (reported) {
      report_bad(sp, "", "spool: ingestion resumed");
      reported = false;
    }
  }
  /* Stopping: the messages still being signed are written once signed
   * (nothing new is taken from pickup/). */
  for (int i = 0; i < 1000 && signq_busy(sp); i++) {
    signq_wait_all(sp);
    names_clear(sp);
    if (ingest_journal(sp) < 0)
      break; /* their tombs stay: recovery requeues them */
  }
  return NULL;
}

int spool_start(struct spool *sp)
{
  if (sp->thread_running)
    return -EALREADY;
  atomic_store(&sp->stop, false);
  if (sp->p.sync == SPOOL_SYNC_BATCH) {
    sp->unlinkq.stop = false;
    int r = pthread_create(&sp->unlinker, NULL, unlink_thread, sp);
    if (r)
      return -r;
    pthread_setname_np(sp->unlinker, "imp-unlink");
    sp->unlinker_running = true;
    sp->syncq.stop = false;
    r = pthread_create(&sp->committer, NULL, commit_thread, sp);
    if (r) {
      spool_stop(sp);
      return -r;
    }
    pthread_setname_np(sp->committer, "imp-commit");
    sp->committer_running = true;
    sp->pipelined = true;
  }
  int r = pthread_create(&sp->thread, NULL, ingest_thread, sp);
  if (r) {
    spool_stop(sp);
    return -r;
  }
  pthread_setname_np(sp->thread, "imp-ingest");
  sp->thread_running = true;
  return 0;
}

void spool_stop(struct spool *sp)
{
  if (!sp)
    return;
  if (sp->thread_running) {
    atomic_store(&sp->stop, true);
    spool_kick(sp);
    pthread_join(sp->thread, NULL);
    sp->thread_running = false;
  }
  if (sp->committer_running) { /* it commits what is queued, then ends */
    jq_stop(sp, &sp->syncq, sp->committer);
    sp->committer_running = false;
  }
  if (sp->unlinker_running) { /* it hands over what the committer queued, then ends */
    jq_stop(sp, &sp->unlinkq, sp->unlinker);
    sp->unlinker_running = false;
  }
  sp->pipelined = false;
}
