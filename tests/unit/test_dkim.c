/* Unit tests for dkim: canonicalisation, header selection, signature
 * building and folding, keys and the key cache. The RFC 8463 appendix A
 * signatures (Ed25519 and RSA; both deterministic) are reproduced byte
 * for byte from the appendix's keys and message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pthread.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "base64.h"
#include "buf.h"
#include "dkim.h"

/* ---- RFC 8463 appendix A (keys, message and signatures are the RFC's) ---- */

static const char rfc_seed_b64[] = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
static const char rfc_ed_pub[] = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
static const char rfc_rsa_key[] =
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi\n"
    "Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM\n"
    "KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB\n"
    "AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm\n"
    "6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe\n"
    "zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy\n"
    "6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc\n"
    "uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy\n"
    "WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd\n"
    "WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a\n"
    "licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst\n"
    "o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe\n"
    "uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL\n"
    "-----END RSA PRIVATE KEY-----\n";

static const char rfc_msg[] =
    "From: Joe SixPack <joe@football.example.com>\r\n"
    "To: Suzie Q <suzie@shopping.example.net>\r\n"
    "Subject: Is dinner ready?\r\n"
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    "\r\n"
    "Hi.\r\n"
    "\r\n"
    "We lost the game.  Are you hungry yet?\r\n"
    "\r\n"
    "Joe.\r\n";

static const char rfc_sig_ed[] =
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    " d=football.example.com; i=@football.example.com;\r\n"
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    " subject : date : message-id : from : subject : date;\r\n"
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
    " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n";

static const char rfc_sig_rsa[] =
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    " d=football.example.com; i=@football.example.com;\r\n"
    " q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n"
    " date : message-id : from : subject : date;\r\n"
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n"
    " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n"
    " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n";

static const char *const rfc_headers[] = {"from", "to", "subject", "date", "message-id"};
static const char *const rfc_over[] = {"from", "subject", "date"};

static struct dkim_params rfc_params(enum dkim_alg alg, const char *sel)
{
  return (struct dkim_params){
      .alg = alg, .hcanon = DKIM_CANON_RELAXED, .bcanon = DKIM_CANON_RELAXED,
      .domain = "football.example.com", .selector = sel, .identity = "@football.example.com",
      .headers = rfc_headers, .nheaders = 5, .oversign = rfc_over, .noversign = 3,
      .timestamp = 1528637909, .q_tag = true, .h_spaced = true, .width = 59};
}

static struct dkim_key *rfc_ed_key(void)
{
  uint8_t seed[33];
  assert_int_equal(base64_decode(rfc_seed_b64, strlen(rfc_seed_b64), seed), 32);
  struct dkim_key *k = dkim_key_ed25519_seed(seed);
  assert_non_null(k);
  return k;
}

/* dkim_sign of msg is want, the first time (a new signing context) and
 * again (the key's context reused, this thread's digest context reused). */
static void sign_is(const struct dkim_params *p, struct dkim_key *k, const char *msg, size_t n,
                    const char *want)
{
  struct buf out = {0};
  char why[256] = "";
  for (int i = 0; i < 3; i++) {
    out.len = 0;
    if (dkim_sign(p, k, msg, n, &out, why, sizeof(why)) != 0)
      fail_msg("sign %d: %s", i, why);
    buf_append(&out, "", 1);
    assert_string_equal((char *)out.data, want);
  }
  buf_done(&out, 0);
}

static void test_rfc8463_ed25519(void **state)
{
  (void)state;
  struct dkim_key *k = rfc_ed_key();
  struct buf pub = {0};
  assert_int_equal(dkim_key_public_b64(k, &pub), 0);
  assert_int_equal(pub.len, strlen(rfc_ed_pub));
  assert_memory_equal(pub.data, rfc_ed_pub, pub.len);
  struct dkim_params p = rfc_params(DKIM_ED25519_SHA256, "brisbane");
  sign_is(&p, k, rfc_msg, strlen(rfc_msg), rfc_sig_ed);
  buf_done(&pub, 0);
  dkim_key_unref(k);
}

