/* Transcript tests of the SMTP server core (smtps): client bytes in, reply
 * bytes and events out, with the input split at every byte; pipelining,
 * held (asynchronous) decisions, AUTH, STARTTLS, BDAT, DSN parameters, and
 * hostile clients (over-long lines, too many recipients and errors,
 * timeouts, clients that do not read their replies). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "buf.h"
#include "smtps.h"

/* A driver that answers every decision at once, as configured. */
struct drv {
  struct smtps *s;
  struct buf out, body, log; /* replies; message octets; one line per event */
  int messages;
  bool hold_message;         /* leave MESSAGE decisions unanswered */
  bool auth_ok;              /* answer AUTH with 235 */
  int reject_rcpt;           /* answer RCPT with this code (0: accept) */
  bool held;
  uint64_t now;
};

static void drv_init(struct drv *d, const struct smtps_params *p)
{
  memset(d, 0, sizeof(*d));
  d->s = smtps_new(p);
  assert_non_null(d->s);
  smtps_start(d->s, 0);
}

static void drv_done(struct drv *d)
{
  smtps_free(d->s);
  buf_done(&d->out, 0);
  buf_done(&d->body, 0);
  buf_done(&d->log, 0);
}

static void drain(struct drv *d)
{
  const uint8_t *p;
  size_t n;
  while (smtps_output(d->s, &p, &n)) {
    buf_append(&d->out, p, n);
    smtps_output_consumed(d->s, n);
  }
}

static void events(struct drv *d)
{
  struct smtps_event ev;
  while (smtps_event(d->s, &ev)) {
    buf_printf(&d->log, "%s %d %.*s\n", smtps_cmd_names[ev.cmd], ev.type, (int)ev.arg_len, ev.arg);
    switch (ev.type) {
    case SMTPS_EV_DATA:
      buf_append(&d->body, ev.data, ev.len);
      break;
    case SMTPS_EV_BDAT:
      break;
    case SMTPS_EV_AUTH:
      if (d->auth_ok && ev.ok && ev.arg_len == 5 && !memcmp(ev.arg, "alice", 5) &&
          ev.pass_len == 6 && !memcmp(ev.pass, "s3cret", 6))
        smtps_answer(d->s, 235, "2.7.0 Authentication successful", d->now);
      else
        smtps_accept(d->s, d->now); /* the default refuses */
      break;
    case SMTPS_EV_MESSAGE:
      if (d->hold_message) {
        d->held = true;
        break;
      }
      if (ev.ok) {
        d->messages++;
        smtps_answer(d->s, 250, "2.0.0 Ok: queued", d->now);
      } else {
        smtps_accept(d->s, d->now);
      }
      break;
    case SMTPS_EV_COMMAND:
      if (ev.cmd == SMTPS_CMD_RCPT && ev.ok && d->reject_rcpt)
        smtps_answer(d->s, d->reject_rcpt, "5.7.1 Relaying denied", d->now);
      else
        smtps_accept(d->s, d->now);
      break;
    default:
      fail_msg("unexpected event %d", ev.type);
    }
  }
  drain(d);
}

/* Feed in[0..n) in slices of `step` bytes; returns the bytes consumed
 * (fewer when a decision is held or the session ended). */
static size_t feed(struct drv *d, const char *in, size_t n, size_t step)
{
  size_t off = 0;
  events(d);
  while (off < n) {
    size_t end = off + step < n ? off + step : n;
    size_t before = off;
    while (off < end) {
      size_t k = smtps_feed(d->s, in + off, end - off, d->now);
      off += k;
      struct buf *log = &d->log;
      size_t l0 = log->len;
      events(d);
      if (k == 0 && log->len == l0)
        break; /* blocked: held decision, done, or TLS */
    }
    if (off < end || (off == before && end > before))
      break;
  }
  events(d);
  return off;
}

#define S(x) x, sizeof(x) - 1

