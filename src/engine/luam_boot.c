/* luam_boot.c owns the C half of boot.lua: the functions boot.lua is
 * handed (print, warn, report, config, binding_exists, datasource
 * information, DKIM signing, adaptive rules, the hook registry) and
 * finding which script a stack frame belongs to. It never blocks, never
 * hands a script an engine pointer, and logs only through the host's log
 * callback. Runs on the thread that owns the luam. */
#include "luam_int.h"
#include "adaptive_queue.h"
#include "luam_ds.h"

#include "clock.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* C half of boot.lua */

struct lstate *luam_ls_of(lua_State *L)
{
  if (luam_tls_ls)
    return luam_tls_ls;
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
const char *luam_stack_script(lua_State *co, struct lstate *ls, char *pos, size_t poslen)
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
  struct lstate *ls = luam_ls_of(L);
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
  luam_log(ls->lm, 2, calling_script(L, ls), "%s", lua_tostring(L, -1));
  return 0;
}

static int c_warn(lua_State *L)
{
  struct lstate *ls = luam_ls_of(L);
  luam_log(ls->lm, 1, calling_script(L, ls), "%s", luaL_checkstring(L, 1));
  return 0;
}

/* report(script, module, hook, error, fn): one hook failure, logged once
 * with the script and a line: the error's own position, else where the
 * state was near its memory limit, else where fn (the hook) is defined. */
static int c_report(lua_State *L)
{
  struct lstate *ls = luam_ls_of(L);
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
    luam_note_failure(lm, ls, lm->running->hook);
  else
    lm->stats.errors++;
  if (ls->oom)
    luam_log(lm, 0, script,
             "%s:%s: memory limit (%zu bytes) exceeded%s: %s; hook skipped (CONT), state will be "
             "recreated",
             mod, hook, ls->mem_limit, where, err);
  else
    luam_log(lm, 0, script, "%s:%s: %s%s; hook skipped (CONT)", mod, hook, err, where);
  return 0;
}

static int c_aborting(lua_State *L)
{
  struct lstate *ls = luam_ls_of(L);
  lua_pushboolean(L, ls->aborting || ls->oom);
  return 1;
}

static int c_hook_names(lua_State *L)
{
  lua_newtable(L);
  for (int i = 0; i < LUAM_HOOK_COUNT; i++) {
    lua_pushstring(L, luam_hook_name((enum luam_hook)i));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int c_note_hook(lua_State *L)
{
  struct lstate *ls = luam_ls_of(L);
  const char *h = luaL_checkstring(L, 1);
  for (int i = 0; i < LUAM_HOOK_COUNT; i++)
    if (strcmp(h, luam_hook_name((enum luam_hook)i)) == 0)
      ls->hookmask |= 1u << i;
  return 0;
}

static int c_current_script(lua_State *L)
{
  struct lstate *ls = luam_ls_of(L);
  luam_push_or_nil(L, ls->loading);
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
  struct lstate *ls = luam_ls_of(L);
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
  luam_push_or_nil(L, h->eval ? h->eval(h->arg, bg, b, d, opt) : NULL);
  return 1;
}

static int c_binding_exists(lua_State *L)
{
  struct lstate *ls = luam_ls_of(L);
  const char *name = luaL_checkstring(L, 1);
  const struct luam_host *h = &ls->lm->host;
  /* A binding exists when the configuration can evaluate in its scope. */
  lua_pushboolean(L, h->eval && h->eval(h->arg, NULL, name, NULL, "#binding_exists") != NULL);
  return 1;
}

/* C.dkim_sign(msg, options): true, or nil and the reason. */
static int c_dkim_sign(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
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
  struct lstate *ls = luam_ls_of(L);
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
  luam_ls_of(L)->lm->stats.cache_hits++;
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
  {"db_submit", luam_db_submit},
  {"dkim_sign", c_dkim_sign},
  {NULL, NULL},
};

void luam_boot_push(lua_State *L)
{
  lua_newtable(L);
  luaL_register(L, NULL, boot_funcs);
}
