/* engine.c owns the daemon's run loop: start-up (configuration, logs,
 * spool and recovery, worker threads, ingest), signals (SIGTERM/SIGINT
 * graceful stop, SIGHUP reload, SIGUSR1 log reopen) and shutdown.
 * Main thread only; the spool's ingest thread enters through on_msg. The
 * run's state (struct engine_run, with the workers' engine_shared) belongs to
 * engine_main and reaches the spool's callbacks as their arg. */
#include "engine.h"

#include "adaptive.h"
#include "adaptive_conf.h"
#include "adaptive_queue.h"
#include "clock.h"
#include "cluster.h"
#include "conf.h"
#include "counters.h"
#include "ctl.h"
#include "impetus_build.h"
#include "listener.h"
#include "logs.h"
#include "sdnotify.h"
#include "panic.h"
#include "policy.h"
#include "priv.h"
#include "signing.h"
#include "spool.h"
#include "throttle.h"
#include "tlskeys.h"
#include "worker.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STOP_DEADLINE_MS 10000u /* in-flight sessions may finish this long */

/* One run of the daemon: made by engine_main, which owns it until the
 * workers are joined; the spool's callbacks get it as their `arg`, so no
 * state lives at file scope. */
struct engine_run {
  struct engine_shared sh;
  bool recovering; /* spool_recover is handing messages over (no R records) */
};

static void on_msg(void *arg, struct spool_msg *msg)
{
  struct engine_run *run = arg;
  struct engine_shared *sh = &run->sh;
  if (run->recovering) { /* Lua validate_set_binding again (issue 8) */
    int rc = policy_recovered(sh->policy, sh->spool, msg);
    if (rc < 0)
      logs_panic(sh->handover_log, clock_wall_ms(), "lua", "recovery: binding change not saved: %s",
                 strerror(-rc));
  }
  worker_submit_msg(sh, msg, !run->recovering);
}

/* After each batch of on_msg calls: its R records leave in one hand-over,
 * then its messages go to the workers. */
static void on_batch_end(void *arg)
{
  struct engine_run *run = arg;
  worker_submit_flush(&run->sh);
}

static int on_ingest(void *arg, struct spool_msg *msg, char *reason, size_t reason_len)
{
  struct engine_run *run = arg;
  return policy_ingest(run->sh.policy, msg, reason, reason_len);
}

static void on_bad(void *arg, const char *name, const char *reason)
{
  struct engine_shared *sh = &((struct engine_run *)arg)->sh;
  logs_panic(sh->ingest_log, clock_wall_ms(), "spool", "%s%s%s", name && *name ? name : "",
             name && *name ? ": " : "", reason);
  logs_writer_flush(sh->ingest_log);
}

static struct logs *open_logs(struct conf *c)
{
  struct logs_config lc = {0};
  const struct conf_stanza *ec = conf_stanza_first(c, "ec_logger");
  if (ec) {
    const struct conf_view *v = conf_stanza_view(ec);
    lc.mainlog = conf_str(v, CONF_EC_LOGGER_MAINLOG);
    lc.paniclog = conf_str(v, CONF_EC_LOGGER_PANICLOG);
    lc.jsonlog = conf_str(v, CONF_EC_LOGGER_JSONLOG);
    lc.mainlog_mode = (unsigned)conf_int(v, CONF_EC_LOGGER_MAINLOG_MODE);
    lc.paniclog_mode = (unsigned)conf_int(v, CONF_EC_LOGGER_PANICLOG_MODE);
    lc.jsonlog_mode = lc.mainlog_mode;
  }
  const struct conf_stanza *bl = conf_stanza_first(c, "bounce_logger");
  if (bl) {
    const struct conf_view *v = conf_stanza_view(bl);
    lc.bouncelog = conf_str(v, CONF_BOUNCE_LOGGER_BOUNCELOG);
    lc.bouncelog_mode = (unsigned)conf_int(v, CONF_BOUNCE_LOGGER_BOUNCELOG_MODE);
  }
  char err[512];
  struct logs *l = logs_open(&lc, err, sizeof err);
  if (l == NULL)
    util_fatal("logs: %s", err);
  return l;
}

/* Whether a log or socket directory may be given to User: only one named
 * after impetus, or directly inside one (/var/log/impetus,
 * /var/tmp/impetus/log); never a shared one such as /var/log or /tmp. */
