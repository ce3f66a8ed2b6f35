/* ring: timers, cross-thread posts, generation tags, full SQ, fallbacks. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sched.h>
#include <stdatomic.h>

#include "clock.h"
#include "ring.h"

static struct ring *mk(bool no_optional) {
  int err = 0;
  struct ring_params p = {.entries = 64, .no_optional = no_optional};
  struct ring *r = ring_new(&p, &err);
  if (r == NULL) {
    printf("SKIP: io_uring unavailable: %s\n", strerror(-err));
    exit(77);
  }
  return r;
}

/* ---- timers fire in deadline order, cancel works, heap survives churn */
static int order[16], norder;
struct tt { struct ring_timer t; int id; };
static void on_t(struct ring_timer *t) { order[norder++] = ((struct tt *)t)->id; }

static void test_timers(void **state) {
  (void)state;
  struct ring *r = mk(false);
  struct tt ts[5];
  uint64_t now = ring_now(r);
  int ms[5] = {40, 10, 30, 20, 50};
  for (int i = 0; i < 5; i++) {
    memset(&ts[i], 0, sizeof ts[i]);
    ts[i].id = i;
    ring_timer_set(r, &ts[i].t, now + (uint64_t)ms[i] * 1000000, on_t);
  }
  ring_timer_cancel(r, &ts[2].t); /* 30 ms one */
  assert_false(ring_timer_armed(&ts[2].t));
  assert_int_equal(ring_timer_count(r), 4);
  norder = 0;
  uint64_t end = clock_mono_ns() + 2000000000ull;
  while (norder < 4 && clock_mono_ns() < end)
    assert_true(ring_run_once(r, -1) >= 0);
  assert_int_equal(norder, 4);
  assert_int_equal(order[0], 1);
  assert_int_equal(order[1], 3);
  assert_int_equal(order[2], 0);
  assert_int_equal(order[3], 4);
  assert_true(clock_mono_ns() - now >= 50000000ull);
  ring_free(r);
}

/* Many timers: pseudo-random deadlines, random cancels, all fire in order. */
static uint64_t last_deadline;
static int fired, misorder;
static void on_many(struct ring_timer *t) {
  if (t->deadline < last_deadline)
    misorder++;
  last_deadline = t->deadline;
  fired++;
}

/* ---- deferred work: runs once per queueing, before the loop waits,
 * cancel works, a callback may queue more */
struct dw { struct ring_deferred d; struct ring *r; int runs; int requeue; };
static void on_dw(struct ring_deferred *d) {
  struct dw *w = (struct dw *)d;
  w->runs++;
  if (w->requeue-- > 0)
    ring_defer(w->r, d, on_dw);
}

static void test_deferred(void **state) {
  (void)state;
  struct ring *r = mk(false);
  struct dw a = {.r = r}, b = {.r = r}, c = {.r = r, .requeue = 2};
  ring_defer(r, &a.d, on_dw);
  ring_defer(r, &a.d, on_dw); /* already queued: once */
  ring_defer(r, &b.d, on_dw);
  ring_defer(r, &c.d, on_dw);
  ring_defer_cancel(r, &b.d);
  ring_defer_cancel(r, &b.d); /* not queued: no-op */
  assert_int_equal(a.runs + b.runs + c.runs, 0);
  /* with nothing else to do, ring_run_once(-1) would block: the deferred
   * work must run before it waits; a timer 20 ms out bounds the test */
  struct tt t;
  memset(&t, 0, sizeof t);
  norder = 0;
  ring_timer_set(r, &t.t, ring_now(r) + 20000000, on_t);
  assert_true(ring_run_once(r, -1) >= 0);
  assert_int_equal(a.runs, 1);
  assert_int_equal(b.runs, 0);
  assert_int_equal(c.runs, 3); /* ran, then requeued itself twice */
  assert_false(a.d.queued || c.d.queued);
  ring_timer_cancel(r, &t.t);
  ring_free(r);
}

static void test_timer_heap(void **state) {
  (void)state;
  struct ring *r = mk(false);
  enum { N = 5000 };
  struct ring_timer *ts = calloc(N, sizeof *ts);
  uint64_t now = ring_now(r);
  uint32_t x = 12345;
  for (int i = 0; i < N; i++) {
    x = x * 1103515245 + 12345;
    ring_timer_set(r, &ts[i], now + (x % 50) * 1000000ull, on_many);
  }
  int cancelled = 0;
  for (int i = 0; i < N; i += 7) {
    ring_timer_cancel(r, &ts[i]);
    cancelled++;
  }
  /* re-arming moves a timer */
  ring_timer_set(r, &ts[1], now + 1000000ull, on_many);
  fired = misorder = 0;
  last_deadline = 0;
  uint64_t end = clock_mono_ns() + 2000000000ull;
  while (ring_timer_count(r) > 0 && clock_mono_ns() < end)
    assert_true(ring_run_once(r, -1) >= 0);
  assert_int_equal(fired, N - cancelled);
  assert_int_equal(misorder, 0);
  free(ts);
  ring_free(r);
}

