/* test_luam: Lua policy states with a fake message and a tiny event loop
 * standing in for a worker (post -> eventfd). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "luam.h"
#include "luam_ds.h"

#include "clock.h"
#include "impetus_tree.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---------------- fake message ---------------- */

#define MAXKV 32
struct kv { char *k, *v; };
struct fake_msg {
  struct kv ctx[2][MAXKV];
  const char *mailfrom;
  const char *rcpts[4];
  const char *hdr_names[4], *hdr_vals[4];
  char binding[64], group[64];
  const char *id;
  size_t size;
  int code;
  char code_text[128];
};

static const char *f_ctx_get(void *m, int w, const char *key, size_t *len)
{
  struct fake_msg *f = m;
  for (int i = 0; i < MAXKV; i++)
    if (f->ctx[w][i].k && strcmp(f->ctx[w][i].k, key) == 0) {
      *len = strlen(f->ctx[w][i].v);
      return f->ctx[w][i].v;
    }
  return NULL;
}

static int f_ctx_set(void *m, int w, const char *key, const char *val, size_t len)
{
  struct fake_msg *f = m;
  int freei = -1;
  for (int i = 0; i < MAXKV; i++) {
    if (f->ctx[w][i].k && strcmp(f->ctx[w][i].k, key) == 0) {
      free(f->ctx[w][i].v);
      f->ctx[w][i].v = strndup(val, len);
      return 0;
    }
    if (!f->ctx[w][i].k && freei < 0)
      freei = i;
  }
  if (freei < 0)
    return -ENOSPC;
  f->ctx[w][freei].k = strdup(key);
  f->ctx[w][freei].v = strndup(val, len);
  return 0;
}

static int f_ctx_delete(void *m, int w, const char *key)
{
  struct fake_msg *f = m;
  for (int i = 0; i < MAXKV; i++)
    if (f->ctx[w][i].k && strcmp(f->ctx[w][i].k, key) == 0) {
      free(f->ctx[w][i].k);
      free(f->ctx[w][i].v);
      f->ctx[w][i].k = f->ctx[w][i].v = NULL;
      return 1;
    }
  return 0;
}

static const char *f_mailfrom(void *m) { return ((struct fake_msg *)m)->mailfrom; }
static const char *f_rcptto(void *m, size_t i)
{
  struct fake_msg *f = m;
  return i < 4 ? f->rcpts[i] : NULL;
}
static const char *f_header(void *m, const char *name, size_t i, size_t *len)
{
  struct fake_msg *f = m;
  size_t seen = 0;
  for (int k = 0; k < 4 && f->hdr_names[k]; k++)
    if (strcasecmp(f->hdr_names[k], name) == 0 && seen++ == i) {
      *len = strlen(f->hdr_vals[k]);
      return f->hdr_vals[k];
    }
  return NULL;
}
static const char *f_binding(void *m)
{
  struct fake_msg *f = m;
  return f->binding[0] ? f->binding : NULL;
}
static int f_set_binding(void *m, const char *name)
{
  struct fake_msg *f = m;
  if (strcmp(name, "nosuch") == 0)
    return -ENOENT;
  snprintf(f->binding, sizeof f->binding, "%s", name);
  return 0;
}
static const char *f_group(void *m)
{
  struct fake_msg *f = m;
  return f->group[0] ? f->group : NULL;
}
static int f_set_group(void *m, const char *name)
{
  struct fake_msg *f = m;
  snprintf(f->group, sizeof f->group, "%s", name);
  return 0;
}
static const char *f_id(void *m) { return ((struct fake_msg *)m)->id; }
static size_t f_size(void *m) { return ((struct fake_msg *)m)->size; }
static void f_set_code(void *m, int code, const char *text)
{
  struct fake_msg *f = m;
  f->code = code;
  snprintf(f->code_text, sizeof f->code_text, "%s", text);
}

static const struct luam_msg_ops fops = {
  .ctx_get = f_ctx_get, .ctx_set = f_ctx_set, .ctx_delete = f_ctx_delete,
  .mailfrom = f_mailfrom, .rcptto = f_rcptto, .header = f_header,
  .binding = f_binding, .set_binding = f_set_binding,
  .binding_group = f_group, .set_binding_group = f_set_group,
  .id = f_id, .size = f_size, .set_code = f_set_code,
};

static void fake_init(struct fake_msg *f)
{
  memset(f, 0, sizeof *f);
  f->mailfrom = "alice@tenant-a.example";
  f->rcpts[0] = "bob@messagesystems.com";
  f->rcpts[1] = "carol@sparkpost.com";
  f->hdr_names[0] = "Subject";
  f->hdr_vals[0] = "hello";
  f->hdr_names[1] = "Received";
  f->hdr_vals[1] = "from a";
  f->hdr_names[2] = "Received";
  f->hdr_vals[2] = "from b";
  f->id = "00/00-12345-0000ABCD";
  f->size = 1234;
}

static void fake_done(struct fake_msg *f)
{
  for (int w = 0; w < 2; w++)
    for (int i = 0; i < MAXKV; i++) {
      free(f->ctx[w][i].k);
      free(f->ctx[w][i].v);
    }
}

static const char *ctx(struct fake_msg *f, const char *key)
{
  size_t len;
  return f_ctx_get(f, LUAM_CTX_MESS, key, &len);
}

/* ---------------- fake host: log, config, loop ---------------- */

#define MAXLOG 64
static char *logs[MAXLOG];
static int nlogs;

static void h_log(void *arg, int level, const char *script, const char *text)
{
  (void)arg;
  char line[4200];
  snprintf(line, sizeof line, "%d [%s] %s", level, script ? script : "-", text);
  if (nlogs < MAXLOG)
    logs[nlogs++] = strdup(line);
}

static unsigned long counted[LUAM_HOOK_COUNT][LUAM_EV_COUNT];

static void logs_clear(void)
{
  for (int i = 0; i < nlogs; i++)
    free(logs[i]);
  nlogs = 0;
  memset(counted, 0, sizeof counted);
}

static int logs_count(const char *needle)
{
  int n = 0;
  for (int i = 0; i < nlogs; i++)
    if (strstr(logs[i], needle))
      n++;
  return n;
}

static void logs_dump(void)
{
  for (int i = 0; i < nlogs; i++)
    fprintf(stderr, "log: %s\n", logs[i]);
}

