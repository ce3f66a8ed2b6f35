/* listener.c owns Momentum's ESMTP_Listener: the listening sockets of its
 * Listen stanzas, the inbound sessions (each one runs the smtps core),
 * the Peer scopes (most specific CIDR wins: the Listen's Peer, the Listen,
 * the listener's Peer, the listener, then global), relaying (Relay_Hosts,
 * Open_Relay, or an authenticated client; 554 5.7.1 per recipient
 * otherwise), the limits (sessions per listener / Listen / client address,
 * recipients, receptions, errors, timeouts) and the hand-over of accepted
 * messages to the spool (spool_submit): a session's 250 after the end of
 * data is sent only from the spool's completion, after the group commit's
 * sync; a spool failure answers 451/452, never 250.
 *
 * One thread (listener_start) owns every socket and session, driven by a
 * level-triggered epoll (a listener's sessions are few compared with a
 * worker's deliveries; the delivery side keeps its io_uring rings). The
 * spool's threads only push completions onto a locked list and wake the
 * thread with an eventfd. New sessions get 421 while too many submissions
 * wait. A session keeps reading while its messages wait for their commit
 * (their replies are deferred in order in its core, smtps_defer), so one
 * pipelining client's messages share a commit; it stops reading at
 * SMTPS_DEFER_MAX owed replies. Memory: a session holds its core, a
 * partial line, the message being received and the ones waiting for their
 * commit (each at most Max_Message_Size). Never blocks on disk. */
#include "listener.h"

#include "buf.h"
#include "clock.h"
#include "conf.h"
#include "logs.h"
#include "msg.h"
#include "panic.h"
#include "smtps.h"
#include "spool.h"

#include <arpa/inet.h>
#include <crypt.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LSN_MAX_SOCKS 64          /* named limit: Listen stanzas */
#define LSN_MAX_PEERS 1024        /* named limit: Peer stanzas */
#define LSN_READ 65536            /* one read */
#define LSN_IN_MAX (256u * 1024)  /* input held while a reply is due, before reading stops */
#define LSN_BUSY_SUBMITS 10000    /* submissions waiting for a commit before new sessions get 421 */
#define LSN_STOP_DEADLINE_MS 10000
#define LSN_DEFAULT_SIZE (50ull * 1024 * 1024)
#define LSN_DEFAULT_RCPTS 10000u
#define TAG_SOCK 1u
#define TAG_SESS 2u
#define TAG_WAKE 3u

/* An option in the three stanza kinds (peer, listen, listener); -1 where absent. */
struct opt3 {
  int p, ll, l;
};
#define O3(X) ((struct opt3){CONF_ESMTP_##X##_P, CONF_ESMTP_##X##_LL, CONF_ESMTP_##X##_L})

struct cidr {
  int fam; /* AF_INET / AF_INET6 */
  uint8_t a[16];
  int plen;
  const struct conf_view *v;
};

struct lsock {
  int fd;
  char name[80];
  const struct conf_view *v; /* the Listen stanza */
  struct cidr *peers;        /* its Peer stanzas */
  size_t npeers;
  uint32_t sessions;
};

/* The scopes that apply to one session, most specific first. */
struct scopes {
  const struct conf_view *lpeer, *listen, *gpeer, *top, *global;
};

struct lsess {
  int fd;
  struct listener *L;
  struct lsock *ls;
  struct smtps *sm;
  struct scopes sc;
  struct sockaddr_storage addr;
  char ip[INET6_ADDRSTRLEN];
  char helo[256];
  bool can_relay, reading, dead;
  uint32_t ep_mask;  /* the events epoll has for fd (a change costs a system call) */
  SSL *ssl;          /* after STARTTLS: memory BIOs rb (in) and wb (out) */
  BIO *rb, *wb;
  struct buf cout;   /* TLS records not yet sent */
  uint32_t inflight; /* messages submitted whose commit has not reported */
  uint32_t receptions, max_receptions;
  uint32_t nrcpt;
  struct buf in;   /* input the core has not taken (a reply is due) */
  struct buf env;  /* envelope lines of the open transaction */
  struct buf msg;  /* the message being received */
  char *from;
  char auth_user[128];
  struct lsess *prev, *next; /* all sessions */
};

