"""The Lua script that checks one batch of pushes in Redis, atomically."""

SCRIPT = """\
-- Rate-limit checks of one batch of pushes, atomically (see _redis.py).
-- KEYS[1]: the name of the shared hash key; then `per` GCRA keys per push, in scope order
-- (an empty name skips that scope for that push).
-- ARGV[1]: the hash key this instance hashed with; ARGV[2]: now in microseconds, '' for the
-- server's clock; ARGV[3]: `per`; then interval and tolerance (microseconds) per scope.
-- Returns {0, agreed_key} when the instance hashed with another key than the shared one,
-- else {1, refused_1, wait_1, refused_2, wait_2, ...}: refused is 0 (admitted) or the
-- 1-based scope that refused, wait the microseconds until it would admit.
local agreed = redis.call('GET', KEYS[1])
if not agreed then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
elseif agreed ~= ARGV[1] then
  return {0, agreed}
end
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local per = tonumber(ARGV[3])
local out = {1}
for first = 2, #KEYS, per do
  local refused, wait = 0, 0
  for j = 1, per do
    local key = KEYS[first + j - 1]
    if key ~= '' then
      local interval = tonumber(ARGV[2 + 2 * j])
      local tolerance = tonumber(ARGV[3 + 2 * j])
      local tat = tonumber(redis.call('GET', key)) or now
      if tat < now then
        tat = now
      end
      if tat - tolerance > now then
        refused, wait = j, tat - tolerance - now
        break
      end
      tat = tat + interval
      redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
    end
  end
  out[#out + 1] = refused
  out[#out + 1] = wait
end
return out
"""