static struct smtps_params base_params(void)
{
  struct smtps_params p = {
    .hostname = "mx.test",
    .ext = SMTPS_EXT_PIPELINING | SMTPS_EXT_8BITMIME | SMTPS_EXT_ENHANCEDSTATUSCODES |
           SMTPS_EXT_CHUNKING | SMTPS_EXT_DSN | SMTPS_EXT_SMTPUTF8,
    .limits = {.max_size = 1000},
  };
  return p;
}

static const char session[] =
    "EHLO client.test\r\n"
    "MAIL FROM:<a@b.test> SIZE=20\r\n"
    "RCPT TO:<c@d.test>\r\n"
    "DATA\r\n"
    "Subject: x\r\n"
    "\r\n"
    "..dot\r\n"
    ".\r\n"
    "QUIT\r\n";

static const char session_out[] =
    "220 mx.test ESMTP\r\n"
    "250-mx.test\r\n"
    "250-PIPELINING\r\n"
    "250-SIZE 1000\r\n"
    "250-8BITMIME\r\n"
    "250-SMTPUTF8\r\n"
    "250-DSN\r\n"
    "250-CHUNKING\r\n"
    "250 ENHANCEDSTATUSCODES\r\n"
    "250 2.1.0 Ok\r\n"
    "250 2.1.5 Ok\r\n"
    "354 End data with <CR><LF>.<CR><LF>\r\n"
    "250 2.0.0 Ok: queued\r\n"
    "221 2.0.0 Bye\r\n";

/* The same transcript whatever the input split. */
static void t_transcript_every_split(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  for (size_t step = 1; step <= sizeof(session) - 1; step++) {
    struct drv d;
    drv_init(&d, &p);
    size_t k = feed(&d, S(session), step);
    assert_int_equal(k, sizeof(session) - 1);
    assert_int_equal(d.out.len, sizeof(session_out) - 1);
    assert_memory_equal(d.out.data, session_out, sizeof(session_out) - 1);
    assert_int_equal(d.body.len, strlen("Subject: x\r\n\r\n.dot\r\n"));
    assert_memory_equal(d.body.data, "Subject: x\r\n\r\n.dot\r\n", d.body.len);
    assert_int_equal(d.messages, 1);
    assert_true(smtps_done(d.s));
    drv_done(&d);
  }
}

/* Dot-unstuffing corner cases: the body as received after unstuffing. */
static void t_unstuff(void **st)
{
  (void)st;
  static const char in[] = "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\n"
                           "..a\r\n.\r.b\r\nx.y.\r\n...\r\n..c.d\r\n.x\r\nend\r\n.\r\n";
  static const char want[] = ".a\r\n\r.b\r\nx.y.\r\n..\r\n.c.d\r\nx\r\nend\r\n";
  struct smtps_params p = base_params();
  for (size_t step = 1; step <= sizeof(in) - 1; step++) {
    struct drv d;
    drv_init(&d, &p);
    feed(&d, S(in), step);
    assert_int_equal(d.messages, 1);
    assert_int_equal(d.body.len, sizeof(want) - 1);
    assert_memory_equal(d.body.data, want, sizeof(want) - 1);
    drv_done(&d);
  }
}

