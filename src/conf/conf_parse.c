/* conf_parse.c owns the ecelerity.conf lexer and parser: it reads the
 * top file and its includes and fills an empty snapshot (scope nodes,
 * bindings, groups, module stanzas) with typed values.
 * It stops at the first error and reports it as file:line: message.
 * Never logs; reads files only. One thread per load. */
#include "conf_internal.h"
#include "secmem.h"
#include "panic.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum tk { TK_EOF, TK_WORD, TK_STR, TK_EQ, TK_LBRACE, TK_RBRACE, TK_LPAREN, TK_RPAREN, TK_LBRACK,
          TK_RBRACK, TK_ERR };

struct tok {
  enum tk k;
  const char *s; /* WORD: into the source; STR: decoded, in the arena */
  size_t n;
  unsigned line;
};

struct lex {
  const char *file; /* name for messages (as the user wrote it, joined) */
  const char *dir;  /* absolute directory of the file */
  const char *p, *end;
  unsigned line;
  bool has_peek;
  struct tok peek;
};

struct parser {
  struct conf *c;
  struct conf_error *err;
  unsigned flags;
  unsigned nfiles;
  unsigned nstack;
  struct {
    dev_t dev;
    ino_t ino;
  } stack[CONF_MAX_INCLUDE_DEPTH + 1];
};

enum { CX_TOP, CX_GROUP, CX_BINDING, CX_DOMAIN, CX_STANZA };
struct pctx {
  int kind;
  struct conf_node *node;
  int group;   /* CX_GROUP: the group; CX_BINDING in a group: its group; else -1 */
  int binding; /* CX_BINDING: the binding */
  struct conf_stanza *st;
  unsigned depth;
};

IMPETUS_PRINTF(4, 5)
static int fail(struct parser *p, const char *file, unsigned line, const char *fmt, ...)
{
  struct conf_error *e = p->err;
  if (e->msg[0])
    return -EINVAL; /* keep the first error */
  snprintf(e->file, sizeof(e->file), "%s", file ? file : "");
  e->line = line;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
  va_end(ap);
  if (!e->msg[0])
    snprintf(e->msg, sizeof(e->msg), "error");
  return -EINVAL;
}

/* ---- lexer ---- */

static bool is_special(char ch)
{
  return ch == '"' || ch == '\'' || ch == '=' || ch == '{' || ch == '}' || ch == '[' || ch == ']' ||
         ch == '(' || ch == ')' || ch == '#';
}

static int lex_raw(struct parser *p, struct lex *lx, struct tok *t)
{
  for (;;) {
    while (lx->p < lx->end && isspace((unsigned char)*lx->p)) {
      if (*lx->p == '\n')
        lx->line++;
      lx->p++;
    }
    if (lx->p >= lx->end) {
      *t = (struct tok){TK_EOF, NULL, 0, lx->line};
      return 0;
    }
    if (*lx->p == '#') {
      while (lx->p < lx->end && *lx->p != '\n')
        lx->p++;
      continue;
    }
    if (*lx->p == '/' && lx->p + 1 < lx->end && lx->p[1] == '*') {
      unsigned start = lx->line;
      lx->p += 2;
      for (;;) {
        if (lx->p + 1 >= lx->end) {
          lx->p = lx->end;
          return fail(p, lx->file, start, "unterminated comment: '/*' without '*/'");
        }
        if (lx->p[0] == '*' && lx->p[1] == '/') {
          lx->p += 2;
          break;
        }
        if (*lx->p == '\n')
          lx->line++;
        lx->p++;
      }
      continue;
    }
    break;
  }
  t->line = lx->line;
  char ch = *lx->p;
  static const struct {
    char ch;
    enum tk k;
  } punct[] = {{'=', TK_EQ}, {'{', TK_LBRACE}, {'}', TK_RBRACE}, {'(', TK_LPAREN},
               {')', TK_RPAREN}, {'[', TK_LBRACK}, {']', TK_RBRACK}};
  for (size_t i = 0; i < UTIL_ARRAY_LEN(punct); i++) {
    if (ch == punct[i].ch) {
      t->k = punct[i].k;
      t->s = lx->p;
      t->n = 1;
      lx->p++;
      return 0;
    }
  }
  if (ch == '"' || ch == '\'') {
    /* Quoted: \" and \\ are escapes (in "..."); any other backslash stays. */
    const char *q = lx->p + 1;
    size_t n = 0;
    for (; q < lx->end && *q != ch && *q != '\n'; q++, n++)
      if (ch == '"' && *q == '\\' && q + 1 < lx->end && (q[1] == '"' || q[1] == '\\'))
        q++;
    if (q >= lx->end || *q != ch)
      return fail(p, lx->file, lx->line, "unterminated string: missing closing %c", ch);
    char *out = conf_arena_alloc(&p->c->arena, n + 1);
    size_t o = 0;
    for (const char *r = lx->p + 1; r < q; r++) {
      if (ch == '"' && *r == '\\' && r + 1 < q && (r[1] == '"' || r[1] == '\\'))
        r++;
      out[o++] = *r;
    }
    out[o] = 0;
    t->k = TK_STR;
    t->s = out;
    t->n = o;
    lx->p = q + 1;
    return 0;
  }
  const char *start = lx->p;
  while (lx->p < lx->end && !isspace((unsigned char)*lx->p) && !is_special(*lx->p) &&
         !(lx->p[0] == '/' && lx->p + 1 < lx->end && lx->p[1] == '*'))
    lx->p++;
  t->k = TK_WORD;
  t->s = start;
  t->n = (size_t)(lx->p - start);
  return 0;
}

