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
    "250-CHUNKING\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n250 ENHANCEDSTATUSCODES\r\n"
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

/* BDAT (RFC 3030): three messages pipelined, one of them in three chunks,
 * the data raw (dots and a lone "CRLF.CRLF" are data), the next command
 * right behind a chunk's last octet; whole and cut at every offset. */
static const char bdat_session[] =
    "EHLO c\r\n"
    "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 12 LAST\r\n.a\r\n.\r\n..b\r\n"
    "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 10\r\n0123456789BDAT 5\r\n\r\n.\r\nBDAT 0 LAST\r\n"
    "MAIL FROM:<>\r\nRCPT TO:<c@y>\r\nbdat 3  last\r\nxyzQUIT\r\n";
static const char bdat_expected[] =
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 1\r\n"
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 10 octets received\r\n"
    "250 2.0.0 5 octets received\r\n250 2.0.0 Ok: queued as 2\r\n"
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 3\r\n"
    "221 2.0.0 Bye\r\n";

/* The replies after the EHLO reply. */
static const char *after_ehlo(const char *out)
{
  const char *e = strstr(out, "250 ENHANCEDSTATUSCODES\r\n");
  assert_non_null(e);
  return e + strlen("250 ENHANCEDSTATUSCODES\r\n");
}

static void test_bdat_pipelined(void **state)
{
  (void)state;
  for (size_t step = 0; step < 40; step++) {
    reset_globals();
    char *out = run(bdat_session, step);
    assert_string_equal(after_ehlo(out), bdat_expected);
    free(out);
    assert_int_equal(stub_msgs, 3);
    assert_int_equal(buf_avail(&stub_last_body), 3);
    assert_memory_equal(buf_head(&stub_last_body), "xyz", 3);
    assert_int_equal(g_sink.st.bdat_chunks, 5);
    assert_int_equal(g_sink.st.bdat_messages, 3);
  }
  /* The same message by DATA (stuffed) and by BDAT (raw): equal content. */
  static const char raw[] = "Subject: s\r\n\r\n.a\r\n.\r\n..\r\nend\r\n";
  reset_globals();
  char *out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
                  "Subject: s\r\n\r\n..a\r\n..\r\n...\r\nend\r\n.\r\n", 0);
  free(out);
  struct buf via_data = {0};
  buf_append(&via_data, buf_head(&stub_last_body), buf_avail(&stub_last_body));
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT %zu LAST\r\n%s",
           strlen(raw), raw);
  out = run(cmd, 0);
  assert_non_null(strstr(out, "250 2.0.0 Ok: queued as 2\r\n"));
  free(out);
  assert_int_equal(buf_avail(&via_data), strlen(raw));
  assert_int_equal(buf_avail(&stub_last_body), strlen(raw));
  assert_memory_equal(buf_head(&via_data), raw, strlen(raw));
  assert_memory_equal(buf_head(&stub_last_body), raw, strlen(raw));
  buf_done(&via_data, 0);
}

