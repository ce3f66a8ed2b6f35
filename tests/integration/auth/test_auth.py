"""outbound_smtp_auth end to end (issue 7) and the engine's Lua wiring
(issue 8): impetus started on a temporary spool delivers to impetus-sink
requiring AUTH after STARTTLS (or to python3-aiosmtpd), and each scenario
checks what the server saw (sink jsonl: auth_user, auth_mech, tls, peer)
and what the engine logged.

usage: test_auth.py IMPETUS SINK SCENARIO   (exit 77 = SKIP)
"""
import os
import shutil
import sqlite3
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
sys.path.insert(0, os.path.join(HERE, "..", "sink"))
import sinklib  # noqa: E402
from enginelib import Engine, SKIP  # noqa: E402
from test_engine import (sink_with_log, finish, msgs_of, expect,  # noqa: E402
                         all_final, check_exactly_one)

SEED_DOMAINS = """
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

SEED_LUA = """local mod = {}
function mod:outbound_smtp_auth_config(msg, ac, vctx)
  print('NOTICE: outbound_smtp_auth_config Lua hook called');
  print('NOTICE: msg:['.. tostring(msg) ..']')
  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', 'foo')
  msg:context_set(VCTX_MESS, 'outbound_smtp_auth_pass', 'bar')
end
msys.registerModule("seed", mod)
"""


class Env:
    """A temp dir with a certificate, the sink (AUTH over STARTTLS) and the engine."""

    def __init__(self, imp, sinkbin, users, sink_args=("--require-auth", "--require-tls-for-auth"),
                 tls=True):
        self.imp = imp
        self.dir = tempfile.mkdtemp(prefix="impetus-authtest.")
        self.sinks = []
        self.e = None
        args = list(sink_args)
        if tls:
            cert, key, self.certdir = sinklib.certs(ROOT)
            args = ["--cert", cert, "--key", key] + args
        else:
            self.certdir = None
        if users:
            args = ["--auth-users", sinklib.users_file(self.dir, users)] + args
        self.sink = self.add_sink(sinkbin, args)

    def add_sink(self, sinkbin, args):
        s = sink_with_log(sinkbin, *args)
        self.sinks.append(s)
        return s

    def write(self, name, text):
        p = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        return p

    def engine(self, conf, name="auth"):
        self.e = Engine(self.imp, conf, name)
        self.e.start()
        return self.e

    def inject(self, rcpts, ctx=(), binding=None, sender="a@s.test"):
        e = self.e
        e.seq += 1
        lines = ["x-sender: <%s>" % sender] + ["x-receiver: <%s>" % r for r in rcpts]
        if binding:
            lines.append("x-binding: %s" % binding)
        lines += ["x-context: %s=%s" % kv for kv in ctx]
        tmp = os.path.join(e.spool, ".inject-%d" % e.seq)
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\nSubject: t%d\n\nhello\n" % e.seq)
        os.rename(tmp, os.path.join(e.pickup, "m%06d" % e.seq))

    def seen(self, sink=None):
        """rcpt -> (auth_user, auth_mech, tls, peer) as the sink saw it."""
        out = {}
        for m in msgs_of(sink or self.sink):
            for r in m["rcpts"]:
                out[r] = (m.get("auth_user"), m.get("auth_mech"), m.get("tls"), m.get("peer"))
        return out

    def close(self):
        if self.e:
            self.e.cleanup()
        for s in self.sinks:
            finish(s)
        if self.certdir:
            shutil.rmtree(self.certdir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def base(env, extra=""):
    return ('Worker_Threads = 2\nTLS = "required"\nTLS_Verify = "no"\nGateway = "127.0.0.1:%d"\n'
            'Retry_Interval = 1\nMax_Retry_Interval = 1\n%s' % (env.sink.port, extra))


def delivered(env, n):
    return lambda: len(env.e.records("D")) >= n


# ------------------------------------------------------------ scenarios

def scenario_seed(env):
    """The seed's Example 71.77 verbatim: msys over LOGIN, sparkpost over PLAIN."""
    e = env.engine(base(env) + SEED_DOMAINS)
    for i in range(3):
        env.inject(["x%d@messagesystems.com" % i])
        env.inject(["y%d@sparkpost.com" % i])
    e.wait_for(lambda: all_final(e, 6), 20, "6 final records")
    check_exactly_one(e, 6)
    seen = env.seen()
    print("sink saw:", sorted(seen.items()))
    for i in range(3):
        expect(seen["x%d@messagesystems.com" % i][:3] == ("msys", "LOGIN", True), "msys over LOGIN")
        expect(seen["y%d@sparkpost.com" % i][:3] == ("sparkpost", "PLAIN", True), "sparkpost PLAIN")


