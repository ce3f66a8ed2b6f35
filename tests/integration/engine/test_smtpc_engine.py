"""End-to-end tests of the engine's SMTP client options (issue 5): impetus
delivers to impetus-sink instances started here on 127.0.0.0/8, and the
Momentum logs and the sinks' summaries are checked.

usage: test_smtpc_engine.py IMPETUS SINK SCENARIO
scenarios:
  tls-fallback  TLS_Ifavailable_Fallback: a STARTTLS handshake answered with
                garbage is retried at once in plaintext and the address is
                remembered (no STARTTLS on the next connection); with the
                option false, or TLS = required, the attempt is a T
  smtps         implicit TLS routes and gateways (smtps://) with AUTH, and
                TLS_Verify no / ca / host against right and wrong CAs and names
  resume        the second and later connections to the same host resume
                their TLS session (STARTTLS and implicit TLS)
  timeouts      Connect_, EHLO_, MailFrom_, RcptTo_, Data_, Body_, RSET_ and
                Idle_Timeout each end the state they govern, per scope"""
import os
import shutil
import socket
import sys
import time

from enginelib import Engine, SKIP, sinklib
from test_engine import expect, finish, msgs_of, sink_with_log

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))


def certs():
    if not shutil.which("openssl"):
        print("SKIP: openssl not installed")
        sys.exit(SKIP)
    return sinklib.certs(ROOT)


def errors_injected(summ, key):
    return summ.get("errors_injected", {}).get(key, 0)


def dom_of(opt):
    """"EHLO_Timeout" -> "ehlotimeout" (a domain label)."""
    return opt.lower().replace("_", "")


def t_for(e, domain):
    return [f for f in e.records("T") if f[5] == domain]


def d_for(e, domain):
    return [f for f in e.records("D") if f[5] == domain]


def scenario_tls_fallback(imp, sinkbin):
    cert, key, cdir = certs()
    # both sinks offer STARTTLS and answer its 220 with bytes that are not TLS
    fb = sink_with_log(sinkbin, "--cert", cert, "--key", key, "--hostile", "tls-garbage")
    nofb = sink_with_log(sinkbin, "--cert", cert, "--key", key, "--hostile", "tls-garbage")
    conf = ('Worker_Threads = 1\nRetry_Interval = 3600\nTLS_Verify = "no"\n'
            'Max_Deliveries_Per_Connection = 1\n'
            'Domain "fb.test" { Gateway = "127.0.0.1:%d" TLS = "ifavailable" }\n'
            'Domain "nofb.test" { Gateway = "127.0.0.1:%d" TLS = "ifavailable"\n'
            '  TLS_Ifavailable_Fallback = false }\n'
            'Domain "req.test" { Gateway = "127.0.0.1:%d" TLS = "required"\n'
            '  Max_Outbound_Connections = 1 }\n'
            % (fb.port, nofb.port, nofb.port))
    e = Engine(imp, conf, "tlsfb")
    try:
        e.start()
        e.inject("a@s.test", ["one@fb.test"])
        e.wait_for(lambda: d_for(e, "fb.test") or t_for(e, "fb.test"), 20, "first fb.test outcome")
        expect(not t_for(e, "fb.test"), "fallback on: no T: %r" % t_for(e, "fb.test"))
        # a new connection (Max_Deliveries_Per_Connection = 1) skips STARTTLS
        e.inject("a@s.test", ["two@fb.test"])
        e.wait_for(lambda: len(d_for(e, "fb.test")) == 2 or t_for(e, "fb.test"), 20,
                   "second fb.test outcome")
        expect(len(d_for(e, "fb.test")) == 2 and not t_for(e, "fb.test"), "both delivered")
        e.inject("a@s.test", ["x@nofb.test"])
        e.inject("a@s.test", ["y@req.test"])
        e.inject("a@s.test", ["z@req.test"])
        e.wait_for(lambda: t_for(e, "nofb.test") and len(t_for(e, "req.test")) == 2, 20,
                   "three T records")
        for dom, n in (("nofb.test", 1), ("req.test", 2)):
            t = t_for(e, dom)
            expect(len(t) == n, "%s: %d T: %r" % (dom, n, t))
            expect("TLS handshake failed" in t[0][13], "%s: T says why: %r" % (dom, t[0][13]))
            expect(t[0][9] == "17", "%s: stage 17 (TLS handshake): %r" % (dom, t[0][9]))
        panic = e.read(e.paniclog)
        expect("TLS_Ifavailable_Fallback" in panic and panic.count("retrying in plaintext") == 1,
               "one fallback line in the paniclog:\n" + panic)
        expect(e.stop() == 0, "exit status")
        got = msgs_of(fb)
        expect(len(got) == 2 and not any(m.get("tls") for m in got),
               "fb.test delivered in plaintext: %r" % got)
        expect(not msgs_of(nofb), "nothing delivered without fallback")
        s1, s2 = finish(fb), finish(nofb)
        fb = nofb = None
        print("fallback sink:", {k: s1[k] for k in ("connections", "tls_handshakes")},
              s1["errors_injected"])
        # garbage once; then the plaintext retry and the second message's
        # connection, neither of which said STARTTLS
        expect(errors_injected(s1, "hostile_tls-garbage") == 1,
               "STARTTLS tried once only: %r" % s1["errors_injected"])
        expect(s1["connections"] == 3, "3 connections: %d" % s1["connections"])
        # no plaintext retry without fallback; and a failed connection
        # charges one unit only (req.test: two units, two connections)
        expect(errors_injected(s2, "hostile_tls-garbage") == 3 and s2["connections"] == 3,
               "one connection per T, no plaintext retry: %r" % s2)
    finally:
        e.cleanup()
        finish(fb)
        finish(nofb)
        shutil.rmtree(cdir, ignore_errors=True)


