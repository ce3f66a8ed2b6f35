/* adaptive_queue (prefix adaptive_queue_): where adaptive delivery meets the
 * workers. Two hooks carry it: "a reply came for (binding, domain, MX host)"
 * feeds the rules (adaptive_queue_reply) and "the effective limits of this
 * queue now" applies what is in force (adaptive_queue_limits, _retry); plus
 * the connection slots per MX host / provider taken at connect, connection
 * failures, the sweep that ends adjustments, and the bindings' warm-up ages
 * kept in <Spoolbase>/adaptive/bindings.
 *
 * Logs each adjustment once to the paniclog ("adaptive: ..."), made or
 * ended. Never fails or bounces a recipient. Threads: the worker that owns
 * the queue, except _ages_* (main and control threads) and _state_* (main
 * thread). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf;
struct conf_view;
struct dq_queue_state;
struct engine_shared;
struct logs_writer;
struct sched_retry;
struct adaptive;

/* Whether a queue's limits must be read again (an adjustment was made or
 * ended, or one of its own ends at now_ms). */
bool adaptive_queue_stale(struct engine_shared *sh, const struct dq_queue_state *st,
                          uint64_t now_ms);
/* Apply the adjustments in force and the warm-up cap to st->limits, which
 * load_limits has just read from the view v (Adaptive_Enabled there). */
void adaptive_queue_limits(struct engine_shared *sh, const struct conf_view *v,
                           const char *binding, const char *domain, struct dq_queue_state *st,
                           uint64_t now_ms);
/* Raise the retry intervals of p when an adjustment says so. */
void adaptive_queue_retry(struct engine_shared *sh, const struct conf_view *v,
                          const char *binding, const char *domain,
                          const struct dq_queue_state *st, uint64_t now_ms, struct sched_retry *p);

/* A reply (code >= 400; lines joined) came for mail on binding to domain
 * through the queue's MX host: run the rules, log what they make. */
void adaptive_queue_reply(struct engine_shared *sh, struct logs_writer *log,
                          const struct conf_view *v, const char *binding, const char *domain,
                          const struct dq_queue_state *st, int code, const char *enhanced,
                          const char *text, uint64_t now_ms);

/* About to connect to MX host mx_host for the queue: take its slots (Host
 * stanza cap, provider cap per binding); slot[2] holds what the session
 * owns (released first, so a reconnect does not count twice). False when a
 * cap is reached, or when the host is new to the queue and its provider's
 * mail is suspended: the session gives way, nothing is charged. Records
 * the host as the queue's MX host. */
bool adaptive_queue_connect(struct engine_shared *sh, struct conf *c, const char *binding,
                            const char *domain, const char *mx_host, struct dq_queue_state *st,
                            uint64_t now_ms, uint32_t slot[2]);
/* The session is gone: give its slots back. */
void adaptive_queue_release(struct engine_shared *sh, uint32_t slot[2]);
/* A connection failed before SMTP / reached SMTP. */
void adaptive_queue_conn_failed(struct engine_shared *sh, struct logs_writer *log,
                                const struct conf_view *v, const char *binding,
                                const char *domain, uint64_t now_ms);
void adaptive_queue_conn_ok(struct engine_shared *sh, const struct conf_view *v,
                            const char *binding, const char *domain);

/* End the adjustments whose time has come and log them (one worker calls
 * it from its loop; it does the work at most every 250 ms). */
void adaptive_queue_sweep(struct engine_shared *sh, struct logs_writer *log, uint64_t now_ms);

/* Warm-up ages: read <spoolbase>/adaptive/bindings, then record every
 * configured binding not in it as first used now (appended). Main thread,
 * at start and reload. */
void adaptive_queue_ages_load(struct engine_shared *sh, struct conf *c, const char *spoolbase,
                              uint64_t now_ms);
/* Set a binding's age (the console's "adaptive warmup B AGE"), persisted. */
int adaptive_queue_ages_set(struct engine_shared *sh, const char *spoolbase, const char *binding,
                            uint64_t first_ms);

/* Adjustments across a restart, in <spoolbase>/adaptive/adjustments.
 * _save rewrites it (temporary file, fsync, rename) when they changed since
 * the last save: the main thread calls it each second and at the stop, so
 * after a SIGKILL at most the last second's changes are lost. A failure is
 * logged once until a save works again. _load, at start, puts back those
 * still in force (each logged "restored after a restart: ..."), drops
 * those that ended meanwhile; a missing file is nothing, a corrupt or
 * unreadable one an error in the paniclog, never a reason not to start. */
void adaptive_queue_state_save(struct engine_shared *sh, struct logs_writer *log,
                               const char *spoolbase, uint64_t now_ms);
void adaptive_queue_state_load(struct engine_shared *sh, struct logs_writer *log,
                               const char *spoolbase, uint64_t now_ms);

/* msys.adaptive.registerRules (Lua, any worker's or the ingest state):
 * one rule as field/value text pairs (name provider match_domain code
 * enhanced pattern trigger scope action value duration source), added to
 * the rules in force of the engine's adaptive state (set once at start with
 * adaptive_queue_lua_target; until then -ENOENT). clear_first: Momentum's
 * "replace" for the first rule of a call. 0 or -errno with err. */
void adaptive_queue_lua_target(struct adaptive *a);
int adaptive_queue_lua_rule(const char *const *kv, size_t npairs, bool clear_first, char *err,
                            size_t errlen);
