/* conn: one outbound TCP connection driven by a ring, optionally wrapped
 * in TLS (implicit, or upgraded with conn_starttls). The owner gets
 * plaintext and events through callbacks; conn never frees itself inside
 * one of them: conn_close() schedules the close and `closed` is called
 * (and the conn freed) once nothing is in flight any more.
 * Loop-thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct ring;
struct tls_ctx;
struct conn;

struct conn_cbs {
  /* TCP connection established. */
  void (*connected)(void *arg);
  /* TLS handshake finished (implicit TLS or after conn_starttls). */
  void (*tls_ready)(void *arg);
  /* Plaintext from the peer; valid during the call only. */
  void (*data)(void *arg, const uint8_t *p, size_t n);
  /* Everything queued with conn_send has gone to the kernel. */
  void (*sent)(void *arg);
  /* The connection failed: err is -errno (-ETIMEDOUT for the connect
   * deadline, -EPIPE for an orderly close by the peer, -EPROTO for TLS
   * with the reason in text). No more I/O happens; call conn_close. */
  void (*error)(void *arg, int err, const char *text);
  /* After conn_close, once nothing is in flight: the conn is freed when
   * this returns. */
  void (*closed)(void *arg);
};

struct conn_params {
  const struct sockaddr *dst;
  socklen_t dstlen;
  const struct sockaddr *src;    /* Bind_Address (port 0), or NULL */
  socklen_t srclen;
  uint64_t connect_timeout_ns;   /* 0 = no deadline */
  unsigned rbuf_size;            /* receive buffer when the ring has no
                                    provided-buffer pool; 0 = 4096 */
  struct tls_ctx *tls;           /* non-NULL: implicit TLS (smtps) */
  const char *tls_host;          /* SNI / verification name */
  uint16_t tls_port;             /* resumption cache key */
};

/* Start connecting. NULL with *err = -errno when the socket cannot be
 * made or bound (EADDRNOTAVAIL for a Bind_Address not on this host). */
struct conn *conn_new(struct ring *r, const struct conn_params *p, const struct conn_cbs *cbs,
                      void *arg, int *err);
/* Queue bytes (encrypted when TLS is on: everything queued in one pass of
 * the loop becomes one SSL_write, at the end of the pass; a TLS failure
 * then comes through the error callback). 0, -EAGAIN before the TLS
 * handshake is over, or -EPIPE after an error or close. At most one send
 * is in flight; the rest waits in the conn. */
int conn_send(struct conn *c, const void *p, size_t n);
/* Bytes queued and not yet handed to the kernel. */
size_t conn_pending(const struct conn *c);
/* Start a TLS handshake over the open connection (STARTTLS). The peer's
 * 220 must be the last plaintext it sent. 0, or -errno / -EPROTO with the
 * reason through the error callback. */
int conn_starttls(struct conn *c, struct tls_ctx *ctx, const char *host, uint16_t port);
/* Cancel everything, send a TLS close_notify if possible, close the
 * socket; `closed` follows from the loop. Safe inside any callback. */
void conn_close(struct conn *c);

bool conn_is_tls(const struct conn *c);
/* TLS session resumed from the cache (only meaningful once tls_ready). */
bool conn_tls_resumed(const struct conn *c);
/* "TLSv1.3:TLS_AES_256_GCM_SHA384", or "" without TLS. */
const char *conn_tls_describe(const struct conn *c, char *out, size_t outlen);
/* The socket, for getsockname/getpeername. */
int conn_fd(const struct conn *c);
/* Approximate heap bytes this conn holds (buffers, TLS), for benchmarks. */
size_t conn_mem(const struct conn *c);
/* Counters of this thread's conns (benchmarks, debugging): receives
 * armed now, receive completions and bytes so far. */
void conn_stats(unsigned long *recv_armed, unsigned long *recv_cqes, unsigned long *recv_bytes);
