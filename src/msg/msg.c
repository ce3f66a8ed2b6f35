/* msg.c owns the message format (include/msg/msg.h): the x-sender /
 * x-receiver / x-binding / x-binding-group / x-context envelope lines,
 * their writing, the RFC 5322 line checks, RFC 5321 address validation,
 * duplicate recipients, and the Date: / Message-ID: fix-ups at submission.
 * Pure: works on bytes in memory, never does I/O, never logs; every
 * rejection comes back as a one-line reason. Any thread. It must never
 * depend on the engine (impetus-inject links it without the engine). */
#include "msg.h"

#include "panic.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

IMPETUS_PRINTF(3, 4)
static int fail(char *reason, size_t rlen, const char *fmt, ...)
{
  if (reason && rlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, rlen, fmt, ap);
    va_end(ap);
  }
  return -EBADMSG;
}

static bool is_atext(unsigned char c)
{
  return isalnum(c) || c >= 0x80 || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static const char *check_domain(const char *d, size_t n)
{
  if (n == 0)
    return "empty domain";
  if (n > 255)
    return "domain longer than 255 bytes";
  if (d[0] == '[') {
    char tmp[64];
    unsigned char addr[16];
    if (d[n - 1] != ']' || n - 2 >= sizeof(tmp))
      return "bad address literal";
    memcpy(tmp, d + 1, n - 2);
    tmp[n - 2] = 0;
    if (!strncasecmp(tmp, "IPv6:", 5))
      return inet_pton(AF_INET6, tmp + 5, addr) == 1 ? NULL : "bad IPv6 address literal";
    return inet_pton(AF_INET, tmp, addr) == 1 ? NULL : "bad IPv4 address literal";
  }
  size_t label = 0;
  for (size_t i = 0; i <= n; i++) {
    unsigned char c = i < n ? (unsigned char)d[i] : '.';
    if (c == '.') {
      if (label == 0)
        return "empty label in domain";
      if (d[i - 1] == '-')
        return "domain label ends with '-'";
      label = 0;
      continue;
    }
    if (!(isalnum(c) || c == '-' || c >= 0x80))
      return "bad character in domain";
    if (label == 0 && c == '-')
      return "domain label starts with '-'";
    if (++label > 63)
      return "domain label longer than 63 bytes";
  }
  return NULL;
}

const char *msg_addr_check(const char *a, size_t len)
{
  if (len == 0)
    return "empty address";
  if (len > MSG_ADDR_MAX)
    return "address longer than 256 bytes";
  size_t i = 0;
  if (a[0] == '"') {
    for (i = 1; i < len && a[i] != '"'; i++) {
      unsigned char c = (unsigned char)a[i];
      if (c == '\\') {
        if (++i >= len || (unsigned char)a[i] < 32 || a[i] == 127)
          return "bad quoted-pair in local part";
      } else if (c < 32 || c == 127) {
        return "control character in local part";
      }
    }
    if (i >= len)
      return "unterminated quoted local part";
    i++;
  } else {
    for (; i < len && a[i] != '@'; i++) {
      unsigned char c = (unsigned char)a[i];
      if (c == '.') {
        if (i == 0 || a[i - 1] == '.' || i + 1 >= len || a[i + 1] == '@')
          return "misplaced '.' in local part";
      } else if (!is_atext(c)) {
        return "bad character in local part";
      }
    }
  }
  if (i == 0)
    return "empty local part";
  if (i >= len || a[i] != '@')
    return "no '@domain'";
  if (i > 64)
    return "local part longer than 64 bytes";
  return check_domain(a + i + 1, len - i - 1);
}

enum env_kind { ENV_NONE, ENV_SENDER, ENV_RECEIVER, ENV_BINDING, ENV_GROUP, ENV_CONTEXT };

static const struct {
  const char *name;
  enum env_kind kind;
} env_names[] = {
    {"x-sender", ENV_SENDER},   {"x-receiver", ENV_RECEIVER},     {"x-binding", ENV_BINDING},
    {"x-binding-group", ENV_GROUP}, {"x-context", ENV_CONTEXT},
};

/* The envelope kind of the line at p (n bytes) and where its value starts. */
static enum env_kind env_kind(const char *p, size_t n, size_t *value_off)
{
  const char *colon = memchr(p, ':', n < 32 ? n : 32);
  if (!colon || n < 2 || (p[0] != 'x' && p[0] != 'X') || p[1] != '-')
    return ENV_NONE;
  size_t nl = (size_t)(colon - p);
  while (nl > 0 && (p[nl - 1] == ' ' || p[nl - 1] == '\t'))
    nl--;
  for (size_t i = 0; i < UTIL_ARRAY_LEN(env_names); i++) {
    if (strlen(env_names[i].name) == nl && !strncasecmp(p, env_names[i].name, nl)) {
      *value_off = (size_t)(colon - p) + 1;
      return env_names[i].kind;
    }
  }
  return ENV_NONE;
}

/* Trim blanks around [*v, *v + *n). */
static void trim(const char **v, size_t *n)
{
  while (*n && (**v == ' ' || **v == '\t'))
    (*v)++, (*n)--;
  while (*n && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t'))
    (*n)--;
}

/* An address value: "<a@b>", "a@b", or "<>" when null_ok. */
static const char *parse_addr(const char *v, size_t n, bool null_ok, char **out)
{
  if (n >= 2 && v[0] == '<' && v[n - 1] == '>') {
    v++;
    n -= 2;
  } else if (n && (v[0] == '<' || v[n - 1] == '>')) {
    return "unbalanced '<' '>'";
  }
  if (n == 0) {
    if (!null_ok)
      return "empty address";
    *out = util_xstrdup("");
    return NULL;
  }
  const char *why = msg_addr_check(v, n);
  if (why)
    return why;
  *out = util_xstrndup(v, n);
  return NULL;
}

static const char *check_name(const char *v, size_t n)
{
  if (n == 0)
    return "empty name";
  if (n > MSG_NAME_MAX)
    return "name longer than 255 bytes";
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)v[i] <= 32 || v[i] == 127)
      return "blank or control character in name";
  return NULL;
}

