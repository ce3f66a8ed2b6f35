#!/usr/bin/python3
"""DKIM signing in the engine, end to end (issue 22): impetus signs each
message once at ingest with Momentum's opendkim configuration and delivers
it to impetus-sink by BDAT and by DATA; what arrived is verified by dkimpy
(RSA and Ed25519), OpenDKIM's verifier (RSA and Ed25519) and Mail::DKIM
(RSA). Messages come from pickup files
(deliver) and from SMTP clients of the ESMTP_Listener by DATA and by BDAT
(listener). A signed message survives kill -9 and a restart with the same
signature (restart). A second signature from Lua (lua). Signing held by
a test hook does not hold up unsigned mail nor give an SMTP client its
reply early (nonblocking); kill -9 while signing loses nothing and sends
nothing unsigned (held-crash). Bounces the engine generates are signed
when a dkim_domain names their From: domain (dsn).

usage: test_dkim_engine.py IMPETUS SINK SCENARIO
       (deliver | listener | restart | lua | nonblocking | held-crash | dsn
        | nonblocking-exchange | held-crash-exchange)
"""
import contextlib
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
from enginelib import Engine  # noqa: E402
sys.path.insert(0, HERE)
from dkimkeys import make_key, opendkim_verify, OPENDKIM  # noqa: E402
import sinklib  # noqa: E402
from testlib import free_port, wait_until  # noqa: E402

SKIP = 77
try:
    import dkim
    import nacl  # noqa: F401
except ImportError:
    print("SKIP: python3-dkim or python3-nacl is not installed")
    sys.exit(SKIP)
if not shutil.which("openssl"):
    print("SKIP: openssl is not installed")
    sys.exit(SKIP)
PERL = os.path.join(HERE, "verify_maildkim.pl")
HAVE_PERL = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
                           capture_output=True).returncode == 0

failures = []


def expect(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def make_keys(d):
    """rsa.test/r.key (RSA-2048) and ed.test/e.key (Ed25519), mode 0600;
    returns the DNS records by query name."""
    recs = {}
    for dom, sel, kind in (("rsa.test", "r", "rsa"), ("ed.test", "e", "ed25519")):
        os.makedirs(os.path.join(d, dom), exist_ok=True)
        recs["%s._domainkey.%s" % (sel, dom)] = make_key(os.path.join(d, dom, sel + ".key"), kind)
    return recs


def dkim_conf(keydir):
    return ('opendkim "opendkim1" {\n'
            '  header_canon = "relaxed"\n'
            '  body_canon = "simple"\n'
            '  headerlist = ("from", "to", "subject", "date", "message-id")\n'
            '  oversign_headerlist = ( "from" )\n'
            '  key = "%s/%%{d}/%%{s}.key"\n'
            '  dkim_domain "rsa.test" { selector = "r" }\n'
            '  dkim_domain "ed.test" {\n'
            '    selector = "e"\n'
            '    digest = "ed25519-sha256"\n'
            '    body_canon = "relaxed"\n'
            '  }\n'
            '}\n'
            'Domain "nosign.test" { opendkim_sign = false }\n' % keydir)


BODIES = {
    "crlf": "Subject: crlf\r\nTo: x@c.test\r\n\r\nline one\r\n.dot line\r\n\r\n",
    "lf": "Subject: lf\nTo: x@c.test\n\n" + (".l" + "x" * 60 + "\n") * 1200,  # ~75 KB, LF only
    "bare": "Subject: bare\r\n\r\nno newline at the end",
    "mixed": "Subject: mixed\r\n\r\na\rb\nc\r\n.\r\n..\r\n\r\n\r\n",
    "eightbit": "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                "caf\u00e9 na\u00efve\r\n",
}


def dns_of(recs):
    """dkimpy's dnsfunc answering from recs {name: TXT record}."""
    def dnsfunc(name, timeout=5):
        r = recs.get(name.decode().rstrip("."))
        return r.encode() if r else None
    return dnsfunc


def verify(raw, recs, label, want_sigs=1):
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]  # not a bounce's quoted headers
    sigs = len(re.findall(rb"(?mi)^DKIM-Signature:", head))
    expect(sigs == want_sigs, "%s: %d DKIM-Signature field(s), want %d" % (label, sigs, want_sigs))
    if not want_sigs:
        return

    dnsfunc = dns_of(recs)
    try:
        ok = dkim.verify(raw, dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        ok = False
        print("      dkimpy:", e)
    expect(ok, "%s: dkimpy verifies" % label)
    if OPENDKIM:
        with tempfile.TemporaryDirectory() as t:
            od = opendkim_verify(raw, recs, t)
        expect(od == ["pass"] * want_sigs, "%s: OpenDKIM: %s" % (label, od))
    if HAVE_PERL and b"a=rsa-sha256" in raw:
        with tempfile.NamedTemporaryFile(suffix=".eml") as f:
            f.write(raw)
            f.flush()
            args = ["%s=%s" % (k, v) for k, v in recs.items() if "rsa" in v]
            r = subprocess.run(["perl", PERL, f.name, *args], capture_output=True)
        # Mail::DKIM 1.2023 has no Ed25519: such a signature is "unsupported"
        lines = r.stdout.decode().strip().splitlines()
        good = all(l.endswith(": pass") or "unsupported algorithm ed25519" in l for l in lines)
        expect(good and any(l.endswith(": pass") for l in lines),
               "%s: Mail::DKIM: %s" % (label, "; ".join(lines)))


def received(sink_save):
    """rcpt local part -> bytes, from the sink's saved files and jsonl."""
    import json
    out = {}
    with open(sink_save["jsonl"]) as f:
        for line in f:
            if line.strip():
                m = json.loads(line)
                with open(m["file"], "rb") as g:
                    out[m["rcpts"][0]] = g.read()
    return out


def start_sink(sinkbin, tmp, name, *extra):
    save = os.path.join(tmp, name)
    os.makedirs(save)
    jl = os.path.join(tmp, name + ".jsonl")
    s = sinklib.Sink(sinkbin, ["--save-dir", save, "--jsonl", jl] + list(extra))
    return s, {"jsonl": jl}


def drop_sinks(tmp, *sinks):
    """Stop (if running) and remove the sinks, then the test's directory."""
    for s in sinks:
        if s is not None:
            if s.proc.poll() is None:
                s.stop()
            s.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)


