/* test_msg: the message-format library (src/msg/msg.c) on its own, with
 * util only: the envelope written and parsed back, duplicate recipients,
 * body line limits, secret scrubbing through a caller's predicate, and the
 * Date: / Message-ID: fix-ups made at submission. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "msg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void test_envelope_roundtrip(void **state)
{
  (void)state;
  struct buf b = {0};
  char r0[] = "a@x.example", r1[] = "b@y.example", r2[] = "A@X.EXAMPLE";
  char *rc[] = {r0, r1, r2};
  msg_envelope_write(&b, "s@z.example", rc, 3);
  buf_append_str(&b, "Subject: hi\n\nbody\n");
  struct msg_envelope env;
  char why[256];
  assert_int_equal(msg_parse((const char *)b.data, b.len, &env, why, sizeof why), 0);
  assert_string_equal(env.sender, "s@z.example");
  assert_int_equal(env.nrcpt, 3); /* the local part's case counts */
  assert_int_equal(env.ndup, 0);
  assert_int_equal(env.body_size, 18);
  assert_memory_equal(b.data + env.body_off, "Subject: hi\n\nbody\n", 18);
  msg_envelope_done(&env);
  buf_done(&b, 0);
}

static bool secret_key(const char *k, size_t n)
{
  return n == 2 && !memcmp(k, "pw", 2);
}

static void test_scrub_predicate(void **state)
{
  (void)state;
  char f[] = "x-sender: <s@z.example>\nx-receiver: <r@z.example>\nx-context: pw=hunter2\n"
             "x-context: other=keep\nSubject: s\n\nb\n";
  struct msg_envelope env;
  char why[256];
  assert_int_equal(msg_parse(f, strlen(f), &env, why, sizeof why), 0);
  size_t off = env.body_off, lo, hi;
  msg_envelope_done(&env);
  assert_int_equal(msg_scrub_secrets(f, off, secret_key, &lo, &hi), 1);
  assert_null(strstr(f, "hunter2"));
  assert_non_null(strstr(f, "x-context: _=*****"));
  assert_non_null(strstr(f, "other=keep"));
}

static void test_body_lines(void **state)
{
  (void)state;
  char f[3000];
  int h = snprintf(f, sizeof f, "x-sender: <s@z.example>\nx-receiver: <r@z.example>\n"
                                "Subject: s\n\n");
  memset(f + h, 'x', 998);
  memcpy(f + h + 998, "\r\n", 3);
  struct msg_envelope env;
  char why[256];
  assert_int_equal(msg_parse(f, strlen(f), &env, why, sizeof why), 0);
  msg_envelope_done(&env);
  memset(f + h, 'x', 999);
  memcpy(f + h + 999, "\n", 2);
  assert_int_equal(msg_parse(f, strlen(f), &env, why, sizeof why), -EBADMSG);
  assert_non_null(strstr(why, "body line 1 is longer than 998 bytes (999)"));
  msg_envelope_done(&env);
}

static void test_header_fixups(void **state)
{
  (void)state;
  const char *none = "Subject: s\nTo: <a@b.example>\n\nDate: not a header\n";
  assert_int_equal(msg_headers_missing(none, strlen(none)), MSG_HDR_DATE | MSG_HDR_MESSAGE_ID);
  const char *both = "date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMESSAGE-ID: <x@y>\r\n\r\nb\r\n";
  assert_int_equal(msg_headers_missing(both, strlen(both)), 0);
  const char *id = "Message-Id: <x@y>\nSubject: s\n\nb\n";
  assert_int_equal(msg_headers_missing(id, strlen(id)), MSG_HDR_DATE);
  struct buf b = {0};
  msg_headers_add(&b, MSG_HDR_DATE | MSG_HDR_MESSAGE_ID, 1796680061, "123.456.7", "s.example");
  buf_append(&b, "", 1);
  const char *s = (const char *)b.data;
  assert_non_null(strstr(s, "Message-ID: <123.456.7@s.example>\n"));
  assert_int_equal(strncmp(s, "Date: ", 6), 0);
  /* "Date: Www, D Mmm YYYY HH:MM:SS +hhmm\n" whatever the local zone */
  int d, y, hh, mm, ss, z;
  char wd[4], mon[4], sign;
  assert_int_equal(sscanf(s, "Date: %3s, %d %3s %d %d:%d:%d %c%4d", wd, &d, mon, &y, &hh, &mm,
                          &ss, &sign, &z),
                   9);
  assert_true(y == 2026 && (sign == '+' || sign == '-'));
  buf_done(&b, 0);
  b = (struct buf){0};
  msg_headers_add(&b, MSG_HDR_MESSAGE_ID, 0, "u", NULL);
  buf_append(&b, "", 1);
  assert_string_equal((const char *)b.data, "Message-ID: <u@localhost>\n");
  buf_done(&b, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_envelope_roundtrip),
      cmocka_unit_test(test_scrub_predicate),
      cmocka_unit_test(test_body_lines),
      cmocka_unit_test(test_header_fixups),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
