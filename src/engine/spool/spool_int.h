/* spool_int.h: what the files of the spool (src/engine/spool/) share and
 * nothing else includes. The spool is one module (public prefix spool_,
 * include/engine/spool.h) cut into files by job:
 *
 *   records.c  the record format (<id>.m and journal records), message
 *              structs, ids, dictionaries on disk (load/save/drop), bodies
 *   journal.c  journal segments: fds, appends, syncs, pins, retirement
 *   iobatch.c  batched file system calls through a private io_uring
 *   spool.c    open/close, bad/
 *   claim.c    the pickup directory: listing, events, read leases,
 *              claiming files (rename to a tomb, or the whole directory by
 *              exchange: Pickup_Claim) and putting them back
 *   take.c     the one ingest path: reading a claimed file, parse, scrub,
 *              hook, signing, its journal entry in the batch
 *   ingest.c   batches, group commit, the threads of spool_start
 *   recover.c  start-up recovery of the journal and spilled messages
 *   txn.c      outcome transactions and spilling to per-message files
 *
 * The functions declared here are internal (hidden visibility); their
 * threads are those of the public function that calls them.
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
#pragma once

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
#include <signal.h>
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

#include "buf.h"

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
  bool inplace; /* not renamed in: read only under a read lease (claim.c) */
  bool busy;    /* inplace, and a writer has it open: taken later */
  bool claimed; /* the engine's own: exchanged, or renamed to its tomb (claim.c) */
  int lfd;      /* inplace: open with a read lease held while the ring reads it, or -1 */
  int clres;    /* the claim's rename: 0 or -errno */
  uint64_t id;  /* the message id it was claimed for (0: not yet) */
  char tomb[SPOOL_ID_LEN + 4]; /* ".c.<id>" (Pickup_Claim = rename) */
};
/* Where a claimed file is now in claim_fd: under its tomb (rename), or
 * under its own name (exchange). */
static inline const char *pn_at(const struct pname *pn)
{
  return pn->claimed && pn->tomb[0] ? pn->tomb : pn->name;
}

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
  struct buf sig;       /* header fields on_sign put in front of the message being taken */
  bool deferring;       /* jrn_take_data defers into dq (a read-ahead group with on_sign_batch) */
  struct dtake *dq;
  size_t ndq, capdq;
  struct spool_sign_job *sjobs;
  struct signq *signq;   /* messages being signed off this thread (signq.c), or NULL */
  struct spool_sub *take_sub; /* the submission jrn_take_data is taking, or NULL */
  size_t round_signing;  /* messages this round handed to signq (count toward batch_max) */
  char *base;
  char *pickup_path;
  int base_fd, queue_fd, bad_fd, ino_fd, wake_fd;
  /* The two directory inodes of the pickup name (claim.c claim_swap):
   * pick_fd is the one named pickup now (producers write there), claim_fd
   * the one at <Spoolbase>/claim/pickup, which only the engine uses: the
   * listing, reads, moves to bad/ and removals are all in claim_fd. An
   * exchange swaps the names and these fds (and their inotify watches). */
  bool exchange;               /* Pickup_Claim = exchange; else claim_fd is pick_fd's dup */
  int pick_fd, claim_fd;
  int pick_wd, claim_wd;       /* their inotify watches (-1: none) */
  int pick_parent_fd;          /* the directory holding the pickup name */
  char *pick_leaf;             /* the pickup name in it */
  int claim_parent_fd;         /* <Spoolbase>/claim (0700) */
  int spare_fd;                /* rename mode: a claimed directory an exchange run left, or -1 */
  _Atomic uint64_t st_swaps;   /* exchanges made */
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
  _Atomic uint64_t st_ingested, st_rejected, st_batches, st_syncs, st_recovered, st_ring_reads,
      st_ctx_loads;
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
  /* In-memory submissions (submit.c): any thread appends under sublock;
   * the ingest thread takes them into its batches. */
  pthread_mutex_t sublock;
  struct spool_sub *sub_head, *sub_tail;
  _Atomic size_t nsub;     /* queued, not yet taken */
  _Atomic size_t sub_live; /* accepted, not yet reported */
  char sub_why[256];       /* ingest thread: why the last submission was rejected */
  uint8_t *seal_key; /* 32 bytes (secmem), or NULL: secrets are not persisted */
  /* Names that arrived by rename (IN_MOVED_TO) since they were last
   * listed: complete by the pickup convention. Any other name is read
   * under a read lease (claim.c lease_group, take.c jrn_take). Ingest thread
   * only. */
  char **moved;      /* open addressing, movedcap slots, NULL = empty */
  size_t nmoved, movedcap;
  bool busy; /* a file of the last listing is still being written: no listing at once */
};
#define MOVED_CAP 16384u    /* slots at first; doubled when half full */
#define MOVED_MAX (1u << 20) /* named limit (slots): beyond half of it, names take the checked path */