static void test_rfc8463_rsa(void **state)
{
  (void)state;
  char why[256] = "";
  struct dkim_key *k = dkim_key_load_mem(rfc_rsa_key, strlen(rfc_rsa_key), why, sizeof(why));
  assert_non_null(k);
  assert_int_equal(dkim_key_alg(k), DKIM_RSA_SHA256);
  assert_int_equal(dkim_key_bits(k), 1024);
  struct dkim_params p = rfc_params(DKIM_RSA_SHA256, "test");
  sign_is(&p, k, rfc_msg, strlen(rfc_msg), rfc_sig_rsa);
  /* The same message with LF line ends (a pickup file) signs the same. */
  char lf[sizeof(rfc_msg)];
  size_t n = 0;
  for (const char *s = rfc_msg; *s; s++)
    if (*s != '\r')
      lf[n++] = *s;
  sign_is(&p, k, lf, n, rfc_sig_rsa);
  /* An Ed25519 key cannot sign rsa-sha256. */
  struct dkim_key *ed = rfc_ed_key();
  struct buf out = {0};
  assert_int_equal(dkim_sign(&p, ed, rfc_msg, strlen(rfc_msg), &out, why, sizeof(why)), -EINVAL);
  assert_non_null(strstr(why, "Ed25519"));
  dkim_key_unref(ed);
  buf_done(&out, 0);
  dkim_key_unref(k);
}

/* Signer threads share one key: each signature takes a prepared context
 * of the key's own and this thread's digest context; all must come out as
 * the RFC's. */
struct par {
  struct dkim_key *k;
  const struct dkim_params *p;
  const char *want;
  int bad;
};

static void *par_sign(void *arg)
{
  struct par *a = arg;
  struct buf out = {0};
  for (int i = 0; i < 50; i++) {
    out.len = 0;
    if (dkim_sign(a->p, a->k, rfc_msg, strlen(rfc_msg), &out, NULL, 0) != 0 ||
        out.len != strlen(a->want) || memcmp(out.data, a->want, out.len))
      a->bad++;
  }
  buf_done(&out, 0);
  return NULL;
}

static void test_rfc8463_threads(void **state)
{
  (void)state;
  char why[256];
  struct dkim_key *keys[2] = {rfc_ed_key(),
                              dkim_key_load_mem(rfc_rsa_key, strlen(rfc_rsa_key), why, sizeof(why))};
  const struct dkim_params p[2] = {rfc_params(DKIM_ED25519_SHA256, "brisbane"),
                                   rfc_params(DKIM_RSA_SHA256, "test")};
  const char *want[2] = {rfc_sig_ed, rfc_sig_rsa};
  struct par a[8];
  pthread_t t[8];
  for (int i = 0; i < 8; i++) {
    a[i] = (struct par){keys[i % 2], &p[i % 2], want[i % 2], 0};
    assert_int_equal(pthread_create(&t[i], NULL, par_sign, &a[i]), 0);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(a[i].bad, 0);
  }
  dkim_key_unref(keys[0]);
  dkim_key_unref(keys[1]);
}

/* ---- body canonicalisation ---- */

static void emit_buf(void *arg, const void *p, size_t n) { buf_append(arg, p, n); }

static void body_is(enum dkim_canon c, const char *in, const char *want)
{
  struct buf out = {0};
  struct dkim_body b;
  dkim_body_init(&b, c);
  dkim_body_feed(&b, in, strlen(in), emit_buf, &out);
  dkim_body_finish(&b, emit_buf, &out);
  buf_append(&out, "", 1);
  assert_string_equal((char *)out.data, want);
  /* Fed one byte at a time: the same. */
  out.len = 0;
  dkim_body_init(&b, c);
  for (const char *s = in; *s; s++)
    dkim_body_feed(&b, s, 1, emit_buf, &out);
  dkim_body_finish(&b, emit_buf, &out);
  buf_append(&out, "", 1);
  assert_string_equal((char *)out.data, want);
  buf_done(&out, 0);
}

