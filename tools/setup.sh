#!/usr/bin/env bash
# setup.sh: install what Impetus needs from Debian 12's packages.
# Idempotent and quiet when nothing is missing. Run as root (or via sudo).
set -euo pipefail

PACKAGES=(
  libcrypt-dev
  # build
  meson ninja-build pkg-config gcc g++ clang llvm
  # libraries
  liburing-dev libssl-dev libluajit2-5.1-dev libjemalloc-dev libc-ares-dev libsqlite3-dev
  # tests and benchmarks
  libcmocka-dev libbenchmark-dev python3 python3-aiosmtpd swaks libnet-ssleay-perl dnsmasq-base openssl
  procps psmisc
  # DKIM verifiers for the tests (issue 22); libnet-dns-perl comes with libmail-dkim-perl;
  # opendkim: its verifier (opendkim -t) checks Ed25519 too, and bench/postfix/compare_dkim.sh
  # runs it as Postfix's signing milter
  python3-dkim python3-nacl libmail-dkim-perl libnet-dns-perl opendkim opendkim-tools postfix
  # packaging and operations (issue 20): the Debian package and lintian, the
  # unit's systemd-analyze checks, man pages, tools/debian-try.sh
  dpkg-dev debhelper lintian systemd man-db debootstrap
  # cluster-wide limits (src/engine/cluster, tests/integration/cluster)
  libhiredis-dev redis-server redis-tools
)

# The system user the engine drops root to (options User / Group,
# default impetus). Idempotent.
if ! getent passwd impetus >/dev/null && command -v useradd >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin impetus
  elif command -v sudo >/dev/null; then
    sudo useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin impetus
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
