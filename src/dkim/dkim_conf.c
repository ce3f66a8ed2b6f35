/* dkim_conf.c owns the signers a configuration snapshot describes: it
 * reads the opendkim and dkim_domain stanzas (a dkim_domain option falls
 * back to its opendkim stanza, then to the built-in default), loads every
 * configured key up front so a bad key is a start-up or reload error
 * naming file and line, and picks the signer for a message by its
 * responsible domain. It also serves Lua's per-call requests.
 *
 * Threads: built on one thread; read-only afterwards, any thread signs.
 * Never logs. */
#include "dkim_conf.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "panic.h"

struct signer {
  char *name;     /* the dkim_domain instance, lower case; NULL for a stanza default */
  char *domain;   /* d= */
  char *selector; /* s= */
  char *key_tmpl; /* key template (for Lua overrides) */
  enum dkim_alg alg;
  enum dkim_canon hc, bc;
  char **names, **over, **skip;
  size_t nnames, nover, nskip;
  int64_t lifetime_h;
  bool blen;
  struct dkim_key *key; /* NULL for a stanza default */
  size_t seq;           /* order in the configuration: the first stanza naming a domain wins */
};

struct dkim_signers {
  struct signer *v; /* sorted by name, one per name: found by binary search */
  size_t n;
  struct signer deflt; /* the first opendkim stanza's own settings (Lua) */
  bool has_deflt;
  struct dkim_keycache *kc;
};

