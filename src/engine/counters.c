/* counters.c owns the engine's operating counters (see counters.h): one
 * slot per writer thread, relaxed atomics, a bounded (binding, domain)
 * table per slot. Never allocates after counters_init, never logs, never
 * locks. Writers: the slot's own thread; readers: any thread. */
#include "counters.h"

#include "hash.h"
#include "panic.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct centry {
  _Atomic uint32_t state; /* 0 empty, 1 published (names readable) */
  char binding[COUNTERS_NAME_MAX];
  char domain[COUNTERS_NAME_MAX];
  _Atomic uint64_t c[COUNTERS_KINDS];
};

struct cslot {
  struct centry e[COUNTERS_KEYS];
  uint32_t used;                      /* writer-only */
  _Atomic uint64_t total[COUNTERS_KINDS];
  _Atomic uint64_t ev[COUNTERS_EVENTS];
  _Atomic uint64_t lua[COUNTERS_LUA_HOOKS][COUNTERS_LUA_EVENTS];
};

static struct cslot *slots;
static unsigned nslots;

#define OTHER_IDX (COUNTERS_KEYS - 1) /* the overflow entry */

int counters_init(unsigned n)
{
  if (n == 0)
    return -EINVAL;
  slots = calloc(n, sizeof *slots);
  if (slots == NULL)
    return -ENOMEM;
  nslots = n;
  return 0;
}

void counters_done(void)
{
  free(slots);
  slots = NULL;
  nslots = 0;
}

static void name_copy(char *d, const char *s)
{
  size_t l = strnlen(s, COUNTERS_NAME_MAX - 1);
  memcpy(d, s, l);
  d[l] = '\0';
}

static struct centry *lookup(struct cslot *s, const char *binding, const char *domain)
{
  char key[2 * COUNTERS_NAME_MAX + 2];
  size_t bl = strnlen(binding, COUNTERS_NAME_MAX - 1), dl = strnlen(domain, COUNTERS_NAME_MAX - 1);
  memcpy(key, binding, bl);
  key[bl] = '\0';
  for (size_t i = 0; i < dl; i++) {
    char ch = domain[i];
    key[bl + 1 + i] = (char)((ch >= 'A' && ch <= 'Z') ? ch + 32 : ch);
  }
  key[bl + 1 + dl] = '\0';
  size_t h = (size_t)hash_sip(hash_process_key(), key, bl + 1 + dl) % OTHER_IDX;
  for (size_t probe = 0; probe < OTHER_IDX; probe++) {
    struct centry *e = &s->e[(h + probe) % OTHER_IDX];
    if (atomic_load_explicit(&e->state, memory_order_relaxed) == 0) {
      if (s->used >= OTHER_IDX * 3 / 4)
        break; /* keep probes short: the rest count as "other" */
      name_copy(e->binding, binding);
      name_copy(e->domain, key + bl + 1);
      atomic_store_explicit(&e->state, 1, memory_order_release);
      s->used++;
      return e;
    }
    if (!strcmp(e->binding, binding) && !strcasecmp(e->domain, domain))
      return e;
  }
  struct centry *o = &s->e[OTHER_IDX];
  if (atomic_load_explicit(&o->state, memory_order_relaxed) == 0) {
    strcpy(o->binding, "other");
    strcpy(o->domain, "other");
    atomic_store_explicit(&o->state, 1, memory_order_release);
  }
  return o;
}

void counters_add(unsigned slot, const char *binding, const char *domain, enum counters_kind k,
                  uint64_t n)
{
  if (slots == NULL || slot >= nslots || (unsigned)k >= COUNTERS_KINDS)
    return;
  struct cslot *s = &slots[slot];
  atomic_fetch_add_explicit(&s->total[k], n, memory_order_relaxed);
  struct centry *e = lookup(s, binding && *binding ? binding : "default", domain ? domain : "");
  atomic_fetch_add_explicit(&e->c[k], n, memory_order_relaxed);
}

void counters_event(unsigned slot, enum counters_event ev)
{
  if (slots == NULL || slot >= nslots || (unsigned)ev >= COUNTERS_EVENTS)
    return;
  atomic_fetch_add_explicit(&slots[slot].ev[ev], 1, memory_order_relaxed);
}

void counters_lua(unsigned slot, unsigned hook, unsigned ev)
{
  if (slots == NULL || slot >= nslots || hook >= COUNTERS_LUA_HOOKS || ev >= COUNTERS_LUA_EVENTS)
    return;
  atomic_fetch_add_explicit(&slots[slot].lua[hook][ev], 1, memory_order_relaxed);
  if (ev != 0)
    atomic_fetch_add_explicit(&slots[slot].ev[COUNTERS_LUA_ERRORS], 1, memory_order_relaxed);
}

uint64_t counters_lua_total(unsigned hook, unsigned ev)
{
  uint64_t t = 0;
  if (hook >= COUNTERS_LUA_HOOKS || ev >= COUNTERS_LUA_EVENTS)
    return 0;
  for (unsigned i = 0; i < nslots; i++)
    t += atomic_load_explicit(&slots[i].lua[hook][ev], memory_order_relaxed);
  return t;
}

void counters_totals(uint64_t out[COUNTERS_KINDS])
{
  for (unsigned k = 0; k < COUNTERS_KINDS; k++)
    out[k] = 0;
  for (unsigned i = 0; i < nslots; i++)
    for (unsigned k = 0; k < COUNTERS_KINDS; k++)
      out[k] += atomic_load_explicit(&slots[i].total[k], memory_order_relaxed);
}

uint64_t counters_event_total(enum counters_event ev)
{
  uint64_t t = 0;
  for (unsigned i = 0; i < nslots && (unsigned)ev < COUNTERS_EVENTS; i++)
    t += atomic_load_explicit(&slots[i].ev[ev], memory_order_relaxed);
  return t;
}

void counters_foreach(void (*fn)(void *arg, const char *binding, const char *domain,
                                 const uint64_t c[COUNTERS_KINDS]),
                      void *arg)
{
  for (unsigned i = 0; i < nslots; i++)
    for (unsigned j = 0; j < COUNTERS_KEYS; j++) {
      struct centry *e = &slots[i].e[j];
      if (atomic_load_explicit(&e->state, memory_order_acquire) == 0)
        continue;
      uint64_t c[COUNTERS_KINDS];
      for (unsigned k = 0; k < COUNTERS_KINDS; k++)
        c[k] = atomic_load_explicit(&e->c[k], memory_order_relaxed);
      fn(arg, e->binding, e->domain, c);
    }
}

const char *counters_kind_name(enum counters_kind k)
{
  static const char *const names[COUNTERS_KINDS] = {
    [COUNTERS_RECEIVED] = "received", [COUNTERS_DELIVERED] = "delivered",
    [COUNTERS_TRANSIENT] = "transient", [COUNTERS_PERMANENT] = "permanent"};
  return (unsigned)k < COUNTERS_KINDS ? names[k] : "?";
}

const char *counters_event_name(enum counters_event e)
{
  static const char *const names[COUNTERS_EVENTS] = {
    [COUNTERS_CONN_OPENED] = "conn_opened", [COUNTERS_CONN_FAILED] = "conn_failed",
    [COUNTERS_TLS_OK] = "tls_ok",           [COUNTERS_TLS_FAILED] = "tls_failed",
    [COUNTERS_AUTH_OK] = "auth_ok",         [COUNTERS_AUTH_FAILED] = "auth_failed",
    [COUNTERS_LUA_ERRORS] = "lua_errors"};
  return (unsigned)e < COUNTERS_EVENTS ? names[e] : "?";
}
