/* Transcript tests for smtpc: connection set-up (greeting, EHLO/HELO,
 * extensions, STARTTLS, AUTH PLAIN/LOGIN/XOAUTH2), transactions
 * (pipelined and lock-step), RSET/reuse, QUIT, timeouts, limits, hostile
 * input. Each transcript also runs split at every byte (smtpc_tr.h). */
#include "smtpc_tr.h"

#include <errno.h>
#include <stdlib.h>

#include "base64.h"

#define EHLO_NAME "client.test"
#define BANNER "220 mx.test ESMTP ready\r\n"
#define EHLO_CMD "EHLO " EHLO_NAME "\r\n"
#define EHLO_PIPE \
  "250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n" \
  "250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PLAIN "250-mx.test\r\n250 8BITMIME\r\n"

static struct smtpc_params base_params(void)
{
  struct smtpc_params p;
  memset(&p, 0, sizeof(p));
  p.ehlo_name = EHLO_NAME;
  p.tls = SMTPC_TLS_NO;
  return p;
}

static void start(struct tr *t, const struct smtpc_params *p)
{
  t->s = smtpc_new(p, t->now);
  assert_non_null(t->s);
  assert_int_equal(smtpc_state(t->s), SMTPC_ST_CONNECT);
  assert_int_equal(smtpc_connected(t->s, t->now), 0);
  cli(t, "");
  no_ev(t);
}

/* banner + EHLO with the given reply, expecting READY. */
static void hello(struct tr *t, const char *ehlo_reply)
{
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, ehlo_reply);
  ev(t, "READY");
  no_ev(t);
}

static void start_hello(struct tr *t, const char *ehlo_reply)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  hello(t, ehlo_reply);
}

/* ------------------------------------------------------------------ greeting */

TR_TEST(greet_multiline_and_quit)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  assert_int_equal(smtpc_stage(t->s), 12);
  srv(t, "220-mx.test ESMTP\r\n220-second line\r\n220 ready\r\n");
  cli(t, EHLO_CMD);
  assert_int_equal(smtpc_stage(t->s), 10);
  srv(t, EHLO_PIPE);
  ev(t, "READY");
  uint32_t x = smtpc_extensions(t->s);
  assert_true(x & SMTPC_EXT_ESMTP);
  assert_true(x & SMTPC_EXT_PIPELINING);
  assert_true(x & SMTPC_EXT_SIZE);
  assert_true(x & SMTPC_EXT_8BITMIME);
  assert_true(x & SMTPC_EXT_SMTPUTF8);
  assert_true(x & SMTPC_EXT_ENHANCEDSTATUSCODES);
  assert_false(x & SMTPC_EXT_STARTTLS);
  assert_false(x & SMTPC_EXT_AUTH);
  assert_int_equal(smtpc_peer_max_size(t->s), 10240000);
  assert_int_equal(smtpc_stage(t->s), 1);
  smtpc_quit(t->s, t->now);
  cli(t, "QUIT\r\n");
  srv(t, "221 2.0.0 bye\r\n");
  ev(t, "CLOSED");
  no_ev(t);
  assert_int_equal(smtpc_feed(t->s, "x", 1, t->now), -EPIPE);
}

TR_TEST(greet_421)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "421 4.3.2 mx.test busy, try later\r\n");
  ev(t, "FAILED transient 421 4.3.2 f=0 st=12: mx.test busy, try later");
  cli(t, "QUIT\r\n");
  no_ev(t);
}

TR_TEST(greet_554)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "554-5.7.1 no\r\n554 5.7.1 go away\r\n");
  ev(t, "FAILED permanent 554 5.7.1 f=0 st=12: no go away");
  cli(t, "QUIT\r\n");
}

TR_TEST(greet_bare_lf)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "220-mx.test\n220 ok\n");
  cli(t, EHLO_CMD);
  srv(t, "250-mx.test\n250 PIPELINING\r\n");
  ev(t, "READY");
  assert_true(smtpc_extensions(t->s) & SMTPC_EXT_PIPELINING);
}

/* ------------------------------------------------------------------ EHLO */

TR_TEST(ehlo_500_helo)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "500 5.5.1 command unrecognized\r\n");
  cli(t, "HELO " EHLO_NAME "\r\n");
  srv(t, "250 mx.test\r\n");
  ev(t, "READY");
  assert_int_equal(smtpc_extensions(t->s), 0);
}

TR_TEST(ehlo_502_helo_fails)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "502 not implemented\r\n");
  cli(t, "HELO " EHLO_NAME "\r\n");
  srv(t, "421 closing\r\n");
  ev(t, "FAILED transient 421  f=0 st=10: closing");
  cli(t, "QUIT\r\n");
}

TR_TEST(ehlo_550)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "550 5.7.1 you are not welcome\r\n");
  ev(t, "FAILED permanent 550 5.7.1 f=0 st=10: you are not welcome");
  cli(t, "QUIT\r\n");
}

TR_TEST(ehlo_extensions)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "250-mx.test greets you\r\n250-pipelining\r\n250-SIZE\r\n250-8bitmime\r\n"
         "250-AUTH=LOGIN\r\n250-AUTH PLAIN XOAUTH2 CRAM-MD5\r\n250-STARTTLS\r\n"
         "250-X-UNKNOWN foo\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n");
  ev(t, "READY");
  uint32_t x = smtpc_extensions(t->s);
  assert_true(x & SMTPC_EXT_PIPELINING);
  assert_true(x & SMTPC_EXT_SIZE);
  assert_int_equal(smtpc_peer_max_size(t->s), 0);
  assert_true(x & SMTPC_EXT_8BITMIME);
  assert_true(x & SMTPC_EXT_STARTTLS);
  assert_true(x & SMTPC_EXT_AUTH);
  assert_false(x & SMTPC_EXT_SMTPUTF8);
  assert_int_equal(smtpc_auth_mechs(t->s), SMTPC_MECH_LOGIN | SMTPC_MECH_PLAIN | SMTPC_MECH_XOAUTH2);
}

/* The greeting line of the EHLO reply is not an extension. */
TR_TEST(ehlo_first_line_not_keyword)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "250 PIPELINING\r\n");
  ev(t, "READY");
  assert_int_equal(smtpc_extensions(t->s), SMTPC_EXT_ESMTP);
}

/* ------------------------------------------------------------------ STARTTLS */

#define EHLO_TLS "250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n"

TR_TEST(starttls_flow)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_IFAVAILABLE;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_TLS);
  cli(t, "STARTTLS\r\n");
  assert_int_equal(smtpc_stage(t->s), 15);
  srv(t, "220 2.0.0 go ahead\r\n");
  ev(t, "NEED_TLS");
  no_ev(t);
  assert_int_equal(smtpc_stage(t->s), 17);
  assert_int_equal(smtpc_tls_done(t->s, true, t->now), 0);
  assert_true(smtpc_tls_active(t->s));
  assert_int_equal(smtpc_extensions(t->s), 0); /* forgotten (RFC 3207 4.2) */
  cli(t, EHLO_CMD);
  srv(t, "250-mx.test\r\n250 SIZE 100\r\n");
  ev(t, "READY");
  assert_int_equal(smtpc_extensions(t->s), SMTPC_EXT_ESMTP | SMTPC_EXT_SIZE);
}

TR_TEST(starttls_refused_ifavailable)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_IFAVAILABLE;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_TLS);
  cli(t, "STARTTLS\r\n");
  srv(t, "454 4.7.0 TLS not available\r\n");
  ev(t, "READY");
  assert_false(smtpc_tls_active(t->s));
}

TR_TEST(starttls_refused_required)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_REQUIRED;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_TLS);
  cli(t, "STARTTLS\r\n");
  srv(t, "454 4.7.0 TLS not available\r\n");
  ev(t, "FAILED transient 454 4.7.0 f=4 st=15: TLS required but STARTTLS was refused: TLS not available");
  cli(t, "QUIT\r\n");
}

TR_TEST(starttls_required_not_offered)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_REQUIRED;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_PLAIN);
  ev(t, "FAILED transient 0  f=4 st=10: TLS required but the server does not offer STARTTLS");
  cli(t, "QUIT\r\n");
}

TR_TEST(starttls_not_offered_ifavailable)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_IFAVAILABLE;
  start(t, &p);
  hello(t, EHLO_PLAIN);
}

TR_TEST(starttls_handshake_fails)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_IFAVAILABLE;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_TLS);
  cli(t, "STARTTLS\r\n");
  srv(t, "220 go ahead\r\n");
  ev(t, "NEED_TLS");
  smtpc_tls_done(t->s, false, t->now);
  ev(t, "FAILED transient 0  f=2 st=17: TLS handshake failed");
  cli(t, "");
}

/* Bytes after the 220 must not be taken as if they came over TLS. */
TR_TEST(starttls_injection)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_IFAVAILABLE;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_TLS);
  cli(t, "STARTTLS\r\n");
  srv(t, "220 go ahead\r\n250-fake\r\n250 AUTH PLAIN\r\n");
  /* however it was split, the handshake is asked for, then the session
   * fails for protocol */
  ev(t, "NEED_TLS");
  ev(t, "FAILED protocol*");
  no_ev(t);
  assert_int_equal(smtpc_tls_done(t->s, true, t->now), -EINVAL);
}

