"""Engines against a Redis that serves only TLS and asks for a password
(issue 23: rediss:// and a password in the URL). redis-server runs with
--tls-port (and --port 0), a throwaway CA and certificates made by
`openssl req` in its temp dir, client certificates required (Redis's
default) and requirepass. Everything on free loopback ports, stopped by PID.

  limits    two engines, cluster { redis = "rediss://:PW@127.0.0.1:N/0"
            tls_ca_file ... }, Cluster_Max_Outbound_Connections = 6 with a
            local limit of 20: the sink never sees more than 6 at once;
            each engine logs "connected to redis over TLS"
  errors    a wrong tls_ca_file (closed mode: nothing delivered while the
            client fails and retries; then the right CA on the same spool
            delivers every message: nothing lost), a wrong tls_ca_file in
            open mode (delivers at its local share), a certificate that does
            not name the URL's host, a wrong password, no password,
            tls_verify = false (connects): each failure logged once, with
            its reason, and the password never in a log
"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
from redislib import Redis, expect, run_scenario, eventually  # noqa: E402
import enginelib  # noqa: E402
import sinklib  # noqa: E402

PW = "s3cr@t:pw/x"
CTL = None


def conf_for(sink, url, tls_lines, name, mode="closed", extra=""):
    return ('Worker_Threads = 2\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
            'Max_Outbound_Connections = 20\nIdle_Timeout = 30\nRetry_Interval = 1\n'
            'Max_Retry_Interval = 2\nCluster_Max_Outbound_Connections = 6\n'
            'cluster {\n  redis = "%s"\n  node_name = "%s"\n  lease_ttl = 3\n'
            '  failure_mode = "%s"\n%s}\n%s' % (sink.port, url, name, mode, tls_lines, extra))


def tls_lines(certs, ca="ca.pem", verify=True, client=True):
    s = '  tls_ca_file = "%s"\n' % certs[ca]
    if client:
        s += '  tls_certificate = "%s"\n  tls_key = "%s"\n' % (certs["client.pem"],
                                                            certs["client.key"])
    if not verify:
        s += "  tls_verify = false\n"
    return s


def delivered(e):
    return len(e.records("D"))


def ctl_cluster(e):
    p = subprocess.run([CTL, "-c", e.conf, "cluster"], capture_output=True, text=True,
                       timeout=20)
    return p.stdout


def failures(e):
    for line in ctl_cluster(e).splitlines():
        if line.startswith("round trips"):
            return int(line.split("failures ")[1].split(",")[0])
    return 0


def slow_sink(sinkbin):
    # slow replies without pipelining keep every connection a node may
    # open busy while a backlog waits
    return sinklib.Sink(sinkbin, ["--reply-delay", "20", "--no-pipelining", "--no-chunking"])


def scenario_limits(imp, sinkbin, redis):
    sink = slow_sink(sinkbin)
    engines = []
    try:
        for i in range(2):
            e = enginelib.Engine(imp, conf_for(sink, redis.url, tls_lines(redis.certs),
                                               "tls%d" % (i + 1)), "tls%d" % (i + 1))
            engines.append(e)
            e.start()
        for i, e in enumerate(engines):
            e.wait_for(lambda: "connected to redis over TLS" in e.read(e.paniclog), 15,
                       "the TLS connection to redis")
            for k in range(150):
                e.inject("s@src.test", ["r%d.%d@d.test" % (i, k)])
        ok = eventually(lambda: sum(delivered(e) for e in engines) >= 300, 120, 0.2)
        expect(ok, "300 delivered (%d)" % sum(delivered(e) for e in engines))
        summ = sink.summary_now()
        print("over TLS: max concurrent %d" % summ["max_concurrent_connections"])
        expect(summ["max_concurrent_connections"] <= 6,
               "the sink never saw more than 6 at once (max %d)" % summ["max_concurrent_connections"])
        expect(summ["max_concurrent_connections"] >= 4, "the fleet used the cap")
        stats = redis.commandstats()
        expect(stats.get("auth", 0) >= 2 and stats.get("evalsha", 0) > 0,
               "both engines sent AUTH and ran the scripts over TLS (%s)" % stats)
        for e in engines:
            expect(e.stop() == 0, "engine stops cleanly")
            expect(PW not in e.read(e.paniclog) and PW not in e.read(e.err.name),
                   "the password is in no log")
    finally:
        for e in engines:
            e.cleanup()
        sink.cleanup()


def start_failing(imp, sink, url, tls, name, mode, want):
    """An engine whose client cannot get in: wait until the reason is
    logged and the client has failed three times (back-off retries)."""
    e = enginelib.Engine(imp, conf_for(sink, url, tls, name, mode), name)
    e.start()
    for k in range(20):
        e.inject("s@src.test", ["%s.%d@d.test" % (name, k)])
    e.wait_for(lambda: "unavailable" in e.read(e.paniclog), 15, "the failure logged")
    line = [x for x in e.read(e.paniclog).splitlines() if "unavailable" in x][0]
    print("%s: %s" % (name, line))
    expect(want in line, "%s: the log says why: %r" % (name, want))
    expect(eventually(lambda: failures(e) >= 3, 30, 0.2), "%s: the client tried again" % name)
    return e


def scenario_errors(imp, sinkbin, redis):
    c = redis.certs
    sink = slow_sink(sinkbin)
    other = None
    engines = []
    try:
        # a CA that did not sign Redis's certificate, failure_mode closed:
        # the 20 messages wait
        e = start_failing(imp, sink, redis.url, tls_lines(c, ca="otherca.pem"), "wrongca",
                          "closed", "certificate verify failed")
        engines.append(e)
        expect(delivered(e) == 0, "closed: nothing delivered while Redis cannot be reached")
        expect(e.read(e.paniclog).count("unavailable") == 1, "the failure logged once")
        expect(e.stop() == 0, "engine stops cleanly")
        # the same spool with the right CA: every message delivered
        with open(e.conf) as f:
            text = f.read()
        with open(e.conf, "w") as f:
            f.write(text.replace(c["otherca.pem"], c["ca.pem"]))
        e.start()
        e.wait_for(lambda: delivered(e) >= 20, 60, "the held messages delivered")
        expect(len(e.finals()) == 20 and all(len(v) == 1 for v in e.finals().values()),
               "the right CA: all 20 delivered, each once")
        expect("connected to redis over TLS" in e.read(e.paniclog), "connected over TLS")
        e.stop()

        # failure_mode open: deliveries go on at the node's local share
        e = start_failing(imp, sink, redis.url, tls_lines(c, ca="otherca.pem"), "wrongca-open",
                          "open", "certificate verify failed")
        engines.append(e)
        e.wait_for(lambda: delivered(e) >= 20, 60, "open: delivered without Redis")
        expect(True, "open: all 20 delivered without Redis")
        e.stop()

        # wrong password, no password
        e = start_failing(imp, sink, redis.url_with("wrong-password"), tls_lines(c),
                          "wrongpw", "closed", "AUTH refused: WRONGPASS")
        engines.append(e)
        expect(delivered(e) == 0, "wrong password: nothing delivered (closed)")
        e.stop()
        e = start_failing(imp, sink, redis.url_with(None), tls_lines(c), "nopw", "closed",
                          "NOAUTH")
        engines.append(e)
        e.stop()

        # no client certificate: Redis refuses the handshake
        e = start_failing(imp, sink, redis.url, tls_lines(c, client=False), "nocert", "closed",
                          "client certificate")
        engines.append(e)
        e.stop()

        # a certificate that names only "localhost", reached as 127.0.0.1
        other = Redis(tls=True, password=PW, server_cert="namedonly")
        e = start_failing(imp, sink, other.url, tls_lines(other.certs), "wrongname", "closed",
                          "certificate verify failed")
        engines.append(e)
        e.stop()
        # ... accepted with tls_verify = false, said explicitly
        e = enginelib.Engine(imp, conf_for(sink, other.url, tls_lines(other.certs, verify=False),
                                           "noverify"), "noverify")
        engines.append(e)
        e.start()
        e.wait_for(lambda: "connected to redis over TLS" in e.read(e.paniclog), 15,
                   "tls_verify = false connects")
        expect(True, "tls_verify = false: connected to the misnamed server")
        e.stop()
        for e in engines:
            expect(PW not in e.read(e.paniclog) and PW not in e.read(e.err.name),
                   "%s: the password is in no log" % os.path.basename(e.dir))
        summ = sink.summary_now()
        expect(summ["max_concurrent_connections"] <= 6, "never more than the cap (max %d)"
               % summ["max_concurrent_connections"])
    finally:
        for e in engines:
            e.cleanup()
        sink.cleanup()
        if other:
            other.cleanup()


def main():
    global CTL
    imp, sinkbin, scenario, CTL = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    fns = {"limits": scenario_limits, "errors": scenario_errors}
    return run_scenario(fns[scenario], Redis(tls=True, password=PW), imp, sinkbin)


if __name__ == "__main__":
    sys.exit(main())
