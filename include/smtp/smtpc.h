/* smtpc: the sans-I/O SMTP client session (RFC 5321, 2920, 3207, 4954).
 *
 * One `struct smtpc` per outbound connection. The driver (net layer) owns
 * the socket, the TLS object and the clock; the machine owns the protocol.
 * It never does I/O, never reads a clock, never logs, never allocates per
 * reply. Only the thread that owns the session may call it.
 *
 * Driver loop (every call takes the current monotonic time in ms):
 *
 *   s = smtpc_new(&params, now);          // state CONNECT, stage 0
 *   ... TCP connect completes:  smtpc_connected(s, now);
 *   loop:
 *     bytes from the server   -> smtpc_feed(s, p, n, now)
 *     EOF / socket error      -> smtpc_eof(s, now) / smtpc_io_error(s, err, now)
 *     timer reaches deadline  -> smtpc_timeout(s, now)   (deadline: smtpc_deadline(s))
 *     while (smtpc_output(s, &p, &n)) { send p[0..k); smtpc_output_consumed(s, k, now); }
 *     while (smtpc_next_event(s, &ev)) switch (ev.type) {
 *       NEED_TLS:   handshake; smtpc_tls_done(s, ok, now)
 *       READY:      smtpc_begin_txn(s, &txn, now) or smtpc_quit(s, now);
 *                   with flag SMTPC_F_PIPELINED: smtpc_begin_txn or nothing
 *                   (a plain READY follows the final reply if unused)
 *       NEED_BODY:  smtpc_body(s, chunk, len, is_last, now) until all consumed
 *       RCPT_RESULT, AUTH_RESULT: informational
 *       TXN_DONE:   every txn->results[i] and *txn->final are filled in
 *       FAILED:     the session is over; send pending output if you like, close
 *       CLOSED:     QUIT done (or idle timeout); close the socket
 *     }
 *
 * Output: commands and the dot-stuffed body are written into one buffer
 * owned by the session (sized at smtpc_new); the driver sends straight from
 * it. Bytes that held credentials are wiped when consumed.
 *
 * Events are queued and processed after the call that produced them, so
 * an event can be stale: READY followed by FAILED in the same queue means
 * smtpc_begin_txn() answers -EBUSY. Act on events in order and check
 * return codes.
 *
 * Events: a small queue. Event text pointers stay valid until the next call
 * into the session other than smtpc_next_event / the getters; per-recipient
 * and final results live in caller-owned `struct smtpc_result` arrays. All
 * text leaving this module is sanitised (bytes outside 0x20..0x7e written as
 * \xHH) and cut to SMTPC_TEXT_MAX - 1 bytes.
 *
 * Decisions (see also smtp_reply.h):
 * - RSET: after a failed or aborted transaction the machine sends RSET and
 *   waits for its reply before READY; after a successful one it does not
 *   (as Postfix). A RSET refused ends the session (FAILED, transient).
 * - Pipelining across transactions (RFC 2920 3.1: message content may be
 *   the first "command" of a group): with PIPELINING, once the body's dot
 *   is written a READY with SMTPC_F_PIPELINED offers the next transaction,
 *   whose MAIL/RCPT/DATA then go out behind the dot before the final reply
 *   is in. Its txn must use other results/final slots (-EINVAL otherwise).
 *   Replies stay in order: the previous TXN_DONE always comes first, except
 *   a transaction refused locally by smtpc_begin_txn (SIZE, SMTPUTF8), whose
 *   TXN_DONE is immediate; match TXN_DONE to its transaction by ev.final.
 *   A final 4xx/5xx then needs no RSET; a session that ends before the
 *   final reply gives that transaction a transient result.
 * - BDAT (RFC 3030 CHUNKING, with params.chunking and the server offering
 *   CHUNKING and PIPELINING): a transaction is MAIL, RCPT..., then at once
 *   NEED_BODY: "BDAT n [LAST]" chunks whose data the driver sends itself
 *   (smtpc_chunk). Once the LAST chunk is queued, a READY with
 *   SMTPC_F_PIPELINED offers the next transaction at once (no 354 to wait
 *   for), up to pipeline_depth transactions in flight; replies are matched
 *   in order. RCPT_RESULT events are not emitted in this mode (results[]
 *   and TXN_DONE carry everything). The server ends a transaction at its
 *   LAST chunk whatever it answers; after any failed transaction the
 *   machine offers nothing more, lets the pipeline drain and sends RSET
 *   before READY. A failed chunk of the transaction still being sent ends
 *   it (TXN_DONE now, smtpc_chunk then says -ECANCELED: RFC 3030 forbids
 *   more chunks). A 503 to a pipelined MAIL (the server out of step after
 *   an earlier failure) is transient, never a bounce.
 * - All recipients refused: lock-step never sends DATA; pipelined, if the
 *   server still answers DATA with 354, the machine sends a lone "." (RFC
 *   2920 section 3.1 / Postfix), ignores that reply and RSETs.
 * - Unsolicited bytes while nothing is outstanding are parsed; a complete
 *   421 ends the session (FAILED transient, the server's text); other
 *   complete replies are dropped; more than limits.max_unsolicited bytes in
 *   total ends it with a PROTOCOL failure.
 * - STARTTLS answered non-220: TLS ifavailable goes on in plaintext, TLS
 *   required fails (transient).
 * - 5xx greeting -> FAILED kind PERMANENT with the code (the engine may
 *   treat it as transient and try the next MX, as Postfix's
 *   smtp_skip_5xx_greeting does). 4xx greeting -> TRANSIENT.
 * - AUTH failures are always TRANSIENT (flag SMTPC_F_AUTH_REJECTED for
 *   534/535/538), never continue unauthenticated.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp_reply.h"

struct smtpc;

/* Cut length (with NUL) of every text that leaves the module. */
#define SMTPC_TEXT_MAX SMTP_REPLY_TEXT_MAX
/* Longest mail-from / recipient address accepted by smtpc_begin_txn
 * (RFC 5321 4.5.3.1.3: path 256 octets including the angle brackets). */
