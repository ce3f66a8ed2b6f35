/* policy.c owns the engine's Lua wiring: the loaded script set (a
 * reference-counted snapshot of the scriptlet stanza), the shared
 * datasource pool, one luam state per worker thread (non-blocking: a
 * datasource answer comes back through ring_post), a blocking state for
 * the ingest thread, the reload generation, and the private message views
 * that hooks run on.
 *
 * Must never: block a worker (worker states have a post callback, so a
 * datasource wait returns LUAM_PENDING); let a hook on a non-home worker
 * change a shared spool_msg (hooks there see a private copy); log a
 * context value.
 * Threads: see policy.h; the snapshot swap takes a mutex on the main
 * thread and, once per reload, on each worker. */
#include "policy.h"

#include "clock.h"
#include "conf.h"
#include "counters.h"
#include "ctx.h"
#include "logs.h"
#include "luam_conf.h"
#include "luam_ds.h"
#include "panic.h"
#include "ring.h"
#include "spool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLICY_DS_THREADS 2u /* datasource pool threads */

/* One loaded script set. */
struct snap {
  struct luam_conf lc;
  unsigned refs; /* under policy.mu */
};

/* The engine's side of one luam state (its luam_host.arg): where its log
 * lines go, its counters slot, its configuration view, and the worker
 * ring that datasource answers are posted to (NULL: the ingest thread's
 * blocking state). */
struct lua_side {
  struct logs_writer *log;
  struct luam_conf_eval *eval;
  unsigned slot; /* counters slot */
  struct ring *ring;
  void (*post)(void *, void (*)(void *), void *); /* instead of ring (policy_thread_new) */
  void *post_arg;
};

struct policy {
  pthread_mutex_t mu;
  struct snap *cur;
  _Atomic uint64_t gen;
  struct luam_ds *ds;
  /* the ingest thread's blocking state (created there on first use) */
  struct lua_side ingest;
  struct luam *ingest_lm;
  uint64_t ingest_gen;
  struct conf *ingest_conf; /* referenced */
  _Atomic(struct conf *) *live_conf;
};

struct policy_worker {
  struct policy *p;
  struct lua_side side;
  struct luam *lm;
  uint64_t gen;
};

_Static_assert(LUAM_HOOK_COUNT <= COUNTERS_LUA_HOOKS && LUAM_EV_COUNT <= COUNTERS_LUA_EVENTS,
               "counters.h must have room for every Lua hook and event");

static void snap_unref(struct policy *p, struct snap *s)
{
  if (s == NULL)
    return;
  pthread_mutex_lock(&p->mu);
  bool last = --s->refs == 0;
  pthread_mutex_unlock(&p->mu);
  if (last) {
    luam_conf_done(&s->lc);
    free(s);
  }
}

static struct snap *snap_get(struct policy *p, uint64_t *gen)
{
  pthread_mutex_lock(&p->mu);
  struct snap *s = p->cur;
  s->refs++;
  *gen = atomic_load(&p->gen);
  pthread_mutex_unlock(&p->mu);
  return s;
}

static struct snap *snap_load(struct conf *c, char *err, size_t errlen)
{
  struct snap *s = util_xcalloc(1, sizeof *s);
  if (luam_conf_load(&s->lc, c, NULL, err, errlen) < 0) {
    free(s);
    return NULL;
  }
  s->refs = 1;
  return s;
}

/* ------------------------------------------------------------ host */

static void h_log(void *arg, int level, const char *script, const char *text)
{
  struct lua_side *s = arg;
  static const char *lv[] = {"error", "warning", "notice", "debug"};
  logs_panic(s->log, clock_wall_ms(), "lua", "[%s] %s: %s", script ? script : "-",
             lv[level >= 0 && level < 4 ? level : 3], text);
}

static void h_count(void *arg, enum luam_hook hook, enum luam_event ev)
{
  struct lua_side *s = arg;
  counters_lua(s->slot, (unsigned)hook, (unsigned)ev);
}

static const char *h_eval(void *arg, const char *bgroup, const char *binding, const char *domain,
                          const char *option)
{
  struct lua_side *s = arg;
  return luam_conf_eval(s->eval, bgroup, binding, domain, option);
}

static void h_post(void *arg, void (*fn)(void *), void *fn_arg)
{
  struct lua_side *s = arg;
  if (s->post) {
    s->post(s->post_arg, fn, fn_arg);
    return;
  }
  if (ring_post(s->ring, fn, fn_arg) < 0)
    util_panic("policy: cannot post a datasource answer to the worker");
}

/* ------------------------------------------------------------ policy */

