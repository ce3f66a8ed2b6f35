"""The README's first command ends in tools/demo.sh: run it end to end with a
small batch (DEMO_COUNT) against this build and check its summary: every
message delivered, per domain and per authenticated user, AUTH over TLS.

usage: test_demo.py SOURCE_ROOT BUILD_ROOT"""
import os
import re
import shutil
import subprocess
import sys
import time


def main():
    root, build = sys.argv[1], sys.argv[2]
    if not shutil.which("openssl"):
        print("SKIP: openssl not installed (tools/mkcert.sh needs it)")
        return 77
    env = dict(os.environ, DEMO_COUNT="200", IMPETUS_BUILD=build, DEMO_TIMEOUT="60")
    t0 = time.monotonic()
    p = subprocess.run(["bash", os.path.join(root, "tools", "demo.sh"), "--small"], env=env,
                       capture_output=True, text=True, timeout=120)
    el = time.monotonic() - t0
    print(p.stdout)
    print(p.stderr, file=sys.stderr)
    assert p.returncode == 0, "demo.sh exit status %d" % p.returncode
    out = p.stdout
    for pat in (r"domain messagesystems\.com\s+100 delivered", r"domain sparkpost\.com\s+100 delivered",
                r"user\s+msys\s+100 messages", r"user\s+sparkpost\s+100 messages",
                r"AUTH\s+LOGIN\s+100", r"AUTH\s+PLAIN\s+100", r"delivered: 200",
                r"200 messages in [0-9.]+ s: [0-9]+ msg/s", r"impetus_auth_total\{result=\"ok\"\}"):
        assert re.search(pat, out), "demo output lacks %r" % pat
    # the progress line shows the real rate (it said 0.0 msg/s throughout)
    rates = [float(x) for x in re.findall(r"progress delivered .* ([0-9.]+) msg/s", out)]
    assert rates and max(rates) > 0, "progress rates: %s" % rates
    m = re.search(r"AUTH ok (\d+) / failed (\d+)", out)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) == 0, "AUTH outcomes"
    m = re.search(r"TLS handshakes (\d+)", out)
    assert m and int(m.group(1)) > 0, "no STARTTLS"
    # everything it started is gone: its temp dir (with the socket) was removed
    assert not re.search(r"demo files kept", out)
    print("demo took %.1f s" % el)
    return 0


if __name__ == "__main__":
    sys.exit(main())
