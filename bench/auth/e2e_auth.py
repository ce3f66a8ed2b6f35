#!/usr/bin/env python3
"""End-to-end outbound_smtp_auth benchmark (issues 7 and 8), several engine
configurations against impetus-sink in the same run: N x 1 KB messages to
D domains dropped into pickup/ at once and drained over loopback.

Runs (each a fresh engine, spool and sink):
  plain        no TLS, no AUTH                          (the bench/e2e.py baseline)
  tls          STARTTLS on every connection, no AUTH    (the no-AUTH figure)
  tls+auth     STARTTLS + AUTH per domain (sink --require-auth --require-tls-for-auth)
  lua+keep     STARTTLS + AUTH, credentials set per message by a Lua hook from an
               x-context key, Keep_Message_Dicts_In_Memory = true
  lua+nokeep   same with Keep_Message_Dicts_In_Memory = false (dictionaries read back)
  trivial-lua  tls+auth plus a trivial outbound_smtp_auth_config hook (issue 8)
Prints messages/s, engine CPU per message, and per-message read syscalls /
bytes read (rchar, read_bytes) from /proc/PID/io.

usage: bench/auth/e2e_auth.py BUILD_DIR [--messages N] [--domains N] [--tenants N]
       [--max-conns N] [--runs plain,tls,...]   (run it once or twice; the machine is shared)"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def io(pid):
    out = {}
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


def count_d(path, st):
    try:
        with open(path, "rb") as f:
            f.seek(st["off"])
            data = f.read()
    except FileNotFoundError:
        return st["n"]
    cut = data.rfind(b"\n") + 1
    st["off"] += cut
    st["n"] += data[:cut].count(b"@D@")
    return st["n"]


LUA_TENANT = """local mod = {}
function mod:outbound_smtp_auth_config(msg, ac, vctx)
  local t = msg:context_get(VCTX_MESS, "tenant")
  if t ~= "" then
    msg:context_set(VCTX_MESS, "outbound_smtp_auth_user", "tenant" .. t)
    msg:context_set(VCTX_MESS, "outbound_smtp_auth_pass", "pw" .. t)
  end