static int lex_next(struct parser *p, struct lex *lx, struct tok *t)
{
  if (lx->has_peek) {
    *t = lx->peek;
    lx->has_peek = false;
    return 0;
  }
  return lex_raw(p, lx, t);
}

static int lex_peek(struct parser *p, struct lex *lx, struct tok *t)
{
  if (!lx->has_peek) {
    int r = lex_raw(p, lx, &lx->peek);
    if (r < 0)
      return r;
    lx->has_peek = true;
  }
  *t = lx->peek;
  return 0;
}

static const char *tok_desc(const struct tok *t, char *buf, size_t n)
{
  if (t->k == TK_EOF)
    return "end of file";
  snprintf(buf, n, "%s%.*s%s", t->k == TK_STR ? "\"" : "'", (int)(t->n > 60 ? 60 : t->n), t->s,
           t->k == TK_STR ? "\"" : "'");
  return buf;
}

static const char *tok_dup(struct parser *p, const struct tok *t)
{
  if (t->k == TK_STR)
    return t->s; /* already a NUL-terminated arena copy */
  return conf_arena_strndup(&p->c->arena, t->s, t->n);
}

/* ---- values ---- */

static int parse_value(struct parser *p, struct lex *lx, const char *optname, unsigned optline,
                       struct conf_raw *rv)
{
  struct tok t;
  char d[80];
  int r = lex_next(p, lx, &t);
  if (r < 0)
    return r;
  memset(rv, 0, sizeof(*rv));
  if (t.k == TK_WORD || t.k == TK_STR) {
    rv->kind = RAW_SCALAR;
    rv->s = tok_dup(p, &t);
    return 0;
  }
  if (t.k != TK_LPAREN && t.k != TK_LBRACK)
    return fail(p, lx->file, optline, "option '%s': expected a value after '=', found %s", optname,
                tok_desc(&t, d, sizeof(d)));
  bool dict = t.k == TK_LBRACK;
  unsigned open = t.line;
  const char **items = NULL;
  uint32_t n = 0, cap = 0;
  for (;;) {
    if ((r = lex_next(p, lx, &t)) < 0)
      goto out;
    if (t.k == (dict ? TK_RBRACK : TK_RPAREN))
      break;
    if (t.k == TK_EOF) {
      r = fail(p, lx->file, open, "option '%s': unterminated %s: missing '%c'", optname,
               dict ? "dictionary" : "list", dict ? ']' : ')');
      goto out;
    }
    if (t.k != TK_WORD && t.k != TK_STR) {
      r = fail(p, lx->file, t.line, "option '%s': unexpected %s in a %s", optname,
               tok_desc(&t, d, sizeof(d)),
               dict ? "dictionary (write key = \"value\" pairs)"
                    : "list (write elements separated by spaces)");
      goto out;
    }
    if (n >= CONF_MAX_ITEMS) {
      r = fail(p, lx->file, t.line, "option '%s': more than %d elements", optname, CONF_MAX_ITEMS);
      goto out;
    }
    if (n + 2 > cap) {
      cap = cap ? cap * 2 : 8;
      items = util_xrealloc(items, cap * sizeof(*items));
    }
    items[n++] = tok_dup(p, &t);
    if (dict) {
      struct tok eq;
      if ((r = lex_next(p, lx, &eq)) < 0)
        goto out;
      if (eq.k != TK_EQ) {
        r = fail(p, lx->file, eq.line, "option '%s': expected '=' after dictionary key '%s'",
                 optname, items[n - 1]);
        goto out;
      }
      if ((r = lex_next(p, lx, &t)) < 0)
        goto out;
      if (t.k != TK_WORD && t.k != TK_STR) {
        r = fail(p, lx->file, t.line, "option '%s': dictionary key '%s' has no value", optname,
                 items[n - 1]);
        goto out;
      }
      items[n++] = tok_dup(p, &t);
    }
  }
  rv->kind = dict ? RAW_DICT : RAW_LIST;
  rv->n = dict ? n / 2 : n;
  rv->items = conf_arena_alloc(&p->c->arena, (n ? n : 1) * sizeof(char *));
  if (n)
    memcpy(rv->items, items, n * sizeof(char *));
  r = 0;
out:
  free(items);
  return r;
}

