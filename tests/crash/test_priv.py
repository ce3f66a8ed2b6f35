#!/usr/bin/env python3
"""Least privilege (issue 10), the default: started as root WITHOUT User or
Group in its configuration, the engine opens its spool, logs and control
socket, hands them to the impetus user and drops root before Lua and the
workers (network) start. Checked: every uid and gid of every thread
(/proc/PID/task/*/status), the paniclog line, owner and mode of the spool
tree, queue files (0600), logs (0640 at most) and the control socket (0600),
that a Lua script's top level already runs as impetus, and that mail still
flows to impetus-sink over TLS with a client certificate and key only root
can read (read before the drop). Then the refusals: the default user missing (an
/etc/passwd without it, bind-mounted in a private mount namespace) is a
start-up error unless User = "root" is explicit; an explicit unknown User
is an error. Needs root and the impetus user (tools/setup.sh): else SKIP.
usage: test_priv.py IMPETUS SINK INJECT"""
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "engine"))
from enginelib import Engine, sinklib  # noqa: E402

imp, sinkbin, injectbin = sys.argv[1], sys.argv[2], sys.argv[3]
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


def ids(status, key):
    return [int(x) for x in [l.split()[1:] for l in status.splitlines() if l.startswith(key)][0]]


# The Lua script's top level writes the uid it runs with: scripts must be
# loaded after the drop.
LUA = """
local p = io.open("/proc/self/status")
local s = p:read("*a")
p:close()
local out = io.open(%r, "w")
out:write(s:match("Uid:%%s+(%%d+)"))
out:close()
msys.registerModule("whoami", {})
"""

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
scert, skey, scertdir = sinklib.certs(ROOT)
sink = sinklib.Sink(sinkbin, ["--cert", scert, "--key", skey])
# A client certificate and key that only root can read (a 0700 root
# directory outside the spool and logs): the engine reads them before it
# leaves root, so TLS still works as impetus.
keydir = tempfile.mkdtemp(prefix="privkey.")
subprocess.run([os.path.join(ROOT, "tools", "mkcert.sh"), keydir], check=True,
               stdout=subprocess.DEVNULL)
for n in os.listdir(keydir):
    os.chmod(os.path.join(keydir, n), 0o600)
ccert, ckey = os.path.join(keydir, "cert.pem"), os.path.join(keydir, "key.pem")
# mail to hold.test stays queued, so its spool files can be checked
e = Engine(imp, 'Worker_Threads = 1\nTLS = "required"\nTLS_Verify = "no"\n'
           'TLS_Certificate = "%s"\nTLS_Key = "%s"\nGateway = "127.0.0.1:%d"\n'
           'Domain "hold.test" { Suspend_Delivery = true }\n' % (ccert, ckey, sink.port), "priv")
# the control socket outside the spool, in the (impetus-named) temp dir
sock = os.path.join(e.dir, "ctl.sock")
uidfile = os.path.join(e.dir, "lua-uid")
script = os.path.join(e.dir, "whoami.lua")
with open(script, "w") as f:
    f.write(LUA % uidfile)
with open(e.conf, "a") as f:
    f.write('control_listener { listen "%s" { } }\n' % sock)
    # full Lua: the probe reads /proc and writes a file (docs/lua.md)
    f.write('scriptlet "scriptlet" { sandbox = false script "whoami" { source = "%s" } }\n'
            % script[:-4])
# drop enginelib's "stay root" lines: no User, no Group = the defaults
with open(e.conf) as f:
    body = f.read()
expect('User = "root"\nGroup = "root"\n' in body, "enginelib's User/Group lines moved")
with open(e.conf, "w") as f:
    f.write(body.replace('User = "root"\nGroup = "root"\n', ''))
