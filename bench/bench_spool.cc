// Micro-benchmarks for the spool area: pickup parsing, context-dictionary
// get/set (one thread, and shared by concurrent readers), dictionary
// (de)serialisation, and reading dictionaries back
// from a spooled message versus keeping them resident.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "ctx.h"
#include "spool.h"
}

static std::string pickup_message(int nrcpt)
{
  std::string s = "x-sender: <bulk@sender.example>\n";
  for (int i = 0; i < nrcpt; i++)
    s += "x-receiver: <user" + std::to_string(i) + "@rcpt.example>\n";
  s += "x-context: campaign=spring\nFrom: Bulk <bulk@sender.example>\n"
       "To: <user0@rcpt.example>\nSubject: a 1 KB test message\n"
       "Message-ID: <1@sender.example>\nMIME-Version: 1.0\n\n";
  while (s.size() < 1024)
    s += "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n";
  return s;
}

static void BM_PickupParse(benchmark::State &state)
{
  std::string m = pickup_message((int)state.range(0));
  char why[256];
  for (auto _ : state) {
    struct msg_envelope env;
    int r = msg_parse(m.data(), m.size(), &env, why, sizeof(why));
    benchmark::DoNotOptimize(r);
    msg_envelope_done(&env);
  }
  state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)m.size());
}
BENCHMARK(BM_PickupParse)->Arg(1)->Arg(10)->Arg(100);

static void BM_AddrCheck(benchmark::State &state)
{
  const char *a = "first.last+tag@mail.subdomain.example.com";
  size_t n = strlen(a);
  for (auto _ : state)
    benchmark::DoNotOptimize(msg_addr_check(a, n));
}
BENCHMARK(BM_AddrCheck);

static struct ctx *filled(int n)
{
  struct ctx *c = ctx_new();
  char k[32], v[64];
  for (int i = 0; i < n; i++) {
    snprintf(k, sizeof(k), "key_%d", i);
    snprintf(v, sizeof(v), "value number %d for the context", i);
    ctx_set(c, k, v);
  }
  return c;
}

static void BM_CtxGet(benchmark::State &state)
{
  int n = (int)state.range(0);
  struct ctx *c = filled(n);
  std::vector<std::string> keys;
  for (int i = 0; i < n; i++)
    keys.push_back("key_" + std::to_string(i));
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(ctx_get(c, keys[i].c_str()));
    if (++i == keys.size())
      i = 0;
  }
  ctx_free(c);
}
BENCHMARK(BM_CtxGet)->Arg(8)->Arg(64);

static void BM_CtxGetMissing(benchmark::State &state)
{
  struct ctx *c = filled(16);
  for (auto _ : state)
    benchmark::DoNotOptimize(ctx_get(c, "outbound_smtp_auth_user"));
  ctx_free(c);
}
BENCHMARK(BM_CtxGetMissing);

// One dictionary read by every thread at once (1 and 2 threads): reads
// take no lock and write nothing shared, so they should not slow each
// other down. With writer = 1 thread 0 replaces a value on every
// iteration while the others read (the concurrency ctx.h allows: one
// writer, any number of readers); the retired entries are freed when the
// dictionary is, after the run, so the iterations are bounded.
static struct ctx *g_shared;
static void BM_CtxGetConcurrent(benchmark::State &state)
{
  bool writer = state.range(0) != 0 && state.thread_index() == 0;
  if (state.thread_index() == 0)
    g_shared = filled(64);
  std::vector<std::string> keys;
  for (int i = 0; i < 64; i++)
    keys.push_back("key_" + std::to_string(i));
  size_t i = (size_t)state.thread_index() * 17;
  for (auto _ : state) {
    if (writer)
      ctx_set(g_shared, "key_3", (i & 1) ? "a new value" : "another value");
    else
      benchmark::DoNotOptimize(ctx_get(g_shared, keys[i % keys.size()].c_str()));
    i++;
  }
  if (state.thread_index() == 0)
    state.SetLabel(writer ? "thread 0 writes, the others read" : "all threads read");
  // google-benchmark waits for every thread at the end of the loop
  if (state.thread_index() == 0) {
    ctx_free(g_shared);
    g_shared = nullptr;
  }
}
BENCHMARK(BM_CtxGetConcurrent)->Arg(0)->Threads(1)->Threads(2);
BENCHMARK(BM_CtxGetConcurrent)->Arg(1)->Threads(2)->Iterations(1000000);

