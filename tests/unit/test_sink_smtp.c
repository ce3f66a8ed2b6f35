/* Transcript tests for impetus-sink's protocol module (tools/sink/sink_smtp.c):
 * client bytes in, server replies out, fed whole and split at every byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "sink_stubs.h"

static char u_name[] = "alice", u_pass[] = "s3cret";
static struct sink_user users[] = {{u_name, u_pass, NULL}};

static void reset_globals(void)
{
  memset(&g_sink, 0, sizeof(g_sink));
  g_sink.o.hostname = "sink.test";
  g_sink.o.max_size = 1000;
  g_sink.o.max_rcpts = 3;
  g_sink.o.auth_mechs = AUTH_PLAIN | AUTH_LOGIN | AUTH_XOAUTH2;
  g_sink.o.disconnect_at = -1;
  g_sink.o.users = users;
  g_sink.o.nusers = 1;
  g_sink.o.save_dir = "x"; /* keep bodies so the test can see them */
  strcpy(g_sink.greeting, "220 sink.test ESMTP impetus-sink\r\n");
  g_sink.greeting_len = strlen(g_sink.greeting);
  buf_reset(&stub_out);
  stub_msgs = 0;
  stub_rand_value = 0.99;
}

/* Run a session fed in chunks of `step` bytes (0: all at once). */
static char *run(const char *in, size_t step)
{
  struct sink_conn c;
  memset(&c, 0, sizeof(c));
  buf_reset(&stub_out);
  sink_smtp_start(&c);
  size_t n = strlen(in);
  for (size_t off = 0; off < n;) {
    size_t k = step ? step : n;
    if (k > n - off)
      k = n - off;
    sink_smtp_feed(&c, (const uint8_t *)in + off, k);
    while (c.paused)
      sink_smtp_resume(&c);
    off += k;
  }
  stub_conn_done(&c);
  char *s = calloc(1, buf_avail(&stub_out) + 1);
  memcpy(s, buf_head(&stub_out), buf_avail(&stub_out));
  return s;
}

static const char session[] =
    "EHLO c.test\r\n"
    "MAIL FROM:<a@x> SIZE=10\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    "Subject: s\r\n\r\n..stuffed\r\n.\r.x\r\nlast\r\n.\r\n"
    "MAIL FROM:<>\r\nRCPT TO:<c@y>\r\nDATA\r\nx\r\n.\r\n"
    "QUIT\r\n";

static const char expected[] =
    "220 sink.test ESMTP impetus-sink\r\n"
    "250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    "250-AUTH PLAIN LOGIN XOAUTH2\r\n250 ENHANCEDSTATUSCODES\r\n"
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    "250 2.0.0 Ok: queued as 1\r\n"
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    "250 2.0.0 Ok: queued as 2\r\n"
    "221 2.0.0 Bye\r\n";

static void test_pipelined_session(void **state)
{
  (void)state;
  reset_globals();
  char *out = run(session, 0);
  assert_string_equal(out, expected);
  free(out);
}

static void test_split_at_every_byte(void **state)
{
  (void)state;
  for (size_t step = 1; step < 12; step++) {
    reset_globals();
    char *out = run(session, step);
    assert_string_equal(out, expected);
    free(out);
    assert_int_equal(stub_msgs, 2);
  }
}

static void test_dot_unstuffing(void **state)
{
  (void)state;
  /* whole, and cut at every offset: a dot at the start of a read, mid-line
   * dots, a line end that is the last byte of a read */
  static const size_t steps[] = {0, 1, 2, 3, 4, 5, 7, 11};
  for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
    reset_globals();
    char *out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
                    "..a\r\n.\r.b\r\nx.y.\r\n...\r\n..c.d\r\n.x\r\nend\r\n.\r\n",
                    steps[k]);
    free(out);
    assert_int_equal(stub_msgs, 1);
    const char want[] = ".a\r\n\r.b\r\nx.y.\r\n..\r\n.c.d\r\nx\r\nend\r\n";
    assert_int_equal(buf_avail(&stub_last_body), strlen(want));
    assert_memory_equal(buf_head(&stub_last_body), want, strlen(want));
  }
}

static void test_auth(void **state)
{
  (void)state;
  reset_globals();
  /* PLAIN "\0alice\0s3cret", LOGIN alice/s3cret, bad password, XOAUTH2. */
  char *out = run("EHLO c\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n", 3);
  assert_non_null(strstr(out, "235 2.7.0"));
  free(out);
  out = run("EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nczNjcmV0\r\n", 0);
  assert_non_null(strstr(out, "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0"));
  free(out);
  out = run("EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n", 0);
  assert_non_null(strstr(out, "535 5.7.8"));
  free(out);
  /* user=alice^Aauth=Bearer s3cret^A^A */
  out = run("EHLO c\r\nAUTH XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciBzM2NyZXQBAQ==\r\n", 0);
  assert_non_null(strstr(out, "235 2.7.0"));
  free(out);
  out = run("EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\n", 0);
  assert_non_null(strstr(out, "334 \r\n501 5.0.0"));
  assert_non_null(strstr(out, "504 5.5.4"));
  free(out);
  g_sink.o.require_auth = 1;
  out = run("EHLO c\r\nMAIL FROM:<a@x>\r\n", 0);
  assert_non_null(strstr(out, "530 5.7.0 Authentication required"));
  free(out);
  g_sink.o.require_tls_for_auth = 1;
  out = run("EHLO c\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n", 0);
  assert_null(strstr(out, "250-AUTH"));
  assert_non_null(strstr(out, "538 5.7.11"));
  free(out);
}

