/* outsess: owns one smtpc machine, the conn it runs over, the ring timer
 * carrying smtpc's deadline, and the body buffer of the transaction in
 * progress (allocated at NEED_BODY, freed at TXN_DONE: idle sessions hold
 * none). The protocol decisions are smtpc's; this file only moves bytes
 * and events. Never logs; never frees itself inside an owner callback (the
 * conn's `closed` and the body read's completion, both loop callbacks,
 * are the only places the session is freed). Loop-thread only. */
#include "outsess.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "panic.h"
#include "ring.h"
#include "tls.h"

struct outsess {
  struct ring *r;
  struct conn *c;
  struct smtpc *s;
  const struct outsess_cbs *cbs;
  void *arg;
  struct ring_timer timer;
  bool pumping, again, finished, conn_closed, implicit;
  struct tls_ctx *tls;
  char *tls_host;
  uint16_t port;

  /* transaction in progress */
  const struct smtpc_txn *txn;
  struct outsess_body body;
  bool in_body, body_done, read_inflight;
  bool bbuf_owned;        /* bbuf is ours (file bodies), not the caller's memory */
  bool stale_read;        /* the read in flight belongs to an earlier transaction */
  uint8_t *bbuf;          /* file bodies: our buffer; memory bodies: theirs */
  uint32_t blen, bpos;    /* bytes in bbuf, bytes of them given to smtpc */
  uint64_t read_off;      /* next file offset to read */
  uint32_t chunk, window, bcap;

  char detail[200];
};

static uint64_t now_ms(const struct outsess *o) { return ring_now(o->r) / 1000000u; }

static void pump(struct outsess *o);

/* ------------------------------------------------------------ teardown */

static void free_body(struct outsess *o) {
  if (o->read_inflight)
    return; /* the kernel still writes into bbuf: freed on completion */
  if (o->bbuf_owned)
    free(o->bbuf);
  o->bbuf = NULL;
  o->bbuf_owned = false;
  o->blen = o->bpos = 0;
}

static void maybe_free(struct outsess *o) {
  if (!o->conn_closed || o->read_inflight || o->pumping)
    return;
  ring_timer_cancel(o->r, &o->timer);
  const struct outsess_cbs *cbs = o->cbs;
  void *arg = o->arg;
  free_body(o);
  smtpc_free(o->s);
  free(o->tls_host);
  free(o);
  if (cbs->closed)
    cbs->closed(arg);
}

static void finish(struct outsess *o) {
  if (o->finished)
    return;
  o->finished = true;
  ring_timer_cancel(o->r, &o->timer);
  conn_close(o->c);
}

/* ------------------------------------------------------------ body */

static void on_read(void *owner, int res, unsigned flags);

static void start_read(struct outsess *o) {
  uint64_t end = o->body.off + o->body.len;
  uint32_t want = o->bcap;
  if (end - o->read_off < want)
    want = (uint32_t)(end - o->read_off);
  struct io_uring_sqe *sqe = ring_sqe(o->r);
  io_uring_prep_read(sqe, o->body.fd, o->bbuf, want, o->read_off);
  ring_arm(o->r, sqe, on_read, o);
  o->read_inflight = true;
}

static void on_read(void *owner, int res, unsigned flags) {
  struct outsess *o = owner;
  (void)flags;
  o->read_inflight = false;
  if (o->stale_read) { /* an old transaction's read: drop it, then go on */
    o->stale_read = false;
    free_body(o);
    if (o->finished)
      maybe_free(o);
    else
      pump(o);
    return;
  }
  if (!o->in_body || o->finished) {
    free_body(o);
    maybe_free(o);
    return;
  }
  if (res <= 0) {
    snprintf(o->detail, sizeof o->detail, "reading the message body: %s",
             res == 0 ? "file shorter than expected" : strerror(-res));
    smtpc_io_error(o->s, res == 0 ? -EIO : res, now_ms(o));
    pump(o);
    return;
  }
  o->blen = (uint32_t)res;
  o->bpos = 0;
  o->read_off += (uint64_t)res;
  pump(o);
}

