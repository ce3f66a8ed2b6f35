/* Unit tests for ctx: the message-context dictionary, its serialised form,
 * secret keys, and one writer with concurrent readers (run this binary in
 * a -Db_sanitize=thread build to have TSan check it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "ctx.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_basic(void **state)
{
  (void)state;
  struct ctx *c = ctx_new();
  assert_non_null(c);
  assert_null(ctx_get(c, "a"));
  assert_int_equal(ctx_delete(c, "a"), -ENOENT);
  assert_int_equal(ctx_set(c, "a", "1"), 0);
  assert_string_equal(ctx_get(c, "a"), "1");
  assert_true(ctx_exists(c, "a"));
  assert_int_equal(ctx_set(c, "a", "22"), 0);
  assert_string_equal(ctx_get(c, "a"), "22");
  assert_int_equal(ctx_count(c), 1);
  assert_int_equal(ctx_set(c, "", "x"), -EINVAL);
  assert_int_equal(ctx_set(c, "b", ""), 0);
  assert_string_equal(ctx_get(c, "b"), "");
  assert_int_equal(ctx_delete(c, "a"), 0);
  assert_null(ctx_get(c, "a"));
  assert_false(ctx_exists(c, "a"));
  assert_int_equal(ctx_count(c), 1);
  assert_int_equal(ctx_setn(c, "k\0x", 3, "v", 1, 0), -EINVAL);
  char *big = calloc(1, CTX_VALUE_MAX + 2);
  memset(big, 'x', CTX_VALUE_MAX + 1);
  assert_int_equal(ctx_set(c, "big", big), -E2BIG);
  free(big);
  ctx_quiesce(c);
  assert_string_equal(ctx_get(c, "b"), "");
  ctx_free(c);
  ctx_free(NULL);
  assert_null(ctx_get(NULL, "a"));
}

static void test_many_and_iterate(void **state)
{
  (void)state;
  struct ctx *c = ctx_new();
  char k[32], v[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(k, sizeof(k), "key%d", i);
    snprintf(v, sizeof(v), "val%d", i);
    assert_int_equal(ctx_set(c, k, v), 0);
  }
  for (int i = 0; i < 5000; i += 2) {
    snprintf(k, sizeof(k), "key%d", i);
    assert_int_equal(ctx_delete(c, k), 0);
  }
  /* Tombstones get reused and cleaned by growth. */
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 5000; i += 2) {
      snprintf(k, sizeof(k), "key%d", i);
      assert_int_equal(ctx_set(c, k, "again"), 0);
      assert_int_equal(ctx_delete(c, k), 0);
    }
  assert_int_equal(ctx_count(c), 2500);
  int seen = 0;
  struct ctx_iter it = {0};
  const char *key, *val;
  while (ctx_next(c, &it, &key, &val)) {
    int n = atoi(key + 3);
    assert_int_equal(n % 2, 1);
    snprintf(v, sizeof(v), "val%d", n);
    assert_string_equal(val, v);
    seen++;
  }
  assert_int_equal(seen, 2500);
  ctx_quiesce(c);
  ctx_free(c);
}

