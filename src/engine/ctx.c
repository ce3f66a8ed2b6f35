/* ctx.c owns the message-context dictionary: an open-addressing hash table
 * of immutable entries published with release stores, so one writer and
 * any number of readers need no lock. It never frees memory a reader may
 * still see except in ctx_quiesce/ctx_free (the rule in ctx.h), never logs,
 * and never writes secret entries into a serialised form. Secret entries
 * live in secmem (pages left out of core dumps, wiped when freed).
 * Threads: one writer (set/delete/quiesce/free), any readers. */
#include "ctx.h"

#include "panic.h"
#include "secmem.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct ctx_entry {
  uint32_t hash;
  uint32_t flags;
  uint32_t klen;
  uint32_t vlen;
  char data[]; /* key NUL value NUL */
};

struct ctx_tab {
  size_t cap; /* power of two */
  _Atomic(struct ctx_entry *) slot[];
};

struct ctx {
  _Atomic(struct ctx_tab *) tab;
  atomic_size_t live;   /* live entries (readers read it relaxed) */
  size_t used;          /* non-NULL slots in tab, tombstones included (writer only) */
  void **retired;       /* entries, or tables tagged with bit 0 (writer only) */
  size_t nretired, capretired;
};

/* The tombstone: a deleted slot. Never dereferenced for its content. */
static struct ctx_entry tombstone;

static const char builtin_secret[] = "outbound_smtp_auth_pass";
static char **secret_keys;
static size_t nsecret_keys;

static uint32_t hash_key(const char *k, size_t n)
{
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (uint8_t)k[i];
    h *= 16777619u;
  }
  return h;
}

bool ctx_key_is_secret(const char *key, size_t klen)
{
  if (klen == sizeof(builtin_secret) - 1 && !memcmp(key, builtin_secret, klen))
    return true;
  for (size_t i = 0; i < nsecret_keys; i++)
    if (strlen(secret_keys[i]) == klen && !memcmp(secret_keys[i], key, klen))
      return true;
  return false;
}

int ctx_secret_keys_set(const char *const *keys, size_t n)
{
  for (size_t i = 0; i < nsecret_keys; i++)
    free(secret_keys[i]);
  free(secret_keys);
  secret_keys = NULL;
  nsecret_keys = 0;
  if (n == 0)
    return 0;
  secret_keys = calloc(n, sizeof(*secret_keys));
  if (!secret_keys)
    return -ENOMEM;
  for (size_t i = 0; i < n; i++) {
    secret_keys[i] = strdup(keys[i]);
    if (!secret_keys[i])
      return -ENOMEM;
    nsecret_keys++;
  }
  return 0;
}

struct ctx *ctx_new(void)
{
  return calloc(1, sizeof(struct ctx));
}

static void free_entry(struct ctx_entry *e)
{
  if (!e || e == &tombstone)
    return;
  if (e->flags & CTX_F_SECRET)
    secmem_free(e); /* wiped; its pages were never in a core dump */
  else
    free(e);
}

static void retire(struct ctx *c, void *p)
{
  if (c->nretired == c->capretired) {
    c->capretired = c->capretired ? c->capretired * 2 : 8;
    c->retired = util_xrealloc(c->retired, c->capretired * sizeof(void *));
  }
  c->retired[c->nretired++] = p;
}

void ctx_quiesce(struct ctx *c)
{
  if (!c)
    return;
  for (size_t i = 0; i < c->nretired; i++) {
    uintptr_t p = (uintptr_t)c->retired[i];
    if (p & 1u)
      free((void *)(p & ~(uintptr_t)1));
    else
      free_entry((struct ctx_entry *)p);
  }
  c->nretired = 0;
}

void ctx_free(struct ctx *c)
{
  if (!c)
    return;
  ctx_quiesce(c);
  free(c->retired);
  struct ctx_tab *t = atomic_load_explicit(&c->tab, memory_order_relaxed);
  if (t) {
    for (size_t i = 0; i < t->cap; i++)
      free_entry(atomic_load_explicit(&t->slot[i], memory_order_relaxed));
    free(t);
  }
  free(c);
}

static bool entry_is(const struct ctx_entry *e, uint32_t h, const char *k, size_t klen)
{
  return e != &tombstone && e->hash == h && e->klen == klen && !memcmp(e->data, k, klen);
}

