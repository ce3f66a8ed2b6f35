/* libFuzzer target: DKIM canonicalisation. The input is a body (or a
 * header field), canonicalised whole and in chunks chosen by the input;
 * checks that both agree, the RFC 6376 3.4 invariants of the output (only
 * CRLF line ends, no trailing empty lines, relaxed: no white space runs,
 * tabs or white space before a line end) and that canonicalising again
 * changes nothing. Also splits the input as a message and looks for its
 * responsible domain. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "dkim.h"
#include "dkim_conf.h"
#include "panic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void emit(void *arg, const void *p, size_t n) { buf_append(arg, p, n); }

static void body(enum dkim_canon c, const uint8_t *d, size_t n, size_t step, struct buf *out)
{
  struct dkim_body b;
  dkim_body_init(&b, c);
  for (size_t i = 0; i < n; i += step)
    dkim_body_feed(&b, d + i, n - i < step ? n - i : step, emit, out);
  dkim_body_finish(&b, emit, out);
}

static void check_lines(const uint8_t *o, size_t n, bool relaxed)
{
  for (size_t i = 0; i < n; i++) {
    if (o[i] == '\r')
      UTIL_ASSERT(i + 1 < n && o[i + 1] == '\n');
    if (o[i] == '\n')
      UTIL_ASSERT(i > 0 && o[i - 1] == '\r');
    if (relaxed) {
      UTIL_ASSERT(o[i] != '\t');
      if (o[i] == ' ')
        UTIL_ASSERT(i + 1 < n && o[i + 1] != ' ' && o[i + 1] != '\r');
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 2)
    return 0;
  enum dkim_canon c = data[0] & 1 ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
  size_t step = (size_t)data[1] % 17 + 1;
  const uint8_t *d = data + 2;
  size_t n = size - 2;

  struct buf whole = {0}, parts = {0}, again = {0};
  body(c, d, n, n ? n : 1, &whole);
  body(c, d, n, step, &parts);
  UTIL_ASSERT(whole.len == parts.len && !memcmp(whole.data, parts.data, whole.len));
  check_lines(whole.data, whole.len, c == DKIM_CANON_RELAXED);
  if (whole.len) {
    UTIL_ASSERT(whole.len >= 2 && whole.data[whole.len - 2] == '\r' &&
                whole.data[whole.len - 1] == '\n');
    /* No trailing empty line, except simple's empty body "\r\n". */
    if (whole.len >= 4)
      UTIL_ASSERT(!(whole.data[whole.len - 4] == '\r' && whole.data[whole.len - 3] == '\n'));
  } else {
    UTIL_ASSERT(c == DKIM_CANON_RELAXED);
  }
  body(c, whole.data ? whole.data : (const uint8_t *)"", whole.len, 7, &again);
  UTIL_ASSERT(again.len == whole.len && !memcmp(again.data, whole.data, whole.len));

  /* The input as one header field. */
  struct buf h = {0}, h2 = {0};
  dkim_header_canon(c, d, n, true, &h);
  UTIL_ASSERT(h.len >= 2);
  if (c == DKIM_CANON_RELAXED) {
    check_lines(h.data, h.len, true);
    const uint8_t *colon = memchr(h.data, ':', h.len);
    for (const uint8_t *q = h.data; colon && q < colon; q++)
      UTIL_ASSERT(!(*q >= 'A' && *q <= 'Z'));
    /* Only the final CRLF is a line end once unfolded. */
    UTIL_ASSERT(!memchr(h.data, '\n', h.len - 1));
    dkim_header_canon(c, h.data, h.len, true, &h2);
    UTIL_ASSERT(h2.len == h.len && !memcmp(h2.data, h.data, h.len));
  }

  /* The input as a message. */
  struct dkim_hdr hd[64];
  size_t boff;
  int nh = dkim_header_split(d, n, hd, 64, &boff);
  UTIL_ASSERT(boff <= n);
  for (int i = 0; i < nh; i++) {
    UTIL_ASSERT((size_t)hd[i].off + hd[i].len <= n);
    UTIL_ASSERT(hd[i].name_len <= hd[i].len);
    if (i)
      UTIL_ASSERT(hd[i].off == hd[i - 1].off + hd[i - 1].len);
  }
  char dom[256];
  if (dkim_responsible_domain(d, n, dom, sizeof(dom)) == 0)
    UTIL_ASSERT(strlen(dom) > 0 && strlen(dom) < sizeof(dom));

  buf_done(&whole, 0);
  buf_done(&parts, 0);
  buf_done(&again, 0);
  buf_done(&h, 0);
  buf_done(&h2, 0);
  return 0;
}
