#!/usr/bin/env python3
"""Crash harness (issue 10): N messages are injected into impetus's pickup
directory and drained to impetus-sink with transient-failure injection on
(4xx on RCPT and after the dot, short Retry_Interval). The engine is
SIGKILLed K times at random moments -- while it ingests, while sessions are
running, while retry state is being written -- and restarted each time.
At the end it is run to completion and the sink's jsonl records and the
mainlog must show:
  - every message delivered at least once (lost = 0);
  - duplicates <= the transactions in flight at each kill (bounded by
    Max_Outbound_Connections x Pipeline_Depth per kill: with BDAT a session
    keeps up to Pipeline_Depth whole transactions in flight, and a message
    the sink accepted whose reply died with the engine is sent again), each
    repeat charged to the first kill after the recipient's previous delivery;
  - the spool empty (queue/ and pickup/), nothing in bad/ (no message
    injected here is bad);
  - every D record in the mainlog is a message the sink accepted, and no
    P record (only 4xx are injected). Recipients without a D are counted:
    log lines not yet written by the logger thread die with the process.
It prints one line of figures: messages, kills, lost, duplicates.

usage: crash_harness.py IMPETUS SINK [--messages N] [--kills K] [--seed S]
                        [--conns C] [--depth D] [--keep]
By hand: crash_harness.py build/src/main/impetus build/tools/sink/impetus-sink
         --messages 20000 --kills 50"""
import argparse
import bisect
import json
import os
import random
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "engine"))
from enginelib import Engine, sinklib  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("impetus")
ap.add_argument("sink")
ap.add_argument("--messages", type=int, default=600)
ap.add_argument("--kills", type=int, default=12)
ap.add_argument("--seed", type=int, default=int(os.environ.get("CRASH_SEED", time.time())))
ap.add_argument("--conns", type=int, default=4, help="Max_Outbound_Connections")
ap.add_argument("--depth", type=int, default=8, help="Pipeline_Depth (BDAT transactions in flight per session)")
ap.add_argument("--workers", type=int, default=2)
ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
ap.add_argument("--drain-timeout", type=float, default=120)
args = ap.parse_args()
rnd = random.Random(args.seed)
print("seed %d: %d messages, %d kills, %d connections, %d workers"
      % (args.seed, args.messages, args.kills, args.conns, args.workers), flush=True)

jsonl_dir = None
sink = None
e = None


def sink_records():
    out = []
    try:
        with open(os.path.join(jsonl_dir, "msgs.jsonl")) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written right now
    except FileNotFoundError:
        pass
    return out


def delivered_counts():
    c = {}
    for m in sink_records():
        for r in m["rcpts"]:
            c[r] = c.get(r, 0) + 1
    return c


def files_under(d):
    n = 0
    for _root, _dirs, files in os.walk(d):
        n += len(files)
    return n


def kill(phase):
    """SIGKILL by PID (phase is for the report only)."""
    e.proc.send_signal(signal.SIGKILL)
    e.proc.wait()
    e.proc = None
    e.err.close()


def start_engine():
    # no wait for "started": some kills land during recovery and ingest
    e.err = open(os.path.join(e.dir, "stderr"), "a")
    e.proc = subprocess.Popen([e.impetus, "-c", e.conf], stdout=e.err, stderr=e.err)


def rcpt(i):
    return "r%d@crash.test" % i


