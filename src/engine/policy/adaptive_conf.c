/* adaptive_conf.c owns reading adaptive delivery's configuration: the
 * `adaptive { }` stanza (bundled_rules, response_rule and provider
 * sub-stanzas) into a rule set, `Host "mx" { Max_Outbound_Connections }`
 * caps, and the Adaptive_* scope options of a view.
 *
 * Must never: keep state (the rule set it builds belongs to the caller),
 * log (errors come back with the file and line). Threads: any, on an
 * immutable snapshot. */
#include "adaptive_conf.h"

#include "adaptive.h"
#include "conf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FAIL_AT(v, o, ...) (snprintf(msg, sizeof msg, __VA_ARGS__), where(v, o, err, errlen, msg))

/* "file:line: msg" for the option o of view v into err; -EINVAL. */
static int where(const struct conf_view *v, enum conf_opt o, char *err, size_t errlen,
                 const char *msg)
{
  unsigned line = 0;
  const char *file = conf_origin(v, o, &line);
  if (file)
    snprintf(err, errlen, "%s:%u: %s", file, line, msg);
  else
    snprintf(err, errlen, "%s", msg);
  return -EINVAL;
}

/* The value of an action: a count, "N/PERIOD", or a duration. */
static int parse_value(enum adaptive_action act, const char *s, uint32_t *value, uint32_t *per)
{
  *per = 1;
  if (act == ADAPTIVE_ACT_RETRY_INTERVAL || act == ADAPTIVE_ACT_MAX_RETRY_INTERVAL)
    return adaptive_parse_duration(s, value);
  char *end;
  unsigned long n = strtoul(s, &end, 10);
  if (end == s || n == 0 || n > 1000000000ul)
    return -EINVAL;
  *value = (uint32_t)n;
  if (act == ADAPTIVE_ACT_THROTTLE && *end == '/')
    return adaptive_parse_duration(end + 1, per) < 0 || *per == 0 ? -EINVAL : 0;
  return *end == '\0' ? 0 : -EINVAL;
}

static int rule_from_stanza(struct adaptive_rules *rs, const struct conf_stanza *st, char *err,
                            size_t errlen)
{
  const struct conf_view *v = conf_stanza_view(st);
  const char *name = conf_stanza_instance(st);
  char msg[400];
  struct adaptive_rule r = {.name = name, .count = 1};
  const struct adaptive_rule *base = adaptive_rules_find(rs, name);
  if (base)
    r = *base; /* overriding a bundled (or earlier) rule: only what is set here changes */
#define SET(o) conf_is_set(v, o)
  if (SET(CONF_RULE_PROVIDER))
    r.provider = conf_str(v, CONF_RULE_PROVIDER);
  if (SET(CONF_RULE_DOMAIN))
    r.domain = conf_str(v, CONF_RULE_DOMAIN);
  if (SET(CONF_RULE_CODE) || !base)
    r.code = (int)conf_int(v, CONF_RULE_CODE);
  if (SET(CONF_RULE_ENHANCED))
    r.enhanced = conf_str(v, CONF_RULE_ENHANCED);
  if (SET(CONF_RULE_PATTERN))
    r.pattern = conf_str(v, CONF_RULE_PATTERN);
  if (SET(CONF_RULE_SOURCE))
    r.source = conf_str(v, CONF_RULE_SOURCE);
  if ((SET(CONF_RULE_TRIGGER) || !base) &&
      adaptive_parse_trigger(conf_str(v, CONF_RULE_TRIGGER), &r.count, &r.period_s) < 0)
    return FAIL_AT(v, CONF_RULE_TRIGGER,
                 "response_rule \"%s\": trigger \"%s\" is not 1 or COUNT/PERIOD (e.g. 5/1m)",
                 name, conf_str(v, CONF_RULE_TRIGGER));
  if (SET(CONF_RULE_SCOPE) || !base)
    r.scope = (enum adaptive_scope)adaptive_scope_parse(conf_str(v, CONF_RULE_SCOPE));
  if (SET(CONF_RULE_ACTION) || !base)
    r.action = (enum adaptive_action)adaptive_action_parse(conf_str(v, CONF_RULE_ACTION));
  if (SET(CONF_RULE_VALUE) &&
      parse_value(r.action, conf_str(v, CONF_RULE_VALUE), &r.value, &r.per_s) < 0)
    return FAIL_AT(v, CONF_RULE_VALUE,
                 "response_rule \"%s\": value \"%s\" does not suit the action (a count, N/PERIOD "
                 "for outbound_throttle_messages, a duration for the intervals)",
                 name, conf_str(v, CONF_RULE_VALUE));
  if (SET(CONF_RULE_DURATION) &&
      adaptive_parse_duration(conf_str(v, CONF_RULE_DURATION), &r.duration_s) < 0)
    return FAIL_AT(v, CONF_RULE_DURATION,
                 "response_rule \"%s\": duration \"%s\" is not a duration (e.g. 600, 90m, "
                 "\"4 hours\")", name, conf_str(v, CONF_RULE_DURATION));
  if (SET(CONF_MOD_ENABLED))
    r.disabled = !conf_bool(v, CONF_MOD_ENABLED);
#undef SET
  char why[300];
  if (adaptive_rules_add(rs, &r, why, sizeof why) < 0)
    return FAIL_AT(v, CONF_RULE_ACTION, "response_rule \"%s\": %s", name, why);
  return 0;
}

