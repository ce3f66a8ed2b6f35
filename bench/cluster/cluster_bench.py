#!/usr/bin/env python3
"""cluster_bench: what cluster-wide limits cost one node (issue 23).

Runs bench/impetus-bench in alternating pairs on the same machine: A without
a cluster stanza, B with one (a redis-server started here on a free loopback
port) and Cluster_* limits that do not bind (Cluster_Outbound_Throttle_Messages
far above the rate, Cluster_Max_Outbound_Connections above the local limit).
Reports the median throughput of each, B/A, and Redis commands per delivered
message from Redis's INFO commandstats (everything the node sent: script
loads, heartbeats, lease renewals, token batches).

usage: bench/cluster/cluster_bench.py [--build DIR] [--count N] [--pairs P]
                                      [--workers N] [-- IMPETUS-BENCH ARGS...]
The machine is shared: read the figures as medians of alternating runs."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "cluster"))
from redislib import Redis  # noqa: E402

CLUSTER = ('cluster { redis = "%s" node_name = "bench" lease_ttl = 10 } '
           'Cluster_Outbound_Throttle_Messages = "10000000/1" '
           'Cluster_Max_Outbound_Connections = 100000')


def bench(a, extra, label):
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        cmd = [os.path.join(ROOT, "bench", "impetus-bench"), "--build", a.build, "--count",
               str(a.count), "--workers", str(a.workers), "--no-latency", "--fsync-run", "0",
               "--quiet", "--label", label, "--json", out.name] + a.rest
        if extra:
            cmd += ["--conf-extra", extra]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            sys.exit("impetus-bench failed:\n" + r.stdout)
        return json.loads(out.read().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    redis = Redis()
    rates = {"A": [], "B": []}
    cpu = {"A": [], "B": []}
    per_msg = []
    try:
        for i in range(a.pairs):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            for v in order:
                if v == "B":
                    redis.reset_stats()
                r = bench(a, CLUSTER % redis.url if v == "B" else "", "cluster-" + v)
                if v == "B":
                    stats = redis.commandstats()
                    n = sum(c for k, c in stats.items() if k not in ("info", "config|resetstat", "ping"))
                    per_msg.append(n / r["delivered"])
                rates[v].append(r["msgs_per_s"])
                cpu[v].append(r["cpu_us_per_msg"])
                print("pair %d %s: %.0f msg/s, %.1f us CPU/msg%s" % (
                    i + 1, v, r["msgs_per_s"], r["cpu_us_per_msg"],
                    ", %.4f Redis commands/msg" % per_msg[-1] if v == "B" else ""), flush=True)
    finally:
        redis.cleanup()
    ma, mb = statistics.median(rates["A"]), statistics.median(rates["B"])
    print("A (no cluster):             median %.0f msg/s, %.1f us CPU/msg  runs %s"
          % (ma, statistics.median(cpu["A"]), rates["A"]))
    print("B (cluster, not binding):   median %.0f msg/s, %.1f us CPU/msg  runs %s"
          % (mb, statistics.median(cpu["B"]), rates["B"]))
    print("B/A throughput: %.3f; Redis commands per delivered message: median %.4f (runs %s)"
          % (mb / ma, statistics.median(per_msg), ["%.4f" % x for x in per_msg]))
    print("command: bench/cluster/cluster_bench.py --count %d --pairs %d --workers %d %s"
          % (a.count, a.pairs, a.workers, " ".join(a.rest)))


if __name__ == "__main__":
    main()
