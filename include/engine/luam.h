/* luam: Lua policy. One LuaJIT state per worker thread running scripts
 * written against Momentum's msys API (registerModule, msg:context_*,
 * msys.db, ...). A state is touched only by the thread that created it,
 * so nothing here takes a lock.
 *
 * The engine talks to luam through three boundaries, so that luam knows
 * nothing about the spool or the configuration's layout:
 *  - struct luam_msg_ops: how a hook reads and changes one message;
 *  - struct luam_host: logging, configuration lookups, and posting a
 *    function to the worker's loop (the only thread-safe callback);
 *  - struct luam_ds (luam_ds.h): the shared datasource pool.
 *
 * A hook call may finish at once (LUAM_CONT / LUAM_DONE) or, when a script
 * waits for a datasource, return LUAM_PENDING and call back later on the
 * same thread. A script error, an endless loop or a memory bomb never
 * reaches the caller: the call logs once and answers LUAM_CONT. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct luam;
struct luam_ds;

/* Results of a hook call (Momentum's VALIDATE_CONT / VALIDATE_DONE). */
enum {
  LUAM_CONT = 0,    /* go on (also: no hook, error, budget exceeded) */
  LUAM_DONE = 1,    /* a module returned VALIDATE_DONE: skip the others */
  LUAM_PENDING = 2, /* waiting for a datasource; done() will be called */
  LUAM_ERROR = 3,   /* only with luam_call.report_errors: a script error, budget or
                       memory overrun stopped the hook (logged once, as always) */
};

/* The hooks luam can run, named after Momentum's callouts. */
enum luam_hook {
  LUAM_HOOK_VALIDATE_DATA_SPOOL,           /* validate_data_spool(msg, ac, vctx) */
  LUAM_HOOK_VALIDATE_DATA_SPOOL_EACH_RCPT, /* validate_data_spool_each_rcpt(msg, ac, vctx) */
  LUAM_HOOK_VALIDATE_SET_BINDING,          /* validate_set_binding(msg) */
  LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG,     /* outbound_smtp_auth_config(msg, ac, vctx) */
  LUAM_HOOK_LOG_DELIVERY,                  /* core_log_delivery_v1(msg, dr, now, note) */
  LUAM_HOOK_LOG_TRANSIENT_FAILURE,         /* core_log_transient_failure_v1(msg, dr, now, note) */
  LUAM_HOOK_LOG_PERMANENT_FAILURE,         /* core_log_permanent_failure_v1(msg, dr, now, note) */
  /* the ESMTP listener's (msg: the session; str: luam_call.str) */
  LUAM_HOOK_VALIDATE_CONNECT,              /* validate_connect(ac, vctx) */
  LUAM_HOOK_VALIDATE_EHLO,                 /* validate_ehlo(str, ac, vctx) */
  LUAM_HOOK_VALIDATE_MAILFROM,             /* validate_mailfrom(str, ac, vctx) */
  LUAM_HOOK_VALIDATE_RCPTTO,               /* validate_rcptto(msg, str, ac, vctx) */
  LUAM_HOOK_AC_AUTH_PERFORM_AUTH,          /* ac_auth_perform_auth(user, password, ac, response):
                                              EC_AUTH_OK answers LUAM_DONE */
  LUAM_HOOK_COUNT
};

/* What luam_host.count reports. A failed call is counted once, by the
 * cause that stopped it. */
enum luam_event {
  LUAM_EV_CALL,   /* a hook call started (a registered module has the hook) */
  LUAM_EV_ERROR,  /* a hook raised an error (logged, treated as CONT) */
  LUAM_EV_BUDGET, /* a hook ran over its instruction or time budget (aborted) */
  LUAM_EV_MEMORY, /* a hook hit the state's memory limit (state recreated) */
  LUAM_EV_COUNT
};

/* Momentum's context dictionaries (VCTX_CONN = 0, VCTX_MESS = 1). */
enum { LUAM_CTX_CONN = 0, LUAM_CTX_MESS = 1 };

/* How a hook reaches one message. Supplied by the engine; any member may
 * be NULL (the Lua method then raises "not supported here"). Returned
 * strings are copied into Lua at once, so they need to live only until
 * the next call on the same msg. All calls happen on the worker thread. */
