/* Unit tests for conf: the dialect, the fallback chain, every error
 * path with its exact file:line message, includes, merging, case rules,
 * typed values, stanzas, eval, restart diff, concurrent view builds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "conf.h"
#include "impetus_tree.h"

#define FIXTURES IMPETUS_SOURCE_ROOT "/tests/unit/conf/"

static struct conf *load_fixture(const char *name)
{
  struct conf_error err;
  struct conf *c = conf_load(name, &err);
  if (!c) {
    char t[6000];
    fail_msg("%s", conf_error_str(&err, t, sizeof(t)));
  }
  return c;
}

static struct conf *parse(const char *text)
{
  struct conf_error err;
  struct conf *c = conf_parse_buffer(text, strlen(text), "t.conf", NULL, CONF_PARSE_NO_INCLUDE, &err);
  if (!c) {
    char t[6000];
    fail_msg("%s", conf_error_str(&err, t, sizeof(t)));
  }
  return c;
}

/* Parse text that must fail; compare the full "file:line: message". */
static void expect_error(const char *text, const char *want)
{
  struct conf_error err;
  struct conf *c = conf_parse_buffer(text, strlen(text), "t.conf", NULL, CONF_PARSE_NO_INCLUDE, &err);
  assert_null(c);
  char t[6000];
  assert_string_equal(conf_error_str(&err, t, sizeof(t)), want);
}

static char *eval(struct conf *c, const char *g, const char *b, const char *d, const char *opt)
{
  static char out[1024];
  struct buf bf = {0};
  int r = conf_eval(c, g, b, d, opt, 0, &bf);
  snprintf(out, sizeof(out), "%s%.*s", r < 0 ? "ERR " : "", (int)buf_avail(&bf), (const char *)buf_head(&bf));
  buf_done(&bf, 0);
  return out;
}

/* ---- the seed (issue 2) ---- */

static void test_seed(void **state)
{
  (void)state;
  struct conf *c = load_fixture(FIXTURES "seed.conf");
  const struct conf_view *v = conf_view_get(c, NULL, "sparkpost.com");
  assert_non_null(v);
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER), "sparkpost");
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_PASS), "sparkpost");
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_TYPE), "PLAIN");
  assert_int_equal(conf_enum(v, CONF_OUTBOUND_SMTP_AUTH_TYPE), 0);
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_KEY), "someotherstring");
  v = conf_view_get(c, NULL, "MessageSystems.COM");
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER), "msys");
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_TYPE), "LOGIN");
  assert_int_equal(conf_enum(v, CONF_OUTBOUND_SMTP_AUTH_TYPE), 1);
  v = conf_view_get(c, NULL, "example.org");
  assert_null(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER));
  assert_int_equal(conf_enum(v, CONF_OUTBOUND_SMTP_AUTH_TYPE), -1);
  assert_true(conf_bool(conf_global(c), CONF_KEEP_MESSAGE_DICTS_IN_MEMORY));
  assert_true(conf_module_enabled(c, "outbound_smtp_auth"));
  assert_true(conf_module_enabled(c, "Outbound_SMTP_Auth"));
  assert_false(conf_module_enabled(c, "ec_logger"));
  assert_string_equal(eval(c, NULL, NULL, "sparkpost.com", "outbound_smtp_auth_user"), "sparkpost");
  assert_string_equal(eval(c, NULL, NULL, "sparkpost.com", "outbound_smtp_auth_pass"), "********");
  assert_string_equal(eval(c, NULL, NULL, NULL, "outbound_smtp_auth_user"), "false");
  conf_unref(c);
}

static void test_module_enabled_by_option(void **state)
{
  (void)state;
  struct conf *c = parse("Binding \"b\" { Outbound_SMTP_AUTH_User = \"u\" }\n");
  assert_true(conf_module_enabled(c, "outbound_smtp_auth"));
  conf_unref(c);
  c = parse("outbound_smtp_auth { enabled = false }\n");
  assert_false(conf_module_enabled(c, "outbound_smtp_auth"));
  conf_unref(c);
  c = parse("TLS = no\n");
  assert_false(conf_module_enabled(c, "outbound_smtp_auth"));
  conf_unref(c);
}

/* ---- fallback (Momentum's documented examples) ---- */

static int64_t expiry(struct conf *c, const char *b, const char *d)
{
  const struct conf_view *v = conf_view_get(c, b, d);
  assert_non_null(v);
  return conf_interval(v, CONF_MESSAGE_EXPIRATION);
}

static void test_fallback_documented(void **state)
{
  (void)state;
  struct conf *c = load_fixture(FIXTURES "fallback.conf");
  assert_int_equal(expiry(c, "example", "example.com"), 3600);
  assert_int_equal(expiry(c, "example", "other.org"), 3600);
  assert_int_equal(expiry(c, "example2", "example.com"), 86400);
  assert_int_equal(expiry(c, "example2", "other.org"), 7200);
  assert_int_equal(expiry(c, "example3", "anotherexample.com"), 86400);
  assert_int_equal(expiry(c, "example3", "example.com"), 120);
  assert_int_equal(expiry(c, "example3", "other.org"), 86400);
  /* the default binding sees the global domain stanza */
  assert_int_equal(expiry(c, NULL, "example.com"), 120);
  assert_int_equal(expiry(c, "default", "other.org"), 86400);
  assert_null(conf_view_get(c, "nosuch", "example.com"));
  assert_string_equal(eval(c, NULL, "example3", "example.com", "Message_Expiration"), "120");
  conf_unref(c);
}

static void test_fallback_group(void **state)
{
  (void)state;
  struct conf *c = load_fixture(FIXTURES "group.conf");
  const struct conf_view *v = conf_view_get(c, "example", "example.com");
  assert_int_equal(conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS), 15);
  assert_int_equal(conf_int(conf_view_get(c, "other", "example.com"), CONF_MAX_OUTBOUND_CONNECTIONS), 5);
  assert_int_equal(conf_int(conf_view_get(c, "outside", "example.com"), CONF_MAX_OUTBOUND_CONNECTIONS), 30);
  assert_string_equal(conf_binding_group(c, conf_binding_id(c, "example")), "group1");
  assert_null(conf_binding_group(c, conf_binding_id(c, "outside")));
  assert_string_equal(eval(c, "group1", "example", "example.com", "max_outbound_connections"), "15");
  assert_string_equal(eval(c, "group1", NULL, "example.com", "max_outbound_connections"), "5");
  assert_string_equal(eval(c, "group1", "outside", NULL, "max_outbound_connections"),
                      "ERR binding \"outside\" is not in binding_group \"group1\"");
  assert_string_equal(eval(c, NULL, NULL, NULL, "no_such_option"), "ERR unknown option 'no_such_option'");
  conf_unref(c);
  c = load_fixture(FIXTURES "group_removed.conf");
  assert_int_equal(conf_int(conf_view_get(c, "example", "example.com"), CONF_MAX_OUTBOUND_CONNECTIONS), 5);
  assert_int_equal(conf_int(conf_view_get(c, "outside", "example.com"), CONF_MAX_OUTBOUND_CONNECTIONS), 30);
  conf_unref(c);
}

