/* dns against a dnsmasq started here on 127.0.0.1 (skips with 77 when
 * dnsmasq is missing): MX preference order, A/AAAA fallback, null MX,
 * NXDOMAIN vs REFUSED/timeout, plain host lookups, literals, cache hits. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "dns.h"
#include "ring.h"

static pid_t dnsmasq_pid;
static uint16_t dns_port;
static struct ring *R;

struct got {
  bool done;
  enum dns_status st;
  bool implicit;
  char text[200];
  unsigned n;
  char names[8][64];
  uint16_t pref[8];
  char addr[8][64];
};

static void on_res(void *arg, const struct dns_result *r) {
  struct got *g = arg;
  g->done = true;
  g->st = r->status;
  g->implicit = r->implicit_mx;
  snprintf(g->text, sizeof g->text, "%s", r->text);
  g->n = r->nhosts;
  for (unsigned i = 0; i < r->nhosts && i < 8; i++) {
    snprintf(g->names[i], sizeof g->names[i], "%s", r->hosts[i].name);
    g->pref[i] = r->hosts[i].pref;
    g->addr[i][0] = 0;
    if (r->hosts[i].naddr > 0)
      inet_ntop(r->hosts[i].addr[0].family, r->hosts[i].addr[0].a, g->addr[i], sizeof g->addr[i]);
  }
}

static void resolve(struct dns *d, const char *name, bool mx, struct got *g) {
  memset(g, 0, sizeof *g);
  dns_resolve(d, name, mx, on_res, g);
  assert_false(g->done); /* never inside dns_resolve */
  uint64_t end = clock_mono_ns() + 5000000000ull;
  while (!g->done && clock_mono_ns() < end)
    ring_run_once(R, 100000000);
  assert_true(g->done);
}

static struct dns *mkdns(uint16_t port, unsigned timeout_ms) {
  char servers[64], err[200];
  snprintf(servers, sizeof servers, "127.0.0.1:%u", port);
  struct dns_params p = {.servers = servers, .timeout_ms = timeout_ms, .tries = 1};
  struct dns *d = dns_new(R, &p, err, sizeof err);
  if (d == NULL)
    fail_msg("dns_new: %s", err);
  return d;
}

static void test_mx_order(void **st) {
  (void)st;
  struct dns *d = mkdns(dns_port, 1000);
  struct got g;
  resolve(d, "MX.test.", true, &g);
  assert_int_equal(g.st, DNS_OK);
  assert_false(g.implicit);
  assert_int_equal(g.n, 3);
  assert_string_equal(g.names[0], "mx2.mx.test");
  assert_int_equal(g.pref[0], 5);
  assert_string_equal(g.addr[0], "127.0.0.12");
  assert_string_equal(g.names[1], "mx1.mx.test");
  assert_string_equal(g.addr[1], "127.0.0.11");
  assert_string_equal(g.names[2], "mx3.mx.test");
  assert_string_equal(g.addr[2], "::1"); /* AAAA only */
  /* second time: all from the cache */
  unsigned cached;
  unsigned long hits, q1, q2;
  dns_stats(d, &cached, &hits, &q1);
  resolve(d, "mx.test", true, &g);
  dns_stats(d, &cached, &hits, &q2);
  assert_int_equal(g.st, DNS_OK);
  assert_int_equal(q1, q2);
  assert_true(hits >= 7);
  dns_free(d);
}

static void test_fallback_null_nx(void **st) {
  (void)st;
  struct dns *d = mkdns(dns_port, 1000);
  struct got g;
  resolve(d, "afallback.test", true, &g);
  assert_int_equal(g.st, DNS_OK);
  assert_true(g.implicit);
  assert_int_equal(g.n, 1);
  assert_string_equal(g.names[0], "afallback.test");
  assert_string_equal(g.addr[0], "127.0.0.5");

  resolve(d, "null.test", true, &g);
  assert_int_equal(g.st, DNS_NULLMX);
  assert_true(dns_status_permanent(g.st));
  assert_non_null(strstr(g.text, "null MX"));

  resolve(d, "nope.test", true, &g);
  assert_int_equal(g.st, DNS_NXDOMAIN);
  assert_true(dns_status_permanent(g.st));

  /* exists, but neither MX nor address */
  resolve(d, "txtonly.test", true, &g);
  assert_int_equal(g.st, DNS_NOADDR);

  /* no upstream for this zone: dnsmasq says REFUSED -> transient */
  resolve(d, "elsewhere.example", true, &g);
  assert_int_equal(g.st, DNS_TEMPFAIL);
  assert_false(dns_status_permanent(g.st));
  printf("# refused: %s\n", g.text);
  dns_free(d);
}

