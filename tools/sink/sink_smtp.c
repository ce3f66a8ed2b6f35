/* sink_smtp.c owns the ESMTP server side of impetus-sink: command parsing,
 * the reply for each command, AUTH (PLAIN, LOGIN, XOAUTH2), DATA with
 * dot-unstuffing, BDAT chunks (RFC 3030, read straight from the input
 * without a copy), and the fault injection decided per command.
 * It never touches a socket, the ring or OpenSSL: replies are appended with
 * sink_conn_reply, and effects (pause, close, STARTTLS) are requested from
 * sink_io. No allocation per command: replies are constant strings,
 * formatted on the stack, or (hostile continuations) a static block built
 * once. Called only from the sink's single thread. */
#include "sink.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "panic.h"

const char *const sink_cmd_names[CMD__COUNT] = {
  [CMD_CONNECT] = "CONNECT", [CMD_EHLO] = "EHLO", [CMD_HELO] = "HELO",
  [CMD_STARTTLS] = "STARTTLS", [CMD_AUTH] = "AUTH", [CMD_MAIL] = "MAIL",
  [CMD_RCPT] = "RCPT", [CMD_DATA] = "DATA", [CMD_DOT] = "DOT", [CMD_BDAT] = "BDAT",
  [CMD_RSET] = "RSET",
  [CMD_NOOP] = "NOOP", [CMD_QUIT] = "QUIT", [CMD_VRFY] = "VRFY", [CMD_OTHER] = "OTHER",
};

const char *const sink_hostile_names[HOSTILE__COUNT] = {
  [HOSTILE_NONE] = "none", [HOSTILE_GARBAGE] = "garbage", [HOSTILE_ENDLESS] = "endless-line",
  [HOSTILE_CONTINUATIONS] = "continuations", [HOSTILE_SPLIT] = "split",
  [HOSTILE_DRIP] = "drip", [HOSTILE_UNSOLICITED] = "unsolicited",
  [HOSTILE_RESET_MID_DATA] = "reset-mid-data", [HOSTILE_TLS_GARBAGE] = "tls-garbage",
};

int sink_cmd_lookup(const char *name)
{
  if (!strcasecmp(name, "greeting") || !strcasecmp(name, "banner"))
    return CMD_CONNECT;
  if (!strcasecmp(name, "eod") || !strcasecmp(name, "end-of-data"))
    return CMD_DOT;
  for (int i = 0; i < CMD__COUNT; i++)
    if (!strcasecmp(name, sink_cmd_names[i]))
      return i;
  return -1;
}

/* Body parser states (dot-unstuffing across reads). */
enum { B_BOL, B_MID, B_DOT, B_DOTCR, B_END };
/* BDAT transaction (c->bdat): none, chunks accepted so far, a chunk failed
 * (the rest of the transaction's chunks are read and discarded until LAST
 * or RSET). */
enum { BDAT_NONE, BDAT_OPEN, BDAT_FAILED };
/* The reply the chunk being read gets once its octets are in (c->chunk_err). */
enum { CH_OK, CH_NEED_MAIL, CH_NEED_RCPT, CH_DISCARD };
/* AUTH continuation steps. */
enum { A_NONE, A_PLAIN, A_LOGIN_USER, A_LOGIN_PASS, A_XOAUTH2, A_XOAUTH2_ERR };

#define R(s) s, sizeof(s) - 1
/* A continuation line is at most 3 + 19 + 5 + 2 bytes (i < 100000). */
_Static_assert(SINK_CONTINUATIONS <= 100000, "hostile continuation lines must fit 32 bytes");
#define PAUSED 1

static void run_in(struct sink_conn *c);

static void emit_raw(struct sink_conn *c, const char *s, size_t n)
{
  sink_conn_reply(c, s, n);
}

/* The SINK_CONTINUATIONS hostile lines "<code>-continuation line <i>" (about
 * 270 KB) for a NUL-terminated reply code of at most 3 bytes. They are
 * formatted once and queued with one append (formatting them line by line
 * cost milliseconds per hostile reply); a new 3-byte code is patched in. */
static const char *continuations(const char *code, size_t *len)
{
  static char block[SINK_CONTINUATIONS * 32];
  static size_t block_len;
  static char block_code[4];
  if (block_len && !memcmp(code, block_code, sizeof(block_code))) {
    *len = block_len;
    return block;
  }
  if (block_len && strlen(code) == 3 && strlen(block_code) == 3) {
    /* Same line lengths: rewrite the first 3 bytes of each line. */
    for (char *p = block, *end = block + block_len; p < end;) {
      memcpy(p, code, 3);
      p = (char *)memchr(p + 3, '\n', (size_t)(end - p - 3)) + 1;
    }
  } else {
    size_t k = 0;
    for (int i = 0; i < SINK_CONTINUATIONS; i++)
      k += (size_t)snprintf(block + k, sizeof(block) - k, "%s-continuation line %d\r\n", code, i);
    block_len = k;
  }
  memcpy(block_code, code, sizeof(block_code));
  *len = block_len;
  return block;
}

