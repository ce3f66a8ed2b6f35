/* ring: owns one io_uring, its op slots, its timer heap, its provided
 * receive-buffer pool and its cross-thread inbox. ALL io_uring rules live
 * here (STYLE.md #12): set-up flags and feature probes, the one place a
 * full submission queue is handled, batched completion reaping, the
 * user_data encoding (slot index + generation).
 * Never logs, never blocks except in the loop's wait. Loop-thread only,
 * except ring_post / ring_post_msg / ring_stop (any thread). */
#include "ring.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "clock.h"
#include "panic.h"

/* user_data = generation << 32 | slot index. 0 is reserved for SQEs whose
 * completion nobody wants (cancels), and the generation of a live slot is
 * never 0, so a stale or internal completion never matches a slot. */
#define UD_NONE 0ull
#define UD_SLOT(ud) ((uint32_t)(ud))
#define UD_GEN(ud) ((uint32_t)((ud) >> 32))

struct slot {
  ring_op_fn fn;   /* NULL: free, or forgotten (completion dropped) */
  void *owner;
  uint32_t gen;    /* bumped on every allocation and on forget */
  uint32_t next_free;
  bool busy;
};

struct posted {
  struct ring_msg msg;
  void (*fn)(void *arg);
  void *arg;
};

struct ring {
  struct io_uring uring;
  unsigned features;
  uint64_t now;
  atomic_bool stop;

  struct slot *slots;
  uint32_t nslots, free_head, inflight; /* free_head: index + 1; 0 = none */

  struct ring_timer **heap;
  unsigned nheap, heapcap;

  struct ring_deferred *deferred; /* ring_defer's list, newest first */

  /* cross-thread inbox: producers push then set `wake` and write efd
   * only if it was clear; the loop clears `wake` before draining. */
  struct mpsc inbox;
  atomic_int wake;
  int efd;
  uint64_t efd_val;

  /* provided buffer ring */
  struct io_uring_buf_ring *br;
  size_t br_bytes;
  uint8_t *pool;
  unsigned pool_n, pool_size;
};

/* ------------------------------------------------------------ features */

unsigned ring_features(const struct ring *r) { return r->features; }

const char *ring_features_text(unsigned f, char *out, unsigned outlen) {
  static const char *const names[] = {"single_issuer", "coop_taskrun", "defer_taskrun",
                                      "ext_arg", "buf_ring", "recv_multishot", "send_zc"};
  size_t o = 0;
  out[0] = 0;
  for (unsigned i = 0; i < UTIL_ARRAY_LEN(names); i++)
    if (f & (1u << i)) {
      int n = snprintf(out + o, outlen - o, "%s%s", o ? " " : "", names[i]);
      if (n < 0 || (size_t)n >= outlen - o)
        break;
      o += (size_t)n;
    }
  return out;
}

/* Set-up flags, most capable first. DEFER_TASKRUN (6.1) runs completion
 * work only when we enter the kernel to wait, which suits one thread per
 * ring; it needs SINGLE_ISSUER (6.0). COOP_TASKRUN (5.19) avoids IPIs to
 * interrupt the thread for task work. Older kernels reject unknown flags
 * with EINVAL, so each is tried and dropped in turn. */
static int ring_setup(struct ring *r, unsigned entries, bool no_optional) {
  static const struct { unsigned flags, feat; } tries[] = {
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
     RING_F_SINGLE_ISSUER | RING_F_DEFER_TASKRUN},
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
     RING_F_SINGLE_ISSUER | RING_F_COOP_TASKRUN},
    {IORING_SETUP_COOP_TASKRUN, RING_F_COOP_TASKRUN},
    {0, 0},
  };
  int rc = -EINVAL;
  for (unsigned i = no_optional ? UTIL_ARRAY_LEN(tries) - 1 : 0; i < UTIL_ARRAY_LEN(tries); i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    /* A CQ four times the SQ: completions for many in-flight ops
     * (thousands of pending recvs) rarely overflow; with FEAT_NODROP an
     * overflow is kept by the kernel anyway. */
    p.flags = tries[i].flags | IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    rc = io_uring_queue_init_params(entries, &r->uring, &p);
    if (rc == 0) {
      r->features |= tries[i].feat;
      if (!no_optional && (p.features & IORING_FEAT_EXT_ARG))
        r->features |= RING_F_EXT_ARG;
      return 0;
    }
    if (rc != -EINVAL)
      return rc;
  }
  return rc;
}

