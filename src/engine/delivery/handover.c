/* handover.c: messages entering delivery. Owns the choice of a message's
 * binding (x-binding, x-binding-group, default; logged when a name is
 * unknown), its split into delivery units (per recipient domain, cut to
 * Max_Recipients_Per_Batch), the R records, each unit's post to the worker
 * owning its (binding, domain) queue, the credential resolution on
 * arrival and before each retry (auth.c), and the queueing of the unit.
 *
 * Must never: deliver, or decide an outcome; post a received message's
 * units before its R records are on their way (worker_submit_flush).
 * Threads: worker_submit_msg / worker_submit_flush on the spool's
 * hand-over thread; the unit posts run on the owning worker's loop. */
#include "delivery.h"

#include "auth.h"
#include "clock.h"
#include "conf.h"
#include "counters.h"
#include "logs.h"
#include "panic.h"
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A delivery unit on its way to its worker. The first unit of a message
 * also carries the message to its home worker (home), which lists it
 * there before the unit is queued: posted first, it is run before any
 * result of the message's other units can reach that ring. */
struct unit_post {
  struct ring_msg msg;
  struct worker *w;
  struct dq_unit *u;
  struct emsg *home;
  char binding[SPOOL_NAME_MAX + 1];
};

/* The unit's credentials are known: queue it with its identity. Unusable
 * ones fail a due attempt transiently (outcome_finish re-queues it with
 * back-off) and wait in their own queue, which the worker never serves
 * but hands back here when due (auth.h). */
static void unit_ready(void *arg, uint64_t cred)
{
  struct unit_post *p = arg;
  struct worker *w = p->w;
  struct dq_unit *u = p->u;
  struct emsg *em = u->msg;
  const char *dom = delivery_rcpt_domain(em->sm->rcpt[u->rcpt[0]]);
  static __thread bool failing; /* outcome_finish re-queues through here */
  if (cred == AUTH_CRED_UNUSABLE && !failing && u->due_ms <= clock_wall_ms()) {
    struct smtpc_result all = {.outcome = SMTPC_OUT_TRANSIENT};
    snprintf(all.text, sizeof all.text, "451 4.7.0 [internal] outbound_smtp_auth: %s", auth_error(w->auth));
    logs_panic(w->log, clock_wall_ms(), "outbound_smtp_auth", "message %s (binding %s, domain %s): %s; deferred",
               em->id, p->binding, dom, auth_error(w->auth));
    struct dq_queue *q = dq_queue(w->dq, p->binding, dom);
    free(p);
    failing = true;
    outcome_finish(w, q, u, NULL, &all, NULL, NULL, 0);
    failing = false;
    return;
  }
  struct dq_queue *q = dq_queue_cred(w->dq, p->binding, dom, cred);
  dq_push(w->dq, q, u, clock_wall_ms());
  free(p);
}

static void run_unit_post(struct ring_msg *m)
{
  struct unit_post *p = (struct unit_post *)(void *)m;
  struct worker *w = p->w;
  struct emsg *home = p->home;
  if (home) {
    dlist_push_front(&w->msgs, &home->link);
  }
  worker_refresh_conf(w);
  policy_worker_refresh(w->pw, w->conf);
  struct dq_unit *u = p->u;
  struct emsg *em = u->msg;
  uint64_t cred = 0;
  if (auth_resolve(w->auth, w->pw, w->conf, w->sh->spool, em->sm, p->binding,
                   delivery_rcpt_domain(em->sm->rcpt[u->rcpt[0]]), &cred, unit_ready, p) == 0)
    unit_ready(p, cred);
}

/* A deferred unit goes back to a queue: with outbound_smtp_auth on, its
 * credentials are resolved again (Lua hook, context, a reloaded
 * configuration), so a fixed password applies from the next retry. */
void handover_requeue(struct worker *w, struct dq_queue *q, struct dq_unit *u)
{
  if (!auth_enabled(w->auth, w->conf)) {
    dq_push(w->dq, q, u, clock_wall_ms());
    return;
  }
  struct unit_post *p = util_xcalloc(1, sizeof *p);
  p->w = w;
  p->u = u; /* p->home NULL: the message is listed here already */
  delivery_copy(p->binding, sizeof p->binding, dq_queue_binding(q));
  struct emsg *em = u->msg;
  uint64_t cred = 0;
  if (auth_resolve(w->auth, w->pw, w->conf, w->sh->spool, em->sm, p->binding,
                   delivery_rcpt_domain(em->sm->rcpt[u->rcpt[0]]), &cred, unit_ready, p) == 0)
    unit_ready(p, cred);
}

/* ------------------------------------------------------------ ingest side */

static int cmp_dom(const void *a, const void *b, void *arg)
{
  const struct spool_msg *sm = arg;
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  int c = strcasecmp(delivery_rcpt_domain(sm->rcpt[x]), delivery_rcpt_domain(sm->rcpt[y]));
  return c ? c : (x > y) - (x < y);
}

/* A post of a received message waits for worker_submit_flush (its R
 * record first); a recovered one (no R) goes at once. */
static void submit_post(struct engine_shared *sh, bool received, struct unit_post *p)
{
  p->msg.fn = run_unit_post;
  if (!received) {
    ring_post_msg(p->w->ring, &p->msg);
    return;
  }
  if (sh->npend == sh->cappend) {
    sh->cappend = sh->cappend ? 2 * sh->cappend : 1024;
    sh->pend = util_xrealloc(sh->pend, sh->cappend * sizeof *sh->pend);
  }
  sh->pend[sh->npend++] = p;
}