/* Configuration: outbound_smtp_auth_key/_user per domain, one binding. */
static const char *h_eval(void *arg, const char *bg, const char *b, const char *d, const char *opt)
{
  (void)arg;
  (void)bg;
  if (strcmp(opt, "#binding_exists") == 0)
    return b && strcmp(b, "nosuch") != 0 ? "1" : NULL;
  if (d && strcmp(d, "messagesystems.com") == 0) {
    if (strcasecmp(opt, "outbound_smtp_auth_key") == 0)
      return "somestring";
    if (strcasecmp(opt, "outbound_smtp_auth_user") == 0)
      return "msys";
    if (strcasecmp(opt, "outbound_smtp_auth_type") == 0)
      return "LOGIN";
  }
  if (b && strcmp(b, "b1") == 0 && strcasecmp(opt, "max_outbound_connections") == 0)
    return "15";
  if (strcasecmp(opt, "max_outbound_connections") == 0)
    return "32";
  return NULL;
}

struct posted { void (*fn)(void *); void *arg; };
static pthread_mutex_t loop_mu = PTHREAD_MUTEX_INITIALIZER;
static struct posted loop_q[256];
static int loop_n;
static int loop_efd = -1;

static void h_post(void *arg, void (*fn)(void *), void *fn_arg)
{
  (void)arg;
  pthread_mutex_lock(&loop_mu);
  if (loop_n < 256)
    loop_q[loop_n++] = (struct posted){fn, fn_arg};
  pthread_mutex_unlock(&loop_mu);
  uint64_t one = 1;
  ssize_t w = write(loop_efd, &one, sizeof one);
  (void)w;
}

/* Run posted functions for up to ms milliseconds or until *flag. */
static void loop_run(int ms, const int *flag)
{
  uint64_t deadline = clock_mono_ns() + (uint64_t)ms * 1000000u;
  while (!(flag && *flag)) {
    uint64_t now = clock_mono_ns();
    if (now >= deadline)
      break;
    struct pollfd p = {.fd = loop_efd, .events = POLLIN};
    int rc = poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
    if (rc <= 0)
      continue;
    uint64_t v;
    ssize_t r = read(loop_efd, &v, sizeof v);
    (void)r;
    for (;;) {
      pthread_mutex_lock(&loop_mu);
      if (loop_n == 0) {
        pthread_mutex_unlock(&loop_mu);
        break;
      }
      struct posted p0 = loop_q[0];
      memmove(loop_q, loop_q + 1, (size_t)(--loop_n) * sizeof *loop_q);
      pthread_mutex_unlock(&loop_mu);
      p0.fn(p0.arg);
    }
  }
}

/* luam_host.count: events per hook, cleared by logs_clear. */

static void h_count(void *arg, enum luam_hook hook, enum luam_event ev)
{
  (void)arg;
  assert_true((unsigned)hook < LUAM_HOOK_COUNT && (unsigned)ev < LUAM_EV_COUNT);
  counted[hook][ev]++;
}

static const struct luam_host host = {.log = h_log, .eval = h_eval, .post = h_post,
                                      .count = h_count};

/* ---------------- helpers ---------------- */

static char tmpdir[256];

static const char *write_script(const char *name, const char *text)
{
  static char path[512];
  snprintf(path, sizeof path, "%s/%s.lua", tmpdir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  return path;
}

static struct luam *new_state(const char *name, const char *text, struct luam_opts *o)
{
  struct luam_script s = {name, write_script(name, text)};
  struct luam_opts def = {0};
  if (!o)
    o = &def;
  o->scripts = &s;
  o->nscripts = 1;
  char err[512] = "";
  struct luam *lm = luam_new(o, &host, err, sizeof err);
  if (!lm)
    fprintf(stderr, "luam_new: %s\n", err);
  assert_non_null(lm);
  return lm;
}

static int call_hook(struct luam *lm, enum luam_hook h, struct fake_msg *f, const char *domain)
{
  struct luam_call c = {.msg = f, .ops = &fops, .domain = domain, .rcpt = 0};
  return luam_call(lm, h, &c);
}

static int setup(void **state)
{
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/test_luam.XXXXXX");
  assert_non_null(mkdtemp(tmpdir));
  loop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  assert_true(loop_efd >= 0);
  return 0;
}

static int teardown(void **state)
{
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  int rc = system(cmd);
  (void)rc;
  close(loop_efd);
  logs_clear();
  return 0;
}

/* ---------------- tests ---------------- */

/* The seed's Example 71.76, verbatim, inside the usual module wrapper. */
static void test_seed_example(void **state)
{
  (void)state;
  logs_clear();
  struct luam *lm = new_state("seed",
    "local mod = {}\n"
    "function mod:outbound_smtp_auth_config(msg, ac, vctx)\n"
    "  print('NOTICE: outbound_smtp_auth_config Lua hook called');\n"
    "  print('NOTICE: msg:['.. tostring(msg) ..']')\n"
    "  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', 'foo')\n"
    "  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_pass', 'bar')\n"
    "end\n"
    "msys.registerModule(\"test\", mod)\n", NULL);
  assert_true(luam_has_hook(lm, LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG));
  assert_false(luam_has_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING));
  struct fake_msg f;
  fake_init(&f);
  assert_int_equal(luam_call_auth_config(lm, &f, &fops, "messagesystems.com", NULL, NULL), LUAM_CONT);
  assert_string_equal(ctx(&f, "outbound_smtp_auth_user"), "foo");
  assert_string_equal(ctx(&f, "outbound_smtp_auth_pass"), "bar");
  assert_int_equal(logs_count("2 [seed] NOTICE: outbound_smtp_auth_config Lua hook called"), 1);
  assert_int_equal(logs_count("2 [seed] NOTICE: msg:[00/00-12345-0000ABCD]"), 1);
  fake_done(&f);
  luam_free(lm);
}

