/* outsess: owns one smtpc machine, the conn it runs over, the ring timer
 * carrying smtpc's deadline, the transactions in flight (up to
 * SMTPC_PIPE_MAX awaiting their final replies, plus the one being sent)
 * and the body feed of the one being sent. The protocol decisions are
 * smtpc's, the delivery decisions the owner's; this file moves bytes and
 * events between them.
 *
 * Must never: log; free itself or its owner inside an owner callback (the
 * conn's `closed`, a loop callback, is the only place the session is
 * freed); allocate per reply or per body chunk; touch a clock other than
 * the ring's. Loop-thread only (the thread of its ring). */
#include "outsess.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "panic.h"
#include "ring.h"
#include "smtp_dot.h"
#include "tls.h"

#define BODY_CHUNK 65536u  /* bytes read from a file per step (a pread is several us on a VM) */
#define WINDOW_DEFAULT 65536u
#define TXN_MAX (SMTPC_PIPE_MAX + 1)

struct otxn {
  const struct smtpc_txn *txn; /* NULL: free slot */
  void *arg;
};

struct outsess {
  struct ring *r;
  struct conn *c;
  struct smtpc *s;
  const struct outsess_cbs *cbs;
  void *arg;
  struct ring_timer timer;
  bool pumping, again;
  bool connected, finished, aborted;
  bool implicit;
  struct tls_ctx *tls;
  char *tls_host;
  uint16_t port;
  uint32_t window;
  uint64_t bytes_sent;

  struct otxn txns[TXN_MAX];
  /* the transaction being sent (its body): index into txns, or -1 */
  int cur;
  struct outsess_body body;
  uint64_t body_off, body_end;
  bool body_started, body_done, body_err;
  struct smtp_dot crlf; /* BDAT: line ends of a body that needs CRLF made */

  char detail[160];
};

static uint64_t now_ms(const struct outsess *o) { return ring_now(o->r) / 1000000u; }

static void pump(struct outsess *o);

static void finish(struct outsess *o)
{
  if (o->finished)
    return;
  o->finished = true;
  ring_timer_cancel(o->r, &o->timer);
  if (o->c)
    conn_close(o->c); /* `closed` follows from the loop */
}

/* ------------------------------------------------------------ transactions */

static int txn_find(const struct outsess *o, const struct smtpc_result *final)
{
  for (int i = 0; i < TXN_MAX; i++)
    if (o->txns[i].txn && o->txns[i].txn->final == final)
      return i;
  return -1;
}

/* The body of the transaction being sent is no longer read. */
static void body_release(struct outsess *o)
{
  if (o->cur < 0)
    return;
  void *targ = o->txns[o->cur].arg;
  o->cur = -1;
  o->body.fd = -1;
  o->body.mem = NULL;
  if (o->cbs->body_done && !o->aborted)
    o->cbs->body_done(o->arg, targ);
}

/* ------------------------------------------------------------ body */

/* Send everything smtpc has queued. */
static void drain_output(struct outsess *o, uint64_t now)
{
  const uint8_t *p;
  size_t len;
  while (smtpc_output(o->s, &p, &len)) {
    conn_send(o->c, p, len);
    o->bytes_sent += len;
    smtpc_output_consumed(o->s, len, now);
  }
}

static _Thread_local uint8_t body_chunk[BODY_CHUNK];

/* The next piece of the body (up to BODY_CHUNK bytes): from memory (no
 * system call), else read from the file. False when the file cannot be
 * read: the session fails (network kind, transient) and the transaction's
 * results say why. *last: the piece ends the body. */
static bool body_next(struct outsess *o, const uint8_t **src, size_t *got, bool *last)
{
  size_t want = o->body_end - o->body_off < BODY_CHUNK ? (size_t)(o->body_end - o->body_off)
                                                       : BODY_CHUNK;
  ssize_t n = (ssize_t)want;
  if (o->body.mem)
    *src = (const uint8_t *)o->body.mem + (o->body_off - o->body.off);
  else {
    *src = body_chunk;
    n = want ? pread(o->body.fd, body_chunk, want, (off_t)o->body_off) : 0;
  }
  if (n < 0 || (n == 0 && want > 0)) {
    snprintf(o->detail, sizeof o->detail, "message body read failed: %s",
             n < 0 ? strerror(errno) : "file shorter than expected");
    o->body_err = true;
    o->body_done = true;
    smtpc_io_error(o->s, -EIO, now_ms(o));
    return false;
  }
  *got = (size_t)n;
  *last = o->body_off + (uint64_t)n >= o->body_end;
  return true;
}