/* Hostile behaviour replaces or decorates the reply to its stage. */
static void hostile_apply(struct sink_conn *c, const char *s, size_t n)
{
  int mode = g_sink.o.hostile;
  g_sink.st.hostile_injected[mode]++;
  switch (mode) {
  case HOSTILE_GARBAGE:
    emit_raw(c, R("\x01\x7f\xff garbage \xfe\x80 not an SMTP reply\r\n"));
    return;
  case HOSTILE_ENDLESS:
    c->state = ST_QUIT;
    sink_conn_start_endless(c);
    return;
  case HOSTILE_CONTINUATIONS: {
    char code[4] = {'2', '5', '0', 0};
    if (n >= 3)
      memcpy(code, s, 3);
    size_t k;
    const char *b = continuations(code, &k);
    emit_raw(c, b, k);
    emit_raw(c, s, n);
    return;
  }
  case HOSTILE_SPLIT:
  case HOSTILE_DRIP:
    c->bytewise = (uint8_t)mode;
    emit_raw(c, s, n);
    return;
  case HOSTILE_UNSOLICITED:
    emit_raw(c, s, n);
    emit_raw(c, R("250 2.0.0 unsolicited data (impetus-sink hostile)\r\n"));
    return;
  case HOSTILE_RESET_MID_DATA:
  default:
    emit_raw(c, s, n);
    return;
  }
}

/* The reply to stage `cmd`: hostile behaviour applies here. */
static void emit(struct sink_conn *c, int cmd, const char *s, size_t n)
{
  if (g_sink.o.hostile != HOSTILE_NONE && g_sink.o.hostile_stage == cmd &&
      g_sink.o.hostile != HOSTILE_RESET_MID_DATA && g_sink.o.hostile != HOSTILE_TLS_GARBAGE) {
    hostile_apply(c, s, n);
    return;
  }
  emit_raw(c, s, n);
}

static void reset_txn(struct sink_conn *c)
{
  c->has_mail = 0;
  c->nrcpt = 0;
  c->too_big = 0;
  c->msg_bytes = 0;
  c->bdat = BDAT_NONE;
  buf_reset(&c->env);
  if (c->env.cap > 4096)
    buf_done(&c->env, 0);
  buf_reset(&c->msg);
  if (c->msg.cap > (1u << 20))
    buf_done(&c->msg, 0);
}

static void disconnect(struct sink_conn *c, int cmd)
{
  g_sink.st.disconnect_injected[cmd]++;
  emit_raw(c, R("421 4.3.2 Service shutting down, closing transmission channel (injected)\r\n"));
  c->state = ST_QUIT;
  sink_conn_close_after_send(c);
}

/* Fault injection for one command: 1 if a failure reply was sent. */
static int inject_fail(struct sink_conn *c, int cmd)
{
  const struct sink_fail *f = &g_sink.o.fail[cmd];
  if (f->ratio <= 0 || sink_rand() >= f->ratio)
    return 0;
  g_sink.st.fail_injected[cmd]++;
  int code = f->code;
  const char *esc;
  char line[160];
  if (code == 4 || code == 5) {
    static const int tmp[CMD__COUNT] = {[CMD_AUTH] = 454, [CMD_RCPT] = 450};
    static const int perm[CMD__COUNT] = {[CMD_AUTH] = 535, [CMD_RCPT] = 550, [CMD_MAIL] = 550,
                                        [CMD_DATA] = 554, [CMD_DOT] = 554};
    int d = code == 4 ? tmp[cmd] : perm[cmd];
    code = d ? d : (code == 4 ? 451 : 554);
  }
  if (cmd == CMD_AUTH)
    esc = code / 100 == 4 ? "4.7.0" : "5.7.8";
  else if (cmd == CMD_RCPT)
    esc = code / 100 == 4 ? "4.2.0" : "5.1.1";
  else
    esc = code / 100 == 4 ? "4.3.0" : "5.3.0";
  int k = snprintf(line, sizeof(line), "%d %s Injected %s failure for %s (impetus-sink)\r\n", code,
                   esc, code / 100 == 4 ? "temporary" : "permanent", sink_cmd_names[cmd]);
  emit(c, cmd, line, (size_t)k);
  return 1;
}

/* Parse "FROM:<addr> params" or "TO:<addr> params". Sets *a and *alen to the
 * address (without brackets) and *params to what follows. 0 or -EINVAL. */
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

/* Envelope records: NUL-separated "from\0rcpt\0rcpt\0..." in c->env. */
static void env_add(struct sink_conn *c, const char *a, size_t n)
{
  if (!g_sink.jsonl)
    return;
  if (n > SINK_MAX_ADDR)
    n = SINK_MAX_ADDR;
  buf_append(&c->env, a, n);
  buf_append(&c->env, "", 1);
}