/* ---- options ---- */

static unsigned ctx_scope(const struct pctx *cx)
{
  switch (cx->kind) {
  case CX_TOP: return CONF_S_G;
  case CX_GROUP: return CONF_S_BG;
  case CX_BINDING: return CONF_S_B;
  case CX_DOMAIN: return CONF_S_D;
  case CX_STANZA: return CONF_S_MOD;
  default: util_panic("conf: bad context %d", cx->kind);
  }
}

static const char *ctx_name(const struct pctx *cx)
{
  switch (cx->kind) {
  case CX_TOP: return "global";
  case CX_GROUP: return "binding_group";
  case CX_BINDING: return "binding";
  case CX_DOMAIN: return "domain";
  default: return conf_stzdefs[cx->st->kind].name;
  }
}

static void scopes_text(unsigned s, char *out, size_t n)
{
  snprintf(out, n, "%s%s%s%s", s & CONF_S_G ? "global, " : "", s & CONF_S_BG ? "binding_group, " : "",
           s & CONF_S_B ? "binding, " : "", s & CONF_S_D ? "domain, " : "");
  size_t l = strlen(out);
  if (l >= 2)
    out[l - 2] = 0;
}

static int set_option(struct parser *p, struct lex *lx, struct pctx *cx, const char *name,
                      unsigned line)
{
  unsigned here = ctx_scope(cx);
  int found = -1, named = -1;
  for (int i = 0; i < CONF__COUNT && found < 0; i++) {
    const struct conf_optdef *d = &conf_optdefs[i];
    if (strcasecmp(d->name, name))
      continue;
    if (named < 0)
      named = i;
    if (!(d->scopes & here))
      continue;
    if (here == CONF_S_MOD && strcmp(d->module, "*") && !conf_stz_module_is(cx->st->kind, d->module))
      continue;
    found = i;
  }
  if (found < 0) {
    if (named < 0) {
      if (cx->kind == CX_STANZA)
        return fail(p, lx->file, line, "unknown option '%s' in %s stanza", name, ctx_name(cx));
      return fail(p, lx->file, line, "unknown option '%s'", name);
    }
    const struct conf_optdef *d = &conf_optdefs[named];
    if (d->scopes & CONF_S_MOD)
      return fail(p, lx->file, line, "option '%s' is only valid inside %s { }", d->name,
                  strcmp(d->module, "*") ? d->module : "a module stanza");
    char sc[128];
    scopes_text(d->scopes, sc, sizeof(sc));
    return fail(p, lx->file, line, "option '%s' is not valid in %s scope (valid in: %s)", d->name,
                ctx_name(cx), sc);
  }
  if (conf_optdefs[found].flags & CONF_F_NOTIMPL)
    return fail(p, lx->file, line,
                "option '%s' of Momentum's %s module is not implemented by Impetus (see docs/dkim.md)",
                conf_optdefs[found].name, ctx_name(cx));
  struct conf_raw raw;
  int r = parse_value(p, lx, conf_optdefs[found].name, line, &raw);
  if (r < 0)
    return r;
  struct conf_value *v = conf_arena_alloc(&p->c->arena, sizeof(*v));
  char why[512];
  if (conf_value_convert(&p->c->arena, (enum conf_opt)found, &raw, lx->dir, v, why, sizeof(why)) < 0)
    return fail(p, lx->file, line, "option '%s': %s", conf_optdefs[found].name, why);
  v->set = true;
  v->scope = cx->node->id;
  v->file = lx->file;
  v->line = line;
  conf_node_add(cx->node, v);
  const char *mod = conf_optdefs[found].module;
  if (mod && here != CONF_S_MOD) {
    int k = conf_stz_find(mod);
    if (k >= 0)
      p->c->module_used[k] = true;
  }
  return 0;
}

