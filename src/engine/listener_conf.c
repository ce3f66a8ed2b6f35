/* listener_conf.c owns the ESMTP_Listener's configuration: the
 * generations (a configuration snapshot and its parsed Peer CIDRs), the
 * option lookup through the scopes (the Listen's best Peer, the Listen, the
 * listener's best Peer, the listener, global, the default), relaying
 * (Relay_Hosts, Open_Relay), SMTP_Extensions, the Listen sockets (opened at
 * start as root; on a reload new ones opened, removed ones closed, kept
 * ones keep their socket) and the Auth_Password_File.
 * Threads: lsn_conf_apply at start on the main thread, on a reload on the
 * listener thread; the rest on the listener thread. Never blocks but for
 * the start-up file reads; never logs (it returns the text). */
#include "listener.h"
#include "listener_int.h"

#include "panic.h"

#include <arpa/inet.h>
#include <crypt.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

int lsn_parse_cidr(const char *s, struct cidr *c)
{
  char tmp[128];
  snprintf(tmp, sizeof(tmp), "%s", s);
  char *slash = strchr(tmp, '/');
  if (slash)
    *slash = 0;
  memset(c->a, 0, sizeof(c->a));
  if (inet_pton(AF_INET, tmp, c->a) == 1) {
    c->fam = AF_INET;
    c->plen = 32;
  } else if (inet_pton(AF_INET6, tmp, c->a) == 1) {
    c->fam = AF_INET6;
    c->plen = 128;
  } else {
    return -EINVAL;
  }
  if (slash) {
    char *end;
    long n = strtol(slash + 1, &end, 10);
    if (*end || n < 0 || n > c->plen)
      return -EINVAL;
    c->plen = (int)n;
  }
  return 0;
}

bool lsn_cidr_match(const struct cidr *c, int fam, const uint8_t *a)
{
  if (c->fam != fam)
    return false;
  int full = c->plen / 8, rest = c->plen % 8;
  if (memcmp(c->a, a, (size_t)full))
    return false;
  if (rest) {
    uint8_t m = (uint8_t)(0xff << (8 - rest));
    if ((c->a[full] & m) != (a[full] & m))
      return false;
  }
  return true;
}

int lsn_addr_bytes(const struct sockaddr_storage *ss, uint8_t *a)
{
  if (ss->ss_family == AF_INET) {
    memcpy(a, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    return AF_INET;
  }
  const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
  if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
    memcpy(a, s6->sin6_addr.s6_addr + 12, 4);
    return AF_INET;
  }
  memcpy(a, &s6->sin6_addr, 16);
  return AF_INET6;
}

static const struct conf_view *best_peer(const struct cidr *p, size_t n, int fam, const uint8_t *a)
{
  const struct cidr *best = NULL;
  for (size_t i = 0; i < n; i++)
    if (lsn_cidr_match(&p[i], fam, a) && (!best || p[i].plen > best->plen))
      best = &p[i];
  return best ? best->v : NULL;
}

struct scopes lsn_scopes(const struct lgen *g, const struct lsock *k, int fam, const uint8_t *a)
{
  return (struct scopes){.lpeer = best_peer(k->peers, k->npeers, fam, a),
                         .listen = k->v,
                         .gpeer = best_peer(g->gpeers, g->ngpeers, fam, a),
                         .top = g->top,
                         .global = g->global};
}

/* The view that sets o (most specific first), and the option id there. */
static const struct conf_view *pick(const struct scopes *s, struct opt3 o, int *id)
{
  if (o.p >= 0 && s->lpeer && conf_is_set(s->lpeer, o.p))
    return *id = o.p, s->lpeer;
  if (o.ll >= 0 && s->listen && conf_is_set(s->listen, o.ll))
    return *id = o.ll, s->listen;
  if (o.p >= 0 && s->gpeer && conf_is_set(s->gpeer, o.p))
    return *id = o.p, s->gpeer;
  return *id = o.l, s->top; /* set there, or its default */
}

int64_t lsn_opt_int(const struct scopes *s, struct opt3 o)
{
  int id;
  const struct conf_view *v = pick(s, o, &id);
  return conf_int(v, id);
}

int64_t lsn_opt_interval(const struct scopes *s, struct opt3 o)
{
  int id;
  const struct conf_view *v = pick(s, o, &id);
  return conf_interval(v, id);
}

bool lsn_opt_bool(const struct scopes *s, struct opt3 o)
{
  int id;
  const struct conf_view *v = pick(s, o, &id);
  return conf_bool(v, id);
}

