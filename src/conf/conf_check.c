/* conf_check.c owns the checks that need the whole snapshot or the file
 * system, so that a value which could only fail at delivery time fails the
 * load (and --check-config) with the file and line that set it:
 *   - Gateway "#name" names a Domain "#name" stanza that gives Routes to
 *     every binding whose mail it routes, and names no further #gateway;
 *   - a Gateway host is a host name or an IP literal; every Routes entry
 *     parses the way the worker reads it (scheme, host, port, query);
 *   - Remote_SMTP_Port is a port; EHLO_Hostname a name the peer can take;
 *     Bind_Address "*" or an IP literal (a host name was silently ignored);
 *   - conf_check_environment (--check-config): the TLS files a delivery
 *     reads exist, and each Bind_Address is an address of this host.
 * Never logs. Runs once per load on the loading thread. */
#include "conf_internal.h"
#include "panic.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

IMPETUS_PRINTF(3, 4)
static int bad(struct conf_error *err, const struct conf_value *v, const char *fmt, ...)
{
  snprintf(err->file, sizeof err->file, "%s", v->file ? v->file : "");
  err->line = v->line;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  return -EINVAL;
}

static bool host_char(char ch)
{
  return isalnum((unsigned char)ch) || ch == '.' || ch == '-' || ch == '_';
}

/* A host name, an IPv4 literal, or an IPv6 literal (bare or bracketed). */
static bool host_ok(const char *h, size_t n)
{
  if (n == 0 || n > 255)
    return false;
  if (memchr(h, ':', n)) { /* IPv6 */
    for (size_t i = 0; i < n; i++)
      if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
        return false;
    return true;
  }
  for (size_t i = 0; i < n; i++)
    if (!host_char(h[i]))
      return false;
  return true;
}

static bool port_ok(const char *s, size_t n)
{
  if (n == 0 || n > 5)
    return false;
  unsigned p = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i]))
      return false;
    p = p * 10 + (unsigned)(s[i] - '0');
  }
  return p >= 1 && p <= 65535;
}

/* One Routes entry: "__mx__", or [smtp://|smtps://]host[:port][/][?k=v&...]
 * with k one of pref, ttl, port, type (Momentum's URI). NULL if fine, else
 * what is wrong. */
static const char *route_problem(const char *e)
{
  if (!strcmp(e, "__mx__"))
    return NULL;
  const char *sep = strstr(e, "://");
  if (sep) {
    if (!((sep - e == 4 && !strncasecmp(e, "smtp", 4)) || (sep - e == 5 && !strncasecmp(e, "smtps", 5))))
      return "the scheme is not smtp:// or smtps://";
    e = sep + 3;
  }
  size_t n = strcspn(e, "/?");
  const char *host = e, *port = NULL;
  size_t hn = n, pn = 0;
  if (e[0] == '[') {
    const char *rb = memchr(e, ']', n);
    if (!rb)
      return "'[' without ']'";
    host = e + 1;
    hn = (size_t)(rb - host);
    if (rb + 1 < e + n) {
      if (rb[1] != ':')
        return "junk after ']'";
      port = rb + 2;
      pn = (size_t)(e + n - port);
    }
  } else {
    const char *colon = memchr(e, ':', n);
    if (colon && memchr(colon + 1, ':', (size_t)(e + n - colon - 1)) == NULL) {
      hn = (size_t)(colon - e);
      port = colon + 1;
      pn = (size_t)(e + n - port);
    }
  }
  if (!host_ok(host, hn))
    return "the host is not a host name or an IP address";
  if (port && !port_ok(port, pn))
    return "the port is not a number from 1 to 65535";
  e += n;
  if (*e == '/')
    e++;
  if (*e == '\0')
    return NULL;
  if (*e != '?')
    return "only a query (?pref=N&port=N&ttl=N&type=mx|a) may follow the host";
  for (e++; *e;) {
    size_t kn = strcspn(e, "="), vn;
    if (e[kn] != '=')
      return "a query item is not key=value";
    const char *v = e + kn + 1;
    vn = strcspn(v, "&");
    if (kn == 4 && !strncmp(e, "port", 4)) {
      if (!port_ok(v, vn))
        return "port= is not a number from 1 to 65535";
    } else if ((kn == 4 && !strncmp(e, "pref", 4)) || (kn == 3 && !strncmp(e, "ttl", 3))) {
      if (vn == 0 || strspn(v, "0123456789") < vn)
        return "pref= and ttl= take a number";
    } else if (kn == 4 && !strncmp(e, "type", 4)) {
      if (!((vn == 2 && !strncasecmp(v, "mx", 2)) || (vn == 1 && (*v == 'a' || *v == 'A'))))
        return "type= is mx or a";
    } else {
      return "unknown query key (pref, ttl, port, type)";
    }
    e = v + vn;
    if (*e == '&')
      e++;
  }
  return NULL;
}

