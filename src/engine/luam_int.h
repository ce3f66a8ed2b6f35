/* luam_int.h: what the luam module's files share (luam.c, luam_state.c,
 * luam_msg.c, luam_boot.c, luam_db.c) and nobody else may include: the
 * state, call and module structs, and the functions one file offers the
 * others. Every function here runs on the thread that owns the luam. */
#pragma once

#include "luam.h"
#include "luam_job.h"
#include "panic.h"

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MSG_MT "impetus.msg"
#define LUAM_IDLE_COROUTINES 8
#define LUAM_HOOK_EVERY 1000 /* instructions between budget checks */

struct script {
  char *name, *path, *chunk; /* chunk = "@" path */
  char *text;
  size_t len;
};

struct lcall;

/* One lua_State and its accounting. The current one serves new calls;
 * retired ones (after reload or recreation) live until their last
 * pending call finishes. */
struct lstate {
  struct lstate *next_retired;
  struct luam *lm;
  lua_State *L;
  int dispatch_ref;
  int msg_mt_ref;
  uint32_t hookmask;
  size_t mem, mem_limit;
  int counting;       /* custom allocator in use (else lua_gc polling) */
  int enforce;        /* refuse growth over mem_limit (only while running) */
  int oom;            /* the limit was hit: recreate this state */
  unsigned npending;
  /* budget of the code running now */
  uint64_t instr, max_instr, deadline_ns;
  int aborting;
  /* "script.lua:LINE" sampled by the budget hook once the state is near
   * its memory limit: where a memory bomb was (an allocation failure
   * itself carries no position). */
  char near[160];
  const char *loading;    /* script name while its top level runs */
  /* Finished coroutines kept for the next calls (no allocation per call). */
  lua_State *idle_co[LUAM_IDLE_COROUTINES];
  int idle_ref[LUAM_IDLE_COROUTINES];
  int nidle;
};

struct lmsg {
  struct lcall *call; /* NULL once the call is over */
};

struct lcall {
  struct lcall *prev, *next; /* lm->pending */
  struct lstate *ls;
  uint64_t id;
  enum luam_hook hook;
  void *msg;
  const struct luam_msg_ops *ops;
  char *domain;
  long rcpt;
  int report_errors; /* luam_call.report_errors */
  void (*done)(void *, int);
  void *done_arg;
  lua_State *co;
  int co_ref;
  int reusable;           /* the coroutine finished normally */
  struct lmsg *ud;        /* alive on the coroutine's stack while it runs */
  struct luam_job *job;   /* submitted by msys.db, not yet answered */
  uint64_t run_ns, instr;
};

/* Blocking mode (host->post == NULL): answers come back here and
 * luam_call waits for them (luam.c). */
struct mailbox;

#define DS_LOG_SLOTS 16u

struct luam {
  struct luam_host host;
  void (*post)(void *arg, void (*fn)(void *), void *fn_arg);
  void *post_arg;
  struct mailbox *mbox; /* blocking mode only */
  struct lstate *cur;
  struct lstate *retired;
  struct script *scripts;
  size_t nscripts;
  char *libdir;
  char *boot_chunk; /* "@<libdir>/impetus/boot.lua" */
  uint64_t max_instr, max_time_ms;
  size_t max_mem;
  bool jit;
  bool full_lua; /* scriptlet sandbox = false */
  struct luam_ds *ds;
  struct lcall *pending;
  unsigned npending;
  uint64_t next_id;
  struct lcall *running;
  struct luam_stats stats;
  struct { /* per datasource (index modulo DS_LOG_SLOTS) */
    uint64_t log_ns;          /* last failure logged */
    unsigned long suppressed; /* failures not logged since */
  } dslog[DS_LOG_SLOTS];
};

/* The state running on this thread right now (budget hook, allocator). */
extern __thread struct lstate *luam_tls_ls;

