"""The Lua scripts of the newer-wins Redis online writes (``mlcore.feast.online_write``):
Feast's hash layout, compared on the server so concurrent writers cannot regress a value."""

# The stored Timestamp proto decoded (varint fields 1: seconds, 2: nanos): both scripts start so.
STAMP_LUA = """
local function stamp(b)
  local s, n, i = 0, 0, 1
  while i <= #b do
    local tag = string.byte(b, i)
    local v, m = 0, 1
    i = i + 1
    while true do
      local c = string.byte(b, i)
      i = i + 1
      v = v + (c % 128) * m
      m = m * 128
      if c < 128 then break end
    end
    if tag == 8 then s = v elseif tag == 16 then n = v end
  end
  return s, n
end
"""

# KEYS[1]: the entity's hash. ARGV: new event time (seconds, nanos), key TTL in seconds (0: none),
# then field/value pairs, the first being the ``_ts:<view>`` field and its Timestamp bytes.
NEWER_WINS_LUA = STAMP_LUA + """
local old = redis.call('HGET', KEYS[1], ARGV[4])
if old then
  local s, n = stamp(old)
  local ns, nn = tonumber(ARGV[1]), tonumber(ARGV[2])
  if ns < s or (ns == s and nn < n) then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""

# Many entities per call (one round trip and one script run per chunk of a frame, not one per
# entity): ARGV = ttl, the _ts field, n features, the n feature fields, then per key (KEYS[k])
# seconds, nanos, the _ts value and the n values. Plain Redis only (a cluster needs one slot).
NEWER_WINS_MANY_LUA = STAMP_LUA + """
local ttl, tsf, nf = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local written = 0
for k = 1, #KEYS do
  local base = 3 + nf + (k - 1) * (3 + nf)
  local ns, nn = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local old = redis.call('HGET', KEYS[k], tsf)
  local newer = true
  if old then
    local s, n = stamp(old)
    if ns < s or (ns == s and nn < n) then newer = false end
  end
  if newer then
    local args = {tsf, ARGV[base + 3]}
    for f = 1, nf do
      args[#args + 1] = ARGV[3 + f]
      args[#args + 1] = ARGV[base + 3 + f]
    end
    redis.call('HSET', KEYS[k], unpack(args))
    if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
    written = written + 1
  end
end
return written
"""