def final_count(e):
    return sum(1 for f in e.records() if f[4] in ("D", "P"))


def each_transfer_mode(imp, sinkbin, name, extra_conf, send):
    """For delivery by BDAT, then by DATA (a sink with --no-chunking): an
    engine with the DKIM configuration plus extra_conf(); send(mode, e)
    hands it messages and returns {recipient: DKIM-Signature fields
    wanted}; then every message is delivered in that transfer mode, and
    each arrived with its signatures, verified."""
    tmp = tempfile.mkdtemp(prefix=name + ".")
    sinks = []
    try:
        recs = make_keys(tmp)
        for mode in ("bdat", "data"):
            sink, info = start_sink(sinkbin, tmp, mode, *([] if mode == "bdat" else
                                                         ["--no-chunking"]))
            sinks.append(sink)
            conf = ('Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n' % sink.port
                    + extra_conf() + dkim_conf(tmp))
            e = Engine(imp, conf, "%s-%s" % (name, mode))
            try:
                e.start()
                want = send(mode, e)
                e.wait_for(lambda: final_count(e) >= len(want), 60, "final records")
                expect(len(e.records("D")) == len(want),
                       "%s: all %d delivered" % (mode, len(want)))
                got = received(info)
                summ = sink.summary_now()
                expect((summ["bdat_messages"] > 0) == (mode == "bdat"),
                       "%s: transfer mode (bdat_messages=%d)" % (mode, summ["bdat_messages"]))
                for rc, nsigs in want.items():
                    verify(got.get(rc, b""), recs, "%s %s" % (mode, rc), nsigs)
                expect(e.stop() == 0, "%s: exit status" % mode)
            finally:
                e.cleanup()
    finally:
        drop_sinks(tmp, *sinks)