/* Each of the eight levels wins over the ones after it. */
static void test_fallback_order(void **state)
{
  (void)state;
  static const char *const levels[] = {
    "binding_group \"g\" { binding \"b\" { domain \"d.com\" { Retry_Interval = 1 } } }\n",
    "binding \"b\" { domain \"d.com\" { Retry_Interval = 2 } }\n",
    "binding_group \"g\" { domain \"d.com\" { Retry_Interval = 3 } }\n",
    "binding_group \"g\" { binding \"b\" { Retry_Interval = 4 } }\n",
    "binding \"b\" { Retry_Interval = 5 }\n",
    "binding_group \"g\" { Retry_Interval = 6 }\n",
    "domain \"d.com\" { Retry_Interval = 7 }\n",
    "Retry_Interval = 8\n",
  };
  for (size_t first = 0; first <= (sizeof(levels) / sizeof(levels[0])); first++) {
    char text[4096] = "binding_group \"g\" { binding \"b\" { } }\n";
    for (size_t i = (sizeof(levels) / sizeof(levels[0])); i-- > first;) /* least specific first in the file */
      strcat(text, levels[i]);
    struct conf *c = parse(text);
    int64_t want = first < (sizeof(levels) / sizeof(levels[0])) ? (int64_t)first + 1 : 1200;
    assert_int_equal(conf_interval(conf_view_get(c, "b", "D.com"), CONF_RETRY_INTERVAL), want);
    conf_unref(c);
  }
}

/* ---- error paths: exact file:line messages ---- */

static void test_errors_options(void **state)
{
  (void)state;
  expect_error("TLS = no\nFoo_Bar = 1\n", "t.conf:2: unknown option 'Foo_Bar'");
  expect_error("Domain \"x.com\" {\n  Spoolbase = \"/a\"\n}\n",
               "t.conf:2: option 'Spoolbase' is not valid in domain scope (valid in: global)");
  expect_error("binding \"b\" {\n\n  Routes = ( a )\n  Bind_Address = 1.2.3.4\n  domain \"d\" { bind_address = 1.2.3.5 }\n}\n",
               "t.conf:5: option 'Bind_Address' is not valid in domain scope (valid in: global, "
               "binding_group, binding)");
  expect_error("Suspend_Delivery = maybe\n",
               "t.conf:1: option 'Suspend_Delivery': 'maybe' is not a boolean (use true/false, "
               "yes/no, on/off, enabled/disabled, 1/0)");
  expect_error("Max_Outbound_Connections = lots\n",
               "t.conf:1: option 'Max_Outbound_Connections': 'lots' is not a non-negative integer");
  expect_error("Max_Retries = sometimes\n",
               "t.conf:1: option 'Max_Retries': 'sometimes' is not a non-negative integer or one of: auto, none");
  expect_error("Retry_Interval = 5x\n",
               "t.conf:1: option 'Retry_Interval': '5x' is not an interval (seconds, or a number "
               "followed by s, m, h, d or w)");
  expect_error("Max_Message_Size = 10Q\n",
               "t.conf:1: option 'Max_Message_Size': '10Q' is not a size (bytes, or a number followed by K, M or G)");
  expect_error("TLS = maybe\n", "t.conf:1: option 'TLS': 'maybe' is not one of: no, ifavailable, required");
  expect_error("Outbound_Throttle_Messages = \"10/0\"\n",
               "t.conf:1: option 'Outbound_Throttle_Messages': '10/0' is not a throttle (\"N\" per "
               "second or \"N/S\" per S seconds)");
  expect_error("Gateway = \"host:99999\"\n",
               "t.conf:1: option 'Gateway': 'host:99999' is not an address (host, host:port, or [IPv6]:port)");
  expect_error("TLS = ( no )\n", "t.conf:1: option 'TLS': expects a single word, not a list");
  expect_error("Routes = [ a = b ]\n",
               "t.conf:1: option 'Routes': expects a list ( \"a\" \"b\" ), not a dictionary");
  expect_error("Spoolbase \"/x\"\n", "t.conf:1: missing '=' between 'Spoolbase' and its value");
  expect_error("TLS =\n", "t.conf:1: option 'TLS': expected a value after '=', found end of file");
  expect_error("mainlog = \"/x\"\n", "t.conf:1: option 'mainlog' is only valid inside ec_logger { }");
  expect_error("ec_logger { bouncelog = \"/x\" }\n",
               "t.conf:1: option 'bouncelog' is only valid inside bounce_logger { }");
  expect_error("ec_logger { frobnicate = 1 }\n", "t.conf:1: unknown option 'frobnicate' in ec_logger stanza");
  expect_error("\"quoted\" = 1\n", "t.conf:1: expected an option or stanza name, found \"quoted\"");
}

static void test_errors_syntax(void **state)
{
  (void)state;
  expect_error("TLS = no\nEHLO_Hostname = \"abc\n", "t.conf:2: unterminated string: missing closing \"");
  expect_error("EHLO_Hostname = 'abc\n", "t.conf:1: unterminated string: missing closing '");
  expect_error("Binding \"b\" {\n  TLS = no\n", "t.conf:1: Binding \"b\" { is never closed: missing '}'");
  expect_error("Binding_Group \"g\" {\n Binding \"b\" {\n  Domain \"d\" {\n  }\n}\n",
               "t.conf:1: Binding_Group \"g\" { is never closed: missing '}'");
  expect_error("TLS = no\n}\n", "t.conf:2: unexpected '}': no stanza is open");
  expect_error("/* open\n\ncomment\n", "t.conf:1: unterminated comment: '/*' without '*/'");
  expect_error("Routes = ( a\n b\n", "t.conf:1: option 'Routes': unterminated list: missing ')'");
  expect_error("Routes = ( a { )\n",
               "t.conf:1: option 'Routes': unexpected '{' in a list (write elements separated by spaces)");
  expect_error("Domain \"d\" Spoolbase = 1\n", "t.conf:1: expected '{' after Domain \"d\", found 'Spoolbase'");
  expect_error("TLS = no\nTLS no\n", "t.conf:2: missing '=' between 'TLS' and its value");
  expect_error("TLS\n", "t.conf:1: expected '=' or '{' after 'TLS', found end of file");
  expect_error("Frob { }\n", "t.conf:1: unknown stanza 'Frob'");
  expect_error("include \"x.conf\"\n", "t.conf:1: include is not allowed in this configuration");
  /* limits */
  char *big = malloc(CONF_MAX_LINE + 64);
  strcpy(big, "TLS = no\nEHLO_Hostname = \"");
  size_t n = strlen(big);
  memset(big + n, 'a', CONF_MAX_LINE);
  strcpy(big + n + CONF_MAX_LINE, "\"\n");
  char want[64];
  snprintf(want, sizeof(want), "t.conf:2: line longer than %d bytes", CONF_MAX_LINE);
  expect_error(big, want);
  free(big);
  struct conf_error err;
  assert_null(conf_parse_buffer("TLS = no\nA\0B", 12, "t.conf", NULL, 0, &err));
  assert_string_equal(err.msg, "NUL byte in configuration text");
  assert_int_equal(err.line, 2);
}

