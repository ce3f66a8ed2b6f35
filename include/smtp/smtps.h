/* smtps: the sans-I/O SMTP server session (RFC 5321; 1870 SIZE, 2034
 * ENHANCEDSTATUSCODES, 2920 PIPELINING, 3030 CHUNKING, 3207 STARTTLS, 3461
 * DSN, 4954 AUTH, 6152 8BITMIME, 6531 SMTPUTF8).
 *
 * One `struct smtps` per inbound connection. The driver (impetus-sink,
 * `impetus-inject -bs`, the engine's ESMTP_Listener) owns the socket or the
 * file descriptors, TLS and the clock; the machine owns the protocol. It
 * never does I/O, never reads a clock, never logs, never allocates per byte
 * (a command line is copied into a buffer kept by the session; message data
 * is handed out in place). Only the thread that owns the session may call it.
 *
 * Driver loop (every call that can start a timer takes the monotonic time
 * in ms):
 *
 *   s = smtps_new(&params);
 *   smtps_start(s, now);                 // a DECIDE event for the greeting
 *   loop:
 *     k = smtps_feed(s, p, n, now);      // consumes input up to one event
 *     while (smtps_event(s, &ev)) switch (ev.type) {
 *       COMMAND, AUTH, MESSAGE: a reply is due. Answer now or later with
 *               smtps_accept (the default reply, ev.reply), smtps_answer
 *               (another code and text) or smtps_answer_raw; until then
 *               smtps_feed consumes nothing (the driver keeps its input:
 *               commands pipelined behind wait, as RFC 2920 wants).
 *       DATA:   message octets (DATA unstuffed, or BDAT as sent), in place:
 *               ev.data is valid until the next call into the session.
 *       BDAT:   a BDAT command parsed; its ev.size octets follow.
 *     }
 *     while (smtps_output(s, &p, &n)) { send; smtps_output_consumed(s, k); }
 *     smtps_done(s)  -> send what is left, then close
 *     smtps_want_tls(s) -> discard the rest of this input, start the TLS
 *                          handshake, then smtps_tls_done(s, now)
 *     timer at smtps_deadline(s) -> smtps_timeout(s, now)
 *
 * smtps_feed returns fewer bytes than given when an event is waiting to be
 * taken, a reply is due, the session is over, or more than
 * limits.max_pending_out reply bytes are unsent (back-pressure: stop
 * reading until they are sent). Feed the rest again later. Keep calling it
 * (with no input left, too) while it produces events: the end of a BDAT
 * chunk that ends a read needs no further input to become an event.
 *
 * Every reply carries an enhanced status code. Replies the machine decides
 * alone (syntax, sequence, limits) still come as a DECIDE event with
 * ev.ok == false, so a driver sees every reply it could delay or replace;
 * a driver cannot turn such a failure into a success.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct smtps;

/* Commands and stages (index tables by them). CONNECT is the greeting,
 * DOT the end of the message (DATA's dot, BDAT LAST), BDAT the reply to a
 * chunk that is not the last. */
enum smtps_cmd {
  SMTPS_CMD_CONNECT, SMTPS_CMD_EHLO, SMTPS_CMD_HELO, SMTPS_CMD_STARTTLS, SMTPS_CMD_AUTH,
  SMTPS_CMD_MAIL, SMTPS_CMD_RCPT, SMTPS_CMD_DATA, SMTPS_CMD_DOT, SMTPS_CMD_BDAT,
  SMTPS_CMD_RSET, SMTPS_CMD_NOOP, SMTPS_CMD_QUIT, SMTPS_CMD_VRFY, SMTPS_CMD_OTHER,
  SMTPS_CMD_COUNT
};
extern const char *const smtps_cmd_names[SMTPS_CMD_COUNT];

/* Extensions offered in the EHLO reply (params.ext). SIZE is offered when
 * limits.max_size is set or SMTPS_EXT_SIZE is. */
#define SMTPS_EXT_PIPELINING 0x01u
#define SMTPS_EXT_SIZE 0x02u
#define SMTPS_EXT_8BITMIME 0x04u
#define SMTPS_EXT_SMTPUTF8 0x08u
#define SMTPS_EXT_DSN 0x10u
#define SMTPS_EXT_CHUNKING 0x20u
#define SMTPS_EXT_STARTTLS 0x40u /* offered before TLS only */
#define SMTPS_EXT_ENHANCEDSTATUSCODES 0x80u
#define SMTPS_EXT_ALL 0xffu

/* AUTH mechanisms (params.auth_mechs). */
#define SMTPS_AUTH_PLAIN 0x1u
#define SMTPS_AUTH_LOGIN 0x2u
#define SMTPS_AUTH_XOAUTH2 0x4u

/* DSN NOTIFY bits (RFC 3461). */
#define SMTPS_NOTIFY_NEVER 0x1u
#define SMTPS_NOTIFY_SUCCESS 0x2u
#define SMTPS_NOTIFY_FAILURE 0x4u
#define SMTPS_NOTIFY_DELAY 0x8u