/* BDAT (RFC 3030): the body goes out in chunks of up to BODY_CHUNK bytes
 * as it is, with no dot-stuffing and no copy into smtpc; only a body whose
 * line ends are not all CRLF is rewritten (then into crlf_buf). The
 * message ends with CRLF, as it does after DATA. */
static void feed_chunks(struct outsess *o, uint64_t now)
{
  static _Thread_local uint8_t crlf_buf[2 * BODY_CHUNK];
  while (conn_pending(o->c) < o->window && !o->body_done) {
    const uint8_t *src;
    size_t got;
    bool last;
    if (!body_next(o, &src, &got, &last))
      return;
    const uint8_t *data = src;
    size_t len = got;
    if (o->crlf.cr || !smtp_crlf_canonical(src, len)) {
      size_t used;
      len = smtp_crlf_encode(&o->crlf, src, got, crlf_buf, sizeof crlf_buf, &used);
      data = crlf_buf;
    } else if (len) {
      o->crlf.bol = src[len - 1] == '\n';
    }
    size_t tail = last && !o->crlf.bol ? 2 : 0; /* the final CRLF */
    int r = smtpc_chunk(o->s, len + tail, last, now);
    if (r == -ENOSPC) {
      drain_output(o, now);
      r = smtpc_chunk(o->s, len + tail, last, now);
    }
    if (r < 0) { /* the transaction failed meanwhile: send no more of it */
      o->body_done = true;
      break;
    }
    drain_output(o, now);
    conn_send(o->c, data, len);
    if (tail)
      conn_send(o->c, "\r\n", 2);
    o->bytes_sent += len + tail;
    o->body_off += (uint64_t)got;
    if (last)
      o->body_done = true;
  }
}

/* DATA: smtpc dot-stuffs into its output buffer; more is fed only while
 * the conn holds less than the window, so a session's body footprint is
 * bounded whatever the message size. */
static void feed_body(struct outsess *o)
{
  if (o->cur < 0 || !o->body_started || o->body_done || o->finished)
    return;
  uint64_t now = now_ms(o);
  if (smtpc_chunked(o->s))
    feed_chunks(o, now);
  while (!smtpc_chunked(o->s) && conn_pending(o->c) < o->window && !o->body_done) {
    const uint8_t *src;
    size_t got;
    bool last;
    if (!body_next(o, &src, &got, &last))
      return;
    size_t done = 0;
    while (done < got || (last && got == 0 && !o->body_done)) {
      long n = smtpc_body(o->s, src + done, got - done, last, now);
      if (n < 0) {
        o->body_done = true;
        break;
      }
      done += (size_t)n;
      drain_output(o, now);
      if (last && done == got) {
        o->body_done = true;
        break;
      }
    }
    o->body_off += (uint64_t)got;
  }
  if (o->body_done && !o->body_err)
    body_release(o);
}

/* ------------------------------------------------------------ events */

/* A transaction whose body could not be read: its recipients get the
 * read failure (transient), not the network failure smtpc made of it. */
static void settle_body_error(struct outsess *o, const struct smtpc_txn *t)
{
  struct smtpc_result f = {.outcome = SMTPC_OUT_TRANSIENT, .code = 0, .stage = t->final->stage};
  snprintf(f.text, sizeof f.text, "451 4.3.0 [internal] %s", o->detail);
  *t->final = f;
  for (uint32_t i = 0; i < t->nrcpt; i++)
    if (t->results[i].outcome == SMTPC_OUT_OK || t->results[i].code == 0)
      t->results[i] = f;
}

