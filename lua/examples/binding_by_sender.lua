-- binding_by_sender.lua: choose the binding (source IP and its options)
-- from the envelope sender's domain. validate_set_binding runs at ingest
-- and again when a message is recovered from the spool, so it must only
-- look at the message and decide; it must not change anything else.
require("msys.core")
require("msys.extended.message")

local by_domain = {
  ["tenant-a.example"] = "tenant_a",
  ["tenant-b.example"] = "tenant_b",
}
local fallback_group = "shared" -- a binding_group; one of its bindings is picked

local mod = {}

function mod:validate_set_binding(msg)
  local domain = string.match(msg:mailfrom() or "", "@([^@]+)$")
  local binding = domain and by_domain[string.lower(domain)]
  if binding and msg:binding(binding) then
    return msys.core.VALIDATE_DONE
  end
  msg:binding_group(fallback_group)
  return msys.core.VALIDATE_CONT
end

msys.registerModule("binding_by_sender", mod)
