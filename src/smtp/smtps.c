/* smtps.c owns the sans-I/O SMTP server session: command parsing, the
 * default reply to each command, the transaction's state (MAIL, RCPT,
 * DATA with dot-unstuffing, BDAT chunks read in place), AUTH exchanges
 * (PLAIN, LOGIN, XOAUTH2) and STARTTLS's reset. Decisions that belong to
 * the driver (credentials, whether a message is queued, fault injection,
 * policy) come out as events the driver answers. It never touches a socket,
 * TLS, a clock or a log; it never allocates per byte (one line buffer and
 * one output buffer per session, grown to the largest line/reply seen, and
 * AUTH data in a buffer wiped after use). Called only by the thread that
 * owns the session. See smtps.h for the driver contract. */
#include "smtps.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

static const char xoauth2_err[] = "{\"status\":\"401\",\"schemes\":\"bearer\",\"scope\":\"mail\"}";

/* ---- helpers ---- */

static uint64_t secs_ms(uint32_t s) { return (uint64_t)s * 1000u; }

static void set_deadline(struct smtps *s, uint64_t now)
{
  bool data = s->st == SMTPS_ST_DATA || s->st == SMTPS_ST_BDAT;
  s->deadline = now + secs_ms(data ? s->p.timeouts.data : s->p.timeouts.command);
}

static void out(struct smtps *s, const void *p, size_t n)
{
  if (s->nholes) { /* behind a reply not yet known: held in order */
    buf_append(&s->holes[s->nholes - 1].tail, p, n);
    s->parked += n;
    return;
  }
  buf_append(&s->out, p, n);
}

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

static void reset_txn(struct smtps *s)
{
  s->has_mail = false;
  s->nrcpt = 0;
  s->too_big = false;
  s->msg_bytes = 0;
  s->bdat = BDAT_NONE;
}

static void wipe_scratch(struct smtps *s)
{
  buf_done(&s->scratch, 1);
}

/* A reply is due: queue the DECIDE event. arg fields are set by the caller. */
static void decide(struct smtps *s, enum smtps_ev_type type, int pend, enum smtps_cmd cmd, bool ok,
                   int code, const char *reply, size_t len)
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

static void clear_ev(struct smtps *s)
{
  memset(&s->ev, 0, sizeof(s->ev));
  s->ev.arg = "";
}

/* A COMMAND decision whose default is a failure (the machine's own check). */
static void fail(struct smtps *s, enum smtps_cmd cmd, int code, const char *reply, size_t len)
{
  decide(s, SMTPS_EV_COMMAND, P_NONE, cmd, false, code, reply, len);
}

static void too_many_errors(struct smtps *s)
{
  if (s->p.limits.max_errors && s->errors >= s->p.limits.max_errors && s->st != SMTPS_ST_DONE) {
    outf(s, "421 4.7.0 %s Error: too many errors\r\n", s->p.hostname);
    s->st = SMTPS_ST_DONE;
  }
}

/* An error reply sent without a decision (line too long, AUTH steps). */
static void immediate_error(struct smtps *s, const char *r, size_t n)
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

/* ---- commands ---- */

/* Parse "FROM:<addr> params" / "TO:<addr> params": 0 or -EINVAL. */
static int parse_path(const char *s, size_t n, const char *kw, const char **a, size_t *alen,
                      const char **params, size_t *plen)
{
  size_t k = strlen(kw);
  if (n < k || strncasecmp(s, kw, k) != 0)
    return -EINVAL;
  s += k;
  n -= k;
  while (n && *s == ' ') {
    s++;
    n--;
  }
  const char *end;
  if (n && *s == '<') {
    end = memchr(s, '>', n);
    if (!end)
      return -EINVAL;
    *a = s + 1;
    *alen = (size_t)(end - s - 1);
    end++;
  } else {
    end = memchr(s, ' ', n);
    if (!end)
      end = s + n;
    *a = s;
    *alen = (size_t)(end - s);
    if (*alen == 0)
      return -EINVAL;
  }
  *params = end;
  *plen = (size_t)(s + n - end);
  return 0;
}

/* Strict address check: length, no control bytes or spaces, 8-bit only
 * with SMTPUTF8. 0 or -EINVAL. */
static int check_addr(const char *a, size_t n, bool utf8)
{
  if (n > SMTPS_ADDR_MAX)
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)a[i];
    if (c <= ' ' || c == 0x7f || (c >= 0x80 && !utf8))
      return -EINVAL;
  }
  return 0;
}

