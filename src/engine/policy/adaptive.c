/* adaptive.c owns adaptive delivery's rule sets (matching a reply to a
 * rule), its state (trigger counters, adjustments in force, their end),
 * the connection slots per MX host / provider and the bindings' warm-up
 * ages. See adaptive.h.
 *
 * Must never: read a clock (now is an argument), log, do I/O, or fail a
 * recipient (it only reports adjustments; the worker applies them as
 * delays). Threads: any; `mu` guards the state, `gen` is read lock-free.
 * A rule set is immutable once handed to adaptive_new/adaptive_set_rules
 * and freed with its last reference. */
#include "adaptive.h"

#include "panic.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BACKOFF_MAX_S 86400u       /* a back-off suspension lasts one day at most */
#define CONN_DELAY_MAX_S ADAPTIVE_CONN_DELAY_MAX_S
#define CONN_DELAY_KEEP_MS 600000u /* ... kept this long after the last failure */
#define ADAPTIVE_SEEN_MAX 256      /* domains remembered with their provider */

/* ------------------------------------------------------------ rule sets */

struct rule {
  struct adaptive_rule r;
  regex_t re;
  bool has_re;
};

struct adaptive_rules {
  _Atomic int refs;
  struct rule *rule;
  size_t n, cap;
  struct adaptive_provider *prov;
  size_t nprov, capprov;
};

static char *dup_or_null(const char *s)
{
  return s && *s ? util_xstrdup(s) : NULL;
}

/* The set's own copies are const in the public struct. */
static void free_c(const char *p)
{
  free((void *)(uintptr_t)p);
}

/* Copy s into d[n], cut to fit. */
static void copy_cut(char *d, size_t n, const char *s)
{
  size_t l = s ? strnlen(s, n - 1) : 0;
  memcpy(d, s ? s : "", l);
  d[l] = '\0';
}

struct adaptive_rules *adaptive_rules_new(void)
{
  struct adaptive_rules *rs = util_xcalloc(1, sizeof *rs);
  atomic_init(&rs->refs, 1);
  return rs;
}

static void rule_done(struct rule *x)
{
  free_c(x->r.name);
  free_c(x->r.provider);
  free_c(x->r.domain);
  free_c(x->r.enhanced);
  free_c(x->r.pattern);
  free_c(x->r.source);
  if (x->has_re)
    regfree(&x->re);
  memset(x, 0, sizeof *x);
}

static void provider_done(struct adaptive_provider *p)
{
  free_c(p->name);
  free_c(p->source);
  for (unsigned i = 0; i < p->nsuffix; i++)
    free_c(p->suffix[i]);
  memset(p, 0, sizeof *p);
}

void adaptive_rules_clear(struct adaptive_rules *rs)
{
  for (size_t i = 0; i < rs->n; i++)
    rule_done(&rs->rule[i]);
  rs->n = 0;
}

static void rules_unref(struct adaptive_rules *rs)
{
  if (rs == NULL || atomic_fetch_sub(&rs->refs, 1) != 1)
    return;
  adaptive_rules_clear(rs);
  for (size_t i = 0; i < rs->nprov; i++)
    provider_done(&rs->prov[i]);
  free(rs->rule);
  free(rs->prov);
  free(rs);
}

void adaptive_rules_free(struct adaptive_rules *rs)
{
  rules_unref(rs);
}

int adaptive_rules_add(struct adaptive_rules *rs, const struct adaptive_rule *r, char *err,
                       size_t errlen)
{
  if (r->name == NULL || !*r->name || strlen(r->name) >= ADAPTIVE_NAME_MAX) {
    snprintf(err, errlen, "a rule needs a name (under %d bytes)", ADAPTIVE_NAME_MAX);
    return -EINVAL;
  }
  if (r->count == 0 || r->count > ADAPTIVE_TRIGGER_MAX || (r->count > 1 && r->period_s == 0)) {
    snprintf(err, errlen, "rule %s: trigger must be 1 or C/S with 1 <= C <= %d and S > 0",
             r->name, ADAPTIVE_TRIGGER_MAX);
    return -EINVAL;
  }
  if ((unsigned)r->action >= ADAPTIVE_ACT__COUNT || r->action == ADAPTIVE_ACT_CONNECT_DELAY) {
    snprintf(err, errlen, "rule %s: unknown action", r->name);
    return -EINVAL;
  }
  if (r->duration_s == 0) {
    snprintf(err, errlen, "rule %s: needs a duration", r->name);
    return -EINVAL;
  }
  bool needs_value = r->action != ADAPTIVE_ACT_SUSPEND && r->action != ADAPTIVE_ACT_BACKOFF;
  if (needs_value && r->value == 0) {
    snprintf(err, errlen, "rule %s: action %s needs a value above 0", r->name,
             adaptive_action_name(r->action));
    return -EINVAL;
  }
  if (r->code < 0 || r->code > 599 || (r->code > 0 && r->code < 200)) {
    snprintf(err, errlen, "rule %s: code %d is not a reply code", r->name, r->code);
    return -EINVAL;
  }
  if (r->scope == ADAPTIVE_SCOPE_PROVIDER && (r->provider == NULL || !*r->provider)) {
    snprintf(err, errlen, "rule %s: the provider scope needs a provider", r->name);
    return -EINVAL;
  }
  struct rule x = {.r = *r};
  if (r->pattern && *r->pattern) {
    int rc = regcomp(&x.re, r->pattern, REG_EXTENDED | REG_ICASE | REG_NOSUB);
    if (rc != 0) {
      char why[128];
      regerror(rc, &x.re, why, sizeof why);
      snprintf(err, errlen, "rule %s: pattern /%s/: %s", r->name, r->pattern, why);
      return -EINVAL;
    }
    x.has_re = true;
  }
  x.r.name = util_xstrdup(r->name);
  x.r.provider = dup_or_null(r->provider);
  x.r.domain = dup_or_null(r->domain);
  x.r.enhanced = dup_or_null(r->enhanced);
  x.r.pattern = dup_or_null(r->pattern);
  x.r.source = dup_or_null(r->source);
  if (x.r.per_s == 0)
    x.r.per_s = 1;
  for (size_t i = 0; i < rs->n; i++)
    if (!strcmp(rs->rule[i].r.name, r->name)) {
      rule_done(&rs->rule[i]);
      rs->rule[i] = x;
      return 0;
    }
  if (rs->n >= ADAPTIVE_RULES_MAX) {
    rule_done(&x);
    snprintf(err, errlen, "more than %d rules", ADAPTIVE_RULES_MAX);
    return -EINVAL;
  }
  UTIL_GROW(rs->rule, rs->n, rs->cap, 32);
  rs->rule[rs->n++] = x;
  return 0;
}

