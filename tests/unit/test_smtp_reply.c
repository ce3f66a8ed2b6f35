/* Unit tests for smtp_reply (the reply parser) and smtp_dot (the DATA
 * encoder): each input is also parsed/encoded split at every byte and
 * byte by byte, and must give the same result. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "smtp_dot.h"
#include "smtp_reply.h"

/* Parse `in` fed in pieces at the given cut points; record a summary of
 * every reply ("code|enh|text|nlines;") or the error, in out. */
static void parse_pieces(const char *in, size_t n, const size_t *cuts, size_t ncuts,
                         uint32_t max_line, uint32_t max_lines, uint32_t max_bytes, char *out,
                         size_t cap)
{
  struct smtp_reply r;
  memset(&r, 0, sizeof(r));
  smtp_reply_reset(&r);
  r.max_line = max_line;
  r.max_lines = max_lines;
  r.max_bytes = max_bytes;
  size_t o = 0, start = 0;
  out[0] = '\0';
  for (size_t c = 0; c <= ncuts; c++) {
    size_t end = c < ncuts ? cuts[c] : n;
    const char *p = in + start;
    size_t left = end - start;
    while (left) {
      size_t used;
      int st = smtp_reply_parse(&r, p, left, &used);
      p += used;
      left -= used;
      if (st < 0) {
        o += (size_t)snprintf(out + o, cap - o, "ERR %s;", smtp_reply_strerror(st));
        return;
      }
      if (st == SMTP_REPLY_DONE)
        o += (size_t)snprintf(out + o, cap - o, "%d|%s|%s|%u;", r.code, r.enhanced, r.text,
                              r.nlines);
    }
    start = end;
  }
}

/* Whole, byte by byte, and all 2-way splits give `want`. */
static void check_reply(const char *in, uint32_t ml, uint32_t mls, uint32_t mb, const char *want)
{
  static char got[65536];
  size_t n = strlen(in);
  parse_pieces(in, n, NULL, 0, ml, mls, mb, got, sizeof(got));
  assert_string_equal(got, want);
  for (size_t k = 1; k < n; k++) {
    size_t cut = k;
    parse_pieces(in, n, &cut, 1, ml, mls, mb, got, sizeof(got));
    if (strcmp(got, want) != 0)
      print_message("split at %zu\n", k);
    assert_string_equal(got, want);
  }
  static size_t cuts[70000];
  assert_true(n < 70000);
  for (size_t k = 1; k < n; k++)
    cuts[k - 1] = k;
  parse_pieces(in, n, cuts, n ? n - 1 : 0, ml, mls, mb, got, sizeof(got));
  assert_string_equal(got, want);
}

static void test_reply_basic(void **state)
{
  (void)state;
  check_reply("250 ok\r\n", 0, 0, 0, "250||ok|1;");
  check_reply("250\r\n", 0, 0, 0, "250|||1;");
  check_reply("250 \r\n", 0, 0, 0, "250|||1;");
  check_reply("220-a\r\n220-b\r\n220 c\r\n", 0, 0, 0, "220||a b c|3;");
  check_reply("250 ok\n354 go\r\n", 0, 0, 0, "250||ok|1;354||go|1;");
  check_reply("250-x\n250 y\n", 0, 0, 0, "250||x y|2;");
}

static void test_reply_enhanced(void **state)
{
  (void)state;
  check_reply("250 2.1.0 Sender ok\r\n", 0, 0, 0, "250|2.1.0|Sender ok|1;");
  check_reply("550-5.1.1 The email account\r\n550-5.1.1 does not exist.\r\n550 5.1.1 Bye\r\n", 0, 0,
              0, "550|5.1.1|The email account does not exist. Bye|3;");
  /* class must match, digits bounded */
  check_reply("550 2.1.1 odd\r\n", 0, 0, 0, "550||2.1.1 odd|1;");
  check_reply("450 4.7.1000 x\r\n", 0, 0, 0, "450||4.7.1000 x|1;");
  check_reply("450 4.123.456\r\n", 0, 0, 0, "450|4.123.456||1;");
  check_reply("250 2.0.0x\r\n", 0, 0, 0, "250||2.0.0x|1;");
}

