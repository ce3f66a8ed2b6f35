/* cluster_conn.c owns one connection to Redis for the cluster's client
 * thread: the socket, its TLS session (src/net/tls.c, memory BIOs, so
 * OpenSSL never touches the socket), and hiredis used only as a RESP
 * codec (redisFormatCommandArgv out, redisReader in). Debian 12's hiredis
 * 0.14 has no TLS, so the transport is ours; commands are synchronous
 * with a deadline each (the thread is the cluster client's own).
 *
 * Threads: one connection belongs to one thread (the TLS context's error
 * queue and session cache are that thread's). Must never: wait past a
 * command's deadline, log (reasons go back in err), keep a password
 * anywhere but the AUTH command it formats. */
#include "cluster_conn.h"

#include "buf.h"
#include "clock.h"
#include "panic.h"
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct clconn {
  int fd;
  struct tls *tls;       /* NULL: plaintext */
  redisReader *reader;
  struct buf out;        /* ciphertext waiting to be sent */
  uint8_t raw[16384];    /* ciphertext read, fed to tls */
  unsigned timeout_ms;
  bool answered;         /* a reply came: the server accepted the handshake */
};

static uint64_t mono_ms(void)
{
  return clock_mono_ns() / 1000000u;
}

/* Wait until fd is ready for `events` or the deadline passes. */
static int wait_fd(int fd, short events, uint64_t deadline_ms)
{
  for (;;) {
    uint64_t now = mono_ms();
    if (now >= deadline_ms)
      return -ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, (int)(deadline_ms - now));
    if (r > 0)
      return 0;
    if (r < 0 && errno != EINTR)
      return -errno;
  }
}

static int send_raw(struct clconn *k, const uint8_t *p, size_t n, uint64_t deadline_ms)
{
  while (n > 0) {
    ssize_t w = send(k->fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && errno != EAGAIN)
      return -errno;
    int rc = wait_fd(k->fd, POLLOUT, deadline_ms);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* The ciphertext TLS produced, onto the socket. */
static int flush_tls(struct clconn *k, uint64_t deadline_ms)
{
  tls_take(k->tls, &k->out);
  int rc = send_raw(k, buf_head(&k->out), buf_avail(&k->out), deadline_ms);
  buf_reset(&k->out);
  return rc;
}

/* Bytes from the socket into k->raw: > 0, or -errno (-EPIPE: closed). */
static ssize_t recv_raw(struct clconn *k, uint64_t deadline_ms)
{
  for (;;) {
    ssize_t r = recv(k->fd, k->raw, sizeof k->raw, 0);
    if (r > 0)
      return r;
    if (r == 0)
      return -EPIPE;
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN)
      return -errno;
    int rc = wait_fd(k->fd, POLLIN, deadline_ms);
    if (rc < 0)
      return rc;
  }
}

static void say(char *err, size_t errlen, const char *what, int rc)
{
  snprintf(err, errlen, "%s: %s", what,
           rc == -ETIMEDOUT ? "timed out" : rc == -EPIPE ? "connection closed by redis"
                                                         : strerror(-rc));
}

static int connect_one(const struct addrinfo *ai, uint64_t deadline_ms)
{
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
  if (fd < 0)
    return -errno;
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int rc = 0;
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
    if (errno != EINPROGRESS)
      rc = -errno;
    else if ((rc = wait_fd(fd, POLLOUT, deadline_ms)) == 0) {
      int soerr = 0;
      socklen_t len = sizeof soerr;
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        rc = -errno;
      else if (soerr)
        rc = -soerr;
    }
  }
  if (rc < 0) {
    close(fd);
    return rc;
  }
  return fd;
}

static int handshake(struct clconn *k, uint64_t deadline_ms, char *err, size_t errlen)
{
  for (;;) {
    int hs = tls_handshake(k->tls);
    tls_feed_end(k->tls);
    int rc = flush_tls(k, deadline_ms);
    if (hs < 0) {
      snprintf(err, errlen, "%s", tls_error(k->tls));
      return -EPROTO;
    }
    if (rc < 0) {
      say(err, errlen, "TLS handshake", rc);
      return rc;
    }
    if (hs == 1)
      return 0;
    ssize_t n = recv_raw(k, deadline_ms);
    if (n < 0) {
      say(err, errlen, "TLS handshake", (int)n);
      return (int)n;
    }
    tls_feed(k->tls, k->raw, (size_t)n);
  }
}

