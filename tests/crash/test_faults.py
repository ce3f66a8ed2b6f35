#!/usr/bin/env python3
"""Faults (issue 10), each with its log line checked:
  sink_gone   the server disappears (SIGKILL) and comes back on the same
              port: the mail queued meanwhile gets T records and is
              delivered once it is back; nothing lost.
  dns_timeout the Resolver is a UDP port nobody answers on: the attempt
              ends with a T "route lookup failed" (no crash, no P).
  fd_limit    RLIMIT_NOFILE low: sessions that cannot get a socket are
              deferred, every message is delivered.
  disk_full   the spool on a small tmpfs fills up while retry state is
              being written: a clear "commit failed" line, then with
              space back everything is delivered. SKIP when tmpfs cannot
              be mounted.
  datasource  Lua datasources whose SQLite file is missing, corrupt, or
              locked (BEGIN EXCLUSIVE held by the test, busy_timeout_ms
              short): the hook gets the error (raised, or nil with
              raise_error = false), the paniclog names the datasource and
              SQLite's reason, every message goes out once with the
              configured credentials; released, the locked one answers.
usage: test_faults.py IMPETUS SINK SCENARIO"""
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "engine"))
from enginelib import Engine, sinklib  # noqa: E402

SKIP = 77


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


from testlib import free_port  # noqa: E402  (tests/integration/testlib.py)


class JSink:
    """impetus-sink on a chosen port with a jsonl log that survives restarts."""

    def __init__(self, binary, port, logdir, extra=()):
        self.s = sinklib.Sink(binary, ["--jsonl", os.path.join(logdir, "msgs.jsonl")] + list(extra),
                              extra_listen=["127.0.0.1:%d" % port])

    def kill(self):
        self.s.proc.send_signal(signal.SIGKILL)
        self.s.proc.wait()
        self.s.cleanup()

    def stop(self):
        if self.s.proc.poll() is None:
            self.s.stop()
        self.s.cleanup()


def rcpts_at(logdir):
    out = {}
    try:
        with open(os.path.join(logdir, "msgs.jsonl")) as f:
            for line in f:
                if line.strip():
                    for r in json.loads(line)["rcpts"]:
                        out[r] = out.get(r, 0) + 1
    except FileNotFoundError:
        pass
    return out


def scenario_sink_gone(imp, sinkbin):
    logdir = tempfile.mkdtemp(prefix="faults.")
    port = free_port()
    sink = JSink(sinkbin, port, logdir)
    e = Engine(imp, 'Worker_Threads = 2\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
               'Retry_Interval = 1\nMax_Retry_Interval = 1\nHost_Failure_Retry = 1\n' % port, "gone")
    try:
        e.start()
        for i in range(20):
            e.inject("a@x.test", ["a%d@y.test" % i])
        e.wait_for(lambda: len(rcpts_at(logdir)) == 20, 20, "first 20 at the sink")
        sink.kill()
        for i in range(20):
            e.inject("a@x.test", ["b%d@y.test" % i])
        # Connections that were idle when the sink died fail first (reset);
        # new ones cannot connect. Each T must say which, and one must come
        # from a new connection failing.
        def names_failure(f):
            text = f[-1].lower()
            return "refused" in text or "connect" in text or "reset" in text
        def new_conn_failed(f):
            text = f[-1].lower()
            return "refused" in text or "connect" in text
        e.wait_for(lambda: len(e.records("T")) >= 5 and
                   any(new_conn_failed(f) for f in e.records("T")), 20,
                   "T records naming a failed connection while the sink is gone")
        t = e.records("T")
        print("while gone:", t[0][-1])
        expect(all(names_failure(f) for f in t),
               "every T names the connection failure: %r" % [f[-1] for f in t][:5])
        sink = JSink(sinkbin, port, logdir)
        want = {"a%d@y.test" % i for i in range(20)} | {"b%d@y.test" % i for i in range(20)}
        e.wait_for(lambda: want <= set(rcpts_at(logdir)), 30, "all 40 after the sink came back")
        e.wait_for(lambda: e.queue_files() == 0, 10, "empty queue")
        expect(not e.records("P"), "no P")
        expect(e.stop() == 0, "exit status")
        print("ok: %d T records while the sink was gone, all 40 delivered" % len(t))
    finally:
        e.cleanup()
        sink.stop()
        shutil.rmtree(logdir, ignore_errors=True)


