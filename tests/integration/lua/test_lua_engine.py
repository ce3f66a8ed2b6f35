"""Lua safety end to end (issue 8): a hook that raises an error, one that
loops forever and one that allocates without bound, in the ingest thread
(validate_data_spool) and in a worker (outbound_smtp_auth_config), each run
under the small budgets set in the scriptlet stanza. Each failure is logged
once in the paniclog with the script and line, counted by the metrics
endpoint per hook and cause, the engine keeps running, and every message is
still delivered to impetus-sink (AUTH with the configured credentials).

usage: test_lua_engine.py IMPETUS SINK IMPETUS_CTL"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
sys.path.insert(0, os.path.join(HERE, "..", "ops"))
from enginelib import Engine, sinklib  # noqa: E402
from test_ops import free_port, parse_metrics, scrape  # noqa: E402

# Line numbers matter: the test checks them in the paniclog.
SCRIPT = """local mod = {}
hoard = {}
local function act(what)
  if what == 'error' then
    local t = nil; return t.field
  elseif what == 'loop' then
    while true do end
  elseif what == 'bomb' then
    local i = 0
    while true do i = i + 1; hoard[i] = string.rep('x', 1000) .. i end
  end
end
local function kind(msg, stage)
  local k, s = (msg:rcptto() or ''):match('^(%a+)%-(%a+)@')
  if s == stage then return k end
end
function mod:validate_data_spool(msg, ac, vctx)
  print('ingest saw ' .. msg:rcptto())
  act(kind(msg, 'ingest'))
end
function mod:outbound_smtp_auth_config(msg, ac, vctx)
  act(kind(msg, 'auth'))
end
msys.registerModule('safety', mod)
"""

CASES = ["error-ingest", "loop-ingest", "bomb-ingest", "error-auth", "loop-auth", "bomb-auth"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    imp, sinkbin, ctl = sys.argv[1:4]
    tmp = tempfile.mkdtemp(prefix="lua-safety.")
    users = sinklib.users_file(tmp, [("msys", "right")])
    sink = sinklib.Sink(sinkbin, ["--auth-users", users])
    e = None
    try:
        script = os.path.join(tmp, "safety.lua")
        with open(script, "w") as f:
            f.write(SCRIPT)
        mport = free_port()
        conf = ('Worker_Threads = 2\nTLS = "no"\nGateway = "127.0.0.1:%d"\n'
                'Metrics_Listener = "127.0.0.1:%d"\n'
                'Outbound_SMTP_AUTH_Type = "PLAIN"\nOutbound_SMTP_AUTH_User = "msys"\n'
                'Outbound_SMTP_AUTH_Pass = "right"\nOutbound_SMTP_AUTH_Allow_Plaintext = true\n'
                'scriptlet "scriptlet" {\n'
                '  max_hook_instructions = 200000\n  max_hook_time_ms = 2000\n'
                '  max_state_memory = 4M\n  jit = false\n'
                '  script "safety" { source = "%s" }\n}\n'
                % (sink.port, mport, script[:-4]))
        e = Engine(imp, conf, "lua-safety")
        e.start()
        rcpts = ["ok-first@a.test"] + ["%s@a.test" % c for c in CASES]
        for r in rcpts:
            e.inject("s@example.org", [r])
        e.wait_for(lambda: len(e.records("D")) >= len(rcpts), 30, "%d deliveries" % len(rcpts))
        # after both states were recreated, hooks still run and mail flows
        rcpts.append("ok-after@a.test")
        e.inject("s@example.org", [rcpts[-1]])
        e.wait_for(lambda: len(e.records("D")) >= len(rcpts), 30, "%d deliveries" % len(rcpts))
        # a burst: the ingest thread logs every hook's print() while the
        # spool's hand-over thread writes the R records of earlier batches
        # (each thread has its own log writer; under TSan a shared one is
        # a reported race, and interleaved lines would break the checks)
        bulk = ["bulk%d-x@a.test" % i for i in range(300)]
        for r in bulk:
            e.inject("s@example.org", [r])
        rcpts += bulk
        e.wait_for(lambda: len(e.records("D")) >= len(rcpts), 60, "%d deliveries" % len(rcpts))
        check(not e.records("P") and len(e.records("D")) == len(rcpts),
              "every message delivered exactly once: %s" % e.records())
        check(len(e.records("R")) == len(rcpts), "one R record per message: %d" % len(e.records("R")))
        panic = e.read(e.paniclog)
        lua = [l for l in panic.splitlines() if "[safety]" in l or "Lua state" in l]

        def once(pattern, what):
            n = sum(1 for l in lua if re.search(pattern, l))
            check(n == 1, "%s: %d paniclog lines match %r:\n%s" % (what, n, pattern, "\n".join(lua)))
        for hook in ("validate_data_spool", "outbound_smtp_auth_config"):
            once(r"\[safety\] error: safety:%s: \S*safety\.lua:5: attempt to index" % hook,
                 "error in " + hook)
            once(r"\[safety\] error: safety:%s: \S*safety\.lua:7: hook exceeded its budget "
                 r"\(200000 instructions or 2000 ms\)" % hook, "endless loop in " + hook)
            once(r"\[safety\] error: safety:%s: memory limit \(4194304 bytes\) exceeded near "
                 r"\S*safety\.lua:10" % hook, "memory bomb in " + hook)
        check(sum("Lua state recreated" in l for l in lua) == 2, "two states recreated:\n%s" % panic)
        # print() reaches the paniclog with the script's name, also after recreation
        once(r"\[safety\] notice: ingest saw ok-first@a\.test", "print before")
        once(r"\[safety\] notice: ingest saw ok-after@a\.test", "print after the bomb")
        saw = set(re.findall(r"\[safety\] notice: ingest saw (bulk\d+)-x@a\.test$", panic, re.M))
        check(len(saw) == len(bulk), "%d of %d burst prints in the paniclog" % (len(saw), len(bulk)))
        # the metrics endpoint counts each failure once, by hook and cause
        head, body = scrape(mport)
        m = parse_metrics(body)
        errs = {(l["hook"], l["cause"]): v for l, v in m["impetus_lua_hook_errors_total"]}
        for hook in ("validate_data_spool", "outbound_smtp_auth_config"):
            for cause in ("error", "budget", "memory"):
                check(errs[(hook, cause)] == 1, "%s/%s: %s" % (hook, cause, errs))
        check(errs[("validate_set_binding", "error")] == 0, "no such hook: %s" % errs)
        calls = {l["hook"]: v for l, v in m["impetus_lua_hook_calls_total"]}
        check(calls["validate_data_spool"] == len(rcpts), "ingest calls: %s" % calls)
        check(calls["outbound_smtp_auth_config"] >= len(rcpts), "auth calls: %s" % calls)
        auth = {l["result"]: v for l, v in m["impetus_auth_total"]}
        check(auth["ok"] >= 1 and auth.get("failed", 0) == 0, "AUTH with configured creds: %s" % auth)
        check(e.proc.poll() is None, "engine still running")
        # the console sums the failures too
        p = subprocess.run([ctl, "-s", os.path.join(e.spool, "impetus.sock"), "--json",
                            "summary"], capture_output=True, text=True, timeout=10)
        check(p.returncode == 0 and json.loads(p.stdout)["lua_hook_errors"] == 6,
              "console summary: %s %s" % (p.stdout, p.stderr))
        check(e.stop() == 0, "engine exit status")
        print("\n".join(l for l in lua if "bulk" not in l))
    finally:
        if e:
            e.cleanup()
        sink.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
