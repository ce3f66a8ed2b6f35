/* luam.c owns a luam's life (new, reload, free, statistics), the blocking
 * mode's mailbox and the hook calls: a coroutine per call, resumed until
 * it returns or waits on a query. The states are in luam_state.c, the msg
 * object in luam_msg.c, boot.lua's C half in luam_boot.c, msys.db in
 * luam_db.c.
 * It must never block (datasource queries go to luam_ds's pool), never
 * let a script error or runaway reach its caller, and never hand a script
 * an engine pointer (strings are copied; a msg userdata is invalidated
 * when its call ends). Every function except luam_check and
 * luam_resolve_source runs on the thread that created the state. */
#include "luam_int.h"
#include "luam_ds.h"

#include "clock.h"
#include "dlist.h"
#include "fifo.h"
#include "paths.h"

#include <errno.h>
#include <pthread.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const hook_names[LUAM_HOOK_COUNT] = {
  [LUAM_HOOK_VALIDATE_DATA_SPOOL] = "validate_data_spool",
  [LUAM_HOOK_VALIDATE_DATA_SPOOL_EACH_RCPT] = "validate_data_spool_each_rcpt",
  [LUAM_HOOK_VALIDATE_SET_BINDING] = "validate_set_binding",
  [LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG] = "outbound_smtp_auth_config",
  [LUAM_HOOK_LOG_DELIVERY] = "core_log_delivery_v1",
  [LUAM_HOOK_LOG_TRANSIENT_FAILURE] = "core_log_transient_failure_v1",
  [LUAM_HOOK_LOG_PERMANENT_FAILURE] = "core_log_permanent_failure_v1",
  [LUAM_HOOK_VALIDATE_CONNECT] = "validate_connect",
  [LUAM_HOOK_VALIDATE_EHLO] = "validate_ehlo",
  [LUAM_HOOK_VALIDATE_MAILFROM] = "validate_mailfrom",
  [LUAM_HOOK_VALIDATE_RCPTTO] = "validate_rcptto",
  [LUAM_HOOK_AC_AUTH_PERFORM_AUTH] = "ac_auth_perform_auth",
};

/* Blocking mode (host->post == NULL): answers come back here and
 * luam_call waits for them. For threads that may block (ingest). */
struct mailbox_item {
  struct mailbox_item *next;
  void (*fn)(void *);
  void *arg;
};
struct mailbox {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct mailbox_item *head, *tail;
};

/* ------------------------------------------------------------------ */
/* options */

static void apply_opts(struct luam *lm, const struct luam_opts *o)
{
  free(lm->libdir);
  lm->libdir = util_xstrdup(o->libdir ? o->libdir : paths_lua_dir());
  free(lm->boot_chunk);
  size_t bl = strlen(lm->libdir) + sizeof "@/impetus/boot.lua";
  lm->boot_chunk = util_xmalloc(bl);
  snprintf(lm->boot_chunk, bl, "@%s/impetus/boot.lua", lm->libdir);
  lm->max_instr = o->max_instructions ? o->max_instructions : LUAM_DEFAULT_MAX_INSTRUCTIONS;
  lm->max_time_ms = o->max_time_ms ? o->max_time_ms : LUAM_DEFAULT_MAX_TIME_MS;
  lm->max_mem = o->max_memory ? o->max_memory : LUAM_DEFAULT_MAX_MEMORY;
  lm->jit = o->jit;
  lm->full_lua = o->full_lua;
  lm->ds = o->ds;
}

