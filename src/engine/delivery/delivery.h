/* delivery.h: the private header of the delivery component
 * (src/engine/delivery/). The rest of the engine sees only
 * include/engine/worker.h (and ctl.h's console hooks); the structs below
 * are shared by these files, each owning one concern, as Postfix splits
 * its SMTP client (smtp_connect.c, smtp_proto.c, smtp_trouble.c ...):
 *
 *   worker.c    the thread: its ring, loop and inbox wake-ups, the
 *               scheduling pass over its queues, limits from the
 *               configuration snapshot, start and graceful stop
 *   handover.c  messages from the spool: binding resolution, delivery
 *               units, credentials, the posts to each unit's worker
 *   session.c   delivery sessions: one outsess (net/outsess.c, the SMTP
 *               session driver) per connection attempt; which unit goes
 *               next, pipelining slots, reuse and the connection pool
 *   route.c     where to connect: Gateway / Routes / MX through DNS,
 *               failing hosts, TLS contexts and TLS_Ifavailable_Fallback
 *   outcome.c   per-recipient results: mainlog/bouncelog records, retries
 *               and expiry, the home worker's spool state, bounces (DSN)
 *   dsn.c       the bounce message itself (RFC 3464), include/engine/dsn.h
 *
 * Threads: a worker's queues, sessions and messages are touched by that
 * worker's loop thread only; work crosses threads as posts on a ring.
 *
 * Seams for what wave 2 adds (one call each, on the loop thread):
 *   - a queue's effective options: worker.c load_limits() fills
 *     dq_queue_state.limits from the configuration (and the operator's
 *     suspensions); adaptive rules change them there for a time;
 *   - "may I open a connection / send a message": worker.c schedule()
 *     asks sched_conn_open() and session.c start_some() sched_msg_take();
 *     cluster-wide leases and tokens go beside those calls;
 *   - delivery outcomes: outcome.c outcome_finish() sees every
 *     recipient's code, enhanced code and text with its binding, domain
 *     and remote address, once, before logging them. */
#pragma once

#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "dlist.h"
#include "dq.h"
#include "ring.h"
#include "scheduler.h"
#include "smtpc.h"
#include "spool.h"
#include "worker.h"

struct auth;
struct conf;
struct conf_view;
struct dns;
struct dns_req;
struct logs_msg;
struct logs_writer;
struct outsess;
struct policy_worker;
struct tls_ctx;

#define ROUTES_MAX 16          /* route candidates tried per attempt */
#define RES_INLINE 2           /* recipients whose results live in the session itself */
#define BODY_INFLIGHT 65536u   /* body bytes queued in the conn at most */
#define TXN_WINDOW_NS 1000000000u /* dq_queue_state.txn_ns: the shortest of this long, or two */
#define RESULT_TEXT_MAX 256u   /* failure text kept for a DSN */
#define TLS_SLOTS 16           /* distinct TLS option sets per worker */
#define HOSTFAIL_MAX 256       /* remote addresses remembered as failing */
#define ADAPTIVE_WAIT_NS 50000000u /* a queue at its MX host's connection cap asks again after */

/* Engine state of one message; lives in spool_msg->user. Changed only by
 * the message's home worker (units_left, bounces, retry record). */
struct emsg {
  struct dlist_node link; /* home worker's list (for exit clean-up) */
  struct spool_msg *sm;
  unsigned home;
  uint32_t units_left;
  uint32_t units;         /* at submission: 1 means only the home worker reads sm */
  uint64_t next_retry_ms; /* earliest retry of its deferred units */
  uint32_t attempts;
  char id[SPOOL_ID_LEN + 1];
  uint32_t nbounce;
  struct bounce {
    uint32_t idx;
    int code;
    char enh[16];
    char text[RESULT_TEXT_MAX];
  } *bounce;
  bool bounces_on;
};

/* Outcomes of one unit's attempt, sent to the home worker. */
struct uresult {
  struct emsg *em;
  bool unit_done;       /* no recipient of the unit left pending */
  uint32_t attempts;
  uint64_t next_ms;     /* when unit_done is false */
  uint32_t n;
  struct rres {
    uint32_t idx;
    uint8_t state;      /* enum spool_rcpt_state */
    int code;
    char enh[16];
    char text[RESULT_TEXT_MAX];
  } r[];
};