static void test_faults_and_limits(void **state)
{
  (void)state;
  reset_globals();
  g_sink.o.fail[CMD_RCPT] = (struct sink_fail){4, 0.5};
  stub_rand_value = 0.1;
  g_sink.o.latency_ms[CMD_MAIL] = 50;
  char *out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n", 0);
  assert_non_null(strstr(out, "250 2.1.0 Ok\r\n450 4.2.0 Injected temporary failure for RCPT"));
  assert_int_equal(stub_pause_ms, 50);
  assert_int_equal(g_sink.st.fail_injected[CMD_RCPT], 1);
  free(out);
  reset_globals();
  g_sink.o.disconnect_at = CMD_DATA;
  out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nNOOP\r\n", 0);
  assert_non_null(strstr(out, "250 2.1.5 Ok\r\n421 4.3.2"));
  assert_null(strstr(out, "NOOP"));
  free(out);
  reset_globals();
  char big[SINK_MAX_LINE + 100];
  memset(big, 'x', sizeof(big));
  memcpy(big + sizeof(big) - 20, "\r\nRSET\r\n", 9);
  out = run(big, 4096);
  assert_string_equal(out, "220 sink.test ESMTP impetus-sink\r\n500 5.5.2 Error: line too long\r\n"
                           "250 2.0.0 Ok\r\n");
  free(out);
  out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\n"
            "RCPT TO:<4@y>\r\nDATA\r\n", 0);
  assert_non_null(strstr(out, "452 4.5.3"));
  free(out);
}

/* The continuation lines a hostile reply with `code` starts with. */
static void add_continuations(struct buf *b, const char *code)
{
  for (int i = 0; i < SINK_CONTINUATIONS; i++)
    buf_printf(b, "%s-continuation line %d\r\n", code, i);
}

static void test_hostile_continuations(void **state)
{
  (void)state;
  reset_globals();
  g_sink.o.hostile = HOSTILE_CONTINUATIONS;
  g_sink.o.hostile_stage = CMD_EHLO;
  static const char ehlo[] = "250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
                             "250-8BITMIME\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n"
                             "250 ENHANCEDSTATUSCODES\r\n";
  struct buf want = {0};
  buf_append_str(&want, g_sink.greeting);
  add_continuations(&want, "250");
  buf_append_str(&want, ehlo);
  add_continuations(&want, "501"); /* the cached block gets its code patched */
  buf_append_str(&want, "501 5.5.4 Syntax: EHLO hostname\r\n");
  buf_append_str(&want, "501 5.5.4 Syntax: EHLO hostname\r\n"); /* HELO: not the stage */
  add_continuations(&want, "250");
  buf_append_str(&want, ehlo);
  buf_append_str(&want, "221 2.0.0 Bye\r\n");
  for (size_t step = 0; step < 8; step += 7) {
    char *out = run("EHLO a\r\nEHLO\r\nHELO\r\nEHLO b\r\nQUIT\r\n", step);
    assert_int_equal(strlen(out), buf_avail(&want));
    assert_memory_equal(out, buf_head(&want), buf_avail(&want));
    free(out);
  }
  buf_done(&want, 0);

  /* Pipelined EHLOs would queue 270 KB of replies each: the client is
   * dropped once SINK_MAX_OUTBUF bytes are unsent. */
  struct buf in = {0};
  for (int i = 0; i < 100; i++)
    buf_append_str(&in, "EHLO a\r\n");
  struct sink_conn c;
  memset(&c, 0, sizeof(c));
  buf_reset(&stub_out);
  sink_smtp_start(&c);
  sink_smtp_feed(&c, buf_head(&in), buf_avail(&in));
  assert_true(c.closing);
  assert_true(buf_avail(&stub_out) <= SINK_MAX_OUTBUF);
  assert_true(buf_avail(&stub_out) > SINK_MAX_OUTBUF / 2);
  stub_conn_done(&c);
  buf_done(&in, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_pipelined_session),
    cmocka_unit_test(test_split_at_every_byte),
    cmocka_unit_test(test_dot_unstuffing),
    cmocka_unit_test(test_auth),
    cmocka_unit_test(test_faults_and_limits),
    cmocka_unit_test(test_hostile_continuations),
  };
  int r = cmocka_run_group_tests(tests, NULL, NULL);
  buf_done(&stub_out, 0);
  buf_done(&stub_last_body, 0);
  free(stub_counter);
  return r;
}