/* One message handed to the spool; its reply is deferred in the session's
 * core (ticket) until the spool reports (under L->dlock until taken). */
struct lsub {
  struct lsess *s;
  int ticket;
  int result;
  char id[64];
  char why[200];
  struct lsub *next;
};

struct listener {
  struct conf *conf;
  struct spool *spool;
  struct logs_writer *log;
  const char *hostname;
  int ep, wake;
  struct lsock socks[LSN_MAX_SOCKS];
  size_t nsocks;
  struct cidr *gpeers;
  size_t ngpeers;
  const struct conf_view *top, *global;
  struct lsess *sessions;
  size_t nsessions;
  pthread_t thread;
  bool running;
  atomic_bool stop;
  pthread_mutex_t dlock;
  struct lsub *done_head;
  SSL_CTX *ssl_ctx; /* TLS_Certificate / TLS_Key: STARTTLS offered */
  /* Auth_Password_File: "user:hash" lines, split at the colon */
  char **users, **hashes;
  size_t nusers;
};

/* ---- configuration ---- */

static int parse_cidr(const char *s, struct cidr *c)
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

static bool cidr_match(const struct cidr *c, int fam, const uint8_t *a)
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

/* The client's address as (family, bytes); a v4-mapped v6 address is v4. */
static int addr_bytes(const struct sockaddr_storage *ss, uint8_t *a)
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
    if (cidr_match(&p[i], fam, a) && (!best || p[i].plen > best->plen))
      best = &p[i];
  return best ? best->v : NULL;
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

static int64_t opt_int(const struct scopes *s, struct opt3 o)
{
  int id;
  const struct conf_view *v = pick(s, o, &id);
  return conf_int(v, id);
}

static int64_t opt_interval(const struct scopes *s, struct opt3 o)
{
  int id;
  const struct conf_view *v = pick(s, o, &id);
  return conf_interval(v, id);
}

static bool opt_bool(const struct scopes *s, struct opt3 o)
{
  int id;
  const struct conf_view *v = pick(s, o, &id);
  return conf_bool(v, id);
}

/* Relaying allowed for this client: Open_Relay, or its address in the
 * most specific Relay_Hosts (the listener's scopes, then global). */
static bool relay_allowed(const struct scopes *s, int fam, const uint8_t *a)
{
  if (opt_bool(s, O3(OPEN_RELAY)))
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
    if (parse_cidr(list[i], &c) == 0 && cidr_match(&c, fam, a))
      return true;
  }
  return false;
}

/* SMTP_Extensions -> SMTPS_EXT_* and SMTPS_AUTH_*; -EINVAL names the bad
 * word in bad. */
static int ext_mask(const struct scopes *s, uint32_t *mask, uint32_t *mechs, const char **bad)
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

static uint64_t max_size(const struct scopes *s)
{
  int id;
  const struct conf_view *v = pick(s, O3(MAX_MESSAGE_SIZE), &id);
  if (conf_is_set(v, id))
    return conf_size(v, id);
  uint64_t g = conf_size(s->global, CONF_MAX_MESSAGE_SIZE);
  return g ? g : LSN_DEFAULT_SIZE;
}

