/* sessions: one worker ring holding many outsess SMTP sessions against a
 * server in another process (impetus-sink, or bench/net/delay_server.py).
 * Prints, once a second, open sessions, resident memory and messages; at
 * the end the resident bytes per open session (above the baseline taken
 * before the first session) and messages/s with CPU per message.
 *
 *   sessions -p PORT [-a ADDR] -n SESSIONS -t SECONDS [--tls] [--body BYTES]
 *            [--rcpts N] [--per-conn M] [--ramp K]
 *
 * --per-conn 0 (default) keeps every connection for the whole run and
 * pipelines transaction after transaction on it; M > 0 quits after M
 * messages and reconnects. The open-files hard limit (20,000 here) caps
 * SESSIONS; the soft limit is raised to it. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "clock.h"
#include "conn.h"
#include "outsess.h"
#include "ring.h"
#include "tls.h"

struct sess {
  struct outsess *o;
  unsigned msgs;
  bool ready_once;
  struct smtpc_txn txn;
  struct smtpc_result res[8], fin;
};

static struct ring *R;
static struct tls_ctx *TLS;
static struct sockaddr_in DST;
static const char *RCPTS[8] = {"r0@bench.test", "r1@bench.test", "r2@bench.test", "r3@bench.test",
                               "r4@bench.test", "r5@bench.test", "r6@bench.test", "r7@bench.test"};
static unsigned NRCPT = 1, PER_CONN;
static struct outsess_body BODY;
static bool running = true;
static unsigned long open_now, delivered, failed_txn, failed_sess, connects, ready_sessions;
static unsigned long fail_kind[8];
static void sess_start(struct sess *s);

static void on_ready(void *arg, bool pipelined) {
  struct sess *s = arg;
  if (pipelined)
    return; /* one transaction per session at a time: wait for the final reply */
  if (!s->ready_once) {
    s->ready_once = true;
    ready_sessions++;
  }
  if (!running || (PER_CONN && s->msgs >= PER_CONN)) {
    outsess_quit(s->o);
    return;
  }
  s->msgs++;
  s->txn = (struct smtpc_txn){.mail_from = "bench@sender.test", .rcpts = RCPTS, .nrcpt = NRCPT,
                              .size = BODY.len, .results = s->res, .final = &s->fin};
  if (outsess_send(s->o, &s->txn, &BODY, NULL) < 0)
    outsess_quit(s->o);
}

static void on_txn(void *arg, void *txn_arg, const struct smtpc_txn *t) {
  (void)arg;
  (void)txn_arg;
  if (t->final->outcome == SMTPC_OUT_OK)
    delivered++;
  else
    failed_txn++;
}

static void on_failed(void *arg, const struct smtpc_event *ev, const char *detail) {
  (void)arg;
  (void)detail;
  failed_sess++;
  if ((unsigned)ev->kind < 8)
    fail_kind[ev->kind]++;
  static int shown;
  if (shown++ < 5)
    fprintf(stderr, "session failed: %s: %s %s\n", smtpc_fail_name(ev->kind), ev->text, detail);
}

static void on_closed(void *arg) {
  struct sess *s = arg;
  open_now--;
  if (s->ready_once)
    ready_sessions--;
  s->o = NULL;
  s->ready_once = false;
  if (running)
    sess_start(s);
}

static const struct outsess_cbs CBS = {
  .ready = on_ready, .txn_done = on_txn, .failed = on_failed, .closed = on_closed,
};

static void sess_start(struct sess *s) {
  struct outsess_params p = {
    .dst = (struct sockaddr *)&DST, .dstlen = sizeof DST, .tls_host = "bench.test",
    .port = ntohs(DST.sin_port), .tls = TLS,
    .smtp = {.ehlo_name = "client.bench.test", .tls = TLS ? SMTPC_TLS_REQUIRED : SMTPC_TLS_NO,
             .max_rcpts = 8},
  };
  int err = 0;
  s->msgs = 0;
  s->o = outsess_new(R, &p, &CBS, s, &err);
  if (s->o == NULL) {
    fprintf(stderr, "outsess_new: %s\n", strerror(-err));
    running = false;
    return;
  }
  open_now++;
  connects++;
}

/* jemalloc's counters when it is the allocator (normal builds): bytes the
 * program holds, to tell live heap from allocator slack in the RSS. */
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
    __attribute__((weak));
static size_t heap_allocated(void) {
  if (mallctl == NULL)
    return 0;
  uint64_t epoch = 1;
  size_t sz = sizeof epoch, v = 0, vl = sizeof v;
  mallctl("epoch", &epoch, &sz, &epoch, sz);
  if (mallctl("stats.allocated", &v, &vl, NULL, 0) != 0)
    return 0;
  return v;
}

