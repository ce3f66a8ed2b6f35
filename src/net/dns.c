/* dns: owns one c-ares channel per worker ring, the ring polls and timer
 * that drive it, the per-worker answer cache, and the MX -> A/AAAA
 * request state machines built on top.
 * c-ares never blocks here: its sockets are watched with one-shot
 * IORING_OP_POLL_ADD (re-armed after each ares_process_fd), its retry
 * timeouts sit on one ring timer. Never logs. Loop-thread only. */
#include "dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "panic.h"
#include "ring.h"

#define T_A 1
#define T_MX 15
#define T_AAAA 28
#define T_SOA 6
#define C_IN 1

/* Limits on what a (remote-controlled) answer can make us hold. */
#define DNS_MAX_MX 16      /* MX hosts kept per domain, best first */
#define DNS_MAX_ADDRS 16   /* addresses kept per host and family */
#define DNS_NAME_MAX 253

enum qst { Q_OK, Q_NODATA, Q_NXDOMAIN, Q_TEMP };

struct mxrec {
  uint16_t pref;
  char *host; /* "" for the null MX */
};

struct centry {
  struct centry *next;
  uint16_t type;
  enum qst st;
  uint64_t expires;
  unsigned n;
  void *data; /* struct mxrec[] or struct dns_addr[] */
  char name[];
};

struct watch {
  struct watch *next;
  struct dns *d;
  int fd;
  unsigned events;
  uint64_t op;
};

struct dns_req {
  struct dns *d;
  struct dns_req *prev, *next;
  dns_cb cb;
  void *arg;
  char *name;
  bool mx, cancelled;
  unsigned pending; /* sub-queries (and the start guard) still out */
  struct dns_result res;
  unsigned hcap;
  uint8_t (*fam)[2]; /* per host: enum qst of A and AAAA */
  bool decided;      /* res.status final before address lookups */
  uint64_t guard_op; /* the start guard's NOP while it is in the ring */
};

struct sub {
  struct dns_req *q;
  uint16_t type;
  int host; /* index in q->res.hosts, -1 for the MX query */
  char name[];
};

struct dns {
  struct ring *r;
  ares_channel ch;
  bool dying;
  struct watch *watches;
  struct ring_timer timer;
  struct dns_req *reqs;
  struct centry **tab;
  unsigned tabsize, cached, cache_max, neg_ttl, max_ttl, evict_cursor;
  unsigned long hits, queries;
  uint64_t rng;
};

const char *dns_status_name(enum dns_status s) {
  switch (s) {
  case DNS_OK: return "ok";
  case DNS_TEMPFAIL: return "temporary failure";
  case DNS_NXDOMAIN: return "no such domain";
  case DNS_NOADDR: return "no MX or address records";
  case DNS_NULLMX: return "domain accepts no mail (null MX)";
  case DNS_BADNAME: return "invalid domain name";
  default: return "unknown";
  }
}

/* ------------------------------------------------------------ driving c-ares */

static void update_timer(struct dns *d);

static struct watch *watch_find(struct dns *d, int fd) {
  for (struct watch *w = d->watches; w; w = w->next)
    if (w->fd == fd)
      return w;
  return NULL;
}

static void on_poll(void *owner, int res, unsigned flags);

static void watch_arm(struct watch *w) {
  struct io_uring_sqe *sqe = ring_sqe(w->d->r);
  io_uring_prep_poll_add(sqe, w->fd, w->events);
  w->op = ring_arm(w->d->r, sqe, on_poll, w);
}

static void on_poll(void *owner, int res, unsigned flags) {
  struct watch *w = owner;
  struct dns *d = w->d;
  int fd = w->fd;
  (void)flags;
  w->op = 0;
  if (res < 0 && res != -ECANCELED) {
    res = POLLERR;
  } else if (res < 0) {
    return;
  }
  ares_socket_t rfd = (res & (POLLIN | POLLERR | POLLHUP)) ? fd : ARES_SOCKET_BAD;
  ares_socket_t wfd = (res & (POLLOUT | POLLERR)) ? fd : ARES_SOCKET_BAD;
  /* May close this socket (freeing w) and run query callbacks. */
  ares_process_fd(d->ch, rfd, wfd);
  w = watch_find(d, fd);
  if (w != NULL && w->op == 0 && w->events)
    watch_arm(w);
  update_timer(d);
}

