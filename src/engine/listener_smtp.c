/* listener_smtp.c owns what an inbound session does with its core's
 * events: the start of the SMTP session (limits, the core's parameters,
 * validate_connect, the greeting), the commands (EHLO name, MAIL with its
 * DSN parameters, RCPT with relaying: Relay_Hosts, Open_Relay or an
 * authenticated client, else 554 5.7.1 per recipient; the Lua command
 * hooks), AUTH (the password file or the Lua hook), and the end of a
 * message: the pickup-format message handed to spool_submit with its
 * reply deferred until the spool reports, 250 only after the commit's
 * sync, 452 on a full disk, 451 on another failure.
 * Listener thread only (lsn_on_submitted: a spool thread, which only
 * queues). Never blocks, never answers 250 before the spool says durable. */
#include "listener_int.h"

#include "logs.h"
#include "msg.h"
#include "panic.h"
#include "spool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static void txn_reset(struct lsess *s)
{
  free(s->from);
  s->from = NULL;
  s->nrcpt = 0;
  buf_reset(&s->env);
  buf_done(&s->msg, 0);
  s->prefixed = false;
}

void lsn_on_submitted(void *arg, int result, const char *id, const char *why)
{
  struct lsub *u = arg;
  struct listener *L = u->s->L;
  u->result = result;
  snprintf(u->id, sizeof(u->id), "%s", id ? id : "");
  snprintf(u->why, sizeof(u->why), "%s", why ? why : "");
  pthread_mutex_lock(&L->dlock);
  bool was_empty = !L->done_head;
  u->next = L->done_head;
  L->done_head = u;
  pthread_mutex_unlock(&L->dlock);
  if (was_empty) /* else a wake is pending: the thread takes the whole list */
    lsn_wake(L);
}

/* The pickup-format message's head (envelope lines, DSN and session
 * context, Received:), written into s->msg before its first octet, so
 * that the message is handed to the spool without a copy. */
static void message_head(struct lsess *s)
{
  if (s->prefixed)
    return;
  s->prefixed = true;
  buf_done(&s->msg, 0);
  buf_reserve(&s->msg, s->env.len + 2048);
  /* appends, not printf: formatting was ~5 % of the engine's CPU under
   * injection (this head, the RCPT line and the 250's text) */
  struct buf *m = &s->msg;
  buf_append_str(m, "x-sender: <");
  buf_append_str(m, s->from ? s->from : "");
  buf_append_str(m, ">\n");
  buf_append(m, s->env.data, s->env.len);
  buf_append_str(m, "x-context: reception_peer=");
  buf_append_str(m, s->ip);
  buf_append_str(m, "\n");
  lsn_lua_message_ctx(s, m);
  /* the date, formatted once a second (localtime_r and strftime cost more
   * than the rest of the envelope): the listener thread only */
  static char date[64];
  static time_t date_t;
  time_t t = time(NULL);
  if (t != date_t) {
    struct tm tm;
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", localtime_r(&t, &tm));
    date_t = t;
  }
  /* Received: from HELO (IP) by HOST (Impetus) with ESMTP[S][A]; DATE */
  buf_append_str(m, "Received: from ");
  buf_append_str(m, s->helo[0] ? s->helo : "unknown");
  buf_append_str(m, " (");
  buf_append_str(m, s->ip);
  buf_append_str(m, ") by ");
  buf_append_str(m, lsn_banner_host(s->L, &s->sc));
  buf_append_str(m, smtps_tls(s->sm) ? " (Impetus) with ESMTPS" : " (Impetus) with ESMTP");
  buf_append_str(m, smtps_authenticated(s->sm) ? "A; " : "; ");
  buf_append_str(m, date);
  buf_append_str(m, "\r\n");
  s->body_off = s->msg.len;
}

/* The end of a message: Date: and Message-ID: added when missing, then
 * the whole of s->msg handed to the spool; the reply waits for its commit. */
