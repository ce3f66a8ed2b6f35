/* conf.c owns the configuration snapshot: its life cycle (refcount),
 * the per-(binding, domain) views resolved through the fallback chain,
 * the typed getters, module stanzas, eval, the restart diff and the
 * generated option reference.
 * A finished snapshot is immutable; views are built on demand and
 * published with a compare-and-swap, so any thread may read. Never logs. */
#include "conf_internal.h"
#include "buf.h"
#include "panic.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- building ---- */

struct conf_node *conf_node_new(struct conf *c, int kind, const char *path)
{
  if (c->nnodes == c->capnodes) {
    c->capnodes = c->capnodes ? c->capnodes * 2 : 16;
    c->nodes = util_xrealloc(c->nodes, c->capnodes * sizeof(*c->nodes));
  }
  struct conf_node *n = conf_arena_alloc(&c->arena, sizeof(*n));
  n->id = c->nnodes;
  n->kind = kind;
  n->path = path;
  c->nodes[c->nnodes++] = n;
  return n;
}

void conf_node_add(struct conf_node *n, const struct conf_value *v)
{
  if (n->nvals == n->capvals) {
    n->capvals = n->capvals ? n->capvals * 2 : 4;
    n->vals = util_xrealloc(n->vals, n->capvals * sizeof(*n->vals));
  }
  n->vals[n->nvals++] = v;
}


struct conf *conf_new_empty(void)
{
  struct conf *c = util_xcalloc(1, sizeof(*c));
  atomic_init(&c->refs, 1);
  c->dmap.icase = true;
  conf_node_new(c, NODE_GLOBAL, "(default)"); /* id 0: the built-in defaults */
  c->global = conf_node_new(c, NODE_GLOBAL, "global");
  conf_binding_add(c, "default"); /* binding id 0 */
  return c;
}

static void apply(struct conf_view *v, const struct conf_node *n)
{
  if (!n)
    return;
  for (uint32_t i = 0; i < n->nvals; i++)
    v->v[n->vals[i]->opt] = n->vals[i];
}

static void stanza_views(struct conf *c, struct conf_stanza *s)
{
  for (; s; s = s->next) {
    s->view.conf = c;
    for (int i = 0; i < CONF__COUNT; i++)
      s->view.v[i] = &c->defaults[i];
    apply(&s->view, s->node);
    if (s->view.v[CONF_MOD_ENABLED]->i)
      c->module_enabled[s->kind] = true;
    stanza_views(c, s->children);
  }
}

int conf_finish(struct conf *c, char *why, size_t whylen)
{
  for (int i = 0; i < CONF__COUNT; i++) {
    const struct conf_optdef *d = &conf_optdefs[i];
    struct conf_value *v = &c->defaults[i];
    if (d->def) {
      struct conf_raw raw = {.kind = RAW_SCALAR, .s = d->def};
      char w[256];
      if (conf_value_convert(&c->arena, (enum conf_opt)i, &raw, NULL, v, w, sizeof(w)) < 0)
        util_panic("conf: default of %s: %s", d->name, w);
    } else {
      memset(v, 0, sizeof(*v));
      v->opt = (uint16_t)i;
      v->i = d->type == CONF_T_ENUM ? -1 : 0;
    }
    v->set = false;
    v->scope = 0;
  }
  c->global_view.conf = c;
  for (int i = 0; i < CONF__COUNT; i++)
    c->global_view.v[i] = &c->defaults[i];
  apply(&c->global_view, c->global);
  for (int k = 0; k < STZ__COUNT; k++)
    c->module_enabled[k] = c->module_used[k];
  stanza_views(c, c->stanzas);
  c->nvblocks = c->ndomains / CONF_VBLOCK + 1;
  c->rows = util_xcalloc(c->nbindings, sizeof(*c->rows));
  (void)why;
  (void)whylen;
  return 0;
}

/* ---- life cycle ---- */

struct conf *conf_ref(struct conf *c)
{
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  return c;
}

