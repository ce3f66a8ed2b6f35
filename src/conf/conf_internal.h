/* conf_internal.h: the snapshot's layout, shared by the parser
 * (conf_parse.c), the value converters (conf_value.c) and the snapshot
 * and views (conf.c). Not a public header. */
#pragma once

#include "conf.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- the table ---- */
enum {
  CONF_S_G = 1u, CONF_S_BG = 2u, CONF_S_B = 4u, CONF_S_D = 8u, CONF_S_MOD = 16u,
};
#define CONF_S_ROUTING (CONF_S_G | CONF_S_BG | CONF_S_B | CONF_S_D)
enum { CONF_F_RESTART = 1u, CONF_F_SECRET = 2u, CONF_F_OFF = 4u };
enum { CONF_INST_NONE, CONF_INST_OPTIONAL, CONF_INST_REQUIRED };

struct conf_optdef {
  const char *name;
  enum conf_type type;
  const char *def;    /* default as text, NULL = unset */
  unsigned scopes;    /* CONF_S_* */
  unsigned flags;     /* CONF_F_* */
  const char *words;  /* ENUM words; INT "word=value" spellings */
  const char *module; /* MOD: stanza kind or "*"; else the module it enables */
  const char *doc;
};
extern const struct conf_optdef conf_optdefs[CONF__COUNT];

enum conf_stz {
  STZ_NONE = -1,
#define CONF_STANZA(id, ...) id,
#include "conf_options.def"
#undef CONF_STANZA
  STZ__COUNT
};
struct conf_stzdef {
  const char *name;
  int parent;   /* enum conf_stz or STZ_NONE (top level) */
  int instance; /* CONF_INST_* */
  const char *doc;
};
extern const struct conf_stzdef conf_stzdefs[STZ__COUNT];
int conf_stz_find(const char *name); /* -1 if unknown */
/* The kind named name whose parent is parent (STZ_NONE: top level); else
 * as conf_stz_find (two kinds may share a name under different parents). */
int conf_stz_find_in(const char *name, int parent);
/* Whether an option's module names kind: its name, or "parent.name". */
bool conf_stz_module_is(int kind, const char *module);

