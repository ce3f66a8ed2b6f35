/* luam_conf.c owns the translation from a configuration snapshot to luam's
 * options and the conf-backed eval callback. It never runs Lua and never
 * logs. luam_conf_load: main thread; a luam_conf_eval: its worker only. */
#include "luam_conf.h"

#include "buf.h"
#include "conf.h"
#include "panic.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *conf_dir_of(const struct conf *c)
{
  const char *p = conf_path(c);
  if (!p || !*p)
    return util_xstrdup(".");
  const char *slash = strrchr(p, '/');
  if (!slash)
    return util_xstrdup(".");
  if (slash == p)
    return util_xstrdup("/");
  return util_xstrndup(p, (size_t)(slash - p));
}

/* The scriptlet stanza's safety budgets and sandbox. Repeated scriptlet stanzas merge
 * (as in Momentum): the last one that sets an option wins. Without a
 * stanza the luam defaults apply (no script runs anyway). */
static int budgets_load(struct luam_opts *o, struct conf *c, char *err, size_t errlen)
{
  const struct conf_stanza *first = conf_stanza_first(c, "scriptlet");
  if (!first)
    return 0;
  const struct conf_view *iv = conf_stanza_view(first), *tv = iv, *mv = iv, *jv = iv, *sv = iv;
  for (const struct conf_stanza *sl = first; sl; sl = conf_stanza_next(sl)) {
    const struct conf_view *v = conf_stanza_view(sl);
    if (conf_is_set(v, CONF_SCRIPTLET_MAX_HOOK_INSTRUCTIONS))
      iv = v;
    if (conf_is_set(v, CONF_SCRIPTLET_MAX_HOOK_TIME_MS))
      tv = v;
    if (conf_is_set(v, CONF_SCRIPTLET_MAX_STATE_MEMORY))
      mv = v;
    if (conf_is_set(v, CONF_SCRIPTLET_JIT))
      jv = v;
    if (conf_is_set(v, CONF_SCRIPTLET_SANDBOX))
      sv = v;
  }
  int64_t instr = conf_int(iv, CONF_SCRIPTLET_MAX_HOOK_INSTRUCTIONS);
  int64_t ms = conf_int(tv, CONF_SCRIPTLET_MAX_HOOK_TIME_MS);
  uint64_t mem = conf_size(mv, CONF_SCRIPTLET_MAX_STATE_MEMORY);
  if (instr < LUAM_MIN_INSTRUCTIONS || ms < 1 || mem < LUAM_MIN_MEMORY) {
    snprintf(err, errlen,
             "scriptlet: max_hook_instructions must be >= %u, max_hook_time_ms >= 1 and "
             "max_state_memory >= %u bytes",
             LUAM_MIN_INSTRUCTIONS, LUAM_MIN_MEMORY);
    return -EINVAL;
  }
  o->max_instructions = (uint64_t)instr;
  o->max_time_ms = (uint64_t)ms;
  o->max_memory = mem > SIZE_MAX ? SIZE_MAX : (size_t)mem;
  o->jit = conf_bool(jv, CONF_SCRIPTLET_JIT);
  o->full_lua = !conf_bool(sv, CONF_SCRIPTLET_SANDBOX);
  return 0;
}