def scenario_deliver(imp, sinkbin):
    """Pickup files, every body of BODIES from both signing domains."""
    def send(mode, e):
        want = {}
        for dom in ("rsa.test", "ed.test"):
            for name, body in BODIES.items():
                rc = "%s-%s@c.test" % (name, dom)
                e.inject("a@%s" % dom, [rc], body="From: Sender <a@%s>\r\n%s" % (dom, body))
                want[rc] = 1
        # not signed: opendkim_sign = false for the recipient's domain,
        # and a responsible domain no dkim_domain names
        e.inject("a@rsa.test", ["off@nosign.test"], body="From: a@rsa.test\n\nx\n")
        e.inject("a@other.test", ["other@c.test"], body="From: a@other.test\n\nx\n")
        want.update({"off@nosign.test": 0, "other@c.test": 0})
        return want
    each_transfer_mode(imp, sinkbin, "dkim-e2e", lambda: "", send)


def stored_signature(spool):
    for root, _dirs, files in os.walk(os.path.join(spool, "queue")):
        for fn in files:
            with open(os.path.join(root, fn), "rb") as f:
                data = f.read()
            m = re.search(rb"DKIM-Signature:.*?\r\n(?=[^ \t])", data, re.S)
            if m:
                return m.group(0)
    return None


def sig_time(raw):
    """The t= of the first DKIM-Signature in raw, or None."""
    m = re.search(rb"DKIM-Signature:[^\0]*?[; \t\n]t=(\d+);", raw or b"")
    return int(m.group(1)) if m else None


def scenario_restart(imp, sinkbin):
    """Signed at ingest, kept in the spool: a retry after kill -9 and a
    restart sends the same DKIM-Signature (t= would differ if re-signed)."""
    tmp = tempfile.mkdtemp(prefix="dkim-restart.")
    bad = good = None
    try:
        recs = make_keys(tmp)
        bad, _ = start_sink(sinkbin, tmp, "bad", "--fail", "RCPT=451:1.0")
        conf = ('Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
                'Retry_Interval = 1\nMax_Retry_Interval = 1\n' % bad.port + dkim_conf(tmp))
        e = Engine(imp, conf, "dkim-restart")
        try:
            e.start()
            e.inject("a@rsa.test", ["bob@c.test"],
                     body="From: a@rsa.test\nSubject: survive\n\nkept signed\n")
            e.wait_for(lambda: len(e.records("T")) >= 1, 20, "a transient failure")
            sig = stored_signature(e.spool)
            expect(sig is not None, "the signature is in the spool")
            e.proc.send_signal(signal.SIGKILL)
            e.proc.wait()
            e.proc = None
            # Restart only once the clock is past the stored t=: a message
            # signed again would carry another t= (and another b=).
            t0 = sig_time(sig)
            expect(t0 is not None, "the stored signature has t=")
            if t0 is not None:
                wait_until(lambda: int(time.time()) > t0, 10, "the clock past t=%d" % t0)
            bad.stop()
            good, info = start_sink(sinkbin, tmp, "good")
            with open(e.conf) as f:
                text = f.read()
            with open(e.conf, "w") as f:
                f.write(text.replace("127.0.0.1:%d" % bad.port, "127.0.0.1:%d" % good.port))
            e.start()
            e.wait_for(lambda: len(e.records("D")) >= 1, 30, "delivery after restart")
            got = received(info).get("bob@c.test", b"")
            verify(got, recs, "after kill -9 and restart")
            expect(sig is not None and got.startswith(sig),
                   "the delivered signature is the stored one")
            expect(sig_time(got) == t0, "delivered t=%s, stored t=%s" % (sig_time(got), t0))
            expect(e.stop() == 0, "exit status")
        finally:
            e.cleanup()
    finally:
        drop_sinks(tmp, bad, good)