TR_TEST(implicit_tls)
{
  struct smtpc_params p = base_params();
  p.implicit_tls = true;
  p.tls = SMTPC_TLS_REQUIRED;
  t->s = smtpc_new(&p, t->now);
  assert_int_equal(smtpc_connected(t->s, t->now), 0);
  ev(t, "NEED_TLS");
  assert_int_equal(smtpc_stage(t->s), 17);
  smtpc_tls_done(t->s, true, t->now);
  cli(t, "");
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_TLS); /* STARTTLS offered again: not used */
  ev(t, "READY");
  cli(t, "");
  assert_true(smtpc_tls_active(t->s));
}

/* ------------------------------------------------------------------ AUTH */

static void auth_start(struct tr *t, enum smtpc_auth_type type, const char *user, const char *pass,
                       bool plain_ok)
{
  struct smtpc_params p = base_params();
  p.auth.type = type;
  p.auth.user = user;
  p.auth.pass = pass;
  p.auth_allow_plaintext = plain_ok;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
}

#define EHLO_AUTH "250-mx.test\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n"

TR_TEST(auth_plain)
{
  auth_start(t, SMTPC_AUTH_PLAIN, "msys", "msys", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH PLAIN AG1zeXMAbXN5cw==\r\n");
  assert_int_equal(smtpc_stage(t->s), 11);
  srv(t, "235 2.7.0 Authentication successful\r\n");
  ev(t, "AUTH_RESULT 235 2.7.0 st=11: Authentication successful");
  ev(t, "READY");
  assert_true(smtpc_authenticated(t->s));
}

TR_TEST(auth_plain_sparkpost)
{
  auth_start(t, SMTPC_AUTH_PLAIN, "sparkpost", "s3cr3t-pass", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH PLAIN AHNwYXJrcG9zdABzM2NyM3QtcGFzcw==\r\n");
  srv(t, "235 ok\r\n");
  ev(t, "AUTH_RESULT 235  st=11: ok");
  ev(t, "READY");
}

TR_TEST(auth_login)
{
  auth_start(t, SMTPC_AUTH_LOGIN, "msys", "msys", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH LOGIN\r\n");
  srv(t, "334 VXNlcm5hbWU6\r\n");
  cli(t, "bXN5cw==\r\n");
  srv(t, "334 UGFzc3dvcmQ6\r\n");
  cli(t, "bXN5cw==\r\n");
  srv(t, "235 2.7.0 Accepted\r\n");
  ev(t, "AUTH_RESULT 235 2.7.0 st=11: Accepted");
  ev(t, "READY");
}

/* Any well-formed 334 is accepted (an empty one too). */
TR_TEST(auth_login_odd_challenges)
{
  auth_start(t, SMTPC_AUTH_LOGIN, "msys", "pw", true);
  srv(t, "250-mx.test\r\n250 AUTH=LOGIN\r\n");
  cli(t, "AUTH LOGIN\r\n");
  srv(t, "334 \r\n");
  cli(t, "bXN5cw==\r\n");
  srv(t, "334 UGFzc3dvcmQ6\n");
  cli(t, "cHc=\r\n");
  srv(t, "535 5.7.8 Authentication credentials invalid\r\n");
  ev(t, "FAILED transient 535 5.7.8 f=1 st=11: AUTH LOGIN failed: Authentication credentials invalid");
  cli(t, "QUIT\r\n");
}

TR_TEST(auth_login_bad_challenge)
{
  auth_start(t, SMTPC_AUTH_LOGIN, "msys", "msys", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH LOGIN\r\n");
  srv(t, "334 not*base64!\r\n");
  ev(t, "FAILED protocol 334  f=0 st=11: malformed AUTH LOGIN challenge: not*base64!");
  cli(t, "");
}

#define XO_IR \
  "AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52" \
  "YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n"
#define XO_USER "someuser@example.com"
#define XO_TOKEN "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"

TR_TEST(auth_xoauth2)
{
  auth_start(t, SMTPC_AUTH_XOAUTH2, XO_USER, XO_TOKEN, true);
  srv(t, EHLO_AUTH);
  cli(t, XO_IR);
  srv(t, "235 2.7.0 Accepted\r\n");
  ev(t, "AUTH_RESULT 235 2.7.0 st=11: Accepted");
  ev(t, "READY");
}

TR_TEST(auth_xoauth2_error_challenge)
{
  auth_start(t, SMTPC_AUTH_XOAUTH2, XO_USER, XO_TOKEN, true);
  srv(t, EHLO_AUTH);
  cli(t, XO_IR);
  srv(t, "334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==\r\n");
  cli(t, "\r\n");
  srv(t, "535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 Learn more\r\n");
  ev(t, "FAILED transient 535 5.7.8 f=1 st=11: AUTH XOAUTH2 failed: Username and Password not accepted. Learn more");
  cli(t, "QUIT\r\n");
}

TR_TEST(auth_454)
{
  auth_start(t, SMTPC_AUTH_PLAIN, "msys", "msys", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH PLAIN AG1zeXMAbXN5cw==\r\n");
  srv(t, "454 4.7.0 Temporary authentication failure\r\n");
  ev(t, "FAILED transient 454 4.7.0 f=0 st=11: AUTH PLAIN failed: Temporary authentication failure");
}

TR_TEST(auth_534_538_504)
{
  static const char *const replies[] = {"534 5.7.9 weak\r\n", "538 5.7.11 encrypt\r\n",
                                        "504 5.5.4 unrecognized\r\n"};
  static const uint32_t flags[] = {SMTPC_F_AUTH_REJECTED, SMTPC_F_AUTH_REJECTED, 0};
  for (int i = 0; i < 3; i++) {
    if (t->s)
      smtpc_free(t->s);
    t->s = NULL;
    auth_start(t, SMTPC_AUTH_PLAIN, "msys", "msys", true);
    srv(t, EHLO_AUTH);
    cli(t, "AUTH PLAIN AG1zeXMAbXN5cw==\r\n");
    srv(t, replies[i]);
    struct smtpc_event e;
    assert_true(smtpc_next_event(t->s, &e));
    assert_int_equal(e.type, SMTPC_EV_FAILED);
    assert_int_equal(e.kind, SMTPC_FAIL_TRANSIENT);
    assert_int_equal(e.flags, flags[i]);
  }
}

TR_TEST(auth_not_offered)
{
  auth_start(t, SMTPC_AUTH_LOGIN, "msys", "msys", true);
  srv(t, EHLO_PIPE);
  ev(t, "FAILED transient 0  f=8 st=10: credentials configured (AUTH LOGIN) but the server does not offer AUTH; not sending unauthenticated");
  cli(t, "QUIT\r\n");
}

TR_TEST(auth_mech_not_offered)
{
  auth_start(t, SMTPC_AUTH_XOAUTH2, "msys", "msys", true);
  srv(t, "250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n");
  ev(t, "FAILED transient 0  f=8 st=10: AUTH XOAUTH2 configured but the server offers only: PLAIN LOGIN");
}

TR_TEST(auth_plaintext_refused)
{
  auth_start(t, SMTPC_AUTH_PLAIN, "msys", "msys", false);
  srv(t, EHLO_AUTH);
  ev(t, "FAILED transient 0  f=8 st=10: AUTH PLAIN refused: the connection is not encrypted (no TLS); set Outbound_SMTP_AUTH_Allow_Plaintext = true to allow credentials in plaintext");
  cli(t, "QUIT\r\n");
}

TR_TEST(auth_after_starttls)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_IFAVAILABLE;
  p.auth.type = SMTPC_AUTH_LOGIN;
  p.auth.user = "msys";
  p.auth.pass = "msys";
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "250-mx.test\r\n250 STARTTLS\r\n"); /* AUTH only after TLS */
  cli(t, "STARTTLS\r\n");
  srv(t, "220 ready\r\n");
  ev(t, "NEED_TLS");
  smtpc_tls_done(t->s, true, t->now);
  cli(t, EHLO_CMD);
  srv(t, "250-mx.test\r\n250 AUTH LOGIN PLAIN\r\n");
  cli(t, "AUTH LOGIN\r\n");
  srv(t, "334 VXNlcm5hbWU6\r\n");
  cli(t, "bXN5cw==\r\n");
  srv(t, "334 UGFzc3dvcmQ6\r\n");
  cli(t, "bXN5cw==\r\n");
  srv(t, "235 ok\r\n");
  ev(t, "AUTH_RESULT 235  st=11: ok");
  ev(t, "READY");
}

/* A challenge over the line limit fails the session cleanly. */
TR_TEST(auth_challenge_too_long)
{
  struct smtpc_params p = base_params();
  p.auth.type = SMTPC_AUTH_LOGIN;
  p.auth.user = "msys";
  p.auth.pass = "msys";
  p.auth_allow_plaintext = true;
  p.limits.max_line = 64;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH LOGIN\r\n");
  srv(t, "334 VXNlcm5hbWU6VXNlcm5hbWU6VXNlcm5hbWU6VXNlcm5hbWU6VXNlcm5hbWU6VXNlcm5hbWU6\r\n");
  ev(t, "FAILED protocol 0  f=0 st=11: reply line too long authenticating");
  cli(t, "");
}

/* A multi-line 334 is not a challenge. */
TR_TEST(auth_challenge_multiline)
{
  auth_start(t, SMTPC_AUTH_LOGIN, "msys", "msys", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH LOGIN\r\n");
  srv(t, "334-VXNlcm5hbWU6\r\n334 VXNlcm5hbWU6\r\n");
  ev(t, "FAILED protocol 334  f=0 st=11: malformed AUTH LOGIN challenge: VXNlcm5hbWU6 VXNlcm5hbWU6");
}

TR_TEST(auth_plain_unexpected_334)
{
  auth_start(t, SMTPC_AUTH_PLAIN, "msys", "msys", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH PLAIN AG1zeXMAbXN5cw==\r\n");
  srv(t, "334 \r\n");
  ev(t, "FAILED protocol 334  f=0 st=11: unexpected AUTH PLAIN challenge: ");
  cli(t, "");
}

/* ------------------------------------------------------------------ transactions */

struct txn_fix {
  const char *rcpts[200];
  struct smtpc_result res[200];
  struct smtpc_result final;
  struct smtpc_txn txn;
};

/* Fill fx for `from` and n recipients named <prefix><i>@dest.test. */
static struct txn_fix *fix_fill(struct txn_fix *fx, char (*addrs)[64], char prefix,
                                const char *from, uint32_t n)
{
  memset(fx, 0, sizeof(*fx));
  for (uint32_t i = 0; i < n; i++) {
    snprintf(addrs[i], 64, "%c%u@dest.test", prefix, i);
    fx->rcpts[i] = addrs[i];
  }
  fx->txn.mail_from = from;
  fx->txn.rcpts = fx->rcpts;
  fx->txn.nrcpt = n;
  fx->txn.results = fx->res;
  fx->txn.final = &fx->final;
  return fx;
}

static struct txn_fix *fix_new(struct tr *t, const char *from, uint32_t n)
{
  static struct txn_fix fx;
  static char addrs[200][64];
  (void)t;
  return fix_fill(&fx, addrs, 'r', from, n);
}

static void begin(struct tr *t, struct txn_fix *fx)
{
  assert_int_equal(smtpc_begin_txn(t->s, &fx->txn, t->now), 0);
}

static void body(struct tr *t, const char *data, bool last)
{
  size_t len = strlen(data), off = 0;
  for (int guard = 0; guard < 100000; guard++) {
    long k = smtpc_body(t->s, data + off, len - off, last, t->now);
    assert_true(k >= 0);
    off += (size_t)k;
    if (off == len)
      return;
    /* output full: the driver sends (the caller checks the bytes) */
    const uint8_t *p;
    size_t n;
    assert_true(smtpc_output(t->s, &p, &n));
    return;
  }
}

TR_TEST(txn_pipelined)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "bounce@src.test", 2);
  fx->txn.size = 1234;
  begin(t, fx);
  cli(t, "MAIL FROM:<bounce@src.test> SIZE=1234\r\nRCPT TO:<r0@dest.test>\r\n"
         "RCPT TO:<r1@dest.test>\r\nDATA\r\n");
  assert_int_equal(smtpc_stage(t->s), 2);
  srv(t, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok r1\r\n354 go ahead\r\n");
  ev(t, "RCPT_RESULT 0 250 2.1.5 st=4: ok");
  ev(t, "RCPT_RESULT 1 250 2.1.5 st=4: ok r1");
  ev(t, "NEED_BODY");
  no_ev(t);
  assert_int_equal(smtpc_stage(t->s), 8);
  body(t, "Subject: hi\r\n\r\n.hello\n", true);
  cli(t, "Subject: hi\r\n\r\n..hello\r\n.\r\n");
  ev(t, "READY pipelined");
  assert_int_equal(smtpc_stage(t->s), 9);
  srv(t, "250 2.0.0 queued as 1234\r\n");
  ev(t, "TXN_DONE 250 2.0.0 st=9: queued as 1234");
  ev(t, "READY");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "OK 250 2.0.0 st=9: queued as 1234");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "OK 250 2.0.0 st=9: queued as 1234");
  cli(t, ""); /* no RSET after success */
  /* a second transaction on the same connection */
  fx = fix_new(t, "", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  body(t, "x", true);
  cli(t, "x\r\n.\r\n");
  ev(t, "READY pipelined");
  srv(t, "250 ok\r\n");
  ev(t, "TXN_DONE 250  st=9: ok");
  ev(t, "READY");
}

/* RFC 2920 across transactions: a second fixture, so the transaction in
 * flight keeps its result slots while the next one starts. */
static struct txn_fix *fix_new_b(const char *from, uint32_t n)
{
  static struct txn_fix fx;
  static char addrs[200][64];
  return fix_fill(&fx, addrs, 'b', from, n);
}

/* First transaction up to its dot; the early READY is consumed. */
static struct txn_fix *first_to_dot(struct tr *t, const char *ehlo)
{
  start_hello(t, ehlo);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  body(t, "one\r\n", true);
  ev(t, "READY pipelined");
  return fx;
}

/* first_to_dot, then a one-recipient transaction from x@src.test begun
 * behind the dot: both leave in one write. *fa (if fa) gets the first. */
static struct txn_fix *second_behind_dot(struct tr *t, struct txn_fix **fa)
{
  struct txn_fix *first = first_to_dot(t, EHLO_PIPE);
  if (fa)
    *fa = first;
  struct txn_fix *fb = fix_new_b("x@src.test", 1);
  assert_int_equal(smtpc_begin_txn(t->s, &fb->txn, t->now), 0);
  cli(t, "one\r\n.\r\nMAIL FROM:<x@src.test>\r\nRCPT TO:<b0@dest.test>\r\nDATA\r\n");
  return fb;
}

TR_TEST(txn_pipelined_next)
{
  struct txn_fix *fa = first_to_dot(t, EHLO_PIPE);
  struct txn_fix *fb = fix_new_b("", 2);
  /* the same result slots as the transaction in flight: refused */
  assert_int_equal(smtpc_begin_txn(t->s, &fa->txn, t->now), -EINVAL);
  assert_int_equal(smtpc_begin_txn(t->s, &fb->txn, t->now), 0);
  assert_int_equal(smtpc_begin_txn(t->s, &fb->txn, t->now), -EBUSY);
  /* the dot and the next group leave together */
  cli(t, "one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<b0@dest.test>\r\nRCPT TO:<b1@dest.test>\r\nDATA\r\n");
  assert_int_equal(smtpc_stage(t->s), 2);
  /* waiting for the first transaction's final reply: Body_Timeout (600 s) */
  assert_int_equal(smtpc_deadline(t->s), t->now + 600000);
  srv(t, "250 2.0.0 queued 1\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n");
  ev(t, "TXN_DONE 250 2.0.0 st=9: queued 1");
  assert_ptr_equal(t->last.final, &fa->final);
  res(t, smtpc_txn_outcome(&fa->txn, 0), "OK 250 2.0.0 st=9: queued 1");
  ev(t, "RCPT_RESULT 0 550 5.1.1 st=4: no");
  ev(t, "RCPT_RESULT 1 250  st=4: ok");
  ev(t, "NEED_BODY");
  no_ev(t);
  body(t, "two", true);
  ev(t, "READY pipelined");
  cli(t, "two\r\n.\r\n");
  srv(t, "250 2.0.0 queued 2\r\n");
  ev(t, "TXN_DONE 250 2.0.0 st=9: queued 2");
  assert_ptr_equal(t->last.final, &fb->final);
  ev(t, "READY");
  res(t, smtpc_txn_outcome(&fb->txn, 0), "PERMANENT 550 5.1.1 st=4: no");
  res(t, smtpc_txn_outcome(&fb->txn, 1), "OK 250 2.0.0 st=9: queued 2");
  cli(t, "");
}

/* The first transaction's body is refused: no RSET (the server has ended
 * that transaction; the MAIL behind the dot starts the next one). */
TR_TEST(txn_pipelined_next_prev_refused)
{
  struct txn_fix *fa;
  (void)second_behind_dot(t, &fa);
  srv(t, "554 5.7.1 spam\r\n250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "TXN_DONE 554 5.7.1 st=9: spam");
  res(t, smtpc_txn_outcome(&fa->txn, 0), "PERMANENT 554 5.7.1 st=9: spam");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  cli(t, "");
}

/* The connection drops before the first transaction's final reply: both
 * transactions end transient, the first one first. */
TR_TEST(txn_pipelined_next_eof)
{
  struct txn_fix *fa;
  struct txn_fix *fb = second_behind_dot(t, &fa);
  smtpc_eof(t->s, t->now);
  ev(t, "TXN_DONE 0  st=9: *");
  assert_ptr_equal(t->last.final, &fa->final);
  ev(t, "TXN_DONE 0  st=2: *");
  assert_ptr_equal(t->last.final, &fb->final);
  ev(t, "FAILED network*");
  res(t, smtpc_txn_outcome(&fa->txn, 0), "TRANSIENT 0  st=9: *");
}

/* A 421 as the first transaction's final reply ends the session. */
TR_TEST(txn_pipelined_next_421)
{
  struct txn_fix *fb = second_behind_dot(t, NULL);
  srv(t, "421 4.3.2 shutting down\r\n");
  ev(t, "TXN_DONE 421 4.3.2 st=9: shutting down");
  ev(t, "TXN_DONE 421 4.3.2 st=2: shutting down");
  ev(t, "FAILED transient 421*");
  res(t, smtpc_txn_outcome(&fb->txn, 0), "TRANSIENT 421 4.3.2 st=2: shutting down");
}

/* A transaction refused locally while the first waits for its reply: its
 * TXN_DONE comes at once, and the next one is offered again. */
TR_TEST(txn_pipelined_next_local_refusal)
{
  struct txn_fix *fa = first_to_dot(t, EHLO_PIPE);
  struct txn_fix *fb = fix_new_b("x@src.test", 1);
  fb->txn.size = 20000000; /* over SIZE 10240000 */
  assert_int_equal(smtpc_begin_txn(t->s, &fb->txn, t->now), 0);
  ev(t, "TXN_DONE 0 5.3.4 st=*");
  assert_ptr_equal(t->last.final, &fb->final);
  ev(t, "READY pipelined");
  assert_int_equal(smtpc_state(t->s), SMTPC_ST_DOT);
  cli(t, "one\r\n.\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "TXN_DONE 250  st=9: ok");
  assert_ptr_equal(t->last.final, &fa->final);
  ev(t, "READY");
}

/* ------------------------------------------------------------- BDAT (RFC 3030) */

#define EHLO_CHUNK \
  "250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-CHUNKING\r\n" \
  "250 ENHANCEDSTATUSCODES\r\n"

/* Fixture k of SMTPC_PIPE_MAX + 1: transactions in flight keep theirs. */
static struct txn_fix *fix_k(unsigned k, const char *from, uint32_t n)
{
  static struct txn_fix fx[SMTPC_PIPE_MAX + 1];
  static char addrs[SMTPC_PIPE_MAX + 1][4][64];
  return fix_fill(&fx[k], addrs[k], (char)('a' + k), from, n);
}

static void start_chunking(struct tr *t, uint32_t depth)
{
  struct smtpc_params p = base_params();
  p.chunking = true;
  p.pipeline_depth = depth;
  start(t, &p);
  hello(t, EHLO_CHUNK);
  assert_true(smtpc_extensions(t->s) & SMTPC_EXT_CHUNKING);
}

/* Begin fixture k (one recipient <k>0@dest.test from s<k>@src.test) and
 * queue its body as one LAST chunk of len bytes: the commands and the
 * BDAT line come out together (the driver sends the data itself). */
static struct txn_fix *bdat_one(struct tr *t, unsigned k, size_t len)
{
  char from[32], want[256];
  snprintf(from, sizeof from, "s%u@src.test", k);
  struct txn_fix *fx = fix_k(k, k % 2 ? "" : "x@src.test", 1);
  (void)from;
  begin(t, fx);
  ev(t, "NEED_BODY");
  assert_true(smtpc_chunked(t->s));
  assert_int_equal(smtpc_body(t->s, "x", 1, true, t->now), -EINVAL);
  assert_int_equal(smtpc_chunk(t->s, len, true, t->now), 0);
  snprintf(want, sizeof want, "MAIL FROM:<%s>%s\r\nRCPT TO:<%c0@dest.test>\r\nBDAT %zu LAST\r\n",
           fx->txn.mail_from, "", (char)('a' + k), len);
  cli(t, want);
  return fx;
}

/* Three whole messages leave back to back, no 354 awaited; their nine
 * replies come in one read and end them in order. */
TR_TEST(bdat_pipelined_three)
{
  start_chunking(t, 0);
  struct txn_fix *f0 = bdat_one(t, 0, 1024);
  ev(t, "READY pipelined");
  /* the reply awaited next decides stage and timeout: MAIL's first */
  assert_int_equal(smtpc_stage(t->s), 2);
  assert_int_equal(smtpc_deadline(t->s), t->now + 300000);
  srv(t, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n");
  assert_int_equal(smtpc_stage(t->s), 9); /* then the final reply: Body_Timeout */
  assert_int_equal(smtpc_deadline(t->s), t->now + 600000);
  struct txn_fix *f1 = bdat_one(t, 1, 5);
  ev(t, "READY pipelined");
  struct txn_fix *f2 = bdat_one(t, 2, 0);
  ev(t, "READY pipelined");
  no_ev(t);
  srv(t, "250 2.0.0 q0\r\n"
         "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 q1\r\n"
         "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 q2\r\n");
  ev(t, "TXN_DONE 250 2.0.0 st=9: q0");
  assert_ptr_equal(t->last.final, &f0->final);
  ev(t, "TXN_DONE 250 2.0.0 st=9: q1");
  assert_ptr_equal(t->last.final, &f1->final);
  ev(t, "TXN_DONE 250 2.0.0 st=9: q2");
  assert_ptr_equal(t->last.final, &f2->final);
  ev(t, "READY");
  no_ev(t);
  res(t, smtpc_txn_outcome(&f1->txn, 0), "OK 250 2.0.0 st=9: q1");
  cli(t, ""); /* no RSET after success */
  assert_int_equal(smtpc_state(t->s), SMTPC_ST_IDLE);
}

/* Multi-chunk body; a refused chunk of the transaction still being sent
 * ends it at once (no more chunks, RFC 3030), then RSET. */
TR_TEST(bdat_chunk_refused_mid_body)
{
  start_chunking(t, 0);
  struct txn_fix *fx = fix_k(0, "a@src.test", 1);
  begin(t, fx);
  ev(t, "NEED_BODY");
  assert_int_equal(smtpc_chunk(t->s, 10, false, t->now), 0);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<a0@dest.test>\r\nBDAT 10\r\n");
  no_ev(t);
  srv(t, "250 ok\r\n250 ok\r\n452 4.3.1 out of space\r\n");
  ev(t, "TXN_DONE 452 4.3.1 st=8: out of space");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "TRANSIENT 452 4.3.1 st=8: out of space");
  assert_int_equal(smtpc_chunk(t->s, 5, true, t->now), -ECANCELED);
  cli(t, "RSET\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "READY");
  no_ev(t);
}

/* Chunks 10 + 5 + 0 LAST: one reply each, the last one is final. */
TR_TEST(bdat_chunks)
{
  start_chunking(t, 0);
  struct txn_fix *fx = fix_k(0, "a@src.test", 2);
  begin(t, fx);
  ev(t, "NEED_BODY");
  assert_int_equal(smtpc_chunk(t->s, 10, false, t->now), 0);
  assert_int_equal(smtpc_chunk(t->s, 5, false, t->now), 0);
  assert_int_equal(smtpc_chunk(t->s, 0, true, t->now), 0);
  ev(t, "READY pipelined");
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<a0@dest.test>\r\nRCPT TO:<a1@dest.test>\r\n"
         "BDAT 10\r\nBDAT 5\r\nBDAT 0 LAST\r\n");
  assert_int_equal(smtpc_chunk(t->s, 1, true, t->now), -EINVAL);
  srv(t, "250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n250 2.0.0 10 octets\r\n"
         "250 2.0.0 5 octets\r\n");
  no_ev(t);
  srv(t, "250 2.0.0 queued\r\n");
  ev(t, "TXN_DONE 250 2.0.0 st=9: queued");
  ev(t, "READY");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "PERMANENT 550 5.1.1 st=4: no such user");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "OK 250 2.0.0 st=9: queued");
}

/* MAIL refused in the first of two pipelined transactions: the second
 * goes on; RSET once the pipeline has drained, nothing offered before. */
TR_TEST(bdat_mail_refused)
{
  start_chunking(t, 0);
  struct txn_fix *f0 = bdat_one(t, 0, 3);
  ev(t, "READY pipelined");
  struct txn_fix *f1 = bdat_one(t, 1, 4);
  ev(t, "READY pipelined");
  srv(t, "550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n");
  ev(t, "TXN_DONE 550 5.7.1 st=2: sender refused");
  no_ev(t); /* no offer while a failure waits for its RSET */
  res(t, smtpc_txn_outcome(&f0->txn, 0), "PERMANENT 550 5.7.1 st=2: sender refused");
  srv(t, "250 ok\r\n250 ok\r\n250 2.0.0 q1\r\n");
  ev(t, "TXN_DONE 250 2.0.0 st=9: q1");
  assert_ptr_equal(t->last.final, &f1->final);
  no_ev(t);
  cli(t, "RSET\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "READY");
}

/* The body of the first is refused at LAST (the server ended that
 * transaction); a 503 to the MAIL pipelined behind it is the server out
 * of step, not the message's fault: transient. */
TR_TEST(bdat_final_refused_then_503)
{
  start_chunking(t, 0);
  struct txn_fix *f0 = bdat_one(t, 0, 3);
  ev(t, "READY pipelined");
  struct txn_fix *f1 = bdat_one(t, 1, 4);
  ev(t, "READY pipelined");
  srv(t, "250 ok\r\n250 ok\r\n554 5.7.1 spam\r\n503 5.5.1 nested MAIL\r\n503 5.5.1 no\r\n"
         "503 5.5.1 no\r\n");
  ev(t, "TXN_DONE 554 5.7.1 st=9: spam");
  ev(t, "TXN_DONE 503 5.5.1 st=2: nested MAIL");
  res(t, smtpc_txn_outcome(&f0->txn, 0), "PERMANENT 554 5.7.1 st=9: spam");
  res(t, smtpc_txn_outcome(&f1->txn, 0), "TRANSIENT 503 5.5.1 st=2: nested MAIL");
  cli(t, "RSET\r\n");
}

/* Pipeline_Depth bounds the transactions in flight. */
TR_TEST(bdat_depth)
{
  start_chunking(t, 2);
  struct txn_fix *f0 = bdat_one(t, 0, 1);
  ev(t, "READY pipelined");
  (void)bdat_one(t, 1, 1);
  no_ev(t); /* two in flight: no offer */
  struct txn_fix *f2 = fix_k(2, "z@src.test", 1);
  assert_int_equal(smtpc_begin_txn(t->s, &f2->txn, t->now), -EBUSY);
  /* slots of a transaction in flight are refused */
  srv(t, "250 ok\r\n250 ok\r\n250 2.0.0 q0\r\n");
  ev(t, "TXN_DONE 250 2.0.0 st=9: q0");
  ev(t, "READY pipelined");
  assert_int_equal(smtpc_begin_txn(t->s, &fix_k(1, "", 1)->txn, t->now), -EINVAL);
  assert_ptr_equal(t->last.final, NULL);
  (void)f0;
  (void)bdat_one(t, 2, 1);
  no_ev(t);
}

/* The connection drops with three transactions in flight: each ends
 * transient, oldest first, then FAILED. */
TR_TEST(bdat_eof_in_flight)
{
  start_chunking(t, 0);
  struct txn_fix *f0 = bdat_one(t, 0, 1);
  ev(t, "READY pipelined");
  (void)bdat_one(t, 1, 1);
  ev(t, "READY pipelined");
  (void)bdat_one(t, 2, 1);
  ev(t, "READY pipelined");
  srv(t, "250 ok\r\n250 ok\r\n");
  smtpc_eof(t->s, t->now);
  ev(t, "TXN_DONE 0  st=9: connection closed*");
  assert_ptr_equal(t->last.final, &f0->final);
  ev(t, "TXN_DONE 0  st=9: *");
  ev(t, "TXN_DONE 0  st=9: *");
  ev(t, "FAILED network*");
  no_ev(t);
}

/* CHUNKING without PIPELINING, or chunking not wanted: DATA as before. */
TR_TEST(bdat_not_used)
{
  struct smtpc_params p = base_params();
  p.chunking = true;
  start(t, &p);
  hello(t, "250-mx.test\r\n250 CHUNKING\r\n");
  struct txn_fix *fx = fix_k(0, "a@src.test", 1);
  begin(t, fx);
  assert_false(smtpc_chunked(t->s));
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  smtpc_free(t->s);
  p.chunking = false;
  start(t, &p);
  hello(t, EHLO_CHUNK);
  begin(t, fx);
  assert_false(smtpc_chunked(t->s));
  assert_int_equal(smtpc_chunk(t->s, 1, true, t->now), -EINVAL);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<a0@dest.test>\r\nDATA\r\n");
}

/* Without PIPELINING nothing is offered before the final reply. */
TR_TEST(txn_lockstep_no_early_ready)
{
  start_hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  srv(t, "250 ok\r\n");
  cli(t, "RCPT TO:<r0@dest.test>\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  cli(t, "DATA\r\n");
  srv(t, "354 go\r\n");
  ev(t, "NEED_BODY");
  body(t, "x\r\n", true);
  no_ev(t);
  struct txn_fix *fb = fix_new_b("x@src.test", 1);
  assert_int_equal(smtpc_begin_txn(t->s, &fb->txn, t->now), -EBUSY);
  cli(t, "x\r\n.\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "TXN_DONE 250  st=9: ok");
  ev(t, "READY");
}

TR_TEST(txn_lockstep)
{
  start_hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 2);
  fx->txn.size = 99; /* SIZE not offered: no SIZE= */
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  srv(t, "250 ok\r\n");
  cli(t, "RCPT TO:<r0@dest.test>\r\n");
  assert_int_equal(smtpc_stage(t->s), 4);
  srv(t, "250 ok\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  cli(t, "RCPT TO:<r1@dest.test>\r\n");
  srv(t, "550 5.1.1 no such user\r\n");
  ev(t, "RCPT_RESULT 1 550 5.1.1 st=4: no such user");
  cli(t, "DATA\r\n");
  assert_int_equal(smtpc_stage(t->s), 6);
  srv(t, "354 go\r\n");
  ev(t, "NEED_BODY");
  body(t, "line\r\n", true);
  cli(t, "line\r\n.\r\n");
  srv(t, "250 ok done\r\n");
  ev(t, "TXN_DONE 250  st=9: ok done");
  ev(t, "READY");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "OK 250  st=9: ok done");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "PERMANENT 550 5.1.1 st=4: no such user");
}

TR_TEST(txn_partial_rcpt_pipelined)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 3);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nRCPT TO:<r1@dest.test>\r\n"
         "RCPT TO:<r2@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n450 4.2.1 mailbox busy\r\n250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 450 4.2.1 st=4: mailbox busy");
  ev(t, "RCPT_RESULT 1 250  st=4: ok");
  ev(t, "RCPT_RESULT 2 550 5.1.1 st=4: unknown");
  ev(t, "NEED_BODY");
  body(t, "b", true);
  cli(t, "b\r\n.\r\n");
  ev(t, "READY pipelined");
  srv(t, "250 ok\r\n");
  ev(t, "TXN_DONE 250  st=9: ok");
  ev(t, "READY");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "TRANSIENT 450 4.2.1 st=4: mailbox busy");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "OK 250  st=9: ok");
  res(t, smtpc_txn_outcome(&fx->txn, 2), "PERMANENT 550 5.1.1 st=4: unknown");
  res(t, &fx->res[1], "OK 250  st=4: ok"); /* the RCPT reply itself is kept */
}

