/* tls: owns OpenSSL client contexts, sessions and their in-memory BIOs, and
 * the per-(host, port) session resumption cache of each context.
 * Never touches a socket or the ring, never logs; failures come back as
 * -EPROTO with a reason string. Loop-thread only. */
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <pthread.h>

#include "panic.h"

#define TLS_ERR_MAX 200
#define TLS_KEY_MAX 270 /* "host:port" for a 253-byte host name */
/* Handshakes in progress per context (a worker's) at once: each holds
 * ~80 KB of OpenSSL buffers while it runs, so a burst of hundreds of new
 * connections made the kernel map fresh pages for all of them at once
 * (320-connection STARTTLS run: page faults per message 1.26 -> 1.09 in
 * the engine, 0.42 -> 0.30 in the sink, peak RSS 63 -> 56 MB with this
 * bound). Handshakes are CPU-bound locally; on a 100 ms path this still
 * allows ~300 a second per worker. A waiter that is woken but then closed
 * leaves the others to the next handshake's end or their own deadline. */
#define TLS_HANDSHAKES_MAX 32

struct cache_ent {
  char key[TLS_KEY_MAX];
  SSL_SESSION *sess;
  unsigned leading;            /* full handshakes in flight that may bring a session */
  struct tls_waiter *waiters;  /* sessions waiting for one (tls_ctx_wait) */
};

struct tls_ctx {
  SSL_CTX *ssl;
  enum tls_verify verify;
  struct cache_ent *cache;
  unsigned nslots, used;
  /* Handshakes in progress on this context, and sessions waiting for one
   * to end (FIFO) when there are hs_max of them. */
  unsigned hs_running, hs_max;
  struct tls_waiter *hs_head, **hs_tail;
};

struct tls {
  struct tls_ctx *ctx;
  SSL *ssl;
  /* Our BIO (see bio_read/bio_write): OpenSSL reads ciphertext straight
   * from the caller's receive buffer (in/inlen, valid during one feed)
   * and writes into `out`; only bytes OpenSSL left unread are copied. */
  BIO *bio;
  const uint8_t *in;
  size_t inlen;
  struct buf held; /* unread input kept across feeds (rare) */
  struct buf out;  /* ciphertext to send, handed over by tls_take */
  char key[TLS_KEY_MAX];
  bool leading;  /* counted in ent->leading */
  struct cache_ent *ent; /* while leading (an entry with a leader keeps its key) */
  bool in_hs;    /* counted in its context's hs_running */
  bool bad;      /* a TLS-level failure after the handshake: its session is not to be resumed */
  char err[TLS_ERR_MAX];
};

static int ex_index = -1;

/* ---- a BIO without buffers of its own ----
 * BIO_s_mem keeps two growable buffers per session, sized by the largest
 * flight ever seen, and costs a copy each way. This one reads from the
 * buffer the ring filled and writes into a struct buf the conn sends from. */

static int bio_read(BIO *b, char *out, int outl) {
  struct tls *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  size_t n = 0;
  if (buf_avail(&t->held) > 0) {
    n = buf_avail(&t->held) < (size_t)outl ? buf_avail(&t->held) : (size_t)outl;
    memcpy(out, buf_head(&t->held), n);
    buf_consume(&t->held, n);
  } else if (t->inlen > 0) {
    n = t->inlen < (size_t)outl ? t->inlen : (size_t)outl;
    memcpy(out, t->in, n);
    t->in += n;
    t->inlen -= n;
  }
  if (n == 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  return (int)n;
}

static int bio_write(BIO *b, const char *in, int inl) {
  struct tls *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  buf_append(&t->out, in, (size_t)inl);
  return inl;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static pthread_once_t ex_once = PTHREAD_ONCE_INIT;
static void ex_index_init(void) { ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL); }

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "impetus-ring");
  if (m == NULL || BIO_meth_set_read(m, bio_read) != 1 || BIO_meth_set_write(m, bio_write) != 1 ||
      BIO_meth_set_ctrl(m, bio_ctrl) != 1 || BIO_meth_set_create(m, bio_create) != 1)
    util_panic("tls: cannot build the BIO method");
  bio_method = m;
}

static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

/* The cache is 2-way: a key lives in slot fnv1a % n or the next one, so
 * two busy keys that hash alike (e.g. one MX on two ports) do not keep
 * evicting each other's session. */
static struct cache_ent *ent_find(struct tls_ctx *c, const char *key) {
  uint32_t i = fnv1a(key) % c->nslots;
  for (uint32_t k = 0; k < 2; k++) {
    struct cache_ent *e = &c->cache[(i + k) % c->nslots];
    if (e->key[0] && strcmp(e->key, key) == 0)
      return e;
  }
  return NULL;
}