def scenario_scopes(env):
    """Each scope level wins exactly as docs/configuration.md's order says."""
    conf = base(env, """
Outbound_SMTP_AUTH_Type = "PLAIN"
Outbound_SMTP_AUTH_User = "u-global"
Outbound_SMTP_AUTH_Pass = "p-global"
Binding_Group "g" {
  Outbound_SMTP_AUTH_User = "u-group"
  Outbound_SMTP_AUTH_Pass = "p-group"
  Binding "b1" {
    Outbound_SMTP_AUTH_User = "u-bind"
    Outbound_SMTP_AUTH_Pass = "p-bind"
    Domain "bd.test" { Outbound_SMTP_AUTH_User = "u-bd" Outbound_SMTP_AUTH_Pass = "p-bd"
                       Outbound_SMTP_AUTH_Type = "LOGIN" }
  }
  Binding "b2" { }
}
Domain "dom.test" { Outbound_SMTP_AUTH_User = "u-dom" Outbound_SMTP_AUTH_Pass = "p-dom" }
""")
    e = env.engine(conf)
    cases = [("r1@plain.test", None, "u-global", "PLAIN"),       # global
             ("r2@dom.test", None, "u-dom", "PLAIN"),            # domain over global
             ("r3@plain.test", "b2", "u-group", "PLAIN"),        # binding_group
             ("r4@dom.test", "b2", "u-group", "PLAIN"),          # group over top-level domain
             ("r5@plain.test", "b1", "u-bind", "PLAIN"),         # binding over group
             ("r6@dom.test", "b1", "u-bind", "PLAIN"),           # binding over domain
             ("r7@bd.test", "b1", "u-bd", "LOGIN")]              # binding::domain over all
    for rcpt, b, _u, _m in cases:
        env.inject([rcpt], binding=b)
    e.wait_for(lambda: all_final(e, len(cases)), 20, "all final")
    check_exactly_one(e, len(cases))
    seen = env.seen()
    for rcpt, b, u, m in cases:
        print("%-14s binding %-4s -> %s" % (rcpt, b, seen.get(rcpt)))
        expect(seen.get(rcpt, (None, None))[:2] == (u, m), "%s via %s: expected %s/%s, got %r"
               % (rcpt, b, u, m, seen.get(rcpt)))


def scenario_lua_seed(env):
    """The seed's Example 71.76 verbatim: the server sees foo; print goes to the paniclog."""
    lua = env.write("lua/seed.lua", SEED_LUA)
    conf = base(env) + SEED_DOMAINS + (
        'scriptlet "scriptlet" { script "seed" { source = "%s" } }\n' % lua[:-4])
    e = env.engine(conf)
    env.inject(["x@messagesystems.com"])
    env.inject(["y@sparkpost.com"])
    e.wait_for(delivered(env, 2), 20, "2 D")
    seen = env.seen()
    print("sink saw:", seen)
    expect(seen["x@messagesystems.com"][:2] == ("foo", "LOGIN"), "foo over LOGIN (configured type)")
    expect(seen["y@sparkpost.com"][:2] == ("foo", "PLAIN"), "foo over PLAIN")
    pan = e.read(e.paniclog)
    expect("[seed]" in pan and "outbound_smtp_auth_config Lua hook called" in pan,
           "Lua print in the paniclog with the script name:\n" + pan)


def scenario_xcontext(env):
    """Per-message credentials preset by x-context lines, no Lua."""
    e = env.engine(base(env) + SEED_DOMAINS)
    env.inject(["a@sparkpost.com"], ctx=[("outbound_smtp_auth_user", "tenant1"),
                                        ("outbound_smtp_auth_pass", "t1-pw")])
    env.inject(["b@sparkpost.com"], ctx=[("outbound_smtp_auth_user", "tenant2"),
                                        ("outbound_smtp_auth_pass", "t2-pw"),
                                        ("outbound_smtp_auth_type", "LOGIN")])
    env.inject(["c@sparkpost.com"])
    env.inject(["d@sparkpost.com"], ctx=[("outbound_smtp_auth_user", "tenant1"),
                                        ("outbound_smtp_auth_pass", "t1-pw"),
                                        ("outbound_smtp_auth_type", "XOAUTH2")])
    e.wait_for(delivered(env, 4), 20, "4 D")
    seen = env.seen()
    print("sink saw:", seen)
    expect(seen["d@sparkpost.com"][:2] == ("tenant1", "XOAUTH2"), "XOAUTH2 token from x-context")
    expect(seen["a@sparkpost.com"][:2] == ("tenant1", "PLAIN"), "x-context user, configured type")
    expect(seen["b@sparkpost.com"][:2] == ("tenant2", "LOGIN"), "x-context type wins too")
    expect(seen["c@sparkpost.com"][:2] == ("sparkpost", "PLAIN"), "no preset: configuration")


