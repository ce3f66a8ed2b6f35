/* secmem.h: memory for secrets (passwords, tokens, AUTH lines, the
 * configuration text that holds them). Blocks live in anonymous mappings
 * marked MADV_DONTDUMP (never in a core dump) and MADV_WIPEONFORK (a child
 * sees zeros), locked in RAM with mlock when RLIMIT_MEMLOCK allows (never
 * swapped), and are wiped when freed or moved. Any thread may call every
 * function (one mutex; secrets are few and short-lived). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Largest block served from the shared chunks; larger ones get their own
 * mapping (whole pages). */
#define SECMEM_SMALL_MAX 32752u

/* A zeroed block of n bytes (n may be 0) in secure memory; NULL when the
 * mapping fails. */
void *secmem_alloc(size_t n);
/* Same, but out of memory is a panic (as util_xmalloc). */
void *secmem_xalloc(size_t n);
/* Grow or shrink p (NULL: allocate) to n bytes; the old block is wiped.
 * Out of memory is a panic. */
void *secmem_xrealloc(void *p, size_t n);
/* Copies of a string (NUL-terminated) in secure memory; panic on OOM. */
char *secmem_xstrdup(const char *s);
char *secmem_xstrndup(const char *s, size_t n);
/* Wipe and release a block from this module; NULL is accepted. A pointer
 * from elsewhere is a bug (panic). */
void secmem_free(void *p);
/* Whether p points into a block handed out by this module. */
bool secmem_owns(const void *p);

struct secmem_stats {
  size_t mapped;  /* bytes of mappings (DONTDUMP) */
  size_t locked;  /* of which locked in RAM by mlock */
  size_t in_use;  /* bytes of live blocks, headers included */
  size_t blocks;  /* live blocks */
};
/* A snapshot of the counters. */
void secmem_stats(struct secmem_stats *st);
