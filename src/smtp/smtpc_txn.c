/* smtpc_txn.c owns a mail transaction over DATA: MAIL/RCPT/DATA written
 * under RFC 2920 pipelining (a send cursor and a receive cursor), their
 * replies, the body through the dot-stuffer, the final reply, and the
 * previous transaction's final reply read while the next one's commands
 * are outstanding. smtpc_begin_txn also starts BDAT transactions
 * (smtpc_bdat.c). It never touches a socket, a clock or a log and never
 * allocates. Called on the thread that owns the session. */
#include "smtpc_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- transactions ---- */

/* Write command i of transaction t (0 MAIL, 1..nrcpt RCPT, then DATA) if
 * it fits. */
bool smtpc_write_cmd_of(struct smtpc *s, const struct smtpc_txn *t, uint32_t i)
{
  if (i == 0) {
    char num[21];
    bool sz = (s->ext & SMTPC_EXT_SIZE) && t->size;
    bool b8 = s->send8 && (t->flags & SMTPC_TXN_8BIT) && (s->ext & SMTPC_EXT_8BITMIME);
    bool u8 = (t->flags & SMTPC_TXN_SMTPUTF8) != 0;
    const char *parts[] = {"MAIL FROM:<", t->mail_from, sz ? "> SIZE=" : ">",
                           sz ? smtpc_u64_dec(t->size, num) : "", b8 ? " BODY=8BITMIME" : "",
                           u8 ? " SMTPUTF8" : ""};
    return smtpc_out_parts(s, parts, 6);
  }
  if (i <= t->nrcpt) {
    const char *parts[] = {"RCPT TO:<", t->rcpts[i - 1], ">"};
    return smtpc_out_parts(s, parts, 3);
  }
  if (smtpc_out_cmd(s, "DATA")) {
    s->data_sent = true;
    return true;
  }
  return false;
}

/* Write the command at the send cursor if it fits. */
static bool write_cmd(struct smtpc *s) { return smtpc_write_cmd_of(s, &s->txn, s->send_cur); }

/* Advance the send cursor as far as pipelining and output space allow. */
void smtpc_fill_cmds(struct smtpc *s)
{
  if (!s->has_txn)
    return;
  uint32_t last = s->txn.nrcpt + 1;
  while (s->send_cur <= last) {
    if (s->mail_failed)
      return;
    if (!s->pipelined && s->send_cur != s->recv_cur)
      return;
    if (s->send_cur == last && !s->pipelined && s->accepted == 0)
      return;
    if (!write_cmd(s))
      return;
    s->send_cur++;
  }
}

enum smtpc_state smtpc_cursor_state(const struct smtpc *s)
{
  if (s->recv_cur == 0)
    return SMTPC_ST_MAIL;
  if (s->recv_cur <= s->txn.nrcpt)
    return SMTPC_ST_RCPT;
  return SMTPC_ST_DATA;
}

/* Nothing was accepted: the final result is MAIL's refusal, or "all
 * recipients were refused"; transient when any refusal was (the best
 * outcome of them). */
void smtpc_settle_unaccepted(struct smtpc_txn *t, bool mail_failed)
{
  if (t->final->outcome == SMTPC_OUT_NONE) {
    if (mail_failed)
      smtpc_set_result(t->final, t->results[0].outcome, t->results[0].code, t->results[0].enhanced,
                       2, t->results[0].text);
    else
      smtpc_set_result(t->final, SMTPC_OUT_PERMANENT, 0, "", 4, "all recipients were refused");
  }
  for (uint32_t i = 0; i < t->nrcpt && t->final->outcome == SMTPC_OUT_PERMANENT; i++)
    if (t->results[i].outcome == SMTPC_OUT_TRANSIENT)
      t->final->outcome = SMTPC_OUT_TRANSIENT;
}

/* The group's outstanding replies are all in: decide what comes next. */
static void group_settled(struct smtpc *s, uint64_t now)
{
  struct smtpc_txn *t = &s->txn;
  /* nothing accepted (or MAIL failed): no DATA, or DATA already refused */
  if (s->mail_failed || s->accepted == 0) {
    smtpc_settle_unaccepted(t, s->mail_failed);
    smtpc_txn_finish(s);
    smtpc_send_rset(s, now);
    return;
  }
  smtpc_enter(s, smtpc_cursor_state(s), now);
}

