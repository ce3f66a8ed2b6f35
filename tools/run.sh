#!/usr/bin/env bash
# run.sh: the README's first command. Installs what is missing, builds,
# and runs the engine on its bundled default configuration (the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
[ -d build ] || meson setup build --buildtype=release >/dev/null
meson compile -C build >/dev/null
if [ -x tools/demo.sh ]; then
  exec tools/demo.sh "$@"
fi
exec build/src/main/impetus "$@"
