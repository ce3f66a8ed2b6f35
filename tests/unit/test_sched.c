/* Unit tests for sched (back-off, expiry, limits, batching, pool, owner),
 * throttle (parse, pacing, shared buckets across threads) and hash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "hash.h"
#include "scheduler.h"
#include "throttle.h"

static void test_siphash_vector(void **state)
{
  (void)state;
  /* Reference vectors of SipHash-2-4, key 00..0f, messages 00..(n-1). */
  struct hash_key k = {0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
  uint8_t m[16];
  for (int i = 0; i < 16; i++)
    m[i] = (uint8_t)i;
  assert_true(hash_sip(&k, m, 0) == 0x726fdb47dd0e0e31ULL);
  assert_true(hash_sip(&k, m, 1) == 0x74f839c593dc67fdULL);
  assert_true(hash_sip(&k, m, 8) == 0x93f5f5799a932462ULL);
  assert_true(hash_sip(&k, m, 15) == 0xa129ca6149be45e5ULL);
}

static void test_backoff(void **state)
{
  (void)state;
  struct sched_retry p = SCHED_RETRY_DEFAULTS;
  assert_int_equal(sched_backoff_s(&p, 1), 1200);
  assert_int_equal(sched_backoff_s(&p, 2), 2400);
  assert_int_equal(sched_backoff_s(&p, 3), 4800);
  assert_int_equal(sched_backoff_s(&p, 6), 38400);
  assert_int_equal(sched_backoff_s(&p, 7), 43200); /* capped */
  assert_int_equal(sched_backoff_s(&p, 1000), 43200);
  struct sched_retry fixed = {.retry_interval_s = 1200, .max_retry_interval_s = 1200,
                              .max_retries = 5, .message_expiration_s = 86400};
  for (uint32_t i = 1; i < 10; i++)
    assert_int_equal(sched_backoff_s(&fixed, i), 1200);
}

static void test_after_tempfail(void **state)
{
  (void)state;
  struct sched_retry p = {.retry_interval_s = 2, .max_retry_interval_s = 10,
                          .max_retries = SCHED_MAX_RETRIES_AUTO, .message_expiration_s = 30};
  uint64_t next = 0;
  /* milliseconds: a retry is due exactly one back-off after the failure */
  assert_int_equal(sched_after_tempfail(&p, 1, 1000000, 1000250, &next), SCHED_RETRY);
  assert_int_equal(next, 1002250);
  assert_int_equal(sched_after_tempfail(&p, 1, 1000000, 1000000, &next), SCHED_RETRY);
  assert_int_equal(next, 1002000);
  assert_int_equal(sched_after_tempfail(&p, 2, 1000000, 1002000, &next), SCHED_RETRY);
  assert_int_equal(next, 1006000);
  assert_int_equal(sched_after_tempfail(&p, 3, 1000000, 1006000, &next), SCHED_RETRY);
  assert_int_equal(next, 1014000);
  assert_int_equal(sched_after_tempfail(&p, 4, 1000000, 1014000, &next), SCHED_RETRY);
  assert_int_equal(next, 1024000); /* capped at 10 */
  /* next would be 1034 > expiry 1030: come back at the expiry instant */
  assert_int_equal(sched_after_tempfail(&p, 5, 1000000, 1024000, &next), SCHED_RETRY);
  assert_int_equal(next, 1030000);
  assert_true(sched_expired(&p, 1000000, 1030000));
  assert_false(sched_expired(&p, 1000000, 1029000));
  assert_int_equal(sched_after_tempfail(&p, 6, 1000000, 1030000, &next), SCHED_EXPIRED_TIME);

  struct sched_retry r = {.retry_interval_s = 1, .max_retry_interval_s = 1, .max_retries = 2,
                          .message_expiration_s = 86400};
  assert_int_equal(sched_after_tempfail(&r, 1, 0000, 0000, &next), SCHED_RETRY);
  assert_int_equal(sched_after_tempfail(&r, 2, 0000, 1000, &next), SCHED_RETRY);
  assert_int_equal(sched_after_tempfail(&r, 3, 0000, 2000, &next), SCHED_EXPIRED_RETRIES);
  r.max_retries = 0; /* no retry at all */
  assert_int_equal(sched_after_tempfail(&r, 1, 0000, 0000, &next), SCHED_EXPIRED_RETRIES);
}

static void test_throttle_parse(void **state)
{
  (void)state;
  struct throttle_spec s;
  assert_int_equal(throttle_parse("10", &s), 0);
  assert_int_equal(s.n, 10);
  assert_int_equal(s.per_s, 1);
  assert_int_equal(throttle_parse("100/60", &s), 0);
  assert_int_equal(s.n, 100);
  assert_int_equal(s.per_s, 60);
  assert_int_equal(throttle_parse(" 5 / 2 ", &s), 0);
  assert_int_equal(s.n, 5);
  assert_int_equal(s.per_s, 2);
  assert_int_equal(throttle_parse("0", &s), 0);
  assert_int_equal(s.n, 0);
  assert_int_equal(throttle_parse("", &s), -EINVAL);
  assert_int_equal(throttle_parse("10/0", &s), -EINVAL);
  assert_int_equal(throttle_parse("10/", &s), -EINVAL);
  assert_int_equal(throttle_parse("x", &s), -EINVAL);
  assert_int_equal(throttle_parse("-1", &s), -EINVAL);
  assert_int_equal(throttle_parse("5/2s", &s), -EINVAL);
  assert_int_equal(throttle_parse("99999999999", &s), -EINVAL);
}

