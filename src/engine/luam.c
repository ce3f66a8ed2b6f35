/* luam.c owns the per-worker LuaJIT states, the msys API's C half (msg
 * methods, print, config, datasource submission) and the hook calls.
 * It must never block (datasource queries go to luam_ds's pool), never
 * let a script error or runaway reach its caller, and never hand a script
 * an engine pointer (strings are copied; a msg userdata is invalidated
 * when its call ends). Every function except luam_check and
 * luam_resolve_source runs on the thread that created the state. */
#include "luam.h"
#include "authkeys.h"
#include "adaptive_queue.h"
#include "luam_ds.h"
#include "luam_job.h"

#include "clock.h"
#include "paths.h"
#include "panic.h"

#include <errno.h>
#include <pthread.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MSG_MT "impetus.msg"
#define HOOK_EVERY 1000 /* instructions between budget checks */
#define LUAM_MAX_SCRIPT_BYTES (16u << 20)
#define LUAM_MAX_LOG_TEXT 4096
#define LUAM_IDLE_COROUTINES 8

static const char *const hook_names[LUAM_HOOK_COUNT] = {
  [LUAM_HOOK_VALIDATE_DATA_SPOOL] = "validate_data_spool",
  [LUAM_HOOK_VALIDATE_DATA_SPOOL_EACH_RCPT] = "validate_data_spool_each_rcpt",
  [LUAM_HOOK_VALIDATE_SET_BINDING] = "validate_set_binding",
  [LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG] = "outbound_smtp_auth_config",
  [LUAM_HOOK_LOG_DELIVERY] = "core_log_delivery_v1",
  [LUAM_HOOK_LOG_TRANSIENT_FAILURE] = "core_log_transient_failure_v1",
  [LUAM_HOOK_LOG_PERMANENT_FAILURE] = "core_log_permanent_failure_v1",
};

struct script {
  char *name, *path, *chunk; /* chunk = "@" path */
  char *text;
  size_t len;
};

struct lcall;

/* One lua_State and its accounting. The current one serves new calls;
 * retired ones (after reload or recreation) live until their last
 * pending call finishes. */
struct lstate {
  struct lstate *next_retired;
  struct luam *lm;
  lua_State *L;
  int dispatch_ref;
  int msg_mt_ref;
  uint32_t hookmask;
  size_t mem, mem_limit;
  int counting;       /* custom allocator in use (else lua_gc polling) */
  int enforce;        /* refuse growth over mem_limit (only while running) */
  int oom;            /* the limit was hit: recreate this state */
  unsigned npending;
  /* budget of the code running now */
  uint64_t instr, max_instr, deadline_ns;
  int aborting;
  /* "script.lua:LINE" sampled by the budget hook once the state is near
   * its memory limit: where a memory bomb was (an allocation failure
   * itself carries no position). */
  char near[160];
  const char *loading;    /* script name while its top level runs */
  /* Finished coroutines kept for the next calls (no allocation per call). */
  lua_State *idle_co[LUAM_IDLE_COROUTINES];
  int idle_ref[LUAM_IDLE_COROUTINES];
  int nidle;
};

struct lmsg {
  struct lcall *call; /* NULL once the call is over */
};

