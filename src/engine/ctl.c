/* ctl.c owns the control thread: the impetus-ctl Unix socket, the
 * Prometheus endpoint (metrics.c renders) and the delivery-rate samples;
 * it parses a request, dispatches it and answers summary, version,
 * shutdown, reopen, config and cluster itself. The queue and message
 * commands are ctl_queues.c (suspend/resume write the queue layer's
 * table, queue/suspend.c), the questions to workers ctl_ask.c, the answer
 * emitter ctl_out.c, adaptive's commands policy/ctl_adaptive.c.
 *
 * Must never: block a worker (questions reach workers as ring_post
 * messages; the worker answers from its own loop and this thread waits at
 * most CTL_WORKER_WAIT_MS); walk messages to count them (counters.c keeps
 * totals; listings page); print a secret (conf_eval without
 * CONF_EVAL_SHOW_SECRETS masks them).
 * The control thread's I/O (every client served at once) is ctlsrv.c.
 * Threads: the control thread, except ctl_open/ctl_start/ctl_stop and
 * ctl_prepare_paths (main thread). */
#include "ctl_internal.h"

#include "buf.h"
#include "clock.h"
#include "cluster.h"
#include "ctl_adaptive.h"
#include "conf.h"
#include "counters.h"
#include "ctlcmd.h"
#include "logs.h"
#include "impetus_build.h"
#include "metrics.h"
#include "panic.h"
#include "spool.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RATE_SAMPLES 61       /* one per second: the last minute */

/* ------------------------------------------------------------ state */

static struct {
  struct engine_shared *sh;
  char config_path[4096];
  char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  int sock_fd, metrics_fd, stop_fd[2];
  char metrics_addr[300];
  pthread_t thread;
  bool running;
  struct logs_writer *log; /* this thread's paniclog lines */
  uint64_t start_mono_ms;
  /* delivered-recipient samples, one per second */
  uint64_t rate_t[RATE_SAMPLES], rate_d[RATE_SAMPLES];
  unsigned rate_n, rate_i;
} g = {.sock_fd = -1, .metrics_fd = -1, .stop_fd = {-1, -1}};

static uint64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ rates */

static void rate_sample(void)
{
  uint64_t t[COUNTERS_KINDS];
  counters_totals(t);
  uint64_t now = mono_ms();
  if (g.rate_n && now - g.rate_t[(g.rate_i + RATE_SAMPLES - 1) % RATE_SAMPLES] < 1000)
    return;
  g.rate_t[g.rate_i] = now;
  g.rate_d[g.rate_i] = t[COUNTERS_DELIVERED];
  g.rate_i = (g.rate_i + 1) % RATE_SAMPLES;
  if (g.rate_n < RATE_SAMPLES)
    g.rate_n++;
}

/* Delivered recipients per second over the last minute (or less): from
 * the oldest sample to now, so a run shorter than two samples has a rate. */
static double rate_recent(void)
{
  if (g.rate_n < 1)
    return 0;
  uint64_t t[COUNTERS_KINDS];
  counters_totals(t);
  unsigned oldest = (g.rate_i + RATE_SAMPLES - g.rate_n) % RATE_SAMPLES;
  uint64_t dt = mono_ms() - g.rate_t[oldest];
  if (dt < 100) /* too short a window to mean anything */
    return 0;
  return (double)(t[COUNTERS_DELIVERED] - g.rate_d[oldest]) * 1000.0 / (double)dt;
}

/* ------------------------------------------------------------ commands */

int ctl_fail(struct ctl_req *r, const char *fmt, ...)
{
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  buf_reset(&r->err);
  buf_append_str(&r->err, text);
  return -EINVAL;
}

static void stats_totals(struct ctl_wq *q, struct ctl_wpart *t)
{
  memset(t, 0, sizeof *t);
  for (unsigned i = 0; i < q->nparts; i++) {
    t->ready += q->parts[i].ready;
    t->deferred += q->parts[i].deferred;
    t->queues += q->parts[i].queues;
    t->active += q->parts[i].active;
    t->sessions += q->parts[i].sessions;
  }
}

