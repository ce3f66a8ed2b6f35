/* ingest.c owns the pickup directory: listing it, reading files (through
 * iobatch.c when it can), the one ingest path (take_checked: parse, build
 * the message, scrub secrets, run the ingest hook, send rejects to bad/),
 * journal entries for a batch, group commit and the three threads of
 * spool_start (ingest, commit, unlink). It never removes a pickup file
 * before its message is durable, never writes a secret, never logs.
 * Threads: spool_ingest on one thread at a time (the ingest thread);
 * spool_kick and spool_last_error from any thread. */
#include "spool_int.h"
#include "spool_test.h"

_Thread_local struct in_hook in_hook;
void (*spool_test_after_stat)(int fd);

/* ---- ingest ---- */

static bool name_ignored(const char *n)
{
  size_t l = strlen(n);
  return n[0] == '.' || (l >= 4 && !strcmp(n + l - 4, ".tmp"));
}

/* ---- files still being written (issue 18 item 3) ---- */

/* A file not renamed in must have no writer when it is taken. */
#define QUIET_MS 2000u /* without a lease: unchanged for this long */

static size_t moved_slot(const struct spool *sp, const char *n)
{
  uint64_t h = 1469598103934665603u;
  for (; *n; n++)
    h = (h ^ (unsigned char)*n) * 1099511628211u;
  /* FNV-1a alone spreads names that differ in their last bytes (m0000001,
   * m0000002...) over a few hundred slots: one long cluster, so each add
   * and take walked thousands of slots. The 64-bit finalizer of
   * MurmurHash3 mixes every bit into the low ones. */
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdu;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53u;
  h ^= h >> 33;
  return (size_t)h & (sp->movedcap - 1);
}

static void moved_clear(struct spool *sp)
{
  if (sp->moved)
    for (size_t i = 0; i < sp->movedcap; i++) {
      free(sp->moved[i]);
      sp->moved[i] = NULL;
    }
  sp->nmoved = 0;
}

void moved_free(struct spool *sp)
{
  moved_clear(sp);
  free(sp->moved);
  sp->moved = NULL;
  sp->movedcap = 0;
}

/* Put s (owned) into a free slot; the set has room. */
static void moved_put(struct spool *sp, char *s)
{
  size_t k = moved_slot(sp, s);
  while (sp->moved[k])
    k = (k + 1) & (sp->movedcap - 1);
  sp->moved[k] = s;
}

/* A burst of renames (tens of thousands of files renamed in before the
 * engine lists them) is remembered whole: the set doubles when half full,
 * up to MOVED_MAX slots; only beyond that are names checked. */
static void moved_add(struct spool *sp, const char *name)
{
  if (!sp->moved) {
    sp->movedcap = MOVED_CAP;
    sp->moved = util_xcalloc(sp->movedcap, sizeof(*sp->moved));
  }
  if (sp->nmoved >= sp->movedcap / 2) {
    if (sp->movedcap >= MOVED_MAX)
      return; /* full: the rest is checked */
    char **old = sp->moved;
    size_t oldcap = sp->movedcap;
    sp->movedcap *= 2;
    sp->moved = util_xcalloc(sp->movedcap, sizeof(*sp->moved));
    for (size_t i = 0; i < oldcap; i++)
      if (old[i])
        moved_put(sp, old[i]);
    free(old);
  }
  size_t i = moved_slot(sp, name);
  for (; sp->moved[i]; i = (i + 1) & (sp->movedcap - 1))
    if (!strcmp(sp->moved[i], name))
      return;
  sp->moved[i] = util_xstrdup(name);
  sp->nmoved++;
}

/* Whether name arrived by rename; it is forgotten (the next file under
 * that name must arrive by rename again). */
static bool moved_take(struct spool *sp, const char *name)
{
  if (!sp->moved || sp->nmoved == 0)
    return false;
  size_t mask = sp->movedcap - 1;
  size_t i = moved_slot(sp, name);
  for (; sp->moved[i]; i = (i + 1) & mask)
    if (!strcmp(sp->moved[i], name))
      break;
  if (!sp->moved[i])
    return false;
  free(sp->moved[i]);
  sp->moved[i] = NULL;
  sp->nmoved--;
  /* re-insert the rest of the cluster (open addressing deletion) */
  for (size_t j = (i + 1) & mask; sp->moved[j]; j = (j + 1) & mask) {
    char *s = sp->moved[j];
    sp->moved[j] = NULL;
    moved_put(sp, s);
  }
  return true;
}

/* A read lease on fd (F_SETLEASE F_RDLCK): 1 held, 0 refused because a
 * process has the file open for writing, -1 none to be had (another
 * user's file without CAP_LEASE, leases off). While it is held, an open
 * for writing waits until it is dropped (F_UNLCK or close) and signals
 * the lease's owner, which the kernel makes this process: SIGIO, whose
 * default action ends it, so the signal is made SIGURG, ignored by
 * default (the engine handles neither). */
static int lease_get(int fd)
{
  (void)fcntl(fd, F_SETSIG, SIGURG);
  if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0)
    return 1;
  return errno == EAGAIN ? 0 : -1;
}

/* Whether st has not changed for QUIET_MS (mtime and ctime). */
static bool quiet_for(const struct stat *st)
{
  uint64_t m = (uint64_t)st->st_mtim.tv_sec * 1000u + (uint64_t)st->st_mtim.tv_nsec / 1000000u;
  uint64_t c = (uint64_t)st->st_ctim.tv_sec * 1000u + (uint64_t)st->st_ctim.tv_nsec / 1000000u;
  return clock_wall_ms() >= (m > c ? m : c) + QUIET_MS;
}

