/* smtpc.c owns the sans-I/O SMTP client session: states, replies,
 * pipelining cursors, AUTH bytes, the output buffer and the event queue.
 * It must never touch a socket, TLS, a clock or a log, and never allocate
 * per reply or per byte (the output buffer is sized at smtpc_new; only a
 * deferred credential set may grow it once). One session is used by the
 * thread that owns its connection. See smtpc.h for the driver contract. */
#include "smtpc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "secmem.h"
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

/* ---- per-state tables (STYLE #6) ---- */

static const char *const state_name[SMTPC_ST_COUNT] = {
  [SMTPC_ST_CONNECT] = "CONNECT", [SMTPC_ST_TLS_IMPLICIT] = "TLS_IMPLICIT",
  [SMTPC_ST_BANNER] = "BANNER", [SMTPC_ST_EHLO] = "EHLO", [SMTPC_ST_HELO] = "HELO",
  [SMTPC_ST_STARTTLS] = "STARTTLS", [SMTPC_ST_TLS] = "TLS",
  [SMTPC_ST_AUTH] = "AUTH", [SMTPC_ST_IDLE] = "IDLE",
  [SMTPC_ST_MAIL] = "MAIL", [SMTPC_ST_RCPT] = "RCPT", [SMTPC_ST_DATA] = "DATA",
  [SMTPC_ST_BODY] = "BODY", [SMTPC_ST_DOT] = "DOT", [SMTPC_ST_RSET] = "RSET",
  [SMTPC_ST_QUIT] = "QUIT", [SMTPC_ST_DONE] = "DONE",
};

static const char *const state_doing[SMTPC_ST_COUNT] = {
  [SMTPC_ST_CONNECT] = "connecting", [SMTPC_ST_TLS_IMPLICIT] = "in the TLS handshake",
  [SMTPC_ST_BANNER] = "reading the banner", [SMTPC_ST_EHLO] = "sending EHLO",
  [SMTPC_ST_HELO] = "sending HELO", [SMTPC_ST_STARTTLS] = "sending STARTTLS",
  [SMTPC_ST_TLS] = "in the TLS handshake",
  [SMTPC_ST_AUTH] = "authenticating", [SMTPC_ST_IDLE] = "idle",
  [SMTPC_ST_MAIL] = "sending MAIL FROM", [SMTPC_ST_RCPT] = "sending RCPT TO",
  [SMTPC_ST_DATA] = "sending DATA", [SMTPC_ST_BODY] = "sending the body",
  [SMTPC_ST_DOT] = "reading the confirmation", [SMTPC_ST_RSET] = "sending RSET",
  [SMTPC_ST_QUIT] = "sending QUIT", [SMTPC_ST_DONE] = "finished",
};

/* Momentum connection stages (reference/momentum.md 7.1). */
static const uint8_t state_stage[SMTPC_ST_COUNT] = {
  [SMTPC_ST_CONNECT] = 0, [SMTPC_ST_TLS_IMPLICIT] = 17, [SMTPC_ST_BANNER] = 12,
  [SMTPC_ST_EHLO] = 10, [SMTPC_ST_HELO] = 10, [SMTPC_ST_STARTTLS] = 15, [SMTPC_ST_TLS] = 17,
  [SMTPC_ST_AUTH] = 11, [SMTPC_ST_IDLE] = 1,
  [SMTPC_ST_MAIL] = 2, [SMTPC_ST_RCPT] = 4, [SMTPC_ST_DATA] = 6, [SMTPC_ST_BODY] = 8,
  [SMTPC_ST_DOT] = 9, [SMTPC_ST_RSET] = 13, [SMTPC_ST_QUIT] = 1, [SMTPC_ST_DONE] = 1,
};

static const char *const state_timeout_opt[SMTPC_ST_COUNT] = {
  [SMTPC_ST_CONNECT] = "Connect_Timeout", [SMTPC_ST_TLS_IMPLICIT] = "EHLO_Timeout",
  [SMTPC_ST_BANNER] = "EHLO_Timeout", [SMTPC_ST_EHLO] = "EHLO_Timeout",
  [SMTPC_ST_HELO] = "EHLO_Timeout", [SMTPC_ST_STARTTLS] = "EHLO_Timeout",
  [SMTPC_ST_TLS] = "EHLO_Timeout",
  [SMTPC_ST_AUTH] = "EHLO_Timeout", [SMTPC_ST_IDLE] = "Idle_Timeout",
  [SMTPC_ST_MAIL] = "MailFrom_Timeout", [SMTPC_ST_RCPT] = "RcptTo_Timeout",
  [SMTPC_ST_DATA] = "Data_Timeout", [SMTPC_ST_BODY] = "Body_Timeout",
  [SMTPC_ST_DOT] = "Body_Timeout", [SMTPC_ST_RSET] = "RSET_Timeout",
  [SMTPC_ST_QUIT] = "RSET_Timeout", [SMTPC_ST_DONE] = NULL,
};

static uint32_t state_timeout_s(const struct smtpc *s, enum smtpc_state st)
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

/* Commands and chunks of `it` written so far (the newest may be short of
 * its commands while the output buffer is full). */
static uint32_t cq_written(const struct smtpc *s, const struct cq_item *it)
{
  const struct cq_item *tail = &s->cq[(s->cq_head + s->cq_n - 1u) % SMTPC_PIPE_MAX];
  uint32_t cmds = (it == tail && s->st == SMTPC_ST_MAIL) ? s->send_cur : it->t.nrcpt + 1;
  return cmds + it->chunks;
}

/* With BDAT the session's state says what is being sent; the reply
 * awaited next (the oldest transaction's) decides the timeout, the stage
 * and the wording: MAIL, RCPT, a chunk (BODY) or the last chunk (DOT). */
static enum smtpc_state awaited(const struct smtpc *s)
{
  if (!s->chunked || !s->cq_n ||
      (s->st != SMTPC_ST_MAIL && s->st != SMTPC_ST_BODY && s->st != SMTPC_ST_DOT))
    return s->st;
  const struct cq_item *h = &s->cq[s->cq_head];
  uint32_t written = cq_written(s, h);
  if (h->recv >= written)
    return s->st; /* nothing awaited: sending */
  if (h->recv == 0)
    return SMTPC_ST_MAIL;
  if (h->recv <= h->t.nrcpt)
    return SMTPC_ST_RCPT;
  return h->sent_all && h->recv + 1 == written ? SMTPC_ST_DOT : SMTPC_ST_BODY;
}

const char *smtpc_state_name(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? state_name[st] : "?";
}
const char *smtpc_state_doing(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? state_doing[st] : "?";
}
uint8_t smtpc_state_stage(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? state_stage[st] : 22;
}
const char *smtpc_timeout_option(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? state_timeout_opt[st] : NULL;
}

const char *smtpc_ev_name(enum smtpc_ev_type t)
{
  switch (t) {
  case SMTPC_EV_NONE: return "NONE";
  case SMTPC_EV_NEED_TLS: return "NEED_TLS";
  case SMTPC_EV_AUTH_RESULT: return "AUTH_RESULT";
  case SMTPC_EV_READY: return "READY";
  case SMTPC_EV_RCPT_RESULT: return "RCPT_RESULT";
  case SMTPC_EV_NEED_BODY: return "NEED_BODY";
  case SMTPC_EV_TXN_DONE: return "TXN_DONE";
  case SMTPC_EV_FAILED: return "FAILED";
  case SMTPC_EV_CLOSED: return "CLOSED";
  default: return "?";
  }
}

const char *smtpc_fail_name(enum smtpc_fail_kind k)
{
  switch (k) {
  case SMTPC_FAIL_TRANSIENT: return "transient";
  case SMTPC_FAIL_PERMANENT: return "permanent";
  case SMTPC_FAIL_PROTOCOL: return "protocol";
  case SMTPC_FAIL_TIMEOUT: return "timeout";
  case SMTPC_FAIL_NETWORK: return "network";
  default: return "?";
  }
}

/* ---- helpers ---- */

static uint32_t or_default(uint32_t v, uint32_t d) { return v ? v : d; }

static bool clean_str(const char *p, size_t max)
{
  size_t n = 0;
  for (; p[n]; n++) {
    unsigned char c = (unsigned char)p[n];
    if (c < 0x20 || c == 0x7f || n >= max)
      return false;
  }
  return true;
}

static void wipe_free(char **p)
{
  secmem_free(*p); /* wipes */
  *p = NULL;
}

/* Release the output buffer (wiped when it held a secret). */
static void out_release(struct smtpc *s)
{
  if (s->out_secmem) {
    secmem_free(s->out);
  } else {
    if (s->out_secret)
      util_wipe(s->out, s->out_cap);
    free(s->out);
  }
  s->out = NULL;
  s->out_secret = s->out_secmem = false;
}

