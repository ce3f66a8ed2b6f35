/* outcome.c: what happens to recipients after an attempt. Owns the
 * per-recipient verdict of a unit's attempt (D/T/P/B records, Lua outcome
 * hooks, counters), retries with back-off and expiry (scheduler.c
 * decides), the result posted to the message's home worker, the home
 * worker's spool updates, the removal of a finished message, and the
 * bounce (DSN) dropped into the pickup directory.
 *
 * Must never: talk SMTP or touch a session; change a message's spool state
 * anywhere but on its home worker (results travel there as posts); log a
 * credential.
 * Threads: a worker's loop thread (the delivering worker for
 * outcome_finish, the home worker for the posted result). */
#include "delivery.h"

#include "adaptive_queue.h"
#include "clock.h"
#include "ctl.h"
#include "counters.h"
#include "dsn.h"
#include "logs.h"
#include "panic.h"
#include "policy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DSN_ORIG_MAX 65536u    /* bytes of the original read for a DSN */

/* ------------------------------------------------------------ home side */

static void commit_soon(struct worker *w)
{
  w->txn_dirty = true;
}

static void drop_pickup_dsn(struct worker *w, struct emsg *em)
{
  struct spool_msg *sm = em->sm;
  struct dsn_rcpt *r = util_xcalloc(em->nbounce, sizeof *r);
  for (uint32_t i = 0; i < em->nbounce; i++) {
    r[i].rcpt = sm->rcpt[em->bounce[i].idx];
    r[i].code = em->bounce[i].code;
    r[i].status = em->bounce[i].enh[0] ? em->bounce[i].enh : NULL;
    r[i].diag = em->bounce[i].text;
  }
  char *orig = util_xmalloc(DSN_ORIG_MAX);
  ssize_t got = 0;
  int fd = spool_open_body(w->sh->spool, sm);
  if (fd >= 0) {
    size_t want = sm->body_size < DSN_ORIG_MAX ? (size_t)sm->body_size : DSN_ORIG_MAX;
    got = pread(fd, orig, want, (off_t)sm->body_off);
    spool_close_body(w->sh->spool, fd);
  }
  if (got < 0)
    got = 0;
  uint64_t now = clock_wall_ms();
  char unique[64];
  snprintf(unique, sizeof unique, "%s.%u", em->id, w->idx);
  struct dsn_params p = {.reporting_mta = w->sh->hostname, .sender = sm->sender,
                         .queue_id = em->id, .arrival_ms = sm->created_ms, .now_ms = now,
                         .unique = unique};
  struct buf b = {0};
  if (dsn_envelope(&b, sm->sender) == 0 && dsn_build(&b, &p, r, em->nbounce, orig, (size_t)got) == 0) {
    char tmp[4200], fin[4200];
    snprintf(tmp, sizeof tmp, "%s/.dsn-%s", w->sh->pickup_dir, em->id);
    snprintf(fin, sizeof fin, "%s/dsn-%s", w->sh->pickup_dir, em->id);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = out >= 0 && write(out, buf_head(&b), buf_avail(&b)) == (ssize_t)buf_avail(&b) &&
              fsync(out) == 0;
    if (out >= 0)
      close(out);
    if (ok && rename(tmp, fin) == 0) {
      logs_panic(w->log, now, "dsn", "bounce for %s queued to <%s> (%u recipients)", em->id,
                 sm->sender, em->nbounce);
    } else {
      unlink(tmp);
      logs_panic(w->log, now, "dsn", "could not write the bounce for %s: %s", em->id,
                 strerror(errno));
    }
  }
  buf_done(&b, 0);
  free(orig);
  free(r);
}

