/* auth: effective credentials per unit (no Lua here; the hook paths are
 * in tests/integration/auth): context over configuration, scope views,
 * identities equal iff type+user+pass equal, module off = no AUTH, queues
 * split by identity. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "authkeys.h"
#include "conf.h"
#include "ctx.h"
#include "dq.h"
#include "policy.h"
#include "spool.h"

static struct conf *load(const char *text)
{
  char path[] = "/tmp/test_auth.XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  struct conf_error ce;
  struct conf *c = conf_load(path, &ce);
  unlink(path);
  if (!c)
    fail_msg("%s:%u: %s", ce.file, ce.line, ce.msg);
  return c;
}

static void never(void *arg, uint64_t id)
{
  (void)arg;
  (void)id;
  fail_msg("no Lua: resolution must finish at once");
}

static uint64_t resolve(struct auth *a, struct conf *c, struct ctx *mess, const char *binding,
                        const char *domain)
{
  struct spool_msg m = {.sender = "s@x.test", .mess = mess, .conn = ctx_new()};
  struct policy_worker *pw = policy_worker_new(NULL, NULL, NULL, c, 0);
  uint64_t id = 99;
  assert_int_equal(auth_resolve(a, pw, c, NULL, &m, binding, domain, &id, never, NULL), 0);
  policy_worker_free(pw);
  ctx_free(m.conn);
  return id;
}

static const char *CONF =
  "Outbound_SMTP_AUTH_Type = \"LOGIN\"\n"
  "Domain \"a.test\" { Outbound_SMTP_AUTH_User = \"ua\" Outbound_SMTP_AUTH_Pass = \"pa\" }\n"
  "Binding \"b\" { Outbound_SMTP_AUTH_User = \"ub\" Outbound_SMTP_AUTH_Pass = \"pb\"\n"
  "  Domain \"a.test\" { Outbound_SMTP_AUTH_Type = \"PLAIN\" } }\n";

static void test_config_scopes(void **st)
{
  (void)st;
  struct conf *c = load(CONF);
  struct auth *a = auth_new();
  struct ctx *mess = ctx_new();
  uint64_t ida = resolve(a, c, mess, NULL, "a.test");
  const struct smtpc_auth *cr = auth_creds(a, ida);
  assert_non_null(cr);
  assert_int_equal(cr->type, SMTPC_AUTH_LOGIN);
  assert_string_equal(cr->user, "ua");
  assert_string_equal(cr->pass, "pa");
  uint64_t idb = resolve(a, c, mess, "b", "a.test");
  cr = auth_creds(a, idb);
  assert_string_equal(cr->user, "ub");
  assert_int_equal(cr->type, SMTPC_AUTH_PLAIN); /* binding::domain */
  assert_int_not_equal(ida, idb);
  assert_int_equal(resolve(a, c, mess, NULL, "none.test"), 0); /* no user: no AUTH */
  assert_null(auth_creds(a, 0));
  ctx_free(mess);
  auth_free(a);
  conf_unref(c);
}

static void test_context_wins(void **st)
{
  (void)st;
  struct conf *c = load(CONF);
  struct auth *a = auth_new();
  struct ctx *m1 = ctx_new(), *m2 = ctx_new(), *m3 = ctx_new();
  ctx_set(m1, "outbound_smtp_auth_user", "tenant");
  ctx_set(m1, "outbound_smtp_auth_pass", "tpw");
  ctx_set(m2, "outbound_smtp_auth_user", "tenant");
  ctx_set(m2, "outbound_smtp_auth_pass", "tpw");
  ctx_set(m3, "outbound_smtp_auth_user", "tenant");
  ctx_set(m3, "outbound_smtp_auth_pass", "other");
  ctx_set(m3, "outbound_smtp_auth_type", "xoauth2");
  uint64_t i1 = resolve(a, c, m1, NULL, "a.test");
  uint64_t i2 = resolve(a, c, m2, NULL, "a.test");
  uint64_t i3 = resolve(a, c, m3, NULL, "a.test");
  assert_int_equal(i1, i2); /* identical credentials: one identity, one pool */
  assert_int_not_equal(i1, i3);
  assert_string_equal(auth_creds(a, i1)->user, "tenant");
  assert_string_equal(auth_creds(a, i1)->pass, "tpw");
  assert_int_equal(auth_creds(a, i1)->type, SMTPC_AUTH_LOGIN); /* type from configuration */
  assert_int_equal(auth_creds(a, i3)->type, SMTPC_AUTH_XOAUTH2);
  /* queues split by identity */
  struct dq *d = dq_new();
  assert_ptr_not_equal(dq_queue_cred(d, "default", "a.test", i1),
                       dq_queue_cred(d, "default", "a.test", i3));
  assert_ptr_equal(dq_queue_cred(d, "default", "a.test", i1),
                   dq_queue_cred(d, "default", "A.test", i2));
  assert_ptr_equal(dq_queue(d, "default", "a.test"), dq_queue_cred(d, "default", "a.test", 0));
  dq_free(d, NULL, NULL);
  ctx_free(m1);
  ctx_free(m2);
  ctx_free(m3);
  auth_free(a);
  conf_unref(c);
}

