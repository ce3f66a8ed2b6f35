#!/usr/bin/env bash
# commit_counts.sh: what bounds SMTP injection, from counts (issue 21). An
# engine with one Listen relaying to impetus-sink (as bench_listener.sh,
# without Postfix) and a Metrics_Listener; RUNS smtp-blast BDAT runs of
# MSGS 1 KB messages over SESSIONS sessions with WINDOW messages in flight
# each. Per run: msg/s accepted; ingest batches and fdatasyncs (count,
# per second, messages per batch, mean sync time, share of the run the
# commit thread spent syncing), from /metrics; CPU ticks per engine thread
# (/proc/PID/task) while accepting and until the last delivery; the
# sink's CPU.
# Usage: bench/listener/commit_counts.sh [BUILD_DIR [ENGINE_BINARY]]
# Environment: MSGS (20000), RUNS (3), SESSIONS (50), WINDOW (8),
# ENGINE_ENV (e.g. "MALLOC_CONF=..." for the engine)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
ENG=${2:-$B/src/main/impetus}
MSGS=${MSGS:-20000} RUNS=${RUNS:-3} SESSIONS=${SESSIONS:-50} WINDOW=${WINDOW:-8}
BLAST="$B/bench/sink/smtp-blast"
[ -x "$BLAST" ] || { echo "commit_counts: $BLAST missing (meson setup -Dbench=true)" >&2; exit 77; }
command -v curl >/dev/null || { echo "commit_counts: curl missing" >&2; exit 77; }
TMP=$(mktemp -d /tmp/commit-counts.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK_PORT=$(free_port) LSN_PORT=$(free_port) MET_PORT=$(free_port)
"$B/tools/sink/impetus-sink" --listen 127.0.0.1:"$SINK_PORT" --ready-file "$TMP/sink.ready" >/dev/null 2>&1 &
SINK_PID=$!
ENG_PID=
cleanup() {
  [ -n "$ENG_PID" ] && kill "$ENG_PID" 2>/dev/null && wait "$ENG_PID" 2>/dev/null || true
  kill "$SINK_PID" 2>/dev/null || true
  wait "$SINK_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
for _ in $(seq 500); do [ -s "$TMP/sink.ready" ] && break; sleep 0.02; done
mkdir -p "$TMP/spool"
cat >"$TMP/impetus.conf" <<CF
Spoolbase = "$TMP/spool"
User = "root"
Group = "root"
TLS = "no"
Gateway = "127.0.0.1:$SINK_PORT"
Metrics_Listener = "127.0.0.1:$MET_PORT"
ec_logger { mainlog = "$TMP/mainlog" paniclog = "$TMP/paniclog" }
ESMTP_Listener {
  Listen "127.0.0.1:$LSN_PORT" { }
  Relay_Hosts = ( "127.0.0.1/32" )
  Max_Errors_Per_Connection = 0
}
CF
env ${ENGINE_ENV:-} "$ENG" -c "$TMP/impetus.conf" >"$TMP/engine.err" 2>&1 &
ENG_PID=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$LSN_PORT") 2>/dev/null && break; sleep 0.05; done
# batches, syncs, sync seconds
metrics() {
  curl -s "http://127.0.0.1:$MET_PORT/metrics" |
    awk '/^impetus_spool_batches_total /{b=$2} /^impetus_spool_syncs_total /{s=$2}
         /^impetus_spool_sync_seconds_sum /{t=$2} END{print b, s, t}'
}
# "thread=ticks ..." for the engine's threads (same names summed)
threads() {
  for t in /proc/"$ENG_PID"/task/*; do echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done |
    awk '{a[$1] += $2} END {for (k in a) printf "%s=%d ", k, a[k]}'
}
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
delivered() { local n; n=$(grep -c '@D@' "$TMP/mainlog" 2>/dev/null) || true; echo "${n:-0}"; }
for r in $(seq "$RUNS"); do
  d0=$(delivered) m0=$(metrics) t0=$(threads) s0=$(ticks "$SINK_PID")
  out=$("$BLAST" -b -w "$WINDOW" -c "$SESSIONS" -t 2 -m "$MSGS" -l 1024 127.0.0.1:"$LSN_PORT")
  m1=$(metrics) t1=$(threads) s1=$(ticks "$SINK_PID")
  for _ in $(seq 600); do [ $(( $(delivered) - d0 )) -ge "$MSGS" ] && break; sleep 0.1; done
  t2=$(threads)
  python3 - "$out" "$m0" "$m1" "$t0" "$t1" "$t2" "$s0" "$s1" "$MSGS" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
out, m0, m1, t0, t1, t2, s0, s1, n, load = sys.argv[1:]
j = json.loads(out.splitlines()[0])
n = int(n); rate = j["msgs_per_s"]; el = j["elapsed_s"]
b0, y0, q0 = map(float, m0.split()); b1, y1, q1 = map(float, m1.split())
b, y, q = b1 - b0, y1 - y0, q1 - q0
th = lambda s: {k: int(v) for k, v in (x.split("=") for x in s.split())}
T0, T1, T2 = th(t0), th(t1), th(t2)
acc = {k: T1[k] - T0.get(k, 0) for k in T1 if T1[k] - T0.get(k, 0)}
tail = {k: T2[k] - T1.get(k, 0) for k in T2 if T2[k] - T1.get(k, 0)}
print("%.0f msg/s (%.2f s, load %s): %d batches (%.1f msg each, %.0f/s), %d fdatasyncs "
      "(%.1f msg each, %.0f/s, mean %.2f ms, syncing %.0f%% of the run); "
      "engine ticks while accepting %s, after %s (total %d = %.1f us/msg); sink %d ticks"
      % (rate, el, load, b, n / max(b, 1), b / el, y, n / max(y, 1), y / el, q / max(y, 1) * 1e3,
         q / el * 100, acc, tail, sum(acc.values()) + sum(tail.values()),
         (sum(acc.values()) + sum(tail.values())) * 1e4 / n, int(s1) - int(s0)))
PY
done
