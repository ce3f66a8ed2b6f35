-- tenant_credentials.lua: per-tenant SMTP AUTH credentials from SQLite.
--
-- Configuration:
--   Datasource "creds" { uri = ( "sqlite:/etc/impetus/creds.db" ) cache_life = 300 cache_size = 1000 }
--   Binding "tenant_a" { Outbound_SMTP_AUTH_Key = "somestring" ... }
--   scriptlet "scriptlet" { script "tenant_credentials" { source = "examples/tenant_credentials" } }
-- Table: CREATE TABLE creds (auth_key TEXT PRIMARY KEY, user TEXT, pass TEXT, mech TEXT);
--
-- Inside outbound_smtp_auth_config, reading the outbound_smtp_auth_key
-- context key returns the configured key of the message's scope unless a
-- context value was set. The query does not block the worker: the hook
-- waits for the answer while every other session goes on, and answers
-- are cached for cache_life seconds.
require("msys.core")
require("msys.db")

local mod = {}

function mod:outbound_smtp_auth_config(msg, ac, vctx)
  local key = msg:context_get(VCTX_MESS, "outbound_smtp_auth_key")
  if key == "" then
    return msys.core.VALIDATE_CONT -- no key for this scope: configuration applies
  end
  local row, err = msys.db.fetch_row("creds",
    "SELECT user, pass, mech FROM creds WHERE auth_key = ?", { key }, { raise_error = false })
  if not row then
    if err then print("tenant_credentials: lookup failed: " .. err) end
    return msys.core.VALIDATE_CONT
  end
  msg:context_set(VCTX_MESS, "outbound_smtp_auth_user", row.user)
  msg:context_set(VCTX_MESS, "outbound_smtp_auth_pass", row.pass)
  if row.mech then
    msg:context_set(VCTX_MESS, "outbound_smtp_auth_type", row.mech)
  end
  return msys.core.VALIDATE_CONT
end

msys.registerModule("tenant_credentials", mod)