/* Every msg method and msys function, checked from inside Lua. */
static void test_api(void **state)
{
  (void)state;
  logs_clear();
  struct luam *lm = new_state("api",
    "require('msys.core'); require('msys.extended.message'); require('msys.db')\n"
    "require('msys.pbp'); require('msys.extended.vctx'); require('msys.datasource')\n"
    "local mod = {}\n"
    "function mod:validate_data_spool(msg, ac, vctx)\n"
    "  assert(VCTX_MESS == 1 and VCTX_CONN == 0)\n"
    "  assert(msys.core.VCTX_MESS == 1 and msys.core.ECMESS_CTX_MESS == 1 and msys.core.ECMESS_CTX_CONN == 0)\n"
    "  assert(msg:context_get(VCTX_MESS, 'missing') == '')\n"
    "  assert(msg:context_exists(VCTX_MESS, 'k') == 0)\n"
    "  msg:context_set(VCTX_MESS, 'k', 'v1')\n"
    "  msg:context_set(msys.core.ECMESS_CTX_CONN, 'n', 42)\n"
    "  assert(msg:context_get(VCTX_CONN, 'n') == '42')\n"
    "  assert(msg:context_exists(VCTX_MESS, 'k') == 1)\n"
    "  local e, v = msg:context_exists_and_get(VCTX_MESS, 'k'); assert(e == 1 and v == 'v1')\n"
    "  e, v = msg:context_exists_and_get(VCTX_MESS, 'nope'); assert(e == 0 and v == nil)\n"
    "  assert(msg:context_delete(VCTX_MESS, 'k') == 1)\n"
    "  assert(msg:context_delete(VCTX_MESS, 'k') == 0)\n"
    "  assert(vctx:get(VCTX_CONN, 'n') == '42')\n"
    "  vctx:set(VCTX_MESS, 'via_vctx', 'yes')\n"
    "  assert(msg:mailfrom() == 'alice@tenant-a.example')\n"
    "  assert(msg:rcptto() == 'bob@messagesystems.com')\n"
    "  local l = msg:rcptto_list(); assert(#l == 2 and l[2] == 'carol@sparkpost.com')\n"
    "  local h = msg:header('subject'); assert(#h == 1 and h[1] == 'hello')\n"
    "  h = msg:header('Received'); assert(#h == 2 and h[2] == 'from b')\n"
    "  assert(#msg:header('X-None') == 0)\n"
    "  assert(msg.id == '00/00-12345-0000ABCD' and tostring(msg) == msg.id)\n"
    "  assert(msg:get_message_size() == 1234)\n"
    "  assert(msg:binding() == nil)\n"
    "  assert(msys.config('eval', 'binding', 'b1', 'max_outbound_connections') == '15')\n"
    "  assert(msys.config('eval', 'max_outbound_connections') == '32')\n"
    "  assert(msys.config('get', 'domain', 'nowhere', 'no_such_option') == nil)\n"
    "  assert(type(msys.core.get_now_ts()) == 'number')\n"
    "  local ok, err = pcall(msg.mailfrom, msg, 'x@y'); assert(not ok and err:find('not supported'))\n"
    "  msg:context_set(VCTX_MESS, 'api_ok', 'yes')\n"
    "  return msys.core.VALIDATE_CONT\n"
    "end\n"
    "function mod:validate_data_spool_each_rcpt(msg, ac, vctx)\n"
    "  msg:context_set(VCTX_MESS, 'rcpt', msg:rcptto())\n"
    "  msg:code(550, '5.7.1 go away')\n"
    "  return msys.core.VALIDATE_DONE\n"
    "end\n"
    "msys.registerModule('api', mod)\n", NULL);
  struct fake_msg f;
  fake_init(&f);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  if (!ctx(&f, "api_ok"))
    logs_dump();
  assert_string_equal(ctx(&f, "api_ok"), "yes");
  assert_string_equal(ctx(&f, "via_vctx"), "yes");
  struct luam_call c = {.msg = &f, .ops = &fops, .rcpt = 1};
  assert_int_equal(luam_call(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL_EACH_RCPT, &c), LUAM_DONE);
  assert_string_equal(ctx(&f, "rcpt"), "carol@sparkpost.com");
  assert_int_equal(f.code, 550);
  assert_string_equal(f.code_text, "5.7.1 go away");
  assert_int_equal(nlogs, 0);
  fake_done(&f);
  luam_free(lm);
}

static void test_set_binding(void **state)
{
  (void)state;
  logs_clear();
  struct luam *lm = new_state("bind",
    "local mod = {}\n"
    "function mod:validate_set_binding(msg)\n"
    "  local dom = string.match(msg:mailfrom(), '@(.+)$')\n"
    "  if dom == 'tenant-a.example' then assert(msg:binding('tenant_a') == 'tenant_a')\n"
    "  else msg:binding_group('shared') end\n"
    "  assert(msg:binding('nosuch') == nil)\n"
    "  return msys.core.VALIDATE_DONE\n"
    "end\n"
    "msys.registerModule('bind', mod)\n", NULL);
  struct fake_msg f;
  fake_init(&f);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &f, NULL), LUAM_DONE);
  assert_string_equal(f.binding, "tenant_a");
  struct fake_msg g;
  fake_init(&g);
  g.mailfrom = "x@other.example";
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &g, NULL), LUAM_DONE);
  assert_string_equal(g.group, "shared");
  assert_string_equal(g.binding, "");
  assert_int_equal(nlogs, 0);
  fake_done(&f);
  fake_done(&g);
  luam_free(lm);
}

/* Inside the auth hook, _key/_type/_user fall back to configuration; a
 * context value wins; outside the hook there is no fallback. */
static void test_auth_fallback(void **state)
{
  (void)state;
  logs_clear();
  struct luam *lm = new_state("fb",
    "local mod = {}\n"
    "function mod:outbound_smtp_auth_config(msg)\n"
    "  local key = msg:context_get(VCTX_MESS, 'outbound_smtp_auth_key')\n"
    "  msg:context_set(VCTX_MESS, 'seen_key', key)\n"
    "  msg:context_set(VCTX_MESS, 'seen_user', msg:context_get(VCTX_MESS, 'outbound_smtp_auth_user'))\n"
    "  msg:context_set(VCTX_MESS, 'seen_type', msg:context_get(VCTX_MESS, 'outbound_smtp_auth_type'))\n"
    "  msg:context_set(VCTX_MESS, 'seen_pass', msg:context_get(VCTX_MESS, 'outbound_smtp_auth_pass'))\n"
    "end\n"
    "function mod:validate_data_spool(msg)\n"
    "  msg:context_set(VCTX_MESS, 'outside', msg:context_get(VCTX_MESS, 'outbound_smtp_auth_key'))\n"
    "end\n"
    "msys.registerModule('fb', mod)\n", NULL);
  struct fake_msg f;
  fake_init(&f);
  assert_int_equal(luam_call_auth_config(lm, &f, &fops, "messagesystems.com", NULL, NULL), LUAM_CONT);
  assert_string_equal(ctx(&f, "seen_key"), "somestring");
  assert_string_equal(ctx(&f, "seen_user"), "msys");
  assert_string_equal(ctx(&f, "seen_type"), "LOGIN");
  assert_string_equal(ctx(&f, "seen_pass"), ""); /* the password never falls back */
  f_ctx_set(&f, LUAM_CTX_MESS, "outbound_smtp_auth_user", "permsg", 6);
  assert_int_equal(luam_call_auth_config(lm, &f, &fops, "messagesystems.com", NULL, NULL), LUAM_CONT);
  assert_string_equal(ctx(&f, "seen_user"), "permsg");
  /* user and password are one unit (authkeys.h): with only a password in
   * the message context, the hook is not shown the configured user */
  f_ctx_delete(&f, LUAM_CTX_MESS, "outbound_smtp_auth_user");
  f_ctx_set(&f, LUAM_CTX_MESS, "outbound_smtp_auth_pass", "pw", 2);
  assert_int_equal(luam_call_auth_config(lm, &f, &fops, "messagesystems.com", NULL, NULL), LUAM_CONT);
  assert_string_equal(ctx(&f, "seen_user"), "");
  assert_string_equal(ctx(&f, "seen_type"), "LOGIN");
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, "messagesystems.com"), LUAM_CONT);
  assert_string_equal(ctx(&f, "outside"), "");
  fake_done(&f);
  luam_free(lm);
}

