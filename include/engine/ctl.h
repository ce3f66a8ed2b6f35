/* ctl: the control socket (impetus-ctl's server) and the Prometheus
 * endpoint. One small thread of its own serves both, so a slow console
 * client never blocks delivery; questions about queues go to the workers
 * that own them as posted messages (ring_post) and the answers come back
 * to this thread, bounded by a deadline.
 *
 * Protocol (one request per connection): the client sends one line,
 * "json" or "text", then the command words, separated by TAB, ending in
 * LF. The server answers "OK\n" or "ERR\n" followed by the body (JSON or
 * human-readable text) and closes.
 *
 * Threads: ctl_start/ctl_stop from the engine's main thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct engine_shared;
struct worker;
struct dq;
struct dq_unit;
struct ring;
struct spool_msg;
struct dns;

#define CTL_REQUEST_MAX 4096   /* bytes of one request line */
#define CTL_PAGE_MAX 1000      /* rows per listing page */
#define CTL_WORKER_WAIT_MS 3000 /* how long a command waits for the workers */

/* Bind the sockets: Control_Listener (default <Spoolbase>/impetus.sock,
 * mode 0600) and Metrics_Listener when set. Called before the engine drops
 * root, so they may live where only root can create files. Returns 0, or
 * -errno with a reason in err (the engine exits). */
int ctl_open(struct engine_shared *sh, const char *config_path, char *err, size_t errlen);
/* Start the control thread on the sockets ctl_open bound (once the spool
 * and workers run). 0 or -errno with a reason in err. */
int ctl_start(char *err, size_t errlen);
/* Stop the thread and remove the socket. Safe when not started. */
void ctl_stop(void);

/* Create the missing parent directories of the configured log files,
 * control socket and spool key file (mode 0755), so a fresh machine starts on the bundled
 * configuration. Failures are left to the open that follows. Main thread. */
struct conf;
void ctl_prepare_paths(struct conf *c);

/* ---- console hooks implemented in worker.c (worker thread only, except
 * worker_ring) ---- */
struct ring *worker_ring(struct worker *w);
struct dq *worker_dq(struct worker *w);
struct dns *worker_dns(struct worker *w);
unsigned worker_nsessions(const struct worker *w);
/* The message a queued unit belongs to, and its queue id text. */
const struct spool_msg *worker_unit_msg(const struct dq_unit *u, const char **id);
/* Fail a unit already taken out of its queue permanently (admin bounce). */
void worker_admin_fail(struct worker *w, struct dq_unit *u);