/* c-ares tells us which sockets it wants watched for what. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  struct dns *d = data;
  struct watch *w = watch_find(d, fd), **pp;
  unsigned ev = (readable ? POLLIN : 0) | (writable ? POLLOUT : 0);
  if (ev == 0) {
    if (w == NULL)
      return;
    if (w->op)
      ring_op_forget(d->r, w->op); /* the poll's completion must not reach freed w */
    for (pp = &d->watches; *pp != w; pp = &(*pp)->next) {
    }
    *pp = w->next;
    free(w);
    return;
  }
  if (w == NULL) {
    w = util_xcalloc(1, sizeof *w);
    w->d = d;
    w->fd = fd;
    w->next = d->watches;
    d->watches = w;
  }
  if (w->events == ev && w->op)
    return;
  if (w->op) {
    ring_op_forget(d->r, w->op);
    w->op = 0;
  }
  w->events = ev;
  if (!d->dying)
    watch_arm(w);
}

static void on_timer(struct ring_timer *t) {
  struct dns *d = (struct dns *)((char *)t - offsetof(struct dns, timer));
  ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  update_timer(d);
}

static void update_timer(struct dns *d) {
  struct timeval tv;
  if (d->dying || ares_timeout(d->ch, NULL, &tv) == NULL) {
    ring_timer_cancel(d->r, &d->timer);
    return;
  }
  uint64_t ns = (uint64_t)tv.tv_sec * 1000000000ull + (uint64_t)tv.tv_usec * 1000ull;
  ring_timer_set(d->r, &d->timer, clock_mono_ns() + ns, on_timer);
}

/* ------------------------------------------------------------ cache */

static uint32_t hash_key(uint16_t type, const char *name) {
  uint32_t h = 2166136261u ^ type;
  for (; *name; name++)
    h = (h ^ (unsigned char)*name) * 16777619u;
  return h;
}

static void centry_free(struct centry *e) {
  if (e->type == T_MX)
    for (unsigned i = 0; i < e->n; i++)
      free(((struct mxrec *)e->data)[i].host);
  free(e->data);
  free(e);
}

static struct centry *cache_get(struct dns *d, uint16_t type, const char *name) {
  struct centry **pp = &d->tab[hash_key(type, name) & (d->tabsize - 1)];
  uint64_t now = clock_mono_ns();
  for (; *pp; pp = &(*pp)->next) {
    struct centry *e = *pp;
    if (e->type != type || strcmp(e->name, name) != 0)
      continue;
    if (e->expires <= now) {
      *pp = e->next;
      centry_free(e);
      d->cached--;
      return NULL;
    }
    return e;
  }
  return NULL;
}

static void cache_evict_one(struct dns *d) {
  for (unsigned i = 0; i < d->tabsize; i++) {
    unsigned b = (d->evict_cursor + i) & (d->tabsize - 1);
    if (d->tab[b] != NULL) {
      struct centry *e = d->tab[b];
      d->tab[b] = e->next;
      centry_free(e);
      d->cached--;
      d->evict_cursor = b + 1;
      return;
    }
  }
}

static struct centry *cache_put(struct dns *d, uint16_t type, const char *name, enum qst st,
                                uint32_t ttl, unsigned n, void *data) {
  struct centry *old = cache_get(d, type, name);
  if (old != NULL) { /* a concurrent identical query got here first: replace */
    struct centry **pp = &d->tab[hash_key(type, name) & (d->tabsize - 1)];
    while (*pp != old)
      pp = &(*pp)->next;
    *pp = old->next;
    centry_free(old);
    d->cached--;
  }
  if (d->cached >= d->cache_max)
    cache_evict_one(d);
  size_t nl = strlen(name);
  struct centry *e = util_xcalloc(1, sizeof *e + nl + 1);
  memcpy(e->name, name, nl + 1);
  e->type = type;
  e->st = st;
  if (ttl > d->max_ttl)
    ttl = d->max_ttl;
  e->expires = clock_mono_ns() + (uint64_t)ttl * 1000000000ull;
  e->n = n;
  e->data = data;
  struct centry **b = &d->tab[hash_key(type, name) & (d->tabsize - 1)];
  e->next = *b;
  *b = e;
  d->cached++;
  return e;
}

