/* conn: owns one outbound TCP socket, its connect deadline, its send queue
 * (two buffers: the one in flight is never touched, new bytes go to the
 * other), its receive path (the ring's provided-buffer pool when present,
 * else a private buffer sized at connect) and its optional TLS session.
 * Never frees itself inside an owner callback: conn_close sets CLOSING,
 * cancels what is in flight and the conn is reaped when the last
 * completion is in and no handler is on the stack. Never logs.
 * Loop-thread only. */
#include "conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "panic.h"
#include "ring.h"
#include "tls.h"

enum cstate { C_CONNECTING, C_OPEN, C_DEAD, C_CLOSING };

/* Queued-but-unsent bytes above which a drained send buffer is freed
 * rather than kept for the next write (idle sessions stay small). */
#define CONN_KEEP_BUF 4096
/* A send buffer that outgrows CONN_KEEP_BUF (a message body, written 4 KB
 * at a time by smtpc) is sized to this at once: doubling it up from 4 KB
 * copied ~124 KB per 100 KB body in reallocs (10 % of a worker's CPU). */
#define CONN_BULK_BUF (256u * 1024u)
#define CONN_TLS_CHUNK 16384
/* Longest a STARTTLS waits for another connection's handshake to the same
 * host and port to bring a session to resume (tls_ctx_wait); then it does
 * a full handshake of its own. */
#define CONN_TLS_WAIT_NS (500u * 1000000u)

struct conn {
  struct ring *r;
  const struct conn_cbs *cbs;
  void *arg;
  int fd;
  enum cstate st;
  unsigned inflight; /* our ops whose final CQE is still due */
  unsigned depth;    /* our completion handlers on the stack */
  bool timed_out, hs, recv_multi;
  uint64_t op_connect, op_recv, op_send;
  struct ring_timer ctimer;
  struct ring_deferred kick; /* the send, deferred to the end of the pass */
  struct sockaddr_storage dst;
  socklen_t dstlen;
  struct buf wq[2];
  unsigned fly; /* wq[fly] is (or would be) in flight */
  /* TLS: plaintext queued during this pass, encrypted at its end with one
   * SSL_write (one record where the plain path makes one send: the body's
   * end and the next pipelined commands). */
  struct buf ptq;
  uint8_t *rbuf;
  unsigned rbuf_size;
  struct tls *tls;
  struct tls_ctx *implicit;
  struct tls_ctx *wait_ctx;     /* non-NULL: waiting to start TLS (waiter queued or woken) */
  struct tls_waiter waiter;
  uint64_t wait_until;          /* end of the wait for a session to resume; 0 = not yet */
  char *tls_host;
  uint16_t tls_port;
};

static void arm_recv(struct conn *c);
/* per loop thread (each worker has its own ring): conn_stats reports the
 * calling thread's counters; shared counters were a data race (TSan) */
static _Thread_local unsigned long stat_recv_armed, stat_recv_bytes, stat_recv_cqes;
static void kick_send(struct conn *c);

static void reap_if_done(struct conn *c) {
  if (c->st != C_CLOSING || c->inflight > 0 || c->depth > 0)
    return;
  ring_defer_cancel(c->r, &c->kick);
  if (c->fd >= 0)
    close(c->fd);
  const struct conn_cbs *cbs = c->cbs;
  void *arg = c->arg;
  tls_free(c->tls);
  buf_done(&c->wq[0], 0);
  buf_done(&c->wq[1], 0);
  buf_done(&c->ptq, 0);
  free(c->rbuf);
  free(c->tls_host);
  free(c);
  if (cbs->closed)
    cbs->closed(arg);
}

static void enter(struct conn *c) { c->depth++; }
static void leave(struct conn *c) {
  c->depth--;
  reap_if_done(c);
}

