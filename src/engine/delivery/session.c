/* session.c: delivery sessions. A session is one connection of a queue
 * (binding, domain, credential identity): its route candidates (route.c
 * fills them), the outsess of the current attempt (net/outsess.c, the one
 * SMTP session driver), and the transactions in flight on it with their
 * result slots. It decides which unit goes next, pipelines the next
 * transaction when outsess offers it, parks idle connections in the
 * queue's pool, and turns connection failures into one unit's attempt
 * (so a dead destination does not spin).
 *
 * Must never: move bytes or read a clock itself (outsess and the ring
 * do); free a session inside an outsess callback other than `closed`;
 * log a credential.
 * Threads: the owning worker's loop thread only. */
#include "delivery.h"

#include "adaptive_queue.h"
#include "auth.h"
#include "authkeys.h"
#include "clock.h"
#include "conf.h"
#include "counters.h"
#include "dns.h"
#include "logs.h"
#include "outsess.h"
#include "panic.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void session_try_connect(struct session *s);

static uint64_t session_bytes(const struct session *s)
{
  return s->bytes_prev + (s->os ? outsess_bytes_sent(s->os) : 0);
}

static const char *session_ip(const struct session *s)
{
  return s->route_i < s->nroutes ? s->routes[s->route_i].ip : NULL;
}

/* QUIT an idle pooled connection (to free its fd, or at stop). */
void session_quit_parked(struct session *s)
{
  sched_pool_remove(&dq_queue_state(s->q)->pool, s);
  s->parked = false;
  outsess_quit(s->os);
}

/* End the connection now (no QUIT); its `closed` callback follows. */
void session_close(struct session *s)
{
  if (s->closing)
    return;
  s->closing = true;
  if (s->parked) {
    sched_pool_remove(&dq_queue_state(s->q)->pool, s);
    s->parked = false;
  }
  if (s->os)
    outsess_abort(s->os); /* `closed` frees the session */
}

/* The body file of the transaction being sent is no longer read. */
static void body_close(struct session *s)
{
  if (s->body_fd >= 0)
    spool_close_body(s->w->sh->spool, s->body_fd);
  s->body_fd = -1;
}

void session_free(struct session *s)
{
  struct worker *w = s->w;
  if (s->dns)
    dns_cancel(s->dns);
  if (s->parked)
    sched_pool_remove(&dq_queue_state(s->q)->pool, s);
  if (s->counted) {
    sched_conn_closed(dq_queue_state(s->q)->pair);
    sched_conn_closed(&dq_queue_state(s->q)->acct);
    sched_cluster_closed(&s->leases);
    if (!s->ever_ready)
      dq_queue_state(s->q)->opening--;
  }
  body_close(s);
  adaptive_queue_release(w->sh, s->adaptive_slot);
  dlist_remove(&w->sessions, &s->link);
  w->nsessions--;
  free(s->deep);
  for (unsigned i = 0; i < SMTPC_PIPE_MAX; i++)
    free(s->res_big[i]);
  free(s->rcpts);
  free(s);
}

/* A failure without a transaction: it costs unit u, or, for a connection
 * that never became READY, one waiting unit of the queue (so each failed
 * connection attempt costs one unit a T and its back-off, and a dead
 * destination does not spin). */
static void charge_unit(struct session *s, struct dq_unit *u, enum smtpc_outcome out, int code,
                        const char *text, uint8_t stage)
{
  if (u == NULL && !s->ever_ready && !atomic_load(&s->w->stop))
    u = dq_pop(s->w->dq, s->q);
  if (u == NULL)
    return;
  struct smtpc_result all = {.outcome = out, .code = code, .stage = stage};
  delivery_copy(all.text, sizeof all.text, text);
  s->charged = true;
  outcome_finish(s->w, s->q, u, NULL, &all, s->conn_id_s, session_ip(s), session_bytes(s));
}

/* Slot `slot` of s's result slots: its final reply, and its results for a
 * transaction of nrcpt recipients (not zeroed: smtpc clears what a
 * transaction uses). */