static void seterr(struct conf_error *err, const char *file, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void seterr(struct conf_error *err, const char *file, unsigned line, const char *fmt, ...)
{
  snprintf(err->file, sizeof(err->file), "%s", file ? file : "");
  err->line = line;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
  va_end(ap);
}

static void free_list(char **l, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(l[i]);
  free(l);
}

static void signer_done(struct signer *s)
{
  free(s->name);
  free(s->domain);
  free(s->selector);
  free(s->key_tmpl);
  free_list(s->names, s->nnames);
  free_list(s->over, s->nover);
  free_list(s->skip, s->nskip);
  dkim_key_unref(s->key);
  memset(s, 0, sizeof(*s));
}

/* Momentum lists are "comma or space separated": ("a", "b") reaches us
 * with "," elements, and "a,b" as one; split every element again. */
static void add_names(const char *text, char ***out, size_t *n)
{
  const char *p = text;
  while (*p) {
    p += strspn(p, ", \t:");
    size_t k = strcspn(p, ", \t:");
    if (!k)
      break;
    *out = util_xrealloc(*out, (*n + 1) * sizeof(**out));
    (*out)[(*n)++] = util_xstrndup(p, k);
    p += k;
  }
}

static void read_list(const struct conf_view *v, enum conf_opt o, char ***out, size_t *n)
{
  size_t k = 0;
  const char *const *items = conf_list(v, o, &k);
  for (size_t i = 0; i < k; i++)
    add_names(items[i], out, n);
}

/* The view that provides option o: the dkim_domain's when it set it. */
static const struct conf_view *pick(const struct conf_view *dv, const struct conf_view *mv,
                                    enum conf_opt o)
{
  return dv && conf_is_set(dv, o) ? dv : mv;
}

static const char *where(const struct conf_view *v, enum conf_opt o, const struct conf_stanza *st,
                         unsigned *line)
{
  const char *f = conf_is_set(v, o) ? conf_origin(v, o, line) : NULL;
  return f ? f : conf_stanza_origin(st, line);
}

/* Fill s from the dkim_domain stanza ds (NULL: the opendkim stanza ms alone). */
static int read_signer(const struct conf_stanza *ms, const struct conf_stanza *ds, struct signer *s,
                       struct conf_error *err)
{
  const struct conf_view *mv = conf_stanza_view(ms), *dv = ds ? conf_stanza_view(ds) : NULL;
  const struct conf_stanza *st = ds ? ds : ms;
  unsigned line;
  const char *file;
  const struct conf_view *v = pick(dv, mv, CONF_DKIM_DIGEST);
  int dg = conf_enum(v, CONF_DKIM_DIGEST);
  if (dg == 2) {
    file = where(v, CONF_DKIM_DIGEST, st, &line);
    seterr(err, file, line,
           "digest rsa-sha1 must not be used for signing (RFC 8301); use rsa-sha256 or "
           "ed25519-sha256");
    return -EINVAL;
  }
  s->alg = dg == 1 ? DKIM_ED25519_SHA256 : DKIM_RSA_SHA256;
  s->hc = conf_enum(pick(dv, mv, CONF_DKIM_HEADER_CANON), CONF_DKIM_HEADER_CANON) == 1
              ? DKIM_CANON_RELAXED
              : DKIM_CANON_SIMPLE;
  s->bc = conf_enum(pick(dv, mv, CONF_DKIM_BODY_CANON), CONF_DKIM_BODY_CANON) == 1
              ? DKIM_CANON_RELAXED
              : DKIM_CANON_SIMPLE;
  read_list(pick(dv, mv, CONF_DKIM_HEADERLIST), CONF_DKIM_HEADERLIST, &s->names, &s->nnames);
  read_list(pick(dv, mv, CONF_DKIM_OVERSIGN_HEADERLIST), CONF_DKIM_OVERSIGN_HEADERLIST, &s->over,
            &s->nover);
  read_list(pick(dv, mv, CONF_DKIM_SKIP_HEADERLIST), CONF_DKIM_SKIP_HEADERLIST, &s->skip,
            &s->nskip);
  s->lifetime_h = conf_int(pick(dv, mv, CONF_DKIM_LIFETIME), CONF_DKIM_LIFETIME);
  s->blen = conf_bool(pick(dv, mv, CONF_DKIM_BODY_LENGTH_LIMIT), CONF_DKIM_BODY_LENGTH_LIMIT);
  const char *sel = conf_str(pick(dv, mv, CONF_DKIM_SELECTOR), CONF_DKIM_SELECTOR);
  const char *key = conf_str(pick(dv, mv, CONF_DKIM_KEY), CONF_DKIM_KEY);
  s->selector = sel ? util_xstrdup(sel) : NULL;
  s->key_tmpl = key ? util_xstrdup(key) : NULL;
  if (!ds)
    return 0;

  const char *inst = conf_stanza_instance(ds);
  s->name = util_xstrdup(inst);
  for (char *q = s->name; *q; q++)
    *q = (char)tolower((unsigned char)*q);
  const char *base = dv ? conf_str(dv, CONF_DKIM_BASE_DOMAIN) : NULL;
  s->domain = util_xstrdup(base ? base : s->name);
  file = conf_stanza_origin(ds, &line);
  if (s->lifetime_h < 0) {
    file = where(pick(dv, mv, CONF_DKIM_LIFETIME), CONF_DKIM_LIFETIME, st, &line);
    seterr(err, file, line, "lifetime must be 0 (no expiry) or a number of hours");
    return -EINVAL;
  }
  if (!s->nnames) {
    seterr(err, file, line,
           "dkim_domain \"%s\": no headerlist (set it here or in the opendkim stanza; it must "
           "include From)",
           inst);
    return -EINVAL;
  }
  bool from = false;
  for (size_t i = 0; i < s->nnames; i++)
    from |= !strcasecmp(s->names[i], "from");
  for (size_t i = 0; i < s->nover; i++)
    from |= !strcasecmp(s->over[i], "from");
  if (!from) {
    v = pick(dv, mv, CONF_DKIM_HEADERLIST);
    file = where(v, CONF_DKIM_HEADERLIST, st, &line);
    seterr(err, file, line, "headerlist must include From (RFC 6376 5.4)");
    return -EINVAL;
  }
  if (!s->selector) {
    seterr(err, file, line, "dkim_domain \"%s\": no selector (set it here or in the opendkim stanza)",
           inst);
    return -EINVAL;
  }
  if (!s->key_tmpl) {
    seterr(err, file, line, "dkim_domain \"%s\": no key (set it here or in the opendkim stanza)",
           inst);
    return -EINVAL;
  }
  char path[PATH_MAX], why[300];
  v = pick(dv, mv, CONF_DKIM_KEY);
  file = where(v, CONF_DKIM_KEY, st, &line);
  int r = dkim_path_expand(s->key_tmpl, s->domain, s->selector, path, sizeof(path));
  if (r < 0) {
    seterr(err, file, line, "key '%s': %s", s->key_tmpl,
           r == -EINVAL ? "only %{d} and %{s} may be expanded" : "path too long");
    return r;
  }
  s->key = dkim_key_load_file(path, true, why, sizeof(why));
  if (!s->key) {
    seterr(err, file, line, "key file %s (dkim_domain \"%s\", selector \"%s\"): %s", path, inst,
           s->selector, why);
    return -EINVAL;
  }
  if (dkim_key_alg(s->key) != s->alg) {
    seterr(err, file, line, "key file %s is an %s key but digest is %s", path,
           dkim_key_alg(s->key) == DKIM_RSA_SHA256 ? "RSA" : "Ed25519", dkim_alg_name(s->alg));
    return -EINVAL;
  }
  return 0;
}

static int signer_cmp(const void *a, const void *b)
{
  const struct signer *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : x->seq < y->seq ? -1 : x->seq > y->seq;
}

struct dkim_signers *dkim_signers_new(const struct conf *c, struct conf_error *err)
{
  struct dkim_signers *s = util_xcalloc(1, sizeof(*s));
  size_t cap = 0;
  int64_t cache = 2048;
  for (const struct conf_stanza *ms = conf_stanza_first(c, "opendkim"); ms;
       ms = conf_stanza_next(ms)) {
    const struct conf_view *mv = conf_stanza_view(ms);
    if (!conf_bool(mv, CONF_MOD_ENABLED))
      continue;
    if (!s->has_deflt) {
      if (read_signer(ms, NULL, &s->deflt, err) < 0)
        goto fail;
      s->has_deflt = true;
      cache = conf_int(mv, CONF_DKIM_KEYCACHE_SIZE);
    }
    for (const struct conf_stanza *ds = conf_stanza_child(ms, "dkim_domain"); ds;
         ds = conf_stanza_next(ds)) {
      struct signer one = {0};
      if (read_signer(ms, ds, &one, err) < 0) {
        signer_done(&one);
        goto fail;
      }
      if (s->n == cap) {
        cap = cap ? cap * 2 : 16;
        s->v = util_xrealloc(s->v, cap * sizeof(*s->v));
      }
      one.seq = s->n;
      s->v[s->n++] = one;
    }
  }
  /* Sorted by name, then configuration order; of a name's stanzas only
   * the first stays. */
  if (s->n)
    qsort(s->v, s->n, sizeof(*s->v), signer_cmp);
  size_t w = 0;
  for (size_t i = 0; i < s->n; i++) {
    if (w && !strcmp(s->v[w - 1].name, s->v[i].name))
      signer_done(&s->v[i]);
    else
      s->v[w++] = s->v[i];
  }
  s->n = w;
  s->kc = dkim_keycache_new(cache > 0 ? (size_t)cache : 1, true);
  return s;
fail:
  dkim_signers_free(s);
  return NULL;
}

void dkim_signers_free(struct dkim_signers *s)
{
  if (!s)
    return;
  for (size_t i = 0; i < s->n; i++)
    signer_done(&s->v[i]);
  free(s->v);
  signer_done(&s->deflt);
  dkim_keycache_free(s->kc);
  free(s);
}

size_t dkim_signers_count(const struct dkim_signers *s) { return s ? s->n : 0; }

/* ---- the responsible domain ---- */

/* The domain of the first address in a header value v[0..n). */
static int addr_domain(const char *v, size_t n, char *out, size_t cap)
{
  const char *lt = memchr(v, '<', n);
  const char *start = v, *end = v + n;
  if (lt) {
    const char *gt = memchr(lt, '>', (size_t)(end - lt));
    start = lt + 1;
    end = gt ? gt : end;
  }
  /* Skip quoted strings and comments; the last '@' before the end of the
   * first address (',' outside quotes) starts the domain. */
  const char *at = NULL;
  int depth = 0;
  bool q = false;
  for (const char *p = start; p < end; p++) {
    if (q) {
      if (*p == '\\' && p + 1 < end)
        p++;
      else if (*p == '"')
        q = false;
    } else if (*p == '"') {
      q = true;
    } else if (*p == '(') {
      depth++;
    } else if (*p == ')' && depth) {
      depth--;
    } else if (!depth) {
      if (*p == '@')
        at = p;
      else if (*p == ',' && at)
        break;
    }
  }
  if (!at)
    return -ENOENT;
  size_t w = 0;
  for (const char *p = at + 1; p < end; p++) {
    unsigned char ch = (unsigned char)*p;
    if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == '_'))
      break;
    if (w + 1 >= cap)
      return -ENAMETOOLONG;
    out[w++] = (char)tolower(ch);
  }
  while (w && out[w - 1] == '.')
    w--;
  out[w] = 0;
  return w ? 0 : -ENOENT;
}

