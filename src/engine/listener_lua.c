/* listener_lua.c owns Momentum's inbound hooks on the ESMTP_Listener:
 * validate_connect(ac, vctx), validate_ehlo(str, ac, vctx),
 * validate_mailfrom(str, ac, vctx), validate_rcptto(msg, str, ac, vctx)
 * and the AUTH backend ac_auth_perform_auth(user, password, ac, response)
 * (Momentum's ac_auth module), the accept construct's
 * ac:esmtp_capability_add/remove (this session's EHLO reply) and
 * ac:inbound_session_count, run on a Lua state of the listener thread
 * made from the same scripts, budgets and sandbox as the workers' (policy's
 * snapshot). Each session has its connection and message contexts
 * (VCTX_CONN for the session, VCTX_MESS emptied at each MAIL); the message
 * context goes into the message (x-context lines). A hook refuses with
 * vctx:set_code(code, text) (a 4xx/5xx code) or vctx:disconnect(code,
 * text); a hook waiting for a datasource holds the command's reply (the
 * core reads nothing meanwhile) and answers when it finishes.
 * Listener thread only (lpost_push: a datasource thread, which only
 * queues). Never lets a script error pass as acceptance: an error, a budget
 * or memory overrun answers a temporary failure (451 / 454 / 421). */
#include "listener_int.h"

#include "ctx.h"
#include "logs.h"
#include "luam.h"
#include "panic.h"
#include "policy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

/* A session's hook state. */
struct lctx {
  struct ctx *conn, *mess;
  int code;          /* vctx:set_code / msg:code; 0 = none */
  char text[256];
  bool disconnect;   /* vctx:disconnect */
  bool pending;      /* a hook waits for a datasource */
  bool is_auth;      /* the pending hook is AUTH */
  struct smtps_event ev; /* the command whose reply waits (valid until answered) */
  char remote[80], local[80]; /* ac.remote_addr / ac.local_addr, "ip:port" */
  const char *rcpt;  /* validate_rcptto: the recipient (msg:rcptto), in rcpt_buf */
  char rcpt_buf[1024];
  /* ac:esmtp_capability_add/remove, in call order: "+CAP\n" / "-CAP\n" */
  struct buf caps;
  unsigned ncaps;
};

#define LSN_CAP_LEN 200 /* one capability string */
#define LSN_CAP_EDITS 32 /* changes per session */

static struct ctx *dict(struct lsess *s, int which)
{
  return which == LUAM_CTX_CONN ? s->ctx->conn : s->ctx->mess;
}

static const char *o_ctx_get(void *m, int which, const char *key, size_t *len)
{
  return ctx_getn(dict(m, which), key, strlen(key), len);
}

static int o_ctx_set(void *m, int which, const char *key, const char *val, size_t len)
{
  return ctx_setn(dict(m, which), key, strlen(key), val, len, 0);
}

static int o_ctx_delete(void *m, int which, const char *key)
{
  return ctx_delete(dict(m, which), key) == 0 ? 1 : 0;
}

static const char *o_mailfrom(void *m)
{
  return ((struct lsess *)m)->from;
}

static const char *o_rcptto(void *m, size_t i)
{
  struct lsess *s = m;
  return i == 0 ? s->ctx->rcpt : NULL;
}

static void o_set_code(void *m, int code, const char *text)
{
  struct lsess *s = m;
  s->ctx->code = code;
  snprintf(s->ctx->text, sizeof(s->ctx->text), "%s", text ? text : "");
}

static void o_disconnect(void *m, int code, const char *text)
{
  o_set_code(m, code, text);
  ((struct lsess *)m)->ctx->disconnect = true;
}

/* An EHLO keyword line: a letter or digit first, then printable ASCII
 * or spaces (RFC 5321 ehlo-line). */
static bool cap_ok(const char *cap, size_t n)
{
  if (n == 0 || n > LSN_CAP_LEN || !((cap[0] >= 'A' && cap[0] <= 'Z') ||
                                     (cap[0] >= 'a' && cap[0] <= 'z') ||
                                     (cap[0] >= '0' && cap[0] <= '9')))
    return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)cap[i] < ' ' || (unsigned char)cap[i] > '~')
      return false;
  return true;
}

