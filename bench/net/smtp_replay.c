/* smtp_replay: the socket floor of issue 25. It replays the engine's SMTP
 * byte stream for N 1 KB messages (what bench/impetus-bench's messages
 * become on the wire: "EHLO <hostname>", "MAIL FROM:<bench@sender.test> SIZE=n",
 * "RCPT TO:<uI.0@destD.test>", then "BDAT n LAST" + body, or DATA, 354, the
 * body with CRLF line ends and ".") on as many connections as the engine
 * used, to the same sink, with the engine's pipelining: BDAT transactions
 * up to --depth in flight per connection, DATA's next MAIL/RCPT/DATA sent
 * behind the dot. It does nothing else (no files, no spool, no queues), so
 * its CPU per message is what the socket operations of that conversation
 * cost at least: one non-blocking send of everything ready and one recv of
 * everything arrived per connection and wake-up, one epoll_wait per batch.
 * It counts its own system calls. Single thread; prints one JSON line.
 *
 *   smtp_replay --port P [--addr A] --connections C --count N [--size B]
 *               [--mode bdat|data] [--depth D] [--domains K]
 *
 * Must never be used as a test: it measures, asserts nothing but that every
 * message got a 2xx (exit 1 otherwise). */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_GREET, ST_EHLO, ST_RUN, ST_QUIT, ST_DONE };

struct conn {
  int fd, st;
  char *out;        /* bytes not yet sent */
  size_t out_len, out_cap, out_off;
  char line[512];   /* a reply line split across reads */
  size_t line_len;
  /* the final replies owed, in order: what each one completes */
  uint8_t q[64];
  unsigned qh, qn;
};

enum { K_ENV, K_354, K_DOT }; /* MAIL/RCPT's 250, DATA's 354, the message's reply */

static const char *addr = "127.0.0.1";
static int port, nconn = 1, count = 1000, size = 1024, depth = 8, domains = 10, data_mode;
static int next_msg, acked, bad;
static unsigned long n_send, n_recv, n_epoll, n_other;
static char *body_crlf;  /* the message as the engine sends it (CRLF) */
static size_t body_len, lf_size; /* on the wire; as stored (LF), the SIZE= the engine states */
static char ehlo[300]; /* "EHLO <this host's name>", as the engine says it */

static void die(const char *m)
{
  perror(m);
  exit(2);
}

static void put(struct conn *c, const char *p, size_t n)
{
  if (c->out_len + n > c->out_cap) {
    c->out_cap = (c->out_len + n) * 2;
    c->out = realloc(c->out, c->out_cap);
    if (!c->out)
      die("realloc");
  }
  memcpy(c->out + c->out_len, p, n);
  c->out_len += n;
}

/* impetus-bench's make_body(size), with the CRLF line ends the engine sends */
static void make_body(void)
{
  const char *head = "From: <bench@sender.test>\r\nTo: <rcpt@dest.test>\r\nSubject: impetus-bench\r\n\r\n";
  size_t hl_lf = strlen(head) - 4; /* the Python body counts LF line ends */
  int n = (int)((size - (int)hl_lf) / 77);
  if (n < 1)
    n = 1;
  body_len = strlen(head) + (size_t)n * 78;
  lf_size = hl_lf + (size_t)n * 77;
  body_crlf = malloc(body_len);
  memcpy(body_crlf, head, strlen(head));
  char *p = body_crlf + strlen(head);
  for (int i = 0; i < n; i++, p += 78) {
    memset(p, 'x', 76);
    p[76] = '\r';
    p[77] = '\n';
  }
}

static void push(struct conn *c, uint8_t k)
{
  if (c->qn == sizeof(c->q))
    die("reply queue full");
  c->q[(c->qh + c->qn++) % sizeof(c->q)] = k;
}

/* The envelope of message i; with BDAT the chunk too. Returns false when
 * all messages are taken. */