static int provider_from_stanza(struct adaptive_rules *rs, const struct conf_stanza *st,
                                char *err, size_t errlen)
{
  const struct conf_view *v = conf_stanza_view(st);
  const char *name = conf_stanza_instance(st);
  char msg[400];
  struct adaptive_provider p = {.name = name};
  const struct adaptive_provider *base = adaptive_provider_find(rs, name);
  if (base)
    p = *base;
  size_t n = 0;
  const char *const *sfx = conf_list(v, CONF_PROVIDER_MX_SUFFIX, &n);
  if (conf_is_set(v, CONF_PROVIDER_MX_SUFFIX)) {
    if (n == 0 || n > ADAPTIVE_SUFFIX_MAX)
      return FAIL_AT(v, CONF_PROVIDER_MX_SUFFIX,
                   "provider \"%s\": mx_suffix needs 1 to 8 suffixes", name);
    p.nsuffix = (unsigned)n;
    for (size_t i = 0; i < n; i++)
      p.suffix[i] = sfx[i];
  }
  if (p.nsuffix == 0)
    return FAIL_AT(v, CONF_PROVIDER_MX_SUFFIX,
                 "provider \"%s\" needs mx_suffix = ( \".example.net\" ... )", name);
  if (conf_is_set(v, CONF_PROVIDER_WARMUP)) {
    size_t nw = 0;
    const char *const *l = conf_list(v, CONF_PROVIDER_WARMUP, &nw);
    char why[300];
    if (adaptive_warmup_parse(l, nw, &p.warmup, why, sizeof why) < 0)
      return FAIL_AT(v, CONF_PROVIDER_WARMUP, "provider \"%s\": %s", name, why);
  }
  if (conf_is_set(v, CONF_PROVIDER_MAX_OUTBOUND_CONNECTIONS)) {
    int64_t m = conf_int(v, CONF_PROVIDER_MAX_OUTBOUND_CONNECTIONS);
    p.max_connections = m > 0 && m < 1000000 ? (uint32_t)m : 0;
  }
  char why[300];
  if (adaptive_rules_add_provider(rs, &p, why, sizeof why) < 0)
    return FAIL_AT(v, CONF_PROVIDER_MX_SUFFIX, "provider \"%s\": %s", name, why);
  return 0;
}

