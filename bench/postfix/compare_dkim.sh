#!/usr/bin/env bash
# compare_dkim.sh [BUILD_DIR]: DKIM signing throughput, Postfix + the
# OpenDKIM milter vs Impetus, same RSA-2048 key, same message, same run.
#
#   Postfix: a private instance (pf_instance.sh) on a free loopback port
#            with smtpd_milters = inet:127.0.0.1:MILTER, relaying to
#            impetus-sink; OpenDKIM (Debian's opendkim, foreground, own
#            configuration in the temp dir: Mode s, Domain sender.test,
#            Selector s1, relaxed/relaxed, SignHeaders From,To,Subject)
#            signs during smtpd's DATA. N messages from smtp-source (8
#            sessions); the time until the sink has all N is the rate.
#   Impetus: bench/impetus-bench --dkim rsa --dkim-key KEY --backlog with
#            the same N: pickup -> sign at ingest -> durable -> sink.
# Postfix's rate includes receiving by SMTP (its only way to sign with the
# milter); Impetus's includes reading pickup files and the durable spool.
# env N=2000 SIZE=1024. Removes everything it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
N=${N:-2000}
SIZE=${SIZE:-1024}
SINK="$BUILD/tools/sink/impetus-sink"
[ -x "$SINK" ] || { echo "compare_dkim: build first" >&2; exit 1; }
[ -x /usr/sbin/postfix ] && [ -x /usr/sbin/opendkim ] && [ -x /usr/sbin/smtp-source ] ||
  { echo "compare_dkim: needs postfix and opendkim (Debian packages)" >&2; exit 77; }
if postfix status >/dev/null 2>&1; then postfix stop >/dev/null 2>&1 || true; fi

TMP=$(mktemp -d /tmp/impetus-dkimcompare.XXXXXX)
chmod 755 "$TMP"
SINK_PID= OD_PID= PF_UP=
cleanup() {
  if [ -n "$PF_UP" ]; then /usr/sbin/postfix -c "$TMP/pf/etc" stop >/dev/null 2>&1 || true; sleep 1; fi
  for p in $(pgrep -f -- "$TMP/pf" || true); do kill "$p" 2>/dev/null || true; done
  [ -n "$OD_PID" ] && kill "$OD_PID" 2>/dev/null || true
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the key both sign with ---
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/s1.key" 2>/dev/null
chmod 600 "$TMP/s1.key"

# --- sink ---
SINK_PORT=$(free_port)
mkdir "$TMP/got"
"$SINK" --listen 127.0.0.1:"$SINK_PORT" --ready-file "$TMP/sink.ready" --save-dir "$TMP/got" \
  >"$TMP/sink.json" 2>/dev/null &
SINK_PID=$!
for _ in $(seq 500); do [ -s "$TMP/sink.ready" ] && break; sleep 0.02; done

# --- OpenDKIM (signing only) ---
MILTER_PORT=$(free_port)
cat >"$TMP/opendkim.conf" <<CF
Syslog no
Mode s
Domain sender.test
Selector s1
KeyFile $TMP/s1.key
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
SignHeaders From,To,Subject
OversignHeaders From
Socket inet:$MILTER_PORT@127.0.0.1
PidFile $TMP/opendkim.pid
RequireSafeKeys no
CF
/usr/sbin/opendkim -f -x "$TMP/opendkim.conf" 2>"$TMP/opendkim.err" &
OD_PID=$!
sleep 0.5

# --- Postfix with the milter ---
PF="$TMP/pf"
SMTPD_PORT=$(free_port)
. bench/postfix/pf_instance.sh
pf_instance "$PF" "$TMP/pfqueue" "$SMTPD_PORT" "$SINK_PORT" pfdkim.localdomain \
  "default_process_limit = 200
smtp_destination_concurrency_limit = 64
initial_destination_concurrency = 64
smtp_destination_recipient_limit = 50
smtpd_milters = inet:127.0.0.1:$MILTER_PORT
milter_default_action = tempfail" >/dev/null
/usr/sbin/postfix -c "$PF/etc" start >/dev/null 2>&1
PF_UP=1

sink_count() { kill -USR1 "$SINK_PID"; sleep 0.05; python3 - "$TMP/sink.json" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
objs = [o for o in t.split("\n}") if '"messages"' in o]
print(json.loads(objs[-1] + "\n}")["messages"] if objs else 0)
PY
}
echo "compare_dkim: $N messages through Postfix + OpenDKIM" >&2
t0=$(date +%s.%N)
/usr/sbin/smtp-source -s 8 -m "$N" -l "$SIZE" -f bench@sender.test -t u@dest0.test \
  127.0.0.1:"$SMTPD_PORT" >/dev/null 2>&1
deadline=$(( $(date +%s) + 1800 ))
while :; do
  n=$(sink_count)
  [ "$n" -ge "$N" ] && break
  [ "$(date +%s)" -gt "$deadline" ] && { echo "compare_dkim: Postfix timed out ($n of $N)" >&2; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
signed=$(grep -l "^DKIM-Signature: " "$TMP"/got/* 2>/dev/null | wc -l)
PF_RATE=$(python3 -c "print(round($N / ($t1 - $t0), 1))")
echo "postfix+opendkim: $N in $(python3 -c "print(round($t1 - $t0, 2))") s = $PF_RATE msg/s ($signed arrived signed)"

echo "compare_dkim: impetus (--dkim rsa, same key, --backlog)" >&2
bench/impetus-bench --build "$BUILD" --count "$N" --size "$SIZE" --backlog --fsync-run 0 \
  --no-latency --quiet --dkim rsa --dkim-key "$TMP/s1.key" --label compare-dkim \
  --json "$TMP/imp.json" >/dev/null
IMP_RATE=$(python3 -c "import json; print(json.loads(open('$TMP/imp.json').readline())['msgs_per_s'])")
IMP_CPU=$(python3 -c "import json; print(json.loads(open('$TMP/imp.json').readline())['cpu_us_per_msg'])")
SPEED=$(openssl speed -seconds 2 rsa2048 2>/dev/null | awk '/^rsa 2048/ {print $6}')
echo "impetus: $IMP_RATE msg/s, $IMP_CPU us CPU/msg; openssl speed rsa2048 sign/s per core: $SPEED"
echo "RATIO impetus/postfix+opendkim = $(python3 -c "print(round($IMP_RATE / $PF_RATE, 1))")x (N=$N SIZE=$SIZE, same key and sink, same run)"
