/* dkim_key.c owns DKIM private keys: loading (PEM file, PEM or bare
 * base64 in memory, raw Ed25519 seed), the raw key operation through
 * OpenSSL EVP, the key cache and key-path expansion.
 *
 * A loaded key is immutable and reference-counted; it may sign on any
 * number of threads at once (OpenSSL 3 keys are safe to share read-only;
 * each operation has its own context). Its only mutable part is a free
 * list of prepared signing contexts, under its own mutex: a signature
 * takes one, signs, puts it back, so no signature pays for a context's
 * set-up (an algorithm fetch through OpenSSL's locked method store). The
 * cache takes a mutex per lookup.
 * Never logs, never puts key bytes in an error text; buffers that held key
 * text are wiped before they are freed. */
#include "dkim.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "base64.h"
#include "buf.h"
#include "panic.h"

#define KEY_FILE_MAX (64u << 10) /* bytes read from a key file */

/* A prepared signing context: RSA's EVP_PKEY_CTX after sign_init with
 * PKCS#1 v1.5 and SHA-256; Ed25519's EVP_MD_CTX after DigestSignInit. */
struct kctx {
  struct kctx *next;
  EVP_PKEY_CTX *pc;
  EVP_MD_CTX *mc;
};

struct kpool {
  pthread_mutex_t mu; /* free */
  struct kctx *free;  /* contexts not in use: at most one per signing thread */
};

struct dkim_key {
  atomic_int refs;
  enum dkim_alg alg;
  unsigned bits;
  EVP_PKEY *pkey;
  struct kpool *pool; /* the mutable part of a key that is otherwise read-only */
};

static void seterr(char *why, size_t n, const char *msg)
{
  if (why && n)
    snprintf(why, n, "%s", msg);
}

/* Encrypted keys are refused, never prompted for. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
  (void)buf, (void)size, (void)rwflag, (void)u;
  return 0;
}

static struct dkim_key *wrap(EVP_PKEY *pk, char *why, size_t whylen)
{
  enum dkim_alg alg;
  int id = EVP_PKEY_get_base_id(pk);
  if (id == EVP_PKEY_RSA) {
    alg = DKIM_RSA_SHA256;
  } else if (id == EVP_PKEY_ED25519) {
    alg = DKIM_ED25519_SHA256;
  } else {
    seterr(why, whylen, "not an RSA or Ed25519 private key");
    EVP_PKEY_free(pk);
    return NULL;
  }
  int bits = EVP_PKEY_get_bits(pk);
  if (alg == DKIM_RSA_SHA256 && bits < DKIM_RSA_MIN_BITS) {
    if (why && whylen)
      snprintf(why, whylen, "RSA key of %d bits: at least %d needed (RFC 8301)", bits,
               DKIM_RSA_MIN_BITS);
    EVP_PKEY_free(pk);
    return NULL;
  }
  struct dkim_key *k = util_xcalloc(1, sizeof(*k));
  atomic_init(&k->refs, 1);
  k->alg = alg;
  k->bits = bits > 0 ? (unsigned)bits : 0;
  k->pkey = pk;
  k->pool = util_xcalloc(1, sizeof(*k->pool));
  pthread_mutex_init(&k->pool->mu, NULL);
  return k;
}

struct dkim_key *dkim_key_load_mem(const char *text, size_t n, char *why, size_t whylen)
{
  EVP_PKEY *pk = NULL;
  if (memmem(text, n, "-----BEGIN", 10)) {
    BIO *bio = BIO_new_mem_buf(text, (int)n);
    if (bio) {
      pk = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
      BIO_free(bio);
    }
    if (!pk) {
      ERR_clear_error();
      seterr(why, whylen, "malformed: no PEM private key could be read");
      return NULL;
    }
    return wrap(pk, why, whylen);
  }
  /* Bare base64 of the DER key, white space allowed (Lua keybuf). */
  char *b64 = util_xmalloc(n + 1);
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r' && text[i] != '\n')
      b64[m++] = text[i];
  uint8_t *der = util_xmalloc(m / 4 * 3 + 3);
  long dl = base64_decode(b64, m, der);
  util_wipe(b64, n + 1);
  free(b64);
  if (dl > 0) {
    const unsigned char *q = der;
    pk = d2i_AutoPrivateKey(NULL, &q, dl);
  }
  util_wipe(der, m / 4 * 3 + 3);
  free(der);
  if (!pk) {
    ERR_clear_error();
    seterr(why, whylen, "malformed: neither PEM nor base64 of a DER private key");
    return NULL;
  }
  return wrap(pk, why, whylen);
}

