/* authkeys.c owns outbound_smtp_auth's parameter names and the rule that
 * picks each parameter from the message context or the configuration (see
 * authkeys.h) and the mechanism names (the option table conf_options.def
 * lists the same words for the parser; test_auth checks they agree).
 * Never logs, allocates or keeps state; any thread. */
#include "authkeys.h"

#include "conf.h"
#include "panic.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

static const struct {
  const char *ctx_key;
  enum conf_opt opt;
} keys[AUTHKEY__COUNT] = {
  [AUTHKEY_TYPE] = {"outbound_smtp_auth_type", CONF_OUTBOUND_SMTP_AUTH_TYPE},
  [AUTHKEY_USER] = {"outbound_smtp_auth_user", CONF_OUTBOUND_SMTP_AUTH_USER},
  [AUTHKEY_PASS] = {"outbound_smtp_auth_pass", CONF_OUTBOUND_SMTP_AUTH_PASS},
  [AUTHKEY_KEY] = {"outbound_smtp_auth_key", CONF_OUTBOUND_SMTP_AUTH_KEY},
};

/* The mechanisms, in the order of Outbound_SMTP_AUTH_Type's words (so
 * conf_enum's index is an index here; test_auth checks both agree). */
static const struct {
  const char *name;
  enum smtpc_auth_type t;
} mechs[] = {
  [CONF_AUTH_PLAIN] = {"PLAIN", SMTPC_AUTH_PLAIN},
  [CONF_AUTH_LOGIN] = {"LOGIN", SMTPC_AUTH_LOGIN},
  [CONF_AUTH_XOAUTH2] = {"XOAUTH2", SMTPC_AUTH_XOAUTH2},
};

const char *authkeys_ctx_key(enum authkey k)
{
  UTIL_ASSERT((unsigned)k < AUTHKEY__COUNT);
  return keys[k].ctx_key;
}

const char *authkeys_option(enum authkey k)
{
  UTIL_ASSERT((unsigned)k < AUTHKEY__COUNT);
  return conf_opt_name(keys[k].opt);
}

int authkeys_find(const char *ctx_key)
{
  for (int k = 0; k < AUTHKEY__COUNT; k++)
    if (!strcmp(keys[k].ctx_key, ctx_key))
      return k;
  return -1;
}

static bool set(const char *s)
{
  return s && *s;
}

const char *authkeys_pick(enum authkey k, const char *const mess[AUTHKEY__COUNT],
                          const char *const conf[AUTHKEY__COUNT])
{
  UTIL_ASSERT((unsigned)k < AUTHKEY__COUNT);
  bool from_mess = (k == AUTHKEY_USER || k == AUTHKEY_PASS)
                     ? set(mess[AUTHKEY_USER]) || set(mess[AUTHKEY_PASS]) /* one unit */
                     : set(mess[k]);
  if (from_mess)
    return set(mess[k]) ? mess[k] : NULL;
  return set(conf[k]) ? conf[k] : NULL;
}

const char *authkeys_incomplete(const char *const mess[AUTHKEY__COUNT])
{
  bool u = set(mess[AUTHKEY_USER]), p = set(mess[AUTHKEY_PASS]);
  if (u == p)
    return NULL;
  return u ? keys[AUTHKEY_PASS].ctx_key : keys[AUTHKEY_USER].ctx_key;
}

int authkeys_mech_parse(const char *name, enum smtpc_auth_type *out)
{
  for (size_t i = 0; name && i < UTIL_ARRAY_LEN(mechs); i++)
    if (!strcasecmp(mechs[i].name, name)) {
      *out = mechs[i].t;
      return 0;
    }
  return -EINVAL;
}

const char *authkeys_mech_name(enum smtpc_auth_type t)
{
  for (size_t i = 0; i < UTIL_ARRAY_LEN(mechs); i++)
    if (mechs[i].t == t)
      return mechs[i].name;
  util_panic("authkeys: mechanism %d has no name", (int)t);
}

const char *authkeys_mech_list(void)
{
  return "PLAIN, LOGIN, XOAUTH2";
}