static void test_errors_nesting(void **state)
{
  (void)state;
  expect_error("Binding \"b\" {\n  Binding_Group \"g\" { }\n}\n",
               "t.conf:2: Binding_Group is only valid at the top level, not inside binding");
  expect_error("Domain \"d\" {\n  Binding \"b\" { }\n}\n",
               "t.conf:2: Binding is not valid inside domain (only at the top level or in a Binding_Group)");
  expect_error("Domain \"d\" { Domain \"e\" { } }\n", "t.conf:1: Domain stanzas cannot be nested in a Domain stanza");
  expect_error("Binding \"b\" { ec_logger { } }\n", "t.conf:1: ec_logger stanza is only valid at the top level");
  expect_error("script \"x\" { }\n", "t.conf:1: script stanza is only valid inside scriptlet { }");
  expect_error("Datasource { }\n", "t.conf:1: datasource stanza needs a name: datasource \"name\" { ... }");
  expect_error("outbound_smtp_auth \"x\" { }\n",
               "t.conf:1: outbound_smtp_auth stanza takes no name: outbound_smtp_auth { ... }");
  expect_error("Binding \"a b\" { }\n", "t.conf:1: Binding needs a name without spaces or colons: Binding \"name\" { ... }");
  expect_error("Binding \"a:b\" { }\n", "t.conf:1: Binding needs a name without spaces or colons: Binding \"name\" { ... }");
  expect_error("Binding_Group \"a b\" { }\n",
               "t.conf:1: Binding_Group needs a name without spaces: Binding_Group \"name\" { ... }");
  expect_error("Domain \"/example\\\\.com$/\" { }\n",
               "t.conf:1: regular-expression Domain stanzas (Domain \"/example\\.com$/\") are not "
               "supported; name each domain in its own stanza");
  expect_error("Binding_Group \"g1\" { Binding \"b\" { } }\nBinding_Group \"g2\" {\n Binding \"b\" { }\n}\n",
               "t.conf:3: Binding \"b\" is already in Binding_Group \"g1\" (t.conf:1)");
}

/* ---- includes (real files in a temporary directory) ---- */

static char tmpdir[PATH_MAX];

static void write_file(const char *rel, const char *text)
{
  char p[PATH_MAX + 64];
  snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup_tmp(void **state)
{
  (void)state;
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/impetus-test-conf-XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
  (void)state;
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static void load_error(const char *rel, const char *want_fmt)
{
  char p[PATH_MAX + 64], want[8192], got[8192];
  snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
  struct conf_error err;
  struct conf *c = conf_load(p, &err);
  assert_null(c);
  /* want_fmt uses %s for the temporary directory */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
  snprintf(want, sizeof(want), want_fmt, tmpdir, tmpdir, tmpdir);
#pragma GCC diagnostic pop
  assert_string_equal(conf_error_str(&err, got, sizeof(got)), want);
}

static struct conf *load_tmp(const char *rel)
{
  char p[PATH_MAX + 64];
  snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
  return load_fixture(p);
}

static void test_include_errors(void **state)
{
  (void)state;
  write_file("missing.conf", "TLS = no\ninclude \"nope.conf\"\n");
  load_error("missing.conf", "%s/missing.conf:2: include \"%s/nope.conf\": No such file or directory");
  write_file("a.conf", "TLS = no\ninclude \"b.conf\"\n");
  write_file("b.conf", "\n\ninclude \"a.conf\"\n");
  load_error("a.conf", "%s/b.conf:3: include loop: \"%s/a.conf\" is already being read");
  write_file("self.conf", "include \"self.conf\"\n");
  load_error("self.conf", "%s/self.conf:1: include loop: \"%s/self.conf\" is already being read");
  write_file("inner_err.conf", "Domain \"d\" {\n  include \"bad.inc\"\n}\n");
  write_file("bad.inc", "TLS = no\nSpoolbase = \"/x\"\n");
  load_error("inner_err.conf", "%s/bad.inc:2: option 'Spoolbase' is not valid in domain scope (valid in: global)");
  write_file("closer.conf", "Domain \"d\" {\n  include \"closer.inc\"\n}\n");
  write_file("closer.inc", "TLS = no\n}\n");
  load_error("closer.conf", "%s/closer.inc:2: unexpected '}': no stanza is open");
  for (int i = 0; i < CONF_MAX_INCLUDE_DEPTH + 2; i++) { /* a chain deeper than the limit */
    char name[32], text[64];
    snprintf(name, sizeof(name), "chain%d.conf", i);
    snprintf(text, sizeof(text), "TLS = no\ninclude \"chain%d.conf\"\n", i + 1);
    write_file(name, text);
  }
  char lim[64];
  snprintf(lim, sizeof(lim), "%%s/chain%d.conf:2: includes nested deeper than %d", CONF_MAX_INCLUDE_DEPTH,
           CONF_MAX_INCLUDE_DEPTH);
  load_error("chain0.conf", lim);
  char p[PATH_MAX + 64];
  snprintf(p, sizeof(p), "%s/none.conf", tmpdir);
  struct conf_error err;
  assert_null(conf_load(p, &err));
  char got[8192], want[8192];
  snprintf(want, sizeof(want), "%s: cannot read configuration: No such file or directory", p);
  assert_string_equal(conf_error_str(&err, got, sizeof(got)), want);
}

static void test_include_directory(void **state)
{
  (void)state;
  char p[PATH_MAX + 64];
  snprintf(p, sizeof(p), "%s/conf.d", tmpdir);
  assert_int_equal(mkdir(p, 0700), 0);
  snprintf(p, sizeof(p), "%s/conf.d/sub", tmpdir);
  assert_int_equal(mkdir(p, 0700), 0);
  write_file("conf.d/20-b.conf", "Max_Outbound_Connections = 2\nDomain \"x.com\" { TLS = required }\n");
  write_file("conf.d/10-a.conf", "Max_Outbound_Connections = 1\nRetry_Interval = 7\n");
  write_file("conf.d/.hidden.conf", "this is not configuration\n");
  write_file("conf.d/sub/bad.conf", "neither is this\n");
  write_file("main.conf", "Retry_Interval = 3\ninclude \"conf.d\"\nDomain \"x.com\" { include \"conf.d/10-a.conf\" }\n");
  struct conf *c = load_tmp("main.conf");
  const struct conf_view *g = conf_global(c);
  assert_int_equal(conf_int(g, CONF_MAX_OUTBOUND_CONNECTIONS), 2); /* lexical order: 20 after 10 */
  assert_int_equal(conf_interval(g, CONF_RETRY_INTERVAL), 7);
  const struct conf_view *v = conf_view_get(c, NULL, "x.com");
  assert_string_equal(conf_str(v, CONF_TLS), "required");
  assert_int_equal(conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS), 1); /* the file included in the domain */
  unsigned line;
  const char *file = conf_origin(v, CONF_TLS, &line);
  char want[PATH_MAX + 64];
  snprintf(want, sizeof(want), "%s/conf.d/20-b.conf", tmpdir);
  assert_string_equal(file, want);
  assert_int_equal(line, 2);
  conf_unref(c);
}

/* Relative paths resolve against the directory of the file that set them. */
static void test_include_relative_paths(void **state)
{
  (void)state;
  char p[PATH_MAX + 64];
  snprintf(p, sizeof(p), "%s/sub", tmpdir);
  assert_int_equal(mkdir(p, 0700), 0);
  write_file("sub/paths.inc", "Pickup_Directory = \"drop\"\nTLS_Ca = \"/etc/ca.pem\"\n");
  write_file("top.conf", "Spoolbase = \"spool\"\ninclude \"sub/paths.inc\"\n");
  struct conf *c = load_tmp("top.conf");
  char real[PATH_MAX], want[PATH_MAX + 64];
  assert_non_null(realpath(tmpdir, real));
  snprintf(want, sizeof(want), "%s/spool", real);
  assert_string_equal(conf_str(conf_global(c), CONF_SPOOLBASE), want);
  snprintf(want, sizeof(want), "%s/sub/drop", real);
  assert_string_equal(conf_str(conf_global(c), CONF_PICKUP_DIRECTORY), want);
  assert_string_equal(conf_str(conf_global(c), CONF_TLS_CA), "/etc/ca.pem");
  conf_unref(c);
}

/* Many stanzas load (hashed look-ups, no quadratic walk). */
static void test_many_stanzas(void **state)
{
  (void)state;
  struct buf b = {0};
  for (int i = 0; i < 20000; i++)
    buf_printf(&b, "Domain \"d%d.com\" { Retry_Interval = %d }\nDatasource \"ds%d\" { cache_size = %d }\n", i,
               i + 1, i, i);
  for (int i = 0; i < 2000; i++)
    buf_printf(&b, "Binding \"b%d\" { Domain \"d%d.com\" { TLS = no } }\n", i, i);
  struct conf_error err;
  struct conf *c = conf_parse_buffer((const char *)buf_head(&b), buf_avail(&b), "many.conf", NULL, 0, &err);
  buf_done(&b, 0);
  assert_non_null(c);
  assert_int_equal(conf_interval(conf_view_get(c, "b1999", "d19999.com"), CONF_RETRY_INTERVAL), 20000);
  assert_string_equal(conf_str(conf_view_get(c, "b1999", "d1999.com"), CONF_TLS), "no");
  size_t n = 0;
  for (const struct conf_stanza *st = conf_stanza_first(c, "datasource"); st; st = conf_stanza_next(st))
    n++;
  assert_int_equal(n, 20000);
  conf_unref(c);
}

/* ---- merging and case ---- */

static void test_merge_repeated_scopes(void **state)
{
  (void)state;
  struct conf *c = parse("Domain \"x.com\" { TLS = required }\n"
                         "Binding_Group \"g\" { Binding \"b1\" { } }\n"
                         "DOMAIN \"X.Com\" { Retry_Interval = 60 TLS = no }\n"
                         "binding_group \"g\" { binding \"b2\" { } Max_Outbound_Connections = 3 }\n"
                         "Binding \"b1\" { Idle_Timeout = 9 }\n"
                         "ec_logger { mainlog = \"/a\" }\n"
                         "ec_logger \"ec_logger\" { paniclog = \"/b\" }\n");
  const struct conf_view *v = conf_view_get(c, "b1", "x.com");
  assert_string_equal(conf_str(v, CONF_TLS), "no"); /* later assignment wins */
  assert_int_equal(conf_interval(v, CONF_RETRY_INTERVAL), 60);
  assert_int_equal(conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS), 3);
  assert_int_equal(conf_interval(v, CONF_IDLE_TIMEOUT), 9);
  assert_string_equal(conf_binding_group(c, conf_binding_id(c, "b2")), "g");
  assert_int_equal(conf_binding_count(c), 3); /* default, b1, b2 */
  assert_int_equal(conf_group_count(c), 1);
  const struct conf_stanza *st = conf_stanza_first(c, "ec_logger");
  assert_non_null(st);
  assert_null(conf_stanza_next(st));
  assert_string_equal(conf_stanza_instance(st), "ec_logger");
  assert_string_equal(conf_str(conf_stanza_view(st), CONF_EC_LOGGER_MAINLOG), "/a");
  assert_string_equal(conf_str(conf_stanza_view(st), CONF_EC_LOGGER_PANICLOG), "/b");
  conf_unref(c);
}