static void wipe_creds(struct smtpc *s)
{
  wipe_free(&s->user);
  wipe_free(&s->pass);
}

static size_t auth_out_need(size_t ulen, size_t plen)
{
  /* XOAUTH2 is the longest: "user=" U "\1auth=Bearer " T "\1\1" */
  return 16 + base64_encoded_size(ulen + plen + 20) + 64 + 512; /* + an unsent EHLO */
}

static int set_creds(struct smtpc *s, const struct smtpc_auth *a)
{
  if (!a || a->type == SMTPC_AUTH_NONE) {
    s->auth_type = SMTPC_AUTH_NONE;
    return 0;
  }
  if (a->type > SMTPC_AUTH_XOAUTH2 || !a->user || !a->pass)
    return -EINVAL;
  size_t ul = strlen(a->user), pl = strlen(a->pass);
  if (ul == 0 || ul > SMTPC_USER_MAX || pl > SMTPC_PASS_MAX)
    return -EINVAL;
  /* CR/LF or NUL inside would break the encodings' framing for LOGIN;
   * PLAIN separates with NUL. Controls are refused everywhere. */
  if (!clean_str(a->user, SMTPC_USER_MAX) || !clean_str(a->pass, SMTPC_PASS_MAX))
    return -EINVAL;
  /* The AUTH lines are built in the output buffer: with credentials it
   * moves to secmem (never in a core dump), once nothing is pending in it
   * (the caller may hold a pointer into pending output). */
  size_t need = auth_out_need(ul, pl);
  if (need > s->out_cap || !s->out_secmem) {
    if (s->out_len > s->out_off) {
      if (need > s->out_cap)
        return -EBUSY;
    } else {
      size_t cap = need > s->out_cap ? need : s->out_cap;
      out_release(s);
      s->out = secmem_xalloc(cap);
      s->out_secmem = true;
      s->out_cap = cap;
      s->out_off = s->out_len = 0;
    }
  }
  wipe_creds(s);
  s->auth_type = a->type;
  s->user = secmem_xstrdup(a->user);
  s->pass = secmem_xstrdup(a->pass);
  return 0;
}

/* ---- output ---- */

static size_t out_room(struct smtpc *s)
{
  if (s->out_off && s->out_off == s->out_len) {
    if (s->out_secret) {
      util_wipe(s->out, s->out_len);
      s->out_secret = false;
    }
    s->out_off = s->out_len = 0;
  } else if (s->out_off && s->out_cap - s->out_len < s->out_cap / 2) {
    size_t n = s->out_len - s->out_off;
    memmove(s->out, s->out + s->out_off, n);
    if (s->out_secret)
      util_wipe(s->out + n, s->out_len - n);
    s->out_off = 0;
    s->out_len = n;
  }
  return s->out_cap - s->out_len;
}

/* Append a command line (CRLF added). Returns false when it does not fit. */
IMPETUS_PRINTF(2, 3) static bool out_cmd(struct smtpc *s, const char *fmt, ...)
{
  size_t room = out_room(s);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf((char *)s->out + s->out_len, room, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n + 2 >= room)
    return false;
  s->out_len += (size_t)n;
  s->out[s->out_len++] = '\r';
  s->out[s->out_len++] = '\n';
  s->unsolicited = 0;
  return true;
}

/* Append the concatenation of parts[0..n) and CRLF if it fits: the
 * per-message commands, built without printf. */
static bool out_parts(struct smtpc *s, const char *const *parts, size_t n)
{
  size_t room = out_room(s), len[6], total = 2;
  UTIL_ASSERT(n <= 6);
  for (size_t k = 0; k < n; k++)
    total += len[k] = strlen(parts[k]);
  if (total >= room)
    return false;
  for (size_t k = 0; k < n; k++) {
    memcpy(s->out + s->out_len, parts[k], len[k]);
    s->out_len += len[k];
  }
  s->out[s->out_len++] = '\r';
  s->out[s->out_len++] = '\n';
  s->unsolicited = 0;
  return true;
}

/* Decimal digits of v into buf (>= 21 bytes), NUL-terminated. */
static const char *u64_dec(uint64_t v, char *buf)
{
  char *p = buf + 20;
  *p = '\0';
  do
    *--p = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  return p;
}

static void out_must(struct smtpc *s, const char *line)
{
  if (!out_cmd(s, "%s", line))
    util_panic("smtpc: output buffer full writing %s", line);
}

/* ---- events ---- */

static struct smtpc_event *ev_push(struct smtpc *s, enum smtpc_ev_type t)
{
  if (s->ev_n >= EVQ_CAP)
    util_panic("smtpc: event queue overflow");
  struct evq_item *it = &s->evq[(s->ev_head + s->ev_n) % EVQ_CAP];
  s->ev_n++;
  memset(it, 0, sizeof(*it));
  it->count = 1;
  it->ev.type = t;
  it->ev.text = "";
  it->ev.stage = state_stage[awaited(s)];
  it->ev.doing = state_doing[awaited(s)];
  return &it->ev;
}

static void ev_rcpt(struct smtpc *s, uint32_t idx)
{
  if (s->ev_n) {
    struct evq_item *tail = &s->evq[(s->ev_head + s->ev_n - 1) % EVQ_CAP];
    if (tail->ev.type == SMTPC_EV_RCPT_RESULT && tail->ev.index + tail->count == idx) {
      tail->count++;
      return;
    }
  }
  struct smtpc_event *e = ev_push(s, SMTPC_EV_RCPT_RESULT);
  e->index = idx;
}

bool smtpc_next_event(struct smtpc *s, struct smtpc_event *ev)
{
  while (s->ev_n && s->evq[s->ev_head].ev.type == SMTPC_EV_NONE) { /* withdrawn */
    s->ev_head = (uint8_t)((s->ev_head + 1) % EVQ_CAP);
    s->ev_n--;
  }
  if (!s->ev_n)
    return false;
  struct evq_item *it = &s->evq[s->ev_head];
  *ev = it->ev;
  if (ev->type == SMTPC_EV_READY && (ev->flags & SMTPC_F_PIPELINED))
    s->cq_offered = false;
  if (ev->type == SMTPC_EV_RCPT_RESULT && s->ev_results) {
    const struct smtpc_result *r = &s->ev_results[ev->index];
    ev->code = r->code;
    memcpy(ev->enhanced, r->enhanced, sizeof(ev->enhanced));
    ev->stage = r->stage;
    ev->text = r->text;
  }
  if (it->ev.type == SMTPC_EV_RCPT_RESULT && it->count > 1) {
    it->count--;
    it->ev.index++;
  } else {
    s->ev_head = (uint8_t)((s->ev_head + 1) % EVQ_CAP);
    s->ev_n--;
  }
  return true;
}

/* ---- results and session end ---- */

static enum smtpc_outcome outcome_of(int code)
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
static void copy_cut(char *dst, size_t cap, const char *src)
{
  size_t n = src ? strnlen(src, cap - 1) : 0;
  memcpy(dst, src ? src : "", n);
  dst[n] = '\0';
}

static void set_result(struct smtpc_result *r, enum smtpc_outcome o, int code,
                       const char *enh, uint8_t stage, const char *text)
{
  r->outcome = o;
  r->code = code;
  copy_cut(r->enhanced, sizeof(r->enhanced), enh);
  r->stage = stage;
  /* text is already sanitised and shorter than SMTPC_TEXT_MAX */
  copy_cut(r->text, sizeof(r->text), text);
}

static void result_from_reply(struct smtpc *s, struct smtpc_result *r, uint8_t stage)
{
  set_result(r, outcome_of(s->rp.code), s->rp.code, s->rp.enhanced, stage, s->rp.text);
}

static void set_deadline(struct smtpc *s, uint64_t now)
{
  uint32_t t = state_timeout_s(s, awaited(s));
  s->deadline = t ? now + (uint64_t)t * 1000 : UINT64_MAX;
}

static void enter(struct smtpc *s, enum smtpc_state st, uint64_t now)
{
  s->st = st;
  set_deadline(s, now);
}

/* End transaction t: results still undecided, or accepted but without a
 * final reply, get `final`'s outcome; then TXN_DONE. */
static void txn_done(struct smtpc *s, const struct smtpc_txn *t)
{
  for (uint32_t i = 0; i < t->nrcpt; i++)
    if (t->results[i].outcome == SMTPC_OUT_NONE)
      t->results[i] = *t->final;
  struct smtpc_event *e = ev_push(s, SMTPC_EV_TXN_DONE);
  e->code = t->final->code;
  memcpy(e->enhanced, t->final->enhanced, sizeof(e->enhanced));
  e->stage = t->final->stage;
  e->text = t->final->text;
  e->final = t->final;
}