static void flush_output(struct outsess *o);

/* Give smtpc body bytes while the conn's queue is below the window, so a
 * session never holds more than window + one chunk of its body. */
static bool feed_body(struct outsess *o) {
  bool progress = false;
  while (o->in_body && !o->body_done && !o->finished && conn_pending(o->c) < o->window) {
    if (o->stale_read)
      break; /* wait for the old read to land before touching bbuf */
    if (o->bbuf == NULL) {
      if (o->body.mem != NULL) {
        o->bbuf = (uint8_t *)(uintptr_t)o->body.mem;
        o->blen = (uint32_t)o->body.len;
      } else {
        /* sized to the message when it is smaller than a chunk */
        o->bcap = o->body.len < o->chunk ? (uint32_t)o->body.len + 1 : o->chunk;
        o->bbuf = util_xmalloc(o->bcap);
        o->bbuf_owned = true;
      }
    }
    bool last = o->body.mem != NULL || o->read_off == o->body.off + o->body.len;
    if (o->bpos == o->blen && !last) {
      if (!o->read_inflight)
        start_read(o);
      break;
    }
    const uint8_t *src = o->bbuf ? o->bbuf + o->bpos : (const uint8_t *)"";
    long n = smtpc_body(o->s, src, o->blen - o->bpos, last, now_ms(o));
    if (n < 0)
      break;
    o->bpos += (uint32_t)n;
    if (last && o->bpos == o->blen) {
      o->body_done = true;
      progress = true;
      free_body(o); /* all of it is in smtpc's output now */
      break;
    }
    if (n == 0) { /* smtpc's output buffer is full: hand it to the conn */
      const uint8_t *p;
      size_t k;
      if (!smtpc_output(o->s, &p, &k))
        break;
    }
    progress = true;
    flush_output(o);
  }
  return progress;
}

/* ------------------------------------------------------------ pumping */

static void flush_output(struct outsess *o) {
  const uint8_t *p;
  size_t n;
  while (smtpc_output(o->s, &p, &n)) {
    if (!o->finished) {
      int rc = conn_send(o->c, p, n);
      if (rc == -EAGAIN)
        return; /* TLS handshake in progress: keep it in smtpc's buffer */
    }
    smtpc_output_consumed(o->s, n, now_ms(o));
  }
}

/* Fill unanswered results of an aborted transaction from the failure. */
static void settle_txn(struct outsess *o, const struct smtpc_event *ev) {
  const struct smtpc_txn *t = o->txn;
  struct smtpc_result fill = {.outcome = SMTPC_OUT_TRANSIENT, .code = ev->code, .stage = ev->stage};
  snprintf(fill.enhanced, sizeof fill.enhanced, "%s", ev->enhanced);
  snprintf(fill.text, sizeof fill.text, "%s", o->detail[0] ? o->detail : ev->text);
  for (uint32_t i = 0; i < t->nrcpt; i++)
    if (t->results[i].outcome == SMTPC_OUT_NONE || t->results[i].outcome == SMTPC_OUT_OK)
      t->results[i] = fill; /* accepted RCPTs are not delivered without a final 2xx */
  if (t->final->outcome == SMTPC_OUT_NONE)
    *t->final = fill;
}

static void end_txn(struct outsess *o) {
  const struct smtpc_txn *t = o->txn;
  o->txn = NULL;
  o->in_body = false;
  free_body(o);
  if (t != NULL && o->cbs->txn_done)
    o->cbs->txn_done(o->arg, t);
}

