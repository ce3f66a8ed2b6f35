/* smtpc_bdat.c owns RFC 3030 BDAT sessions: up to pipeline_depth
 * transactions in flight, oldest first, each with its MAIL/RCPT replies
 * and one reply per chunk; offering the next transaction, withdrawing a
 * stale offer, and ending those in flight when the session ends. It
 * never touches a socket, a clock or a log and never allocates. Called
 * on the thread that owns the session. */
#include "smtpc_int.h"

#include <errno.h>
#include <string.h>

/* ---- BDAT (RFC 3030): transactions in flight ---- */

bool smtpc_cq_expect(const struct smtpc *s)
{
  return s->cq_n > 0 && s->cq[s->cq_head].recv < smtpc_cq_written(s, &s->cq[s->cq_head]);
}

/* Offer the next transaction (once per queued READY). */
void smtpc_cq_offer(struct smtpc *s)
{
  if (s->cq_offered || s->cq_rset || s->cq_n >= s->depth || s->st != SMTPC_ST_DOT)
    return;
  s->cq_offered = true;
  struct smtpc_event *e = smtpc_ev_push(s, SMTPC_EV_READY);
  e->flags = SMTPC_F_PIPELINED;
}

/* Withdraw a queued offer (it becomes an event nobody sees). */
void smtpc_cq_unoffer(struct smtpc *s)
{
  if (!s->cq_offered)
    return;
  s->cq_offered = false;
  for (unsigned k = 0; k < s->ev_n; k++) {
    struct smtpc_event *e = &s->evq[(s->ev_head + k) % EVQ_CAP].ev;
    if (e->type == SMTPC_EV_READY && (e->flags & SMTPC_F_PIPELINED))
      e->type = SMTPC_EV_NONE;
  }
}

/* `it` is over for the caller: TXN_DONE (once). */
static void cq_done(struct smtpc *s, struct cq_item *it)
{
  if (it->done)
    return;
  it->done = true;
  if (it->mail_failed || it->accepted == 0)
    smtpc_settle_unaccepted(&it->t, it->mail_failed);
  if (it->mail_failed || it->accepted == 0 || it->failed)
    s->cq_rset = true;
  smtpc_txn_done(s, &it->t);
}

/* The session ends under the transactions in flight: those without a
 * decided final reply get a transient one. */
void smtpc_cq_abandon(struct smtpc *s, int code, const char *enh, const char *text, uint8_t stage)
{
  while (s->cq_n) {
    struct cq_item *it = &s->cq[s->cq_head];
    if (!it->done && it->t.final->outcome == SMTPC_OUT_NONE && !it->mail_failed &&
        !(it->recv > it->t.nrcpt && it->accepted == 0))
      smtpc_set_result(it->t.final, SMTPC_OUT_TRANSIENT, code, enh, stage, text);
    cq_done(s, it);
    s->cq_head = (uint8_t)((s->cq_head + 1) % SMTPC_PIPE_MAX);
    s->cq_n--;
  }
}

/* Write the newest transaction's MAIL/RCPT as space allows; all written:
 * NEED_BODY at once (BDAT waits for nothing). */
void smtpc_cq_fill(struct smtpc *s, uint64_t now)
{
  if (s->st != SMTPC_ST_MAIL || !s->cq_n)
    return;
  struct cq_item *it = smtpc_cq_tail(s);
  while (s->send_cur <= it->t.nrcpt) {
    if (!smtpc_write_cmd_of(s, &it->t, s->send_cur))
      return;
    s->send_cur++;
  }
  smtpc_enter(s, SMTPC_ST_BODY, now);
  smtpc_ev_push(s, SMTPC_EV_NEED_BODY);
}

void smtpc_on_chunk_reply(struct smtpc *s, uint64_t now)
{
  struct cq_item *it = &s->cq[s->cq_head];
  struct smtpc_txn *t = &it->t;
  uint32_t idx = it->recv++;
  int code = s->rp.code, cls = code / 100;
  const char *what = idx == 0 ? "MAIL FROM" : idx <= t->nrcpt ? "RCPT TO" : "BDAT";
  if (cls != 2 && cls != 4 && cls != 5) {
    smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to %s: %s", code, what,
               s->rp.text);
    return;
  }
  smtpc_set_deadline(s, now); /* progress */
  if (it->done) {
    /* replies to what an ended transaction had already sent */
  } else if (idx == 0) {
    if (cls != 2) {
      it->mail_failed = true;
      for (uint32_t i = 0; i < t->nrcpt; i++)
        smtpc_result_from_reply(s, &t->results[i], 2);
      if (code == 503) /* out of step after an earlier failure: not this message's fault */
        for (uint32_t i = 0; i < t->nrcpt; i++)
          t->results[i].outcome = SMTPC_OUT_TRANSIENT;
    }
  } else if (idx <= t->nrcpt) {
    if (!it->mail_failed) {
      smtpc_result_from_reply(s, &t->results[idx - 1], 4);
      if (cls == 2)
        it->accepted++;
    }
  } else if (!it->mail_failed && it->accepted > 0) {
    bool last = it->sent_all && it->recv == smtpc_cq_written(s, it);
    if (cls != 2) {
      smtpc_result_from_reply(s, t->final, last ? 9 : 8);
      it->failed = true;
    } else if (last) {
      smtpc_result_from_reply(s, t->final, 9);
    }
  }
  /* the transaction still being sent failed: end it now, send no more */
  if (!it->done && !it->sent_all &&
      (it->mail_failed || it->failed || (it->recv > t->nrcpt && it->accepted == 0))) {
    it->sent_all = true;
    s->cq_cut = true;
    cq_done(s, it);
    if (s->st == SMTPC_ST_MAIL || s->st == SMTPC_ST_BODY)
      smtpc_enter(s, SMTPC_ST_DOT, now);
  }
  if (!it->sent_all || it->recv < smtpc_cq_written(s, it))
    return;
  cq_done(s, it);
  s->cq_head = (uint8_t)((s->cq_head + 1) % SMTPC_PIPE_MAX);
  s->cq_n--;
  if (s->cq_n == 0 && s->st == SMTPC_ST_DOT) {
    smtpc_cq_unoffer(s); /* a queued offer is stale: the plain READY follows */
    if (s->cq_rset) {
      s->cq_rset = false;
      smtpc_send_rset(s, now);
    } else {
      smtpc_go_idle(s, now);
    }
    return;
  }
  smtpc_set_deadline(s, now); /* the next transaction's reply is awaited now */
  smtpc_cq_offer(s);
}


bool smtpc_chunked(const struct smtpc *s) { return s->chunked; }

int smtpc_chunk(struct smtpc *s, size_t len, bool is_last, uint64_t now)
{
  if (s->chunked && s->cq_cut)
    return -ECANCELED;
  if (!s->chunked || !s->cq_n || smtpc_cq_tail(s)->sent_all)
    return -EINVAL;
  struct cq_item *it = smtpc_cq_tail(s);
  if (s->st != SMTPC_ST_BODY)
    return -EINVAL;
  char num[21];
  const char *parts[] = {"BDAT ", smtpc_u64_dec(len, num), is_last ? " LAST" : ""};
  if (!smtpc_out_parts(s, parts, 3))
    return -ENOSPC;
  it->chunks++;
  smtpc_set_deadline(s, now);
  if (is_last) {
    it->sent_all = true;
    smtpc_enter(s, SMTPC_ST_DOT, now);
    smtpc_cq_offer(s);
  }
  return 0;
}