static void txn_finish(struct smtpc *s)
{
  if (!s->has_txn)
    return;
  s->has_txn = false;
  txn_done(s, &s->txn);
}

/* The previous transaction ends without its final reply (the session
 * ended): transient, at the stage after the dot. */
static void prev_abandon(struct smtpc *s, int code, const char *enh, const char *text)
{
  if (!s->has_prev)
    return;
  s->has_prev = false;
  set_result(s->prev.final, SMTPC_OUT_TRANSIENT, code, enh, state_stage[SMTPC_ST_DOT], text);
  txn_done(s, &s->prev);
}

static void cq_abandon(struct smtpc *s, int code, const char *enh, const char *text, uint8_t stage);
static void cq_unoffer(struct smtpc *s);

/* End the session. polite: the stream is in sync, queue a QUIT. */
IMPETUS_PRINTF(6, 7)
static void fail(struct smtpc *s, enum smtpc_fail_kind kind, uint32_t flags, int code,
                 bool polite, const char *fmt, ...)
{
  if (s->st == SMTPC_ST_DONE)
    return;
  va_list ap;
  char tmp[SMTPC_TEXT_MAX];
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  /* fmt arguments are our own strings or already-sanitised server text */
  snprintf(s->fail_text, sizeof(s->fail_text), "%s", tmp);
  uint8_t stage = state_stage[awaited(s)];
  const char *enh = code ? s->rp.enhanced : "";
  prev_abandon(s, code, enh, s->fail_text);
  cq_unoffer(s);
  cq_abandon(s, code, enh, s->fail_text, stage);
  if (s->has_txn) {
    set_result(s->txn.final, SMTPC_OUT_TRANSIENT, code, enh, stage, s->fail_text);
    txn_finish(s);
  }
  struct smtpc_event *e = ev_push(s, SMTPC_EV_FAILED);
  e->kind = kind;
  e->flags = flags;
  e->code = code;
  if (code)
    snprintf(e->enhanced, sizeof(e->enhanced), "%s", s->rp.enhanced);
  e->text = s->fail_text;
  wipe_creds(s);
  if (s->out_secret) {
    util_wipe(s->out, s->out_len);
    s->out_secret = false;
  }
  s->out_off = s->out_len = 0; /* nothing queued is worth sending now */
  if (polite)
    out_cmd(s, "QUIT");
  s->st = SMTPC_ST_DONE;
  s->deadline = UINT64_MAX;
}

/* Failure on a server reply: 4xx transient, 5xx `perm5` (or transient). */
static void fail_reply(struct smtpc *s, bool perm5, uint32_t flags, const char *what)
{
  enum smtpc_fail_kind k = (perm5 && s->rp.code / 100 == 5) ? SMTPC_FAIL_PERMANENT : SMTPC_FAIL_TRANSIENT;
  if (s->rp.code / 100 != 4 && s->rp.code / 100 != 5) {
    fail(s, SMTPC_FAIL_PROTOCOL, flags, s->rp.code, true, "unexpected reply %d to %s: %s",
         s->rp.code, what, s->rp.text);
    return;
  }
  fail(s, k, flags, s->rp.code, true, "%s", s->rp.text);
}

static void go_idle(struct smtpc *s, uint64_t now)
{
  enter(s, SMTPC_ST_IDLE, now);
  ev_push(s, SMTPC_EV_READY);
}

static void send_rset(struct smtpc *s, uint64_t now)
{
  out_must(s, "RSET");
  enter(s, SMTPC_ST_RSET, now);
}

/* ---- connection set-up ---- */

static void send_ehlo(struct smtpc *s, uint64_t now)
{
  s->ext = 0;
  s->mechs = 0;
  s->peer_size = 0;
  if (!out_cmd(s, "EHLO %s", s->ehlo_name))
    util_panic("smtpc: output buffer too small for EHLO");
  enter(s, SMTPC_ST_EHLO, now);
}

static const char *mech_name(enum smtpc_auth_type t)
{
  switch (t) {
  case SMTPC_AUTH_PLAIN: return "PLAIN";
  case SMTPC_AUTH_LOGIN: return "LOGIN";
  case SMTPC_AUTH_XOAUTH2: return "XOAUTH2";
  case SMTPC_AUTH_NONE: return "NONE";
  default: return "?";
  }
}

static uint32_t mech_bit(enum smtpc_auth_type t)
{
  switch (t) {
  case SMTPC_AUTH_PLAIN: return SMTPC_MECH_PLAIN;
  case SMTPC_AUTH_LOGIN: return SMTPC_MECH_LOGIN;
  case SMTPC_AUTH_XOAUTH2: return SMTPC_MECH_XOAUTH2;
  case SMTPC_AUTH_NONE: return 0;
  default: return 0;
  }
}

static const char *mechs_text(uint32_t m, char *buf, size_t cap)
{
  snprintf(buf, cap, "%s%s%s%s", (m & SMTPC_MECH_PLAIN) ? " PLAIN" : "",
           (m & SMTPC_MECH_LOGIN) ? " LOGIN" : "", (m & SMTPC_MECH_XOAUTH2) ? " XOAUTH2" : "",
           m ? "" : " none we know");
  return buf + 1;
}

long smtpc_b64_line(const char *str, char *out, size_t cap)
{
  size_t n = strlen(str);
  if (base64_encoded_size(n) > cap)
    return -ENOSPC;
  return (long)base64_encode(str, n, out);
}

long smtpc_auth_plain_ir(const char *user, const char *pass, char *out, size_t cap)
{
  size_t ul = strlen(user), pl = strlen(pass);
  size_t raw = ul + pl + 2;
  static const char pre[] = "AUTH PLAIN ";
  if (sizeof(pre) - 1 + base64_encoded_size(raw) > cap || raw > SMTPC_USER_MAX + SMTPC_PASS_MAX + 2)
    return -ENOSPC;
  char tmp[SMTPC_USER_MAX + SMTPC_PASS_MAX + 2];
  tmp[0] = '\0';
  memcpy(tmp + 1, user, ul);
  tmp[1 + ul] = '\0';
  memcpy(tmp + 2 + ul, pass, pl);
  memcpy(out, pre, sizeof(pre) - 1);
  size_t n = base64_encode(tmp, raw, out + sizeof(pre) - 1);
  util_wipe(tmp, raw);
  return (long)(sizeof(pre) - 1 + n);
}

long smtpc_auth_xoauth2_ir(const char *user, const char *token, char *out, size_t cap)
{
  size_t ul = strlen(user), tl = strlen(token);
  static const char pre[] = "AUTH XOAUTH2 ";
  char tmp[SMTPC_USER_MAX + SMTPC_PASS_MAX + 24];
  if (ul > SMTPC_USER_MAX || tl > SMTPC_PASS_MAX)
    return -ENOSPC;
  int raw = snprintf(tmp, sizeof(tmp), "user=%s\001auth=Bearer %s\001\001", user, token);
  if (raw < 0 || sizeof(pre) - 1 + base64_encoded_size((size_t)raw) > cap) {
    util_wipe(tmp, sizeof(tmp));
    return -ENOSPC;
  }
  memcpy(out, pre, sizeof(pre) - 1);
  size_t n = base64_encode(tmp, (size_t)raw, out + sizeof(pre) - 1);
  util_wipe(tmp, (size_t)raw);
  return (long)(sizeof(pre) - 1 + n);
}

/* Append a secret line built by `len` bytes at the output tail. */
static void out_secret_commit(struct smtpc *s, long n)
{
  if (n < 0)
    util_panic("smtpc: output buffer too small for AUTH (sized at set-up)");
  s->out_len += (size_t)n;
  s->out[s->out_len++] = '\r';
  s->out[s->out_len++] = '\n';
  s->out_secret = true;
  s->unsolicited = 0;
}