/* An error is logged once with script:line; CONT; later modules run. */
static void test_error(void **state)
{
  (void)state;
  logs_clear();
  struct luam *lm = new_state("err",
    "local a = {}\n"
    "function a:validate_data_spool(msg)\n"
    "  local t = nil\n"
    "  return t.field\n"
    "end\n"
    "msys.registerModule('a', a)\n"
    "local b = {}\n"
    "function b:validate_data_spool(msg) msg:context_set(VCTX_MESS, 'b_ran', '1') end\n"
    "msys.registerModule('b', b)\n", NULL);
  struct fake_msg f;
  fake_init(&f);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  assert_string_equal(ctx(&f, "b_ran"), "1");
  assert_int_equal(nlogs, 1);
  assert_int_equal(logs_count("err.lua:4: attempt to index"), 1);
  assert_int_equal(logs_count("0 [err] a:validate_data_spool"), 1);
  struct luam_stats st;
  luam_get_stats(lm, &st);
  assert_int_equal(st.errors, 1);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_CALL], 1);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_ERROR], 1);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_BUDGET], 0);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_SET_BINDING][LUAM_EV_CALL], 0); /* no such hook */
  fake_done(&f);
  luam_free(lm);

  /* An error object without a position: the hook's definition is named. */
  logs_clear();
  lm = new_state("errobj",
    "local a = {}\n"
    "\n"
    "function a:outbound_smtp_auth_config(msg)\n"
    "  error({code = 1})\n"
    "end\n"
    "msys.registerModule('a', a)\n", NULL);
  fake_init(&f);
  assert_int_equal(luam_call_auth_config(lm, &f, &fops, "x.example", NULL, NULL), LUAM_CONT);
  if (logs_count("errobj.lua:3") != 1)
    logs_dump();
  assert_int_equal(logs_count("0 [errobj] a:outbound_smtp_auth_config: (error object is not a string) "
                              "in the hook defined at "), 1);
  assert_int_equal(logs_count("errobj.lua:3"), 1);
  assert_int_equal(counted[LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG][LUAM_EV_ERROR], 1);
  fake_done(&f);
  luam_free(lm);
}

static void test_endless_loop(void **state)
{
  (void)state;
  logs_clear();
  struct luam_opts o = {.max_instructions = 200000, .max_time_ms = 2000};
  struct luam *lm = new_state("loop",
    "local mod = {}\n"
    "local n = 0\n"
    "function mod:validate_data_spool(msg)\n"
    "  n = n + 1\n"
    "  if n == 2 then msg:context_set(VCTX_MESS, 'second', 'ok') return end\n"
    "  while true do pcall(function() while true do end end) end\n"
    "end\n"
    "msys.registerModule('loop', mod)\n", &o);
  struct fake_msg f;
  fake_init(&f);
  uint64_t t0 = clock_mono_ns();
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  assert_true(clock_mono_ns() - t0 < 2000000000ull);
  assert_int_equal(logs_count("exceeded its budget"), 1);
  assert_int_equal(logs_count("loop.lua:"), 1);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  assert_string_equal(ctx(&f, "second"), "ok");
  struct luam_stats st;
  luam_get_stats(lm, &st);
  assert_int_equal(st.aborted, 1);
  /* counted once, as a budget abort, not also as an error */
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_CALL], 2);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_BUDGET], 1);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_ERROR], 0);
  fake_done(&f);
  luam_free(lm);
}

/* The time budget alone stops a slow hook; a script yielding by itself
 * and an endless loop at load time are handled too. */
static void test_time_budget_and_yield(void **state)
{
  (void)state;
  logs_clear();
  struct luam_opts o = {.max_instructions = 1000000000000ull, .max_time_ms = 50};
  struct luam *lm = new_state("slow",
    "local mod = {}\n"
    "function mod:validate_data_spool(msg) while true do end end\n"
    "function mod:validate_set_binding(msg) coroutine.yield() end\n"
    "msys.registerModule('slow', mod)\n", &o);
  struct fake_msg f;
  fake_init(&f);
  uint64_t t0 = clock_mono_ns();
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  uint64_t took = clock_mono_ns() - t0;
  assert_true(took >= 50000000ull && took < 5000000000ull);
  assert_int_equal(logs_count("slow.lua:2: hook exceeded its budget"), 1);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &f, NULL), LUAM_CONT);
  assert_int_equal(logs_count("yielded outside msys.db"), 1);
  assert_int_equal(luam_pending(lm), 0);
  luam_free(lm);

  struct luam_script s = {"spin", write_script("spin", "while true do end\n")};
  struct luam_opts o2 = {.scripts = &s, .nscripts = 1, .max_instructions = 100000};
  char err[512] = "";
  assert_null(luam_new(&o2, &host, err, sizeof err));
  assert_non_null(strstr(err, "spin.lua:1: hook exceeded its budget"));
  fake_done(&f);
}