/* Open pickup file name for reading (O_NOATIME when it may be had). */
static int pickup_open(struct spool *sp, const char *name)
{
  int fl = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
  int fd = -1;
  if (atomic_load_explicit(&sp->noatime, memory_order_relaxed))
    fd = openat(sp->pickup_fd, name, fl | O_NOATIME);
  if (fd < 0)
    fd = openat(sp->pickup_fd, name, fl);
  return fd;
}

/* ---- claiming (issue 18 item 2, issue 25) ----
 *
 * A pickup file is claimed before it is read: renamed from its name to
 * its tomb ".c.<message id>" (dot names are never picked up). The rename
 * is atomic, so whatever is at the name at that instant is taken, and a
 * file that takes the name afterwards is a different file, left where it
 * is. From the claim on, the file is the engine's own: it is read under
 * the tomb, moved from there to bad/ when rejected, put back under its
 * name when its batch cannot be made durable, and removed with one unlink
 * once its journal entry is durable (no comparison is needed: nothing
 * else writes a tomb). Recovery knows a tomb by its id (recover_tombs).
 * A file not renamed in is claimed only under a read lease, after it was
 * read (claim_leased): no writer can have it open then. */

static void claim_prep(struct spool *sp, struct pname *pn)
{
  char id[SPOOL_ID_LEN + 1];
  pn->id = next_id(sp);
  id_format(pn->id, sp->p.node_id, id);
  snprintf(pn->tomb, sizeof pn->tomb, ".c.%s", id);
}

/* Put the file under tomb back under name, never over another file: by a
 * hard link then an unlink, which makes no IN_MOVED_TO (the file is then
 * judged like one written in place); where the link is refused
 * (fs.protected_hardlinks and a file of another user) by a rename. 0 or
 * -1 (name taken). A crash between link and unlink leaves the file under
 * both names: recovery requeues the tomb, a duplicate, never a loss. */
static int tomb_put_back(struct spool *sp, const char *tomb, const char *name, bool link)
{
  if (link && linkat(sp->pickup_fd, tomb, sp->pickup_fd, name, 0) == 0) {
    (void)unlinkat(sp->pickup_fd, tomb, 0);
    return 0;
  }
  if (link && errno == EEXIST)
    return -1;
  return renameat2(sp->pickup_fd, tomb, sp->pickup_fd, name, RENAME_NOREPLACE);
}

/* A claimed file that is not to be ingested now goes back to pickup/:
 * under its name when that is free, else as "requeued-<id>", else it
 * stays under its tomb (recovery requeues it at the next start). link: see
 * tomb_put_back. */
static void unclaim_at(struct spool *sp, const char *tomb, const char *name, bool link)
{
  char alt[64];
  if (tomb_put_back(sp, tomb, name, link) == 0)
    return;
  snprintf(alt, sizeof alt, "requeued-%s", tomb + 3);
  (void)tomb_put_back(sp, tomb, alt, link);
}

void unclaim(struct spool *sp, struct pname *pn)
{
  if (pn->claimed)
    unclaim_at(sp, pn->tomb, pn->name, false); /* read whole, as it is: complete */
  pn->claimed = false;
}

/* Claim the files renamed in among pn[0..k) (those not claimed yet):
 * through the ring (one submission; io-wq runs the renames), else with
 * renameat calls (renameat calls on the ingest thread, and unlinkat calls
 * on the unlink thread, cost more engine CPU in A/B runs: bench/ANALYSIS.md,
 * session 7). pn[j].clres says how it went. */