static bool impetus_dir(const char *d)
{
  const char *slash = strrchr(d, '/');
  if (strstr(slash ? slash + 1 : d, "impetus"))
    return true;
  if (slash == NULL || slash == d)
    return false;
  const char *p = slash;
  while (p > d && p[-1] != '/')
    p--;
  return memmem(p, (size_t)(slash - p), "impetus", 7) != NULL;
}

static void tls_unreadable(void *arg, const char *path, const char *why)
{
  logs_panic(arg, clock_wall_ms(), "tls", "cannot read %s at start-up (%s): the workers will try "
             "it when first used", path, why);
}

static const char *gname(const char *configured)
{
  if (configured)
    return configured;
  const struct group *gr = getgrgid(getgid());
  return gr ? gr->gr_name : "?";
}

/* Started as root: hand the spool, the logs and the control socket to
 * User/Group (default impetus) and drop root for good. Called after
 * everything that needs root is open (logs, spool, control and metrics
 * sockets) and before Lua or any worker (network) starts. Root without
 * the default user is a start-up error unless User = "root" is explicit. */
static void drop_root(struct conf *c, struct logs_writer *log, const char *spoolbase,
                      const char *pickup)
{
  if (geteuid() != 0)
    return;
  const struct conf_view *g = conf_global(c);
  enum { NPATHS = 16 };
  const char *paths[NPATHS] = {spoolbase, pickup};
  size_t n = 2;
  const struct conf_stanza *ec = conf_stanza_first(c, "ec_logger");
  if (ec) {
    const struct conf_view *v = conf_stanza_view(ec);
    paths[n++] = conf_str(v, CONF_EC_LOGGER_MAINLOG);
    paths[n++] = conf_str(v, CONF_EC_LOGGER_PANICLOG);
    paths[n++] = conf_str(v, CONF_EC_LOGGER_JSONLOG);
  }
  const struct conf_stanza *bl = conf_stanza_first(c, "bounce_logger");
  if (bl)
    paths[n++] = conf_str(conf_stanza_view(bl), CONF_BOUNCE_LOGGER_BOUNCELOG);
  /* The socket itself goes to User, so the engine can remove it on exit
   * even from a sticky directory. */
  const struct conf_stanza *cl = conf_stanza_first(c, "control_listener");
  const struct conf_stanza *ls = cl ? conf_stanza_child(cl, "listen") : NULL;
  const char *sock = ls ? conf_stanza_instance(ls) : NULL; /* else inside the spool */
  if (sock && *sock)
    paths[n++] = sock;
  /* Logs are reopened (SIGUSR1) after the drop: their directories go to
   * User too, and the socket's, when impetus_dir says so. */
  char dirs[NPATHS][4096];
  size_t nfiles = n;
  for (size_t i = 2; i < nfiles && n < NPATHS; i++) {
    if (paths[i] == NULL)
      continue;
    char *d = dirs[i];
    snprintf(d, sizeof dirs[0], "%s", paths[i]);
    char *slash = strrchr(d, '/');
    if (slash == NULL || slash == d)
      continue;
    *slash = 0;
    if (impetus_dir(d))
      paths[n++] = d;
  }
  const char *user = conf_str(g, CONF_USER), *group = conf_str(g, CONF_GROUP);
  if (user == NULL || *user == 0)
    user = "impetus";
  if (!conf_is_set(g, CONF_GROUP))
    group = NULL;
  char err[512];
  int r = priv_drop(user, group, conf_is_set(g, CONF_USER), paths, n, err, sizeof err);
  if (r < 0)
    util_fatal("User/Group: %s", err);
  if (r == PRIV_NO_USER)
    util_fatal("started as root and the user \"%s\" does not exist: create it (tools/setup.sh "
               "does), set User to an existing unprivileged user, or set User = \"root\" to "
               "run as root (not recommended)",
               user);
  if (r == PRIV_DROPPED)
    logs_panic(log, clock_wall_ms(), "engine", "running as user %s, group %s (uid %u, gid %u)",
               user, gname(group), (unsigned)getuid(), (unsigned)getgid());
  else if (r == PRIV_ROOT)
    logs_panic(log, clock_wall_ms(), "engine",
               "running as root (User = \"%s\"): sessions and Lua run with root's rights", user);
  logs_writer_flush(log);
}

struct diff_ctx {
  struct logs_writer *w;
  int n;
};