/* Provided buffer ring (5.19): receives draw from one shared pool, so an
 * idle session waiting for a reply holds no receive buffer at all; that
 * is what makes ten thousand sessions per worker cheap. Without it each
 * conn keeps its own buffer (see conn.c). */
static void ring_setup_pool(struct ring *r, unsigned n, unsigned size) {
  long page = sysconf(_SC_PAGESIZE);
  size_t bytes = ((n * sizeof(struct io_uring_buf)) + (size_t)page - 1) & ~((size_t)page - 1);
  void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED)
    return;
  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = (unsigned long)mem;
  reg.ring_entries = n;
  reg.bgid = RING_POOL_GROUP;
  if (io_uring_register_buf_ring(&r->uring, &reg, 0) != 0) {
    munmap(mem, bytes);
    return;
  }
  r->br = mem;
  r->br_bytes = bytes;
  /* The pool is fixed, and every buffer of it is used in turn (the buffer
   * ring hands them out in order): populated now, in one system call, it
   * does not take a page fault per 4 KB during the first round of
   * receives (on a virtual machine a fault costs several microseconds). */
  void *pool = mmap(NULL, (size_t)n * size, PROT_READ | PROT_WRITE,
                    MAP_ANONYMOUS | MAP_PRIVATE | MAP_POPULATE, -1, 0);
  if (pool == MAP_FAILED) {
    (void)io_uring_unregister_buf_ring(&r->uring, RING_POOL_GROUP);
    munmap(mem, bytes);
    r->br = NULL;
    return;
  }
  r->pool_n = n;
  r->pool_size = size;
  r->pool = pool;
  io_uring_buf_ring_init(r->br);
  for (unsigned i = 0; i < n; i++)
    io_uring_buf_ring_add(r->br, r->pool + (size_t)i * size, size, (unsigned short)i,
                          io_uring_buf_ring_mask(n), (int)i);
  io_uring_buf_ring_advance(r->br, (int)n);
  r->features |= RING_F_BUF_RING;
}

/* Opcode probe. Multishot recv is a flag, not an opcode, so the probe
 * cannot see it; it arrived in the same release (6.0) as IORING_OP_SEND_ZC,
 * which the probe can see, and needs the buffer ring. SEND_ZC is reported
 * but conn does not use it: SMTP writes are small (commands, 4-16 KB body
 * chunks) and zero-copy only pays above tens of KB while costing a second
 * (notification) completion per send. */
static void ring_probe_ops(struct ring *r) {
  struct io_uring_probe *pr = io_uring_get_probe_ring(&r->uring);
  if (pr == NULL)
    return;
  if (io_uring_opcode_supported(pr, IORING_OP_SEND_ZC)) {
    r->features |= RING_F_SEND_ZC;
    if (r->features & RING_F_BUF_RING)
      r->features |= RING_F_RECV_MULTISHOT;
  }
  io_uring_free_probe(pr);
}

/* ------------------------------------------------------------ ops */

static void on_efd(void *owner, int res, unsigned flags);

struct io_uring_sqe *ring_sqe(struct ring *r) {
  for (int tries = 0; tries < 8; tries++) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
    if (sqe != NULL)
      return sqe;
    /* Full SQ: hand what we have to the kernel and retry. EBUSY/EAGAIN
     * mean the CQ overflowed; the kernel keeps the overflow (FEAT_NODROP)
     * and the next reap drains it, so just try again. */
    int rc = io_uring_submit(&r->uring);
    if (rc < 0 && rc != -EBUSY && rc != -EAGAIN && rc != -EINTR)
      util_panic("ring: io_uring_submit: %s", strerror(-rc));
  }
  util_panic("ring: submission queue stays full");
}

uint64_t ring_arm(struct ring *r, struct io_uring_sqe *sqe, ring_op_fn fn, void *owner) {
  if (r->free_head == 0) {
    uint32_t n = r->nslots ? r->nslots * 2 : 256;
    r->slots = util_xrealloc(r->slots, n * sizeof *r->slots);
    for (uint32_t i = r->nslots; i < n; i++) {
      r->slots[i] = (struct slot){.gen = 0, .next_free = i + 1 < n ? i + 2 : 0};
    }
    r->free_head = r->nslots + 1;
    r->nslots = n;
  }
  uint32_t idx = r->free_head - 1;
  struct slot *s = &r->slots[idx];
  r->free_head = s->next_free;
  s->gen++;
  if (s->gen == 0)
    s->gen = 1;
  s->fn = fn;
  s->owner = owner;
  s->busy = true;
  r->inflight++;
  uint64_t id = ((uint64_t)s->gen << 32) | idx;
  io_uring_sqe_set_data64(sqe, id);
  return id;
}

