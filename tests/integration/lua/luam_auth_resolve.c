/* luam_auth_resolve: what the engine will do before AUTH, as a test tool.
 * Loads a configuration, runs every outbound_smtp_auth_config hook for a
 * message to DOMAIN (through luam_conf / luam_spool glue, datasources in
 * a real pool, answers delivered through a tiny event loop), then prints
 * the effective "TYPE USER PASS": each from the message context if set,
 * else the configuration for the domain's scope. Test tool only (prints
 * the password so the test can hand it to smtpc_drive).
 *
 * usage: luam_auth_resolve CONF DOMAIN [x-context key=value ...] */
#include "buf.h"
#include "clock.h"
#include "conf.h"
#include "ctx.h"
#include "luam.h"
#include "luam_conf.h"
#include "luam_ds.h"
#include "luam_spool.h"

#include <poll.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int efd;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void (*q_fn[64])(void *);
static void *q_arg[64];
static int qn;

static void post(void *arg, void (*fn)(void *), void *fn_arg)
{
  (void)arg;
  pthread_mutex_lock(&mu);
  q_fn[qn] = fn;
  q_arg[qn++] = fn_arg;
  pthread_mutex_unlock(&mu);
  uint64_t one = 1;
  if (write(efd, &one, sizeof one) < 0)
    abort();
}

static void on_log(void *arg, int level, const char *script, const char *text)
{
  (void)arg;
  fprintf(stderr, "log %d [%s] %s\n", level, script ? script : "-", text);
}

static int done, result;
static void on_done(void *arg, int r)
{
  (void)arg;
  done = 1;
  result = r;
}

static const char *eval(struct conf *c, const char *domain, const char *opt, struct buf *b)
{
  buf_reset(b);
  if (conf_eval(c, NULL, NULL, domain, opt, CONF_EVAL_SHOW_SECRETS, b) < 0)
    return "-";
  buf_append(b, "", 1);
  const char *s = (const char *)buf_head(b);
  return strcmp(s, "(unset)") == 0 ? "-" : s;
}

int main(int argc, char **argv)
{
  if (argc < 3) {
    fprintf(stderr, "usage: luam_auth_resolve CONF DOMAIN [key=value ...]\n");
    return 2;
  }
  efd = eventfd(0, EFD_CLOEXEC);
  struct conf_error ce;
  struct conf *c = conf_load(argv[1], &ce);
  if (!c) {
    fprintf(stderr, "%s:%u: %s\n", ce.file, ce.line, ce.msg);
    return 1;
  }
  char err[512];
  struct luam_conf lc;
  if (luam_conf_load(&lc, c, NULL, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  struct luam_ds *ds = luam_ds_new(lc.ds, lc.nds, 2, err, sizeof err);
  if (!ds) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  lc.opts.ds = ds;
  struct luam_conf_eval *ev = luam_conf_eval_new(c);
  struct luam_host host = {.arg = ev, .log = on_log, .eval = luam_conf_eval, .post = post};
  struct luam *lm = luam_new(&lc.opts, &host, err, sizeof err);
  if (!lm) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  char rcpt[300];
  snprintf(rcpt, sizeof rcpt, "user@%s", argv[2]);
  const char *rcpts[] = {rcpt};
  struct spool_msg m = {.id = 42, .sender = "sender@example.net", .rcpt = rcpts, .nrcpt = 1};
  m.mess = ctx_new();
  m.conn = ctx_new();
  for (int i = 3; i < argc; i++) { /* x-context: key=value */
    char *eq = strchr(argv[i], '=');
    if (eq) {
      *eq = 0;
      ctx_set(m.mess, argv[i], eq + 1);
    }
  }
  struct luam_spool_msg h = {.msg = &m, .conf = c};
  int rc = luam_call_auth_config(lm, &h, &luam_spool_ops, argv[2], on_done, NULL);
  if (rc == LUAM_PENDING) {
    uint64_t deadline = clock_mono_ns() + 10000000000ull;
    while (!done && clock_mono_ns() < deadline) {
      struct pollfd p = {.fd = efd, .events = POLLIN};
      if (poll(&p, 1, 100) <= 0)
        continue;
      uint64_t v;
      if (read(efd, &v, sizeof v) < 0)
        break;
      pthread_mutex_lock(&mu);
      int n = qn;
      void (*fns[64])(void *);
      void *args[64];
      memcpy(fns, q_fn, sizeof fns);
      memcpy(args, q_arg, sizeof args);
      qn = 0;
      pthread_mutex_unlock(&mu);
      for (int i = 0; i < n; i++)
        fns[i](args[i]);
    }
    if (!done) {
      fprintf(stderr, "hook did not finish\n");
      return 1;
    }
    fprintf(stderr, "hook waited for a datasource (result %d)\n", result);
  }
  struct buf b = {0};
  const char *keys[3] = {"outbound_smtp_auth_type", "outbound_smtp_auth_user",
                         "outbound_smtp_auth_pass"};
  for (int i = 0; i < 3; i++) {
    const char *v = ctx_get(m.mess, keys[i]);
    printf("%s%s", i ? " " : "", v ? v : eval(c, argv[2], keys[i], &b));
  }
  printf("\n");
  buf_done(&b, 1);
  ctx_free(m.mess);
  ctx_free(m.conn);
  free((void *)(uintptr_t)m.binding);
  luam_free(lm);
  luam_ds_free(ds);
  luam_conf_eval_free(ev);
  luam_conf_done(&lc);
  conf_unref(c);
  return 0;
}
