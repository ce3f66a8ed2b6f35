/* Unit tests for util mpsc: order and a
 * multi-producer stress run (every node popped exactly once, each
 * producer's nodes in its own order). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>

#include "mpsc.h"

struct item {
  struct mpsc_node node; /* first: a node is its item */
  unsigned producer;
  unsigned seq;
};

static void test_fifo(void **state)
{
  (void)state;
  struct mpsc q;
  mpsc_init(&q);
  assert_null(mpsc_pop(&q));
  struct item it[5];
  for (unsigned i = 0; i < 5; i++) {
    it[i].seq = i;
    mpsc_push(&q, &it[i].node);
  }
  for (unsigned i = 0; i < 5; i++) {
    struct mpsc_node *n = mpsc_pop(&q);
    assert_non_null(n);
    assert_int_equal(((struct item *)(void *)(n))->seq, i);
  }
  assert_null(mpsc_pop(&q));
  /* reuse after empty */
  mpsc_push(&q, &it[0].node);
  assert_ptr_equal(mpsc_pop(&q), &it[0].node);
  assert_null(mpsc_pop(&q));
}

#define PRODUCERS 4
#define PER 50000

static struct mpsc stress_q;

static void *producer(void *arg)
{
  unsigned id = (unsigned)(uintptr_t)arg;
  struct item *items = calloc(PER, sizeof *items);
  for (unsigned i = 0; i < PER; i++) {
    items[i].producer = id;
    items[i].seq = i;
    mpsc_push(&stress_q, &items[i].node);
  }
  return items;
}

static void test_stress(void **state)
{
  (void)state;
  mpsc_init(&stress_q);
  pthread_t t[PRODUCERS];
  for (unsigned i = 0; i < PRODUCERS; i++)
    pthread_create(&t[i], NULL, producer, (void *)(uintptr_t)i);
  unsigned next[PRODUCERS] = {0};
  unsigned got = 0;
  while (got < PRODUCERS * PER) {
    struct mpsc_node *n = mpsc_pop(&stress_q);
    if (n == NULL)
      continue;
    struct item *it = ((struct item *)(void *)(n));
    assert_true(it->producer < PRODUCERS);
    assert_int_equal(it->seq, next[it->producer]);
    next[it->producer]++;
    got++;
  }
  assert_null(mpsc_pop(&stress_q));
  for (unsigned i = 0; i < PRODUCERS; i++) {
    void *items;
    pthread_join(t[i], &items);
    free(items);
    assert_int_equal(next[i], PER);
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_fifo),
    cmocka_unit_test(test_stress),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