static int o_esmtp_capability(void *m, const char *cap, bool add)
{
  struct lsess *s = m;
  size_t n = strlen(cap);
  if (!cap_ok(cap, n))
    return -EINVAL;
  if (s->ctx->ncaps >= LSN_CAP_EDITS)
    return -ENOSPC;
  s->ctx->ncaps++;
  buf_printf(&s->ctx->caps, "%c%s\n", add ? '+' : '-', cap);
  return 0;
}

/* ac:inbound_session_count: sessions of this listener (their SMTP begun)
 * from addresses in cidr; NULL: the connecting address; "/N": its /N
 * ("localhost" is 127.0.0.1, as in Momentum's example). One pass over the
 * sessions: a hook that calls it on every connection costs O(sessions). */
static long o_inbound_session_count(void *m, const char *cidr)
{
  struct lsess *s = m;
  struct cidr c;
  uint8_t a[16];
  int fam = lsn_addr_bytes(&s->addr, a);
  if (!cidr || cidr[0] == '/') {
    c.fam = fam;
    memcpy(c.a, a, sizeof(c.a));
    c.plen = fam == AF_INET ? 32 : 128;
    if (cidr) {
      char *end;
      long n = strtol(cidr + 1, &end, 10);
      if (end == cidr + 1 || *end || n < 0 || n > c.plen)
        return -EINVAL;
      c.plen = (int)n;
    }
  } else {
    char tmp[128];
    if (!strncasecmp(cidr, "localhost", 9) && (cidr[9] == 0 || cidr[9] == '/'))
      snprintf(tmp, sizeof(tmp), "127.0.0.1%s", cidr + 9);
    else
      snprintf(tmp, sizeof(tmp), "%s", cidr);
    if (lsn_parse_cidr(tmp, &c) < 0)
      return -EINVAL;
  }
  long count = 0;
  for (const struct lsess *o = s->L->sessions; o; o = o->next) {
    if (o->dead || !o->sm)
      continue;
    uint8_t oa[16];
    int of = lsn_addr_bytes(&o->addr, oa);
    count += lsn_cidr_match(&c, of, oa);
  }
  return count;
}

static const struct luam_msg_ops sess_ops = {
  .ctx_get = o_ctx_get,
  .ctx_set = o_ctx_set,
  .ctx_delete = o_ctx_delete,
  .mailfrom = o_mailfrom,
  .rcptto = o_rcptto,
  .set_code = o_set_code,
  .disconnect = o_disconnect,
  .esmtp_capability = o_esmtp_capability,
  .inbound_session_count = o_inbound_session_count,
};

/* ---- the state ---- */

static void post(void *arg, void (*fn)(void *), void *fn_arg)
{
  struct listener *L = arg;
  struct lpost *p = util_xcalloc(1, sizeof(*p));
  p->fn = fn;
  p->arg = fn_arg;
  pthread_mutex_lock(&L->dlock);
  p->next = L->posts;
  L->posts = p;
  pthread_mutex_unlock(&L->dlock);
  lsn_wake(L);
}

void lsn_lua_start(struct listener *L)
{
  if (!L->policy)
    return;
  /* without scripts it holds no state (a reload that adds some makes one) */
  L->pw = policy_thread_new(L->policy, post, L, L->log, L->gen->conf, L->counters_slot);
}

void lsn_lua_stop(struct listener *L)
{
  lsn_lua_posts(L); /* answers that came after the thread ended: dropped with the state */
  policy_worker_free(L->pw);
  L->pw = NULL;
  lsn_lua_posts(L);
}

void lsn_lua_refresh(struct listener *L)
{
  if (L->pw)
    policy_worker_refresh(L->pw, L->gen->conf);
}