static bool ent_idle(const struct cache_ent *e) { return e->leading == 0 && e->waiters == NULL; }

/* key's entry, or one of its two slots taken over for it (an empty one
 * first, else one whose session only is dropped); NULL when both are
 * busy with another key's handshakes or waiters. */
static struct cache_ent *ent_claim(struct tls_ctx *c, const char *key) {
  struct cache_ent *e = ent_find(c, key);
  if (e != NULL)
    return e;
  uint32_t i = fnv1a(key) % c->nslots;
  struct cache_ent *a = &c->cache[i], *b = &c->cache[(i + 1) % c->nslots];
  if (ent_idle(a) && a->sess == NULL)
    e = a;
  else if (ent_idle(b) && b->sess == NULL)
    e = b;
  else if (ent_idle(a))
    e = a;
  else if (ent_idle(b))
    e = b;
  else
    return NULL;
  if (e->sess != NULL) {
    SSL_SESSION_free(e->sess);
    e->sess = NULL;
    c->used--;
  }
  snprintf(e->key, sizeof e->key, "%s", key);
  return e;
}

/* Call every waiter of e (each is unlinked first; wake may queue it again
 * later, from the loop, never from inside this call's caller). */
static void wake_all(struct cache_ent *e) {
  struct tls_waiter *w;
  while ((w = e->waiters) != NULL) {
    e->waiters = w->next;
    if (w->next)
      w->next->pprev = &e->waiters;
    w->next = NULL;
    w->pprev = NULL;
    w->wake(w);
  }
}

/* t no longer counts as a handshake that may bring a session for its key;
 * when it was the last, its waiters go on (to a full handshake). */
static void release(struct tls *t) {
  if (!t->leading)
    return;
  t->leading = false;
  struct cache_ent *e = t->ent;
  t->ent = NULL;
  if (e->leading > 0 && --e->leading == 0)
    wake_all(e);
}

/* t's handshake is over (done, failed or abandoned): the next session
 * waiting for a handshake slot may start. */
static void hs_done(struct tls *t) {
  if (!t->in_hs)
    return;
  t->in_hs = false;
  struct tls_ctx *c = t->ctx;
  c->hs_running--;
  struct tls_waiter *w = c->hs_head;
  if (w == NULL)
    return;
  tls_waiter_cancel(w);
  w->wake(w);
}

/* New session (TLS 1.3 tickets arrive after the handshake): remember it
 * for the next connection to the same host and port. Returning 1 keeps
 * our reference. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess) {
  struct tls *t = SSL_get_ex_data(ssl, ex_index);
  if (t == NULL || t->key[0] == 0)
    return 0;
  struct tls_ctx *c = t->ctx;
  struct cache_ent *e = ent_claim(c, t->key);
  if (e == NULL) {
    release(t); /* both slots busy for other keys: do not steal them */
    return 0;
  }
  if (e->sess != NULL)
    SSL_SESSION_free(e->sess);
  else
    c->used++;
  e->sess = sess;
  release(t);
  wake_all(e); /* sessions waiting for this one may resume now */
  return 1;
}

static void collect_err(char *out, size_t outlen, const char *what) {
  unsigned long e = ERR_get_error();
  if (e == 0) {
    snprintf(out, outlen, "%s", what);
    return;
  }
  char r[160];
  ERR_error_string_n(e, r, sizeof r);
  const char *reason = ERR_reason_error_string(e);
  snprintf(out, outlen, "%s: %s", what, reason ? reason : r);
  ERR_clear_error();
}

static int proto_version(const char *s) {
  /* the lowest version named in a ':' ',' or ' ' separated list */
  static const struct { const char *name; int v; } names[] = {
    {"TLSv1.3", TLS1_3_VERSION}, {"TLSv1.2", TLS1_2_VERSION},
    {"TLSv1.1", TLS1_1_VERSION}, {"TLSv1", TLS1_VERSION},
  };
  int lowest = 0;
  while (*s) {
    size_t n = strcspn(s, ":, ");
    int found = -1;
    for (unsigned i = 0; i < UTIL_ARRAY_LEN(names); i++)
      if (strlen(names[i].name) == n && strncasecmp(s, names[i].name, n) == 0)
        found = names[i].v;
    if (n > 0 && found < 0)
      return -1;
    if (found > 0 && (lowest == 0 || found < lowest))
      lowest = found;
    s += n;
    s += strspn(s, ":, ");
  }
  return lowest ? lowest : -1;
}