static void claim_group(struct spool *sp, struct iobatch *ib, struct pname *pn, size_t k)
{
  size_t want = 0;
  for (size_t j = 0; j < k; j++) {
    if (pn[j].inplace || pn[j].claimed)
      continue;
    claim_prep(sp, &pn[j]);
    pn[j].clres = 1; /* to be renamed (iobatch_rename) */
    want++;
  }
  if (want == 0)
    return;
  bool ring = ib && iobatch_rename(ib, sp->pickup_fd, pn, (unsigned)k) == 0;
  for (size_t j = 0; j < k; j++) {
    if (pn[j].clres != 1)
      continue;
    if (ring)
      pn[j].clres = ib->pre[j].st;
    else if (renameat(sp->pickup_fd, pn[j].name, sp->pickup_fd, pn[j].tomb) == 0)
      pn[j].clres = 0;
    else if (errno == ENOENT && ib &&
             faccessat(sp->pickup_fd, pn[j].tomb, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
      pn[j].clres = 0; /* the ring failed part way, after this rename */
    else
      pn[j].clres = -errno;
    pn[j].claimed = pn[j].clres == 0;
  }
}

/* Claim an in-place file that was just read from fd under its lease:
 * renamed to its tomb while no writer can open it, then checked to be the
 * file fd reads (the name may have been replaced since it was opened:
 * that file is not ours and is put back, linked, for a later round).
 * Returns 0 claimed, 3 later, or -errno of the rename. */
static int claim_leased(struct spool *sp, struct pname *pn, int fd)
{
  claim_prep(sp, pn);
  if (renameat(sp->pickup_fd, pn->name, sp->pickup_fd, pn->tomb) < 0)
    return pn->clres = -errno;
  struct stat a, b;
  if (fstat(fd, &a) == 0 && fstatat(sp->pickup_fd, pn->tomb, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
      a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
    pn->claimed = true;
    pn->clres = 0;
    return 0;
  }
  unclaim_at(sp, pn->tomb, pn->name, true);
  return 3;
}

/* Before the ring reads a group: each regular file of it not renamed in
 * (and not claimed yet) is opened and leased (pn->lfd), or marked busy (a
 * writer has it open), or left to jrn_take (no lease to be had, or it
 * could not be opened: jrn_take says why). */
static void lease_group(struct spool *sp, struct pname *pn, size_t k)
{
  for (size_t j = 0; j < k; j++) {
    pn[j].busy = false;
    if (!pn[j].inplace || pn[j].claimed || pn[j].type != DT_REG)
      continue;
    int fd = pickup_open(sp, pn[j].name);
    if (fd < 0)
      continue;
    int l = lease_get(fd);
    if (l > 0) {
      pn[j].lfd = fd;
      continue;
    }
    pn[j].busy = l == 0;
    close(fd);
  }
}

/* After the ring read the group: what each leased file is now (fstat,
 * still under the lease); a file read whole is claimed (claim_leased)
 * before the lease is dropped; a new empty one is left (busy). */
static void lease_group_done(struct spool *sp, struct pname *pn, struct pre *pr, size_t k)
{
  for (size_t j = 0; j < k; j++) {
    if (pn[j].lfd < 0)
      continue;
    pr[j].leased = true;
    if (fstat(pn[j].lfd, &pr[j].lst) < 0)
      pr[j].op = -errno;
    else if (pr[j].rd == 0 && !quiet_for(&pr[j].lst))
      pn[j].busy = true; /* new and empty: its writer may be inside open(O_CREAT) still */
    else if (pr[j].rd >= 0) {
      int r = claim_leased(sp, &pn[j], pn[j].lfd);
      if (r == 3)
        pn[j].busy = true;
      else if (r < 0)
        pr[j].op = r;
    }
    close(pn[j].lfd); /* drops the lease */
    pn[j].lfd = -1;
  }
}

static int cmp_ino(const void *a, const void *b)
{
  uint64_t x = ((const struct pname *)a)->ino, y = ((const struct pname *)b)->ino;
  return x < y ? -1 : x > y;
}

static void drain_fd(int fd)
{
  char b[4096];
  while (fd >= 0 && read(fd, b, sizeof(b)) > 0) {
  }
}

/* Read the inotify events: names renamed in are remembered (moved_add).
 * True when one may bring a file to take (not for the engine's own
 * ".c.<id>" tombs, which would otherwise ask for a listing per batch). */
static bool read_events(struct spool *sp)
{
  char b[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t n;
  bool any = false;
  while (sp->ino_fd >= 0 && (n = read(sp->ino_fd, b, sizeof(b))) > 0) {
    for (char *p = b; p < b + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)(void *)p;
      if (ev->mask & IN_Q_OVERFLOW) {
        /* Events were lost: the names whose IN_MOVED_TO was lost are
         * checked. The names already read stay: an overflow hides nothing
         * that a full queue would have shown about them (a name renamed
         * in, then removed and written in place, gives no watched event
         * before its writer's close either). The overflow event comes
         * after the 16,384 events the queue holds (the default
         * max_queued_events): clearing the set here had every one of
         * them probed. */
        any = true;
      } else if (ev->len && !name_ignored(ev->name)) {
        if (ev->mask & IN_MOVED_TO)
          moved_add(sp, ev->name);
        any = true;
      }
      p += sizeof(*ev) + ev->len;
    }
  }
  return any;
}

/* List pickup/ (ingest: for taking the files, which consumes their names
 * in the renamed-in set; recovery only looks names up and leaves the set
 * alone, else files renamed in during its listing would be taken as
 * written in place). A long listing is taken in inode order: on ext4 that is
 * close to the order of the inode table and of the data blocks, so a
 * backlog that is no longer in the page cache is read sequentially
 * rather than at random.
 * The inotify events are read after the listing, before any name of it is
 * judged: a rename the listing shows has its IN_MOVED_TO queued already
 * (the rename holds the directory lock until it is queued), so a name
 * renamed in is never checked for want of its event, and no event is
 * read after its file was listed (which would leave a stale name in the
 * set, trusted for a later file written in place under that name). */
int scan_pickup(struct spool *sp, bool ingest)
{
  names_clear(sp);
  int fd = dup(sp->pickup_fd);
  if (fd < 0)
    return -errno;
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -errno;
  }
  rewinddir(d);
  size_t n = 0;
  sp->busy = false;
  struct dirent *e;
  while ((e = readdir(d))) {
    /* every type is listed: what is not a regular file goes to bad/ */
    if (name_ignored(e->d_name))
      continue;
    if (n == sp->capnames) {
      sp->capnames = sp->capnames ? sp->capnames * 2 : 256;
      sp->names = util_xrealloc(sp->names, sp->capnames * sizeof(*sp->names));
    }
    sp->names[n++] = (struct pname){util_xstrdup(e->d_name), (uint64_t)e->d_ino, e->d_type};
  }
  closedir(d);
  if (read_events(sp))
    sp->scan_due = true; /* files renamed in after the listing: list again */
  size_t kept = 0;
  for (size_t i = 0; i < n; i++) {
    struct pname *pn = &sp->names[i];
    /* a file not renamed in is taken only once no one writes it */
    /* a file not renamed in is read under a lease (lease_group, jrn_take) */
    pn->inplace =
        (pn->type == DT_REG || pn->type == DT_UNKNOWN) && (!ingest || !moved_take(sp, pn->name));
    pn->busy = pn->claimed = false;
    pn->lfd = -1;
    pn->clres = 0;
    pn->id = 0;
    sp->names[kept++] = *pn;
  }
  n = kept;
  if (n > 1)
    qsort(sp->names, n, sizeof(*sp->names), cmp_ino);
  sp->nnames = n;
  sp->next_rescan_ns = clock_mono_ns() + (uint64_t)sp->p.rescan_ms * 1000000u;
  return 0;
}

/* Wait for something to claim; true when names are pending. */
static bool wait_work(struct spool *sp, int timeout_ms)
{
  if (sp->inames < sp->nnames || atomic_load(&sp->nsub))
    return true;
  if (sp->nnames > 0) { /* a listing ran out: files that came meanwhile are next */
    names_clear(sp);
    /* but not when it left a file still being written: listed again at
     * once, it would be tried again and again until its writer closes
     * it; its IN_CLOSE_WRITE (or the rescan) brings it back, and the
     * events of other files ask for a listing anyway */
    if (!sp->busy)
      sp->scan_due = true;
  }
  uint64_t deadline = clock_mono_ns() + (timeout_ms > 0 ? (uint64_t)timeout_ms * 1000000u : 0);
  int ms = 0;
  for (;;) {
    struct pollfd pfd[2] = {{.fd = sp->ino_fd, .events = POLLIN},
                            {.fd = sp->wake_fd, .events = POLLIN}};
    if (poll(pfd, 2, ms) > 0) {
      if (pfd[0].revents && read_events(sp))
        sp->scan_due = true;
      if (pfd[1].revents)
        drain_fd(sp->wake_fd);
    }
    if (atomic_load(&sp->nsub))
      return true;
    uint64_t now = clock_mono_ns();
    if (atomic_exchange(&sp->kick, 0) || now >= sp->next_rescan_ns)
      sp->scan_due = true;
    if (sp->busy && sp->ino_fd < 0 && sp->next_rescan_ns > now + 200000000u)
      sp->next_rescan_ns = now + 200000000u; /* no close events: look again soon */
    if (sp->scan_due) {
      sp->scan_due = false;
      wait_drained(sp);
      if (scan_pickup(sp, true) == 0 && sp->nnames > 0)
        return true;
    }
    if (now >= deadline || atomic_load(&sp->stop))
      return false;
    if (sp->scan_due) { /* files were renamed in during that listing */
      ms = 0;
      continue;
    }
    uint64_t until = deadline < sp->next_rescan_ns ? deadline : sp->next_rescan_ns;
    ms = (int)((until - now + 999999u) / 1000000u);
  }
}



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

/* Read the whole file at fd into sp->rbuf. Returns 0, -EINVAL when it is
 * not a regular file, -EFBIG over the limit, -EAGAIN when it changed size
 * while read (why says which), or -errno. */
static int read_file(struct spool *sp, int fd, struct stat *st, char *why, size_t whylen)
{
  if (fstat(fd, st) < 0)
    return -errno;
  if (!S_ISREG(st->st_mode)) {
    snprintf(why, whylen, "not a regular file");
    return -EINVAL;
  }
  if ((uint64_t)st->st_size > sp->p.max_message_size) {
    snprintf(why, whylen, "file of %lld bytes is over Max_Message_Size (%" PRIu64 " bytes)",
             (long long)st->st_size, sp->p.max_message_size);
    return -EFBIG;
  }
  if (spool_test_after_stat)
    spool_test_after_stat(fd);
  size_t want = (size_t)st->st_size;
  sp->rbuf.len = sp->rbuf.off = 0;
  buf_reserve(&sp->rbuf, want + 1);
  size_t got = 0;
  for (;;) {
    ssize_t n = pread(fd, sp->rbuf.data + got, want + 1 - got, (off_t)got);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0)
      break;
    got += (size_t)n;
    if (got > want || (size_t)n < want + 1 - (got - (size_t)n))
      break; /* a short read of a regular file is its end */
  }
  sp->rbuf.len = got;
  if (got != want) {
    snprintf(why, whylen, "file %s while being read (%zu of %zu bytes)",
             got < want ? "was truncated" : "grew", got, want);
    return -EAGAIN;
  }
  return 0;
}

/* Build a queued message from a parsed envelope. */
static struct spool_msg *msg_from_env(struct spool *sp, struct msg_envelope *env, uint64_t id,
                                      uint16_t node, uint8_t bucket, char *why, size_t whylen)
{
  uint32_t *rlen = util_xmalloc(((size_t)env->nrcpt + 1) * sizeof(uint32_t));
  for (uint32_t i = 0; i < env->nrcpt; i++)
    rlen[i] = (uint32_t)strlen(env->rcpt[i]);
  struct spool_msg *m = msg_alloc(env->sender, strlen(env->sender), env->nrcpt,
                                  (const char *const *)env->rcpt, rlen);
  free(rlen);
  m->id = id;
  m->node = node;
  m->bucket = bucket;
  m->flags = (uint8_t)env->flags;
  m->created_ms = id >> 22;
  m->body_off = env->body_off;
  m->body_size = env->body_size;
  m->binding = env->binding;
  m->binding_group = env->binding_group;
  env->binding = env->binding_group = NULL;
  m->mess = ctx_new();
  m->conn = ctx_new();
  if (!m->mess || !m->conn)
    util_panic("spool: out of memory");
  for (uint32_t i = 0; i < env->nctx; i++) {
    const struct msg_kv *kv = &env->ctx[i];
    int r = ctx_setn(m->mess, kv->key, strlen(kv->key), kv->value, strlen(kv->value), 0);
    if (r < 0) {
      snprintf(why, whylen, "bad x-context \"%.64s\": %s", kv->key, strerror(-r));
      spool_msg_free(m);
      return NULL;
    }
  }
  (void)sp;
  return m;
}

/* The one ingest path's checks, whatever the layout: parse the file read
 * into data[0, len), build the message, scrub x-context secrets from the
 * buffer ([*lo, *hi) is what changed), run the ingest hook (fd: the open
 * file for spool_open_body, or -1). Returns 0 with *out set, or 1 when the
 * file went to bad/ (dfd/qname is where it is now, orig its pickup name). */
static int take_checked(struct spool *sp, int dfd, const char *qname, const char *orig,
                        const char *idstr, uint64_t id, uint16_t node, uint8_t bucket,
                        const uint8_t *data, size_t len, int fd, struct spool_msg **out,
                        size_t *lo, size_t *hi)
{
  char why[512];
  *out = NULL;
  *lo = *hi = 0;
  struct msg_envelope env;
  struct spool_msg *m = NULL;
  if (msg_parse((const char *)data, len, &env, why, sizeof(why)) < 0 ||
      !(m = msg_from_env(sp, &env, id, node, bucket, why, sizeof(why)))) {
    msg_envelope_done(&env);
    if (qname)
      to_bad(sp, dfd, qname, orig, why, idstr);
    else /* a submission: its sender is told (spool_submit) */
      snprintf(sp->sub_why, sizeof(sp->sub_why), "%s", why);
    return 1;
  }
  (void)msg_scrub_secrets((char *)(uintptr_t)data, env.body_off, ctx_key_is_secret, lo, hi);
  if (env.ndup && sp->p.on_note) {
    snprintf(why, sizeof(why), "%s: removed %" PRIu32 " duplicate x-receiver lines (%" PRIu32
             " recipients left)", idstr, env.ndup, env.nrcpt);
    sp->p.on_note(sp->p.arg, orig ? orig : "(smtp)", why);
  }
  msg_envelope_done(&env);
  if (sp->p.on_ingest) {
    why[0] = 0;
    in_hook.msg = m; /* spool_ingest_bytes / spool_open_body read the pickup file */
    in_hook.fd = fd;
    in_hook.data = data;
    in_hook.len = len;
    int hr = sp->p.on_ingest(sp->p.arg, m, why, sizeof(why));
    in_hook.msg = NULL;
    if (hr < 0) {
      spool_msg_free(m);
      if (qname)
        to_bad(sp, dfd, qname, orig, why[0] ? why : "rejected by the ingest hook", idstr);
      else
        snprintf(sp->sub_why, sizeof(sp->sub_why), "%s", why[0] ? why : "rejected by the ingest hook");
      return 1;
    }
  }
  *out = m;
  return 0;
}

static int jrn_take_data(struct spool *sp, const char *name, const char *qname, uint64_t id,
                         const uint8_t *data, size_t len, const struct pinfo *pi, int fd,
                         bool stays, struct jtake *out);
static int claim_failed(struct spool *sp, const struct pname *pn);

/* A claim that failed (pn->clres): the file vanished (its producer
 * removed it: nothing to own), or it cannot be renamed (bad/ says why). */
static int claim_failed(struct spool *sp, const struct pname *pn)
{
  char why[256];
  if (pn->clres == -ENOENT) {
    write_why(sp, pn->name, "file vanished before it could be claimed", NULL);
    report_bad(sp, pn->name, "file vanished before it could be claimed");
    return 1;
  }
  snprintf(why, sizeof(why), "cannot claim the pickup file: %s", strerror(-pn->clres));
  to_bad(sp, sp->pickup_fd, pn->name, pn->name, why, NULL);
  return 1;
}

/* Read pickup file pn with system calls (no ring, a file bigger than its
 * slot, a type to check): claimed first when renamed in; a file not
 * renamed in is read under a read lease and claimed under it. Returns 0
 * (taken), 1 (bad/ or vanished, reported) or 3 (still being written). */
static int jrn_take(struct spool *sp, struct pname *pn, struct jtake *out)
{
  char why[512];
  const char *name = pn->name;
  out->msg = NULL;
  if (!pn->inplace && !pn->claimed) {
    if (pn->clres == 0) {
      claim_prep(sp, pn);
      pn->claimed = renameat(sp->pickup_fd, name, sp->pickup_fd, pn->tomb) == 0;
      pn->clres = pn->claimed ? 0 : -errno;
    }
    if (!pn->claimed)
      return claim_failed(sp, pn);
  }
  const char *at = pn->claimed ? pn->tomb : name; /* where the file is now */
  if (pn->type != DT_REG && pn->type != DT_UNKNOWN) { /* a FIFO would block a read */
    to_bad(sp, sp->pickup_fd, at, name, "not a regular file", NULL);
    return 1;
  }
  int fd = -1;
  if (atomic_load_explicit(&sp->noatime, memory_order_relaxed)) {
    fd = openat(sp->pickup_fd, at, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOATIME);
    if (fd < 0 && errno == EPERM)
      atomic_store(&sp->noatime, false);
  }
  if (fd < 0 && !atomic_load_explicit(&sp->noatime, memory_order_relaxed))
    fd = openat(sp->pickup_fd, at, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) { /* removed by its producer: nothing to own */
      write_why(sp, name, "file vanished before it could be claimed", NULL);
      report_bad(sp, name, "file vanished before it could be claimed");
      return 1;
    }
    if (errno == ELOOP) /* O_NOFOLLOW met a symbolic link */
      snprintf(why, sizeof(why), "not a regular file");
    else
      snprintf(why, sizeof(why), "cannot open the pickup file: %s", strerror(errno));
    to_bad(sp, sp->pickup_fd, at, name, why, NULL);
    return 1;
  }
  /* A file not renamed in is read under a read lease: no process has it
   * open for writing while it is read, and no writer can open it until
   * the lease is dropped (issue 18 item 3); it is claimed under the lease.
   * The first look at listing time is not enough: a writer may open the
   * file between that look and the read. */
  int lease = pn->claimed ? 1 : lease_get(fd);
  if (lease == 0) {
    close(fd);
    return 3; /* its writer's IN_CLOSE_WRITE brings it back */
  }
  struct stat st;
  int r = read_file(sp, fd, &st, why, sizeof(why));
  if (!pn->claimed) {
    struct stat st2;
    bool later;
    if (lease > 0) { /* complete, unless it is a new file whose writer is still opening it */
      later = r == 0 && st.st_size == 0 && !quiet_for(&st);
    } else { /* no lease: unchanged while read, and for QUIET_MS before */
      later = r == -EAGAIN ||
              (r == 0 && (fstat(fd, &st2) < 0 || st2.st_size != st.st_size ||
                          st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec ||
                          st2.st_mtim.tv_sec != st.st_mtim.tv_sec ||
                          st2.st_ctim.tv_nsec != st.st_ctim.tv_nsec ||
                          st2.st_ctim.tv_sec != st.st_ctim.tv_sec || !quiet_for(&st)));
    }
    int c = later ? 3 : claim_leased(sp, pn, fd);
    if (lease > 0)
      (void)fcntl(fd, F_SETLEASE, F_UNLCK);
    if (c != 0) {
      close(fd);
      if (c < 0)
        return claim_failed(sp, pn);
      return 3;
    }
    at = pn->tomb;
  }
  if (r < 0) {
    close(fd);
    if (r != -EFBIG && r != -EAGAIN && r != -EINVAL)
      snprintf(why, sizeof(why), "read error: %s", strerror(-r));
    to_bad(sp, sp->pickup_fd, at, name, why, NULL);
    return 1;
  }
  struct pinfo pi = {(uint64_t)st.st_ino, (uint64_t)st.st_size,
                     (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec};
  r = jrn_take_data(sp, name, at, pn->id, sp->rbuf.data, sp->rbuf.len, &pi, fd, false, out);
  close(fd);
  return r;
}

/* The journal entry of a checked message: its record, the signature
 * (sig[0..sn)) and the message, in sp->jbuf (or referenced, jref). */
static void jrn_emit(struct spool *sp, const char *name, const uint8_t *data,
                     const struct pinfo *pi, struct spool_msg *m, bool stays, const uint8_t *sig,
                     size_t sn, struct jtake *out)
{
  uint64_t osize = m->body_size;
  m->body_size += sn;
  struct buf *b = &sp->jbuf;
  /* positions in the batch: jbuf's bytes plus the bodies referenced so far */
  out->at = b->len + sp->jrefbytes;
  size_t r0 = rec_begin(b, REC_JMSG);
  put_header(b, m, 0); /* body_off 0: the body follows this record */
  put_u64(b, pi->ino);
  put_u64(b, pi->size);
  put_u64(b, pi->stamp);
  put_str(b, name ? name : ""); /* "" for a submission */
  rec_end(b, r0);
  size_t body = b->len + sp->jrefbytes;
  if (sn) /* a signature goes in front of the message: the stored message is the signed one */
    buf_append(b, sig, sn);
  if (stays && osize >= JREF_MIN) {
    if (sp->njrefs == sp->capjrefs) {
      sp->capjrefs = sp->capjrefs ? sp->capjrefs * 2 : 64;
      sp->jrefs = util_xrealloc(sp->jrefs, sp->capjrefs * sizeof(*sp->jrefs));
    }
    sp->jrefs[sp->njrefs++] = (struct jref){b->len, data + m->body_off, (size_t)osize};
    sp->jrefbytes += (size_t)osize;
  } else {
    buf_append(b, data + m->body_off, (size_t)osize);
  }
  m->body_mem = hot_keep2(sig, sn, data + m->body_off, osize);
  size_t attr = b->len + sp->jrefbytes;
  rec_attr(sp, b, m);
  /* offsets within the entry for now; ingest_journal makes them absolute */
  m->body_off = body - out->at;
  m->ctx_off = (uint32_t)(attr - out->at);
  m->ctx_len = (uint32_t)(b->len + sp->jrefbytes - attr);
  out->ino = pi->ino;
  out->size = pi->size;
  out->stamp = pi->stamp;
  out->msg = m;
}

/* The rest of jrn_take once the file is in memory (fd: the open file for
 * the ingest hook, or -1 when there is no hook). stays: data lives until
 * the batch is written (the arena), so a big body is written from there
 * (jref) instead of being copied into jbuf. While sp->deferring, a message
 * that stays waits in sp->dq for jrn_flush_deferred (its out->msg is set,
 * its entry not yet written). */
static int jrn_take_data(struct spool *sp, const char *name, const char *qname, uint64_t id,
                         const uint8_t *data, size_t len, const struct pinfo *pi, int fd,
                         bool stays, struct jtake *out)
{
  out->msg = NULL;
  if (id == 0) /* a submission; a pickup file has the id it was claimed for */
    id = next_id(sp);
  char idstr[SPOOL_ID_LEN + 1];
  id_format(id, sp->p.node_id, idstr);
  /* Only the body goes to the journal and the pickup file is removed once
   * it is durable; take_checked scrubs the read buffer (rbuf, or the
   * batch's pre-read buffer: ours to write). */
  struct spool_msg *m;
  size_t slo, shi;
  if (take_checked(sp, sp->pickup_fd, qname, name, idstr, id, sp->p.node_id, 0, data, len, fd, &m,
                   &slo, &shi) != 0)
    return 1;
  if ((stays || !name) && sp->deferring) { /* a submission's data lives until the flush */
    if (sp->ndq == sp->capdq) {
      size_t cap = sp->capdq ? sp->capdq * 2 : 64;
      sp->dq = util_xrealloc(sp->dq, cap * sizeof(*sp->dq));
      memset(sp->dq + sp->capdq, 0, (cap - sp->capdq) * sizeof(*sp->dq));
      sp->capdq = cap;
    }
    struct dtake *d = &sp->dq[sp->ndq++];
    d->msg = m;
    d->name = name;
    d->data = data;
    d->stays = stays;
    d->pi = *pi;
    d->out = out;
    d->hdr.len = 0;
    out->msg = m;
    return 0;
  }
  sp->sig.len = 0;
  if (sp->p.on_sign)
    sp->p.on_sign(sp->p.arg, m, data + m->body_off, (size_t)m->body_size, &sp->sig);
  jrn_emit(sp, name, data, pi, m, stays, sp->sig.data, sp->sig.len, out);
  return 0;
}

/* The deferred messages of a read-ahead group: signed together
 * (on_sign_batch), then their journal entries in the order taken. */
static void jrn_flush_deferred(struct spool *sp)
{
  if (!sp->ndq)
    return;
  sp->sjobs = util_xrealloc(sp->sjobs, sp->ndq * sizeof(*sp->sjobs));
  for (size_t i = 0; i < sp->ndq; i++) {
    struct dtake *d = &sp->dq[i];
    sp->sjobs[i] = (struct spool_sign_job){d->msg, d->data + d->msg->body_off,
                                           (size_t)d->msg->body_size, &d->hdr};
  }
  sp->p.on_sign_batch(sp->p.arg, sp->sjobs, sp->ndq);
  for (size_t i = 0; i < sp->ndq; i++) {
    struct dtake *d = &sp->dq[i];
    jrn_emit(sp, d->name, d->data, &d->pi, d->msg, d->stays, d->hdr.data, d->hdr.len, d->out);
  }
  sp->ndq = 0;
}

bool (*spool_test_keep_pickup)(const char *name);
void (*spool_test_before_forget)(void);

/* The tomb of t's pickup file: ".c.<message id>" (claim_prep). */
static void tomb_name(const struct jtake *t, char out[SPOOL_ID_LEN + 4])
{
  char id[SPOOL_ID_LEN + 1];
  snprintf(out, SPOOL_ID_LEN + 4, ".c.%s", spool_msg_id_str(t->msg, id));
}

/* t's tomb could not be removed (err): it goes to bad/, its message stays queued. */
static void forget_failed(struct spool *sp, const struct jtake *t, const char *tomb, int err)
{
  char why[256], id[SPOOL_ID_LEN + 1];
  snprintf(why, sizeof(why), "queued as %s, but the pickup file could not be removed (%s)",
           spool_msg_id_str(t->msg, id), strerror(err));
  to_bad(sp, sp->pickup_fd, tomb, t->name, why, id);
}

/* A pickup file whose message is durable in the journal leaves pickup/:
 * one unlink of its tomb (it was claimed before it was read, so the tomb
 * holds exactly the file read; the name may hold a newer file, which is
 * never touched). */
static void jrn_forget_pickup(struct spool *sp, const struct jtake *t)
{
  if (!t->name)
    return; /* a submission: no pickup file */
  if (spool_test_keep_pickup && spool_test_keep_pickup(t->name))
    return; /* as if the process died here */
  char tomb[SPOOL_ID_LEN + 4];
  tomb_name(t, tomb);
  if (unlinkat(sp->pickup_fd, tomb, 0) == 0 || errno == ENOENT)
    return;
  forget_failed(sp, t, tomb, errno);
}

/* jrn_take for a file read through the ring: returns 0 or 1 as jrn_take,
 * or 2 when jrn_take must read it (not read by the ring, possibly bigger
 * than its slot, changed meanwhile, or O_NOATIME refused). The identity
 * kept for recovery is the name, d_ino, the size read and, for small
 * slots, a checksum of the content read (before msg_scrub_secrets
 * changes the buffer), for big ones the mtime from the statx after the
 * read (a checksum of 100 KB costs more than the statx): see "Claiming is
 * atomic" in docs/spool.md. */
static int jrn_take_pre(struct spool *sp, struct pname *pn, const struct pre *pr,
                        size_t slot, bool stat, struct jtake *out)
{
  char why[512];
  const char *name = pn->name;
  out->msg = NULL;
  if (pn->busy)
    return 3;
  if (!pn->inplace && !pn->claimed)
    return claim_failed(sp, pn);
  if (pn->type != DT_REG || pr->op == -ECANCELED)
    return 2;
  const char *at = pn->claimed ? pn->tomb : name; /* where the file is now */
  if (pr->op == -ENOENT) {
    write_why(sp, name, "file vanished before it could be claimed", NULL);
    report_bad(sp, name, "file vanished before it could be claimed");
    return 1;
  }
  if (pr->op == -EPERM) {
    /* not ours to open with O_NOATIME (or not at all: jrn_take says) */
    atomic_store(&sp->noatime, false);
    return 2;
  }
  if (pr->op == -ELOOP || pr->rd == -EISDIR) /* replaced since the listing */
    snprintf(why, sizeof(why), "not a regular file");
  else if (pr->op < 0)
    snprintf(why, sizeof(why), "cannot open the pickup file: %s", strerror(-pr->op));
  else if (pr->rd < 0)
    snprintf(why, sizeof(why), "read error: %s", strerror(-pr->rd));
  else if (!pn->claimed)
    return 2; /* not claimed (leased, but no lease held now): jrn_take */
  else if ((size_t)pr->rd >= slot)
    return 2; /* the slot is full: the file may be bigger */
  else if ((uint64_t)pr->rd > sp->p.max_message_size)
    snprintf(why, sizeof(why), "file of %d bytes is over Max_Message_Size (%" PRIu64 " bytes)",
             pr->rd, sp->p.max_message_size);
  else if (pr->leased && (pr->lst.st_ino != pn->ino || !S_ISREG(pr->lst.st_mode) ||
                          (uint64_t)pr->lst.st_size != (uint64_t)pr->rd))
    return 2; /* changed since it was listed: jrn_take tells */
  else if (stat && !pr->leased &&
           (pr->st < 0 || pr->stx.stx_ino != pn->ino || !S_ISREG(pr->stx.stx_mode) ||
            pr->stx.stx_size != (uint64_t)pr->rd))
    return 2; /* changed since it was read, or listed: jrn_take tells */
  else {
    size_t len = (size_t)pr->rd;
    uint64_t mtime = pr->leased ? (uint64_t)pr->lst.st_mtim.tv_sec * 1000000000u +
                                      (uint64_t)pr->lst.st_mtim.tv_nsec
                                : (uint64_t)pr->stx.stx_mtime.tv_sec * 1000000000u +
                                      (uint64_t)pr->stx.stx_mtime.tv_nsec;
    struct pinfo pi = {pn->ino, len, stat ? mtime : STAMP_CRC | crc32c(0, pr->data, len)};
    return jrn_take_data(sp, name, at, pn->id, pr->data, len, &pi, -1, true, out);
  }
  to_bad(sp, sp->pickup_fd, at, name, why, NULL);
  return 1;
}

/* Remove a durable batch's pickup files (their tombs): one ring
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
    char **tombs = util_xmalloc(files * sizeof(*tombs));
    char (*tb)[SPOOL_ID_LEN + 4] = util_xmalloc(files * sizeof(*tb));
    size_t *who = util_xmalloc(files * sizeof(*who));
    unsigned nu = 0;
    for (size_t i = 0; i < bt->n; i++) {
      if (!bt->c[i].name)
        continue;
      tomb_name(&bt->c[i], tb[nu]);
      tombs[nu] = tb[nu];
      who[nu++] = i;
    }
    int r = iobatch_unlink(ib, sp->pickup_fd, tombs, nu);
    for (unsigned k = 0; k < nu; k++) {
      int res = r == 0 ? ib->res[k] : -ECANCELED;
      if (res == -ECANCELED) /* the ring failed before it */
        jrn_forget_pickup(sp, &bt->c[who[k]]);
      else if (res < 0 && res != -ENOENT)
        forget_failed(sp, &bt->c[who[k]], tombs[k], -res);
    }
    free(who);
    free(tb);
    free(tombs);
    return;
  }
  for (size_t i = 0; i < bt->n; i++)
    jrn_forget_pickup(sp, &bt->c[i]);
}

