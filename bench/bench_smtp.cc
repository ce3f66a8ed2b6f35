// bench_smtp: the sans-I/O SMTP code's hot paths.
//  - reply parser: typical EHLO replies and pipelined RCPT replies (MB/s, replies/s)
//  - whole session: one pipelined 50-recipient transaction through smtpc
//  - DATA encoder (dot-stuffing + CRLF) on 1 KB and 100 KB bodies (GB/s),
//    compared in the same run with a plain memcpy of the same bytes
//  - AUTH PLAIN / LOGIN / XOAUTH2 encodings (ns/op)
// Run: build/bench/bench_smtp [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "smtp_dot.h"
#include "smtp_reply.h"
#include "smtpc.h"
}

static const char kEhlo[] =
    "250-mx.example.com Hello client.example.net [192.0.2.1]\r\n"
    "250-SIZE 52428800\r\n"
    "250-8BITMIME\r\n"
    "250-PIPELINING\r\n"
    "250-PIPE_CONNECT\r\n"
    "250-AUTH PLAIN LOGIN XOAUTH2\r\n"
    "250-CHUNKING\r\n"
    "250-STARTTLS\r\n"
    "250-ENHANCEDSTATUSCODES\r\n"
    "250-SMTPUTF8\r\n"
    "250 HELP\r\n";

static void parse_all(struct smtp_reply *r, const char *p, size_t n, int64_t *replies)
{
  while (n) {
    size_t used;
    int st = smtp_reply_parse(r, p, n, &used);
    if (st < 0)
      abort();
    if (st == SMTP_REPLY_DONE)
      ++*replies;
    p += used;
    n -= used;
  }
}

static void BM_ReplyParse_Ehlo(benchmark::State &state)
{
  struct smtp_reply r;
  memset(&r, 0, sizeof(r));
  r.max_line = 2048;
  r.max_lines = 200;
  r.max_bytes = 65536;
  int64_t replies = 0;
  size_t n = sizeof(kEhlo) - 1;
  for (auto _ : state) {
    parse_all(&r, kEhlo, n, &replies);
    benchmark::DoNotOptimize(r.code);
  }
  state.SetBytesProcessed(state.iterations() * (int64_t)n);
  state.SetItemsProcessed(replies);
}
BENCHMARK(BM_ReplyParse_Ehlo);

static void BM_ReplyParse_PipelinedRcpt(benchmark::State &state)
{
  std::string in = "250 2.1.0 Sender OK\r\n";
  for (int i = 0; i < 100; i++)
    in += (i % 10 == 9) ? "550 5.1.1 <user@example.com>: Recipient address rejected: User unknown\r\n"
                        : "250 2.1.5 Recipient OK\r\n";
  in += "354 End data with <CR><LF>.<CR><LF>\r\n";
  struct smtp_reply r;
  memset(&r, 0, sizeof(r));
  r.max_line = 2048;
  r.max_lines = 200;
  r.max_bytes = 65536;
  int64_t replies = 0;
  for (auto _ : state) {
    parse_all(&r, in.data(), in.size(), &replies);
    benchmark::DoNotOptimize(r.code);
  }
  state.SetBytesProcessed(state.iterations() * (int64_t)in.size());
  state.SetItemsProcessed(replies);
}
BENCHMARK(BM_ReplyParse_PipelinedRcpt);

