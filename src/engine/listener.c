/* listener.c owns Momentum's ESMTP_Listener's thread: one epoll loop
 * (level-triggered; a listener's sessions are few compared with a worker's
 * deliveries, which keep their io_uring rings) over the Listen sockets, the
 * sessions and a wake eventfd; accepting (the listener's and the Listen's
 * Listener_Sessions, Proxy_Protocol), each session's socket and TLS I/O
 * (OpenSSL over memory BIOs), timeouts, reloads, and the stop.
 * The spool's threads and datasource threads only push onto locked lists
 * and wake the thread. A session keeps reading while its messages wait for
 * their commit (their replies are deferred in order in its core), so one
 * pipelining client's messages share a commit; it stops reading at
 * SMTPS_DEFER_MAX owed replies or LSN_IN_MAX bytes of held input. Memory:
 * a session holds its core, a partial line, the message being received
 * and the ones waiting for their commit (each at most Max_Message_Size).
 * The listener thread never blocks on disk and never sends a 250 the spool
 * has not made durable (listener_smtp.c); the main thread only opens,
 * starts, reloads (queues the snapshot), stops and frees. */
#include "listener.h"
#include "listener_int.h"

#include "buf.h"
#include "clock.h"
#include "conf.h"
#include "logs.h"
#include "panic.h"
#include "smtps.h"
#include "spool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t lsn_now_ms(void) { return clock_mono_ns() / 1000000u; }

static uint64_t wall_ms(void) { return (uint64_t)time(NULL) * 1000u; }

void lsn_wake(struct listener *L)
{
  uint64_t one = 1;
  ssize_t r = write(L->wake.fd, &one, sizeof(one));
  (void)r;
}

static void ep_set(struct lsess *s, bool in, bool out)
{
  uint32_t m = (in ? EPOLLIN : 0u) | (out ? EPOLLOUT : 0u) | EPOLLRDHUP;
  if (m == s->ep_mask)
    return;
  s->ep_mask = m;
  struct epoll_event e = {.events = m, .data.ptr = s};
  epoll_ctl(s->L->ep, EPOLL_CTL_MOD, s->fd, &e);
}

static void sess_free(struct lsess *s)
{
  struct listener *L = s->L;
  if (s->prev)
    s->prev->next = s->next;
  else
    L->sessions = s->next;
  if (s->next)
    s->next->prev = s->prev;
  L->nsessions--;
  s->ls->sessions--;
  free(s->from);
  buf_done(&s->in, 0);
  buf_done(&s->env, 0);
  buf_done(&s->msg, 0);
  buf_done(&s->cout, 0);
  if (s->ssl)
    SSL_free(s->ssl); /* frees both BIOs */
  smtps_free(s->sm);
  lsn_lua_sess_done(s);
  lsn_sock_unref(s->ls);
  lsn_gen_unref(s->gen);
  free(s);
}