TR_TEST(txn_all_refused_pipelined_data_554)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 2);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nRCPT TO:<r1@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n550 no\r\n450 later\r\n554 5.5.1 no valid recipients\r\n");
  ev(t, "RCPT_RESULT 0 550  st=4: no");
  ev(t, "RCPT_RESULT 1 450  st=4: later");
  ev(t, "TXN_DONE 0  st=4: all recipients were refused");
  no_ev(t);
  res(t, &fx->final, "TRANSIENT 0  st=4: all recipients were refused");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "PERMANENT 550  st=4: no");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "TRANSIENT 450  st=4: later");
  cli(t, "RSET\r\n");
  assert_int_equal(smtpc_stage(t->s), 13);
  srv(t, "250 reset\r\n");
  ev(t, "READY");
}

/* RFC 2920 3.1: DATA answered 354 with no valid recipient: a lone ".". */
TR_TEST(txn_all_refused_pipelined_data_354)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n550 5.1.1 no\r\n354 send it anyway\r\n");
  ev(t, "RCPT_RESULT 0 550 5.1.1 st=4: no");
  no_ev(t);
  cli(t, ".\r\n");
  srv(t, "554 no recipients\r\n");
  ev(t, "TXN_DONE 0  st=4: all recipients were refused");
  cli(t, "RSET\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "READY");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "PERMANENT 550 5.1.1 st=4: no");
}

