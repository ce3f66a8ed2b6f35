#!/usr/bin/env bash
# bench_bdat.sh [BUILD_DIR]: impetus-sink's raw limit with DATA next to BDAT
# (RFC 3030 CHUNKING), measured in the same run with the same client
# (bench/sink/smtp-blast.c) on a free loopback port:
#   data    MAIL/RCPT/DATA in one write, body + dot + next envelope after the 354;
#   bdat-1  MAIL/RCPT/"BDAT n LAST" + octets in one write, one message in flight;
#   bdat-W  the same with W messages in flight per connection (several whole
#           messages per TCP send, as an engine pipelining BDAT sends them).
# Reports, per mode, messages/s and the sink's CPU (utime+stime from
# /proc/PID/stat) in microseconds per message; best of RUNS alternating runs.
# Tunables (environment): MSGS (200000), SIZE (1024), SESSIONS (32),
# BLAST_THREADS (2), WINDOW (8), RUNS (3). Stops the sink it started; exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
MSGS=${MSGS:-200000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-32}
BLAST_THREADS=${BLAST_THREADS:-2}
WINDOW=${WINDOW:-8}
RUNS=${RUNS:-3}
SINK="$BUILD/tools/sink/impetus-sink"
BLAST="$BUILD/bench/sink/smtp-blast"
[ -x "$SINK" ] && [ -x "$BLAST" ] || { echo "bench_bdat: build first (meson compile -C $BUILD)" >&2; exit 1; }

TMP=$(mktemp -d)
SPID=
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

"$SINK" --listen 127.0.0.1:0 --ready-file "$TMP/ready" >"$TMP/sink.json" 2>"$TMP/sink.err" &
SPID=$!
for _ in $(seq 200); do [ -s "$TMP/ready" ] && break; sleep 0.05; done
[ -s "$TMP/ready" ] || { echo "bench_bdat: sink did not start: $(cat "$TMP/sink.err")" >&2; exit 1; }
ADDR=$(awk '$1 == "plain" {print $2; exit}' "$TMP/ready")

cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' /proc/"$1"/stat; }
declare -A RATE CPU
MODES=(data bdat-1 "bdat-$WINDOW")
for run in $(seq "$RUNS"); do
  for mode in "${MODES[@]}"; do
    case $mode in
      data) flags=() ;;
      *) flags=(-b -w "${mode#bdat-}") ;;
    esac
    c0=$(cpu_s "$SPID")
    v=$("$BLAST" "${flags[@]}" -c "$SESSIONS" -t "$BLAST_THREADS" -m "$MSGS" -l "$SIZE" "$ADDR" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"] == 0, d; print(d["msgs_per_s"])')
    c1=$(cpu_s "$SPID")
    us=$(python3 -c "print('%.2f' % (($c1-$c0)*1e6/$MSGS))")
    echo "bench_bdat: run $run mode=$mode msgs=$MSGS size=$SIZE sessions=$SESSIONS: $v msg/s, sink $us us CPU/msg"
    [ "${RATE[$mode]:-0}" -lt "$v" ] && RATE[$mode]=$v
    if [ -z "${CPU[$mode]:-}" ] || python3 -c "import sys; sys.exit(0 if $us < ${CPU[$mode]} else 1)"; then
      CPU[$mode]=$us
    fi
  done
done
kill -TERM "$SPID"
wait "$SPID" || true
SPID=
read -r got bdat < <(python3 -c "import json; d=json.load(open('$TMP/sink.json')); print(d['messages'], d['bdat_messages'])")

echo
echo "== impetus-sink, DATA vs BDAT: ${SIZE}-byte messages, $SESSIONS connections, smtp-blast -t $BLAST_THREADS, best of $RUNS alternating runs =="
printf '%-10s %12s %16s %10s\n' mode "msg/s" "sink us CPU/msg" "vs data"
for mode in "${MODES[@]}"; do
  printf '%-10s %12s %16s %9.2fx\n' "$mode" "${RATE[$mode]}" "${CPU[$mode]}" \
    "$(python3 -c "print(${CPU[data]}/${CPU[$mode]} if ${CPU[$mode]} else 0)")"
done
echo "(vs data: sink CPU per message of DATA divided by that of the mode; > 1 means cheaper)"
echo "impetus-sink counted $got messages, $bdat by BDAT (expected $(( MSGS * RUNS * 3 )), $(( MSGS * RUNS * 2 )))"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (shared machine: compare within a run)"