void msg_envelope_done(struct msg_envelope *env)
{
  if (!env)
    return;
  free(env->sender);
  for (uint32_t i = 0; i < env->nrcpt; i++)
    free(env->rcpt[i]);
  free(env->rcpt);
  free(env->binding);
  free(env->binding_group);
  for (uint32_t i = 0; i < env->nctx; i++) {
    free(env->ctx[i].key);
    if (env->ctx[i].value) { /* may be a secret: wipe it */
      explicit_bzero(env->ctx[i].value, strlen(env->ctx[i].value));
      free(env->ctx[i].value);
    }
  }
  free(env->ctx);
  memset(env, 0, sizeof(*env));
}

/* The length of the line at p (without CR LF) and the offset of the next. */
static size_t line_at(const char *data, size_t len, size_t pos, size_t *next)
{
  const char *nl = memchr(data + pos, '\n', len - pos);
  size_t end = nl ? (size_t)(nl - data) : len;
  *next = nl ? end + 1 : len;
  if (end > pos && data[end - 1] == '\r')
    end--;
  return end - pos;
}

/* Whether any byte of p[0..n) is >= 0x80. 64 bytes a step, OR-ed as eight
 * words: the body of every message is scanned, and a byte loop cost
 * ~40 us per 100 KB. */
static bool any_high_bit(const unsigned char *p, size_t n)
{
  const uint64_t hi = 0x8080808080808080u;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    uint64_t a, b, c, d, e, f, g, h;
    memcpy(&a, p + i, 8);
    memcpy(&b, p + i + 8, 8);
    memcpy(&c, p + i + 16, 8);
    memcpy(&d, p + i + 24, 8);
    memcpy(&e, p + i + 32, 8);
    memcpy(&f, p + i + 40, 8);
    memcpy(&g, p + i + 48, 8);
    memcpy(&h, p + i + 56, 8);
    if (((a | b | c | d) | (e | f | g | h)) & hi)
      return true;
  }
  for (; i < n; i++)
    if (p[i] >= 0x80)
      return true;
  return false;
}