static int cmd_summary(struct ctl_req *r)
{
  struct ctl_wq *q = ctl_wq_new(g.sh, CTL_WOP_STATS);
  int rc = ctl_wq_run(q);
  struct ctl_wpart t;
  stats_totals(q, &t);
  ctl_wq_unref(q);
  if (rc < 0)
    return ctl_fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
  uint64_t c[COUNTERS_KINDS];
  counters_totals(c);
  struct spool_stats ss;
  spool_get_stats(g.sh->spool, &ss);
  uint64_t up = (mono_ms() - g.start_mono_ms) / 1000;
  struct ctl_out *o = &r->o;
  ctl_out_str(o, "version", IMPETUS_VERSION);
  ctl_out_u64(o, "uptime_s", up);
  ctl_out_u64(o, "workers", g.sh->nworkers);
  ctl_out_u64(o, "concurrency", t.sessions);
  ctl_out_u64(o, "active_queue", t.ready);
  ctl_out_u64(o, "delayed_queue", t.deferred);
  ctl_out_u64(o, "total_queue", t.ready + t.deferred);
  ctl_out_u64(o, "queues", t.queues);
  ctl_out_u64(o, "messages_received", ss.ingested);
  ctl_out_u64(o, "received", c[COUNTERS_RECEIVED]);
  ctl_out_u64(o, "delivered", c[COUNTERS_DELIVERED]);
  ctl_out_u64(o, "transient_failures", c[COUNTERS_TRANSIENT]);
  ctl_out_u64(o, "failed", c[COUNTERS_PERMANENT]);
  ctl_out_dbl(o, "delivery_rate_1m", rate_recent());
  ctl_out_dbl(o, "delivery_rate_avg", up ? (double)c[COUNTERS_DELIVERED] / (double)up : 0);
  ctl_out_u64(o, "spool_rejected", ss.rejected);
  ctl_out_u64(o, "spool_syncs", ss.syncs);
  ctl_out_u64(o, "lua_hook_errors", counters_event_total(COUNTERS_LUA_ERRORS));
  return 0;
}

static int cmd_config_eval(struct ctl_req *r, int argc, char **argv)
{
  struct ctlcmd_eval e;
  char why[256];
  if (ctlcmd_eval_args(argc, argv, &e, why, sizeof why) < 0)
    return ctl_fail(r, "config eval: %s", why);
  struct conf *c = conf_ref(atomic_load(&g.sh->conf));
  struct buf out = {0};
  int rc = conf_eval(c, e.group, e.binding, e.domain, e.option, 0, &out); /* secrets masked */
  buf_append(&out, "", 1);
  if (rc < 0)
    ctl_fail(r, "%s", (const char *)buf_head(&out));
  else
    ctl_out_str(&r->o, "value", (const char *)buf_head(&out));
  buf_done(&out, 0);
  conf_unref(c);
  return rc < 0 ? -EINVAL : 0;
}

static int cmd_config_reload(struct ctl_req *r)
{
  struct conf_error err;
  struct conf *c = conf_load(g.config_path, &err);
  if (c == NULL) {
    char text[6000];
    return ctl_fail(r, "not reloaded: %s", conf_error_str(&err, text, sizeof text));
  }
  conf_unref(c);
  uint64_t gen = atomic_load(&g.sh->conf_gen);
  kill(getpid(), SIGHUP);
  /* the main thread swaps the snapshot: wait for it briefly */
  uint64_t until = mono_ms() + 2000;
  while (atomic_load(&g.sh->conf_gen) == gen && mono_ms() < until) {
    struct timespec ts = {.tv_nsec = 5000000};
    nanosleep(&ts, NULL);
  }
  ctl_out_str(&r->o, "config", g.config_path);
  ctl_out_bool(&r->o, "reloaded", atomic_load(&g.sh->conf_gen) != gen);
  ctl_out_u64(&r->o, "generation", atomic_load(&g.sh->conf_gen));
  return 0;
}

/* cluster [FILTER]: the cluster client's view (cluster.h): Redis, nodes
 * seen, and per cap and throttle whose key contains FILTER (a domain, a
 * binding, a scope) the cluster value and this node's share. */
static int cmd_cluster(struct ctl_req *r, const char *filter)
{
  if (g.sh->cluster == NULL)
    return ctl_fail(r, "no cluster stanza: Cluster_* limits are not shared (docs/cluster.md)");
  struct buf text = {0};
  cluster_describe(g.sh->cluster, filter, &text);
  buf_append(&text, "", 1);
  ctl_out_str(&r->o, "cluster", (const char *)buf_head(&text));
  buf_done(&text, 0);
  return 0;
}

