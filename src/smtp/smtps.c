/* smtps.c owns the sans-I/O SMTP server session's life and its answers:
 * creation, the greeting, the driver's answer to each due reply (accept,
 * answer, defer and resolve in order) and what that answer does to the
 * session's state, queued output, STARTTLS's reset and timeouts. Command
 * lines are read in smtps_cmd.c, input is split in smtps_feed.c (see
 * smtps_int.h). Decisions that belong to the driver (credentials, whether
 * a message is queued, fault injection, policy) come out as events the
 * driver answers. It never touches a socket, TLS, a clock or a log; it
 * never allocates per byte (one line buffer and one output buffer per
 * session, grown to the largest line/reply seen, and AUTH data in a buffer
 * wiped after use). Called only by the thread that owns the session. See
 * smtps.h for the driver contract. */
#include "smtps_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "buf.h"
#include "panic.h"

const char *const smtps_cmd_names[SMTPS_CMD_COUNT] = {
  [SMTPS_CMD_CONNECT] = "CONNECT", [SMTPS_CMD_EHLO] = "EHLO", [SMTPS_CMD_HELO] = "HELO",
  [SMTPS_CMD_STARTTLS] = "STARTTLS", [SMTPS_CMD_AUTH] = "AUTH", [SMTPS_CMD_MAIL] = "MAIL",
  [SMTPS_CMD_RCPT] = "RCPT", [SMTPS_CMD_DATA] = "DATA", [SMTPS_CMD_DOT] = "DOT",
  [SMTPS_CMD_BDAT] = "BDAT", [SMTPS_CMD_RSET] = "RSET", [SMTPS_CMD_NOOP] = "NOOP",
  [SMTPS_CMD_QUIT] = "QUIT", [SMTPS_CMD_VRFY] = "VRFY", [SMTPS_CMD_OTHER] = "OTHER",
};

static const char xoauth2_err[] = "{\"status\":\"401\",\"schemes\":\"bearer\",\"scope\":\"mail\"}";

/* ---- helpers ---- */

__attribute__((format(printf, 2, 3))) static void outf(struct smtps *s, const char *fmt, ...)
{
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (k < 0)
    return;
  if ((size_t)k >= sizeof(line))
    k = (int)sizeof(line) - 1;
  out(s, line, (size_t)k);
}

static void too_many_errors(struct smtps *s)
{
  if (s->p.limits.max_errors && s->errors >= s->p.limits.max_errors && s->st != SMTPS_ST_DONE) {
    outf(s, "421 4.7.0 %s Error: too many errors\r\n", s->p.hostname);
    s->st = SMTPS_ST_DONE;
  }
}

/* An error reply sent without a decision (line too long, AUTH steps). */
void smtps_immediate_error(struct smtps *s, const char *r, size_t n)
{
  out(s, r, n);
  s->errors++;
  too_many_errors(s);
}

/* ---- session ---- */

struct smtps *smtps_new(const struct smtps_params *params)
{
  struct smtps *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  s->p = *params;
  if (!s->p.hostname)
    s->p.hostname = "localhost";
  struct smtps_limits *l = &s->p.limits;
  if (!l->max_line)
    l->max_line = DEF_MAX_LINE;
  if (!l->max_rcpts)
    l->max_rcpts = DEF_MAX_RCPTS;
  if (!l->max_pending_out)
    l->max_pending_out = DEF_PENDING_OUT;
  if (!l->max_deferred || l->max_deferred > SMTPS_DEFER_MAX)
    l->max_deferred = SMTPS_DEFER_MAX;
  if (!s->p.timeouts.command)
    s->p.timeouts.command = DEF_TIMEOUT;
  if (!s->p.timeouts.data)
    s->p.timeouts.data = DEF_TIMEOUT;
  if (l->max_size)
    s->p.ext |= SMTPS_EXT_SIZE;
  s->tls = s->p.tls_active;
  s->st = SMTPS_ST_NEW;
  s->deadline = UINT64_MAX;
  clear_ev(s);
  return s;
}

void smtps_free(struct smtps *s)
{
  if (!s)
    return;
  buf_done(&s->line, 1); /* may hold an AUTH line */
  buf_done(&s->out, 0);
  for (uint32_t i = 0; i < s->nholes; i++) {
    buf_done(&s->holes[i].reply, 0);
    buf_done(&s->holes[i].tail, 0);
  }
  free(s->holes);
  wipe_scratch(s);
  util_wipe(s, sizeof(*s));
  free(s);
}

void smtps_start(struct smtps *s, uint64_t now)
{
  (void)now;
  if (s->st != SMTPS_ST_NEW)
    return;
  s->st = SMTPS_ST_GREETING;
  buf_reset(&s->scratch);
  if (s->p.banner)
    buf_printf(&s->scratch, "220 %s\r\n", s->p.banner);
  else
    buf_printf(&s->scratch, "220 %s ESMTP\r\n", s->p.hostname);
  clear_ev(s);
  decide(s, SMTPS_EV_COMMAND, P_GREET, SMTPS_CMD_CONNECT, true, 220,
         (const char *)buf_head(&s->scratch), buf_avail(&s->scratch));
}

