/* smtps_feed.c owns the SMTP server's input: bytes from the driver split
 * into command lines (with the line length limit), DATA bodies with
 * dot-unstuffing across reads, BDAT chunks handed out in place, and the
 * decision at a message's or chunk's end. Command lines go to
 * smtps_cmd.c. It never touches a socket, TLS, a clock or a log; it never
 * copies message octets (they are handed out as pointers into the caller's
 * input) and never allocates per byte. Called only by the thread that
 * owns the session. */
#include "smtps_int.h"

#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "panic.h"

/* Message octets: counted against max_size; handed out while under it. */
static void segment(struct smtps *s, const uint8_t *p, size_t n)
{
  s->msg_bytes += n;
  if (s->p.limits.max_size && s->msg_bytes > s->p.limits.max_size)
    s->too_big = true;
  if (s->too_big || !n)
    return;
  s->ev.type = SMTPS_EV_DATA;
  s->ev.data = p;
  s->ev.len = n;
  s->ev_ready = true;
}

/* Consume DATA octets; stops after a segment (an event) or after the
 * terminating "CRLF.CRLF" (state B_END). Returns the octets consumed. */
static size_t body(struct smtps *s, const uint8_t *p, size_t n)
{
  size_t i = 0;
  while (i < n && !s->ev_ready) {
    switch (s->body_state) {
    case B_MID: {
      /* Only a dot at the start of a line matters (stuffed, or the end),
       * so look for dots, not for every line end: one vectorised scan
       * per read instead of one call per line. */
      size_t j = i, e = n;
      const uint8_t *d;
      while ((d = memchr(p + j, '.', n - j)) != NULL) {
        size_t k = (size_t)(d - p);
        if (k > i && p[k - 1] == '\n') {
          e = k;
          break;
        }
        j = k + 1;
      }
      segment(s, p + i, e - i);
      i = e;
      if (p[e - 1] == '\n')
        s->body_state = B_BOL;
      break;
    }
    case B_BOL:
      if (p[i] == '.') {
        s->body_state = B_DOT;
        i++;
      } else {
        s->body_state = B_MID;
      }
      break;
    case B_DOT:
      if (p[i] == '\r') {
        s->body_state = B_DOTCR;
        i++;
      } else {
        s->body_state = B_MID; /* a stuffed dot: dropped */
      }
      break;
    case B_DOTCR:
      if (p[i] == '\n') {
        s->body_state = B_END;
        return i + 1;
      }
      segment(s, (const uint8_t *)"\r", 1);
      s->body_state = B_MID;
      break;
    default:
      util_panic("smtps: bad body state %d", s->body_state);
    }
  }
  return i;
}

static void message_end(struct smtps *s, bool bdat)
{
  clear_ev(s);
  s->ev.size = s->msg_bytes;
  s->ev.too_big = s->too_big;
  s->ev.bdat = bdat;
  if (s->too_big)
    decide(s, SMTPS_EV_MESSAGE, P_MESSAGE, SMTPS_CMD_DOT, false, 552,
           R("552 5.3.4 Message size exceeds fixed limit\r\n"));
  else
    decide(s, SMTPS_EV_MESSAGE, P_MESSAGE, SMTPS_CMD_DOT, true, 250, R("250 2.0.0 Ok\r\n"));
}

/* All octets of a chunk are in: its reply (LAST ends the message). */
static void chunk_end(struct smtps *s)
{
  if (s->chunk_last && s->chunk_err == CH_OK) {
    s->bdat = BDAT_OPEN;
    message_end(s, true);
    return;
  }
  enum smtps_cmd stage = s->chunk_last ? SMTPS_CMD_DOT : SMTPS_CMD_BDAT;
  clear_ev(s);
  switch (s->chunk_err) {
  case CH_OK: {
    int k = snprintf(s->small, sizeof(s->small), "250 2.0.0 %llu octets received\r\n",
                     (unsigned long long)s->chunk_size);
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, true, 250, s->small, (size_t)k);
    break;
  }
  case CH_NEED_MAIL:
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, false, 503,
           R("503 5.5.1 Error: need MAIL command\r\n"));
    break;
  case CH_NEED_RCPT:
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, false, 503,
           R("503 5.5.1 Error: need RCPT command\r\n"));
    break;
  case CH_DISCARD:
    decide(s, SMTPS_EV_COMMAND, P_CHUNK, stage, false, 503,
           R("503 5.5.1 Error: chunk discarded after an earlier BDAT failure\r\n"));
    break;
  default:
    util_panic("smtps: bad chunk reply %d", s->chunk_err);
  }
}

size_t smtps_feed(struct smtps *s, const void *in, size_t n, uint64_t now)
{
  const uint8_t *p = in;
  size_t off = 0;
  if (s->st == SMTPS_ST_TLS)
    return n; /* RFC 3207: plaintext pipelined behind STARTTLS is discarded */
  while (!s->ev_ready && !s->decide) {
    if (buf_avail(&s->out) + s->parked > s->p.limits.max_pending_out)
      break;
    if (s->nholes == s->p.limits.max_deferred && s->st == SMTPS_ST_CMD)
      break; /* as many message replies owed as allowed: read no more */
    if (s->st == SMTPS_ST_DATA) {
      if (s->body_state == B_END) {
        message_end(s, false);
        break;
      }
      if (off == n)
        break;
      off += body(s, p + off, n - off);
      set_deadline(s, now);
      continue;
    }
    if (s->st == SMTPS_ST_BDAT) {
      if (s->chunk_left == 0) {
        chunk_end(s);
        break;
      }
      if (off == n)
        break;
      size_t k = n - off < s->chunk_left ? n - off : (size_t)s->chunk_left;
      s->chunk_left -= k;
      if (s->chunk_err == CH_OK)
        segment(s, p + off, k);
      off += k;
      set_deadline(s, now);
      continue;
    }
    if (s->st != SMTPS_ST_CMD && s->st != SMTPS_ST_AUTH)
      break;
    if (off == n)
      break;
    if (s->line_done) {
      buf_reset(&s->line);
      if (s->line.cap > LINE_KEEP)
        buf_done(&s->line, 1);
      s->line_done = false;
    }
    const uint8_t *nl = memchr(p + off, '\n', n - off);
    size_t k = nl ? (size_t)(nl - (p + off)) + 1 : n - off;
    if (s->discard) {
      off += k;
      if (nl)
        s->discard = false;
      continue;
    }
    /* the line without CRLF may be max_line long */
    if (buf_avail(&s->line) + k > (size_t)s->p.limits.max_line + 2) {
      buf_reset(&s->line);
      off += k;
      s->discard = nl == NULL;
      smtps_immediate_error(s, R("500 5.5.2 Error: line too long\r\n"));
      if (s->st == SMTPS_ST_AUTH)
        smtps_auth_end(s);
      continue;
    }
    buf_append(&s->line, p + off, k);
    off += k;
    if (!nl)
      break;
    size_t len = buf_avail(&s->line) - 1;
    const char *l = (const char *)buf_head(&s->line);
    if (len && l[len - 1] == '\r')
      len--;
    s->line_done = true;
    smtps_command(s, l, len);
    if (!s->decide && s->st != SMTPS_ST_DONE)
      set_deadline(s, now);
  }
  return off;
}
