/* authkeys: outbound_smtp_auth's vocabulary and its one precedence rule.
 *
 * The parameters (type, user, pass, key) each have a message-context key
 * (VCTX_MESS outbound_smtp_auth_*) and a configuration option
 * (Outbound_SMTP_AUTH_*). authkeys_pick says which one applies:
 *   - type and key: the message context's value when set, else the
 *     configuration's ("the message context wins over configuration");
 *   - user and pass are one unit: when the message context sets either,
 *     both come from it (a missing one stays missing: authkeys_incomplete
 *     names it); otherwise both come from the configuration. A user is
 *     never paired with another source's password.
 * The mechanism names: one table here, in the order of the option's words
 * (Outbound_SMTP_AUTH_Type, so conf_enum indexes it; test_auth checks it).
 *
 * Used by auth.c (the credentials a unit is sent with) and luam.c (what
 * msg:context_get shows inside outbound_smtp_auth_config). Pure functions:
 * any thread, no allocation, no logging. */
#pragma once

#include <stdbool.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wcomment"
#include "smtpc.h"
#pragma GCC diagnostic pop

enum authkey { AUTHKEY_TYPE, AUTHKEY_USER, AUTHKEY_PASS, AUTHKEY_KEY, AUTHKEY__COUNT };

/* "outbound_smtp_auth_user" ... */
const char *authkeys_ctx_key(enum authkey k);
/* "Outbound_SMTP_AUTH_User" ... (an option name conf_eval takes) */
const char *authkeys_option(enum authkey k);
/* The parameter a message-context key names (exact, lower case), or -1. */
int authkeys_find(const char *ctx_key);

/* The value of k given the message context's values mess[] and the
 * configuration's conf[] (NULL or "" = not set; conf[] NULL for off). */
const char *authkeys_pick(enum authkey k, const char *const mess[AUTHKEY__COUNT],
                          const char *const conf[AUTHKEY__COUNT]);
/* When the message context sets half of the user/password unit: the
 * context key it lacks; else NULL. */
const char *authkeys_incomplete(const char *const mess[AUTHKEY__COUNT]);

/* A mechanism by name (any case): 0 with *out set, or -EINVAL. */
int authkeys_mech_parse(const char *name, enum smtpc_auth_type *out);
/* The canonical name ("PLAIN", "LOGIN", "XOAUTH2"). */
const char *authkeys_mech_name(enum smtpc_auth_type t);
/* "PLAIN, LOGIN, XOAUTH2" for messages. */
const char *authkeys_mech_list(void);