TR_TEST(txn_all_refused_lockstep)
{
  start_hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 2);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  srv(t, "250 ok\r\n");
  cli(t, "RCPT TO:<r0@dest.test>\r\n");
  srv(t, "550 no\r\n");
  ev(t, "RCPT_RESULT 0 550  st=4: no");
  cli(t, "RCPT TO:<r1@dest.test>\r\n");
  srv(t, "551 no\r\n");
  ev(t, "RCPT_RESULT 1 551  st=4: no");
  ev(t, "TXN_DONE 0  st=4: all recipients were refused");
  cli(t, "RSET\r\n"); /* no DATA */
  srv(t, "250 ok\r\n");
  ev(t, "READY");
}

TR_TEST(txn_mail_refused_pipelined)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 2);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nRCPT TO:<r1@dest.test>\r\nDATA\r\n");
  srv(t, "452 4.3.1 insufficient storage\r\n503 need MAIL\r\n503 need MAIL\r\n503 need MAIL\r\n");
  ev(t, "RCPT_RESULT 0 452 4.3.1 st=2: insufficient storage");
  ev(t, "RCPT_RESULT 1 452 4.3.1 st=2: insufficient storage");
  ev(t, "TXN_DONE 452 4.3.1 st=2: insufficient storage");
  cli(t, "RSET\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "READY");
}