const struct adaptive_rule *adaptive_rules_find(const struct adaptive_rules *rs, const char *name)
{
  for (size_t i = 0; i < rs->n; i++)
    if (!strcmp(rs->rule[i].r.name, name))
      return &rs->rule[i].r;
  return NULL;
}

size_t adaptive_rules_count(const struct adaptive_rules *rs) { return rs->n; }
const struct adaptive_rule *adaptive_rules_at(const struct adaptive_rules *rs, size_t i)
{
  return i < rs->n ? &rs->rule[i].r : NULL;
}
size_t adaptive_providers_count(const struct adaptive_rules *rs) { return rs->nprov; }
const struct adaptive_provider *adaptive_providers_at(const struct adaptive_rules *rs, size_t i)
{
  return i < rs->nprov ? &rs->prov[i] : NULL;
}

int adaptive_rules_add_provider(struct adaptive_rules *rs, const struct adaptive_provider *p,
                                char *err, size_t errlen)
{
  if (p->name == NULL || !*p->name || strlen(p->name) >= ADAPTIVE_NAME_MAX ||
      p->nsuffix > ADAPTIVE_SUFFIX_MAX) {
    snprintf(err, errlen, "a provider needs a name and at most %d MX suffixes",
             ADAPTIVE_SUFFIX_MAX);
    return -EINVAL;
  }
  struct adaptive_provider x = {.name = util_xstrdup(p->name), .nsuffix = p->nsuffix,
                                .max_connections = p->max_connections, .warmup = p->warmup,
                                .source = dup_or_null(p->source)};
  for (unsigned i = 0; i < p->nsuffix; i++)
    x.suffix[i] = util_xstrdup(p->suffix[i]);
  for (size_t i = 0; i < rs->nprov; i++)
    if (!strcasecmp(rs->prov[i].name, p->name)) {
      provider_done(&rs->prov[i]);
      rs->prov[i] = x;
      return 0;
    }
  UTIL_GROW(rs->prov, rs->nprov, rs->capprov, 8);
  rs->prov[rs->nprov++] = x;
  return 0;
}

static bool ends_with_ci(const char *s, const char *suffix)
{
  size_t n = strlen(s), m = strlen(suffix);
  if (n > 0 && s[n - 1] == '.') /* "mx.google.com." */
    n--;
  return m > 0 && n >= m && !strncasecmp(s + n - m, suffix, m);
}

const struct adaptive_provider *adaptive_provider_of(const struct adaptive_rules *rs,
                                                     const char *mx_host)
{
  if (mx_host == NULL || !*mx_host)
    return NULL;
  for (size_t i = 0; i < rs->nprov; i++)
    for (unsigned k = 0; k < rs->prov[i].nsuffix; k++)
      if (ends_with_ci(mx_host, rs->prov[i].suffix[k]))
        return &rs->prov[i];
  return NULL;
}

const struct adaptive_provider *adaptive_provider_find(const struct adaptive_rules *rs,
                                                       const char *name)
{
  for (size_t i = 0; i < rs->nprov; i++)
    if (!strcasecmp(rs->prov[i].name, name))
      return &rs->prov[i];
  return NULL;
}

/* ------------------------------------------------------------ parsing */

