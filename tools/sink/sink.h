/* sink.h: shared state of impetus-sink, the SMTP peer for tests and
 * benchmarks. Three modules share it, all on the one thread of the process:
 *   sink_main.c  options, counters, JSON summary, per-message records;
 *   sink_io.c    the io_uring loop: listeners, connections, TLS, timers;
 *   sink_smtp.c  drives the SMTP server core (src/smtp/smtps.c) for one
 *                connection: answers its events (fault injection, AUTH
 *                users, message records) and asks sink_io for effects.
 * The sink is single-threaded by design: one ring, no locks. */
#pragma once

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <openssl/ssl.h>

#include "buf.h"
#include "smtps.h"

/* Named limits on what a client controls. */
#define SINK_MAX_LINE 16384          /* command or AUTH response line */
#define SINK_MAX_RCPTS_DEFAULT 1000  /* recipients per transaction */
#define SINK_MAX_SIZE_DEFAULT (50u * 1024 * 1024) /* SIZE advertised and enforced */
#define SINK_MAX_OUTBUF (8u * 1024 * 1024) /* unsent replies before we drop a client */
#define SINK_PAUSED_INBUF (1u << 20) /* input held during a delay before receiving stops */
#define SINK_MAX_ADDR 512            /* envelope address kept for records */
#define SINK_ENDLESS_BYTES (64ull * 1024 * 1024) /* hostile endless-line cap */
#define SINK_CONTINUATIONS 10000     /* hostile continuation lines */

/* Commands and stages; used to index latency, failure and hostile tables.
 * CMD_CONNECT is the greeting, CMD_DOT the end of DATA and the reply to
 * BDAT LAST, CMD_BDAT the reply to a BDAT chunk that is not the last. */
enum sink_cmd {
  CMD_CONNECT = SMTPS_CMD_CONNECT, CMD_EHLO = SMTPS_CMD_EHLO, CMD_HELO = SMTPS_CMD_HELO,
  CMD_STARTTLS = SMTPS_CMD_STARTTLS, CMD_AUTH = SMTPS_CMD_AUTH, CMD_MAIL = SMTPS_CMD_MAIL,
  CMD_RCPT = SMTPS_CMD_RCPT, CMD_DATA = SMTPS_CMD_DATA, CMD_DOT = SMTPS_CMD_DOT,
  CMD_BDAT = SMTPS_CMD_BDAT, CMD_RSET = SMTPS_CMD_RSET, CMD_NOOP = SMTPS_CMD_NOOP,
  CMD_QUIT = SMTPS_CMD_QUIT, CMD_VRFY = SMTPS_CMD_VRFY, CMD_OTHER = SMTPS_CMD_OTHER,
  CMD__COUNT = SMTPS_CMD_COUNT
};
#define sink_cmd_names smtps_cmd_names
/* Map a name (case-insensitive, e.g. "rcpt", "dot", "connect") to a command; -1 if unknown. */
int sink_cmd_lookup(const char *name);

enum sink_hostile {
  HOSTILE_NONE, HOSTILE_GARBAGE, HOSTILE_ENDLESS, HOSTILE_CONTINUATIONS,
  HOSTILE_SPLIT, HOSTILE_DRIP, HOSTILE_UNSOLICITED, HOSTILE_RESET_MID_DATA,
  HOSTILE_TLS_GARBAGE, /* STARTTLS answered 220, then bytes that are not TLS */
  HOSTILE__COUNT
};
extern const char *const sink_hostile_names[HOSTILE__COUNT];

enum { AUTH_PLAIN = SMTPS_AUTH_PLAIN, AUTH_LOGIN = SMTPS_AUTH_LOGIN, AUTH_XOAUTH2 = SMTPS_AUTH_XOAUTH2 };

struct sink_user {
  char *name;
  char *pass;
  struct sink_counter *msgs; /* per_user counter */
};

struct sink_fail {
  int code;     /* 4 or 5 for a class ("4xx"), or an exact code 400..599 */
  double ratio; /* 0..1 */
};

struct sink_opts {
  const char *hostname;
  const char *cert, *key;
  const char *save_dir, *jsonl, *ready_file;
  struct sink_user *users;
  size_t nusers;
  int auth_mechs; /* AUTH_* bits offered */
  int require_auth, require_tls_for_auth, no_starttls, no_pipelining, no_chunking, io_fallback;
  uint32_t max_connections; /* 0: unlimited */
  uint64_t max_size;
  uint32_t max_rcpts;
  uint32_t latency_ms[CMD__COUNT]; /* CMD_CONNECT: greeting delay */
  struct sink_fail fail[CMD__COUNT];
  uint64_t seed;
  int disconnect_at; /* -1 or enum sink_cmd */
  int hostile;       /* enum sink_hostile */
  int hostile_stage; /* enum sink_cmd */
  uint32_t drip_ms;
  double stats_interval;
  uint32_t batch_wait_us; /* see --batch-wait; 0: wake for every completion */
};

/* A named counter in a small chained table (pointers stay valid). */
struct sink_counter {
  struct sink_counter *next;
  uint64_t messages;
  uint64_t connections;
  char key[];
};
struct sink_table {
  struct sink_counter *head[64];
};
/* Find or create the counter for key; never fails (panics on OOM). */
struct sink_counter *sink_table_get(struct sink_table *t, const char *key);