TR_TEST(txn_mail_refused_lockstep)
{
  start_hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  srv(t, "553 5.1.8 bad sender\r\n");
  ev(t, "RCPT_RESULT 0 553 5.1.8 st=2: bad sender");
  ev(t, "TXN_DONE 553 5.1.8 st=2: bad sender");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "PERMANENT 553 5.1.8 st=2: bad sender");
  cli(t, "RSET\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "READY");
}

TR_TEST(txn_data_refused)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "TXN_DONE 451 4.3.0 st=6: try later");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "TRANSIENT 451 4.3.0 st=6: try later");
  cli(t, "RSET\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "READY");
}

TR_TEST(txn_final_5xx_then_reuse)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  body(t, "spam\r\n", true);
  cli(t, "spam\r\n.\r\n");
  ev(t, "READY pipelined");
  srv(t, "554 5.7.1 rejected as spam\r\n");
  ev(t, "TXN_DONE 554 5.7.1 st=9: rejected as spam");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "PERMANENT 554 5.7.1 st=9: rejected as spam");
  cli(t, "RSET\r\n");
  srv(t, "250 ok\r\n");
  ev(t, "READY");
  fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  body(t, "", true);
  cli(t, ".\r\n");
  ev(t, "READY pipelined");
  srv(t, "451 4.3.0 later\r\n");
  ev(t, "TXN_DONE 451 4.3.0 st=9: later");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "TRANSIENT 451 4.3.0 st=9: later");
  cli(t, "RSET\r\n");
  srv(t, "500 what\r\n");
  ev(t, "FAILED transient 500  f=0 st=13: what");
  cli(t, "QUIT\r\n");
}