#define SMTPC_ADDR_MAX 254
/* Longest user name / password (token for XOAUTH2) accepted. */
#define SMTPC_USER_MAX 256
/* Most BDAT transactions one session keeps in flight (named limit). */
#define SMTPC_PIPE_MAX 8
#define SMTPC_PASS_MAX 4096

enum smtpc_tls_mode {
  SMTPC_TLS_NO = 0,      /* never STARTTLS */
  SMTPC_TLS_IFAVAILABLE, /* STARTTLS when offered */
  SMTPC_TLS_REQUIRED,    /* STARTTLS must be offered and succeed */
};

enum smtpc_auth_type {
  SMTPC_AUTH_NONE = 0,
  SMTPC_AUTH_PLAIN,   /* RFC 4616 with initial response (RFC 4954) */
  SMTPC_AUTH_LOGIN,   /* two 334 challenges */
  SMTPC_AUTH_XOAUTH2, /* Google/Microsoft bearer token */
};

/* Credentials (known when the session is made: the engine resolves them
 * per delivery unit, and a connection carries one identity). The strings
 * are copied by smtpc_new; the
 * copies are wiped after the AUTH bytes are built and when the session is
 * freed. The caller wipes its own. */
struct smtpc_auth {
  enum smtpc_auth_type type;
  const char *user; /* NUL-terminated, <= SMTPC_USER_MAX bytes */
  const char *pass; /* password, or the bearer token for XOAUTH2 */
};

/* Remote-controlled sizes (STYLE #7). 0 = the default shown. */
struct smtpc_limits {
  uint32_t max_line;        /* one reply line incl. CRLF: 2048 */
  uint32_t max_lines;       /* lines in one reply: 200 */
  uint32_t max_reply_bytes; /* bytes in one reply: 65536 */
  uint32_t max_unsolicited; /* bytes received while nothing outstanding: 1024 */
};

