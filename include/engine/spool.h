/* spool: the pickup directory and the durable queue under <spoolbase>.
 *
 *   <spoolbase>/pickup/            producers rename files in (names starting
 *                                  with '.' or ending in ".tmp" are ignored)
 *   <spoolbase>/queue/journal/     segments: every new message is appended
 *                                  here in group-committed batches (its
 *                                  metadata, body and dictionaries); the
 *                                  pickup file is removed after the sync
 *   <spoolbase>/queue/XX/<id>      a message spilled out of the journal to
 *                                  wait for a retry: its body (body_off 0)
 *   <spoolbase>/queue/XX/<id>.m    its metadata log: a checksummed header
 *                                  record, then appended state/ctx records
 *   <spoolbase>/bad/<name>         rejected input, with <name>.why
 * XX = two hex digits (256 buckets; consecutive messages share a bucket).
 * Files are created 0600, directories 0700. See docs/spool.md.
 *
 * Message ids: 64 bits = 42 bits of wall-clock milliseconds since the epoch
 * (good until 2109) << 22 | a 22-bit counter within that millisecond, plus
 * 16 node bits (spool_params.node_id, default the low bits of the pid).
 * Printed as "%016llx-%04x" (21 characters, SPOOL_ID_LEN): sorting the text
 * sorts by time. Never reused across restarts: the clock part never goes
 * below the newest id found at recovery.
 *
 * Threads: one ingest thread runs spool_ingest (or the thread spool_start
 * owns). A spool_msg has one owner thread at a time (the engine hands it
 * over; nothing here locks a message). spool_txn is per thread. spool_*
 * functions that touch disk block (a few syscalls, plus fsync when
 * committing); call them from a thread that may block.
 */
#pragma once

#include "ctx.h"
#include "histo.h"
#include "msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPOOL_ID_LEN 21
/* Named limits of the pickup format (msg.h owns the format). */
#define SPOOL_ADDR_MAX MSG_ADDR_MAX
#define SPOOL_NAME_MAX MSG_NAME_MAX
#define SPOOL_RCPTS_MAX MSG_RCPTS_MAX
#define SPOOL_DEFAULT_MAX_MESSAGE_SIZE MSG_DEFAULT_MAX_SIZE

enum spool_sync {
  SPOOL_SYNC_BATCH = 0, /* default: one sync pass per ingest batch / txn commit */
  SPOOL_SYNC_ALWAYS,    /* fsync each message (files + directories) before the next */
  SPOOL_SYNC_NONE,      /* no fsync: a power loss may lose or corrupt recent messages */
};

/* How Spool_Sync = batch makes a batch durable (docs/spool.md has figures). */
enum spool_sync_method {
  SPOOL_SYNCM_DEFAULT = 0, /* the journal: fdatasync of the segment; spilled files: syncfs */
  SPOOL_SYNCM_SYNCFS,      /* one syncfs() of the spool's file system */
  SPOOL_SYNCM_FSYNC,       /* fsync / fdatasync of every file written (and new directories' entries) */
};

enum spool_rcpt_state {
  SPOOL_RCPT_PENDING = 0,
  SPOOL_RCPT_DELIVERED = 1,
  SPOOL_RCPT_FAILED = 2, /* permanent failure (bounced / expired) */
};

#define SPOOL_MSG_F_8BIT MSG_F_8BIT /* the message (or an address) has bytes >= 0x80 */

/* One queued message. The spool allocates it; the engine owns it after the
 * callback hands it over and frees it with spool_msg_free (or through
 * spool_txn_remove). Fields are read-only for the engine except `user`;
 * change them through the functions below. Resident size: about 150 bytes +
 * the addresses (the dictionaries are on disk unless kept in memory). */
struct spool_msg {
  uint64_t id;          /* time << 22 | counter */
  uint16_t node;        /* node bits of the id */
  uint8_t bucket;       /* queue/XX/ */
  uint8_t flags;        /* SPOOL_MSG_F_* */
  uint32_t nrcpt;       /* recipients */
  uint32_t npending;    /* recipients still SPOOL_RCPT_PENDING */
  uint32_t attempts;    /* delivery attempts so far */
  uint64_t next_attempt_ms; /* wall-clock ms; 0 = now */
  uint64_t created_ms;  /* wall-clock ms of ingest */
  uint64_t body_off;    /* offset of the RFC 5322 message in the queue file or segment */
  uint64_t body_size;   /* its length in bytes */
  uint32_t meta_size;   /* bytes in <id>.m (append offset) */
  uint32_t ctx_off;     /* where the current serialised dictionaries are in <id>.m */
  uint32_t ctx_len;
  uint32_t jseg;        /* journal segment holding body and dictionaries; 0: own files */
  const char *sender;   /* "" for the null sender <> */
  const char *binding;  /* NULL when none */
  const char *binding_group; /* NULL when none */
  const char **rcpt;    /* nrcpt addresses (no <>), in pickup order */
  uint8_t *rcpt_state;  /* nrcpt enum spool_rcpt_state */
  struct ctx *mess;     /* VCTX_MESS: NULL while dropped (spool_load_ctx) */
  struct ctx *conn;     /* VCTX_CONN: NULL while dropped */
  struct ctx *secrets;  /* secret entries kept while dicts are dropped (internal) */
  bool mess_empty;      /* VCTX_MESS had no entry when the dictionaries were dropped
                         * (in memory only: the reader may skip loading them) */
  const uint8_t *body_mem; /* the message (body_size bytes) kept in memory since ingest,
                            * or NULL: read it through spool_open_body */
  void *user;           /* the engine's */
};

