/* listener_int.h: what the listener's files share (private to them).
 *  listener.c        the thread: epoll, accept, socket and TLS I/O, stop;
 *  listener_conf.c   configuration: generations, scopes, Peer CIDRs, Listen
 *                    sockets (open, reload), AUTH password file;
 *  listener_smtp.c   a session's SMTP events: commands, relaying, AUTH, the
 *                    message handed to the spool and its deferred reply;
 *  listener_proxy.c  the HAProxy PROXY header (v1 text, v2 binary);
 *  listener_lua.c    Momentum's inbound hooks on the listener's Lua state.
 * Everything here runs on the listener thread unless a comment says so. */
#pragma once

#include "buf.h"
#include "conf.h"
#include "smtps.h"

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct logs_writer;
struct policy;
struct policy_worker;
struct spool;

#define LSN_MAX_SOCKS 64          /* named limit: Listen stanzas */
#define LSN_MAX_PEERS 1024        /* named limit: Peer stanzas */
#define LSN_READ 65536            /* one read */
#define LSN_IN_MAX (256u * 1024)  /* input held while a reply is due, before reading stops */
#define LSN_BUSY_SUBMITS 10000    /* submissions waiting for a commit before new sessions get 421 */
#define LSN_STOP_DEADLINE_MS 10000
#define LSN_DEFAULT_SIZE (50ull * 1024 * 1024)
#define LSN_DEFAULT_RCPTS 10000u

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

/* What epoll's data.ptr points at starts with one of these. */
enum lsn_kind { LSN_K_SOCK = 1, LSN_K_SESS, LSN_K_WAKE };

/* One configuration the listener runs: the snapshot and what was parsed
 * from it. Sessions keep the generation they started under (their scope
 * views point into its conf) until they end; a reload makes a new one. */
struct lgen {
  unsigned refs;
  struct conf *conf;
  const struct conf_view *top, *global;
  struct cidr *gpeers; /* the listener's Peer stanzas */
  size_t ngpeers;
};

