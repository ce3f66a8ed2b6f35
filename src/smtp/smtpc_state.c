/* smtpc_state.c owns the smtpc session's per-state table (names, what
 * we were doing, Momentum stages, timeout options), deadlines and state
 * changes, the event queue, per-recipient results and how a session or
 * a transaction ends (smtpc_fail). Sans-I/O like all of smtpc: it never
 * touches a socket, TLS, a clock or a log, and never allocates. Called
 * on the thread that owns the session. */
#include "smtpc_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- the per-state table (STYLE #6): one row per state ---- */

/* name, what we were doing (log lines), Momentum connection stage
 * (reference/momentum.md 7.1), the timeout option while its reply is awaited */
const struct smtpc_state_row smtpc_tab[SMTPC_ST_COUNT] = {
  [SMTPC_ST_CONNECT] = {"CONNECT", "connecting", 0, "Connect_Timeout"},
  [SMTPC_ST_TLS_IMPLICIT] = {"TLS_IMPLICIT", "in the TLS handshake", 17, "EHLO_Timeout"},
  [SMTPC_ST_BANNER] = {"BANNER", "reading the banner", 12, "EHLO_Timeout"},
  [SMTPC_ST_EHLO] = {"EHLO", "sending EHLO", 10, "EHLO_Timeout"},
  [SMTPC_ST_HELO] = {"HELO", "sending HELO", 10, "EHLO_Timeout"},
  [SMTPC_ST_STARTTLS] = {"STARTTLS", "sending STARTTLS", 15, "EHLO_Timeout"},
  [SMTPC_ST_TLS] = {"TLS", "in the TLS handshake", 17, "EHLO_Timeout"},
  [SMTPC_ST_AUTH] = {"AUTH", "authenticating", 11, "EHLO_Timeout"},
  [SMTPC_ST_IDLE] = {"IDLE", "idle", 1, "Idle_Timeout"},
  [SMTPC_ST_MAIL] = {"MAIL", "sending MAIL FROM", 2, "MailFrom_Timeout"},
  [SMTPC_ST_RCPT] = {"RCPT", "sending RCPT TO", 4, "RcptTo_Timeout"},
  [SMTPC_ST_DATA] = {"DATA", "sending DATA", 6, "Data_Timeout"},
  [SMTPC_ST_BODY] = {"BODY", "sending the body", 8, "Body_Timeout"},
  [SMTPC_ST_DOT] = {"DOT", "reading the confirmation", 9, "Body_Timeout"},
  [SMTPC_ST_RSET] = {"RSET", "sending RSET", 13, "RSET_Timeout"},
  [SMTPC_ST_QUIT] = {"QUIT", "sending QUIT", 1, "RSET_Timeout"},
  [SMTPC_ST_DONE] = {"DONE", "finished", 1, NULL},
};


const char *smtpc_state_name(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? smtpc_tab[st].name : "?";
}
const char *smtpc_state_doing(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? smtpc_tab[st].doing : "?";
}
uint8_t smtpc_state_stage(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? smtpc_tab[st].stage : 22;
}
const char *smtpc_timeout_option(enum smtpc_state st)
{
  return (unsigned)st < SMTPC_ST_COUNT ? smtpc_tab[st].timeout_opt : NULL;
}

const char *smtpc_ev_name(enum smtpc_ev_type t)
{
  switch (t) {
  case SMTPC_EV_NONE: return "NONE";
  case SMTPC_EV_NEED_TLS: return "NEED_TLS";
  case SMTPC_EV_AUTH_RESULT: return "AUTH_RESULT";
  case SMTPC_EV_READY: return "READY";
  case SMTPC_EV_RCPT_RESULT: return "RCPT_RESULT";
  case SMTPC_EV_NEED_BODY: return "NEED_BODY";
  case SMTPC_EV_TXN_DONE: return "TXN_DONE";
  case SMTPC_EV_FAILED: return "FAILED";
  case SMTPC_EV_CLOSED: return "CLOSED";
  default: return "?";
  }
}

const char *smtpc_fail_name(enum smtpc_fail_kind k)
{
  switch (k) {
  case SMTPC_FAIL_TRANSIENT: return "transient";
  case SMTPC_FAIL_PERMANENT: return "permanent";
  case SMTPC_FAIL_PROTOCOL: return "protocol";
  case SMTPC_FAIL_TIMEOUT: return "timeout";
  case SMTPC_FAIL_NETWORK: return "network";
  default: return "?";
  }
}

/* ---- events ---- */

struct smtpc_event *smtpc_ev_push(struct smtpc *s, enum smtpc_ev_type t)
{
  if (s->ev_n >= EVQ_CAP)
    util_panic("smtpc: event queue overflow");
  struct evq_item *it = &s->evq[(s->ev_head + s->ev_n) % EVQ_CAP];
  s->ev_n++;
  memset(it, 0, sizeof(*it));
  it->count = 1;
  it->ev.type = t;
  it->ev.text = "";
  it->ev.stage = smtpc_tab[smtpc_awaited(s)].stage;
  it->ev.doing = smtpc_tab[smtpc_awaited(s)].doing;
  return &it->ev;
}

void smtpc_ev_rcpt(struct smtpc *s, uint32_t idx)
{
  if (s->ev_n) {
    struct evq_item *tail = &s->evq[(s->ev_head + s->ev_n - 1) % EVQ_CAP];
    if (tail->ev.type == SMTPC_EV_RCPT_RESULT && tail->ev.index + tail->count == idx) {
      tail->count++;
      return;
    }
  }
  struct smtpc_event *e = smtpc_ev_push(s, SMTPC_EV_RCPT_RESULT);
  e->index = idx;
}

