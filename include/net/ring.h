/* ring: one io_uring event loop per worker thread (STYLE.md #12).
 *
 * Callback-based and small: other net modules (conn, tls, dns, outsess) and
 * the engine's disk I/O prepare SQEs through ring_sqe()/ring_arm() and get
 * their completion as a call to `fn(owner, res, cqe_flags)`. Timers are a
 * min-heap of embedded `struct ring_timer`; the nearest deadline is the
 * timeout of the loop's wait, so thousands of deadlines cost no kernel
 * timer each. Other threads hand work to a loop with ring_post()/
 * ring_post_msg() (lock-free MPSC queue + eventfd wake-up).
 *
 * Threading: ring_new() must run on the thread that will run the loop
 * (IORING_SETUP_SINGLE_ISSUER binds the ring to its creator). Everything
 * except ring_post, ring_post_msg and ring_stop is loop-thread only. */
#pragma once

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "mpsc.h"

struct ring;

struct ring_params {
  unsigned entries;     /* submission queue size; 0 = 1024 */
  unsigned pool_bufs;   /* provided receive buffers (power of two); 0 = 1024 */
  unsigned pool_size;   /* bytes per provided buffer; 0 = 4096 */
  bool no_optional;     /* use no optional kernel feature (tests the fallbacks) */
  unsigned disable;     /* RING_F_* bits to leave off even when the kernel has them */
};

/* Optional features found by probing at ring_new (ring_features()). */
enum {
  RING_F_SINGLE_ISSUER = 1u << 0,
  RING_F_COOP_TASKRUN = 1u << 1,
  RING_F_DEFER_TASKRUN = 1u << 2,
  RING_F_EXT_ARG = 1u << 3,
  RING_F_BUF_RING = 1u << 4,      /* provided buffer ring: a shared recv pool */
  RING_F_RECV_MULTISHOT = 1u << 5,
  RING_F_SEND_ZC = 1u << 6,
};

/* Provided-buffer group used by recv with IOSQE_BUFFER_SELECT. */
#define RING_POOL_GROUP 0

/* Create a ring on the calling thread. NULL on failure with *err = -errno. */
struct ring *ring_new(const struct ring_params *p, int *err);
/* Destroy; ops still in flight are abandoned (their completions dropped). */
void ring_free(struct ring *r);
/* Bit set of RING_F_* found at start-up. */
unsigned ring_features(const struct ring *r);
/* Names of the features in `f`, for start-up log lines ("buf_ring multishot ..."). */
const char *ring_features_text(unsigned f, char *out, unsigned outlen);

/* Wait up to timeout_ns (-1 = until something happens, 0 = poll), then
 * dispatch completions, expired timers and posted work. Returns the number
 * of events dispatched, or -errno from io_uring_enter. */
int ring_run_once(struct ring *r, int64_t timeout_ns);
/* Loop until ring_stop(); returns 0 or -errno. */
int ring_run(struct ring *r);
/* Make ring_run return after the current iteration; any thread. */
void ring_stop(struct ring *r);
/* Monotonic nanoseconds, cached once per loop iteration. */
uint64_t ring_now(const struct ring *r);

/* ---- cross-thread work ---- */
struct ring_msg {
  struct mpsc_node node;
  void (*fn)(struct ring_msg *m); /* runs on the loop thread */
};
/* Queue m to run on r's thread; any thread; never fails, never allocates. */
void ring_post_msg(struct ring *r, struct ring_msg *m);
/* Same, allocating the message; any thread. Returns 0 (panics on OOM). */
int ring_post(struct ring *r, void (*fn)(void *arg), void *arg);

/* ---- timers (loop thread) ---- */
struct ring_timer {
  uint64_t deadline; /* monotonic ns */
  unsigned idx;      /* heap position + 1; 0 = not armed */
  void (*fn)(struct ring_timer *t);
};
/* Arm (or move) t to fire at deadline_ns; fn runs on the loop thread. */
void ring_timer_set(struct ring *r, struct ring_timer *t, uint64_t deadline_ns,
                    void (*fn)(struct ring_timer *t));
/* Disarm; no-op when not armed. */
void ring_timer_cancel(struct ring *r, struct ring_timer *t);
static inline bool ring_timer_armed(const struct ring_timer *t) { return t->idx != 0; }
/* Number of armed timers (tests, statistics). */
unsigned ring_timer_count(const struct ring *r);

/* ---- deferred work (loop thread) ----
 * Runs once, just before the loop next submits and waits: everything a
 * pass of completions produced is then flushed together (e.g. one send per
 * connection for the body's end and the next pipelined commands). */
struct ring_deferred {
  struct ring_deferred *next, *prev;
  void (*fn)(struct ring_deferred *d);
  bool queued;
};
/* Queue d (no-op when already queued); fn runs on the loop thread. */
void ring_defer(struct ring *r, struct ring_deferred *d, void (*fn)(struct ring_deferred *d));
/* Unqueue d; no-op when not queued. */
void ring_defer_cancel(struct ring *r, struct ring_deferred *d);
/* Run everything queued now (also done by ring_run_once). */
void ring_run_deferred(struct ring *r);

/* ---- operations (loop thread) ---- */
/* Completion callback: res is the CQE result (>= 0 or -errno). */
typedef void (*ring_op_fn)(void *owner, int res, unsigned cqe_flags);
/* A free SQE; when the queue is full it submits and retries here, the one
 * place that handles a full SQ. Panics only if the kernel refuses to make
 * room several times in a row (a bug or a wedged kernel). */
struct io_uring_sqe *ring_sqe(struct ring *r);
/* Give a prepared SQE its completion target. Returns the op id (the
 * user_data: slot index plus a generation tag). The slot lives until the
 * final CQE (no IORING_CQE_F_MORE). */
uint64_t ring_arm(struct ring *r, struct io_uring_sqe *sqe, ring_op_fn fn, void *owner);
/* Ask the kernel to cancel op `id`; its completion (usually -ECANCELED)
 * still arrives. No-op for an id already completed. */
void ring_op_cancel(struct ring *r, uint64_t id);
/* Cancel op `id` and drop its completion: for ops that reference no memory
 * of the owner (polls, timeouts). The slot's generation changes, so a late
 * completion for the reused slot is recognised and ignored. */
void ring_op_forget(struct ring *r, uint64_t id);
/* Ops in flight (tests, shutdown). */
unsigned ring_ops_inflight(const struct ring *r);

/* ---- provided receive buffers (RING_F_BUF_RING) ---- */
/* Address and size of provided buffer `bid` (from the CQE flags). */
uint8_t *ring_pool_buf(struct ring *r, unsigned bid);
unsigned ring_pool_size(const struct ring *r);
/* Give buffer `bid` back to the kernel once its bytes are consumed. */
void ring_pool_put(struct ring *r, unsigned bid);
