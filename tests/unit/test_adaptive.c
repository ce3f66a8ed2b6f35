/* Unit tests for adaptive: rule matching (code, enhanced code, regex on a
 * multi-line reply), count-within-period triggers firing exactly at the
 * count, expiry, back-off doubling, scopes (binding::domain, domain,
 * provider), the strictest of several adjustments, connection failures,
 * connection slots (a provider-scope cap across the provider's hosts),
 * warm-up schedules, the bundled rule set (it loads and each of its rules
 * is matched by a sample reply), and the adjustments file across a
 * restart. The reply / sweep / clear sequences are tables of steps
 * (RUN_STEPS). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adaptive.h"
#include "adaptive_conf.h"
#include "adaptive_queue.h"
#include "conf.h"
#include "dq.h"
#include "scheduler.h"
#include "throttle.h"
#include "worker.h"
#include "smtp_reply.h"

#define T0 1000000000000ull /* an arbitrary "now" in ms */

/* A state over the one rule r (the rule set's reference is the state's). */
static struct adaptive *state_of(const struct adaptive_rule *r)
{
  struct adaptive_rules *rs = adaptive_rules_new();
  char err[256] = "";
  if (adaptive_rules_add(rs, r, err, sizeof err) < 0)
    fail_msg("%s", err);
  struct adaptive *a = adaptive_new(rs);
  adaptive_rules_free(rs); /* the state holds its own reference */
  return a;
}

static size_t reply(struct adaptive *a, const char *binding, const char *domain, const char *mx,
                    int code, const char *enh, const char *text, uint64_t now,
                    struct adaptive_adjustment *out)
{
  struct adaptive_reply r = {.binding = binding, .domain = domain, .mx_host = mx, .code = code,
                             .enhanced = enh, .text = text};
  struct adaptive_adjustment tmp[4];
  return adaptive_reply(a, &r, now, out ? out : tmp, out ? 1 : 4);
}

static bool suspended(struct adaptive *a, const char *b, const char *d, const char *prov,
                      uint64_t now)
{
  struct adaptive_limits l;
  adaptive_limits(a, b, d, prov, now, &l);
  return l.suspended;
}

/* One step of a scripted scenario on binding "b", domain x.test, at
 * T0 + at_ms: a reply that must make `n` adjustments (the one made lasting
 * len_ms, when not 0), a sweep or a console clear that must end `n`. */
enum step_op { REPLY, SWEEP, CLEAR };
struct step {
  uint64_t at_ms;
  enum step_op op;
  int code;
  const char *enh, *text;
  size_t n;
  uint64_t len_ms;
};

static void run_steps(struct adaptive *a, const struct step *st, size_t nst)
{
  for (size_t i = 0; i < nst; i++) {
    const struct step *s = &st[i];
    struct adaptive_adjustment adj[4];
    size_t n;
    if (s->op == REPLY)
      n = reply(a, "b", "x.test", NULL, s->code, s->enh, s->text, T0 + s->at_ms, adj);
    else if (s->op == SWEEP)
      n = adaptive_expire(a, T0 + s->at_ms, adj, 4);
    else
      n = adaptive_clear(a, "b", NULL);
    if (n != s->n)
      fail_msg("step %zu (at %llu ms): %zu, not %zu", i, (unsigned long long)s->at_ms, n, s->n);
    if (s->op == REPLY && n == 1 && s->len_ms && adj[0].until_ms - adj[0].since_ms != s->len_ms)
      fail_msg("step %zu: lasts %llu ms, not %llu", i,
               (unsigned long long)(adj[0].until_ms - adj[0].since_ms),
               (unsigned long long)s->len_ms);
  }
}

#define RUN_STEPS(a, ...)                                                                          \
  do {                                                                                             \
    static const struct step steps_[] = {__VA_ARGS__};                                            \
    run_steps(a, steps_, sizeof steps_ / sizeof steps_[0]);                                        \
  } while (0)

static bool count_cb(void *arg, const struct adaptive_adjustment *adj)
{
  (void)adj;
  (*(int *)arg)++;
  return true;
}

static bool fired_cb(void *arg, const struct adaptive_adjustment *adj)
{
  *(uint32_t *)arg = adj->fired;
  return false;
}

/* How many times in a row the first adjustment on (b, d) fired. */
static uint32_t fired_of(struct adaptive *a, const char *b, const char *d)
{
  uint32_t f = 0;
  adaptive_list(a, b, d, fired_cb, &f);
  return f;
}

static void test_single_reply_rule(void **state)
{
  (void)state;
  struct adaptive_rule r = {.name = "r1", .code = 421, .enhanced = "4.7.28", .count = 1,
                            .action = ADAPTIVE_ACT_SUSPEND, .duration_s = 60};
  struct adaptive *a = state_of(&r);
  uint64_t g0 = adaptive_gen(a);
  /* other code, other enhanced code, a 2xx: nothing */
  RUN_STEPS(a, {0, REPLY, 450, "4.7.28", "busy", 0, 0}, {0, REPLY, 421, "4.7.0", "busy", 0, 0},
            {0, REPLY, 250, "2.0.0", "ok", 0, 0});
  assert_false(suspended(a, "b", "x.test", NULL, T0));
  struct adaptive_adjustment adj;
  assert_int_equal(reply(a, "b", "x.test", NULL, 421, "4.7.28", "rate limited", T0, &adj), 1);
  assert_string_equal(adj.rule, "r1");
  assert_string_equal(adj.binding, "b");
  assert_string_equal(adj.target, "x.test");
  assert_int_equal(adj.action, ADAPTIVE_ACT_SUSPEND);
  assert_int_equal(adj.until_ms, T0 + 60000);
  assert_non_null(strstr(adj.why, "421 4.7.28 rate limited"));
  assert_true(adaptive_gen(a) != g0);
  assert_true(suspended(a, "b", "x.test", NULL, T0 + 1));
  assert_true(suspended(a, "b", "X.TEST", NULL, T0 + 1)); /* domains in any case */
  /* binding::domain: another binding, another domain are untouched */
  assert_false(suspended(a, "c", "x.test", NULL, T0 + 1));
  assert_false(suspended(a, "b", "y.test", NULL, T0 + 1));
  /* while in force a repeat makes no new adjustment (logged once) */
  RUN_STEPS(a, {10, REPLY, 421, "4.7.28", "again", 0, 0});
  assert_int_equal(adaptive_in_force(a), 1);
  adaptive_free(a);
}