void lsn_lua_posts(struct listener *L)
{
  pthread_mutex_lock(&L->dlock);
  struct lpost *list = L->posts;
  L->posts = NULL;
  pthread_mutex_unlock(&L->dlock);
  struct lpost *rev = NULL;
  while (list) {
    struct lpost *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  while (rev) {
    struct lpost *next = rev->next;
    rev->fn(rev->arg); /* luam frees its job (or drops it: state gone) */
    free(rev);
    rev = next;
  }
}

static struct luam *state(const struct listener *L)
{
  return L->pw ? policy_worker_luam(L->pw) : NULL;
}

bool lsn_lua_active(const struct listener *L)
{
  struct luam *lm = state(L);
  if (!lm)
    return false;
  static const enum luam_hook hooks[] = {LUAM_HOOK_VALIDATE_CONNECT, LUAM_HOOK_VALIDATE_EHLO,
                                         LUAM_HOOK_VALIDATE_MAILFROM, LUAM_HOOK_VALIDATE_RCPTTO,
                                         LUAM_HOOK_AC_AUTH_PERFORM_AUTH};
  for (size_t i = 0; i < UTIL_ARRAY_LEN(hooks); i++)
    if (luam_has_hook(lm, hooks[i]))
      return true;
  return false;
}

void lsn_lua_sess_done(struct lsess *s)
{
  if (!s->ctx)
    return;
  ctx_free(s->ctx->conn);
  ctx_free(s->ctx->mess);
  buf_done(&s->ctx->caps, 0);
  free(s->ctx);
  s->ctx = NULL;
}

static void addr_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
  uint8_t a[16];
  int fam = lsn_addr_bytes(ss, a);
  char ip[INET6_ADDRSTRLEN];
  inet_ntop(fam, a, ip, sizeof(ip));
  unsigned port = ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                                  : ((const struct sockaddr_in *)ss)->sin_port);
  snprintf(out, len, fam == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
}

/* The session's contexts, made when its SMTP session begins. */
static void sess_ctx(struct lsess *s)
{
  if (s->ctx || !lsn_lua_active(s->L))
    return;
  s->ctx = util_xcalloc(1, sizeof(*s->ctx));
  s->ctx->conn = ctx_new();
  s->ctx->mess = ctx_new();
  ctx_set(s->ctx->conn, "can_relay", s->can_relay ? "true" : "false");
  addr_text(&s->addr, s->ctx->remote, sizeof(s->ctx->remote));
  struct sockaddr_storage me;
  socklen_t ml = sizeof(me);
  if (getsockname(s->fd, (struct sockaddr *)&me, &ml) == 0)
    addr_text(&me, s->ctx->local, sizeof(s->ctx->local));
}

static void lua_done(void *arg, int result);

/* Run hook for the session; LUAM_CONT/DONE/ERROR or LUAM_PENDING. */
static int run(struct lsess *s, enum luam_hook hook, const char *str, size_t slen,
               const char *str2, size_t s2len)
{
  s->ctx->code = 0;
  s->ctx->text[0] = 0;
  s->ctx->disconnect = false;
  struct luam_call call = {
    .msg = s,
    .ops = &sess_ops,
    .rcpt = -1,
    .str = str,
    .str_len = slen,
    .str2 = str2,
    .str2_len = s2len,
    .remote_addr = s->ctx->remote,
    .local_addr = s->ctx->local,
    .report_errors = true,
    .done = lua_done,
    .done_arg = s,
  };
  return luam_call(state(s->L), hook, &call);
}

/* What the hook decided, for a command: 0 = go on, 1 = answered. */
static int verdict(struct lsess *s, const struct smtps_event *ev, int result)
{
  uint64_t now = lsn_now_ms();
  char line[400];
  const char *host = lsn_banner_host(s->L, &s->sc);
  if (result == LUAM_ERROR) { /* logged by luam with the script and line */
    if (ev->cmd == SMTPS_CMD_CONNECT) {
      snprintf(line, sizeof(line), "421 4.3.0 %s Temporary policy failure, try again later\r\n",
               host);
      smtps_shutdown(s->sm, line);
    } else {
      smtps_answer(s->sm, 451, "4.3.0 Temporary policy failure, try again later", now);
    }
    return 1;
  }
  /* validate_connect / _ehlo / _mailfrom may grant or take relaying */
  const char *cr = ctx_get(s->ctx->conn, "can_relay");
  s->can_relay = cr && (!strcmp(cr, "true") || !strcmp(cr, "1"));
  int code = s->ctx->code;
  if (s->ctx->disconnect) {
    if (code < 400 || code > 599)
      code = 421;
    snprintf(line, sizeof(line), "%d %s\r\n", code, s->ctx->text[0] ? s->ctx->text : "Bye");
    smtps_shutdown(s->sm, line);
    return 1;
  }
  if (code >= 400 && code <= 599) {
    smtps_answer(s->sm, code, s->ctx->text[0] ? s->ctx->text : "Refused by policy", now);
    return 1;
  }
  return 0;
}

