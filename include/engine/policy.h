/* policy: the engine's wiring of Lua (luam) -- the scripts and datasources
 * loaded from the scriptlet / Datasource stanzas, one luam state per
 * worker thread plus a blocking one for the ingest thread, reload on
 * SIGHUP, the ingest hooks (validate_set_binding, validate_data_spool,
 * validate_data_spool_each_rcpt) and the delivery-outcome hooks
 * (core_log_delivery_v1 / _transient_failure_v1 / _permanent_failure_v1).
 *
 * Threads: policy_new / policy_reload / policy_free on the main thread;
 * policy_ingest on the spool's ingest thread; policy_worker_* and
 * policy_msg_* on the worker thread that created the policy_worker. */
#pragma once

#include "luam.h"
#include "luam_spool.h"

#include <stdatomic.h>
#include <stdbool.h>

struct conf;
struct logs_writer;
struct ring;
struct spool;
struct spool_msg;

struct policy;
struct policy_worker;

/* Load the scripts and start the datasource pool. NULL with "script:line:
 * text" in err when a script does not compile (a start-up error). Never
 * NULL when the configuration has no scriptlet: the policy is then empty
 * and every hook call is a cheap no-op. live_conf: the engine's current
 * snapshot pointer (read by the ingest thread). ingest_log: where ingest-thread
 * Lua output (print, errors) goes; ingest_slot: the ingest thread's
 * counters slot (counters.h). */
struct policy *policy_new(struct conf *c, _Atomic(struct conf *) *live_conf,
                          struct logs_writer *ingest_log, unsigned ingest_slot, char *err,
                          size_t errlen);
/* --check-config: load c's scripts as start-up would (sources found, text
 * compiled, top levels run in a throwaway state), and check the
 * Datasource stanzas and that their database files exist.
 * 0, or -EINVAL with "script:line: text" or the missing source in err. */
int policy_check(struct conf *c, char *err, size_t errlen);
/* SIGHUP: compile the scripts of c; on success every state reloads them
 * (workers between events, the ingest state before its next message). On
 * failure returns -EINVAL with script:line in err and the old scripts stay.
 * Datasource stanza changes need a restart. */
int policy_reload(struct policy *p, struct conf *c, char *err, size_t errlen);
void policy_free(struct policy *p);
/* Whether any script is loaded. */
bool policy_has_scripts(const struct policy *p);

/* The spool_ingest_cb (arg: the policy): runs validate_set_binding,
 * validate_data_spool and validate_data_spool_each_rcpt in blocking mode;
 * context and binding changes are written with the metadata. A
 * msg:code(5xx) rejects the message to bad/ with its text. */
int policy_ingest(void *arg, struct spool_msg *msg, char *reason, size_t reason_len);

/* At start-up recovery (main thread, before ingest starts: it shares the
 * ingest state): validate_set_binding again; a changed binding is
 * persisted (spool_save_ctx). Returns 0 or the spool's -errno. */
int policy_recovered(struct policy *p, struct spool *sp, struct spool_msg *msg);

/* The worker's state; created on the worker thread. NULL p gives an empty
 * policy worker. Script output goes to log (paniclog); hook calls and
 * failures count in counters slot `slot` (the worker's index). */
struct policy_worker *policy_worker_new(struct policy *p, struct ring *ring,
                                        struct logs_writer *log, struct conf *c, unsigned slot);
/* The same for another event loop (the ESMTP listener's thread): post
 * must make fn(fn_arg) run soon on the calling thread (any thread calls it). */
struct policy_worker *policy_thread_new(struct policy *p,
                                        void (*post)(void *, void (*)(void *), void *),
                                        void *post_arg, struct logs_writer *log, struct conf *c,
                                        unsigned slot);
void policy_worker_free(struct policy_worker *pw);
/* Between events: take up reloaded scripts and a new snapshot. Cheap. */
void policy_worker_refresh(struct policy_worker *pw, struct conf *c);
/* The worker's luam state, or NULL when no script is loaded. */
struct luam *policy_worker_luam(struct policy_worker *pw);

/* A private view of a queued message for one hook call: its own copy of
 * the dictionaries (read back from disk when the spool dropped them, i.e.
 * Keep_Message_Dicts_In_Memory = false), so a worker that is not the
 * message's home may run hooks on it. Changes are not persisted. */
struct policy_msg {
  struct spool_msg m;        /* shallow copy; own mess/conn */
  struct luam_spool_msg h;   /* pass &h as luam_call.msg */
};
/* Returns 0, or -errno when the dictionaries cannot be read (then the
 * view has empty ones). Owner worker of the unit. */
int policy_msg_open(struct policy_msg *pm, struct spool *sp, const struct spool_msg *sm,
                    struct conf *c);
void policy_msg_close(struct policy_msg *pm);
/* luam_spool_ops without binding changes (not allowed after ingest). */
const struct luam_msg_ops *policy_msg_ops(void);

/* Run a delivery-outcome hook (LUAM_HOOK_LOG_*) when a script has it. */
void policy_outcome(struct policy_worker *pw, enum luam_hook hook, struct spool *sp,
                    const struct spool_msg *sm, const struct luam_outcome *o);