static void fail(struct conn *c, int err, const char *text) {
  if (c->st != C_OPEN && c->st != C_CONNECTING)
    return;
  c->st = C_DEAD;
  tls_waiter_cancel(&c->waiter);
  c->wait_ctx = NULL;
  ring_timer_cancel(c->r, &c->ctimer);
  if (c->op_connect)
    ring_op_cancel(c->r, c->op_connect);
  if (c->op_recv)
    ring_op_cancel(c->r, c->op_recv);
  char tmp[96];
  if (text == NULL) {
    snprintf(tmp, sizeof tmp, "%s", strerror(-err));
    text = tmp;
  }
  if (c->cbs->error)
    c->cbs->error(c->arg, err, text);
}

/* Encrypt the plaintext queued in this pass into the send queue. */
static void seal(struct conn *c) {
  if (c->tls == NULL || buf_avail(&c->ptq) == 0 || c->st != C_OPEN)
    return;
  ssize_t rc = tls_write(c->tls, buf_head(&c->ptq), buf_avail(&c->ptq));
  buf_reset(&c->ptq);
  if (c->ptq.cap > CONN_KEEP_BUF)
    buf_done(&c->ptq, 0);
  if (rc < 0) {
    fail(c, -EPROTO, tls_error(c->tls));
    return;
  }
  tls_take(c->tls, &c->wq[c->fly ^ 1]);
}

static void on_kick(struct ring_deferred *d) {
  struct conn *c = (struct conn *)((char *)d - offsetof(struct conn, kick));
  enter(c);
  seal(c);
  kick_send(c);
  leave(c);
}

/* Send what is queued once this pass of completions is over, so bytes
 * queued by several callbacks (the body's end, the next pipelined
 * commands) leave in one send. */
static void want_send(struct conn *c) {
  if (c->op_send == 0 && c->st == C_OPEN)
    ring_defer(c->r, &c->kick, on_kick);
}

/* Move TLS output into the send queue and send it. */
static void tls_flush(struct conn *c) {
  if (c->tls != NULL && tls_take(c->tls, &c->wq[c->fly ^ 1]) > 0)
    want_send(c);
}

static void on_wait_over(struct ring_timer *t);

/* Another connection's handshake has a session for us, or ended without
 * one: go on from the loop (we are inside that connection's TLS call). */
static void on_wake(struct tls_waiter *w) {
  struct conn *c = (struct conn *)((char *)w - offsetof(struct conn, waiter));
  ring_timer_set(c->r, &c->ctimer, ring_now(c->r), on_wait_over);
}

static void start_tls(struct conn *c, struct tls_ctx *ctx) {
  char err[200];
  if (c->wait_until == 0)
    c->wait_until = ring_now(c->r) + CONN_TLS_WAIT_NS;
  if (ring_now(c->r) < c->wait_until && tls_ctx_wait(ctx, c->tls_host, c->tls_port, &c->waiter)) {
    c->wait_ctx = ctx;
    c->waiter.wake = on_wake;
    ring_timer_set(c->r, &c->ctimer, c->wait_until, on_wait_over);
    return;
  }
  c->wait_ctx = NULL;
  c->tls = tls_new(ctx, c->tls_host, c->tls_port, err, sizeof err);
  if (c->tls == NULL) {
    fail(c, -EPROTO, err);
    return;
  }
  c->hs = true;
  if (tls_handshake(c->tls) < 0) {
    fail(c, -EPROTO, tls_error(c->tls));
    return;
  }
  tls_flush(c);
}

static void on_wait_over(struct ring_timer *t) {
  struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, ctimer));
  tls_waiter_cancel(&c->waiter); /* the deadline: no wake follows */
  if (c->st != C_OPEN || c->wait_ctx == NULL)
    return;
  enter(c);
  start_tls(c, c->wait_ctx);
  leave(c);
}

/* ------------------------------------------------------------ receive */

