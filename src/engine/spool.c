/* spool.c owns the spool directories: reading pickup files into the
 * journal (group-committed segments; the pickup file is removed only once
 * its entry is durable, and recognised at recovery if a crash came first),
 * the per-message files that deferred messages are spilled to (<id> and
 * the metadata log <id>.m), start-up recovery, bad/ and the outcome
 * transactions. It never deletes input silently (rejects go to bad/ with a
 * .why), never writes a secret context entry, and never logs: problems
 * reach the engine through on_bad and return codes. Threads: spool_ingest
 * on one ingest thread (or the thread spool_start owns), which is also the
 * only writer of the journal (other threads post records to it);
 * spool_recover before ingestion; a message and a txn are used by their
 * owner thread only. All functions may block on disk.
 *
 * <id>.m layout (little endian): "IMPM" u32 version (1), then records
 *   u32 len, u8 type, payload[len], u32 crc32c(len, type, payload)
 * type 1 HEADER: u64 id, u16 node, u8 flags, u8 0, u64 created_ms,
 *   u64 body_off, u64 body_size, str sender, u32 nrcpt, nrcpt x str rcpt
 *   (str = u32 len + bytes)
 * type 2 ATTR: str binding, str group (len 0xffffffff = none), u32 n +
 *   VCTX_MESS (ctx_serialize), u32 n + VCTX_CONN. The newest one counts.
 * type 3 STATE: u32 attempts, u64 next_attempt_ms, u32 n, n x (u32 idx,
 *   u8 state). Applied in order.
 * A file that ends inside its last record was cut by a crash before that
 * record was reported durable: the tail is ignored and overwritten. A
 * complete record with a bad checksum sends the message to bad/. */
#include "spool.h"

#include <liburing.h>

#include "clock.h"
#include "crc32c.h"
#include "panic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#define META_MAGIC "IMPM"
#define META_VERSION 1u
#define META_MAX (64u * 1024u * 1024u) /* named limit: bytes in one <id>.m */
#define REC_HEADER 1u
#define REC_ATTR 2u
#define REC_STATE 3u
#define NBUCKETS 256
#define BUCKET_SHIFT 10 /* 1024 consecutive messages per bucket */
#define STR_NONE 0xffffffffu
/* The journal (queue/journal/<8 hex digits>): "IMPJ" u32 version, then
 * records in the <id>.m format:
 *   JMSG: the HEADER fields (body_off = where the body starts in the
 *     segment), then u64 inode, u64 size, u64 stamp and str name of the
 *     pickup file it came from; the body follows raw, then its ATTR record
 *     (a message counts only once its ATTR record is complete)
 *   JSTATE: u64 id, u16 node, then a STATE payload
 *   DONE: u64 id, u16 node: the message left the journal (delivered,
 *     failed, or spilled into its own files, which then win)
 * Segments are freed oldest first, once no message ingested into them is
 * still queued, so a DONE or JSTATE record never outlives the JMSG it
 * refers to. */
#define JRN_MAGIC "IMPJ"
#define JRN_VERSION 1u
#define JRN_SEG_MAX (64u * 1024u * 1024u) /* rotate a segment past this many bytes */
#define JRN_SLOTS 4096u                   /* named limit: live segments (256 GB) */
/* An ingest batch stops growing here. Small enough that the batch buffer is
 * still in the CPU cache when it is written: a 50 MB batch (512 x 100 KB)
 * was read back from memory by the pwrite, at several times the cost of
 * copying it while it is hot. Group commit does not suffer: the commit
 * thread syncs every batch queued meanwhile with one fdatasync. */
#define JRN_BATCH_BYTES (2u * 1024u * 1024u)
#define JRN_FD_MAX 65536u                 /* segment fds are below this (open-files limits are lower) */
#define REC_JMSG 4u
#define REC_JSTATE 5u
#define REC_DONE 6u

/* A pickup directory entry as readdir gave it: the inode and type save
 * the ring's statx per file (see iobatch_read). */
struct pname {
  char *name;
  uint64_t ino;
  uint8_t type; /* DT_REG, DT_UNKNOWN (file system without d_type), or another DT_ */
};

/* A body of the batch that is written from where it was read. */
struct jref {
  size_t at; /* it goes before this byte of jbuf */
  const uint8_t *p;
  size_t len;
};
/* Bodies from this size on are not copied into the batch buffer (smaller
 * ones are: an iovec each would cost more than the copy). */
#define JREF_MIN (8u * 1024u)

/* Batches handed from one spool thread to the next, in order (under the
 * spool's qlock). */
struct jqueue {
  struct jbatch *head, *tail;
  pthread_cond_t cond; /* batches were queued, or stop */
  bool stop;
};

struct spool {
  struct spool_params p;
  char *base;
  char *pickup_path;
  int base_fd, pickup_fd, queue_fd, bad_fd, ino_fd, wake_fd;
  int bucket_fd[NBUCKETS];
  uint64_t last_id;
  uint64_t seq;
  uint64_t next_rescan_ns;
  bool scan_due;
  /* Entries found by the last pickup scan, not yet processed. */
  struct pname *names;
  size_t nnames, inames, capnames;
  struct buf rbuf, mbuf;
  atomic_int kick;
  atomic_int last_err;
  _Atomic uint64_t st_ingested, st_rejected, st_batches, st_syncs, st_recovered, st_ring_reads;
  struct histo st_sync_lat; /* each counted sync call's duration */
  atomic_bool stop;
  bool thread_running;
  pthread_t thread;
  /* The journal; written by the ingest thread only (workers post records). */
  int jdir_fd;
  uint32_t jfirst, jnext, jcur; /* segments on disk are [jfirst, jnext); jcur is appended (0: none) */
  uint64_t jsize;               /* bytes in jcur */
  _Atomic int jfd[JRN_SLOTS];   /* fd of segment s at s % JRN_SLOTS, read by any thread */
  _Atomic uint64_t jfd_bits[JRN_FD_MAX / 64]; /* which fds are segments' (never closed by readers) */
  uint32_t jpins[JRN_SLOTS];    /* queued messages whose JMSG is in the segment */
  pthread_mutex_t jlock;        /* appends, rotation, pins, freeing (not reads, not syncs) */
  struct buf jretry;            /* DONE records that could not be written yet (under jlock) */
  struct jmap *jrecov;          /* during spool_recover */
  /* spool_start's pipeline: the ingest thread reads, parses and appends
   * batches; the commit thread syncs them; the unlink thread removes their
   * pickup files and hands the messages over. Each stage works on the
   * next batches while the one after it finishes the previous ones (the
   * unlinks of a round, slow on a file system with online discard, no
   * longer wait for the next round's sync and the other way round). */
  bool pipelined;
  pthread_mutex_t qlock;        /* the two queues and inflight */
  pthread_cond_t qdrained;      /* inflight went to 0 */
  struct jqueue syncq;          /* appended, waiting for their sync */
  struct jqueue unlinkq;        /* synced, waiting for unlink and hand-over */
  unsigned inflight;            /* batches queued, being committed or handed over */
  bool committer_running, unlinker_running;
  pthread_t committer, unlinker;
  atomic_int commit_err;
  /* Batched file system calls through io_uring (each system call costs
   * several microseconds on some virtual machines): the ingest thread's
   * stat/open/read/close of pickup files, the unlink thread's unlinks.
   * NULL when the kernel lacks what they need: plain system calls then. */
  struct iobatch *iread, *iunlink;
  bool iread_tried, iunlink_tried;
  /* open pickup files with O_NOATIME: a first read of a new file would
   * otherwise update its atime (relatime: atime <= mtime) and dirty the
   * inode once more before it is unlinked. Cleared for good on EPERM (the
   * files belong to another user and we lack CAP_FOWNER). */
  atomic_bool noatime;
  /* The batch being built (ingest thread): records and small bodies in
   * jbuf, big bodies where the ring read them (jrefs: body i goes before
   * jbuf's byte at), written together with one pwritev. */
  struct buf jbuf;
  struct jref *jrefs;
  size_t njrefs, capjrefs, jrefbytes;
  struct iovec *jiov;
  size_t capjiov;
  uint64_t avg_file; /* ingest thread: the last batch's bytes per file */
};


static int jfd_of(const struct spool *sp, uint32_t seg);

/* The message in the ingest hook (on_ingest) of the calling thread: its
 * pickup file, open (or -1) and in memory. Thread-local: only the thread
 * running the hook may see it. */
static _Thread_local struct {
  const struct spool_msg *msg;
  int fd;
  const uint8_t *data;
  size_t len;
} in_hook;
static long spool_recover_files(struct spool *sp);
static void wait_drained(struct spool *sp);
struct jmap;
struct jent;
static struct jent *jmap_find(struct jmap *jm, uint64_t id, uint16_t node);
static void jent_drop(struct jent *e);
static int jrn_spill(struct spool *sp, struct spool_msg *m, struct buf *b, int *bfd, int *mfd);
static int copy_out(int src, uint64_t off, uint64_t len, int dst);
static void jrn_retire(struct spool *sp, struct buf *b, const uint32_t *unpin, uint32_t nunpin);
static void rec_done(struct buf *b, const struct spool_msg *m);

/* ---- small helpers ---- */

static void put_u8(struct buf *b, uint8_t v) { buf_append(b, &v, 1); }
static void put_u16(struct buf *b, uint16_t v)
{
  uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
  buf_append(b, x, 2);
}
static void put_u32(struct buf *b, uint32_t v)
{
  uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  buf_append(b, x, 4);
}
static void put_u64(struct buf *b, uint64_t v)
{
  put_u32(b, (uint32_t)v);
  put_u32(b, (uint32_t)(v >> 32));
}
static void put_str(struct buf *b, const char *s)
{
  if (!s) {
    put_u32(b, STR_NONE);
    return;
  }
  size_t n = strlen(s);
  put_u32(b, (uint32_t)n);
  buf_append(b, s, n);
}
static void patch_u32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

