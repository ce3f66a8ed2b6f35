#!/usr/bin/env python3
"""Console latency with a large queue: impetus with Suspend_Delivery = true
(nothing leaves), N delivery units queued (FILES pickup files of RCPTS
recipients, each recipient in its own domain, so each is one unit), then the
time of each impetus-ctl command, median of 5, compared with the same
commands on an empty queue in the same run.

usage: bench/ops/console_latency.py BUILD_DIR [UNITS]   (default 200000)
Prints figures; never fails on speed."""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def timed(ctl, sock, args, n=5):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([ctl, "-s", sock, "--json"] + args, check=True, capture_output=True)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    build = sys.argv[1]
    units = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
    rcpts = 100
    files = units // rcpts
    imp = os.path.join(build, "src/main/impetus")
    ctl = os.path.join(build, "tools/ctl/impetus-ctl")
    d = tempfile.mkdtemp(prefix="bench-console.")
    proc = None
    try:
        spool = os.path.join(d, "spool")
        os.makedirs(os.path.join(spool, "pickup"))
        conf = os.path.join(d, "impetus.conf")
        with open(conf, "w") as f:
            f.write('User = "root"\n')  # stay root: 0700 temp dirs
            f.write('Spoolbase = "%s"\nWorker_Threads = 2\nSuspend_Delivery = true\n'
                    'Keep_Message_Dicts_In_Memory = true\n'
                    'ec_logger { mainlog = "%s/mainlog" paniclog = "%s/paniclog" }\n' % (spool, d, d))
        proc = subprocess.Popen([imp, "-c", conf], stderr=subprocess.DEVNULL)
        sock = os.path.join(spool, "impetus.sock")
        while not os.path.exists(sock):
            time.sleep(0.05)
        cmds = [["summary"], ["binding", "summary"], ["domain", "d7.test"], ["mailq"],
                ["mailq", "-p", "50"], ["mailq", "-d", "d7.test"]]
        empty = {" ".join(c): timed(ctl, sock, c) for c in cmds}
        t0 = time.time()
        for i in range(files):
            body = "".join("x-receiver: <r%d@d%d.test>\n" % (i, j) for j in range(rcpts))
            tmp = os.path.join(spool, ".w%d" % i)
            with open(tmp, "w") as f:
                f.write("x-sender: <s@example.org>\n" + body + "Subject: b\n\nx\n")
            os.rename(tmp, os.path.join(spool, "pickup", "m%d" % i))
        while True:
            s = json.loads(subprocess.run([ctl, "-s", sock, "--json", "summary"], check=True,
                                          capture_output=True).stdout)
            if s["total_queue"] >= units:
                break
            time.sleep(0.5)
        print("queued %d units (%d messages x %d domains) in %.1f s" % (s["total_queue"], files,
                                                                        rcpts, time.time() - t0))
        print("%-22s %12s %14s" % ("command", "empty (ms)", "%d units (ms)" % units))
        for c in cmds:
            k = " ".join(c)
            print("%-22s %12.1f %14.1f" % (k, empty[k] * 1000, timed(ctl, sock, c) * 1000))
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