static void test_case_rules(void **state)
{
  (void)state;
  struct conf *c = parse("BINDING_GROUP \"G\" { BiNdInG \"Mixed\" { MAX_outbound_CONNECTIONS = 7 } }\n"
                         "binding \"mixed\" { max_outbound_connections = 8 }\n"
                         "domain \"Example.COM\" { tls = REQUIRED }\n");
  assert_int_equal(conf_int(conf_view_get(c, "Mixed", NULL), CONF_MAX_OUTBOUND_CONNECTIONS), 7);
  assert_int_equal(conf_int(conf_view_get(c, "mixed", NULL), CONF_MAX_OUTBOUND_CONNECTIONS), 8);
  assert_null(conf_view_get(c, "MIXED", NULL)); /* binding names are case-sensitive */
  assert_string_equal(conf_binding_group(c, conf_binding_id(c, "Mixed")), "G");
  assert_string_equal(eval(c, "g", NULL, NULL, "tls"), "ERR no binding_group \"g\"");
  assert_string_equal(conf_str(conf_view_get(c, NULL, "EXAMPLE.com"), CONF_TLS), "required");
  assert_string_equal(conf_scope_name(c, conf_scope(conf_view_get(c, NULL, "example.com"), CONF_TLS)),
                      "domain \"example.com\"");
  assert_int_equal(conf_opt_find("max_OUTBOUND_connections"), CONF_MAX_OUTBOUND_CONNECTIONS);
  assert_int_equal(conf_opt_find("mainlog"), -ENOENT); /* module options are not scope options */
  conf_unref(c);
}

static void test_booleans(void **state)
{
  (void)state;
  static const char *const yes[] = {"true", "yes", "on", "enabled", "1", "TRUE", "\"Yes\""};
  static const char *const no[] = {"false", "no", "off", "disabled", "0", "Off", "\"FALSE\""};
  struct conf *bom = parse("\xEF\xBB\xBFTLS = no\r\nSuspend_Delivery = on\r\n"); /* BOM, CRLF */
  assert_true(conf_bool(conf_global(bom), CONF_SUSPEND_DELIVERY));
  conf_unref(bom);
  for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
    char t[128];
    snprintf(t, sizeof(t), "Suspend_Delivery = %s\nGenerate_Bounces = %s\n", yes[i], no[i]);
    struct conf *c = parse(t);
    assert_true(conf_bool(conf_global(c), CONF_SUSPEND_DELIVERY));
    assert_false(conf_bool(conf_global(c), CONF_GENERATE_BOUNCES));
    conf_unref(c);
  }
}

/* ---- typed values ---- */

