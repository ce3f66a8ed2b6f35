#!/usr/bin/env bash
# run-all.sh [BUILD_DIR]: runs every end-to-end benchmark variant of issue 11
# once (the headline 1 KB figure REPEAT times, median reported), the spool
# ingest benchmark (issue 3) and the Postfix comparison, and rewrites
# bench/BENCHMARKS.md from the results (bench/results.jsonl keeps the raw
# JSON). Needs root for the loop file system (--fs loop) and for the private
# Postfix instance. Every step's wall time goes to stderr and to
# bench/run-times.txt (ONLY=peers: run-times-peers.txt); BENCHMARKS.md shows
# the totals.
# Environment: COUNT (20000), BIG_BACKLOG (100000; 0 = use bench/backlog.jsonl
# from bench/run-backlog.sh), REPEAT (5), PEER_REPEAT (5), ONLY (peers: only
# issue 25's part, ~4-6 minutes),
# PF_N (20000, Postfix comparison: issue 6's workload), FS (loop),
# LISTENER_RUNS (3), DKIM_REPEAT (run-dkim.sh's REPEAT, 5), DKIM (1; 0 =
# keep the last DKIM section), QUICK (1: REPEAT, PEER_REPEAT and
# DKIM_REPEAT 3, LISTENER_RUNS 2, BIG_BACKLOG 20000, PF_N 10000: every
# section in one shorter run).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
if [ "${QUICK:-0}" = 1 ]; then
  : "${REPEAT:=3}" "${PEER_REPEAT:=3}" "${BIG_BACKLOG:=20000}" "${PF_N:=10000}"
  : "${DKIM_REPEAT:=3}" "${LISTENER_RUNS:=2}"
fi
COUNT=${COUNT:-20000}
BIG=${BIG_BACKLOG:-100000}
REPEAT=${REPEAT:-5}
PF_N=${PF_N:-20000}
FS=${FS:-loop}
OUT=bench/results.jsonl
TIMES=bench/run-times.txt; [ "${ONLY:-}" = peers ] && TIMES=bench/run-times-peers.txt
T_ALL=$SECONDS
: >"$TIMES"
# took LABEL SINCE: one step's wall time, to stderr and bench/run-times.txt
took() { echo "run-all: [$(($SECONDS - $2)) s] $1" >&2; echo "$(($SECONDS - $2)) s  $1" >>"$TIMES"; }
B=(bench/impetus-bench --build "$BUILD" --json "$OUT" --quiet)
run() {
  local t=$SECONDS
  echo "run-all: $*" >&2
  "${B[@]}" "$@" | sed -n 1p >&2 || echo "run-all: FAILED: $*" >&2
  took "$*" "$t"
}

# Issue 25 (~6 minutes; ONLY=peers runs just this part and re-renders the
# page from the other parts' last results): the engine against the three
# kinds of peer, PEER_REPEAT alternating rounds (one run per peer each, so
# every peer sees the same minutes of a shared machine), each run followed by
# its socket floor (bench/net/smtp_replay: the same conversation on as many
# connections to the same sink) and each round by the file floor
# (bench/spool/fs_floor.py on a fresh file system of the same kind), with
# system calls, io_uring submissions and context switches counted by perf
# stat; then the two sinks under Postfix's smtp-source, alternately.
PEERS=bench/peers.jsonl
SINKS=bench/sinks.jsonl
: >"$PEERS"
t=$SECONDS
bench/impetus-bench --build "$BUILD" --json "$PEERS" --quiet --label "1KB w2" --count "$COUNT" --fs "$FS" \
  --fsync-run 0 --repeat "${PEER_REPEAT:-5}" --counts --peers bdat,data,smtp-sink >/dev/null \
  || echo "run-all: FAILED: peers" >&2
took "peers (impetus-bench --peers bdat,data,smtp-sink)" "$t"
t=$SECONDS
RUNS=${PEER_REPEAT:-5} python3 bench/sink/source_vs_sinks.py "$BUILD" "$SINKS" \
  || echo "run-all: FAILED: source_vs_sinks" >&2
took "sinks (source_vs_sinks.py)" "$t"
if [ "${ONLY:-}" = peers ]; then
  took "total (ONLY=peers)" "$T_ALL"
  BL=""; [ -s bench/backlog.jsonl ] && BL=bench/backlog.jsonl
  ONLY=peers python3 bench/render.py "$OUT" bench/compare.json bench/ingest.txt bench/fs_floor.txt "$BL" >bench/BENCHMARKS.md
  echo "run-all: wrote bench/BENCHMARKS.md (issue 25's part new, the rest from the last full run)" >&2
  exit 0
fi
: >"$OUT"

run --label "1KB plain w2"          --count "$COUNT" --fs "$FS" --repeat "$REPEAT"
# the rows that decide a target are medians of REPEAT runs (the shared
# machine moves single runs by 10-30 %)
run --label "1KB plain w2 rootfs"   --count "$COUNT" --fs here --repeat "$REPEAT"
run --label "10KB plain w2"         --count "$COUNT" --fs "$FS" --size 10240
run --label "100KB plain w2"        --count $((COUNT / 2)) --fs "$FS" --size 102400 --repeat "$REPEAT"
run --label "100KB plain w2 rootfs" --count $((COUNT / 2)) --fs here --size 102400 --repeat "$REPEAT"
run --label "1KB STARTTLS w2"       --count "$COUNT" --fs "$FS" --mode starttls
run --label "1KB STARTTLS+AUTH w2"  --count "$COUNT" --fs "$FS" --mode auth
run --label "1KB keep-dicts w2"     --count "$COUNT" --fs "$FS" --keep-dicts
run --label "1KB Lua hook w2"       --count "$COUNT" --fs "$FS" --lua
run --label "1KB plain w1"          --count "$COUNT" --fs "$FS" --workers 1
run --label "1KB sync=none w2"      --count "$COUNT" --fs "$FS" --sync none
# one transaction per connection (Pipeline_Depth = 1): the row shows that a
# worker holds 10,000 sessions; with BDAT 8 deep it would need far fewer
run --label "200ms sink 10k sessions w1" --count "$COUNT" --fs "$FS" --workers 1 --latency 200 \
    --connections 1000 --domains 10 --fsync-run 0 --pipeline-depth 1