static void test_count_within_period(void **state)
{
  (void)state;
  struct adaptive_rule r = {.name = "five", .pattern = "slow down", .count = 5, .period_s = 10,
                            .action = ADAPTIVE_ACT_MAX_CONNECTIONS, .value = 2,
                            .duration_s = 30};
  struct adaptive *a = state_of(&r);
  /* four within the period: not yet; the fifth fires, exactly */
  RUN_STEPS(a, {0, REPLY, 451, NULL, "please SLOW DOWN", 0, 0},
            {1000, REPLY, 451, NULL, "slow down", 0, 0}, {2000, REPLY, 451, NULL, "slow down", 0, 0},
            {3000, REPLY, 451, NULL, "slow down", 0, 0});
  struct adaptive_limits l;
  adaptive_limits(a, "b", "x.test", NULL, T0 + 4000, &l);
  assert_int_equal(l.max_connections, 0);
  RUN_STEPS(a, {4000, REPLY, 451, NULL, "slow down", 1, 30000});
  adaptive_limits(a, "b", "x.test", NULL, T0 + 4001, &l);
  assert_int_equal(l.max_connections, 2);
  assert_int_equal(l.until_ms, T0 + 4000 + 30000);
  /* no binding is the default binding */
  struct adaptive_adjustment adj;
  for (int i = 0; i < 4; i++)
    assert_int_equal(reply(a, NULL, "y.test", NULL, 451, NULL, "slow down", T0 + i, NULL), 0);
  assert_int_equal(reply(a, NULL, "y.test", NULL, 451, NULL, "slow down", T0 + 4, &adj), 1);
  assert_string_equal(adj.binding, "default");
  adaptive_free(a);

  /* spread wider than the period: never fires */
  a = state_of(&r);
  for (int i = 0; i < 20; i++)
    assert_int_equal(reply(a, "b", "x.test", NULL, 451, NULL, "slow down", T0 + i * 3000, NULL),
                     0);
  /* then five within 10 s: fires at the fifth, not before */
  RUN_STEPS(a, {100000, REPLY, 451, NULL, "slow down", 0, 0},
            {102000, REPLY, 451, NULL, "slow down", 0, 0},
            {104000, REPLY, 451, NULL, "slow down", 0, 0},
            {106000, REPLY, 451, NULL, "slow down", 0, 0},
            {108000, REPLY, 451, NULL, "slow down", 1, 30000});
  adaptive_free(a);
}

static void test_expiry(void **state)
{
  (void)state;
  struct adaptive_rule r = {.name = "t", .code = 421, .count = 1,
                            .action = ADAPTIVE_ACT_THROTTLE, .value = 2, .per_s = 1,
                            .duration_s = 5};
  struct adaptive *a = state_of(&r);
  RUN_STEPS(a, {0, REPLY, 421, NULL, "x", 1, 5000}, {4999, SWEEP, 0, NULL, NULL, 0, 0});
  struct adaptive_limits l;
  adaptive_limits(a, "b", "x.test", NULL, T0 + 4999, &l);
  assert_int_equal(l.throttle_n, 2);
  assert_int_equal(l.throttle_per_s, 1);
  /* at its time it is no longer applied, even before the sweep */
  adaptive_limits(a, "b", "x.test", NULL, T0 + 5000, &l);
  assert_int_equal(l.throttle_n, 0);
  uint64_t g = adaptive_gen(a);
  struct adaptive_adjustment ended[2];
  assert_int_equal(adaptive_expire(a, T0 + 5000, ended, 2), 1);
  assert_string_equal(ended[0].rule, "t");
  assert_true(adaptive_gen(a) != g);
  assert_int_equal(adaptive_in_force(a), 0);
  /* it fires again after its end */
  RUN_STEPS(a, {6000, REPLY, 421, NULL, "x", 1, 5000});
  assert_int_equal(adaptive_made_total(a, ADAPTIVE_ACT_THROTTLE), 2);
  adaptive_free(a);
}

static void test_backoff_and_clear(void **state)
{
  (void)state;
  struct adaptive_rule r = {.name = "bo", .code = 421, .count = 1,
                            .action = ADAPTIVE_ACT_BACKOFF, .duration_s = 10};
  struct adaptive *a = state_of(&r);
  RUN_STEPS(a,
            /* again soon after its end: twice as long, then four times */
            {0, REPLY, 421, NULL, "x", 1, 10000}, {10000, SWEEP, 0, NULL, NULL, 1, 0},
            {12000, REPLY, 421, NULL, "x", 1, 20000}, {32000, SWEEP, 0, NULL, NULL, 1, 0},
            {33000, REPLY, 421, NULL, "x", 1, 40000});
  int n = 0;
  assert_int_equal(adaptive_list(a, "b", "x.test", count_cb, &n), 1);
  assert_int_equal(fired_of(a, "b", "x.test"), 3);
  RUN_STEPS(a,
            /* the console clears it; the next one starts from the base again */
            {34000, CLEAR, 0, NULL, NULL, 1, 0});
  assert_false(suspended(a, "b", "x.test", NULL, T0 + 34000));
  RUN_STEPS(a, {35000, REPLY, 421, NULL, "x", 1, 10000},
            /* long after its end: from the base */
            {45000, SWEEP, 0, NULL, NULL, 1, 0}, {200000, REPLY, 421, NULL, "x", 1, 10000});
  assert_false(suspended(a, "b", "x.test", NULL, T0 + 210000));
  adaptive_free(a);
}