enum smtps_ret { SMTPS_RET_NONE = 0, SMTPS_RET_FULL, SMTPS_RET_HDRS };
enum smtps_body { SMTPS_BODY_NONE = 0, SMTPS_BODY_7BIT, SMTPS_BODY_8BITMIME };

/* Longest address accepted in strict mode (RFC 5321 4.5.3.1.3). */
#define SMTPS_ADDR_MAX 256
/* Longest ENVID / ORCPT value kept (RFC 3461: 100 / 500 octets). */
#define SMTPS_ENVID_MAX 100
#define SMTPS_ORCPT_MAX 500
/* Most message replies a session may owe at once (smtps_defer). */
#define SMTPS_DEFER_MAX 32

/* Remote-controlled sizes (STYLE #7). 0 = the default shown. */
struct smtps_limits {
  uint32_t max_line;         /* command or AUTH line without CRLF: 2048; 500 5.5.2 above */
  uint32_t max_rcpts;        /* recipients per transaction: 1000; 452 4.5.3 above */
  uint64_t max_size;         /* message octets: 0 = no limit; 552 5.3.4 above */
  uint32_t max_errors;       /* error replies before 421 and close: 0 = no limit */
  uint32_t max_pending_out;  /* unsent (or held) reply bytes before feed stops reading: 65536 */
  uint32_t max_deferred;     /* message replies owed at once (smtps_defer): SMTPS_DEFER_MAX */
};

/* Timeouts in seconds. 0 = the default shown. */
struct smtps_timeouts {
  uint32_t command; /* waiting for a command (and between AUTH lines): 300 */
  uint32_t data;    /* between message octets (DATA, BDAT): 300 */
};

struct smtps_params {
  const char *hostname; /* EHLO reply; must outlive the session ("localhost" if NULL) */
  const char *banner;   /* greeting text after "220 " (default "<hostname> ESMTP") */
  uint32_t ext;         /* SMTPS_EXT_* offered */
  uint32_t auth_mechs;  /* SMTPS_AUTH_* offered; 0 = no AUTH */
  bool auth_tls_only;   /* AUTH offered and accepted only under TLS (538 otherwise) */
  bool require_auth;    /* MAIL before AUTH: 530 5.7.0 */
  bool tls_active;      /* implicit TLS: the session starts encrypted */
  bool strict;          /* 555 to unknown MAIL/RCPT parameters; addresses checked
                           (length, control bytes, 8-bit without SMTPUTF8) */
  struct smtps_limits limits;
  struct smtps_timeouts timeouts;
};

enum smtps_ev_type {
  SMTPS_EV_NONE = 0,
  SMTPS_EV_COMMAND, /* a reply is due for ev.cmd (DECIDE) */
  SMTPS_EV_AUTH,    /* credentials to check: ev.arg user, ev.pass (DECIDE) */
  SMTPS_EV_MESSAGE, /* end of the message: DATA's dot or BDAT LAST (DECIDE) */
  SMTPS_EV_DATA,    /* message octets in place (ev.data, ev.len) */
  SMTPS_EV_BDAT,    /* a BDAT command: ev.size octets follow (ev.last) */
};

struct smtps_event {
  enum smtps_ev_type type;
  enum smtps_cmd cmd; /* DECIDE events: the command (stage) the reply answers */
  bool ok;            /* DECIDE: the default reply is a success */
  int code;           /* DECIDE: the default reply's code */
  const char *reply;  /* DECIDE: the default reply, CRLF included */
  size_t reply_len;
  /* EHLO/HELO: the name; MAIL/RCPT: the address (no brackets, may be
   * empty for MAIL's null path); AUTH: the user (authcid); else empty.
   * Valid until the event is answered. Not NUL-terminated. */
  const char *arg;
  size_t arg_len;
  const char *pass;   /* AUTH: password, or bearer token (XOAUTH2); wiped after the answer */
  size_t pass_len;
  uint32_t mech;      /* AUTH: SMTPS_AUTH_* */
  const uint8_t *data; /* DATA */
  size_t len;
  uint64_t size;      /* MAIL: SIZE= (0 absent); MESSAGE: octets received; BDAT: chunk */
  bool last;          /* BDAT: LAST */
  bool bdat;          /* MESSAGE: sent with BDAT */
  bool too_big;       /* MESSAGE: over limits.max_size (default reply 552) */
  bool smtputf8;      /* MAIL: SMTPUTF8 */
  uint8_t body;       /* MAIL: enum smtps_body */
  uint8_t ret;        /* MAIL: enum smtps_ret */
  uint8_t notify;     /* RCPT: SMTPS_NOTIFY_* (0 absent) */
  const char *envid;  /* MAIL: ENVID xtext as sent (NULL absent) */
  size_t envid_len;
  const char *orcpt;  /* RCPT: ORCPT "type;xtext" as sent (NULL absent) */
  size_t orcpt_len;
};

