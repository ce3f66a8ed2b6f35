// bench_conf: cost of reading effective options.
//  - ViewLookup: one typed getter on a cached view (the hot path: the
//    engine keeps the view per queue).
//  - ViewGetByName / ViewGetById: finding the cached view for a
//    (binding, domain) pair by name or by binding id.
//  - EvalFullWalk: resolving one option by walking the scope chain on
//    every call (what conf_eval does), the baseline the views avoid.
//  - Load: parsing a configuration of 100 bindings and 1,000 domain stanzas.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

extern "C" {
#include "buf.h"
#include "conf.h"
}

namespace {

std::string make_config()
{
  std::string s = "Max_Outbound_Connections = 30\nRetry_Interval = 10m\n";
  for (int g = 0; g < 10; g++) {
    s += "Binding_Group \"g" + std::to_string(g) + "\" {\n  Max_Outbound_Connections = 5\n";
    for (int b = 0; b < 10; b++) {
      int id = g * 10 + b;
      s += "  Binding \"b" + std::to_string(id) + "\" {\n    Bind_Address = \"10.0." +
           std::to_string(g) + "." + std::to_string(b + 1) + "\"\n";
      s += "    Domain \"d" + std::to_string(id) + ".com\" { Max_Outbound_Connections = 15 }\n  }\n";
    }
    s += "  Domain \"gd" + std::to_string(g) + ".com\" { TLS = required }\n}\n";
  }
  for (int d = 0; d < 1000; d++)
    s += "Domain \"d" + std::to_string(d) + ".com\" { Outbound_SMTP_AUTH_User = \"u" + std::to_string(d) +
         "\" Outbound_Throttle_Messages = \"100/60\" }\n";
  return s;
}

struct conf *load()
{
  static std::string text = make_config();
  struct conf_error err;
  struct conf *c = conf_parse_buffer(text.data(), text.size(), "bench.conf", nullptr, 0, &err);
  if (!c)
    abort();
  return c;
}

void ViewLookup(benchmark::State &st)
{
  struct conf *c = load();
  const struct conf_view *v = conf_view_get(c, "b17", "d17.com");
  for (auto _ : st) {
    benchmark::DoNotOptimize(conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS));
  }
  if (conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS) != 15)
    st.SkipWithError("wrong value");
  conf_unref(c);
}
BENCHMARK(ViewLookup);

void ViewLookupMixed(benchmark::State &st)
{
  // Four getters of different types per iteration; reported per lookup.
  struct conf *c = load();
  const struct conf_view *v = conf_view_get(c, "b17", "d17.com");
  for (auto _ : st) {
    benchmark::DoNotOptimize(conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS));
    benchmark::DoNotOptimize(conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER));
    benchmark::DoNotOptimize(conf_interval(v, CONF_RETRY_INTERVAL));
    benchmark::DoNotOptimize(conf_throttle(v, CONF_OUTBOUND_THROTTLE_MESSAGES));
  }
  st.SetItemsProcessed(st.iterations() * 4);
  conf_unref(c);
}
BENCHMARK(ViewLookupMixed);

std::vector<std::string> names(const char *prefix, int n, const char *suffix)
{
  std::vector<std::string> v;
  for (int i = 0; i < n; i++)
    v.push_back(prefix + std::to_string(i) + suffix);
  return v;
}

void ViewGetByName(benchmark::State &st)
{
  struct conf *c = load();
  auto b = names("b", 100, ""), d = names("d", 1000, ".com");
  for (int i = 0; i < 100; i++) // warm: views built once
    for (int j = 0; j < 10; j++)
      conf_view_get(c, b[i].c_str(), d[(i * 10 + j) % 1000].c_str());
  size_t k = 0;
  for (auto _ : st) {
    size_t i = k % 100, j = (i * 10 + (k / 100) % 10) % 1000;
    benchmark::DoNotOptimize(conf_view_get(c, b[i].c_str(), d[j].c_str()));
    k++;
  }
  conf_unref(c);
}
BENCHMARK(ViewGetByName);

void ViewGetById(benchmark::State &st)
{
  struct conf *c = load();
  auto d = names("d", 1000, ".com");
  for (int i = 1; i <= 100; i++)
    for (int j = 0; j < 10; j++)
      conf_view_by_id(c, i, d[(i * 10 + j) % 1000].c_str());
  size_t k = 0;
  for (auto _ : st) {
    int i = 1 + (int)(k % 100);
    benchmark::DoNotOptimize(conf_view_by_id(c, i, d[(i * 10 + (k / 100) % 10) % 1000].c_str()));
    k++;
  }
  conf_unref(c);
}
BENCHMARK(ViewGetById);

void EvalFullWalk(benchmark::State &st)
{
  struct conf *c = load();
  struct buf out = {};
  for (auto _ : st) {
    conf_eval(c, nullptr, "b17", "d17.com", "max_outbound_connections", 0, &out);
    out.off = out.len = 0;
  }
  buf_done(&out, 0);
  conf_unref(c);
}
BENCHMARK(EvalFullWalk);

void Load(benchmark::State &st)
{
  for (auto _ : st)
    conf_unref(load());
}
BENCHMARK(Load)->Unit(benchmark::kMillisecond);

} // namespace

BENCHMARK_MAIN();