/* One "KEY=value" (or "KEY") word of MAIL/RCPT parameters. */
struct param {
  const char *k, *v;
  size_t kl, vl;
};

static bool next_param(const char **ps, size_t *pl, struct param *w)
{
  while (*pl && **ps == ' ') {
    (*ps)++;
    (*pl)--;
  }
  if (!*pl)
    return false;
  const char *e = memchr(*ps, ' ', *pl);
  size_t wl = e ? (size_t)(e - *ps) : *pl;
  const char *eq = memchr(*ps, '=', wl);
  w->k = *ps;
  w->kl = eq ? (size_t)(eq - *ps) : wl;
  w->v = eq ? eq + 1 : *ps + wl;
  w->vl = eq ? wl - w->kl - 1 : 0;
  *ps += wl;
  *pl -= wl;
  return true;
}

static bool key_is(const struct param *w, const char *k)
{
  return w->kl == strlen(k) && !strncasecmp(w->k, k, w->kl);
}

static bool val_is(const struct param *w, const char *v)
{
  return w->vl == strlen(v) && !strncasecmp(w->v, v, w->vl);
}

static void build_ehlo(struct smtps *s)
{
  struct buf *b = &s->scratch;
  uint32_t x = s->p.ext;
  buf_reset(b);
  buf_printf(b, "250-%s\r\n", s->p.hostname);
  if (x & SMTPS_EXT_PIPELINING)
    buf_append_str(b, "250-PIPELINING\r\n");
  if (x & SMTPS_EXT_SIZE)
    buf_printf(b, "250-SIZE %llu\r\n", (unsigned long long)s->p.limits.max_size);
  if (x & SMTPS_EXT_8BITMIME)
    buf_append_str(b, "250-8BITMIME\r\n");
  if (x & SMTPS_EXT_SMTPUTF8)
    buf_append_str(b, "250-SMTPUTF8\r\n");
  if (x & SMTPS_EXT_DSN)
    buf_append_str(b, "250-DSN\r\n");
  if (x & SMTPS_EXT_CHUNKING)
    buf_append_str(b, "250-CHUNKING\r\n");
  if ((x & SMTPS_EXT_STARTTLS) && !s->tls)
    buf_append_str(b, "250-STARTTLS\r\n");
  uint32_t m = s->p.auth_mechs;
  if (m && (!s->p.auth_tls_only || s->tls))
    buf_printf(b, "250-AUTH%s%s%s\r\n", m & SMTPS_AUTH_PLAIN ? " PLAIN" : "",
               m & SMTPS_AUTH_LOGIN ? " LOGIN" : "", m & SMTPS_AUTH_XOAUTH2 ? " XOAUTH2" : "");
  /* The last line: ENHANCEDSTATUSCODES, or the last one written above. */
  if (x & SMTPS_EXT_ENHANCEDSTATUSCODES) {
    buf_append_str(b, "250 ENHANCEDSTATUSCODES\r\n");
  } else {
    /* turn the last "250-" into "250 " */
    uint8_t *d = b->data + b->off;
    size_t n = buf_avail(b);
    size_t i = n - 2;
    while (i > 0 && d[i - 1] != '\n')
      i--;
    d[i + 3] = ' ';
  }
}

static void do_ehlo(struct smtps *s, enum smtps_cmd cmd, const char *arg, size_t n)
{
  s->ev.arg = arg;
  s->ev.arg_len = n;
  if (n == 0) {
    fail(s, cmd, 501, R("501 5.5.4 Syntax: EHLO hostname\r\n"));
    return;
  }
  if (cmd == SMTPS_CMD_HELO) {
    buf_reset(&s->scratch);
    buf_printf(&s->scratch, "250 %s\r\n", s->p.hostname);
  } else {
    build_ehlo(s);
  }
  decide(s, SMTPS_EV_COMMAND, cmd == SMTPS_CMD_EHLO ? P_EHLO : P_HELO, cmd, true, 250,
         (const char *)buf_head(&s->scratch), buf_avail(&s->scratch));
}

