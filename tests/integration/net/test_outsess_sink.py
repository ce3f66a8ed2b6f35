#!/usr/bin/env python3
"""outsess (the one SMTP session driver, engine and tests alike) against
impetus-sink: transactions pipelined behind the dot (RFC 2920) and BDAT
transactions in flight together (RFC 3030), each answered once and in
order, bodies from memory and from a file larger than the send window.

usage: test_outsess_sink.py NET_CLIENT SINK
"""
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sink"))
import sinklib  # noqa: E402

CLIENT, SINK = sys.argv[1], sys.argv[2]


def check(cond, what, out=""):
    if not cond:
        print("FAIL:", what)
        print(out)
        sys.exit(1)
    print("ok:", what)


def run(port, *args):
    p = subprocess.run([CLIENT, "-p", str(port), "-t", "r@dest.test", *args],
                       capture_output=True, text=True, timeout=90)
    check(p.returncode == 0, "net_client %s exits 0 (got %d)" % (" ".join(args), p.returncode),
          p.stdout + p.stderr)
    return p.stdout


def case(name, n, sink_args, client_args, bdat):
    with sinklib.Sink(SINK, list(sink_args)) as s:
        out = run(s.port, "-n", str(n), *client_args)
        summ = s.stop()
    txns = re.findall(r"^txn (\d+) (\w+) (\d+)", out, re.M)
    check([int(t[0]) for t in txns] == list(range(1, n + 1)),
          "%s: %d transactions answered once each, in order" % (name, n), out)
    check(all(t[1] == "ok" for t in txns), "%s: all accepted" % name, out)
    check("order-error" not in out and "lost" not in out, "%s: none lost" % name, out)
    check("pipelined" in out, "%s: transactions pipelined" % name, out)
    check(summ["messages"] == n and summ["connections"] == 1,
          "%s: the sink got %d messages on one connection (%s)" % (name, n, summ), out)
    check((summ.get("bdat_messages", 0) == n) == bdat, "%s: BDAT used: %s" % (name, bdat), out)
    return summ


def main():
    case("DATA", 30, [], ["--pipeline"], False)
    case("BDAT", 30, [], ["--pipeline", "--chunking"], True)
    with tempfile.TemporaryDirectory(prefix="impetus-outsess-") as d:
        body = os.path.join(d, "big.eml")
        with open(body, "wb") as f:
            f.write(b"Subject: big\r\n\r\n")
            for i in range(6000):  # ~300 KB: several reads and send windows
                f.write(b"line %05d .dot and text to fill the line up to seventy bytes\n" % i)
        size = os.path.getsize(body)
        summ = case("BDAT, file body", 5, [], ["--pipeline", "--chunking", "--body", body], True)
        check(summ["bytes"] >= 5 * size, "BDAT file bodies arrived whole (%d >= %d)"
              % (summ["bytes"], 5 * size))
        summ = case("DATA, file body", 5, [], ["--pipeline", "--body", body], False)
        check(summ["bytes"] >= 5 * size, "DATA file bodies arrived whole (%d >= %d)"
              % (summ["bytes"], 5 * size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