static const struct {
  enum dkim_canon c;
  const char *in, *want;
} body_cases[] = {
    {DKIM_CANON_SIMPLE, "", "\r\n"},
    {DKIM_CANON_SIMPLE, "\r\n\r\n\r\n", "\r\n"},
    {DKIM_CANON_SIMPLE, "a", "a\r\n"},
    {DKIM_CANON_SIMPLE, "a\r\n", "a\r\n"},
    {DKIM_CANON_SIMPLE, "a\r\n\r\n\r\n", "a\r\n"},
    {DKIM_CANON_SIMPLE, "a \t\r\n\r\nb  \r\n", "a \t\r\n\r\nb  \r\n"},
    {DKIM_CANON_SIMPLE, "a\nb\rc\r\n\n", "a\r\nb\r\nc\r\n"},
    {DKIM_CANON_SIMPLE, "\r\n \r\n", "\r\n \r\n"},
    {DKIM_CANON_SIMPLE, "caf\xc3\xa9\r\n", "caf\xc3\xa9\r\n"},
    {DKIM_CANON_RELAXED, "", ""},
    {DKIM_CANON_RELAXED, "\r\n\r\n", ""},
    {DKIM_CANON_RELAXED, " \t \r\n", ""},
    {DKIM_CANON_RELAXED, "a", "a\r\n"},
    {DKIM_CANON_RELAXED, "  a \t b  \r\n", " a b\r\n"},
    {DKIM_CANON_RELAXED, "a\r\n \r\nb \r\n\r\n \r\n", "a\r\n\r\nb\r\n"},
    {DKIM_CANON_RELAXED, "a\nb\r\rc", "a\r\nb\r\n\r\nc\r\n"},
    {DKIM_CANON_RELAXED, "Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n",
     "Hi.\r\n\r\nWe lost the game. Are you hungry yet?\r\n\r\nJoe.\r\n"},
};

static void test_body(void **state)
{
  (void)state;
  for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++)
    body_is(body_cases[i].c, body_cases[i].in, body_cases[i].want);
}

/* ---- header canonicalisation and split ---- */

static void hdr_is(enum dkim_canon c, const char *in, const char *want)
{
  struct buf out = {0};
  dkim_header_canon(c, in, strlen(in), true, &out);
  buf_append(&out, "", 1);
  assert_string_equal((char *)out.data, want);
  buf_done(&out, 0);
}

static void test_header_canon(void **state)
{
  (void)state;
  hdr_is(DKIM_CANON_RELAXED, "SubJect \t:  Is   dinner\r\n\tready? \r\n",
         "subject:Is dinner ready?\r\n");
  hdr_is(DKIM_CANON_RELAXED, "X-Empty:\r\n", "x-empty:\r\n");
  hdr_is(DKIM_CANON_RELAXED, "X-Empty:  \r\n  \r\n", "x-empty:\r\n");
  hdr_is(DKIM_CANON_SIMPLE, "SubJect \t:  Is dinner\r\n\tready? \r\n",
         "SubJect \t:  Is dinner\r\n\tready? \r\n");
  hdr_is(DKIM_CANON_SIMPLE, "A: b\n c\n", "A: b\r\n c\r\n");
}

static void test_header_split(void **state)
{
  (void)state;
  const char *m = "A: 1\r\nB : 2\r\n  more\r\nA: 3\n\nbody\r\n";
  struct dkim_hdr h[8];
  size_t body;
  int n = dkim_header_split(m, strlen(m), h, 8, &body);
  assert_int_equal(n, 3);
  assert_int_equal(h[1].name_len, 1);
  assert_int_equal(h[1].len, strlen("B : 2\r\n  more\r\n"));
  assert_string_equal(m + body, "body\r\n");
  assert_int_equal(dkim_header_split(m, strlen(m), h, 2, &body), -E2BIG);
  /* No empty line: all header, no body. */
  n = dkim_header_split("A: 1\r\n", 6, h, 8, &body);
  assert_int_equal(n, 1);
  assert_int_equal(body, 6);
}

/* ---- h= selection: repeated, oversigned, skipped, missing ---- */

