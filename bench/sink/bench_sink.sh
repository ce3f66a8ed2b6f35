#!/usr/bin/env bash
# bench_sink.sh [BUILD_DIR]: messages per second impetus-sink absorbs from a
# pipelining client on loopback (1 KB messages, reused connections, several
# connections), next to Postfix's smtp-sink measured in the same run with the
# SAME clients:
#   1. Postfix smtp-source (-d: reuse connections) against smtp-sink, then
#      against impetus-sink, identical flags;
#   2. smtp-blast (bench/sink/smtp-blast.c, pipelines MAIL/RCPT/DATA and the
#      next envelope after the dot, 2 threads) against both, to find each
#      sink's limit.
# Installs the postfix package when smtp-sink is missing (Debian archive),
# stops the postfix service it starts, and uses only free loopback ports.
# Tunables (environment): MSGS (200000, smtp-blast), SOURCE_MSGS (50000,
# smtp-source), SIZE (1024), SESSIONS (32), BLAST_THREADS (2), RUNS (3,
# alternating sinks).
# Prints one line per measurement and a summary with the ratios (wall-clock
# rate, and messages per CPU-second of the sink process); exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
MSGS=${MSGS:-200000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-32}
BLAST_THREADS=${BLAST_THREADS:-2}
SOURCE_MSGS=${SOURCE_MSGS:-50000}
RUNS=${RUNS:-3}
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

# Each measurement also reads the sink's CPU time (utime+stime from
# /proc/PID/stat) so the report can give messages per sink CPU-second: on a
# shared machine the wall-clock rate moves with the load, the CPU cost does not.
SPID=${PIDS[0]}
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' /proc/"$1"/stat; }
SOURCE_FLAGS=(-d -s "$SESSIONS" -m "$SOURCE_MSGS" -l "$SIZE" -f a@bench.test -t b@bench.test)
run_source() { # port -> msg/s
  local t0 t1
  t0=$(date +%s.%N)
  /usr/sbin/smtp-source "${SOURCE_FLAGS[@]}" 127.0.0.1:"$1" >/dev/null 2>&1
  t1=$(date +%s.%N)
  python3 -c "print(round($SOURCE_MSGS/($t1-$t0)))"
}
run_blast() { # port -> msg/s
  "$BLAST" -c "$SESSIONS" -t "$BLAST_THREADS" -m "$MSGS" -l "$SIZE" 127.0.0.1:"$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs_per_s"])'
}

declare -A R C
for kind in source blast; do
  n=$MSGS; [ $kind = source ] && n=$SOURCE_MSGS
  for run in $(seq "$RUNS"); do
    for target in smtp-sink impetus-sink; do   # alternate, so both see the same load
      port=$PS pid=$SPID
      [ $target = impetus-sink ] && port=$PI pid=$IPID
      c0=$(cpu_s "$pid")
      v=$(run_$kind "$port")
      c1=$(cpu_s "$pid")
      eff=$(python3 -c "c=$c1-$c0; print(round($n/c) if c > 0 else 0)")
      echo "bench_sink: run $run client=$kind sink=$target msgs=$n size=$SIZE sessions=$SESSIONS: $v msg/s, $eff msg per sink CPU-second"
      [ "${R[$kind,$target]:-0}" -lt "$v" ] && R[$kind,$target]=$v
      [ "${C[$kind,$target]:-0}" -lt "$eff" ] && C[$kind,$target]=$eff
    done
  done
done
kill -TERM "$IPID"
wait "$IPID" || true
got=$(python3 -c "import json; print(json.load(open('$TMP/impetus-sink.json'))['messages'])")

echo
echo "== impetus-sink vs Postfix smtp-sink: ${SIZE}-byte messages, $SESSIONS reused connections, best of $RUNS alternating runs =="
printf '%-40s %11s %13s %7s   %s\n' "client" "smtp-sink" "impetus-sink" "ratio" "(msg per sink CPU-second: smtp-sink, impetus-sink, ratio)"
for kind in source blast; do
  name="smtp-source ${SOURCE_FLAGS[*]:0:8}"
  [ $kind = blast ] && name="smtp-blast -c $SESSIONS -t $BLAST_THREADS -m $MSGS -l $SIZE"
  a=${R[$kind,smtp-sink]}; b=${R[$kind,impetus-sink]}
  ca=${C[$kind,smtp-sink]}; cb=${C[$kind,impetus-sink]}
  printf '%-40s %9s/s %11s/s %6.2fx   (%s, %s, %.2fx)\n' "$name" "$a" "$b" "$(python3 -c "print($b/$a)")" \
    "$ca" "$cb" "$(python3 -c "print($cb/$ca if $ca else 0)")"
done
echo "impetus-sink counted $got messages (expected $(( (MSGS + SOURCE_MSGS) * RUNS )))"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (shared machine: compare ratios, not absolutes)"
