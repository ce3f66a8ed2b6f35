/* smtp_dot.c owns the streaming DATA encoder: CRLF normalisation and
 * dot-stuffing across chunk boundaries. Pure, no allocation, never blocks;
 * any thread, one owner per state. */
#include "smtp_dot.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

void smtp_dot_init(struct smtp_dot *d)
{
  d->bol = 1;
  d->cr = 0;
}

/* The encoder; stuff: double a '.' at the start of a line (DATA), or not
 * (BDAT: only the line ends are made CRLF). */
static inline size_t encode(struct smtp_dot *d, const void *in, size_t inlen, void *out,
                            size_t outcap, size_t *used, bool stuff)
{
  const uint8_t *p = in;
  uint8_t *o = out;
  size_t i = 0, w = 0;
  unsigned bol = d->bol, cr = d->cr;
  /* p[i..cr_at) holds no CR; p[cr_at] is one, or cr_at ends the span
   * scanned. CR is rare inside lines: one scan serves many lines, so a
   * line costs one memchr for its LF and one memcpy. */
  size_t cr_at = 0;

  while (i < inlen) {
    uint8_t c = p[i];
    if (c == '\r') {
      if (outcap - w < 2)
        break;
      o[w++] = '\r';
      o[w++] = '\n';
      cr = 1;
      bol = 1;
      i++;
      continue;
    }
    if (c == '\n') {
      if (!cr) {
        if (outcap - w < 2)
          break;
        o[w++] = '\r';
        o[w++] = '\n';
      }
      cr = 0;
      bol = 1;
      i++;
      continue;
    }
    if (stuff && bol && c == '.') {
      if (outcap - w < 2)
        break;
      o[w++] = '.';
      o[w++] = '.';
      cr = 0;
      bol = 0;
      i++;
      continue;
    }
    /* A run of ordinary bytes up to the next CR or LF: copied as is. */
    size_t room = outcap - w, left = inlen - i;
    size_t lim = left < room ? left : room;
    if (lim == 0)
      break;
    if (cr_at <= i) {
      const uint8_t *r = memchr(p + i, '\r', lim);
      cr_at = r ? (size_t)(r - p) : i + lim;
    }
    size_t stop = i + lim < cr_at ? i + lim : cr_at;
    const uint8_t *lf = memchr(p + i, '\n', stop - i);
    size_t k = (lf ? (size_t)(lf - p) : stop) - i;
    memcpy(o + w, p + i, k);
    w += k;
    i += k;
    cr = 0;
    bol = 0;
  }
  d->bol = (uint8_t)bol;
  d->cr = (uint8_t)cr;
  *used = i;
  return w;
}

size_t smtp_dot_encode(struct smtp_dot *d, const void *in, size_t inlen,
                       void *out, size_t outcap, size_t *used)
{
  return encode(d, in, inlen, out, outcap, used, true);
}

size_t smtp_crlf_encode(struct smtp_dot *d, const void *in, size_t inlen,
                        void *out, size_t outcap, size_t *used)
{
  return encode(d, in, inlen, out, outcap, used, false);
}

/* Every LF right after a CR and every CR right before an LF: the LF mask
 * of each 64-byte block is the CR mask shifted by one, carrying the
 * block's last CR into the next. */
bool smtp_crlf_canonical(const void *in, size_t n)
{
  const uint8_t *p = in;
  size_t i = 0;
  uint64_t carry = 0;
#if defined(__SSE2__)
  const __m128i vcr = _mm_set1_epi8('\r'), vlf = _mm_set1_epi8('\n');
  for (; i + 64 <= n; i += 64) {
    uint64_t cr = 0, lf = 0;
    for (unsigned k = 0; k < 4; k++) {
      __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i + 16 * k));
      cr |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, vcr)) << (16 * k);
      lf |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, vlf)) << (16 * k);
    }
    if (lf != ((cr << 1) | carry))
      return false;
    carry = cr >> 63;
  }
#endif
  for (; i < n; i++) {
    uint64_t is_cr = p[i] == '\r', is_lf = p[i] == '\n';
    if (is_lf != carry)
      return false;
    carry = is_cr;
  }
  return carry == 0;
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