static void test_values(void **state)
{
  (void)state;
  struct conf *c = parse("Retry_Interval = 30s\nMax_Retry_Interval = 5m\nMessage_Expiration = 2d\n"
                         "Idle_Timeout = 1h\nConnect_Timeout = 45\n"
                         "Max_Message_Size = 10M\nMax_Retries = none\n"
                         "Gateway = \"[::1]:2525\"\nResolver = 127.0.0.1:5353\nMetrics_Listener = \"localhost\"\n"
                         "Routes = ( \"smtp://a:25?pref=10\" b \"__mx__\" )\n"
                         "Outbound_Throttle_Connections = \"5\"\n"
                         "Control_Listener { Listen \"/tmp/s\" { file_mode = 0660 } }\n"
                         "Datasource \"creds\" { uri = ( \"sqlite:/tmp/x.db\" ) cache_life = 300 }\n"
                         "scriptlet \"scriptlet\" { script \"boot\" { source = \"msys.boot\" } script \"policy\" { source = \"lua/policy\" } }\n"
                         "TLS_Ciphers = \"a \\\"quoted\\\" \\\\ name\"\n");
  const struct conf_view *g = conf_global(c);
  assert_int_equal(conf_interval(g, CONF_RETRY_INTERVAL), 30);
  assert_int_equal(conf_interval(g, CONF_MAX_RETRY_INTERVAL), 300);
  assert_int_equal(conf_interval(g, CONF_MESSAGE_EXPIRATION), 172800);
  assert_int_equal(conf_interval(g, CONF_IDLE_TIMEOUT), 3600);
  assert_int_equal(conf_interval(g, CONF_CONNECT_TIMEOUT), 45);
  assert_int_equal(conf_size(g, CONF_MAX_MESSAGE_SIZE), 10u << 20);
  assert_int_equal(conf_int(g, CONF_MAX_RETRIES), -2);
  struct conf_addr a = conf_addr(g, CONF_GATEWAY);
  assert_string_equal(a.host, "::1");
  assert_int_equal(a.port, 2525);
  a = conf_addr(g, CONF_RESOLVER);
  assert_string_equal(a.host, "127.0.0.1");
  assert_int_equal(a.port, 5353);
  a = conf_addr(g, CONF_METRICS_LISTENER);
  assert_string_equal(a.host, "localhost");
  assert_int_equal(a.port, 0);
  a = conf_addr(g, CONF_BIND_ADDRESS);
  assert_string_equal(a.host, "*");
  size_t n;
  const char *const *l = conf_list(g, CONF_ROUTES, &n);
  assert_int_equal(n, 3);
  assert_string_equal(l[0], "smtp://a:25?pref=10");
  assert_string_equal(l[1], "b");
  assert_string_equal(l[2], "__mx__");
  assert_string_equal(eval(c, NULL, NULL, NULL, "routes"), "( \"smtp://a:25?pref=10\" \"b\" \"__mx__\" )");
  struct conf_throttle t = conf_throttle(g, CONF_OUTBOUND_THROTTLE_CONNECTIONS);
  assert_int_equal(t.n, 5);
  assert_int_equal(t.per, 1);
  assert_string_equal(conf_str(g, CONF_TLS_CIPHERS), "a \"quoted\" \\ name");

  const struct conf_stanza *cl = conf_stanza_first(c, "control_listener");
  assert_non_null(cl);
  const struct conf_stanza *ls = conf_stanza_child(cl, "listen");
  assert_string_equal(conf_stanza_instance(ls), "/tmp/s");
  assert_int_equal(conf_int(conf_stanza_view(ls), CONF_LISTEN_FILE_MODE), 0660);
  const struct conf_stanza *ds = conf_stanza_first(c, "datasource");
  assert_string_equal(conf_stanza_instance(ds), "creds");
  assert_int_equal(conf_interval(conf_stanza_view(ds), CONF_DS_CACHE_LIFE), 300);
  assert_int_equal(conf_int(conf_stanza_view(ds), CONF_DS_CACHE_SIZE), 1000);
  l = conf_list(conf_stanza_view(ds), CONF_DS_URI, &n);
  assert_int_equal(n, 1);
  assert_string_equal(l[0], "sqlite:/tmp/x.db");
  const struct conf_stanza *sl = conf_stanza_first(c, "scriptlet");
  const struct conf_stanza *sc = conf_stanza_child(sl, "script");
  assert_string_equal(conf_stanza_instance(sc), "boot");
  assert_string_equal(conf_str(conf_stanza_view(sc), CONF_SCRIPT_SOURCE), "msys.boot");
  sc = conf_stanza_next(sc);
  assert_string_equal(conf_stanza_instance(sc), "policy");
  assert_string_equal(conf_str(conf_stanza_view(sc), CONF_SCRIPT_SOURCE), "lua/policy");
  assert_null(conf_stanza_next(sc));
  assert_true(conf_module_enabled(c, "scriptlet"));
  assert_string_equal(conf_str(conf_stanza_view(sc), CONF_MOD_DEBUG_LEVEL), "ERROR");
  conf_unref(c);
}

/* The named word indexes in conf.h match the table. */
static void test_enum_constants(void **state)
{
  (void)state;
  static const struct {
    const char *text;
    enum conf_opt o;
    int want;
  } cases[] = {
    {"TLS = no", CONF_TLS, CONF_TLS_NO},
    {"TLS = ifavailable", CONF_TLS, CONF_TLS_IFAVAILABLE},
    {"TLS = required", CONF_TLS, CONF_TLS_REQUIRED},
    {"TLS_Verify = no", CONF_TLS_VERIFY, CONF_TLS_VERIFY_NO},
    {"TLS_Verify = ca", CONF_TLS_VERIFY, CONF_TLS_VERIFY_CA},
    {"TLS_Verify = host", CONF_TLS_VERIFY, CONF_TLS_VERIFY_HOST},
    {"Spool_Sync = batch", CONF_SPOOL_SYNC, CONF_SPOOL_SYNC_BATCH},
    {"Spool_Sync = always", CONF_SPOOL_SYNC, CONF_SPOOL_SYNC_ALWAYS},
    {"Spool_Sync = none", CONF_SPOOL_SYNC, CONF_SPOOL_SYNC_NONE},
    {"Outbound_SMTP_AUTH_Type = plain", CONF_OUTBOUND_SMTP_AUTH_TYPE, CONF_AUTH_PLAIN},
    {"Outbound_SMTP_AUTH_Type = LOGIN", CONF_OUTBOUND_SMTP_AUTH_TYPE, CONF_AUTH_LOGIN},
    {"Outbound_SMTP_AUTH_Type = XOAUTH2", CONF_OUTBOUND_SMTP_AUTH_TYPE, CONF_AUTH_XOAUTH2},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct conf *c = parse(cases[i].text);
    assert_int_equal(conf_enum(conf_global(c), cases[i].o), cases[i].want);
    conf_unref(c);
  }
  struct conf *c = parse("Max_Retries = auto\nBinding \"b\" { Max_Retries = none }\n");
  assert_int_equal(conf_int(conf_global(c), CONF_MAX_RETRIES), CONF_MAX_RETRIES_AUTO);
  assert_int_equal(conf_int(conf_view_get(c, "b", NULL), CONF_MAX_RETRIES), CONF_MAX_RETRIES_NONE);
  conf_unref(c);
}

