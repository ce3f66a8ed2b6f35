/* test_luam_glue: luam driven by a real configuration snapshot (scriptlet,
 * Datasource and outbound_smtp_auth options from the seed) and real message
 * contexts (ctx.h) through luam_spool_ops. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "conf.h"
#include "ctx.h"
#include "luam.h"
#include "luam_conf.h"
#include "luam_ds.h"
#include "luam_spool.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static char logbuf[8192];

static void h_log(void *arg, int level, const char *script, const char *text)
{
  (void)arg;
  size_t l = strlen(logbuf);
  snprintf(logbuf + l, sizeof logbuf - l, "%d [%s] %s\n", level, script ? script : "-", text);
}

static void write_file(const char *name, const char *text)
{
  char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup(void **state)
{
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/test_luam_glue.XXXXXX");
  assert_non_null(mkdtemp(tmpdir));
  char sub[300];
  snprintf(sub, sizeof sub, "%s/lua", tmpdir);
  assert_int_equal(mkdir(sub, 0700), 0);
  return 0;
}

static int teardown(void **state)
{
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  int rc = system(cmd);
  (void)rc;
  return 0;
}

static void test_conf_and_spool_msg(void **state)
{
  (void)state;
  char db[400];
  snprintf(db, sizeof db, "%s/creds.db", tmpdir);
  sqlite3 *s;
  assert_int_equal(sqlite3_open(db, &s), SQLITE_OK);
  assert_int_equal(sqlite3_exec(s,
    "CREATE TABLE creds (auth_key TEXT PRIMARY KEY, user TEXT, pass TEXT, mech TEXT);"
    "INSERT INTO creds VALUES ('someotherstring', 'sp_tenant', 'sp_pw', NULL);", NULL, NULL, NULL),
    SQLITE_OK);
  sqlite3_close(s);

  write_file("lua/policy.lua",
    "local mod = {}\n"
    "function mod:outbound_smtp_auth_config(msg, ac, vctx)\n"
    "  print('NOTICE: outbound_smtp_auth_config Lua hook called');\n"
    "  print('NOTICE: msg:['.. tostring(msg) ..']')\n"
    "  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', 'foo')\n"
    "  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_pass', 'bar')\n"
    "end\n"
    "function mod:validate_set_binding(msg)\n"
    "  assert(msg:binding('nosuch') == nil)\n"
    "  msg:binding('b1')\n"
    "  msg:context_set(VCTX_MESS, 'conns', msys.config('eval', 'binding', 'b1', 'domain', 'messagesystems.com', 'max_outbound_connections'))\n"
    "  msg:context_set(VCTX_MESS, 'pass_seen', msys.config('eval', 'domain', 'messagesystems.com', 'outbound_smtp_auth_pass') or 'nil')\n"
    "end\n"
    "msys.registerModule('policy', mod)\n");
  char conf_text[2048];
  snprintf(conf_text, sizeof conf_text,
    "outbound_smtp_auth { }\n"
    "Keep_Message_Dicts_In_Memory = true\n"
    "Datasource \"creds\" { uri = ( \"sqlite:%s\" ) cache_life = 300 cache_size = 1000 }\n"
    "Binding \"b1\" { Max_Outbound_Connections = 15 }\n"
    "Domain \"messagesystems.com\" {\n"
    "  Outbound_SMTP_AUTH_Type = \"LOGIN\"\n"
    "  Outbound_SMTP_AUTH_User = \"msys\"\n"
    "  Outbound_SMTP_AUTH_Pass = \"msys\"\n"
    "  Outbound_SMTP_AUTH_Key = \"somestring\"\n"
    "}\n"
    "Domain \"sparkpost.com\" {\n"
    "  Outbound_SMTP_AUTH_Type = \"PLAIN\"\n"
    "  Outbound_SMTP_AUTH_user = \"sparkpost\"\n"
    "  Outbound_SMTP_AUTH_pass = \"sparkpost\"\n"
    "  Outbound_SMTP_AUTH_Key = \"someotherstring\"\n"
    "}\n"
    "scriptlet \"scriptlet\" {\n"
    "  script \"policy\" { source = \"lua/policy\" }\n"
    "  script \"tenant_credentials\" { source = \"examples/tenant_credentials\" }\n"
    "}\n", db);
  write_file("impetus.conf", conf_text);
  char cpath[400];
  snprintf(cpath, sizeof cpath, "%s/impetus.conf", tmpdir);
  struct conf_error ce;
  struct conf *c = conf_load(cpath, &ce);
  if (!c)
    fprintf(stderr, "%s:%u: %s\n", ce.file, ce.line, ce.msg);
  assert_non_null(c);

  struct luam_conf lc;
  char err[512];
  assert_int_equal(luam_conf_load(&lc, c, NULL, err, sizeof err), 0);
  assert_int_equal(lc.opts.nscripts, 2);
  assert_string_equal(lc.scripts[0].name, "policy");
  assert_non_null(strstr(lc.scripts[0].path, "/lua/policy.lua"));
  assert_non_null(strstr(lc.scripts[1].path, "lua/examples/tenant_credentials.lua"));
  assert_int_equal(lc.nds, 1);
  assert_int_equal(lc.ds[0].cache_life, 300);
  assert_int_equal(lc.ds[0].cache_size, 1000);
  assert_int_equal(lc.ds[0].max_rows, 100); /* Momentum's default */

  struct luam_ds *ds = luam_ds_new(lc.ds, lc.nds, 2, err, sizeof err);
  assert_non_null(ds);
  lc.opts.ds = ds;
  struct luam_conf_eval *ev = luam_conf_eval_new(c);
  struct luam_host host = {.arg = ev, .log = h_log, .eval = luam_conf_eval}; /* blocking mode */
  struct luam *lm = luam_new(&lc.opts, &host, err, sizeof err);
  if (!lm)
    fprintf(stderr, "%s\n", err);
  assert_non_null(lm);

  /* A message as the spool hands it over, dictionaries in memory. */
  const char *rcpts[] = {"carol@sparkpost.com"};
  struct spool_msg m = {.id = 0x1234, .sender = "alice@example.net", .rcpt = rcpts, .nrcpt = 1,
                        .body_size = 99};
  m.mess = ctx_new();
  m.conn = ctx_new();
  struct luam_spool_msg h = {.msg = &m, .conf = c};

  /* Seed example first, then tenant_credentials: the key of sparkpost.com's
   * scope finds sp_tenant in SQLite and overrides foo/bar. */
  assert_int_equal(luam_call_auth_config(lm, &h, &luam_spool_ops, "sparkpost.com", NULL, NULL),
                   LUAM_CONT);
  assert_string_equal(ctx_get(m.mess, "outbound_smtp_auth_user"), "sp_tenant");
  assert_string_equal(ctx_get(m.mess, "outbound_smtp_auth_pass"), "sp_pw");
  assert_true(ctx_key_is_secret("outbound_smtp_auth_pass", 23));
  assert_non_null(strstr(logbuf, "2 [policy] NOTICE: outbound_smtp_auth_config Lua hook called"));
  char idbuf[SPOOL_ID_LEN + 1];
  char want[100];
  snprintf(want, sizeof want, "NOTICE: msg:[%s]", spool_msg_id_str(&m, idbuf));
  assert_non_null(strstr(logbuf, want));

  /* messagesystems.com's key has no row: the seed's foo/bar stay. */
  struct spool_msg m2 = m;
  m2.mess = ctx_new();
  m2.conn = ctx_new();
  struct luam_spool_msg h2 = {.msg = &m2, .conf = c};
  assert_int_equal(luam_call_auth_config(lm, &h2, &luam_spool_ops, "messagesystems.com", NULL, NULL),
                   LUAM_CONT);
  assert_string_equal(ctx_get(m2.mess, "outbound_smtp_auth_user"), "foo");

  /* validate_set_binding through conf: unknown binding refused, b1 set;
   * msys.config evaluates with fallback; passwords come back masked. */
  assert_int_equal(luam_call(lm, LUAM_HOOK_VALIDATE_SET_BINDING,
                             &(struct luam_call){.msg = &h2, .ops = &luam_spool_ops, .rcpt = -1}),
                   LUAM_CONT);
  assert_string_equal(m2.binding, "b1");
  assert_string_equal(ctx_get(m2.mess, "conns"), "15");
  assert_string_not_equal(ctx_get(m2.mess, "pass_seen"), "msys");
  assert_null(strstr(logbuf, "0 ["));

  luam_free(lm);
  luam_ds_free(ds);
  luam_conf_eval_free(ev);
  luam_conf_done(&lc);
  spool_msg_free(NULL);
  ctx_free(m.mess);
  ctx_free(m.conn);
  ctx_free(m2.mess);
  ctx_free(m2.conn);
  free((void *)(uintptr_t)m2.binding);
  conf_unref(c);
}