static void test_scopes_and_strictest(void **state)
{
  (void)state;
  struct adaptive_rules *rs = adaptive_rules_new();
  char err[256];
  const char *sfx[] = {".mx.prov.test"};
  struct adaptive_provider p = {.name = "prov", .suffix = {sfx[0]}, .nsuffix = 1};
  assert_int_equal(adaptive_rules_add_provider(rs, &p, err, sizeof err), 0);
  struct adaptive_rule dom = {.name = "dom", .pattern = "DOMWIDE", .count = 1,
                              .scope = ADAPTIVE_SCOPE_DOMAIN, .action = ADAPTIVE_ACT_SUSPEND,
                              .duration_s = 60};
  struct adaptive_rule prov = {.name = "prov", .provider = "prov", .pattern = "PROV",
                               .count = 1, .scope = ADAPTIVE_SCOPE_PROVIDER,
                               .action = ADAPTIVE_ACT_MAX_CONNECTIONS, .value = 3,
                               .duration_s = 60};
  struct adaptive_rule prov2 = {.name = "prov2", .provider = "prov", .pattern = "PROV",
                                .count = 1, .scope = ADAPTIVE_SCOPE_PROVIDER,
                                .action = ADAPTIVE_ACT_MAX_CONNECTIONS, .value = 7,
                                .duration_s = 60};
  struct adaptive_rule thr = {.name = "thr", .pattern = "PROV", .count = 1,
                              .action = ADAPTIVE_ACT_THROTTLE, .value = 10, .per_s = 60,
                              .duration_s = 60};
  assert_int_equal(adaptive_rules_add(rs, &dom, err, sizeof err), 0);
  assert_int_equal(adaptive_rules_add(rs, &prov, err, sizeof err), 0);
  assert_int_equal(adaptive_rules_add(rs, &prov2, err, sizeof err), 0);
  assert_int_equal(adaptive_rules_add(rs, &thr, err, sizeof err), 0);
  assert_string_equal(adaptive_provider_of(rs, "MX1.MX.PROV.TEST.")->name, "prov");
  assert_null(adaptive_provider_of(rs, "mx.prov.test.example"));
  struct adaptive *a = adaptive_new(rs);
  adaptive_rules_free(rs);
  /* domain scope: every binding */
  assert_int_equal(reply(a, "b1", "d.test", NULL, 421, NULL, "DOMWIDE", T0, NULL), 1);
  assert_true(suspended(a, "b2", "d.test", NULL, T0 + 1));
  assert_false(suspended(a, "b2", "e.test", NULL, T0 + 1));
  assert_int_equal(adaptive_list(a, "b2", "d.test", NULL, NULL), 1); /* listed for every binding */
  assert_int_equal(adaptive_clear(a, "b2", "d.test"), 0);            /* not cleared by one */
  /* provider scope: only when the reply came from the provider's MX; then
   * every domain of that provider on this binding */
  assert_int_equal(reply(a, "b1", "e.test", "mx.other.test", 421, NULL, "PROV", T0, NULL), 1);
  struct adaptive_limits l;
  adaptive_limits(a, "b1", "f.test", "prov", T0 + 1, &l);
  assert_int_equal(l.provider_max_connections, 0);
  assert_int_equal(reply(a, "b1", "e.test", "a.mx.prov.test", 421, NULL, "PROV", T0, NULL), 2);
  adaptive_limits(a, "b1", "f.test", "prov", T0 + 1, &l);
  assert_int_equal(l.provider_max_connections, 3); /* the strictest of 3 and 7 */
  assert_int_equal(l.max_connections, 0); /* across the provider's domains, not per queue */
  adaptive_limits(a, "b2", "f.test", "prov", T0 + 1, &l);
  assert_int_equal(l.provider_max_connections, 0);
  /* the throttle (binding::domain) and the provider cap both on e.test */
  adaptive_limits(a, "b1", "e.test", "prov", T0 + 1, &l);
  assert_int_equal(l.provider_max_connections, 3);
  assert_int_equal(l.throttle_n, 10);
  assert_int_equal(l.throttle_per_s, 60);
  /* listing and clearing by domain (a provider name counts as one) */
  assert_int_equal(adaptive_list(a, NULL, "prov", NULL, NULL), 2);
  /* a domain seen with the provider's MX shows (and clears) them too */
  assert_int_equal(adaptive_list(a, "b1", "e.test", NULL, NULL), 3); /* + its throttle */
  assert_int_equal(adaptive_list(a, "b1", "f.test", NULL, NULL), 2); /* seen in adaptive_limits */
  assert_int_equal(adaptive_list(a, "b1", "never.test", NULL, NULL), 0);
  /* the provider-scope cap holds for b1's connections to all the
   * provider's MX hosts together (whatever the domain), not for b2's */
  uint32_t id[4];
  for (int i = 0; i < 3; i++)
    assert_true(adaptive_provider_slot_take(a, i ? "b.mx.prov.test" : "a.mx.prov.test", "b1",
                                            T0 + 1, &id[i]));
  assert_false(adaptive_provider_slot_take(a, "c.mx.prov.test", "b1", T0 + 1, &id[3]));
  assert_true(adaptive_provider_slot_take(a, "c.mx.prov.test", "b2", T0 + 1, &id[3]));
  assert_int_equal(id[3], 0); /* nothing in force for b2: not counted */
  assert_true(adaptive_provider_slot_take(a, "mx.other.test", "b1", T0 + 1, &id[3]));
  adaptive_slot_release(a, id[0]);
  assert_true(adaptive_provider_slot_take(a, "c.mx.prov.test", "b1", T0 + 1, &id[0]));
  assert_false(adaptive_provider_slot_take(a, "c.mx.prov.test", "b1", T0 + 1, &id[3]));
  assert_true(adaptive_provider_slot_take(a, "c.mx.prov.test", "b1", T0 + 60000, &id[3])); /* ended */
  assert_int_equal(adaptive_clear(a, NULL, "prov"), 2);
  adaptive_limits(a, "b1", "f.test", "prov", T0 + 1, &l);
  assert_int_equal(l.provider_max_connections, 0);
  adaptive_free(a);
}

/* Gmail's rate-limit reply arrives as several lines; the parser joins them
 * and the rule sees one text. */
