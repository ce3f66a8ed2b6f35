/* smtps_int.h: what the files of the SMTP server session (src/smtp/smtps*.c)
 * share and nothing else includes. The session is one module (public
 * prefix smtps_, include/smtp/smtps.h) cut into files by job:
 *
 *   smtps.c       the session's life, the driver's answers (accept, answer,
 *                 defer/resolve) and what each answer does to the state,
 *                 output, STARTTLS's reset, timeouts
 *   smtps_cmd.c   command lines: verbs, MAIL/RCPT paths and parameters,
 *                 the EHLO reply, the default reply to each command, AUTH
 *   smtps_feed.c  input: splitting bytes into command lines, DATA bodies
 *                 (dot-unstuffing) and BDAT chunks read in place
 *
 * The functions declared here are internal (hidden visibility); like the
 * public ones they are called only by the thread that owns the session,
 * never touch a socket, TLS, a clock or a log, and never allocate per byte. */
#pragma once

#include "smtps.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"

#define DEF_MAX_LINE 12288u /* RFC 4954 section 4: AUTH lines up to 12288 octets */
#define DEF_MAX_RCPTS 1000u
#define DEF_PENDING_OUT 65536u
#define DEF_TIMEOUT 300u
#define BDAT_DIGITS 18 /* a chunk size has at most 18 digits (< 10^18) */
#define LINE_KEEP 4096 /* a line buffer grown beyond this is released after the line */

/* Body parser states (dot-unstuffing across reads). */
enum { B_BOL, B_MID, B_DOT, B_DOTCR, B_END };
/* BDAT transaction: none, chunks accepted so far, a chunk failed (the rest
 * of the transaction's chunks are read and discarded until LAST or RSET). */
enum { BDAT_NONE, BDAT_OPEN, BDAT_FAILED };
/* The reply the chunk being read gets once its octets are in. */
enum { CH_OK, CH_NEED_MAIL, CH_NEED_RCPT, CH_DISCARD };
/* AUTH continuation steps. */
enum { A_NONE, A_PLAIN, A_LOGIN_USER, A_LOGIN_PASS, A_XOAUTH2, A_XOAUTH2_ERR };
/* What the answer to a due reply does. */
enum {
  P_NONE, P_GREET, P_EHLO, P_HELO, P_MAIL, P_RCPT, P_DATA, P_CHUNK, P_MESSAGE, P_RSET, P_QUIT,
  P_STARTTLS, P_AUTH_CMD, P_AUTH_CRED, P_OTHER
};

struct smtps {
  struct smtps_params p;
  enum smtps_state st;
  uint8_t pend;       /* P_*: what answering the due reply does */
  uint8_t body_state, auth_step, bdat, chunk_err;
  bool decide;        /* a reply is due */
  bool ev_ready;      /* ev not yet taken */
  bool line_done;     /* line holds a processed line (reset before the next) */
  bool discard;       /* skipping the rest of an over-long line */
  bool helo_seen, esmtp, has_mail, too_big, tls, authed, chunk_last, want_tls;
  uint32_t nrcpt, errors, auth_mech;
  uint64_t msg_bytes, chunk_size, chunk_left, deadline;
  size_t ir_off, ir_len; /* AUTH initial response in line */
  struct smtps_event ev;
  struct buf line;    /* the command line being read or processed */
  struct buf out;     /* replies not yet sent */
  struct buf scratch; /* EHLO reply / greeting text; AUTH data (wiped) */
  char small[96];     /* short formatted default replies */
  /* Deferred message replies (smtps_defer), in order: hole i's reply, once
   * resolved, goes out before tail[i] (what was written after it). */
  uint32_t nholes, next_ticket;
  size_t parked;      /* bytes in the tails */
  struct hole {
    uint32_t ticket;
    bool resolved;
    struct buf reply, tail;
  } *holes; /* SMTPS_DEFER_MAX of them, allocated at the first smtps_defer */
};

#define R(s) s, sizeof(s) - 1

/* ---- helpers shared by the files ---- */

static inline uint64_t secs_ms(uint32_t s) { return (uint64_t)s * 1000u; }

static inline void set_deadline(struct smtps *s, uint64_t now)
{
  bool data = s->st == SMTPS_ST_DATA || s->st == SMTPS_ST_BDAT;
  s->deadline = now + secs_ms(data ? s->p.timeouts.data : s->p.timeouts.command);
}

static inline void out(struct smtps *s, const void *p, size_t n)
{
  if (s->nholes) { /* behind a reply not yet known: held in order */
    buf_append(&s->holes[s->nholes - 1].tail, p, n);
    s->parked += n;
    return;
  }
  buf_append(&s->out, p, n);
}


static inline void reset_txn(struct smtps *s)
{
  s->has_mail = false;
  s->nrcpt = 0;
  s->too_big = false;
  s->msg_bytes = 0;
  s->bdat = BDAT_NONE;
}

static inline void wipe_scratch(struct smtps *s)
{
  buf_done(&s->scratch, 1);
}

/* A reply is due: queue the DECIDE event. arg fields are set by the caller. */
static inline void decide(struct smtps *s, enum smtps_ev_type type, int pend,
                          enum smtps_cmd cmd, bool ok, int code, const char *reply, size_t len)
{
  s->ev.type = type;
  s->ev.cmd = cmd;
  s->ev.ok = ok;
  s->ev.code = code;
  s->ev.reply = reply;
  s->ev.reply_len = len;
  s->pend = (uint8_t)pend;
  s->decide = true;
  s->ev_ready = true;
}

static inline void clear_ev(struct smtps *s)
{
  memset(&s->ev, 0, sizeof(s->ev));
  s->ev.arg = "";
}

/* A COMMAND decision whose default is a failure (the machine's own check). */
static inline void fail(struct smtps *s, enum smtps_cmd cmd, int code, const char *reply,
                        size_t len)
{
  decide(s, SMTPS_EV_COMMAND, P_NONE, cmd, false, code, reply, len);
}

/* An error reply sent without a decision (line too long, AUTH steps). smtps.c */
void smtps_immediate_error(struct smtps *s, const char *r, size_t n);
/* One complete command line (without CRLF): its event or reply. smtps_cmd.c */
void smtps_command(struct smtps *s, const char *l, size_t n);
/* One line of an AUTH exchange. smtps_cmd.c */
void smtps_auth_line(struct smtps *s, const char *p, size_t n);
/* The AUTH exchange is over: back to commands, its data wiped. smtps_cmd.c */
void smtps_auth_end(struct smtps *s);
