/* adaptive_queue.c owns the glue between adaptive delivery (adaptive.c:
 * rules and state) and the workers' queues: effective limits, retry
 * intervals, replies in, connection slots, connection failures, the sweep
 * and its paniclog lines, the warm-up ages file and the adjustments file
 * that carries them across a restart.
 *
 * Must never: fail or bounce a recipient (adjustments only delay), block a
 * worker (both files are written by the main and control threads only),
 * log an adjustment twice, refuse to start over a bad file. Threads: see
 * adaptive_queue.h. */
#include "adaptive_queue.h"

#include "adaptive.h"
#include "adaptive_conf.h"
#include "buf.h"
#include "conf.h"
#include "dq.h"
#include "logs.h"
#include "panic.h"
#include "scheduler.h"
#include "throttle.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SWEEP_EVERY_MS 250u

static void warmup_apply(struct engine_shared *sh, struct adaptive *a,
                         const struct adaptive_warmup *w, const char *binding, const char *domain,
                         const char *prov, struct dq_queue_state *st, uint64_t now_ms);

static _Atomic uint64_t next_sweep_ms;

bool adaptive_queue_stale(struct engine_shared *sh, const struct dq_queue_state *st,
                          uint64_t now_ms)
{
  return sh->adaptive &&
         (st->adaptive_gen != adaptive_gen(sh->adaptive) || now_ms >= st->adaptive_until_ms);
}

/* The stricter of two buckets (a longer interval between takes). */
static struct throttle *stricter(struct throttle *a, struct throttle *b)
{
  if (a == NULL)
    return b;
  if (b == NULL)
    return a;
  return b->interval_ns > a->interval_ns ? b : a;
}

static uint32_t min_nz(uint32_t a, uint32_t b)
{
  return a == 0 ? b : b == 0 ? a : a < b ? a : b;
}

void adaptive_queue_limits(struct engine_shared *sh, const struct conf_view *v,
                           const char *binding, const char *domain, struct dq_queue_state *st,
                           uint64_t now_ms)
{
  struct adaptive *a = sh->adaptive;
  st->adaptive_until_ms = UINT64_MAX;
  if (a == NULL)
    return;
  st->adaptive_gen = adaptive_gen(a); /* before reading: a change meanwhile shows next time */
  if (!adaptive_conf_enabled(v))
    return;
  char prov[ADAPTIVE_NAME_MAX];
  struct adaptive_warmup pw;
  adaptive_provider_warmup(a, st->mx_host, prov, sizeof prov, &pw);
  struct adaptive_limits l;
  adaptive_limits(a, binding, domain, prov[0] ? prov : NULL, now_ms, &l);
  st->adaptive_until_ms = l.until_ms;
  struct sched_limits *sl = &st->limits;
  if (l.suspended)
    sl->suspend_delivery = true;
  sl->max_outbound_connections = min_nz(sl->max_outbound_connections, l.max_connections);
  sl->max_deliveries_per_connection =
    min_nz(sl->max_deliveries_per_connection, l.max_deliveries);
  if (l.throttle_n) {
    struct throttle_spec spec = {.n = l.throttle_n, .per_s = l.throttle_per_s};
    char scope[sizeof l.throttle_key + 16];
    snprintf(scope, sizeof scope, "adaptive %s", l.throttle_key);
    sl->msg_throttle = stricter(sl->msg_throttle, throttle_registry_get(
                                  sh->throttles, scope, "outbound_throttle_messages", &spec));
  }
  if (l.connect_delay_s) {
    struct throttle_spec spec = {.n = 1, .per_s = l.connect_delay_s};
    char scope[2 * ADAPTIVE_NAME_MAX + 32];
    snprintf(scope, sizeof scope, "adaptive-connect %s %s", binding ? binding : "default", domain);
    sl->conn_throttle = stricter(sl->conn_throttle, throttle_registry_get(
                                   sh->throttles, scope, "outbound_throttle_connections", &spec));
  }
  /* IP warm-up: the binding's age picks the step of its schedule (the
   * scope's and the provider's); the cap holds per (binding, provider), or
   * per (binding, domain) without one */
  struct adaptive_warmup w;
  char err[256];
  if (adaptive_conf_warmup(v, &w, err, sizeof err) < 0)
    w.nstep = 0;
  warmup_apply(sh, a, &w, binding, domain, prov, st, now_ms);
  warmup_apply(sh, a, &pw, binding, domain, prov, st, now_ms);
}