static void report_restart_only(void *arg, const char *option, const char *scope,
                                const char *old_text, const char *new_text)
{
  struct diff_ctx *d = arg;
  d->n++;
  logs_panic(d->w, clock_wall_ms(), "config",
             "reload: %s changed in %s (%s -> %s); it takes effect after a restart", option,
             scope ? scope : "global", old_text ? old_text : "(unset)",
             new_text ? new_text : "(unset)");
}

/* SIGHUP: load the file again; keep running on the old snapshot when the
 * new one is broken. The previous snapshot stays referenced until the next
 * reload, so a thread that read the pointer just before the swap can still
 * take its reference. */
static void reload(struct engine_shared *sh, const char *path, struct logs_writer *log,
                   struct conf **prev)
{
  struct conf_error err;
  struct conf *n = conf_load(path, &err);
  if (n == NULL) {
    char text[6000];
    logs_panic(log, clock_wall_ms(), "config", "reload failed, still running the old configuration: %s",
               conf_error_str(&err, text, sizeof text));
    logs_writer_flush(log);
    return;
  }
  /* adaptive delivery: the new rules; adjustments in force are kept */
  char aerr[1024];
  struct adaptive_rules *rules = adaptive_conf_rules(n, aerr, sizeof aerr);
  if (rules == NULL || adaptive_conf_check(n, aerr, sizeof aerr) < 0) {
    adaptive_rules_free(rules);
    logs_panic(log, clock_wall_ms(), "config", "reload failed, still running the old configuration: %s",
               aerr);
    logs_writer_flush(log);
    conf_unref(n);
    return;
  }
  if (signing_reload(n, &err) < 0) { /* DKIM keys: a bad one keeps the old configuration */
    char text[6000];
    adaptive_rules_free(rules);
    logs_panic(log, clock_wall_ms(), "config", "reload failed, still running the old configuration: %s",
               conf_error_str(&err, text, sizeof text));
    logs_writer_flush(log);
    conf_unref(n);
    return;
  }
  adaptive_set_rules(sh->adaptive, rules);
  adaptive_queue_ages_load(sh, n, sh->spoolbase, clock_wall_ms()); /* the locked spool's */
  struct conf *old = atomic_load(&sh->conf);
  struct diff_ctx d = {.w = log};
  conf_restart_diff(old, n, report_restart_only, &d);
  atomic_store(&sh->conf, n);
  atomic_fetch_add(&sh->conf_gen, 1);
  conf_unref(*prev);
  *prev = old;
  logs_panic(log, clock_wall_ms(), "config", "reloaded %s (%d restart-only change%s not applied)",
             path, d.n, d.n == 1 ? "" : "s");
  logs_writer_flush(log);
}

static void note_cluster_option(void *arg, const char *text)
{
  (void)text;
  *(bool *)arg = true;
}

/* The cluster stanza: a Redis client for the Cluster_* limits (its own
 * thread and log writer). Without it those options have no effect, and
 * that is said once at start-up. Returns the client's writer (or NULL). */
static struct logs_writer *start_cluster(struct engine_shared *sh, struct conf *c,
                                         struct logs_writer *log)
{
  const struct conf_stanza *st = conf_stanza_first(c, "cluster");
  if (st == NULL || !conf_bool(conf_stanza_view(st), CONF_MOD_ENABLED)) {
    bool set = false;
    const enum conf_opt opts[] = {CONF_CLUSTER_MAX_OUTBOUND_CONNECTIONS,
                                  CONF_CLUSTER_OUTBOUND_THROTTLE_MESSAGES,
                                  CONF_CLUSTER_OUTBOUND_THROTTLE_CONNECTIONS,
                                  CONF_CLUSTER_SERVER_MAX_OUTBOUND_CONNECTIONS};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
      conf_each_set(c, opts[i], note_cluster_option, &set);
    if (set)
      logs_panic(log, clock_wall_ms(), "cluster",
                 "Cluster_* options are set but there is no cluster { redis = ... } stanza: "
                 "they have no effect");
    return NULL;
  }
  const struct conf_view *v = conf_stanza_view(st);
  struct logs_writer *w = logs_writer_new(sh->logs);
  struct cluster_params p = {
    .url = conf_str(v, CONF_CLUSTER_REDIS),
    .tls_ca_file = conf_str(v, CONF_CLUSTER_TLS_CA_FILE),
    .tls_cert_file = conf_str(v, CONF_CLUSTER_TLS_CERTIFICATE),
    .tls_key_file = conf_str(v, CONF_CLUSTER_TLS_KEY),
    .tls_verify = conf_bool(v, CONF_CLUSTER_TLS_VERIFY),
    .node_name = conf_str(v, CONF_CLUSTER_NODE_NAME),
    .lease_ttl_s = (unsigned)conf_interval(v, CONF_CLUSTER_LEASE_TTL),
    .failure_mode = conf_enum(v, CONF_CLUSTER_FAILURE_MODE) == 1 ? CLUSTER_FAIL_CLOSED
                                                                 : CLUSTER_FAIL_OPEN,
    .nworkers = sh->nworkers,
    .log = w,
  };
  char err[512];
  sh->cluster = cluster_new(&p, err, sizeof err);
  if (sh->cluster == NULL)
    util_fatal("%s", err);
  return w;
}