int dkim_responsible_domain(const void *msgv, size_t len, char *out, size_t n)
{
  const char *msg = msgv;
  struct dkim_hdr h[256];
  size_t body;
  int nh = dkim_header_split(msg, len, h, 256, &body);
  if (nh == -E2BIG)
    nh = 256;
  static const char *const order[] = {"sender", "from"};
  for (size_t k = 0; k < 2; k++) {
    size_t kl = strlen(order[k]);
    for (int i = 0; i < nh; i++) {
      if (h[i].name_len != kl || strncasecmp(msg + h[i].off, order[k], kl))
        continue;
      const char *colon = memchr(msg + h[i].off, ':', h[i].len);
      if (!colon)
        continue;
      size_t vl = h[i].len - (size_t)(colon + 1 - (msg + h[i].off));
      int r = addr_domain(colon + 1, vl, out, n);
      if (r != -ENOENT)
        return r;
    }
  }
  return -ENOENT;
}

/* ---- signing ---- */

static void params_of(const struct signer *s, struct dkim_params *p, int64_t now)
{
  *p = (struct dkim_params){
      .alg = s->alg, .hcanon = s->hc, .bcanon = s->bc, .domain = s->domain,
      .selector = s->selector, .headers = (const char *const *)s->names, .nheaders = s->nnames,
      .oversign = (const char *const *)s->over, .noversign = s->nover,
      .skip = (const char *const *)s->skip, .nskip = s->nskip, .timestamp = now,
      .expire = s->lifetime_h > 0 ? now + s->lifetime_h * 3600 : 0, .body_length = s->blen};
}

