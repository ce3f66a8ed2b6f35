/* spool.c owns the spool directories: claiming pickup files into the queue
 * (rename, so a file is always in exactly one place), the per-message
 * metadata log <id>.m (checksummed records), group commit, start-up
 * recovery, bad/ and the outcome transactions. It never deletes input
 * silently (rejects go to bad/ with a .why), never writes a secret context
 * entry, and never logs: problems reach the engine through on_bad and
 * return codes. Threads: spool_ingest on one ingest thread (or the thread
 * spool_start owns); spool_recover before ingestion; a message and a txn
 * are used by their owner thread only. All functions may block on disk.
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

#include "clock.h"
#include "crc32c.h"
#include "panic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
  /* Names found by the last pickup scan, not yet processed. */
  char **names;
  size_t nnames, inames, capnames;
  struct buf rbuf, mbuf;
  atomic_int kick;
  atomic_int last_err;
  _Atomic uint64_t st_ingested, st_rejected, st_batches, st_syncs, st_recovered;
  atomic_bool stop;
  bool thread_running;
  pthread_t thread;
};

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

static void id_format(uint64_t id, uint16_t node, char *out)
{
  snprintf(out, SPOOL_ID_LEN + 1, "%016" PRIx64 "-%04x", id, (unsigned)node);
}

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

void (*spool_test_after_stat)(int fd);

static bool is_disk_full(int err) { return err == -ENOSPC || err == -EDQUOT; }

/* ---- messages ---- */

static void free_const(const char *p) { free((void *)(uintptr_t)p); }

static void msg_free_strings(struct spool_msg *m)
{
  free_const(m->binding);
  free_const(m->binding_group);
}

void spool_msg_free(struct spool_msg *msg)
{
  if (!msg)
    return;
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
static void meta_build(struct buf *b, struct spool_msg *m)
{
  b->len = b->off = 0;
  buf_append(b, META_MAGIC, 4);
  put_u32(b, META_VERSION);
  size_t r = rec_begin(b, REC_HEADER);
  put_u64(b, m->id);
  put_u16(b, m->node);
  put_u8(b, m->flags);
  put_u8(b, 0);
  put_u64(b, m->created_ms);
  put_u64(b, m->body_off);
  put_u64(b, m->body_size);
  put_str(b, m->sender);
  put_u32(b, m->nrcpt);
  for (uint32_t i = 0; i < m->nrcpt; i++)
    put_str(b, m->rcpt[i]);
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
  int fd = open_meta(sp, msg, O_RDONLY);
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
  char name[SPOOL_ID_LEN + 1];
  id_format(msg->id, msg->node, name);
  int fd = openat(sp->bucket_fd[msg->bucket], name, O_RDONLY | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
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
  sp->p = *p;
  sp->base_fd = sp->pickup_fd = sp->queue_fd = sp->bad_fd = sp->ino_fd = sp->wake_fd = -1;
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
    free(sp->names[i]);
  sp->nnames = sp->inames = 0;
}

void spool_close(struct spool *sp)
{
  if (!sp)
    return;
  spool_stop(sp);
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
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN)
      continue;
    if (name_ignored(e->d_name))
      continue;
    if (sp->nnames == sp->capnames) {
      sp->capnames = sp->capnames ? sp->capnames * 2 : 256;
      sp->names = util_xrealloc(sp->names, sp->capnames * sizeof(char *));
    }
    sp->names[sp->nnames++] = util_xstrdup(e->d_name);
  }
  closedir(d);
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
  atomic_fetch_add_explicit(&sp->st_syncs, 1, memory_order_relaxed);
  return fsync(fd) < 0 ? -errno : 0;
}
#define sync_fd(fd) sync_fd_counted(sp, (fd))

static int syncfs_counted(struct spool *sp)
{
  atomic_fetch_add_explicit(&sp->st_syncs, 1, memory_order_relaxed);
  return syncfs(sp->queue_fd) < 0 ? -errno : 0;
}

void spool_get_stats(const struct spool *sp, struct spool_stats *out)
{
  out->ingested = atomic_load_explicit(&sp->st_ingested, memory_order_relaxed);
  out->rejected = atomic_load_explicit(&sp->st_rejected, memory_order_relaxed);
  out->batches = atomic_load_explicit(&sp->st_batches, memory_order_relaxed);
  out->syncs = atomic_load_explicit(&sp->st_syncs, memory_order_relaxed);
  out->recovered = atomic_load_explicit(&sp->st_recovered, memory_order_relaxed);
}

