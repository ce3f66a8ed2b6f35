"""Helpers for the impetus-sink integration tests: start the sink on free
ports of 127.0.0.1 (port 0 + --ready-file), stop it by PID, parse its JSON
summary. Every wait has a deadline."""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77


def skip(why):
    print("SKIP: " + why)
    sys.exit(SKIP)


class Sink:
    def __init__(self, binary, args, tls=False, extra_listen=(), env=None, preexec_fn=None):
        self.dir = tempfile.mkdtemp(prefix="sinktest.")
        self.ready = os.path.join(self.dir, "ready")
        cmd = [binary, "--listen", "127.0.0.1:0", "--ready-file", self.ready]
        for l in extra_listen:
            cmd += ["--listen", l]
        if tls:
            cmd += ["--tls-listen", "127.0.0.1:0"]
        cmd += list(args)
        self.out = open(os.path.join(self.dir, "stdout"), "w+")
        self.err = open(os.path.join(self.dir, "stderr"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=self.err,
                                     env=env, preexec_fn=preexec_fn)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                raise RuntimeError("sink exited: " + self.stderr())
            if time.monotonic() > deadline:
                raise RuntimeError("sink did not become ready")
            time.sleep(0.01)
        self.plain = []
        self.tls = []
        with open(self.ready) as f:
            for line in f:
                kind, addr = line.split()
                if kind == "pid":
                    continue
                host, port = addr.rsplit(":", 1)
                (self.tls if kind == "tls" else self.plain).append((host.strip("[]"), int(port)))
        self.port = self.plain[0][1]

    def stderr(self):
        self.err.flush()
        with open(self.err.name) as f:
            return f.read()

    def summary_now(self):
        """SIGUSR1: the sink prints its summary and keeps running."""
        before = os.path.getsize(self.out.name)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(self.out.name) as f:
                data = f.read()
            if len(data) > before and data.rstrip().endswith("}"):
                return json.loads(data[before:])
            time.sleep(0.01)
        raise RuntimeError("no summary after SIGUSR1")

    def stop(self):
        """SIGTERM by PID; returns the parsed JSON summary."""
        before = os.path.getsize(self.out.name)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if rc != 0:
            raise RuntimeError("sink exit status %d: %s" % (rc, self.stderr()))
        with open(self.out.name) as f:
            return json.loads(f.read()[before:])

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.cleanup()


def certs(root):
    """Self-signed pair via tools/mkcert.sh; returns (cert, key)."""
    if not shutil.which("openssl"):
        skip("openssl not installed")
    d = tempfile.mkdtemp(prefix="sinkcert.")
    subprocess.run([os.path.join(root, "tools", "mkcert.sh"), d], check=True,
                   stdout=subprocess.DEVNULL)
    return os.path.join(d, "cert.pem"), os.path.join(d, "key.pem"), d


def users_file(d, pairs):
    p = os.path.join(d, "users")
    with open(p, "w") as f:
        for u, pw in pairs:
            f.write("%s:%s\n" % (u, pw))
    return p


class Raw:
    """A raw SMTP client socket for transcripts the stdlib will not make."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=5):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            self.s.bind((source, 0))
        self.s.settimeout(timeout)
        self.s.connect((host, port))
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data)

    def read_reply(self, deadline=5):
        """One complete (possibly multi-line) reply: list of lines."""
        lines = []
        end = time.monotonic() + deadline
        while True:
            while b"\n" not in self.buf:
                if time.monotonic() > end:
                    raise TimeoutError("no reply, have %r" % self.buf[:200])
                d = self.s.recv(65536)
                if not d:
                    raise ConnectionError("closed, have %r" % self.buf[:200])
                self.buf += d
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.rstrip(b"\r").decode("latin-1")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def code(self, deadline=5):
        return int(self.read_reply(deadline)[-1][:3])

    def read_all(self, deadline=5, limit=1 << 30):
        """Everything until EOF (or limit bytes)."""
        end = time.monotonic() + deadline
        data = self.buf
        self.buf = b""
        while len(data) < limit:
            if time.monotonic() > end:
                raise TimeoutError("no EOF")
            try:
                d = self.s.recv(65536)
            except ConnectionResetError:
                return data, "reset"
            if not d:
                return data, "eof"
            data += d
        return data, "limit"

    def close(self):
        self.s.close()


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def summary_check(cond, what):
    if not cond:
        raise AssertionError(what)