/* BDAT: octets raw (no dot handling), replies per chunk, LAST ends it. */
static void t_bdat(void **st)
{
  (void)st;
  static const char in[] = "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
                           "BDAT 5\r\n.\r\nab"
                           "BDAT 3 LAST\r\nxyz"
                           "BDAT 1 LAST\r\nQ"
                           "NOOP\r\n";
  static const char tail[] = "250 2.0.0 5 octets received\r\n"
                             "250 2.0.0 Ok: queued\r\n"
                             "503 5.5.1 Error: need MAIL command\r\n"
                             "250 2.0.0 Ok\r\n";
  struct smtps_params p = base_params();
  for (size_t step = 1; step <= sizeof(in) - 1; step++) {
    struct drv d;
    drv_init(&d, &p);
    feed(&d, S(in), step);
    assert_int_equal(d.messages, 1);
    assert_int_equal(d.body.len, 8);
    assert_memory_equal(d.body.data, ".\r\nabxyz", 8);
    assert_true(d.out.len > sizeof(tail));
    assert_memory_equal(d.out.data + d.out.len - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
    drv_done(&d);
  }
}

/* A held MESSAGE decision (durability pending): nothing after the dot is
 * consumed, and the replies stay in order once it is answered. */
static void t_held_decision(void **st)
{
  (void)st;
  static const char in[] = "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n"
                           "MAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\n";
  struct smtps_params p = base_params();
  struct drv d;
  drv_init(&d, &p);
  d.hold_message = true;
  size_t k = feed(&d, S(in), sizeof(in));
  const char *after = strstr(in, ".\r\n") + 3;
  assert_int_equal(k, (size_t)(after - in));
  assert_true(d.held);
  assert_true(smtps_pending(d.s));
  assert_null(memmem(d.out.data, d.out.len, "queued", 6));
  assert_int_equal(smtps_feed(d.s, after, strlen(after), 0), 0);
  /* the spool said durable */
  assert_int_equal(smtps_answer(d.s, 250, "2.0.0 Ok: queued as X1", 0), 0);
  assert_int_equal(smtps_answer(d.s, 250, "again", 0), -EALREADY);
  d.hold_message = false;
  feed(&d, after, strlen(after), 1);
  drain(&d);
  buf_append(&d.out, "", 1);
  const char *q = strstr((const char *)d.out.data, "250 2.0.0 Ok: queued as X1\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  assert_non_null(q);
  drv_done(&d);
}

/* A spool failure answers 451 and the session goes on. */
static void t_message_refused(void **st)
{
  (void)st;
  static const char in[] = "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nRSET\r\n";
  struct smtps_params p = base_params();
  struct drv d;
  drv_init(&d, &p);
  d.hold_message = true;
  size_t k = feed(&d, S(in), 7);
  assert_true(d.held);
  assert_int_equal(smtps_answer(d.s, 451, "4.3.0 Queue file write error", 0), 0);
  d.hold_message = false;
  feed(&d, in + k, sizeof(in) - 1 - k, 7);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "451 4.3.0 Queue file write error\r\n250 2.0.0 Ok\r\n"));
  drv_done(&d);
}

static void t_auth(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.auth_mechs = SMTPS_AUTH_PLAIN | SMTPS_AUTH_LOGIN | SMTPS_AUTH_XOAUTH2;
  /* PLAIN with an initial response: \0alice\0s3cret */
  static const char plain[] = "EHLO c\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nMAIL FROM:<a@b>\r\n";
  for (size_t step = 1; step < sizeof(plain); step++) {
    struct drv d;
    drv_init(&d, &p);
    d.auth_ok = true;
    feed(&d, S(plain), step);
    buf_append(&d.out, "", 1);
    assert_non_null(strstr((const char *)d.out.data, "250-AUTH PLAIN LOGIN XOAUTH2\r\n"));
    assert_non_null(strstr((const char *)d.out.data, "235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n"));
    assert_true(smtps_authenticated(d.s));
    drv_done(&d);
  }
  /* LOGIN, wrong password: the default answer refuses */
  static const char login[] = "EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\n";
  struct drv d;
  drv_init(&d, &p);
  d.auth_ok = true;
  feed(&d, S(login), 3);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data,
                         "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 Authentication credentials invalid\r\n"));
  assert_false(smtps_authenticated(d.s));
  drv_done(&d);
  /* XOAUTH2 refused: error challenge, 535 after the empty line */
  drv_init(&d, &p);
  static const char xo[] = "EHLO c\r\nAUTH XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB4AQE=\r\n\r\nNOOP\r\n";
  feed(&d, S(xo), 5);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "334 eyJ"));
  assert_non_null(strstr((const char *)d.out.data, "535 5.7.8 Authentication credentials invalid\r\n250 2.0.0 Ok\r\n"));
  drv_done(&d);
  /* cancel, bad base64, TLS required */
  p.auth_tls_only = true;
  drv_init(&d, &p);
  feed(&d, S("EHLO c\r\nAUTH PLAIN\r\n"), 100);
  buf_append(&d.out, "", 1);
  assert_null(strstr((const char *)d.out.data, "AUTH PLAIN"));
  assert_non_null(strstr((const char *)d.out.data, "538 5.7.11"));
  drv_done(&d);
  p.auth_tls_only = false;
  drv_init(&d, &p);
  feed(&d, S("EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!!\r\n"), 100);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "334 \r\n501 5.0.0 Authentication cancelled\r\n334 \r\n501 5.5.2 Invalid base64 data\r\n"));
  drv_done(&d);
}

