/* dkim_sign.c owns making one DKIM-Signature: which header fields are
 * signed (order, repeated fields bottom-up, oversigning, skip list), the
 * body and header hashes, the tag list and its folding, and the signature
 * through dkim_key_sign_digest.
 *
 * Sans-I/O: a whole message in memory in, one header field out. Any
 * thread. Allocates only in the caller's buf; its digest context and
 * scratch buffers are kept per thread (freed when the thread ends), so a
 * signature allocates nothing once a thread has signed one message. Never
 * logs. */
#include "dkim.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "base64.h"
#include "buf.h"
#include "panic.h"

int dkim_alg_parse(const char *s, enum dkim_alg *out)
{
  if (!strcasecmp(s, "rsa-sha256"))
    *out = DKIM_RSA_SHA256;
  else if (!strcasecmp(s, "ed25519-sha256"))
    *out = DKIM_ED25519_SHA256;
  else if (!strcasecmp(s, "rsa-sha1"))
    return -ENOTSUP;
  else
    return -EINVAL;
  return 0;
}

int dkim_canon_parse(const char *s, enum dkim_canon *out)
{
  if (!strcasecmp(s, "simple"))
    *out = DKIM_CANON_SIMPLE;
  else if (!strcasecmp(s, "relaxed"))
    *out = DKIM_CANON_RELAXED;
  else
    return -EINVAL;
  return 0;
}

const char *dkim_alg_name(enum dkim_alg a)
{
  return a == DKIM_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

const char *dkim_canon_name(enum dkim_canon c)
{
  return c == DKIM_CANON_RELAXED ? "relaxed" : "simple";
}

/* SHA-256 fetched once: an implicit fetch per digest would cost more than
 * hashing a small header. */
static EVP_MD *sha256_md;
static void sha256_fetch(void)
{
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  if (!sha256_md)
    util_panic("dkim: OpenSSL has no SHA256");
}

/* Per thread: the SHA-256 context and the buffers one signature needs. */
struct tls {
  EVP_MD_CTX *mc;
  struct buf sig, scratch;
};
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_free(void *p)
{
  struct tls *t = p;
  EVP_MD_CTX_free(t->mc);
  buf_done(&t->sig, 0);
  buf_done(&t->scratch, 0);
  free(t);
}

static void tls_init(void)
{
  if (pthread_key_create(&tls_key, tls_free) != 0)
    util_panic("dkim: pthread_key_create");
  sha256_fetch();
}

/* This thread's context, made on its first signature (NULL: no memory). */
static struct tls *tls_get(void)
{
  pthread_once(&tls_once, tls_init);
  struct tls *t = pthread_getspecific(tls_key);
  if (t)
    return t;
  t = util_xcalloc(1, sizeof(*t));
  t->mc = EVP_MD_CTX_new();
  if (!t->mc) {
    free(t);
    return NULL;
  }
  buf_reserve(&t->sig, 1024);
  buf_reserve(&t->scratch, 1024);
  pthread_setspecific(tls_key, t);
  return t;
}

/* The body hash (the canonicaliser hands it pieces of up to 2 KB), cut
 * at l= when one is set. */
struct hasher {
  EVP_MD_CTX *mc;
  uint64_t n, limit; /* bytes hashed; limit 0 = none */
};

static void hash_emit(void *arg, const void *p, size_t n)
{
  struct hasher *h = arg;
  if (h->limit) {
    if (h->n >= h->limit)
      return;
    if (n > h->limit - h->n)
      n = (size_t)(h->limit - h->n);
  }
  h->n += n;
  EVP_DigestUpdate(h->mc, p, n);
}

/* d=, s=: a domain or selector (letters, digits, '-', '.', '_');
 * i=: any visible character but ';'. */
static bool tag_ok(const char *s, bool identity)
{
  if (!s || !*s || strlen(s) > 255)
    return false;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (identity ? (c <= ' ' || c >= 127 || c == ';')
                 : !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_'))
      return false;
  }
  return true;
}

static bool name_ok(const char *s)
{
  if (!s || !*s || strlen(s) > 128)
    return false;
  for (; *s; s++)
    if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 127 || *s == ':' || *s == ';')
      return false;
  return true;
}

static bool in_list(const char *name, const char *const *l, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (!strcasecmp(name, l[i]))
      return true;
  return false;
}

static size_t count_of(const char *msg, const struct dkim_hdr *h, int nh, const char *name)
{
  size_t nl = strlen(name), c = 0;
  for (int i = 0; i < nh; i++)
    if (h[i].name_len == nl && !strncasecmp(msg + h[i].off, name, nl))
      c++;
  return c;
}

/* Greedy folding of the tag list: a token goes on the current line when
 * it fits in width, else on a new line after CRLF SP. */
struct fold {
  struct buf *b;
  size_t col;
  unsigned width;
};