void smtpc_on_txn_reply(struct smtpc *s, uint64_t now)
{
  struct smtpc_txn *t = &s->txn;
  uint32_t idx = s->recv_cur++;
  int code = s->rp.code;
  int cls = code / 100;
  if (idx == 0) {
    if (cls != 2 && cls != 4 && cls != 5) {
      smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to MAIL FROM: %s",
                 code, s->rp.text);
      return;
    }
    if (cls != 2) {
      s->mail_failed = true;
      for (uint32_t i = 0; i < t->nrcpt; i++) {
        smtpc_result_from_reply(s, &t->results[i], 2);
        smtpc_ev_rcpt(s, i);
      }
      smtpc_result_from_reply(s, t->final, 2);
    }
  } else if (idx <= t->nrcpt) {
    if (!s->mail_failed) {
      if (cls != 2 && cls != 4 && cls != 5) {
        smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to RCPT TO: %s",
                   code, s->rp.text);
        return;
      }
      smtpc_result_from_reply(s, &t->results[idx - 1], 4);
      if (cls == 2)
        s->accepted++;
      smtpc_ev_rcpt(s, idx - 1);
    }
  } else {
    /* DATA */
    if (code == 354) {
      if (!s->mail_failed && s->accepted > 0) {
        smtpc_enter(s, SMTPC_ST_BODY, now);
        smtp_dot_init(&s->dot);
        s->body_last = false;
        smtpc_ev_push(s, SMTPC_EV_NEED_BODY);
        return;
      }
      /* RFC 2920 3.1: DATA accepted with no valid recipient: end it empty */
      smtpc_out_must(s, ".");
      s->dot_only = true;
      smtpc_enter(s, SMTPC_ST_DOT, now);
      return;
    }
    if (!s->mail_failed && s->accepted > 0) {
      if (cls != 4 && cls != 5) {
        smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, code, false, "unexpected reply %d to DATA: %s", code,
                   s->rp.text);
        return;
      }
      smtpc_result_from_reply(s, t->final, 6);
      smtpc_txn_finish(s);
      smtpc_send_rset(s, now);
      return;
    }
  }
  /* more replies outstanding, or more commands to send? */
  smtpc_fill_cmds(s);
  if (s->recv_cur < s->send_cur) {
    smtpc_enter(s, smtpc_cursor_state(s), now);
    return;
  }
  /* recv caught up with send: lock-step, DATA decision, or settled */
  if (s->send_cur <= t->nrcpt + 1 && !s->mail_failed && !(s->send_cur == t->nrcpt + 1 && s->accepted == 0)) {
    /* waiting for output space to send more */
    smtpc_enter(s, smtpc_cursor_state(s), now);
    return;
  }
  group_settled(s, now);
}

void smtpc_on_final_reply(struct smtpc *s, uint64_t now)
{
  struct smtpc_txn *t = &s->txn;
  if (s->dot_only) {
    s->dot_only = false;
    smtpc_settle_unaccepted(t, false);
    smtpc_txn_finish(s);
    smtpc_send_rset(s, now);
    return;
  }
  int cls = s->rp.code / 100;
  if (cls != 2 && cls != 4 && cls != 5) {
    smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, s->rp.code, false,
               "unexpected reply %d after the body: %s", s->rp.code, s->rp.text);
    return;
  }
  smtpc_result_from_reply(s, t->final, 9);
  smtpc_txn_finish(s);
  if (cls == 2)
    smtpc_go_idle(s, now);
  else
    smtpc_send_rset(s, now);
}

/* The previous transaction's final reply, read while the next one's
 * commands are outstanding. A refusal needs no RSET: the server has ended
 * that transaction and the MAIL after the dot starts a new one. */
void smtpc_on_prev_reply(struct smtpc *s, uint64_t now)
{
  int cls = s->rp.code / 100;
  if (cls != 2 && cls != 4 && cls != 5) {
    smtpc_fail(s, SMTPC_FAIL_PROTOCOL, 0, s->rp.code, false,
               "unexpected reply %d after the body: %s", s->rp.code, s->rp.text);
    return;
  }
  s->has_prev = false;
  smtpc_result_from_reply(s, s->prev.final, smtpc_tab[SMTPC_ST_DOT].stage);
  smtpc_txn_done(s, &s->prev);
  smtpc_set_deadline(s, now); /* now waiting for this transaction's own replies */
}

void smtpc_body_try_finish(struct smtpc *s, uint64_t now)
{
  if (s->st != SMTPC_ST_BODY || !s->body_last)
    return;
  if (smtpc_out_room(s) < smtp_dot_finish_len(&s->dot))
    return;
  s->out_len += smtp_dot_finish(&s->dot, s->out + s->out_len);
  s->unsolicited = 0;
  smtpc_enter(s, SMTPC_ST_DOT, now);
  if (s->pipelined) {
    /* RFC 2920 3.1: the next transaction may follow the dot at once */
    struct smtpc_event *e = smtpc_ev_push(s, SMTPC_EV_READY);
    e->flags = SMTPC_F_PIPELINED;
  }
}