static void test_reply_errors(void **state)
{
  (void)state;
  check_reply("hello\r\n", 0, 0, 0, "ERR malformed reply;");
  check_reply("25\r\n", 0, 0, 0, "ERR malformed reply;");
  check_reply("650 x\r\n", 0, 0, 0, "ERR malformed reply;");
  check_reply("2a0 x\r\n", 0, 0, 0, "ERR malformed reply;");
  check_reply("250_x\r\n", 0, 0, 0, "ERR malformed reply;");
  check_reply("250-a\r\n251 b\r\n", 0, 0, 0, "ERR malformed reply;");
  check_reply("250 0123456789\r\n", 10, 0, 0, "ERR reply line too long;");
  check_reply("250 01234\r\n", 11, 0, 0, "250||01234|1;");
  check_reply("250-a\r\n250-b\r\n250 c\r\n", 0, 2, 0, "ERR too many lines in one reply;");
  check_reply("250-a\r\n250-b\r\n250 c\r\n", 0, 3, 0, "250||a b c|3;");
  check_reply("250-a\r\n250-b\r\n250 c\r\n", 0, 0, 20, "ERR reply too long;");
  check_reply("250-a\r\n250-b\r\n250 c\r\n", 0, 0, 21, "250||a b c|3;");
}

static void test_reply_sanitise_and_cut(void **state)
{
  (void)state;
  check_reply("250 a\tb\x7f\xc3\xa9\\\r\r\n", 0, 0, 0, "250||a\\x09b\\x7F\\xC3\\xA9\\x5C\\x0D|1;");
  /* a long reply is cut to SMTP_REPLY_TEXT_MAX - 1 bytes */
  static char in[20000];
  size_t o = 0;
  for (int i = 0; i < 100; i++)
    o += (size_t)snprintf(in + o, sizeof(in) - o, "250-%s\r\n",
                          "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz");
  o += (size_t)snprintf(in + o, sizeof(in) - o, "250 end\r\n");
  struct smtp_reply r;
  memset(&r, 0, sizeof(r));
  size_t used, off = 0;
  int st;
  while ((st = smtp_reply_parse(&r, in + off, o - off, &used)) == SMTP_REPLY_LINE)
    off += used;
  assert_int_equal(st, SMTP_REPLY_DONE);
  assert_true(strlen(r.text) <= SMTP_REPLY_TEXT_MAX - 1);
  assert_true(strlen(r.text) >= SMTP_REPLY_TEXT_MAX - 60);
  assert_int_equal(r.nlines, 101);
  /* a line longer than the kept prefix is cut but still parsed */
  char lng[2000];
  memset(lng, 'x', sizeof(lng));
  memcpy(lng, "250 ", 4);
  memcpy(lng + sizeof(lng) - 2, "\r\n", 2);
  memset(&r, 0, sizeof(r));
  st = smtp_reply_parse(&r, lng, sizeof(lng), &used);
  assert_int_equal(st, SMTP_REPLY_DONE);
  assert_int_equal(used, sizeof(lng));
  assert_int_equal(r.line_len, SMTP_REPLY_LINE_KEEP - 1 - 4);
}

/* Each line: raw -> encoded. */
static void encode_pieces(const char *in, size_t n, const size_t *cuts, size_t ncuts, size_t outcap,
                          char *out, size_t *olen)
{
  struct smtp_dot d;
  smtp_dot_init(&d);
  size_t o = 0, start = 0;
  for (size_t c = 0; c <= ncuts; c++) {
    size_t end = c < ncuts ? cuts[c] : n;
    size_t off = start;
    while (off < end) {
      size_t used;
      size_t cap = outcap;
      o += smtp_dot_encode(&d, in + off, end - off, out + o, cap, &used);
      off += used;
    }
    start = end;
  }
  o += smtp_dot_finish(&d, out + o);
  *olen = o;
}