static void test_serialize_secrets(void **state)
{
  (void)state;
  const char *extra[] = {"my_secret"};
  assert_int_equal(ctx_secret_keys_set(extra, 1), 0);
  struct ctx *c = ctx_new();
  ctx_set(c, "outbound_smtp_auth_user", "bob");
  ctx_set(c, "outbound_smtp_auth_pass", "hunter2");
  ctx_set(c, "my_secret", "s3");
  ctx_setn(c, "flagged", 7, "s4", 2, CTX_F_SECRET);
  ctx_set(c, "k=v", "a\nb\r\tc\xc3\xa9");
  assert_true(ctx_key_is_secret("my_secret", 9));
  assert_false(ctx_key_is_secret("outbound_smtp_auth_user", 23));
  struct buf b = {0};
  size_t n = ctx_serialize(c, &b);
  assert_int_equal(n, b.len);
  assert_null(memmem(b.data, b.len, "hunter2", 7));
  assert_null(memmem(b.data, b.len, "s3", 2));
  assert_null(memmem(b.data, b.len, "s4", 2));
  struct ctx *d = ctx_new();
  assert_int_equal(ctx_deserialize(d, b.data, b.len), 0);
  assert_int_equal(ctx_count(d), 2);
  assert_string_equal(ctx_get(d, "outbound_smtp_auth_user"), "bob");
  assert_string_equal(ctx_get(d, "k=v"), "a\nb\r\tc\xc3\xa9");
  assert_null(ctx_get(d, "outbound_smtp_auth_pass"));
  /* Every truncation is malformed; so is trailing garbage. */
  for (size_t cut = 0; cut < b.len; cut++) {
    struct ctx *e = ctx_new();
    assert_int_equal(ctx_deserialize(e, b.data, cut), -EBADMSG);
    ctx_free(e);
  }
  buf_append(&b, "x", 1);
  struct ctx *e = ctx_new();
  assert_int_equal(ctx_deserialize(e, b.data, b.len), -EBADMSG);
  ctx_free(e);
  /* Empty / NULL dictionaries serialise to a zero count. */
  struct buf z = {0};
  assert_int_equal(ctx_serialize(NULL, &z), 4);
  e = ctx_new();
  assert_int_equal(ctx_deserialize(e, z.data, z.len), 0);
  assert_int_equal(ctx_count(e), 0);
  ctx_free(e);
  buf_done(&z, 0);
  /* Deleting a secret then freeing wipes it (checked by ASan for access,
   * here for behaviour). */
  assert_int_equal(ctx_delete(c, "outbound_smtp_auth_pass"), 0);
  ctx_quiesce(c);
  buf_done(&b, 0);
  ctx_free(c);
  ctx_free(d);
  assert_int_equal(ctx_secret_keys_set(NULL, 0), 0);
}

/* One writer, several readers. Values always have the form "<key>:<gen>",
 * so a reader can check it never sees a torn or foreign value. */
#define NKEYS 64
#define NREADERS 3
static struct ctx *shared;
static atomic_int done;
static atomic_long reads_ok;

static void *reader(void *arg)
{
  (void)arg;
  char k[16];
  unsigned x = 12345;
  while (!atomic_load(&done)) {
    x = x * 1103515245u + 12345u;
    int i = (int)((x >> 8) % NKEYS);
    snprintf(k, sizeof(k), "k%d", i);
    const char *v = ctx_get(shared, k);
    if (v) {
      size_t kl = strlen(k);
      if (strncmp(v, k, kl) != 0 || v[kl] != ':')
        abort();
      atomic_fetch_add(&reads_ok, 1);
    }
    if ((x & 0xff) == 0) {
      struct ctx_iter it = {0};
      const char *key, *val;
      while (ctx_next(shared, &it, &key, &val))
        if (strncmp(val, key, strlen(key)) != 0)
          abort();
    }
  }
  return NULL;
}

static void test_one_writer_many_readers(void **state)
{
  (void)state;
  shared = ctx_new();
  atomic_store(&done, 0);
  pthread_t th[NREADERS];
  for (int i = 0; i < NREADERS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, reader, NULL), 0);
  char k[16], v[48];
  for (int gen = 0; gen < 20000; gen++) {
    int i = gen % NKEYS;
    snprintf(k, sizeof(k), "k%d", i);
    if (gen % 7 == 3) {
      ctx_delete(shared, k);
    } else {
      snprintf(v, sizeof(v), "%s:%d", k, gen);
      assert_int_equal(ctx_set(shared, k, v), 0);
    }
    /* Force resizes now and then with temporary keys. */
    if (gen % 5000 == 0) {
      for (int j = 0; j < 200; j++) {
        snprintf(k, sizeof(k), "t%d", j);
        snprintf(v, sizeof(v), "t%d:%d", j, gen);
        ctx_set(shared, k, v);
      }
      for (int j = 0; j < 200; j++) {
        snprintf(k, sizeof(k), "t%d", j);
        ctx_delete(shared, k);
      }
    }
  }
  atomic_store(&done, 1);
  for (int i = 0; i < NREADERS; i++)
    pthread_join(th[i], NULL);
  /* Quiescent point: no reader left. */
  ctx_quiesce(shared);
  ctx_free(shared);
  shared = NULL;
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basic),
      cmocka_unit_test(test_many_and_iterate),
      cmocka_unit_test(test_serialize_secrets),
      cmocka_unit_test(test_one_writer_many_readers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
