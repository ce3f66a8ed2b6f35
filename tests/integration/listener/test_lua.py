#!/usr/bin/env python3
"""Momentum's inbound Lua hooks on the ESMTP_Listener (issue 21):
validate_connect(ac, vctx), validate_ehlo(str, ac, vctx),
ac:esmtp_capability_add/remove (one session's EHLO reply) and
ac:inbound_session_count,
validate_mailfrom(str, ac, vctx), validate_rcptto(msg, str, ac, vctx) with
vctx:set_code / vctx:disconnect / VCTX_CONN can_relay; a msys.db query in
validate_rcptto (the hook waits for the datasource, the session holds its
reply); validate_data_spool sees the message context set at MAIL; the Lua
AUTH backend (AuthLoginParameters uri = "ac_auth://",
ac_auth_perform_auth); a script error or a runaway loop answers a
temporary failure and is logged, never accepted, and the listener goes on.
usage: test_lua.py IMPETUS IMPETUS_SINK"""
import base64
import os
import shutil
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lsnlib import Client, check, enginelib, finish, free_port, sinklib, wait_port  # noqa: E402

imp, sinkbin = sys.argv[1], sys.argv[2]


SCRIPT = r'''
require("msys.core")
require("msys.extended.ac")
require("msys.db")
local mod = {}

function mod:validate_connect(ac, vctx)
  if ac.remote_addr:match("^127%.0%.0%.9:") then
    vctx:set_code(554, "5.7.1 no service for " .. ac.remote_addr)
    return msys.core.VALIDATE_DONE
  end
  if ac.remote_addr:match("^127%.0%.0%.8:") then
    error("boom in validate_connect")
  end
  vctx:set(msys.core.VCTX_CONN, "remote", ac.remote_addr)
  ac:esmtp_capability_add("SIZE 104857600") -- Momentum's example: replaces SIZE
  if ac.remote_addr:match("^127%.0%.0%.3:") then -- this session only
    ac:esmtp_capability_remove("PIPELINING")
    ac:esmtp_capability_add("X-IMPETUS-TEST one two")
  end
  return msys.core.VALIDATE_CONT
end

function mod:validate_ehlo(str, ac, vctx)
  local s = tostring(str)
  if s == "bad.ehlo" then
    vctx:set_code(550, "5.7.1 not with that name")
    return msys.core.VALIDATE_DONE
  end
  if s == "relay.ehlo" then
    vctx:set(msys.core.VCTX_CONN, "can_relay", "true")
  end
  if s == "caps.ehlo" then -- changes the reply to this very EHLO
    ac:esmtp_capability_remove("enhancedstatuscodes")
  end
  if s == "inject.ehlo" then -- not a capability: an error, never sent
    ac:esmtp_capability_add("X-BAD\r\n250 INJECTED")
  end
  if s == "count.ehlo" then
    vctx:set_code(550, string.format("5.7.1 sessions %d %d %d %d",
      ac:inbound_session_count(), ac:inbound_session_count("127.0.0.6/32"),
      ac:inbound_session_count("/30"), ac:inbound_session_count(nil, "Control")))
    return msys.core.VALIDATE_DONE
  end
  return msys.core.VALIDATE_CONT
end

function mod:validate_mailfrom(str, ac, vctx)
  local s = tostring(str)
  if s == "blocked@sender.test" then
    vctx:set_code(550, "5.7.1 sender blocked by policy")
    return msys.core.VALIDATE_DONE
  end
  if s == "bye@sender.test" then
    vctx:disconnect(421, "4.7.0 policy says goodbye")
    return msys.core.VALIDATE_DONE
  end
  if s == "loop@sender.test" then
    while true do end
  end
  vctx:set(msys.core.VCTX_MESS, "policy_tag", "from:" .. s)
  return msys.core.VALIDATE_CONT
end

function mod:validate_rcptto(msg, str, ac, vctx)
  local s = tostring(str)
  if s:match("^deny") then
    vctx:set_code(550, "5.1.1 " .. s .. " refused by policy")
    return msys.core.VALIDATE_DONE
  end
  if s:match("^err") then
    error("boom in validate_rcptto")
  end
  if s:match("^db") then
    local row = msys.db.fetch_row("users", "SELECT ok FROM rcpts WHERE name = ?", { s },
                                  { nocache = true })
    if msg:rcptto() ~= s then
      vctx:set_code(451, "4.3.0 msg:rcptto() is " .. tostring(msg:rcptto()) .. " after the query")
      return msys.core.VALIDATE_DONE
    end
    if not row or tonumber(row.ok) ~= 1 then
      vctx:set_code(550, "5.1.1 " .. s .. " not in the database")
      return msys.core.VALIDATE_DONE
    end
  end
  return msys.core.VALIDATE_CONT
end

function mod:validate_data_spool(msg, ac, vctx)
  local tag = msg:context_get(msys.core.VCTX_MESS, "policy_tag")
  if msg:mailfrom() == "spoolcheck@sender.test" and tag ~= "from:spoolcheck@sender.test" then
    msg:code(550, "5.7.1 the message context did not reach data_spool: " .. tostring(tag))
  end
  if msg:mailfrom() == "spoolreject@sender.test" then
    msg:code(550, "5.7.1 data_spool says no")
  end
  return msys.core.VALIDATE_CONT
end

function mod:ac_auth_perform_auth(user, pass, ac, response)
  if user == "crash" then error("boom in ac_auth_perform_auth") end
  if user == "luauser" and pass == "luapass" then return msys.core.EC_AUTH_OK end
  if pass == "testx" then response:write("531 Get out of town", 19) end
  return msys.core.EC_AUTH_FAIL
end

msys.registerModule("listener_policy", mod)
'''