/* STARTTLS: pipelined plaintext after it is discarded; after the
 * handshake the session starts over and STARTTLS is no longer offered. */
static void t_starttls(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.ext |= SMTPS_EXT_STARTTLS;
  struct drv d;
  drv_init(&d, &p);
  static const char in[] = "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n";
  size_t k = feed(&d, S(in), sizeof(in));
  assert_int_equal(k, sizeof(in) - 1);
  assert_true(smtps_want_tls(d.s));
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "250-STARTTLS\r\n"));
  assert_non_null(strstr((const char *)d.out.data, "220 2.0.0 Ready to start TLS\r\n"));
  assert_null(strstr((const char *)d.out.data, "2.1.0"));
  smtps_tls_done(d.s, 0);
  assert_true(smtps_tls(d.s));
  buf_reset(&d.out);
  feed(&d, S("MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\n"), 4);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "503 5.5.1 Error: send HELO/EHLO first\r\n"));
  assert_null(strstr((const char *)d.out.data, "STARTTLS\r\n"));
  assert_non_null(strstr((const char *)d.out.data, "503 5.5.1 Error: TLS already active\r\n"));
  drv_done(&d);
}

/* DSN and other parameters reach the driver; strict mode refuses
 * unknown ones and bad addresses. */
static void t_params(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.strict = true;
  struct smtps *s = smtps_new(&p);
  struct smtps_event ev;
  smtps_start(s, 0);
  assert_true(smtps_event(s, &ev));
  smtps_accept(s, 0);
  static const char ehlo[] = "EHLO c\r\n";
  smtps_feed(s, S(ehlo), 0);
  assert_true(smtps_event(s, &ev));
  smtps_accept(s, 0);
  static const char mail[] = "MAIL FROM:<a@b> RET=HDRS ENVID=QQ+2Bx BODY=8BITMIME SMTPUTF8 SIZE=99\r\n";
  assert_int_equal(smtps_feed(s, S(mail), 0), sizeof(mail) - 1);
  assert_true(smtps_event(s, &ev));
  assert_int_equal(ev.type, SMTPS_EV_COMMAND);
  assert_true(ev.ok);
  assert_int_equal(ev.ret, SMTPS_RET_HDRS);
  assert_int_equal(ev.envid_len, 6);
  assert_memory_equal(ev.envid, "QQ+2Bx", 6);
  assert_int_equal(ev.body, SMTPS_BODY_8BITMIME);
  assert_true(ev.smtputf8);
  assert_int_equal(ev.size, 99);
  assert_int_equal(ev.arg_len, 3);
  smtps_accept(s, 0);
  static const char rcpt[] = "RCPT TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d\r\n";
  smtps_feed(s, S(rcpt), 0);
  assert_true(smtps_event(s, &ev));
  assert_true(ev.ok);
  assert_int_equal(ev.notify, SMTPS_NOTIFY_SUCCESS | SMTPS_NOTIFY_FAILURE);
  assert_int_equal(ev.orcpt_len, strlen("rfc822;c@d"));
  smtps_accept(s, 0);
  static const char bad[] = "RCPT TO:<x@y> FOO=1\r\n";
  smtps_feed(s, S(bad), 0);
  assert_true(smtps_event(s, &ev));
  assert_false(ev.ok);
  assert_int_equal(ev.code, 555);
  smtps_accept(s, 0);
  static const char ctl[] = "RCPT TO:<x\x01@y>\r\n";
  smtps_feed(s, S(ctl), 0);
  assert_true(smtps_event(s, &ev));
  assert_false(ev.ok);
  assert_int_equal(ev.code, 501);
  /* a driver cannot turn the machine's refusal into a success */
  smtps_answer(s, 250, "2.1.5 Ok", 0);
  assert_int_equal(smtps_rcpts(s), 1);
  smtps_free(s);
}

