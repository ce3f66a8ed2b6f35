/* dsn: RFC 3464 delivery status notifications (bounces).
 *
 * Builds a complete RFC 5322 message (CRLF line ends): multipart/report
 * with report-type=delivery-status, a human-readable part, a
 * message/delivery-status part (Reporting-MTA, Arrival-Date, then per
 * recipient Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code)
 * and the original message's headers as text/rfc822-headers. The DSN goes
 * to the original envelope sender and is itself sent with the null sender
 * (dsn_envelope writes the pickup lines saying so). Never for a message
 * whose sender is null: that is refused with -EINVAL (no bounce loops).
 *
 * Pure: time and unique strings are passed in. Any thread. */
#pragma once

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define DSN_HEADERS_MAX (64u * 1024u) /* original header bytes quoted */
#define DSN_DIAG_MAX 900               /* bytes of remote text per recipient */

struct dsn_rcpt {
  const char *rcpt;       /* the original recipient "local@domain" */
  const char *action;     /* "failed" (default when NULL) or "delayed" */
  const char *status;     /* enhanced status "5.1.1"; NULL: from code */
  int code;               /* SMTP reply code (0 when none) */
  const char *diag;       /* reply or reason text (sanitised here) */
  const char *remote_mta; /* remote host name or IP; NULL when none */
};

struct dsn_params {
  const char *reporting_mta; /* this host's name (Reporting-MTA, From) */
  const char *sender;        /* the original envelope sender; DSN's To */
  const char *queue_id;      /* the original spool message id */
  uint64_t arrival_ms;       /* when the original was received (wall) */
  uint64_t now_ms;           /* now (wall): Date */
  const char *unique;        /* unique token for Message-ID and boundary */
};

/* Append the DSN for n recipients of the message whose bytes (headers and
 * body) are orig[0..orig_len) to out. Returns 0, or -EINVAL when the
 * sender is null ("" or "<>") or n == 0 (out unchanged). */
int dsn_build(struct buf *out, const struct dsn_params *p, const struct dsn_rcpt *r, size_t n,
              const char *orig, size_t orig_len);

/* Append the pickup-file envelope for a DSN: the null sender, and the
 * original sender as the only recipient. -EINVAL on a null sender. */
int dsn_envelope(struct buf *out, const char *orig_sender);
