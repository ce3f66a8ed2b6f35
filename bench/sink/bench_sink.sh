#!/usr/bin/env bash
# bench_sink.sh [BUILD_DIR]: messages per second impetus-sink absorbs from a
# pipelining client on loopback (1 KB messages, reused connections, several
# connections), next to Postfix's smtp-sink measured in the same run with the
# SAME clients:
#   1. Postfix smtp-source (-d: reuse connections) against smtp-sink, then
#      against impetus-sink, identical flags;
#   2. smtp-blast (bench/sink/smtp-blast.c, pipelines MAIL/RCPT/DATA and the
#      next envelope after the dot) against both, to find each sink's limit.
# Installs the postfix package when smtp-sink is missing (Debian archive),
# stops the postfix service it starts, and uses only free loopback ports.
# Tunables (environment): MSGS (200000), SIZE (1024), SESSIONS (16), RUNS (1).
# Prints one line per measurement and a summary with the ratios; exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
MSGS=${MSGS:-200000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-16}
RUNS=${RUNS:-1}
SINK="$BUILD/tools/sink/impetus-sink"
BLAST="$BUILD/bench/sink/smtp-blast"
[ -x "$SINK" ] && [ -x "$BLAST" ] || { echo "bench_sink: build first (meson compile -C $BUILD)" >&2; exit 1; }

if [ ! -x /usr/sbin/smtp-sink ] || [ ! -x /usr/sbin/smtp-source ]; then
  echo "bench_sink: installing postfix for smtp-sink/smtp-source" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y postfix >/dev/null
fi
# The package may start a postfix service on port 25: we do not want it.
if command -v postfix >/dev/null && postfix status >/dev/null 2>&1; then
  postfix stop >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null && systemctl is-active --quiet postfix 2>/dev/null; then
  systemctl stop postfix || true
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.05
  done
  echo "bench_sink: port $1 never opened" >&2; exit 1
}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

PS=$(free_port)
# smtp-sink: -c counters off; -u is required when running as root; backlog 1024.
SINK_USER=()
[ "$(id -u)" -eq 0 ] && SINK_USER=(-u nobody)
/usr/sbin/smtp-sink "${SINK_USER[@]}" 127.0.0.1:"$PS" 1024 >"$TMP/smtp-sink.log" 2>&1 &
PIDS+=($!)
PI=$(free_port)
"$SINK" --listen 127.0.0.1:"$PI" >"$TMP/impetus-sink.json" 2>"$TMP/impetus-sink.err" &
IPID=$!
PIDS+=($IPID)
wait_port "$PS"
wait_port "$PI"

# rate NAME CMD...: run CMD, print and return messages/s.
SOURCE_FLAGS=(-d -s "$SESSIONS" -m "$MSGS" -l "$SIZE" -f a@bench.test -t b@bench.test)
run_source() { # port
  local t0 t1
  t0=$(date +%s.%N)
  /usr/sbin/smtp-source "${SOURCE_FLAGS[@]}" 127.0.0.1:"$1" >/dev/null 2>&1
  t1=$(date +%s.%N)
  python3 -c "print(round($MSGS/($t1-$t0)))"
}
run_blast() { # port
  "$BLAST" -c "$SESSIONS" -m "$MSGS" -l "$SIZE" 127.0.0.1:"$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs_per_s"])'
}
best() { sort -n | tail -1; }

declare -A R
for kind in source blast; do
  for target in smtp-sink impetus-sink; do
    port=$PS; [ $target = impetus-sink ] && port=$PI
    vals=""
    for _ in $(seq "$RUNS"); do
      v=$(run_$kind "$port")
      vals+="$v"$'\n'
      echo "bench_sink: client=$kind sink=$target msgs=$MSGS size=$SIZE sessions=$SESSIONS: $v msg/s"
    done
    R[$kind,$target]=$(printf '%s' "$vals" | best)
  done
done
kill -TERM "$IPID"
wait "$IPID" || true
got=$(python3 -c "import json; print(json.load(open('$TMP/impetus-sink.json'))['messages'])")

echo
echo "== impetus-sink vs Postfix smtp-sink, ${SIZE}-byte messages, $SESSIONS reused connections, $MSGS messages per run (best of $RUNS) =="
printf '%-34s %12s %14s %7s\n' "client" "smtp-sink" "impetus-sink" "ratio"
for kind in source blast; do
  name="smtp-source ${SOURCE_FLAGS[*]:0:6}"
  [ $kind = blast ] && name="smtp-blast -c $SESSIONS -l $SIZE (pipelined)"
  a=${R[$kind,smtp-sink]}; b=${R[$kind,impetus-sink]}
  printf '%-34s %10s/s %12s/s %6.2fx\n' "$name" "$a" "$b" "$(python3 -c "print($b/$a)")"
done
echo "impetus-sink counted $got messages (expected $((MSGS * 2 * RUNS)))"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (shared machine: compare ratios, not absolutes)"