static void on_event(struct outsess *o, const struct smtpc_event *ev)
{
  if (o->aborted)
    return;
  switch (ev->type) {
  case SMTPC_EV_NEED_TLS:
    /* implicit TLS: conn started the handshake at connect (TLS_IMPLICIT);
     * any other state: the event is stale, the session already ended */
    if (smtpc_state(o->s) != SMTPC_ST_TLS)
      break;
    if (o->tls == NULL) {
      if (o->cbs->note)
        o->cbs->note(o->arg, OUTSESS_TLS_FAILED);
      snprintf(o->detail, sizeof o->detail, "no TLS context (see the paniclog)");
      smtpc_tls_done(o->s, false, now_ms(o));
      break;
    }
    /* a failure, even at once, comes back through on_error */
    (void)conn_starttls(o->c, o->tls, o->tls_host, o->port);
    break;
  case SMTPC_EV_READY:
    if ((ev->flags & SMTPC_F_PIPELINED) && conn_pending(o->c) >= o->window)
      break; /* big bodies still queued: a connection holds about one body's worth */
    o->cbs->ready(o->arg, (ev->flags & SMTPC_F_PIPELINED) != 0);
    break;
  case SMTPC_EV_NEED_BODY:
    o->body_started = true;
    feed_body(o);
    break;
  case SMTPC_EV_TXN_DONE: {
    int i = txn_find(o, ev->final);
    if (i < 0)
      break; /* not ours (cannot happen: every begun txn is recorded) */
    struct otxn t = o->txns[i];
    if (i == o->cur) {
      if (o->body_err)
        settle_body_error(o, t.txn);
      body_release(o);
    }
    o->txns[i].txn = NULL;
    o->cbs->txn_done(o->arg, t.arg, t.txn);
    break;
  }
  case SMTPC_EV_RCPT_RESULT:
    if (o->cbs->rcpt && o->cur >= 0)
      o->cbs->rcpt(o->arg, o->txns[o->cur].arg, ev->index, ev);
    break;
  case SMTPC_EV_AUTH_RESULT:
    if (o->cbs->note)
      o->cbs->note(o->arg, OUTSESS_AUTH_OK);
    break;
  case SMTPC_EV_FAILED:
    body_release(o);
    if (!o->finished)
      o->cbs->failed(o->arg, ev, o->detail);
    finish(o);
    break;
  case SMTPC_EV_CLOSED:
    finish(o);
    break;
  case SMTPC_EV_NONE:
    break;
  default:
    util_panic("outsess: smtpc event %d not handled", ev->type);
  }
}

static void on_timer(struct ring_timer *t)
{
  struct outsess *o = (struct outsess *)((char *)t - offsetof(struct outsess, timer));
  smtpc_timeout(o->s, now_ms(o));
  pump(o);
}

static void arm_timer(struct outsess *o)
{
  uint64_t d = smtpc_deadline(o->s);
  if (o->finished || d == UINT64_MAX)
    ring_timer_cancel(o->r, &o->timer);
  else
    ring_timer_set(o->r, &o->timer, d * 1000000u, on_timer);
}

/* Send what smtpc queued and hand its events on until neither moves.
 * Re-entered from an owner callback (outsess_send/quit): the outer call
 * goes round again. */
static void pump(struct outsess *o)
{
  if (o->pumping) {
    o->again = true;
    return;
  }
  o->pumping = true;
  uint64_t now = now_ms(o);
  for (int guard = 0; guard < 10000; guard++) {
    bool any = o->again;
    o->again = false;
    const uint8_t *p;
    size_t n;
    while (!o->finished && smtpc_output(o->s, &p, &n)) {
      if (conn_send(o->c, p, n) < 0)
        break;
      o->bytes_sent += n;
      smtpc_output_consumed(o->s, n, now);
      any = true;
    }
    struct smtpc_event ev;
    while (smtpc_next_event(o->s, &ev)) {
      on_event(o, &ev);
      any = true;
    }
    if (!any)
      break;
  }
  o->pumping = false;
  arm_timer(o);
}

/* ------------------------------------------------------------ conn events */

static void on_connected(void *arg)
{
  struct outsess *o = arg;
  o->connected = true;
  if (o->cbs->note && !o->aborted)
    o->cbs->note(o->arg, OUTSESS_CONNECTED);
  smtpc_connected(o->s, now_ms(o));
  pump(o);
}

static void on_tls_ready(void *arg)
{
  struct outsess *o = arg;
  if (o->cbs->note && !o->aborted)
    o->cbs->note(o->arg, OUTSESS_TLS_OK);
  smtpc_tls_done(o->s, true, now_ms(o));
  pump(o);
}

static void on_data(void *arg, const uint8_t *p, size_t n)
{
  struct outsess *o = arg;
  if (o->finished)
    return;
  smtpc_feed(o->s, p, n, now_ms(o));
  pump(o);
}

static void on_sent(void *arg)
{
  struct outsess *o = arg;
  feed_body(o);
  pump(o);
}

static void on_error(void *arg, int err, const char *text)
{
  struct outsess *o = arg;
  if (o->finished)
    return;
  enum smtpc_state st = smtpc_state(o->s);
  if (!o->connected) {
    if (err == -ETIMEDOUT)
      snprintf(o->detail, sizeof o->detail, "%s (Connect_Timeout)", text);
    else
      snprintf(o->detail, sizeof o->detail, "%s", text);
    smtpc_io_error(o->s, err, now_ms(o));
  } else if (st == SMTPC_ST_TLS || st == SMTPC_ST_TLS_IMPLICIT) {
    /* any failure during the handshake (bad record, verification, the
     * peer closing) is a TLS failure: TLS_Ifavailable_Fallback applies */
    if (o->cbs->note && !o->aborted)
      o->cbs->note(o->arg, OUTSESS_TLS_FAILED);
    snprintf(o->detail, sizeof o->detail, "%s", text);
    smtpc_tls_done(o->s, false, now_ms(o));
  } else if (err == -EPIPE) {
    smtpc_eof(o->s, now_ms(o));
  } else {
    smtpc_io_error(o->s, err, now_ms(o));
  }
  pump(o);
  finish(o); /* smtpc always ends the session here; make sure the conn goes */
}