struct route {
  struct sockaddr_storage sa;
  socklen_t salen;
  bool implicit_tls; /* smtps://: TLS handshake right after connect */
  char ip[64];
  char host[256];
};

/* One delivery connection of a queue: its route candidates, the outsess
 * of the current attempt, and the transactions in flight on it. */
struct session {
  struct worker *w;
  struct dq_queue *q;
  struct outsess *os;           /* the current attempt; NULL while resolving or after closed */
  /* Pipelining across transactions (RFC 2920 after a dot; RFC 3030 BDAT
   * up to Pipeline_Depth deep): the transactions in flight, each in its
   * own result slot: slots 0 and 1 live in the session (res_inline,
   * fin_buf), deeper ones in `deep`, allocated when a session first goes
   * deeper than two; a unit of more than RES_INLINE recipients uses
   * res_big[slot] (max_batch results, allocated at its first use): most
   * sessions need neither, and thousands of idle sessions stay small. */
  struct flight {
    struct dq_unit *u;          /* NULL: slot free */
    struct smtpc_txn txn;       /* outsess and smtpc read it until txn_done */
    uint64_t start_ns;          /* ring time it was handed to outsess (dq_queue_state.txn_ns) */
  } fl[SMTPC_PIPE_MAX];
  struct smtpc_result res_inline[2][RES_INLINE];
  struct smtpc_result fin_buf[2];
  struct smtpc_result *deep; /* (SMTPC_PIPE_MAX - 2) x (RES_INLINE + 1) */
  struct smtpc_result *res_big[SMTPC_PIPE_MAX];
  uint32_t max_batch;
  const char **rcpts;           /* max_batch pointers */
  uint32_t delivered;           /* successful transactions */
  uint32_t rcpts_tried;         /* RCPTs sent (Max_Recipients_Per_Connection) */
  uint64_t pool_key;
  bool parked, closing, connected, counted;
  bool ever_ready; /* reached READY once (no longer counted as opening) */
  uint64_t connect_ns; /* ring time its current connection attempt began */
  int body_fd;     /* the spool file of the body being sent, or -1 */
  uint64_t bytes_prev, bytes_seen; /* bytes sent by earlier attempts / this one at its failure */
  char conn_id_s[32];
  struct route routes[ROUTES_MAX];
  unsigned nroutes, route_i;
  struct dns_req *dns;
  struct tls_ctx *tls;          /* for STARTTLS; NULL: TLS cannot be used */
  bool retry_plain;  /* the STARTTLS handshake failed: reconnect without it */
  bool plain_only;   /* this connection skips STARTTLS (TLS_Ifavailable_Fallback) */
  char detail[160];  /* why the handshake or the connect failed, for the log */
  bool charged;      /* this connection attempt already gave a unit its T */
  uint32_t adaptive_slot[2]; /* MX host / provider connection slots it holds */
  struct sched_leases leases; /* cluster leases held for this connection */
  bool shedding;     /* over the node's cluster share: closes instead of taking more */
  struct dlist_node link; /* worker's session list */
};

struct worker {
  struct engine_shared *sh;
  unsigned idx;
  pthread_t thread;
  struct ring *ring;
  struct dns *dns;
  struct tls_slot {
    char *key;               /* the TLS options that built it */
    struct tls_ctx *ctx;     /* NULL: could not be built (logged once) */
  } tls[TLS_SLOTS];
  unsigned ntls;
  struct hostfail {
    char key[80];            /* "ip port" */
    uint64_t until_ms;       /* wall clock */
  } hostfail[HOSTFAIL_MAX],
    tlsfail[HOSTFAIL_MAX];   /* STARTTLS failed here: plaintext until then */
  unsigned nhostfail, ntlsfail;
  struct dq *dq;
  struct logs_writer *log;
  struct spool_txn *txn;
  bool txn_dirty;
  struct conf *conf;
  uint64_t conf_gen;
  struct auth *auth;        /* outbound_smtp_auth credentials (auth.c) */
  struct policy_worker *pw; /* this worker's Lua state (policy.c) */
  struct dlist msgs;       /* messages this worker is home for (emsg.link) */
  struct dlist sessions;   /* its sessions (session.link) */
  unsigned nsessions;
  unsigned fd_cap;         /* sessions this worker may hold (RLIMIT_NOFILE share) */
  bool fd_cap_logged;
  uint64_t next_conn;
  atomic_bool stop;
  atomic_bool stop_posted; /* worker_stop's wake-up post has returned */
  bool idle_counted;
  _Atomic uint64_t stop_deadline_ms;
  sem_t started;
  int start_err;
  char start_text[256];
};