static void start_auth(struct smtpc *s, uint64_t now)
{
  char mb[64];
  if (s->auth_type == SMTPC_AUTH_NONE) {
    go_idle(s, now);
    return;
  }
  if (!s->tls_active && !s->allow_plain) {
    fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_AUTH_POLICY, 0, true,
         "AUTH %s refused: the connection is not encrypted (no TLS); set "
         "Outbound_SMTP_AUTH_Allow_Plaintext = true to allow credentials in plaintext",
         mech_name(s->auth_type));
    return;
  }
  if (!(s->ext & SMTPC_EXT_AUTH)) {
    fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_AUTH_POLICY, 0, true,
         "credentials configured (AUTH %s) but the server does not offer AUTH; "
         "not sending unauthenticated", mech_name(s->auth_type));
    return;
  }
  if (!(s->mechs & mech_bit(s->auth_type))) {
    fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_AUTH_POLICY, 0, true,
         "AUTH %s configured but the server offers only: %s", mech_name(s->auth_type),
         mechs_text(s->mechs, mb, sizeof(mb)));
    return;
  }
  size_t room = out_room(s);
  char *o = (char *)s->out + s->out_len;
  s->auth_step = 0;
  switch (s->auth_type) {
  case SMTPC_AUTH_PLAIN:
    out_secret_commit(s, smtpc_auth_plain_ir(s->user, s->pass, o, room - 2));
    wipe_creds(s);
    break;
  case SMTPC_AUTH_XOAUTH2:
    out_secret_commit(s, smtpc_auth_xoauth2_ir(s->user, s->pass, o, room - 2));
    wipe_creds(s);
    break;
  case SMTPC_AUTH_LOGIN:
    out_must(s, "AUTH LOGIN");
    break;
  case SMTPC_AUTH_NONE:
  default: util_panic("smtpc: bad auth type %d", (int)s->auth_type);
  }
  enter(s, SMTPC_ST_AUTH, now);
}

/* After the (final) EHLO/HELO: STARTTLS, AUTH, or ready. */
static void after_ehlo(struct smtpc *s, uint64_t now)
{
  if (!s->tls_active && s->tls_mode != SMTPC_TLS_NO) {
    if (s->ext & SMTPC_EXT_STARTTLS) {
      out_must(s, "STARTTLS");
      enter(s, SMTPC_ST_STARTTLS, now);
      return;
    }
    if (s->tls_mode == SMTPC_TLS_REQUIRED) {
      fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_TLS_POLICY, 0, true,
           "TLS required but the server does not offer STARTTLS");
      return;
    }
  }
  start_auth(s, now);
}

static bool kw_eq(const char *p, size_t n, const char *kw)
{
  return strlen(kw) == n && strncasecmp(p, kw, n) == 0;
}

static uint32_t parse_mechs(const char *p)
{
  uint32_t m = 0;
  while (*p) {
    while (*p == ' ')
      p++;
    const char *w = p;
    while (*p && *p != ' ')
      p++;
    size_t n = (size_t)(p - w);
    if (kw_eq(w, n, "PLAIN"))
      m |= SMTPC_MECH_PLAIN;
    else if (kw_eq(w, n, "LOGIN"))
      m |= SMTPC_MECH_LOGIN;
    else if (kw_eq(w, n, "XOAUTH2"))
      m |= SMTPC_MECH_XOAUTH2;
  }
  return m;
}

/* One EHLO line after the first: an extension keyword and its params. */
static void ehlo_line(struct smtpc *s)
{
  const char *l = s->rp.line;
  size_t n = 0;
  while (l[n] && l[n] != ' ' && l[n] != '=')
    n++;
  const char *arg = l + n;
  if (*arg == ' ' || *arg == '=')
    arg++;
  if (kw_eq(l, n, "PIPELINING"))
    s->ext |= SMTPC_EXT_PIPELINING;
  else if (kw_eq(l, n, "SIZE")) {
    s->ext |= SMTPC_EXT_SIZE;
    char *end;
    unsigned long long v = strtoull(arg, &end, 10);
    s->peer_size = (end != arg && *arg >= '0' && *arg <= '9') ? (uint64_t)v : 0;
  } else if (kw_eq(l, n, "8BITMIME"))
    s->ext |= SMTPC_EXT_8BITMIME;
  else if (kw_eq(l, n, "SMTPUTF8"))
    s->ext |= SMTPC_EXT_SMTPUTF8;
  else if (kw_eq(l, n, "STARTTLS"))
    s->ext |= SMTPC_EXT_STARTTLS;
  else if (kw_eq(l, n, "CHUNKING"))
    s->ext |= SMTPC_EXT_CHUNKING;
  else if (kw_eq(l, n, "ENHANCEDSTATUSCODES"))
    s->ext |= SMTPC_EXT_ENHANCEDSTATUSCODES;
  else if (kw_eq(l, n, "AUTH")) {
    s->ext |= SMTPC_EXT_AUTH;
    s->mechs |= parse_mechs(arg);
  }
}

/* A 334 challenge must be valid base64 (possibly empty). */
static bool challenge_ok(const struct smtp_reply *r)
{
  uint8_t tmp[SMTP_REPLY_LINE_KEEP];
  size_t n = r->line_len;
  if (r->nlines != 1 || n >= SMTP_REPLY_LINE_KEEP - 1)
    return false;
  while (n && r->line[n - 1] == ' ')
    n--;
  return base64_decode(r->line, n, tmp) >= 0;
}

static void on_auth_reply(struct smtpc *s, uint64_t now)
{
  int code = s->rp.code;
  if (code == 334) {
    if (!challenge_ok(&s->rp)) {
      fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "malformed AUTH %s challenge: %s",
           mech_name(s->auth_type), s->rp.text);
      return;
    }
    if (s->auth_type == SMTPC_AUTH_LOGIN && s->auth_step < 2) {
      size_t room = out_room(s);
      const char *v = s->auth_step == 0 ? s->user : s->pass;
      out_secret_commit(s, smtpc_b64_line(v, (char *)s->out + s->out_len, room - 2));
      if (s->auth_step == 1)
        wipe_creds(s);
      s->auth_step++;
      set_deadline(s, now);
      return;
    }
    if (s->auth_type == SMTPC_AUTH_XOAUTH2 && s->auth_step == 0) {
      /* error challenge (base64 JSON): answer empty, read the final reply */
      out_must(s, "");
      s->auth_step = 1;
      set_deadline(s, now);
      return;
    }
    fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected AUTH %s challenge: %s",
         mech_name(s->auth_type), s->rp.text);
    return;
  }
  wipe_creds(s);
  if (code / 100 == 2) {
    s->authed = true;
    struct smtpc_event *e = ev_push(s, SMTPC_EV_AUTH_RESULT);
    e->code = code;
    memcpy(e->enhanced, s->rp.enhanced, sizeof(e->enhanced));
    snprintf(s->info_text, sizeof(s->info_text), "%s", s->rp.text);
    e->text = s->info_text;
    go_idle(s, now);
    return;
  }
  uint32_t fl = (code == 534 || code == 535 || code == 538) ? SMTPC_F_AUTH_REJECTED : 0;
  if (code / 100 == 4 || code / 100 == 5)
    fail(s, SMTPC_FAIL_TRANSIENT, fl, code, true, "AUTH %s failed: %s", mech_name(s->auth_type),
         s->rp.text);
  else
    fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to AUTH: %s", code,
         s->rp.text);
}

/* ---- transactions ---- */

/* Write command i of transaction t (0 MAIL, 1..nrcpt RCPT, then DATA) if
 * it fits. */
static bool write_cmd_of(struct smtpc *s, const struct smtpc_txn *t, uint32_t i)
{
  if (i == 0) {
    char num[21];
    bool sz = (s->ext & SMTPC_EXT_SIZE) && t->size;
    bool b8 = s->send8 && (t->flags & SMTPC_TXN_8BIT) && (s->ext & SMTPC_EXT_8BITMIME);
    bool u8 = (t->flags & SMTPC_TXN_SMTPUTF8) != 0;
    const char *parts[] = {"MAIL FROM:<", t->mail_from, sz ? "> SIZE=" : ">",
                           sz ? u64_dec(t->size, num) : "", b8 ? " BODY=8BITMIME" : "",
                           u8 ? " SMTPUTF8" : ""};
    return out_parts(s, parts, 6);
  }
  if (i <= t->nrcpt) {
    const char *parts[] = {"RCPT TO:<", t->rcpts[i - 1], ">"};
    return out_parts(s, parts, 3);
  }
  if (out_cmd(s, "DATA")) {
    s->data_sent = true;
    return true;
  }
  return false;
}

/* Write the command at the send cursor if it fits. */
static bool write_cmd(struct smtpc *s) { return write_cmd_of(s, &s->txn, s->send_cur); }

/* Advance the send cursor as far as pipelining and output space allow. */
static void fill_cmds(struct smtpc *s)
{
  if (!s->has_txn)
    return;
  uint32_t last = s->txn.nrcpt + 1;
  while (s->send_cur <= last) {
    if (s->mail_failed)
      return;
    if (!s->pipelined && s->send_cur != s->recv_cur)
      return;
    if (s->send_cur == last && !s->pipelined && s->accepted == 0)
      return;
    if (!write_cmd(s))
      return;
    s->send_cur++;
  }
}