/* ---- stanzas ---- */

static int parse_block(struct parser *p, struct lex *lx, struct pctx *cx, unsigned open_line,
                       const char *what);
static int include_path(struct parser *p, struct lex *lx, struct pctx *cx, const char *path,
                        unsigned line);

static bool has_space_or(const char *s, const char *more)
{
  for (; *s; s++)
    if (isspace((unsigned char)*s) || (more && strchr(more, *s)))
      return true;
  return false;
}

static struct conf_node *domain_node(struct conf *c, struct conf_node *parent, const char *name)
{
  size_t len = strlen(name);
  int did = conf_smap_get(&c->dmap, name, len);
  if (did < 0) {
    char *low = conf_arena_strndup(&c->arena, name, len);
    for (char *q = low; *q; q++)
      *q = (char)tolower((unsigned char)*q);
    did = (int)++c->ndomains;
    conf_smap_put(&c->dmap, low, len, did);
  }
  uint64_t key = ((uint64_t)parent->id << 32) | (uint32_t)did;
  struct conf_node *n = conf_umap_get(&c->dnodes, key);
  if (!n) {
    char *low = conf_arena_strdup(&c->arena, name);
    for (char *q = low; *q; q++)
      *q = (char)tolower((unsigned char)*q);
    const char *path = parent->kind == NODE_GLOBAL
                         ? conf_arena_printf(&c->arena, "domain \"%s\"", low)
                         : conf_arena_printf(&c->arena, "%s domain \"%s\"", parent->path, low);
    n = conf_node_new(c, NODE_DOMAIN, path);
    conf_umap_put(&c->dnodes, key, n);
  }
  return n;
}

static int find_group(struct conf *c, const char *name)
{
  int g = conf_smap_get(&c->gmap, name, strlen(name));
  if (g >= 0)
    return g;
  UTIL_GROW(c->groups, c->ngroups, c->capgroups, 8);
  g = (int)c->ngroups++;
  const char *nm = conf_arena_strdup(&c->arena, name);
  c->groups[g] = (struct conf_group){
    nm, conf_node_new(c, NODE_GROUP, conf_arena_printf(&c->arena, "binding_group \"%s\"", nm))};
  conf_smap_put(&c->gmap, nm, strlen(nm), g);
  return g;
}

int conf_binding_add(struct conf *c, const char *name)
{
  int b = conf_smap_get(&c->bmap, name, strlen(name));
  if (b >= 0)
    return b;
  UTIL_GROW(c->bindings, c->nbindings, c->capbindings, 8);
  b = (int)c->nbindings++;
  const char *nm = conf_arena_strdup(&c->arena, name);
  c->bindings[b] = (struct conf_binding){.name = nm, .group = -1};
  conf_smap_put(&c->bmap, nm, strlen(nm), b);
  return b;
}

static struct conf_stanza *find_stanza(struct parser *p, struct conf_stanza *parent, int kind,
                                       const char *inst)
{
  struct conf *c = p->c;
  /* Key: parent node id, kind, instance (hashed: many stanzas stay linear). */
  const char *key = conf_arena_printf(&c->arena, "%u %d %c%s", parent ? parent->node->id : 0u, kind,
                                      inst ? '"' : '-', inst ? inst : "");
  int found = conf_smap_get(&c->stzmap, key, strlen(key));
  if (found >= 0)
    return c->stzall[found];
  struct conf_stanza *s = conf_arena_alloc(&c->arena, sizeof(*s));
  s->conf = c;
  s->kind = kind;
  s->instance = inst;
  s->parent = parent;
  const char *self = inst ? conf_arena_printf(&c->arena, "%s \"%s\"", conf_stzdefs[kind].name, inst)
                          : conf_stzdefs[kind].name;
  s->node = conf_node_new(c, NODE_STANZA,
                          parent ? conf_arena_printf(&c->arena, "%s %s", parent->node->path, self) : self);
  if (c->nstz == c->capstz) {
    c->capstz = c->capstz ? c->capstz * 2 : 8;
    c->stzall = util_xrealloc(c->stzall, c->capstz * sizeof(*c->stzall));
  }
  conf_smap_put(&c->stzmap, key, strlen(key), (int)c->nstz);
  c->stzall[c->nstz++] = s;
  struct conf_stanza **head = parent ? &parent->children : &c->stanzas;
  struct conf_stanza **tail = parent ? &parent->children_tail : &c->stanzas_tail;
  if (*tail)
    (*tail)->next = s;
  else
    *head = s;
  *tail = s;
  return s;
}

