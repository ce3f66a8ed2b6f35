/* txn.c owns outcome transactions (recipient states, retries, context
 * saves, removals) and spilling a deferred message out of the journal into
 * its own files. It never syncs more than once per commit pass and never
 * logs. Threads: a txn and the messages in it belong to one worker thread;
 * journal records go through journal.c's lock. */
#include "spool_int.h"

/* Copy len bytes at off of src to the start of dst (kernel copy when the
 * file system can). Returns 0 or -errno. */
int copy_out(int src, uint64_t off, uint64_t len, int dst)
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
int jrn_spill(struct spool *sp, struct spool_msg *m, bool defer, struct buf *b, int *bfd,
              int *mfd)
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
    meta_build(sp, b, m);
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
  /* Deferred (defer: spool_txn_spill), it waits for a retry now: its
   * dictionaries leave memory (unless Keep_Message_Dicts_In_Memory), as
   * Momentum drops them when a message moves to the delayed queue; the
   * ATTR record just written holds them. */
  if (dropped || defer)
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
      bool spill = false, rem = false, defer = false;
      for (size_t k = i; k < t->n && t->ops[k].msg == m; k++) {
        spill |= t->ops[k].kind == OP_SPILL || t->ops[k].kind == OP_CTX;
        defer |= t->ops[k].kind == OP_SPILL;
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
      int e = jrn_spill(sp, m, defer, &t->b, &fds[nfds], &fds[nfds + 1]);
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