static const char *banner_host(const struct listener *L, const struct scopes *s)
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
    if (parse_cidr(conf_stanza_instance(p), c) < 0) {
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

/* Whether user/pass match a line of Auth_Password_File (crypt(3)). */
static bool auth_ok(const struct listener *L, const char *u, size_t ul, const char *p, size_t pl)
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

struct listener *listener_open(struct conf *c, struct spool *sp, const char *hostname,
                               struct logs *logs, char *err, size_t errlen)
{
  err[0] = 0;
  const struct conf_stanza *top = conf_stanza_first(c, "esmtp_listener");
  if (!top)
    return NULL;
  const struct conf_view *tv = conf_stanza_view(top);
  struct listener *L = util_xcalloc(1, sizeof(*L));
  L->conf = conf_ref(c);
  L->spool = sp;
  L->hostname = hostname;
  L->top = tv;
  L->global = conf_global(c);
  L->ep = L->wake = -1;
  pthread_mutex_init(&L->dlock, NULL);
  if (load_peers(top, &L->gpeers, &L->ngpeers, err, errlen) < 0)
    goto fail;
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
      goto fail;
    }
    SSL_CTX_set_min_proto_version(L->ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(L->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
  }
  const char *pwf = conf_str(tv, CONF_ESMTP_AUTH_PASSWORD_FILE_L);
  if (pwf && load_users(L, pwf, err, errlen) < 0)
    goto fail;
  bool enabled = conf_bool(tv, CONF_ESMTP_ENABLE_L);
  for (const struct conf_stanza *ls = conf_stanza_child(top, "listen"); ls; ls = conf_stanza_next(ls)) {
    const struct conf_view *lv = conf_stanza_view(ls);
    bool en = conf_is_set(lv, CONF_ESMTP_ENABLE_LL) ? conf_bool(lv, CONF_ESMTP_ENABLE_LL) : enabled;
    if (!en)
      continue;
    if (L->nsocks == LSN_MAX_SOCKS) {
      snprintf(err, errlen, "esmtp_listener: more than %d Listen stanzas", LSN_MAX_SOCKS);
      goto fail;
    }
    struct lsock *k = &L->socks[L->nsocks];
    k->v = lv;
    snprintf(k->name, sizeof(k->name), "%s", conf_stanza_instance(ls));
    int64_t backlog = conf_is_set(lv, CONF_ESMTP_LISTEN_BACKLOG_LL)
                          ? conf_int(lv, CONF_ESMTP_LISTEN_BACKLOG_LL)
                          : conf_int(tv, CONF_ESMTP_LISTEN_BACKLOG_L);
    if (load_peers(ls, &k->peers, &k->npeers, err, errlen) < 0)
      goto fail;
    /* a bad SMTP_Extensions word is a start-up error, whatever the peer */
    struct scopes s = {.listen = lv, .top = tv, .global = L->global};
    uint32_t m, mechs;
    const char *bad = NULL;
    if (ext_mask(&s, &m, &mechs, &bad) < 0) {
      snprintf(err, errlen, "esmtp_listener: SMTP_Extensions: unknown extension \"%s\"", bad);
      goto fail;
    }
    k->fd = open_sock(k->name, (int)backlog, err, errlen);
    if (k->fd < 0)
      goto fail;
    L->nsocks++;
  }
  if (L->nsocks == 0 && !err[0])
    snprintf(err, errlen, "esmtp_listener: no enabled Listen stanza");
  if (L->nsocks == 0)
    goto fail;
  L->log = logs_writer_new(logs);
  return L;
fail:
  listener_free(L);
  return NULL;
}

/* ---- sessions ---- */

static uint64_t now_ms(void) { return clock_mono_ns() / 1000000u; }

static void ep_set(struct lsess *s, bool in, bool out)
{
  uint32_t m = (in ? EPOLLIN : 0u) | (out ? EPOLLOUT : 0u) | EPOLLRDHUP;
  if (m == s->ep_mask)
    return;
  s->ep_mask = m;
  struct epoll_event e = {.events = m, .data.ptr = s};
  epoll_ctl(s->L->ep, EPOLL_CTL_MOD, s->fd, &e);
}

static void txn_reset(struct lsess *s)
{
  free(s->from);
  s->from = NULL;
  s->nrcpt = 0;
  buf_reset(&s->env);
  buf_done(&s->msg, 0);
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
  txn_reset(s);
  buf_done(&s->in, 0);
  buf_done(&s->env, 0);
  buf_done(&s->cout, 0);
  if (s->ssl)
    SSL_free(s->ssl); /* frees both BIOs */
  smtps_free(s->sm);
  free(s);
}

/* Close the socket; the session is freed now, or when its commit reports. */
static void sess_close(struct lsess *s)
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

/* Send the core's replies (through TLS once it runs); false when the
 * session is gone. */
static bool flush(struct lsess *s)
{
  const uint8_t *p;
  size_t n;
  if (s->ssl) {
    while (SSL_is_init_finished(s->ssl) && smtps_output(s->sm, &p, &n)) {
      int w = SSL_write(s->ssl, p, (int)(n > 65536 ? 65536 : n));
      if (w <= 0) {
        sess_close(s);
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
        sess_close(s);
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
        sess_close(s);
        return false;
      }
      if (w == 0) {
        ep_set(s, s->reading, true);
        return true;
      }
      smtps_output_consumed(s->sm, (size_t)w);
    }
    if (smtps_want_tls(s->sm) && !start_tls(s)) {
      sess_close(s);
      return false;
    }
  }
  if (smtps_done(s->sm)) {
    sess_close(s);
    return false;
  }
  ep_set(s, s->reading, false);
  return true;
}

static void on_submitted(void *arg, int result, const char *id, const char *why)
{
  struct lsub *u = arg;
  struct listener *L = u->s->L;
  u->result = result;
  snprintf(u->id, sizeof(u->id), "%s", id ? id : "");
  snprintf(u->why, sizeof(u->why), "%s", why ? why : "");
  pthread_mutex_lock(&L->dlock);
  u->next = L->done_head;
  L->done_head = u;
  pthread_mutex_unlock(&L->dlock);
  uint64_t one = 1;
  ssize_t r = write(L->wake, &one, sizeof(one));
  (void)r;
}

/* The pickup-format message: envelope lines, DSN and session context,
 * Received:, then the message as received. */
static void message_end(struct lsess *s, const struct smtps_event *ev)
{
  if (!ev->ok || !s->from) {
    smtps_accept(s->sm, now_ms());
    txn_reset(s);
    return;
  }
  struct buf f = {0};
  buf_reserve(&f, s->env.len + s->msg.len + 512);
  buf_printf(&f, "x-sender: <%s>\n", s->from);
  buf_append(&f, s->env.data, s->env.len);
  buf_printf(&f, "x-context: reception_peer=%s\n", s->ip);
  char date[64];
  time_t t = time(NULL);
  struct tm tm;
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", localtime_r(&t, &tm));
  buf_printf(&f, "Received: from %s (%s) by %s (Impetus) with %s%s; %s\r\n",
             s->helo[0] ? s->helo : "unknown", s->ip, banner_host(s->L, &s->sc),
             smtps_tls(s->sm) ? "ESMTPS" : "ESMTP", smtps_authenticated(s->sm) ? "A" : "", date);
  /* Date: and Message-ID: when missing, as Postfix's cleanup adds them */
  unsigned missing = msg_headers_missing((const char *)s->msg.data, s->msg.len);
  if (missing) {
    static _Atomic uint64_t seq;
    char unique[64];
    snprintf(unique, sizeof(unique), "%ld.%" PRIu64 ".%ld", (long)t,
             atomic_fetch_add(&seq, 1), (long)getpid());
    msg_headers_add(&f, missing, t, unique, banner_host(s->L, &s->sc));
  }
  buf_append(&f, s->msg.data, s->msg.len);
  txn_reset(s);
  /* The reply waits for the commit; the session reads on, so a pipelining
   * client's next messages join the same commit (up to max_deferred). */
  int ticket = smtps_defer(s->sm, now_ms());
  if (ticket < 0) {
    buf_done(&f, 0);
    smtps_answer(s->sm, 451, "4.3.0 Try again later", now_ms());
    return;
  }
  struct lsub *u = util_xcalloc(1, sizeof(*u));
  u->s = s;
  u->ticket = ticket;
  s->inflight++;
  spool_submit(s->L->spool, f.data, f.len, on_submitted, u); /* takes the data */
}

static void on_command(struct lsess *s, const struct smtps_event *ev)
{
  uint64_t now = now_ms();
  if (!ev->ok) {
    smtps_accept(s->sm, now);
    return;
  }
  switch (ev->cmd) {
  case SMTPS_CMD_EHLO:
  case SMTPS_CMD_HELO:
    snprintf(s->helo, sizeof(s->helo), "%.*s", (int)(ev->arg_len < 200 ? ev->arg_len : 200), ev->arg);
    for (char *p = s->helo; *p; p++)
      if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || *p == '(' || *p == ')')
        *p = '?';
    txn_reset(s);
    break;
  case SMTPS_CMD_MAIL:
    if (s->max_receptions && s->receptions >= s->max_receptions) {
      char line[256];
      snprintf(line, sizeof(line), "421 4.7.0 %s Too many messages in this session\r\n",
               banner_host(s->L, &s->sc));
      smtps_shutdown(s->sm, line);
      return;
    }
    if (ev->arg_len && msg_addr_check(ev->arg, ev->arg_len)) {
      smtps_answer(s->sm, 553, "5.1.7 Bad sender address syntax", now);
      return;
    }
    txn_reset(s);
    s->from = util_xstrndup(ev->arg, ev->arg_len);
    if (ev->envid)
      buf_printf(&s->env, "x-context: dsn_envid=%.*s\n", (int)ev->envid_len, ev->envid);
    if (ev->ret)
      buf_printf(&s->env, "x-context: dsn_ret=%s\n", ev->ret == SMTPS_RET_FULL ? "FULL" : "HDRS");
    if (ev->body == SMTPS_BODY_8BITMIME)
      buf_append_str(&s->env, "x-context: body=8BITMIME\n");
    if (ev->smtputf8)
      buf_append_str(&s->env, "x-context: smtputf8=1\n");
    if (s->auth_user[0])
      buf_printf(&s->env, "x-context: auth_user=%s\n", s->auth_user);
    break;
  case SMTPS_CMD_RCPT:
    if (!s->can_relay && !smtps_authenticated(s->sm)) {
      smtps_answer(s->sm, 554, "5.7.1 Relaying denied", now);
      return;
    }
    if (msg_addr_check(ev->arg, ev->arg_len)) {
      smtps_answer(s->sm, 553, "5.1.3 Bad recipient address syntax", now);
      return;
    }
    buf_printf(&s->env, "x-receiver: <%.*s>\n", (int)ev->arg_len, ev->arg);
    if (ev->notify || ev->orcpt) {
      buf_printf(&s->env, "x-context: dsn_rcpt_%u=", s->nrcpt);
      if (ev->notify)
        buf_printf(&s->env, "NOTIFY=%s%s%s%s", ev->notify & SMTPS_NOTIFY_NEVER ? "NEVER" : "",
                   ev->notify & SMTPS_NOTIFY_SUCCESS ? "SUCCESS," : "",
                   ev->notify & SMTPS_NOTIFY_FAILURE ? "FAILURE," : "",
                   ev->notify & SMTPS_NOTIFY_DELAY ? "DELAY," : "");
      if (ev->orcpt)
        buf_printf(&s->env, "%sORCPT=%.*s", ev->notify ? ";" : "", (int)ev->orcpt_len, ev->orcpt);
      buf_append_str(&s->env, "\n");
    }
    s->nrcpt++;
    break;
  case SMTPS_CMD_DATA:
    buf_done(&s->msg, 0);
    break;
  case SMTPS_CMD_RSET:
    txn_reset(s);
    break;
  default:
    break;
  }
  smtps_accept(s->sm, now);
}