rc = 1
try:
    import tempfile
    jsonl_dir = tempfile.mkdtemp(prefix="crash-sink.")
    sink = sinklib.Sink(args.sink, ["--jsonl", os.path.join(jsonl_dir, "msgs.jsonl"),
                                    "--fail", "RCPT=4xx:0.2", "--fail", "DOT=4xx:0.1",
                                    "--seed", str(args.seed & 0x7fffffff)])
    conf = ('Worker_Threads = %d\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
            'Retry_Interval = 1\nMax_Retry_Interval = 1\nMax_Outbound_Connections = %d\n'
            'Message_Expiration = 3600\nPipeline_Depth = %d\n'
            % (args.workers, sink.port, args.conns, args.depth))
    e = Engine(args.impetus, conf, "crash")
    n = args.messages
    injected = 0
    phases = ["ingest", "session", "retry"]
    kills = []
    marks = []  # sink records seen when each kill landed
    for k in range(args.kills):
        phase = phases[k % 3] if k < 3 else rnd.choice(phases)
        # inject this round's share (the rest after the last kill)
        share = n * (k + 1) // (args.kills + 1) - injected
        start_engine()
        if phase == "ingest":
            # producers keep writing while the engine claims: kill mid-stream
            stop_at = injected + share
            cut = injected + rnd.randint(share // 3, max(share // 3, share - 1)) if share else injected
            while injected < stop_at:
                e.inject("s@sender.test", [rcpt(injected)], body="Subject: %d\n\nm%d\n" % (injected, injected))
                injected += 1
                if injected == cut:
                    time.sleep(rnd.uniform(0, 0.05))
                    break
        else:
            for _ in range(share):
                e.inject("s@sender.test", [rcpt(injected)], body="Subject: %d\n\nm%d\n" % (injected, injected))
                injected += 1
            before = len(sink_records())
            deadline = time.monotonic() + 10
            if phase == "session":
                # some mail has reached the sink in this life: sessions are busy
                want = before + rnd.randint(1, max(1, share // 2))
                while len(sink_records()) < want and time.monotonic() < deadline:
                    time.sleep(0.005)
            else:
                # a T record was written in this life: retry state is being written
                t0 = len(e.records("T"))
                want = t0 + rnd.randint(1, 5)
                while len(e.records("T")) < want and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rnd.uniform(0, 0.02))
        if e.proc.poll() is not None:
            raise RuntimeError("impetus exited on its own (%d):\n%s"
                               % (e.proc.returncode, e.read(e.err.name)))
        kill(phase)
        kills.append(phase)
        # the sink may still be reading what the dead engine sent (a body
        # whose 250 the engine never saw): let its record count settle
        # (unchanged for 0.2 s, at most 3 s) before marking the kill
        seen, t_settle = len(sink_records()), time.monotonic()
        t_give_up = t_settle + 3
        while time.monotonic() - t_settle < 0.2 and time.monotonic() < t_give_up:
            time.sleep(0.02)
            now_seen = len(sink_records())
            if now_seen != seen:
                seen, t_settle = now_seen, time.monotonic()
        marks.append(seen)
    # the rest, then run to completion
    start_engine()
    while injected < n:
        e.inject("s@sender.test", [rcpt(injected)], body="Subject: %d\n\nm%d\n" % (injected, injected))
        injected += 1
    want = {rcpt(i) for i in range(n)}
    t_end = time.monotonic() + args.drain_timeout

    def drained():
        got = delivered_counts()
        return (want <= set(got) and files_under(os.path.join(e.spool, "queue")) == 0
                and files_under(e.pickup) == 0)
    while not drained():
        if time.monotonic() > t_end:
            break
        if e.proc.poll() is not None:
            raise RuntimeError("impetus exited on its own (%d):\n%s"
                               % (e.proc.returncode, e.read(e.err.name)))
        time.sleep(0.1)
    st = e.stop()
    got = delivered_counts()
    lost = sorted(want - set(got), key=lambda r: int(r[1:].split("@")[0]))
    dups = sum(c - 1 for c in got.values())
    # each repeat is charged to the first kill after the recipient's
    # previous delivery (the kill that kept that delivery from being recorded)
    last, per_kill = {}, [0] * (len(marks) + 1)
    for i, m in enumerate(sink_records()):
        for r in m["rcpts"]:
            if r in last:
                k = bisect.bisect_right(marks, last[r])
                per_kill[min(k, len(marks))] += 1
            last[r] = i
    worst = max(per_kill[:len(marks)] or [0])
    unknown = set(got) - want
    per_kill_bound = args.conns * args.depth  # transactions in flight at most
    bound = len(kills) * per_kill_bound
    queue_left = files_under(os.path.join(e.spool, "queue"))
    pickup_left = files_under(e.pickup)
    bad_left = files_under(os.path.join(e.spool, "bad"))
    # the mainlog: every recipient has a D record (join R on msgid)
    rmap = {f[1]: "%s@%s" % (f[5], f[6]) for f in e.records("R")}
    dlog = {}
    for f in e.records("D"):
        if f[1] in rmap:
            dlog[rmap[f[1]]] = dlog.get(rmap[f[1]], 0) + 1
    no_d = want - set(dlog)
    pfail = len(e.records("P"))
    print("messages %d, kills %d (%s), lost %d, duplicates %d (bound %d; at most %d for one "
          "kill, %d after the last), "
          "mainlog D %d (recipients without D: %d), P %d, T %d, left: queue %d pickup %d bad %d"
          % (n, len(kills), ",".join(kills), len(lost), dups, bound, worst, per_kill[-1],
             sum(dlog.values()),
             len(no_d), pfail, len(e.records("T")), queue_left, pickup_left, bad_left), flush=True)
    problems = []
    if lost:
        problems.append("lost %d: %s" % (len(lost), lost[:10]))
    if unknown:
        problems.append("unknown recipients at the sink: %s" % sorted(unknown)[:5])
    if dups > bound:
        problems.append("duplicates %d > %d (transactions in flight at the kills)" % (dups, bound))
    if worst > per_kill_bound:
        problems.append("%d duplicates from one kill > %d transactions in flight (per kill: %s)"
                        % (worst, per_kill_bound, per_kill))
    if queue_left or pickup_left:
        problems.append("spool not empty: queue %d pickup %d" % (queue_left, pickup_left))
    if bad_left:
        problems.append("%d files in bad/ (nothing injected was bad)" % bad_left)
    # A D record must mean the sink has the message. (The reverse is not
    # required: log lines still queued for the logger thread die with a
    # SIGKILL, after the spool commit; counted as "without D".)
    d_not_at_sink = set(dlog) - set(got)
    if d_not_at_sink:
        problems.append("%d recipients logged D but never accepted by the sink: %s"
                        % (len(d_not_at_sink), sorted(d_not_at_sink)[:5]))
    if pfail:
        problems.append("%d P records (only transient failures were injected)" % pfail)
    if st != 0:
        problems.append("exit status %d after SIGTERM" % st)
    if problems:
        print("FAIL:\n  " + "\n  ".join(problems))
        if not args.keep:
            print("(rerun with --keep --seed %d to inspect)" % args.seed)
    else:
        rc = 0
finally:
    if e is not None:
        if args.keep and rc != 0:
            print("kept: engine dir %s, sink jsonl %s" % (e.dir, jsonl_dir))
        else:
            e.cleanup()
    if sink is not None:
        if sink.proc.poll() is None:
            sink.stop()
        sink.cleanup()
    if jsonl_dir and not (args.keep and rc != 0):
        import shutil
        shutil.rmtree(jsonl_dir, ignore_errors=True)
sys.exit(rc)