static void check_dot(const char *in, const char *want)
{
  static char got[4096];
  size_t n = strlen(in), gl;
  for (size_t cap = 2; cap <= 9; cap += 7) { /* tiny output space and roomy */
    encode_pieces(in, n, NULL, 0, cap, got, &gl);
    got[gl] = '\0';
    assert_string_equal(got, want);
    for (size_t k = 1; k < n; k++) {
      encode_pieces(in, n, &k, 1, cap, got, &gl);
      got[gl] = '\0';
      assert_string_equal(got, want);
    }
    size_t cuts[512];
    for (size_t k = 1; k < n; k++)
      cuts[k - 1] = k;
    encode_pieces(in, n, cuts, n ? n - 1 : 0, cap, got, &gl);
    got[gl] = '\0';
    assert_string_equal(got, want);
  }
}

/* Reference for smtp_crlf_canonical: byte by byte. */
static bool canonical_ref(const uint8_t *p, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '\r' && (i + 1 >= n || p[i + 1] != '\n'))
      return false;
    if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
      return false;
  }
  return true;
}

/* BDAT bodies: the canonical check agrees with the byte-by-byte rule at
 * every length and position around the 64-byte steps, and the CRLF
 * encoder fixes line ends without touching dots. */
static void test_crlf(void **state)
{
  (void)state;
  static uint8_t b[300];
  assert_true(smtp_crlf_canonical("", 0));
  assert_true(smtp_crlf_canonical("a\r\n.b\r\n", 7));
  assert_false(smtp_crlf_canonical("a\n", 2));
  assert_false(smtp_crlf_canonical("a\r", 2));
  assert_false(smtp_crlf_canonical("a\rb", 3));
  assert_false(smtp_crlf_canonical("\r\r\n", 3));
  for (size_t n = 0; n < sizeof b; n += 7) {
    for (size_t i = 0; i < n; i++)
      b[i] = (uint8_t)('a' + i % 26);
    for (size_t i = 1; i + 1 < n; i += 13) { /* CRLF every 13 bytes */
      b[i] = '\r';
      b[i + 1] = '\n';
    }
    assert_int_equal(smtp_crlf_canonical(b, n), canonical_ref(b, n));
    for (size_t k = 0; k < n; k++) { /* one byte spoilt anywhere */
      uint8_t keep = b[k];
      b[k] = keep == '\r' ? 'x' : keep == '\n' ? '\r' : (k % 2 ? '\n' : '\r');
      assert_int_equal(smtp_crlf_canonical(b, n), canonical_ref(b, n));
      b[k] = keep;
    }
  }
  struct smtp_dot d;
  smtp_dot_init(&d);
  char out[64];
  size_t used;
  size_t o = smtp_crlf_encode(&d, ".a\n.b\rc", 7, out, sizeof out, &used);
  assert_int_equal(used, 7);
  assert_int_equal(o, 9);
  assert_memory_equal(out, ".a\r\n.b\r\nc", 9);
  assert_int_equal(smtp_dot_finish_len(&d), 5); /* still needs its CRLF */
}

static void test_dot(void **state)
{
  (void)state;
  check_dot("", ".\r\n");
  check_dot("a", "a\r\n.\r\n");
  check_dot("a\r\n", "a\r\n.\r\n");
  check_dot(".", "..\r\n.\r\n");
  check_dot(".\r\n", "..\r\n.\r\n");
  check_dot("a\n.b\n..c\n", "a\r\n..b\r\n...c\r\n.\r\n");
  check_dot("a\rb\r\rc", "a\r\nb\r\n\r\nc\r\n.\r\n");
  check_dot("x\r\n.\r\ny", "x\r\n..\r\ny\r\n.\r\n");
  check_dot("\n\n", "\r\n\r\n.\r\n");
  check_dot("\r\n\r\n.", "\r\n\r\n..\r\n.\r\n");
  check_dot("a.b\r\n c.\r\n", "a.b\r\n c.\r\n.\r\n");
  check_dot("\r\r\n\n", "\r\n\r\n\r\n.\r\n");
}

