#!/usr/bin/env bash
# debian-try.sh: install the Impetus package into a clean Debian 12 root and
# try it there as an operator would (README, "Debian package"). Not run by CI.
#
#   1. a fresh root from debootstrap (bookworm, minbase), or a copy of a
#      pristine one you keep: IMPETUS_DEBIAN_BASE=DIR (made by debootstrap once)
#   2. apt-get install ./impetus_*.deb inside it (users, groups, directories,
#      statoverrides come from the package's maintainer scripts)
#   3. the one edit an operator makes: a Gateway (smart host) appended to
#      the installed /etc/impetus/impetus.conf, pointing at impetus-sink
#   4. the installed engine started the way the unit starts it (user impetus,
#      groups from the group database, /run/impetus made as RuntimeDirectory=
#      would), with the installed configuration
#   5. a non-root user "alice" submits with the installed impetus-inject
#   6. the message reaches the sink; mainlog, summary and file modes printed
#
# usage: tools/debian-try.sh DEB SINK [--keep]
#   DEB   the package (dpkg-buildpackage -us -uc -b writes ../impetus_*.deb)
#   SINK  an impetus-sink binary (build/tools/sink/impetus-sink)
# Needs root, debootstrap (or IMPETUS_DEBIAN_BASE) and the Debian archive
# (the mirror is taken from this machine's apt sources; DEBIAN_MIRROR overrides).
set -euo pipefail
deb=${1:?usage: debian-try.sh DEB SINK [--keep]}
sink=${2:?usage: debian-try.sh DEB SINK [--keep]}
keep=${3:-}
[ "$(id -u)" = 0 ] || { echo "debian-try.sh: needs root" >&2; exit 1; }
deb=$(readlink -f "$deb"); sink=$(readlink -f "$sink")

root=$(mktemp -d /var/tmp/impetus-debian-try.XXXXXX)
chmod 755 "$root"
engine_pid= sink_pid=
cleanup() {
  [ -n "$engine_pid" ] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill -TERM "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null || true
  umount "$root/proc" 2>/dev/null || true
  if [ "$keep" = --keep ]; then echo "root kept: $root"; else rm -rf "$root"; fi
}
trap cleanup EXIT
in_root() { chroot "$root" "$@"; }
step() { echo "== $*"; }

if [ -n "${IMPETUS_DEBIAN_BASE:-}" ] && [ -x "$IMPETUS_DEBIAN_BASE/bin/sh" ]; then
  step "a clean Debian 12 root: copy of $IMPETUS_DEBIAN_BASE (made by debootstrap)"
  cp -a "$IMPETUS_DEBIAN_BASE/." "$root/"
else
  mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)}
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || { echo "debian-try.sh: no Debian mirror found: set DEBIAN_MIRROR" >&2; exit 1; }
  step "a clean Debian 12 root: debootstrap --variant=minbase bookworm ($mirror)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log" >&2; exit 1; }
  rm -f "$root.debootstrap.log"
fi
mount -t proc proc "$root/proc"
cp /etc/resolv.conf "$root/etc/resolv.conf"
grep -q '^PRETTY_NAME="Debian GNU/Linux 12' "$root/etc/os-release" && sed -n 's/^PRETTY_NAME=/   /p' "$root/etc/os-release"

step "apt-get install ./$(basename "$deb")"
cp "$deb" "$root/tmp/"
in_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends \
  "/tmp/$(basename "$deb")" 2>&1 | grep -E "^(Setting up|Unpacking) impetus|^E:" |
  grep -v "Can not write log" | sed 's/^/   /'
in_root dpkg-query -W -f='   ${Package} ${Version} ${Status}\n' impetus
echo "   users and groups: $(in_root id impetus)"
echo "   statoverrides:"; in_root dpkg-statoverride --list | sed 's/^/     /'
echo "   modes:"
in_root stat -c '     %A %U:%G %n' /usr/sbin/impetus /usr/bin/impetus-inject /usr/bin/impetus-ctl \
  /etc/impetus/impetus.conf /var/spool/impetus /var/spool/impetus/pickup /var/log/impetus \
  /lib/systemd/system/impetus.service /etc/logrotate.d/impetus
