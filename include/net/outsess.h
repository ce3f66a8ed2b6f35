/* outsess: one outbound SMTP session, the project's only driver of the
 * smtpc protocol machine: the engine's delivery sessions, the net
 * integration tests (tests/integration/net) and the session benchmark
 * (bench/net) all run it. It owns one smtpc, the conn it runs over
 * (plain -> STARTTLS -> TLS, or implicit TLS), the ring timer carrying
 * smtpc's deadline, and the body feed of the transaction being sent; it
 * makes no delivery decision (which transaction, reuse, retries, routes:
 * the owner's) and never logs.
 *
 * Life (the driver contract, like OpenSMTPD's smtp_client):
 *
 *   o = outsess_new(ring, &params, &cbs, arg, &err);   // connecting
 *   ready(arg, false)      -> outsess_send(o, &txn, &body, txn_arg) or outsess_quit(o)
 *   ready(arg, true)       -> the transaction in flight is fully sent (its dot, or its
 *                             last BDAT chunk) and PIPELINING lets another follow it at
 *                             once: outsess_send, or nothing (a plain ready follows the
 *                             final reply if nothing was started)
 *   body_done(arg, txn_arg)-> the body source is no longer read (close the fd now)
 *   txn_done(arg, txn_arg, txn) -> every txn->results[i] and *txn->final are filled in;
 *                             exactly once per accepted outsess_send, before `failed`
 *   failed(arg, ev, detail)-> the session is over (smtpc's FAILED event; `detail` is the
 *                             network/TLS reason when there is one, else ""); it closes
 *   closed(arg)            -> gone: the outsess is freed before this is called
 *
 * Nothing is freed inside a callback: outsess_quit / outsess_abort only
 * schedule the end, and `closed` comes from the loop. After outsess_abort
 * no callback but `closed` is made (transactions in flight are the
 * owner's to abandon). Loop-thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "smtpc.h"

struct ring;
struct tls_ctx;
struct outsess;

/* Informational steps, for counters (optional callback). */
enum outsess_note {
  OUTSESS_CONNECTED = 1, /* TCP connection established */
  OUTSESS_TLS_OK,        /* TLS handshake done (implicit or STARTTLS) */
  OUTSESS_TLS_FAILED,    /* TLS handshake failed, or no TLS context for STARTTLS */
  OUTSESS_AUTH_OK,       /* AUTH accepted (235) */
};

struct outsess_cbs {
  void (*ready)(void *arg, bool pipelined);
  void (*txn_done)(void *arg, void *txn_arg, const struct smtpc_txn *txn);
  void (*failed)(void *arg, const struct smtpc_event *ev, const char *detail);
  void (*closed)(void *arg);
  /* optional */
  void (*rcpt)(void *arg, void *txn_arg, uint32_t index, const struct smtpc_event *ev);
  void (*body_done)(void *arg, void *txn_arg);
  void (*note)(void *arg, enum outsess_note what);
};

struct outsess_params {
  const struct sockaddr *dst;
  socklen_t dstlen;
  const struct sockaddr *src;     /* Bind_Address, or NULL */
  socklen_t srclen;
  uint64_t connect_timeout_ns;    /* conn's own connect deadline; 0 = smtpc's only */
  const char *tls_host;           /* SNI and TLS_Verify host name (the MX name); copied */
  uint16_t port;                  /* for the TLS session cache key */
  struct tls_ctx *tls;            /* STARTTLS / implicit TLS context; NULL = no TLS */
  struct smtpc_params smtp;       /* copied by smtpc_new; smtp.implicit_tls for smtps */
  uint32_t send_window;           /* body bytes queued in the conn before the feed
                                     waits, and before a pipelined `ready` is offered;
                                     0 = 65536 */
};

/* A message body: a byte range of a file (read with pread in chunks of up
 * to 64 KiB on the loop thread: page-cache reads of the spool are cheaper
 * than a ring round trip), or bytes in memory. The fd or memory must stay
 * valid until body_done / txn_done. Sent with DATA (dot-stuffed by smtpc)
 * or BDAT (as it is; line ends made CRLF when they are not). */
struct outsess_body {
  int fd;
  uint64_t off, len;
  const void *mem; /* non-NULL: mem[0..len) instead of the file */
};

/* Create and start connecting. NULL with *err = -errno (socket, bind:
 * -EADDRNOTAVAIL for a Bind_Address this host lacks; -EINVAL for params
 * smtpc refuses, or implicit TLS without a context). */
struct outsess *outsess_new(struct ring *r, const struct outsess_params *p,
                            const struct outsess_cbs *cbs, void *arg, int *err);
/* Start a transaction (after `ready`). txn, everything it points to and
 * the body stay valid until txn_done. 0; -EBUSY when the session cannot
 * take one now (a stale `ready`: it ended or moved on); -EINVAL for a
 * transaction smtpc refuses (no callback follows either error). A
 * transaction smtpc refuses locally (SIZE, SMTPUTF8) is accepted and
 * answered at once through txn_done. */
int outsess_send(struct outsess *o, const struct smtpc_txn *txn, const struct outsess_body *body,
                 void *txn_arg);
/* QUIT when idle (else end at once); `closed` follows. */
void outsess_quit(struct outsess *o);
/* Close now without QUIT; only `closed` follows. */
void outsess_abort(struct outsess *o);

/* The protocol machine, for getters (state, extensions, stage). */
const struct smtpc *outsess_smtpc(const struct outsess *o);
/* The TCP connection was established. */
bool outsess_connected(const struct outsess *o);
/* Bytes handed to the connection so far (commands and bodies). */
uint64_t outsess_bytes_sent(const struct outsess *o);
/* TLS in use / resumed, and "TLSv1.3:cipher" ("" without TLS). */
bool outsess_tls(const struct outsess *o);
bool outsess_tls_resumed(const struct outsess *o);
const char *outsess_tls_describe(const struct outsess *o, char *out, size_t outlen);
/* Heap bytes held (session, protocol machine, conn buffers), benchmarks. */
size_t outsess_mem(const struct outsess *o);
