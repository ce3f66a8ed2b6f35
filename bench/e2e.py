#!/usr/bin/env python3
"""End-to-end delivery benchmark (issue 6): N x 1 KB messages dropped into
pickup/ all at once, drained by impetus into impetus-sink over loopback,
durable (Spool_Sync = batch). Prints messages/s, engine CPU per message
(utime+stime of the impetus process from /proc), and peak RSS (VmHWM).

usage: bench/e2e.py BUILD_DIR [--messages N] [--workers N] [--rcpts N] [--domains N]
       [--sync batch|always|none] [--keep-dicts]
Run it once or twice; the machine is shared."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid, which=(11, 12)):
    """utime (11) + stime (12) of pid, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in which) / TICK


def hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def count_d(path, state):
    """Count D records appended since the last call (incremental read)."""
    try:
        with open(path, "rb") as f:
            f.seek(state["off"])
            data = f.read()
    except FileNotFoundError:
        return state["n"]
    cut = data.rfind(b"\n") + 1
    state["off"] += cut
    state["n"] += data[:cut].count(b"@D@")
    return state["n"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rcpts", type=int, default=1)
    ap.add_argument("--sync", default="batch")
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--keep-dicts", action="store_true")
    a = ap.parse_args()
    impetus = os.path.join(a.build, "src/main/impetus")
    sinkbin = os.path.join(a.build, "tools/sink/impetus-sink")
    d = tempfile.mkdtemp(prefix="impetus-bench.")
    try:
        spool = os.path.join(d, "spool")
        stage = os.path.join(spool, "stage")
        os.makedirs(os.path.join(spool, "pickup"))
        os.makedirs(stage)
        ready = os.path.join(d, "ready")
        sink = subprocess.Popen([sinkbin, "--listen", "127.0.0.1:0", "--ready-file", ready],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        port = [l.split()[1].rsplit(":", 1)[1] for l in open(ready) if l.startswith("plain")][0]
        mainlog = os.path.join(d, "mainlog.ec")
        conf = os.path.join(d, "impetus.conf")
        with open(conf, "w") as f:
            f.write('User = "root"\nGroup = "root"\n')  # stay root: 0700 temp dirs
            f.write('Spoolbase = "%s"\nSpool_Sync = "%s"\nWorker_Threads = %d\nTLS = "no"\n'
                    'Gateway = "127.0.0.1:%s"\nKeep_Message_Dicts_In_Memory = %s\n'
                    'ec_logger { mainlog = "%s" paniclog = "%s/paniclog.ec" }\n'
                    % (spool, a.sync, a.workers, port, "true" if a.keep_dicts else "false",
                       mainlog, d))
        body = "Subject: bench\n\n" + ("x" * 70 + "\n") * 13  # ~1 KB
        for i in range(a.messages):
            with open(os.path.join(stage, "m%06d" % i), "w") as f:
                f.write("x-sender: <bench@sender.test>\n")
                for r in range(a.rcpts):
                    f.write("x-receiver: <u%d.%d@dest%d.test>\n" % (i, r, i % a.domains))
                f.write(body)
        imp = subprocess.Popen([impetus, "-c", conf], stdout=subprocess.DEVNULL,
                               stderr=open(os.environ.get("IMPETUS_STDERR", os.devnull), "w"))
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(d, "paniclog.ec")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        c0 = cpu_s(imp.pid)
        u0 = cpu_s(imp.pid, (11,))
        s0 = cpu_s(sink.pid)
        t0 = time.monotonic()
        for name in sorted(os.listdir(stage)):
            os.rename(os.path.join(stage, name), os.path.join(spool, "pickup", name))
        want = a.messages * a.rcpts
        st = {"off": 0, "n": 0}
        deadline = time.monotonic() + 600
        while count_d(mainlog, st) < want:
            if time.monotonic() > deadline or imp.poll() is not None:
                print("FAILED: %d of %d delivered" % (st["n"], want))
                break
            time.sleep(0.02)
        t1 = time.monotonic()
        c1 = cpu_s(imp.pid)
        u1 = cpu_s(imp.pid, (11,))
        s1 = cpu_s(sink.pid)
        hwm = hwm_kb(imp.pid)
        imp.send_signal(signal.SIGTERM)
        imp.wait(timeout=30)
        sink.send_signal(signal.SIGTERM)
        summary = json.loads(sink.communicate(timeout=10)[0])
        el = t1 - t0
        print("messages=%d rcpts/msg=%d domains=%d workers=%d sync=%s keep_dicts=%s"
              % (a.messages, a.rcpts, a.domains, a.workers, a.sync, a.keep_dicts))
        print("delivered=%d elapsed=%.2f s  rate=%.0f msg/s" % (st["n"], el, a.messages / el))
        print("engine CPU=%.2f s  = %.1f us/msg  (%.3f s per 1000 msgs)"
              % (c1 - c0, (c1 - c0) / a.messages * 1e6, (c1 - c0) / a.messages * 1000))
        print("  of which user=%.1f us/msg, kernel=%.1f us/msg"
              % ((u1 - u0) / a.messages * 1e6, ((c1 - c0) - (u1 - u0)) / a.messages * 1e6))
        print("engine peak RSS=%.1f MB" % (hwm / 1024))
        print("sink: messages=%d connections=%d max_concurrent=%d CPU=%.2f s"
              % (summary["messages"], summary["connections"], summary["max_concurrent_connections"],
                 s1 - s0))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