int lsn_lua_command(struct lsess *s, const struct smtps_event *ev)
{
  if (ev->cmd == SMTPS_CMD_CONNECT)
    sess_ctx(s);
  if (!s->ctx)
    return 0;
  enum luam_hook hook;
  switch (ev->cmd) {
  case SMTPS_CMD_CONNECT: hook = LUAM_HOOK_VALIDATE_CONNECT; break;
  case SMTPS_CMD_EHLO:
  case SMTPS_CMD_HELO:
    ctx_setn(s->ctx->conn, "ehlo_string", 11, ev->arg, ev->arg_len, 0);
    hook = LUAM_HOOK_VALIDATE_EHLO;
    break;
  case SMTPS_CMD_MAIL:
    /* VCTX_MESS expires before a new message (Momentum) */
    ctx_free(s->ctx->mess);
    s->ctx->mess = ctx_new();
    ctx_setn(s->ctx->mess, "mailfrom_string", 15, ev->arg, ev->arg_len, 0);
    hook = LUAM_HOOK_VALIDATE_MAILFROM;
    break;
  case SMTPS_CMD_RCPT: hook = LUAM_HOOK_VALIDATE_RCPTTO; break;
  default: return 0;
  }
  struct luam *lm = state(s->L);
  if (!lm || !luam_has_hook(lm, hook))
    return 0;
  if (hook == LUAM_HOOK_VALIDATE_RCPTTO) { /* kept while a datasource is awaited */
    snprintf(s->ctx->rcpt_buf, sizeof(s->ctx->rcpt_buf), "%.*s", (int)ev->arg_len, ev->arg);
    s->ctx->rcpt = s->ctx->rcpt_buf;
  }
  int r = run(s, hook, ev->arg, ev->arg_len, NULL, 0);
  if (r == LUAM_PENDING) {
    s->ctx->pending = true;
    s->ctx->is_auth = false;
    s->ctx->ev = *ev;
    s->inflight++;
    return 1;
  }
  s->ctx->rcpt = NULL;
  return verdict(s, ev, r);
}

/* AUTH: the hook's answer. */
static int auth_result(struct lsess *s, int r, char *text, size_t textlen)
{
  if (r == LUAM_ERROR)
    return -1;
  if (s->ctx->code)
    snprintf(text, textlen, "%d %s", s->ctx->code, s->ctx->text);
  return r == LUAM_DONE ? 1 : 0; /* EC_AUTH_OK is DONE, EC_AUTH_FAIL CONT */
}

int lsn_lua_auth(struct lsess *s, const struct smtps_event *ev, char *text, size_t textlen)
{
  struct luam *lm = state(s->L);
  if (!lm || !luam_has_hook(lm, LUAM_HOOK_AC_AUTH_PERFORM_AUTH) || !s->ctx) {
    logs_panic(s->L->log, (uint64_t)time(NULL) * 1000u, "esmtp_listener",
               "AUTH from %s: AuthLoginParameters uri = ac_auth:// but no script has "
               "ac_auth_perform_auth; refused (temporary)", s->ip);
    return -1;
  }
  int r = run(s, LUAM_HOOK_AC_AUTH_PERFORM_AUTH, ev->arg, ev->arg_len, ev->pass, ev->pass_len);
  if (r == LUAM_PENDING) {
    s->ctx->pending = true;
    s->ctx->is_auth = true;
    s->ctx->ev = *ev;
    s->inflight++;
    return 2;
  }
  return auth_result(s, r, text, textlen);
}

