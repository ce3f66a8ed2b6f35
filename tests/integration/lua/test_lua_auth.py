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
import sqlite3
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from aiosmtpdlib import Server, check, report  # noqa: E402  (exits 77 without aiosmtpd)

RESOLVE, DRIVE = sys.argv[1], sys.argv[2]


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
        srv = Server(users=users, auth_require_tls=False)

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
    return report()


sys.exit(main())
