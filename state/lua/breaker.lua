-- Circuit breakers: one hash per key (v version, s state, u opened_until, t trips, g probes
-- granted, a last grant time, c closed_at, ring buckets w<slot> = "<second>:<calls>:<failures>").
-- One key per call, so it is Redis Cluster safe. Times are passed and stored as decimal strings
-- (Lua would truncate a float reply to an integer).
-- Ops: A allow, R record, S state (read). Reply: {allowed, state, opened_until, trips, calls,
-- failures, version}.
local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local min_calls = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
local base = tonumber(ARGV[6])
local maxc = tonumber(ARGV[7])
local probes = tonumber(ARGV[8])
local probe_timeout = tonumber(ARGV[9])
local memory = tonumber(ARGV[10])
local ttl = tonumber(ARGV[11])
local failure = ARGV[12] == '1'

local h = redis.call('HGETALL', key)
local st = {}
for i = 1, #h, 2 do st[h[i]] = h[i + 1] end
local state = st['s'] or 'closed'
local until_ = tonumber(st['u'] or '0')
local trips = tonumber(st['t'] or '0')
local granted = tonumber(st['g'] or '0')
local granted_at = tonumber(st['a'] or '0')
local closed_at = tonumber(st['c'] or '0')
local ver = tonumber(st['v'] or '0')
local sec = math.floor(now)

local function window_sums()
  local calls, fails = 0, 0
  for f, v in pairs(st) do
    if string.sub(f, 1, 1) == 'w' then
      local bs, bc, bf = string.match(v, '^(%-?%d+):(%d+):(%d+)$')
      bs = tonumber(bs)
      if bs > sec - window and bs <= sec then
        calls = calls + tonumber(bc)
        fails = fails + tonumber(bf)
      end
    end
  end
  return calls, fails
end

local function clear_window()
  local dead = {}
  for f, _ in pairs(st) do
    if string.sub(f, 1, 1) == 'w' then dead[#dead + 1] = f end
  end
  for _, f in ipairs(dead) do st[f] = nil end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
end

local function trip(from_closed)
  if from_closed and closed_at > 0 and now - closed_at >= memory then trips = 0 end
  trips = trips + 1
  local cd = base * math.pow(2, trips - 1)
  if cd > maxc then cd = maxc end
  state = 'open'
  until_ = now + cd
  granted = 0
  clear_window()
end

local function save()
  ver = ver + 1
  redis.call('HSET', key, 'v', ver, 's', state, 'u', string.format('%.6f', until_), 't', trips,
    'g', granted, 'a', string.format('%.6f', granted_at), 'c', string.format('%.6f', closed_at))
  redis.call('EXPIRE', key, ttl)
end

local function reply(allowed)
  local eff = state
  if eff == 'open' and now >= until_ then eff = 'half_open' end
  local calls, fails = 0, 0
  if eff == 'closed' then calls, fails = window_sums() end
  local u = '0'
  if eff ~= 'closed' then u = string.format('%.6f', until_) end
  return {allowed, eff, u, trips, calls, fails, ver}
end

if op == 'A' then
  if state == 'closed' then return reply(1) end
  if state == 'open' then
    if now < until_ then return reply(0) end
    state = 'half_open'
    granted = 0
    granted_at = now
  end
  if granted >= probes and now - granted_at >= probe_timeout then granted = 0 end
  if granted < probes then
    granted = granted + 1
    granted_at = now
    save()
    return reply(1)
  end
  save()
  return reply(0)
elseif op == 'R' then
  if state == 'open' then
    return reply(0)
  elseif state == 'half_open' then
    if failure then
      trip(false)
    else
      state = 'closed'
      until_ = 0
      granted = 0
      closed_at = now
      clear_window()
    end
    save()
    return reply(0)
  end
  local slot = 'w' .. (sec % window)
  local calls, fails = 0, 0
  local cur = st[slot]
  if cur then
    local bs, bc, bf = string.match(cur, '^(%-?%d+):(%d+):(%d+)$')
    if tonumber(bs) == sec then calls = tonumber(bc); fails = tonumber(bf) end
  end
  calls = calls + 1
  if failure then fails = fails + 1 end
  st[slot] = sec .. ':' .. calls .. ':' .. fails
  redis.call('HSET', key, slot, st[slot])
  local wc, wf = window_sums()
  if wc >= min_calls and wf >= rate * wc then trip(true) end
  save()
  return reply(0)
else
  return reply(0)
end
