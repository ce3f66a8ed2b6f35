/* smtpc_int.h: what the smtpc module's files share (smtpc.c,
 * smtpc_state.c, smtpc_out.c, smtpc_auth.c, smtpc_txn.c, smtpc_bdat.c)
 * and nobody else may include: the session struct, the per-state tables
 * and the functions one file offers the others. Sans-I/O throughout;
 * every function runs on the thread that owns the session. */
#pragma once

#include "smtpc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "panic.h"
#include "smtp_dot.h"

/* every in-flight BDAT transaction may end in one feed (TXN_DONE each;
 * no RCPT_RESULT in that mode), plus READY, FAILED and a few more */
#define EVQ_CAP (8 + SMTPC_PIPE_MAX)
#define DEF_OUT 4096
#define MIN_OUT 1024

struct evq_item {
  struct smtpc_event ev;
  uint32_t count; /* RCPT_RESULT: consecutive indexes from ev.index */
};

struct smtpc {
  enum smtpc_state st;
  uint64_t deadline;
  struct smtpc_timeouts to;
  struct smtpc_limits lim;
  uint32_t max_rcpts;
  enum smtpc_tls_mode tls_mode;
  bool implicit_tls, allow_plain, send8;
  bool tls_active, authed;
  uint32_t ext, mechs;
  uint64_t peer_size;
  char *ehlo_name;

  /* credentials (wiped after use) */
  enum smtpc_auth_type auth_type;
  char *user, *pass;
  uint8_t auth_step;

  /* output */
  uint8_t *out;
  size_t out_cap, out_off, out_len;
  bool out_secret; /* a secret (AUTH line) is in out[out_off, out_len) */
  bool out_secmem; /* out comes from secmem (credentials were set) */

  /* input */
  struct smtp_reply rp;
  uint32_t unsolicited;

  /* events */
  struct evq_item evq[EVQ_CAP];
  uint8_t ev_head, ev_n;
  char fail_text[SMTPC_TEXT_MAX];
  char info_text[SMTPC_TEXT_MAX];

  /* the transaction */
  bool has_txn;
  struct smtpc_txn txn;
  /* RFC 2920 across transactions: the previous transaction, its body and
   * dot sent, waits for its final reply while txn's commands follow it */
  bool has_prev;
  struct smtpc_txn prev;
  uint32_t send_cur, recv_cur; /* 0 = MAIL, 1..n = RCPT, n+1 = DATA */
  uint32_t accepted;
  bool pipelined, mail_failed, data_sent, dot_only, body_last;
  struct smtp_dot dot;
  struct smtpc_result *ev_results; /* results of the last txn, for RCPT_RESULT */

  /* RFC 3030 BDAT: transactions in flight, oldest first; the newest may
   * still be sending its commands (send_cur) or chunks */
  bool want_chunking, chunked;
  bool cq_offered; /* a READY with SMTPC_F_PIPELINED is queued */
  bool cq_rset;    /* a transaction failed: RSET once the pipeline drains */
  bool cq_cut;     /* the transaction being sent failed: no more chunks */
  uint8_t depth, cq_head, cq_n;
  struct cq_item {
    struct smtpc_txn t;
    uint32_t recv;     /* replies in: 0 MAIL, 1..nrcpt RCPT, then one per chunk */
    uint32_t chunks;   /* BDAT commands queued */
    uint32_t accepted; /* RCPTs accepted */
    bool mail_failed, failed, sent_all, done;
  } cq[SMTPC_PIPE_MAX];
};


/* ---- smtpc_state.c: the per-state table (STYLE #6), events, results ---- */

struct smtpc_state_row {
  const char *name;        /* "RCPT" */
  const char *doing;       /* "sending RCPT TO": what we were doing, for log lines */
  uint8_t stage;           /* Momentum connection stage */
  const char *timeout_opt; /* "RcptTo_Timeout"; NULL: none */
};
extern const struct smtpc_state_row smtpc_tab[SMTPC_ST_COUNT];

/* Commands and chunks of `it` written so far (the newest may be short of
 * its commands while the output buffer is full). */
static inline uint32_t smtpc_cq_written(const struct smtpc *s, const struct cq_item *it)
{
  const struct cq_item *tail = &s->cq[(s->cq_head + s->cq_n - 1u) % SMTPC_PIPE_MAX];
  uint32_t cmds = (it == tail && s->st == SMTPC_ST_MAIL) ? s->send_cur : it->t.nrcpt + 1;
  return cmds + it->chunks;
}

/* With BDAT the session's state says what is being sent; the reply
 * awaited next (the oldest transaction's) decides the timeout, the stage
 * and the wording: MAIL, RCPT, a chunk (BODY) or the last chunk (DOT). */