/* The ingest path: spool's on_ingest callback runs validate_data_spool and
 * validate_set_binding through luam (blocking mode), reading headers from
 * the queue file and setting contexts that reach the metadata. */
struct ingest_env {
  struct spool *sp;
  struct luam *lm;
  struct conf *conf;
  struct spool_msg *got;
  int rejected;
};

static int on_ingest(void *arg, struct spool_msg *msg, char *reason, size_t reason_len)
{
  struct ingest_env *env = arg;
  struct luam_spool_msg h = {.sp = env->sp, .msg = msg, .conf = env->conf};
  struct luam_call c = {.msg = &h, .ops = &luam_spool_ops, .rcpt = -1};
  luam_call(env->lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &c);
  luam_call(env->lm, LUAM_HOOK_VALIDATE_SET_BINDING, &c);
  luam_spool_msg_done(&h);
  if (h.code >= 500) {
    snprintf(reason, reason_len, "%d %s", h.code, h.text);
    env->rejected++;
    return -EPERM;
  }
  return 0;
}

static void on_msg(void *arg, struct spool_msg *msg)
{
  struct ingest_env *env = arg;
  if (env->got)
    spool_msg_free(env->got);
  env->got = msg;
}

static void test_ingest_hooks(void **state)
{
  (void)state;
  memset(logbuf, 0, sizeof logbuf);
  write_file("lua/ingest.lua",
    "local mod = {}\n"
    "function mod:validate_data_spool(msg, ac, vctx)\n"
    "  local subj = msg:header('Subject')[1]\n"
    "  if subj == 'spam' then msg:code(550, '5.7.1 no spam') return msys.core.VALIDATE_DONE end\n"
    "  msg:context_set(VCTX_MESS, 'subject_seen', subj)\n"
    "  msg:context_set(VCTX_MESS, 'folded', msg:header('x-folded')[1])\n"
    "  msg:context_set(VCTX_MESS, 'rcpt', msg:rcptto())\n"
    "end\n"
    "function mod:validate_set_binding(msg)\n"
    "  if msg:mailfrom():match('@tenant%-a%.example$') then msg:binding('b1') end\n"
    "end\n"
    "msys.registerModule('ingest', mod)\n");
  write_file("ingest.conf",
    "Binding \"b1\" { }\n"
    "scriptlet \"scriptlet\" { script \"ingest\" { source = \"lua/ingest\" } }\n");
  char cpath[400], spooldir[400], err[512];
  snprintf(cpath, sizeof cpath, "%s/ingest.conf", tmpdir);
  snprintf(spooldir, sizeof spooldir, "%s/spool", tmpdir);
  struct conf_error ce;
  struct conf *c = conf_load(cpath, &ce);
  assert_non_null(c);
  struct luam_conf lc;
  assert_int_equal(luam_conf_load(&lc, c, NULL, err, sizeof err), 0);
  struct luam_conf_eval *ev = luam_conf_eval_new(c);
  struct luam_host host = {.arg = ev, .log = h_log, .eval = luam_conf_eval};
  struct ingest_env env = {.conf = c};
  env.lm = luam_new(&lc.opts, &host, err, sizeof err);
  assert_non_null(env.lm);
  struct spool_params p = {.spoolbase = spooldir, .sync = SPOOL_SYNC_NONE, .on_msg = on_msg,
                           .on_ingest = on_ingest, .arg = &env};
  env.sp = spool_open(&p, err, sizeof err);
  if (!env.sp)
    fprintf(stderr, "spool_open: %s\n", err);
  assert_non_null(env.sp);

  write_file("spool/pickup/.m1",
    "x-sender: alice@tenant-a.example\r\n"
    "x-receiver: bob@example.com\r\n"
    "Subject: hello there\r\n"
    "X-Folded: part one\r\n"
    "  part two\r\n"
    "\r\n"
    "Subject: not a header\r\n");
  char from[500], to[500];
  snprintf(from, sizeof from, "%s/spool/pickup/.m1", tmpdir);
  snprintf(to, sizeof to, "%s/spool/pickup/m1", tmpdir);
  assert_int_equal(rename(from, to), 0);
  long n = 0;
  for (int i = 0; i < 50 && n == 0; i++)
    n = spool_ingest(env.sp, 100);
  assert_int_equal(n, 1);
  assert_non_null(env.got);
  if (!env.got->mess)
    assert_int_equal(spool_load_ctx(env.sp, env.got), 0);
  assert_string_equal(ctx_get(env.got->mess, "subject_seen"), "hello there");
  assert_string_equal(ctx_get(env.got->mess, "folded"), "part one  part two");
  assert_string_equal(ctx_get(env.got->mess, "rcpt"), "bob@example.com");
  assert_string_equal(env.got->binding, "b1");

  write_file("spool/pickup/.m2",
    "x-sender: eve@example.org\r\nx-receiver: bob@example.com\r\nSubject: spam\r\n\r\nbuy\r\n");
  snprintf(from, sizeof from, "%s/spool/pickup/.m2", tmpdir);
  snprintf(to, sizeof to, "%s/spool/pickup/m2", tmpdir);
  assert_int_equal(rename(from, to), 0);
  for (int i = 0; i < 50 && env.rejected == 0; i++)
    spool_ingest(env.sp, 100);
  assert_int_equal(env.rejected, 1);
  assert_null(strstr(logbuf, "0 ["));

  spool_msg_free(env.got);
  spool_close(env.sp);
  luam_free(env.lm);
  luam_conf_eval_free(ev);
  luam_conf_done(&lc);
  conf_unref(c);
}

