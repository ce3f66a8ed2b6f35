/* journal.c owns the journal segments (queue/journal/<8 hex>): the fd
 * table every thread reads bodies through, appends, rotation, syncs, pins
 * (queued messages per segment) and freeing segments oldest first, and
 * the retry buffer of DONE records. It never decides what a record means
 * (ingest.c, recover.c, txn.c do) and never logs. Threads: appends and
 * rotation under sp->jlock (the ingest thread, and workers retiring
 * entries through jrn_retire); jfd_of from any thread. */
#include "spool_int.h"

int jfd_of(const struct spool *sp, uint32_t seg)
{
  return atomic_load_explicit(&((struct spool *)(uintptr_t)sp)->jfd[seg % JRN_SLOTS],
                              memory_order_acquire);
}

static bool jfd_is_seg(struct spool *sp, int fd)
{
  return (unsigned)fd < JRN_FD_MAX &&
         (atomic_load_explicit(&sp->jfd_bits[fd / 64], memory_order_acquire) >> (fd % 64) & 1);
}

/* Publish fd as segment seg's (or retire the slot's fd when fd is -1). */
void jfd_set(struct spool *sp, uint32_t seg, int fd)
{
  if (fd >= 0) {
    if ((unsigned)fd >= JRN_FD_MAX)
      util_panic("spool: segment fd %d over %u", fd, JRN_FD_MAX);
    atomic_fetch_or_explicit(&sp->jfd_bits[fd / 64], 1ull << (fd % 64), memory_order_release);
    atomic_store_explicit(&sp->jfd[seg % JRN_SLOTS], fd, memory_order_release);
    return;
  }
  int old = atomic_exchange_explicit(&sp->jfd[seg % JRN_SLOTS], -1, memory_order_acq_rel);
  if (old >= 0) {
    atomic_fetch_and_explicit(&sp->jfd_bits[old / 64], ~(1ull << (old % 64)),
                              memory_order_release);
    close(old);
  }
}


/* Every sync call is counted and timed (spool_get_stats). kind: 0 fsync,
 * 1 fdatasync, 2 syncfs. Returns 0 or -errno. */
int sync_timed(struct spool *sp, int fd, int kind)
{
  atomic_fetch_add_explicit(&sp->st_syncs, 1, memory_order_relaxed);
  uint64_t t0 = clock_mono_ns();
  int r = kind == 0 ? fsync(fd) : kind == 1 ? fdatasync(fd) : syncfs(fd);
  r = r < 0 ? -errno : 0;
  histo_observe(&sp->st_sync_lat, clock_mono_ns() - t0);
  return r;
}

static int sync_counted(struct spool *sp, int fd, bool data_only)
{
  return sync_timed(sp, fd, data_only ? 1 : 0);
}

