/* net_client: runs one outsess session (the engine's session driver) on a ring and prints what happens,
 * one event per line, for the integration scripts in this directory.
 *
 *   net_client -p PORT [-a ADDR] [-b BIND] [--tls no|ifavailable|required]
 *              [--implicit] [--verify no|ca|host] [--ca FILE] [--name HOST]
 *              [-f FROM] -t RCPT [-t RCPT...] [--body FILE] [-n COUNT]
 *              [--timeout SECONDS] [--ehlo NAME] [--pipeline] [--chunking]
 *
 * --pipeline starts the next transaction as soon as outsess offers it
 * (ready with pipelined: RFC 2920 behind the dot, or RFC 3030 BDAT with
 * --chunking), each with its own result slots, as the engine does.
 *
 * Lines: "ready", "rcpt I CODE", "txn N FINAL_OUTCOME CODE ENH TEXT" and
 * "rcpt-result I OUTCOME CODE", "failed KIND stage=S code=C text=...
 * detail=...", "tls PROTO:CIPHER resumed=0|1", "closed". Exit 0 once
 * `closed` was seen, 2 on a usage error, 3 when the harness deadline
 * (60 s) passed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "outsess.h"
#include "ring.h"
#include "tls.h"

#define TXN_MAX 256
static const char *rcpts[64];
static unsigned nrcpt;
static struct slot {
  struct smtpc_result results[64], final_res;
  struct smtpc_txn txn;
} slots[TXN_MAX];
static struct outsess_body body;
static int count = 1, sent_count, done_count;
static bool pipeline;
static bool closed_seen;
static const char *from_addr = "sender@example.com";
static struct outsess *sess;

static const char *outcome(enum smtpc_outcome o) {
  switch (o) {
  case SMTPC_OUT_OK: return "ok";
  case SMTPC_OUT_TRANSIENT: return "transient";
  case SMTPC_OUT_PERMANENT: return "permanent";
  default: return "none";
  }
}

/* Send transaction sent_count + 1 (each in its own slot: pipelined ones
 * are in flight together). */
static void send_next(void) {
  struct slot *sl = &slots[sent_count % TXN_MAX];
  sl->txn = (struct smtpc_txn){.mail_from = from_addr, .rcpts = rcpts, .nrcpt = nrcpt,
                               .size = body.len, .results = sl->results, .final = &sl->final_res};
  int rc = outsess_send(sess, &sl->txn, &body, (void *)(intptr_t)(sent_count + 1));
  if (rc == 0)
    sent_count++; /* accepted: txn_done follows exactly once */
  else {
    printf("send-error %d\n", rc);
    outsess_quit(sess);
  }
}

static void on_ready(void *arg, bool pipelined) {
  (void)arg;
  if (pipelined) {
    if (pipeline && sent_count < count) {
      printf("pipelined\n");
      send_next();
    }
    return; /* otherwise wait for the final reply */
  }
  printf("ready\n");
  if (sent_count == 0 && outsess_tls(sess)) {
    char d[128];
    printf("tls %s resumed=%d\n", outsess_tls_describe(sess, d, sizeof d), outsess_tls_resumed(sess));
  }
  if (sent_count >= count) {
    outsess_quit(sess);
    return;
  }
  send_next();
}

static void on_rcpt(void *arg, void *txn_arg, uint32_t i, const struct smtpc_event *ev) {
  (void)arg;
  (void)txn_arg;
  printf("rcpt %u %d\n", i, ev->code);
}

static void on_txn(void *arg, void *txn_arg, const struct smtpc_txn *t) {
  (void)arg;
  int n = (int)(intptr_t)txn_arg;
  if (n != ++done_count)
    printf("order-error txn %d done as number %d\n", n, done_count);
  for (uint32_t i = 0; i < t->nrcpt; i++)
    printf("rcpt-result %u %s %d\n", i, outcome(t->results[i].outcome), t->results[i].code);
  printf("txn %d %s %d %s %s\n", n, outcome(t->final->outcome), t->final->code,
         t->final->enhanced[0] ? t->final->enhanced : "-", t->final->text);
  fflush(stdout);
}

static void on_failed(void *arg, const struct smtpc_event *ev, const char *detail) {
  (void)arg;
  printf("failed %s stage=%u code=%d doing=\"%s\" text=\"%s\" detail=\"%s\" flags=%u\n",
         smtpc_fail_name(ev->kind), ev->stage, ev->code, ev->doing, ev->text, detail, ev->flags);
}

static void on_closed(void *arg) {
  (void)arg;
  printf("closed\n");
  closed_seen = true;
}

static const struct outsess_cbs cbs = {
  .ready = on_ready, .rcpt = on_rcpt, .txn_done = on_txn, .failed = on_failed, .closed = on_closed,
};