static size_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long size = 0, res = 0;
  if (f == NULL)
    return 0;
  if (fscanf(f, "%lu %lu", &size, &res) != 2)
    res = 0;
  fclose(f);
  return res * (size_t)sysconf(_SC_PAGESIZE);
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
  const char *addr = "127.0.0.1";
  unsigned port = 0, n = 1000, secs = 10, body_bytes = 1024, ramp = 500;
  bool tls = false;
  enum { O_TLS = 256, O_BODY, O_RCPTS, O_PERCONN, O_RAMP };
  static const struct option lo[] = {
    {"tls", no_argument, NULL, O_TLS}, {"body", required_argument, NULL, O_BODY},
    {"rcpts", required_argument, NULL, O_RCPTS}, {"per-conn", required_argument, NULL, O_PERCONN},
    {"ramp", required_argument, NULL, O_RAMP}, {NULL, 0, NULL, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "p:a:n:t:", lo, NULL)) != -1) {
    switch (c) {
    case 'p': port = (unsigned)atoi(optarg); break;
    case 'a': addr = optarg; break;
    case 'n': n = (unsigned)atoi(optarg); break;
    case 't': secs = (unsigned)atoi(optarg); break;
    case O_TLS: tls = true; break;
    case O_BODY: body_bytes = (unsigned)atoi(optarg); break;
    case O_RCPTS: NRCPT = (unsigned)atoi(optarg); break;
    case O_PERCONN: PER_CONN = (unsigned)atoi(optarg); break;
    case O_RAMP: ramp = (unsigned)atoi(optarg); break;
    default:
      fprintf(stderr, "usage: sessions -p PORT [-a ADDR] -n SESSIONS -t SECONDS [--tls] "
                      "[--body BYTES] [--rcpts N] [--per-conn M] [--ramp K]\n");
      return 2;
    }
  }
  if (port == 0 || NRCPT < 1 || NRCPT > 8) {
    fprintf(stderr, "need -p PORT and 1..8 recipients\n");
    return 2;
  }
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (n + 64 > rl.rlim_cur) {
    fprintf(stderr, "%u sessions need more than the open-files limit %lu\n", n,
            (unsigned long)rl.rlim_cur);
    return 2;
  }

  /* the body: a spool-like file, read through the ring */
  char path[] = "/tmp/impetus-bench-body-XXXXXX";
  int fd = mkstemp(path);
  unlink(path);
  char *b = malloc(body_bytes);
  for (unsigned i = 0; i < body_bytes; i++)
    b[i] = (i % 78 == 77) ? '\n' : (char)('a' + i % 26);
  if (write(fd, b, body_bytes) != (ssize_t)body_bytes)
    return 1;
  free(b);
  BODY = (struct outsess_body){.fd = fd, .off = 0, .len = body_bytes};

  memset(&DST, 0, sizeof DST);
  DST.sin_family = AF_INET;
  DST.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, addr, &DST.sin_addr);

  int err = 0;
  /* IMPETUS_RING_NO_OPTIONAL=1: no optional ring feature (compare the fallbacks) */
  struct ring_params rp = {.entries = 4096, .no_optional = getenv("IMPETUS_RING_NO_OPTIONAL") != NULL};
  if (getenv("IMPETUS_RING_DISABLE")) /* RING_F_* bits, e.g. 32 = recv_multishot */
    rp.disable = (unsigned)strtoul(getenv("IMPETUS_RING_DISABLE"), NULL, 0);
  if (getenv("IMPETUS_RING_POOL_BUFS"))
    rp.pool_bufs = (unsigned)atoi(getenv("IMPETUS_RING_POOL_BUFS"));
  R = ring_new(&rp, &err);
  if (R == NULL) {
    fprintf(stderr, "ring: %s\n", strerror(-err));
    return 1;
  }
  if (tls) {
    char e[256];
    struct tls_params tp = {.verify = TLS_VERIFY_NO};
    TLS = tls_ctx_new(&tp, e, sizeof e);
    if (TLS == NULL) {
      fprintf(stderr, "tls: %s\n", e);
      return 1;
    }
  }
  char feat[128];
  printf("# ring features: %s\n", ring_features_text(ring_features(R), feat, sizeof feat));
  struct sess *ss = calloc(n, sizeof *ss); /* counted in the per-session figure (below base) */
  for (int i = 0; i < 50; i++)
    ring_run_once(R, 1000000);
  size_t base = rss_bytes(), heap_base = heap_allocated(), steady_heap = 0;
  printf("# baseline RSS %.1f MiB (ring, pool, TLS context, session array)\n", base / 1048576.0);

  uint64_t t0 = clock_mono_ns(), next = t0 + 1000000000ull, end = t0 + (uint64_t)secs * 1000000000ull;
  unsigned started = 0;
  size_t peak_rss = 0;
  unsigned long peak_open = 0, peak_ready = 0, d_at_full = 0;
  double cpu_at_full = 0;
  uint64_t t_full = 0;
  size_t acc_mem = 0, steady_rss = 0;
  while (clock_mono_ns() < end) {
    for (unsigned k = 0; k < ramp && started < n && running; k++)
      sess_start(&ss[started++]);
    ring_run_once(R, 50000000);
    uint64_t now = clock_mono_ns();
    if (started == n && t_full == 0 && ready_sessions == n) {
      t_full = now;
      d_at_full = delivered;
      cpu_at_full = cpu_seconds();
    }
    if (now >= next) {
      next += 1000000000ull;
      size_t rss = rss_bytes();
      if (ready_sessions == n && rss > steady_rss) {
        steady_rss = rss; /* every session past EHLO (and TLS): the figure that scales */
        steady_heap = heap_allocated();
      }
      if (open_now == n && rss > peak_rss) {
        peak_rss = rss;
        peak_open = open_now;
        peak_ready = ready_sessions;
        acc_mem = 0;
        for (unsigned i = 0; i < n; i++)
          if (ss[i].o)
            acc_mem += outsess_mem(ss[i].o);
      }
      unsigned long ra, rc, rb;
      conn_stats(&ra, &rc, &rb);
      printf("recv armed=%lu cqes=%lu bytes=%lu ops=%u timers=%u\n", ra, rc, rb, ring_ops_inflight(R),
             ring_timer_count(R));
      printf("t=%4.1fs open=%lu ready=%lu delivered=%lu failed_txn=%lu failed_sess=%lu rss=%.1fMiB cpu=%.2fs\n",
             (now - t0) / 1e9, open_now, ready_sessions, delivered, failed_txn, failed_sess,
             rss / 1048576.0, cpu_seconds());
      fflush(stdout);
    }
  }
  uint64_t t_end = clock_mono_ns();
  { /* where the sessions are when the clock stops */
    unsigned hist[SMTPC_ST_COUNT] = {0};
    for (unsigned i = 0; i < n; i++)
      if (ss[i].o)
        hist[smtpc_state(outsess_smtpc(ss[i].o))]++;
    printf("states at end:");
    for (unsigned k = 0; k < SMTPC_ST_COUNT; k++)
      if (hist[k])
        printf(" %s=%u", smtpc_state_name((enum smtpc_state)k), hist[k]);
    printf("\n");
  }
  double cpu_end = cpu_seconds();
  unsigned long d_end = delivered;
  /* let transactions in flight finish; each session quits at its next
   * `ready`; whatever is still open after 10 s is told to quit */
  running = false;
  uint64_t drain = clock_mono_ns() + 10000000000ull;
  while (open_now > 0 && clock_mono_ns() < drain)
    ring_run_once(R, 50000000);
  for (unsigned i = 0; i < n; i++)
    if (ss[i].o)
      outsess_quit(ss[i].o);
  drain = clock_mono_ns() + 5000000000ull;
  while (open_now > 0 && clock_mono_ns() < drain)
    ring_run_once(R, 50000000);
  for (unsigned i = 0; i < n; i++) /* the server is too slow to say goodbye: hang up */
    if (ss[i].o)
      outsess_abort(ss[i].o);
  drain = clock_mono_ns() + 5000000000ull;
  while (open_now > 0 && clock_mono_ns() < drain)
    ring_run_once(R, 50000000);

  printf("\n== %u sessions%s, body %u B, %u rcpt(s), %s\n", n, tls ? " (STARTTLS)" : "", body_bytes,
         NRCPT, PER_CONN ? "reconnect after each batch" : "connections reused");
  if (peak_open > 0)
    printf("resident: %.1f MiB above baseline with %lu sessions open (%lu past EHLO) = %.1f KiB/session "
           "(session heap accounted by outsess_mem: %.1f KiB/session)\n",
           (peak_rss - base) / 1048576.0, peak_open, peak_ready,
           (double)(peak_rss - base) / peak_open / 1024.0, (double)acc_mem / peak_open / 1024.0);
  else
    printf("resident: never had all %u sessions open at a sample\n", n);
  if (steady_rss > 0)
    printf("resident, all %u sessions past EHLO%s: %.1f MiB above baseline = %.1f KiB/session\n", n,
           tls ? " and TLS" : "", (steady_rss - base) / 1048576.0,
           (double)(steady_rss - base) / n / 1024.0);
  if (steady_heap > heap_base)
    printf("  of which live heap (jemalloc stats.allocated): %.1f KiB/session\n",
           (double)(steady_heap - heap_base) / n / 1024.0);
  if (t_full) {
    double dt = (t_end - t_full) / 1e9;
    unsigned long m = d_end - d_at_full;
    printf("steady state %.1fs: %lu messages = %.0f msg/s, CPU %.1f us/message (client process)\n", dt,
           m, m / dt, m ? (cpu_end - cpu_at_full) * 1e6 / m : 0.0);
  }
  printf("connects %lu, delivered %lu, failed transactions %lu, failed sessions %lu "
         "(transient %lu protocol %lu timeout %lu network %lu permanent %lu)\n",
         connects, delivered, failed_txn, failed_sess, fail_kind[SMTPC_FAIL_TRANSIENT],
         fail_kind[SMTPC_FAIL_PROTOCOL], fail_kind[SMTPC_FAIL_TIMEOUT], fail_kind[SMTPC_FAIL_NETWORK],
         fail_kind[SMTPC_FAIL_PERMANENT]);
  printf("open at exit: %lu\n", open_now);
  free(ss);
  tls_ctx_free(TLS);
  ring_free(R);
  close(fd);
  return 0;
}
