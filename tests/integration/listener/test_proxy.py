#!/usr/bin/env python3
"""Proxy_Protocol on the ESMTP_Listener (issue 21), with hand-made HAProxy
PROXY headers: version 1 (TCP4, TCP6, UNKNOWN), version 2 (PROXY over
IPv4 and IPv6, LOCAL); the proxied address is the one Peer scopes and
Relay_Hosts match; a Listen that requires the header closes a connection
without one, or with a malformed one, with a paniclog line and no banner,
and one that stalls after Proxy_Protocol_Timeout; a Peer stanza trusts
only the proxy's address (others are served without a header, and a
PROXY line from them is just an unknown command); bytes pipelined behind
the header are kept.
usage: test_proxy.py IMPETUS IMPETUS_SINK"""
import os
import shutil
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lsnlib import Client, check, enginelib, finish, free_port, sinklib, wait_port  # noqa: E402

imp, sinkbin = sys.argv[1], sys.argv[2]

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd, fam, src, dst, sport, dport, tlv=b""):
    if fam == 0x11:
        addr = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
    elif fam == 0x21:
        addr = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    else:
        addr = b""
    body = addr + (struct.pack("!HH", sport, dport) if addr else b"") + tlv
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def relay_code(c, sender="p@sender.test", rcpt="r@rcpt.test"):
    check(c.cmd("EHLO proxied.test")[0] == 250, "EHLO after the header")
    check(c.cmd("MAIL FROM:<%s>" % sender)[0] == 250, "MAIL after the header")
    return c.cmd("RCPT TO:<%s>" % rcpt)


d = os.path.join("/tmp", "impetus-lsnpp-%d" % os.getpid())
os.makedirs(d, exist_ok=True)
jl = os.path.join(d, "sink.jsonl")
sink = sinklib.Sink(sinkbin, ["--jsonl", jl, "--save-dir", d])
p1, p2 = free_port(), free_port()
conf = ('TLS = "no"\nGateway = "127.0.0.1:%d"\n'
        'ESMTP_Listener {\n'
        '  Relay_Hosts = ( "10.1.2.3/32" "2001:db8::7/128" )\n'
        '  Peer "10.1.2.3/32" { Banner_Hostname = "peer-scope.test" }\n'
        '  Listen "127.0.0.1:%d" { Proxy_Protocol = true  Proxy_Protocol_Timeout = 2 }\n'
        '  Listen "127.0.0.1:%d" { Peer "127.0.0.5/32" { Proxy_Protocol = true } }\n'
        '}\n' % (sink.port, p1, p2))
