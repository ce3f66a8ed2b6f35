/* conn + tls against local listeners on 127.0.0.0/8: echo (small and 1 MB,
 * with and without the provided-buffer pool), connection refused, source
 * address binding, connect timeout, TLS verify modes no/ca/host with
 * matching and mismatching certificates, STARTTLS, handshake garbage,
 * session resumption (also a burst of STARTTLS connections sharing one
 * full handshake). Servers are threads of this process (plain sockets,
 * OpenSSL blocking I/O); certificates are made with the openssl CLI. */
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <poll.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "clock.h"
#include "conn.h"
#include "ring.h"
#include "tls.h"

static char certdir[64];

/* ------------------------------------------------------------ server */

enum smode { S_ECHO, S_TLS_ECHO, S_STARTTLS_ECHO, S_GARBAGE, S_PEER, S_STARTTLS_PAR, S_STARTTLS_HANG };

struct server {
  int lfd;
  uint16_t port;
  enum smode mode;
  int nconn;
  pthread_t th;
  char peer[64]; /* S_PEER: address the client came from */
};

static int listen_on(const char *ip, int backlog, uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET};
  inet_pton(AF_INET, ip, &a.sin_addr);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, backlog), 0);
  socklen_t l = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &l);
  *port = ntohs(a.sin_port);
  return fd;
}

static SSL_CTX *server_ctx(void) {
  SSL_CTX *s = SSL_CTX_new(TLS_server_method());
  char p[128];
  snprintf(p, sizeof p, "%s/srv.crt", certdir);
  SSL_CTX_use_certificate_chain_file(s, p);
  snprintf(p, sizeof p, "%s/srv.key", certdir);
  SSL_CTX_use_PrivateKey_file(s, p, SSL_FILETYPE_PEM);
  return s;
}

static void tls_echo(SSL_CTX *ctx, int fd) {
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  if (SSL_accept(ssl) == 1) {
    char b[4096];
    int n;
    while ((n = SSL_read(ssl, b, sizeof b)) > 0)
      if (SSL_write(ssl, b, n) != n)
        break;
  }
  ERR_clear_error();
  SSL_free(ssl);
}

struct par_conn {
  SSL_CTX *ctx;
  int fd;
  pthread_t th;
};

static void *par_main(void *arg) {
  struct par_conn *pc = arg;
  if (write(pc->fd, "220 go ahead\r\n", 14) == 14)
    tls_echo(pc->ctx, pc->fd);
  close(pc->fd);
  return NULL;
}

static void *server_main(void *arg) {
  struct server *s = arg;
  SSL_CTX *ctx = (s->mode == S_TLS_ECHO || s->mode == S_STARTTLS_ECHO ||
                  s->mode == S_STARTTLS_PAR) ? server_ctx() : NULL;
  if (s->mode == S_STARTTLS_PAR) { /* STARTTLS echo, every connection at once */
    struct par_conn pc[8];
    int n = 0;
    while (n < s->nconn && n < 8) {
      pc[n].ctx = ctx;
      pc[n].fd = accept(s->lfd, NULL, NULL);
      if (pc[n].fd < 0)
        break;
      pthread_create(&pc[n].th, NULL, par_main, &pc[n]);
      n++;
    }
    for (int i = 0; i < n; i++)
      pthread_join(pc[i].th, NULL);
    SSL_CTX_free(ctx);
    return NULL;
  }
  for (int i = 0; i < s->nconn; i++) {
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    int fd = accept(s->lfd, (struct sockaddr *)&peer, &pl);
    if (fd < 0)
      break;
    char b[65536];
    ssize_t n;
    switch (s->mode) {
    case S_ECHO:
      while ((n = read(fd, b, sizeof b)) > 0)
        if (write(fd, b, (size_t)n) != n)
          break;
      break;
    case S_PEER: {
      char tmp[64];
      inet_ntop(AF_INET, &peer.sin_addr, tmp, sizeof tmp);
      memcpy(s->peer + 1, tmp + 1, sizeof tmp - 1);
      __atomic_store_n(&s->peer[0], tmp[0], __ATOMIC_RELEASE);
      while (read(fd, b, sizeof b) > 0) {
      }
      break;
    }
    case S_TLS_ECHO:
      tls_echo(ctx, fd);
      break;
    case S_STARTTLS_ECHO:
      if (write(fd, "220 go ahead\r\n", 14) == 14)
        tls_echo(ctx, fd);
      break;
    case S_GARBAGE:
      /* What a confused plaintext server says to a ClientHello. */
      (void)!read(fd, b, sizeof b);
      (void)!write(fd, "500 5.5.1 what is this\r\n500 5.5.1 and this\r\n", 44);
      break;
    case S_STARTTLS_PAR: /* handled above */
      break;
    case S_STARTTLS_HANG: /* says go ahead, then never answers the ClientHello */
      if (write(fd, "220 go ahead\r\n", 14) == 14)
        while (read(fd, b, sizeof b) > 0) {
        }
      break;
    }
    close(fd);
  }
  SSL_CTX_free(ctx);
  return NULL;
}