static void test_multiline_reply(void **state)
{
  (void)state;
  static const char wire[] =
    "421-4.7.28 [192.0.2.1      15] Our system has detected an unusual rate of\r\n"
    "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
    "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\r\n"
    "421-4.7.28 rate limited. Please visit\r\n"
    "421-4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\r\n"
    "421 4.7.28 review our Bulk Email Senders Guidelines. x - gsmtp\r\n";
  struct smtp_reply p = {0};
  smtp_reply_reset(&p);
  size_t off = 0, used;
  int st;
  while ((st = smtp_reply_parse(&p, wire + off, sizeof wire - 1 - off, &used)) == SMTP_REPLY_LINE)
    off += used;
  assert_int_equal(st, SMTP_REPLY_DONE);
  assert_int_equal(p.code, 421);
  assert_string_equal(p.enhanced, "4.7.28");
  struct adaptive_rule r = {.name = "ml", .code = 421,
                            .pattern = "IP address has been temporarily rate limited",
                            .count = 1, .action = ADAPTIVE_ACT_SUSPEND, .duration_s = 9};
  struct adaptive *a = state_of(&r);
  assert_int_equal(reply(a, "b", "g.test", NULL, p.code, p.enhanced, p.text, T0, NULL), 1);
  int n = 0;
  assert_int_equal(adaptive_list(a, "b", "g.test", count_cb, &n), 1);
  assert_int_equal(n, 1);
  adaptive_free(a);
}

static void test_parsers(void **state)
{
  (void)state;
  uint32_t s, c, p;
  assert_int_equal(adaptive_parse_duration("4 hours", &s), 0);
  assert_int_equal(s, 14400);
  assert_int_equal(adaptive_parse_duration("90m", &s), 0);
  assert_int_equal(s, 5400);
  assert_int_equal(adaptive_parse_duration("15", &s), 0);
  assert_int_equal(s, 15);
  assert_int_equal(adaptive_parse_duration("2 fortnights", &s), -EINVAL);
  assert_int_equal(adaptive_parse_duration("h", &s), -EINVAL);
  assert_int_equal(adaptive_parse_trigger("1", &c, &p), 0);
  assert_int_equal(c, 1);
  assert_int_equal(adaptive_parse_trigger("5/1m", &c, &p), 0);
  assert_int_equal(c, 5);
  assert_int_equal(p, 60);
  assert_int_equal(adaptive_parse_trigger("5", &c, &p), -EINVAL); /* a count needs a period */
  assert_int_equal(adaptive_parse_trigger("0/5", &c, &p), -EINVAL);
  assert_int_equal(adaptive_action_parse("Max_Outbound_Connections"), ADAPTIVE_ACT_MAX_CONNECTIONS);
  assert_int_equal(adaptive_action_parse("throttle"), ADAPTIVE_ACT_THROTTLE);
  assert_int_equal(adaptive_action_parse("blackhole"), -1); /* never: mail is only delayed */
  assert_int_equal(adaptive_scope_parse("provider"), ADAPTIVE_SCOPE_PROVIDER);
  char err[256];
  struct adaptive_rules *rs = adaptive_rules_new();
  struct adaptive_rule bad = {.name = "bad", .pattern = "([", .count = 1,
                              .action = ADAPTIVE_ACT_SUSPEND, .duration_s = 1};
  assert_int_equal(adaptive_rules_add(rs, &bad, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "pattern"));
  bad.pattern = NULL;
  bad.duration_s = 0;
  assert_int_equal(adaptive_rules_add(rs, &bad, err, sizeof err), -EINVAL);
  bad.duration_s = 1;
  bad.action = ADAPTIVE_ACT_THROTTLE;
  assert_int_equal(adaptive_rules_add(rs, &bad, err, sizeof err), -EINVAL); /* no value */
  adaptive_rules_free(rs);
}

static void test_warmup(void **state)
{
  (void)state;
  const char *steps[] = {"0 5/10s", "1h 50/10s", "2d 0"};
  struct adaptive_warmup w;
  char err[256];
  assert_int_equal(adaptive_warmup_parse(steps, 3, &w, err, sizeof err), 0);
  const struct adaptive_warmup_step *st = adaptive_warmup_at(&w, 0);
  assert_non_null(st);
  assert_int_equal(st->n, 5);
  assert_int_equal(st->per_s, 10);
  assert_int_equal(adaptive_warmup_at(&w, 3599)->n, 5);
  assert_int_equal(adaptive_warmup_at(&w, 3600)->n, 50);
  assert_null(adaptive_warmup_at(&w, 2 * 86400)); /* warm: no cap */
  const char *bad[] = {"1h 5/10", "0 5/10"}; /* ages must increase */
  assert_int_equal(adaptive_warmup_parse(bad, 2, &w, err, sizeof err), -EINVAL);
  struct adaptive_rules *rs = adaptive_rules_new();
  struct adaptive *a = adaptive_new(rs);
  adaptive_rules_free(rs);
  bool is_new;
  assert_int_equal(adaptive_binding_first(a, "new", T0, &is_new), T0);
  assert_true(is_new);
  assert_int_equal(adaptive_binding_first(a, "new", T0 + 5, &is_new), T0);
  assert_false(is_new);
  adaptive_binding_born(a, "new", T0 - 86400000);
  assert_int_equal(adaptive_binding_first(a, "new", T0, &is_new), T0 - 86400000);
  adaptive_free(a);
}