struct lcall {
  struct lcall *prev, *next; /* lm->pending */
  struct lstate *ls;
  uint64_t id;
  enum luam_hook hook;
  void *msg;
  const struct luam_msg_ops *ops;
  char *domain;
  long rcpt;
  void (*done)(void *, int);
  void *done_arg;
  lua_State *co;
  int co_ref;
  int reusable;           /* the coroutine finished normally */
  struct lmsg *ud;        /* alive on the coroutine's stack while it runs */
  struct luam_job *job;   /* submitted by msys.db, not yet answered */
  uint64_t run_ns, instr;
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

#define DS_LOG_SLOTS 16u

struct luam {
  struct luam_host host;
  void (*post)(void *arg, void (*fn)(void *), void *fn_arg);
  void *post_arg;
  struct mailbox *mbox; /* blocking mode only */
  struct lstate *cur;
  struct lstate *retired;
  struct script *scripts;
  size_t nscripts;
  char *libdir;
  char *boot_chunk; /* "@<libdir>/impetus/boot.lua" */
  uint64_t max_instr, max_time_ms;
  size_t max_mem;
  bool jit;
  bool full_lua; /* scriptlet sandbox = false */
  struct luam_ds *ds;
  struct lcall *pending;
  unsigned npending;
  uint64_t next_id;
  struct lcall *running;
  struct luam_stats stats;
  struct { /* per datasource (index modulo DS_LOG_SLOTS) */
    uint64_t log_ns;          /* last failure logged */
    unsigned long suppressed; /* failures not logged since */
  } dslog[DS_LOG_SLOTS];
};

#define DS_LOG_INTERVAL_NS (10ull * 1000000000ull) /* one datasource failure line per 10 s */

/* The state running on this thread right now (budget hook, allocator). */
static __thread struct lstate *tls_ls;

/* ------------------------------------------------------------------ */
/* logging */

IMPETUS_PRINTF(4, 5)
static void lm_log(const struct luam *lm, int level, const char *script, const char *fmt, ...)
{
  if (!lm || !lm->host.log)
    return;
  char text[LUAM_MAX_LOG_TEXT];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  lm->host.log(lm->host.arg, level, script, text);
}

/* Count one hook failure (stats and the host's counter) by its cause. */
static void note_failure(struct luam *lm, const struct lstate *ls, enum luam_hook hook)
{
  lm->stats.errors++;
  enum luam_event ev = ls->oom ? LUAM_EV_MEMORY : ls->aborting ? LUAM_EV_BUDGET : LUAM_EV_ERROR;
  if (lm->host.count)
    lm->host.count(lm->host.arg, hook, ev);
}

/* ------------------------------------------------------------------ */
/* memory */

static void *lalloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
  struct lstate *ls = ud;
  if (nsize == 0) {
    free(ptr);
    ls->mem -= osize;
    return NULL;
  }
  if (nsize > osize && ls->enforce && ls->mem + (nsize - osize) > ls->mem_limit) {
    ls->oom = 1;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (!p)
    return NULL;
  ls->mem = ls->mem - osize + nsize;
  return p;
}

static size_t state_mem(struct lstate *ls)
{
  if (ls->counting)
    return ls->mem;
  return (size_t)lua_gc(ls->L, LUA_GCCOUNT, 0) * 1024u + (size_t)lua_gc(ls->L, LUA_GCCOUNTB, 0);
}

/* ------------------------------------------------------------------ */
/* budget */

static void budget_hook(lua_State *L, lua_Debug *ar)
{
  struct lstate *ls = tls_ls;
  if (!ls)
    return;
  ls->instr += HOOK_EVERY;
  if (ls->counting && ls->mem > ls->mem_limit / 4 * 3 && !ls->aborting &&
      lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    snprintf(ls->near, sizeof ls->near, "%s:%d", ar->short_src, ar->currentline);
  if (!ls->aborting &&
      (ls->instr > ls->max_instr || clock_mono_ns() > ls->deadline_ns)) {
    /* From now on check every instruction, so that a script catching the
     * error with pcall meets it again at its next instruction. */
    ls->aborting = 1;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  }
  if (!ls->aborting)
    goto mem;
  if (!lua_getinfo(L, "Sl", ar))
    return;
  if (strcmp(ar->source, ls->lm->boot_chunk) == 0)
    return; /* let the dispatcher report and return */
  char msg[256];
  snprintf(msg, sizeof msg, "%s:%d: hook exceeded its budget (%llu instructions or %llu ms); aborted",
           ar->short_src, ar->currentline, (unsigned long long)ls->max_instr,
           (unsigned long long)ls->lm->max_time_ms);
  lua_pushstring(L, msg);
  lua_error(L);
mem:
  if (!ls->counting && state_mem(ls) > ls->mem_limit) {
    ls->oom = 1;
    luaL_error(L, "not enough memory");
  }
}

/* Open the window in which ls's code runs under the budget. */
static void run_begin(struct lstate *ls, uint64_t now, uint64_t used_ns, uint64_t used_instr)
{
  struct luam *lm = ls->lm;
  tls_ls = ls;
  ls->enforce = 1;
  ls->aborting = 0;
  ls->near[0] = 0;
  ls->instr = used_instr;
  ls->max_instr = lm->max_instr;
  uint64_t budget = lm->max_time_ms * 1000000ull;
  ls->deadline_ns = now + (budget > used_ns ? budget - used_ns : 0);
}

static void run_end(struct lstate *ls)
{
  if (ls->aborting)
    lua_sethook(ls->L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
  ls->enforce = 0;
  tls_ls = NULL;
  if (!ls->counting && state_mem(ls) > ls->mem_limit)
    ls->oom = 1;
}

/* ------------------------------------------------------------------ */
/* msg methods */

static struct lcall *check_call(lua_State *L)
{
  /* Fast path while a hook runs: compare the metatable with the state's
   * (an integer registry index, no string lookup). */
  struct lmsg *m = NULL;
  struct lstate *ls = tls_ls;
  if (ls && ls->L && lua_type(L, 1) == LUA_TUSERDATA && lua_getmetatable(L, 1)) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->msg_mt_ref);
    if (lua_rawequal(L, -1, -2))
      m = lua_touserdata(L, 1);
    lua_pop(L, 2);
  }
  if (!m)
    m = luaL_checkudata(L, 1, MSG_MT);
  if (!m->call)
    luaL_error(L, "msg used after its hook returned");
  return m->call;
}

static int check_ctx(lua_State *L, int idx)
{
  lua_Integer w = luaL_checkinteger(L, idx);
  if (w != LUAM_CTX_CONN && w != LUAM_CTX_MESS)
    luaL_error(L, "bad context type %d (VCTX_CONN or VCTX_MESS)", (int)w);
  return (int)w;
}

#define NEED(c, op) \
  do { if (!(c)->ops->op) return luaL_error(L, "msg: %s is not supported here", #op); } while (0)

/* Context lookup; inside outbound_smtp_auth_config, a message-context
 * key of outbound_smtp_auth (not the password) that the message does not
 * set shows what the unit will use: authkeys' rule over the configured
 * value for the scope (false there = off = nil). */
static const char *ctx_lookup(struct lcall *c, int which, const char *key, size_t *len)
{
  if (!c->ops->ctx_get)
    return NULL;
  const char *v = c->ops->ctx_get(c->msg, which, key, len);
  int k = -1;
  if (v || which != LUAM_CTX_MESS || c->hook != LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG ||
      (k = authkeys_find(key)) < 0 || k == AUTHKEY_PASS)
    return v;
  const struct luam_host *h = &c->ls->lm->host;
  if (!h->eval)
    return NULL;
  const char *mess[AUTHKEY__COUNT], *conf[AUTHKEY__COUNT] = {0};
  for (int i = 0; i < AUTHKEY__COUNT; i++) {
    size_t l;
    mess[i] = c->ops->ctx_get(c->msg, which, authkeys_ctx_key((enum authkey)i), &l);
  }
  const char *bg = c->ops->binding_group ? c->ops->binding_group(c->msg) : NULL;
  const char *b = c->ops->binding ? c->ops->binding(c->msg) : NULL;
  conf[k] = h->eval(h->arg, bg, b, c->domain, authkeys_option((enum authkey)k));
  if (conf[k] && !strcasecmp(conf[k], "false"))
    conf[k] = NULL;
  v = authkeys_pick((enum authkey)k, mess, conf);
  if (v)
    *len = strlen(v);
  return v;
}

static int m_context_get(lua_State *L)
{
  struct lcall *c = check_call(L);
  int w = check_ctx(L, 2);
  const char *k = luaL_checkstring(L, 3);
  size_t len = 0;
  const char *v = ctx_lookup(c, w, k, &len);
  if (v)
    lua_pushlstring(L, v, len);
  else
    lua_pushliteral(L, "");
  return 1;
}

static int m_context_exists(lua_State *L)
{
  struct lcall *c = check_call(L);
  int w = check_ctx(L, 2);
  const char *k = luaL_checkstring(L, 3);
  size_t len = 0;
  lua_pushinteger(L, ctx_lookup(c, w, k, &len) ? 1 : 0);
  return 1;
}

static int m_context_exists_and_get(lua_State *L)
{
  struct lcall *c = check_call(L);
  int w = check_ctx(L, 2);
  const char *k = luaL_checkstring(L, 3);
  size_t len = 0;
  const char *v = ctx_lookup(c, w, k, &len);
  if (!v) {
    lua_pushinteger(L, 0);
    lua_pushnil(L);
  } else {
    lua_pushinteger(L, 1);
    lua_pushlstring(L, v, len);
  }
  return 2;
}

static int m_context_set(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, ctx_set);
  int w = check_ctx(L, 2);
  const char *k = luaL_checkstring(L, 3);
  size_t len;
  const char *v = luaL_checklstring(L, 4, &len);
  int rc = c->ops->ctx_set(c->msg, w, k, v, len);
  if (rc < 0)
    return luaL_error(L, "context_set(%s): %s", k, strerror(-rc));
  lua_pushinteger(L, 1);
  return 1;
}

static int m_context_delete(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, ctx_delete);
  int w = check_ctx(L, 2);
  const char *k = luaL_checkstring(L, 3);
  lua_pushinteger(L, c->ops->ctx_delete(c->msg, w, k) > 0 ? 1 : 0);
  return 1;
}

static void push_or_nil(lua_State *L, const char *s)
{
  if (s)
    lua_pushstring(L, s);
  else
    lua_pushnil(L);
}

static int m_mailfrom(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, mailfrom);
  if (!lua_isnoneornil(L, 2))
    return luaL_error(L, "msg:mailfrom(new) is not supported (read-only envelope)");
  push_or_nil(L, c->ops->mailfrom(c->msg));
  return 1;
}

