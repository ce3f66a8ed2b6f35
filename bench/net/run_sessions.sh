#!/bin/sh
# Start impetus-sink (another process: one process cannot hold 2 x 10,000
# sockets under the 20,000 open-files hard limit), run bench/net/sessions
# against it, stop the sink by PID.
#
#   bench/net/run_sessions.sh BUILD_DIR REPLY_DELAY_MS [sessions options...]
#
# e.g. 10,000 sessions held by one worker, every reply delayed 200 ms:
#   bench/net/run_sessions.sh build 200 -n 10000 -t 30
#   bench/net/run_sessions.sh build 200 -n 10000 -t 30 --tls
# and messages/s over reused pipelined connections (no delay):
#   bench/net/run_sessions.sh build 0 -n 200 -t 10
set -eu
build=$1; delay=$2; shift 2
sink=$build/tools/sink/impetus-sink
drv=$build/bench/net/sessions
[ -x "$sink" ] && [ -x "$drv" ] || { echo "build $sink and $drv first" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d /tmp/impetus-bench-net-XXXXXX)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
tlsargs=""
case " $* " in *" --tls "*)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$tmp/k.pem" -out "$tmp/c.pem" -subj /CN=bench.test -days 2 2>/dev/null
  tlsargs="--cert $tmp/c.pem --key $tmp/k.pem" ;;
esac
dargs=""
[ "$delay" -gt 0 ] && dargs="--reply-delay $delay"
# shellcheck disable=SC2086
"$sink" --listen 127.0.0.1:0 --ready-file "$tmp/ready" $dargs $tlsargs >"$tmp/sink.json" 2>"$tmp/sink.err" &
pid=$!
i=0
while [ ! -s "$tmp/ready" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
port=$(sed -n 's/^plain .*:\([0-9]*\)$/\1/p' "$tmp/ready")
[ -n "$port" ] || { cat "$tmp/sink.err" >&2; exit 1; }
echo "# sink pid $pid port $port"
"$drv" -p "$port" "$@"
kill -TERM "$pid"; wait "$pid" || true
echo "sink: $(grep -E '"(messages|connections)"' "$tmp/sink.json" | tr -d ' \n')"
