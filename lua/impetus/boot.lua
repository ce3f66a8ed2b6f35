-- impetus/boot.lua: the msys environment every policy state starts with.
-- Loaded by luam.c before the scripts, with the table of C functions as
-- its argument; returns the hook dispatcher. Runs on the worker thread
-- that owns the state; never blocks (msys.db yields to the engine).
local C = ...

local CONT, DONE, AGAIN = 0, 1, 2

msys = msys or {}
local core = {
  VALIDATE_CONT = CONT, VALIDATE_DONE = DONE, VALIDATE_AGAIN = AGAIN,
  VCTX_CONN = 0, VCTX_MESS = 1,
  ECMESS_CTX_CONN = 0, ECMESS_CTX_MESS = 1,
}
msys.core = core
-- The outbound_smtp_auth examples use bare globals.
VCTX_CONN, VCTX_MESS = 0, 1
ECMESS_CTX_CONN, ECMESS_CTX_MESS = 0, 1

function core.get_now_ts() return C.now() end
-- Binding helpers used by SparkPost's sample policies.
function core.config_get_binding_id_from_name(name)
  return C.binding_exists(name) and 1 or -1
end

-- msys.config("eval"|"get", [scope name]..., option) -> value, text
function msys.config(action, ...)
  if action ~= "eval" and action ~= "get" then
    error("msys.config: unsupported action " .. tostring(action) .. " (eval, get)", 2)
  end
  local v = C.config(...)
  return v, v
end

function msys.expandMacro(s) return s end -- not supported: returned unchanged

-- print goes to the engine's paniclog, tagged with the calling script.
print = C.print

---------------------------------------------------------------------------
-- Modules and hooks
local modules = {}
local known = C.hook_names()

function msys.registerModule(name, mod)
  if type(mod) ~= "table" then
    error("msys.registerModule: module must be a table", 2)
  end
  local usable = false
  for _, h in ipairs(known) do
    if type(mod[h]) == "function" then
      usable = true
      C.note_hook(h)
    end
  end
  if not usable then
    C.warn("no usable methods found for module " .. tostring(name) .. " in registerModule call")
  end
  if type(mod.init) == "function" then mod:init() end
  modules[#modules + 1] = { name = tostring(name), mod = mod, script = C.current_script() }
end

local vctx_mt = { __index = {
  get = function(self, t, k) return self.msg:context_get(t, k) end,
  set = function(self, t, k, v) return self.msg:context_set(t, k, v) end,
  set_code = function(self, code, text) return self.msg:code(code, text) end,
  disconnect = function(self, code, text) return self.msg:disconnect(code or 421, text) end,
} }

-- The ESMTP listener's hooks (Momentum's signatures). luam.c passes the
-- session as msg, the command's string, the accept construct (a table:
-- remote_addr, local_addr) and, for AUTH, the password. A module that
-- raises an error stops the phase: the listener answers a temporary
-- failure (ERROR), never an acceptance.
local ERROR = 3
-- Momentum's ac_auth results (Impetus's values; scripts use the names).
core.EC_AUTH_OK, core.EC_AUTH_FAIL = 1, 0
local listener_hooks = {
  validate_connect = true, validate_ehlo = true, validate_mailfrom = true,
  validate_rcptto = true, ac_auth_perform_auth = true,
}

-- ac_auth's response (an ec_string in Momentum): write("531 text", len)
-- sets the reply to the failed AUTH.
local function auth_response(msg)
  return { write = function(_, text)
    text = tostring(text)
    local code, rest = text:match("^(%d%d%d)[ -](.*)$")
    msg:code(tonumber(code) or 535, rest or text)
  end }
end

-- The accept construct's methods (Momentum's msys.extended.ac) reach the
-- session through the msg the hook was called with (weak: a script that
-- keeps ac past its hook holds no session).
local ac_session = setmetatable({}, { __mode = "k" })
local function ac_msg(ac)
  local msg = ac_session[ac]
  if not msg then
    error("the session is not attached to an SMTP listener", 3)
  end
  return msg
end
-- msg's method, its error raised at the script's line
local function ac_call(ac, method, a, b)
  local msg = ac_msg(ac)
  local ok, r = pcall(msg[method], msg, a, b)
  if not ok then
    error((tostring(r):gsub("^[^:]*:%d+: ", "")), 3)
  end
  return r
end
local ac_mt = { __index = {
  -- change the EHLO reply of this session only ("SIZE 1000", "STARTTLS")
  esmtp_capability_add = function(self, name)
    ac_call(self, "esmtp_capability", tostring(name), true)
  end,
  esmtp_capability_remove = function(self, name)
    ac_call(self, "esmtp_capability", tostring(name), false)
  end,
  -- the listener's sessions from the connecting address (or cidr); only
  -- the SMTP service type exists in Impetus: the others count 0
  inbound_session_count = function(self, cidr, service)
    ac_msg(self)
    if service ~= nil and service ~= "SMTP" then
      local known = { ECStream = true, Control = true, ECmmove2 = true, ECCluster = true,
                      inbound_cidr = true }
      if not known[service] then
        error("ac:inbound_session_count: unknown service type " .. tostring(service), 2)
      end
      return 0
    end
    return ac_call(self, "inbound_session_count", cidr)
  end,
} }

