"""Helpers shared by the integration and crash tests (the one copy of
each): a free port of 127.0.0.1, a poll with a deadline, stopping a process
by PID, reading a log that may not exist yet.

A script in tests/integration/AREA/ imports it after
`sys.path.insert(0, os.path.join(HERE, ".."))`, one in tests/crash/ after
`sys.path.insert(0, os.path.join(HERE, "..", "integration"))`; enginelib
puts this directory on sys.path too, so whatever imports enginelib first
can simply `from testlib import ...`."""
import signal
import socket
import subprocess
import time


def free_port(kind=socket.SOCK_STREAM):
    """A port of 127.0.0.1 free now (TCP by default; kind=SOCK_DGRAM for
    UDP). Another process may take it before the caller binds it: callers
    that can retry on EADDRINUSE should."""
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_until(cond, timeout, what, interval=0.05, alive=None):
    """Poll cond() until it returns something true (returned) or timeout
    seconds pass (TimeoutError naming `what`). alive, when given, is called
    at each round and may raise (e.g. the process under test exited)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %g s waiting for %s" % (timeout, what))
        time.sleep(interval)


def wait_stable(snapshot, timeout, what, interval=0.2):
    """Poll snapshot() until two results `interval` seconds apart are equal
    (the thing observed has stopped changing); returns that result."""
    prev = [snapshot()]

    def settled():
        time.sleep(interval)
        cur = snapshot()
        same, prev[0] = cur == prev[0], cur
        return same
    wait_until(settled, timeout, what, interval=0)
    return prev[0]


def stop_process(proc, sig=signal.SIGTERM, timeout=20):
    """Send sig to a Popen by PID and reap it; SIGKILL after timeout seconds
    (then TimeoutError). Returns its exit status (None if already reaped)."""
    if proc is None:
        return None
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise TimeoutError("pid %d did not exit within %g s of signal %d"
                           % (proc.pid, timeout, sig))


def read_text(path):
    """The file's text, or "" while it does not exist."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def read_jsonl(path):
    """The complete records of a JSON-lines file another process is still
    appending to: a last line without its newline is being written and is
    left for the next call. A missing file has no records."""
    import json
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n") and line.strip():
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out