static void server_start(struct server *s, enum smode mode, int nconn, const char *ip) {
  memset(s, 0, sizeof *s);
  s->mode = mode;
  s->nconn = nconn;
  s->lfd = listen_on(ip ? ip : "127.0.0.1", 16, &s->port);
  pthread_create(&s->th, NULL, server_main, s);
}

static void server_stop(struct server *s) {
  shutdown(s->lfd, SHUT_RDWR);
  pthread_join(s->th, NULL);
  close(s->lfd);
}

/* ------------------------------------------------------------ client */

struct client {
  struct ring *r;
  struct conn *c;
  bool connected, tls_ready, closed, resumed, starttls;
  int err;
  char errtext[256];
  unsigned char *want;
  size_t wantlen, got;
  unsigned char *rx;
  bool mismatch;
  struct tls_ctx *starttls_ctx;
  uint16_t starttls_port; /* the session cache key's port; 0 = 25 */
  bool sent_payload;
};

static void send_payload(struct client *k) {
  k->sent_payload = true;
  assert_int_equal(conn_send(k->c, k->want, k->wantlen), 0);
}

static void cb_connected(void *arg) {
  struct client *k = arg;
  k->connected = true;
  /* implicit TLS: conn_send refuses (-EAGAIN) until tls_ready */
  if (k->want && !k->starttls && conn_send(k->c, k->want, k->wantlen) == 0)
    k->sent_payload = true;
}
static void cb_tls_ready(void *arg) {
  struct client *k = arg;
  k->tls_ready = true;
  k->resumed = conn_tls_resumed(k->c);
  if (k->want && !k->sent_payload)
    send_payload(k);
}
static void cb_data(void *arg, const uint8_t *p, size_t n) {
  struct client *k = arg;
  if (k->starttls && !conn_is_tls(k->c)) {
    assert_int_equal(conn_starttls(k->c, k->starttls_ctx, "localhost",
                                   k->starttls_port ? k->starttls_port : 25), 0);
    return;
  }
  if (k->got + n > k->wantlen) {
    k->mismatch = true;
    conn_close(k->c);
    return;
  }
  memcpy(k->rx + k->got, p, n);
  k->got += n;
  if (k->got == k->wantlen) {
    if (memcmp(k->rx, k->want, k->wantlen) != 0)
      k->mismatch = true;
    conn_close(k->c); /* inside our own callback: must be safe */
  }
}
static void cb_error(void *arg, int err, const char *text) {
  struct client *k = arg;
  k->err = err;
  snprintf(k->errtext, sizeof k->errtext, "%s", text);
  conn_close(k->c);
}
static void cb_closed(void *arg) {
  struct client *k = arg;
  k->closed = true;
  k->c = NULL;
}
static const struct conn_cbs cbs = {
  .connected = cb_connected, .tls_ready = cb_tls_ready, .data = cb_data,
  .error = cb_error, .closed = cb_closed,
};

