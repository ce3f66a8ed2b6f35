/* smtp_reply: a streaming parser for SMTP replies (RFC 5321 4.2, RFC 3463).
 *
 * Bytes go in in any split; lines and whole replies come out. The parser is
 * embedded by value (no allocation), keeps at most SMTP_REPLY_LINE_KEEP
 * bytes of the current line and SMTP_REPLY_TEXT_MAX bytes of the reply's
 * text, and enforces the limits it is given. Any thread; one owner.
 *
 * Decisions:
 * - A line ends at LF; a CR right before it is dropped. Bare LF is accepted
 *   (servers send it; nothing is ambiguous in a reply). Other CRs and
 *   control bytes are data, escaped in the text.
 * - A line is "ddd" followed by '-' (more lines follow), ' ' or end of line
 *   (last line). The first digit must be 2..5, the others any digit. Any
 *   other shape is a syntax error (SMTP_REPLY_ERR_SYNTAX).
 * - All lines of a reply must carry the same code; a different code on a
 *   continuation line is a syntax error (the reply would be ambiguous).
 * - An enhanced status code (class.subject.detail, RFC 3463: 1 digit, 1-3
 *   digits, 1-3 digits, class equal to the reply's first digit, followed by
 *   a space or end of line) at the start of the first line's text is taken
 *   out into `enhanced`; the same prefix is stripped from later lines'
 *   text. It is recognised whether or not ENHANCEDSTATUSCODES was offered.
 * - The text is the lines' texts joined with a single space, bytes outside
 *   0x20..0x7e written as \xHH, cut to SMTP_REPLY_TEXT_MAX - 1 bytes.
 * - Limits: line length counts every byte including CRLF; total counts all
 *   bytes of the reply. Exceeding one is an error; the parser is then dead
 *   until smtp_reply_reset().
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define SMTP_REPLY_TEXT_MAX 320 /* reply text kept (with NUL) */
#define SMTP_REPLY_LINE_KEEP 512 /* bytes of one line kept for inspection */
#define SMTP_REPLY_ENH_MAX 12    /* "5.123.123" + NUL */

enum smtp_reply_status {
  SMTP_REPLY_MORE = 0,      /* all input used; reply incomplete */
  SMTP_REPLY_LINE = 1,      /* a continuation line completed: see line/line_len */
  SMTP_REPLY_DONE = 2,      /* the last line completed: the reply is whole */
  SMTP_REPLY_ERR_SYNTAX = -1,
  SMTP_REPLY_ERR_LINE = -2,   /* line longer than max_line */
  SMTP_REPLY_ERR_LINES = -3,  /* more lines than max_lines */
  SMTP_REPLY_ERR_BYTES = -4,  /* reply longer than max_bytes */
};

struct smtp_reply {
  /* limits (set by the owner; 0 = unlimited) */
  uint32_t max_line, max_lines, max_bytes;
  /* results, valid after LINE/DONE */
  int code;                         /* 250 */
  char enhanced[SMTP_REPLY_ENH_MAX];/* "2.1.0" or "" */
  uint32_t nlines;                  /* lines so far in this reply */
  uint32_t bytes;                   /* bytes so far in this reply */
  uint16_t text_len;
  char text[SMTP_REPLY_TEXT_MAX];   /* sanitised, joined, cut; NUL-terminated */
  /* the line that just completed: bytes after "ddd-"/"ddd ", without CRLF,
   * NUL-terminated, cut to SMTP_REPLY_LINE_KEEP - 1 (line_len is the cut
   * length; raw bytes, not sanitised) */
  uint16_t line_len;
  char line[SMTP_REPLY_LINE_KEEP];
  /* private parsing state */
  uint32_t cur_len;  /* bytes of the current line so far */
  uint8_t done;      /* last result was DONE: next byte starts a new reply */
  uint8_t dead;      /* an error happened */
  uint8_t cr;        /* previous byte of the line was CR (held back) */
};

/* Reset to "expecting a new reply"; keeps the limits. */
void smtp_reply_reset(struct smtp_reply *r);
/* Parse from p[0..n). Stops after a completed line. *used = bytes taken.
 * Returns an smtp_reply_status; after DONE, the next call starts a new
 * reply (code, text... are cleared then). */
int smtp_reply_parse(struct smtp_reply *r, const void *p, size_t n, size_t *used);
/* Static description of an error status ("reply line too long"). */
const char *smtp_reply_strerror(int status);
/* Append src[0..n) to dst (cap with NUL, *len used) sanitised as above.
 * Returns the new length. */
size_t smtp_sanitize_append(char *dst, size_t cap, size_t len, const void *src, size_t n);
