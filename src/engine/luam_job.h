/* luam_job: one datasource query travelling from a worker's Lua state to
 * the luam_ds pool and back. Private to luam.c and luam_ds.c.
 * Ownership: the submitting worker allocates it; the pool owns it while
 * queued or running; then it is posted back and the worker frees it. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct luam_ds;

enum luam_jv { LUAM_JV_NIL, LUAM_JV_INT, LUAM_JV_NUM, LUAM_JV_STR, LUAM_JV_BOOL };

struct luam_jval {
  int type;      /* enum luam_jv */
  char *name;    /* parameter name (":x", "$x") or NULL for positional; owned */
  int64_t i;
  double d;
  char *s;       /* owned copy */
  size_t len;
};

struct luam_job {
  struct luam_job *next;     /* pool queue link */
  int ds;                    /* datasource index */
  int execute;               /* 1: msys.db.execute (no rows wanted) */
  char *sql;                 /* owned */
  struct luam_jval *params;  /* owned */
  size_t nparams;
  /* Answer, filled by the pool thread. */
  int failed;
  char *err;                 /* owned; set when failed */
  size_t ncols, nrows;
  char **cols;               /* ncols owned names */
  struct luam_jval *cells;   /* nrows * ncols */
  /* The way home: post(post_arg, complete, job) from the pool thread. */
  void (*post)(void *arg, void (*fn)(void *), void *fn_arg);
  void *post_arg;
  void (*complete)(void *job);
  void *owner;               /* NULL once the owner is gone; pool mutex */
  uint64_t call_id;
};

/* Queue a job (thread-safe). The pool posts it back when answered. */
void luam_ds_submit(struct luam_ds *ds, struct luam_job *job);
/* The owner is gone: a queued or running job is freed by the pool instead
 * of posted; a posted one sees owner == NULL in complete. */
void luam_ds_orphan(struct luam_ds *ds, struct luam_job *job);
void luam_job_free(struct luam_job *job);
