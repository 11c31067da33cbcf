-- Fair admission: hands out ARGV[1] tickets (0 = none, only a look) and
-- moves the tokens in the list to the oldest waiting tickets.
--
-- KEYS[1] token list, KEYS[2] line hash (`issued`, `served`).
-- ARGV: tickets to hand out.
-- Returns {issued, served}: the last ticket handed out (the caller's are
-- the ARGV[1] ending there) and the last one that has its token.
local issued = redis.call('HINCRBY', KEYS[2], 'issued', ARGV[1])
local served = tonumber(redis.call('HGET', KEYS[2], 'served')) or 0
if issued > served then
  local grant = math.min(redis.call('LLEN', KEYS[1]), issued - served)
  if grant > 0 then
    redis.call('LTRIM', KEYS[1], grant, -1)
    served = served + grant
    redis.call('HSET', KEYS[2], 'served', served)
  end
end
-- A line nobody looks at for ten minutes starts again from ticket 1.
redis.call('PEXPIRE', KEYS[2], 600000)
return {issued, served}