def make_db(env, rows):
    db = os.path.join(env.dir, "creds.db")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE creds (auth_key TEXT PRIMARY KEY, user TEXT, pass TEXT, mech TEXT)")
    con.executemany("INSERT INTO creds VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return db


def sqlite_conf(db):
    return ('Datasource "creds" { uri = ( "sqlite:%s" ) cache_life = 300 cache_size = 1000 }\n'
            'scriptlet "scriptlet" { script "tenant_credentials" '
            '{ source = "examples/tenant_credentials" } }\n' % db)


def scenario_lua_sqlite(env):
    """lua/examples/tenant_credentials.lua: credentials from SQLite by Outbound_SMTP_AUTH_Key."""
    db = make_db(env, [("someotherstring", "tenant-sp", "sp-secret", "LOGIN")])
    e = env.engine(base(env) + SEED_DOMAINS + sqlite_conf(db))
    env.inject(["a@sparkpost.com"])
    env.inject(["b@messagesystems.com"])
    e.wait_for(delivered(env, 2), 20, "2 D")
    seen = env.seen()
    print("sink saw:", seen)
    expect(seen["a@sparkpost.com"][:2] == ("tenant-sp", "LOGIN"), "row for the scope's key")
    expect(seen["b@messagesystems.com"][:2] == ("msys", "LOGIN"), "no row: configuration")


def scenario_two_creds(env):
    """Two messages to one domain with different credentials: each under its own user,
    over different connections; same credentials share connections."""
    e = env.engine(base(env, "Worker_Threads = 1\n") + SEED_DOMAINS)
    for i in range(3):
        env.inject(["a%d@sparkpost.com" % i], ctx=[("outbound_smtp_auth_user", "tenant1"),
                                                  ("outbound_smtp_auth_pass", "t1-pw")])
        env.inject(["b%d@sparkpost.com" % i], ctx=[("outbound_smtp_auth_user", "tenant2"),
                                                  ("outbound_smtp_auth_pass", "t2-pw")])
    e.wait_for(delivered(env, 6), 20, "6 D")
    seen = env.seen()
    a = {seen["a%d@sparkpost.com" % i][3] for i in range(3)}
    b = {seen["b%d@sparkpost.com" % i][3] for i in range(3)}
    print("tenant1 connections:", a, "tenant2 connections:", b)
    expect(all(seen["a%d@sparkpost.com" % i][0] == "tenant1" for i in range(3)), "tenant1's mail")
    expect(all(seen["b%d@sparkpost.com" % i][0] == "tenant2" for i in range(3)), "tenant2's mail")
    expect(not (a & b), "no connection carried both users' mail")
    summ = env.sink.summary_now()
    print("sink summary: connections %s, auth_successes %s" % (summ.get("connections"),
                                                                summ.get("auth_successes")))
    expect(summ.get("auth_failures", 0) == 0, "no AUTH failure")


def scenario_wrong_pass(env):
    """A wrong password: T records and retries, a loud paniclog line naming the user, no bounce."""
    e = env.engine(base(env) + SEED_DOMAINS.replace('"sparkpost"\n  Outbound_SMTP_AUTH_Key',
                                                    '"WrongPw-777"\n  Outbound_SMTP_AUTH_Key'))
    env.inject(["a@sparkpost.com"])
    e.wait_for(lambda: len(e.records("T")) >= 2, 20, "2 T records (a retry)")
    t = e.records("T")
    print("T:", [f[13] for f in t])
    expect(all("535" in f[13] for f in t), "the T text carries the 535")
    expect(not e.records("P") and not e.records("D"), "no bounce, no delivery")
    expect(not e.read(e.bouncelog).strip(), "bouncelog empty")
    pan = e.read(e.paniclog)
    expect('as "sparkpost" rejected' in pan, "loud paniclog line with the user:\n" + pan)
    expect("WrongPw-777" not in pan and "WrongPw-777" not in e.read(e.mainlog), "no password")
    # the operator fixes the password and reloads: the next retry delivers
    with open(e.conf) as f:
        text = f.read()
    with open(e.conf, "w") as f:
        f.write(text.replace("WrongPw-777", "sparkpost"))
    e.proc.send_signal(__import__("signal").SIGHUP)
    e.wait_for(delivered(env, 1), 15, "delivery after the reload")
    expect(env.seen()["a@sparkpost.com"][0] == "sparkpost", "delivered as sparkpost")


def scenario_no_auth(env):
    """A server that offers no AUTH: a clear transient failure, nothing sent unauthenticated."""
    e = env.engine(base(env) + SEED_DOMAINS)
    env.inject(["a@sparkpost.com"])
    e.wait_for(lambda: e.records("T"), 20, "a T record")
    t = e.records("T")[0][13]
    print("T:", t)
    expect("does not offer AUTH" in t, "reason names the missing AUTH: " + t)
    expect(not msgs_of(env.sink), "nothing delivered")


def scenario_plaintext(env):
    """A plaintext-only AUTH server: refused (T names Outbound_SMTP_AUTH_Allow_Plaintext)
    unless the option is true for the scope."""
    extra = 'Domain "allowed.test" { Outbound_SMTP_AUTH_Allow_Plaintext = true }\n'
    conf = base(env, extra).replace('TLS = "required"', 'TLS = "ifavailable"') + \
        'Outbound_SMTP_AUTH_User = "sparkpost"\nOutbound_SMTP_AUTH_Pass = "sparkpost"\n'
    e = env.engine(conf)
    env.inject(["a@refused.test"])
    env.inject(["b@allowed.test"])
    e.wait_for(lambda: e.records("T") and e.records("D"), 20, "a T and a D")
    t = e.records("T")
    print("T:", [f[13] for f in t])
    expect(all(f[5] == "refused.test" for f in t), "only the refused domain deferred")
    expect("Outbound_SMTP_AUTH_Allow_Plaintext" in t[0][13], "T names the option")
    seen = env.seen()
    expect(seen.get("b@allowed.test", (None, None, None))[:3] == ("sparkpost", "PLAIN", False),
           "allowed domain authenticated in plaintext: %r" % seen)
    expect("a@refused.test" not in seen, "refused domain not sent")


def scenario_secrets(env):
    """After successful and failing AUTH, each with a configured, an x-context and a
    Lua-set password, the passwords (as text, and in their LOGIN and PLAIN base64 forms)
    appear in no file under the spool and log directories (mainlog, paniclog, bouncelog,
    jsonlog, the engine's console output), nor in impetus-ctl's or --eval-config's output."""
    lua = env.write("lua/pw.lua", """local mod = {}
function mod:outbound_smtp_auth_config(msg, ac, vctx)
  if msg:rcptto() == 'l@lua.test' then
    msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', 'luauser')
    msg:context_set(VCTX_MESS, 'outbound_smtp_auth_pass', 'Sekr1t-Lua-9')
  elseif msg:rcptto() == 'lb@lua.test' then
    msg:context_set(VCTX_MESS, 'outbound_smtp_auth_user', 'luauser')
    msg:context_set(VCTX_MESS, 'outbound_smtp_auth_pass', 'Sekr1t-LuaBad-9')
  end
end
msys.registerModule("pw", mod)
""")
    conf = base(env) + (
        'Keep_Message_Dicts_In_Memory = false\n'
        'Domain "cfg.test" { Outbound_SMTP_AUTH_Type = "LOGIN" Outbound_SMTP_AUTH_User = "cfguser"'
        ' Outbound_SMTP_AUTH_Pass = "Sekr1t-Cfg-9" }\n'
        'Domain "bad.test" { Outbound_SMTP_AUTH_User = "cfguser" Outbound_SMTP_AUTH_Pass = '
        '"Sekr1t-Bad-9" }\n'
        'Outbound_SMTP_AUTH_Type = "PLAIN"\n'
        'scriptlet "scriptlet" { script "pw" { source = "%s" } }\n' % lua[:-4])
    e = env.engine(conf)
    env.inject(["c@cfg.test"])
    env.inject(["x@ctx.test"], ctx=[("outbound_smtp_auth_user", "ctxuser"),
                                   ("outbound_smtp_auth_pass", "Sekr1t-Ctx-9")])
    env.inject(["l@lua.test"])
    # failing AUTH (535) with each kind of password: T records, retried
    env.inject(["b@bad.test"])
    env.inject(["xb@ctx.test"], ctx=[("outbound_smtp_auth_user", "ctxuser"),
                                    ("outbound_smtp_auth_pass", "Sekr1t-CtxBad-9")])
    env.inject(["lb@lua.test"])
    # a rejected pickup file (no x-receiver) with a password: its bad/ copy must not keep
    # it (issue 18 item 6)
    tmp = os.path.join(e.spool, ".badsecret")
    with open(tmp, "w") as f:
        f.write("x-sender: <a@s.test>\nx-context: outbound_smtp_auth_pass=Sekr1t-Ctx-9\n"
                "Subject: b\n\nb\n")
    os.rename(tmp, os.path.join(e.pickup, "badsecret"))
    e.wait_for(lambda: os.path.exists(os.path.join(e.spool, "bad", "badsecret.why")), 20,
               "the rejected file in bad/")
    # (the successful ones on ctx.test and lua.test are D: a T there is a failing one)
    e.wait_for(lambda: len(e.records("D")) >= 3
               and {"bad.test", "ctx.test", "lua.test"} <= {f[5] for f in e.records("T")},
               20, "3 D and a T for each failing AUTH")
    seen = env.seen()
    expect(seen["c@cfg.test"][0] == "cfguser" and seen["x@ctx.test"][0] == "ctxuser"
           and seen["l@lua.test"][0] == "luauser", "all three authenticated: %r" % seen)
    # impetus-ctl output (when built): domain (credentials masked), mailq, config eval
    ctl = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(env.imp))), "..",
                       "tools", "ctl", "impetus-ctl")
    ctl = os.path.normpath(ctl)
    if os.path.exists(ctl):
        sock = os.path.join(e.spool, "impetus.sock")
        outs = []
        for cmd in (["domain", "cfg.test"], ["domain", "bad.test"], ["mailq"], ["summary"],
                    ["config", "eval", "domain", "cfg.test", "Outbound_SMTP_AUTH_Pass"]):
            p = __import__("subprocess").run([ctl, "-s", sock] + cmd, capture_output=True,
                                             timeout=10)
            outs.append(p.stdout + p.stderr)
        blob = b"".join(outs)
        print("impetus-ctl: %d bytes of output checked" % len(blob))
        expect(not leaks(blob), "a password in impetus-ctl output: %r" % leaks(blob))
    p = __import__("subprocess").run([env.imp, "--eval-config", "-c", e.conf, "domain", "cfg.test",
                                      "Outbound_SMTP_AUTH_Pass"], capture_output=True, timeout=10)
    expect(p.returncode == 0 and not leaks(p.stdout + p.stderr),
           "--eval-config shows a password: %r" % (p.stdout + p.stderr))
    # scan while the failing message is still queued, and again after stop
    for phase in ("running", "stopped"):
        if phase == "stopped":
            expect(e.stop() == 0, "exit status")
        n = 0
        for root, _d, files in os.walk(e.dir):
            for name in files:
                path = os.path.join(root, name)
                if name == "impetus.conf" or not os.path.isfile(path):
                    continue  # the configuration holds them; sockets are not files
                n += 1
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read()
                expect(not leaks(data), "%r found in %s (%s)" % (leaks(data), path, phase))
        print("%s: %d files scanned, no password" % (phase, n))
    for log in (e.mainlog, e.paniclog, os.path.join(e.dir, "stderr")):
        expect(os.path.exists(log), "%s was scanned" % log)


