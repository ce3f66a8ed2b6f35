/* conf_value.c owns the option and stanza tables (built from
 * conf_options.def), the snapshot's arena and small hash maps, and the
 * conversion of configured text into typed values.
 * Never logs, never touches files. Called while a snapshot is built
 * (one thread) and, for the tables, from any thread. */
#include "conf_internal.h"
#include "secmem.h"
#include "buf.h"
#include "panic.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define G CONF_S_G
#define BG CONF_S_BG
#define B CONF_S_B
#define D CONF_S_D
#define MOD CONF_S_MOD
#define ROUTING CONF_S_ROUTING
#define RESTART CONF_F_RESTART
#define SECRET CONF_F_SECRET
#define OFF CONF_F_OFF
#define NOTIMPL CONF_F_NOTIMPL
#define NONE CONF_INST_NONE
#define OPTIONAL CONF_INST_OPTIONAL
#define REQUIRED CONF_INST_REQUIRED

const struct conf_optdef conf_optdefs[CONF__COUNT] = {
#define CONF_OPT(id, name, type, def, scopes, flags, words, module, doc) \
  [id] = {name, CONF_T_##type, def, scopes, flags, words, module, doc},
#include "conf_options.def"
#undef CONF_OPT
};

const struct conf_stzdef conf_stzdefs[STZ__COUNT] = {
#define CONF_STANZA(id, name, parent, inst, doc) [id] = {name, parent, inst, doc},
#include "conf_options.def"
#undef CONF_STANZA
};

int conf_stz_find(const char *name)
{
  for (int i = 0; i < STZ__COUNT; i++)
    if (!strcasecmp(conf_stzdefs[i].name, name))
      return i;
  return -1;
}

int conf_stz_find_in(const char *name, int parent)
{
  for (int i = 0; i < STZ__COUNT; i++)
    if (conf_stzdefs[i].parent == parent && !strcasecmp(conf_stzdefs[i].name, name))
      return i;
  return conf_stz_find(name);
}

static bool module_is_one(int kind, const char *module);

bool conf_stz_module_is(int kind, const char *module)
{
  if (!strchr(module, ' '))
    return module_is_one(kind, module);
  /* "opendkim dkim_domain": an option of several stanza kinds */
  char one[128];
  for (const char *p = module; *p;) {
    size_t n = strcspn(p, " ");
    if (n && n < sizeof(one)) {
      memcpy(one, p, n);
      one[n] = 0;
      if (module_is_one(kind, one))
        return true;
    }
    p += n;
    p += strspn(p, " ");
  }
  return false;
}

static bool module_is_one(int kind, const char *module)
{
  const struct conf_stzdef *s = &conf_stzdefs[kind];
  if (!strcasecmp(module, s->name))
    return true;
  /* "parent.name": a kind whose name another parent also uses (listen) */
  if (s->parent == STZ_NONE)
    return false;
  const char *pn = conf_stzdefs[s->parent].name;
  size_t pl = strlen(pn);
  return !strncasecmp(module, pn, pl) && module[pl] == '.' && !strcasecmp(module + pl + 1, s->name);
}

/* ---- arena ----
 * Chunks come from secmem: the snapshot holds passwords (SECRET options)
 * and their raw tokens, so its pages stay out of core dumps and are wiped
 * when the snapshot goes. */

struct conf_chunk {
  struct conf_chunk *next;
  size_t used, cap;
  max_align_t data[];
};

void *conf_arena_alloc(struct conf_arena *a, size_t n)
{
  n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
  struct conf_chunk *ch = a->head;
  if (!ch || ch->cap - ch->used < n) {
    /* 16 KB with the chunk and secmem headers: one secmem size class,
     * reused from its free list by the next snapshot */
    size_t std = 16384 - sizeof(*ch) - 16;
    size_t cap = n > std ? n : std;
    ch = secmem_xalloc(sizeof(*ch) + cap);
    ch->used = 0;
    ch->cap = cap;
    ch->next = a->head;
    a->head = ch;
  }
  void *p = (char *)ch->data + ch->used;
  ch->used += n;
  memset(p, 0, n);
  return p;
}

char *conf_arena_strndup(struct conf_arena *a, const char *s, size_t n)
{
  char *p = conf_arena_alloc(a, n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *conf_arena_strdup(struct conf_arena *a, const char *s)
{
  return conf_arena_strndup(a, s, strlen(s));
}

char *conf_arena_printf(struct conf_arena *a, const char *fmt, ...)
{
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  UTIL_ASSERT(n >= 0);
  if ((size_t)n < sizeof(tmp))
    return conf_arena_strndup(a, tmp, (size_t)n);
  char *p = conf_arena_alloc(a, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

void conf_arena_done(struct conf_arena *a)
{
  struct conf_chunk *ch = a->head;
  while (ch) {
    struct conf_chunk *next = ch->next;
    secmem_free(ch);
    ch = next;
  }
  a->head = NULL;
}

/* ---- maps ---- */

struct conf_sent {
  const char *key;
  uint32_t len, hash;
  int val;
};

static inline unsigned char fold(unsigned char c)
{
  return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

static uint32_t shash(const char *s, size_t n, bool icase)
{
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    h = (h ^ (icase ? fold(c) : c)) * 16777619u;
  }
  return h | 1; /* 0 marks an empty slot */
}

static bool skey_eq(const struct conf_sent *e, const char *s, size_t n, bool icase)
{
  if (e->len != n)
    return false;
  if (!icase)
    return !memcmp(e->key, s, n);
  for (size_t i = 0; i < n; i++)
    if (fold((unsigned char)e->key[i]) != fold((unsigned char)s[i]))
      return false;
  return true;
}

int conf_smap_get(const struct conf_smap *m, const char *key, size_t len)
{
  if (!m->cap)
    return -1;
  uint32_t h = shash(key, len, m->icase);
  for (uint32_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    const struct conf_sent *e = &m->e[i];
    if (!e->hash)
      return -1;
    if (e->hash == h && skey_eq(e, key, len, m->icase))
      return e->val;
  }
}

static void smap_insert(struct conf_sent *tab, uint32_t cap, struct conf_sent ent)
{
  uint32_t i = ent.hash & (cap - 1);
  while (tab[i].hash)
    i = (i + 1) & (cap - 1);
  tab[i] = ent;
}

/* Keep open-addressing map m (entries m->e, used when their `used` field
 * is non-zero) at most half full: double it and insert every entry again
 * with insert(table, cap, entry). */
#define MAP_ROOM(m, used, insert)                                                                  \
  do {                                                                                             \
    if (((m)->n + 1) * 2 > (m)->cap) {                                                             \
      uint32_t cap_ = (m)->cap ? (m)->cap * 2 : 16;                                                \
      __typeof__((m)->e) tab_ = util_xcalloc(cap_, sizeof(*tab_));                                 \
      for (uint32_t i_ = 0; i_ < (m)->cap; i_++)                                                   \
        if ((m)->e[i_].used)                                                                       \
          insert(tab_, cap_, (m)->e[i_]);                                                          \
      free((m)->e);                                                                                \
      (m)->e = tab_;                                                                               \
      (m)->cap = cap_;                                                                             \
    }                                                                                              \
  } while (0)

void conf_smap_put(struct conf_smap *m, const char *key, size_t len, int val)
{
  MAP_ROOM(m, hash, smap_insert);
  UTIL_ASSERT(len < UINT32_MAX);
  smap_insert(m->e, m->cap, (struct conf_sent){key, (uint32_t)len, shash(key, len, m->icase), val});
  m->n++;
}

void conf_smap_done(struct conf_smap *m)
{
  free(m->e);
  m->e = NULL;
  m->cap = m->n = 0;
}

struct conf_uent {
  uint64_t key; /* 0 = empty (parent ids and domain ids are never both 0) */
  struct conf_node *node;
};

static uint32_t uhash(uint64_t k)
{
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return (uint32_t)k;
}

struct conf_node *conf_umap_get(const struct conf_umap *m, uint64_t key)
{
  if (!m->cap)
    return NULL;
  for (uint32_t i = uhash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->e[i].key)
      return NULL;
    if (m->e[i].key == key)
      return m->e[i].node;
  }
}

static void umap_insert(struct conf_uent *tab, uint32_t cap, struct conf_uent ent)
{
  uint32_t i = uhash(ent.key) & (cap - 1);
  while (tab[i].key)
    i = (i + 1) & (cap - 1);
  tab[i] = ent;
}

void conf_umap_put(struct conf_umap *m, uint64_t key, struct conf_node *node)
{
  UTIL_ASSERT(key != 0);
  MAP_ROOM(m, key, umap_insert);
  umap_insert(m->e, m->cap, (struct conf_uent){key, node});
  m->n++;
}

void conf_umap_done(struct conf_umap *m)
{
  free(m->e);
  m->e = NULL;
  m->cap = m->n = 0;
}

/* ---- conversions ---- */

/* Parse a non-negative decimal integer; false on junk or overflow. */
static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
  if (n == 0)
    return false;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

static bool parse_i64(const char *s, int64_t *out)
{
  bool neg = *s == '-';
  if (*s == '-' || *s == '+')
    s++;
  uint64_t u;
  if (!parse_u64(s, strlen(s), &u) || u > (uint64_t)INT64_MAX)
    return false;
  *out = neg ? -(int64_t)u : (int64_t)u;
  return true;
}

static bool parse_bool(const char *s, bool *out)
{
  static const char *const yes[] = {"true", "yes", "on", "enabled", "enable", "1"};
  static const char *const no[] = {"false", "no", "off", "disabled", "disable", "0"};
  for (size_t i = 0; i < UTIL_ARRAY_LEN(yes); i++) {
    if (!strcasecmp(s, yes[i])) {
      *out = true;
      return true;
    }
    if (!strcasecmp(s, no[i])) {
      *out = false;
      return true;
    }
  }
  return false;
}

/* "30", "30s", "5m", "1h", "2d", "1w" -> seconds. */
static bool parse_interval(const char *s, int64_t *out)
{
  size_t n = strlen(s);
  uint64_t mult = 1;
  if (n > 1 && isalpha((unsigned char)s[n - 1])) {
    switch (fold((unsigned char)s[n - 1])) {
    case 's': mult = 1; break;
    case 'm': mult = 60; break;
    case 'h': mult = 3600; break;
    case 'd': mult = 86400; break;
    case 'w': mult = 604800; break;
    default: return false;
    }
    n--;
  }
  uint64_t v;
  if (!parse_u64(s, n, &v) || v > (uint64_t)INT64_MAX / mult)
    return false;
  *out = (int64_t)(v * mult);
  return true;
}

/* "1048576", "512K", "10M", "1G", "10MB" -> bytes (powers of 1024). */
static bool parse_size(const char *s, uint64_t *out)
{
  size_t n = strlen(s);
  if (n > 1 && fold((unsigned char)s[n - 1]) == 'b' && isalpha((unsigned char)s[n - 2]))
    n--;
  uint64_t mult = 1;
  if (n > 1 && isalpha((unsigned char)s[n - 1])) {
    switch (fold((unsigned char)s[n - 1])) {
    case 'k': mult = 1ull << 10; break;
    case 'm': mult = 1ull << 20; break;
    case 'g': mult = 1ull << 30; break;
    case 't': mult = 1ull << 40; break;
    default: return false;
    }
    n--;
  }
  uint64_t v;
  if (!parse_u64(s, n, &v) || v > UINT64_MAX / mult)
    return false;
  *out = v * mult;
  return true;
}

/* host[:port], [v6]:port, or a bare IPv6 literal (more than one colon). */
static bool parse_addr(struct conf_arena *a, const char *s, const char **host, uint16_t *port)
{
  size_t n = strlen(s);
  if (!n)
    return false;
  const char *colon = NULL;
  const char *h = s;
  size_t hn = n;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close || close == s + 1)
      return false;
    h = s + 1;
    hn = (size_t)(close - h);
    if (close[1] == ':')
      colon = close + 1;
    else if (close[1])
      return false;
  } else {
    const char *first = strchr(s, ':');
    if (first && first == strrchr(s, ':')) {
      colon = first;
      hn = (size_t)(first - s);
    }
  }
  if (!hn)
    return false;
  for (size_t i = 0; i < hn; i++)
    if (isspace((unsigned char)h[i]) || h[i] == '/' || h[i] == '[' || h[i] == ']')
      return false;
  *port = 0;
  if (colon) {
    uint64_t p;
    if (!parse_u64(colon + 1, strlen(colon + 1), &p) || p == 0 || p > 65535)
      return false;
    *port = (uint16_t)p;
  }
  *host = conf_arena_strndup(a, h, hn);
  return true;
}

static bool has_space(const char *s)
{
  for (; *s; s++)
    if (isspace((unsigned char)*s))
      return true;
  return false;
}

/* Index of word in the space-separated list words (any case); -1. */
static int word_index(const char *words, const char *w, const char **canon, size_t *canon_len)
{
  int idx = 0;
  size_t wl = strlen(w);
  for (const char *p = words; *p;) {
    while (*p == ' ')
      p++;
    const char *e = p;
    while (*e && *e != ' ')
      e++;
    if (e == p)
      break;
    const char *eq = memchr(p, '=', (size_t)(e - p));
    size_t kl = eq ? (size_t)(eq - p) : (size_t)(e - p);
    if (kl == wl && !strncasecmp(p, w, wl)) {
      *canon = p;
      *canon_len = (size_t)(e - p);
      return idx;
    }
    idx++;
    p = e;
  }
  return -1;
}

/* "a, b, c" form of a word list for error messages. */
static void words_list(const char *words, char *out, size_t n)
{
  size_t o = 0;
  out[0] = 0;
  for (const char *p = words; *p && o + 1 < n;) {
    while (*p == ' ')
      p++;
    const char *e = p;
    while (*e && *e != ' ' && *e != '=')
      e++;
    if (e == p)
      break;
    o += (size_t)snprintf(out + o, n - o, "%s%.*s", o ? ", " : "", (int)(e - p), p);
    if (o >= n)
      break;
    while (*e && *e != ' ')
      e++;
    p = e;
  }
}

static const char *type_name(enum conf_type t)
{
  static const char *const names[] = {
    [CONF_T_STR] = "string", [CONF_T_BOOL] = "boolean", [CONF_T_INT] = "integer",
    [CONF_T_INTERVAL] = "interval", [CONF_T_SIZE] = "size", [CONF_T_LIST] = "list",
    [CONF_T_DICT] = "dictionary", [CONF_T_THROTTLE] = "throttle", [CONF_T_ADDR] = "address",
    [CONF_T_PATH] = "path", [CONF_T_ENUM] = "word", [CONF_T_MODE] = "file mode",
  };
  return names[t];
}

const char *conf_type_name(enum conf_type t)
{
  return type_name(t);
}

/* Quote s for list/dict text: "..." with \" and \\ escaped. */
static void quote_into(struct buf *b, const char *s)
{
  buf_append(b, "\"", 1);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      buf_append(b, "\\", 1);
    buf_append(b, s, 1);
  }
  buf_append(b, "\"", 1);
}

static const char *arena_buf(struct conf_arena *a, struct buf *b)
{
  const char *s = conf_arena_strndup(a, (const char *)buf_head(b), buf_avail(b));
  buf_done(b, 0);
  return s;
}

int conf_value_convert(struct conf_arena *a, enum conf_opt opt, const struct conf_raw *raw,
                       const char *basedir, struct conf_value *out, char *why, size_t whylen)
{
  const struct conf_optdef *d = &conf_optdefs[opt];
  memset(out, 0, sizeof(*out));
  out->opt = (uint16_t)opt;
  out->i = d->type == CONF_T_ENUM ? -1 : 0;

  if (d->type == CONF_T_LIST) {
    struct buf b = {0};
    const char **items;
    uint32_t n;
    if (raw->kind == RAW_DICT) {
      snprintf(why, whylen, "expects a list ( \"a\" \"b\" ), not a dictionary");
      return -EINVAL;
    }
    if (raw->kind == RAW_SCALAR) { /* a single value is a one-element list */
      items = conf_arena_alloc(a, sizeof(char *));
      items[0] = raw->s;
      n = 1;
    } else {
      items = raw->items;
      n = raw->n;
    }
    buf_append(&b, "(", 1);
    for (uint32_t i = 0; i < n; i++) {
      buf_append(&b, " ", 1);
      quote_into(&b, items[i]);
    }
    buf_append(&b, " )", 2);
    out->items = items;
    out->nitems = n;
    out->text = arena_buf(a, &b);
    return 0;
  }
  if (d->type == CONF_T_DICT) {
    if (raw->kind != RAW_DICT) {
      snprintf(why, whylen, "expects a dictionary [ key = \"value\" ]");
      return -EINVAL;
    }
    struct buf b = {0};
    buf_append(&b, "[", 1);
    for (uint32_t i = 0; i < raw->n; i++)
      buf_printf(&b, " %s = ", raw->items[2 * i]), quote_into(&b, raw->items[2 * i + 1]);
    buf_append(&b, " ]", 2);
    out->items = raw->items;
    out->nitems = raw->n;
    out->text = arena_buf(a, &b);
    return 0;
  }
  if (raw->kind != RAW_SCALAR) {
    snprintf(why, whylen, "expects a single %s, not a %s", type_name(d->type),
             raw->kind == RAW_LIST ? "list" : "dictionary");
    return -EINVAL;
  }

  const char *s = raw->s;
  if ((d->flags & CONF_F_OFF) && !strcasecmp(s, "false")) { /* Momentum's "off" */
    out->off = true;
    out->text = "false";
    return 0;
  }
  switch (d->type) {
  case CONF_T_STR:
    out->text = s;
    return 0;
  case CONF_T_PATH:
    if (!*s) {
      snprintf(why, whylen, "an empty path is not allowed");
      return -EINVAL;
    }
    if (s[0] == '/' || !basedir)
      out->text = s;
    else
      out->text = conf_arena_printf(a, "%s/%s", basedir, s);
    return 0;
  case CONF_T_BOOL: {
    bool b;
    if (!parse_bool(s, &b)) {
      snprintf(why, whylen,
               "'%.200s' is not a boolean (use true/false, yes/no, on/off, enabled/disabled, 1/0)", s);
      return -EINVAL;
    }
    out->i = b;
    out->text = b ? "true" : "false";
    return 0;
  }
  case CONF_T_INT: {
    const char *canon;
    size_t cl;
    if (d->words && word_index(d->words, s, &canon, &cl) >= 0) {
      const char *eq = memchr(canon, '=', cl);
      UTIL_ASSERT(eq && parse_i64(conf_arena_strndup(a, eq + 1, cl - (size_t)(eq + 1 - canon)), &out->i));
      out->text = conf_arena_strndup(a, canon, (size_t)(eq - canon));
      return 0;
    }
    if (!parse_i64(s, &out->i) || out->i < 0) {
      char w[256] = "";
      if (d->words)
        words_list(d->words, w, sizeof(w));
      snprintf(why, whylen, "'%.200s' is not a non-negative integer%s%s", s, *w ? " or one of: " : "", w);
      return -EINVAL;
    }
    out->text = conf_arena_printf(a, "%" PRId64, out->i);
    return 0;
  }
  case CONF_T_MODE: {
    int64_t v = 0;
    size_t n = strlen(s);
    bool ok = n > 0 && n <= 5;
    for (size_t i = 0; ok && i < n; i++) {
      if (s[i] < '0' || s[i] > '7')
        ok = false;
      else
        v = v * 8 + (s[i] - '0');
    }
    if (!ok || v > 07777) {
      snprintf(why, whylen, "'%.200s' is not an octal file mode such as 0640", s);
      return -EINVAL;
    }
    out->i = v;
    out->text = conf_arena_printf(a, "%04" PRIo64, (uint64_t)v);
    return 0;
  }
  case CONF_T_INTERVAL:
    if (!parse_interval(s, &out->i)) {
      snprintf(why, whylen,
               "'%.200s' is not an interval (seconds, or a number followed by s, m, h, d or w)", s);
      return -EINVAL;
    }
    out->text = conf_arena_printf(a, "%" PRId64, out->i);
    return 0;
  case CONF_T_SIZE:
    if (!parse_size(s, &out->u)) {
      snprintf(why, whylen, "'%.200s' is not a size (bytes, or a number followed by K, M or G)", s);
      return -EINVAL;
    }
    out->text = conf_arena_printf(a, "%" PRIu64, out->u);
    return 0;
  case CONF_T_THROTTLE: {
    const char *slash = strchr(s, '/');
    uint64_t n = 0;
    int64_t per = 1;
    bool ok = parse_u64(s, slash ? (size_t)(slash - s) : strlen(s), &n) && n <= UINT32_MAX;
    if (ok && slash)
      ok = parse_interval(slash + 1, &per) && per > 0 && per <= UINT32_MAX;
    if (!ok) {
      snprintf(why, whylen, "'%.200s' is not a throttle (\"N\" per second or \"N/S\" per S seconds)", s);
      return -EINVAL;
    }
    out->thr_n = (uint32_t)n;
    out->thr_per = (uint32_t)per;
    out->text = per == 1 ? conf_arena_printf(a, "%" PRIu64, n)
                         : conf_arena_printf(a, "%" PRIu64 "/%" PRId64, n, per);
    return 0;
  }
  case CONF_T_ADDR:
    if (!strcmp(s, "*")) { /* any address */
      out->host = "*";
      out->text = "*";
      return 0;
    }
    out->text = s; /* as written, scheme included */
    if (opt == CONF_GATEWAY && s[0] == '#') {
      /* Momentum's relay idiom: "#name" names the Domain "#name" stanza,
       * whose options (Routes...) the view takes (conf.c); no host */
      if (!s[1] || has_space(s)) {
        snprintf(why, whylen, "'%.200s': a #name gateway needs a name without spaces", s);
        return -EINVAL;
      }
      return 0;
    }
    if (opt == CONF_GATEWAY) { /* a smart host may be named by URL */
      if (!strncasecmp(s, "smtps://", 8)) {
        out->implicit_tls = true;
        s += 8;
      } else if (!strncasecmp(s, "smtp://", 7)) {
        s += 7;
      }
    }
    if (!parse_addr(a, s, &out->host, &out->port)) {
      snprintf(why, whylen, "'%.200s' is not an address (host, host:port, or [IPv6]:port)", s);
      return -EINVAL;
    }
    return 0;
  case CONF_T_ENUM: {
    const char *canon;
    size_t cl;
    int idx = word_index(d->words, s, &canon, &cl);
    if (idx < 0) {
      char w[256];
      words_list(d->words, w, sizeof(w));
      snprintf(why, whylen, "'%.200s' is not one of: %s", s, w);
      return -EINVAL;
    }
    out->i = idx;
    out->text = conf_arena_strndup(a, canon, cl);
    return 0;
  }
  default:
    util_panic("conf: option %s has bad type %d", d->name, (int)d->type);
  }
}
