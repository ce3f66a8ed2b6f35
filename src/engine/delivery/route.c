/* route.c: where a session connects. Owns the route candidates of a
 * queue (Gateway, Routes entries "host[:port]", smtp://, smtps://,
 * __mx__, else the domain's MX), their DNS resolution on the worker's
 * resolver, the worker's memory of failing hosts (Host_Failure_Retry:
 * they go last) and of failed STARTTLS (TLS_Failure_Retry:
 * TLS_Ifavailable_Fallback), and the worker's TLS contexts, one per
 * distinct set of TLS options.
 *
 * Must never: open a connection or decide an outcome (session.c does,
 * with what this file says); block on DNS (c-ares on the ring).
 * Threads: the owning worker's loop thread only. */
#include "delivery.h"

#include "adaptive_queue.h"
#include "clock.h"
#include "conf.h"
#include "dns.h"
#include "logs.h"
#include "panic.h"
#include "tls.h"
#include "tlskeys.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SMTPS_PORT 465         /* smtps:// routes without a port (RFC 8314) */

uint16_t route_port(const struct route *r)
{
  return r->sa.ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)&r->sa)->sin6_port)
                                     : ntohs(((const struct sockaddr_in *)&r->sa)->sin_port);
}

static void route_key(const struct route *r, char *out, size_t n)
{
  snprintf(out, n, "%s %u", r->ip, route_port(r));
}

/* Remember r in a table of remote addresses (HOSTFAIL_MAX entries; the
 * one expiring first makes room) until `until` (wall clock, ms). */
static void mark_route(struct hostfail *tab, unsigned *n, const struct route *r, uint64_t until)
{
  char key[80];
  route_key(r, key, sizeof key);
  unsigned slot = *n, oldest = 0;
  for (unsigned i = 0; i < *n; i++) {
    if (!strcmp(tab[i].key, key)) {
      slot = i;
      break;
    }
    if (tab[i].until_ms < tab[oldest].until_ms)
      oldest = i;
  }
  if (slot == *n) {
    if (*n < HOSTFAIL_MAX)
      (*n)++;
    else
      slot = oldest;
  }
  delivery_copy(tab[slot].key, sizeof tab[slot].key, key);
  tab[slot].until_ms = until;
}

static bool route_marked(const struct hostfail *tab, unsigned n, const struct route *r, uint64_t now)
{
  char key[80];
  route_key(r, key, sizeof key);
  for (unsigned i = 0; i < n; i++)
    if (!strcmp(tab[i].key, key))
      return tab[i].until_ms > now;
  return false;
}