/* Each value, in every scope node. */
static int each_value(struct conf *c, struct conf_error *err,
                      int (*fn)(struct conf *, const struct conf_value *, struct conf_error *))
{
  for (uint32_t i = 0; i < c->nnodes; i++) {
    const struct conf_node *n = c->nodes[i];
    for (uint32_t j = 0; j < n->nvals; j++) {
      int r = fn(c, n->vals[j], err);
      if (r < 0)
        return r;
    }
  }
  return 0;
}

static int check_value(struct conf *c, const struct conf_value *v, struct conf_error *err)
{
  (void)c;
  if (!v->set || v->off)
    return 0;
  switch (v->opt) {
  case CONF_ROUTES:
    for (uint32_t i = 0; i < v->nitems; i++) {
      const char *why = route_problem(v->items[i]);
      if (why)
        return bad(err, v, "option 'Routes': \"%.200s\": %s", v->items[i], why);
    }
    return 0;
  case CONF_GATEWAY:
    if (v->text[0] == '#')
      return conf_domain_id(c, v->text)
               ? 0
               : bad(err, v, "Gateway \"%s\" names no Domain \"%s\" stanza (Momentum's relay "
                             "idiom: Domain \"%s\" { Routes = ( \"smtp://host:port\" ) })",
                     v->text, v->text, v->text);
    if (!strcmp(v->host, "*") || !host_ok(v->host, strlen(v->host)))
      return bad(err, v, "Gateway \"%s\": the host is not a host name or an IP address", v->text);
    return 0;
  case CONF_BIND_ADDRESS: {
    unsigned char a[16];
    if (strcmp(v->host, "*") && inet_pton(AF_INET, v->host, a) != 1 && inet_pton(AF_INET6, v->host, a) != 1)
      return bad(err, v, "option 'Bind_Address': \"%s\" is not * or an IP address", v->text);
    if (v->port)
      return bad(err, v, "option 'Bind_Address': \"%s\": no port (connections bind the address only)",
                 v->text);
    return 0;
  }
  case CONF_EHLO_HOSTNAME: {
    size_t n = strlen(v->text);
    bool literal = n > 2 && v->text[0] == '[' && v->text[n - 1] == ']';
    if (!strcmp(v->text, "__hostname__") || !strcmp(v->text, "__message__") ||
        (literal ? host_ok(v->text + 1 + (strncasecmp(v->text + 1, "IPv6:", 5) ? 0 : 5),
                           n - 2 - (strncasecmp(v->text + 1, "IPv6:", 5) ? 0 : 5))
                 : host_ok(v->text, n) && !memchr(v->text, ':', n)))
      return 0;
    return bad(err, v, "option 'EHLO_Hostname': \"%s\" is not a host name, an address literal "
                       "[1.2.3.4], __hostname__ or __message__", v->text);
  }
  case CONF_REMOTE_SMTP_PORT:
    if (v->i < 1 || v->i > 65535)
      return bad(err, v, "option 'Remote_SMTP_Port': %s is not a port (1 to 65535)", v->text);
    return 0;
  default:
    return 0;
  }
}

