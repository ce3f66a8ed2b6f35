#!/usr/bin/env bash
# compare.sh [BUILD_DIR]: Postfix vs Impetus on the same workload, same run.
#
# N messages of SIZE bytes (env N=20000 SIZE=1024) are handed to each MTA's
# pickup path while it is stopped, then the MTA is started and the time until
# impetus-sink (the same sink binary, a fresh instance per MTA) has accepted
# all N is the drain time:
#   Postfix: a PRIVATE instance (own config_directory, queue_directory and
#            data_directory under a temp dir; smtpd only on a free loopback
#            port; relayhost = [127.0.0.1]:SINK; no local delivery; chroot
#            off), messages queued with its sendmail(1) -> postdrop ->
#            maildrop/, drained by pickup -> cleanup -> qmgr -> smtp, with
#            smtp_destination_concurrency_limit = $PF_CONC (64) and
#            connection caching (Postfix's default for a busy nexthop).
#   Impetus: bench/impetus-bench --backlog (the same files in pickup/ before
#            start; durable, Spool_Sync = batch).
# Both spools live on the same file system (env FS=here|loop, as in
# impetus-bench; 'loop' makes a journaled ext4 on a loop file for each).
# Prints both rates, CPU per message of all the MTA's processes (Postfix:
# every process of the instance, summed from /proc), and the ratio.
# Installs the postfix package only when it is missing (Debian archive,
# DEBIAN_FRONTEND=noninteractive), stops any postfix service the package
# starts, and removes everything it started (instance, processes, temp dirs,
# loop mounts). The system's /etc/postfix is never modified.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
N=${N:-20000}
SIZE=${SIZE:-1024}
FS=${FS:-here}
PF_CONC=${PF_CONC:-64}
SINK="$BUILD/tools/sink/impetus-sink"
[ -x "$SINK" ] || { echo "compare: build first (meson compile -C $BUILD)" >&2; exit 1; }

if [ ! -x /usr/sbin/postfix ] || [ ! -x /usr/sbin/sendmail ]; then
  echo "compare: installing postfix (Debian archive)" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >/dev/null
fi
# A packaged postfix service may be running on port 25: not ours, stop it.
if postfix status >/dev/null 2>&1; then postfix stop >/dev/null 2>&1 || true; fi

