/* The server-side scripts of the cluster client (cluster.c), loaded with
 * SCRIPT LOAD at each connect and run with EVALSHA. They read the time
 * from the Redis server (TIME; effects replication, Redis >= 5), so the
 * nodes' clocks never matter. Private to cluster.c. */
#pragma once

/* GCRA bucket. KEYS[1] = the bucket's theoretical arrival time (us).
 * ARGV: emission interval t (us), tolerance tau (us), want, min, ret.
 * Gives back `ret` unused tokens first, then grants min(want, available)
 * when at least `min` are available. Returns {granted, wait_us}: wait_us
 * is when `min` will be available (0 after a grant). */
static const char CLUSTER_LUA_GCRA[] =
  "local t = redis.call('TIME')\n"
  "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
  "local T = tonumber(ARGV[1])\n"
  "local tau = tonumber(ARGV[2])\n"
  "local want = tonumber(ARGV[3])\n"
  "local min = tonumber(ARGV[4])\n"
  "local ret = tonumber(ARGV[5])\n"
  "local tat = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
  "if tat < now then tat = now end\n"
  "if ret > 0 then\n"
  "  tat = tat - ret * T\n"
  "  if tat < now then tat = now end\n"
  "end\n"
  "local g = 0\n"
  "local wait = 0\n"
  "if want > 0 then\n"
  "  local avail = math.floor((now + tau - tat) / T)\n"
  "  if avail >= min then\n"
  "    if avail < want then g = avail else g = want end\n"
  "    tat = tat + g * T\n"
  "  else\n"
  "    wait = tat + min * T - tau - now\n"
  "  end\n"
  "end\n"
  "redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now + tau) / 1000) + 1000)\n"
  "return {g, math.floor(wait)}\n";

/* Connection leases. KEYS[1] = hash node -> leases held, KEYS[2] = zset
 * node -> lease expiry (ms), KEYS[3] = zset node -> wanting more, until.
 * ARGV: node, limit, want (absolute: what the node wants to hold), ttl_ms.
 * Drops expired holders, then moves the node towards `want`: down at
 * once, up within the limit and, while other nodes want more too, up to
 * ceil(limit / parties) only. Renews the node's leases.
 * Returns {held, share, others_wanting, total}. */
static const char CLUSTER_LUA_LEASE[] =
  "local t = redis.call('TIME')\n"
  "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
  "local node = ARGV[1]\n"
  "local limit = tonumber(ARGV[2])\n"
  "local want = tonumber(ARGV[3])\n"
  "local ttl = tonumber(ARGV[4])\n"
  "local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)\n"
  "if #dead > 0 then\n"
  "  redis.call('HDEL', KEYS[1], unpack(dead))\n"
  "  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)\n"
  "end\n"
  "local holders = redis.call('HGETALL', KEYS[1])\n"
  "local mine = 0\n"
  "local total = 0\n"
  "local parties = {}\n"
  "local np = 0\n"
  "for i = 1, #holders, 2 do\n"
  "  local v = tonumber(holders[i + 1])\n"
  "  total = total + v\n"
  "  if holders[i] == node then mine = v end\n"
  "  parties[holders[i]] = true\n"
  "  np = np + 1\n"
  "end\n"
  "local others = 0\n"
  "local wanters = redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf')\n"
  "for _, n in ipairs(wanters) do\n"
  "  if n ~= node then\n"
  "    others = others + 1\n"
  "    if not parties[n] then parties[n] = true; np = np + 1 end\n"
  "  end\n"
  "end\n"
  "if want > mine then\n"
  "  redis.call('ZADD', KEYS[3], now + ttl, node)\n"
  "  if not parties[node] then np = np + 1 end\n"
  "  redis.call('PEXPIRE', KEYS[3], ttl * 3)\n"
  "elseif #wanters > others then\n"
  "  redis.call('ZREM', KEYS[3], node)\n"
  "end\n"
  "if np == 0 then np = 1 end\n"
  "local share = math.ceil(limit / np)\n"
  "local new = mine\n"
  "if want > mine then\n"
  "  local g = want - mine\n"
  "  if limit - total < g then g = limit - total end\n"
  "  if others > 0 and share - mine < g then g = share - mine end\n"
  "  if g > 0 then new = mine + g end\n"
  "else\n"
  "  new = want\n"
  "end\n"
  "if new > 0 then\n"
  "  if new ~= mine then redis.call('HSET', KEYS[1], node, new) end\n"
  "  redis.call('ZADD', KEYS[2], now + ttl, node)\n"
  "  redis.call('PEXPIRE', KEYS[1], ttl * 3)\n"
  "  redis.call('PEXPIRE', KEYS[2], ttl * 3)\n"
  "elseif mine > 0 then\n"
  "  redis.call('HDEL', KEYS[1], node)\n"
  "  redis.call('ZREM', KEYS[2], node)\n"
  "end\n"
  "return {new, share, others, total - mine + new}\n";

/* Node heartbeat. KEYS[1] = zset node -> alive until (ms). ARGV: node,
 * ttl_ms, leave (1: remove the node). Returns the nodes alive. */
static const char CLUSTER_LUA_NODES[] =
  "local t = redis.call('TIME')\n"
  "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
  "if ARGV[3] == '1' then redis.call('ZREM', KEYS[1], ARGV[1])\n"
  "else redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) end\n"
  "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
  "redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 3)\n"
  "return redis.call('ZRANGE', KEYS[1], 0, -1)\n";
