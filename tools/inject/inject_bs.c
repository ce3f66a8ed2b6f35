/* inject_bs.c owns `impetus-inject -bs`: an SMTP session on standard input
 * and output (as `sendmail -bs`, which PHP and Symfony mailers run), driven
 * by the server core (smtps). Each message accepted becomes one pickup
 * file: envelope lines, a Received: line, the message as received (CRLF
 * kept); written to a ".bs-*.tmp" name, fsync'd, renamed, and the
 * directory fsync'd before the 250 (a mailer that got 250 has handed over a
 * durable message). A spool failure answers 451 (452 when the disk is
 * full), never 250. Blocking I/O, one process, one session. */
#include "inject_bs.h"

#include "buf.h"
#include "panic.h"
#include "smtps.h"
#include "msg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BS_READ 65536

struct bs {
  struct smtps *s;
  const char *dir;
  int dirfd;
  unsigned long serial;
  char host[256];
  char helo[256];
  char *from;          /* NULL: no transaction */
  char **rcpt;
  size_t nrcpt;
  struct buf body;
  struct buf file;
  int out_failed;
};

static void txn_reset(struct bs *b)
{
  free(b->from);
  b->from = NULL;
  for (size_t i = 0; i < b->nrcpt; i++)
    free(b->rcpt[i]);
  free(b->rcpt);
  b->rcpt = NULL;
  b->nrcpt = 0;
  buf_done(&b->body, 0);
}

static void flush_out(struct bs *b)
{
  const uint8_t *p;
  size_t n;
  while (smtps_output(b->s, &p, &n)) {
    ssize_t w = b->out_failed ? (ssize_t)n : write(1, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      b->out_failed = 1;
      w = (ssize_t)n;
    }
    smtps_output_consumed(b->s, (size_t)w);
  }
}

