#!/usr/bin/env python3
"""The engine's ESMTP_Listener (issue 21), end to end: swaks and Python's
smtplib inject, the message is delivered to impetus-sink (250 only once
durable); relaying refused outside Relay_Hosts (554 5.7.1 per recipient);
DSN parameters accepted; hostile clients: slow drip and endless line (421
4.4.2 after Idle_Time), oversized command (500 5.5.2), 1,000 pipelined
RCPTs (452 4.5.3 past Max_Recipients_Per_Message, then 421 after
Max_Errors_Per_Connection), a connection flood past Listener_Sessions
(421 4.7.0), and a session that goes on meanwhile.
usage: test_listener.py IMPETUS IMPETUS_SINK"""
import json
import os
import shutil
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from lsnlib import Client, check, enginelib, finish, free_port, sinklib, wait_port  # noqa: E402

imp, sinkbin = sys.argv[1], sys.argv[2]


d = os.path.join("/tmp", "impetus-lsn-%d" % os.getpid())
os.makedirs(d, exist_ok=True)
pwfile = os.path.join(d, "users")
h = subprocess.run(["openssl", "passwd", "-6", "s3cret"], capture_output=True, text=True).stdout.strip()
with open(pwfile, "w") as f:
    f.write("# user:sha512-crypt\nalice:%s\n" % h)
root = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
cert, key, certdir = sinklib.certs(root)
jl = os.path.join(d, "sink.jsonl")
sink = sinklib.Sink(sinkbin, ["--jsonl", jl, "--save-dir", d])
port = free_port()
port2 = free_port()
conf = ('TLS = "no"\nGateway = "127.0.0.1:%d"\n'
        'ESMTP_Listener {\n'
        '  Relay_Hosts = ( "127.0.0.1/32" )\n'
        '  SMTP_Extensions = ( "PIPELINING" "CHUNKING" "SIZE" "8BITMIME" "SMTPUTF8" "DSN"'
        ' "ENHANCEDSTATUSCODES" "STARTTLS" "AUTH PLAIN" "AUTH LOGIN" )\n'
        '  Auth_Password_File = "%s"\n'
        '  TLS_Certificate = "%s"\n  TLS_Key = "%s"\n'
        '  Listen "127.0.0.1:%d" { Allow_Plaintext_Auth = true }\n'
        '  Idle_Time = 2\n'
        '  Max_Recipients_Per_Message = 100\n'
        '  Max_Errors_Per_Connection = 20\n'
        '  Listen "127.0.0.1:%d" {\n'
        '    Listener_Sessions = 30\n'
        '    Peer "127.0.0.3/32" { Listener_Sessions = 3 }\n'
        '  }\n'
        '  Peer "127.0.0.4/32" { Open_Relay = true }\n'
        '}\n' % (sink.port, pwfile, cert, key, port2, port))