/* FNV-1a over the local part and the lower-cased domain. */
static uint64_t addr_hash(const char *a)
{
  const char *at = strrchr(a, '@');
  uint64_t h = 1469598103934665603u;
  for (const char *p = a; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (at && p > at)
      c = (unsigned char)tolower(c);
    h = (h ^ c) * 1099511628211u;
  }
  return h;
}

static bool addr_same(const char *a, const char *b)
{
  const char *ea = strrchr(a, '@'), *eb = strrchr(b, '@');
  if (!ea || !eb || ea - a != eb - b || memcmp(a, b, (size_t)(ea - a)))
    return false;
  return !strcasecmp(ea, eb);
}

/* Drop later copies of a recipient, as Postfix's cleanup does: one RCPT,
 * one R and D record per address. */
static void dedup_rcpts(struct msg_envelope *env)
{
  if (env->nrcpt < 2)
    return;
  size_t cap = 16;
  while (cap < (size_t)env->nrcpt * 2)
    cap *= 2;
  uint32_t *slot = util_xcalloc(cap, sizeof(*slot)); /* index + 1; 0 = empty */
  uint32_t out = 0;
  for (uint32_t i = 0; i < env->nrcpt; i++) {
    char *a = env->rcpt[i];
    size_t h = (size_t)addr_hash(a) & (cap - 1);
    bool dup = false;
    while (slot[h]) {
      if (addr_same(env->rcpt[slot[h] - 1], a)) {
        dup = true;
        break;
      }
      h = (h + 1) & (cap - 1);
    }
    if (dup) {
      free(a);
      env->ndup++;
      continue;
    }
    env->rcpt[out] = a;
    slot[h] = ++out;
  }
  env->nrcpt = out;
  free(slot);
}