class SmtpClient:
    """A client for what smtplib cannot send: BDAT chunks."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.reply()

    def reply(self):
        while True:
            while b"\r\n" not in self.buf:
                d = self.s.recv(65536)
                if not d:
                    return 0
                self.buf += d
            line, self.buf = self.buf.split(b"\r\n", 1)
            if len(line) < 4 or line[3:4] == b" ":
                return int(line[:3])

    def cmd(self, data):
        self.s.sendall(data)
        return self.reply()

    def bdat(self, sender, rcpt, msg, chunk=700):
        """MAIL, RCPT and msg in BDAT chunks of chunk bytes; the replies."""
        codes = [self.cmd(b"EHLO client.test\r\n"),
                 self.cmd(b"MAIL FROM:<%s>\r\n" % sender.encode()),
                 self.cmd(b"RCPT TO:<%s>\r\n" % rcpt.encode())]
        for at in range(0, len(msg), chunk):
            part = msg[at:at + chunk]
            last = b" LAST" if at + chunk >= len(msg) else b""
            codes.append(self.cmd(b"BDAT %d%s\r\n" % (len(part), last) + part))
        self.cmd(b"QUIT\r\n")
        self.s.close()
        return codes


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# What SMTP clients submit: CRLF as SMTP wants it, a dot-leading line (DATA
# stuffs it), 8-bit text, a folded and a repeated header; by BDAT also LF
# and bare-CR line ends (BDAT carries any bytes) and no final line end.
SMTP_BODIES = {
    "crlf": b"Subject: crlf\r\nTo: x@c.test\r\n\r\nline one\r\n.dot line\r\n\r\n",
    "folded": b"Subject: a folded\r\n\tsubject\r\nTo: x@c.test\r\nTo: y@c.test\r\n\r\nb\r\n",
    "eightbit": "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                "caf\u00e9 na\u00efve\r\n".encode(),
    "big": b"Subject: big\r\n\r\n" + (b".l" + b"x" * 60 + b"\r\n") * 300,
}
BDAT_ONLY = {
    "lf": b"Subject: lf\nTo: x@c.test\n\n" + (b"l" + b"y" * 60 + b"\n") * 40,
    "bare": b"Subject: bare\r\n\r\na\rb\nno line end at the end",
}


def scenario_listener(imp, sinkbin):
    """Messages from SMTP clients of the ESMTP_Listener (DATA by smtplib,
    BDAT in several chunks by hand) are signed once at ingest like pickup
    files, delivered by BDAT and by DATA, and verify."""
    port = [0]

    def listener_conf():
        port[0] = free_port()
        return ('ESMTP_Listener {\n  Relay_Hosts = ( "127.0.0.1/32" )\n'
                '  SMTP_Extensions = ( "PIPELINING" "CHUNKING" "8BITMIME" "ENHANCEDSTATUSCODES" )\n'
                '  Listen "127.0.0.1:%d" { }\n}\n' % port[0])

    def send(mode, e):
        wait_until(lambda: port_open(port[0]), 10, "the listener's port")
        want = {}
        for dom in ("rsa.test", "ed.test"):
            for name, body in SMTP_BODIES.items():
                msg = b"From: Sender <a@%s>\r\n" % dom.encode() + body
                rc = "%s-data-%s@c.test" % (name, dom)
                with smtplib.SMTP("127.0.0.1", port[0], timeout=20) as c:
                    c.ehlo("client.test")
                    refused = c.sendmail("a@" + dom, [rc], msg)
                expect(refused == {}, "%s: DATA %s accepted" % (mode, rc))
                want[rc] = 1
            for name, body in list(SMTP_BODIES.items()) + list(BDAT_ONLY.items()):
                msg = b"From: Sender <a@%s>\r\n" % dom.encode() + body
                rc = "%s-bdat-%s@c.test" % (name, dom)
                codes = SmtpClient(port[0]).bdat("a@" + dom, rc, msg)
                expect(all(c == 250 for c in codes[1:]),
                       "%s: BDAT %s accepted %r" % (mode, rc, codes))
                want[rc] = 1
        return want
    each_transfer_mode(imp, sinkbin, "dkim-lsn", listener_conf, send)


LUA = r"""
require("msys.core")
require("msys.validate.opendkim")
require("msys.extended.message")
local mod = {}
function mod:validate_data_spool(msg, ac, vctx)
  -- the ESP's signature on top of the sender's (configured) one, as in
  -- Momentum's example: options table, key file with %{d}/%{s}
  local ok, err = msys.validate.opendkim.sign(msg, vctx, {
    base_domain = "ed.test", selector = "e", digest = "ed25519-sha256",
    header_canon = "relaxed", body_canon = "relaxed", identity = "@ed.test",
    headerlist = "from:to:subject", keyfile = "KEYDIR/%{d}/%{s}.key" })
  print("lua sign: " .. tostring(ok) .. " " .. tostring(err))
  local ok2, err2 = msys.validate.opendkim.sign(msg, vctx, { digest = "rsa-sha1",
    base_domain = "rsa.test", selector = "r", keyfile = "KEYDIR/%{d}/%{s}.key" })
  print("lua sha1: " .. tostring(ok2) .. " " .. tostring(err2))
  return msys.core.VALIDATE_CONT