static void message_end(struct lsess *s, const struct smtps_event *ev)
{
  if (!ev->ok || !s->from) {
    smtps_accept(s->sm, lsn_now_ms());
    txn_reset(s);
    return;
  }
  message_head(s); /* a message with no octet */
  /* Date: and Message-ID: when missing, as Postfix's cleanup adds them */
  const char *body = (const char *)s->msg.data + s->body_off;
  unsigned missing = msg_headers_missing(body, s->msg.len - s->body_off);
  if (missing) {
    static _Atomic uint64_t seq;
    static long pid;
    if (!pid)
      pid = (long)getpid(); /* the listener thread only: no system call per message */
    char unique[64];
    time_t t = time(NULL);
    snprintf(unique, sizeof(unique), "%ld.%" PRIu64 ".%ld", (long)t,
             atomic_fetch_add(&seq, 1), pid);
    struct buf h = {0};
    msg_headers_add(&h, missing, t, unique, lsn_banner_host(s->L, &s->sc));
    buf_reserve(&s->msg, h.len);
    uint8_t *at = s->msg.data + s->body_off;
    memmove(at + h.len, at, s->msg.len - s->body_off);
    memcpy(at, h.data, h.len);
    s->msg.len += h.len;
    buf_done(&h, 0);
  }
  uint8_t *data = s->msg.data;
  size_t len = s->msg.len;
  memset(&s->msg, 0, sizeof(s->msg)); /* the spool owns it now (or it is freed below) */
  txn_reset(s);
  /* The reply waits for the commit; the session reads on, so a pipelining
   * client's next messages join the same commit (up to max_deferred). */
  int ticket = smtps_defer(s->sm, lsn_now_ms());
  if (ticket < 0) {
    free(data);
    smtps_answer(s->sm, 451, "4.3.0 Try again later", lsn_now_ms());
    return;
  }
  struct lsub *u = util_xcalloc(1, sizeof(*u));
  u->s = s;
  u->ticket = ticket;
  s->inflight++;
  spool_submit(s->L->spool, data, len, lsn_on_submitted, u); /* takes the data */
}

/* Built-in checks of a command; true when they answered (refused). */
static bool command_refused(struct lsess *s, const struct smtps_event *ev, uint64_t now)
{
  switch (ev->cmd) {
  case SMTPS_CMD_MAIL:
    if (s->max_receptions && s->receptions >= s->max_receptions) {
      char line[256];
      snprintf(line, sizeof(line), "421 4.7.0 %s Too many messages in this session\r\n",
               lsn_banner_host(s->L, &s->sc));
      smtps_shutdown(s->sm, line);
      return true;
    }
    if (ev->arg_len && msg_addr_check(ev->arg, ev->arg_len)) {
      smtps_answer(s->sm, 553, "5.1.7 Bad sender address syntax", now);
      return true;
    }
    return false;
  case SMTPS_CMD_RCPT:
    if (!s->can_relay && !smtps_authenticated(s->sm)) {
      smtps_answer(s->sm, 554, "5.7.1 Relaying denied", now);
      return true;
    }
    if (msg_addr_check(ev->arg, ev->arg_len)) {
      smtps_answer(s->sm, 553, "5.1.3 Bad recipient address syntax", now);
      return true;
    }
    return false;
  default:
    return false;
  }
}

void lsn_command_commit(struct lsess *s, const struct smtps_event *ev)
{
  switch (ev->cmd) {
  case SMTPS_CMD_EHLO:
  case SMTPS_CMD_HELO:
    snprintf(s->helo, sizeof(s->helo), "%.*s", (int)(ev->arg_len < 200 ? ev->arg_len : 200), ev->arg);
    for (char *p = s->helo; *p; p++)
      if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || *p == '(' || *p == ')')
        *p = '?';
    txn_reset(s);
    if (lsn_lua_ehlo_answer(s, ev)) /* ac:esmtp_capability_add/remove */
      return;
    break;
  case SMTPS_CMD_MAIL:
    txn_reset(s);
    s->from = util_xstrndup(ev->arg, ev->arg_len);
    if (ev->envid)
      buf_printf(&s->env, "x-context: dsn_envid=%.*s\n", (int)ev->envid_len, ev->envid);
    if (ev->ret)
      buf_printf(&s->env, "x-context: dsn_ret=%s\n", ev->ret == SMTPS_RET_FULL ? "FULL" : "HDRS");
    if (ev->body == SMTPS_BODY_8BITMIME)
      buf_append_str(&s->env, "x-context: body=8BITMIME\n");
    if (ev->smtputf8)
      buf_append_str(&s->env, "x-context: smtputf8=1\n");
    if (s->auth_user[0])
      buf_printf(&s->env, "x-context: auth_user=%s\n", s->auth_user);
    break;
  case SMTPS_CMD_RCPT:
    buf_append_str(&s->env, "x-receiver: <");
    buf_append(&s->env, ev->arg, ev->arg_len);
    buf_append_str(&s->env, ">\n");
    if (ev->notify || ev->orcpt) {
      buf_printf(&s->env, "x-context: dsn_rcpt_%u=", s->nrcpt);
      if (ev->notify)
        buf_printf(&s->env, "NOTIFY=%s%s%s%s", ev->notify & SMTPS_NOTIFY_NEVER ? "NEVER" : "",
                   ev->notify & SMTPS_NOTIFY_SUCCESS ? "SUCCESS," : "",
                   ev->notify & SMTPS_NOTIFY_FAILURE ? "FAILURE," : "",
                   ev->notify & SMTPS_NOTIFY_DELAY ? "DELAY," : "");
      if (ev->orcpt)
        buf_printf(&s->env, "%sORCPT=%.*s", ev->notify ? ";" : "", (int)ev->orcpt_len, ev->orcpt);
      buf_append_str(&s->env, "\n");
    }
    s->nrcpt++;
    break;
  case SMTPS_CMD_DATA:
    buf_done(&s->msg, 0);
    s->prefixed = false;
    break;
  case SMTPS_CMD_RSET:
    txn_reset(s);
    break;
  default:
    break;
  }
  smtps_accept(s->sm, lsn_now_ms());
}