void lsn_close(struct lsess *s)
{
  if (s->fd >= 0) {
    epoll_ctl(s->L->ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->fd = -1;
  }
  s->dead = true;
  if (!s->inflight)
    sess_free(s);
}

/* Send bytes; returns how many went, or -1 when the session is gone
 * (EAGAIN: 0). */
static ssize_t send_some(struct lsess *s, const uint8_t *p, size_t n)
{
  for (;;) {
    ssize_t w = send(s->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return 0;
    if (w <= 0)
      return -1;
    return w;
  }
}

/* The 220 to STARTTLS is out: the handshake starts with the next input. */
static bool start_tls(struct lsess *s)
{
  s->ssl = SSL_new(s->L->ssl_ctx);
  s->rb = BIO_new(BIO_s_mem());
  s->wb = BIO_new(BIO_s_mem());
  if (!s->ssl || !s->rb || !s->wb) {
    BIO_free(s->rb);
    BIO_free(s->wb);
    s->rb = s->wb = NULL;
    return false;
  }
  SSL_set_bio(s->ssl, s->rb, s->wb);
  SSL_set_accept_state(s->ssl);
  return true;
}

bool lsn_flush(struct lsess *s)
{
  const uint8_t *p;
  size_t n;
  if (s->ssl) {
    while (SSL_is_init_finished(s->ssl) && smtps_output(s->sm, &p, &n)) {
      int w = SSL_write(s->ssl, p, (int)(n > 65536 ? 65536 : n));
      if (w <= 0) {
        lsn_close(s);
        return false;
      }
      smtps_output_consumed(s->sm, (size_t)w);
    }
    char tmp[16384];
    int k;
    while ((k = BIO_read(s->wb, tmp, sizeof(tmp))) > 0)
      buf_append(&s->cout, tmp, (size_t)k);
    while (buf_avail(&s->cout)) {
      ssize_t w = send_some(s, buf_head(&s->cout), buf_avail(&s->cout));
      if (w < 0) {
        lsn_close(s);
        return false;
      }
      if (w == 0) {
        ep_set(s, s->reading, true);
        return true;
      }
      buf_consume(&s->cout, (size_t)w);
    }
  } else {
    while (smtps_output(s->sm, &p, &n)) {
      ssize_t w = send_some(s, p, n);
      if (w < 0) {
        lsn_close(s);
        return false;
      }
      if (w == 0) {
        ep_set(s, s->reading, true);
        return true;
      }
      smtps_output_consumed(s->sm, (size_t)w);
    }
    if (smtps_want_tls(s->sm) && !start_tls(s)) {
      lsn_close(s);
      return false;
    }
  }
  if (smtps_done(s->sm)) {
    lsn_close(s);
    return false;
  }
  ep_set(s, s->reading, false);
  return true;
}

static bool has_output(const struct lsess *s)
{
  const uint8_t *p;
  size_t n;
  return smtps_output(s->sm, &p, &n);
}

/* Feed p[0..n); what the core cannot take yet is held in s->in. Returns
 * false when the session is gone. */
static bool feed(struct lsess *s, const uint8_t *p, size_t n)
{
  size_t off = 0;
  for (;;) {
    size_t k = smtps_feed(s->sm, p + off, n - off, lsn_now_ms());
    off += k;
    int ne = lsn_events(s);
    if (!lsn_flush(s))
      return false;
    if (k == 0 && ne == 0)
      break; /* all taken (a last event may need no input: BDAT LAST), or blocked */
  }
  if (off < n) {
    buf_append(&s->in, p + off, n - off);
    if (buf_avail(&s->in) > LSN_IN_MAX)
      s->reading = false; /* TCP holds the rest */
  }
  ep_set(s, s->reading, has_output(s));
  return true;
}

/* Held input first (it came before anything read now). */
bool lsn_run_held(struct lsess *s)
{
  if (!buf_avail(&s->in))
    return true;
  struct buf held = s->in;
  memset(&s->in, 0, sizeof(s->in));
  bool ok = feed(s, buf_head(&held), buf_avail(&held));
  buf_done(&held, 0);
  return ok;
}

static void on_readable(struct lsess *s)
{
  uint8_t b[LSN_READ];
  ssize_t r = recv(s->fd, b, sizeof(b), MSG_DONTWAIT);
  if (r < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (r <= 0) {
    lsn_close(s); /* EOF or error: a message not yet 250'd is not queued */
    return;
  }
  if (s->pp_wait) {
    lsn_proxy_input(s, b, (size_t)r);
    return;
  }
  if (s->ssl) {
    BIO_write(s->rb, b, (int)r);
    if (!SSL_is_init_finished(s->ssl)) {
      int h = SSL_do_handshake(s->ssl);
      if (h != 1) {
        int e = SSL_get_error(s->ssl, h);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
          ERR_clear_error();
          lsn_flush(s); /* the alert, if any */
          if (!s->dead)
            lsn_close(s);
          return;
        }
        lsn_flush(s);
        return;
      }
      smtps_tls_done(s->sm, lsn_now_ms()); /* RFC 3207: the session starts over */
    }
    uint8_t pt[16384];
    for (;;) {
      int k = SSL_read(s->ssl, pt, sizeof(pt));
      if (k <= 0) {
        int e = SSL_get_error(s->ssl, k);
        if (e != SSL_ERROR_WANT_READ) {
          ERR_clear_error();
          lsn_close(s);
          return;
        }
        break;
      }
      bool ok;
      if (buf_avail(&s->in)) {
        buf_append(&s->in, pt, (size_t)k);
        ok = lsn_run_held(s);
      } else {
        ok = feed(s, pt, (size_t)k);
      }
      if (!ok || s->dead)
        return;
    }
    lsn_flush(s);
    return;
  }
  if (buf_avail(&s->in)) {
    buf_append(&s->in, b, (size_t)r);
    lsn_run_held(s);
    return;
  }
  feed(s, b, (size_t)r);
}

static void reply_close(int fd, const char *line)
{
  ssize_t r = send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)r;
  close(fd);
}

static void on_accept(struct listener *L, struct lsock *k)
{
  for (int i = 0; i < 64 && k->fd >= 0; i++) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(k->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    uint8_t a[16];
    int fam = lsn_addr_bytes(&ss, a);
    struct scopes sc = lsn_scopes(k->gen, k, fam, a);
    /* limits: the listener, the Listen (the client address's: once its
     * address is known, after any PROXY header) */
    int64_t lim_all = conf_int(L->gen->top, CONF_ESMTP_LISTENER_SESSIONS_L);
    int64_t lim_sock = conf_int(k->v, CONF_ESMTP_LISTENER_SESSIONS_LL);
    if ((lim_all > 0 && L->nsessions >= (size_t)lim_all) ||
        (lim_sock > 0 && k->sessions >= (uint32_t)lim_sock)) {
      char line[300];
      snprintf(line, sizeof(line), "421 4.7.0 %s Too many connections, try again later\r\n",
               lsn_banner_host(L, &sc));
      reply_close(fd, line);
      continue;
    }
    struct lsess *s = util_xcalloc(1, sizeof(*s));
    s->kind = LSN_K_SESS;
    s->fd = fd;
    s->L = L;
    s->ls = k;
    k->refs++;
    k->sessions++;
    s->gen = k->gen; /* L->gen: the socket is open */
    k->gen->refs++;
    s->addr = ss;
    inet_ntop(fam, a, s->ip, sizeof(s->ip));
    s->next = L->sessions;
    if (L->sessions)
      L->sessions->prev = s;
    L->sessions = s;
    L->nsessions++;
    s->ep_mask = EPOLLIN | EPOLLRDHUP;
    struct epoll_event e = {.events = s->ep_mask, .data.ptr = s};
    epoll_ctl(L->ep, EPOLL_CTL_ADD, fd, &e);
    /* Proxy_Protocol, looked up with the connecting (proxy's) address:
     * the SMTP session starts once the header names the client */
    if (lsn_opt_bool(&sc, O3(PROXY_PROTOCOL))) {
      s->pp_wait = true;
      struct opt3 t = {-1, CONF_ESMTP_PROXY_PROTOCOL_TIMEOUT_LL, CONF_ESMTP_PROXY_PROTOCOL_TIMEOUT_L};
      int64_t to = lsn_opt_interval(&sc, t);
      s->pp_deadline = to > 0 ? lsn_now_ms() + (uint64_t)to * 1000u : 0;
      continue;
    }
    lsn_session_begin(s);
  }
}

/* ---- the thread ---- */

static void sweep_timeouts(struct listener *L, uint64_t now)
{
  for (struct lsess *s = L->sessions, *next; s; s = next) {
    next = s->next;
    if (s->dead)
      continue;
    if (s->pp_wait) {
      if (s->pp_deadline && now >= s->pp_deadline) {
        logs_panic(L->log, wall_ms(), "esmtp_listener",
                   "Proxy_Protocol: no complete header from %s on %s within "
                   "Proxy_Protocol_Timeout; connection closed", s->ip, s->ls->name);
        lsn_close(s);
      }
      continue;
    }
    if (s->sm && smtps_timeout(s->sm, now))
      lsn_flush(s);
  }
}

/* A reload queued by listener_reload: the new generation and sockets. */
static void apply_reload(struct listener *L, struct conf *c)
{
  char err[512];
  size_t before = L->nsocks;
  if (lsn_conf_apply(L, c, false, err, sizeof err) < 0) {
    logs_panic(L->log, wall_ms(), "esmtp_listener", "reload not applied, the old listener "
               "configuration stays: %s", err);
  } else {
    for (size_t i = 0; i < L->nsocks; i++) {
      struct epoll_event e = {.events = EPOLLIN, .data.ptr = L->socks[i]};
      epoll_ctl(L->ep, EPOLL_CTL_ADD, L->socks[i]->fd, &e); /* EEXIST for kept ones */
    }
    lsn_lua_refresh(L); /* scripts reloaded before this configuration was queued */
    logs_panic(L->log, wall_ms(), "esmtp_listener", "reloaded: %zu socket%s (%zu before); "
               "new sessions use the new configuration", L->nsocks, L->nsocks == 1 ? "" : "s",
               before);
  }
  conf_unref(c);
}

static void take_done(struct listener *L)
{
  uint64_t v;
  ssize_t r = read(L->wake.fd, &v, sizeof(v));
  (void)r;
  pthread_mutex_lock(&L->dlock);
  struct lsub *list = L->done_head;
  L->done_head = NULL;
  struct conf *rc = L->reload_conf;
  L->reload_conf = NULL;
  pthread_mutex_unlock(&L->dlock);
  /* oldest first: the list was pushed newest first */
  struct lsub *rev = NULL;
  while (list) {
    struct lsub *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  while (rev) {
    struct lsub *next = rev->next;
    lsn_on_done(rev);
    rev = next;
  }
  lsn_kick_all(L);
  lsn_lua_posts(L);
  if (rc)
    apply_reload(L, rc);
}

static void *listener_thread(void *arg)
{
  struct listener *L = arg;
  struct epoll_event evs[256];
  uint64_t next_sweep = lsn_now_ms() + 1000;
  lsn_lua_start(L);
  while (!atomic_load(&L->stop)) {
    int n = epoll_wait(L->ep, evs, 256, 500);
    for (int i = 0; i < n; i++) {
      enum lsn_kind kind = *(enum lsn_kind *)evs[i].data.ptr;
      if (kind == LSN_K_SOCK) {
        on_accept(L, evs[i].data.ptr);
      } else if (kind == LSN_K_WAKE) {
        take_done(L);
      } else {
        struct lsess *s = evs[i].data.ptr;
        if (s->dead)
          continue;
        if ((evs[i].events & EPOLLOUT) && s->sm) {
          if (!lsn_flush(s))
            continue;
          if (!lsn_run_held(s))
            continue;
        }
        if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
          on_readable(s);
      }
    }
    uint64_t now = lsn_now_ms();
    if (now >= next_sweep) {
      sweep_timeouts(L, now);
      next_sweep = now + 1000;
    }
    lsn_lua_refresh(L);
    logs_writer_flush(L->log);
  }
  return NULL;
}

struct listener *listener_open(struct conf *c, struct spool *sp, const char *hostname,
                               struct logs *logs, char *err, size_t errlen)
{
  err[0] = 0;
  if (!conf_stanza_first(c, "esmtp_listener"))
    return NULL;
  struct listener *L = util_xcalloc(1, sizeof(*L));
  L->spool = sp;
  L->hostname = hostname;
  L->ep = L->wake.fd = -1;
  L->wake.kind = LSN_K_WAKE;
  pthread_mutex_init(&L->dlock, NULL);
  if (lsn_conf_apply(L, c, true, err, errlen) < 0) {
    listener_free(L);
    return NULL;
  }
  L->log = logs_writer_new(logs);
  return L;
}

int listener_start(struct listener *l, struct policy *policy, unsigned counters_slot)
{
  l->policy = policy;
  l->counters_slot = counters_slot;
  l->ep = epoll_create1(EPOLL_CLOEXEC);
  l->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (l->ep < 0 || l->wake.fd < 0)
    return -errno;
  for (size_t i = 0; i < l->nsocks; i++) {
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = l->socks[i]};
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->socks[i]->fd, &e) < 0)
      return -errno;
  }
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = &l->wake};
  if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->wake.fd, &e) < 0)
    return -errno;
  int r = pthread_create(&l->thread, NULL, listener_thread, l);
  if (r)
    return -r;
  l->running = true;
  logs_panic(l->log, wall_ms(), "esmtp_listener", "listening on %zu socket%s", l->nsocks,
             l->nsocks == 1 ? "" : "s");
  return 0;
}