static struct smtpc_result *slot_final(struct session *s, unsigned slot)
{
  if (slot < 2)
    return &s->fin_buf[slot];
  if (s->deep == NULL)
    s->deep = util_xmalloc((SMTPC_PIPE_MAX - 2) * (RES_INLINE + 1) * sizeof *s->deep);
  return s->deep + (size_t)(slot - 2) * (RES_INLINE + 1) + RES_INLINE;
}

static struct smtpc_result *result_slots(struct session *s, unsigned slot, uint32_t nrcpt)
{
  if (nrcpt > RES_INLINE) {
    if (s->res_big[slot] == NULL)
      s->res_big[slot] = util_xmalloc((size_t)s->max_batch * sizeof *s->res_big[slot]);
    return s->res_big[slot];
  }
  if (slot < 2)
    return s->res_inline[slot];
  (void)slot_final(s, slot); /* allocates deep */
  return s->deep + (size_t)(slot - 2) * (RES_INLINE + 1);
}

/* Transactions of s in flight (begun, final reply not yet in). */
static unsigned inflight(const struct session *s)
{
  unsigned n = 0;
  for (unsigned k = 0; k < SMTPC_PIPE_MAX; k++)
    n += s->fl[k].u != NULL;
  return n;
}

/* A slot no transaction in flight uses. */
static unsigned free_slot(const struct session *s)
{
  for (unsigned k = 0; k < SMTPC_PIPE_MAX; k++)
    if (s->fl[k].u == NULL)
      return k;
  util_panic("worker: more transactions in flight than result slots");
}

/* RFC 6531: an address with a byte outside ASCII (a UTF-8 local part or
 * domain) needs the SMTPUTF8 parameter on MAIL; smtpc sends it, or, when
 * the server does not offer SMTPUTF8, fails the transaction permanently
 * with 5.6.7 (a bounce), never sending the address bare. */
static bool needs_smtputf8(const char *addr)
{
  for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
    if (*p >= 0x80)
      return true;
  return false;
}

/* Begin u's transaction on s (READY). 1: started; 0: u could not start
 * (its recipients were failed or deferred), the caller picks the next one;
 * -1: the session cannot take a transaction now (u is queued again). */
static int start_txn(struct session *s, struct dq_unit *u)
{
  struct worker *w = s->w;
  struct emsg *em = u->msg;
  struct spool_msg *sm = em->sm;
  unsigned slot = free_slot(s);
  struct flight *f = &s->fl[slot];
  if (u->nrcpt > s->max_batch)
    util_panic("unit of %u recipients over the batch size %u", u->nrcpt, s->max_batch);
  for (uint32_t i = 0; i < u->nrcpt; i++)
    s->rcpts[i] = sm->rcpt[u->rcpt[i]];
  bool utf8 = needs_smtputf8(sm->sender);
  for (uint32_t i = 0; i < u->nrcpt && !utf8; i++)
    utf8 = needs_smtputf8(s->rcpts[i]);
  f->txn = (struct smtpc_txn){.mail_from = sm->sender, .rcpts = s->rcpts, .nrcpt = u->nrcpt,
                              .size = sm->body_size,
                              .flags = ((sm->flags & SPOOL_MSG_F_8BIT) ? SMTPC_TXN_8BIT : 0) |
                                       (utf8 ? SMTPC_TXN_SMTPUTF8 : 0),
                              .results = result_slots(s, slot, u->nrcpt),
                              .final = slot_final(s, slot)};
  struct outsess_body body = {.fd = -1, .off = sm->body_off, .len = sm->body_size,
                              .mem = sm->body_mem};
  if (sm->body_mem == NULL) {
    int fd = spool_open_body(w->sh->spool, sm);
    if (fd < 0) {
      char t[128];
      snprintf(t, sizeof t, "451 4.3.0 [internal] spool open failed: %s", strerror(-fd));
      charge_unit(s, u, SMTPC_OUT_TRANSIENT, 0, t, 1);
      return 0;
    }
    s->body_fd = body.fd = fd;
  }
  /* before outsess_send: a transaction smtpc refuses locally (SIZE,
   * SMTPUTF8) may be answered, and u finished, before it returns */
  f->u = u;
  f->start_ns = ring_now(w->ring);
  uint32_t nrcpt = u->nrcpt;
  int rc = outsess_send(s->os, &f->txn, &body, f);
  if (rc == -EBUSY) { /* a stale READY: the session ended or moved on */
    f->u = NULL;
    body_close(s);
    dq_unpop(w->dq, u);
    return -1;
  }
  if (rc < 0) {
    char t[128];
    snprintf(t, sizeof t, "554 5.1.3 [internal] unusable transaction (%s)", strerror(-rc));
    f->u = NULL;
    body_close(s);
    charge_unit(s, u, SMTPC_OUT_PERMANENT, 554, t, 1);
    return 0;
  }
  s->rcpts_tried += nrcpt;
  return 1;
}

