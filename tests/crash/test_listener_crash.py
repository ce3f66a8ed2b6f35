#!/usr/bin/env python3
"""Crash test of the ESMTP listener (issue 21): client sessions inject
messages over SMTP, each with its own Message-ID, and record the ones that
got 250 after the end of data. The engine is SIGKILLed K times at random
moments during injection and restarted. At the end every acknowledged
Message-ID must have reached impetus-sink (lost = 0); a message may arrive
twice only when the kill fell between its durability and its 250 (the
client did not see the 250 and sent it again) or when delivery was cut
between the sink's 250 and the engine's record: duplicates are counted and
printed, not failed.
usage: test_listener_crash.py IMPETUS SINK [--kills K] [--sessions S] [--seed N]"""
import argparse
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "engine"))
from enginelib import Engine, sinklib  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("impetus")
ap.add_argument("sink")
ap.add_argument("--kills", type=int, default=5)
ap.add_argument("--sessions", type=int, default=4)
ap.add_argument("--seed", type=int, default=int(time.time()))
args = ap.parse_args()
rnd = random.Random(args.seed)
print("seed %d: %d kills, %d sessions" % (args.seed, args.kills, args.sessions), flush=True)

lock = threading.Lock()
acked = set()
sent = 0
stop = threading.Event()


from testlib import free_port  # noqa: E402  (tests/integration/testlib.py)


def client(idx, port):
    global sent
    seq = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("crash.test")
                while not stop.is_set():
                    seq += 1
                    mid = "<c%d-%d@crash.test>" % (idx, seq)
                    body = ("From: s@crash.test\r\nTo: r@crash.test\r\nMessage-ID: %s\r\n"
                            "Subject: crash\r\n\r\n%s\r\n" % (mid, "x" * 600))
                    with lock:
                        sent += 1
                    c.sendmail("s@crash.test", ["r%d@crash.test" % idx], body)
                    with lock:  # 250 after the end of data: the engine owns it
                        acked.add(mid)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)  # the engine is down: try again


rc = 1
sinkdir = tempfile.mkdtemp(prefix="lsn-crash-sink.")
sink = sinklib.Sink(args.sink, ["--save-dir", sinkdir])
port = free_port()
conf = ('Worker_Threads = 2\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
        'ESMTP_Listener { Relay_Hosts = ( "127.0.0.1" ) Listen "127.0.0.1:%d" { } }\n'
        % (sink.port, port))
e = Engine(args.impetus, conf, "lsncrash")


def start_engine():
    e.err = open(os.path.join(e.dir, "stderr"), "a")
    e.proc = subprocess.Popen([e.impetus, "-c", e.conf], stdout=e.err, stderr=e.err)


def delivered():
    ids = {}
    for f in os.listdir(sinkdir):
        if f.endswith(".eml"):
            with open(os.path.join(sinkdir, f), "rb") as fh:
                m = re.search(rb"^Message-ID: (<[^>]+>)", fh.read(4096), re.M | re.I)
            if m:
                k = m.group(1).decode()
                ids[k] = ids.get(k, 0) + 1
    return ids


def wait_acks(n, deadline=120):
    """Until n more messages got their 250 (bounded)."""
    with lock:
        want = len(acked) + n
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with lock:
            if len(acked) >= want:
                return
        time.sleep(0.02)
    print("note: only %d of %d acknowledgements within %d s" % (len(acked), want, deadline))


threads = []
try:
    start_engine()
    threads = [threading.Thread(target=client, args=(i, port), daemon=True)
               for i in range(args.sessions)]
    for t in threads:
        t.start()
    for k in range(args.kills):
        # kill during injection: after a random number of new 250s since
        # the (re)start (a count, not a time: the machine may be slow)
        wait_acks(rnd.randint(20, 400))
        e.proc.send_signal(signal.SIGKILL)
        e.proc.wait()
        e.err.close()
        # a random downtime: the clients meet a dead listener and retry
        # (the window itself is what is tested, not a wait for something)
        time.sleep(rnd.uniform(0.0, 0.3))
        start_engine()
    wait_acks(50)  # the last engine accepts mail before the stop
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with lock:
        want = set(acked)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        got = delivered()
        if want <= set(got):
            break
        time.sleep(0.5)
    got = delivered()
    lost = sorted(want - set(got))
    dups = sum(n - 1 for n in got.values() if n > 1)
    print("sent %d, acknowledged %d, delivered %d distinct, lost %d, duplicates %d, kills %d"
          % (sent, len(want), len(got), len(lost), dups, args.kills), flush=True)
    if lost:
        print("lost (first 10): %s" % lost[:10])
    if not want:
        print("FAIL: nothing was acknowledged")
    rc = 0 if not lost and want else 1
finally:
    stop.set()
    if e.proc is not None:
        e.proc.kill()
        e.proc.wait()
    e.cleanup()
    sink.stop()
    sink.cleanup()
    shutil.rmtree(sinkdir, ignore_errors=True)
sys.exit(rc)