in_root sh -c 'test -e /etc/systemd/system/multi-user.target.wants/impetus.service' &&
  echo "   unit enabled: /etc/systemd/system/multi-user.target.wants/impetus.service"
grep -q /etc/impetus/impetus.conf "$root/var/lib/dpkg/info/impetus.conffiles" &&
  echo "   conffiles: $(tr '\n' ' ' < "$root/var/lib/dpkg/info/impetus.conffiles")"

step "impetus-sink on 127.0.0.1 (the smart host)"
mkdir -p "$root/opt/try"
cp "$sink" "$root/opt/try/impetus-sink"
chroot "$root" /opt/try/impetus-sink --listen 127.0.0.1:0 --ready-file /opt/try/sink.ready \
  --jsonl /opt/try/sink.jsonl >"$root/opt/try/sink.out" 2>&1 &
sink_pid=$!
for _ in $(seq 100); do [ -s "$root/opt/try/sink.ready" ] && break; sleep 0.1; done
addr=$(awk '$1 == "plain" {print $2; exit}' "$root/opt/try/sink.ready")
echo "   listening on $addr"

step "the operator's edit: route everything to the smart host"
printf '\n# debian-try.sh: the smart host\nGateway = "%s"\n' "$addr" >>"$root/etc/impetus/impetus.conf"
in_root /usr/sbin/impetus --check-config -c /etc/impetus/impetus.conf | sed 's/^/   /'

step "the installed engine as the unit runs it (user impetus, the installed configuration)"
install -d -o "$(in_root id -u impetus)" -g "$(in_root id -g impetus)" -m 0755 "$root/run/impetus"
chroot "$root" setpriv --reuid impetus --regid impetus --init-groups \
  /usr/sbin/impetus -c /etc/impetus/impetus.conf 2>"$root/opt/try/engine.err" &
engine_pid=$!
for _ in $(seq 100); do [ -S "$root/run/impetus/impetus.sock" ] && break; sleep 0.1; done
[ -S "$root/run/impetus/impetus.sock" ] || { cat "$root/opt/try/engine.err" >&2; exit 1; }
echo "   pid $engine_pid: $(tr '\0' ' ' </proc/$engine_pid/cmdline)"
grep -E '^(Uid|Gid|Groups):' "/proc/$engine_pid/status" | sed 's/^/     /'
echo "     (impetus is uid $(in_root id -u impetus), groups $(in_root id -G impetus) in the root)"
in_root impetus-ctl version | sed 's/^/   impetus-ctl: /'

step "a non-root user submits with the installed impetus-inject"
in_root useradd --create-home alice
in_root setpriv --reuid alice --regid alice --init-groups sh -c \
  'id; printf "From: alice@example.org\nSubject: from the Debian root\n\nhello\n" |
   impetus-inject -f alice@example.org bob@example.com && echo "impetus-inject: exit $?"' |
  sed 's/^/   /'
in_root setpriv --reuid alice --regid alice --init-groups ls /var/spool/impetus/pickup 2>&1 |
  sed 's/^/   alice lists pickup\/: /' || true

step "delivered?"
ok=0
for _ in $(seq 150); do
  if grep -q 'bob@example.com' "$root/opt/try/sink.jsonl" 2>/dev/null; then ok=1; break; fi
  sleep 0.2
done
sed 's/^/   mainlog: /' "$root/var/log/impetus/mainlog.ec"
in_root impetus-ctl summary | grep -E '^(delivered|received|failed):' | sed 's/^/   /'
if [ $ok = 1 ]; then
  echo "   the sink received: $(head -c 300 "$root/opt/try/sink.jsonl")"
  step "done: installed, started, submitted by a non-root user, delivered"
else
  echo "debian-try.sh: the sink did not receive the message" >&2
  cat "$root/opt/try/engine.err" "$root/var/log/impetus/paniclog.ec" >&2 || true
  exit 1
fi