static void test_bdat_errors(void **state)
{
  (void)state;
  /* No MAIL / no RCPT: 503 after the octets are read and discarded; the
   * pipelined commands behind them still work. */
  for (size_t step = 0; step < 9; step += 4) {
    reset_globals();
    char *out = run("EHLO c\r\nBDAT 6\r\nMAIL F"
                    "BDAT 4 LAST\r\nRSET"
                    "MAIL FROM:<a@x>\r\nBDAT 5 LAST\r\nRCPT "
                    "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 2 LAST\r\nok"
                    "NOOP\r\n", step);
    assert_string_equal(after_ehlo(out),
                        "503 5.5.1 Error: need MAIL command\r\n"
                        "503 5.5.1 Error: need MAIL command\r\n"
                        "250 2.1.0 Ok\r\n503 5.5.1 Error: need RCPT command\r\n"
                        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 1\r\n"
                        "250 2.0.0 Ok\r\n");
    free(out);
    assert_int_equal(stub_msgs, 1);
    assert_memory_equal(buf_head(&stub_last_body), "ok", 2);
  }
  /* Bad syntax: 501, and the line after it is a command again. */
  reset_globals();
  char *out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"
                  "BDAT\r\nBDAT x\r\nBDAT 1 LAS\r\nBDAT -1\r\nBDAT +1\r\nBDAT 1LAST\r\n"
                  "BDAT 1234567890123456789\r\nBDAT 1 LAST x\r\nNOOP\r\n"
                  "BDAT 000000000000000002 LAST\r\nab", 0);
  const char *syn = "501 5.5.4 Syntax: BDAT count [LAST]\r\n";
  const char *p = after_ehlo(out) + strlen("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  for (int i = 0; i < 8; i++, p += strlen(syn))
    assert_memory_equal(p, syn, strlen(syn));
  assert_string_equal(p, "250 2.0.0 Ok\r\n250 2.0.0 Ok: queued as 1\r\n");
  free(out);
  /* DATA and RCPT inside a BDAT transaction: 503, the transaction goes on;
   * RSET clears it; BDAT 0 LAST alone is an empty message. */
  reset_globals();
  out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3\r\nabcDATA\r\n"
            "RCPT TO:<c@y>\r\nBDAT 0 LAST\r\n"
            "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 1\r\nxRSET\r\nDATA\r\n"
            "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 0 LAST\r\n", 0);
  assert_string_equal(after_ehlo(out),
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 3 octets received\r\n"
                      "503 5.5.1 Error: DATA after BDAT\r\n503 5.5.1 Error: RCPT after BDAT\r\n"
                      "250 2.0.0 Ok: queued as 1\r\n"
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 1 octets received\r\n"
                      "250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n"
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 2\r\n");
  free(out);
  assert_int_equal(stub_msgs, 2);
  assert_int_equal(buf_avail(&stub_last_body), 0);
  /* --no-chunking: not advertised, BDAT refused like an unknown command. */
  reset_globals();
  g_sink.o.no_chunking = 1;
  out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 0 LAST\r\n", 0);
  assert_null(strstr(out, "CHUNKING"));
  assert_string_equal(after_ehlo(out), "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                                       "502 5.5.1 Error: command not implemented\r\n");
  free(out);
  assert_int_equal(stub_msgs, 0);
}

static void test_bdat_limits_and_faults(void **state)
{
  (void)state;
  /* The size limit (1000) counts the sum of the chunks: 552 at LAST. */
  reset_globals();
  struct buf in = {0};
  buf_append_str(&in, "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 600\r\n");
  for (int i = 0; i < 600; i++)
    buf_append(&in, ".", 1);
  buf_append_str(&in, "BDAT 401 LAST\r\n");
  for (int i = 0; i < 401; i++)
    buf_append(&in, "\n", 1);
  buf_append_str(&in, "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 1000 LAST\r\n");
  for (int i = 0; i < 1000; i++)
    buf_append(&in, "x", 1);
  buf_append(&in, "", 1);
  char *out = run((const char *)buf_head(&in), 0);
  assert_string_equal(after_ehlo(out),
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 600 octets received\r\n"
                      "552 5.3.4 Message size exceeds fixed limit\r\n"
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 1\r\n");
  free(out);
  buf_done(&in, 0);
  assert_int_equal(g_sink.st.messages_rejected, 1);
  assert_int_equal(buf_avail(&stub_last_body), 1000);

  /* --fail DOT applies to LAST; --fail BDAT to the other chunks, after
   * which the transaction's chunks are discarded until LAST. */
  reset_globals();
  g_sink.o.fail[CMD_DOT] = (struct sink_fail){5, 0.5};
  g_sink.o.fail[CMD_BDAT] = (struct sink_fail){4, 0.5};
  stub_rand_value = 0.1;
  out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 2 LAST\r\nab"
            "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 2\r\nabBDAT 2\r\ncdBDAT 2 LAST\r\nef"
            "MAIL FROM:<a@x>\r\nQUIT\r\n", 0);
  assert_string_equal(after_ehlo(out),
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                      "554 5.3.0 Injected permanent failure for DOT (impetus-sink)\r\n"
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                      "451 4.3.0 Injected temporary failure for BDAT (impetus-sink)\r\n"
                      "503 5.5.1 Error: chunk discarded after an earlier BDAT failure\r\n"
                      "503 5.5.1 Error: chunk discarded after an earlier BDAT failure\r\n"
                      "250 2.1.0 Ok\r\n221 2.0.0 Bye\r\n");
  free(out);
  assert_int_equal(stub_msgs, 0);
  assert_int_equal(g_sink.st.fail_injected[CMD_DOT], 1);
  assert_int_equal(g_sink.st.fail_injected[CMD_BDAT], 1);

  /* Delays: a chunk's reply waits for --latency BDAT after its octets,
   * LAST's for the DOT delay; the command itself is not delayed. */
  reset_globals();
  g_sink.o.latency_ms[CMD_BDAT] = 30;
  g_sink.o.latency_ms[CMD_DOT] = 40;
  out = run("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 1\r\naBDAT 1 LAST\r\nb"
            "BDAT x\r\n", 3);
  assert_string_equal(after_ehlo(out),
                      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 1 octets received\r\n"
                      "250 2.0.0 Ok: queued as 1\r\n501 5.5.4 Syntax: BDAT count [LAST]\r\n");
  free(out);
  assert_int_equal(g_sink.st.delayed[CMD_BDAT], 2);
  assert_int_equal(g_sink.st.delayed[CMD_DOT], 1);
  assert_memory_equal(buf_head(&stub_last_body), "ab", 2);
}

/* Plaintext pipelined behind STARTTLS in the same read is discarded
 * (RFC 3207), also when the command line itself began in an earlier read.
 * (Later reads go through TLS, so only one read after the cut is fed.) */
static void test_starttls_discards_pipelined(void **state)
{
  (void)state;
  static int dummy;
  static const char in[] = "EHLO c\r\nSTARTTLS\r\nNOOP\r\nMAIL FROM:<a@x>\r\n";
  for (size_t cut = 0; cut < strlen("EHLO c\r\nSTARTTLS\r\n"); cut++) {
    reset_globals();
    g_sink.ssl_ctx = (SSL_CTX *)&dummy; /* only tested for NULL by sink_smtp.c */
    struct sink_conn c;
    memset(&c, 0, sizeof(c));
    sink_smtp_start(&c);
    sink_smtp_feed(&c, (const uint8_t *)in, cut);
    sink_smtp_feed(&c, (const uint8_t *)in + cut, strlen(in) - cut);
    assert_true(c.tls_active);
    stub_conn_done(&c);
    char *out = calloc(1, buf_avail(&stub_out) + 1);
    memcpy(out, buf_head(&stub_out), buf_avail(&stub_out));
    assert_string_equal(after_ehlo(out), "220 2.0.0 Ready to start TLS\r\n");
    free(out);
  }
  g_sink.ssl_ctx = NULL;
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
                             "250-8BITMIME\r\n250-CHUNKING\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n"
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
    cmocka_unit_test(test_bdat_pipelined),
    cmocka_unit_test(test_bdat_errors),
    cmocka_unit_test(test_bdat_limits_and_faults),
    cmocka_unit_test(test_starttls_discards_pipelined),
  };
  int r = cmocka_run_group_tests(tests, NULL, NULL);
  buf_done(&stub_out, 0);
  buf_done(&stub_last_body, 0);
  free(stub_counter);
  return r;
}