/* A bounds-checked reader over a record payload. */
struct rd {
  const uint8_t *p, *end;
  bool bad;
};
static bool rd_need(struct rd *r, size_t n)
{
  if (r->bad || (size_t)(r->end - r->p) < n) {
    r->bad = true;
    return false;
  }
  return true;
}
static uint32_t get_u32(struct rd *r)
{
  if (!rd_need(r, 4))
    return 0;
  const uint8_t *p = r->p;
  r->p += 4;
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(struct rd *r)
{
  uint64_t lo = get_u32(r);
  return lo | (uint64_t)get_u32(r) << 32;
}
static uint16_t get_u16(struct rd *r)
{
  if (!rd_need(r, 2))
    return 0;
  uint16_t v = (uint16_t)(r->p[0] | r->p[1] << 8);
  r->p += 2;
  return v;
}
static uint8_t get_u8(struct rd *r)
{
  if (!rd_need(r, 1))
    return 0;
  return *r->p++;
}
/* A string: pointer into the record, length in *n; NULL with *n = 0 for none. */
static const char *get_str(struct rd *r, uint32_t *n)
{
  uint32_t len = get_u32(r);
  *n = 0;
  if (r->bad || len == STR_NONE)
    return NULL;
  if (!rd_need(r, len))
    return NULL;
  const char *s = (const char *)r->p;
  r->p += len;
  *n = len;
  return s;
}

/* "%016" PRIx64 "-%04x" without snprintf (once per message on the
 * ingest thread, and in the workers' log lines). */
static void id_format(uint64_t id, uint16_t node, char *out)
{
  static const char hex[] = "0123456789abcdef";
  for (int i = 15; i >= 0; i--, id >>= 4)
    out[i] = hex[id & 15];
  out[16] = '-';
  unsigned nd = node;
  for (int i = 20; i >= 17; i--, nd >>= 4)
    out[i] = hex[nd & 15];
  out[21] = 0;
}
_Static_assert(SPOOL_ID_LEN == 21, "id_format writes 16 + 1 + 4 characters");

char *spool_msg_id_str(const struct spool_msg *msg, char *out)
{
  id_format(msg->id, msg->node, out);
  return out;
}

int spool_id_parse(const char *s, uint64_t *id, uint16_t *node)
{
  if (strlen(s) != SPOOL_ID_LEN || s[16] != '-')
    return -EINVAL;
  uint64_t v = 0;
  unsigned nd = 0;
  for (int i = 0; i < SPOOL_ID_LEN; i++) {
    if (i == 16)
      continue;
    char c = s[i];
    unsigned d;
    if (c >= '0' && c <= '9')
      d = (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      d = (unsigned)(c - 'a' + 10);
    else
      return -EINVAL;
    if (i < 16)
      v = v << 4 | d;
    else
      nd = nd << 4 | d;
  }
  *id = v;
  *node = (uint16_t)nd;
  return 0;
}

static uint64_t next_id(struct spool *sp)
{
  uint64_t t = clock_wall_ms() << 22;
  sp->last_id = t > sp->last_id ? t : sp->last_id + 1;
  return sp->last_id;
}

static int write_all(int fd, const void *p, size_t n, off_t off)
{
  const uint8_t *q = p;
  while (n) {
    ssize_t w = off >= 0 ? pwrite(fd, q, n, off) : write(fd, q, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (w == 0)
      return -EIO;
    q += w;
    n -= (size_t)w;
    if (off >= 0)
      off += w;
  }
  return 0;
}

/* pwritev all of iov[0..cnt) at off (iov is consumed). 0 or -errno. */
static int writev_all(int fd, struct iovec *iov, int cnt, off_t off)
{
  while (cnt > 0) {
    ssize_t w = pwritev(fd, iov, cnt > IOV_MAX ? IOV_MAX : cnt, off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (w == 0)
      return -EIO;
    off += w;
    while (cnt > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0) {
      iov->iov_base = (uint8_t *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

void (*spool_test_after_stat)(int fd);

static bool is_disk_full(int err) { return err == -ENOSPC || err == -EDQUOT; }

/* ---- messages ---- */

static void free_const(const char *p) { free((void *)(uintptr_t)p); }

static void msg_free_strings(struct spool_msg *m)
{
  free_const(m->binding);
  free_const(m->binding_group);
}

/* The hot body cache's size (spool_msg.body_mem), all spools. */
static _Atomic uint64_t hot_bytes;

static const uint8_t *hot_keep(const uint8_t *p, uint64_t n)
{
  if (n == 0 || n > SPOOL_HOT_BODY_MAX ||
      atomic_fetch_add_explicit(&hot_bytes, n, memory_order_relaxed) + n > SPOOL_HOT_BODY_BUDGET) {
    if (n && n <= SPOOL_HOT_BODY_MAX)
      atomic_fetch_sub_explicit(&hot_bytes, n, memory_order_relaxed);
    return NULL;
  }
  uint8_t *c = util_xmalloc((size_t)n);
  memcpy(c, p, (size_t)n);
  return c;
}

static void hot_drop(struct spool_msg *m)
{
  if (!m->body_mem)
    return;
  free((void *)(uintptr_t)m->body_mem);
  m->body_mem = NULL;
  atomic_fetch_sub_explicit(&hot_bytes, m->body_size, memory_order_relaxed);
}

void spool_msg_free(struct spool_msg *msg)
{
  if (!msg)
    return;
  hot_drop(msg);
  msg_free_strings(msg);
  ctx_free(msg->mess);
  ctx_free(msg->conn);
  ctx_free(msg->secrets);
  free(msg);
}

/* One allocation: struct, rcpt pointers, states, sender and addresses. */
static struct spool_msg *msg_alloc(const char *sender, size_t slen, uint32_t nrcpt,
                                   const char *const *rcpt, const uint32_t *rlen)
{
  size_t sz = sizeof(struct spool_msg) + (size_t)nrcpt * (sizeof(char *) + 1) + slen + 1;
  for (uint32_t i = 0; i < nrcpt; i++)
    sz += (size_t)rlen[i] + 1;
  struct spool_msg *m = util_xcalloc(1, sz);
  char *p = (char *)(m + 1);
  m->rcpt = (const char **)(void *)p;
  p += (size_t)nrcpt * sizeof(char *);
  m->rcpt_state = (uint8_t *)p;
  p += nrcpt;
  memcpy(p, sender, slen);
  p[slen] = 0;
  m->sender = p;
  p += slen + 1;
  for (uint32_t i = 0; i < nrcpt; i++) {
    memcpy(p, rcpt[i], rlen[i]);
    p[rlen[i]] = 0;
    m->rcpt[i] = p;
    p += rlen[i] + 1;
  }
  m->nrcpt = nrcpt;
  m->npending = nrcpt;
  return m;
}

void spool_msg_set_binding(struct spool_msg *msg, const char *binding)
{
  free_const(msg->binding);
  msg->binding = binding ? util_xstrdup(binding) : NULL;
}

void spool_msg_set_binding_group(struct spool_msg *msg, const char *group)
{
  free_const(msg->binding_group);
  msg->binding_group = group ? util_xstrdup(group) : NULL;
}

/* ---- metadata records ---- */

static size_t rec_begin(struct buf *b, uint8_t type)
{
  size_t start = b->len;
  put_u32(b, 0);
  put_u8(b, type);
  return start;
}

static void rec_end(struct buf *b, size_t start)
{
  uint32_t len = (uint32_t)(b->len - start - 5);
  patch_u32(b->data + start, len);
  put_u32(b, crc32c(0, b->data + start, (size_t)len + 5));
}

static void rec_attr(struct buf *b, const struct spool_msg *m)
{
  size_t r = rec_begin(b, REC_ATTR);
  put_str(b, m->binding);
  put_str(b, m->binding_group);
  size_t at = b->len;
  put_u32(b, 0);
  patch_u32(b->data + at, (uint32_t)ctx_serialize(m->mess, b));
  at = b->len;
  put_u32(b, 0);
  patch_u32(b->data + at, (uint32_t)ctx_serialize(m->conn, b));
  rec_end(b, r);
}

/* The whole initial <id>.m: magic, HEADER, ATTR. Sets ctx_off/len, meta_size. */
/* The HEADER fields, shared by <id>.m's HEADER and the journal's JMSG. */
static void put_header(struct buf *b, const struct spool_msg *m, uint64_t body_off)
{
  put_u64(b, m->id);
  put_u16(b, m->node);
  put_u8(b, m->flags);
  put_u8(b, 0);
  put_u64(b, m->created_ms);
  put_u64(b, body_off);
  put_u64(b, m->body_size);
  put_str(b, m->sender);
  put_u32(b, m->nrcpt);
  for (uint32_t i = 0; i < m->nrcpt; i++)
    put_str(b, m->rcpt[i]);
}

/* Read what put_header wrote: a new message, or NULL when malformed.
 * *body_off gets the stored body offset. */
static struct spool_msg *get_header(struct rd *r, uint64_t *body_off)
{
  uint64_t id = get_u64(r);
  uint16_t node = get_u16(r);
  uint8_t flags = get_u8(r);
  get_u8(r);
  uint64_t created = get_u64(r);
  *body_off = get_u64(r);
  uint64_t bsize = get_u64(r);
  uint32_t sl;
  const char *sdr = get_str(r, &sl);
  uint32_t nr = get_u32(r);
  if (r->bad || !sdr || nr == 0 || nr > SPOOL_RCPTS_MAX)
    return NULL;
  const char **rc = util_xmalloc(nr * sizeof(char *));
  uint32_t *rl = util_xmalloc(nr * sizeof(uint32_t));
  for (uint32_t i = 0; i < nr; i++)
    rc[i] = get_str(r, &rl[i]);
  struct spool_msg *m = r->bad ? NULL : msg_alloc(sdr, sl, nr, rc, rl);
  free(rc);
  free(rl);
  if (m) {
    m->id = id;
    m->node = node;
    m->flags = flags;
    m->created_ms = created;
    m->body_size = bsize;
  }
  return m;
}

static void meta_build(struct buf *b, struct spool_msg *m)
{
  b->len = b->off = 0;
  buf_append(b, META_MAGIC, 4);
  put_u32(b, META_VERSION);
  size_t r = rec_begin(b, REC_HEADER);
  put_header(b, m, m->body_off);
  rec_end(b, r);
  m->ctx_off = (uint32_t)b->len;
  rec_attr(b, m);
  m->ctx_len = (uint32_t)(b->len - m->ctx_off);
  m->meta_size = (uint32_t)b->len;
}

/* Check the record at p (avail bytes). Returns its total size, 0 when cut
 * short (torn tail), or -EBADMSG on a checksum mismatch. */
static long rec_check(const uint8_t *p, size_t avail, uint8_t *type, struct rd *payload)
{
  if (avail < 9)
    return 0;
  uint32_t len = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
  if (len > META_MAX)
    return -EBADMSG;
  if (avail < (size_t)len + 9)
    return 0;
  const uint8_t *c = p + 5 + len;
  uint32_t want = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 |
                  (uint32_t)c[3] << 24;
  if (crc32c(0, p, (size_t)len + 5) != want)
    return -EBADMSG;
  *type = p[4];
  payload->p = p + 5;
  payload->end = p + 5 + len;
  payload->bad = false;
  return (long)len + 9;
}

/* Apply an ATTR record payload: binding/group always; dictionaries when
 * with_dicts (into fresh ctx objects). Returns 0 or -EBADMSG. */
static int attr_apply(struct spool_msg *m, struct rd *r, bool with_dicts)
{
  uint32_t bn, gn;
  const char *b = get_str(r, &bn);
  const char *g = get_str(r, &gn);
  uint32_t ml = get_u32(r);
  if (r->bad || !rd_need(r, ml))
    return -EBADMSG;
  const uint8_t *mp = r->p;
  r->p += ml;
  uint32_t cl = get_u32(r);
  if (r->bad || !rd_need(r, cl))
    return -EBADMSG;
  const uint8_t *cp = r->p;
  r->p += cl;
  msg_free_strings(m);
  m->binding = b ? util_xstrndup(b, bn) : NULL;
  m->binding_group = g ? util_xstrndup(g, gn) : NULL;
  if (with_dicts) {
    struct ctx *mess = ctx_new(), *conn = ctx_new();
    if (!mess || !conn || ctx_deserialize(mess, mp, ml) < 0 || ctx_deserialize(conn, cp, cl) < 0) {
      ctx_free(mess);
      ctx_free(conn);
      return -EBADMSG;
    }
    ctx_free(m->mess);
    ctx_free(m->conn);
    m->mess = mess;
    m->conn = conn;
  }
  return 0;
}

/* Copy the secret entries of src into a new ctx (NULL when none). */
static struct ctx *secrets_of(const struct ctx *a, const struct ctx *b)
{
  struct ctx *s = NULL;
  const struct ctx *src[2] = {a, b};
  for (int i = 0; i < 2; i++) {
    struct ctx_iter it = {0};
    const char *k, *v;
    size_t kl, vl;
    unsigned fl;
    while (ctx_nextn(src[i], &it, &k, &kl, &v, &vl, &fl)) {
      if (!(fl & CTX_F_SECRET))
        continue;
      if (!s)
        s = ctx_new();
      if (!s)
        return NULL;
      /* Key prefixed with the dictionary: "m" or "c". */
      char key[CTX_KEY_MAX + 2];
      key[0] = i ? 'c' : 'm';
      memcpy(key + 1, k, kl);
      ctx_setn(s, key, kl + 1, v, vl, CTX_F_SECRET);
    }
  }
  return s;
}

void spool_drop_ctx(struct spool *sp, struct spool_msg *msg)
{
  if (sp->p.keep_dicts_in_memory || (!msg->mess && !msg->conn))
    return;
  msg->mess_empty = ctx_count(msg->mess) == 0;
  ctx_free(msg->secrets);
  msg->secrets = secrets_of(msg->mess, msg->conn);
  ctx_free(msg->mess);
  ctx_free(msg->conn);
  msg->mess = msg->conn = NULL;
}

static int open_meta(struct spool *sp, const struct spool_msg *m, int flags)
{
  char name[SPOOL_ID_LEN + 3];
  id_format(m->id, m->node, name);
  memcpy(name + SPOOL_ID_LEN, ".m", 3);
  int fd = openat(sp->bucket_fd[m->bucket], name, flags | O_CLOEXEC, 0600);
  return fd < 0 ? -errno : fd;
}

int spool_load_ctx(struct spool *sp, struct spool_msg *msg)
{
  if (msg->mess && msg->conn)
    return 0;
  msg->mess_empty = false;
  int fd = msg->jseg ? jfd_of(sp, msg->jseg) : open_meta(sp, msg, O_RDONLY);
  if (fd < 0)
    return fd;
  uint8_t stackbuf[4096];
  uint8_t *p = msg->ctx_len <= sizeof(stackbuf) ? stackbuf : malloc(msg->ctx_len);
  int r = 0;
  if (!p) {
    r = -ENOMEM;
  } else {
    ssize_t n = pread(fd, p, msg->ctx_len, msg->ctx_off);
    uint8_t type = 0;
    struct rd rd;
    if (n < 0)
      r = -errno;
    else if ((size_t)n != msg->ctx_len || rec_check(p, (size_t)n, &type, &rd) <= 0 ||
             type != REC_ATTR)
      r = -EBADMSG;
    else
      r = attr_apply(msg, &rd, true);
  }
  if (!msg->jseg)
    close(fd);
  if (p != stackbuf)
    free(p);
  if (r < 0)
    return r;
  /* Restore the secrets that never went to disk. */
  struct ctx_iter it = {0};
  const char *k, *v;
  size_t kl, vl;
  while (ctx_nextn(msg->secrets, &it, &k, &kl, &v, &vl, NULL))
    ctx_setn(k[0] == 'c' ? msg->conn : msg->mess, k + 1, kl - 1, v, vl, CTX_F_SECRET);
  ctx_free(msg->secrets);
  msg->secrets = NULL;
  return 0;
}

/* Append an ATTR record; returns 0 or -errno. fd_out keeps the fd open
 * for a later fsync when not NULL. */
static int append_attr(struct spool *sp, struct spool_msg *msg, struct buf *b, int *fd_out)
{
  if (!msg->mess || !msg->conn) {
    int r = spool_load_ctx(sp, msg);
    if (r < 0)
      return r;
  }
  b->len = b->off = 0;
  rec_attr(b, msg);
  int fd = open_meta(sp, msg, O_WRONLY);
  if (fd < 0)
    return fd;
  int r = write_all(fd, b->data, b->len, msg->meta_size);
  if (r == 0) {
    msg->ctx_off = msg->meta_size;
    msg->ctx_len = (uint32_t)b->len;
    msg->meta_size += (uint32_t)b->len;
  }
  if (fd_out && r == 0)
    *fd_out = fd;
  else
    close(fd);
  return r;
}

int spool_save_ctx(struct spool *sp, struct spool_msg *msg)
{
  struct buf b = {0};
  int fd = -1;
  if (msg->jseg) { /* a changed message leaves the journal for its own files */
    uint32_t old = msg->jseg;
    int bfd = -1, mfd = -1;
    int r = jrn_spill(sp, msg, &b, &bfd, &mfd);
    if (r == 0 && sp->p.sync != SPOOL_SYNC_NONE && (fsync(bfd) < 0 || fsync(mfd) < 0))
      r = -errno;
    if (bfd >= 0)
      close(bfd);
    if (mfd >= 0)
      close(mfd);
    if (r < 0 && msg->jseg == 0)
      return r; /* spilled but not durable: the journal still holds it */
    if (r < 0) {
      buf_done(&b, 0);
      return r;
    }
    b.len = b.off = 0;
    rec_done(&b, msg);
    jrn_retire(sp, &b, &old, 1);
  }
  int r = append_attr(sp, msg, &b, &fd);
  if (r == 0 && sp->p.sync != SPOOL_SYNC_NONE && fsync(fd) < 0)
    r = -errno;
  if (fd >= 0)
    close(fd);
  buf_done(&b, 0);
  return r;
}

int spool_open_body(struct spool *sp, const struct spool_msg *msg)
{
  if (msg == in_hook.msg) { /* the ingest hook: its pickup file */
    int fd = in_hook.fd >= 0 ? dup(in_hook.fd) : -1;
    if (in_hook.fd < 0)
      errno = EBADF;
    return fd < 0 ? -errno : fd;
  }
  if (msg->jseg) {
    int fd = jfd_of(sp, msg->jseg);
    return fd >= 0 ? fd : -ESTALE;
  }
  char name[SPOOL_ID_LEN + 1];
  id_format(msg->id, msg->node, name);
  int fd = openat(sp->bucket_fd[msg->bucket], name, O_RDONLY | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

/* ---- the journal: segments, posts, freeing ---- */

static int jfd_of(const struct spool *sp, uint32_t seg)
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
static void jfd_set(struct spool *sp, uint32_t seg, int fd)
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

static void jseg_name(uint32_t seg, char out[16]) { snprintf(out, 16, "%08x", seg); }

/* Every sync call is counted and timed (spool_get_stats). kind: 0 fsync,
 * 1 fdatasync, 2 syncfs. Returns 0 or -errno. */
static int sync_timed(struct spool *sp, int fd, int kind)
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

static int jrn_sync(struct spool *sp, uint32_t seg)
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
static void jrn_gc(struct spool *sp)
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
static int jrn_putv(struct spool *sp, struct iovec *iov, int cnt, size_t n, uint32_t npins,
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

static int jrn_put(struct spool *sp, const void *p, size_t n, uint32_t npins, uint32_t *seg,
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
static void jrn_retire(struct spool *sp, struct buf *b, const uint32_t *unpin, uint32_t nunpin)
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

static void rec_done(struct buf *b, const struct spool_msg *m)
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

/* ---- batched file system calls ---- */

/* Pickup files are read through the ring into slots of one arena: slots
 * of PRE_BUF bytes while the files are small, else of about twice the last
 * batch's mean size (up to SLOT_MAX). A file that fills its slot may be
 * bigger and is read again with fstat. */
#define PRE_BUF (32u * 1024u)
#define SLOT_MAX (4u * 1024u * 1024u) /* bigger files are read with fstat, pread */
/* Files per ring submission. A batch of 1 KB files is read 64 at a time
 * and each group parsed while it is still in the cache: ~0.5 us less CPU
 * per message than 512 at once (spool_ingest_bench on tmpfs, medians of
 * 5), for one more system call per 64 files. */
#define RING_SUB 64u

/* Results of one pickup file's openat -> read -> close [-> statx] chain. */
struct pre {
  int op, rd, st;
  uint8_t *data; /* its slot */
  struct statx stx; /* big slots only (st) */
};

struct iobatch {
  struct io_uring ring;
  pthread_t owner; /* the thread that made it: the only one that may use it when single */
  bool single;     /* IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN */
  unsigned cap;    /* files per batch */
  uint8_t *buf;    /* the arena (reads) */
  size_t bufcap;   /* its size */
  struct pre *pre; /* cap (reads) */
  int *res;        /* cap (unlinks) */
};

static void iobatch_free(struct iobatch *b)
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
  unsigned entries = reads ? 4 * cap : cap;
  if (io_uring_queue_init_params(entries, &b->ring, &prm) == 0) {
    b->single = true;
  } else if (io_uring_queue_init(entries, &b->ring, 0) < 0) {
    free(b);
    return NULL;
  }
  if (reads) {
    struct io_uring_probe *pr = io_uring_get_probe_ring(&b->ring);
    bool ok = pr && io_uring_opcode_supported(pr, IORING_OP_STATX) &&
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
static struct iobatch *iobatch_get(struct iobatch **bp, bool *tried, unsigned cap, bool reads)
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
 * left at -ECANCELED) from pickup/ into slots of `slot` bytes from `at`
 * (n x slot bytes of the arena): open into a fixed file slot, read, close,
 * three linked operations per file, one system call for the lot. The
 * statx comes last, and only for big slots (stat): io_uring always runs
 * statx in its worker threads (io-wq), and operations linked behind it
 * would follow it there; before it, an open of a cached name, a read from
 * the page cache and the close all complete inline, in the calling thread,
 * with no hand-off. The type comes from readdir (d_type), the inode from
 * d_ino, the size from the read; the statx only gives big files the mtime
 * that saves checksumming them (jrn_take_pre). */
static int iobatch_read(struct iobatch *b, int dirfd, const struct pname *names, unsigned n,
                        int oflags, uint8_t *at, size_t slot, bool stat)
{
  unsigned ops = 0;
  for (unsigned i = 0; i < n; i++) {
    struct pre *pr = &b->pre[i];
    pr->op = pr->rd = pr->st = -ECANCELED;
    pr->data = at + (size_t)i * slot;
    if (names[i].type != DT_REG)
      continue;
    struct io_uring_sqe *q = sqe_get(&b->ring);
    io_uring_prep_openat_direct(q, dirfd, names[i].name,
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
      io_uring_prep_statx(q, dirfd, names[i].name, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS,
                          &pr->stx);
      q->user_data = (uint64_t)i << 2;
      ops++;
    }
  }
  return ops ? iobatch_run(b, ops) : 0;
}

/* unlinkat(dirfd, names[i]) for i < n (n <= cap); results in b->res. */
static int iobatch_unlink(struct iobatch *b, int dirfd, char *const *names, unsigned n)
{
  for (unsigned i = 0; i < n; i++) {
    b->res[i] = -ECANCELED;
    struct io_uring_sqe *q = sqe_get(&b->ring);
    io_uring_prep_unlinkat(q, dirfd, names[i], 0);
    q->user_data = (uint64_t)i << 2;
  }
  return iobatch_run(b, n);
}

/* ---- bad/ ---- */

static void write_why(struct spool *sp, const char *name, const char *reason, const char *id)
{
  char why[SPOOL_NAME_MAX + 8];
  snprintf(why, sizeof(why), "%s.why", name);
  int fd = openat(sp->bad_fd, why, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return;
  char text[1024];
  int n = snprintf(text, sizeof(text), "%s\nid: %s\ntime_ms: %" PRIu64 "\n", reason,
                   id ? id : "-", clock_wall_ms());
  if (n > (int)sizeof(text))
    n = (int)sizeof(text);
  (void)write_all(fd, text, (size_t)n, -1);
  close(fd);
}

/* A free name in bad/ for name (name, or name.<id> when taken). */
static void bad_name(struct spool *sp, const char *name, const char *id, char *out, size_t n)
{
  snprintf(out, n, "%s", name);
  if (faccessat(sp->bad_fd, out, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
    snprintf(out, n, "%.200s.%s", name, id ? id : "dup");
}

static void report_bad(struct spool *sp, const char *name, const char *reason)
{
  if (name[0])
    atomic_fetch_add_explicit(&sp->st_rejected, 1, memory_order_relaxed);
  if (sp->p.on_bad)
    sp->p.on_bad(sp->p.arg, name, reason);
}

/* Move queue file `qname` in bucket dir dfd to bad/<name>, plus the .why. */
static void to_bad(struct spool *sp, int dfd, const char *qname, const char *name,
                   const char *reason, const char *id)
{
  char dst[SPOOL_NAME_MAX + 1];
  bad_name(sp, name, id, dst, sizeof(dst));
  if (renameat(dfd, qname, sp->bad_fd, dst) == 0)
    write_why(sp, dst, reason, id);
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
  sp->base_fd = sp->pickup_fd = sp->queue_fd = sp->bad_fd = sp->ino_fd = sp->wake_fd = -1;
  sp->jdir_fd = -1;
  for (unsigned i = 0; i < JRN_SLOTS; i++)
    atomic_init(&sp->jfd[i], -1);
  sp->jfirst = sp->jnext = 1;
  pthread_mutex_init(&sp->jlock, NULL);
  pthread_mutex_init(&sp->qlock, NULL);
  pthread_cond_init(&sp->syncq.cond, NULL);
  pthread_cond_init(&sp->qdrained, NULL);
  pthread_cond_init(&sp->unlinkq.cond, NULL);
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
  sp->pickup_fd = r;
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
  if (fstat(sp->pickup_fd, &a) < 0 || fstat(sp->queue_fd, &b) < 0 || a.st_dev != b.st_dev)
    return open_fail(sp, err, errlen,
                     "pickup directory %s is not on the file system of %s/queue (claiming "
                     "renames files)",
                     sp->pickup_path, sp->base);
  if (faccessat(sp->pickup_fd, ".", R_OK | W_OK | X_OK, AT_EACCESS) < 0 ||
      faccessat(sp->queue_fd, ".", R_OK | W_OK | X_OK, AT_EACCESS) < 0)
    return open_fail(sp, err, errlen, "spool %s is not writable: %s", sp->base, strerror(errno));
  sp->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (sp->ino_fd >= 0 &&
      inotify_add_watch(sp->ino_fd, sp->pickup_path, IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
    close(sp->ino_fd); /* the rescan timer still finds files */
    sp->ino_fd = -1;
  }
  sp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (sp->wake_fd < 0)
    return open_fail(sp, err, errlen, "eventfd: %s", strerror(errno));
  sp->scan_due = true;
  return sp;
}

static void names_clear(struct spool *sp)
{
  for (size_t i = sp->inames; i < sp->nnames; i++)
    free(sp->names[i].name);
  sp->nnames = sp->inames = 0;
}

void spool_close(struct spool *sp)
{
  if (!sp)
    return;
  spool_stop(sp);
  if (sp->jdir_fd >= 0) {
    /* what workers posted last (DONE records of the final deliveries) */
    if (sp->jcur) /* the DONE records of the last deliveries */
      (void)jrn_sync(sp, sp->jcur);
    for (unsigned i = 0; i < JRN_SLOTS; i++)
      jfd_set(sp, i, -1);
    close(sp->jdir_fd);
  }
  buf_done(&sp->jbuf, 0);
  free(sp->jrefs);
  free(sp->jiov);
  buf_done(&sp->jretry, 0);
  iobatch_free(sp->iread);
  iobatch_free(sp->iunlink);
  pthread_mutex_destroy(&sp->jlock);
  pthread_mutex_destroy(&sp->qlock);
  pthread_cond_destroy(&sp->syncq.cond);
  pthread_cond_destroy(&sp->qdrained);
  pthread_cond_destroy(&sp->unlinkq.cond);
  int fds[] = {sp->base_fd, sp->pickup_fd, sp->queue_fd, sp->bad_fd, sp->ino_fd, sp->wake_fd};
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
  free(sp);
}

/* ---- ingest ---- */

static bool name_ignored(const char *n)
{
  size_t l = strlen(n);
  return n[0] == '.' || (l >= 4 && !strcmp(n + l - 4, ".tmp")) || l > SPOOL_NAME_MAX - 24;
}

static int cmp_ino(const void *a, const void *b)
{
  uint64_t x = ((const struct pname *)a)->ino, y = ((const struct pname *)b)->ino;
  return x < y ? -1 : x > y;
}

/* List pickup/. A long listing is taken in inode order: on ext4 that is
 * close to the order of the inode table and of the data blocks, so a
 * backlog that is no longer in the page cache is read sequentially
 * rather than at random. */
static int scan_pickup(struct spool *sp)
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
  if (n > 1)
    qsort(sp->names, n, sizeof(*sp->names), cmp_ino);
  sp->nnames = n;
  sp->next_rescan_ns = clock_mono_ns() + (uint64_t)sp->p.rescan_ms * 1000000u;
  return 0;
}

static void drain_fd(int fd)
{
  char b[4096];
  while (fd >= 0 && read(fd, b, sizeof(b)) > 0) {
  }
}

/* Wait for something to claim; true when names are pending. */
static bool wait_work(struct spool *sp, int timeout_ms)
{
  if (sp->inames < sp->nnames)
    return true;
  if (sp->nnames > 0) { /* a listing ran out: files that came meanwhile are next */
    names_clear(sp);
    sp->scan_due = true;
  }
  uint64_t deadline = clock_mono_ns() + (timeout_ms > 0 ? (uint64_t)timeout_ms * 1000000u : 0);
  int ms = 0;
  for (;;) {
    struct pollfd pfd[2] = {{.fd = sp->ino_fd, .events = POLLIN},
                            {.fd = sp->wake_fd, .events = POLLIN}};
    if (poll(pfd, 2, ms) > 0) {
      if (pfd[0].revents) {
        drain_fd(sp->ino_fd);
        sp->scan_due = true;
      }
      if (pfd[1].revents)
        drain_fd(sp->wake_fd);
    }
    uint64_t now = clock_mono_ns();
    if (atomic_exchange(&sp->kick, 0) || now >= sp->next_rescan_ns)
      sp->scan_due = true;
    if (sp->scan_due) {
      sp->scan_due = false;
      wait_drained(sp);
      if (scan_pickup(sp) == 0 && sp->nnames > 0)
        return true;
    }
    if (now >= deadline || atomic_load(&sp->stop))
      return false;
    uint64_t until = deadline < sp->next_rescan_ns ? deadline : sp->next_rescan_ns;
    ms = (int)((until - now + 999999u) / 1000000u);
  }
}

/* A claimed message of the current batch. */
struct claimed {
  struct spool_msg *msg;
  int body_fd, meta_fd; /* kept for fsync (method fsync) or -1 */
};

static int sync_fd_counted(struct spool *sp, int fd)
{
  if (fd < 0)
    return 0;
  return sync_timed(sp, fd, 0);
}
#define sync_fd(fd) sync_fd_counted(sp, (fd))

static int syncfs_counted(struct spool *sp)
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
  histo_read(&sp->st_sync_lat, &out->sync_latency);
}

/* Make the batch durable. */
static int sync_batch(struct spool *sp, struct claimed *c, size_t n, const bool *touched)
{
  if (sp->p.sync == SPOOL_SYNC_NONE || n == 0)
    return 0;
  if (sp->p.sync_method != SPOOL_SYNCM_FSYNC)
    return syncfs_counted(sp);
  int r = 0;
  for (size_t i = 0; i < n && r == 0; i++) {
    if ((r = sync_fd(c[i].body_fd)) == 0)
      r = sync_fd(c[i].meta_fd);
  }
  for (int b = 0; b < NBUCKETS && r == 0; b++)
    if (touched[b])
      r = sync_fd(sp->bucket_fd[b]);
  if (r == 0)
    r = sync_fd(sp->pickup_fd);
  return r;
}

static void claimed_close(struct claimed *c)
{
  if (c->body_fd >= 0)
    close(c->body_fd);
  if (c->meta_fd >= 0)
    close(c->meta_fd);
  c->body_fd = c->meta_fd = -1;
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
static struct spool_msg *msg_from_env(struct spool *sp, struct spool_envelope *env, uint64_t id,
                                      uint16_t node, uint8_t bucket)
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
  m->mess = env->mess ? env->mess : ctx_new();
  env->mess = NULL;
  m->conn = ctx_new();
  if (!m->mess || !m->conn)
    util_panic("spool: out of memory");
  (void)sp;
  return m;
}

/* Write the scrubbed envelope bytes back over the claimed file. Best
 * effort: a file the engine may not write (another owner, after the
 * drop to User) keeps its text; see docs/security.md. */
static void scrub_file(int dfd, const char *qname, const void *p, size_t n, size_t off)
{
  int fd = openat(dfd, qname, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return;
  (void)!pwrite(fd, p, n, (off_t)off);
  close(fd);
}

/* Parse the claimed file (bucket dir dfd, name qname) and write its
 * metadata. Returns 0 with *out set; 1 when it was rejected to bad/
 * (reported); or -errno (disk trouble: nothing half-written is left, and
 * the file is still at qname). */
static int ingest_file(struct spool *sp, int dfd, const char *qname, const char *orig,
                       uint64_t id, uint16_t node, uint8_t bucket, struct claimed *out)
{
  char why[512];
  char idstr[SPOOL_ID_LEN + 1];
  id_format(id, node, idstr);
  out->msg = NULL;
  out->body_fd = out->meta_fd = -1;
  int fd = openat(dfd, qname, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) {
      snprintf(why, sizeof(why), "file vanished while being claimed");
      write_why(sp, orig, why, idstr);
      report_bad(sp, orig, why);
      return 1;
    }
    snprintf(why, sizeof(why), "cannot open claimed file: %s", strerror(errno));
    to_bad(sp, dfd, qname, orig, why, idstr);
    return 1;
  }
  struct stat st;
  int r = read_file(sp, fd, &st, why, sizeof(why));
  if (r == -EFBIG || r == -EAGAIN || r == -EINVAL) {
    close(fd);
    to_bad(sp, dfd, qname, orig, why, idstr);
    return 1;
  }
  if (r < 0) {
    close(fd);
    snprintf(why, sizeof(why), "read error: %s", strerror(-r));
    to_bad(sp, dfd, qname, orig, why, idstr);
    return 1;
  }
  struct spool_envelope env;
  if (spool_parse((const char *)sp->rbuf.data, sp->rbuf.len, &env, why, sizeof(why)) < 0) {
    spool_envelope_done(&env);
    close(fd);
    to_bad(sp, dfd, qname, orig, why, idstr);
    return 1;
  }
  struct spool_msg *m = msg_from_env(sp, &env, id, node, bucket);
  /* A password given as x-context lives on in memory only (the metadata
   * never holds it): overwrite it in the queue file and in rbuf. */
  size_t lo, hi;
  if (spool_scrub_secrets((char *)sp->rbuf.data, env.body_off, &lo, &hi) > 0)
    scrub_file(dfd, qname, sp->rbuf.data + lo, hi - lo, lo);
  spool_envelope_done(&env);
  if (sp->p.on_ingest) {
    why[0] = 0;
    if (sp->p.on_ingest(sp->p.arg, m, why, sizeof(why)) < 0) {
      spool_msg_free(m);
      close(fd);
      to_bad(sp, dfd, qname, orig, why[0] ? why : "rejected by the ingest hook", idstr);
      return 1;
    }
  }
  meta_build(&sp->mbuf, m);
  char mname[SPOOL_ID_LEN + 3];
  snprintf(mname, sizeof(mname), "%s.m", idstr);
  int mfd = openat(dfd, mname, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (mfd < 0) {
    r = -errno;
  } else {
    r = write_all(mfd, sp->mbuf.data, sp->mbuf.len, 0);
    if (r == 0 && sp->p.sync == SPOOL_SYNC_ALWAYS) {
      if ((r = sync_fd(mfd)) == 0 && (r = sync_fd(fd)) == 0 && (r = sync_fd(dfd)) == 0)
        r = sync_fd(sp->pickup_fd);
    }
  }
  if (r < 0) {
    if (mfd >= 0) {
      close(mfd);
      unlinkat(dfd, mname, 0);
    }
    close(fd);
    spool_msg_free(m);
    return r;
  }
  /* Queue files are 0600 whatever mode the producer used (after the
   * metadata: a file put back into pickup/ on error stays untouched). */
  if ((st.st_mode & 07777) != 0600)
    (void)fchmod(fd, 0600);
  if (sp->p.sync == SPOOL_SYNC_BATCH && sp->p.sync_method == SPOOL_SYNCM_FSYNC) {
    out->body_fd = fd;
    out->meta_fd = mfd;
  } else {
    close(fd);
    close(mfd);
  }
  out->msg = m;
  return 0;
}

static void deliver_batch(struct spool *sp, struct claimed *c, size_t n)
{
  atomic_fetch_add_explicit(&sp->st_ingested, n, memory_order_relaxed);
  atomic_fetch_add_explicit(&sp->st_batches, 1, memory_order_relaxed);
  for (size_t i = 0; i < n; i++) {
    claimed_close(&c[i]);
    spool_drop_ctx(sp, c[i].msg);
    sp->p.on_msg(sp->p.arg, c[i].msg);
    c[i].msg = NULL;
  }
  if (sp->p.on_batch_end)
    sp->p.on_batch_end(sp->p.arg);
}

/* A message of the current journal batch. */
struct jtake {
  struct spool_msg *msg;
  char *name; /* its pickup file, removed once the batch is durable */
  size_t at;  /* where its records start in sp->jbuf */
};

/* A batch on its way from the ingest thread to the commit thread. */
struct jbatch {
  struct jbatch *next;
  struct jtake *c;
  size_t n;
  uint32_t seg;
  uint64_t base;
};

/* Read, check and parse pickup file `name`, and append its JMSG, body and
 * ATTR records to sp->jbuf. Returns 0 with out->msg set; 1 when it went to
 * bad/ (reported) or vanished. Never leaves anything in the journal. */
/* What a pickup file was when it was read: its identity at recovery
 * (jrn_recover_finish). stamp is the mtime in ns for a file read with
 * fstat, or STAMP_CRC | crc32c of its whole content as read for a file
 * read through the ring (which learns no mtime). */
struct pinfo {
  uint64_t ino, size, stamp;
};
#define STAMP_CRC (UINT64_C(1) << 63) /* an mtime has this bit clear until the year 2262 */

static int jrn_take_data(struct spool *sp, const char *name, const uint8_t *data, size_t len,
                         const struct pinfo *pi, int fd, bool stays, struct jtake *out);

static int jrn_take(struct spool *sp, const struct pname *pn, struct jtake *out)
{
  char why[512];
  const char *name = pn->name;
  out->msg = NULL;
  if (pn->type != DT_REG && pn->type != DT_UNKNOWN) { /* a FIFO would block a read */
    to_bad(sp, sp->pickup_fd, name, name, "not a regular file", NULL);
    return 1;
  }
  int fd = -1;
  if (atomic_load_explicit(&sp->noatime, memory_order_relaxed)) {
    fd = openat(sp->pickup_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOATIME);
    if (fd < 0 && errno == EPERM)
      atomic_store(&sp->noatime, false);
  }
  if (fd < 0 && !atomic_load_explicit(&sp->noatime, memory_order_relaxed))
    fd = openat(sp->pickup_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
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
    to_bad(sp, sp->pickup_fd, name, name, why, NULL);
    return 1;
  }
  struct stat st;
  int r = read_file(sp, fd, &st, why, sizeof(why));
  if (r < 0) {
    close(fd);
    if (r != -EFBIG && r != -EAGAIN && r != -EINVAL)
      snprintf(why, sizeof(why), "read error: %s", strerror(-r));
    to_bad(sp, sp->pickup_fd, name, name, why, NULL);
    return 1;
  }
  struct pinfo pi = {(uint64_t)st.st_ino, (uint64_t)st.st_size,
                     (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec};
  r = jrn_take_data(sp, name, sp->rbuf.data, sp->rbuf.len, &pi, fd, false, out);
  close(fd);
  return r;
}

/* The rest of jrn_take once the file is in memory (fd: the open file for
 * the ingest hook, or -1 when there is no hook). stays: data lives until
 * the batch is written (the arena), so a big body is written from there
 * (jref) instead of being copied into jbuf. */
static int jrn_take_data(struct spool *sp, const char *name, const uint8_t *data, size_t len,
                         const struct pinfo *pi, int fd, bool stays, struct jtake *out)
{
  char why[512];
  out->msg = NULL;
  uint64_t id = next_id(sp);
  char idstr[SPOOL_ID_LEN + 1];
  id_format(id, sp->p.node_id, idstr);
  struct spool_envelope env;
  if (spool_parse((const char *)data, len, &env, why, sizeof(why)) < 0) {
    spool_envelope_done(&env);
    to_bad(sp, sp->pickup_fd, name, name, why, idstr);
    return 1;
  }
  struct spool_msg *m = msg_from_env(sp, &env, id, sp->p.node_id, 0);
  /* Only the body goes to the journal and the pickup file is removed once
   * it is durable; an x-context password must not linger in the read
   * buffer either (rbuf, or the batch's pre-read buffer: ours to write). */
  size_t slo, shi;
  (void)spool_scrub_secrets((char *)(uintptr_t)data, env.body_off, &slo, &shi);
  spool_envelope_done(&env);
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
      to_bad(sp, sp->pickup_fd, name, name, why[0] ? why : "rejected by the ingest hook", idstr);
      return 1;
    }
  }
  struct buf *b = &sp->jbuf;
  /* positions in the batch: jbuf's bytes plus the bodies referenced so far */
  out->at = b->len + sp->jrefbytes;
  size_t r0 = rec_begin(b, REC_JMSG);
  put_header(b, m, 0); /* body_off 0: the body follows this record */
  put_u64(b, pi->ino);
  put_u64(b, pi->size);
  put_u64(b, pi->stamp);
  put_str(b, name);
  rec_end(b, r0);
  size_t body = b->len + sp->jrefbytes;
  if (stays && m->body_size >= JREF_MIN) {
    if (sp->njrefs == sp->capjrefs) {
      sp->capjrefs = sp->capjrefs ? sp->capjrefs * 2 : 64;
      sp->jrefs = util_xrealloc(sp->jrefs, sp->capjrefs * sizeof(*sp->jrefs));
    }
    sp->jrefs[sp->njrefs++] = (struct jref){b->len, data + m->body_off, (size_t)m->body_size};
    sp->jrefbytes += (size_t)m->body_size;
  } else {
    buf_append(b, data + m->body_off, (size_t)m->body_size);
  }
  m->body_mem = hot_keep(data + m->body_off, m->body_size);
  size_t attr = b->len + sp->jrefbytes;
  rec_attr(b, m);
  /* offsets within the entry for now; ingest_journal makes them absolute */
  m->body_off = body - out->at;
  m->ctx_off = (uint32_t)(attr - out->at);
  m->ctx_len = (uint32_t)(b->len + sp->jrefbytes - attr);
  out->msg = m;
  return 0;
}

bool (*spool_test_keep_pickup)(const char *name);
void (*spool_test_before_forget)(void);

/* A pickup file whose message is durable in the journal leaves pickup/. */
static void jrn_forget_pickup(struct spool *sp, const struct jtake *t)
{
  if (spool_test_keep_pickup && spool_test_keep_pickup(t->name))
    return; /* as if the process died here */
  if (unlinkat(sp->pickup_fd, t->name, 0) == 0 || errno == ENOENT)
    return;
  char why[256], id[SPOOL_ID_LEN + 1];
  snprintf(why, sizeof(why), "queued as %s, but the pickup file could not be removed (%s)",
           spool_msg_id_str(t->msg, id), strerror(errno));
  to_bad(sp, sp->pickup_fd, t->name, t->name, why, id);
}

/* jrn_take for a file read through the ring: returns 0 or 1 as jrn_take,
 * or 2 when jrn_take must read it (not read by the ring, possibly bigger
 * than its slot, changed meanwhile, or O_NOATIME refused). The identity
 * kept for recovery is the name, d_ino, the size read and, for small
 * slots, a checksum of the content read (before spool_scrub_secrets
 * changes the buffer), for big ones the mtime from the statx after the
 * read (a checksum of 100 KB costs more than the statx): see "Claiming is
 * atomic" in docs/spool.md. */
static int jrn_take_pre(struct spool *sp, const struct pname *pn, const struct pre *pr,
                        size_t slot, bool stat, struct jtake *out)
{
  char why[512];
  const char *name = pn->name;
  out->msg = NULL;
  if (pn->type != DT_REG || pr->op == -ECANCELED)
    return 2;
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
  else if ((size_t)pr->rd >= slot)
    return 2; /* the slot is full: the file may be bigger */
  else if ((uint64_t)pr->rd > sp->p.max_message_size)
    snprintf(why, sizeof(why), "file of %d bytes is over Max_Message_Size (%" PRIu64 " bytes)",
             pr->rd, sp->p.max_message_size);
  else if (stat && (pr->st < 0 || pr->stx.stx_ino != pn->ino || !S_ISREG(pr->stx.stx_mode) ||
                    pr->stx.stx_size != (uint64_t)pr->rd))
    return 2; /* changed since it was read, or listed: jrn_take tells */
  else {
    size_t len = (size_t)pr->rd;
    struct pinfo pi = {pn->ino, len,
                       stat ? (uint64_t)pr->stx.stx_mtime.tv_sec * 1000000000u +
                                  (uint64_t)pr->stx.stx_mtime.tv_nsec
                            : STAMP_CRC | crc32c(0, pr->data, len)};
    return jrn_take_data(sp, name, pr->data, len, &pi, -1, true, out);
  }
  to_bad(sp, sp->pickup_fd, name, name, why, NULL);
  return 1;
}

/* Remove a durable batch's pickup files: one ring submission when it can,
 * else (and for any file the ring could not remove) one unlinkat each. */
static void jrn_forget_all(struct spool *sp, struct jbatch *bt)
{
  if (spool_test_before_forget)
    spool_test_before_forget();
  iobatch_get(&sp->iunlink, &sp->iunlink_tried, sp->p.batch_max, false);
  if (sp->iunlink && !spool_test_keep_pickup && bt->n <= sp->iunlink->cap) {
    char **names = util_xmalloc(bt->n * sizeof(*names));
    for (size_t i = 0; i < bt->n; i++)
      names[i] = bt->c[i].name;
    int r = iobatch_unlink(sp->iunlink, sp->pickup_fd, names, (unsigned)bt->n);
    free(names);
    if (r == 0) {
      for (size_t i = 0; i < bt->n; i++)
        if (sp->iunlink->res[i] < 0 && sp->iunlink->res[i] != -ENOENT)
          jrn_forget_pickup(sp, &bt->c[i]);
      return;
    }
  }
  for (size_t i = 0; i < bt->n; i++)
    jrn_forget_pickup(sp, &bt->c[i]);
}

/* A batch that could not be made durable: its pickup files stay for the
 * next round, and what reached the segment is retired so it can never be
 * taken for mail. */
static void jrn_batch_fail(struct spool *sp, struct jbatch *bt, bool put)
{
  struct buf done = {0};
  uint32_t *unpin = util_xmalloc(bt->n * sizeof(*unpin));
  for (size_t i = 0; i < bt->n; i++) {
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
    spool_drop_ctx(sp, bt->c[i].msg);
    sp->p.on_msg(sp->p.arg, bt->c[i].msg);
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
  /* Through the ring when no hook needs the open file. */
  bool ring = !spool_test_after_stat;
  if (ring)
    iobatch_get(&sp->iread, &sp->iread_tried, sp->p.batch_max, true);
  size_t used = 0; /* arena bytes holding this batch's files */
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
    if (ring && ib && slot) {
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
      if (iobatch_read(ib, sp->pickup_fd, sp->names + sp->inames, (unsigned)k,
                       atomic_load_explicit(&sp->noatime, memory_order_relaxed) ? O_NOATIME : 0,
                       ib->buf + used, slot, slot > PRE_BUF) == 0) {
        used += k * slot;
        for (size_t j = 0; j < k && batch_len(sp) < JRN_BATCH_BYTES; j++) {
          const struct pname *pn = &sp->names[sp->inames++];
          int r = jrn_take_pre(sp, pn, &ib->pre[j], slot, slot > PRE_BUF, &bt->c[bt->n]);
          if (r == 0)
            atomic_fetch_add_explicit(&sp->st_ring_reads, 1, memory_order_relaxed);
          if (r == 2)
            r = jrn_take(sp, pn, &bt->c[bt->n]);
          if (r == 0)
            bt->c[bt->n++].name = pn->name;
          else
            free(pn->name);
        }
        continue;
      }
    }
    const struct pname *pn = &sp->names[sp->inames++];
    if (jrn_take(sp, pn, &bt->c[bt->n]) == 0)
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
    jrn_batch_fail(sp, bt, put);
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
        jrn_batch_fail(sp, b, true);
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
static void wait_drained(struct spool *sp)
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
  if (!sp->p.no_journal) {
    int ce = atomic_exchange(&sp->commit_err, 0);
    if (ce < 0) { /* the commit thread could not sync: those files stay in pickup/ */
      wait_drained(sp);
      names_clear(sp);
      sp->scan_due = true;
      return ce;
    }
    return ingest_journal(sp);
  }
  size_t max = sp->p.batch_max, n = 0;
  struct claimed *c = util_xcalloc(max, sizeof(*c));
  bool touched[NBUCKETS] = {0};
  long err = 0;
  while (n < max && sp->inames < sp->nnames) {
    char *orig = sp->names[sp->inames].name;
    uint8_t type = sp->names[sp->inames].type;
    if (type != DT_REG && type != DT_UNKNOWN) { /* never claimed: a FIFO would block a read */
      to_bad(sp, sp->pickup_fd, orig, orig, "not a regular file", NULL);
      sp->inames++;
      free(orig);
      continue;
    }
    uint64_t id = next_id(sp);
    uint8_t bucket = (uint8_t)(sp->seq++ >> BUCKET_SHIFT);
    int dfd = sp->bucket_fd[bucket];
    char idstr[SPOOL_ID_LEN + 1];
    id_format(id, sp->p.node_id, idstr);
    if (renameat(sp->pickup_fd, orig, dfd, idstr) < 0) {
      int e = errno;
      if (e == ENOENT) { /* removed by its producer: nothing to own */
        write_why(sp, orig, "file vanished before it could be claimed", NULL);
        report_bad(sp, orig, "file vanished before it could be claimed");
        sp->inames++;
        free(orig);
        continue;
      }
      err = -e;
      break; /* leave it in pickup/ (ENOSPC etc.) */
    }
    touched[bucket] = true;
    int r = ingest_file(sp, dfd, idstr, orig, id, sp->p.node_id, bucket, &c[n]);
    if (r < 0) {
      /* Put it back where the producer left it; then stop this round. */
      /* If this rename fails too, the file stays claimed without
       * metadata, and recovery parses it again: still in one place. */
      (void)renameat(dfd, idstr, sp->pickup_fd, orig);
      err = r;
      break;
    }
    sp->inames++;
    free(orig);
    if (r == 0) {
      if (sp->p.sync == SPOOL_SYNC_ALWAYS) {
        deliver_batch(sp, &c[n], 1);
      } else {
        n++;
      }
    }
  }
  long done = (long)n;
  if (n > 0) {
    int r = sync_batch(sp, c, n, touched);
    if (r < 0) {
      /* Not durable: keep the messages queued for recovery, but do not
       * report them yet; recovery at the next start finds them. */
      for (size_t i = 0; i < n; i++) {
        claimed_close(&c[i]);
        spool_msg_free(c[i].msg);
      }
      free(c);
      atomic_store(&sp->last_err, r);
      return r;
    }
    deliver_batch(sp, c, n);
  }
  free(c);
  if (err < 0) {
    names_clear(sp);
    sp->scan_due = true;
  }
  atomic_store(&sp->last_err, (int)err);
  return err < 0 ? err : done;
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
  if (!sp->p.no_journal && sp->p.sync == SPOOL_SYNC_BATCH) {
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

/* ---- recovery ---- */

static int cmp_str(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read <id>.m fully into b. */
static int read_meta(int dfd, const char *mname, struct buf *b)
{
  int fd = openat(dfd, mname, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  b->len = b->off = 0;
  buf_reserve(b, 4096);
  for (;;) {
    if (b->cap - b->len < 1024)
      buf_reserve(b, b->cap);
    ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int e = -errno;
      close(fd);
      return e;
    }
    if (n == 0)
      break;
    b->len += (size_t)n;
    if (b->len > META_MAX) {
      close(fd);
      return -EFBIG;
    }
  }
  close(fd);
  return 0;
}

/* Rebuild a message from its metadata. Returns the message; NULL with
 * *why set on damage; NULL with why[0] == 0 when the metadata is only a
 * torn first write (re-parse the body). */
static struct spool_msg *meta_load(struct spool *sp, const struct buf *b, uint8_t bucket,
                                   char *why, size_t whylen)
{
  why[0] = 0;
  const uint8_t *p = b->data, *end = b->data + b->len;
  if (b->len < 8)
    return NULL; /* torn before the header: re-parse */
  if (memcmp(p, META_MAGIC, 4) != 0) {
    snprintf(why, whylen, "metadata has a bad magic number");
    return NULL;
  }
  uint32_t ver = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
  if (ver != META_VERSION) {
    snprintf(why, whylen, "metadata version %u is not supported", ver);
    return NULL;
  }
  p += 8;
  struct spool_msg *m = NULL;
  unsigned recno = 0;
  while (p < end) {
    uint8_t type;
    struct rd r;
    long n = rec_check(p, (size_t)(end - p), &type, &r);
    recno++;
    if (n == 0) {
      if (!m)
        return NULL; /* torn first write: re-parse */
      break;         /* torn tail: never reported durable */
    }
    if (n < 0) {
      snprintf(why, whylen, "metadata record %u at offset %zu fails its checksum", recno,
               (size_t)(p - b->data));
      goto bad;
    }
    if (type == REC_HEADER && !m) {
      uint64_t boff;
      if (!(m = get_header(&r, &boff)))
        goto malformed;
      m->body_off = boff;
      m->bucket = bucket;
    } else if (!m) {
      goto malformed;
    } else if (type == REC_ATTR) {
      m->ctx_off = (uint32_t)(p - b->data);
      m->ctx_len = (uint32_t)n;
      if (attr_apply(m, &r, sp->p.keep_dicts_in_memory) < 0)
        goto malformed;
    } else if (type == REC_STATE) {
      m->attempts = get_u32(&r);
      m->next_attempt_ms = get_u64(&r);
      uint32_t cnt = get_u32(&r);
      for (uint32_t i = 0; i < cnt && !r.bad; i++) {
        uint32_t idx = get_u32(&r);
        uint8_t st = get_u8(&r);
        if (!r.bad && idx < m->nrcpt && st <= SPOOL_RCPT_FAILED)
          m->rcpt_state[idx] = st;
      }
      if (r.bad)
        goto malformed;
    } else {
      goto malformed;
    }
    p += n;
  }
  if (!m || m->ctx_len == 0) {
    if (!m)
      return NULL;
    snprintf(why, whylen, "metadata has no attribute record");
    goto bad;
  }
  m->meta_size = (uint32_t)(p - b->data);
  m->npending = 0;
  for (uint32_t i = 0; i < m->nrcpt; i++)
    if (m->rcpt_state[i] == SPOOL_RCPT_PENDING)
      m->npending++;
  return m;
malformed:
  snprintf(why, whylen, "metadata record %u is malformed", recno);
bad:
  spool_msg_free(m);
  return NULL;
}

/* Recover one message of bucket b: body (may be missing) and meta.
 * Returns 1 when handed to on_msg, 2 when re-parsed (in *reparsed, to be
 * synced and handed over by the caller), 0 when not queued, or -errno. */
static long recover_one(struct spool *sp, int b, const char *id, bool have_body,
                        bool have_meta, struct buf *mb, struct spool_msg **reparsed)
{
  int dfd = sp->bucket_fd[b];
  char mname[SPOOL_ID_LEN + 8], why[512];
  snprintf(mname, sizeof(mname), "%s.m", id);
  uint64_t idv;
  uint16_t node;
  if (spool_id_parse(id, &idv, &node) < 0) {
    snprintf(why, sizeof(why), "unexpected file in the queue");
    if (have_body)
      to_bad(sp, dfd, id, id, why, NULL);
    if (have_meta)
      to_bad(sp, dfd, mname, mname, why, NULL);
    return 0;
  }
  if (idv > sp->last_id)
    sp->last_id = idv;
  if (jmap_find(sp->jrecov, idv, node)) {
    /* A spill that a crash cut short: the journal has not retired the
     * entry, so it stands and the partial files go. */
    unlinkat(dfd, id, 0);
    unlinkat(dfd, mname, 0);
    return 0;
  }
  struct spool_msg *m = NULL;
  why[0] = 0;
  if (have_meta) {
    int r = read_meta(dfd, mname, mb);
    if (r < 0)
      snprintf(why, sizeof(why), "cannot read metadata: %s", strerror(-r));
    else
      m = meta_load(sp, mb, (uint8_t)b, why, sizeof(why));
    if (!m && why[0]) {
      if (have_body)
        to_bad(sp, dfd, id, id, why, id);
      char dst[SPOOL_NAME_MAX + 1];
      bad_name(sp, mname, id, dst, sizeof(dst));
      renameat(dfd, mname, sp->bad_fd, dst);
      if (!have_body)
        write_why(sp, dst, why, id);
      if (!have_body)
        report_bad(sp, id, why);
      return 0;
    }
  }
  if (!have_body) {
    if (m && m->npending == 0) { /* removal was cut short: finish it */
      unlinkat(dfd, mname, 0);
      spool_msg_free(m);
      return 0;
    }
    spool_msg_free(m);
    char dst[SPOOL_NAME_MAX + 1];
    bad_name(sp, mname, id, dst, sizeof(dst));
    renameat(dfd, mname, sp->bad_fd, dst);
    write_why(sp, dst, "message body is missing from the queue", id);
    report_bad(sp, id, "message body is missing from the queue");
    return 0;
  }
  if (!m) {
    /* Claimed before a crash, metadata never (fully) written: parse again. */
    struct claimed c;
    if (have_meta)
      unlinkat(dfd, mname, 0);
    int r = ingest_file(sp, dfd, id, id, idv, node, (uint8_t)b, &c);
    if (r < 0)
      return r;
    if (r > 0)
      return 0;
    claimed_close(&c);
    *reparsed = c.msg;
    return 2;
  }
  if (m->npending == 0) {
    unlinkat(dfd, id, 0);
    unlinkat(dfd, mname, 0);
    spool_msg_free(m);
    return 0;
  }
  atomic_fetch_add_explicit(&sp->st_recovered, 1, memory_order_relaxed);
  sp->p.on_msg(sp->p.arg, m);
  return 1;
}

/* Journal recovery: every queued message found in the segments, by id. */
struct jent {
  struct spool_msg *m; /* NULL once done, or superseded by its own files */
  uint64_t ino, size, stamp; /* struct pinfo */
  char *src;           /* the pickup file it came from */
};
struct jmap {
  struct jent *e;
  size_t n, cap;
  uint32_t *h; /* index + 1, open addressing; 0 = empty */
  size_t hcap;
};

static size_t jmap_slot(const struct jmap *jm, uint64_t id, uint16_t node)
{
  uint64_t k = (id ^ ((uint64_t)node << 48)) * 0x9e3779b97f4a7c15ull;
  return (size_t)(k >> 20) & (jm->hcap - 1);
}

static struct jent *jmap_find(struct jmap *jm, uint64_t id, uint16_t node)
{
  if (!jm || !jm->hcap)
    return NULL;
  for (size_t i = jmap_slot(jm, id, node);; i = (i + 1) & (jm->hcap - 1)) {
    uint32_t x = jm->h[i];
    if (!x)
      return NULL;
    struct jent *e = &jm->e[x - 1];
    if (e->m && e->m->id == id && e->m->node == node)
      return e;
  }
}

static void jmap_put(struct jmap *jm, struct jent *ne)
{
  if ((jm->n + 1) * 2 > jm->hcap) {
    size_t hc = jm->hcap ? jm->hcap * 2 : 1024;
    free(jm->h);
    jm->h = util_xcalloc(hc, sizeof(*jm->h));
    jm->hcap = hc;
    for (size_t k = 0; k < jm->n; k++) {
      if (!jm->e[k].m)
        continue;
      size_t i = jmap_slot(jm, jm->e[k].m->id, jm->e[k].m->node);
      while (jm->h[i])
        i = (i + 1) & (hc - 1);
      jm->h[i] = (uint32_t)k + 1;
    }
  }
  if (jm->n == jm->cap) {
    jm->cap = jm->cap ? jm->cap * 2 : 1024;
    jm->e = util_xrealloc(jm->e, jm->cap * sizeof(*jm->e));
  }
  jm->e[jm->n] = *ne;
  size_t i = jmap_slot(jm, ne->m->id, ne->m->node);
  while (jm->h[i])
    i = (i + 1) & (jm->hcap - 1);
  jm->h[i] = (uint32_t)++jm->n;
}

static void jent_drop(struct jent *e)
{
  spool_msg_free(e->m);
  e->m = NULL;
}

static void jmap_free(struct jmap *jm)
{
  for (size_t i = 0; i < jm->n; i++) {
    spool_msg_free(jm->e[i].m);
    free(jm->e[i].src);
  }
  free(jm->e);
  free(jm->h);
}

/* A damaged segment is kept whole in bad/ (hard link) with a .why. */
static void jrn_seg_bad(struct spool *sp, uint32_t seg, const char *reason)
{
  char name[16], dst[SPOOL_NAME_MAX + 1], src[24];
  jseg_name(seg, name);
  snprintf(src, sizeof(src), "journal-%s", name);
  bad_name(sp, src, NULL, dst, sizeof(dst));
  if (linkat(sp->jdir_fd, name, sp->bad_fd, dst, 0) == 0)
    write_why(sp, dst, reason, NULL);
  report_bad(sp, src, reason);
}

/* Read one JMSG entry (record, body, ATTR) at p. Returns its size, 0 when
 * cut short, -EBADMSG when damaged. */
static long jrn_load_msg(struct spool *sp, uint32_t seg, const uint8_t *base, size_t p,
                         size_t len, struct rd *r, long n, struct jent *out)
{
  uint64_t unused;
  struct spool_msg *m = get_header(r, &unused);
  if (!m)
    return -EBADMSG;
  out->ino = get_u64(r);
  out->size = get_u64(r);
  out->stamp = get_u64(r);
  uint32_t nl;
  const char *src = get_str(r, &nl);
  size_t body = p + (size_t)n, attr = body + m->body_size;
  uint8_t type = 0;
  struct rd ar;
  long an = 0;
  if (r->bad || !src)
    an = -EBADMSG;
  else if (m->body_size <= len && attr <= len) /* else cut short */
    an = rec_check(base + attr, len - attr, &type, &ar);
  if (an > 0 && type != REC_ATTR)
    an = -EBADMSG;
  if (an <= 0) {
    spool_msg_free(m);
    return an;
  }
  m->body_off = body;
  m->jseg = seg;
  m->ctx_off = (uint32_t)attr;
  m->ctx_len = (uint32_t)an;
  if (attr_apply(m, &ar, sp->p.keep_dicts_in_memory) < 0) {
    spool_msg_free(m);
    return -EBADMSG;
  }
  out->m = m;
  out->src = util_xstrndup(src, nl);
  if (m->id > sp->last_id)
    sp->last_id = m->id;
  return (long)(attr + (size_t)an - p);
}

/* Replay one segment into jm. Returns 0 or -errno (I/O). */
static int jrn_scan_seg(struct spool *sp, uint32_t seg, int fd, struct jmap *jm, struct buf *b)
{
  struct stat st;
  if (fstat(fd, &st) < 0)
    return -errno;
  b->len = b->off = 0;
  buf_reserve(b, (size_t)st.st_size + 1);
  size_t len = 0;
  while (len < (size_t)st.st_size) {
    ssize_t n = pread(fd, b->data + len, (size_t)st.st_size - len, (off_t)len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      break;
    len += (size_t)n;
  }
  const uint8_t *d = b->data;
  char why[256];
  if (len < 8)
    return 0; /* cut before its header was written: nothing in it */
  if (memcmp(d, JRN_MAGIC, 4) != 0 || d[4] != JRN_VERSION) {
    jrn_seg_bad(sp, seg, "journal segment has a bad magic number or version");
    return 0;
  }
  size_t p = 8;
  while (p < len) {
    uint8_t type;
    struct rd r;
    long n = rec_check(d + p, len - p, &type, &r);
    if (n == 0)
      break; /* torn tail: never reported durable */
    if (n > 0 && type == REC_JMSG) {
      struct jent e = {0};
      n = jrn_load_msg(sp, seg, d, p, len, &r, n, &e);
      if (n == 0)
        break;
      if (n > 0) {
        jmap_put(jm, &e);
        p += (size_t)n;
        continue;
      }
    } else if (n > 0 && (type == REC_JSTATE || type == REC_DONE)) {
      uint64_t id = get_u64(&r);
      uint16_t node = get_u16(&r);
      struct jent *e = jmap_find(jm, id, node);
      if (type == REC_DONE) {
        if (e)
          jent_drop(e);
      } else if (e) {
        uint32_t att = get_u32(&r);
        uint64_t next = get_u64(&r);
        uint32_t cnt = get_u32(&r);
        for (uint32_t i = 0; i < cnt && !r.bad; i++) {
          uint32_t idx = get_u32(&r);
          uint8_t stt = get_u8(&r);
          if (!r.bad && idx < e->m->nrcpt && stt <= SPOOL_RCPT_FAILED)
            e->m->rcpt_state[idx] = stt;
        }
        if (!r.bad) {
          e->m->attempts = att;
          e->m->next_attempt_ms = next;
        }
      }
      if (!r.bad) {
        p += (size_t)n;
        continue;
      }
      n = -EBADMSG;
    }
    snprintf(why, sizeof(why),
             "journal record at offset %zu %s; the messages after it in this segment are "
             "not queued (they are in this copy)",
             p, n == -EBADMSG && type != REC_JMSG ? "is malformed" : "fails its checksum");
    if (n > 0)
      snprintf(why, sizeof(why), "journal record at offset %zu has unknown type %u", p, type);
    jrn_seg_bad(sp, seg, why);
    break;
  }
  return 0;
}

static int cmp_u32(const void *a, const void *b)
{
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* First step of recovery: read the journal's segments, oldest first. */
static int jrn_recover_scan(struct spool *sp, struct jmap *jm)
{
  int fd = dup(sp->jdir_fd);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close(fd);
    return -errno;
  }
  uint32_t *segs = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  rewinddir(d);
  while ((e = readdir(d))) {
    char *end;
    unsigned long v = strtoul(e->d_name, &end, 16);
    if (e->d_name[0] == '.' || *end || strlen(e->d_name) != 8 || v == 0 || v > UINT32_MAX - 2)
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      segs = util_xrealloc(segs, cap * sizeof(*segs));
    }
    segs[n++] = (uint32_t)v;
  }
  closedir(d);
  if (n > 1)
    qsort(segs, n, sizeof(*segs), cmp_u32);
  if (n > 0 && segs[n - 1] - segs[0] >= JRN_SLOTS) {
    free(segs);
    return -EMFILE;
  }
  struct buf b = {0};
  int err = 0;
  for (size_t i = 0; i < n && err == 0; i++) {
    char name[16];
    jseg_name(segs[i], name);
    int sfd = openat(sp->jdir_fd, name, O_RDWR | O_CLOEXEC);
    if (sfd < 0) {
      err = -errno;
      break;
    }
    jfd_set(sp, segs[i], sfd);
    err = jrn_scan_seg(sp, segs[i], sfd, jm, &b);
  }
  if (n > 0) {
    sp->jfirst = segs[0];
    sp->jnext = segs[n - 1] + 1;
  }
  buf_done(&b, 0);
  free(segs);
  return err;
}

static int cmp_pname(const void *a, const void *b)
{
  return strcmp(((const struct pname *)a)->name, ((const struct pname *)b)->name);
}

/* Is the pickup entry pn the file journal entry e was read from? Same
 * name, same inode (d_ino, as when it was read through the ring) and
 * size, and the same content checksum (STAMP_CRC) or mtime. */
static bool jrn_same_pickup(struct spool *sp, const struct jent *e, const struct pname *pn)
{
  struct stat st;
  if (!(e->stamp & STAMP_CRC)) /* read with fstat: its mtime */
    return fstatat(sp->pickup_fd, pn->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
           (uint64_t)st.st_ino == e->ino && (uint64_t)st.st_size == e->size &&
           (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec == e->stamp;
  if (pn->ino != e->ino || e->size > sp->p.max_message_size)
    return false;
  int fd = openat(sp->pickup_fd, pn->name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return false;
  bool same = false;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == e->size) {
    /* rbuf is free: recovery runs before ingestion */
    sp->rbuf.len = sp->rbuf.off = 0;
    buf_reserve(&sp->rbuf, (size_t)e->size + 1);
    size_t got = 0;
    for (;;) {
      ssize_t n = pread(fd, sp->rbuf.data + got, (size_t)e->size + 1 - got, (off_t)got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      got += (size_t)n;
      if (got > e->size)
        break;
    }
    same = got == e->size && (STAMP_CRC | crc32c(0, sp->rbuf.data, got)) == e->stamp;
  }
  close(fd);
  return same;
}

/* Last step: drop what is done or still in pickup/ (a crash came between
 * the batch's sync and the removal of its pickup files: the file is
 * ingested again, and a DONE record retires the journal's copy), then
 * hand over the rest. Returns the number handed over or -errno. */
static long jrn_recover_finish(struct spool *sp, struct jmap *jm)
{
  struct buf b = {0};
  /* One listing of pickup/ instead of a stat per entry: only entries whose
   * file name is still there can be a batch cut before its removals. */
  if (scan_pickup(sp) < 0)
    names_clear(sp);
  if (sp->nnames > 1)
    qsort(sp->names, sp->nnames, sizeof(*sp->names), cmp_pname);
  for (size_t i = 0; i < jm->n; i++) {
    struct jent *e = &jm->e[i];
    if (!e->m)
      continue;
    e->m->npending = 0;
    for (uint32_t k = 0; k < e->m->nrcpt; k++)
      if (e->m->rcpt_state[k] == SPOOL_RCPT_PENDING)
        e->m->npending++;
    struct pname key = {.name = e->src};
    const struct pname *pn =
        sp->nnames > 0 ? bsearch(&key, sp->names, sp->nnames, sizeof(*sp->names), cmp_pname)
                       : NULL;
    bool in_pickup = pn && jrn_same_pickup(sp, e, pn);
    if (in_pickup || e->m->npending == 0) {
      rec_done(&b, e->m);
      jent_drop(e);
    }
  }
  names_clear(sp);
  sp->scan_due = true;
  int r = 0;
  uint32_t seg;
  uint64_t off;
  if (b.len > 0 && (r = jrn_put(sp, b.data, b.len, 0, &seg, &off)) == 0)
    r = jrn_sync(sp, seg);
  buf_done(&b, 0);
  if (r < 0)
    return r;
  pthread_mutex_lock(&sp->jlock);
  for (size_t i = 0; i < jm->n; i++)
    if (jm->e[i].m)
      sp->jpins[jm->e[i].m->jseg % JRN_SLOTS]++;
  pthread_mutex_unlock(&sp->jlock);
  long count = 0;
  for (size_t i = 0; i < jm->n; i++) {
    struct jent *e = &jm->e[i];
    if (!e->m)
      continue;
    struct spool_msg *m = e->m;
    e->m = NULL;
    atomic_fetch_add_explicit(&sp->st_recovered, 1, memory_order_relaxed);
    sp->p.on_msg(sp->p.arg, m);
    count++;
  }
  pthread_mutex_lock(&sp->jlock);
  jrn_gc(sp);
  pthread_mutex_unlock(&sp->jlock);
  return count;
}

long spool_recover(struct spool *sp)
{
  struct jmap jm = {0};
  long count = 0;
  if (!sp->p.no_journal) {
    int r = jrn_recover_scan(sp, &jm);
    if (r < 0) {
      jmap_free(&jm);
      return r;
    }
    sp->jrecov = &jm;
  }
  count = spool_recover_files(sp);
  sp->jrecov = NULL;
  if (count >= 0 && !sp->p.no_journal) {
    long n = jrn_recover_finish(sp, &jm);
    count = n < 0 ? n : count + n;
  }
  jmap_free(&jm);
  if (sp->p.on_batch_end)
    sp->p.on_batch_end(sp->p.arg);
  return count;
}

/* The messages in their own files (queue/XX/). */
static long spool_recover_files(struct spool *sp)
{
  long count = 0;
  struct buf mb = {0};
  char **names = NULL;
  size_t cap = 0;
  struct spool_msg **rep = NULL;
  size_t nrep = 0, caprep = 0;
  for (int b = 0; b < NBUCKETS; b++) {
    int fd = dup(sp->bucket_fd[b]);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
      if (fd >= 0)
        close(fd);
      free(names);
      buf_done(&mb, 0);
      return -errno;
    }
    rewinddir(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.')
        continue;
      if (n == cap) {
        cap = cap ? cap * 2 : 1024;
        names = util_xrealloc(names, cap * sizeof(char *));
      }
      names[n++] = util_xstrdup(e->d_name);
    }
    closedir(d);
    if (n > 1)
      qsort(names, n, sizeof(char *), cmp_str);
    long err = 0;
    for (size_t i = 0; i < n; i++) {
      const char *nm = names[i];
      size_t l = strlen(nm);
      char id[SPOOL_ID_LEN + 8];
      bool body = false, meta = false;
      if (l > 2 && !strcmp(nm + l - 2, ".m")) {
        snprintf(id, sizeof(id), "%.*s", (int)(l - 2), nm);
        meta = true;
      } else {
        snprintf(id, sizeof(id), "%s", nm);
        body = true;
        if (i + 1 < n && strlen(names[i + 1]) == l + 2 && !strncmp(names[i + 1], nm, l) &&
            !strcmp(names[i + 1] + l, ".m")) {
          meta = true;
          i++;
        }
      }
      if (err == 0) {
        struct spool_msg *m = NULL;
        long r = recover_one(sp, b, id, body, meta, &mb, &m);
        if (r < 0) {
          err = r;
        } else if (r == 2) {
          if (nrep == caprep) {
            caprep = caprep ? caprep * 2 : 16;
            rep = util_xrealloc(rep, caprep * sizeof(*rep));
          }
          rep[nrep++] = m;
        } else {
          count += r;
        }
      }
    }
    for (size_t i = 0; i < n; i++)
      free(names[i]);
    if (err < 0) {
      for (size_t i = 0; i < nrep; i++)
        spool_msg_free(rep[i]);
      free(rep);
      free(names);
      buf_done(&mb, 0);
      return err;
    }
  }
  free(names);
  buf_done(&mb, 0);
  /* Messages claimed before a crash and parsed again: one sync, then hand over. */
  long err = 0;
  if (nrep > 0 && sp->p.sync != SPOOL_SYNC_NONE)
    err = syncfs_counted(sp);
  for (size_t i = 0; i < nrep; i++) {
    if (err < 0) {
      spool_msg_free(rep[i]);
      continue;
    }
    spool_drop_ctx(sp, rep[i]);
    atomic_fetch_add_explicit(&sp->st_recovered, 1, memory_order_relaxed);
    sp->p.on_msg(sp->p.arg, rep[i]);
    count++;
  }
  free(rep);
  if (err < 0)
    return err;
  /* Start new buckets where the clock is; ids continue above the newest. */
  sp->seq = 0;
  return count;
}

/* Copy len bytes at off of src to the start of dst (kernel copy when the
 * file system can). Returns 0 or -errno. */
static int copy_out(int src, uint64_t off, uint64_t len, int dst)
{
  loff_t in = (loff_t)off, out = 0;
  while (len > 0) {
    ssize_t n = copy_file_range(src, &in, dst, &out, len, 0);
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
      char chunk[65536];
      n = pread(src, chunk, len < sizeof(chunk) ? (size_t)len : sizeof(chunk), in);
      if (n > 0) {
        int r = write_all(dst, chunk, (size_t)n, out);
        if (r < 0)
          return r;
        in += n;
        out += n;
      }
    }
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0)
      return -EIO; /* the source is shorter than the message */
    len -= (uint64_t)n;
  }
  return 0;
}

/* Copy journaled message m into its own files: queue/XX/<id> (the body
 * alone, body_off 0) and <id>.m (HEADER, ATTR, and a STATE with its
 * recipients' states). The fds stay open in *bfd and *mfd for the
 * caller's sync pass. On failure nothing is left and m is unchanged.
 * Owner thread of m; no other thread may read it meanwhile. */
static int jrn_spill(struct spool *sp, struct spool_msg *m, struct buf *b, int *bfd, int *mfd)
{
  bool dropped = !m->mess || !m->conn;
  int r = spool_load_ctx(sp, m);
  if (r < 0)
    return r;
  uint8_t bucket = (uint8_t)(m->id >> (22 + BUCKET_SHIFT));
  char id[SPOOL_ID_LEN + 3];
  id_format(m->id, m->node, id);
  int dfd = sp->bucket_fd[bucket], src = jfd_of(sp, m->jseg);
  int fd = openat(dfd, id, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  r = copy_out(src, m->body_off, m->body_size, fd);
  int mf = -1;
  if (r == 0) {
    uint64_t off = m->body_off;
    uint8_t obucket = m->bucket;
    uint32_t octx = m->ctx_off, olen = m->ctx_len;
    m->body_off = 0;
    m->bucket = bucket;
    meta_build(b, m);
    size_t st = rec_begin(b, REC_STATE);
    put_u32(b, m->attempts);
    put_u64(b, m->next_attempt_ms);
    put_u32(b, m->nrcpt);
    for (uint32_t i = 0; i < m->nrcpt; i++) {
      put_u32(b, i);
      put_u8(b, m->rcpt_state[i]);
    }
    rec_end(b, st);
    memcpy(id + SPOOL_ID_LEN, ".m", 3);
    mf = openat(dfd, id, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    r = mf < 0 ? -errno : write_all(mf, b->data, b->len, 0);
    if (r == 0) {
      m->meta_size = (uint32_t)b->len;
      m->jseg = 0;
      hot_drop(m); /* it waits for a retry: no need to keep it in memory */
    } else {
      if (mf >= 0) {
        close(mf);
        unlinkat(dfd, id, 0);
      }
      mf = -1;
      m->body_off = off;
      m->bucket = obucket;
      m->ctx_off = octx;
      m->ctx_len = olen;
    }
    id[SPOOL_ID_LEN] = 0;
  }
  if (r < 0) {
    close(fd);
    unlinkat(dfd, id, 0);
    if (dropped)
      spool_drop_ctx(sp, m);
    return r;
  }
  if (dropped)
    spool_drop_ctx(sp, m);
  *bfd = fd;
  *mfd = mf;
  return 0;
}

/* ---- outcome transactions ---- */

enum { OP_RCPT, OP_RETRY, OP_CTX, OP_REMOVE, OP_SPILL };

struct txn_op {
  struct spool_msg *msg;
  uint32_t idx;
  uint8_t kind, state;
  uint32_t seq;
};

struct spool_txn {
  struct spool *sp;
  struct txn_op *ops;
  size_t n, cap;
  struct buf b;
  struct buf jrec; /* records for the journal writer */
};

struct spool_txn *spool_txn_new(struct spool *sp)
{
  struct spool_txn *t = util_xcalloc(1, sizeof(*t));
  t->sp = sp;
  return t;
}

void spool_txn_free(struct spool_txn *t)
{
  if (!t)
    return;
  free(t->ops);
  buf_done(&t->b, 0);
  buf_done(&t->jrec, 0);
  free(t);
}

static void txn_add(struct spool_txn *t, struct spool_msg *m, uint8_t kind, uint32_t idx,
                    uint8_t state)
{
  if (t->n == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 64;
    t->ops = util_xrealloc(t->ops, t->cap * sizeof(*t->ops));
  }
  t->ops[t->n] = (struct txn_op){.msg = m, .idx = idx, .kind = kind, .state = state,
                                 .seq = (uint32_t)t->n};
  t->n++;
}

void spool_txn_rcpt(struct spool_txn *t, struct spool_msg *msg, uint32_t idx,
                    enum spool_rcpt_state state)
{
  if (idx >= msg->nrcpt)
    util_panic("spool_txn_rcpt: recipient %u of %u", idx, msg->nrcpt);
  bool was = msg->rcpt_state[idx] == SPOOL_RCPT_PENDING, is = state == SPOOL_RCPT_PENDING;
  msg->rcpt_state[idx] = (uint8_t)state;
  if (was && !is)
    msg->npending--;
  else if (!was && is)
    msg->npending++;
  txn_add(t, msg, OP_RCPT, idx, (uint8_t)state);
}

void spool_txn_retry(struct spool_txn *t, struct spool_msg *msg, uint32_t attempts,
                     uint64_t next_attempt_ms)
{
  msg->attempts = attempts;
  msg->next_attempt_ms = next_attempt_ms;
  txn_add(t, msg, OP_RETRY, 0, 0);
}

void spool_txn_ctx(struct spool_txn *t, struct spool_msg *msg)
{
  txn_add(t, msg, OP_CTX, 0, 0);
}

void spool_txn_remove(struct spool_txn *t, struct spool_msg *msg)
{
  txn_add(t, msg, OP_REMOVE, 0, 0);
}

void spool_txn_spill(struct spool_txn *t, struct spool_msg *msg)
{
  if (msg->jseg)
    txn_add(t, msg, OP_SPILL, 0, 0);
}

static int cmp_op(const void *a, const void *b)
{
  const struct txn_op *x = a, *y = b;
  if (x->msg != y->msg)
    return (uintptr_t)x->msg < (uintptr_t)y->msg ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int spool_txn_commit(struct spool_txn *t)
{
  struct spool *sp = t->sp;
  int err = 0;
  if (t->n == 0)
    return 0;
  if (t->n > 1)
    qsort(t->ops, t->n, sizeof(*t->ops), cmp_op);
  int *fds = util_xmalloc(3 * t->n * sizeof(int));
  size_t nfds = 0;
  bool touched[NBUCKETS] = {0};
  uint32_t *unpin = util_xmalloc(t->n * sizeof(*unpin)), nunpin = 0; /* <= one per message */
  t->jrec.len = t->jrec.off = 0;
  /* 1. Append one STATE record (and an ATTR record if asked) per message. */
  for (size_t i = 0; i < t->n;) {
    struct spool_msg *m = t->ops[i].msg;
    size_t j = i;
    bool state = false, attr = false, remove = false;
    if (m->jseg) {
      /* In the journal: done -> a DONE record; a retry of a message no
       * other thread reads -> its own files; else a JSTATE record. */
      bool spill = false, rem = false;
      for (size_t k = i; k < t->n && t->ops[k].msg == m; k++) {
        spill |= t->ops[k].kind == OP_SPILL || t->ops[k].kind == OP_CTX;
        rem |= t->ops[k].kind == OP_REMOVE;
      }
      if (rem && m->npending == 0) {
        rec_done(&t->jrec, m);
        unpin[nunpin++] = m->jseg;
        for (; i < t->n && t->ops[i].msg == m; i++) {
        }
        continue;
      }
      if (!spill) {
        size_t r = rec_begin(&t->jrec, REC_JSTATE);
        put_u64(&t->jrec, m->id);
        put_u16(&t->jrec, m->node);
        put_u32(&t->jrec, m->attempts);
        put_u64(&t->jrec, m->next_attempt_ms);
        size_t cnt_at = t->jrec.len;
        put_u32(&t->jrec, 0);
        uint32_t cnt = 0;
        for (; i < t->n && t->ops[i].msg == m; i++) {
          if (t->ops[i].kind == OP_RCPT) {
            put_u32(&t->jrec, t->ops[i].idx);
            put_u8(&t->jrec, t->ops[i].state);
            cnt++;
          } else if (t->ops[i].kind == OP_REMOVE) {
            t->ops[i].kind = OP_RCPT; /* recipients still pending: it stays */
          }
        }
        patch_u32(t->jrec.data + cnt_at, cnt);
        rec_end(&t->jrec, r);
        continue;
      }
      uint32_t old = m->jseg;
      int e = jrn_spill(sp, m, &t->b, &fds[nfds], &fds[nfds + 1]);
      if (e < 0) {
        if (!err)
          err = e;
        for (; i < t->n && t->ops[i].msg == m; i++)
          if (t->ops[i].kind == OP_REMOVE)
            t->ops[i].kind = OP_RCPT;
        continue;
      }
      nfds += 2;
      touched[m->bucket] = true;
      rec_done(&t->jrec, m);
      unpin[nunpin++] = old;
    }
    t->b.len = t->b.off = 0;
    size_t r = rec_begin(&t->b, REC_STATE);
    put_u32(&t->b, m->attempts);
    put_u64(&t->b, m->next_attempt_ms);
    size_t cnt_at = t->b.len;
    put_u32(&t->b, 0);
    uint32_t cnt = 0;
    for (; j < t->n && t->ops[j].msg == m; j++) {
      struct txn_op *o = &t->ops[j];
      if (o->kind == OP_RCPT) {
        put_u32(&t->b, o->idx);
        put_u8(&t->b, o->state);
        cnt++;
        state = true;
      } else if (o->kind == OP_RETRY) {
        state = true;
      } else if (o->kind == OP_CTX) {
        attr = true;
      } else {
        remove = true;
      }
    }
    i = j;
    /* Nothing to keep, the files go: the final STATE record is still
     * written (not synced), so a crash between the two unlinks of step 3
     * leaves a metadata file with nothing pending, which recovery removes,
     * instead of one that looks as if its body was lost (bad/). */
    bool gone = remove && m->npending == 0 && !attr;
    if (state) {
      patch_u32(t->b.data + cnt_at, cnt);
      rec_end(&t->b, r);
      int fd = open_meta(sp, m, O_WRONLY);
      int e = fd < 0 ? fd : write_all(fd, t->b.data, t->b.len, m->meta_size);
      if (gone) {
        if (fd >= 0)
          close(fd);
        continue;
      }
      if (e == 0) {
        m->meta_size += (uint32_t)t->b.len;
        fds[nfds++] = fd;
        touched[m->bucket] = true;
      } else {
        if (fd >= 0)
          close(fd);
        if (!err)
          err = e;
      }
    }
    if (attr) {
      int fd = -1;
      int e = append_attr(sp, m, &t->b, &fd);
      if (e == 0) {
        if (nfds < t->n)
          fds[nfds++] = fd;
        else
          close(fd);
      } else if (!err) {
        err = e;
      }
    }
  }
  /* 2. One sync pass. */
  if (sp->p.sync != SPOOL_SYNC_NONE && nfds > 0) {
    if (sp->p.sync_method != SPOOL_SYNCM_FSYNC && sp->p.sync == SPOOL_SYNC_BATCH) {
      int e = syncfs_counted(sp);
      if (e < 0 && !err)
        err = e;
    } else {
      for (size_t i = 0; i < nfds; i++) {
        int e = sync_timed(sp, fds[i], 1);
        if (e < 0 && !err)
          err = e;
      }
    }
  }
  for (size_t i = 0; i < nfds; i++)
    close(fds[i]);
  free(fds);
  (void)touched;
  /* 2b. The journal learns what left it (after the spilled files are durable). */
  jrn_retire(sp, &t->jrec, unpin, nunpin);
  free(unpin);
  /* 3. Removals: body first, then metadata (see recover_one). */
  for (size_t i = 0; i < t->n; i++) {
    struct txn_op *o = &t->ops[i];
    if (o->kind != OP_REMOVE)
      continue;
    char id[SPOOL_ID_LEN + 3];
    id_format(o->msg->id, o->msg->node, id);
    int dfd = sp->bucket_fd[o->msg->bucket];
    if (!o->msg->jseg) {
      unlinkat(dfd, id, 0);
      strcat(id, ".m");
      unlinkat(dfd, id, 0);
    }
    spool_msg_free(o->msg);
    /* Later ops for the same (freed) message cannot exist: sorted by msg. */
    for (size_t j = i + 1; j < t->n && t->ops[j].msg == o->msg; j++)
      t->ops[j].kind = OP_RCPT;
  }
  t->n = 0;
  return err;
}
