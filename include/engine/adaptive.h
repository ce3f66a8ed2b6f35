/* adaptive (prefix adaptive_): adaptive delivery's rules and state, as
 * Momentum's adaptive module and KumoMTA's traffic-shaping automation do it:
 * receivers' replies (code, enhanced code, a regular expression on the text)
 * fire response rules, once or when a count is reached within a period; a
 * rule's action changes the effective options of a scope (binding::domain,
 * every binding's mail to a domain, or a binding's mail to every domain of an
 * MX provider) for a duration, then ends by itself.
 *
 * Actions only delay mail: suspend, lower Max_Outbound_Connections,
 * Max_Deliveries_Per_Connection or Outbound_Throttle_Messages, raise
 * Retry_Interval / Max_Retry_Interval, or an exponential back-off (a
 * suspension whose length doubles each time the rule fires again while it
 * is in force or soon after). Nothing here fails a recipient.
 *
 * Also here: providers (MX host suffixes, e.g. ".google.com", that group
 * destination domains), per MX host / provider connection slots shared by
 * all workers (Host "mx" { Max_Outbound_Connections }), consecutive
 * connection failures that slow the connection rate, and IP warm-up (a
 * binding's age picks a message rate from a schedule).
 *
 * Pure: time is always an argument; never reads a clock, never logs, never
 * does I/O. The caller logs what adaptive_reply / adaptive_expire report.
 * Threads: any; one mutex inside guards the state (taken per non-2xx reply
 * and when a queue's limits are refreshed, never per message), and
 * adaptive_gen is a lock-free read. A rule set is immutable once built and
 * shared by reference. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ADAPTIVE_NAME_MAX 128    /* rule, provider, binding, domain names kept */
#define ADAPTIVE_RULES_MAX 512   /* rules in one set */
#define ADAPTIVE_STATE_MAX 4096  /* adjustments and trigger counters held at once */
#define ADAPTIVE_TRIGGER_MAX 1000 /* "C/S": C at most */
#define ADAPTIVE_WARMUP_MAX 32   /* steps of a warm-up schedule */
#define ADAPTIVE_SUFFIX_MAX 8    /* MX suffixes of a provider */
#define ADAPTIVE_CONN_DELAY_MAX_S 300u /* connection spacing after failures, at most */

enum adaptive_action {
  ADAPTIVE_ACT_SUSPEND,         /* no delivery attempts */
  ADAPTIVE_ACT_MAX_CONNECTIONS, /* Max_Outbound_Connections = value */
  ADAPTIVE_ACT_MAX_DELIVERIES,  /* Max_Deliveries_Per_Connection = value */
  ADAPTIVE_ACT_THROTTLE,        /* Outbound_Throttle_Messages = value/per */
  ADAPTIVE_ACT_RETRY_INTERVAL,  /* Retry_Interval = value seconds */
  ADAPTIVE_ACT_MAX_RETRY_INTERVAL,
  ADAPTIVE_ACT_BACKOFF,         /* suspend duration x 2^(n-1) */
  ADAPTIVE_ACT_CONNECT_DELAY,   /* built in: new connections at most one per value s */
  ADAPTIVE_ACT__COUNT
};

enum adaptive_scope {
  ADAPTIVE_SCOPE_BINDING_DOMAIN, /* this binding's mail to this domain (default) */
  ADAPTIVE_SCOPE_DOMAIN,         /* every binding's mail to this domain */
  ADAPTIVE_SCOPE_PROVIDER,       /* this binding's mail to every domain of the provider */
};

/* One response rule. Strings are owned by the rule set. */
struct adaptive_rule {
  const char *name;      /* unique in a set; a later rule of the same name replaces it */
  const char *provider;  /* NULL: any destination; else the reply's MX host must be the provider's */
  const char *domain;    /* NULL: any; else this routing domain only */
  int code;        /* 0: any reply code; else exactly this one */
  const char *enhanced;  /* NULL: any; else the enhanced code starts with it ("4.7.28") */
  const char *pattern;   /* NULL: any; else a POSIX extended regex (case-insensitive) on
                    * "CODE ENHANCED TEXT" (continuation lines joined by a space) */
  uint32_t count;  /* fires at the count-th matching reply ... */
  uint32_t period_s; /* ... within this many seconds (count 1: every reply) */
  enum adaptive_scope scope;
  enum adaptive_action action;
  uint32_t value;  /* MAX_*: the value; THROTTLE: messages; *_INTERVAL: seconds */
  uint32_t per_s;  /* THROTTLE: per this many seconds */
  uint32_t duration_s;
  const char *source;    /* where the reply text is documented (URL) */
  bool disabled;
};

