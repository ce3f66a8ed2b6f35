/* paths.c owns the installed locations of the configuration and the Lua
 * library (paths.h), from impetus_build.h (Meson options) or the
 * environment. Must never: name the source tree. Threads: any. */
#include "paths.h"

#include "impetus_build.h"

#include <stdlib.h>

static const char *env_or(const char *name, const char *dflt)
{
  const char *v = secure_getenv(name);
  return v && *v ? v : dflt;
}

const char *paths_config(void)
{
  return env_or("IMPETUS_CONFIG", IMPETUS_SYSCONFDIR "/impetus.conf");
}

const char *paths_lua_dir(void)
{
  return env_or("IMPETUS_LUA_DIR", IMPETUS_LUADIR);
}
