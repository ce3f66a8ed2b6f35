// net micro-benchmarks: the ring's per-op, per-timer and per-post costs.
// End-to-end session figures come from bench/net/sessions (see README there).
#include <benchmark/benchmark.h>

#include <atomic>
#include <thread>

#include <liburing.h> // C++-aware on its own; must not sit inside extern "C"

extern "C" {
#include "clock.h"
#include "ring.h"
}

static struct ring *mk() {
  int err = 0;
  struct ring *r = ring_new(nullptr, &err);
  return r;
}

static long done_ops;
static void on_nop(void *, int, unsigned) { done_ops++; }

// NOP submit + completion round trips in batches of `range(0)`: the fixed
// cost the ring adds to every socket operation.
static void BM_ring_nop_batch(benchmark::State &st) {
  struct ring *r = mk();
  if (r == nullptr) {
    st.SkipWithError("no io_uring");
    return;
  }
  const long batch = st.range(0);
  for (auto _ : st) {
    done_ops = 0;
    for (long i = 0; i < batch; i++) {
      struct io_uring_sqe *sqe = ring_sqe(r);
      io_uring_prep_nop(sqe);
      ring_arm(r, sqe, on_nop, nullptr);
    }
    while (done_ops < batch)
      ring_run_once(r, 0);
  }
  st.SetItemsProcessed(st.iterations() * batch);
  ring_free(r);
}
BENCHMARK(BM_ring_nop_batch)->Arg(1)->Arg(64)->Arg(512);

static void on_timer(struct ring_timer *) {}

// Arming and moving a deadline among `range(0)` armed timers (what every
// session does on each state change).
static void BM_ring_timer_move(benchmark::State &st) {
  struct ring *r = mk();
  if (r == nullptr) {
    st.SkipWithError("no io_uring");
    return;
  }
  const long n = st.range(0);
  struct ring_timer *ts = new struct ring_timer[n]();
  uint64_t now = clock_mono_ns();
  for (long i = 0; i < n; i++)
    ring_timer_set(r, &ts[i], now + 1000000000ull * 3600 + (uint64_t)i * 7919 % 100000, on_timer);
  long i = 0;
  for (auto _ : st) {
    ring_timer_set(r, &ts[i], now + 1000000000ull * 3600 + (uint64_t)(i * 31337 % 100000), on_timer);
    if (++i == n)
      i = 0;
  }
  st.SetItemsProcessed(st.iterations());
  for (long k = 0; k < n; k++)
    ring_timer_cancel(r, &ts[k]);
  delete[] ts;
  ring_free(r);
}
BENCHMARK(BM_ring_timer_move)->Arg(100)->Arg(10000);

static long posted_ran;
static void on_msg(struct ring_msg *) { posted_ran++; }

// Cross-thread posts: another thread pushes, this loop drains.
static void BM_ring_post_cross_thread(benchmark::State &st) {
  struct ring *r = mk();
  if (r == nullptr) {
    st.SkipWithError("no io_uring");
    return;
  }
  const long batch = 10000;
  struct ring_msg *msgs = new struct ring_msg[batch]();
  for (auto _ : st) {
    posted_ran = 0;
    std::thread t([&] {
      for (long i = 0; i < batch; i++) {
        msgs[i].fn = on_msg;
        ring_post_msg(r, &msgs[i]);
      }
    });
    while (posted_ran < batch)
      ring_run_once(r, 1000000);
    t.join();
  }
  st.SetItemsProcessed(st.iterations() * batch);
  delete[] msgs;
  ring_free(r);
}
BENCHMARK(BM_ring_post_cross_thread);

BENCHMARK_MAIN();