local function listener_dispatch(hook, msg, str, ac, str2)
  local vctx = setmetatable({ msg = msg }, vctx_mt)
  setmetatable(ac, ac_mt)
  ac_session[ac] = msg
  for i = 1, #modules do
    local m = modules[i]
    local f = m.mod[hook]
    if f then
      local ok, r
      if hook == "validate_connect" then
        ok, r = pcall(f, m.mod, ac, vctx)
      elseif hook == "validate_rcptto" then
        ok, r = pcall(f, m.mod, msg, str, ac, vctx)
      elseif hook == "ac_auth_perform_auth" then
        ok, r = pcall(f, m.mod, str, str2, ac, auth_response(msg))
        if ok then -- the first module with the hook decides
          return r == core.EC_AUTH_OK and DONE or CONT
        end
      else
        ok, r = pcall(f, m.mod, str, ac, vctx)
      end
      if not ok then
        C.report(m.script, m.name, hook, r, f)
        return ERROR
      elseif r == DONE then
        return DONE
      end
    end
  end
  return CONT
end

-- The coroutine body of one hook call.
local function dispatch(hook, msg, a, b, c)
  if listener_hooks[hook] then
    return listener_dispatch(hook, msg, a, b, c)
  end
  if hook ~= "validate_set_binding" and a == nil then
    -- validation hooks get (msg, ac, vctx); ac is not modelled (nil)
    b = setmetatable({ msg = msg }, vctx_mt)
  end
  for i = 1, #modules do
    local m = modules[i]
    local f = m.mod[hook]
    if f then
      local ok, r
      if hook == "validate_set_binding" then
        ok, r = pcall(f, m.mod, msg)
      else
        ok, r = pcall(f, m.mod, msg, a, b, c)
      end
      if not ok then
        C.report(m.script, m.name, hook, r, f)
        if C.aborting() then return CONT end
      elseif r == DONE then
        return DONE
      end
    end
  end
  return CONT
end

---------------------------------------------------------------------------
-- msys.db: queries run in the engine's pool; the hook's coroutine yields
-- until the answer is back. Cached answers return without yielding.
local db = {}
msys.db = db

local caches = {} -- name -> { map = {}, n = 0, head = node, tail = node }