end
msys.registerModule("esp", mod)
"""


def scenario_lua(imp, sinkbin):
    """msys.validate.opendkim.sign from validate_data_spool: a second
    signature (another domain, Ed25519) besides the configured one; both
    verify by BDAT; rsa-sha1 is refused with a reason."""
    tmp = tempfile.mkdtemp(prefix="dkim-lua.")
    sink = None
    try:
        recs = make_keys(tmp)
        script = os.path.join(tmp, "esp.lua")
        with open(script, "w") as f:
            f.write(LUA.replace("KEYDIR", tmp))
        sink, info = start_sink(sinkbin, tmp, "lua")
        conf = ('Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n' % sink.port
                + dkim_conf(tmp)
                + 'scriptlet "scriptlet" {\n  script "esp" { source = "%s" }\n}\n' % script[:-4])
        e = Engine(imp, conf, "dkim-lua")
        try:
            e.start()
            e.inject("a@rsa.test", ["bob@c.test"],
                     body="From: a@rsa.test\nTo: bob@c.test\nSubject: two\n\nsigned twice\n")
            e.wait_for(lambda: len(e.records("D")) >= 1, 30, "delivery")
            got = received(info).get("bob@c.test", b"")
            verify(got, recs, "configured + Lua", want_sigs=2)
            d = dkim.DKIM(got)
            ok = [bool(d.verify(idx=i, dnsfunc=dns_of(recs))) for i in range(2)]
            expect(ok == [True, True], "both signatures verify: %r" % ok)
            expect(b"d=ed.test" in got and b"i=@ed.test" in got, "the Lua signature's d= and i=")
            log = e.read(e.paniclog)
            expect("lua sign: true nil" in log, "sign returned true")
            expect("lua sha1: nil" in log and "RFC 8301" in log, "rsa-sha1 refused with a reason")
            expect(e.stop() == 0, "exit status")
        finally:
            e.cleanup()
    finally:
        drop_sinks(tmp, sink)


@contextlib.contextmanager
def gated(imp, sinkbin, name, extra=lambda tmp: "", exchange=False):
    """(engine, tmp, recs, sink info): a sink and an engine with the DKIM
    configuration (plus extra(tmp); Pickup_Claim = exchange with exchange)
    whose signers wait for the file tmp/gate (the IMPETUS_TEST_DKIM_GATE
    hook); all removed afterwards."""
    tmp = tempfile.mkdtemp(prefix=name + ".")
    sink = e = None
    try:
        recs = make_keys(tmp)
        sink, info = start_sink(sinkbin, tmp, name)
        os.environ["IMPETUS_TEST_DKIM_GATE"] = os.path.join(tmp, "gate")
        conf = ('Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n' % sink.port
                + ('Pickup_Claim = "exchange"\n' if exchange else "") + extra(tmp) + dkim_conf(tmp))
        e = Engine(imp, conf, name)
        e.exchange = exchange
        yield e, tmp, recs, info
    finally:
        os.environ.pop("IMPETUS_TEST_DKIM_GATE", None)
        if e is not None:
            e.cleanup()
        drop_sinks(tmp, sink)


def open_gate(tmp):
    open(os.path.join(tmp, "gate"), "w").close()


def signed_once(e, info, recs, rcpts, total, label):
    """Each of rcpts got its message signed (both verifiers), and each of
    the total messages has exactly one final record."""
    got = received(info)
    for rc in rcpts:
        verify(got.get(rc, b""), recs, "%s %s" % (label, rc))
    fin = e.finals()
    expect(len(fin) == total and all(len(v) == 1 for v in fin.values()),
           "%s: each delivered once (%d messages)" % (label, len(fin)))


def held(e):
    """The claimed files in the spool: tombs in pickup/ (Pickup_Claim =
    rename), or the files of the claimed directory (exchange)."""
    if getattr(e, "exchange", False):
        d = os.path.join(e.spool, "claim", "pickup")
        return os.listdir(d) if os.path.isdir(d) else []
    return [x for x in os.listdir(e.pickup) if x.startswith(".c.")]


def claimed_only(e, n):
    """n claimed files and nothing else in pickup/."""
    rest = [x for x in os.listdir(e.pickup) if not x.startswith(".c.")]
    return len(held(e)) == n and not rest


def scenario_nonblocking(imp, sinkbin, exchange=False):
    """Signing does not hold up ingest: while the signers are held (test
    hook), unsigned mail from pickup/ is taken and delivered; the messages
    being signed stay claimed, are not delivered, and an SMTP client that
    submitted one has no reply yet (250 only once it is durable, signed).
    Once signing goes on, each is delivered once, signed. With
    Pickup_Claim = exchange the held files are in the claimed directory,
    which the next exchange must not hand back: there the unsigned mail
    is of the same listing (in pickup/ before the start)."""
    port = free_port()
    listener = ('ESMTP_Listener {\n  Relay_Hosts = ( "127.0.0.1/32" )\n'
                '  Listen "127.0.0.1:%d" { }\n}\n' % port)
    with gated(imp, sinkbin, "dkim-nb", lambda tmp: listener, exchange) as (e, tmp, recs, info):

        def unsigned():  # no dkim_domain for other.test; opendkim_sign = false
            e.inject("a@other.test", ["u1@c.test"], body="From: a@other.test\n\nnot signed\n")
            e.inject("a@rsa.test", ["u2@nosign.test"], body="From: a@rsa.test\n\nnot signed\n")
        signed = ["s%d@c.test" % i for i in range(5)]
        for rc in signed:
            e.inject("a@rsa.test", [rc], body="From: a@rsa.test\nSubject: held\n\nheld\n")
        if exchange:
            unsigned()
        e.start()
        e.wait_for(lambda: held(e), 20,
                   "a file to sign claimed and held")
        wait_until(lambda: port_open(port), 10, "the listener's port")
        c = socket.create_connection(("127.0.0.1", port), timeout=20)
        cf = c.makefile("rb")

        def reply():
            while True:
                line = cf.readline()
                if len(line) < 4 or line[3:4] != b"-":
                    return line[:3]
        reply()
        for cmd in (b"EHLO c.test", b"MAIL FROM:<a@ed.test>", b"RCPT TO:<smtp@c.test>",
                    b"DATA"):
            c.sendall(cmd + b"\r\n")
            reply()
        c.sendall(b"From: a@ed.test\r\nSubject: smtp\r\n\r\nheld too\r\n.\r\n")
        if not exchange:
            unsigned()
        e.wait_for(lambda: len(e.records("D")) >= 2, 30,
                   "unsigned mail delivered while signing is held")
        got = received(info)
        expect(sorted(got) == ["u1@c.test", "u2@nosign.test"],
               "only the unsigned mail delivered while signing is held: %s" % sorted(got))
        for rc in ("u1@c.test", "u2@nosign.test"):
            verify(got.get(rc, b""), recs, "unsigned %s" % rc, 0)
        expect(claimed_only(e, len(signed)), "the held files are still claimed")
        c.setblocking(False)
        try:
            early = c.recv(100)
        except BlockingIOError:
            early = None
        c.setblocking(True)
        expect(early is None, "no reply to the SMTP client while its message is held (%r)"
               % early)
        open_gate(tmp)
        code = reply()
        expect(code == b"250", "the SMTP client's reply once signed and durable: %r" % code)
        c.sendall(b"QUIT\r\n")
        c.close()
        total = len(signed) + 3
        e.wait_for(lambda: len(e.records("D")) >= total, 60, "every message delivered")
        signed_once(e, info, recs, signed + ["smtp@c.test"], total, "held")
        expect(os.listdir(e.pickup) == [] and held(e) == [], "pickup/ empty, nothing held")
        expect(e.stop() == 0, "exit status")


def scenario_held_crash(imp, sinkbin, exchange=False):
    """kill -9 while messages are being signed: nothing is lost, nothing
    goes out unsigned; after the restart each is signed and delivered
    once (with Pickup_Claim = rename, and = exchange)."""
    with gated(imp, sinkbin, "dkim-hc", exchange=exchange) as (e, tmp, recs, info):
        e.start()
        rcpts = ["k%d@c.test" % i for i in range(4)]
        for rc in rcpts:
            e.inject("a@rsa.test", [rc], body="From: a@rsa.test\nSubject: crash\n\nx\n")
        e.wait_for(lambda: claimed_only(e, len(rcpts)), 20, "the files claimed and held")
        e.proc.send_signal(signal.SIGKILL)
        e.proc.wait()
        e.proc = None
        expect(received(info) == {}, "nothing delivered before the crash")
        open_gate(tmp)
        e.start()
        e.wait_for(lambda: len(e.records("D")) >= len(rcpts), 30, "delivery after restart")
        signed_once(e, info, recs, rcpts, len(rcpts), "after kill -9")
        expect(e.stop() == 0, "exit status")


def scenario_dsn(imp, sinkbin):
    """A bounce the engine generates (From: MAILER-DAEMON@<host name>) is
    signed like any message when a dkim_domain names its responsible
    domain, here with base_domain = rsa.test; both verifiers accept it,
    delivered by BDAT and by DATA."""
    host = socket.gethostname().lower()
    tmp = tempfile.mkdtemp(prefix="dkim-dsn.")
    sinks = []
    try:
        recs = make_keys(tmp)
        bad, _ = start_sink(sinkbin, tmp, "refuse", "--fail", "RCPT=550:1.0")
        sinks.append(bad)
        for mode in ("bdat", "data"):
            good, info = start_sink(sinkbin, tmp, "dsn-" + mode,
                                    *([] if mode == "bdat" else ["--no-chunking"]))
            sinks.append(good)
            conf = ('Worker_Threads = 1\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
                    'Domain "bad.test" { Gateway = "127.0.0.1:%d" }\n' % (good.port, bad.port)
                    + dkim_conf(tmp).replace(
                        '  dkim_domain "rsa.test" { selector = "r" }\n',
                        '  dkim_domain "rsa.test" { selector = "r" }\n'
                        '  dkim_domain "%s" {\n    base_domain = "rsa.test"\n'
                        '    selector = "r"\n    key = "%s/rsa.test/r.key"\n  }\n'
                        % (host, tmp)))
            e = Engine(imp, conf, "dkim-dsn-" + mode)
            try:
                e.start()
                e.inject("a@rsa.test", ["gone@bad.test"],
                         body="From: a@rsa.test\nSubject: bounce me\n\nx\n")
                e.wait_for(lambda: len(e.records("P")) >= 1 and len(e.records("D")) >= 1, 30,
                           "the failure and its bounce delivered")
                got = received(info).get("a@rsa.test", b"")
                expect(b"MAILER-DAEMON@" in got and b"multipart/report" in got,
                       "%s: the bounce arrived" % mode)
                verify(got, recs, "%s: bounce" % mode)
                expect(b"d=rsa.test" in got, "%s: signed by the base_domain" % mode)
                expect(e.stop() == 0, "%s: exit status" % mode)
            finally:
                e.cleanup()
    finally:
        drop_sinks(tmp, *sinks)


def main():
    imp, sinkbin, scenario = sys.argv[1:4]
    {"deliver": scenario_deliver, "listener": scenario_listener, "restart": scenario_restart,
     "lua": scenario_lua, "nonblocking": scenario_nonblocking,
     "held-crash": scenario_held_crash, "dsn": scenario_dsn,
     "nonblocking-exchange": lambda i, s: scenario_nonblocking(i, s, True),
     "held-crash-exchange": lambda i, s: scenario_held_crash(i, s, True)}[scenario](imp, sinkbin)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
