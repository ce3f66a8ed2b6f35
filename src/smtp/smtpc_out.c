/* smtpc_out.c owns the smtpc session's output buffer: room for the next
 * line, command lines with and without printf, wiping what held a
 * secret, releasing the buffer. It never touches a socket, a clock or a
 * log and never grows the buffer (smtpc_new sizes it; only a credential
 * set may replace it, in smtpc_auth.c). Called on the thread that owns
 * the session. */
#include "smtpc_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secmem.h"

bool smtpc_clean_str(const char *p, size_t max)
{
  size_t n = 0;
  for (; p[n]; n++) {
    unsigned char c = (unsigned char)p[n];
    if (c < 0x20 || c == 0x7f || n >= max)
      return false;
  }
  return true;
}

/* Release the output buffer (wiped when it held a secret). */
void smtpc_out_release(struct smtpc *s)
{
  if (s->out_secmem) {
    secmem_free(s->out);
  } else {
    if (s->out_secret)
      util_wipe(s->out, s->out_cap);
    free(s->out);
  }
  s->out = NULL;
  s->out_secret = s->out_secmem = false;
}

/* ---- output ---- */

size_t smtpc_out_room(struct smtpc *s)
{
  if (s->out_off && s->out_off == s->out_len) {
    if (s->out_secret) {
      util_wipe(s->out, s->out_len);
      s->out_secret = false;
    }
    s->out_off = s->out_len = 0;
  } else if (s->out_off && s->out_cap - s->out_len < s->out_cap / 2) {
    size_t n = s->out_len - s->out_off;
    memmove(s->out, s->out + s->out_off, n);
    if (s->out_secret)
      util_wipe(s->out + n, s->out_len - n);
    s->out_off = 0;
    s->out_len = n;
  }
  return s->out_cap - s->out_len;
}

/* Append a command line (CRLF added). Returns false when it does not fit. */
IMPETUS_PRINTF(2, 3) bool smtpc_out_cmd(struct smtpc *s, const char *fmt, ...)
{
  size_t room = smtpc_out_room(s);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf((char *)s->out + s->out_len, room, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n + 2 >= room)
    return false;
  s->out_len += (size_t)n;
  s->out[s->out_len++] = '\r';
  s->out[s->out_len++] = '\n';
  s->unsolicited = 0;
  return true;
}

/* Append the concatenation of parts[0..n) and CRLF if it fits: the
 * per-message commands, built without printf. */
bool smtpc_out_parts(struct smtpc *s, const char *const *parts, size_t n)
{
  size_t room = smtpc_out_room(s), len[6], total = 2;
  UTIL_ASSERT(n <= 6);
  for (size_t k = 0; k < n; k++)
    total += len[k] = strlen(parts[k]);
  if (total >= room)
    return false;
  for (size_t k = 0; k < n; k++) {
    memcpy(s->out + s->out_len, parts[k], len[k]);
    s->out_len += len[k];
  }
  s->out[s->out_len++] = '\r';
  s->out[s->out_len++] = '\n';
  s->unsolicited = 0;
  return true;
}

/* Decimal digits of v into buf (>= 21 bytes), NUL-terminated. */
const char *smtpc_u64_dec(uint64_t v, char *buf)
{
  char *p = buf + 20;
  *p = '\0';
  do
    *--p = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  return p;
}

void smtpc_out_must(struct smtpc *s, const char *line)
{
  if (!smtpc_out_cmd(s, "%s", line))
    util_panic("smtpc: output buffer full writing %s", line);
}