struct adaptive_rules *adaptive_conf_rules(struct conf *c, char *err, size_t errlen)
{
  struct adaptive_rules *rs = adaptive_rules_new();
  const struct conf_stanza *ad = conf_stanza_first(c, "adaptive");
  bool bundled = ad ? conf_bool(conf_stanza_view(ad), CONF_ADAPTIVE_BUNDLED_RULES) : true;
  if (bundled)
    adaptive_rules_bundled(rs);
  int rc = 0;
  for (const struct conf_stanza *a = ad; a && rc == 0; a = conf_stanza_next(a)) {
    /* providers first: rules name them */
    for (const struct conf_stanza *p = conf_stanza_child(a, "provider"); p && rc == 0;
         p = conf_stanza_next(p))
      rc = provider_from_stanza(rs, p, err, errlen);
    for (const struct conf_stanza *r = conf_stanza_child(a, "response_rule"); r && rc == 0;
         r = conf_stanza_next(r))
      rc = rule_from_stanza(rs, r, err, errlen);
  }
  /* every provider a rule names must exist */
  for (size_t i = 0; rc == 0 && i < adaptive_rules_count(rs); i++) {
    const struct adaptive_rule *r = adaptive_rules_at(rs, i);
    if (r->provider && !adaptive_provider_find(rs, r->provider)) {
      snprintf(err, errlen, "adaptive: response_rule \"%s\" names provider \"%s\", which is not "
               "defined (provider \"%s\" { mx_suffix = ( ... ) })", r->name, r->provider,
               r->provider);
      rc = -EINVAL;
    }
  }
  if (rc < 0) {
    adaptive_rules_free(rs);
    return NULL;
  }
  return rs;
}

const struct conf_view *adaptive_conf_host(struct conf *c, const char *mx_host)
{
  if (mx_host == NULL || !*mx_host)
    return NULL;
  size_t n = strlen(mx_host);
  if (n > 0 && mx_host[n - 1] == '.')
    n--;
  for (const struct conf_stanza *h = conf_stanza_first(c, "host"); h; h = conf_stanza_next(h)) {
    const char *name = conf_stanza_instance(h);
    size_t m = strlen(name);
    if (m > 0 && name[m - 1] == '.')
      m--;
    if (m == n && !strncasecmp(name, mx_host, n))
      return conf_stanza_view(h);
  }
  return NULL;
}

uint32_t adaptive_conf_host_cap(struct conf *c, const char *mx_host)
{
  const struct conf_view *v = adaptive_conf_host(c, mx_host);
  int64_t cap = v ? conf_int(v, CONF_HOST_MAX_OUTBOUND_CONNECTIONS) : 0;
  return cap > 0 && cap < 1000000 ? (uint32_t)cap : 0;
}

bool adaptive_conf_enabled(const struct conf_view *v)
{
  return v && conf_bool(v, CONF_ADAPTIVE_ENABLED);
}

int adaptive_conf_warmup(const struct conf_view *v, struct adaptive_warmup *out, char *err,
                         size_t errlen)
{
  size_t n = 0;
  const char *const *l = conf_list(v, CONF_ADAPTIVE_WARMUP, &n);
  if (l == NULL || n == 0) {
    out->nstep = 0;
    return 0;
  }
  return adaptive_warmup_parse(l, n, out, err, errlen);
}

int adaptive_conf_check(struct conf *c, char *err, size_t errlen)
{
  struct adaptive_rules *rs = adaptive_conf_rules(c, err, errlen);
  if (rs == NULL)
    return -EINVAL;
  adaptive_rules_free(rs);
  /* warm-up schedules of the global scope and every binding */
  for (size_t i = 0; i < conf_binding_count(c); i++) {
    const struct conf_view *v = conf_view_by_id(c, (int)i, NULL);
    struct adaptive_warmup w;
    char why[300], msg[400];
    if (v && adaptive_conf_warmup(v, &w, why, sizeof why) < 0)
      return FAIL_AT(v, CONF_ADAPTIVE_WARMUP, "Adaptive_Warmup: %s", why);
  }
  return 0;
}