// A whole pipelined transaction with 50 recipients through the session:
// commands out, replies in, body (1 KB), final reply, next transaction.
static void BM_Session_Txn50(benchmark::State &state)
{
  struct smtpc_params p;
  memset(&p, 0, sizeof(p));
  p.ehlo_name = "client.example.net";
  uint64_t now = 1000;
  struct smtpc *s = smtpc_new(&p, now);
  smtpc_connected(s, now);
  std::string hello = std::string("220 mx ESMTP\r\n") + kEhlo;
  smtpc_feed(s, hello.data(), hello.size(), now);
  const uint8_t *op;
  size_t on;
  struct smtpc_event ev;
  auto drain = [&]() {
    while (smtpc_output(s, &op, &on))
      smtpc_output_consumed(s, on, now);
    while (smtpc_next_event(s, &ev)) {
    }
  };
  drain();
  std::vector<std::string> addrs;
  std::vector<const char *> rcpts;
  for (int i = 0; i < 50; i++)
    addrs.push_back("user" + std::to_string(i) + "@example.com");
  for (auto &a : addrs)
    rcpts.push_back(a.c_str());
  std::vector<struct smtpc_result> res(50);
  struct smtpc_result fin;
  struct smtpc_txn txn;
  memset(&txn, 0, sizeof(txn));
  txn.mail_from = "bounces@example.net";
  txn.rcpts = rcpts.data();
  txn.nrcpt = 50;
  txn.size = 1024;
  txn.results = res.data();
  txn.final = &fin;
  std::string replies = "250 2.1.0 OK\r\n";
  for (int i = 0; i < 50; i++)
    replies += "250 2.1.5 OK\r\n";
  replies += "354 go ahead\r\n";
  std::string body(1024, 'a');
  for (size_t i = 76; i < body.size(); i += 78)
    body[i] = '\n';
  const char fin_reply[] = "250 2.0.0 Ok: queued as 4BNmHq2x5Sz9vf\r\n";
  for (auto _ : state) {
    if (smtpc_begin_txn(s, &txn, now) != 0)
      abort();
    drain();
    smtpc_feed(s, replies.data(), replies.size(), now);
    drain();
    size_t off = 0;
    while (off < body.size()) {
      long k = smtpc_body(s, body.data() + off, body.size() - off, true, now);
      off += (size_t)k;
      while (smtpc_output(s, &op, &on))
        smtpc_output_consumed(s, on, now);
    }
    drain();
    smtpc_feed(s, fin_reply, sizeof(fin_reply) - 1, now);
    drain();
    if (smtpc_state(s) != SMTPC_ST_IDLE)
      abort();
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("transactions");
  smtpc_free(s);
}
BENCHMARK(BM_Session_Txn50);

static std::string make_body(size_t n)
{
  std::string b;
  b.reserve(n);
  size_t col = 0;
  unsigned x = 12345;
  while (b.size() < n) {
    x = x * 1103515245u + 12345u;
    if (col == 0 && (x >> 16) % 50 == 0) { // an occasional leading dot
      b += '.';
      col++;
      continue;
    }
    if (col >= 76) {
      b += "\r\n";
      col = 0;
      continue;
    }
    b += (char)('a' + (x >> 16) % 26);
    col++;
  }
  b.resize(n);
  return b;
}

static void BM_DotEncode(benchmark::State &state)
{
  std::string in = make_body((size_t)state.range(0));
  std::vector<uint8_t> out(in.size() * 2 + 8);
  for (auto _ : state) {
    struct smtp_dot d;
    smtp_dot_init(&d);
    size_t used;
    size_t w = smtp_dot_encode(&d, in.data(), in.size(), out.data(), out.size(), &used);
    w += smtp_dot_finish(&d, out.data() + w);
    benchmark::DoNotOptimize(w);
  }
  state.SetBytesProcessed(state.iterations() * (int64_t)in.size());
}
BENCHMARK(BM_DotEncode)->Arg(1024)->Arg(100 * 1024);

// Baseline for the encoder: a plain copy of the same bytes.
static void BM_Memcpy(benchmark::State &state)
{
  std::string in = make_body((size_t)state.range(0));
  std::vector<uint8_t> out(in.size() * 2 + 8);
  for (auto _ : state) {
    memcpy(out.data(), in.data(), in.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * (int64_t)in.size());
}
BENCHMARK(BM_Memcpy)->Arg(1024)->Arg(100 * 1024);

static void BM_AuthPlain(benchmark::State &state)
{
  char out[512];
  for (auto _ : state) {
    long n = smtpc_auth_plain_ir("sparkpost-user@example.com", "s3cr3t-Pa55w0rd!", out, sizeof(out));
    benchmark::DoNotOptimize(n);
  }
}
BENCHMARK(BM_AuthPlain);

static void BM_AuthLogin(benchmark::State &state)
{
  char out[512];
  for (auto _ : state) {
    long a = smtpc_b64_line("sparkpost-user@example.com", out, sizeof(out));
    long b = smtpc_b64_line("s3cr3t-Pa55w0rd!", out, sizeof(out));
    benchmark::DoNotOptimize(a + b);
  }
}
BENCHMARK(BM_AuthLogin);

static void BM_AuthXoauth2(benchmark::State &state)
{
  char out[4096];
  std::string tok(1200, 'T');
  for (auto _ : state) {
    long n = smtpc_auth_xoauth2_ir("someuser@example.com", tok.c_str(), out, sizeof(out));
    benchmark::DoNotOptimize(n);
  }
}
BENCHMARK(BM_AuthXoauth2);

BENCHMARK_MAIN();
