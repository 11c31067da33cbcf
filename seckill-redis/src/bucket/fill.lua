-- Shared by the bucket scripts (prepended to each): pushes `n` tokens onto
-- the token list `key`, in chunks that stay within Lua's argument limit.
local function fill(key, n)
  local left = n
  while left > 0 do
    local k = math.min(left, 1000)
    local args = {}
    for i = 1, k do args[i] = '1' end
    redis.call('RPUSH', key, unpack(args))
    left = left - k
  end
end
