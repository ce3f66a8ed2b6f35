#!/usr/bin/env python3
"""A full spool disk under the ESMTP_Listener (issue 21): the spool lives on
a small tmpfs that a filler file fills; messages injected over SMTP then
get 452 4.3.1 (never 250); once space returns they get 250 again; and every
message that got 250 is delivered, exactly once, while none that got 452
is. Needs root (mount); exits 77 when tmpfs cannot be mounted.
usage: test_full_disk.py IMPETUS IMPETUS_SINK"""
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lsnlib import Client, check, enginelib, finish, free_port, sinklib, wait_port  # noqa: E402

imp, sinkbin = sys.argv[1], sys.argv[2]


def send(c, mid, size):
    """One message of about size bytes; the last reply."""
    return c.message("s@sender.test", "%s@rcpt.test" % mid, mid,
                     body=("y" * 99 + "\r\n") * (size // 101))[-1]


top = tempfile.mkdtemp(prefix="impetus-lsnfull-")
mnt = os.path.join(top, "mnt")
os.makedirs(mnt)
r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt],
                   capture_output=True, text=True)
if r.returncode != 0:
    shutil.rmtree(top, ignore_errors=True)
    print("SKIP: cannot mount tmpfs (%s)" % r.stderr.strip())
    sys.exit(77)

sinkdir = os.path.join(top, "sink")
os.makedirs(sinkdir)
gport = free_port()  # the Gateway: nothing listens there until the end
port = free_port()
conf = ('TLS = "no"\nGateway = "127.0.0.1:%d"\n'
        'Retry_Interval = 1\nMax_Retry_Interval = 1\n'
        'ESMTP_Listener {\n'
        '  Relay_Hosts = ( "127.0.0.1/32" )\n'
        '  Max_Errors_Per_Connection = 0\n'
        '  Listen "127.0.0.1:%d" { }\n'
        '}\n' % (gport, port))
e = enginelib.Engine(imp, conf, "lsnfull")
e.spool = os.path.join(mnt, "spool")
os.makedirs(os.path.join(e.spool, "pickup"))
with open(e.conf) as f:
    text = f.read()
with open(e.conf, "w") as f:  # the spool on the small file system
    f.write(text.replace('Spoolbase = "%s"' % os.path.join(e.dir, "spool"),
                         'Spoolbase = "%s"' % e.spool))
sink = None
filler = os.path.join(mnt, "filler")
try:
    e.start()
    check(wait_port(port), "listener accepts connections")
    c = Client(port)
    c.reply()
    c.cmd("EHLO full.test")
    codes = {}
    code, lines = send(c, "before", 2000)
    codes["before"] = code
    check(code == 250, "a message before the disk fills: %r" % lines)
    # fill the file system
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as ex:
        if ex.errno != errno.ENOSPC:
            raise
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as ex:
        if ex.errno != errno.ENOSPC:
            raise
    os.close(fd)
    full = []
    for i in range(30):
        mid = "full-%d" % i
        code, lines = send(c, mid, 20000)
        codes[mid] = code
        if code != 250:
            full.append((code, lines[-1] if lines else ""))
        check(code in (250, 452, 451), "%s: %d %r" % (mid, code, lines))
    check(any(cd == 452 and "4.3.1" in t for cd, t in full),
          "452 4.3.1 on a full disk: %r" % full[:3])
    os.unlink(filler)
    # space is back: accepted again (the spool retries every second)
    deadline = time.monotonic() + 30
    n = 0
    while time.monotonic() < deadline:
        mid = "after-%d" % n
        n += 1
        code, lines = send(c, mid, 2000)
        codes[mid] = code
        if code == 250:
            break
        time.sleep(0.5)
    check(code == 250, "accepted again once space returns: %r" % lines)
    c.cmd("QUIT")
    acked = sorted(k for k, v in codes.items() if v == 250)
    refused = sorted(k for k, v in codes.items() if v != 250)
    # now deliver: the sink on the Gateway's port
    sink = sinklib.Sink(sinkbin, ["--save-dir", sinkdir], extra_listen=["127.0.0.1:%d" % gport])

    def delivered():
        ids = {}
        for f in os.listdir(sinkdir):
            if f.endswith(".eml"):
                with open(os.path.join(sinkdir, f), "rb") as fh:
                    for line in fh.read(4096).split(b"\r\n"):
                        if line.lower().startswith(b"message-id: <"):
                            k = line[13:].split(b"@")[0].decode()
                            ids[k] = ids.get(k, 0) + 1
        return ids
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not set(acked) <= set(delivered()):
        time.sleep(0.5)
    got = delivered()
    lost = [k for k in acked if k not in got]
    check(not lost, "acknowledged but not delivered: %r" % lost)
    check(all(v == 1 for v in got.values()), "delivered more than once: %r" % got)
    check(not [k for k in refused if k in got], "refused but delivered: %r"
          % [k for k in refused if k in got])
    print("acknowledged %d, refused %d (%s), delivered %d"
          % (len(acked), len(refused), sorted(set(c for c, _ in full)), len(got)))
    check(e.stop() == 0, "engine stops cleanly")
finally:
    e.cleanup()
    if sink:
        sink.stop()
        sink.cleanup()
    subprocess.run(["umount", mnt])
    shutil.rmtree(top, ignore_errors=True)

finish()
