/* smtpc.c owns the sans-I/O SMTP client session's life and the driver's
 * calls: new/free, connected, TLS done, EOF, errors, timeouts, output
 * consumed, QUIT, the getters, and feeding reply bytes to the state that
 * awaits them. The session's parts: smtpc_state.c (tables, events,
 * results, session end), smtpc_out.c (output buffer), smtpc_auth.c (EHLO,
 * STARTTLS, AUTH), smtpc_txn.c (MAIL/RCPT/DATA), smtpc_bdat.c (BDAT);
 * private header smtpc_int.h.
 * It must never touch a socket, TLS, a clock or a log, and never allocate
 * per reply or per byte (the output buffer is sized at smtpc_new; only a
 * deferred credential set may grow it once). One session is used by the
 * thread that owns its connection. See smtpc.h for the driver contract. */
#include "smtpc_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "panic.h"

#define DEF_OUT 4096
#define MIN_OUT 1024

static uint32_t or_default(uint32_t v, uint32_t d) { return v ? v : d; }

/* ---- replies ---- */

static bool outstanding(const struct smtpc *s)
{
  if (s->chunked && s->cq_n &&
      (s->st == SMTPC_ST_MAIL || s->st == SMTPC_ST_BODY || s->st == SMTPC_ST_DOT))
    return smtpc_cq_expect(s);
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
      smtpc_result_from_reply(s, t->final, 8);
      smtpc_txn_finish(s);
    }
    smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, s->rp.code, false,
               "reply before the end of the body: %d %s", s->rp.code, s->rp.text);
    return;
  }
  if (s->rp.code == 421) {
    smtpc_fail(s, SMTPC_FAIL_TRANSIENT, 0, 421, false, "%s", s->rp.text);
    return;
  }
  (void)now; /* anything else is dropped (counted in unsolicited bytes) */
}

static void on_line(struct smtpc *s)
{
  if (s->st == SMTPC_ST_EHLO && s->rp.code == 250 && s->rp.nlines > 1)
    smtpc_ehlo_line(s);
}