SECRETS = [("cfguser", "Sekr1t-Cfg-9"), ("cfguser", "Sekr1t-Bad-9"), ("ctxuser", "Sekr1t-Ctx-9"),
           ("ctxuser", "Sekr1t-CtxBad-9"), ("luauser", "Sekr1t-Lua-9"),
           ("luauser", "Sekr1t-LuaBad-9")]


def leaks(data):
    """The secrets (text, AUTH LOGIN's base64, AUTH PLAIN's base64) found in data."""
    import base64
    found = []
    for user, pw in SECRETS:
        forms = [pw.encode(), base64.b64encode(pw.encode()),
                 base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode())]
        found += [f for f in forms if f in data]
    return found + ([b"Sekr1t"] if b"Sekr1t" in data else [])


def scenario_aiosmtpd(env):
    """python3-aiosmtpd as an independent AUTH server (plaintext, allowed for the test)."""
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword
    except ImportError:
        print("SKIP: python3-aiosmtpd not installed")
        sys.exit(SKIP)
    logins, got = [], []
    users = {"msys": "msys", "sparkpost": "sparkpost", "foo": "bar"}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append((session.authenticated, list(envelope.rcpt_tos)))
            return "250 2.0.0 accepted"

    def authenticator(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        u = auth_data.login.decode()
        ok = users.get(u) == auth_data.password.decode()
        logins.append((mechanism, u, ok))
        return AuthResult(success=ok, handled=False)

    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                     auth_require_tls=False)
    ctl.start()
    try:
        conf = ('Worker_Threads = 2\nTLS = "no"\nGateway = "127.0.0.1:%d"\nRetry_Interval = 1\n'
                'Outbound_SMTP_AUTH_Allow_Plaintext = true\n' % port) + SEED_DOMAINS
        e = env.engine(conf)
        env.inject(["a@messagesystems.com"])
        env.inject(["b@sparkpost.com"])
        e.wait_for(delivered(env, 2), 20, "2 D")
        print("aiosmtpd logins:", logins)
        expect(("LOGIN", "msys", True) in logins, "aiosmtpd saw msys over LOGIN")
        expect(("PLAIN", "sparkpost", True) in logins, "aiosmtpd saw sparkpost over PLAIN")
        expect(len(got) == 2 and all(a for a, _ in got), "both sessions authenticated")
    finally:
        ctl.stop()