int luam_conf_load(struct luam_conf *lc, struct conf *c, const char *libdir, char *err,
                   size_t errlen)
{
  memset(lc, 0, sizeof *lc);
  char *dir = conf_dir_of(c);
  size_t n = 0, cap = 0;
  for (const struct conf_stanza *sl = conf_stanza_first(c, "scriptlet"); sl;
       sl = conf_stanza_next(sl)) {
    for (const struct conf_stanza *sc = conf_stanza_child(sl, "script"); sc;
         sc = conf_stanza_next(sc)) {
      const char *name = conf_stanza_instance(sc);
      const char *source = conf_str(conf_stanza_view(sc), CONF_SCRIPT_SOURCE);
      if (!source) {
        snprintf(err, errlen, "script %s: no source", name ? name : "?");
        goto fail;
      }
      char path[PATH_MAX];
      int rc = luam_resolve_source(source, dir, libdir, path, sizeof path);
      if (rc < 0) {
        snprintf(err, errlen, "script %s: source \"%s\" not found in %s or the bundled lua/ (%s)",
                 name ? name : "?", source, dir, strerror(-rc));
        goto fail;
      }
      if (n == cap) {
        cap = cap ? cap * 2 : 4;
        lc->scripts = util_xrealloc(lc->scripts, cap * sizeof *lc->scripts);
      }
      lc->scripts[n].name = util_xstrdup(name ? name : source);
      lc->scripts[n].path = util_xstrdup(path);
      n++;
    }
  }
  lc->opts.scripts = lc->scripts;
  lc->opts.nscripts = n;
  lc->opts.libdir = libdir ? util_xstrdup(libdir) : NULL;
  if (budgets_load(&lc->opts, c, err, errlen) < 0)
    goto fail;

  size_t nds = 0;
  for (const struct conf_stanza *st = conf_stanza_first(c, "datasource"); st;
       st = conf_stanza_next(st))
    nds++;
  lc->ds = util_xcalloc(nds ? nds : 1, sizeof *lc->ds);
  for (const struct conf_stanza *st = conf_stanza_first(c, "datasource"); st;
       st = conf_stanza_next(st)) {
    const struct conf_view *v = conf_stanza_view(st);
    struct luam_ds_conf *d = &lc->ds[lc->nds++];
    const char *name = conf_stanza_instance(st);
    size_t nuri = 0;
    const char *const *uris = conf_list(v, CONF_DS_URI, &nuri);
    d->name = util_xstrdup(name ? name : "");
    d->uri = nuri ? util_xstrdup(uris[0]) : NULL;
    if (!d->uri) {
      snprintf(err, errlen, "datasource %s: no uri", d->name);
      goto fail;
    }
    int64_t bt = conf_int(v, CONF_DS_BUSY_TIMEOUT_MS);
    d->busy_timeout_ms = bt > 0 ? (unsigned)(bt < 3600000 ? bt : 3600000) : 0;
    int64_t mr = conf_int(v, CONF_DS_MAX_ROWS);
    d->max_rows = mr > 0 ? (unsigned)mr : 0;
    if (!conf_bool(v, CONF_DS_NO_CACHE)) {
      d->cache_life = (unsigned)conf_interval(v, CONF_DS_CACHE_LIFE);
      d->cache_size = (unsigned)conf_int(v, CONF_DS_CACHE_SIZE);
    }
  }
  free(dir);
  return 0;
fail:
  free(dir);
  lc->opts.nscripts = n;
  luam_conf_done(lc);
  return -EINVAL;
}

void luam_conf_done(struct luam_conf *lc)
{
  if (!lc)
    return;
  for (size_t i = 0; i < lc->opts.nscripts; i++) {
    free((void *)(uintptr_t)lc->scripts[i].name);
    free((void *)(uintptr_t)lc->scripts[i].path);
  }
  free(lc->scripts);
  free((void *)(uintptr_t)lc->opts.libdir);
  for (size_t i = 0; i < lc->nds; i++) {
    free((void *)(uintptr_t)lc->ds[i].name);
    free((void *)(uintptr_t)lc->ds[i].uri);
  }
  free(lc->ds);
  memset(lc, 0, sizeof *lc);
}

struct luam_conf_eval {
  struct conf *conf;
  struct buf slot[LUAM_CONF_EVAL_SLOTS];
  unsigned next;
};

struct luam_conf_eval *luam_conf_eval_new(struct conf *c)
{
  struct luam_conf_eval *e = util_xcalloc(1, sizeof *e);
  e->conf = conf_ref(c);
  return e;
}

void luam_conf_eval_free(struct luam_conf_eval *e)
{
  if (!e)
    return;
  for (unsigned i = 0; i < LUAM_CONF_EVAL_SLOTS; i++)
    buf_done(&e->slot[i], 0);
  conf_unref(e->conf);
  free(e);
}

void luam_conf_eval_set(struct luam_conf_eval *e, struct conf *c)
{
  struct conf *old = e->conf;
  e->conf = conf_ref(c);
  conf_unref(old);
}

const char *luam_conf_eval(void *arg, const char *bgroup, const char *binding, const char *domain,
                           const char *option)
{
  struct luam_conf_eval *e = arg;
  if (strcmp(option, "#binding_exists") == 0)
    return binding && conf_binding_id(e->conf, binding) >= 0 ? "1" : NULL;
  struct buf *b = &e->slot[e->next++ % LUAM_CONF_EVAL_SLOTS];
  buf_reset(b);
  if (conf_eval(e->conf, bgroup, binding, domain, option, 0, b) < 0)
    return NULL;
  buf_append(b, "", 1);
  const char *s = (const char *)buf_head(b);
  if (strcmp(s, "(unset)") == 0)
    return NULL;
  return s;
}
