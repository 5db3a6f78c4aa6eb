-- ARGV: (job, token, callback, target) quads. Jobs still held under that token are due now; one
-- held in its callback's hash moves to a hash of its own (see prelude_inline.lua).
local now, n = now_ms(), 0
for i = 1, #ARGV, 4 do
  local job, token, cb, target = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local j = K .. ':job:' .. job
  if redis.call('HGET', K .. ':cb:' .. cb, 'l:' .. target) == token then
    own_hash(cb, target, job, 'p', '0')
    redis.call('ZADD', K .. ':due:' .. target, now, job)
    n = n + 1
  else
    local f = redis.call('HMGET', j, 'state', 'lease', 'target')
    if f[1] == 'f' and f[2] == token then
      redis.call('HSET', j, 'state', 'p')
      redis.call('ZREM', K .. ':lease:' .. f[3], job)
      redis.call('ZADD', K .. ':due:' .. f[3], now, job)
      n = n + 1
    end
  end
end
return n