static void deliver(struct conn *c, const uint8_t *p, size_t n) {
  if (c->wait_ctx != NULL) {
    /* after the 220 to STARTTLS nothing may come before the handshake:
     * never hand such bytes to the protocol as if they were protected */
    fail(c, -EPROTO, "TLS handshake: server sent data before the handshake");
    return;
  }
  if (c->tls == NULL) {
    c->cbs->data(c->arg, p, n);
    return;
  }
  tls_feed(c->tls, p, n);
  if (c->hs) {
    int rc = tls_handshake(c->tls);
    tls_flush(c); /* a failing handshake may still have an alert to send */
    if (rc < 0) {
      tls_feed_end(c->tls);
      fail(c, -EPROTO, tls_error(c->tls));
      return;
    }
    if (rc == 0) {
      tls_feed_end(c->tls);
      return;
    }
    c->hs = false;
    if (c->cbs->tls_ready)
      c->cbs->tls_ready(c->arg);
  }
  uint8_t plain[CONN_TLS_CHUNK];
  while (c->st == C_OPEN) {
    ssize_t got = tls_read(c->tls, plain, sizeof plain);
    if (got == 0)
      break;
    if (got < 0) {
      tls_feed_end(c->tls);
      fail(c, (int)got, got == -EPIPE ? "TLS connection closed by peer" : tls_error(c->tls));
      return;
    }
    c->cbs->data(c->arg, plain, (size_t)got);
    /* one SSL_read less per receive: the call that would only say
     * "want more input" (measurable per message in OpenSSL 3.0) */
    if (c->tls == NULL || !tls_input_left(c->tls))
      break;
  }
  if (c->tls != NULL)
    tls_feed_end(c->tls); /* p belongs to the ring: copy what OpenSSL left */
  if (c->st == C_OPEN)
    tls_flush(c); /* post-handshake messages, key updates */
}

static void on_recv(void *owner, int res, unsigned flags) {
  struct conn *c = owner;
  enter(c);
  if (!(flags & IORING_CQE_F_MORE)) {
    c->op_recv = 0;
    c->inflight--;
    stat_recv_armed--;
  }
  stat_recv_cqes++;
  if (res > 0)
    stat_recv_bytes += (unsigned long)res;
  const uint8_t *p = c->rbuf;
  int bid = -1;
  if (flags & IORING_CQE_F_BUFFER) {
    bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
    p = ring_pool_buf(c->r, (unsigned)bid);
  }
  if (c->st == C_OPEN) {
    if (res > 0)
      deliver(c, p, (size_t)res);
    else if (res == 0)
      fail(c, -EPIPE, "connection closed by peer");
    else if (res != -ENOBUFS) /* pool momentarily empty: just re-arm */
      fail(c, res, NULL);
  }
  if (bid >= 0)
    ring_pool_put(c->r, (unsigned)bid);
  if (c->st == C_OPEN && c->op_recv == 0)
    arm_recv(c);
  leave(c);
}