/* Reader-side lookup in one table snapshot. */
static const struct ctx_entry *lookup(const struct ctx *c, const char *k, size_t klen)
{
  if (!c || !k)
    return NULL;
  const struct ctx_tab *t = atomic_load_explicit(&c->tab, memory_order_acquire);
  if (!t)
    return NULL;
  uint32_t h = hash_key(k, klen);
  size_t mask = t->cap - 1;
  for (size_t i = h & mask, n = 0; n < t->cap; i = (i + 1) & mask, n++) {
    const struct ctx_entry *e = atomic_load_explicit(&t->slot[i], memory_order_acquire);
    if (!e)
      return NULL;
    if (entry_is(e, h, k, klen))
      return e;
  }
  return NULL;
}

const char *ctx_getn(const struct ctx *c, const char *key, size_t klen, size_t *vlen)
{
  const struct ctx_entry *e = lookup(c, key, klen);
  if (!e)
    return NULL;
  if (vlen)
    *vlen = e->vlen;
  return e->data + e->klen + 1;
}

const char *ctx_get(const struct ctx *c, const char *key)
{
  return key ? ctx_getn(c, key, strlen(key), NULL) : NULL;
}

bool ctx_exists(const struct ctx *c, const char *key)
{
  return ctx_get(c, key) != NULL;
}

size_t ctx_count(const struct ctx *c)
{
  return c ? atomic_load_explicit(&c->live, memory_order_relaxed) : 0;
}

/* Writer: publish a table of at least 2 * live + 8 slots holding the live entries. */
static void grow(struct ctx *c)
{
  struct ctx_tab *old = atomic_load_explicit(&c->tab, memory_order_relaxed);
  size_t live = atomic_load_explicit(&c->live, memory_order_relaxed);
  size_t cap = 8;
  while (cap < (live + 1) * 2)
    cap *= 2;
  struct ctx_tab *t = util_xcalloc(1, sizeof(*t) + cap * sizeof(t->slot[0]));
  t->cap = cap;
  size_t used = 0;
  if (old) {
    for (size_t i = 0; i < old->cap; i++) {
      struct ctx_entry *e = atomic_load_explicit(&old->slot[i], memory_order_relaxed);
      if (!e || e == &tombstone)
        continue;
      size_t j = e->hash & (cap - 1);
      while (atomic_load_explicit(&t->slot[j], memory_order_relaxed))
        j = (j + 1) & (cap - 1);
      atomic_store_explicit(&t->slot[j], e, memory_order_relaxed);
      used++;
    }
  }
  atomic_store_explicit(&c->tab, t, memory_order_release);
  c->used = used;
  if (old)
    retire(c, (void *)((uintptr_t)old | 1u));
}

