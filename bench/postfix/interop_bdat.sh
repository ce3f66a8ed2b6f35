#!/usr/bin/env bash
# interop_bdat.sh [BUILD_DIR]: Impetus's BDAT client against a real
# receiver, Postfix's smtpd (CHUNKING since Postfix 3.4), by hand (root,
# Postfix installed as bench/postfix/compare.sh installs it). A private
# Postfix instance on 127.0.0.1 relays to impetus-sink --save-dir; Impetus
# delivers the engine-content bodies (CRLF 200 KB, LF-only, a CRLF cut by a
# 64 KB chunk boundary, no final newline, bare CR/LF and dot lines) to it.
# Passes when Postfix's log counts the 5 messages' 11 BDAT chunks (and
# no DATA) on Impetus's connection and every message reaches the sink with exactly the
# body a receiver must store and all of its header lines (Postfix adds its
# own: Received, and the missing Message-Id, Date, From).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
IMPETUS="$BUILD/src/main/impetus"
SINK="$BUILD/tools/sink/impetus-sink"
[ -x "$IMPETUS" ] && [ -x "$SINK" ] || { echo "interop: build first" >&2; exit 1; }
[ -x /usr/sbin/postfix ] || { echo "interop: Postfix is not installed (see compare.sh)" >&2; exit 77; }
if postfix status >/dev/null 2>&1; then postfix stop >/dev/null 2>&1 || true; fi

TMP=$(mktemp -d /tmp/impetus-interop.XXXXXX)
chmod 755 "$TMP"
SINK_PID= IMP_PID= PF_UP=
cleanup() {
  [ -n "$IMP_PID" ] && kill "$IMP_PID" 2>/dev/null || true
  if [ -n "$PF_UP" ]; then /usr/sbin/postfix -c "$TMP/pf/etc" stop >/dev/null 2>&1 || true; sleep 1; fi
  for p in $(pgrep -f -- "$TMP/pf" || true); do kill "$p" 2>/dev/null || true; done
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK_PORT=$(free_port)
mkdir "$TMP/saved"
"$SINK" --listen 127.0.0.1:"$SINK_PORT" --ready-file "$TMP/sink.ready" --save-dir "$TMP/saved" \
  --jsonl "$TMP/sink.jsonl" >"$TMP/sink.json" 2>/dev/null &
SINK_PID=$!
for _ in $(seq 500); do [ -s "$TMP/sink.ready" ] && break; sleep 0.02; done

PF="$TMP/pf"
SMTPD_PORT=$(free_port)
. bench/postfix/pf_instance.sh
pf_instance "$PF" "$PF/queue" "$SMTPD_PORT" "$SINK_PORT" pfinterop.localdomain >/dev/null
/usr/sbin/postfix -c "$PF/etc" start >/dev/null 2>&1
PF_UP=1
for _ in $(seq 250); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $SMTPD_PORT), 1).close()" 2>/dev/null && break
  sleep 0.02
done
echo "interop: $(/usr/sbin/postconf -c "$PF/etc" -h mail_version 2>/dev/null | sed 's/^/Postfix /')," \
  "EHLO offers: $(python3 - "$SMTPD_PORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.recv(512); s.sendall(b"EHLO probe\r\n")
import time; time.sleep(0.3)
print(" ".join(l[4:].split()[0] for l in s.recv(2048).decode().splitlines()[1:]))
s.sendall(b"QUIT\r\n"); s.close()
PY
)" >&2

# Impetus: everything to Postfix's smtpd
mkdir -p "$TMP/imp/spool/pickup"
cat >"$TMP/imp/impetus.conf" <<CF
User = "root"
Spoolbase = "$TMP/imp/spool"
Worker_Threads = 1
TLS = "no"
Gateway = "127.0.0.1:$SMTPD_PORT"
ec_logger { mainlog = "$TMP/imp/mainlog.ec" paniclog = "$TMP/imp/paniclog.ec" }
CF
"$IMPETUS" -c "$TMP/imp/impetus.conf" >/dev/null 2>&1 &
IMP_PID=$!

python3 - "$TMP" <<'PY'
import json, os, sys, time
tmp = sys.argv[1]
assert len("Subject: edge\r\n\r\n" + ("e" * 76 + "\r\n") * 839 + "e" * 76) == 65535
head = "Subject: edge\r\n\r\n"
bodies = {
    "crlf": "Subject: crlf\r\n\r\n" + ("." + "c" * 77 + "\r\n") * 2600,
    "lf": "Subject: lf\n\n" + ("." + "l" * 60 + "\n") * 2500,
    # lines Postfix keeps (its line_length_limit is 2048), the last CR at
    # offset 65535: the CRLF is cut by the first 64 KB chunk
    "edge": head + ("e" * 76 + "\r\n") * 839 + "e" * 76 + "\r\n" + "tail\r\n",
    "bare": "Subject: bare\r\n\r\nno newline at the end",
    "mixed": "Subject: mixed\r\n\r\na\rb\nc\r\n.\r\n..\r\n",
}
pickup = os.path.join(tmp, "imp/spool/pickup")
for i, (name, body) in enumerate(bodies.items()):
    p = os.path.join(tmp, "imp/spool/.m%d" % i)
    with open(p, "w", newline="") as f:
        f.write("x-sender: <a@src.test>\nx-receiver: <%s@dest.test>\n" % name + body)
    os.rename(p, os.path.join(pickup, "m%d" % i))
deadline = time.monotonic() + 60
got = {}
while time.monotonic() < deadline and len(got) < len(bodies):
    time.sleep(0.2)
    try:
        for line in open(os.path.join(tmp, "sink.jsonl")):
            m = json.loads(line)
            got[m["rcpts"][0].split("@")[0]] = m["file"]
    except FileNotFoundError:
        pass
def wire(b):
    o = b.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    return o if o.endswith("\r\n") else o + "\r\n"
bad = 0
for name, body in bodies.items():
    if name not in got:
        print("interop: %s did not arrive" % name); bad += 1; continue
    data = open(got[name], "rb").read()
    want = wire(body).encode()
    # Postfix adds Received: on top and the missing Message-Id/Date/From at
    # the end of the header: the body must be exact, our headers all there
    wh, _, wb = want.partition(b"\r\n\r\n")
    dh, _, db = data.partition(b"\r\n\r\n")
    ok = db == wb and all(l in dh.split(b"\r\n") for l in wh.split(b"\r\n"))
    print("interop: %-5s %7d bytes via Postfix, body %s" % (name, len(want), "exact" if ok else "DIFFERENT"))
    bad += not ok
sys.exit(1 if bad else 0)
PY
# Postfix's disconnect lines count the commands of each connection: stop
# Impetus (its idle connection QUITs), then wait for the line
kill -TERM "$IMP_PID" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$IMP_PID" 2>/dev/null || break; sleep 0.1; done
IMP_PID=
for _ in $(seq 100); do grep 'disconnect from' "$PF/maillog" | grep -q bdat= && break; sleep 0.1; done
grep -o 'disconnect from [^ ]* .*' "$PF/maillog" | grep -v probe | sed 's/^/interop: postfix: /' >&2 || true
# 5 messages in 11 chunks (200 KB: 4, 155 KB: 3, the edge: 2, two small
# ones: 1 each), and no DATA
if ! grep 'disconnect from' "$PF/maillog" | grep -q 'mail=5 rcpt=5 bdat=11 quit=1'; then
  echo "interop: FAILED: Postfix did not count 5 messages in 11 BDAT chunks on Impetus's connection" >&2
  exit 1
fi
echo "interop: ok" >&2