/* The encoder against a byte-at-a-time reference: random bodies (long
 * runs, dots, bare CR and LF), random cuts and output room. */
static size_t ref_dot(const uint8_t *in, size_t n, uint8_t *out)
{
  unsigned bol = 1, cr = 0;
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = in[i];
    if (c == '\r') {
      out[w++] = '\r';
      out[w++] = '\n';
      cr = bol = 1;
    } else if (c == '\n') {
      if (!cr) {
        out[w++] = '\r';
        out[w++] = '\n';
      }
      cr = 0;
      bol = 1;
    } else {
      if (bol && c == '.')
        out[w++] = '.';
      out[w++] = c;
      cr = bol = 0;
    }
  }
  if (!bol) {
    out[w++] = '\r';
    out[w++] = '\n';
  }
  memcpy(out + w, ".\r\n", 3);
  return w + 3;
}

static void test_dot_random(void **state)
{
  (void)state;
  static uint8_t in[3000], want[6100], got[6100];
  uint32_t x = 12345;
  for (int round = 0; round < 400; round++) {
    x = x * 1103515245u + 12345u;
    size_t n = (x >> 8) % sizeof(in);
    for (size_t i = 0; i < n; i++) {
      x = x * 1103515245u + 12345u;
      unsigned r = (x >> 16) % 100;
      in[i] = r < 3 ? '\r' : r < 8 ? '\n' : r < 12 ? '.' : (uint8_t)('a' + r % 26);
      if (round % 4 == 0 && r < 40) /* CRLF-only bodies too */
        in[i] = i && in[i - 1] == '\r' ? '\n' : 'q';
    }
    size_t wl = ref_dot(in, n, want);
    struct smtp_dot d;
    smtp_dot_init(&d);
    size_t off = 0, o = 0;
    while (off < n) {
      x = x * 1103515245u + 12345u;
      size_t piece = 1 + (x >> 10) % (round % 3 == 0 ? 7 : 900);
      if (piece > n - off)
        piece = n - off;
      x = x * 1103515245u + 12345u;
      size_t cap = 2 + (x >> 12) % (round % 2 ? 5 : 2000), used;
      o += smtp_dot_encode(&d, in + off, piece, got + o, cap, &used);
      off += used;
    }
    o += smtp_dot_finish(&d, got + o);
    assert_int_equal(o, wl);
    assert_memory_equal(got, want, wl);
  }
}

static void test_dot_finish_len(void **state)
{
  (void)state;
  struct smtp_dot d;
  smtp_dot_init(&d);
  assert_int_equal(smtp_dot_finish_len(&d), 3);
  char out[8];
  size_t used;
  smtp_dot_encode(&d, "x", 1, out, sizeof(out), &used);
  assert_int_equal(smtp_dot_finish_len(&d), 5);
  /* no progress without room for a stuffed dot / CRLF */
  smtp_dot_init(&d);
  assert_int_equal(smtp_dot_encode(&d, ".", 1, out, 1, &used), 0);
  assert_int_equal(used, 0);
  assert_int_equal(smtp_dot_encode(&d, "\n", 1, out, 1, &used), 0);
  assert_int_equal(used, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_reply_basic),     cmocka_unit_test(test_reply_enhanced),
    cmocka_unit_test(test_reply_errors),    cmocka_unit_test(test_reply_sanitise_and_cut),
    cmocka_unit_test(test_dot),             cmocka_unit_test(test_dot_finish_len),
    cmocka_unit_test(test_dot_random),      cmocka_unit_test(test_crlf),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