static int open_stanza(struct parser *p, struct lex *lx, struct pctx *cx, const char *kw,
                       const char *inst, unsigned line)
{
  struct conf *c = p->c;
  struct pctx in = {.group = -1, .binding = -1, .depth = cx->depth + 1};
  char what[600];
  if (in.depth > CONF_MAX_DEPTH)
    return fail(p, lx->file, line, "stanzas nested deeper than %d", CONF_MAX_DEPTH);

  if (!strcasecmp(kw, "domain")) {
    if (cx->kind == CX_DOMAIN)
      return fail(p, lx->file, line, "Domain stanzas cannot be nested in a Domain stanza");
    if (cx->kind == CX_STANZA)
      return fail(p, lx->file, line, "Domain is not valid inside a %s stanza", ctx_name(cx));
    if (!inst || !*inst)
      return fail(p, lx->file, line, "Domain needs a name: Domain \"example.com\" { ... }");
    size_t n = strlen(inst);
    if (n >= 2 && inst[0] == '/' && inst[n - 1] == '/')
      return fail(p, lx->file, line,
                  "regular-expression Domain stanzas (Domain \"%s\") are not supported; name each "
                  "domain in its own stanza", inst);
    if (n > 255)
      return fail(p, lx->file, line, "Domain name longer than 255 characters");
    in.kind = CX_DOMAIN;
    in.node = domain_node(c, cx->node, inst);
    snprintf(what, sizeof(what), "Domain \"%s\"", inst);
  } else if (!strcasecmp(kw, "binding")) {
    if (cx->kind != CX_TOP && cx->kind != CX_GROUP)
      return fail(p, lx->file, line,
                  "Binding is not valid inside %s (only at the top level or in a Binding_Group)",
                  ctx_name(cx));
    if (!inst || !*inst || has_space_or(inst, ":") || strlen(inst) > 255)
      return fail(p, lx->file, line,
                  "Binding needs a name without spaces or colons: Binding \"name\" { ... }");
    int b = conf_binding_add(c, inst);
    struct conf_binding *bd = &c->bindings[b];
    if (cx->kind == CX_GROUP) {
      if (bd->group >= 0 && bd->group != cx->group)
        return fail(p, lx->file, line, "Binding \"%s\" is already in Binding_Group \"%s\" (%s:%u)",
                    inst, c->groups[bd->group].name, bd->group_file, bd->group_line);
      bd->group = cx->group;
      bd->group_file = lx->file;
      bd->group_line = line;
      if (!bd->grp)
        bd->grp = conf_node_new(c, NODE_BINDING,
                                conf_arena_printf(&c->arena, "%s binding \"%s\"",
                                                  c->groups[cx->group].node->path, bd->name));
      in.node = bd->grp;
      in.group = cx->group;
    } else {
      if (!bd->top)
        bd->top = conf_node_new(c, NODE_BINDING, conf_arena_printf(&c->arena, "binding \"%s\"", bd->name));
      in.node = bd->top;
    }
    in.kind = CX_BINDING;
    in.binding = b;
    snprintf(what, sizeof(what), "Binding \"%s\"", inst);
  } else if (!strcasecmp(kw, "binding_group")) {
    if (cx->kind != CX_TOP)
      return fail(p, lx->file, line, "Binding_Group is only valid at the top level, not inside %s",
                  ctx_name(cx));
    if (!inst || !*inst || has_space_or(inst, NULL) || strlen(inst) > 255)
      return fail(p, lx->file, line,
                  "Binding_Group needs a name without spaces: Binding_Group \"name\" { ... }");
    in.kind = CX_GROUP;
    in.group = find_group(c, inst);
    in.node = c->groups[in.group].node;
    snprintf(what, sizeof(what), "Binding_Group \"%s\"", inst);
  } else {
    int k = conf_stz_find_in(kw, cx->kind == CX_STANZA ? cx->st->kind : STZ_NONE);
    if (k < 0)
      return fail(p, lx->file, line, "unknown stanza '%s'", kw);
    const struct conf_stzdef *sd = &conf_stzdefs[k];
    if (sd->parent == STZ_NONE && cx->kind != CX_TOP)
      return fail(p, lx->file, line, "%s stanza is only valid at the top level", sd->name);
    if (sd->parent != STZ_NONE && (cx->kind != CX_STANZA || cx->st->kind != sd->parent))
      return fail(p, lx->file, line, "%s stanza is only valid inside %s { }", sd->name,
                  conf_stzdefs[sd->parent].name);
    if (sd->instance == CONF_INST_NONE && inst)
      return fail(p, lx->file, line, "%s stanza takes no name: %s { ... }", sd->name, sd->name);
    if (sd->instance == CONF_INST_REQUIRED && (!inst || !*inst))
      return fail(p, lx->file, line, "%s stanza needs a name: %s \"name\" { ... }", sd->name, sd->name);
    if (sd->instance == CONF_INST_OPTIONAL && !inst)
      inst = sd->name;
    in.kind = CX_STANZA;
    in.st = find_stanza(p, cx->kind == CX_STANZA ? cx->st : NULL, k,
                        inst ? conf_arena_strdup(&c->arena, inst) : NULL);
    if (!in.st->file) {
      in.st->file = lx->file;
      in.st->line = line;
    }
    in.node = in.st->node;
    snprintf(what, sizeof(what), inst ? "%s \"%s\"" : "%s", kw, inst);
  }
  return parse_block(p, lx, &in, line, what);
}

