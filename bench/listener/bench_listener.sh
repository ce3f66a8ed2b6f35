#!/usr/bin/env bash
# bench_listener.sh: SMTP injection, durable, into the engine's
# ESMTP_Listener vs a private Postfix smtpd, the same stream in the same run
# (issue 21). Both relay to impetus-sink. smtp-blast (bench/sink) opens
# SESSIONS pipelining sessions and sends MSGS messages of SIZE bytes;
# runs alternate A/B, RUNS times; each line prints msg/s accepted (every
# message got its 250, which Impetus sends after the group commit's sync
# and Postfix after cleanup's fsync of the queue file).
# Usage: bench/listener/bench_listener.sh [BUILD_DIR]
# Environment: MSGS (20000), SESSIONS (50), SIZE (1024), RUNS (3), MODE (data|bdat)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
MSGS=${MSGS:-20000} SESSIONS=${SESSIONS:-50} SIZE=${SIZE:-1024} RUNS=${RUNS:-3} MODE=${MODE:-data}
BLAST="$B/bench/sink/smtp-blast"
[ -x "$BLAST" ] || { echo "bench_listener: $BLAST missing (meson setup -Dbench=true)" >&2; exit 77; }
[ -x /usr/sbin/postfix ] || { echo "bench_listener: postfix missing" >&2; exit 77; }
TMP=$(mktemp -d /tmp/bench-listener.XXXXXX)
chmod 755 "$TMP" # postfix daemons run as the postfix user
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK_PORT=$(free_port) LSN_PORT=$(free_port) SMTPD_PORT=$(free_port)
"$B/tools/sink/impetus-sink" --listen 127.0.0.1:"$SINK_PORT" --ready-file "$TMP/sink.ready" >"$TMP/sink.json" 2>/dev/null &
SINK_PID=$!
ENG_PID=
cleanup() {
  [ -n "$ENG_PID" ] && kill "$ENG_PID" 2>/dev/null && wait "$ENG_PID" 2>/dev/null || true
  /usr/sbin/postfix -c "$TMP/pf/etc" stop >/dev/null 2>&1 || true
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
ec_logger { mainlog = "$TMP/mainlog" paniclog = "$TMP/paniclog" }
ESMTP_Listener {
  Listen "127.0.0.1:$LSN_PORT" { }
  Relay_Hosts = ( "127.0.0.1/32" )
  Max_Errors_Per_Connection = 0
}
CF
"$B/src/main/impetus" -c "$TMP/impetus.conf" >"$TMP/engine.err" 2>&1 &
ENG_PID=$!

. bench/postfix/pf_instance.sh
pf_instance "$TMP/pf" "$TMP/pfqueue" "$SMTPD_PORT" "$SINK_PORT" pfbench.localdomain \
  "default_process_limit = 200
smtpd_client_connection_count_limit = 0" >/dev/null
/usr/sbin/postfix -c "$TMP/pf/etc" start >"$TMP/pf.start" 2>&1 || { cat "$TMP/pf.start" >&2; exit 1; }
for p in "$LSN_PORT" "$SMTPD_PORT"; do
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.05; done
done
flags=(-c "$SESSIONS" -t 2 -m "$MSGS" -l "$SIZE")
[ "$MODE" = bdat ] && flags=(-b -w 8 "${flags[@]}")
rate() { "$BLAST" "${flags[@]}" 127.0.0.1:"$1" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["msgs_per_s"], j["failed"])'; }
# the engine's CPU (all threads: listener, spool, workers delivering to the sink)
cpu_ticks() { awk '{print $14 + $15}' /proc/"$ENG_PID"/stat; }
delivered() { local n; n=$(grep -c '@D@' "$TMP/mainlog" 2>/dev/null) || true; echo "${n:-0}"; }
hz=$(getconf CLK_TCK)
for r in $(seq "$RUNS"); do
  d0=$(delivered)
  c0=$(cpu_ticks)
  read -r imp impf < <(rate "$LSN_PORT")
  # wait until this run's messages are delivered, so the CPU covers both sides
  for _ in $(seq 600); do [ $(( $(delivered) - d0 )) -ge "$MSGS" ] && break; sleep 0.1; done
  c1=$(cpu_ticks)
  us=$(python3 -c "print(round(($c1 - $c0) * 1e6 / $hz / $MSGS, 1))")
  read -r pf pff < <(rate "$SMTPD_PORT")
  echo "run $r: impetus $imp msg/s (failed $impf; engine CPU $us us/msg accepted and delivered), postfix $pf msg/s (failed $pff), ratio $(python3 -c "print(round($imp/max($pf,1),1))")"
done