static void on_reply(struct smtpc *s, uint64_t now)
{
  int code = s->rp.code, cls = code / 100;
  switch (s->st) {
  case SMTPC_ST_BANNER:
    if (cls == 2)
      smtpc_send_hello(s, true, now);
    else
      smtpc_fail_reply(s, true, 0, "the banner");
    break;
  case SMTPC_ST_EHLO:
    if (cls == 2) {
      s->ext |= SMTPC_EXT_ESMTP;
      smtpc_after_ehlo(s, now);
    } else if (code == 500 || code == 502) {
      smtpc_send_hello(s, false, now);
    } else
      smtpc_fail_reply(s, true, 0, "EHLO");
    break;
  case SMTPC_ST_HELO:
    if (cls == 2)
      smtpc_after_ehlo(s, now);
    else
      smtpc_fail_reply(s, true, 0, "HELO");
    break;
  case SMTPC_ST_STARTTLS:
    if (code == 220) {
      smtpc_enter(s, SMTPC_ST_TLS, now);
      smtpc_ev_push(s, SMTPC_EV_NEED_TLS);
    } else if (cls != 4 && cls != 5) {
      smtpc_fail_reply(s, false, 0, "STARTTLS");
    } else if (s->tls_mode == SMTPC_TLS_REQUIRED) {
      smtpc_fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_TLS_POLICY, code, true,
                 "TLS required but STARTTLS was refused: %s", s->rp.text);
    } else {
      s->tls_mode = SMTPC_TLS_NO; /* opportunistic: go on in plaintext */
      smtpc_start_auth(s, now);
    }
    break;
  case SMTPC_ST_AUTH:
    smtpc_on_auth_reply(s, now);
    break;
  case SMTPC_ST_MAIL:
  case SMTPC_ST_RCPT:
  case SMTPC_ST_DATA:
  case SMTPC_ST_BODY:
  case SMTPC_ST_DOT:
    if (s->chunked && s->cq_n)
      smtpc_on_chunk_reply(s, now);
    else if (s->st == SMTPC_ST_BODY)
      util_panic("smtpc: reply routed to state BODY");
    else if (s->st == SMTPC_ST_DOT)
      smtpc_on_final_reply(s, now);
    else if (s->has_prev)
      smtpc_on_prev_reply(s, now);
    else
      smtpc_on_txn_reply(s, now);
    /* 421: the server is closing the channel (RFC 5321 3.8) */
    if (code == 421 && s->st != SMTPC_ST_DONE)
      smtpc_fail(s, SMTPC_FAIL_TRANSIENT, 0, 421, false, "%s", s->rp.text);
    break;
  case SMTPC_ST_RSET:
    if (cls == 2)
      smtpc_go_idle(s, now);
    else
      smtpc_fail_reply(s, false, 0, "RSET");
    break;
  case SMTPC_ST_QUIT:
    smtpc_ev_push(s, SMTPC_EV_CLOSED);
    s->st = SMTPC_ST_DONE;
    s->deadline = UINT64_MAX;
    break;
  case SMTPC_ST_CONNECT:
  case SMTPC_ST_TLS_IMPLICIT:
  case SMTPC_ST_TLS:
  case SMTPC_ST_IDLE:
  case SMTPC_ST_DONE:
    util_panic("smtpc: reply routed to state %s", smtpc_tab[s->st].name);
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
      smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false, "unexpected plaintext data %s",
                 smtpc_tab[s->st].doing);
    return (int)total;
  }
  while (n > 0 && s->st != SMTPC_ST_DONE) {
    bool expect = outstanding(s);
    size_t used = 0;
    int r = smtp_reply_parse(&s->rp, p, n, &used);
    if (!expect) {
      s->unsolicited += (uint32_t)used;
      if (s->unsolicited > s->lim.max_unsolicited) {
        smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false,
                   "more than %u bytes of unsolicited data from the server %s",
                   (unsigned)s->lim.max_unsolicited, smtpc_tab[s->st].doing);
        break;
      }
    }
    p += used;
    n -= used;
    if (r < 0) {
      smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false, "%s %s", smtp_reply_strerror(r),
                 smtpc_tab[s->st].doing);
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
        smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, 0, false,
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
  if (nl == 0 || nl > 255 || !smtpc_clean_str(name, 255) || strchr(name, ' '))
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
  if (smtpc_set_creds(s, &pa->auth) < 0) {
    smtpc_free(s);
    return NULL;
  }
  s->st = SMTPC_ST_CONNECT;
  smtpc_set_deadline(s, now);
  return s;
}

void smtpc_free(struct smtpc *s)
{
  if (!s)
    return;
  smtpc_wipe_creds(s);
  smtpc_out_release(s);
  free(s->ehlo_name);
  util_wipe(s, sizeof(*s));
  free(s);
}

int smtpc_connected(struct smtpc *s, uint64_t now)
{
  if (s->st != SMTPC_ST_CONNECT)
    return -EINVAL;
  if (s->implicit_tls) {
    smtpc_enter(s, SMTPC_ST_TLS_IMPLICIT, now);
    smtpc_ev_push(s, SMTPC_EV_NEED_TLS);
  } else
    smtpc_enter(s, SMTPC_ST_BANNER, now);
  return 0;
}

int smtpc_tls_done(struct smtpc *s, bool ok, uint64_t now)
{
  if (s->st != SMTPC_ST_TLS && s->st != SMTPC_ST_TLS_IMPLICIT)
    return -EINVAL;
  if (!ok) {
    smtpc_fail(s, SMTPC_FAIL_TRANSIENT, SMTPC_F_TLS_FAILED, 0, false, "TLS handshake failed");
    return 0;
  }
  s->tls_active = true;
  smtp_reply_reset(&s->rp);
  s->rp.max_line = s->lim.max_line;
  s->rp.max_lines = s->lim.max_lines;
  s->rp.max_bytes = s->lim.max_reply_bytes;
  if (s->st == SMTPC_ST_TLS_IMPLICIT)
    smtpc_enter(s, SMTPC_ST_BANNER, now);
  else
    smtpc_send_hello(s, true, now); /* RFC 3207 4.2: forget what was learnt before TLS */
  return 0;
}