static void test_memory_bomb(void **state)
{
  (void)state;
  logs_clear();
  struct luam_opts o = {.max_memory = 8u << 20, .max_instructions = 100000000, .max_time_ms = 5000};
  struct luam *lm = new_state("bomb",
    "local mod = {}\n"
    "hoard = {}\n"
    "function mod:validate_data_spool(msg)\n"
    "  if msg:context_get(VCTX_MESS, 'mode') == 'calm' then\n"
    "    msg:context_set(VCTX_MESS, 'hoard', tostring(#hoard)) return end\n"
    "  local i = 0\n"
    "  while true do i = i + 1; hoard[i] = string.rep('x', 1000) .. i end\n"
    "end\n"
    "msys.registerModule('bomb', mod)\n", &o);
  struct fake_msg f;
  fake_init(&f);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  if (logs_count("near ") != 1)
    logs_dump();
  assert_int_equal(logs_count("memory limit"), 2); /* the error, the recreation */
  /* logged with the script and the line the bomb was running */
  assert_int_equal(logs_count("0 [bomb] bomb:validate_data_spool: memory limit (8388608 bytes) exceeded near "), 1);
  assert_int_equal(logs_count("bomb.lua:7"), 1);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_MEMORY], 1);
  assert_int_equal(counted[LUAM_HOOK_VALIDATE_DATA_SPOOL][LUAM_EV_ERROR], 0);
  struct luam_stats st;
  luam_get_stats(lm, &st);
  assert_int_equal(st.recreated, 1);
  assert_true(st.memory < (8u << 20));
  f_ctx_set(&f, LUAM_CTX_MESS, "mode", "calm", 4);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  assert_string_equal(ctx(&f, "hoard"), "0"); /* a fresh state */
  fake_done(&f);
  luam_free(lm);
}

/* luam_opts.jit reaches the state (jit.status() inside the script); an
 * error is still handled with the JIT on. */
static void test_jit_option(void **state)
{
  (void)state;
  for (int on = 0; on < 2; on++) {
    logs_clear();
    struct luam_opts o = {.jit = on};
    struct luam *lm = new_state("jit",
      "local mod = {}\n"
      "function mod:validate_data_spool(msg)\n"
      "  msg:context_set(VCTX_MESS, 'jit', tostring(jit.status()))\n"
      "  local s = 0\n"
      "  for i = 1, 1000 do s = s + i end\n"
      "  if s > 0 then error('after loop') end\n"
      "end\n"
      "msys.registerModule('jit', mod)\n", &o);
    struct fake_msg f;
    fake_init(&f);
    assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
    assert_string_equal(ctx(&f, "jit"), on ? "true" : "false");
    assert_int_equal(logs_count("jit.lua:6: after loop"), 1);
    fake_done(&f);
    luam_free(lm);
  }
}

/* Issue 18 item 16: the scriptlet sandbox (luam_opts.full_lua false, the
 * default) takes away os.execute, io, ffi, debug, jit switches, bytecode
 * through loadstring/load(..., "b"), package.loadlib and C modules; full
 * Lua keeps them. Neither has ./ in package.path or package.cpath. */
static void test_sandbox(void **state)
{
  (void)state;
  static const char *const probes[][3] = {
    /* name, value under the sandbox, value with full Lua */
    {"os.execute", "nil", "function"},
    {"os.getenv", "nil", "function"},
    {"os.time", "function", "function"},
    {"io", "nil", "table"},
    {"io_module", "false", "true"},
    {"ffi", "false", "true"},
    {"debug", "nil", "table"},
    {"jit.on", "nil", "function"},
    {"jit.status", "function", "function"},
    {"loadstring_b", "nil", "function"},
    {"load_b", "nil", "function"},
    {"load_t", "2", "2"},
    {"loadlib", "nil", "function"},
    {"dofile", "nil", "function"},
    {"c_loaders", "2", "4"},
    {"dot_in_path", "false", "false"},
    {"dot_in_cpath", "false", "false"},
  };
  for (int full = 0; full < 2; full++) {
    logs_clear();
    struct luam_opts o = {.full_lua = full};
    struct luam *lm = new_state("sb",
      "local r = {}\n"
      "r['os.execute'] = type(os.execute)\n"
      "r['os.getenv'] = type(os.getenv)\n"
      "r['os.time'] = type(os.time)\n"
      "r['io'] = type(io)\n"
      "r['io_module'] = tostring(pcall(require, 'io'))\n"
      "r['ffi'] = tostring(pcall(require, 'ffi'))\n"
      "r['debug'] = type(debug)\n"
      "r['jit.on'] = type(jit.on)\n"
      "r['jit.status'] = type(jit.status)\n"
      "local bc = string.dump(function() return 1 end)\n"
      "r['loadstring_b'] = type(loadstring(bc))\n"
      "r['load_b'] = type(load(bc, 'x', 'b'))\n"
      "r['load_t'] = tostring(loadstring('return 1 + 1')())\n"
      "r['loadlib'] = type(package.loadlib)\n"
      "r['dofile'] = type(dofile)\n"
      "r['c_loaders'] = tostring(#package.loaders)\n"
      "r['dot_in_path'] = tostring(package.path:find('./', 1, true) == 1 or package.path:find(';./', 1, true) ~= nil)\n"
      "r['dot_in_cpath'] = tostring(package.cpath:find('./', 1, true) == 1 or package.cpath:find(';./', 1, true) ~= nil)\n"
      "local mod = {}\n"
      "function mod:validate_data_spool(msg)\n"
      "  for k, v in pairs(r) do msg:context_set(VCTX_MESS, k, v) end\n"
      "end\n"
      "msys.registerModule('sb', mod)\n", &o);
    struct fake_msg f;
    fake_init(&f);
    assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
    for (size_t i = 0; i < sizeof probes / sizeof *probes; i++) {
      if (strcmp(ctx(&f, probes[i][0]), probes[i][1 + full]) != 0)
        fail_msg("%s: %s with full_lua = %d, want %s", probes[i][0], ctx(&f, probes[i][0]), full,
                 probes[i][1 + full]);
    }
    fake_done(&f);
    luam_free(lm);
  }
}

static void test_msg_after_return(void **state)
{
  (void)state;
  logs_clear();
  struct luam *lm = new_state("keep",
    "local mod = {}\n"
    "local saved\n"
    "function mod:validate_data_spool(msg)\n"
    "  if saved then saved:context_set(VCTX_MESS, 'x', 'y') end\n"
    "  saved = msg\n"
    "end\n"
    "msys.registerModule('keep', mod)\n", NULL);
  struct fake_msg f;
  fake_init(&f);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL), LUAM_CONT);
  assert_null(ctx(&f, "x"));
  assert_int_equal(logs_count("keep.lua:4: msg used after its hook returned"), 1);
  fake_done(&f);
  luam_free(lm);
}

/* A reload whose script does not compile is refused with script:line and
 * the old scripts keep running; a good reload replaces them. */