int smtpc_begin_txn(struct smtpc *s, const struct smtpc_txn *t, uint64_t now)
{
  bool early = s->st == SMTPC_ST_DOT && s->pipelined && s->has_txn && !s->dot_only && !s->has_prev;
  /* BDAT: behind every transaction in flight once the newest is sent */
  bool deep = s->chunked && s->st == SMTPC_ST_DOT && s->cq_n > 0 && s->cq_n < s->depth &&
              !s->cq_rset && smtpc_cq_tail(s)->sent_all;
  if (s->st != SMTPC_ST_IDLE && !early && !deep)
    return -EBUSY;
  if (!t || !t->mail_from || !t->rcpts || !t->results || !t->final || t->nrcpt == 0 ||
      t->nrcpt > s->max_rcpts)
    return -EINVAL;
  if (!smtpc_clean_str(t->mail_from, SMTPC_ADDR_MAX))
    return -EINVAL;
  for (uint32_t i = 0; i < t->nrcpt; i++)
    if (!t->rcpts[i] || !t->rcpts[i][0] || !smtpc_clean_str(t->rcpts[i], SMTPC_ADDR_MAX))
      return -EINVAL;
  if (early && (t->results == s->txn.results || t->final == s->txn.final))
    return -EINVAL; /* the previous transaction's results are still being written */
  for (unsigned k = 0; deep && k < s->cq_n; k++)
    if (t->results == smtpc_cq_at(s, k)->t.results || t->final == smtpc_cq_at(s, k)->t.final)
      return -EINVAL;
  if (s->st == SMTPC_ST_IDLE)
    s->chunked = s->want_chunking && (s->ext & SMTPC_EXT_CHUNKING) &&
                 (s->ext & SMTPC_EXT_PIPELINING);
  s->cq_offered = s->cq_cut = false;
  for (uint32_t i = 0; i < t->nrcpt; i++)
    smtpc_set_result(&t->results[i], SMTPC_OUT_NONE, 0, "", 0, "");
  smtpc_set_result(t->final, SMTPC_OUT_NONE, 0, "", 0, "");

  /* local refusals: nothing is sent */
  char why[SMTPC_TEXT_MAX];
  const char *enh = NULL;
  if (s->peer_size && t->size > s->peer_size) {
    snprintf(why, sizeof(why), "message size %" PRIu64 " exceeds the remote server's limit %" PRIu64,
             t->size, s->peer_size);
    enh = "5.3.4";
  } else if ((t->flags & SMTPC_TXN_SMTPUTF8) && !(s->ext & SMTPC_EXT_SMTPUTF8)) {
    snprintf(why, sizeof(why), "SMTPUTF8 is required but the remote server does not offer it");
    enh = "5.6.7";
  }
  if (enh) {
    smtpc_set_result(t->final, SMTPC_OUT_PERMANENT, 0, enh, 1, why);
    smtpc_txn_done(s, t);
    if (early) { /* the one in flight still waits for its reply: offer again */
      struct smtpc_event *e = smtpc_ev_push(s, SMTPC_EV_READY);
      e->flags = SMTPC_F_PIPELINED;
    } else if (deep) {
      smtpc_cq_offer(s);
    } else {
      smtpc_go_idle(s, now);
    }
    return 0;
  }
  if (s->chunked) {
    struct cq_item *it = &s->cq[(s->cq_head + s->cq_n) % SMTPC_PIPE_MAX];
    memset(it, 0, sizeof(*it));
    it->t = *t;
    s->cq_n++;
    s->send_cur = 0;
    smtpc_enter(s, SMTPC_ST_MAIL, now);
    smtpc_cq_fill(s, now);
    return 0;
  }
  if (early) {
    s->prev = s->txn;
    s->has_prev = true;
  }
  s->txn = *t;
  s->has_txn = true;
  s->ev_results = t->results;
  s->send_cur = s->recv_cur = 0;
  s->accepted = 0;
  s->mail_failed = s->data_sent = s->dot_only = s->body_last = false;
  s->pipelined = (s->ext & SMTPC_EXT_PIPELINING) != 0;
  smtpc_enter(s, SMTPC_ST_MAIL, now);
  smtpc_fill_cmds(s);
  return 0;
}


long smtpc_body(struct smtpc *s, const void *data, size_t len, bool is_last, uint64_t now)
{
  if (s->st != SMTPC_ST_BODY || s->body_last || s->chunked)
    return -EINVAL;
  size_t used = 0;
  size_t room = smtpc_out_room(s);
  if (len) {
    s->out_len += smtp_dot_encode(&s->dot, data, len, s->out + s->out_len, room, &used);
    s->unsolicited = 0;
  }
  smtpc_set_deadline(s, now);
  if (is_last && used == len) {
    s->body_last = true;
    smtpc_body_try_finish(s, now);
  }
  return (long)used;
}

int smtpc_body_sent(struct smtpc *s, size_t n, bool is_last, bool ends_with_crlf, uint64_t now)
{
  if (s->st != SMTPC_ST_BODY || s->body_last || s->chunked)
    return -EINVAL;
  (void)n;
  smtpc_set_deadline(s, now);
  if (is_last) {
    /* the terminator follows the driver's bytes: tell the encoder where
     * the body stopped */
    s->dot.bol = ends_with_crlf;
    s->dot.cr = 0;
    s->body_last = true;
    smtpc_body_try_finish(s, now);
  }
  return 0;
}


const struct smtpc_result *smtpc_txn_outcome(const struct smtpc_txn *t, uint32_t i)
{
  const struct smtpc_result *r = &t->results[i];
  return r->outcome == SMTPC_OUT_OK ? t->final : r;
}

