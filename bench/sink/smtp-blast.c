/* smtp-blast: a pipelining SMTP load client for measuring sinks. It owns
 * C connections (epoll, one thread), each sending EHLO once and then
 * messages back to back over the same connection: MAIL, RCPT and DATA in
 * one write (RFC 2920), then after the 354 the body, the dot and the next
 * MAIL/RCPT/DATA in one write. Counts messages acknowledged with 250 and
 * prints the rate. It never blocks: every socket is non-blocking. With -t,
 * the connections are spread over that many threads (one epoll each), so
 * the client is not the bottleneck on a busy machine.
 * With -b, messages go as RFC 3030 chunks instead: MAIL, RCPT and
 * "BDAT n LAST" + the message's octets (not dot-stuffed) in one write, no
 * 354 to wait for, and -w such messages in flight per connection (a new
 * one is written as each one's final reply arrives), as an engine using
 * CHUNKING sends them. The sink must advertise CHUNKING.
 * Usage: smtp-blast [-b [-w WINDOW]] [-c CONNS] [-t THREADS] [-m MESSAGES] [-l BYTES] [-r RCPTS] HOST:PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { E_GREET, E_EHLO, E_MAIL, E_RCPT, E_DATA, E_DOT, E_BDAT, E_QUIT };
#define MAXQ 64
#define RBUF 65536

struct conn {
  int fd;
  unsigned char q[MAXQ]; /* expected replies, in order */
  unsigned qh, qt;
  char rbuf[RBUF];
  size_t rlen;
  char *wbuf;
  size_t wlen, woff, wcap;
  int done;
  int wantout;
  int quit_sent;
};

static atomic_long remaining, acked, failed;
static char *body;
static size_t body_len;
static char env[512];
static size_t env_len;
static int nrcpt = 1;
static int bdat, window = 1;
static char bdat_cmd[64];
static size_t bdat_cmd_len;

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
  perror(what);
  exit(1);
}

static void out(struct conn *c, const char *p, size_t n)
{
  if (c->wlen + n > c->wcap) {
    c->wcap = (c->wlen + n) * 2;
    c->wbuf = realloc(c->wbuf, c->wcap);
    if (!c->wbuf)
      die("realloc");
  }
  memcpy(c->wbuf + c->wlen, p, n);
  c->wlen += n;
}

static void expect(struct conn *c, int e)
{
  c->q[c->qt++ % MAXQ] = (unsigned char)e;
}

static void queue_envelope(struct conn *c)
{
  if (c->quit_sent)
    return;
  if (atomic_fetch_sub(&remaining, 1) <= 0) {
    out(c, "QUIT\r\n", 6);
    expect(c, E_QUIT);
    c->quit_sent = 1;
    return;
  }
  out(c, env, env_len);
  expect(c, E_MAIL);
  for (int i = 0; i < nrcpt; i++)
    expect(c, E_RCPT);
  if (bdat) {
    /* The whole message in this write: the body without its ".\r\n". */
    out(c, bdat_cmd, bdat_cmd_len);
    out(c, body, body_len - 3);
    expect(c, E_BDAT);
    return;
  }
  expect(c, E_DATA);
}

static int flush(struct conn *c)
{
  while (c->woff < c->wlen) {
    ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN)
        return 0;
      return -1;
    }
    c->woff += (size_t)n;
  }
  c->woff = c->wlen = 0;
  return 0;
}

/* Handle one final reply line. */
static void on_reply(struct conn *c, int code)
{
  if (c->qh == c->qt) {
    fprintf(stderr, "smtp-blast: unexpected reply %d\n", code);
    exit(1);
  }
  int e = c->q[c->qh++ % MAXQ];
  switch (e) {
  case E_GREET:
    if (code != 220)
      failed++;
    out(c, "EHLO blast.test\r\n", 17);
    expect(c, E_EHLO);
    break;
  case E_EHLO:
    if (code != 250)
      failed++;
    for (int i = 0; i < (bdat ? window : 1); i++)
      queue_envelope(c);
    break;
  case E_MAIL:
  case E_RCPT:
    if (code != 250)
      failed++;
    break;
  case E_DATA:
    if (code != 354) {
      failed++;
      out(c, "RSET\r\n", 6);
      expect(c, E_MAIL);
      queue_envelope(c);
      break;
    }
    out(c, body, body_len);
    expect(c, E_DOT);
    queue_envelope(c); /* pipelined right after the dot */
    break;
  case E_DOT:
    if (code == 250)
      acked++;
    else
      failed++;
    break;
  case E_BDAT:
    if (code == 250)
      acked++;
    else
      failed++;
    queue_envelope(c);
    break;
  case E_QUIT:
    c->done = 1;
    break;
  }
}