bool smtps_event(struct smtps *s, struct smtps_event *ev)
{
  if (!s->ev_ready)
    return false;
  *ev = s->ev;
  s->ev_ready = false;
  if (!s->decide)
    clear_ev(s);
  return true;
}

bool smtps_pending(const struct smtps *s) { return s->decide; }

/* ---- the answer ---- */

/* Apply the due reply's outcome (its bytes are already queued). */
static void apply(struct smtps *s, bool ok, uint64_t now)
{
  int pend = s->pend;
  enum smtps_cmd cmd = s->ev.cmd;
  s->decide = false;
  s->pend = P_NONE;
  if (!ok && pend != P_MESSAGE && pend != P_GREET)
    s->errors++;
  switch (pend) {
  case P_NONE:
  case P_OTHER:
    break;
  case P_GREET:
    s->st = ok ? SMTPS_ST_CMD : SMTPS_ST_DONE;
    break;
  case P_EHLO:
  case P_HELO:
    if (ok) {
      reset_txn(s);
      s->helo_seen = true;
      s->esmtp = pend == P_EHLO;
    }
    break;
  case P_MAIL:
    if (ok) {
      reset_txn(s);
      s->has_mail = true;
    }
    break;
  case P_RCPT:
    if (ok)
      s->nrcpt++;
    break;
  case P_DATA:
    if (ok) {
      s->st = SMTPS_ST_DATA;
      s->body_state = B_BOL;
      s->msg_bytes = 0;
      s->too_big = false;
    }
    break;
  case P_CHUNK:
    s->st = SMTPS_ST_CMD;
    if (s->chunk_err == CH_OK)
      s->bdat = ok ? BDAT_OPEN : BDAT_FAILED;
    if (s->chunk_last)
      reset_txn(s);
    break;
  case P_MESSAGE:
    s->st = SMTPS_ST_CMD;
    reset_txn(s);
    break;
  case P_RSET:
    reset_txn(s);
    break;
  case P_QUIT:
    s->st = SMTPS_ST_DONE;
    break;
  case P_STARTTLS:
    if (ok) {
      reset_txn(s);
      s->helo_seen = false;
      s->st = SMTPS_ST_TLS;
      s->want_tls = true;
    }
    break;
  case P_AUTH_CMD:
    if (ok) {
      s->st = SMTPS_ST_AUTH;
      s->auth_step = s->auth_mech == SMTPS_AUTH_PLAIN   ? A_PLAIN
                     : s->auth_mech == SMTPS_AUTH_LOGIN ? A_LOGIN_USER
                                                        : A_XOAUTH2;
      if (s->ir_off != SIZE_MAX) {
        clear_ev(s);
        smtps_auth_line(s, (const char *)buf_head(&s->line) + s->ir_off, s->ir_len);
      }
    }
    break;
  case P_AUTH_CRED:
    if (ok) {
      s->authed = true;
      smtps_auth_end(s);
    } else if (s->st == SMTPS_ST_AUTH && s->auth_step != A_XOAUTH2_ERR) {
      smtps_auth_end(s);
    }
    break;
  default:
    util_panic("smtps: bad pending action %d (%s)", pend, smtps_cmd_names[cmd]);
  }
  if (!s->decide) {
    clear_ev(s);
    s->ev_ready = false;
  }
  if (pend == P_GREET || pend == P_EHLO || pend == P_HELO)
    buf_done(&s->scratch, 0); /* the reply text: an idle session keeps no copy */
  too_many_errors(s);
  if (s->st != SMTPS_ST_DONE && s->st != SMTPS_ST_TLS)
    set_deadline(s, now);
}

int smtps_accept(struct smtps *s, uint64_t now)
{
  if (!s->decide)
    return -EALREADY;
  if (s->pend == P_AUTH_CRED) /* the default refuses (and XOAUTH2 challenges) */
    return smtps_answer(s, 535, "5.7.8 Authentication credentials invalid", now);
  out(s, s->ev.reply, s->ev.reply_len);
  apply(s, s->ev.ok, now);
  return 0;
}

int smtps_answer(struct smtps *s, int code, const char *text, uint64_t now)
{
  if (!s->decide)
    return -EALREADY;
  if (code < 200 || code > 599)
    return -EINVAL;
  bool ok = s->ev.ok && code < 400;
  if (s->pend == P_AUTH_CRED && !ok && s->auth_mech == SMTPS_AUTH_XOAUTH2 && code == 535) {
    /* the customary error challenge; 535 after the client's empty reply */
    char b[128];
    size_t k = base64_encode(xoauth2_err, sizeof(xoauth2_err) - 1, b + 4);
    memcpy(b, "334 ", 4);
    memcpy(b + 4 + k, "\r\n", 2);
    out(s, b, k + 6);
    s->auth_step = A_XOAUTH2_ERR;
    wipe_scratch(s);
    s->errors--; /* counted once, at the 535 */
    apply(s, false, now);
    return 0;
  }
  outf(s, "%d %s\r\n", code, text ? text : "");
  apply(s, ok, now);
  return 0;
}

