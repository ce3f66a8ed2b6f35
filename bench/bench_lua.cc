// bench_lua: cost of a Lua policy hook call per message (ns/call):
// no hook registered vs a trivial hook vs a hook doing one context get and
// one context set, interpreter (default) and JIT, against the same context
// work done directly in C. Run: build/bench/bench_lua
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

extern "C" {
#include "ctx.h"
#include "luam.h"
#include "luam_spool.h"
}

namespace {

struct Msg {
  std::string user;
  std::string key = "somestring";
};

const char *ctx_get(void *m, int, const char *key, size_t *len)
{
  Msg *msg = static_cast<Msg *>(m);
  if (std::strcmp(key, "outbound_smtp_auth_key") == 0) {
    *len = msg->key.size();
    return msg->key.c_str();
  }
  if (std::strcmp(key, "outbound_smtp_auth_user") == 0 && !msg->user.empty()) {
    *len = msg->user.size();
    return msg->user.c_str();
  }
  return nullptr;
}

int ctx_set(void *m, int, const char *key, const char *val, size_t len)
{
  Msg *msg = static_cast<Msg *>(m);
  if (std::strcmp(key, "outbound_smtp_auth_user") == 0)
    msg->user.assign(val, len);
  return 0;
}

const char *msg_id(void *) { return "00/00-1-1"; }

luam_msg_ops ops = [] {
  luam_msg_ops o{};
  o.ctx_get = ctx_get;
  o.ctx_set = ctx_set;
  o.id = msg_id;
  return o;
}();

luam *make_state(const char *body, bool jit)
{
  char path[] = "/tmp/bench_lua_XXXXXX.lua";
  int fd = mkstemps(path, 4);
  if (fd < 0)
    std::abort();
  std::string text = std::string("local mod = {}\n") + body + "\nmsys.registerModule('bench', mod)\n";
  if (write(fd, text.data(), text.size()) != (ssize_t)text.size())
    std::abort();
  close(fd);
  luam_script s = {"bench", path};
  luam_opts o{};
  o.scripts = &s;
  o.nscripts = 1;
  o.jit = jit;
  luam_host h{};
  char err[512];
  luam *lm = luam_new(&o, &h, err, sizeof err);
  unlink(path);
  if (!lm) {
    std::fprintf(stderr, "%s\n", err);
    std::abort();
  }
  return lm;
}

void run(benchmark::State &state, const char *body, bool jit)
{
  luam *lm = make_state(body, jit);
  Msg msg;
  for (auto _ : state) {
    int rc = luam_call_auth_config(lm, &msg, &ops, "example.com", nullptr, nullptr);
    benchmark::DoNotOptimize(rc);
  }
  luam_free(lm);
}

const char *kTrivial = "function mod:outbound_smtp_auth_config(msg) end";
const char *kGetSet =
    "function mod:outbound_smtp_auth_config(msg)\n"
    "  local k = msg:context_get(VCTX_MESS, 'outbound_smtp_auth_key')\n"
    "  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', 'foo')\n"
    "end";

void BM_NoHook(benchmark::State &s) { run(s, "function mod:validate_set_binding(msg) end", false); }
void BM_TrivialHook(benchmark::State &s) { run(s, kTrivial, false); }
void BM_GetSetHook(benchmark::State &s) { run(s, kGetSet, false); }
void BM_GetSetHookJit(benchmark::State &s) { run(s, kGetSet, true); }

// The same context work without Lua: the floor.
void BM_GetSetDirectC(benchmark::State &state)
{
  Msg msg;
  for (auto _ : state) {
    size_t len;
    const char *k = ops.ctx_get(&msg, LUAM_CTX_MESS, "outbound_smtp_auth_key", &len);
    benchmark::DoNotOptimize(k);
    ops.ctx_set(&msg, LUAM_CTX_MESS, "outbound_smtp_auth_user", "foo", 3);
  }
}

// The same hook over a spooled message's real dictionaries (ctx.h through
// luam_spool_ops), dictionaries in memory.
void BM_GetSetHookSpoolCtx(benchmark::State &state)
{
  luam *lm = make_state(kGetSet, false);
  spool_msg m{};
  m.id = 1;
  m.mess = ctx_new();
  m.conn = ctx_new();
  ctx_set(m.mess, "outbound_smtp_auth_key", "somestring");
  luam_spool_msg h{};
  h.msg = &m;
  unsigned n = 0;
  for (auto _ : state) {
    int rc = luam_call_auth_config(lm, &h, &luam_spool_ops, "example.com", nullptr, nullptr);
    benchmark::DoNotOptimize(rc);
    if (++n % 1024 == 0)
      ctx_quiesce(m.mess); // the owner frees replaced values now and then
  }
  ctx_free(m.mess);
  ctx_free(m.conn);
  luam_free(lm);
}

BENCHMARK(BM_NoHook);
BENCHMARK(BM_TrivialHook);
BENCHMARK(BM_GetSetHook);
BENCHMARK(BM_GetSetHookJit);
BENCHMARK(BM_GetSetHookSpoolCtx);
BENCHMARK(BM_GetSetDirectC);

} // namespace

BENCHMARK_MAIN();
