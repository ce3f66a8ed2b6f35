"""Per-message secrets in the spool (issue 18 items 1 and 6), end to end:
impetus delivers to python3-aiosmtpd requiring AUTH, which records every
(user, password) it is offered.

  restart  two tenants' credentials in x-context lines; the first attempts
           are deferred (451 after AUTH), the engine is restarted, and the
           server sees each tenant's own password and never another's
           (before the fix: the tenant's user with the domain's configured
           password). No password in clear in any spool, log or bad/ file.
  wrongkey the key file replaced between runs: the engine refuses to start
           with a clear error naming the key file; with the key restored
           it starts and delivers with the right passwords.
  lostkey  the key replaced and seal.check removed (the documented way to
           start a new key): the queued messages' sealed passwords do not
           open; each fails transiently (451 4.7.0, a paniclog line), and
           the server never sees a tenant with another password.
  bad      rejected pickup files (no x-receiver, an unparsable address)
           with an x-context password: bad/ holds them with the password
           overwritten (item 6).

usage: test_secrets.py IMPETUS SCENARIO   (exit 77 = SKIP)
"""
import base64
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
import aiosmtpdlib  # noqa: E402  (exits 77 without aiosmtpd)
from aiosmtpdlib import check, report, Controller, AuthResult, LoginPassword  # noqa: E402
from enginelib import Engine  # noqa: E402
from testlib import wait_until  # noqa: E402

USERS = {"tenant1": "T1-Sekr1t-pw", "tenant2": "T2-Sekr1t-pw", "cfguser": "Cfg-Sekr1t-pw"}


class Server:
    """aiosmtpd with AUTH (plaintext allowed): records (user, password); while
    .defer is set, every RCPT gets 451."""

    def __init__(self):
        self.offered = []
        self.defer = True
        self.accepted = []
        srv = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, options):
                if srv.defer:
                    return "451 4.3.0 try again later"
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server, session, envelope):
                srv.accepted.append(list(envelope.rcpt_tos))
                return "250 2.0.0 accepted"

        def authenticator(server, session, envelope, mechanism, auth_data):
            if not isinstance(auth_data, LoginPassword):
                return AuthResult(success=False, handled=False)
            u, p = auth_data.login.decode(), auth_data.password.decode()
            self.offered.append((u, p))
            return AuthResult(success=USERS.get(u) == p, handled=False)

        self.port = aiosmtpdlib.free_port()
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                              authenticator=authenticator, auth_require_tls=False)
        self.ctl.start()

    def stop(self):
        self.ctl.stop()


def conf(port):
    return ('Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
            'Retry_Interval = 1\nMax_Retry_Interval = 1\n'
            'Keep_Message_Dicts_In_Memory = false\n'
            'Outbound_SMTP_AUTH_Allow_Plaintext = true\noutbound_smtp_auth { }\n'
            'Domain "t.test" { Outbound_SMTP_AUTH_User = "cfguser"'
            ' Outbound_SMTP_AUTH_Pass = "Cfg-Sekr1t-pw" Outbound_SMTP_AUTH_Type = "PLAIN" }\n'
            % port)


def inject(e, rcpt, ctx):
    e.seq += 1
    lines = ["x-sender: <a@s.test>", "x-receiver: <%s>" % rcpt]
    lines += ["x-context: %s=%s" % kv for kv in ctx]
    tmp = os.path.join(e.spool, ".inject-%d" % e.seq)
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\nSubject: t%d\n\nhello\n" % e.seq)
    os.rename(tmp, os.path.join(e.pickup, "m%06d" % e.seq))


def tenants(e):
    inject(e, "one@t.test", [("outbound_smtp_auth_user", "tenant1"),
                             ("outbound_smtp_auth_pass", "T1-Sekr1t-pw")])
    inject(e, "two@t.test", [("outbound_smtp_auth_user", "tenant2"),
                             ("outbound_smtp_auth_pass", "T2-Sekr1t-pw"),
                             ("outbound_smtp_auth_type", "LOGIN")])


def leaks(data):
    found = []
    for u, p in USERS.items():
        for form in (p.encode(), base64.b64encode(p.encode()),
                     base64.b64encode(b"\0" + u.encode() + b"\0" + p.encode())):
            if form in data:
                found.append(form)
    return found + ([b"Sekr1t"] if b"Sekr1t" in data else [])


def scan(e, phase):
    n = 0
    for root, _d, files in os.walk(e.dir):
        for name in files:
            path = os.path.join(root, name)
            if name == "impetus.conf" or not os.path.isfile(path):
                continue
            n += 1
            with open(path, "rb") as f:
                data = f.read()
            check(not leaks(data), "no password in %s (%s): %r" % (path, phase, leaks(data)))
    print("%s: %d files scanned" % (phase, n))


def wait(cond, secs, what):
    wait_until(cond, secs, what, interval=0.1)


def only_own(srv):
    """Each tenant's user was offered with its own password, never another."""
    for u, p in srv.offered:
        check(USERS.get(u) == p, "user %s offered with its own password (got %s...)"
              % (u, p[:3]))