static struct ring *mk(bool no_optional) {
  int err = 0;
  struct ring_params p = {.no_optional = no_optional};
  struct ring *r = ring_new(&p, &err);
  if (r == NULL) {
    printf("SKIP: io_uring unavailable: %s\n", strerror(-err));
    exit(77);
  }
  return r;
}

static void run_until_closed(struct client *k) {
  uint64_t end = clock_mono_ns() + 5000000000ull;
  while (!k->closed && clock_mono_ns() < end)
    assert_true(ring_run_once(k->r, 50000000) >= 0);
  assert_true(k->closed);
  assert_int_equal(ring_ops_inflight(k->r), 1); /* only the eventfd read is left */
}

static struct sockaddr_in addr4(const char *ip, uint16_t port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}

static void client_go(struct client *k, struct ring *r, uint16_t port, size_t len,
                      struct tls_ctx *implicit, const char *host) {
  memset(k, 0, sizeof *k);
  k->r = r;
  if (len) {
    k->want = malloc(len);
    k->rx = malloc(len);
    k->wantlen = len;
    for (size_t i = 0; i < len; i++)
      k->want[i] = (unsigned char)(i * 7 + i / 251);
  }
  struct sockaddr_in a = addr4("127.0.0.1", port);
  struct conn_params p = {.dst = (struct sockaddr *)&a, .dstlen = sizeof a,
                          .connect_timeout_ns = 2000000000ull, .tls = implicit,
                          .tls_host = host, .tls_port = port};
  int err = 0;
  k->c = conn_new(r, &p, &cbs, k, &err);
  assert_non_null(k->c);
}

static void client_done(struct client *k) {
  free(k->want);
  free(k->rx);
}

/* ------------------------------------------------------------ plain */

static void echo(bool no_optional, size_t len) {
  struct ring *r = mk(no_optional);
  struct server s;
  server_start(&s, S_ECHO, 1, NULL);
  struct client k;
  client_go(&k, r, s.port, len, NULL, NULL);
  run_until_closed(&k);
  assert_true(k.connected);
  assert_int_equal(k.err, 0);
  assert_false(k.mismatch);
  assert_int_equal(k.got, len);
  client_done(&k);
  server_stop(&s);
  ring_free(r);
}
static void test_echo_small(void **st) { (void)st; echo(false, 100); }
static void test_echo_big(void **st) { (void)st; echo(false, 1 << 20); }
static void test_echo_fallback(void **st) { (void)st; echo(true, 1 << 20); }

static void test_refused(void **st) {
  (void)st;
  struct ring *r = mk(false);
  uint16_t port;
  int fd = listen_on("127.0.0.1", 1, &port);
  close(fd); /* nobody listens there now */
  struct client k;
  client_go(&k, r, port, 10, NULL, NULL);
  run_until_closed(&k);
  assert_false(k.connected);
  assert_int_equal(k.err, -ECONNREFUSED);
  client_done(&k);
  ring_free(r);
}