static int start_txn(struct conn *c)
{
  if (next_msg >= count)
    return 0;
  int i = next_msg++;
  char env[256];
  int k = snprintf(env, sizeof(env),
                   "MAIL FROM:<bench@sender.test> SIZE=%zu\r\nRCPT TO:<u%d.0@dest%d.test>\r\n",
                   lf_size, i, i % domains);
  put(c, env, (size_t)k);
  if (data_mode) {
    put(c, "DATA\r\n", 6);
  } else {
    k = snprintf(env, sizeof(env), "BDAT %zu LAST\r\n", body_len);
    put(c, env, (size_t)k);
    put(c, body_crlf, body_len);
  }
  push(c, K_ENV);
  push(c, K_ENV);
  push(c, data_mode ? K_354 : K_DOT);
  return 1;
}

static void flush(struct conn *c)
{
  while (c->out_off < c->out_len) {
    n_send++;
    ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN)
        return; /* EPOLLOUT is armed for the rest */
      die("send");
    }
    c->out_off += (size_t)w;
  }
  c->out_off = c->out_len = 0;
}

/* One final reply line: what it completes. */
static void on_final(struct conn *c, const char *l, size_t n)
{
  if (n < 3 || (l[0] != '2' && l[0] != '3')) {
    bad++;
    fprintf(stderr, "smtp_replay: reply %.*s\n", (int)n, l);
  }
  switch (c->st) {
  case ST_GREET:
    c->st = ST_EHLO;
    put(c, ehlo, strlen(ehlo));
    return;
  case ST_EHLO:
    c->st = ST_RUN;
    for (int d = 0; d < (data_mode ? 1 : depth); d++)
      if (!start_txn(c))
        break;
    if (!c->qn) { /* the other connections took every message */
      c->st = ST_QUIT;
      put(c, "QUIT\r\n", 6);
    }
    return;
  case ST_QUIT:
    c->st = ST_DONE;
    return;
  default:
    break;
  }
  if (!c->qn) {
    bad++;
    fprintf(stderr, "smtp_replay: unexpected reply %.*s\n", (int)n, l);
    return;
  }
  uint8_t kind = c->q[c->qh];
  c->qh = (c->qh + 1) % sizeof(c->q);
  c->qn--;
  if (kind == K_354) { /* the body, its dot, and the next envelope behind it (RFC 2920 3.1) */
    put(c, body_crlf, body_len);
    put(c, ".\r\n", 3);
    push(c, K_DOT);
    start_txn(c);
  } else if (kind == K_DOT) {
    acked++;
    if (!data_mode)
      start_txn(c);
  }
  if (c->qn == 0 && next_msg >= count) {
    c->st = ST_QUIT;
    put(c, "QUIT\r\n", 6);
  }
}

static void on_bytes(struct conn *c, const char *p, size_t n)
{
  while (n) {
    const char *nl = memchr(p, '\n', n);
    size_t k = nl ? (size_t)(nl - p) + 1 : n;
    if (c->line_len + k <= sizeof(c->line)) {
      memcpy(c->line + c->line_len, p, k);
      c->line_len += k;
    }
    p += k;
    n -= k;
    if (!nl)
      break;
    if (c->line_len >= 4 && c->line[3] != '-')
      on_final(c, c->line, c->line_len);
    c->line_len = 0;
  }
}