/* Act on the core's events; returns how many there were. */
static int events(struct lsess *s)
{
  struct smtps_event ev;
  int n = 0;
  while (smtps_event(s->sm, &ev)) {
    n++;
    switch (ev.type) {
    case SMTPS_EV_DATA:
      buf_append(&s->msg, ev.data, ev.len);
      break;
    case SMTPS_EV_BDAT:
      break;
    case SMTPS_EV_AUTH:
      if (ev.ok && auth_ok(s->L, ev.arg, ev.arg_len, ev.pass, ev.pass_len)) {
        snprintf(s->auth_user, sizeof(s->auth_user), "%.*s", (int)ev.arg_len, ev.arg);
        smtps_answer(s->sm, 235, "2.7.0 Authentication successful", now_ms());
      } else {
        logs_panic(s->L->log, (uint64_t)time(NULL) * 1000u, "esmtp_listener",
                   "AUTH failed from %s", s->ip);
        smtps_accept(s->sm, now_ms()); /* the default refuses: 535 5.7.8 */
      }
      break;
    case SMTPS_EV_MESSAGE:
      message_end(s, &ev);
      break;
    case SMTPS_EV_COMMAND:
      on_command(s, &ev);
      break;
    case SMTPS_EV_NONE:
    default:
      util_panic("listener: unexpected core event %d", ev.type);
    }
  }
  return n;
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
    size_t k = smtps_feed(s->sm, p + off, n - off, now_ms());
    off += k;
    int ne = events(s);
    if (!flush(s))
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
static bool run_held(struct lsess *s)
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
    sess_close(s); /* EOF or error: a message not yet 250'd is not queued */
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
          flush(s); /* the alert, if any */
          if (!s->dead)
            sess_close(s);
          return;
        }
        flush(s);
        return;
      }
      smtps_tls_done(s->sm, now_ms()); /* RFC 3207: the session starts over */
    }
    uint8_t pt[16384];
    for (;;) {
      int k = SSL_read(s->ssl, pt, sizeof(pt));
      if (k <= 0) {
        int e = SSL_get_error(s->ssl, k);
        if (e != SSL_ERROR_WANT_READ) {
          ERR_clear_error();
          sess_close(s);
          return;
        }
        break;
      }
      bool ok;
      if (buf_avail(&s->in)) {
        buf_append(&s->in, pt, (size_t)k);
        ok = run_held(s);
      } else {
        ok = feed(s, pt, (size_t)k);
      }
      if (!ok || s->dead)
        return;
    }
    flush(s);
    return;
  }
  if (buf_avail(&s->in)) {
    buf_append(&s->in, b, (size_t)r);
    run_held(s);
    return;
  }
  feed(s, b, (size_t)r);
}

