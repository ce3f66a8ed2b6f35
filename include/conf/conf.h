/* conf: the Momentum ecelerity.conf dialect, parsed into an immutable,
 * reference-counted snapshot (struct conf), and per-(binding, domain)
 * views that hold every option already resolved through the fallback
 * chain, so a hot-path lookup is one array index.
 *
 * Fallback, most specific first:
 *   binding_group::binding::domain > binding::domain > binding_group::domain
 *   > binding_group::binding > binding > binding_group > domain > global
 *   > built-in default.
 * (binding_group::binding is the part of a binding written inside its group;
 * binding the part written at top level; both are the same binding.)
 *
 * Threads: conf_load/conf_parse_buffer from any one thread; a loaded
 * snapshot is read-only and may be used from any number of threads.
 * conf_view_get builds missing views lock-free (first builder wins).
 * Never logs; errors come back as struct conf_error (file, line, text). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct conf;
struct conf_view;
struct conf_stanza;

enum conf_opt {
#define CONF_OPT(id, ...) id,
#include "conf_options.def"
#undef CONF_OPT
  CONF__COUNT
};

enum conf_type {
  CONF_T_STR, CONF_T_BOOL, CONF_T_INT, CONF_T_INTERVAL, CONF_T_SIZE, CONF_T_LIST,
  CONF_T_DICT, CONF_T_THROTTLE, CONF_T_ADDR, CONF_T_PATH, CONF_T_ENUM, CONF_T_MODE,
};

/* Named limits on configuration input. */
#define CONF_MAX_LINE 65536          /* bytes per line */
#define CONF_MAX_FILE (16u << 20)    /* bytes per file */
#define CONF_MAX_INCLUDE_DEPTH 16    /* nested includes */
#define CONF_MAX_FILES 1024          /* files read per load */
#define CONF_MAX_ITEMS 65536         /* elements in one list or dictionary */
#define CONF_MAX_DEPTH 8             /* nested stanzas */

struct conf_error {
  char file[4096]; /* "" when the error has no file */
  unsigned line;   /* 0 when the error has no line */
  char msg[1024];
};

/* Format "file:line: message" (or "file: message", or "message") into out. */
const char *conf_error_str(const struct conf_error *err, char *out, size_t n);

/* Load the configuration at path (and its includes). NULL on failure, with
 * err filled in. The result has one reference. */
struct conf *conf_load(const char *path, struct conf_error *err);

/* What a delivery needs from this host: the files it reads (TLS_Ca,
 * TLS_Certificate, TLS_Key) exist and are regular files, and each
 * Bind_Address is an address of this host. 0, or -EINVAL with err at the
 * value's file:line. For --check-config (the load itself does not look). */
int conf_check_environment(const struct conf *c, struct conf_error *err);

/* Flags for conf_parse_buffer. */
#define CONF_PARSE_NO_INCLUDE 1u /* include is an error (fuzzing, untrusted text) */

/* Parse a configuration held in memory; name is used in error messages and
 * basedir resolves relative paths and includes (NULL = current directory).
 * NULL on failure, with err filled in. */
struct conf *conf_parse_buffer(const char *data, size_t len, const char *name,
                               const char *basedir, unsigned flags, struct conf_error *err);

/* Take / drop a reference. A reload swaps the snapshot; holders of the old
 * one keep it alive until they unref. conf_unref(NULL) is a no-op. */
struct conf *conf_ref(struct conf *c);
void conf_unref(struct conf *c);

/* The file the snapshot was loaded from (absolute), or the buffer's name. */
const char *conf_path(const struct conf *c);

/* ---- views ---- */

/* Options of the global scope and defaults only (for global options). */
const struct conf_view *conf_global(const struct conf *c);

/* The view for mail on binding (NULL = "default") to domain (NULL = none;
 * any case). Cached in the snapshot. NULL only if the binding is unknown. */
const struct conf_view *conf_view_get(struct conf *c, const char *binding, const char *domain);

/* Bindings: id 0 is always "default"; ids are dense, < conf_binding_count. */
size_t conf_binding_count(const struct conf *c);
int conf_binding_id(const struct conf *c, const char *name); /* -ENOENT if unknown */
const char *conf_binding_name(const struct conf *c, int id);
const char *conf_binding_group(const struct conf *c, int id); /* NULL if in no group */
size_t conf_group_count(const struct conf *c);
const char *conf_group_name(const struct conf *c, size_t i);
/* Same as conf_view_get with a binding id (panics on a bad id). */
const struct conf_view *conf_view_by_id(struct conf *c, int binding_id, const char *domain);

/* ---- typed getters (the option's declared type must match; checked
 * under -Ddebug_strict) ---- */
const char *conf_str(const struct conf_view *v, enum conf_opt o);  /* STR PATH ENUM ADDR: the text; NULL unset or off */
bool conf_bool(const struct conf_view *v, enum conf_opt o);
int64_t conf_int(const struct conf_view *v, enum conf_opt o);      /* INT MODE; 0 unset */
int64_t conf_interval(const struct conf_view *v, enum conf_opt o); /* seconds */
uint64_t conf_size(const struct conf_view *v, enum conf_opt o);    /* bytes */
int conf_enum(const struct conf_view *v, enum conf_opt o);         /* index in words; -1 unset */
/* Word indexes conf_enum returns (the order of the words in the table;
 * test_conf checks that they agree). */
