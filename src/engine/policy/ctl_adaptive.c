/* ctl_adaptive.c owns the console's `adaptive` commands (ctl_adaptive.h):
 * listing, clearing, the rule set, warm-up ages. Reads adaptive.c's state
 * under its lock; never touches a worker's queues (workers see a clear by
 * the state's generation). Control thread only. */
#include "ctl_adaptive.h"

#include "adaptive.h"
#include "adaptive_queue.h"
#include "buf.h"
#include "clock.h"
#include "conf.h"
#include "ctl_internal.h" /* ctl_json_str */
#include "worker.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

struct lister {
  struct buf *b;
  bool json, any;
  uint64_t now;
};

static bool list_one(void *arg, const struct adaptive_adjustment *j)
{
  struct lister *l = arg;
  uint64_t left = j->until_ms > l->now ? (j->until_ms - l->now + 999) / 1000 : 0;
  const char *scope = adaptive_scope_name(j->scope);
  if (l->json) {
    buf_append_str(l->b, l->any ? "," : "");
    buf_append_str(l->b, "{\"rule\":");
    ctl_json_str(l->b, j->rule);
    buf_append_str(l->b, ",\"binding\":");
    ctl_json_str(l->b, j->binding[0] ? j->binding : "*");
    buf_printf(l->b, ",\"scope\":\"%s\",\"target\":", scope);
    ctl_json_str(l->b, j->target);
    buf_printf(l->b, ",\"action\":\"%s\",\"value\":%u,\"per_s\":%u,\"since_ms\":%llu,"
               "\"until_ms\":%llu,\"seconds_left\":%llu,\"fired\":%u,\"why\":",
               adaptive_action_name(j->action), j->value, j->per_s,
               (unsigned long long)j->since_ms, (unsigned long long)j->until_ms,
               (unsigned long long)left, j->fired);
    ctl_json_str(l->b, j->why);
    buf_append_str(l->b, "}");
  } else {
    buf_printf(l->b, "- rule=%s binding=%s %s=%s action=%s value=%u", j->rule,
               j->binding[0] ? j->binding : "*", scope, j->target,
               adaptive_action_name(j->action), j->value);
    if (j->action == ADAPTIVE_ACT_THROTTLE)
      buf_printf(l->b, "/%u", j->per_s);
    buf_printf(l->b, " seconds_left=%llu why=\"%s\"\n", (unsigned long long)left, j->why);
  }
  l->any = true;
  return true;
}

static int filters(int ac, char **av, int from, const char **binding, const char **target,
                   struct buf *err)
{
  for (int i = from; i < ac; i++) {
    if (i + 1 < ac && !strcasecmp(av[i], "binding"))
      *binding = av[++i];
    else if (i + 1 < ac && (!strcasecmp(av[i], "domain") || !strcasecmp(av[i], "provider")))
      *target = av[++i];
    else {
      buf_printf(err, "usage: adaptive [list|clear] [binding B] [domain D | provider P]");
      return -EINVAL;
    }
  }
  return 0;
}

static void rules_out(struct engine_shared *sh, bool json, struct buf *b)
{
  struct adaptive_rules *rs = adaptive_rules_ref(sh->adaptive);
  if (json)
    buf_append_str(b, "\"rules\":[");
  for (size_t i = 0; rs && i < adaptive_rules_count(rs); i++) {
    const struct adaptive_rule *r = adaptive_rules_at(rs, i);
    char trig[32];
    if (r->count <= 1)
      snprintf(trig, sizeof trig, "1");
    else
      snprintf(trig, sizeof trig, "%u/%us", r->count, r->period_s);
    if (json) {
      buf_append_str(b, i ? ",{\"name\":" : "{\"name\":");
      ctl_json_str(b, r->name);
      buf_append_str(b, ",\"provider\":");
      ctl_json_str(b, r->provider ? r->provider : "");
      buf_printf(b, ",\"code\":%d,\"enhanced\":", r->code);
      ctl_json_str(b, r->enhanced ? r->enhanced : "");
      buf_append_str(b, ",\"pattern\":");
      ctl_json_str(b, r->pattern ? r->pattern : "");
      buf_printf(b, ",\"trigger\":\"%s\",\"scope\":\"%s\",\"action\":\"%s\",\"value\":%u,"
                 "\"duration_s\":%u,\"enabled\":%s,\"source\":", trig,
                 adaptive_scope_name(r->scope), adaptive_action_name(r->action), r->value,
                 r->duration_s, r->disabled ? "false" : "true");
      ctl_json_str(b, r->source ? r->source : "");
      buf_append_str(b, "}");
    } else {
      buf_printf(b, "- name=%s provider=%s code=%d enhanced=%s pattern=\"%s\" trigger=%s "
                 "scope=%s action=%s value=%u duration=%us%s source=%s\n", r->name,
                 r->provider ? r->provider : "*", r->code, r->enhanced ? r->enhanced : "*",
                 r->pattern ? r->pattern : "", trig, adaptive_scope_name(r->scope),
                 adaptive_action_name(r->action), r->value, r->duration_s,
                 r->disabled ? " (disabled)" : "", r->source ? r->source : "-");
    }
  }
  if (json)
    buf_append_str(b, "]");
  adaptive_rules_free(rs);
}