/* ---- posts from other threads all run on the loop thread */
enum { THREADS = 4, PER = 20000 };
static _Atomic int ran;
static pthread_t loop_thread;
static int wrong_thread;
struct poster { struct ring *r; struct ring_msg *msgs; };
static void on_msg(struct ring_msg *m) {
  (void)m;
  if (!pthread_equal(pthread_self(), loop_thread))
    wrong_thread++;
  ran++;
}
static void on_post(void *arg) {
  (void)arg;
  if (!pthread_equal(pthread_self(), loop_thread))
    wrong_thread++;
  ran++;
}
static void *post_thread(void *arg) {
  struct poster *p = arg;
  for (int i = 0; i < PER; i++) {
    if (i % 2) {
      p->msgs[i].fn = on_msg;
      ring_post_msg(p->r, &p->msgs[i]);
    } else {
      ring_post(p->r, on_post, NULL);
    }
  }
  return NULL;
}

static void test_post(void **state) {
  (void)state;
  struct ring *r = mk(false);
  loop_thread = pthread_self();
  ran = 0;
  pthread_t th[THREADS];
  struct poster ps[THREADS];
  for (int i = 0; i < THREADS; i++) {
    ps[i].r = r;
    ps[i].msgs = calloc(PER, sizeof(struct ring_msg));
    pthread_create(&th[i], NULL, post_thread, &ps[i]);
  }
  uint64_t end = clock_mono_ns() + 10000000000ull;
  /* An infinite wait: only the eventfd wake-up can end it. */
  while (ran < THREADS * PER && clock_mono_ns() < end)
    assert_true(ring_run_once(r, -1) >= 0);
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    free(ps[i].msgs);
  }
  assert_int_equal(ran, THREADS * PER);
  assert_int_equal(wrong_thread, 0);
  ring_free(r);
}

/* The stopper waits until the loop has run a callback it posted (so the
 * loop is inside ring_run), then stops it from its own thread. */
static atomic_int loop_running;
static void mark_running(void *arg) { (void)arg; atomic_store(&loop_running, 1); }

static void *stopper(void *arg) {
  uint64_t end = clock_mono_ns() + 5000000000ull;
  if (ring_post(arg, mark_running, NULL) < 0)
    return NULL; /* test_stop then hangs in ring_run and meson times it out */
  while (!atomic_load(&loop_running) && clock_mono_ns() < end)
    sched_yield();
  ring_stop(arg);
  return NULL;
}

static void test_stop(void **state) {
  (void)state;
  struct ring *r = mk(false);
  pthread_t th;
  pthread_create(&th, NULL, stopper, r);
  assert_int_equal(ring_run(r), 0); /* returns only because of ring_stop */
  pthread_join(th, NULL);
  ring_free(r);
}

/* ---- generation tags: a forgotten op's completion is not delivered,
 * even though its slot was reused by a new op. */
static int got_a, got_b, res_b;
static void on_a(void *o, int res, unsigned f) { (void)o; (void)res; (void)f; got_a++; }
static void on_b(void *o, int res, unsigned f) { (void)o; (void)f; got_b++; res_b = res; }

static void test_generation(void **state) {
  (void)state;
  struct ring *r = mk(false);
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  char c;
  /* A read that will never complete on its own. */
  struct io_uring_sqe *sqe = ring_sqe(r);
  io_uring_prep_read(sqe, pfd[0], &c, 1, 0);
  uint64_t id_a = ring_arm(r, sqe, on_a, NULL);
  ring_run_once(r, 0);
  ring_op_forget(r, id_a);
  /* The next op takes the same slot with a new generation. */
  sqe = ring_sqe(r);
  io_uring_prep_nop(sqe);
  uint64_t id_b = ring_arm(r, sqe, on_b, NULL);
  assert_int_equal((uint32_t)id_a, (uint32_t)id_b);
  assert_int_not_equal(id_a >> 32, id_b >> 32);
  uint64_t end = clock_mono_ns() + 2000000000ull;
  while (got_b == 0 && clock_mono_ns() < end)
    ring_run_once(r, 100000000);
  for (int i = 0; i < 5; i++)
    ring_run_once(r, 10000000); /* let the cancelled read's CQE arrive */
  assert_int_equal(got_a, 0);
  assert_int_equal(got_b, 1);
  assert_int_equal(res_b, 0);
  close(pfd[0]);
  close(pfd[1]);
  ring_free(r);
}

/* ---- more SQEs than the SQ holds: ring_sqe submits and retries */
static int nops;
static void on_nop(void *o, int res, unsigned f) { (void)o; (void)f; if (res == 0) nops++; }

static void full_sq(bool no_optional) {
  struct ring *r = mk(no_optional);
  nops = 0;
  for (int i = 0; i < 1000; i++) {
    struct io_uring_sqe *sqe = ring_sqe(r);
    io_uring_prep_nop(sqe);
    ring_arm(r, sqe, on_nop, NULL);
  }
  uint64_t end = clock_mono_ns() + 2000000000ull;
  while (nops < 1000 && clock_mono_ns() < end)
    ring_run_once(r, 10000000);
  assert_int_equal(nops, 1000);
  assert_int_equal(ring_ops_inflight(r), 1); /* the eventfd read */
  ring_free(r);
}
static void test_full_sq(void **state) { (void)state; full_sq(false); }
static void test_fallback(void **state) {
  (void)state;
  full_sq(true);
  struct ring *r = mk(true);
  assert_int_equal(ring_features(r), 0);
  ring_free(r);
  r = mk(false);
  char txt[128];
  printf("# ring features: %s\n", ring_features_text(ring_features(r), txt, sizeof txt));
  ring_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_deferred), cmocka_unit_test(test_timers),
    cmocka_unit_test(test_timer_heap),
    cmocka_unit_test(test_post),     cmocka_unit_test(test_stop),
    cmocka_unit_test(test_generation), cmocka_unit_test(test_full_sq),
    cmocka_unit_test(test_fallback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
