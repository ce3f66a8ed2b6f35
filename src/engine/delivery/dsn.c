/* dsn.c owns building RFC 3464 bounce messages. Pure (time passed in),
 * never logs, never touches the spool; any thread. */
#include "dsn.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static bool null_sender(const char *s)
{
  return s == NULL || *s == '\0' || !strcmp(s, "<>");
}

/* Append s with control bytes folded to single spaces and non-ASCII as
 * '?', cut at max bytes. */
static void put_clean(struct buf *b, const char *s, size_t max)
{
  size_t n = 0;
  bool space = false;
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p && n < max; p++) {
    unsigned char c = *p;
    if (c < 0x20 || c == 0x7f) {
      space = n > 0;
      continue;
    }
    if (space) {
      buf_append(b, " ", 1);
      n++;
      space = false;
    }
    if (c >= 0x80)
      c = '?';
    buf_append(b, &c, 1);
    n++;
  }
}

static void put_date(struct buf *b, uint64_t ms)
{
  static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t t = (time_t)(ms / 1000u);
  struct tm tm;
  gmtime_r(&t, &tm);
  buf_printf(b, "%s, %d %s %04d %02d:%02d:%02d +0000", wd[tm.tm_wday], tm.tm_mday, mo[tm.tm_mon],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void put_status(struct buf *b, const struct dsn_rcpt *r)
{
  int c, s, d;
  if (r->status && sscanf(r->status, "%d.%d.%d", &c, &s, &d) == 3 && (c == 2 || c == 4 || c == 5) &&
      s >= 0 && s < 1000 && d >= 0 && d < 1000) {
    buf_printf(b, "%d.%d.%d", c, s, d);
    return;
  }
  buf_append_str(b, r->code >= 400 && r->code < 500 ? "4.0.0" : "5.0.0");
}

static const char *action(const struct dsn_rcpt *r)
{
  return r->action && !strcmp(r->action, "delayed") ? "delayed" : "failed";
}

/* Copy the header block of orig (up to the first empty line), with every
 * line ending made CRLF, at most DSN_HEADERS_MAX bytes, cut at a line. */
static void put_headers(struct buf *b, const char *orig, size_t len)
{
  size_t i = 0, written = 0;
  while (i < len) {
    size_t e = i;
    while (e < len && orig[e] != '\n')
      e++;
    size_t l = e;
    if (l > i && orig[l - 1] == '\r')
      l--;
    if (l == i)
      break; /* the empty line: end of headers */
    if (written + (l - i) + 2 > DSN_HEADERS_MAX)
      break;
    for (size_t k = i; k < l; k++) {
      char c = orig[k];
      if (c == '\0' || c == '\r')
        c = ' ';
      buf_append(b, &c, 1);
    }
    buf_append(b, "\r\n", 2);
    written += (l - i) + 2;
    i = e + 1;
  }
}

int dsn_build(struct buf *out, const struct dsn_params *p, const struct dsn_rcpt *r, size_t n,
              const char *orig, size_t orig_len)
{
  if (null_sender(p->sender) || n == 0)
    return -EINVAL;
  const char *mta = p->reporting_mta ? p->reporting_mta : "localhost";
  const char *u = p->unique ? p->unique : "0";
  bool delayed_only = true;
  for (size_t i = 0; i < n; i++)
    if (strcmp(action(&r[i]), "delayed"))
      delayed_only = false;

  buf_append_str(out, "From: Mail Delivery System <MAILER-DAEMON@");
  put_clean(out, mta, 255);
  buf_append_str(out, ">\r\nTo: <");
  put_clean(out, p->sender, 320);
  buf_append_str(out, ">\r\nSubject: ");
  buf_append_str(out, delayed_only ? "Delayed Mail (still being retried)"
                                   : "Undelivered Mail Returned to Sender");
  buf_append_str(out, "\r\nDate: ");
  put_date(out, p->now_ms);
  buf_append_str(out, "\r\nMessage-ID: <");
  put_clean(out, u, 64);
  buf_append_str(out, ".dsn@");
  put_clean(out, mta, 255);
  buf_append_str(out, ">\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
                      "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                      "\tboundary=\"");
  buf_append_str(out, "=_impetus_");
  put_clean(out, u, 64);
  buf_append_str(out, "\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n");

#define BOUNDARY(tail)                       \
  do {                                       \
    buf_append_str(out, "--=_impetus_");     \
    put_clean(out, u, 64);                   \
    buf_append_str(out, tail);               \
  } while (0)

  /* 1: for the human */
  BOUNDARY("\r\n");
  buf_append_str(out, "Content-Description: Notification\r\n"
                      "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
                      "This is the mail system at host ");
  put_clean(out, mta, 255);
  buf_append_str(out, ".\r\n\r\n");
  buf_append_str(out, delayed_only
                          ? "Your message could not be delivered yet to the recipients\r\n"
                            "below. It is still being retried; no action is needed.\r\n\r\n"
                          : "Your message could not be delivered to one or more recipients.\r\n"
                            "It has been returned with the reasons below.\r\n\r\n");
  for (size_t i = 0; i < n; i++) {
    buf_append_str(out, "<");
    put_clean(out, r[i].rcpt, 320);
    buf_append_str(out, ">: ");
    put_clean(out, r[i].diag, DSN_DIAG_MAX);
    buf_append_str(out, "\r\n");
  }
  buf_append_str(out, "\r\n");

  /* 2: for the machine (RFC 3464) */
  BOUNDARY("\r\n");
  buf_append_str(out, "Content-Description: Delivery report\r\n"
                      "Content-Type: message/delivery-status\r\n\r\n"
                      "Reporting-MTA: dns; ");
  put_clean(out, mta, 255);
  if (p->queue_id) {
    buf_append_str(out, "\r\nX-Impetus-Queue-ID: ");
    put_clean(out, p->queue_id, 128);
  }
  buf_append_str(out, "\r\nArrival-Date: ");
  put_date(out, p->arrival_ms);
  buf_append_str(out, "\r\n");
  for (size_t i = 0; i < n; i++) {
    buf_append_str(out, "\r\nFinal-Recipient: rfc822; ");
    put_clean(out, r[i].rcpt, 320);
    buf_append_str(out, "\r\nAction: ");
    buf_append_str(out, action(&r[i]));
    buf_append_str(out, "\r\nStatus: ");
    put_status(out, &r[i]);
    if (r[i].remote_mta) {
      buf_append_str(out, "\r\nRemote-MTA: dns; ");
      put_clean(out, r[i].remote_mta, 255);
    }
    if (r[i].diag) {
      buf_append_str(out, "\r\nDiagnostic-Code: smtp; ");
      put_clean(out, r[i].diag, DSN_DIAG_MAX);
    }
    buf_append_str(out, "\r\n");
  }
  buf_append_str(out, "\r\n");

  /* 3: the original headers */
  BOUNDARY("\r\n");
  buf_append_str(out, "Content-Description: Undelivered Message Headers\r\n"
                      "Content-Type: text/rfc822-headers\r\n\r\n");
  put_headers(out, orig ? orig : "", orig ? orig_len : 0);
  buf_append_str(out, "\r\n");
  BOUNDARY("--\r\n");
#undef BOUNDARY
  return 0;
}

int dsn_envelope(struct buf *out, const char *orig_sender)
{
  if (null_sender(orig_sender))
    return -EINVAL;
  buf_append_str(out, "x-sender: <>\nx-receiver: <");
  put_clean(out, orig_sender, 320);
  buf_append_str(out, ">\n");
  return 0;
}
