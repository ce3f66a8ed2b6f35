/* adaptive_conf (prefix adaptive_conf_): adaptive delivery's configuration
 * read from a snapshot: the `adaptive { }` stanza (bundled_rules,
 * response_rule "NAME" { }, provider "NAME" { }) as a rule set,
 * `Host "mx" { Max_Outbound_Connections = N }` caps, and the Adaptive_*
 * options of a view. Any thread; never logs (errors carry file:line). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf;
struct conf_view;
struct adaptive_rules;
struct adaptive_warmup;

/* The rule set the configuration declares: the bundled rules (unless
 * bundled_rules = false), then providers and rules of the stanza, a rule
 * or provider of a bundled name overriding what it sets. NULL with
 * "file:line: reason" in err. */
struct adaptive_rules *adaptive_conf_rules(struct conf *c, char *err, size_t errlen);
/* Validate everything adaptive in c (for --check-config and start-up):
 * 0, or -EINVAL with "file:line: reason" in err. */
int adaptive_conf_check(struct conf *c, char *err, size_t errlen);
/* The Host stanza named mx_host (any case, trailing dot ignored), NULL
 * when none. */
const struct conf_view *adaptive_conf_host(struct conf *c, const char *mx_host);
/* Max_Outbound_Connections of the Host stanza named mx_host, 0 when none. */
uint32_t adaptive_conf_host_cap(struct conf *c, const char *mx_host);
/* Adaptive_Enabled in the view. */
bool adaptive_conf_enabled(const struct conf_view *v);
/* The view's Adaptive_Warmup schedule (nstep 0 when unset); -EINVAL. */
int adaptive_conf_warmup(const struct conf_view *v, struct adaptive_warmup *out, char *err,
                         size_t errlen);