static void on_command(struct lsess *s, const struct smtps_event *ev)
{
  uint64_t now = lsn_now_ms();
  if (!ev->ok) {
    smtps_accept(s->sm, now);
    return;
  }
  if (command_refused(s, ev, now))
    return;
  if (lsn_lua_command(s, ev)) /* answered, or answered later */
    return;
  lsn_command_commit(s, ev);
}

void lsn_auth_answer(struct lsess *s, const struct smtps_event *ev, int ok, const char *text)
{
  uint64_t now = lsn_now_ms();
  if (ok == 1) {
    snprintf(s->auth_user, sizeof(s->auth_user), "%.*s", (int)ev->arg_len, ev->arg);
    smtps_answer(s->sm, 235, "2.7.0 Authentication successful", now);
    return;
  }
  if (ok < 0) { /* the hook failed (luam logged it): a temporary failure */
    smtps_answer(s->sm, 454, "4.7.0 Temporary authentication failure", now);
    return;
  }
  logs_panic(s->L->log, (uint64_t)time(NULL) * 1000u, "esmtp_listener", "AUTH failed from %s",
             s->ip);
  int code = 0;
  if (text[0] && sscanf(text, "%3d", &code) == 1 && code >= 500 && code < 600 && text[3] == ' ')
    smtps_answer(s->sm, code, text + 4, now); /* the hook's response:write */
  else
    smtps_accept(s->sm, now); /* the default refuses: 535 5.7.8 */
}

static void on_auth(struct lsess *s, const struct smtps_event *ev)
{
  int ok = 0;
  char text[300] = "";
  if (ev->ok && s->L->lua_auth) {
    ok = lsn_lua_auth(s, ev, text, sizeof(text));
    if (ok == 2)
      return; /* answered when the hook finishes */
  } else if (ev->ok) {
    ok = lsn_auth_file_ok(s->L, ev->arg, ev->arg_len, ev->pass, ev->pass_len);
  }
  lsn_auth_answer(s, ev, ok, text);
}

int lsn_events(struct lsess *s)
{
  struct smtps_event ev;
  int n = 0;
  while (smtps_event(s->sm, &ev)) {
    n++;
    switch (ev.type) {
    case SMTPS_EV_DATA:
      message_head(s);
      buf_append(&s->msg, ev.data, ev.len);
      break;
    case SMTPS_EV_BDAT:
      break;
    case SMTPS_EV_AUTH:
      on_auth(s, &ev);
      break;
    case SMTPS_EV_MESSAGE:
      message_end(s, &ev);
      break;
    case SMTPS_EV_COMMAND:
      on_command(s, &ev);
      break;
    case SMTPS_EV_NONE:
    default:
      util_panic("listener: unexpected core event %d", ev.type);
    }
  }
  return n;
}

void lsn_on_done(struct lsub *u)
{
  struct lsess *s = u->s;
  s->inflight--;
  if (s->dead) {
    lsn_close(s); /* frees it once nothing is in flight */
    free(u);
    return;
  }
  char t[300];
  if (u->result == 0) {
    s->receptions++;
    static const char ok[] = "2.0.0 Ok: queued as ";
    size_t il = strnlen(u->id, sizeof(u->id));
    memcpy(t, ok, sizeof(ok) - 1);
    memcpy(t + sizeof(ok) - 1, u->id, il); /* id is 64 bytes at most: t holds 300 */
    t[sizeof(ok) - 1 + il] = 0;
    smtps_resolve(s->sm, u->ticket, 250, t);
  } else if (u->result == -ENOSPC || u->result == -EDQUOT) {
    smtps_resolve(s->sm, u->ticket, 452, "4.3.1 Insufficient system storage");
  } else if (u->result == -EBADMSG) {
    snprintf(t, sizeof(t), "5.7.1 Message rejected: %s", u->why);
    smtps_resolve(s->sm, u->ticket, 554, t);
  } else {
    snprintf(t, sizeof(t), "4.3.0 Message not queued: %s", strerror(-u->result));
    smtps_resolve(s->sm, u->ticket, 451, t);
  }
  free(u);
  s->reading = true;
  if (!s->kicked) { /* sent once the whole list is resolved: one send per session */
    s->kicked = true;
    s->kick_next = s->L->kicked;
    s->L->kicked = s;
  }
}