static void test_conn_failures_and_slots(void **state)
{
  (void)state;
  struct adaptive_rules *rs = adaptive_rules_new();
  struct adaptive *a = adaptive_new(rs);
  adaptive_rules_free(rs);
  struct adaptive_adjustment adj;
  for (int i = 0; i < 2; i++)
    assert_false(adaptive_conn_failed(a, "b", "d.test", 3, T0 + i, &adj));
  assert_true(adaptive_conn_failed(a, "b", "d.test", 3, T0 + 2, &adj));
  assert_int_equal(adj.action, ADAPTIVE_ACT_CONNECT_DELAY);
  assert_int_equal(adj.value, 1);
  /* a burst of connections already in flight failing at once: no doubling */
  struct adaptive_limits l;
  for (int i = 0; i < 5; i++)
    assert_false(adaptive_conn_failed(a, "b", "d.test", 3, T0 + 3 + i, &adj));
  adaptive_limits(a, "b", "d.test", NULL, T0 + 10, &l);
  assert_int_equal(l.connect_delay_s, 1);
  /* each further failure under the spacing doubles it, without a new report
   * (logged once when it starts, once when it ends) but seen by the queues */
  uint64_t g = adaptive_gen(a), t = T0 + 1002;
  assert_false(adaptive_conn_failed(a, "b", "d.test", 3, t, &adj));
  assert_true(adaptive_gen(a) != g);
  adaptive_limits(a, "b", "d.test", NULL, t, &l);
  assert_int_equal(l.connect_delay_s, 2);
  for (int i = 0; i < 12; i++)
    assert_false(adaptive_conn_failed(a, "b", "d.test", 3, t += 300000, &adj));
  adaptive_limits(a, "b", "d.test", NULL, t, &l);
  assert_int_equal(l.connect_delay_s, 300); /* at most 5 minutes */
  assert_int_equal(adaptive_made_total(a, ADAPTIVE_ACT_CONNECT_DELAY), 1);
  adaptive_conn_ok(a, "b", "d.test");
  struct adaptive_adjustment ended[1];
  assert_int_equal(adaptive_expire(a, T0 + 5, ended, 1), 1);
  adaptive_limits(a, "b", "d.test", NULL, T0 + 6, &l);
  assert_int_equal(l.connect_delay_s, 0);
  assert_false(adaptive_conn_failed(a, "b", "d.test", 0, T0, &adj)); /* threshold 0: off */

  uint32_t id1, id2, id3, id4;
  assert_true(adaptive_slot_take(a, "mx.test", 2, &id1));
  assert_true(adaptive_slot_take(a, "MX.test", 2, &id2));
  assert_int_equal(id1, id2);
  assert_true(id1 != 0);
  assert_false(adaptive_slot_take(a, "mx.test", 2, &id3));
  assert_int_equal(id3, 0);
  assert_true(adaptive_slot_take(a, "other.test", 2, &id4));
  assert_int_equal(adaptive_slot_held(a, "mx.test"), 2);
  adaptive_slot_release(a, id1);
  adaptive_slot_release(a, 0); /* nothing */
  assert_true(adaptive_slot_take(a, "mx.test", 2, &id3));
  assert_true(adaptive_slot_take(a, "mx.test", 0, &id3)); /* no cap: not counted */
  assert_int_equal(id3, 0);
  assert_int_equal(adaptive_slot_held(a, "mx.test"), 2);
  adaptive_free(a);
}

/* The bundled set loads, and each rule fires on a sample of the reply it
 * was written for, from its provider's MX (and not from another's). */
static void test_bundled_rules(void **state)
{
  (void)state;
  static const struct {
    const char *rule, *mx;
    int code;
    const char *enh, *text;
  } samples[] = {
    {"google-rate-limited", "gmail-smtp-in.l.google.com", 421, "4.7.28",
     "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating "
     "from your IP address. To protect our users from spam, mail sent from your IP address has "
     "been temporarily rate limited. - gsmtp"},
    {"google-unsolicited-rate", "aspmx.l.google.com", 421, "4.7.0",
     "Our system has detected an unusual rate of unsolicited mail originating from your IP "
     "address. - gsmtp"},
    {"google-tls-required", "alt1.aspmx.l.google.com", 421, "4.7.0",
     "TLS required for RCPT domain, closing connection. - gsmtp"},
    {"yahoo-ts01", "mta5.am0.yahoodns.net", 421, "4.7.0",
     "[TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints"},
    {"yahoo-ts02", "mta6.am0.yahoodns.net", 421, "4.7.0",
     "[TS02] Messages from 192.0.2.1 temporarily deferred"},
    {"yahoo-ts03", "mta7.am0.yahoodns.net", 421, "4.7.1",
     "[TS03] All messages from 192.0.2.1 will be permanently deferred"},
    {"yahoo-ts04", "mta5.am0.yahoodns.net", 421, "4.7.0",
     "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
     "complaints"},
    {"microsoft-ip-reputation", "x-com.olc.protection.outlook.com", 451, "4.7.650",
     "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. (S775)"},
    {"microsoft-s3150", "x.mail.protection.outlook.com", 550, "5.7.1",
     "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
     "service provider since part of their network is on our block list (S3150)."},
    {"microsoft-s3140", "x.mail.protection.outlook.com", 550, "5.7.1",
     "Unfortunately, messages from [192.0.2.1] weren't sent. (S3140)."},
    {"comcast-rate-limit", "mx1a1.comcast.net", 421, "",
     "192.0.2.1 comcast RL000001 Too many sessions opened"},
  };
  struct adaptive_rules *rs = adaptive_rules_new();
  adaptive_rules_bundled(rs);
  size_t nrules = adaptive_rules_count(rs);
  assert_true(nrules >= 10);
  bool hit[ADAPTIVE_RULES_MAX] = {0};
  for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
    const struct adaptive_rule *r = adaptive_rules_find(rs, samples[i].rule);
    assert_non_null(r);
    assert_non_null(r->source); /* each rule says where its reply is documented */
    assert_true(!strncmp(r->source, "https://", 8));
    /* fresh state per sample so counts do not mix; a "C/S" rule gets C replies */
    struct adaptive *a = adaptive_new(rs);
    struct adaptive_adjustment adj[4];
    size_t made = 0;
    for (uint32_t k = 0; k < r->count && made == 0; k++) {
      struct adaptive_reply rp = {.binding = "b", .domain = "d.test", .mx_host = samples[i].mx,
                                  .code = samples[i].code, .enhanced = samples[i].enh,
                                  .text = samples[i].text};
      made = adaptive_reply(a, &rp, T0 + k, adj, 4);
      if (made == 0)
        assert_true(k + 1 < r->count); /* a count rule waits for its count */
    }
    assert_int_equal(made, 1);
    assert_string_equal(adj[0].rule, samples[i].rule);
    for (size_t k = 0; k < nrules; k++)
      if (!strcmp(adaptive_rules_at(rs, k)->name, samples[i].rule))
        hit[k] = true;
    /* the same reply from another provider's MX fires nothing */
    struct adaptive *b = adaptive_new(rs);
    struct adaptive_reply other = {.binding = "b", .domain = "d.test", .mx_host = "mx.example.net",
                                   .code = samples[i].code, .enhanced = samples[i].enh,
                                   .text = samples[i].text};
    for (uint32_t k = 0; k < r->count; k++)
      assert_int_equal(adaptive_reply(b, &other, T0 + k, adj, 4), 0);
    adaptive_free(b);
    adaptive_free(a);
  }
  for (size_t k = 0; k < nrules; k++)
    if (!hit[k])
      fail_msg("bundled rule %s has no sample reply", adaptive_rules_at(rs, k)->name);
  /* an operator's rule of the same name replaces the bundled one */
  struct adaptive_rule over = *adaptive_rules_find(rs, "google-rate-limited");
  over.duration_s = 5;
  over.action = ADAPTIVE_ACT_SUSPEND;
  char err[256];
  size_t before = adaptive_rules_count(rs);
  assert_int_equal(adaptive_rules_add(rs, &over, err, sizeof err), 0);
  assert_int_equal(adaptive_rules_count(rs), before);
  assert_int_equal(adaptive_rules_find(rs, "google-rate-limited")->duration_s, 5);
  adaptive_rules_free(rs);
}

