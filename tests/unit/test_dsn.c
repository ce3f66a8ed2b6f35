/* Unit tests for dsn: the RFC 3464 structure, the original headers as
 * text/rfc822-headers, sanitising, and no DSN for a null sender. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dsn.h"

static const char orig[] =
  "From: Alice <alice@example.com>\n"
  "To: bob@example.org\n"
  "Subject: hello\n"
  "Message-ID: <m1@example.com>\n"
  "\n"
  "secret body text\n";

static char *build(const struct dsn_params *p, const struct dsn_rcpt *r, size_t n, int *rc)
{
  struct buf b = {0};
  *rc = dsn_build(&b, p, r, n, orig, sizeof orig - 1);
  buf_append(&b, "", 1);
  char *s = strdup((char *)b.data);
  buf_done(&b, 0);
  return s;
}

static void test_structure(void **state)
{
  (void)state;
  struct dsn_params p = {.reporting_mta = "mta.example.net", .sender = "alice@example.com",
                         .queue_id = "Q1", .arrival_ms = 1700000000000ULL,
                         .now_ms = 1700086400000ULL, .unique = "u123"};
  struct dsn_rcpt r[2] = {
    {.rcpt = "bob@example.org", .status = "5.1.1", .code = 550,
     .diag = "550 5.1.1 <bob@example.org>: no such user\r\n", .remote_mta = "127.0.0.1"},
    {.rcpt = "carol@example.org", .code = 554,
     .diag = "554 5.4.7 [internal] exceeded max time without delivery"},
  };
  int rc;
  char *s = build(&p, r, 2, &rc);
  assert_int_equal(rc, 0);
  assert_non_null(strstr(s, "From: Mail Delivery System <MAILER-DAEMON@mta.example.net>\r\n"
                            "To: <alice@example.com>\r\n"
                            "Subject: Undelivered Mail Returned to Sender\r\n"
                            "Date: Wed, 15 Nov 2023 22:13:20 +0000\r\n"
                            "Message-ID: <u123.dsn@mta.example.net>\r\n"
                            "Auto-Submitted: auto-replied\r\n"
                            "MIME-Version: 1.0\r\n"
                            "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                            "\tboundary=\"=_impetus_u123\"\r\n\r\n"));
  assert_non_null(strstr(s, "--=_impetus_u123\r\nContent-Description: Notification\r\n"
                            "Content-Type: text/plain; charset=us-ascii\r\n\r\n"));
  assert_non_null(strstr(s, "<bob@example.org>: 550 5.1.1 <bob@example.org>: no such user\r\n"));
  assert_non_null(strstr(s, "Content-Type: message/delivery-status\r\n\r\n"
                            "Reporting-MTA: dns; mta.example.net\r\n"
                            "X-Impetus-Queue-ID: Q1\r\n"
                            "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
                            "\r\n"
                            "Final-Recipient: rfc822; bob@example.org\r\n"
                            "Action: failed\r\n"
                            "Status: 5.1.1\r\n"
                            "Remote-MTA: dns; 127.0.0.1\r\n"
                            "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.org>: no such user\r\n"
                            "\r\n"
                            "Final-Recipient: rfc822; carol@example.org\r\n"
                            "Action: failed\r\n"
                            "Status: 5.0.0\r\n"
                            "Diagnostic-Code: smtp; 554 5.4.7 [internal] exceeded max time without delivery\r\n"
                            "\r\n"));
  assert_non_null(strstr(s, "Content-Type: text/rfc822-headers\r\n\r\n"
                            "From: Alice <alice@example.com>\r\n"
                            "To: bob@example.org\r\n"
                            "Subject: hello\r\n"
                            "Message-ID: <m1@example.com>\r\n"
                            "\r\n--=_impetus_u123--\r\n"));
  assert_null(strstr(s, "secret body text")); /* headers only */
  /* every line ends in CRLF; no bare LF */
  for (char *q = s; *q; q++)
    if (*q == '\n')
      assert_true(q > s && q[-1] == '\r');
  /* the document ends with the closing boundary */
  assert_string_equal(s + strlen(s) - strlen("--=_impetus_u123--\r\n"), "--=_impetus_u123--\r\n");
  free(s);
}

static void test_null_sender(void **state)
{
  (void)state;
  struct dsn_params p = {.reporting_mta = "m", .sender = "", .unique = "u"};
  struct dsn_rcpt r = {.rcpt = "x@y", .code = 550};
  struct buf b = {0};
  assert_int_equal(dsn_build(&b, &p, &r, 1, orig, sizeof orig - 1), -EINVAL);
  p.sender = "<>";
  assert_int_equal(dsn_build(&b, &p, &r, 1, orig, sizeof orig - 1), -EINVAL);
  p.sender = NULL;
  assert_int_equal(dsn_build(&b, &p, &r, 1, orig, sizeof orig - 1), -EINVAL);
  p.sender = "a@b";
  assert_int_equal(dsn_build(&b, &p, &r, 0, orig, sizeof orig - 1), -EINVAL);
  assert_int_equal(b.len, 0);
  assert_int_equal(dsn_envelope(&b, "<>"), -EINVAL);
  assert_int_equal(dsn_envelope(&b, "alice@example.com"), 0);
  buf_append(&b, "", 1);
  assert_string_equal((char *)b.data, "x-sender: <>\nx-receiver: <alice@example.com>\n");
  buf_done(&b, 0);
}

static void test_hostile_input(void **state)
{
  (void)state;
  struct dsn_params p = {.reporting_mta = "m", .sender = "a@b\r\nBcc: evil@x", .unique = "u"};
  char diag[3000];
  memset(diag, 'z', sizeof diag - 1);
  diag[sizeof diag - 1] = '\0';
  diag[5] = '\n';
  struct dsn_rcpt r = {.rcpt = "x@y", .code = 451, .status = "junk", .diag = diag, .action = "delayed"};
  struct buf b = {0};
  /* headers without a body, CRLF, a NUL, and a 70 KB header block */
  size_t big = 70 * 1024;
  char *o = malloc(big);
  memset(o, 'h', big);
  memcpy(o, "A: 1\r\nB: \0x\r\n", 13);
  for (size_t i = 100; i < big; i += 80)
    o[i] = '\n';
  assert_int_equal(dsn_build(&b, &p, &r, 1, o, big), 0);
  buf_append(&b, "", 1);
  char *s = (char *)b.data;
  assert_null(strstr(s, "\r\nBcc:")); /* header injection folded away */
  assert_non_null(strstr(s, "To: <a@b Bcc: evil@x>\r\n"));
  assert_non_null(strstr(s, "Subject: Delayed Mail"));
  assert_non_null(strstr(s, "Action: delayed\r\nStatus: 4.0.0\r\n"));
  assert_non_null(strstr(s, "A: 1\r\nB:  x\r\n"));
  assert_true(b.len < 64 * 1024 + 8 * 1024);
  /* the diagnostic is cut */
  char run[DSN_DIAG_MAX + 2];
  memset(run, 'z', sizeof run - 1);
  run[sizeof run - 1] = '\0';
  assert_null(strstr(s, run));
  run[DSN_DIAG_MAX - 10] = '\0';
  assert_non_null(strstr(s, run));
  free(o);
  buf_done(&b, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_structure),
    cmocka_unit_test(test_null_sender),
    cmocka_unit_test(test_hostile_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
