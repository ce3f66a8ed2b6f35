/* outsess: one outbound SMTP session = one smtpc protocol machine driven
 * over one conn on a ring (plain -> STARTTLS -> TLS, or implicit TLS).
 * It pumps bytes both ways, puts smtpc's deadline on a ring timer, reads
 * message bodies from a file through the ring into a small session buffer
 * and feeds them to smtpc's body encoder, and reports to the owner (the
 * engine's scheduler) through callbacks.
 *
 * Life: outsess_new connects; `ready` says a transaction may start
 * (outsess_send); `txn_done` gives the results; `ready` again on a reused
 * connection; outsess_quit ends politely, outsess_abort at once. After
 * `failed` (or a quit), `closed` follows from the loop and the session is
 * freed when that callback returns. Never freed inside an owner callback.
 * Loop-thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "smtpc.h"

struct ring;
struct tls_ctx;
struct outsess;

struct outsess_cbs {
  /* Idle and usable: start a transaction with outsess_send or quit. */
  void (*ready)(void *arg);
  /* One recipient's RCPT reply (informational; optional). */
  void (*rcpt)(void *arg, uint32_t index, const struct smtpc_event *ev);
  /* The transaction is over: every txn->results[i] and *txn->final are
   * filled in. The body source is no longer used. */
  void (*txn_done)(void *arg, const struct smtpc_txn *txn);
  /* The session failed: ev has kind, code, enhanced code, stage, doing and
   * text; `detail` is the network/TLS reason when there is one ("TLS
   * handshake: certificate verify failed: ...", "connection refused"),
   * else "". A transaction in progress has its results filled in (as
   * transient) before this. */
  void (*failed)(void *arg, const struct smtpc_event *ev, const char *detail);
  /* NEED_AUTH (params.smtp.auth_deferred): answer with outsess_set_auth. */
  void (*need_auth)(void *arg, const char *mechs);
  /* Gone; the session is freed when this returns. */
  void (*closed)(void *arg);
};

struct outsess_params {
  const struct sockaddr *dst;
  socklen_t dstlen;
  const struct sockaddr *src;     /* Bind_Address, or NULL */
  socklen_t srclen;
  const char *tls_host;           /* SNI and TLS_Verify host name (the MX name) */
  uint16_t port;                  /* for the TLS session cache key */
  struct tls_ctx *tls;            /* STARTTLS / implicit TLS context; NULL = no TLS */
  struct smtpc_params smtp;       /* copied by smtpc_new; set smtp.implicit_tls for smtps */
  uint32_t body_chunk;            /* body read size; 0 = 8192 */
  uint32_t send_window;           /* body bytes queued in the conn before waiting; 0 = 8192 */
};

/* A message body: either a byte range of a file (read through the ring)
 * or bytes in memory (must stay valid until txn_done). */
struct outsess_body {
  int fd;
  uint64_t off, len;
  const void *mem; /* non-NULL: use mem[0..len) instead of the file */
};

/* Create and start connecting. NULL with *err = -errno (socket, bind:
 * -EADDRNOTAVAIL for a Bind_Address this host lacks, -EINVAL params). */
struct outsess *outsess_new(struct ring *r, const struct outsess_params *p,
                            const struct outsess_cbs *cbs, void *arg, int *err);
/* Start a transaction (after `ready`). txn and everything it points to,
 * and the body, stay valid until txn_done/failed. 0, -EBUSY when not
 * ready, -EINVAL for a transaction smtpc refuses. */
int outsess_send(struct outsess *o, const struct smtpc_txn *txn, const struct outsess_body *body);
/* Answer need_auth (creds NULL = go on without AUTH). */
int outsess_set_auth(struct outsess *o, const struct smtpc_auth *creds);
/* QUIT when idle (else end at once); `closed` follows. */
void outsess_quit(struct outsess *o);
/* Close now without QUIT; `closed` follows (no `failed`). */
void outsess_abort(struct outsess *o);

/* The protocol machine, for getters (state, extensions, stage, tls). */
const struct smtpc *outsess_smtpc(const struct outsess *o);
/* TLS in use / resumed, and "TLSv1.3:cipher" ("" without TLS). */
bool outsess_tls(const struct outsess *o);
bool outsess_tls_resumed(const struct outsess *o);
const char *outsess_tls_describe(const struct outsess *o, char *out, size_t outlen);
/* Heap bytes held (session, protocol machine, conn buffers), benchmarks. */
size_t outsess_mem(const struct outsess *o);
