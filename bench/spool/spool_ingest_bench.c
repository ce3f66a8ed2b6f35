/* spool_ingest_bench: end-to-end durable ingest rate from pickup/ into the
 * queue, start-up recovery time and resident memory, and the cost of
 * reading message dictionaries back from disk.
 *
 *   spool_ingest_bench ingest DIR N SYNC [fsync|syncfs]   SYNC = batch|always|none
 *   spool_ingest_bench fill DIR N                  N queued messages (sync none)
 *   spool_ingest_bench gen DIR N                   pickup files only; then run
 *     BENCH_PICKUP_READY=1 spool_ingest_bench ingest DIR N SYNC  (e.g. under perf)
 *   spool_ingest_bench recover DIR [keep]          recovery time, RSS per message
 *   spool_ingest_bench dicts DIR N                 load_ctx from disk vs memory
 *
 * Pickup files are 1 KB messages (BENCH_SIZE=BYTES: that size; envelope +
 * headers + body) written before
 * the clock starts; the time is from the start of ingestion (spool_start, as
 * the engine runs it; BENCH_INLINE=1: spool_ingest calls) until the
 * last message was reported durable. Prints one line of figures. */
#include "spool.h"
#include "clock.h"

#include <errno.h>
#include <stdatomic.h>
#include <time.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static struct spool_msg **msgs;
static size_t capmsgs;
static _Atomic size_t nmsgs; /* on_msg runs on the spool's commit thread */
static bool keep_msgs;

static void on_msg(void *arg, struct spool_msg *m)
{
  (void)arg;
  if (keep_msgs) {
    if (nmsgs == capmsgs) {
      capmsgs = capmsgs ? capmsgs * 2 : 1024;
      msgs = realloc(msgs, capmsgs * sizeof(*msgs));
    }
    msgs[nmsgs++] = m;
  } else {
    nmsgs++;
    spool_msg_free(m);
  }
}

static void on_bad(void *arg, const char *name, const char *reason)
{
  (void)arg;
  fprintf(stderr, "bad %s: %s\n", name, reason);
}

static long rss_kb(void)
{
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof(line), f))
    if (!strncmp(line, "VmRSS:", 6))
      kb = atol(line + 6);
  if (f)
    fclose(f);
  return kb;
}

static void make_pickup(const char *dir, size_t n)
{
  char path[4096], tmp[4096];
  size_t size = getenv("BENCH_SIZE") ? strtoul(getenv("BENCH_SIZE"), NULL, 10) : 1024;
  if (size < 1024)
    size = 1024;
  char *msg = malloc(size), *body = malloc(size);
  memset(body, 'x', size);
  for (size_t i = 0; i < n; i++) {
    int hl = snprintf(msg, size,
                      "x-sender: <bulk@sender.example>\nx-receiver: <user%zu@rcpt.example>\n"
                      "x-context: campaign=c%zu\nFrom: Bulk <bulk@sender.example>\n"
                      "To: <user%zu@rcpt.example>\nSubject: message %zu\n"
                      "Message-ID: <%zu@sender.example>\n\n",
                      i, i % 100, i, i, i);
    size_t fill = size - (size_t)hl - 1;
    memcpy(msg + hl, body, fill);
    for (size_t k = (size_t)hl + 76; k < size; k += 78)
      msg[k] = '\n'; /* lines of 76 */
    msg[size - 1] = '\n';
    snprintf(tmp, sizeof(tmp), "%s/pickup/.b%zu.tmp", dir, i);
    snprintf(path, sizeof(path), "%s/pickup/b%zu", dir, i);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, msg, size) != (ssize_t)size) {
      perror(tmp);
      exit(1);
    }
    close(fd);
    if (rename(tmp, path) < 0) {
      perror(path);
      exit(1);
    }
  }
  free(msg);
  free(body);
  sync();
}

static struct spool *open_sp(const char *dir, enum spool_sync s, enum spool_sync_method m,
                             bool keep)
{
  struct spool_params p = {.spoolbase = dir, .sync = s, .sync_method = m,
                           .keep_dicts_in_memory = keep, .on_msg = on_msg, .on_bad = on_bad};
  char err[512];
  struct spool *sp = spool_open(&p, err, sizeof(err));
  if (!sp) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  return sp;
}