/* Apply warm-up schedule w to the queue's message throttle. */
static void warmup_apply(struct engine_shared *sh, struct adaptive *a,
                         const struct adaptive_warmup *w, const char *binding, const char *domain,
                         const char *prov, struct dq_queue_state *st, uint64_t now_ms)
{
  if (w->nstep == 0)
    return;
  struct sched_limits *sl = &st->limits;
  bool is_new;
  uint64_t first = adaptive_binding_first(a, binding, now_ms, &is_new);
  uint64_t age_s = now_ms > first ? (now_ms - first) / 1000u : 0;
  for (unsigned i = 0; i < w->nstep; i++)
    if (w->step[i].age_s > age_s) { /* the next step begins then: read again */
      uint64_t at = first + w->step[i].age_s * 1000u;
      if (at < st->adaptive_until_ms)
        st->adaptive_until_ms = at;
      break;
    }
  const struct adaptive_warmup_step *step = adaptive_warmup_at(w, age_s);
  if (step == NULL)
    return;
  struct throttle_spec spec = {.n = step->n, .per_s = step->per_s};
  char scope[2 * ADAPTIVE_NAME_MAX + 48];
  snprintf(scope, sizeof scope, "warmup %s %s %llu", binding ? binding : "default",
           prov[0] ? prov : domain, (unsigned long long)step->age_s);
  sl->msg_throttle = stricter(sl->msg_throttle, throttle_registry_get(
                                sh->throttles, scope, "outbound_throttle_messages", &spec));
}

void adaptive_queue_retry(struct engine_shared *sh, const struct conf_view *v,
                          const char *binding, const char *domain,
                          const struct dq_queue_state *st, uint64_t now_ms, struct sched_retry *p)
{
  if (sh->adaptive == NULL || !adaptive_conf_enabled(v))
    return;
  char prov[ADAPTIVE_NAME_MAX];
  adaptive_provider_lookup(sh->adaptive, st->mx_host, prov, sizeof prov);
  struct adaptive_limits l;
  adaptive_limits(sh->adaptive, binding, domain, prov[0] ? prov : NULL, now_ms, &l);
  if (l.retry_interval_s > p->retry_interval_s)
    p->retry_interval_s = l.retry_interval_s;
  if (l.max_retry_interval_s > p->max_retry_interval_s)
    p->max_retry_interval_s = l.max_retry_interval_s;
  if (p->max_retry_interval_s && p->max_retry_interval_s < p->retry_interval_s)
    p->max_retry_interval_s = p->retry_interval_s;
}