static enum smtpc_state cursor_state(const struct smtpc *s)
{
  if (s->recv_cur == 0)
    return SMTPC_ST_MAIL;
  if (s->recv_cur <= s->txn.nrcpt)
    return SMTPC_ST_RCPT;
  return SMTPC_ST_DATA;
}

/* Nothing was accepted: the final result is MAIL's refusal, or "all
 * recipients were refused"; transient when any refusal was (the best
 * outcome of them). */
static void settle_unaccepted(struct smtpc_txn *t, bool mail_failed)
{
  if (t->final->outcome == SMTPC_OUT_NONE) {
    if (mail_failed)
      set_result(t->final, t->results[0].outcome, t->results[0].code, t->results[0].enhanced, 2,
                 t->results[0].text);
    else
      set_result(t->final, SMTPC_OUT_PERMANENT, 0, "", 4, "all recipients were refused");
  }
  for (uint32_t i = 0; i < t->nrcpt && t->final->outcome == SMTPC_OUT_PERMANENT; i++)
    if (t->results[i].outcome == SMTPC_OUT_TRANSIENT)
      t->final->outcome = SMTPC_OUT_TRANSIENT;
}

/* The group's outstanding replies are all in: decide what comes next. */
static void group_settled(struct smtpc *s, uint64_t now)
{
  struct smtpc_txn *t = &s->txn;
  /* nothing accepted (or MAIL failed): no DATA, or DATA already refused */
  if (s->mail_failed || s->accepted == 0) {
    settle_unaccepted(t, s->mail_failed);
    txn_finish(s);
    send_rset(s, now);
    return;
  }
  enter(s, cursor_state(s), now);
}

static void on_txn_reply(struct smtpc *s, uint64_t now)
{
  struct smtpc_txn *t = &s->txn;
  uint32_t idx = s->recv_cur++;
  int code = s->rp.code;
  int cls = code / 100;
  if (idx == 0) {
    if (cls != 2 && cls != 4 && cls != 5) {
      fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to MAIL FROM: %s", code,
           s->rp.text);
      return;
    }
    if (cls != 2) {
      s->mail_failed = true;
      for (uint32_t i = 0; i < t->nrcpt; i++) {
        result_from_reply(s, &t->results[i], 2);
        ev_rcpt(s, i);
      }
      result_from_reply(s, t->final, 2);
    }
  } else if (idx <= t->nrcpt) {
    if (!s->mail_failed) {
      if (cls != 2 && cls != 4 && cls != 5) {
        fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to RCPT TO: %s", code,
             s->rp.text);
        return;
      }
      result_from_reply(s, &t->results[idx - 1], 4);
      if (cls == 2)
        s->accepted++;
      ev_rcpt(s, idx - 1);
    }
  } else {
    /* DATA */
    if (code == 354) {
      if (!s->mail_failed && s->accepted > 0) {
        enter(s, SMTPC_ST_BODY, now);
        smtp_dot_init(&s->dot);
        s->body_last = false;
        ev_push(s, SMTPC_EV_NEED_BODY);
        return;
      }
      /* RFC 2920 3.1: DATA accepted with no valid recipient: end it empty */
      out_must(s, ".");
      s->dot_only = true;
      enter(s, SMTPC_ST_DOT, now);
      return;
    }
    if (!s->mail_failed && s->accepted > 0) {
      if (cls != 4 && cls != 5) {
        fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to DATA: %s", code,
             s->rp.text);
        return;
      }
      result_from_reply(s, t->final, 6);
      txn_finish(s);
      send_rset(s, now);
      return;
    }
  }
  /* more replies outstanding, or more commands to send? */
  fill_cmds(s);
  if (s->recv_cur < s->send_cur) {
    enter(s, cursor_state(s), now);
    return;
  }
  /* recv caught up with send: lock-step, DATA decision, or settled */
  if (s->send_cur <= t->nrcpt + 1 && !s->mail_failed && !(s->send_cur == t->nrcpt + 1 && s->accepted == 0)) {
    /* waiting for output space to send more */
    enter(s, cursor_state(s), now);
    return;
  }
  group_settled(s, now);
}

static void on_final_reply(struct smtpc *s, uint64_t now)
{
  struct smtpc_txn *t = &s->txn;
  if (s->dot_only) {
    s->dot_only = false;
    settle_unaccepted(t, false);
    txn_finish(s);
    send_rset(s, now);
    return;
  }
  int cls = s->rp.code / 100;
  if (cls != 2 && cls != 4 && cls != 5) {
    fail(s, SMTPC_FAIL_PROTOCOL, 0, s->rp.code, false, "unexpected reply %d after the body: %s",
         s->rp.code, s->rp.text);
    return;
  }
  result_from_reply(s, t->final, 9);
  txn_finish(s);
  if (cls == 2)
    go_idle(s, now);
  else
    send_rset(s, now);
}

/* The previous transaction's final reply, read while the next one's
 * commands are outstanding. A refusal needs no RSET: the server has ended
 * that transaction and the MAIL after the dot starts a new one. */
static void on_prev_reply(struct smtpc *s, uint64_t now)
{
  int cls = s->rp.code / 100;
  if (cls != 2 && cls != 4 && cls != 5) {
    fail(s, SMTPC_FAIL_PROTOCOL, 0, s->rp.code, false, "unexpected reply %d after the body: %s",
         s->rp.code, s->rp.text);
    return;
  }
  s->has_prev = false;
  result_from_reply(s, s->prev.final, state_stage[SMTPC_ST_DOT]);
  txn_done(s, &s->prev);
  set_deadline(s, now); /* now waiting for this transaction's own replies */
}

/* ---- BDAT (RFC 3030): transactions in flight ---- */

static struct cq_item *cq_at(struct smtpc *s, unsigned k)
{
  return &s->cq[(s->cq_head + k) % SMTPC_PIPE_MAX];
}

static struct cq_item *cq_tail(struct smtpc *s) { return cq_at(s, s->cq_n - 1u); }

static bool cq_expect(const struct smtpc *s)
{
  return s->cq_n > 0 && s->cq[s->cq_head].recv < cq_written(s, &s->cq[s->cq_head]);
}

/* Offer the next transaction (once per queued READY). */
static void cq_offer(struct smtpc *s)
{
  if (s->cq_offered || s->cq_rset || s->cq_n >= s->depth || s->st != SMTPC_ST_DOT)
    return;
  s->cq_offered = true;
  struct smtpc_event *e = ev_push(s, SMTPC_EV_READY);
  e->flags = SMTPC_F_PIPELINED;
}

/* Withdraw a queued offer (it becomes an event nobody sees). */
static void cq_unoffer(struct smtpc *s)
{
  if (!s->cq_offered)
    return;
  s->cq_offered = false;
  for (unsigned k = 0; k < s->ev_n; k++) {
    struct smtpc_event *e = &s->evq[(s->ev_head + k) % EVQ_CAP].ev;
    if (e->type == SMTPC_EV_READY && (e->flags & SMTPC_F_PIPELINED))
      e->type = SMTPC_EV_NONE;
  }
}

/* `it` is over for the caller: TXN_DONE (once). */
static void cq_done(struct smtpc *s, struct cq_item *it)
{
  if (it->done)
    return;
  it->done = true;
  if (it->mail_failed || it->accepted == 0)
    settle_unaccepted(&it->t, it->mail_failed);
  if (it->mail_failed || it->accepted == 0 || it->failed)
    s->cq_rset = true;
  txn_done(s, &it->t);
}

/* The session ends under the transactions in flight: those without a
 * decided final reply get a transient one. */
static void cq_abandon(struct smtpc *s, int code, const char *enh, const char *text, uint8_t stage)
{
  while (s->cq_n) {
    struct cq_item *it = &s->cq[s->cq_head];
    if (!it->done && it->t.final->outcome == SMTPC_OUT_NONE && !it->mail_failed &&
        !(it->recv > it->t.nrcpt && it->accepted == 0))
      set_result(it->t.final, SMTPC_OUT_TRANSIENT, code, enh, stage, text);
    cq_done(s, it);
    s->cq_head = (uint8_t)((s->cq_head + 1) % SMTPC_PIPE_MAX);
    s->cq_n--;
  }
}

/* Write the newest transaction's MAIL/RCPT as space allows; all written:
 * NEED_BODY at once (BDAT waits for nothing). */
static void cq_fill(struct smtpc *s, uint64_t now)
{
  if (s->st != SMTPC_ST_MAIL || !s->cq_n)
    return;
  struct cq_item *it = cq_tail(s);
  while (s->send_cur <= it->t.nrcpt) {
    if (!write_cmd_of(s, &it->t, s->send_cur))
      return;
    s->send_cur++;
  }
  enter(s, SMTPC_ST_BODY, now);
  ev_push(s, SMTPC_EV_NEED_BODY);
}