static void t_size_limit(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.limits.max_size = 10;
  struct drv d;
  drv_init(&d, &p);
  feed(&d, S("EHLO c\r\nMAIL FROM:<a@b> SIZE=11\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
             "0123456789abc\r\n.\r\nNOOP\r\n"), 3);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "552 5.3.4 Message size exceeds fixed limit\r\n250 2.1.0"));
  assert_non_null(strstr((const char *)d.out.data, "354 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 Message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n"));
  assert_int_equal(d.messages, 0);
  assert_true(d.body.len <= 10);
  drv_done(&d);
}

/* Hostile: a line over the limit gets 500 and is skipped; the session goes on. */
static void t_long_line(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.limits.max_line = 100;
  struct drv d;
  drv_init(&d, &p);
  char big[1000];
  memset(big, 'A', sizeof(big));
  feed(&d, big, sizeof(big), 7);
  feed(&d, S("\r\nNOOP\r\n"), 1);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "220 mx.test ESMTP\r\n500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n"));
  drv_done(&d);
}

/* Hostile: 1,000 pipelined RCPTs over a limit of 100 get 452 each, and the
 * error limit ends the session with 421. */
static void t_many_rcpts_and_errors(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.limits.max_rcpts = 100;
  struct buf in = {0};
  buf_append_str(&in, "EHLO c\r\nMAIL FROM:<a@b>\r\n");
  for (int i = 0; i < 1000; i++)
    buf_printf(&in, "RCPT TO:<r%d@d>\r\n", i);
  struct drv d;
  drv_init(&d, &p);
  feed(&d, (const char *)in.data, in.len, 4096);
  assert_int_equal(smtps_rcpts(d.s), 100);
  assert_int_equal(smtps_errors(d.s), 900);
  assert_false(smtps_done(d.s));
  drv_done(&d);
  p.limits.max_errors = 10;
  drv_init(&d, &p);
  size_t k = feed(&d, (const char *)in.data, in.len, 4096);
  assert_true(smtps_done(d.s));
  assert_true(k < in.len);
  assert_int_equal(smtps_errors(d.s), 10);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "452 4.5.3 Error: too many recipients\r\n421 4.7.0 mx.test Error: too many errors\r\n"));
  drv_done(&d);
  buf_done(&in, 0);
}

/* Relay refused per recipient by the driver: counts as an error reply. */
static void t_relay_refused(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  struct drv d;
  drv_init(&d, &p);
  d.reject_rcpt = 554;
  feed(&d, S("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"), 1);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "554 5.7.1 Relaying denied\r\n554 5.5.1 Error: no valid recipients\r\n"));
  drv_done(&d);
}

/* Slow drip: a command must be complete within the command timeout (not
 * extended by each byte); then 421 4.4.2 and the session is over. */