struct sink_stats {
  uint64_t messages, recipients, bytes;
  uint64_t connections, rejected_connections, max_concurrent, concurrent;
  uint64_t tls_connections, tls_resumed, auth_ok, auth_failed, messages_rejected;
  uint64_t bdat_messages, bdat_chunks; /* accepted messages sent with BDAT; BDAT commands */
  uint64_t fail_injected[CMD__COUNT];
  uint64_t delayed[CMD__COUNT];
  uint64_t disconnect_injected[CMD__COUNT];
  uint64_t hostile_injected[HOSTILE__COUNT];
  struct sink_table per_user, per_source, per_local, per_mech;
};

enum conn_state {
  ST_GREETING, /* before the greeting (delay, TLS handshake on implicit TLS) */
  ST_CMD,      /* the session runs (the core has the protocol state) */
  ST_QUIT,     /* after QUIT, 421 or a fatal error: input ignored */
};

/* One client connection. Idle connections hold no large buffers: `in`
 * is used only while a reply is held (a delay), `msg` only with
 * --save-dir, the TLS objects only after STARTTLS or on a TLS listener. */
struct sink_conn {
  uint32_t slot, gen;
  int fd;
  uint32_t inflight;          /* ring operations not yet completed */
  uint8_t state;
  unsigned recv_armed : 1, send_inflight : 1, closing : 1, close_after_send : 1,
      reset_on_close : 1, paused : 1, delay_done : 1, tls_active : 1, tls_listener : 1,
      rejected : 1, dead : 1, rearm_pending : 1,
      ev_held : 1,               /* ev is a reply held by a delay (sink_smtp.c) */
      tls_garbage : 1,           /* --hostile tls-garbage: answer the next input with it */
      recv_stopping : 1;         /* recv cancelled while a delay holds SINK_PAUSED_INBUF */
  uint8_t bytewise;           /* 0, HOSTILE_SPLIT or HOSTILE_DRIP */
  uint32_t nrcpt;             /* recipients accepted in the open transaction */
  uint64_t msg_bytes;         /* size of the message being recorded */
  uint64_t endless_left;      /* hostile endless-line bytes still to send */
  struct smtps *sm;           /* the protocol (src/smtp/smtps.c) */
  struct smtps_event ev;      /* the reply being decided (held during a delay) */
  struct buf in;              /* input the core could not take yet (reply held) */
  struct buf wire;            /* bytes ready to send (plain or TLS records) */
  struct buf sending;         /* bytes handed to the kernel (immutable while in flight) */
  struct buf pt;              /* plaintext replies waiting for SSL_write */
  struct buf env;             /* envelope of the open transaction (records only) */
  struct buf msg;             /* message body (--save-dir only) */
  uint8_t *rbuf;              /* fallback recv buffer (no provided buffers) */
  SSL *ssl;                   /* its BIO (sink_io.c) reads tin/held, writes into wire */
  const uint8_t *tin;         /* ciphertext being fed (valid during one tls_input) */
  size_t tinlen;
  struct buf held;            /* ciphertext OpenSSL left unread, kept for the next input */
  const struct sink_user *user;
  const char *mech;
  struct sink_counter *src_ctr, *local_ctr;
  char peer[64], local[64];   /* "ip:port" */
  struct sink_conn *rearm_next;
};

struct sink {
  struct sink_opts o;
  struct sink_stats st;
  SSL_CTX *ssl_ctx;
  FILE *jsonl;
  int jsonl_dirty;
  uint64_t msg_seq;
  uint64_t rng;
  uint64_t start_ns;
  char greeting[300];
  size_t greeting_len;
};
extern struct sink g_sink;

/* sink_main.c */
/* Deterministic PRNG draw in [0,1). */
double sink_rand(void);
/* Record one accepted message (counters, JSONL, --save-dir); returns the queue id. */
uint64_t sink_record_message(struct sink_conn *c);
/* Print the JSON summary to stream f. */
void sink_print_summary(FILE *f);
/* Print the running count line to stderr. */
void sink_print_stats_line(void);

/* sink_io.c */
/* Run the server until SIGTERM/SIGINT; returns 0, or exits on start-up failure. */
int sink_io_run(char **listen, size_t nlisten, char **tls_listen, size_t ntls);
/* Queue reply bytes (plaintext) on the connection. */
void sink_conn_reply(struct sink_conn *c, const void *p, size_t n);
/* Stop processing input and call sink_smtp_resume after ms milliseconds. */
void sink_conn_pause(struct sink_conn *c, uint32_t ms);
/* Send what is queued, then close. */
void sink_conn_close_after_send(struct sink_conn *c);
/* Close now; with reset, the peer gets a TCP RST. */
void sink_conn_close(struct sink_conn *c, int reset);
/* Switch the connection to TLS after the 220 reply to STARTTLS; 0 or -errno. */
int sink_conn_start_tls(struct sink_conn *c);
/* Start the hostile endless line (then close). */
void sink_conn_start_endless(struct sink_conn *c);

/* sink_smtp.c */
/* A connection was accepted (or its implicit TLS handshake finished): greet. */
void sink_smtp_start(struct sink_conn *c);
/* Feed plaintext input (already decrypted). */
void sink_smtp_feed(struct sink_conn *c, const uint8_t *p, size_t n);
/* A pause set with sink_conn_pause has elapsed. */
void sink_smtp_resume(struct sink_conn *c);
/* Reset per-session state after a TLS handshake (RFC 3207: forget EHLO). */
void sink_smtp_tls_ready(struct sink_conn *c);
/* Free the connection's protocol state (its core). */
void sink_smtp_done(struct sink_conn *c);
/* --hostile tls-garbage: answer the client's first handshake bytes (after
 * the 220 to STARTTLS, or on an implicit-TLS listener) with bytes that are
 * not TLS, then close. */
void sink_hostile_tls_garbage(struct sink_conn *c);
