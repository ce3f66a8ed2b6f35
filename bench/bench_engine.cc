// Engine core micro-benchmarks: throttle buckets (lock-free CAS vs a
// mutex-protected bucket, 1 and 2 threads) and log record formatting.
// Prints figures; never fails on speed.
#include <benchmark/benchmark.h>
#include <mutex>

extern "C" {
#include "clock.h"
#include "logs.h"
#include "throttle.h"
}

static struct throttle g_bucket;
static std::mutex g_lock;
static uint64_t g_tat;

static void BM_throttle_cas(benchmark::State &st)
{
  if (st.thread_index() == 0) {
    struct throttle_spec s = {1000000000u, 1};
    throttle_init(&g_bucket, &s);
  }
  uint64_t now = 0;
  for (auto _ : st) {
    now += 3;
    benchmark::DoNotOptimize(throttle_take(&g_bucket, now));
  }
}
BENCHMARK(BM_throttle_cas)->Threads(1)->Threads(2);

// The alternative: the same GCRA decision under a mutex.
static void BM_throttle_mutex(benchmark::State &st)
{
  uint64_t now = 0;
  for (auto _ : st) {
    now += 3;
    std::lock_guard<std::mutex> g(g_lock);
    uint64_t w = 0;
    if (now < g_tat)
      w = g_tat - now;
    else
      g_tat = now + 1;
    benchmark::DoNotOptimize(w);
  }
}
BENCHMARK(BM_throttle_mutex)->Threads(1)->Threads(2);

static void BM_logs_delivery_record(benchmark::State &st)
{
  struct logs_config c = {};
  c.mainlog = "/dev/null";
  c.jsonlog = "/dev/null";
  char err[128];
  struct logs *l = logs_open(&c, err, sizeof err);
  struct logs_writer *w = logs_writer_new(l);
  struct logs_msg m = {};
  m.msgid = "0193A1B2C3D4E5F6.0";
  m.batchid = "0193A1B2C3D4E5F6";
  m.rcpt = "someone@example.com";
  m.sender = "bulk@sender.example";
  m.binding_group = "";
  m.binding = "default";
  m.size = 1024;
  struct logs_attempt a = {};
  a.conn_id = "42";
  a.remote_ip = "127.0.0.1";
  uint64_t i = 0;
  for (auto _ : st) {
    logs_delivery(w, 1700000000000ULL + i, &m, &a);
    if (++i % 64 == 0)
      logs_writer_flush(w);
  }
  logs_writer_free(w);
  logs_close(l);
}
BENCHMARK(BM_logs_delivery_record);

BENCHMARK_MAIN();
