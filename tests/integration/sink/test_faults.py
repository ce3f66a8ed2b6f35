#!/usr/bin/env python3
"""impetus-sink fault injection, each option observed from a raw socket
client (or smtplib): latency, reply delay, greeting delay, failure ratios
per command (deterministic with --seed), disconnect-at, max-connections,
every hostile mode, and the limits (line length, SIZE)."""
import os
import smtplib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sinklib import Raw, Sink, b64, users_file  # noqa: E402

SINK = sys.argv[1]


def session_to(r, stage):
    """Drive a raw session up to (not including) `stage`; returns nothing."""
    assert r.code() == 220
    if stage == "EHLO":
        return
    r.send("EHLO c\r\n")
    assert r.code() == 250
    if stage == "MAIL":
        return
    r.send("MAIL FROM:<a@x>\r\n")
    assert r.code() == 250
    if stage == "RCPT":
        return
    r.send("RCPT TO:<b@y>\r\n")
    assert r.code() == 250
    if stage == "DATA":
        return
    r.send("DATA\r\n")
    assert r.code() == 354
    if stage == "DOT":
        return
    raise ValueError(stage)


STAGE_LINE = {"EHLO": "EHLO c\r\n", "MAIL": "MAIL FROM:<a@x>\r\n", "RCPT": "RCPT TO:<b@y>\r\n",
              "DATA": "DATA\r\n", "DOT": "body\r\n.\r\n"}


def test_latency():
    with Sink(SINK, ["--latency", "RCPT=400", "--latency", "DOT=200", "--greeting-delay", "250"]) as s:
        r = Raw(s.port)
        t = time.monotonic()
        assert r.code() == 220
        assert time.monotonic() - t >= 0.24, "greeting delay"
        r.send("EHLO c\r\nMAIL FROM:<a@x>\r\n")
        t = time.monotonic()
        assert [r.code(), r.code()] == [250, 250]
        assert time.monotonic() - t < 0.3, "EHLO/MAIL are not delayed"
        r.send("RCPT TO:<b@y>\r\nDATA\r\n")
        t = time.monotonic()
        assert r.code() == 250
        assert time.monotonic() - t >= 0.39, "RCPT latency"
        assert r.code() == 354
        r.send("x\r\n.\r\n")
        t = time.monotonic()
        assert r.code() == 250
        assert time.monotonic() - t >= 0.19, "DOT latency"
        r.close()
        st = s.stop()
        assert st["errors_injected"]["delay_RCPT"] == 1 and st["errors_injected"]["delay_DOT"] == 1
        assert st["errors_injected"]["delay_CONNECT"] == 1 and st["messages"] == 1
    with Sink(SINK, ["--reply-delay", "100"]) as s:
        r = Raw(s.port)
        r.code()
        t = time.monotonic()
        r.send("EHLO c\r\nNOOP\r\n")
        assert [r.code(), r.code()] == [250, 250]
        assert time.monotonic() - t >= 0.19, "reply delay on each command"
        r.close()
        s.stop()


