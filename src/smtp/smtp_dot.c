/* smtp_dot.c owns the streaming DATA encoder: CRLF normalisation and
 * dot-stuffing across chunk boundaries. Pure, no allocation, never blocks;
 * any thread, one owner per state. */
#include "smtp_dot.h"

#include <string.h>

void smtp_dot_init(struct smtp_dot *d)
{
  d->bol = 1;
  d->cr = 0;
}

size_t smtp_dot_encode(struct smtp_dot *d, const void *in, size_t inlen,
                       void *out, size_t outcap, size_t *used)
{
  const uint8_t *p = in;
  uint8_t *o = out;
  size_t i = 0, w = 0;
  unsigned bol = d->bol, cr = d->cr;

  while (i < inlen) {
    /* Fast path: copy a run of ordinary bytes in the middle of a line. */
    if (!bol) {
      size_t room = outcap - w, left = inlen - i;
      size_t lim = left < room ? left : room;
      const uint8_t *q = p + i;
      /* memchr is vectorised in libc; two scans beat a byte loop */
      const uint8_t *lf = memchr(q, '\n', lim);
      size_t k = lf ? (size_t)(lf - q) : lim;
      const uint8_t *crp = memchr(q, '\r', k);
      if (crp)
        k = (size_t)(crp - q);
      if (k) {
        memcpy(o + w, q, k);
        w += k;
        i += k;
        cr = 0;
        continue;
      }
      if (i >= inlen || w >= outcap)
        break;
    }
    uint8_t c = p[i];
    if (c == '\r') {
      if (outcap - w < 2)
        break;
      o[w++] = '\r';
      o[w++] = '\n';
      cr = 1;
      bol = 1;
    } else if (c == '\n') {
      if (!cr) {
        if (outcap - w < 2)
          break;
        o[w++] = '\r';
        o[w++] = '\n';
      }
      cr = 0;
      bol = 1;
    } else {
      size_t need = (bol && c == '.') ? 2 : 1;
      if (outcap - w < need)
        break;
      if (need == 2)
        o[w++] = '.';
      o[w++] = c;
      cr = 0;
      bol = 0;
    }
    i++;
  }
  d->bol = (uint8_t)bol;
  d->cr = (uint8_t)cr;
  *used = i;
  return w;
}

size_t smtp_dot_finish_len(const struct smtp_dot *d)
{
  return d->bol ? 3 : 5;
}

size_t smtp_dot_finish(struct smtp_dot *d, void *out)
{
  uint8_t *o = out;
  size_t w = 0;
  if (!d->bol) {
    o[w++] = '\r';
    o[w++] = '\n';
  }
  memcpy(o + w, ".\r\n", 3);
  w += 3;
  d->bol = 1;
  d->cr = 0;
  return w;
}