static int m_rcptto(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, rcptto);
  if (!lua_isnoneornil(L, 2))
    return luaL_error(L, "msg:rcptto(new) is not supported (read-only envelope)");
  push_or_nil(L, c->ops->rcptto(c->msg, c->rcpt >= 0 ? (size_t)c->rcpt : 0));
  return 1;
}

/* msg:rcptto_list() -> { "a@x", "b@y", ... } (Impetus extension) */
static int m_rcptto_list(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, rcptto);
  lua_newtable(L);
  const char *r;
  for (size_t i = 0; (r = c->ops->rcptto(c->msg, i)) != NULL; i++) {
    lua_pushstring(L, r);
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

static int m_header(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, header);
  const char *name = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3))
    return luaL_error(L, "msg:header(name, value) is not supported (headers are read-only)");
  lua_newtable(L);
  size_t len;
  const char *v;
  for (size_t i = 0; (v = c->ops->header(c->msg, name, i, &len)) != NULL; i++) {
    lua_pushlstring(L, v, len);
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

static int binding_common(lua_State *L, int group)
{
  struct lcall *c = check_call(L);
  const char *(*get)(void *) = group ? c->ops->binding_group : c->ops->binding;
  int (*set)(void *, const char *) = group ? c->ops->set_binding_group : c->ops->set_binding;
  if (lua_isnoneornil(L, 2)) {
    if (!get)
      return luaL_error(L, "msg:%s() is not supported here", group ? "binding_group" : "binding");
    push_or_nil(L, get(c->msg));
    return 1;
  }
  const char *name = luaL_checkstring(L, 2);
  if (!set)
    return luaL_error(L, "msg:%s(name) is not supported here", group ? "binding_group" : "binding");
  if (set(c->msg, name) < 0)
    lua_pushnil(L);
  else
    lua_pushstring(L, name);
  return 1;
}

static int m_binding(lua_State *L) { return binding_common(L, 0); }
static int m_binding_group(lua_State *L) { return binding_common(L, 1); }

static int m_get_message_size(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, size);
  lua_pushnumber(L, (lua_Number)c->ops->size(c->msg));
  return 1;
}

static int m_code(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, set_code);
  int code = (int)luaL_optinteger(L, 2, 550);
  const char *text = luaL_optstring(L, 3, "5.7.1 rejected by policy");
  if (code < 200 || code > 599)
    return luaL_error(L, "msg:code: %d is not an SMTP reply code", code);
  c->ops->set_code(c->msg, code, text);
  return 0;
}

static int m_discard(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, set_code);
  c->ops->set_code(c->msg, 550, luaL_optstring(L, 2, "5.7.0 discarded by policy"));
  return 0;
}

static int m_tostring(lua_State *L)
{
  struct lmsg *m = luaL_checkudata(L, 1, MSG_MT);
  if (!m->call)
    return luaL_error(L, "msg used after its hook returned");
  const char *id = m->call->ops->id ? m->call->ops->id(m->call->msg) : NULL;
  lua_pushstring(L, id ? id : "?");
  return 1;
}

static const luaL_Reg msg_methods[] = {
  {"context_get", m_context_get},
  {"context_set", m_context_set},
  {"context_exists", m_context_exists},
  {"context_exists_and_get", m_context_exists_and_get},
  {"context_delete", m_context_delete},
  {"mailfrom", m_mailfrom},
  {"rcptto", m_rcptto},
  {"rcptto_list", m_rcptto_list},
  {"header", m_header},
  {"binding", m_binding},
  {"binding_group", m_binding_group},
  {"get_message_size", m_get_message_size},
  {"code", m_code},
  {"set_code", m_code},
  {"discard", m_discard},
  {NULL, NULL},
};

/* msg.id / msg.conn_id / msg.batch_id, then the methods. */
static int m_index(lua_State *L)
{
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1)); /* the methods table */
  if (!lua_isnil(L, -1))
    return 1;
  const char *k = lua_tostring(L, 2);
  if (k && (strcmp(k, "id") == 0 || strcmp(k, "batch_id") == 0 || strcmp(k, "conn_id") == 0))
    return m_tostring(L);
  return 1;
}