/* The client certificate chain and key from PEM in memory (what
 * SSL_CTX_use_certificate_chain_file and _PrivateKey_file do with files).
 * 0, or -1 with a reason in err. */
static int use_pem(SSL_CTX *s, const struct tls_params *p, char *err, size_t errlen) {
  BIO *b = BIO_new_mem_buf(p->cert_pem, (int)p->cert_pem_len);
  X509 *x = b ? PEM_read_bio_X509_AUX(b, NULL, NULL, NULL) : NULL;
  int ok = x != NULL && SSL_CTX_use_certificate(s, x) == 1;
  X509_free(x);
  if (ok) {
    SSL_CTX_clear_chain_certs(s);
    X509 *ca;
    while (ok && (ca = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
      if (SSL_CTX_add0_chain_cert(s, ca) != 1) { /* takes ca on success */
        X509_free(ca);
        ok = 0;
      }
    ERR_clear_error(); /* the end of the chain reads as an error */
  }
  BIO_free(b);
  if (!ok) {
    collect_err(err, errlen, "TLS_Certificate");
    return -1;
  }
  const char *kp = p->key_pem ? p->key_pem : p->cert_pem;
  size_t kl = p->key_pem ? p->key_pem_len : p->cert_pem_len;
  b = BIO_new_mem_buf(kp, (int)kl);
  EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  ok = k != NULL && SSL_CTX_use_PrivateKey(s, k) == 1 && SSL_CTX_check_private_key(s) == 1;
  EVP_PKEY_free(k);
  if (!ok) {
    collect_err(err, errlen, "TLS_Key");
    return -1;
  }
  return 0;
}

struct tls_ctx *tls_ctx_new(const struct tls_params *p, char *err, size_t errlen) {
  pthread_once(&ex_once, ex_index_init); /* workers build their contexts concurrently */
  SSL_CTX *s = SSL_CTX_new(TLS_client_method());
  if (s == NULL) {
    collect_err(err, errlen, "SSL_CTX_new");
    return NULL;
  }
  int minv = TLS1_2_VERSION;
  if (p->protocols != NULL && p->protocols[0]) {
    minv = proto_version(p->protocols);
    if (minv < 0) {
      snprintf(err, errlen, "TLS_Protocols: unknown protocol in \"%s\"", p->protocols);
      goto fail;
    }
  }
  SSL_CTX_set_min_proto_version(s, minv);
  SSL_CTX_set_options(s, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  /* Release the 16 KB read/write buffers between records: most sessions
   * sit idle waiting for a reply, and resident memory per session is
   * what bounds the number of sessions a worker can hold. */
  SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
  if (p->ciphers != NULL && p->ciphers[0] && SSL_CTX_set_cipher_list(s, p->ciphers) != 1) {
    collect_err(err, errlen, "TLS_Ciphers");
    goto fail;
  }
  if (p->verify != TLS_VERIFY_NO) {
    int ok = p->ca_file != NULL && p->ca_file[0]
                 ? SSL_CTX_load_verify_locations(s, p->ca_file, NULL)
                 : SSL_CTX_set_default_verify_paths(s);
    if (ok != 1) {
      collect_err(err, errlen, "TLS_Ca");
      goto fail;
    }
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
  } else {
    SSL_CTX_set_verify(s, SSL_VERIFY_NONE, NULL);
  }
  if (p->cert_pem != NULL) {
    if (use_pem(s, p, err, errlen) < 0)
      goto fail;
  } else if (p->cert_file != NULL && p->cert_file[0]) {
    if (SSL_CTX_use_certificate_chain_file(s, p->cert_file) != 1) {
      collect_err(err, errlen, "TLS_Certificate");
      goto fail;
    }
    const char *key = p->key_file && p->key_file[0] ? p->key_file : p->cert_file;
    if (SSL_CTX_use_PrivateKey_file(s, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(s) != 1) {
      collect_err(err, errlen, "TLS_Key");
      goto fail;
    }
  }
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(s, on_new_session);

  struct tls_ctx *c = util_xcalloc(1, sizeof *c);
  c->ssl = s;
  c->verify = p->verify;
  c->nslots = p->cache_slots ? p->cache_slots : 1024;
  c->hs_max = p->max_handshakes ? p->max_handshakes : TLS_HANDSHAKES_MAX;
  c->hs_tail = &c->hs_head;
  c->cache = util_xcalloc(c->nslots, sizeof *c->cache);
  return c;
fail:
  SSL_CTX_free(s);
  return NULL;
}

void tls_ctx_free(struct tls_ctx *c) {
  if (c == NULL)
    return;
  for (unsigned i = 0; i < c->nslots; i++)
    if (c->cache[i].sess)
      SSL_SESSION_free(c->cache[i].sess);
  free(c->cache);
  SSL_CTX_free(c->ssl);
  free(c);
}

unsigned tls_ctx_cached(const struct tls_ctx *c) { return c->used; }
unsigned tls_ctx_handshakes(const struct tls_ctx *c) { return c->hs_running; }

struct tls *tls_new(struct tls_ctx *c, const char *host, uint16_t port, char *err, size_t errlen) {
  struct tls *t = util_xcalloc(1, sizeof *t);
  t->ctx = c;
  t->ssl = SSL_new(c->ssl);
  pthread_once(&bio_once, bio_method_init);
  t->bio = BIO_new(bio_method);
  if (t->ssl == NULL || t->bio == NULL) {
    collect_err(err, errlen, "SSL_new");
    BIO_free(t->bio);
    SSL_free(t->ssl);
    free(t);
    return NULL;
  }
  BIO_set_data(t->bio, t);
  SSL_set_bio(t->ssl, t->bio, t->bio); /* same BIO both ways: SSL takes our one reference */
  SSL_set_ex_data(t->ssl, ex_index, t);
  SSL_set_connect_state(t->ssl);
  t->in_hs = true;
  c->hs_running++;
  if (host != NULL && host[0]) {
    bool literal = strspn(host, "0123456789.") == strlen(host) || strchr(host, ':') != NULL;
    if (!literal)
      /* SSL_set_tlsext_host_name without its const-dropping cast */
      SSL_ctrl(t->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               (void *)(uintptr_t)host);
    if (c->verify == TLS_VERIFY_HOST) {
      int ok = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host)
                       : SSL_set1_host(t->ssl, host);
      if (ok != 1) {
        collect_err(err, errlen, "TLS host name");
        tls_free(t);
        return NULL;
      }
    }
    snprintf(t->key, sizeof t->key, "%s:%u", host, port);
    struct cache_ent *e = ent_find(c, t->key);
    if (e != NULL && e->sess != NULL && SSL_SESSION_is_resumable(e->sess)) {
      /* The session stays cached for the other connections to this host
       * and port, also in parallel (a TLS 1.3 ticket used more than once:
       * RFC 8446 C.4 "SHOULD NOT" is about linking a client's connections,
       * which between two MTAs' fixed addresses says nothing new); every
       * handshake's new ticket replaces it, so it stays fresh. */
      SSL_SESSION *d = SSL_SESSION_dup(e->sess);
      /* a copy: OpenSSL marks the session a TLS 1.3 connection used as
       * not resumable when its handshake ends (single use, its default) */
      if (d != NULL) {
        SSL_set_session(t->ssl, d);
        SSL_SESSION_free(d); /* SSL_set_session took its own reference */
      }
    } else if ((e = ent_claim(c, t->key)) != NULL) {
      /* a full handshake: others to this key may wait for its session */
      if (e->sess != NULL) { /* expired */
        SSL_SESSION_free(e->sess);
        e->sess = NULL;
        c->used--;
      }
      e->leading++;
      t->leading = true;
      t->ent = e;
    }
  } else if (c->verify == TLS_VERIFY_HOST) {
    snprintf(err, errlen, "TLS_Verify host needs a host name");
    tls_free(t);
    return NULL;
  }
  return t;
}

void tls_free(struct tls *t) {
  if (t == NULL)
    return;
  hs_done(t);
  release(t);
  /* SSL_free marks the session of a connection that did not send
   * close_notify as not resumable (TLS <= 1.2's rule), and a session that
   * came with this connection is also the cached one: SMTP servers often
   * just close after 221, so keep that rule for TLS-level failures (bad
   * record, fatal alert) only, and then forget the host's session. */
  if (!t->bad) {
    SSL_set_shutdown(t->ssl, SSL_get_shutdown(t->ssl) | SSL_SENT_SHUTDOWN);
  } else if (t->key[0]) {
    struct cache_ent *e = ent_find(t->ctx, t->key);
    if (e != NULL && e->sess != NULL) {
      SSL_SESSION_free(e->sess);
      e->sess = NULL;
      t->ctx->used--;
    }
  }
  SSL_free(t->ssl); /* frees the BIO too */
  buf_done(&t->held, 0);
  buf_done(&t->out, 0);
  free(t);
}

int tls_feed(struct tls *t, const void *p, size_t n) {
  tls_feed_end(t);
  t->in = p;
  t->inlen = n;
  return 0;
}

void tls_feed_end(struct tls *t) {
  if (t->inlen > 0) /* OpenSSL stopped early: keep the rest for later */
    buf_append(&t->held, t->in, t->inlen);
  t->in = NULL;
  t->inlen = 0;
}

size_t tls_take(struct tls *t, struct buf *out) {
  size_t n = buf_avail(&t->out);
  if (n == 0)
    return 0;
  if (buf_avail(out) == 0) { /* hand the buffer over instead of copying */
    struct buf tmp = *out;
    *out = t->out;
    t->out = tmp;
    buf_reset(&t->out);
    if (t->out.cap > 16384)
      buf_done(&t->out, 0);
  } else {
    buf_append(out, buf_head(&t->out), n);
    buf_reset(&t->out);
  }
  return n;
}

/* Turn an SSL_ERROR_SSL / SYSCALL into a reason string. */
static void fail_text(struct tls *t, const char *what) {
  long vr = SSL_get_verify_result(t->ssl);
  if (t->ctx->verify != TLS_VERIFY_NO && vr != X509_V_OK) {
    snprintf(t->err, sizeof t->err, "%s: certificate verify failed: %s", what,
             X509_verify_cert_error_string(vr));
    ERR_clear_error();
    return;
  }
  collect_err(t->err, sizeof t->err, what);
}

int tls_handshake(struct tls *t) {
  int rc = SSL_do_handshake(t->ssl);
  if (rc == 1) {
    hs_done(t);
    return 1;
  }
  int e = SSL_get_error(t->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
    return 0;
  fail_text(t, "TLS handshake");
  hs_done(t);
  release(t);
  return -EPROTO;
}

bool tls_ctx_wait(struct tls_ctx *c, const char *host, uint16_t port, struct tls_waiter *w) {
  if (host != NULL && host[0]) {
    char key[TLS_KEY_MAX];
    snprintf(key, sizeof key, "%s:%u", host, port);
    struct cache_ent *e = ent_find(c, key);
    if (e != NULL && e->leading > 0 &&
        !(e->sess != NULL && SSL_SESSION_is_resumable(e->sess))) {
      w->tail = NULL;
      w->next = e->waiters;
      if (w->next)
        w->next->pprev = &w->next;
      w->pprev = &e->waiters;
      e->waiters = w;
      return true;
    }
  }
  if (c->hs_running < c->hs_max)
    return false;
  w->tail = &c->hs_tail; /* at the end of the queue for a handshake slot */
  w->next = NULL;
  w->pprev = c->hs_tail;
  *c->hs_tail = w;
  c->hs_tail = &w->next;
  return true;
}

void tls_waiter_cancel(struct tls_waiter *w) {
  if (w->pprev == NULL)
    return;
  *w->pprev = w->next;
  if (w->next)
    w->next->pprev = w->pprev;
  else if (w->tail != NULL)
    *w->tail = w->pprev;
  w->next = NULL;
  w->pprev = NULL;
  w->tail = NULL;
}

ssize_t tls_read(struct tls *t, void *out, size_t n) {
  int rc = SSL_read(t->ssl, out, (int)(n > INT32_MAX ? INT32_MAX : n));
  if (rc > 0) {
    /* A server sends its session tickets before its first reply: none
     * came, so none will (waiters go on with full handshakes). */
    release(t);
    return rc;
  }
  int e = SSL_get_error(t->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
    return 0;
  if (e == SSL_ERROR_ZERO_RETURN)
    return -EPIPE;
  fail_text(t, "TLS read");
  t->bad = true;
  return -EPROTO;
}

bool tls_input_left(const struct tls *t) {
  return t->inlen > 0 || buf_avail(&t->held) > 0 || SSL_has_pending(t->ssl) == 1;
}

ssize_t tls_write(struct tls *t, const void *p, size_t n) {
  if (n == 0)
    return 0;
  int rc = SSL_write(t->ssl, p, (int)n);
  if (rc > 0)
    return rc;
  fail_text(t, "TLS write");
  t->bad = true;
  return -EPROTO;
}

void tls_shutdown(struct tls *t) {
  (void)SSL_shutdown(t->ssl);
  ERR_clear_error();
}

const char *tls_error(const struct tls *t) { return t->err[0] ? t->err : "TLS error"; }

bool tls_resumed(const struct tls *t) { return SSL_session_reused(t->ssl) == 1; }

const char *tls_describe(const struct tls *t, char *out, size_t outlen) {
  snprintf(out, outlen, "%s:%s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
  return out;
}
