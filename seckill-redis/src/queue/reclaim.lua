-- Claims entries left pending longer than the idle time (by a consumer
-- that died, or failed to decide them) and returns each with its delivery
-- count, which XAUTOCLAIM has just incremented.
-- KEYS[1] stream. ARGV: group, consumer, min idle ms, count.
-- Returns {{id, ticket JSON, deliveries}, ...}.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, e in ipairs(r[2]) do
  local id, fields = e[1], e[2]
  if fields then
    local ticket = ''
    for i = 1, #fields, 2 do
      if fields[i] == 't' then ticket = fields[i + 1] end
    end
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local n = 1
    if p[1] then n = p[1][4] end
    out[#out + 1] = {id, ticket, n}
  end
end
return out
