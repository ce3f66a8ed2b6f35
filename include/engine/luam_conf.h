/* luam_conf: thin glue between the configuration snapshot (conf.h) and
 * luam: the scriptlet/script and Datasource stanzas become luam_opts and
 * luam_ds_conf, and luam_host.eval is answered with conf_eval. luam itself
 * keeps knowing nothing about conf. */
#pragma once

#include "luam.h"
#include "luam_ds.h"

struct conf;

/* What the configuration says about Lua. Owns every string. */
struct luam_conf {
  struct luam_opts opts;          /* scripts resolved; opts.ds left NULL */
  struct luam_script *scripts;
  struct luam_ds_conf *ds;        /* Datasource stanzas */
  size_t nds;
};

/* Read the scriptlet and Datasource stanzas of c. Each source is resolved
 * relative to the configuration file's directory, then libdir (NULL: the
 * bundled lua/). Returns 0, or -ENOENT / -EINVAL with "script NAME: ..."
 * in err. Main thread. */
int luam_conf_load(struct luam_conf *lc, struct conf *c, const char *libdir, char *err,
                   size_t errlen);
void luam_conf_done(struct luam_conf *lc);

/* A luam_host.eval over one snapshot. One per worker (not thread-safe);
 * answers stay valid for LUAM_CONF_EVAL_SLOTS later calls, i.e. for the
 * hook call that asked. Secrets come back masked ("********"). */
#define LUAM_CONF_EVAL_SLOTS 8
struct luam_conf_eval;
struct luam_conf_eval *luam_conf_eval_new(struct conf *c); /* takes a reference */
void luam_conf_eval_free(struct luam_conf_eval *e);
/* Switch to a new snapshot (reload); takes a reference, drops the old. */
void luam_conf_eval_set(struct luam_conf_eval *e, struct conf *c);
/* The eval callback: pass the luam_conf_eval as luam_host.arg (or call it
 * from the engine's own eval). Also answers "#binding_exists". */
const char *luam_conf_eval(void *e, const char *bgroup, const char *binding, const char *domain,
                           const char *option);