run --label "backlog 10k"           --count 10000 --fs "$FS" --backlog --fsync-run 0 --no-latency
# BIG_BACKLOG=0: the large backlog comes from bench/run-backlog.sh's own run
# (bench/backlog.jsonl: 10k, 1,000,000, 10k), which takes ~10 minutes
[ "$BIG" != 0 ] && run --label "backlog ${BIG}" --count "$BIG" --fs "$FS" --backlog --fsync-run 0 --no-latency

# Same-run ratio STARTTLS+AUTH vs plain: alternating pairs (the machine's
# load moves the wall-clock rate more than TLS does).
for i in $(seq "${PAIRS:-3}"); do
  run --label "pair plain $i" --count $((COUNT / 2)) --fs "$FS" --fsync-run 0
  run --label "pair auth $i"  --count $((COUNT / 2)) --fs "$FS" --fsync-run 0 --mode auth
done

# The kernel's price of the spool's per-message file operations, no engine.
t=$SECONDS
FLOOR=bench/fs_floor.txt
D=$(mktemp -d /tmp/impetus-floor.XXXXXX)
if [ "$FS" = loop ]; then
  truncate -s 2G "$D/fs.img"; mkfs.ext4 -q -F -N 200000 "$D/fs.img"; mkdir "$D/m"; mount -o loop "$D/fs.img" "$D/m"
else mkdir "$D/m"; fi
python3 bench/spool/fs_floor.py "$D/m/f" "$COUNT" | sed "s/^/fs=$FS: /" >"$FLOOR"
if [ "$FS" = loop ]; then umount "$D/m"; mkdir "$D/r"; python3 bench/spool/fs_floor.py "$D/r" "$COUNT" | sed "s/^/fs=here: /" >>"$FLOOR"; fi
rm -rf "$D"
cat "$FLOOR" >&2
took "fs_floor.py" "$t"

# Issue 3: durable ingest alone (pickup/ -> queue), same file system kind.
t=$SECONDS
ING=bench/ingest.txt
: >"$ING"
if [ -x "$BUILD/bench/spool/spool_ingest_bench" ]; then
  D=$(mktemp -d /tmp/impetus-ingest.XXXXXX)
  if [ "$FS" = loop ]; then
    truncate -s 4G "$D/fs.img"; mkfs.ext4 -q -F -N 400000 "$D/fs.img"; mkdir "$D/m"; mount -o loop "$D/fs.img" "$D/m"
  else mkdir "$D/m"; fi
  for s in batch always none; do
    n=${INGEST_N:-50000}; [ "$s" = always ] && n=$((n / 10))
    rm -rf "$D/m/s"; mkdir "$D/m/s"
    "$BUILD/bench/spool/spool_ingest_bench" ingest "$D/m/s" "$n" "$s" | tee -a "$ING" >&2 || true
  done
  mountpoint -q "$D/m" && umount "$D/m"
  rm -rf "$D"
fi

took "spool_ingest_bench" "$t"

# Postfix, same sink binary, same run.
t=$SECONDS
COMPARE_JSON=bench/compare.json N="$PF_N" FS="$FS" bash bench/postfix/compare.sh "$BUILD" >&2 \
  || echo '{"error": "compare.sh failed"}' >bench/compare.json
took "postfix/compare.sh N=$PF_N" "$t"

t=$SECONDS
# SMTP injection (issue 21): the listener vs Postfix's smtpd, alternating
# runs, then 10,000 idle sessions (~6 minutes; LISTENER_RUNS, 3).
: >bench/listener.jsonl
MSGS=20000 RUNS="${LISTENER_RUNS:-3}" MODE=bdat IDLE=10000 JSON=bench/listener.jsonl \
  bash bench/listener/bench_listener.sh "$BUILD" >&2 || echo "run-all: bench_listener.sh failed" >&2
took "listener/bench_listener.sh RUNS=${LISTENER_RUNS:-3}" "$t"

# DKIM signing (issue 22): same build, same run.
if [ "${DKIM:-1}" != 0 ]; then
  t=$SECONDS
  REPEAT="${DKIM_REPEAT:-5}" bash bench/run-dkim.sh "$BUILD" >&2 || echo "run-all: run-dkim.sh failed" >&2
  took "run-dkim.sh REPEAT=${DKIM_REPEAT:-5}" "$t"
fi

took "total" "$T_ALL"
BL=""; [ "$BIG" = 0 ] && BL=bench/backlog.jsonl
python3 bench/render.py "$OUT" bench/compare.json "$ING" "$FLOOR" "$BL" >bench/BENCHMARKS.md
date -u '+%Y-%m-%d %H:%M UTC' >bench/full-run.txt
echo "run-all: wrote bench/BENCHMARKS.md" >&2
