/* logs.c owns the log files (mainlog, paniclog, bouncelog, JSON lines),
 * the per-thread record buffers and the writer thread.
 *
 * Must never: take a lock or make a syscall when a record is formatted
 * (workers only append to their own buffers), write a credential (the API
 * takes none), or write remote text unsanitised.
 * Threads: a logs_writer belongs to the thread that created it; logs_open,
 * logs_close on the main thread; logs_reopen, logs_sync from any thread. */
#include "logs.h"
#include "buf.h"
#include "mpsc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum { F_MAIN, F_PANIC, F_BOUNCE, F_JSON, F_COUNT };

#define WRITER_FLUSH_BYTES (64u * 1024u)
/* After draining, the writer waits this long before sleeping, so a busy
 * system hands over many batches per wake-up instead of one each. */
#define WRITER_LINGER_NS (5u * 1000u * 1000u)

/* node first: a popped mpsc_node is its batch */
struct batch {
  struct mpsc_node node;
  struct buf out[F_COUNT];
  struct logs_writer *owner; /* gets the batch back, buffers kept */
  sem_t *sync;               /* a logs_sync marker: post once written */
};

/* A recycled batch keeps its buffers unless one grew past this. */
#define BATCH_KEEP_BYTES (256u * 1024u)

struct logs {
  char *path[F_COUNT];
  int fd[F_COUNT];
  unsigned mode[F_COUNT];
  bool hires;
  struct mpsc q;
  atomic_int armed; /* the writer thread sleeps (or is about to): wake it */
  int efd;
  pthread_t thread;
  atomic_bool stop;
  atomic_bool reopen;
  /* the last reopen's failures ("path: reason; ..."), for logs_reopen_wait:
   * written by the writer thread, read after a logs_sync marker */
  pthread_mutex_t reopen_mu;
  char reopen_err[1024];
  int reopen_rc;
  _Atomic uint64_t dropped;
};

struct logs_writer {
  struct logs *l;
  struct batch *cur;
  struct mpsc spare; /* written batches coming back from the writer */
};

/* ---- the writer thread ---- */

static int open_one(const char *path, unsigned mode)
{
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode);
  return fd < 0 ? -errno : fd;
}

static void reopen_all(struct logs *l)
{
  char err[sizeof l->reopen_err] = "";
  size_t n = 0;
  int rc = 0;
  for (int i = 0; i < F_COUNT; i++) {
    if (l->path[i] == NULL)
      continue;
    int fd = open_one(l->path[i], l->mode[i]);
    if (fd < 0) {
      /* keep writing to the old file rather than losing lines */
      if (rc == 0)
        rc = fd;
      int w = snprintf(err + n, sizeof err - n, "%s%s: %s", n ? "; " : "", l->path[i],
                       strerror(-fd));
      if (w > 0 && (size_t)w < sizeof err - n)
        n += (size_t)w;
      continue;
    }
    close(l->fd[i]);
    l->fd[i] = fd;
  }
  pthread_mutex_lock(&l->reopen_mu);
  memcpy(l->reopen_err, err, sizeof err);
  l->reopen_rc = rc;
  pthread_mutex_unlock(&l->reopen_mu);
}

