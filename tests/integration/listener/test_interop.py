#!/usr/bin/env python3
"""Other MTAs inject into the engine's ESMTP_Listener (issue 21):
Postfix's smtp-source over 50 parallel sessions, and a private Postfix
instance (its own configuration and queue on 127.0.0.1, started and
stopped here, as bench/postfix does) whose relayhost is the listener.
Every message must reach impetus-sink exactly once.
usage: test_interop.py IMPETUS IMPETUS_SINK
Exits 77 when smtp-source or postfix is missing."""
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
from email.message import EmailMessage

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
from lsnlib import check, enginelib, finish, free_port, sinklib, wait_port  # noqa: E402
from testlib import read_jsonl, wait_until  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
SESSIONS, PER_SESSION = 50, 4
RELAYED = 20

imp, sinkbin = sys.argv[1], sys.argv[2]
for tool in (SMTP_SOURCE, POSTFIX):
    if not os.access(tool, os.X_OK):
        print("SKIP: %s missing (Debian package postfix)" % tool)
        sys.exit(77)
if os.geteuid() != 0:
    print("SKIP: a private Postfix instance needs root")
    sys.exit(77)


def sink_rcpts(jl):
    return [r for m in read_jsonl(jl) for r in m["rcpts"]]


d = tempfile.mkdtemp(prefix="impetus-interop.")
os.chmod(d, 0o755)  # Postfix's daemons run as the postfix user
pf = os.path.join(d, "pf")
jl = os.path.join(d, "sink.jsonl")
sink = sinklib.Sink(sinkbin, ["--jsonl", jl, "--save-dir", d])
port = free_port()
conf = ('TLS = "no"\nGateway = "127.0.0.1:%d"\n'
        'ESMTP_Listener {\n'
        '  Relay_Hosts = ( "127.0.0.1/32" )\n'
        '  Listen "127.0.0.1:%d" { }\n'
        '}\n' % (sink.port, port))
e = enginelib.Engine(imp, conf, "interop")
pf_started = False
try:
    e.start()
    check(wait_port(port), "listener accepts connections")

    # smtp-source: 50 sessions in parallel, each message on its own
    # connection (smtp-source does not pipeline), unique recipients (-N)
    n = SESSIONS * PER_SESSION
    r = subprocess.run([SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(n), "-l", "1024", "-N",
                        "-f", "src@sender.test", "-t", "dst@source.test", "-M", "client.test",
                        "127.0.0.1:%d" % port], capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, "smtp-source exit %d: %s" % (r.returncode, r.stderr[-400:]))
    wait_until(lambda: sum(1 for x in sink_rcpts(jl) if x.endswith("@source.test")) >= n, 60,
               "smtp-source's %d messages at the sink" % n)
    got = [x for x in sink_rcpts(jl) if x.endswith("@source.test")]
    check(len(got) == n and len(set(got)) == n,
          "smtp-source: %d of %d delivered (%d distinct)" % (len(got), n, len(set(got))))

    # a private Postfix whose relayhost is the listener
    pf_port = free_port()
    sh = ('. "%s/bench/postfix/pf_instance.sh"; pf_instance "$1" "$2" "$3" "$4" "$5"'
          % ROOT)
    r = subprocess.run(["bash", "-c", sh, "pf", pf, os.path.join(d, "pfqueue"), str(pf_port),
                        str(port), "pfrelay.localdomain"], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        print("SKIP: cannot make a Postfix instance: %s" % (r.stderr or r.stdout)[-400:])
        sys.exit(77)
    r = subprocess.run([POSTFIX, "-c", os.path.join(pf, "etc"), "start"], capture_output=True,
                       text=True, timeout=60)
    pf_started = r.returncode == 0
    check(pf_started, "postfix start: %s" % (r.stderr or r.stdout)[-400:])
    check(wait_port(pf_port, 30), "postfix smtpd accepts connections")
    ids = []
    with smtplib.SMTP("127.0.0.1", pf_port, timeout=30) as c:
        for i in range(RELAYED):
            m = EmailMessage()
            m["From"] = "app@sender.test"
            m["To"] = "user%d@relayed.test" % i
            m["Subject"] = "via postfix %d" % i
            m["Message-ID"] = "<pf-%d@sender.test>" % i
            m.set_content("relayed by Postfix into Impetus\n")
            check(c.send_message(m) == {}, "postfix accepted message %d" % i)
            ids.append(m["Message-ID"])
    wait_until(lambda: sum(1 for x in sink_rcpts(jl) if x.endswith("@relayed.test"))
               >= RELAYED, 90, "Postfix's %d relayed messages at the sink" % RELAYED)
    got = sorted(x for x in sink_rcpts(jl) if x.endswith("@relayed.test"))
    check(got == sorted("user%d@relayed.test" % i for i in range(RELAYED)),
          "postfix relayhost: %d of %d delivered: %r" % (len(got), RELAYED, got[:5]))
    maillog = enginelib.Engine.read(os.path.join(pf, "maillog"))
    sent = maillog.count("status=sent (250 2.0.0 Ok: queued as")
    check(sent == RELAYED, "postfix logs %d relayed with the listener's 250 (of %d)"
          % (sent, RELAYED))
    bodies = b"".join(open(os.path.join(d, f), "rb").read()
                      for f in os.listdir(d) if f.endswith(".eml"))
    check(all(i.encode() in bodies for i in ids), "relayed Message-IDs reach the sink")
    check(b"by pfrelay.localdomain (Postfix)" in bodies, "Postfix's Received: kept")
    check(e.stop() == 0, "engine stops cleanly")
finally:
    if pf_started:
        subprocess.run([POSTFIX, "-c", os.path.join(pf, "etc"), "stop"], capture_output=True,
                       timeout=60)
    e.cleanup()
    sink.stop()
    sink.cleanup()
    shutil.rmtree(d, ignore_errors=True)

finish()