static void do_ehlo(struct sink_conn *c, int cmd, const char *arg, size_t n)
{
  if (n == 0) {
    emit(c, cmd, R("501 5.5.4 Syntax: EHLO hostname\r\n"));
    return;
  }
  reset_txn(c);
  c->helo_seen = 1;
  c->esmtp = cmd == CMD_EHLO;
  char r[512];
  size_t k;
  if (cmd == CMD_HELO) {
    k = (size_t)snprintf(r, sizeof(r), "250 %s\r\n", g_sink.o.hostname);
    emit(c, cmd, r, k);
    return;
  }
  k = (size_t)snprintf(r, sizeof(r), "250-%s\r\n", g_sink.o.hostname);
  if (!g_sink.o.no_pipelining)
    k += (size_t)snprintf(r + k, sizeof(r) - k, "250-PIPELINING\r\n");
  k += (size_t)snprintf(r + k, sizeof(r) - k, "250-SIZE %llu\r\n250-8BITMIME\r\n",
                        (unsigned long long)g_sink.o.max_size);
  if (!g_sink.o.no_chunking)
    k += (size_t)snprintf(r + k, sizeof(r) - k, "250-CHUNKING\r\n");
  if (g_sink.ssl_ctx && !g_sink.o.no_starttls && !c->tls_active)
    k += (size_t)snprintf(r + k, sizeof(r) - k, "250-STARTTLS\r\n");
  int mechs = g_sink.o.nusers ? g_sink.o.auth_mechs : 0;
  if (mechs && (!g_sink.o.require_tls_for_auth || c->tls_active))
    k += (size_t)snprintf(r + k, sizeof(r) - k, "250-AUTH%s%s%s\r\n",
                          mechs & AUTH_PLAIN ? " PLAIN" : "", mechs & AUTH_LOGIN ? " LOGIN" : "",
                          mechs & AUTH_XOAUTH2 ? " XOAUTH2" : "");
  k += (size_t)snprintf(r + k, sizeof(r) - k, "250 ENHANCEDSTATUSCODES\r\n");
  emit(c, cmd, r, k);
}

static void do_mail(struct sink_conn *c, const char *arg, size_t n)
{
  if (!c->helo_seen) {
    emit(c, CMD_MAIL, R("503 5.5.1 Error: send HELO/EHLO first\r\n"));
    return;
  }
  if (c->has_mail) {
    emit(c, CMD_MAIL, R("503 5.5.1 Error: nested MAIL command\r\n"));
    return;
  }
  if (g_sink.o.require_auth && !c->user) {
    if (g_sink.o.require_tls_for_auth && !c->tls_active)
      emit(c, CMD_MAIL, R("530 5.7.0 Must issue a STARTTLS command first\r\n"));
    else
      emit(c, CMD_MAIL, R("530 5.7.0 Authentication required\r\n"));
    return;
  }
  const char *a, *params;
  size_t alen, plen;
  if (parse_path(arg, n, "FROM:", &a, &alen, &params, &plen) < 0) {
    emit(c, CMD_MAIL, R("501 5.5.4 Syntax: MAIL FROM:<address>\r\n"));
    return;
  }
  /* ESMTP parameters: SIZE is checked, BODY and others are accepted. */
  while (plen) {
    while (plen && *params == ' ') {
      params++;
      plen--;
    }
    const char *e = memchr(params, ' ', plen);
    size_t wl = e ? (size_t)(e - params) : plen;
    if (wl > 5 && !strncasecmp(params, "SIZE=", 5)) {
      unsigned long long v = 0;
      for (size_t i = 5; i < wl && isdigit((unsigned char)params[i]); i++)
        v = v * 10 + (unsigned)(params[i] - '0');
      if (g_sink.o.max_size && v > g_sink.o.max_size) {
        emit(c, CMD_MAIL, R("552 5.3.4 Message size exceeds fixed limit\r\n"));
        return;
      }
    }
    params += wl;
    plen -= wl;
  }
  if (inject_fail(c, CMD_MAIL))
    return;
  reset_txn(c);
  c->has_mail = 1;
  env_add(c, a, alen);
  emit(c, CMD_MAIL, R("250 2.1.0 Ok\r\n"));
}

static void do_rcpt(struct sink_conn *c, const char *arg, size_t n)
{
  if (!c->has_mail) {
    emit(c, CMD_RCPT, R("503 5.5.1 Error: need MAIL command\r\n"));
    return;
  }
  if (c->bdat != BDAT_NONE) {
    emit(c, CMD_RCPT, R("503 5.5.1 Error: RCPT after BDAT\r\n"));
    return;
  }
  const char *a, *params;
  size_t alen, plen;
  if (parse_path(arg, n, "TO:", &a, &alen, &params, &plen) < 0 || alen == 0) {
    emit(c, CMD_RCPT, R("501 5.5.4 Syntax: RCPT TO:<address>\r\n"));
    return;
  }
  if (c->nrcpt >= g_sink.o.max_rcpts) {
    emit(c, CMD_RCPT, R("452 4.5.3 Error: too many recipients\r\n"));
    return;
  }
  if (inject_fail(c, CMD_RCPT))
    return;
  c->nrcpt++;
  env_add(c, a, alen);
  emit(c, CMD_RCPT, R("250 2.1.5 Ok\r\n"));
}