end
msys.registerModule("tenant", mod)
"""

LUA_TRIVIAL = """local mod = {}
function mod:outbound_smtp_auth_config(msg, ac, vctx)
end
msys.registerModule("trivial", mod)
"""


def run(build, name, a, certdir):
    impetus = os.path.join(build, "src/main/impetus")
    sinkbin = os.path.join(build, "tools/sink/impetus-sink")
    d = tempfile.mkdtemp(prefix="impetus-authbench.")
    tls = name != "plain"
    auth = name not in ("plain", "tls")
    lua = LUA_TENANT if name.startswith("lua") else LUA_TRIVIAL if name == "trivial-lua" else None
    try:
        spool = os.path.join(d, "spool")
        stage = os.path.join(spool, "stage")
        os.makedirs(os.path.join(spool, "pickup"))
        os.makedirs(stage)
        users = os.path.join(d, "users")
        with open(users, "w") as f:
            for i in range(a.domains):
                f.write("user%d:secret%d\n" % (i, i))
            for t in range(a.tenants):
                f.write("tenant%d:pw%d\n" % (t, t))
        ready = os.path.join(d, "ready")
        args = [sinkbin, "--listen", "127.0.0.1:0", "--ready-file", ready]
        if tls:
            args += ["--cert", os.path.join(certdir, "cert.pem"),
                     "--key", os.path.join(certdir, "key.pem")]
        if auth:
            args += ["--auth-users", users, "--require-auth", "--require-tls-for-auth"]
        sink = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        port = [l.split()[1].rsplit(":", 1)[1] for l in open(ready) if l.startswith("plain")][0]
        mainlog = os.path.join(d, "mainlog.ec")
        conf = os.path.join(d, "impetus.conf")
        with open(conf, "w") as f:
            f.write('User = "root"\n')  # stay root: 0700 temp dirs
            f.write('Spoolbase = "%s"\nWorker_Threads = %d\nTLS = "%s"\nTLS_Verify = "no"\n'
                    'Gateway = "127.0.0.1:%s"\nKeep_Message_Dicts_In_Memory = %s\n'
                    'Max_Outbound_Connections = %d\n'
                    'ec_logger { mainlog = "%s" paniclog = "%s/paniclog.ec" }\n'
                    % (spool, a.workers, "required" if tls else "no", port,
                       "false" if name == "lua+nokeep" else "true", a.max_conns, mainlog, d))
            if auth:
                f.write('outbound_smtp_auth { }\nOutbound_SMTP_AUTH_Type = "PLAIN"\n')
                for i in range(a.domains):
                    f.write('Domain "dest%d.test" { Outbound_SMTP_AUTH_User = "user%d" '
                            'Outbound_SMTP_AUTH_Pass = "secret%d" }\n' % (i, i, i))
            if lua:
                with open(os.path.join(d, "hook.lua"), "w") as lf:
                    lf.write(lua)
                f.write('scriptlet "scriptlet" { script "hook" { source = "%s/hook" } }\n' % d)
        body = "Subject: bench\n\n" + ("x" * 70 + "\n") * 13
        for i in range(a.messages):
            with open(os.path.join(stage, "m%06d" % i), "w") as f:
                f.write("x-sender: <bench@sender.test>\nx-receiver: <u%d@dest%d.test>\n"
                        % (i, i % a.domains))
                if name.startswith("lua"):
                    f.write("x-context: tenant=%d\n" % (i % a.tenants))
                f.write(body)
        imp = subprocess.Popen([impetus, "-c", conf], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(d, "paniclog.ec")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        c0, io0 = cpu_s(imp.pid), io(imp.pid)
        t0 = time.monotonic()
        for n in sorted(os.listdir(stage)):
            os.rename(os.path.join(stage, n), os.path.join(spool, "pickup", n))
        st = {"off": 0, "n": 0}
        deadline = time.monotonic() + 300
        while count_d(mainlog, st) < a.messages:
            if time.monotonic() > deadline or imp.poll() is not None:
                print("%s: FAILED: %d of %d delivered" % (name, st["n"], a.messages))
                break
            time.sleep(0.02)
        el = time.monotonic() - t0
        c1, io1 = cpu_s(imp.pid), io(imp.pid)
        imp.send_signal(signal.SIGTERM)
        imp.wait(timeout=30)
        sink.send_signal(signal.SIGTERM)
        summ = json.loads(sink.communicate(timeout=10)[0])
        m = a.messages
        print("%-12s %8.0f msg/s  CPU %6.1f us/msg  syscr %5.2f/msg  rchar %7.0f B/msg  "
              "read_bytes %6.0f B/msg  conns %4d  tls %4d  auth_ok %4d"
              % (name, m / el, (c1 - c0) / m * 1e6, (io1["syscr"] - io0["syscr"]) / m,
                 (io1["rchar"] - io0["rchar"]) / m, (io1["read_bytes"] - io0["read_bytes"]) / m,
                 summ["connections"], summ.get("tls_handshakes", 0), summ.get("auth_successes", 0)))
        sys.stdout.flush()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--tenants", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-conns", type=int, default=4, help="Max_Outbound_Connections")
    ap.add_argument("--runs", default="plain,tls,tls+auth,lua+keep,lua+nokeep,trivial-lua")
    a = ap.parse_args()
    certdir = tempfile.mkdtemp(prefix="authbench-cert.")
    subprocess.run([os.path.join(ROOT, "tools", "mkcert.sh"), certdir], check=True,
                   stdout=subprocess.DEVNULL)
    print("messages=%d domains=%d tenants=%d workers=%d" % (a.messages, a.domains, a.tenants,
                                                             a.workers))
    try:
        for name in a.runs.split(","):
            run(a.build, name, a, certdir)
    finally:
        shutil.rmtree(certdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