static double cpu_s(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
         ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static double last_cpu;

static double ingest_all(struct spool *sp, size_t n)
{
  uint64_t t0 = clock_mono_ns();
  double c0 = cpu_s();
  if (getenv("BENCH_INLINE")) { /* spool_ingest on this thread: read, sync, hand over in turn */
    while (nmsgs < n) {
      long r = spool_ingest(sp, 100);
      if (r < 0) {
        fprintf(stderr, "ingest: %s\n", strerror((int)-r));
        exit(1);
      }
    }
  } else { /* as the engine runs it: spool_start's ingest and commit threads */
    if (spool_start(sp) < 0)
      exit(1);
    struct timespec ms = {0, 1000000};
    while (atomic_load(&nmsgs) < n) {
      nanosleep(&ms, NULL);
      if (spool_last_error(sp) < 0) {
        fprintf(stderr, "ingest: %s\n", strerror(-spool_last_error(sp)));
        exit(1);
      }
    }
    spool_stop(sp);
  }
  last_cpu = cpu_s() - c0;
  return (double)(clock_mono_ns() - t0) / 1e9;
}

int main(int argc, char **argv)
{
  if (argc < 3) {
    fprintf(stderr, "usage: see the comment at the top of spool_ingest_bench.c\n");
    return 2;
  }
  const char *cmd = argv[1], *dir = argv[2];
  struct rlimit rl = {20000, 20000};
  setrlimit(RLIMIT_NOFILE, &rl);
  if (!strcmp(cmd, "ingest") || !strcmp(cmd, "fill")) {
    size_t n = argc > 3 ? strtoul(argv[3], NULL, 10) : 10000;
    const char *mode = argc > 4 ? argv[4] : "batch";
    if (!strcmp(cmd, "fill"))
      mode = "none";
    enum spool_sync s = !strcmp(mode, "always") ? SPOOL_SYNC_ALWAYS
                        : !strcmp(mode, "none") ? SPOOL_SYNC_NONE : SPOOL_SYNC_BATCH;
    enum spool_sync_method m = argc > 5 && !strcmp(argv[5], "fsync")    ? SPOOL_SYNCM_FSYNC
                               : argc > 5 && !strcmp(argv[5], "syncfs") ? SPOOL_SYNCM_SYNCFS
                                                                        : SPOOL_SYNCM_DEFAULT;
    struct spool *sp = open_sp(dir, s, m, false);
    uint64_t g0 = clock_mono_ns();
    if (!getenv("BENCH_PICKUP_READY"))
      make_pickup(dir, n);
    double gen = (double)(clock_mono_ns() - g0) / 1e9;
    double secs = ingest_all(sp, n);
    struct spool_stats st;
    spool_get_stats(sp, &st);
    printf("ingest sync=%s method=%s n=%zu: %.3f s wall, %.0f msg/s; CPU %.3f s = %.1f us/msg "
           "(%.0f msg/s per core); %llu batches, %llu sync calls (%.4f per message); pickup "
           "generation %.1f s\n",
           mode, m == SPOOL_SYNCM_FSYNC ? "fsync" : m == SPOOL_SYNCM_SYNCFS ? "syncfs" : "default", n, secs, (double)n / secs,
           last_cpu, last_cpu * 1e6 / (double)n, (double)n / last_cpu,
           (unsigned long long)st.batches, (unsigned long long)st.syncs,
           (double)st.syncs / (double)n, gen);
    spool_close(sp);
    return 0;
  }
  if (!strcmp(cmd, "gen")) { /* pickup files only, for profiling ingest alone */
    size_t n = argc > 3 ? strtoul(argv[3], NULL, 10) : 10000;
    spool_close(open_sp(dir, SPOOL_SYNC_NONE, SPOOL_SYNCM_DEFAULT, false));
    make_pickup(dir, n);
    return 0;
  }
  if (!strcmp(cmd, "recover")) {
    bool keep = argc > 3 && !strcmp(argv[3], "keep");
    keep_msgs = true;
    long before = rss_kb();
    struct spool *sp = open_sp(dir, SPOOL_SYNC_BATCH, SPOOL_SYNCM_DEFAULT, keep);
    uint64_t t0 = clock_mono_ns();
    double c0 = cpu_s();
    long r = spool_recover(sp);
    double secs = (double)(clock_mono_ns() - t0) / 1e9;
    double cpu = cpu_s() - c0;
    long after = rss_kb();
    printf("recover n=%ld dicts=%s: %.2f s wall (%.0f msg/s), CPU %.2f s; RSS %ld KB -> %ld "
           "KB, %.0f bytes per queued message\n",
           r, keep ? "memory" : "disk", secs, (double)r / secs, cpu, before, after,
           r > 0 ? (double)(after - before) * 1024.0 / (double)r : 0.0);
    for (size_t i = 0; i < nmsgs; i++)
      spool_msg_free(msgs[i]);
    spool_close(sp);
    return 0;
  }
  if (!strcmp(cmd, "dicts")) {
    size_t n = argc > 3 ? strtoul(argv[3], NULL, 10) : 10000;
    keep_msgs = true;
    struct spool *sp = open_sp(dir, SPOOL_SYNC_NONE, SPOOL_SYNCM_DEFAULT, false);
    make_pickup(dir, n);
    ingest_all(sp, n);
    /* On disk: each load is a pread from the journal segment + CRC + decode. */
    uint64_t t0 = clock_mono_ns();
    size_t found = 0;
    for (size_t i = 0; i < nmsgs; i++) {
      if (spool_load_ctx(sp, msgs[i]) < 0)
        return 1;
      found += ctx_get(msgs[i]->mess, "campaign") != NULL;
      spool_drop_ctx(sp, msgs[i]);
    }
    double disk = (double)(clock_mono_ns() - t0) / (double)nmsgs;
    /* In memory: the same accesses with the dictionaries resident. */
    for (size_t i = 0; i < nmsgs; i++)
      spool_load_ctx(sp, msgs[i]);
    t0 = clock_mono_ns();
    for (int rep = 0; rep < 10; rep++)
      for (size_t i = 0; i < nmsgs; i++) {
        spool_load_ctx(sp, msgs[i]); /* no-op: resident */
        found += ctx_get(msgs[i]->mess, "campaign") != NULL;
      }
    double mem = (double)(clock_mono_ns() - t0) / (double)nmsgs / 10.0;
    printf("dicts n=%zu: read-back from disk %.0f ns/msg (1 syscall: pread64 from the journal segment), "
           "resident %.1f ns/msg (0 syscalls), ratio %.0fx [%zu]\n",
           nmsgs, disk, mem, disk / mem, found);
    for (size_t i = 0; i < nmsgs; i++)
      spool_msg_free(msgs[i]);
    spool_close(sp);
    return 0;
  }
  fprintf(stderr, "unknown command %s\n", cmd);
  return 2;
}