/* Documented Momentum defaults (momentum.md section 6), and every default parses. */
static void test_defaults(void **state)
{
  (void)state;
  struct conf *c = parse("");
  const struct conf_view *g = conf_global(c);
  assert_int_equal(conf_int(g, CONF_MAX_OUTBOUND_CONNECTIONS), 32);
  assert_int_equal(conf_int(g, CONF_MAX_RECIPIENTS_PER_BATCH), 100);
  assert_int_equal(conf_int(g, CONF_MAX_DELIVERIES_PER_CONNECTION), 0);
  assert_int_equal(conf_interval(g, CONF_RETRY_INTERVAL), 1200);
  assert_int_equal(conf_interval(g, CONF_MAX_RETRY_INTERVAL), 43200);
  assert_int_equal(conf_interval(g, CONF_MESSAGE_EXPIRATION), 86400);
  assert_int_equal(conf_interval(g, CONF_BODY_TIMEOUT), 600);
  assert_int_equal(conf_interval(g, CONF_IDLE_TIMEOUT), 5);
  assert_int_equal(conf_interval(g, CONF_HOST_FAILURE_RETRY), 120);
  assert_int_equal(conf_int(g, CONF_MAX_RETRIES), -1);
  assert_true(conf_bool(g, CONF_GENERATE_BOUNCES));
  assert_true(conf_bool(g, CONF_TLS_IFAVAILABLE_FALLBACK));
  assert_false(conf_bool(g, CONF_KEEP_MESSAGE_DICTS_IN_MEMORY));
  assert_false(conf_bool(g, CONF_OUTBOUND_SMTP_AUTH_ALLOW_PLAINTEXT));
  assert_string_equal(conf_str(g, CONF_SPOOL_SYNC), "batch");
  assert_string_equal(conf_str(g, CONF_TLS_VERIFY), "no");
  assert_null(conf_str(g, CONF_PICKUP_DIRECTORY));
  assert_false(conf_is_set(g, CONF_RETRY_INTERVAL));
  assert_int_equal(conf_scope(g, CONF_RETRY_INTERVAL), 0);
  assert_null(conf_origin(g, CONF_RETRY_INTERVAL, NULL));
  struct conf_throttle t = conf_throttle(g, CONF_OUTBOUND_THROTTLE_MESSAGES);
  assert_int_equal(t.n, 0);
  assert_null(conf_stanza_first(c, "ec_logger"));
  for (int i = 0; i < CONF__COUNT; i++)
    assert_non_null(conf_opt_name((enum conf_opt)i));
  conf_unref(c);
}

/* A throttle set in a broad scope is one bucket: every narrower scope
 * that falls back to it reports the same scope identity. */
static void test_throttle_scope_identity(void **state)
{
  (void)state;
  struct conf *c = load_fixture(FIXTURES "full.conf");
  struct conf_throttle a = conf_throttle(conf_view_get(c, "cust1", "other.org"), CONF_OUTBOUND_THROTTLE_MESSAGES);
  struct conf_throttle b = conf_throttle(conf_view_get(c, "cust2", "x.org"), CONF_OUTBOUND_THROTTLE_MESSAGES);
  struct conf_throttle d = conf_throttle(conf_view_get(c, "cust1", "example.com"), CONF_OUTBOUND_THROTTLE_MESSAGES);
  struct conf_throttle g = conf_throttle(conf_view_get(c, NULL, "example.com"), CONF_OUTBOUND_THROTTLE_MESSAGES);
  assert_int_equal(a.n, 10);
  assert_int_equal(a.per, 1);
  assert_int_equal(a.scope, b.scope);
  assert_string_equal(conf_scope_name(c, a.scope), "binding_group \"customers\"");
  assert_int_equal(d.n, 100);
  assert_int_equal(d.per, 60);
  assert_string_equal(conf_scope_name(c, d.scope), "binding_group \"customers\" binding \"cust1\" domain \"example.com\"");
  assert_int_equal(g.n, 100);
  assert_string_equal(conf_scope_name(c, g.scope), "global");
  assert_int_not_equal(g.scope, d.scope);
  /* the Gateway pseudo-domain and paths relative to the file */
  const struct conf_view *rv = conf_view_get(c, "cust1", "x.org");
  struct conf_addr gw = conf_addr(rv, CONF_GATEWAY);
  assert_null(gw.host); /* "#relay": the view follows Domain "#relay" */
  assert_string_equal(conf_str(rv, CONF_GATEWAY), "#relay");
  size_t nr = 0;
  assert_string_equal(conf_list(rv, CONF_ROUTES, &nr)[0], "smtp://relay.example.net:587");
  assert_int_equal(conf_enum(rv, CONF_TLS), CONF_TLS_REQUIRED);
  const char *sb = conf_str(conf_global(c), CONF_SPOOLBASE);
  assert_true(sb[0] == '/' && strstr(sb, "/tests/unit/conf/spool"));
  assert_true(conf_module_enabled(c, "datasource"));
  assert_true(conf_module_enabled(c, "alerting"));
  assert_false(conf_module_enabled(c, "nosuchmodule"));
  conf_unref(c);
}

/* Gateway may name its smart host by URL: smtps:// asks for implicit TLS
 * (the port is left to the engine: 465 when absent); the text keeps the
 * scheme; no other address option takes one. */
static void test_gateway_scheme(void **state)
{
  (void)state;
  struct conf *c = parse("Gateway = \"smtps://relay.example:2465\"\n"
                         "Domain \"a.test\" { Gateway = \"SMTPS://[::1]\" }\n"
                         "Domain \"b.test\" { Gateway = \"smtp://relay.example:2525\" }\n"
                         "Domain \"c.test\" { Gateway = \"relay.example\" }\n");
  struct conf_addr a = conf_addr(conf_global(c), CONF_GATEWAY);
  assert_string_equal(a.host, "relay.example");
  assert_int_equal(a.port, 2465);
  assert_true(a.implicit_tls);
  assert_string_equal(conf_str(conf_global(c), CONF_GATEWAY), "smtps://relay.example:2465");
  a = conf_addr(conf_view_get(c, NULL, "a.test"), CONF_GATEWAY);
  assert_string_equal(a.host, "::1");
  assert_int_equal(a.port, 0);
  assert_true(a.implicit_tls);
  a = conf_addr(conf_view_get(c, NULL, "b.test"), CONF_GATEWAY);
  assert_int_equal(a.port, 2525);
  assert_false(a.implicit_tls);
  a = conf_addr(conf_view_get(c, NULL, "c.test"), CONF_GATEWAY);
  assert_false(a.implicit_tls);
  conf_unref(c);
  expect_error("Gateway = \"smtps://\"\n",
               "t.conf:1: option 'Gateway': '' is not an address (host, host:port, or [IPv6]:port)");
  expect_error("Resolver = \"smtps://127.0.0.1\"\n",
               "t.conf:1: option 'Resolver': 'smtps://127.0.0.1' is not an address (host, host:port, or [IPv6]:port)");
}

/* ---- reload support ---- */

struct diffs {
  int n;
  char text[8][256];
};

static void on_diff(void *arg, const char *opt, const char *scope, const char *o, const char *n)
{
  struct diffs *d = arg;
  if (d->n < 8)
    snprintf(d->text[d->n], sizeof(d->text[0]), "%s|%s|%s|%s", opt, scope, o ? o : "-", n ? n : "-");
  d->n++;
}

