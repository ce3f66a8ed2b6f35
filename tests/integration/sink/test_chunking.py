#!/usr/bin/env python3
"""impetus-sink CHUNKING (RFC 3030 BDAT), from a raw socket on 127.0.0.1:
CHUNKING in EHLO; three messages pipelined in one write with the right nine
replies, counters, --jsonl sizes and --save-dir contents (raw octets, dots
untouched, equal to the same message sent with DATA); a chunk split across
two writes; a message in several chunks; BDAT without RCPT / MAIL (the
octets are discarded and the pipelined commands behind them still work);
--no-chunking; the size limit (552 at LAST); --fail DOT on LAST and
--fail BDAT on the other chunks, drawn exactly as for DATA; hostile modes
and --disconnect-at on BDAT stages; a delay with 40 MB of octets pipelined
behind it (the sink stops receiving instead of dropping the client)."""
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sinklib import Raw, Sink  # noqa: E402

SINK = sys.argv[1]

# Bodies with lines that start with "." and a lone "." line: BDAT carries
# them raw, so the sink must not unstuff or stop at them.
BODIES = [
    b"Subject: one\r\n\r\n.leading dot\r\n.\r\n..two dots\r\nend\r\n",
    b"Subject: two\r\n\r\n" + b"x" * 1000 + b"\r\n.\r\n",
    b"Subject: three\r\n\r\n\r\n.\r\n",
]