static void do_data(struct sink_conn *c, size_t n)
{
  if (n) {
    emit(c, CMD_DATA, R("501 5.5.4 Syntax: DATA\r\n"));
    return;
  }
  if (!c->has_mail) {
    emit(c, CMD_DATA, R("503 5.5.1 Error: need MAIL command\r\n"));
    return;
  }
  if (c->bdat != BDAT_NONE) {
    emit(c, CMD_DATA, R("503 5.5.1 Error: DATA after BDAT\r\n"));
    return;
  }
  if (c->nrcpt == 0) {
    emit(c, CMD_DATA, R("554 5.5.1 Error: no valid recipients\r\n"));
    return;
  }
  if (inject_fail(c, CMD_DATA))
    return;
  c->state = ST_DATA;
  c->body_state = B_BOL;
  c->msg_bytes = 0;
  c->body_seen = 0;
  buf_reset(&c->msg);
  emit(c, CMD_DATA, R("354 End data with <CR><LF>.<CR><LF>\r\n"));
}

/* --- AUTH --- */

static const struct sink_user *find_user(const char *u, size_t ulen, const char *p, size_t plen)
{
  for (size_t i = 0; i < g_sink.o.nusers; i++) {
    const struct sink_user *x = &g_sink.o.users[i];
    if (strlen(x->name) == ulen && !memcmp(x->name, u, ulen) && strlen(x->pass) == plen &&
        !memcmp(x->pass, p, plen))
      return x;
  }
  return NULL;
}

static void auth_result(struct sink_conn *c, const struct sink_user *u, const char *mech)
{
  c->state = ST_CMD;
  c->auth_step = A_NONE;
  buf_done(&c->env, 1);
  if (u) {
    c->user = u;
    c->mech = mech;
    g_sink.st.auth_ok++;
    sink_table_get(&g_sink.st.per_mech, mech)->connections++;
    emit(c, CMD_AUTH, R("235 2.7.0 Authentication successful\r\n"));
  } else {
    g_sink.st.auth_failed++;
    emit(c, CMD_AUTH, R("535 5.7.8 Authentication credentials invalid\r\n"));
  }
}

/* Decode a base64 AUTH response into out (SINK_MAX_LINE bytes); -EINVAL on bad input. */
static long auth_decode(const char *s, size_t n, char *out)
{
  if (n == 1 && s[0] == '=')
    return 0;
  if (n % 4)
    return -EINVAL;
  return base64_decode(s, n, out);
}

static void auth_plain(struct sink_conn *c, const char *d, size_t n)
{
  /* authzid \0 authcid \0 passwd */
  const char *z1 = memchr(d, 0, n);
  const struct sink_user *u = NULL;
  if (z1) {
    const char *a = z1 + 1;
    const char *z2 = memchr(a, 0, (size_t)(d + n - a));
    if (z2)
      u = find_user(a, (size_t)(z2 - a), z2 + 1, (size_t)(d + n - z2 - 1));
  }
  auth_result(c, u, "PLAIN");
}

static void auth_xoauth2(struct sink_conn *c, const char *d, size_t n)
{
  /* "user=" U ^A "auth=Bearer " T ^A ^A ; the token is checked as the password. */
  const struct sink_user *u = NULL;
  if (n > 5 && !memcmp(d, "user=", 5)) {
    const char *us = d + 5;
    const char *ue = memchr(us, 1, (size_t)(d + n - us));
    if (ue && (size_t)(d + n - ue) > 13 && !memcmp(ue + 1, "auth=Bearer ", 12)) {
      const char *ts = ue + 13;
      const char *te = memchr(ts, 1, (size_t)(d + n - ts));
      if (te)
        u = find_user(us, (size_t)(ue - us), ts, (size_t)(te - ts));
    }
  }
  if (u) {
    auth_result(c, u, "XOAUTH2");
    return;
  }
  /* RFC-less but universal: an error challenge, then 535 after the empty reply. */
  static const char err[] = "{\"status\":\"401\",\"schemes\":\"bearer\",\"scope\":\"mail\"}";
  char b[128];
  size_t k = base64_encode(err, sizeof(err) - 1, b + 4);
  memcpy(b, "334 ", 4);
  memcpy(b + 4 + k, "\r\n", 2);
  c->state = ST_AUTH;
  c->auth_step = A_XOAUTH2_ERR;
  emit(c, CMD_AUTH, b, k + 6);
}

static void auth_step(struct sink_conn *c, const char *s, size_t n)
{
  char d[SINK_MAX_LINE];
  if (c->auth_step == A_XOAUTH2_ERR) {
    g_sink.st.auth_failed++;
    c->state = ST_CMD;
    c->auth_step = A_NONE;
    emit(c, CMD_AUTH, R("535 5.7.8 Authentication credentials invalid\r\n"));
    return;
  }
  if (n == 1 && s[0] == '*') {
    c->state = ST_CMD;
    c->auth_step = A_NONE;
    buf_done(&c->env, 1);
    emit(c, CMD_AUTH, R("501 5.0.0 Authentication cancelled\r\n"));
    return;
  }
  long dl = auth_decode(s, n, d);
  if (dl < 0) {
    c->state = ST_CMD;
    c->auth_step = A_NONE;
    buf_done(&c->env, 1);
    emit(c, CMD_AUTH, R("501 5.5.2 Invalid base64 data\r\n"));
    return;
  }
  switch (c->auth_step) {
  case A_PLAIN:
    auth_plain(c, d, (size_t)dl);
    break;
  case A_XOAUTH2:
    auth_xoauth2(c, d, (size_t)dl);
    break;
  case A_LOGIN_USER:
    buf_reset(&c->env);
    buf_append(&c->env, d, (size_t)dl);
    c->auth_step = A_LOGIN_PASS;
    emit(c, CMD_AUTH, R("334 UGFzc3dvcmQ6\r\n"));
    break;
  case A_LOGIN_PASS: {
    const struct sink_user *u =
        find_user((const char *)c->env.data, buf_avail(&c->env), d, (size_t)dl);
    auth_result(c, u, "LOGIN");
    break;
  }
  default:
    util_panic("sink: bad auth step %d", c->auth_step);
  }
  util_wipe(d, (size_t)dl);
}