static void write_all(struct logs *l, int f, struct iovec *iov, int n, size_t total)
{
  while (n > 0 && total > 0) {
    ssize_t w = writev(l->fd[f], iov, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      atomic_fetch_add(&l->dropped, 1);
      return;
    }
    total -= (size_t)w;
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
}

#define ROUND_MAX 256

/* Write up to ROUND_MAX batches: one writev per file. */
static void write_round(struct logs *l, struct batch **b, int nb)
{
  static _Thread_local struct iovec iov[ROUND_MAX];
  for (int f = 0; f < F_COUNT; f++) {
    if (l->fd[f] < 0)
      continue;
    int n = 0;
    size_t total = 0;
    for (int i = 0; i < nb; i++) {
      struct buf *o = &b[i]->out[f];
      if (buf_avail(o) == 0)
        continue;
      iov[n].iov_base = o->data + o->off;
      iov[n].iov_len = buf_avail(o);
      total += iov[n].iov_len;
      n++;
    }
    write_all(l, f, iov, n, total);
  }
  for (int i = 0; i < nb; i++) {
    if (b[i]->sync) {
      sem_post(b[i]->sync);
      continue;
    }
    for (int f = 0; f < F_COUNT; f++) {
      if (b[i]->out[f].cap > BATCH_KEEP_BYTES)
        buf_done(&b[i]->out[f], 0);
      buf_reset(&b[i]->out[f]);
    }
    /* Back to its thread, buffers and all: no allocation, no page
     * faults per batch. The owner never sleeps on this queue. */
    mpsc_push(&b[i]->owner->spare, &b[i]->node);
  }
}

/* Pop and write everything queued; returns the number of batches. */
static int drain(struct logs *l)
{
  struct batch *b[ROUND_MAX];
  int total = 0;
  for (;;) {
    /* A reopen requested before a batch was queued must apply to it: check
     * before every round, not only when the writer wakes. */
    if (atomic_exchange(&l->reopen, false))
      reopen_all(l);
    int nb = 0;
    struct mpsc_node *n;
    while (nb < ROUND_MAX && (n = mpsc_pop(&l->q)) != NULL)
      b[nb++] = ((struct batch *)(void *)(n));
    if (nb == 0)
      return total;
    write_round(l, b, nb);
    total += nb;
  }
}

static void *writer_main(void *arg)
{
  struct logs *l = arg;
  for (;;) {
    if (atomic_exchange(&l->reopen, false))
      reopen_all(l);
    if (drain(l) > 0) {
      struct timespec ts = {0, WRITER_LINGER_NS};
      nanosleep(&ts, NULL);
      continue;
    }
    if (atomic_load(&l->stop))
      break;
    /* Dekker with hand_over: arm, fence, look again. Either we see the
     * batch, or its producer sees armed == 1 and wakes us. */
    atomic_store(&l->armed, 1);
    atomic_thread_fence(memory_order_seq_cst);
    struct mpsc_node *n = mpsc_pop(&l->q);
    if (n != NULL) {
      atomic_store(&l->armed, 0);
      struct batch *b = ((struct batch *)(void *)(n));
      write_round(l, &b, 1);
      continue;
    }
    struct pollfd p = {.fd = l->efd, .events = POLLIN};
    if (poll(&p, 1, 1000) > 0) {
      uint64_t v;
      if (read(l->efd, &v, sizeof v) < 0) {
        /* EAGAIN: someone else drained it; nothing to do */
      }
    }
    atomic_store(&l->armed, 0);
  }
  drain(l);
  return NULL;
}

static void wake(struct logs *l)
{
  uint64_t one = 1;
  if (write(l->efd, &one, sizeof one) < 0) {
    /* the counter cannot overflow in practice; a lost wake is re-covered
     * by the writer's 1 s poll timeout */
  }
}

/* Push, then wake the writer only when it is asleep: under load it is
 * busy (or lingering) and a batch costs no syscall. */
static void hand_over(struct logs *l, struct batch *b)
{
  mpsc_push(&l->q, &b->node);
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&l->armed) && atomic_exchange(&l->armed, 0))
    wake(l);
}

/* ---- public: lifetime ---- */

struct logs *logs_open(const struct logs_config *c, char *err, size_t errlen)
{
  struct logs *l = util_xcalloc(1, sizeof *l);
  pthread_mutex_init(&l->reopen_mu, NULL);
  const char *paths[F_COUNT] = {c->mainlog, c->paniclog, c->bouncelog, c->jsonlog};
  const unsigned modes[F_COUNT] = {c->mainlog_mode, c->paniclog_mode, c->bouncelog_mode,
                                   c->jsonlog_mode};
  for (int i = 0; i < F_COUNT; i++)
    l->mode[i] = modes[i] ? modes[i] : 0644;
  l->hires = c->hires;
  for (int i = 0; i < F_COUNT; i++)
    l->fd[i] = -1;
  for (int i = 0; i < F_COUNT; i++) {
    if (paths[i] == NULL || !*paths[i])
      continue;
    l->path[i] = util_xstrdup(paths[i]);
    l->fd[i] = open_one(paths[i], l->mode[i]);
    if (l->fd[i] < 0) {
      snprintf(err, errlen, "%s: %s", paths[i], strerror(-l->fd[i]));
      l->fd[i] = -1;
      goto fail;
    }
  }
  l->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (l->efd < 0) {
    snprintf(err, errlen, "eventfd: %s", strerror(errno));
    goto fail;
  }
  mpsc_init(&l->q);
  int rc = pthread_create(&l->thread, NULL, writer_main, l);
  if (rc != 0) {
    snprintf(err, errlen, "log writer thread: %s", strerror(rc));
    close(l->efd);
    goto fail;
  }
  return l;
fail:
  for (int i = 0; i < F_COUNT; i++) {
    if (l->fd[i] >= 0)
      close(l->fd[i]);
    free(l->path[i]);
  }
  free(l);
  return NULL;
}