void dns_stats(const struct dns *d, unsigned *cached, unsigned long *hits, unsigned long *queries) {
  *cached = d->cached;
  *hits = d->hits;
  *queries = d->queries;
}

/* ------------------------------------------------------------ parsing */

/* Walk a response: collect records of qtype from the answer section (and
 * the lowest TTL), or the negative TTL from an SOA in the authority
 * section. Returns 0, or -1 on a malformed message. */
static int parse_answer(const unsigned char *ab, int alen, uint16_t qtype, unsigned *n,
                        void **data, uint32_t *ttl_out, uint32_t *neg_ttl) {
  if (alen < 12)
    return -1;
  unsigned qd = (unsigned)(ab[4] << 8 | ab[5]), an = (unsigned)(ab[6] << 8 | ab[7]);
  unsigned ns = (unsigned)(ab[8] << 8 | ab[9]);
  const unsigned char *p = ab + 12, *end = ab + alen;
  char *s;
  long enc;
  for (unsigned i = 0; i < qd; i++) {
    if (ares_expand_name(p, ab, alen, &s, &enc) != ARES_SUCCESS)
      return -1;
    ares_free_string(s);
    p += enc + 4;
    if (p > end)
      return -1;
  }
  size_t esz = qtype == T_MX ? sizeof(struct mxrec) : sizeof(struct dns_addr);
  unsigned max = qtype == T_MX ? DNS_MAX_MX * 4 : DNS_MAX_ADDRS;
  void *arr = util_xcalloc(max, esz);
  unsigned cnt = 0;
  uint32_t minttl = UINT32_MAX;
  for (unsigned i = 0; i < an + ns; i++) {
    if (ares_expand_name(p, ab, alen, &s, &enc) != ARES_SUCCESS)
      goto bad;
    ares_free_string(s);
    p += enc;
    if (p + 10 > end)
      goto bad;
    uint16_t type = (uint16_t)(p[0] << 8 | p[1]), cls = (uint16_t)(p[2] << 8 | p[3]);
    uint32_t ttl = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
    uint16_t rdlen = (uint16_t)(p[8] << 8 | p[9]);
    const unsigned char *rd = p + 10;
    p = rd + rdlen;
    if (p > end)
      goto bad;
    if (ttl > 0x7fffffffu)
      ttl = 0;
    if (i >= an) { /* authority section: SOA gives the negative TTL (RFC 2308) */
      if (type == T_SOA && rdlen >= 20) {
        const unsigned char *m = rd + rdlen - 4;
        uint32_t minimum = (uint32_t)m[0] << 24 | (uint32_t)m[1] << 16 | (uint32_t)m[2] << 8 | m[3];
        *neg_ttl = ttl < minimum ? ttl : minimum;
      }
      continue;
    }
    if (type != qtype || cls != C_IN || cnt >= max)
      continue;
    if (qtype == T_MX) {
      if (rdlen < 3)
        goto bad;
      struct mxrec *m = &((struct mxrec *)arr)[cnt];
      if (ares_expand_name(rd + 2, ab, alen, &s, &enc) != ARES_SUCCESS)
        goto bad;
      m->pref = (uint16_t)(rd[0] << 8 | rd[1]);
      m->host = util_xstrdup(s);
      ares_free_string(s);
      for (char *c = m->host; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    } else {
      struct dns_addr *a = &((struct dns_addr *)arr)[cnt];
      if (rdlen != (qtype == T_A ? 4 : 16))
        goto bad;
      a->family = qtype == T_A ? AF_INET : AF_INET6;
      memcpy(a->a, rd, rdlen);
    }
    cnt++;
    if (ttl < minttl)
      minttl = ttl;
  }
  *n = cnt;
  *data = arr;
  *ttl_out = minttl == UINT32_MAX ? 0 : minttl;
  return 0;
bad:
  if (qtype == T_MX)
    for (unsigned i = 0; i < cnt; i++)
      free(((struct mxrec *)arr)[i].host);
  free(arr);
  return -1;
}

int dns_parse_check(const uint8_t *msg, size_t len, uint16_t qtype) {
  if (len > 65535 || (qtype != T_A && qtype != T_AAAA && qtype != T_MX))
    return -1;
  unsigned n = 0;
  void *data = NULL;
  uint32_t ttl = 0, neg = 0;
  if (parse_answer(msg, (int)len, qtype, &n, &data, &ttl, &neg) < 0)
    return -1;
  if (qtype == T_MX)
    for (unsigned i = 0; i < n; i++)
      free(((struct mxrec *)data)[i].host);
  free(data);
  return (int)n;
}

/* ------------------------------------------------------------ requests */

static void sub_done(struct dns_req *q, uint16_t type, int host, const struct centry *e,
                     enum qst st);
static void req_release(struct dns_req *q);

static unsigned add_host(struct dns_req *q, const char *name, uint16_t pref) {
  if (q->res.nhosts == q->hcap) {
    q->hcap = q->hcap ? q->hcap * 2 : 4;
    q->res.hosts = util_xrealloc(q->res.hosts, q->hcap * sizeof *q->res.hosts);
    q->fam = util_xrealloc(q->fam, q->hcap * sizeof *q->fam);
  }
  unsigned i = q->res.nhosts++;
  q->res.hosts[i] = (struct dns_host){.name = util_xstrdup(name), .pref = pref};
  q->fam[i][0] = q->fam[i][1] = Q_NODATA;
  return i;
}

static void on_ares(void *arg, int status, int timeouts, unsigned char *ab, int alen) {
  struct sub *sb = arg;
  struct dns_req *q = sb->q;
  struct dns *d = q->d;
  (void)timeouts;
  if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
    free(sb);
    return; /* dns_free: requests are freed there */
  }
  enum qst st;
  unsigned n = 0;
  void *data = NULL;
  uint32_t ttl = 0, neg = d->neg_ttl;
  switch (status) {
  case ARES_SUCCESS:
  case ARES_ENODATA:
  case ARES_ENOTFOUND:
    if (ab != NULL && parse_answer(ab, alen, sb->type, &n, &data, &ttl, &neg) < 0) {
      st = Q_TEMP;
      break;
    }
    if (status == ARES_ENOTFOUND)
      st = Q_NXDOMAIN;
    else
      st = n > 0 ? Q_OK : Q_NODATA;
    break;
  default: /* SERVFAIL, REFUSED, timeout, connection refused, bad response */
    st = Q_TEMP;
    break;
  }
  const struct centry *e = NULL;
  if (st == Q_TEMP) {
    free(data);
  } else {
    if (st != Q_OK) {
      ttl = neg;
      if (data != NULL) {
        if (sb->type == T_MX)
          for (unsigned i = 0; i < n; i++)
            free(((struct mxrec *)data)[i].host);
        free(data);
      }
      data = NULL;
      n = 0;
    }
    e = cache_put(d, sb->type, sb->name, st, ttl, n, data);
  }
  if (st == Q_TEMP && q->res.text[0] == 0)
    snprintf(q->res.text, sizeof q->res.text, "%s lookup for %s: %s",
             sb->type == T_MX ? "MX" : sb->type == T_A ? "A" : "AAAA", sb->name,
             ares_strerror(status));
  int host = sb->host;
  uint16_t type = sb->type;
  free(sb);
  sub_done(q, type, host, e, st);
}

