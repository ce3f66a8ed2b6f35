"""Helpers for adaptive delivery's end-to-end tests: a scripted SMTP peer
that answers MAIL as a scenario says (Gmail's multi-line 421-4.7.28 after
five messages, "451 slow down" for the first few...), records when each
command and message arrived and how many connections were open at once,
plus the outcome check every scenario ends with: no recipient bounced or
failed, each has exactly one D record or is still queued."""
import contextlib
import os
import socket
import socketserver
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
from enginelib import Engine, SKIP, start_dnsmasq  # noqa: E402,F401

# Gmail's reply when it rate-limits a sending IP, as its SMTP error
# reference lists it (https://support.google.com/a/answer/3726730), in the
# multi-line form its MX hosts send.
GMAIL_421 = ("421-4.7.28 [127.0.0.1      15] Our system has detected an unusual rate of\r\n"
             "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
             "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\r\n"
             "421-4.7.28 rate limited. Please visit\r\n"
             "421-4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\r\n"
             "421 4.7.28 review our Bulk Email Senders Guidelines. a1b2c3 - gsmtp")


class Peer:
    """A scripted SMTP server on 127.0.0.1 (a free port), one thread per
    connection, no PIPELINING: every command is answered in turn.
    mail_reply(n) decides the answer to the n-th MAIL (0-based, over all
    connections): None accepts it, (text, close) answers text (CRLF between
    lines) and closes the connection when close is true; by_sender(n,
    reverse_path) decides instead when given. dot_delay keeps a connection
    busy before the reply to the end of data. addr: where it listens."""

    def __init__(self, mail_reply=None, dot_delay=0.0, by_sender=None, addr=("127.0.0.1", 0)):
        if by_sender is not None:  # by_sender(n, reverse_path) instead of mail_reply(n)
            self.mail_reply = lambda n, path: by_sender(n, path)
        else:
            self.mail_reply = (lambda n, path: mail_reply(n)) if mail_reply else (lambda n, p: None)
        self.dot_delay = dot_delay
        self.lock = threading.Lock()
        self.mails = []       # (time, n, answer code)
        self.messages = []    # (time, mail_from, rcpts)
        self.open = 0
        self.max_open = 0
        self.connections = 0
        peer = self

        class H(socketserver.StreamRequestHandler):
            timeout = 30

            def handle(self):
                with peer.lock:
                    peer.open += 1
                    peer.connections += 1
                    peer.max_open = max(peer.max_open, peer.open)
                try:
                    peer._session(self.rfile, self.wfile)
                except (OSError, ValueError):
                    pass
                finally:
                    with peer.lock:
                        peer.open -= 1

        class S(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = S(addr, H)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _session(self, rf, wf):
        def send(text):
            wf.write((text + "\r\n").encode())
            wf.flush()

        send("220 peer.test ESMTP")
        mail_from, rcpts = None, []
        while True:
            line = rf.readline(4096)
            if not line:
                return
            cmd = line.decode(errors="replace").strip()
            verb = cmd[:4].upper()
            if verb == "EHLO":
                send("250-peer.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES")
            elif verb == "HELO":
                send("250 peer.test")
            elif verb == "MAIL":
                with self.lock:
                    n = len(self.mails)
                    answer = self.mail_reply(n, cmd[10:].strip())
                    self.mails.append((time.monotonic(), n, answer[0][:3] if answer else "250"))
                if answer:
                    send(answer[0])
                    if answer[1]:
                        return
                    continue
                mail_from, rcpts = cmd[10:].strip(), []
                send("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(cmd[8:].strip())
                send("250 2.1.5 Ok")
            elif verb == "DATA":
                send("354 End data with <CR><LF>.<CR><LF>")
                while True:
                    d = rf.readline(1 << 20)
                    if not d or d in (b".\r\n", b".\n"):
                        break
                if self.dot_delay:
                    time.sleep(self.dot_delay)
                with self.lock:
                    self.messages.append((time.monotonic(), mail_from, list(rcpts)))
                send("250 2.0.0 Ok: queued")
            elif verb == "RSET":
                mail_from, rcpts = None, []
                send("250 2.0.0 Ok")
            elif verb == "NOOP":
                send("250 2.0.0 Ok")
            elif verb == "QUIT":
                send("221 2.0.0 Bye")
                return
            else:
                send("502 5.5.2 Error: command not recognized")

    def arrivals(self):
        with self.lock:
            return [t for t, _f, _r in self.messages]

    def mail_times(self):
        with self.lock:
            return list(self.mails)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def max_in_window(times, width):
    """The most events in any half-open window [t, t + width)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def outcomes(e, injected, refused=0):
    """Every recipient has exactly one D record, or none and its message is
    still in the queue; no P record and no bounce at all (adaptive actions
    only delay), except `refused`: recipients the peer itself refused with
    a 5xx, each with exactly one P. Returns (delivered, pending)."""
    recs = e.records("R")
    check(len(recs) == injected, "%d R records for %d recipients" % (len(recs), injected))
    fin = e.finals()
    perm = [f for fs in fin.values() for f in fs if f[4] == "P"]
    check(len(perm) == refused, "%d P records, for the peer's own 5xx only: %r"
          % (refused, perm[:3]))
    if not refused:
        check(not e.read(e.bouncelog).strip(), "no bounce in the bouncelog")
    delivered = sum(1 for r in recs if len(fin.get(r[1], [])) == 1 and fin[r[1]][0][4] == "D")
    twice = [r[1] for r in recs if len(fin.get(r[1], [])) > 1]
    check(not twice, "no recipient delivered twice: %r" % twice[:3])
    pending = len(recs) - delivered - refused
    if pending:
        check(message_files(e) > 0, "%d recipients not delivered are still queued" % pending)
    return delivered, pending


def message_files(e):
    """Files of queued messages (the spool's own bookkeeping, such as
    queue/seal.check, left out)."""
    n = 0
    for root, _dirs, files in os.walk(os.path.join(e.spool, "queue")):
        n += sum(1 for f in files if f != "seal.check")
    return n


def delivered(e):
    """D records in the mainlog."""
    return sum(1 for fs in e.finals().values() for f in fs if f[4] == "D")


@contextlib.contextmanager
def engine_running(impetus, conf, name, peer, dns=None):
    """impetus started on conf (once dnsmasq has settled), then cleaned up
    with the peer and dnsmasq whatever happens."""
    e = Engine(impetus, conf, name)
    try:
        e.start()  # start_dnsmasq returned once dnsmasq answered
        yield e
    finally:
        e.cleanup()
        peer.stop()
        if dns is not None:
            dns.terminate()
            dns.wait()


def report():
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    return 0