static void do_mail(struct smtps *s, const char *arg, size_t n)
{
  const enum smtps_cmd C = SMTPS_CMD_MAIL;
  if (!s->helo_seen) {
    fail(s, C, 503, R("503 5.5.1 Error: send HELO/EHLO first\r\n"));
    return;
  }
  if (s->has_mail) {
    fail(s, C, 503, R("503 5.5.1 Error: nested MAIL command\r\n"));
    return;
  }
  if (s->p.require_auth && !s->authed) {
    if (s->p.auth_tls_only && !s->tls)
      fail(s, C, 530, R("530 5.7.0 Must issue a STARTTLS command first\r\n"));
    else
      fail(s, C, 530, R("530 5.7.0 Authentication required\r\n"));
    return;
  }
  const char *a, *ps;
  size_t alen, pl;
  if (parse_path(arg, n, "FROM:", &a, &alen, &ps, &pl) < 0) {
    fail(s, C, 501, R("501 5.5.4 Syntax: MAIL FROM:<address>\r\n"));
    return;
  }
  s->ev.arg = a;
  s->ev.arg_len = alen;
  uint32_t x = s->p.ext;
  struct param w;
  while (next_param(&ps, &pl, &w)) {
    if (key_is(&w, "SIZE") && w.vl) {
      unsigned long long v = 0;
      for (size_t i = 0; i < w.vl && w.v[i] >= '0' && w.v[i] <= '9' && v < (1ull << 60); i++)
        v = v * 10 + (unsigned)(w.v[i] - '0');
      if (s->p.limits.max_size && v > s->p.limits.max_size) {
        fail(s, C, 552, R("552 5.3.4 Message size exceeds fixed limit\r\n"));
        return;
      }
      s->ev.size = v;
    } else if (key_is(&w, "BODY") && val_is(&w, "7BIT")) {
      s->ev.body = SMTPS_BODY_7BIT;
    } else if (key_is(&w, "BODY") && val_is(&w, "8BITMIME") &&
               (!s->p.strict || (x & SMTPS_EXT_8BITMIME))) {
      s->ev.body = SMTPS_BODY_8BITMIME;
    } else if (key_is(&w, "SMTPUTF8") && !w.vl && (!s->p.strict || (x & SMTPS_EXT_SMTPUTF8))) {
      s->ev.smtputf8 = true;
    } else if (key_is(&w, "RET") && (x & SMTPS_EXT_DSN) && val_is(&w, "FULL")) {
      s->ev.ret = SMTPS_RET_FULL;
    } else if (key_is(&w, "RET") && (x & SMTPS_EXT_DSN) && val_is(&w, "HDRS")) {
      s->ev.ret = SMTPS_RET_HDRS;
    } else if (key_is(&w, "ENVID") && (x & SMTPS_EXT_DSN) && w.vl && w.vl <= SMTPS_ENVID_MAX) {
      s->ev.envid = w.v;
      s->ev.envid_len = w.vl;
    } else if (key_is(&w, "AUTH")) {
      /* RFC 4954 5: accepted and not acted upon */
    } else if (s->p.strict) {
      fail(s, C, 555, R("555 5.5.4 Unsupported MAIL parameter\r\n"));
      return;
    }
  }
  if (s->p.strict && check_addr(a, alen, s->ev.smtputf8) < 0) {
    fail(s, C, 553, R("553 5.1.7 Bad sender address syntax\r\n"));
    return;
  }
  decide(s, SMTPS_EV_COMMAND, P_MAIL, C, true, 250, R("250 2.1.0 Ok\r\n"));
}

static uint8_t parse_notify(const char *v, size_t n)
{
  uint8_t bits = 0;
  while (n) {
    const char *e = memchr(v, ',', n);
    size_t k = e ? (size_t)(e - v) : n;
    if (k == 5 && !strncasecmp(v, "NEVER", 5))
      bits |= SMTPS_NOTIFY_NEVER;
    else if (k == 7 && !strncasecmp(v, "SUCCESS", 7))
      bits |= SMTPS_NOTIFY_SUCCESS;
    else if (k == 7 && !strncasecmp(v, "FAILURE", 7))
      bits |= SMTPS_NOTIFY_FAILURE;
    else if (k == 5 && !strncasecmp(v, "DELAY", 5))
      bits |= SMTPS_NOTIFY_DELAY;
    else
      return 0;
    v += k;
    n -= k;
    if (n) {
      v++;
      n--;
    }
  }
  /* NEVER excludes the others (RFC 3461 4.1) */
  if ((bits & SMTPS_NOTIFY_NEVER) && bits != SMTPS_NOTIFY_NEVER)
    return 0;
  return bits;
}