static char *sign_h(const char *msg, const char *const *hd, size_t nh, const char *const *ov,
                    size_t no, const char *const *sk, size_t ns)
{
  struct dkim_key *k = rfc_ed_key();
  struct dkim_params p = {.alg = DKIM_ED25519_SHA256, .domain = "example.com", .selector = "s",
                          .headers = hd, .nheaders = nh, .oversign = ov, .noversign = no,
                          .skip = sk, .nskip = ns, .timestamp = -1, .width = 998};
  struct buf out = {0};
  char why[256];
  int r = dkim_sign(&p, k, msg, strlen(msg), &out, why, sizeof(why));
  dkim_key_unref(k);
  if (r < 0) {
    buf_done(&out, 0);
    return NULL;
  }
  buf_append(&out, "", 1);
  char *h = strstr((char *)out.data, " h=");
  assert_non_null(h);
  char *e = strchr(h, ';');
  char *res = strndup(h + 3, (size_t)(e - h - 3));
  buf_done(&out, 0);
  return res;
}

static void test_header_selection(void **state)
{
  (void)state;
  const char *m = "Received: a\r\nFrom: x@example.com\r\nTo: y\r\nReceived: b\r\n\r\nbody\r\n";
  const char *hd[] = {"From", "To", "Subject", "Received"};
  const char *ov[] = {"From", "Reply-To"};
  const char *sk[] = {"Received"};
  char *h = sign_h(m, hd, 4, NULL, 0, NULL, 0);
  assert_string_equal(h, "From:To:Received:Received");
  free(h);
  h = sign_h(m, hd, 4, ov, 2, NULL, 0);
  assert_string_equal(h, "From:To:Received:Received:From:Reply-To");
  free(h);
  h = sign_h(m, hd, 4, ov, 2, sk, 1);
  assert_string_equal(h, "From:To:From:Reply-To");
  free(h);
  /* From must be signed. */
  assert_null(sign_h(m, hd + 1, 1, NULL, 0, NULL, 0));
  /* Folding: no line longer than the width. */
  struct dkim_key *k = rfc_ed_key();
  struct dkim_params p = {.alg = DKIM_ED25519_SHA256, .domain = "example.com", .selector = "s",
                          .headers = hd, .nheaders = 4, .timestamp = 1, .width = 50};
  struct buf out = {0};
  assert_int_equal(dkim_sign(&p, k, m, strlen(m), &out, NULL, 0), 0);
  buf_append(&out, "", 1);
  for (char *s = (char *)out.data, *e; (e = strstr(s, "\r\n")); s = e + 2) {
    assert_true(e - s <= 50);
    if (s != (char *)out.data)
      assert_true(*s == ' ');
  }
  buf_done(&out, 0);
  dkim_key_unref(k);
}

/* ---- parameters, keys, cache ---- */

static void test_parse(void **state)
{
  (void)state;
  enum dkim_alg a;
  enum dkim_canon c;
  assert_int_equal(dkim_alg_parse("RSA-SHA256", &a), 0);
  assert_int_equal(a, DKIM_RSA_SHA256);
  assert_int_equal(dkim_alg_parse("ed25519-sha256", &a), 0);
  assert_int_equal(a, DKIM_ED25519_SHA256);
  assert_int_equal(dkim_alg_parse("rsa-sha1", &a), -ENOTSUP);
  assert_int_equal(dkim_alg_parse("md5", &a), -EINVAL);
  assert_int_equal(dkim_canon_parse("relaxed", &c), 0);
  assert_int_equal(c, DKIM_CANON_RELAXED);
  assert_int_equal(dkim_canon_parse("nofws", &c), -EINVAL);
  char out[64];
  assert_int_equal(dkim_path_expand("/k/%{d}/%{s}.key", "ex.com", "s1", out, sizeof(out)), 0);
  assert_string_equal(out, "/k/ex.com/s1.key");
  assert_int_equal(dkim_path_expand("/k/%{x}", "ex.com", "s1", out, sizeof(out)), -EINVAL);
  assert_int_equal(dkim_path_expand("/k/%{d}/%{d}/%{d}", "a-very-long-domain.example.com", "s",
                                    out, sizeof(out)), -ENAMETOOLONG);
}

static char tmpdir[] = "/tmp/test_dkim.XXXXXX";

static void write_file(const char *path, const char *text, mode_t mode)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  chmod(path, mode);
}

/* Key files that must not load, and the words their error must hold;
 * none may quote the file's bytes. */
