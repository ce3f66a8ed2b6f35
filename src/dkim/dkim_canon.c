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

/* Bytes that end a run: line ends, and for relaxed white space. */
#define EOL_ ['\r'] = 1, ['\n'] = 1
static const uint8_t stop_simple[256] = {EOL_};
static const uint8_t stop_relaxed[256] = {EOL_, [' '] = 1, ['\t'] = 1};

/* Canonical bytes are gathered in a buffer on the stack and leave in
 * pieces of up to its size: the hash sees a few calls per message, not
 * one per word or line. */
struct out {
  dkim_emit_fn *emit;
  void *arg;
  size_t w;
  uint8_t b[2048];
};

static void out_flush(struct out *o)
{
  if (o->w)
    o->emit(o->arg, o->b, o->w);
  o->w = 0;
}

static void out_put(struct out *o, const uint8_t *p, size_t n)
{
  if (o->w + n > sizeof(o->b)) {
    out_flush(o);
    if (n > sizeof(o->b)) { /* a long run: straight from the input */
      o->emit(o->arg, p, n);
      return;
    }
  }
  memcpy(o->b + o->w, p, n);
  o->w += n;
}

static void out_eols(struct out *o, uint64_t n)
{
  for (; n; n--) {
    if (o->w + 2 > sizeof(o->b))
      out_flush(o);
    o->b[o->w++] = '\r';
    o->b[o->w++] = '\n';
  }
}

/* Simple: every byte but line ends is kept; line ends are held back until
 * a byte follows, so trailing empty lines vanish. Relaxed: white space runs
 * become one SP when something follows them on the line. */
void dkim_body_feed(struct dkim_body *b, const void *in, size_t n, dkim_emit_fn *emit, void *arg)
{
  const uint8_t *p = in;
  bool relaxed = b->canon == DKIM_CANON_RELAXED;
  struct out o;
  o.emit = emit;
  o.arg = arg;
  o.w = 0;
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
      out_eols(&o, b->eols);
      b->eols = 0;
    }
    if (b->wsp) {
      out_put(&o, (const uint8_t *)" ", 1);
      b->wsp = 0;
    }
    /* The run of bytes that need no thought, copied as it is found. */
    const uint8_t *stop = relaxed ? stop_relaxed : stop_simple;
    size_t j = i + 1;
    while (j < n && !stop[p[j]])
      j++;
    out_put(&o, p + i, j - i);
    b->any = 1;
    i = j;
  }
  out_flush(&o);
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
