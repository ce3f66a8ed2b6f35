#!/usr/bin/env python3
"""source_vs_sinks.py BUILD [JSONL]: impetus-sink against Postfix's smtp-sink
with Postfix's smtp-source as the client (issue 25): one command per round
trip, no pipelining, SESSIONS reused connections (-d), 1 KB messages. The two
sinks run side by side and are measured alternately, RUNS rounds, so both
see the same load. Per run: the sink's CPU per message (/proc/PID/stat) and,
with perf, its system calls, io_uring submissions (SQEs) and context
switches per message (perf stat -p on the sink during the run). Prints one
line per run and a summary (medians, ratio); JSONL gets one object per sink.
Environment: MSGS (20000), SESSIONS (50), SIZE (1024), RUNS (5)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")
EVENTS = "raw_syscalls:sys_enter,io_uring:io_uring_submit_req,context-switches"
NAMES = {"raw_syscalls:sys_enter": "syscalls", "io_uring:io_uring_submit_req": "sqes",
         "context-switches": "switches"}


def cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / TICK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    for _ in range(200):
        s = socket.socket()
        try:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        finally:
            s.close()
        time.sleep(0.05)
    sys.exit("source_vs_sinks: port %d never opened" % port)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    out = sys.argv[2] if len(sys.argv) > 2 else None
    msgs = int(os.environ.get("MSGS", 20000))
    sess = int(os.environ.get("SESSIONS", 50))
    size = int(os.environ.get("SIZE", 1024))
    runs = int(os.environ.get("RUNS", 5))
    src = "/usr/sbin/smtp-source"
    if not (os.access(src, os.X_OK) and os.access("/usr/sbin/smtp-sink", os.X_OK)):
        sys.exit("source_vs_sinks: needs postfix's smtp-source and smtp-sink (tools/setup.sh)")
    tmp = tempfile.mkdtemp(prefix="impetus-sinks.")
    procs = {}
    try:
        pp, pi = free_port(), free_port()
        procs["smtp-sink"] = subprocess.Popen(
            ["/usr/sbin/smtp-sink"] + (["-u", "nobody"] if os.getuid() == 0 else [])
            + ["127.0.0.1:%d" % pp, "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs["impetus-sink"] = subprocess.Popen(
            [os.path.join(build, "tools/sink/impetus-sink"), "--listen", "127.0.0.1:%d" % pi],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ports = {"smtp-sink": pp, "impetus-sink": pi}
        for p in ports.values():
            wait_port(p)
        res = {k: [] for k in ports}
        perf = shutil.which("perf")
        for i in range(runs):
            for name in ("smtp-sink", "impetus-sink"):  # alternate: the same load for both
                pid = procs[name].pid
                st = os.path.join(tmp, "stat")
                ps = None
                if perf:
                    ps = subprocess.Popen([perf, "stat", "-x", ",", "-e", EVENTS, "-p", str(pid), "-o", st],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                c0, t0 = cpu(pid), time.monotonic()
                subprocess.run([src, "-d", "-s", str(sess), "-m", str(msgs), "-l", str(size),
                                "-f", "a@bench.test", "-t", "b@bench.test", "127.0.0.1:%d" % ports[name]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                t1, c1 = time.monotonic(), cpu(pid)
                r = {"sink": name, "run": i + 1, "msgs": msgs, "sessions": sess, "size": size,
                     "msgs_per_s": round(msgs / (t1 - t0), 1),
                     "sink_cpu_us_per_msg": round((c1 - c0) / msgs * 1e6, 1)}
                if ps:
                    ps.send_signal(signal.SIGINT)
                    ps.wait(timeout=30)
                    for line in open(st):
                        f = line.strip().split(",")
                        if len(f) > 2 and f[0].replace(".", "").isdigit():
                            r["%s_per_msg" % NAMES.get(f[2], f[2])] = round(float(f[0]) / msgs, 3)
                res[name].append(r)
                print("source_vs_sinks: run %d %-12s %8.0f msg/s, sink CPU %5.1f us/msg, %s" % (
                    i + 1, name, r["msgs_per_s"], r["sink_cpu_us_per_msg"],
                    ", ".join("%s %.2f/msg" % (k[:-8], v) for k, v in r.items() if k.endswith("s_per_msg")
                              and k not in ("msgs_per_s", "sink_cpu_us_per_msg"))), file=sys.stderr)
        med = lambda xs: sorted(xs)[len(xs) // 2]
        summary = []
        for name, rs in res.items():
            s = {"sink": name, "client": "smtp-source -d -s %d -m %d -l %d" % (sess, msgs, size),
                 "runs": len(rs), "runs_sink_cpu_us_per_msg": [r["sink_cpu_us_per_msg"] for r in rs],
                 "runs_msgs_per_s": [r["msgs_per_s"] for r in rs]}
            for k in rs[0]:
                if k.endswith("_per_msg") or k == "msgs_per_s":
                    s[k] = med([r[k] for r in rs])
            summary.append(s)
        a, b = summary
        ratio = a["sink_cpu_us_per_msg"] / b["sink_cpu_us_per_msg"] if b["sink_cpu_us_per_msg"] else 0
        for s in summary:
            s["smtp_sink_over_impetus_sink_cpu"] = round(ratio, 2)
        print("source_vs_sinks: medians of %d alternating runs: smtp-sink %.1f us/msg, impetus-sink %.1f "
              "us/msg of sink CPU: %.2fx (load %s)" % (runs, a["sink_cpu_us_per_msg"], b["sink_cpu_us_per_msg"],
                                                       ratio, open("/proc/loadavg").read().split()[0]))
        if out:
            with open(out, "w") as f:
                for s in summary:
                    f.write(json.dumps(s) + "\n")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
