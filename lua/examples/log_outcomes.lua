-- log_outcomes.lua: delivery outcomes to the paniclog (or, with a
-- datasource, to a feedback table via msys.db.execute).
-- The hooks are named after Momentum's core_log_*_v1 hooks; dr is a table
-- { domain, binding, remote_ip, code, response, retries }, now the time in
-- seconds and note the remote reply. Their return value is ignored.
require("msys.core")

local mod = {}

local function line(kind, msg, dr, note)
  return string.format("%s %s to %s via %s (%s) retries=%d: %s", kind, msg.id,
    dr.domain or "?", dr.binding or "default", dr.remote_ip or "-", dr.retries or 0, note)
end

function mod:core_log_delivery_v1(msg, dr, now, note)
  print(line("delivered", msg, dr, note))
end

function mod:core_log_transient_failure_v1(msg, dr, now, note)
  print(line("tempfail", msg, dr, note))
end

function mod:core_log_permanent_failure_v1(msg, dr, now, note)
  print(line("permfail", msg, dr, note))
end

msys.registerModule("log_outcomes", mod)
