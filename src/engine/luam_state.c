/* luam_state.c owns a luam's Lua states: the allocator that counts their
 * memory, the instruction and time budget (a count hook), the scriptlet
 * sandbox, loading boot.lua and the scripts, and retiring or recreating
 * a state. It never lets a script error or runaway reach its caller and
 * never blocks; it logs only through the host's log callback. Runs on
 * the thread that owns the luam (the allocator and hook on whichever
 * thread runs that state's code, which is the same one). */
#include "luam_int.h"

#include "clock.h"

#include <errno.h>
#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LUAM_MAX_SCRIPT_BYTES (16u << 20)
#define LUAM_MAX_LOG_TEXT 4096

/* The state running on this thread right now (budget hook, allocator). */
__thread struct lstate *luam_tls_ls;

/* ------------------------------------------------------------------ */
/* logging */

IMPETUS_PRINTF(4, 5)
void luam_log(const struct luam *lm, int level, const char *script, const char *fmt, ...)
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
void luam_note_failure(struct luam *lm, const struct lstate *ls, enum luam_hook hook)
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

size_t luam_state_mem(struct lstate *ls)
{
  if (ls->counting)
    return ls->mem;
  return (size_t)lua_gc(ls->L, LUA_GCCOUNT, 0) * 1024u + (size_t)lua_gc(ls->L, LUA_GCCOUNTB, 0);
}

/* ------------------------------------------------------------------ */
/* budget */

void luam_budget_hook(lua_State *L, lua_Debug *ar)
{
  struct lstate *ls = luam_tls_ls;
  if (!ls)
    return;
  ls->instr += LUAM_HOOK_EVERY;
  if (ls->counting && ls->mem > ls->mem_limit / 4 * 3 && !ls->aborting &&
      lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    snprintf(ls->near, sizeof ls->near, "%s:%d", ar->short_src, ar->currentline);
  if (!ls->aborting &&
      (ls->instr > ls->max_instr || clock_mono_ns() > ls->deadline_ns)) {
    /* From now on check every instruction, so that a script catching the
     * error with pcall meets it again at its next instruction. */
    ls->aborting = 1;
    lua_sethook(L, luam_budget_hook, LUA_MASKCOUNT, 1);
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
  if (!ls->counting && luam_state_mem(ls) > ls->mem_limit) {
    ls->oom = 1;
    luaL_error(L, "not enough memory");
  }
}


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

void luam_scripts_free(struct script *s, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free(s[i].name);
    free(s[i].path);
    free(s[i].chunk);
    free(s[i].text);
  }
  free(s);
}

int luam_scripts_load(const struct luam_opts *o, struct script **out, char *err, size_t errlen)
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
      luam_scripts_free(s, o->nscripts);
      return rc;
    }
  }
  *out = s;
  return 0;
}

void luam_state_free(struct lstate *ls)
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
  luam_run_begin(ls, clock_mono_ns(), 0, 0);
  int rc = lua_pcall(ls->L, nargs, nres, 0);
  luam_run_end(ls);
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

struct lstate *luam_state_new(struct luam *lm, char *err, size_t errlen)
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
  lua_sethook(L, luam_budget_hook, LUA_MASKCOUNT, LUAM_HOOK_EVERY);
  lua_pushlightuserdata(L, ls);
  lua_setfield(L, LUA_REGISTRYINDEX, "impetus.ls");

  ls->msg_mt_ref = luam_msg_metatable(L);

  /* package.path: the bundled library first, then each script's dir. */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", lm->libdir, lm->libdir);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);

  char path[4096];
  snprintf(path, sizeof path, "%s/impetus/boot.lua", lm->libdir);
  if (luaL_loadfile(L, path) != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    luam_state_free(ls);
    return NULL;
  }
  luam_boot_push(L);
  if (state_pcall(ls, 1, 1, err, errlen) < 0) {
    luam_state_free(ls);
    return NULL;
  }
  if (!lua_isfunction(L, -1)) {
    snprintf(err, errlen, "%s: did not return the dispatcher", path);
    luam_state_free(ls);
    return NULL;
  }
  ls->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  for (size_t i = 0; i < lm->nscripts; i++) {
    const struct script *s = &lm->scripts[i];
    if (luaL_loadbuffer(L, s->text, s->len, s->chunk) != 0) {
      snprintf(err, errlen, "%s", lua_tostring(L, -1));
      luam_state_free(ls);
      return NULL;
    }
    ls->loading = s->name;
    int rc = state_pcall(ls, 0, 0, err, errlen);
    ls->loading = NULL;
    if (rc < 0 || ls->oom) {
      if (rc == 0)
        snprintf(err, errlen, "%s: memory limit exceeded while loading", s->path);
      luam_state_free(ls);
      return NULL;
    }
  }
  lua_gc(L, LUA_GCCOLLECT, 0);
  return ls;
}

/* Retire ls (it keeps serving its pending calls) or free it now. */
void luam_state_retire(struct luam *lm, struct lstate *ls)
{
  if (!ls)
    return;
  if (ls->npending == 0) {
    luam_state_free(ls);
    return;
  }
  ls->next_retired = lm->retired;
  lm->retired = ls;
}

void luam_state_reap(struct luam *lm, struct lstate *ls)
{
  if (ls == lm->cur || ls->npending)
    return;
  for (struct lstate **pp = &lm->retired; *pp; pp = &(*pp)->next_retired)
    if (*pp == ls) {
      *pp = ls->next_retired;
      luam_state_free(ls);
      return;
    }
}

/* Replace a state that hit its memory limit with a fresh one. */
void luam_state_recreate(struct luam *lm)
{
  char err[512];
  struct lstate *fresh = luam_state_new(lm, err, sizeof err);
  if (!fresh) {
    luam_log(lm, 0, NULL, "recreating the Lua state failed: %s; keeping the old one", err);
    lm->cur->oom = 0;
    return;
  }
  lm->stats.recreated++;
  luam_log(lm, 1, NULL, "Lua state recreated after exceeding its memory limit (%zu bytes)",
           lm->max_mem);
  struct lstate *old = lm->cur;
  lm->cur = fresh;
  luam_state_retire(lm, old);
}