def scenario_smtps(imp, sinkbin):
    cert, key, cdir = certs()
    _other, _okey, odir = certs()  # a CA that did not sign the sink's certificate
    users = sinklib.users_file(cdir, [("u1", "pw-one"), ("u2", "pw-two")])
    sink = sink_with_log(sinkbin, "--cert", cert, "--key", key, "--no-starttls",
                         "--tls-listen", "127.0.0.1:0", "--tls-listen", "127.0.0.2:0",
                         "--auth-users", users, "--require-auth", "--require-tls-for-auth")
    p1 = [p for h, p in sink.tls if h == "127.0.0.1"][0]
    p2 = [p for h, p in sink.tls if h == "127.0.0.2"][0]
    # TLS = "no": smtps is TLS whatever TLS says; TLS_Verify applies
    conf = ('Worker_Threads = 1\nRetry_Interval = 3600\nTLS = "no"\n'
            'Outbound_SMTP_AUTH_Type = "PLAIN"\nOutbound_SMTP_AUTH_User = "u1"\n'
            'Outbound_SMTP_AUTH_Pass = "pw-one"\n'
            'Domain "route.test" { Routes = ( "smtps://127.0.0.1:%d" ) TLS_Verify = "host"\n'
            '  TLS_Ca = "%s" Outbound_SMTP_AUTH_Type = "LOGIN" Outbound_SMTP_AUTH_User = "u2"\n'
            '  Outbound_SMTP_AUTH_Pass = "pw-two" }\n'
            'Domain "gw.test" { Gateway = "smtps://127.0.0.1:%d" TLS_Verify = "ca" TLS_Ca = "%s" }\n'
            'Domain "noverify.test" { Routes = ( "smtps://127.0.0.2:%d" ) TLS_Verify = "no"\n'
            '  TLS_Ca = "%s" }\n'
            'Domain "wrongca.test" { Routes = ( "smtps://127.0.0.1:%d" ) TLS_Verify = "ca"\n'
            '  TLS_Ca = "%s" }\n'
            'Domain "mismatch.test" { Gateway = "smtps://127.0.0.2:%d" TLS_Verify = "host"\n'
            '  TLS_Ca = "%s" }\n'
            % (p1, cert, p1, cert, p2, _other, p1, _other, p2, cert))
    e = Engine(imp, conf, "smtps")
    try:
        e.start()
        for dom in ("route.test", "gw.test", "noverify.test", "wrongca.test", "mismatch.test"):
            e.inject("a@s.test", ["r@" + dom])
        e.wait_for(lambda: len(e.records("D")) + len(e.records("T")) >= 5, 20, "5 outcomes")
        d = {f[5] for f in e.records("D")}
        expect(d == {"route.test", "gw.test", "noverify.test"}, "delivered: %r" % d)
        for dom, why in (("wrongca.test", "certificate verify failed"),
                         ("mismatch.test", "certificate verify failed")):
            t = t_for(e, dom)
            expect(len(t) == 1 and why in t[0][13], "%s: T with %r: %r" % (dom, why, t))
            expect(t[0][9] == "17", "%s: stage 17: %r" % (dom, t[0][9]))
        print("T texts:", [f[13] for f in e.records("T")])
        expect(e.stop() == 0, "exit status")
        got = {m["rcpts"][0].split("@")[1]: m for m in msgs_of(sink)}
        expect(set(got) == {"route.test", "gw.test", "noverify.test"}, "sink got %r" % list(got))
        expect(all(m["tls"] for m in got.values()), "every message over TLS")
        expect((got["route.test"]["auth_user"], got["route.test"]["auth_mech"]) == ("u2", "LOGIN"),
               "route.test as u2 over LOGIN: %r" % got["route.test"])
        expect(got["gw.test"]["auth_user"] == "u1", "gw.test as u1")
        expect(got["noverify.test"]["local"].startswith("127.0.0.2:"), "noverify.test on 127.0.0.2")
        summ = finish(sink)
        sink = None
        # 3 delivered + 2 refused handshakes; no plaintext retry for smtps
        expect(summ["connections"] == 5, "5 connections, got %d" % summ["connections"])
        expect(summ["tls_handshakes"] == 3, "3 handshakes, got %d" % summ["tls_handshakes"])
    finally:
        e.cleanup()
        finish(sink)
        shutil.rmtree(cdir, ignore_errors=True)
        shutil.rmtree(odir, ignore_errors=True)