/* Host_Failure_Retry: remember that connecting to r failed. */
void route_host_failed(struct session *s, const struct route *r)
{
  struct worker *w = s->w;
  const struct conf_view *v = worker_view(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  uint64_t until = clock_wall_ms() + (uint64_t)conf_interval(v, CONF_HOST_FAILURE_RETRY) * 1000u;
  mark_route(w->hostfail, &w->nhostfail, r, until);
  adaptive_queue_conn_failed(w->sh, w->log, v, dq_queue_binding(s->q), dq_queue_domain(s->q),
                             clock_wall_ms());
}

bool route_tls_failed_lately(struct worker *w, const struct route *r)
{
  return route_marked(w->tlsfail, w->ntlsfail, r, clock_wall_ms());
}

static bool host_is_failing(struct worker *w, const struct route *r, uint64_t now)
{
  return route_marked(w->hostfail, w->nhostfail, r, now);
}

/* TLS_Ifavailable_Fallback: an opportunistic STARTTLS handshake failed.
 * When the scope allows it, the attempt is not a failure: the session
 * closes and reconnects at once to the same address without
 * STARTTLS, and the address skips STARTTLS for TLS_Failure_Retry (this
 * worker's memory; a restart forgets it). True when that happens. Never
 * for smtps:// (implicit TLS) or TLS = required. */
bool route_tls_fallback(struct session *s)
{
  struct worker *w = s->w;
  const struct route *r = &s->routes[s->route_i];
  const struct conf_view *v = worker_view(w, dq_queue_binding(s->q), dq_queue_domain(s->q));
  if (r->implicit_tls || s->plain_only || atomic_load(&w->stop) ||
      conf_enum(v, CONF_TLS) != 1 || !conf_bool(v, CONF_TLS_IFAVAILABLE_FALLBACK))
    return false;
  uint64_t now = clock_wall_ms();
  uint64_t keep = (uint64_t)conf_interval(v, CONF_TLS_FAILURE_RETRY);
  bool known = route_marked(w->tlsfail, w->ntlsfail, r, now);
  if (keep > 0)
    mark_route(w->tlsfail, &w->ntlsfail, r, now + keep * 1000u);
  if (!known) /* once per address and TLS_Failure_Retry period */
    logs_panic(w->log, now, "tls",
               "STARTTLS to %s port %u (%s) failed: %s; retrying in plaintext "
               "(TLS_Ifavailable_Fallback), no STARTTLS to it for %llu s (TLS_Failure_Retry)",
               r->ip, route_port(r), r->host[0] ? r->host : "-",
               s->detail[0] ? s->detail : "handshake failed", (unsigned long long)keep);
  return true;
}

/* Addresses that failed within Host_Failure_Retry go last (stable), so
 * they are used only when nothing better is left. */
static void route_order(struct session *s)
{
  if (s->w->nhostfail == 0)
    return;
  uint64_t now = clock_wall_ms();
  struct route tmp[ROUTES_MAX];
  unsigned n = 0;
  for (int pass = 0; pass < 2; pass++)
    for (unsigned i = 0; i < s->nroutes; i++)
      if (host_is_failing(s->w, &s->routes[i], now) == (pass == 1))
        tmp[n++] = s->routes[i];
  memcpy(s->routes, tmp, n * sizeof tmp[0]);
}


/* Momentum's TLS_Protocols ("+ALL:-SSLv3:-TLSv1.0:-TLSv1.1") as the
 * lowest version net's tls accepts. */
static const char *lowest_protocol(const char *p)
{
  if (p == NULL)
    return "TLSv1.2";
  if (strstr(p, "-TLSv1.2"))
    return "TLSv1.3";
  if (strstr(p, "-TLSv1.1"))
    return "TLSv1.2";
  if (strstr(p, "-TLSv1.0"))
    return "TLSv1.1";
  return "TLSv1";
}

/* The TLS context for a view's TLS options (one per distinct option set,
 * built on first use, kept for the worker's life). NULL when it cannot be
 * built: logged once, and STARTTLS then fails (TLS "required") or the
 * session goes on in plaintext (TLS "ifavailable"). */
struct tls_ctx *route_tls_ctx(struct worker *w, const struct conf_view *v)
{
  int verify = conf_enum(v, CONF_TLS_VERIFY);
  const char *ca = conf_str(v, CONF_TLS_CA), *cert = conf_str(v, CONF_TLS_CERTIFICATE);
  const char *key = conf_str(v, CONF_TLS_KEY), *ciphers = conf_str(v, CONF_TLS_CIPHERS);
  const char *protos = lowest_protocol(conf_str(v, CONF_TLS_PROTOCOLS));
  if (cert && !strcmp(cert, "none"))
    cert = key = NULL;
  char k[4096];
  snprintf(k, sizeof k, "%d\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s", verify, ca ? ca : "", cert ? cert : "",
           key ? key : "", ciphers ? ciphers : "", protos);
  for (unsigned i = 0; i < w->ntls; i++)
    if (!strcmp(w->tls[i].key, k))
      return w->tls[i].ctx;
  struct tls_params tp = {.verify = verify == 2 ? TLS_VERIFY_HOST : verify == 1 ? TLS_VERIFY_CA : TLS_VERIFY_NO,
                          .ca_file = ca, .cert_file = cert, .key_file = key, .ciphers = ciphers,
                          .protocols = protos};
  /* read as root at start-up (tlskeys.c); else the worker reads the paths */
  tp.cert_pem = tlskeys_get(cert, &tp.cert_pem_len);
  if (tp.cert_pem && key) {
    tp.key_pem = tlskeys_get(key, &tp.key_pem_len);
    if (tp.key_pem == NULL)
      tp.cert_pem = NULL;
  }
  char err[256];
  struct tls_ctx *ctx = tls_ctx_new(&tp, err, sizeof err);
  if (ctx == NULL)
    logs_panic(w->log, clock_wall_ms(), "tls", "cannot set up TLS (verify %d, ca %s, certificate %s): %s",
               verify, ca ? ca : "-", cert ? cert : "-", err);
  if (w->ntls == TLS_SLOTS)
    return ctx; /* unusual: more distinct option sets than slots; not cached */
  w->tls[w->ntls].key = util_xstrdup(k);
  w->tls[w->ntls].ctx = ctx;
  w->ntls++;
  return ctx;
}


static void add_route(struct session *s, const struct dns_host *h, uint16_t port, bool implicit_tls)
{
  for (unsigned a = 0; a < h->naddr && s->nroutes < ROUTES_MAX; a++) {
    struct route *r = &s->routes[s->nroutes++];
    r->salen = dns_sockaddr(&h->addr[a], port, &r->sa);
    r->implicit_tls = implicit_tls;
    delivery_copy(r->host, sizeof r->host, h->name ? h->name : "");
    if (h->addr[a].family == AF_INET)
      inet_ntop(AF_INET, h->addr[a].a, r->ip, sizeof r->ip);
    else
      inet_ntop(AF_INET6, h->addr[a].a, r->ip, sizeof r->ip);
  }
}

struct route_spec {
  char host[256];
  uint16_t port;
  bool mx;
  bool implicit_tls;
};

/* Parse one Routes entry: "host", "host:port", "smtp://host:port?...",
 * "smtps://host[:port]" (implicit TLS, port 465 unless given), "__mx__". */
static bool parse_route(const char *e, const char *domain, uint16_t defport, struct route_spec *out)
{
  memset(out, 0, sizeof *out);
  out->port = defport;
  if (!strcmp(e, "__mx__")) {
    delivery_copy(out->host, sizeof out->host, domain);
    out->mx = true;
    return true;
  }
  if (!strncasecmp(e, "smtps://", 8)) {
    e += 8;
    out->implicit_tls = true;
    out->port = SMTPS_PORT;
  } else if (!strncasecmp(e, "smtp://", 7)) {
    e += 7;
  }
  size_t n = strcspn(e, "/?");
  char hp[300];
  if (n >= sizeof hp)
    return false;
  memcpy(hp, e, n);
  hp[n] = '\0';
  char *colon = strrchr(hp, ':');
  if (hp[0] == '[') {
    char *rb = strchr(hp, ']');
    if (!rb)
      return false;
    *rb = '\0';
    if (rb[1] == ':')
      out->port = (uint16_t)atoi(rb + 2);
    delivery_copy(out->host, sizeof out->host, hp + 1);
  } else {
    if (colon && strchr(hp, ':') == colon) {
      *colon = '\0';
      out->port = (uint16_t)atoi(colon + 1);
    }
    delivery_copy(out->host, sizeof out->host, hp);
  }
  const char *port = strstr(e, "port=");
  if (port)
    out->port = (uint16_t)atoi(port + 5);
  return out->host[0] != '\0';
}

struct resolve_ctx {
  struct session *s;
  route_done_fn *done;
  struct route_spec spec[ROUTES_MAX];
  unsigned nspec, i;
  enum dns_status worst;
  char text[160];
};

static void resolve_next(struct resolve_ctx *rc);

static void on_resolved(void *arg, const struct dns_result *res)
{
  struct resolve_ctx *rc = arg;
  struct session *s = rc->s;
  s->dns = NULL;
  if (res->status == DNS_OK) {
    for (unsigned h = 0; h < res->nhosts; h++)
      if (res->hosts[h].status == DNS_OK)
        add_route(s, &res->hosts[h], rc->spec[rc->i].port, rc->spec[rc->i].implicit_tls);
  } else {
    rc->worst = res->status;
    delivery_copy(rc->text, sizeof rc->text, res->text);
  }
  rc->i++;
  resolve_next(rc);
}

static void resolve_next(struct resolve_ctx *rc)
{
  struct session *s = rc->s;
  if (rc->i < rc->nspec && s->nroutes < ROUTES_MAX) {
    s->dns = dns_resolve(s->w->dns, rc->spec[rc->i].host, rc->spec[rc->i].mx, on_resolved, rc);
    return;
  }
  if (s->nroutes == 0) {
    bool perm = dns_status_permanent(rc->worst) && rc->nspec == 1;
    char t[240];
    snprintf(t, sizeof t, "%s [internal] %s: %s",
             rc->worst == DNS_NULLMX ? "556 5.1.10" : perm ? "550 5.1.2" : "451 4.4.3",
             rc->worst == DNS_NULLMX ? "domain accepts no mail (null MX)" : "route lookup failed",
             rc->text[0] ? rc->text : dns_status_name(rc->worst));
    route_done_fn *done = rc->done;
    free(rc);
    done(s, t, perm);
    return;
  }
  route_done_fn *done = rc->done;
  free(rc);
  s->route_i = 0;
  route_order(s);
  done(s, NULL, false);
}

void route_resolve(struct session *s, route_done_fn *done)
{
  struct worker *w = s->w;
  struct dq_queue *q = s->q;
  const struct conf_view *v = worker_view(w, dq_queue_binding(q), dq_queue_domain(q));
  uint16_t defport = (uint16_t)conf_int(v, CONF_REMOTE_SMTP_PORT);
  struct resolve_ctx *rc = util_xcalloc(1, sizeof *rc);
  rc->s = s;
  rc->done = done;
  struct conf_addr gw = conf_addr(v, CONF_GATEWAY);
  size_t nroutes = 0;
  const char *const *routes = conf_list(v, CONF_ROUTES, &nroutes);
  if (gw.host) {
    delivery_copy(rc->spec[0].host, sizeof rc->spec[0].host, gw.host);
    rc->spec[0].implicit_tls = gw.implicit_tls;
    rc->spec[0].port = gw.port ? gw.port : gw.implicit_tls ? SMTPS_PORT : defport;
    rc->nspec = 1;
  } else if (routes && nroutes > 0) {
    for (size_t i = 0; i < nroutes && rc->nspec < ROUTES_MAX; i++)
      if (parse_route(routes[i], dq_queue_domain(q), defport, &rc->spec[rc->nspec]))
        rc->nspec++;
  } else {
    delivery_copy(rc->spec[0].host, sizeof rc->spec[0].host, dq_queue_domain(q));
    rc->spec[0].port = defport;
    rc->spec[0].mx = true;
    rc->nspec = 1;
  }
  resolve_next(rc);
}