struct luam_msg_ops {
  /* Context value of `key` in dictionary `which` (LUAM_CTX_*), or NULL. */
  const char *(*ctx_get)(void *msg, int which, const char *key, size_t *len);
  /* Create or replace; >= 0 or -errno. */
  int (*ctx_set)(void *msg, int which, const char *key, const char *val, size_t len);
  /* 1 when a key was deleted, 0 when there was none. */
  int (*ctx_delete)(void *msg, int which, const char *key);
  const char *(*mailfrom)(void *msg);
  /* The i-th recipient, NULL past the end. */
  const char *(*rcptto)(void *msg, size_t i);
  /* The i-th value of header `name` (case-insensitive), NULL past the end. */
  const char *(*header)(void *msg, const char *name, size_t i, size_t *len);
  const char *(*binding)(void *msg);        /* NULL: none assigned yet */
  int (*set_binding)(void *msg, const char *name);       /* < 0: no such binding */
  const char *(*binding_group)(void *msg);
  int (*set_binding_group)(void *msg, const char *name); /* < 0: no such group */
  const char *(*id)(void *msg);             /* printable message id */
  size_t (*size)(void *msg);                /* bytes */
  /* Disposition: msg:code(550, "text") / msg:discard(). */
  void (*set_code)(void *msg, int code, const char *text);
  /* msys.validate.opendkim.sign(msg, vctx, options): sign the message as
   * it is now with Momentum's options (npairs key, value pairs in kv);
   * 0, or < 0 with why. Optional (NULL: not in this hook). */
  int (*dkim_sign)(void *msg, const char *const *kv, size_t npairs, char *why, size_t whylen);
  /* vctx:disconnect(code, text): answer and end the session (listener
   * hooks). Optional (NULL: it acts as msg:code). */
  void (*disconnect)(void *msg, int code, const char *text);
  /* ac:esmtp_capability_add(cap) (add) / _remove(cap): change the EHLO
   * reply of this listener session only; 0, or -EINVAL (a bad string) /
   * -ENOSPC (too many changes). NULL: not a listener session (an error). */
  int (*esmtp_capability)(void *msg, const char *cap, bool add);
  /* ac:inbound_session_count([cidr[, service_type]]): the listener's
   * current sessions from addresses in cidr (NULL: the connecting
   * address; "/N": the connecting address's /N); -EINVAL for a bad cidr.
   * NULL: not a listener session (an error). */
  long (*inbound_session_count)(void *msg, const char *cidr);
};

/* Engine services. log and eval run on the worker thread; post is called
 * from datasource pool threads and must be thread-safe: it must make
 * fn(fn_arg) run soon on the worker that owns this state.
 * post == NULL selects blocking mode, for a thread that may wait (the
 * ingest thread): luam_call then waits for datasource answers itself and
 * never returns LUAM_PENDING. */
struct luam_host {
  void *arg;
  /* level: 0 error, 1 warning, 2 notice (print), 3 debug. script: the
   * script's name from the scriptlet stanza or NULL. */
  void (*log)(void *arg, int level, const char *script, const char *text);
  /* Effective value of `option` after fallback for the scope (any of
   * bgroup/binding/domain may be NULL), or NULL when unset/unknown. The
   * string must stay valid until the hook call returns. */
  const char *(*eval)(void *arg, const char *bgroup, const char *binding, const char *domain,
                      const char *option);
  void (*post)(void *arg, void (*fn)(void *), void *fn_arg);
  /* Optional (NULL: not called): one event per hook call and per hook
   * failure, for the engine's counters. Owning thread; must be cheap. */
  void (*count)(void *arg, enum luam_hook hook, enum luam_event ev);
};

/* One `script "name" { source = "..." }` entry, path already resolved. */
struct luam_script {
  const char *name;
  const char *path;
};

struct luam_opts {
  const struct luam_script *scripts;
  size_t nscripts;
  const char *libdir;        /* bundled lua/ directory; NULL = build tree's */
  uint64_t max_instructions; /* per hook call; 0 = LUAM_DEFAULT_MAX_INSTRUCTIONS */
  uint64_t max_time_ms;      /* running time per hook call; 0 = default */
  size_t max_memory;         /* bytes per state; 0 = default */
  bool jit;                  /* JIT on: faster, but compiled loops escape the budget */
  bool full_lua;             /* no sandbox (scriptlet sandbox = false): io, os.execute,
                                ffi, debug, bytecode and C modules available */
  struct luam_ds *ds;        /* shared datasources or NULL; not owned */
};

