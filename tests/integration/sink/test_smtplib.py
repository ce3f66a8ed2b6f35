#!/usr/bin/env python3
"""impetus-sink driven by Python's smtplib (and a raw socket where smtplib
cannot express the transcript): pipelined delivery, AUTH PLAIN/LOGIN/XOAUTH2,
STARTTLS then AUTH, implicit TLS, 535/530/538, --save-dir and --jsonl
content, local/peer address recording (source 127.0.0.2), the summary."""
import json
import os
import smtplib
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sinklib import Raw, Sink, b64, certs, skip, users_file  # noqa: E402

SINK, ROOT = sys.argv[1], sys.argv[2]


def tls_ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def expect_code(fn, code):
    try:
        fn()
    except smtplib.SMTPResponseException as e:
        assert e.smtp_code == code, "want %d, got %d %s" % (code, e.smtp_code, e.smtp_error)
        return
    except smtplib.SMTPRecipientsRefused as e:
        got = list(e.recipients.values())[0][0]
        assert got == code, "want %d, got %d" % (code, got)
        return
    raise AssertionError("want %d, got success" % code)


def test_pipelined_delivery_and_outputs(cert, key, d):
    users = users_file(d, [("alice", "s3cret"), ("bob", "hunter2"), ("carol", "tok-123")])
    save = os.path.join(d, "saved")
    os.mkdir(save)
    jsonl = os.path.join(d, "records.jsonl")
    with Sink(SINK, ["--cert", cert, "--key", key, "--auth-users", users, "--save-dir", save,
                     "--jsonl", jsonl], tls=True, extra_listen=["127.0.0.3:0"]) as s:
        port = s.port
        # 1. Plain pipelined delivery from a raw socket: 3 messages in one write,
        #    every reply in order; body with stuffed dots and a final line split.
        r = Raw(port, source="127.0.0.2")
        assert r.code() == 220
        r.send("EHLO client.test\r\n")
        ehlo = [l[4:] for l in r.read_reply()]
        assert "PIPELINING" in ehlo and "8BITMIME" in ehlo and "ENHANCEDSTATUSCODES" in ehlo
        assert any(l.startswith("SIZE ") for l in ehlo) and "STARTTLS" in ehlo
        body = "Subject: t\r\n\r\n..leading dot\r\n.\r\n"  # never reached: see split send below
        batch = ""
        for i in range(3):
            batch += "MAIL FROM:<s%d@example.org> BODY=8BITMIME SIZE=100\r\n" % i
            batch += "RCPT TO:<r%d@example.net>\r\nRCPT TO:<x%d@example.net>\r\nDATA\r\n" % (i, i)
            batch += "Subject: m%d\r\n\r\n..dot-stuffed line\r\nplain\r\n.\r\n" % i
        r.send(batch)
        codes = [r.code() for _ in range(15)]
        assert codes == [250, 250, 250, 354, 250] * 3, codes
        # 2. The end-of-data sequence split at every byte.
        r.send("MAIL FROM:<split@example.org>\r\nRCPT TO:<y@example.net>\r\nDATA\r\n")
        assert [r.code(), r.code(), r.code()] == [250, 250, 354]
        for ch in "line\r\n.\r\n":
            r.send(ch)
            time.sleep(0.002)
        assert r.code() == 250
        r.send("QUIT\r\n")
        assert r.code() == 221
        r.close()
        del body

        # 3. smtplib: PLAIN (initial response), LOGIN, XOAUTH2, over STARTTLS.
        for mech, user, pw in (("PLAIN", "alice", "s3cret"), ("LOGIN", "bob", "hunter2")):
            c = smtplib.SMTP("127.0.0.1", port, timeout=5)
            c.starttls(context=tls_ctx())
            c.ehlo()
            c.user, c.password = user, pw
            code, _ = c.auth(mech, getattr(c, "auth_" + mech.lower()), initial_response_ok=True)
            assert code == 235
            c.sendmail("from-%s@example.org" % user, ["to@example.net"], "Subject: x\r\n\r\nhi\r\n")
            c.quit()
        c = smtplib.SMTP("127.0.0.1", port, timeout=5)
        c.ehlo()
        tok = "user=carol\x01auth=Bearer tok-123\x01\x01"
        code, _ = c.auth("XOAUTH2", lambda challenge=None: tok)
        assert code == 235
        c.sendmail("o@example.org", ["p@example.net"], "Subject: x\r\n\r\noauth\r\n")
        c.quit()
        # PLAIN without an initial response (334 then the credentials).
        r = Raw(port)
        r.code()
        r.send("EHLO x\r\n")
        r.read_reply()
        r.send("AUTH PLAIN\r\n")
        assert r.code() == 334
        r.send(b64("\0alice\0s3cret") + "\r\n")
        assert r.code() == 235
        r.send("QUIT\r\n")
        r.close()
        # Bad XOAUTH2 token: error challenge, then 535.
        c = smtplib.SMTP("127.0.0.1", port, timeout=5)
        c.ehlo()
        bad = "user=carol\x01auth=Bearer nope\x01\x01"
        expect_code(lambda: c.auth("XOAUTH2", lambda challenge=None: bad if challenge is None else ""),
                    535)
        c.close()
        # Wrong password: 535.
        c = smtplib.SMTP("127.0.0.1", port, timeout=5)
        c.ehlo()
        # smtplib.login tries PLAIN, then LOGIN: two failures.
        expect_code(lambda: c.login("alice", "wrong"), 535)
        c.close()
        # Implicit TLS listener.
        tport = s.tls[0][1]
        c = smtplib.SMTP_SSL("127.0.0.1", tport, timeout=5, context=tls_ctx())
        c.login("alice", "s3cret")
        c.sendmail("tls@example.org", ["q@example.net"], "Subject: x\r\n\r\nimplicit\r\n")
        c.quit()
        # The second listener on 127.0.0.3.
        port3 = [p for h, p in s.plain if h == "127.0.0.3"][0]
        c = smtplib.SMTP("127.0.0.3", port3, timeout=5)
        c.sendmail("l3@example.org", ["z@example.net"], "Subject: x\r\n\r\nthree\r\n")
        c.quit()

        mid = s.summary_now()  # SIGUSR1 does not stop it
        assert mid["messages"] == 9, mid
        summary = s.stop()

    assert summary["messages"] == 9, summary
    assert summary["recipients"] == 12, summary
    assert summary["per_user"] == {"alice": 2, "bob": 1, "carol": 1}, summary["per_user"]
    assert summary["per_source_address"]["127.0.0.2"] == 4, summary
    assert summary["per_local_address"]["127.0.0.3"] == 1, summary
    assert summary["auth_failures"] == 3 and summary["auth_successes"] == 5, summary
    assert summary["tls_handshakes"] == 3, summary
    recs = [json.loads(l) for l in open(jsonl)]
    assert len(recs) == 9
    r0 = recs[0]
    assert r0["mail_from"] == "s0@example.org" and r0["rcpts"] == ["r0@example.net", "x0@example.net"]
    assert r0["peer"].startswith("127.0.0.2:") and r0["local"] == "127.0.0.1:%d" % port, r0
    assert r0["tls"] is False and r0["auth_user"] is None
    body0 = "Subject: m0\r\n\r\n.dot-stuffed line\r\nplain\r\n"
    assert r0["size"] == len(body0), r0
    assert open(r0["file"], "rb").read() == body0.encode()
    assert open(recs[3]["file"], "rb").read() == b"line\r\n"
    alice = [x for x in recs if x["auth_user"] == "alice"]
    assert alice[0]["tls"] is True and alice[0]["auth_mech"] == "PLAIN"
    assert [x["auth_mech"] for x in recs if x["auth_user"] == "carol"] == ["XOAUTH2"]
    assert recs[-1]["local"].startswith("127.0.0.3:")
    assert sum(x["size"] for x in recs) == summary["bytes"]