int engine_main(const char *config_path)
{
  struct conf_error cerr;
  struct conf *c = conf_load(config_path, &cerr);
  if (c == NULL) {
    char text[6000];
    util_fatal("%s", conf_error_str(&cerr, text, sizeof text));
  }
  const struct conf_view *g = conf_global(c);

  /* Signals are taken by sigwaitinfo on this thread only: block them
   * before any thread starts so every thread inherits the mask. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  struct engine_run *run = util_xcalloc(1, sizeof *run);
  struct engine_shared *sh = &run->sh;
  atomic_store(&sh->conf, c);
  atomic_store(&sh->conf_gen, 1);
  if (gethostname(sh->hostname, sizeof sh->hostname - 1) != 0)
    snprintf(sh->hostname, sizeof sh->hostname, "localhost");
  ctl_prepare_paths(c); /* ops: log and socket directories */
  sh->logs = open_logs(c);
  sh->ingest_log = logs_writer_new(sh->logs);
  sh->handover_log = logs_writer_new(sh->logs);
  struct logs_writer *mainlog = logs_writer_new(sh->logs);
  sh->throttles = throttle_registry_new();
  char aerr[1024];
  struct adaptive_rules *rules = adaptive_conf_rules(c, aerr, sizeof aerr);
  if (rules == NULL || adaptive_conf_check(c, aerr, sizeof aerr) < 0)
    util_fatal("%s", aerr);
  sh->adaptive = adaptive_new(rules);
  adaptive_rules_free(rules);
  adaptive_queue_lua_target(sh->adaptive); /* msys.adaptive.registerRules */

  const char *spoolbase = conf_str(g, CONF_SPOOLBASE);
  snprintf(sh->spoolbase, sizeof sh->spoolbase, "%s", spoolbase);
  const char *pickup = conf_str(g, CONF_PICKUP_DIRECTORY);
  if (pickup)
    snprintf(sh->pickup_dir, sizeof sh->pickup_dir, "%s", pickup);
  else
    snprintf(sh->pickup_dir, sizeof sh->pickup_dir, "%s/pickup", spoolbase);
  char resolver[300];
  struct conf_addr ra = conf_addr(g, CONF_RESOLVER);
  if (ra.host) {
    if (strchr(ra.host, ':'))
      snprintf(resolver, sizeof resolver, "[%s]:%u", ra.host, ra.port ? ra.port : 53);
    else
      snprintf(resolver, sizeof resolver, "%s:%u", ra.host, ra.port ? ra.port : 53);
    sh->resolver = resolver;
  }

  int64_t nw = conf_int(g, CONF_WORKER_THREADS);
  if (nw <= 0)
    nw = sysconf(_SC_NPROCESSORS_ONLN);
  if (nw <= 0)
    nw = 1;
  if (nw > 256)
    nw = 256;
  sh->nworkers = (unsigned)nw;
  sh->workers = util_xcalloc(sh->nworkers, sizeof *sh->workers);
  if (counters_init(sh->nworkers + 2) < 0) /* ops: slot nworkers = ingest thread, +1 the listener */
    util_fatal("out of memory");

  int sync = conf_enum(g, CONF_SPOOL_SYNC);
  char key_file[4096]; /* Spool_Secret_Key_File, default <Spoolbase>.key beside the spool */
  if (conf_str(g, CONF_SPOOL_SECRET_KEY_FILE))
    snprintf(key_file, sizeof key_file, "%s", conf_str(g, CONF_SPOOL_SECRET_KEY_FILE));
  else
    snprintf(key_file, sizeof key_file, "%.*s.key",
             (int)(strlen(spoolbase) - (strlen(spoolbase) > 1 && spoolbase[strlen(spoolbase) - 1] == '/')),
             spoolbase);
  struct spool_params sp = {
    .spoolbase = spoolbase,
    .pickup_dir = pickup,
    .sync = sync == 1 ? SPOOL_SYNC_ALWAYS : sync == 2 ? SPOOL_SYNC_NONE : SPOOL_SYNC_BATCH,
    .max_message_size = conf_size(g, CONF_MAX_MESSAGE_SIZE),
    .keep_dicts_in_memory = conf_bool(g, CONF_KEEP_MESSAGE_DICTS_IN_MEMORY),
    .pickup_exchange = conf_enum(g, CONF_PICKUP_CLAIM) == 1,
    .secret_key_file = key_file,
    .on_msg = on_msg,
    .on_batch_end = on_batch_end,
    .on_bad = on_bad,
    .on_note = on_bad, /* the same paniclog line */
    .arg = run,
  };
  char err[512];
  /* Lua ingest hooks (a no-op without scripts); sh->policy is made after
   * the drop, before the spool claims anything. */
  sp.on_ingest = on_ingest;
  sp.on_sign = signing_on_sign; /* DKIM: once per message, at ingest */
  /* the key operations on the signer pool while ingest goes on */
  sp.on_sign_prep = signing_on_sign_prep;
  sp.on_sign_async = signing_on_sign_async;
  sh->spool = spool_open(&sp, err, sizeof err);
  if (sh->spool == NULL)
    util_fatal("spool: %s", err);

  if (ctl_open(sh, config_path, err, sizeof err) < 0) /* ops: before leaving root */
    util_fatal("%s", err);
  /* ESMTP_Listener: its sockets are bound as root (port 25) */
  struct listener *lsn = listener_open(c, sh->spool, sh->hostname, sh->logs, err, sizeof err);
  if (!lsn && err[0])
    util_fatal("%s", err);
  tlskeys_preload(c, tls_unreadable, mainlog); /* client certificates and keys, as root */
  if (signing_init(c, sh->ingest_log, &cerr) < 0) { /* DKIM keys, as root */
    char text[6000];
    util_fatal("%s", conf_error_str(&cerr, text, sizeof text));
  }
  /* Everything that needs root is open: leave it before any Lua runs
   * (scripts are compiled and run by policy_new) and any worker starts. */
  drop_root(c, mainlog, spoolbase, pickup);
  adaptive_queue_ages_load(sh, c, spoolbase, clock_wall_ms()); /* warm-up: bindings' ages */
  adaptive_queue_state_load(sh, mainlog, spoolbase, clock_wall_ms()); /* kept across a restart */
  /* saved now as loaded, not a second after "started": the loop below
   * writes only changes */
  adaptive_queue_state_save(sh, mainlog, spoolbase, clock_wall_ms());
  sh->policy = policy_new(c, &sh->conf, sh->ingest_log, sh->nworkers, err, sizeof err);
  if (sh->policy == NULL)
    util_fatal("lua: %s", err);

  struct logs_writer *cluster_log = start_cluster(sh, c, mainlog);

  for (unsigned i = 0; i < sh->nworkers; i++)
    if (worker_start(sh, i, err, sizeof err) == NULL)
      util_fatal("%s", err);

  run->recovering = true;
  long rec = spool_recover(sh->spool);
  run->recovering = false;
  if (rec < 0)
    util_fatal("spool recovery: %s", strerror((int)-rec));
  int rc = spool_start(sh->spool);
  if (rc < 0)
    util_fatal("spool ingest: %s", strerror(-rc));
  if (ctl_start(err, sizeof err) < 0) /* ops: console + metrics */
    util_fatal("%s", err);
  if (lsn && (rc = listener_start(lsn, sh->policy, sh->nworkers + 1)) < 0)
    util_fatal("esmtp_listener: %s", strerror(-rc));

  logs_panic(mainlog, clock_wall_ms(), "engine",
             "impetus %s started: %s, %u worker%s, %ld message%s recovered", IMPETUS_VERSION,
             config_path, sh->nworkers, sh->nworkers == 1 ? "" : "s", rec, rec == 1 ? "" : "s");
  logs_writer_flush(mainlog);
  fprintf(stderr, "impetus %s: running with %s (%u workers; SIGTERM stops)\n", IMPETUS_VERSION,
          config_path, sh->nworkers);
  {
    char st[512];
    snprintf(st, sizeof st, "READY=1\nMAINPID=%ld\nSTATUS=running %s, %u workers", (long)getpid(),
             config_path, sh->nworkers);
    sdnotify(st); /* systemd Type=notify; nothing without NOTIFY_SOCKET */
  }

  /* ec_logger / bounce_logger heartbeat: an M record every N seconds */
  int64_t hb = 0;
  const struct conf_stanza *ecs = conf_stanza_first(c, "ec_logger");
  if (ecs)
    hb = conf_interval(conf_stanza_view(ecs), CONF_EC_LOGGER_HEARTBEAT);
  struct conf *prev = NULL;
  uint64_t next_hb = hb > 0 ? clock_mono_ns() / 1000000u + (uint64_t)hb * 1000u : UINT64_MAX;
  for (;;) {
    siginfo_t si;
    struct timespec to = {.tv_sec = 1}; /* adaptive adjustments saved each second */
    int sig = sigtimedwait(&set, &si, &to);
    adaptive_queue_state_save(sh, mainlog, sh->spoolbase, clock_wall_ms());
    if (sig < 0) {
      uint64_t now = clock_mono_ns() / 1000000u;
      if (errno == EAGAIN && now >= next_hb) {
        next_hb = now + (uint64_t)hb * 1000u;
        logs_heartbeat(mainlog, clock_wall_ms());
        logs_writer_flush(mainlog);
      }
      continue;
    }
    if (sig == SIGTERM || sig == SIGINT)
      break;
    if (sig == SIGHUP) {
      sdnotify("RELOADING=1");
      reload(sh, config_path, mainlog, &prev);
      if (policy_reload(sh->policy, atomic_load(&sh->conf), err, sizeof err) < 0)
        logs_panic(mainlog, clock_wall_ms(), "lua", "reload rejected, the old scripts stay: %s", err);
      else if (policy_has_scripts(sh->policy))
        logs_panic(mainlog, clock_wall_ms(), "lua", "scripts reloaded");
      /* after the scripts: its thread takes both up */
      listener_reload(lsn, atomic_load(&sh->conf));
      logs_writer_flush(mainlog);
      sdnotify("READY=1");
    }
    else if (sig == SIGUSR1) {
      char why[1024];
      if (logs_reopen_wait(sh->logs, why, sizeof why) < 0) {
        logs_panic(mainlog, clock_wall_ms(), "logs", "reopen failed: %s; still writing to the old file",
                   why);
        logs_writer_flush(mainlog);
      }
    }
  }

  /* graceful stop: stop claiming, let sessions finish, persist, exit 0 */
  sdnotify("STOPPING=1");
  ctl_stop();
  logs_panic(mainlog, clock_wall_ms(), "engine", "stopping");
  logs_writer_flush(mainlog);
  listener_stop(lsn); /* before the spool: messages waiting for their commit get their reply */
  spool_stop(sh->spool);
  worker_submit_flush(sh); /* a batch cut short by the stop (normally none) */
  uint64_t deadline = clock_mono_ns() / 1000000u + STOP_DEADLINE_MS;
  for (unsigned i = 0; i < sh->nworkers; i++)
    worker_stop(sh->workers[i], deadline);
  for (unsigned i = 0; i < sh->nworkers; i++)
    worker_join(sh->workers[i]);
  adaptive_queue_state_save(sh, mainlog, sh->spoolbase, clock_wall_ms()); /* for the next start */
  cluster_free(sh->cluster); /* leases and unused tokens go back to Redis */
  logs_writer_free(cluster_log);
  logs_writer_free(sh->ingest_log);
  logs_writer_free(sh->handover_log);
  free(sh->pend);
  spool_close(sh->spool);
  listener_free(lsn);
  signing_done(); /* the signer pool, after the ingest thread */
  worker_free_leftovers(sh);
  policy_free(sh->policy);
  free(sh->workers);
  tlskeys_free();
  logs_panic(mainlog, clock_wall_ms(), "engine", "stopped");
  logs_writer_free(mainlog);
  logs_close(sh->logs);
  throttle_registry_free(sh->throttles);
  adaptive_queue_lua_target(NULL);
  adaptive_free(sh->adaptive);
  counters_done();
  conf_unref(prev);
  conf_unref(atomic_load(&sh->conf));
  free(run);
  fprintf(stderr, "impetus: stopped\n");
  return 0;
}
