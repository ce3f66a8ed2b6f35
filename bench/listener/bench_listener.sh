#!/usr/bin/env bash
# bench_listener.sh: SMTP injection, durable, into the engine's
# ESMTP_Listener vs a private Postfix smtpd, the same stream in the same run
# (issue 21). Both relay to impetus-sink. smtp-blast (bench/sink) opens
# SESSIONS pipelining sessions and sends MSGS messages of SIZE bytes;
# runs alternate A/B, RUNS times; each line prints msg/s accepted (every
# message got its 250, which Impetus sends after the group commit's sync
# and Postfix after cleanup's fsync of the queue file).
# Each side's run starts only once the sink has every message accepted so
# far (both sides deliver to the same sink: a Postfix still delivering its
# last run's messages takes the cores from the next Impetus run, which then
# measured 14-19k msg/s instead of 30k+; each line shows that tail).
# Usage: bench/listener/bench_listener.sh [BUILD_DIR]
# Environment: MSGS (20000), SESSIONS (50), SIZE (1024), RUNS (3), MODE (data|bdat),
# JSON (a file: one JSON line per run and a summary line, for bench/render.py),
# IDLE (0: after the runs, that many idle sessions against the engine,
# bench/listener/idle_sessions.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
MSGS=${MSGS:-20000} SESSIONS=${SESSIONS:-50} SIZE=${SIZE:-1024} RUNS=${RUNS:-3} MODE=${MODE:-data}
JSON=${JSON:-} IDLE=${IDLE:-0}
[ "$IDLE" -gt 0 ] && ulimit -n $((IDLE + 4096))
BLAST="$B/bench/sink/smtp-blast"
[ -x "$BLAST" ] || { echo "bench_listener: $BLAST missing (meson setup -Dbench=true)" >&2; exit 77; }
[ -x /usr/sbin/postfix ] || { echo "bench_listener: postfix missing" >&2; exit 77; }
TMP=$(mktemp -d /tmp/bench-listener.XXXXXX)
chmod 755 "$TMP" # postfix daemons run as the postfix user
. bench/listener/lsn_bench_lib.sh
SMTPD_PORT=$(lsn_free_port)
SINK_PID= ENG_PID=
cleanup() {
  [ -n "$ENG_PID" ] && kill "$ENG_PID" 2>/dev/null && wait "$ENG_PID" 2>/dev/null || true
  /usr/sbin/postfix -c "$TMP/pf/etc" stop >/dev/null 2>&1 || true
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
lsn_start "$TMP" "$B" "$B/src/main/impetus"

. bench/postfix/pf_instance.sh
pf_instance "$TMP/pf" "$TMP/pfqueue" "$SMTPD_PORT" "$SINK_PORT" pfbench.localdomain \
  "default_process_limit = 200
smtpd_client_connection_count_limit = 0" >/dev/null
/usr/sbin/postfix -c "$TMP/pf/etc" start >"$TMP/pf.start" 2>&1 || { cat "$TMP/pf.start" >&2; exit 1; }
lsn_wait_port "$LSN_PORT" || true
lsn_wait_port "$SMTPD_PORT" || true
flags=(-c "$SESSIONS" -t 2 -m "$MSGS" -l "$SIZE")
[ "$MODE" = bdat ] && flags=(-b -w 8 "${flags[@]}")
rate() { "$BLAST" "${flags[@]}" 127.0.0.1:"$1" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["msgs_per_s"], j["failed"])'; }
# the engine's CPU (all threads: listener, spool, workers delivering to the sink)
cpu_ticks() { awk '{print $14 + $15}' /proc/"$ENG_PID"/stat; }
delivered() { lsn_delivered "$TMP"; }
hz=$(getconf CLK_TCK)
# messages the sink has received (its summary on SIGUSR1)
sink_count() {
  local before after
  before=$(grep -c '"messages"' "$TMP/sink.json" 2>/dev/null) || before=0
  kill -USR1 "$SINK_PID"
  for _ in $(seq 100); do
    after=$(grep -c '"messages"' "$TMP/sink.json" 2>/dev/null) || after=0
    [ "$after" -gt "$before" ] && break
    sleep 0.02
  done
  grep '"messages"' "$TMP/sink.json" | tail -1 | tr -dc 0-9
}
# wait (at most 300 s) until the sink has every message accepted so far;
# prints how many were missing and the seconds waited
sent=0
drain() {
  local t0 n missing
  t0=$(date +%s.%N)
  n=$(sink_count)
  missing=$((sent - n))
  for _ in $(seq 3000); do [ "$n" -ge "$sent" ] && break; sleep 0.1; n=$(sink_count); done
  echo "$missing $(python3 -c "import time; print(round(time.time() - $t0, 1))")"
}
median() { python3 -c 'import sys, statistics; print("%g" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
imps=() pfs=() uss=() ratios=()
for r in $(seq "$RUNS"); do
  read -r pf_tail pf_wait < <(drain)
  d0=$(delivered)
  c0=$(cpu_ticks)
  read -r imp impf < <(rate "$LSN_PORT")
  sent=$((sent + MSGS))
  # wait until this run's messages are delivered, so the CPU covers both sides
  for _ in $(seq 600); do [ $(( $(delivered) - d0 )) -ge "$MSGS" ] && break; sleep 0.1; done
  c1=$(cpu_ticks)
  us=$(python3 -c "print(round(($c1 - $c0) * 1e6 / $hz / $MSGS, 1))")
  read -r imp_tail imp_wait < <(drain)
  read -r pf pff < <(rate "$SMTPD_PORT")
  sent=$((sent + MSGS))
  ratio=$(python3 -c "print(round($imp/max($pf,1),1))")
  imps+=("$imp") pfs+=("$pf") uss+=("$us") ratios+=("$ratio")
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "run $r: impetus $imp msg/s (failed $impf; engine CPU $us us/msg accepted and delivered), postfix $pf msg/s (failed $pff), ratio $ratio (load $load; before it: postfix's last $pf_tail still undelivered, drained in $pf_wait s)"
  [ -n "$JSON" ] && echo "{\"bench\": \"listener\", \"run\": $r, \"mode\": \"$MODE\", \"msgs\": $MSGS, \"sessions\": $SESSIONS, \"size\": $SIZE, \"impetus_msgs_per_s\": $imp, \"postfix_msgs_per_s\": $pf, \"ratio\": $ratio, \"engine_us_per_msg\": $us, \"failed\": $((impf + pff)), \"load\": $load, \"postfix_tail\": $pf_tail}" >>"$JSON"
done
summary="median of $RUNS: impetus $(median "${imps[@]}") msg/s, postfix $(median "${pfs[@]}") msg/s, ratio $(median "${ratios[@]}"), engine CPU $(median "${uss[@]}") us/msg"
echo "$summary"
idle=""
if [ "$IDLE" -gt 0 ]; then
  idle=$(python3 bench/listener/idle_sessions.py "$ENG_PID" "$LSN_PORT" "$IDLE") || idle="idle_sessions.py failed"
  echo "$idle"
fi
[ -n "$JSON" ] && python3 -c 'import json, sys; print(json.dumps({"bench": "listener", "summary": sys.argv[1], "idle": sys.argv[2], "command": sys.argv[3]}))' \
  "$summary" "$idle" "MSGS=$MSGS RUNS=$RUNS MODE=$MODE IDLE=$IDLE bench/listener/bench_listener.sh" >>"$JSON"
exit 0