int msg_parse(const char *data, size_t len, struct msg_envelope *env, char *reason,
                size_t rlen)
{
  memset(env, 0, sizeof(*env));
  if (len == 0)
    return fail(reason, rlen, "empty file");
  const char *nul = memchr(data, 0, len);
  if (nul)
    return fail(reason, rlen, "NUL byte at offset %zu (binary data)", (size_t)(nul - data));
  size_t pos = 0, next, lineno = 0, rcap = 0;
  for (;;) {
    if (pos >= len)
      break;
    size_t n = line_at(data, len, pos, &next), voff = 0;
    lineno++;
    enum env_kind k = env_kind(data + pos, n, &voff);
    if (k == ENV_NONE)
      break;
    if (n > MSG_ENVELOPE_LINE_MAX)
      return fail(reason, rlen, "envelope line %zu is longer than %u bytes", lineno,
                  MSG_ENVELOPE_LINE_MAX);
    const char *v = data + pos + voff;
    size_t vn = n - voff;
    trim(&v, &vn);
    for (size_t i = 0; i < vn; i++)
      if ((unsigned char)v[i] < 32 && v[i] != '\t')
        return fail(reason, rlen, "control character in envelope line %zu", lineno);
    const char *why = NULL;
    switch (k) {
    case ENV_SENDER:
      if (env->sender)
        return fail(reason, rlen, "second x-sender line (line %zu)", lineno);
      why = parse_addr(v, vn, true, &env->sender);
      if (why)
        return fail(reason, rlen, "bad x-sender address on line %zu: %s", lineno, why);
      break;
    case ENV_RECEIVER: {
      if (env->nrcpt >= MSG_RCPTS_MAX)
        return fail(reason, rlen, "more than %u x-receiver lines", MSG_RCPTS_MAX);
      char *a = NULL;
      why = parse_addr(v, vn, false, &a);
      if (why)
        return fail(reason, rlen, "bad x-receiver address on line %zu: %s", lineno, why);
      if (env->nrcpt == rcap) {
        rcap = rcap ? rcap * 2 : 4;
        env->rcpt = util_xrealloc(env->rcpt, rcap * sizeof(char *));
      }
      env->rcpt[env->nrcpt++] = a;
      break;
    }
    case ENV_BINDING:
    case ENV_GROUP: {
      char **dst = k == ENV_BINDING ? &env->binding : &env->binding_group;
      const char *what = k == ENV_BINDING ? "x-binding" : "x-binding-group";
      if (*dst)
        return fail(reason, rlen, "second %s line (line %zu)", what, lineno);
      why = check_name(v, vn);
      if (why)
        return fail(reason, rlen, "bad %s on line %zu: %s", what, lineno, why);
      *dst = util_xstrndup(v, vn);
      break;
    }
    case ENV_CONTEXT: {
      const char *eq = memchr(v, '=', vn);
      if (!eq || eq == v)
        return fail(reason, rlen, "x-context on line %zu is not key=value", lineno);
      const char *key = v, *val = eq + 1;
      size_t kn = (size_t)(eq - v), valn = vn - kn - 1;
      trim(&key, &kn);
      trim(&val, &valn);
      if (kn == 0)
        return fail(reason, rlen, "x-context on line %zu is not key=value", lineno);
      if ((env->nctx & (env->nctx - 1)) == 0) /* 0, 1, 2, 4, ...: grow to the next power */
        env->ctx = util_xrealloc(env->ctx, (env->nctx ? env->nctx * 2 : 1) * sizeof(*env->ctx));
      env->ctx[env->nctx].key = util_xstrndup(key, kn);
      env->ctx[env->nctx].value = util_xstrndup(val, valn);
      env->nctx++;
      break;
    }
    default:
      util_panic("msg_parse: envelope kind %d", (int)k);
    }
    pos = next;
  }
  if (!env->sender)
    return fail(reason, rlen, "no x-sender line");
  if (env->nrcpt == 0)
    return fail(reason, rlen, "no x-receiver line");
  env->body_off = pos;
  env->body_size = len - pos;
  if (env->body_size == 0)
    return fail(reason, rlen, "no message after the envelope");
  /* The RFC 5322 header section: until the first empty line. */
  size_t hl = 0;
  lineno--; /* the first header line was counted above */
  while (pos < len) {
    size_t n = line_at(data, len, pos, &next), voff;
    const char *p = data + pos;
    lineno++;
    hl++;
    if (n == 0) {
      pos = next; /* the body starts after the empty line */
      break;
    }
    if (n > MSG_LINE_MAX)
      return fail(reason, rlen, "header line %zu is longer than %u bytes", lineno,
                  MSG_LINE_MAX);
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)p[i];
      if ((c < 32 && c != '\t') || c == 127)
        return fail(reason, rlen, "control character 0x%02x in header line %zu (binary data?)",
                    c, lineno);
    }
    if (env_kind(p, n, &voff) != ENV_NONE)
      return fail(reason, rlen, "envelope line after the message started (line %zu: %.*s)",
                  lineno, (int)(memchr(p, ':', n) ? (const char *)memchr(p, ':', n) - p : 0),
                  p);
    if (p[0] != ' ' && p[0] != '\t') {
      size_t i = 0;
      while (i < n && p[i] > 32 && p[i] < 127 && p[i] != ':')
        i++;
      if (i == 0 || i >= n || p[i] != ':')
        return fail(reason, rlen, "line %zu is neither an envelope line nor a header field",
                    lineno);
    } else if (hl == 1) {
      return fail(reason, rlen, "message starts with a continuation line (line %zu)", lineno);
    }
    pos = next;
  }
  /* The body: lines over 998 bytes are refused here rather than bounced
   * by the peer after queueing (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6). */
  size_t bodyline = 0;
  while (pos < len) {
    const char *nl = memchr(data + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - data) : len;
    size_t n = end - pos - (end > pos && data[end - 1] == '\r');
    bodyline++;
    if (n > MSG_LINE_MAX)
      return fail(reason, rlen, "body line %zu is longer than %u bytes (%zu)", bodyline,
                  MSG_LINE_MAX, n);
    pos = nl ? end + 1 : len;
  }
  if (any_high_bit((const unsigned char *)data + env->body_off, len - env->body_off))
    env->flags |= MSG_F_8BIT;
  dedup_rcpts(env);
  if (!(env->flags & MSG_F_8BIT)) {
    for (uint32_t i = 0; i < env->nrcpt; i++)
      for (const char *q = env->rcpt[i]; *q; q++)
        if ((unsigned char)*q >= 0x80)
          env->flags |= MSG_F_8BIT;
    for (const char *q = env->sender; *q; q++)
      if ((unsigned char)*q >= 0x80)
        env->flags |= MSG_F_8BIT;
  }
  return 0;
}

