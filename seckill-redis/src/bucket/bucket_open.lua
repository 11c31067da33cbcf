-- Opens a new sale's bucket full: starts the generator's schedule now and
-- fills the token list to the capacity, unless a schedule runs already
-- (a gateway that restarts, or a sale replaced, changes nothing).
--
-- KEYS[1] token list, KEYS[2] generator clock. ARGV[1] capacity.
-- Returns the tokens pushed.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 's', t[1], 'us', t[2], 'rem', 0)
redis.call('PEXPIRE', KEYS[2], 60000)
local fit = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[1])
if fit > 0 then
  fill(KEYS[1], fit)
  redis.call('PEXPIRE', KEYS[1], 60000)
  return fit
end
return 0
