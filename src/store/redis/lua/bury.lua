-- ARGV: reason, now ms, targets. Their pending jobs, held ones too, become dead; counts per
-- target. Their lanes are left without them (a lane's first in flight stays in it).
local counts = {}
for i = 3, #ARGV do
  local target = ARGV[i]
  local due_key, held_key = K .. ':due:' .. target, K .. ':held:' .. target
  local jobs = redis.call('ZRANGE', due_key, 0, -1)
  local held = redis.call('ZRANGE', held_key, 0, -1)
  for _, job in ipairs(held) do table.insert(jobs, job) end
  for _, job in ipairs(jobs) do
    local j = K .. ':job:' .. job
    redis.call('HSET', j, 'state', 'd', 'died', ARGV[2], 'updated', ARGV[2], 'error', ARGV[1])
    redis.call('ZADD', K .. ':dead:' .. target, ARGV[2], job)
  end
  if #held > 0 then
    for _, job in ipairs(jobs) do
      local lane = redis.call('HGET', K .. ':job:' .. job, 'lane')
      if lane then redis.call('ZREM', lane_key(lane, target), job) end
    end
  end
  redis.call('DEL', due_key, held_key)
  if #jobs > 0 then redis.call('ZREM', K .. ':retried:' .. target, unpack(jobs)) end
  table.insert(counts, #jobs)
end
return counts
