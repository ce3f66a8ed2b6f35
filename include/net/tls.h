/* tls: OpenSSL client sessions through memory BIOs. OpenSSL never touches
 * a socket: the caller (conn) feeds it ciphertext read from the ring and
 * sends the ciphertext it produces. One tls_ctx per worker thread and set
 * of TLS options; it holds the per-(host, port) session resumption cache.
 * Loop-thread only (OpenSSL's error queue is per thread). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"

enum tls_verify {
  TLS_VERIFY_NO = 0, /* encrypt, accept any certificate */
  TLS_VERIFY_CA,     /* chain must verify against the CA store */
  TLS_VERIFY_HOST,   /* and the certificate must name the host */
};

struct tls_params {
  enum tls_verify verify;
  const char *ca_file;     /* TLS_Ca; NULL = system default store */
  const char *cert_file;   /* TLS_Certificate (client certificate), optional */
  const char *key_file;    /* TLS_Key, optional (defaults to cert_file) */
  const char *ciphers;     /* TLS_Ciphers (TLS <= 1.2 list); NULL = OpenSSL default */
  const char *protocols;   /* TLS_Protocols: lowest version accepted, "TLSv1.2" (default),
                            * "TLSv1.3", "TLSv1.1", "TLSv1"; or a list like
                            * "TLSv1.2:TLSv1.3" whose lowest member is taken */
  unsigned cache_slots;    /* session cache entries; 0 = 1024 */
  unsigned max_handshakes; /* handshakes in progress at once; 0 = 32 (tls_ctx_wait) */
  /* The same files read earlier (before leaving root), PEM in memory;
   * when set they are used instead of cert_file / key_file. */
  const char *cert_pem;
  size_t cert_pem_len;
  const char *key_pem;
  size_t key_pem_len;
};

struct tls_ctx;
struct tls;

/* Build a client context. NULL on failure with a reason in err. */
struct tls_ctx *tls_ctx_new(const struct tls_params *p, char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *c);
/* Number of cached sessions (tests). */
unsigned tls_ctx_cached(const struct tls_ctx *c);
/* Handshakes in progress on this context (tests). */
unsigned tls_ctx_handshakes(const struct tls_ctx *c);

/* A session to be started once another connection's full handshake to
 * the same host and port has brought a session it can resume (so a burst
 * of connections to one MX pays one certificate exchange, not one each),
 * or once the context has a handshake slot free (max_handshakes).
 * Embedded by the caller; all-zero is "not queued". */
struct tls_waiter {
  struct tls_waiter *next, **pprev;
  struct tls_waiter ***tail; /* the queue's tail pointer (FIFO queues only) */
  /* Called once, from inside another session's tls_read/tls_handshake/
   * tls_free: only note it and go on from the loop. */
  void (*wake)(struct tls_waiter *w);
};

/* Should a new session to host:port wait? true (w queued) when nothing is
 * cached for it but a full handshake to it is running on this context
 * (w->wake follows when that one has a session or ends without one), or
 * when max_handshakes are running (w->wake when one ends; FIFO). false:
 * go on now (tls_new resumes the cached session, or leads). Waking is a
 * hint: ask again, the caller bounds the total wait. */
bool tls_ctx_wait(struct tls_ctx *c, const char *host, uint16_t port, struct tls_waiter *w);
/* Unqueue w (no wake follows); harmless when not queued. */
void tls_waiter_cancel(struct tls_waiter *w);

/* A client session for `host` (SNI and name check; may be an IP literal
 * or NULL for no SNI) and `port` (resumption cache key). NULL on failure
 * with a reason in err. */
struct tls *tls_new(struct tls_ctx *c, const char *host, uint16_t port, char *err, size_t errlen);
void tls_free(struct tls *t);

/* Hand ciphertext received from the peer to OpenSSL: it reads straight
 * from p during the tls_handshake/tls_read calls that follow; call
 * tls_feed_end before p goes away (bytes left unread are copied). 0. */
int tls_feed(struct tls *t, const void *p, size_t n);
void tls_feed_end(struct tls *t);
/* Move ciphertext OpenSSL wants to send onto the end of out; returns bytes. */
size_t tls_take(struct tls *t, struct buf *out);
/* Drive the handshake: 1 done, 0 needs more input, -EPROTO failed
 * (reason in tls_error()). */
int tls_handshake(struct tls *t);
/* Decrypt into out: bytes (> 0), 0 needs more input, -EPIPE peer sent
 * close_notify, -EPROTO failed. */
ssize_t tls_read(struct tls *t, void *out, size_t n);
/* Whether another tls_read could return anything before more input is fed:
 * fed bytes OpenSSL has not read, or a record or plaintext it holds. */
bool tls_input_left(const struct tls *t);
/* Encrypt n bytes (all of them, output via tls_take). n or -EPROTO. */
ssize_t tls_write(struct tls *t, const void *p, size_t n);
/* Queue a close_notify (output via tls_take). */
void tls_shutdown(struct tls *t);

/* Reason for the last failure ("certificate verify failed: hostname
 * mismatch", "wrong version number" ...). */
const char *tls_error(const struct tls *t);
bool tls_resumed(const struct tls *t);
/* "TLSv1.3:TLS_AES_256_GCM_SHA384" once established. */
const char *tls_describe(const struct tls *t, char *out, size_t outlen);