/* ------------------------------------------------------------------ */
/* C half of boot.lua */

static struct lstate *ls_of(lua_State *L)
{
  if (tls_ls)
    return tls_ls;
  lua_getfield(L, LUA_REGISTRYINDEX, "impetus.ls");
  struct lstate *ls = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return ls;
}

static const char *script_of_source(struct lstate *ls, const char *source)
{
  struct luam *lm = ls->lm;
  for (size_t i = 0; i < lm->nscripts; i++)
    if (strcmp(lm->scripts[i].chunk, source) == 0)
      return lm->scripts[i].name;
  return NULL;
}

static const char *calling_script(lua_State *L, struct lstate *ls)
{
  lua_Debug ar;
  for (int level = 1; level < 8 && lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "S", &ar))
      break;
    const char *s = script_of_source(ls, ar.source);
    if (s)
      return s;
  }
  return ls->loading;
}

/* The script of the innermost frame of co that belongs to one (co may be
 * suspended or dead with an error), or NULL. */
static const char *stack_script(lua_State *co, struct lstate *ls, char *pos, size_t poslen)
{
  lua_Debug ar;
  for (int level = 0; level < 16 && lua_getstack(co, level, &ar); level++) {
    if (!lua_getinfo(co, "Sl", &ar))
      break;
    const char *s = script_of_source(ls, ar.source);
    if (s) {
      snprintf(pos, poslen, "%s:%d", ar.short_src, ar.currentline);
      return s;
    }
  }
  return NULL;
}

static int c_print(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    lua_getglobal(L, "tostring");
    lua_pushvalue(L, i);
    lua_call(L, 1, 1);
    if (!lua_isstring(L, -1))
      return luaL_error(L, "'tostring' must return a string to 'print'");
    if (i > 1)
      luaL_addchar(&b, '\t');
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  lm_log(ls->lm, 2, calling_script(L, ls), "%s", lua_tostring(L, -1));
  return 0;
}

static int c_warn(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  lm_log(ls->lm, 1, calling_script(L, ls), "%s", luaL_checkstring(L, 1));
  return 0;
}

/* report(script, module, hook, error, fn): one hook failure, logged once
 * with the script and a line: the error's own position, else where the
 * state was near its memory limit, else where fn (the hook) is defined. */
static int c_report(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  struct luam *lm = ls->lm;
  const char *script = lua_tostring(L, 1);
  const char *mod = luaL_checkstring(L, 2);
  const char *hook = luaL_checkstring(L, 3);
  const char *err = lua_isstring(L, 4) ? lua_tostring(L, 4) : "(error object is not a string)";
  char where[200] = "";
  if (ls->oom && ls->near[0]) {
    snprintf(where, sizeof where, " near %s", ls->near);
  } else if (ls->oom || !lua_isstring(L, 4)) {
    lua_Debug ar;
    lua_pushvalue(L, 5);
    if (lua_isfunction(L, -1) && lua_getinfo(L, ">S", &ar) && ar.linedefined > 0)
      snprintf(where, sizeof where, " in the hook defined at %s:%d", ar.short_src, ar.linedefined);
    else
      lua_pop(L, 1);
  }
  if (lm->running)
    note_failure(lm, ls, lm->running->hook);
  else
    lm->stats.errors++;
  if (ls->oom)
    lm_log(lm, 0, script, "%s:%s: memory limit (%zu bytes) exceeded%s: %s; hook skipped (CONT), state will be recreated",
           mod, hook, ls->mem_limit, where, err);
  else
    lm_log(lm, 0, script, "%s:%s: %s%s; hook skipped (CONT)", mod, hook, err, where);
  return 0;
}

static int c_aborting(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  lua_pushboolean(L, ls->aborting || ls->oom);
  return 1;
}