static void do_rcpt(struct smtps *s, const char *arg, size_t n)
{
  const enum smtps_cmd C = SMTPS_CMD_RCPT;
  if (!s->has_mail) {
    fail(s, C, 503, R("503 5.5.1 Error: need MAIL command\r\n"));
    return;
  }
  if (s->bdat != BDAT_NONE) {
    fail(s, C, 503, R("503 5.5.1 Error: RCPT after BDAT\r\n"));
    return;
  }
  const char *a, *ps;
  size_t alen, pl;
  if (parse_path(arg, n, "TO:", &a, &alen, &ps, &pl) < 0 || alen == 0) {
    fail(s, C, 501, R("501 5.5.4 Syntax: RCPT TO:<address>\r\n"));
    return;
  }
  s->ev.arg = a;
  s->ev.arg_len = alen;
  if (s->nrcpt >= s->p.limits.max_rcpts) {
    fail(s, C, 452, R("452 4.5.3 Error: too many recipients\r\n"));
    return;
  }
  struct param w;
  uint32_t x = s->p.ext;
  while (next_param(&ps, &pl, &w)) {
    if (key_is(&w, "NOTIFY") && (x & SMTPS_EXT_DSN) && parse_notify(w.v, w.vl)) {
      s->ev.notify = parse_notify(w.v, w.vl);
    } else if (key_is(&w, "ORCPT") && (x & SMTPS_EXT_DSN) && w.vl && w.vl <= SMTPS_ORCPT_MAX &&
               memchr(w.v, ';', w.vl)) {
      s->ev.orcpt = w.v;
      s->ev.orcpt_len = w.vl;
    } else if (s->p.strict) {
      fail(s, C, 555, R("555 5.5.4 Unsupported RCPT parameter\r\n"));
      return;
    }
  }
  if (s->p.strict && check_addr(a, alen, (s->p.ext & SMTPS_EXT_SMTPUTF8) != 0) < 0) {
    fail(s, C, 501, R("501 5.1.3 Bad recipient address syntax\r\n"));
    return;
  }
  decide(s, SMTPS_EV_COMMAND, P_RCPT, C, true, 250, R("250 2.1.5 Ok\r\n"));
}

static void do_data(struct smtps *s, size_t n)
{
  const enum smtps_cmd C = SMTPS_CMD_DATA;
  if (n)
    fail(s, C, 501, R("501 5.5.4 Syntax: DATA\r\n"));
  else if (!s->has_mail)
    fail(s, C, 503, R("503 5.5.1 Error: need MAIL command\r\n"));
  else if (s->bdat != BDAT_NONE)
    fail(s, C, 503, R("503 5.5.1 Error: DATA after BDAT\r\n"));
  else if (s->nrcpt == 0)
    fail(s, C, 554, R("554 5.5.1 Error: no valid recipients\r\n"));
  else
    decide(s, SMTPS_EV_COMMAND, P_DATA, C, true, 354,
           R("354 End data with <CR><LF>.<CR><LF>\r\n"));
}

/* "BDAT <size> [LAST]": decides the reply the chunk will get and starts
 * reading its octets. A line that does not parse gets 501 and no octets
 * are read (the size is unknown; Postfix does the same). */
static void do_bdat(struct smtps *s, const char *arg, size_t n)
{
  size_t d = 0;
  uint64_t size = 0;
  while (d < n && d <= BDAT_DIGITS && arg[d] >= '0' && arg[d] <= '9')
    size = size * 10 + (uint64_t)(arg[d++] - '0');
  size_t i = d;
  while (i < n && arg[i] == ' ')
    i++;
  bool last = n - i == 4 && i > d && !strncasecmp(arg + i, "LAST", 4);
  if (d == 0 || d > BDAT_DIGITS || (i < n && !last)) {
    fail(s, SMTPS_CMD_BDAT, 501, R("501 5.5.4 Syntax: BDAT count [LAST]\r\n"));
    return;
  }
  if (!s->has_mail)
    s->chunk_err = CH_NEED_MAIL;
  else if (s->nrcpt == 0)
    s->chunk_err = CH_NEED_RCPT;
  else if (s->bdat == BDAT_FAILED)
    s->chunk_err = CH_DISCARD;
  else
    s->chunk_err = CH_OK;
  if (s->chunk_err == CH_OK && s->bdat == BDAT_NONE) {
    s->msg_bytes = 0;
    s->too_big = false;
  }
  s->chunk_last = last;
  s->chunk_size = s->chunk_left = size;
  s->st = SMTPS_ST_BDAT;
  s->ev.type = SMTPS_EV_BDAT;
  s->ev.cmd = SMTPS_CMD_BDAT;
  s->ev.size = size;
  s->ev.last = last;
  s->ev_ready = true;
}