static void usage(void) {
  fprintf(stderr, "usage: net_client -p PORT -t RCPT [options] (see the source)\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *addr = "127.0.0.1", *bind_addr = NULL;
  const char *bodyfile = NULL, *ca = NULL, *name = NULL, *ehlo = "client.example";
  int port = 0, timeout = 0;
  enum smtpc_tls_mode tlsmode = SMTPC_TLS_NO;
  enum tls_verify verify = TLS_VERIFY_NO;
  bool implicit = false, chunking = false;
  enum { O_TLS = 256, O_IMPLICIT, O_VERIFY, O_CA, O_NAME, O_BODY, O_TIMEOUT, O_EHLO, O_PIPELINE,
         O_CHUNKING };
  static const struct option lo[] = {
    {"tls", required_argument, NULL, O_TLS}, {"implicit", no_argument, NULL, O_IMPLICIT},
    {"verify", required_argument, NULL, O_VERIFY}, {"ca", required_argument, NULL, O_CA},
    {"name", required_argument, NULL, O_NAME}, {"body", required_argument, NULL, O_BODY},
    {"timeout", required_argument, NULL, O_TIMEOUT}, {"ehlo", required_argument, NULL, O_EHLO},
    {"pipeline", no_argument, NULL, O_PIPELINE}, {"chunking", no_argument, NULL, O_CHUNKING},
    {NULL, 0, NULL, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "p:a:b:f:t:n:", lo, NULL)) != -1) {
    switch (c) {
    case 'p': port = atoi(optarg); break;
    case 'a': addr = optarg; break;
    case 'b': bind_addr = optarg; break;
    case 'f': from_addr = optarg; break;
    case 't':
      if (nrcpt < 64)
        rcpts[nrcpt++] = optarg;
      break;
    case 'n': count = atoi(optarg); break;
    case O_TLS:
      tlsmode = !strcmp(optarg, "required") ? SMTPC_TLS_REQUIRED
                : !strcmp(optarg, "ifavailable") ? SMTPC_TLS_IFAVAILABLE : SMTPC_TLS_NO;
      break;
    case O_IMPLICIT: implicit = true; break;
    case O_VERIFY:
      verify = !strcmp(optarg, "host") ? TLS_VERIFY_HOST : !strcmp(optarg, "ca") ? TLS_VERIFY_CA : TLS_VERIFY_NO;
      break;
    case O_CA: ca = optarg; break;
    case O_NAME: name = optarg; break;
    case O_BODY: bodyfile = optarg; break;
    case O_TIMEOUT: timeout = atoi(optarg); break;
    case O_EHLO: ehlo = optarg; break;
    case O_PIPELINE: pipeline = true; break;
    case O_CHUNKING: chunking = true; break;
    default: usage();
    }
  }
  if (port <= 0 || nrcpt == 0)
    usage();
  static const char default_body[] = "Subject: test\r\n\r\nhello\r\n.leading dot\r\n";
  if (bodyfile != NULL) {
    body.fd = open(bodyfile, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (body.fd < 0 || fstat(body.fd, &st) < 0) {
      perror(bodyfile);
      return 2;
    }
    body.len = (uint64_t)st.st_size;
  } else {
    body.fd = -1;
    body.mem = default_body;
    body.len = sizeof default_body - 1;
  }

  int err = 0;
  struct ring *r = ring_new(NULL, &err);
  if (r == NULL) {
    fprintf(stderr, "ring: %s\n", strerror(-err));
    return 77;
  }
  struct tls_ctx *tctx = NULL;
  if (tlsmode != SMTPC_TLS_NO || implicit) {
    char e[256];
    struct tls_params tp = {.verify = verify, .ca_file = ca};
    tctx = tls_ctx_new(&tp, e, sizeof e);
    if (tctx == NULL) {
      fprintf(stderr, "tls: %s\n", e);
      return 2;
    }
  }
  struct sockaddr_storage dst, src;
  socklen_t dl, sl = 0;
  memset(&dst, 0, sizeof dst);
  memset(&src, 0, sizeof src);
  if (strchr(addr, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&dst;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, addr, &a->sin6_addr);
    dl = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&dst;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, addr, &a->sin_addr);
    dl = sizeof *a;
  }
  if (bind_addr != NULL) {
    struct sockaddr_in *a = (struct sockaddr_in *)&src;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, bind_addr, &a->sin_addr);
    sl = sizeof *a;
  }
  struct outsess_params p = {
    .dst = (struct sockaddr *)&dst, .dstlen = dl,
    .src = bind_addr ? (struct sockaddr *)&src : NULL, .srclen = sl,
    .tls_host = name ? name : addr, .port = (uint16_t)port, .tls = tctx,
    .smtp = {.ehlo_name = ehlo, .tls = tlsmode, .implicit_tls = implicit, .chunking = chunking},
  };
  if (timeout > 0) {
    uint32_t t = (uint32_t)timeout;
    p.smtp.timeouts = (struct smtpc_timeouts){t, t, t, t, t, t, t, t};
  }
  sess = outsess_new(r, &p, &cbs, NULL, &err);
  if (sess == NULL) {
    printf("failed new %s\n", strerror(-err));
    return 0;
  }
  uint64_t end = clock_mono_ns() + 60000000000ull;
  while (!closed_seen && clock_mono_ns() < end)
    ring_run_once(r, 100000000);
  /* let every op (closing sockets, cancels) drain before freeing */
  for (int i = 0; i < 10 && ring_ops_inflight(r) > 1; i++)
    ring_run_once(r, 10000000);
  int rc = closed_seen ? 0 : 3;
  if (done_count != sent_count) {
    printf("lost: %d transactions sent, %d done\n", sent_count, done_count);
    rc = 5;
  }
  if (ring_ops_inflight(r) > 1) {
    printf("leak: %u ops in flight\n", ring_ops_inflight(r) - 1);
    rc = 4;
  }
  tls_ctx_free(tctx);
  ring_free(r);
  if (body.fd >= 0)
    close(body.fd);
  return rc;
}
