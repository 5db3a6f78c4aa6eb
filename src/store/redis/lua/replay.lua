-- ARGV: (job, target) pairs, in the order their callbacks arrived. Dead ones are due now with a
-- fresh allowance; a lane-ordered one joins the end of its lane (held if the lane has an open
-- job).
local now, done = now_ms(), {}
for i = 1, #ARGV, 2 do
  local job, target = ARGV[i], ARGV[i + 1]
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'state', 'attempts', 'lane')
  if f[1] == 'd' then
    redis.call('ZREM', K .. ':dead:' .. target, job)
    if f[3] and not join_lane(f[3], target, job) then
      redis.call('HSET', j, 'state', 'h', 'base', f[2] or '0')
    else
      redis.call('HSET', j, 'state', 'p', 'base', f[2] or '0')
      redis.call('ZADD', K .. ':due:' .. target, now, job)
    end
    table.insert(done, job)
  end
end
return done