static void on_chunk_reply(struct smtpc *s, uint64_t now)
{
  struct cq_item *it = &s->cq[s->cq_head];
  struct smtpc_txn *t = &it->t;
  uint32_t idx = it->recv++;
  int code = s->rp.code, cls = code / 100;
  const char *what = idx == 0 ? "MAIL FROM" : idx <= t->nrcpt ? "RCPT TO" : "BDAT";
  if (cls != 2 && cls != 4 && cls != 5) {
    fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to %s: %s", code, what,
         s->rp.text);
    return;
  }
  set_deadline(s, now); /* progress */
  if (it->done) {
    /* replies to what an ended transaction had already sent */
  } else if (idx == 0) {
    if (cls != 2) {
      it->mail_failed = true;
      for (uint32_t i = 0; i < t->nrcpt; i++)
        result_from_reply(s, &t->results[i], 2);
      if (code == 503) /* out of step after an earlier failure: not this message's fault */
        for (uint32_t i = 0; i < t->nrcpt; i++)
          t->results[i].outcome = SMTPC_OUT_TRANSIENT;
    }
  } else if (idx <= t->nrcpt) {
    if (!it->mail_failed) {
      result_from_reply(s, &t->results[idx - 1], 4);
      if (cls == 2)
        it->accepted++;
    }
  } else if (!it->mail_failed && it->accepted > 0) {
    bool last = it->sent_all && it->recv == cq_written(s, it);
    if (cls != 2) {
      result_from_reply(s, t->final, last ? 9 : 8);
      it->failed = true;
    } else if (last) {
      result_from_reply(s, t->final, 9);
    }
  }
  /* the transaction still being sent failed: end it now, send no more */
  if (!it->done && !it->sent_all &&
      (it->mail_failed || it->failed || (it->recv > t->nrcpt && it->accepted == 0))) {
    it->sent_all = true;
    s->cq_cut = true;
    cq_done(s, it);
    if (s->st == SMTPC_ST_MAIL || s->st == SMTPC_ST_BODY)
      enter(s, SMTPC_ST_DOT, now);
  }
  if (!it->sent_all || it->recv < cq_written(s, it))
    return;
  cq_done(s, it);
  s->cq_head = (uint8_t)((s->cq_head + 1) % SMTPC_PIPE_MAX);
  s->cq_n--;
  if (s->cq_n == 0 && s->st == SMTPC_ST_DOT) {
    cq_unoffer(s); /* a queued offer is stale: the plain READY follows */
    if (s->cq_rset) {
      s->cq_rset = false;
      send_rset(s, now);
    } else {
      go_idle(s, now);
    }
    return;
  }
  set_deadline(s, now); /* the next transaction's reply is awaited now */
  cq_offer(s);
}

/* ---- replies ---- */

static bool outstanding(const struct smtpc *s)
{
  if (s->chunked && s->cq_n &&
      (s->st == SMTPC_ST_MAIL || s->st == SMTPC_ST_BODY || s->st == SMTPC_ST_DOT))
    return cq_expect(s);
  switch (s->st) {
  case SMTPC_ST_BANNER:
  case SMTPC_ST_EHLO:
  case SMTPC_ST_HELO:
  case SMTPC_ST_STARTTLS:
  case SMTPC_ST_AUTH:
  case SMTPC_ST_DOT:
  case SMTPC_ST_RSET:
  case SMTPC_ST_QUIT: return true;
  case SMTPC_ST_MAIL:
  case SMTPC_ST_RCPT:
  case SMTPC_ST_DATA: return s->has_prev || s->recv_cur < s->send_cur;
  case SMTPC_ST_CONNECT:
  case SMTPC_ST_TLS_IMPLICIT:
  case SMTPC_ST_TLS:
  case SMTPC_ST_IDLE:
  case SMTPC_ST_BODY:
  case SMTPC_ST_DONE: return false;
  default: util_panic("smtpc: bad state %d", (int)s->st);
  }
}

/* A complete reply nobody asked for. */
static void on_unsolicited(struct smtpc *s, uint64_t now)
{
  if (s->st == SMTPC_ST_BODY && s->has_txn) {
    /* the server answered before the end of the body */
    struct smtpc_txn *t = &s->txn;
    if (s->rp.code / 100 == 4 || s->rp.code / 100 == 5) {
      result_from_reply(s, t->final, 8);
      txn_finish(s);
    }
    fail(s, SMTPC_FAIL_PROTOCOL, 0, s->rp.code, false, "reply before the end of the body: %d %s",
         s->rp.code, s->rp.text);
    return;
  }
  if (s->rp.code == 421) {
    fail(s, SMTPC_FAIL_TRANSIENT, 0, 421, false, "%s", s->rp.text);
    return;
  }
  (void)now; /* anything else is dropped (counted in unsolicited bytes) */
}

static void on_line(struct smtpc *s)
{
  if (s->st == SMTPC_ST_EHLO && s->rp.code == 250 && s->rp.nlines > 1)
    ehlo_line(s);
}

static void on_reply(struct smtpc *s, uint64_t now)
{
  int code = s->rp.code, cls = code / 100;
  switch (s->st) {
  case SMTPC_ST_BANNER:
    if (cls == 2)
      send_ehlo(s, now);
    else
      fail_reply(s, true, 0, "the banner");
    break;
  case SMTPC_ST_EHLO:
    if (cls == 2) {
      s->ext |= SMTPC_EXT_ESMTP;
      after_ehlo(s, now);
    } else if (code == 500 || code == 502) {
      s->ext = 0;
      s->mechs = 0;
      s->peer_size = 0;
      if (!out_cmd(s, "HELO %s", s->ehlo_name))
        util_panic("smtpc: output buffer too small for HELO");
      enter(s, SMTPC_ST_HELO, now);
    } else
      fail_reply(s, true, 0, "EHLO");
    break;
  case SMTPC_ST_HELO:
    if (cls == 2)
      after_ehlo(s, now);
    else
      fail_reply(s, true, 0, "HELO");
    break;
  case SMTPC_ST_STARTTLS:
    if (code == 220) {
      enter(s, SMTPC_ST_TLS, now);
      ev_push(s, SMTPC_EV_NEED_TLS);
    } else if (cls != 4 && cls != 5) {
      fail_reply(s, false, 0, "STARTTLS");
    } else if (s->tls_mode == SMTPC_TLS_REQUIRED) {
      fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_TLS_POLICY, code, true,
           "TLS required but STARTTLS was refused: %s", s->rp.text);
    } else {
      s->tls_mode = SMTPC_TLS_NO; /* opportunistic: go on in plaintext */
      start_auth(s, now);
    }
    break;
  case SMTPC_ST_AUTH:
    on_auth_reply(s, now);
    break;
  case SMTPC_ST_MAIL:
  case SMTPC_ST_RCPT:
  case SMTPC_ST_DATA:
  case SMTPC_ST_BODY:
  case SMTPC_ST_DOT:
    if (s->chunked && s->cq_n)
      on_chunk_reply(s, now);
    else if (s->st == SMTPC_ST_BODY)
      util_panic("smtpc: reply routed to state BODY");
    else if (s->st == SMTPC_ST_DOT)
      on_final_reply(s, now);
    else if (s->has_prev)
      on_prev_reply(s, now);
    else
      on_txn_reply(s, now);
    /* 421: the server is closing the channel (RFC 5321 3.8) */
    if (code == 421 && s->st != SMTPC_ST_DONE)
      fail(s, SMTPC_FAIL_TRANSIENT, 0, 421, false, "%s", s->rp.text);
    break;
  case SMTPC_ST_RSET:
    if (cls == 2)
      go_idle(s, now);
    else
      fail_reply(s, false, 0, "RSET");
    break;
  case SMTPC_ST_QUIT:
    ev_push(s, SMTPC_EV_CLOSED);
    s->st = SMTPC_ST_DONE;
    s->deadline = UINT64_MAX;
    break;
  case SMTPC_ST_CONNECT:
  case SMTPC_ST_TLS_IMPLICIT:
  case SMTPC_ST_TLS:
  case SMTPC_ST_IDLE:
  case SMTPC_ST_DONE:
    util_panic("smtpc: reply routed to state %s", state_name[s->st]);
  default: util_panic("smtpc: bad state %d", (int)s->st);
  }
}

