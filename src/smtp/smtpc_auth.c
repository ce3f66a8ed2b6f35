/* smtpc_auth.c owns connection set-up after the banner: EHLO and its
 * capability lines, the STARTTLS decision, and AUTH (credentials held in
 * secmem and wiped after use, the PLAIN/LOGIN/XOAUTH2 encodings, the
 * challenge exchange). It never touches a socket, TLS, a clock or a log,
 * and never leaves a credential in ordinary memory. Called on the thread
 * that owns the session (the encoders from any thread). */
#include "smtpc_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "secmem.h"

static void wipe_free(char **p)
{
  secmem_free(*p); /* wipes */
  *p = NULL;
}


void smtpc_wipe_creds(struct smtpc *s)
{
  wipe_free(&s->user);
  wipe_free(&s->pass);
}

static size_t auth_out_need(size_t ulen, size_t plen)
{
  /* XOAUTH2 is the longest: "user=" U "\1auth=Bearer " T "\1\1" */
  return 16 + base64_encoded_size(ulen + plen + 20) + 64 + 512; /* + an unsent EHLO */
}

int smtpc_set_creds(struct smtpc *s, const struct smtpc_auth *a)
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
  if (!smtpc_clean_str(a->user, SMTPC_USER_MAX) || !smtpc_clean_str(a->pass, SMTPC_PASS_MAX))
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
      smtpc_out_release(s);
      s->out = secmem_xalloc(cap);
      s->out_secmem = true;
      s->out_cap = cap;
      s->out_off = s->out_len = 0;
    }
  }
  smtpc_wipe_creds(s);
  s->auth_type = a->type;
  s->user = secmem_xstrdup(a->user);
  s->pass = secmem_xstrdup(a->pass);
  return 0;
}


/* ---- connection set-up ---- */

void smtpc_send_hello(struct smtpc *s, bool ehlo, uint64_t now)
{
  const char *verb = ehlo ? "EHLO" : "HELO";
  s->ext = 0;
  s->mechs = 0;
  s->peer_size = 0;
  if (!smtpc_out_cmd(s, "%s %s", verb, s->ehlo_name))
    util_panic("smtpc: output buffer too small for %s", verb);
  smtpc_enter(s, ehlo ? SMTPC_ST_EHLO : SMTPC_ST_HELO, now);
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

void smtpc_start_auth(struct smtpc *s, uint64_t now)
{
  char mb[64];
  if (s->auth_type == SMTPC_AUTH_NONE) {
    smtpc_go_idle(s, now);
    return;
  }
  if (!s->tls_active && !s->allow_plain) {
    smtpc_fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_AUTH_POLICY, 0, true,
               "AUTH %s refused: the connection is not encrypted (no TLS); set "
               "Outbound_SMTP_AUTH_Allow_Plaintext = true to allow credentials in plaintext",
               mech_name(s->auth_type));
    return;
  }
  if (!(s->ext & SMTPC_EXT_AUTH)) {
    smtpc_fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_AUTH_POLICY, 0, true,
               "credentials configured (AUTH %s) but the server does not offer AUTH; "
               "not sending unauthenticated",
               mech_name(s->auth_type));
    return;
  }
  if (!(s->mechs & mech_bit(s->auth_type))) {
    smtpc_fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_AUTH_POLICY, 0, true,
               "AUTH %s configured but the server offers only: %s", mech_name(s->auth_type),
               mechs_text(s->mechs, mb, sizeof(mb)));
    return;
  }
  size_t room = smtpc_out_room(s);
  char *o = (char *)s->out + s->out_len;
  s->auth_step = 0;
  switch (s->auth_type) {
  case SMTPC_AUTH_PLAIN:
    out_secret_commit(s, smtpc_auth_plain_ir(s->user, s->pass, o, room - 2));
    smtpc_wipe_creds(s);
    break;
  case SMTPC_AUTH_XOAUTH2:
    out_secret_commit(s, smtpc_auth_xoauth2_ir(s->user, s->pass, o, room - 2));
    smtpc_wipe_creds(s);
    break;
  case SMTPC_AUTH_LOGIN:
    smtpc_out_must(s, "AUTH LOGIN");
    break;
  case SMTPC_AUTH_NONE:
  default: util_panic("smtpc: bad auth type %d", (int)s->auth_type);
  }
  smtpc_enter(s, SMTPC_ST_AUTH, now);
}

/* After the (final) EHLO/HELO: STARTTLS, AUTH, or ready. */
void smtpc_after_ehlo(struct smtpc *s, uint64_t now)
{
  if (!s->tls_active && s->tls_mode != SMTPC_TLS_NO) {
    if (s->ext & SMTPC_EXT_STARTTLS) {
      smtpc_out_must(s, "STARTTLS");
      smtpc_enter(s, SMTPC_ST_STARTTLS, now);
      return;
    }
    if (s->tls_mode == SMTPC_TLS_REQUIRED) {
      smtpc_fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_TLS_POLICY, 0, true,
                 "TLS required but the server does not offer STARTTLS");
      return;
    }
  }
  smtpc_start_auth(s, now);
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
void smtpc_ehlo_line(struct smtpc *s)
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

void smtpc_on_auth_reply(struct smtpc *s, uint64_t now)
{
  int code = s->rp.code;
  if (code == 334) {
    if (!challenge_ok(&s->rp)) {
      smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "malformed AUTH %s challenge: %s",
                 mech_name(s->auth_type), s->rp.text);
      return;
    }
    if (s->auth_type == SMTPC_AUTH_LOGIN && s->auth_step < 2) {
      size_t room = smtpc_out_room(s);
      const char *v = s->auth_step == 0 ? s->user : s->pass;
      out_secret_commit(s, smtpc_b64_line(v, (char *)s->out + s->out_len, room - 2));
      if (s->auth_step == 1)
        smtpc_wipe_creds(s);
      s->auth_step++;
      smtpc_set_deadline(s, now);
      return;
    }
    if (s->auth_type == SMTPC_AUTH_XOAUTH2 && s->auth_step == 0) {
      /* error challenge (base64 JSON): answer empty, read the final reply */
      smtpc_out_must(s, "");
      s->auth_step = 1;
      smtpc_set_deadline(s, now);
      return;
    }
    smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected AUTH %s challenge: %s",
               mech_name(s->auth_type), s->rp.text);
    return;
  }
  smtpc_wipe_creds(s);
  if (code / 100 == 2) {
    s->authed = true;
    struct smtpc_event *e = smtpc_ev_push(s, SMTPC_EV_AUTH_RESULT);
    e->code = code;
    memcpy(e->enhanced, s->rp.enhanced, sizeof(e->enhanced));
    snprintf(s->info_text, sizeof(s->info_text), "%s", s->rp.text);
    e->text = s->info_text;
    smtpc_go_idle(s, now);
    return;
  }
  uint32_t fl = (code == 534 || code == 535 || code == 538) ? SMTPC_F_AUTH_REJECTED : 0;
  if (code / 100 == 4 || code / 100 == 5)
    smtpc_fail(s, SMTPC_FAIL_TRANSIENT, fl, code, true, "AUTH %s failed: %s",
               mech_name(s->auth_type), s->rp.text);
  else
    smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to AUTH: %s", code,
               s->rp.text);
}