static struct conf *parse(const char *text)
{
  struct conf_error e;
  struct conf *c = conf_parse_buffer(text, strlen(text), "t.conf", NULL, CONF_PARSE_NO_INCLUDE, &e);
  if (c == NULL) {
    char buf[2048];
    fail_msg("%s", conf_error_str(&e, buf, sizeof buf));
  }
  return c;
}

/* The adaptive { } stanza: bundled rules overridden by name, new rules and
 * providers, Host caps, warm-up, errors with file:line. */
static void test_configuration(void **state)
{
  (void)state;
  struct conf *c = parse(
    "Adaptive_Enabled = true\n"
    "adaptive {\n"
    "  response_rule \"google-rate-limited\" { duration = 5 action = suspend }\n"
    "  response_rule \"yahoo-ts01\" { enabled = false }\n"
    "  provider \"sink\" { mx_suffix = ( \".sink.test\" ) Max_Outbound_Connections = 3\n"
    "    Adaptive_Warmup = ( \"0 100/1d\" \"30d 0\" ) }\n"
    "  response_rule \"slow\" {\n"
    "    provider = \"sink\" code = 451 pattern = \"slow down\" trigger = \"3/1m\"\n"
    "    scope = provider action = outbound_throttle_messages value = \"2/1s\" duration = \"10s\"\n"
    "  }\n"
    "}\n"
    "Host \"MX1.Shared.Test\" { Max_Outbound_Connections = 2 }\n"
    "Binding \"new\" { Adaptive_Warmup = ( \"0 5/10s\" \"1h 0\" ) }\n");
  char err[1024] = "";
  assert_int_equal(adaptive_conf_check(c, err, sizeof err), 0);
  struct adaptive_rules *rs = adaptive_conf_rules(c, err, sizeof err);
  assert_non_null(rs);
  const struct adaptive_rule *g = adaptive_rules_find(rs, "google-rate-limited");
  assert_int_equal(g->duration_s, 5);
  assert_int_equal(g->action, ADAPTIVE_ACT_SUSPEND);
  assert_int_equal(g->code, 421); /* the bundled fields not set here stay */
  assert_string_equal(g->enhanced, "4.7.28");
  assert_true(adaptive_rules_find(rs, "yahoo-ts01")->disabled);
  const struct adaptive_rule *s = adaptive_rules_find(rs, "slow");
  assert_int_equal(s->count, 3);
  assert_int_equal(s->period_s, 60);
  assert_int_equal(s->value, 2);
  assert_int_equal(s->per_s, 1);
  assert_int_equal(s->scope, ADAPTIVE_SCOPE_PROVIDER);
  assert_int_equal(adaptive_provider_of(rs, "a.sink.test")->max_connections, 3);
  assert_int_equal(adaptive_provider_of(rs, "a.sink.test")->warmup.nstep, 2);
  assert_int_equal(adaptive_provider_of(rs, "a.sink.test")->warmup.step[0].per_s, 86400);
  assert_non_null(adaptive_provider_of(rs, "x.google.com")); /* bundled providers stay */
  adaptive_rules_free(rs);
  assert_int_equal(adaptive_conf_host_cap(c, "mx1.shared.test."), 2);
  assert_int_equal(adaptive_conf_host_cap(c, "mx2.shared.test"), 0);
  struct adaptive_warmup w;
  assert_int_equal(adaptive_conf_warmup(conf_view_get(c, "new", "x.test"), &w, err, sizeof err), 0);
  assert_int_equal(w.nstep, 2);
  assert_true(adaptive_conf_enabled(conf_view_get(c, "new", "x.test")));
  conf_unref(c);

  /* errors name the file and line */
  c = parse("adaptive {\n response_rule \"x\" {\n  trigger = \"5\"\n }\n}\n");
  assert_int_equal(adaptive_conf_check(c, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "t.conf:3:"));
  conf_unref(c);
  c = parse("adaptive {\n response_rule \"x\" { provider = \"nobody\" duration = 9 }\n}\n");
  assert_int_equal(adaptive_conf_check(c, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "nobody"));
  conf_unref(c);
  c = parse("adaptive { response_rule \"x\" { action = max_outbound_connections duration = 9 } }\n");
  assert_int_equal(adaptive_conf_check(c, err, sizeof err), -EINVAL); /* needs a value */
  conf_unref(c);
  c = parse("Binding \"b\" {\n Adaptive_Warmup = ( \"soon 5\" )\n}\n");
  assert_int_equal(adaptive_conf_check(c, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "t.conf:2:"));
  conf_unref(c);
  /* bundled_rules = false: only what the file declares */
  c = parse("adaptive { bundled_rules = false }\n");
  rs = adaptive_conf_rules(c, err, sizeof err);
  assert_int_equal(adaptive_rules_count(rs), 0);
  adaptive_rules_free(rs);
  conf_unref(c);
}

/* The glue the workers call (adaptive_queue.c): a queue's limits and
 * retry intervals with what is in force, warm-up from the scope and the
 * provider, Host and provider slots at connect. */
