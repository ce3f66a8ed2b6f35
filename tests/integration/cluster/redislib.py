"""A redis-server of its own for a test: started on a free port of
127.0.0.1 with no persistence, stopped (and restarted) by PID; INFO
commandstats read with redis-cli. Every wait has a deadline."""
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


FAILS = []


def expect(cond, what):
    """Record a check; every check runs, the test fails at the end."""
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILS.append(what)


def run_scenario(fn, redis, *args):
    """fn(*args, redis) with Redis stopped and removed afterwards; the
    process exit status (1 when a check failed)."""
    try:
        fn(*args, redis)
    finally:
        redis.cleanup()
    if FAILS:
        print("FAILED: " + "; ".join(FAILS))
        return 1
    return 0


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import free_port  # noqa: E402  (tests/integration/testlib.py)


class Redis:
    def __init__(self):
        self.server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        if not (os.access(self.server, os.X_OK) and os.access(self.cli, os.X_OK)):
            skip("redis-server / redis-cli not installed (tools/setup.sh installs them)")
        self.dir = tempfile.mkdtemp(prefix="impetus-redis.")
        self.port = free_port()
        self.proc = None
        self.start()

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "a")
        self.proc = subprocess.Popen(
            [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no"],
            stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: see %s/redis.log" % self.dir)
            if self.call("PING").strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def call(self, *args):
        r = subprocess.run([self.cli, "-h", "127.0.0.1", "-p", str(self.port)] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
        return r.stdout.decode(errors="replace")

    def commandstats(self):
        """command name -> calls, from INFO commandstats."""
        out = {}
        for line in self.call("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[8:].split(":", 1)
                for kv in rest.split(","):
                    k, v = kv.split("=")
                    if k == "calls":
                        out[name] = int(v)
        return out

    def total_calls(self, exclude=("info", "ping", "config|resetstat", "config")):
        return sum(v for k, v in self.commandstats().items() if k not in exclude)

    def reset_stats(self):
        self.call("CONFIG", "RESETSTAT")

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