d = os.path.join("/tmp", "impetus-lsnlua-%d" % os.getpid())
os.makedirs(d, exist_ok=True)
script = os.path.join(d, "listener_policy.lua")
with open(script, "w") as f:
    f.write(SCRIPT)
db = os.path.join(d, "users.db")
con = sqlite3.connect(db)
con.execute("CREATE TABLE rcpts (name TEXT, ok INTEGER)")
con.execute("INSERT INTO rcpts VALUES ('db-yes@rcpt.test', 1), ('db-no@rcpt.test', 0)")
con.commit()
con.close()
jl = os.path.join(d, "sink.jsonl")
sink = sinklib.Sink(sinkbin, ["--jsonl", jl])
port = free_port()
conf = ('TLS = "no"\nGateway = "127.0.0.1:%d"\n'
        'Datasource "users" { uri = ( "sqlite:%s" ) }\n'
        'scriptlet "scriptlet" {\n'
        '  max_hook_instructions = 2000000\n  max_hook_time_ms = 500\n  jit = false\n'
        '  script "listener_policy" { source = "%s" }\n}\n'
        'ac_auth { }\n'
        'ESMTP_Listener {\n'
        '  Relay_Hosts = ( "127.0.0.1/32" )\n'
        '  SMTP_Extensions = ( "PIPELINING" "ENHANCEDSTATUSCODES" "AUTH LOGIN" "AUTH PLAIN" )\n'
        '  AuthLoginParameters = [ uri = "ac_auth://" ]\n'
        '  Allow_Plaintext_Auth = true\n'
        '  Max_Errors_Per_Connection = 0\n'
        '  Listen "127.0.0.1:%d" { }\n'
        '}\n' % (sink.port, db, script[:-4], port))
