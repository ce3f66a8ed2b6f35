/* Unit tests for the console's data structures: counters (totals,
 * per-(binding, domain) entries, the bounded table's "other" overflow,
 * no-ops before init) and the dq additions the console uses
 * (dq_foreach_unit, dq_hasten, dq_remove). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "counters.h"
#include "dq.h"
#include "histo.h"
#include "luam.h"
#include "metrics.h"

struct seen {
  uint64_t delivered_a, other, pairs;
};

static void visit(void *arg, const char *binding, const char *domain, const uint64_t c[])
{
  struct seen *s = arg;
  s->pairs++;
  if (!strcmp(binding, "default") && !strcmp(domain, "a.test"))
    s->delivered_a += c[COUNTERS_DELIVERED];
  if (!strcmp(domain, "other"))
    s->other += c[COUNTERS_RECEIVED];
}

static void test_counters(void **state)
{
  (void)state;
  counters_add(0, "b", "x.test", COUNTERS_DELIVERED, 1); /* before init: no-op */
  assert_int_equal(counters_init(3), 0);
  counters_add(0, NULL, "A.TEST", COUNTERS_DELIVERED, 2);
  counters_add(1, "default", "a.test", COUNTERS_DELIVERED, 3);
  counters_add(2, "b", "a.test", COUNTERS_PERMANENT, 1);
  counters_add(7, "b", "a.test", COUNTERS_PERMANENT, 1); /* bad slot: ignored */
  counters_event(1, COUNTERS_TLS_OK);
  counters_event(2, COUNTERS_TLS_OK);
  uint64_t t[COUNTERS_KINDS];
  counters_totals(t);
  assert_int_equal(t[COUNTERS_DELIVERED], 5);
  assert_int_equal(t[COUNTERS_PERMANENT], 1);
  assert_int_equal(counters_event_total(COUNTERS_TLS_OK), 2);
  struct seen s = {0};
  counters_foreach(visit, &s);
  assert_int_equal(s.delivered_a, 5); /* case-insensitive domain, NULL = default */
  assert_int_equal(s.pairs, 3);
  /* the table is bounded: thousands of domains end in "other" */
  for (int i = 0; i < 5000; i++) {
    char d[32];
    snprintf(d, sizeof d, "d%d.test", i);
    counters_add(0, "b", d, COUNTERS_RECEIVED, 1);
  }
  counters_totals(t);
  assert_int_equal(t[COUNTERS_RECEIVED], 5000);
  memset(&s, 0, sizeof s);
  counters_foreach(visit, &s);
  assert_true(s.pairs <= 3 * COUNTERS_KEYS);
  assert_true(s.other > 0);
  assert_string_equal(counters_kind_name(COUNTERS_TRANSIENT), "transient");
  assert_string_equal(counters_event_name(COUNTERS_AUTH_OK), "auth_ok");
  counters_done();
}

static bool count_unit(void *arg, struct dq_unit *u, bool deferred)
{
  (void)u;
  size_t *n = arg;
  n[deferred ? 1 : 0]++;
  return true;
}

static bool pick_q(void *arg, struct dq_unit *u)
{
  return u->q == arg;
}

static void test_dq_console(void **state)
{
  (void)state;
  struct dq *d = dq_new();
  struct dq_queue *a = dq_queue(d, "default", "a.test"), *b = dq_queue(d, "default", "b.test");
  struct dq_unit *u[10];
  for (int i = 0; i < 10; i++) {
    u[i] = dq_unit_new(1);
    u[i]->due_ms = i < 2 ? 0 : 1000 + (uint64_t)i;
    dq_push(d, i % 2 ? b : a, u[i], 100);
  }
  size_t n[2] = {0, 0};
  dq_foreach_unit(d, count_unit, n);
  assert_int_equal(n[0], 2);
  assert_int_equal(n[1], 8);
  /* remove one deferred and one ready unit */
  dq_remove(d, u[5]);
  dq_remove(d, u[0]);
  assert_int_equal(dq_total_deferred(d), 7);
  assert_int_equal(dq_total_ready(d), 1);
  assert_int_equal(dq_queue_ready(a), 0);
  dq_unit_free(u[5]);
  dq_unit_free(u[0]);
  /* the heap is still ordered after the removal */
  assert_int_equal(dq_next_due(d), 1002);
  /* flush b.test: its deferred units (3, 7, 9) become ready now */
  assert_int_equal(dq_hasten(d, pick_q, b, 200), 3);
  assert_int_equal(dq_queue_ready(b), 4);
  assert_int_equal(dq_queue_deferred(b), 0);
  assert_int_equal(dq_queue_deferred(a), 4);
  assert_int_equal(dq_next_due(d), 1002);
  assert_int_equal(dq_promote(d, 1004), 2);
  dq_free(d, NULL, NULL);
}