def test_fail_each_command():
    users = users_file(D, [("u", "p")])
    want = {"MAIL": 451, "RCPT": 550, "DATA": 451, "DOT": 554, "AUTH": 454}
    kinds = {"MAIL": "4xx", "RCPT": "5xx", "DATA": "4xx", "DOT": "5xx", "AUTH": "4xx"}
    for cmd, code in want.items():
        with Sink(SINK, ["--fail", "%s=%s:1" % (cmd, kinds[cmd]), "--auth-users", users]) as s:
            r = Raw(s.port)
            if cmd == "AUTH":
                r.code()
                r.send("EHLO c\r\nAUTH PLAIN %s\r\n" % b64("\0u\0p"))
                r.code()
                reply = r.read_reply()
            else:
                session_to(r, cmd)
                r.send(STAGE_LINE[cmd])
                reply = r.read_reply()
            assert int(reply[0][:3]) == code, (cmd, reply)
            assert "Injected" in reply[0] and reply[0][4] == str(code)[0], reply
            r.close()
            st = s.stop()
            assert st["errors_injected"]["%s_%s" % (cmd, kinds[cmd])] == 1, st
            assert st["messages"] == 0
    # An exact code.
    with Sink(SINK, ["--fail", "RCPT=452:1"]) as s:
        r = Raw(s.port)
        session_to(r, "RCPT")
        r.send("RCPT TO:<b@y>\r\n")
        assert r.code() == 452
        r.close()
        s.stop()
    # A ratio: deterministic for a seed, counted in the summary.
    patterns = []
    for _ in range(2):
        with Sink(SINK, ["--fail", "RCPT=4xx:0.5", "--seed", "42"]) as s:
            r = Raw(s.port)
            session_to(r, "RCPT")
            r.send("".join("RCPT TO:<r%d@y>\r\n" % i for i in range(60)))
            codes = [r.code() for _ in range(60)]
            r.send("DATA\r\nhi\r\n.\r\n")
            assert [r.code(), r.code()] == [354, 250]
            r.close()
            st = s.stop()
            fails = codes.count(450)
            assert 10 <= fails <= 50 and fails + codes.count(250) == 60, codes
            assert st["errors_injected"]["RCPT_4xx"] == fails and st["recipients"] == 60 - fails
            patterns.append(codes)
    assert patterns[0] == patterns[1], "same seed, same failures"