/* Apply a unit's results to its message (home worker only). */
static void apply_result(struct worker *w, struct uresult *res)
{
  struct emsg *em = res->em;
  struct spool_msg *sm = em->sm;
  for (uint32_t i = 0; i < res->n; i++) {
    struct rres *r = &res->r[i];
    if (r->state == SPOOL_RCPT_PENDING)
      continue;
    spool_txn_rcpt(w->txn, sm, r->idx, (enum spool_rcpt_state)r->state);
    if (r->state == SPOOL_RCPT_FAILED && em->bounces_on) {
      em->bounce = util_xrealloc(em->bounce, (em->nbounce + 1) * sizeof *em->bounce);
      struct bounce *b = &em->bounce[em->nbounce++];
      b->idx = r->idx;
      b->code = r->code;
      delivery_copy(b->enh, sizeof b->enh, r->enh);
      delivery_copy(b->text, sizeof b->text, r->text);
    }
  }
  if (res->unit_done) {
    em->units_left--;
  } else {
    if (res->attempts > em->attempts)
      em->attempts = res->attempts;
    if (em->next_retry_ms == 0 || res->next_ms < em->next_retry_ms)
      em->next_retry_ms = res->next_ms;
    spool_txn_retry(w->txn, sm, em->attempts, em->next_retry_ms);
    if (em->units == 1) /* its only unit waits on this thread: out of the journal */
      spool_txn_spill(w->txn, sm);
  }
  commit_soon(w);
  if (em->units_left == 0) {
    if (em->nbounce > 0)
      drop_pickup_dsn(w, em);
    dlist_remove(&w->msgs, &em->link);
    sm->user = NULL;
    spool_txn_remove(w->txn, sm); /* frees sm after the commit */
    free(em->bounce);
    free(em);
  }
  free(res);
}

struct result_post {
  struct worker *home;
  struct uresult *res;
};

static void run_result_post(void *arg)
{
  struct result_post *p = arg;
  apply_result(p->home, p->res);
  free(p);
}

static void post_result(struct worker *w, struct uresult *res)
{
  struct worker *home = w->sh->workers[res->em->home];
  if (home == w) {
    apply_result(w, res);
    return;
  }
  struct result_post *p = util_xmalloc(sizeof *p);
  p->home = home;
  p->res = res;
  ring_post(home->ring, run_result_post, p);
}


/* ------------------------------------------------------------ outcomes */

void outcome_logs_msg(struct logs_msg *m, char *msgid, size_t cap, const struct emsg *em,
                          uint32_t idx)
{
  const struct spool_msg *sm = em->sm;
  snprintf(msgid, cap, "%s.%u", em->id, idx);
  m->msgid = msgid;
  m->batchid = em->id;
  m->rcpt = sm->rcpt[idx];
  m->sender = sm->sender;
  m->binding_group = sm->binding_group ? sm->binding_group : "";
  m->binding = sm->binding ? sm->binding : "default";
  m->size = sm->body_size;
  m->received_ms = sm->created_ms;
}

/* Finish a unit's attempt: results[i] per recipient (NULL: every
 * recipient gets `all`). Logs D/T/P/B, re-queues the transient ones with
 * back-off (or fails them at expiry), and reports to the home worker. */