static int dispatch(struct ctl_req *r)
{
  int ac = r->argc;
  char **av = r->argv;
  char why[512];
  if (ctlcmd_check(ac, av, why, sizeof why) < 0)
    return ctl_fail(r, "%s\ncommands:\n%s", why, ctlcmd_usage);
#define IS(i, w) (ac > (i) && !strcasecmp(av[i], (w)))
  if (IS(0, "summary") && ac == 1)
    return cmd_summary(r);
  if (IS(0, "cluster") && ac <= 2)
    return cmd_cluster(r, ac == 2 ? av[1] : NULL);
  if (IS(0, "version") && ac == 1) {
    ctl_out_str(&r->o, "version", IMPETUS_VERSION);
    return 0;
  }
  if (IS(0, "shutdown") && ac == 1) {
    ctl_out_str(&r->o, "shutdown", "stopping (graceful)");
    kill(getpid(), SIGTERM);
    return 0;
  }
  if (IS(0, "reopen") && IS(1, "logs") && ac == 2) {
    /* here rather than by SIGUSR1, to know whether every file reopened */
    char failed[1024];
    if (logs_reopen_wait(g.sh->logs, failed, sizeof failed) < 0) {
      logs_panic(g.log, clock_wall_ms(), "logs", "reopen failed: %s; still writing to the old file",
                 failed);
      logs_writer_flush(g.log);
      return ctl_fail(r, "reopen failed: %s (still writing to the old file)", failed);
    }
    ctl_out_bool(&r->o, "reopened", true);
    return 0;
  }
  if (IS(0, "config") && IS(1, "eval"))
    return cmd_config_eval(r, ac - 2, av + 2);
  if (IS(0, "adaptive")) /* ctl_adaptive.c */
    return ctl_adaptive(g.sh, r->o.json, ac - 1, av + 1, r->o.b, &r->err);
  if (IS(0, "config") && IS(1, "reload") && ac == 2)
    return cmd_config_reload(r);
  if (IS(0, "binding") && IS(1, "summary") && ac <= 3)
    return ctl_cmd_binding_summary(r, ac == 3 ? av[2] : NULL);
  if (IS(0, "domain") && ac == 2)
    return ctl_cmd_domain(r, NULL, av[1]);
  if (IS(0, "showqueue") && IS(1, "binding") && ac == 4)
    return ctl_cmd_domain(r, av[2], av[3]) < 0 ? -EINVAL
                                               : ctl_cmd_list_units(r, av[2], av[3], NULL, 1, 0);
  if (IS(0, "showqueue") && ac == 2)
    return ctl_cmd_domain(r, NULL, av[1]) < 0 ? -EINVAL
                                              : ctl_cmd_list_units(r, NULL, av[1], NULL, 1, 0);
  if (IS(0, "mailq")) {
    const char *b = NULL, *d = NULL;
    size_t page = 1, per = 0;
    for (int i = 1; i < ac; i++) {
      if (i + 1 < ac && !strcmp(av[i], "-d"))
        d = av[++i];
      else if (i + 1 < ac && !strcmp(av[i], "-b"))
        b = av[++i];
      else if (i + 1 < ac && !strcmp(av[i], "-p"))
        page = strtoul(av[++i], NULL, 10);
      else if (i + 1 < ac && !strcmp(av[i], "-n"))
        per = strtoul(av[++i], NULL, 10);
      else
        return ctl_fail(r, "usage: mailq [-d DOMAIN] [-b BINDING] [-p PAGE] [-n PER_PAGE]");
    }
    return ctl_cmd_list_units(r, b, d, NULL, page, per);
  }
  if (IS(0, "message") && IS(1, "details") && ac == 3)
    return ctl_cmd_message_details(r, av[2]);
  if (IS(0, "message") && IS(1, "retry") && ac == 3)
    return ctl_cmd_hasten(r, NULL, NULL, av[2]);
  if (IS(0, "message") && IS(1, "fail") && ac == 3)
    return ctl_cmd_message_fail(r, av[2]);
  if (IS(0, "flush") && IS(1, "domain") && ac == 3)
    return ctl_cmd_hasten(r, NULL, av[2], NULL);
  if (IS(0, "flush") && IS(1, "binding") && ac == 3)
    return ctl_cmd_hasten(r, av[2], NULL, NULL);
  if ((IS(0, "suspend") || IS(0, "resume")) && ac == 3 && (IS(1, "domain") || IS(1, "binding")))
    return ctl_cmd_suspend(r, IS(0, "suspend"), IS(1, "binding") ? av[2] : NULL,
                       IS(1, "domain") ? av[2] : NULL);
  if ((IS(0, "suspend") || IS(0, "resume")) && ac == 5 && IS(1, "binding") && IS(3, "domain"))
    return ctl_cmd_suspend(r, IS(0, "suspend"), av[2], av[4]);
#undef IS
  return ctl_fail(r, "unknown command\ncommands:\n%s", ctlcmd_usage);
}

/* ------------------------------------------------------------ answers
 * (ctlsrv.c does the I/O: every client is served concurrently) */

