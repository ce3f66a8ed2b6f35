"""The scriptlet sandbox in the engine (issue 18 item 16): a script whose top
level tries os.execute and io.open runs in a configuration that does not
mention `sandbox` (the default: on) and in one with `sandbox = false`. With
the sandbox neither file appears and the probe prints false; without it both
appear. The bundled examples load under the sandbox in test_luam.

usage: test_lua_sandbox.py IMPETUS"""
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
from enginelib import Engine  # noqa: E402

SCRIPT = """local ok1 = pcall(function() os.execute("touch %(d)s/executed") end)
local ok2 = pcall(function() local f = io.open("%(d)s/written", "w"); f:write("x"); f:close() end)
local ok3 = pcall(require, "ffi")
print("sandbox probe: execute " .. tostring(ok1) .. " io " .. tostring(ok2) .. " ffi " .. tostring(ok3))
msys.registerModule("probe", {})
"""


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def run(imp, tmp, option):
    d = tempfile.mkdtemp(prefix="probe.", dir=tmp)
    script = os.path.join(d, "probe.lua")
    with open(script, "w") as f:
        f.write(SCRIPT % {"d": d})
    conf = ('Worker_Threads = 1\nscriptlet "scriptlet" {\n%s  script "probe" { source = "%s" }\n}\n'
            % (option, script[:-4]))
    e = Engine(imp, conf, "lua-sandbox")
    try:
        e.start()
        e.wait_for(lambda: "sandbox probe" in e.read(e.paniclog), 20, "the probe's print")
        line = [l for l in e.read(e.paniclog).splitlines() if "sandbox probe" in l][0]
        check(e.stop() == 0, "engine exit status")
    finally:
        e.cleanup()
    return line, os.path.exists(os.path.join(d, "executed")), os.path.exists(os.path.join(d, "written"))


def main():
    imp = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="lua-sandbox.")
    try:
        line, executed, written = run(imp, tmp, "")
        print("default:", line)
        check("execute false io false ffi false" in line and not executed and not written,
              "the default configuration runs scripts sandboxed: %s" % line)
        line, executed, written = run(imp, tmp, "  sandbox = false\n")
        print("sandbox = false:", line)
        check("execute true io true ffi true" in line and executed and written,
              "sandbox = false gives full Lua: %s" % line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
