/* panic.c owns process-ending errors and allocation that cannot fail.
 * Safe from any thread. Never returns from util_panic/util_fatal. */
#include "panic.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

IMPETUS_PRINTF(2, 0) static void vreport(const char *prefix, const char *fmt, va_list ap)
{
  char line[1024];
  vsnprintf(line, sizeof line, fmt, ap);
  fprintf(stderr, "%s%s\n", prefix, line);
  fflush(stderr);
}

void util_panic(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vreport("impetus: panic: ", fmt, ap);
  va_end(ap);
  abort();
}

void util_fatal(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vreport("impetus: ", fmt, ap);
  va_end(ap);
  exit(1);
}

void *util_xmalloc(size_t n)
{
  void *p = malloc(n ? n : 1);
  if (!p)
    util_panic("out of memory allocating %zu bytes", n);
  return p;
}

void *util_xcalloc(size_t n, size_t size)
{
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p)
    util_panic("out of memory allocating %zu x %zu bytes", n, size);
  return p;
}

void *util_xrealloc(void *p, size_t n)
{
  void *q = realloc(p, n ? n : 1);
  if (!q)
    util_panic("out of memory reallocating %zu bytes", n);
  return q;
}

char *util_xstrdup(const char *s)
{
  return util_xstrndup(s, strlen(s));
}

char *util_xstrndup(const char *s, size_t n)
{
  char *p = util_xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void util_wipe(void *p, size_t n)
{
  if (p)
    explicit_bzero(p, n);
}
