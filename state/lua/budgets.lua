-- Budgets: reserve, settle, renew leases and read usage, each ONE atomic round trip.
--
-- Data model (every key of a tenant carries the Cluster hash tag `{tenant}`, so one call only
-- ever touches one slot):
--   window  <p>{t}:[m:<model>:]<kind>[:<period>]  HASH s = spent, r = reserved (integers:
--           requests, tokens or nano-USD). Period keys get an EXPIREAT beyond the window's end
--           when created; the concurrency key (conc) has no period and no expiry.
--   active  <p>{t}:rsv       ZSET member = request id, score = lease expiry (epoch ms). Live
--           replicas renew their leases (op L); an expired lease is reclaimed by the next
--           reserve/usage of the tenant, so a crashed replica blocks budget for one lease.
--   record  <p>{t}:rsv:<id>  HASH st = r (reserved) | x (reclaimed) | s (settled), t/u = the
--           estimate (tokens, nano-USD), c = unit letters, k = window keys (relative to
--           `<p>{t}:`), n = lease nonce, p = the previous settled lease of the same id.
--           No expiry while reserved; a short tombstone TTL (minutes) once reclaimed/settled:
--           as long as a replayed settle can still arrive, not days.
-- Units: q = one request (spent on settle), t = tokens, u = nano-USD, c = a concurrency slot.
-- Amounts travel as decimal strings and go to HINCRBY as such (no large number is formatted by
-- Lua); Lua numbers are only compared, exact below 2^53.
--
-- ARGV head: [1] op (R|S|L|U), [2] now (epoch ms), [3] record key prefix, [4] max reclaims per
-- call, [5] tombstone TTL (s).
-- R: KEYS = active, record, windows...; ARGV [6] lease expiry ms, [7] tokens, [8] nano-USD,
--    [9] request id, [10] unit letters, [11] nonce, then (limit, expireat) per window.
--    Returns {1, s1, r1, ...} reserved | {0, s1, r1, ...} refused (nothing written) |
--    {-1} the id is in flight. A finished id (settled or reclaimed) is reserved anew.
-- S: KEYS = active, record, windows...; ARGV [6] tokens, [7] nano-USD, [8] request id, [9] nonce,
--    [10] unit letters, then expireat per window. Returns {1} settled | {3} settled after
--    reclaim | {2} already settled | {4} no record of this lease (spend recorded into the given
--    windows and remembered: a tombstone that expired, a record lost in a fail-over, or spend
--    journaled while the store was down).
-- X: KEYS = active, record; ARGV [6] request id, [7] nonce. Releases a reservation whose reply was
--    lost (the caller timed out) if it exists and is still held. Returns 1 | 0.
-- L: KEYS = active; ARGV [6] new lease expiry ms, [7...] request ids. Returns the number renewed.
-- U: KEYS = active, windows...; returns {s1, r1, ...} after reclaiming.

local op = ARGV[1]
local now = ARGV[2]
local rprefix = ARGV[3]
local maxn = tonumber(ARGV[4])
local tomb = ARGV[5]

