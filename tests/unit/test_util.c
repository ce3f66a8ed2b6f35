/* Unit tests for util: buf and base64. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "base64.h"
#include "buf.h"

static void test_base64_vectors(void **state)
{
  (void)state;
  static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  static const char *const enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (size_t i = 0; i < 7; i++) {
    char out[32];
    size_t n = base64_encode(plain[i], strlen(plain[i]), out);
    assert_int_equal(n, strlen(enc[i]));
    assert_string_equal(out, enc[i]);
    char back[32];
    long m = base64_decode(enc[i], strlen(enc[i]), back);
    assert_int_equal(m, (long)strlen(plain[i]));
    assert_memory_equal(back, plain[i], (size_t)m);
  }
}

static void test_base64_plain_auth(void **state)
{
  (void)state;
  char out[64];
  base64_encode("\0msys\0msys", 10, out);
  assert_string_equal(out, "AG1zeXMAbXN5cw==");
}

static void test_base64_rejects(void **state)
{
  (void)state;
  char out[16];
  assert_true(base64_decode("Zm9", 3, out) < 0);
  assert_true(base64_decode("Zm9v!A==", 8, out) < 0);
  assert_true(base64_decode("Z=9v", 4, out) < 0);
}

static void test_buf_grow_consume(void **state)
{
  (void)state;
  struct buf b = {0};
  for (int i = 0; i < 1000; i++)
    buf_printf(&b, "%04d", i);
  assert_int_equal(buf_avail(&b), 4000);
  assert_memory_equal(buf_head(&b), "0000", 4);
  buf_consume(&b, 3996);
  assert_memory_equal(buf_head(&b), "0999", 4);
  buf_consume(&b, 4);
  assert_int_equal(b.len, 0);
  buf_done(&b, 1);
  assert_null(b.data);
}

/* The one JSON string escaper (console, JSON log, sink). */
static void test_buf_append_json(void **state)
{
  (void)state;
  struct buf b = {0};
  const char in[] = "a\"b\\c\n\x01\x7f\xc3\xbc";
  buf_append_json(&b, in, sizeof in - 1, 0);
  const char want[] = "a\\\"b\\\\c\\u000a\\u0001\\u007f\xc3\xbc";
  assert_int_equal(buf_avail(&b), sizeof want - 1);
  assert_memory_equal(buf_head(&b), want, sizeof want - 1);
  buf_reset(&b);
  buf_append_json(&b, "\xc3\xbc", 2, 1);
  assert_int_equal(buf_avail(&b), 12);
  assert_memory_equal(buf_head(&b), "\\u00c3\\u00bc", 12);
  buf_done(&b, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_base64_vectors),
      cmocka_unit_test(test_base64_plain_auth),
      cmocka_unit_test(test_base64_rejects),
      cmocka_unit_test(test_buf_grow_consume),
      cmocka_unit_test(test_buf_append_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