/* Make the batch durable. */
static int sync_batch(struct spool *sp, struct claimed *c, size_t n, const bool *touched)
{
  if (sp->p.sync == SPOOL_SYNC_NONE || n == 0)
    return 0;
  if (sp->p.sync_method == SPOOL_SYNCM_SYNCFS)
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

/* Read the whole file at fd into sp->rbuf. Returns 0, -EFBIG over the
 * limit, -EAGAIN when it changed size while read, or -errno. */
static int read_file(struct spool *sp, int fd, struct stat *st, char *why, size_t whylen)
{
  if (fstat(fd, st) < 0)
    return -errno;
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
  if (r == -EFBIG || r == -EAGAIN) {
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
}

long spool_ingest(struct spool *sp, int timeout_ms)
{
  if (!wait_work(sp, timeout_ms))
    return 0;
  size_t max = sp->p.batch_max, n = 0;
  struct claimed *c = util_xcalloc(max, sizeof(*c));
  bool touched[NBUCKETS] = {0};
  long err = 0;
  while (n < max && sp->inames < sp->nnames) {
    char *orig = sp->names[sp->inames];
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
  int r = pthread_create(&sp->thread, NULL, ingest_thread, sp);
  if (r)
    return -r;
  sp->thread_running = true;
  return 0;
}

void spool_stop(struct spool *sp)
{
  if (!sp || !sp->thread_running)
    return;
  atomic_store(&sp->stop, true);
  spool_kick(sp);
  pthread_join(sp->thread, NULL);
  sp->thread_running = false;
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
      uint64_t id = get_u64(&r);
      uint16_t node = get_u16(&r);
      uint8_t flags = get_u8(&r);
      get_u8(&r);
      uint64_t created = get_u64(&r), boff = get_u64(&r), bsize = get_u64(&r);
      uint32_t sl;
      const char *s = get_str(&r, &sl);
      uint32_t nr = get_u32(&r);
      if (r.bad || !s || nr == 0 || nr > SPOOL_RCPTS_MAX)
        goto malformed;
      const char **rc = util_xmalloc(nr * sizeof(char *));
      uint32_t *rl = util_xmalloc(nr * sizeof(uint32_t));
      for (uint32_t i = 0; i < nr; i++)
        rc[i] = get_str(&r, &rl[i]);
      if (r.bad) {
        free(rc);
        free(rl);
        goto malformed;
      }
      m = msg_alloc(s, sl, nr, rc, rl);
      free(rc);
      free(rl);
      m->id = id;
      m->node = node;
      m->flags = flags;
      m->created_ms = created;
      m->body_off = boff;
      m->body_size = bsize;
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

long spool_recover(struct spool *sp)
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

/* ---- outcome transactions ---- */

enum { OP_RCPT, OP_RETRY, OP_CTX, OP_REMOVE };

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
  int *fds = util_xmalloc(t->n * sizeof(int));
  size_t nfds = 0;
  bool touched[NBUCKETS] = {0};
  /* 1. Append one STATE record (and an ATTR record if asked) per message. */
  for (size_t i = 0; i < t->n;) {
    struct spool_msg *m = t->ops[i].msg;
    size_t j = i;
    bool state = false, attr = false, remove = false;
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
    if (sp->p.sync_method == SPOOL_SYNCM_SYNCFS && sp->p.sync == SPOOL_SYNC_BATCH) {
      int e = syncfs_counted(sp);
      if (e < 0 && !err)
        err = e;
    } else {
      for (size_t i = 0; i < nfds; i++) {
        atomic_fetch_add_explicit(&sp->st_syncs, 1, memory_order_relaxed);
        if (fdatasync(fds[i]) < 0 && !err)
          err = -errno;
      }
    }
  }
  for (size_t i = 0; i < nfds; i++)
    close(fds[i]);
  free(fds);
  (void)touched;
  /* 3. Removals: body first, then metadata (see recover_one). */
  for (size_t i = 0; i < t->n; i++) {
    struct txn_op *o = &t->ops[i];
    if (o->kind != OP_REMOVE)
      continue;
    char id[SPOOL_ID_LEN + 3];
    id_format(o->msg->id, o->msg->node, id);
    int dfd = sp->bucket_fd[o->msg->bucket];
    unlinkat(dfd, id, 0);
    strcat(id, ".m");
    unlinkat(dfd, id, 0);
    spool_msg_free(o->msg);
    /* Later ops for the same (freed) message cannot exist: sorted by msg. */
    for (size_t j = i + 1; j < t->n && t->ops[j].msg == o->msg; j++)
      t->ops[j].kind = OP_RCPT;
  }
  t->n = 0;
  return err;
}