static void test_restart_diff(void **state)
{
  (void)state;
  struct conf *a = parse("Spoolbase = \"/a\"\nRetry_Interval = 5\nBinding \"b\" { Bind_Address = 10.0.0.1 }\n"
                         "Worker_Threads = 2\nWorker_Threads = 4\n");
  struct conf *b = parse("Spoolbase = \"/b\"\nRetry_Interval = 6\nBinding \"b\" { Bind_Address = 10.0.0.1 }\n"
                         "Binding \"c\" { Bind_Address = 10.0.0.2 }\nWorker_Threads = 4\n");
  struct diffs d = {0};
  assert_int_equal(conf_restart_diff(a, b, on_diff, &d), 2);
  assert_int_equal(d.n, 2);
  assert_string_equal(d.text[0], "Bind_Address|binding \"c\"|-|10.0.0.2");
  assert_string_equal(d.text[1], "Spoolbase|global|/a|/b");
  memset(&d, 0, sizeof(d));
  assert_int_equal(conf_restart_diff(a, a, on_diff, &d), 0);
  /* a snapshot outlives a reload while someone holds it */
  struct conf *held = conf_ref(a);
  conf_unref(a);
  assert_string_equal(conf_str(conf_global(held), CONF_SPOOLBASE), "/a");
  conf_unref(held);
  conf_unref(b);
  conf_unref(NULL);
}

/* ---- concurrent view builds ---- */

struct race {
  struct conf *c;
  const struct conf_view *seen[64];
};

static void *race_main(void *arg)
{
  struct race *r = arg;
  for (int i = 0; i < 64; i++) {
    char dom[32];
    snprintf(dom, sizeof(dom), "d%d.com", i % 16);
    r->seen[i] = conf_view_get(r->c, i & 1 ? "b" : NULL, dom);
  }
  return NULL;
}

static void test_views_concurrent(void **state)
{
  (void)state;
  char text[8192] = "Binding \"b\" { Retry_Interval = 1 }\n";
  for (int i = 0; i < 16; i++) {
    char line[128];
    snprintf(line, sizeof(line), "Domain \"d%d.com\" { Max_Outbound_Connections = %d }\n", i, i + 1);
    strcat(text, line);
  }
  struct conf *c = parse(text);
  pthread_t th[4];
  struct race r[4];
  for (int i = 0; i < 4; i++) {
    r[i].c = c;
    assert_int_equal(pthread_create(&th[i], NULL, race_main, &r[i]), 0);
  }
  for (int i = 0; i < 4; i++)
    pthread_join(th[i], NULL);
  for (int i = 0; i < 64; i++) {
    for (int t = 1; t < 4; t++)
      assert_ptr_equal(r[0].seen[i], r[t].seen[i]); /* one view per (binding, domain) */
    assert_int_equal(conf_int(r[0].seen[i], CONF_MAX_OUTBOUND_CONNECTIONS), i % 16 + 1);
    assert_int_equal(conf_interval(r[0].seen[i], CONF_RETRY_INTERVAL), i & 1 ? 1 : 1200);
  }
  conf_unref(c);
}

/* The generated reference names every option. */
static void test_dump_markdown(void **state)
{
  (void)state;
  struct buf b = {0};
  conf_dump_markdown(&b);
  buf_append(&b, "", 1);
  const char *md = (const char *)buf_head(&b);
  for (int i = 0; i < CONF__COUNT; i++) {
    char needle[128];
    snprintf(needle, sizeof(needle), "| `%s` |", conf_opt_name((enum conf_opt)i));
    assert_non_null(strstr(md, needle));
  }
  buf_done(&b, 0);
}

/* Issue 18 item 7: Momentum's relay idiom. Gateway = "#name" names the
 * Domain "#name" stanza: the view takes that domain's options (Routes,
 * TLS...) for the same binding, so the worker sees ordinary routes; a
 * missing stanza, a stanza without Routes, or a chain fail the load with
 * the Gateway's file:line. */
static void test_relay_idiom(void **state)
{
  (void)state;
  struct conf *c = parse("Domain \"#spe_relay\" { Routes = ( \"smtp://relay.test:587\" ) TLS = \"required\" }\n"
                         "Binding \"b\" { Gateway = \"#spe_relay\" Outbound_SMTP_AUTH_User = \"u\"\n"
                         "  Domain \"example.com\" { TLS = \"no\" Max_Outbound_Connections = 3 } }\n"
                         "Binding \"c\" { Domain \"#own\" { Routes = ( \"own.test\" ) } Gateway = \"#own\" }\n");
  const struct conf_view *v = conf_view_get(c, "b", "example.com");
  size_t n = 0;
  const char *const *r = conf_list(v, CONF_ROUTES, &n);
  assert_int_equal(n, 1);
  assert_string_equal(r[0], "smtp://relay.test:587");
  assert_null(conf_addr(v, CONF_GATEWAY).host);
  assert_int_equal(conf_enum(v, CONF_TLS), CONF_TLS_REQUIRED);
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER), "u"); /* not set by #spe_relay */
  assert_int_equal(conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS), 3); /* the recipient domain's */
  assert_string_equal(eval(c, NULL, "b", "example.com", "Routes"), "( \"smtp://relay.test:587\" )");
  r = conf_list(conf_view_get(c, "c", "x.test"), CONF_ROUTES, &n);
  assert_string_equal(r[0], "own.test");
  assert_int_equal(conf_list(conf_view_get(c, NULL, "example.com"), CONF_ROUTES, &n) == NULL, 1);
  conf_unref(c);
  expect_error("Binding \"b\" {\n  Gateway = \"#spe_relay\"\n}\n",
               "t.conf:2: Gateway \"#spe_relay\" names no Domain \"#spe_relay\" stanza (Momentum's "
               "relay idiom: Domain \"#spe_relay\" { Routes = ( \"smtp://host:port\" ) })");
  expect_error("Domain \"#r\" { TLS = \"required\" }\nGateway = \"#r\"\n",
               "t.conf:2: Gateway \"#r\": Domain \"#r\" gives binding \"default\" no Routes");
  expect_error("Domain \"#r\" { Routes = ( a ) }\nBinding \"b\" { Domain \"#r\" { Gateway = \"#s\" } }\n"
               "Domain \"#s\" { Routes = ( s ) }\nGateway = \"#r\"\n",
               "t.conf:2: Gateway \"#s\" applies inside the route domain of another #name gateway "
               "(binding \"b\"): #name gateways are not chained");
  expect_error("Gateway = \"#\"\n",
               "t.conf:1: option 'Gateway': '#': a #name gateway needs a name without spaces");
}

/* Issue 18 item 7: values that could only fail at delivery time fail the
 * load with file:line (routes, gateway hosts, ports), and --check-config's
 * conf_check_environment the TLS files a delivery reads. */
