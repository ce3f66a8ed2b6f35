/* submit.c owns in-memory submissions (spool_submit): messages the ESMTP
 * listener received, queued for the ingest thread, which journals them in
 * its next batch beside pickup files (ingest.c), so they share its group
 * commit; their callbacks run once the batch is durable, or failed. Any
 * thread may submit; the queue is one mutex-protected list (a submission
 * is a whole message: the lock is not the cost). Never blocks on disk. */
#include "spool_int.h"

void spool_submit(struct spool *sp, uint8_t *data, size_t len, spool_submit_cb done, void *arg)
{
  struct spool_sub *s = util_xcalloc(1, sizeof(*s));
  s->data = data;
  s->len = len;
  s->done = done;
  s->arg = arg;
  atomic_fetch_add(&sp->sub_live, 1);
  if (atomic_load(&sp->stop)) {
    sub_finish(sp, s, -ESHUTDOWN, NULL, NULL);
    return;
  }
  pthread_mutex_lock(&sp->sublock);
  bool was_empty = !sp->sub_head;
  if (sp->sub_tail)
    sp->sub_tail->next = s;
  else
    sp->sub_head = s;
  sp->sub_tail = s;
  atomic_fetch_add(&sp->nsub, 1);
  pthread_mutex_unlock(&sp->sublock);
  /* wake the ingest thread without asking it to list pickup/ again; only
   * for the first of a run: it does not sleep while nsub > 0 (wait_work),
   * so one write per batch instead of one per message */
  if (!was_empty)
    return;
  uint64_t one = 1;
  ssize_t r = write(sp->wake_fd, &one, sizeof(one));
  (void)r;
}

size_t spool_submit_pending(const struct spool *sp)
{
  return atomic_load(&sp->sub_live);
}

struct spool_sub *sub_take(struct spool *sp, size_t max)
{
  if (!atomic_load(&sp->nsub) || !max)
    return NULL;
  pthread_mutex_lock(&sp->sublock);
  struct spool_sub *head = sp->sub_head, *last = NULL, *s = head;
  size_t n = 0;
  while (s && n < max) {
    last = s;
    s = s->next;
    n++;
  }
  if (last) {
    sp->sub_head = s;
    if (!s)
      sp->sub_tail = NULL;
    last->next = NULL;
    atomic_fetch_sub(&sp->nsub, n);
  }
  pthread_mutex_unlock(&sp->sublock);
  return last ? head : NULL;
}

void sub_finish(struct spool *sp, struct spool_sub *s, int result, const char *id, const char *why)
{
  if (s->done)
    s->done(s->arg, result, id, why);
  free(s->data);
  free(s);
  atomic_fetch_sub(&sp->sub_live, 1);
}

void sub_fail_all(struct spool *sp, int result)
{
  struct spool_sub *s;
  while ((s = sub_take(sp, SIZE_MAX)) != NULL) {
    while (s) {
      struct spool_sub *next = s->next;
      sub_finish(sp, s, result, NULL, NULL);
      s = next;
    }
  }
}