#define LUAM_DEFAULT_MAX_INSTRUCTIONS 10000000u
#define LUAM_DEFAULT_MAX_TIME_MS 250u
#define LUAM_DEFAULT_MAX_MEMORY (64u << 20)
/* Smallest accepted budgets: below these the bundled boot.lua cannot load. */
#define LUAM_MIN_INSTRUCTIONS 1000u
#define LUAM_MIN_MEMORY (1u << 20)

/* What the delivery-outcome hooks see (copied at call time). */
struct luam_outcome {
  const char *domain;
  const char *binding;
  const char *remote_ip;
  int code;           /* SMTP reply code, 0 when none */
  const char *text;   /* reply or failure text (the `note`) */
  unsigned retries;
};

/* One hook call. msg must stay valid until the call is finished (at once,
 * or when done runs); strings here are copied. */
struct luam_call {
  void *msg;
  const struct luam_msg_ops *ops;
  const char *domain;                 /* scope domain (auth and outcome hooks) */
  long rcpt;                          /* current recipient for _each_rcpt, else -1 */
  const struct luam_outcome *outcome; /* outcome hooks only */
  void (*done)(void *arg, int result);/* called only after LUAM_PENDING */
  void *done_arg;
  /* listener hooks: the command's string (EHLO name, MAIL / RCPT address,
   * AUTH user), str2 the AUTH password; the accept construct's addresses
   * ("ip:port") as ac.remote_addr / ac.local_addr. Copied into Lua. */
  const char *str, *str2;
  size_t str_len, str2_len;
  const char *remote_addr, *local_addr;
  bool report_errors; /* answer LUAM_ERROR (not CONT) when the hook failed */
};

/* Resolve a scriptlet `source` (no ".lua"; '/' or '.' separate
 * directories): first relative to conf_dir, then libdir. Writes the path;
 * returns 0 or -ENOENT / -ENAMETOOLONG. Any thread. */
int luam_resolve_source(const char *source, const char *conf_dir, const char *libdir,
                        char *out, size_t outlen);
/* Compile every script in a throwaway state without running hooks: the
 * check before a reload. Returns 0, or -EINVAL with "script:line: text"
 * in err. Any thread. */
int luam_check(const struct luam_opts *opts, char *err, size_t errlen);
/* Create a worker's state and run its scripts. NULL with err set
 * ("path:line: text") on failure. The calling thread owns the state. */
struct luam *luam_new(const struct luam_opts *opts, const struct luam_host *host, char *err,
                      size_t errlen);
/* Free the state. Calls in flight are dropped without done(); their
 * datasource answers are discarded when they arrive. Accepts NULL. */
void luam_free(struct luam *lm);
/* Build a new state from opts, then swap it in. On failure (-EINVAL, err
 * names script:line) the old scripts stay. Calls in flight finish in the
 * old state. Owning thread. */
int luam_reload(struct luam *lm, const struct luam_opts *opts, char *err, size_t errlen);
/* Whether any registered module implements the hook (cheap). */
bool luam_has_hook(const struct luam *lm, enum luam_hook hook);
/* Run every registered module's hook. Returns LUAM_CONT, LUAM_DONE or
 * LUAM_PENDING (then call->done runs later on this thread). Owning thread. */
int luam_call(struct luam *lm, enum luam_hook hook, const struct luam_call *call);
/* Convenience: the outbound_smtp_auth_config hook. Inside it,
 * msg:context_get(VCTX_MESS, "outbound_smtp_auth_key"|"_type"|"_user")
 * falls back to the configured value for the message's scope by
 * authkeys.h's rule (no configured user when the message sets a password). */
int luam_call_auth_config(struct luam *lm, void *msg, const struct luam_msg_ops *ops,
                          const char *domain, void (*done)(void *, int), void *done_arg);
/* Momentum's name of a hook ("validate_data_spool"), "?" if out of range. */
const char *luam_hook_name(enum luam_hook hook);
/* "call", "error", "budget", "memory". */
const char *luam_event_name(enum luam_event ev);
/* Calls waiting for a datasource. */
unsigned luam_pending(const struct luam *lm);
/* Statistics for tests and the console. */
struct luam_stats {
  unsigned long calls, errors, aborted, recreated, yields, cache_hits;
  size_t memory; /* bytes held by the current state */
};
void luam_get_stats(const struct luam *lm, struct luam_stats *st);
