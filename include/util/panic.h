/* panic: the two ways a program stops (STYLE.md #9).
 * util_panic: a bug; prints the message and aborts (core dump).
 * util_fatal: an unusable environment at start-up; prints and exits 1.
 * Everything else is returned to the caller, never handled here. */
#pragma once

#include <stddef.h>

#define IMPETUS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define IMPETUS_NORETURN __attribute__((noreturn))
#define IMPETUS_EXPORT __attribute__((visibility("default")))

IMPETUS_NORETURN IMPETUS_PRINTF(1, 2) void util_panic(const char *fmt, ...);
IMPETUS_NORETURN IMPETUS_PRINTF(1, 2) void util_fatal(const char *fmt, ...);

/* Allocation that cannot fail: panics on out-of-memory. */
void *util_xmalloc(size_t n);
void *util_xcalloc(size_t n, size_t size);
void *util_xrealloc(void *p, size_t n);
char *util_xstrdup(const char *s);
char *util_xstrndup(const char *s, size_t n);

/* Wipe memory that held a secret; never optimised away. */
void util_wipe(void *p, size_t n);

#define UTIL_ASSERT(c) \
  do { if (!(c)) util_panic("%s:%d: assertion failed: %s", __FILE__, __LINE__, #c); } while (0)

#ifdef IMPETUS_DEBUG_STRICT
#define UTIL_DASSERT(c) UTIL_ASSERT(c)
#else
#define UTIL_DASSERT(c) ((void)0)
#endif

#define UTIL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Make room for element p[n] of an array of cap elements that grows by
 * doubling from `first` (util_xrealloc: aborts when memory runs out). */
#define UTIL_GROW(p, n, cap, first)                                                                \
  do {                                                                                             \
    if ((n) == (cap)) {                                                                            \
      (cap) = (cap) ? (cap) * 2 : (first);                                                         \
      (p) = util_xrealloc((p), (cap) * sizeof *(p));                                               \
    }                                                                                              \
  } while (0)
