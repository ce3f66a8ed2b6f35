"""spool_driver for the pickup experiments (reuse_test.py, inplace_test.py):
a fresh spool in a temporary directory, the driver running its own ingest
threads with --tokens, and its output read without blocking into
.msgs (token -> whether the body ended in END) and .bad (BAD lines)."""
import os, select, shutil, subprocess, tempfile


class Driver:
    """exchange: Pickup_Claim = exchange (the driver's --exchange); producers
    then write their temporary files in .stage (beside pickup/, on the same
    file system) instead of inside pickup/, which the claim moves away."""
    def __init__(self, driver, prefix, exchange=False, setup=None):
        self.top = tempfile.mkdtemp(prefix=prefix)
        self.base = os.path.join(self.top, "spool")
        self.pickup = os.path.join(self.base, "pickup")
        self.claimed = os.path.join(self.base, "claim", "pickup")
        self.msgs, self.bad, self.partial = {}, [], b""
        self.proc = None
        flags = ["--exchange"] if exchange else []
        subprocess.run([driver, self.base, "--recover-only"] + flags, check=True,
                       capture_output=True)
        self.stage = self.pickup
        if exchange:
            self.stage = os.path.join(self.base, "stage")
            os.makedirs(self.stage, exist_ok=True)
        if setup:
            setup(self)
        self.proc = subprocess.Popen([driver, self.base, "--thread", "--tokens"] + flags,
                                     stdout=subprocess.PIPE)

    def drain(self, timeout):
        """Read what the driver printed, waiting up to timeout seconds."""
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return
        self.partial += os.read(self.proc.stdout.fileno(), 65536)
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            t = line.decode(errors="replace")
            if t.startswith("MSG ") and "tok=" in t:
                tok = int(t.split("tok=")[1].split()[0])
                self.msgs.setdefault(tok, []).append("end=1" in t)
            elif t.startswith("BAD "):
                self.bad.append(t)

    def close(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
        shutil.rmtree(self.top, ignore_errors=True)