static void do_starttls(struct smtps *s, size_t n)
{
  const enum smtps_cmd C = SMTPS_CMD_STARTTLS;
  if (!(s->p.ext & SMTPS_EXT_STARTTLS))
    fail(s, C, 454, R("454 4.7.0 TLS not available\r\n"));
  else if (s->tls)
    fail(s, C, 503, R("503 5.5.1 Error: TLS already active\r\n"));
  else if (n)
    fail(s, C, 501, R("501 5.5.4 Syntax: STARTTLS\r\n"));
  else
    decide(s, SMTPS_EV_COMMAND, P_STARTTLS, C, true, 220, R("220 2.0.0 Ready to start TLS\r\n"));
}

static void do_auth(struct smtps *s, const char *arg, size_t n)
{
  const enum smtps_cmd C = SMTPS_CMD_AUTH;
  uint32_t mechs = s->p.auth_mechs;
  if (!mechs) {
    fail(s, C, 503, R("503 5.5.1 Error: authentication not enabled\r\n"));
    return;
  }
  if (!s->helo_seen) {
    fail(s, C, 503, R("503 5.5.1 Error: send HELO/EHLO first\r\n"));
    return;
  }
  if (s->authed) {
    fail(s, C, 503, R("503 5.5.1 Error: already authenticated\r\n"));
    return;
  }
  if (s->has_mail) {
    fail(s, C, 503, R("503 5.5.1 Error: MAIL transaction in progress\r\n"));
    return;
  }
  if (s->p.auth_tls_only && !s->tls) {
    fail(s, C, 538,
         R("538 5.7.11 Encryption required for requested authentication mechanism\r\n"));
    return;
  }
  const char *sp = memchr(arg, ' ', n);
  size_t ml = sp ? (size_t)(sp - arg) : n;
  uint32_t mech = 0;
  if (ml == 5 && !strncasecmp(arg, "PLAIN", 5))
    mech = SMTPS_AUTH_PLAIN;
  else if (ml == 5 && !strncasecmp(arg, "LOGIN", 5))
    mech = SMTPS_AUTH_LOGIN;
  else if (ml == 7 && !strncasecmp(arg, "XOAUTH2", 7))
    mech = SMTPS_AUTH_XOAUTH2;
  if (!(mech & mechs)) {
    fail(s, C, 504, R("504 5.5.4 Unrecognized authentication type\r\n"));
    return;
  }
  s->auth_mech = mech;
  s->ev.mech = mech;
  if (sp) {
    /* the initial response stays in the line buffer until answered */
    s->ir_off = (size_t)(sp + 1 - (const char *)buf_head(&s->line));
    s->ir_len = (size_t)(arg + n - (sp + 1));
    decide(s, SMTPS_EV_COMMAND, P_AUTH_CMD, C, true, 334, "", 0);
    return;
  }
  s->ir_len = 0;
  s->ir_off = SIZE_MAX;
  if (mech == SMTPS_AUTH_LOGIN)
    decide(s, SMTPS_EV_COMMAND, P_AUTH_CMD, C, true, 334, R("334 VXNlcm5hbWU6\r\n"));
  else
    decide(s, SMTPS_EV_COMMAND, P_AUTH_CMD, C, true, 334, R("334 \r\n"));
}

/* ---- AUTH exchanges ---- */

/* Credentials are complete: the driver decides (default: refused). */
static void auth_decide(struct smtps *s, const char *user, size_t ul, const char *pass, size_t pl,
                        bool parsed)
{
  s->ev.arg = user ? user : "";
  s->ev.arg_len = user ? ul : 0;
  s->ev.pass = pass ? pass : "";
  s->ev.pass_len = pass ? pl : 0;
  s->ev.mech = s->auth_mech;
  /* The default is the refusal: a driver must answer 235 to let a user in. */
  decide(s, SMTPS_EV_AUTH, P_AUTH_CRED, SMTPS_CMD_AUTH, parsed, 535,
         R("535 5.7.8 Authentication credentials invalid\r\n"));
}

static void auth_end(struct smtps *s)
{
  s->st = SMTPS_ST_CMD;
  s->auth_step = A_NONE;
  wipe_scratch(s);
}

/* Decode one base64 response into the scratch buffer after its first
 * `keep` bytes; returns the decoded length or -EINVAL. */
static long auth_decode(struct smtps *s, const char *p, size_t n)
{
  if (n == 1 && p[0] == '=')
    return 0;
  if (n % 4)
    return -EINVAL;
  buf_reserve(&s->scratch, n / 4 * 3 + 3);
  return base64_decode(p, n, s->scratch.data + s->scratch.len);
}