static void test_reload(void **state)
{
  (void)state;
  logs_clear();
  struct luam *lm = new_state("v1",
    "local mod = {}\n"
    "function mod:validate_data_spool(msg) msg:context_set(VCTX_MESS, 'ver', '1') end\n"
    "msys.registerModule('v', mod)\n", NULL);
  char *badpath = strdup(write_script("bad", "local mod = {}\n\nfunction mod:validate_data_spool(msg)\n  if then\nend\n"));
  struct luam_script bad = {"bad", badpath};
  struct luam_opts o = {.scripts = &bad, .nscripts = 1};
  char err[512] = "";
  assert_int_equal(luam_check(&o, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "bad.lua:4:"));
  err[0] = 0;
  assert_int_equal(luam_reload(lm, &o, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "bad.lua:4:"));
  struct fake_msg f;
  fake_init(&f);
  call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL);
  assert_string_equal(ctx(&f, "ver"), "1");
  char *goodpath = strdup(write_script("v2",
    "local mod = {}\n"
    "function mod:validate_data_spool(msg) msg:context_set(VCTX_MESS, 'ver', '2') end\n"
    "msys.registerModule('v', mod)\n"));
  struct luam_script good = {"v2", goodpath};
  o.scripts = &good;
  assert_int_equal(luam_reload(lm, &o, err, sizeof err), 0);
  call_hook(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &f, NULL);
  assert_string_equal(ctx(&f, "ver"), "2");
  free(badpath);
  free(goodpath);
  fake_done(&f);
  luam_free(lm);
}

static void test_resolve(void **state)
{
  (void)state;
  write_script("policy", "-- empty\n");
  char out[512];
  assert_int_equal(luam_resolve_source("policy", tmpdir, NULL, out, sizeof out), 0);
  assert_non_null(strstr(out, "/policy.lua"));
  assert_int_equal(luam_resolve_source("examples/binding_by_sender", tmpdir, NULL, out, sizeof out), 0);
  assert_non_null(strstr(out, "/lua/examples/binding_by_sender.lua"));
  assert_int_equal(luam_resolve_source("examples.binding_by_sender", "/nonexistent", NULL, out, sizeof out), 0);
  assert_int_equal(luam_resolve_source("nope/none", tmpdir, NULL, out, sizeof out), -ENOENT);
}

/* ---------------- datasources ---------------- */

static char dbpath[512];

static void make_db(void)
{
  snprintf(dbpath, sizeof dbpath, "%s/creds.db", tmpdir);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db,
    "CREATE TABLE IF NOT EXISTS creds (auth_key TEXT PRIMARY KEY, user TEXT, pass TEXT, mech TEXT);"
    "CREATE TABLE IF NOT EXISTS log (msg TEXT, what TEXT);"
    "INSERT OR REPLACE INTO creds VALUES ('somestring', 'tenant1', 's3cret', 'PLAIN');"
    "INSERT OR REPLACE INTO creds VALUES ('other', 'tenant2', 'pw2', NULL);",
    NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
}

static const char *creds_script =
  "require('msys.db')\n"
  "local mod = {}\n"
  "function mod:outbound_smtp_auth_config(msg, ac, vctx)\n"
  "  local key = msg:context_get(VCTX_MESS, 'outbound_smtp_auth_key')\n"
  "  local row = msys.db.fetch_row('creds', 'SELECT user, pass, mech FROM creds WHERE auth_key = ?', { key })\n"
  "  if row then\n"
  "    msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', row.user)\n"
  "    msg:context_set(VCTX_MESS, 'outbound_smtp_auth_pass', row[2])\n"
  "    if row.mech then msg:context_set(VCTX_MESS, 'outbound_smtp_auth_type', row.mech) end\n"
  "  end\n"
  "end\n"
  "function mod:validate_data_spool(msg)\n"
  "  local okp = pcall(msys.db.query, 'creds', 'SELECT 1', { {} })\n"
  "  msg:context_set(VCTX_MESS, 'bad_param', okp and 'no' or 'yes')\n"
  "  if msys.core.get_now_ts() and pcall(msys.db.query, 'one_row', 'SELECT 1') then\n"
  "    local rows = msys.db.query('one_row', 'SELECT user FROM creds')\n"
  "    msg:context_set(VCTX_MESS, 'max_rows', tostring(#rows))\n"
  "  end\n"
  "  local n = 0\n"
  "  for row in msys.db.query('creds', 'SELECT user FROM creds WHERE auth_key = :k OR auth_key = $j ORDER BY user', { k = 'other', j = 'somestring' }) do\n"
  "    n = n + 1; msg:context_set(VCTX_MESS, 'u' .. n, row.user)\n"
  "  end\n"
  "  local r, err = msys.db.query('creds', 'SELECT nonsense FROM nowhere', {}, { raise_error = false })\n"
  "  msg:context_set(VCTX_MESS, 'soft_err', (r == nil and err) and 'yes' or 'no')\n"
  "  local ok = pcall(msys.db.query, 'creds', 'SELECT nonsense FROM nowhere')\n"
  "  msg:context_set(VCTX_MESS, 'hard_err', ok and 'no' or 'yes')\n"
  "  assert(msys.db.execute('creds', 'INSERT INTO log VALUES (?, ?)', { msg.id, 'spooled' }))\n"
  "end\n"
  "function mod:validate_set_binding(msg) msg:binding('quick') end\n"
  "msys.registerModule('creds', mod)\n";

struct done_rec { int done, result; };
static void on_done(void *arg, int result)
{
  struct done_rec *d = arg;
  d->done = 1;
  d->result = result;
}

