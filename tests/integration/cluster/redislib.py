"""A redis-server of its own for a test: started on a free port of
127.0.0.1 with no persistence, stopped (and restarted) by PID; INFO
commandstats read with redis-cli. Every wait has a deadline.

Redis(tls=True, password=...) serves only TLS (--port 0 --tls-port N)
with a throwaway CA and certificates made by `openssl req` in its temp
dir (make_certs), asks clients for a certificate (Redis's default) and
for the password (requirepass)."""
import os
import shutil
import signal
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
import testlib  # noqa: E402  (tests/integration/testlib.py)
from testlib import free_port  # noqa: E402


def eventually(cond, timeout, step=0.05):
    """testlib.wait_until for a check: cond()'s true value, or False once
    the deadline has passed (the test records a failure and goes on)."""
    try:
        return testlib.wait_until(cond, timeout, "a check", interval=step)
    except TimeoutError:
        return False


def openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), r.stdout.decode()))


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=%s" % name, "-keyout", name + ".key", "-out", name + ".pem", cwd=d)


def make_cert(d, ca, name, san):
    """name.pem / name.key signed by ca, with subjectAltName san."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name,
            "-keyout", name + ".key", "-out", name + ".csr", cwd=d)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName = %s\n" % san)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem",
            cwd=d)


def make_certs(d):
    """A CA with a server certificate for localhost and 127.0.0.1 and a
    client certificate; another CA nobody uses (a wrong tls_ca_file); a
    server certificate that names only "localhost" (a host name check
    against 127.0.0.1 fails). Paths by name."""
    if not shutil.which("openssl"):
        skip("openssl not installed")
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_cert(d, "ca", "server", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "ca", "client", "DNS:impetus-node")
    make_cert(d, "ca", "namedonly", "DNS:localhost")
    return {k: os.path.join(d, k) for k in ("ca.pem", "otherca.pem", "server.pem", "server.key",
                                            "client.pem", "client.key", "namedonly.pem",
                                            "namedonly.key")}


class Redis:
    def __init__(self, tls=False, password=None, server_cert="server"):
        self.server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        if not (os.access(self.server, os.X_OK) and os.access(self.cli, os.X_OK)):
            skip("redis-server / redis-cli not installed (tools/setup.sh installs them)")
        self.dir = tempfile.mkdtemp(prefix="impetus-redis.")
        self.port = free_port()
        self.proc = None
        self.tls = tls
        self.password = password
        self.certs = make_certs(self.dir) if tls else None
        self.server_cert = server_cert
        self.start()

    @property
    def url(self):
        return self.url_with(self.password)

    def url_with(self, password, host="127.0.0.1"):
        """The URL with this password (None: none); percent-encoded."""
        from urllib.parse import quote
        auth = ":%s@" % quote(password, safe="") if password else ""
        return "%s://%s%s:%d/0" % ("rediss" if self.tls else "redis", auth, host, self.port)

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "a")
        args = [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no"]
        if self.tls:
            c = self.certs
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", c[self.server_cert + ".pem"],
                     "--tls-key-file", c[self.server_cert + ".key"],
                     "--tls-ca-cert-file", c["ca.pem"], "--tls-auth-clients", "yes"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
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
        cmd = [self.cli, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", self.certs["ca.pem"], "--cert", self.certs["client.pem"],
                    "--key", self.certs["client.key"], "--sni", "localhost"]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        r = subprocess.run(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           timeout=10, env=env)
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