static void start_sub(struct dns_req *q, uint16_t type, const char *name, int host) {
  struct dns *d = q->d;
  q->pending++;
  struct centry *e = cache_get(d, type, name);
  if (e != NULL) {
    d->hits++;
    sub_done(q, type, host, e, e->st);
    return;
  }
  d->queries++;
  size_t nl = strlen(name);
  struct sub *sb = util_xmalloc(sizeof *sb + nl + 1);
  sb->q = q;
  sb->type = type;
  sb->host = host;
  memcpy(sb->name, name, nl + 1);
  ares_query(d->ch, name, C_IN, type, on_ares, sb);
  update_timer(d);
}

static void start_addrs(struct dns_req *q, unsigned host) {
  /* copy: start_sub may realloc nothing, but keep the name stable anyway */
  char name[DNS_NAME_MAX + 1];
  snprintf(name, sizeof name, "%s", q->res.hosts[host].name);
  start_sub(q, T_A, name, (int)host);
  start_sub(q, T_AAAA, name, (int)host);
}

static uint64_t rnd(struct dns *d) {
  d->rng ^= d->rng << 13;
  d->rng ^= d->rng >> 7;
  d->rng ^= d->rng << 17;
  return d->rng;
}

static int cmp_mx(const void *a, const void *b) {
  const struct mxrec *x = a, *y = b;
  return x->pref < y->pref ? -1 : x->pref > y->pref;
}