static void test_disabled(void **st)
{
  (void)st;
  struct conf *c = load("Domain \"a.test\" { Max_Outbound_Connections = 3 }\n");
  struct auth *a = auth_new();
  struct ctx *m = ctx_new();
  ctx_set(m, "outbound_smtp_auth_user", "tenant");
  ctx_set(m, "outbound_smtp_auth_pass", "tpw");
  assert_false(auth_enabled(a, c));
  assert_int_equal(resolve(a, c, m, NULL, "a.test"), 0); /* module off: context ignored */
  ctx_free(m);
  auth_free(a);
  conf_unref(c);
}

/* Issue 18 item 1: user and password are one unit. A message context with
 * a user but no password (a restart lost it, or a script set half) never
 * borrows the configured password, nor the other way round: the unit is
 * unusable and the reason names the missing key, not a secret. */
static void test_unit_never_mixed(void **st)
{
  (void)st;
  struct conf *c = load(CONF);
  struct auth *a = auth_new();
  struct ctx *m1 = ctx_new(), *m2 = ctx_new(), *m3 = ctx_new();
  ctx_set(m1, "outbound_smtp_auth_user", "tenant"); /* no pass */
  ctx_set(m2, "outbound_smtp_auth_pass", "TENANTPASS"); /* no user */
  ctx_set(m3, "outbound_smtp_auth_type", "PLAIN"); /* type alone: config's unit */
  assert_int_equal(resolve(a, c, m1, NULL, "a.test"), AUTH_CRED_UNUSABLE);
  assert_non_null(strstr(auth_error(a), "outbound_smtp_auth_user but not outbound_smtp_auth_pass"));
  assert_null(auth_creds(a, AUTH_CRED_UNUSABLE));
  assert_int_equal(resolve(a, c, m2, "b", "x.test"), AUTH_CRED_UNUSABLE);
  assert_non_null(strstr(auth_error(a), "outbound_smtp_auth_pass but not outbound_smtp_auth_user"));
  assert_null(strstr(auth_error(a), "TENANTPASS"));
  uint64_t id = resolve(a, c, m3, NULL, "a.test");
  const struct smtpc_auth *cr = auth_creds(a, id);
  assert_non_null(cr);
  assert_string_equal(cr->user, "ua");
  assert_string_equal(cr->pass, "pa");
  assert_int_equal(cr->type, SMTPC_AUTH_PLAIN);
  /* the same rule for what a hook reads (luam.c) */
  const char *mess[AUTHKEY__COUNT] = {[AUTHKEY_PASS] = "p"};
  const char *cf[AUTHKEY__COUNT] = {[AUTHKEY_USER] = "cu", [AUTHKEY_PASS] = "cp",
                                    [AUTHKEY_TYPE] = "LOGIN"};
  assert_null(authkeys_pick(AUTHKEY_USER, mess, cf));
  assert_string_equal(authkeys_pick(AUTHKEY_TYPE, mess, cf), "LOGIN");
  mess[AUTHKEY_PASS] = "";
  assert_string_equal(authkeys_pick(AUTHKEY_USER, mess, cf), "cu");
  ctx_free(m1);
  ctx_free(m2);
  ctx_free(m3);
  auth_free(a);
  conf_unref(c);
}

/* Issue 18 item 11: an unknown mechanism from a message context is not
 * PLAIN: the unit is unusable, the reason names the value. */