def test_disconnect_at():
    for stage in ("CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "DOT"):
        with Sink(SINK, ["--disconnect-at", stage]) as s:
            r = Raw(s.port)
            if stage != "CONNECT":
                session_to(r, stage)
                r.send(STAGE_LINE[stage])
            data, how = r.read_all()
            assert data.startswith(b"421 4.3.2") and how == "eof", (stage, data, how)
            r.close()
            st = s.stop()
            assert st["errors_injected"]["disconnect_" + stage] == 1, st


def test_max_connections():
    with Sink(SINK, ["--max-connections", "2"]) as s:
        a, b = Raw(s.port), Raw(s.port)
        assert a.code() == 220 and b.code() == 220
        c = Raw(s.port)
        data, how = c.read_all()
        assert data.startswith(b"421 4.7.0") and how == "eof", data
        a.send("QUIT\r\n")
        assert a.code() == 221
        a.close()
        deadline = time.monotonic() + 5
        while True:  # the slot frees once the sink has seen the close
            d = Raw(s.port)
            if d.code() == 220:
                break
            assert time.monotonic() < deadline
            d.close()
            time.sleep(0.02)
        st = s.stop()
        assert st["rejected_connections"] >= 1 and st["max_concurrent_connections"] == 2, st


def test_hostile():
    # garbage: the greeting is not SMTP.
    with Sink(SINK, ["--hostile", "garbage"]) as s:
        r = Raw(s.port)
        line = r.read_reply()[0]
        assert not line[:3].isdigit(), line
        r.send("EHLO c\r\n")  # the session goes on
        assert r.code() == 250
        st = s.stop()
        assert st["errors_injected"]["hostile_garbage"] == 1
    # garbage on a later stage.
    with Sink(SINK, ["--hostile", "garbage:RCPT"]) as s:
        r = Raw(s.port)
        session_to(r, "RCPT")
        r.send("RCPT TO:<b@y>\r\n")
        assert not r.read_reply()[0][:3].isdigit()
        s.stop()
    # endless-line: > 1 MiB without a line end.
    with Sink(SINK, ["--hostile", "endless-line"]) as s:
        r = Raw(s.port)
        data, how = r.read_all(limit=1 << 20)
        assert len(data) >= 1 << 20 and b"\n" not in data and how == "limit"
        r.close()
        s.stop()
    # continuations: 10,000 continuation lines before the final line.
    with Sink(SINK, ["--hostile", "continuations:EHLO"]) as s:
        r = Raw(s.port)
        r.code()
        r.send("EHLO c\r\n")
        lines = r.read_reply()
        assert len(lines) >= 10001 and lines[0].startswith("250-") and lines[-1].startswith("250 ")
        s.stop()
    # split: one byte per send, observed as one TCP segment per byte
    # (tcp_info.tcpi_segs_in of the client socket, offset 140 on Linux).
    import socket
    import struct
    with Sink(SINK, ["--hostile", "split"]) as s:
        r = Raw(s.port)
        assert r.code() == 220
        r.send("EHLO c\r\n")
        lines = r.read_reply()
        size = len("\r\n".join(lines)) + 2 + len("220 impetus-sink ESMTP impetus-sink\r\n")
        info = r.s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        segs_in = struct.unpack_from("I", info, 140)[0]
        # Without split this is about 4; TCP autocorking may merge some bytes.
        assert segs_in >= size // 4, (segs_in, size)
        s.stop()
    # drip: one byte every 20 ms: the greeting (>30 bytes) takes > 0.5 s.
    with Sink(SINK, ["--hostile", "drip", "--drip-interval", "20"]) as s:
        r = Raw(s.port)
        t = time.monotonic()
        assert r.code(deadline=10) == 220
        assert time.monotonic() - t > 0.5
        r.close()
        s.stop()
    # unsolicited: a reply line nobody asked for follows the greeting.
    with Sink(SINK, ["--hostile", "unsolicited"]) as s:
        r = Raw(s.port)
        assert r.code() == 220
        deadline = time.monotonic() + 5
        while b"\n" not in r.buf and time.monotonic() < deadline:
            r.buf += r.s.recv(4096)
        assert r.buf.startswith(b"250 2.0.0 unsolicited"), r.buf
        s.stop()
    # reset-mid-data: TCP RST once message data arrives.
    with Sink(SINK, ["--hostile", "reset-mid-data"]) as s:
        r = Raw(s.port)
        session_to(r, "DOT")
        r.send("Subject: x\r\n\r\nbody\r\n")
        data, how = r.read_all()
        assert how == "reset" and data == b"", (data, how)
        st = s.stop()
        assert st["errors_injected"]["hostile_reset-mid-data"] == 1 and st["messages"] == 0


def test_limits():
    with Sink(SINK, ["--max-message-size", "1000", "--max-recipients", "2"]) as s:
        r = Raw(s.port)
        r.code()
        r.send("EHLO c\r\n")
        assert "SIZE 1000" in r.read_reply()[2]
        r.send("MAIL FROM:<a@x> SIZE=5000\r\n")
        assert r.code() == 552
        r.send("X" * 20000 + "\r\n")
        assert r.code() == 500
        r.send("MAIL FROM:<a@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\n")
        assert [r.code() for _ in range(4)] == [250, 250, 250, 452]
        r.send("DATA\r\n" + "y" * 2000 + "\r\n.\r\n")
        assert [r.code(), r.code()] == [354, 552]
        r.send("DATA\r\n")
        assert r.code() == 503
        r.send("BOGUS\r\nRSET\r\nQUIT\r\n")
        assert [r.code(), r.code(), r.code()] == [500, 250, 221]
        st = s.stop()
        assert st["messages"] == 0 and st["messages_rejected"] == 1


def main():
    global D
    import shutil
    import tempfile
    D = tempfile.mkdtemp(prefix="sinkfaults.")
    try:
        for t in (test_latency, test_fail_each_command, test_disconnect_at, test_max_connections,
                  test_hostile, test_limits):
            t0 = time.monotonic()
            t()
            print("%s ok (%.2fs)" % (t.__name__, time.monotonic() - t0))
    finally:
        shutil.rmtree(D, ignore_errors=True)


if __name__ == "__main__":
    main()