e = enginelib.Engine(imp, conf, "lsnpp")
try:
    e.start()
    check(wait_port(p1) and wait_port(p2), "listener accepts connections")

    # version 1, TCP4: the Peer scope and Relay_Hosts of the proxied address
    c = Client(p1)
    c.s.sendall(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 25\r\n")
    code, lines = c.reply()
    check(code == 220 and "peer-scope.test" in lines[0], "v1 TCP4: Peer scope of 10.1.2.3: %r" % lines)
    code, lines = relay_code(c)
    check(code == 250, "v1 TCP4: 10.1.2.3 may relay: %r" % lines)
    check(c.cmd("DATA")[0] == 354, "DATA")
    c.s.sendall(b"Message-ID: <pp-1@sender.test>\r\nSubject: pp\r\n\r\nproxied\r\n.\r\n")
    code, lines = c.reply()
    check(code == 250, "v1 message queued: %r" % lines)
    c.cmd("QUIT")
    c.close()

    # version 1, a client address outside Relay_Hosts
    c = Client(p1)
    c.s.sendall(b"PROXY TCP4 10.7.7.7 127.0.0.1 5555 25\r\n")
    code, lines = c.reply()
    check(code == 220 and "peer-scope.test" not in lines[0], "v1 other client: %r" % lines)
    code, lines = relay_code(c)
    check(code == 554, "v1: 10.7.7.7 may not relay: %r" % lines)
    c.close()

    # version 1, TCP6 and UNKNOWN (the real address stays: 127.0.0.1 may not relay)
    c = Client(p1)
    c.s.sendall(b"PROXY TCP6 2001:db8::7 ::1 5555 25\r\n")
    check(c.reply()[0] == 220, "v1 TCP6 greeting")
    check(relay_code(c)[0] == 250, "v1 TCP6: 2001:db8::7 may relay")
    c.close()
    c = Client(p1)
    c.s.sendall(b"PROXY UNKNOWN\r\n")
    check(c.reply()[0] == 220, "v1 UNKNOWN greeting")
    check(relay_code(c)[0] == 554, "v1 UNKNOWN keeps the real address (no relay)")
    c.close()

    # version 2: PROXY over IPv4 (with a TLV), IPv6; LOCAL keeps the real address
    c = Client(p1)
    c.s.sendall(v2(1, 0x11, "10.1.2.3", "127.0.0.1", 4000, 25, tlv=b"\x04\x00\x03abc"))
    code, lines = c.reply()
    check(code == 220 and "peer-scope.test" in lines[0], "v2 IPv4 greeting: %r" % lines)
    check(relay_code(c)[0] == 250, "v2 IPv4: 10.1.2.3 may relay")
    c.close()
    c = Client(p1)
    c.s.sendall(v2(1, 0x21, "2001:db8::7", "::1", 4000, 25))
    check(c.reply()[0] == 220, "v2 IPv6 greeting")
    check(relay_code(c)[0] == 250, "v2 IPv6: 2001:db8::7 may relay")
    c.close()
    c = Client(p1)
    c.s.sendall(v2(0, 0x00, None, None, 0, 0))
    check(c.reply()[0] == 220, "v2 LOCAL greeting")
    check(relay_code(c)[0] == 554, "v2 LOCAL keeps the real address (no relay)")
    c.close()

    # the header and the first command in one segment
    c = Client(p1)
    c.s.sendall(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 25\r\nEHLO pipelined.test\r\n")
    check(c.reply()[0] == 220 and c.reply()[0] == 250, "a command behind the header is kept")
    c.close()

    # required but missing, malformed, stalled: closed without a banner
    for what, data in (("no header", b"EHLO direct.test\r\n"),
                       ("bad v1 address", b"PROXY TCP4 999.1.2.3 127.0.0.1 1 25\r\n"),
                       ("v1 without CRLF", b"PROXY TCP4 10.1.2.3 127.0.0.1 1 25\n" + b"x" * 120),
                       ("bad v2 version", SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12),
                       ("v2 short address", SIG + b"\x21\x21\x00\x0c" + b"\x00" * 12)):
        c = Client(p1)
        c.s.sendall(data)
        check(c.closed(), "%s: closed without a banner" % what)
        c.close()
    c = Client(p1)
    c.s.sendall(b"PROX")
    check(c.closed(30), "a stalled header is cut off after Proxy_Protocol_Timeout")
    c.close()

    # Peer-scoped: only the trusted proxy 127.0.0.5 sends a header
    c = Client(p2)
    code, lines = c.reply()
    check(code == 220, "untrusted client: served at once: %r" % lines)
    code, lines = c.cmd("PROXY TCP4 10.1.2.3 127.0.0.1 5555 25")
    check(code >= 500, "untrusted client: a PROXY line is a bad command: %r" % lines)
    check(relay_code(c)[0] == 554, "untrusted client: no relay for it")
    c.close()
    c = Client(p2, "127.0.0.5")
    c.s.sendall(b"PROXY TCP4 10.1.2.3 127.0.0.5 5555 25\r\n")
    check(c.reply()[0] == 220, "trusted proxy: greeting after the header")
    check(relay_code(c)[0] == 250, "trusted proxy: the proxied client may relay")
    c.close()

    e.wait_for(lambda: len(e.records("D")) >= 1, 30, "the proxied message delivered")
    bodies = [open(os.path.join(d, f), "rb").read() for f in os.listdir(d) if f.endswith(".eml")]
    check(any(b"(10.1.2.3) by peer-scope.test" in b for b in bodies),
          "Received: names the proxied client and its Peer's banner")
    try:  # the listener writes its log between events: poll
        e.wait_for(lambda: "within Proxy_Protocol_Timeout" in e.read(e.paniclog), 10, "the log")
    except (RuntimeError, TimeoutError):
        pass
    pl = e.read(e.paniclog)
    check("Proxy_Protocol: malformed header from 127.0.0.1" in pl, "malformed header logged")
    check("within Proxy_Protocol_Timeout" in pl, "stalled header logged")
    check(e.stop() == 0, "engine stops cleanly")
finally:
    e.cleanup()
    sink.stop()
    sink.cleanup()
    shutil.rmtree(d, ignore_errors=True)

finish()