/* A warm-up schedule: from binding age `age_s` on, `n` messages per `per_s`
 * seconds (n 0: no cap). Steps in increasing age. */
struct adaptive_warmup {
  unsigned nstep;
  struct adaptive_warmup_step {
    uint64_t age_s;
    uint32_t n, per_s;
  } step[ADAPTIVE_WARMUP_MAX];
};

struct adaptive_provider {
  const char *name;
  const char *suffix[ADAPTIVE_SUFFIX_MAX]; /* ".google.com": MX host names ending so */
  unsigned nsuffix;
  uint32_t max_connections; /* across all its domains, per binding; 0 = none */
  struct adaptive_warmup warmup; /* the provider's own warm-up schedule (nstep 0: none) */
  const char *source;
};

struct adaptive_rules;

/* An empty rule set. Panics on OOM. */
struct adaptive_rules *adaptive_rules_new(void);
void adaptive_rules_free(struct adaptive_rules *rs);
/* Add (or replace, by name) a rule; copies its strings. 0, or -EINVAL with
 * a reason in err (bad regex, missing name, count 0, no duration...). */
int adaptive_rules_add(struct adaptive_rules *rs, const struct adaptive_rule *r, char *err,
                       size_t errlen);
/* The rule called name, or NULL; to read or override one field of it. */
const struct adaptive_rule *adaptive_rules_find(const struct adaptive_rules *rs, const char *name);
/* Remove every rule (Lua's registerRules "replace"). */
void adaptive_rules_clear(struct adaptive_rules *rs);
/* Add (or replace by name) a provider. 0 or -EINVAL. */
int adaptive_rules_add_provider(struct adaptive_rules *rs, const struct adaptive_provider *p,
                                char *err, size_t errlen);
/* The provider whose MX suffix matches host (any case), or NULL. */
const struct adaptive_provider *adaptive_provider_of(const struct adaptive_rules *rs,
                                                     const char *mx_host);
const struct adaptive_provider *adaptive_provider_find(const struct adaptive_rules *rs,
                                                       const char *name);
size_t adaptive_rules_count(const struct adaptive_rules *rs);
const struct adaptive_rule *adaptive_rules_at(const struct adaptive_rules *rs, size_t i);
size_t adaptive_providers_count(const struct adaptive_rules *rs);
const struct adaptive_provider *adaptive_providers_at(const struct adaptive_rules *rs, size_t i);

/* The bundled rule set for the large mailbox providers (Gmail / Google
 * Workspace, Yahoo, Microsoft, Comcast), matched by their MX host names,
 * each rule with the public page that documents its reply. Adds to rs. */
void adaptive_rules_bundled(struct adaptive_rules *rs);

/* "1", "C/S" (C within S seconds; S may carry a unit: "5/1m"). 0 / -EINVAL. */
int adaptive_parse_trigger(const char *s, uint32_t *count, uint32_t *period_s);
/* "3600", "90s", "15m", "4h", "2d", "4 hours", "15 minutes"... 0 / -EINVAL. */
int adaptive_parse_duration(const char *s, uint32_t *out_s);
/* Action, scope names as the configuration spells them; -1 when unknown. */
int adaptive_action_parse(const char *s);
const char *adaptive_action_name(enum adaptive_action a);
int adaptive_scope_parse(const char *s);
const char *adaptive_scope_name(enum adaptive_scope s);
/* A warm-up schedule from entries "AGE RATE" (AGE a duration, RATE "N/S"
 * with S a duration, or "0" for no cap). 0 / -EINVAL with the reason. */
int adaptive_warmup_parse(const char *const *entries, size_t n, struct adaptive_warmup *out,
                          char *err, size_t errlen);
/* The step in force at a binding age, or NULL (none, or no cap). */
const struct adaptive_warmup_step *adaptive_warmup_at(const struct adaptive_warmup *w,
                                                      uint64_t age_s);

