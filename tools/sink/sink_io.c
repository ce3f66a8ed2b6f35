/* sink_io.c owns the sink's one io_uring ring and everything on it: the
 * listening sockets (multishot accept), client connections (multishot recv
 * into a provided-buffer ring, one send in flight per connection), TLS via
 * OpenSSL memory BIOs (so TLS never blocks and never touches the fd), the
 * userspace timer heap (delays, drip), and the signalfd (SIGTERM, SIGINT,
 * SIGUSR1). All ring rules live here (STYLE.md #12); sink_smtp.c never sees
 * the ring. A connection is freed only by conn_reap once no operation is in
 * flight; ring user_data carries the slot and a generation tag so a late
 * completion for a reused slot is recognised. Single thread. */
#include "sink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <openssl/err.h>

#include "clock.h"
#include "panic.h"

enum { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_ENDLESS, OP_CANCEL, OP_SIGNAL };
enum { T_RESUME = 1, T_DRIP, T_ACCEPT };

/* Provided-buffer ring: recv data lands here and is returned at once after
 * parsing, so idle connections hold no receive buffer at all. */
#define BR_BGID 7
#define BR_ENTRIES 1024
#define BR_SIZE 16384
/* Fallback (kernel without provided buffer rings): per-connection buffer,
 * allocated when the first recv is armed. */
#define FALLBACK_RBUF 8192
#define RING_SQ 4096

#define RING_CQ 65536
#define SEND_CHUNK (256u * 1024)

struct listener {
  int fd;
  int tls;
  char name[64];
};

struct timer {
  uint64_t at;
  uint32_t slot, gen;
  uint8_t kind;
};

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static uint8_t *br_mem;
static int use_bufring, use_multishot_recv, use_multishot_accept;
static struct listener *listeners;
static size_t nlisteners;
static struct sink_conn **slots;
static uint32_t nslots, cap_slots;
static uint32_t *free_slots;
static uint32_t nfree;
static uint32_t gen_counter;
static struct timer *timers;
static size_t ntimers, cap_timers;
static struct sink_conn *rearm_head;
static int sig_fd;
static struct signalfd_siginfo sig_info;
static int stop;
static uint8_t endless_buf[65536];

static uint64_t ud(int op, uint32_t slot, uint32_t gen)
{
  return (uint64_t)op << 56 | (uint64_t)(gen & 0xffffff) << 32 | slot;
}

/* The one place a full submission queue is handled: submit and retry. */
static struct io_uring_sqe *get_sqe(void)
{
  struct io_uring_sqe *s = io_uring_get_sqe(&ring);
  while (!s) {
    io_uring_submit(&ring);
    s = io_uring_get_sqe(&ring);
  }
  return s;
}

/* --- timers (binary min-heap; stale entries are skipped by generation) --- */

static void timer_add(uint64_t at, int kind, uint32_t slot, uint32_t gen)
{
  if (ntimers == cap_timers) {
    cap_timers = cap_timers ? cap_timers * 2 : 256;
    timers = util_xrealloc(timers, cap_timers * sizeof(*timers));
  }
  size_t i = ntimers++;
  struct timer t = {at, slot, gen, (uint8_t)kind};
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (timers[p].at <= t.at)
      break;
    timers[i] = timers[p];
    i = p;
  }
  timers[i] = t;
}

static struct timer timer_pop(void)
{
  struct timer top = timers[0];
  struct timer last = timers[--ntimers];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    uint64_t mv = last.at;
    if (l < ntimers && timers[l].at < mv) {
      m = l;
      mv = timers[l].at;
    }
    if (r < ntimers && timers[r].at < mv)
      m = r;
    if (m == i)
      break;
    timers[i] = timers[m];
    i = m;
  }
  if (ntimers)
    timers[i] = last;
  return top;
}

/* --- connections --- */

static struct sink_conn *conn_by(uint32_t slot, uint32_t gen)
{
  if (slot >= nslots)
    return NULL;
  struct sink_conn *c = slots[slot];
  if (!c || (c->gen & 0xffffff) != (gen & 0xffffff))
    return NULL;
  return c;
}