int ctx_setn(struct ctx *c, const char *key, size_t klen, const char *value, size_t vlen,
             unsigned flags)
{
  if (!c || !key || !value || klen == 0)
    return -EINVAL;
  if (klen > CTX_KEY_MAX || vlen > CTX_VALUE_MAX)
    return -E2BIG;
  if (memchr(key, 0, klen) || memchr(value, 0, vlen))
    return -EINVAL;
  struct ctx_tab *t = atomic_load_explicit(&c->tab, memory_order_relaxed);
  if (!t || (c->used + 1) * 10 > t->cap * 7) {
    grow(c);
    t = atomic_load_explicit(&c->tab, memory_order_relaxed);
  }
  uint32_t h = hash_key(key, klen);
  size_t mask = t->cap - 1, i = h & mask, free_slot = SIZE_MAX;
  struct ctx_entry *old = NULL;
  for (;;) {
    struct ctx_entry *e = atomic_load_explicit(&t->slot[i], memory_order_relaxed);
    if (!e)
      break;
    if (e == &tombstone) {
      if (free_slot == SIZE_MAX)
        free_slot = i;
    } else if (entry_is(e, h, key, klen)) {
      old = e;
      break;
    }
    i = (i + 1) & mask;
  }
  if (!old && atomic_load_explicit(&c->live, memory_order_relaxed) >= CTX_ENTRIES_MAX)
    return -E2BIG;
  bool secret = (flags & CTX_F_SECRET) || ctx_key_is_secret(key, klen);
  size_t size = sizeof(struct ctx_entry) + klen + vlen + 2;
  struct ctx_entry *n = secret ? secmem_alloc(size) : malloc(size);
  if (!n)
    return -ENOMEM;
  n->hash = h;
  n->klen = (uint32_t)klen;
  n->vlen = (uint32_t)vlen;
  n->flags = secret ? CTX_F_SECRET : 0;
  memcpy(n->data, key, klen);
  n->data[klen] = 0;
  memcpy(n->data + klen + 1, value, vlen);
  n->data[klen + 1 + vlen] = 0;
  if (old) {
    atomic_store_explicit(&t->slot[i], n, memory_order_release);
    retire(c, old);
    return 0;
  }
  if (free_slot != SIZE_MAX) {
    i = free_slot; /* reuse a tombstone: used does not change */
  } else {
    c->used++;
  }
  atomic_store_explicit(&t->slot[i], n, memory_order_release);
  atomic_store_explicit(&c->live, atomic_load_explicit(&c->live, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  return 0;
}

int ctx_set(struct ctx *c, const char *key, const char *value)
{
  if (!key || !value)
    return -EINVAL;
  return ctx_setn(c, key, strlen(key), value, strlen(value), 0);
}

int ctx_delete(struct ctx *c, const char *key)
{
  if (!c || !key)
    return -ENOENT;
  struct ctx_tab *t = atomic_load_explicit(&c->tab, memory_order_relaxed);
  if (!t)
    return -ENOENT;
  size_t klen = strlen(key);
  uint32_t h = hash_key(key, klen);
  size_t mask = t->cap - 1;
  for (size_t i = h & mask, n = 0; n < t->cap; i = (i + 1) & mask, n++) {
    struct ctx_entry *e = atomic_load_explicit(&t->slot[i], memory_order_relaxed);
    if (!e)
      return -ENOENT;
    if (entry_is(e, h, key, klen)) {
      atomic_store_explicit(&t->slot[i], &tombstone, memory_order_release);
      atomic_store_explicit(&c->live, atomic_load_explicit(&c->live, memory_order_relaxed) - 1,
                            memory_order_relaxed);
      retire(c, e);
      return 0;
    }
  }
  return -ENOENT;
}

bool ctx_nextn(const struct ctx *c, struct ctx_iter *it, const char **key, size_t *klen,
               const char **value, size_t *vlen, unsigned *flags)
{
  if (!c)
    return false;
  if (!it->tab) {
    it->tab = atomic_load_explicit(&c->tab, memory_order_acquire);
    it->i = 0;
    if (!it->tab)
      return false;
  }
  const struct ctx_tab *t = it->tab;
  while (it->i < t->cap) {
    const struct ctx_entry *e = atomic_load_explicit(&t->slot[it->i], memory_order_acquire);
    it->i++;
    if (!e || e == &tombstone)
      continue;
    if (key)
      *key = e->data;
    if (klen)
      *klen = e->klen;
    if (value)
      *value = e->data + e->klen + 1;
    if (vlen)
      *vlen = e->vlen;
    if (flags)
      *flags = e->flags;
    return true;
  }
  return false;
}

bool ctx_next(const struct ctx *c, struct ctx_iter *it, const char **key, const char **value)
{
  return ctx_nextn(c, it, key, NULL, value, NULL, NULL);
}

static void put_u32(struct buf *b, uint32_t v)
{
  uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  buf_append(b, x, 4);
}

static uint32_t get_u32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t ctx_serialize(const struct ctx *c, struct buf *out)
{
  size_t start = out->len;
  put_u32(out, 0);
  uint32_t n = 0;
  struct ctx_iter it = {0};
  const char *k, *v;
  size_t kl, vl;
  unsigned fl;
  while (ctx_nextn(c, &it, &k, &kl, &v, &vl, &fl)) {
    if (fl & CTX_F_SECRET)
      continue;
    put_u32(out, (uint32_t)kl);
    put_u32(out, (uint32_t)vl);
    buf_append(out, k, kl);
    buf_append(out, v, vl);
    n++;
  }
  uint8_t *p = out->data + start;
  p[0] = (uint8_t)n;
  p[1] = (uint8_t)(n >> 8);
  p[2] = (uint8_t)(n >> 16);
  p[3] = (uint8_t)(n >> 24);
  return out->len - start;
}

int ctx_deserialize(struct ctx *c, const void *data, size_t n)
{
  const uint8_t *p = data, *end = p + n;
  if (n < 4)
    return -EBADMSG;
  uint32_t count = get_u32(p);
  p += 4;
  if (count > CTX_ENTRIES_MAX)
    return -E2BIG;
  for (uint32_t i = 0; i < count; i++) {
    if (end - p < 8)
      return -EBADMSG;
    uint32_t kl = get_u32(p), vl = get_u32(p + 4);
    p += 8;
    if ((size_t)(end - p) < (uint64_t)kl + vl)
      return -EBADMSG;
    int r = ctx_setn(c, (const char *)p, kl, (const char *)p + kl, vl, 0);
    if (r < 0)
      return r == -EINVAL ? -EBADMSG : r;
    p += (size_t)kl + vl;
  }
  return p == end ? 0 : -EBADMSG;
}
