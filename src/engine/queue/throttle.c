/* throttle.c owns throttle specs, GCRA buckets and the bucket registry.
 * Buckets: any thread, lock-free (one CAS per take). Registry: any thread,
 * under its mutex, off the hot path (queue set-up only). Never logs. */
#include "throttle.h"
#include "panic.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THROTTLE_MAX 1000000000u

static int parse_u32(const char **pp, uint32_t *out)
{
  const char *p = *pp;
  while (*p == ' ' || *p == '\t')
    p++;
  if (*p < '0' || *p > '9')
    return -EINVAL;
  uint64_t v = 0;
  while (*p >= '0' && *p <= '9') {
    v = v * 10 + (uint64_t)(*p - '0');
    if (v > THROTTLE_MAX)
      return -EINVAL;
    p++;
  }
  while (*p == ' ' || *p == '\t')
    p++;
  *out = (uint32_t)v;
  *pp = p;
  return 0;
}

int throttle_parse(const char *s, struct throttle_spec *out)
{
  if (s == NULL)
    return -EINVAL;
  struct throttle_spec t = {.per_s = 1};
  const char *p = s;
  if (parse_u32(&p, &t.n) < 0)
    return -EINVAL;
  if (*p == '/') {
    p++;
    if (parse_u32(&p, &t.per_s) < 0 || t.per_s == 0)
      return -EINVAL;
  }
  if (*p != '\0')
    return -EINVAL;
  *out = t;
  return 0;
}

void throttle_init(struct throttle *t, const struct throttle_spec *spec)
{
  atomic_init(&t->tat_ns, 0);
  t->interval_ns = spec->n ? (uint64_t)spec->per_s * 1000000000u / spec->n : 0;
  if (spec->n && t->interval_ns == 0)
    t->interval_ns = 1;
}

uint64_t throttle_take(struct throttle *t, uint64_t now_ns)
{
  if (t->interval_ns == 0)
    return 0;
  uint64_t tat = atomic_load_explicit(&t->tat_ns, memory_order_relaxed);
  for (;;) {
    if (now_ns < tat)
      return tat - now_ns;
    /* The first take, or one after an idle spell, starts from now: no
     * credit accumulates while idle (strict pacing). */
    uint64_t next = now_ns + t->interval_ns;
    if (atomic_compare_exchange_weak_explicit(&t->tat_ns, &tat, next, memory_order_relaxed,
                                              memory_order_relaxed))
      return 0;
  }
}

struct entry {
  struct entry *next;
  char *key;
  struct throttle bucket;
};

struct throttle_registry {
  pthread_mutex_t lock;
  struct entry *head;
};

struct throttle_registry *throttle_registry_new(void)
{
  struct throttle_registry *r = util_xcalloc(1, sizeof *r);
  pthread_mutex_init(&r->lock, NULL);
  return r;
}

void throttle_registry_free(struct throttle_registry *r)
{
  if (r == NULL)
    return;
  for (struct entry *e = r->head, *n; e; e = n) {
    n = e->next;
    free(e->key);
    free(e);
  }
  pthread_mutex_destroy(&r->lock);
  free(r);
}

struct throttle *throttle_registry_get(struct throttle_registry *r, const char *scope_id,
                                       const char *option, const struct throttle_spec *spec)
{
  if (spec->n == 0)
    return NULL;
  /* Option names are case-insensitive; scope names are compared as given
   * (binding names are case-sensitive). */
  char *opt = util_xstrdup(option);
  for (char *p = opt; *p; p++)
    if (*p >= 'A' && *p <= 'Z')
      *p = (char)(*p + 32);
  size_t klen = strlen(scope_id) + strlen(opt) + 32;
  char *key = util_xmalloc(klen);
  snprintf(key, klen, "%s\x1f%s\x1f%u/%u", scope_id, opt, spec->n, spec->per_s);
  free(opt);
  pthread_mutex_lock(&r->lock);
  struct entry *e;
  for (e = r->head; e; e = e->next)
    if (!strcmp(e->key, key))
      break;
  if (e == NULL) {
    e = util_xcalloc(1, sizeof *e);
    e->key = key;
    key = NULL;
    throttle_init(&e->bucket, spec);
    e->next = r->head;
    r->head = e;
  }
  pthread_mutex_unlock(&r->lock);
  free(key);
  return &e->bucket;
}
