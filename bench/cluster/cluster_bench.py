#!/usr/bin/env python3
"""cluster_bench: what cluster-wide limits cost one node (issue 23).

Runs bench/impetus-bench in rotating rounds on the same machine: A without
a cluster stanza; B with one (a redis-server started here on a free loopback
port) and Cluster_Outbound_Throttle_Messages far above the rate; C with also
Cluster_Max_Outbound_Connections above the local limit. Reports the median
throughput of each, B/A and C/A, and Redis commands per delivered message
from Redis's INFO commandstats (every command Redis ran, those inside the
scripts included: script loads, heartbeats, lease renewals, token batches).

usage: bench/cluster/cluster_bench.py [--build DIR] [--count N] [--pairs ROUNDS]
                                      [--workers N] [--variants ABC] [--stats]
                                      [-- IMPETUS-BENCH ARGS...]
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

CLUSTER = 'cluster { redis = "%s" node_name = "bench" lease_ttl = 10 } '
VARIANTS = {
    "A": None,  # no cluster stanza
    "B": 'Cluster_Outbound_Throttle_Messages = "10000000/1"',  # a throttle that does not bind
    "C": 'Cluster_Outbound_Throttle_Messages = "10000000/1" '  # and a cap that does not bind
         'Cluster_Max_Outbound_Connections = 100000',
}


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
    ap.add_argument("--variants", default="ABC", help="which variants to run (A first: the base)")
    ap.add_argument("--stats", action="store_true", help="print each run's INFO commandstats")
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    redis = Redis()
    rates = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}
    per_msg = {v: [] for v in VARIANTS}
    try:
        names = [v for v in VARIANTS if v in a.variants]
        for i in range(a.pairs):
            order = names[i % len(names):] + names[:i % len(names)]
            for v in order:
                redis.reset_stats()
                extra = (CLUSTER % redis.url + VARIANTS[v]) if VARIANTS[v] else ""
                r = bench(a, extra, "cluster-" + v)
                stats = redis.commandstats()
                n = sum(c for k, c in stats.items() if k not in ("info", "config|resetstat", "ping"))
                per_msg[v].append(n / r["delivered"])
                rates[v].append(r["msgs_per_s"])
                cpu[v].append(r["cpu_us_per_msg"])
                print("round %d %s: %.0f msg/s, %.1f us CPU/msg, %.4f Redis commands/msg%s" % (
                    i + 1, v, r["msgs_per_s"], r["cpu_us_per_msg"], per_msg[v][-1],
                    " %s" % stats if a.stats else ""), flush=True)
    finally:
        redis.cleanup()
    ma = statistics.median(rates["A"]) if rates["A"] else float("nan")
    for v in names:
        m = statistics.median(rates[v])
        print("%s: median %.0f msg/s (%.3f of A), %.1f us CPU/msg, Redis commands/msg median %.4f; "
              "runs %s" % (v, m, m / ma, statistics.median(cpu[v]), statistics.median(per_msg[v]),
                           rates[v]))
    print("command: bench/cluster/cluster_bench.py --count %d --pairs %d --workers %d "
          "--variants %s %s" % (a.count, a.pairs, a.workers, a.variants, " ".join(a.rest)))


if __name__ == "__main__":
    main()