/* Start segment jnext and append to it from now on. */
static int jrn_new_seg(struct spool *sp)
{
  if (sp->jnext - sp->jfirst >= JRN_SLOTS)
    return -ENOSPC; /* every slot holds a segment with queued mail */
  uint32_t seg = sp->jnext;
  char name[16];
  jseg_name(seg, name);
  int fd = openat(sp->jdir_fd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  uint8_t hdr[8] = {'I', 'M', 'P', 'J', (uint8_t)JRN_VERSION, 0, 0, 0};
  int r = write_all(fd, hdr, sizeof(hdr), 0);
  if (r == 0 && sp->p.sync != SPOOL_SYNC_NONE)
    r = sync_counted(sp, sp->jdir_fd, false); /* the new name, once per segment */
  if (r < 0) {
    close(fd);
    unlinkat(sp->jdir_fd, name, 0);
    return r;
  }
  jfd_set(sp, seg, fd);
  sp->jpins[seg % JRN_SLOTS] = 0;
  sp->jnext = seg + 1;
  sp->jcur = seg;
  sp->jsize = sizeof(hdr);
  return 0;
}

/* Append n bytes from iov[0..cnt) to the current segment; on failure it
 * is cut back to where it was. */
static int jrn_appendv(struct spool *sp, struct iovec *iov, int cnt, size_t n)
{
  if (n == 0)
    return 0; /* pwritev of nothing returns 0, which writev_all takes for an error */
  int fd = jfd_of(sp, sp->jcur);
  int r = writev_all(fd, iov, cnt, (off_t)sp->jsize);
  if (r < 0) {
    if (ftruncate(fd, (off_t)sp->jsize) < 0) {
      /* the tail stays; recovery ignores a record it cannot complete */
    }
    return r;
  }
  sp->jsize += n;
  return 0;
}

static int jrn_append(struct spool *sp, const void *p, size_t n)
{
  struct iovec v = {(void *)(uintptr_t)p, n};
  return jrn_appendv(sp, &v, 1, n);
}

int jrn_sync(struct spool *sp, uint32_t seg)
{
  if (sp->p.sync == SPOOL_SYNC_NONE)
    return 0;
  if (sp->p.sync_method == SPOOL_SYNCM_SYNCFS && sp->p.sync == SPOOL_SYNC_BATCH) {
    return sync_timed(sp, sp->queue_fd, 2);
  }
  return sync_counted(sp, jfd_of(sp, seg), true);
}

/* Free segments from the oldest while no queued message was ingested into
 * them. The current one goes too once the journal holds nothing queued. */
void jrn_gc(struct spool *sp)
{
  while (sp->jfirst < sp->jnext && sp->jpins[sp->jfirst % JRN_SLOTS] == 0) {
    uint32_t seg = sp->jfirst;
    if (seg == sp->jcur)
      sp->jcur = 0;
    jfd_set(sp, seg, -1);
    char name[16];
    jseg_name(seg, name);
    unlinkat(sp->jdir_fd, name, 0);
    sp->jfirst++;
  }
}

/* Make room for n more bytes: a new segment when none is open or the
 * current one would grow past JRN_SEG_MAX (unless it is still empty). */
static int jrn_room(struct spool *sp, size_t n)
{
  if (sp->jcur && (sp->jsize + n <= JRN_SEG_MAX || sp->jsize <= 8))
    return 0;
  return jrn_new_seg(sp);
}

/* Append n bytes from iov[0..cnt) to the journal and pin the segment
 * npins times, under jlock (any thread). *seg and *off say where they
 * went. */
int jrn_putv(struct spool *sp, struct iovec *iov, int cnt, size_t n, uint32_t npins,
                    uint32_t *seg, uint64_t *off)
{
  pthread_mutex_lock(&sp->jlock);
  int r = jrn_room(sp, n + sp->jretry.len);
  if (r == 0 && sp->jretry.len) { /* DONE records a full disk held back go first */
    if ((r = jrn_append(sp, sp->jretry.data, sp->jretry.len)) == 0)
      sp->jretry.len = sp->jretry.off = 0;
  }
  if (r == 0) {
    *seg = sp->jcur;
    *off = sp->jsize;
    r = jrn_appendv(sp, iov, cnt, n);
  }
  if (r == 0)
    sp->jpins[sp->jcur % JRN_SLOTS] += npins;
  pthread_mutex_unlock(&sp->jlock);
  return r;
}

int jrn_put(struct spool *sp, const void *p, size_t n, uint32_t npins, uint32_t *seg,
                   uint64_t *off)
{
  struct iovec v = {(void *)(uintptr_t)p, n};
  return jrn_putv(sp, &v, 1, n, npins, seg, off);
}

/* Drop pins and free what no queued message needs any more (any thread). */
static void jrn_unpin(struct spool *sp, const uint32_t *segs, uint32_t n)
{
  if (n == 0)
    return;
  pthread_mutex_lock(&sp->jlock);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t *pin = &sp->jpins[segs[i] % JRN_SLOTS];
    if (*pin == 0)
      util_panic("spool: journal segment %u unpinned below zero", segs[i]);
    (*pin)--;
  }
  jrn_gc(sp);
  pthread_mutex_unlock(&sp->jlock);
}

/* Write records that retire journal entries (DONE, JSTATE), then drop the
 * entries' pins. A record that cannot be written (disk full) is kept and
 * written before the next append. Any thread. It does not sync (a DONE
 * lost to a power loss means a duplicate, never a loss) unless Spool_Sync
 * is always. */
void jrn_retire(struct spool *sp, struct buf *b, const uint32_t *unpin, uint32_t nunpin)
{
  if (b->len) {
    uint32_t seg;
    uint64_t off;
    int r = jrn_put(sp, b->data, b->len, 0, &seg, &off);
    if (r < 0) {
      pthread_mutex_lock(&sp->jlock);
      buf_append(&sp->jretry, b->data, b->len);
      pthread_mutex_unlock(&sp->jlock);
    } else if (sp->p.sync == SPOOL_SYNC_ALWAYS) {
      (void)jrn_sync(sp, seg);
    }
  }
  jrn_unpin(sp, unpin, nunpin);
}

void rec_done(struct buf *b, const struct spool_msg *m)
{
  size_t r = rec_begin(b, REC_DONE);
  put_u64(b, m->id);
  put_u16(b, m->node);
  rec_end(b, r);
}

const uint8_t *spool_ingest_bytes(struct spool *sp, const struct spool_msg *msg, size_t *len)
{
  (void)sp;
  if (msg == NULL || msg != in_hook.msg)
    return NULL;
  *len = in_hook.len;
  return in_hook.data;
}

void spool_close_body(struct spool *sp, int fd)
{
  if (fd >= 0 && !jfd_is_seg(sp, fd))
    close(fd);
}