int ctl_adaptive(struct engine_shared *sh, bool json, int ac, char **av, struct buf *out,
                 struct buf *err)
{
  struct adaptive *a = sh->adaptive;
  uint64_t now = clock_wall_ms();
  if (a == NULL) {
    buf_printf(err, "adaptive delivery is not running");
    return -EINVAL;
  }
  const char *binding = NULL, *target = NULL;
  bool list = ac == 0 || !strcasecmp(av[0], "list") || !strcasecmp(av[0], "binding") ||
              !strcasecmp(av[0], "domain") || !strcasecmp(av[0], "provider");
  if (list) {
    int from = ac > 0 && !strcasecmp(av[0], "list") ? 1 : 0;
    if (filters(ac, av, from, &binding, &target, err) < 0)
      return -EINVAL;
    struct lister l = {.b = out, .json = json, .now = now};
    if (json)
      buf_append_str(out, "\"adjustments\":[");
    size_t n = adaptive_list(a, binding, target, list_one, &l);
    if (json)
      buf_printf(out, "],\"in_force\":%zu", n);
    else if (n == 0)
      buf_append_str(out, "no adjustments in force\n");
    return 0;
  }
  if (!strcasecmp(av[0], "clear")) {
    bool all = ac == 2 && !strcasecmp(av[1], "all");
    if (!all && (ac < 3 || filters(ac, av, 1, &binding, &target, err) < 0)) {
      if (buf_avail(err) == 0)
        buf_printf(err, "usage: adaptive clear (all | [binding B] [domain D | provider P])");
      return -EINVAL;
    }
    size_t n = adaptive_clear(a, binding, target);
    if (json)
      buf_printf(out, "\"cleared\":%zu", n);
    else
      buf_printf(out, "cleared: %zu\n", n);
    return 0;
  }
  if (!strcasecmp(av[0], "rules") && ac == 1) {
    rules_out(sh, json, out);
    return 0;
  }
  if (!strcasecmp(av[0], "warmup") && ac <= 3) {
    struct conf *c = conf_ref(atomic_load(&sh->conf));
    const char *spool = sh->spoolbase; /* the locked one, whatever a reload names */
    int rc = 0;
    if (ac == 3 || ac == 2) {
      uint32_t age = 0;
      if (ac == 3 && adaptive_parse_duration(av[2], &age) < 0) {
        buf_printf(err, "adaptive warmup BINDING [AGE]: AGE is a duration (e.g. 3d, 3600)");
        conf_unref(c);
        return -EINVAL;
      }
      rc = adaptive_queue_ages_set(sh, spool, av[1], now - (uint64_t)age * 1000u);
    }
    if (json)
      buf_append_str(out, "\"bindings\":[");
    for (size_t i = 0; i < conf_binding_count(c); i++) {
      bool is_new;
      const char *b = conf_binding_name(c, (int)i);
      uint64_t first = adaptive_binding_first(a, b, now, &is_new);
      uint64_t age_s = now > first ? (now - first) / 1000u : 0;
      if (json) {
        buf_append_str(out, i ? ",{\"binding\":" : "{\"binding\":");
        ctl_json_str(out, b);
        buf_printf(out, ",\"age_s\":%llu}", (unsigned long long)age_s);
      } else {
        buf_printf(out, "- binding=%s age_s=%llu\n", b, (unsigned long long)age_s);
      }
    }
    if (json)
      buf_append_str(out, "]");
    conf_unref(c);
    if (rc < 0) {
      buf_printf(err, "could not record the age in %s/adaptive/bindings: %s", spool,
                 strerror(-rc));
      return -EINVAL;
    }
    return 0;
  }
  buf_printf(err, "usage: adaptive [list] [binding B] [domain D | provider P] | adaptive clear "
                  "(all | [binding B] [domain D | provider P]) | adaptive rules | adaptive "
                  "warmup [BINDING [AGE]]");
  return -EINVAL;
}