def scenario_dns_timeout(imp, sinkbin):
    # a bound UDP socket that never answers: queries time out
    mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mute.bind(("127.0.0.1", 0))
    rport = mute.getsockname()[1]
    e = Engine(imp, 'Worker_Threads = 1\nTLS = "no"\nResolver = "127.0.0.1:%d"\n'
               'Retry_Interval = 60\n' % rport, "dns")
    try:
        e.start()
        t0 = time.monotonic()
        e.inject("a@x.test", ["r@nowhere.test"])
        e.wait_for(lambda: e.records("T"), 30, "a T after the DNS timeout")
        t = e.records("T")[0]
        took = time.monotonic() - t0
        print("T after %.1f s: %s" % (took, t[-1]))
        expect(t[-1].startswith("451 4.4.3") and "route lookup failed" in t[-1],
               "T text: %r" % t[-1])
        expect(not e.records("P") and not e.records("D"), "no D/P")
        expect(e.queue_files() > 0, "still queued")
        expect(e.stop() == 0, "exit status")
    finally:
        e.cleanup()
        mute.close()


def scenario_fd_limit(imp, sinkbin):
    logdir = tempfile.mkdtemp(prefix="faults.")
    sink = JSink(sinkbin, free_port(), logdir, ["--latency", "DOT=200"])
    port = sink.s.port
    e = Engine(imp, 'Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
               'Max_Outbound_Connections = 500\nRetry_Interval = 1\nMax_Retry_Interval = 1\n'
               'Host_Failure_Retry = 1\n' % port, "fds")
    lim = int(os.environ.get("FD_LIMIT", "600"))

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim, lim))
    try:
        e.err = open(os.path.join(e.dir, "stderr"), "w+")
        e.proc = subprocess.Popen([e.impetus, "-c", e.conf], stdout=e.err, stderr=e.err,
                                  preexec_fn=low)
        e.wait_for(lambda: "started" in e.read(e.paniclog), 10, "engine start")
        n = 300
        for i in range(n):
            e.inject("a@x.test", ["f%d@d%d.test" % (i, i % 150)])
        want = {"f%d@d%d.test" % (i, i % 150) for i in range(n)}
        e.wait_for(lambda: want <= set(rcpts_at(logdir)), 60, "all %d delivered" % n)
        e.wait_for(lambda: e.queue_files() == 0, 10, "empty queue")
        t = e.records("T")
        msgs = [f[-1] for f in t]
        print("RLIMIT_NOFILE %d: %d delivered, %d T records; e.g. %r"
              % (lim, n, len(t), msgs[:1]))
        expect(not e.records("P"), "no P")
        expect("new connections wait" in e.read(e.paniclog), "the paniclog says sessions wait")
        expect(not [l for l in e.read(e.paniclog).splitlines() if "Too many open files" in l],
               "no EMFILE failure anywhere (commit, ingest, connect)")
        expect(e.stop() == 0, "exit status")
    finally:
        e.cleanup()
        sink.stop()
        shutil.rmtree(logdir, ignore_errors=True)