TR_TEST(txn_params)
{
  struct smtpc_params p = base_params();
  p.send_8bitmime = true;
  start(t, &p);
  hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  fx->txn.size = 5000;
  fx->txn.flags = SMTPC_TXN_8BIT | SMTPC_TXN_SMTPUTF8;
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test> SIZE=5000 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n554 nope\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "TXN_DONE 554  st=6: nope");
  cli(t, "RSET\r\n");
}

/* 8-bit message, peer without 8BITMIME or send_8bitmime off: no BODY=. */
TR_TEST(txn_params_not_offered)
{
  start_hello(t, EHLO_PLAIN); /* offers 8BITMIME, send_8bitmime off */
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  fx->txn.size = 5000;
  fx->txn.flags = SMTPC_TXN_8BIT;
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
}

TR_TEST(txn_size_exceeded)
{
  start_hello(t, "250-mx.test\r\n250 SIZE 1000\r\n");
  struct txn_fix *fx = fix_new(t, "a@src.test", 2);
  fx->txn.size = 1001;
  begin(t, fx);
  ev(t, "TXN_DONE 0 5.3.4 st=1: message size 1001 exceeds the remote server's limit 1000");
  ev(t, "READY");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "PERMANENT 0 5.3.4 st=1: message size 1001 exceeds the remote server's limit 1000");
  cli(t, "");
}

TR_TEST(txn_smtputf8_not_offered)
{
  start_hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  fx->txn.flags = SMTPC_TXN_SMTPUTF8;
  begin(t, fx);
  ev(t, "TXN_DONE 0 5.6.7 st=1: SMTPUTF8 is required but the remote server does not offer it");
  ev(t, "READY");
}

/* More RCPTs than fit in the output buffer: the send cursor waits for
 * the driver to consume output. */
TR_TEST(txn_send_cursor)
{
  struct smtpc_params p = base_params();
  p.out_buf_size = 1024;
  p.max_rcpts = 200;
  start(t, &p);
  hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 150);
  begin(t, fx);
  char want[16384], rep[16384];
  size_t w = (size_t)snprintf(want, sizeof(want), "MAIL FROM:<a@src.test>\r\n");
  size_t r = (size_t)snprintf(rep, sizeof(rep), "250 ok\r\n");
  for (int i = 0; i < 150; i++) {
    w += (size_t)snprintf(want + w, sizeof(want) - w, "RCPT TO:<r%d@dest.test>\r\n", i);
    r += (size_t)snprintf(rep + r, sizeof(rep) - r, "%s\r\n", i % 2 ? "250 ok" : "450 busy");
  }
  w += (size_t)snprintf(want + w, sizeof(want) - w, "DATA\r\n");
  r += (size_t)snprintf(rep + r, sizeof(rep) - r, "354 go\r\n");
  const uint8_t *op;
  size_t on;
  assert_true(smtpc_output(t->s, &op, &on));
  assert_true(on <= 1024);
  cli(t, want);
  srv(t, rep);
  for (int i = 0; i < 150; i++) {
    struct smtpc_event e;
    assert_true(smtpc_next_event(t->s, &e));
    assert_int_equal(e.type, SMTPC_EV_RCPT_RESULT);
    assert_int_equal(e.index, i);
    assert_int_equal(e.code, i % 2 ? 250 : 450);
  }
  ev(t, "NEED_BODY");
}

TR_TEST(txn_body_chunks)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  /* CR at the end of a chunk, LF in the next; '.' at a line start in the
   * next chunk; bare CR; bare LF; no final newline */
  body(t, "a\r", false);
  body(t, "\n.b\r", false);
  body(t, ".c\n", false);
  body(t, ".", false);
  body(t, "\r\rx\n\n..", true);
  cli(t, "a\r\n..b\r\n..c\r\n..\r\n\r\nx\r\n\r\n...\r\n.\r\n");
  ev(t, "READY pipelined");
  srv(t, "250 ok\r\n");
  ev(t, "TXN_DONE 250  st=9: ok");
  ev(t, "READY");
}

/* A body much larger than the output buffer. */
TR_TEST(txn_body_large)
{
  struct smtpc_params p = base_params();
  p.out_buf_size = 1024;
  start(t, &p);
  hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  static char in[100000], out[220000], got[220000];
  size_t o = 0;
  for (size_t i = 0; i < sizeof(in) - 1; i++) {
    in[i] = (i % 77 == 0) ? '.' : (i % 77 == 76) ? '\n' : 'a';
  }
  in[sizeof(in) - 1] = '\0';
  size_t inlen = sizeof(in) - 1;
  for (size_t i = 0; i < inlen; i++) {
    if (in[i] == '\n') { out[o++] = '\r'; out[o++] = '\n'; }
    else if (in[i] == '.' && (i == 0 || in[i - 1] == '\n')) { out[o++] = '.'; out[o++] = '.'; }
    else out[o++] = in[i];
  }
  memcpy(out + o, "\r\n.\r\n", 5);
  o += 5;
  size_t off = 0, g = 0;
  int rounds = 0;
  while (smtpc_state(t->s) == SMTPC_ST_BODY) {
    long k = smtpc_body(t->s, in + off, inlen - off, true, t->now);
    if (k == -EINVAL) /* everything consumed, waiting to append the dot */
      k = 0;
    assert_true(k >= 0);
    off += (size_t)k;
    const uint8_t *op;
    size_t on;
    while (smtpc_output(t->s, &op, &on)) {
      memcpy(got + g, op, on);
      g += on;
      smtpc_output_consumed(t->s, on, t->now);
    }
    assert_true(++rounds < 100000);
  }
  assert_int_equal(g, o);
  assert_memory_equal(got, out, o);
  assert_int_equal(smtpc_state(t->s), SMTPC_ST_DOT);
  ev(t, "READY pipelined");
  srv(t, "250 ok\r\n");
  ev(t, "TXN_DONE 250  st=9: ok");
}

/* Pre-stuffed body sent by the driver itself; the machine adds the end. */
TR_TEST(txn_body_prestuffed)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  assert_int_equal(smtpc_body_sent(t->s, 100, false, false, t->now), 0);
  cli(t, "");
  assert_int_equal(smtpc_body_sent(t->s, 20, true, false, t->now), 0); /* no final CRLF */
  cli(t, "\r\n.\r\n");
  ev(t, "READY pipelined");
  assert_int_equal(smtpc_body_sent(t->s, 1, true, true, t->now), -EINVAL);
  srv(t, "250 ok\r\n");
  ev(t, "TXN_DONE 250  st=9: ok");
  ev(t, "READY");
  fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  assert_int_equal(smtpc_body_sent(t->s, 10, true, true, t->now), 0);
  cli(t, ".\r\n");
}

TR_TEST(txn_reply_during_body)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  body(t, "part", false);
  srv(t, "552 5.3.4 too big\r\n");
  ev(t, "TXN_DONE 552 5.3.4 st=8: too big");
  ev(t, "FAILED protocol 552 5.3.4 f=0 st=8: reply before the end of the body: 552 too big");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "PERMANENT 552 5.3.4 st=8: too big");
}

TR_TEST(txn_eof_mid_rcpt)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 2);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nRCPT TO:<r1@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  smtpc_eof(t->s, t->now);
  ev(t, "TXN_DONE 0  st=4: connection closed by the server while sending RCPT TO");
  ev(t, "FAILED network 0  f=0 st=4: connection closed by the server while sending RCPT TO");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "TRANSIENT 0  st=4: connection closed by the server while sending RCPT TO");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "TRANSIENT 0  st=4: connection closed by the server while sending RCPT TO");
}

TR_TEST(txn_421_mid_rcpt)
{
  start_hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 2);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  srv(t, "250 ok\r\n");
  cli(t, "RCPT TO:<r0@dest.test>\r\n");
  srv(t, "421 4.4.2 shutting down\r\n");
  ev(t, "RCPT_RESULT 0 421 4.4.2 st=4: shutting down");
  ev(t, "TXN_DONE 421 4.4.2 st=4: shutting down");
  ev(t, "FAILED transient 421 4.4.2 f=0 st=4: shutting down");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "TRANSIENT 421 4.4.2 st=4: shutting down");
  res(t, smtpc_txn_outcome(&fx->txn, 1), "TRANSIENT 421 4.4.2 st=4: shutting down");
  cli(t, "");
}

TR_TEST(io_error_idle)
{
  start_hello(t, EHLO_PLAIN);
  smtpc_io_error(t->s, -ECONNRESET, t->now);
  ev(t, "FAILED network 0  f=0 st=1: ECONNRESET while idle");
  no_ev(t);
}

