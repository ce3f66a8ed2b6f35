"""Shared harness for tests that talk to python3-aiosmtpd (Debian), a
server we did not write: importing this module makes sure aiosmtpd is
importable (re-running the test under /usr/bin/python3 when meson picked
another interpreter, else exiting 77 = SKIP), and offers a server on a free
port of 127.0.0.1 with optional STARTTLS and AUTH that records what it saw,
plus the check()/failures convention of these tests.

Used by tests/integration/smtp/test_aiosmtpd.py and
tests/integration/lua/test_lua_auth.py."""
import os
import socket
import ssl
import sys
import time

SKIP = 77

try:
    import aiosmtpd  # noqa: F401
except ImportError:
    # meson may pick a python3 without Debian's dist-packages; the system
    # one has python3-aiosmtpd
    if os.path.exists("/usr/bin/python3") and sys.executable != "/usr/bin/python3" \
            and not os.environ.get("AIOSMTPD_REEXEC"):
        os.environ["AIOSMTPD_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    print("SKIP: python3-aiosmtpd is not installed")
    sys.exit(SKIP)

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

failures = []


def check(cond, what):
    """Print ok/FAIL for one check; failures are collected, not raised."""
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def report():
    """Exit status for main(): 1 when a check failed."""
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    return 0


from testlib import free_port  # noqa: E402  (tests/integration/testlib.py)


class Handler:
    """Accepts every recipient except nobody@...; records each message as
    (mail_from, rcpt_tos, content)."""

    def __init__(self):
        self.messages = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 <%s>: no such user" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Message accepted"


class Server:
    """aiosmtpd on a free port. tls_dir: a directory with cert.pem/key.pem
    (STARTTLS offered and required). users: {user: password} turns AUTH on;
    each attempt is recorded in .logins as (mechanism, user, ok)."""

    def __init__(self, tls_dir=None, users=None, auth_require_tls=True):
        self.handler = Handler()
        self.logins = []
        kw = {}
        if tls_dir:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(os.path.join(tls_dir, "cert.pem"), os.path.join(tls_dir, "key.pem"))
            kw["tls_context"] = ctx
            kw["require_starttls"] = True
        if users is not None:
            def authenticator(server, session, envelope, mechanism, auth_data):
                if not isinstance(auth_data, LoginPassword):
                    return AuthResult(success=False, handled=False)
                user = auth_data.login.decode()
                ok = users.get(user) == auth_data.password.decode()
                self.logins.append((mechanism, user, ok))
                return AuthResult(success=ok, handled=False)

            kw["authenticator"] = authenticator
            kw["auth_require_tls"] = auth_require_tls
        last = None
        for _ in range(5):
            self.port = free_port()
            self.ctl = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kw)
            try:
                self.ctl.start()
                return
            except Exception as e:  # port taken between probe and bind
                last = e
                time.sleep(0.1)
        raise last

    def stop(self):
        self.ctl.stop()