static void fold_tok(struct fold *f, const char *join, const char *tok, size_t tl)
{
  size_t jl = strlen(join);
  if (f->col > 1 && f->col + jl + tl > f->width) {
    buf_append(f->b, "\r\n ", 3);
    f->col = 1;
  } else {
    buf_append(f->b, join, jl);
    f->col += jl;
  }
  buf_append(f->b, tok, tl);
  f->col += tl;
}

static void fold_str(struct fold *f, const char *join, const char *tok)
{
  fold_tok(f, join, tok, strlen(tok));
}

/* A token "<pre><text><post>" (snprintf costs more than the rest of a
 * small header's work); text is at most 255 bytes (checked), so 512 fit. */
static void fold_tag(struct fold *f, const char *join, const char *pre, const char *text,
                     const char *post)
{
  char tok[512];
  size_t a = strlen(pre), b = strlen(text), c = strlen(post);
  memcpy(tok, pre, a);
  memcpy(tok + a, text, b);
  memcpy(tok + a + b, post, c);
  fold_tok(f, join, tok, a + b + c);
}

static const char *u64_text(uint64_t v, char buf[24])
{
  char *q = buf + 23;
  *q = 0;
  do {
    *--q = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return q;
}

#define FAIL(code, ...)                                                                            \
  do {                                                                                             \
    if (why && whylen)                                                                             \
      snprintf(why, whylen, __VA_ARGS__);                                                          \
    rc = (code);                                                                                   \
    goto out;                                                                                      \
  } while (0)

int dkim_sign(const struct dkim_params *p, const struct dkim_key *key, const void *msgv, size_t len,
              struct buf *out, char *why, size_t whylen)
{
  const char *msg = msgv;
  int rc = 0;
  struct tls *t = NULL;
  struct dkim_hdr *hdrs = NULL;
  const char **hl = NULL;
  bool *used = NULL;

  if (!tag_ok(p->domain, false))
    FAIL(-EINVAL, "signing domain (d=) missing or not a domain name");
  if (!tag_ok(p->selector, false))
    FAIL(-EINVAL, "selector (s=) missing or not a DNS label");
  if (p->identity && !tag_ok(p->identity, true))
    FAIL(-EINVAL, "identity (i=) has white space, ';' or control characters");
  if (dkim_key_alg(key) != p->alg)
    FAIL(-EINVAL, "a %s key cannot sign %s", dkim_key_alg(key) == DKIM_RSA_SHA256 ? "RSA" : "Ed25519",
         dkim_alg_name(p->alg));
  if (len > UINT32_MAX)
    FAIL(-EINVAL, "message larger than 4 GiB");
  unsigned width = p->width ? p->width : DKIM_DEFAULT_WIDTH;
  if (width < 20)
    width = 20;

  /* The usual message has a few dozen fields: on the stack, else the heap. */
  struct dkim_hdr hstack[128];
  const char *hlstack[64];
  bool ustack[128];
  size_t body_off;
  struct dkim_hdr *hv = hstack;
  int nh = dkim_header_split(msg, len, hstack, 128, &body_off);
  if (nh == -E2BIG) {
    hv = hdrs = util_xmalloc(DKIM_MAX_HEADERS * sizeof(*hdrs));
    nh = dkim_header_split(msg, len, hdrs, DKIM_MAX_HEADERS, &body_off);
  }
  if (nh < 0)
    FAIL(-EINVAL, "more than %d header fields", DKIM_MAX_HEADERS);

  /* h=: each wanted name once per instance present, then the oversigned
   * names once more (and their instances when headers did not name them). */
  size_t nhl = 0, hlcap = 64;
  const char **hlv = hlstack;
  bool from = false;
  for (int pass = 0; pass < 2; pass++) {
    const char *const *names = pass ? p->oversign : p->headers;
    size_t nn = pass ? p->noversign : p->nheaders;
    for (size_t i = 0; i < nn; i++) {
      const char *name = names[i];
      if (!name_ok(name))
        FAIL(-EINVAL, "'%s' is not a header field name", name ? name : "");
      if (in_list(name, p->skip, p->nskip))
        continue;
      size_t c = count_of(msg, hv, nh, name);
      if (pass == 1)
        c = (in_list(name, p->headers, p->nheaders) ? 0 : c) + 1;
      else if (in_list(name, names, i)) /* named twice: its instances are already in */
        c = 0;
      if (nhl + c > DKIM_MAX_SIGNED)
        FAIL(-EINVAL, "more than %d header fields to sign", DKIM_MAX_SIGNED);
      if (nhl + c > hlcap) {
        hl = util_xmalloc(DKIM_MAX_SIGNED * sizeof(*hl));
        memcpy(hl, hlv, nhl * sizeof(*hl));
        hlv = hl;
        hlcap = DKIM_MAX_SIGNED;
      }
      for (size_t k = 0; k < c; k++)
        hlv[nhl++] = name;
      if (!strcasecmp(name, "from"))
        from = true;
    }
  }
  if (!from)
    FAIL(-EINVAL, "From is not among the signed header fields (RFC 6376 5.4 requires it)");

  t = tls_get();
  if (!t || EVP_DigestInit_ex(t->mc, sha256_md, NULL) != 1)
    FAIL(-ENOMEM, "cannot start a SHA-256 digest");
  EVP_MD_CTX *mc = t->mc;
  struct buf *sig = &t->sig, *scratch = &t->scratch;
  sig->len = 0;

  /* bh= */
  struct hasher bh;
  bh.mc = mc;
  bh.n = 0;
  bh.limit = p->body_length ? p->body_limit : 0;
  struct dkim_body bc;
  dkim_body_init(&bc, p->bcanon);
  dkim_body_feed(&bc, msg + body_off, len - body_off, hash_emit, &bh);
  dkim_body_finish(&bc, hash_emit, &bh);
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned mdl = 0;
  EVP_DigestFinal_ex(mc, md, &mdl);
  char bh64[64];
  base64_encode(md, mdl, bh64);

  /* The tag list without b='s value. */
  struct fold f = {sig, 0, width};
  buf_append_str(sig, "DKIM-Signature:");
  f.col = sig->len;
  fold_str(&f, " ", "v=1;");
  fold_tag(&f, " ", "a=", dkim_alg_name(p->alg), ";");
  fold_tag(&f, " ", "c=", p->hcanon == DKIM_CANON_RELAXED ? "relaxed/" : "simple/",
           p->bcanon == DKIM_CANON_RELAXED ? "relaxed;" : "simple;");
  fold_tag(&f, " ", "d=", p->domain, ";");
  if (p->identity)
    fold_tag(&f, " ", "i=", p->identity, ";");
  if (p->q_tag)
    fold_str(&f, " ", "q=dns/txt;");
  fold_tag(&f, " ", "s=", p->selector, ";");
  char num[24];
  if (p->timestamp >= 0)
    fold_tag(&f, " ", "t=", u64_text((uint64_t)p->timestamp, num), ";");
  if (p->expire > 0)
    fold_tag(&f, " ", "x=", u64_text((uint64_t)p->expire, num), ";");
  if (p->body_length)
    fold_tag(&f, " ", "l=", u64_text(bh.n, num), ";");
  for (size_t i = 0; i < nhl; i++) {
    bool last = i + 1 == nhl;
    fold_tag(&f, i && !p->h_spaced ? "" : " ", i ? "" : "h=", hlv[i],
             last ? ";" : p->h_spaced ? " :" : ":");
  }
  fold_tag(&f, " ", "bh=", bh64, ";");
  buf_append(sig, "\r\n b=", 5);
  f.col = 3;

  /* The header hash: signed fields bottom-up, then this field. */
  if (EVP_DigestInit_ex(mc, sha256_md, NULL) != 1)
    FAIL(-ENOMEM, "cannot start a SHA-256 digest");
  bool *uv = ustack;
  if (nh <= 128)
    memset(ustack, 0, sizeof(ustack));
  else
    uv = used = util_xcalloc((size_t)nh + 1, sizeof(*used));
  for (size_t i = 0; i < nhl; i++) {
    size_t nl = strlen(hlv[i]);
    for (int k = nh - 1; k >= 0; k--) {
      if (uv[k] || hv[k].name_len != nl || strncasecmp(msg + hv[k].off, hlv[i], nl))
        continue;
      uv[k] = true;
      scratch->len = 0;
      dkim_header_canon(p->hcanon, msg + hv[k].off, hv[k].len, true, scratch);
      EVP_DigestUpdate(mc, scratch->data, scratch->len);
      break;
    }
  }
  scratch->len = 0;
  dkim_header_canon(p->hcanon, sig->data, sig->len, false, scratch);
  EVP_DigestUpdate(mc, scratch->data, scratch->len);
  EVP_DigestFinal_ex(mc, md, &mdl);

  uint8_t s[512];
  int sl = dkim_key_sign_digest(key, md, s, sizeof(s));
  if (sl < 0)
    FAIL(-EIO, "the %s key operation failed", dkim_alg_name(p->alg));
  char b64[700];
  size_t bl = base64_encode(s, (size_t)sl, b64);
  for (size_t at = 0; at < bl;) {
    size_t room = f.col < width ? width - f.col : 1;
    size_t k = bl - at < room ? bl - at : room;
    buf_append(sig, b64 + at, k);
    at += k;
    f.col += k;
    if (at < bl) {
      buf_append(sig, "\r\n ", 3);
      f.col = 1;
    }
  }
  buf_append(sig, "\r\n", 2);
  buf_append(out, sig->data, sig->len);

out:
  free(hdrs);
  free(hl);
  free(used);
  if (t && t->scratch.cap > 64 * 1024) /* a huge header field: not kept */
    buf_done(&t->scratch, 0);
  return rc;
}