/* Bucket placement: a value equal to a bound falls in that bucket; the
 * snapshot is cumulative and ends with the count. */
static void test_histo(void **state)
{
  (void)state;
  struct histo h = {0};
  histo_observe(&h, 0);                          /* <= 50 us */
  histo_observe(&h, histo_bounds_ns[0]);         /* <= 50 us */
  histo_observe(&h, histo_bounds_ns[0] + 1);     /* <= 100 us */
  histo_observe(&h, 3000000);                    /* <= 5 ms */
  histo_observe(&h, 20000000000ull);             /* +Inf */
  struct histo_snap sn;
  histo_read(&h, &sn);
  assert_int_equal(sn.le[0], 2);
  assert_int_equal(sn.le[1], 3);
  assert_int_equal(sn.le[5], 3);  /* 2.5 ms */
  assert_int_equal(sn.le[6], 4);  /* 5 ms */
  assert_int_equal(sn.le[HISTO_BUCKETS - 1], 4);
  assert_int_equal(sn.le[HISTO_BUCKETS], 5);
  assert_int_equal(sn.sum_ns, 2 * histo_bounds_ns[0] + 1 + 3000000 + 20000000000ull);
  for (int i = 1; i < HISTO_BUCKETS; i++)
    assert_true(histo_bounds_ns[i] > histo_bounds_ns[i - 1]);
}

/* Lua hook counters per (hook, cause) and the spool sync histogram as the
 * endpoint renders them. */
static void test_metrics_lua_and_histogram(void **state)
{
  (void)state;
  assert_int_equal(counters_init(2), 0);
  counters_lua(0, LUAM_HOOK_VALIDATE_DATA_SPOOL, LUAM_EV_CALL);
  counters_lua(1, LUAM_HOOK_VALIDATE_DATA_SPOOL, LUAM_EV_CALL);
  counters_lua(1, LUAM_HOOK_VALIDATE_DATA_SPOOL, LUAM_EV_BUDGET);
  counters_lua(0, LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG, LUAM_EV_ERROR);
  counters_lua(0, COUNTERS_LUA_HOOKS, LUAM_EV_ERROR); /* out of range: ignored */
  assert_int_equal(counters_lua_total(LUAM_HOOK_VALIDATE_DATA_SPOOL, LUAM_EV_CALL), 2);
  assert_int_equal(counters_event_total(COUNTERS_LUA_ERRORS), 2);
  struct metrics_worker w = {0};
  struct metrics_input in = {.nworkers = 1, .w = &w, .workers_answered = true};
  struct histo h = {0};
  histo_observe(&h, 700000);   /* 0.7 ms */
  histo_observe(&h, 30000000); /* 30 ms */
  histo_read(&h, &in.spool.sync_latency);
  in.spool.syncs = 2;
  struct buf b = {0};
  metrics_render(&b, &in);
  buf_append(&b, "", 1);
  const char *t = (const char *)buf_head(&b);
  assert_non_null(strstr(t, "impetus_lua_hook_calls_total{hook=\"validate_data_spool\"} 2\n"));
  assert_non_null(strstr(t, "impetus_lua_hook_errors_total{hook=\"validate_data_spool\",cause=\"budget\"} 1\n"));
  assert_non_null(strstr(t, "impetus_lua_hook_errors_total{hook=\"validate_data_spool\",cause=\"error\"} 0\n"));
  assert_non_null(strstr(t, "impetus_lua_hook_errors_total{hook=\"outbound_smtp_auth_config\",cause=\"error\"} 1\n"));
  assert_non_null(strstr(t, "# TYPE impetus_spool_sync_seconds histogram\n"));
  assert_non_null(strstr(t, "impetus_spool_sync_seconds_bucket{le=\"0.0005\"} 0\n"));
  assert_non_null(strstr(t, "impetus_spool_sync_seconds_bucket{le=\"0.001\"} 1\n"));
  assert_non_null(strstr(t, "impetus_spool_sync_seconds_bucket{le=\"0.05\"} 2\n"));
  assert_non_null(strstr(t, "impetus_spool_sync_seconds_bucket{le=\"+Inf\"} 2\n"));
  assert_non_null(strstr(t, "impetus_spool_sync_seconds_sum 0.030700000\n"));
  assert_non_null(strstr(t, "impetus_spool_sync_seconds_count 2\n"));
  buf_done(&b, 0);
  counters_done();
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_counters),
    cmocka_unit_test(test_dq_console),
    cmocka_unit_test(test_histo),
    cmocka_unit_test(test_metrics_lua_and_histogram),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
