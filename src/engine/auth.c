/* auth.c owns outbound_smtp_auth's per-unit resolution (Lua hook, then
 * authkeys' rule between message context and configuration, unusable
 * credentials refused with a reason) and each worker's table of
 * credentials by identity.
 *
 * Must never: log, print or persist a password or token; keep a password
 * outside the table (copies are wiped); block the worker (a Lua hook that
 * waits for a datasource finishes through a callback).
 * Threads: a struct auth and everything from it belong to one worker. */
#include "auth.h"

#include "authkeys.h"
#include "conf.h"
#include "ctx.h"
#include "dlist.h"
#include "luam.h"
#include "panic.h"
#include "policy.h"
#include "scheduler.h"
#include "secmem.h"
#include "spool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct cred {
  struct cred *next;
  uint64_t id;
  struct smtpc_auth a;
};

#define AUTH_BUCKETS 256u

struct auth {
  struct cred *tab[AUTH_BUCKETS];
  struct conf *enabled_conf; /* not referenced: compared only */
  bool enabled;
  unsigned pending;
  struct pending *waiting; /* resolutions waiting for Lua */
  char err[320];           /* why the last AUTH_CRED_UNUSABLE */
};

struct pending {
  struct pending *next, *prev; /* auth.waiting */
  struct auth *a;
  struct conf *c; /* referenced */
  struct policy_msg pm;
  char binding[SPOOL_NAME_MAX + 1];
  char domain[256];
  auth_ready_fn ready;
  void *arg;
};

struct auth *auth_new(void)
{
  return util_xcalloc(1, sizeof(struct auth));
}

static void wipe_str(const char *s)
{
  secmem_free((void *)(uintptr_t)s); /* wipes */
}

void auth_free(struct auth *a)
{
  if (a == NULL)
    return;
  for (unsigned i = 0; i < AUTH_BUCKETS; i++)
    for (struct cred *c = a->tab[i], *n; c; c = n) {
      n = c->next;
      wipe_str(c->a.user);
      wipe_str(c->a.pass);
      free(c);
    }
  free(a);
}

bool auth_enabled(struct auth *a, struct conf *c)
{
  if (a->enabled_conf != c) {
    a->enabled = conf_module_enabled(c, "outbound_smtp_auth");
    a->enabled_conf = c;
  }
  return a->enabled;
}

unsigned auth_pending(const struct auth *a)
{
  return a->pending;
}

const struct smtpc_auth *auth_creds(struct auth *a, uint64_t id)
{
  if (id == 0 || id == AUTH_CRED_UNUSABLE)
    return NULL;
  for (struct cred *c = a->tab[id % AUTH_BUCKETS]; c; c = c->next)
    if (c->id == id)
      return &c->a;
  return NULL;
}

/* The reason a resolution gave AUTH_CRED_UNUSABLE: names keys and the
 * mechanism asked for, never a user or password. */
IMPETUS_PRINTF(2, 3)
static uint64_t unusable(struct auth *a, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(a->err, sizeof a->err, fmt, ap);
  va_end(ap);
  return AUTH_CRED_UNUSABLE;
}

/* A value from a message (x-context, Lua) for a log line: cut, printable. */
static const char *shown(const char *s, char *out, size_t n)
{
  size_t k = 0;
  for (; *s && k + 1 < n; s++)
    out[k++] = (*s >= 0x20 && *s < 0x7f && *s != '"') ? *s : '?';
  out[k] = '\0';
  return out;
}