static void fmt_time(char *out, size_t n, uint64_t ms)
{
  time_t t = (time_t)(ms / 1000u);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* "suspended", "max_outbound_connections = 2", "outbound_throttle_messages
 * = 2/1"... */
static void fmt_what(char *out, size_t n, const struct adaptive_adjustment *j)
{
  switch (j->action) {
  case ADAPTIVE_ACT_SUSPEND:
    snprintf(out, n, "suspended");
    break;
  case ADAPTIVE_ACT_BACKOFF:
    snprintf(out, n, "suspended (back-off, %u in a row)", j->fired);
    break;
  case ADAPTIVE_ACT_THROTTLE:
    snprintf(out, n, "outbound_throttle_messages = %u/%u", j->value, j->per_s);
    break;
  case ADAPTIVE_ACT_CONNECT_DELAY:
    snprintf(out, n, "outbound_throttle_connections = 1/%u", j->value);
    break;
  default:
    snprintf(out, n, "%s = %u", adaptive_action_name(j->action), j->value);
    break;
  }
}

enum log_kind { LOG_MADE, LOG_ENDED, LOG_RESTORED };

static void log_adjustment(struct logs_writer *log, const struct adaptive_adjustment *j,
                           enum log_kind kind, uint64_t now_ms)
{
  if (log == NULL) /* a caller without a log writer (unit tests) */
    return;
  char what[96], until[32];
  fmt_what(what, sizeof what, j);
  fmt_time(until, sizeof until, j->until_ms);
  const char *where = j->scope == ADAPTIVE_SCOPE_PROVIDER ? "provider" : "domain";
  const char *binding = j->binding[0] ? j->binding : "*";
  if (kind == LOG_ENDED) {
    logs_panic(log, now_ms, "adaptive", "ended: %s for binding %s %s %s (rule %s)", what,
               binding, where, j->target, j->rule);
    return;
  }
  /* connection spacing is logged when it starts and when it ends, not at
   * each doubling */
  char more[64] = "";
  if (j->action == ADAPTIVE_ACT_CONNECT_DELAY)
    snprintf(more, sizeof more, ", doubling with each failure up to 1/%u",
             ADAPTIVE_CONN_DELAY_MAX_S);
  logs_panic(log, now_ms, "adaptive", "%s%s%s for binding %s %s %s until %s (%llu s; rule %s, %s)",
             kind == LOG_RESTORED ? "restored after a restart: " : "", what, more, binding, where,
             j->target, until, (unsigned long long)((j->until_ms - j->since_ms) / 1000u), j->rule,
             j->why);
}

void adaptive_queue_reply(struct engine_shared *sh, struct logs_writer *log,
                          const struct conf_view *v, const char *binding, const char *domain,
                          const struct dq_queue_state *st, int code, const char *enhanced,
                          const char *text, uint64_t now_ms)
{
  if (sh->adaptive == NULL || code < 400 || !adaptive_conf_enabled(v))
    return;
  struct adaptive_reply r = {.binding = binding, .domain = domain, .mx_host = st->mx_host,
                             .code = code, .enhanced = enhanced, .text = text};
  struct adaptive_adjustment made[4];
  size_t n = adaptive_reply(sh->adaptive, &r, now_ms, made, 4);
  for (size_t i = 0; i < n && i < 4; i++)
    log_adjustment(log, &made[i], LOG_MADE, now_ms);
}

void adaptive_queue_release(struct engine_shared *sh, uint32_t slot[2])
{
  if (sh->adaptive == NULL)
    return;
  for (int i = 0; i < 2; i++) {
    adaptive_slot_release(sh->adaptive, slot[i]);
    slot[i] = 0;
  }
}

bool adaptive_queue_connect(struct engine_shared *sh, struct conf *c, const char *binding,
                            const char *domain, const char *mx_host, struct dq_queue_state *st,
                            uint64_t now_ms, uint32_t slot[2])
{
  if (sh->adaptive == NULL)
    return true;
  adaptive_queue_release(sh, slot);
  if (mx_host == NULL || !*mx_host)
    return true;
  if (strcasecmp(st->mx_host, mx_host)) {
    /* a host new to the queue may belong to a provider whose mail is held:
     * its limits are read again before anything goes there */
    snprintf(st->mx_host, sizeof st->mx_host, "%s", mx_host);
    st->adaptive_until_ms = 0;
    char p[ADAPTIVE_NAME_MAX];
    adaptive_provider_lookup(sh->adaptive, mx_host, p, sizeof p);
    struct adaptive_limits l;
    adaptive_limits(sh->adaptive, binding, domain, p[0] ? p : NULL, now_ms, &l);
    if (l.suspended)
      return false;
  }
  char key[2 * ADAPTIVE_NAME_MAX + 300];
  /* Host "mx" { Max_Outbound_Connections }: all bindings and domains */
  snprintf(key, sizeof key, "host %s", mx_host);
  if (!adaptive_slot_take(sh->adaptive, key, adaptive_conf_host_cap(c, mx_host), &slot[0]))
    return false;
  /* a provider's cap, configured or adaptive (provider scope): per
   * binding, across its domains */
  if (!adaptive_provider_slot_take(sh->adaptive, mx_host, binding, now_ms, &slot[1])) {
    adaptive_queue_release(sh, slot);
    return false;
  }
  return true;
}

void adaptive_queue_conn_failed(struct engine_shared *sh, struct logs_writer *log,
                                const struct conf_view *v, const char *binding,
                                const char *domain, uint64_t now_ms)
{
  if (sh->adaptive == NULL || !adaptive_conf_enabled(v))
    return;
  int64_t th = conf_int(v, CONF_ADAPTIVE_CONNECTION_FAILURES);
  struct adaptive_adjustment j;
  if (th > 0 && adaptive_conn_failed(sh->adaptive, binding, domain,
                                     th > UINT32_MAX ? UINT32_MAX : (uint32_t)th, now_ms, &j))
    log_adjustment(log, &j, LOG_MADE, now_ms);
}

void adaptive_queue_conn_ok(struct engine_shared *sh, const struct conf_view *v,
                            const char *binding, const char *domain)
{
  if (sh->adaptive && adaptive_conf_enabled(v))
    adaptive_conn_ok(sh->adaptive, binding, domain);
}

void adaptive_queue_sweep(struct engine_shared *sh, struct logs_writer *log, uint64_t now_ms)
{
  if (sh->adaptive == NULL || now_ms < atomic_load(&next_sweep_ms))
    return;
  atomic_store(&next_sweep_ms, now_ms + SWEEP_EVERY_MS);
  struct adaptive_adjustment ended[16];
  size_t n = adaptive_expire(sh->adaptive, now_ms, ended, 16);
  for (size_t i = 0; i < n && i < 16; i++)
    log_adjustment(log, &ended[i], LOG_ENDED, now_ms);
}

/* ------------------------------------------------------------ warm-up ages */

static void ages_path(char *out, size_t n, const char *spoolbase, bool dir)
{
  snprintf(out, n, dir ? "%s/adaptive" : "%s/adaptive/bindings", spoolbase);
}

static int ages_append(const char *spoolbase, const char *binding, uint64_t first_ms)
{
  char path[4200];
  ages_path(path, sizeof path, spoolbase, true);
  mkdir(path, 0700);
  ages_path(path, sizeof path, spoolbase, false);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  char line[ADAPTIVE_NAME_MAX + 32];
  int len = snprintf(line, sizeof line, "%s %llu\n", binding, (unsigned long long)first_ms);
  int rc = write(fd, line, (size_t)len) == len ? 0 : -EIO;
  if (rc == 0 && fsync(fd) < 0)
    rc = -errno;
  close(fd);
  return rc;
}

void adaptive_queue_ages_load(struct engine_shared *sh, struct conf *c, const char *spoolbase,
                              uint64_t now_ms)
{
  if (sh->adaptive == NULL)
    return;
  char path[4200];
  ages_path(path, sizeof path, spoolbase, false);
  FILE *f = fopen(path, "re");
  if (f) {
    char name[ADAPTIVE_NAME_MAX + 1];
    unsigned long long first;
    /* the last line of a binding wins (the console appends) */
    while (fscanf(f, "%128s %llu", name, &first) == 2)
      adaptive_binding_born(sh->adaptive, name, first);
    fclose(f);
  }
  for (size_t i = 0; i < conf_binding_count(c); i++) {
    bool is_new;
    const char *b = conf_binding_name(c, (int)i);
    uint64_t first = adaptive_binding_first(sh->adaptive, b, now_ms, &is_new);
    if (is_new)
      (void)ages_append(spoolbase, b, first);
  }
}

int adaptive_queue_ages_set(struct engine_shared *sh, const char *spoolbase, const char *binding,
                            uint64_t first_ms)
{
  if (sh->adaptive == NULL)
    return -ENOENT;
  adaptive_binding_born(sh->adaptive, binding, first_ms);
  return ages_append(spoolbase, binding, first_ms);
}

/* ------------------------------------------------- adjustments on disk */

/* <spoolbase>/adaptive/adjustments: a header line, then one adjustment a
 * line, tab-separated: rule binding target scope action value per_s
 * since_ms until_ms fired active why (binding "" for the domain scope). */
#define STATE_HEADER "impetus-adaptive-adjustments 1\n"
#define STATE_MAX_BYTES (16u << 20)

/* A paniclog line, when there is a log (the unit tests have none). */
#define NOTE(log, now_ms, ...)                                                                     \
  do {                                                                                             \
    if (log)                                                                                       \
      logs_panic(log, now_ms, "adaptive", __VA_ARGS__);                                            \
  } while (0)

static const struct adaptive *saved_of; /* main thread only: what was saved last, */
static uint64_t saved_gen;               /* at which generation */
static bool save_failing;  /* its failure logged once until it works again */

/* A field as written: tabs and line ends would split it. */
static void put_field(struct buf *b, const char *s, char end)
{
  size_t n = strlen(s);
  buf_reserve(b, n + 1);
  char *d = (char *)b->data + b->len;
  for (size_t i = 0; i < n; i++)
    d[i] = s[i] == '\t' || s[i] == '\n' || s[i] == '\r' ? ' ' : s[i];
  d[n] = end;
  b->len += n + 1;
}

static void put_adjustment(void *arg, const struct adaptive_adjustment *j, bool active)
{
  struct buf *b = arg;
  put_field(b, j->rule, '\t');
  put_field(b, j->binding, '\t');
  put_field(b, j->target, '\t');
  buf_printf(b, "%s\t%s\t%u\t%u\t%llu\t%llu\t%u\t%d\t", adaptive_scope_name(j->scope),
             adaptive_action_name(j->action), j->value, j->per_s,
             (unsigned long long)j->since_ms, (unsigned long long)j->until_ms, j->fired,
             active ? 1 : 0);
  put_field(b, j->why, '\n');
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return w < 0 ? -errno : -EIO;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Write b to path atomically: a temporary file, fsync, rename, the
 * directory synced. */
static int state_write(const char *dir, const char *path, const struct buf *b)
{
  char tmp[4400];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  int rc = write_all(fd, buf_head(b), buf_avail(b));
  if (rc == 0 && fsync(fd) < 0)
    rc = -errno;
  if (close(fd) < 0 && rc == 0)
    rc = -errno;
  if (rc == 0 && rename(tmp, path) < 0)
    rc = -errno;
  if (rc < 0) {
    unlink(tmp);
    return rc;
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)fsync(dfd);
    close(dfd);
  }
  return 0;
}

void adaptive_queue_state_save(struct engine_shared *sh, struct logs_writer *log,
                               const char *spoolbase, uint64_t now_ms)
{
  if (sh->adaptive == NULL)
    return;
  uint64_t gen = adaptive_gen(sh->adaptive);
  if (saved_of == sh->adaptive && gen == saved_gen && !save_failing)
    return;
  struct buf b = {0};
  buf_append_str(&b, STATE_HEADER);
  adaptive_each_kept(sh->adaptive, now_ms, put_adjustment, &b);
  char dir[4200], path[4300];
  snprintf(dir, sizeof dir, "%s/adaptive", spoolbase);
  snprintf(path, sizeof path, "%s/adjustments", dir);
  (void)mkdir(dir, 0700);
  int rc = state_write(dir, path, &b);
  buf_done(&b, 0);
  if (rc == 0) {
    saved_of = sh->adaptive;
    saved_gen = gen;
    save_failing = false;
    return;
  }
  if (!save_failing) {
    NOTE(log, now_ms, "error: cannot save the adjustments in force to %s: %s "
               "(a restart would forget them; tried again each second)", path, strerror(-rc));
    if (log)
      logs_writer_flush(log);
  }
  save_failing = true;
}

/* One saved line into *j / *active; false when it is not one. */
static bool parse_line(char *line, struct adaptive_adjustment *j, bool *active)
{
  char *f[12];
  int n = 0;
  for (char *p = line; p && n < 12; n++) { /* the last field, why, is the rest */
    f[n] = p;
    if (n < 11 && (p = strchr(p, '\t')) != NULL)
      *p++ = '\0';
  }
  if (n != 12)
    return false;
  memset(j, 0, sizeof *j);
  int scope = adaptive_scope_parse(f[3]), act = adaptive_action_parse(f[4]);
  char *end;
  unsigned long long v[6];
  for (int i = 0; i < 6; i++) {
    errno = 0;
    v[i] = strtoull(f[5 + i], &end, 10);
    if (errno || end == f[5 + i] || *end)
      return false;
  }
  if (scope < 0 || act < 0 || strcmp(f[4], adaptive_action_name((enum adaptive_action)act)) ||
      !*f[0] || !*f[2] || strlen(f[0]) >= sizeof j->rule || strlen(f[1]) >= sizeof j->binding ||
      strlen(f[2]) >= sizeof j->target || v[0] > UINT32_MAX || v[1] > UINT32_MAX ||
      v[4] > UINT32_MAX || v[5] > 1)
    return false;
  snprintf(j->rule, sizeof j->rule, "%s", f[0]);
  snprintf(j->binding, sizeof j->binding, "%s", f[1]);
  snprintf(j->target, sizeof j->target, "%s", f[2]);
  snprintf(j->why, sizeof j->why, "%s", f[11]);
  j->scope = (enum adaptive_scope)scope;
  j->action = (enum adaptive_action)act;
  j->value = (uint32_t)v[0];
  j->per_s = (uint32_t)v[1];
  j->since_ms = v[2];
  j->until_ms = v[3];
  j->fired = (uint32_t)v[4];
  *active = v[5] == 1;
  return true;
}

void adaptive_queue_state_load(struct engine_shared *sh, struct logs_writer *log,
                               const char *spoolbase, uint64_t now_ms)
{
  if (sh->adaptive == NULL)
    return;
  char path[4300];
  snprintf(path, sizeof path, "%s/adaptive/adjustments", spoolbase);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno != ENOENT)
      NOTE(log, now_ms, "error: cannot read %s: %s; the adjustments made "
                 "before the restart are forgotten", path, strerror(errno));
    return;
  }
  struct buf b = {0};
  int err = 0;
  for (;;) {
    buf_reserve(&b, 65536);
    ssize_t r = read(fd, b.data + b.len, 65536);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      err = r < 0 ? errno : 0;
      break;
    }
    b.len += (size_t)r;
    if (b.len > STATE_MAX_BYTES) {
      err = EFBIG;
      break;
    }
  }
  close(fd);
  size_t restored = 0, dropped = 0, bad = 0;
  if (err == 0 && (b.len < strlen(STATE_HEADER) ||
                   memcmp(b.data, STATE_HEADER, strlen(STATE_HEADER))))
    err = EBADMSG; /* not a file of ours, or cut before its header */
  if (err) {
    NOTE(log, now_ms, "error: %s: %s; the adjustments made before the restart "
               "are forgotten (the file is rewritten)", path, strerror(err));
    buf_done(&b, 0);
    return;
  }
  buf_append(&b, "", 1); /* a C string from here on */
  char *save = NULL;
  for (char *line = strtok_r((char *)b.data + strlen(STATE_HEADER), "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    struct adaptive_adjustment j;
    bool active;
    if (!parse_line(line, &j, &active)) {
      bad++;
      continue;
    }
    int rc = adaptive_restore(sh->adaptive, &j, active, now_ms);
    if (rc > 0 && active) {
      restored++;
      log_adjustment(log, &j, LOG_RESTORED, now_ms);
    } else if (rc == 0)
      dropped++; /* ended meanwhile */
  }
  buf_done(&b, 0);
  if (bad)
    NOTE(log, now_ms, "error: %s: %zu unreadable line%s skipped", path, bad,
               bad == 1 ? "" : "s");
  if (restored || dropped)
    NOTE(log, now_ms, "%zu adjustment%s restored from %s, %zu ended meanwhile",
               restored, restored == 1 ? "" : "s", path, dropped);
}

