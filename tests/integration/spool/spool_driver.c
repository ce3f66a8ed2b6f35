/* spool_driver: a stand-in for the daemon's ingest side, for the crash and
 * full-disk tests only (the real daemon is impetus). Opens a spool,
 * recovers it, then ingests until told to stop, printing one line per
 * event on stdout:
 *   RECOVERED <n> | MSG <id> <nrcpt> | BAD <name>: <reason> | IDLE | ERR <text>
 * usage: spool_driver SPOOLBASE [--sync batch|always|none] [--fsync]
 *          [--thread] [--idle-exit MS] [--recover-only] [--exchange]
 *          [--die-after-swap N]
 * --exchange: Pickup_Claim = exchange. --die-after-swap N: SIGKILL itself
 * right after the Nth exchange (spool_test_after_swap).
 * Main thread (plus the spool's own thread with --thread). */
#include "spool.h"
#include "spool_test.h"
#include "clock.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_long msgs;
static int msg_efd = -1; /* written on every durable message: the main loop waits on it */
static volatile sig_atomic_t stop;

static long die_after_swap; /* --die-after-swap: kill -9 right after this exchange */

static void after_swap(void)
{
  if (--die_after_swap == 0) {
    fflush(stdout);
    raise(SIGKILL);
  }
}

static void on_term(int sig)
{
  (void)sig;
  stop = 1;
}

static struct spool *the_spool;
static bool tokens; /* print the message's Message-ID token as read back from the queue */

static void on_msg(void *arg, struct spool_msg *m)
{
  (void)arg;
  char id[SPOOL_ID_LEN + 1];
  if (tokens) {
    char head[512] = "";
    int fd = spool_open_body(the_spool, m);
    ssize_t n = fd >= 0 ? pread(fd, head, sizeof head - 1, (off_t)m->body_off) : -1;
    spool_close_body(the_spool, fd);
    head[n > 0 ? n : 0] = 0;
    const char *t = strstr(head, "Message-ID: <tok-");
    char tail[5] = "";
    fd = spool_open_body(the_spool, m);
    if (fd >= 0 && m->body_size >= 4)
      (void)!pread(fd, tail, 4, (off_t)(m->body_off + m->body_size - 4));
    spool_close_body(the_spool, fd);
    printf("MSG %s %u tok=%ld end=%d\n", spool_msg_id_str(m, id), m->nrcpt,
           t ? atol(t + 17) : -1L, !memcmp(tail, "END\n", 4));
  } else {
    printf("MSG %s %u\n", spool_msg_id_str(m, id), m->nrcpt);
  }
  spool_msg_free(m);
  atomic_fetch_add(&msgs, 1);
  uint64_t one = 1;
  (void)!write(msg_efd, &one, sizeof one);
}

/* Wait up to ms for a durable message (or a signal); then the caller looks
 * at the counters again. */
static void wait_msgs(int ms)
{
  struct pollfd pf = {.fd = msg_efd, .events = POLLIN};
  uint64_t v;
  if (poll(&pf, 1, ms) > 0)
    (void)!read(msg_efd, &v, sizeof v);
}

static void on_bad(void *arg, const char *name, const char *reason)
{
  (void)arg;
  printf("BAD %s: %s\n", name, reason);
  fflush(stdout);
}

int main(int argc, char **argv)
{
  if (argc < 2) {
    fprintf(stderr, "usage: spool_driver SPOOLBASE [options]\n");
    return 2;
  }
  struct spool_params p = {.spoolbase = argv[1], .on_msg = on_msg, .on_bad = on_bad,
                           .rescan_ms = 200};
  bool thread = false, recover_only = false;
  long idle_exit = -1;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--sync") && i + 1 < argc) {
      const char *m = argv[++i];
      p.sync = !strcmp(m, "always") ? SPOOL_SYNC_ALWAYS
               : !strcmp(m, "none") ? SPOOL_SYNC_NONE : SPOOL_SYNC_BATCH;
    } else if (!strcmp(argv[i], "--fsync")) {
      p.sync_method = SPOOL_SYNCM_FSYNC;
    } else if (!strcmp(argv[i], "--thread")) {
      thread = true;
    } else if (!strcmp(argv[i], "--tokens")) {
      tokens = true;
    } else if (!strcmp(argv[i], "--exchange")) {
      p.pickup_exchange = true;
    } else if (!strcmp(argv[i], "--die-after-swap") && i + 1 < argc) {
      die_after_swap = atol(argv[++i]);
      spool_test_after_swap = after_swap;
    } else if (!strcmp(argv[i], "--recover-only")) {
      recover_only = true;
    } else if (!strcmp(argv[i], "--idle-exit") && i + 1 < argc) {
      idle_exit = atol(argv[++i]);
    } else {
      fprintf(stderr, "spool_driver: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  struct sigaction sa = {.sa_handler = on_term};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  char err[512];
  struct spool *sp = spool_open(&p, err, sizeof(err));
  the_spool = sp;
  if (!sp) {
    printf("ERR %s\n", err);
    return 1;
  }
  long r = spool_recover(sp);
  printf("RECOVERED %ld\n", r);
  fflush(stdout);
  if (r < 0 || recover_only) {
    spool_close(sp);
    return r < 0 ? 1 : 0;
  }
  msg_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (msg_efd < 0) {
    printf("ERR eventfd: %s\n", strerror(errno));
    return 1;
  }
  uint64_t last = clock_mono_ns();
  long seen = atomic_load(&msgs);
  if (thread && spool_start(sp) < 0) {
    printf("ERR spool_start\n");
    return 1;
  }
  while (!stop) {
    if (thread) {
      wait_msgs(20);
    } else {
      long n = spool_ingest(sp, 50);
      if (n < 0) {
        printf("ERR ingest: %s\n", strerror((int)-n));
        fflush(stdout);
        wait_msgs(200); /* e.g. disk full: try again shortly */
      }
    }
    fflush(stdout);
    long now_seen = atomic_load(&msgs);
    if (now_seen != seen) {
      seen = now_seen;
      last = clock_mono_ns();
    } else if (idle_exit >= 0 && clock_mono_ns() - last > (uint64_t)idle_exit * 1000000u) {
      printf("IDLE\n");
      break;
    }
  }
  spool_close(sp);
  fflush(stdout);
  return 0;
}