static const struct {
  const char *name, *text; /* text NULL: no such file */
  mode_t mode;
  const char *why;
} bad_keys[] = {
    {"missing.key", NULL, 0, "cannot open"},
    {"loose.key", rfc_rsa_key, 0644, "mode 0644"},
    {"bad.key", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXZhbHVl\n-----END PRIVATE KEY-----\n", 0600,
     "malformed"},
    {"nobegin.key", "hello\n", 0600, "no BEGIN"},
    {"empty.key", "", 0600, "empty"},
};

static void test_key_files(void **state)
{
  (void)state;
  assert_non_null(mkdtemp(tmpdir));
  char p[256], why[256];
  for (size_t i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++) {
    snprintf(p, sizeof(p), "%s/%s", tmpdir, bad_keys[i].name);
    if (bad_keys[i].text)
      write_file(p, bad_keys[i].text, bad_keys[i].mode);
    why[0] = 0;
    assert_null(dkim_key_load_file(p, true, why, sizeof(why)));
    if (!strstr(why, bad_keys[i].why) || strstr(why, "c2VjcmV0") || strstr(why, "MIIC"))
      fail_msg("%s: got \"%s\", want \"%s\"", bad_keys[i].name, why, bad_keys[i].why);
  }
  /* The group-readable key loads when the mode is not checked, or once 0600. */
  snprintf(p, sizeof(p), "%s/loose.key", tmpdir);
  struct dkim_key *k = dkim_key_load_file(p, false, why, sizeof(why));
  assert_non_null(k);
  dkim_key_unref(k);
  chmod(p, 0600);
  k = dkim_key_load_file(p, true, why, sizeof(why));
  assert_non_null(k);
  dkim_key_unref(k);

  /* Too short an RSA key (RFC 8301), generated here. */
  EVP_PKEY *small = EVP_RSA_gen(512);
  if (small) {
    snprintf(p, sizeof(p), "%s/small.key", tmpdir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, small, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    chmod(p, 0600);
    assert_null(dkim_key_load_file(p, true, why, sizeof(why)));
    assert_non_null(strstr(why, "512 bits"));
    EVP_PKEY_free(small);
  }

  /* Lua keybuf: the bare base64 body of the RSA key. */
  char b64[2048];
  size_t n = 0;
  const char *s = strchr(rfc_rsa_key, '\n') + 1, *e = strstr(rfc_rsa_key, "-----END");
  for (; s < e; s++)
    if (*s != '\n')
      b64[n++] = *s;
  k = dkim_key_load_mem(b64, n, why, sizeof(why));
  assert_non_null(k);
  assert_int_equal(dkim_key_bits(k), 1024);
  dkim_key_unref(k);

  /* Cache: LRU within its size. */
  struct dkim_keycache *kc = dkim_keycache_new(2, true);
  struct dkim_key *got[4];
  const char *cached[] = {"loose.key", "loose.key", "rfc2.key", "rfc3.key"};
  for (size_t i = 0; i < 4; i++) {
    snprintf(p, sizeof(p), "%s/%s", tmpdir, cached[i]);
    if (i >= 2)
      write_file(p, rfc_rsa_key, 0600);
    got[i] = dkim_keycache_get(kc, p, why, sizeof(why));
    assert_non_null(got[i]);
  }
  assert_ptr_equal(got[0], got[1]);
  assert_int_equal(dkim_keycache_count(kc), 2);
  snprintf(p, sizeof(p), "%s/missing.key", tmpdir);
  assert_null(dkim_keycache_get(kc, p, why, sizeof(why)));
  for (size_t i = 0; i < 4; i++)
    dkim_key_unref(got[i]);
  dkim_keycache_free(kc);

  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  assert_int_equal(system(cmd), 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rfc8463_ed25519), cmocka_unit_test(test_rfc8463_rsa),
      cmocka_unit_test(test_rfc8463_threads), cmocka_unit_test(test_body),
      cmocka_unit_test(test_header_canon),    cmocka_unit_test(test_header_split),
      cmocka_unit_test(test_header_selection), cmocka_unit_test(test_parse),
      cmocka_unit_test(test_key_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
