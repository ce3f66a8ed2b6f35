#!/usr/bin/env bash
# test.sh: the README's second command. Installs what is missing, builds
# with -Werror, and runs the whole suite: the normal build (with suite
# 'slow': the crash harness), the ASan+UBSan build, the TSan build's
# threaded tests, and the bounded fuzz runs. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

jobs=$(nproc)
step() { printf '\n=== %s\n' "$*"; }

step "build (release, -Werror)"
[ -d build-test ] || meson setup build-test -Dwerror=true --buildtype=debugoptimized >/dev/null
meson compile -C build-test
step "test suite"
meson test -C build-test --print-errorlogs --num-processes "$jobs"

if [ "${IMPETUS_SKIP_SANITIZE:-0}" != 1 ]; then
  step "build (ASan+UBSan, -Werror)"
  [ -d build-asan ] || meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined \
    -Db_lundef=false -Dbench=false >/dev/null
  meson compile -C build-asan
  step "test suite under ASan+UBSan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --print-errorlogs --num-processes "$jobs" --no-suite slow
fi

if [ "${IMPETUS_SKIP_TSAN:-0}" != 1 ]; then
  # ThreadSanitizer: the threaded tests (handoff queues, ring, context
  # dictionaries, logs, configuration views, Lua datasource pool, spool
  # group commit, and the engine end to end: workers, reload while
  # delivering, stop). A report makes the process exit 66: the test fails.
  step "build (TSan, -Werror)"
  [ -d build-tsan ] || meson setup build-tsan -Dwerror=true -Db_sanitize=thread \
    -Db_lundef=false -Dbench=false >/dev/null
  meson compile -C build-tsan
  step "threaded tests under TSan"
  TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1:exitcode=66 \
    meson test -C build-tsan --print-errorlogs --num-processes "$jobs" \
    mpsc ring ctx logs conf luam luam_glue spool sched dq secmem \
    engine-gateway engine-faults engine-reload engine-stop engine-tls engine-connlimit \
    engine-smtpc-tls-fallback engine-smtpc-smtps lua-safety \
    adaptive adaptive-suspend adaptive-hostcap adaptive-lua
fi

if [ "${IMPETUS_SKIP_FUZZ:-0}" != 1 ]; then
  step "fuzz targets (clang, bounded)"
  [ -d build-fuzz ] || CC=clang CXX=clang++ meson setup build-fuzz -Dfuzz=true -Dtests=true \
    -Dbench=false -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
  meson compile -C build-fuzz
  meson test -C build-fuzz --print-errorlogs --suite fuzz
fi
step "all passed"