static bool valid_name(const struct tok *t)
{
  if (t->k != TK_WORD || t->n == 0 || t->n > 128)
    return false;
  for (size_t i = 0; i < t->n; i++)
    if (!isalnum((unsigned char)t->s[i]) && t->s[i] != '_' && t->s[i] != '-')
      return false;
  return true;
}

static int parse_block(struct parser *p, struct lex *lx, struct pctx *cx, unsigned open_line,
                       const char *what)
{
  for (;;) {
    struct tok t, nx;
    char d[80];
    int r = lex_next(p, lx, &t);
    if (r < 0)
      return r;
    if (t.k == TK_EOF) {
      if (what)
        return fail(p, lx->file, open_line, "%s { is never closed: missing '}'", what);
      return 0;
    }
    if (t.k == TK_RBRACE) {
      if (what)
        return 0;
      return fail(p, lx->file, t.line, "unexpected '}': no stanza is open");
    }
    if (!valid_name(&t))
      return fail(p, lx->file, t.line, "expected an option or stanza name, found %s",
                  tok_desc(&t, d, sizeof(d)));
    char name[130];
    snprintf(name, sizeof(name), "%.*s", (int)t.n, t.s);

    if (!strcasecmp(name, "include") || !strcasecmp(name, "readonly_include")) {
      if ((r = lex_next(p, lx, &nx)) < 0)
        return r;
      if (nx.k != TK_STR && nx.k != TK_WORD)
        return fail(p, lx->file, t.line, "%s needs a path: include \"file-or-directory\"", name);
      if ((r = include_path(p, lx, cx, tok_dup(p, &nx), t.line)) < 0)
        return r;
      continue;
    }
    if ((r = lex_peek(p, lx, &nx)) < 0)
      return r;
    if (nx.k == TK_EQ) {
      lex_next(p, lx, &nx);
      if ((r = set_option(p, lx, cx, name, t.line)) < 0)
        return r;
      continue;
    }
    if (nx.k == TK_LBRACE) {
      lex_next(p, lx, &nx);
      if ((r = open_stanza(p, lx, cx, name, NULL, t.line)) < 0)
        return r;
      continue;
    }
    if (nx.k == TK_STR || nx.k == TK_WORD) {
      struct tok inst = nx, br;
      lex_next(p, lx, &nx);
      if ((r = lex_peek(p, lx, &br)) < 0)
        return r;
      if (br.k == TK_LBRACE) {
        lex_next(p, lx, &br);
        if ((r = open_stanza(p, lx, cx, name, tok_dup(p, &inst), t.line)) < 0)
          return r;
        continue;
      }
      bool is_opt = false;
      for (int i = 0; i < CONF__COUNT && !is_opt; i++)
        is_opt = !strcasecmp(conf_optdefs[i].name, name);
      if (is_opt)
        return fail(p, lx->file, t.line, "missing '=' between '%s' and its value", name);
      return fail(p, lx->file, br.line, "expected '{' after %s %s, found %s", name,
                  tok_desc(&inst, d, sizeof(d)), tok_desc(&br, d + 40, sizeof(d) - 40));
    }
    return fail(p, lx->file, t.line, "expected '=' or '{' after '%s', found %s", name,
                tok_desc(&nx, d, sizeof(d)));
  }
}

