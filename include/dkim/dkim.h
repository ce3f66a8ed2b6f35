/* dkim: DKIM signing (RFC 6376, RFC 8463 Ed25519-SHA256, RFC 8301), sans-I/O.
 *
 * The caller hands in a whole message (header and body, any line ends) and
 * gets back one complete "DKIM-Signature:" header field to put in front of
 * it. Line ends are read the way the SMTP client sends them (DATA and BDAT
 * alike, see smtp_dot.h): CRLF, a bare LF and a bare CR are each one line
 * end, and a message that does not end with one gets CRLF. So the signature
 * covers exactly the bytes delivered, whatever the spool file holds.
 *
 * Threads: every function may be called from any thread; a struct dkim_key
 * is immutable once loaded and may sign on many threads at once; a key
 * cache takes its own lock. Never logs; errors come back as -errno plus a
 * text naming what failed (never key material). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;

enum dkim_alg { DKIM_RSA_SHA256, DKIM_ED25519_SHA256 };
enum dkim_canon { DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED };

/* Named limits. */
#define DKIM_MAX_HEADERS 1024     /* header fields looked at in one message */
#define DKIM_MAX_SIGNED 256       /* names in h= */
#define DKIM_RSA_MIN_BITS 1024    /* RFC 8301 */
#define DKIM_DEFAULT_WIDTH 78     /* folding of the DKIM-Signature field */

/* "rsa-sha256" / "ed25519-sha256" and "simple" / "relaxed": 0 or -EINVAL.
 * "rsa-sha1" is -ENOTSUP (RFC 8301: must not be used for signing). */
int dkim_alg_parse(const char *s, enum dkim_alg *out);
int dkim_canon_parse(const char *s, enum dkim_canon *out);
const char *dkim_alg_name(enum dkim_alg a);
const char *dkim_canon_name(enum dkim_canon c);

/* ---- keys ---- */

struct dkim_key;
/* Load a PEM private key (PKCS#1 RSA, PKCS#8 RSA or Ed25519). NULL on
 * failure with why filled in ("cannot open: ...", "not a PEM private
 * key", "RSA key of 512 bits: at least 1024 needed", "readable by group or
 * others (mode 0644)"). With strict_mode, a file that group or others may
 * read is refused. */
struct dkim_key *dkim_key_load_file(const char *path, bool strict_mode, char *why, size_t whylen);
/* From PEM text in memory, or from the bare base64 body of a PKCS#1/PKCS#8
 * key without BEGIN/END lines (Momentum's Lua keybuf). */
struct dkim_key *dkim_key_load_mem(const char *text, size_t n, char *why, size_t whylen);
/* Raw Ed25519 seed of 32 bytes (RFC 8032 / RFC 8463 appendix A keys). */
struct dkim_key *dkim_key_ed25519_seed(const uint8_t seed[32]);
struct dkim_key *dkim_key_ref(struct dkim_key *k);
void dkim_key_unref(struct dkim_key *k);
/* The algorithm this key signs with (RSA keys: rsa-sha256). */
enum dkim_alg dkim_key_alg(const struct dkim_key *k);
unsigned dkim_key_bits(const struct dkim_key *k);
/* The public key as it goes in the DNS record's p= (base64 DER for RSA,
 * the 32 raw bytes for Ed25519), appended to out. 0 or -EINVAL. */
int dkim_key_public_b64(const struct dkim_key *k, struct buf *out);

/* ---- signing ---- */

