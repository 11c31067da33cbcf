-- Trims one order stream below what every consumer group on it has
-- acknowledged, never past the retention floor; atomic, so a group's
-- position cannot move between reading it and trimming.
--
-- KEYS[1] the order stream. ARGV[1] the retention floor as a stream id
-- (entries at or after it are kept whatever the groups did).
-- Returns the number of entries trimmed.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  -- Nobody subscribed yet: nothing is known to be delivered.
  return 0
end
local point = ARGV[1]
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  local floor
  if tonumber(info['pending']) > 0 then
    -- The oldest entry delivered but not acknowledged stays.
    floor = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    floor = ms .. '-' .. (seq + 1)
  end
  if less(floor, point) then
    point = floor
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', point)