#define NEED(c, op) \
  do { if (!(c)->ops->op) return luaL_error(L, "msg: %s is not supported here", #op); } while (0)

/* luam_state.c: logging, memory, the budget, building and retiring states. */
IMPETUS_PRINTF(4, 5)
void luam_log(const struct luam *lm, int level, const char *script, const char *fmt, ...);
/* Count one hook failure (stats and the host's counter) by its cause. */
void luam_note_failure(struct luam *lm, const struct lstate *ls, enum luam_hook hook);
size_t luam_state_mem(struct lstate *ls);
/* The count hook: the instruction and time budget, and where a memory
 * bomb was; LUAM_HOOK_EVERY instructions apart until a budget is spent. */
void luam_budget_hook(lua_State *L, lua_Debug *ar);
/* Read every script of o; -errno and err on failure (nothing kept). */
int luam_scripts_load(const struct luam_opts *o, struct script **out, char *err, size_t errlen);
void luam_scripts_free(struct script *s, size_t n);
/* Build a complete state: libraries, sandbox, boot.lua, then every script;
 * NULL and err on failure. */
struct lstate *luam_state_new(struct luam *lm, char *err, size_t errlen);
void luam_state_free(struct lstate *ls);
/* Retire ls (it keeps serving its pending calls) or free it now. */
void luam_state_retire(struct luam *lm, struct lstate *ls);
/* Free a retired state once its last call is over. */
void luam_state_reap(struct luam *lm, struct lstate *ls);
/* Replace a state that hit its memory limit with a fresh one. */
void luam_state_recreate(struct luam *lm);

/* Open (and close) the window in which ls's code runs under the budget
 * (inline: once per hook call and resume). */
static inline void luam_run_begin(struct lstate *ls, uint64_t now, uint64_t used_ns,
                                  uint64_t used_instr)
{
  struct luam *lm = ls->lm;
  luam_tls_ls = ls;
  ls->enforce = 1;
  ls->aborting = 0;
  ls->near[0] = 0;
  ls->instr = used_instr;
  ls->max_instr = lm->max_instr;
  uint64_t budget = lm->max_time_ms * 1000000ull;
  ls->deadline_ns = now + (budget > used_ns ? budget - used_ns : 0);
}

static inline void luam_run_end(struct lstate *ls)
{
  if (ls->aborting)
    lua_sethook(ls->L, luam_budget_hook, LUA_MASKCOUNT, LUAM_HOOK_EVERY);
  ls->enforce = 0;
  luam_tls_ls = NULL;
  if (!ls->counting && luam_state_mem(ls) > ls->mem_limit)
    ls->oom = 1;
}

/* luam_msg.c: the msg object handed to hooks. */
/* The call behind the msg at stack index 1; raises when it is over. */
struct lcall *luam_msg_check(lua_State *L);
/* Create the msg metatable; returns its registry reference. */
int luam_msg_metatable(lua_State *L);
void luam_push_or_nil(lua_State *L, const char *s);

/* luam_boot.c: the C functions boot.lua is given. */
/* The state a C function runs in (also at load time, outside a call). */
struct lstate *luam_ls_of(lua_State *L);
/* Push the table of C functions boot.lua receives as its argument. */
void luam_boot_push(lua_State *L);
/* The script of the innermost frame of co that belongs to one, or NULL. */
const char *luam_stack_script(lua_State *co, struct lstate *ls, char *pos, size_t poslen);

/* luam_db.c: msys.db queries from a hook to luam_ds's pool and back. */
int luam_db_submit(lua_State *L);
/* A job's answer, posted back to the owning thread: resume its call. */
void luam_db_complete(void *arg);

/* luam.c: the calls. */
/* Resume c's coroutine with nargs values on its stack. Returns LUAM_CONT,
 * LUAM_DONE, or LUAM_PENDING (a query was submitted). */
int luam_call_resume(struct luam *lm, struct lcall *c, int nargs);
/* Finish c: invalidate its msg, release its coroutine, recreate or reap
 * the state when needed. */
void luam_call_finish(struct luam *lm, struct lcall *c, int was_pending);