def scenario_resume(imp, sinkbin):
    cert, key, cdir = certs()
    sink = sink_with_log(sinkbin, "--cert", cert, "--key", key, "--tls-listen", "127.0.0.1:0")
    ptls = sink.tls[0][1]
    conf = ('Worker_Threads = 1\nRetry_Interval = 3600\nTLS = "required"\nTLS_Verify = "host"\n'
            'TLS_Ca = "%s"\nMax_Deliveries_Per_Connection = 1\n'
            'Domain "st.test" { Gateway = "127.0.0.1:%d" }\n'
            'Domain "ss.test" { Gateway = "smtps://127.0.0.1:%d" }\n' % (cert, sink.port, ptls))
    e = Engine(imp, conf, "resume")
    try:
        e.start()
        # one connection at a time: each waits for the previous delivery
        for i in range(3):
            for dom in ("st.test", "ss.test"):
                e.inject("a@s.test", ["m%d@%s" % (i, dom)])
                e.wait_for(lambda: len(d_for(e, dom)) == i + 1 or e.records("T"), 20,
                           "delivery %d to %s" % (i, dom))
        expect(not e.records("T"), "no T: %r" % e.records("T"))
        summ = sink.summary_now()
        print("sink:", {k: summ[k] for k in ("connections", "tls_handshakes", "tls_resumed")})
        expect(summ["tls_handshakes"] == 6, "6 handshakes")
        # the first connection to each (host, port) is a full handshake
        expect(summ["tls_resumed"] == 4, "4 resumed sessions, got %d" % summ["tls_resumed"])
        expect(e.stop() == 0, "exit status")
    finally:
        e.cleanup()
        finish(sink)
        shutil.rmtree(cdir, ignore_errors=True)


class Blackhole:
    """A listening socket whose accept queue is full: a further connect()
    gets no SYN-ACK and waits (Linux drops the SYN)."""

    def __init__(self):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(0)
        self.port = self.ls.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)

    def holds(self):
        """True when a new connect() does not complete within 0.3 s."""
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(0.3)
        try:
            c.connect(("127.0.0.1", self.port))
            return False
        except (socket.timeout, OSError):
            return True
        finally:
            c.close()

    def close(self):
        for c in self.fillers:
            c.close()
        self.ls.close()


# (option, sink stage delayed by 2.5 s): the option at 1 s ends the state
DELAYED = [("EHLO_Timeout", "EHLO"), ("MailFrom_Timeout", "MAIL"), ("RcptTo_Timeout", "RCPT"),
           ("Data_Timeout", "DATA"), ("Body_Timeout", "DOT")]