static void test_datasource(void **state)
{
  (void)state;
  logs_clear();
  make_db();
  char uri[600], err[256];
  snprintf(uri, sizeof uri, "sqlite:%s", dbpath);
  struct luam_ds_conf dc[2] = {
    {.name = "creds", .uri = uri, .cache_life = 300, .cache_size = 1000},
    {.name = "one_row", .uri = uri, .max_rows = 1},
  };
  struct luam_ds *ds = luam_ds_new(dc, 2, 2, err, sizeof err);
  assert_non_null(ds);
  struct luam_opts o = {.ds = ds};
  struct luam *lm = new_state("creds", creds_script, &o);

  struct fake_msg f;
  fake_init(&f);
  struct done_rec d = {0};
  assert_int_equal(luam_call_auth_config(lm, &f, &fops, "messagesystems.com", on_done, &d), LUAM_PENDING);
  assert_int_equal(luam_pending(lm), 1);
  loop_run(5000, &d.done);
  assert_true(d.done);
  assert_int_equal(d.result, LUAM_CONT);
  assert_string_equal(ctx(&f, "outbound_smtp_auth_user"), "tenant1");
  assert_string_equal(ctx(&f, "outbound_smtp_auth_pass"), "s3cret");
  assert_string_equal(ctx(&f, "outbound_smtp_auth_type"), "PLAIN");
  assert_int_equal(luam_pending(lm), 0);
  unsigned long q = luam_ds_queries(ds);

  /* The same question again: answered from the cache, no yield. */
  struct fake_msg g;
  fake_init(&g);
  struct done_rec d2 = {0};
  assert_int_equal(luam_call_auth_config(lm, &g, &fops, "messagesystems.com", on_done, &d2), LUAM_CONT);
  assert_false(d2.done);
  assert_string_equal(ctx(&g, "outbound_smtp_auth_user"), "tenant1");
  assert_int_equal(luam_ds_queries(ds), q);
  struct luam_stats st;
  luam_get_stats(lm, &st);
  assert_int_equal(st.cache_hits, 1);

  /* Iterator, named parameters, raise_error, execute. */
  struct done_rec d3 = {0};
  struct luam_call c = {.msg = &g, .ops = &fops, .rcpt = -1, .done = on_done, .done_arg = &d3};
  int rc = luam_call(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &c);
  assert_int_equal(rc, LUAM_PENDING);
  loop_run(5000, &d3.done);
  assert_true(d3.done);
  if (!ctx(&g, "u2"))
    logs_dump();
  assert_string_equal(ctx(&g, "u1"), "tenant1");
  assert_string_equal(ctx(&g, "u2"), "tenant2");
  assert_string_equal(ctx(&g, "soft_err"), "yes");
  assert_string_equal(ctx(&g, "hard_err"), "yes");
  assert_string_equal(ctx(&g, "bad_param"), "yes");
  assert_string_equal(ctx(&g, "max_rows"), "1");
  /* the failing queries the script handled are still logged, once per
   * datasource and 10 s, naming the datasource */
  if (nlogs != 1)
    logs_dump();
  assert_int_equal(nlogs, 1);
  assert_int_equal(logs_count("msys.db query failed: datasource creds: "), 1);
  logs_clear();
  sqlite3 *db;
  sqlite3_open(dbpath, &db);
  sqlite3_stmt *stt;
  sqlite3_prepare_v2(db, "SELECT count(*) FROM log WHERE what = 'spooled'", -1, &stt, NULL);
  assert_int_equal(sqlite3_step(stt), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int(stt, 0), 1);
  sqlite3_finalize(stt);
  sqlite3_close(db);

  fake_done(&f);
  fake_done(&g);
  luam_free(lm);
  luam_ds_free(ds);
}

/* A query held by a lock on the database does not stop other calls on
 * the same worker; it completes once the lock is released. */
static void test_datasource_held(void **state)
{
  (void)state;
  logs_clear();
  make_db();
  char uri[600], err[256];
  snprintf(uri, sizeof uri, "sqlite:%s", dbpath);
  struct luam_ds_conf dc = {.name = "creds", .uri = uri, .cache_life = 0, .cache_size = 0};
  struct luam_ds *ds = luam_ds_new(&dc, 1, 2, err, sizeof err);
  assert_non_null(ds);
  struct luam_opts o = {.ds = ds};
  struct luam *lm = new_state("creds", creds_script, &o);

  sqlite3 *locker;
  assert_int_equal(sqlite3_open(dbpath, &locker), SQLITE_OK);
  assert_int_equal(sqlite3_exec(locker, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);

  struct fake_msg held;
  fake_init(&held);
  struct done_rec d = {0};
  assert_int_equal(luam_call_auth_config(lm, &held, &fops, "messagesystems.com", on_done, &d),
                   LUAM_PENDING);
  /* Other messages on this worker go on meanwhile. */
  for (int i = 0; i < 20; i++) {
    struct fake_msg other;
    fake_init(&other);
    assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &other, NULL), LUAM_CONT);
    assert_string_equal(other.binding, "quick");
    fake_done(&other);
  }
  loop_run(300, &d.done);
  assert_false(d.done); /* still held */
  assert_int_equal(luam_pending(lm), 1);

  assert_int_equal(sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(locker);
  loop_run(8000, &d.done);
  assert_true(d.done);
  assert_string_equal(ctx(&held, "outbound_smtp_auth_user"), "tenant1");

  /* Freeing a state with a query in flight is safe. */
  sqlite3_open(dbpath, &locker);
  sqlite3_exec(locker, "BEGIN EXCLUSIVE", NULL, NULL, NULL);
  struct fake_msg late;
  fake_init(&late);
  struct done_rec d2 = {0};
  assert_int_equal(luam_call_auth_config(lm, &late, &fops, "messagesystems.com", on_done, &d2),
                   LUAM_PENDING);
  luam_free(lm);
  sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL);
  sqlite3_close(locker);
  luam_ds_free(ds);
  loop_run(100, NULL); /* anything posted is discarded safely */
  assert_false(d2.done);
  fake_done(&held);
  fake_done(&late);
}

/* A reload while a call waits on a datasource: the call finishes in the
 * old state, new calls use the new scripts, the old state is freed. */