static void on_done(struct lsub *u)
{
  struct lsess *s = u->s;
  s->inflight--;
  if (s->dead) {
    if (!s->inflight)
      sess_free(s);
    free(u);
    return;
  }
  char t[300];
  if (u->result == 0) {
    s->receptions++;
    snprintf(t, sizeof(t), "2.0.0 Ok: queued as %s", u->id);
    smtps_resolve(s->sm, u->ticket, 250, t);
  } else if (u->result == -ENOSPC || u->result == -EDQUOT) {
    smtps_resolve(s->sm, u->ticket, 452, "4.3.1 Insufficient system storage");
  } else if (u->result == -EBADMSG) {
    snprintf(t, sizeof(t), "5.7.1 Message rejected: %s", u->why);
    smtps_resolve(s->sm, u->ticket, 554, t);
  } else {
    snprintf(t, sizeof(t), "4.3.0 Message not queued: %s", strerror(-u->result));
    smtps_resolve(s->sm, u->ticket, 451, t);
  }
  free(u);
  s->reading = true;
  if (!flush(s))
    return;
  run_held(s);
}

static void reply_close(int fd, const char *line)
{
  ssize_t r = send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)r;
  close(fd);
}

static size_t sessions_from(const struct listener *L, const char *ip)
{
  size_t n = 0;
  for (const struct lsess *s = L->sessions; s; s = s->next)
    n += !s->dead && !strcmp(s->ip, ip);
  return n;
}