static void test_bind_source(void **st) {
  (void)st;
  struct ring *r = mk(false);
  struct server s;
  server_start(&s, S_PEER, 1, NULL);
  struct client k;
  memset(&k, 0, sizeof k);
  k.r = r;
  struct sockaddr_in dst = addr4("127.0.0.1", s.port), src = addr4("127.0.0.2", 0);
  struct conn_params p = {.dst = (struct sockaddr *)&dst, .dstlen = sizeof dst,
                          .src = (struct sockaddr *)&src, .srclen = sizeof src};
  int err = 0;
  k.c = conn_new(r, &p, &cbs, &k, &err);
  assert_non_null(k.c);
  uint64_t end = clock_mono_ns() + 5000000000ull;
  while (!k.connected && k.err == 0 && clock_mono_ns() < end)
    ring_run_once(r, 50000000);
  assert_true(k.connected);
  while (__atomic_load_n(&s.peer[0], __ATOMIC_ACQUIRE) == 0 && clock_mono_ns() < end)
    sched_yield(); /* bounded: the server thread records the peer after accept */
  conn_close(k.c);
  run_until_closed(&k);
  server_stop(&s);
  assert_string_equal(s.peer, "127.0.0.2");
  /* An address this host does not have is refused at once. */
  struct sockaddr_in bad = addr4("192.0.2.1", 0);
  p.src = (struct sockaddr *)&bad;
  assert_null(conn_new(r, &p, &cbs, &k, &err));
  assert_int_equal(err, -EADDRNOTAVAIL);
  ring_free(r);
}

static void test_connect_timeout(void **st) {
  (void)st;
  struct ring *r = mk(false);
  /* A listener that never accepts, its queue filled: further SYNs are
   * dropped, so a connect hangs until its deadline. */
  uint16_t port;
  int lfd = listen_on("127.0.0.1", 0, &port);
  int fill[8];
  struct sockaddr_in a = addr4("127.0.0.1", port);
  for (int i = 0; i < 8; i++) {
    fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    (void)!connect(fill[i], (struct sockaddr *)&a, sizeof a);
  }
  /* Wait (bounded) until the fillers that fit the queue have connected, so
   * the queue is full before the measured connect starts. */
  struct pollfd pf[8];
  for (int i = 0; i < 8; i++)
    pf[i] = (struct pollfd){.fd = fill[i], .events = POLLOUT};
  (void)poll(pf, 8, 100);
  struct client k;
  memset(&k, 0, sizeof k);
  k.r = r;
  struct conn_params p = {.dst = (struct sockaddr *)&a, .dstlen = sizeof a,
                          .connect_timeout_ns = 200000000ull};
  int err = 0;
  uint64_t t0 = clock_mono_ns();
  k.c = conn_new(r, &p, &cbs, &k, &err);
  run_until_closed(&k);
  uint64_t dt = clock_mono_ns() - t0;
  assert_int_equal(k.err, -ETIMEDOUT);
  assert_true(dt >= 190000000ull && dt < 2000000000ull);
  for (int i = 0; i < 8; i++)
    close(fill[i]);
  close(lfd);
  ring_free(r);
}

/* ------------------------------------------------------------ TLS */

static struct tls_ctx *ctx_for(enum tls_verify v, const char *ca) {
  char p[128], err[256];
  snprintf(p, sizeof p, "%s/%s", certdir, ca);
  struct tls_params tp = {.verify = v, .ca_file = p};
  struct tls_ctx *c = tls_ctx_new(&tp, err, sizeof err);
  if (c == NULL)
    fail_msg("tls_ctx_new: %s", err);
  return c;
}

/* One implicit-TLS connection: returns the client's error (0 = echoed). */
static int tls_case(enum tls_verify v, const char *ca, const char *host, char *text, size_t tl) {
  struct ring *r = mk(false);
  struct tls_ctx *ctx = ctx_for(v, ca);
  struct server s;
  server_start(&s, S_TLS_ECHO, 1, NULL);
  struct client k;
  client_go(&k, r, s.port, 3000, ctx, host);
  run_until_closed(&k);
  int err = k.err;
  if (err == 0) {
    assert_true(k.tls_ready);
    assert_false(k.mismatch);
    assert_int_equal(k.got, 3000);
  }
  snprintf(text, tl, "%s", k.errtext);
  client_done(&k);
  server_stop(&s);
  tls_ctx_free(ctx);
  ring_free(r);
  return err;
}