/* States in protocol order. */
enum smtps_state {
  SMTPS_ST_NEW = 0,  /* before smtps_start */
  SMTPS_ST_GREETING, /* the greeting is due */
  SMTPS_ST_CMD,      /* reading commands */
  SMTPS_ST_AUTH,     /* reading an AUTH response line */
  SMTPS_ST_DATA,     /* reading DATA octets */
  SMTPS_ST_BDAT,     /* reading a BDAT chunk's octets */
  SMTPS_ST_TLS,      /* 220 to STARTTLS sent: the driver runs the handshake */
  SMTPS_ST_DONE,     /* QUIT answered, 421 sent, or shut down */
  SMTPS_ST_COUNT
};

/* A new session; NULL on out-of-memory. params is copied (its strings are not). */
struct smtps *smtps_new(const struct smtps_params *params);
/* Free; accepts NULL. Wipes credentials. */
void smtps_free(struct smtps *s);
/* Start the session: the greeting becomes due (COMMAND event, cmd CONNECT). */
void smtps_start(struct smtps *s, uint64_t now);

/* Feed client octets; returns how many were consumed (see the header). */
size_t smtps_feed(struct smtps *s, const void *p, size_t n, uint64_t now);
/* Take the next event; false when there is none. */
bool smtps_event(struct smtps *s, struct smtps_event *ev);
/* True while a DECIDE event waits for its answer. */
bool smtps_pending(const struct smtps *s);

/* Answer the due reply with its default. -EALREADY if none is due. */
int smtps_accept(struct smtps *s, uint64_t now);
/* Answer with "code text\r\n" (text without CRLF; may hold an enhanced
 * code). The outcome is a success only if the default was one and
 * code < 400. AUTH failures of XOAUTH2 send the error challenge first.
 * -EALREADY if nothing is due, -EINVAL for a code outside 200..599. */
int smtps_answer(struct smtps *s, int code, const char *text, uint64_t now);
/* Answer with raw bytes (a test peer misbehaving); the outcome is the
 * default's if ok, a failure otherwise. */
int smtps_answer_raw(struct smtps *s, bool ok, const void *p, size_t n, uint64_t now);
/* Defer the reply to a MESSAGE decision whose default is a success: the
 * transaction ends as accepted, the session reads on (a pipelining client
 * sends its next message), and the replies written after this one are held
 * until it is known. Returns a ticket (> 0) for smtps_resolve; -EALREADY
 * when no MESSAGE reply is due, -EINVAL when its default is a refusal,
 * -EBUSY when limits.max_deferred replies are owed already (feed stops
 * reading before that happens), -ENOMEM. The engine's listener defers the reply
 * until the message's group commit, so one session keeps several messages
 * in one commit. */
int smtps_defer(struct smtps *s, uint64_t now);
/* The deferred reply `ticket` is "code text"; it (and what was held behind
 * it, once every earlier one is known) becomes output. -ENOENT for an
 * unknown ticket, -EINVAL for a bad code. */
int smtps_resolve(struct smtps *s, int ticket, int code, const char *text);
/* Replies owed (deferred and not yet resolved). smtps_done is false while
 * any is owed, and no timeout runs. */
uint32_t smtps_deferred(const struct smtps *s);
/* Append raw bytes to the output outside any reply. */
void smtps_emit_raw(struct smtps *s, const void *p, size_t n);
/* End the session now: `line` (e.g. "421 4.3.2 ...\r\n", or NULL) is the
 * last output. Any due reply is dropped. */
void smtps_shutdown(struct smtps *s, const char *line);

/* Reply bytes to send: true and (p, n) when there are some. */
bool smtps_output(const struct smtps *s, const uint8_t **p, size_t *n);
void smtps_output_consumed(struct smtps *s, size_t n);

/* The 220 to STARTTLS was answered: run the handshake. */
bool smtps_want_tls(const struct smtps *s);
/* The handshake finished: the session starts over (RFC 3207: EHLO and
 * AUTH forgotten). Also for an implicit-TLS connection before smtps_start. */
void smtps_tls_done(struct smtps *s, uint64_t now);
/* The session is over: send the output, then close. */
bool smtps_done(const struct smtps *s);

/* Monotonic ms when smtps_timeout must be called; UINT64_MAX for none
 * (a reply is due: the driver's own work is not the client's timeout). */
uint64_t smtps_deadline(const struct smtps *s);
/* The deadline passed: 421 4.4.2 and the session is over. Returns 1 if it
 * fired, 0 if the deadline had not come. */
int smtps_timeout(struct smtps *s, uint64_t now);

enum smtps_state smtps_get_state(const struct smtps *s);
bool smtps_authenticated(const struct smtps *s);
bool smtps_tls(const struct smtps *s);
/* Recipients accepted in the open transaction. */
uint32_t smtps_rcpts(const struct smtps *s);
/* Error replies sent so far. */
uint32_t smtps_errors(const struct smtps *s);