struct policy *policy_new(struct conf *c, _Atomic(struct conf *) *live_conf,
                          struct logs_writer *ingest_log, unsigned ingest_slot, char *err,
                          size_t errlen)
{
  struct snap *s = snap_load(c, err, errlen);
  if (s == NULL)
    return NULL;
  struct policy *p = util_xcalloc(1, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  p->cur = s;
  atomic_store(&p->gen, 1);
  p->ingest.log = ingest_log;
  p->ingest.slot = ingest_slot;
  p->live_conf = live_conf;
  if (s->lc.opts.nscripts > 0 || s->lc.nds > 0) {
    p->ds = luam_ds_new(s->lc.ds, s->lc.nds, POLICY_DS_THREADS, err, errlen);
    if (p->ds == NULL) {
      policy_free(p);
      return NULL;
    }
  }
  s->lc.opts.ds = p->ds; /* set once: snapshots are read-only after */
  if (s->lc.opts.nscripts > 0) {
    if (luam_check(&s->lc.opts, err, errlen) < 0) {
      policy_free(p);
      return NULL;
    }
  }
  return p;
}

int policy_check(struct conf *c, char *err, size_t errlen)
{
  struct luam_conf lc;
  if (luam_conf_load(&lc, c, NULL, err, errlen) < 0)
    return -EINVAL;
  int r = luam_ds_check(lc.ds, lc.nds, err, errlen);
  struct luam_ds *ds = NULL; /* as policy_new: a script's top level may query */
  if (r == 0 && lc.opts.nscripts > 0 && lc.nds > 0 &&
      (ds = luam_ds_new(lc.ds, lc.nds, 1, err, errlen)) == NULL)
    r = -EINVAL;
  lc.opts.ds = ds;
  if (r == 0 && lc.opts.nscripts > 0)
    r = luam_check(&lc.opts, err, errlen);
  luam_ds_free(ds);
  luam_conf_done(&lc);
  return r < 0 ? -EINVAL : 0;
}

int policy_reload(struct policy *p, struct conf *c, char *err, size_t errlen)
{
  struct snap *s = snap_load(c, err, errlen);
  if (s == NULL)
    return -EINVAL;
  s->lc.opts.ds = p->ds;
  if (s->lc.opts.nscripts > 0 && luam_check(&s->lc.opts, err, errlen) < 0) {
    snap_unref(p, s);
    return -EINVAL;
  }
  pthread_mutex_lock(&p->mu);
  struct snap *old = p->cur;
  p->cur = s;
  atomic_fetch_add(&p->gen, 1);
  pthread_mutex_unlock(&p->mu);
  snap_unref(p, old);
  return 0;
}

void policy_free(struct policy *p)
{
  if (p == NULL)
    return;
  luam_free(p->ingest_lm);
  luam_conf_eval_free(p->ingest.eval);
  conf_unref(p->ingest_conf);
  luam_ds_free(p->ds);
  snap_unref(p, p->cur);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

bool policy_has_scripts(const struct policy *p)
{
  return p && p->cur && p->cur->lc.opts.nscripts > 0;
}

/* Create or reload a state from the current snapshot. */
static void state_sync(struct policy *p, struct luam **lm, uint64_t *gen, const struct luam_host *h)
{
  uint64_t g;
  struct snap *s = snap_get(p, &g);
  char err[512];
  if (*lm == NULL) {
    if (s->lc.opts.nscripts > 0) {
      *lm = luam_new(&s->lc.opts, h, err, sizeof err);
      if (*lm == NULL)
        h->log(h->arg, 0, NULL, err);
    }
  } else if (luam_reload(*lm, &s->lc.opts, err, sizeof err) < 0) {
    h->log(h->arg, 0, NULL, err);
  }
  *gen = g;
  snap_unref(p, s);
}

/* ------------------------------------------------------------ workers */

struct policy_worker *policy_thread_new(struct policy *p,
                                        void (*post)(void *, void (*)(void *), void *),
                                        void *post_arg, struct logs_writer *log, struct conf *c,
                                        unsigned slot)
{
  struct policy_worker *pw = util_xcalloc(1, sizeof *pw);
  pw->p = p;
  pw->side.slot = slot;
  pw->side.post = post;
  pw->side.post_arg = post_arg;
  pw->side.log = log;
  if (p) {
    pw->side.eval = luam_conf_eval_new(c);
    struct luam_host h = {.arg = &pw->side, .log = h_log, .eval = h_eval, .post = h_post,
                         .count = h_count};
    state_sync(p, &pw->lm, &pw->gen, &h);
  }
  return pw;
}

struct policy_worker *policy_worker_new(struct policy *p, struct ring *ring,
                                        struct logs_writer *log, struct conf *c, unsigned slot)
{
  struct policy_worker *pw = policy_thread_new(p, NULL, NULL, log, c, slot);
  pw->side.ring = ring; /* answers come later, through h_post */
  return pw;
}

void policy_worker_free(struct policy_worker *pw)
{
  if (pw == NULL)
    return;
  luam_free(pw->lm);
  luam_conf_eval_free(pw->side.eval);
  free(pw);
}

void policy_worker_refresh(struct policy_worker *pw, struct conf *c)
{
  if (pw->p == NULL || atomic_load_explicit(&pw->p->gen, memory_order_relaxed) == pw->gen)
    return;
  luam_conf_eval_set(pw->side.eval, c);
  struct luam_host h = {.arg = &pw->side, .log = h_log, .eval = h_eval, .post = h_post,
                         .count = h_count};
  state_sync(pw->p, &pw->lm, &pw->gen, &h);
}

struct luam *policy_worker_luam(struct policy_worker *pw)
{
  return pw ? pw->lm : NULL;
}

/* ------------------------------------------------------------ messages */

static struct ctx *ctx_copy(const struct ctx *src)
{
  struct ctx *d = ctx_new();
  if (d == NULL)
    util_panic("policy: out of memory");
  struct ctx_iter it = {0};
  const char *k, *v;
  size_t kl, vl;
  unsigned fl;
  while (ctx_nextn(src, &it, &k, &kl, &v, &vl, &fl))
    ctx_setn(d, k, kl, v, vl, fl);
  return d;
}

int policy_msg_open(struct policy_msg *pm, struct spool *sp, const struct spool_msg *sm,
                    struct conf *c)
{
  memset(pm, 0, sizeof *pm);
  pm->m = *sm;
  pm->m.mess = pm->m.conn = pm->m.secrets = NULL;
  int rc = 0;
  if (sm->mess && sm->conn) {
    pm->m.mess = ctx_copy(sm->mess);
    pm->m.conn = ctx_copy(sm->conn);
  } else {
    /* the dictionaries were dropped: read them back (spool_load_ctx
     * replaces the strings it loads; ours are borrowed from sm) */
    pm->m.binding = pm->m.binding_group = NULL;
    if (sm->secrets)
      pm->m.secrets = ctx_copy(sm->secrets);
    rc = spool_load_ctx(sp, &pm->m);
    free((void *)(uintptr_t)pm->m.binding);
    free((void *)(uintptr_t)pm->m.binding_group);
    pm->m.binding = sm->binding;
    pm->m.binding_group = sm->binding_group;
    ctx_free(pm->m.secrets);
    pm->m.secrets = NULL;
    if (pm->m.mess == NULL)
      pm->m.mess = ctx_new();
    if (pm->m.conn == NULL)
      pm->m.conn = ctx_new();
  }
  pm->h.sp = NULL; /* the copy is complete: never reload into it */
  pm->h.msg = &pm->m;
  pm->h.conf = c;
  return rc;
}

void policy_msg_close(struct policy_msg *pm)
{
  luam_spool_msg_done(&pm->h);
  ctx_free(pm->m.mess);
  ctx_free(pm->m.conn);
  pm->m.mess = pm->m.conn = NULL;
}

static struct luam_msg_ops ops_ro;
static pthread_once_t ops_once = PTHREAD_ONCE_INIT;

static void ops_init(void)
{
  ops_ro = luam_spool_ops;
  ops_ro.set_binding = NULL;
  ops_ro.set_binding_group = NULL;
}

const struct luam_msg_ops *policy_msg_ops(void)
{
  pthread_once(&ops_once, ops_init);
  return &ops_ro;
}

/* ------------------------------------------------------------ outcomes */

/* An outcome hook may wait for a datasource while the home worker
 * finishes and frees the message: it gets its own copy of the envelope. */
struct outcome_call {
  struct policy_msg pm;
  char *strings; /* sender, binding, group, recipients: one block */
  const char **rcpt;
};

static void outcome_done(void *arg, int result)
{
  (void)result;
  struct outcome_call *oc = arg;
  policy_msg_close(&oc->pm);
  free(oc->strings);
  free(oc->rcpt);
  free(oc);
}

static void own_envelope(struct outcome_call *oc, const struct spool_msg *sm)
{
  size_t n = strlen(sm->sender) + 1;
  n += sm->binding ? strlen(sm->binding) + 1 : 0;
  n += sm->binding_group ? strlen(sm->binding_group) + 1 : 0;
  for (uint32_t i = 0; i < sm->nrcpt; i++)
    n += strlen(sm->rcpt[i]) + 1;
  char *p = oc->strings = util_xmalloc(n);
  oc->rcpt = util_xcalloc(sm->nrcpt ? sm->nrcpt : 1, sizeof *oc->rcpt);
#define OWN(dst, src)                 \
  do {                                \
    size_t l_ = strlen(src) + 1;      \
    memcpy(p, (src), l_);             \
    (dst) = p;                        \
    p += l_;                          \
  } while (0)
  OWN(oc->pm.m.sender, sm->sender);
  if (sm->binding)
    OWN(oc->pm.m.binding, sm->binding);
  if (sm->binding_group)
    OWN(oc->pm.m.binding_group, sm->binding_group);
  for (uint32_t i = 0; i < sm->nrcpt; i++)
    OWN(oc->rcpt[i], sm->rcpt[i]);
#undef OWN
  oc->pm.m.rcpt = oc->rcpt;
  oc->pm.m.rcpt_state = NULL;
}

void policy_outcome(struct policy_worker *pw, enum luam_hook hook, struct spool *sp,
                    const struct spool_msg *sm, const struct luam_outcome *o)
{
  if (pw == NULL || pw->lm == NULL || !luam_has_hook(pw->lm, hook))
    return;
  struct outcome_call *oc = util_xcalloc(1, sizeof *oc);
  policy_msg_open(&oc->pm, sp, sm, NULL);
  own_envelope(oc, sm);
  struct luam_call call = {.msg = &oc->pm.h, .ops = policy_msg_ops(), .domain = o->domain,
                           .rcpt = -1, .outcome = o, .done = outcome_done, .done_arg = oc};
  if (luam_call(pw->lm, hook, &call) != LUAM_PENDING)
    outcome_done(oc, 0);
}

/* ------------------------------------------------------------ ingest */

/* Take up a new snapshot and reloaded scripts for the ingest state. */
static struct luam *ingest_state(struct policy *p)
{
  struct conf *c = atomic_load(p->live_conf);
  if (c != p->ingest_conf) {
    struct conf *nc = conf_ref(c);
    if (p->ingest.eval == NULL)
      p->ingest.eval = luam_conf_eval_new(nc);
    else
      luam_conf_eval_set(p->ingest.eval, nc);
    conf_unref(p->ingest_conf);
    p->ingest_conf = nc;
  }
  if (p->ingest_gen != atomic_load(&p->gen)) {
    struct luam_host h = {.arg = &p->ingest, .log = h_log, .eval = h_eval, .post = NULL,
                         .count = h_count};
    state_sync(p, &p->ingest_lm, &p->ingest_gen, &h);
  }
  return p->ingest_lm;
}

int policy_recovered(struct policy *p, struct spool *sp, struct spool_msg *msg)
{
  if (p == NULL)
    return 0;
  struct luam *lm = ingest_state(p);
  if (lm == NULL || !luam_has_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING))
    return 0;
  /* load first: a later load (by spool_save_ctx) would reset the binding */
  int rc = spool_load_ctx(sp, msg);
  if (rc < 0)
    return rc;
  char *old = msg->binding ? util_xstrdup(msg->binding) : NULL;
  struct luam_spool_msg h = {.sp = sp, .msg = msg, .conf = p->ingest_conf};
  struct luam_call call = {.msg = &h, .ops = &luam_spool_ops, .rcpt = -1};
  luam_call(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &call);
  luam_spool_msg_done(&h);
  logs_writer_flush(p->ingest.log);
  bool changed = (old == NULL) != (msg->binding == NULL) ||
                 (old && msg->binding && strcmp(old, msg->binding));
  free(old);
  if (changed)
    rc = spool_save_ctx(sp, msg);
  spool_drop_ctx(sp, msg);
  return rc;
}

int policy_ingest(void *arg, struct spool_msg *msg, char *reason, size_t reason_len)
{
  struct policy *p = arg;
  if (p == NULL)
    return 0;
  struct luam *lm = ingest_state(p);
  if (lm == NULL)
    return 0;
  bool sb = luam_has_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING);
  bool ds = luam_has_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL);
  bool er = luam_has_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL_EACH_RCPT);
  if (!sb && !ds && !er)
    return 0;
  if (msg->mess == NULL)
    msg->mess = ctx_new();
  if (msg->conn == NULL)
    msg->conn = ctx_new();
  struct luam_spool_msg h = {.sp = NULL, .msg = msg, .conf = p->ingest_conf};
  struct luam_call call = {.msg = &h, .ops = &luam_spool_ops, .rcpt = -1};
  if (sb)
    luam_call(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &call);
  if (ds && h.code < 400 && luam_call(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &call) == LUAM_DONE)
    er = false;
  for (uint32_t i = 0; er && h.code < 400 && i < msg->nrcpt; i++) {
    call.rcpt = (long)i;
    if (luam_call(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL_EACH_RCPT, &call) == LUAM_DONE)
      break;
  }
  luam_spool_msg_done(&h);
  /* what the hooks logged leaves now (a no-op when nothing was): this
   * writer is the ingest thread's, the batch-end flush is another's */
  logs_writer_flush(p->ingest.log);
  if (h.code >= 400) {
    snprintf(reason, reason_len, "rejected by policy: %d %s", h.code, h.text);
    return -EPERM;
  }
  return 0;
}
