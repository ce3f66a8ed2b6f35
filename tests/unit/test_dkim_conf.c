/* Unit tests for dkim_conf: Momentum's opendkim configuration (the
 * documentation's example verbatim), fallback from dkim_domain to the
 * opendkim stanza, %{d}/%{s} key paths, base_domain, the responsible
 * domain (Sender: before From:), and errors naming file and line. Keys are
 * generated here with OpenSSL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "buf.h"
#include "conf.h"
#include "dkim_conf.h"

static char dir[] = "/tmp/test_dkim_conf.XXXXXX";

static void write_text(const char *name, const char *text)
{
  char p[512];
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void write_key(const char *rel, EVP_PKEY *k, mode_t mode)
{
  char p[512];
  snprintf(p, sizeof(p), "%s/%s", dir, rel);
  char *slash = strrchr(p, '/');
  *slash = 0;
  mkdir(p, 0700);
  *slash = '/';
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
  fclose(f);
  chmod(p, mode);
}

static struct conf *load(const char *name, const char *text, struct conf_error *err)
{
  write_text(name, text);
  char p[512];
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  return conf_load(p, err);
}

/* Load text and build its signers: NULL with err on failure. */
static struct dkim_signers *build(const char *text, struct conf_error *err)
{
  struct conf *c = load("t.conf", text, err);
  if (!c)
    return NULL;
  struct dkim_signers *s = dkim_signers_new(c, err);
  conf_unref(c);
  return s;
}

static EVP_PKEY *rsa, *ed;

/* The signature field h holds every tag of the NULL-terminated list. */
static void has_tags(const char *h, const char *const *tags)
{
  for (; *tags; tags++)
    if (!strstr(h, *tags))
      fail_msg("no %s in %s", *tags, h);
}

static int setup(void **state)
{
  (void)state;
  if (!mkdtemp(dir))
    return -1;
  rsa = EVP_RSA_gen(1024);
  ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  return rsa && ed ? 0 : -1;
}