static void test_tls_verify_matrix(void **st) {
  (void)st;
  char t[256];
  /* matching certificate: every mode succeeds */
  assert_int_equal(tls_case(TLS_VERIFY_HOST, "ca.crt", "localhost", t, sizeof t), 0);
  assert_int_equal(tls_case(TLS_VERIFY_CA, "ca.crt", "localhost", t, sizeof t), 0);
  assert_int_equal(tls_case(TLS_VERIFY_NO, "ca.crt", "localhost", t, sizeof t), 0);
  /* name mismatch: only host fails */
  assert_int_equal(tls_case(TLS_VERIFY_HOST, "ca.crt", "wrong.example", t, sizeof t), -EPROTO);
  assert_non_null(strstr(t, "hostname mismatch"));
  assert_int_equal(tls_case(TLS_VERIFY_CA, "ca.crt", "wrong.example", t, sizeof t), 0);
  assert_int_equal(tls_case(TLS_VERIFY_NO, "ca.crt", "wrong.example", t, sizeof t), 0);
  /* untrusted issuer: ca and host fail, no succeeds */
  assert_int_equal(tls_case(TLS_VERIFY_HOST, "other.crt", "localhost", t, sizeof t), -EPROTO);
  assert_non_null(strstr(t, "certificate verify failed"));
  assert_int_equal(tls_case(TLS_VERIFY_CA, "other.crt", "localhost", t, sizeof t), -EPROTO);
  assert_non_null(strstr(t, "unable to get local issuer certificate"));
  assert_int_equal(tls_case(TLS_VERIFY_NO, "other.crt", "localhost", t, sizeof t), 0);
}

static void test_tls_garbage(void **st) {
  (void)st;
  struct ring *r = mk(false);
  struct tls_ctx *ctx = ctx_for(TLS_VERIFY_NO, "ca.crt");
  struct server s;
  server_start(&s, S_GARBAGE, 1, NULL);
  struct client k;
  client_go(&k, r, s.port, 10, ctx, "localhost");
  run_until_closed(&k);
  assert_int_equal(k.err, -EPROTO);
  assert_non_null(strstr(k.errtext, "TLS handshake"));
  printf("# garbage: %s\n", k.errtext);
  client_done(&k);
  server_stop(&s);
  tls_ctx_free(ctx);
  ring_free(r);
}

static void test_starttls_resume(void **st) {
  (void)st;
  struct ring *r = mk(false);
  struct tls_ctx *ctx = ctx_for(TLS_VERIFY_HOST, "ca.crt");
  struct server s;
  server_start(&s, S_STARTTLS_ECHO, 2, NULL);
  for (int i = 0; i < 2; i++) {
    struct client k;
    client_go(&k, r, s.port, 50000, NULL, NULL);
    k.starttls = true;
    k.starttls_ctx = ctx;
    run_until_closed(&k);
    assert_int_equal(k.err, 0);
    assert_true(k.tls_ready);
    assert_false(k.mismatch);
    assert_int_equal(k.got, 50000);
    /* the second connection to localhost:25 resumes the first's session */
    assert_int_equal(k.resumed, i == 1);
    client_done(&k);
  }
  server_stop(&s);
  tls_ctx_free(ctx);
  ring_free(r);
}

/* A burst of STARTTLS connections to one host and port on one context:
 * one full handshake, the others wait for its session and resume it. */
/* Two keys in the same slot (localhost:25 and :27) alternating on a
 * 2-slot cache: each keeps its session (the cache is 2-way), so every
 * visit after the first of each resumes. */