/* ---- state ---- */

struct adaptive;

/* Empty state over a rule set (a reference is taken). Panics on OOM. */
struct adaptive *adaptive_new(struct adaptive_rules *rs);
void adaptive_free(struct adaptive *a);
/* A reload's new rule set; adjustments and counters in force are kept
 * (they end at their own time). Takes ownership of rs. */
void adaptive_set_rules(struct adaptive *a, struct adaptive_rules *rs);
/* Add (or replace by name) one rule in the set in force, at once and for
 * every thread (a copy is made and swapped); clear_first drops every rule
 * first (Lua's registerRules "replace"). 0 or -EINVAL with err. */
int adaptive_add_rule(struct adaptive *a, const struct adaptive_rule *r, bool clear_first,
                      char *err, size_t errlen);
/* The rule set in force, with a reference (drop it with adaptive_rules_free). */
struct adaptive_rules *adaptive_rules_ref(struct adaptive *a);
/* Changes every time the adjustments in force change (fire, end, clear):
 * a queue whose cached generation differs asks adaptive_limits again. */
uint64_t adaptive_gen(const struct adaptive *a);

/* A reply a receiver sent for mail on binding to domain, through MX host
 * mx_host (the route's host name; NULL or "" when unknown). */
struct adaptive_reply {
  const char *binding;  /* NULL = "default" */
  const char *domain;
  const char *mx_host;
  int code;
  const char *enhanced; /* "" or NULL when none */
  const char *text;     /* continuation lines joined by a space */
};

/* One adjustment, as adaptive_reply and adaptive_expire report it and
 * adaptive_list shows it. */
struct adaptive_adjustment {
  char rule[ADAPTIVE_NAME_MAX];
  char binding[ADAPTIVE_NAME_MAX]; /* "" for the domain scope */
  char target[ADAPTIVE_NAME_MAX];  /* domain, or provider name */
  enum adaptive_scope scope;
  enum adaptive_action action;
  uint32_t value, per_s;
  uint64_t since_ms, until_ms;
  uint32_t fired;      /* times its rule fired for this scope in a row */
  char why[160];       /* "421 4.7.28 ..." cut */
};

/* Feed one non-2xx reply at now_ms. Rules are tried in order; each match
 * counts; a rule that reaches its count makes (or renews) its adjustment.
 * Up to nout new or renewed adjustments are copied to out (to be logged);
 * returns how many were made (may exceed nout). */
size_t adaptive_reply(struct adaptive *a, const struct adaptive_reply *r, uint64_t now_ms,
                      struct adaptive_adjustment *out, size_t nout);

/* A connection to (binding, domain) failed before SMTP at now_ms. After
 * threshold consecutive failures (threshold 0: never) a CONNECT_DELAY
 * adjustment spaces new connections, from 1 s, doubling (to at most 5 min)
 * with each further failure at least half the spacing after the last
 * change (a burst of connections already in flight counts once); the
 * generation changes then. It lasts until a connection succeeds or 10
 * minutes pass. Returns true (and *out) only when it starts: it is logged
 * once then, and once when it ends. */
bool adaptive_conn_failed(struct adaptive *a, const char *binding, const char *domain,
                          uint32_t threshold, uint64_t now_ms, struct adaptive_adjustment *out);
/* A connection to (binding, domain) reached SMTP: the failure run ends. */
void adaptive_conn_ok(struct adaptive *a, const char *binding, const char *domain);

/* What is in force for mail on binding to domain (provider: the domain's
 * MX provider name or NULL) at now_ms. A field is the strictest value of
 * the adjustments that apply; 0 = no adjustment (keep the configuration). */
struct adaptive_limits {
  bool suspended;
  uint32_t max_connections; /* binding::domain and domain scopes: per queue */
  /* provider scope: for the binding's connections to all the provider's
   * MX hosts together (held by adaptive_provider_slot_take, not per queue) */
  uint32_t provider_max_connections;
  uint32_t max_deliveries;
  uint32_t throttle_n, throttle_per_s; /* messages per period */
  uint32_t retry_interval_s, max_retry_interval_s;
  uint32_t connect_delay_s;
  uint64_t until_ms;    /* when the first of them ends (UINT64_MAX: none) */
  /* the throttle's adjustment ("rule binding target"): one bucket for
   * every queue it holds (a provider's domains share it) */
  char throttle_key[3 * ADAPTIVE_NAME_MAX];
};
void adaptive_limits(struct adaptive *a, const char *binding, const char *domain,
                     const char *provider, uint64_t now_ms, struct adaptive_limits *out);