void outcome_finish(struct worker *w, struct dq_queue *q, struct dq_unit *u,
                    const struct smtpc_result *results, const struct smtpc_result *all,
                    const char *conn_id, const char *remote_ip, uint64_t bytes)
{
  struct emsg *em = u->msg;
  uint64_t now = clock_wall_ms();
  struct sched_retry pol = worker_retry_policy(w, q);
  uint32_t failures = u->attempts + 1;
  uint64_t next_ms = 0;
  enum sched_verdict verdict = SCHED_RETRY;
  bool any_temp = false;
  for (uint32_t i = 0; i < u->nrcpt; i++) {
    const struct smtpc_result *r = results ? &results[i] : all;
    if (r->outcome != SMTPC_OUT_OK && r->outcome != SMTPC_OUT_PERMANENT)
      any_temp = true;
  }
  /* adaptive delivery: each distinct reply of the attempt, once */
  for (uint32_t i = 0; i < u->nrcpt; i++) {
    const struct smtpc_result *r = results ? &results[i] : all;
    const struct smtpc_result *prev = i > 0 && results ? &results[i - 1] : NULL;
    if (r->code >= 400 && (prev == NULL || prev->code != r->code || strcmp(prev->text, r->text)))
      adaptive_queue_reply(w->sh, w->log, worker_view(w, dq_queue_binding(q), dq_queue_domain(q)),
                           dq_queue_binding(q), dq_queue_domain(q), dq_queue_state(q), r->code,
                           r->enhanced, r->text, now);
    if (!results)
      break;
  }
  if (any_temp)
    verdict = sched_after_tempfail(&pol, failures, em->sm->created_ms, now, &next_ms);

  struct uresult *res = util_xcalloc(1, sizeof *res + u->nrcpt * sizeof res->r[0]);
  res->em = em;
  res->n = u->nrcpt;
  uint32_t keep = 0;
  for (uint32_t i = 0; i < u->nrcpt; i++) {
    const struct smtpc_result *r = results ? &results[i] : all;
    struct rres *o = &res->r[i];
    /* Momentum's error text starts with the reply code: "550 5.1.1 ..." */
    char full[SMTPC_TEXT_MAX + 32];
    if (r->code >= 100 && r->code < 1000 && !(r->text[0] >= '0' && r->text[0] <= '9')) {
      /* "%d %s %s" without printf (every delivery comes here) */
      size_t k = 0, n;
      full[k++] = (char)('0' + r->code / 100);
      full[k++] = (char)('0' + r->code / 10 % 10);
      full[k++] = (char)('0' + r->code % 10);
      if (r->enhanced[0]) {
        full[k++] = ' ';
        n = strnlen(r->enhanced, sizeof r->enhanced);
        memcpy(full + k, r->enhanced, n);
        k += n;
      }
      full[k++] = ' ';
      n = strnlen(r->text, sizeof r->text); /* fits: full has 32 bytes more */
      memcpy(full + k, r->text, n);
      full[k + n] = '\0';
    } else if (r->code > 0 && !(r->text[0] >= '0' && r->text[0] <= '9'))
      snprintf(full, sizeof full, "%d%s%s %s", r->code, r->enhanced[0] ? " " : "", r->enhanced,
               r->text);
    else if (r->code == 0 && r->enhanced[0] && !(r->text[0] >= '0' && r->text[0] <= '9'))
      /* a local refusal with only an enhanced code (smtpc: SIZE 5.3.4,
       * SMTPUTF8 5.6.7): "554 5.6.7 ...", as a remote refusal reads */
      snprintf(full, sizeof full, "%s %s %s", r->enhanced[0] == '5' ? "554" : "451", r->enhanced,
               r->text);
    else
      delivery_copy(full, sizeof full, r->text);
    o->idx = u->rcpt[i];
    char msgid[64];
    struct logs_msg m;
    outcome_logs_msg(&m, msgid, sizeof msgid, em, u->rcpt[i]);
    struct logs_attempt a = {.conn_id = conn_id, .remote_ip = remote_ip, .retries = u->attempts,
                             .stage = r->stage, .bytes_sent = bytes, .text = full};
    struct luam_outcome lo = {.domain = dq_queue_domain(q), .binding = dq_queue_binding(q),
                              .remote_ip = remote_ip, .code = r->code, .text = full,
                              .retries = u->attempts};
    if (r->outcome == SMTPC_OUT_OK) {
      o->state = SPOOL_RCPT_DELIVERED;
      logs_delivery(w->log, now, &m, &a);
      policy_outcome(w->pw, LUAM_HOOK_LOG_DELIVERY, w->sh->spool, em->sm, &lo);
      atomic_fetch_add(&w->sh->delivered, 1);
      continue;
    }
    bool perm = r->outcome == SMTPC_OUT_PERMANENT;
    const char *text = full;
    char expired[RESULT_TEXT_MAX];
    if (!perm && verdict != SCHED_RETRY) {
      /* Momentum logs the remote reason as T, then the expiry as P. */
      logs_transient(w->log, now, &m, &a);
      perm = true;
      snprintf(expired, sizeof expired, "%s",
               verdict == SCHED_EXPIRED_TIME ? SCHED_EXPIRED_TIME_TEXT : SCHED_EXPIRED_RETRIES_TEXT);
      text = expired;
      a.text = text;
      a.stage = 21;
      o->code = 554;
      snprintf(o->enh, sizeof o->enh, "5.4.7");
    } else {
      o->code = r->code;
      delivery_copy(o->enh, sizeof o->enh, r->enhanced);
    }
    delivery_copy(o->text, sizeof o->text, text);
    if (perm) {
      o->state = SPOOL_RCPT_FAILED;
      a.bounce_class = logs_bounce_class(o->code, o->enh[0] ? o->enh : NULL);
      logs_permanent(w->log, now, &m, &a);
      logs_bounce(w->log, now, &m, &a);
      atomic_fetch_add(&w->sh->failed, 1);
      lo.code = o->code;
      lo.text = text;
      policy_outcome(w->pw, LUAM_HOOK_LOG_PERMANENT_FAILURE, w->sh->spool, em->sm, &lo);
    } else {
      o->state = SPOOL_RCPT_PENDING;
      logs_transient(w->log, now, &m, &a);
      policy_outcome(w->pw, LUAM_HOOK_LOG_TRANSIENT_FAILURE, w->sh->spool, em->sm, &lo);
      u->rcpt[keep++] = u->rcpt[i];
    }
  }
  if (keep > 0) {
    u->nrcpt = keep;
    u->attempts = failures;
    u->due_ms = next_ms;
    res->unit_done = false;
    res->attempts = failures;
    res->next_ms = u->due_ms;
    atomic_fetch_add(&w->sh->deferred, 1);
    handover_requeue(w, q, u); /* credentials resolved again for the retry */
  } else {
    res->unit_done = true;
    dq_unit_free(u);
  }
  for (uint32_t i = 0; i < res->n; i++) /* console and metrics counters (ctl.c) */
    counters_add(w->idx, dq_queue_binding(q), dq_queue_domain(q),
                 res->r[i].state == SPOOL_RCPT_DELIVERED ? COUNTERS_DELIVERED
                 : res->r[i].state == SPOOL_RCPT_FAILED  ? COUNTERS_PERMANENT
                                                         : COUNTERS_TRANSIENT, 1);
  post_result(w, res);
}