struct spool;

/* Called on the ingest thread for each message once it is durable (per
 * Spool_Sync); the engine owns msg from then on. */
typedef void (*spool_msg_cb)(void *arg, struct spool_msg *msg);
/* Called when input is rejected: name is the pickup file name (or the
 * message id during recovery), reason a one-line text; the file and a
 * <name>.why are in bad/. The engine logs it to the paniclog. */
typedef void (*spool_bad_cb)(void *arg, const char *name, const char *reason);
/* Optional ingest hook (Lua validate_data_spool / set_binding), called on
 * the ingest thread after parsing and before the metadata is written; may
 * change the binding and dictionaries. Return 0 to accept, or < 0 with a
 * reason in reason[0..reason_len) to reject to bad/. */
typedef int (*spool_ingest_cb)(void *arg, struct spool_msg *msg, char *reason, size_t reason_len);
/* Optional signer (DKIM), called on the ingest thread after the ingest
 * hook with the message as it will be stored (msg[0..len), envelope lines
 * stripped). Header fields it appends to hdr (CRLF line ends) are stored
 * in front of the message, so every delivery attempt, every recipient
 * domain and a restart send them unchanged and nothing signs twice. The
 * journal layout only (no_journal stores messages unsigned). */
struct buf;
typedef void (*spool_sign_cb)(void *arg, struct spool_msg *msg, const uint8_t *body, size_t len,
                              struct buf *hdr);
/* Optional, preferred over on_sign for the files of one read-ahead group:
 * sign n messages at once (the engine spreads them over threads). Each
 * job's hdr (empty, owned by the spool) gets what on_sign would append.
 * Called on the ingest thread, after the ingest hook of every one of them. */
struct spool_sign_job {
  struct spool_msg *msg;
  const uint8_t *body;
  size_t len;
  struct buf *hdr;
};
typedef void (*spool_sign_batch_cb)(void *arg, struct spool_sign_job *jobs, size_t n);
/* Optional pair, preferred over both: signing that never holds up the
 * ingest thread. on_sign_prep is called on the ingest thread after the
 * ingest hook of each message (msg[0..len) as for on_sign; what on_sign would append that is ready
 * now, such as signatures made from Lua, goes to hdr); it returns true
 * when the message must still be signed. Such a message leaves the batch
 * being built: the spool keeps a copy, and hands it with others to
 * on_sign_async, which returns at once, fills each job's hdr on other
 * threads and calls spool_sign_done(group) from any thread when every job
 * is done. The signed messages go into the next batch (so into the
 * journal exactly once, with their signature, before any delivery); the
 * ingest thread meanwhile goes on taking other messages. Until then a
 * message's pickup file stays claimed (a crash puts it back in pickup/,
 * to be taken and signed again) and a submission has no reply. */
struct spool_sign_group;
typedef bool (*spool_sign_prep_cb)(void *arg, struct spool_msg *msg, const uint8_t *body,
                                   size_t len, struct buf *hdr);
typedef void (*spool_sign_async_cb)(void *arg, struct spool_sign_job *jobs, size_t n,
                                    struct spool_sign_group *group);
/* Every job of group is done (any thread, once per group). */
void spool_sign_done(struct spool_sign_group *group);

/* The spool's settings; the engine fills it from the configuration
 * (Spoolbase, Pickup_Directory, Spool_Sync, Max_Message_Size,
 * Keep_Message_Dicts_In_Memory). Zero means the default. */