int smtpc_feed(struct smtpc *s, const void *bytes, size_t n, uint64_t now)
{
  const uint8_t *p = bytes;
  size_t total = n;
  if (s->st == SMTPC_ST_DONE)
    return -EPIPE;
  if (s->st == SMTPC_ST_TLS || s->st == SMTPC_ST_TLS_IMPLICIT || s->st == SMTPC_ST_CONNECT) {
    if (n)
      fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false, "unexpected plaintext data %s",
           state_doing[s->st]);
    return (int)total;
  }
  while (n > 0 && s->st != SMTPC_ST_DONE) {
    bool expect = outstanding(s);
    size_t used = 0;
    int r = smtp_reply_parse(&s->rp, p, n, &used);
    if (!expect) {
      s->unsolicited += (uint32_t)used;
      if (s->unsolicited > s->lim.max_unsolicited) {
        fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false,
             "more than %u bytes of unsolicited data from the server %s",
             (unsigned)s->lim.max_unsolicited, state_doing[s->st]);
        break;
      }
    }
    p += used;
    n -= used;
    if (r < 0) {
      fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false, "%s %s", smtp_reply_strerror(r),
           state_doing[s->st]);
      break;
    }
    if (r == SMTP_REPLY_LINE && expect)
      on_line(s);
    if (r == SMTP_REPLY_DONE) {
      if (!expect) {
        on_unsolicited(s, now);
        continue;
      }
      on_line(s);
      enum smtpc_state was = s->st;
      on_reply(s, now);
      if (was == SMTPC_ST_STARTTLS && s->st == SMTPC_ST_TLS && n > 0) {
        /* bytes after "220 go ahead" would be read as if they came over
         * TLS: a response-injection attempt (cf. CVE-2011-0411) */
        fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false,
             "server sent data after its STARTTLS reply (response injection?)");
        break;
      }
    }
  }
  return (int)(total > INT32_MAX ? INT32_MAX : total);
}

/* ---- the driver's calls ---- */

struct smtpc *smtpc_new(const struct smtpc_params *pa, uint64_t now)
{
  const char *name = pa->ehlo_name ? pa->ehlo_name : "localhost";
  size_t nl = strlen(name);
  if (nl == 0 || nl > 255 || !clean_str(name, 255) || strchr(name, ' '))
    return NULL;
  struct smtpc *s = util_xcalloc(1, sizeof(*s));
  s->to.connect = or_default(pa->timeouts.connect, 300);
  s->to.ehlo = or_default(pa->timeouts.ehlo, 300);
  s->to.mailfrom = or_default(pa->timeouts.mailfrom, 300);
  s->to.rcptto = or_default(pa->timeouts.rcptto, 300);
  s->to.data = or_default(pa->timeouts.data, 300);
  s->to.body = or_default(pa->timeouts.body, 600);
  s->to.rset = or_default(pa->timeouts.rset, 30);
  s->to.idle = or_default(pa->timeouts.idle, 5);
  s->lim.max_line = or_default(pa->limits.max_line, 2048);
  s->lim.max_lines = or_default(pa->limits.max_lines, 200);
  s->lim.max_reply_bytes = or_default(pa->limits.max_reply_bytes, 65536);
  s->lim.max_unsolicited = or_default(pa->limits.max_unsolicited, 1024);
  s->rp.max_line = s->lim.max_line;
  s->rp.max_lines = s->lim.max_lines;
  s->rp.max_bytes = s->lim.max_reply_bytes;
  s->max_rcpts = or_default(pa->max_rcpts, 100);
  s->tls_mode = pa->tls;
  s->implicit_tls = pa->implicit_tls;
  s->allow_plain = pa->auth_allow_plaintext;
  s->send8 = pa->send_8bitmime;
  s->want_chunking = pa->chunking;
  s->depth = (uint8_t)(pa->pipeline_depth && pa->pipeline_depth < SMTPC_PIPE_MAX
                           ? pa->pipeline_depth
                           : SMTPC_PIPE_MAX);
  s->out_cap = or_default(pa->out_buf_size, DEF_OUT);
  if (s->out_cap < MIN_OUT)
    s->out_cap = MIN_OUT;
  s->out = util_xmalloc(s->out_cap);
  s->ehlo_name = util_xstrdup(name);
  if (set_creds(s, &pa->auth) < 0) {
    smtpc_free(s);
    return NULL;
  }
  s->st = SMTPC_ST_CONNECT;
  set_deadline(s, now);
  return s;
}

void smtpc_free(struct smtpc *s)
{
  if (!s)
    return;
  wipe_creds(s);
  out_release(s);
  free(s->ehlo_name);
  util_wipe(s, sizeof(*s));
  free(s);
}

int smtpc_connected(struct smtpc *s, uint64_t now)
{
  if (s->st != SMTPC_ST_CONNECT)
    return -EINVAL;
  if (s->implicit_tls) {
    enter(s, SMTPC_ST_TLS_IMPLICIT, now);
    ev_push(s, SMTPC_EV_NEED_TLS);
  } else
    enter(s, SMTPC_ST_BANNER, now);
  return 0;
}

int smtpc_tls_done(struct smtpc *s, bool ok, uint64_t now)
{
  if (s->st != SMTPC_ST_TLS && s->st != SMTPC_ST_TLS_IMPLICIT)
    return -EINVAL;
  if (!ok) {
    fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_TLS_FAILED, 0, false, "TLS handshake failed");
    return 0;
  }
  s->tls_active = true;
  smtp_reply_reset(&s->rp);
  s->rp.max_line = s->lim.max_line;
  s->rp.max_lines = s->lim.max_lines;
  s->rp.max_bytes = s->lim.max_reply_bytes;
  if (s->st == SMTPC_ST_TLS_IMPLICIT)
    enter(s, SMTPC_ST_BANNER, now);
  else
    send_ehlo(s, now); /* RFC 3207 4.2: forget what was learnt before TLS */
  return 0;
}

void smtpc_eof(struct smtpc *s, uint64_t now)
{
  (void)now;
  if (s->st == SMTPC_ST_DONE)
    return;
  if (s->st == SMTPC_ST_QUIT) {
    ev_push(s, SMTPC_EV_CLOSED);
    s->st = SMTPC_ST_DONE;
    s->deadline = UINT64_MAX;
    return;
  }
  fail(s, SMTPC_FAIL_NETWORK, 0, 0, false, "connection closed by the server while %s",
       state_doing[s->st]);
}

void smtpc_io_error(struct smtpc *s, int err, uint64_t now)
{
  (void)now;
  if (err < 0)
    err = -err;
  fail(s, SMTPC_FAIL_NETWORK, 0, 0, false, "%s while %s", strerrorname_np(err) ? strerrorname_np(err) : "I/O error",
       state_doing[s->st]);
}

uint64_t smtpc_deadline(const struct smtpc *s) { return s->deadline; }

int smtpc_timeout(struct smtpc *s, uint64_t now)
{
  if (now < s->deadline || s->st == SMTPC_ST_DONE)
    return 0;
  switch (s->st) {
  case SMTPC_ST_IDLE:
    out_must(s, "QUIT");
    enter(s, SMTPC_ST_QUIT, now);
    return 1;
  case SMTPC_ST_QUIT:
    ev_push(s, SMTPC_EV_CLOSED);
    s->st = SMTPC_ST_DONE;
    s->deadline = UINT64_MAX;
    return 1;
  default:
    break;
  }
  enum smtpc_state aw = awaited(s);
  fail(s, SMTPC_FAIL_TIMEOUT, 0, 0, false, "timeout while %s (%s = %u s)", state_doing[aw],
       state_timeout_opt[aw], (unsigned)state_timeout_s(s, aw));
  return 1;
}

bool smtpc_output(struct smtpc *s, const uint8_t **p, size_t *n)
{
  if (s->out_len == s->out_off)
    return false;
  *p = s->out + s->out_off;
  *n = s->out_len - s->out_off;
  return true;
}

static void body_try_finish(struct smtpc *s, uint64_t now)
{
  if (s->st != SMTPC_ST_BODY || !s->body_last)
    return;
  if (out_room(s) < smtp_dot_finish_len(&s->dot))
    return;
  s->out_len += smtp_dot_finish(&s->dot, s->out + s->out_len);
  s->unsolicited = 0;
  enter(s, SMTPC_ST_DOT, now);
  if (s->pipelined) {
    /* RFC 2920 3.1: the next transaction may follow the dot at once */
    struct smtpc_event *e = ev_push(s, SMTPC_EV_READY);
    e->flags = SMTPC_F_PIPELINED;
  }
}

void smtpc_output_consumed(struct smtpc *s, size_t n, uint64_t now)
{
  UTIL_ASSERT(n <= s->out_len - s->out_off);
  if (s->out_secret)
    util_wipe(s->out + s->out_off, n);
  s->out_off += n;
  if (s->out_off == s->out_len) {
    s->out_off = s->out_len = 0;
    s->out_secret = false;
  }
  switch (s->st) {
  case SMTPC_ST_MAIL:
  case SMTPC_ST_RCPT:
  case SMTPC_ST_DATA:
    if (s->chunked && s->cq_n)
      cq_fill(s, now);
    else
      fill_cmds(s); /* the send cursor moves on as space frees up */
    break;
  case SMTPC_ST_BODY:
    set_deadline(s, now); /* progress */
    body_try_finish(s, now);
    break;
  default:
    break;
  }
}