/* ---- files and includes ---- */

/* Reject NUL bytes and over-long lines before lexing. */
static int check_text(struct parser *p, const char *file, const char *data, size_t len)
{
  unsigned line = 1;
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || data[i] == '\n') {
      if (i - start > CONF_MAX_LINE)
        return fail(p, file, line, "line longer than %d bytes", CONF_MAX_LINE);
      line++;
      start = i + 1;
    } else if (data[i] == 0) {
      return fail(p, file, line, "NUL byte in configuration text");
    }
  }
  return 0;
}

static int parse_text(struct parser *p, const char *file, const char *dir, const char *data,
                      size_t len, struct pctx *cx)
{
  if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) { /* a UTF-8 byte-order mark */
    data += 3;
    len -= 3;
  }
  int r = check_text(p, file, data, len);
  if (r < 0)
    return r;
  struct lex lx = {.file = file, .dir = dir, .p = data, .end = data + len, .line = 1};
  return parse_block(p, &lx, cx, 0, NULL);
}

static char *dir_of(const char *path)
{
  char tmp[PATH_MAX];
  const char *slash = strrchr(path, '/');
  if (!slash)
    snprintf(tmp, sizeof(tmp), ".");
  else if (slash == path)
    snprintf(tmp, sizeof(tmp), "/");
  else
    snprintf(tmp, sizeof(tmp), "%.*s", (int)(slash - path), path);
  return realpath(tmp, NULL);
}

/* Read and parse one regular file. from/line: the include that asked. */
static int parse_file(struct parser *p, const char *name, struct pctx *cx, const char *from,
                      unsigned line)
{
  struct conf *c = p->c;
  int fd = open(name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (from)
      return fail(p, from, line, "include \"%s\": %s", name, strerror(e));
    return fail(p, name, 0, "cannot read configuration: %s", strerror(e));
  }
  struct stat st;
  int r = 0;
  char *data = NULL;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    r = from ? fail(p, from, line, "include \"%s\": not a regular file", name)
             : fail(p, name, 0, "not a regular file");
    goto out;
  }
  for (unsigned i = 0; i < p->nstack; i++)
    if (p->stack[i].dev == st.st_dev && p->stack[i].ino == st.st_ino) {
      r = fail(p, from, line, "include loop: \"%s\" is already being read", name);
      goto out;
    }
  if (p->nstack > CONF_MAX_INCLUDE_DEPTH) {
    r = fail(p, from, line, "includes nested deeper than %d", CONF_MAX_INCLUDE_DEPTH);
    goto out;
  }
  if (++p->nfiles > CONF_MAX_FILES) {
    r = fail(p, from, line, "more than %d configuration files included", CONF_MAX_FILES);
    goto out;
  }
  if (st.st_size > (off_t)CONF_MAX_FILE) {
    r = from ? fail(p, name, 0, "file larger than %u bytes", CONF_MAX_FILE)
             : fail(p, name, 0, "file larger than %u bytes", CONF_MAX_FILE);
    goto out;
  }
  /* the text holds passwords: secmem (out of core dumps, wiped when freed) */
  size_t len = 0, cap = (size_t)st.st_size + 1;
  data = secmem_xalloc(cap);
  for (;;) {
    if (len == cap) {
      if (cap > CONF_MAX_FILE) {
        r = fail(p, name, 0, "file larger than %u bytes", CONF_MAX_FILE);
        goto out;
      }
      cap *= 2;
      data = secmem_xrealloc(data, cap);
    }
    ssize_t n = read(fd, data + len, cap - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      r = fail(p, name, 0, "read error: %s", strerror(errno));
      goto out;
    }
    if (n == 0)
      break;
    len += (size_t)n;
  }
  char *dir = dir_of(name);
  if (!dir) {
    r = fail(p, name, 0, "cannot resolve directory: %s", strerror(errno));
    goto out;
  }
  const char *adir = conf_arena_strdup(&c->arena, dir);
  free(dir);
  p->stack[p->nstack].dev = st.st_dev;
  p->stack[p->nstack].ino = st.st_ino;
  p->nstack++;
  r = parse_text(p, conf_arena_strdup(&c->arena, name), adir, data, len, cx);
  p->nstack--;
out:
  secmem_free(data);
  close(fd);
  return r;
}