int adaptive_parse_duration(const char *s, uint32_t *out_s)
{
  if (s == NULL)
    return -EINVAL;
  while (isspace((unsigned char)*s))
    s++;
  if (!isdigit((unsigned char)*s))
    return -EINVAL;
  uint64_t v = 0;
  while (isdigit((unsigned char)*s)) {
    v = v * 10 + (uint64_t)(*s++ - '0');
    if (v > UINT32_MAX)
      return -EINVAL;
  }
  while (isspace((unsigned char)*s))
    s++;
  char unit[16];
  size_t n = 0;
  while (isalpha((unsigned char)*s) && n + 1 < sizeof unit)
    unit[n++] = (char)tolower((unsigned char)*s++);
  unit[n] = '\0';
  while (isspace((unsigned char)*s))
    s++;
  if (*s)
    return -EINVAL;
  static const struct {
    const char *w;
    uint32_t mul;
  } units[] = {{"", 1}, {"s", 1}, {"sec", 1}, {"secs", 1}, {"second", 1}, {"seconds", 1},
               {"m", 60}, {"min", 60}, {"mins", 60}, {"minute", 60}, {"minutes", 60},
               {"h", 3600}, {"hr", 3600}, {"hour", 3600}, {"hours", 3600},
               {"d", 86400}, {"day", 86400}, {"days", 86400}, {"w", 604800}, {"week", 604800},
               {"weeks", 604800}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (!strcmp(unit, units[i].w)) {
      if (v * units[i].mul > UINT32_MAX)
        return -EINVAL;
      *out_s = (uint32_t)(v * units[i].mul);
      return 0;
    }
  return -EINVAL;
}

int adaptive_parse_trigger(const char *s, uint32_t *count, uint32_t *period_s)
{
  if (s == NULL)
    return -EINVAL;
  char *end;
  unsigned long c = strtoul(s, &end, 10);
  if (end == s || c == 0 || c > ADAPTIVE_TRIGGER_MAX)
    return -EINVAL;
  while (isspace((unsigned char)*end))
    end++;
  if (*end == '\0') {
    if (c != 1)
      return -EINVAL; /* a count needs its period */
    *count = 1;
    *period_s = 0;
    return 0;
  }
  if (*end != '/')
    return -EINVAL;
  uint32_t per;
  if (adaptive_parse_duration(end + 1, &per) < 0 || per == 0)
    return -EINVAL;
  *count = (uint32_t)c;
  *period_s = per;
  return 0;
}

static const char *const act_names[ADAPTIVE_ACT__COUNT] = {
  [ADAPTIVE_ACT_SUSPEND] = "suspend",
  [ADAPTIVE_ACT_MAX_CONNECTIONS] = "max_outbound_connections",
  [ADAPTIVE_ACT_MAX_DELIVERIES] = "max_deliveries_per_connection",
  [ADAPTIVE_ACT_THROTTLE] = "outbound_throttle_messages",
  [ADAPTIVE_ACT_RETRY_INTERVAL] = "retry_interval",
  [ADAPTIVE_ACT_MAX_RETRY_INTERVAL] = "max_retry_interval",
  [ADAPTIVE_ACT_BACKOFF] = "backoff",
  [ADAPTIVE_ACT_CONNECT_DELAY] = "connect_delay",
};

int adaptive_action_parse(const char *s)
{
  for (int i = 0; i < ADAPTIVE_ACT__COUNT; i++)
    if (s && !strcasecmp(s, act_names[i]))
      return i;
  /* Momentum's rule action words */
  if (s && !strcasecmp(s, "throttle"))
    return ADAPTIVE_ACT_THROTTLE;
  if (s && !strcasecmp(s, "reduce_connections"))
    return ADAPTIVE_ACT_MAX_CONNECTIONS;
  if (s && !strcasecmp(s, "reduce_deliveries"))
    return ADAPTIVE_ACT_MAX_DELIVERIES;
  if (s && !strcasecmp(s, "greylisted"))
    return ADAPTIVE_ACT_RETRY_INTERVAL;
  return -1;
}

const char *adaptive_action_name(enum adaptive_action a)
{
  return (unsigned)a < ADAPTIVE_ACT__COUNT ? act_names[a] : "?";
}

static const char *const scope_names[] = {"binding_domain", "domain", "provider"};

int adaptive_scope_parse(const char *s)
{
  for (int i = 0; i < 3; i++)
    if (s && !strcasecmp(s, scope_names[i]))
      return i;
  if (s && !strcasecmp(s, "binding::domain"))
    return ADAPTIVE_SCOPE_BINDING_DOMAIN;
  return -1;
}

const char *adaptive_scope_name(enum adaptive_scope s)
{
  return (unsigned)s < 3 ? scope_names[s] : "?";
}

int adaptive_warmup_parse(const char *const *entries, size_t n, struct adaptive_warmup *out,
                          char *err, size_t errlen)
{
  struct adaptive_warmup w = {0};
  for (size_t i = 0; i < n; i++) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", entries[i]);
    /* "AGE RATE": the rate is the last word */
    char *sp = strrchr(buf, ' ');
    uint32_t age, nmsg = 0, per = 1;
    if (sp == NULL || w.nstep >= ADAPTIVE_WARMUP_MAX)
      goto bad;
    *sp = '\0';
    if (adaptive_parse_duration(buf, &age) < 0)
      goto bad;
    char *rate = sp + 1, *slash = strchr(rate, '/'), *end;
    nmsg = (uint32_t)strtoul(rate, &end, 10);
    if (end == rate || (slash ? end != slash : *end != '\0'))
      goto bad;
    if (slash && (adaptive_parse_duration(slash + 1, &per) < 0 || per == 0))
      goto bad;
    if (w.nstep > 0 && age <= w.step[w.nstep - 1].age_s)
      goto bad;
    w.step[w.nstep++] = (struct adaptive_warmup_step){.age_s = age, .n = nmsg, .per_s = per};
    continue;
  bad:
    snprintf(err, errlen,
             "warm-up step \"%s\": expected \"AGE RATE\" (AGE like 0, 12h, 3d in increasing "
             "order; RATE N/PERIOD like 500/1h, or 0 for no cap), at most %d steps",
             entries[i], ADAPTIVE_WARMUP_MAX);
    return -EINVAL;
  }
  *out = w;
  return 0;
}

const struct adaptive_warmup_step *adaptive_warmup_at(const struct adaptive_warmup *w,
                                                      uint64_t age_s)
{
  const struct adaptive_warmup_step *st = NULL;
  for (unsigned i = 0; i < w->nstep && w->step[i].age_s <= age_s; i++)
    st = &w->step[i];
  return st && st->n ? st : NULL;
}

/* ------------------------------------------------------------ state */

/* One entry per (rule, binding, target): its trigger counter and its
 * adjustment (active or remembered for the back-off). */