static void handle_event(struct outsess *o, const struct smtpc_event *ev) {
  switch (ev->type) {
  case SMTPC_EV_NEED_TLS:
    if (o->tls == NULL) {
      snprintf(o->detail, sizeof o->detail, "TLS requested but no TLS context configured");
      smtpc_tls_done(o->s, false, now_ms(o));
    } else if (!o->implicit) {
      (void)conn_starttls(o->c, o->tls, o->tls_host, o->port); /* errors via on_error */
    } /* implicit: conn started the handshake itself at connect */
    break;
  case SMTPC_EV_NEED_AUTH:
    if (o->cbs->need_auth)
      o->cbs->need_auth(o->arg, ev->text);
    else
      smtpc_set_auth(o->s, NULL, now_ms(o));
    break;
  case SMTPC_EV_AUTH_RESULT:
    break;
  case SMTPC_EV_READY:
    if (ev->flags & SMTPC_F_PIPELINED)
      break; /* one transaction at a time here: wait for the final reply */
    o->detail[0] = 0;
    if (o->cbs->ready)
      o->cbs->ready(o->arg);
    break;
  case SMTPC_EV_RCPT_RESULT:
    if (o->cbs->rcpt)
      o->cbs->rcpt(o->arg, ev->index, ev);
    break;
  case SMTPC_EV_NEED_BODY:
    o->in_body = true;
    o->body_done = false;
    o->read_off = o->body.off;
    if (o->read_inflight)
      o->stale_read = true; /* bbuf is set up once that read is in */
    else
      free_body(o);
    break;
  case SMTPC_EV_TXN_DONE:
    end_txn(o);
    break;
  case SMTPC_EV_FAILED:
    if (o->txn != NULL) {
      settle_txn(o, ev);
      end_txn(o);
    }
    if (!o->finished && o->cbs->failed)
      o->cbs->failed(o->arg, ev, o->detail);
    finish(o);
    break;
  case SMTPC_EV_CLOSED:
    finish(o);
    break;
  case SMTPC_EV_NONE:
    break;
  default:
    util_panic("outsess: unknown smtpc event %d", (int)ev->type);
  }
}

static void on_timer(struct ring_timer *t) {
  struct outsess *o = (struct outsess *)((char *)t - offsetof(struct outsess, timer));
  smtpc_timeout(o->s, now_ms(o));
  pump(o);
}

static void arm_timer(struct outsess *o) {
  uint64_t d = smtpc_deadline(o->s);
  if (o->finished || d == UINT64_MAX) {
    ring_timer_cancel(o->r, &o->timer);
    return;
  }
  uint64_t ns = d * 1000000u;
  if (!ring_timer_armed(&o->timer) || o->timer.deadline != ns)
    ring_timer_set(o->r, &o->timer, ns, on_timer);
}

static void pump(struct outsess *o) {
  if (o->pumping) {
    o->again = true;
    return;
  }
  o->pumping = true;
  do {
    o->again = false;
    flush_output(o);
    if (feed_body(o)) {
      flush_output(o);
      o->again = true;
    }
    struct smtpc_event ev;
    while (smtpc_next_event(o->s, &ev)) {
      if (o->finished && ev.type != SMTPC_EV_TXN_DONE)
        continue;
      handle_event(o, &ev);
      o->again = true;
    }
    if (o->again)
      flush_output(o);
  } while (o->again && !o->finished);
  o->pumping = false;
  arm_timer(o);
  maybe_free(o);
}

/* ------------------------------------------------------------ conn events */

static void on_connected(void *arg) {
  struct outsess *o = arg;
  smtpc_connected(o->s, now_ms(o));
  pump(o);
}

static void on_tls_ready(void *arg) {
  struct outsess *o = arg;
  smtpc_tls_done(o->s, true, now_ms(o));
  pump(o);
}

static void on_data(void *arg, const uint8_t *p, size_t n) {
  struct outsess *o = arg;
  if (o->finished)
    return;
  smtpc_feed(o->s, p, n, now_ms(o));
  pump(o);
}

static void on_sent(void *arg) { pump(arg); }

static void on_error(void *arg, int err, const char *text) {
  struct outsess *o = arg;
  if (o->finished)
    return;
  enum smtpc_state st = smtpc_state(o->s);
  snprintf(o->detail, sizeof o->detail, "%s", text);
  if (st == SMTPC_ST_TLS || st == SMTPC_ST_TLS_IMPLICIT)
    smtpc_tls_done(o->s, false, now_ms(o));
  else if (err == -EPIPE)
    smtpc_eof(o->s, now_ms(o));
  else
    smtpc_io_error(o->s, err, now_ms(o));
  pump(o);
  /* smtpc always ends the session here; make sure the conn goes. */
  finish(o);
}

