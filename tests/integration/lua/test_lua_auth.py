"""Lua-chosen SMTP AUTH credentials reach an AUTH-requiring server.

luam_auth_resolve runs the configured Lua hooks (the seed's Example 71.76
and lua/examples/tenant_credentials.lua with an SQLite datasource keyed by
Outbound_SMTP_AUTH_Key) for a message to a domain and prints the effective
credentials; smtpc_drive then authenticates with them at python3-aiosmtpd,
which records the login. Checks: the SQLite row wins for the domain whose
key has a row (the hook waited for the datasource without blocking), the
seed's foo/bar apply where no row exists, an x-context preset wins over
configuration, and without Lua the configuration applies.
Exits 77 (SKIP) when aiosmtpd is missing.

usage: test_lua_auth.py LUAM_AUTH_RESOLVE SMTPC_DRIVE
"""
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

SKIP = 77
try:
    import aiosmtpd  # noqa: F401
except ImportError:
    if os.path.exists("/usr/bin/python3") and sys.executable != "/usr/bin/python3" \
            and not os.environ.get("LUA_AUTH_REEXEC"):
        os.environ["LUA_AUTH_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    print("SKIP: python3-aiosmtpd is not installed")
    sys.exit(SKIP)

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

RESOLVE, DRIVE = sys.argv[1], sys.argv[2]
SOURCE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Handler:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 accepted"


class Server:
    def __init__(self, users):
        self.handler = Handler()
        self.logins = []

        def authenticator(server, session, envelope, mechanism, auth_data):
            if not isinstance(auth_data, LoginPassword):
                return AuthResult(success=False, handled=False)
            user = auth_data.login.decode()
            ok = users.get(user) == auth_data.password.decode()
            self.logins.append((mechanism, user, ok))
            return AuthResult(success=ok, handled=False)

        last = None
        for _ in range(5):
            self.port = free_port()
            self.ctl = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                  authenticator=authenticator, auth_require_tls=False)
            try:
                self.ctl.start()
                return
            except Exception as e:  # port taken between probe and bind
                last = e
                time.sleep(0.1)
        raise last

    def stop(self):
        self.ctl.stop()


def resolve(conf, domain, *ctx):
    p = subprocess.run([RESOLVE, conf, domain] + list(ctx), capture_output=True, timeout=30)
    err = p.stderr.decode()
    for line in err.splitlines():
        print("    " + line)
    if p.returncode != 0:
        return None, err
    return p.stdout.decode().split(), err


def deliver(port, creds, domain):
    mech, user, pw = creds
    p = subprocess.run([DRIVE, str(port), "--auth", mech, user, pw, "--allow-plain",
                        "r@" + domain], capture_output=True, timeout=30)
    return p.stdout.decode()


def main():
    tmp = tempfile.mkdtemp(prefix="lua-auth.")
    try:
        db = os.path.join(tmp, "creds.db")
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE creds (auth_key TEXT PRIMARY KEY, user TEXT, pass TEXT, mech TEXT)")
        con.execute("INSERT INTO creds VALUES ('someotherstring', 'tenant-sp', 'sp-secret', 'LOGIN')")
        con.commit()
        con.close()
        os.mkdir(os.path.join(tmp, "lua"))
        with open(os.path.join(tmp, "lua", "seed.lua"), "w") as f:
            f.write("local mod = {}\n"
                    "function mod:outbound_smtp_auth_config(msg, ac, vctx)\n"
                    "  print('NOTICE: outbound_smtp_auth_config Lua hook called');\n"
                    "  print('NOTICE: msg:['.. tostring(msg) ..']')\n"
                    "  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', 'foo')\n"
                    "  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_pass', 'bar')\n"
                    "end\n"
                    "msys.registerModule(\"test\", mod)\n")
        domains = """
outbound_smtp_auth { }
Keep_Message_Dicts_In_Memory = true
Domain "messagesystems.com" {
  Outbound_SMTP_AUTH_Type = "LOGIN"
  Outbound_SMTP_AUTH_User = "msys"
  Outbound_SMTP_AUTH_Pass = "msys"
  Outbound_SMTP_AUTH_Key = "somestring"
}
Domain "sparkpost.com" {
  Outbound_SMTP_AUTH_Type = "PLAIN"
  Outbound_SMTP_AUTH_user = "sparkpost"
  Outbound_SMTP_AUTH_pass = "sparkpost"
  Outbound_SMTP_AUTH_Key = "someotherstring"
}
"""
        with_lua = os.path.join(tmp, "lua.conf")
        with open(with_lua, "w") as f:
            f.write(domains + """
Datasource "creds" { uri = ( "sqlite:%s" ) cache_life = 300 cache_size = 1000 }
scriptlet "scriptlet" {
  script "seed" { source = "lua/seed" }
  script "tenant_credentials" { source = "examples/tenant_credentials" }
}
""" % db)
        no_lua = os.path.join(tmp, "plain.conf")
        with open(no_lua, "w") as f:
            f.write(domains)

        users = {"tenant-sp": "sp-secret", "foo": "bar", "msys": "msys", "sparkpost": "sparkpost",
                 "preset": "preset-pw"}
        srv = Server(users)

        creds, log = resolve(with_lua, "sparkpost.com")
        check(creds == ["LOGIN", "tenant-sp", "sp-secret"], "sqlite row by the scope's key: %s" % creds)
        check("hook waited for a datasource" in log, "the hook waited for the query (non-blocking)")
        check("[seed] NOTICE: outbound_smtp_auth_config Lua hook called" in log,
              "the seed's print reached the log")
        out = deliver(srv.port, creds, "sparkpost.com")
        check("AUTH_RESULT 235" in out and "OUTCOME 0 OK 250" in out, "delivered as tenant-sp")
        check(("LOGIN", "tenant-sp", True) in srv.logins, "server saw tenant-sp over LOGIN")

        creds, _ = resolve(with_lua, "messagesystems.com")
        check(creds == ["LOGIN", "foo", "bar"], "no row: the seed's hook wins: %s" % creds)
        out = deliver(srv.port, creds, "messagesystems.com")
        check(("LOGIN", "foo", True) in srv.logins, "server saw foo (the seed's example)")

        creds, _ = resolve(no_lua, "sparkpost.com", "outbound_smtp_auth_user=preset",
                           "outbound_smtp_auth_pass=preset-pw")
        check(creds == ["PLAIN", "preset", "preset-pw"], "x-context preset wins: %s" % creds)
        out = deliver(srv.port, creds, "sparkpost.com")
        check(("PLAIN", "preset", True) in srv.logins, "server saw preset over PLAIN")

        creds, _ = resolve(no_lua, "messagesystems.com")
        check(creds == ["LOGIN", "msys", "msys"], "no Lua: configuration: %s" % creds)
        out = deliver(srv.port, creds, "messagesystems.com")
        check(("LOGIN", "msys", True) in srv.logins, "server saw msys")
        srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    return 0


sys.exit(main())