local function cache_key(sql, params)
  local parts = { sql }
  if params then
    local n = #params
    for i = 1, n do
      local v = params[i]
      parts[#parts + 1] = type(v) .. ":" .. tostring(v)
    end
    local named = {}
    for k, v in pairs(params) do
      if type(k) == "string" then named[#named + 1] = k .. "=" .. type(v) .. ":" .. tostring(v) end
    end
    table.sort(named)
    for _, s in ipairs(named) do parts[#parts + 1] = s end
  end
  return table.concat(parts, "\0")
end

local function copy_rows(rows)
  local out = {}
  for i = 1, #rows do
    local r, c = rows[i], {}
    for k, v in pairs(r) do c[k] = v end
    out[i] = c
  end
  return out
end

local function unlink(cache, e)
  if e.prev then e.prev.next = e.next else cache.head = e.next end
  if e.next then e.next.prev = e.prev else cache.tail = e.prev end
  e.prev, e.next = nil, nil
end

local function push_front(cache, e)
  e.next = cache.head
  if cache.head then cache.head.prev = e end
  cache.head = e
  if not cache.tail then cache.tail = e end
end

local function cache_get(name, key)
  local cache = caches[name]
  if not cache then return nil end
  local e = cache.map[key]
  if not e then return nil end
  if e.expires <= C.mono() then
    unlink(cache, e)
    cache.map[key] = nil
    cache.n = cache.n - 1
    return nil
  end
  unlink(cache, e)
  push_front(cache, e)
  return e.rows
end

local function cache_put(name, key, rows, life, size)
  local cache = caches[name]
  if not cache then
    cache = { map = {}, n = 0 }
    caches[name] = cache
  end
  local e = cache.map[key]
  if e then
    unlink(cache, e)
    cache.n = cache.n - 1
  end
  e = { key = key, rows = rows, expires = C.mono() + life }
  cache.map[key] = e
  push_front(cache, e)
  cache.n = cache.n + 1
  while cache.n > size do
    local t = cache.tail
    unlink(cache, t)
    cache.map[t.key] = nil
    cache.n = cache.n - 1
  end
end

local function run(name, sql, params, opts, execute)
  local life, size = C.ds_info(name)
  if not life then return nil, "msys.db: no such datasource: " .. tostring(name) end
  if type(sql) ~= "string" then return nil, "msys.db: query must be a string" end
  if params ~= nil and type(params) ~= "table" then return nil, "msys.db: params must be a table" end
  local key
  if not execute and not opts.nocache and life > 0 and size > 0 then
    key = cache_key(sql, params)
    local hit = cache_get(name, key)
    if hit then
      C.cache_hit()
      return copy_rows(hit)
    end
  end
  C.db_submit(name, sql, params, execute)
  local ok, res = coroutine.yield()
  if not ok then return nil, res end
  if execute then return true end
  if key then cache_put(name, key, copy_rows(res), life, size) end
  return res
end

local function result(rows)
  local i = 0
  return setmetatable(rows, { __call = function()
    i = i + 1
    return rows[i]
  end })
end

-- msys.db.query(name, sql, params, opts) -> iterable rows (for row in ...)
function db.query(name, sql, params, opts)
  opts = opts or {}
  local rows, err = run(name, sql, params, opts, false)
  if not rows then
    if opts.raise_error ~= false then error(err, 2) end
    return nil, err
  end
  return result(rows)
end

-- msys.db.fetch_row(...) -> first row or nil
function db.fetch_row(name, sql, params, opts)
  opts = opts or {}
  local rows, err = run(name, sql, params, opts, false)
  if not rows then
    if opts.raise_error ~= false then error(err, 2) end
    return nil, err
  end
  return rows[1]
end

-- msys.db.execute(...) -> true, or false/error
function db.execute(name, sql, params, opts)
  opts = opts or {}
  local ok, err = run(name, sql, params, opts, true)
  if not ok then
    if opts.raise_error ~= false then error(err, 2) end
    return false, err
  end
  return true
end

---------------------------------------------------------------------------
-- msys.adaptive.registerRules(rules, "augment"|"replace"): Momentum's
-- custom adaptive rules (a table keyed by domain: { responses = { { code =
-- PCRE, trigger = "1"|"C/S", action = {"suspend", "4 hours"} }, ... } },
-- or a string: an alias of another key). Each response becomes a response
-- rule of the engine (docs/adaptive.md) named "lua:DOMAIN:N" unless it has
-- a name; `provider = "google"` in a domain's table holds the provider's
-- mail instead of the domain's. Actions: suspend / blackhole (a suspension:
-- Impetus never drops mail), throttle "down" (60 messages an hour for an
-- hour), greylisted (retry interval), reduce_connections N,
-- reduce_deliveries N, backoff, or any response_rule action as
-- {action, value, duration}.
local adaptive = {}
local function rule_of(dom, i, spec, resp)
  local act = resp.action or {}
  if type(act[1]) == "table" then act = act[1] end
  local a, p1, p2 = act[1], act[2], act[3]
  local r = { name = resp.name or ("lua:" .. dom .. ":" .. i), pattern = resp.code,
              trigger = tostring(resp.trigger or "1"), source = resp.source }
  if spec.provider then
    r.provider, r.scope = spec.provider, "provider"
  else
    r.match_domain = dom
  end
  if a == "suspend" or a == "blackhole" or a == "backoff" then
    r.action, r.duration = (a == "backoff") and "backoff" or "suspend", p1 or "4 hours"
  elseif a == "throttle" then
    r.action, r.value, r.duration = "outbound_throttle_messages", "60/1h", "1 hour"
  elseif a == "greylisted" then
    r.action, r.value, r.duration = "retry_interval", p1 or "15 minutes", "1 hour"
  elseif a == "reduce_connections" then
    r.action, r.value, r.duration = "max_outbound_connections", p1 or 1, p2 or "1 hour"
  elseif a == "reduce_deliveries" then
    r.action, r.value, r.duration = "max_deliveries_per_connection", p1 or 1, p2 or "1 hour"
  else
    r.action, r.value, r.duration = a, p1, p2
  end
  local flat = {}
  for k, v in pairs(r) do flat[k] = tostring(v) end
  return flat
end

function adaptive.registerRules(rules, mode)
  if type(rules) ~= "table" then
    error("msys.adaptive.registerRules: rules must be a table", 2)
  end
  local clear = mode == "replace"
  local keys = {}
  for k in pairs(rules) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, dom in ipairs(keys) do
    local spec = rules[dom]
    if type(spec) == "string" then spec = rules[spec] end
    if type(spec) == "table" then
      for i, resp in ipairs(spec.responses or {}) do
        C.adaptive_rule(rule_of(dom, i, spec, resp), clear)
        clear = false
      end
    end
  end
end
msys.adaptive = adaptive

---------------------------------------------------------------------------
-- Momentum module names that common scripts require.
local function provide(name, value)
  package.preload[name] = function() return value end
end
-- msys.validate.opendkim.sign(msg, vctx, options): Momentum's Lua signing
-- (docs/dkim.md); true, or nil and the reason.
msys.validate = msys.validate or {}
msys.validate.opendkim = msys.validate.opendkim or {}
msys.validate.opendkim.sign = function(msg, vctx, options)
  return C.dkim_sign(msg, options)
end
provide("msys.core", core)
provide("msys.db", db)
provide("msys.adaptive", adaptive)
provide("msys.datasource", db)
for _, n in ipairs({ "msys.extended.message", "msys.extended.vctx", "msys.extended.message_routing",
                     "msys.extended.ac", "msys.pbp", "msys.boot", "msys.policyeditor",
                     "msys.validate.opendkim", "msys.gauge_cache", "msys.cidr",
                     "msys.dnsbl", "msys.audit", "msys.threadpool", "msys.bounce" }) do
  provide(n, msys)
end
provide("msys", msys)

return dispatch
