/* luam_ds: Momentum-style datasources (`Datasource "name" { uri = (...) }`)
 * for Lua policy. A small thread pool (default 2 threads) runs the queries
 * so that a worker thread never blocks on a database; each answer is
 * handed back to the worker that asked through the host's post callback
 * (see luam.h). Only the "sqlite:" driver is implemented.
 *
 * One luam_ds is shared by every worker's luam state; it is created and
 * freed by the main thread. Submitting is thread-safe. */
#pragma once

#include <stddef.h>

struct luam_ds;

/* One `Datasource "name" { ... }` stanza. */
struct luam_ds_conf {
  const char *name;      /* stanza instance name (case-sensitive) */
  const char *uri;       /* "sqlite:/path/file.db" (first uri of the list) */
  unsigned cache_life;   /* seconds a cached answer stays valid; 0 = no cache */
  unsigned cache_size;   /* entries per worker state (LRU); 0 = no cache */
  unsigned busy_timeout_ms; /* how long a query waits for a locked database; 0 = 10000 */
  unsigned max_rows;     /* rows returned per query at most (more are dropped);
                            0 or over LUAM_DS_MAX_ROWS = LUAM_DS_MAX_ROWS */
};

/* Limits on what a query may return (a script is not trusted to be small). */
#define LUAM_DS_MAX_ROWS 10000
#define LUAM_DS_MAX_PARAMS 64
#define LUAM_DS_MAX_RESULT_BYTES (16u << 20)

/* --check-config: the stanzas are valid (as luam_ds_new checks them) and
 * each database file exists (the engine opens it read-write without
 * creating it). 0, or -EINVAL with the reason in err. No threads. */
int luam_ds_check(const struct luam_ds_conf *confs, size_t n, char *err, size_t errlen);

/* Validate the stanzas and start `threads` pool threads (0 = 2). Returns
 * NULL with a message in err (naming the datasource) on a bad uri or
 * unknown driver. The database files are opened lazily by the pool. */
struct luam_ds *luam_ds_new(const struct luam_ds_conf *confs, size_t n, unsigned threads,
                            char *err, size_t errlen);
/* Stop the pool (queued queries are answered with an error and posted) and
 * free everything. Accepts NULL. Main thread, after the workers stopped. */
void luam_ds_free(struct luam_ds *ds);
/* Index of the datasource called name, or -1. */
int luam_ds_find(const struct luam_ds *ds, const char *name);
/* Its configuration (strings owned by ds). */
const struct luam_ds_conf *luam_ds_conf_at(const struct luam_ds *ds, int idx);
/* Queries run so far by the pool (for tests and statistics). */
unsigned long luam_ds_queries(struct luam_ds *ds);