void lsn_kick_all(struct listener *L)
{
  while (L->kicked) {
    struct lsess *s = L->kicked;
    L->kicked = s->kick_next;
    s->kicked = false;
    s->kick_next = NULL;
    if (!s->dead && lsn_flush(s))
      lsn_run_held(s);
  }
}

static size_t sessions_from(const struct listener *L, const char *ip, const struct lsess *self)
{
  size_t n = 0;
  for (const struct lsess *s = L->sessions; s; s = s->next)
    n += s != self && !s->dead && !strcmp(s->ip, ip);
  return n;
}

/* Refuse the session with line (no core yet: written straight out). */
static bool refuse(struct lsess *s, const char *line)
{
  ssize_t r = send(s->fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)r;
  lsn_close(s);
  return false;
}

bool lsn_session_begin(struct lsess *s)
{
  struct listener *L = s->L;
  uint8_t a[16];
  int fam = lsn_addr_bytes(&s->addr, a);
  inet_ntop(fam, a, s->ip, sizeof(s->ip));
  if (s->gen != s->ls->gen) { /* a reload came while a PROXY header was awaited */
    s->ls->gen->refs++;
    lsn_gen_unref(s->gen);
    s->gen = s->ls->gen;
  }
  s->sc = lsn_scopes(s->gen, s->ls, fam, a);
  const struct scopes *sc = &s->sc;
  char line[300];
  const char *host = lsn_banner_host(L, sc);
  /* the client address's limit (the listener's and the Listen's were
   * checked at accept) */
  int64_t lim_peer = 0;
  if (sc->lpeer && conf_is_set(sc->lpeer, CONF_ESMTP_LISTENER_SESSIONS_P))
    lim_peer = conf_int(sc->lpeer, CONF_ESMTP_LISTENER_SESSIONS_P);
  else if (sc->gpeer && conf_is_set(sc->gpeer, CONF_ESMTP_LISTENER_SESSIONS_P))
    lim_peer = conf_int(sc->gpeer, CONF_ESMTP_LISTENER_SESSIONS_P);
  if (lim_peer > 0 && sessions_from(L, s->ip, s) >= (size_t)lim_peer) {
    snprintf(line, sizeof(line), "421 4.7.0 %s Too many connections, try again later\r\n", host);
    return refuse(s, line);
  }
  if (spool_submit_pending(L->spool) > LSN_BUSY_SUBMITS) {
    snprintf(line, sizeof(line), "421 4.3.2 %s System busy, try again later\r\n", host);
    return refuse(s, line);
  }
  uint32_t ext = 0, mechs = 0;
  const char *bad;
  (void)lsn_ext_mask(sc, &ext, &mechs, &bad); /* checked when the configuration was read */
  if (!L->nusers && !L->lua_auth)
    mechs = 0; /* no Auth_Password_File nor Lua hook: nobody could log in */
  if (!L->ssl_ctx)
    ext &= ~SMTPS_EXT_STARTTLS;
  int64_t rcpts = lsn_opt_int(sc, O3(MAX_RCPTS));
  char banner[300];
  snprintf(banner, sizeof(banner), "%s ESMTP Impetus", host);
  struct smtps_params p = {
    .hostname = host,
    .banner = banner,
    .ext = ext,
    .auth_mechs = mechs,
    /* no STARTTLS yet: AUTH over plaintext only where allowed */
    .auth_tls_only = !lsn_opt_bool(sc, O3(ALLOW_PLAINTEXT_AUTH)),
    .strict = true,
    .limits = {.max_size = lsn_max_size(sc),
               .max_rcpts = rcpts > 0 ? (uint32_t)rcpts : LSN_DEFAULT_RCPTS,
               .max_errors = (uint32_t)lsn_opt_int(sc, O3(MAX_ERRORS))},
    .timeouts = {.command = (uint32_t)lsn_opt_interval(sc, O3(IDLE_TIME)),
                 .data = (uint32_t)lsn_opt_interval(sc, O3(DATA_IDLE_TIME))},
  };
  s->sm = smtps_new(&p);
  if (!s->sm) {
    lsn_close(s);
    return false;
  }
  smtps_start(s->sm, lsn_now_ms()); /* the banner text is copied into the greeting now */
  s->can_relay = lsn_relay_allowed(sc, fam, a);
  s->max_receptions = (uint32_t)lsn_opt_int(sc, O3(MAX_RECEPTIONS));
  s->reading = true;
  int one = 1;
  setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  lsn_events(s); /* the greeting (validate_connect first) */
  return lsn_flush(s);
}