static inline enum smtpc_state smtpc_awaited(const struct smtpc *s)
{
  if (!s->chunked || !s->cq_n ||
      (s->st != SMTPC_ST_MAIL && s->st != SMTPC_ST_BODY && s->st != SMTPC_ST_DOT))
    return s->st;
  const struct cq_item *h = &s->cq[s->cq_head];
  uint32_t written = smtpc_cq_written(s, h);
  if (h->recv >= written)
    return s->st; /* nothing awaited: sending */
  if (h->recv == 0)
    return SMTPC_ST_MAIL;
  if (h->recv <= h->t.nrcpt)
    return SMTPC_ST_RCPT;
  return h->sent_all && h->recv + 1 == written ? SMTPC_ST_DOT : SMTPC_ST_BODY;
}

static inline struct cq_item *smtpc_cq_at(struct smtpc *s, unsigned k)
{
  return &s->cq[(s->cq_head + k) % SMTPC_PIPE_MAX];
}

static inline struct cq_item *smtpc_cq_tail(struct smtpc *s)
{
  return smtpc_cq_at(s, s->cq_n - 1u);
}

/* The small rules of every reply and state change, inline (they were
 * static in the one smtpc.c and run per reply). */

/* The timeout in seconds while awaiting st's reply (0: none). */
static inline uint32_t smtpc_timeout_s(const struct smtpc *s, enum smtpc_state st)
{
  switch (st) {
  case SMTPC_ST_CONNECT: return s->to.connect;
  case SMTPC_ST_TLS_IMPLICIT:
  case SMTPC_ST_BANNER:
  case SMTPC_ST_EHLO:
  case SMTPC_ST_HELO:
  case SMTPC_ST_STARTTLS:
  case SMTPC_ST_TLS:
  case SMTPC_ST_AUTH: return s->to.ehlo;
  case SMTPC_ST_IDLE: return s->to.idle;
  /* with the previous transaction's final reply outstanding, that reply
   * is what is awaited first: Body_Timeout */
  case SMTPC_ST_MAIL: return s->has_prev ? s->to.body : s->to.mailfrom;
  case SMTPC_ST_RCPT: return s->has_prev ? s->to.body : s->to.rcptto;
  case SMTPC_ST_DATA: return s->has_prev ? s->to.body : s->to.data;
  case SMTPC_ST_BODY:
  case SMTPC_ST_DOT: return s->to.body;
  case SMTPC_ST_RSET:
  case SMTPC_ST_QUIT: return s->to.rset;
  case SMTPC_ST_DONE: return 0;
  default: util_panic("smtpc: bad state %d", (int)st);
  }
}

static inline enum smtpc_outcome smtpc_outcome_of(int code)
{
  switch (code / 100) {
  case 2: return SMTPC_OUT_OK;
  case 4: return SMTPC_OUT_TRANSIENT;
  case 5: return SMTPC_OUT_PERMANENT;
  default: return SMTPC_OUT_NONE;
  }
}

/* Copy a NUL-terminated string, cut to cap - 1 bytes (no printf: this
 * runs for every reply). */
static inline void smtpc_copy_cut(char *dst, size_t cap, const char *src)
{
  size_t n = src ? strnlen(src, cap - 1) : 0;
  memcpy(dst, src ? src : "", n);
  dst[n] = '\0';
}

static inline void smtpc_set_result(struct smtpc_result *r, enum smtpc_outcome o, int code, const char *enh,
                      uint8_t stage, const char *text)
{
  r->outcome = o;
  r->code = code;
  smtpc_copy_cut(r->enhanced, sizeof(r->enhanced), enh);
  r->stage = stage;
  /* text is already sanitised and shorter than SMTPC_TEXT_MAX */
  smtpc_copy_cut(r->text, sizeof(r->text), text);
}

static inline void smtpc_result_from_reply(struct smtpc *s, struct smtpc_result *r, uint8_t stage)
{
  smtpc_set_result(r, smtpc_outcome_of(s->rp.code), s->rp.code, s->rp.enhanced, stage, s->rp.text);
}

static inline void smtpc_set_deadline(struct smtpc *s, uint64_t now)
{
  uint32_t t = smtpc_timeout_s(s, smtpc_awaited(s));
  s->deadline = t ? now + (uint64_t)t * 1000 : UINT64_MAX;
}

static inline void smtpc_enter(struct smtpc *s, enum smtpc_state st, uint64_t now)
{
  s->st = st;
  smtpc_set_deadline(s, now);
}

/* Queue an event (panics on overflow: the queue is sized for the worst
 * case); stage and doing come from what is awaited. */