/* Start the next units of s's queue on s until one starts; false when
 * none could (queue empty, throttled, all expired or failed). */
static bool start_some(struct session *s)
{
  struct worker *w = s->w;
  struct dq_queue_state *st = dq_queue_state(s->q);
  for (int guard = 0; guard < 64; guard++) {
    struct dq_unit *u = dq_pop(w->dq, s->q);
    if (u == NULL)
      break;
    if (outcome_expire_if_due(w, s->q, u))
      continue;
    uint64_t wait = sched_msg_take(&st->limits, ring_now(w->ring));
    if (wait) {
      dq_unpop(w->dq, u);
      st->blocked_until_ns = ring_now(w->ring) + wait;
      break;
    }
    int r = start_txn(s, u);
    if (r != 0)
      return r > 0;
  }
  return false;
}

/* Whether s may carry one more transaction; `inflight` transactions not
 * yet counted in s->delivered are counted as delivered. */
static bool session_reusable(struct session *s, uint32_t n_inflight)
{
  struct dq_queue_state *st = dq_queue_state(s->q);
  uint32_t max_rcpts = st->limits.max_recipients_per_connection; /* per queue, not per message */
  if (!s->shedding && sched_cluster_shed(&s->leases))
    s->shedding = true; /* over the node's cluster share: this one closes */
  return !atomic_load(&s->w->stop) && sched_conn_reusable(&st->limits, s->delivered + n_inflight) &&
         !(max_rcpts > 0 && s->rcpts_tried >= max_rcpts) && !st->limits.suspend_delivery &&
         !s->shedding;
}

/* READY: the next transaction on this connection, or park it idle. */
void session_begin_next(struct session *s)
{
  struct worker *w = s->w;
  struct dq_queue_state *st = dq_queue_state(s->q);
  if (!session_reusable(s, 0)) {
    outsess_quit(s->os);
    return;
  }
  if (start_some(s) || smtpc_state(outsess_smtpc(s->os)) != SMTPC_ST_IDLE)
    return; /* started, or a stale READY: the session is not idle */
  /* idle: smtpc's Idle_Timeout QUITs it if nothing comes; but not while
   * another queue of this node waits for a cluster lease it holds */
  if (sched_cluster_wanted(&s->leases))
    outsess_quit(s->os);
  else if (sched_pool_put(&st->pool, s->pool_key, s, ring_now(w->ring)) == 0)
    s->parked = true;
  else
    outsess_quit(s->os);
}

/* ------------------------------------------------------------ session callbacks */

/* READY (pipelined: the transaction in flight is fully sent, its dot or
 * its last BDAT chunk, and the next may follow at once; nothing to send:
 * the plain READY after the final replies parks or QUITs the connection). */
static void on_ready(void *arg, bool pipelined)
{
  struct session *s = arg;
  if (pipelined) {
    unsigned n = inflight(s);
    if (n > 0 && session_reusable(s, n))
      (void)start_some(s);
    return;
  }
  if (!s->ever_ready) {
    s->ever_ready = true;
    struct dq_queue_state *st = dq_queue_state(s->q);
    st->opening--;
    uint32_t x = smtpc_extensions(outsess_smtpc(s->os));
    st->no_chunking = !(x & SMTPC_EXT_CHUNKING) || !(x & SMTPC_EXT_PIPELINING);
    /* until a transaction's time is known, the greeting and EHLO round
     * trips stand for it (worker.c's data_cover) */
    if (st->txn_ns == 0) {
      uint64_t now = ring_now(s->w->ring);
      st->txn_ns = now > s->connect_ns ? now - s->connect_ns : 1;
      st->txn_last_ns = now;
    }
  }
  session_begin_next(s);
}