static void do_auth(struct sink_conn *c, const char *arg, size_t n)
{
  int mechs = g_sink.o.nusers ? g_sink.o.auth_mechs : 0;
  if (!mechs) {
    emit(c, CMD_AUTH, R("503 5.5.1 Error: authentication not enabled\r\n"));
    return;
  }
  if (!c->helo_seen) {
    emit(c, CMD_AUTH, R("503 5.5.1 Error: send HELO/EHLO first\r\n"));
    return;
  }
  if (c->user) {
    emit(c, CMD_AUTH, R("503 5.5.1 Error: already authenticated\r\n"));
    return;
  }
  if (c->has_mail) {
    emit(c, CMD_AUTH, R("503 5.5.1 Error: MAIL transaction in progress\r\n"));
    return;
  }
  if (g_sink.o.require_tls_for_auth && !c->tls_active) {
    emit(c, CMD_AUTH, R("538 5.7.11 Encryption required for requested authentication mechanism\r\n"));
    return;
  }
  const char *sp = memchr(arg, ' ', n);
  size_t ml = sp ? (size_t)(sp - arg) : n;
  const char *ir = sp ? sp + 1 : NULL;
  size_t irl = sp ? (size_t)(arg + n - ir) : 0;
  int mech = 0;
  if (ml == 5 && !strncasecmp(arg, "PLAIN", 5))
    mech = AUTH_PLAIN;
  else if (ml == 5 && !strncasecmp(arg, "LOGIN", 5))
    mech = AUTH_LOGIN;
  else if (ml == 7 && !strncasecmp(arg, "XOAUTH2", 7))
    mech = AUTH_XOAUTH2;
  if (!(mech & mechs)) {
    emit(c, CMD_AUTH, R("504 5.5.4 Unrecognized authentication type\r\n"));
    return;
  }
  if (inject_fail(c, CMD_AUTH))
    return;
  c->state = ST_AUTH;
  if (mech == AUTH_PLAIN) {
    c->auth_step = A_PLAIN;
    if (ir)
      auth_step(c, ir, irl);
    else
      emit(c, CMD_AUTH, R("334 \r\n"));
  } else if (mech == AUTH_XOAUTH2) {
    c->auth_step = A_XOAUTH2;
    if (ir)
      auth_step(c, ir, irl);
    else
      emit(c, CMD_AUTH, R("334 \r\n"));
  } else {
    c->auth_step = A_LOGIN_USER;
    if (ir)
      auth_step(c, ir, irl);
    else
      emit(c, CMD_AUTH, R("334 VXNlcm5hbWU6\r\n"));
  }
}

/* --- DATA --- */

static void body_emit(struct sink_conn *c, const uint8_t *p, size_t n)
{
  c->msg_bytes += n;
  if (g_sink.o.max_size && c->msg_bytes > g_sink.o.max_size)
    c->too_big = 1;
  if (g_sink.o.save_dir && !c->too_big)
    buf_append(&c->msg, p, n);
}

/* Consume body bytes; stops after the terminating "CRLF.CRLF" (state B_END). */
static size_t body(struct sink_conn *c, const uint8_t *p, size_t n)
{
  if (g_sink.o.hostile == HOSTILE_RESET_MID_DATA && n) {
    g_sink.st.hostile_injected[HOSTILE_RESET_MID_DATA]++;
    c->state = ST_QUIT;
    sink_conn_close(c, 1);
    return n;
  }
  size_t i = 0;
  while (i < n) {
    switch (c->body_state) {
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
      body_emit(c, p + i, e - i);
      i = e;
      if (p[e - 1] == '\n')
        c->body_state = B_BOL;
      break;
    }
    case B_BOL:
      if (p[i] == '.') {
        c->body_state = B_DOT;
        i++;
      } else {
        c->body_state = B_MID;
      }
      break;
    case B_DOT:
      if (p[i] == '\r') {
        c->body_state = B_DOTCR;
        i++;
      } else {
        c->body_state = B_MID; /* a stuffed dot: dropped */
      }
      break;
    case B_DOTCR:
      if (p[i] == '\n') {
        c->body_state = B_END;
        return i + 1;
      }
      body_emit(c, (const uint8_t *)"\r", 1);
      c->body_state = B_MID;
      break;
    default:
      util_panic("sink: bad body state %d", c->body_state);
    }
  }
  return n;
}