static struct slot *slot_of(struct ring *r, uint64_t id) {
  uint32_t idx = UD_SLOT(id);
  if (id == UD_NONE || idx >= r->nslots)
    return NULL;
  struct slot *s = &r->slots[idx];
  if (!s->busy || s->gen != UD_GEN(id))
    return NULL;
  return s;
}

static void slot_release(struct ring *r, struct slot *s) {
  s->busy = false;
  s->fn = NULL;
  s->owner = NULL;
  s->next_free = r->free_head;
  r->free_head = (uint32_t)(s - r->slots) + 1;
  r->inflight--;
}

void ring_op_cancel(struct ring *r, uint64_t id) {
  if (slot_of(r, id) == NULL)
    return;
  struct io_uring_sqe *sqe = ring_sqe(r);
  io_uring_prep_cancel64(sqe, id, 0);
  io_uring_sqe_set_data64(sqe, UD_NONE);
}

void ring_op_forget(struct ring *r, uint64_t id) {
  struct slot *s = slot_of(r, id);
  if (s == NULL)
    return;
  ring_op_cancel(r, id);
  /* The slot goes back to the free list now; its generation moves on at
   * the next allocation, so the late CQE carrying the old id is dropped. */
  slot_release(r, s);
}

unsigned ring_ops_inflight(const struct ring *r) { return r->inflight; }

/* ------------------------------------------------------------ pool */

uint8_t *ring_pool_buf(struct ring *r, unsigned bid) {
  UTIL_ASSERT(bid < r->pool_n);
  return r->pool + (size_t)bid * r->pool_size;
}

unsigned ring_pool_size(const struct ring *r) { return r->pool_size; }

void ring_pool_put(struct ring *r, unsigned bid) {
  UTIL_ASSERT(bid < r->pool_n);
  io_uring_buf_ring_add(r->br, ring_pool_buf(r, bid), r->pool_size, (unsigned short)bid,
                        io_uring_buf_ring_mask(r->pool_n), 0);
  io_uring_buf_ring_advance(r->br, 1);
}

/* ------------------------------------------------------------ timers */

static void heap_swap(struct ring *r, unsigned a, unsigned b) {
  struct ring_timer *t = r->heap[a];
  r->heap[a] = r->heap[b];
  r->heap[b] = t;
  r->heap[a]->idx = a + 1;
  r->heap[b]->idx = b + 1;
}

static void heap_up(struct ring *r, unsigned i) {
  while (i > 0) {
    unsigned p = (i - 1) / 2;
    if (r->heap[p]->deadline <= r->heap[i]->deadline)
      break;
    heap_swap(r, i, p);
    i = p;
  }
}

static void heap_down(struct ring *r, unsigned i) {
  for (;;) {
    unsigned l = 2 * i + 1, m = i;
    if (l < r->nheap && r->heap[l]->deadline < r->heap[m]->deadline)
      m = l;
    if (l + 1 < r->nheap && r->heap[l + 1]->deadline < r->heap[m]->deadline)
      m = l + 1;
    if (m == i)
      return;
    heap_swap(r, i, m);
    i = m;
  }
}

void ring_timer_cancel(struct ring *r, struct ring_timer *t) {
  if (t->idx == 0)
    return;
  unsigned i = t->idx - 1;
  UTIL_ASSERT(i < r->nheap && r->heap[i] == t);
  r->nheap--;
  if (i != r->nheap) {
    r->heap[i] = r->heap[r->nheap];
    r->heap[i]->idx = i + 1;
    heap_down(r, i);
    heap_up(r, i);
  }
  t->idx = 0;
}

void ring_timer_set(struct ring *r, struct ring_timer *t, uint64_t deadline_ns,
                    void (*fn)(struct ring_timer *t)) {
  ring_timer_cancel(r, t);
  t->deadline = deadline_ns;
  t->fn = fn;
  if (r->nheap == r->heapcap) {
    r->heapcap = r->heapcap ? r->heapcap * 2 : 256;
    r->heap = util_xrealloc(r->heap, r->heapcap * sizeof *r->heap);
  }
  r->heap[r->nheap] = t;
  t->idx = ++r->nheap;
  heap_up(r, r->nheap - 1);
}

unsigned ring_timer_count(const struct ring *r) { return r->nheap; }