static void test_throttle_pacing(void **state)
{
  (void)state;
  struct throttle_spec s = {.n = 10, .per_s = 2}; /* one per 200 ms */
  struct throttle t;
  throttle_init(&t, &s);
  uint64_t ms = 1000000;
  uint64_t now = 5000 * ms;
  assert_int_equal(throttle_take(&t, now), 0);
  assert_int_equal(throttle_take(&t, now), 200 * ms);
  assert_int_equal(throttle_take(&t, now + 150 * ms), 50 * ms);
  assert_int_equal(throttle_take(&t, now + 200 * ms), 0);
  /* idle for a long time: no credit builds up, still one at a time */
  assert_int_equal(throttle_take(&t, now + 100000 * ms), 0);
  assert_int_equal(throttle_take(&t, now + 100000 * ms), 200 * ms);
  /* any half-open window of S seconds holds at most N takes */
  throttle_init(&t, &s);
  unsigned taken = 0;
  for (uint64_t x = now; x < now + 2000 * ms; x += ms)
    if (throttle_take(&t, x) == 0)
      taken++;
  assert_int_equal(taken, 10);
  struct throttle_spec unl = {0};
  throttle_init(&t, &unl);
  for (int i = 0; i < 1000; i++)
    assert_int_equal(throttle_take(&t, now), 0);
}

static void test_throttle_registry_sharing(void **state)
{
  (void)state;
  struct throttle_registry *r = throttle_registry_new();
  struct throttle_spec s = {.n = 10, .per_s = 1};
  /* b1 and b2 both fell back to binding_group g1: one bucket */
  struct throttle *a = throttle_registry_get(r, "binding_group:g1", "Outbound_Throttle_Messages", &s);
  struct throttle *b = throttle_registry_get(r, "binding_group:g1", "outbound_throttle_messages", &s);
  struct throttle *c = throttle_registry_get(r, "binding:b1", "outbound_throttle_messages", &s);
  struct throttle *d = throttle_registry_get(r, "binding_group:g1", "outbound_throttle_connections", &s);
  assert_ptr_equal(a, b);
  assert_ptr_not_equal(a, c);
  assert_ptr_not_equal(a, d);
  struct throttle_spec s2 = {.n = 20, .per_s = 1};
  assert_ptr_not_equal(a, throttle_registry_get(r, "binding_group:g1", "outbound_throttle_messages", &s2));
  struct throttle_spec z = {0};
  assert_null(throttle_registry_get(r, "global", "outbound_throttle_messages", &z));
  throttle_registry_free(r);
  throttle_registry_free(NULL);
}

/* Two threads hammer one shared bucket with the same clock values: the
 * total granted never exceeds what the rate allows. */
#define HAMMER_STEPS 20000
static struct throttle shared;
static void *hammer(void *arg)
{
  unsigned *granted = arg;
  uint64_t base = 1000000000ULL;
  for (uint64_t i = 0; i < HAMMER_STEPS; i++)
    for (int k = 0; k < 4; k++)
      if (throttle_take(&shared, base + i * 100000ULL) == 0) /* 0.1 ms steps */
        (*granted)++;
  return NULL;
}

static void test_throttle_shared_threads(void **state)
{
  (void)state;
  struct throttle_spec s = {.n = 1000, .per_s = 1}; /* one per ms */
  throttle_init(&shared, &s);
  unsigned g1 = 0, g2 = 0;
  pthread_t t1, t2;
  pthread_create(&t1, NULL, hammer, &g1);
  pthread_create(&t2, NULL, hammer, &g2);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  /* 2 s of simulated time at 1000/s: at most 2000 (+1 for the edge). The
   * two threads' clocks interleave, so a little less is fine too. */
  assert_true(g1 + g2 <= 2001);
  assert_true(g1 + g2 >= 1000);
}