/* Every (binding, domain) view whose Gateway is "#name" must get Routes
 * from that domain's view, and that view must not name another #gateway.
 * Bounded: with very many bindings x domains only the stanza's existence
 * (check_value) is checked. */
static int check_relays(struct conf *c, struct conf_error *err)
{
  bool any = false;
  for (uint32_t i = 0; i < c->nnodes && !any; i++)
    for (uint32_t j = 0; j < c->nodes[i]->nvals && !any; j++)
      any = c->nodes[i]->vals[j]->opt == CONF_GATEWAY && c->nodes[i]->vals[j]->text &&
            c->nodes[i]->vals[j]->text[0] == '#';
  if (!any || (uint64_t)c->nbindings * (c->ndomains + 1) > 20000)
    return 0;
  struct conf_view *v = util_xmalloc(sizeof *v);
  int r = 0;
  for (uint32_t b = 0; b < c->nbindings && r == 0; b++) {
    const struct conf_binding *bd = &c->bindings[b];
    for (uint32_t d = 0; d <= c->ndomains && r == 0; d++) {
      uint32_t rd = conf_view_fill(c, v, bd->group, bd, d);
      const struct conf_value *gw = v->v[CONF_GATEWAY];
      if (!gw->text || gw->text[0] != '#' || gw->host)
        continue;
      if (conf_domain_id(c, gw->text) != rd && rd != d)
        r = bad(err, gw, "Gateway \"%s\" applies inside the route domain of another #name "
                         "gateway (binding \"%s\"): #name gateways are not chained",
                gw->text, bd->name);
      else if (v->v[CONF_ROUTES]->nitems == 0)
        r = bad(err, gw, "Gateway \"%s\": Domain \"%s\" gives binding \"%s\" no Routes", gw->text,
                gw->text, bd->name);
    }
  }
  free(v);
  return r;
}

int conf_check(struct conf *c, struct conf_error *err)
{
  int r = each_value(c, err, check_value);
  if (r == 0)
    r = check_relays(c, err);
  return r;
}

/* Whether this host has the address (bind to it, port 0). */
static int local_address(const char *host)
{
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  socklen_t len;
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    len = sizeof *s4;
  } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    len = sizeof *s6;
  } else {
    return -EINVAL;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0; /* cannot tell: not the configuration's fault */
  int r = bind(fd, (struct sockaddr *)&ss, len) < 0 ? -errno : 0;
  close(fd);
  return r == -EADDRNOTAVAIL ? r : 0;
}

static int check_env(struct conf *c, const struct conf_value *v, struct conf_error *err)
{
  (void)c;
  if (!v->set || !v->text)
    return 0;
  if (v->opt == CONF_BIND_ADDRESS && v->host && strcmp(v->host, "*")) {
    int r = local_address(v->host);
    return r < 0 ? bad(err, v, "option 'Bind_Address': %s: %s", v->host, strerror(-r)) : 0;
  }
  if (v->opt != CONF_TLS_CA && v->opt != CONF_TLS_CERTIFICATE && v->opt != CONF_TLS_KEY)
    return 0;
  const char *slash = strrchr(v->text, '/');
  if (!strcmp(slash ? slash + 1 : v->text, "none")) /* TLS_Certificate = none */
    return 0;
  struct stat st;
  if (stat(v->text, &st) < 0)
    return bad(err, v, "option '%s': \"%s\": %s", conf_optdefs[v->opt].name, v->text,
               strerror(errno));
  if (!S_ISREG(st.st_mode))
    return bad(err, v, "option '%s': \"%s\" is not a regular file", conf_optdefs[v->opt].name,
               v->text);
  return 0;
}

int conf_check_environment(const struct conf *c, struct conf_error *err)
{
  memset(err, 0, sizeof *err);
  return each_value((struct conf *)(uintptr_t)c, err, check_env);
}