static int run_timers(struct ring *r) {
  int n = 0;
  /* Bounded by the timers due now: a callback re-arming for "now" would
   * otherwise spin; those fire on the next iteration. */
  uint64_t now = r->now;
  unsigned budget = r->nheap;
  while (r->nheap > 0 && r->heap[0]->deadline <= now && budget-- > 0) {
    struct ring_timer *t = r->heap[0];
    ring_timer_cancel(r, t);
    t->fn(t);
    n++;
  }
  return n;
}

/* ------------------------------------------------------------ inbox */

static void arm_efd(struct ring *r) {
  struct io_uring_sqe *sqe = ring_sqe(r);
  io_uring_prep_read(sqe, r->efd, &r->efd_val, sizeof r->efd_val, 0);
  ring_arm(r, sqe, on_efd, r);
}

static int drain_inbox(struct ring *r) {
  int n = 0;
  struct mpsc_node *node;
  while ((node = mpsc_pop(&r->inbox)) != NULL) {
    struct ring_msg *m = (struct ring_msg *)((char *)node - offsetof(struct ring_msg, node));
    m->fn(m);
    n++;
  }
  return n;
}

static void on_efd(void *owner, int res, unsigned flags) {
  struct ring *r = owner;
  (void)flags;
  atomic_store_explicit(&r->wake, 0, memory_order_seq_cst);
  if (res != -ECANCELED)
    arm_efd(r);
  drain_inbox(r);
}

void ring_post_msg(struct ring *r, struct ring_msg *m) {
  mpsc_push(&r->inbox, &m->node);
  if (atomic_exchange_explicit(&r->wake, 1, memory_order_seq_cst) == 0) {
    uint64_t one = 1;
    ssize_t w = write(r->efd, &one, sizeof one);
    (void)w; /* EAGAIN: the counter is saturated, so a wake-up is pending */
  }
}

static void run_posted(struct ring_msg *m) {
  struct posted *p = (struct posted *)m;
  void (*fn)(void *) = p->fn;
  void *arg = p->arg;
  free(p);
  fn(arg);
}

int ring_post(struct ring *r, void (*fn)(void *arg), void *arg) {
  struct posted *p = util_xmalloc(sizeof *p);
  p->msg.fn = run_posted;
  p->fn = fn;
  p->arg = arg;
  ring_post_msg(r, &p->msg);
  return 0;
}

/* ------------------------------------------------------------ loop */

struct ring *ring_new(const struct ring_params *p, int *err) {
  struct ring_params dp = {0};
  if (p == NULL)
    p = &dp;
  unsigned entries = p->entries ? p->entries : 1024;
  unsigned pool_n = p->pool_bufs ? p->pool_bufs : 1024;
  unsigned pool_size = p->pool_size ? p->pool_size : 4096;
  if (pool_n & (pool_n - 1) || pool_n > 32768) {
    *err = -EINVAL;
    return NULL;
  }
  struct ring *r = util_xcalloc(1, sizeof *r);
  int rc = ring_setup(r, entries, p->no_optional);
  if (rc < 0) {
    free(r);
    *err = rc;
    return NULL;
  }
  r->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (r->efd < 0) {
    *err = -errno;
    io_uring_queue_exit(&r->uring);
    free(r);
    return NULL;
  }
  if (!p->no_optional && !(p->disable & RING_F_BUF_RING)) {
    ring_setup_pool(r, pool_n, pool_size);
    ring_probe_ops(r);
  }
  r->features &= ~(p->disable & (RING_F_RECV_MULTISHOT | RING_F_SEND_ZC));
  mpsc_init(&r->inbox);
  r->now = clock_mono_ns();
  arm_efd(r);
  return r;
}

void ring_free(struct ring *r) {
  if (r == NULL)
    return;
  io_uring_queue_exit(&r->uring);
  close(r->efd);
  if (r->br != NULL)
    munmap(r->br, r->br_bytes);
  if (r->pool != NULL)
    munmap(r->pool, (size_t)r->pool_n * r->pool_size);
  free(r->slots);
  for (unsigned i = 0; i < r->nheap; i++)
    r->heap[i]->idx = 0;
  free(r->heap);
  /* Messages still posted are dropped; allocated ones are freed. */
  struct mpsc_node *node;
  while ((node = mpsc_pop(&r->inbox)) != NULL) {
    struct ring_msg *m = (struct ring_msg *)((char *)node - offsetof(struct ring_msg, node));
    if (m->fn == run_posted)
      free(m);
  }
  free(r);
}

