/* sink_smtp.c drives the SMTP server core (src/smtp/smtps.c) for one
 * impetus-sink connection: it answers the core's events with the sink's
 * options (AUTH users, SIZE and recipient limits) and fault injection
 * (delays, failures, disconnects, hostile replies decided per command),
 * records accepted messages, and moves the core's replies to the
 * connection. The protocol itself (parsing, DATA unstuffing, BDAT chunks,
 * AUTH exchanges, STARTTLS's reset) is the core's. It never touches a
 * socket, the ring or OpenSSL: effects are requested from sink_io. No
 * allocation per command: replies are constant strings, formatted on the
 * stack, or (hostile continuations) a static block built once. Called only
 * from the sink's single thread. */
#include "sink.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "panic.h"

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

#define R(s) s, sizeof(s) - 1
/* A continuation line is at most 3 + 19 + 5 + 2 bytes (i < 100000). */
_Static_assert(SINK_CONTINUATIONS <= 100000, "hostile continuation lines must fit 32 bytes");
#define PAUSED 1

static void run_in(struct sink_conn *c);

/* Move the core's replies to the connection. */
static void drain(struct sink_conn *c)
{
  const uint8_t *p;
  size_t n;
  while (c->sm && smtps_output(c->sm, &p, &n)) {
    if (!c->closing)
      sink_conn_reply(c, p, n);
    smtps_output_consumed(c->sm, n);
  }
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

/* Answer the due reply with bytes s[0..n) (outcome ok), hostile behaviour
 * applying when the reply is the configured stage's. */
static void emit(struct sink_conn *c, int cmd, bool ok, const char *s, size_t n)
{
  int mode = g_sink.o.hostile;
  if (mode == HOSTILE_NONE || g_sink.o.hostile_stage != cmd || mode == HOSTILE_RESET_MID_DATA ||
      mode == HOSTILE_TLS_GARBAGE) {
    smtps_answer_raw(c->sm, ok, s, n, 0);
    return;
  }
  g_sink.st.hostile_injected[mode]++;
  switch (mode) {
  case HOSTILE_GARBAGE:
    smtps_answer_raw(c->sm, ok, R("\x01\x7f\xff garbage \xfe\x80 not an SMTP reply\r\n"), 0);
    return;
  case HOSTILE_ENDLESS:
    smtps_shutdown(c->sm, NULL);
    c->state = ST_QUIT;
    sink_conn_start_endless(c);
    return;
  case HOSTILE_CONTINUATIONS: {
    char code[4] = {'2', '5', '0', 0};
    if (n >= 3)
      memcpy(code, s, 3);
    size_t k;
    const char *b = continuations(code, &k);
    smtps_emit_raw(c->sm, b, k);
    smtps_answer_raw(c->sm, ok, s, n, 0);
    return;
  }
  case HOSTILE_SPLIT:
  case HOSTILE_DRIP:
    c->bytewise = (uint8_t)mode;
    smtps_answer_raw(c->sm, ok, s, n, 0);
    return;
  case HOSTILE_UNSOLICITED:
    smtps_answer_raw(c->sm, ok, s, n, 0);
    smtps_emit_raw(c->sm, R("250 2.0.0 unsolicited data (impetus-sink hostile)\r\n"));
    return;
  default:
    smtps_answer_raw(c->sm, ok, s, n, 0);
    return;
  }
}

static void reset_txn(struct sink_conn *c)
{
  c->nrcpt = 0;
  c->msg_bytes = 0;
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
  smtps_shutdown(c->sm, "421 4.3.2 Service shutting down, closing transmission channel (injected)\r\n");
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
  emit(c, cmd, code < 400, line, (size_t)k);
  return 1;
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

static const char *mech_name(uint32_t m)
{
  return m == SMTPS_AUTH_PLAIN ? "PLAIN" : m == SMTPS_AUTH_LOGIN ? "LOGIN" : "XOAUTH2";
}

/* Credentials: checked against --auth-users. */
static void auth_check(struct sink_conn *c, const struct smtps_event *ev)
{
  const struct sink_user *u = ev->ok ? find_user(ev->arg, ev->arg_len, ev->pass, ev->pass_len) : NULL;
  if (u) {
    c->user = u;
    c->mech = mech_name(ev->mech);
    g_sink.st.auth_ok++;
    sink_table_get(&g_sink.st.per_mech, c->mech)->connections++;
    emit(c, CMD_AUTH, true, R("235 2.7.0 Authentication successful\r\n"));
  } else {
    g_sink.st.auth_failed++;
    if (ev->mech == SMTPS_AUTH_XOAUTH2)
      smtps_answer(c->sm, 535, "5.7.8 Authentication credentials invalid", 0);
    else
      emit(c, CMD_AUTH, false, R("535 5.7.8 Authentication credentials invalid\r\n"));
  }
}

/* The end of a message: size check, the DOT fault, the record. */
static void message(struct sink_conn *c, const struct smtps_event *ev)
{
  if (ev->too_big) {
    g_sink.st.messages_rejected++;
    emit(c, CMD_DOT, false, ev->reply, ev->reply_len);
  } else if (inject_fail(c, CMD_DOT)) {
    g_sink.st.messages_rejected++;
  } else {
    c->msg_bytes = ev->size;
    uint64_t id = sink_record_message(c);
    if (ev->bdat)
      g_sink.st.bdat_messages++;
    char r[80];
    int k = snprintf(r, sizeof(r), "250 2.0.0 Ok: queued as %llu\r\n", (unsigned long long)id);
    emit(c, CMD_DOT, true, r, (size_t)k);
  }
  reset_txn(c);
}

/* Commands whose success --fail can replace. */
static bool injectable(int cmd)
{
  return cmd == CMD_MAIL || cmd == CMD_RCPT || cmd == CMD_DATA || cmd == CMD_BDAT ||
         cmd == CMD_AUTH || cmd == CMD_NOOP || cmd == CMD_STARTTLS;
}

/* Answer the reply held in c->ev. Returns PAUSED when a delay must pass first. */
static int decide(struct sink_conn *c)
{
  const struct smtps_event *ev = &c->ev;
  int cmd = (int)ev->cmd;
  if (ev->type == SMTPS_EV_AUTH) {
    auth_check(c, ev);
    return 0;
  }
  uint32_t ms = g_sink.o.latency_ms[cmd];
  if (ms && !c->delay_done) {
    g_sink.st.delayed[cmd]++;
    c->ev_held = 1;
    sink_conn_pause(c, ms);
    return PAUSED;
  }
  c->delay_done = 0;
  c->ev_held = 0;
  /* A chunk's reply (BDAT, or DOT for a refused LAST): its disconnect
   * point was the command, when it was read. */
  bool chunk_reply = ev->type == SMTPS_EV_COMMAND &&
                     (cmd == CMD_DOT || (cmd == CMD_BDAT && ev->code != 501 && ev->code != 502));
  if (g_sink.o.disconnect_at == cmd && !chunk_reply) {
    disconnect(c, cmd);
    return 0;
  }
  if (ev->type == SMTPS_EV_MESSAGE) {
    message(c, ev);
    return 0;
  }
  if (cmd == CMD_CONNECT) {
    if (smtps_pending(c->sm)) {
      c->state = ST_CMD;
      emit(c, cmd, true, g_sink.greeting, g_sink.greeting_len);
    }
    return 0;
  }
  if (ev->ok && injectable(cmd) && inject_fail(c, cmd))
    return 0;
  bool ok = ev->ok;
  if (ok && cmd == CMD_MAIL) {
    reset_txn(c);
    env_add(c, ev->arg, ev->arg_len);
  } else if (ok && cmd == CMD_RCPT) {
    c->nrcpt++;
    env_add(c, ev->arg, ev->arg_len);
  } else if (ok && (cmd == CMD_EHLO || cmd == CMD_HELO || cmd == CMD_RSET)) {
    reset_txn(c);
  } else if (ok && cmd == CMD_DATA) {
    buf_reset(&c->msg);
  }
  emit(c, cmd, ok, ev->reply, ev->reply_len);
  if (cmd == CMD_DOT)
    reset_txn(c); /* a refused LAST chunk ends the transaction */
  if (ok && cmd == CMD_STARTTLS && smtps_want_tls(c->sm) && c->state != ST_QUIT) {
    drain(c); /* the 220 goes out in plaintext */
    if (g_sink.o.hostile == HOSTILE_TLS_GARBAGE) {
      c->tls_garbage = 1; /* the ClientHello gets it (sink_io) */
      return 0;
    }
    reset_txn(c);
    if (sink_conn_start_tls(c) < 0) {
      smtps_shutdown(c->sm, NULL);
      c->state = ST_QUIT;
      sink_conn_close(c, 0);
    }
  }
  return 0;
}

/* After each step: the session may be over. */
static void check_done(struct sink_conn *c)
{
  drain(c);
  if (smtps_done(c->sm) && c->state != ST_QUIT) {
    c->state = ST_QUIT;
    sink_conn_close_after_send(c);
  }
}

/* An event the core produced. Returns PAUSED when its reply is held. */
static int on_event(struct sink_conn *c, const struct smtps_event *ev)
{
  switch (ev->type) {
  case SMTPS_EV_COMMAND:
  case SMTPS_EV_AUTH:
  case SMTPS_EV_MESSAGE:
    c->ev = *ev;
    if (decide(c) == PAUSED)
      return PAUSED;
    break;
  case SMTPS_EV_DATA:
    if (g_sink.o.hostile == HOSTILE_RESET_MID_DATA) {
      g_sink.st.hostile_injected[HOSTILE_RESET_MID_DATA]++;
      smtps_shutdown(c->sm, NULL);
      c->state = ST_QUIT;
      sink_conn_close(c, 1);
      return 0;
    }
    if (g_sink.o.save_dir)
      buf_append(&c->msg, ev->data, ev->len);
    break;
  case SMTPS_EV_BDAT:
    g_sink.st.bdat_chunks++;
    if (g_sink.o.disconnect_at == CMD_BDAT)
      disconnect(c, CMD_BDAT);
    break;
  case SMTPS_EV_NONE:
  default:
    util_panic("sink: unexpected core event %d", ev->type);
  }
  check_done(c);
  return 0;
}

/* Feed p[0..n) to the core and act on its events; returns the bytes consumed. */
static size_t process(struct sink_conn *c, const uint8_t *p, size_t n)
{
  size_t off = 0;
  struct smtps_event ev;
  while (!c->paused && !c->closing && c->state != ST_QUIT && c->state != ST_GREETING) {
    off += smtps_feed(c->sm, p + off, n - off, 0);
    if (!smtps_event(c->sm, &ev))
      break;
    if (on_event(c, &ev) == PAUSED)
      break;
  }
  check_done(c);
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
  if (c->state == ST_QUIT || c->closing || !n)
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

void sink_smtp_start(struct sink_conn *c)
{
  if (!c->sm) {
    const struct sink_opts *o = &g_sink.o;
    struct smtps_params sp = {
      .hostname = o->hostname,
      .ext = SMTPS_EXT_SIZE | SMTPS_EXT_8BITMIME | SMTPS_EXT_ENHANCEDSTATUSCODES |
             (o->no_pipelining ? 0 : SMTPS_EXT_PIPELINING) |
             (o->no_chunking ? 0 : SMTPS_EXT_CHUNKING) |
             (g_sink.ssl_ctx && !o->no_starttls ? SMTPS_EXT_STARTTLS : 0),
      .auth_mechs = o->nusers ? (uint32_t)o->auth_mechs : 0,
      .auth_tls_only = o->require_tls_for_auth != 0,
      .require_auth = o->require_auth != 0,
      .tls_active = c->tls_active != 0,
      .limits = {.max_line = SINK_MAX_LINE, .max_rcpts = o->max_rcpts, .max_size = o->max_size},
    };
    c->sm = smtps_new(&sp);
    if (!c->sm)
      util_panic("sink: out of memory");
  }
  c->state = ST_GREETING;
  smtps_start(c->sm, 0);
  struct smtps_event ev;
  if (smtps_event(c->sm, &ev))
    on_event(c, &ev);
  if (c->state == ST_CMD && buf_avail(&c->in))
    run_in(c);
}

void sink_hostile_tls_garbage(struct sink_conn *c)
{
  g_sink.st.hostile_injected[HOSTILE_TLS_GARBAGE]++;
  c->tls_garbage = 0;
  if (c->sm) {
    smtps_shutdown(c->sm, "this is not a TLS ServerHello (impetus-sink hostile tls-garbage)\r\n");
    drain(c);
  } else {
    sink_conn_reply(c, R("this is not a TLS ServerHello (impetus-sink hostile tls-garbage)\r\n"));
  }
  c->state = ST_QUIT;
  sink_conn_close_after_send(c);
}

void sink_smtp_tls_ready(struct sink_conn *c)
{
  reset_txn(c);
  c->user = NULL;
  c->mech = NULL;
  if (c->sm)
    smtps_tls_done(c->sm, 0);
}

void sink_smtp_resume(struct sink_conn *c)
{
  c->paused = 0;
  c->delay_done = 1;
  if (c->ev_held) {
    c->ev_held = 0;
    decide(c);
    check_done(c);
    c->delay_done = 0;
  }
  if (c->state != ST_QUIT && !c->closing && c->state != ST_GREETING)
    run_in(c);
}

void sink_smtp_done(struct sink_conn *c)
{
  smtps_free(c->sm);
  c->sm = NULL;
}