struct entry {
  bool used, active;
  struct adaptive_adjustment adj;
  uint64_t *hits;      /* ring of the last `count` match instants */
  uint32_t nhits, cap, head;
  uint64_t last_ms;    /* last match or end: stale entries are dropped */
  uint32_t failures;   /* CONNECT_DELAY: consecutive failures */
  uint64_t step_ms;    /* CONNECT_DELAY: when the spacing began or last doubled */
};

struct slot {
  char key[2 * ADAPTIVE_NAME_MAX];
  uint32_t held;
};

struct age {
  char binding[ADAPTIVE_NAME_MAX];
  uint64_t first_ms;
};

struct adaptive {
  pthread_mutex_t mu;
  struct adaptive_rules *rs;
  _Atomic uint64_t gen;
  struct entry *e;
  size_t ne;
  struct slot *slot;
  size_t nslot, capslot;
  struct age *age;
  size_t nage, capage;
  /* domains seen with a provider's MX (console: a domain's provider-scope
   * adjustments); a ring, the oldest forgotten first */
  struct seen {
    char domain[ADAPTIVE_NAME_MAX];
    char provider[ADAPTIVE_NAME_MAX];
  } seen[ADAPTIVE_SEEN_MAX];
  size_t nseen, seen_next;
  size_t in_force;
  uint64_t made[ADAPTIVE_ACT__COUNT];
};

struct adaptive *adaptive_new(struct adaptive_rules *rs)
{
  struct adaptive *a = util_xcalloc(1, sizeof *a);
  pthread_mutex_init(&a->mu, NULL);
  atomic_fetch_add(&rs->refs, 1);
  a->rs = rs;
  atomic_init(&a->gen, 1);
  a->e = util_xcalloc(ADAPTIVE_STATE_MAX, sizeof *a->e);
  return a;
}

void adaptive_free(struct adaptive *a)
{
  if (a == NULL)
    return;
  for (size_t i = 0; i < a->ne; i++)
    free(a->e[i].hits);
  free(a->e);
  free(a->slot);
  free(a->age);
  rules_unref(a->rs);
  pthread_mutex_destroy(&a->mu);
  free(a);
}

void adaptive_set_rules(struct adaptive *a, struct adaptive_rules *rs)
{
  pthread_mutex_lock(&a->mu);
  struct adaptive_rules *old = a->rs;
  a->rs = rs;
  /* trigger counts of a rule whose trigger changed start again */
  for (size_t i = 0; i < a->ne; i++)
    a->e[i].nhits = 0;
  atomic_fetch_add(&a->gen, 1);
  pthread_mutex_unlock(&a->mu);
  rules_unref(old);
}

int adaptive_add_rule(struct adaptive *a, const struct adaptive_rule *r, bool clear_first,
                      char *err, size_t errlen)
{
  struct adaptive_rules *n = adaptive_rules_new();
  pthread_mutex_lock(&a->mu);
  struct adaptive_rules *old = a->rs;
  char why[256];
  for (size_t i = 0; i < old->nprov; i++)
    (void)adaptive_rules_add_provider(n, &old->prov[i], why, sizeof why);
  for (size_t i = 0; !clear_first && i < old->n; i++)
    (void)adaptive_rules_add(n, &old->rule[i].r, why, sizeof why);
  int rc = adaptive_rules_add(n, r, err, errlen);
  if (rc == 0) {
    a->rs = n;
    atomic_fetch_add(&a->gen, 1);
  }
  pthread_mutex_unlock(&a->mu);
  rules_unref(rc == 0 ? old : n);
  return rc;
}

struct adaptive_rules *adaptive_rules_ref(struct adaptive *a)
{
  pthread_mutex_lock(&a->mu);
  struct adaptive_rules *rs = a->rs;
  atomic_fetch_add(&rs->refs, 1);
  pthread_mutex_unlock(&a->mu);
  return rs;
}

uint64_t adaptive_gen(const struct adaptive *a)
{
  return atomic_load_explicit(&a->gen, memory_order_acquire);
}

static void copy_name(char *d, const char *s)
{
  copy_cut(d, ADAPTIVE_NAME_MAX, s);
}

/* Remember that domain's mail goes to provider's MX hosts. Under mu. */
static void seen_note(struct adaptive *a, const char *domain, const char *provider)
{
  if (domain == NULL || !*domain || provider == NULL || !*provider)
    return;
  for (size_t i = 0; i < a->nseen; i++)
    if (!strcasecmp(a->seen[i].domain, domain)) {
      copy_name(a->seen[i].provider, provider);
      return;
    }
  struct seen *s = &a->seen[a->seen_next];
  a->seen_next = (a->seen_next + 1) % ADAPTIVE_SEEN_MAX;
  if (a->nseen < ADAPTIVE_SEEN_MAX)
    a->nseen++;
  copy_name(s->domain, domain);
  copy_name(s->provider, provider);
}

static const char *seen_provider(const struct adaptive *a, const char *domain)
{
  for (size_t i = 0; i < a->nseen; i++)
    if (!strcasecmp(a->seen[i].domain, domain))
      return a->seen[i].provider;
  return NULL;
}

static struct entry *entry_find(struct adaptive *a, const char *rule, const char *binding,
                                const char *target, bool create, uint64_t now_ms)
{
  struct entry *free_e = NULL, *stale = NULL;
  for (size_t i = 0; i < a->ne; i++) {
    struct entry *e = &a->e[i];
    if (!e->used) {
      if (!free_e)
        free_e = e;
      continue;
    }
    if (!strcmp(e->adj.rule, rule) && !strcmp(e->adj.binding, binding) &&
        !strcasecmp(e->adj.target, target))
      return e;
    if (!e->active && (stale == NULL || e->last_ms < stale->last_ms))
      stale = e;
  }
  if (!create)
    return NULL;
  if (free_e == NULL && a->ne < ADAPTIVE_STATE_MAX)
    free_e = &a->e[a->ne++];
  if (free_e == NULL)
    free_e = stale; /* full: forget the oldest inactive counter */
  if (free_e == NULL)
    return NULL;    /* full of adjustments in force: nothing more is made */
  free(free_e->hits);
  memset(free_e, 0, sizeof *free_e);
  free_e->used = true;
  free_e->last_ms = now_ms;
  copy_name(free_e->adj.rule, rule);
  copy_name(free_e->adj.binding, binding);
  copy_name(free_e->adj.target, target);
  return free_e;
}

