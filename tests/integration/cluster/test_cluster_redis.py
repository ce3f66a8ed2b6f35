"""The cluster client against a real redis-server (issue 23, step 1):
cluster_drive (a C driver linking the engine's cluster module) runs as
one or more "nodes"; Redis is started on a free loopback port and
stopped by PID.

  rate      three nodes share "300/1": their combined rate over 5 s is
            300 +/- 10 % (one node alone, as a control, too)
  leases    two nodes wanting 10 of a cap of 10 hold 5 each, renewed past
            3 x TTL; one SIGKILLed, its leases lapse after the TTL and
            the other takes all 10
  fair      two nodes wanting 10 of a cap of 10 end with 5 each
  batching  a throttle that does not bind: Redis commands (INFO
            commandstats) per granted token <= 0.05
  tls       rediss:// with a password (percent-encoded in the URL) to a
            Redis serving TLS only, with client certificates and
            requirepass: the shared rate and a fair cap hold over TLS
"""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from redislib import Redis, expect, run_scenario, eventually  # noqa: E402


def run(drive, *args, timeout=60):
    r = subprocess.run([drive] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("cluster_drive %s: %s" % (args[0], r.stderr.decode()))
    return json.loads(r.stdout.decode())


def scenario_rate(drive, redis):
    for nodes in (1, 3):
        res = run(drive, "rate", redis.url, "rate%d" % nodes, 300, 1, 5, nodes)
        print("%d node(s) sharing 300/1: %s" % (nodes, res))
        expect(270 <= res["rate"] <= 330, "%d node(s): rate %.1f within 300 +/- 10 %%"
               % (nodes, res["rate"]))
        if nodes == 3:
            expect(all(n > 0 for n in res["per_node"]), "every node got tokens")


class Holder:
    def __init__(self, drive, url, node, key, limit, want, ttl, secs=0):
        self.lines = []
        self.proc = subprocess.Popen([drive, "hold", url, node, key, str(limit), str(want),
                                      str(ttl), str(secs)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = b""

    def poll(self):
        try:
            chunk = self.proc.stdout.read()
        except (BlockingIOError, TypeError):
            chunk = None
        if chunk:
            self.buf += chunk
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                t, held = line.split()
                self.lines.append((float(t), int(held)))
        return self.lines[-1][1] if self.lines else 0

    def wait_held(self, n, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll() == n:
                return True
            if self.proc.poll() is not None:
                raise RuntimeError("holder exited: " + self.proc.stderr.read().decode())
            time.sleep(0.02)
        return False

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def max_together(*holders, until=None):
    """The most leases the holders held at once (before `until`), from their
    lines (times on the one monotonic clock of the machine; a holder prints
    a release before Redis can grant that lease to another)."""
    events = sorted((t, i, n) for i, h in enumerate(holders) for t, n in h.lines
                    if until is None or t < until)
    cur = [0] * len(holders)
    peak = 0
    for _t, i, n in events:
        cur[i] = n
        peak = max(peak, sum(cur))
    return peak


def scenario_leases(drive, redis):
    ttl = 2
    a = Holder(drive, redis.url, "nodeA", "leases", 10, 10, ttl)
    b = None
    try:
        expect(a.wait_held(10, 10), "node A holds 10 of 10 leases")
        b = Holder(drive, redis.url, "nodeB", "leases", 10, 10, ttl)
        expect(b.wait_held(5, 15), "node B, wanting 10 too, gets its fair share of 5")
        # three TTLs: A renews its share, so B gets no more (the wait past
        # the TTL is what is checked: a fixed time on purpose)
        time.sleep(3 * ttl)
        ha, hb = a.poll(), b.poll()
        expect(ha == 5, "node A kept its 5 past 3 TTLs (renewed; holds %d)" % ha)
        expect(hb == 5, "node B still at 5 (holds %d)" % hb)
        a.kill()
        t_kill = time.monotonic()
        got = b.wait_held(10, ttl + 8)
        dt = time.monotonic() - t_kill
        print("node B held 10 %.2f s after A was killed (TTL %d s)" % (dt, ttl))
        expect(got, "node A's leases lapsed and node B took them")
        expect(max(x[1] for x in b.lines) <= 10, "node B never held more than the cap")
        peak = max_together(a, b, until=t_kill)  # A's lines end with it
        expect(peak <= 10, "never more than 10 together while both lived (at most %d)" % peak)
    finally:
        a.kill()
        if b:
            b.kill()


def fair_pair(drive, url, name, limit, what=""):
    """Two nodes wanting all of a cap of `limit`: A holds it all, then B
    comes and each ends with half; never more than the cap together."""
    half = limit // 2
    a = Holder(drive, url, name + "A", name, limit, limit, 3)
    b = None
    try:
        expect(a.wait_held(limit, 10), "%snode A holds %d of %d" % (what, limit, limit))
        b = Holder(drive, url, name + "B", name, limit, limit, 3)
        expect(b.wait_held(half, 15), "%snode B reached its fair share of %d" % (what, half))
        expect(eventually(lambda: a.poll() == half, 5), "%snode A gave back down to %d (holds %d)"
               % (what, half, a.poll()))
        peak = max_together(a, b)
        expect(peak <= limit, "%snever more than %d together (at most %d)" % (what, limit, peak))
    finally:
        a.kill()
        if b:
            b.kill()


def scenario_fair(drive, redis):
    fair_pair(drive, redis.url, "fair", 10)


def scenario_batching(drive, redis):
    redis.reset_stats()
    res = run(drive, "take", redis.url, "batch", 100000, 1, 20000)
    stats = redis.commandstats()
    evalsha = stats.get("evalsha", 0)
    total = sum(v for k, v in stats.items() if k not in ("info", "config|resetstat", "ping"))
    per = total / res["taken"]
    print("20000 tokens in %.2f s: %d Redis commands (%d EVALSHA): %.4f per token; %s"
          % (res["seconds"], total, evalsha, per, stats))
    expect(per <= 0.05, "Redis commands per granted token %.4f <= 0.05" % per)
    expect(evalsha >= 1, "tokens came from Redis (EVALSHA)")


def scenario_tls(drive, redis):
    """rediss:// with a password: Redis serves TLS only, checks this
    client's certificate and asks for the password; the client checks
    Redis's certificate against the test's CA and its name (127.0.0.1)."""
    c = redis.certs
    os.environ.update(CLUSTER_TLS_CA=c["ca.pem"], CLUSTER_TLS_CERT=c["client.pem"],
                      CLUSTER_TLS_KEY=c["client.key"])
    res = run(drive, "rate", redis.url, "tlsrate", 300, 1, 5, 3)
    print("3 nodes sharing 300/1 over TLS: %s" % res)
    expect(270 <= res["rate"] <= 330, "over TLS: rate %.1f within 300 +/- 10 %%" % res["rate"])
    fair_pair(drive, redis.url, "tlscap", 6, "over TLS: ")
    stats = redis.commandstats()
    print("commandstats: %s" % stats)
    expect(stats.get("auth", 0) >= 5, "every client sent AUTH (%d)" % stats.get("auth", 0))
    expect(stats.get("evalsha", 0) > 0, "the scripts ran over TLS")


def main():
    drive, scenario = sys.argv[1], sys.argv[2]
    fn = {"rate": scenario_rate, "leases": scenario_leases, "fair": scenario_fair,
          "batching": scenario_batching, "tls": scenario_tls}[scenario]
    redis = Redis(tls=True, password="s3cr@t:pw/x") if scenario == "tls" else Redis()
    return run_scenario(fn, redis, drive)


if __name__ == "__main__":
    sys.exit(main())