/* Timeouts in seconds, like Momentum's options. 0 = the default shown.
 * Which one applies in which state: smtpc_timeout_option(). */
struct smtpc_timeouts {
  uint32_t connect;  /* Connect_Timeout 300: TCP connect */
  uint32_t ehlo;     /* EHLO_Timeout 300: banner, EHLO/HELO, STARTTLS, TLS handshake, AUTH */
  uint32_t mailfrom; /* MailFrom_Timeout 300 */
  uint32_t rcptto;   /* RcptTo_Timeout 300 */
  uint32_t data;     /* Data_Timeout 300: reply to DATA */
  uint32_t body;     /* Body_Timeout 600: body progress and the final reply */
  uint32_t rset;     /* RSET_Timeout 30: RSET and QUIT replies */
  uint32_t idle;     /* Idle_Timeout 5: READY with no transaction -> QUIT */
};

struct smtpc_params {
  const char *ehlo_name;      /* copied; required ("localhost" if NULL) */
  enum smtpc_tls_mode tls;    /* STARTTLS policy (ignored with implicit_tls) */
  bool implicit_tls;          /* port 465: NEED_TLS right after connect, no STARTTLS */
  struct smtpc_auth auth;     /* type NONE = no AUTH */
  bool auth_allow_plaintext;  /* Outbound_SMTP_AUTH_Allow_Plaintext */
  bool send_8bitmime;         /* Send_8BITMIME ifavailable: BODY=8BITMIME for 8-bit txns */
  bool chunking;              /* BDAT (RFC 3030) when the server offers CHUNKING and PIPELINING */
  uint32_t pipeline_depth;    /* BDAT transactions in flight at once; 0 = SMTPC_PIPE_MAX */
  uint32_t max_rcpts;         /* Max_Recipients_Per_Batch; 0 = 100 */
  uint32_t out_buf_size;      /* output buffer; 0 = 4096 (grown to fit AUTH lines) */
  struct smtpc_limits limits;
  struct smtpc_timeouts timeouts;
};

/* States in protocol order. Per-state tables: smtpc_state_doing(),
 * smtpc_state_stage(), smtpc_timeout_option(). */
enum smtpc_state {
  SMTPC_ST_CONNECT = 0, /* waiting for the TCP connect */
  SMTPC_ST_TLS_IMPLICIT,/* implicit TLS handshake */
  SMTPC_ST_BANNER,      /* reading the 220 greeting */
  SMTPC_ST_EHLO,
  SMTPC_ST_HELO,
  SMTPC_ST_STARTTLS,
  SMTPC_ST_TLS,         /* STARTTLS handshake (driver) */
  SMTPC_ST_AUTH,        /* AUTH command and its challenges */
  SMTPC_ST_IDLE,        /* READY: no transaction */
  SMTPC_ST_MAIL,        /* MAIL/RCPT/DATA group; receive cursor says which */
  SMTPC_ST_RCPT,
  SMTPC_ST_DATA,
  SMTPC_ST_BODY,        /* sending the body */
  SMTPC_ST_DOT,         /* waiting for the final reply */
  SMTPC_ST_RSET,
  SMTPC_ST_QUIT,
  SMTPC_ST_DONE,        /* FAILED or CLOSED was emitted */
  SMTPC_ST_COUNT
};

enum smtpc_ev_type {
  SMTPC_EV_NONE = 0,
  SMTPC_EV_NEED_TLS,    /* start the TLS handshake now, then smtpc_tls_done() */
  SMTPC_EV_AUTH_RESULT, /* AUTH succeeded (code 235) */
  SMTPC_EV_READY,       /* idle; smtpc_begin_txn() or smtpc_quit() */
  SMTPC_EV_RCPT_RESULT, /* txn->results[index] is filled in */
  SMTPC_EV_NEED_BODY,   /* 354 received: feed smtpc_body() */
  SMTPC_EV_TXN_DONE,    /* every result of the transaction is filled in */
  SMTPC_EV_FAILED,      /* the session is over (kind, code, text, stage) */
  SMTPC_EV_CLOSED,      /* QUIT answered or idle timeout: close the socket */
};