bool lsn_relay_allowed(const struct scopes *s, int fam, const uint8_t *a)
{
  if (lsn_opt_bool(s, O3(OPEN_RELAY)))
    return true;
  int id;
  const struct conf_view *v = pick(s, O3(RELAY_HOSTS), &id);
  size_t n = 0;
  const char *const *list = NULL;
  if (conf_is_set(v, id))
    list = conf_list(v, id, &n);
  else if (conf_is_set(s->global, CONF_RELAY_HOSTS))
    list = conf_list(s->global, CONF_RELAY_HOSTS, &n);
  for (size_t i = 0; i < n; i++) {
    struct cidr c;
    if (lsn_parse_cidr(list[i], &c) == 0 && lsn_cidr_match(&c, fam, a))
      return true;
  }
  return false;
}

int lsn_ext_mask(const struct scopes *s, uint32_t *mask, uint32_t *mechs, const char **bad)
{
  static const struct {
    const char *n;
    uint32_t bit;
  } names[] = {
    {"PIPELINING", SMTPS_EXT_PIPELINING}, {"CHUNKING", SMTPS_EXT_CHUNKING},
    {"SIZE", SMTPS_EXT_SIZE}, {"8BITMIME", SMTPS_EXT_8BITMIME},
    {"SMTPUTF8", SMTPS_EXT_SMTPUTF8}, {"DSN", SMTPS_EXT_DSN},
    {"ENHANCEDSTATUSCODES", SMTPS_EXT_ENHANCEDSTATUSCODES},
    {"STARTTLS", SMTPS_EXT_STARTTLS},
  };
  int id;
  const struct conf_view *v = pick(s, O3(SMTP_EXTENSIONS), &id);
  *mechs = 0;
  if (!conf_is_set(v, id)) {
    *mask = SMTPS_EXT_PIPELINING | SMTPS_EXT_CHUNKING | SMTPS_EXT_SIZE | SMTPS_EXT_8BITMIME |
            SMTPS_EXT_SMTPUTF8 | SMTPS_EXT_DSN | SMTPS_EXT_ENHANCEDSTATUSCODES |
            SMTPS_EXT_STARTTLS;
    return 0;
  }
  size_t n;
  const char *const *list = conf_list(v, id, &n);
  *mask = 0;
  for (size_t i = 0; i < n; i++) {
    if (!strcasecmp(list[i], "AUTH PLAIN") || !strcasecmp(list[i], "AUTH LOGIN")) {
      *mechs |= toupper((unsigned char)list[i][5]) == 'P' ? SMTPS_AUTH_PLAIN : SMTPS_AUTH_LOGIN;
      continue;
    }
    size_t k;
    for (k = 0; k < UTIL_ARRAY_LEN(names); k++)
      if (!strcasecmp(list[i], names[k].n))
        break;
    if (k == UTIL_ARRAY_LEN(names)) {
      *bad = list[i];
      return -EINVAL;
    }
    *mask |= names[k].bit;
  }
  return 0;
}

uint64_t lsn_max_size(const struct scopes *s)
{
  int id;
  const struct conf_view *v = pick(s, O3(MAX_MESSAGE_SIZE), &id);
  if (conf_is_set(v, id))
    return conf_size(v, id);
  uint64_t g = conf_size(s->global, CONF_MAX_MESSAGE_SIZE);
  return g ? g : LSN_DEFAULT_SIZE;
}

const char *lsn_banner_host(const struct listener *L, const struct scopes *s)
{
  int id;
  const struct conf_view *v = pick(s, O3(BANNER_HOSTNAME), &id);
  const char *h = conf_str(v, id);
  return h ? h : L->hostname;
}