static void arm_recv(struct conn *c) {
  struct io_uring_sqe *sqe = ring_sqe(c->r);
  unsigned feat = ring_features(c->r);
  if (c->rbuf == NULL && (feat & RING_F_BUF_RING)) {
    if (feat & RING_F_RECV_MULTISHOT)
      io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    else
      io_uring_prep_recv(sqe, c->fd, NULL, ring_pool_size(c->r), 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RING_POOL_GROUP;
  } else {
    io_uring_prep_recv(sqe, c->fd, c->rbuf, c->rbuf_size, 0);
  }
  c->op_recv = ring_arm(c->r, sqe, on_recv, c);
  c->inflight++;
  stat_recv_armed++;
}

void conn_stats(unsigned long *recv_armed, unsigned long *recv_cqes, unsigned long *recv_bytes) {
  *recv_armed = stat_recv_armed;
  *recv_cqes = stat_recv_cqes;
  *recv_bytes = stat_recv_bytes;
}

/* ------------------------------------------------------------ send */

static void on_send(void *owner, int res, unsigned flags) {
  struct conn *c = owner;
  (void)flags;
  enter(c);
  c->op_send = 0;
  c->inflight--;
  if (c->st == C_OPEN) {
    if (res < 0) {
      fail(c, res, NULL);
    } else {
      buf_consume(&c->wq[c->fly], (size_t)res);
      if (buf_avail(&c->wq[0]) + buf_avail(&c->wq[1]) == 0) {
        for (int i = 0; i < 2; i++)
          if (c->wq[i].cap > CONN_KEEP_BUF)
            buf_done(&c->wq[i], 0);
        if (c->cbs->sent)
          c->cbs->sent(c->arg);
      } else {
        kick_send(c);
      }
    }
  }
  leave(c);
}

static void kick_send(struct conn *c) {
  if (c->op_send != 0 || c->st != C_OPEN)
    return;
  if (buf_avail(&c->wq[c->fly]) == 0)
    c->fly ^= 1;
  struct buf *b = &c->wq[c->fly];
  if (buf_avail(b) == 0)
    return;
  struct io_uring_sqe *sqe = ring_sqe(c->r);
  io_uring_prep_send(sqe, c->fd, buf_head(b), buf_avail(b), MSG_NOSIGNAL);
  c->op_send = ring_arm(c->r, sqe, on_send, c);
  c->inflight++;
}

int conn_send(struct conn *c, const void *p, size_t n) {
  if (c->st != C_OPEN && c->st != C_CONNECTING)
    return -EPIPE;
  if ((c->implicit != NULL && c->tls == NULL) || c->wait_ctx != NULL)
    return -EAGAIN; /* implicit TLS, or STARTTLS waiting: nothing before the handshake */
  if (c->tls != NULL) {
    if (c->hs)
      return -EAGAIN;
    buf_append(&c->ptq, p, n); /* sealed at the end of the pass (seal) */
    ring_defer(c->r, &c->kick, on_kick);
    return 0;
  }
  struct buf *b = &c->wq[c->fly ^ 1];
  if (b->cap - b->len < n && b->len + n > CONN_KEEP_BUF && b->cap < CONN_BULK_BUF)
    buf_reserve(b, CONN_BULK_BUF - b->len > n ? CONN_BULK_BUF - b->len : n);
  buf_append(b, p, n);
  want_send(c);
  return 0;
}

size_t conn_pending(const struct conn *c) {
  return buf_avail(&c->wq[0]) + buf_avail(&c->wq[1]) + buf_avail(&c->ptq);
}

/* ------------------------------------------------------------ connect */

static void on_connect(void *owner, int res, unsigned flags) {
  struct conn *c = owner;
  (void)flags;
  enter(c);
  c->op_connect = 0;
  c->inflight--;
  ring_timer_cancel(c->r, &c->ctimer);
  if (c->st == C_CONNECTING) {
    if (res == -ECANCELED && c->timed_out) {
      fail(c, -ETIMEDOUT, "connect timed out");
    } else if (res < 0) {
      fail(c, res, NULL);
    } else {
      c->st = C_OPEN;
      arm_recv(c);
      if (c->cbs->connected)
        c->cbs->connected(c->arg);
      if (c->st == C_OPEN && c->implicit != NULL)
        start_tls(c, c->implicit);
      if (c->st == C_OPEN)
        kick_send(c);
    }
  }
  leave(c);
}

static void on_connect_timeout(struct ring_timer *t) {
  struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, ctimer));
  c->timed_out = true;
  if (c->op_connect)
    ring_op_cancel(c->r, c->op_connect);
}