def test_auth_policies(cert, key, d):
    users = users_file(d, [("alice", "s3cret")])
    # AUTH required, not given: 530.
    with Sink(SINK, ["--auth-users", users, "--require-auth"]) as s:
        c = smtplib.SMTP("127.0.0.1", s.port, timeout=5)
        expect_code(lambda: c.sendmail("a@x", ["b@y"], "x\r\n"), 530)
        c.close()
        c = smtplib.SMTP("127.0.0.1", s.port, timeout=5)
        c.login("alice", "s3cret")
        c.sendmail("a@x", ["b@y"], "x\r\n")
        c.quit()
        assert s.stop()["messages"] == 1
    # TLS required for AUTH: not advertised in clear, 538 if tried, fine after STARTTLS.
    with Sink(SINK, ["--auth-users", users, "--require-auth", "--require-tls-for-auth",
                     "--cert", cert, "--key", key, "--auth-mechs", "PLAIN"]) as s:
        c = smtplib.SMTP("127.0.0.1", s.port, timeout=5)
        c.ehlo()
        assert not c.has_extn("auth")
        code, _ = c.docmd("AUTH", "PLAIN " + b64("\0alice\0s3cret"))
        assert code == 538, code
        code, _ = c.docmd("MAIL", "FROM:<a@x>")
        assert code == 530, code
        c.starttls(context=tls_ctx())
        c.ehlo()
        assert c.esmtp_features["auth"].strip() == "PLAIN"
        c.login("alice", "s3cret")
        c.sendmail("a@x", ["b@y"], "x\r\n")
        c.quit()
        # Only PLAIN offered: LOGIN gets 504.
        c = smtplib.SMTP("127.0.0.1", s.port, timeout=5)
        c.starttls(context=tls_ctx())
        c.ehlo()
        code, _ = c.docmd("AUTH", "LOGIN")
        assert code == 504
        c.close()
        summary = s.stop()
        assert summary["messages"] == 1 and summary["per_mechanism"] == {"PLAIN": 1}, summary
    # --no-starttls and --no-pipelining remove the keywords; --io-fallback still works.
    with Sink(SINK, ["--cert", cert, "--key", key, "--no-starttls", "--no-pipelining",
                     "--io-fallback", "--stats-interval", "0.05"]) as s:
        c = smtplib.SMTP("127.0.0.1", s.port, timeout=5)
        c.ehlo()
        assert not c.has_extn("starttls") and not c.has_extn("pipelining")
        for i in range(20):
            c.sendmail("a@x", ["b@y"], "Subject: %d\r\n\r\n%s\r\n" % (i, "x" * 20000))
        c.quit()
        assert "single-shot" in s.stderr()
        deadline = time.monotonic() + 5
        while "messages=20 " not in s.stderr():  # the running count on stderr
            assert time.monotonic() < deadline, s.stderr()
            time.sleep(0.02)
        summary = s.stop()
        assert summary["messages"] == 20, summary


def test_ipv6_loopback():
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        print("IPv6 loopback unavailable: IPv6 part skipped")
        return
    with Sink(SINK, [], extra_listen=["[::1]:0"]) as s:
        port6 = [p for h, p in s.plain if h == "::1"][0]
        c = smtplib.SMTP("::1", port6, timeout=5)
        c.sendmail("v6@example.org", ["r@example.net"], "Subject: x\r\n\r\nsix\r\n")
        c.quit()
        st = s.stop()
        assert st["per_source_address"] == {"::1": 1} and st["per_local_address"] == {"::1": 1}, st


def main():
    cert, key, cdir = certs(ROOT)
    import tempfile
    d = tempfile.mkdtemp(prefix="sinksmtplib.")
    try:
        test_pipelined_delivery_and_outputs(cert, key, d)
        test_auth_policies(cert, key, d)
        test_ipv6_loopback()
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(cdir, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