void worker_submit_msg(struct engine_shared *sh, struct spool_msg *sm, bool received)
{
  struct conf *c = conf_ref(atomic_load(&sh->conf));
  struct emsg *em = util_xcalloc(1, sizeof *em);
  em->sm = sm;
  sm->user = em;
  spool_msg_id_str(sm, em->id);
  em->attempts = sm->attempts;
  uint64_t now = clock_wall_ms();

  /* the binding: x-binding, else the first binding of x-binding-group,
   * else default; an unknown name is logged and mail goes to default */
  const char *binding = sm->binding;
  if (binding && conf_binding_id(c, binding) < 0) {
    logs_panic(sh->handover_log, now, "binding", "message %s: unknown binding \"%s\", using default",
               em->id, binding);
    binding = NULL;
  }
  if (binding == NULL && sm->binding_group) {
    for (size_t i = 0; i < conf_binding_count(c); i++) {
      const char *g = conf_binding_group(c, (int)i);
      if (g && !strcmp(g, sm->binding_group)) {
        binding = conf_binding_name(c, (int)i);
        break;
      }
    }
    if (binding == NULL)
      logs_panic(sh->handover_log, now, "binding",
                 "message %s: unknown binding group \"%s\", using default", em->id,
                 sm->binding_group);
  }
  if (binding == NULL)
    binding = "default";
  if (sm->binding == NULL || strcmp(sm->binding, binding))
    spool_msg_set_binding(sm, binding);
  /* the group is the binding's (none for default): what the logs say is
   * what was used, never an unknown name from the pickup file */
  const char *group = NULL;
  int bid = conf_binding_id(c, binding);
  if (bid >= 0)
    group = conf_binding_group(c, bid);
  if (group ? sm->binding_group == NULL || strcmp(sm->binding_group, group)
            : sm->binding_group != NULL)
    spool_msg_set_binding_group(sm, group);

  if (received) {
    for (uint32_t i = 0; i < sm->nrcpt; i++) {
      char msgid[64];
      struct logs_msg m;
      outcome_logs_msg(&m, msgid, sizeof msgid, em, i);
      logs_reception(sh->handover_log, sm->created_ms ? sm->created_ms : now, &m, NULL, "internal");
      counters_add(sh->nworkers, binding, delivery_rcpt_domain(sm->rcpt[i]), COUNTERS_RECEIVED, 1);
    }
    /* the R records go out with the batch (the spool's on_batch_end) */
  }

  /* pending recipients grouped by domain (on the stack for the usual few) */
  uint32_t idx_small[16];
  struct unit_post *posts_small[16];
  uint32_t *idx = sm->nrcpt <= 16 ? idx_small : util_xmalloc(sm->nrcpt * sizeof *idx);
  uint32_t n = 0;
  for (uint32_t i = 0; i < sm->nrcpt; i++)
    if (sm->rcpt_state[i] == SPOOL_RCPT_PENDING)
      idx[n++] = i;
  qsort_r(idx, n, sizeof *idx, cmp_dom, sm);

  struct unit_post **posts = n <= 16 ? posts_small : util_xmalloc(n * sizeof *posts);
  uint32_t nposts = 0;
  for (uint32_t i = 0; i < n;) {
    const char *dom = delivery_rcpt_domain(sm->rcpt[idx[i]]);
    uint32_t j = i;
    while (j < n && !strcasecmp(delivery_rcpt_domain(sm->rcpt[idx[j]]), dom))
      j++;
    const struct conf_view *v = conf_view_get(c, binding, dom);
    if (v == NULL)
      v = conf_view_get(c, NULL, dom);
    uint32_t batch = (uint32_t)conf_int(v, CONF_MAX_RECIPIENTS_PER_BATCH);
    if (batch == 0)
      batch = 100;
    unsigned owner = sched_owner(binding, dom, sh->nworkers);
    for (uint32_t k = i; k < j; k += batch) {
      uint32_t cnt = j - k < batch ? j - k : batch;
      struct dq_unit *u = dq_unit_new(cnt);
      memcpy(u->rcpt, idx + k, cnt * sizeof *idx);
      u->msg = em;
      u->attempts = sm->attempts;
      u->due_ms = sm->next_attempt_ms;
      struct unit_post *p = util_xmalloc(sizeof *p);
      p->w = sh->workers[owner];
      p->u = u;
      p->home = NULL;
      delivery_copy(p->binding, sizeof p->binding, binding);
      posts[nposts++] = p;
    }
    i = j;
  }
  if (idx != idx_small)
    free(idx);
  const struct conf_view *gv = conf_view_get(c, binding, NULL);
  em->bounces_on = sm->sender[0] != '\0' && gv && conf_bool(gv, CONF_GENERATE_BOUNCES);
  em->units_left = nposts;
  em->units = nposts;
  conf_unref(c);
  if (nposts == 0) {
    /* nothing pending (recovered with every recipient final) */
    struct spool_txn *t = spool_txn_new(sh->spool);
    spool_txn_remove(t, sm);
    spool_txn_commit(t);
    spool_txn_free(t);
    free(em);
    if (posts != posts_small)
      free(posts);
    return;
  }
  /* the first post lists the message on its home ring before any of its
   * results can arrive there */
  em->home = (unsigned)(posts[0]->w->idx);
  posts[0]->home = em;
  for (uint32_t i = 0; i < nposts; i++)
    submit_post(sh, received, posts[i]);
  if (posts != posts_small)
    free(posts);
}

void worker_submit_flush(struct engine_shared *sh)
{
  logs_writer_flush(sh->handover_log);
  for (size_t i = 0; i < sh->npend; i++)
    ring_post_msg(sh->pend[i]->w->ring, &sh->pend[i]->msg);
  sh->npend = 0;
}

void handover_drop_post(void *arg)
{
  struct unit_post *p = arg;
  dq_unit_free(p->u);
  free(p);
}