def scenario_restart(srv, e):
    e.start()
    tenants(e)
    wait(lambda: len(e.records("T")) >= 2, 30, "a 451 for each message")
    scan(e, "queued, running")
    check(e.stop() == 0, "first stop")
    scan(e, "queued, stopped")
    first = list(srv.offered)
    print("offered before the restart:", [u for u, _ in first])
    srv.defer = False
    e.start()
    wait(lambda: len(e.records("D")) >= 2 or any(USERS.get(u) != p for u, p in srv.offered),
         30, "2 D (or a wrong password) after the restart")
    check(len(e.records("D")) >= 2, "both delivered after the restart")
    after = srv.offered[len(first):]
    print("offered after the restart:", [u for u, _ in after])
    check({u for u, _ in after} >= {"tenant1", "tenant2"}, "both tenants authenticated again")
    check("cfguser" not in {u for u, _ in after}, "the configured user was not used")
    only_own(srv)
    check(e.stop() == 0, "second stop")
    scan(e, "delivered, stopped")


def scenario_wrongkey(srv, e):
    e.start()
    tenants(e)
    wait(lambda: len(e.records("T")) >= 2, 30, "a 451 for each message")
    check(e.stop() == 0, "first stop")
    key = os.path.join(e.dir, "spool.key")
    check(os.path.exists(key), "the key file is beside the spool: %s" % key)
    check(os.stat(key).st_mode & 0o777 == 0o600, "the key file is 0600")
    with open(key, "rb") as f:
        good = f.read()
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    p = subprocess.run([e.impetus, "-c", e.conf], capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode(errors="replace")
    print("with another key:", p.returncode, out.strip()[-300:])
    check(p.returncode != 0 and "spool.key" in out and "not the key" in out,
          "another key: refused at start with a clear error")
    os.unlink(key)
    p = subprocess.run([e.impetus, "-c", e.conf], capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode(errors="replace")
    check(p.returncode != 0 and "missing" in out, "no key: refused at start: %r" % out[-200:])
    with open(key, "wb") as f:
        f.write(good)
    os.chmod(key, 0o644)
    p = subprocess.run([e.impetus, "-c", e.conf], capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode(errors="replace")
    check(p.returncode != 0 and "chmod 600" in out, "a key readable by others: refused")
    os.chmod(key, 0o600)
    srv.defer = False
    e.start()
    wait(lambda: len(e.records("D")) >= 2, 30, "2 D with the key restored")
    only_own(srv)
    check(e.stop() == 0, "stop")


def scenario_lostkey(srv, e):
    e.start()
    tenants(e)
    wait(lambda: len(e.records("T")) >= 2, 30, "a 451 for each message")
    check(e.stop() == 0, "first stop")
    with open(os.path.join(e.dir, "spool.key"), "wb") as f:
        f.write(os.urandom(32))
    os.unlink(os.path.join(e.spool, "seal.check"))
    before = len(srv.offered)
    srv.defer = False
    e.start()
    wait(lambda: e.read(e.paniclog).count("cannot be decrypted") >= 2
         and "[internal] outbound_smtp_auth" in e.read(e.mainlog), 30,
         "the sealed passwords fail to open and the messages are deferred")
    # a retry round (Retry_Interval = 1): each message deferred once more
    rounds = e.read(e.paniclog).count("cannot be decrypted")
    wait(lambda: e.read(e.paniclog).count("cannot be decrypted") >= rounds + 2, 30, "a retry round")
    after = srv.offered[before:]
    print("offered after the key was lost:", [u for u, _ in after])
    check(not after, "no AUTH attempt with what was left of the credentials")
    check(not e.records("D"), "nothing delivered under another identity")
    only_own(srv)
    check(e.stop() == 0, "stop")


def scenario_bad(srv, e):
    e.start()
    e.seq += 1
    for name, text in (("norcpt", "x-sender: <a@s.test>\n"
                                  "x-context: outbound_smtp_auth_pass=T1-Sekr1t-pw\n"),
                       ("badaddr", "x-sender: <a@s.test>\nx-receiver: <nobody>\n"
                                   "x-context: outbound_smtp_auth_pass=T2-Sekr1t-pw\n")):
        tmp = os.path.join(e.spool, ".bad-" + name)
        with open(tmp, "w") as f:
            f.write(text + "Subject: bad\n\nbody\n")
        os.rename(tmp, os.path.join(e.pickup, name))
    bad = os.path.join(e.spool, "bad")
    wait(lambda: os.path.exists(os.path.join(bad, "norcpt.why"))
         and os.path.exists(os.path.join(bad, "badaddr.why")), 20, "both in bad/")
    for name in ("norcpt", "badaddr"):
        with open(os.path.join(bad, name), "rb") as f:
            data = f.read()
        check(b"x-context: _=****" in data and not leaks(data),
              "bad/%s kept with its password overwritten: %r" % (name, data[:120]))
    check(e.stop() == 0, "stop")
    scan(e, "stopped")


def main():
    imp, scenario = sys.argv[1], sys.argv[2]
    srv = Server()
    e = Engine(imp, conf(srv.port), "secrets")
    try:
        globals()["scenario_" + scenario](srv, e)
    finally:
        if e.proc is not None:
            e.stop()
        e.cleanup()
        srv.stop()
    return report()


if __name__ == "__main__":
    sys.exit(main())
