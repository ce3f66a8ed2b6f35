/* take.c owns the one ingest path, from a file (or a submission) in
 * memory to a journal entry in the batch being built: reading a claimed
 * pickup file (read_file, jrn_take; jrn_take_pre for one the ring read),
 * take_checked (parse, build the message, scrub secrets, run the ingest
 * hook, send rejects to bad/), signing, and the entry itself (jrn_emit,
 * jrn_flush_deferred). It never writes the journal file, never removes a
 * pickup file, never writes a secret and never logs.
 * Thread: the ingest thread (spool_ingest) only. */
#include "spool_int.h"
#include "spool_test.h"

_Thread_local struct in_hook in_hook;
void (*spool_test_after_stat)(int fd);

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
  to_bad(sp, sp->claim_fd, pn->name, pn->name, why, NULL);
  return 1;
}

/* Read file pn with system calls (no ring, a file bigger than its slot, a
 * type to check): claimed first when renamed in (Pickup_Claim = rename;
 * the exchange claimed it otherwise); a file not renamed in is read under
 * a read lease and claimed under it. Returns 0 (taken), 1 (bad/ or
 * vanished, reported) or 3 (still being written). */
int jrn_take(struct spool *sp, struct pname *pn, struct jtake *out)
{
  char why[512];
  const char *name = pn->name;
  out->msg = NULL;
  if (!pn->inplace && !pn->claimed) {
    if (pn->clres == 0) {
      claim_prep(sp, pn);
      pn->claimed = renameat(sp->claim_fd, name, sp->claim_fd, pn->tomb) == 0;
      pn->clres = pn->claimed ? 0 : -errno;
    }
    if (!pn->claimed)
      return claim_failed(sp, pn);
  }
  const char *at = pn_at(pn); /* where the file is now */
  if (pn->type != DT_REG && pn->type != DT_UNKNOWN) { /* a FIFO would block a read */
    to_bad(sp, sp->claim_fd, at, name, "not a regular file", NULL);
    return 1;
  }
  int fd = -1;
  if (atomic_load_explicit(&sp->noatime, memory_order_relaxed)) {
    fd = openat(sp->claim_fd, at, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOATIME);
    if (fd < 0 && errno == EPERM)
      atomic_store(&sp->noatime, false);
  }
  if (fd < 0 && !atomic_load_explicit(&sp->noatime, memory_order_relaxed))
    fd = openat(sp->claim_fd, at, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
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
    to_bad(sp, sp->claim_fd, at, name, why, NULL);
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
    at = pn_at(pn);
  }
  if (r < 0) {
    close(fd);
    if (r != -EFBIG && r != -EAGAIN && r != -EINVAL)
      snprintf(why, sizeof(why), "read error: %s", strerror(-r));
    to_bad(sp, sp->claim_fd, at, name, why, NULL);
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
void jrn_emit(struct spool *sp, const char *name, const uint8_t *data, const struct pinfo *pi,
              struct spool_msg *m, bool stays, const uint8_t *sig, size_t sn, struct jtake *out)
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
int jrn_take_data(struct spool *sp, const char *name, const char *qname, uint64_t id,
                  const uint8_t *data, size_t len, const struct pinfo *pi, int fd, bool stays,
                  struct jtake *out)
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
  if (take_checked(sp, sp->claim_fd, qname, name, idstr, id, sp->p.node_id, 0, data, len, fd, &m,
                   &slo, &shi) != 0)
    return 1;
  if (sp->signq) { /* signed off this thread when it must be (signq.c) */
    sp->sig.len = 0;
    if (sp->p.on_sign_prep(sp->p.arg, m, data + m->body_off, (size_t)m->body_size, &sp->sig))
      return signq_defer(sp, name, data, len, pi, m, &sp->sig);
    jrn_emit(sp, name, data, pi, m, stays, sp->sig.data, sp->sig.len, out);
    return 0;
  }
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
void jrn_flush_deferred(struct spool *sp)
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

/* jrn_take for a file read through the ring: returns 0 or 1 as jrn_take,
 * or 2 when jrn_take must read it (not read by the ring, possibly bigger
 * than its slot, changed meanwhile, or O_NOATIME refused). The identity
 * kept for recovery is the name, d_ino, the size read and, for small
 * slots, a checksum of the content read (before msg_scrub_secrets
 * changes the buffer), for big ones the mtime from the statx after the
 * read (a checksum of 100 KB costs more than the statx): see "Claiming is
 * atomic" in docs/spool.md. */
int jrn_take_pre(struct spool *sp, struct pname *pn, const struct pre *pr, size_t slot, bool stat,
                 struct jtake *out)
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
  const char *at = pn_at(pn); /* where the file is now */
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
  to_bad(sp, sp->claim_fd, at, name, why, NULL);
  return 1;
}