static void on_body_done(void *arg, void *txn_arg)
{
  (void)txn_arg;
  body_close(arg);
}

/* A delivered transaction's time, start to final reply, into its queue's
 * shortest of the last one to two windows: how many units a busy
 * connection takes per unit of time, which decides how many connections a
 * queue of one transaction at a time wakes or opens (worker.c). The
 * shortest, not an average: with every connection busy each transaction
 * also waits behind the others (on both sides), which more connections
 * would only lengthen. */
static void note_txn_time(struct session *s, const struct flight *f)
{
  struct dq_queue_state *st = dq_queue_state(s->q);
  uint64_t now = ring_now(s->w->ring);
  uint64_t t = now > f->start_ns ? now - f->start_ns : 1;
  if (now - st->txn_win_ns >= TXN_WINDOW_NS) { /* a new window; the last one's shortest stays */
    st->txn_ns = st->txn_win_min_ns ? st->txn_win_min_ns : t;
    st->txn_win_min_ns = 0;
    st->txn_win_ns = now;
  }
  if (st->txn_win_min_ns == 0 || t < st->txn_win_min_ns)
    st->txn_win_min_ns = t;
  if (st->txn_ns == 0 || t < st->txn_ns)
    st->txn_ns = t;
  st->txn_last_ns = now;
  st->txn_avg_ns = st->txn_avg_ns ? st->txn_avg_ns - st->txn_avg_ns / 8 + t / 8 : t;
}

static void on_txn_done(void *arg, void *txn_arg, const struct smtpc_txn *txn)
{
  struct session *s = arg;
  struct flight *f = txn_arg;
  struct dq_unit *u = f->u;
  f->u = NULL;
  if (u == NULL)
    return;
  struct smtpc_result *results = f->txn.results;
  /* A recipient whose RCPT was accepted takes the final reply (the one
   * after the dot): a 4xx/5xx there is not a delivery. */
  for (uint32_t i = 0; i < u->nrcpt; i++)
    if (results[i].outcome == SMTPC_OUT_OK)
      results[i] = *txn->final;
  bool ok = false;
  for (uint32_t i = 0; i < u->nrcpt; i++)
    ok |= results[i].outcome == SMTPC_OUT_OK;
  if (ok) {
    s->delivered++;
    note_txn_time(s, f);
  }
  outcome_finish(s->w, s->q, u, results, NULL, s->conn_id_s, session_ip(s), session_bytes(s));
}

static void on_failed(void *arg, const struct smtpc_event *ev, const char *detail)
{
  struct session *s = arg;
  struct worker *w = s->w;
  s->bytes_seen = outsess_bytes_sent(s->os);
  if (!s->connected) {
    /* the connect failed (conn's error or smtpc's Connect_Timeout):
     * on_closed tries the next route or charges a unit */
    delivery_copy(s->detail, sizeof s->detail, detail[0] ? detail : ev->text);
    counters_event(w->idx, COUNTERS_CONN_FAILED);
    session_close(s);
    return;
  }
  if (detail[0])
    delivery_copy(s->detail, sizeof s->detail, detail);
  if ((ev->flags & SMTPC_F_TLS_FAILED) && inflight(s) == 0 && route_tls_fallback(s)) {
    s->retry_plain = true; /* no outcome: on_closed reconnects in plaintext */
    session_close(s);
    return;
  }
  if (ev->flags & SMTPC_F_AUTH_REJECTED) { /* loudly, once per connection; no secret */
    const struct smtpc_auth *cr = auth_creds(w->auth, dq_queue_cred_id(s->q));
    enum smtpc_auth_type t = cr ? cr->type : SMTPC_AUTH_PLAIN;
    logs_panic(w->log, clock_wall_ms(), "outbound_smtp_auth",
               "AUTH %s as \"%s\" rejected by %s (%s/%s, connection %s): %d %s; "
               "mail is deferred until the credentials are fixed or it expires",
               authkeys_mech_name(t),
               cr && cr->user ? cr->user : "", s->routes[s->route_i].ip, dq_queue_binding(s->q),
               dq_queue_domain(s->q), s->conn_id_s, ev->code, ev->text);
  }
  /* every transaction in flight had its txn_done already (outsess's
   * contract): what is left is a failure before any transaction */
  enum smtpc_outcome out =
    ev->kind == SMTPC_FAIL_PERMANENT ? SMTPC_OUT_PERMANENT : SMTPC_OUT_TRANSIENT;
  char text[SMTPC_TEXT_MAX];
  delivery_copy(text, sizeof text, ev->text[0] ? ev->text : ev->doing);
  if ((ev->flags & SMTPC_F_TLS_FAILED) && s->detail[0]) {
    /* "TLS handshake failed: certificate verify failed: ..." */
    const char *d = s->detail;
    if (!strncmp(d, "TLS handshake: ", 15))
      d += 15;
    size_t l = strlen(text);
    snprintf(text + l, sizeof text - l, ": %s", d);
  }
  charge_unit(s, NULL, out, ev->code, text, ev->stage);
  if (ev->flags & SMTPC_F_AUTH_REJECTED) /* metrics: impetus_auth_total{result="failed"} */
    counters_event(w->idx, COUNTERS_AUTH_FAILED);
  session_close(s);
}