struct spool_params {
  const char *spoolbase;      /* required */
  const char *pickup_dir;     /* NULL: <spoolbase>/pickup; must be on the same file system */
  enum spool_sync sync;
  uint64_t max_message_size;  /* bytes of the whole pickup file; 0: default */
  bool keep_dicts_in_memory;
  /* Pickup_Claim = exchange: claim everything in pickup/ with one
   * renameat2(RENAME_EXCHANGE) with <spoolbase>/claim/pickup instead of a
   * rename per file; producers must then give every file a new name and
   * write their temporary files outside pickup/ (or rename through a
   * directory fd): docs/spool.md. */
  bool pickup_exchange;
  const char *secret_key_file; /* Spool_Secret_Key_File: the AES-256-GCM key that seals secret
                                * context values in the spool (created 0600 when missing); NULL:
                                * secrets are kept in memory only and lost on restart */
  unsigned batch_max;         /* files claimed per group commit; 0: 512 */
  unsigned rescan_ms;         /* pickup safety-net rescan period; 0: 2000 */
  uint16_t node_id;           /* 0: low 16 bits of the pid */
  enum spool_sync_method sync_method; /* how a batch is made durable */
  spool_msg_cb on_msg;        /* required for spool_ingest/spool_recover */
  spool_bad_cb on_bad;        /* optional */
  spool_ingest_cb on_ingest;  /* optional */
  spool_sign_cb on_sign;      /* optional */
  spool_sign_batch_cb on_sign_batch; /* optional */
  spool_sign_prep_cb on_sign_prep;   /* optional, with on_sign_async */
  spool_sign_async_cb on_sign_async; /* optional, with on_sign_prep */
  spool_bad_cb on_note;       /* optional: something to log that is not a rejection (e.g.
                               * duplicate recipients removed); name is the pickup file */
  void (*on_batch_end)(void *arg); /* optional: after each batch of on_msg calls, same thread */
  void *arg;                  /* passed to the callbacks */
};

/* Open the spool: create the directories (0700) when missing, check that
 * pickup and queue share a file system, set up inotify. NULL on failure,
 * with the reason in err[0..errlen) (an unusable spool is a start-up error). */
struct spool *spool_open(const struct spool_params *p, char *err, size_t errlen);
/* Stop the owned thread if any and close. Messages are not freed. NULL ok. */
void spool_close(struct spool *sp);

/* Start-up recovery: rebuild every queued message from queue/ and hand each
 * with pending recipients to on_msg (done ones are removed; damaged ones go
 * to bad/ through on_bad; a claimed file without metadata is parsed again).
 * Call once, before ingestion. Returns the number recovered or -errno. */
long spool_recover(struct spool *sp);

/* One ingest round: wait up to timeout_ms for pickup activity (inotify or
 * the rescan timer), claim up to batch_max files, parse, write metadata,
 * sync per Spool_Sync, then call on_msg for each. Returns the number of
 * messages made durable (bad files are not counted), or -ENOSPC / -EDQUOT
 * (disk full: the unprocessed pickup files stay in pickup/; call again
 * later and it resumes) or another -errno. */
long spool_ingest(struct spool *sp, int timeout_ms);
/* Scan pickup/ on the next round even without an inotify event. Any thread. */
void spool_kick(struct spool *sp);
/* Run spool_ingest in a thread the spool owns until spool_stop (retrying
 * every second after a disk-full error, reporting it once through on_bad
 * with name ""). Returns 0 or -errno. */
int spool_start(struct spool *sp);
/* Stop the owned thread after its current round. */
void spool_stop(struct spool *sp);
/* The last ingest error (0 when the last round succeeded). Any thread. */
int spool_last_error(const struct spool *sp);

/* Counters since spool_open (relaxed snapshots; any thread). */
struct spool_stats {
  uint64_t ingested;   /* messages made durable by spool_ingest */
  uint64_t rejected;   /* pickup files sent to bad/ */
  uint64_t batches;    /* ingest rounds that made at least one message durable */
  uint64_t syncs;      /* fsync/fdatasync/syncfs calls made by ingest and txn commits */
  uint64_t recovered;  /* messages handed over by spool_recover */
  uint64_t ring_reads; /* pickup files taken as read by the ingest ring (the others: fstat, pread) */
  uint64_t ctx_loads;  /* dictionaries read back from disk by spool_load_ctx */
  struct histo_snap sync_latency; /* duration of each of those sync calls */
};
void spool_get_stats(const struct spool *sp, struct spool_stats *out);

/* Read the dictionaries back from <id>.m when dropped (no-op when they are
 * in memory); restores secret entries kept in memory. Owner thread.
 * Returns 0 or -errno (-EBADMSG on a checksum failure). */
int spool_load_ctx(struct spool *sp, struct spool_msg *msg);
/* Drop the dictionaries from memory unless Keep_Message_Dicts_In_Memory
 * (secret entries stay in memory, never on disk). The caller must have
 * saved changes with spool_save_ctx. Owner thread. */
