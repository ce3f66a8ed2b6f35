#!/usr/bin/env python3
"""impetus-inject -bs: SMTP on standard input and output, driven the way
PHP's Symfony Mailer drives `sendmail -bs` (lock-step: read the greeting,
EHLO, MAIL, RCPT..., DATA, the dot-stuffed message, QUIT); a pipelined
session; refusals; an unusable pickup directory; and, with the engine
running, the message delivered to impetus-sink.
usage: test_bs.py IMPETUS_INJECT [IMPETUS IMPETUS_SINK]"""
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))

inject = sys.argv[1]
top = tempfile.mkdtemp(prefix="impetus-inject-bs-")
fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
        print("FAIL:", what)


class Mailer:
    """The client side of `sendmail -bs` over two pipes, as Symfony's
    SendmailTransport + SmtpTransport use them."""

    def __init__(self, args):
        self.p = subprocess.Popen([inject, "-bs"] + args, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""

    def reply(self, timeout=10):
        """One whole reply: (code, [lines])."""
        lines = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" not in self.buf:
                left = deadline - time.monotonic()
                r, _, _ = select.select([self.p.stdout], [], [], max(left, 0))
                if not r:
                    raise TimeoutError("no reply; got %r" % (lines,))
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError("EOF; got %r" % (lines,))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] == b" ":
                return int(line[:3]), lines

    def send(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.p.wait(timeout=10)
        self.p.stdout.close()
        self.p.stderr.close()
        return rc


def new_spool(name):
    s = os.path.join(top, name)
    os.makedirs(os.path.join(s, "pickup"))
    return s


def pickup(s):
    d = os.path.join(s, "pickup")
    return [open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))]


def stuff(body):
    """Symfony's dot-stuffing: CRLF line ends, a leading dot doubled."""
    out = []
    for line in body.replace(b"\r\n", b"\n").split(b"\n"):
        out.append(b"." + line if line.startswith(b".") else line)
    return b"\r\n".join(out)


BODY = (b"From: App <app@example.com>\r\nTo: a@example.net\r\nSubject: from php\r\n"
        b"Message-ID: <bs-1@example.com>\r\n\r\nHello,\r\n.a line with a leading dot\r\n"
        b"..two\r\nbye\r\n")

