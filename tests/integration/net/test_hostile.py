#!/usr/bin/env python3
"""outsess against a tiny scripted hostile SMTP server: every misbehaviour
must end in a clean transient failure (never permanent, never a crash or a
hang; under ASan/UBSan the client is instrumented, so a memory error fails
the run), with every ring op drained at the end (net_client exits 4 on a
leak of in-flight ops).

usage: test_hostile.py NET_CLIENT
"""
import os
import socket
import struct
import subprocess
import sys
import threading
import time

CLIENT = sys.argv[1]
TIMEOUT = 2  # seconds, every smtpc timeout of the client

EHLO_REPLY = b"250-hostile.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n"
EHLO_TLS = b"250-hostile.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"


def readline(f):
    line = f.readline(65536)
    if not line:
        raise EOFError
    return line


def session(conn, mode, stop):
    f = conn.makefile("rb")
    send = conn.sendall
    try:
        if mode == "close":
            return
        if mode == "garbage":
            send(bytes(range(256)) * 4 + b"\r\n")
            time.sleep(TIMEOUT + 1)
            return
        if mode == "endless":
            send(b"220-")
            chunk = b"A" * 65536
            t_end = time.time() + TIMEOUT + 2
            while time.time() < t_end and not stop.is_set():
                send(chunk)
            return
        if mode == "continuation":
            send(b"220-hello\r\n" * 10000 + b"220 done\r\n")
            time.sleep(TIMEOUT + 1)
            return
        if mode == "drip":
            # a well-formed greeting, one byte every 0.3 s: slower than the timeout allows
            for b in b"220 slow.example ESMTP slowly but surely\r\n":
                if stop.is_set():
                    return
                send(bytes([b]))
                time.sleep(0.3)
            return
        if mode == "421":
            send(b"421 4.3.2 too busy, come back later\r\n")
            # keep the connection until the client, having read the 421, closes it
            conn.settimeout(TIMEOUT + 1)
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                pass
            return
        if mode == "unsolicited":
            send(b"220 hostile.test ESMTP\r\n")
            readline(f)  # EHLO
            send(EHLO_REPLY + b"250 surprise\r\n" * 2000)
            time.sleep(TIMEOUT + 1)
            return
        send(b"220 hostile.test ESMTP\r\n")
        line = readline(f)  # EHLO
        if mode == "tls11":
            # a server that speaks nothing newer than TLS 1.1: the client's
            # floor is TLS 1.2 (docs/security.md), so the handshake must fail
            send(EHLO_TLS)
            line = readline(f)
            if line.upper().startswith(b"STARTTLS"):
                send(b"220 2.0.0 go ahead\r\n")
                try:
                    TLS11_CTX.wrap_socket(conn, server_side=True)
                except (OSError, ValueError):
                    pass
            time.sleep(TIMEOUT + 1)
            return
        if mode == "tlsgarbage":
            send(EHLO_TLS)
            line = readline(f)
            if line.upper().startswith(b"STARTTLS"):
                send(b"220 2.0.0 go ahead\r\n")
                f.read1(4096) if hasattr(f, "read1") else None  # the ClientHello
                send(b"this is not a TLS record at all\r\n" * 10)
            time.sleep(TIMEOUT + 1)
            return
        send(EHLO_REPLY)
        # MAIL, RCPT, DATA (pipelined: answer each line)
        for _ in range(3):
            line = readline(f)
            if line.upper().startswith(b"DATA"):
                send(b"354 go ahead\r\n")
                break
            send(b"250 ok\r\n")
        if mode == "reset":
            f.read1(30000)  # some of the body, then a TCP reset mid-DATA
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        if mode == "silent-after-data":
            time.sleep(TIMEOUT + 1)
            return
    except (EOFError, OSError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


class Server:
    def __init__(self, mode):
        self.mode = mode
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=session, args=(c, self.mode, self.stop), daemon=True).start()

    def close(self):
        self.stop.set()
        self.sock.close()


BIG_BODY = None
TLS11_CTX = None


def tls11_context(tmp):
    """A server context limited to TLS 1.0-1.1 (None if this OpenSSL
    cannot offer them at all: then the case is skipped)."""
    import ssl
    key, crt = os.path.join(tmp, "k.pem"), os.path.join(tmp, "c.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "1", "-subj", "/CN=hostile.test"], capture_output=True)
    if r.returncode != 0:
        return None
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.load_cert_chain(crt, key)
        return ctx
    except (ssl.SSLError, ValueError, AttributeError):
        return None


def run_case(mode, extra=()):
    s = Server(mode)
    try:
        t0 = time.time()
        p = subprocess.run([CLIENT, "-p", str(s.port), "-t", "rcpt@x.test", "--timeout", str(TIMEOUT),
                            *extra], capture_output=True, text=True, timeout=60)
        dt = time.time() - t0
    finally:
        s.close()
    return p, dt


def main():
    global BIG_BODY, TLS11_CTX
    import tempfile
    tmp = tempfile.mkdtemp(prefix="impetus-hostile-")
    TLS11_CTX = tls11_context(tmp)
    BIG_BODY = os.path.join(tmp, "big.eml")
    with open(BIG_BODY, "wb") as f:
        f.write(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 4000)
    cases = [
        ("close", (), "network"),
        ("garbage", (), "protocol"),
        ("endless", (), "protocol"),
        ("continuation", (), "protocol"),
        ("drip", (), "timeout"),
        ("421", (), "transient"),
        ("unsolicited", (), None),
        ("reset", ("--body", BIG_BODY), "network"),
        ("silent-after-data", (), "timeout"),
        ("tlsgarbage", ("--tls", "required", "--verify", "no"), "transient"),
        ("tls11", ("--tls", "required", "--verify", "no"), "transient"),
    ]
    if TLS11_CTX is None:
        print("skip tls11: this OpenSSL cannot serve TLS 1.1 even at SECLEVEL 0")
        cases = [c for c in cases if c[0] != "tls11"]
    bad = []
    try:
        for mode, extra, kind in cases:
            p, dt = run_case(mode, extra)
            out = p.stdout
            failed = [l for l in out.splitlines() if l.startswith("failed")]
            ok = (p.returncode == 0 and len(failed) == 1 and "closed" in out
                  and not failed[0].startswith("failed permanent")
                  and (kind is None or failed[0].startswith("failed " + kind))
                  and dt < TIMEOUT * 4 + 5)
            if mode == "tlsgarbage" and ok:
                ok = "TLS" in failed[0]
            if mode == "tls11" and ok:  # refused for its version, nothing else
                ok = "TLS" in failed[0] and "protocol" in failed[0].lower()
            print(("ok  " if ok else "FAIL"), f"{mode:18} {dt:5.2f}s  {failed[0] if failed else out!r}")
            if not ok:
                print(out, p.stderr)
                bad.append(mode)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    if bad:
        print("failed cases:", bad)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