static void test_hosts(void **st) {
  (void)st;
  struct dns *d = mkdns(dns_port, 1000);
  struct got g;
  resolve(d, "mx1.mx.test", false, &g);
  assert_int_equal(g.st, DNS_OK);
  assert_string_equal(g.addr[0], "127.0.0.11");
  resolve(d, "127.0.0.9", false, &g);
  assert_int_equal(g.st, DNS_OK);
  assert_string_equal(g.addr[0], "127.0.0.9");
  resolve(d, "[IPv6:::1]", true, &g);
  assert_int_equal(g.st, DNS_OK);
  assert_string_equal(g.addr[0], "::1");
  resolve(d, "a..b", true, &g);
  assert_int_equal(g.st, DNS_BADNAME);
  resolve(d, "nohost.test", false, &g);
  assert_int_equal(g.st, DNS_NXDOMAIN);
  /* cancelled: the callback never runs */
  memset(&g, 0, sizeof g);
  struct dns_req *q = dns_resolve(d, "mx.test", true, on_res, &g);
  dns_cancel(q);
  for (int i = 0; i < 20; i++)
    ring_run_once(R, 10000000);
  assert_false(g.done);
  /* outstanding requests at dns_free are dropped quietly */
  dns_resolve(d, "other.test", true, on_res, &g);
  dns_free(d);
  for (int i = 0; i < 5; i++)
    ring_run_once(R, 1000000);
  assert_false(g.done);
}

static void test_timeout(void **st) {
  (void)st;
  /* a UDP socket that never answers */
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  bind(fd, (struct sockaddr *)&a, sizeof a);
  getsockname(fd, (struct sockaddr *)&a, &l);
  struct dns *d = mkdns(ntohs(a.sin_port), 150);
  struct got g;
  uint64_t t0 = clock_mono_ns();
  resolve(d, "slow.test", true, &g);
  assert_int_equal(g.st, DNS_TEMPFAIL);
  assert_true(clock_mono_ns() - t0 >= 140000000ull);
  printf("# timeout: %s\n", g.text);
  dns_free(d);
  close(fd);
}

static uint16_t free_udp_port(void) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  bind(fd, (struct sockaddr *)&a, sizeof a);
  getsockname(fd, (struct sockaddr *)&a, &l);
  close(fd);
  return ntohs(a.sin_port);
}

static int setup(void **st) {
  (void)st;
  if (access("/usr/sbin/dnsmasq", X_OK) != 0) {
    printf("SKIP: dnsmasq not installed\n");
    exit(77);
  }
  int err = 0;
  R = ring_new(NULL, &err);
  if (R == NULL) {
    printf("SKIP: io_uring unavailable\n");
    exit(77);
  }
  dns_port = free_udp_port();
  char port[32];
  snprintf(port, sizeof port, "--port=%u", dns_port);
  dnsmasq_pid = fork();
  if (dnsmasq_pid == 0) {
    int null = open("/dev/null", 1);
    dup2(null, 1);
    dup2(null, 2);
    execl("/usr/sbin/dnsmasq", "dnsmasq", "--no-daemon", port, "--listen-address=127.0.0.1",
          "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=", "--local=/test/",
          "--local-ttl=300", "--mx-host=mx.test,mx1.mx.test,10", "--mx-host=mx.test,mx2.mx.test,5",
          "--mx-host=mx.test,mx3.mx.test,20", "--host-record=mx1.mx.test,127.0.0.11",
          "--host-record=mx2.mx.test,127.0.0.12", "--host-record=mx3.mx.test,::1",
          "--host-record=afallback.test,127.0.0.5", "--mx-host=null.test,.,0",
          "--txt-record=txtonly.test,hello", (char *)NULL);
    _exit(127);
  }
  /* wait (bounded) until it answers; a loaded machine (load 25 seen) can
   * take more than 5 s to start it, so the bound is generous and a dnsmasq
   * that exits (a port taken meanwhile) is reported at once */
  char servers[64], e[200];
  snprintf(servers, sizeof servers, "127.0.0.1:%u", dns_port);
  struct dns_params p = {.servers = servers, .timeout_ms = 100, .tries = 1};
  uint64_t end = clock_mono_ns() + 30000000000ull;
  for (;;) {
    int status;
    if (waitpid(dnsmasq_pid, &status, WNOHANG) == dnsmasq_pid) {
      printf("dnsmasq exited (status %d) before answering\n", status);
      return -1;
    }
    struct dns *d = dns_new(R, &p, e, sizeof e);
    struct got g;
    resolve(d, "mx1.mx.test", false, &g);
    dns_free(d);
    if (g.st == DNS_OK)
      break;
    if (clock_mono_ns() > end) {
      printf("dnsmasq did not come up\n");
      return -1;
    }
  }
  return 0;
}

static int teardown(void **st) {
  (void)st;
  kill(dnsmasq_pid, SIGTERM);
  waitpid(dnsmasq_pid, NULL, 0);
  ring_free(R);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_mx_order), cmocka_unit_test(test_fallback_null_nx),
    cmocka_unit_test(test_hosts), cmocka_unit_test(test_timeout),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