static void got_mx(struct dns_req *q, const struct centry *e, enum qst st) {
  switch (st) {
  case Q_TEMP:
    q->res.status = DNS_TEMPFAIL;
    q->decided = true;
    return;
  case Q_NXDOMAIN:
    q->res.status = DNS_NXDOMAIN;
    snprintf(q->res.text, sizeof q->res.text, "%s: no such domain", q->name);
    q->decided = true;
    return;
  case Q_NODATA:
    q->res.implicit_mx = true;
    start_addrs(q, add_host(q, q->name, 0));
    return;
  case Q_OK:
    break;
  }
  const struct mxrec *m = e->data;
  for (unsigned i = 0; i < e->n; i++)
    if (m[i].host[0] == 0) {
      q->res.status = DNS_NULLMX;
      snprintf(q->res.text, sizeof q->res.text, "%s publishes a null MX (RFC 7505)", q->name);
      q->decided = true;
      return;
    }
  struct mxrec sorted[DNS_MAX_MX * 4];
  unsigned n = e->n;
  memcpy(sorted, m, n * sizeof *m);
  /* shuffle, then a stable sort by preference: equal preferences end up
   * in random order (RFC 5321 5.1) */
  for (unsigned i = n; i > 1; i--) {
    unsigned j = (unsigned)(rnd(q->d) % i);
    struct mxrec t = sorted[i - 1];
    sorted[i - 1] = sorted[j];
    sorted[j] = t;
  }
  for (unsigned i = 1; i < n; i++) /* insertion sort: stable, n small */
    for (unsigned j = i; j > 0 && cmp_mx(&sorted[j - 1], &sorted[j]) > 0; j--) {
      struct mxrec t = sorted[j];
      sorted[j] = sorted[j - 1];
      sorted[j - 1] = t;
    }
  if (n > DNS_MAX_MX)
    n = DNS_MAX_MX;
  for (unsigned i = 0; i < n; i++)
    add_host(q, sorted[i].host, sorted[i].pref);
  for (unsigned i = 0; i < n; i++)
    start_addrs(q, i);
}

static void finish(struct dns_req *q) {
  struct dns_result *r = &q->res;
  if (!q->decided) {
    bool any_ok = false, any_temp = false;
    for (unsigned i = 0; i < r->nhosts; i++) {
      struct dns_host *h = &r->hosts[i];
      if (h->naddr > 0) {
        h->status = DNS_OK;
        any_ok = true;
      } else if (q->fam[i][0] == Q_TEMP || q->fam[i][1] == Q_TEMP) {
        h->status = DNS_TEMPFAIL;
        any_temp = true;
      } else if (q->fam[i][0] == Q_NXDOMAIN && q->fam[i][1] == Q_NXDOMAIN) {
        h->status = DNS_NXDOMAIN;
      } else {
        h->status = DNS_NOADDR;
      }
    }
    if (any_ok) {
      r->status = DNS_OK;
      r->text[0] = 0;
    } else if (any_temp) {
      r->status = DNS_TEMPFAIL;
    } else if (!q->mx && r->nhosts == 1 && r->hosts[0].status == DNS_NXDOMAIN) {
      r->status = DNS_NXDOMAIN;
      snprintf(r->text, sizeof r->text, "%s: no such host", q->name);
    } else {
      r->status = DNS_NOADDR;
      snprintf(r->text, sizeof r->text, "%s: %s", q->name,
               q->mx ? "no MX host has an address" : "no address records");
    }
  }
  if (r->status != DNS_OK && r->text[0] == 0)
    snprintf(r->text, sizeof r->text, "%s: %s", q->name, dns_status_name(r->status));
  if (!q->cancelled)
    q->cb(q->arg, r);
  req_release(q);
}