void smtpc_eof(struct smtpc *s, uint64_t now)
{
  (void)now;
  if (s->st == SMTPC_ST_DONE)
    return;
  if (s->st == SMTPC_ST_QUIT) {
    smtpc_ev_push(s, SMTPC_EV_CLOSED);
    s->st = SMTPC_ST_DONE;
    s->deadline = UINT64_MAX;
    return;
  }
  smtpc_fail(s, SMTPC_FAIL_NETWORK, 0, 0, false, "connection closed by the server while %s",
             smtpc_tab[s->st].doing);
}

void smtpc_io_error(struct smtpc *s, int err, uint64_t now)
{
  (void)now;
  if (err < 0)
    err = -err;
  smtpc_fail(s, SMTPC_FAIL_NETWORK, 0, 0, false, "%s while %s",
             strerrorname_np(err) ? strerrorname_np(err) : "I/O error", smtpc_tab[s->st].doing);
}

uint64_t smtpc_deadline(const struct smtpc *s) { return s->deadline; }

int smtpc_timeout(struct smtpc *s, uint64_t now)
{
  if (now < s->deadline || s->st == SMTPC_ST_DONE)
    return 0;
  switch (s->st) {
  case SMTPC_ST_IDLE:
    smtpc_out_must(s, "QUIT");
    smtpc_enter(s, SMTPC_ST_QUIT, now);
    return 1;
  case SMTPC_ST_QUIT:
    smtpc_ev_push(s, SMTPC_EV_CLOSED);
    s->st = SMTPC_ST_DONE;
    s->deadline = UINT64_MAX;
    return 1;
  default:
    break;
  }
  enum smtpc_state aw = smtpc_awaited(s);
  smtpc_fail(s, SMTPC_FAIL_TIMEOUT, 0, 0, false, "timeout while %s (%s = %u s)",
             smtpc_tab[aw].doing, smtpc_tab[aw].timeout_opt, (unsigned)smtpc_timeout_s(s, aw));
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
      smtpc_cq_fill(s, now);
    else
      smtpc_fill_cmds(s); /* the send cursor moves on as space frees up */
    break;
  case SMTPC_ST_BODY:
    smtpc_set_deadline(s, now); /* progress */
    smtpc_body_try_finish(s, now);
    break;
  default:
    break;
  }
}

void smtpc_quit(struct smtpc *s, uint64_t now)
{
  if (s->st == SMTPC_ST_DONE || s->st == SMTPC_ST_QUIT)
    return;
  if (s->st == SMTPC_ST_IDLE) {
    smtpc_out_must(s, "QUIT");
    smtpc_enter(s, SMTPC_ST_QUIT, now);
    return;
  }
  smtpc_prev_abandon(s, 0, "", "session closed locally");
  smtpc_cq_abandon(s, 0, "", "session closed locally", smtpc_tab[smtpc_awaited(s)].stage);
  if (s->has_txn) {
    smtpc_set_result(s->txn.final, SMTPC_OUT_TRANSIENT, 0, "", smtpc_tab[s->st].stage,
                     "session closed locally");
    smtpc_txn_finish(s);
  }
  smtpc_wipe_creds(s);
  smtpc_ev_push(s, SMTPC_EV_CLOSED);
  s->st = SMTPC_ST_DONE;
  s->deadline = UINT64_MAX;
}

enum smtpc_state smtpc_state(const struct smtpc *s) { return s->st; }
uint8_t smtpc_stage(const struct smtpc *s)
{
  if (!s->chunked && (s->st == SMTPC_ST_MAIL || s->st == SMTPC_ST_RCPT || s->st == SMTPC_ST_DATA))
    return smtpc_tab[smtpc_cursor_state(s)].stage;
  return smtpc_tab[smtpc_awaited(s)].stage;
}
const char *smtpc_doing(const struct smtpc *s) { return smtpc_tab[smtpc_awaited(s)].doing; }
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
