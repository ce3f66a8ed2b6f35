"""smtpc against a server we did not write: python3-aiosmtpd (Debian).

Drives the sans-I/O client through tests/integration/smtp/smtpc_drive.c
(blocking sockets, OpenSSL on the fd) against aiosmtpd on 127.0.0.1:
plaintext lock-step delivery with a refused recipient and dot-stuffing,
STARTTLS (required) with AUTH PLAIN and LOGIN, a wrong password, the
plaintext-AUTH refusal and its override, and a server without AUTH.
Exits 77 (SKIP) when aiosmtpd or openssl is missing.

usage: test_aiosmtpd.py SMTPC_DRIVE
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from aiosmtpdlib import SKIP, Server, check, report  # noqa: E402  (exits 77 without aiosmtpd)

DRIVE = sys.argv[1]


def drive(port, *args, body=None, tmp=None):
    cmd = [DRIVE, str(port)]
    if body is not None:
        path = os.path.join(tmp, "body")
        with open(path, "wb") as f:
            f.write(body)
        cmd += ["--body", path]
    cmd += list(args)
    p = subprocess.run(cmd, capture_output=True, timeout=30)
    out = p.stdout.decode()
    print("  $ " + " ".join(cmd[1:]))
    for line in out.splitlines():
        print("    " + line)
    if p.returncode != 0:
        print(p.stderr.decode())
    return out


def main():
    if not shutil.which("openssl"):
        print("SKIP: openssl not found")
        return SKIP
    tmp = tempfile.mkdtemp(prefix="smtpc-aiosmtpd.")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", os.path.join(tmp, "key.pem"),
                        "-out", os.path.join(tmp, "cert.pem"), "-days", "1",
                        "-subj", "/CN=localhost"], check=True, capture_output=True)

        # 1. plaintext, lock-step (aiosmtpd has no PIPELINING), one refusal,
        #    dot-stuffing and line-ending normalisation end to end
        srv = Server()
        body = b"Subject: test\n\n.leading dot\r\n..two dots\rbare CR\nlast line"
        out = drive(srv.port, "a@dest.test", "nobody@dest.test", "b@dest.test", body=body, tmp=tmp)
        srv.stop()
        check("RCPT_RESULT 1 550" in out, "plain: refused recipient reported")
        check("OUTCOME 0 OK 250" in out and "OUTCOME 1 PERMANENT 550" in out
              and "OUTCOME 2 OK 250" in out, "plain: per-recipient outcomes")
        check("CLOSED" in out, "plain: QUIT answered")
        want = b"Subject: test\r\n\r\n.leading dot\r\n..two dots\r\nbare CR\r\nlast line\r\n"
        got = srv.handler.messages[0][2] if srv.handler.messages else None
        check(got == want, "plain: server got the body exactly (got %r)" % (got,))
        check(srv.handler.messages and srv.handler.messages[0][1] == ["a@dest.test", "b@dest.test"],
              "plain: envelope recipients")

        # 2. STARTTLS required + AUTH PLAIN
        users = {"sparkpost": "sp-pass", "msys": "msys"}
        srv = Server(tls_dir=tmp, users=users)
        out = drive(srv.port, "--tls", "required", "--auth", "PLAIN", "sparkpost", "sp-pass",
                    "r@sparkpost.com", body=b"hi\n", tmp=tmp)
        check("NEED_TLS" in out and "TLS TLSv1" in out, "tls+plain: STARTTLS done")
        check("AUTH_RESULT 235" in out, "tls+plain: AUTH PLAIN accepted")
        check("OUTCOME 0 OK 250" in out, "tls+plain: delivered")
        check(("PLAIN", "sparkpost", True) in srv.logins, "tls+plain: server saw user sparkpost")
        check("sp-pass" not in out, "tls+plain: password not in any event")

        # 3. AUTH LOGIN
        out = drive(srv.port, "--tls", "required", "--auth", "LOGIN", "msys", "msys",
                    "r@messagesystems.com", body=b"hi\n", tmp=tmp)
        check("AUTH_RESULT 235" in out and "OUTCOME 0 OK 250" in out, "tls+login: delivered")
        check(("LOGIN", "msys", True) in srv.logins, "tls+login: server saw user msys")

        # 4. wrong password: transient, flagged
        out = drive(srv.port, "--tls", "required", "--auth", "LOGIN", "msys", "wrong",
                    "r@messagesystems.com", body=b"hi\n", tmp=tmp)
        check("FAILED transient 535 flags=0x1" in out, "wrong password: transient, credentials flag")
        srv.stop()

        # 5. plaintext server offering AUTH: refused unless allowed
        srv = Server(users=users, auth_require_tls=False)
        out = drive(srv.port, "--auth", "PLAIN", "msys", "msys", "r@x.test", body=b"hi\n", tmp=tmp)
        check("FAILED transient" in out and "Outbound_SMTP_AUTH_Allow_Plaintext" in out,
              "plaintext auth refused, naming the option")
        check(not srv.logins, "plaintext auth: nothing was sent")
        out = drive(srv.port, "--auth", "PLAIN", "msys", "msys", "--allow-plain", "r@x.test",
                    body=b"hi\n", tmp=tmp)
        check("AUTH_RESULT 235" in out and "OUTCOME 0 OK 250" in out,
              "plaintext auth allowed by the option")
        srv.stop()

        # 6. server without AUTH
        srv = Server()
        out = drive(srv.port, "--auth", "LOGIN", "msys", "msys", "--allow-plain", "r@x.test",
                    body=b"hi\n", tmp=tmp)
        check("FAILED transient" in out and "does not offer AUTH" in out,
              "no AUTH offered: clear transient failure")
        check(not srv.handler.messages, "no AUTH offered: nothing delivered")
        srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report()


sys.exit(main())
