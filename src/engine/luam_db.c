/* luam_db.c owns msys.db on the hook's side: packing a query's
 * parameters into a luam_job, handing it to luam_ds's pool once the hook
 * has yielded, and resuming the hook with the rows when the answer is
 * posted back. It never blocks (SQLite runs on the pool's threads) and
 * logs a failed query at most once per datasource per 10 s. Runs on the
 * thread that owns the luam; luam_db_complete is posted to that thread. */
#include "luam_int.h"
#include "luam_ds.h"

#include "clock.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS_LOG_INTERVAL_NS (10ull * 1000000000ull) /* one datasource failure line per 10 s */

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
int luam_db_submit(lua_State *L)
{
  struct lstate *ls = luam_ls_of(L);
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
  luam_log(lm, 0, NULL,
           "%s: msys.db query failed: %s; the hook gets the error and the message "
           "goes on%s",
           luam_hook_name(c->hook), err, more);
  lm->dslog[slot].log_ns = now;
  lm->dslog[slot].suppressed = 0;
}

void luam_db_complete(void *arg)
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
  int result = luam_call_resume(lm, c, 2);
  if (result == LUAM_PENDING)
    return;
  void (*done)(void *, int) = c->done;
  void *done_arg = c->done_arg;
  luam_call_finish(lm, c, 1);
  if (done)
    done(done_arg, result);
}