/* One submission (submit.c). */
struct spool_sub {
  struct spool_sub *next;
  uint8_t *data;
  size_t len;
  spool_submit_cb done;
  void *arg;
};
/* Take up to max queued submissions (ingest thread); NULL when none. */
struct spool_sub *sub_take(struct spool *sp, size_t max);
/* Report a submission's outcome and free it. */
void sub_finish(struct spool *sp, struct spool_sub *s, int result, const char *id, const char *why);
/* Fail every queued submission (stop, or a layout without the journal). */
void sub_fail_all(struct spool *sp, int result);

/* The message in the ingest hook (on_ingest) of the calling thread: its
 * pickup file, open (or -1) and in memory. Thread-local: only the thread
 * running the hook may see it. */
struct in_hook {
  const struct spool_msg *msg;
  int fd;
  const uint8_t *data;
  size_t len;
};
extern _Thread_local struct in_hook in_hook; /* defined in take.c */

/* A bounds-checked reader over a record payload. */
struct rd {
  const uint8_t *p, *end;
  bool bad;
};


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
  struct stat lst;  /* a file read under a lease (pname.lfd): fstat after the read */
  bool leased;      /* read under a lease: lst is set */
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


/* A message of the current journal batch. */
struct jtake {
  struct spool_msg *msg;
  char *name; /* its pickup name (the file is under it in the claimed directory, removed
               * once the batch is durable); NULL: submitted */
  struct spool_sub *sub; /* a submission (spool_submit), told once durable */
  uint64_t ino, size, stamp; /* what was read there (struct pinfo) */
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

/* A message checked (parsed, hook run) whose signing and journal entry
 * wait for the rest of its read-ahead group (on_sign_batch). */
struct dtake {
  struct spool_msg *msg;
  const char *name;
  const uint8_t *data; /* the file, in the read-ahead arena until the batch is written;
                        * a submission's bytes, freed once its entry is written */
  bool stays;          /* data lives until the batch is written (jrn_emit may refer to it) */
  struct pinfo pi;
  struct jtake *out;
  struct buf hdr;
};


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

/* The record codec: little-endian integers and strings. */
/* ---- small helpers ---- */

static inline void put_u8(struct buf *b, uint8_t v) { buf_append(b, &v, 1); }
static inline void put_u16(struct buf *b, uint16_t v)
{
  uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
  buf_append(b, x, 2);
}
static inline void put_u32(struct buf *b, uint32_t v)
{
  uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  buf_append(b, x, 4);
}
static inline void put_u64(struct buf *b, uint64_t v)
{
  put_u32(b, (uint32_t)v);
  put_u32(b, (uint32_t)(v >> 32));
}
static inline void put_str(struct buf *b, const char *s)
{
  if (!s) {
    put_u32(b, STR_NONE);
    return;
  }
  size_t n = strlen(s);
  put_u32(b, (uint32_t)n);
  buf_append(b, s, n);
}
static inline void patch_u32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static inline bool rd_need(struct rd *r, size_t n)
{
  if (r->bad || (size_t)(r->end - r->p) < n) {
    r->bad = true;
    return false;
  }
  return true;
}
static inline uint32_t get_u32(struct rd *r)
{
  if (!rd_need(r, 4))
    return 0;
  const uint8_t *p = r->p;
  r->p += 4;
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_u64(struct rd *r)
{
  uint64_t lo = get_u32(r);
  return lo | (uint64_t)get_u32(r) << 32;
}
static inline uint16_t get_u16(struct rd *r)
{
  if (!rd_need(r, 2))
    return 0;
  uint16_t v = (uint16_t)(r->p[0] | r->p[1] << 8);
  r->p += 2;
  return v;
}
static inline uint8_t get_u8(struct rd *r)
{
  if (!rd_need(r, 1))
    return 0;
  return *r->p++;
}
/* A string: pointer into the record, length in *n; NULL with *n = 0 for none. */
static inline const char *get_str(struct rd *r, uint32_t *n)
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
static inline bool is_disk_full(int err) { return err == -ENOSPC || err == -EDQUOT; }
static inline void free_const(const char *p) { free((void *)(uintptr_t)p); }

int scan_pickup(struct spool *sp, bool ingest); /* claim.c */
int scan_dir(struct spool *sp, int dfd, int wd, bool ingest); /* claim.c */
bool read_events(struct spool *sp); /* claim.c */
bool wait_work(struct spool *sp, int timeout_ms); /* claim.c */
void drain_fd(int fd); /* claim.c */
int lease_get(int fd); /* claim.c */
bool quiet_for(const struct stat *st); /* claim.c */
void lease_group(struct spool *sp, struct pname *pn, size_t k); /* claim.c */
void lease_group_done(struct spool *sp, struct pname *pn, struct pre *pr, size_t k); /* claim.c */
int claim_dirs_open(struct spool *sp, char *why, size_t whylen); /* claim.c */
int claim_swap(struct spool *sp); /* claim.c */
void claim_prep(struct spool *sp, struct pname *pn); /* claim.c */
void claim_group(struct spool *sp, struct iobatch *ib, struct pname *pn, size_t k); /* claim.c */
int claim_leased(struct spool *sp, struct pname *pn, int fd); /* claim.c */
void unclaim_at(struct spool *sp, const char *tomb, const char *name, bool link); /* claim.c */
void unclaim(struct spool *sp, struct pname *pn); /* claim.c */
int iobatch_rename(struct iobatch *b, int dirfd, const struct pname *names, unsigned n); /* iobatch.c */
int jrn_take(struct spool *sp, struct pname *pn, struct jtake *out); /* take.c */
int jrn_take_pre(struct spool *sp, struct pname *pn, const struct pre *pr, size_t slot, bool stat,
                 struct jtake *out); /* take.c */
int jrn_take_data(struct spool *sp, const char *name, const char *qname, uint64_t id,
                  const uint8_t *data, size_t len, const struct pinfo *pi, int fd, bool stays,
                  struct jtake *out); /* take.c */
void jrn_flush_deferred(struct spool *sp); /* take.c */
int syncfs_counted(struct spool *sp); /* ingest.c */
void wait_drained(struct spool *sp); /* ingest.c */
int iobatch_read(struct iobatch *b, int dirfd, const struct pname *names, unsigned n,
                        int oflags, uint8_t *at, size_t slot, bool stat); /* iobatch.c */
int iobatch_unlink(struct iobatch *b, int dirfd, char *const *names, unsigned n); /* iobatch.c */
struct iobatch *iobatch_get(struct iobatch **bp, bool *tried, unsigned cap, bool reads); /* iobatch.c */
void iobatch_free(struct iobatch *b); /* iobatch.c */
int jfd_of(const struct spool *sp, uint32_t seg); /* journal.c */
int jrn_put(struct spool *sp, const void *p, size_t n, uint32_t npins, uint32_t *seg,
                   uint64_t *off); /* journal.c */
int jrn_putv(struct spool *sp, struct iovec *iov, int cnt, size_t n, uint32_t npins,
                    uint32_t *seg, uint64_t *off); /* journal.c */
int jrn_sync(struct spool *sp, uint32_t seg); /* journal.c */
int sync_timed(struct spool *sp, int fd, int kind); /* journal.c */
void jfd_set(struct spool *sp, uint32_t seg, int fd); /* journal.c */
void jrn_gc(struct spool *sp); /* journal.c */
void jrn_retire(struct spool *sp, struct buf *b, const uint32_t *unpin, uint32_t nunpin); /* journal.c */
void rec_done(struct buf *b, const struct spool_msg *m); /* journal.c */
int append_attr(struct spool *sp, struct spool_msg *msg, struct buf *b, int *fd_out); /* records.c */
int attr_apply(const struct spool *sp, struct spool_msg *m, struct rd *r, bool with_dicts); /* records.c */
int open_meta(struct spool *sp, const struct spool_msg *m, int flags); /* records.c */
int write_all(int fd, const void *p, size_t n, off_t off); /* records.c */
int writev_all(int fd, struct iovec *iov, int cnt, off_t off); /* records.c */
long rec_check(const uint8_t *p, size_t avail, uint8_t *type, struct rd *payload); /* records.c */
size_t rec_begin(struct buf *b, uint8_t type); /* records.c */
struct spool_msg *get_header(struct rd *r, uint64_t *body_off); /* records.c */
struct spool_msg *msg_alloc(const char *sender, size_t slen, uint32_t nrcpt,
                                   const char *const *rcpt, const uint32_t *rlen); /* records.c */
void hot_drop(struct spool_msg *m); /* records.c */
void id_format(uint64_t id, uint16_t node, char *out); /* records.c */
void meta_build(const struct spool *sp, struct buf *b, struct spool_msg *m); /* records.c */
void put_header(struct buf *b, const struct spool_msg *m, uint64_t body_off); /* records.c */
void rec_attr(const struct spool *sp, struct buf *b, const struct spool_msg *m); /* records.c */
void rec_end(struct buf *b, size_t start); /* records.c */
long spool_recover_files(struct spool *sp); /* recover.c */
struct jent *jmap_find(struct jmap *jm, uint64_t id, uint16_t node); /* recover.c */
void bad_name(struct spool *sp, const char *name, const char *id, char *out, size_t n); /* spool.c */
void names_clear(struct spool *sp); /* spool.c */
void report_bad(struct spool *sp, const char *name, const char *reason); /* spool.c */
void to_bad(struct spool *sp, int dfd, const char *qname, const char *name,
                   const char *reason, const char *id); /* spool.c */
void write_why(struct spool *sp, const char *name, const char *reason, const char *id); /* spool.c */
int copy_out(int src, uint64_t off, uint64_t len, int dst); /* txn.c */
int jrn_spill(struct spool *sp, struct spool_msg *m, bool defer, struct buf *b, int *bfd,
              int *mfd); /* txn.c */
uint64_t next_id(struct spool *sp); /* records.c */
const uint8_t *hot_keep(const uint8_t *p, uint64_t n); /* records.c */
/* The same for a message stored as head[0..hn) followed by p[0..n). */
const uint8_t *hot_keep2(const uint8_t *head, size_t hn, const uint8_t *p, uint64_t n);
static inline void jseg_name(uint32_t seg, char out[16]) { snprintf(out, 16, "%08x", seg); }

/* seal.c: secret context values at rest. seal_load reads (or creates) the
 * key file and checks it against <spoolbase>/seal.check: 0 or -errno with err.
 * seal_put appends "u32 len, sealed secrets" to an ATTR payload being
 * built when m has secret entries (nothing otherwise, or without a key).
 * seal_apply opens such a part into m's dictionaries (CTX_F_SECRET):
 * 0, -EKEYREJECTED (does not open with this key for this message),
 * -ENOKEY (no key loaded) or -EBADMSG. */
int seal_load(struct spool *sp, const char *path, char *err, size_t errlen);
void seal_done(struct spool *sp);
void seal_put(const struct spool *sp, struct buf *b, const struct spool_msg *m);
int seal_apply(const struct spool *sp, struct spool_msg *m, const uint8_t *blob, size_t len);
void moved_free(struct spool *sp); /* claim.c */
/* signq.c: messages signed off the ingest thread (on_sign_async).
 * signq_defer keeps a copy of a checked message that must be signed (hdr:
 * what on_sign_prep appended) and returns 4 (taken, not in this batch);
 * signq_launch hands the group being filled to the signers; signq_collect
 * appends the entries of every signed group to bt (returns how many);
 * signq_throttle waits while too much is being signed; signq_busy says
 * whether any is left, signq_wait_all waits until none is being signed. */
void signq_init(struct spool *sp);
void signq_free(struct spool *sp);
int signq_defer(struct spool *sp, const char *name, const uint8_t *data, size_t len,
                const struct pinfo *pi, struct spool_msg *m, const struct buf *hdr);
void signq_launch(struct spool *sp);
size_t signq_collect(struct spool *sp, struct jbatch *bt);
void signq_throttle(struct spool *sp);
bool signq_ready(const struct spool *sp);
bool signq_busy(const struct spool *sp);
void signq_wait_all(struct spool *sp);
/* take.c: the journal entry of a checked message (sig: fields in front of it). */
void jrn_emit(struct spool *sp, const char *name, const uint8_t *data, const struct pinfo *pi,
              struct spool_msg *m, bool stays, const uint8_t *sig, size_t sn, struct jtake *out);