void listener_reload(struct listener *l, struct conf *c)
{
  if (!l || !l->running)
    return;
  pthread_mutex_lock(&l->dlock);
  conf_unref(l->reload_conf); /* two reloads before the thread looked: the last wins */
  l->reload_conf = conf_ref(c);
  pthread_mutex_unlock(&l->dlock);
  lsn_wake(l);
}

void listener_stop(struct listener *l)
{
  if (!l || !l->running)
    return;
  atomic_store(&l->stop, true);
  pthread_join(l->thread, NULL);
  l->running = false;
  /* This thread owns the sessions now: no new sessions, idle ones get 421. */
  for (size_t i = 0; i < l->nsocks; i++) {
    close(l->socks[i]->fd);
    l->socks[i]->fd = -1;
  }
  uint64_t deadline = lsn_now_ms() + LSN_STOP_DEADLINE_MS;
  for (;;) {
    bool waiting = false;
    for (struct lsess *s = l->sessions, *next; s; s = next) {
      next = s->next;
      if (s->inflight) {
        waiting = true;
        continue;
      }
      if (!s->dead && !s->sm) { /* still waiting for a PROXY header */
        lsn_close(s);
      } else if (!s->dead) {
        char line[200];
        snprintf(line, sizeof(line), "421 4.3.2 %s Service shutting down\r\n", l->hostname);
        smtps_shutdown(s->sm, line);
        lsn_flush(s);
      }
    }
    if (!waiting || lsn_now_ms() >= deadline)
      break;
    struct epoll_event e;
    if (epoll_wait(l->ep, &e, 1, 100) > 0)
      take_done(l);
  }
  lsn_lua_stop(l);
}

void listener_free(struct listener *l)
{
  if (!l)
    return;
  /* the spool stopped first: every submission has reported (or never will) */
  while (l->done_head) {
    struct lsub *u = l->done_head;
    l->done_head = u->next;
    free(u);
  }
  while (l->sessions) {
    struct lsess *s = l->sessions;
    if (s->fd >= 0)
      close(s->fd);
    s->fd = -1;
    sess_free(s);
  }
  lsn_conf_free(l);
  conf_unref(l->reload_conf);
  if (l->ep >= 0)
    close(l->ep);
  if (l->wake.fd >= 0)
    close(l->wake.fd);
  if (l->log)
    logs_writer_free(l->log);
  pthread_mutex_destroy(&l->dlock);
  free(l);
}

size_t listener_sessions(const struct listener *l)
{
  return l ? l->nsessions : 0;
}