static int c_hook_names(lua_State *L)
{
  lua_newtable(L);
  for (int i = 0; i < LUAM_HOOK_COUNT; i++) {
    lua_pushstring(L, hook_names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int c_note_hook(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  const char *h = luaL_checkstring(L, 1);
  for (int i = 0; i < LUAM_HOOK_COUNT; i++)
    if (strcmp(h, hook_names[i]) == 0)
      ls->hookmask |= 1u << i;
  return 0;
}

static int c_current_script(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  push_or_nil(L, ls->loading);
  return 1;
}

static int c_now(lua_State *L)
{
  lua_pushnumber(L, (lua_Number)time(NULL));
  return 1;
}

static int c_mono(lua_State *L)
{
  lua_pushnumber(L, (lua_Number)clock_mono_ns() / 1e9);
  return 1;
}

/* config(scope, name, ..., option): pairs of binding_group/binding/domain. */
static int c_config(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  int n = lua_gettop(L);
  if (n < 1 || n % 2 == 0)
    return luaL_error(L, "msys.config: expected [scope name]... option");
  const char *bg = NULL, *b = NULL, *d = NULL;
  for (int i = 1; i < n; i += 2) {
    const char *scope = luaL_checkstring(L, i);
    const char *name = luaL_checkstring(L, i + 1);
    if (strcasecmp(scope, "binding_group") == 0)
      bg = name;
    else if (strcasecmp(scope, "binding") == 0)
      b = name;
    else if (strcasecmp(scope, "domain") == 0)
      d = name;
    else
      return luaL_error(L, "msys.config: unsupported scope %s (binding_group, binding, domain)", scope);
  }
  const char *opt = luaL_checkstring(L, n);
  const struct luam_host *h = &ls->lm->host;
  push_or_nil(L, h->eval ? h->eval(h->arg, bg, b, d, opt) : NULL);
  return 1;
}

static int c_binding_exists(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  const char *name = luaL_checkstring(L, 1);
  const struct luam_host *h = &ls->lm->host;
  /* A binding exists when the configuration can evaluate in its scope. */
  lua_pushboolean(L, h->eval && h->eval(h->arg, NULL, name, NULL, "#binding_exists") != NULL);
  return 1;
}

/* C.dkim_sign(msg, options): true, or nil and the reason. */
static int c_dkim_sign(lua_State *L)
{
  struct lcall *c = check_call(L);
  NEED(c, dkim_sign);
  /* Options copied out of the table (a number's text would not outlive
   * its stack slot); a key buffer fits. */
  const char *kv[64];
  char store[16384];
  size_t n = 0, used = 0;
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
      if (n + 2 <= 64 && lua_type(L, -2) == LUA_TSTRING &&
          (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
        lua_pushvalue(L, -1); /* convert a copy: lua_next needs the key and value intact */
        size_t kl, vl;
        const char *k = lua_tolstring(L, -3, &kl), *v = lua_tolstring(L, -1, &vl);
        if (used + kl + vl + 2 > sizeof(store))
          return luaL_error(L, "msys.validate.opendkim.sign: options too long");
        memcpy(store + used, k, kl + 1);
        kv[n++] = store + used;
        used += kl + 1;
        memcpy(store + used, v, vl + 1);
        kv[n++] = store + used;
        used += vl + 1;
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  char why[300] = "";
  if (c->ops->dkim_sign(c->msg, kv, n / 2, why, sizeof(why)) < 0) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int c_ds_info(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  int idx = luam_ds_find(ls->lm->ds, luaL_checkstring(L, 1));
  if (idx < 0)
    return 0;
  const struct luam_ds_conf *dc = luam_ds_conf_at(ls->lm->ds, idx);
  lua_pushnumber(L, dc->cache_life);
  lua_pushnumber(L, dc->cache_size);
  return 2;
}

static int c_cache_hit(lua_State *L)
{
  ls_of(L)->lm->stats.cache_hits++;
  return 0;
}

static void pack_value(lua_State *L, int idx, struct luam_jval *v)
{
  switch (lua_type(L, idx)) {
  case LUA_TNIL: v->type = LUAM_JV_NIL; break;
  case LUA_TBOOLEAN: v->type = LUAM_JV_BOOL; v->i = lua_toboolean(L, idx); break;
  case LUA_TNUMBER: {
    lua_Number d = lua_tonumber(L, idx);
    if (d == (lua_Number)(int64_t)d && d > -9.0e15 && d < 9.0e15) {
      v->type = LUAM_JV_INT;
      v->i = (int64_t)d;
    } else {
      v->type = LUAM_JV_NUM;
      v->d = d;
    }
    break;
  }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    v->type = LUAM_JV_STR;
    v->s = util_xmalloc(len + 1);
    memcpy(v->s, s, len + 1);
    v->len = len;
    break;
  }
  default: /* rejected by check_params */
    v->type = LUAM_JV_NIL;
  }
}

/* Raise before anything is allocated: a parameter of another type. */
static void check_param(lua_State *L, int idx)
{
  int t = lua_type(L, idx);
  if (t != LUA_TNIL && t != LUA_TBOOLEAN && t != LUA_TNUMBER && t != LUA_TSTRING)
    luaL_error(L, "msys.db: parameter of type %s is not supported", luaL_typename(L, idx));
}

/* db_submit(name, sql, params, execute): attach a job to the running call;
 * the caller then yields and the job is queued once the coroutine is
 * suspended. */
static int c_db_submit(lua_State *L)
{
  struct lstate *ls = ls_of(L);
  struct luam *lm = ls->lm;
  struct lcall *c = lm->running;
  if (!c || c->co != L)
    return luaL_error(L, "msys.db: only inside a hook, not at load time or in a nested coroutine");
  if (c->job)
    return luaL_error(L, "msys.db: a query is already in flight");
  int idx = luam_ds_find(lm->ds, luaL_checkstring(L, 1));
  if (idx < 0)
    return luaL_error(L, "msys.db: no such datasource");
  const char *sql = luaL_checkstring(L, 2);
  size_t npos = 0, nnamed = 0;
  if (lua_istable(L, 3)) {
    npos = lua_objlen(L, 3);
    if (npos > LUAM_DS_MAX_PARAMS)
      return luaL_error(L, "msys.db: more than %d parameters", LUAM_DS_MAX_PARAMS);
    for (size_t i = 0; i < npos; i++) {
      lua_rawgeti(L, 3, (int)i + 1);
      check_param(L, -1);
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        nnamed++;
        check_param(L, -1);
      }
      lua_pop(L, 1);
    }
    if (npos + nnamed > LUAM_DS_MAX_PARAMS)
      return luaL_error(L, "msys.db: more than %d parameters", LUAM_DS_MAX_PARAMS);
  }
  /* Nothing below raises: the job is complete when the hook yields. */
  struct luam_job *job = util_xcalloc(1, sizeof *job);
  job->ds = idx;
  job->execute = lua_toboolean(L, 4);
  job->sql = util_xstrdup(sql);
  c->job = job;
  if (lua_istable(L, 3)) {
    job->params = util_xcalloc(npos + nnamed + 1, sizeof *job->params);
    for (size_t i = 0; i < npos; i++) {
      lua_rawgeti(L, 3, (int)i + 1);
      job->nparams++;
      pack_value(L, -1, &job->params[i]);
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        struct luam_jval *v = &job->params[job->nparams++];
        const char *k = lua_tostring(L, -2);
        size_t kl = strlen(k);
        v->name = util_xmalloc(kl + 2);
        if (k[0] == ':' || k[0] == '$' || k[0] == '@') {
          memcpy(v->name, k, kl + 1);
        } else {
          v->name[0] = ':';
          memcpy(v->name + 1, k, kl + 1);
        }
        pack_value(L, -1, v);
      }
      lua_pop(L, 1);
    }
  }
  return 0;
}

/* msys.adaptive.registerRules (boot.lua flattens Momentum's rule tables):
 * one rule as a table of string fields, and whether it clears the rules
 * first (mode "replace"). Errors are raised to the script. */
static int c_adaptive_rule(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TTABLE);
  bool clear = lua_toboolean(L, 2);
  const char *kv[2 * 16];
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    /* strings only (boot.lua makes them): they stay alive in the table */
    if (n < 16 && lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
      kv[2 * n] = lua_tostring(L, -2);
      kv[2 * n + 1] = lua_tostring(L, -1);
      n++;
    }
    lua_pop(L, 1);
  }
  char err[300];
  if (adaptive_queue_lua_rule(kv, n, clear, err, sizeof err) < 0)
    return luaL_error(L, "msys.adaptive.registerRules: %s", err);
  return 0;
}

static const luaL_Reg boot_funcs[] = {
  {"adaptive_rule", c_adaptive_rule},
  {"print", c_print},
  {"warn", c_warn},
  {"report", c_report},
  {"aborting", c_aborting},
  {"hook_names", c_hook_names},
  {"note_hook", c_note_hook},
  {"current_script", c_current_script},
  {"now", c_now},
  {"mono", c_mono},
  {"config", c_config},
  {"binding_exists", c_binding_exists},
  {"ds_info", c_ds_info},
  {"cache_hit", c_cache_hit},
  {"db_submit", c_db_submit},
  {"dkim_sign", c_dkim_sign},
  {NULL, NULL},
};

/* ------------------------------------------------------------------ */
/* states */

static int read_file(const char *path, char **text, size_t *len, char *err, size_t errlen)
{
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -errno;
  }
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || st.st_size > (off_t)LUAM_MAX_SCRIPT_BYTES) {
    snprintf(err, errlen, "%s: unreadable or larger than %u bytes", path, LUAM_MAX_SCRIPT_BYTES);
    fclose(f);
    return -EFBIG;
  }
  *text = util_xmalloc((size_t)st.st_size + 1);
  *len = fread(*text, 1, (size_t)st.st_size, f);
  (*text)[*len] = 0;
  fclose(f);
  return 0;
}

