/* ctlsrv.c owns the control thread's event loop: accepting console
 * (Unix socket) and metrics (TCP) clients, reading each request into a
 * bounded per-client buffer, writing each answer without blocking, and
 * dropping clients that stall. Every client is served concurrently by one
 * poll loop, so an idle or slow client (a half-open HTTP request, a
 * console client that never reads) never delays another: each gets
 * CTL_IO_TIMEOUT_MS to send its request and CTL_IO_TIMEOUT_MS of silence
 * while its answer is written, and at most CTLSRV_CLIENTS_MAX are held
 * (the longest-waiting one is dropped for a new one).
 *
 * Must never: block on a client's socket (all are O_NONBLOCK); keep more
 * than CTL_REQUEST_MAX bytes of a request; answer anything itself (ctl.c
 * renders every answer).
 * Threads: the control thread only (ctlsrv_run). */
#include "ctl_internal.h"

#include "buf.h"
#include "panic.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum kind { K_CTL, K_HTTP };
enum phase { P_READ, P_WRITE };

struct client {
  int fd;
  enum kind kind;
  enum phase phase;
  uint64_t deadline_ms; /* read: since accept; write: since the last progress */
  size_t n;             /* request bytes so far */
  char req[CTL_REQUEST_MAX + 1];
  struct buf out;
};

static struct client *clients[CTLSRV_CLIENTS_MAX];
static unsigned nclients;

static uint64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void drop(unsigned i)
{
  struct client *c = clients[i];
  close(c->fd);
  buf_done(&c->out, 0);
  free(c);
  clients[i] = clients[--nclients];
}

static void take(int lfd, enum kind kind)
{
  /* a few per wake-up: a flood of connects must not starve the others */
  for (int k = 0; k < 16; k++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
      return;
    if (nclients == CTLSRV_CLIENTS_MAX) {
      /* full: the client nearest its deadline (the longest idle) goes */
      unsigned old = 0;
      for (unsigned i = 1; i < nclients; i++)
        if (clients[i]->deadline_ms < clients[old]->deadline_ms)
          old = i;
      drop(old);
    }
    struct client *c = util_xcalloc(1, sizeof *c);
    c->fd = fd;
    c->kind = kind;
    c->phase = P_READ;
    c->deadline_ms = now_ms() + CTL_IO_TIMEOUT_MS;
    clients[nclients++] = c;
  }
}

/* The request is complete when its first line is: for both protocols
 * (HTTP: the request line is all the metrics endpoint looks at). */
static bool request_done(struct client *c)
{
  return memchr(c->req, '\n', c->n) != NULL;
}

static void answer(struct client *c)
{
  c->req[c->n] = '\0';
  if (c->kind == K_CTL) {
    char *nl = strchr(c->req, '\n');
    if (nl == NULL) {
      buf_append_str(&c->out, "ERR\nrequest too long\n");
    } else {
      *nl = '\0';
      ctl_answer(c->req, &c->out);
    }
  } else {
    ctl_http_answer(c->req, &c->out);
  }
  c->phase = P_WRITE;
  c->deadline_ms = now_ms() + CTL_IO_TIMEOUT_MS;
}

/* false: the client is finished (or failed) and must be dropped */
static bool on_readable(struct client *c)
{
  for (;;) {
    size_t room = CTL_REQUEST_MAX - c->n;
    if (room == 0) { /* full without a newline */
      answer(c);
      return true;
    }
    ssize_t r = recv(c->fd, c->req + c->n, room, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return true;
    if (r <= 0)
      return false; /* closed before a whole request: nothing to answer */
    c->n += (size_t)r;
    if (request_done(c)) {
      answer(c);
      return true;
    }
  }
}

static bool on_writable(struct client *c)
{
  while (buf_avail(&c->out) > 0) {
    ssize_t w = send(c->fd, buf_head(&c->out), buf_avail(&c->out), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return true;
    if (w <= 0)
      return false;
    buf_consume(&c->out, (size_t)w);
    c->deadline_ms = now_ms() + CTL_IO_TIMEOUT_MS;
  }
  return false; /* all written: close (one request per connection) */
}

void ctlsrv_run(int stop_fd, int ctl_fd, int http_fd)
{
  struct pollfd p[3 + CTLSRV_CLIENTS_MAX];
  uint64_t next_tick = 0;
  /* accept4 must not wait for a connection another wake-up took */
  fcntl(ctl_fd, F_SETFL, fcntl(ctl_fd, F_GETFL) | O_NONBLOCK);
  if (http_fd >= 0)
    fcntl(http_fd, F_SETFL, fcntl(http_fd, F_GETFL) | O_NONBLOCK);
  for (;;) {
    uint64_t now = now_ms();
    if (now >= next_tick) {
      ctl_tick();
      next_tick = now + 1000;
    }
    int timeout = (int)(next_tick - now);
    p[0] = (struct pollfd){.fd = stop_fd, .events = POLLIN};
    p[1] = (struct pollfd){.fd = ctl_fd, .events = POLLIN};
    p[2] = (struct pollfd){.fd = http_fd, .events = POLLIN};
    for (unsigned i = 0; i < nclients; i++) {
      struct client *c = clients[i];
      p[3 + i] = (struct pollfd){.fd = c->fd, .events = c->phase == P_READ ? POLLIN : POLLOUT};
      int left = c->deadline_ms > now ? (int)(c->deadline_ms - now) : 0;
      if (left < timeout)
        timeout = left;
    }
    unsigned polled = nclients;
    int n = poll(p, 3 + polled, timeout);
    if (n < 0 && errno != EINTR)
      break;
    if (n > 0 && p[0].revents)
      break;
    now = now_ms();
    /* clients first (backwards: drop() moves the last one into i), then
     * new connections, so the indexes of this round stay valid */
    for (unsigned i = polled; i-- > 0;) {
      struct client *c = clients[i];
      short re = n > 0 ? p[3 + i].revents : 0;
      bool keep = true;
      if (re & (POLLERR | POLLNVAL))
        keep = false;
      else if (c->phase == P_READ && (re & (POLLIN | POLLHUP)))
        keep = on_readable(c);
      if (keep && c->phase == P_WRITE && ((re & POLLOUT) || buf_avail(&c->out) > 0))
        keep = on_writable(c); /* a fresh answer is tried at once */
      if (keep && now >= c->deadline_ms)
        keep = false; /* stalled: dropped */
      if (!keep)
        drop(i);
    }
    if (n > 0 && (p[1].revents & POLLIN))
      take(ctl_fd, K_CTL);
    if (n > 0 && http_fd >= 0 && (p[2].revents & POLLIN))
      take(http_fd, K_HTTP);
  }
  while (nclients > 0)
    drop(nclients - 1);
}
