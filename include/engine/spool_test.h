/* spool_test.h: fault-injection seams of the spool, for tests only (the
 * engine never includes this). Each is NULL in production and is looked at
 * only off the hot path: the per-file fstat read (not the ring's), once
 * per batch before its pickup files are removed. spool_test_after_stat
 * runs only for files read with fstat + pread (bigger than the ring's
 * slot, or without io_uring): tests use such files. */
#pragma once

#include <stdbool.h>

/* Fault injection for tests only: when set, called by the ingest thread
 * right after a claimed file's fstat and before it is read. NULL in
 * production. */
extern void (*spool_test_after_stat)(int fd);
/* Fault injection for tests only: when it returns true for a pickup file
 * whose message was just made durable in the journal, the file is left
 * in the claimed directory (a crash between the sync and the removal).
 * NULL in production. */
extern bool (*spool_test_keep_pickup)(const char *name);
/* Fault injection for tests only: called once a batch is durable, right
 * before its pickup files are removed. NULL in production. */
extern void (*spool_test_before_forget)(void);
/* Fault injection for tests only: called right after each exchange that
 * claims pickup/ (a crash there must lose and duplicate nothing). NULL in
 * production. */
extern void (*spool_test_after_swap)(void);