/* ------------------------------------------------------------ Lua rules */

static _Atomic(struct adaptive *) lua_target;

void adaptive_queue_lua_target(struct adaptive *a)
{
  atomic_store(&lua_target, a);
}

/* Momentum's patterns are PCRE: the common escapes in POSIX terms. */
static void pcre_to_posix(const char *in, char *out, size_t n)
{
  size_t k = 0;
  for (; *in && k + 16 < n; in++) {
    if (in[0] == '\\' && (in[1] == 'd' || in[1] == 's' || in[1] == 'w')) {
      const char *cls = in[1] == 'd' ? "[0-9]" : in[1] == 's' ? "[[:space:]]" : "[[:alnum:]_]";
      size_t l = strlen(cls);
      memcpy(out + k, cls, l);
      k += l;
      in++;
      continue;
    }
    out[k++] = *in;
  }
  out[k] = '\0';
}

int adaptive_queue_lua_rule(const char *const *kv, size_t npairs, bool clear_first, char *err,
                            size_t errlen)
{
  struct adaptive *a = atomic_load(&lua_target);
  if (a == NULL) {
    snprintf(err, errlen, "adaptive delivery is not running");
    return -ENOENT;
  }
  struct adaptive_rule r = {.count = 1};
  char pattern[1024];
  for (size_t i = 0; i < npairs; i++) {
    const char *k = kv[2 * i], *v = kv[2 * i + 1];
    int bad = 0;
    if (!strcmp(k, "name"))
      r.name = v;
    else if (!strcmp(k, "provider"))
      r.provider = v;
    else if (!strcmp(k, "match_domain") || !strcmp(k, "domain"))
      r.domain = v;
    else if (!strcmp(k, "code"))
      r.code = atoi(v);
    else if (!strcmp(k, "enhanced"))
      r.enhanced = v;
    else if (!strcmp(k, "pattern")) {
      pcre_to_posix(v, pattern, sizeof pattern);
      r.pattern = pattern;
    } else if (!strcmp(k, "trigger"))
      bad = adaptive_parse_trigger(v, &r.count, &r.period_s);
    else if (!strcmp(k, "scope"))
      bad = (int)(r.scope = (enum adaptive_scope)adaptive_scope_parse(v)) < 0 ? -EINVAL : 0;
    else if (!strcmp(k, "action"))
      bad = (int)(r.action = (enum adaptive_action)adaptive_action_parse(v)) < 0 ? -EINVAL : 0;
    else if (!strcmp(k, "value")) {
      char *end;
      r.value = (uint32_t)strtoul(v, &end, 10);
      r.per_s = 1;
      if (*end == '/')
        bad = adaptive_parse_duration(end + 1, &r.per_s);
      else if (*end)
        bad = adaptive_parse_duration(v, &r.value); /* an interval */
    } else if (!strcmp(k, "duration"))
      bad = adaptive_parse_duration(v, &r.duration_s);
    else if (!strcmp(k, "source"))
      r.source = v;
    else
      bad = -EINVAL;
    if (bad < 0) {
      snprintf(err, errlen, "rule %s: bad %s \"%s\"", r.name ? r.name : "?", k, v);
      return -EINVAL;
    }
  }
  return adaptive_add_rule(a, &r, clear_first, err, errlen);
}
