/* ctx: a message-context dictionary (VCTX_MESS / VCTX_CONN), string keys to
 * string values, as Momentum's msg:context_set/get/exists/delete.
 *
 * Concurrency: no operation takes a lock. ONE writer thread (the message's
 * owner) may call ctx_set/ctx_delete/ctx_quiesce/ctx_free; any number of
 * other threads may call ctx_get/ctx_exists/ctx_count/ctx_next at the same
 * time. Entries are immutable once published (atomic release stores; readers
 * use acquire loads), a delete leaves a tombstone, a resize publishes a new
 * table. Replaced entries, deleted entries and old tables are RETIRED, not
 * freed:
 *
 *   The memory-reclamation rule: a pointer returned by ctx_get (and the
 *   key/value seen by ctx_next) stays valid until the writer calls
 *   ctx_quiesce() or ctx_free(). The writer calls ctx_quiesce() only at a
 *   point where it knows no reader is inside a ctx call or holds a returned
 *   pointer (e.g. when the message is handed from one thread to another, or
 *   when only the owner thread uses it). Without readers (the usual case: the
 *   owner reads its own dictionary), calling ctx_quiesce() after a burst of
 *   writes is always safe.
 *
 * Secrets: a key in the secret set (built in: "outbound_smtp_auth_pass";
 * more via ctx_secret_keys_set at start-up), or set with CTX_F_SECRET, is
 * flagged: ctx_serialize skips it (never written to the spool) and its value
 * is wiped (util_wipe) when its memory is freed (ctx_quiesce / ctx_free after
 * a delete or replace, or ctx_free).
 *
 * The serialised form (ctx_serialize): u32 count, then per entry
 * u32 key_len, u32 value_len, key bytes, value bytes (little endian, no
 * NULs). Secret entries are not written.
 */
#pragma once

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Named limits: a longer key or value is refused with -E2BIG. */
#define CTX_KEY_MAX 1024u
#define CTX_VALUE_MAX (1024u * 1024u)
/* At most this many live entries per dictionary (-E2BIG beyond). */
#define CTX_ENTRIES_MAX 65536u

/* Entry flags. */
#define CTX_F_SECRET 0x1u

struct ctx;

/* A new empty dictionary; NULL on out-of-memory. */
struct ctx *ctx_new(void);
/* Free the dictionary, all retired memory, wiping secrets. Writer only. NULL ok. */
void ctx_free(struct ctx *c);

/* Create or replace key=value (NUL-terminated). Writer only. Returns 0,
 * -EINVAL (NULL or empty key, key or value with a NUL), -E2BIG (limits). */
int ctx_set(struct ctx *c, const char *key, const char *value);
/* Same with lengths and flags (CTX_F_SECRET forces the secret flag; keys in
 * the secret set are secret whatever the flags say). */
int ctx_setn(struct ctx *c, const char *key, size_t klen, const char *value, size_t vlen,
             unsigned flags);
/* Remove a key. Writer only. Returns 0, or -ENOENT when absent. */
int ctx_delete(struct ctx *c, const char *key);

/* The value of key, NUL-terminated, or NULL when absent (or c is NULL).
 * Any thread; valid until the writer's next ctx_quiesce/ctx_free. */
const char *ctx_get(const struct ctx *c, const char *key);
/* Same, with the value's length in *vlen (may be NULL). */
const char *ctx_getn(const struct ctx *c, const char *key, size_t klen, size_t *vlen);
bool ctx_exists(const struct ctx *c, const char *key);
/* Number of live entries (a snapshot). */
size_t ctx_count(const struct ctx *c);
/* True when the key would be flagged secret by the secret-key set. */
bool ctx_key_is_secret(const char *key, size_t klen);

/* Iteration over one table snapshot: set it = {0}, then
 *   while (ctx_next(c, &it, &k, &v)) ...
 * Any thread. Entries set or deleted during the walk may or may not be seen. */
struct ctx_iter {
  const void *tab; /* internal */
  size_t i;        /* internal */
};
bool ctx_next(const struct ctx *c, struct ctx_iter *it, const char **key, const char **value);
/* Like ctx_next, also giving lengths and flags (any pointer may be NULL). */
bool ctx_nextn(const struct ctx *c, struct ctx_iter *it, const char **key, size_t *klen,
               const char **value, size_t *vlen, unsigned *flags);

/* Free retired memory (see the rule above). Writer only. */
void ctx_quiesce(struct ctx *c);

/* Append the serialised form (secrets skipped) to out. Returns the number
 * of bytes appended. Any thread (reader-safe). c may be NULL (empty dict). */
size_t ctx_serialize(const struct ctx *c, struct buf *out);
/* Add the entries of a serialised dictionary (p, n bytes) to c (writer).
 * Returns 0, or -EBADMSG when malformed (c then holds a prefix of it), or
 * -E2BIG over a limit. */
int ctx_deserialize(struct ctx *c, const void *p, size_t n);

/* Replace the configured secret-key set (in addition to the built-in
 * "outbound_smtp_auth_pass"); keys are matched case-sensitively. Call at
 * start-up before any thread uses a ctx. Returns 0 or -ENOMEM. */
int ctx_secret_keys_set(const char *const *keys, size_t n);