static void on_closed(void *arg)
{
  struct outsess *o = arg;
  const struct outsess_cbs *cbs = o->cbs;
  void *oarg = o->arg;
  ring_timer_cancel(o->r, &o->timer);
  smtpc_free(o->s);
  free(o->tls_host);
  free(o);
  cbs->closed(oarg);
}

static const struct conn_cbs outsess_conn_cbs = {
  .connected = on_connected, .tls_ready = on_tls_ready, .data = on_data,
  .sent = on_sent, .error = on_error, .closed = on_closed,
};

/* ------------------------------------------------------------ API */

struct outsess *outsess_new(struct ring *r, const struct outsess_params *p,
                            const struct outsess_cbs *cbs, void *arg, int *err)
{
  /* implicit TLS needs a context; smtpc refuses unusable parameters */
  struct smtpc *s = p->smtp.implicit_tls && p->tls == NULL ? NULL
                                                            : smtpc_new(&p->smtp, ring_now(r) / 1000000u);
  if (s == NULL) {
    *err = -EINVAL;
    return NULL;
  }
  struct outsess *o = util_xmalloc(sizeof *o);
  *o = (struct outsess){
    .r = r, .s = s, .cbs = cbs, .arg = arg, .tls = p->tls, .implicit = p->smtp.implicit_tls,
    .tls_host = p->tls_host ? util_xstrdup(p->tls_host) : NULL, .port = p->port,
    .window = p->send_window ? p->send_window : WINDOW_DEFAULT, .cur = -1, .body = {.fd = -1},
  };
  struct conn_params cp = {
    .dst = p->dst, .dstlen = p->dstlen, .src = p->src, .srclen = p->srclen,
    .connect_timeout_ns = p->connect_timeout_ns,
    /* smtps: conn starts the handshake itself once connected */
    .tls = o->implicit ? p->tls : NULL, .tls_host = o->tls_host, .tls_port = p->port,
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

int outsess_send(struct outsess *o, const struct smtpc_txn *txn, const struct outsess_body *body,
                 void *txn_arg)
{
  if (o->finished)
    return -EBUSY;
  if (body->mem == NULL && body->fd < 0)
    return -EINVAL;
  int slot = -1;
  for (int i = 0; i < TXN_MAX && slot < 0; i++)
    if (o->txns[i].txn == NULL)
      slot = i;
  if (slot < 0 || o->cur >= 0)
    return -EBUSY; /* one body at a time; smtpc offers no more than it can hold */
  int rc = smtpc_begin_txn(o->s, txn, now_ms(o));
  if (rc < 0)
    return rc;
  o->txns[slot] = (struct otxn){txn, txn_arg};
  o->cur = slot;
  o->body = *body;
  o->body_off = body->off;
  o->body_end = body->off + body->len;
  o->body_started = o->body_done = o->body_err = false;
  smtp_dot_init(&o->crlf);
  pump(o);
  return 0;
}

void outsess_quit(struct outsess *o)
{
  if (o->finished)
    return;
  smtpc_quit(o->s, now_ms(o));
  pump(o);
}

void outsess_abort(struct outsess *o)
{
  o->aborted = true;
  finish(o);
}

const struct smtpc *outsess_smtpc(const struct outsess *o) { return o->s; }
bool outsess_connected(const struct outsess *o) { return o->connected; }
uint64_t outsess_bytes_sent(const struct outsess *o) { return o->bytes_sent; }
bool outsess_tls(const struct outsess *o) { return o->c != NULL && conn_is_tls(o->c); }
bool outsess_tls_resumed(const struct outsess *o) { return o->c != NULL && conn_tls_resumed(o->c); }

const char *outsess_tls_describe(const struct outsess *o, char *out, size_t outlen)
{
  if (o->c == NULL) {
    if (outlen)
      out[0] = 0;
    return out;
  }
  return conn_tls_describe(o->c, out, outlen);
}

size_t outsess_mem(const struct outsess *o)
{
  return sizeof *o + smtpc_memory(o->s) + (o->c ? conn_mem(o->c) : 0);
}