-- Records keep window keys relative to the tenant's base (`<p>{t}:`): a third of the bytes.
local base = string.sub(rprefix, 1, #rprefix - 4)
local function full(k)
  if string.sub(k, 1, #base) == base then return k end  -- a record written with full keys
  return base .. k
end

local function split(s)
  local out = {}
  if s then for part in string.gmatch(s, '[^\n]+') do out[#out + 1] = part end end
  return out
end

local function amount(unit, tok, usd)
  if unit == 't' then return tok elseif unit == 'u' then return usd else return '1' end
end

-- Give back `amt` reserved units, never below zero, never resurrecting an expired key.
local function release(key, amt)
  local cur = redis.call('HGET', key, 'r')
  if not cur then return end
  if tonumber(cur) <= tonumber(amt) then
    redis.call('HSET', key, 'r', '0')
  else
    redis.call('HINCRBY', key, 'r', '-' .. amt)
  end
end

local function spend(key, amt, exat)
  if tonumber(amt) == 0 then return end
  local existed = redis.call('EXISTS', key)
  redis.call('HINCRBY', key, 's', amt)
  if existed == 0 and exat and exat ~= '0' then redis.call('EXPIREAT', key, exat) end
end

local function reclaim(zkey)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, maxn)
  for _, id in ipairs(ids) do
    local rk = rprefix .. id
    local rec = redis.call('HMGET', rk, 'st', 't', 'u', 'c', 'k')
    if rec[1] == 'r' then
      for i, k in ipairs(split(rec[5])) do release(full(k), amount(string.sub(rec[4], i, i), rec[2], rec[3])) end
      redis.call('HSET', rk, 'st', 'x')
      redis.call('EXPIRE', rk, tomb)
    end
    redis.call('ZREM', zkey, id)
  end
end

if op == 'R' then
  reclaim(KEYS[1])
  local rk = KEYS[2]
  local prev = redis.call('HMGET', rk, 'st', 'n')
  if prev[1] == 'r' then return {-1} end
  local tok, usd, units = ARGV[7], ARGV[8], ARGV[10]
  local n = #KEYS - 2
  local cur = {}
  local ok = 1
  for i = 1, n do
    local v = redis.call('HMGET', KEYS[i + 2], 's', 'r')
    local s = tonumber(v[1]) or 0
    local r = tonumber(v[2]) or 0
    cur[2 * i - 1] = s
    cur[2 * i] = r
    local limit = tonumber(ARGV[10 + 2 * i])
    if limit >= 0 and s + r + tonumber(amount(string.sub(units, i, i), tok, usd)) > limit then ok = 0 end
  end
  if ok == 0 then
    local out = {0}
    for i = 1, 2 * n do out[i + 1] = cur[i] end
    return out
  end
  local out = {1}
  local keys = {}
  for i = 1, n do
    local key = KEYS[i + 2]
    local amt = amount(string.sub(units, i, i), tok, usd)
    local exat = ARGV[11 + 2 * i]
    redis.call('HINCRBY', key, 'r', amt)
    if exat ~= '0' and cur[2 * i - 1] == 0 and cur[2 * i] == 0 then
      -- (re)created just now: give it its expiry (an existing key already has one)
      if redis.call('TTL', key) == -1 then redis.call('EXPIREAT', key, exat) end
    end
    out[2 * i] = cur[2 * i - 1]
    out[2 * i + 1] = cur[2 * i] + tonumber(amt)
    keys[i] = string.sub(key, #base + 1)
  end
  redis.call('DEL', rk)
  redis.call('HSET', rk, 'st', 'r', 't', tok, 'u', usd, 'c', units, 'k', table.concat(keys, '\n'), 'n', ARGV[11])
  -- a finished lease of the same id: remember it, so its replayed settle stays a no-op
  if prev[1] == 's' then redis.call('HSET', rk, 'p', prev[2]) end
  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[9])
  return out
elseif op == 'S' then
  local rk = KEYS[2]
  local tok, usd, rid, nonce, units = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  local rec = redis.call('HMGET', rk, 'st', 't', 'u', 'c', 'k', 'n', 'p')
  local mine = rec[1] and rec[6] == nonce
  if (mine and rec[1] == 's') or (rec[1] and rec[7] == nonce) then return {2} end
  local releasing = mine and rec[1] == 'r'
  if releasing then
    for i, k in ipairs(split(rec[5])) do release(full(k), amount(string.sub(rec[4], i, i), rec[2], rec[3])) end
  end
  for i = 3, #KEYS do
    local unit = string.sub(units, i - 2, i - 2)
    if unit ~= 'c' then spend(KEYS[i], amount(unit, tok, usd), ARGV[8 + i]) end
  end
  if mine then
    redis.call('HSET', rk, 'st', 's')
    redis.call('EXPIRE', rk, tomb)
    redis.call('ZREM', KEYS[1], rid)
    if releasing then return {1} else return {3} end
  end
  if not rec[1] then
    redis.call('HSET', rk, 'st', 's', 'n', nonce)
    redis.call('EXPIRE', rk, tomb)
  end
  return {4}
elseif op == 'X' then
  -- release a reservation whose reply never arrived (timed out): only if it is ours and held
  local rk = KEYS[2]
  local rec = redis.call('HMGET', rk, 'st', 't', 'u', 'c', 'k', 'n')
  if rec[1] ~= 'r' or rec[6] ~= ARGV[7] then return 0 end
  for i, k in ipairs(split(rec[5])) do release(full(k), amount(string.sub(rec[4], i, i), rec[2], rec[3])) end
  redis.call('HSET', rk, 'st', 'x')
  redis.call('EXPIRE', rk, tomb)
  redis.call('ZREM', KEYS[1], ARGV[6])
  return 1
elseif op == 'L' then
  local renewed = 0
  for i = 7, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[6], ARGV[i])
      renewed = renewed + 1
    end
  end
  return renewed
elseif op == 'U' then
  reclaim(KEYS[1])
  local out = {}
  for i = 2, #KEYS do
    local v = redis.call('HMGET', KEYS[i], 's', 'r')
    out[#out + 1] = tonumber(v[1]) or 0
    out[#out + 1] = tonumber(v[2]) or 0
  end
  return out
end
return redis.error_reply('budgets: unknown op')
