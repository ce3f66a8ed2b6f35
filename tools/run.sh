#!/usr/bin/env bash
# run.sh: the README's first command. Installs what is missing, builds,
# and runs the engine on its bundled default configuration (the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# a build-tree run: the tree's configuration and Lua library (installed
# binaries use /etc/impetus and /usr/share/impetus instead)
export IMPETUS_CONFIG=${IMPETUS_CONFIG:-$PWD/etc/impetus.conf}
export IMPETUS_LUA_DIR=${IMPETUS_LUA_DIR:-$PWD/lua}
[ -d build ] || meson setup build --buildtype=release >/dev/null
meson compile -C build >/dev/null
if [ -x tools/demo.sh ]; then
  exec tools/demo.sh "$@"
fi
exec build/src/main/impetus "$@"
