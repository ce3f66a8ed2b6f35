#!/usr/bin/env python3
"""Memory of idle inbound sessions (issue 21): opens N connections to an
engine's ESMTP listener (sources spread over 127.0.0.2-201), reads every
greeting, sends EHLO on each and reads the reply, then prints the engine's
RSS growth per session (process memory; the kernel's socket buffers are
not in it). Needs `ulimit -n` above N for this process and the engine.
usage: idle_sessions.py ENGINE_PID PORT [N]"""
import socket
import sys
import time

pid, port = int(sys.argv[1]), int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000


def rss_kb():
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


r0 = rss_kb()
socks = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.%d" % (2 + i % 200), 0))
         for i in range(n)]
for s in socks:
    s.settimeout(10)
    s.recv(200)
for s in socks:
    s.sendall(b"EHLO idle.test\r\n")
for s in socks:
    d = b""
    while not d.endswith(b"\r\n") or b"250 " not in d:
        d += s.recv(1000)
time.sleep(1)
r1 = rss_kb()
print("engine RSS %d KB -> %d KB with %d idle sessions after EHLO: %.1f KB per session"
      % (r0, r1, n, (r1 - r0) / n))
