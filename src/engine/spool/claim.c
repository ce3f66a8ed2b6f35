/* claim.c owns the pickup directory's names and files before they are
 * read into a batch: claiming them, by exchanging the two directory
 * inodes behind the pickup name (Pickup_Claim = exchange: claim_dirs_open,
 * claim_swap) or by renaming each file to its tomb (rename: claim_*,
 * tomb_*, unclaim*), listing the claimed directory (scan_pickup), the
 * inotify events and the set of names renamed in (moved_*), waiting for
 * work (wait_work), and read leases on files written in place (lease_*,
 * quiet_for). It never reads or parses a message, never removes a pickup
 * file (only renames and links it), never takes a file written in place
 * without a lease or a quiet period, and never logs.
 * Thread: the ingest thread (spool_ingest), spool_open (claim_dirs_open),
 * and recovery's scan_pickup before ingestion starts; moved_free at
 * spool_close. */
#include "spool_int.h"
#include "spool_test.h"

void (*spool_test_after_swap)(void);

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

/* A name is remembered with the watch of the directory it was renamed
 * into ("<wd>/<name>"): the same name renamed into the other directory
 * inode is another file. */
static void moved_key(int wd, const char *name, char out[NAME_MAX + 16])
{
  snprintf(out, NAME_MAX + 16, "%d/%s", wd, name);
}

/* A burst of renames (tens of thousands of files renamed in before the
 * engine lists them) is remembered whole: the set doubles when half full,
 * up to MOVED_MAX slots; only beyond that are names checked. */
static void moved_add(struct spool *sp, int wd, const char *ename)
{
  char name[NAME_MAX + 16];
  moved_key(wd, ename, name);
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
static bool moved_take(struct spool *sp, int wd, const char *ename)
{
  char name[NAME_MAX + 16];
  moved_key(wd, ename, name);
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
int lease_get(int fd)
{
  (void)fcntl(fd, F_SETSIG, SIGURG);
  if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0)
    return 1;
  return errno == EAGAIN ? 0 : -1;
}

/* Whether st has not changed for QUIET_MS (mtime and ctime). */
bool quiet_for(const struct stat *st)
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
    fd = openat(sp->claim_fd, name, fl | O_NOATIME);
  if (fd < 0)
    fd = openat(sp->claim_fd, name, fl);
  return fd;
}

/* ---- claiming by exchange (Pickup_Claim = exchange; issue 25) ----
 *
 * The pickup name is always present and always a directory producers can
 * write; behind it are two directory inodes with the same owner, group
 * and mode. One is named pickup, the other <Spoolbase>/claim/pickup
 * (claim/ is 0700: no producer reaches it by path). A claim is one
 * renameat2(RENAME_EXCHANGE) of the two names: every file that was in
 * pickup is now in the claimed directory, under its own name, and a name
 * a producer reuses afterwards lands in the other inode, now named
 * pickup. So the listing, the reads, the moves to bad/ and the removal
 * after the commit are by name in the claimed directory, with no rename
 * per file and nothing to compare. What is not taken in a round (a file
 * still being written, a batch that could not be made durable) stays
 * where it is and goes back under the pickup name with the next exchange,
 * to be claimed again after that: nothing waits for a writer. Recovery
 * knows a committed file by its journal entry's name and identity in the
 * claimed directory (recover.c). */

#define CLAIM_ROOT "claim"
#define CLAIM_LEAF "pickup"

/* Give the claimed directory the pickup directory's owner, group and
 * mode (an operator may change them at any time): the exchange puts it
 * under the pickup name. 0 or -errno. */
static int claim_match(struct spool *sp)
{
  struct stat p, c;
  if (fstat(sp->pick_fd, &p) < 0 || fstat(sp->claim_fd, &c) < 0)
    return -errno;
  if ((p.st_uid != c.st_uid || p.st_gid != c.st_gid) &&
      fchown(sp->claim_fd, p.st_uid, p.st_gid) < 0)
    return -errno;
  /* after the chown, which clears set-id bits */
  if ((p.st_mode & 07777) != (c.st_mode & 07777) && fchmod(sp->claim_fd, p.st_mode & 07777) < 0)
    return -errno;
  return 0;
}

/* Whether the name pickup still names pick_fd's directory; else (an
 * operator made a new one) that one is adopted. 0 or -errno. */