static void on_closed(void *arg) {
  struct outsess *o = arg;
  o->c = NULL;
  o->conn_closed = true;
  o->finished = true;
  maybe_free(o);
}

static const struct conn_cbs outsess_conn_cbs = {
  .connected = on_connected, .tls_ready = on_tls_ready, .data = on_data,
  .sent = on_sent, .error = on_error, .closed = on_closed,
};

/* ------------------------------------------------------------ API */

struct outsess *outsess_new(struct ring *r, const struct outsess_params *p,
                            const struct outsess_cbs *cbs, void *arg, int *err) {
  if (p->smtp.implicit_tls && p->tls == NULL) {
    *err = -EINVAL;
    return NULL;
  }
  struct outsess *o = util_xcalloc(1, sizeof *o);
  o->r = r;
  o->cbs = cbs;
  o->arg = arg;
  o->tls = p->tls;
  o->implicit = p->smtp.implicit_tls;
  o->tls_host = p->tls_host ? util_xstrdup(p->tls_host) : NULL;
  o->port = p->port;
  o->chunk = p->body_chunk ? p->body_chunk : 8192;
  o->window = p->send_window ? p->send_window : 8192;
  o->s = smtpc_new(&p->smtp, ring_now(r) / 1000000u);
  if (o->s == NULL) {
    *err = -EINVAL;
    free(o->tls_host);
    free(o);
    return NULL;
  }
  /* The connect deadline is smtpc's (Connect_Timeout), on our timer. */
  struct conn_params cp = {
    .dst = p->dst, .dstlen = p->dstlen, .src = p->src, .srclen = p->srclen,
    .tls = o->implicit ? p->tls : NULL, .tls_host = p->tls_host, .tls_port = p->port,
  };
  o->c = conn_new(r, &cp, &outsess_conn_cbs, o, err);
  if (o->c == NULL) {
    smtpc_free(o->s);
    free(o->tls_host);
    free(o);
    return NULL;
  }
  arm_timer(o);
  return o;
}

int outsess_send(struct outsess *o, const struct smtpc_txn *txn, const struct outsess_body *body) {
  if (o->finished || o->txn != NULL)
    return -EBUSY;
  if (body->mem == NULL && body->fd < 0)
    return -EINVAL;
  if (body->mem != NULL && body->len > UINT32_MAX)
    return -EINVAL;
  int rc = smtpc_begin_txn(o->s, txn, now_ms(o));
  if (rc < 0)
    return rc;
  o->txn = txn;
  o->body = *body;
  pump(o);
  return 0;
}

int outsess_set_auth(struct outsess *o, const struct smtpc_auth *creds) {
  if (o->finished)
    return -EPIPE;
  int rc = smtpc_set_auth(o->s, creds, now_ms(o));
  pump(o);
  return rc;
}

void outsess_quit(struct outsess *o) {
  if (o->finished)
    return;
  smtpc_quit(o->s, now_ms(o));
  pump(o);
}

void outsess_abort(struct outsess *o) {
  finish(o);
}

const struct smtpc *outsess_smtpc(const struct outsess *o) { return o->s; }
bool outsess_tls(const struct outsess *o) { return o->c != NULL && conn_is_tls(o->c); }
bool outsess_tls_resumed(const struct outsess *o) { return o->c != NULL && conn_tls_resumed(o->c); }

const char *outsess_tls_describe(const struct outsess *o, char *out, size_t outlen) {
  if (o->c == NULL) {
    if (outlen)
      out[0] = 0;
    return out;
  }
  return conn_tls_describe(o->c, out, outlen);
}

size_t outsess_mem(const struct outsess *o) {
  size_t m = sizeof *o + smtpc_memory(o->s) + (o->c ? conn_mem(o->c) : 0);
  if (o->bbuf_owned)
    m += o->bcap;
  return m;
}