uint64_t ring_now(const struct ring *r) { return r->now; }

void ring_stop(struct ring *r) {
  atomic_store(&r->stop, true);
  if (atomic_exchange_explicit(&r->wake, 1, memory_order_seq_cst) == 0) {
    uint64_t one = 1;
    ssize_t w = write(r->efd, &one, sizeof one);
    (void)w;
  }
}

/* Reap in batches: copy up to REAP_BATCH CQEs out and advance the CQ head
 * before dispatching, so callbacks that submit more work find room in the
 * CQ and a slow callback never holds kernel completions hostage. */
#define REAP_BATCH 64

static int reap(struct ring *r) {
  struct { uint64_t ud; int res; unsigned flags; } batch[REAP_BATCH];
  int total = 0;
  for (;;) {
    unsigned head, n = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&r->uring, head, cqe) {
      batch[n].ud = cqe->user_data;
      batch[n].res = cqe->res;
      batch[n].flags = cqe->flags;
      if (++n == REAP_BATCH)
        break;
    }
    if (n == 0)
      return total;
    io_uring_cq_advance(&r->uring, n);
    for (unsigned i = 0; i < n; i++) {
      struct slot *s = slot_of(r, batch[i].ud);
      if (s == NULL) {
        /* Stale (forgotten op, reused slot) or internal: if it carried a
         * provided buffer, give it back. */
        if (batch[i].flags & IORING_CQE_F_BUFFER)
          ring_pool_put(r, batch[i].flags >> IORING_CQE_BUFFER_SHIFT);
        continue;
      }
      ring_op_fn fn = s->fn;
      void *owner = s->owner;
      if (!(batch[i].flags & IORING_CQE_F_MORE))
        slot_release(r, s);
      fn(owner, batch[i].res, batch[i].flags);
      total++;
    }
  }
}

void ring_defer(struct ring *r, struct ring_deferred *d, void (*fn)(struct ring_deferred *d)) {
  d->fn = fn;
  if (d->queued)
    return;
  d->queued = true;
  d->prev = NULL;
  d->next = r->deferred;
  if (r->deferred)
    r->deferred->prev = d;
  r->deferred = d;
}

void ring_defer_cancel(struct ring *r, struct ring_deferred *d) {
  if (!d->queued)
    return;
  if (d->prev)
    d->prev->next = d->next;
  else
    r->deferred = d->next;
  if (d->next)
    d->next->prev = d->prev;
  d->queued = false;
  d->next = d->prev = NULL;
}

void ring_run_deferred(struct ring *r) {
  /* a callback may queue more (itself included): run until empty */
  for (int guard = 0; r->deferred != NULL; guard++) {
    if (guard > 1000000)
      util_panic("ring: deferred work keeps requeueing itself");
    struct ring_deferred *d = r->deferred;
    ring_defer_cancel(r, d);
    d->fn(d);
  }
}

int ring_run_once(struct ring *r, int64_t timeout_ns) {
  ring_run_deferred(r);
  r->now = clock_mono_ns();
  int64_t wait = timeout_ns;
  if (r->nheap > 0) {
    uint64_t d = r->heap[0]->deadline;
    int64_t until = d > r->now ? (int64_t)(d - r->now) : 0;
    if (wait < 0 || until < wait)
      wait = until;
  }
  if (atomic_load_explicit(&r->stop, memory_order_relaxed))
    wait = 0;
  struct io_uring_cqe *cqe = NULL;
  int rc;
  if (wait < 0) {
    rc = io_uring_submit_and_wait(&r->uring, 1);
  } else {
    /* The nearest timer deadline is the wait's timeout: with EXT_ARG
     * (5.11) the kernel takes it as an argument of io_uring_enter, without
     * it liburing queues one internal IORING_OP_TIMEOUT. Either way the
     * whole heap costs at most one kernel timer. */
    struct __kernel_timespec ts = {.tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000};
    rc = io_uring_submit_and_wait_timeout(&r->uring, &cqe, 1, &ts, NULL);
  }
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
    return rc;
  r->now = clock_mono_ns();
  int n = reap(r);
  n += run_timers(r);
  n += drain_inbox(r);
  if (r->deferred != NULL)
    n++; /* work is pending: the caller's loop comes back at once */
  return n;
}

int ring_run(struct ring *r) {
  while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
    int rc = ring_run_once(r, -1);
    if (rc < 0)
      return rc;
  }
  atomic_store(&r->stop, false);
  return 0;
}