static void scripts_free(struct script *s, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free(s[i].name);
    free(s[i].path);
    free(s[i].chunk);
    free(s[i].text);
  }
  free(s);
}

static int scripts_load(const struct luam_opts *o, struct script **out, char *err, size_t errlen)
{
  struct script *s = util_xcalloc(o->nscripts + 1, sizeof *s);
  for (size_t i = 0; i < o->nscripts; i++) {
    s[i].name = util_xstrdup(o->scripts[i].name ? o->scripts[i].name : o->scripts[i].path);
    s[i].path = util_xstrdup(o->scripts[i].path);
    size_t pl = strlen(s[i].path);
    s[i].chunk = util_xmalloc(pl + 2);
    s[i].chunk[0] = '@';
    memcpy(s[i].chunk + 1, s[i].path, pl + 1);
    int rc = read_file(s[i].path, &s[i].text, &s[i].len, err, errlen);
    if (rc < 0) {
      scripts_free(s, o->nscripts);
      return rc;
    }
  }
  *out = s;
  return 0;
}

static void state_free(struct lstate *ls)
{
  if (!ls)
    return;
  if (ls->L)
    lua_close(ls->L);
  free(ls);
}

/* Run the function on top of ls->L (nargs arguments) under the budget. */
static int state_pcall(struct lstate *ls, int nargs, int nres, char *err, size_t errlen)
{
  run_begin(ls, clock_mono_ns(), 0, 0);
  int rc = lua_pcall(ls->L, nargs, nres, 0);
  run_end(ls);
  if (rc != 0) {
    const char *m = lua_tostring(ls->L, -1);
    snprintf(err, errlen, "%s", m ? m : "(error object is not a string)");
    lua_pop(ls->L, 1);
    return -EINVAL;
  }
  return 0;
}

/* Build a complete state: libraries, boot.lua, then every script. */
/* The scriptlet sandbox (docs/lua.md "Trust model"), run on a fresh state
 * before boot.lua and the scripts: no files, processes, environment, FFI,
 * debug library, JIT switches, bytecode or C modules. What stays: base
 * (load/loadstring text only), string, table, math, bit, coroutine,
 * os.time/clock/date/difftime, jit.status/version, require of Lua files on
 * package.path (the bundled library and the scripts' directories). */
static const char sandbox_lua[] =
  "local os0, jit0, package, loaded = os, jit, package, package.loaded\n"
  "local safe_os = { time = os0.time, clock = os0.clock, date = os0.date, difftime = os0.difftime }\n"
  "local safe_jit = jit0 and { version = jit0.version, version_num = jit0.version_num,\n"
  "                           os = jit0.os, arch = jit0.arch, status = jit0.status }\n"
  "io, debug, dofile, loadfile = nil, nil, nil, nil\n"
  "os, jit = safe_os, safe_jit\n"
  "loaded.io, loaded.debug, loaded.ffi, loaded.os, loaded.jit = nil, nil, nil, safe_os, safe_jit\n"
  "for k in pairs(package.preload) do package.preload[k] = nil end\n"
  "package.loadlib, package.cpath = nil, ''\n"
  "package.loaders[4], package.loaders[3] = nil, nil\n"
  "local load0, loadstring0 = load, loadstring\n"
  "load = function(chunk, name) return load0(chunk, name, 't') end\n"
  "loadstring = function(s, name) return loadstring0(s, name, 't') end\n";

/* package.cpath without entries relative to the working directory (full
 * Lua keeps the system's C module directories). */
static void cpath_no_dot(lua_State *L)
{
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "cpath");
  const char *cp = lua_tostring(L, -1);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  bool first = true;
  while (cp && *cp) {
    size_t n = strcspn(cp, ";");
    if (n > 0 && strncmp(cp, "./", 2) != 0) {
      if (!first)
        luaL_addchar(&b, ';');
      luaL_addlstring(&b, cp, n);
      first = false;
    }
    cp += n + (cp[n] == ';');
  }
  luaL_pushresult(&b);
  lua_setfield(L, -3, "cpath");
  lua_pop(L, 2);
}