static void arm_recv(struct sink_conn *c)
{
  struct io_uring_sqe *sqe = get_sqe();
  if (use_bufring) {
    if (use_multishot_recv)
      io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    else
      io_uring_prep_recv(sqe, c->fd, NULL, BR_SIZE, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BR_BGID;
  } else {
    if (!c->rbuf)
      c->rbuf = util_xmalloc(FALLBACK_RBUF);
    io_uring_prep_recv(sqe, c->fd, c->rbuf, FALLBACK_RBUF, 0);
  }
  io_uring_sqe_set_data64(sqe, ud(OP_RECV, c->slot, c->gen));
  c->recv_armed = 1;
  c->inflight++;
}

static void submit_send(struct sink_conn *c)
{
  size_t n = buf_avail(&c->sending);
  if (c->bytewise)
    n = 1;
  else if (n > SEND_CHUNK)
    n = SEND_CHUNK;
  struct io_uring_sqe *sqe = get_sqe();
  io_uring_prep_send(sqe, c->fd, buf_head(&c->sending), n, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, ud(OP_SEND, c->slot, c->gen));
  c->send_inflight = 1;
  c->inflight++;
}

/* ---- the TLS BIO ----
 * OpenSSL reads ciphertext straight from the receive buffer being parsed
 * (only what it leaves unread is copied, into held) and writes records
 * straight into wire: no memory BIOs, no copy each way (BIO_s_mem cost
 * the sink ~10% of its CPU per TLS message: two copies and zeroed growth). */

static int sbio_read(BIO *b, char *out, int outl)
{
  struct sink_conn *c = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  size_t n = 0;
  if (buf_avail(&c->held) > 0) {
    n = buf_avail(&c->held) < (size_t)outl ? buf_avail(&c->held) : (size_t)outl;
    memcpy(out, buf_head(&c->held), n);
    buf_consume(&c->held, n);
  } else if (c->tinlen > 0) {
    n = c->tinlen < (size_t)outl ? c->tinlen : (size_t)outl;
    memcpy(out, c->tin, n);
    c->tin += n;
    c->tinlen -= n;
  }
  if (n == 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  return (int)n;
}

static int sbio_write(BIO *b, const char *in, int inl)
{
  struct sink_conn *c = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  buf_append(&c->wire, in, (size_t)inl);
  return inl;
}

static long sbio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int sbio_create(BIO *b)
{
  BIO_set_init(b, 1);
  return 1;
}

static BIO_METHOD *sbio_method(void)
{
  static BIO_METHOD *m;
  if (m == NULL) {
    m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sink-ring");
    if (m == NULL || BIO_meth_set_read(m, sbio_read) != 1 ||
        BIO_meth_set_write(m, sbio_write) != 1 || BIO_meth_set_ctrl(m, sbio_ctrl) != 1 ||
        BIO_meth_set_create(m, sbio_create) != 1)
      util_panic("sink: cannot build the TLS BIO method");
  }
  return m;
}

/* The input buffer is about to go back to the ring: keep what OpenSSL
 * has not read yet. */
static void tls_feed_end(struct sink_conn *c)
{
  if (c->tinlen > 0)
    buf_append(&c->held, c->tin, c->tinlen);
  c->tin = NULL;
  c->tinlen = 0;
}

/* Move queued replies towards the socket: encrypt, then start a send if
 * none is in flight. Closes after the last byte when asked to. */
static void conn_flush(struct sink_conn *c)
{
  if (c->dead)
    return;
  if (c->ssl) {
    if (buf_avail(&c->pt) && SSL_is_init_finished(c->ssl)) {
      int r = SSL_write(c->ssl, buf_head(&c->pt), (int)buf_avail(&c->pt));
      if (r <= 0) {
        buf_reset(&c->pt);
        sink_conn_close(c, 0);
      } else {
        buf_consume(&c->pt, (size_t)r);
      }
    }
  }
  if (c->send_inflight)
    return;
  if (buf_avail(&c->wire) > SINK_MAX_OUTBUF && !c->closing) {
    /* The client does not read its replies: drop it. */
    sink_conn_close(c, 0);
    return;
  }
  if (c->closing && !c->close_after_send)
    return;
  if (buf_avail(&c->sending) == 0) {
    if (buf_avail(&c->wire) == 0) {
      if (c->endless_left && !c->closing) {
        size_t n = c->endless_left < sizeof(endless_buf) ? c->endless_left : sizeof(endless_buf);
        struct io_uring_sqe *sqe = get_sqe();
        io_uring_prep_send(sqe, c->fd, endless_buf, n, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud(OP_ENDLESS, c->slot, c->gen));
        c->send_inflight = 1;
        c->inflight++;
        return;
      }
      if (c->close_after_send && !c->closing) {
        c->close_after_send = 0;
        sink_conn_close(c, 0);
      }
      return;
    }
    struct buf t = c->sending;
    c->sending = c->wire;
    c->wire = t;
  }
  /* Replies go through the ring, not a direct send(): measured on loopback,
   * a non-blocking send() from here cost the sink about 1.8x the CPU per
   * message of a ring send (bench/sink, smtp-blast). */
  submit_send(c);
}

static void conn_free(struct sink_conn *c)
{
  if (c->reset_on_close) {
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  close(c->fd);
  if (!c->rejected)
    g_sink.st.concurrent--;
  if (c->ssl)
    SSL_free(c->ssl); /* frees both BIOs */
  sink_smtp_done(c);
  buf_done(&c->in, 0);
  buf_done(&c->wire, 0);
  buf_done(&c->sending, 0);
  buf_done(&c->pt, 0);
  buf_done(&c->held, 0);
  buf_done(&c->env, 1);
  buf_done(&c->msg, 0);
  free(c->rbuf);
  slots[c->slot] = NULL;
  free_slots[nfree++] = c->slot;
  free(c);
}

/* Free a closing connection once nothing is in flight. */
static void conn_reap(struct sink_conn *c)
{
  if (c->closing && c->inflight == 0 && !c->rearm_pending)
    conn_free(c);
}

static void cancel_op(struct sink_conn *c, int op)
{
  struct io_uring_sqe *sqe = get_sqe();
  io_uring_prep_cancel64(sqe, ud(op, c->slot, c->gen), 0);
  io_uring_sqe_set_data64(sqe, ud(OP_CANCEL, c->slot, c->gen));
}

void sink_conn_close(struct sink_conn *c, int reset)
{
  if (c->closing)
    return;
  c->closing = 1;
  c->close_after_send = 0;
  c->reset_on_close = reset ? 1 : 0;
  c->paused = 0;
  if (c->recv_armed)
    cancel_op(c, OP_RECV);
  if (c->send_inflight)
    cancel_op(c, c->endless_left ? OP_ENDLESS : OP_SEND);
}

void sink_conn_close_after_send(struct sink_conn *c)
{
  c->close_after_send = 1;
}

void sink_conn_reply(struct sink_conn *c, const void *p, size_t n)
{
  /* Checked here, not only when sending: one read of pipelined commands
   * can queue far more than SINK_MAX_OUTBUF (a hostile continuations reply
   * is about 270 KB per 7-byte EHLO line). */
  if (buf_avail(&c->wire) + buf_avail(&c->pt) + n > SINK_MAX_OUTBUF) {
    sink_conn_close(c, 0); /* the client does not read its replies */
    return;
  }
  buf_append(c->tls_active ? &c->pt : &c->wire, p, n);
}

void sink_conn_pause(struct sink_conn *c, uint32_t ms)
{
  c->paused = 1;
  timer_add(clock_mono_ns() + (uint64_t)ms * 1000000u, T_RESUME, c->slot, c->gen);
}

void sink_conn_start_endless(struct sink_conn *c)
{
  c->endless_left = SINK_ENDLESS_BYTES;
  c->close_after_send = 1;
}

int sink_conn_start_tls(struct sink_conn *c)
{
  c->ssl = SSL_new(g_sink.ssl_ctx);
  if (!c->ssl)
    return -ENOMEM;
  BIO *b = BIO_new(sbio_method());
  if (!b) {
    SSL_free(c->ssl);
    c->ssl = NULL;
    return -ENOMEM;
  }
  BIO_set_data(b, c);
  SSL_set_bio(c->ssl, b, b); /* one BIO both ways: SSL takes our one reference */
  SSL_set_accept_state(c->ssl);
  c->tls_active = 1;
  return 0;
}

static void tls_input(struct sink_conn *c, const uint8_t *p, size_t n)
{
  c->tin = p;
  c->tinlen = n;
  if (!SSL_is_init_finished(c->ssl)) {
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
      int e = SSL_get_error(c->ssl, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        c->state = ST_QUIT;
        c->close_after_send = 1; /* the alert, if any, is in wire already */
      }
      tls_feed_end(c);
      return;
    }
    g_sink.st.tls_connections++;
    if (SSL_session_reused(c->ssl))
      g_sink.st.tls_resumed++;
    if (c->state == ST_GREETING)
      sink_smtp_start(c); /* implicit TLS: greet now */
    else
      sink_smtp_tls_ready(c);
  }
  uint8_t pt[16384];
  while (!c->closing && c->state != ST_QUIT) {
    int r = SSL_read(c->ssl, pt, sizeof(pt));
    if (r > 0) {
      sink_smtp_feed(c, pt, (size_t)r);
      /* skip the SSL_read that would only say "want more input" */
      if (c->tinlen == 0 && buf_avail(&c->held) == 0 && SSL_has_pending(c->ssl) != 1)
        break;
      continue;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
      break;
    ERR_clear_error();
    c->state = ST_QUIT;
    sink_conn_close(c, 0);
    break;
  }
  tls_feed_end(c);
}

static void conn_input(struct sink_conn *c, const uint8_t *p, size_t n)
{
  if (c->closing)
    return;
  if (c->tls_garbage) {
    sink_hostile_tls_garbage(c);
    return;
  }
  if (c->ssl)
    tls_input(c, p, n);
  else
    sink_smtp_feed(c, p, n);
}

static void addr_format(const struct sockaddr_storage *ss, char *out, size_t outlen, char *ip,
                        size_t iplen)
{
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
    port = ntohs(s4->sin_port);
    snprintf(out, outlen, "%s:%u", host, port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
    port = ntohs(s6->sin6_port);
    snprintf(out, outlen, "[%s]:%u", host, port);
  } else {
    snprintf(out, outlen, "?");
  }
  if (ip)
    snprintf(ip, iplen, "%s", host);
}

static void new_conn(int fd, const struct listener *l)
{
  struct sink_conn *c = util_xcalloc(1, sizeof(*c));
  if (nfree) {
    c->slot = free_slots[--nfree];
  } else {
    if (nslots == cap_slots) {
      cap_slots = cap_slots ? cap_slots * 2 : 1024;
      slots = util_xrealloc(slots, cap_slots * sizeof(*slots));
      free_slots = util_xrealloc(free_slots, cap_slots * sizeof(*free_slots));
    }
    c->slot = nslots++;
  }
  slots[c->slot] = c;
  c->gen = ++gen_counter;
  c->fd = fd;
  c->tls_listener = l->tls ? 1 : 0;

  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  char pip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN];
  memset(&ss, 0, sizeof(ss));
  getpeername(fd, (struct sockaddr *)&ss, &sl);
  addr_format(&ss, c->peer, sizeof(c->peer), pip, sizeof(pip));
  sl = sizeof(ss);
  memset(&ss, 0, sizeof(ss));
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  addr_format(&ss, c->local, sizeof(c->local), lip, sizeof(lip));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

  struct sink_stats *st = &g_sink.st;
  if (g_sink.o.max_connections && st->concurrent >= g_sink.o.max_connections) {
    st->rejected_connections++;
    c->rejected = 1;
    c->state = ST_QUIT;
    sink_conn_reply(c, "421 4.7.0 Too many connections, try again later\r\n", 49);
    c->close_after_send = 1;
    conn_flush(c);
    return;
  }
  st->connections++;
  if (++st->concurrent > st->max_concurrent)
    st->max_concurrent = st->concurrent;
  c->src_ctr = sink_table_get(&st->per_source, pip);
  c->src_ctr->connections++;
  c->local_ctr = sink_table_get(&st->per_local, lip);
  c->local_ctr->connections++;
  arm_recv(c);
  if (c->tls_listener && g_sink.o.hostile == HOSTILE_TLS_GARBAGE) {
    c->state = ST_GREETING;
    c->tls_garbage = 1; /* the ClientHello gets it */
  } else if (c->tls_listener) {
    c->state = ST_GREETING;
    if (sink_conn_start_tls(c) < 0)
      sink_conn_close(c, 0);
  } else {
    sink_smtp_start(c);
  }
  conn_flush(c);
  conn_reap(c);
}

/* --- listeners and signals --- */

static void arm_accept(size_t i)
{
  struct io_uring_sqe *sqe = get_sqe();
  if (use_multishot_accept)
    io_uring_prep_multishot_accept(sqe, listeners[i].fd, NULL, NULL, SOCK_CLOEXEC);
  else
    io_uring_prep_accept(sqe, listeners[i].fd, NULL, NULL, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, ud(OP_ACCEPT, (uint32_t)i, 0));
}

static void arm_signal(void)
{
  struct io_uring_sqe *sqe = get_sqe();
  io_uring_prep_read(sqe, sig_fd, &sig_info, sizeof(sig_info), 0);
  io_uring_sqe_set_data64(sqe, ud(OP_SIGNAL, 0, 0));
}

static void open_listener(const char *spec, int tls)
{
  char host[256];
  const char *colon = strrchr(spec, ':');
  if (!colon || (size_t)(colon - spec) >= sizeof(host))
    util_fatal("sink: bad listen address '%s' (want ADDR:PORT)", spec);
  const char *h = spec;
  size_t hl = (size_t)(colon - spec);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  memcpy(host, h, hl);
  host[hl] = 0;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
  struct addrinfo *ai;
  int r = getaddrinfo(host, colon + 1, &hints, &ai);
  if (r)
    util_fatal("sink: bad listen address '%s': %s", spec, gai_strerror(r));
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    util_fatal("sink: socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (ai->ai_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
    util_fatal("sink: bind %s: %s", spec, strerror(errno));
  freeaddrinfo(ai);
  if (listen(fd, 65535) < 0)
    util_fatal("sink: listen %s: %s", spec, strerror(errno));
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  listeners = util_xrealloc(listeners, (nlisteners + 1) * sizeof(*listeners));
  struct listener *l = &listeners[nlisteners++];
  l->fd = fd;
  l->tls = tls;
  addr_format(&ss, l->name, sizeof(l->name), NULL, 0);
}

static void write_ready_file(void)
{
  for (size_t i = 0; i < nlisteners; i++)
    fprintf(stderr, "impetus-sink: listening on %s%s\n", listeners[i].name,
            listeners[i].tls ? " (implicit TLS)" : "");
  if (!g_sink.o.ready_file)
    return;
  char tmp[4096];
  snprintf(tmp, sizeof(tmp), "%s.tmp", g_sink.o.ready_file);
  FILE *f = fopen(tmp, "w");
  if (!f)
    util_fatal("sink: %s: %s", tmp, strerror(errno));
  for (size_t i = 0; i < nlisteners; i++)
    fprintf(f, "%s %s\n", listeners[i].tls ? "tls" : "plain", listeners[i].name);
  fprintf(f, "pid %d\n", (int)getpid());
  if (fclose(f) != 0 || rename(tmp, g_sink.o.ready_file) != 0)
    util_fatal("sink: %s: %s", g_sink.o.ready_file, strerror(errno));
}

static void setup_ring(void)
{
  struct io_uring_params p;
  memset(&p, 0, sizeof(p));
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  p.cq_entries = RING_CQ;
  int r = io_uring_queue_init_params(RING_SQ, &ring, &p);
  if (r == -EINVAL) {
    /* Kernels before 6.1 lack DEFER_TASKRUN: plain ring. */
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = RING_CQ;
    r = io_uring_queue_init_params(RING_SQ, &ring, &p);
  }
  if (r < 0)
    util_fatal("sink: io_uring_queue_init: %s", strerror(-r));
  if (g_sink.o.io_fallback)
    return; /* forced: single-shot accept and recv into per-connection buffers */
  use_multishot_accept = 1;
  use_multishot_recv = 1;
  /* Provided buffer rings need 5.19; without them recv uses per-connection buffers. */
  br = mmap(NULL, BR_ENTRIES * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
            MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (br == MAP_FAILED)
    util_fatal("sink: mmap: %s", strerror(errno));
  io_uring_buf_ring_init(br);
  struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)br,
                                 .ring_entries = BR_ENTRIES, .bgid = BR_BGID};
  r = io_uring_register_buf_ring(&ring, &reg, 0);
  if (r < 0) {
    munmap(br, BR_ENTRIES * sizeof(struct io_uring_buf));
    br = NULL;
    use_multishot_recv = 0;
    return;
  }
  use_bufring = 1;
  br_mem = util_xmalloc((size_t)BR_ENTRIES * BR_SIZE);
  for (unsigned i = 0; i < BR_ENTRIES; i++)
    io_uring_buf_ring_add(br, br_mem + (size_t)i * BR_SIZE, BR_SIZE, (unsigned short)i,
                          io_uring_buf_ring_mask(BR_ENTRIES), (int)i);
  io_uring_buf_ring_advance(br, BR_ENTRIES);
}

static void buf_return(unsigned bid)
{
  io_uring_buf_ring_add(br, br_mem + (size_t)bid * BR_SIZE, BR_SIZE, (unsigned short)bid,
                        io_uring_buf_ring_mask(BR_ENTRIES), 0);
  io_uring_buf_ring_advance(br, 1);
}

/* --- completions --- */

/* A delay holds the connection's input and SINK_PAUSED_INBUF bytes of it
 * are waiting: stop receiving, so the client's own socket buffers take the
 * rest (TCP backpressure) instead of the sink buffering it or dropping the
 * client at the limit (a client may pipeline BDAT octets without waiting). */
static int recv_held(const struct sink_conn *c)
{
  return c->paused && buf_avail(&c->in) >= SINK_PAUSED_INBUF;
}

static void on_recv(struct sink_conn *c, int res, unsigned flags)
{
  int more = (flags & IORING_CQE_F_MORE) != 0;
  if (!more) {
    c->recv_armed = 0;
    c->recv_stopping = 0;
    c->inflight--;
  }
  if (res == -ECANCELED && !c->closing) {
    if (!more && !recv_held(c))
      arm_recv(c); /* resumed before the cancellation completed */
  } else if (res > 0) {
    const uint8_t *data = c->rbuf;
    int bid = -1;
    if (flags & IORING_CQE_F_BUFFER) {
      bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
      data = br_mem + (size_t)bid * BR_SIZE;
    }
    conn_input(c, data, (size_t)res);
    if (bid >= 0)
      buf_return((unsigned)bid);
    if (!more && !c->closing && !recv_held(c)) {
      arm_recv(c);
    } else if (more && !c->closing && recv_held(c) && !c->recv_stopping) {
      c->recv_stopping = 1;
      cancel_op(c, OP_RECV);
    }
  } else if (res == -ENOBUFS && !c->closing) {
    /* All provided buffers in use: re-arm after this batch returned them. */
    if (!more && !c->rearm_pending) {
      c->rearm_pending = 1;
      c->rearm_next = rearm_head;
      rearm_head = c;
    }
  } else if (res == -EINVAL && use_multishot_recv && !c->closing) {
    use_multishot_recv = 0; /* kernel without multishot recv (< 6.0) */
    if (!more)
      arm_recv(c);
  } else if (!c->closing) {
    c->state = ST_QUIT;
    sink_conn_close(c, 0); /* EOF or error */
  }
  conn_flush(c);
  conn_reap(c);
}

static void on_send(struct sink_conn *c, int op, int res)
{
  c->inflight--;
  c->send_inflight = 0;
  if (res < 0) {
    c->state = ST_QUIT;
    c->endless_left = 0;
    sink_conn_close(c, 0);
    conn_reap(c);
    return;
  }
  if (op == OP_ENDLESS) {
    c->endless_left -= (uint64_t)res < c->endless_left ? (uint64_t)res : c->endless_left;
  } else {
    buf_consume(&c->sending, (size_t)res);
    if (buf_avail(&c->sending) == 0 && c->sending.cap > 65536)
      buf_done(&c->sending, 0);
    if (c->bytewise == HOSTILE_DRIP && !c->closing &&
        (buf_avail(&c->sending) || buf_avail(&c->wire) || buf_avail(&c->pt))) {
      c->send_inflight = 1; /* held until the drip timer fires */
      c->inflight++;
      timer_add(clock_mono_ns() + (uint64_t)g_sink.o.drip_ms * 1000000u, T_DRIP, c->slot, c->gen);
      return;
    }
  }
  conn_flush(c);
  conn_reap(c);
}

static void on_accept(size_t li, int res, unsigned flags)
{
  if (!(flags & IORING_CQE_F_MORE)) {
    if (res == -EINVAL && use_multishot_accept) {
      use_multishot_accept = 0; /* kernel before 5.19 */
      arm_accept(li);
      return;
    }
    if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM)
      timer_add(clock_mono_ns() + 20000000u, T_ACCEPT, (uint32_t)li, 0);
    else
      arm_accept(li);
  }
  if (res >= 0)
    new_conn(res, &listeners[li]);
}

static void on_signal(int res)
{
  if (res == (int)sizeof(sig_info)) {
    if (sig_info.ssi_signo == SIGUSR1) {
      sink_print_summary(stdout);
      fflush(stdout);
    } else {
      stop = 1;
    }
  }
  if (!stop)
    arm_signal();
}

static void on_cqe(const struct io_uring_cqe *cqe)
{
  uint64_t u = cqe->user_data;
  int op = (int)(u >> 56);
  uint32_t slot = (uint32_t)u, gen = (uint32_t)(u >> 32) & 0xffffff;
  struct sink_conn *c;
  switch (op) {
  case OP_ACCEPT:
    on_accept(slot, cqe->res, cqe->flags);
    break;
  case OP_RECV:
    c = conn_by(slot, gen);
    if (!c)
      util_panic("sink: recv completion for a freed connection (slot %u)", slot);
    on_recv(c, cqe->res, cqe->flags);
    break;
  case OP_SEND:
  case OP_ENDLESS:
    c = conn_by(slot, gen);
    if (!c)
      util_panic("sink: send completion for a freed connection (slot %u)", slot);
    on_send(c, op, cqe->res);
    break;
  case OP_CANCEL:
    break;
  case OP_SIGNAL:
    on_signal(cqe->res);
    break;
  default:
    util_panic("sink: unknown completion op %d", op);
  }
}

static void run_timers(uint64_t now)
{
  while (ntimers && timers[0].at <= now) {
    struct timer t = timer_pop();
    if (t.kind == T_ACCEPT) {
      arm_accept(t.slot);
      continue;
    }
    struct sink_conn *c = conn_by(t.slot, t.gen);
    if (!c)
      continue;
    if (t.kind == T_DRIP) {
      c->inflight--;
      c->send_inflight = 0;
      if (!c->closing)
        conn_flush(c);
    } else if (t.kind == T_RESUME && c->paused && !c->closing) {
      sink_smtp_resume(c);
      /* Receiving stopped while held (recv_held): start again. */
      if (!c->closing && !c->recv_armed && !c->rearm_pending && !recv_held(c))
        arm_recv(c);
      conn_flush(c);
    }
    conn_reap(c);
  }
}

static void run_rearms(void)
{
  while (rearm_head) {
    struct sink_conn *c = rearm_head;
    rearm_head = c->rearm_next;
    c->rearm_pending = 0;
    if (!c->closing)
      arm_recv(c);
    conn_flush(c);
    conn_reap(c);
  }
}

int sink_io_run(char **listen, size_t nlisten, char **tls_listen, size_t ntls)
{
  memset(endless_buf, 'x', sizeof(endless_buf));
  signal(SIGPIPE, SIG_IGN);
  sigset_t ss;
  sigemptyset(&ss);
  sigaddset(&ss, SIGTERM);
  sigaddset(&ss, SIGINT);
  sigaddset(&ss, SIGUSR1);
  if (sigprocmask(SIG_BLOCK, &ss, NULL) < 0)
    util_fatal("sink: sigprocmask: %s", strerror(errno));
  sig_fd = signalfd(-1, &ss, SFD_CLOEXEC);
  if (sig_fd < 0)
    util_fatal("sink: signalfd: %s", strerror(errno));

  for (size_t i = 0; i < nlisten; i++)
    open_listener(listen[i], 0);
  for (size_t i = 0; i < ntls; i++)
    open_listener(tls_listen[i], 1);
  setup_ring();
  for (size_t i = 0; i < nlisteners; i++)
    arm_accept(i);
  arm_signal();
  io_uring_submit(&ring);
  write_ready_file();
  fprintf(stderr, "impetus-sink: io: %s accept, %s recv%s\n",
          use_multishot_accept ? "multishot" : "single-shot",
          use_multishot_recv ? "multishot" : "single-shot",
          use_bufring ? " with provided buffers" : " into per-connection buffers");

  uint64_t stats_ns = (uint64_t)(g_sink.o.stats_interval * 1e9);
  uint64_t next_stats = stats_ns ? clock_mono_ns() + stats_ns : 0;
  bool idle = false; /* the last batched wait timed out with nothing */
  while (!stop) {
    uint64_t now = clock_mono_ns();
    uint64_t wake = UINT64_MAX;
    if (ntimers)
      wake = timers[0].at;
    if (next_stats && next_stats < wake)
      wake = next_stats;
    struct __kernel_timespec ts, *tsp = NULL;
    if (wake != UINT64_MAX) {
      uint64_t d = wake > now ? wake - now : 0;
      ts.tv_sec = (long long)(d / 1000000000u);
      ts.tv_nsec = (long long)(d % 1000000000u);
      tsp = &ts;
    }
    /* Batched wake-ups: with many sessions open, one wake-up per
     * completion (a command arriving) costs the sink two context switches
     * per message with a client that sends one command per round trip
     * (Postfix's smtp-source: 2.1 switches and 43 us of CPU per message, a
     * third of it in the switch). With DEFER_TASKRUN the kernel wakes the
     * task only once `want` completions are pending (as many as sessions
     * are open, at most 64; a send's completion counts too), or at the
     * timeout (500 us: 200 us woke the sink twice as often under
     * smtp-source for no gain in the client's rate);
     * after a timeout with nothing the next wait is for one completion, so
     * idle sessions cost no timer wake-ups. */
    unsigned open = nslots - nfree, want = 1;
    uint64_t bw = (uint64_t)g_sink.o.batch_wait_us * 1000u;
    if (bw && !idle && open >= 8) {
      want = open < 64 ? open : 64;
      uint64_t d = wake > now ? wake - now : 0;
      if (d > bw) {
        ts.tv_sec = 0;
        ts.tv_nsec = (long long)bw;
        tsp = &ts;
      }
    }
    struct io_uring_cqe *cqe;
    int r = io_uring_submit_and_wait_timeout(&ring, &cqe, want, tsp, NULL);
    if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY)
      util_fatal("sink: io_uring wait: %s", strerror(-r));
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring, head, cqe)
    {
      on_cqe(cqe);
      n++;
    }
    io_uring_cq_advance(&ring, n);
    idle = want > 1 && n == 0;
    run_rearms();
    now = clock_mono_ns();
    run_timers(now);
    if (next_stats && now >= next_stats) {
      sink_print_stats_line();
      next_stats = now + stats_ns;
    }
    if (g_sink.jsonl_dirty) {
      fflush(g_sink.jsonl);
      g_sink.jsonl_dirty = 0;
    }
  }

  /* Shut down: close everything without waiting for clients. Exiting the
   * ring first cancels every request, so no buffer is still in use. */
  io_uring_queue_exit(&ring);
  for (uint32_t i = 0; i < nslots; i++) {
    struct sink_conn *c = slots[i];
    if (!c)
      continue;
    c->reset_on_close = 0;
    c->inflight = 0;
    c->rearm_pending = 0;
    conn_free(c);
  }
  for (size_t i = 0; i < nlisteners; i++)
    close(listeners[i].fd);
  free(br_mem);
  if (br)
    munmap(br, BR_ENTRIES * sizeof(struct io_uring_buf));
  free(listeners);
  free(slots);
  free(free_slots);
  free(timers);
  close(sig_fd);
  return 0;
}