static int write_all(int fd, const void *p, size_t n)
{
  const uint8_t *q = p;
  while (n) {
    ssize_t w = write(fd, q, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return w < 0 ? -errno : -EIO;
    q += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Write b->file durably into the pickup directory; 0 or -errno. */
static int store(struct bs *b, char *name, size_t namelen)
{
  char tmp[96];
  struct timeval tv;
  gettimeofday(&tv, NULL);
  snprintf(tmp, sizeof(tmp), ".bs-%ld-%lu.tmp", (long)getpid(), b->serial);
  snprintf(name, namelen, "%" PRIu64 ".%06ld-%ld-bs%lu", (uint64_t)tv.tv_sec, (long)tv.tv_usec,
           (long)getpid(), b->serial);
  b->serial++;
  int fd = openat(b->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  /* Run as root, hand the file to the pickup directory's owner (the engine
   * leaves root and must read what it claims), as impetus-inject does. */
  struct stat dst;
  int r = 0;
  if (geteuid() == 0 && fstat(b->dirfd, &dst) == 0 && dst.st_uid != 0 &&
      fchown(fd, dst.st_uid, dst.st_gid) < 0)
    r = -errno;
  if (!r)
    r = write_all(fd, b->file.data, b->file.len);
  if (!r && fsync(fd) < 0)
    r = -errno;
  if (close(fd) < 0 && !r)
    r = -errno;
  if (!r && renameat(b->dirfd, tmp, b->dirfd, name) < 0)
    r = -errno;
  if (r) {
    unlinkat(b->dirfd, tmp, 0);
    return r;
  }
  if (fsync(b->dirfd) < 0)
    return -errno; /* renamed but maybe not durable: the mailer retries (a duplicate at worst) */
  return 0;
}

static void message(struct bs *b, const struct smtps_event *ev)
{
  if (!ev->ok || !b->from) {
    smtps_accept(b->s, 0);
    return;
  }
  struct buf *f = &b->file;
  f->len = f->off = 0;
  buf_printf(f, "x-sender: <%s>\n", b->from);
  for (size_t i = 0; i < b->nrcpt; i++)
    buf_printf(f, "x-receiver: <%s>\n", b->rcpt[i]);
  /* Received: first, also so the message's own first line can never be
   * read as an envelope line. */
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", localtime_r(&now, &tm));
  buf_printf(f, "Received: from %s by %s (impetus-inject -bs) with %s; %s\r\n",
             b->helo[0] ? b->helo : "localhost", b->host, smtps_tls(b->s) ? "ESMTPS" : "ESMTP",
             date);
  /* Date: and Message-ID: when missing, as impetus-inject and Postfix add them */
  unsigned missing = msg_headers_missing((const char *)b->body.data, b->body.len);
  if (missing) {
    char unique[64];
    snprintf(unique, sizeof(unique), "%ld.%lu.%ld", (long)now, b->serial, (long)getpid());
    msg_headers_add(f, missing, now, unique, b->host);
  }
  buf_append(f, b->body.data, b->body.len);
  struct msg_envelope env;
  char why[200];
  int r = msg_parse((const char *)f->data, f->len, &env, why, sizeof(why));
  msg_envelope_done(&env);
  if (r < 0) {
    char t[256];
    snprintf(t, sizeof(t), "5.6.0 Message refused: %s", why);
    smtps_answer(b->s, 554, t, 0);
    return;
  }
  char name[96];
  r = store(b, name, sizeof(name));
  if (r == -ENOSPC || r == -EDQUOT) {
    smtps_answer(b->s, 452, "4.3.1 Insufficient system storage", 0);
  } else if (r < 0) {
    fprintf(stderr, "impetus-inject: -bs: %s: %s\n", b->dir, strerror(-r));
    smtps_answer(b->s, 451, "4.3.0 Queue file write error", 0);
  } else {
    char t[160];
    snprintf(t, sizeof(t), "2.0.0 Ok: queued as %s", name);
    smtps_answer(b->s, 250, t, 0);
  }
  buf_done(f, 0);
}

static void on_event(struct bs *b, const struct smtps_event *ev)
{
  switch (ev->type) {
  case SMTPS_EV_DATA:
    buf_append(&b->body, ev->data, ev->len);
    return;
  case SMTPS_EV_BDAT:
    return;
  case SMTPS_EV_MESSAGE:
    message(b, ev);
    txn_reset(b);
    return;
  case SMTPS_EV_AUTH:
    smtps_accept(b->s, 0);
    return;
  case SMTPS_EV_COMMAND:
    break;
  case SMTPS_EV_NONE:
  default:
    util_panic("inject -bs: unexpected event %d", ev->type);
  }
  if (!ev->ok) {
    smtps_accept(b->s, 0);
    return;
  }
  switch (ev->cmd) {
  case SMTPS_CMD_EHLO:
  case SMTPS_CMD_HELO:
    snprintf(b->helo, sizeof(b->helo), "%.*s", (int)ev->arg_len, ev->arg);
    for (char *p = b->helo; *p; p++)
      if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
        *p = '?';
    txn_reset(b);
    break;
  case SMTPS_CMD_MAIL:
    if (ev->arg_len && msg_addr_check(ev->arg, ev->arg_len)) {
      smtps_answer(b->s, 553, "5.1.7 Bad sender address syntax", 0);
      return;
    }
    txn_reset(b);
    b->from = util_xstrndup(ev->arg, ev->arg_len);
    break;
  case SMTPS_CMD_RCPT:
    if (msg_addr_check(ev->arg, ev->arg_len)) {
      smtps_answer(b->s, 553, "5.1.3 Bad recipient address syntax", 0);
      return;
    }
    b->rcpt = util_xrealloc(b->rcpt, (b->nrcpt + 1) * sizeof(*b->rcpt));
    b->rcpt[b->nrcpt++] = util_xstrndup(ev->arg, ev->arg_len);
    break;
  case SMTPS_CMD_DATA:
    buf_done(&b->body, 0);
    break;
  case SMTPS_CMD_RSET:
    txn_reset(b);
    break;
  default:
    break;
  }
  smtps_accept(b->s, 0);
}

static void pump(struct bs *b)
{
  struct smtps_event ev;
  while (smtps_event(b->s, &ev))
    on_event(b, &ev);
  flush_out(b);
}

int inject_bs(const char *pickup_dir)
{
  signal(SIGPIPE, SIG_IGN);
  struct bs b;
  memset(&b, 0, sizeof(b));
  b.dir = pickup_dir;
  b.dirfd = open(pickup_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (gethostname(b.host, sizeof(b.host) - 1) < 0 || !b.host[0])
    strcpy(b.host, "localhost");
  char banner[300];
  snprintf(banner, sizeof(banner), "%s ESMTP impetus-inject", b.host);
  struct smtps_params p = {
    .hostname = b.host,
    .banner = banner,
    .ext = SMTPS_EXT_PIPELINING | SMTPS_EXT_8BITMIME | SMTPS_EXT_SMTPUTF8 |
           SMTPS_EXT_ENHANCEDSTATUSCODES | SMTPS_EXT_CHUNKING,
    .limits = {.max_size = MSG_DEFAULT_MAX_SIZE, .max_rcpts = MSG_RCPTS_MAX},
  };
  b.s = smtps_new(&p);
  if (!b.s)
    util_panic("inject -bs: out of memory");
  if (b.dirfd < 0) {
    /* Say so in SMTP: the mailer sees a temporary failure, not a hang. */
    fprintf(stderr, "impetus-inject: pickup directory %s: %s\n", pickup_dir, strerror(errno));
    smtps_shutdown(b.s, "421 4.3.0 Pickup directory unavailable\r\n");
    flush_out(&b);
    smtps_free(b.s);
    return 73;
  }
  smtps_start(b.s, 0);
  pump(&b);
  uint8_t *in = util_xmalloc(BS_READ);
  while (!smtps_done(b.s) && !b.out_failed) {
    ssize_t n = read(0, in, BS_READ);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break; /* EOF: the mailer went away; nothing half-done is kept */
    size_t off = 0;
    while (!smtps_done(b.s)) { /* until nothing moves: BDAT LAST may need no input */
      size_t k = smtps_feed(b.s, in + off, (size_t)n - off, 0);
      off += k;
      bool any = false;
      struct smtps_event ev;
      while (smtps_event(b.s, &ev)) {
        any = true;
        on_event(&b, &ev);
      }
      flush_out(&b);
      if (!k && !any)
        break;
    }
  }
  free(in);
  txn_reset(&b);
  buf_done(&b.file, 0);
  close(b.dirfd);
  smtps_free(b.s);
  return b.out_failed ? 74 : 0;
}