static int finish_data(struct sink_conn *c)
{
  uint32_t ms = g_sink.o.latency_ms[CMD_DOT];
  if (ms && !c->delay_done) {
    g_sink.st.delayed[CMD_DOT]++;
    sink_conn_pause(c, ms);
    return PAUSED;
  }
  c->delay_done = 0;
  c->state = ST_CMD;
  if (g_sink.o.disconnect_at == CMD_DOT) {
    disconnect(c, CMD_DOT);
    return 0;
  }
  if (c->too_big) {
    g_sink.st.messages_rejected++;
    emit(c, CMD_DOT, R("552 5.3.4 Message size exceeds fixed limit\r\n"));
  } else if (inject_fail(c, CMD_DOT)) {
    g_sink.st.messages_rejected++;
  } else {
    uint64_t id = sink_record_message(c);
    if (c->bdat != BDAT_NONE)
      g_sink.st.bdat_messages++;
    char r[80];
    int k = snprintf(r, sizeof(r), "250 2.0.0 Ok: queued as %llu\r\n", (unsigned long long)id);
    emit(c, CMD_DOT, r, (size_t)k);
  }
  reset_txn(c);
  return 0;
}

/* --- BDAT (RFC 3030) --- */

/* "BDAT <size> [LAST]": decides the reply the chunk will get and starts
 * reading its octets (ST_BDAT). A line that does not parse gets 501 and no
 * octets are read (the size is unknown; Postfix does the same). Returns
 * PAUSED when the 501 must wait for --latency BDAT. */
static int do_bdat(struct sink_conn *c, const char *arg, size_t n)
{
  size_t d = 0;
  uint64_t size = 0;
  while (d < n && d <= SINK_BDAT_DIGITS && arg[d] >= '0' && arg[d] <= '9')
    size = size * 10 + (uint64_t)(arg[d++] - '0');
  size_t i = d;
  while (i < n && arg[i] == ' ')
    i++;
  int last = n - i == 4 && i > d && !strncasecmp(arg + i, "LAST", 4);
  if (d == 0 || d > SINK_BDAT_DIGITS || (i < n && !last)) {
    uint32_t ms = g_sink.o.latency_ms[CMD_BDAT];
    if (ms && !c->delay_done) {
      g_sink.st.delayed[CMD_BDAT]++;
      sink_conn_pause(c, ms);
      return PAUSED;
    }
    c->delay_done = 0;
    emit(c, CMD_BDAT, R("501 5.5.4 Syntax: BDAT count [LAST]\r\n"));
    return 0;
  }
  g_sink.st.bdat_chunks++;
  if (!c->has_mail)
    c->chunk_err = CH_NEED_MAIL;
  else if (c->nrcpt == 0)
    c->chunk_err = CH_NEED_RCPT;
  else if (c->bdat == BDAT_FAILED)
    c->chunk_err = CH_DISCARD;
  else
    c->chunk_err = CH_OK;
  if (c->chunk_err == CH_OK && c->bdat == BDAT_NONE) {
    c->msg_bytes = 0;
    buf_reset(&c->msg);
  }
  c->chunk_last = (uint8_t)last;
  c->chunk_size = c->chunk_left = size;
  c->state = ST_BDAT;
  return 0;
}

/* Consume octets of the chunk being read: message data, taken raw (no dot
 * handling), or discarded when the chunk is refused. */
static void chunk_data(struct sink_conn *c, const uint8_t *p, size_t n)
{
  if (g_sink.o.hostile == HOSTILE_RESET_MID_DATA) {
    g_sink.st.hostile_injected[HOSTILE_RESET_MID_DATA]++;
    c->state = ST_QUIT;
    sink_conn_close(c, 1);
    return;
  }
  c->chunk_left -= n;
  if (c->chunk_err == CH_OK)
    body_emit(c, p, n);
}

/* All octets of the chunk are in: its reply. LAST ends the transaction as
 * DATA's dot does (same checks, records and faults, via finish_data). */
static int finish_chunk(struct sink_conn *c)
{
  if (c->chunk_last && c->chunk_err == CH_OK) {
    c->bdat = BDAT_OPEN;
    return finish_data(c);
  }
  int stage = c->chunk_last ? CMD_DOT : CMD_BDAT;
  uint32_t ms = g_sink.o.latency_ms[stage];
  if (ms && !c->delay_done) {
    g_sink.st.delayed[stage]++;
    sink_conn_pause(c, ms);
    return PAUSED;
  }
  c->delay_done = 0;
  c->state = ST_CMD;
  switch (c->chunk_err) {
  case CH_OK: {
    if (inject_fail(c, CMD_BDAT)) {
      c->bdat = BDAT_FAILED;
      break;
    }
    c->bdat = BDAT_OPEN;
    char r[80];
    int k = snprintf(r, sizeof(r), "250 2.0.0 %llu octets received\r\n",
                     (unsigned long long)c->chunk_size);
    emit(c, CMD_BDAT, r, (size_t)k);
    break;
  }
  case CH_NEED_MAIL:
    emit(c, stage, R("503 5.5.1 Error: need MAIL command\r\n"));
    break;
  case CH_NEED_RCPT:
    emit(c, stage, R("503 5.5.1 Error: need RCPT command\r\n"));
    break;
  case CH_DISCARD:
    emit(c, stage, R("503 5.5.1 Error: chunk discarded after an earlier BDAT failure\r\n"));
    break;
  default:
    util_panic("sink: bad chunk reply %d", c->chunk_err);
  }
  if (c->chunk_last)
    reset_txn(c);
  return 0;
}

