"""The Lua script behind `RedisBudgets`: reserve, settle and usage, each ONE atomic round trip.

Data model (every key of a tenant carries the Cluster hash tag `{tenant}`, so a script only ever
touches one slot):

* window   `<p>{t}:[m:<model>:]<kind>[:<period>]`  HASH  s = spent, r = reserved (integers:
  requests, tokens, or nano-USD). Period keys (`rpm:<epoch-minute>`, `tok:day:2026-11-22`,
  `usd:month:2026-11`) get an EXPIREAT beyond the window's end when they are created; the
  concurrency key (`conc`) has no period and no expiry.
* active   `<p>{t}:rsv`        ZSET  member = request id, score = expiry (epoch ms). No expiry: it
  is empty (hence deleted by Redis) whenever nothing is in flight.
* record   `<p>{t}:rsv:<id>`   HASH  st = r (reserved) | x (reclaimed) | s (settled), t = estimate
  tokens, u = estimate nano-USD, c = one unit letter per window, k = window keys, e = their
  EXPIREATs (newline separated). No expiry while reserved; a tombstone TTL once reclaimed/settled.

Units: q = one request (spent on settle), t = tokens, u = nano-USD, c = a concurrency slot
(reserved while in flight, never spent).

Amounts are always passed as decimal strings from Python and handed to HINCRBY as such, so no
large number is ever formatted by Lua; Lua numbers (doubles) are only used for comparisons, exact
below 2^53.

ARGV common head: [1] op (R|S|U), [2] now (epoch ms), [3] record key prefix (`<p>{t}:rsv:`),
[4] max reservations reclaimed per call, [5] tombstone TTL (s).

R (reserve): KEYS = active, record, windows...; ARGV[6] expiry ms, [7] estimate tokens,
  [8] estimate nano-USD, [9] request id, [10] unit letters, then (limit, expireat) per window
  (limit -1: not enforced, only recorded; expireat 0: none).
  Returns {1, s1, r1, s2, r2, ...} (after reserving), {0, s1, r1, ...} (refused: nothing
  written), or {-1} (the request id already has a record).
S (settle): KEYS = active, record, windows... (declared for Cluster routing; the record is the
  source of truth); ARGV[6] actual tokens, [7] actual nano-USD, [8] request id.
  Returns {1} settled, {3} settled after reclaim (spend recorded, nothing released twice),
  {2} already settled (no-op), {0} unknown id (no-op).
U (usage): KEYS = active, windows...; returns {s1, r1, s2, r2, ...} after reclaiming.
"""

from __future__ import annotations

BUDGET_LUA = r"""
local op = ARGV[1]
local now = ARGV[2]
local rprefix = ARGV[3]
local maxn = tonumber(ARGV[4])
local tomb = ARGV[5]

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
  if existed == 0 and exat ~= '0' then redis.call('EXPIREAT', key, exat) end
end

local function reclaim(zkey)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, maxn)
  for _, id in ipairs(ids) do
    local rk = rprefix .. id
    local rec = redis.call('HMGET', rk, 'st', 't', 'u', 'c', 'k')
    if rec[1] == 'r' then
      local keys = split(rec[5])
      for i, k in ipairs(keys) do release(k, amount(string.sub(rec[4], i, i), rec[2], rec[3])) end
      redis.call('HSET', rk, 'st', 'x')
      redis.call('EXPIRE', rk, tomb)
    end
    redis.call('ZREM', zkey, id)
  end
end

if op == 'R' then
  reclaim(KEYS[1])
  local rk = KEYS[2]
  if redis.call('EXISTS', rk) == 1 then return {-1} end
  local tok, usd, units = ARGV[7], ARGV[8], ARGV[10]
  local n = #KEYS - 2
  local cur = {}
  local ok = 1
  for i = 1, n do
    local key = KEYS[i + 2]
    local v = redis.call('HMGET', key, 's', 'r')
    local s = tonumber(v[1]) or 0
    local r = tonumber(v[2]) or 0
    cur[2 * i - 1] = s
    cur[2 * i] = r
    local limit = tonumber(ARGV[9 + 2 * i])
    if limit >= 0 and s + r + tonumber(amount(string.sub(units, i, i), tok, usd)) > limit then ok = 0 end
  end
  if ok == 0 then
    local out = {0}
    for i = 1, 2 * n do out[i + 1] = cur[i] end
    return out
  end
  local out = {1}
  local keys, exats = {}, {}
  for i = 1, n do
    local key = KEYS[i + 2]
    local amt = amount(string.sub(units, i, i), tok, usd)
    local exat = ARGV[10 + 2 * i]
    redis.call('HINCRBY', key, 'r', amt)
    if exat ~= '0' and cur[2 * i - 1] == 0 and cur[2 * i] == 0 then
      -- (re)created just now: give it its expiry (an existing key already has one)
      if redis.call('TTL', key) == -1 then redis.call('EXPIREAT', key, exat) end
    end
    out[2 * i] = cur[2 * i - 1]
    out[2 * i + 1] = cur[2 * i] + tonumber(amt)
    keys[i] = key
    exats[i] = exat
  end
  redis.call('HSET', rk, 'st', 'r', 't', tok, 'u', usd, 'c', units,
             'k', table.concat(keys, '\n'), 'e', table.concat(exats, '\n'))
  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[9])
  return out
elseif op == 'S' then
  local rk = KEYS[2]
  local rec = redis.call('HMGET', rk, 'st', 't', 'u', 'c', 'k', 'e')
  if not rec[1] then return {0} end
  if rec[1] == 's' then return {2} end
  local releasing = rec[1] == 'r'
  local keys, exats = split(rec[5]), split(rec[6])
  for i, k in ipairs(keys) do
    local unit = string.sub(rec[4], i, i)
    if releasing then release(k, amount(unit, rec[2], rec[3])) end
    if unit ~= 'c' then spend(k, amount(unit, ARGV[6], ARGV[7]), exats[i]) end
  end
  redis.call('HSET', rk, 'st', 's')
  redis.call('EXPIRE', rk, tomb)
  redis.call('ZREM', KEYS[1], ARGV[8])
  if releasing then return {1} else return {3} end
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
"""