def stuff(body):
    """The DATA form of body: dot-stuffed, then the end-of-data line."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines) + b".\r\n"


def ehlo(r):
    assert r.code() == 220
    r.send("EHLO c.test\r\n")
    return r.read_reply()


def envelope(i):
    return b"MAIL FROM:<s%d@x.test>\r\nRCPT TO:<r%d@y.test>\r\n" % (i, i)


def read_codes(r, n):
    return [r.read_reply()[-1] for _ in range(n)]


def records(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def test_pipelined_one_write():
    jsonl = os.path.join(D, "msgs.jsonl")
    save = os.path.join(D, "saved1")
    os.mkdir(save)
    with Sink(SINK, ["--jsonl", jsonl, "--save-dir", save]) as s:
        r = Raw(s.port)
        lines = ehlo(r)
        assert "250-CHUNKING" in lines and "250-PIPELINING" in lines, lines
        batch = b"".join(envelope(i) + b"BDAT %d LAST\r\n" % len(b) + b
                         for i, b in enumerate(BODIES))
        r.send(batch)  # one write: 3 x (MAIL, RCPT, BDAT n LAST + octets)
        got = read_codes(r, 9)
        want = ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as 1",
                "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as 2",
                "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as 3"]
        assert got == want, got
        # Nothing more was answered: the octets were not taken as commands.
        r.send("NOOP\r\n")
        assert r.read_reply() == ["250 2.0.0 Ok"]
        # The same messages with DATA (dot-stuffed): same sizes and contents.
        r.send(b"".join(envelope(i) + b"DATA\r\n" + stuff(b) for i, b in enumerate(BODIES)))
        got = [l[:3] for l in read_codes(r, 12)]
        assert got == ["250", "250", "354", "250"] * 3, got
        r.send("QUIT\r\n")
        assert r.code() == 221
        st = s.stop()
        assert st["messages"] == 6 and st["bdat_messages"] == 3 and st["bdat_chunks"] == 3, st
        assert st["bytes"] == 2 * sum(len(b) for b in BODIES), st
        recs = records(jsonl)
        assert [x["size"] for x in recs] == [len(b) for b in BODIES] * 2, recs
        assert [x["mail_from"] for x in recs[:3]] == ["s0@x.test", "s1@x.test", "s2@x.test"]
        assert recs[0]["rcpts"] == ["r0@y.test"]
        for i, x in enumerate(recs):
            with open(x["file"], "rb") as f:
                assert f.read() == BODIES[i % 3], "message %d content" % (i + 1)


def test_split_and_multichunk():
    save = os.path.join(D, "saved2")
    os.mkdir(save)
    with Sink(SINK, ["--save-dir", save]) as s:
        r = Raw(s.port)
        ehlo(r)
        # A chunk split across two writes: the sink answers MAIL and RCPT
        # after parsing the first write, so the second surely comes later.
        r.send(envelope(0) + b"BDAT 11 LAST\r\n.first\r")
        assert read_codes(r, 2) == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
        r.send(b"\n.\r\n" + envelope(1) + b"BDAT 10\r\n0123456789")
        assert read_codes(r, 4) == ["250 2.0.0 Ok: queued as 1", "250 2.1.0 Ok", "250 2.1.5 Ok",
                                    "250 2.0.0 10 octets received"]
        # The command itself split, the chunk's octets behind it in the same write.
        r.send(b"BDA")
        r.send(b"T 5\r\n.\r\n\r\nBDAT 0 LAST\r\nNOOP\r\n")
        assert read_codes(r, 3) == ["250 2.0.0 5 octets received", "250 2.0.0 Ok: queued as 2",
                                    "250 2.0.0 Ok"]
        st = s.stop()
        assert st["messages"] == 2 and st["bdat_chunks"] == 4, st
        with open(os.path.join(save, "1.eml"), "rb") as f:
            assert f.read() == b".first\r\n.\r\n"
        with open(os.path.join(save, "2.eml"), "rb") as f:
            assert f.read() == b"0123456789.\r\n\r\n"


def test_errors():
    with Sink(SINK, []) as s:
        r = Raw(s.port)
        ehlo(r)
        # No RCPT: 503 once the 20 octets are read and discarded (they look
        # like commands); the pipelined MAIL behind them works.
        r.send(b"MAIL FROM:<a@x>\r\nBDAT 20 LAST\r\nRSET\r\nQUIT\r\nNOOP\r\n\r\n"
               + envelope(1) + b"BDAT 2 LAST\r\nok")
        assert read_codes(r, 5) == ["250 2.1.0 Ok", "503 5.5.1 Error: need RCPT command",
                                    "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as 1"]
        # No MAIL: the same.
        r.send(b"BDAT 6\r\nQUIT\r\nBDAT 0 LAST\r\nNOOP\r\n")
        assert read_codes(r, 3) == ["503 5.5.1 Error: need MAIL command",
                                    "503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]
        # Bad syntax: 501, no octets read.
        r.send(b"BDAT 1x\r\nBDAT\r\nNOOP\r\n")
        assert read_codes(r, 3) == ["501 5.5.4 Syntax: BDAT count [LAST]"] * 2 + ["250 2.0.0 Ok"]
        # DATA inside a BDAT transaction: 503; RSET ends it.
        r.send(envelope(2) + b"BDAT 1\r\nxDATA\r\nRSET\r\nDATA\r\n")
        assert [l[:3] for l in read_codes(r, 6)] == ["250", "250", "250", "503", "250", "503"]
        st = s.stop()
        assert st["messages"] == 1, st


def test_no_chunking():
    with Sink(SINK, ["--no-chunking"]) as s:
        r = Raw(s.port)
        lines = ehlo(r)
        assert not any("CHUNKING" in l for l in lines) and "250-PIPELINING" in lines, lines
        r.send(envelope(0) + b"BDAT 0 LAST\r\nRSET\r\n")
        assert read_codes(r, 4) == ["250 2.1.0 Ok", "250 2.1.5 Ok",
                                    "502 5.5.1 Error: command not implemented", "250 2.0.0 Ok"]
        st = s.stop()
        assert st["messages"] == 0 and st["bdat_chunks"] == 0, st


def test_size_limit():
    with Sink(SINK, ["--max-message-size", "1000"]) as s:
        r = Raw(s.port)
        lines = ehlo(r)
        assert "250-SIZE 1000" in lines
        # 600 + 401 octets: each chunk is under the limit, their sum is not.
        r.send(envelope(0) + b"BDAT 600\r\n" + b"a" * 600 + b"BDAT 401 LAST\r\n" + b"b" * 401
               + envelope(1) + b"BDAT 1000 LAST\r\n" + b"c" * 1000)
        assert read_codes(r, 7) == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 600 octets received",
                                    "552 5.3.4 Message size exceeds fixed limit",
                                    "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as 1"]
        st = s.stop()
        assert st["messages"] == 1 and st["messages_rejected"] == 1 and st["bytes"] == 1000, st


def run_faults(args, n, bdat):
    """n messages on one connection under args; the list of final codes."""
    with Sink(SINK, args) as s:
        r = Raw(s.port)
        ehlo(r)
        body = b"Subject: f\r\n\r\nx\r\n"
        if bdat:
            batch = b"".join(envelope(i) + b"BDAT 4\r\nSubjBDAT %d LAST\r\n" % (len(body) - 4)
                             + body[4:] for i in range(n))
        else:
            batch = b"".join(envelope(i) + b"DATA\r\n" + stuff(body) for i in range(n))
        per = 4  # MAIL, RCPT, DATA or the first chunk, the final reply
        r.send(batch)
        replies = read_codes(r, per * n)
        st = s.stop()
        return [replies[i * per + per - 1][:3] for i in range(n)], [replies[i * per + 2][:3]
                                                                    for i in range(n)], st


def test_faults():
    n = 40
    # --fail DOT=5xx:0.5: LAST gets it, in the same draws as DATA's dot.
    args = ["--fail", "DOT=5xx:0.5", "--seed", "7"]
    data_final, _, st_data = run_faults(args, n, False)
    bdat_final, bdat_first, st = run_faults(args, n, True)
    assert bdat_first == ["250"] * n, bdat_first
    assert bdat_final == data_final, (bdat_final, data_final)
    rejected = bdat_final.count("554")
    assert 0 < rejected < n and bdat_final.count("250") == n - rejected, bdat_final
    assert st["messages"] == n - rejected and st["messages_rejected"] == rejected, st
    assert st["errors_injected"].get("DOT_5xx") == rejected, st
    assert st_data["messages"] == st["messages"]
    # --fail BDAT=4xx:0.5: the first chunk fails (451), then LAST is
    # discarded with 503; the DOT faults stay off.
    final, first, st = run_faults(["--fail", "BDAT=4xx:0.5", "--seed", "7"], n, True)
    failed = first.count("451")
    assert 0 < failed < n, first
    for f, l in zip(first, final):
        assert (f, l) in (("250", "250"), ("451", "503")), (f, l)
    assert st["messages"] == n - failed and st["errors_injected"].get("BDAT_4xx") == failed, st


def test_hostile_and_disconnect():
    # reset-mid-data: TCP RST once a chunk's octets arrive.
    with Sink(SINK, ["--hostile", "reset-mid-data"]) as s:
        r = Raw(s.port)
        ehlo(r)
        r.send(envelope(0) + b"BDAT 4 LAST\r\n")
        assert read_codes(r, 2) == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
        r.send(b"body")
        data, how = r.read_all()
        assert how == "reset" and data == b"", (data, how)
        st = s.stop()
        assert st["errors_injected"]["hostile_reset-mid-data"] == 1 and st["messages"] == 0, st
    # garbage:DOT replaces the reply to LAST; garbage:BDAT that to a chunk.
    for stage, nth in (("DOT", 3), ("BDAT", 2)):
        with Sink(SINK, ["--hostile", "garbage:" + stage]) as s:
            r = Raw(s.port)
            ehlo(r)
            r.send(envelope(0) + b"BDAT 1\r\nxBDAT 1 LAST\r\ny")
            got = read_codes(r, 4)
            assert all(l[:3].isdigit() == (i != nth) for i, l in enumerate(got)), (stage, got)
            s.stop()
    # --disconnect-at BDAT: 421 instead of the chunk's reply, then close.
    with Sink(SINK, ["--disconnect-at", "BDAT"]) as s:
        r = Raw(s.port)
        ehlo(r)
        r.send(envelope(0) + b"BDAT 1 LAST\r\nx")
        assert [l[:3] for l in read_codes(r, 3)] == ["250", "250", "421"]
        data, how = r.read_all()
        assert data == b"" and how == "eof", (data, how)
        st = s.stop()
        assert st["errors_injected"]["disconnect_BDAT"] == 1 and st["messages"] == 0, st


def test_delay_backpressure():
    # A delayed reply with 40 MB of BDAT octets pipelined behind it: the sink
    # holds 1 MiB, stops receiving (TCP backpressure), resumes after the
    # delay and takes the whole message; before, it buffered up to 8 MiB and
    # dropped the client.
    size = 40 << 20
    for extra in ([], ["--io-fallback"]):  # multishot recv, and single-shot
        delay_backpressure(size, extra)


def delay_backpressure(size, extra):
    with Sink(SINK, ["--latency", "MAIL=300"] + extra) as s:
        r = Raw(s.port, timeout=20)
        ehlo(r)
        t = time.monotonic()
        r.send(envelope(0) + b"BDAT %d LAST\r\n" % size)
        block = b"x" * (1 << 20)
        for _ in range(size >> 20):
            r.send(block)
        assert read_codes(r, 3) == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as 1"]
        assert time.monotonic() - t >= 0.29
        st = s.stop()
        assert st["messages"] == 1 and st["bytes"] == size, st


def main():
    global D
    D = tempfile.mkdtemp(prefix="sinkchunk.")
    try:
        for t in (test_pipelined_one_write, test_split_and_multichunk, test_errors,
                  test_no_chunking, test_size_limit, test_faults, test_hostile_and_disconnect,
                  test_delay_backpressure):
            t0 = time.monotonic()
            t()
            print("%s ok (%.2fs)" % (t.__name__, time.monotonic() - t0))
    finally:
        shutil.rmtree(D, ignore_errors=True)


if __name__ == "__main__":
    main()