int luam_resolve_source(const char *source, const char *conf_dir, const char *libdir,
                        char *out, size_t outlen)
{
  const char *dirs[2] = {conf_dir, libdir ? libdir : paths_lua_dir()};
  char dotted[1024];
  if (strlen(source) >= sizeof dotted)
    return -ENAMETOOLONG;
  /* Momentum also accepts "msys.boot" style names: try '.' as '/'. */
  snprintf(dotted, sizeof dotted, "%s", source);
  for (char *p = dotted; *p; p++)
    if (*p == '.')
      *p = '/';
  const char *names[2] = {source, dotted};
  for (int n = 0; n < 2; n++) {
    if (names[n][0] == '/') {
      if ((size_t)snprintf(out, outlen, "%s.lua", names[n]) >= outlen)
        return -ENAMETOOLONG;
      if (access(out, R_OK) == 0)
        return 0;
      continue;
    }
    for (int d = 0; d < 2; d++) {
      if (!dirs[d])
        continue;
      if ((size_t)snprintf(out, outlen, "%s/%s.lua", dirs[d], names[n]) >= outlen)
        return -ENAMETOOLONG;
      if (access(out, R_OK) == 0)
        return 0;
    }
  }
  return -ENOENT;
}

static void mbox_post(void *arg, void (*fn)(void *), void *fn_arg)
{
  struct mailbox *mb = arg;
  struct mailbox_item *it = util_xmalloc(sizeof *it);
  it->fn = fn;
  it->arg = fn_arg;
  pthread_mutex_lock(&mb->mu);
  FIFO_PUSH(mb->head, mb->tail, it);
  pthread_cond_signal(&mb->cv);
  pthread_mutex_unlock(&mb->mu);
}

/* Wait for one posted answer and run it (blocking mode). */
static void mbox_run_one(struct mailbox *mb)
{
  pthread_mutex_lock(&mb->mu);
  while (!mb->head)
    pthread_cond_wait(&mb->cv, &mb->mu);
  struct mailbox_item *it;
  FIFO_POP(mb->head, mb->tail, it);
  pthread_mutex_unlock(&mb->mu);
  it->fn(it->arg);
  free(it);
}

static void mbox_free(struct mailbox *mb)
{
  if (!mb)
    return;
  /* Answers still arriving are for orphaned jobs: run them (they free). */
  while (mb->head) {
    struct mailbox_item *it = mb->head;
    mb->head = it->next;
    it->fn(it->arg);
    free(it);
  }
  pthread_mutex_destroy(&mb->mu);
  pthread_cond_destroy(&mb->cv);
  free(mb);
}

int luam_check(const struct luam_opts *opts, char *err, size_t errlen)
{
  struct luam *lm = luam_new(opts, NULL, err, errlen);
  if (!lm)
    return -EINVAL;
  luam_free(lm);
  return 0;
}

struct luam *luam_new(const struct luam_opts *opts, const struct luam_host *host, char *err,
                      size_t errlen)
{
  struct luam *lm = util_xcalloc(1, sizeof *lm);
  if (host)
    lm->host = *host;
  if (lm->host.post) {
    lm->post = lm->host.post;
    lm->post_arg = lm->host.arg;
  } else {
    lm->mbox = util_xcalloc(1, sizeof *lm->mbox);
    pthread_mutex_init(&lm->mbox->mu, NULL);
    pthread_cond_init(&lm->mbox->cv, NULL);
    lm->post = mbox_post;
    lm->post_arg = lm->mbox;
  }
  apply_opts(lm, opts);
  if (luam_scripts_load(opts, &lm->scripts, err, errlen) < 0) {
    free(lm->libdir);
    free(lm->boot_chunk);
    mbox_free(lm->mbox);
    free(lm);
    return NULL;
  }
  lm->nscripts = opts->nscripts;
  lm->cur = luam_state_new(lm, err, errlen);
  if (!lm->cur) {
    luam_scripts_free(lm->scripts, lm->nscripts);
    free(lm->libdir);
    free(lm->boot_chunk);
    mbox_free(lm->mbox);
    free(lm);
    return NULL;
  }
  return lm;
}

static void call_free(struct luam *lm, struct lcall *c)
{
  if (c->ud)
    c->ud->call = NULL;
  if (c->prev)
    c->prev->next = c->next;
  else if (lm->pending == c)
    lm->pending = c->next;
  if (c->next)
    c->next->prev = c->prev;
  struct lstate *ls = c->ls;
  if (c->reusable && ls->nidle < LUAM_IDLE_COROUTINES) {
    lua_settop(c->co, 0);
    ls->idle_co[ls->nidle] = c->co;
    ls->idle_ref[ls->nidle++] = c->co_ref;
  } else {
    luaL_unref(ls->L, LUA_REGISTRYINDEX, c->co_ref);
  }
  free(c->domain);
  free(c);
}