def scenario_hold(env):
    """Issue 8: a datasource query held open (BEGIN EXCLUSIVE by the test) does not stop the
    other messages on that worker; the held message delivers once released."""
    db = make_db(env, [("someotherstring", "tenant-sp", "sp-secret", "PLAIN")])
    e = env.engine(base(env, "Worker_Threads = 1\n") + SEED_DOMAINS + sqlite_conf(db) +
                   'Domain "other.test" { Outbound_SMTP_AUTH_Type = "PLAIN" '
                   'Outbound_SMTP_AUTH_User = "msys" Outbound_SMTP_AUTH_Pass = "msys" }\n')
    hold = sqlite3.connect(db, isolation_level=None, timeout=1)
    hold.execute("BEGIN EXCLUSIVE")
    t0 = time.monotonic()
    try:
        env.inject(["held@sparkpost.com"])          # its key has a row: the query waits
        time.sleep(0.2)
        for i in range(5):
            env.inject(["m%d@other.test" % i])  # no key in its scope: no query
        e.wait_for(lambda: len(e.records("D")) >= 5, 8, "5 D while the query is held")
        seen = env.seen()
        expect("held@sparkpost.com" not in seen, "the held message waits")
        print("5 other messages delivered in %.2f s while the query was held"
              % (time.monotonic() - t0))
    finally:
        hold.execute("COMMIT")
        hold.close()
    e.wait_for(delivered(env, 6), 15, "the held message after release")
    expect(env.seen()["held@sparkpost.com"][0] == "tenant-sp", "delivered with the row's user")


