"""Submission by non-root users (issue 20, Postfix's postdrop model;
docs/security.md). Needs root, useradd/groupadd and setpriv, else SKIP.

A copy of the built impetus-inject is made set-group-ID to a submit group;
the pickup directory is 1730 engine-user:submit-group. User A (not root, not
in any of these groups) submits while no engine runs: the queued file is
A's, group submit, 0640. User B can neither list pickup/, nor read, change
or remove A's file. Then the engine, started as root and dropping to its
user (a member of the submit group), claims the file and delivers it to
impetus-sink.

usage: test_submit.py IMPETUS IMPETUS_INJECT SINK"""
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
from enginelib import Engine, SKIP, sinklib  # noqa: E402

GROUP, ENG, A, B = "imptest-submit", "imptest-eng", "imptest-a", "imptest-b"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def as_user(user, argv, **kw):
    return subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--"] + argv,
                          capture_output=True, text=True, timeout=30, **kw)


def main():
    imp, inject, sinkbin = sys.argv[1:4]
    if os.geteuid() != 0:
        print("SKIP: needs root (users, groups, a set-group-ID program)")
        return SKIP
    if b"__asan_init" in open(inject, "rb").read():
        # LeakSanitizer cannot work in a set-group-ID (non-dumpable) process
        print("SKIP: an ASan build's impetus-inject cannot run set-group-ID")
        return SKIP
    for tool in ("useradd", "groupadd", "userdel", "groupdel", "setpriv"):
        if not shutil.which(tool):
            print("SKIP: %s not installed" % tool)
            return SKIP
    made_users, made_group = [], False
    sink = e = None
    d = tempfile.mkdtemp(prefix="impetus-submit.")
    try:
        try:
            grp.getgrnam(GROUP)
        except KeyError:
            subprocess.run(["groupadd", "--system", GROUP], check=True)
            made_group = True
        for u in (ENG, A, B):
            try:
                pwd.getpwnam(u)
            except KeyError:
                subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                                "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
                               + (["--groups", GROUP] if u == ENG else []) + [u], check=True)
                made_users.append(u)
        eng = pwd.getpwnam(ENG)
        gid = grp.getgrnam(GROUP).gr_gid
        check(gid in os.getgrouplist(ENG, eng.pw_gid), "%s is in %s" % (ENG, GROUP))
        os.chmod(d, 0o755)
        # the set-group-ID program, as the package installs it
        bindir = os.path.join(d, "bin")
        os.mkdir(bindir, 0o755)
        sg = os.path.join(bindir, "impetus-inject")
        shutil.copy(inject, sg)
        os.chown(sg, 0, gid)
        os.chmod(sg, 0o2755)
        sink = sinklib.Sink(sinkbin, ["--jsonl", os.path.join(d, "sink.jsonl")])
        e = Engine(imp, 'Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
                   'Generate_Bounces = false\n' % sink.port, "submit")
        # Engine() writes User = "root": this test runs the engine as its own user
        with open(e.conf) as f:
            text = f.read().replace('User = "root"\nGroup = "root"\n',
                                    'User = "%s"\nGroup = "%s"\n' % (ENG, ENG))
        with open(e.conf, "w") as f:
            f.write(text)
        os.chmod(e.dir, 0o755)
        os.chmod(e.conf, 0o644)
        os.chown(e.spool, eng.pw_uid, eng.pw_gid)
        os.chmod(e.spool, 0o711)   # others may pass through to pickup/, not list
        os.chown(e.pickup, eng.pw_uid, gid)
        os.chmod(e.pickup, 0o1730)  # the group writes, nobody lists, sticky
        msg = "From: a@example.org\nSubject: from a non-root user\n\nhello from A\n"
        r = as_user(A, [sg, "--spool", e.spool, "-f", "a@example.org", "rcpt@example.com"],
                    input=msg)
        check(r.returncode == 0, "user %s submits: exit %d %s" % (A, r.returncode, r.stderr))
        files = [f for f in os.listdir(e.pickup) if not f.startswith(".")]
        check(len(files) == 1, "one queued file: %s" % files)
        path = os.path.join(e.pickup, files[0])
        st = os.stat(path)
        check(st.st_uid == pwd.getpwnam(A).pw_uid and st.st_gid == gid,
              "owner %d:%d, want %s:%s" % (st.st_uid, st.st_gid, A, GROUP))
        check(st.st_mode & 0o777 == 0o640, "mode %o, want 640" % (st.st_mode & 0o777))
        # without the program, A cannot write there at all
        r = as_user(A, ["sh", "-c", "echo x > %s/direct" % e.pickup])
        check(r.returncode != 0, "user %s wrote into pickup/ directly" % A)
        # user B: no listing, no reading, no change, no removal
        for what, argv in [("list", ["ls", e.pickup]), ("read", ["cat", path]),
                           ("change", ["sh", "-c", "echo x >> %s" % path]),
                           ("remove", ["rm", "-f", path]),
                           ("rename", ["mv", path, path + ".b"])]:
            r = as_user(B, argv)
            check(r.returncode != 0, "user %s could %s A's queued file: %s" % (B, what, r.stdout))
        # B through the set-group-ID program: it writes its own file, never A's
        r = as_user(B, [sg, "--pickup", path, "-f", "b@example.org", "x@example.com"],
                    input="Subject: b\n\nb\n")
        check(r.returncode != 0, "B used impetus-inject on A's file as a directory")
        r = as_user(B, [sg, "-c", path, "-f", "b@example.org", "x@example.com"],
                    input="Subject: b\n\nb\n")
        check(r.returncode != 0 and "hello from A" not in r.stderr + r.stdout,
              "B read A's file through -c: %r" % r.stderr)
        check(os.path.exists(path) and open(path).read().endswith("hello from A\n"),
              "A's file is intact")
        # the engine (root, dropping to ENG, a member of GROUP) claims and delivers it
        e.start()
        e.wait_for(lambda: len(e.records("D")) == 1, 30, "delivery of A's message")
        check(not os.listdir(e.pickup), "pickup/ is empty")
        st = os.stat(e.pickup)
        check(st.st_gid == gid and st.st_mode & 0o7777 == 0o1730,
              "pickup/ keeps its group and mode after the engine's start: %d %o"
              % (st.st_gid, st.st_mode & 0o7777))
        got = open(os.path.join(d, "sink.jsonl")).read()
        check("rcpt@example.com" in got, "the sink got it: %s" % got[:300])
        check(e.stop() == 0, "engine exit status")
        print("ok")
        return 0
    finally:
        if e:
            e.cleanup()
        if sink:
            sink.cleanup()
        for u in made_users:
            subprocess.run(["userdel", u], capture_output=True)
        if made_group:
            subprocess.run(["groupdel", GROUP], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