void spool_drop_ctx(struct spool *sp, struct spool_msg *msg);
/* Persist the current dictionaries, binding and binding group (appends a
 * record to <id>.m and syncs it unless Spool_Sync = none; use spool_txn_ctx
 * to batch). Returns 0 or -errno. Owner thread. */
int spool_save_ctx(struct spool *sp, struct spool_msg *msg);

/* Format msg's id into out (at least SPOOL_ID_LEN + 1 bytes); returns out. */
char *spool_msg_id_str(const struct spool_msg *msg, char *out);
/* Parse an id printed by spool_msg_id_str. Returns 0 or -EINVAL. */
int spool_id_parse(const char *s, uint64_t *id, uint16_t *node);
/* Change the binding / binding group (NULL clears); e.g. from the ingest
 * hook (persisted with the metadata) or later (persisted by the next
 * spool_save_ctx). */
void spool_msg_set_binding(struct spool_msg *msg, const char *binding);
void spool_msg_set_binding_group(struct spool_msg *msg, const char *group);
/* An fd to read the message from: bytes [msg->body_off, msg->body_off +
 * msg->body_size). Returns an fd or -errno. Give it back with
 * spool_close_body (a journal segment's fd is shared, not closed). */
int spool_open_body(struct spool *sp, const struct spool_msg *msg);
void spool_close_body(struct spool *sp, int fd);
/* In the ingest hook (on_ingest) only: the whole pickup file of msg as read
 * (the message is at body_off), *len its size; NULL for any other message.
 * The hook may run without an open file, so prefer this to spool_open_body. */
const uint8_t *spool_ingest_bytes(struct spool *sp, const struct spool_msg *msg, size_t *len);
/* Bytes of message bodies kept in memory (spool_msg.body_mem) across all
 * spools; bodies of new messages are kept while under this budget. */
#define SPOOL_HOT_BODY_BUDGET (64u * 1024u * 1024u)
#define SPOOL_HOT_BODY_MAX (64u * 1024u) /* larger bodies are always read from disk */
/* Free a message's memory (not its files); wipes secrets. NULL ok. */
void spool_msg_free(struct spool_msg *msg);

/* Outcomes, batched: a worker collects recipient outcomes, retry times and
 * removals in its txn and commits them together (one sync pass). The
 * in-memory message is updated at once; the disk at commit. */
struct spool_txn;
struct spool_txn *spool_txn_new(struct spool *sp);
void spool_txn_free(struct spool_txn *t);
/* Record recipient idx's new state. */
void spool_txn_rcpt(struct spool_txn *t, struct spool_msg *msg, uint32_t idx,
                    enum spool_rcpt_state state);
/* Record an attempt count and the next attempt time (wall-clock ms). */
void spool_txn_retry(struct spool_txn *t, struct spool_msg *msg, uint32_t attempts,
                     uint64_t next_attempt_ms);
/* Persist the message's current dictionaries, binding and binding group
 * at commit (like spool_save_ctx, batched). */
void spool_txn_ctx(struct spool_txn *t, struct spool_msg *msg);
/* Move a journaled message into its own files at commit (body and
 * metadata log), so its journal segment can be freed while it waits for a
 * retry. Call it only when no other thread reads msg (body_off, jseg and
 * bucket change). No-op for a message already in its own files. */
void spool_txn_spill(struct spool_txn *t, struct spool_msg *msg);
/* Remove the message's files at commit and free msg after it. */
void spool_txn_remove(struct spool_txn *t, struct spool_msg *msg);
/* Write everything recorded, then sync (per Spool_Sync). Returns 0 or the
 * first -errno (the txn is emptied either way; removals still happen). */
int spool_txn_commit(struct spool_txn *t);

/* Move a queued message to bad/ (<id>, <id>.m and <id>.why) and free it.
 * Returns 0 or -errno (the message is freed either way). */
int spool_bad(struct spool *sp, struct spool_msg *msg, const char *reason);

/* In-memory submission (the ESMTP listener): a whole message in the pickup
 * format (envelope lines, then the message) joins the next ingest batch,
 * beside pickup files, and is made durable by the same group commit. done
 * is called once, on a spool thread, after the batch's sync (result 0, id
 * the queue id) or when it cannot be queued (result -errno: -ENOSPC disk
 * full, -EBADMSG rejected by parsing or the ingest hook with why set,
 * -ESHUTDOWN stopping, other errors). The spool takes data (malloc'd) and
 * frees it. Any thread may call it. */
typedef void (*spool_submit_cb)(void *arg, int result, const char *id, const char *why);
void spool_submit(struct spool *sp, uint8_t *data, size_t len, spool_submit_cb done, void *arg);
/* Submissions accepted and not yet reported. */
size_t spool_submit_pending(const struct spool *sp);

