#!/usr/bin/env python3
"""The ESMTP_Listener takes a reload without a restart (issue 21): after
SIGHUP (what `impetus-ctl config reload` sends) a Listen added opens, a
Listen removed stops accepting, new sessions get the new Peer scopes and
Relay_Hosts, and a session that was open goes on with the configuration it
started with.
usage: test_reload.py IMPETUS IMPETUS_SINK"""
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lsnlib import Client, can_connect, check, enginelib, finish, free_port, sinklib  # noqa: E402

imp, sinkbin = sys.argv[1], sys.argv[2]


def wait(cond, deadline=20):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def relay(c):
    c.cmd("RSET")
    c.cmd("MAIL FROM:<a@sender.test>")
    return c.cmd("RCPT TO:<b@rcpt.test>")[0]


def listener_conf(ports, relay, banner):
    return ('ESMTP_Listener {\n'
            '  Relay_Hosts = ( %s )\n'
            '  Peer "127.0.0.2/32" { Banner_Hostname = "%s" }\n'
            '%s}\n' % (" ".join('"%s"' % r for r in relay), banner,
                       "".join('  Listen "127.0.0.1:%d" { }\n' % p for p in ports)))


d = os.path.join("/tmp", "impetus-lsnrl-%d" % os.getpid())
os.makedirs(d, exist_ok=True)
sink = sinklib.Sink(sinkbin, ["--save-dir", d])
p1, p2 = free_port(), free_port()
base = 'TLS = "no"\nGateway = "127.0.0.1:%d"\n' % sink.port
e = enginelib.Engine(imp, base + listener_conf([p1], ["127.0.0.1/32"], "old.test"), "lsnrl")
with open(e.conf) as f:
    head = f.read().split("ESMTP_Listener {")[0]


def reload_to(body, nth):
    with open(e.conf, "w") as f:
        f.write(head + body)
    e.proc.send_signal(signal.SIGHUP)
    e.wait_for(lambda: e.read(e.paniclog).count("esmtp_listener: reloaded") >= nth, 20,
               "listener reload %d" % nth)


try:
    e.start()
    check(wait(lambda: can_connect(p1)), "first Listen open")
    old = Client(p1, "127.0.0.2")
    code, lines = old.reply()
    check(code == 220 and "old.test" in lines[0], "banner of the first configuration: %r" % lines)
    old.cmd("EHLO old.test")
    check(relay(old) == 554, "127.0.0.2 may not relay (first configuration)")

    # second configuration: p1 removed, p2 added, 127.0.0.2 may relay
    reload_to(listener_conf([p2], ["127.0.0.0/8"], "new.test"), 1)
    check(wait(lambda: can_connect(p2)), "an added Listen opens on reload")
    check(wait(lambda: not can_connect(p1)), "a removed Listen stops accepting")
    new = Client(p2, "127.0.0.2")
    code, lines = new.reply()
    check(code == 220 and "new.test" in lines[0], "new session: the new Peer scope: %r" % lines)
    new.cmd("EHLO new.test")
    check(relay(new) == 250, "new session: the new Relay_Hosts")
    check(old.cmd("NOOP")[0] == 250, "the open session goes on after its Listen is removed")
    check(relay(old) == 554, "the open session keeps its configuration")
    old.cmd("QUIT")
    new.cmd("QUIT")

    # third: p1 back beside p2, and a script with an inbound hook (the
    # engine started without one)
    script = os.path.join(d, "reloaded.lua")
    with open(script, "w") as f:
        f.write('local mod = {}\n'
                'function mod:validate_ehlo(str, ac, vctx)\n'
                '  if tostring(str) == "lua.reload" then\n'
                '    vctx:set_code(550, "5.7.1 refused by the reloaded script")\n'
                '    return msys.core.VALIDATE_DONE\n'
                '  end\n'
                '  return msys.core.VALIDATE_CONT\n'
                'end\n'
                'msys.registerModule("reloaded", mod)\n')
    reload_to('scriptlet "scriptlet" { script "reloaded" { source = "%s" } }\n' % script[:-4]
              + listener_conf([p1, p2], ["127.0.0.1/32"], "third.test"), 2)
    check(wait(lambda: can_connect(p1)), "a Listen added back opens")
    c = Client(p1, "127.0.0.2")
    code, lines = c.reply()
    check(code == 220 and "third.test" in lines[0], "third configuration's banner: %r" % lines)
    code, lines = c.cmd("EHLO lua.reload")
    check(code == 550 and "reloaded script" in lines[0], "a script added by reload runs: %r" % lines)
    c.cmd("QUIT")

    # a broken listener configuration is refused: the old one stays
    reload_to('scriptlet "scriptlet" { script "reloaded" { source = "%s" } }\n' % script[:-4]
              + listener_conf([p1, p2], ["127.0.0.1/32"], "third.test").replace(
        '{ }\n', '{ SMTP_Extensions = ( "NOSUCH" ) }\n', 1), 2)
    check(wait(lambda: "reload not applied" in e.read(e.paniclog)), "a bad reload is refused")
    check(can_connect(p1) and can_connect(p2), "and the sockets stay")
    check(e.stop() == 0, "engine stops cleanly")
finally:
    e.cleanup()
    sink.stop()
    sink.cleanup()
    shutil.rmtree(d, ignore_errors=True)

finish()
