/* libFuzzer target for the configuration parser: any bytes go through
 * conf_parse_buffer (includes disabled); a configuration that loads is
 * then exercised through views, eval, stanzas and the restart diff.
 * Must never crash, leak or trip a sanitizer. */
#include "buf.h"
#include "conf.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_diff(void *arg, const char *opt, const char *scope, const char *o, const char *n)
{
  (void)opt, (void)scope, (void)o, (void)n;
  ++*(int *)arg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct conf_error err;
  struct conf *c = conf_parse_buffer((const char *)data, size, "fuzz.conf", "/", CONF_PARSE_NO_INCLUDE, &err);
  if (!c) {
    char text[sizeof(err.file) + sizeof(err.msg) + 32];
    conf_error_str(&err, text, sizeof(text));
    return 0;
  }
  static const char *const domains[] = {NULL, "example.com", "EXAMPLE.COM", "x", "sparkpost.com"};
  size_t nb = conf_binding_count(c);
  for (size_t b = 0; b < nb && b < 64; b++) {
    for (size_t d = 0; d < sizeof(domains) / sizeof(domains[0]); d++) {
      const struct conf_view *v = conf_view_by_id(c, (int)b, domains[d]);
      struct conf_throttle t = conf_throttle(v, CONF_OUTBOUND_THROTTLE_MESSAGES);
      (void)conf_scope_name(c, t.scope);
      (void)conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER);
      (void)conf_interval(v, CONF_RETRY_INTERVAL);
    }
    struct buf out = {0};
    conf_eval(c, conf_binding_group(c, (int)b), conf_binding_name(c, (int)b), "example.com",
              "max_outbound_connections", 0, &out);
    conf_eval(c, NULL, conf_binding_name(c, (int)b), NULL, "routes", 0, &out);
    buf_done(&out, 0);
  }
  static const char *const kinds[] = {"ec_logger", "scriptlet", "datasource", "control_listener"};
  for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
    for (const struct conf_stanza *st = conf_stanza_first(c, kinds[k]); st; st = conf_stanza_next(st))
      for (const struct conf_stanza *ch = conf_stanza_child(st, "script"); ch; ch = conf_stanza_next(ch))
        (void)conf_str(conf_stanza_view(ch), CONF_SCRIPT_SOURCE);
  int n = 0;
  conf_restart_diff(c, c, on_diff, &n);
  if (n != 0)
    __builtin_trap(); /* a snapshot never differs from itself */
  conf_unref(c);
  return 0;
}