TR_TEST(txn_invalid)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  fx->rcpts[0] = "evil@x>\r\nRSET";
  assert_int_equal(smtpc_begin_txn(t->s, &fx->txn, t->now), -EINVAL);
  fx = fix_new(t, "a@src.test\r\nDATA", 1);
  assert_int_equal(smtpc_begin_txn(t->s, &fx->txn, t->now), -EINVAL);
  fx = fix_new(t, "a@src.test", 101); /* max_rcpts default 100 */
  assert_int_equal(smtpc_begin_txn(t->s, &fx->txn, t->now), -EINVAL);
  fx = fix_new(t, "a@src.test", 0);
  assert_int_equal(smtpc_begin_txn(t->s, &fx->txn, t->now), -EINVAL);
  fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  assert_int_equal(smtpc_begin_txn(t->s, &fx->txn, t->now), -EBUSY);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  no_ev(t);
}

/* ------------------------------------------------------------------ timeouts */

static void expect_timeout(struct tr *t, uint32_t secs, const char *want)
{
  uint64_t d = smtpc_deadline(t->s);
  assert_int_equal(d, t->now + (uint64_t)secs * 1000);
  assert_int_equal(smtpc_timeout(t->s, d - 1), 0);
  no_ev(t);
  assert_int_equal(smtpc_timeout(t->s, d), 1);
  ev(t, want);
}

TR_TEST(timeout_connect)
{
  struct smtpc_params p = base_params();
  p.timeouts.connect = 7;
  t->s = smtpc_new(&p, t->now);
  expect_timeout(t, 7, "FAILED timeout 0  f=0 st=0: timeout while connecting (Connect_Timeout = 7 s)");
}

TR_TEST(timeout_banner)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "220-partial banner\r\n");
  expect_timeout(t, 300, "FAILED timeout 0  f=0 st=12: timeout while reading the banner (EHLO_Timeout = 300 s)");
}

TR_TEST(timeout_ehlo)
{
  struct smtpc_params p = base_params();
  p.timeouts.ehlo = 11;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  expect_timeout(t, 11, "FAILED timeout 0  f=0 st=10: timeout while sending EHLO (EHLO_Timeout = 11 s)");
}

TR_TEST(timeout_tls)
{
  struct smtpc_params p = base_params();
  p.tls = SMTPC_TLS_IFAVAILABLE;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, EHLO_TLS);
  cli(t, "STARTTLS\r\n");
  srv(t, "220 go\r\n");
  ev(t, "NEED_TLS");
  expect_timeout(t, 300, "FAILED timeout 0  f=0 st=17: timeout while in the TLS handshake (EHLO_Timeout = 300 s)");
}

TR_TEST(timeout_auth)
{
  auth_start(t, SMTPC_AUTH_LOGIN, "u", "p", true);
  srv(t, EHLO_AUTH);
  cli(t, "AUTH LOGIN\r\n");
  expect_timeout(t, 300, "FAILED timeout 0  f=0 st=11: timeout while authenticating (EHLO_Timeout = 300 s)");
}

static struct smtpc_params timeout_params(void)
{
  struct smtpc_params p = base_params();
  p.timeouts.mailfrom = 21;
  p.timeouts.rcptto = 22;
  p.timeouts.data = 23;
  p.timeouts.body = 24;
  p.timeouts.rset = 25;
  p.timeouts.idle = 26;
  return p;
}

TR_TEST(timeout_mail)
{
  struct smtpc_params p = timeout_params();
  start(t, &p);
  hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  expect_timeout(t, 21, "TXN_DONE 0  st=2: timeout while sending MAIL FROM (MailFrom_Timeout = 21 s)");
  ev(t, "FAILED timeout 0  f=0 st=2: timeout while sending MAIL FROM (MailFrom_Timeout = 21 s)");
  res(t, smtpc_txn_outcome(&fx->txn, 0), "TRANSIENT 0  st=2: timeout while sending MAIL FROM (MailFrom_Timeout = 21 s)");
}

TR_TEST(timeout_rcpt)
{
  struct smtpc_params p = timeout_params();
  start(t, &p);
  hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n");
  expect_timeout(t, 22, "TXN_DONE 0  st=4: timeout while sending RCPT TO (RcptTo_Timeout = 22 s)");
  ev(t, "FAILED timeout*");
}

TR_TEST(timeout_data)
{
  struct smtpc_params p = timeout_params();
  start(t, &p);
  hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  expect_timeout(t, 23, "TXN_DONE 0  st=6: timeout while sending DATA (Data_Timeout = 23 s)");
  ev(t, "FAILED timeout 0  f=0 st=6: timeout while sending DATA (Data_Timeout = 23 s)");
}

TR_TEST(timeout_body_and_dot)
{
  struct smtpc_params p = timeout_params();
  start(t, &p);
  hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  t->now += 10000;
  body(t, "abc", false); /* progress pushes the deadline */
  assert_int_equal(smtpc_deadline(t->s), t->now + 24000);
  t->now += 5000;
  cli(t, "abc");
  assert_int_equal(smtpc_deadline(t->s), t->now + 24000);
  body(t, "", true);
  cli(t, "\r\n.\r\n");
  ev(t, "READY pipelined");
  expect_timeout(t, 24, "TXN_DONE 0  st=9: timeout while reading the confirmation (Body_Timeout = 24 s)");
  ev(t, "FAILED timeout*");
}

TR_TEST(timeout_body_stall)
{
  struct smtpc_params p = timeout_params();
  start(t, &p);
  hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  srv(t, "250 ok\r\n250 ok\r\n354 go\r\n");
  ev(t, "RCPT_RESULT 0 250  st=4: ok");
  ev(t, "NEED_BODY");
  expect_timeout(t, 24, "TXN_DONE 0  st=8: timeout while sending the body (Body_Timeout = 24 s)");
}

TR_TEST(timeout_rset)
{
  struct smtpc_params p = timeout_params();
  start(t, &p);
  hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  srv(t, "550 no\r\n");
  ev(t, "RCPT_RESULT 0 550  st=2: no");
  ev(t, "TXN_DONE 550  st=2: no");
  cli(t, "RSET\r\n");
  expect_timeout(t, 25, "FAILED timeout 0  f=0 st=13: timeout while sending RSET (RSET_Timeout = 25 s)");
}

TR_TEST(timeout_idle_quit)
{
  struct smtpc_params p = timeout_params();
  start(t, &p);
  hello(t, EHLO_PLAIN);
  uint64_t d = smtpc_deadline(t->s);
  assert_int_equal(d, t->now + 26000);
  assert_int_equal(smtpc_timeout(t->s, d), 1);
  no_ev(t);
  cli(t, "QUIT\r\n");
  t->now = d;
  assert_int_equal(smtpc_deadline(t->s), d + 25000);
  assert_int_equal(smtpc_timeout(t->s, d + 25000), 1);
  ev(t, "CLOSED");
}

TR_TEST(quit_eof)
{
  start_hello(t, EHLO_PLAIN);
  smtpc_quit(t->s, t->now);
  cli(t, "QUIT\r\n");
  smtpc_eof(t->s, t->now);
  ev(t, "CLOSED");
  no_ev(t);
}

TR_TEST(quit_mid_txn)
{
  start_hello(t, EHLO_PIPE);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\nRCPT TO:<r0@dest.test>\r\nDATA\r\n");
  smtpc_quit(t->s, t->now);
  ev(t, "TXN_DONE 0  st=2: session closed locally");
  ev(t, "CLOSED");
}

/* ------------------------------------------------------------------ limits and garbage */

TR_TEST(limit_line)
{
  struct smtpc_params p = base_params();
  p.limits.max_line = 100;
  start(t, &p);
  char line[200];
  memset(line, 'x', sizeof(line));
  memcpy(line, "220 ", 4);
  srvn(t, line, sizeof(line)); /* no newline at all: endless line */
  ev(t, "FAILED protocol 0  f=0 st=12: reply line too long reading the banner");
  cli(t, "");
}

/* A line of exactly max_line bytes (CRLF included) passes. */
TR_TEST(limit_line_exact)
{
  struct smtpc_params p = base_params();
  p.limits.max_line = 100;
  start(t, &p);
  char line[101];
  memset(line, 'x', 100);
  memcpy(line, "220 ", 4);
  line[98] = '\r';
  line[99] = '\n';
  line[100] = 0;
  srv(t, line);
  cli(t, EHLO_CMD);
}

TR_TEST(limit_10000_lines)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  /* the limit (200 lines) trips after ~2.4 KB; splits far past it add
   * nothing but time */
  if (t->mode == TR_SPLIT && t->split_at > 4000)
    return;
  static char big[10000 * 12 + 16];
  static size_t o;
  if (!o) {
    for (int i = 0; i < 10000; i++)
      o += (size_t)snprintf(big + o, sizeof(big) - o, "250-X%05d\r\n", i);
    o += (size_t)snprintf(big + o, sizeof(big) - o, "250 end\r\n");
  }
  srvn(t, big, o);
  ev(t, "FAILED protocol 0  f=0 st=10: too many lines in one reply sending EHLO");
}

TR_TEST(limit_reply_bytes)
{
  struct smtpc_params p = base_params();
  p.limits.max_reply_bytes = 100;
  start(t, &p);
  srv(t, "220-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n220-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n220 c\r\n");
  ev(t, "FAILED protocol 0  f=0 st=12: reply too long reading the banner");
}

TR_TEST(limit_unsolicited)
{
  struct smtpc_params p = base_params();
  p.limits.max_unsolicited = 20;
  start(t, &p);
  hello(t, EHLO_PLAIN);
  srv(t, "250 spurious\r\n"); /* 14 bytes: dropped */
  no_ev(t);
  srv(t, "250 more spurious\r\n");
  ev(t, "FAILED protocol 0  f=0 st=1: more than 20 bytes of unsolicited data from the server idle");
}