static void test_reload_while_pending(void **state)
{
  (void)state;
  logs_clear();
  make_db();
  char uri[600], err[512];
  snprintf(uri, sizeof uri, "sqlite:%s", dbpath);
  struct luam_ds_conf dc = {.name = "creds", .uri = uri};
  struct luam_ds *ds = luam_ds_new(&dc, 1, 2, err, sizeof err);
  assert_non_null(ds);
  struct luam_opts o = {.ds = ds};
  struct luam *lm = new_state("creds", creds_script, &o);
  sqlite3 *locker;
  assert_int_equal(sqlite3_open(dbpath, &locker), SQLITE_OK);
  assert_int_equal(sqlite3_exec(locker, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
  struct fake_msg f;
  fake_init(&f);
  struct done_rec d = {0};
  assert_int_equal(luam_call_auth_config(lm, &f, &fops, "messagesystems.com", on_done, &d),
                   LUAM_PENDING);
  struct luam_script s2 = {"v2", write_script("v2",
    "local mod = {}\n"
    "function mod:validate_set_binding(msg) msg:binding('after_reload') end\n"
    "msys.registerModule('v2', mod)\n")};
  struct luam_opts o2 = {.scripts = &s2, .nscripts = 1, .ds = ds};
  assert_int_equal(luam_reload(lm, &o2, err, sizeof err), 0);
  assert_false(luam_has_hook(lm, LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG));
  struct fake_msg g;
  fake_init(&g);
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &g, NULL), LUAM_CONT);
  assert_string_equal(g.binding, "after_reload");
  assert_int_equal(sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(locker);
  loop_run(8000, &d.done);
  assert_true(d.done);
  assert_string_equal(ctx(&f, "outbound_smtp_auth_user"), "tenant1");
  assert_int_equal(luam_pending(lm), 0);
  assert_int_equal(nlogs, 0);
  fake_done(&f);
  fake_done(&g);
  luam_free(lm); /* ASan: the retired state was freed when its call ended */
  luam_ds_free(ds);
}

/* Without a post callback (an ingest thread) a query waits in luam_call. */
static void test_datasource_blocking(void **state)
{
  (void)state;
  logs_clear();
  make_db();
  char uri[600], err[512];
  snprintf(uri, sizeof uri, "sqlite:%s", dbpath);
  struct luam_ds_conf dc = {.name = "creds", .uri = uri};
  struct luam_ds *ds = luam_ds_new(&dc, 1, 2, err, sizeof err);
  assert_non_null(ds);
  struct luam_script s = {"creds", write_script("creds", creds_script)};
  struct luam_opts o = {.scripts = &s, .nscripts = 1, .ds = ds};
  struct luam_host blocking = {.log = h_log, .eval = h_eval};
  struct luam *lm = luam_new(&o, &blocking, err, sizeof err);
  assert_non_null(lm);
  for (int i = 0; i < 3; i++) {
    struct fake_msg f;
    fake_init(&f);
    struct done_rec d = {0};
    assert_int_equal(luam_call_auth_config(lm, &f, &fops, "messagesystems.com", on_done, &d), LUAM_CONT);
    assert_false(d.done);
    assert_string_equal(ctx(&f, "outbound_smtp_auth_user"), "tenant1");
    fake_done(&f);
  }
  assert_int_equal(luam_ds_queries(ds), 3); /* no cache configured */
  assert_int_equal(nlogs, 0);
  luam_free(lm);
  luam_ds_free(ds);
}

/* Every bundled example loads and does its job, under the sandbox (the
 * default: full_lua false). */
static void test_examples(void **state)
{
  (void)state;
  logs_clear();
  make_db();
  char uri[600], err[512];
  snprintf(uri, sizeof uri, "sqlite:%s", dbpath);
  struct luam_ds_conf dc = {.name = "creds", .uri = uri, .cache_life = 60, .cache_size = 100};
  struct luam_ds *ds = luam_ds_new(&dc, 1, 2, err, sizeof err);
  assert_non_null(ds);
  const char *names[] = {"tenant_credentials", "binding_by_sender", "log_outcomes"};
  struct luam_script s[3];
  char paths[3][512];
  for (int i = 0; i < 3; i++) {
    snprintf(paths[i], sizeof paths[i], "%s/lua/examples/%s.lua", IMPETUS_SOURCE_ROOT, names[i]);
    s[i].name = names[i];
    s[i].path = paths[i];
  }
  struct luam_opts o = {.scripts = s, .nscripts = 3, .ds = ds, .full_lua = false};
  struct luam *lm = luam_new(&o, &host, err, sizeof err);
  if (!lm)
    fprintf(stderr, "%s\n", err);
  assert_non_null(lm);

  struct fake_msg f;
  fake_init(&f);
  /* tenant_credentials: key from configuration -> SQLite -> context */
  struct done_rec d = {0};
  int rc = luam_call_auth_config(lm, &f, &fops, "messagesystems.com", on_done, &d);
  if (rc == LUAM_PENDING)
    loop_run(5000, &d.done);
  assert_string_equal(ctx(&f, "outbound_smtp_auth_user"), "tenant1");
  assert_string_equal(ctx(&f, "outbound_smtp_auth_pass"), "s3cret");
  /* binding_by_sender */
  assert_int_equal(call_hook(lm, LUAM_HOOK_VALIDATE_SET_BINDING, &f, NULL), LUAM_DONE);
  assert_string_equal(f.binding, "tenant_a");
  /* log_outcomes */
  struct luam_outcome out = {.domain = "messagesystems.com", .binding = "tenant_a",
                             .remote_ip = "127.0.0.1", .code = 250, .text = "250 ok queued"};
  struct luam_call c = {.msg = &f, .ops = &fops, .rcpt = -1, .outcome = &out};
  assert_int_equal(luam_call(lm, LUAM_HOOK_LOG_DELIVERY, &c), LUAM_CONT);
  out.code = 451;
  out.text = "451 try later";
  assert_int_equal(luam_call(lm, LUAM_HOOK_LOG_TRANSIENT_FAILURE, &c), LUAM_CONT);
  out.code = 550;
  out.text = "550 no such user";
  assert_int_equal(luam_call(lm, LUAM_HOOK_LOG_PERMANENT_FAILURE, &c), LUAM_CONT);
  assert_int_equal(logs_count("[log_outcomes] delivered 00/00-12345-0000ABCD to messagesystems.com"), 1);
  assert_int_equal(logs_count("[log_outcomes] tempfail 00/00-12345-0000ABCD"), 1);
  assert_int_equal(logs_count("[log_outcomes] permfail 00/00-12345-0000ABCD"), 1);
  assert_int_equal(logs_count("0 ["), 0);
  fake_done(&f);
  luam_free(lm);
  luam_ds_free(ds);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_seed_example),
    cmocka_unit_test(test_api),
    cmocka_unit_test(test_set_binding),
    cmocka_unit_test(test_auth_fallback),
    cmocka_unit_test(test_error),
    cmocka_unit_test(test_endless_loop),
    cmocka_unit_test(test_time_budget_and_yield),
    cmocka_unit_test(test_memory_bomb),
    cmocka_unit_test(test_jit_option),
    cmocka_unit_test(test_sandbox),
    cmocka_unit_test(test_msg_after_return),
    cmocka_unit_test(test_reload),
    cmocka_unit_test(test_resolve),
    cmocka_unit_test(test_datasource),
    cmocka_unit_test(test_datasource_held),
    cmocka_unit_test(test_datasource_blocking),
    cmocka_unit_test(test_reload_while_pending),
    cmocka_unit_test(test_examples),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