def scenario_timeouts(imp, sinkbin):
    sinks = {}
    hole = None
    e = None
    try:
        for opt, stage in DELAYED:
            sinks[opt] = sink_with_log(sinkbin, "--latency", "%s=2500" % stage)
        # RSET only follows a failed transaction: every RCPT is refused
        sinks["RSET_Timeout"] = sink_with_log(sinkbin, "--latency", "RSET=2500",
                                              "--fail", "RCPT=550:1.0")
        sinks["RSET_long"] = sink_with_log(sinkbin, "--latency", "RSET=2500",
                                           "--fail", "RCPT=550:1.0")
        sinks["Idle_Timeout"] = sink_with_log(sinkbin)
        sinks["Idle_long"] = sink_with_log(sinkbin)
        hole = Blackhole()
        if not hole.holds():
            print("SKIP: this kernel completes connects beyond the listen backlog")
            sys.exit(SKIP)
        conf = ['Worker_Threads = 2', 'Retry_Interval = 3600', 'TLS = "no"', 'Idle_Timeout = 30',
                'Generate_Bounces = false']
        for opt, _stage in DELAYED:
            p = sinks[opt].port
            # the sink offers CHUNKING: MAIL, RCPT and the final reply are
            # awaited with BDAT too; only DATA needs it off
            extra = " Use_Chunking = false" if opt == "Data_Timeout" else ""
            # short: the option at 1 s fires; long: the same delay is waited out
            conf.append('Domain "%s.short.test" { Gateway = "127.0.0.1:%d" %s = 1%s }'
                        % (dom_of(opt), p, opt, extra))
            conf.append('Domain "%s.long.test" { Gateway = "127.0.0.1:%d"%s }'
                        % (dom_of(opt), p, extra))
        conf.append('Domain "rset.short.test" { Gateway = "127.0.0.1:%d" RSET_Timeout = 1 }'
                    % sinks["RSET_Timeout"].port)
        conf.append('Domain "rset.long.test" { Gateway = "127.0.0.1:%d" }' % sinks["RSET_long"].port)
        conf.append('Domain "idle.short.test" { Gateway = "127.0.0.1:%d" Idle_Timeout = 1 }'
                    % sinks["Idle_Timeout"].port)
        conf.append('Domain "idle.long.test" { Gateway = "127.0.0.1:%d" }' % sinks["Idle_long"].port)
        conf.append('Domain "connect.short.test" { Gateway = "127.0.0.1:%d" Connect_Timeout = 1 }'
                    % hole.port)
        e = Engine(imp, "\n".join(conf) + "\n", "timeouts")
        e.start()
        t0 = time.monotonic()
        for opt, _stage in DELAYED:
            e.inject("a@s.test", ["x@%s.short.test" % dom_of(opt)])
            e.inject("a@s.test", ["x@%s.long.test" % dom_of(opt)])
        for dom in ("rset.short.test", "rset.long.test", "idle.short.test", "idle.long.test",
                    "connect.short.test"):
            e.inject("a@s.test", ["x@" + dom])
        e.wait_for(lambda: len(e.records("D")) == 7 and len(e.records("T")) == 6
                   and len(e.records("P")) == 2, 20, "7 D, 6 T, 2 P")
        print("all outcomes after %.1f s" % (time.monotonic() - t0))
        for f in e.records("T"):
            print("T", f[5], f[9], f[13])
        for opt, stage in DELAYED:
            t = t_for(e, "%s.short.test" % dom_of(opt))
            expect(len(t) == 1 and ("%s = 1 s" % opt) in t[0][13],
                   "%s fired: %r" % (opt, [f[13] for f in t]))
            expect(not t_for(e, "%s.long.test" % dom_of(opt)) and d_for(e, "%s.long.test" % dom_of(opt)),
                   "%s: the default waits 2.5 s out" % opt)
        t = t_for(e, "connect.short.test")
        expect(len(t) == 1 and "Connect_Timeout" in t[0][13],
               "Connect_Timeout fired: %r" % [f[13] for f in t])
        expect(d_for(e, "idle.short.test") and d_for(e, "idle.long.test"), "idle domains delivered")

        # RSET_Timeout and Idle_Timeout end connections, not deliveries:
        # the sinks count the connections still open
        def open_conns(name):
            return sinks[name].summary_now()["current_connections"]

        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and (open_conns("Idle_Timeout") or open_conns("RSET_Timeout")):
            time.sleep(0.1)
        expect(open_conns("Idle_Timeout") == 0, "Idle_Timeout = 1 closed the idle connection")
        expect(open_conns("RSET_Timeout") == 0, "RSET_Timeout = 1 ended the session during RSET")
        # the same situations with the defaults (Idle_Timeout 30, RSET_Timeout 30) still hold on
        expect(open_conns("Idle_long") == 1, "Idle_Timeout = 30 keeps the connection")
        expect(open_conns("RSET_long") == 1, "RSET_Timeout = 30 waits for the RSET reply")
        expect(e.stop() == 0, "exit status")
    finally:
        if e is not None:
            e.cleanup()
        for s in sinks.values():
            finish(s)
        if hole is not None:
            hole.close()


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    imp, sinkbin, name = sys.argv[1:]
    fn = globals().get("scenario_" + name.replace("-", "_"))
    if fn is None:
        print("unknown scenario", name)
        return 2
    fn(imp, sinkbin)
    print("ok:", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