/* Count one match at now; true when the rule's count is reached within
 * its period (the counter starts again then). */
static bool count_hit(struct entry *e, const struct adaptive_rule *r, uint64_t now_ms)
{
  e->last_ms = now_ms;
  if (r->count <= 1)
    return true;
  if (e->cap != r->count) {
    free(e->hits);
    e->hits = util_xcalloc(r->count, sizeof *e->hits);
    e->cap = r->count;
    e->nhits = e->head = 0;
  }
  e->hits[e->head] = now_ms;
  e->head = (e->head + 1) % e->cap;
  if (e->nhits < e->cap)
    e->nhits++;
  if (e->nhits < e->cap)
    return false;
  /* the oldest of the last `count` matches: e->hits[head] */
  uint64_t oldest = e->hits[e->head];
  if (now_ms - oldest > (uint64_t)r->period_s * 1000u)
    return false;
  e->nhits = 0;
  return true;
}

static bool rule_matches(const struct rule *x, const struct adaptive_reply *rp,
                         const struct adaptive_provider *prov, const char *subject)
{
  const struct adaptive_rule *r = &x->r;
  if (r->disabled)
    return false;
  if (r->code && r->code != rp->code)
    return false;
  if (r->provider && (prov == NULL || strcasecmp(prov->name, r->provider)))
    return false;
  if (r->domain && strcasecmp(r->domain, rp->domain ? rp->domain : ""))
    return false;
  if (r->enhanced &&
      (rp->enhanced == NULL || strncmp(rp->enhanced, r->enhanced, strlen(r->enhanced))))
    return false;
  if (x->has_re && regexec(&x->re, subject, 0, NULL, 0) != 0)
    return false;
  return true;
}

/* Make (or renew after its end) e's adjustment for rule r. */
static void enact(struct adaptive *a, struct entry *e, const struct adaptive_rule *r,
                  const char *why, uint64_t now_ms)
{
  uint32_t dur = r->duration_s;
  if (r->action == ADAPTIVE_ACT_BACKOFF) {
    /* fired again within one (last) duration of its end: twice as long */
    uint64_t last_len = e->adj.until_ms - e->adj.since_ms;
    bool again = e->adj.fired > 0 && now_ms <= e->adj.until_ms + last_len;
    e->adj.fired = again ? e->adj.fired + 1 : 1;
    uint64_t d = (uint64_t)dur << (e->adj.fired - 1 < 16 ? e->adj.fired - 1 : 16);
    dur = d > BACKOFF_MAX_S ? (dur > BACKOFF_MAX_S ? dur : BACKOFF_MAX_S) : (uint32_t)d;
  } else {
    e->adj.fired++;
  }
  e->adj.scope = r->scope;
  e->adj.action = r->action;
  e->adj.value = r->value;
  e->adj.per_s = r->per_s ? r->per_s : 1;
  e->adj.since_ms = now_ms;
  e->adj.until_ms = now_ms + (uint64_t)dur * 1000u;
  copy_cut(e->adj.why, sizeof e->adj.why, why);
  e->active = true;
  a->in_force++;
  a->made[r->action]++;
}

size_t adaptive_reply(struct adaptive *a, const struct adaptive_reply *rp, uint64_t now_ms,
                      struct adaptive_adjustment *out, size_t nout)
{
  if (rp->code >= 200 && rp->code < 300)
    return 0;
  char subject[512];
  snprintf(subject, sizeof subject, "%d%s%s %s", rp->code,
           rp->enhanced && *rp->enhanced ? " " : "", rp->enhanced ? rp->enhanced : "",
           rp->text ? rp->text : "");
  const char *binding = rp->binding && *rp->binding ? rp->binding : "default";
  size_t made = 0;
  pthread_mutex_lock(&a->mu);
  const struct adaptive_provider *prov = adaptive_provider_of(a->rs, rp->mx_host);
  if (prov)
    seen_note(a, rp->domain, prov->name);
  for (size_t i = 0; i < a->rs->n; i++) {
    const struct rule *x = &a->rs->rule[i];
    if (!rule_matches(x, rp, prov, subject))
      continue;
    const struct adaptive_rule *r = &x->r;
    const char *b = binding, *target = rp->domain ? rp->domain : "";
    if (r->scope == ADAPTIVE_SCOPE_DOMAIN)
      b = "";
    else if (r->scope == ADAPTIVE_SCOPE_PROVIDER)
      target = prov->name; /* rule_matches checked the provider */
    struct entry *e = entry_find(a, r->name, b, target, true, now_ms);
    if (e == NULL || !count_hit(e, r, now_ms))
      continue;
    if (e->active && now_ms < e->adj.until_ms)
      continue; /* in force already: logged once, ends at its time */
    if (e->active) { /* ended, not swept yet */
      e->active = false;
      a->in_force--;
    }
    enact(a, e, r, subject, now_ms);
    if (made < nout)
      out[made] = e->adj;
    made++;
  }
  if (made)
    atomic_fetch_add(&a->gen, 1);
  pthread_mutex_unlock(&a->mu);
  return made;
}