struct clconn *clconn_open(const struct clconn_params *p, char *err, size_t errlen)
{
  uint64_t deadline = mono_ms() + p->timeout_ms;
  char port[8];
  snprintf(port, sizeof port, "%u", p->port);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  int g = getaddrinfo(p->host, port, &hints, &res);
  if (g != 0) {
    snprintf(err, errlen, "cannot resolve %s: %s", p->host, gai_strerror(g));
    return NULL;
  }
  int fd = -ENOENT;
  for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
    fd = connect_one(ai, deadline);
  freeaddrinfo(res);
  if (fd < 0) {
    say(err, errlen, "connect", fd);
    return NULL;
  }
  struct clconn *k = util_xcalloc(1, sizeof *k);
  k->fd = fd;
  k->timeout_ms = p->timeout_ms;
  k->reader = redisReaderCreate();
  if (p->tls) {
    k->tls = tls_new(p->tls, p->host, p->port, err, errlen);
    if (k->tls == NULL || handshake(k, deadline, err, errlen) < 0) {
      clconn_free(k);
      return NULL;
    }
  }
  return k;
}

/* More reply bytes into the reader. 0, or -errno with err set. */
static int read_more(struct clconn *k, uint64_t deadline_ms, char *err, size_t errlen)
{
  if (k->tls == NULL) {
    ssize_t n = recv_raw(k, deadline_ms);
    if (n < 0) {
      say(err, errlen, "reading the reply", (int)n);
      return (int)n;
    }
    redisReaderFeed(k->reader, (const char *)k->raw, (size_t)n);
    return 0;
  }
  char plain[16384];
  bool starved = !tls_input_left(k->tls);
  for (;;) {
    if (starved) {
      ssize_t n = recv_raw(k, deadline_ms);
      if (n < 0) {
        say(err, errlen, "reading the reply", (int)n);
        return (int)n;
      }
      tls_feed(k->tls, k->raw, (size_t)n);
    }
    ssize_t r = tls_read(k->tls, plain, sizeof plain);
    tls_feed_end(k->tls);
    if (flush_tls(k, deadline_ms) < 0) { /* a key update, an alert */
      snprintf(err, errlen, "TLS: cannot send");
      return -EIO;
    }
    if (r > 0) {
      redisReaderFeed(k->reader, plain, (size_t)r);
      return 0;
    }
    if (r == -EPIPE) {
      snprintf(err, errlen, "reading the reply: TLS closed by redis");
      return -EPIPE;
    }
    if (r < 0) {
      snprintf(err, errlen, "%s", tls_error(k->tls));
      return -EPROTO;
    }
    starved = true; /* a partial record: more ciphertext first */
  }
}

/* TLS 1.3: the server judges the client's certificate after the client
 * has finished its handshake, so a refusal shows on the first command. */
static void first_hint(struct clconn *k, char *err, size_t errlen)
{
  size_t n = strlen(err);
  if (k->tls && !k->answered && n < errlen)
    snprintf(err + n, errlen - n, " (right after the TLS handshake: Redis did not accept "
             "this client; does it want a client certificate (tls_certificate)?)");
}

static redisReply *command1(struct clconn *k, int argc, const char **argv, const size_t *lens,
                            char *err, size_t errlen);

redisReply *clconn_command(struct clconn *k, int argc, const char **argv, const size_t *lens,
                           char *err, size_t errlen)
{
  redisReply *r = command1(k, argc, argv, lens, err, errlen);
  if (r == NULL)
    first_hint(k, err, errlen);
  else
    k->answered = true;
  return r;
}

static redisReply *command1(struct clconn *k, int argc, const char **argv, const size_t *lens,
                            char *err, size_t errlen)
{
  uint64_t deadline = mono_ms() + k->timeout_ms;
  char *cmd = NULL;
  int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
  if (len < 0) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  int rc;
  if (k->tls) {
    rc = tls_write(k->tls, cmd, (size_t)len) == len ? flush_tls(k, deadline) : -EPROTO;
    if (rc == -EPROTO)
      snprintf(err, errlen, "%s", tls_error(k->tls));
  } else
    rc = send_raw(k, (const uint8_t *)cmd, (size_t)len, deadline);
  /* the command may hold a password (AUTH): wiped before it is freed */
  util_wipe(cmd, (size_t)len);
  redisFreeCommand(cmd);
  if (rc < 0) {
    if (rc != -EPROTO)
      say(err, errlen, "sending the command", rc);
    return NULL;
  }
  for (;;) {
    void *reply = NULL;
    if (redisReaderGetReply(k->reader, &reply) != REDIS_OK) {
      snprintf(err, errlen, "protocol error: %s", k->reader->errstr);
      return NULL;
    }
    if (reply)
      return reply;
    if (read_more(k, deadline, err, errlen) < 0)
      return NULL;
  }
}

void clconn_free(struct clconn *k)
{
  if (k == NULL)
    return;
  if (k->tls) {
    tls_shutdown(k->tls);
    tls_take(k->tls, &k->out);
    if (buf_avail(&k->out))
      (void)send(k->fd, buf_head(&k->out), buf_avail(&k->out), MSG_NOSIGNAL | MSG_DONTWAIT);
    tls_free(k->tls);
  }
  if (k->reader)
    redisReaderFree(k->reader);
  buf_done(&k->out, 0);
  close(k->fd);
  free(k);
}
