// bench_dkim: what a DKIM signature costs beyond the private-key operation.
//  - Sign/<alg>: dkim_sign of a 1 KB message (7 headers, relaxed/relaxed,
//    oversigned From): header split, body canonicalisation and hash, h=
//    selection, header hash, tag list and folding, the key operation,
//    base64.
//  - KeyOp/<alg>: the key operation alone, dkim_key_sign_digest of a
//    32-byte digest (EVP_PKEY_sign for RSA, EVP_DigestSign for Ed25519,
//    each with a fresh context as dkim_sign uses it).
//  - BodyCanon/<canon>: the body canonicaliser alone over 1 KB, no hash.
// Overhead = Sign / KeyOp - 1 (target: under 10 %). Keys are generated at
// start: RSA-2048 and Ed25519.
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>

#include <openssl/evp.h>
#include <openssl/pem.h>

extern "C" {
#include "buf.h"
#include "dkim.h"
}

namespace {

struct dkim_key *make_key(bool ed)
{
  EVP_PKEY *pk = ed ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519") : EVP_RSA_gen(2048);
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, pk, nullptr, nullptr, 0, nullptr, nullptr);
  char *p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  char why[256];
  struct dkim_key *k = dkim_key_load_mem(p, (size_t)n, why, sizeof(why));
  BIO_free(b);
  EVP_PKEY_free(pk);
  return k;
}

struct dkim_key *key(bool ed)
{
  static struct dkim_key *rsa = make_key(false), *e = make_key(true);
  return ed ? e : rsa;
}

std::string message_1k()
{
  std::string m =
      "From: Example News <news@example.com>\r\n"
      "To: reader@example.net\r\n"
      "Subject: Your weekly digest of things worth reading\r\n"
      "Date: Mon, 07 Dec 2026 21:00:00 +0000\r\n"
      "Message-ID: <20261207210000.12345@example.com>\r\n"
      "MIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=utf-8\r\n\r\n";
  while (m.size() < 1024)
    m += "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
  m.resize(1022);
  m += "\r\n";
  return m;
}

const char *hdrs[] = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
                      "Content-Type"};
const char *over[] = {"From"};

void Sign(benchmark::State &st)
{
  bool ed = st.range(0) == 1;
  std::string m = message_1k();
  struct dkim_params p = {};
  p.alg = ed ? DKIM_ED25519_SHA256 : DKIM_RSA_SHA256;
  p.hcanon = p.bcanon = DKIM_CANON_RELAXED;
  p.domain = "example.com";
  p.selector = "s2026";
  p.headers = hdrs;
  p.nheaders = 7;
  p.oversign = over;
  p.noversign = 1;
  p.timestamp = 1765141200;
  struct buf out = {};
  char why[256];
  for (auto _ : st) {
    out.len = 0;
    if (dkim_sign(&p, key(ed), m.data(), m.size(), &out, why, sizeof(why)) != 0)
      st.SkipWithError(why);
    benchmark::DoNotOptimize(out.data);
  }
  buf_done(&out, 0);
  st.SetLabel(ed ? "ed25519" : "rsa2048");
}

void KeyOp(benchmark::State &st)
{
  bool ed = st.range(0) == 1;
  uint8_t digest[32], sig[512];
  memset(digest, 0x5a, sizeof(digest));
  for (auto _ : st) {
    int n = dkim_key_sign_digest(key(ed), digest, sig, sizeof(sig));
    if (n <= 0)
      st.SkipWithError("key operation failed");
    benchmark::DoNotOptimize(sig);
  }
  st.SetLabel(ed ? "ed25519" : "rsa2048");
}

void emit_none(void *arg, const void *p, size_t n)
{
  benchmark::DoNotOptimize(p);
  *(size_t *)arg += n;
}

void BodyCanon(benchmark::State &st)
{
  std::string m = message_1k();
  enum dkim_canon c = st.range(0) ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
  size_t total = 0;
  for (auto _ : st) {
    struct dkim_body b;
    dkim_body_init(&b, c);
    dkim_body_feed(&b, m.data(), m.size(), emit_none, &total);
    dkim_body_finish(&b, emit_none, &total);
  }
  st.SetBytesProcessed((int64_t)st.iterations() * (int64_t)m.size());
  st.SetLabel(st.range(0) ? "relaxed" : "simple");
}

}  // namespace

// Interleaved so a noisy neighbour hits both of a pair alike.
BENCHMARK(KeyOp)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(Sign)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(KeyOp)->Arg(1)->Unit(benchmark::kMicrosecond);
BENCHMARK(Sign)->Arg(1)->Unit(benchmark::kMicrosecond);
BENCHMARK(BodyCanon)->Arg(0)->Arg(1);

BENCHMARK_MAIN();