enum smtpc_fail_kind {
  SMTPC_FAIL_TRANSIENT = 1, /* a 4xx, or a local transient condition (AUTH/TLS policy) */
  SMTPC_FAIL_PERMANENT,     /* a 5xx that condemns the session (5xx greeting) */
  SMTPC_FAIL_PROTOCOL,      /* the server broke the protocol or a limit */
  SMTPC_FAIL_TIMEOUT,       /* smtpc_timeout() fired */
  SMTPC_FAIL_NETWORK,       /* smtpc_eof() / smtpc_io_error() */
};

/* Event flags. */
#define SMTPC_F_AUTH_REJECTED 0x1u /* 534/535/538: credentials refused; log loudly */
#define SMTPC_F_TLS_FAILED 0x2u    /* TLS handshake failed (TLS_Ifavailable_Fallback applies) */
#define SMTPC_F_TLS_POLICY 0x4u    /* TLS required but not offered / refused */
#define SMTPC_F_AUTH_POLICY 0x8u   /* AUTH not offered, mechanism missing, plaintext refused */
#define SMTPC_F_PIPELINED 0x10u    /* READY while the last transaction awaits its final reply */

struct smtpc_event {
  enum smtpc_ev_type type;
  enum smtpc_fail_kind kind; /* FAILED only */
  uint32_t flags;            /* SMTPC_F_* */
  uint32_t index;            /* RCPT_RESULT: recipient index */
  int code;                  /* reply code; 0 when none (local failure) */
  char enhanced[SMTP_REPLY_ENH_MAX]; /* "x.y.z" or "" */
  uint8_t stage;             /* Momentum connection stage (0..22) */
  const char *doing;         /* "sending RCPT TO"...; static */
  const char *text;          /* sanitised, cut; never NULL ("" when none) */
  const struct smtpc_result *final; /* TXN_DONE: that transaction's txn->final */
};

enum smtpc_outcome {
  SMTPC_OUT_NONE = 0,   /* not decided yet */
  SMTPC_OUT_OK,         /* 2xx (RCPT accepted / message accepted) */
  SMTPC_OUT_TRANSIENT,  /* 4xx, or the session failed: retry */
  SMTPC_OUT_PERMANENT,  /* 5xx: bounce */
};

/* One outcome (per recipient, or the transaction's final reply). Filled by
 * the machine; owned by the caller. results[i] holds recipient i's own
 * reply (RCPT, or MAIL's when MAIL failed) and is never overwritten once
 * set; a recipient without any reply when the transaction ends gets a copy
 * of *final. After TXN_DONE the effective outcome of recipient i is
 * smtpc_txn_outcome(txn, i): results[i] unless it is OK, else *final. */
struct smtpc_result {
  enum smtpc_outcome outcome;
  int code;                          /* 0 when no reply applies (timeout, I/O) */
  char enhanced[SMTP_REPLY_ENH_MAX]; /* "" when absent */
  uint8_t stage;                     /* Momentum stage where it was decided */
  char text[SMTPC_TEXT_MAX];         /* sanitised, cut */
};

#define SMTPC_TXN_8BIT 0x1u     /* the body has 8-bit bytes */
#define SMTPC_TXN_SMTPUTF8 0x2u /* addresses or headers need SMTPUTF8 */

/* A transaction. Every pointer must stay valid until TXN_DONE (the machine
 * writes addresses lazily as output space frees up). */
struct smtpc_txn {
  const char *mail_from;       /* without <>; "" = null sender */
  const char *const *rcpts;    /* nrcpt addresses, without <> */
  uint32_t nrcpt;              /* 1..max_rcpts */
  uint64_t size;               /* body size for SIZE=; 0 = don't send SIZE= */
  uint32_t flags;              /* SMTPC_TXN_* */
  struct smtpc_result *results;/* nrcpt slots, written by the machine */
  struct smtpc_result *final;  /* the final reply (or the reason there was none) */
};