static void sub_done(struct dns_req *q, uint16_t type, int host, const struct centry *e,
                     enum qst st) {
  if (!q->cancelled) {
    if (type == T_MX) {
      got_mx(q, e, st);
    } else {
      q->fam[host][type == T_AAAA] = (uint8_t)st;
      if (st == Q_OK) {
        struct dns_host *h = &q->res.hosts[host];
        h->addr = util_xrealloc(h->addr, (h->naddr + e->n) * sizeof *h->addr);
        const struct dns_addr *src = e->data;
        if (type == T_A) { /* IPv4 first */
          memmove(h->addr + e->n, h->addr, h->naddr * sizeof *h->addr);
          memcpy(h->addr, src, e->n * sizeof *src);
        } else {
          memcpy(h->addr + h->naddr, src, e->n * sizeof *src);
        }
        h->naddr += e->n;
      }
    }
  }
  if (--q->pending == 0)
    finish(q);
}

static void req_release(struct dns_req *q) {
  struct dns *d = q->d;
  if (q->prev)
    q->prev->next = q->next;
  else
    d->reqs = q->next;
  if (q->next)
    q->next->prev = q->prev;
  for (unsigned i = 0; i < q->res.nhosts; i++) {
    free(q->res.hosts[i].name);
    free(q->res.hosts[i].addr);
  }
  free(q->res.hosts);
  free(q->fam);
  free(q->name);
  free(q);
}

static void on_guard(void *owner, int res, unsigned flags) {
  struct dns_req *q = owner;
  (void)res;
  (void)flags;
  q->guard_op = 0;
  if (--q->pending == 0)
    finish(q);
}

static bool valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > DNS_NAME_MAX)
    return false;
  size_t label = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '.') {
      if (label == 0)
        return false;
      label = 0;
    } else if (isalnum(c) || c == '-' || c == '_') {
      if (++label > 63)
        return false;
    } else {
      return false;
    }
  }
  return true;
}

struct dns_req *dns_resolve(struct dns *d, const char *name, bool mx, dns_cb cb, void *arg) {
  struct dns_req *q = util_xcalloc(1, sizeof *q);
  q->d = d;
  q->cb = cb;
  q->arg = arg;
  q->mx = mx;
  q->next = d->reqs;
  if (d->reqs)
    d->reqs->prev = q;
  d->reqs = q;
  /* lower case, without a trailing dot */
  size_t n = strlen(name);
  q->name = util_xstrndup(name, n);
  if (n > 1 && q->name[n - 1] == '.')
    q->name[n - 1] = 0;
  for (char *c = q->name; *c; c++)
    *c = (char)tolower((unsigned char)*c);
  /* The guard: one pending count held until the loop calls on_guard, so
   * results (even cached or immediate ones) never reach cb inside here. */
  q->pending = 1;
  struct io_uring_sqe *sqe = ring_sqe(d->r);
  io_uring_prep_nop(sqe);
  q->guard_op = ring_arm(d->r, sqe, on_guard, q);

  struct dns_addr lit = {0};
  const char *ip = q->name;
  char buf[64];
  if (ip[0] == '[' && strlen(ip) < sizeof buf) { /* "[1.2.3.4]" / "[IPv6:...]" */
    snprintf(buf, sizeof buf, "%s", ip + 1 + (strncasecmp(ip + 1, "ipv6:", 5) == 0 ? 5 : 0));
    buf[strcspn(buf, "]")] = 0;
    ip = buf;
  }
  if (inet_pton(AF_INET, ip, lit.a) == 1 || inet_pton(AF_INET6, ip, lit.a) == 1) {
    lit.family = strchr(ip, ':') ? AF_INET6 : AF_INET;
    unsigned h = add_host(q, ip, 0);
    q->res.hosts[h].addr = util_xmalloc(sizeof lit);
    q->res.hosts[h].addr[0] = lit;
    q->res.hosts[h].naddr = 1;
  } else if (!valid_name(q->name)) {
    q->res.status = DNS_BADNAME;
    snprintf(q->res.text, sizeof q->res.text, "invalid domain name");
    q->decided = true;
  } else if (mx) {
    start_sub(q, T_MX, q->name, -1);
  } else {
    start_addrs(q, add_host(q, q->name, 0));
  }
  return q;
}

