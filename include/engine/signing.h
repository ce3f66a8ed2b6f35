/* signing: DKIM signing of queued messages (docs/dkim.md). Holds the
 * signers of the running configuration (dkim_conf) and signs each message
 * once, before it is stored (on the signer pool): the spool puts the
 * DKIM-Signature in front of the message, so retries, every recipient
 * domain and restarts deliver the same signed bytes.
 *
 * Threads: signing_init / signing_reload / signing_done on the main
 * thread; signing_on_sign / signing_on_sign_prep / signing_on_sign_async
 * on the ingest thread (the spool's callbacks), the last one handing the
 * key operations to the signer pool and returning at once. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct conf;
struct conf_error;
struct logs_writer;
struct spool_msg;

/* Load the signers of c (keys read now: call before leaving root). log
 * receives signing failures (paniclog). 0, or -1 with err naming file and
 * line. */
int signing_init(struct conf *c, struct logs_writer *log, struct conf_error *err);
/* The signers of a reloaded configuration; on failure the old ones stay
 * (and the caller keeps the old configuration). 0 or -1 with err. */
int signing_reload(struct conf *c, struct conf_error *err);
void signing_done(void);
/* How many dkim_domain stanzas sign (0: signing is off). */
size_t signing_domains(void);

/* msys.validate.opendkim.sign from an ingest hook: sign msg (body[0..len),
 * as stored) with Momentum's options (npairs key/value pairs: base_domain
 * or signing_domain, selector, identity, header_canon, body_canon, digest,
 * headerlist, keyfile, keybuf, body_length_limit); the field is kept for
 * signing_on_sign to store with the message. Ingest thread. 0, or < 0 with
 * why. */
int signing_lua(const struct spool_msg *msg, const uint8_t *body, size_t len,
                const char *const *kv, size_t npairs, char *why, size_t whylen);

/* spool_sign_cb: when opendkim_sign is true for the message's binding and
 * its first recipient's domain and a dkim_domain matches its responsible
 * domain, append the DKIM-Signature field to hdr. */
void signing_on_sign(void *arg, struct spool_msg *msg, const uint8_t *body, size_t len,
                     struct buf *hdr);
/* spool_sign_prep_cb: moves what Lua signed for msg into hdr; true when
 * the configuration signs msg too (opendkim_sign, and a dkim_domain names
 * its responsible domain). */
bool signing_on_sign_prep(void *arg, struct spool_msg *msg, const uint8_t *body, size_t len,
                          struct buf *hdr);
/* spool_sign_async_cb: sign the group's jobs as signing_on_sign does, on a
 * pool of DKIM_Signer_Threads signer threads (default one per core)
 * started on first use; returns at once, and spool_sign_done(group) is
 * called from a signer once every job is done. */
struct spool_sign_job;
struct spool_sign_group;
void signing_on_sign_async(void *arg, struct spool_sign_job *jobs, size_t n,
                           struct spool_sign_group *group);