static void test_starttls_two_keys(void **st) {
  (void)st;
  struct ring *r = mk(false);
  char err[256], ca[128];
  snprintf(ca, sizeof ca, "%s/ca.crt", certdir);
  struct tls_params tp = {.verify = TLS_VERIFY_HOST, .ca_file = ca, .cache_slots = 2};
  struct tls_ctx *ctx = tls_ctx_new(&tp, err, sizeof err);
  assert_non_null(ctx);
  struct server s;
  server_start(&s, S_STARTTLS_ECHO, 6, NULL);
  for (int i = 0; i < 6; i++) {
    struct client k;
    client_go(&k, r, s.port, 1000, NULL, NULL);
    k.starttls = true;
    k.starttls_ctx = ctx;
    k.starttls_port = (uint16_t)(25 + 2 * (i % 2)); /* same slot of 2 */
    run_until_closed(&k);
    assert_int_equal(k.err, 0);
    assert_int_equal(k.got, 1000);
    assert_int_equal(k.resumed, i >= 2);
    client_done(&k);
  }
  assert_int_equal(tls_ctx_cached(ctx), 2);
  server_stop(&s);
  tls_ctx_free(ctx);
  ring_free(r);
}

/* The first handshake to a host never finishes: a second connection to
 * the same host and port waits for its session only up to its deadline,
 * then makes its own full handshake. */
static void test_starttls_leader_stuck(void **st) {
  (void)st;
  struct ring *r = mk(false);
  struct tls_ctx *ctx = ctx_for(TLS_VERIFY_HOST, "ca.crt");
  struct server hang, echo_s;
  server_start(&hang, S_STARTTLS_HANG, 1, NULL);
  server_start(&echo_s, S_STARTTLS_ECHO, 1, NULL);
  struct client a, b;
  client_go(&a, r, hang.port, 10, NULL, NULL);
  a.starttls = true;
  a.starttls_ctx = ctx;
  uint64_t end = clock_mono_ns() + 5000000000ull;
  while (tls_ctx_handshakes(ctx) == 0 && clock_mono_ns() < end)
    assert_true(ring_run_once(r, 50000000) >= 0);
  assert_int_equal(tls_ctx_handshakes(ctx), 1); /* a leads, and hangs */
  client_go(&b, r, echo_s.port, 1000, NULL, NULL);
  b.starttls = true;
  b.starttls_ctx = ctx;
  uint64_t t0 = clock_mono_ns();
  while (!b.closed && clock_mono_ns() < end)
    assert_true(ring_run_once(r, 50000000) >= 0);
  assert_true(b.closed);
  assert_int_equal(b.err, 0);
  assert_int_equal(b.got, 1000);
  assert_false(b.resumed);
  assert_true(clock_mono_ns() - t0 >= 400000000ull); /* it did wait (500 ms) */
  assert_false(a.closed);
  assert_false(a.tls_ready);
  conn_close(a.c);
  while (!a.closed && clock_mono_ns() < end)
    assert_true(ring_run_once(r, 50000000) >= 0);
  assert_true(a.closed);
  assert_int_equal(tls_ctx_handshakes(ctx), 0);
  assert_int_equal(ring_ops_inflight(r), 1);
  client_done(&a);
  client_done(&b);
  server_stop(&hang);
  server_stop(&echo_s);
  tls_ctx_free(ctx);
  ring_free(r);
}