/* One Listen socket. Lives while open or while a session of it lives. */
struct lsock {
  enum lsn_kind kind;
  int fd;
  unsigned refs; /* 1 while open + one per session */
  char name[80];
  struct lgen *gen;          /* referenced: the generation v and peers are of */
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
  enum lsn_kind kind;
  int fd;
  struct listener *L;
  struct lsock *ls;
  struct lgen *gen;
  struct smtps *sm;  /* NULL while a PROXY header is awaited */
  struct scopes sc;
  struct sockaddr_storage addr; /* the client (after a PROXY header: the proxied one) */
  char ip[INET6_ADDRSTRLEN];
  char helo[256];
  bool can_relay, reading, dead;
  bool pp_wait;         /* Proxy_Protocol: the header has not come yet */
  uint64_t pp_deadline; /* ms; 0 = none */
  uint32_t ep_mask;  /* the events epoll has for fd (a change costs a system call) */
  SSL *ssl;          /* after STARTTLS: memory BIOs rb (in) and wb (out) */
  BIO *rb, *wb;
  struct buf cout;   /* TLS records not yet sent */
  uint32_t inflight; /* messages submitted whose commit has not reported */
  uint32_t receptions, max_receptions;
  uint32_t nrcpt;
  struct buf in;   /* input the core has not taken (a reply is due) */
  struct buf env;  /* envelope lines of the open transaction */
  struct buf msg;  /* the message being received, after its head (message_head) */
  size_t body_off; /* where the message starts in msg */
  bool prefixed;   /* msg holds the head */
  char *from;
  char auth_user[128];
  struct lctx *ctx;  /* Lua hooks: the connection and message contexts (NULL: no hooks) */
  struct lsess *prev, *next; /* all sessions */
  struct lsess *kick_next;   /* L->kicked: replies resolved, to send */
  bool kicked;
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

/* A function a datasource thread asks to run on the listener thread. */
struct lpost {
  void (*fn)(void *);
  void *arg;
  struct lpost *next;
};

struct listener {
  struct spool *spool;
  struct logs_writer *log;
  const char *hostname;
  int ep;
  struct {
    enum lsn_kind kind;
    int fd;
  } wake;
  struct lgen *gen; /* the current configuration */
  struct lsock *socks[LSN_MAX_SOCKS];
  size_t nsocks;
  struct lsess *sessions;
  size_t nsessions;
  struct lsess *kicked; /* sessions with replies resolved and not yet sent */
  pthread_t thread;
  bool running;
  atomic_bool stop;
  pthread_mutex_t dlock; /* done_head, posts, reload_conf */
  struct lsub *done_head;
  struct lpost *posts;
  struct conf *reload_conf; /* set by listener_reload, taken by the thread */
  SSL_CTX *ssl_ctx; /* TLS_Certificate / TLS_Key: STARTTLS offered */
  /* Auth_Password_File: "user:hash" lines, split at the colon */
  char **users, **hashes;
  size_t nusers;
  /* Lua (listener_lua.c): the listener thread's state, or NULL */
  struct policy *policy;
  struct policy_worker *pw;
  unsigned counters_slot; /* the listener thread's counters slot (Lua hooks) */
  bool lua_auth; /* AuthLoginParameters / AuthPlainParameters uri = "ac_auth://" */
};

/* ---- listener.c ---- */
uint64_t lsn_now_ms(void);
/* Send the core's replies (through TLS once it runs); false when the
 * session is gone. */
bool lsn_flush(struct lsess *s);
/* Close the socket; the session is freed now, or when its commit reports. */
void lsn_close(struct lsess *s);
/* Feed input held while a reply was due; false when the session is gone. */
bool lsn_run_held(struct lsess *s);
/* Wake the thread (any thread). */
void lsn_wake(struct listener *L);

/* ---- listener_conf.c ---- */
int lsn_parse_cidr(const char *s, struct cidr *c);
bool lsn_cidr_match(const struct cidr *c, int fam, const uint8_t *a);
/* The client's address as (family, bytes); a v4-mapped v6 address is v4. */
int lsn_addr_bytes(const struct sockaddr_storage *ss, uint8_t *a);
/* The scopes of a client of socket k, under generation g. */
struct scopes lsn_scopes(const struct lgen *g, const struct lsock *k, int fam, const uint8_t *a);
int64_t lsn_opt_int(const struct scopes *s, struct opt3 o);
int64_t lsn_opt_interval(const struct scopes *s, struct opt3 o);
bool lsn_opt_bool(const struct scopes *s, struct opt3 o);
/* Relaying allowed for this client: Open_Relay, or its address in the
 * most specific Relay_Hosts (the listener's scopes, then global). */
bool lsn_relay_allowed(const struct scopes *s, int fam, const uint8_t *a);
/* SMTP_Extensions -> SMTPS_EXT_* and SMTPS_AUTH_*; -EINVAL names the bad
 * word in bad. */
int lsn_ext_mask(const struct scopes *s, uint32_t *mask, uint32_t *mechs, const char **bad);
uint64_t lsn_max_size(const struct scopes *s);
const char *lsn_banner_host(const struct listener *L, const struct scopes *s);
/* Whether user/pass match a line of Auth_Password_File (crypt(3)). */
bool lsn_auth_file_ok(const struct listener *L, const char *u, size_t ul, const char *p,
                      size_t pl);
/* Parse c's ESMTP_Listener into L: a new generation and the sockets (new
 * Listen stanzas opened, removed ones closed, kept ones keep their fd).
 * start: the first time (TLS, password file, errors fatal). 0, or -1 with
 * err set (the listener is then unchanged on a reload). */
int lsn_conf_apply(struct listener *L, struct conf *c, bool start, char *err, size_t errlen);
void lsn_gen_unref(struct lgen *g);
void lsn_sock_unref(struct lsock *k);
void lsn_conf_free(struct listener *L);

/* ---- listener_smtp.c ---- */
/* Act on the core's events; returns how many there were. */
int lsn_events(struct lsess *s);
/* The command passed every check: record it and send the default reply. */
void lsn_command_commit(struct lsess *s, const struct smtps_event *ev);
/* Answer an AUTH: ok 1 accepted, 0 refused (text: a "5xx text" reply
 * or empty for the default 535), -1 a temporary failure (454). */
void lsn_auth_answer(struct lsess *s, const struct smtps_event *ev, int ok, const char *text);
/* A submission reported (listener thread, from the done list): its reply
 * is resolved; the session is queued on L->kicked for lsn_kick_all. */
void lsn_on_done(struct lsub *u);
/* Send the replies resolved by lsn_on_done and read on: one flush per
 * session for a whole commit's completions. */
void lsn_kick_all(struct listener *L);
/* The spool's completion callback (a spool thread). */
void lsn_on_submitted(void *arg, int result, const char *id, const char *why);
/* The SMTP part of a new session (after any PROXY header): limits, the
 * core, the greeting. Returns false when the session was refused (it is
 * then closed). */
bool lsn_session_begin(struct lsess *s);

/* ---- listener_proxy.c ---- */
/* Input on a session waiting for its header: false when it is gone. */
bool lsn_proxy_input(struct lsess *s, const uint8_t *p, size_t n);

/* ---- listener_lua.c ---- */
/* Make the listener thread's Lua state (on that thread). */
void lsn_lua_start(struct listener *L);
void lsn_lua_stop(struct listener *L);
/* Between events: reloaded scripts. */
void lsn_lua_refresh(struct listener *L);
/* Run a function posted by a datasource thread. */
void lsn_lua_posts(struct listener *L);
/* Free a session's Lua contexts. */
void lsn_lua_sess_done(struct lsess *s);
/* The command hooks (validate_connect for the greeting, validate_ehlo /
 * _mailfrom / _rcptto): 0 = go on (nothing answered: the caller commits
 * the command), 1 = answered now or later (a hook waiting for a
 * datasource commits or refuses the command when it finishes). */
int lsn_lua_command(struct lsess *s, const struct smtps_event *ev);
/* ac_auth_perform_auth: 1 ok, 0 refused (text may carry the hook's
 * "code text" reply), -1 error, 2 pending (lsn_auth_answer runs later). */
int lsn_lua_auth(struct lsess *s, const struct smtps_event *ev, char *text, size_t textlen);
/* The message context set by hooks, as x-context lines into f. */
void lsn_lua_message_ctx(struct lsess *s, struct buf *f);
/* Whether a script has any listener hook (cheap). */
bool lsn_lua_active(const struct listener *L);
/* EHLO: when a hook changed this session's capabilities
 * (ac:esmtp_capability_add/remove), answer the EHLO with the changed
 * reply and return true; false: nothing changed (the caller accepts). */
bool lsn_lua_ehlo_answer(struct lsess *s, const struct smtps_event *ev);