struct smtpc_event *smtpc_ev_push(struct smtpc *s, enum smtpc_ev_type t);
/* RCPT_RESULT for index idx, merged with a run of consecutive ones. */
void smtpc_ev_rcpt(struct smtpc *s, uint32_t idx);
/* End transaction t: undecided results get the final one; TXN_DONE. */
void smtpc_txn_done(struct smtpc *s, const struct smtpc_txn *t);
void smtpc_txn_finish(struct smtpc *s);
/* The previous transaction ends without its final reply (transient). */
void smtpc_prev_abandon(struct smtpc *s, int code, const char *enh, const char *text);
/* End the session. polite: the stream is in sync, queue a QUIT. */
IMPETUS_PRINTF(6, 7)
void smtpc_fail(struct smtpc *s, enum smtpc_fail_kind kind, uint32_t flags, int code, bool polite,
                const char *fmt, ...);
/* Failure on a server reply: 4xx transient, 5xx `perm5` (or transient). */
void smtpc_fail_reply(struct smtpc *s, bool perm5, uint32_t flags, const char *what);
void smtpc_go_idle(struct smtpc *s, uint64_t now);
void smtpc_send_rset(struct smtpc *s, uint64_t now);

/* ---- smtpc_out.c: the output buffer ---- */

/* No control characters and at most max bytes. */
bool smtpc_clean_str(const char *p, size_t max);
/* Release the output buffer (wiped when it held a secret). */
void smtpc_out_release(struct smtpc *s);
/* Free room at the output tail, compacting first when that helps. */
size_t smtpc_out_room(struct smtpc *s);
/* Append a command line (CRLF added). Returns false when it does not fit. */
IMPETUS_PRINTF(2, 3) bool smtpc_out_cmd(struct smtpc *s, const char *fmt, ...);
/* Append parts[0..n) (n <= 6) and CRLF if it fits. */
bool smtpc_out_parts(struct smtpc *s, const char *const *parts, size_t n);
/* Decimal digits of v into buf (>= 21 bytes), NUL-terminated. */
const char *smtpc_u64_dec(uint64_t v, char *buf);
/* Append a line that must fit (the buffer is sized for it), else panic. */
void smtpc_out_must(struct smtpc *s, const char *line);

/* ---- smtpc_auth.c: EHLO, STARTTLS, AUTH ---- */

void smtpc_wipe_creds(struct smtpc *s);
/* Take a credential set (copied into secmem); -EINVAL or -EBUSY. */
int smtpc_set_creds(struct smtpc *s, const struct smtpc_auth *a);
/* EHLO (or HELO after a 500/502 to it), forgetting what was learnt. */
void smtpc_send_hello(struct smtpc *s, bool ehlo, uint64_t now);
/* After the (final) EHLO/HELO: STARTTLS, AUTH, or ready. */
void smtpc_after_ehlo(struct smtpc *s, uint64_t now);
void smtpc_start_auth(struct smtpc *s, uint64_t now);
/* One EHLO line after the first: an extension keyword and its params. */
void smtpc_ehlo_line(struct smtpc *s);
void smtpc_on_auth_reply(struct smtpc *s, uint64_t now);

/* ---- smtpc_txn.c: MAIL/RCPT/DATA and the body ---- */

/* Write command i of t (0 MAIL, 1..nrcpt RCPT, then DATA) if it fits. */
bool smtpc_write_cmd_of(struct smtpc *s, const struct smtpc_txn *t, uint32_t i);
/* Advance the send cursor as far as pipelining and output space allow. */
void smtpc_fill_cmds(struct smtpc *s);
enum smtpc_state smtpc_cursor_state(const struct smtpc *s);
/* Nothing was accepted: decide the final result. */
void smtpc_settle_unaccepted(struct smtpc_txn *t, bool mail_failed);
void smtpc_on_txn_reply(struct smtpc *s, uint64_t now);
void smtpc_on_final_reply(struct smtpc *s, uint64_t now);
void smtpc_on_prev_reply(struct smtpc *s, uint64_t now);
void smtpc_body_try_finish(struct smtpc *s, uint64_t now);

/* ---- smtpc_bdat.c: BDAT transactions in flight ---- */

bool smtpc_cq_expect(const struct smtpc *s);
/* Offer the next transaction (once per queued READY). */
void smtpc_cq_offer(struct smtpc *s);
/* Withdraw a queued offer (it becomes an event nobody sees). */
void smtpc_cq_unoffer(struct smtpc *s);
/* The session ends under the transactions in flight (transient). */
void smtpc_cq_abandon(struct smtpc *s, int code, const char *enh, const char *text, uint8_t stage);
/* Write the newest transaction's MAIL/RCPT; all written: NEED_BODY. */
void smtpc_cq_fill(struct smtpc *s, uint64_t now);
void smtpc_on_chunk_reply(struct smtpc *s, uint64_t now);