static void t_timeout(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.timeouts.command = 10;
  struct drv d;
  drv_init(&d, &p);
  d.now = 1000;
  feed(&d, S("NOOP\r\n"), 10);
  uint64_t dl = smtps_deadline(d.s);
  assert_int_equal(dl, 11000);
  for (int i = 0; i < 9; i++) {
    d.now += 1000;
    feed(&d, S("E"), 1);
    assert_int_equal(smtps_timeout(d.s, d.now), 0);
  }
  d.now = 11000;
  assert_int_equal(smtps_timeout(d.s, d.now), 1);
  drain(&d);
  buf_append(&d.out, "", 1);
  assert_non_null(strstr((const char *)d.out.data, "421 4.4.2 mx.test Error: timeout exceeded\r\n"));
  assert_true(smtps_done(d.s));
  drv_done(&d);
}

/* Back-pressure: a client that never reads its replies stops being read. */
static void t_backpressure(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.limits.max_pending_out = 1000;
  struct smtps *s = smtps_new(&p);
  smtps_start(s, 0);
  struct smtps_event ev;
  smtps_event(s, &ev);
  smtps_accept(s, 0);
  struct buf in = {0};
  for (int i = 0; i < 1000; i++)
    buf_append_str(&in, "NOOP\r\n");
  size_t off = 0;
  for (int i = 0; i < 2000 && off < in.len; i++) {
    size_t k = smtps_feed(s, in.data + off, in.len - off, 0);
    off += k;
    if (smtps_event(s, &ev))
      smtps_accept(s, 0);
    else if (!k)
      break;
  }
  assert_true(off < in.len);
  const uint8_t *o;
  size_t n;
  assert_true(smtps_output(s, &o, &n));
  assert_true(n <= 1000 + 64);
  smtps_output_consumed(s, n);
  assert_true(smtps_feed(s, in.data + off, in.len - off, 0) > 0);
  buf_done(&in, 0);
  smtps_free(s);
}

/* Sequence errors and the EHLO reply without ENHANCEDSTATUSCODES. */
static void t_sequence(void **st)
{
  (void)st;
  struct smtps_params p = {.hostname = "h", .ext = SMTPS_EXT_PIPELINING};
  struct drv d;
  drv_init(&d, &p);
  feed(&d, S("MAIL FROM:<a@b>\r\nEHLO\r\nHELO x\r\nRCPT TO:<a@b>\r\nDATA\r\nBDAT 1\r\nEHLO x\r\nFOO\r\nVRFY x\r\n"), 2);
  static const char want[] = "220 h ESMTP\r\n"
                             "503 5.5.1 Error: send HELO/EHLO first\r\n"
                             "501 5.5.4 Syntax: EHLO hostname\r\n"
                             "250 h\r\n"
                             "503 5.5.1 Error: need MAIL command\r\n"
                             "503 5.5.1 Error: need MAIL command\r\n"
                             "502 5.5.1 Error: command not implemented\r\n"
                             "250-h\r\n250 PIPELINING\r\n"
                             "500 5.5.2 Error: command not recognized\r\n"
                             "252 2.0.0 Cannot VRFY user\r\n";
  assert_int_equal(d.out.len, sizeof(want) - 1);
  assert_memory_equal(d.out.data, want, sizeof(want) - 1);
  drv_done(&d);
}


/* Deferred message replies: a pipelining client's next messages are read
 * while earlier replies are owed; replies go out in order once known. */
