/* signing.c owns the engine's DKIM signers: the set built from the running
 * configuration (with its keys), swapped on reload, the spool's signing
 * callbacks and the signer pool (DKIM_Signer_Threads threads). Key
 * operations run on the pool, never on a delivery ring's thread (no
 * session stalls) nor on the ingest thread (which goes on taking other
 * mail meanwhile: on_sign_async). Never logs key material; a failure is
 * one paniclog line and the message goes on unsigned.
 * Threads: init/reload/done on the main thread, signing_on_sign,
 * signing_on_sign_prep and signing_on_sign_async on the ingest thread,
 * sign_one on the pool; the current set is taken under a mutex with a
 * reference. */
#include "signing.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* Test hook (IMPETUS_TEST_DKIM_GATE=FILE in the environment): every
 * signature waits until FILE exists (at most a minute), so a test can
 * hold signing and see what goes on meanwhile. Read once at start. */
static const char *test_gate;

static void test_gate_wait(void)
{
  for (int i = 0; test_gate && i < 6000 && access(test_gate, F_OK) != 0; i++)
    usleep(10000);
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t want_threads; /* DKIM_Signer_Threads of the first configuration (0 = per core) */
static pthread_mutex_t logmu = PTHREAD_MUTEX_INITIALIZER; /* logw from the pool */
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

/* Make c's signers the current ones (the old ones go when their last
 * user is done). */
static int install(struct conf *c, struct conf_error *err)
{
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

int signing_init(struct conf *c, struct logs_writer *log, struct conf_error *err)
{
  logw = log;
  test_gate = secure_getenv("IMPETUS_TEST_DKIM_GATE");
  want_threads = conf_int(conf_global(c), CONF_DKIM_SIGNER_THREADS);
  return install(c, err);
}

int signing_reload(struct conf *c, struct conf_error *err)
{
  return install(c, err); /* the pool keeps its size (DKIM_Signer_Threads is RESTART) */
}

size_t signing_domains(void)
{
  struct set *s = set_get();
  size_t n = s ? dkim_signers_count(s->signers) : 0;
  set_unref(s);
  return n;
}

/* Signatures made from Lua in the ingest hooks, by message (id and
 * address), until the message is signed: with on_sign_batch a whole
 * read-ahead group runs its hooks before any of it is signed. Ingest
 * thread only. An entry of a message the hooks then rejected is dropped
 * when the list is cleared (it never matches another message: ids are
 * unique). */
struct lsig {
  const struct spool_msg *msg;
  uint64_t id;
  struct buf b;
};
static _Thread_local struct lsig *lsigs;
static _Thread_local size_t nlsigs, caplsigs;

static struct lsig *lsig_find(const struct spool_msg *m)
{
  for (size_t i = 0; i < nlsigs; i++)
    if (lsigs[i].msg == m && lsigs[i].id == m->id)
      return &lsigs[i];
  return NULL;
}

/* Move the Lua signatures of m into hdr (and forget them). */
static void lsig_take(const struct spool_msg *m, struct buf *hdr)
{
  struct lsig *e = nlsigs ? lsig_find(m) : NULL;
  if (!e)
    return;
  buf_append(hdr, e->b.data, e->b.len);
  buf_done(&e->b, 0);
  *e = lsigs[--nlsigs];
  if (!nlsigs) {
    free(lsigs);
    lsigs = NULL;
    caplsigs = 0;
  }
}

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
  struct lsig *e = lsig_find(msg);
  if (!e) {
    if (nlsigs >= 4096) { /* only rejected messages' leftovers get this far */
      for (size_t i = 0; i < nlsigs; i++)
        buf_done(&lsigs[i].b, 0);
      nlsigs = 0;
    }
    if (nlsigs == caplsigs) {
      caplsigs = caplsigs ? caplsigs * 2 : 16;
      lsigs = util_xrealloc(lsigs, caplsigs * sizeof(*lsigs));
    }
    e = &lsigs[nlsigs++];
    *e = (struct lsig){msg, msg->id, {0}};
  }
  struct set *s = set_get();
  size_t before = e->b.len;
  int r = dkim_signers_sign_request(s ? s->signers : NULL, &rq, body, len, (int64_t)time(NULL),
                                    &e->b, why, whylen);
  if (r < 0)
    e->b.len = before;
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

/* The configured signature of one message (any thread); wanted: the
 * caller already knows that opendkim_sign is true for it (prep). */
static void sign_one(struct set *s, struct spool_msg *msg, const uint8_t *body, size_t len,
                     struct buf *hdr, bool wanted)
{
  if (!s || !dkim_signers_count(s->signers) || (!wanted && !sign_wanted(s->conf, msg)))
    return;
  char why[300];
  size_t before = hdr->len;
  int r = dkim_signers_sign(s->signers, body, len, (int64_t)time(NULL), hdr, why, sizeof(why));
  if (r < 0) {
    hdr->len = before;
    if (logw) { /* the ingest thread's writer: the pool's failures are counted there too */
      pthread_mutex_lock(&logmu);
      logs_panic(logw, clock_wall_ms(), "dkim", "message not signed: %s", why);
      logs_writer_flush(logw);
      pthread_mutex_unlock(&logmu);
    }
  }
}

void signing_on_sign(void *arg, struct spool_msg *msg, const uint8_t *body, size_t len,
                     struct buf *hdr)
{
  (void)arg;
  lsig_take(msg, hdr); /* what Lua signed, below the configured signature */
  struct set *s = set_get();
  sign_one(s, msg, body, len, hdr, false);
  set_unref(s);
}

/* ---- the signer pool: groups of messages signed on every core ---- */

/* A group handed over by the spool: its jobs are taken one at a time by
 * whichever signer is free; the one that finishes the last tells the
 * spool. */
struct pgroup {
  struct pgroup *next;
  struct set *set;
  struct spool_sign_job *jobs;
  size_t n, taken, left; /* under pool.mu */
  struct spool_sign_group *g;
};

static struct {
  pthread_mutex_t mu;
  pthread_cond_t work;
  pthread_t *t;
  unsigned n;
  bool stop;
  struct pgroup *head, *tail; /* groups with jobs not yet taken, oldest first */
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER};

static void *pool_main(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    while (!pool.stop && !pool.head)
      pthread_cond_wait(&pool.work, &pool.mu);
    if (!pool.head) /* stopping, and nothing left */
      break;
    struct pgroup *pg = pool.head;
    struct spool_sign_job *j = &pg->jobs[pg->taken++];
    if (pg->taken == pg->n) { /* every job taken: off the queue */
      pool.head = pg->next;
      if (!pool.head)
        pool.tail = NULL;
    }
    pthread_mutex_unlock(&pool.mu);
    test_gate_wait();
    sign_one(pg->set, j->msg, j->body, j->len, j->hdr, true);
    pthread_mutex_lock(&pool.mu);
    if (--pg->left == 0) {
      pthread_mutex_unlock(&pool.mu);
      set_unref(pg->set);
      spool_sign_done(pg->g);
      free(pg);
      pthread_mutex_lock(&pool.mu);
    }
  }
  pthread_mutex_unlock(&pool.mu);
  return NULL;
}

/* DKIM_Signer_Threads threads, by default one per core: the key
 * operations use every core while the ingest thread goes on taking
 * messages and the delivery rings (which never sign) take their turns. */
static void pool_start(void)
{
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int64_t w = want_threads > 0 ? want_threads : cores;
  unsigned n = w > 0 ? (unsigned)(w > 256 ? 256 : w) : 1;
  pool.t = util_xcalloc(n ? n : 1, sizeof(*pool.t));
  for (unsigned i = 0; i < n; i++) {
    if (pthread_create(&pool.t[i], NULL, pool_main, NULL) != 0)
      break;
    char name[16];
    snprintf(name, sizeof(name), "imp-dkim-%u", i);
    pthread_setname_np(pool.t[i], name);
    pool.n++;
  }
}

bool signing_on_sign_prep(void *arg, struct spool_msg *msg, const uint8_t *body, size_t len,
                          struct buf *hdr)
{
  (void)arg;
  lsig_take(msg, hdr); /* what Lua signed, below the configured signature */
  struct set *s = set_get();
  bool want = s && dkim_signers_count(s->signers) && sign_wanted(s->conf, msg) &&
              dkim_signers_match(s->signers, body, len);
  set_unref(s);
  return want;
}

void signing_on_sign_async(void *arg, struct spool_sign_job *jobs, size_t n,
                           struct spool_sign_group *g)
{
  (void)arg;
  struct set *s = set_get();
  if (!pool.t)
    pool_start();
  if (!pool.n || !n) { /* no thread could be started: here, then */
    for (size_t i = 0; i < n; i++) {
      test_gate_wait();
      sign_one(s, jobs[i].msg, jobs[i].body, jobs[i].len, jobs[i].hdr, true);
    }
    set_unref(s);
    spool_sign_done(g);
    return;
  }
  struct pgroup *pg = util_xcalloc(1, sizeof(*pg));
  *pg = (struct pgroup){.set = s, .jobs = jobs, .n = n, .left = n, .g = g};
  pthread_mutex_lock(&pool.mu);
  if (pool.tail)
    pool.tail->next = pg;
  else
    pool.head = pg;
  pool.tail = pg;
  if (n > 1)
    pthread_cond_broadcast(&pool.work);
  else
    pthread_cond_signal(&pool.work);
  pthread_mutex_unlock(&pool.mu);
}

/* Stop the signers once every group handed over is signed. */
static void pool_stop(void)
{
  pthread_mutex_lock(&pool.mu);
  pool.stop = true;
  pthread_cond_broadcast(&pool.work);
  pthread_mutex_unlock(&pool.mu);
  for (unsigned i = 0; i < pool.n; i++)
    pthread_join(pool.t[i], NULL);
  free(pool.t);
  pool.t = NULL;
  pool.n = 0;
  pool.stop = false;
}

void signing_done(void)
{
  if (pool.t)
    pool_stop();
  pthread_mutex_lock(&mu);
  struct set *old = cur;
  cur = NULL;
  pthread_mutex_unlock(&mu);
  set_unref(old);
}