static void on_accept(struct listener *L, struct lsock *k)
{
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(k->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    uint8_t a[16];
    int fam = addr_bytes(&ss, a);
    char ip[INET6_ADDRSTRLEN];
    inet_ntop(fam, a, ip, sizeof(ip));
    struct scopes sc = {.lpeer = best_peer(k->peers, k->npeers, fam, a),
                        .listen = k->v,
                        .gpeer = best_peer(L->gpeers, L->ngpeers, fam, a),
                        .top = L->top,
                        .global = L->global};
    char line[300];
    const char *host = banner_host(L, &sc);
    /* limits: the listener, the Listen, the client address */
    int64_t lim_all = conf_int(L->top, CONF_ESMTP_LISTENER_SESSIONS_L);
    int64_t lim_sock = conf_int(k->v, CONF_ESMTP_LISTENER_SESSIONS_LL);
    int64_t lim_peer = 0;
    if (sc.lpeer && conf_is_set(sc.lpeer, CONF_ESMTP_LISTENER_SESSIONS_P))
      lim_peer = conf_int(sc.lpeer, CONF_ESMTP_LISTENER_SESSIONS_P);
    else if (sc.gpeer && conf_is_set(sc.gpeer, CONF_ESMTP_LISTENER_SESSIONS_P))
      lim_peer = conf_int(sc.gpeer, CONF_ESMTP_LISTENER_SESSIONS_P);
    if ((lim_all > 0 && L->nsessions >= (size_t)lim_all) ||
        (lim_sock > 0 && k->sessions >= (uint32_t)lim_sock) ||
        (lim_peer > 0 && sessions_from(L, ip) >= (size_t)lim_peer)) {
      snprintf(line, sizeof(line), "421 4.7.0 %s Too many connections, try again later\r\n", host);
      reply_close(fd, line);
      continue;
    }
    if (spool_submit_pending(L->spool) > LSN_BUSY_SUBMITS) {
      snprintf(line, sizeof(line), "421 4.3.2 %s System busy, try again later\r\n", host);
      reply_close(fd, line);
      continue;
    }
    uint32_t ext = 0, mechs = 0;
    const char *bad;
    (void)ext_mask(&sc, &ext, &mechs, &bad); /* checked at start-up */
    if (!L->nusers)
      mechs = 0; /* no Auth_Password_File: nobody could log in */
    if (!L->ssl_ctx)
      ext &= ~SMTPS_EXT_STARTTLS;
    int64_t rcpts = opt_int(&sc, O3(MAX_RCPTS));
    char banner[300];
    snprintf(banner, sizeof(banner), "%s ESMTP Impetus", host);
    struct smtps_params p = {
      .hostname = host,
      .banner = banner,
      .ext = ext,
      .auth_mechs = mechs,
      /* no STARTTLS yet: AUTH over plaintext only where allowed */
      .auth_tls_only = !opt_bool(&sc, O3(ALLOW_PLAINTEXT_AUTH)),
      .strict = true,
      .limits = {.max_size = max_size(&sc),
                 .max_rcpts = rcpts > 0 ? (uint32_t)rcpts : LSN_DEFAULT_RCPTS,
                 .max_errors = (uint32_t)opt_int(&sc, O3(MAX_ERRORS))},
      .timeouts = {.command = (uint32_t)opt_interval(&sc, O3(IDLE_TIME)),
                   .data = (uint32_t)opt_interval(&sc, O3(DATA_IDLE_TIME))},
    };
    struct lsess *s = util_xcalloc(1, sizeof(*s));
    s->sm = smtps_new(&p);
    if (!s->sm) {
      free(s);
      close(fd);
      continue;
    }
    smtps_start(s->sm, now_ms()); /* the banner text is copied into the greeting now */
    s->fd = fd;
    s->L = L;
    s->ls = k;
    s->sc = sc;
    s->addr = ss;
    snprintf(s->ip, sizeof(s->ip), "%s", ip);
    s->can_relay = relay_allowed(&sc, fam, a);
    s->max_receptions = (uint32_t)opt_int(&sc, O3(MAX_RECEPTIONS));
    s->reading = true;
    s->next = L->sessions;
    if (L->sessions)
      L->sessions->prev = s;
    L->sessions = s;
    L->nsessions++;
    k->sessions++;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->ep_mask = EPOLLIN | EPOLLRDHUP;
    struct epoll_event e = {.events = s->ep_mask, .data.ptr = s};
    epoll_ctl(L->ep, EPOLL_CTL_ADD, fd, &e);
    events(s); /* the greeting */
    flush(s);
  }
}

