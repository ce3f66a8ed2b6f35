/* logs: the engine's event logs in Momentum's formats, so existing log
 * pipelines keep working, plus a JSON-lines log of the same events.
 *
 *   mainlog   (ec_logger mainlog)     R, D, T, P records, '@'-delimited
 *   paniclog  (ec_logger paniclog)    "ts:module: text"
 *   bouncelog (bounce_logger)         B records, '@'-delimited
 *   jsonlog   (Impetus)               one JSON object per event
 *
 * Momentum gives every recipient its own message id and ties the
 * recipients of one submission together with the batch id. Impetus keeps
 * one spool message per submission; the engine logs msgid "<id>.<n>" (n =
 * the recipient's 0-based index in the envelope) and batchid "<id>", so
 * joining R with D/T/P on msgid finds the recipient of a D line. This
 * module prints whatever ids it is given.
 *
 * Threads: each thread that logs owns one struct logs_writer and formats
 * into its own buffers (no lock, no syscall); logs_writer_flush hands the
 * batch to the writer thread through a lock-free queue, which writes
 * batches from all threads with one writev per file per round. Call
 * logs_writer_flush at the end of each event-loop iteration.
 *
 * Secrets: nothing here takes a credential. Remote text is sanitised
 * (control and non-ASCII bytes replaced, multi-line replies joined, cut at
 * LOGS_TEXT_MAX); fields inside a record lose '@' so the record cannot be
 * split wrongly. */
#pragma once

#include "panic.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOGS_TEXT_MAX 512  /* bytes of remote text kept in a record */
#define LOGS_FIELD_MAX 320 /* bytes of any other field */

struct logs_config {
  const char *mainlog;   /* NULL: not written */
  const char *paniclog;  /* NULL: not written */
  const char *bouncelog; /* NULL: not written */
  const char *jsonlog;   /* NULL: not written */
  unsigned mainlog_mode; /* modes of new files; 0 = 0644 */
  unsigned paniclog_mode;
  unsigned bouncelog_mode;
  unsigned jsonlog_mode;
  bool hires;            /* log_hires_timestamp: 16-digit microseconds */
};

struct logs;
struct logs_writer;

/* Open the files and start the writer thread. NULL on failure with a
 * reason ("path: strerror") in err. */
struct logs *logs_open(const struct logs_config *c, char *err, size_t errlen);
/* Write everything handed over, stop the writer thread, close the files.
 * Writers must have been freed first. Accepts NULL. */
void logs_close(struct logs *l);
/* Reopen every file at its path (after log rotation; SIGUSR1). Returns at
 * once; the writer thread reopens before its next write. Any thread. */
void logs_reopen(struct logs *l);
/* Reopen every file and wait until the writer has: 0, or the first
 * failure's -errno with every failed "path: reason" (joined by "; ") in
 * err; a file that cannot be reopened keeps its old descriptor. Not on a
 * worker (it waits for the writer). */
int logs_reopen_wait(struct logs *l, char *err, size_t errlen);
/* Wait until every batch handed over before this call is written. Not for
 * the hot path (tests, shutdown). */
void logs_sync(struct logs *l);
/* Records that could not be written (write errors), since start. */
uint64_t logs_dropped(struct logs *l);

/* One per logging thread. Never fails (panics on out-of-memory). */
struct logs_writer *logs_writer_new(struct logs *l);
/* Flush and free. Accepts NULL. */
void logs_writer_free(struct logs_writer *w);
/* Hand the records formatted so far to the writer thread. Cheap when
 * there are none. Also done automatically when a buffer passes 64 KiB. */
void logs_writer_flush(struct logs_writer *w);

/* One recipient of one message. Strings may be NULL (logged empty). */
struct logs_msg {
  const char *msgid;         /* per-recipient id ("<id>.<n>") */
  const char *batchid;       /* the submission's id ("<id>") */
  const char *rcpt;          /* "local@domain" */
  const char *sender;        /* "local@domain"; "" for the null sender */
  const char *binding_group; /* "" when none */
  const char *binding;       /* "default" for the default binding */
  uint64_t size;             /* message bytes */
  uint64_t received_ms;      /* wall-clock reception time */
};

/* One delivery attempt for that recipient. */
struct logs_attempt {
  const char *conn_id;   /* outbound connection id; NULL = none (empty) */
  const char *remote_ip; /* NULL when not connected */
  uint32_t retries;      /* 0 on the first attempt */
  int stage;             /* Momentum connection stage (0..22) */
  uint64_t bytes_sent;   /* for T/P: 0 = could not connect */
  const char *text;      /* remote reply or internal reason; sanitised here */
  int bounce_class;      /* for B: see logs_bounce_class */
};

/* R: the recipient was received (ingest). proto: "esmtp", "internal"... */
void logs_reception(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                    const char *src_ip, const char *proto);
/* D: delivered. */
void logs_delivery(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                   const struct logs_attempt *a);
/* T: transient failure (will be retried). */
void logs_transient(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                    const struct logs_attempt *a);
/* P: permanent failure (the recipient is final) ... */
void logs_permanent(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                    const struct logs_attempt *a);
/* ... and its B record in the bouncelog. */
void logs_bounce(struct logs_writer *w, uint64_t now_ms, const struct logs_msg *m,
                 const struct logs_attempt *a);
/* Heartbeats: "ts@@@@M" in the mainlog, "ts@@@@M1" in the bouncelog. */
void logs_heartbeat(struct logs_writer *w, uint64_t now_ms);
/* Paniclog line "ts:module: text" (text is sanitised like remote text). */
IMPETUS_PRINTF(4, 5)
void logs_panic(struct logs_writer *w, uint64_t now_ms, const char *module, const char *fmt, ...);

/* Momentum's bounce classification for a reply (code 0 when unknown;
 * enhanced "x.y.z" or NULL): 10 invalid recipient, 21 DNS failure, 22
 * mailbox full, 24 timeout (expiry), 25 admin failure, 50 mail block,
 * 51 spam block, 54 relay denied, 70 transient, 1 undetermined. */
int logs_bounce_class(int code, const char *enhanced);

/* Copy src into dst (size >= 1) as log-safe text: CR/LF runs and other
 * control bytes become one space, non-ASCII becomes '?', cut at dstlen-1.
 * When at_ok is false, '@' becomes '_' too. Returns the length. */
size_t logs_sanitise(char *dst, size_t dstlen, const char *src, bool at_ok);