static const struct signer *find(const struct dkim_signers *s, const char *domain)
{
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(s->v[mid].name, domain);
    if (!c)
      return &s->v[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

int dkim_signers_sign(const struct dkim_signers *s, const void *msg, size_t len, int64_t now,
                      struct buf *out, char *why, size_t whylen)
{
  if (!s || !s->n)
    return 0;
  char dom[256];
  if (dkim_responsible_domain(msg, len, dom, sizeof(dom)) < 0)
    return 0;
  const struct signer *sg = find(s, dom);
  if (!sg)
    return 0;
  struct dkim_params p;
  params_of(sg, &p, now);
  int r = dkim_sign(&p, sg->key, msg, len, out, why, whylen);
  return r < 0 ? r : 1;
}

bool dkim_signers_match(const struct dkim_signers *s, const void *msg, size_t len)
{
  char dom[256];
  return s && s->n && dkim_responsible_domain(msg, len, dom, sizeof(dom)) == 0 && find(s, dom);
}

int dkim_signers_sign_request(const struct dkim_signers *s, const struct dkim_sign_request *rq,
                              const void *msg, size_t len, int64_t now, struct buf *out, char *why,
                              size_t whylen)
{
  char dom[256] = "";
  const struct signer *sg = NULL;
  if (dkim_responsible_domain(msg, len, dom, sizeof(dom)) == 0 && s)
    sg = find(s, dom);
  if (!sg && s && s->has_deflt)
    sg = &s->deflt;
  struct signer none = {0};
  if (!sg)
    sg = &none;
  struct dkim_params p;
  params_of(sg, &p, now);
  if (!p.domain)
    p.domain = rq->domain ? rq->domain : dom[0] ? dom : NULL;
  if (rq->domain)
    p.domain = rq->domain;
  if (rq->selector)
    p.selector = rq->selector;
  p.identity = rq->identity;
  int rc = 0;
  char **names = NULL;
  size_t nnames = 0;
  struct dkim_key *key = NULL;
  if (rq->digest && (rc = dkim_alg_parse(rq->digest, &p.alg)) < 0) {
    snprintf(why, whylen, rc == -ENOTSUP ? "digest %s must not be used for signing (RFC 8301)"
                                         : "unknown digest %s",
             rq->digest);
    goto out;
  }
  if ((rq->header_canon && (rc = dkim_canon_parse(rq->header_canon, &p.hcanon)) < 0) ||
      (rq->body_canon && (rc = dkim_canon_parse(rq->body_canon, &p.bcanon)) < 0)) {
    snprintf(why, whylen, "header_canon and body_canon are simple or relaxed");
    goto out;
  }
  if (rq->headerlist) {
    add_names(rq->headerlist, &names, &nnames);
    p.headers = (const char *const *)names;
    p.nheaders = nnames;
  }
  if (rq->body_length_limit >= 0) {
    p.body_length = rq->body_length_limit > 0;
    p.body_limit = rq->body_length_limit > 1 ? (uint64_t)rq->body_length_limit : 0;
  }
  if (!p.domain || !p.selector) {
    snprintf(why, whylen, "no signing domain or selector (options base_domain and selector)");
    rc = -EINVAL;
    goto out;
  }
  const char *tmpl = rq->keyfile ? rq->keyfile : sg->key_tmpl;
  if (rq->keybuf) {
    key = dkim_key_load_mem(rq->keybuf, strlen(rq->keybuf), why, whylen);
  } else if (sg->key && !rq->keyfile && !strcmp(p.domain, sg->domain) &&
             !strcmp(p.selector, sg->selector)) {
    key = dkim_key_ref(sg->key);
  } else if (tmpl) {
    char path[PATH_MAX], w2[300];
    if (dkim_path_expand(tmpl, p.domain, p.selector, path, sizeof(path)) < 0) {
      snprintf(why, whylen, "keyfile: bad template");
    } else {
      key = s ? dkim_keycache_get(s->kc, path, w2, sizeof(w2))
              : dkim_key_load_file(path, true, w2, sizeof(w2));
      if (!key)
        snprintf(why, whylen, "key file %s: %s", path, w2);
    }
  } else {
    snprintf(why, whylen, "no key (options keyfile or keybuf)");
  }
  if (!key) {
    rc = -EINVAL;
    goto out;
  }
  rc = dkim_sign(&p, key, msg, len, out, why, whylen);
out:
  dkim_key_unref(key);
  free_list(names, nnames);
  return rc;
}