void luam_free(struct luam *lm)
{
  if (!lm)
    return;
  while (lm->pending) {
    struct lcall *c = lm->pending;
    DLIST_UNLINK_HEAD(&lm->pending, c);
    c->prev = c->next = NULL;
    if (c->job)
      luam_ds_orphan(lm->ds, c->job);
    c->job = NULL;
    c->ls->npending--;
    call_free(lm, c);
  }
  while (lm->retired) {
    struct lstate *ls = lm->retired;
    lm->retired = ls->next_retired;
    luam_state_free(ls);
  }
  luam_state_free(lm->cur);
  luam_scripts_free(lm->scripts, lm->nscripts);
  free(lm->libdir);
  free(lm->boot_chunk);
  /* Orphaned jobs may still be posted here by the pool until luam_ds_free;
   * in blocking mode the mailbox goes with the state only when it is
   * empty and no job can reach it (all were orphaned above and the pool
   * frees orphans instead of posting them, except those already posted). */
  mbox_free(lm->mbox);
  free(lm);
}

int luam_reload(struct luam *lm, const struct luam_opts *opts, char *err, size_t errlen)
{
  struct luam tmp = *lm; /* options and scripts of the candidate */
  tmp.libdir = NULL;
  tmp.boot_chunk = NULL;
  apply_opts(&tmp, opts);
  if (luam_scripts_load(opts, &tmp.scripts, err, errlen) < 0) {
    free(tmp.libdir);
    free(tmp.boot_chunk);
    return -EINVAL;
  }
  tmp.nscripts = opts->nscripts;
  struct lstate *fresh = luam_state_new(&tmp, err, errlen);
  if (!fresh) {
    luam_scripts_free(tmp.scripts, tmp.nscripts);
    free(tmp.libdir);
    free(tmp.boot_chunk);
    return -EINVAL;
  }
  /* Success: adopt the candidate's settings and scripts. Retired states
   * keep working because print/report find scripts through lm. */
  fresh->lm = lm;
  luam_scripts_free(lm->scripts, lm->nscripts);
  free(lm->libdir);
  free(lm->boot_chunk);
  lm->boot_chunk = tmp.boot_chunk;
  lm->scripts = tmp.scripts;
  lm->nscripts = tmp.nscripts;
  lm->libdir = tmp.libdir;
  lm->max_instr = tmp.max_instr;
  lm->max_time_ms = tmp.max_time_ms;
  lm->max_mem = tmp.max_mem;
  lm->jit = tmp.jit;
  lm->full_lua = tmp.full_lua;
  lm->ds = tmp.ds;
  struct lstate *old = lm->cur;
  lm->cur = fresh;
  luam_state_retire(lm, old);
  return 0;
}

bool luam_has_hook(const struct luam *lm, enum luam_hook hook)
{
  return lm && lm->cur && (lm->cur->hookmask & (1u << hook));
}

const char *luam_hook_name(enum luam_hook hook)
{
  return (unsigned)hook < LUAM_HOOK_COUNT ? hook_names[hook] : "?";
}

const char *luam_event_name(enum luam_event ev)
{
  static const char *const names[LUAM_EV_COUNT] = {
    [LUAM_EV_CALL] = "call", [LUAM_EV_ERROR] = "error", [LUAM_EV_BUDGET] = "budget",
    [LUAM_EV_MEMORY] = "memory"};
  return (unsigned)ev < LUAM_EV_COUNT ? names[ev] : "?";
}

unsigned luam_pending(const struct luam *lm)
{
  return lm->npending;
}

void luam_get_stats(const struct luam *lm, struct luam_stats *st)
{
  *st = lm->stats;
  st->memory = luam_state_mem(lm->cur);
}

/* ------------------------------------------------------------------ */
/* calls */

