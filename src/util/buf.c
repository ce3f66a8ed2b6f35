/* buf.c owns growable byte buffers. No locking: one owner at a time. */
#include "buf.h"
#include "panic.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_reserve(struct buf *b, size_t n)
{
  if (b->cap - b->len >= n)
    return;
  if (b->off > 0 && b->cap - (b->len - b->off) >= n) {
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
    return;
  }
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < n)
    cap *= 2;
  b->data = util_xrealloc(b->data, cap);
  b->cap = cap;
}

void buf_append(struct buf *b, const void *p, size_t n)
{
  if (n == 0)
    return;
  buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

void buf_append_str(struct buf *b, const char *s)
{
  buf_append(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
  va_list ap;
  buf_reserve(b, 64);
  va_start(ap, fmt);
  int n = vsnprintf((char *)b->data + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n >= b->cap - b->len) {
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}

void buf_consume(struct buf *b, size_t n)
{
  UTIL_ASSERT(n <= b->len - b->off);
  b->off += n;
  if (b->off == b->len)
    b->off = b->len = 0;
}

void buf_reset(struct buf *b)
{
  b->off = b->len = 0;
}

void buf_done(struct buf *b, int secret)
{
  if (secret)
    util_wipe(b->data, b->cap);
  free(b->data);
  memset(b, 0, sizeof *b);
}

void buf_append_json(struct buf *b, const void *s, size_t n, int ascii)
{
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = s;
  size_t run = 0; /* bytes at p[i - run .. i) that need no escape */
  for (size_t i = 0; i < n; i++) {
    unsigned char c = p[i];
    bool plain = c >= 0x20 && c != '"' && c != '\\' && c != 0x7f && !(ascii && c >= 0x80);
    if (plain) {
      run++;
      continue;
    }
    if (run)
      buf_append(b, p + i - run, run);
    run = 0;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      buf_append(b, e, 2);
    } else {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      buf_append(b, e, 6);
    }
  }
  if (run)
    buf_append(b, p + n - run, run);
}
