-- ARGV: target, waited ms, reason. Its pending jobs due for longer than that (by Redis's clock)
-- become dead letters, at most 1000 a call; how many. A lane-ordered one releases its lane.
local target = ARGV[1]
local now = now_ms()
local due_key = K .. ':due:' .. target
local jobs = redis.call('ZRANGEBYSCORE', due_key, '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 1000)
if #jobs > 0 then
  redis.call('ZREM', due_key, unpack(jobs))
  redis.call('ZREM', K .. ':retried:' .. target, unpack(jobs))
end
for _, job in ipairs(jobs) do
  local j = K .. ':job:' .. job
  redis.call('HSET', j, 'state', 'd', 'died', now, 'updated', now, 'error', ARGV[3])
  redis.call('ZADD', K .. ':dead:' .. target, now, job)
  local lane = redis.call('HGET', j, 'lane')
  if lane then leave_lane(lane, target, job) end
end
return #jobs