// Replace a value (allocates the new immutable entry; the old one is
// retired and freed at the quiescent point every 64 writes).
static void BM_CtxSet(benchmark::State &state)
{
  struct ctx *c = filled(16);
  int i = 0;
  for (auto _ : state) {
    ctx_set(c, "key_3", "a new value");
    if ((++i & 63) == 0)
      ctx_quiesce(c);
  }
  ctx_free(c);
}
BENCHMARK(BM_CtxSet);

static void BM_CtxSerialize(benchmark::State &state)
{
  struct ctx *c = filled((int)state.range(0));
  struct buf b = {};
  for (auto _ : state) {
    b.len = 0;
    benchmark::DoNotOptimize(ctx_serialize(c, &b));
  }
  state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)b.len);
  buf_done(&b, 0);
  ctx_free(c);
}
BENCHMARK(BM_CtxSerialize)->Arg(4)->Arg(32);

static void BM_CtxDeserialize(benchmark::State &state)
{
  struct ctx *c = filled((int)state.range(0));
  struct buf b = {};
  ctx_serialize(c, &b);
  for (auto _ : state) {
    struct ctx *d = ctx_new();
    benchmark::DoNotOptimize(ctx_deserialize(d, b.data, b.len));
    ctx_free(d);
  }
  state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)b.len);
  buf_done(&b, 0);
  ctx_free(c);
}
BENCHMARK(BM_CtxDeserialize)->Arg(4)->Arg(32);

// Keep_Message_Dicts_In_Memory = false vs true: the cost of reaching a
// message's VCTX_MESS when a hook needs it.
static std::vector<struct spool_msg *> g_msgs;
static void keep_msg(void *, struct spool_msg *m) { g_msgs.push_back(m); }

static void BM_DictsReadBack(benchmark::State &state)
{
  bool keep = state.range(0) != 0;
  char base[] = "/tmp/impetus-bench-spool-XXXXXX";
  if (!mkdtemp(base)) {
    state.SkipWithError("mkdtemp");
    return;
  }
  struct spool_params p = {};
  p.spoolbase = base;
  p.sync = SPOOL_SYNC_NONE;
  p.keep_dicts_in_memory = keep;
  p.on_msg = keep_msg;
  char err[256];
  struct spool *sp = spool_open(&p, err, sizeof(err));
  std::string m = pickup_message(1);
  for (int i = 0; i < 256; i++) {
    std::string path = std::string(base) + "/pickup/m" + std::to_string(i);
    FILE *f = fopen(path.c_str(), "w");
    fwrite(m.data(), 1, m.size(), f);
    fclose(f);
  }
  while (g_msgs.size() < 256)
    spool_ingest(sp, 100);
  size_t i = 0;
  for (auto _ : state) {
    struct spool_msg *msg = g_msgs[i];
    spool_load_ctx(sp, msg);
    benchmark::DoNotOptimize(ctx_get(msg->mess, "campaign"));
    spool_drop_ctx(sp, msg);
    if (++i == g_msgs.size())
      i = 0;
  }
  state.SetLabel(keep ? "in memory" : "from disk");
  for (auto *msg : g_msgs)
    spool_msg_free(msg);
  g_msgs.clear();
  spool_close(sp);
  std::string cmd = std::string("rm -rf ") + base;
  if (system(cmd.c_str()) != 0)
    state.SkipWithError("cleanup");
}
BENCHMARK(BM_DictsReadBack)->Arg(0)->Arg(1);

BENCHMARK_MAIN();
