/* signing.c owns the engine's DKIM signers: the set built from the running
 * configuration (with its keys), swapped on reload, and the spool's
 * signing callback. Signing runs on the ingest thread, never on a
 * delivery ring's thread, so a private-key operation never stalls a
 * session. Never logs key material; a failure is one paniclog line and the
 * message goes on unsigned.
 * Threads: init/reload/done on the main thread, signing_on_sign on the
 * ingest thread; the current set is taken under a mutex with a reference. */
#include "signing.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "clock.h"
#include "conf.h"
#include "dkim_conf.h"
#include "logs.h"
#include "panic.h"
#include "spool.h"

struct set {
  int refs; /* under mu */
  struct conf *conf;
  struct dkim_signers *signers;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct set *cur;
static struct logs_writer *logw;

static void set_unref(struct set *s)
{
  if (!s)
    return;
  pthread_mutex_lock(&mu);
  bool last = --s->refs == 0;
  pthread_mutex_unlock(&mu);
  if (!last)
    return;
  dkim_signers_free(s->signers);
  conf_unref(s->conf);
  free(s);
}

static struct set *set_get(void)
{
  pthread_mutex_lock(&mu);
  struct set *s = cur;
  if (s)
    s->refs++;
  pthread_mutex_unlock(&mu);
  return s;
}

static struct set *build(struct conf *c, struct conf_error *err)
{
  struct dkim_signers *ds = dkim_signers_new(c, err);
  if (!ds)
    return NULL;
  struct set *s = util_xcalloc(1, sizeof(*s));
  s->refs = 1;
  s->conf = conf_ref(c);
  s->signers = ds;
  return s;
}

int signing_init(struct conf *c, struct logs_writer *log, struct conf_error *err)
{
  logw = log;
  struct set *s = build(c, err);
  if (!s)
    return -1;
  pthread_mutex_lock(&mu);
  struct set *old = cur;
  cur = s;
  pthread_mutex_unlock(&mu);
  set_unref(old);
  return 0;
}

int signing_reload(struct conf *c, struct conf_error *err)
{
  return signing_init(c, logw, err);
}

void signing_done(void)
{
  pthread_mutex_lock(&mu);
  struct set *old = cur;
  cur = NULL;
  pthread_mutex_unlock(&mu);
  set_unref(old);
}

size_t signing_domains(void)
{
  struct set *s = set_get();
  size_t n = s ? dkim_signers_count(s->signers) : 0;
  set_unref(s);
  return n;
}

/* Signatures made from Lua for the message being ingested (one at a time
 * on the ingest thread), stored by signing_on_sign. */
static _Thread_local struct {
  const struct spool_msg *owner;
  struct buf b;
} pend;

int signing_lua(const struct spool_msg *msg, const uint8_t *body, size_t len,
                const char *const *kv, size_t npairs, char *why, size_t whylen)
{
  struct dkim_sign_request rq = {.body_length_limit = -1};
  for (size_t i = 0; i < npairs; i++) {
    const char *k = kv[2 * i], *v = kv[2 * i + 1];
    if (!strcmp(k, "base_domain") || !strcmp(k, "signing_domain"))
      rq.domain = v;
    else if (!strcmp(k, "selector"))
      rq.selector = v;
    else if (!strcmp(k, "identity"))
      rq.identity = v;
    else if (!strcmp(k, "header_canon"))
      rq.header_canon = v;
    else if (!strcmp(k, "body_canon"))
      rq.body_canon = v;
    else if (!strcmp(k, "digest"))
      rq.digest = v;
    else if (!strcmp(k, "headerlist"))
      rq.headerlist = v;
    else if (!strcmp(k, "keyfile"))
      rq.keyfile = v;
    else if (!strcmp(k, "keybuf"))
      rq.keybuf = v;
    else if (!strcmp(k, "body_length_limit"))
      rq.body_length_limit = atoi(v);
    else {
      snprintf(why, whylen, "unknown option '%s'", k);
      return -EINVAL;
    }
  }
  if (pend.owner != msg) { /* left by a message the hooks then rejected */
    pend.owner = msg;
    buf_done(&pend.b, 0);
  }
  struct set *s = set_get();
  size_t before = pend.b.len;
  int r = dkim_signers_sign_request(s ? s->signers : NULL, &rq, body, len, (int64_t)time(NULL),
                                    &pend.b, why, whylen);
  if (r < 0)
    pend.b.len = before;
  set_unref(s);
  return r;
}

/* opendkim_sign for the message: its binding and its first recipient's
 * domain (a message is signed once, whatever its recipient domains). */
static bool sign_wanted(struct conf *c, const struct spool_msg *m)
{
  const char *dom = NULL;
  if (m->nrcpt) {
    const char *at = strrchr(m->rcpt[0], '@');
    dom = at ? at + 1 : NULL;
  }
  const struct conf_view *v = conf_view_get(c, m->binding, dom);
  if (!v)
    v = conf_view_get(c, NULL, dom);
  return v ? conf_bool(v, CONF_OPENDKIM_SIGN) : false;
}

void signing_on_sign(void *arg, struct spool_msg *msg, const uint8_t *body, size_t len,
                     struct buf *hdr)
{
  (void)arg;
  if (pend.owner == msg && pend.b.len) /* what Lua signed, below the configured signature */
    buf_append(hdr, pend.b.data, pend.b.len);
  pend.owner = NULL;
  buf_done(&pend.b, 0); /* rare: not worth keeping per thread */
  struct set *s = set_get();
  if (!s || !dkim_signers_count(s->signers) || !sign_wanted(s->conf, msg)) {
    set_unref(s);
    return;
  }
  char why[300];
  size_t before = hdr->len;
  int r = dkim_signers_sign(s->signers, body, len, (int64_t)time(NULL), hdr, why, sizeof(why));
  if (r < 0) {
    hdr->len = before;
    if (logw) {
      logs_panic(logw, clock_wall_ms(), "dkim", "message not signed: %s", why);
      logs_writer_flush(logw);
    }
  }
  set_unref(s);
}
