/* recover.c owns start-up recovery: replaying journal segments, reading
 * spilled messages from the buckets, matching journal entries against
 * pickup/ by identity, and handing what is still pending to on_msg. It
 * never deletes a message it cannot read (damage goes to bad/) and never
 * logs. Thread: the caller of spool_recover, before ingestion starts. */
#include "spool_int.h"

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
      if (attr_apply(sp, m, &r, sp->p.keep_dicts_in_memory) < 0) /* a key mismatch stops spool_open */
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
 * Returns 1 when handed to on_msg, 0 when not queued, or -errno. */
static long recover_one(struct spool *sp, int b, const char *id, bool have_body,
                        bool have_meta, struct buf *mb)
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
    /* A queue file whose metadata is missing or cut before its first
     * record: not a spill (the journal would still hold its entry, see
     * above), so nothing says what it is. Kept in bad/, never deleted. */
    if (have_meta) {
      char dst[SPOOL_NAME_MAX + 1];
      bad_name(sp, mname, id, dst, sizeof(dst));
      renameat(dfd, mname, sp->bad_fd, dst);
    }
    to_bad(sp, dfd, id, id, "queued message without usable metadata", id);
    return 0;
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


static size_t jmap_slot(const struct jmap *jm, uint64_t id, uint16_t node)
{
  uint64_t k = (id ^ ((uint64_t)node << 48)) * 0x9e3779b97f4a7c15ull;
  return (size_t)(k >> 20) & (jm->hcap - 1);
}