os.chmod(e.dir, 0o755)  # mkdtemp's 0700 would hide the spool from impetus
nsdir = None
try:
    e.start()
    pid = e.proc.pid
    status = open("/proc/%d/status" % pid).read()
    print("uids", ids(status, "Uid:"), "gids", ids(status, "Gid:"), "groups", ids(status, "Groups:"))
    expect(all(u == pw.pw_uid for u in ids(status, "Uid:")), "real/effective/saved/fs uid")
    expect(all(g == pw.pw_gid for g in ids(status, "Gid:")), "gids")
    # the user's own groups only (impetus-submit when it is a member: docs/security.md)
    expect(set(ids(status, "Groups:")) <= set(os.getgrouplist(pw.pw_name, pw.pw_gid)) | {pw.pw_gid},
           "supplementary groups")
    for tid in os.listdir("/proc/%d/task" % pid):  # every thread, not just the main one
        st = open("/proc/%d/task/%s/status" % (pid, tid)).read()
        expect(all(u == pw.pw_uid for u in ids(st, "Uid:")), "thread %s uids" % tid)
        expect(all(g == pw.pw_gid for g in ids(st, "Gid:")), "thread %s gids" % tid)
    expect("running as user impetus, group impetus" in e.read(e.paniclog),
           "paniclog says who we run as:\n" + e.read(e.paniclog))
    expect(e.read(uidfile).strip() == str(pw.pw_uid),
           "the Lua script's top level ran as uid %r" % e.read(uidfile))
    # non-dumpable after the drop (no core dump with passwords): the kernel
    # then gives the process's /proc files to root
    expect(os.stat("/proc/%d/status" % pid).st_uid == 0, "process is not dumpable")
    # the producer, root here, is impetus-inject: it hands its pickup
    # files (0600) to the pickup directory's owner, impetus
    def inject(rcpts):
        r = subprocess.run([injectbin, "-f", "a@x.test", "--spool", e.spool] + rcpts,
                           input="Subject: priv\n\nhello\n", capture_output=True, text=True,
                           timeout=20)
        expect(r.returncode == 0, "impetus-inject: %r" % r.stderr)
    for i in range(5):
        inject(["r%d@y.test" % i])
    e.wait_for(lambda: len(e.records("D")) == 5, 20, "5 deliveries")
    for i in range(3):
        inject(["held%d@hold.test" % i])
    e.wait_for(lambda: len(e.records("R")) == 8, 20, "3 more messages received")
    got = sink.summary_now()
    print("sink summary: tls_handshakes %s" % got.get("tls_handshakes"))
    expect(got.get("tls_handshakes", 0) >= 1, "mail went over TLS")
    expect("cannot set up TLS" not in e.read(e.paniclog) and "cannot read" not in e.read(e.paniclog),
           "the root-only client key was read before the drop:\n" + e.read(e.paniclog))
    expect(os.stat(ckey).st_uid == 0, "the key stays root's")
    # files made after the drop, and the ones from before it
    nfiles = 0
    for root, dirs, files in os.walk(e.spool):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            expect(st.st_uid == pw.pw_uid and st.st_gid == pw.pw_gid,
                   "%s owned by %d:%d" % (p, st.st_uid, st.st_gid))
            if stat.S_ISREG(st.st_mode):
                nfiles += 1 if "queue" in p else 0
                expect(stat.S_IMODE(st.st_mode) & 0o077 == 0, "%s mode %o" % (p, st.st_mode))
    # (the held messages live in journal segments and/or per-message files)
    expect(nfiles >= 1, "queue files of the held messages: %d" % nfiles)
    st = os.stat(e.spool)
    expect(st.st_uid == pw.pw_uid and stat.S_IMODE(st.st_mode) & 0o002 == 0,
           "spool dir uid %d mode %o" % (st.st_uid, stat.S_IMODE(st.st_mode)))
    for log in (e.mainlog, e.paniclog, e.jsonlog, e.bouncelog):
        if os.path.exists(log):
            st = os.stat(log)
            expect(st.st_uid == pw.pw_uid, "%s owned by uid %d" % (log, st.st_uid))
            expect(stat.S_IMODE(st.st_mode) & 0o137 == 0, "%s mode %o (0640 at most)"
                   % (log, stat.S_IMODE(st.st_mode)))
    st = os.stat(os.path.dirname(e.mainlog))
    expect(st.st_uid == pw.pw_uid, "log directory owned by uid %d" % st.st_uid)
    st = os.stat(sock)
    expect(stat.S_ISSOCK(st.st_mode) and st.st_uid == pw.pw_uid
           and stat.S_IMODE(st.st_mode) == 0o600,
           "control socket uid %d mode %o" % (st.st_uid, stat.S_IMODE(st.st_mode)))
    expect(e.stop() == 0, "exit status")
    expect(not os.path.exists(sock), "the engine (as impetus) removed its socket on exit")

    # The default user missing: an /etc/passwd and /etc/group without
    # impetus, bind-mounted in a private mount namespace.
    nsdir = tempfile.mkdtemp(prefix="priv-ns.")
    for name in ("passwd", "group"):
        with open("/etc/" + name) as src, open(os.path.join(nsdir, name), "w") as dst:
            dst.writelines(l for l in src if not l.startswith("impetus:"))

    def run_without_impetus(conf):
        sh = ('mount --bind %s/passwd /etc/passwd && mount --bind %s/group /etc/group && '
              'exec "$0" -c "$1"' % (nsdir, nsdir))
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", sh,
                               imp, conf], capture_output=True, text=True, timeout=20)
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount --bind %s/passwd /etc/passwd && ! getent passwd impetus" % nsdir],
                           capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        print("note: no private mount namespace here (%s); default-user refusal not checked"
              % probe.stderr.strip())
    else:
        r = run_without_impetus(e.conf)
        print("without the impetus user:", r.returncode, r.stderr.strip())
        expect(r.returncode == 1 and 'the user "impetus" does not exist' in r.stderr
               and 'User = "root"' in r.stderr, "refusal: rc %d, %r" % (r.returncode, r.stderr))
        # User = "root" given explicitly: runs as root, and says so
        root_conf = os.path.join(e.dir, "root.conf")
        with open(e.conf) as f, open(root_conf, "w") as g:
            g.write(f.read() + 'User = "root"\n')
        p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              'mount --bind %s/passwd /etc/passwd && mount --bind %s/group /etc/group'
                              ' && exec "$0" -c "$1"' % (nsdir, nsdir), imp, root_conf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        e.proc = p
        e.wait_for(lambda: e.read(e.paniclog).count("started") >= 2, 10, "engine start as root")
        st = open("/proc/%d/status" % p.pid).read()
        expect(ids(st, "Uid:")[1] == 0, "User = \"root\": still root")
        expect('running as root (User = "root")' in e.read(e.paniclog), "paniclog: running as root")
        expect(e.stop() == 0, "exit status as root")
    # an explicit User that does not exist is a start-up error with a clear line
    with open(e.conf, "a") as f:
        f.write('User = "no-such-user-impetus"\n')
    r = subprocess.run([imp, "-c", e.conf], capture_output=True, text=True, timeout=20)
    expect(r.returncode != 0 and "no-such-user-impetus" in r.stderr and "no such user" in r.stderr,
           "missing User: rc %d, %r" % (r.returncode, r.stderr))
    print("ok: dropped to uid %d gid %d by default; %d queue files, logs and socket owned by impetus"
          % (pw.pw_uid, pw.pw_gid, nfiles))
finally:
    e.cleanup()
    shutil.rmtree(keydir, ignore_errors=True)
    shutil.rmtree(scertdir, ignore_errors=True)
    if nsdir:
        shutil.rmtree(nsdir, ignore_errors=True)
    if sink.proc.poll() is None:
        sink.stop()
    sink.cleanup()
