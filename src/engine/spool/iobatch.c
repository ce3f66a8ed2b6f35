/* iobatch.c owns the spool's batched file system calls through a private
 * io_uring: openat -> read -> close [-> statx] chains for a batch of
 * pickup files, and a batch of unlinkat. It must never be used from more
 * than the thread that made it (SINGLE_ISSUER), never logs, and falls back
 * (returns an error, the caller uses plain system calls) when the kernel
 * lacks an operation.
 *
 * Why not src/net/ring.c: that ring is an event loop (one per worker,
 * callbacks, timers, generation-tagged slots, an inbox) that never waits
 * for a particular operation; this one submits a batch of linked file
 * operations and waits for exactly that batch, on the ingest and unlink
 * threads, which have no event loop. Sharing ring.c would mean running an
 * event loop on those threads to wait for one batch; the engine layer also
 * sits above net, so the rules stay here, in this one file, with the same
 * habits: set-up flags and probes at creation, one place a full
 * submission queue is handled (sqe_get), completions reaped in a batch. */
#include "spool_int.h"

/* ---- batched file system calls ---- */

void iobatch_free(struct iobatch *b)
{
  if (!b)
    return;
  io_uring_queue_exit(&b->ring);
  free(b->buf);
  free(b->pre);
  free(b->res);
  free(b);
}

/* A ring for cap files of 4 (reads) or 1 (unlinks) operations each. */
static struct iobatch *iobatch_new(unsigned cap, bool reads)
{
  struct iobatch *b = util_xcalloc(1, sizeof(*b));
  b->cap = cap;
  b->owner = pthread_self();
  /* Completions of what io-wq ran (unlinks, statx) are task work for the
   * submitter; deferred, they are run in one go when it waits for the
   * batch, instead of one wake-up of the thread per completion. Needs
   * kernel 6.1; without it, completions wake the thread one by one. */
  struct io_uring_params prm = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
  unsigned entries = reads ? 4 * cap : 2 * cap;
  if (io_uring_queue_init_params(entries, &b->ring, &prm) == 0) {
    b->single = true;
  } else if (io_uring_queue_init(entries, &b->ring, 0) < 0) {
    free(b);
    return NULL;
  }
  if (reads) {
    struct io_uring_probe *pr = io_uring_get_probe_ring(&b->ring);
    bool ok = pr && io_uring_opcode_supported(pr, IORING_OP_STATX) &&
              io_uring_opcode_supported(pr, IORING_OP_RENAMEAT) &&
              io_uring_opcode_supported(pr, IORING_OP_OPENAT) &&
              io_uring_opcode_supported(pr, IORING_OP_READ) &&
              io_uring_opcode_supported(pr, IORING_OP_CLOSE);
    if (pr)
      io_uring_free_probe(pr);
    if (!ok || io_uring_register_files_sparse(&b->ring, cap) < 0) {
      io_uring_queue_exit(&b->ring);
      free(b);
      return NULL;
    }
    /* untouched pages cost nothing: big enough for a batch of small files */
    b->bufcap = (size_t)cap * PRE_BUF;
    b->buf = util_xmalloc(b->bufcap);
    b->pre = util_xcalloc(cap, sizeof(*b->pre));
  } else {
    struct io_uring_probe *pr = io_uring_get_probe_ring(&b->ring);
    bool ok = pr && io_uring_opcode_supported(pr, IORING_OP_UNLINKAT);
    if (pr)
      io_uring_free_probe(pr);
    if (!ok) {
      io_uring_queue_exit(&b->ring);
      free(b);
      return NULL;
    }
    b->res = util_xcalloc(cap, sizeof(*b->res));
    /* Every removal takes the pickup directory's lock: io-wq workers
     * removing in parallel only spin and sleep on it (up to 8 were seen,
     * each spinning while another or the producer held it). One worker
     * removes them back to back: 1.5-2 us less engine CPU per 1 KB
     * message in A/B runs. Bounded = unbounded = 1; an older kernel
     * without the call keeps its default. */
    unsigned one[2] = {1, 1};
    (void)io_uring_register_iowq_max_workers(&b->ring, one);
  }
  return b;
}

/* The ring in *bp for the calling thread, made on first use (*tried: made
 * or failed once). A single-issuer ring serves only the thread that made
 * it: another thread (spool_ingest called directly, then spool_start) gets
 * a new one. NULL when io_uring cannot do it: plain system calls then. */
struct iobatch *iobatch_get(struct iobatch **bp, bool *tried, unsigned cap, bool reads)
{
  struct iobatch *b = *bp;
  if (b && b->single && !pthread_equal(b->owner, pthread_self())) {
    iobatch_free(b);
    *bp = b = NULL;
    *tried = false;
  }
  if (!b && !*tried) {
    *tried = true;
    *bp = b = iobatch_new(cap, reads);
  }
  return b;
}

/* Submit everything queued and collect n completions into the results
 * (user_data = index * 4 + step). Returns 0 or -errno (then the caller
 * falls back to system calls for what has no result). */