struct dkim_key *dkim_key_load_file(const char *path, bool strict_mode, char *why, size_t whylen)
{
  char e[256];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(e, sizeof(e), "cannot open: %s", strerror(errno));
    seterr(why, whylen, e);
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    seterr(why, whylen, "not a regular file");
    return NULL;
  }
  if (strict_mode && (st.st_mode & 0044)) {
    close(fd);
    snprintf(e, sizeof(e), "readable by group or others (mode %04o): chmod 600 it",
             (unsigned)(st.st_mode & 07777));
    seterr(why, whylen, e);
    return NULL;
  }
  if (st.st_size <= 0 || st.st_size > (off_t)KEY_FILE_MAX) {
    close(fd);
    seterr(why, whylen, st.st_size <= 0 ? "malformed: empty file" : "malformed: larger than 64 KiB");
    return NULL;
  }
  size_t n = (size_t)st.st_size;
  char *text = util_xmalloc(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, text + got, n - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  int rerr = errno;
  close(fd);
  struct dkim_key *k = NULL;
  if (got < n) {
    snprintf(e, sizeof(e), "cannot read: %s", got ? "short read" : strerror(rerr));
    seterr(why, whylen, e);
  } else if (!memmem(text, n, "-----BEGIN", 10)) {
    seterr(why, whylen, "malformed: not a PEM private key (no BEGIN line)");
  } else {
    k = dkim_key_load_mem(text, n, why, whylen);
  }
  util_wipe(text, n);
  free(text);
  return k;
}

struct dkim_key *dkim_key_ed25519_seed(const uint8_t seed[32])
{
  EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
  if (!pk) {
    ERR_clear_error();
    return NULL;
  }
  return wrap(pk, NULL, 0);
}

struct dkim_key *dkim_key_ref(struct dkim_key *k)
{
  if (k)
    atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
  return k;
}

void dkim_key_unref(struct dkim_key *k)
{
  if (!k || atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1)
    return;
  while (k->pool->free) {
    struct kctx *c = k->pool->free;
    k->pool->free = c->next;
    EVP_PKEY_CTX_free(c->pc);
    EVP_MD_CTX_free(c->mc);
    free(c);
  }
  pthread_mutex_destroy(&k->pool->mu);
  free(k->pool);
  EVP_PKEY_free(k->pkey);
  free(k);
}

enum dkim_alg dkim_key_alg(const struct dkim_key *k) { return k->alg; }
unsigned dkim_key_bits(const struct dkim_key *k) { return k->bits; }

int dkim_key_public_b64(const struct dkim_key *k, struct buf *out)
{
  uint8_t raw[32], *der = NULL;
  const uint8_t *p = raw;
  size_t n = sizeof(raw);
  if (k->alg == DKIM_ED25519_SHA256) {
    if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &n) != 1)
      return -EINVAL;
  } else {
    int l = i2d_PUBKEY(k->pkey, &der);
    if (l <= 0)
      return -EINVAL;
    p = der;
    n = (size_t)l;
  }
  buf_reserve(out, base64_encoded_size(n));
  out->len += base64_encode(p, n, (char *)out->data + out->len);
  OPENSSL_free(der);
  return 0;
}

static EVP_MD *rsa_md; /* SHA-256 for the DigestInfo, fetched once */
static pthread_once_t rsa_md_once = PTHREAD_ONCE_INIT;
static void rsa_md_fetch(void)
{
  rsa_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  if (!rsa_md)
    util_panic("dkim: OpenSSL has no SHA256");
}

/* Set up c for k; false when OpenSSL refuses. */
static bool kctx_prepare(const struct dkim_key *k, struct kctx *c)
{
  if (k->alg == DKIM_ED25519_SHA256) {
    /* RFC 8463: PureEdDSA over the SHA-256 digest. */
    return (c->mc || (c->mc = EVP_MD_CTX_new())) &&
           EVP_DigestSignInit_ex(c->mc, NULL, NULL, NULL, NULL, k->pkey, NULL) == 1;
  }
  /* RSASSA-PKCS1-v1_5 over the digest with the SHA-256 DigestInfo. */
  pthread_once(&rsa_md_once, rsa_md_fetch);
  EVP_PKEY_CTX_free(c->pc);
  c->pc = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL);
  return c->pc && EVP_PKEY_sign_init(c->pc) == 1 &&
         EVP_PKEY_CTX_set_rsa_padding(c->pc, RSA_PKCS1_PADDING) == 1 &&
         EVP_PKEY_CTX_set_signature_md(c->pc, rsa_md) == 1;
}

static bool kctx_sign(const struct dkim_key *k, struct kctx *c, const uint8_t digest[32],
                      uint8_t *sig, size_t *sl)
{
  if (k->alg == DKIM_ED25519_SHA256)
    return EVP_DigestSign(c->mc, sig, sl, digest, 32) == 1;
  return EVP_PKEY_sign(c->pc, sig, sl, digest, 32) == 1;
}

int dkim_key_sign_digest(const struct dkim_key *k, const uint8_t digest[32], uint8_t *sig, size_t cap)
{
  struct kpool *kp = k->pool;
  pthread_mutex_lock(&kp->mu);
  struct kctx *c = kp->free;
  if (c)
    kp->free = c->next;
  pthread_mutex_unlock(&kp->mu);
  bool fresh = !c;
  if (fresh)
    c = util_xcalloc(1, sizeof(*c));
  size_t sl = cap;
  bool ok = (!fresh || kctx_prepare(k, c)) && kctx_sign(k, c, digest, sig, &sl);
  if (!ok && !fresh) {
    /* A context OpenSSL will not sign with twice (a later version's
     * one-shot rule) is prepared again, once. */
    ERR_clear_error();
    sl = cap;
    ok = kctx_prepare(k, c) && kctx_sign(k, c, digest, sig, &sl);
  }
  if (!ok) {
    ERR_clear_error();
    EVP_PKEY_CTX_free(c->pc);
    EVP_MD_CTX_free(c->mc);
    free(c);
    return -EIO;
  }
  pthread_mutex_lock(&kp->mu);
  c->next = kp->free;
  kp->free = c;
  pthread_mutex_unlock(&kp->mu);
  return (int)sl;
}