/* ---- arena: every string and value of a snapshot ---- */
struct conf_chunk;
struct conf_arena {
  struct conf_chunk *head;
};
void *conf_arena_alloc(struct conf_arena *a, size_t n);
char *conf_arena_strndup(struct conf_arena *a, const char *s, size_t n);
char *conf_arena_strdup(struct conf_arena *a, const char *s);
char *conf_arena_printf(struct conf_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void conf_arena_done(struct conf_arena *a);

/* ---- values ---- */
struct conf_value {
  const char *text;          /* canonical printable text; NULL = unset */
  const char *const *items;  /* LIST: n strings; DICT: 2n (key, value) */
  uint32_t nitems;
  int64_t i;                 /* BOOL INT INTERVAL MODE ENUM(index, -1 unset) */
  uint64_t u;                /* SIZE */
  uint32_t thr_n, thr_per;   /* THROTTLE */
  const char *host;          /* ADDR */
  uint16_t port;
  bool implicit_tls;         /* ADDR (Gateway): written smtps://host[:port] */
  bool off;                  /* OFF options: written false */
  uint16_t opt;
  bool set;                  /* false: built-in default */
  uint32_t scope;            /* node id that set it; 0 = default */
  const char *file;          /* absolute file that set it */
  uint32_t line;
};

/* A parsed value before conversion: a scalar, a list or a dictionary. */
enum { RAW_SCALAR, RAW_LIST, RAW_DICT };
struct conf_raw {
  int kind;
  const char *s;             /* scalar */
  const char **items;        /* list: n; dict: 2n */
  uint32_t n;
};

/* Convert raw into a value of opt's type. basedir resolves relative PATHs.
 * Returns 0, or -EINVAL with the reason (without the option name) in why. */
int conf_value_convert(struct conf_arena *a, enum conf_opt opt, const struct conf_raw *raw,
                       const char *basedir, struct conf_value *out, char *why, size_t whylen);

/* ---- scope nodes: global, group, binding (in group / top), domain, stanza ---- */
enum { NODE_GLOBAL, NODE_GROUP, NODE_BINDING, NODE_DOMAIN, NODE_STANZA };
struct conf_node {
  uint32_t id;       /* index in conf.nodes; also the throttle scope id */
  int kind;
  const char *path;  /* e.g. `binding_group "g" binding "b"` */
  const struct conf_value **vals; /* in file order; later wins */
  uint32_t nvals, capvals;
};

#define CONF_VBLOCK 64

struct conf_view {
  const struct conf *conf;
  const struct conf_value *v[CONF__COUNT];
};

struct conf_stanza {
  const struct conf *conf;
  int kind;                 /* enum conf_stz */
  const char *instance;
  struct conf_stanza *parent, *next, *children, *children_tail;
  struct conf_node *node;
  struct conf_view view;
};

/* String -> int map, open addressing; keys owned by the arena. */
struct conf_smap {
  struct conf_sent *e;
  uint32_t cap, n;
  bool icase;
};
int conf_smap_get(const struct conf_smap *m, const char *key, size_t len); /* -1 */
void conf_smap_put(struct conf_smap *m, const char *key, size_t len, int val);
void conf_smap_done(struct conf_smap *m);

/* (parent node id, domain id) -> domain node. */
struct conf_umap {
  struct conf_uent *e;
  uint32_t cap, n;
};
struct conf_node *conf_umap_get(const struct conf_umap *m, uint64_t key);
void conf_umap_put(struct conf_umap *m, uint64_t key, struct conf_node *node);
void conf_umap_done(struct conf_umap *m);

struct conf_group {
  const char *name;
  struct conf_node *node;
};
struct conf_binding {
  const char *name;
  int group;              /* index in groups, -1 none */
  struct conf_node *top;  /* written at top level, or NULL */
  struct conf_node *grp;  /* written inside its group, or NULL */
  const char *group_file; /* where it joined its group (for errors) */
  unsigned group_line;
};

struct conf {
  atomic_int refs;
  struct conf_arena arena;
  const char *path;
  struct conf_node **nodes;
  uint32_t nnodes, capnodes;
  struct conf_node *global;
  struct conf_group *groups;
  uint32_t ngroups, capgroups;
  struct conf_binding *bindings;
  uint32_t nbindings, capbindings;
  struct conf_smap gmap, bmap, dmap; /* dmap: domain name -> id (1..) */
  uint32_t ndomains;
  struct conf_umap dnodes;
  struct conf_stanza *stanzas, *stanzas_tail;
  struct conf_smap stzmap;        /* "parent-id kind instance" -> index in stzall */
  struct conf_stanza **stzall;
  uint32_t nstz, capstz;
  bool module_used[STZ__COUNT];
  bool module_enabled[STZ__COUNT];
  struct conf_value defaults[CONF__COUNT];
  struct conf_view global_view;
  /* Cached views: rows[binding][domain id / CONF_VBLOCK][domain id % CONF_VBLOCK],
   * each level allocated on first use and published with __atomic CAS. */
  void **rows; /* void * everywhere: one type for the __atomic accesses */
  uint32_t nvblocks; /* blocks per row */
};

/* conf.c helpers used by the parser. */
struct conf *conf_new_empty(void);
struct conf_node *conf_node_new(struct conf *c, int kind, const char *path);
void conf_node_add(struct conf_node *n, const struct conf_value *v);
int conf_finish(struct conf *c, char *why, size_t whylen);

/* Fill v for (group, binding, domain id) through the fallback chain and a
 * "#name" Gateway (conf.c): returns the domain id the view is for (the
 * "#name" one after such a Gateway). A domain's id, 0 when it has no stanza. */
uint32_t conf_view_fill(const struct conf *c, struct conf_view *v, int group,
                    const struct conf_binding *b, uint32_t did);
uint32_t conf_domain_id(const struct conf *c, const char *domain);
/* conf_check.c: whole-snapshot checks after conf_finish; -EINVAL with err
 * naming the file and line of the value. */
int conf_check(struct conf *c, struct conf_error *err);
const char *conf_type_name(enum conf_type t);

/* Register binding `name` (conf_parse.c); its id, the existing one if known. */
int conf_binding_add(struct conf *c, const char *name);