/* Copy a string, cut to fit (never fails); worker.c. */
void delivery_copy(char *d, size_t n, const char *s);

static inline const char *delivery_rcpt_domain(const char *addr)
{
  const char *at = strrchr(addr, '@');
  return at ? at + 1 : addr;
}

/* ---- worker.c: the worker's view of the configuration (loop thread) ---- */

/* Take up a newer configuration snapshot between events. */
void worker_refresh_conf(struct worker *w);
/* The effective options for (binding, domain); never NULL. */
const struct conf_view *worker_view(struct worker *w, const char *binding, const char *domain);
/* The connection-pool key of q (route + binding + credential identity). */
uint64_t worker_queue_key(struct dq_queue *q);
struct sched_retry worker_retry_policy(struct worker *w, struct dq_queue *q);
/* Host "mx" { Cluster_Max_Outbound_Connections }: the fleet-wide cap of
 * connections to that MX host, NULL when none (or no cluster). */
struct cluster_cap *worker_cluster_host_cap(struct worker *w, const char *mx_host);
/* A cluster cap that spans queues (a server's, an MX host's, a domain's
 * shared by bindings) refused a connection of q while all its leases here
 * are in use: a parked idle connection of another queue holding one closes
 * (else q would wait for its Idle_Timeout). Whether one did. */
bool worker_quit_idle_holder(struct worker *w, struct dq_queue *q, struct cluster_cap *cap);

/* ---- handover.c ---- */

/* A deferred unit goes back to a queue (its credentials resolved again). */
void handover_requeue(struct worker *w, struct dq_queue *q, struct dq_unit *u);
/* Free a unit post still waiting for its credentials (at exit). */
void handover_drop_post(void *arg);

/* ---- session.c ---- */

/* A new connection for queue q; it takes units from the queue once READY. */
void session_open(struct worker *w, struct dq_queue *q, const struct sched_leases *leases);
/* An idle pooled session was taken for its queue: start a unit, or park
 * it again (s->parked) or QUIT it. */
void session_begin_next(struct session *s);
/* QUIT an idle pooled connection (to free its fd, or at stop). */
void session_quit_parked(struct session *s);
/* End the connection now (no QUIT); its `closed` callback frees s. */
void session_close(struct session *s);
/* Free a session that has no connection (still resolving its route). */
void session_free(struct session *s);

/* ---- route.c ---- */

/* Routes resolved: fail NULL and s->routes[0..nroutes) ordered (failing
 * hosts last); else fail is the reason (perm: a permanent DNS answer). */
typedef void route_done_fn(struct session *s, const char *fail, bool perm);
/* Resolve the route candidates of s's queue (Gateway, Routes, MX) into
 * s->routes; `done` is called from a DNS callback (or at once). */
void route_resolve(struct session *s, route_done_fn *done);
uint16_t route_port(const struct route *r);
/* Host_Failure_Retry: remember that connecting to r failed. */
void route_host_failed(struct session *s, const struct route *r);
/* STARTTLS to r failed within TLS_Failure_Retry (plaintext meanwhile). */
bool route_tls_failed_lately(struct worker *w, const struct route *r);
/* TLS_Ifavailable_Fallback applies to s's failed handshake: logged and
 * remembered; the caller reconnects without STARTTLS. */
bool route_tls_fallback(struct session *s);
/* The TLS context for a view's TLS options; NULL when it cannot be built
 * (logged once). */
struct tls_ctx *route_tls_ctx(struct worker *w, const struct conf_view *v);

/* ---- outcome.c ---- */

/* Finish a unit's attempt: results[i] per recipient (NULL: every
 * recipient gets `all`). Logs, re-queues or fails, reports to the home worker. */
void outcome_finish(struct worker *w, struct dq_queue *q, struct dq_unit *u,
                    const struct smtpc_result *results, const struct smtpc_result *all,
                    const char *conn_id, const char *remote_ip, uint64_t bytes);
/* u came due past its message's expiry: failed (true), else false. */
bool outcome_expire_if_due(struct worker *w, struct dq_queue *q, struct dq_unit *u);
/* The mainlog identity of recipient idx of em. */
void outcome_logs_msg(struct logs_msg *m, char *msgid, size_t cap, const struct emsg *em,
                      uint32_t idx);