/* End adjustments whose time has come (and drop stale counters); up to
 * nout are copied to out for the log. Returns how many ended. */
size_t adaptive_expire(struct adaptive *a, uint64_t now_ms, struct adaptive_adjustment *out,
                       size_t nout);
/* Visit the adjustments in force that concern binding and/or domain (NULL
 * = any; a provider's name matches its adjustments, and a domain seen with
 * the provider's MX matches them too); fn (NULL: just count) returns false
 * to stop. Returns how many were visited. */
size_t adaptive_list(struct adaptive *a, const char *binding, const char *domain,
                     bool (*fn)(void *arg, const struct adaptive_adjustment *adj), void *arg);
/* End the adjustments in force that concern binding and/or domain now (the
 * console's clear). Returns how many. */
size_t adaptive_clear(struct adaptive *a, const char *binding, const char *domain);
/* Across a restart. adaptive_each_kept visits, under the lock (fn must not
 * block), what a restart should keep at now_ms: each adjustment in force
 * (active) and each ended back-off whose rule firing again would still
 * double it (!active). adaptive_restore puts one back: in force until its
 * end, or as that back-off memory; 1 when kept, 0 when it no longer
 * matters at now_ms (dropped), -ENOSPC when the state is full. */
void adaptive_each_kept(struct adaptive *a, uint64_t now_ms,
                        void (*fn)(void *arg, const struct adaptive_adjustment *adj, bool active),
                        void *arg);
int adaptive_restore(struct adaptive *a, const struct adaptive_adjustment *adj, bool active,
                     uint64_t now_ms);
/* Adjustments in force; adjustments made since the start, per action. */
size_t adaptive_in_force(struct adaptive *a);
uint64_t adaptive_made_total(struct adaptive *a, enum adaptive_action act);

/* The provider of an MX host under the current rules: its name copied to
 * name[n] ("" when none) and its Max_Outbound_Connections (0 none). */
uint32_t adaptive_provider_lookup(struct adaptive *a, const char *mx_host, char *name, size_t n);
/* The same, with the provider's warm-up schedule copied to *w (nstep 0
 * when it has none or there is no provider). */
uint32_t adaptive_provider_warmup(struct adaptive *a, const char *mx_host, char *name, size_t n,
                                  struct adaptive_warmup *w);

/* ---- connection slots per MX host and provider ---- */

/* Take one connection slot for key (an MX host name, or a provider and
 * binding) if fewer than cap are held (cap 0: unlimited, nothing is
 * counted). True when allowed; *id is then the slot to release (0 when
 * nothing was counted). False (*id 0) when cap slots are held. Any thread. */
bool adaptive_slot_take(struct adaptive *a, const char *key, uint32_t cap, uint32_t *id);
/* Take one of binding's connection slots to the provider of mx_host (no
 * provider: allowed, *id 0). The cap is the stricter of the provider's
 * Max_Outbound_Connections and a provider-scope max_outbound_connections
 * adjustment in force for binding at now_ms; it holds across all the
 * provider's domains (key "provider NAME BINDING"). One lock. */
bool adaptive_provider_slot_take(struct adaptive *a, const char *mx_host, const char *binding,
                                 uint64_t now_ms, uint32_t *id);
/* Give back a slot adaptive_slot_take counted (id 0: nothing). */
void adaptive_slot_release(struct adaptive *a, uint32_t id);
/* Slots held for key now. */
uint32_t adaptive_slot_held(struct adaptive *a, const char *key);

/* ---- warm-up: binding ages ---- */

/* Set a binding's first-use instant (ms); the age is now - first use. */
void adaptive_binding_born(struct adaptive *a, const char *binding, uint64_t first_ms);
/* The first-use instant of binding, recording now_ms when it is unknown
 * (*is_new true then: the caller persists it). */
uint64_t adaptive_binding_first(struct adaptive *a, const char *binding, uint64_t now_ms,
                                bool *is_new);