bool adaptive_conn_failed(struct adaptive *a, const char *binding, const char *domain,
                          uint32_t threshold, uint64_t now_ms, struct adaptive_adjustment *out)
{
  if (threshold == 0)
    return false;
  bool changed = false;
  pthread_mutex_lock(&a->mu);
  struct entry *e = entry_find(a, "connection-failures", binding ? binding : "default",
                               domain ? domain : "", true, now_ms);
  if (e) {
    e->failures++;
    e->last_ms = now_ms;
    if (e->failures >= threshold) {
      bool started = !e->active, doubled = false;
      if (started) { /* reported once: the doublings that follow are not */
        e->active = true;
        a->in_force++;
        a->made[ADAPTIVE_ACT_CONNECT_DELAY]++;
        e->adj.since_ms = e->step_ms = now_ms;
        e->adj.scope = ADAPTIVE_SCOPE_BINDING_DOMAIN;
        e->adj.action = ADAPTIVE_ACT_CONNECT_DELAY;
        e->adj.value = 1;
        e->adj.per_s = 1;
        snprintf(e->adj.why, sizeof e->adj.why, "%u consecutive connection failures",
                 e->failures);
      } else if (e->adj.value < CONN_DELAY_MAX_S &&
                 now_ms - e->step_ms >= (uint64_t)e->adj.value * 500u) {
        /* a connection made under the current spacing failed too (not one
         * of a burst already in flight when it began or last doubled) */
        e->adj.value = e->adj.value * 2 > CONN_DELAY_MAX_S ? CONN_DELAY_MAX_S : e->adj.value * 2;
        e->step_ms = now_ms;
        doubled = true;
      }
      e->adj.fired = e->failures;
      e->adj.until_ms = now_ms + CONN_DELAY_KEEP_MS;
      if (started || doubled) /* an extension alone: queues read it at the old end */
        atomic_fetch_add(&a->gen, 1);
      if (started) {
        changed = true;
        *out = e->adj;
      }
    }
  }
  pthread_mutex_unlock(&a->mu);
  return changed;
}

void adaptive_conn_ok(struct adaptive *a, const char *binding, const char *domain)
{
  pthread_mutex_lock(&a->mu);
  struct entry *e = entry_find(a, "connection-failures", binding ? binding : "default",
                               domain ? domain : "", false, 0);
  if (e && e->failures) {
    e->failures = 0;
    if (e->active) {
      e->adj.until_ms = e->adj.since_ms; /* ends at the next adaptive_expire */
      atomic_fetch_add(&a->gen, 1);
    }
  }
  pthread_mutex_unlock(&a->mu);
}

static bool applies(const struct entry *e, const char *binding, const char *domain,
                    const char *provider)
{
  if (e->adj.binding[0] && strcmp(e->adj.binding, binding))
    return false;
  if (e->adj.scope == ADAPTIVE_SCOPE_PROVIDER)
    return provider && !strcasecmp(e->adj.target, provider);
  return !strcasecmp(e->adj.target, domain);
}

static uint32_t min_nz(uint32_t a, uint32_t b)
{
  return a == 0 ? b : b == 0 ? a : a < b ? a : b;
}

void adaptive_limits(struct adaptive *a, const char *binding, const char *domain,
                     const char *provider, uint64_t now_ms, struct adaptive_limits *out)
{
  memset(out, 0, sizeof *out);
  out->until_ms = UINT64_MAX;
  if (binding == NULL || !*binding)
    binding = "default";
  pthread_mutex_lock(&a->mu);
  seen_note(a, domain, provider);
  for (size_t i = 0; i < a->ne; i++) {
    const struct entry *e = &a->e[i];
    if (!e->used || !e->active || now_ms >= e->adj.until_ms ||
        !applies(e, binding, domain ? domain : "", provider))
      continue;
    const struct adaptive_adjustment *j = &e->adj;
    switch (j->action) {
    case ADAPTIVE_ACT_SUSPEND:
    case ADAPTIVE_ACT_BACKOFF:
      out->suspended = true;
      break;
    case ADAPTIVE_ACT_MAX_CONNECTIONS:
      if (j->scope == ADAPTIVE_SCOPE_PROVIDER)
        out->provider_max_connections = min_nz(out->provider_max_connections, j->value);
      else
        out->max_connections = min_nz(out->max_connections, j->value);
      break;
    case ADAPTIVE_ACT_MAX_DELIVERIES:
      out->max_deliveries = min_nz(out->max_deliveries, j->value);
      break;
    case ADAPTIVE_ACT_THROTTLE:
      /* the slower rate: n1/p1 < n2/p2 */
      if (out->throttle_n == 0 ||
          (uint64_t)j->value * out->throttle_per_s < (uint64_t)out->throttle_n * j->per_s) {
        out->throttle_n = j->value;
        out->throttle_per_s = j->per_s;
        snprintf(out->throttle_key, sizeof out->throttle_key, "%s %s %s", j->rule, j->binding,
                 j->target);
      }
      break;
    case ADAPTIVE_ACT_RETRY_INTERVAL:
      if (j->value > out->retry_interval_s)
        out->retry_interval_s = j->value;
      break;
    case ADAPTIVE_ACT_MAX_RETRY_INTERVAL:
      if (j->value > out->max_retry_interval_s)
        out->max_retry_interval_s = j->value;
      break;
    case ADAPTIVE_ACT_CONNECT_DELAY:
      if (j->value > out->connect_delay_s)
        out->connect_delay_s = j->value;
      break;
    default:
      util_panic("adaptive: action %d", j->action);
    }
    if (j->until_ms < out->until_ms)
      out->until_ms = j->until_ms;
  }
  pthread_mutex_unlock(&a->mu);
}