void ctl_answer(char *line, struct buf *out)
{
  struct buf body = {0};
  struct ctl_req r = {.sh = g.sh, .o = {.b = &body}};
  char *save = NULL;
  char *fmt = strtok_r(line, "\t", &save);
  r.o.json = fmt && !strcmp(fmt, "json");
  for (char *w; r.argc < CTL_ARGS_MAX && (w = strtok_r(NULL, "\t", &save));)
    r.argv[r.argc++] = w;
  if (r.o.json)
    buf_append_str(&body, "{");
  int rc = dispatch(&r);
  if (r.o.json)
    buf_append_str(&body, "}\n");
  if (rc < 0) {
    buf_append(&r.err, "", 1);
    buf_append_str(out, "ERR\n");
    if (r.o.json) {
      buf_append_str(out, "{\"error\":");
      ctl_json_str(out, (const char *)buf_head(&r.err));
      buf_append_str(out, "}\n");
    } else {
      buf_printf(out, "%s\n", (const char *)buf_head(&r.err));
    }
  } else {
    buf_append_str(out, "OK\n");
    buf_append(out, buf_head(&body), buf_avail(&body));
  }
  buf_done(&body, 0);
  buf_done(&r.err, 0);
}

void ctl_http_answer(const char *req, struct buf *out)
{
  if (strncmp(req, "GET /metrics", 12) != 0 ||
      (req[12] != ' ' && req[12] != '?' && req[12] != '\r' && req[12] != '\n')) {
    buf_append_str(out, "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
                        "Content-Length: 10\r\n\r\nnot found\n");
    return;
  }
  struct metrics_input in = {.nworkers = g.sh->nworkers, .adaptive = g.sh->adaptive,
                             .uptime_s = (mono_ms() - g.start_mono_ms) / 1000};
  struct ctl_wq *q = ctl_wq_new(g.sh, CTL_WOP_STATS);
  in.workers_answered = ctl_wq_run(q) == 0;
  in.w = util_xcalloc(q->nparts ? q->nparts : 1, sizeof *in.w);
  for (unsigned i = 0; i < q->nparts; i++) {
    in.w[i].ready = q->parts[i].ready;
    in.w[i].deferred = q->parts[i].deferred;
    in.w[i].queues = q->parts[i].queues;
    in.w[i].sessions = q->parts[i].sessions;
    in.w[i].ring_inflight = q->parts[i].inflight;
    in.w[i].ring_timers = q->parts[i].timers;
  }
  ctl_wq_unref(q);
  spool_get_stats(g.sh->spool, &in.spool);
  struct buf body = {0};
  metrics_render(&body, &in);
  cluster_metrics(g.sh->cluster, &body);
  free(in.w);
  buf_printf(out,
             "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
             "Content-Length: %zu\r\n\r\n",
             buf_avail(&body));
  buf_append(out, buf_head(&body), buf_avail(&body));
  buf_done(&body, 0);
}

void ctl_tick(void)
{
  rate_sample();
}

static void *ctl_main(void *arg)
{
  (void)arg;
  ctlsrv_run(g.stop_fd[0], g.sock_fd, g.metrics_fd);
  return NULL;
}

/* ------------------------------------------------------------ start/stop */

/* mkdir -p of the directory part of path (mode 0755 for new ones: an
 * engine that drops root must still reach its spool and logs below). */
static void make_parent(const char *path)
{
  if (path == NULL)
    return;
  char d[4096];
  snprintf(d, sizeof d, "%s", path);
  char *slash = strrchr(d, '/');
  if (slash == NULL || slash == d)
    return;
  *slash = '\0';
  for (char *p = d + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(d, 0755);
      *p = '/';
    }
  mkdir(d, 0755);
}

void ctl_prepare_paths(struct conf *c)
{
  static const struct {
    const char *stanza;
    enum conf_opt opt;
  } logs[] = {{"ec_logger", CONF_EC_LOGGER_MAINLOG}, {"ec_logger", CONF_EC_LOGGER_PANICLOG},
              {"ec_logger", CONF_EC_LOGGER_JSONLOG}, {"bounce_logger", CONF_BOUNCE_LOGGER_BOUNCELOG}};
  for (size_t i = 0; i < UTIL_ARRAY_LEN(logs); i++) {
    const struct conf_stanza *st = conf_stanza_first(c, logs[i].stanza);
    if (st)
      make_parent(conf_str(conf_stanza_view(st), logs[i].opt));
  }
  const struct conf_stanza *cl = conf_stanza_first(c, "control_listener");
  const struct conf_stanza *ls = cl ? conf_stanza_child(cl, "listen") : NULL;
  if (ls)
    make_parent(conf_stanza_instance(ls));
  make_parent(conf_str(conf_global(c), CONF_SPOOL_SECRET_KEY_FILE)); /* NULL: beside the spool */
}