static void conf_free(struct conf *c)
{
  if (c->rows) {
    for (uint32_t b = 0; b < c->nbindings; b++) {
      void **row = __atomic_load_n(&c->rows[b], __ATOMIC_ACQUIRE);
      if (!row)
        continue;
      for (uint32_t k = 0; k < c->nvblocks; k++) {
        void **blk = __atomic_load_n(&row[k], __ATOMIC_ACQUIRE);
        if (!blk)
          continue;
        for (uint32_t d = 0; d < CONF_VBLOCK; d++)
          free(__atomic_load_n(&blk[d], __ATOMIC_ACQUIRE));
        free(blk);
      }
      free(row);
    }
    free(c->rows);
  }
  for (uint32_t i = 0; i < c->nnodes; i++)
    free(c->nodes[i]->vals);
  free(c->nodes);
  free(c->groups);
  free(c->bindings);
  conf_smap_done(&c->gmap);
  conf_smap_done(&c->bmap);
  conf_smap_done(&c->dmap);
  conf_smap_done(&c->stzmap);
  free(c->stzall);
  conf_umap_done(&c->dnodes);
  conf_arena_done(&c->arena);
  free(c);
}

void conf_unref(struct conf *c)
{
  if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
    conf_free(c);
}

const char *conf_path(const struct conf *c)
{
  return c->path;
}

const char *conf_error_str(const struct conf_error *err, char *out, size_t n)
{
  if (err->file[0] && err->line)
    snprintf(out, n, "%s:%u: %s", err->file, err->line, err->msg);
  else if (err->file[0])
    snprintf(out, n, "%s: %s", err->file, err->msg);
  else
    snprintf(out, n, "%s", err->msg);
  return out;
}

/* ---- views ---- */

static struct conf_node *dnode(const struct conf *c, const struct conf_node *parent, uint32_t did)
{
  if (!parent || !did)
    return NULL;
  return conf_umap_get(&c->dnodes, ((uint64_t)parent->id << 32) | did);
}

uint32_t conf_domain_id(const struct conf *c, const char *domain)
{
  if (!domain || !c->ndomains)
    return 0;
  int d = conf_smap_get(&c->dmap, domain, strlen(domain));
  return d < 0 ? 0 : (uint32_t)d;
}

/* Fill v for (group, binding, domain id), least specific first so the
 * most specific scope that sets an option wins. */
static void view_fill_plain(const struct conf *c, struct conf_view *v, int group,
                            const struct conf_binding *b, uint32_t did)
{
  const struct conf_node *g = group >= 0 ? c->groups[group].node : NULL;
  const struct conf_node *bt = b ? b->top : NULL, *bg = b ? b->grp : NULL;
  v->conf = c;
  for (int i = 0; i < CONF__COUNT; i++)
    v->v[i] = &c->defaults[i];
  apply(v, c->global);           /* global */
  apply(v, dnode(c, c->global, did)); /* domain */
  apply(v, g);                   /* binding_group */
  apply(v, bt);                  /* binding */
  apply(v, bg);                  /* binding_group::binding */
  apply(v, dnode(c, g, did));    /* binding_group::domain */
  apply(v, dnode(c, bt, did));   /* binding::domain */
  apply(v, dnode(c, bg, did));   /* binding_group::binding::domain */
}

/* Fill v for (group, binding, domain id), least specific first so the
 * most specific scope that sets an option wins; then Momentum's relay
 * idiom: when the Gateway is "#name", what the Domain "#name" stanzas set
 * (top level, in the group, in the binding) goes on top: their Routes,
 * TLS and the rest describe the relay the mail goes to, while options they
 * leave alone keep the recipient domain's values (its queue is still the
 * recipient domain's). The Gateway keeps the "#name" text with no host,
 * so the worker follows the Routes. conf_check makes sure the stanza
 * exists and gives Routes. Returns the "#name" domain's id when one
 * applied, else did. */
uint32_t conf_view_fill(const struct conf *c, struct conf_view *v, int group,
                        const struct conf_binding *b, uint32_t did)
{
  view_fill_plain(c, v, group, b, did);
  const struct conf_value *gw = v->v[CONF_GATEWAY];
  if (!gw->text || gw->text[0] != '#' || gw->host)
    return did;
  uint32_t rd = conf_domain_id(c, gw->text);
  if (!rd || rd == did)
    return did;
  const struct conf_node *g = group >= 0 ? c->groups[group].node : NULL;
  apply(v, dnode(c, c->global, rd));
  apply(v, dnode(c, g, rd));
  apply(v, dnode(c, b ? b->top : NULL, rd));
  apply(v, dnode(c, b ? b->grp : NULL, rd));
  return rd;
}

const struct conf_view *conf_global(const struct conf *c)
{
  return &c->global_view;
}