bool smtpc_next_event(struct smtpc *s, struct smtpc_event *ev)
{
  while (s->ev_n && s->evq[s->ev_head].ev.type == SMTPC_EV_NONE) { /* withdrawn */
    s->ev_head = (uint8_t)((s->ev_head + 1) % EVQ_CAP);
    s->ev_n--;
  }
  if (!s->ev_n)
    return false;
  struct evq_item *it = &s->evq[s->ev_head];
  *ev = it->ev;
  if (ev->type == SMTPC_EV_READY && (ev->flags & SMTPC_F_PIPELINED))
    s->cq_offered = false;
  if (ev->type == SMTPC_EV_RCPT_RESULT && s->ev_results) {
    const struct smtpc_result *r = &s->ev_results[ev->index];
    ev->code = r->code;
    memcpy(ev->enhanced, r->enhanced, sizeof(ev->enhanced));
    ev->stage = r->stage;
    ev->text = r->text;
  }
  if (it->ev.type == SMTPC_EV_RCPT_RESULT && it->count > 1) {
    it->count--;
    it->ev.index++;
  } else {
    s->ev_head = (uint8_t)((s->ev_head + 1) % EVQ_CAP);
    s->ev_n--;
  }
  return true;
}


/* ---- results and session end ---- */







/* End transaction t: results still undecided, or accepted but without a
 * final reply, get `final`'s outcome; then TXN_DONE. */
void smtpc_txn_done(struct smtpc *s, const struct smtpc_txn *t)
{
  for (uint32_t i = 0; i < t->nrcpt; i++)
    if (t->results[i].outcome == SMTPC_OUT_NONE)
      t->results[i] = *t->final;
  struct smtpc_event *e = smtpc_ev_push(s, SMTPC_EV_TXN_DONE);
  e->code = t->final->code;
  memcpy(e->enhanced, t->final->enhanced, sizeof(e->enhanced));
  e->stage = t->final->stage;
  e->text = t->final->text;
  e->final = t->final;
}

void smtpc_txn_finish(struct smtpc *s)
{
  if (!s->has_txn)
    return;
  s->has_txn = false;
  smtpc_txn_done(s, &s->txn);
}

/* The previous transaction ends without its final reply (the session
 * ended): transient, at the stage after the dot. */
void smtpc_prev_abandon(struct smtpc *s, int code, const char *enh, const char *text)
{
  if (!s->has_prev)
    return;
  s->has_prev = false;
  smtpc_set_result(s->prev.final, SMTPC_OUT_TRANSIENT, code, enh, smtpc_tab[SMTPC_ST_DOT].stage,
                   text);
  smtpc_txn_done(s, &s->prev);
}

void smtpc_cq_abandon(struct smtpc *s, int code, const char *enh, const char *text, uint8_t stage);
void smtpc_cq_unoffer(struct smtpc *s);

/* End the session. polite: the stream is in sync, queue a QUIT. */
IMPETUS_PRINTF(6, 7)
void smtpc_fail(struct smtpc *s, enum smtpc_fail_kind kind, uint32_t flags, int code, bool polite,
                const char *fmt, ...)
{
  if (s->st == SMTPC_ST_DONE)
    return;
  va_list ap;
  char tmp[SMTPC_TEXT_MAX];
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  /* fmt arguments are our own strings or already-sanitised server text */
  snprintf(s->fail_text, sizeof(s->fail_text), "%s", tmp);
  uint8_t stage = smtpc_tab[smtpc_awaited(s)].stage;
  const char *enh = code ? s->rp.enhanced : "";
  smtpc_prev_abandon(s, code, enh, s->fail_text);
  smtpc_cq_unoffer(s);
  smtpc_cq_abandon(s, code, enh, s->fail_text, stage);
  if (s->has_txn) {
    smtpc_set_result(s->txn.final, SMTPC_OUT_TRANSIENT, code, enh, stage, s->fail_text);
    smtpc_txn_finish(s);
  }
  struct smtpc_event *e = smtpc_ev_push(s, SMTPC_EV_FAILED);
  e->kind = kind;
  e->flags = flags;
  e->code = code;
  if (code)
    snprintf(e->enhanced, sizeof(e->enhanced), "%s", s->rp.enhanced);
  e->text = s->fail_text;
  smtpc_wipe_creds(s);
  if (s->out_secret) {
    util_wipe(s->out, s->out_len);
    s->out_secret = false;
  }
  s->out_off = s->out_len = 0; /* nothing queued is worth sending now */
  if (polite)
    smtpc_out_cmd(s, "QUIT");
  s->st = SMTPC_ST_DONE;
  s->deadline = UINT64_MAX;
}

/* Failure on a server reply: 4xx transient, 5xx `perm5` (or transient). */
void smtpc_fail_reply(struct smtpc *s, bool perm5, uint32_t flags, const char *what)
{
  enum smtpc_fail_kind k =
      (perm5 && s->rp.code / 100 == 5) ? SMTPC_FAIL_PERMANENT : SMTPC_FAIL_TRANSIENT;
  if (s->rp.code / 100 != 4 && s->rp.code / 100 != 5) {
    smtpc_fail(s, SMTPC_FAIL_PROTOCOL, flags, s->rp.code, true, "unexpected reply %d to %s: %s",
               s->rp.code, what, s->rp.text);
    return;
  }
  smtpc_fail(s, k, flags, s->rp.code, true, "%s", s->rp.text);
}

void smtpc_go_idle(struct smtpc *s, uint64_t now)
{
  smtpc_enter(s, SMTPC_ST_IDLE, now);
  smtpc_ev_push(s, SMTPC_EV_READY);
}

void smtpc_send_rset(struct smtpc *s, uint64_t now)
{
  smtpc_out_must(s, "RSET");
  smtpc_enter(s, SMTPC_ST_RSET, now);
}

