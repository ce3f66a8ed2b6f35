/* Unit tests of cluster_calc: the pure arithmetic of cluster limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "cluster_calc.h"

static void test_url(void **state)
{
  (void)state;
  struct clcalc_url u;
  assert_int_equal(clcalc_url_parse("redis://127.0.0.1:6380/2", &u), 0);
  assert_string_equal(u.host, "127.0.0.1");
  assert_int_equal(u.port, 6380);
  assert_int_equal(u.db, 2);
  assert_string_equal(u.pass, "");
  assert_false(u.tls);
  assert_int_equal(clcalc_url_parse("redis://localhost", &u), 0);
  assert_int_equal(u.port, 6379);
  assert_int_equal(u.db, 0);
  assert_int_equal(clcalc_url_parse("redis://:s3cret@h:1/0", &u), 0);
  assert_string_equal(u.pass, "s3cret");
  assert_string_equal(u.user, "");
  assert_int_equal(clcalc_url_parse("rediss://alice:pw@[::1]:7000/3", &u), 0);
  assert_true(u.tls);
  assert_string_equal(u.user, "alice");
  assert_string_equal(u.pass, "pw");
  assert_string_equal(u.host, "::1");
  assert_int_equal(u.port, 7000);
  assert_int_equal(u.db, 3);
  /* user and password percent-decoded: a password may hold '@', ':', '/' */
  assert_int_equal(clcalc_url_parse("rediss://a%40b:p%2Fw%3a%40x@redis.example:6380", &u), 0);
  assert_string_equal(u.user, "a@b");
  assert_string_equal(u.pass, "p/w:@x");
  assert_string_equal(u.host, "redis.example");
  assert_int_equal(clcalc_url_parse("redis://:p%4@h", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://:p%zz@h", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://:p%00@h", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("http://h", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://h:0", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://h:70000", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://h:12x", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://h/x", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse("redis://[::1", &u), -EINVAL);
  assert_int_equal(clcalc_url_parse(NULL, &u), -EINVAL);
}

static void test_gcra_params(void **state)
{
  (void)state;
  struct clcalc_gcra g;
  clcalc_gcra_params(300, 1, &g); /* 3333 us apart, 200 ms ahead: 60 tokens */
  assert_true(g.t_us > 3333 && g.t_us < 3334);
  assert_true(g.tau_us == 200000.0);
  assert_int_equal(g.max_batch, 60);
  clcalc_gcra_params(10, 60, &g); /* one per 6 s: never more than one ahead */
  assert_true(g.tau_us == g.t_us);
  assert_int_equal(g.max_batch, 1);
  clcalc_gcra_params(5, 1, &g); /* a fifth of the period is one interval */
  assert_int_equal(g.max_batch, 1);
}

static void test_batch(void **state)
{
  (void)state;
  struct clcalc_gcra g;
  clcalc_gcra_params(100000, 1, &g); /* does not bind: batches grow with the rate */
  assert_int_equal(g.max_batch, 20000);
  assert_int_equal(clcalc_batch(-1, &g), 5000);  /* no history: a quarter */
  assert_int_equal(clcalc_batch(0, &g), 1);      /* idle: one at a time */
  assert_int_equal(clcalc_batch(1000, &g), 500); /* half a second of the rate */
  assert_int_equal(clcalc_batch(1e9, &g), 20000); /* capped by the tolerance */
  assert_int_equal(clcalc_min_batch(1), 1);
  assert_int_equal(clcalc_min_batch(60), 30);
  assert_int_equal(clcalc_low_water(60), 15);
  assert_int_equal(clcalc_low_water(1), 0);
  /* the rate: first sample as is, then halfway to each new one */
  double r = clcalc_rate(-1, 100, 100);
  assert_true(r == 1000.0);
  r = clcalc_rate(r, 0, 100);
  assert_true(r == 500.0);
  assert_true(clcalc_rate(r, 5, 0) == r);
}

/* A pause does not shrink the batch to one token a round trip: the peak
 * halves every second; a waiting ramp doubles the last grant. */
static void test_peak_ramp(void **state)
{
  (void)state;
  assert_true(clcalc_peak(0, 3000, 100) == 3000);
  double p = clcalc_peak(3000, 0, 1000); /* a second without mail */
  assert_true(p > 1499 && p < 1501);
  p = clcalc_peak(3000, 0, 100);
  assert_true(p > 2790 && p < 2810);
  assert_true(clcalc_peak(100, 500, 100) == 500);
  struct clcalc_gcra g;
  clcalc_gcra_params(100000, 1, &g); /* max_batch 20,000 */
  assert_int_equal(clcalc_ramp(5, 0, &g), 5);
  assert_int_equal(clcalc_ramp(5, 1, &g), 5);
  assert_int_equal(clcalc_ramp(5, 40, &g), 80);
  assert_int_equal(clcalc_ramp(5, 15000, &g), g.max_batch);
  clcalc_gcra_params(10, 1, &g); /* max_batch 2 */
  assert_int_equal(clcalc_ramp(1, 2, &g), 2);
}

static void test_cap_desired(void **state)
{
  (void)state;
  assert_int_equal(clcalc_cap_desired(10, 3, 2, 0, false), 6);  /* 3 in use: 3 more */
  assert_int_equal(clcalc_cap_desired(100, 20, 1, 0, false), 40);  /* as many again */
  assert_int_equal(clcalc_cap_desired(100, 60, 1, 0, false), 100); /* within the limit */
  assert_int_equal(clcalc_cap_desired(100, 0, 1, 0, false), 1);
  assert_int_equal(clcalc_cap_desired(10, 9, 5, 0, false), 10);   /* the limit */
  assert_int_equal(clcalc_cap_desired(10, 4, 3, 5, true), 5);     /* the fair share */
  assert_int_equal(clcalc_cap_desired(10, 7, 3, 5, true), 7);     /* never below in use */
  assert_int_equal(clcalc_cap_desired(10, 2, 0, 5, false), 2);     /* nothing asked: what is used */
  assert_int_equal(clcalc_cap_desired(10, 7, 0, 5, false), 7);
  assert_int_equal(clcalc_cap_desired(10, 0, 0, 5, true), 0);     /* all given back */
}

static void test_cap_shed(void **state)
{
  (void)state;
  assert_int_equal(clcalc_cap_shed(10, 10, 5, false), 0); /* nobody else wants */
  assert_int_equal(clcalc_cap_shed(10, 10, 5, true), 5);  /* others wait: down to the share */
  assert_int_equal(clcalc_cap_shed(8, 6, 10, false), 2);  /* Redis granted fewer (after an outage) */
  assert_int_equal(clcalc_cap_shed(4, 6, 5, true), 0);
}

static void test_local_share(void **state)
{
  (void)state;
  assert_int_equal(clcalc_local_share(10, 3), 3); /* 9 <= 10 for the fleet */
  assert_int_equal(clcalc_local_share(10, 0), 10);
  assert_int_equal(clcalc_local_share(2, 5), 1);
  assert_int_equal(clcalc_local_interval_ns(300, 1, 3), 10000000u); /* 100/s each */
  assert_int_equal(clcalc_local_interval_ns(300, 1, 1), 3333333u);
  assert_int_equal(clcalc_local_interval_ns(0, 1, 1), 0);
}

static void test_backoff(void **state)
{
  (void)state;
  assert_int_equal(clcalc_backoff_ms(1), 100);
  assert_int_equal(clcalc_backoff_ms(2), 200);
  assert_int_equal(clcalc_backoff_ms(5), 1600);
  assert_int_equal(clcalc_backoff_ms(6), 2000);
  assert_int_equal(clcalc_backoff_ms(1000), 2000);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_url),       cmocka_unit_test(test_gcra_params),
    cmocka_unit_test(test_batch),     cmocka_unit_test(test_cap_desired),
    cmocka_unit_test(test_cap_shed),  cmocka_unit_test(test_local_share),
    cmocka_unit_test(test_backoff),   cmocka_unit_test(test_peak_ramp),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