/* Extra bytes right after a final reply, with nothing outstanding. */
TR_TEST(unsolicited_after_reply)
{
  struct smtpc_params p = base_params();
  p.limits.max_unsolicited = 10;
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "250 mx.test\r\nGARBAGE-GARBAGE-GARBAGE");
  ev(t, "READY");
  ev(t, "FAILED protocol 0  f=0 st=1: more than 10 bytes of unsolicited data from the server idle");
}

TR_TEST(unsolicited_421_idle)
{
  start_hello(t, EHLO_PLAIN);
  srv(t, "421 4.4.2 idle timeout\r\n");
  ev(t, "FAILED transient 421 4.4.2 f=0 st=1: idle timeout");
  cli(t, "");
}

TR_TEST(garbage_reply)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "hello there\r\n");
  ev(t, "FAILED protocol 0  f=0 st=12: malformed reply reading the banner");
}

TR_TEST(garbage_code_class)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "199 what\r\n");
  ev(t, "FAILED protocol*");
}

TR_TEST(garbage_separator)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "220xready\r\n");
  ev(t, "FAILED protocol 0  f=0 st=12: malformed reply reading the banner");
}

TR_TEST(garbage_inconsistent_codes)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, BANNER);
  cli(t, EHLO_CMD);
  srv(t, "250-mx.test\r\n550 PIPELINING\r\n");
  ev(t, "FAILED protocol 0  f=0 st=10: malformed reply sending EHLO");
}

TR_TEST(garbage_text_sanitised)
{
  struct smtpc_params p = base_params();
  start(t, &p);
  srv(t, "421 bad\x01\x1b[31m\xff\\ text\r\n");
  ev(t, "FAILED transient 421  f=0 st=12: bad\\x01\\x1B[31m\\xFF\\x5C text");
}

TR_TEST(garbage_plaintext_in_tls)
{
  struct smtpc_params p = base_params();
  p.implicit_tls = true;
  t->s = smtpc_new(&p, t->now);
  smtpc_connected(t->s, t->now);
  ev(t, "NEED_TLS");
  srv(t, "220 plain\r\n");
  ev(t, "FAILED protocol 0  f=0 st=17: unexpected plaintext data in the TLS handshake");
}

/* 3xx where it does not belong. */
TR_TEST(garbage_354_to_mail)
{
  start_hello(t, EHLO_PLAIN);
  struct txn_fix *fx = fix_new(t, "a@src.test", 1);
  begin(t, fx);
  cli(t, "MAIL FROM:<a@src.test>\r\n");
  srv(t, "354 eh\r\n");
  ev(t, "TXN_DONE 354  st=2: unexpected reply 354 to MAIL FROM: eh");
  ev(t, "FAILED protocol 354  f=0 st=2: unexpected reply 354 to MAIL FROM: eh");
}

/* ------------------------------------------------------------------ misc */

static void test_params_rejected(void **state)
{
  (void)state;
  struct smtpc_params p = base_params();
  p.ehlo_name = "bad\r\nname";
  assert_null(smtpc_new(&p, 0));
  p = base_params();
  p.auth.type = SMTPC_AUTH_PLAIN;
  p.auth.user = "u";
  p.auth.pass = "p\r\nQUIT";
  assert_null(smtpc_new(&p, 0));
  p.auth.pass = NULL;
  assert_null(smtpc_new(&p, 0));
  smtpc_free(NULL);
}

static void test_tables(void **state)
{
  (void)state;
  assert_string_equal(smtpc_state_doing(SMTPC_ST_RCPT), "sending RCPT TO");
  assert_int_equal(smtpc_state_stage(SMTPC_ST_CONNECT), 0);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_IDLE), 1);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_MAIL), 2);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_RCPT), 4);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_DATA), 6);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_BODY), 8);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_DOT), 9);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_EHLO), 10);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_BANNER), 12);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_RSET), 13);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_STARTTLS), 15);
  assert_int_equal(smtpc_state_stage(SMTPC_ST_TLS), 17);
  for (int st = 0; st < SMTPC_ST_COUNT; st++) {
    assert_non_null(smtpc_state_name((enum smtpc_state)st));
    assert_non_null(smtpc_state_doing((enum smtpc_state)st));
  }
  assert_string_equal(smtpc_timeout_option(SMTPC_ST_RCPT), "RcptTo_Timeout");
  assert_null(smtpc_timeout_option(SMTPC_ST_DONE));
}

/* Idle session memory stays small (thousands of sessions per worker). */
static void test_memory(void **state)
{
  (void)state;
  struct smtpc_params p = base_params();
  struct smtpc *s = smtpc_new(&p, 0);
  print_message("idle session: %zu bytes (struct %zu)\n", smtpc_memory(s), smtpc_memory(s) - 4096 - strlen(EHLO_NAME) - 1);
  assert_true(smtpc_memory(s) <= 8192);
  smtpc_free(s);
}

/* Passwords never appear in event texts, whatever the outcome. */
static void test_no_secret_in_events(void **state)
{
  (void)state;
  struct smtpc_params p = base_params();
  p.auth.type = SMTPC_AUTH_LOGIN;
  p.auth.user = "user1";
  p.auth.pass = "Sup3rSecret";
  p.auth_allow_plaintext = true;
  struct smtpc *s = smtpc_new(&p, 0);
  smtpc_connected(s, 0);
  const char *in = BANNER EHLO_AUTH "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 bad\r\n";
  smtpc_feed(s, in, strlen(in), 0);
  struct smtpc_event e;
  int n = 0;
  while (smtpc_next_event(s, &e)) {
    assert_null(strstr(e.text, "Sup3rSecret"));
    n++;
  }
  assert_true(n >= 1);
  smtpc_free(s);
}

#define T(name) cmocka_unit_test(run_##name)

int main(void)
{
  const struct CMUnitTest tests[] = {
    T(greet_multiline_and_quit), T(greet_421), T(greet_554), T(greet_bare_lf),
    T(ehlo_500_helo), T(ehlo_502_helo_fails), T(ehlo_550), T(ehlo_extensions),
    T(ehlo_first_line_not_keyword),
    T(starttls_flow), T(starttls_refused_ifavailable), T(starttls_refused_required),
    T(starttls_required_not_offered), T(starttls_not_offered_ifavailable),
    T(starttls_handshake_fails), T(starttls_injection), T(implicit_tls),
    T(auth_plain), T(auth_plain_sparkpost), T(auth_login), T(auth_login_odd_challenges),
    T(auth_login_bad_challenge), T(auth_xoauth2), T(auth_xoauth2_error_challenge), T(auth_454),
    T(auth_534_538_504), T(auth_not_offered), T(auth_mech_not_offered),
    T(auth_plaintext_refused), T(auth_challenge_too_long), T(auth_challenge_multiline),
    T(auth_plain_unexpected_334), T(auth_after_starttls),
    T(txn_pipelined), T(txn_pipelined_next), T(txn_pipelined_next_prev_refused),
    T(txn_pipelined_next_eof), T(txn_pipelined_next_421), T(txn_pipelined_next_local_refusal),
    T(bdat_pipelined_three), T(bdat_chunk_refused_mid_body), T(bdat_chunks), T(bdat_mail_refused),
    T(bdat_final_refused_then_503), T(bdat_depth), T(bdat_eof_in_flight), T(bdat_not_used),
    T(txn_lockstep_no_early_ready), T(txn_lockstep), T(txn_partial_rcpt_pipelined),
    T(txn_all_refused_pipelined_data_554), T(txn_all_refused_pipelined_data_354),
    T(txn_all_refused_lockstep), T(txn_mail_refused_pipelined), T(txn_mail_refused_lockstep),
    T(txn_data_refused), T(txn_final_5xx_then_reuse), T(txn_params), T(txn_params_not_offered),
    T(txn_size_exceeded), T(txn_smtputf8_not_offered), T(txn_send_cursor), T(txn_body_chunks),
    T(txn_body_large), T(txn_body_prestuffed), T(txn_reply_during_body), T(txn_eof_mid_rcpt), T(txn_421_mid_rcpt), T(io_error_idle),
    T(txn_invalid),
    T(timeout_connect), T(timeout_banner), T(timeout_ehlo), T(timeout_tls), T(timeout_auth),
    T(timeout_mail), T(timeout_rcpt), T(timeout_data), T(timeout_body_and_dot),
    T(timeout_body_stall), T(timeout_rset), T(timeout_idle_quit), T(quit_eof), T(quit_mid_txn),
    T(limit_line), T(limit_line_exact), T(limit_10000_lines), T(limit_reply_bytes),
    T(limit_unsolicited), T(unsolicited_after_reply), T(unsolicited_421_idle),
    T(garbage_reply), T(garbage_code_class), T(garbage_separator),
    T(garbage_inconsistent_codes), T(garbage_text_sanitised), T(garbage_plaintext_in_tls),
    T(garbage_354_to_mail),
    cmocka_unit_test(test_params_rejected), cmocka_unit_test(test_tables),
    cmocka_unit_test(test_memory), cmocka_unit_test(test_no_secret_in_events),
  };
  if (getenv("SMTPC_TEST")) /* run one scenario: SMTPC_TEST=run_txn_lockstep */
    cmocka_set_test_filter(getenv("SMTPC_TEST"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