size_t adaptive_expire(struct adaptive *a, uint64_t now_ms, struct adaptive_adjustment *out,
                       size_t nout)
{
  size_t ended = 0;
  pthread_mutex_lock(&a->mu);
  for (size_t i = 0; i < a->ne; i++) {
    struct entry *e = &a->e[i];
    if (!e->used)
      continue;
    if (e->active && now_ms >= e->adj.until_ms) {
      e->active = false;
      a->in_force--;
      e->last_ms = now_ms;
      if (ended < nout)
        out[ended] = e->adj;
      ended++;
      continue;
    }
    /* a counter (or a back-off memory) nobody touched for a day goes */
    if (!e->active && e->failures == 0 && now_ms - e->last_ms > 86400000u &&
        now_ms > e->adj.until_ms + 86400000u) {
      free(e->hits);
      memset(e, 0, sizeof *e);
    }
  }
  if (ended)
    atomic_fetch_add(&a->gen, 1);
  pthread_mutex_unlock(&a->mu);
  return ended;
}

/* Whether e is in force and concerns binding and domain (a domain also
 * matches its provider's adjustments, and a provider's name them). */
static bool concerns(const struct adaptive *a, const struct entry *e, const char *binding,
                     const char *domain, bool any_binding_too)
{
  if (!e->used || !e->active)
    return false;
  /* an adjustment for every binding (domain scope) concerns each of them
   * when listing, not when one binding's are cleared */
  if (binding && strcmp(e->adj.binding, binding) && !(any_binding_too && !e->adj.binding[0]))
    return false;
  if (domain == NULL || !strcasecmp(e->adj.target, domain))
    return true;
  const char *p = e->adj.scope == ADAPTIVE_SCOPE_PROVIDER ? seen_provider(a, domain) : NULL;
  return p && !strcasecmp(p, e->adj.target);
}

size_t adaptive_list(struct adaptive *a, const char *binding, const char *domain,
                     bool (*fn)(void *arg, const struct adaptive_adjustment *adj), void *arg)
{
  size_t n = 0;
  pthread_mutex_lock(&a->mu);
  for (size_t i = 0; i < a->ne; i++) {
    if (!concerns(a, &a->e[i], binding, domain, true))
      continue;
    n++;
    if (fn && !fn(arg, &a->e[i].adj))
      break;
  }
  pthread_mutex_unlock(&a->mu);
  return n;
}

size_t adaptive_clear(struct adaptive *a, const char *binding, const char *domain)
{
  size_t n = 0;
  pthread_mutex_lock(&a->mu);
  for (size_t i = 0; i < a->ne; i++) {
    struct entry *e = &a->e[i];
    if (!concerns(a, e, binding, domain, false))
      continue;
    e->active = false;
    e->adj.fired = 0; /* cleared by hand: a back-off starts again from its base */
    e->failures = 0;
    e->nhits = 0;
    a->in_force--;
    n++;
  }
  if (n)
    atomic_fetch_add(&a->gen, 1);
  pthread_mutex_unlock(&a->mu);
  return n;
}

/* An ended back-off that firing again would still double (enact). */
static bool backoff_remembered(const struct entry *e, uint64_t now_ms)
{
  return e->adj.action == ADAPTIVE_ACT_BACKOFF && e->adj.fired > 0 &&
         now_ms <= e->adj.until_ms + (e->adj.until_ms - e->adj.since_ms);
}

void adaptive_each_kept(struct adaptive *a, uint64_t now_ms,
                        void (*fn)(void *arg, const struct adaptive_adjustment *adj, bool active),
                        void *arg)
{
  pthread_mutex_lock(&a->mu);
  for (size_t i = 0; i < a->ne; i++) {
    const struct entry *e = &a->e[i];
    if (!e->used)
      continue;
    bool active = e->active && now_ms < e->adj.until_ms;
    if (active || backoff_remembered(e, now_ms))
      fn(arg, &e->adj, active);
  }
  pthread_mutex_unlock(&a->mu);
}

int adaptive_restore(struct adaptive *a, const struct adaptive_adjustment *adj, bool active,
                     uint64_t now_ms)
{
  if (adj->until_ms < adj->since_ms || (unsigned)adj->action >= ADAPTIVE_ACT__COUNT)
    return 0;
  pthread_mutex_lock(&a->mu);
  struct entry probe = {.adj = *adj};
  int rc = 0;
  if (active ? now_ms < adj->until_ms : backoff_remembered(&probe, now_ms)) {
    struct entry *e = entry_find(a, adj->rule, adj->binding, adj->target, true, now_ms);
    if (e == NULL)
      rc = -ENOSPC;
    else if (!e->active) { /* one made since the start wins over the saved one */
      e->adj = *adj;
      e->last_ms = active ? now_ms : adj->until_ms;
      if (adj->action == ADAPTIVE_ACT_CONNECT_DELAY)
        e->failures = adj->fired;
      e->active = active;
      if (active) {
        a->in_force++;
        atomic_fetch_add(&a->gen, 1);
      }
      rc = 1;
    }
  }
  pthread_mutex_unlock(&a->mu);
  return rc;
}

size_t adaptive_in_force(struct adaptive *a)
{
  pthread_mutex_lock(&a->mu);
  size_t n = a->in_force;
  pthread_mutex_unlock(&a->mu);
  return n;
}

uint64_t adaptive_made_total(struct adaptive *a, enum adaptive_action act)
{
  pthread_mutex_lock(&a->mu);
  uint64_t n = (unsigned)act < ADAPTIVE_ACT__COUNT ? a->made[act] : 0;
  pthread_mutex_unlock(&a->mu);
  return n;
}

