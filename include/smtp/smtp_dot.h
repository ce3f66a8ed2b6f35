/* smtp_dot: streaming DATA encoder (RFC 5321 4.5.2 transparency).
 *
 * Turns raw message bytes, fed in chunks of any size, into the DATA body:
 * every line ending (CRLF, bare LF, bare CR) becomes CRLF, a '.' at the
 * start of a line is doubled, and smtp_dot_finish() adds the terminating
 * ".\r\n" (with a CRLF first when the message did not end with one). State
 * crosses chunk boundaries (a CR at the end of one chunk, a '.' at the start
 * of the next). No allocation; any thread; one owner. Also usable to store
 * bodies pre-stuffed at ingest.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct smtp_dot {
  uint8_t bol; /* at the beginning of a line */
  uint8_t cr;  /* last input byte was CR (its LF may come next) */
};

/* Start of a message. */
void smtp_dot_init(struct smtp_dot *d);
/* Encode in[0..inlen) into out[0..outcap). Returns bytes written; *used =
 * input bytes taken (all of them unless out filled up). Each input byte
 * produces at most 2 output bytes; needs outcap >= 2 to make progress. */
size_t smtp_dot_encode(struct smtp_dot *d, const void *in, size_t inlen,
                       void *out, size_t outcap, size_t *used);
/* The same without dot-stuffing, for BDAT (RFC 3030): only the line
 * ends become CRLF. Same state; finish with smtp_dot_finish_len() == 5
 * meaning the message still needs a final CRLF. */
size_t smtp_crlf_encode(struct smtp_dot *d, const void *in, size_t inlen,
                        void *out, size_t outcap, size_t *used);
/* Whether in[0..n) already has CRLF line ends only: every CR followed by
 * an LF, every LF preceded by a CR, the last byte not a CR (then it can go
 * out as BDAT data as is). SSE2, 64 bytes a step. */
bool smtp_crlf_canonical(const void *in, size_t n);
/* Bytes smtp_dot_finish() will write (3 or 5). */
size_t smtp_dot_finish_len(const struct smtp_dot *d);
/* Write the end of data (CRLF if needed, then ".\r\n"); out must hold
 * smtp_dot_finish_len() bytes. Returns bytes written. */
size_t smtp_dot_finish(struct smtp_dot *d, void *out);