static int iobatch_run(struct iobatch *b, unsigned n)
{
  unsigned got = 0;
  while (got < n) {
    int r = io_uring_submit_and_wait(&b->ring, n - got);
    if (r < 0 && r != -EINTR)
      return r;
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&b->ring, head, cqe) {
      uint64_t ud = cqe->user_data;
      unsigned i = (unsigned)(ud >> 2), step = (unsigned)(ud & 3);
      if (b->pre && i < b->cap) {
        if (step == 0)
          b->pre[i].st = cqe->res;
        else if (step == 1)
          b->pre[i].op = cqe->res;
        else if (step == 2)
          b->pre[i].rd = cqe->res;
      } else if (b->res && i < b->cap) {
        b->res[i] = cqe->res;
      }
      seen++;
    }
    io_uring_cq_advance(&b->ring, seen);
    got += seen;
  }
  return 0;
}

/* The rings are sized for a whole batch, so a full queue is a bug. */
static struct io_uring_sqe *sqe_get(struct io_uring *r)
{
  struct io_uring_sqe *q = io_uring_get_sqe(r);
  if (q == NULL)
    util_panic("spool: io_uring submission queue full");
  return q;
}

/* Read the regular files among names[0..n) (n <= cap; the others are
 * left at -ECANCELED; a file not renamed in is read from its lfd, a
 * plain read, or left when it has none) from pickup/ into slots of `slot` bytes from `at`
 * (n x slot bytes of the arena): open into a fixed file slot, read, close,
 * three linked operations per file, one system call for the lot. The
 * statx comes last, and only for big slots (stat): io_uring always runs
 * statx in its worker threads (io-wq), and operations linked behind it
 * would follow it there; before it, an open of a cached name, a read from
 * the page cache and the close all complete inline, in the calling thread,
 * with no hand-off. The type comes from readdir (d_type), the inode from
 * d_ino, the size from the read; the statx only gives big files the mtime
 * that saves checksumming them (jrn_take_pre). */
int iobatch_read(struct iobatch *b, int dirfd, const struct pname *names, unsigned n,
                        int oflags, uint8_t *at, size_t slot, bool stat)
{
  unsigned ops = 0;
  for (unsigned i = 0; i < n; i++) {
    struct pre *pr = &b->pre[i];
    pr->op = pr->rd = pr->st = -ECANCELED;
    pr->leased = false;
    pr->data = at + (size_t)i * slot;
    if (names[i].type != DT_REG || (!names[i].claimed && !names[i].inplace))
      continue; /* not claimed: jrn_take says why */
    struct io_uring_sqe *q;
    const char *path = pn_at(&names[i]);
    if (names[i].inplace && !names[i].claimed) { /* from the caller's fd, under its read lease */
      if (names[i].lfd < 0)
        continue; /* no lease: jrn_take reads it */
      q = sqe_get(&b->ring);
      io_uring_prep_read(q, names[i].lfd, pr->data, (unsigned)slot, 0);
      q->user_data = (uint64_t)i << 2 | 2;
      pr->op = 0;
      ops++;
      continue;
    }
    q = sqe_get(&b->ring);
    io_uring_prep_openat_direct(q, dirfd, path,
                                O_RDONLY | O_NOFOLLOW | O_NONBLOCK | oflags, 0, i);
    q->flags |= IOSQE_IO_LINK;
    q->user_data = (uint64_t)i << 2 | 1;
    q = sqe_get(&b->ring);
    io_uring_prep_read(q, (int)i, pr->data, (unsigned)slot, 0);
    q->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK; /* a short read still closes */
    q->user_data = (uint64_t)i << 2 | 2;
    q = sqe_get(&b->ring);
    io_uring_prep_close_direct(q, i);
    q->user_data = (uint64_t)i << 2 | 3;
    ops += 3;
    if (stat) {
      q->flags |= IOSQE_IO_LINK;
      q = sqe_get(&b->ring);
      io_uring_prep_statx(q, dirfd, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS,
                          &pr->stx);
      q->user_data = (uint64_t)i << 2;
      ops++;
    }
  }
  return ops ? iobatch_run(b, ops) : 0;
}

/* unlinkat(dirfd, names[i]) for i < n (n <= cap); results in b->res. */
int iobatch_unlink(struct iobatch *b, int dirfd, char *const *names, unsigned n)
{
  for (unsigned i = 0; i < n; i++) {
    b->res[i] = -ECANCELED;
    struct io_uring_sqe *q = sqe_get(&b->ring);
    io_uring_prep_unlinkat(q, dirfd, names[i], 0);
    q->user_data = (uint64_t)i << 2;
  }
  return iobatch_run(b, n);
}

/* Claim names[0..n) (n <= cap) whose clres is 1: renameat(name ->
 * tomb), one system call for the lot; results in names[i].clres (the
 * caller's array: it is what the ring wrote). io_uring runs every
 * renameat in an io-wq worker. */
int iobatch_rename(struct iobatch *b, int dirfd, const struct pname *names, unsigned n)
{
  unsigned ops = 0;
  for (unsigned i = 0; i < n; i++) {
    if (names[i].clres != 1)
      continue;
    struct io_uring_sqe *q = sqe_get(&b->ring);
    io_uring_prep_renameat(q, dirfd, names[i].name, dirfd, names[i].tomb, 0);
    q->user_data = (uint64_t)i << 2; /* step 0: b->pre[i].st, copied by the caller */
    b->pre[i].st = -ECANCELED;
    ops++;
  }
  return ops ? iobatch_run(b, ops) : 0;
}