try:
    # 1. Lock-step, two messages, like a mailer that keeps the process.
    s = new_spool("lockstep")
    m = Mailer(["--spool", s])
    code, lines = m.reply()
    check(code == 220 and "impetus-inject" in lines[0], "greeting %r" % lines)
    code, lines = m.cmd("EHLO [127.0.0.1]")
    check(code == 250 and "250-PIPELINING" in lines and "250-8BITMIME" in lines, "EHLO %r" % lines)
    check(m.cmd("MAIL FROM:<app@example.com>")[0] == 250, "MAIL")
    check(m.cmd("RCPT TO:<a@example.net>")[0] == 250, "RCPT a")
    check(m.cmd("RCPT TO:<b@example.net>")[0] == 250, "RCPT b")
    check(m.cmd("RCPT TO:<not an address>")[0] == 553, "bad RCPT refused with 553")
    check(m.cmd("DATA")[0] == 354, "DATA")
    m.send(stuff(BODY) + b".\r\n")
    code, lines = m.reply()
    check(code == 250 and "queued as" in lines[0], "end of data %r" % lines)
    check(len(pickup(s)) == 1, "the file is in pickup/ when 250 arrives")
    check(m.cmd("MAIL FROM:<>")[0] == 250, "second MAIL, null sender")
    check(m.cmd("RCPT TO:<c@example.net>")[0] == 250, "second RCPT")
    check(m.cmd("DATA")[0] == 354, "second DATA")
    m.send(b"Subject: two\r\n\r\nsecond\r\n.\r\n")
    check(m.reply()[0] == 250, "second message")
    check(m.cmd("QUIT")[0] == 221, "QUIT")
    check(m.close() == 0, "exit 0 after QUIT")
    files = pickup(s)
    check(len(files) == 2, "two pickup files: %d" % len(files))
    if len(files) == 2:
        first = [f for f in files if b"from php" in f]
        check(len(first) == 1, "first message found")
        f = first[0] if first else b""
        check(f.startswith(b"x-sender: <app@example.com>\nx-receiver: <a@example.net>\n"
                           b"x-receiver: <b@example.net>\nReceived: from [127.0.0.1] by "),
              "envelope and Received: %r" % f[:200])
        check(f.endswith(BODY), "message unstuffed and unchanged")
        second = [f for f in files if b"Subject: two" in f]
        check(second and second[0].startswith(b"x-sender: <>\nx-receiver: <c@example.net>\n"),
              "second envelope")

    # 2. Pipelined: the whole session in one write; replies in order.
    s = new_spool("pipelined")
    m = Mailer(["--spool", s])
    m.send(b"EHLO client\r\nMAIL FROM:<x@example.com>\r\nRCPT TO:<y@example.net>\r\nDATA\r\n"
           b"Subject: p\r\n\r\nbody\r\n.\r\nRSET\r\nQUIT\r\n")
    codes = [m.reply()[0] for _ in range(7)]
    check(codes == [220, 250, 250, 250, 354, 250, 250], "pipelined replies %r" % codes)
    check(m.reply()[0] == 221, "QUIT pipelined")
    check(m.close() == 0, "exit 0")
    check(len(pickup(s)) == 1, "pipelined message queued")
    f = pickup(s)[0] if pickup(s) else b""
    check(b"\nMessage-ID: <" in f and b"\nDate: " in f, "Date: and Message-ID: added: %r" % f[:300])

    # 3. A mailer that goes away mid-message: nothing is queued.
    s = new_spool("eof")
    m = Mailer(["--spool", s])
    m.reply()
    m.cmd("HELO x")
    m.cmd("MAIL FROM:<x@example.com>")
    m.cmd("RCPT TO:<y@example.net>")
    m.cmd("DATA")
    m.send(b"Subject: cut\r\n\r\nhalf")
    check(m.close() == 0, "EOF exit")
    check(pickup(s) == [], "no file for a message cut short")

    # 4. No usable pickup directory: 421 at once, exit 73.
    m = Mailer(["--spool", os.path.join(top, "missing")])
    code, lines = m.reply()
    check(code == 421, "421 when the pickup directory is missing: %r" % lines)
    check(m.close() == 73, "exit 73")

    # 5. With the engine: the message reaches impetus-sink.
    if len(sys.argv) >= 4:
        import enginelib
        import sinklib
        d = tempfile.mkdtemp(prefix="bs-sink.")
        jl = os.path.join(d, "msgs.jsonl")
        sink = sinklib.Sink(sys.argv[3], ["--jsonl", jl, "--save-dir", d])
        e = enginelib.Engine(sys.argv[2], 'TLS = "no"\nGateway = "127.0.0.1:%d"\n' % sink.port, "bs")
        try:
            e.start()
            m = Mailer(["--spool", e.spool])
            m.reply()
            m.cmd("EHLO [127.0.0.1]")
            m.cmd("MAIL FROM:<app@example.com>")
            m.cmd("RCPT TO:<a@example.net>")
            m.cmd("DATA")
            m.send(stuff(BODY) + b".\r\n")
            check(m.reply()[0] == 250, "engine spool: 250")
            m.cmd("QUIT")
            m.close()
            e.wait_for(lambda: len(e.records("D")) == 1, 30, "delivered")
            recs = [json.loads(l) for l in open(jl) if l.strip()] if os.path.exists(jl) else []
            check(len(recs) == 1 and recs[0]["rcpts"] == ["a@example.net"]
                  and recs[0]["mail_from"] == "app@example.com", "sink record %r" % recs)
            if recs:
                got = open(recs[0]["file"], "rb").read()
                check(got.endswith(BODY) and b"Received: from [127.0.0.1]" in got,
                      "delivered body %r" % got[-120:])
        finally:
            e.stop()
            e.cleanup()
            sink.stop()
            sink.cleanup()
            shutil.rmtree(d, ignore_errors=True)
finally:
    shutil.rmtree(top, ignore_errors=True)

if fails:
    print("%d failures" % len(fails))
    sys.exit(1)
print("ok")