static void test_queue_glue(void **state)
{
  (void)state;
  struct conf *c = parse(
    "Adaptive_Enabled = true\n"
    "adaptive {\n"
    "  provider \"p\" { mx_suffix = ( \".p.test\" ) Max_Outbound_Connections = 1\n"
    "    Adaptive_Warmup = ( \"0 1/1h\" \"1d 0\" ) }\n"
    "  response_rule \"grey\" { code = 450 action = retry_interval value = 600 duration = 60 }\n"
    "  response_rule \"few\" { code = 451 action = max_outbound_connections value = 2 duration = 60 }\n"
    "  response_rule \"slow\" { code = 452 action = outbound_throttle_messages value = \"6/1m\" duration = 60 }\n"
    "}\n"
    "Host \"mx.h.test\" { Max_Outbound_Connections = 1 }\n"
    "Domain \"off.test\" { Adaptive_Enabled = false }\n");
  char err[512];
  struct adaptive_rules *rs = adaptive_conf_rules(c, err, sizeof err);
  assert_non_null(rs);
  struct engine_shared sh = {0};
  sh.adaptive = adaptive_new(rs);
  adaptive_rules_free(rs);
  sh.throttles = throttle_registry_new();
  const struct conf_view *v = conf_view_get(c, NULL, "x.test");
  struct dq_queue_state st = {0};
  st.limits.max_outbound_connections = 32;
  assert_true(adaptive_queue_stale(&sh, &st, T0)); /* never read */
  adaptive_queue_limits(&sh, v, "default", "x.test", &st, T0);
  assert_false(adaptive_queue_stale(&sh, &st, T0));
  assert_int_equal(st.limits.max_outbound_connections, 32);
  assert_null(st.limits.msg_throttle);
  /* replies: a 450 raises the retry interval, a 451 lowers connections, a
   * 452 throttles; the queue sees them at its next read */
  adaptive_queue_reply(&sh, NULL, v, "default", "x.test", &st, 450, "4.2.0", "greylisted", T0);
  adaptive_queue_reply(&sh, NULL, v, "default", "x.test", &st, 451, "", "busy", T0);
  adaptive_queue_reply(&sh, NULL, v, "default", "x.test", &st, 452, "", "slow", T0);
  assert_true(adaptive_queue_stale(&sh, &st, T0 + 1));
  adaptive_queue_limits(&sh, v, "default", "x.test", &st, T0 + 1);
  assert_int_equal(st.limits.max_outbound_connections, 2);
  assert_non_null(st.limits.msg_throttle);
  assert_int_equal(st.limits.msg_throttle->interval_ns, 10000000000ull); /* 6 a minute */
  assert_true(adaptive_queue_stale(&sh, &st, T0 + 60000)); /* its end */
  struct sched_retry p = SCHED_RETRY_DEFAULTS;
  p.retry_interval_s = 60;
  p.max_retry_interval_s = 300;
  adaptive_queue_retry(&sh, v, "default", "x.test", &st, T0 + 1, &p);
  assert_int_equal(p.retry_interval_s, 600);
  assert_int_equal(p.max_retry_interval_s, 600); /* never below the interval */
  /* Adaptive_Enabled = false in a domain: nothing applies there */
  const struct conf_view *off = conf_view_get(c, NULL, "off.test");
  struct dq_queue_state so = {0};
  so.limits.max_outbound_connections = 32;
  adaptive_queue_reply(&sh, NULL, off, "default", "off.test", &so, 451, "", "busy", T0);
  adaptive_queue_limits(&sh, off, "default", "off.test", &so, T0 + 1);
  assert_int_equal(so.limits.max_outbound_connections, 32);
  /* connect: the Host cap (every binding) and the provider's (per binding) */
  uint32_t s1[2] = {0}, s2[2] = {0}, s3[2] = {0};
  struct dq_queue_state sa = {0}, sb = {0};
  assert_true(adaptive_queue_connect(&sh, c, "default", "a.test", "MX.H.TEST", &sa, T0, s1));
  assert_false(adaptive_queue_connect(&sh, c, "other", "b.test", "mx.h.test", &sb, T0, s2));
  adaptive_queue_release(&sh, s1);
  assert_true(adaptive_queue_connect(&sh, c, "other", "b.test", "mx.h.test", &sb, T0, s2));
  assert_true(adaptive_queue_connect(&sh, c, "default", "c.test", "mx1.p.test", &sa, T0, s1));
  assert_false(adaptive_queue_connect(&sh, c, "default", "d.test", "mx2.p.test", &sb, T0, s3));
  assert_true(adaptive_queue_connect(&sh, c, "b2", "d.test", "mx2.p.test", &sb, T0, s3));
  assert_string_equal(sb.mx_host, "mx2.p.test");
  adaptive_queue_release(&sh, s1);
  adaptive_queue_release(&sh, s2);
  adaptive_queue_release(&sh, s3);
  /* the provider's warm-up: a young binding's mail to its domains paced */
  struct dq_queue_state sw = {0};
  snprintf(sw.mx_host, sizeof sw.mx_host, "mx1.p.test");
  adaptive_binding_born(sh.adaptive, "young", T0);
  adaptive_queue_limits(&sh, v, "young", "c.test", &sw, T0 + 1000);
  assert_non_null(sw.limits.msg_throttle);
  assert_int_equal(sw.limits.msg_throttle->interval_ns, 3600000000000ull);
  assert_int_equal(sw.adaptive_until_ms, T0 + 86400000ull); /* read again at the next step */
  sw.limits.msg_throttle = NULL; /* load_limits reads the configuration first */
  adaptive_queue_limits(&sh, v, "young", "c.test", &sw, T0 + 86400000ull);
  assert_null(sw.limits.msg_throttle); /* warm */
  adaptive_free(sh.adaptive);
  throttle_registry_free(sh.throttles);
  conf_unref(c);
}