int smtps_answer_raw(struct smtps *s, bool ok, const void *p, size_t n, uint64_t now)
{
  if (!s->decide)
    return -EALREADY;
  out(s, p, n);
  apply(s, ok && s->ev.ok, now);
  return 0;
}

int smtps_defer(struct smtps *s, uint64_t now)
{
  if (!s->decide || s->pend != P_MESSAGE)
    return -EALREADY;
  if (!s->ev.ok)
    return -EINVAL;
  if (s->nholes == s->p.limits.max_deferred)
    return -EBUSY;
  if (!s->holes && !(s->holes = calloc(SMTPS_DEFER_MAX, sizeof(*s->holes))))
    return -ENOMEM;
  struct hole *h = &s->holes[s->nholes++];
  memset(h, 0, sizeof(*h));
  if (++s->next_ticket == 0)
    s->next_ticket = 1;
  h->ticket = s->next_ticket;
  apply(s, true, now);
  return (int)(h->ticket & 0x7fffffff);
}

int smtps_resolve(struct smtps *s, int ticket, int code, const char *text)
{
  if (code < 200 || code > 599)
    return -EINVAL;
  uint32_t i;
  for (i = 0; i < s->nholes; i++)
    if ((int)(s->holes[i].ticket & 0x7fffffff) == ticket && !s->holes[i].resolved)
      break;
  if (i == s->nholes)
    return -ENOENT;
  buf_printf(&s->holes[i].reply, "%d %s\r\n", code, text ? text : "");
  s->holes[i].resolved = true;
  /* the owed replies known from the front go out, with what followed each */
  uint32_t k = 0;
  while (k < s->nholes && s->holes[k].resolved) {
    struct hole *h = &s->holes[k];
    buf_append(&s->out, h->reply.data, h->reply.len);
    buf_append(&s->out, h->tail.data, h->tail.len);
    s->parked -= h->tail.len;
    buf_done(&h->reply, 0);
    buf_done(&h->tail, 0);
    k++;
  }
  if (k) {
    memmove(s->holes, s->holes + k, (s->nholes - k) * sizeof(s->holes[0]));
    s->nholes -= k;
  }
  return 0;
}

uint32_t smtps_deferred(const struct smtps *s) { return s->nholes; }

void smtps_emit_raw(struct smtps *s, const void *p, size_t n)
{
  out(s, p, n);
}

void smtps_shutdown(struct smtps *s, const char *line)
{
  if (line)
    out(s, line, strlen(line));
  s->decide = false;
  s->ev_ready = false;
  s->pend = P_NONE;
  s->st = SMTPS_ST_DONE;
  wipe_scratch(s);
}

/* ---- output, TLS, time ---- */

bool smtps_output(const struct smtps *s, const uint8_t **p, size_t *n)
{
  if (!buf_avail(&s->out))
    return false;
  *p = buf_head(&s->out);
  *n = buf_avail(&s->out);
  return true;
}

void smtps_output_consumed(struct smtps *s, size_t n)
{
  if (n > buf_avail(&s->out))
    n = buf_avail(&s->out);
  buf_consume(&s->out, n);
  if (!buf_avail(&s->out) && s->out.cap > DEF_PENDING_OUT)
    buf_done(&s->out, 0);
}

bool smtps_want_tls(const struct smtps *s) { return s->want_tls; }

void smtps_tls_done(struct smtps *s, uint64_t now)
{
  s->tls = true;
  s->want_tls = false;
  reset_txn(s);
  s->helo_seen = false;
  s->esmtp = false;
  s->authed = false;
  if (s->st == SMTPS_ST_TLS) {
    s->st = SMTPS_ST_CMD;
    buf_reset(&s->line);
    s->line_done = false;
    s->discard = false;
    set_deadline(s, now);
  }
}

bool smtps_done(const struct smtps *s) { return s->st == SMTPS_ST_DONE && !s->nholes; }

uint64_t smtps_deadline(const struct smtps *s)
{
  if (s->decide || s->nholes || s->st == SMTPS_ST_DONE || s->st == SMTPS_ST_NEW ||
      s->st == SMTPS_ST_TLS || s->st == SMTPS_ST_GREETING)
    return UINT64_MAX; /* a reply is owed to the client: not its timeout */
  return s->deadline;
}

int smtps_timeout(struct smtps *s, uint64_t now)
{
  if (now < smtps_deadline(s))
    return 0;
  outf(s, "421 4.4.2 %s Error: timeout exceeded\r\n", s->p.hostname);
  s->st = SMTPS_ST_DONE;
  s->ev_ready = false;
  wipe_scratch(s);
  return 1;
}

enum smtps_state smtps_get_state(const struct smtps *s) { return s->st; }
bool smtps_authenticated(const struct smtps *s) { return s->authed; }
bool smtps_tls(const struct smtps *s) { return s->tls; }
uint32_t smtps_rcpts(const struct smtps *s) { return s->nrcpt; }
uint32_t smtps_errors(const struct smtps *s) { return s->errors; }
