"""Helpers for the engine's end-to-end tests: a temporary spool and
configuration, impetus started and stopped by PID, pickup files written
atomically, the Momentum logs parsed, bounded waits everywhere."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sink"))
sys.path.insert(0, os.path.join(HERE, ".."))
import sinklib  # noqa: E402  (the sink's own helpers: start, stop, summary)
from testlib import free_port, read_text, stop_process, wait_until  # noqa: E402,F401

SKIP = 77


def start_dnsmasq(binary, records):
    """dnsmasq on a free UDP port of 127.0.0.1 serving `records` (its
    --mx-host/--host-record options); returns (process, port) once it
    answers a query (a port taken meanwhile by another test: a new one).
    The engine caches a failed lookup, so it must not ask too early."""
    import socket
    q = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
         b"\x05probe\x04test\x00\x00\x01\x00\x01")
    for _attempt in range(5):
        port = free_port(socket.SOCK_DGRAM)
        dns = subprocess.Popen([binary, "--no-daemon", "--port=%d" % port,
                                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                                "--no-hosts", "--pid-file=", "--local=/test/"] + list(records),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.settimeout(0.2)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and dns.poll() is None:
                try:
                    probe.sendto(q, ("127.0.0.1", port))
                    if probe.recv(512)[:2] == b"\x12\x34":
                        return dns, port
                except OSError:
                    time.sleep(0.1)
        finally:
            probe.close()
        if dns.poll() is None:
            dns.terminate()
        dns.wait()
    raise RuntimeError("dnsmasq did not answer on any of 5 ports")


class Engine:
    def __init__(self, impetus, conf_body, name="e2e"):
        self.impetus = impetus
        self.dir = tempfile.mkdtemp(prefix="impetus-%s." % name)
        self.spool = os.path.join(self.dir, "spool")
        self.pickup = os.path.join(self.spool, "pickup")
        os.makedirs(self.pickup)
        self.mainlog = os.path.join(self.dir, "mainlog.ec")
        self.paniclog = os.path.join(self.dir, "paniclog.ec")
        self.bouncelog = os.path.join(self.dir, "bouncelog.ec")
        self.jsonlog = os.path.join(self.dir, "events.jsonl")
        self.conf = os.path.join(self.dir, "impetus.conf")
        with open(self.conf, "w") as f:
            f.write('Spoolbase = "%s"\n' % self.spool)
            # tests run as root in CI with 0700 temp dirs: stay root (the
            # drop to User is tested by tests/crash/test_priv.py)
            f.write('User = "root"\nGroup = "root"\n')
            f.write('ec_logger { mainlog = "%s" paniclog = "%s" jsonlog = "%s" }\n'
                    % (self.mainlog, self.paniclog, self.jsonlog))
            f.write('bounce_logger { bouncelog = "%s" }\n' % self.bouncelog)
            f.write(conf_body)
        self.proc = None
        self.seq = 0

    def start(self):
        self.err = open(os.path.join(self.dir, "stderr"), "w+")
        self.proc = subprocess.Popen([self.impetus, "-c", self.conf],
                                     stdout=self.err, stderr=self.err)
        self.wait_for(lambda: "started" in self.read(self.paniclog), 10, "engine start")

    def stop(self):
        if self.proc is None:
            return 0
        try:
            rc = stop_process(self.proc, signal.SIGTERM, 20)
        except TimeoutError:
            raise RuntimeError("impetus did not stop within 20 s") from None
        self.proc = None
        return rc

    def cleanup(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        if os.environ.get("IMPETUS_TEST_KEEP"):
            print("kept: %s" % self.dir, file=sys.stderr)
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    def inject(self, sender, rcpts, body="Subject: test\n\nhello\n", binding=None, group=None,
               ctx=()):
        """Write a pickup file (write, then rename); ctx: (key, value)
        pairs written as x-context lines."""
        self.seq += 1
        lines = ["x-sender: <%s>" % sender]
        lines += ["x-receiver: <%s>" % r for r in rcpts]
        if binding:
            lines.append("x-binding: %s" % binding)
        if group:
            lines.append("x-binding-group: %s" % group)
        lines += ["x-context: %s=%s" % kv for kv in ctx]
        tmp = os.path.join(self.spool, ".inject-%d" % self.seq)
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n" + body)
        os.rename(tmp, os.path.join(self.pickup, "m%06d" % self.seq))

    read = staticmethod(read_text)

    def records(self, kind=None, path=None):
        out = []
        for line in self.read(path or self.mainlog).splitlines():
            f = line.split("@")
            if len(f) > 4 and (kind is None or f[4] == kind):
                out.append(f)
        return out

    def finals(self):
        """msgid -> list of D/P records (exactly one each is the goal)."""
        fin = {}
        for f in self.records():
            if f[4] in ("D", "P"):
                fin.setdefault(f[1], []).append(f)
        return fin

    def wait_for(self, cond, timeout, what):
        def alive():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("impetus exited (%d) while waiting for %s:\n%s"
                                   % (self.proc.returncode, what, self.read(self.err.name)))
        try:
            wait_until(cond, timeout, what, alive=alive)
        except TimeoutError:
            raise RuntimeError("timed out waiting for %s\nmainlog tail:\n%s\npaniclog:\n%s"
                               % (what, "\n".join(self.read(self.mainlog).splitlines()[-10:]),
                                  self.read(self.paniclog))) from None

    def queue_files(self):
        """Files of messages in queue/ (not the spool's own seal.check,
        which proves the secret key at start-up)."""
        n = 0
        q = os.path.join(self.spool, "queue")
        for root, _dirs, files in os.walk(q):
            n += sum(1 for f in files if not (root == q and f == "seal.check"))
        return n