/* "addr:port", "[v6]:port", ":port", "*:port" -> a bound, listening socket. */
static int open_sock(const char *spec, int backlog, char *err, size_t errlen)
{
  char host[128] = "";
  const char *port;
  if (spec[0] == '[') {
    const char *e = strchr(spec, ']');
    if (!e || e[1] != ':')
      goto bad;
    snprintf(host, sizeof(host), "%.*s", (int)(e - spec - 1), spec + 1);
    port = e + 2;
  } else {
    const char *c = strrchr(spec, ':');
    if (!c)
      goto bad;
    snprintf(host, sizeof(host), "%.*s", (int)(c - spec), spec);
    port = c + 1;
  }
  char *end;
  long p = strtol(port, &end, 10);
  if (*end || p < 0 || p > 65535)
    goto bad;
  struct sockaddr_storage ss;
  socklen_t sl;
  memset(&ss, 0, sizeof(ss));
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  if (!host[0] || !strcmp(host, "*")) {
    s4->sin_family = AF_INET;
    s4->sin_addr.s_addr = htonl(INADDR_ANY);
    s4->sin_port = htons((uint16_t)p);
    sl = sizeof(*s4);
  } else if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)p);
    sl = sizeof(*s4);
  } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)p);
    sl = sizeof(*s6);
  } else {
    goto bad;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "esmtp_listener: Listen \"%s\": socket: %s", spec, strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (ss.ss_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, backlog > 0 ? backlog : 500) < 0) {
    snprintf(err, errlen, "esmtp_listener: Listen \"%s\": %s", spec, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
bad:
  snprintf(err, errlen, "esmtp_listener: Listen \"%s\": not addr:port, [v6]:port or :port", spec);
  return -1;
}

static int load_peers(const struct conf_stanza *parent, struct cidr **out, size_t *n, char *err,
                      size_t errlen)
{
  *out = NULL;
  *n = 0;
  for (const struct conf_stanza *p = conf_stanza_child(parent, "peer"); p; p = conf_stanza_next(p)) {
    if (*n == LSN_MAX_PEERS) {
      snprintf(err, errlen, "esmtp_listener: more than %d Peer stanzas", LSN_MAX_PEERS);
      return -1;
    }
    *out = util_xrealloc(*out, (*n + 1) * sizeof(**out));
    struct cidr *c = &(*out)[*n];
    if (lsn_parse_cidr(conf_stanza_instance(p), c) < 0) {
      snprintf(err, errlen, "esmtp_listener: Peer \"%s\": not an address or CIDR",
               conf_stanza_instance(p));
      return -1;
    }
    c->v = conf_stanza_view(p);
    (*n)++;
  }
  return 0;
}

/* Auth_Password_File: read once at start-up (as root, before the drop). */
static int load_users(struct listener *L, const char *path, char *err, size_t errlen)
{
  FILE *f = fopen(path, "re");
  if (!f) {
    snprintf(err, errlen, "esmtp_listener: Auth_Password_File %s: %s", path, strerror(errno));
    return -1;
  }
  char line[1024];
  unsigned no = 0;
  while (fgets(line, sizeof(line), f)) {
    no++;
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0] || line[0] == '#')
      continue;
    char *colon = strchr(line, ':');
    if (!colon || colon == line || !colon[1]) {
      snprintf(err, errlen, "esmtp_listener: %s:%u: not user:hash", path, no);
      fclose(f);
      return -1;
    }
    *colon = 0;
    L->users = util_xrealloc(L->users, (L->nusers + 1) * sizeof(*L->users));
    L->hashes = util_xrealloc(L->hashes, (L->nusers + 1) * sizeof(*L->hashes));
    L->users[L->nusers] = util_xstrdup(line);
    L->hashes[L->nusers++] = util_xstrdup(colon + 1);
    util_wipe(line, sizeof(line));
  }
  fclose(f);
  return 0;
}

bool lsn_auth_file_ok(const struct listener *L, const char *u, size_t ul, const char *p, size_t pl)
{
  if (pl >= 512)
    return false;
  char pass[512];
  memcpy(pass, p, pl);
  pass[pl] = 0;
  bool ok = false;
  for (size_t i = 0; i < L->nusers && !ok; i++) {
    if (strlen(L->users[i]) != ul || memcmp(L->users[i], u, ul))
      continue;
    struct crypt_data cd;
    memset(&cd, 0, sizeof(cd));
    /* crypt_rn: libxcrypt's crypt_r with a size; not intercepted by ASan */
    const char *h = crypt_rn(pass, L->hashes[i], &cd, (int)sizeof(cd));
    ok = h && h[0] != '*' && strlen(h) == strlen(L->hashes[i]) && !strcmp(h, L->hashes[i]);
    util_wipe(&cd, sizeof(cd));
  }
  util_wipe(pass, sizeof(pass));
  return ok;
}

/* TLS_Certificate / TLS_Key, Auth_Password_File and the Lua AUTH backend:
 * read at start only (as root). */