def scenario_ingest_hooks(env):
    """Issue 8: validate_set_binding routes by sender, validate_data_spool sets a context key
    that outbound_smtp_auth then uses (persisted: Keep_Message_Dicts_In_Memory = false), and
    core_log_delivery_v1 runs on the worker."""
    lua = env.write("lua/ingest.lua", """local mod = {}
function mod:validate_set_binding(msg)
  if string.find(msg:mailfrom(), "@tenant2") then msg:binding("b2") end
end
function mod:validate_data_spool(msg, ac, vctx)
  if msg:mailfrom() == "x@tenant1.test" then
    msg:context_set(VCTX_MESS, "outbound_smtp_auth_user", "ingest-user")
    msg:context_set(VCTX_MESS, "outbound_smtp_auth_pass", "ingest-pw")
  end
end
function mod:core_log_delivery_v1(msg, dr, now, note)
  print("delivered " .. msg:rcptto())
end
msys.registerModule("ingest", mod)
""")
    conf = base(env) + SEED_DOMAINS.replace("= true", "= false") + (
        'Binding "b2" { Outbound_SMTP_AUTH_User = "b2user" Outbound_SMTP_AUTH_Pass = "b2pw" }\n'
        'Domain "b2.test" { }\n'
        'scriptlet "scriptlet" { script "ingest" { source = "%s" } }\n' % lua[:-4])
    e = env.engine(conf)
    env.inject(["a@sparkpost.com"], sender="x@tenant1.test")
    env.inject(["b@b2.test"], sender="y@tenant2.test")
    e.wait_for(delivered(env, 2), 20, "2 D")
    seen = env.seen()
    print("sink saw:", seen)
    expect(seen["a@sparkpost.com"][0] == "ingest-user", "context set at ingest used for AUTH")
    expect(seen["b@b2.test"][0] == "b2user", "validate_set_binding routed to b2")
    d = e.records("D")
    expect(any(f[-1] == "b2" or "b2" in f for f in d), "D record on binding b2: %r" % d)
    e.wait_for(lambda: "delivered a@sparkpost.com" in e.read(e.paniclog), 5, "outcome hook")