/* Expire units that came due past their message's expiry. */
bool outcome_expire_if_due(struct worker *w, struct dq_queue *q, struct dq_unit *u)
{
  struct emsg *em = u->msg;
  struct sched_retry pol = worker_retry_policy(w, q);
  uint64_t now = clock_wall_ms();
  if (!sched_expired(&pol, em->sm->created_ms, now) || u->attempts == 0)
    return false;
  struct smtpc_result all = {.outcome = SMTPC_OUT_PERMANENT, .code = 554, .stage = 21};
  snprintf(all.enhanced, sizeof all.enhanced, "5.4.7");
  delivery_copy(all.text, sizeof all.text, SCHED_EXPIRED_TIME_TEXT);
  outcome_finish(w, q, u, NULL, &all, NULL, NULL, 0);
  return true;
}


/* Fail a unit taken out of its queue (dq_remove) permanently, as the
 * administrator asked: logged P and B, bounced like any permanent failure. */
void worker_admin_fail(struct worker *w, struct dq_unit *u)
{
  struct smtpc_result all = {.outcome = SMTPC_OUT_PERMANENT, .code = 554, .stage = 0};
  delivery_copy(all.enhanced, sizeof all.enhanced, "5.0.0");
  delivery_copy(all.text, sizeof all.text, "554 5.0.0 [admin] failed by the administrator");
  outcome_finish(w, u->q, u, NULL, &all, "", NULL, 0);
}


