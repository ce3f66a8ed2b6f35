/* smtpc_drive: a minimal blocking driver for the smtpc state machine, used
 * by the integration tests to talk to servers we did not write (aiosmtpd).
 * One connection, one transaction, then QUIT; prints every event on
 * stdout, one per line. Test tool only: blocking sockets, OpenSSL on the
 * fd, no verification of the server certificate.
 *
 * usage: smtpc_drive PORT [--tls no|ifavailable|required] [--implicit-tls]
 *          [--auth PLAIN|LOGIN|XOAUTH2 USER PASS] [--allow-plain]
 *          [--8bit] [--from ADDR] [--body FILE] RCPT... */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "smtpc.h"

static int fd = -1;
static SSL *ssl;

static uint64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void die(const char *m)
{
  fprintf(stderr, "smtpc_drive: %s: %s\n", m, strerror(errno));
  exit(1);
}

static void flush_out(struct smtpc *s)
{
  const uint8_t *p;
  size_t n;
  while (smtpc_output(s, &p, &n)) {
    ssize_t k = ssl ? SSL_write(ssl, p, (int)n) : write(fd, p, n);
    if (k <= 0) {
      smtpc_io_error(s, EPIPE, now_ms());
      return;
    }
    smtpc_output_consumed(s, (size_t)k, now_ms());
  }
}

int main(int argc, char **argv)
{
  if (argc < 3) {
    fprintf(stderr, "usage: see the source\n");
    return 2;
  }
  struct smtpc_params p;
  memset(&p, 0, sizeof(p));
  p.ehlo_name = "drive.test";
  p.timeouts.ehlo = 10;
  p.timeouts.mailfrom = 10;
  p.timeouts.rcptto = 10;
  p.timeouts.data = 10;
  p.timeouts.body = 10;
  p.timeouts.rset = 5;
  int port = atoi(argv[1]);
  const char *from = "sender@drive.test", *body_file = NULL;
  const char *rcpts[64];
  uint32_t nrcpt = 0, flags = 0;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--tls") && i + 1 < argc) {
      const char *m = argv[++i];
      p.tls = !strcmp(m, "required") ? SMTPC_TLS_REQUIRED
              : !strcmp(m, "ifavailable") ? SMTPC_TLS_IFAVAILABLE : SMTPC_TLS_NO;
    } else if (!strcmp(argv[i], "--implicit-tls"))
      p.implicit_tls = true;
    else if (!strcmp(argv[i], "--auth") && i + 3 < argc) {
      const char *t = argv[++i];
      p.auth.type = !strcmp(t, "PLAIN") ? SMTPC_AUTH_PLAIN
                    : !strcmp(t, "LOGIN") ? SMTPC_AUTH_LOGIN : SMTPC_AUTH_XOAUTH2;
      p.auth.user = argv[++i];
      p.auth.pass = argv[++i];
    } else if (!strcmp(argv[i], "--allow-plain"))
      p.auth_allow_plaintext = true;
    else if (!strcmp(argv[i], "--8bit"))
      flags |= SMTPC_TXN_8BIT;
    else if (!strcmp(argv[i], "--from") && i + 1 < argc)
      from = argv[++i];
    else if (!strcmp(argv[i], "--body") && i + 1 < argc)
      body_file = argv[++i];
    else if (nrcpt < 64)
      rcpts[nrcpt++] = argv[i];
  }
  static char body[1 << 20];
  size_t body_len = 0;
  if (body_file) {
    FILE *f = fopen(body_file, "rb");
    if (!f)
      die("body");
    body_len = fread(body, 1, sizeof(body), f);
    fclose(f);
  }

  fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct smtpc *s = smtpc_new(&p, now_ms());
  if (!s) {
    fprintf(stderr, "bad params\n");
    return 2;
  }
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
    die("connect");
  smtpc_connected(s, now_ms());
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

  struct smtpc_result res[64], fin;
  struct smtpc_txn txn = {from, rcpts, nrcpt, body_len, flags, res, &fin};
  bool started = false, over = false;
  size_t body_off = 0;
  bool in_body = false;
  while (!over) {
    flush_out(s);
    struct smtpc_event ev;
    while (smtpc_next_event(s, &ev)) {
      switch (ev.type) {
      case SMTPC_EV_NEED_TLS: {
        printf("NEED_TLS\n");
        ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        int ok = SSL_connect(ssl) == 1;
        printf("TLS %s\n", ok ? SSL_get_version(ssl) : "failed");
        if (!ok) {
          SSL_free(ssl);
          ssl = NULL;
        }
        smtpc_tls_done(s, ok, now_ms());
        break;
      }
      case SMTPC_EV_READY:
        if (ev.flags & SMTPC_F_PIPELINED)
          break; /* one transaction: wait for its final reply */
        printf("READY ext=0x%x mechs=0x%x\n", smtpc_extensions(s), smtpc_auth_mechs(s));
        if (!started && nrcpt) {
          started = true;
          if (smtpc_begin_txn(s, &txn, now_ms()) < 0)
            printf("BEGIN_TXN failed\n");
        } else
          smtpc_quit(s, now_ms());
        break;
      case SMTPC_EV_AUTH_RESULT:
        printf("AUTH_RESULT %d %s\n", ev.code, ev.text);
        break;
      case SMTPC_EV_RCPT_RESULT:
        printf("RCPT_RESULT %u %d %s\n", ev.index, ev.code, ev.text);
        break;
      case SMTPC_EV_NEED_BODY:
        printf("NEED_BODY\n");
        in_body = true;
        break;
      case SMTPC_EV_TXN_DONE:
        printf("TXN_DONE %d %s\n", ev.code, ev.text);
        for (uint32_t i = 0; i < nrcpt; i++) {
          const struct smtpc_result *r = smtpc_txn_outcome(&txn, i);
          printf("OUTCOME %u %s %d\n", i,
                 r->outcome == SMTPC_OUT_OK ? "OK"
                 : r->outcome == SMTPC_OUT_TRANSIENT ? "TRANSIENT" : "PERMANENT", r->code);
        }
        break;
      case SMTPC_EV_FAILED:
        printf("FAILED %s %d flags=0x%x stage=%u: %s\n", smtpc_fail_name(ev.kind), ev.code,
               ev.flags, ev.stage, ev.text);
        over = true;
        break;
      case SMTPC_EV_CLOSED:
        printf("CLOSED\n");
        over = true;
        break;
      default:
        break;
      }
    }
    if (in_body && smtpc_state(s) == SMTPC_ST_BODY) {
      long k = smtpc_body(s, body + body_off, body_len - body_off, true, now_ms());
      if (k > 0)
        body_off += (size_t)k;
      flush_out(s);
      continue;
    }
    in_body = false;
    flush_out(s);
    if (over)
      break;
    uint64_t dl = smtpc_deadline(s), n = now_ms();
    int wait = dl == UINT64_MAX ? 10000 : dl > n ? (int)(dl - n) : 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (!(ssl && SSL_pending(ssl)) && poll(&pfd, 1, wait) == 0) {
      smtpc_timeout(s, now_ms());
      continue;
    }
    char buf[4096];
    ssize_t k = ssl ? SSL_read(ssl, buf, sizeof(buf)) : read(fd, buf, sizeof(buf));
    if (k <= 0)
      smtpc_eof(s, now_ms());
    else
      smtpc_feed(s, buf, (size_t)k, now_ms());
  }
  fflush(stdout);
  if (ssl) {
    SSL_shutdown(ssl);
    SSL_free(ssl);
  }
  SSL_CTX_free(ctx);
  close(fd);
  smtpc_free(s);
  return 0;
}