static void on_note(void *arg, enum outsess_note what)
{
  struct session *s = arg;
  switch (what) {
  case OUTSESS_CONNECTED:
    s->connected = true;
    counters_event(s->w->idx, COUNTERS_CONN_OPENED);
    adaptive_queue_conn_ok(s->w->sh,
                           worker_view(s->w, dq_queue_binding(s->q), dq_queue_domain(s->q)),
                           dq_queue_binding(s->q), dq_queue_domain(s->q));
    break;
  case OUTSESS_TLS_OK:
    counters_event(s->w->idx, COUNTERS_TLS_OK);
    break;
  case OUTSESS_TLS_FAILED:
    counters_event(s->w->idx, COUNTERS_TLS_FAILED);
    break;
  case OUTSESS_AUTH_OK:
    counters_event(s->w->idx, COUNTERS_AUTH_OK);
    break;
  default:
    util_panic("worker: outsess note %d not handled", what);
  }
}

/* The transactions whose final replies cannot come any more (the
 * connection went away under them without smtpc ending them): transient,
 * their bodies may not have arrived. */
static void fail_inflight(struct session *s, const char *text)
{
  for (unsigned k = 0; k < SMTPC_PIPE_MAX; k++) {
    struct dq_unit *u = s->fl[k].u;
    if (u == NULL)
      continue;
    s->fl[k].u = NULL;
    struct smtpc_result all = {.outcome = SMTPC_OUT_TRANSIENT, .stage = 9};
    delivery_copy(all.text, sizeof all.text, text);
    outcome_finish(s->w, s->q, u, NULL, &all, s->conn_id_s, session_ip(s), session_bytes(s));
  }
}

static void on_closed(void *arg)
{
  struct session *s = arg;
  s->os = NULL; /* freed by outsess */
  s->bytes_prev += s->bytes_seen;
  s->bytes_seen = 0;
  body_close(s);
  if (s->retry_plain && !atomic_load(&s->w->stop)) {
    /* TLS_Ifavailable_Fallback: the same address again, without STARTTLS */
    s->retry_plain = false;
    s->plain_only = true;
    s->detail[0] = '\0';
    session_try_connect(s);
    return;
  }
  fail_inflight(s, "451 4.4.2 [internal] connection lost before the reply to the end of data");
  if (!s->connected && s->route_i < s->nroutes)
    route_host_failed(s, &s->routes[s->route_i]);
  if (!s->connected && s->route_i + 1 < s->nroutes && !atomic_load(&s->w->stop)) {
    s->route_i++;
    s->plain_only = false;
    session_try_connect(s);
    return;
  }
  if (!s->ever_ready && !s->charged) {
    char text[300];
    if (s->connected)
      snprintf(text, sizeof text, "451 4.4.1 [internal] no route to the destination could be used "
               "(connection lost)");
    else
      snprintf(text, sizeof text, "451 4.4.1 [internal] no route to the destination could be used "
               "(connection failed: %s)", s->detail[0] ? s->detail : "?");
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0, text, 0);
  }
  session_free(s);
}