/* ---- %{d} / %{s} ---- */

int dkim_path_expand(const char *tmpl, const char *domain, const char *selector, char *out, size_t n)
{
  size_t w = 0;
  for (const char *p = tmpl; *p;) {
    const char *add = p;
    size_t al = 1;
    if (p[0] == '%' && p[1] == '{' && p[2] && p[3] == '}') {
      if (p[2] == 'd')
        add = domain ? domain : "";
      else if (p[2] == 's')
        add = selector ? selector : "";
      else
        return -EINVAL;
      al = strlen(add);
      p += 4;
    } else {
      p++;
    }
    if (w + al >= n)
      return -ENAMETOOLONG;
    memcpy(out + w, add, al);
    w += al;
  }
  if (w >= n)
    return -ENAMETOOLONG;
  out[w] = 0;
  return 0;
}

/* ---- the cache ---- */

struct kc_ent {
  struct kc_ent *next;
  char *path;
  struct dkim_key *key;
  uint64_t used;
};

struct dkim_keycache {
  pthread_mutex_t mu;
  struct kc_ent **tab;
  size_t nb, n, cap;
  uint64_t tick;
  bool strict;
};

static uint64_t fnv(const char *s)
{
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

struct dkim_keycache *dkim_keycache_new(size_t cap, bool strict_mode)
{
  struct dkim_keycache *kc = util_xcalloc(1, sizeof(*kc));
  pthread_mutex_init(&kc->mu, NULL);
  kc->cap = cap ? cap : 1;
  kc->nb = 16;
  while (kc->nb < kc->cap * 2 && kc->nb < (1u << 20))
    kc->nb *= 2;
  kc->tab = util_xcalloc(kc->nb, sizeof(*kc->tab));
  kc->strict = strict_mode;
  return kc;
}

void dkim_keycache_free(struct dkim_keycache *kc)
{
  if (!kc)
    return;
  for (size_t i = 0; i < kc->nb; i++) {
    for (struct kc_ent *e = kc->tab[i], *nx; e; e = nx) {
      nx = e->next;
      dkim_key_unref(e->key);
      free(e->path);
      free(e);
    }
  }
  free(kc->tab);
  pthread_mutex_destroy(&kc->mu);
  free(kc);
}

static void evict_lru(struct dkim_keycache *kc)
{
  struct kc_ent **best = NULL;
  for (size_t i = 0; i < kc->nb; i++)
    for (struct kc_ent **pp = &kc->tab[i]; *pp; pp = &(*pp)->next)
      if (!best || (*pp)->used < (*best)->used)
        best = pp;
  if (!best)
    return;
  struct kc_ent *e = *best;
  *best = e->next;
  dkim_key_unref(e->key);
  free(e->path);
  free(e);
  kc->n--;
}

struct dkim_key *dkim_keycache_get(struct dkim_keycache *kc, const char *path, char *why, size_t whylen)
{
  size_t b = fnv(path) & (kc->nb - 1);
  pthread_mutex_lock(&kc->mu);
  for (struct kc_ent *e = kc->tab[b]; e; e = e->next) {
    if (!strcmp(e->path, path)) {
      e->used = ++kc->tick;
      struct dkim_key *k = dkim_key_ref(e->key);
      pthread_mutex_unlock(&kc->mu);
      return k;
    }
  }
  pthread_mutex_unlock(&kc->mu);
  /* Load outside the lock; a racing loader of the same path loses. */
  struct dkim_key *k = dkim_key_load_file(path, kc->strict, why, whylen);
  if (!k)
    return NULL;
  pthread_mutex_lock(&kc->mu);
  for (struct kc_ent *e = kc->tab[b]; e; e = e->next) {
    if (!strcmp(e->path, path)) {
      dkim_key_unref(k);
      k = dkim_key_ref(e->key);
      pthread_mutex_unlock(&kc->mu);
      return k;
    }
  }
  if (kc->n >= kc->cap)
    evict_lru(kc);
  struct kc_ent *e = util_xcalloc(1, sizeof(*e));
  e->path = util_xstrdup(path);
  e->key = dkim_key_ref(k);
  e->used = ++kc->tick;
  e->next = kc->tab[b];
  kc->tab[b] = e;
  kc->n++;
  pthread_mutex_unlock(&kc->mu);
  return k;
}

size_t dkim_keycache_count(struct dkim_keycache *kc)
{
  pthread_mutex_lock(&kc->mu);
  size_t n = kc->n;
  pthread_mutex_unlock(&kc->mu);
  return n;
}