e = enginelib.Engine(imp, conf, "lsnlua")
try:
    e.start()
    check(wait_port(port), "listener accepts connections")

    # validate_connect refuses one address, errs on another, passes the rest
    c = Client(port, "127.0.0.9")
    code, lines = c.reply()
    check(code == 554 and "no service for 127.0.0.9:" in lines[0],
          "validate_connect set_code: %r" % lines)
    c.close()
    c = Client(port, "127.0.0.8")
    code, lines = c.reply()
    check(code == 421 and "4.3.0" in lines[0], "validate_connect error: 421 4.3.0: %r" % lines)
    c.close()

    c = Client(port)
    check(c.reply()[0] == 220, "greeting")
    code, lines = c.cmd("EHLO bad.ehlo")
    check(code == 550 and "not with that name" in lines[0], "validate_ehlo set_code: %r" % lines)
    check(c.cmd("EHLO good.ehlo")[0] == 250, "validate_ehlo passes")
    code, lines = c.cmd("MAIL FROM:<blocked@sender.test>")
    check(code == 550 and "sender blocked" in lines[0], "validate_mailfrom set_code: %r" % lines)
    code, lines = c.cmd("MAIL FROM:<loop@sender.test>")
    check(code == 451 and "4.3.0" in lines[0], "a runaway validate_mailfrom: 451: %r" % lines)
    check(c.cmd("RSET")[0] == 250, "the session goes on after a runaway hook")
    r = c.message("s@sender.test", "deny-1@rcpt.test", "deny")
    check(r[1][0] == 550 and "refused by policy" in r[1][1][0], "validate_rcptto set_code: %r" % r)
    c.cmd("RSET")
    r = c.message("s@sender.test", "err-1@rcpt.test", "err")
    check(r[1][0] == 451 and "4.3.0" in r[1][1][0], "validate_rcptto error: 451: %r" % r)
    c.cmd("RSET")
    # a datasource query: the reply waits for it
    r = c.message("s@sender.test", "db-no@rcpt.test", "dbno")
    check(r[1][0] == 550 and "not in the database" in r[1][1][0], "msys.db in rcptto (no): %r" % r)
    c.cmd("RSET")
    r = c.message("s@sender.test", "db-yes@rcpt.test", "dbyes")
    check([x[0] for x in r] == [250, 250, 354, 250], "msys.db in rcptto (yes): %r" % r)
    # validate_data_spool runs for listener messages and sees VCTX_MESS
    r = c.message("spoolcheck@sender.test", "ok-1@rcpt.test", "spoolcheck")
    check(r[-1][0] == 250, "data_spool saw the message context from validate_mailfrom: %r" % r)
    r = c.message("spoolreject@sender.test", "ok-2@rcpt.test", "spoolreject")
    check(r[-1][0] == 554 and "data_spool says no" in r[-1][1][0],
          "validate_data_spool rejects a listener message: %r" % r)
    # vctx:disconnect
    code, lines = c.cmd("MAIL FROM:<bye@sender.test>")
    check(code == 421 and "policy says goodbye" in lines[0], "vctx:disconnect: %r" % lines)
    check(c.reply()[0] == 0, "and the connection is closed")
    c.close()

    # ac:esmtp_capability_add/remove change the EHLO reply of one session
    c = Client(port)
    c.reply()
    code, lines = c.cmd("EHLO caps.ehlo")
    caps = [x[4:] for x in lines]
    check(code == 250 and "SIZE 104857600" in caps and "PIPELINING" in caps
          and "ENHANCEDSTATUSCODES" not in caps and lines[-1][3] == " "
          and all(x[3] == "-" for x in lines[:-1]),
          "validate_connect's add (SIZE replaced) and validate_ehlo's remove: %r" % lines)
    code, lines = c.cmd("EHLO again.ehlo")
    caps = [x[4:] for x in lines]
    check(code == 250 and "ENHANCEDSTATUSCODES" not in caps and "SIZE 104857600" in caps,
          "the changes last for the session: %r" % lines)
    code, lines = c.cmd("EHLO inject.ehlo")
    check(code == 451 and not any("INJECTED" in x for x in lines),
          "a capability with CRLF is a hook error (451), never sent: %r" % lines)
    c.close()
    c = Client(port, "127.0.0.3")
    c.reply()
    code, lines = c.cmd("EHLO relay.ehlo")
    check(code == 250 and "PIPELINING" not in [x[4:] for x in lines]
          and lines[-1] == "250 X-IMPETUS-TEST one two" and "250-SIZE 104857600" in lines,
          "127.0.0.3's session without PIPELINING, with X-IMPETUS-TEST last: %r" % lines)
    r = c.message("s@sender.test", "caps@rcpt.test", "caps")
    check(r[-1][0] == 250, "a message after the changed EHLO: %r" % r)
    c.close()
    c = Client(port)
    c.reply()
    code, lines = c.cmd("EHLO plain.ehlo")
    check("250-PIPELINING" in lines and "250-ENHANCEDSTATUSCODES" in lines
          and "250 SIZE 104857600" in lines and not any("X-IMPETUS" in x for x in lines),
          "another session keeps its own reply: %r" % lines)
    c.close()

    # ac:inbound_session_count: the listener's sessions from an address/CIDR
    held = [Client(port, "127.0.0.5"), Client(port, "127.0.0.5"), Client(port, "127.0.0.6")]
    for h in held:
        check(h.reply()[0] == 220, "greeting for a held session")
    code, lines = held[0].cmd("EHLO count.ehlo")
    check(code == 550 and lines[0].endswith("sessions 2 1 3 0"),
          "inbound_session_count(): 2 from 127.0.0.5, 1 in 127.0.0.6/32, 3 in /30, "
          "0 of service Control: %r" % lines)
    for h in held:
        h.close()

    # can_relay granted by a hook (127.0.0.2 is outside Relay_Hosts)
    c = Client(port, "127.0.0.2")
    c.reply()
    c.cmd("EHLO plain.ehlo")
    c.cmd("MAIL FROM:<s@sender.test>")
    check(c.cmd("RCPT TO:<x@rcpt.test>")[0] == 554, "127.0.0.2 may not relay")
    c.cmd("RSET")
    c.cmd("EHLO relay.ehlo")
    r = c.message("s@sender.test", "relayed@rcpt.test", "relayed")
    check(r[-1][0] == 250, "can_relay set by validate_ehlo allows relaying: %r" % r)
    c.close()

    # the Lua AUTH backend
    def auth(user, pw):
        c = Client(port, "127.0.0.2")
        c.reply()
        c.cmd("EHLO auth.test")
        tok = base64.b64encode(("\0%s\0%s" % (user, pw)).encode()).decode()
        out = c.cmd("AUTH PLAIN " + tok)
        return c, out
    c, (code, lines) = auth("luauser", "luapass")
    check(code == 235, "ac_auth_perform_auth accepts: %r" % lines)
    r = c.message("luauser@sender.test", "authrelay@rcpt.test", "authrelay")
    check(r[-1][0] == 250, "an authenticated client relays: %r" % r)
    c.close()
    c, (code, lines) = auth("luauser", "wrong")
    check(code == 535, "ac_auth_perform_auth refuses: %r" % lines)
    c.close()
    c, (code, lines) = auth("someone", "testx")
    check(code == 531 and "Get out of town" in lines[0], "response:write sets the reply: %r" % lines)
    c.close()
    c, (code, lines) = auth("crash", "x")
    check(code == 454 and "4.7.0" in lines[0], "an AUTH hook error: 454, not 235: %r" % lines)
    c.close()

    e.wait_for(lambda: len(e.records("D")) >= 5, 30, "5 deliveries")
    logged = ("boom in validate_connect", "boom in validate_rcptto", "budget",
              "boom in ac_auth_perform_auth", "is not an EHLO keyword")
    try:  # the listener writes its log between events: poll
        e.wait_for(lambda: all(w in e.read(e.paniclog) for w in logged), 10, "the hook errors logged")
    except (RuntimeError, TimeoutError):
        pass
    for what in logged:
        check(what in e.read(e.paniclog), "logged: %s" % what)
    check(e.stop() == 0, "engine stops cleanly")
finally:
    e.cleanup()
    sink.stop()
    sink.cleanup()
    shutil.rmtree(d, ignore_errors=True)

finish()
