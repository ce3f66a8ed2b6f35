/* smtps_cmd.c owns the SMTP server's command lines: the verb, MAIL and RCPT
 * paths and their parameters (SIZE, BODY, SMTPUTF8, DSN), the EHLO reply,
 * the default reply each command gets (the machine's own checks) and the
 * steps of AUTH exchanges (PLAIN, LOGIN, XOAUTH2). Each line ends in a
 * decision event the driver answers (smtps.c applies the answer). It never
 * touches a socket, TLS, a clock or a log; it never allocates per line
 * (replies are constants, the EHLO reply and AUTH data go to the session's
 * scratch buffer, wiped after AUTH). Called only by the thread that owns
 * the session. */
#include "smtps_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "buf.h"
#include "panic.h"

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

void smtps_auth_end(struct smtps *s)
{
  s->st = SMTPS_ST_CMD;
  s->auth_step = A_NONE;
  wipe_scratch(s);
}

/* Decode one base64 response into the scratch buffer after its first
 * `keep` bytes; returns the decoded length or -EINVAL. */
static long auth_decode(struct smtps *s, const char *p, size_t n)
{
  buf_reserve(&s->scratch, n / 4 * 3 + 3); /* never NULL, also for an empty response */
  if (n == 1 && p[0] == '=')
    return 0;
  if (n % 4)
    return -EINVAL;
  return base64_decode(p, n, s->scratch.data + s->scratch.len);
}

void smtps_auth_line(struct smtps *s, const char *p, size_t n)
{
  if (s->auth_step == A_XOAUTH2_ERR) {
    smtps_auth_end(s);
    smtps_immediate_error(s, R("535 5.7.8 Authentication credentials invalid\r\n"));
    return;
  }
  if (n == 1 && p[0] == '*') {
    smtps_auth_end(s);
    smtps_immediate_error(s, R("501 5.0.0 Authentication cancelled\r\n"));
    return;
  }
  size_t base = s->auth_step == A_LOGIN_PASS ? buf_avail(&s->scratch) : 0;
  if (!base)
    buf_done(&s->scratch, 1);
  long dl = auth_decode(s, p, n);
  if (dl < 0) {
    smtps_auth_end(s);
    smtps_immediate_error(s, R("501 5.5.2 Invalid base64 data\r\n"));
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

/* ---- the command line ---- */

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
void smtps_command(struct smtps *s, const char *l, size_t n)
{
  clear_ev(s);
  if (s->st == SMTPS_ST_AUTH) {
    smtps_auth_line(s, l, n);
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