static void starttls_burst(unsigned max_hs) {
  enum { N = 4 };
  struct ring *r = mk(false);
  struct tls_ctx *ctx = ctx_for(TLS_VERIFY_HOST, "ca.crt");
  if (max_hs) { /* the same context, with a handshake limit */
    char err[256];
    char ca[128];
    snprintf(ca, sizeof ca, "%s/ca.crt", certdir);
    struct tls_params tp = {.verify = TLS_VERIFY_HOST, .ca_file = ca, .max_handshakes = max_hs};
    tls_ctx_free(ctx);
    ctx = tls_ctx_new(&tp, err, sizeof err);
    assert_non_null(ctx);
  }
  struct server s;
  server_start(&s, S_STARTTLS_PAR, N, NULL);
  struct client k[N];
  for (int i = 0; i < N; i++) {
    client_go(&k[i], r, s.port, 20000, NULL, NULL);
    k[i].starttls = true;
    k[i].starttls_ctx = ctx;
  }
  uint64_t end = clock_mono_ns() + 5000000000ull;
  int closed = 0;
  while (closed < N && clock_mono_ns() < end) {
    assert_true(ring_run_once(r, 50000000) >= 0);
    if (max_hs)
      assert_true(tls_ctx_handshakes(ctx) <= max_hs);
    closed = 0;
    for (int i = 0; i < N; i++)
      closed += k[i].closed;
  }
  assert_int_equal(closed, N);
  int resumed = 0;
  for (int i = 0; i < N; i++) {
    assert_int_equal(k[i].err, 0);
    assert_true(k[i].tls_ready);
    assert_false(k[i].mismatch);
    assert_int_equal(k[i].got, 20000);
    resumed += k[i].resumed;
    client_done(&k[i]);
  }
  assert_int_equal(resumed, N - 1);
  assert_int_equal(tls_ctx_handshakes(ctx), 0);
  assert_int_equal(ring_ops_inflight(r), 1);
  server_stop(&s);
  tls_ctx_free(ctx);
  ring_free(r);
}
static void test_starttls_burst(void **st) { (void)st; starttls_burst(0); }
/* at most one handshake at a time: the others queue and still all finish */
static void test_starttls_burst_one(void **st) { (void)st; starttls_burst(1); }

static void test_tls_params(void **st) {
  (void)st;
  char err[256];
  struct tls_params tp = {.protocols = "SSLv2"};
  assert_null(tls_ctx_new(&tp, err, sizeof err));
  assert_non_null(strstr(err, "TLS_Protocols"));
  tp = (struct tls_params){.ciphers = "NO-SUCH-CIPHER"};
  assert_null(tls_ctx_new(&tp, err, sizeof err));
  assert_non_null(strstr(err, "TLS_Ciphers"));
  tp = (struct tls_params){.verify = TLS_VERIFY_CA, .ca_file = "/nonexistent"};
  assert_null(tls_ctx_new(&tp, err, sizeof err));
  tp = (struct tls_params){.protocols = "TLSv1.2:TLSv1.3", .ciphers = "HIGH:!aNULL"};
  struct tls_ctx *c = tls_ctx_new(&tp, err, sizeof err);
  assert_non_null(c);
  tls_ctx_free(c);
}

static int setup_certs(void **st) {
  (void)st;
  snprintf(certdir, sizeof certdir, "/tmp/impetus-conn-XXXXXX");
  if (mkdtemp(certdir) == NULL)
    return -1;
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "cd %s && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext && "
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
           "-keyout ca.key -out ca.crt -subj /CN=TestCA -days 2 && "
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
           "-keyout other.key -out other.crt -subj /CN=OtherCA -days 2 && "
           "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
           "-keyout srv.key -out srv.csr -subj /CN=localhost && "
           "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
           "-out srv.crt -days 2 -extfile ext",
           certdir);
  if (system(cmd) != 0) {
    printf("SKIP: openssl CLI could not make test certificates\n");
    exit(77);
  }
  return 0;
}

static int teardown_certs(void **st) {
  (void)st;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", certdir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_echo_small),      cmocka_unit_test(test_echo_big),
    cmocka_unit_test(test_echo_fallback),   cmocka_unit_test(test_refused),
    cmocka_unit_test(test_bind_source),     cmocka_unit_test(test_connect_timeout),
    cmocka_unit_test(test_tls_verify_matrix), cmocka_unit_test(test_tls_garbage),
    cmocka_unit_test(test_starttls_resume), cmocka_unit_test(test_starttls_burst),
    cmocka_unit_test(test_starttls_burst_one), cmocka_unit_test(test_starttls_two_keys),
    cmocka_unit_test(test_starttls_leader_stuck),
    cmocka_unit_test(test_tls_params),
  };
  return cmocka_run_group_tests(tests, setup_certs, teardown_certs);
}