/* The array at *slot, allocating it zeroed (n elements) on first use;
 * racing threads agree on one copy. */
static void *publish(void **slot, size_t n, size_t size)
{
  void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (p)
    return p;
  void *fresh = util_xcalloc(n, size);
  void *expected = NULL;
  if (__atomic_compare_exchange_n(slot, &expected, fresh, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return fresh;
  free(fresh);
  return expected;
}

const struct conf_view *conf_view_by_id(struct conf *c, int binding_id, const char *domain)
{
  UTIL_ASSERT(binding_id >= 0 && (uint32_t)binding_id < c->nbindings);
  uint32_t did = conf_domain_id(c, domain);
  void **row = publish(&c->rows[binding_id], c->nvblocks, sizeof(void *));
  void **blk = publish(&row[did / CONF_VBLOCK], CONF_VBLOCK, sizeof(void *));
  void **slot = &blk[did % CONF_VBLOCK];
  struct conf_view *v = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (v)
    return v;
  struct conf_view *fresh = util_xmalloc(sizeof(*fresh));
  const struct conf_binding *b = &c->bindings[binding_id];
  conf_view_fill(c, fresh, b->group, b, did);
  void *expected = NULL;
  if (__atomic_compare_exchange_n(slot, &expected, (void *)fresh, false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE))
    return fresh;
  free(fresh); /* another thread built the same view first */
  return expected;
}

const struct conf_view *conf_view_get(struct conf *c, const char *binding, const char *domain)
{
  int b = binding ? conf_smap_get(&c->bmap, binding, strlen(binding)) : 0;
  if (b < 0)
    return NULL;
  return conf_view_by_id(c, b, domain);
}

size_t conf_binding_count(const struct conf *c)
{
  return c->nbindings;
}

int conf_binding_id(const struct conf *c, const char *name)
{
  int b = conf_smap_get(&c->bmap, name, strlen(name));
  return b < 0 ? -ENOENT : b;
}

const char *conf_binding_name(const struct conf *c, int id)
{
  UTIL_ASSERT(id >= 0 && (uint32_t)id < c->nbindings);
  return c->bindings[id].name;
}

const char *conf_binding_group(const struct conf *c, int id)
{
  UTIL_ASSERT(id >= 0 && (uint32_t)id < c->nbindings);
  int g = c->bindings[id].group;
  return g < 0 ? NULL : c->groups[g].name;
}

size_t conf_group_count(const struct conf *c)
{
  return c->ngroups;
}

const char *conf_group_name(const struct conf *c, size_t i)
{
  UTIL_ASSERT(i < c->ngroups);
  return c->groups[i].name;
}

/* ---- getters ---- */

#define GET(v, o, ok) \
  (UTIL_DASSERT((unsigned)(o) < CONF__COUNT && (ok)), (v)->v[o])

const char *conf_str(const struct conf_view *v, enum conf_opt o)
{
  enum conf_type t = conf_optdefs[o].type;
  (void)t;
  const struct conf_value *x = GET(v, o, t == CONF_T_STR || t == CONF_T_PATH || t == CONF_T_ENUM || t == CONF_T_ADDR);
  return x->off ? NULL : x->text;
}

bool conf_is_off(const struct conf_view *v, enum conf_opt o)
{
  const struct conf_value *x = GET(v, o, 1);
  return x->off && x->set;
}

bool conf_bool(const struct conf_view *v, enum conf_opt o)
{
  return GET(v, o, conf_optdefs[o].type == CONF_T_BOOL)->i != 0;
}

int64_t conf_int(const struct conf_view *v, enum conf_opt o)
{
  return GET(v, o, conf_optdefs[o].type == CONF_T_INT || conf_optdefs[o].type == CONF_T_MODE)->i;
}

int64_t conf_interval(const struct conf_view *v, enum conf_opt o)
{
  return GET(v, o, conf_optdefs[o].type == CONF_T_INTERVAL)->i;
}

uint64_t conf_size(const struct conf_view *v, enum conf_opt o)
{
  return GET(v, o, conf_optdefs[o].type == CONF_T_SIZE)->u;
}

int conf_enum(const struct conf_view *v, enum conf_opt o)
{
  return (int)GET(v, o, conf_optdefs[o].type == CONF_T_ENUM)->i;
}

const char *const *conf_list(const struct conf_view *v, enum conf_opt o, size_t *n)
{
  const struct conf_value *x = GET(v, o, conf_optdefs[o].type == CONF_T_LIST);
  *n = x->nitems;
  return x->items;
}

const char *const *conf_dict(const struct conf_view *v, enum conf_opt o, size_t *npairs)
{
  const struct conf_value *x = GET(v, o, conf_optdefs[o].type == CONF_T_DICT);
  *npairs = x->nitems;
  return x->items;
}

struct conf_throttle conf_throttle(const struct conf_view *v, enum conf_opt o)
{
  const struct conf_value *x = GET(v, o, conf_optdefs[o].type == CONF_T_THROTTLE);
  return (struct conf_throttle){x->thr_n, x->thr_per, x->scope};
}

struct conf_addr conf_addr(const struct conf_view *v, enum conf_opt o)
{
  const struct conf_value *x = GET(v, o, conf_optdefs[o].type == CONF_T_ADDR);
  return (struct conf_addr){x->host, x->port, x->implicit_tls};
}

bool conf_is_set(const struct conf_view *v, enum conf_opt o)
{
  return GET(v, o, 1)->set;
}

uint32_t conf_scope(const struct conf_view *v, enum conf_opt o)
{
  return GET(v, o, 1)->scope;
}

const char *conf_scope_name(const struct conf *c, uint32_t scope)
{
  if (scope >= c->nnodes)
    return NULL;
  return c->nodes[scope]->path;
}

const char *conf_origin(const struct conf_view *v, enum conf_opt o, unsigned *line)
{
  const struct conf_value *x = GET(v, o, 1);
  if (line)
    *line = x->set ? x->line : 0;
  return x->set ? x->file : NULL;
}

/* ---- table ---- */

const char *conf_opt_name(enum conf_opt o)
{
  UTIL_ASSERT((unsigned)o < CONF__COUNT);
  return conf_optdefs[o].name;
}

enum conf_type conf_opt_type(enum conf_opt o)
{
  UTIL_ASSERT((unsigned)o < CONF__COUNT);
  return conf_optdefs[o].type;
}

void conf_each_set(const struct conf *c, enum conf_opt o,
                   void (*fn)(void *arg, const char *text), void *arg)
{
  for (uint32_t i = 0; i < c->nnodes; i++) {
    const struct conf_node *n = c->nodes[i];
    for (uint32_t j = 0; j < n->nvals; j++)
      if (n->vals[j]->opt == o && n->vals[j]->set && n->vals[j]->text)
        fn(arg, n->vals[j]->text);
  }
}

bool conf_opt_secret(enum conf_opt o)
{
  UTIL_ASSERT((unsigned)o < CONF__COUNT);
  return conf_optdefs[o].flags & CONF_F_SECRET;
}

int conf_opt_find(const char *name)
{
  for (int i = 0; i < CONF__COUNT; i++)
    if (!(conf_optdefs[i].scopes & CONF_S_MOD) && !strcasecmp(conf_optdefs[i].name, name))
      return i;
  return -ENOENT;
}

/* ---- stanzas ---- */

static const struct conf_stanza *first_of(const struct conf_stanza *s, int kind)
{
  for (; s; s = s->next)
    if (s->kind == kind)
      return s;
  return NULL;
}

const struct conf_stanza *conf_stanza_first(const struct conf *c, const char *kind)
{
  int k = conf_stz_find(kind);
  return k < 0 ? NULL : first_of(c->stanzas, k);
}

const struct conf_stanza *conf_stanza_child(const struct conf_stanza *st, const char *kind)
{
  int k = conf_stz_find_in(kind, st->kind);
  return k < 0 ? NULL : first_of(st->children, k);
}

const struct conf_stanza *conf_stanza_next(const struct conf_stanza *st)
{
  return first_of(st->next, st->kind);
}

const char *conf_stanza_kind(const struct conf_stanza *st)
{
  return conf_stzdefs[st->kind].name;
}

const char *conf_stanza_instance(const struct conf_stanza *st)
{
  return st->instance;
}

const struct conf_view *conf_stanza_view(const struct conf_stanza *st)
{
  return &st->view;
}

bool conf_module_enabled(const struct conf *c, const char *module)
{
  int k = conf_stz_find(module);
  return k >= 0 && c->module_enabled[k];
}

/* ---- eval ---- */

static const char *value_text(const struct conf_value *v, bool show_secret)
{
  if (!v->text)
    return "(unset)";
  if (v->off)
    return "false"; /* off is no secret */
  if ((conf_optdefs[v->opt].flags & CONF_F_SECRET) && !show_secret)
    return "********";
  return v->text;
}

int conf_eval(struct conf *c, const char *group, const char *binding, const char *domain,
              const char *option, unsigned flags, struct buf *out)
{
  int o = conf_opt_find(option);
  if (o < 0) {
    buf_printf(out, "unknown option '%s'", option);
    return -ENOENT;
  }
  int g = -1;
  if (group) {
    g = conf_smap_get(&c->gmap, group, strlen(group));
    if (g < 0) {
      buf_printf(out, "no binding_group \"%s\"", group);
      return -ENOENT;
    }
  }
  const struct conf_binding *b = NULL;
  if (binding) {
    int id = conf_smap_get(&c->bmap, binding, strlen(binding));
    if (id < 0) {
      buf_printf(out, "no binding \"%s\"", binding);
      return -ENOENT;
    }
    b = &c->bindings[id];
    if (group && b->group != g) {
      buf_printf(out, "binding \"%s\" is not in binding_group \"%s\"", binding, group);
      return -EINVAL;
    }
    g = b->group;
  }
  struct conf_view *v = util_xmalloc(sizeof(*v));
  conf_view_fill(c, v, g, b, conf_domain_id(c, domain));
  buf_append_str(out, value_text(v->v[o], flags & CONF_EVAL_SHOW_SECRETS));
  free(v);
  return 0;
}

/* ---- restart diff ---- */

struct dent {
  const char *scope;
  const char *opt;
  const struct conf_value *v;
  uint32_t seq;
};

static int dent_cmp(const void *a, const void *b)
{
  const struct dent *x = a, *y = b;
  int r = strcmp(x->scope, y->scope);
  if (!r)
    r = strcmp(x->opt, y->opt);
  if (!r)
    r = x->seq < y->seq ? -1 : x->seq > y->seq;
  return r;
}

/* The restart-only values set in c, one per (scope, option), sorted. */
static struct dent *restart_entries(const struct conf *c, size_t *n)
{
  size_t cap = 16, k = 0;
  struct dent *e = util_xmalloc(cap * sizeof(*e));
  uint32_t seq = 0;
  for (uint32_t i = 0; i < c->nnodes; i++) {
    const struct conf_node *nd = c->nodes[i];
    for (uint32_t j = 0; j < nd->nvals; j++) {
      const struct conf_value *v = nd->vals[j];
      if (!(conf_optdefs[v->opt].flags & CONF_F_RESTART))
        continue;
      if (k == cap)
        e = util_xrealloc(e, (cap *= 2) * sizeof(*e));
      e[k++] = (struct dent){nd->path, conf_optdefs[v->opt].name, v, seq++};
    }
  }
  qsort(e, k, sizeof(*e), dent_cmp);
  size_t w = 0; /* keep the last assignment of each (scope, option) */
  for (size_t i = 0; i < k; i++) {
    if (w && !strcmp(e[w - 1].scope, e[i].scope) && !strcmp(e[w - 1].opt, e[i].opt))
      e[w - 1] = e[i];
    else
      e[w++] = e[i];
  }
  *n = w;
  return e;
}

int conf_restart_diff(const struct conf *old_c, const struct conf *new_c, conf_diff_fn *fn, void *arg)
{
  size_t no, nn, i = 0, j = 0;
  struct dent *eo = restart_entries(old_c, &no), *en = restart_entries(new_c, &nn);
  int count = 0;
  while (i < no || j < nn) {
    int cmp;
    if (i == no)
      cmp = 1;
    else if (j == nn)
      cmp = -1;
    else {
      cmp = strcmp(eo[i].scope, en[j].scope);
      if (!cmp)
        cmp = strcmp(eo[i].opt, en[j].opt);
    }
    if (cmp < 0) {
      fn(arg, eo[i].opt, eo[i].scope, value_text(eo[i].v, false), NULL);
      count++;
      i++;
    } else if (cmp > 0) {
      fn(arg, en[j].opt, en[j].scope, NULL, value_text(en[j].v, false));
      count++;
      j++;
    } else {
      if (strcmp(eo[i].v->text, en[j].v->text)) {
        fn(arg, eo[i].opt, eo[i].scope, value_text(eo[i].v, false), value_text(en[j].v, false));
        count++;
      }
      i++;
      j++;
    }
  }
  free(eo);
  free(en);
  return count;
}

/* ---- generated reference ---- */

static void md_cell(struct buf *out, const char *s)
{
  for (; *s; s++) {
    if (*s == '|')
      buf_append_str(out, "\\|");
    else
      buf_append(out, s, 1);
  }
}

static void md_scopes(struct buf *out, unsigned s)
{
  static const struct {
    unsigned bit;
    const char *name;
  } names[] = {{CONF_S_G, "global"}, {CONF_S_BG, "binding_group"}, {CONF_S_B, "binding"},
               {CONF_S_D, "domain"}};
  bool first = true;
  for (size_t i = 0; i < UTIL_ARRAY_LEN(names); i++)
    if (s & names[i].bit) {
      buf_printf(out, "%s%s", first ? "" : ", ", names[i].name);
      first = false;
    }
}

static void md_type(struct buf *out, const struct conf_optdef *d)
{
  buf_append_str(out, conf_type_name(d->type));
  if (d->type == CONF_T_ENUM)
    buf_printf(out, ": `%s`", d->words);
  else if (d->words)
    buf_printf(out, " or `%s`", d->words);
}

static void md_row(struct buf *out, const struct conf_optdef *d, bool scopes)
{
  buf_printf(out, "| `%s` | ", d->name);
  md_type(out, d);
  buf_append_str(out, " | ");
  if (d->def) {
    buf_append_str(out, "`");
    md_cell(out, d->def);
    buf_append_str(out, "`");
  } else {
    buf_append_str(out, "unset");
  }
  buf_append_str(out, " | ");
  if (scopes) {
    md_scopes(out, d->scopes);
    buf_append_str(out, " | ");
  }
  buf_append_str(out, d->flags & CONF_F_RESTART ? "restart" : "reload");
  buf_append_str(out, " | ");
  md_cell(out, d->doc);
  if (d->flags & CONF_F_SECRET)
    buf_append_str(out, " Secret: never printed.");
  if (d->module && !(d->scopes & CONF_S_MOD))
    buf_printf(out, " Enables `%s`.", d->module);
  buf_append_str(out, " |\n");
}

void conf_dump_markdown(struct buf *out)
{
  buf_append_str(out, "### Scope options\n\n"
                      "| Option | Type | Default | Scopes | Change | Description |\n"
                      "| --- | --- | --- | --- | --- | --- |\n");
  for (int i = 0; i < CONF__COUNT; i++)
    if (!(conf_optdefs[i].scopes & CONF_S_MOD))
      md_row(out, &conf_optdefs[i], true);
  buf_append_str(out, "\n### Module stanzas\n\n"
                      "Every module stanza also takes the options marked `*` below.\n");
  for (int k = -1; k < STZ__COUNT; k++) {
    const char *kind = k < 0 ? "*" : conf_stzdefs[k].name;
    if (k < 0) {
      buf_append_str(out, "\n#### `*` (every module stanza)\n\n");
    } else {
      const struct conf_stzdef *s = &conf_stzdefs[k];
      buf_printf(out, "\n#### `%s`\n\n", s->name);
      buf_printf(out, "`%s%s { ... }`", s->name,
                 s->instance == CONF_INST_NONE       ? ""
                 : s->instance == CONF_INST_OPTIONAL ? " [\"instance\"]"
                                                     : " \"instance\"");
      if (s->parent != STZ_NONE)
        buf_printf(out, ", inside `%s`", conf_stzdefs[s->parent].name);
      else
        buf_append_str(out, ", top level");
      buf_append_str(out, ". ");
      md_cell(out, s->doc);
      buf_append_str(out, "\n\n");
    }
    bool any = false;
    for (int i = 0; i < CONF__COUNT; i++) {
      const struct conf_optdef *d = &conf_optdefs[i];
      if (!(d->scopes & CONF_S_MOD) ||
          (k < 0 ? strcasecmp(d->module, kind) : !conf_stz_module_is(k, d->module)))
        continue;
      if (!any)
        buf_append_str(out, "| Option | Type | Default | Change | Description |\n"
                            "| --- | --- | --- | --- | --- |\n");
      any = true;
      md_row(out, d, false);
    }
    if (!any)
      buf_append_str(out, "No options of its own.\n");
  }
}