static void auth_line(struct smtps *s, const char *p, size_t n)
{
  if (s->auth_step == A_XOAUTH2_ERR) {
    auth_end(s);
    immediate_error(s, R("535 5.7.8 Authentication credentials invalid\r\n"));
    return;
  }
  if (n == 1 && p[0] == '*') {
    auth_end(s);
    immediate_error(s, R("501 5.0.0 Authentication cancelled\r\n"));
    return;
  }
  size_t base = s->auth_step == A_LOGIN_PASS ? buf_avail(&s->scratch) : 0;
  if (!base)
    buf_done(&s->scratch, 1);
  long dl = auth_decode(s, p, n);
  if (dl < 0) {
    auth_end(s);
    immediate_error(s, R("501 5.5.2 Invalid base64 data\r\n"));
    return;
  }
  s->scratch.len += (size_t)dl;
  const char *d = (const char *)buf_head(&s->scratch) + base;
  size_t dn = (size_t)dl;
  switch (s->auth_step) {
  case A_PLAIN: {
    /* authzid \0 authcid \0 passwd */
    const char *z1 = memchr(d, 0, dn);
    const char *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(d + dn - z1 - 1)) : NULL;
    if (z2)
      auth_decide(s, z1 + 1, (size_t)(z2 - z1 - 1), z2 + 1, (size_t)(d + dn - z2 - 1), true);
    else
      auth_decide(s, NULL, 0, NULL, 0, false);
    break;
  }
  case A_XOAUTH2: {
    /* "user=" U ^A "auth=Bearer " T ^A ^A */
    const char *us = NULL, *ue = NULL, *ts = NULL, *te = NULL;
    if (dn > 5 && !memcmp(d, "user=", 5)) {
      us = d + 5;
      ue = memchr(us, 1, (size_t)(d + dn - us));
      if (ue && (size_t)(d + dn - ue) > 13 && !memcmp(ue + 1, "auth=Bearer ", 12)) {
        ts = ue + 13;
        te = memchr(ts, 1, (size_t)(d + dn - ts));
      }
    }
    if (te)
      auth_decide(s, us, (size_t)(ue - us), ts, (size_t)(te - ts), true);
    else
      auth_decide(s, NULL, 0, NULL, 0, false);
    break;
  }
  case A_LOGIN_USER:
    s->auth_step = A_LOGIN_PASS;
    out(s, R("334 UGFzc3dvcmQ6\r\n"));
    break;
  case A_LOGIN_PASS: {
    const char *u = (const char *)buf_head(&s->scratch);
    auth_decide(s, u, base, d, dn, true);
    break;
  }
  default:
    util_panic("smtps: bad auth step %d", s->auth_step);
  }
}

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
        auth_line(s, (const char *)buf_head(&s->line) + s->ir_off, s->ir_len);
      }
    }
    break;
  case P_AUTH_CRED:
    if (ok) {
      s->authed = true;
      auth_end(s);
    } else if (s->st == SMTPS_ST_AUTH && s->auth_step != A_XOAUTH2_ERR) {
      auth_end(s);
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

/* ---- input ---- */

static enum smtps_cmd verb_of(const char *s, size_t n)
{
  static const struct {
    const char *v;
    enum smtps_cmd cmd;
  } verbs[] = {
    {"MAIL", SMTPS_CMD_MAIL}, {"RCPT", SMTPS_CMD_RCPT}, {"DATA", SMTPS_CMD_DATA},
    {"EHLO", SMTPS_CMD_EHLO}, {"HELO", SMTPS_CMD_HELO}, {"RSET", SMTPS_CMD_RSET},
    {"NOOP", SMTPS_CMD_NOOP}, {"QUIT", SMTPS_CMD_QUIT}, {"AUTH", SMTPS_CMD_AUTH},
    {"VRFY", SMTPS_CMD_VRFY}, {"STARTTLS", SMTPS_CMD_STARTTLS}, {"BDAT", SMTPS_CMD_BDAT},
  };
  for (size_t i = 0; i < UTIL_ARRAY_LEN(verbs); i++) {
    size_t k = strlen(verbs[i].v);
    if (n == k && !strncasecmp(s, verbs[i].v, k))
      return verbs[i].cmd;
  }
  return SMTPS_CMD_OTHER;
}

/* One complete command line in s->line (without CRLF). */
static void command(struct smtps *s, const char *l, size_t n)
{
  clear_ev(s);
  if (s->st == SMTPS_ST_AUTH) {
    auth_line(s, l, n);
    return;
  }
  const char *sp = memchr(l, ' ', n);
  size_t vl = sp ? (size_t)(sp - l) : n;
  enum smtps_cmd cmd = verb_of(l, vl);
  const char *arg = sp ? sp + 1 : l + n;
  size_t al = (size_t)(l + n - arg);
  while (al && arg[al - 1] == ' ')
    al--;
  switch (cmd) {
  case SMTPS_CMD_EHLO:
  case SMTPS_CMD_HELO:
    do_ehlo(s, cmd, arg, al);
    break;
  case SMTPS_CMD_MAIL:
    do_mail(s, arg, al);
    break;
  case SMTPS_CMD_RCPT:
    do_rcpt(s, arg, al);
    break;
  case SMTPS_CMD_DATA:
    do_data(s, al);
    break;
  case SMTPS_CMD_BDAT:
    if (!(s->p.ext & SMTPS_EXT_CHUNKING))
      fail(s, cmd, 502, R("502 5.5.1 Error: command not implemented\r\n"));
    else
      do_bdat(s, arg, al);
    break;
  case SMTPS_CMD_RSET:
    decide(s, SMTPS_EV_COMMAND, P_RSET, cmd, true, 250, R("250 2.0.0 Ok\r\n"));
    break;
  case SMTPS_CMD_NOOP:
    decide(s, SMTPS_EV_COMMAND, P_OTHER, cmd, true, 250, R("250 2.0.0 Ok\r\n"));
    break;
  case SMTPS_CMD_VRFY:
    decide(s, SMTPS_EV_COMMAND, P_OTHER, cmd, true, 252, R("252 2.0.0 Cannot VRFY user\r\n"));
    break;
  case SMTPS_CMD_QUIT:
    decide(s, SMTPS_EV_COMMAND, P_QUIT, cmd, true, 221, R("221 2.0.0 Bye\r\n"));
    break;
  case SMTPS_CMD_AUTH:
    do_auth(s, arg, al);
    break;
  case SMTPS_CMD_STARTTLS:
    do_starttls(s, al);
    break;
  case SMTPS_CMD_OTHER:
  case SMTPS_CMD_CONNECT:
  case SMTPS_CMD_DOT:
  case SMTPS_CMD_COUNT:
  default:
    fail(s, SMTPS_CMD_OTHER, 500, R("500 5.5.2 Error: command not recognized\r\n"));
    break;
  }
}

/* Message octets: counted against max_size; handed out while under it. */
static void segment(struct smtps *s, const uint8_t *p, size_t n)
{
  s->msg_bytes += n;
  if (s->p.limits.max_size && s->msg_bytes > s->p.limits.max_size)
    s->too_big = true;
  if (s->too_big || !n)
    return;
  s->ev.type = SMTPS_EV_DATA;
  s->ev.data = p;
  s->ev.len = n;
  s->ev_ready = true;
}

/* Consume DATA octets; stops after a segment (an event) or after the
 * terminating "CRLF.CRLF" (state B_END). Returns the octets consumed. */
static size_t body(struct smtps *s, const uint8_t *p, size_t n)
{
  size_t i = 0;
  while (i < n && !s->ev_ready) {
    switch (s->body_state) {
    case B_MID: {
      /* Only a dot at the start of a line matters (stuffed, or the end),
       * so look for dots, not for every line end: one vectorised scan
       * per read instead of one call per line. */
      size_t j = i, e = n;
      const uint8_t *d;
      while ((d = memchr(p + j, '.', n - j)) != NULL) {
        size_t k = (size_t)(d - p);
        if (k > i && p[k - 1] == '\n') {
          e = k;
          break;
        }
        j = k + 1;
      }
      segment(s, p + i, e - i);
      i = e;
      if (p[e - 1] == '\n')
        s->body_state = B_BOL;
      break;
    }
    case B_BOL:
      if (p[i] == '.') {
        s->body_state = B_DOT;
        i++;
      } else {
        s->body_state = B_MID;
      }
      break;
    case B_DOT:
      if (p[i] == '\r') {
        s->body_state = B_DOTCR;
        i++;
      } else {
        s->body_state = B_MID; /* a stuffed dot: dropped */
      }
      break;
    case B_DOTCR:
      if (p[i] == '\n') {
        s->body_state = B_END;
        return i + 1;
      }
      segment(s, (const uint8_t *)"\r", 1);
      s->body_state = B_MID;
      break;
    default:
      util_panic("smtps: bad body state %d", s->body_state);
    }
  }
  return i;
}

static void message_end(struct smtps *s, bool bdat)
{
  clear_ev(s);
  s->ev.size = s->msg_bytes;
  s->ev.too_big = s->too_big;
  s->ev.bdat = bdat;
  if (s->too_big)
    decide(s, SMTPS_EV_MESSAGE, P_MESSAGE, SMTPS_CMD_DOT, false, 552,
           R("552 5.3.4 Message size exceeds fixed limit\r\n"));
  else
    decide(s, SMTPS_EV_MESSAGE, P_MESSAGE, SMTPS_CMD_DOT, true, 250, R("250 2.0.0 Ok\r\n"));
}

/* All octets of a chunk are in: its reply (LAST ends the message). */
static void chunk_end(struct smtps *s)
{
  if (s->chunk_last && s->chunk_err == CH_OK) {
    s->bdat = BDAT_OPEN;
    message_end(s, true);
    return;
  }
  enum smtps_cmd stage = s->chunk_last ? SMTPS_CMD_DOT : SMTPS_CMD_BDAT;
  clear_ev(s);
  switch (s->chunk_err) {
  case CH_OK: {
    int k = snprintf(s->small, sizeof(s->small), "250 2.0.0 %llu octets received\r\n",
                     (unsigned long long)s->chunk_size);
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, true, 250, s->small, (size_t)k);
    break;
  }
  case CH_NEED_MAIL:
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, false, 503,
           R("503 5.5.1 Error: need MAIL command\r\n"));
    break;
  case CH_NEED_RCPT:
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, false, 503,
           R("503 5.5.1 Error: need RCPT command\r\n"));
    break;
  case CH_DISCARD:
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, false, 503,
           R("503 5.5.1 Error: chunk discarded after an earlier BDAT failure\r\n"));
    break;
  default:
    util_panic("smtps: bad chunk reply %d", s->chunk_err);
  }
}