static void test_unknown_mechanism(void **st)
{
  (void)st;
  struct conf *c = load(CONF);
  struct auth *a = auth_new();
  struct ctx *m = ctx_new();
  ctx_set(m, "outbound_smtp_auth_user", "tenant");
  ctx_set(m, "outbound_smtp_auth_pass", "tpw");
  ctx_set(m, "outbound_smtp_auth_type", "CRAM-MD5");
  assert_int_equal(resolve(a, c, m, NULL, "a.test"), AUTH_CRED_UNUSABLE);
  assert_non_null(strstr(auth_error(a), "\"CRAM-MD5\" is not a supported mechanism"));
  assert_null(strstr(auth_error(a), "tpw"));
  ctx_set(m, "outbound_smtp_auth_type", "login"); /* any case */
  assert_int_equal(auth_creds(a, resolve(a, c, m, NULL, "a.test"))->type, SMTPC_AUTH_LOGIN);
  ctx_free(m);
  auth_free(a);
  conf_unref(c);
}

/* Issue 18 item 10: "= false" switches AUTH off in a narrower scope (it
 * used to authenticate as the user "false", and Type = false was an
 * error); a message context still wins. */
static void test_false_is_off(void **st)
{
  (void)st;
  struct conf *c = load("Outbound_SMTP_AUTH_User = \"gu\"\n"
                        "Outbound_SMTP_AUTH_Pass = \"gp\"\n"
                        "Domain \"u.test\" { Outbound_SMTP_AUTH_User = false }\n"
                        "Domain \"t.test\" { Outbound_SMTP_AUTH_Type = FALSE }\n"
                        "Domain \"p.test\" { Outbound_SMTP_AUTH_Pass = false }\n"
                        "Domain \"k.test\" { Outbound_SMTP_AUTH_Key = false }\n");
  struct auth *a = auth_new();
  struct ctx *none = ctx_new(), *m = ctx_new();
  assert_non_null(auth_creds(a, resolve(a, c, none, NULL, "other.test")));
  assert_int_equal(resolve(a, c, none, NULL, "u.test"), 0);
  assert_int_equal(resolve(a, c, none, NULL, "t.test"), 0);
  assert_int_equal(resolve(a, c, none, NULL, "p.test"), 0);
  const struct smtpc_auth *cr = auth_creds(a, resolve(a, c, none, NULL, "k.test"));
  assert_string_equal(cr->user, "gu"); /* the key is not a credential */
  ctx_set(m, "outbound_smtp_auth_user", "tenant");
  ctx_set(m, "outbound_smtp_auth_pass", "tpw");
  cr = auth_creds(a, resolve(a, c, m, NULL, "u.test"));
  assert_non_null(cr);
  assert_string_equal(cr->user, "tenant");
  ctx_free(none);
  ctx_free(m);
  auth_free(a);
  conf_unref(c);
}

/* Issue 19 item 5: one table of mechanism names, in the order of the
 * option's words (conf_enum's index). */
static void test_mechanism_names(void **st)
{
  (void)st;
  static const char *const words[] = {"PLAIN", "LOGIN", "XOAUTH2"};
  for (size_t i = 0; i < sizeof words / sizeof *words; i++) {
    char text[80];
    snprintf(text, sizeof text, "Outbound_SMTP_AUTH_Type = %s\n", words[i]);
    struct conf *c = load(text);
    enum smtpc_auth_type t;
    assert_int_equal(authkeys_mech_parse(conf_str(conf_global(c), CONF_OUTBOUND_SMTP_AUTH_TYPE), &t), 0);
    assert_string_equal(authkeys_mech_name(t), words[i]);
    assert_int_equal(conf_enum(conf_global(c), CONF_OUTBOUND_SMTP_AUTH_TYPE), (int)i);
    assert_non_null(strstr(authkeys_mech_list(), words[i]));
    conf_unref(c);
  }
  enum smtpc_auth_type t;
  assert_int_equal(authkeys_mech_parse("CRAM-MD5", &t), -EINVAL);
  assert_int_equal(authkeys_mech_parse(NULL, &t), -EINVAL);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_config_scopes),
    cmocka_unit_test(test_context_wins),
    cmocka_unit_test(test_disabled),
    cmocka_unit_test(test_unit_never_mixed),
    cmocka_unit_test(test_unknown_mechanism),
    cmocka_unit_test(test_false_is_off),
    cmocka_unit_test(test_mechanism_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
