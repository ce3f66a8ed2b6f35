/* auth: outbound_smtp_auth's effective credentials per delivery unit.
 *
 * For a unit (one message, one (binding, domain)) the worker that owns it
 * asks auth_resolve before the unit is queued: every registered Lua
 * mod:outbound_smtp_auth_config(msg, ac, vctx) runs on a private copy of
 * the message's dictionaries (read back from the spool when
 * Keep_Message_Dicts_In_Memory = false), then type, user and pass come
 * from the message context (VCTX_MESS outbound_smtp_auth_*) or from the
 * configuration for the message's scope by authkeys.h's rule (user and
 * password one unit, never mixed). The result is a
 * credential identity: a keyed SipHash (process key) of type, user and
 * pass, 0 for "no AUTH". Units with different identities wait in different
 * queues, so a connection authenticated as A only ever carries mail whose
 * credentials are A's. The credentials themselves stay in a per-worker
 * table (wiped on free); nothing here logs them.
 *
 * Threads: one struct auth per worker, used only by that worker. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wcomment"
#include "smtpc.h"
#pragma GCC diagnostic pop

struct conf;
struct policy_worker;
struct spool;
struct spool_msg;
struct auth;

/* The identity of a unit whose credentials cannot be used (the message
 * context sets a user without a password or the other way round, or an
 * unknown mechanism): the worker fails the attempt transiently with
 * auth_error()'s text. No table entry, no connection. */
#define AUTH_CRED_UNUSABLE UINT64_MAX

/* The mechanism when a user is set but no type. */
#define AUTH_TYPE_DEFAULT SMTPC_AUTH_PLAIN /* user set, type unset */

struct auth *auth_new(void);
/* Free the table, wiping every password. NULL ok. */
void auth_free(struct auth *a);

/* Called with the identity when a pending resolution finishes. */
typedef void (*auth_ready_fn)(void *arg, uint64_t cred_id);

/* Resolve the unit's credentials. Returns 0 with *cred_id set, or 1 when a
 * Lua hook waits for a datasource: ready(arg, id) runs later on this
 * thread and the worker goes on meanwhile. sm, binding, domain must stay
 * valid until then. Unusable values give AUTH_CRED_UNUSABLE, the reason in
 * auth_error() (it names keys and the mechanism, never a secret). */
int auth_resolve(struct auth *a, struct policy_worker *pw, struct conf *c, struct spool *sp,
                 const struct spool_msg *sm, const char *binding, const char *domain,
                 uint64_t *cred_id, auth_ready_fn ready, void *arg);

/* At exit, after the Lua state is freed (no more answers): drop the
 * resolutions still waiting, handing each `arg` to drop. */
void auth_drop_pending(struct auth *a, void (*drop)(void *arg));

/* Why the last resolution gave AUTH_CRED_UNUSABLE (valid until the next
 * resolution on a). */
const char *auth_error(const struct auth *a);

/* The credentials of an identity (strings owned by the table), or NULL
 * for 0 / AUTH_CRED_UNUSABLE / unknown. */
const struct smtpc_auth *auth_creds(struct auth *a, uint64_t cred_id);
/* Whether the module is enabled in c (cached per snapshot). */
bool auth_enabled(struct auth *a, struct conf *c);
/* Resolutions waiting for Lua, and done so far (tests, console). */
unsigned auth_pending(const struct auth *a);
