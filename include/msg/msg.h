/* msg: the message format below the engine. The pickup envelope (x-sender,
 * x-receiver, x-binding, x-binding-group, x-context lines before an RFC 5322
 * message), RFC 5321 address checks, and the header fix-ups made at
 * submission (Date:, Message-ID:). Pure: bytes in memory in, bytes or a
 * one-line reason out; no I/O, no logging, any thread. Used by the spool
 * (src/engine/spool/) and by impetus-inject, which links only this and
 * util (and conf for -c). docs/spool.md describes the format. */
#pragma once

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Named limits of the pickup format. */
#define MSG_ENVELOPE_LINE_MAX 2048u /* one x-...: line, bytes without EOL */
#define MSG_LINE_MAX 998u           /* one line of the message (RFC 5322 2.1.1) */
#define MSG_RCPTS_MAX 100000u       /* x-receiver lines per file */
#define MSG_ADDR_MAX 256u           /* RFC 5321 4.5.3.1.3 path, without <> */
#define MSG_NAME_MAX 255u           /* x-binding / x-binding-group value */
#define MSG_DEFAULT_MAX_SIZE (50u * 1024u * 1024u) /* a pickup file when Max_Message_Size is 0 */

#define MSG_F_8BIT 0x1u /* the message (or an address) has bytes >= 0x80 */

/* Validate an address (no angle brackets): local@domain, RFC 5321 rules:
 * dot-atom or quoted local part (<= 64), domain of LDH labels (<= 63 each,
 * <= 255) or an address literal [IPv4] / [IPv6:...], total <= 256; bytes
 * >= 0x80 are allowed (SMTPUTF8). Returns NULL when valid, else a reason. */
const char *msg_addr_check(const char *addr, size_t len);

/* One x-context: key=value line, blanks trimmed. */
struct msg_kv {
  char *key;
  char *value;
};

/* The parsed envelope of a pickup file. */
struct msg_envelope {
  char *sender; /* "" for <> */
  char **rcpt;  /* unique (first occurrence kept, in file order) */
  uint32_t nrcpt;
  uint32_t ndup; /* x-receiver lines dropped as duplicates of an earlier one */
  char *binding;
  char *binding_group;
  struct msg_kv *ctx; /* x-context presets, in file order (a later key wins) */
  uint32_t nctx;
  uint64_t body_off;
  uint64_t body_size;
  unsigned flags; /* MSG_F_8BIT */
};

/* Parse a whole pickup file held in memory: the envelope, then the
 * message's header lines (<= 998 bytes, no control characters) and body
 * lines (<= 998 bytes: a longer line is refused, not folded, see
 * docs/spool.md). Duplicate x-receiver addresses (the same local part and
 * the same domain ignoring case) are dropped and counted in ndup. Returns
 * 0, or -EBADMSG with a one-line reason in reason[0..reason_len). env is
 * filled on success and must be released with msg_envelope_done either
 * way. */
int msg_parse(const char *data, size_t len, struct msg_envelope *env, char *reason,
              size_t reason_len);
void msg_envelope_done(struct msg_envelope *env);

/* Whether an x-context key (klen bytes) is secret; see msg_scrub_secrets. */
typedef bool (*msg_secret_fn)(const char *key, size_t klen);
/* Overwrite, in data[0, body_off) (a parsed file's envelope), the text of
 * each x-context line whose key is_secret says is secret with "_=****..."
 * of the same length, so offsets stay valid and the secret leaves the
 * buffer. Returns the number of lines changed and the changed byte range
 * in [*lo, *hi) (both 0 when none). */
size_t msg_scrub_secrets(char *data, size_t body_off, msg_secret_fn is_secret, size_t *lo,
                         size_t *hi);

/* Append the envelope lines for sender ("" for <>) and rcpt[0..n) to b. */
void msg_envelope_write(struct buf *b, const char *sender, char *const *rcpt, size_t n);

/* Header fields a submitted message lacks (its header section is the text
 * up to the first empty line): a mask of these. */
#define MSG_HDR_DATE 0x1u
#define MSG_HDR_MESSAGE_ID 0x2u
unsigned msg_headers_missing(const char *m, size_t len);
/* Append to b the fields in `missing`, as Postfix's cleanup adds them:
 * "Date: <RFC 5322 date of now in local time>" and
 * "Message-ID: <unique@host>" (unique: letters, digits, '.' and '-' only;
 * host: the domain of the sender or the host name). LF line ends. */
void msg_headers_add(struct buf *b, unsigned missing, time_t now, const char *unique,
                     const char *host);
