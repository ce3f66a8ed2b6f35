/* adaptive_rules.c owns the bundled adaptive rule set: the large mailbox
 * providers, recognised by their MX host names, and the replies they
 * document for "slow down" and "blocked". Each rule names the public page
 * that documents its reply; operators override any rule by name
 * (adaptive { response_rule "NAME" { ... } }) or switch it off
 * (enabled = false). Data only: no I/O, no clock; any thread. */
#include "adaptive.h"

#include "panic.h"

#include <stdio.h>

struct bundled_provider {
  const char *name;
  const char *suffix[ADAPTIVE_SUFFIX_MAX];
  const char *source;
};

/* MX host suffixes; the pages list each provider's receiving hosts. */
static const struct bundled_provider providers[] = {
  {"google", {".google.com", ".googlemail.com"}, "https://support.google.com/mail/answer/81126"},
  {"yahoo", {".yahoodns.net"}, "https://senders.yahooinc.com/best-practices/"},
  {"microsoft", {".protection.outlook.com", ".mx.microsoft"},
   "https://sendersupport.olc.protection.outlook.com/pm/policies.aspx"},
  {"comcast", {".comcast.net"}, "https://spa.xfinity.com/postmaster"},
};

struct bundled_rule {
  const char *name, *provider;
  int code;
  const char *enhanced, *pattern, *trigger;
  enum adaptive_scope scope;
  enum adaptive_action action;
  uint32_t value, per_s;
  const char *duration, *source;
};

#define GOOGLE_CODES "https://support.google.com/a/answer/3726730"
#define YAHOO_CODES "https://senders.yahooinc.com/smtp-error-codes/"
#define MS_CODES "https://sendersupport.olc.protection.outlook.com/pm/troubleshooting.aspx"
#define COMCAST_CODES "https://spa.xfinity.com/postmaster?faq=comcast-mail-errors"

static const struct bundled_rule rules[] = {
  /* Gmail / Google Workspace: "421-4.7.28 ... mail sent from your IP address
   * has been temporarily rate limited" (also for the SPF, DKIM and URL
   * domains): the sending IP must back off; every Google-hosted domain
   * shares the limit, so the binding's whole provider is held. */
  {"google-rate-limited", "google", 421, "4.7.28", NULL, "1", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_BACKOFF, 0, 0, "30 minutes", GOOGLE_CODES},
  /* "421 4.7.0 Our system has detected an unusual rate of unsolicited mail
   * originating from your IP address ... temporarily blocked" */
  {"google-unsolicited-rate", "google", 421, "4.7.0", "unusual rate of unsolicited mail", "1",
   ADAPTIVE_SCOPE_PROVIDER, ADAPTIVE_ACT_BACKOFF, 0, 0, "30 minutes", GOOGLE_CODES},
  /* "421 4.7.0 TLS required for RCPT domain, closing connection": that
   * domain takes nothing without TLS; retrying at full speed only adds load */
  {"google-tls-required", "google", 421, "4.7.0", "TLS required", "1",
   ADAPTIVE_SCOPE_BINDING_DOMAIN, ADAPTIVE_ACT_SUSPEND, 0, 0, "1 hour", GOOGLE_CODES},
  /* Yahoo: "421 4.7.0 [TS01] Messages from x.x.x.x temporarily deferred due
   * to user complaints": slow down (Yahoo suggests retrying after hours) */
  {"yahoo-ts01", "yahoo", 421, NULL, "\\[TS01\\]", "1", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_THROTTLE, 100, 3600, "4 hours", YAHOO_CODES},
  /* "421 4.7.0 [TS02] ... temporarily deferred": repeated, hold off */
  {"yahoo-ts02", "yahoo", 421, NULL, "\\[TS02\\]", "5/1m", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_SUSPEND, 0, 0, "4 hours", YAHOO_CODES},
  /* "421 4.7.1 [TS03] All messages from x.x.x.x will be permanently deferred" */
  {"yahoo-ts03", "yahoo", 421, NULL, "\\[TS03\\]", "1", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_SUSPEND, 0, 0, "4 hours", YAHOO_CODES},
  /* "421 4.7.0 [TSS04] Messages from x.x.x.x temporarily deferred due to
   * unexpected volume or user complaints" ([TS04] in older replies) */
  {"yahoo-ts04", "yahoo", 421, NULL, "\\[TSS?04\\]", "1", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_SUSPEND, 0, 0, "2 hours", YAHOO_CODES},
  /* Microsoft (Outlook.com, Office 365): "451 4.7.650 The mail server
   * [x.x.x.x] has been temporarily rate limited due to IP reputation"
   * (4.7.651, 4.7.652 alike): one message a minute until it passes */
  {"microsoft-ip-reputation", "microsoft", 451, "4.7.65", NULL, "1", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_THROTTLE, 1, 60, "90 minutes", MS_CODES},
  /* "550 5.7.1 Unfortunately, messages from [x.x.x.x] weren't sent. Please
   * contact your Internet service provider since part of their network is
   * on our block list (S3150)" (S3140 alike): the IP is blocked; hold the
   * rest of its mail instead of failing it message by message */
  {"microsoft-s3150", "microsoft", 0, NULL, "\\(S3150\\)", "1", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_SUSPEND, 0, 0, "4 hours", MS_CODES},
  {"microsoft-s3140", "microsoft", 0, NULL, "\\(S3140\\)", "1", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_SUSPEND, 0, 0, "4 hours", MS_CODES},
  /* Comcast: "421 ... RL000001 ... Too many sessions" and the other RL0000xx
   * rate limits: twice within an hour, fewer connections for two hours */
  {"comcast-rate-limit", "comcast", 0, NULL, "RL0000[0-9]+", "2/1h", ADAPTIVE_SCOPE_PROVIDER,
   ADAPTIVE_ACT_MAX_CONNECTIONS, 5, 0, "2 hours", COMCAST_CODES},
};

void adaptive_rules_bundled(struct adaptive_rules *rs)
{
  char err[256];
  for (size_t i = 0; i < sizeof providers / sizeof providers[0]; i++) {
    const struct bundled_provider *b = &providers[i];
    struct adaptive_provider p = {.name = b->name, .source = b->source};
    while (p.nsuffix < ADAPTIVE_SUFFIX_MAX && b->suffix[p.nsuffix]) {
      p.suffix[p.nsuffix] = b->suffix[p.nsuffix];
      p.nsuffix++;
    }
    if (adaptive_rules_add_provider(rs, &p, err, sizeof err) < 0)
      util_panic("adaptive: bundled provider: %s", err);
  }
  for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
    const struct bundled_rule *b = &rules[i];
    struct adaptive_rule r = {.name = b->name, .provider = b->provider,
                              .code = b->code, .enhanced = b->enhanced,
                              .pattern = b->pattern, .scope = b->scope,
                              .action = b->action, .value = b->value, .per_s = b->per_s,
                              .source = b->source};
    if (adaptive_parse_trigger(b->trigger, &r.count, &r.period_s) < 0 ||
        adaptive_parse_duration(b->duration, &r.duration_s) < 0 ||
        adaptive_rules_add(rs, &r, err, sizeof err) < 0)
      util_panic("adaptive: bundled rule %s: %s", b->name, err);
  }
}