struct dkim_params {
  enum dkim_alg alg;
  enum dkim_canon hcanon, bcanon;
  const char *domain;   /* d= (required) */
  const char *selector; /* s= (required) */
  const char *identity; /* i=; NULL = none */
  /* Header names to sign, in order; each present instance is signed
   * (bottom-up, RFC 6376 5.4.2). Names are written to h= as given. */
  const char *const *headers;
  size_t nheaders;
  /* Signed once more than they occur, so none can be added in transit. */
  const char *const *oversign;
  size_t noversign;
  /* Never signed, even when named in headers. */
  const char *const *skip;
  size_t nskip;
  int64_t timestamp;    /* t=; < 0 = omit */
  int64_t expire;       /* x= (absolute seconds); 0 = omit */
  bool body_length;     /* l= with the signed body length */
  uint64_t body_limit;  /* with body_length: sign at most this many canonical bytes; 0 = all */
  bool q_tag;           /* q=dns/txt */
  bool h_spaced;        /* h=a : b : c (RFC 8463 example) instead of h=a:b:c */
  unsigned width;       /* fold lines to this many bytes; 0 = DKIM_DEFAULT_WIDTH */
};

/* Sign msg[0..len) with key under p; appends the whole header field
 * "DKIM-Signature: ...\r\n" to out. -EINVAL (bad parameters, key and
 * algorithm disagree), -EIO (the key operation failed), with why set. */
int dkim_sign(const struct dkim_params *p, const struct dkim_key *key, const void *msg, size_t len,
              struct buf *out, char *why, size_t whylen);

/* ---- the parts, for tests, fuzzing and benchmarks ---- */

/* Streaming body canonicaliser. All-zero after dkim_body_init is the start. */
struct dkim_body {
  uint8_t canon;    /* enum dkim_canon */
  uint8_t cr;       /* last byte was a CR (an LF right after it is the same line end) */
  uint8_t wsp;      /* relaxed: white space seen since the last byte written */
  uint8_t any;      /* a non-empty line has been written */
  uint64_t eols;    /* line ends seen since the last byte written */
};
typedef void dkim_emit_fn(void *arg, const void *p, size_t n);
void dkim_body_init(struct dkim_body *b, enum dkim_canon c);
/* Feed in[0..n): canonical bytes come out through emit. */
void dkim_body_feed(struct dkim_body *b, const void *in, size_t n, dkim_emit_fn *emit, void *arg);
/* The end of the body: the final CRLF (or, for simple and an empty body, CRLF). */
void dkim_body_finish(struct dkim_body *b, dkim_emit_fn *emit, void *arg);

/* Canonicalise one header field f[0..n) (name, colon, value, folded lines,
 * with or without its final line end) and append it to out, with CRLF at
 * the end when crlf. */
void dkim_header_canon(enum dkim_canon c, const void *f, size_t n, bool crlf, struct buf *out);

/* The header fields of a message: offsets into it. */
struct dkim_hdr {
  uint32_t off, len;     /* the whole field including its line end */
  uint32_t name_len;     /* name without trailing white space */
};
/* Split msg into at most max header fields; *body is the offset of the
 * body (after the empty line; len when there is none). Returns the number
 * of fields, or -E2BIG when there are more than max. */
int dkim_header_split(const void *msg, size_t len, struct dkim_hdr *out, size_t max, size_t *body);

/* The raw key operation alone (for the benchmark's baseline): sign a
 * 32-byte SHA-256 digest; sig gets up to 512 bytes. Returns its length or
 * -EIO. */
int dkim_key_sign_digest(const struct dkim_key *k, const uint8_t digest[32], uint8_t *sig, size_t cap);

/* ---- key cache (keycache_size) ---- */

struct dkim_keycache;
/* cap: keys kept; the least recently used goes first. NULL on ENOMEM. */
struct dkim_keycache *dkim_keycache_new(size_t cap, bool strict_mode);
void dkim_keycache_free(struct dkim_keycache *kc);
/* The key at path, loaded on first use; a new reference, or NULL with why. */
struct dkim_key *dkim_keycache_get(struct dkim_keycache *kc, const char *path, char *why, size_t whylen);
size_t dkim_keycache_count(struct dkim_keycache *kc);

/* Expand %{d} and %{s} in a key path template into out (NUL-terminated).
 * -ENAMETOOLONG when it does not fit, -EINVAL on another %{x}. */
int dkim_path_expand(const char *tmpl, const char *domain, const char *selector, char *out,
                     size_t n);