enum conf_tls_mode { CONF_TLS_NO, CONF_TLS_IFAVAILABLE, CONF_TLS_REQUIRED };
enum conf_tls_verify_mode { CONF_TLS_VERIFY_NO, CONF_TLS_VERIFY_CA, CONF_TLS_VERIFY_HOST };
enum conf_spool_sync_mode { CONF_SPOOL_SYNC_BATCH, CONF_SPOOL_SYNC_ALWAYS, CONF_SPOOL_SYNC_NONE };
enum conf_auth_type { CONF_AUTH_PLAIN, CONF_AUTH_LOGIN, CONF_AUTH_XOAUTH2 };
/* conf_int(v, CONF_MAX_RETRIES) for the words auto and none. */
#define CONF_MAX_RETRIES_AUTO (-1)
#define CONF_MAX_RETRIES_NONE (-2)
/* LIST: n strings. DICT: n pairs laid out key, value, key, value... */
const char *const *conf_list(const struct conf_view *v, enum conf_opt o, size_t *n);
const char *const *conf_dict(const struct conf_view *v, enum conf_opt o, size_t *npairs);

struct conf_throttle {
  uint32_t n;     /* 0 = unlimited */
  uint32_t per;   /* seconds */
  uint32_t scope; /* which scope set it: one bucket per scope (see conf_scope_name) */
};
struct conf_throttle conf_throttle(const struct conf_view *v, enum conf_opt o);

struct conf_addr {
  const char *host; /* NULL when unset; IPv6 without brackets */
  uint16_t port;    /* 0 when not given */
  bool implicit_tls;/* Gateway only: "smtps://host[:port]" (TLS at connect) */
};
struct conf_addr conf_addr(const struct conf_view *v, enum conf_opt o);

/* Call fn with the text of every value of o set in the file, in any
 * scope or stanza (no defaults), in file order. */
void conf_each_set(const struct conf *c, enum conf_opt o,
                   void (*fn)(void *arg, const char *text), void *arg);
/* Whether a scope set the option (false: built-in default). */
bool conf_is_set(const struct conf_view *v, enum conf_opt o);
/* Whether a scope set an OFF option to false (a built-in false is not). */
bool conf_is_off(const struct conf_view *v, enum conf_opt o);
/* The scope that provided the value: 0 = built-in default. Stable within
 * one snapshot; conf_scope_name gives a text that is stable across reloads
 * (e.g. `binding_group "g" domain "x.com"`). */
uint32_t conf_scope(const struct conf_view *v, enum conf_opt o);
const char *conf_scope_name(const struct conf *c, uint32_t scope);
/* File (absolute) and line that set the value; NULL for a default. */
const char *conf_origin(const struct conf_view *v, enum conf_opt o, unsigned *line);

/* ---- the option table ---- */
const char *conf_opt_name(enum conf_opt o);
enum conf_type conf_opt_type(enum conf_opt o);
bool conf_opt_secret(enum conf_opt o);
/* A scope option (not a module stanza option) by name, any case; -ENOENT. */
int conf_opt_find(const char *name);

/* ---- module stanzas ---- */

/* First stanza of kind (any case) at the top level, or NULL. */
const struct conf_stanza *conf_stanza_first(const struct conf *c, const char *kind);
/* First child stanza of kind inside st, or NULL. */
const struct conf_stanza *conf_stanza_child(const struct conf_stanza *st, const char *kind);
/* Next stanza of the same kind and parent, in file order, or NULL. */
const struct conf_stanza *conf_stanza_next(const struct conf_stanza *st);
const char *conf_stanza_kind(const struct conf_stanza *st);     /* canonical, lower case */
const char *conf_stanza_instance(const struct conf_stanza *st); /* NULL for anonymous */
/* File (absolute) and line where the stanza was first opened. */
const char *conf_stanza_origin(const struct conf_stanza *st, unsigned *line);
/* The stanza's options with their defaults; read with the typed getters. */
const struct conf_view *conf_stanza_view(const struct conf_stanza *st);
/* Momentum's rule: true if the module's stanza is present and not
 * `enabled = false`, or any option the module provides is set anywhere. */
bool conf_module_enabled(const struct conf *c, const char *module);

/* ---- console / reload ---- */

#define CONF_EVAL_SHOW_SECRETS 1u
/* Effective value after fallback, like Momentum's `config eval`. Any of
 * group/binding/domain may be NULL; a binding implies its group. Appends the
 * value's text to out; secrets print as "********" unless SHOW_SECRETS, an
 * unset option as "(unset)". Returns 0, or -ENOENT / -EINVAL with the reason
 * appended to out instead. */
int conf_eval(struct conf *c, const char *group, const char *binding, const char *domain,
              const char *option, unsigned flags, struct buf *out);

/* Called for each restart-only option whose value differs between two
 * snapshots, per scope (old or new is NULL when unset on that side;
 * secrets are masked). */
typedef void conf_diff_fn(void *arg, const char *option, const char *scope,
                          const char *old_text, const char *new_text);
/* Compare restart-only options of old and new; returns the number of
 * differences reported. */
int conf_restart_diff(const struct conf *old_c, const struct conf *new_c, conf_diff_fn *fn,
                      void *arg);

/* Append the option reference (Markdown) generated from the table. */
void conf_dump_markdown(struct buf *out);
