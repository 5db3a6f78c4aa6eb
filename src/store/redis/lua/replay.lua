-- ARGV: (job, target) pairs. Dead ones are due now with a fresh allowance.
local now, done = now_ms(), {}
for i = 1, #ARGV, 2 do
  local job, target = ARGV[i], ARGV[i + 1]
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'state', 'attempts')
  if f[1] == 'd' then
    redis.call('HSET', j, 'state', 'p', 'base', f[2] or '0')
    redis.call('ZREM', K .. ':dead:' .. target, job)
    redis.call('ZADD', K .. ':due:' .. target, now, job)
    table.insert(done, job)
  end
end
return done