def scenario_lua_reload(env):
    """Issue 8: SIGHUP reloads the scripts in every worker; a script that does not compile is
    rejected with script:line and the old one stays."""
    import signal
    lua = env.write("lua/seed.lua", SEED_LUA)
    conf = base(env) + SEED_DOMAINS + (
        'scriptlet "scriptlet" { script "seed" { source = "%s" } }\n' % lua[:-4])
    e = env.engine(conf)
    env.inject(["a@sparkpost.com"])
    e.wait_for(delivered(env, 1), 20, "first D")
    env.write("lua/seed.lua", "local mod = {\nfunction broken(\n")
    e.proc.send_signal(signal.SIGHUP)
    e.wait_for(lambda: "reload rejected" in e.read(e.paniclog), 10, "rejected reload")
    pan = e.read(e.paniclog)
    expect("seed.lua:" in pan.split("reload rejected")[1].splitlines()[0], "names script:line")
    env.inject(["b@sparkpost.com"])
    e.wait_for(delivered(env, 2), 20, "second D")
    env.write("lua/seed.lua", SEED_LUA.replace("'foo'", "'tenant1'").replace("'bar'", "'t1-pw'"))
    e.proc.send_signal(signal.SIGHUP)
    e.wait_for(lambda: "scripts reloaded" in e.read(e.paniclog), 10, "reloaded scripts")
    env.inject(["c@sparkpost.com"])
    e.wait_for(delivered(env, 3), 20, "third D")
    seen = env.seen()
    print("sink saw:", {k: v[0] for k, v in seen.items()})
    expect(seen["a@sparkpost.com"][0] == "foo" and seen["b@sparkpost.com"][0] == "foo",
           "old script kept after the bad reload")
    expect(seen["c@sparkpost.com"][0] == "tenant1", "new script after the good reload")


def scenario_recovery_binding(env):
    """Issue 8: validate_set_binding runs again at recovery from the spool: a message queued
    for a dead gateway is routed to binding b2 by the script found at restart."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    lua = env.write("lua/route.lua", "local mod = {}\nmsys.registerModule('route', mod)\n")
    conf = ('Worker_Threads = 1\nTLS = "required"\nTLS_Verify = "no"\nGateway = "127.0.0.1:%d"\n'
            'Retry_Interval = 2\nMax_Retry_Interval = 2\noutbound_smtp_auth { }\n'
            'Binding "b2" { Gateway = "127.0.0.1:%d" Outbound_SMTP_AUTH_User = "b2user"\n'
            '  Outbound_SMTP_AUTH_Pass = "b2pw" }\n'
            'scriptlet "scriptlet" { script "route" { source = "%s" } }\n'
            % (dead, env.sink.port, lua[:-4]))
    e = env.engine(conf)
    env.inject(["x@rec.test"])
    e.wait_for(lambda: e.records("T"), 20, "a T (dead gateway)")
    expect(e.stop() == 0, "first stop")
    env.write("lua/route.lua", "local mod = {}\nfunction mod:validate_set_binding(msg)\n"
              "  print('set_binding ' .. tostring(msg:binding('b2')))\nend\nmsys.registerModule('route', mod)\n")
    e.start()
    e.wait_for(delivered(env, 1), 20, "delivery after recovery")
    d = e.records("D")
    print("D:", d)
    expect("b2" in d[0], "delivered on binding b2")
    expect(env.seen()["x@rec.test"][0] == "b2user", "with b2's credentials")


def scenario_false_off(env):
    """Issue 18 item 10: Outbound_SMTP_AUTH_* = false switches AUTH off in a narrower
    scope (the server offers AUTH but does not require it), and Type = false is accepted."""
    e = env.engine(base(env, """