static void t_deferred(void **st)
{
  (void)st;
  struct smtps_params p = base_params();
  p.limits.max_deferred = 2;
  struct smtps *s = smtps_new(&p);
  struct smtps_event ev;
  smtps_start(s, 0);
  assert_true(smtps_event(s, &ev));
  smtps_accept(s, 0);
  static const char in[] = "EHLO c\r\n"
                           "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2 LAST\r\nm1"
                           "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2 LAST\r\nm2"
                           "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2 LAST\r\nm3"
                           "QUIT\r\n";
  size_t off = 0;
  int tickets[3], nt = 0;
  for (int guard = 0; guard < 100; guard++) {
    size_t k = smtps_feed(s, in + off, sizeof(in) - 1 - off, 0);
    off += k;
    bool any = false;
    while (smtps_event(s, &ev)) {
      any = true;
      if (ev.type == SMTPS_EV_MESSAGE) {
        int t = smtps_defer(s, 0);
        assert_true(t > 0);
        tickets[nt++] = t;
      } else if (ev.type == SMTPS_EV_COMMAND) {
        smtps_accept(s, 0);
      }
    }
    if (!any && !k)
      break;
  }
  /* two owed: the third message is not read yet */
  assert_int_equal(nt, 2);
  assert_true(off < sizeof(in) - 1);
  assert_int_equal(smtps_deferred(s), 2);
  const uint8_t *o;
  size_t n;
  assert_true(smtps_output(s, &o, &n));
  struct buf got = {0};
  buf_append(&got, o, n);
  smtps_output_consumed(s, n);
  buf_append(&got, "", 1);
  /* the first transaction's MAIL/RCPT replies are out, nothing after its end */
  assert_non_null(strstr((const char *)got.data, "250 2.1.5 Ok\r\n"));
  assert_null(strstr((const char *)got.data, "queued"));
  /* the second resolves first: still held behind the first */
  assert_int_equal(smtps_resolve(s, tickets[1], 250, "2.0.0 Ok: queued as B"), 0);
  assert_false(smtps_output(s, &o, &n));
  assert_int_equal(smtps_resolve(s, tickets[1], 250, "again"), -ENOENT);
  assert_int_equal(smtps_resolve(s, tickets[0], 451, "4.3.0 not queued"), 0);
  assert_true(smtps_output(s, &o, &n));
  buf_reset(&got);
  buf_append(&got, o, n);
  buf_append(&got, "", 1);
  smtps_output_consumed(s, n);
  assert_string_equal((const char *)got.data, "451 4.3.0 not queued\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                                              "250 2.0.0 Ok: queued as B\r\n");
  /* reading goes on: the third message and QUIT; done only once owed replies are sent */
  for (int guard = 0; guard < 100; guard++) {
    size_t k = smtps_feed(s, in + off, sizeof(in) - 1 - off, 0);
    off += k;
    bool any = false;
    while (smtps_event(s, &ev)) {
      any = true;
      if (ev.type == SMTPS_EV_MESSAGE)
        tickets[nt++] = smtps_defer(s, 0);
      else if (ev.type == SMTPS_EV_COMMAND)
        smtps_accept(s, 0);
    }
    if (!any && !k)
      break;
  }
  assert_int_equal(nt, 3);
  assert_false(smtps_done(s));
  assert_int_equal(smtps_deadline(s), UINT64_MAX);
  assert_int_equal(smtps_resolve(s, tickets[2], 250, "2.0.0 Ok: queued as C"), 0);
  assert_true(smtps_done(s));
  assert_true(smtps_output(s, &o, &n));
  buf_reset(&got);
  buf_append(&got, o, n);
  buf_append(&got, "", 1);
  assert_non_null(strstr((const char *)got.data, "250 2.0.0 Ok: queued as C\r\n221 2.0.0 Bye\r\n"));
  buf_done(&got, 0);
  smtps_free(s);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(t_transcript_every_split),
    cmocka_unit_test(t_unstuff),
    cmocka_unit_test(t_bdat),
    cmocka_unit_test(t_held_decision),
    cmocka_unit_test(t_message_refused),
    cmocka_unit_test(t_auth),
    cmocka_unit_test(t_starttls),
    cmocka_unit_test(t_params),
    cmocka_unit_test(t_size_limit),
    cmocka_unit_test(t_long_line),
    cmocka_unit_test(t_many_rcpts_and_errors),
    cmocka_unit_test(t_relay_refused),
    cmocka_unit_test(t_timeout),
    cmocka_unit_test(t_backpressure),
    cmocka_unit_test(t_sequence),
    cmocka_unit_test(t_deferred),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