static struct lstate *state_new(struct luam *lm, char *err, size_t errlen)
{
  struct lstate *ls = util_xcalloc(1, sizeof *ls);
  ls->lm = lm;
  ls->mem_limit = lm->max_mem;
  ls->counting = 1;
  ls->L = lua_newstate(lalloc, ls);
  if (!ls->L) {
    /* LuaJIT builds without GC64 refuse custom allocators on x86_64:
     * fall back to polling the collector's count. */
    ls->counting = 0;
    ls->L = luaL_newstate();
    if (!ls->L) {
      snprintf(err, errlen, "cannot create a Lua state");
      free(ls);
      return NULL;
    }
  }
  lua_State *L = ls->L;
  luaL_openlibs(L);
  cpath_no_dot(L);
  if (!lm->full_lua &&
      (luaL_loadbuffer(L, sandbox_lua, sizeof sandbox_lua - 1, "=sandbox") != 0 ||
       lua_pcall(L, 0, 0, 0) != 0))
    util_panic("luam: sandbox: %s", lua_tostring(L, -1));
  if (!lm->jit)
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
  lua_pushlightuserdata(L, ls);
  lua_setfield(L, LUA_REGISTRYINDEX, "impetus.ls");

  luaL_newmetatable(L, MSG_MT);
  lua_newtable(L);
  luaL_register(L, NULL, msg_methods);
  lua_pushcclosure(L, m_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, m_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "msg");
  lua_setfield(L, -2, "__metatable");
  ls->msg_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  /* package.path: the bundled library first, then each script's dir. */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", lm->libdir, lm->libdir);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);

  char path[4096];
  snprintf(path, sizeof path, "%s/impetus/boot.lua", lm->libdir);
  if (luaL_loadfile(L, path) != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    state_free(ls);
    return NULL;
  }
  lua_newtable(L);
  luaL_register(L, NULL, boot_funcs);
  if (state_pcall(ls, 1, 1, err, errlen) < 0) {
    state_free(ls);
    return NULL;
  }
  if (!lua_isfunction(L, -1)) {
    snprintf(err, errlen, "%s: did not return the dispatcher", path);
    state_free(ls);
    return NULL;
  }
  ls->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  for (size_t i = 0; i < lm->nscripts; i++) {
    const struct script *s = &lm->scripts[i];
    if (luaL_loadbuffer(L, s->text, s->len, s->chunk) != 0) {
      snprintf(err, errlen, "%s", lua_tostring(L, -1));
      state_free(ls);
      return NULL;
    }
    ls->loading = s->name;
    int rc = state_pcall(ls, 0, 0, err, errlen);
    ls->loading = NULL;
    if (rc < 0 || ls->oom) {
      if (rc == 0)
        snprintf(err, errlen, "%s: memory limit exceeded while loading", s->path);
      state_free(ls);
      return NULL;
    }
  }
  lua_gc(L, LUA_GCCOLLECT, 0);
  return ls;
}

/* Retire ls (it keeps serving its pending calls) or free it now. */
static void state_retire(struct luam *lm, struct lstate *ls)
{
  if (!ls)
    return;
  if (ls->npending == 0) {
    state_free(ls);
    return;
  }
  ls->next_retired = lm->retired;
  lm->retired = ls;
}

static void state_reap(struct luam *lm, struct lstate *ls)
{
  if (ls == lm->cur || ls->npending)
    return;
  for (struct lstate **pp = &lm->retired; *pp; pp = &(*pp)->next_retired)
    if (*pp == ls) {
      *pp = ls->next_retired;
      state_free(ls);
      return;
    }
}

/* Replace a state that hit its memory limit with a fresh one. */
static void state_recreate(struct luam *lm)
{
  char err[512];
  struct lstate *fresh = state_new(lm, err, sizeof err);
  if (!fresh) {
    lm_log(lm, 0, NULL, "recreating the Lua state failed: %s; keeping the old one", err);
    lm->cur->oom = 0;
    return;
  }
  lm->stats.recreated++;
  lm_log(lm, 1, NULL, "Lua state recreated after exceeding its memory limit (%zu bytes)",
         lm->max_mem);
  struct lstate *old = lm->cur;
  lm->cur = fresh;
  state_retire(lm, old);
}

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
  it->next = NULL;
  it->fn = fn;
  it->arg = fn_arg;
  pthread_mutex_lock(&mb->mu);
  if (mb->tail)
    mb->tail->next = it;
  else
    mb->head = it;
  mb->tail = it;
  pthread_cond_signal(&mb->cv);
  pthread_mutex_unlock(&mb->mu);
}

/* Wait for one posted answer and run it (blocking mode). */
static void mbox_run_one(struct mailbox *mb)
{
  pthread_mutex_lock(&mb->mu);
  while (!mb->head)
    pthread_cond_wait(&mb->cv, &mb->mu);
  struct mailbox_item *it = mb->head;
  mb->head = it->next;
  if (!mb->head)
    mb->tail = NULL;
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
  if (scripts_load(opts, &lm->scripts, err, errlen) < 0) {
    free(lm->libdir);
    free(lm->boot_chunk);
    mbox_free(lm->mbox);
    free(lm);
    return NULL;
  }
  lm->nscripts = opts->nscripts;
  lm->cur = state_new(lm, err, errlen);
  if (!lm->cur) {
    scripts_free(lm->scripts, lm->nscripts);
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
    lm->pending = c->next;
    if (c->next)
      c->next->prev = NULL;
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
    state_free(ls);
  }
  state_free(lm->cur);
  scripts_free(lm->scripts, lm->nscripts);
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
  if (scripts_load(opts, &tmp.scripts, err, errlen) < 0) {
    free(tmp.libdir);
    free(tmp.boot_chunk);
    return -EINVAL;
  }
  tmp.nscripts = opts->nscripts;
  struct lstate *fresh = state_new(&tmp, err, errlen);
  if (!fresh) {
    scripts_free(tmp.scripts, tmp.nscripts);
    free(tmp.libdir);
    free(tmp.boot_chunk);
    return -EINVAL;
  }
  /* Success: adopt the candidate's settings and scripts. Retired states
   * keep working because print/report find scripts through lm. */
  fresh->lm = lm;
  scripts_free(lm->scripts, lm->nscripts);
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
  state_retire(lm, old);
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
  st->memory = state_mem(lm->cur);
}

/* ------------------------------------------------------------------ */
/* calls */

static void job_complete(void *arg);

