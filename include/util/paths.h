/* paths: where an installed Impetus finds its files. The defaults come from
 * the Meson options the binary was built with (sysconfdir, datadir), never
 * from the source tree; a build-tree run (the tests, tools/run.sh, the
 * demo) names the tree's files through the environment:
 *   IMPETUS_CONFIG   the configuration used when no -c is given
 *   IMPETUS_LUA_DIR  the bundled Lua library (impetus/boot.lua)
 * The environment is ignored in a set-user/group-ID program (secure_getenv),
 * so a setgid impetus-inject always reads the installed configuration.
 * Any thread; no allocation. */
#pragma once

/* The default configuration file: $IMPETUS_CONFIG, or
 * <sysconfdir>/impetus/impetus.conf. */
const char *paths_config(void);
/* The bundled Lua library directory: $IMPETUS_LUA_DIR, or
 * <datadir>/impetus/lua. */
const char *paths_lua_dir(void);