static int open_unix(const char *path, unsigned mode, char *err, size_t errlen)
{
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    snprintf(err, errlen, "control socket path too long: %s", path);
    return -ENAMETOOLONG;
  }
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "control socket: %s", strerror(errno));
    return -errno;
  }
  /* a socket left by a previous run that nobody answers on is stale */
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    close(fd);
    snprintf(err, errlen, "control socket %s: another impetus is running", path);
    return -EADDRINUSE;
  }
  unlink(path);
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (rc < 0 || chmod(path, mode) < 0 || listen(fd, 64) < 0) {
    int e = errno;
    snprintf(err, errlen, "control socket %s: %s", path, strerror(e));
    close(fd);
    return -e;
  }
  return fd;
}

static int open_tcp(const char *host, unsigned port, char *err, size_t errlen)
{
  struct sockaddr_storage ss = {0};
  socklen_t sl;
  struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    sl = sizeof *a4;
  } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    sl = sizeof *a6;
  } else {
    snprintf(err, errlen, "Metrics_Listener: '%s' is not an IP address", host);
    return -EINVAL;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0) {
    int e = errno;
    snprintf(err, errlen, "Metrics_Listener %s:%u: %s", host, port, strerror(e));
    if (fd >= 0)
      close(fd);
    return -e;
  }
  return fd;
}

int ctl_open(struct engine_shared *sh, const char *config_path, char *err, size_t errlen)
{
  g.sh = sh;
  g.start_mono_ms = mono_ms();
  snprintf(g.config_path, sizeof g.config_path, "%s", config_path);
  struct conf *c = atomic_load(&sh->conf);
  const struct conf_view *gv = conf_global(c);
  unsigned mode = 0600;
  const struct conf_stanza *cl = conf_stanza_first(c, "control_listener");
  const struct conf_stanza *ls = cl ? conf_stanza_child(cl, "listen") : NULL;
  if (ls) {
    snprintf(g.sock_path, sizeof g.sock_path, "%s", conf_stanza_instance(ls));
    if (conf_is_set(conf_stanza_view(ls), CONF_LISTEN_FILE_MODE))
      mode = (unsigned)conf_int(conf_stanza_view(ls), CONF_LISTEN_FILE_MODE);
  } else {
    snprintf(g.sock_path, sizeof g.sock_path, "%s/impetus.sock", conf_str(gv, CONF_SPOOLBASE));
  }
  int fd = open_unix(g.sock_path, mode, err, errlen);
  if (fd < 0)
    return fd;
  g.sock_fd = fd;
  struct conf_addr ma = conf_addr(gv, CONF_METRICS_LISTENER);
  if (ma.host) {
    fd = open_tcp(ma.host, ma.port ? ma.port : 9911, err, errlen);
    if (fd < 0) {
      close(g.sock_fd);
      unlink(g.sock_path);
      g.sock_fd = -1;
      return fd;
    }
    g.metrics_fd = fd;
  }
  return 0;
}

int ctl_start(char *err, size_t errlen)
{
  if (g.sock_fd < 0) {
    snprintf(err, errlen, "control thread: ctl_open was not called");
    return -EINVAL;
  }
  if (pipe2(g.stop_fd, O_CLOEXEC) < 0) {
    snprintf(err, errlen, "control thread: %s", strerror(errno));
    return -errno;
  }
  g.log = logs_writer_new(g.sh->logs);
  int rc = pthread_create(&g.thread, NULL, ctl_main, NULL);
  if (rc != 0) {
    snprintf(err, errlen, "control thread: %s", strerror(rc));
    return -rc;
  }
  g.running = true;
  return 0;
}

void ctl_stop(void)
{
  if (g.running) {
    (void)!write(g.stop_fd[1], "x", 1);
    pthread_join(g.thread, NULL);
    g.running = false;
  }
  logs_writer_free(g.log);
  g.log = NULL;
  if (g.sock_fd >= 0) {
    close(g.sock_fd);
    unlink(g.sock_path);
    g.sock_fd = -1;
  }
  if (g.metrics_fd >= 0)
    close(g.metrics_fd);
  g.metrics_fd = -1;
  for (int i = 0; i < 2; i++)
    if (g.stop_fd[i] >= 0)
      close(g.stop_fd[i]);
  g.stop_fd[0] = g.stop_fd[1] = -1;
}