static int claim_adopt(struct spool *sp)
{
  struct stat a, b;
  if (fstatat(sp->pick_parent_fd, sp->pick_leaf, &b, AT_SYMLINK_NOFOLLOW) < 0)
    return -errno;
  if (fstat(sp->pick_fd, &a) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
    return 0;
  if (!S_ISDIR(b.st_mode))
    return -ENOTDIR;
  int fd = openat(sp->pick_parent_fd, sp->pick_leaf, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return -errno;
  close(sp->pick_fd);
  sp->pick_fd = fd;
  if (sp->ino_fd >= 0) {
    if (sp->pick_wd >= 0)
      (void)inotify_rm_watch(sp->ino_fd, sp->pick_wd);
    sp->pick_wd = inotify_add_watch(sp->ino_fd, sp->pickup_path, IN_MOVED_TO | IN_CLOSE_WRITE);
  }
  return 0;
}

/* Claim everything in pickup/ with one exchange of the two names. 0 or
 * -errno (nothing was claimed; the claimed directory is listed anyway). */
int claim_swap(struct spool *sp)
{
  if (!sp->exchange)
    return 0; /* files are claimed one by one (claim_group) */
  int r = claim_adopt(sp);
  if (r == 0)
    r = claim_match(sp);
  if (r < 0)
    return r;
  if (renameat2(sp->pick_parent_fd, sp->pick_leaf, sp->claim_parent_fd, CLAIM_LEAF,
                RENAME_EXCHANGE) < 0)
    return -errno;
  int t = sp->pick_fd;
  sp->pick_fd = sp->claim_fd;
  sp->claim_fd = t;
  t = sp->pick_wd;
  sp->pick_wd = sp->claim_wd;
  sp->claim_wd = t;
  atomic_fetch_add_explicit(&sp->st_swaps, 1, memory_order_relaxed);
  if (spool_test_after_swap)
    spool_test_after_swap(); /* a crash right after the exchange */
  return 0;
}

/* spool_open: the pickup directory is open (pick_fd), inotify made.
 * Pickup_Claim = exchange: open (or make) <Spoolbase>/claim and the
 * claimed directory, give it pickup's owner, group and mode, check that
 * the file system exchanges names, and watch both directories. rename:
 * claim_fd is pickup/ itself; a claimed directory left by an exchange run
 * is opened as spare_fd for recovery (recover.c empties it). 0 or -errno
 * with why set. */
int claim_dirs_open(struct spool *sp, char *why, size_t whylen)
{
  sp->exchange = sp->p.pickup_exchange;
  if (!sp->exchange) {
    sp->claim_fd = dup(sp->pick_fd);
    if (sp->claim_fd < 0) {
      snprintf(why, whylen, "dup: %s", strerror(errno));
      return -errno;
    }
    int cr = openat(sp->base_fd, CLAIM_ROOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (cr >= 0) {
      sp->spare_fd = openat(cr, CLAIM_LEAF, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
      close(cr);
    }
    if (sp->ino_fd >= 0 &&
        (sp->pick_wd = sp->claim_wd = inotify_add_watch(sp->ino_fd, sp->pickup_path,
                                                        IN_MOVED_TO | IN_CLOSE_WRITE)) < 0) {
      close(sp->ino_fd); /* the rescan timer still finds files */
      sp->ino_fd = -1;
    }
    return 0;
  }
  char *path = util_xstrdup(sp->pickup_path);
  size_t l = strlen(path);
  while (l > 1 && path[l - 1] == '/')
    path[--l] = 0;
  char *slash = strrchr(path, '/');
  const char *parent = ".";
  if (slash == path) {
    parent = "/";
    sp->pick_leaf = util_xstrdup(path + 1);
  } else if (slash) {
    *slash = 0;
    parent = path;
    sp->pick_leaf = util_xstrdup(slash + 1);
  } else {
    sp->pick_leaf = util_xstrdup(path);
  }
  int r = 0;
  sp->pick_parent_fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(path);
  if (sp->pick_parent_fd < 0) {
    r = -errno;
    snprintf(why, whylen, "the directory holding %s: %s", sp->pickup_path, strerror(-r));
    return r;
  }
  if ((mkdirat(sp->base_fd, CLAIM_ROOT, 0700) < 0 && errno != EEXIST) ||
      (sp->claim_parent_fd = openat(sp->base_fd, CLAIM_ROOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC |
                                                                O_NOFOLLOW)) < 0 ||
      (mkdirat(sp->claim_parent_fd, CLAIM_LEAF, 0700) < 0 && errno != EEXIST) ||
      (sp->claim_fd = openat(sp->claim_parent_fd, CLAIM_LEAF,
                             O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
    r = -errno;
    snprintf(why, whylen, "%s/" CLAIM_ROOT "/" CLAIM_LEAF ": %s", sp->base, strerror(-r));
    return r;
  }
  struct stat a, b;
  if (fstat(sp->pick_fd, &a) < 0 || fstat(sp->claim_fd, &b) < 0 || a.st_dev != b.st_dev) {
    snprintf(why, whylen, "pickup directory %s is not on the file system of %s (claiming "
             "exchanges it with %s/" CLAIM_ROOT "/" CLAIM_LEAF ")", sp->pickup_path, sp->base,
             sp->base);
    return -EXDEV;
  }
  if ((r = claim_match(sp)) < 0) {
    snprintf(why, whylen, "cannot give %s/" CLAIM_ROOT "/" CLAIM_LEAF " the owner and mode of %s "
             "(run the engine as the owner of %s, or as root): %s", sp->base, sp->pickup_path,
             sp->pickup_path, strerror(-r));
    return r;
  }
  /* The file system must exchange two names atomically (ext4, xfs,
   * btrfs, tmpfs do; some overlay and network ones do not). */
  (void)unlinkat(sp->claim_parent_fd, "probe.a", AT_REMOVEDIR);
  (void)unlinkat(sp->claim_parent_fd, "probe.b", AT_REMOVEDIR);
  if (mkdirat(sp->claim_parent_fd, "probe.a", 0700) < 0 ||
      mkdirat(sp->claim_parent_fd, "probe.b", 0700) < 0 ||
      renameat2(sp->claim_parent_fd, "probe.a", sp->claim_parent_fd, "probe.b",
                RENAME_EXCHANGE) < 0)
    r = -errno;
  (void)unlinkat(sp->claim_parent_fd, "probe.a", AT_REMOVEDIR);
  (void)unlinkat(sp->claim_parent_fd, "probe.b", AT_REMOVEDIR);
  if (r < 0) {
    snprintf(why, whylen, "%s: the file system cannot exchange two names (renameat2 "
             "RENAME_EXCHANGE), which claiming pickup files needs: %s", sp->base, strerror(-r));
    return r;
  }
  sp->pick_wd = sp->claim_wd = -1;
  if (sp->ino_fd >= 0) {
    char cpath[PATH_MAX];
    snprintf(cpath, sizeof cpath, "%s/" CLAIM_ROOT "/" CLAIM_LEAF, sp->base);
    sp->pick_wd = inotify_add_watch(sp->ino_fd, sp->pickup_path, IN_MOVED_TO | IN_CLOSE_WRITE);
    sp->claim_wd = inotify_add_watch(sp->ino_fd, cpath, IN_MOVED_TO | IN_CLOSE_WRITE);
    if (sp->pick_wd < 0 || sp->claim_wd < 0) {
      close(sp->ino_fd); /* the rescan timer still finds files */
      sp->ino_fd = -1;
    }
  }
  return 0;
}

/* ---- claiming by rename (Pickup_Claim = rename, the default) ----
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
 * read (claim_leased): no writer can have it open then. With
 * Pickup_Claim = exchange these are no-ops: the exchange claimed the
 * files, which are read and removed under their own names. */

void claim_prep(struct spool *sp, struct pname *pn)
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
  if (link && linkat(sp->claim_fd, tomb, sp->claim_fd, name, 0) == 0) {
    (void)unlinkat(sp->claim_fd, tomb, 0);
    return 0;
  }
  if (link && errno == EEXIST)
    return -1;
  return renameat2(sp->claim_fd, tomb, sp->claim_fd, name, RENAME_NOREPLACE);
}

/* A claimed file that is not to be ingested now goes back to pickup/:
 * under its name when that is free, else as "requeued-<id>", else it
 * stays under its tomb (recovery requeues it at the next start). link: see
 * tomb_put_back. */
void unclaim_at(struct spool *sp, const char *tomb, const char *name, bool link)
{
  char alt[64];
  if (tomb_put_back(sp, tomb, name, link) == 0)
    return;
  snprintf(alt, sizeof alt, "requeued-%s", tomb + 3);
  (void)tomb_put_back(sp, tomb, alt, link);
}

void unclaim(struct spool *sp, struct pname *pn)
{
  if (pn->claimed && !sp->exchange) /* exchange: it stays in the claimed directory */
    unclaim_at(sp, pn->tomb, pn->name, false); /* read whole, as it is: complete */
  pn->claimed = false;
}

/* Claim the files renamed in among pn[0..k) (those not claimed yet):
 * through the ring (one submission; io-wq runs the renames), else with
 * renameat calls (renameat calls on the ingest thread, and unlinkat calls
 * on the unlink thread, cost more engine CPU in A/B runs: bench/ANALYSIS.md,
 * session 7). pn[j].clres says how it went. */
void claim_group(struct spool *sp, struct iobatch *ib, struct pname *pn, size_t k)
{
  if (sp->exchange)
    return; /* claimed by the exchange */
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
  bool ring = ib && iobatch_rename(ib, sp->claim_fd, pn, (unsigned)k) == 0;
  for (size_t j = 0; j < k; j++) {
    if (pn[j].clres != 1)
      continue;
    if (ring)
      pn[j].clres = ib->pre[j].st;
    else if (renameat(sp->claim_fd, pn[j].name, sp->claim_fd, pn[j].tomb) == 0)
      pn[j].clres = 0;
    else if (errno == ENOENT && ib &&
             faccessat(sp->claim_fd, pn[j].tomb, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
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
int claim_leased(struct spool *sp, struct pname *pn, int fd)
{
  if (sp->exchange) { /* in the claimed directory already */
    pn->claimed = true;
    return 0;
  }
  claim_prep(sp, pn);
  if (renameat(sp->claim_fd, pn->name, sp->claim_fd, pn->tomb) < 0)
    return pn->clres = -errno;
  struct stat a, b;
  if (fstat(fd, &a) == 0 && fstatat(sp->claim_fd, pn->tomb, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
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
void lease_group(struct spool *sp, struct pname *pn, size_t k)
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
void lease_group_done(struct spool *sp, struct pname *pn, struct pre *pr, size_t k)
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

void drain_fd(int fd)
{
  char b[4096];
  while (fd >= 0 && read(fd, b, sizeof(b)) > 0) {
  }
}

/* Read the inotify events of both directories: names renamed in are
 * remembered with their directory (moved_add). True when one may bring a
 * file to take. */
bool read_events(struct spool *sp)
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
          moved_add(sp, ev->wd, ev->name);
        any = true;
      }
      p += sizeof(*ev) + ev->len;
    }
  }
  return any;
}

/* List the claimed directory (ingest: for taking the files, which consumes their names
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
  return scan_dir(sp, sp->claim_fd, sp->claim_wd, ingest);
}

int scan_dir(struct spool *sp, int dfd, int wd, bool ingest)
{
  names_clear(sp);
  int fd = dup(dfd);
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
        (pn->type == DT_REG || pn->type == DT_UNKNOWN) && (!ingest || !moved_take(sp, wd, pn->name));
    pn->busy = false;
    pn->claimed = sp->exchange && !pn->inplace; /* renamed in and exchanged: ours */
    pn->lfd = -1;
    pn->clres = 0;
    pn->id = 0;
    pn->tomb[0] = 0;
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
bool wait_work(struct spool *sp, int timeout_ms)
{
  if (sp->inames < sp->nnames || atomic_load(&sp->nsub) || signq_ready(sp))
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
    if (atomic_load(&sp->nsub) || signq_ready(sp)) /* signed messages to write */
      return true;
    uint64_t now = clock_mono_ns();
    if (atomic_exchange(&sp->kick, 0) || now >= sp->next_rescan_ns)
      sp->scan_due = true;
    if (sp->busy && sp->ino_fd < 0 && sp->next_rescan_ns > now + 200000000u)
      sp->next_rescan_ns = now + 200000000u; /* no close events: look again soon */
    /* exchange: files of the claimed directory being signed (signq.c)
     * are in it under their names until their entries are written: no
     * listing (it would take them again) and no exchange (it would put
     * them back under the pickup name) until then; spool_sign_done wakes
     * this loop */
    bool held = sp->exchange && signq_busy(sp);
    if (sp->scan_due && !held) {
      sp->scan_due = false;
      wait_drained(sp); /* nothing of the claimed directory is in flight */
      int sr = claim_swap(sp);
      if (sr < 0) /* nothing claimed; what is left in the claimed directory is listed */
        atomic_store(&sp->last_err, sr);
      if (scan_pickup(sp, true) == 0 && sp->nnames > 0)
        return true;
    }
    if (now >= deadline || atomic_load(&sp->stop))
      return false;
    if (sp->scan_due && !held) { /* files were renamed in during that listing */
      ms = 0;
      continue;
    }
    uint64_t until = deadline < sp->next_rescan_ns ? deadline : sp->next_rescan_ns;
    ms = (int)((until - now + 999999u) / 1000000u);
  }
}
