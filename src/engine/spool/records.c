/* records.c owns the spool's record format and the message in memory:
 * ids, the checksummed record codec (HEADER, ATTR, STATE and the journal's
 * records; layout in spool_int.h), struct spool_msg allocation, the hot
 * body cache, the dictionaries on disk (spool_load_ctx, spool_save_ctx,
 * spool_drop_ctx) and spool_open_body. It never writes a secret context
 * entry and never logs. Threads: a message's owner thread (load/save/drop,
 * open_body), the ingest thread (building records); next_id only on the
 * ingest or recovery thread. */
#include "spool_int.h"

/* "%016" PRIx64 "-%04x" without snprintf (once per message on the
 * ingest thread, and in the workers' log lines). */
void id_format(uint64_t id, uint16_t node, char *out)
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

uint64_t next_id(struct spool *sp)
{
  uint64_t t = clock_wall_ms() << 22;
  sp->last_id = t > sp->last_id ? t : sp->last_id + 1;
  return sp->last_id;
}

int write_all(int fd, const void *p, size_t n, off_t off)
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
int writev_all(int fd, struct iovec *iov, int cnt, off_t off)
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



/* ---- messages ---- */


static void msg_free_strings(struct spool_msg *m)
{
  free_const(m->binding);
  free_const(m->binding_group);
}

/* The hot body cache's size (spool_msg.body_mem), all spools. */
static _Atomic uint64_t hot_bytes;

const uint8_t *hot_keep(const uint8_t *p, uint64_t n)
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

const uint8_t *hot_keep2(const uint8_t *head, size_t hn, const uint8_t *p, uint64_t n)
{
  if (!hn)
    return hot_keep(p, n);
  uint64_t t = hn + n;
  if (t > SPOOL_HOT_BODY_MAX ||
      atomic_fetch_add_explicit(&hot_bytes, t, memory_order_relaxed) + t > SPOOL_HOT_BODY_BUDGET) {
    if (t <= SPOOL_HOT_BODY_MAX)
      atomic_fetch_sub_explicit(&hot_bytes, t, memory_order_relaxed);
    return NULL;
  }
  uint8_t *c = util_xmalloc((size_t)t);
  memcpy(c, head, hn);
  memcpy(c + hn, p, (size_t)n);
  return c;
}

void hot_drop(struct spool_msg *m)
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
struct spool_msg *msg_alloc(const char *sender, size_t slen, uint32_t nrcpt,
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

size_t rec_begin(struct buf *b, uint8_t type)
{
  size_t start = b->len;
  put_u32(b, 0);
  put_u8(b, type);
  return start;
}

void rec_end(struct buf *b, size_t start)
{
  uint32_t len = (uint32_t)(b->len - start - 5);
  patch_u32(b->data + start, len);
  put_u32(b, crc32c(0, b->data + start, (size_t)len + 5));
}

void rec_attr(const struct spool *sp, struct buf *b, const struct spool_msg *m)
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
  seal_put(sp, b, m); /* the secret entries, sealed (seal.c) */
  rec_end(b, r);
}

/* The whole initial <id>.m: magic, HEADER, ATTR. Sets ctx_off/len, meta_size. */
/* The HEADER fields, shared by <id>.m's HEADER and the journal's JMSG. */
void put_header(struct buf *b, const struct spool_msg *m, uint64_t body_off)
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
struct spool_msg *get_header(struct rd *r, uint64_t *body_off)
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

void meta_build(const struct spool *sp, struct buf *b, struct spool_msg *m)
{
  b->len = b->off = 0;
  buf_append(b, META_MAGIC, 4);
  put_u32(b, META_VERSION);
  size_t r = rec_begin(b, REC_HEADER);
  put_header(b, m, m->body_off);
  rec_end(b, r);
  m->ctx_off = (uint32_t)b->len;
  rec_attr(sp, b, m);
  m->ctx_len = (uint32_t)(b->len - m->ctx_off);
  m->meta_size = (uint32_t)b->len;
}

/* Check the record at p (avail bytes). Returns its total size, 0 when cut
 * short (torn tail), or -EBADMSG on a checksum mismatch. */
long rec_check(const uint8_t *p, size_t avail, uint8_t *type, struct rd *payload)
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
int attr_apply(const struct spool *sp, struct spool_msg *m, struct rd *r, bool with_dicts)
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
  if (r->p < r->end) { /* sealed secret entries (seal.c) */
    uint32_t sl = get_u32(r);
    if (r->bad || !rd_need(r, sl))
      return -EBADMSG;
    const uint8_t *blob = r->p;
    r->p += sl;
    if (with_dicts) {
      int e = seal_apply(sp, m, blob, sl);
      if (e < 0)
        return e == -EBADMSG ? e : -EKEYREJECTED;
    }
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

int open_meta(struct spool *sp, const struct spool_msg *m, int flags)
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
  atomic_fetch_add_explicit(&sp->st_ctx_loads, 1, memory_order_relaxed);
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
      r = attr_apply(sp, msg, &rd, true);
  }
  if (!msg->jseg)
    close(fd);
  if (p != stackbuf) {
    explicit_bzero(p, msg->ctx_len);
    free(p);
  } else {
    explicit_bzero(stackbuf, sizeof stackbuf);
  }
  if (r == -EKEYREJECTED || r == -ENOKEY) {
    /* the dictionaries are back, their sealed secrets are not: the caller
     * fails what needs them transiently, never takes them from elsewhere */
    char id[SPOOL_ID_LEN + 1], why[160];
    snprintf(why, sizeof why, "%s: its secret context values cannot be decrypted (%s)",
             spool_msg_id_str(msg, id),
             r == -ENOKEY ? "no Spool_Secret_Key_File" : "wrong key or damage");
    if (sp->p.on_note)
      sp->p.on_note(sp->p.arg, "", why);
  } else if (r < 0) {
    return r;
  }
  int rr = r;
  /* Restore the secrets that never went to disk. */
  struct ctx_iter it = {0};
  const char *k, *v;
  size_t kl, vl;
  while (ctx_nextn(msg->secrets, &it, &k, &kl, &v, &vl, NULL))
    ctx_setn(k[0] == 'c' ? msg->conn : msg->mess, k + 1, kl - 1, v, vl, CTX_F_SECRET);
  ctx_free(msg->secrets);
  msg->secrets = NULL;
  return rr;
}

/* Append an ATTR record; returns 0 or -errno. fd_out keeps the fd open
 * for a later fsync when not NULL. */
int append_attr(struct spool *sp, struct spool_msg *msg, struct buf *b, int *fd_out)
{
  if (!msg->mess || !msg->conn) {
    int r = spool_load_ctx(sp, msg);
    if (r < 0)
      return r;
  }
  b->len = b->off = 0;
  rec_attr(sp, b, msg);
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
    int r = jrn_spill(sp, msg, false, &b, &bfd, &mfd);
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