void logs_close(struct logs *l)
{
  if (l == NULL)
    return;
  atomic_store(&l->stop, true);
  wake(l);
  pthread_join(l->thread, NULL);
  for (int i = 0; i < F_COUNT; i++) {
    if (l->fd[i] >= 0)
      close(l->fd[i]);
    free(l->path[i]);
  }
  close(l->efd);
  pthread_mutex_destroy(&l->reopen_mu);
  free(l);
}

void logs_reopen(struct logs *l)
{
  atomic_store(&l->reopen, true);
  wake(l);
}

int logs_reopen_wait(struct logs *l, char *err, size_t errlen)
{
  logs_reopen(l);
  logs_sync(l); /* the writer reopens before it writes this marker */
  pthread_mutex_lock(&l->reopen_mu);
  int rc = l->reopen_rc;
  if (err && errlen)
    snprintf(err, errlen, "%s", l->reopen_err);
  pthread_mutex_unlock(&l->reopen_mu);
  return rc;
}

void logs_sync(struct logs *l)
{
  sem_t done;
  sem_init(&done, 0, 0);
  struct batch b = {.sync = &done};
  hand_over(l, &b);
  wake(l);
  while (sem_wait(&done) < 0 && errno == EINTR)
    ;
  sem_destroy(&done);
}

uint64_t logs_dropped(struct logs *l)
{
  return atomic_load(&l->dropped);
}

/* ---- public: writers ---- */

struct logs_writer *logs_writer_new(struct logs *l)
{
  struct logs_writer *w = util_xcalloc(1, sizeof *w);
  w->l = l;
  mpsc_init(&w->spare);
  return w;
}

static void free_batch(struct batch *b)
{
  for (int f = 0; f < F_COUNT; f++)
    buf_done(&b->out[f], 0);
  free(b);
}

void logs_writer_flush(struct logs_writer *w)
{
  struct batch *b = w->cur;
  if (b == NULL)
    return;
  w->cur = NULL;
  hand_over(w->l, b);
}

void logs_writer_free(struct logs_writer *w)
{
  if (w == NULL)
    return;
  logs_writer_flush(w);
  /* Every batch of ours is written and handed back once this returns. */
  logs_sync(w->l);
  struct mpsc_node *n;
  while ((n = mpsc_pop(&w->spare)) != NULL)
    free_batch(((struct batch *)(void *)(n)));
  free(w);
}

static struct buf *out(struct logs_writer *w, int f)
{
  if (w->l->fd[f] < 0)
    return NULL;
  if (w->cur == NULL) {
    struct mpsc_node *n = mpsc_pop(&w->spare);
    if (n != NULL) {
      w->cur = ((struct batch *)(void *)(n));
    } else {
      w->cur = util_xcalloc(1, sizeof *w->cur);
      w->cur->owner = w;
    }
  }
  struct buf *b = &w->cur->out[f];
  if (b->cap == 0)
    buf_reserve(b, 16384); /* one allocation per batch, not a growth series */
  return b;
}

static void after_record(struct logs_writer *w)
{
  if (w->cur == NULL)
    return;
  for (int f = 0; f < F_COUNT; f++)
    if (buf_avail(&w->cur->out[f]) >= WRITER_FLUSH_BYTES) {
      logs_writer_flush(w);
      return;
    }
}

/* ---- formatting ---- */

