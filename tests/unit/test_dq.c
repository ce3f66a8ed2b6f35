/* Unit tests for dq: queues per (binding, domain), ready vs deferred,
 * promotion in due order, round-robin over active queues, unpop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>

#include "dq.h"

static struct dq_unit *unit(uint64_t due, uintptr_t tag)
{
  struct dq_unit *u = dq_unit_new(1);
  u->due_ms = due;
  u->msg = (void *)tag;
  u->rcpt[0] = (uint32_t)tag;
  return u;
}

static void test_queues(void **state)
{
  (void)state;
  struct dq *d = dq_new();
  struct dq_queue *a = dq_queue(d, "default", "Example.com");
  assert_ptr_equal(a, dq_queue(d, "default", "example.COM"));
  assert_ptr_equal(a, dq_queue(d, NULL, "example.com"));
  assert_ptr_not_equal(a, dq_queue(d, "b1", "example.com"));
  assert_ptr_not_equal(a, dq_queue(d, "Default", "example.com")); /* binding names are case-sensitive */
  assert_string_equal(dq_queue_domain(a), "example.com");
  /* many queues: the table grows, lookups stay right */
  char dom[32];
  for (int i = 0; i < 1000; i++) {
    snprintf(dom, sizeof dom, "d%d.test", i);
    dq_queue(d, "default", dom);
  }
  assert_int_equal(dq_queue_count(d), 1003);
  for (int i = 0; i < 1000; i++) {
    snprintf(dom, sizeof dom, "D%d.TEST", i);
    char want[32];
    snprintf(want, sizeof want, "d%d.test", i);
    assert_string_equal(dq_queue_domain(dq_queue(d, "default", dom)), want);
  }
  assert_int_equal(dq_queue_count(d), 1003);
  dq_free(d, NULL, NULL);
}

static void test_ready_deferred(void **state)
{
  (void)state;
  struct dq *d = dq_new();
  struct dq_queue *a = dq_queue(d, "default", "a.test");
  struct dq_queue *b = dq_queue(d, "default", "b.test");
  dq_push(d, a, unit(0, 1), 1000);
  dq_push(d, a, unit(5000, 2), 1000);
  dq_push(d, b, unit(3000, 3), 1000);
  dq_push(d, b, unit(4000, 4), 1000);
  dq_push(d, a, unit(3000, 5), 1000);
  assert_int_equal(dq_total_ready(d), 1);
  assert_int_equal(dq_active_count(d), 1);
  assert_int_equal(dq_total_deferred(d), 4);
  assert_int_equal(dq_queue_deferred(a), 2);
  assert_int_equal(dq_next_due(d), 3000);
  assert_int_equal(dq_promote(d, 2999), 0);
  assert_int_equal(dq_promote(d, 3000), 2);
  assert_int_equal(dq_next_due(d), 4000);
  assert_int_equal(dq_queue_ready(a), 2);
  assert_int_equal(dq_queue_ready(b), 1);
  struct dq_unit *u = dq_pop(d, a);
  assert_int_equal((uintptr_t)u->msg, 1);
  dq_unit_free(u);
  u = dq_pop(d, a);
  assert_int_equal((uintptr_t)u->msg, 5);
  assert_null(dq_pop(d, a));
  dq_unpop(d, u); /* could not start: back at the head */
  assert_ptr_equal(dq_pop(d, a), u);
  dq_unit_free(u);
  assert_int_equal(dq_promote(d, 10000), 2);
  assert_int_equal(dq_next_due(d), UINT64_MAX);
  dq_free(d, NULL, NULL); /* frees the queued units */
}

static void test_round_robin(void **state)
{
  (void)state;
  struct dq *d = dq_new();
  struct dq_queue *q[3];
  for (int i = 0; i < 3; i++) {
    char dom[16];
    snprintf(dom, sizeof dom, "q%d.test", i);
    q[i] = dq_queue(d, "default", dom);
  }
  for (int i = 0; i < 3; i++)
    for (int k = 0; k < 10; k++)
      dq_push(d, q[i], unit(0, (uintptr_t)(i * 100 + k)), 0);
  /* each queue gets a turn before any gets a second one */
  int turns[3] = {0};
  for (int round = 0; round < 30; round++) {
    struct dq_queue *x = dq_next_active(d);
    assert_non_null(x);
    int i = x == q[0] ? 0 : x == q[1] ? 1 : 2;
    turns[i]++;
    for (int j = 0; j < 3; j++)
      assert_true(turns[j] - turns[i] <= 1 && turns[i] - turns[j] <= 1);
    dq_unit_free(dq_pop(d, x));
  }
  assert_null(dq_next_active(d));
  assert_int_equal(dq_total_ready(d), 0);
  dq_free(d, NULL, NULL);
}

static void test_heap_order(void **state)
{
  (void)state;
  struct dq *d = dq_new();
  struct dq_queue *a = dq_queue(d, "default", "a.test");
  srand(7);
  for (int i = 0; i < 2000; i++)
    dq_push(d, a, unit(1 + (uint64_t)(rand() % 100000), (uintptr_t)i), 0);
  uint64_t last = 0;
  for (uint64_t t = 0; t <= 100000; t += 997) {
    dq_promote(d, t);
    struct dq_unit *u;
    while ((u = dq_pop(d, a)) != NULL) {
      assert_true(u->due_ms >= last || u->due_ms <= t);
      assert_true(u->due_ms <= t);
      last = u->due_ms;
      dq_unit_free(u);
    }
  }
  dq_promote(d, UINT64_MAX - 1);
  struct dq_unit *u;
  while ((u = dq_pop(d, a)) != NULL)
    dq_unit_free(u);
  assert_int_equal(dq_total_deferred(d), 0);
  dq_free(d, NULL, NULL);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_queues),
    cmocka_unit_test(test_ready_deferred),
    cmocka_unit_test(test_round_robin),
    cmocka_unit_test(test_heap_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