/* A batch that could not be made durable: its pickup files go back
 * under their names for the next round (unclaim_at), and what reached
 * the segment is retired so it can never be taken for mail. */
static void jrn_batch_fail(struct spool *sp, struct jbatch *bt, bool put, int err)
{
  struct buf done = {0};
  uint32_t *unpin = util_xmalloc(bt->n * sizeof(*unpin));
  for (size_t i = 0; i < bt->n; i++) {
    if (bt->c[i].name) {
      char tomb[SPOOL_ID_LEN + 4];
      tomb_name(&bt->c[i], tomb);
      unclaim_at(sp, tomb, bt->c[i].name, false); /* read whole: complete */
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
  struct jbatch *bt = util_xcalloc(1, sizeof(*bt));
  bt->c = util_xcalloc(max, sizeof(*bt->c));
  sp->jbuf.len = sp->jbuf.off = 0;
  sp->njrefs = sp->jrefbytes = 0;
  iobatch_get(&sp->iread, &sp->iread_tried, sp->p.batch_max, true);
  /* Keep the inotify queue short while a long listing is taken (a burst
   * of renames, and the tombs' own events, would overflow it, and every
   * name whose event was lost is then checked for a writer). */
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
    if (bt->n < max && jrn_take_data(sp, NULL, NULL, 0, s->data, s->len, &pi, -1, false, &bt->c[bt->n]) == 0) {
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
  while (bt->n < max && sp->inames < sp->nnames && batch_len(sp) < JRN_BATCH_BYTES) {
    size_t k = sp->nnames - sp->inames;
    if (k > max - bt->n)
      k = max - bt->n;
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
      /* files renamed in are claimed, then read under their tombs; files
       * not renamed in are read under a read lease and claimed under it
       * (issue 18 items 2 and 3) */
      /* The claims queue an IN_MOVED_TO each (for the tomb): during a
       * burst of renames in they would fill the inotify queue (16,384
       * events by default), and every name whose event the kernel then
       * drops takes the slower path of a file written in place. Reading
       * the events per group keeps the queue short. */
      if (read_events(sp))
        sp->scan_due = true;
      claim_group(sp, ib, sp->names + sp->inames, k);
      lease_group(sp, sp->names + sp->inames, k);
      int rr = iobatch_read(ib, sp->pickup_fd, sp->names + sp->inames, (unsigned)k,
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
          else
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
    else
      free(pn->name);
  }
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