size_t smtps_feed(struct smtps *s, const void *in, size_t n, uint64_t now)
{
  const uint8_t *p = in;
  size_t off = 0;
  if (s->st == SMTPS_ST_TLS)
    return n; /* RFC 3207: plaintext pipelined behind STARTTLS is discarded */
  while (!s->ev_ready && !s->decide) {
    if (buf_avail(&s->out) + s->parked > s->p.limits.max_pending_out)
      break;
    if (s->nholes == s->p.limits.max_deferred && s->st == SMTPS_ST_CMD)
      break; /* as many message replies owed as allowed: read no more */
    if (s->st == SMTPS_ST_DATA) {
      if (s->body_state == B_END) {
        message_end(s, false);
        break;
      }
      if (off == n)
        break;
      off += body(s, p + off, n - off);
      set_deadline(s, now);
      continue;
    }
    if (s->st == SMTPS_ST_BDAT) {
      if (s->chunk_left == 0) {
        chunk_end(s);
        break;
      }
      if (off == n)
        break;
      size_t k = n - off < s->chunk_left ? n - off : (size_t)s->chunk_left;
      s->chunk_left -= k;
      if (s->chunk_err == CH_OK)
        segment(s, p + off, k);
      off += k;
      set_deadline(s, now);
      continue;
    }
    if (s->st != SMTPS_ST_CMD && s->st != SMTPS_ST_AUTH)
      break;
    if (off == n)
      break;
    if (s->line_done) {
      buf_reset(&s->line);
      if (s->line.cap > LINE_KEEP)
        buf_done(&s->line, 1);
      s->line_done = false;
    }
    const uint8_t *nl = memchr(p + off, '\n', n - off);
    size_t k = nl ? (size_t)(nl - (p + off)) + 1 : n - off;
    if (s->discard) {
      off += k;
      if (nl)
        s->discard = false;
      continue;
    }
    /* the line without CRLF may be max_line long */
    if (buf_avail(&s->line) + k > (size_t)s->p.limits.max_line + 2) {
      buf_reset(&s->line);
      off += k;
      s->discard = nl == NULL;
      immediate_error(s, R("500 5.5.2 Error: line too long\r\n"));
      if (s->st == SMTPS_ST_AUTH)
        auth_end(s);
      continue;
    }
    buf_append(&s->line, p + off, k);
    off += k;
    if (!nl)
      break;
    size_t len = buf_avail(&s->line) - 1;
    const char *l = (const char *)buf_head(&s->line);
    if (len && l[len - 1] == '\r')
      len--;
    s->line_done = true;
    command(s, l, len);
    if (!s->decide && s->st != SMTPS_ST_DONE)
      set_deadline(s, now);
  }
  return off;
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