struct jent *jmap_find(struct jmap *jm, uint64_t id, uint16_t node)
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
  if (attr_apply(sp, m, &ar, sp->p.keep_dicts_in_memory) < 0) {
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

/* Is entry pn of directory dfd the file journal entry e was read from?
 * Same name, same inode (d_ino, as when it was read through the ring) and
 * size, and the same content checksum (STAMP_CRC) or mtime. For a tomb of
 * an older engine (any_ino) the inode of a checksummed file is not
 * compared: it was the listing's d_ino of the name, which may have been
 * replaced between that listing and its claim. */
static bool jrn_same_file(struct spool *sp, int dfd, const struct jent *e, const struct pname *pn,
                          bool any_ino)
{
  struct stat st;
  if (!(e->stamp & STAMP_CRC)) /* read with fstat: its mtime */
    return fstatat(dfd, pn->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
           (uint64_t)st.st_ino == e->ino && (uint64_t)st.st_size == e->size &&
           (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec == e->stamp;
  if ((!any_ino && pn->ino != e->ino) || e->size > sp->p.max_message_size)
    return false;
  int fd = openat(dfd, pn->name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
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

/* The journal entry whose pickup name is listed in sp->names, or NULL. */
static const struct pname *listed(struct spool *sp, const struct jent *e)
{
  struct pname key = {.name = e->src};
  return sp->nnames > 0 ? bsearch(&key, sp->names, sp->nnames, sizeof(*sp->names), cmp_pname)
                        : NULL;
}

/* List directory dfd (watch wd) sorted by name for listed(). */
static void list_sorted(struct spool *sp, int dfd, int wd)
{
  if (scan_dir(sp, dfd, wd, false) < 0)
    names_clear(sp);
  if (sp->nnames > 1)
    qsort(sp->names, sp->nnames, sizeof(*sp->names), cmp_pname);
}

/* Last step. A file of the claimed directory that is a journal entry's
 * (a crash came between the batch's sync and the removal of its pickup
 * files) is removed: the journal's copy counts. A file still in pickup/
 * under an entry's name and identity (left by an older engine, which
 * removed files by name) is ingested again, and a DONE record retires the
 * journal's copy. What is done is dropped; the rest is handed over.
 * Returns the number handed over or -errno. */
static long jrn_recover_finish(struct spool *sp, struct jmap *jm)
{
  struct buf b = {0};
  /* One listing of each directory instead of a stat per entry: only
   * entries whose file name is still there can be a batch cut before its
   * removals. */
  int cfd = sp->exchange ? sp->claim_fd : sp->spare_fd; /* rename mode: claim_fd is pickup/ */
  if (cfd >= 0) {
    list_sorted(sp, cfd, -1);
    for (size_t i = 0; i < jm->n; i++) {
      struct jent *e = &jm->e[i];
      const struct pname *pn = e->src && *e->src ? listed(sp, e) : NULL; /* queued or done */
      if (pn && jrn_same_file(sp, cfd, e, pn, false))
        (void)unlinkat(cfd, pn->name, 0);
    }
    if (!sp->exchange) /* what an exchange run left goes back to pickup/ */
      for (size_t i = 0; i < sp->nnames; i++)
        if (renameat2(cfd, sp->names[i].name, sp->pick_fd, sp->names[i].name, RENAME_NOREPLACE) < 0) {
          char alt[NAME_MAX + 16];
          snprintf(alt, sizeof alt, "requeued-%.200s-%zu", sp->names[i].name, i);
          (void)renameat2(cfd, sp->names[i].name, sp->pick_fd, alt, RENAME_NOREPLACE);
        }
  }
  list_sorted(sp, sp->pick_fd, sp->pick_wd);
  for (size_t i = 0; i < jm->n; i++) {
    struct jent *e = &jm->e[i];
    if (!e->m)
      continue;
    e->m->npending = 0;
    for (uint32_t k = 0; k < e->m->nrcpt; k++)
      if (e->m->rcpt_state[k] == SPOOL_RCPT_PENDING)
        e->m->npending++;
    const struct pname *pn = listed(sp, e);
    bool in_pickup = pn && jrn_same_file(sp, sp->pick_fd, e, pn, false);
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

/* Tombs (".c.<id>": an older engine claimed a pickup file by renaming
 * it to ".c.<message id>") left by a crash or a failed removal: when the journal has message <id>
 * (queued, or done since) read from this very file, the journal's copy
 * counts and the tomb is removed; anything else (a batch that was not
 * durable yet, or a tomb of an older engine holding a newer file) goes
 * back to pickup/ as "requeued-<id>" to be ingested. Never removes a file
 * that is not a journal entry's. Runs before the listing of pickup/
 * (jrn_recover_finish), which therefore sees the requeued files. */
static void recover_tombs(struct spool *sp, struct jmap *jm)
{
  int fd = openat(sp->pick_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *dir = fd < 0 ? NULL : fdopendir(fd);
  if (!dir) {
    if (fd >= 0)
      close(fd);
    return;
  }
  struct dirent *de;
  while ((de = readdir(dir)) != NULL) {
    uint64_t id;
    uint16_t node;
    if (strncmp(de->d_name, ".c.", 3) || spool_id_parse(de->d_name + 3, &id, &node) < 0)
      continue;
    struct jent *e = jmap_find(jm, id, node);
    struct pname pn = {.name = de->d_name, .ino = (uint64_t)de->d_ino};
    if (e && jrn_same_file(sp, sp->pick_fd, e, &pn, true)) {
      unlinkat(sp->pick_fd, de->d_name, 0);
      continue;
    }
    char alt[64];
    snprintf(alt, sizeof alt, "requeued-%s", de->d_name + 3);
    (void)renameat(sp->pick_fd, de->d_name, sp->pick_fd, alt);
  }
  closedir(dir);
}

long spool_recover(struct spool *sp)
{
  struct jmap jm = {0};
  long count = 0;
  int r = jrn_recover_scan(sp, &jm);
  if (r < 0) {
    jmap_free(&jm);
    return r;
  }
  sp->jrecov = &jm;
  count = spool_recover_files(sp);
  sp->jrecov = NULL;
  if (count >= 0) {
    recover_tombs(sp, &jm);
    long n = jrn_recover_finish(sp, &jm);
    count = n < 0 ? n : count + n;
  }
  jmap_free(&jm);
  if (sp->p.on_batch_end)
    sp->p.on_batch_end(sp->p.arg);
  return count;
}

/* The messages in their own files (queue/XX/). */
long spool_recover_files(struct spool *sp)
{
  long count = 0;
  struct buf mb = {0};
  char **names = NULL;
  size_t cap = 0;
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
        long r = recover_one(sp, b, id, body, meta, &mb);
        if (r < 0)
          err = r;
        else
          count += r;
      }
    }
    for (size_t i = 0; i < n; i++)
      free(names[i]);
    if (err < 0) {
      free(names);
      buf_done(&mb, 0);
      return err;
    }
  }
  free(names);
  buf_done(&mb, 0);
  /* Start new buckets where the clock is; ids continue above the newest. */
  sp->seq = 0;
  return count;
}
