/* buf: a growable byte buffer with a read cursor.
 * All-zero is a valid empty buffer. The buffer owns `data`. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct buf {
  uint8_t *data; /* owned; NULL when empty and never grown */
  size_t off;    /* read cursor: bytes before it are consumed */
  size_t len;    /* bytes written (off <= len <= cap) */
  size_t cap;
};

/* Make room for `n` more bytes after len; panics on out-of-memory. */
void buf_reserve(struct buf *b, size_t n);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_append_str(struct buf *b, const char *s);
/* printf-style append. */
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s[0..n) as the inside of a JSON string (RFC 8259; the caller
 * writes the quotes): '"' and '\\' escaped, control bytes (< 0x20, 0x7f)
 * as \u00XX; bytes >= 0x80 as they are, or as \u00XX with `ascii` (for
 * bytes that may not be UTF-8). The one JSON string escaper of the
 * project (console, JSON log, sink). */
void buf_append_json(struct buf *b, const void *s, size_t n, int ascii);
/* Mark `n` bytes at the cursor consumed; compacts when all is consumed. */
void buf_consume(struct buf *b, size_t n);
static inline size_t buf_avail(const struct buf *b) { return b->len - b->off; }
static inline const uint8_t *buf_head(const struct buf *b) { return b->data + b->off; }
void buf_reset(struct buf *b);
/* Free the storage; wipes it first when `secret` is non-zero. */
void buf_done(struct buf *b, int secret);
