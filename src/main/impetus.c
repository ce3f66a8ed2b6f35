/* impetus.c: the daemon's entry point. Parses the command line and hands
 * over to the engine (or answers --check-config / --eval-config /
 * --dump-options itself, from the configuration layer).
 * Main thread only. */
#include "adaptive_conf.h"
#include "buf.h"
#include "conf.h"
#include "dkim_conf.h"
#include "ctlcmd.h"
#include "engine.h"
#include "impetus_build.h"
#include "paths.h"
#include "policy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOCK_NAME "impetus.lock"

static void usage(FILE *out)
{
  fprintf(out,
          "usage: impetus [-c FILE]\n"
          "       impetus --check-config [-c FILE]\n"
          "       impetus --eval-config [-c FILE] [--show-secrets] [binding_group G] [binding B]\n"
          "               [domain D] OPTION\n"
          "       impetus --dump-options\n"
          "       impetus --version\n"
          "\n"
          "Runs in the foreground until SIGTERM or SIGINT (graceful stop, exit 0).\n"
          "SIGHUP reloads the configuration, SIGUSR1 reopens the logs. The console is\n"
          "impetus-ctl (control socket: Control_Listener, default <Spoolbase>/impetus.sock);\n"
          "Metrics_Listener = \"host:port\" serves Prometheus metrics. Docs: docs/console.md.\n"
          "Without -c the bundled default configuration is used.\n");
}

static struct conf *load_or_report(const char *path)
{
  struct conf_error err;
  struct conf *c = conf_load(path, &err);
  if (!c) {
    char text[sizeof(err.file) + sizeof(err.msg) + 32];
    fprintf(stderr, "%s\n", conf_error_str(&err, text, sizeof(text)));
  }
  return c;
}

/* --eval-config arguments: [binding_group G] [binding B] [domain D] OPTION
 * (parsed by ctlcmd, as the console's `config eval`) */
static int eval_config(const char *path, bool show_secrets, int argc, char **argv)
{
  struct ctlcmd_eval e;
  char why[256];
  if (ctlcmd_eval_args(argc, argv, &e, why, sizeof why) < 0) {
    fprintf(stderr, "impetus: --eval-config: %s\n", why);
    return 2;
  }
  struct conf *c = load_or_report(path);
  if (!c)
    return 1;
  struct buf out = {0};
  int r = conf_eval(c, e.group, e.binding, e.domain, e.option, show_secrets ? CONF_EVAL_SHOW_SECRETS : 0, &out);
  buf_append(&out, "", 1);
  if (r < 0)
    fprintf(stderr, "impetus: %s\n", (const char *)buf_head(&out));
  else
    printf("%s\n", (const char *)buf_head(&out));
  buf_done(&out, show_secrets);
  conf_unref(c);
  return r < 0 ? 1 : 0;
}

/* One engine per spool: an exclusive flock on <Spoolbase>/impetus.lock,
 * taken before the engine reads or creates anything else, held (the fd
 * stays open, inherited by nothing: O_CLOEXEC) until the process exits.
 * The kernel releases it when the holder dies, so a SIGKILLed engine
 * never blocks a restart. The file holds the holder's pid, for the
 * message. Returns 0, or 1 after printing why (the caller exits 1). */
static int lock_spool(const char *path)
{
  struct conf *c = load_or_report(path);
  if (!c)
    return 1;
  char lock[4200];
  const char *base = conf_str(conf_global(c), CONF_SPOOLBASE);
  snprintf(lock, sizeof lock, "%s/" LOCK_NAME, base ? base : ".");
  /* a fresh machine: the spool directory is created here, as spool_open
   * would (0700; the parents 0755, so a dropped User can reach it) */
  if (base && access(base, F_OK) != 0) {
    char d[4096];
    snprintf(d, sizeof d, "%s", base);
    for (char *p = d + 1; *p; p++)
      if (*p == '/') {
        *p = '\0';
        mkdir(d, 0755);
        *p = '/';
      }
    mkdir(d, 0700);
  }
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    fprintf(stderr, "impetus: spool %s: cannot open the lock file %s: %s\n", base, lock,
            strerror(errno));
    conf_unref(c);
    return 1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    int e = errno;
    char pid[32] = "";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    pid[n > 0 ? n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    if (e == EWOULDBLOCK)
      fprintf(stderr,
              "impetus: spool %s is in use by another impetus (pid %s, lock %s); "
              "one engine per spool: not started\n",
              base, pid[0] ? pid : "unknown", lock);
    else
      fprintf(stderr, "impetus: spool %s: cannot lock %s: %s\n", base, lock, strerror(e));
    close(fd);
    conf_unref(c);
    return 1;
  }
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
    /* the lock holds without the pid; only the message loses it */
  }
  conf_unref(c);
  return 0; /* fd stays open: the lock lives as long as this process */
}

int main(int argc, char **argv)
{
  const char *config = NULL;
  enum { RUN, CHECK, EVAL, DUMP } mode = RUN;
  bool show_secrets = false;
  int rest = argc; /* first positional argument (eval) */
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-c") && i + 1 < argc) {
      config = argv[++i];
    } else if (!strcmp(argv[i], "--check-config")) {
      mode = CHECK;
    } else if (!strcmp(argv[i], "--eval-config")) {
      mode = EVAL;
    } else if (!strcmp(argv[i], "--dump-options")) {
      mode = DUMP;
    } else if (!strcmp(argv[i], "--show-secrets")) {
      show_secrets = true;
    } else if (!strcmp(argv[i], "--version")) {
      printf("impetus %s\n", IMPETUS_VERSION);
      return 0;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else if (mode == EVAL && argv[i][0] != '-') {
      rest = i;
      break;
    } else {
      usage(stderr);
      return 2;
    }
  }
  const char *path = config ? config : paths_config();
  switch (mode) {
  case CHECK: {
    struct conf *c = load_or_report(path);
    struct conf_error ce;
    char msg[sizeof ce.file + sizeof ce.msg + 32];
    int bad = c && conf_check_environment(c, &ce) < 0; /* files, addresses */
    if (bad)
      fprintf(stderr, "%s\n", conf_error_str(&ce, msg, sizeof msg));
    else if (c && (bad = policy_check(c, ce.msg, sizeof ce.msg) < 0)) /* the Lua scripts */
      fprintf(stderr, "%s\n", ce.msg);
    else if (c && (bad = adaptive_conf_check(c, ce.msg, sizeof ce.msg) < 0))
      fprintf(stderr, "%s\n", ce.msg);
    if (c && !bad) { /* DKIM keys are part of the configuration: a bad one fails the check */
      struct dkim_signers *ds = dkim_signers_new(c, &ce);
      if (!ds) {
        fprintf(stderr, "%s\n", conf_error_str(&ce, msg, sizeof msg));
        bad = 1;
      }
      dkim_signers_free(ds);
    }
    if (c && !bad)
      printf("impetus: configuration %s is valid\n", path);
    conf_unref(c);
    return c && !bad ? 0 : 1;
  }
  case EVAL:
    return eval_config(path, show_secrets, argc - rest, argv + rest);
  case DUMP: {
    struct buf out = {0};
    conf_dump_markdown(&out);
    fwrite(buf_head(&out), 1, buf_avail(&out), stdout);
    buf_done(&out, 0);
    return 0;
  }
  case RUN:
  default:
    if (lock_spool(path) != 0)
      return 1;
    return engine_main(path);
  }
}