/* Resume c's coroutine with nargs values on its stack. Returns LUAM_CONT,
 * LUAM_DONE, or LUAM_PENDING (a query was submitted). On a final answer
 * the call is freed. */
int luam_call_resume(struct luam *lm, struct lcall *c, int nargs)
{
  struct lstate *ls = c->ls;
  uint64_t t0 = clock_mono_ns();
  lm->running = c;
  luam_run_begin(ls, t0, c->run_ns, c->instr);
  int rc = lua_resume(c->co, nargs);
  c->instr = ls->instr;
  luam_run_end(ls);
  lm->running = NULL;
  int result = LUAM_CONT;
  if (rc == LUA_YIELD) {
    c->run_ns += clock_mono_ns() - t0; /* only a resumed call needs it */
    if (c->job) {
      struct luam_job *job = c->job;
      job->post = lm->post;
      job->post_arg = lm->post_arg;
      job->complete = luam_db_complete;
      job->owner = lm;
      job->call_id = c->id;
      lm->stats.yields++;
      lua_settop(c->co, 0);
      luam_ds_submit(lm->ds, job);
      return LUAM_PENDING;
    }
    luam_note_failure(lm, ls, c->hook);
    char pos[200] = "?";
    const char *script = luam_stack_script(c->co, ls, pos, sizeof pos);
    luam_log(lm, 0, script, "%s: %s: a hook yielded outside msys.db; skipped (CONT)",
             hook_names[c->hook], pos);
    result = c->report_errors ? LUAM_ERROR : LUAM_CONT;
  } else if (rc == 0) {
    c->reusable = 1;
    if (lua_gettop(c->co) >= 1) {
      lua_Integer r = lua_tointeger(c->co, -1); /* the dispatcher's: CONT, DONE or 3 (error) */
      result = r == LUAM_DONE ? LUAM_DONE
               : r == LUAM_ERROR && c->report_errors ? LUAM_ERROR : LUAM_CONT;
    }
  } else {
    result = c->report_errors ? LUAM_ERROR : LUAM_CONT;
    /* An error escaped the dispatcher itself (budget or memory while it
     * was between modules). */
    luam_note_failure(lm, ls, c->hook);
    const char *m = lua_tostring(c->co, -1);
    char pos[200] = "";
    const char *script = luam_stack_script(c->co, ls, pos, sizeof pos);
    luam_log(lm, 0, script, "%s: %s%s%s%s; skipped (CONT)", hook_names[c->hook], m ? m : "error",
             ls->oom ? " (memory limit)" : "", pos[0] ? " near " : "", pos);
  }
  if (ls->aborting)
    lm->stats.aborted++;
  if (c->job) { /* yielded elsewhere after submitting: drop the job */
    luam_job_free(c->job);
    c->job = NULL;
  }
  return result;
}

/* Finish c: invalidate its msg, release its coroutine, recreate or reap
 * the state when needed. */
void luam_call_finish(struct luam *lm, struct lcall *c, int was_pending)
{
  struct lstate *ls = c->ls;
  if (was_pending) {
    lm->npending--;
    ls->npending--;
  }
  call_free(lm, c);
  if (ls->oom && ls == lm->cur)
    luam_state_recreate(lm);
  else
    luam_state_reap(lm, ls);
}

static void push_outcome(lua_State *co, const struct luam_outcome *o)
{
  lua_newtable(co);
  if (!o)
    return;
  if (o->domain) { lua_pushstring(co, o->domain); lua_setfield(co, -2, "domain"); }
  if (o->binding) { lua_pushstring(co, o->binding); lua_setfield(co, -2, "binding"); }
  if (o->remote_ip) { lua_pushstring(co, o->remote_ip); lua_setfield(co, -2, "remote_ip"); }
  if (o->text) { lua_pushstring(co, o->text); lua_setfield(co, -2, "response"); }
  lua_pushinteger(co, o->code);
  lua_setfield(co, -2, "code");
  lua_pushinteger(co, (lua_Integer)o->retries);
  lua_setfield(co, -2, "retries");
}

struct sync_rec {
  int done, result;
};

