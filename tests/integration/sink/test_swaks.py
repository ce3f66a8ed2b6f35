#!/usr/bin/env python3
"""impetus-sink driven by swaks, an independent SMTP client: pipelined
delivery, AUTH PLAIN and LOGIN, STARTTLS then AUTH, implicit TLS, wrong
password (535), AUTH required (530), TLS required for AUTH, a source
address of 127.0.0.2, and the fault-injection options as swaks sees them."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sinklib import Raw, Sink, certs, skip, users_file  # noqa: E402

SINK, ROOT = sys.argv[1], sys.argv[2]


def swaks(port, *args):
    t = time.monotonic()
    cmd = ["swaks", "--server", "127.0.0.1:%d" % port, "--from", "s@example.org",
           "--to", "r@example.net", "--timeout", "10"] + list(args)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    if os.environ.get("SINK_TEST_VERBOSE"):
        print("%.2fs swaks %s" % (time.monotonic() - t, " ".join(args)))
    return p.returncode, p.stdout.decode("latin-1")


def replies(out):
    """Server reply lines as swaks prints them ('<-' clear, '<~' TLS, '<**' error)."""
    return [l.split(None, 1)[1] if " " in l else "" for l in out.splitlines()
            if l.startswith(("<-", "<~", "<**", "<~*"))]


def main():
    if not shutil.which("swaks"):
        skip("swaks not installed")
    sup = subprocess.run(["swaks", "--support"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT).stdout.decode()
    if "TLS supported" not in sup:
        skip("swaks without TLS support (install libnet-ssleay-perl)")
    cert, key, cdir = certs(ROOT)
    d = tempfile.mkdtemp(prefix="sinkswaks.")
    try:
        users = users_file(d, [("alice", "s3cret"), ("bob", "pw")])
        jsonl = os.path.join(d, "r.jsonl")
        with Sink(SINK, ["--cert", cert, "--key", key, "--auth-users", users, "--jsonl", jsonl],
                  tls=True) as s:
            rc, out = swaks(s.port, "--pipeline", "-li", "127.0.0.2")
            assert rc == 0 and "<-  250 2.0.0 Ok: queued as 1" in out, out
            assert "PIPELINING" in out
            rc, out = swaks(s.port, "--auth", "PLAIN", "--auth-user", "alice",
                            "--auth-password", "s3cret")
            assert rc == 0 and "235 2.7.0" in out, out
            rc, out = swaks(s.port, "--auth", "LOGIN", "--auth-user", "bob", "--auth-password", "pw")
            assert rc == 0 and "235 2.7.0" in out, out
            rc, out = swaks(s.port, "-tls", "--auth", "PLAIN", "--auth-user", "alice",
                            "--auth-password", "s3cret", "--pipeline")
            assert rc == 0 and "<~  235 2.7.0" in out and "<~  250 2.0.0 Ok: queued" in out, out
            rc, out = swaks(s.tls[0][1], "--tlsc", "--auth", "LOGIN", "--auth-user", "bob",
                            "--auth-password", "pw")
            assert rc == 0 and "<~  250 2.0.0 Ok: queued" in out, out
            rc, out = swaks(s.port, "--auth", "LOGIN", "--auth-user", "bob", "--auth-password", "bad")
            assert rc != 0 and "535 5.7.8" in out, out
            st = s.stop()
            assert st["messages"] == 5 and st["per_user"] == {"alice": 2, "bob": 2}, st
            assert st["per_source_address"]["127.0.0.2"] == 1 and st["auth_failures"] == 1, st
            recs = [json.loads(l) for l in open(jsonl)]
            assert recs[0]["peer"].startswith("127.0.0.2:") and recs[0]["rcpts"] == ["r@example.net"]
            assert [r["tls"] for r in recs] == [False, False, False, True, True], recs
            assert recs[3]["auth_user"] == "alice" and recs[4]["auth_mech"] == "LOGIN"

        with Sink(SINK, ["--auth-users", users, "--require-auth"]) as s:
            rc, out = swaks(s.port)
            assert rc != 0 and "530 5.7.0" in out, out
            s.stop()
        with Sink(SINK, ["--cert", cert, "--key", key, "--auth-users", users,
                         "--require-tls-for-auth"]) as s:
            rc, out = swaks(s.port, "--auth", "PLAIN", "--auth-user", "alice",
                            "--auth-password", "s3cret")
            # AUTH is not advertised in clear: swaks refuses to try it.
            assert rc != 0 and "AUTH" not in "".join(replies(out)[:8]), out
            rc, out = swaks(s.port, "-tls", "--auth", "PLAIN", "--auth-user", "alice",
                            "--auth-password", "s3cret")
            assert rc == 0, out
            s.stop()

        # Fault injection as swaks sees it.
        with Sink(SINK, ["--fail", "RCPT=5xx:1"]) as s:
            rc, out = swaks(s.port)
            assert rc != 0 and "550 5.1.1 Injected" in out, out
            s.stop()
        with Sink(SINK, ["--fail", "MAIL=4xx:1"]) as s:
            rc, out = swaks(s.port)
            assert rc != 0 and "451 4.3.0 Injected" in out, out
            s.stop()
        with Sink(SINK, ["--fail", "DATA=5xx:1"]) as s:
            rc, out = swaks(s.port)
            assert rc != 0 and "554 5.3.0 Injected" in out, out
            s.stop()
        with Sink(SINK, ["--fail", "DOT=4xx:1"]) as s:
            rc, out = swaks(s.port, "--pipeline")
            assert rc != 0 and "451 4.3.0 Injected" in out, out
            assert s.stop()["messages"] == 0
        with Sink(SINK, ["--auth-users", users, "--fail", "AUTH=5xx:1"]) as s:
            rc, out = swaks(s.port, "--auth", "PLAIN", "--auth-user", "alice",
                            "--auth-password", "s3cret")
            assert rc != 0 and "535 5.7.8 Injected" in out, out
            s.stop()
        with Sink(SINK, ["--disconnect-at", "RCPT"]) as s:
            rc, out = swaks(s.port)
            assert rc != 0 and "421 4.3.2" in out, out
            s.stop()
        with Sink(SINK, ["--greeting-delay", "300", "--latency", "MAIL=200"]) as s:
            t = time.monotonic()
            rc, out = swaks(s.port)
            assert rc == 0 and time.monotonic() - t >= 0.5, out
            s.stop()
        with Sink(SINK, ["--max-connections", "1"]) as s:
            hold = Raw(s.port)
            assert hold.code() == 220
            rc, out = swaks(s.port)
            assert rc != 0 and "421 4.7.0" in out, out
            hold.close()
            assert s.stop()["rejected_connections"] == 1
        with Sink(SINK, ["--hostile", "garbage"]) as s:
            rc, out = swaks(s.port, "--timeout", "1")
            assert rc != 0, out
            s.stop()
        with Sink(SINK, ["--hostile", "split"]) as s:
            rc, out = swaks(s.port, "--pipeline")
            assert rc == 0 and "queued as" in out, out
            s.stop()
        with Sink(SINK, ["--hostile", "reset-mid-data"]) as s:
            rc, out = swaks(s.port)
            assert rc != 0 and "queued as" not in out, out
            s.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(cdir, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