TMP=$(mktemp -d /tmp/impetus-pfcompare.XXXXXX)
chmod 755 "$TMP" # postfix daemons run as the postfix user
SINK_PID=
PF_UP=
cleanup() {
  if [ -n "$PF_UP" ]; then /usr/sbin/postfix -c "$TMP/pf/etc" stop >/dev/null 2>&1 || true; sleep 1; fi
  # any process still running from the private instance's config directory
  for p in $(pgrep -f -- "$TMP/pf" || true); do kill "$p" 2>/dev/null || true; done
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  mountpoint -q "$TMP/fs" 2>/dev/null && umount "$TMP/fs"
  [ -n "${KEEP:-}" ] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

BASE="$TMP"
if [ "$FS" = loop ]; then
  truncate -s $(( (N * (SIZE + 4096) * 2 / 1048576) + 1024 ))M "$TMP/fs.img"
  mkfs.ext4 -q -F -N $(( N * 4 + 65536 )) "$TMP/fs.img"
  mkdir "$TMP/fs" && mount -o loop "$TMP/fs.img" "$TMP/fs"
  BASE="$TMP/fs"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK_PORT=$(free_port)
"$SINK" --listen 127.0.0.1:"$SINK_PORT" --ready-file "$TMP/sink.ready" >"$TMP/sink.json" 2>/dev/null &
SINK_PID=$!
for _ in $(seq 500); do [ -s "$TMP/sink.ready" ] && break; sleep 0.02; done

# --- private Postfix instance ---
PF="$TMP/pf"
SMTPD_PORT=$(free_port)
. bench/postfix/pf_instance.sh
pf_instance "$PF" "$BASE/pfqueue" "$SMTPD_PORT" "$SINK_PORT" pfbench.localdomain \
  "default_process_limit = 200
smtp_destination_concurrency_limit = $PF_CONC
initial_destination_concurrency = $PF_CONC
smtp_destination_recipient_limit = 50"

# The same message impetus-bench generates, without the pickup envelope.
python3 - "$SIZE" >"$TMP/msg.eml" <<'PY'
import sys
size = int(sys.argv[1])
head = "From: <bench@sender.test>\nTo: <rcpt@dest.test>\nSubject: impetus-bench\n\n"
line = "x" * 76 + "\n"
sys.stdout.write(head + line * max(1, (size - len(head)) // len(line)))
PY
INJECT=${INJECT:-smtp}
t_inj0=$(date +%s.%N)
if [ "$INJECT" = sendmail ]; then
  # sendmail + postdrop per message into maildrop/ while the instance is
  # stopped: faithful, but ~55 ms of CPU per message for the two execs on
  # this VM (20,000 messages = most of an hour on 2 shared cores).
  echo "compare: queueing $N messages with Postfix's sendmail (instance stopped)" >&2
  seq 0 $((N - 1)) | MAIL_CONFIG="$PF/etc" MSG="$TMP/msg.eml" xargs -P "${INJECT_JOBS:-8}" -n 50 sh -c '
    for i; do /usr/sbin/sendmail -i -f bench@sender.test "u$i.0@dest$((i % 10)).test" <"$MSG"; done' sh \
    2> >(grep -v "unable to look up public/pickup" >&2 || true)
  queued=$(find "$BASE/pfqueue/maildrop" -type f | wc -l)
  START=(/usr/sbin/postfix -c "$PF/etc" start)
else
  # Default: Postfix's smtp-source into the instance's own smtpd, every
  # message put on HOLD at DATA (static:HOLD), so nothing is delivered
  # while queueing; the drain then starts with postsuper -H ALL +
  # postqueue -f. This leaves Postfix's pickup/cleanup work OUT of the
  # drain time (in Postfix's favour).
  echo "smtpd_data_restrictions = check_client_access static:HOLD" >>"$PF/etc/main.cf"
  echo "compare: queueing $N messages through Postfix's smtpd (held)" >&2
  /usr/sbin/postfix -c "$PF/etc" start >/dev/null 2>&1
  PF_UP=1
  /usr/sbin/smtp-source -s 8 -m "$N" -l "$SIZE" -f bench@sender.test -t u@dest0.test \
    127.0.0.1:"$SMTPD_PORT" >/dev/null 2>&1
  for _ in $(seq 600); do
    queued=$(find "$BASE/pfqueue/hold" -type f | wc -l)
    [ "$queued" -ge "$N" ] && break
    sleep 0.5
  done
  START=(sh -c "/usr/sbin/postsuper -c '$PF/etc' -H ALL >/dev/null 2>&1 && MAIL_CONFIG='$PF/etc' /usr/sbin/postqueue -f")
fi
t_inj1=$(date +%s.%N)
[ "$queued" -eq "$N" ] || { echo "compare: only $queued of $N queued" >&2; exit 1; }

sink_count() { [ -s "$TMP/sink.json" ] && true; kill -USR1 "$SINK_PID"; sleep 0.05; python3 - "$TMP/sink.json" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
objs = [o for o in t.split("\n}") if '"messages"' in o]
print(json.loads(objs[-1] + "\n}")["messages"] if objs else 0)
PY
}
cpu_all() { # utime+stime+cutime+cstime (s) of the instance's master and its live children
  local m tot=0
  m=$(cat "$BASE/pfqueue/pid/master.pid" 2>/dev/null | tr -d ' ') || true
  [ -n "$m" ] || { echo 0; return; }
  for p in $m $(pgrep -P "$m" || true); do
    tot=$(awk -v t="$tot" -v hz="$(getconf CLK_TCK)" '{print t + ($14+$15+$16+$17)/hz}' /proc/"$p"/stat 2>/dev/null || echo "$tot")
  done
  echo "$tot"
}
echo "compare: starting Postfix, draining to impetus-sink" >&2
c0=$(cpu_all)
t0=$(date +%s.%N)
"${START[@]}"
PF_UP=1
deadline=$(( $(date +%s) + 1800 ))
maxcpu=0
while :; do
  n=$(sink_count)
  c=$(cpu_all); maxcpu=$(python3 -c "print(max($maxcpu, $c))")
  [ "$n" -ge "$N" ] && break
  [ "$(date +%s)" -gt "$deadline" ] && { echo "compare: Postfix timed out ($n of $N)" >&2; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
c=$(cpu_all); maxcpu=$(python3 -c "print(max($maxcpu, $c))")
/usr/sbin/postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
PF_UP=
PF_RATE=$(python3 -c "print(round($N / ($t1 - $t0), 1))")
PF_CPU=$(python3 -c "print(round(($maxcpu - $c0) / $N * 1e6, 1))")
PF_INJ=$(python3 -c "print(round($N / ($t_inj1 - $t_inj0), 1))")
echo "postfix: drained $N x $SIZE B in $(python3 -c "print(round($t1 - $t0, 2))") s = $PF_RATE msg/s; ~$PF_CPU us CPU/msg (master + daemons, exited ones via cutime); queueing ($INJECT) $PF_INJ msg/s"

echo "compare: impetus (--backlog, same files, Spool_Sync = batch)" >&2
IMP=$(bench/impetus-bench --build "$BUILD" --count "$N" --size "$SIZE" --backlog --fs "$FS" \
        --fsync-run 0 --no-latency --quiet --label compare-impetus --json "$TMP/imp.json" | sed -n 1p)
echo "$IMP"
IMP_RATE=$(python3 -c "import json; print(json.loads(open('$TMP/imp.json').readline())['msgs_per_s'])")
IMP_CPU=$(python3 -c "import json; print(json.loads(open('$TMP/imp.json').readline())['cpu_us_per_msg'])")
RATIO=$(python3 -c "print(round($IMP_RATE / $PF_RATE, 1))")
echo "impetus: $IMP_RATE msg/s, $IMP_CPU us CPU/msg"
echo "RATIO impetus/postfix = ${RATIO}x (N=$N SIZE=$SIZE FS=$FS, same sink binary, same run)"
printf '{"n": %d, "size": %d, "fs": "%s", "postfix_msgs_per_s": %s, "postfix_cpu_us_per_msg": %s, "impetus_msgs_per_s": %s, "impetus_cpu_us_per_msg": %s, "ratio": %s}\n' \
  "$N" "$SIZE" "$FS" "$PF_RATE" "$PF_CPU" "$IMP_RATE" "$IMP_CPU" "$RATIO" >"${COMPARE_JSON:-/dev/null}"