static int teardown(void **state)
{
  (void)state;
  EVP_PKEY_free(rsa);
  EVP_PKEY_free(ed);
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* The example on Momentum's modules/opendkim page, as published. */
static const char momentum_example[] =
    "Binding_Group \"opendkim_signing\" {\n"
    "  opendkim_sign = \"true\"\n"
    "\n"
    "  binding \"foo\"{\n"
    "    domain \"test1.example.com\" { opendkim_sign = \"true\" }\n"
    "    domain \"test2.example.com\" { opendkim_sign = \"false\" }\n"
    "  }\n"
    "}\n"
    "\n"
    "opendkim \"opendkim1\" {\n"
    "  header_canon = \"relaxed\"\n"
    "  body_canon = \"relaxed\"\n"
    "  headerlist = (\"from\", \"to\", \"message-id\", \"date\", \"subject\", \"Content-Type\")\n"
    "  digest = \"rsa-sha256\"\n"
    "  key = \"/opt/msys/ecelerity/etc/conf/dkim/%{d}/%{s}.key\"\n"
    "  dkim_domain \"ectest.example.com\" {\n"
    "    selector = \"dkim-s1024\"\n"
    "  }\n"
    "}\n";

static const char msg[] = "From: Joe <joe@ECTest.example.com>\r\nTo: a@b.example\r\n"
                          "Subject: hi\r\nDate: Mon, 7 Dec 2026 21:00:00 +0000\r\n"
                          "Message-ID: <1@ectest.example.com>\r\n\r\nbody\r\n";

static void test_momentum_example(void **state)
{
  (void)state;
  struct conf_error err;
  struct conf *c = load("momentum.conf", momentum_example, &err);
  assert_non_null(c); /* the dialect takes it verbatim */
  struct buf out = {0};
  assert_int_equal(conf_eval(c, NULL, "foo", "test2.example.com", "opendkim_sign", 0, &out), 0);
  buf_append(&out, "", 1);
  assert_string_equal((char *)out.data, "false");
  out.len = 0;
  assert_int_equal(conf_eval(c, NULL, "foo", "test1.example.com", "opendkim_sign", 0, &out), 0);
  buf_append(&out, "", 1);
  assert_string_equal((char *)out.data, "true");
  buf_done(&out, 0);
  /* Its key is not on this machine: an error naming the file and line. */
  assert_null(dkim_signers_new(c, &err));
  assert_int_equal(err.line, 15);
  assert_non_null(strstr(err.file, "momentum.conf"));
  assert_non_null(strstr(err.msg, "/opt/msys/ecelerity/etc/conf/dkim/ectest.example.com/dkim-s1024.key"));
  assert_non_null(strstr(err.msg, "cannot open"));
  conf_unref(c);

  /* The same with the key where %{d}/%{s} say, in the test directory. */
  write_key("ectest.example.com/dkim-s1024.key", rsa, 0600);
  char text[4096], keyline[600];
  snprintf(keyline, sizeof(keyline), "  key = \"%s/%%{d}/%%{s}.key\"\n", dir);
  const char *k = strstr(momentum_example, "  key = ");
  const char *ke = strchr(k, '\n') + 1;
  snprintf(text, sizeof(text), "%.*s%s%s", (int)(k - momentum_example), momentum_example, keyline, ke);
  struct dkim_signers *s = build(text, &err);
  assert_non_null(s);
  assert_int_equal(dkim_signers_count(s), 1);
  struct buf sig = {0};
  char why[256];
  assert_int_equal(dkim_signers_sign(s, msg, strlen(msg), 1765000000, &sig, why, sizeof(why)), 1);
  buf_append(&sig, "", 1);
  has_tags((const char *)sig.data,
           (const char *const[]){"a=rsa-sha256;", "c=relaxed/relaxed;", "d=ectest.example.com;",
                                 "s=dkim-s1024;", "t=1765000000;",
                                 "h=from:to:message-id:date:subject;", NULL});
  /* Another responsible domain: not signed. */
  const char *other = "From: x@other.example\r\n\r\nb\r\n";
  sig.len = 0;
  assert_int_equal(dkim_signers_sign(s, other, strlen(other), 1, &sig, why, sizeof(why)), 0);
  assert_int_equal(sig.len, 0);
  buf_done(&sig, 0);
  dkim_signers_free(s);
}

static void test_fallback_and_base_domain(void **state)
{
  (void)state;
  write_key("example.com/ed.key", ed, 0600);
  write_key("shop.example/rsa.key", rsa, 0600);
  char text[2048];
  snprintf(text, sizeof(text),
           "opendkim \"o\" {\n"
           "  headerlist = ( from subject \"to,date\" )\n"
           "  oversign_headerlist = ( from )\n"
           "  key = \"%s/%%{d}/%%{s}.key\"\n"
           "  selector = \"rsa\"\n"
           "  lifetime = 2\n"
           "  dkim_domain \"corp.example.com\" {\n"
           "    base_domain = \"example.com\"\n"
           "    selector = \"ed\"\n"
           "    digest = \"ed25519-sha256\"\n"
           "    header_canon = relaxed\n"
           "  }\n"
           "  dkim_domain \"shop.example\" { body_length_limit = true }\n"
           "}\n",
           dir);
  struct conf_error err;
  struct dkim_signers *s = build(text, &err);
  if (!s)
    fail_msg("%s:%u: %s", err.file, err.line, err.msg);
  assert_int_equal(dkim_signers_count(s), 2);
  /* Sender: decides before From:. */
  const char *m = "From: a@shop.example\r\nSender: \"x, y\" <b@Corp.Example.com>\r\n"
                  "To: c@d.example\r\nSubject: s\r\n\r\nbody\r\n";
  struct buf sig = {0};
  char why[256];
  assert_int_equal(dkim_signers_sign(s, m, strlen(m), 1000, &sig, why, sizeof(why)), 1);
  buf_append(&sig, "", 1);
  has_tags((const char *)sig.data,
           (const char *const[]){"a=ed25519-sha256;", "c=relaxed/simple;", "d=example.com;",
                                 "s=ed;", "x=8200;", "h=from:subject:to:from;", NULL});
  /* From alone: shop.example with the stanza's RSA key and l=. */
  const char *m2 = "From: Shop <news@shop.example>\r\nSubject: s\r\n\r\nbody\r\n";
  sig.len = 0;
  assert_int_equal(dkim_signers_sign(s, m2, strlen(m2), 1000, &sig, why, sizeof(why)), 1);
  buf_append(&sig, "", 1);
  has_tags((const char *)sig.data,
           (const char *const[]){"a=rsa-sha256;", "d=shop.example;", "l=6;", NULL});
  buf_done(&sig, 0);

  /* Lua's request: override selector and digest, the key found by template. */
  struct dkim_sign_request rq = {.domain = "example.com", .selector = "ed",
                                 .digest = "ed25519-sha256", .headerlist = "from:subject",
                                 .identity = "@example.com", .body_length_limit = -1};
  sig = (struct buf){0};
  assert_int_equal(dkim_signers_sign_request(s, &rq, m2, strlen(m2), 5, &sig, why, sizeof(why)), 0);
  buf_append(&sig, "", 1);
  assert_non_null(strstr((char *)sig.data, "i=@example.com;"));
  assert_non_null(strstr((char *)sig.data, "h=from:subject:from;"));
  rq.digest = "rsa-sha1";
  sig.len = 0;
  assert_true(dkim_signers_sign_request(s, &rq, m2, strlen(m2), 5, &sig, why, sizeof(why)) < 0);
  assert_non_null(strstr(why, "RFC 8301"));
  buf_done(&sig, 0);
  dkim_signers_free(s);

  char dom[64];
  assert_int_equal(dkim_responsible_domain("From: (c@x) \"q@y\" <u@Z.example.>\r\n\r\n", 36, dom,
                                           sizeof(dom)), 0);
  assert_string_equal(dom, "z.example");
  assert_int_equal(dkim_responsible_domain("To: a@b\r\n\r\n", 11, dom, sizeof(dom)), -ENOENT);
}

static void expect_error(const char *text, unsigned line, const char *what)
{
  struct conf_error err = {0};
  struct dkim_signers *s = build(text, &err);
  if (s) {
    dkim_signers_free(s);
    fail_msg("loaded, expected an error at line %u: %s", line, what);
  }
  if (err.line != line || !strstr(err.msg, what))
    fail_msg("got %s:%u: %s; want line %u: %s", err.file, err.line, err.msg, line, what);
}

static void test_errors(void **state)
{
  (void)state;
  char text[2048];
  write_key("ok.example/s.key", rsa, 0600);
  write_key("loose.example/s.key", rsa, 0644);
  write_text("ok.example/bad.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  char p[512];
  snprintf(p, sizeof(p), "%s/ok.example/bad.key", dir);
  chmod(p, 0600);
  /* One opendkim stanza: line 3 the key, line 4 the option, line 5 the
   * dkim_domain. */
  static const struct {
    const char *opt, *domain, *selector;
    unsigned line;
    const char *what;
  } cases[] = {
      {"digest = rsa-sha1", "ok.example", "s", 4, "rsa-sha1 must not be used for signing"},
      {"", "missing.example", "s", 3, "cannot open"},
      {"", "loose.example", "s", 3, "readable by group or others"},
      {"", "ok.example", "bad", 3, "malformed"},
      {"digest = ed25519-sha256", "ok.example", "s", 3, "is an RSA key but digest is ed25519-sha256"},
      {"copy_headers = true", "ok.example", "s", 4, "not implemented by Impetus"},
      {"sign_condition = auth_user", "ok.example", "s", 4, "not implemented by Impetus"},
      {"header_canon = nofws", "ok.example", "s", 4, "header_canon"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    snprintf(text, sizeof(text),
             "opendkim {\n  headerlist = ( from )\n  key = \"%s/%%{d}/%%{s}.key\"\n  %s\n"
             "  dkim_domain \"%s\" { selector = \"%s\" }\n}\n",
             dir, cases[i].opt, cases[i].domain, cases[i].selector);
    expect_error(text, cases[i].line, cases[i].what);
  }
  snprintf(text, sizeof(text),
           "opendkim {\n  key = \"%s/%%{d}/%%{s}.key\"\n  dkim_domain \"ok.example\" {\n"
           "    selector = s\n  }\n}\n",
           dir);
  expect_error(text, 3, "no headerlist");
  snprintf(text, sizeof(text),
           "opendkim {\n  headerlist = ( to subject )\n  key = \"%s/%%{d}/%%{s}.key\"\n"
           "  dkim_domain \"ok.example\" { selector = s }\n}\n",
           dir);
  expect_error(text, 2, "must include From");
  snprintf(text, sizeof(text),
           "opendkim {\n  headerlist = ( from )\n  key = \"%s/%%{x}.key\"\n"
           "  dkim_domain \"ok.example\" { selector = s }\n}\n",
           dir);
  expect_error(text, 3, "only %{d} and %{s}");
  snprintf(text, sizeof(text), "opendkim {\n  base_domain = x.example\n}\n");
  expect_error(text, 2, "base_domain");
  /* No opendkim stanza: an empty set. */
  struct conf_error err;
  struct dkim_signers *s = build("Max_Outbound_Connections = 3\n", &err);
  assert_non_null(s);
  assert_int_equal(dkim_signers_count(s), 0);
  dkim_signers_free(s);
}

/* Many dkim_domain stanzas, out of order, one domain named twice: each
 * message is signed by its own stanza, the first of the two wins. */
static void test_many_domains(void **state)
{
  (void)state;
  write_key("many/s.key", rsa, 0600);
  struct buf text = {0};
  buf_append_str(&text, "opendkim {\n  headerlist = ( from )\n");
  char line[700];
  for (int i = 0; i < 300; i++) {
    int d = (i * 7919) % 300; /* every number once, not in order */
    snprintf(line, sizeof(line), "  dkim_domain \"D%03d.example\" { selector = \"s%d\" key = \"%s/many/s.key\" }\n",
             d, d, dir);
    buf_append_str(&text, line);
  }
  snprintf(line, sizeof(line), "  dkim_domain \"d042.example\" { selector = \"late\" key = \"%s/many/s.key\" }\n}\n", dir);
  buf_append_str(&text, line);
  buf_append(&text, "", 1);
  struct conf_error err;
  struct dkim_signers *s = build((const char *)text.data, &err);
  if (!s)
    fail_msg("%s:%u: %s", err.file, err.line, err.msg);
  assert_int_equal(dkim_signers_count(s), 300);
  struct buf sig = {0};
  char why[256], m[128], want[64];
  for (int d = 0; d < 300; d++) {
    snprintf(m, sizeof(m), "From: x@d%03d.EXAMPLE\r\n\r\nbody\r\n", d);
    sig.len = 0;
    assert_int_equal(dkim_signers_sign(s, m, strlen(m), 1, &sig, why, sizeof(why)), 1);
    buf_append(&sig, "", 1);
    snprintf(want, sizeof(want), "d=d%03d.example; s=s%d;", d, d);
    if (!strstr((const char *)sig.data, want))
      fail_msg("no %s in %s", want, (const char *)sig.data);
  }
  const char *none = "From: x@d300.example\r\n\r\nbody\r\n";
  sig.len = 0;
  assert_int_equal(dkim_signers_sign(s, none, strlen(none), 1, &sig, why, sizeof(why)), 0);
  buf_done(&sig, 0);
  buf_done(&text, 0);
  dkim_signers_free(s);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_momentum_example),
      cmocka_unit_test(test_fallback_and_base_domain),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_many_domains),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