/* --- commands --- */

static int verb_of(const char *s, size_t n)
{
  static const struct { const char *v; int cmd; } verbs[] = {
    {"MAIL", CMD_MAIL}, {"RCPT", CMD_RCPT}, {"DATA", CMD_DATA}, {"EHLO", CMD_EHLO},
    {"HELO", CMD_HELO}, {"RSET", CMD_RSET}, {"NOOP", CMD_NOOP}, {"QUIT", CMD_QUIT},
    {"AUTH", CMD_AUTH}, {"VRFY", CMD_VRFY}, {"STARTTLS", CMD_STARTTLS}, {"BDAT", CMD_BDAT},
  };
  for (size_t i = 0; i < UTIL_ARRAY_LEN(verbs); i++) {
    size_t k = strlen(verbs[i].v);
    if (n == k && !strncasecmp(s, verbs[i].v, k))
      return verbs[i].cmd;
  }
  return CMD_OTHER;
}

/* One command line (without CRLF). Returns PAUSED when it must be re-run later. */
static int line(struct sink_conn *c, const char *s, size_t n)
{
  if (c->state == ST_AUTH) {
    auth_step(c, s, n);
    return 0;
  }
  const char *sp = memchr(s, ' ', n);
  size_t vl = sp ? (size_t)(sp - s) : n;
  int cmd = verb_of(s, vl);
  const char *arg = sp ? sp + 1 : s + n;
  size_t al = (size_t)(s + n - arg);
  while (al && arg[al - 1] == ' ')
    al--;

  /* A BDAT chunk's reply waits for its octets: its delay comes then. */
  int chunk = cmd == CMD_BDAT && !g_sink.o.no_chunking;
  uint32_t ms = g_sink.o.latency_ms[cmd];
  if (ms && !c->delay_done && !chunk) {
    g_sink.st.delayed[cmd]++;
    sink_conn_pause(c, ms);
    return PAUSED;
  }
  if (!chunk)
    c->delay_done = 0;
  if (g_sink.o.disconnect_at == cmd) {
    disconnect(c, cmd);
    return 0;
  }
  switch (cmd) {
  case CMD_EHLO:
  case CMD_HELO:
    do_ehlo(c, cmd, arg, al);
    break;
  case CMD_MAIL:
    do_mail(c, arg, al);
    break;
  case CMD_RCPT:
    do_rcpt(c, arg, al);
    break;
  case CMD_DATA:
    do_data(c, al);
    break;
  case CMD_BDAT:
    if (!chunk) {
      emit(c, cmd, R("502 5.5.1 Error: command not implemented\r\n"));
      break;
    }
    return do_bdat(c, arg, al);
  case CMD_RSET:
    reset_txn(c);
    emit(c, cmd, R("250 2.0.0 Ok\r\n"));
    break;
  case CMD_NOOP:
    if (!inject_fail(c, cmd))
      emit(c, cmd, R("250 2.0.0 Ok\r\n"));
    break;
  case CMD_VRFY:
    emit(c, cmd, R("252 2.0.0 Cannot VRFY user\r\n"));
    break;
  case CMD_QUIT:
    emit(c, cmd, R("221 2.0.0 Bye\r\n"));
    c->state = ST_QUIT;
    sink_conn_close_after_send(c);
    break;
  case CMD_AUTH:
    do_auth(c, arg, al);
    break;
  case CMD_STARTTLS:
    if (!g_sink.ssl_ctx || g_sink.o.no_starttls) {
      emit(c, cmd, R("454 4.7.0 TLS not available\r\n"));
    } else if (c->tls_active) {
      emit(c, cmd, R("503 5.5.1 Error: TLS already active\r\n"));
    } else if (al) {
      emit(c, cmd, R("501 5.5.4 Syntax: STARTTLS\r\n"));
    } else if (!inject_fail(c, cmd)) {
      emit(c, cmd, R("220 2.0.0 Ready to start TLS\r\n"));
      if (c->state == ST_QUIT)
        break;
      if (g_sink.o.hostile == HOSTILE_TLS_GARBAGE) {
        c->tls_garbage = 1; /* the ClientHello gets it (sink_io) */
        break;
      }
      reset_txn(c);
      c->helo_seen = 0;
      if (sink_conn_start_tls(c) < 0) {
        c->state = ST_QUIT;
        sink_conn_close(c, 0);
      }
    }
    break;
  case CMD_OTHER:
  default:
    emit(c, cmd, R("500 5.5.2 Error: command not recognized\r\n"));
    break;
  }
  return 0;
}