/* ---- the thread ---- */

/* epoll data: sessions by pointer; sockets and the wake fd by tagged index
 * (a session pointer is never that small). */
static void *tagged(unsigned tag, size_t i) { return (void *)(uintptr_t)((i << 4) | tag); }

static void sweep_timeouts(struct listener *L, uint64_t now)
{
  for (struct lsess *s = L->sessions, *next; s; s = next) {
    next = s->next;
    if (!s->dead && smtps_timeout(s->sm, now))
      flush(s);
  }
}

static void take_done(struct listener *L)
{
  uint64_t v;
  ssize_t r = read(L->wake, &v, sizeof(v));
  (void)r;
  pthread_mutex_lock(&L->dlock);
  struct lsub *list = L->done_head;
  L->done_head = NULL;
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
    on_done(rev);
    rev = next;
  }
}

static void *listener_thread(void *arg)
{
  struct listener *L = arg;
  struct epoll_event evs[256];
  uint64_t next_sweep = now_ms() + 1000;
  while (!atomic_load(&L->stop)) {
    int n = epoll_wait(L->ep, evs, 256, 500);
    for (int i = 0; i < n; i++) {
      uintptr_t u = (uintptr_t)evs[i].data.ptr;
      if ((u & 15u) == TAG_SOCK && (u >> 4) < L->nsocks) {
        on_accept(L, &L->socks[u >> 4]);
      } else if ((u & 15u) == TAG_WAKE && (u >> 4) == 0) {
        take_done(L);
      } else {
        struct lsess *s = evs[i].data.ptr;
        if (s->dead)
          continue;
        if (evs[i].events & EPOLLOUT) {
          if (!flush(s))
            continue;
          if (!run_held(s))
            continue;
        }
        if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
          on_readable(s);
      }
    }
    uint64_t now = now_ms();
    if (now >= next_sweep) {
      sweep_timeouts(L, now);
      next_sweep = now + 1000;
    }
    logs_writer_flush(L->log);
  }
  return NULL;
}

