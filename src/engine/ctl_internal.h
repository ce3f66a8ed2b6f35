/* ctl_internal.h: what the ctl module's files share: ctl.c (requests,
 * dispatch, the metrics page, start/stop), ctlsrv.c (the control thread's
 * event loop that serves them), ctl_out.c (the answer emitter),
 * ctl_ask.c (questions to the workers), ctl_queues.c (queue and message
 * commands). Control thread only, except where ctl_ask.c says. */
#pragma once

#include "ctl.h"

#include "buf.h"
#include "counters.h"
#include "panic.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct engine_shared;

#define CTL_IO_TIMEOUT_MS 2000 /* to send a request; of silence while answered */
#define CTLSRV_CLIENTS_MAX 512 /* connections held at once (both sockets) */

/* Answer one console request line (without its LF): "OK\n" or "ERR\n"
 * and the body are appended to out. */
void ctl_answer(char *line, struct buf *out);
/* Answer one HTTP request (its first line at least): the whole response,
 * status line and headers included, is appended to out. */
void ctl_http_answer(const char *req, struct buf *out);
/* Once a second: the delivery-rate sample. */
void ctl_tick(void);

/* Serve both listening sockets (http_fd may be -1) until stop_fd becomes
 * readable. */
void ctlsrv_run(int stop_fd, int ctl_fd, int http_fd);

/* ---- ctl_out.c: the answer emitter ---- */

/* One emitter for both formats: JSON, or indented "key: value" text in
 * which an array's objects print as one "- k=v k=v" line each. */
struct ctl_out {
  struct buf *b;
  bool json;
  int depth;
  bool comma[16];
  bool row[16];
};

/* A JSON string (quotes included; NULL as ""). */
void ctl_json_str(struct buf *b, const char *s);
/* The key of the next value (NULL: an array element). */
void ctl_out_key(struct ctl_out *o, const char *key);
void ctl_out_str(struct ctl_out *o, const char *key, const char *v);
void ctl_out_u64(struct ctl_out *o, const char *key, uint64_t v);
void ctl_out_dbl(struct ctl_out *o, const char *key, double v);
void ctl_out_bool(struct ctl_out *o, const char *key, bool v);
/* An object or array; ctl_out_close ends it. */
void ctl_out_open(struct ctl_out *o, const char *key, bool array);
void ctl_out_close(struct ctl_out *o, bool array);
/* An object inside an array: one text line. */
void ctl_out_row_open(struct ctl_out *o);
void ctl_out_row_close(struct ctl_out *o);

/* ---- ctl_ask.c: questions to the workers ---- */

enum ctl_wop { CTL_WOP_STATS, CTL_WOP_QUEUES, CTL_WOP_UNITS, CTL_WOP_HASTEN, CTL_WOP_LIMITS, CTL_WOP_FAIL, CTL_WOP_MX };

struct ctl_qrow {
  char binding[COUNTERS_NAME_MAX], domain[COUNTERS_NAME_MAX];
  uint64_t ready, deferred, conns, opening, idle;
  bool suspended;
};

struct ctl_mrow {
  char id[40];
  char binding[COUNTERS_NAME_MAX], domain[COUNTERS_NAME_MAX];
  char sender[256], rcpt[256];
  uint32_t nrcpt, attempts;
  uint64_t due_ms, created_ms, size;
  bool deferred;
};

struct ctl_wpart {
  struct ctl_wq *q;
  unsigned idx;
  uint64_t ready, deferred, queues, active, sessions, inflight, timers;
  struct ctl_qrow *qrows;
  size_t nq;
  struct ctl_mrow *mrows;
  size_t nm;
  size_t hastened;
  struct buf mx; /* CTL_WOP_MX: "pref host addr,addr" lines */
};

struct ctl_wq {
  struct engine_shared *sh;
  _Atomic int refs;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned pending;
  enum ctl_wop op;
  char binding[COUNTERS_NAME_MAX]; /* filters; "" = any */
  char domain[COUNTERS_NAME_MAX];
  char id[40];
  size_t limit; /* rows per worker at most */
  unsigned nparts;
  struct ctl_wpart parts[];
};

/* A question for every worker of sh, with CTL_PAGE_MAX rows at most. */
struct ctl_wq *ctl_wq_new(struct engine_shared *sh, enum ctl_wop op);
/* Ask every worker; 0 when all answered, -ETIMEDOUT otherwise (the
 * request stays alive until the late workers have answered). */
int ctl_wq_run(struct ctl_wq *q);
void ctl_wq_unref(struct ctl_wq *q);

/* ---- ctl.c and ctl_queues.c: one request ---- */

#define CTL_ARGS_MAX 32 /* words in one request */

struct ctl_req {
  struct engine_shared *sh;
  int argc;
  char *argv[CTL_ARGS_MAX];
  struct ctl_out o;
  struct buf err;
};

/* Set the request's error text; returns -EINVAL. */
int ctl_fail(struct ctl_req *r, const char *fmt, ...) IMPETUS_PRINTF(2, 3);
int ctl_cmd_binding_summary(struct ctl_req *r, const char *name);
int ctl_cmd_domain(struct ctl_req *r, const char *binding, const char *name);
/* mailq / showqueue: page `page` (from 1) of `per` rows. */
int ctl_cmd_list_units(struct ctl_req *r, const char *binding, const char *domain, const char *id,
                       size_t page, size_t per);
int ctl_cmd_message_details(struct ctl_req *r, const char *id);
/* retry / flush: reschedule the matching units now. */
int ctl_cmd_hasten(struct ctl_req *r, const char *binding, const char *domain, const char *id);
int ctl_cmd_message_fail(struct ctl_req *r, const char *id);
int ctl_cmd_suspend(struct ctl_req *r, bool on, const char *binding, const char *domain);