/* Resume c's coroutine with nargs values on its stack. Returns LUAM_CONT,
 * LUAM_DONE, or LUAM_PENDING (a query was submitted). On a final answer
 * the call is freed. */
static int call_resume(struct luam *lm, struct lcall *c, int nargs)
{
  struct lstate *ls = c->ls;
  uint64_t t0 = clock_mono_ns();
  lm->running = c;
  run_begin(ls, t0, c->run_ns, c->instr);
  int rc = lua_resume(c->co, nargs);
  c->instr = ls->instr;
  run_end(ls);
  lm->running = NULL;
  int result = LUAM_CONT;
  if (rc == LUA_YIELD) {
    c->run_ns += clock_mono_ns() - t0; /* only a resumed call needs it */
    if (c->job) {
      struct luam_job *job = c->job;
      job->post = lm->post;
      job->post_arg = lm->post_arg;
      job->complete = job_complete;
      job->owner = lm;
      job->call_id = c->id;
      lm->stats.yields++;
      lua_settop(c->co, 0);
      luam_ds_submit(lm->ds, job);
      return LUAM_PENDING;
    }
    note_failure(lm, ls, c->hook);
    char pos[200] = "?";
    const char *script = stack_script(c->co, ls, pos, sizeof pos);
    lm_log(lm, 0, script, "%s: %s: a hook yielded outside msys.db; skipped (CONT)",
           hook_names[c->hook], pos);
  } else if (rc == 0) {
    c->reusable = 1;
    if (lua_gettop(c->co) >= 1)
      result = lua_tointeger(c->co, -1) == LUAM_DONE ? LUAM_DONE : LUAM_CONT;
  } else {
    /* An error escaped the dispatcher itself (budget or memory while it
     * was between modules). */
    note_failure(lm, ls, c->hook);
    const char *m = lua_tostring(c->co, -1);
    char pos[200] = "";
    const char *script = stack_script(c->co, ls, pos, sizeof pos);
    lm_log(lm, 0, script, "%s: %s%s%s%s; skipped (CONT)", hook_names[c->hook], m ? m : "error",
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
static void call_finish(struct luam *lm, struct lcall *c, int was_pending)
{
  struct lstate *ls = c->ls;
  if (was_pending) {
    lm->npending--;
    ls->npending--;
  }
  call_free(lm, c);
  if (ls->oom && ls == lm->cur)
    state_recreate(lm);
  else
    state_reap(lm, ls);
}

/* A failed datasource query: one paniclog line per state, datasource and
 * 10 s, with the count of those not logged, whatever the script does with
 * the error (raise_error or nil). */
static void ds_failure_log(struct luam *lm, const struct lcall *c, int ds, const char *err)
{
  uint64_t now = clock_mono_ns();
  unsigned slot = (unsigned)ds % DS_LOG_SLOTS;
  if (lm->dslog[slot].log_ns && now - lm->dslog[slot].log_ns < DS_LOG_INTERVAL_NS) {
    lm->dslog[slot].suppressed++;
    return;
  }
  char more[80] = "";
  if (lm->dslog[slot].suppressed)
    snprintf(more, sizeof more, " (%lu more failures in the last %llu s)",
             lm->dslog[slot].suppressed,
             (unsigned long long)((now - lm->dslog[slot].log_ns) / 1000000000ull));
  lm_log(lm, 0, NULL, "%s: msys.db query failed: %s; the hook gets the error and the message "
         "goes on%s", hook_names[c->hook], err, more);
  lm->dslog[slot].log_ns = now;
  lm->dslog[slot].suppressed = 0;
}

static void job_complete(void *arg)
{
  struct luam_job *job = arg;
  struct luam *lm = job->owner;
  if (!lm) {
    luam_job_free(job);
    return;
  }
  struct lcall *c = lm->pending;
  while (c && c->id != job->call_id)
    c = c->next;
  if (!c || c->job != job) {
    luam_job_free(job);
    return;
  }
  c->job = NULL;
  lua_State *co = c->co;
  if (!lua_checkstack(co, 8)) { /* cannot happen with LUA_MINSTACK; be safe */
    luam_job_free(job);
    job = NULL;
  }
  if (!job) {
    lua_pushboolean(co, 0);
    lua_pushliteral(co, "msys.db: out of stack");
  } else if (job->failed) {
    ds_failure_log(lm, c, job->ds, job->err);
    lua_pushboolean(co, 0);
    lua_pushstring(co, job->err);
  } else {
    lua_pushboolean(co, 1);
    lua_createtable(co, (int)job->nrows, 0);
    for (size_t r = 0; r < job->nrows; r++) {
      lua_createtable(co, (int)job->ncols, (int)job->ncols);
      for (size_t k = 0; k < job->ncols; k++) {
        const struct luam_jval *v = &job->cells[r * job->ncols + k];
        switch (v->type) {
        case LUAM_JV_INT: lua_pushnumber(co, (lua_Number)v->i); break;
        case LUAM_JV_NUM: lua_pushnumber(co, v->d); break;
        case LUAM_JV_STR: lua_pushlstring(co, v->s, v->len); break;
        default: lua_pushnil(co); break;
        }
        lua_pushvalue(co, -1);
        lua_rawseti(co, -3, (int)k + 1);
        lua_setfield(co, -2, job->cols[k]);
      }
      lua_rawseti(co, -2, (int)r + 1);
    }
  }
  luam_job_free(job);
  int result = call_resume(lm, c, 2);
  if (result == LUAM_PENDING)
    return;
  void (*done)(void *, int) = c->done;
  void *done_arg = c->done_arg;
  call_finish(lm, c, 1);
  if (done)
    done(done_arg, result);
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
  if (hook >= LUAM_HOOK_LOG_DELIVERY) {
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
  int result = call_resume(lm, c, nargs);
  if (result == LUAM_PENDING) {
    lm->npending++;
    ls->npending++;
    if (!lm->mbox)
      return LUAM_PENDING;
    while (!sync.done)
      mbox_run_one(lm->mbox);
    return sync.result;
  }
  call_finish(lm, c, 0);
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