static int cmp_str(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int include_path(struct parser *p, struct lex *lx, struct pctx *cx, const char *path,
                        unsigned line)
{
  if (p->flags & CONF_PARSE_NO_INCLUDE)
    return fail(p, lx->file, line, "include is not allowed in this configuration");
  if (!*path)
    return fail(p, lx->file, line, "include needs a non-empty path");
  /* Relative to the including file's directory, keeping the user's form. */
  char full[PATH_MAX];
  const char *slash = strrchr(lx->file, '/');
  int fl;
  if (path[0] == '/')
    fl = snprintf(full, sizeof(full), "%s", path);
  else if (slash)
    fl = snprintf(full, sizeof(full), "%.*s/%s", (int)(slash - lx->file), lx->file, path);
  else /* a file named without a directory, or a buffer: its directory */
    fl = snprintf(full, sizeof(full), "%s/%s", lx->dir, path);
  if (fl < 0 || (size_t)fl >= sizeof(full))
    return fail(p, lx->file, line, "include path too long");
  struct stat st;
  if (stat(full, &st) < 0)
    return fail(p, lx->file, line, "include \"%s\": %s", full, strerror(errno));
  if (!S_ISDIR(st.st_mode))
    return parse_file(p, full, cx, lx->file, line);

  DIR *dp = opendir(full);
  if (!dp)
    return fail(p, lx->file, line, "include \"%s\": %s", full, strerror(errno));
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  int r = 0;
  while ((de = readdir(dp))) {
    if (de->d_name[0] == '.')
      continue;
    if (n >= CONF_MAX_FILES) {
      r = fail(p, lx->file, line, "include \"%s\": more than %d files", full, CONF_MAX_FILES);
      break;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      names = util_xrealloc(names, cap * sizeof(*names));
    }
    names[n++] = util_xstrdup(de->d_name);
  }
  closedir(dp);
  if (names)
    qsort(names, n, sizeof(*names), cmp_str);
  for (size_t i = 0; i < n && r == 0; i++) {
    char file[PATH_MAX];
    int l = snprintf(file, sizeof(file), "%s/%s", full, names[i]);
    if (l < 0 || (size_t)l >= sizeof(file))
      continue;
    struct stat fst;
    if (stat(file, &fst) < 0 || !S_ISREG(fst.st_mode))
      continue; /* sub-directories and specials are not read */
    r = parse_file(p, file, cx, lx->file, line);
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return r;
}

/* ---- entry points ---- */

static struct conf *finish(struct parser *p, int r)
{
  struct conf *c = p->c;
  char why[512];
  if (r == 0 && (r = conf_finish(c, why, sizeof(why))) < 0)
    fail(p, c->path, 0, "%s", why);
  if (r == 0)
    r = conf_check(c, p->err);
  if (r < 0) {
    conf_unref(c);
    return NULL;
  }
  return c;
}

struct conf *conf_load(const char *path, struct conf_error *err)
{
  struct conf_error dummy;
  if (!err)
    err = &dummy;
  memset(err, 0, sizeof(*err));
  struct parser p = {.c = conf_new_empty(), .err = err};
  char *abs = realpath(path, NULL);
  p.c->path = conf_arena_strdup(&p.c->arena, abs ? abs : path);
  free(abs);
  struct pctx cx = {.kind = CX_TOP, .node = p.c->global, .group = -1, .binding = -1};
  return finish(&p, parse_file(&p, path, &cx, NULL, 0));
}

struct conf *conf_parse_buffer(const char *data, size_t len, const char *name, const char *basedir,
                               unsigned flags, struct conf_error *err)
{
  struct conf_error dummy;
  if (!err)
    err = &dummy;
  memset(err, 0, sizeof(*err));
  struct parser p = {.c = conf_new_empty(), .err = err, .flags = flags};
  const char *nm = conf_arena_strdup(&p.c->arena, name ? name : "(buffer)");
  p.c->path = nm;
  char *dir = realpath(basedir ? basedir : ".", NULL);
  const char *adir = conf_arena_strdup(&p.c->arena, dir ? dir : ".");
  free(dir);
  struct pctx cx = {.kind = CX_TOP, .node = p.c->global, .group = -1, .binding = -1};
  int r = len > CONF_MAX_FILE ? fail(&p, nm, 0, "text larger than %u bytes", CONF_MAX_FILE)
                              : parse_text(&p, nm, adir, data, len, &cx);
  return finish(&p, r);
}