uint32_t adaptive_provider_lookup(struct adaptive *a, const char *mx_host, char *name, size_t n)
{
  pthread_mutex_lock(&a->mu);
  const struct adaptive_provider *p = adaptive_provider_of(a->rs, mx_host);
  copy_cut(name, n, p ? p->name : "");
  uint32_t cap = p ? p->max_connections : 0;
  pthread_mutex_unlock(&a->mu);
  return cap;
}

uint32_t adaptive_provider_warmup(struct adaptive *a, const char *mx_host, char *name, size_t n,
                                  struct adaptive_warmup *w)
{
  pthread_mutex_lock(&a->mu);
  const struct adaptive_provider *p = adaptive_provider_of(a->rs, mx_host);
  copy_cut(name, n, p ? p->name : "");
  uint32_t cap = p ? p->max_connections : 0;
  if (p)
    *w = p->warmup;
  else
    w->nstep = 0;
  pthread_mutex_unlock(&a->mu);
  return cap;
}

/* ------------------------------------------------------------ slots */

static struct slot *slot_find(struct adaptive *a, const char *key, bool create)
{
  for (size_t i = 0; i < a->nslot; i++)
    if (!strcasecmp(a->slot[i].key, key))
      return &a->slot[i];
  if (!create)
    return NULL;
  for (size_t i = 0; i < a->nslot; i++)
    if (a->slot[i].held == 0) {
      snprintf(a->slot[i].key, sizeof a->slot[i].key, "%s", key);
      return &a->slot[i];
    }
  UTIL_GROW(a->slot, a->nslot, a->capslot, 16);
  struct slot *s = &a->slot[a->nslot++];
  snprintf(s->key, sizeof s->key, "%s", key);
  s->held = 0;
  return s;
}

/* Under mu: s's slot taken if fewer than cap are held. */
static bool slot_take_locked(struct adaptive *a, const char *key, uint32_t cap, uint32_t *id)
{
  struct slot *s = slot_find(a, key, true);
  if (s->held >= cap)
    return false;
  s->held++;
  *id = (uint32_t)(s - a->slot) + 1; /* slots stay at their index */
  return true;
}

bool adaptive_slot_take(struct adaptive *a, const char *key, uint32_t cap, uint32_t *id)
{
  *id = 0;
  if (cap == 0)
    return true;
  pthread_mutex_lock(&a->mu);
  bool ok = slot_take_locked(a, key, cap, id);
  pthread_mutex_unlock(&a->mu);
  return ok;
}

bool adaptive_provider_slot_take(struct adaptive *a, const char *mx_host, const char *binding,
                                 uint64_t now_ms, uint32_t *id)
{
  *id = 0;
  if (binding == NULL || !*binding)
    binding = "default";
  bool ok = true;
  pthread_mutex_lock(&a->mu);
  const struct adaptive_provider *p = adaptive_provider_of(a->rs, mx_host);
  if (p) {
    uint32_t cap = p->max_connections;
    for (size_t i = 0; i < a->ne; i++) {
      const struct entry *e = &a->e[i];
      if (e->used && e->active && now_ms < e->adj.until_ms &&
          e->adj.action == ADAPTIVE_ACT_MAX_CONNECTIONS && applies(e, binding, "", p->name) &&
          e->adj.scope == ADAPTIVE_SCOPE_PROVIDER)
        cap = min_nz(cap, e->adj.value);
    }
    if (cap) {
      char key[2 * ADAPTIVE_NAME_MAX];
      snprintf(key, sizeof key, "provider %s %s", p->name, binding);
      ok = slot_take_locked(a, key, cap, id);
    }
  }
  pthread_mutex_unlock(&a->mu);
  return ok;
}

void adaptive_slot_release(struct adaptive *a, uint32_t id)
{
  if (id == 0)
    return;
  pthread_mutex_lock(&a->mu);
  if (id <= a->nslot && a->slot[id - 1].held > 0)
    a->slot[id - 1].held--;
  pthread_mutex_unlock(&a->mu);
}

uint32_t adaptive_slot_held(struct adaptive *a, const char *key)
{
  pthread_mutex_lock(&a->mu);
  struct slot *s = slot_find(a, key, false);
  uint32_t n = s ? s->held : 0;
  pthread_mutex_unlock(&a->mu);
  return n;
}

/* ------------------------------------------------------------ binding ages */

static struct age *age_find(struct adaptive *a, const char *binding, bool create)
{
  for (size_t i = 0; i < a->nage; i++)
    if (!strcmp(a->age[i].binding, binding))
      return &a->age[i];
  if (!create)
    return NULL;
  UTIL_GROW(a->age, a->nage, a->capage, 16);
  struct age *g = &a->age[a->nage++];
  copy_name(g->binding, binding);
  g->first_ms = 0;
  return g;
}

void adaptive_binding_born(struct adaptive *a, const char *binding, uint64_t first_ms)
{
  pthread_mutex_lock(&a->mu);
  age_find(a, binding ? binding : "default", true)->first_ms = first_ms;
  atomic_fetch_add(&a->gen, 1);
  pthread_mutex_unlock(&a->mu);
}

uint64_t adaptive_binding_first(struct adaptive *a, const char *binding, uint64_t now_ms,
                                bool *is_new)
{
  pthread_mutex_lock(&a->mu);
  struct age *g = age_find(a, binding ? binding : "default", true);
  *is_new = g->first_ms == 0;
  if (*is_new)
    g->first_ms = now_ms;
  uint64_t f = g->first_ms;
  pthread_mutex_unlock(&a->mu);
  return f;
}