/* What the peer offered in its last EHLO reply. */
#define SMTPC_EXT_PIPELINING 0x01u
#define SMTPC_EXT_SIZE 0x02u
#define SMTPC_EXT_8BITMIME 0x04u
#define SMTPC_EXT_SMTPUTF8 0x08u
#define SMTPC_EXT_STARTTLS 0x10u
#define SMTPC_EXT_AUTH 0x20u
#define SMTPC_EXT_ENHANCEDSTATUSCODES 0x40u
#define SMTPC_EXT_ESMTP 0x80u /* EHLO worked (else HELO) */
#define SMTPC_EXT_CHUNKING 0x100u

#define SMTPC_MECH_PLAIN 0x1u
#define SMTPC_MECH_LOGIN 0x2u
#define SMTPC_MECH_XOAUTH2 0x4u

/* Create a session in state CONNECT (deadline: connect timeout). Copies
 * everything it keeps from params. NULL when params are unusable
 * (credentials too long, ehlo_name with CR/LF...). */
struct smtpc *smtpc_new(const struct smtpc_params *params, uint64_t now_ms);
/* Wipe and free; NULL is fine. */
void smtpc_free(struct smtpc *s);

/* The TCP connection is up: wait for the banner (or emit NEED_TLS first
 * with implicit_tls). -EINVAL when not in CONNECT. */
int smtpc_connected(struct smtpc *s, uint64_t now_ms);
/* Server bytes in. Consumes all n bytes (returns n), or returns a negative
 * errno when the session was already over (-EPIPE). Problems in the bytes
 * become events, never return codes. */
int smtpc_feed(struct smtpc *s, const void *bytes, size_t n, uint64_t now_ms);
/* The server closed the connection. QUIT state -> CLOSED, else FAILED
 * (NETWORK) naming the state. */
void smtpc_eof(struct smtpc *s, uint64_t now_ms);
/* A socket error (-errno or positive errno) -> FAILED (NETWORK). */
void smtpc_io_error(struct smtpc *s, int err, uint64_t now_ms);
/* The TLS handshake requested by NEED_TLS finished. ok: re-EHLO (or wait
 * for the banner with implicit TLS). !ok: FAILED (TRANSIENT, SMTPC_F_TLS_FAILED). */
int smtpc_tls_done(struct smtpc *s, bool ok, uint64_t now_ms);

/* Absolute deadline in ms for the current state; UINT64_MAX when none. */
uint64_t smtpc_deadline(const struct smtpc *s);
/* If now >= deadline: IDLE -> QUIT; QUIT -> CLOSED; otherwise FAILED
 * (TIMEOUT) naming the state. Returns 1 when it fired, 0 if not due. */
int smtpc_timeout(struct smtpc *s, uint64_t now_ms);

/* Bytes to send: *p and *n point into the session's buffer. Returns false when
 * there is nothing to send. */
bool smtpc_output(struct smtpc *s, const uint8_t **p, size_t *n);
/* n bytes of the output were sent; may generate more output (pipelining
 * send cursor, body space). */
void smtpc_output_consumed(struct smtpc *s, size_t n, uint64_t now_ms);

/* Pop the next event into *ev. Returns false when the queue is empty. */
bool smtpc_next_event(struct smtpc *s, struct smtpc_event *ev);

/* Start a transaction (only in READY). -EBUSY when not READY, -EINVAL for
 * a bad transaction (no recipients, more than max_rcpts, CR/LF/NUL or
 * oversized addresses). Results are set to NONE first. */
int smtpc_begin_txn(struct smtpc *s, const struct smtpc_txn *txn, uint64_t now_ms);
/* Body bytes (raw message, any line ending) after NEED_BODY. Encodes them
 * (dot-stuffing, CRLF) into the output buffer. Returns the number of input
 * bytes consumed (< len when the output buffer is full: send, consume, call
 * again with the rest); when is_last and everything was consumed, ".\r\n"
 * follows and the machine waits for the final reply. -EINVAL outside BODY or
 * once is_last was accepted (the terminator may still wait for space). */