static int on_read(struct conn *c)
{
  for (;;) {
    ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
    if (n == 0)
      return c->done ? 1 : -1;
    if (n < 0) {
      if (errno == EAGAIN)
        break;
      return -1;
    }
    c->rlen += (size_t)n;
    size_t off = 0;
    for (;;) {
      char *nl = memchr(c->rbuf + off, '\n', c->rlen - off);
      if (!nl)
        break;
      size_t len = (size_t)(nl - (c->rbuf + off));
      if (len >= 4 && c->rbuf[off + 3] == ' ')
        on_reply(c, atoi(c->rbuf + off));
      else if (len == 3)
        on_reply(c, atoi(c->rbuf + off));
      off += len + 1;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    if (c->rlen == RBUF)
      return -1;
  }
  return flush(c);
}

struct worker {
  pthread_t th;
  struct conn *cs;
  int first, last;
};

static void *worker_run(void *arg)
{
  struct worker *w = arg;
  int ep = epoll_create1(0);
  for (int i = w->first; i < w->last; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->cs[i]};
    epoll_ctl(ep, EPOLL_CTL_ADD, w->cs[i].fd, &ev);
  }
  int open_conns = w->last - w->first;
  struct epoll_event evs[256];
  while (open_conns > 0) {
    int n = epoll_wait(ep, evs, 256, 10000);
    if (n == 0) {
      fprintf(stderr, "smtp-blast: stalled (acked %ld)\n", (long)acked);
      exit(1);
    }
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      int r = on_read(c);
      if (r != 0) {
        if (r < 0)
          fprintf(stderr, "smtp-blast: connection lost\n");
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        open_conns--;
        continue;
      }
      if ((c->wlen != 0) != c->wantout) {
        /* Output left over (full socket buffer): wait for writability too. */
        c->wantout = c->wlen != 0;
        struct epoll_event ev = {.events = EPOLLIN | (c->wantout ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
      }
    }
  }
  close(ep);
  return NULL;
}

int main(int argc, char **argv)
{
  int nconn = 16, nthreads = 1;
  long total = 100000;
  long size = 1024;
  int opt;
  while ((opt = getopt(argc, argv, "bw:c:t:m:l:r:")) != -1) {
    switch (opt) {
    case 'b': bdat = 1; break;
    case 'w': window = atoi(optarg); break;
    case 'c': nconn = atoi(optarg); break;
    case 't': nthreads = atoi(optarg); break;
    case 'm': total = atol(optarg); break;
    case 'l': size = atol(optarg); break;
    case 'r': nrcpt = atoi(optarg); break;
    default:
      fprintf(stderr, "usage: smtp-blast [-b [-w WINDOW]] [-c CONNS] [-t THREADS] [-m MESSAGES] [-l BYTES] [-r RCPTS] HOST:PORT\n");
      return 2;
    }
  }
  /* Replies expected at once must fit the queue: window x (MAIL, RCPTs, BDAT) + QUIT. */
  if (optind >= argc || nconn < 1 || nrcpt < 1 || nthreads < 1 || nrcpt > 16 || size < 64 ||
      window < 1 || window * (nrcpt + 2) + 1 > MAXQ) {
    fprintf(stderr, "usage: smtp-blast [-b [-w WINDOW]] [-c CONNS] [-t THREADS] [-m MESSAGES] [-l BYTES] [-r RCPTS] HOST:PORT\n");
    return 2;
  }
  char host[128];
  snprintf(host, sizeof(host), "%s", argv[optind]);
  char *colon = strrchr(host, ':');
  if (!colon)
    return 2;
  *colon = 0;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    return 2;

  /* A 1 KB-ish message: headers and 76-column lines, ending in CRLF . CRLF. */
  body = malloc((size_t)size + 128);
  size_t k = (size_t)snprintf(body, 128, "From: a@blast.test\r\nTo: b@blast.test\r\nSubject: blast\r\n\r\n");
  while (k + 80 < (size_t)size) {
    memset(body + k, 'x', 76);
    memcpy(body + k + 76, "\r\n", 2);
    k += 78;
  }
  while (k + 2 < (size_t)size)
    body[k++] = 'y';
  memcpy(body + k, "\r\n.\r\n", 5);
  body_len = k + 5;
  env_len = (size_t)snprintf(env, sizeof(env), "MAIL FROM:<a@blast.test>\r\n");
  for (int i = 0; i < nrcpt; i++)
    env_len += (size_t)snprintf(env + env_len, sizeof(env) - env_len, "RCPT TO:<b%d@blast.test>\r\n", i);
  if (!bdat)
    env_len += (size_t)snprintf(env + env_len, sizeof(env) - env_len, "DATA\r\n");
  bdat_cmd_len = (size_t)snprintf(bdat_cmd, sizeof(bdat_cmd), "BDAT %zu LAST\r\n", body_len - 3);

  remaining = total;
  struct conn *cs = calloc((size_t)nconn, sizeof(*cs));
  if (nthreads > nconn)
    nthreads = nconn;
  struct worker *ws = calloc((size_t)nthreads, sizeof(*ws));
  for (int i = 0; i < nconn; i++) {
    struct conn *c = &cs[i];
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
      die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
      die("connect");
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    expect(c, E_GREET);
  }
  double t0 = now_s();
  for (int t = 0; t < nthreads; t++) {
    ws[t].cs = cs;
    ws[t].first = nconn * t / nthreads;
    ws[t].last = nconn * (t + 1) / nthreads;
    if (pthread_create(&ws[t].th, NULL, worker_run, &ws[t]) != 0)
      die("pthread_create");
  }
  for (int t = 0; t < nthreads; t++)
    pthread_join(ws[t].th, NULL);
  double el = now_s() - t0;
  long nacked = acked, nfailed = failed;
  printf("{\"client\": \"smtp-blast\", \"mode\": \"%s\", \"window\": %d, \"connections\": %d, "
         "\"threads\": %d, \"messages\": %ld, \"failed\": %ld, \"size\": %ld, \"elapsed_s\": %.3f, "
         "\"msgs_per_s\": %.0f}\n",
         bdat ? "bdat" : "data", bdat ? window : 1, nconn, nthreads, nacked, nfailed, size, el,
         (double)nacked / el);
  for (int i = 0; i < nconn; i++)
    free(cs[i].wbuf);
  free(cs);
  free(ws);
  free(body);
  return nfailed ? 1 : 0;
}
