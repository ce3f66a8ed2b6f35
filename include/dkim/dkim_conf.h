/* dkim_conf: the signers a configuration snapshot describes (Momentum's
 * `opendkim "NAME" { ... dkim_domain "D" { ... } }`), with their keys
 * loaded, and the choice of signer for a message by its responsible
 * domain (Sender:, else From:).
 *
 * Threads: build on one thread (start-up, reload); a built set is
 * read-only and signs from any number of threads. Never logs: errors come
 * back as struct conf_error naming file and line. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "dkim.h"

struct buf;
struct dkim_signers;

/* Every enabled opendkim stanza's dkim_domain stanzas, keys loaded (key
 * files must be mode 0600 or stricter). An empty set when none is
 * configured. NULL on an error (rsa-sha1, no headerlist, a key missing,
 * unreadable or malformed...), with err naming the file and line. */
struct dkim_signers *dkim_signers_new(const struct conf *c, struct conf_error *err);
void dkim_signers_free(struct dkim_signers *s);
size_t dkim_signers_count(const struct dkim_signers *s);

/* The responsible domain of a message: the domain of the Sender: address
 * when there is one, else of the From: address; lower case, into out.
 * -ENOENT when neither has an address, -ENAMETOOLONG. */
int dkim_responsible_domain(const void *msg, size_t len, char *out, size_t n);

/* Sign with the dkim_domain stanza that names the message's responsible
 * domain: appends "DKIM-Signature: ...\r\n" to out and returns 1; 0 when
 * no stanza matches (nothing appended); < 0 with why on failure. now is
 * the wall-clock time in seconds (t=, and x= with lifetime). */
int dkim_signers_sign(const struct dkim_signers *s, const void *msg, size_t len, int64_t now,
                      struct buf *out, char *why, size_t whylen);

/* Whether dkim_signers_sign would sign msg (a stanza names its
 * responsible domain), without signing. */
bool dkim_signers_match(const struct dkim_signers *s, const void *msg, size_t len);
/* Parameters for one signature requested from Lua
 * (msys.validate.opendkim.sign): fields left NULL / negative come from the
 * matching dkim_domain stanza, else the first opendkim stanza. */
struct dkim_sign_request {
  const char *domain;      /* base_domain / signing_domain */
  const char *selector;
  const char *identity;
  const char *header_canon, *body_canon, *digest;
  const char *headerlist;  /* names separated by ':', ',' or spaces */
  const char *keyfile;     /* %{d} %{s} expanded */
  const char *keybuf;      /* PEM, or its base64 body */
  int body_length_limit;   /* -1 = from the configuration */
};
/* Sign msg as the request says; appends the header field to out. 0, or
 * < 0 with why. */
int dkim_signers_sign_request(const struct dkim_signers *s, const struct dkim_sign_request *rq,
                              const void *msg, size_t len, int64_t now, struct buf *out, char *why,
                              size_t whylen);