void dns_cancel(struct dns_req *q) {
  if (q != NULL)
    q->cancelled = true;
}

socklen_t dns_sockaddr(const struct dns_addr *a, uint16_t port, struct sockaddr_storage *out) {
  memset(out, 0, sizeof *out);
  if (a->family == AF_INET) {
    struct sockaddr_in *s = (struct sockaddr_in *)out;
    s->sin_family = AF_INET;
    s->sin_port = htons(port);
    memcpy(&s->sin_addr, a->a, 4);
    return sizeof *s;
  }
  struct sockaddr_in6 *s = (struct sockaddr_in6 *)out;
  s->sin6_family = AF_INET6;
  s->sin6_port = htons(port);
  memcpy(&s->sin6_addr, a->a, 16);
  return sizeof *s;
}

/* ------------------------------------------------------------ life cycle */

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static int ares_init_rc;
static void ares_lib_init(void) { ares_init_rc = ares_library_init(ARES_LIB_INIT_ALL); }

struct dns *dns_new(struct ring *r, const struct dns_params *p, char *err, size_t errlen) {
  pthread_once(&ares_once, ares_lib_init);
  if (ares_init_rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares: %s", ares_strerror(ares_init_rc));
    return NULL;
  }
  struct dns *d = util_xcalloc(1, sizeof *d);
  d->r = r;
  d->cache_max = p->cache_max ? p->cache_max : 10000;
  d->neg_ttl = p->neg_ttl ? p->neg_ttl : 60;
  d->max_ttl = p->max_ttl ? p->max_ttl : 86400;
  d->tabsize = 64;
  while (d->tabsize < d->cache_max)
    d->tabsize *= 2;
  d->tab = util_xcalloc(d->tabsize, sizeof *d->tab);
  d->rng = clock_mono_ns() | 1;

  struct ares_options o;
  memset(&o, 0, sizeof o);
  /* NOCHECKRESP: report SERVFAIL/REFUSED as such at once (a transient
   * failure for the queue) instead of silently retrying other servers. */
  o.flags = ARES_FLAG_NOCHECKRESP;
  o.timeout = (int)(p->timeout_ms ? p->timeout_ms : 2000);
  o.tries = (int)(p->tries ? p->tries : 2);
  o.sock_state_cb = on_sock_state;
  o.sock_state_cb_data = d;
  int rc = ares_init_options(&d->ch, &o,
                             ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                                 ARES_OPT_SOCK_STATE_CB);
  if (rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares init: %s", ares_strerror(rc));
    free(d->tab);
    free(d);
    return NULL;
  }
  if (p->servers != NULL && p->servers[0]) {
    rc = ares_set_servers_ports_csv(d->ch, p->servers);
    if (rc != ARES_SUCCESS) {
      snprintf(err, errlen, "resolver address \"%s\": %s", p->servers, ares_strerror(rc));
      ares_destroy(d->ch);
      free(d->tab);
      free(d);
      return NULL;
    }
  }
  return d;
}

void dns_free(struct dns *d) {
  if (d == NULL)
    return;
  d->dying = true;
  ares_destroy(d->ch); /* on_ares sees ARES_EDESTRUCTION for each query */
  ring_timer_cancel(d->r, &d->timer);
  while (d->watches) {
    struct watch *w = d->watches;
    d->watches = w->next;
    if (w->op)
      ring_op_forget(d->r, w->op);
    free(w);
  }
  while (d->reqs) {
    /* A request whose guard NOP is still in the ring would be reached by
     * its completion: forget the op first. */
    struct dns_req *q = d->reqs;
    if (q->guard_op)
      ring_op_forget(d->r, q->guard_op);
    q->cancelled = true;
    req_release(q);
  }
  for (unsigned i = 0; i < d->tabsize; i++)
    while (d->tab[i]) {
      struct centry *e = d->tab[i];
      d->tab[i] = e->next;
      centry_free(e);
    }
  free(d->tab);
  free(d);
}