size_t logs_sanitise(char *dst, size_t dstlen, const char *src, bool at_ok)
{
  size_t n = 0;
  bool space = false;
  if (src == NULL)
    src = "";
  for (const unsigned char *p = (const unsigned char *)src; *p && n + 1 < dstlen; p++) {
    unsigned char c = *p;
    if (c < 0x20 || c == 0x7f) {
      space = n > 0;
      continue;
    }
    if (space) {
      if (n + 2 >= dstlen)
        break;
      if (dst[n - 1] != ' ')
        dst[n++] = ' ';
      space = false;
    }
    if (c >= 0x80)
      c = '?';
    else if (c == '@' && !at_ok)
      c = '_';
    dst[n++] = (char)c;
  }
  dst[n] = '\0';
  return n;
}

/* Fast integer output: records are formatted on the hot path, and
 * vsnprintf costs more than the rest of a record. */
static void put_u64(struct buf *b, uint64_t v)
{
  char tmp[24];
  int n = 0;
  do {
    tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  buf_append(b, tmp + sizeof tmp - n, (size_t)n);
}

static void put_i(struct buf *b, int v)
{
  if (v < 0) {
    buf_append(b, "-", 1);
    put_u64(b, (uint64_t)0 - (uint64_t)(int64_t)v);
  } else {
    put_u64(b, (uint64_t)v);
  }
}

/* "S.mmm" from milliseconds */
static void put_ms3(struct buf *b, uint64_t ms)
{
  put_u64(b, ms / 1000u);
  char f[4] = {'.', (char)('0' + ms % 1000u / 100u), (char)('0' + ms % 100u / 10u),
               (char)('0' + ms % 10u)};
  buf_append(b, f, 4);
}

static void put_field(struct buf *b, const char *s)
{
  buf_reserve(b, LOGS_FIELD_MAX);
  b->len += logs_sanitise((char *)b->data + b->len, LOGS_FIELD_MAX, s, false);
}

static void put_ts(struct logs_writer *w, struct buf *b, uint64_t now_ms)
{
  if (w->l->hires)
    buf_printf(b, "%016llu", (unsigned long long)(now_ms * 1000u));
  else
    put_u64(b, now_ms / 1000u);
}

static void split_addr(const char *addr, char *local, size_t ll, char *dom, size_t dl)
{
  if (addr == NULL)
    addr = "";
  const char *at = strrchr(addr, '@');
  size_t n = at ? (size_t)(at - addr) : strlen(addr);
  if (n >= ll)
    n = ll - 1;
  memcpy(local, addr, n);
  local[n] = '\0';
  snprintf(dom, dl, "%s", at ? at + 1 : "");
}

/* "ts@msgid@batchid@connid@TYPE" */
static void put_head(struct logs_writer *w, struct buf *b, uint64_t now_ms,
                     const struct logs_msg *m, const char *conn_id, char type)
{
  put_ts(w, b, now_ms);
  buf_append(b, "@", 1);
  put_field(b, m->msgid);
  buf_append(b, "@", 1);
  put_field(b, m->batchid);
  buf_append(b, "@", 1);
  put_field(b, conn_id);
  char t[3] = {'@', type, '@'};
  buf_append(b, t, 3);
}

static void put_secs(struct buf *b, uint64_t now_ms, uint64_t received_ms)
{
  uint64_t d = now_ms > received_ms ? now_ms - received_ms : 0;
  put_ms3(b, d);
}

static void json_str(struct buf *b, const char *key, const char *s, size_t max)
{
  buf_append(b, ",\"", 2);
  buf_append_str(b, key);
  buf_append(b, "\":\"", 3);
  if (max > LOGS_TEXT_MAX + 1)
    max = LOGS_TEXT_MAX + 1;
  char clean[LOGS_TEXT_MAX + 1];
  size_t n = logs_sanitise(clean, max, s, true);
  buf_append_json(b, clean, n, 0);
  buf_append(b, "\"", 1);
}

static void json_event(struct logs_writer *w, uint64_t now_ms, char type,
                       const struct logs_msg *m, const struct logs_attempt *a,
                       const char *src_ip, const char *proto)
{
  struct buf *b = out(w, F_JSON);
  if (b == NULL)
    return;
  buf_append_str(b, "{\"ts\":");
  put_ms3(b, now_ms);
  char t[] = {',', '"', 't', 'y', 'p', 'e', '"', ':', '"', type, '"'};
  buf_append(b, t, sizeof t);
  json_str(b, "msgid", m->msgid, LOGS_FIELD_MAX);
  json_str(b, "batchid", m->batchid, LOGS_FIELD_MAX);
  json_str(b, "rcpt", m->rcpt, LOGS_FIELD_MAX);
  json_str(b, "sender", m->sender, LOGS_FIELD_MAX);
  json_str(b, "binding_group", m->binding_group, LOGS_FIELD_MAX);
  json_str(b, "binding", m->binding, LOGS_FIELD_MAX);
  buf_append_str(b, ",\"size\":");
  put_u64(b, m->size);
  if (a == NULL) {
    json_str(b, "src_ip", src_ip, LOGS_FIELD_MAX);
    json_str(b, "proto", proto, LOGS_FIELD_MAX);
  } else {
    uint64_t d = now_ms > m->received_ms ? now_ms - m->received_ms : 0;
    json_str(b, "conn", a->conn_id, LOGS_FIELD_MAX);
    buf_append_str(b, ",\"retries\":");
    put_u64(b, a->retries);
    buf_append_str(b, ",\"secs\":");
    put_ms3(b, d);
    json_str(b, "remote_ip", a->remote_ip, LOGS_FIELD_MAX);
    if (type != 'D') {
      buf_printf(b, ",\"stage\":%d,\"bytes\":%llu", a->stage, (unsigned long long)a->bytes_sent);
      json_str(b, "text", a->text, LOGS_TEXT_MAX + 1);
    }
    if (type == 'B')
      buf_printf(b, ",\"class\":%d", a->bounce_class);
  }
  buf_append(b, "}\n", 2);
}

/* rcpt_local@rcpt_domain@sender_local@sender_domain@ (R and B records) */
static void put_addrs(struct buf *b, const struct logs_msg *m)
{
  char rl[LOGS_FIELD_MAX], rd[LOGS_FIELD_MAX], sl[LOGS_FIELD_MAX], sd[LOGS_FIELD_MAX];
  split_addr(m->rcpt, rl, sizeof rl, rd, sizeof rd);
  split_addr(m->sender, sl, sizeof sl, sd, sizeof sd);
  put_field(b, rl);
  buf_append(b, "@", 1);
  put_field(b, rd);
  buf_append(b, "@", 1);
  put_field(b, sl);
  buf_append(b, "@", 1);
  put_field(b, sd);
  buf_append(b, "@", 1);
}

void logs_reception(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                    const char *src_ip, const char *proto)
{
  struct buf *b = out(w, F_MAIN);
  if (b) {
    put_head(w, b, now_ms, m, NULL, 'R');
    put_addrs(b, m);
    put_field(b, src_ip ? src_ip : "unknown");
    buf_append(b, "@", 1);
    put_u64(b, m->size);
    buf_append(b, "@", 1);
    put_field(b, proto ? proto : "internal");
    buf_append(b, "@", 1);
    put_field(b, m->binding_group);
    buf_append(b, "@", 1);
    put_field(b, m->binding);
    buf_append(b, "\n", 1);
  }
  json_event(w, now_ms, 'R', m, NULL, src_ip ? src_ip : "unknown", proto ? proto : "internal");
  after_record(w);
}

static const char *rcpt_domain(const struct logs_msg *m)
{
  const char *at = m->rcpt ? strrchr(m->rcpt, '@') : NULL;
  return at ? at + 1 : "";
}

/* D, T and P share a layout; T and P add the stage and the reply text:
 *   ts@msgid@batchid@connid@D@domain@size@group@binding@retries@secs@ip
 *   ts@msgid@batchid@connid@T@domain@bytes@group@binding@stage@retries@secs@ip@text */
static void attempt(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                    const struct logs_attempt *a, char type)
{
  struct buf *b = out(w, F_MAIN);
  if (b) {
    bool failed = type != 'D';
    put_head(w, b, now_ms, m, a->conn_id, type);
    put_field(b, rcpt_domain(m));
    buf_append(b, "@", 1);
    put_u64(b, failed ? a->bytes_sent : m->size);
    buf_append(b, "@", 1);
    put_field(b, m->binding_group);
    buf_append(b, "@", 1);
    put_field(b, m->binding);
    buf_append(b, "@", 1);
    if (failed) {
      put_i(b, a->stage);
      buf_append(b, "@", 1);
    }
    put_u64(b, a->retries);
    buf_append(b, "@", 1);
    put_secs(b, now_ms, m->received_ms);
    buf_append(b, "@", 1);
    put_field(b, a->remote_ip);
    if (failed) {
      char text[LOGS_TEXT_MAX + 1];
      logs_sanitise(text, sizeof text, a->text, true);
      buf_append(b, "@", 1);
      buf_append_str(b, text);
    }
    buf_append(b, "\n", 1);
  }
  json_event(w, now_ms, type, m, a, NULL, NULL);
  after_record(w);
}

void logs_delivery(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                   const struct logs_attempt *a)
{
  attempt(w, now_ms, m, a, 'D');
}

void logs_transient(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                    const struct logs_attempt *a)
{
  attempt(w, now_ms, m, a, 'T');
}

void logs_permanent(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                    const struct logs_attempt *a)
{
  attempt(w, now_ms, m, a, 'P');
}

/* ts@msgid@batchid@connid@B@rcpt_local@rcpt_domain@sender_local@sender_domain@
 * group@binding@stage@class@size@ip@reason */
void logs_bounce(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                 const struct logs_attempt *a)
{
  struct buf *b = out(w, F_BOUNCE);
  if (b) {
    char text[LOGS_TEXT_MAX + 1];
    logs_sanitise(text, sizeof text, a->text, true);
    put_head(w, b, now_ms, m, a->conn_id, 'B');
    put_addrs(b, m);
    put_field(b, m->binding_group);
    buf_append(b, "@", 1);
    put_field(b, m->binding);
    buf_printf(b, "@%d@%d@%llu@", a->stage, a->bounce_class, (unsigned long long)m->size);
    put_field(b, a->remote_ip);
    buf_append(b, "@", 1);
    buf_append_str(b, text);
    buf_append(b, "\n", 1);
  }
  json_event(w, now_ms, 'B', m, a, NULL, NULL);
  after_record(w);
}

void logs_heartbeat(struct logs_writer *w, uint64_t now_ms)
{
  struct buf *b = out(w, F_MAIN);
  if (b) {
    put_ts(w, b, now_ms);
    buf_append_str(b, "@@@@M\n");
  }
  b = out(w, F_BOUNCE);
  if (b) {
    put_ts(w, b, now_ms);
    buf_append_str(b, "@@@@M1\n");
  }
  after_record(w);
}

void logs_panic(struct logs_writer *w, uint64_t now_ms, const char *module, const char *fmt, ...)
{
  struct buf *b = out(w, F_PANIC);
  if (b == NULL)
    return;
  char raw[1024], text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(raw, sizeof raw, fmt, ap);
  va_end(ap);
  logs_sanitise(text, sizeof text, raw, true);
  put_ts(w, b, now_ms);
  buf_append(b, ":", 1);
  put_field(b, module);
  buf_printf(b, ": %s\n", text);
  after_record(w);
}

/* 5.S.D -> bounce class, the first row that matches (d -1: any D). */
static const struct {
  int s, d, cls;
} bounce5[] = {
  {1, 0, 10}, {1, 1, 10}, {1, 2, 21}, {1, 3, 10}, {1, 6, 10}, /* addressing */
  {2, 1, 25}, {2, 2, 22},                                     /* mailbox */
  {4, 0, 21}, {4, 3, 21}, {4, 4, 21}, {4, 7, 24},             /* network, routing */
  {7, 1, 50}, {7, 0, 54}, {7, 2, 54}, {7, 3, 54}, {7, -1, 51}, /* policy */
};

int logs_bounce_class(int code, const char *enh)
{
  int c = 0, s = 0, d = 0;
  if (enh)
    sscanf(enh, "%d.%d.%d", &c, &s, &d);
  if (c == 4 || (c == 0 && code >= 400 && code < 500))
    return 70;
  if (c == 5) {
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bounce5); i++)
      if (bounce5[i].s == s && (bounce5[i].d < 0 || bounce5[i].d == d))
        return bounce5[i].cls;
    return 1;
  }
  if (code == 550 || code == 553)
    return 10;
  if (code == 552)
    return 22;
  return 1;
}