long smtpc_body(struct smtpc *s, const void *data, size_t len, bool is_last, uint64_t now_ms);
/* Pre-stuffed body (zero copy): instead of smtpc_body, the driver sends
 * body bytes it already holds in wire form (CRLF line ends, dot-stuffed,
 * no terminator; smtp_dot_encode at ingest makes them) straight from its
 * own buffer, after draining smtpc_output, and reports progress here.
 * With is_last the machine queues the terminator (CRLF first unless
 * ends_with_crlf) and waits for the final reply. -EINVAL outside BODY. */
int smtpc_body_sent(struct smtpc *s, size_t n, bool is_last, bool ends_with_crlf, uint64_t now_ms);
/* Whether this session's transactions use BDAT (params.chunking, and the
 * server offered CHUNKING and PIPELINING); decided at each smtpc_begin_txn
 * from IDLE. Then NEED_BODY asks for smtpc_chunk() instead of smtpc_body(). */
bool smtpc_chunked(const struct smtpc *s);
/* BDAT: queue "BDAT len [LAST]" for the transaction being sent. After a 0
 * return the driver sends smtpc_output() and then exactly len bytes of
 * message data itself (raw: CRLF line ends, no dot-stuffing; the message
 * should end with CRLF). With is_last the transaction is fully sent. Returns
 * 0; -ENOSPC when the output buffer is full (send, consume, call again);
 * -ECANCELED when the transaction already failed (send no more of it);
 * -EINVAL outside BODY or without BDAT. */
int smtpc_chunk(struct smtpc *s, size_t len, bool is_last, uint64_t now_ms);
/* Say goodbye: QUIT from READY (CLOSED after its reply); elsewhere the
 * session just ends with CLOSED. */
void smtpc_quit(struct smtpc *s, uint64_t now_ms);

/* The effective outcome of recipient i after TXN_DONE (see smtpc_result). */
const struct smtpc_result *smtpc_txn_outcome(const struct smtpc_txn *txn, uint32_t i);

/* Getters for logging. */
enum smtpc_state smtpc_state(const struct smtpc *s);
uint8_t smtpc_stage(const struct smtpc *s);       /* Momentum stage of the current state */
const char *smtpc_doing(const struct smtpc *s);    /* "sending RCPT TO" ... */
uint32_t smtpc_extensions(const struct smtpc *s);  /* SMTPC_EXT_* */
uint32_t smtpc_auth_mechs(const struct smtpc *s);  /* SMTPC_MECH_* offered */
uint64_t smtpc_peer_max_size(const struct smtpc *s); /* SIZE n, 0 = none/unlimited */
bool smtpc_tls_active(const struct smtpc *s);
bool smtpc_authenticated(const struct smtpc *s);
size_t smtpc_memory(const struct smtpc *s);        /* bytes held by the session */

/* Per-state tables. */
const char *smtpc_state_name(enum smtpc_state st);    /* "RCPT" */
const char *smtpc_state_doing(enum smtpc_state st);   /* "sending RCPT TO" */
uint8_t smtpc_state_stage(enum smtpc_state st);       /* Momentum stage number */
const char *smtpc_timeout_option(enum smtpc_state st);/* "RcptTo_Timeout", or NULL */
const char *smtpc_ev_name(enum smtpc_ev_type t);
const char *smtpc_fail_name(enum smtpc_fail_kind k);

/* AUTH encodings (also used by the bench). Each writes a NUL-terminated
 * line body without CRLF into out (cap bytes) and returns its length, or
 * -ENOSPC. */
long smtpc_auth_plain_ir(const char *user, const char *pass, char *out, size_t cap);   /* "AUTH PLAIN <b64>" */
long smtpc_auth_xoauth2_ir(const char *user, const char *token, char *out, size_t cap);/* "AUTH XOAUTH2 <b64>" */
long smtpc_b64_line(const char *s, char *out, size_t cap);                           /* base64(s) for LOGIN */
