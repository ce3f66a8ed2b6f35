#!/usr/bin/env python3
"""Least privilege (issue 10): started as root with User = "impetus" (and
the default Group, impetus), the engine opens its spool and logs, hands them to impetus and
drops root before the workers (network, Lua) start. Checked: every uid and
gid of the running process (/proc/PID/status), the paniclog line, owner
and mode of the spool, queue files (0600) and logs (0640), and that mail
still flows. Needs root and the impetus user (tools/setup.sh): else SKIP.
usage: test_priv.py IMPETUS SINK"""
import os
import pwd
import stat
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "engine"))
from enginelib import Engine, sinklib  # noqa: E402

imp, sinkbin = sys.argv[1], sys.argv[2]
if os.geteuid() != 0:
    print("SKIP: needs root")
    sys.exit(77)
try:
    pw = pwd.getpwnam("impetus")
except KeyError:
    print("SKIP: no impetus user (tools/setup.sh creates it)")
    sys.exit(77)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


sink = sinklib.Sink(sinkbin, [])
e = Engine(imp, 'Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n' % sink.port, "priv")
# the control socket in a directory named after impetus, made by the engine
sock = os.path.join(e.dir, "run-impetus", "ctl.sock")
with open(e.conf, "a") as f:
    f.write('control_listener { listen "%s" { } }\n' % sock)
# User = impetus instead of enginelib's "stay root" lines (Group: the default)
with open(e.conf) as f:
    body = f.read().replace('User = "root"\nGroup = "root"\n', 'User = "impetus"\n')
with open(e.conf, "w") as f:
    f.write(body)
os.chmod(e.dir, 0o755)  # mkdtemp's 0700 would hide the spool from impetus
try:
    e.start()
    status = open("/proc/%d/status" % e.proc.pid).read()
    uids = [l.split()[1:] for l in status.splitlines() if l.startswith("Uid:")][0]
    gids = [l.split()[1:] for l in status.splitlines() if l.startswith("Gid:")][0]
    groups = [l.split()[1:] for l in status.splitlines() if l.startswith("Groups:")][0]
    print("uids", uids, "gids", gids, "groups", groups)
    expect(all(int(u) == pw.pw_uid for u in uids), "real/effective/saved/fs uid %r" % uids)
    expect(all(int(g) == pw.pw_gid for g in gids), "gids %r" % gids)
    expect(all(int(g) == pw.pw_gid for g in groups), "supplementary groups %r" % groups)
    # every thread, not just the main one
    for tid in os.listdir("/proc/%d/task" % e.proc.pid):
        st = open("/proc/%d/task/%s/status" % (e.proc.pid, tid)).read()
        tu = [l.split()[1:] for l in st.splitlines() if l.startswith("Uid:")][0]
        expect(all(int(u) == pw.pw_uid for u in tu), "thread %s uids %r" % (tid, tu))
    expect("running as user impetus" in e.read(e.paniclog), "paniclog says who we run as")
    # non-dumpable after the drop (no core dump with passwords): the kernel
    # then gives the process's /proc files to root
    expect(os.stat("/proc/%d/status" % e.proc.pid).st_uid == 0, "process is not dumpable")
    for i in range(5):
        e.inject("a@x.test", ["r%d@y.test" % i])
    e.wait_for(lambda: len(e.records("D")) == 5, 20, "5 deliveries")
    # files made after the drop, and the ones from before it
    for root, dirs, files in os.walk(e.spool):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            expect(st.st_uid == pw.pw_uid, "%s owned by uid %d" % (p, st.st_uid))
            if stat.S_ISREG(st.st_mode):
                expect(stat.S_IMODE(st.st_mode) & 0o077 == 0, "%s mode %o" % (p, st.st_mode))
    for log in (e.mainlog, e.paniclog, e.jsonlog, e.bouncelog):
        if os.path.exists(log):
            st = os.stat(log)
            expect(st.st_uid == pw.pw_uid, "%s owned by uid %d" % (log, st.st_uid))
            expect(stat.S_IMODE(st.st_mode) & 0o137 == 0, "%s mode %o (0640 at most)"
                   % (log, stat.S_IMODE(st.st_mode)))
    st = os.stat(sock)
    expect(stat.S_ISSOCK(st.st_mode) and st.st_uid == pw.pw_uid
           and stat.S_IMODE(st.st_mode) == 0o600,
           "control socket uid %d mode %o" % (st.st_uid, stat.S_IMODE(st.st_mode)))
    expect(e.stop() == 0, "exit status")
    # an explicit User that does not exist is a start-up error with a clear line
    with open(e.conf, "a") as f:
        f.write('User = "no-such-user-impetus"\n')
    import subprocess
    r = subprocess.run([imp, "-c", e.conf], capture_output=True, text=True, timeout=20)
    expect(r.returncode != 0 and "no-such-user-impetus" in r.stderr and "no such user" in r.stderr,
           "missing User: rc %d, %r" % (r.returncode, r.stderr))
    print("ok: dropped to uid %d gid %d; spool and logs owned by impetus" % (pw.pw_uid, pw.pw_gid))
finally:
    e.cleanup()
    if sink.proc.poll() is None:
        sink.stop()
    sink.cleanup()
