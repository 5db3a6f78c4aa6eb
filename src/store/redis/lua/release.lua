-- ARGV: (job, token) pairs. Jobs still held under that token are due now.
local now, n = now_ms(), 0
for i = 1, #ARGV, 2 do
  local job = ARGV[i]
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'state', 'lease', 'target')
  if f[1] == 'f' and f[2] == ARGV[i + 1] then
    redis.call('HSET', j, 'state', 'p')
    redis.call('ZREM', K .. ':lease:' .. f[3], job)
    redis.call('ZADD', K .. ':due:' .. f[3], now, job)
    n = n + 1
  end
end
return n