static void sync_done(void *arg, int result)
{
  struct sync_rec *r = arg;
  r->done = 1;
  r->result = result;
}

int luam_call(struct luam *lm, enum luam_hook hook, const struct luam_call *call)
{
  if (!luam_has_hook(lm, hook))
    return LUAM_CONT;
  if (lm->running) /* a hook calling back into the engine calling a hook */
    return LUAM_CONT;
  struct lstate *ls = lm->cur;
  lua_State *L = ls->L;
  lm->stats.calls++;
  if (lm->host.count)
    lm->host.count(lm->host.arg, hook, LUAM_EV_CALL);
  struct lcall *c = util_xcalloc(1, sizeof *c);
  c->ls = ls;
  c->id = ++lm->next_id;
  c->hook = hook;
  c->msg = call->msg;
  c->ops = call->ops;
  c->domain = call->domain ? util_xstrdup(call->domain) : NULL;
  c->rcpt = hook == LUAM_HOOK_VALIDATE_DATA_SPOOL_EACH_RCPT ? call->rcpt : -1;
  c->done = call->done;
  c->done_arg = call->done_arg;
  c->report_errors = call->report_errors;

  if (ls->nidle > 0) {
    ls->nidle--;
    c->co = ls->idle_co[ls->nidle];
    c->co_ref = ls->idle_ref[ls->nidle];
  } else {
    c->co = lua_newthread(L);
    c->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_State *co = c->co;
  lua_rawgeti(co, LUA_REGISTRYINDEX, ls->dispatch_ref);
  lua_pushstring(co, hook_names[hook]);
  /* A fresh msg object per call: an old one must stay invalid. It lives on
   * the coroutine's stack (dispatch's argument) until the call ends. */
  c->ud = lua_newuserdata(co, sizeof *c->ud);
  c->ud->call = c;
  luaL_getmetatable(co, MSG_MT);
  lua_setmetatable(co, -2);
  int nargs = 2;
  if (hook >= LUAM_HOOK_VALIDATE_CONNECT) { /* the listener's: str, ac, str2 */
    if (call->str)
      lua_pushlstring(co, call->str, call->str_len);
    else
      lua_pushnil(co);
    lua_createtable(co, 0, 2);
    lua_pushstring(co, call->remote_addr ? call->remote_addr : "");
    lua_setfield(co, -2, "remote_addr");
    lua_pushstring(co, call->local_addr ? call->local_addr : "");
    lua_setfield(co, -2, "local_addr");
    if (call->str2)
      lua_pushlstring(co, call->str2, call->str2_len);
    else
      lua_pushnil(co);
    nargs += 3;
  } else if (hook >= LUAM_HOOK_LOG_DELIVERY) {
    const struct luam_outcome *o = call->outcome;
    push_outcome(co, o);
    lua_pushnumber(co, (lua_Number)time(NULL));
    if (o && o->text)
      lua_pushstring(co, o->text);
    else
      lua_pushliteral(co, "");
    nargs += 3;
  }
  /* Link first so a query's answer can find the call. */
  c->next = lm->pending;
  if (lm->pending)
    lm->pending->prev = c;
  lm->pending = c;
  struct sync_rec sync = {0};
  if (lm->mbox) {
    c->done = sync_done;
    c->done_arg = &sync;
  }
  int result = luam_call_resume(lm, c, nargs);
  if (result == LUAM_PENDING) {
    lm->npending++;
    ls->npending++;
    if (!lm->mbox)
      return LUAM_PENDING;
    while (!sync.done)
      mbox_run_one(lm->mbox);
    return sync.result;
  }
  luam_call_finish(lm, c, 0);
  return result;
}

int luam_call_auth_config(struct luam *lm, void *msg, const struct luam_msg_ops *ops,
                          const char *domain, void (*done)(void *, int), void *done_arg)
{
  struct luam_call call = {
    .msg = msg, .ops = ops, .domain = domain, .rcpt = -1, .done = done, .done_arg = done_arg,
  };
  return luam_call(lm, LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG, &call);
}