size_t msg_scrub_secrets(char *data, size_t body_off, msg_secret_fn is_secret, size_t *lo,
                         size_t *hi)
{
  size_t pos = 0, next, changed = 0;
  *lo = *hi = 0;
  while (pos < body_off) {
    size_t n = line_at(data, body_off, pos, &next), voff = 0;
    if (env_kind(data + pos, n, &voff) == ENV_CONTEXT) {
      const char *v = data + pos + voff;
      size_t vn = n - voff;
      trim(&v, &vn);
      const char *eq = memchr(v, '=', vn);
      const char *key = v;
      size_t kn = eq ? (size_t)(eq - v) : 0;
      trim(&key, &kn);
      if (eq && kn && eq + 1 < v + vn && is_secret(key, kn)) {
        char *w = data + (v - data);
        w[0] = '_';
        w[1] = '=';
        memset(w + 2, '*', vn - 2);
        size_t a = (size_t)(w - data), b = a + vn;
        if (changed == 0 || a < *lo)
          *lo = a;
        if (b > *hi)
          *hi = b;
        changed++;
      }
    }
    pos = next;
  }
  return changed;
}

void msg_envelope_write(struct buf *b, const char *sender, char *const *rcpt, size_t n)
{
  buf_printf(b, "x-sender: <%s>\n", sender);
  for (size_t i = 0; i < n; i++)
    buf_printf(b, "x-receiver: <%s>\n", rcpt[i]);
}

unsigned msg_headers_missing(const char *m, size_t len)
{
  unsigned missing = MSG_HDR_DATE | MSG_HDR_MESSAGE_ID;
  size_t pos = 0, next;
  while (pos < len) {
    size_t n = line_at(m, len, pos, &next);
    if (n == 0)
      break;
    const char *p = m + pos;
    if (n > 5 && !strncasecmp(p, "Date", 4) && (p[4] == ':' || p[4] == ' ' || p[4] == '\t'))
      missing &= ~MSG_HDR_DATE;
    if (n > 11 && !strncasecmp(p, "Message-ID", 10) &&
        (p[10] == ':' || p[10] == ' ' || p[10] == '\t'))
      missing &= ~MSG_HDR_MESSAGE_ID;
    pos = next;
  }
  return missing;
}

void msg_headers_add(struct buf *b, unsigned missing, time_t now, const char *unique,
                     const char *host)
{
  if (missing & MSG_HDR_DATE) {
    struct tm tm;
    char d[64];
    localtime_r(&now, &tm);
    /* RFC 5322 3.3, in the C locale whatever the environment says */
    static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
      off = -off;
    snprintf(d, sizeof(d), "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", wd[tm.tm_wday % 7],
             tm.tm_mday, mo[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec, sign, off / 60, off % 60);
    buf_printf(b, "Date: %s\n", d);
  }
  if (missing & MSG_HDR_MESSAGE_ID)
    buf_printf(b, "Message-ID: <%s@%s>\n", unique, host && host[0] ? host : "localhost");
}
