/* cluster_drive: drives the cluster client (src/engine/cluster) against a
 * real redis-server for test_cluster_redis.py. Each mode prints JSON or
 * "key value" lines on stdout; the Python side starts Redis, runs the
 * modes, reads INFO commandstats and kills processes by PID.
 *
 *   rate URL KEY N PER SECONDS NODES   NODES clients in this process take
 *                                      tokens as fast as granted; prints the
 *                                      rate over SECONDS after a 1 s warm-up
 *   take URL KEY N PER COUNT           one client takes COUNT tokens (a
 *                                      throttle that does not bind)
 *   hold URL NODE KEY LIMIT WANT TTL SECONDS  acquire up to WANT leases, give
 *                                      one back whenever told to shed, print
 *                                      "t held" on every change (t: CLOCK_MONOTONIC
 *                                      seconds, comparable between processes); SECONDS
 *                                      0 = until killed
 * rediss:// URLs take their TLS files from the environment:
 * CLUSTER_TLS_CA, CLUSTER_TLS_CERT, CLUSTER_TLS_KEY (each optional). */
#include "cluster.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct cluster *open_node(const char *url, const char *node, unsigned ttl)
{
  char err[512];
  struct cluster_params p = {.url = url, .node_name = node, .lease_ttl_s = ttl,
                             .failure_mode = CLUSTER_FAIL_CLOSED, .nworkers = 1,
                             .tls_ca_file = getenv("CLUSTER_TLS_CA"),
                             .tls_cert_file = getenv("CLUSTER_TLS_CERT"),
                             .tls_key_file = getenv("CLUSTER_TLS_KEY"),
                             .tls_verify = true};
  struct cluster *c = cluster_new(&p, err, sizeof err);
  if (c == NULL) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  for (int i = 0; i < 500 && !cluster_up(c); i++)
    usleep(10000);
  if (!cluster_up(c)) {
    fprintf(stderr, "cluster client did not connect to %s\n", url);
    exit(1);
  }
  return c;
}

struct taker {
  pthread_t th;
  struct cluster_bucket *b;
  atomic_bool *go, *stop;
  _Atomic uint64_t counted;
};

static void *take_loop(void *arg)
{
  struct taker *t = arg;
  while (!atomic_load(t->stop)) {
    uint64_t wait = 0;
    if (cluster_take(t->b, 0, now_ns(), &wait) == 0) {
      if (atomic_load(t->go))
        atomic_fetch_add(&t->counted, 1);
    } else
      usleep(200); /* no ring to wake here: poll the balance */
  }
  return NULL;
}

static int mode_rate(int argc, char **argv)
{
  if (argc != 8)
    return 2;
  const char *url = argv[2], *key = argv[3];
  uint32_t n = (uint32_t)atoi(argv[4]), per = (uint32_t)atoi(argv[5]);
  double secs = atof(argv[6]);
  int nodes = atoi(argv[7]);
  struct cluster *c[8];
  struct taker t[8];
  atomic_bool go = false, stop = false;
  if (nodes < 1 || nodes > 8)
    return 2;
  for (int i = 0; i < nodes; i++) {
    char name[32];
    snprintf(name, sizeof name, "rate%d", i);
    c[i] = open_node(url, name, 10);
    memset(&t[i], 0, sizeof t[i]);
    t[i].b = cluster_bucket(c[i], key, n, per);
    t[i].go = &go;
    t[i].stop = &stop;
    pthread_create(&t[i].th, NULL, take_loop, &t[i]);
  }
  usleep(1000000); /* warm-up: the first grants may use the tolerance */
  atomic_store(&go, true);
  uint64_t t0 = now_ns();
  usleep((useconds_t)(secs * 1e6));
  atomic_store(&go, false);
  uint64_t t1 = now_ns();
  atomic_store(&stop, true);
  uint64_t total = 0;
  printf("{\"per_node\": [");
  for (int i = 0; i < nodes; i++) {
    pthread_join(t[i].th, NULL);
    total += atomic_load(&t[i].counted);
    printf("%s%llu", i ? ", " : "", (unsigned long long)atomic_load(&t[i].counted));
  }
  uint64_t rt = 0;
  for (int i = 0; i < nodes; i++) {
    struct cluster_stats s;
    cluster_stats(c[i], &s);
    rt += s.round_trips;
    cluster_free(c[i]);
  }
  double el = (double)(t1 - t0) / 1e9;
  printf("], \"taken\": %llu, \"seconds\": %.3f, \"rate\": %.1f, \"round_trips\": %llu}\n",
         (unsigned long long)total, el, (double)total / el, (unsigned long long)rt);
  return 0;
}

static int mode_take(int argc, char **argv)
{
  if (argc != 7)
    return 2;
  struct cluster *c = open_node(argv[2], "take", 10);
  struct cluster_bucket *b = cluster_bucket(c, argv[3], (uint32_t)atoi(argv[4]),
                                            (uint32_t)atoi(argv[5]));
  uint64_t want = (uint64_t)atoll(argv[6]), got = 0;
  uint64_t t0 = now_ns();
  while (got < want) {
    uint64_t wait;
    if (cluster_take(b, 0, now_ns(), &wait) == 0) {
      got++;
      /* a delivery takes a while: about 20,000 messages a second */
      uint64_t until = t0 + got * 50000u;
      while (now_ns() < until)
        ;
    } else
      usleep(100);
  }
  double el = (double)(now_ns() - t0) / 1e9;
  struct cluster_stats s;
  cluster_stats(c, &s);
  printf("{\"taken\": %llu, \"seconds\": %.3f, \"round_trips\": %llu, \"waits\": %llu}\n",
         (unsigned long long)got, el, (unsigned long long)s.round_trips,
         (unsigned long long)s.waits);
  cluster_free(c);
  return 0;
}

static int mode_hold(int argc, char **argv)
{
  if (argc != 9)
    return 2;
  struct cluster *c = open_node(argv[2], argv[3], (unsigned)atoi(argv[7]));
  struct cluster_cap *cap = cluster_cap(c, argv[4], (uint32_t)atoi(argv[5]));
  uint32_t want = (uint32_t)atoi(argv[6]);
  double secs = atof(argv[8]);
  uint64_t t0 = now_ns();
  uint32_t held = 0, printed = UINT32_MAX;
  setvbuf(stdout, NULL, _IOLBF, 0);
  while (secs <= 0 || (double)(now_ns() - t0) / 1e9 < secs) {
    uint64_t wait;
    if (cluster_cap_shed(cap) && held > 0) {
      cluster_cap_release(cap);
      held--;
    }
    if (held < want && cluster_cap_acquire(cap, 0, &wait) == 0)
      held++;
    else
      usleep(20000); /* no ring to wake: ask again soon */
    if (held != printed) {
      printf("%.6f %u\n", (double)now_ns() / 1e9, held);
      printed = held;
    }
  }
  while (held--)
    cluster_cap_release(cap);
  cluster_free(c);
  return 0;
}

int main(int argc, char **argv)
{
  int rc = 2;
  if (argc > 1 && !strcmp(argv[1], "rate"))
    rc = mode_rate(argc, argv);
  else if (argc > 1 && !strcmp(argv[1], "take"))
    rc = mode_take(argc, argv);
  else if (argc > 1 && !strcmp(argv[1], "hold"))
    rc = mode_hold(argc, argv);
  if (rc == 2)
    fprintf(stderr, "usage: cluster_drive rate|take|hold ... (see the source)\n");
  return rc;
}