int listener_start(struct listener *l)
{
  l->ep = epoll_create1(EPOLL_CLOEXEC);
  l->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (l->ep < 0 || l->wake < 0)
    return -errno;
  for (size_t i = 0; i < l->nsocks; i++) {
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = tagged(TAG_SOCK, i)};
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->socks[i].fd, &e) < 0)
      return -errno;
  }
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = tagged(TAG_WAKE, 0)};
  if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->wake, &e) < 0)
    return -errno;
  int r = pthread_create(&l->thread, NULL, listener_thread, l);
  if (r)
    return -r;
  l->running = true;
  logs_panic(l->log, (uint64_t)time(NULL) * 1000u, "esmtp_listener", "listening on %zu socket%s",
             l->nsocks, l->nsocks == 1 ? "" : "s");
  return 0;
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
    close(l->socks[i].fd);
    l->socks[i].fd = -1;
  }
  uint64_t deadline = now_ms() + LSN_STOP_DEADLINE_MS;
  for (;;) {
    bool waiting = false;
    for (struct lsess *s = l->sessions, *next; s; s = next) {
      next = s->next;
      if (s->inflight) {
        waiting = true;
        continue;
      }
      if (!s->dead) {
        char line[200];
        snprintf(line, sizeof(line), "421 4.3.2 %s Service shutting down\r\n", l->hostname);
        smtps_shutdown(s->sm, line);
        flush(s);
      }
    }
    if (!waiting || now_ms() >= deadline)
      break;
    struct epoll_event e;
    if (epoll_wait(l->ep, &e, 1, 100) > 0)
      take_done(l);
  }
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
  for (size_t i = 0; i < l->nsocks; i++) {
    free(l->socks[i].peers);
    if (l->socks[i].fd >= 0)
      close(l->socks[i].fd);
  }
  free(l->gpeers);
  for (size_t i = 0; i < l->nusers; i++) {
    free(l->users[i]);
    util_wipe(l->hashes[i], strlen(l->hashes[i]));
    free(l->hashes[i]);
  }
  free(l->users);
  free(l->hashes);
  if (l->ssl_ctx)
    SSL_CTX_free(l->ssl_ctx);
  if (l->ep >= 0)
    close(l->ep);
  if (l->wake >= 0)
    close(l->wake);
  if (l->log)
    logs_writer_free(l->log);
  pthread_mutex_destroy(&l->dlock);
  conf_unref(l->conf);
  free(l);
}

size_t listener_sessions(const struct listener *l)
{
  return l ? l->nsessions : 0;
}