Outbound_SMTP_AUTH_Type = "PLAIN"
Outbound_SMTP_AUTH_User = "u-global"
Outbound_SMTP_AUTH_Pass = "p-global"
Domain "off-user.test" { Outbound_SMTP_AUTH_User = false }
Domain "off-type.test" { Outbound_SMTP_AUTH_Type = false }
Domain "ctx.test" { Outbound_SMTP_AUTH_User = FALSE }
"""))
    env.inject(["a@on.test"])
    env.inject(["b@off-user.test"])
    env.inject(["c@off-type.test"])
    env.inject(["d@ctx.test"], ctx=[("outbound_smtp_auth_user", "tenant1"),
                                   ("outbound_smtp_auth_pass", "t1-pw")])
    e.wait_for(delivered(env, 4), 20, "4 D")
    seen = env.seen()
    print("sink saw:", seen)
    expect(seen["a@on.test"][0] == "u-global", "global credentials")
    expect(seen["b@off-user.test"][0] is None, "User = false: no AUTH (not the user \"false\")")
    expect(seen["c@off-type.test"][0] is None, "Type = false: no AUTH")
    expect(seen["d@ctx.test"][:2] == ("tenant1", "PLAIN"), "a message context still wins")


def scenario_unusable(env):
    """Issue 18 items 1 and 11: a message context with a user but no password never borrows
    the configured password, and an unknown mechanism is not PLAIN: each attempt is a T
    naming the reason, a paniclog line, nothing reaches the server."""
    e = env.engine(base(env) + SEED_DOMAINS)
    env.inject(["half@sparkpost.com"], ctx=[("outbound_smtp_auth_user", "tenant1")])
    env.inject(["mech@sparkpost.com"], ctx=[("outbound_smtp_auth_user", "tenant1"),
                                           ("outbound_smtp_auth_pass", "t1-pw"),
                                           ("outbound_smtp_auth_type", "CRAM-MD5")])
    env.inject(["ok@sparkpost.com"])
    e.wait_for(lambda: len(e.records("T")) >= 4 and e.records("D"), 20, "2 T per message, 1 D")
    t = [f[13] for f in e.records("T")]
    print("T:", t)
    expect(any("outbound_smtp_auth_user but not outbound_smtp_auth_pass" in x for x in t),
           "T names the missing password key")
    expect(any('"CRAM-MD5" is not a supported mechanism' in x for x in t), "T names CRAM-MD5")
    expect(all(x.startswith("451 4.7.0") for x in t), "transient")
    pan = e.read(e.paniclog)
    expect("CRAM-MD5" in pan and "outbound_smtp_auth_pass" in pan, "paniclog lines:\n" + pan)
    seen = env.seen()
    print("sink saw:", seen)
    expect(set(seen) == {"ok@sparkpost.com"}, "only the configured message was delivered")
    expect(not e.records("P"), "no bounce")
    for rec in msgs_of(env.sink):
        expect(rec.get("auth_user") != "tenant1", "tenant1 never authenticated")


def scenario_relay(env):
    """Issue 18 item 7: SparkPost's relay sample. Binding "spe" { Gateway = "#spe_relay" + AUTH }
    and Domain "#spe_relay" { Routes TLS = required }: delivered through the route with the
    binding's credentials over TLS (it bounced with 550 5.1.2 route lookup failed)."""
    conf = ('Worker_Threads = 2\nTLS_Verify = "no"\nRetry_Interval = 1\nMax_Retry_Interval = 1\n'
            'Domain "#spe_relay" { Routes = ( "smtp://127.0.0.1:%d" ) TLS = "required" }\n'
            'Binding "spe" {\n  Gateway = "#spe_relay"\n  Outbound_SMTP_AUTH_Type = "LOGIN"\n'
            '  Outbound_SMTP_AUTH_User = "cfguser"\n  Outbound_SMTP_AUTH_Pass = "Sekr1t-Cfg-9"\n}\n'
            % env.sink.port)
    e = env.engine(conf)
    env.inject(["a@gmail.test"], binding="spe")
    env.inject(["b@yahoo.test"], binding="spe")
    e.wait_for(lambda: all_final(e, 2), 20, "2 final records")
    expect(not e.records("P"), "no bounce: %r" % e.records("P"))
    seen = env.seen()
    print("sink saw:", seen)
    for r in ("a@gmail.test", "b@yahoo.test"):
        expect(seen.get(r, (None,))[:3] == ("cfguser", "LOGIN", True),
               "%s through #spe_relay's route, AUTH LOGIN over TLS" % r)


def main():
    imp, sinkbin, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    users = [("msys", "msys"), ("sparkpost", "sparkpost"), ("foo", "bar"),
             ("tenant1", "t1-pw"), ("tenant2", "t2-pw"), ("tenant-sp", "sp-secret"),
             ("u-global", "p-global"), ("u-group", "p-group"), ("u-bind", "p-bind"),
             ("u-bd", "p-bd"), ("u-dom", "p-dom"), ("cfguser", "Sekr1t-Cfg-9"),
             ("ctxuser", "Sekr1t-Ctx-9"), ("luauser", "Sekr1t-Lua-9"),
             ("ingest-user", "ingest-pw"), ("b2user", "b2pw")]
    kw = {}
    if scenario == "no_auth":
        kw = {"users": None, "sink_args": ()}
    elif scenario == "plaintext":
        kw = {"users": users, "sink_args": ("--require-auth",), "tls": False}
    elif scenario == "false_off":
        kw = {"users": users, "sink_args": ()}
    elif scenario == "aiosmtpd":
        kw = {"users": None, "sink_args": (), "tls": False}
    else:
        kw = {"users": users}
    env = Env(imp, sinkbin, **kw)
    try:
        globals()["scenario_" + scenario](env)
        if env.e and env.e.proc is not None:
            expect(env.e.stop() == 0, "impetus exit status")
    finally:
        env.close()
    print("ok: " + scenario)
    return 0


if __name__ == "__main__":
    sys.exit(main())