static int start_only(struct listener *L, const struct conf_view *tv, char *err, size_t errlen)
{
  const char *cert = conf_str(tv, CONF_ESMTP_TLS_CERTIFICATE_L);
  const char *key = conf_str(tv, CONF_ESMTP_TLS_KEY_L);
  if (cert || key) {
    L->ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!L->ssl_ctx || !cert || !key ||
        SSL_CTX_use_certificate_chain_file(L->ssl_ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(L->ssl_ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(L->ssl_ctx) != 1) {
      char e[256];
      ERR_error_string_n(ERR_get_error(), e, sizeof(e));
      snprintf(err, errlen, "esmtp_listener: TLS_Certificate %s / TLS_Key %s: %s",
               cert ? cert : "(unset)", key ? key : "(unset)", e);
      return -1;
    }
    SSL_CTX_set_min_proto_version(L->ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(L->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
  }
  const char *pwf = conf_str(tv, CONF_ESMTP_AUTH_PASSWORD_FILE_L);
  if (pwf && load_users(L, pwf, err, errlen) < 0)
    return -1;
  /* Momentum's ac_auth: AuthLoginParameters / AuthPlainParameters with
   * uri = "ac_auth://" hand the credentials to the Lua hook
   * ac_auth_perform_auth */
  static const int dicts[] = {CONF_ESMTP_AUTH_LOGIN_PARAMETERS_L, CONF_ESMTP_AUTH_PLAIN_PARAMETERS_L};
  for (size_t i = 0; i < UTIL_ARRAY_LEN(dicts); i++) {
    if (!conf_is_set(tv, dicts[i]))
      continue;
    size_t npairs;
    const char *const *kv = conf_dict(tv, dicts[i], &npairs);
    const char *uri = NULL;
    for (size_t k = 0; k < npairs; k++)
      if (!strcasecmp(kv[2 * k], "uri"))
        uri = kv[2 * k + 1];
    if (!uri || strncasecmp(uri, "ac_auth:", 8)) {
      snprintf(err, errlen, "esmtp_listener: %s: uri \"%s\" is not supported (only ac_auth://, "
               "the Lua hook ac_auth_perform_auth; or Auth_Password_File)",
               i ? "AuthPlainParameters" : "AuthLoginParameters", uri ? uri : "");
      return -1;
    }
    L->lua_auth = true;
  }
  return 0;
}

void lsn_gen_unref(struct lgen *g)
{
  if (!g || --g->refs)
    return;
  free(g->gpeers);
  conf_unref(g->conf);
  free(g);
}

void lsn_sock_unref(struct lsock *k)
{
  if (!k || --k->refs)
    return;
  if (k->fd >= 0)
    close(k->fd);
  free(k->peers);
  lsn_gen_unref(k->gen);
  free(k);
}

static struct lsock *find_sock(struct listener *L, const char *name)
{
  for (size_t i = 0; i < L->nsocks; i++)
    if (!strcmp(L->socks[i]->name, name))
      return L->socks[i];
  return NULL;
}

/* The Listen stanzas of c, checked, with their peers; sockets not opened. */
struct pending {
  const struct conf_stanza *st;
  struct cidr *peers;
  size_t npeers;
  struct lsock *old; /* the open socket of the same name, if any */
};

int lsn_conf_apply(struct listener *L, struct conf *c, bool start, char *err, size_t errlen)
{
  err[0] = 0;
  const struct conf_stanza *top = conf_stanza_first(c, "esmtp_listener");
  if (!top) {
    snprintf(err, errlen, "esmtp_listener: the stanza was removed (a restart closes the listener)");
    return -1;
  }
  const struct conf_view *tv = conf_stanza_view(top);
  struct lgen *g = util_xcalloc(1, sizeof(*g));
  g->refs = 1;
  g->conf = conf_ref(c);
  g->top = tv;
  g->global = conf_global(c);
  struct pending pend[LSN_MAX_SOCKS];
  size_t np = 0;
  if (load_peers(top, &g->gpeers, &g->ngpeers, err, errlen) < 0)
    goto fail;
  if (start && start_only(L, tv, err, errlen) < 0)
    goto fail;
  bool enabled = conf_bool(tv, CONF_ESMTP_ENABLE_L);
  for (const struct conf_stanza *ls = conf_stanza_child(top, "listen"); ls; ls = conf_stanza_next(ls)) {
    const struct conf_view *lv = conf_stanza_view(ls);
    bool en = conf_is_set(lv, CONF_ESMTP_ENABLE_LL) ? conf_bool(lv, CONF_ESMTP_ENABLE_LL) : enabled;
    if (!en)
      continue;
    if (np == LSN_MAX_SOCKS) {
      snprintf(err, errlen, "esmtp_listener: more than %d Listen stanzas", LSN_MAX_SOCKS);
      goto fail;
    }
    struct pending *pe = &pend[np];
    pe->st = ls;
    if (load_peers(ls, &pe->peers, &pe->npeers, err, errlen) < 0) {
      free(pe->peers);
      goto fail;
    }
    np++;
    /* a bad SMTP_Extensions word is an error, whatever the peer */
    struct scopes s = {.listen = lv, .top = tv, .global = g->global};
    uint32_t m, mechs;
    const char *bad = NULL;
    if (lsn_ext_mask(&s, &m, &mechs, &bad) < 0) {
      snprintf(err, errlen, "esmtp_listener: SMTP_Extensions: unknown extension \"%s\"", bad);
      goto fail;
    }
    pe->old = find_sock(L, conf_stanza_instance(ls));
    for (size_t j = 0; j + 1 < np; j++)
      if (!strcmp(conf_stanza_instance(pend[j].st), conf_stanza_instance(ls))) {
        snprintf(err, errlen, "esmtp_listener: Listen \"%s\" appears twice",
                 conf_stanza_instance(ls));
        goto fail;
      }
  }
  if (np == 0) {
    snprintf(err, errlen, "esmtp_listener: no enabled Listen stanza");
    goto fail;
  }
  /* open the new sockets first: a failure leaves everything as it was */
  struct lsock *made[LSN_MAX_SOCKS] = {0};
  for (size_t i = 0; i < np; i++) {
    if (pend[i].old)
      continue;
    const struct conf_view *lv = conf_stanza_view(pend[i].st);
    int64_t backlog = conf_is_set(lv, CONF_ESMTP_LISTEN_BACKLOG_LL)
                          ? conf_int(lv, CONF_ESMTP_LISTEN_BACKLOG_LL)
                          : conf_int(tv, CONF_ESMTP_LISTEN_BACKLOG_L);
    struct lsock *k = util_xcalloc(1, sizeof(*k));
    k->kind = LSN_K_SOCK;
    k->refs = 1;
    snprintf(k->name, sizeof(k->name), "%s", conf_stanza_instance(pend[i].st));
    k->fd = open_sock(k->name, (int)backlog, err, errlen);
    if (k->fd < 0) {
      free(k);
      for (size_t j = 0; j < i; j++)
        lsn_sock_unref(made[j]);
      goto fail;
    }
    made[i] = k;
  }
  /* commit: the sockets, then the generation */
  struct lsock *keep[LSN_MAX_SOCKS];
  for (size_t i = 0; i < np; i++) {
    struct lsock *k = pend[i].old ? pend[i].old : made[i];
    free(k->peers);
    k->peers = pend[i].peers;
    k->npeers = pend[i].npeers;
    k->v = conf_stanza_view(pend[i].st);
    g->refs++;
    lsn_gen_unref(k->gen);
    k->gen = g;
    keep[i] = k;
  }
  for (size_t i = 0; i < L->nsocks; i++) {
    bool kept = false;
    for (size_t j = 0; j < np; j++)
      kept |= keep[j] == L->socks[i];
    if (!kept) { /* removed: no new sessions; its sessions go on */
      struct lsock *k = L->socks[i];
      if (L->ep >= 0)
        epoll_ctl(L->ep, EPOLL_CTL_DEL, k->fd, NULL);
      close(k->fd);
      k->fd = -1;
      lsn_sock_unref(k);
    }
  }
  memcpy(L->socks, keep, np * sizeof(*keep));
  L->nsocks = np;
  lsn_gen_unref(L->gen);
  L->gen = g;
  return 0;
fail:
  for (size_t i = 0; i < np; i++)
    free(pend[i].peers);
  lsn_gen_unref(g);
  return -1;
}

void lsn_conf_free(struct listener *L)
{
  for (size_t i = 0; i < L->nsocks; i++) {
    if (L->socks[i]->fd >= 0)
      close(L->socks[i]->fd);
    L->socks[i]->fd = -1;
    lsn_sock_unref(L->socks[i]);
  }
  L->nsocks = 0;
  lsn_gen_unref(L->gen);
  L->gen = NULL;
  for (size_t i = 0; i < L->nusers; i++) {
    free(L->users[i]);
    util_wipe(L->hashes[i], strlen(L->hashes[i]));
    free(L->hashes[i]);
  }
  free(L->users);
  free(L->hashes);
  if (L->ssl_ctx)
    SSL_CTX_free(L->ssl_ctx);
}