static const struct outsess_cbs session_cbs = {
  .ready = on_ready,
  .txn_done = on_txn_done,
  .failed = on_failed,
  .closed = on_closed,
  .body_done = on_body_done,
  .note = on_note,
};

/* The smtpc parameters of s's next connection (the route at route_i).
 * False when the smtps route has no
 * usable TLS context. */
static bool session_params(struct session *s, struct smtpc_params *p)
{
  struct worker *w = s->w;
  const struct conf_view *v = worker_view(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  const char *ehlo = conf_str(v, CONF_EHLO_HOSTNAME);
  /* XXX: "__message__" (Momentum: the sender's domain) goes out as it is:
   * the connection is opened before any unit is assigned to it */
  if (ehlo == NULL || !strcmp(ehlo, "__hostname__"))
    ehlo = w->sh->hostname;
  int tls = conf_enum(v, CONF_TLS);
  const struct route *r = &s->routes[s->route_i];
  *p = (struct smtpc_params){
    .ehlo_name = ehlo,
    .tls = tls == 2 ? SMTPC_TLS_REQUIRED : tls == 1 ? SMTPC_TLS_IFAVAILABLE : SMTPC_TLS_NO,
    .implicit_tls = r->implicit_tls,
    .max_rcpts = s->max_batch,
    .auth_allow_plaintext = conf_bool(v, CONF_OUTBOUND_SMTP_AUTH_ALLOW_PLAINTEXT),
    .chunking = conf_bool(v, CONF_USE_CHUNKING),
    .pipeline_depth = (uint32_t)conf_int(v, CONF_PIPELINE_DEPTH),
    .timeouts = {
      .connect = (uint32_t)conf_interval(v, CONF_CONNECT_TIMEOUT),
      .ehlo = (uint32_t)conf_interval(v, CONF_EHLO_TIMEOUT),
      .mailfrom = (uint32_t)conf_interval(v, CONF_MAILFROM_TIMEOUT),
      .rcptto = (uint32_t)conf_interval(v, CONF_RCPTTO_TIMEOUT),
      .data = (uint32_t)conf_interval(v, CONF_DATA_TIMEOUT),
      .body = (uint32_t)conf_interval(v, CONF_BODY_TIMEOUT),
      .idle = (uint32_t)conf_interval(v, CONF_IDLE_TIMEOUT),
      .rset = (uint32_t)conf_interval(v, CONF_RSET_TIMEOUT),
    },
  };
  if (r->implicit_tls) {
    /* smtps://: TLS is the transport whatever TLS says; TLS_Verify and
     * the other TLS options apply */
    s->tls = route_tls_ctx(w, v);
    if (s->tls == NULL)
      return false;
  } else {
    if (p->tls == SMTPC_TLS_IFAVAILABLE && conf_bool(v, CONF_TLS_IFAVAILABLE_FALLBACK) &&
        (s->plain_only || route_tls_failed_lately(w, r))) {
      p->tls = SMTPC_TLS_NO; /* its STARTTLS failed lately: plaintext */
      s->plain_only = true;
    }
    s->tls = p->tls != SMTPC_TLS_NO ? route_tls_ctx(w, v) : NULL;
    if (s->tls == NULL && p->tls == SMTPC_TLS_IFAVAILABLE)
      p->tls = SMTPC_TLS_NO;
  }
  /* the queue's credentials (auth.c resolved them per unit); smtpc copies
   * and later wipes them */
  const struct smtpc_auth *cr = auth_creds(w->auth, dq_queue_cred_id(s->q));
  if (cr)
    p->auth = *cr;
  return true;
}

static void session_try_connect(struct session *s)
{
  struct worker *w = s->w;
  if (s->route_i >= s->nroutes) {
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0, "451 4.4.4 [internal] no usable route", 0);
    session_free(s);
    return;
  }
  struct route *r = &s->routes[s->route_i];
  if (!adaptive_queue_connect(w->sh, w->conf, dq_queue_binding(s->q), dq_queue_domain(s->q),
                              r->host, dq_queue_state(s->q), clock_wall_ms(), s->adaptive_slot)) {
    /* the MX host's or provider's connection cap is reached: this session
     * gives way (nothing is charged); the queue asks again shortly */
    dq_queue_state(s->q)->blocked_until_ns = ring_now(w->ring) + ADAPTIVE_WAIT_NS;
    session_free(s);
    return;
  }
  uint64_t cwait = ADAPTIVE_WAIT_NS;
  struct cluster_cap *hostcap = worker_cluster_host_cap(w, r->host);
  if (!sched_cluster_host(&dq_queue_state(s->q)->limits, hostcap, &s->leases, &cwait)) {
    /* the MX host's fleet-wide cap (Host { Cluster_Max_Outbound_Connections }):
     * the same as above; the worker is woken when a lease comes, at once
     * when an idle connection to that host of another queue gives its up */
    worker_quit_idle_holder(w, s->q, hostcap);
    dq_queue_state(s->q)->blocked_until_ns = ring_now(w->ring) + cwait;
    session_free(s);
    return;
  }
  struct smtpc_params sp;
  if (!session_params(s, &sp)) {
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0,
                "451 4.7.5 [internal] TLS cannot be set up for the smtps route (see the paniclog)", 0);
    session_free(s);
    return;
  }
  const struct conf_view *v = worker_view(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  struct conf_addr bind = conf_addr(v, CONF_BIND_ADDRESS);
  struct sockaddr_storage src;
  socklen_t srclen = 0;
  memset(&src, 0, sizeof src);
  if (bind.host && strcmp(bind.host, "*")) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&src;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;
    if (inet_pton(AF_INET, bind.host, &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET;
      srclen = sizeof *s4;
    } else if (inet_pton(AF_INET6, bind.host, &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6;
      srclen = sizeof *s6;
    }
  }
  struct outsess_params op = {
    .dst = (struct sockaddr *)&r->sa, .dstlen = r->salen,
    .src = srclen ? (struct sockaddr *)&src : NULL, .srclen = srclen,
    .connect_timeout_ns = (uint64_t)conf_interval(v, CONF_CONNECT_TIMEOUT) * 1000000000u,
    .tls = s->tls,
    .tls_host = r->host[0] ? r->host : NULL,
    .port = route_port(r),
    .smtp = sp,
    .send_window = BODY_INFLIGHT,
  };
  s->connected = false;
  s->closing = false;
  s->connect_ns = ring_now(w->ring);
  s->charged = false;
  s->detail[0] = '\0';
  snprintf(s->conn_id_s, sizeof s->conn_id_s, "%u.%llu", w->idx, (unsigned long long)++w->next_conn);
  int err = 0;
  s->os = outsess_new(w->ring, &op, &session_cbs, s, &err);
  if (s->os == NULL) {
    char t[160];
    if (err == -EINVAL)
      snprintf(t, sizeof t, "451 4.3.5 [internal] unusable session settings");
    else
      snprintf(t, sizeof t, "451 4.4.0 [internal] cannot open a connection from %s: %s",
               bind.host ? bind.host : "*", strerror(-err));
    charge_unit(s, NULL, SMTPC_OUT_TRANSIENT, 0, t, 0);
    session_free(s);
  }
}

/* The route candidates are known (or could not be). */
static void on_routes(struct session *s, const char *fail, bool perm)
{
  if (fail) {
    charge_unit(s, NULL, perm ? SMTPC_OUT_PERMANENT : SMTPC_OUT_TRANSIENT, perm ? 550 : 0, fail, 0);
    session_free(s);
    return;
  }
  session_try_connect(s);
}

/* A new connection for queue q; it takes units from the queue once READY. */
void session_open(struct worker *w, struct dq_queue *q, const struct sched_leases *leases)
{
  struct dq_queue_state *st = dq_queue_state(q);
  struct session *s = util_xcalloc(1, sizeof *s);
  s->w = w;
  s->q = q;
  s->counted = true;
  s->leases = *leases;
  st->opening++;
  s->body_fd = -1;
  s->pool_key = worker_queue_key(q);
  s->max_batch = st->limits.max_recipients_per_batch ? st->limits.max_recipients_per_batch : 100;
  s->rcpts = util_xcalloc(s->max_batch, sizeof *s->rcpts);
  dlist_push_front(&w->sessions, &s->link);
  w->nsessions++;

  route_resolve(s, on_routes);
}

