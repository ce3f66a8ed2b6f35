/* worker: the delivery worker threads. Each worker owns one net ring, one
 * DNS resolver, one TLS context, its delivery queues (dq), their sessions
 * and timers, a log writer and a spool transaction. Work reaches a worker
 * only as posted messages on its ring (lock-free MPSC + eventfd):
 *
 *   - delivery units, from the spool's hand-over thread (worker_submit_msg), each to
 *     the worker that owns its (binding, routing domain) queue;
 *   - per-recipient results, from the worker that delivered them to the
 *     message's home worker, the only thread that updates the message's
 *     spool state (so a message to several domains has one writer).
 *
 * Threads: worker_* functions below are called by the engine's main thread,
 * except worker_submit_msg (the spool's hand-over thread). */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cluster;
struct conf;
struct logs;
struct logs_writer;
struct policy;
struct spool;
struct spool_msg;
struct throttle_registry;
struct adaptive;

/* What every worker shares; read-only after start except where noted. */
struct engine_shared {
  struct spool *spool;
  struct logs *logs;
  struct logs_writer *ingest_log; /* the ingest thread's (bad files, Lua ingest hooks) */
  /* the spool's hand-over thread's (on_msg, on_batch_end: R records); a
   * writer belongs to one thread, and the two run at once */
  struct logs_writer *handover_log;
  /* the hand-over thread's posts of a received batch, sent once its R
   * records are on their way to the log writer (worker_submit_flush) */
  struct unit_post **pend;
  size_t npend, cappend;
  struct throttle_registry *throttles;
  struct adaptive *adaptive;      /* adaptive delivery's rules and state (adaptive.h) */
  struct cluster *cluster;        /* cluster-wide limits (cluster.h); NULL: no cluster stanza */
  struct policy *policy;          /* Lua scripts (policy.h); NULL: none */
  char hostname[256];
  char pickup_dir[4096];          /* where DSNs are dropped */
  /* the spool this engine holds the lock of (Spoolbase is restart-only: a
   * reloaded configuration may name another): adaptive state files */
  char spoolbase[4096];
  const char *resolver;           /* "host:port" or NULL */
  unsigned nworkers;
  struct worker **workers;
  /* the configuration snapshot: swapped by the main thread on reload */
  _Atomic(struct conf *) conf;
  _Atomic uint64_t conf_gen;
  /* counters for the console and tests */
  _Atomic uint64_t delivered, failed, deferred;
  /* graceful stop: workers without sessions; a worker exits only when all
   * are, so results posted to a message's home worker are still applied */
  atomic_uint idle_workers;
};

/* Start worker idx (its thread creates its ring). NULL on failure with a
 * reason in err. */
struct worker *worker_start(struct engine_shared *sh, unsigned idx, char *err, size_t errlen);
/* Ask the worker to stop: no new sessions or transactions; in-flight ones
 * finish until deadline_ms (monotonic), then are abandoned (their
 * recipients stay pending in the spool). Any thread. */
void worker_stop(struct worker *w, uint64_t deadline_ms);
/* Wait for the thread and free the worker (queued units are dropped from
 * memory; they stay in the spool). */
void worker_join(struct worker *w);

/* Hand a durable message to the workers: split it into delivery units (one
 * per recipient domain, cut to Max_Recipients_Per_Batch) and post each to
 * the worker owning its queue. Logs the R records when `received` (not for
 * recovered messages). Called on the spool's ingest thread. */
void worker_submit_msg(struct engine_shared *sh, struct spool_msg *msg, bool received);
/* End of a received batch: hand its R records to the log writer, then
 * post its messages to the workers, so no D record of the batch can reach
 * the mainlog before its R (a worker flushes its D records every loop
 * pass). The spool's hand-over thread, after the batch's
 * worker_submit_msg calls (received ones wait for this). */
void worker_submit_flush(struct engine_shared *sh);

/* Free the memory of messages still owned by workers at exit (after every
 * worker_join). */
void worker_free_leftovers(struct engine_shared *sh);
