/* smtp_reply.c owns the streaming SMTP reply parser (see smtp_reply.h for
 * the decisions on bare LF, codes and enhanced codes). It never allocates,
 * never logs, keeps bounded state whatever the input; any thread, one
 * owner per parser. */
#include "smtp_reply.h"

#include <string.h>

static const char hexdig[] = "0123456789ABCDEF";

size_t smtp_sanitize_append(char *dst, size_t cap, size_t len, const void *src, size_t n)
{
  const uint8_t *p = src;
  if (cap == 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      if (len + 1 >= cap)
        break;
      dst[len++] = (char)c;
    } else {
      if (len + 4 >= cap)
        break;
      dst[len++] = '\\';
      dst[len++] = 'x';
      dst[len++] = hexdig[c >> 4];
      dst[len++] = hexdig[c & 15];
    }
  }
  dst[len] = '\0';
  return len;
}

void smtp_reply_reset(struct smtp_reply *r)
{
  r->code = 0;
  r->enhanced[0] = '\0';
  r->nlines = 0;
  r->bytes = 0;
  r->text_len = 0;
  r->text[0] = '\0';
  r->line_len = 0;
  r->line[0] = '\0';
  r->cur_len = 0;
  r->done = 0;
  r->dead = 0;
  r->cr = 0;
}

const char *smtp_reply_strerror(int status)
{
  switch (status) {
  case SMTP_REPLY_ERR_SYNTAX: return "malformed reply";
  case SMTP_REPLY_ERR_LINE: return "reply line too long";
  case SMTP_REPLY_ERR_LINES: return "too many lines in one reply";
  case SMTP_REPLY_ERR_BYTES: return "reply too long";
  case SMTP_REPLY_MORE: return "incomplete";
  case SMTP_REPLY_LINE: return "line";
  case SMTP_REPLY_DONE: return "done";
  default: return "unknown reply parser status";
  }
}

static int isdig(char c) { return c >= '0' && c <= '9'; }

/* Length of an RFC 3463 code of class `cls` at t (followed by space or end,
 * the space included), or 0. */
static size_t enh_len(const char *t, size_t n, char cls)
{
  size_t i = 0;
  if (n < 5 || t[0] != cls || t[1] != '.')
    return 0;
  i = 2;
  size_t k = 0;
  while (i < n && isdig(t[i]) && k < 3) { i++; k++; }
  if (k == 0 || i >= n || t[i] != '.')
    return 0;
  i++;
  k = 0;
  while (i < n && isdig(t[i]) && k < 3) { i++; k++; }
  if (k == 0)
    return 0;
  if (i == n)
    return i;
  if (t[i] != ' ')
    return 0;
  return i + 1;
}

static int fail(struct smtp_reply *r, int err)
{
  r->dead = (uint8_t)-err;
  return err;
}

/* A whole line sits in r->line[0..line_len). */
static int finish_line(struct smtp_reply *r)
{
  char *l = r->line;
  size_t n = r->line_len;
  if (n < 3 || l[0] < '2' || l[0] > '5' || !isdig(l[1]) || !isdig(l[2]))
    return fail(r, SMTP_REPLY_ERR_SYNTAX);
  int last;
  if (n == 3 || l[3] == ' ')
    last = 1;
  else if (l[3] == '-')
    last = 0;
  else
    return fail(r, SMTP_REPLY_ERR_SYNTAX);
  int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
  r->nlines++;
  if (r->max_lines && r->nlines > r->max_lines)
    return fail(r, SMTP_REPLY_ERR_LINES);
  if (r->nlines == 1)
    r->code = code;
  else if (r->code != code)
    return fail(r, SMTP_REPLY_ERR_SYNTAX);

  size_t skip = n > 4 ? 4 : n;
  memmove(l, l + skip, n - skip);
  n -= skip;
  l[n] = '\0';
  r->line_len = (uint16_t)n;

  const char *t = l;
  size_t tn = n;
  /* enhanced code: the class must equal the reply's first digit */
  char cls = (char)('0' + code / 100);
  size_t e = enh_len(t, tn, cls);
  if (e) {
    size_t elen = t[e - 1] == ' ' ? e - 1 : e;
    if (r->nlines == 1) {
      memcpy(r->enhanced, t, elen);
      r->enhanced[elen] = '\0';
      t += e;
      tn -= e;
    } else if (strlen(r->enhanced) == elen && memcmp(r->enhanced, t, elen) == 0) {
      t += e;
      tn -= e;
    }
  }
  if (tn) {
    if (r->text_len && r->text_len + 1 < SMTP_REPLY_TEXT_MAX)
      r->text[r->text_len++] = ' ';
    r->text_len = (uint16_t)smtp_sanitize_append(r->text, SMTP_REPLY_TEXT_MAX, r->text_len, t, tn);
  }
  r->cur_len = 0;
  r->cr = 0;
  if (last) {
    r->done = 1;
    return SMTP_REPLY_DONE;
  }
  return SMTP_REPLY_LINE;
}

int smtp_reply_parse(struct smtp_reply *r, const void *p, size_t n, size_t *used)
{
  const uint8_t *b = p;
  size_t i = 0;
  if (r->dead) {
    *used = 0;
    return -(int)r->dead;
  }
  if (r->done) {
    uint32_t ml = r->max_line, mls = r->max_lines, mb = r->max_bytes;
    smtp_reply_reset(r);
    r->max_line = ml;
    r->max_lines = mls;
    r->max_bytes = mb;
  }
  if (r->cur_len == 0)
    r->line_len = 0;
  while (i < n) {
    /* look no further than the line limit allows (a memchr over a huge
     * hostile buffer would be wasted, and costly under ASan) */
    size_t window = n - i;
    if (r->max_line && window > r->max_line - r->cur_len)
      window = r->max_line - r->cur_len + 1; /* one byte past the limit */
    const uint8_t *lf = memchr(b + i, '\n', window);
    size_t seg = lf ? (size_t)(lf - (b + i)) + 1 : window;
    /* the first byte over a limit decides (line before total on a tie),
     * so the verdict does not depend on how the input was split */
    size_t over_line = SIZE_MAX, over_bytes = SIZE_MAX;
    if (r->max_line && r->cur_len + seg > r->max_line)
      over_line = r->max_line - r->cur_len;
    if (r->max_bytes && r->bytes + seg > r->max_bytes)
      over_bytes = r->max_bytes - r->bytes;
    if (over_line != SIZE_MAX || over_bytes != SIZE_MAX) {
      *used = n;
      return fail(r, over_line <= over_bytes ? SMTP_REPLY_ERR_LINE : SMTP_REPLY_ERR_BYTES);
    }
    size_t data = lf ? seg - 1 : seg;
    if (data) {
      size_t room = SMTP_REPLY_LINE_KEEP - 1 - r->line_len;
      size_t k = data < room ? data : room;
      memcpy(r->line + r->line_len, b + i, k);
      r->line_len = (uint16_t)(r->line_len + k);
      r->cr = b[i + data - 1] == '\r';
    }
    r->cur_len += (uint32_t)seg;
    r->bytes += (uint32_t)seg;
    i += seg;
    if (lf) {
      /* drop the CR of CRLF if it was kept */
      size_t content = r->cur_len - 1 - (r->cr ? 1 : 0);
      if (r->line_len > content)
        r->line_len = (uint16_t)content;
      *used = i;
      return finish_line(r);
    }
  }
  *used = n;
  return SMTP_REPLY_MORE;
}