static void test_limits(void **state)
{
  (void)state;
  struct sched_limits l = {.max_outbound_connections = 2, .max_recipients_per_batch = 100};
  struct sched_acct a = {0};
  uint64_t wait = 0;
  assert_int_equal(sched_conn_open(&l, &a, 0, &wait), SCHED_OPEN_OK);
  assert_int_equal(sched_conn_open(&l, &a, 0, &wait), SCHED_OPEN_OK);
  assert_int_equal(sched_conn_open(&l, &a, 0, &wait), SCHED_OPEN_FULL);
  sched_conn_closed(&a);
  assert_int_equal(sched_conn_open(&l, &a, 0, &wait), SCHED_OPEN_OK);
  l.suspend_delivery = true;
  sched_conn_closed(&a);
  assert_int_equal(sched_conn_open(&l, &a, 0, &wait), SCHED_OPEN_SUSPENDED);
  l.suspend_delivery = false;

  struct throttle t;
  struct throttle_spec s = {.n = 1, .per_s = 1};
  throttle_init(&t, &s);
  l.conn_throttle = &t;
  l.max_outbound_connections = 0; /* unlimited */
  assert_int_equal(sched_conn_open(&l, &a, 1000, &wait), SCHED_OPEN_OK);
  assert_int_equal(sched_conn_open(&l, &a, 1000, &wait), SCHED_OPEN_THROTTLED);
  assert_int_equal(wait, 1000000000ULL);

  assert_true(sched_conn_reusable(&l, 1000000));
  l.max_deliveries_per_connection = 3;
  assert_true(sched_conn_reusable(&l, 2));
  assert_false(sched_conn_reusable(&l, 3));

  assert_int_equal(sched_batches(&l, 0), 0);
  assert_int_equal(sched_batches(&l, 100), 1);
  assert_int_equal(sched_batches(&l, 200), 2);
  assert_int_equal(sched_batches(&l, 201), 3);
  assert_int_equal(sched_batch_size(&l, 201, 0), 100);
  assert_int_equal(sched_batch_size(&l, 201, 2), 1);
  assert_int_equal(sched_batch_size(&l, 201, 3), 0);
  l.max_recipients_per_batch = 0;
  assert_int_equal(sched_batches(&l, 3), 3);

  struct throttle mt;
  throttle_init(&mt, &s);
  l.msg_throttle = &mt;
  assert_int_equal(sched_msg_take(&l, 5), 0);
  assert_true(sched_msg_take(&l, 5) > 0);
}

static void test_pool(void **state)
{
  (void)state;
  uint64_t alice = sched_cred_identity("LOGIN", "alice", "secret1");
  uint64_t alice2 = sched_cred_identity("LOGIN", "alice", "secret1");
  uint64_t alice_pw = sched_cred_identity("LOGIN", "alice", "secret2");
  uint64_t bob = sched_cred_identity("LOGIN", "bob", "secret1");
  uint64_t split = sched_cred_identity("LOGIN", "alices", "ecret1");
  assert_true(alice == alice2);
  assert_true(alice != alice_pw);
  assert_true(alice != bob);
  assert_true(alice != split);
  assert_true(alice != 0);
  assert_true(sched_cred_identity(NULL, NULL, NULL) == 0);
  assert_true(sched_cred_identity("PLAIN", "", "") == 0);

  uint64_t ka = sched_pool_key("10.0.0.1:25", "b1", alice);
  uint64_t kb = sched_pool_key("10.0.0.1:25", "b1", bob);
  uint64_t kn = sched_pool_key("10.0.0.1:25", "b1", 0);
  uint64_t kother = sched_pool_key("10.0.0.1:25", "b2", alice);
  assert_true(ka != kb && ka != kn && ka != kother);

  struct sched_pool p = {0};
  int c1, c2, c3;
  assert_int_equal(sched_pool_put(&p, ka, &c1, 100), 0);
  assert_int_equal(sched_pool_put(&p, kb, &c2, 200), 0);
  assert_int_equal(sched_pool_put(&p, ka, &c3, 300), 0);
  assert_null(sched_pool_take(&p, kn)); /* no connection for other credentials */
  assert_ptr_equal(sched_pool_take(&p, ka), &c3); /* most recent first */
  assert_ptr_equal(sched_pool_expire(&p, 250, 100), &c1); /* idle since 100 */
  assert_null(sched_pool_expire(&p, 250, 100));
  assert_true(sched_pool_remove(&p, &c2));
  assert_false(sched_pool_remove(&p, &c2));
  assert_null(sched_pool_take(&p, kb));
  assert_int_equal(p.n, 0);
  for (int i = 0; i < SCHED_POOL_MAX; i++)
    assert_int_equal(sched_pool_put(&p, ka, &c1, 0), 0);
  assert_int_equal(sched_pool_put(&p, ka, &c1, 0), -ENOSPC);
}

static void test_owner(void **state)
{
  (void)state;
  unsigned seen[4] = {0};
  char dom[32];
  for (int i = 0; i < 400; i++) {
    snprintf(dom, sizeof dom, "d%d.example", i);
    unsigned o = sched_owner("default", dom, 4);
    assert_true(o < 4);
    seen[o]++;
    assert_int_equal(o, sched_owner("default", dom, 4));
  }
  for (int i = 0; i < 4; i++)
    assert_true(seen[i] > 40); /* spread */
  assert_int_equal(sched_owner("b", "Example.COM", 7), sched_owner("b", "example.com", 7));
  assert_int_equal(sched_owner("b", "x", 1), 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_siphash_vector),
    cmocka_unit_test(test_backoff),
    cmocka_unit_test(test_after_tempfail),
    cmocka_unit_test(test_throttle_parse),
    cmocka_unit_test(test_throttle_pacing),
    cmocka_unit_test(test_throttle_registry_sharing),
    cmocka_unit_test(test_throttle_shared_threads),
    cmocka_unit_test(test_limits),
    cmocka_unit_test(test_pool),
    cmocka_unit_test(test_owner),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
