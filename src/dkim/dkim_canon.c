/* dkim_canon.c owns DKIM canonicalisation (RFC 6376 3.4): the streaming
 * body canonicaliser, header-field canonicalisation and the split of a
 * message into header fields. Pure: no allocation except growing the
 * caller's buf, no I/O, no OpenSSL; any thread, one owner per state.
 *
 * Line ends are read as the SMTP client sends them: CRLF, a bare LF and a
 * bare CR are each one line end (smtp_dot.c turns each into CRLF). */
#include "dkim.h"

#include <errno.h>
#include <string.h>

#include "buf.h"

static inline bool is_wsp(uint8_t c) { return c == ' ' || c == '\t'; }

void dkim_body_init(struct dkim_body *b, enum dkim_canon c)
{
  memset(b, 0, sizeof(*b));
  b->canon = (uint8_t)c;
}

static const char crlfs[] = "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";

static void emit_eols(uint64_t n, dkim_emit_fn *emit, void *arg)
{
  while (n) {
    uint64_t k = n < 16 ? n : 16;
    emit(arg, crlfs, (size_t)k * 2);
    n -= k;
  }
}

/* Simple: every byte but line ends is kept; line ends are held back until
 * a byte follows, so trailing empty lines vanish. Relaxed: white space runs
 * become one SP when something follows them on the line. Runs of ordinary
 * bytes go out in one emit. */
void dkim_body_feed(struct dkim_body *b, const void *in, size_t n, dkim_emit_fn *emit, void *arg)
{
  const uint8_t *p = in;
  bool relaxed = b->canon == DKIM_CANON_RELAXED;
  size_t i = 0;
  while (i < n) {
    uint8_t c = p[i];
    if (c == '\r' || c == '\n') {
      if (c == '\n' && b->cr) {
        b->cr = 0;
      } else {
        b->eols++;
        b->wsp = 0;
        b->cr = c == '\r';
      }
      i++;
      continue;
    }
    b->cr = 0;
    if (relaxed && is_wsp(c)) {
      b->wsp = 1;
      i++;
      continue;
    }
    if (b->eols) {
      emit_eols(b->eols, emit, arg);
      b->eols = 0;
    }
    if (b->wsp) {
      emit(arg, " ", 1);
      b->wsp = 0;
    }
    size_t j = i + 1;
    while (j < n && p[j] != '\r' && p[j] != '\n' && !(relaxed && is_wsp(p[j])))
      j++;
    emit(arg, p + i, j - i);
    b->any = 1;
    i = j;
  }
}

void dkim_body_finish(struct dkim_body *b, dkim_emit_fn *emit, void *arg)
{
  /* A body with content ends with exactly one CRLF (added when missing);
   * an empty one is CRLF (simple) or nothing (relaxed). */
  if (b->any || b->canon == DKIM_CANON_SIMPLE)
    emit(arg, "\r\n", 2);
  b->eols = 0;
  b->wsp = 0;
  b->cr = 0;
}

/* Append f[0..n) with every line end made CRLF; a trailing one is dropped
 * (the caller adds CRLF when asked). */
static void simple_header(const uint8_t *f, size_t n, struct buf *out)
{
  /* Drop one trailing line end: CRLF, LF or CR. */
  if (n >= 2 && f[n - 1] == '\n' && f[n - 2] == '\r')
    n -= 2;
  else if (n && (f[n - 1] == '\n' || f[n - 1] == '\r'))
    n--;
  size_t i = 0;
  while (i < n) {
    const uint8_t *cr = memchr(f + i, '\r', n - i), *lf = memchr(f + i, '\n', n - i);
    const uint8_t *e = cr && (!lf || cr < lf) ? cr : lf;
    if (!e) {
      buf_append(out, f + i, n - i);
      break;
    }
    buf_append(out, f + i, (size_t)(e - (f + i)));
    buf_append(out, "\r\n", 2);
    i = (size_t)(e - f) + 1;
    if (*e == '\r' && i < n && f[i] == '\n')
      i++;
  }
}

/* Relaxed: name lower-cased without trailing white space, ':', value
 * unfolded with white space runs as one SP and none at either end. A field
 * without a colon (malformed) is all name, with the same rules. */
static void relaxed_header(const uint8_t *f, size_t n, struct buf *out)
{
  const uint8_t *colon = memchr(f, ':', n);
  size_t nl = colon ? (size_t)(colon - f) : n;
  buf_reserve(out, n + 1);
  uint8_t *o = out->data + out->len;
  /* The name: line ends (a colon on a continuation line) dropped, then
   * the white space before the colon. */
  size_t w = 0;
  for (size_t i = 0; i < nl; i++) {
    uint8_t c = f[i];
    if (c == '\r' || c == '\n')
      continue;
    if (is_wsp(c)) { /* runs of white space are one SP (3.4.2) */
      if (w && o[w - 1] == ' ')
        continue;
      c = ' ';
    }
    o[w++] = c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
  }
  while (w && is_wsp(o[w - 1]))
    w--;
  if (colon) {
    o[w++] = ':';
    bool sp = false, started = false;
    for (size_t i = nl + 1; i < n; i++) {
      uint8_t c = f[i];
      if (is_wsp(c) || c == '\r' || c == '\n') {
        sp = true;
        continue;
      }
      if (sp && started)
        o[w++] = ' ';
      o[w++] = c;
      sp = false;
      started = true;
    }
  }
  out->len += w;
}

void dkim_header_canon(enum dkim_canon c, const void *f, size_t n, bool crlf, struct buf *out)
{
  if (c == DKIM_CANON_RELAXED)
    relaxed_header(f, n, out);
  else
    simple_header(f, n, out);
  if (crlf)
    buf_append(out, "\r\n", 2);
}

/* Where the line starting at i ends: *next is the start of the next line.
 * One scan to the first CR or LF (two memchr calls would each run to the
 * end of the message when a file has only LF or only CR line ends). */
static size_t line_end(const uint8_t *p, size_t len, size_t i, size_t *next)
{
  size_t at = i;
  while (at < len && p[at] != '\r' && p[at] != '\n')
    at++;
  if (at == len) {
    *next = len;
    return len;
  }
  *next = at + 1 + (p[at] == '\r' && at + 1 < len && p[at + 1] == '\n');
  return at;
}

int dkim_header_split(const void *msg, size_t len, struct dkim_hdr *out, size_t max, size_t *body)
{
  const uint8_t *p = msg;
  size_t i = 0;
  int n = 0;
  *body = len;
  while (i < len) {
    size_t next, e = line_end(p, len, i, &next);
    if (e == i) { /* the empty line: the body follows */
      *body = next;
      return n;
    }
    if (is_wsp(p[i]) && n > 0) { /* a continuation line */
      out[n - 1].len = (uint32_t)(next - out[n - 1].off);
      i = next;
      continue;
    }
    if ((size_t)n >= max)
      return -E2BIG;
    const uint8_t *colon = memchr(p + i, ':', e - i);
    size_t nl = colon ? (size_t)(colon - (p + i)) : e - i;
    while (nl && is_wsp(p[i + nl - 1]))
      nl--;
    out[n++] = (struct dkim_hdr){(uint32_t)i, (uint32_t)(next - i), (uint32_t)nl};
    i = next;
  }
  return n;
}