static void write_text(const char *path, const char *text)
{
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static size_t in_force_for(struct adaptive *a, const char *b, const char *d)
{
  return adaptive_list(a, b, d, NULL, NULL);
}

/* Adjustments survive a restart: saved to <spool>/adaptive/adjustments,
 * put back at start until their own end (a back-off keeps doubling), those
 * ended meanwhile dropped; a corrupt file restores nothing (or only its
 * readable lines) and never stops the start. */
static void test_state_across_restart(void **state)
{
  (void)state;
  char dir[] = "/tmp/impetus-adaptive-state.XXXXXX";
  assert_non_null(mkdtemp(dir));
  struct adaptive_rules *rs = adaptive_rules_new();
  char err[256];
  struct adaptive_rule hold = {.name = "hold", .code = 421, .count = 1,
                               .action = ADAPTIVE_ACT_SUSPEND, .duration_s = 60};
  struct adaptive_rule bo = {.name = "bo", .code = 450, .count = 1,
                             .action = ADAPTIVE_ACT_BACKOFF, .duration_s = 10};
  assert_int_equal(adaptive_rules_add(rs, &hold, err, sizeof err), 0);
  assert_int_equal(adaptive_rules_add(rs, &bo, err, sizeof err), 0);
  struct engine_shared sh = {0};
  sh.adaptive = adaptive_new(rs);
  assert_int_equal(reply(sh.adaptive, NULL, "x.test", NULL, 421, "4.7.0", "tab\there", T0, NULL), 1);
  assert_int_equal(reply(sh.adaptive, "b", "y.test", NULL, 450, NULL, "bo", T0, NULL), 1);
  struct adaptive_adjustment ended[2];
  assert_int_equal(adaptive_expire(sh.adaptive, T0 + 10000, ended, 2), 1); /* bo ended */
  adaptive_queue_state_save(&sh, NULL, dir, T0 + 10000);
  char path[256];
  snprintf(path, sizeof path, "%s/adaptive/adjustments", dir);

  /* a restart 30 s in: still suspended, until its own end */
  struct engine_shared r1 = {0};
  r1.adaptive = adaptive_new(rs);
  adaptive_queue_state_load(&r1, NULL, dir, T0 + 30000);
  assert_true(suspended(r1.adaptive, "default", "x.test", NULL, T0 + 30000));
  assert_true(suspended(r1.adaptive, "default", "x.test", NULL, T0 + 59999));
  assert_false(suspended(r1.adaptive, "default", "x.test", NULL, T0 + 60000));
  assert_int_equal(adaptive_in_force(r1.adaptive), 1);
  /* 30 s in, the back-off is long forgotten: from its base again */
  struct adaptive_adjustment adj;
  assert_int_equal(reply(r1.adaptive, "b", "y.test", NULL, 450, NULL, "bo", T0 + 30000, &adj), 1);
  assert_int_equal(adj.until_ms - adj.since_ms, 10000);
  adaptive_free(r1.adaptive);
  /* a restart soon after its end: firing again doubles it */
  r1.adaptive = adaptive_new(rs);
  adaptive_queue_state_load(&r1, NULL, dir, T0 + 12000);
  assert_int_equal(reply(r1.adaptive, "b", "y.test", NULL, 450, NULL, "bo", T0 + 15000, &adj), 1);
  assert_int_equal(adj.until_ms - adj.since_ms, 20000);
  assert_int_equal(adj.fired, 2);
  adaptive_free(r1.adaptive);

  /* a restart after its end: nothing in force */
  struct engine_shared r2 = {0};
  r2.adaptive = adaptive_new(rs);
  adaptive_queue_state_load(&r2, NULL, dir, T0 + 60000);
  assert_int_equal(adaptive_in_force(r2.adaptive), 0);
  adaptive_free(r2.adaptive);

  /* cleared by hand before the restart: not brought back */
  assert_int_equal(adaptive_clear(sh.adaptive, NULL, "x.test"), 1);
  adaptive_queue_state_save(&sh, NULL, dir, T0 + 11000);
  struct engine_shared r3 = {0};
  r3.adaptive = adaptive_new(rs);
  adaptive_queue_state_load(&r3, NULL, dir, T0 + 12000);
  assert_int_equal(in_force_for(r3.adaptive, NULL, "x.test"), 0);
  adaptive_free(r3.adaptive);

  /* corrupt files: garbage, a cut header, one bad line among good ones */
  static const char *const bad[] = {
    "\x01\x02garbage\n",
    "impetus-adaptive-adj",
    "impetus-adaptive-adjustments 1\n"
    "hold\t\tz.test\tdomain\tsuspend\t0\t1\tnotanumber\t1\t1\t1\twhy\n"
    "hold\t\tx.test\tdomain\tsuspend\t0\t1\t1000000000000\t1000000060000\t1\t1\twhy\n"
    "hold\t\tw.test\tdomain\tblackhole\t0\t1\t1000000000000\t1000000060000\t1\t1\twhy\n"
    "short\tline\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    write_text(path, bad[i]);
    struct engine_shared rc = {0};
    rc.adaptive = adaptive_new(rs);
    adaptive_queue_state_load(&rc, NULL, dir, T0 + 1000);
    assert_int_equal(adaptive_in_force(rc.adaptive), i == 2 ? 1 : 0);
    assert_int_equal(in_force_for(rc.adaptive, NULL, "x.test"), i == 2 ? 1 : 0);
    adaptive_free(rc.adaptive);
  }
  /* a missing file: nothing, quietly */
  unlink(path);
  struct engine_shared rm = {0};
  rm.adaptive = adaptive_new(rs);
  adaptive_queue_state_load(&rm, NULL, dir, T0);
  assert_int_equal(adaptive_in_force(rm.adaptive), 0);
  adaptive_free(rm.adaptive);

  adaptive_free(sh.adaptive);
  adaptive_rules_free(rs);
  char adir[256];
  snprintf(adir, sizeof adir, "%s/adaptive", dir);
  rmdir(adir);
  rmdir(dir);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_single_reply_rule),
    cmocka_unit_test(test_count_within_period),
    cmocka_unit_test(test_expiry),
    cmocka_unit_test(test_backoff_and_clear),
    cmocka_unit_test(test_scopes_and_strictest),
    cmocka_unit_test(test_multiline_reply),
    cmocka_unit_test(test_parsers),
    cmocka_unit_test(test_warmup),
    cmocka_unit_test(test_conn_failures_and_slots),
    cmocka_unit_test(test_bundled_rules),
    cmocka_unit_test(test_configuration),
    cmocka_unit_test(test_queue_glue),
    cmocka_unit_test(test_state_across_restart),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
