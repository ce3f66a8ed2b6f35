/* spool.c owns opening and closing a spool (its directories, inotify,
 * the pipeline threads' state) and bad/: moving rejected input and
 * damaged messages there with a .why, and reporting them through on_bad.
 * It never deletes input silently and never logs (the engine does, from
 * on_bad). Threads: spool_open / spool_close on the engine's main thread;
 * the bad/ helpers on the thread that found the problem. */
#include "spool_int.h"

/* ---- bad/ ---- */

void write_why(struct spool *sp, const char *name, const char *reason, const char *id)
{
  char why[SPOOL_NAME_MAX + 8];
  if (strlen(name) > 222) /* no room for ".why" (bad_name cuts names it gives) */
    snprintf(why, sizeof(why), "%.200s.%s.why", name, id ? id : "long");
  else
    snprintf(why, sizeof(why), "%s.why", name);
  int fd = openat(sp->bad_fd, why, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return;
  char text[1024];
  int n = snprintf(text, sizeof(text), "%s\nid: %s\ntime_ms: %" PRIu64 "\n%s%.255s%s", reason,
                   id ? id : "-", clock_wall_ms(), strlen(name) > 200 ? "name: " : "",
                   strlen(name) > 200 ? name : "", strlen(name) > 200 ? "\n" : "");
  if (n > (int)sizeof(text))
    n = (int)sizeof(text);
  (void)write_all(fd, text, (size_t)n, -1);
  close(fd);
}

/* A free name in bad/ for name: name, or name.<id> when taken; a name
 * too long for the .why beside it (over 200 bytes) is cut to 200 bytes
 * plus .<id> (the .why's first lines give the whole name). */
void bad_name(struct spool *sp, const char *name, const char *id, char *out, size_t n)
{
  snprintf(out, n, "%s", name);
  if (strlen(name) > 200 || faccessat(sp->bad_fd, out, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
    snprintf(out, n, "%.200s.%s", name, id ? id : "dup");
}

void report_bad(struct spool *sp, const char *name, const char *reason)
{
  if (name[0])
    atomic_fetch_add_explicit(&sp->st_rejected, 1, memory_order_relaxed);
  if (sp->p.on_bad)
    sp->p.on_bad(sp->p.arg, name, reason);
}

/* The named limit of scrub_bad: x-context lines are looked for in the
 * file's first bytes up to here (the envelope and the header section). */
#define BAD_SCRUB_MAX (1024u * 1024u)

/* Overwrite secret x-context values in bad/<name> (issue 18 item 6): in
 * the envelope and header section (up to the first empty line, at most
 * BAD_SCRUB_MAX bytes), each secret value becomes "_=****" of the same
 * length, as at ingest. A file we may not write (another owner) is
 * replaced by a scrubbed copy. Best effort, never blocks on a FIFO. */
static void scrub_bad(struct spool *sp, const char *name)
{
  int fd = openat(sp->bad_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return;
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
    close(fd);
    return;
  }
  size_t want = (uint64_t)st.st_size < BAD_SCRUB_MAX ? (size_t)st.st_size : BAD_SCRUB_MAX;
  char *p = malloc(want);
  ssize_t n = p ? pread(fd, p, want, 0) : -1;
  if (n <= 0) {
    free(p);
    close(fd);
    return;
  }
  size_t end = (size_t)n; /* the end of the header section */
  for (size_t i = 0; i + 1 < (size_t)n; i++)
    if (p[i] == '\n' && (p[i + 1] == '\n' || (p[i + 1] == '\r' && i + 2 < (size_t)n &&
                                                p[i + 2] == '\n'))) {
      end = i + 1;
      break;
    }
  size_t lo, hi;
  if (msg_scrub_secrets(p, end, ctx_key_is_secret, &lo, &hi) > 0) {
    int wfd = openat(sp->bad_fd, name, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (wfd >= 0) {
      (void)write_all(wfd, p + lo, hi - lo, (off_t)lo);
      close(wfd);
    } else { /* not ours to write: a scrubbed copy takes its place */
      char tmp[SPOOL_NAME_MAX + 16];
      snprintf(tmp, sizeof tmp, ".scrub-%.200s", name);
      int cfd = openat(sp->bad_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (cfd >= 0) {
        int r = write_all(cfd, p, (size_t)n, 0);
        for (off_t at = n; r == 0;) { /* the rest as it is */
          char chunk[65536];
          ssize_t k = pread(fd, chunk, sizeof chunk, at);
          if (k <= 0) {
            r = k < 0 ? -errno : 0;
            break;
          }
          r = write_all(cfd, chunk, (size_t)k, at);
          at += k;
        }
        close(cfd);
        if (r < 0 || renameat(sp->bad_fd, tmp, sp->bad_fd, name) < 0)
          unlinkat(sp->bad_fd, tmp, 0);
      }
    }
  }
  explicit_bzero(p, (size_t)n);
  free(p);
  close(fd);
}

/* Move queue file `qname` in bucket dir dfd to bad/<name> with its secrets
 * overwritten, plus the .why. */
void to_bad(struct spool *sp, int dfd, const char *qname, const char *name,
                   const char *reason, const char *id)
{
  char dst[SPOOL_NAME_MAX + 1];
  bad_name(sp, name, id, dst, sizeof(dst));
  if (renameat(dfd, qname, sp->bad_fd, dst) == 0) {
    scrub_bad(sp, dst);
    write_why(sp, dst, reason, id);
  }
  report_bad(sp, name, reason);
}

int spool_bad(struct spool *sp, struct spool_msg *msg, const char *reason)
{
  char id[SPOOL_ID_LEN + 1], meta[SPOOL_ID_LEN + 3], dst[SPOOL_NAME_MAX + 1];
  id_format(msg->id, msg->node, id);
  if (msg->jseg) { /* its body goes to bad/<id>; the journal forgets it */
    bad_name(sp, id, id, dst, sizeof(dst));
    int fd = openat(sp->bad_fd, dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int r = fd < 0 ? -errno : copy_out(jfd_of(sp, msg->jseg), msg->body_off, msg->body_size, fd);
    if (fd >= 0)
      close(fd);
    write_why(sp, dst, reason, id);
    report_bad(sp, id, reason);
    struct buf b = {0};
    rec_done(&b, msg);
    jrn_retire(sp, &b, &msg->jseg, 1);
    buf_done(&b, 0);
    spool_msg_free(msg);
    return r;
  }
  snprintf(meta, sizeof(meta), "%s.m", id);
  int dfd = sp->bucket_fd[msg->bucket], r = 0;
  bad_name(sp, id, id, dst, sizeof(dst));
  if (renameat(dfd, id, sp->bad_fd, dst) < 0)
    r = -errno;
  char mdst[SPOOL_NAME_MAX + 3];
  snprintf(mdst, sizeof(mdst), "%s.m", dst);
  if (renameat(dfd, meta, sp->bad_fd, mdst) < 0 && r == 0)
    r = -errno;
  write_why(sp, dst, reason, id);
  report_bad(sp, id, reason);
  spool_msg_free(msg);
  return r;
}

/* ---- open / close ---- */

IMPETUS_PRINTF(4, 5)
static struct spool *open_fail(struct spool *sp, char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  if (err && errlen)
    vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  spool_close(sp);
  return NULL;
}

static int open_dir(int at, const char *path, bool create)
{
  if (create && mkdirat(at, path, 0700) < 0 && errno != EEXIST)
    return -errno;
  int fd = openat(at, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

struct spool *spool_open(const struct spool_params *p, char *err, size_t errlen)
{
  if (!p->spoolbase || !*p->spoolbase) {
    snprintf(err, errlen, "Spoolbase is not set");
    return NULL;
  }
  struct spool *sp = util_xcalloc(1, sizeof(*sp));
  atomic_init(&sp->noatime, true);

  sp->p = *p;
  sp->base_fd = sp->pick_fd = sp->claim_fd = sp->queue_fd = sp->bad_fd = sp->ino_fd = -1;
  sp->wake_fd = sp->pick_parent_fd = sp->claim_parent_fd = sp->pick_wd = sp->claim_wd = -1;
  sp->spare_fd = -1;
  sp->jdir_fd = -1;
  for (unsigned i = 0; i < JRN_SLOTS; i++)
    atomic_init(&sp->jfd[i], -1);
  sp->jfirst = sp->jnext = 1;
  pthread_mutex_init(&sp->jlock, NULL);
  pthread_mutex_init(&sp->qlock, NULL);
  pthread_mutex_init(&sp->sublock, NULL);
  pthread_cond_init(&sp->syncq.cond, NULL);
  pthread_cond_init(&sp->qdrained, NULL);
  pthread_cond_init(&sp->unlinkq.cond, NULL);
  signq_init(sp);
  for (int i = 0; i < NBUCKETS; i++)
    sp->bucket_fd[i] = -1;
  sp->base = util_xstrdup(p->spoolbase);
  if (p->pickup_dir) {
    sp->pickup_path = util_xstrdup(p->pickup_dir);
  } else {
    sp->pickup_path = util_xmalloc(strlen(sp->base) + 8);
    sprintf(sp->pickup_path, "%s/pickup", sp->base);
  }
  sp->p.spoolbase = sp->base;
  sp->p.pickup_dir = sp->pickup_path;
  if (!sp->p.max_message_size)
    sp->p.max_message_size = SPOOL_DEFAULT_MAX_MESSAGE_SIZE;
  if (!sp->p.batch_max)
    sp->p.batch_max = 512;
  if (!sp->p.rescan_ms)
    sp->p.rescan_ms = 2000;
  if (!sp->p.node_id)
    sp->p.node_id = (uint16_t)getpid();
  int r;
  if ((r = open_dir(AT_FDCWD, sp->base, true)) < 0)
    return open_fail(sp, err, errlen, "Spoolbase %s: %s", sp->base, strerror(-r));
  sp->base_fd = r;
  if ((r = open_dir(AT_FDCWD, sp->pickup_path, true)) < 0)
    return open_fail(sp, err, errlen, "pickup directory %s: %s", sp->pickup_path, strerror(-r));
  sp->pick_fd = r;
  if ((r = open_dir(sp->base_fd, "queue", true)) < 0)
    return open_fail(sp, err, errlen, "%s/queue: %s", sp->base, strerror(-r));
  sp->queue_fd = r;
  if ((r = open_dir(sp->base_fd, "bad", true)) < 0)
    return open_fail(sp, err, errlen, "%s/bad: %s", sp->base, strerror(-r));
  sp->bad_fd = r;
  for (int i = 0; i < NBUCKETS; i++) {
    char name[4];
    snprintf(name, sizeof(name), "%02x", i);
    if ((r = open_dir(sp->queue_fd, name, true)) < 0)
      return open_fail(sp, err, errlen, "%s/queue/%s: %s", sp->base, name, strerror(-r));
    sp->bucket_fd[i] = r;
  }
  if ((r = open_dir(sp->queue_fd, "journal", true)) < 0)
    return open_fail(sp, err, errlen, "%s/queue/journal: %s", sp->base, strerror(-r));
  sp->jdir_fd = r;
  struct stat a, b;
  if (fstat(sp->pick_fd, &a) < 0 || fstat(sp->queue_fd, &b) < 0 || a.st_dev != b.st_dev)
    return open_fail(sp, err, errlen,
                     "pickup directory %s is not on the file system of %s/queue (claiming "
                     "exchanges directories)",
                     sp->pickup_path, sp->base);
  if (faccessat(sp->pick_fd, ".", R_OK | W_OK | X_OK, AT_EACCESS) < 0 ||
      faccessat(sp->queue_fd, ".", R_OK | W_OK | X_OK, AT_EACCESS) < 0)
    return open_fail(sp, err, errlen, "spool %s is not writable: %s", sp->base, strerror(errno));
  if (p->secret_key_file) {
    char why[512];
    if (seal_load(sp, p->secret_key_file, why, sizeof why) < 0)
      return open_fail(sp, err, errlen, "%s", why);
  }
  sp->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  char cwhy[768];
  if ((r = claim_dirs_open(sp, cwhy, sizeof cwhy)) < 0)
    return open_fail(sp, err, errlen, "%s", cwhy);
  sp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (sp->wake_fd < 0)
    return open_fail(sp, err, errlen, "eventfd: %s", strerror(errno));
  sp->scan_due = true;
  return sp;
}

void names_clear(struct spool *sp)
{
  for (size_t i = sp->inames; i < sp->nnames; i++) {
    unclaim(sp, &sp->names[i]); /* claimed, not taken: back under its name (claim.c) */
    free(sp->names[i].name);
  }
  sp->nnames = sp->inames = 0;
}

void spool_close(struct spool *sp)
{
  if (!sp)
    return;
  spool_stop(sp);
  signq_free(sp); /* before wake_fd and the submissions go */
  if (sp->jdir_fd >= 0) {
    /* what workers posted last (DONE records of the final deliveries) */
    if (sp->jcur) /* the DONE records of the last deliveries */
      (void)jrn_sync(sp, sp->jcur);
    for (unsigned i = 0; i < JRN_SLOTS; i++)
      jfd_set(sp, i, -1);
    close(sp->jdir_fd);
  }
  buf_done(&sp->jbuf, 0);
  buf_done(&sp->sig, 0);
  for (size_t i = 0; i < sp->capdq; i++)
    buf_done(&sp->dq[i].hdr, 0);
  free(sp->dq);
  free(sp->sjobs);
  free(sp->jrefs);
  free(sp->jiov);
  buf_done(&sp->jretry, 0);
  iobatch_free(sp->iread);
  iobatch_free(sp->iunlink);
  pthread_mutex_destroy(&sp->jlock);
  pthread_mutex_destroy(&sp->qlock);
  sub_fail_all(sp, -ESHUTDOWN);
  pthread_mutex_destroy(&sp->sublock);
  pthread_cond_destroy(&sp->syncq.cond);
  pthread_cond_destroy(&sp->qdrained);
  pthread_cond_destroy(&sp->unlinkq.cond);
  int fds[] = {sp->base_fd, sp->pick_fd,       sp->claim_fd,        sp->pick_parent_fd,
               sp->claim_parent_fd, sp->spare_fd, sp->queue_fd, sp->bad_fd, sp->ino_fd,
               sp->wake_fd};
  for (size_t i = 0; i < UTIL_ARRAY_LEN(fds); i++)
    if (fds[i] >= 0)
      close(fds[i]);
  for (int i = 0; i < NBUCKETS; i++)
    if (sp->bucket_fd[i] >= 0)
      close(sp->bucket_fd[i]);
  names_clear(sp);
  free(sp->names);
  buf_done(&sp->rbuf, 0);
  buf_done(&sp->mbuf, 0);
  free(sp->base);
  free(sp->pickup_path);
  free(sp->pick_leaf);
  seal_done(sp);
  moved_free(sp);
  free(sp);
}
