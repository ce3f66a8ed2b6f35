/* libFuzzer target: the SMTP reply parser fed arbitrary bytes in chunks
 * chosen by the input, with limits from its first bytes; checks the
 * invariants (bounded text, NUL-terminated, progress) and that a whole
 * feed and a byte-by-byte feed agree. Also runs the DATA encoder. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "panic.h"
#include "smtp_dot.h"
#include "smtp_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned run(const uint8_t *d, size_t n, size_t step, uint32_t ml, char *sig, size_t cap)
{
  struct smtp_reply r;
  memset(&r, 0, sizeof(r));
  r.max_line = ml;
  r.max_lines = 30;
  r.max_bytes = 4000;
  size_t o = 0;
  unsigned replies = 0;
  sig[0] = 0;
  for (size_t i = 0; i < n;) {
    size_t chunk = n - i < step ? n - i : step;
    size_t used;
    int st = smtp_reply_parse(&r, d + i, chunk, &used);
    UTIL_ASSERT(used <= chunk);
    UTIL_ASSERT(strlen(r.text) < SMTP_REPLY_TEXT_MAX && r.text_len == strlen(r.text));
    UTIL_ASSERT(r.line_len < SMTP_REPLY_LINE_KEEP);
    if (st < 0) {
      if (o + 8 < cap)
        o += (size_t)snprintf(sig + o, cap - o, "E%d", st);
      break;
    }
    UTIL_ASSERT(st != SMTP_REPLY_MORE || used == chunk);
    if (st == SMTP_REPLY_DONE) {
      replies++;
      if (o + 400 < cap)
        o += (size_t)snprintf(sig + o, cap - o, "%d|%s|%s;", r.code, r.enhanced, r.text);
    }
    i += used;
  }
  return replies;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 2)
    return 0;
  uint32_t ml = 8 + data[0] * 4u;
  static char a[1 << 16], b[1 << 16];
  run(data + 1, size - 1, size, ml, a, sizeof(a));
  run(data + 1, size - 1, 1, ml, b, sizeof(b));
  UTIL_ASSERT(strcmp(a, b) == 0);

  static uint8_t out[1 << 16];
  struct smtp_dot dt;
  smtp_dot_init(&dt);
  size_t used, w = smtp_dot_encode(&dt, data, size, out, sizeof(out) - 8, &used);
  UTIL_ASSERT(w <= 2 * used);
  w += smtp_dot_finish(&dt, out + w);
  /* the encoded body never has a bare CR or LF, and ends with CRLF.CRLF
   * (or .CRLF for an empty body) */
  for (size_t i = 0; i < w; i++) {
    if (out[i] == '\n')
      UTIL_ASSERT(i > 0 && out[i - 1] == '\r');
    if (out[i] == '\r')
      UTIL_ASSERT(i + 1 < w && out[i + 1] == '\n');
  }
  return 0;
}