int main(int argc, char **argv)
{
  static const struct option opts[] = {
    {"addr", 1, 0, 'a'}, {"port", 1, 0, 'p'}, {"connections", 1, 0, 'c'}, {"count", 1, 0, 'n'},
    {"size", 1, 0, 's'}, {"mode", 1, 0, 'm'}, {"depth", 1, 0, 'd'}, {"domains", 1, 0, 'k'},
    {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "a:p:c:n:s:m:d:k:", opts, NULL)) != -1) {
    switch (o) {
    case 'a': addr = optarg; break;
    case 'p': port = atoi(optarg); break;
    case 'c': nconn = atoi(optarg); break;
    case 'n': count = atoi(optarg); break;
    case 's': size = atoi(optarg); break;
    case 'm': data_mode = !strcmp(optarg, "data"); break;
    case 'd': depth = atoi(optarg); break;
    case 'k': domains = atoi(optarg); break;
    default:
      fprintf(stderr, "usage: smtp_replay --port P [--addr A] --connections C --count N "
                      "[--size B] [--mode bdat|data] [--depth D] [--domains K]\n");
      return 2;
    }
  }
  if (!port || nconn < 1 || count < 1 || depth < 1)
    return fprintf(stderr, "smtp_replay: --port, --connections, --count\n"), 2;
  if (nconn > count)
    nconn = count;
  make_body();
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  snprintf(ehlo, sizeof(ehlo), "EHLO %s\r\n", host);
  struct rlimit rl;
  if (!getrlimit(RLIMIT_NOFILE, &rl)) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  struct conn *cs = calloc((size_t)nconn, sizeof(*cs));
  int ep = epoll_create1(0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, addr, &sa.sin_addr);
  struct timespec t0, t1;
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < nconn; i++) {
    struct conn *c = &cs[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    n_other += 3;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)
      die("connect");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
      die("epoll_ctl");
    n_other++;
  }
  int done = 0;
  char rb[65536];
  struct epoll_event evs[256];
  while (done < nconn) {
    n_epoll++;
    int k = epoll_wait(ep, evs, 256, 10000);
    if (k <= 0)
      die("epoll_wait (stalled)");
    for (int j = 0; j < k; j++) {
      struct conn *c = evs[j].data.ptr;
      if (c->st == ST_DONE)
        continue;
      if (evs[j].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (;;) {
          n_recv++;
          ssize_t r = recv(c->fd, rb, sizeof(rb), 0);
          if (r > 0) {
            on_bytes(c, rb, (size_t)r);
            if ((size_t)r < sizeof(rb))
              break; /* edge-triggered: a short read took all there was */
            continue;
          }
          if (r < 0 && errno == EAGAIN)
            break;
          if (c->st != ST_DONE) {
            fprintf(stderr, "smtp_replay: connection closed early\n");
            bad++;
          }
          c->st = ST_DONE;
          break;
        }
      }
      if (c->st != ST_DONE)
        flush(c);
      if (c->st == ST_DONE) {
        n_other++;
        close(c->fd);
        done++;
      }
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  getrusage(RUSAGE_SELF, &r1);
  double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  double us = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1e6 +
              (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec);
  double ss = (double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e6 +
              (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
  unsigned long sc = n_send + n_recv + n_epoll + n_other;
  printf("{\"mode\": \"%s\", \"connections\": %d, \"count\": %d, \"acked\": %d, \"failed\": %d, "
         "\"elapsed_s\": %.3f, \"msgs_per_s\": %.1f, \"cpu_us_per_msg\": %.2f, "
         "\"user_us_per_msg\": %.2f, \"sys_us_per_msg\": %.2f, \"syscalls_per_msg\": %.3f, "
         "\"sends_per_msg\": %.3f, \"recvs_per_msg\": %.3f, \"epoll_waits_per_msg\": %.3f, "
         "\"ctx_switches_per_msg\": %.3f}\n",
         data_mode ? "data" : "bdat", nconn, count, acked, bad, el, count / el,
         (us + ss) / count, us / count, ss / count, (double)sc / count, (double)n_send / count,
         (double)n_recv / count, (double)n_epoll / count,
         (double)(r1.ru_nvcsw - r0.ru_nvcsw + r1.ru_nivcsw - r0.ru_nivcsw) / count);
  for (int i = 0; i < nconn; i++)
    free(cs[i].out);
  free(cs);
  free(body_crlf);
  close(ep);
  return acked == count && !bad ? 0 : 1;
}