struct conn *conn_new(struct ring *r, const struct conn_params *p, const struct conn_cbs *cbs,
                      void *arg, int *err) {
  if (p->dstlen > sizeof(struct sockaddr_storage) || cbs->data == NULL) {
    *err = -EINVAL;
    return NULL;
  }
  int fd = socket(p->dst->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = -errno;
    return NULL;
  }
  int one = 1;
  /* Commands are written in one batch per round trip; Nagle would only
   * delay the last segment of each batch. */
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (p->src != NULL) {
    /* Let connect() pick the source port: many bindings on one address
     * share the ephemeral range per destination instead of per address. */
    (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, p->src, p->srclen) < 0) {
      *err = -errno;
      close(fd);
      return NULL;
    }
  }
  struct conn *c = util_xcalloc(1, sizeof *c);
  c->r = r;
  c->cbs = cbs;
  c->arg = arg;
  c->fd = fd;
  c->st = C_CONNECTING;
  memcpy(&c->dst, p->dst, p->dstlen);
  c->dstlen = p->dstlen;
  if (!(ring_features(r) & RING_F_BUF_RING)) {
    c->rbuf_size = p->rbuf_size ? p->rbuf_size : 4096;
    c->rbuf = util_xmalloc(c->rbuf_size);
  }
  c->implicit = p->tls;
  if (p->tls_host != NULL)
    c->tls_host = util_xstrdup(p->tls_host);
  c->tls_port = p->tls_port;
  struct io_uring_sqe *sqe = ring_sqe(r);
  io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->dst, c->dstlen);
  c->op_connect = ring_arm(r, sqe, on_connect, c);
  c->inflight++;
  if (p->connect_timeout_ns)
    ring_timer_set(r, &c->ctimer, clock_mono_ns() + p->connect_timeout_ns, on_connect_timeout);
  return c;
}

int conn_starttls(struct conn *c, struct tls_ctx *ctx, const char *host, uint16_t port) {
  if (c->st != C_OPEN)
    return -EPIPE;
  if (c->tls != NULL || c->wait_ctx != NULL)
    return -EALREADY;
  free(c->tls_host);
  c->tls_host = host ? util_xstrdup(host) : NULL;
  c->tls_port = port;
  start_tls(c, ctx);
  return c->st == C_OPEN ? 0 : -EPROTO;
}

static void on_nop(void *owner, int res, unsigned flags) {
  struct conn *c = owner;
  (void)res;
  (void)flags;
  enter(c);
  c->inflight--;
  leave(c);
}

void conn_close(struct conn *c) {
  if (c == NULL || c->st == C_CLOSING)
    return;
  bool was_open = c->st == C_OPEN;
  c->st = C_CLOSING;
  tls_waiter_cancel(&c->waiter);
  c->wait_ctx = NULL;
  ring_timer_cancel(c->r, &c->ctimer);
  if (c->op_connect)
    ring_op_cancel(c->r, c->op_connect);
  if (c->op_recv)
    ring_op_cancel(c->r, c->op_recv);
  if (c->op_send)
    ring_op_cancel(c->r, c->op_send);
  struct io_uring_sqe *sqe;
  if (was_open && c->tls != NULL && !c->hs && c->op_send == 0) {
    /* Best-effort close_notify: one send, never waited for beyond its
     * own completion (the socket buffer is empty, so it completes). */
    buf_reset(&c->wq[0]);
    tls_shutdown(c->tls);
    if (tls_take(c->tls, &c->wq[0]) > 0) {
      sqe = ring_sqe(c->r);
      io_uring_prep_send(sqe, c->fd, buf_head(&c->wq[0]), buf_avail(&c->wq[0]),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
      c->op_send = ring_arm(c->r, sqe, on_send, c);
      c->inflight++;
    }
  }
  if (c->inflight == 0 && c->depth == 0) {
    /* Nothing will complete: make the loop call us back so `closed`
     * never runs inside the caller's frame. */
    sqe = ring_sqe(c->r);
    io_uring_prep_nop(sqe);
    ring_arm(c->r, sqe, on_nop, c);
    c->inflight++;
  }
}

bool conn_is_tls(const struct conn *c) { return c->tls != NULL || c->wait_ctx != NULL; }
bool conn_tls_resumed(const struct conn *c) { return c->tls != NULL && tls_resumed(c->tls); }

const char *conn_tls_describe(const struct conn *c, char *out, size_t outlen) {
  if (c->tls == NULL || c->hs) {
    if (outlen)
      out[0] = 0;
    return out;
  }
  return tls_describe(c->tls, out, outlen);
}

int conn_fd(const struct conn *c) { return c->fd; }

size_t conn_mem(const struct conn *c) {
  return sizeof *c + c->wq[0].cap + c->wq[1].cap + c->ptq.cap + (c->rbuf ? c->rbuf_size : 0);
}