int smtpc_begin_txn(struct smtpc *s, const struct smtpc_txn *t, uint64_t now)
{
  bool early = s->st == SMTPC_ST_DOT && s->pipelined && s->has_txn && !s->dot_only && !s->has_prev;
  /* BDAT: behind every transaction in flight once the newest is sent */
  bool deep = s->chunked && s->st == SMTPC_ST_DOT && s->cq_n > 0 && s->cq_n < s->depth &&
              !s->cq_rset && cq_tail(s)->sent_all;
  if (s->st != SMTPC_ST_IDLE && !early && !deep)
    return -EBUSY;
  if (!t || !t->mail_from || !t->rcpts || !t->results || !t->final || t->nrcpt == 0 ||
      t->nrcpt > s->max_rcpts)
    return -EINVAL;
  if (!clean_str(t->mail_from, SMTPC_ADDR_MAX))
    return -EINVAL;
  for (uint32_t i = 0; i < t->nrcpt; i++)
    if (!t->rcpts[i] || !t->rcpts[i][0] || !clean_str(t->rcpts[i], SMTPC_ADDR_MAX))
      return -EINVAL;
  if (early && (t->results == s->txn.results || t->final == s->txn.final))
    return -EINVAL; /* the previous transaction's results are still being written */
  for (unsigned k = 0; deep && k < s->cq_n; k++)
    if (t->results == cq_at(s, k)->t.results || t->final == cq_at(s, k)->t.final)
      return -EINVAL;
  if (s->st == SMTPC_ST_IDLE)
    s->chunked = s->want_chunking && (s->ext & SMTPC_EXT_CHUNKING) &&
                 (s->ext & SMTPC_EXT_PIPELINING);
  s->cq_offered = s->cq_cut = false;
  for (uint32_t i = 0; i < t->nrcpt; i++)
    set_result(&t->results[i], SMTPC_OUT_NONE, 0, "", 0, "");
  set_result(t->final, SMTPC_OUT_NONE, 0, "", 0, "");

  /* local refusals: nothing is sent */
  char why[SMTPC_TEXT_MAX];
  const char *enh = NULL;
  if (s->peer_size && t->size > s->peer_size) {
    snprintf(why, sizeof(why), "message size %" PRIu64 " exceeds the remote server's limit %" PRIu64,
             t->size, s->peer_size);
    enh = "5.3.4";
  } else if ((t->flags & SMTPC_TXN_SMTPUTF8) && !(s->ext & SMTPC_EXT_SMTPUTF8)) {
    snprintf(why, sizeof(why), "SMTPUTF8 is required but the remote server does not offer it");
    enh = "5.6.7";
  }
  if (enh) {
    set_result(t->final, SMTPC_OUT_PERMANENT, 0, enh, 1, why);
    txn_done(s, t);
    if (early) { /* the one in flight still waits for its reply: offer again */
      struct smtpc_event *e = ev_push(s, SMTPC_EV_READY);
      e->flags = SMTPC_F_PIPELINED;
    } else if (deep) {
      cq_offer(s);
    } else {
      go_idle(s, now);
    }
    return 0;
  }
  if (s->chunked) {
    struct cq_item *it = &s->cq[(s->cq_head + s->cq_n) % SMTPC_PIPE_MAX];
    memset(it, 0, sizeof(*it));
    it->t = *t;
    s->cq_n++;
    s->send_cur = 0;
    enter(s, SMTPC_ST_MAIL, now);
    cq_fill(s, now);
    return 0;
  }
  if (early) {
    s->prev = s->txn;
    s->has_prev = true;
  }
  s->txn = *t;
  s->has_txn = true;
  s->ev_results = t->results;
  s->send_cur = s->recv_cur = 0;
  s->accepted = 0;
  s->mail_failed = s->data_sent = s->dot_only = s->body_last = false;
  s->pipelined = (s->ext & SMTPC_EXT_PIPELINING) != 0;
  enter(s, SMTPC_ST_MAIL, now);
  fill_cmds(s);
  return 0;
}

bool smtpc_chunked(const struct smtpc *s) { return s->chunked; }

int smtpc_chunk(struct smtpc *s, size_t len, bool is_last, uint64_t now)
{
  if (s->chunked && s->cq_cut)
    return -ECANCELED;
  if (!s->chunked || !s->cq_n || cq_tail(s)->sent_all)
    return -EINVAL;
  struct cq_item *it = cq_tail(s);
  if (s->st != SMTPC_ST_BODY)
    return -EINVAL;
  char num[21];
  const char *parts[] = {"BDAT ", u64_dec(len, num), is_last ? " LAST" : ""};
  if (!out_parts(s, parts, 3))
    return -ENOSPC;
  it->chunks++;
  set_deadline(s, now);
  if (is_last) {
    it->sent_all = true;
    enter(s, SMTPC_ST_DOT, now);
    cq_offer(s);
  }
  return 0;
}

long smtpc_body(struct smtpc *s, const void *data, size_t len, bool is_last, uint64_t now)
{
  if (s->st != SMTPC_ST_BODY || s->body_last || s->chunked)
    return -EINVAL;
  size_t used = 0;
  size_t room = out_room(s);
  if (len) {
    s->out_len += smtp_dot_encode(&s->dot, data, len, s->out + s->out_len, room, &used);
    s->unsolicited = 0;
  }
  set_deadline(s, now);
  if (is_last && used == len) {
    s->body_last = true;
    body_try_finish(s, now);
  }
  return (long)used;
}

int smtpc_body_sent(struct smtpc *s, size_t n, bool is_last, bool ends_with_crlf, uint64_t now)
{
  if (s->st != SMTPC_ST_BODY || s->body_last || s->chunked)
    return -EINVAL;
  (void)n;
  set_deadline(s, now);
  if (is_last) {
    /* the terminator follows the driver's bytes: tell the encoder where
     * the body stopped */
    s->dot.bol = ends_with_crlf;
    s->dot.cr = 0;
    s->body_last = true;
    body_try_finish(s, now);
  }
  return 0;
}

void smtpc_quit(struct smtpc *s, uint64_t now)
{
  if (s->st == SMTPC_ST_DONE || s->st == SMTPC_ST_QUIT)
    return;
  if (s->st == SMTPC_ST_IDLE) {
    out_must(s, "QUIT");
    enter(s, SMTPC_ST_QUIT, now);
    return;
  }
  prev_abandon(s, 0, "", "session closed locally");
  cq_abandon(s, 0, "", "session closed locally", state_stage[awaited(s)]);
  if (s->has_txn) {
    set_result(s->txn.final, SMTPC_OUT_TRANSIENT, 0, "", state_stage[s->st],
               "session closed locally");
    txn_finish(s);
  }
  wipe_creds(s);
  ev_push(s, SMTPC_EV_CLOSED);
  s->st = SMTPC_ST_DONE;
  s->deadline = UINT64_MAX;
}

const struct smtpc_result *smtpc_txn_outcome(const struct smtpc_txn *t, uint32_t i)
{
  const struct smtpc_result *r = &t->results[i];
  return r->outcome == SMTPC_OUT_OK ? t->final : r;
}

enum smtpc_state smtpc_state(const struct smtpc *s) { return s->st; }
uint8_t smtpc_stage(const struct smtpc *s)
{
  if (!s->chunked && (s->st == SMTPC_ST_MAIL || s->st == SMTPC_ST_RCPT || s->st == SMTPC_ST_DATA))
    return state_stage[cursor_state(s)];
  return state_stage[awaited(s)];
}
const char *smtpc_doing(const struct smtpc *s) { return state_doing[awaited(s)]; }
uint32_t smtpc_extensions(const struct smtpc *s) { return s->ext; }
uint32_t smtpc_auth_mechs(const struct smtpc *s) { return s->mechs; }
uint64_t smtpc_peer_max_size(const struct smtpc *s) { return s->peer_size; }
bool smtpc_tls_active(const struct smtpc *s) { return s->tls_active; }
bool smtpc_authenticated(const struct smtpc *s) { return s->authed; }
size_t smtpc_memory(const struct smtpc *s)
{
  return sizeof(*s) + s->out_cap + strlen(s->ehlo_name) + 1 + (s->user ? strlen(s->user) + 1 : 0) +
         (s->pass ? strlen(s->pass) + 1 : 0);
}
