#!/usr/bin/env python3
"""outsess against a real server we did not write (aiosmtpd): plaintext and
STARTTLS deliveries, several messages on one connection, certificate checks.

usage: test_outsess.py NET_CLIENT
Exit 77 (skip) when aiosmtpd or the openssl CLI is missing.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile

try:
    import aiosmtpd  # noqa: F401
except ImportError:
    # Debian's python3-aiosmtpd lives under the system interpreter; a
    # pyenv/venv python3 first on PATH does not see it.
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    print("SKIP: python3-aiosmtpd not installed")
    sys.exit(77)

import ssl  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402

CLIENT = sys.argv[1]


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import free_port  # noqa: E402  (tests/integration/testlib.py)


class Recorder:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "data": envelope.original_content,
            # STARTTLS sets session.ssl; implicit TLS shows on the transport
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "peer": session.peer[0],
        })
        return "250 2.0.0 Ok: queued"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "450 4.2.1 try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"


def make_certs(d):
    ext = os.path.join(d, "ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=TestCA", "-days", "2")
    run("openssl", "req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    run("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext")


def client(*args, expect_rc=0, env=None):
    p = subprocess.run([CLIENT, *args], capture_output=True, text=True, timeout=90, env=env)
    out = p.stdout
    if p.returncode != expect_rc:
        print(out, p.stderr)
        raise AssertionError(f"net_client exit {p.returncode}")
    return out


failures = []


def check(cond, what, out=""):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}\n{out}")
    else:
        print(f"ok: {what}")


def main():
    if shutil.which("openssl") is None:
        print("SKIP: openssl CLI missing")
        return 77
    tmp = tempfile.mkdtemp(prefix="impetus-outsess-")
    try:
        make_certs(tmp)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(os.path.join(tmp, "srv.crt"), os.path.join(tmp, "srv.key"))
        rec = Recorder()
        port = free_port()
        ctl = Controller(rec, hostname="127.0.0.1", port=port, tls_context=ctx,
                         server_hostname="mx.test.example")
        ctl.start()
        # implicit TLS (smtps, port 465 style) on a second port
        port_tls = free_port()
        ctl_tls = Controller(rec, hostname="127.0.0.1", port=port_tls, ssl_context=ctx,
                             server_hostname="mx.test.example")
        ctl_tls.start()
        try:
            run_cases(tmp, rec, port, port_tls)
        finally:
            ctl.stop()
            ctl_tls.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


def run_cases(tmp, rec, port, port_tls):
    ca = os.path.join(tmp, "ca.crt")
    body = os.path.join(tmp, "body.eml")
    # dots at line starts, a bare LF, a bare CR, and more than one read chunk
    raw = b"Subject: outsess test\r\n\r\n.starts with a dot\r\nbare LF\nend\r\n" + b"x" * 70 + b"\r\n"
    raw = raw * 400 + b".\r\nlast line"
    with open(body, "wb") as f:
        f.write(raw)
    expect = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"

    # 1. plaintext, three messages over one connection, two recipients
    out = client("-p", str(port), "-t", "a@x.test", "-t", "b@x.test", "--body", body, "-n", "3")
    check(out.count("txn ") == 3 and "transient" not in out and "permanent" not in out,
          "plaintext: three transactions accepted on one connection", out)
    check(len(rec.messages) == 3, f"plaintext: server got 3 messages (got {len(rec.messages)})")
    if rec.messages:
        m = rec.messages[0]
        check(m["to"] == ["a@x.test", "b@x.test"] and m["from"] == "sender@example.com",
              "plaintext: envelope as sent")
        check(m["data"] == expect, "plaintext: body arrives byte for byte (dot-stuffing undone, CRLF)",
              repr(m["data"][:200]) + " vs " + repr(expect[:200]))
        check(not m["tls"], "plaintext: no TLS")

    # 2. per-recipient outcomes
    rec.messages.clear()
    out = client("-p", str(port), "-t", "ok@x.test", "-t", "reject@x.test", "-t", "later@x.test")
    check("rcpt-result 0 ok 250" in out and "rcpt-result 1 permanent 550" in out
          and "rcpt-result 2 transient 450" in out, "per-recipient results 250/550/450", out)
    check(len(rec.messages) == 1 and rec.messages[0]["to"] == ["ok@x.test"], "only the accepted recipient got it")

    # 3. STARTTLS with full verification
    rec.messages.clear()
    out = client("-p", str(port), "-t", "a@x.test", "--tls", "required", "--verify", "host",
                 "--ca", ca, "--name", "localhost", "--body", body, "-n", "2")
    check(out.count("txn ") == 2 and "tls TLSv1." in out and "failed" not in out, "STARTTLS required + verify host", out)
    check(len(rec.messages) == 2 and all(m["tls"] for m in rec.messages), "server saw TLS for both messages")
    if rec.messages:
        check(rec.messages[0]["data"] == expect, "STARTTLS: body byte for byte")

    # 4. STARTTLS, certificate names another host: transient failure with the reason
    out = client("-p", str(port), "-t", "a@x.test", "--tls", "required", "--verify", "host",
                 "--ca", ca, "--name", "wrong.example")
    check("failed transient" in out and "hostname mismatch" in out and "closed" in out,
          "STARTTLS verify host mismatch -> transient, reason given", out)
    # 5. ... and with verify ca the name does not matter
    out = client("-p", str(port), "-t", "a@x.test", "--tls", "required", "--verify", "ca",
                 "--ca", ca, "--name", "wrong.example")
    check("txn 1 ok 250" in out, "STARTTLS verify ca ignores the name", out)
    # 5b. verify ca without a CA file uses OpenSSL's default store: the
    # system's (/etc/ssl/certs) does not know the test CA; pointed at it
    # through SSL_CERT_FILE (which moves that default) it does
    out = client("-p", str(port), "-t", "a@x.test", "--tls", "required", "--verify", "ca")
    check("failed transient" in out and "certificate verify failed" in out,
          "verify ca, no CA file: the system store refuses the test CA", out)
    env = dict(os.environ, SSL_CERT_FILE=ca)
    out = client("-p", str(port), "-t", "a@x.test", "--tls", "required", "--verify", "ca", env=env)
    check("txn 1 ok 250" in out, "verify ca, no CA file: the default store is what is consulted", out)
    # 6. implicit TLS (smtps)
    rec.messages.clear()
    out = client("-p", str(port_tls), "-t", "a@x.test", "--implicit", "--verify", "host",
                 "--ca", ca, "--name", "localhost", "--body", body)
    check("txn 1 ok 250" in out and "tls TLSv1." in out, "implicit TLS (smtps) with verify host", out)
    check(len(rec.messages) == 1 and rec.messages[0]["tls"] and rec.messages[0]["data"] == expect,
          "implicit TLS: server saw TLS, body byte for byte")
    out = client("-p", str(port_tls), "-t", "a@x.test", "--implicit", "--verify", "host",
                 "--ca", ca, "--name", "wrong.example")
    check("failed transient" in out and "hostname mismatch" in out, "implicit TLS mismatch -> transient", out)
    # 7. source address binding
    rec.messages.clear()
    out = client("-p", str(port), "-t", "a@x.test", "-b", "127.0.0.2")
    check(len(rec.messages) == 1 and rec.messages[0]["peer"] == "127.0.0.2", "Bind_Address 127.0.0.2 seen by the server", out)


if __name__ == "__main__":
    sys.exit(main())