def scenario_disk_full(imp, sinkbin):
    top = tempfile.mkdtemp(prefix="faults-disk.")
    mnt = os.path.join(top, "mnt")
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        print("SKIP: cannot mount tmpfs (%s)" % r.stderr.strip())
        sys.exit(SKIP)
    logdir = tempfile.mkdtemp(prefix="faults.")
    port = free_port()
    e = None
    sink = None
    try:
        e = Engine(imp, 'Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
                   'Retry_Interval = 1\nMax_Retry_Interval = 1\nHost_Failure_Retry = 1\n'
                   % port, "disk")
        # the spool on the small tmpfs; logs stay outside it
        spool = os.path.join(mnt, "spool")
        os.makedirs(os.path.join(spool, "pickup"))
        with open(e.conf) as f:
            c = f.read().replace('Spoolbase = "%s"' % e.spool, 'Spoolbase = "%s"' % spool)
        with open(e.conf, "w") as f:
            f.write(c)
        e.spool, e.pickup = spool, os.path.join(spool, "pickup")
        e.start()
        for i in range(30):
            e.inject("a@x.test", ["d%d@y.test" % i], body="Subject: %d\n\n%s" % (i, ("z" * 99 + "\n") * 20))
        # nobody listens: every attempt is a T and rewrites retry state
        e.wait_for(lambda: len(e.records("T")) >= 30, 20, "30 T records")
        # a pickup file written before the disk fills, renamed in after
        hidden = os.path.join(e.pickup, ".late")
        with open(hidden, "w") as f:
            f.write("x-sender: <a@x.test>\nx-receiver: <late@y.test>\n\nlate\n")
        filler = os.path.join(mnt, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        for chunk in (65536, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
        os.close(fd)
        t0 = len(e.records("T"))
        os.rename(hidden, os.path.join(e.pickup, "late"))
        e.inject_failed = False
        # ingest with the disk full: the file stays in pickup/, the paniclog says why
        e.wait_for(lambda: "No space left" in e.read(e.paniclog), 20,
                   "a disk-full line in the paniclog")
        expect(os.path.exists(os.path.join(e.pickup, "late")), "the pickup file is still there")
        # retry state goes on being written (small appends; a failing commit is
        # logged as "commit failed" and the attempt is simply made again)
        e.wait_for(lambda: len(e.records("T")) > t0 + 10, 20, "retries go on with the disk full")
        lines = [l for l in e.read(e.paniclog).splitlines() if "No space left" in l]
        print("disk full:", lines[0])
        os.unlink(filler)
        sink = JSink(sinkbin, port, logdir)
        want = {"d%d@y.test" % i for i in range(30)}
        if not e.inject_failed:
            want.add("late@y.test")
        e.wait_for(lambda: want <= set(rcpts_at(logdir)), 30, "all delivered with space back")
        e.wait_for(lambda: e.queue_files() == 0 and not os.listdir(e.pickup), 10, "empty spool")
        expect(not e.records("P"), "no P")
        expect(e.stop() == 0, "exit status")
        bad = os.path.join(spool, "bad")
        expect(not os.path.isdir(bad) or not os.listdir(bad), "nothing in bad/")
        print("ok: %d messages delivered after the disk filled up" % len(want))
    finally:
        if e is not None:
            e.cleanup()
        if sink is not None:
            sink.stop()
        subprocess.run(["umount", "-l", mnt])
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)


DS_LUA = """require("msys.core")
require("msys.db")
local mod = {}
function mod:outbound_smtp_auth_config(msg, ac, vctx)
  -- the scope's Outbound_SMTP_AUTH_Key names the datasource to ask
  local ds = msg:context_get(VCTX_MESS, "outbound_smtp_auth_key")
  if ds == nil or ds == "" then return msys.core.VALIDATE_CONT end
  local strict = ds ~= "corrupt" -- corrupt: raise_error = false, the call returns nil, err
  local row, err = msys.db.fetch_row(ds, "SELECT user, pass FROM creds WHERE auth_key = ?",
    { "k" }, { raise_error = strict, nocache = true })
  if not row then
    print("lookup in " .. ds .. " gave nil: " .. tostring(err))
    return msys.core.VALIDATE_CONT
  end
  msg:context_set(VCTX_MESS, "outbound_smtp_auth_user", row.user)
  msg:context_set(VCTX_MESS, "outbound_smtp_auth_pass", row.pass)
  return msys.core.VALIDATE_CONT
end
msys.registerModule("dsfault", mod)
"""


def scenario_datasource(imp, sinkbin):
    import sqlite3
    logdir = tempfile.mkdtemp(prefix="faults.")
    users = sinklib.users_file(logdir, [("cfguser", "cfg-pw"), ("dbuser", "db-pw")])
    port = free_port()
    sink = JSink(sinkbin, port, logdir, ["--auth-users", users, "--require-auth"])
    e = None
    hold = None
    try:
        def make_db(path):
            con = sqlite3.connect(path)
            con.execute("CREATE TABLE creds (auth_key TEXT PRIMARY KEY, user TEXT, pass TEXT)")
            con.execute("INSERT INTO creds VALUES ('k', 'dbuser', 'db-pw')")
            con.commit()
            con.close()
        dbs = {"good": os.path.join(logdir, "good.db"), "locked": os.path.join(logdir, "locked.db"),
               "missing": os.path.join(logdir, "no-such-dir", "missing.db"),
               "corrupt": os.path.join(logdir, "corrupt.db")}
        make_db(dbs["good"])
        make_db(dbs["locked"])
        with open(dbs["corrupt"], "wb") as f:
            f.write(b"this is not an SQLite database\n" * 256)
        script = os.path.join(logdir, "dsfault.lua")
        with open(script, "w") as f:
            f.write(DS_LUA)
        conf = ('Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
                'Retry_Interval = 1\nMax_Retry_Interval = 1\n'
                'outbound_smtp_auth { }\nOutbound_SMTP_AUTH_Allow_Plaintext = true\n'
                'Outbound_SMTP_AUTH_Type = "PLAIN"\nOutbound_SMTP_AUTH_User = "cfguser"\n'
                'Outbound_SMTP_AUTH_Pass = "cfg-pw"\n' % port)
        for name, path in dbs.items():
            conf += ('Datasource "%s" { uri = ( "sqlite:%s" ) busy_timeout_ms = 300 }\n'
                     'Domain "%s.test" { Outbound_SMTP_AUTH_Key = "%s" }\n'
                     % (name, path, name, name))
        conf += 'scriptlet "scriptlet" { script "dsfault" { source = "%s" } }\n' % script[:-4]
        e = Engine(imp, conf, "dsfault")
        e.start()
        hold = sqlite3.connect(dbs["locked"], isolation_level=None, timeout=1)
        hold.execute("BEGIN EXCLUSIVE")
        want = {}
        for name in ("missing", "corrupt", "locked"):
            for i in range(3):
                want["%s%d@%s.test" % (name, i, name)] = "cfguser"
        for i in range(2):
            want["good%d@good.test" % i] = "dbuser"
        for r in sorted(want):
            e.inject("a@x.test", [r])
        e.wait_for(lambda: set(want) <= set(rcpts_at(logdir)), 30, "all delivered")
        pan = e.read(e.paniclog)
        for name, why in (("missing", "unable to open database file"),
                          ("corrupt", "file is not a database"),
                          ("locked", "database is locked")):
            line = [l for l in pan.splitlines()
                    if "msys.db query failed: datasource %s: %s" % (name, why) in l]
            expect(line, "a paniclog line for datasource %s (%s):\n%s" % (name, why, pan))
            print(line[0])
        # raise_error (default): the hook's error is logged and skipped; false: nil, err
        for name in ("missing", "locked"):
            line = [l for l in pan.splitlines() if "datasource %s:" % name in l
                    and "skipped (CONT)" in l]
            expect(line, "the raised error ends the hook (%s):\n%s" % (name, pan))
            print(line[0])
        expect("lookup in corrupt gave nil: datasource corrupt: file is not a database" in pan,
               "raise_error = false: the hook got nil and the reason:\n" + pan)
        # and the failure lines are rate-limited: at most one per datasource here
        for name in ("missing", "corrupt", "locked"):
            n = pan.count("msys.db query failed: datasource %s:" % name)
            expect(n == 1, "%d failure lines for %s (one per 10 s)" % (n, name))
        # released, the locked datasource answers again
        hold.execute("COMMIT")
        hold.close()
        hold = None
        want["after@locked.test"] = "dbuser"
        e.inject("a@x.test", ["after@locked.test"])
        e.wait_for(lambda: set(want) <= set(rcpts_at(logdir)), 20, "the message after release")
        got = rcpts_at(logdir)
        expect(all(got[r] == 1 for r in want), "each delivered once: %r" % got)
        users_seen = {}
        with open(os.path.join(logdir, "msgs.jsonl")) as f:
            for line in f:
                m = json.loads(line)
                for r in m["rcpts"]:
                    users_seen[r] = m.get("auth_user")
        for r, u in want.items():
            expect(users_seen.get(r) == u, "%s went as %r, expected %r" % (r, users_seen.get(r), u))
        expect(len(e.records("D")) == len(want) and not e.records("P"), "D for all, no P")
        e.wait_for(lambda: e.queue_files() == 0, 10, "empty queue")
        expect(e.stop() == 0, "exit status")
        bad = os.path.join(e.spool, "bad")
        expect(not os.path.isdir(bad) or not os.listdir(bad), "nothing in bad/")
        print("ok: %d messages delivered once with a missing, a corrupt and a locked datasource"
              % len(want))
    finally:
        if hold is not None:
            hold.close()
        if e is not None:
            e.cleanup()
        sink.stop()
        shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    imp, sinkbin, which = sys.argv[1:4]
    globals()["scenario_" + which](imp, sinkbin)