static void test_delivery_values_checked(void **state)
{
  (void)state;
  struct conf *c = parse("Routes = ( \"smtp://10.0.11.7?pref=10\" smtp://10.0.11.8 \"__mx__\" \"[::1]:2525\"\n"
                         "  \"smtps://relay.test\" \"smtp://a.test:587/?port=25&ttl=60&type=mx\" b.test:26 )\n");
  conf_unref(c);
  expect_error("Domain \"d\" {\n Routes = ( \"lmtp://x.test\" ) }\n",
               "t.conf:2: option 'Routes': \"lmtp://x.test\": the scheme is not smtp:// or smtps://");
  expect_error("Routes = ( \"smtp://x.test:0\" )\n",
               "t.conf:1: option 'Routes': \"smtp://x.test:0\": the port is not a number from 1 to 65535");
  expect_error("Routes = ( \"smtp://x.test:smtp\" )\n",
               "t.conf:1: option 'Routes': \"smtp://x.test:smtp\": the port is not a number from 1 to 65535");
  expect_error("Routes = ( \"smtp://\" )\n",
               "t.conf:1: option 'Routes': \"smtp://\": the host is not a host name or an IP address");
  expect_error("Routes = ( \"smtp://x!y.test\" )\n",
               "t.conf:1: option 'Routes': \"smtp://x!y.test\": the host is not a host name or an IP address");
  expect_error("Routes = ( \"x.test?prio=1\" )\n",
               "t.conf:1: option 'Routes': \"x.test?prio=1\": unknown query key (pref, ttl, port, type)");
  expect_error("Routes = ( \"x.test?type=aaaa\" )\n",
               "t.conf:1: option 'Routes': \"x.test?type=aaaa\": type= is mx or a");
  expect_error("Gateway = \"relay!.test:25\"\n",
               "t.conf:1: Gateway \"relay!.test:25\": the host is not a host name or an IP address");
  expect_error("Gateway = \"*\"\n",
               "t.conf:1: Gateway \"*\": the host is not a host name or an IP address");
  expect_error("\nRemote_SMTP_Port = 70000\n",
               "t.conf:2: option 'Remote_SMTP_Port': 70000 is not a port (1 to 65535)");
  expect_error("Remote_SMTP_Port = 0\n",
               "t.conf:1: option 'Remote_SMTP_Port': 0 is not a port (1 to 65535)");
  expect_error("Binding \"b\" { Bind_Address = \"mail.example.com\" }\n",
               "t.conf:1: option 'Bind_Address': \"mail.example.com\" is not * or an IP address");
  expect_error("Bind_Address = \"10.0.0.1:25\"\n",
               "t.conf:1: option 'Bind_Address': \"10.0.0.1:25\": no port (connections bind the address only)");
  expect_error("EHLO_Hostname = \"my host\"\n",
               "t.conf:1: option 'EHLO_Hostname': \"my host\" is not a host name, an address literal "
               "[1.2.3.4], __hostname__ or __message__");
  c = parse("EHLO_Hostname = \"[IPv6:::1]\"\nDomain \"a\" { EHLO_Hostname = \"[192.0.2.1]\" }\n"
            "Domain \"b\" { EHLO_Hostname = __message__ } Domain \"c\" { EHLO_Hostname = mx-1.example.com }\n"
            "Binding \"x\" { Bind_Address = \"::1\" } Binding \"y\" { Bind_Address = 127.0.0.1 }\n");
  struct conf_error err;
  char t[6000];
  assert_int_equal(conf_check_environment(c, &err), 0);
  conf_unref(c);
  c = parse("Binding \"x\" {\n Bind_Address = \"192.0.2.77\" }\n"); /* TEST-NET-1: not here */
  assert_int_equal(conf_check_environment(c, &err), -EINVAL);
  assert_string_equal(conf_error_str(&err, t, sizeof t),
                      "t.conf:2: option 'Bind_Address': 192.0.2.77: Cannot assign requested address");
  conf_unref(c);
  c = parse("Domain \"a.test\" {\n  TLS_Ca = \"/nonexistent/ca.pem\" }\nTLS_Certificate = none\n");
  assert_int_equal(conf_check_environment(c, &err), -EINVAL);
  assert_string_equal(conf_error_str(&err, t, sizeof t),
                      "t.conf:2: option 'TLS_Ca': \"/nonexistent/ca.pem\": No such file or directory");
  conf_unref(c);
  c = parse("TLS_Ca = \"/etc/hostname\"\nTLS_Key = \"/tmp\"\n");
  assert_int_equal(conf_check_environment(c, &err), -EINVAL);
  assert_string_equal(conf_error_str(&err, t, sizeof t),
                      "t.conf:2: option 'TLS_Key': \"/tmp\" is not a regular file");
  conf_unref(c);
}

/* Issue 18 item 10: the four Outbound_SMTP_AUTH_* options default to false
 * (Momentum) and "= false" is off, not the string "false". */
static void test_auth_false_is_off(void **state)
{
  (void)state;
  struct conf *c = parse("Outbound_SMTP_AUTH_User = \"u\"\nOutbound_SMTP_AUTH_Type = LOGIN\n"
                         "Outbound_SMTP_AUTH_Pass = \"p\"\n"
                         "Domain \"off.test\" { Outbound_SMTP_AUTH_User = false Outbound_SMTP_AUTH_Type = False\n"
                         "  Outbound_SMTP_AUTH_Pass = FALSE Outbound_SMTP_AUTH_Key = false }\n");
  const struct conf_view *v = conf_view_get(c, NULL, "off.test");
  assert_null(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER));
  assert_null(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_PASS));
  assert_null(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_KEY));
  assert_null(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_TYPE));
  assert_int_equal(conf_enum(v, CONF_OUTBOUND_SMTP_AUTH_TYPE), -1);
  assert_true(conf_is_off(v, CONF_OUTBOUND_SMTP_AUTH_USER));
  assert_true(conf_is_off(v, CONF_OUTBOUND_SMTP_AUTH_TYPE));
  assert_string_equal(eval(c, NULL, NULL, "off.test", "Outbound_SMTP_AUTH_Pass"), "false");
  assert_string_equal(eval(c, NULL, NULL, "off.test", "Outbound_SMTP_AUTH_Type"), "false");
  v = conf_view_get(c, NULL, "on.test");
  assert_string_equal(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER), "u");
  assert_false(conf_is_off(v, CONF_OUTBOUND_SMTP_AUTH_USER));
  assert_false(conf_is_off(v, CONF_OUTBOUND_SMTP_AUTH_KEY)); /* the default false is not "set off" */
  assert_null(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_KEY));
  assert_string_equal(eval(c, NULL, NULL, "on.test", "Outbound_SMTP_AUTH_Key"), "false");
  conf_unref(c);
  expect_error("Max_Retries = false\n", "t.conf:1: option 'Max_Retries': 'false' is not a non-negative "
                                        "integer or one of: auto, none"); /* only OFF options */
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_relay_idiom),
    cmocka_unit_test(test_delivery_values_checked),
    cmocka_unit_test(test_auth_false_is_off),
    cmocka_unit_test(test_seed),
    cmocka_unit_test(test_module_enabled_by_option),
    cmocka_unit_test(test_fallback_documented),
    cmocka_unit_test(test_fallback_group),
    cmocka_unit_test(test_fallback_order),
    cmocka_unit_test(test_errors_options),
    cmocka_unit_test(test_errors_syntax),
    cmocka_unit_test(test_errors_nesting),
    cmocka_unit_test_setup_teardown(test_include_errors, setup_tmp, teardown_tmp),
    cmocka_unit_test_setup_teardown(test_include_directory, setup_tmp, teardown_tmp),
    cmocka_unit_test_setup_teardown(test_include_relative_paths, setup_tmp, teardown_tmp),
    cmocka_unit_test(test_many_stanzas),
    cmocka_unit_test(test_merge_repeated_scopes),
    cmocka_unit_test(test_case_rules),
    cmocka_unit_test(test_booleans),
    cmocka_unit_test(test_values),
    cmocka_unit_test(test_gateway_scheme),
    cmocka_unit_test(test_enum_constants),
    cmocka_unit_test(test_defaults),
    cmocka_unit_test(test_throttle_scope_identity),
    cmocka_unit_test(test_restart_diff),
    cmocka_unit_test(test_views_concurrent),
    cmocka_unit_test(test_dump_markdown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
