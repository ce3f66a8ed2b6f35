#!/usr/bin/env bash
# run-dkim.sh [BUILD_DIR]: the DKIM signing figures of bench/BENCHMARKS.md
# (issue 22), in one run so they compare:
#   bench/dkim_micro.txt   bench_dkim: sign of 1 KB vs the key operation alone
#   bench/dkim_speed.txt   openssl speed rsa2048 ed25519 (the per-core reference)
#   bench/dkim.jsonl       impetus-bench, 1 KB, 2 workers, durable, to the sink:
#                          no DKIM / RSA-2048 / Ed25519 alternating, REPEAT times
#   bench/dkim_compare.txt bench/postfix/compare_dkim.sh (Postfix + OpenDKIM)
# env COUNT=20000 REPEAT=3 PF_N=2000.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
COUNT=${COUNT:-20000}
REPEAT=${REPEAT:-3}
"$BUILD/bench/bench_dkim" --benchmark_repetitions=5 --benchmark_min_time=0.5 \
  --benchmark_report_aggregates_only=true 2>/dev/null | grep -E "median" >bench/dkim_micro.txt
openssl speed -seconds 3 rsa2048 ed25519 2>/dev/null | grep -E "^rsa 2048|Ed25519" >bench/dkim_speed.txt
: >bench/dkim.jsonl
for _ in $(seq "$REPEAT"); do
  for v in none rsa ed25519; do
    extra=(); [ "$v" != none ] && extra=(--dkim "$v")
    bench/impetus-bench --build "$BUILD" --count "$COUNT" --workers 2 --fsync-run 0 \
      --no-latency --quiet "${extra[@]}" --label "dkim-$v" --json bench/dkim.jsonl >/dev/null
  done
done
N=${PF_N:-2000} bash bench/postfix/compare_dkim.sh "$BUILD" 2>/dev/null | tail -3 >bench/dkim_compare.txt || true
echo "run-dkim: wrote bench/dkim_micro.txt dkim_speed.txt dkim.jsonl dkim_compare.txt" >&2
