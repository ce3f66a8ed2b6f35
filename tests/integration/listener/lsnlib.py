"""Helpers of the ESMTP_Listener's integration tests (one copy each): the
failure list and its exit, waiting for a port, and a raw SMTP client that
reads multi-line replies (and sees a close without a banner). Importing it
puts tests/integration/engine (enginelib, sinklib) and testlib on sys.path."""
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
import enginelib  # noqa: E402,F401
import sinklib  # noqa: E402,F401
from testlib import free_port, wait_until  # noqa: E402,F401

fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
        print("FAIL:", what)


def finish():
    """Exit 1 with the count when a check failed, else print ok."""
    if fails:
        print("%d failures" % len(fails))
        sys.exit(1)
    print("ok")


def can_connect(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def wait_port(port, deadline=10):
    """True once something accepts on 127.0.0.1:port (bounded)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if can_connect(port):
            return True
        time.sleep(0.1)
    return False


class Client:
    """One SMTP connection from `source`; replies as (code, lines), code 0
    when the server closed."""

    def __init__(self, port, source="127.0.0.1", timeout=20):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(source, 0))
        self.buf = b""

    def reply(self, timeout=20):
        self.s.settimeout(timeout)
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    d = self.s.recv(65536)
                except ConnectionResetError:
                    d = b""
                if not d:
                    return (0, lines)
                self.buf += d
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] == b" ":
                return (int(line[:3]), lines)

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\r\n")
        return self.reply()

    def closed(self, timeout=20):
        """True when the server closes without sending anything."""
        self.s.settimeout(timeout)
        try:
            return self.s.recv(1024) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def message(self, sender, rcpt, mid, body="hi\r\n"):
        """MAIL, RCPT, DATA and a message with Message-ID <mid@sender.test>;
        the replies up to the first refusal (the last is the answer)."""
        out = [self.cmd("MAIL FROM:<%s>" % sender)]
        if out[-1][0] == 250:
            out.append(self.cmd("RCPT TO:<%s>" % rcpt))
        if out[-1][0] == 250:
            out.append(self.cmd("DATA"))
        if out[-1][0] == 354:
            self.s.sendall(("Message-ID: <%s@sender.test>\r\nSubject: %s\r\n\r\n%s.\r\n"
                            % (mid, mid, body)).encode())
            out.append(self.reply())
        return out

    def close(self):
        self.s.close()