/* A hook that waited for a datasource finished. */
static void lua_done(void *arg, int result)
{
  struct lsess *s = arg;
  s->inflight--;
  s->ctx->pending = false;
  s->ctx->rcpt = NULL;
  if (s->dead) {
    lsn_close(s);
    return;
  }
  if (s->ctx->is_auth) {
    char text[300] = "";
    int ok = auth_result(s, result, text, sizeof(text));
    lsn_auth_answer(s, &s->ctx->ev, ok, text);
  } else if (verdict(s, &s->ctx->ev, result) == 0) {
    lsn_command_commit(s, &s->ctx->ev);
  }
  if (!lsn_flush(s))
    return;
  lsn_run_held(s);
}

void lsn_lua_message_ctx(struct lsess *s, struct buf *f)
{
  if (!s->ctx)
    return;
  struct ctx_iter it = {0};
  const char *k, *v;
  size_t kl, vl;
  while (ctx_nextn(s->ctx->mess, &it, &k, &kl, &v, &vl, NULL)) {
    if (memchr(k, '=', kl) || memchr(k, '\n', kl) || memchr(v, '\n', vl) || memchr(v, '\r', vl))
      continue; /* not representable as an x-context line */
    buf_printf(f, "x-context: %.*s=%.*s\n", (int)kl, k, (int)vl, v);
  }
}

/* The keyword of a capability string: up to its first space. */
static size_t cap_key(const char *p, size_t n)
{
  const char *sp = memchr(p, ' ', n);
  return sp ? (size_t)(sp - p) : n;
}

/* Remove from list (count strings of lens) those whose keyword is key's. */
static size_t caps_drop(const char **list, size_t *lens, size_t count, const char *key, size_t kl)
{
  size_t out = 0;
  for (size_t i = 0; i < count; i++) {
    size_t ik = cap_key(list[i], lens[i]);
    if (ik == kl && !strncasecmp(list[i], key, kl))
      continue;
    list[out] = list[i];
    lens[out++] = lens[i];
  }
  return out;
}

bool lsn_lua_ehlo_answer(struct lsess *s, const struct smtps_event *ev)
{
  if (!s->ctx || !s->ctx->ncaps || ev->cmd != SMTPS_CMD_EHLO || !ev->ok)
    return false;
  /* the default reply's lines after the greeting line, then each change
   * in call order: a removal drops the keyword's line, an addition
   * replaces it (or comes last) */
  enum { MAXL = 64 };
  const char *list[MAXL + LSN_CAP_EDITS];
  size_t lens[MAXL + LSN_CAP_EDITS], count = 0;
  const char *p = ev->reply, *end = ev->reply + ev->reply_len, *first = NULL;
  size_t first_len = 0;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
      break;
    size_t n = (size_t)(nl - p);
    if (n && p[n - 1] == '\r')
      n--;
    if (n >= 4) {
      if (!first) {
        first = p + 4;
        first_len = n - 4;
      } else if (count < MAXL) {
        list[count] = p + 4;
        lens[count++] = n - 4;
      }
    }
    p = nl + 1;
  }
  if (!first)
    return false;
  const char *e = (const char *)s->ctx->caps.data, *eend = e + s->ctx->caps.len;
  while (e < eend) {
    const char *nl = memchr(e, '\n', (size_t)(eend - e));
    size_t n = (size_t)(nl - e) - 1;
    count = caps_drop(list, lens, count, e + 1, cap_key(e + 1, n));
    if (e[0] == '+') {
      list[count] = e + 1;
      lens[count++] = n;
    }
    e = nl + 1;
  }
  struct buf r = {0};
  buf_printf(&r, "250%c%.*s\r\n", count ? '-' : ' ', (int)first_len, first);
  for (size_t i = 0; i < count; i++)
    buf_printf(&r, "250%c%.*s\r\n", i + 1 < count ? '-' : ' ', (int)lens[i], list[i]);
  smtps_answer_raw(s->sm, true, r.data, r.len, lsn_now_ms());
  buf_done(&r, 0);
  return true;
}