/* The unit's credentials per authkeys' rule, entered in the table. */
static uint64_t finish(struct auth *a, struct conf *c, const struct ctx *mess, const char *binding,
                       const char *domain)
{
  const struct conf_view *v = conf_view_get(c, binding, domain);
  if (v == NULL)
    v = conf_view_get(c, NULL, domain);
  const char *m[AUTHKEY__COUNT] = {0}, *cf[AUTHKEY__COUNT] = {0};
  static const enum conf_opt opt[AUTHKEY__COUNT] = {
    [AUTHKEY_TYPE] = CONF_OUTBOUND_SMTP_AUTH_TYPE, [AUTHKEY_USER] = CONF_OUTBOUND_SMTP_AUTH_USER,
    [AUTHKEY_PASS] = CONF_OUTBOUND_SMTP_AUTH_PASS, [AUTHKEY_KEY] = CONF_OUTBOUND_SMTP_AUTH_KEY};
  bool off = false; /* a scope wrote User, Pass or Type = false */
  for (int k = 0; k < AUTHKEY__COUNT; k++) {
    m[k] = mess ? ctx_get(mess, authkeys_ctx_key((enum authkey)k)) : NULL;
    cf[k] = v ? conf_str(v, opt[k]) : NULL;
    off |= v && k != AUTHKEY_KEY && conf_is_off(v, opt[k]);
  }
  if (off)
    cf[AUTHKEY_TYPE] = cf[AUTHKEY_USER] = cf[AUTHKEY_PASS] = NULL;
  const char *missing = authkeys_incomplete(m);
  if (missing)
    return unusable(a, "the message context sets %s but not %s (a user and its password come "
                       "from one source)", missing == authkeys_ctx_key(AUTHKEY_PASS)
                                             ? authkeys_ctx_key(AUTHKEY_USER)
                                             : authkeys_ctx_key(AUTHKEY_PASS), missing);
  const char *user = authkeys_pick(AUTHKEY_USER, m, cf);
  const char *pass = authkeys_pick(AUTHKEY_PASS, m, cf);
  const char *type = authkeys_pick(AUTHKEY_TYPE, m, cf);
  if (user == NULL)
    return 0; /* no user: no AUTH (as Momentum) */
  if (pass == NULL)
    pass = "";
  enum smtpc_auth_type t = AUTH_TYPE_DEFAULT;
  char tb[65];
  if (type && authkeys_mech_parse(type, &t) < 0)
    return unusable(a, "%s \"%s\" is not a supported mechanism (%s)",
                    authkeys_ctx_key(AUTHKEY_TYPE), shown(type, tb, sizeof tb),
                    authkeys_mech_list());
  uint64_t id = sched_cred_identity(authkeys_mech_name(t), user, pass);
  if (id == AUTH_CRED_UNUSABLE)
    id--; /* reserved */
  if (auth_creds(a, id))
    return id;
  struct cred *cr = util_xcalloc(1, sizeof *cr);
  cr->id = id;
  cr->a.type = t;
  cr->a.user = secmem_xstrdup(user); /* out of core dumps, wiped when freed */
  cr->a.pass = secmem_xstrdup(pass);
  cr->next = a->tab[id % AUTH_BUCKETS];
  a->tab[id % AUTH_BUCKETS] = cr;
  return id;
}

const char *auth_error(const struct auth *a)
{
  return a->err;
}

static void unlink_pending(struct auth *a, struct pending *p)
{
  DLIST_UNLINK_HEAD(&a->waiting, p);
}

void auth_drop_pending(struct auth *a, void (*drop)(void *arg))
{
  if (a == NULL)
    return;
  while (a->waiting) {
    struct pending *p = a->waiting;
    unlink_pending(a, p);
    policy_msg_close(&p->pm);
    conf_unref(p->c);
    a->pending--;
    drop(p->arg);
    free(p);
  }
}

static void on_hook_done(void *arg, int result)
{
  (void)result;
  struct pending *p = arg;
  struct auth *a = p->a;
  unlink_pending(a, p);
  uint64_t id = finish(a, p->c, p->pm.m.mess, p->binding, p->domain);
  policy_msg_close(&p->pm);
  conf_unref(p->c);
  a->pending--;
  auth_ready_fn ready = p->ready;
  void *rarg = p->arg;
  free(p);
  ready(rarg, id);
}

int auth_resolve(struct auth *a, struct policy_worker *pw, struct conf *c, struct spool *sp,
                 const struct spool_msg *sm, const char *binding, const char *domain,
                 uint64_t *cred_id, auth_ready_fn ready, void *arg)
{
  *cred_id = 0;
  if (!auth_enabled(a, c))
    return 0;
  struct luam *lm = policy_worker_luam(pw);
  bool hook = lm && luam_has_hook(lm, LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG);
  if (!hook && (sm->mess || sm->mess_empty)) {
    /* dictionaries in memory (or known to be empty) and nothing can change
     * them: read in place, no copy and no disk read */
    *cred_id = finish(a, c, sm->mess, binding, domain);
    return 0;
  }
  struct pending *p = util_xcalloc(1, sizeof *p);
  p->a = a;
  p->c = conf_ref(c);
  snprintf(p->binding, sizeof p->binding, "%s", binding ? binding : "default");
  snprintf(p->domain, sizeof p->domain, "%s", domain);
  p->ready = ready;
  p->arg = arg;
  policy_msg_open(&p->pm, sp, sm, c);
  a->pending++;
  if (hook && luam_call_auth_config(lm, &p->pm.h, policy_msg_ops(), p->domain, on_hook_done, p) ==
                LUAM_PENDING) {
    p->next = a->waiting;
    if (a->waiting)
      a->waiting->prev = p;
    a->waiting = p;
    return 1;
  }
  *cred_id = finish(a, c, p->pm.m.mess, p->binding, p->domain);
  policy_msg_close(&p->pm);
  conf_unref(p->c);
  a->pending--;
  free(p);
  return 0;
}