e = enginelib.Engine(imp, conf, "lsn")
try:
    e.start()
    check(wait_port(port), "listener accepts connections")

    # swaks, pipelined
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--from", "a@sender.test",
                        "--to", "one@rcpt.test", "--header", "Message-ID: <swaks-1@sender.test>",
                        "--pipeline"], capture_output=True, text=True, timeout=60)
    check(r.returncode == 0 and "250 2.0.0 Ok: queued as" in r.stdout, "swaks: %s" % r.stdout[-400:])

    # smtplib, two recipients, DSN parameters
    m = EmailMessage()
    m["From"] = "b@sender.test"
    m["To"] = "two@rcpt.test"
    m["Subject"] = "smtplib"
    m["Message-ID"] = "<smtplib-1@sender.test>"
    m.set_content("hello from smtplib\n.leading dot\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        code, ext = c.ehlo("client.test")
        check(code == 250 and b"PIPELINING" in ext and b"CHUNKING" in ext and b"DSN" in ext
              and b"ENHANCEDSTATUSCODES" in ext, "EHLO %r" % ext)
        refused = c.send_message(m, to_addrs=["two@rcpt.test", "three@rcpt.test"],
                                 mail_options=["RET=HDRS", "ENVID=abc"],
                                 rcpt_options=["NOTIFY=FAILURE,DELAY"])
        check(refused == {}, "smtplib refused %r" % refused)

    # BDAT (CHUNKING) by hand
    c = Client(port)
    c.reply()
    c.cmd("EHLO bdat.test")
    c.s.sendall(b"MAIL FROM:<c@sender.test>\r\nRCPT TO:<four@rcpt.test>\r\n"
                b"BDAT 60 LAST\r\n" + b"Message-ID: <bdat-1@sender.test>\r\nSubject: b\r\n\r\nbody\r\n".ljust(60, b"x"))
    codes = [c.reply()[0] for _ in range(3)]
    check(codes == [250, 250, 250], "BDAT replies %r" % codes)
    c.cmd("QUIT")
    c.close()

    # relay refused outside Relay_Hosts, allowed for an Open_Relay peer
    c = Client(port, "127.0.0.2")
    c.reply()
    c.cmd("EHLO x")
    c.cmd("MAIL FROM:<x@sender.test>")
    code, lines = c.cmd("RCPT TO:<y@rcpt.test>")
    check(code == 554 and "5.7.1" in lines[0], "relay refused: %r" % lines)
    c.close()
    c = Client(port, "127.0.0.4")
    c.reply()
    c.cmd("EHLO x")
    c.cmd("MAIL FROM:<x@sender.test>")
    check(c.cmd("RCPT TO:<y@rcpt.test>")[0] == 250, "Open_Relay peer may relay")
    c.close()

    e.wait_for(lambda: len(e.records("D")) >= 4, 30, "4 deliveries")
    recs = [json.loads(l) for l in open(jl) if l.strip()] if os.path.exists(jl) else []
    rc = sorted(r for x in recs for r in x["rcpts"])
    check(rc == ["four@rcpt.test", "one@rcpt.test", "three@rcpt.test", "two@rcpt.test"],
          "delivered recipients %r" % rc)
    bodies = [open(x["file"], "rb").read() for x in recs if "file" in x]
    check(any(b"\r\n.leading dot\r\n" in b and b"Received: from client.test (127.0.0.1)" in b
              for b in bodies), "smtplib body and Received: delivered")
    import re
    check(any(re.search(rb"(?:\A|\n)Received: from client\.test [^\r]*\r\nDate: [^\r]+\r\n"
                        rb"(?:[^\r]*\r\n)*Subject: smtplib\r\n", b) for b in bodies),
          "the missing Date: is added after Received:, before the message's own headers")
    check(any(re.search(rb"(?:\A|\n)Received: from client\.test \(127\.0\.0\.1\) by [^ \r]+ "
                        rb"\(Impetus\) with ESMTP; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} "
                        rb"\d\d:\d\d:\d\d [+-]\d{4}\r\n", b) for b in bodies),
          "the whole Received: line")

    # AUTH: refused over plaintext by default, accepted where allowed; an
    # authenticated client outside Relay_Hosts may relay
    c = Client(port, "127.0.0.2")
    c.reply()
    code, lines = c.cmd("EHLO x")
    check(not any("AUTH" in l for l in lines), "no AUTH offered over plaintext: %r" % lines)
    code, lines = c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==")
    check(code == 538 and "5.7.11" in lines[0], "plaintext AUTH refused: %r" % lines)
    c.close()
    check(wait_port(port2), "second Listen")
    with smtplib.SMTP("127.0.0.1", port2, timeout=20, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("auth.test")
        check(c.has_extn("auth"), "AUTH offered where Allow_Plaintext_Auth")
        try:
            c.login("alice", "wrong")
            check(False, "wrong password accepted")
        except smtplib.SMTPAuthenticationError as ex:
            check(ex.smtp_code == 535, "wrong password: %r" % (ex,))
    with smtplib.SMTP("127.0.0.1", port2, timeout=20, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("auth.test")
        c.login("alice", "s3cret")
        m2 = EmailMessage()
        m2["From"] = "alice@sender.test"
        m2["To"] = "five@rcpt.test"
        m2["Subject"] = "authenticated"
        m2["Message-ID"] = "<auth-1@sender.test>"
        m2.set_content("relayed after AUTH\n")
        check(c.send_message(m2) == {}, "authenticated client relays")
    # STARTTLS, then AUTH (not offered before TLS), then relay
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("tls.test")
        check(c.has_extn("starttls") and not c.has_extn("auth"), "STARTTLS offered, AUTH not yet")
        c.starttls(context=ctx)
        c.ehlo("tls.test")
        check(c.has_extn("auth") and not c.has_extn("starttls"), "AUTH offered after TLS")
        c.login("alice", "s3cret")
        m3 = EmailMessage()
        m3["From"] = "alice@sender.test"
        m3["To"] = "six@rcpt.test"
        m3["Subject"] = "tls"
        m3["Message-ID"] = "<tls-1@sender.test>"
        m3.set_content("over TLS after AUTH\n")
        check(c.send_message(m3) == {}, "STARTTLS + AUTH relays")
    e.wait_for(lambda: len(e.records("D")) >= 6, 30, "6 deliveries")
    recs = [json.loads(l) for l in open(jl) if l.strip()] if os.path.exists(jl) else []
    check(any(x["rcpts"] == ["five@rcpt.test"] for x in recs), "authenticated message delivered")
    tls_bodies = [open(x["file"], "rb").read() for x in recs if x["rcpts"] == ["six@rcpt.test"]]
    check(tls_bodies and b"with ESMTPSA" in tls_bodies[0], "TLS message delivered, Received: ESMTPSA")

    # hostile: slow drip, endless line, oversized command
    c = Client(port)
    c.reply()
    for ch in b"NOOP":
        c.s.sendall(bytes([ch]))
        time.sleep(0.8)  # the drip itself is the test: 4 x 0.8 s > Idle_Time (2 s)
    code, lines = c.reply(10)
    check(code == 421 and "4.4.2" in lines[-1], "slow drip cut off: %r" % lines)
    c.close()
    c = Client(port)
    c.reply()
    code = None
    try:
        for _ in range(200):
            c.s.sendall(b"A" * 65536)
    except OSError:
        pass
    code, lines = c.reply(10)
    check(code == 500 and "5.5.2" in lines[0], "endless line: %r" % lines)
    code, lines = c.reply(10)
    check(code in (421, 0), "endless line then cut off: %r" % lines)
    c.close()

    # 1,000 pipelined RCPTs
    c = Client(port)
    c.reply()
    c.cmd("EHLO pipe.test")
    c.s.sendall(b"MAIL FROM:<p@sender.test>\r\n" +
                b"".join(b"RCPT TO:<r%d@rcpt.test>\r\n" % i for i in range(1000)))
    codes = []
    while True:
        code, lines = c.reply(20)
        if code == 0:
            break
        codes.append(code)
        if code == 421:
            break
    check(codes[:101] == [250] * 101, "MAIL + 100 RCPTs accepted: %r" % codes[:5])
    check(codes[101:121] == [452] * 20 and codes[-1] == 421, "then 452 x20 and 421: %r" % codes[95:])
    c.close()

    # connection flood from one peer past its Listener_Sessions (3), while
    # another session goes on
    other = Client(port)
    other.reply()
    flood = []
    got421 = 0
    for i in range(10):
        cl = Client(port, "127.0.0.3")
        code, lines = cl.reply()
        if code == 421 and "4.7.0" in lines[0]:
            got421 += 1
        flood.append(cl)
    check(got421 == 7, "flood: %d of 10 got 421 4.7.0" % got421)
    check(other.cmd("EHLO other")[0] == 250 and other.cmd("NOOP")[0] == 250, "other session unaffected")
    for cl in flood:
        cl.close()
    other.close()

    check(e.stop() == 0, "engine stops cleanly")
finally:
    e.cleanup()
    sink.stop()
    sink.cleanup()
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(certdir, ignore_errors=True)

finish()
