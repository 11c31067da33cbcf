-- One generator tick: holds (or takes over) the sale's generator lease and
-- pushes the tokens due since the last tick into the capped token list.
--
-- KEYS[1] token list, KEYS[2] generator lease, KEYS[3] generator clock.
-- ARGV: instance, rate per second, capacity, lease ms, and the most
-- catch-up in microseconds (one second when absent).
-- Returns {issued, discarded, list length}; issued is -1 when another
-- instance holds the lease (nothing pushed).
--
-- The schedule lives in Redis (time of the last tick, and the remainder in
-- millionths of a token), so whoever holds the lease continues it exactly:
-- integer arithmetic, no drift, and a takeover never doubles the rate.
local holder = redis.call('GET', KEYS[2])
if not holder then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  return {-1, 0, redis.call('LLEN', KEYS[1])}
end

local rate = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local t = redis.call('TIME')
local s, us = tonumber(t[1]), tonumber(t[2])
local len = redis.call('LLEN', KEYS[1])
local clock = redis.call('HMGET', KEYS[3], 's', 'us', 'rem')
-- The clock outlives a short gap between holders, not a long one.
redis.call('PEXPIRE', KEYS[3], 60000)
local due
if not clock[1] then
  -- A schedule that starts now starts with a full bucket (as
  -- bucket_open.lua, whichever of the two comes first).
  redis.call('HSET', KEYS[3], 's', s, 'us', us, 'rem', 0)
  redis.call('PEXPIRE', KEYS[3], 60000)
  due = cap
else
  local elapsed = (s - tonumber(clock[1])) * 1000000 + (us - tonumber(clock[2]))
  local rem = tonumber(clock[3]) or 0
  if elapsed < 0 then
    elapsed = 0
  end
  -- At most one second of catch-up (keeps the arithmetic exact in doubles),
  -- or less when the caller knows nothing accrued before: a generator that
  -- found the list full looks at its length only, not at the clock, until
  -- the list has room again, and then asks for a tick or two.
  local most = tonumber(ARGV[5]) or 1000000
  if elapsed > most then
    elapsed = most
    rem = 0
  end
  local acc = elapsed * rate + rem
  due = math.floor(acc / 1000000)
  rem = acc - due * 1000000
  redis.call('HSET', KEYS[3], 's', s, 'us', us, 'rem', rem)
end

local fit = cap - len
if fit < 0 then fit = 0 end
if due < fit then fit = due end
fill(KEYS[1], fit)
-- Tokens nobody generates for any more (a removed or lost sale) go away
-- with the clock instead of staying forever.
if len + fit > 0 then
  redis.call('PEXPIRE', KEYS[1], 60000)
end
return {fit, due - fit, len + fit}
