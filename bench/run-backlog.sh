#!/usr/bin/env bash
# run-backlog.sh [BUILD_DIR] [N]: issue 11's backlog target on its own (it
# takes ~10 minutes, too long to repeat inside run-all.sh): drains a 10,000-
# message backlog, then an N-message one (default 1,000,000), then 10,000
# again, all from pickup/ synced to disk before the engine starts, and
# writes the three JSON results to bench/backlog.jsonl. bench/render.py
# reports N against the mean of the two 10k runs around it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
N=${2:-1000000}
FS=${FS:-loop}
OUT=bench/backlog.jsonl
: >"$OUT"
B=(bench/impetus-bench --build "$BUILD" --json "$OUT" --quiet --fs "$FS" --backlog --fsync-run 0 --no-latency)
"${B[@]}" --label "backlog 10k (before)" --count 10000 --timeout 600
"${B[@]}" --label "backlog $N" --count "$N" --timeout 3600
"${B[@]}" --label "backlog 10k (after)" --count 10000 --timeout 600
echo "run-backlog: wrote $OUT" >&2