static struct conf *load_text(const char *text)
{
  write_file("budgets.conf", text);
  char cpath[400];
  snprintf(cpath, sizeof cpath, "%s/budgets.conf", tmpdir);
  struct conf_error ce;
  struct conf *c = conf_load(cpath, &ce);
  if (!c)
    fprintf(stderr, "%s:%u: %s\n", ce.file, ce.line, ce.msg);
  return c;
}

/* The scriptlet stanza's budgets reach luam_opts: defaults, set values,
 * the last of repeated stanzas, refusal of unusable values. */
static void test_budgets(void **state)
{
  (void)state;
  write_file("lua/noop.lua", "local m = {}\nfunction m:validate_data_spool(msg) end\n"
                             "msys.registerModule('noop', m)\n");
  struct luam_conf lc;
  char err[512] = "";
  struct conf *c = load_text("scriptlet \"scriptlet\" { script \"noop\" { source = \"lua/noop\" } }\n");
  assert_non_null(c);
  assert_int_equal(luam_conf_load(&lc, c, NULL, err, sizeof err), 0);
  assert_int_equal(lc.opts.max_instructions, LUAM_DEFAULT_MAX_INSTRUCTIONS);
  assert_int_equal(lc.opts.max_time_ms, LUAM_DEFAULT_MAX_TIME_MS);
  assert_int_equal(lc.opts.max_memory, LUAM_DEFAULT_MAX_MEMORY);
  assert_false(lc.opts.jit);
  luam_conf_done(&lc);
  conf_unref(c);

  c = load_text("scriptlet \"scriptlet\" { max_hook_instructions = 50000 max_state_memory = 2M\n"
                "  script \"noop\" { source = \"lua/noop\" } }\n"
                "scriptlet \"scriptlet\" { max_hook_time_ms = 20 jit = true max_state_memory = 3M }\n");
  assert_non_null(c);
  assert_int_equal(luam_conf_load(&lc, c, NULL, err, sizeof err), 0);
  assert_int_equal(lc.opts.max_instructions, 50000);
  assert_int_equal(lc.opts.max_time_ms, 20);
  assert_int_equal(lc.opts.max_memory, 3u << 20);
  assert_true(lc.opts.jit);
  /* a state honours them: an endless loop stops at the configured budget */
  struct luam_host h = {.log = h_log};
  logbuf[0] = 0;
  write_file("lua/noop.lua", "local m = {}\nfunction m:validate_data_spool(msg)\n"
                             "  local t = 0\n  while t >= 0 do t = t + 1 end\nend\n"
                             "msys.registerModule('noop', m)\n");
  lc.opts.jit = false; /* the interpreter: compiled loops escape the budget */
  struct luam *lm = luam_new(&lc.opts, &h, err, sizeof err);
  assert_non_null(lm);
  struct luam_call call = {.rcpt = -1};
  assert_int_equal(luam_call(lm, LUAM_HOOK_VALIDATE_DATA_SPOOL, &call), LUAM_CONT);
  assert_non_null(strstr(logbuf, "noop.lua:4: hook exceeded its budget (50000 instructions or 20 ms)"));
  luam_free(lm);
  luam_conf_done(&lc);
  conf_unref(c);

  c = load_text("scriptlet \"scriptlet\" { max_hook_time_ms = 0 }\n");
  assert_non_null(c);
  assert_int_equal(luam_conf_load(&lc, c, NULL, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "max_hook_time_ms"));
  conf_unref(c);
  c = load_text("scriptlet \"scriptlet\" { max_state_memory = 100K }\n");
  assert_non_null(c);
  assert_int_equal(luam_conf_load(&lc, c, NULL, err, sizeof err), -EINVAL);
  conf_unref(c);
  /* the options belong to the scriptlet stanza only */
  assert_null(load_text("max_hook_time_ms = 10\n"));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_conf_and_spool_msg),
    cmocka_unit_test(test_ingest_hooks),
    cmocka_unit_test(test_budgets),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