/* Process as much of p as possible; returns the bytes consumed. */
static size_t process(struct sink_conn *c, const uint8_t *p, size_t n)
{
  size_t off = 0;
  while (!c->paused && !c->closing && c->state != ST_QUIT && c->state != ST_GREETING) {
    if (c->state == ST_BDAT) {
      if (c->chunk_left == 0) {
        if (finish_chunk(c) == PAUSED)
          break;
        continue;
      }
      if (off == n)
        break;
      size_t k = n - off < c->chunk_left ? n - off : (size_t)c->chunk_left;
      chunk_data(c, p + off, k);
      off += k;
      continue;
    }
    if (c->state == ST_DATA) {
      if (c->body_state == B_END) {
        if (finish_data(c) == PAUSED)
          break;
        continue;
      }
      if (off == n)
        break;
      off += body(c, p + off, n - off);
      continue;
    }
    if (off == n)
      break;
    const uint8_t *nl = memchr(p + off, '\n', n - off);
    if (c->discard_line) {
      if (!nl)
        return n;
      off = (size_t)(nl - p) + 1;
      c->discard_line = 0;
      continue;
    }
    if (!nl) {
      if (n - off > SINK_MAX_LINE) {
        emit_raw(c, R("500 5.5.2 Error: line too long\r\n"));
        c->discard_line = 1;
        return n;
      }
      break;
    }
    size_t len = (size_t)(nl - (p + off));
    if (len && p[off + len - 1] == '\r')
      len--;
    if (len > SINK_MAX_LINE) {
      emit_raw(c, R("500 5.5.2 Error: line too long\r\n"));
      off = (size_t)(nl - p) + 1;
      continue;
    }
    int was_tls = c->tls_active;
    if (line(c, (const char *)p + off, len) == PAUSED)
      break;
    off = (size_t)(nl - p) + 1;
    if (c->tls_active && !was_tls)
      return n; /* RFC 3207: plaintext pipelined after STARTTLS is discarded */
  }
  return off;
}

static void run_in(struct sink_conn *c)
{
  size_t used = process(c, buf_head(&c->in), buf_avail(&c->in));
  buf_consume(&c->in, used);
  if (c->state == ST_QUIT || c->closing)
    buf_reset(&c->in);
  if (buf_avail(&c->in) == 0 && c->in.cap > 65536)
    buf_done(&c->in, 0);
}

void sink_smtp_feed(struct sink_conn *c, const uint8_t *p, size_t n)
{
  if (c->state == ST_QUIT || c->closing)
    return;
  /* A partial command line is waiting in c->in: complete it with the input
   * up to its line end only, so that what follows (a BDAT chunk's octets,
   * the next commands) is parsed from p without a copy. */
  int was_tls = c->tls_active;
  while (n && buf_avail(&c->in) && !c->paused && c->state != ST_GREETING) {
    const uint8_t *nl = memchr(p, '\n', n);
    size_t k = nl ? (size_t)(nl - p) + 1 : n;
    if (buf_avail(&c->in) + k > SINK_MAX_OUTBUF) {
      c->state = ST_QUIT;
      sink_conn_close(c, 0);
      return;
    }
    buf_append(&c->in, p, k);
    p += k;
    n -= k;
    run_in(c);
    if (c->state == ST_QUIT || c->closing || c->tls_active != was_tls)
      return; /* RFC 3207: plaintext pipelined after STARTTLS is discarded */
  }
  if (!n)
    return;
  if (c->paused || c->state == ST_GREETING || buf_avail(&c->in)) {
    if (buf_avail(&c->in) + n > SINK_MAX_OUTBUF) {
      c->state = ST_QUIT;
      sink_conn_close(c, 0);
      return;
    }
    buf_append(&c->in, p, n);
    if (!c->paused && c->state != ST_GREETING)
      run_in(c);
    return;
  }
  size_t used = process(c, p, n);
  if (used < n && c->state != ST_QUIT && !c->closing)
    buf_append(&c->in, p + used, n - used);
}

static void greet(struct sink_conn *c)
{
  uint32_t ms = g_sink.o.latency_ms[CMD_CONNECT];
  if (ms && !c->delay_done) {
    g_sink.st.delayed[CMD_CONNECT]++;
    sink_conn_pause(c, ms);
    return;
  }
  c->delay_done = 0;
  if (g_sink.o.disconnect_at == CMD_CONNECT) {
    disconnect(c, CMD_CONNECT);
    return;
  }
  c->state = ST_CMD;
  emit(c, CMD_CONNECT, g_sink.greeting, g_sink.greeting_len);
  if (buf_avail(&c->in) && c->state == ST_CMD)
    run_in(c);
}

void sink_smtp_start(struct sink_conn *c)
{
  c->state = ST_GREETING;
  greet(c);
}

void sink_hostile_tls_garbage(struct sink_conn *c)
{
  g_sink.st.hostile_injected[HOSTILE_TLS_GARBAGE]++;
  c->tls_garbage = 0;
  emit_raw(c, R("this is not a TLS ServerHello (impetus-sink hostile tls-garbage)\r\n"));
  c->state = ST_QUIT;
  sink_conn_close_after_send(c);
}

void sink_smtp_tls_ready(struct sink_conn *c)
{
  reset_txn(c);
  c->helo_seen = 0;
  c->user = NULL;
  c->mech = NULL;
}

void sink_smtp_resume(struct sink_conn *c)
{
  c->paused = 0;
  c->delay_done = 1;
  if (c->state == ST_GREETING)
    greet(c);
  else
    run_in(c);
}
